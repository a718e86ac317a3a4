//! End to end over real TCP (see `common::live`): a live server and
//! `reqwest`, every case on the in-memory store, on SQLite on a temporary
//! file and on PostgreSQL in a fresh schema (`memory::*`, `sqlite::*`,
//! `postgres::*`). Every response is checked against the contract, and
//! every refusal is checked to have left the run and its change records
//! exactly as they were.
//!
//! If-Match and versions: strong ETags, lists, stars and weak tags,
//! stale and replayed writes, concurrent writers on one version, and the
//! ETag a mutating response returns.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode};
use common::e2e::{assert_etag, post, put, CURRENT, STALE};
use common::live::{assert_error, authed, ghost, header_map, invalid_names, new_dates, run_path, Backend, Live};
use fielding_core::Status;
use serde_json::json;

e2e!(
    current_etag_is_202_and_a_later_get_returns_the_new_etag,
    stale_etag_is_412_and_nothing_changes,
    if_match_lists_and_star_are_202,
    if_match_on_two_header_lines_is_202,
    weak_tag_is_412,
    unknown_run_is_404_with_star_or_a_stale_tag,
    missing_or_unquoted_if_match_is_400_naming_it,
    stale_tag_with_malformed_json_is_412,
    completed_run_is_422_and_with_a_stale_tag_412,
    concurrent_puts_on_one_version_exactly_one_wins,
    concurrent_puts_with_if_match_any_all_succeed,
    replaying_a_successful_put_is_412,
    a_mutating_responses_etag_is_what_a_later_get_returns,
);

async fn current_etag_is_202_and_a_later_get_returns_the_new_etag(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    assert_etag(&reply, "\"8\"");
    assert_eq!(reply.json, json!({ "id": run.id.to_string() }));
    let got = live.get(&run).await;
    assert_etag(&got, "\"8\"");
    assert_eq!(got.json["version"], 8);
    assert_eq!(got.json["last_changed_by"], live.user.to_string());
    let expected_end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(1)).unwrap();
    let (stored, changes) = live.snapshot(&run.key()).await;
    let stored = stored.expect("the run");
    assert_eq!(stored.version.get(), 8);
    assert_eq!(stored.end_fielding_at, expected_end);
    assert_eq!(changes.len(), 2, "one new change record");
    assert_eq!(changes[1].version.get(), 8);
}

async fn stale_etag_is_412_and_nothing_changes(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    let got = live.get(&run).await;
    assert_etag(&got, CURRENT);
    assert_eq!(got.json["version"], 7);
    live.assert_unchanged(&run.key(), &before, "412").await;
}

async fn if_match_lists_and_star_are_202(backend: Backend) {
    let live = Live::start(backend).await;
    for value in ["\"6\", \"7\"", "\"7\", ,", "*", " \"7\" "] {
        let run = live.seed(Status::Live, 7).await;
        let reply = put(&live, &run, &[value], &new_dates(&run, 1)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "If-Match {value:?}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
        assert_etag(&live.get(&run).await, "\"8\"");
    }
}

async fn if_match_on_two_header_lines_is_202(backend: Backend) {
    let live = Live::start(backend).await;
    for lines in [["\"6\"", "\"7\""], ["\"7\"", "\"6\""]] {
        let run = live.seed(Status::Live, 7).await;
        let mut headers = header_map(&authed(&[]));
        for line in lines {
            headers.append("if-match", HeaderValue::from_static(line));
        }
        let request = live
            .client
            .put(format!("{}{}", live.base, run_path(&run)))
            .headers(headers)
            .body(new_dates(&run, 1))
            .build()
            .unwrap();
        assert_eq!(
            request.headers().get_all("if-match").iter().count(),
            2,
            "two separate If-Match lines are sent"
        );
        let reply = live.execute(request).await;
        common::contract::contract().check(&Method::PUT, &run_path(&run), reply.status, &reply.headers, &reply.json);
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{lines:?}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
    }
    // Two lines, neither current: refused, nothing changes.
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &["\"5\"", STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    live.assert_unchanged(&run.key(), &before, "two stale lines").await;
}

async fn weak_tag_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for value in ["W/\"7\"", "W/\"6\", W/\"7\""] {
        let reply = put(&live, &run, &[value], &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    live.assert_unchanged(&run.key(), &before, "weak tag").await;
}

async fn unknown_run_is_404_with_star_or_a_stale_tag(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let ghost = ghost(&run);
    for if_match in ["*", STALE, CURRENT] {
        let reply = put(&live, &ghost, &[if_match], &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        for command in ["complete", "pause", "resume", "relaunch", "launch-now"] {
            let reply = post(&live, &ghost, command, if_match, "").await;
            assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        }
    }
    live.assert_unchanged(&run.key(), &before, "404").await;
}

async fn missing_or_unquoted_if_match_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for if_match in [&[][..], &["7"][..], &["\"7"][..], &["\"7\" \"8\""][..]] {
        let reply = put(&live, &run, if_match, &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["If-Match"], "{if_match:?}: {}", reply.json);
    }
    let reply = live
        .send(Method::POST, &format!("{}/pause", run_path(&run)), &authed(&[]), "")
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["If-Match"]);
    live.assert_unchanged(&run.key(), &before, "400 If-Match").await;
}

async fn stale_tag_with_malformed_json_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for body in ["{not json", "", "[]", r#"{"color":"red"}"#] {
        let reply = put(&live, &run, &[STALE], body).await;
        assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    let reply = post(&live, &run, "pause", STALE, "{not json").await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    live.assert_unchanged(&run.key(), &before, "412 before the body").await;
}

async fn completed_run_is_422_and_with_a_stale_tag_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Completed, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    let got = live.get(&run).await;
    assert_eq!(got.json["status"], "completed");
    assert_etag(&got, CURRENT);
    live.assert_unchanged(&run.key(), &before, "422").await;
}

async fn concurrent_puts_on_one_version_exactly_one_wins(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..12 {
        let run = live.seed(Status::Live, 7).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [1, 2]
            .into_iter()
            .map(|days| {
                let (live, run, barrier) = (live.clone(), run.clone(), barrier.clone());
                tokio::spawn(async move {
                    let body = new_dates(&run, days);
                    let request = live
                        .client
                        .put(format!("{}{}", live.base, run_path(&run)))
                        .headers(header_map(&authed(&[("if-match", CURRENT)])))
                        .body(body)
                        .build()
                        .unwrap();
                    barrier.wait().await;
                    let reply = live.execute(request).await;
                    common::contract::contract().check(
                        &Method::PUT,
                        &run_path(&run),
                        reply.status,
                        &reply.headers,
                        &reply.json,
                    );
                    (days, reply)
                })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("the request task"));
        }
        let mut statuses: Vec<StatusCode> = replies.iter().map(|(_, r)| r.status).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::ACCEPTED, StatusCode::PRECONDITION_FAILED],
            "round {round}"
        );
        let (winner_days, winner) = replies.iter().find(|(_, r)| r.status == StatusCode::ACCEPTED).unwrap();
        assert_etag(winner, "\"8\"");
        let (stored, changes) = live.snapshot(&run.key()).await;
        let stored = stored.unwrap();
        assert_eq!(stored.version.get(), 8, "round {round}");
        assert_eq!(
            stored.end_fielding_at,
            run.end_fielding_at
                .checked_add(chrono::TimeDelta::days(*winner_days))
                .unwrap(),
            "the winner's dates are stored"
        );
        assert_eq!(changes.len(), 2, "round {round}: exactly one new change record");
    }
}

/// `If-Match: *` accepts any current version, so concurrent PUTs with it
/// all succeed, one version each, whatever order the store serializes them
/// in (the SQLite store reads and writes in two steps, so these do race).
async fn concurrent_puts_with_if_match_any_all_succeed(backend: Backend) {
    const WRITERS: i64 = 8;
    let live = Arc::new(Live::start(backend).await);
    let run = live.seed(Status::Live, 7).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let tasks: Vec<_> = (1..=WRITERS)
        .map(|days| {
            let (live, run, barrier) = (live.clone(), run.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = live
                    .client
                    .put(format!("{}{}", live.base, run_path(&run)))
                    .headers(header_map(&authed(&[("if-match", "*")])))
                    .body(new_dates(&run, days))
                    .build()
                    .unwrap();
                barrier.wait().await;
                live.execute(request).await
            })
        })
        .collect();
    for task in tasks {
        let reply = task.await.expect("the request task");
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.json);
    }
    let (stored, changes) = live.snapshot(&run.key()).await;
    assert_eq!(stored.unwrap().version.get(), 7 + WRITERS as u64);
    assert_eq!(changes.len() as i64, 1 + WRITERS, "one change record per PUT");
}

async fn replaying_a_successful_put_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let first = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let after_first = live.snapshot(&run.key()).await;
    for _ in 0..2 {
        let replay = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
        assert_error(&replay, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    live.assert_unchanged(&run.key(), &after_first, "replay").await;
}

async fn a_mutating_responses_etag_is_what_a_later_get_returns(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let mut etag = CURRENT.to_owned();
    let steps: [(&str, StatusCode, u64); 6] = [
        ("", StatusCode::ACCEPTED, 8),
        ("pause", StatusCode::NO_CONTENT, 9),
        ("resume", StatusCode::NO_CONTENT, 10),
        ("complete", StatusCode::NO_CONTENT, 11),
        ("relaunch", StatusCode::NO_CONTENT, 12),
        ("", StatusCode::ACCEPTED, 13),
    ];
    for (step, (command, status, version)) in steps.into_iter().enumerate() {
        let reply = if command.is_empty() {
            put(&live, &run, &[&etag], &new_dates(&run, step as i64 + 1)).await
        } else {
            post(&live, &run, command, &etag, "").await
        };
        assert_eq!(reply.status, status, "{command:?}: {}", reply.json);
        let returned = reply
            .header("etag")
            .expect("a mutating response carries ETag")
            .to_owned();
        assert_eq!(returned, format!("\"{version}\""), "{command:?}");
        let got = live.get(&run).await;
        assert_eq!(
            got.header("etag"),
            Some(returned.as_str()),
            "{command:?}: the GET after it"
        );
        assert_eq!(got.json["version"], version);
        etag = returned;
    }
    // An update to the dates already stored changes nothing: its ETag is
    // still the current one.
    let same = put(&live, &run, &[&etag], &new_dates(&run, 6)).await;
    assert_eq!(same.status, StatusCode::ACCEPTED, "{}", same.json);
    assert_eq!(same.header("etag"), Some(etag.as_str()));
    assert_eq!(live.get(&run).await.header("etag"), Some(etag.as_str()));

    // launch-now on a scheduled run: 200 with the dates the GET then shows.
    let scheduled = live.seed(Status::Scheduled, 7).await;
    let reply = post(&live, &scheduled, "launch-now", CURRENT, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_etag(&reply, "\"8\"");
    let got = live.get(&scheduled).await;
    assert_etag(&got, "\"8\"");
    assert_eq!(got.json["status"], "live");
    assert_eq!(got.json["start_fielding_at"], reply.json["start_fielding_at"]);
    assert_eq!(got.json["end_fielding_at"], reply.json["end_fielding_at"]);
    assert_eq!(live.store.changes(&scheduled.key()).await.unwrap().len(), 2);
}
