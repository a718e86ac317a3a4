//! The `fielding-bench` runner: prints one `name value` line per figure on
//! stdout (memory, SQLite, PostgreSQL), the first always
//! `memory_service_vs_bare R`. Commentary goes to
//! stderr. See `--help`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use fielding_bench::{compare, BareWorkload, Fixture, Plan, ServiceWorkload, Workload};

mod postgres;

/// The target for `memory_service_vs_bare` (issue 16, round two; round
/// one's was 1/3).
const TARGET_RATIO: f64 = 0.5;

const HELP: &str = "\
fielding-bench: the fielding service against a raw baseline, measured in the same run

USAGE:
    cargo run --release -p fielding-bench -- [OPTIONS]

Compares FieldingService::update_dates on the in-memory store (every call a
real change: load, If-Match check, lifecycle decision, compare-and-swap,
change record) with a bare Mutex<HashMap> versioned replace of the same runs.
Both run in a current-thread tokio runtime, interleaved in pairs of trials
after a warm-up.

stdout gets one machine-readable `name value` line per figure, first:
    memory_service_vs_bare R        median of per-pair ratios, service / bare
then
    memory_service_ops_per_sec N    median over trials
    memory_bare_ops_per_sec N       median over trials
    memory_service_ns_per_op N
    memory_bare_ns_per_op N
    memory_service_vs_bare_min R    lowest per-pair ratio
    memory_service_vs_bare_max R    highest per-pair ratio
    memory_service_vs_bare_of_medians R
                                    median service / median bare throughput
then the SQLite figures (docs/sqlite.md), among them
    sqlite_adapter_vs_raw R         adapter / hand-written rusqlite, synchronous=FULL
    sqlite_adapter_vs_raw_normal R  the same with synchronous=NORMAL
    sqlite_reads_per_sec_writer_busy N
    sqlite_update_cost_ratio_1e5_vs_1e3 R   (1e6 without --quick)
then the PostgreSQL figures (docs/postgres.md; skipped with a note on stderr
when PostgreSQL is unreachable), among them
    postgres_adapter_vs_raw R       adapter / hand-written sqlx, one connection
    postgres_pooled_{1,4,16}_ops_per_sec N
    postgres_contention_successes_per_sec N
    postgres_contention_refusals_per_success R
    postgres_contention_lost_updates N   must be 0
then the HTTP figures (section `http`, module fielding_bench::http): PUT
update-dates (If-Match: *, a new end date every request) and GET of random
runs through the real fielding-server binary over loopback, driven by wrk
(-t2 -c32, same for every target; `apt-get install -y wrk`), for the memory,
SQLite and PostgreSQL stores and a bare axum handler answering 202 (bare-http)
as the ceiling; needs `cargo build --release -p fielding-server -p fielding-bench`
first (it spawns the release binaries next to its own executable); servers run
with RUST_LOG=warn (no per-request access log), the per-principal limit at
a rate no load reaches and the per-address limits on (they run on every
request); 1 s trials, 5 rounds with --quick (under a minute), else 3 s
trials, 7 rounds; among them
    http_memory_vs_bare R           PUT req/s, server on memory / bare (target >= 0.7)
    http_get_memory_vs_bare R       the same for GET (target >= 0.7)
    http_{put,get}_{sqlite,postgres}_vs_bare R
    http_bare_rps N, http_bare_{p50,p99,p999}_us N      (http_get_bare_* for GET)
    http_{put,get}_{memory,sqlite,postgres}_rps N, ..._{p50,p99,p999}_us N
    http_put_postgres_p99_over_p50 R   PostgreSQL PUT p99 / p50 (target <= 4)
    http_{put,get}_memory_observed_vs_plain R   traces and metrics on / off
                                    (target >= 0.95)
then the contention figures (section `contention`, module
fielding_bench::contention): 1, 4, 16 and 64 HTTP clients (GET, then PUT with
If-Match, re-reading on 412) on one run and on distinct runs, through the
server's app in-process, for memory, SQLite and PostgreSQL (when reachable);
every trial checked for lost updates through the store; first
    contention_lost_updates N       must be 0 (the runner fails otherwise)
then per store, mode (one, distinct) and client count
    contention_{memory,sqlite,postgres}_{one,distinct}_{1,4,16,64}_updates_per_sec N
    contention_..._refusals_per_success R     412s per 202
    contention_..._p99_us N         first GET to the 202, retries included
    contention_{store}_one_vs_distinct_{n} R
then the scale figures (section `scale`, module fielding_bench::scale): the
stores loaded with 1e3, 1e5 and 1e6 runs (1e3, 1e4, 1e5 with --quick; the
names follow the sizes used), update_dates on 1,000 runs spread over them
    scale_{memory,sqlite,postgres}_update_ns_{size} N
    scale_{store}_cost_ratio_{largest}_vs_1e3 R   (target: within 1.5)
    scale_memory_bytes_per_run_{size} N           resident memory growth / runs
    scale_{sqlite,postgres}_db_bytes_{size} N     file + -wal; pg_total_relation_size
then the hostile figures (section `hostile`, module fielding_bench::hostile):
the release fielding-server (built as for `http`) under 2,000 connections
that send nothing or an unfinished header (trickling), while one keep-alive
client connected before them GETs a run on the memory store; then a flood
of job creations on a SQLite file (20 s; 5 s with --quick). Server flags for
the section: fielding_bench::hostile::SERVER_FLAGS plus the words of
FIELDING_BENCH_HOSTILE_FLAGS. The open files soft limit is raised to the
hard limit first. First
    hostile_p99_ratio R             p99 under attack / p99 without (target <= 3)
    hostile_rss_bytes_per_conn N    server RSS growth / hostile connection (target <= 65536)
    hostile_open_at_end N           hostile connections the server still held at the end
    sqlite_wal_peak_mib N           largest -wal during the flood (target <= 64)
    sqlite_wal_idle_mib N           -wal after the flood and a pause
    sqlite_wal_left_after_stop 0|1  -wal or -shm left after a clean SIGTERM
then the bulk figures (section `bulk`, module fielding_bench::bulk): a bulk
pause then resume job over 1,000 live runs (also 10,000 without --quick),
worked by the BulkRunner, against a loop of single-run pause/resume calls on
the same runs, in alternating pairs, on SQLite and PostgreSQL (when
reachable); then batch POSTs of 10, 1,000 and 10,000 ids answered 201 by the
server's app in-process (no runner: processing is not included)
    bulk_{sqlite,postgres}_vs_loop R    items/s, job / loop, 1,000 runs (target >= 1.0)
    bulk_{store}_vs_loop_{N} R, bulk_{store}_items_per_sec_{N} N, loop_{store}_items_per_sec_{N} N
    bulk_{store}_post_us_{10,1000,10000} N   median time to 201
then the feed figures (section `feed`, module fielding_bench::feed): one
account's feed read to the end in pages of 500 through the store against a
hand-written SELECT on the same table (SQLite, PostgreSQL when reachable),
then 16 writers on one PostgreSQL instance and a watcher on another
    feed_read_{sqlite,postgres}_vs_raw R   records/s, store / raw (target >= 0.8)
    feed_delivery_p{50,99}_ms_postgres N   commit to delivery to the watcher
    feed_skipped N                         records the watcher never got (must be 0)
    feed_duplicates N, feed_out_of_order N (must be 0)
Progress and commentary go to stderr.

OPTIONS:
    --quick            short run (a few seconds): 0.25 s warm-up, 7 pairs of 0.3 s trials
                       (default: 1 s warm-up, 7 pairs of 3 s trials, about 45 s)
    --pairs N          pairs of trials (one service and one bare trial each)
    --trial-ms N       timed work per trial, in milliseconds
    --warmup-ms N      warm-up per workload, in milliseconds
    --runs N           runs in the fixture (default 1024)
    --rounds-per-store N
                       rounds (one update per run) before both workloads start over
                       from freshly seeded data, outside the timed region; bounds the
                       store's change history to N records per run (default 256)
    --profile WHICH    no comparison: run only WHICH (`service` or `bare`) for
                       --ops operations and print its ns/op; for profilers, e.g.
                       valgrind --tool=callgrind target/release/fielding-bench --profile service --ops 200000
    --ops N            operations for --profile (default 1000000)
    --only LIST        run only these sections, comma-separated: memory, sqlite,
                       postgres, http, contention, scale, hostile, bulk, feed (default: all, in
                       that order)
    --csv DIR          also write the raw series of the contention and scale
                       sections to DIR/contention.csv and DIR/scale.csv (columns
                       in the module docs of fielding_bench::contention and ::scale)
    -h, --help         this text
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Service,
    Bare,
}

/// A part of the runner's output, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Memory,
    Sqlite,
    Postgres,
    Http,
    Contention,
    Scale,
    Hostile,
    Bulk,
    Feed,
}

/// Every section's name, comma-separated, in order.
fn section_names() -> String {
    Section::ALL.map(Section::name).join(", ")
}

impl Section {
    const ALL: [Section; 9] = [
        Section::Memory,
        Section::Sqlite,
        Section::Postgres,
        Section::Http,
        Section::Contention,
        Section::Scale,
        Section::Hostile,
        Section::Bulk,
        Section::Feed,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Memory => "memory",
            Section::Sqlite => "sqlite",
            Section::Postgres => "postgres",
            Section::Http => "http",
            Section::Contention => "contention",
            Section::Scale => "scale",
            Section::Hostile => "hostile",
            Section::Bulk => "bulk",
            Section::Feed => "feed",
        }
    }
}

#[derive(Debug)]
struct Args {
    plan: Plan,
    profile: Option<Which>,
    ops: u64,
    sections: Vec<Section>,
    /// Where the contention and scale sections write their CSV series.
    csv: Option<std::path::PathBuf>,
}

enum Parsed {
    Run(Args),
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Parsed, String> {
    let mut plan = Plan::full();
    let mut quick = false;
    let mut pairs = None;
    let mut trial_ms = None;
    let mut warmup_ms = None;
    let mut runs = None;
    let mut rounds_per_store = None;
    let mut profile = None;
    let mut ops = 1_000_000u64;
    let mut sections = Section::ALL.to_vec();
    let mut csv = None;

    fn value<T: std::str::FromStr>(flag: &str, next: Option<String>) -> Result<T, String> {
        let text = next.ok_or_else(|| format!("{flag} needs a value"))?;
        text.parse()
            .map_err(|_| format!("{flag}: {text:?} is not a valid non-negative integer"))
    }

    while let Some(arg) = args.next() {
        // Accept `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => (flag.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut take = || inline.clone().or_else(|| args.next());
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--quick" if inline.is_none() => quick = true,
            "--pairs" => pairs = Some(value::<usize>(&flag, take())?),
            "--trial-ms" => trial_ms = Some(value::<u64>(&flag, take())?),
            "--warmup-ms" => warmup_ms = Some(value::<u64>(&flag, take())?),
            "--runs" => runs = Some(value::<usize>(&flag, take())?),
            "--rounds-per-store" => rounds_per_store = Some(value::<u64>(&flag, take())?),
            "--ops" => ops = value::<u64>(&flag, take())?,
            "--csv" => csv = Some(std::path::PathBuf::from(take().ok_or("--csv needs a directory")?)),
            "--only" => {
                let list = take().ok_or("--only needs a comma-separated list of sections")?;
                let mut chosen = Vec::new();
                for name in list.split(',').map(str::trim) {
                    let section = Section::ALL
                        .into_iter()
                        .find(|s| s.name() == name)
                        .ok_or_else(|| format!("--only: unknown section {name:?} ({})", section_names()))?;
                    chosen.push(section);
                }
                // Always in the documented order.
                sections = Section::ALL.into_iter().filter(|s| chosen.contains(s)).collect();
            }
            "--profile" => {
                let which = take().ok_or("--profile needs `service` or `bare`")?;
                profile = Some(match which.as_str() {
                    "service" => Which::Service,
                    "bare" => Which::Bare,
                    other => return Err(format!("--profile: expected `service` or `bare`, got {other:?}")),
                });
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }

    if quick {
        plan = Plan::quick();
    }
    if let Some(n) = pairs {
        if n == 0 {
            return Err("--pairs must be at least 1".into());
        }
        plan.pairs = n;
    }
    if let Some(ms) = trial_ms {
        if ms == 0 {
            return Err("--trial-ms must be at least 1".into());
        }
        plan.trial = Duration::from_millis(ms);
    }
    if let Some(ms) = warmup_ms {
        plan.warmup = Duration::from_millis(ms);
    }
    if let Some(n) = runs {
        if n == 0 {
            return Err("--runs must be at least 1".into());
        }
        plan.runs = n;
    }
    if let Some(n) = rounds_per_store {
        if n == 0 {
            return Err("--rounds-per-store must be at least 1".into());
        }
        plan.rounds_per_store = n;
    }
    if ops == 0 {
        return Err("--ops must be at least 1".into());
    }
    Ok(Parsed::Run(Args {
        plan,
        profile,
        ops,
        sections,
        csv,
    }))
}

/// Writes the figures to stdout; fails only if stdout does.
fn emit(lines: &[(&str, String)]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (name, value) in lines {
        writeln!(out, "{name} {value}")?;
    }
    out.flush()
}

fn run_comparison(plan: &Plan) -> Result<(), String> {
    eprintln!(
        "fielding-bench: {} runs, fresh data every {} rounds, warm-up {:?} per workload, {} pairs of {:?} trials",
        plan.runs, plan.rounds_per_store, plan.warmup, plan.pairs, plan.trial
    );
    let comparison = compare(plan, |line| eprintln!("  {line}")).map_err(|e| e.to_string())?;
    let service = comparison.service_ops_per_sec();
    let bare = comparison.bare_ops_per_sec();
    let ratio = comparison.ratio();
    emit(&[
        ("memory_service_vs_bare", format!("{ratio:.3}")),
        ("memory_service_ops_per_sec", format!("{service:.0}")),
        ("memory_bare_ops_per_sec", format!("{bare:.0}")),
        ("memory_service_ns_per_op", format!("{:.1}", 1e9 / service)),
        ("memory_bare_ns_per_op", format!("{:.1}", 1e9 / bare)),
        ("memory_service_vs_bare_min", format!("{:.3}", comparison.min_ratio())),
        ("memory_service_vs_bare_max", format!("{:.3}", comparison.max_ratio())),
        (
            "memory_service_vs_bare_of_medians",
            format!("{:.3}", comparison.ratio_of_medians()),
        ),
    ])
    .map_err(|e| format!("cannot write to stdout: {e}"))?;
    eprintln!(
        "service reaches {:.1}% of the bare baseline's throughput (target {:.1}%): {}",
        ratio * 100.0,
        TARGET_RATIO * 100.0,
        if ratio >= TARGET_RATIO { "met" } else { "NOT met" }
    );
    Ok(())
}

fn run_profile(plan: &Plan, which: Which, ops: u64) -> Result<(), String> {
    let fixture = Fixture::new(plan.runs).map_err(|e| e.to_string())?;
    let mut workload: Box<dyn Workload> = match which {
        Which::Service => Box::new(
            ServiceWorkload::with_rounds_per_store(&fixture, plan.rounds_per_store).map_err(|e| e.to_string())?,
        ),
        Which::Bare => {
            Box::new(BareWorkload::with_rounds_per_store(&fixture, plan.rounds_per_store).map_err(|e| e.to_string())?)
        }
    };
    let name = match which {
        Which::Service => "service",
        Which::Bare => "bare",
    };
    eprintln!("fielding-bench: profiling {} for {ops} operations", workload.name());
    let elapsed = workload.run(ops).map_err(|e| e.to_string())?;
    emit(&[
        (&format!("memory_{name}_profile_ops"), ops.to_string()),
        (
            &format!("memory_{name}_ns_per_op"),
            format!("{:.1}", elapsed.as_secs_f64() * 1e9 / ops as f64),
        ),
    ])
    .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(args)) => args,
        Err(msg) => {
            eprintln!("fielding-bench: {msg}\nTry `--help`.");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.profile {
        Some(which) => run_profile(&args.plan, which, args.ops),
        None => args.sections.iter().try_for_each(|section| match section {
            Section::Memory => run_comparison(&args.plan),
            Section::Sqlite => fielding_bench::sqlite::run_and_print(&args.plan),
            Section::Postgres => postgres::run(&args.plan),
            Section::Http => fielding_bench::http::run_and_print(&args.plan),
            Section::Contention => fielding_bench::contention::run_and_print(&args.plan, args.csv.as_deref()),
            Section::Scale => fielding_bench::scale::run_and_print(&args.plan, args.csv.as_deref()),
            Section::Hostile => fielding_bench::hostile::run_and_print(&args.plan),
            Section::Bulk => fielding_bench::bulk::run_and_print(&args.plan),
            Section::Feed => fielding_bench::feed::run_and_print(&args.plan),
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("fielding-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn quick_and_overrides() {
        let Ok(Parsed::Run(args)) = parse(&["--quick", "--pairs", "3", "--trial-ms=50"]) else {
            panic!("should parse");
        };
        assert_eq!(args.plan.pairs, 3);
        assert_eq!(args.plan.trial, Duration::from_millis(50));
        assert_eq!(args.plan.warmup, Plan::quick().warmup);
        assert_eq!(args.profile, None);
    }

    #[test]
    fn help_and_errors() {
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["-h"]), Ok(Parsed::Help)));
        for bad in [
            &["--fast"][..],
            &["--pairs"],
            &["--pairs", "x"],
            &["--pairs", "0"],
            &["--quick=1"],
            &["--profile", "disk"],
            &["stray"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn profile_mode() {
        let Ok(Parsed::Run(args)) = parse(&["--profile", "bare", "--ops", "10"]) else {
            panic!("should parse");
        };
        assert_eq!(args.profile, Some(Which::Bare));
        assert_eq!(args.ops, 10);
    }

    #[test]
    fn contention_scale_and_csv() {
        let Ok(Parsed::Run(args)) = parse(&["--only", "scale,contention", "--csv", "out"]) else {
            panic!("should parse");
        };
        assert_eq!(args.sections, vec![Section::Contention, Section::Scale]);
        assert_eq!(args.csv, Some(std::path::PathBuf::from("out")));
        assert!(parse(&["--csv"]).is_err());
    }
}
