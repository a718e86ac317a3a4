//! End to end over real TCP (see `common::live`): a live server and
//! `reqwest`, every case on the in-memory store, on SQLite on a temporary
//! file and on PostgreSQL in a fresh schema (`memory::*`, `sqlite::*`,
//! `postgres::*`). Every response is checked against the contract, and
//! every refusal is checked to have left the run and its change records
//! exactly as they were.
//!
//! Creation jobs: `POST .../fielding-run-jobs/{launch,schedule}-from-draft`
//! and `GET .../fielding-run-jobs/{kind}/{job_id}`.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::e2e::{assert_etag, in_days, until_429};
use common::live::{
    assert_error, authed, invalid_names, jobs_path, Backend, Live, Options, Reply, API_VERSION, OTHER_TOKEN,
    TRACEPARENT,
};
use fielding_core::{AccountId, FieldingRun, FieldingRunId, JobId, Scope, Status};
use fielding_http::rate_limit::RateLimitPolicy;
use serde_json::json;

e2e!(
    jobs_are_201_with_a_location_whose_job_reports_the_new_run,
    failed_jobs_report_the_reason_and_the_submitting_requests_trace_id,
    replaying_the_same_key_and_body_returns_the_same_location_and_creates_nothing_more,
    a_key_reused_for_a_different_request_is_400_naming_it,
    every_400_of_the_job_endpoints_names_the_field_and_records_nothing,
    job_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account,
    unknown_job_wrong_kind_or_another_target_group_is_404,
    concurrent_submissions_with_one_key_get_one_job_and_one_run,
    concurrent_submissions_with_different_keys_for_one_target_group_one_completes_one_fails,
    rate_limited_job_endpoints_are_429_with_digits_only_retry_after,
    store_failure_on_the_job_endpoints_is_500_without_its_cause_and_a_retry_finishes,
);

const LAUNCH: &str = "launch-from-draft";
const SCHEDULE: &str = "schedule-from-draft";

/// A fresh target group of account 101 without a run (a draft).
fn draft() -> Scope {
    Scope::new(
        AccountId::new(common::live::ACCOUNT).unwrap(),
        fielding_testkit::fixtures::project_id(),
        fielding_testkit::fixtures::target_group_id(),
    )
}

/// The target group of a seeded run.
fn scope_of(run: &FieldingRun) -> Scope {
    Scope::new(run.account_id, run.project_id, run.target_group_id)
}

fn launch_body(end_days: i64) -> String {
    json!({ "end_fielding_at": in_days(end_days) }).to_string()
}

fn schedule_body(start_days: i64, end_days: i64) -> String {
    json!({ "start_fielding_at": in_days(start_days), "end_fielding_at": in_days(end_days) }).to_string()
}

/// A valid body for `kind`.
fn job_body(kind: &str) -> String {
    if kind == LAUNCH {
        launch_body(30)
    } else {
        schedule_body(10, 40)
    }
}

/// POST of a job for `scope` with these headers (nothing added).
async fn submit_with(live: &Live, scope: &Scope, kind: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    live.send(Method::POST, &jobs_path(scope, kind), headers, body).await
}

/// POST of a job for `scope` as the principal of account 101 under `key`.
async fn submit(live: &Live, scope: &Scope, kind: &str, key: &str, body: &str) -> Reply {
    submit_with(live, scope, kind, &authed(&[("idempotency-key", key)]), body).await
}

/// The `Location` of a 201: the job's address under the submitting path.
#[track_caller]
fn job_location(reply: &Reply, scope: &Scope, kind: &str) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.traceparent();
    let location = reply.header("location").expect("a 201 carries Location").to_owned();
    let prefix = format!("{}/", jobs_path(scope, kind));
    let job_id = location
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("Location {location:?} is not under {prefix:?}"));
    assert!(JobId::parse(job_id).is_ok(), "Location {location:?}: not a job id");
    location
}

/// GET of a job, checked to be 200 with the fields every job has.
async fn get_job(live: &Live, location: &str) -> Reply {
    let reply = live.send(Method::GET, location, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK, "GET {location}: {}", reply.json);
    reply.traceparent();
    assert_eq!(
        reply.json["job_id"],
        location.rsplit('/').next().unwrap(),
        "{}",
        reply.json
    );
    assert_eq!(reply.json["created_by"], live.user.to_string(), "{}", reply.json);
    let created_at = reply.json["created_at"].as_str().expect("created_at");
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok(), "{created_at}");
    reply
}

/// A `Completed` job's body: the run it created and nothing about failure.
#[track_caller]
fn assert_completed(job: &Reply) -> FieldingRunId {
    assert_eq!(job.json["status"], "Completed", "{}", job.json);
    assert!(job.json.get("failure_reason").is_none(), "{}", job.json);
    assert!(job.json.get("job_trace_id").is_none(), "{}", job.json);
    let id = job.json["created_fielding_run_id"]
        .as_str()
        .expect("created_fielding_run_id");
    FieldingRunId::parse(id).expect("a run id")
}

/// A `Failed` job's body with `code`; returns its `job_trace_id`.
#[track_caller]
fn assert_failed(job: &Reply, code: &str) -> String {
    assert_eq!(job.json["status"], "Failed", "{}", job.json);
    assert_eq!(job.json["failure_reason"]["code"], code, "{}", job.json);
    assert!(
        job.json["failure_reason"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{}",
        job.json
    );
    assert!(job.json.get("created_fielding_run_id").is_none(), "{}", job.json);
    let trace = job.json["job_trace_id"]
        .as_str()
        .expect("a failed job has job_trace_id");
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{trace}"
    );
    trace.to_owned()
}

/// The one run of `scope` and its change records.
async fn the_run(live: &Live, scope: &Scope) -> (FieldingRun, usize) {
    let run = live
        .store
        .find_by_target_group(scope)
        .await
        .expect("read the target group")
        .expect("the target group has a run");
    let changes = live.store.changes(&run.key()).await.expect("read the change records");
    (run, changes.len())
}

async fn assert_no_run(live: &Live, scope: &Scope, what: &str) {
    let found = live
        .store
        .find_by_target_group(scope)
        .await
        .expect("read the target group");
    assert!(found.is_none(), "{what}: a run was created: {found:?}");
}

async fn jobs_are_201_with_a_location_whose_job_reports_the_new_run(backend: Backend) {
    let live = Live::start(backend).await;
    for (kind, status) in [(SCHEDULE, "scheduled"), (LAUNCH, "live")] {
        let scope = draft();
        let before = chrono::Utc::now();
        let created = submit(&live, &scope, kind, &format!("first-{kind}"), &job_body(kind)).await;
        let after = chrono::Utc::now();
        assert!(created.bytes.is_empty(), "{kind}: 201 has no body");
        let location = job_location(&created, &scope, kind);
        // The job ran before the 201: the first read already has its end.
        let job = get_job(&live, &location).await;
        let run_id = assert_completed(&job);
        let created_at = chrono::DateTime::parse_from_rfc3339(job.json["created_at"].as_str().unwrap()).unwrap();
        let slack = chrono::TimeDelta::seconds(1);
        assert!(
            before - slack <= created_at && created_at <= after + slack,
            "{kind}: created_at {created_at} not between {before} and {after}"
        );
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "{kind}");
        assert_eq!(changes, 1, "{kind}: one change record");
        assert_eq!(run.last_changed_by, live.user, "{kind}");
        // The new run, read through the API: version 1.
        let got = live.get(&run).await;
        assert_etag(&got, "\"1\"");
        assert_eq!(got.json["status"], status, "{kind}");
        assert_eq!(got.json["id"], run_id.to_string());
    }
}

async fn failed_jobs_report_the_reason_and_the_submitting_requests_trace_id(backend: Backend) {
    let live = Live::start(backend).await;
    // A target group with a run is not a draft, for either kind.
    let seeded = live.seed(Status::Live, 7).await;
    let scope = scope_of(&seeded);
    let before = live.snapshot(&seeded.key()).await;
    for kind in [LAUNCH, SCHEDULE] {
        let created = submit_with(
            &live,
            &scope,
            kind,
            &authed(&[
                ("idempotency-key", &format!("not-draft-{kind}")),
                ("traceparent", TRACEPARENT),
            ]),
            &job_body(kind),
        )
        .await;
        let location = job_location(&created, &scope, kind);
        assert_eq!(created.traceparent()[1], &TRACEPARENT[3..35], "the trace is continued");
        let job = get_job(&live, &location).await;
        let trace = assert_failed(&job, "TargetGroupInvalidState");
        assert_eq!(trace, &TRACEPARENT[3..35], "{kind}: the submitting request's trace id");
        // Without a traceparent: the trace the server started for the request.
        let created = submit(
            &live,
            &scope,
            kind,
            &format!("not-draft-untraced-{kind}"),
            &job_body(kind),
        )
        .await;
        let location = job_location(&created, &scope, kind);
        let started = created.traceparent()[1].clone();
        assert_ne!(started, &TRACEPARENT[3..35]);
        let job = get_job(&live, &location).await;
        assert_eq!(assert_failed(&job, "TargetGroupInvalidState"), started, "{kind}");
        // The job read has a trace of its own; the job keeps the submitter's.
        assert_ne!(job.traceparent()[1], started);
    }
    live.assert_unchanged(&seeded.key(), &before, "failed jobs").await;

    // Dates the lifecycle refuses: InvalidFieldingDates, naming the field.
    let cases = [
        (LAUNCH, launch_body(-1), "end_fielding_at"),
        (SCHEDULE, schedule_body(-2, 10), "start_fielding_at"),
        (SCHEDULE, schedule_body(20, 10), "end_fielding_at"),
    ];
    for (i, (kind, body, field)) in cases.into_iter().enumerate() {
        let scope = draft();
        let created = submit_with(
            &live,
            &scope,
            kind,
            &authed(&[("idempotency-key", &format!("dates-{i}")), ("traceparent", TRACEPARENT)]),
            &body,
        )
        .await;
        let job = get_job(&live, &job_location(&created, &scope, kind)).await;
        assert_eq!(assert_failed(&job, "InvalidFieldingDates"), &TRACEPARENT[3..35]);
        let description = job.json["failure_reason"]["description"].as_str().unwrap();
        assert!(description.contains(field), "{kind} {body}: {description}");
        assert_no_run(&live, &scope, "invalid dates").await;
    }
}

async fn replaying_the_same_key_and_body_returns_the_same_location_and_creates_nothing_more(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let start = in_days(10);
    let end = in_days(40);
    let body = json!({ "start_fielding_at": start, "end_fielding_at": end }).to_string();
    let first = job_location(
        &submit(&live, &scope, SCHEDULE, "retry-me", &body).await,
        &scope,
        SCHEDULE,
    );
    let job = get_job(&live, &first).await;
    let run_id = assert_completed(&job);
    let (run, changes) = the_run(&live, &scope).await;
    assert_eq!((run.id, changes), (run_id, 1));
    let snapshot = live.snapshot(&run.key()).await;
    // The same request, spelled differently: fields swapped, whitespace,
    // the same instants written with an offset instead of `Z`.
    let offset = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    };
    let respelled = format!(r#"{{ "end_fielding_at" : "{end}",  "start_fielding_at" : "{start}" }}"#);
    let offsets = json!({ "end_fielding_at": offset(&end), "start_fielding_at": offset(&start) }).to_string();
    assert!(offsets.contains("+00:00"), "{offsets}");
    for (i, again) in [&body, &body, &respelled, &offsets].into_iter().enumerate() {
        let replay = submit(&live, &scope, SCHEDULE, "retry-me", again).await;
        assert_eq!(
            job_location(&replay, &scope, SCHEDULE),
            first,
            "replay {i}: the same job"
        );
        assert_eq!(
            get_job(&live, &first).await.json,
            job.json,
            "replay {i}: the job is as it was"
        );
    }
    live.assert_unchanged(&run.key(), &snapshot, "replays").await;

    // A failed job replays as the same failed job.
    let seeded = live.seed(Status::Paused, 7).await;
    let taken = scope_of(&seeded);
    let seeded_before = live.snapshot(&seeded.key()).await;
    let body = launch_body(30);
    let failed = job_location(
        &submit(&live, &taken, LAUNCH, "retry-failed", &body).await,
        &taken,
        LAUNCH,
    );
    let failed_job = get_job(&live, &failed).await;
    assert_failed(&failed_job, "TargetGroupInvalidState");
    let replay = submit(&live, &taken, LAUNCH, "retry-failed", &body).await;
    assert_eq!(job_location(&replay, &taken, LAUNCH), failed);
    assert_eq!(get_job(&live, &failed).await.json, failed_job.json);
    live.assert_unchanged(&seeded.key(), &seeded_before, "replay of a failed job")
        .await;

    // Keys are per account: another account's same key is another job.
    let elsewhere = Scope::new(
        AccountId::new(202).unwrap(),
        fielding_testkit::fixtures::project_id(),
        fielding_testkit::fixtures::target_group_id(),
    );
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = submit_with(
        &live,
        &elsewhere,
        SCHEDULE,
        &[
            ("authorization", &other),
            ("cint-api-version", API_VERSION),
            ("content-type", "application/json"),
            ("idempotency-key", "retry-me"),
        ],
        &job_body(SCHEDULE),
    )
    .await;
    let theirs = job_location(&reply, &elsewhere, SCHEDULE);
    assert_ne!(theirs, first);
    assert_eq!(the_run(&live, &elsewhere).await.1, 1, "account 202's own run");
    live.assert_unchanged(&run.key(), &snapshot, "another account's key")
        .await;
}

async fn a_key_reused_for_a_different_request_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let body = schedule_body(10, 40);
    let first = job_location(&submit(&live, &scope, SCHEDULE, "used", &body).await, &scope, SCHEDULE);
    let job = get_job(&live, &first).await;
    assert_completed(&job);
    let (run, _) = the_run(&live, &scope).await;
    let snapshot = live.snapshot(&run.key()).await;
    let other_group = draft();
    for (target, kind, different) in [
        (scope, SCHEDULE, schedule_body(10, 41)),
        (scope, SCHEDULE, schedule_body(11, 40)),
        (scope, LAUNCH, launch_body(40)),
        // The same dates for another target group of the account.
        (other_group, SCHEDULE, body.clone()),
    ] {
        let reply = submit(&live, &target, kind, "used", &different).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(
            invalid_names(&reply),
            ["idempotency-key"],
            "{kind} {different}: {}",
            reply.json
        );
    }
    assert_no_run(&live, &other_group, "a refused reuse").await;
    live.assert_unchanged(&run.key(), &snapshot, "a refused reuse").await;
    assert_eq!(get_job(&live, &first).await.json, job.json);
    // The key still names its job.
    let replay = submit(&live, &scope, SCHEDULE, "used", &body).await;
    assert_eq!(job_location(&replay, &scope, SCHEDULE), first);
}

async fn every_400_of_the_job_endpoints_names_the_field_and_records_nothing(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let long = "k".repeat(256);
    // The idempotency-key header: missing, empty, too long, not visible
    // ASCII, on two lines. The body is valid: only the key is wrong.
    let keys: [&[(&str, &str)]; 6] = [
        &[],
        &[("idempotency-key", "")],
        &[("idempotency-key", &long)],
        &[("idempotency-key", "two words")],
        &[("idempotency-key", "schlüssel")],
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
    ];
    for kind in [LAUNCH, SCHEDULE] {
        for key in keys {
            let reply = submit_with(&live, &scope, kind, &authed(key), &job_body(kind)).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(
                invalid_names(&reply),
                ["idempotency-key"],
                "{kind} {key:?}: {}",
                reply.json
            );
        }
        // The key is checked before the body.
        let reply = submit_with(&live, &scope, kind, &authed(&[]), "{not json").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["idempotency-key"], "{kind}: {}", reply.json);
    }
    // The body: not JSON, not an object, a field missing or not RFC 3339,
    // an unknown field; each named.
    let (start, end) = (in_days(10), in_days(40));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (SCHEDULE, "{not json".into(), vec!["body"]),
        (SCHEDULE, String::new(), vec!["body"]),
        (SCHEDULE, "[]".into(), vec!["body"]),
        (SCHEDULE, "null".into(), vec!["body"]),
        (SCHEDULE, "{}".into(), vec!["end_fielding_at", "start_fielding_at"]),
        (
            SCHEDULE,
            json!({ "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            SCHEDULE,
            json!({ "start_fielding_at": "tomorrow", "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            SCHEDULE,
            json!({ "start_fielding_at": start, "end_fielding_at": end, "colour": "red" }).to_string(),
            vec!["colour"],
        ),
        (LAUNCH, "{oops".into(), vec!["body"]),
        (LAUNCH, "{}".into(), vec!["end_fielding_at"]),
        (
            LAUNCH,
            json!({ "end_fielding_at": 5 }).to_string(),
            vec!["end_fielding_at"],
        ),
        (
            LAUNCH,
            json!({ "end_fielding_at": "2031-13-01" }).to_string(),
            vec!["end_fielding_at"],
        ),
        // A launch starts now: a start is an unknown field.
        (
            LAUNCH,
            json!({ "start_fielding_at": start, "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            LAUNCH,
            json!({ "end_fielding_at": end, "status": "live" }).to_string(),
            vec!["status"],
        ),
    ];
    for (kind, body, names) in cases {
        let reply = submit(&live, &scope, kind, "k", &body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        let mut got = invalid_names(&reply);
        got.sort();
        assert_eq!(got, names, "{kind} {body:?}: {}", reply.json);
    }
    // The API version and the path's ids.
    for kind in [LAUNCH, SCHEDULE] {
        let reply = submit_with(
            &live,
            &scope,
            kind,
            &[("authorization", "Bearer token-101"), ("idempotency-key", "k")],
            &job_body(kind),
        )
        .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["Cint-API-Version"], "{kind}");
        let path = jobs_path(&scope, kind);
        let tg = scope.target_group_id.to_string();
        for (bad, name) in [
            (path.replace("/accounts/101/", "/accounts/0/"), "account_id"),
            (path.replace(&tg, &tg.to_lowercase()), "target_group_id"),
        ] {
            let reply = live
                .send(Method::POST, &bad, &authed(&[("idempotency-key", "k")]), job_body(kind))
                .await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(invalid_names(&reply), [name], "{bad}: {}", reply.json);
        }
    }
    assert_no_run(&live, &scope, "400s").await;
    // None of these recorded the key: it is free for a first request.
    let created = submit(&live, &scope, SCHEDULE, "k", &job_body(SCHEDULE)).await;
    let location = job_location(&created, &scope, SCHEDULE);
    assert_completed(&get_job(&live, &location).await);

    // GET: a malformed job id, the API version.
    let job_id = location.rsplit('/').next().unwrap();
    for bad in [
        format!("{}/not-a-job", jobs_path(&scope, SCHEDULE)),
        location.replace(job_id, &job_id.to_lowercase()),
        location.replace(job_id, &job_id[..25]),
    ] {
        let reply = live.send(Method::GET, &bad, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["job_id"], "{bad}: {}", reply.json);
    }
    let reply = live
        .send(Method::GET, &location, &[("authorization", "Bearer token-101")], "")
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["Cint-API-Version"]);
}

async fn job_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account(backend: Backend) {
    let live = Live::start(backend).await;
    let done = draft();
    let location = job_location(
        &submit(&live, &done, LAUNCH, "readable", &job_body(LAUNCH)).await,
        &done,
        LAUNCH,
    );
    let scope = draft();
    let other = format!("Bearer {OTHER_TOKEN}");
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic dXNlcjpwYXNz"),
        Some(other.as_str()),
    ] {
        let mut headers = vec![("cint-api-version", API_VERSION), ("idempotency-key", "refused")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let status = if auth == Some(other.as_str()) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut replies = Vec::new();
        for kind in [LAUNCH, SCHEDULE] {
            // A malformed body too: who may ask is checked first.
            for body in [job_body(kind), "{bad".to_owned()] {
                replies.push(submit_with(&live, &scope, kind, &headers, &body).await);
            }
        }
        replies.push(live.send(Method::GET, &location, &headers, "").await);
        for reply in replies {
            assert_error(&reply, status, "authorization_error");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{auth:?}");
            }
        }
    }
    assert_no_run(&live, &scope, "401 and 403").await;
    // The key was not recorded by any refused request.
    let created = submit(&live, &scope, SCHEDULE, "refused", &job_body(SCHEDULE)).await;
    assert_completed(&get_job(&live, &job_location(&created, &scope, SCHEDULE)).await);
}

async fn unknown_job_wrong_kind_or_another_target_group_is_404(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let location = job_location(
        &submit(&live, &scope, LAUNCH, "find-me", &job_body(LAUNCH)).await,
        &scope,
        LAUNCH,
    );
    let job_id = location.rsplit('/').next().unwrap().to_owned();
    let job = get_job(&live, &location).await;
    let other_group = draft();
    let other_project = Scope::new(
        scope.account_id,
        fielding_testkit::fixtures::project_id(),
        scope.target_group_id,
    );
    let missing = [
        format!("{}/{}", jobs_path(&scope, LAUNCH), JobId::generate()),
        format!("{}/{}", jobs_path(&scope, SCHEDULE), JobId::generate()),
        // A launch job is not a schedule job.
        format!("{}/{job_id}", jobs_path(&scope, SCHEDULE)),
        format!("{}/{job_id}", jobs_path(&other_group, LAUNCH)),
        format!("{}/{job_id}", jobs_path(&other_project, LAUNCH)),
    ];
    for path in &missing {
        let reply = live
            .send(Method::GET, path, &authed(&[("traceparent", TRACEPARENT)]), "")
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        assert_eq!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    }
    // Reading did not change the job.
    assert_eq!(get_job(&live, &location).await.json, job.json);
}

async fn concurrent_submissions_with_one_key_get_one_job_and_one_run(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..8 {
        let scope = draft();
        let kind = [LAUNCH, SCHEDULE][round % 2];
        let body = job_body(kind);
        let key = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (live, barrier, body, key) = (live.clone(), barrier.clone(), body.clone(), key.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    submit(&live, &scope, kind, &key, &body).await
                })
            })
            .collect();
        let mut locations = Vec::new();
        for task in tasks {
            locations.push(job_location(&task.await.expect("the request task"), &scope, kind));
        }
        assert_eq!(locations[0], locations[1], "round {round}: one key, one job");
        let run_id = assert_completed(&get_job(&live, &locations[0]).await);
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "round {round}");
        assert_eq!(changes, 1, "round {round}: exactly one run, created once");
    }
}

async fn concurrent_submissions_with_different_keys_for_one_target_group_one_completes_one_fails(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..8 {
        let scope = draft();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [LAUNCH, SCHEDULE]
            .into_iter()
            .map(|kind| {
                let (live, barrier) = (live.clone(), barrier.clone());
                tokio::spawn(async move {
                    let key = format!("rival-{round}-{kind}");
                    let body = job_body(kind);
                    barrier.wait().await;
                    (kind, submit(&live, &scope, kind, &key, &body).await)
                })
            })
            .collect();
        let mut jobs = Vec::new();
        for task in tasks {
            let (kind, reply) = task.await.expect("the request task");
            jobs.push(get_job(&live, &job_location(&reply, &scope, kind)).await);
        }
        let mut statuses: Vec<&str> = jobs.iter().map(|j| j.json["status"].as_str().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, ["Completed", "Failed"], "round {round}");
        let winner = jobs.iter().find(|j| j.json["status"] == "Completed").unwrap();
        let loser = jobs.iter().find(|j| j.json["status"] == "Failed").unwrap();
        let run_id = assert_completed(winner);
        assert_failed(loser, "TargetGroupInvalidState");
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "round {round}: the winner's run is stored");
        assert_eq!(changes, 1, "round {round}");
    }
}

async fn rate_limited_job_endpoints_are_429_with_digits_only_retry_after(backend: Backend) {
    let live = Live::start_with(
        backend,
        Options {
            rate_limit: Some(RateLimitPolicy::per_second(1, 2).unwrap()),
            ..Options::default()
        },
    )
    .await;
    let scope = draft();
    let headers = authed(&[
        ("idempotency-key", "limited"),
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let cases = [
        (Method::POST, jobs_path(&scope, SCHEDULE), schedule_body(10, 40)),
        (Method::POST, jobs_path(&scope, LAUNCH), launch_body(30)),
        (
            Method::GET,
            format!("{}/{}", jobs_path(&scope, LAUNCH), JobId::generate()),
            String::new(),
        ),
    ];
    for (method, path, body) in cases {
        // One key for all: a schedule that gets through is replayed, a
        // launch that does is refused (400) as a reuse of the key.
        let refused = until_429(&live, method.clone(), &path, &headers, &body).await;
        let retry_after = refused.header("retry-after").expect("Retry-After on 429");
        assert!(
            !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()),
            "{method} {path}: Retry-After {retry_after:?}"
        );
        assert!(retry_after.parse::<u64>().unwrap() >= 1);
        assert_eq!(refused.json["object"], "too_many_requests_problem_details");
        let [version, trace, span, flags] = refused.traceparent();
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01")
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(refused.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
    // At most the one schedule job ran, whatever got through.
    if let Some(run) = live.store.find_by_target_group(&scope).await.unwrap() {
        assert_eq!(live.store.changes(&run.key()).await.unwrap().len(), 1);
        assert_eq!(run.status, Status::Scheduled);
    }
}

async fn store_failure_on_the_job_endpoints_is_500_without_its_cause_and_a_retry_finishes(backend: Backend) {
    let live = Live::start(backend).await;
    let earlier_scope = draft();
    let earlier = job_location(
        &submit(&live, &earlier_scope, LAUNCH, "before-the-failure", &job_body(LAUNCH)).await,
        &earlier_scope,
        LAUNCH,
    );
    let earlier_job = get_job(&live, &earlier).await;
    let scope = draft();
    let bodies = [(LAUNCH, job_body(LAUNCH)), (SCHEDULE, job_body(SCHEDULE))];
    live.break_store().await;
    let mut replies = Vec::new();
    for (kind, body) in &bodies {
        replies.push(submit(&live, &scope, kind, &format!("during-{kind}"), body).await);
    }
    replies.push(live.send(Method::GET, &earlier, &authed(&[]), "").await);
    for reply in replies {
        assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "unexpected_internal_error");
        let detail = reply.json["detail"].as_str().unwrap().to_lowercase();
        for leak in [
            "sqlite",
            "fielding_run",
            "injected",
            "no such table",
            "backend",
            "storage fault",
        ] {
            assert!(!detail.contains(leak), "the detail leaks {leak:?}: {detail}");
        }
        assert!(reply.json.get("invalid_params").is_none(), "{}", reply.json);
    }
    live.repair_store().await;
    assert_eq!(get_job(&live, &earlier).await.json, earlier_job.json);
    // Retrying with the same keys: the launch creates the run, the schedule
    // then finds the target group taken.
    let mut outcomes = Vec::new();
    for (kind, body) in &bodies {
        let created = submit(&live, &scope, kind, &format!("during-{kind}"), body).await;
        outcomes.push(get_job(&live, &job_location(&created, &scope, kind)).await);
    }
    let run_id = assert_completed(&outcomes[0]);
    assert_failed(&outcomes[1], "TargetGroupInvalidState");
    let (run, changes) = the_run(&live, &scope).await;
    assert_eq!((run.id, changes, run.status), (run_id, 1, Status::Live));
}
