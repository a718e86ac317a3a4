//! Walks one fielding run through its whole lifecycle on the in-memory store
//! and prints every step with the ETag a client would send back next.
//!
//! Run it with `cargo run -p fielding-memory --example lifecycle`.

use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::{Applied, FieldingError, FieldingService, IfMatch, ManualClock, Scope, Timestamp, UserId};
use fielding_memory::MemoryStore;

fn print_step(step: &str, applied: &Applied) {
    let run = &applied.run;
    println!(
        "{step:<28} status={:<9} ETag: {:<5} start={} end={}",
        run.status.as_str(),
        applied.etag.to_string(),
        run.start_fielding_at,
        run.end_fielding_at
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A manual clock makes the walk reproducible: we step over the start and
    // the end instead of waiting for them.
    let now: Timestamp = "2030-03-01T09:00:00Z".parse()?;
    let clock = ManualClock::new(now);
    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone())).with_clock(Arc::new(clock.clone()));

    let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
    let me = UserId::random();
    let day = |n| TimeDelta::days(n);
    let at = |n| now.checked_add(day(n)).ok_or("date out of range");

    let run = service.schedule(scope, at(7)?, at(37)?, me).await?;
    print_step("schedule", &run);
    let key = run.run.key();

    // Every write sends back the ETag it last saw.
    let if_match = |applied: &Applied| IfMatch::version(applied.run.version);

    let run = service.update_dates(&key, &if_match(&run), at(3)?, at(33)?, me).await?;
    print_step("update dates (PUT)", &run);

    let unchanged = service.update_dates(&key, &if_match(&run), at(3)?, at(33)?, me).await?;
    print_step("same dates again (no-op)", &unchanged);

    let run = service.launch_now(&key, &if_match(&run), me).await?;
    print_step("launch now", &run);

    let stale = IfMatch::parse("\"1\"")?;
    match service.pause(&key, &stale, me).await {
        Err(err @ FieldingError::PreconditionFailed { .. }) => {
            println!("{:<28} -> {} ({})", "pause with stale ETag \"1\"", err.code(), err)
        }
        other => return Err(format!("expected a precondition failure, got {other:?}").into()),
    }

    let run = service.pause(&key, &if_match(&run), me).await?;
    print_step("pause", &run);
    let run = service.resume(&key, &if_match(&run), me).await?;
    print_step("resume", &run);
    let run = service.complete(&key, &if_match(&run), me).await?;
    print_step("complete", &run);

    match service
        .update_dates(&key, &if_match(&run), run.run.start_fielding_at, at(40)?, me)
        .await
    {
        Err(err) => println!("{:<28} -> {} ({})", "update after completion", err.code(), err),
        Ok(applied) => return Err(format!("expected a refusal, got {applied:?}").into()),
    }

    let run = service.relaunch(&key, &if_match(&run), me).await?;
    print_step("relaunch", &run);

    clock.advance(day(60));
    let later = service.get(&key).await?;
    println!(
        "{:<28} status={:<9} ETag: {:<5} (time alone changes no version)",
        "60 days later",
        later.status.as_str(),
        later.etag().to_string()
    );

    println!("\nchange records:");
    for change in service.changes(&key).await? {
        println!(
            "  v{:<3} {:<13} {:>9} -> {:<9} end {}",
            change.version.get(),
            change.action.as_str(),
            change.status_from.map_or("-", |s| s.as_str()),
            change.status_to.as_str(),
            change.end_to
        );
    }
    Ok(())
}
