//! What the service tells an operator: the `command`, `job` and
//! `store_call` spans with the fields on-call engineers filter on, and the
//! metrics (commands by action and outcome, 412s by cause, lost races
//! decided again, store call latency and errors, jobs by state, bulk
//! items), checked on the in-memory store through the testkit's captures.

use std::sync::Arc;

use fielding_core::observe::{
    BULK_ITEMS, COMMANDS, JOBS, PRECONDITION_FAILURES, RACES_REDECIDED, STORE_CALL_ERRORS, STORE_CALL_SECONDS,
};
use fielding_core::{
    BulkAction, BulkRunner, BulkRunnerOptions, FieldingService, IdempotencyKey, IfMatch, JobTraceId, NewJob, Status,
    UserId,
};
use fielding_memory::MemoryStore;
use fielding_testkit::observe::{MetricsLog, SpanLog};
use fielding_testkit::{fixtures, Fault, FaultyStore};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn seeded(status: Status) -> (FaultyStore<MemoryStore>, FieldingService, fielding_core::FieldingRun) {
    let memory = MemoryStore::new();
    let run = fixtures::run().with_status(status).build();
    memory.seed(run.clone()).expect("seeding a fresh store");
    let store = FaultyStore::new(memory);
    let service = FieldingService::new(Arc::new(store.clone()));
    (store, service, run)
}

#[tokio::test]
async fn a_command_span_carries_what_on_call_filters_on() {
    let (_, service, run) = seeded(Status::Live);
    let spans = SpanLog::new();
    let _capture = spans.capture();
    let me = UserId::random();
    service
        .pause(&run.key(), &IfMatch::version(run.version), me)
        .await
        .expect("pausing a live run");

    let command = spans.only("command");
    assert_eq!(command.field("action"), Some("pause"));
    assert_eq!(command.field("account"), Some(run.account_id.to_string().as_str()));
    assert_eq!(command.field("project"), Some(run.project_id.to_string().as_str()));
    assert_eq!(
        command.field("target_group"),
        Some(run.target_group_id.to_string().as_str())
    );
    assert_eq!(command.field("run_id"), Some(run.id.to_string().as_str()));
    assert_eq!(command.field("expected_version"), Some("1"));
    assert_eq!(command.field("resulting_version"), Some("2"));
    assert_eq!(command.field("attempt"), Some("1"));
    assert_eq!(command.field("outcome"), Some("ok"));
    assert_eq!(command.target, "fielding_core::observe");

    let calls = spans.children_of(command.index);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].name, "store_call");
    assert_eq!(calls[0].field("operation"), Some("update"));
    assert_eq!(calls[0].field("outcome"), Some("ok"));
    // Nothing about the caller beyond what is listed.
    assert!(!command.fields.contains_key("actor"), "{command:?}");
}

#[tokio::test]
async fn refusals_and_lost_races_show_on_the_span() {
    let (store, service, run) = seeded(Status::Live);
    let spans = SpanLog::new();
    let _capture = spans.capture();
    let me = UserId::random();

    let stale = service
        .pause(&run.key(), &IfMatch::version(fixtures::version(7)), me)
        .await;
    assert_eq!(stale.map_err(|e| e.code()).err(), Some("precondition_failed_error"));

    store.faults().inject(Fault::Conflict, 1);
    service
        .pause(&run.key(), &IfMatch::Any, me)
        .await
        .expect("`*` decides again after a lost race");

    let resumed_too_early = service.complete(&run.key(), &IfMatch::Any, me).await;
    assert!(resumed_too_early.is_ok());
    let again = service.pause(&run.key(), &IfMatch::Any, me).await;
    assert_eq!(again.map_err(|e| e.code()).err(), Some("invalid_state_error"));

    let commands = spans.named("command");
    let outcomes: Vec<_> = commands
        .iter()
        .map(|c| (c.field("action"), c.field("outcome"), c.field("attempt")))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (Some("pause"), Some("precondition_failed_error"), Some("1")),
            (Some("pause"), Some("ok"), Some("2")),
            (Some("complete"), Some("ok"), Some("1")),
            (Some("pause"), Some("invalid_state_error"), Some("1")),
        ]
    );
    // The stale one was judged on version 1 and wrote nothing.
    assert_eq!(commands[0].field("expected_version"), Some("1"));
    assert_eq!(commands[0].field("resulting_version"), None);
    assert_eq!(commands[1].field("resulting_version"), Some("2"));
}

#[tokio::test]
async fn a_command_that_lost_its_race_shows_no_resulting_version() {
    let (store, service, run) = seeded(Status::Live);
    let spans = SpanLog::new();
    let _capture = spans.capture();
    store.faults().inject(Fault::Conflict, 1);
    let lost = service
        .pause(&run.key(), &IfMatch::version(run.version), UserId::random())
        .await;
    assert_eq!(lost.map_err(|e| e.code()).err(), Some("precondition_failed_error"));
    let command = spans.only("command");
    assert_eq!(command.field("outcome"), Some("precondition_failed_error"));
    assert_eq!(command.field("expected_version"), Some("1"));
    assert_eq!(
        command.field("resulting_version"),
        None,
        "nothing was written: {command:?}"
    );
    let call = &spans.children_of(command.index)[0];
    assert_eq!(call.field("outcome"), Some("version_conflict"));
}

#[tokio::test]
async fn refused_creations_and_retried_commands_are_counted_under_their_action() {
    let (store, service, run) = seeded(Status::Live);
    let metrics = MetricsLog::new();
    let spans = SpanLog::new();
    let _metrics = metrics.capture();
    let _spans = spans.capture();
    let me = UserId::random();
    // A start in the past: refused before anything is read.
    let past = run
        .start_fielding_at
        .checked_sub(chrono::TimeDelta::days(3650))
        .expect("a date");
    let refused = service.schedule(fixtures::scope(), past, run.end_fielding_at, me).await;
    assert_eq!(refused.map_err(|e| e.code()).err(), Some("bad_request_error"));
    assert_eq!(
        metrics.counter(COMMANDS, &[("action", "schedule"), ("outcome", "bad_request_error")]),
        1
    );
    let schedule = spans.only("command");
    assert_eq!(schedule.field("outcome"), Some("bad_request_error"));
    assert_eq!(schedule.field("resulting_version"), None);

    // The retry helper decides the command on the run it reads: the span
    // opens as `unknown` and is named when the command is known.
    store.faults().inject(Fault::Conflict, 1);
    service
        .execute_with_retry(&run.key(), me, &fielding_core::RetryPolicy::immediate(3), |_| {
            fielding_core::Command::Pause
        })
        .await
        .expect("paused on the second decision");
    assert_eq!(metrics.counter(COMMANDS, &[("action", "pause"), ("outcome", "ok")]), 1);
    assert_eq!(metrics.counter(RACES_REDECIDED, &[("action", "pause")]), 1);
    let retried = spans.named("command").pop().expect("a second command span");
    assert_eq!(retried.field("action"), Some("pause"));
    assert_eq!(retried.field("attempt"), Some("2"));
}

#[tokio::test]
async fn store_latency_does_not_include_the_pause_after_a_lost_race() {
    let (store, service, run) = seeded(Status::Live);
    let metrics = MetricsLog::new();
    let _capture = metrics.capture();
    let pause = std::time::Duration::from_millis(300);
    let policy = fielding_core::RetryPolicy {
        max_attempts: 4,
        initial_backoff: pause,
        max_backoff: pause,
    };
    store.faults().inject(Fault::Conflict, 3);
    let started = std::time::Instant::now();
    service
        .execute_with_retry(&run.key(), UserId::random(), &policy, |_| fielding_core::Command::Pause)
        .await
        .expect("paused on the fourth decision");
    let took = started.elapsed();
    let samples: Vec<f64> = metrics
        .matching(STORE_CALL_SECONDS, &[("operation", "update")])
        .iter()
        .flat_map(|s| s.samples.clone())
        .collect();
    assert_eq!(samples.len(), 4, "{samples:?}");
    let in_store: f64 = samples.iter().sum();
    // Three jittered pauses of up to 300 ms each: whatever they came to,
    // none of it is store time.
    assert!(
        in_store < 0.05 && in_store <= took.as_secs_f64(),
        "store time {in_store:.3} s of {took:?}: {samples:?}"
    );
}

#[tokio::test]
async fn commands_are_counted_by_action_and_outcome() {
    let (store, service, run) = seeded(Status::Live);
    let metrics = MetricsLog::new();
    let _capture = metrics.capture();
    let me = UserId::random();
    let key = run.key();

    service
        .pause(&key, &IfMatch::version(run.version), me)
        .await
        .expect("pause");
    let _ = service.pause(&key, &IfMatch::version(run.version), me).await; // stale
    store.faults().inject(Fault::Conflict, 1);
    let lost = service.resume(&key, &IfMatch::version(fixtures::version(2)), me).await; // lost race, specific ETag
    assert_eq!(lost.map_err(|e| e.code()).err(), Some("precondition_failed_error"));
    store.faults().inject(Fault::Conflict, 2);
    service
        .resume(&key, &IfMatch::Any, me)
        .await
        .expect("resume after two lost races");
    let _ = service.resume(&key, &IfMatch::Any, me).await; // live already: 422
    let missing = fixtures::run().build().key();
    let _ = service.pause(&missing, &IfMatch::Any, me).await;
    store.faults().inject(Fault::Storage, 1);
    let failed = service.get(&key).await;
    assert!(failed.is_err());

    let count = |labels: &[(&str, &str)]| metrics.counter(COMMANDS, labels);
    assert_eq!(count(&[("action", "pause"), ("outcome", "ok")]), 1);
    assert_eq!(
        count(&[("action", "pause"), ("outcome", "precondition_failed_error")]),
        1
    );
    assert_eq!(
        count(&[("action", "resume"), ("outcome", "precondition_failed_error")]),
        1
    );
    assert_eq!(count(&[("action", "resume"), ("outcome", "ok")]), 1);
    assert_eq!(count(&[("action", "resume"), ("outcome", "invalid_state_error")]), 1);
    assert_eq!(count(&[("action", "pause"), ("outcome", "not_found_error")]), 1);
    assert_eq!(count(&[]), 6, "reads are not commands");

    let precondition = |cause| metrics.counter(PRECONDITION_FAILURES, &[("cause", cause)]);
    assert_eq!(precondition("stale"), 1);
    assert_eq!(precondition("lost_race"), 1);
    assert_eq!(metrics.counter(RACES_REDECIDED, &[("action", "resume")]), 2);

    assert_eq!(metrics.samples(STORE_CALL_SECONDS, &[("operation", "update")]), 8);
    assert_eq!(metrics.samples(STORE_CALL_SECONDS, &[("operation", "get")]), 1);
    assert!(metrics
        .matching(STORE_CALL_SECONDS, &[])
        .iter()
        .flat_map(|s| s.samples.iter())
        .all(|seconds| *seconds >= 0.0 && *seconds < 60.0));
    assert_eq!(
        metrics.counter(STORE_CALL_ERRORS, &[("operation", "get"), ("kind", "backend")]),
        1
    );
    assert_eq!(
        metrics.counter(
            STORE_CALL_ERRORS,
            &[("operation", "update"), ("kind", "version_conflict")]
        ),
        3,
        "each lost race is a failed store call"
    );
}

#[tokio::test]
async fn a_creation_job_is_traced_with_its_callers_trace_and_counted() {
    let store = Arc::new(MemoryStore::new());
    let service = FieldingService::new(store);
    let spans = SpanLog::new();
    let metrics = MetricsLog::new();
    let _spans = spans.capture();
    let _metrics = metrics.capture();
    let scope = fixtures::scope();
    let new = NewJob {
        scope,
        idempotency_key: IdempotencyKey::parse("observed-1").expect("a valid key"),
        request: fixtures::launch(),
        actor: UserId::random(),
        trace_id: JobTraceId::parse(TRACE),
    };
    let submitted = service.submit_job(new.clone()).await.expect("a job");
    service.submit_job(new).await.expect("the same job, replayed");

    let jobs = spans.named("job");
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[1].field("job_id"),
        Some(submitted.job.id.to_string().as_str()),
        "a replay's span names the job the caller gets back"
    );
    assert_eq!(jobs[1].field("outcome"), Some("completed"));
    assert_eq!(jobs[0].field("kind"), Some("creation"));
    assert_eq!(jobs[0].field("action"), Some("launch-from-draft"));
    assert_eq!(jobs[0].field("trace_id"), Some(TRACE));
    assert_eq!(jobs[0].field("job_id"), Some(submitted.job.id.to_string().as_str()));
    assert_eq!(jobs[0].field("outcome"), Some("completed"));
    let created = spans.children_of(jobs[0].index);
    assert!(
        created
            .iter()
            .any(|s| s.name == "command" && s.field("action") == Some("launch")),
        "{created:#?}"
    );

    assert_eq!(
        metrics.counter(JOBS, &[("kind", "creation"), ("state", "submitted")]),
        1
    );
    assert_eq!(
        metrics.counter(JOBS, &[("kind", "creation"), ("state", "completed")]),
        1
    );
    assert_eq!(metrics.counter(COMMANDS, &[("action", "launch"), ("outcome", "ok")]), 1);
}

#[tokio::test]
async fn a_bulk_job_counts_its_states_and_items() {
    let memory = MemoryStore::new();
    let scope = fixtures::scope();
    let live = fixtures::run()
        .with_scope(fixtures::other_target_group(scope))
        .with_status(Status::Live)
        .build();
    let done = fixtures::run()
        .with_scope(fixtures::other_target_group(scope))
        .with_status(Status::Completed)
        .build();
    memory.seed(live.clone()).expect("seed");
    memory.seed(done.clone()).expect("seed");
    let service = FieldingService::new(Arc::new(memory));
    let spans = SpanLog::new();
    let metrics = MetricsLog::new();
    let _spans = spans.capture();
    let _metrics = metrics.capture();
    let mut new = fixtures::new_bulk_job(
        scope,
        "bulk-observed",
        BulkAction::Pause,
        vec![live.target_group_id, done.target_group_id, fixtures::target_group_id()],
    );
    new.trace_id = JobTraceId::parse(TRACE);
    service.submit_bulk_job(new).await.expect("a bulk job");
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
    assert_eq!(runner.run_until_idle().await.expect("the runner"), 1);

    for state in ["submitted", "claimed", "completed"] {
        assert_eq!(
            metrics.counter(JOBS, &[("kind", "bulk"), ("state", state)]),
            1,
            "{state}"
        );
    }
    let items = |outcome| metrics.counter(BULK_ITEMS, &[("action", "pause"), ("outcome", outcome)]);
    assert_eq!(items("updated"), 1);
    assert_eq!(items("StatusTransitionNotAllowed"), 1);
    assert_eq!(items("TargetGroupNotFound"), 1);
    assert_eq!(
        metrics.samples(STORE_CALL_SECONDS, &[("operation", "apply_bulk_items")]),
        1
    );

    let jobs = spans.named("job");
    assert_eq!(jobs.len(), 2, "the submission's and the runner's: {jobs:#?}");
    assert!(jobs
        .iter()
        .all(|j| j.field("trace_id") == Some(TRACE) && j.field("kind") == Some("bulk")));
    assert_eq!(jobs[1].field("outcome"), Some("ok"));
    let calls: Vec<_> = spans
        .children_of(jobs[1].index)
        .iter()
        .filter_map(|s| s.field("operation").map(str::to_owned))
        .collect();
    assert_eq!(calls, ["apply_bulk_items", "finish_bulk_job"]);
}

/// The recording points with nobody listening: no panic, no error, the
/// same answer (tracing's and metrics' no-op paths are exercised here).
#[tokio::test]
async fn without_a_subscriber_or_recorder_commands_work_the_same() {
    let (_, service, run) = seeded(Status::Live);
    let applied = service
        .pause(&run.key(), &IfMatch::version(run.version), UserId::random())
        .await
        .expect("pause");
    assert_eq!(applied.run.status, Status::Paused);
}

/// A store that answers at once (the memory store itself, not wrapped)
/// takes the service's synchronous path, where a store call's latency is
/// recorded with the command's counter: every update is still timed, and
/// every command counted, with and without a subscriber taking
/// `store_call` spans.
#[tokio::test]
async fn a_store_that_answers_at_once_has_every_update_timed_and_counted() {
    for with_spans in [false, true] {
        let memory = MemoryStore::new();
        let run = fixtures::run().with_status(Status::Live).build();
        memory.seed(run.clone()).expect("seeding a fresh store");
        let service = FieldingService::new(Arc::new(memory));
        let metrics = MetricsLog::new();
        let spans = SpanLog::new();
        let me = UserId::random();
        {
            let _metrics = metrics.capture();
            let _spans = with_spans.then(|| spans.capture());
            service
                .pause(&run.key(), &IfMatch::version(run.version), me)
                .await
                .expect("pausing a live run");
            let stale = service.pause(&run.key(), &IfMatch::version(run.version), me).await;
            assert!(stale.is_err(), "the second pause names an old version");
            let missing = fixtures::run().build().key();
            assert!(service.pause(&missing, &IfMatch::Any, me).await.is_err());
        }
        let seconds = metrics.samples(STORE_CALL_SECONDS, &[("operation", "update")]);
        assert_eq!(seconds, 3, "with spans: {with_spans}");
        let count = |labels: &[(&str, &str)]| metrics.counter(COMMANDS, labels);
        assert_eq!(count(&[("action", "pause"), ("outcome", "ok")]), 1);
        assert_eq!(
            count(&[("action", "pause"), ("outcome", "precondition_failed_error")]),
            1
        );
        assert_eq!(count(&[("action", "pause"), ("outcome", "not_found_error")]), 1);
        assert_eq!(metrics.counter(PRECONDITION_FAILURES, &[("cause", "stale")]), 1);
        if with_spans {
            assert_eq!(spans.named("store_call").len(), 3);
        }
    }
}
