//! End to end over real TCP (see `common::live`): a live server and
//! `reqwest`, every case on the in-memory store, on SQLite on a temporary
//! file and on PostgreSQL in a fresh schema (`memory::*`, `sqlite::*`,
//! `postgres::*`). Every response is checked against the contract, and
//! every refusal is checked to have left the run and its change records
//! exactly as they were.
//!
//! Every status each endpoint can answer, endpoint by endpoint, and every
//! command from every status of a run.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use axum::http::{Method, StatusCode};
use common::e2e::{assert_etag, in_days, post, put, CURRENT, STALE};
use common::live::{
    api, assert_error, authed, invalid_names, list_path, new_dates, run_path, Backend, Live, API_VERSION, OTHER_TOKEN,
};
use fielding_core::{FieldingRun, FieldingRunId, Status};
use serde_json::json;

e2e!(
    every_status_of_get_list,
    every_status_of_get_run,
    every_status_of_put,
    every_status_of_the_commands,
    every_command_from_every_status,
);

async fn every_status_of_get_list(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let path = list_path(&run);
    // 200 with the one run.
    let reply = live.send(Method::GET, &path, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["has_more"], false);
    assert_eq!(reply.json["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(reply.json["data"][0]["id"], run.id.to_string());
    assert_eq!(reply.json["data"][0]["version"], 7);
    // 200 with none: a target group without a run is an empty list, not a 404.
    let empty = api(&format!(
        "/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs",
        run.project_id,
        fielding_testkit::fixtures::target_group_id()
    ));
    let reply = live.send(Method::GET, &empty, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!({ "data": [], "has_more": false }));
    // 400: bad path ids and API version, each named.
    let reply = live
        .send(
            Method::GET,
            &api("/demand/accounts/0/projects/lower/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs"),
            &[
                ("authorization", "Bearer token-101"),
                ("cint-api-version", "2025-13-01"),
            ],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["account_id", "project_id", "Cint-API-Version"]);
    // 401.
    let reply = live
        .send(Method::GET, &path, &[("cint-api-version", API_VERSION)], "")
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    // 403.
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    // 404: only for a path under the list that no route serves.
    let reply = live
        .send(Method::GET, &format!("{path}/{}/nope", run.id), &authed(&[]), "")
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    // 429 and 500: see their own cases.
}

async fn every_status_of_get_run(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Paused, 7).await;
    let path = run_path(&run);
    // 200 with the ETag and the contract's item.
    let reply = live.get(&run).await;
    assert_etag(&reply, CURRENT);
    assert_eq!(reply.json["id"], run.id.to_string());
    assert_eq!(reply.json["status"], "paused");
    assert_eq!(reply.json["version"], 7);
    assert_eq!(reply.json["last_changed_by"], run.last_changed_by.to_string());
    // 400 for each malformed id, and for the API version.
    for (bad, name) in [
        (path.replace(&run.id.to_string(), "x"), "fielding_run_id"),
        (
            path.replace(&run.project_id.to_string(), &run.project_id.to_string().to_lowercase()),
            "project_id",
        ),
        (path.replace("/accounts/101/", "/accounts/-1/"), "account_id"),
        (path.replace("/accounts/101/", "/accounts/99999999999/"), "account_id"),
    ] {
        let reply = live.send(Method::GET, &bad, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert!(
            invalid_names(&reply).contains(&name.to_owned()),
            "{bad}: {}",
            reply.json
        );
    }
    for version in [None, Some("2025-12-18, 2025-12-18"), Some("18-12-2025"), Some("")] {
        let mut headers = vec![("authorization", "Bearer token-101")];
        if let Some(version) = version {
            headers.push(("cint-api-version", version));
        }
        let reply = live.send(Method::GET, &path, &headers, "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["Cint-API-Version"], "{version:?}");
    }
    // 401, 403.
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", "Bearer x"), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    // 404: an unknown id, and the run's id under another target group.
    let ghost = FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    };
    let elsewhere = FieldingRun {
        target_group_id: fielding_testkit::fixtures::target_group_id(),
        ..run.clone()
    };
    for missing in [ghost, elsewhere] {
        let reply = live.send(Method::GET, &run_path(&missing), &authed(&[]), "").await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    }
}

async fn every_status_of_put(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let path = run_path(&run);
    // 400: path, API version, If-Match, body, each named.
    let bad_path = path.replace(&run.id.to_string(), &run.id.to_string()[..25]);
    let reply = live
        .send(
            Method::PUT,
            &bad_path,
            &authed(&[("if-match", CURRENT)]),
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["fielding_run_id"]);
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[("authorization", "Bearer token-101"), ("if-match", CURRENT)],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["Cint-API-Version"]);
    let unparsable_start = json!({ "start_fielding_at": "yesterday", "end_fielding_at": in_days(40) }).to_string();
    for (body, names) in [
        (
            r#"{"start_fielding_at":5}"#,
            vec!["end_fielding_at", "start_fielding_at"],
        ),
        (
            r#"{"start_fielding_at":null,"end_fielding_at":[]}"#,
            vec!["end_fielding_at", "start_fielding_at"],
        ),
        (unparsable_start.as_str(), vec!["start_fielding_at"]),
        ("[1,2]", vec!["body"]),
        ("{not json", vec!["body"]),
        ("", vec!["body"]),
    ] {
        let reply = put(&live, &run, &[CURRENT], body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        let mut got = invalid_names(&reply);
        got.sort();
        assert_eq!(got, names, "{body}: {}", reply.json);
    }
    // 401, 403, 404, 412 have their own cases; one of each here too.
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[("cint-api-version", API_VERSION), ("if-match", CURRENT)],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[
                ("authorization", &other),
                ("cint-api-version", API_VERSION),
                ("if-match", CURRENT),
            ],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    let ghost = FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    };
    let reply = put(&live, &ghost, &[CURRENT], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    // 422: a live run's start cannot move.
    let moved = json!({
        "start_fielding_at": run.start_fielding_at.checked_add(chrono::TimeDelta::hours(1)).unwrap().to_string(),
        "end_fielding_at": run.end_fielding_at.to_string(),
    });
    let reply = put(&live, &run, &[CURRENT], &moved.to_string()).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    live.assert_unchanged(&run.key(), &before, "PUT refusals").await;
    // 202.
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
}

async fn every_status_of_the_commands(backend: Backend) {
    let live = Live::start(backend).await;
    // (command, a status it succeeds from, answer). The 422 of each command
    // from each status: `every_command_from_every_status`.
    let table = [
        ("complete", Status::Live, StatusCode::NO_CONTENT),
        ("pause", Status::Live, StatusCode::NO_CONTENT),
        ("resume", Status::Paused, StatusCode::NO_CONTENT),
        ("relaunch", Status::Completed, StatusCode::NO_CONTENT),
        ("launch-now", Status::Scheduled, StatusCode::OK),
    ];
    let other = format!("Bearer {OTHER_TOKEN}");
    for (command, from, success) in table {
        let run = live.seed(from, 7).await;
        let path = format!("{}/{command}", run_path(&run));
        let before = live.snapshot(&run.key()).await;
        // 400: If-Match missing or malformed, a body, a bad id, a bad version.
        for (headers, body, name) in [
            (authed(&[]), "", "If-Match"),
            (authed(&[("if-match", "7")]), "", "If-Match"),
            (authed(&[("if-match", CURRENT)]), r#"{"x":1}"#, "x"),
            (authed(&[("if-match", CURRENT)]), "[]", "body"),
            (
                vec![("authorization", "Bearer token-101"), ("if-match", CURRENT)],
                "",
                "Cint-API-Version",
            ),
        ] {
            let reply = live.send(Method::POST, &path, &headers, body).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(invalid_names(&reply), [name], "{command} {headers:?} {body:?}");
        }
        let bad_id = path.replace(&run.id.to_string(), &run.id.to_string().to_lowercase());
        let reply = live
            .send(Method::POST, &bad_id, &authed(&[("if-match", CURRENT)]), "")
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["fielding_run_id"], "{command}");
        // 401, 403.
        let reply = live
            .send(
                Method::POST,
                &path,
                &[("cint-api-version", API_VERSION), ("if-match", STALE)],
                "",
            )
            .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let reply = live
            .send(
                Method::POST,
                &path,
                &[
                    ("authorization", &other),
                    ("cint-api-version", API_VERSION),
                    ("if-match", CURRENT),
                ],
                "",
            )
            .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
        // 404.
        let ghost = FieldingRun {
            id: FieldingRunId::generate(),
            ..run.clone()
        };
        let reply = post(&live, &ghost, command, CURRENT, "").await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        // 412, also with a bad body.
        for body in ["", "{oops"] {
            let reply = post(&live, &run, command, STALE, body).await;
            assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
        }
        live.assert_unchanged(&run.key(), &before, command).await;
        // Success, with `{}` as the body: the new ETag, one change record.
        let reply = post(&live, &run, command, CURRENT, "{}").await;
        assert_eq!(reply.status, success, "{command}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
        if success == StatusCode::NO_CONTENT {
            assert!(reply.bytes.is_empty(), "{command}: 204 has no body");
        }
        let (stored, changes) = live.snapshot(&run.key()).await;
        assert_eq!(stored.unwrap().version.get(), 8, "{command}");
        assert_eq!(changes.len(), 2, "{command}");
    }
}

/// The run a cell of the table starts from: a stored status, and for the
/// last two, dates time has overtaken so that the effective status (the
/// one commands are judged on) is another.
#[derive(Debug, Clone, Copy)]
enum From {
    Scheduled,
    Live,
    Paused,
    Completed,
    /// Stored `scheduled`, its start an hour ago: effectively `live`.
    ScheduledStartPassed,
    /// Stored `live`, its end an hour ago: effectively `completed`.
    LiveEndPassed,
}

/// What a command does from a status: succeed with this HTTP status and
/// leave the run in this status, or be refused as invalid state (422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok(StatusCode, &'static str),
    Refused,
}

const FROM: [From; 6] = [
    From::Scheduled,
    From::Live,
    From::Paused,
    From::Completed,
    From::ScheduledStartPassed,
    From::LiveEndPassed,
];

/// docs/lifecycle.md, "Command × effective status", written out (not
/// computed by the library): one row per command, one column per entry
/// of [`FROM`]. `PUT` changes the end only (the start as stored).
#[rustfmt::skip]
fn lifecycle_table() -> [(&'static str, [Outcome; 6]); 6] {
    use Outcome::{Ok, Refused};
    const ACCEPTED: StatusCode = StatusCode::ACCEPTED;
    const NO_CONTENT: StatusCode = StatusCode::NO_CONTENT;
    //  command        scheduled                       live                       paused                      completed              scheduled, start passed      live, end passed
    [
        ("PUT",        [Ok(ACCEPTED, "scheduled"),     Ok(ACCEPTED, "live"),      Ok(ACCEPTED, "paused"),     Refused,               Ok(ACCEPTED, "live"),        Refused]),
        ("launch-now", [Ok(StatusCode::OK, "live"),    Refused,                   Refused,                    Refused,               Refused,                     Refused]),
        ("pause",      [Refused,                       Ok(NO_CONTENT, "paused"),  Refused,                    Refused,               Ok(NO_CONTENT, "paused"),    Refused]),
        ("resume",     [Refused,                       Refused,                   Ok(NO_CONTENT, "live"),     Refused,               Refused,                     Refused]),
        ("complete",   [Ok(NO_CONTENT, "completed"),   Ok(NO_CONTENT, "completed"), Ok(NO_CONTENT, "completed"), Refused,           Ok(NO_CONTENT, "completed"), Refused]),
        ("relaunch",   [Refused,                       Refused,                   Refused,                    Ok(NO_CONTENT, "live"), Refused,                    Refused]),
    ]
}

async fn seed_from(live: &Live, from: From) -> FieldingRun {
    let now = fielding_core::Timestamp::from(chrono::Utc::now());
    let at = |delta: chrono::TimeDelta| now.checked_add(delta).unwrap();
    let (status, dates) = match from {
        From::Scheduled => (Status::Scheduled, None),
        From::Live => (Status::Live, None),
        From::Paused => (Status::Paused, None),
        From::Completed => (Status::Completed, None),
        From::ScheduledStartPassed => (
            Status::Scheduled,
            Some((at(chrono::TimeDelta::hours(-1)), at(chrono::TimeDelta::days(30)))),
        ),
        From::LiveEndPassed => (
            Status::Live,
            Some((at(chrono::TimeDelta::days(-30)), at(chrono::TimeDelta::hours(-1)))),
        ),
    };
    let mut builder = fielding_testkit::fixtures::run()
        .with_scope(Live::scope())
        .with_status(status)
        .with_version(7);
    if let Some((start, end)) = dates {
        builder = builder.with_dates(start, end);
    }
    let run = builder.build();
    live.insert(&run).await;
    run
}

/// Every command from every status, each on a fresh run: the exact answer
/// the lifecycle table gives, the error object for a refusal (and nothing
/// changed), and for a success the next version, one new change record and
/// the status a GET then shows.
async fn every_command_from_every_status(backend: Backend) {
    let live = Live::start(backend).await;
    let mut wrong = Vec::new();
    for (command, row) in lifecycle_table() {
        for (from, expected) in FROM.into_iter().zip(row) {
            let run = seed_from(&live, from).await;
            let before = live.snapshot(&run.key()).await;
            let reply = if command == "PUT" {
                put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await
            } else {
                post(&live, &run, command, CURRENT, "").await
            };
            let cell = format!("{command} from {from:?}");
            match expected {
                Outcome::Refused => {
                    if reply.status != StatusCode::UNPROCESSABLE_ENTITY {
                        wrong.push(format!("{cell}: expected 422, got {} {}", reply.status, reply.json));
                        continue;
                    }
                    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
                    live.assert_unchanged(&run.key(), &before, &cell).await;
                }
                Outcome::Ok(status, after) => {
                    if reply.status != status {
                        wrong.push(format!(
                            "{cell}: expected {status}, got {} {}",
                            reply.status, reply.json
                        ));
                        continue;
                    }
                    assert_etag(&reply, "\"8\"");
                    if status == StatusCode::NO_CONTENT {
                        assert!(reply.bytes.is_empty(), "{cell}: 204 has no body");
                    }
                    let got = live.get(&run).await;
                    assert_etag(&got, "\"8\"");
                    assert_eq!(got.json["status"], after, "{cell}: {}", got.json);
                    let (_, changes) = live.snapshot(&run.key()).await;
                    assert_eq!(changes.len(), 2, "{cell}: one new change record");
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells that break the lifecycle table:\n{}",
        wrong.join("\n")
    );
}
