//! Criterion view of the `memory_service_vs_bare` comparison: one group, two
//! functions on the same fixture, both driven by `fielding_bench`'s
//! workloads (each a current-thread tokio runtime's `block_on` around a batch
//! of awaited operations; re-seeding to bound the change history is excluded
//! from the timings via `iter_custom`).
//!
//! `cargo bench -p fielding-bench --bench memory`
//!
//! For the machine-readable ratio use the runner instead:
//! `cargo run --release -p fielding-bench -- --quick`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fielding_bench::{BareWorkload, Fixture, ServiceWorkload, Workload, DEFAULT_RUNS};

fn memory_update_dates(c: &mut Criterion) {
    let fixture = Fixture::new(DEFAULT_RUNS).expect("building the benchmark fixture");
    let mut service = ServiceWorkload::new(&fixture).expect("seeding the memory store");
    let mut bare = BareWorkload::new(&fixture).expect("filling the bare map");

    let mut group = c.benchmark_group("memory_update_dates");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group.bench_function("service_update_dates", |b| {
        b.iter_custom(|iters| service.run(iters).expect("service update_dates failed"))
    });
    group.bench_function("bare_mutex_hashmap_replace", |b| {
        b.iter_custom(|iters| bare.run(iters).expect("bare versioned replace failed"))
    });
    group.finish();
}

criterion_group!(benches, memory_update_dates);
criterion_main!(benches);
