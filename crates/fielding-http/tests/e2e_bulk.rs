//! End to end over real TCP (see `common::live`): a live server with a
//! `BulkRunner` working in the background over the router's own service,
//! as a server runs them, and `reqwest`. Every response is checked against
//! the contract (`fielding-batch-openapi.yml` for the batch paths), and
//! every refusal is checked to have left the runs as they were.
//!
//! Bulk jobs: `POST .../batch-jobs/{action}-fielding-runs-by-target-group-id`
//! and `GET .../batch-jobs/{action}-fielding-runs-by-target-group-id/{job_id}`
//! for the five actions.
//!
//! Every case runs on the in-memory, SQLite and PostgreSQL stores.

mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
}

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use common::live::{
    api, assert_error, authed, header_map, invalid_names, unpooled_client, Backend, Live, Options, Reply, ACCOUNT,
    API_VERSION, OTHER_TOKEN, TRACEPARENT,
};
use fielding_core::{
    AccountId, BulkAction, BulkJob, BulkJobKey, FieldingRun, JobId, JobTraceId, ProjectId, Scope, Status, TargetGroupId,
};
use fielding_http::{DEFAULT_BODY_LIMIT, DEFAULT_BULK_BODY_LIMIT};
use fielding_testkit::fixtures;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Declares each case once per store.
macro_rules! bulk_e2e {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::common::live::Backend::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::common::live::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if crate::common::pg::available().await {
                        super::$case(crate::common::live::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

bulk_e2e!(
    each_action_is_201_with_a_location_whose_job_reports_every_outcome_in_order,
    a_job_whose_every_item_failed_is_failed,
    replaying_the_same_key_and_list_returns_the_same_location_and_changes_nothing,
    a_key_reused_for_a_different_request_is_400_naming_it,
    every_400_of_the_batch_endpoints_names_the_field_and_records_nothing,
    the_documented_maximum_list_is_accepted_and_a_larger_body_is_413,
    a_body_not_declared_json_is_415_and_a_stalled_one_is_408,
    batch_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account,
    unknown_job_wrong_action_or_another_project_or_account_is_404,
);

/// How long a job may take to finish before a test gives up: generous,
/// for a noisy 2-core machine.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// The statuses each action moves, finds already done, and refuses.
struct Case {
    action: BulkAction,
    movable: Status,
    already: Status,
    /// `None` for complete: every status either completes or is completed.
    refused: Option<Status>,
}

const CASES: [Case; 5] = [
    Case {
        action: BulkAction::Complete,
        movable: Status::Live,
        already: Status::Completed,
        refused: None,
    },
    Case {
        action: BulkAction::Launch,
        movable: Status::Scheduled,
        already: Status::Live,
        refused: Some(Status::Paused),
    },
    Case {
        action: BulkAction::Pause,
        movable: Status::Live,
        already: Status::Paused,
        refused: Some(Status::Scheduled),
    },
    Case {
        action: BulkAction::Relaunch,
        movable: Status::Completed,
        already: Status::Live,
        refused: Some(Status::Paused),
    },
    Case {
        action: BulkAction::Resume,
        movable: Status::Paused,
        already: Status::Live,
        refused: Some(Status::Completed),
    },
];

async fn start(backend: Backend) -> Live {
    start_with(backend, Options::default()).await
}

async fn start_with(backend: Backend, options: Options) -> Live {
    Live::start_with(
        backend,
        Options {
            bulk_runner: true,
            ..options
        },
    )
    .await
}

fn account() -> AccountId {
    AccountId::new(ACCOUNT).unwrap()
}

/// The submitting path of `action` in `account`/`project`.
fn jobs_path(account: AccountId, project: ProjectId, action: BulkAction) -> String {
    api(&format!(
        "/demand/accounts/{account}/projects/{project}/batch-jobs/{}",
        action.path_segment()
    ))
}

/// A run of account 101 in `project` and a fresh target group.
async fn seed_in(live: &Live, project: ProjectId, status: Status) -> FieldingRun {
    let scope = Scope::new(account(), project, fixtures::target_group_id());
    let run = fixtures::run()
        .with_scope(scope)
        .with_status(status)
        .with_version(7)
        .build();
    live.insert(&run).await;
    run
}

fn list_body(ids: &[TargetGroupId]) -> String {
    json!({ "target_group_ids": ids }).to_string()
}

/// POST of a bulk job with these headers (nothing added).
async fn submit_with(live: &Live, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    live.send(Method::POST, path, headers, body).await
}

/// POST of a bulk job as the principal of account 101 under `key`.
async fn submit(live: &Live, path: &str, key: &str, body: &str) -> Reply {
    submit_with(live, path, &authed(&[("idempotency-key", key)]), body).await
}

/// The `Location` of a 201: the job's `GET` path, under the submitting
/// path; the 201 has no body and carries `traceparent`.
#[track_caller]
fn job_location(reply: &Reply, path: &str) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    assert!(reply.bytes.is_empty(), "a 201 has no body");
    reply.traceparent();
    let location = reply.header("location").expect("a 201 carries Location").to_owned();
    let prefix = format!("{path}/");
    let job_id = location
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("Location {location:?} is not under {prefix:?}"));
    assert!(JobId::parse(job_id).is_ok(), "Location {location:?}: not a job id");
    location
}

/// GET of a job, checked to be 200 with its id and submitter.
async fn get_job(live: &Live, location: &str) -> Reply {
    let reply = live.send(Method::GET, location, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK, "GET {location}: {}", reply.json);
    reply.traceparent();
    assert_eq!(reply.json["job_id"], location.rsplit('/').next().unwrap());
    assert_eq!(reply.json["created_by"], live.user.to_string(), "{}", reply.json);
    reply
}

/// Polls the job until it is `Completed` or `Failed`, as a client does.
async fn finished(live: &Live, location: &str) -> Reply {
    let deadline = Instant::now() + FINISH_WITHIN;
    loop {
        let reply = get_job(live, location).await;
        match reply.json["status"].as_str() {
            Some("Completed" | "Failed") => return reply,
            Some("Processing") => {}
            other => panic!("GET {location}: status {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "GET {location}: still processing after {FINISH_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The target groups of `updated_target_groups`, in order.
fn updated(job: &Reply) -> Vec<String> {
    job.json["updated_target_groups"]["data"]
        .as_array()
        .expect("updated_target_groups.data")
        .iter()
        .map(|item| item["target_group_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The target groups of `failed_target_groups` and their codes, in order.
fn failed(job: &Reply) -> Vec<(String, String)> {
    job.json["failed_target_groups"]["data"]
        .as_array()
        .expect("failed_target_groups.data")
        .iter()
        .map(|item| {
            let reason = &item["failure_reason"];
            let code = reason["code"].as_str().unwrap().to_owned();
            let description = reason["description"].as_str().unwrap();
            let expected = match code.as_str() {
                "TargetGroupNotFound" => "Target group not found.",
                "StatusTransitionNotAllowed" => "Status transition is not allowed.",
                other => panic!("unknown failure code {other}"),
            };
            assert_eq!(description, expected);
            (item["target_group_id"].as_str().unwrap().to_owned(), code)
        })
        .collect()
}

fn text(id: TargetGroupId) -> String {
    id.to_string()
}

/// The job as the store has it (for what the API does not show).
async fn stored_job(live: &Live, location: &str, project: ProjectId) -> BulkJob {
    let id = JobId::parse(location.rsplit('/').next().unwrap()).unwrap();
    let key = BulkJobKey {
        account_id: account(),
        project_id: project,
        id,
    };
    live.store
        .get_bulk_job(&key)
        .await
        .expect("read the job")
        .expect("the job is stored")
}

async fn each_action_is_201_with_a_location_whose_job_reports_every_outcome_in_order(backend: Backend) {
    let live = start(backend).await;
    for case in CASES {
        let action = case.action;
        let project = fixtures::project_id();
        let movable = seed_in(&live, project, case.movable).await;
        let already = seed_in(&live, project, case.already).await;
        let refused = match case.refused {
            Some(status) => Some(seed_in(&live, project, status).await),
            None => None,
        };
        // A target group with a run in another project of the account: not
        // found in this one.
        let elsewhere = seed_in(&live, fixtures::project_id(), case.movable).await;
        let ghost = fixtures::target_group_id();
        let mut untouched = vec![
            live.snapshot(&already.key()).await,
            live.snapshot(&elsewhere.key()).await,
        ];
        if let Some(refused) = &refused {
            untouched.push(live.snapshot(&refused.key()).await);
        }
        let mut ids = vec![ghost, movable.target_group_id];
        ids.extend(refused.as_ref().map(|r| r.target_group_id));
        ids.extend([already.target_group_id, elsewhere.target_group_id]);

        let path = jobs_path(account(), project, action);
        let before = chrono::Utc::now();
        let created = submit_with(
            &live,
            &path,
            &authed(&[
                ("idempotency-key", &format!("first-{action}")),
                ("traceparent", TRACEPARENT),
                ("tracestate", "congo=t61rcWkgMzE"),
            ]),
            &list_body(&ids),
        )
        .await;
        let after = chrono::Utc::now();
        let location = job_location(&created, &path);
        let [_, trace, span, _] = created.traceparent();
        assert_eq!(trace, &TRACEPARENT[3..35], "{action}: the caller's trace continues");
        assert_ne!(span, &TRACEPARENT[36..52], "{action}: under a span of the server's");
        assert_eq!(created.header("tracestate"), Some("congo=t61rcWkgMzE"));

        let job = finished(&live, &location).await;
        assert_eq!(job.json["status"], "Completed", "{action}: {}", job.json);
        assert_eq!(
            updated(&job),
            [text(movable.target_group_id), text(already.target_group_id)],
            "{action}: updated, in submission order, the one already there included"
        );
        let mut expected_failed = vec![(text(ghost), "TargetGroupNotFound".to_owned())];
        if let Some(refused) = &refused {
            expected_failed.push((text(refused.target_group_id), "StatusTransitionNotAllowed".to_owned()));
        }
        expected_failed.push((text(elsewhere.target_group_id), "TargetGroupNotFound".to_owned()));
        assert_eq!(failed(&job), expected_failed, "{action}");
        let created_at = chrono::DateTime::parse_from_rfc3339(job.json["created_at"].as_str().unwrap()).unwrap();
        let slack = chrono::TimeDelta::seconds(1);
        assert!(
            before - slack <= created_at && created_at <= after + slack,
            "{action}: created_at {created_at} not between {before} and {after}"
        );
        assert!(
            job.json["created_at"].as_str().unwrap().ends_with('Z'),
            "timestamps as the rest of the API writes them: {}",
            job.json
        );

        // The runs: the movable one changed once, by the submitter; the rest as they were.
        let (run, changes) = live.snapshot(&movable.key()).await;
        let run = run.expect("the run");
        assert_eq!(run.status, action.desired_status(), "{action}");
        assert_eq!(run.version.get(), 8, "{action}");
        assert_eq!(run.last_changed_by, live.user, "{action}");
        assert_eq!(changes.len(), 2, "{action}: one change record more");
        let mut keys = vec![already.key(), elsewhere.key()];
        keys.extend(refused.as_ref().map(FieldingRun::key));
        for (key, before) in keys.iter().zip(&untouched) {
            live.assert_unchanged(key, before, &format!("{action}: an item without a change"))
                .await;
        }
        // The job remembers the submitting request's trace.
        let stored = stored_job(&live, &location, project).await;
        assert_eq!(stored.trace_id, JobTraceId::parse(&TRACEPARENT[3..35]), "{action}");
        assert_eq!(stored.action, action);
    }
}

async fn a_job_whose_every_item_failed_is_failed(backend: Backend) {
    let live = start(backend).await;
    for case in CASES {
        let project = fixtures::project_id();
        let mut ids = vec![fixtures::target_group_id()];
        let mut expected = vec![(text(ids[0]), "TargetGroupNotFound".to_owned())];
        if let Some(status) = case.refused {
            let run = seed_in(&live, project, status).await;
            ids.push(run.target_group_id);
            expected.push((text(run.target_group_id), "StatusTransitionNotAllowed".to_owned()));
        }
        let path = jobs_path(account(), project, case.action);
        let key = format!("all-fail-{}", case.action);
        let location = job_location(&submit(&live, &path, &key, &list_body(&ids)).await, &path);
        let job = finished(&live, &location).await;
        assert_eq!(job.json["status"], "Failed", "{}: {}", case.action, job.json);
        assert!(updated(&job).is_empty());
        assert_eq!(failed(&job), expected, "{}", case.action);
    }
}

async fn replaying_the_same_key_and_list_returns_the_same_location_and_changes_nothing(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let a = seed_in(&live, project, Status::Live).await;
    let b = seed_in(&live, project, Status::Live).await;
    let path = jobs_path(account(), project, BulkAction::Pause);
    let ids = [a.target_group_id, b.target_group_id];
    let first = job_location(&submit(&live, &path, "retry-me", &list_body(&ids)).await, &path);
    let job = finished(&live, &first).await;
    assert_eq!(updated(&job), [text(a.target_group_id), text(b.target_group_id)]);
    let snapshots = [live.snapshot(&a.key()).await, live.snapshot(&b.key()).await];
    // The same request, spelled differently: whitespace, the list reordered.
    let respelled = format!(
        "{{ \"target_group_ids\" : [ \"{}\" ,\n \"{}\" ] }}",
        b.target_group_id, a.target_group_id
    );
    for (i, again) in [list_body(&ids), respelled].iter().enumerate() {
        let replay = submit(&live, &path, "retry-me", again).await;
        assert_eq!(job_location(&replay, &path), first, "replay {i}: the same job");
        assert_eq!(get_job(&live, &first).await.json, job.json, "replay {i}: as it was");
    }
    for (run, before) in [&a, &b].into_iter().zip(&snapshots) {
        live.assert_unchanged(&run.key(), before, "a replay").await;
    }

    // Keys are per account: another account's same key is its own job.
    let theirs = fixtures::project_id();
    let other_path = jobs_path(AccountId::new(202).unwrap(), theirs, BulkAction::Pause);
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = submit_with(
        &live,
        &other_path,
        &[
            ("authorization", &other),
            ("cint-api-version", API_VERSION),
            ("content-type", "application/json"),
            ("idempotency-key", "retry-me"),
        ],
        &list_body(&ids),
    )
    .await;
    let location = job_location(&reply, &other_path);
    assert_ne!(location.rsplit('/').next(), first.rsplit('/').next());
    // Account 202 has no such target groups: its job fails and ours stays.
    let deadline = Instant::now() + FINISH_WITHIN;
    loop {
        let reply = live
            .send(
                Method::GET,
                &location,
                &[("authorization", &other), ("cint-api-version", API_VERSION)],
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        if reply.json["status"] != "Processing" {
            assert_eq!(reply.json["status"], "Failed", "{}", reply.json);
            assert_eq!(failed(&reply).len(), 2);
            break;
        }
        assert!(Instant::now() < deadline, "account 202's job never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (run, before) in [&a, &b].into_iter().zip(&snapshots) {
        live.assert_unchanged(&run.key(), before, "another account's job").await;
    }
}

async fn a_key_reused_for_a_different_request_is_400_naming_it(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let a = seed_in(&live, project, Status::Live).await;
    let b = seed_in(&live, project, Status::Live).await;
    let path = jobs_path(account(), project, BulkAction::Pause);
    let first = job_location(
        &submit(&live, &path, "used", &list_body(&[a.target_group_id])).await,
        &path,
    );
    let job = finished(&live, &first).await;
    let snapshot = live.snapshot(&b.key()).await;
    let another_project = fixtures::project_id();
    for (path, ids) in [
        // Another list, a longer one, another action, another project.
        (path.clone(), vec![b.target_group_id]),
        (path.clone(), vec![a.target_group_id, b.target_group_id]),
        (
            jobs_path(account(), project, BulkAction::Resume),
            vec![a.target_group_id],
        ),
        (
            jobs_path(account(), another_project, BulkAction::Pause),
            vec![a.target_group_id],
        ),
    ] {
        let reply = submit(&live, &path, "used", &list_body(&ids)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["idempotency-key"], "{path}: {}", reply.json);
    }
    live.assert_unchanged(&b.key(), &snapshot, "a refused reuse").await;
    assert_eq!(get_job(&live, &first).await.json, job.json);
    // The key still names its job.
    let replay = submit(&live, &path, "used", &list_body(&[a.target_group_id])).await;
    assert_eq!(job_location(&replay, &path), first);
}

async fn every_400_of_the_batch_endpoints_names_the_field_and_records_nothing(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let run = seed_in(&live, project, Status::Live).await;
    let before = live.snapshot(&run.key()).await;
    let valid = list_body(&[run.target_group_id]);
    let long = "k".repeat(256);
    // The idempotency-key header: missing, empty, too long, not visible
    // ASCII, on two lines. The body is valid: only the key is wrong.
    let keys: [&[(&str, &str)]; 5] = [
        &[],
        &[("idempotency-key", "")],
        &[("idempotency-key", &long)],
        &[("idempotency-key", "two words")],
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
    ];
    for action in BulkAction::ALL {
        let path = jobs_path(account(), project, action);
        for key in keys {
            let reply = submit_with(&live, &path, &authed(key), &valid).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(
                invalid_names(&reply),
                ["idempotency-key"],
                "{action} {key:?}: {}",
                reply.json
            );
        }
        // The key is checked before the body.
        let reply = submit_with(&live, &path, &authed(&[]), "{not json").await;
        assert_eq!(invalid_names(&reply), ["idempotency-key"], "{action}: {}", reply.json);
    }

    // The body, each problem named.
    let tg = run.target_group_id.to_string();
    let other = fixtures::target_group_id().to_string();
    let mut too_many: Vec<TargetGroupId> = (0..=BulkJob::MAX_TARGET_GROUPS)
        .map(|_| fixtures::target_group_id())
        .collect();
    too_many.sort();
    too_many.dedup();
    assert_eq!(too_many.len(), BulkJob::MAX_TARGET_GROUPS + 1, "distinct ids");
    let too_many = list_body(&too_many);
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("{not json".into(), vec!["body"]),
        (String::new(), vec!["body"]),
        ("[]".into(), vec!["body"]),
        ("null".into(), vec!["body"]),
        ("{}".into(), vec!["target_group_ids"]),
        (json!({ "target_group_ids": tg }).to_string(), vec!["target_group_ids"]),
        (
            json!({ "target_group_ids": null }).to_string(),
            vec!["target_group_ids"],
        ),
        (json!({ "target_group_ids": [] }).to_string(), vec!["target_group_ids"]),
        (
            json!({ "target_group_ids": [tg, 5, "nope", tg.to_lowercase()] }).to_string(),
            vec!["target_group_ids[1]", "target_group_ids[2]", "target_group_ids[3]"],
        ),
        (
            json!({ "target_group_ids": [tg, other, tg] }).to_string(),
            vec!["target_group_ids[2]"],
        ),
        (
            json!({ "target_group_ids": [tg], "dry_run": true }).to_string(),
            vec!["dry_run"],
        ),
        (
            format!(r#"{{"target_group_ids":["{tg}"],"target_group_ids":["{other}"]}}"#),
            vec!["target_group_ids"],
        ),
        (too_many.clone(), vec!["target_group_ids"]),
    ];
    for action in BulkAction::ALL {
        let path = jobs_path(account(), project, action);
        for (body, names) in &cases {
            let reply = submit(&live, &path, "k", body).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            let mut got = invalid_names(&reply);
            got.sort();
            let shown: String = body.chars().take(120).collect();
            assert_eq!(&got, names, "{action} {shown:?}: {}", reply.json);
        }
    }
    let reply = submit(&live, &jobs_path(account(), project, BulkAction::Pause), "k", &too_many).await;
    assert!(
        reply.json["invalid_params"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("at most 10000")),
        "{}",
        reply.json
    );

    // The API version and the path's ids.
    let path = jobs_path(account(), project, BulkAction::Pause);
    for (headers, name) in [
        (
            vec![
                ("authorization", "Bearer token-101"),
                ("content-type", "application/json"),
            ],
            "Cint-API-Version",
        ),
        (
            vec![
                ("authorization", "Bearer token-101"),
                ("content-type", "application/json"),
                ("cint-api-version", "2099-01-01"),
            ],
            "Cint-API-Version",
        ),
        (
            vec![
                ("authorization", "Bearer token-101"),
                ("content-type", "application/json"),
                ("cint-api-version", API_VERSION),
                ("cint-api-version", API_VERSION),
            ],
            "Cint-API-Version",
        ),
    ] {
        let mut headers = headers;
        headers.push(("idempotency-key", "k"));
        let reply = submit_with(&live, &path, &headers, &valid).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), [name], "{headers:?}: {}", reply.json);
    }
    let project_text = project.to_string();
    for (bad, name) in [
        (path.replace("/accounts/101/", "/accounts/0/"), "account_id"),
        (path.replace(&project_text, &project_text.to_lowercase()), "project_id"),
    ] {
        let reply = submit(&live, &bad, "k", &valid).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), [name], "{bad}: {}", reply.json);
    }
    live.assert_unchanged(&run.key(), &before, "400s").await;

    // None of these recorded the key: it is free for a first request.
    let location = job_location(&submit(&live, &path, "k", &valid).await, &path);
    let job = finished(&live, &location).await;
    assert_eq!(updated(&job), [tg]);

    // GET: a malformed job id (400 naming it, as for a creation job), the
    // API version.
    let job_id = location.rsplit('/').next().unwrap();
    for bad in [
        format!("{path}/not-a-job"),
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
    // Every malformed id, and the version, at once.
    let reply = live
        .send(
            Method::GET,
            &api(&format!(
                "/demand/accounts/0/projects/nope/batch-jobs/{}/x",
                BulkAction::Pause.path_segment()
            )),
            &[("authorization", "Bearer token-101")],
            "",
        )
        .await;
    let mut names = invalid_names(&reply);
    names.sort();
    assert_eq!(names, ["Cint-API-Version", "account_id", "job_id", "project_id"]);
}

/// A body of 10,000 ids, pretty-printed as a client's JSON library may.
fn pretty_list(ids: &[TargetGroupId]) -> String {
    serde_json::to_string_pretty(&json!({ "target_group_ids": ids })).unwrap()
}

async fn the_documented_maximum_list_is_accepted_and_a_larger_body_is_413(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let runs = [
        seed_in(&live, project, Status::Live).await,
        seed_in(&live, project, Status::Live).await,
    ];
    let mut ids: Vec<TargetGroupId> = (0..BulkJob::MAX_TARGET_GROUPS - runs.len())
        .map(|_| fixtures::target_group_id())
        .collect();
    // Two real ones, first and last.
    ids.insert(0, runs[0].target_group_id);
    ids.push(runs[1].target_group_id);
    let body = pretty_list(&ids);
    assert!(
        body.len() > 300_000 && body.len() > 16 * DEFAULT_BODY_LIMIT,
        "{} bytes",
        body.len()
    );
    let path = jobs_path(account(), project, BulkAction::Pause);
    let location = job_location(&submit(&live, &path, "the-most", &body).await, &path);
    let job = finished(&live, &location).await;
    assert_eq!(job.json["status"], "Completed");
    assert_eq!(
        updated(&job),
        [text(runs[0].target_group_id), text(runs[1].target_group_id)]
    );
    let failures = failed(&job);
    assert_eq!(failures.len(), BulkJob::MAX_TARGET_GROUPS - 2);
    let expected: Vec<String> = ids[1..ids.len() - 1].iter().map(|id| text(*id)).collect();
    let got: Vec<String> = failures.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, expected, "every item, in submission order");
    assert_eq!(job.json["failed_target_groups"]["has_more"], false);

    // One byte over the limit: 413 before the body is parsed, and the
    // connection closed (the rest of the body is never read).
    let mut over = pretty_list(&ids[..10]);
    over.push_str(&" ".repeat(DEFAULT_BULK_BODY_LIMIT + 1 - over.len()));
    assert_eq!(over.len(), DEFAULT_BULK_BODY_LIMIT + 1);
    let reply = send_unpooled(
        &live,
        Method::POST,
        &path,
        &authed(&[("idempotency-key", "too-big")]),
        over,
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "bad_request_error");
    assert_eq!(reply.header("connection"), Some("close"));
    // Exactly at the limit is read (and then judged: here, a valid list).
    let mut at = pretty_list(&[runs[0].target_group_id]);
    at.push_str(&" ".repeat(DEFAULT_BULK_BODY_LIMIT - at.len()));
    let reply = send_unpooled(
        &live,
        Method::POST,
        &path,
        &authed(&[("idempotency-key", "at-limit")]),
        at,
    )
    .await;
    job_location(&reply, &path);

    // Every other endpoint keeps its own, smaller limit (1 KiB here).
    let scope = Scope::new(account(), project, fixtures::target_group_id());
    let creation = common::live::jobs_path(&scope, "launch-from-draft");
    let padded = format!(r#"{{"end_fielding_at":"2031-01-01T00:00:00Z"{}}}"#, " ".repeat(2048));
    let reply = send_unpooled(
        &live,
        Method::POST,
        &creation,
        &authed(&[("idempotency-key", "big")]),
        padded,
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "bad_request_error");
    // ... and the batch limit is the app's to set.
    let small = start_with(
        backend,
        Options {
            bulk_body_limit: Some(4096),
            ..Options::default()
        },
    )
    .await;
    let reply = send_unpooled(
        &small,
        Method::POST,
        &path,
        &authed(&[("idempotency-key", "small")]),
        pretty_list(&ids[..200]),
    )
    .await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "bad_request_error");
    assert!(
        reply.json["detail"].as_str().unwrap().contains("4096"),
        "{}",
        reply.json
    );
}

/// Sends on a connection of its own (a 413 closes it), checked against
/// the contract.
async fn send_unpooled(live: &Live, method: Method, path: &str, headers: &[(&str, &str)], body: String) -> Reply {
    let client = unpooled_client();
    let request = client
        .request(method.clone(), format!("{}{path}", live.base))
        .headers(header_map(headers))
        .body(body)
        .build()
        .expect("a well-formed request");
    let reply = live.execute_on(&client, request).await;
    common::contract::contract().check(&method, path, reply.status, &reply.headers, &reply.json);
    reply
}

async fn a_body_not_declared_json_is_415_and_a_stalled_one_is_408(backend: Backend) {
    let timeout = Duration::from_millis(600);
    let live = start_with(
        backend,
        Options {
            body_timeout: Some(timeout),
            ..Options::default()
        },
    )
    .await;
    let project = fixtures::project_id();
    let run = seed_in(&live, project, Status::Live).await;
    let before = live.snapshot(&run.key()).await;
    let path = jobs_path(account(), project, BulkAction::Pause);
    let valid = list_body(&[run.target_group_id]);
    for content_type in [None, Some("text/plain"), Some("application/merge-patch+json")] {
        let mut headers = vec![
            ("authorization", "Bearer token-101"),
            ("cint-api-version", API_VERSION),
            ("idempotency-key", "typed"),
        ];
        headers.extend(content_type.map(|value| ("content-type", value)));
        let reply = submit_with(&live, &path, &headers, &valid).await;
        assert_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");
        assert_eq!(reply.header("accept"), Some("application/json"));
    }

    // A body that stops arriving: 408 once the timeout passes, connection closed.
    let host = live.base.trim_start_matches("http://");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer token-101\r\n\
         cint-api-version: {API_VERSION}\r\nidempotency-key: stalled\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n"
    );
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    // Before the head is sent: the server's timer starts when it reads the
    // body, which may be before this task gets the thread back.
    let started = Instant::now();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(b"{\"target_group_ids\": [").await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server closes a stalled connection after the 408");
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        waited >= timeout,
        "answered {waited:?} after the head was sent, before the timeout"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let headers = HeaderMap::from_iter(head.lines().skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            axum::http::HeaderValue::from_str(value.trim()).ok()?,
        ))
    }));
    assert_eq!(headers.get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let json: Value = serde_json::from_str(body.trim()).expect("a JSON error body");
    common::contract::contract().check(&Method::POST, &path, StatusCode::REQUEST_TIMEOUT, &headers, &json);
    live.assert_unchanged(&run.key(), &before, "415 and 408").await;

    // Neither recorded its key.
    for key in ["typed", "stalled"] {
        let location = job_location(&submit(&live, &path, key, &valid).await, &path);
        finished(&live, &location).await;
    }
}

async fn batch_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let run = seed_in(&live, project, Status::Live).await;
    let path = jobs_path(account(), project, BulkAction::Pause);
    // A job to read: a resume of a live run, already there.
    let readable_path = jobs_path(account(), project, BulkAction::Resume);
    let readable = job_location(
        &submit(&live, &readable_path, "readable", &list_body(&[run.target_group_id])).await,
        &readable_path,
    );
    finished(&live, &readable).await;
    let before = live.snapshot(&run.key()).await;
    let other = format!("Bearer {OTHER_TOKEN}");
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic dXNlcjpwYXNz"),
        Some(other.as_str()),
    ] {
        let mut headers = vec![
            ("cint-api-version", API_VERSION),
            ("content-type", "application/json"),
            ("idempotency-key", "refused"),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let status = if auth == Some(other.as_str()) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut replies = Vec::new();
        for action in BulkAction::ALL {
            let path = jobs_path(account(), project, action);
            // A malformed body too: who may ask is checked first.
            for body in [list_body(&[run.target_group_id]), "{bad".to_owned()] {
                replies.push(submit_with(&live, &path, &headers, &body).await);
            }
        }
        replies.push(live.send(Method::GET, &readable, &headers, "").await);
        for reply in replies {
            assert_error(&reply, status, "authorization_error");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{auth:?}");
            }
        }
    }
    live.assert_unchanged(&run.key(), &before, "401 and 403").await;
    // The key was not recorded by any refused request.
    let location = job_location(
        &submit(&live, &path, "refused", &list_body(&[run.target_group_id])).await,
        &path,
    );
    assert_eq!(updated(&finished(&live, &location).await), [text(run.target_group_id)]);
}

async fn unknown_job_wrong_action_or_another_project_or_account_is_404(backend: Backend) {
    let live = start(backend).await;
    let project = fixtures::project_id();
    let run = seed_in(&live, project, Status::Live).await;
    let path = jobs_path(account(), project, BulkAction::Pause);
    let location = job_location(
        &submit(&live, &path, "find-me", &list_body(&[run.target_group_id])).await,
        &path,
    );
    let job = finished(&live, &location).await;
    let job_id = location.rsplit('/').next().unwrap().to_owned();
    let mut missing: Vec<String> = BulkAction::ALL
        .into_iter()
        .filter(|action| *action != BulkAction::Pause)
        .map(|action| format!("{}/{job_id}", jobs_path(account(), project, action)))
        .collect();
    missing.extend([
        format!("{path}/{}", JobId::generate()),
        format!(
            "{}/{job_id}",
            jobs_path(account(), fixtures::project_id(), BulkAction::Pause)
        ),
    ]);
    for missing in &missing {
        let reply = live
            .send(Method::GET, missing, &authed(&[("traceparent", TRACEPARENT)]), "")
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        assert_eq!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    }
    // The same job id and project under another account, by its principal.
    let other = format!("Bearer {OTHER_TOKEN}");
    let foreign = location.replace("/accounts/101/", "/accounts/202/");
    let reply = live
        .send(
            Method::GET,
            &foreign,
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    // Unknown actions and methods: the router's 404 and 405.
    let unknown = path.replace("pause-fielding-runs", "archive-fielding-runs");
    let reply = submit(&live, &unknown, "k", &list_body(&[run.target_group_id])).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    for (method, target) in [
        (Method::GET, &path),
        (Method::PUT, &location),
        (Method::DELETE, &location),
    ] {
        let reply = live.send(method.clone(), target, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request_error");
    }
    // Reading did not change the job.
    assert_eq!(get_job(&live, &location).await.json, job.json);
}
