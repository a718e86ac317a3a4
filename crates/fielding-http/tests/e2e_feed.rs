//! End to end over real TCP (see `common::live`): the change-feed
//! endpoints (`docs/feed-openapi.yml`), every response checked against
//! that file and the contract.
//!
//! * `GET /demand/accounts/{account_id}/fielding-run-changes`: pages in
//!   commit order, resumable from `next_cursor`, long polls, 410 for a
//!   pruned cursor;
//! * `GET .../fielding-runs/{fielding_run_id}/changes`: a run's history by
//!   version.
//!
//! Every case runs on the in-memory, SQLite and PostgreSQL stores. Reads
//! that expect records written a moment ago wait for them (long polls with
//! a deadline) rather than expecting them at once: on PostgreSQL a
//! committed record becomes readable when every older transaction of the
//! server has ended, which another test's open transaction may delay.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::e2e::{post, put, CURRENT};
use common::live::{
    api, assert_error, authed, ghost, invalid_names, new_dates, run_path, Backend, Live, Reply, ACCOUNT, API_VERSION,
    OTHER_TOKEN, TRACEPARENT,
};
use fielding_core::{AccountId, FeedPosition, FieldingRun, Scope, Status, Timestamp};
use fielding_testkit::fixtures;
use serde_json::Value;

e2e!(
    the_feed_lists_every_change_in_commit_order_and_resumes_from_next_cursor,
    a_long_poll_answers_when_a_change_commits_and_empty_after_its_wait,
    a_runs_history_pages_by_version_and_a_missing_run_is_404,
    bad_parameters_are_400_naming_each_and_unknown_or_repeated_ones_too,
    the_feed_is_401_without_a_token_403_for_another_account_and_traced,
    a_cursor_before_pruned_records_is_410_and_the_feed_restarts_after_them,
);

/// The longest a test waits for records it wrote to be readable.
const PATIENCE: Duration = Duration::from_secs(60);

fn feed_path(account: i64) -> String {
    api(&format!("/demand/accounts/{account}/fielding-run-changes"))
}

fn history_path(run: &FieldingRun) -> String {
    format!("{}/changes", run_path(run))
}

/// GET of the account feed with this query, as the principal of account 101.
async fn feed(live: &Live, query: &str) -> Reply {
    let path = format!("{}?{query}", feed_path(ACCOUNT));
    live.send(Method::GET, &path, &authed(&[]), "").await
}

/// A 200 page: its records, `next_cursor` (parsed), `has_more`.
#[track_caller]
fn page(reply: &Reply) -> (Vec<Value>, FeedPosition, bool) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let data = reply.json["data"].as_array().expect("data").clone();
    let next = reply.json["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .parse()
        .expect("next_cursor is a cursor");
    (data, next, reply.json["has_more"].as_bool().expect("has_more"))
}

fn cursor_of(record: &Value) -> FeedPosition {
    record["cursor"]
        .as_str()
        .expect("a feed record has a cursor")
        .parse()
        .expect("a cursor")
}

/// Reads from `after` until `count` records have come (long polling when
/// a page is empty), checking the pages' promises on the way; the records
/// and the last `next_cursor`.
async fn read(live: &Live, after: Option<FeedPosition>, count: usize, limit: usize) -> (Vec<Value>, FeedPosition) {
    let deadline = Instant::now() + PATIENCE;
    let mut cursor = after;
    let mut records = Vec::new();
    loop {
        let mut query = format!("limit={limit}");
        if let Some(cursor) = cursor {
            query.push_str(&format!("&after={cursor}"));
        }
        if records.len() >= count {
            // One more read: nothing further is there.
            let (data, next, has_more) = page(&feed(live, &query).await);
            assert!(data.is_empty() && !has_more, "more records than written: {data:?}");
            let last = cursor.expect("a cursor after the records");
            assert!(next >= last, "next_cursor {next} went back from {last}");
            return (records, next);
        }
        query.push_str("&wait=5");
        let (data, next, _) = page(&feed(live, &query).await);
        assert!(data.len() <= limit, "{} records for limit={limit}", data.len());
        for record in &data {
            let at = cursor_of(record);
            assert!(cursor.is_none_or(|c| at > c), "record at {at} not after {cursor:?}");
            cursor = Some(at);
        }
        if let Some(last) = data.last() {
            assert!(next >= cursor_of(last), "next_cursor {next} before the last record");
        }
        if let Some(before) = cursor {
            assert!(next >= before, "next_cursor {next} before {before}");
        }
        cursor = Some(next);
        records.extend(data);
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records within {PATIENCE:?}",
            records.len()
        );
    }
}

/// The `(fielding_run_id, version, action)` of each record.
fn summary(records: &[Value]) -> Vec<(String, u64, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["fielding_run_id"].as_str().unwrap().to_owned(),
                r["version"].as_u64().unwrap(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn entry(run: &FieldingRun, version: u64, action: &str) -> (String, u64, String) {
    (run.id.to_string(), version, action.to_owned())
}

#[track_caller]
fn assert_no_content(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.json);
}

async fn the_feed_lists_every_change_in_commit_order_and_resumes_from_next_cursor(backend: Backend) {
    let live = Live::start(backend).await;
    let a = live.seed(Status::Live, 7).await;
    let b = live.seed(Status::Live, 7).await;
    // Another account's run: never in account 101's feed.
    let theirs = fixtures::run()
        .with_scope(Scope::new(
            AccountId::new(202).unwrap(),
            fixtures::project_id(),
            fixtures::target_group_id(),
        ))
        .with_status(Status::Live)
        .with_version(3)
        .build();
    live.insert(&theirs).await;
    let before = chrono::Utc::now();
    assert_no_content(&post(&live, &a, "pause", CURRENT, "").await);
    assert_eq!(
        put(&live, &b, &[CURRENT], &new_dates(&b, 3)).await.status,
        StatusCode::ACCEPTED
    );
    assert_no_content(&post(&live, &a, "resume", "\"8\"", "").await);
    let after = chrono::Utc::now();

    let (records, end) = read(&live, None, 5, 2).await;
    assert_eq!(
        summary(&records),
        [
            entry(&a, 7, "schedule"),
            entry(&b, 7, "schedule"),
            entry(&a, 8, "pause"),
            entry(&b, 8, "update_dates"),
            entry(&a, 9, "resume"),
        ],
        "every change of the account, in commit order"
    );
    // A command's record as the API writes it.
    let pause = &records[2];
    assert_eq!(pause["account_id"], ACCOUNT);
    assert_eq!(pause["project_id"], a.project_id.to_string());
    assert_eq!(pause["target_group_id"], a.target_group_id.to_string());
    assert_eq!(pause["changed_by"], live.user.to_string());
    assert_eq!(
        (pause["status_from"].as_str(), pause["status_to"].as_str()),
        (Some("live"), Some("paused"))
    );
    assert_eq!(pause["start_fielding_at_from"], pause["start_fielding_at_to"]);
    assert_eq!(pause["end_fielding_at_to"], a.end_fielding_at.to_string());
    let changed_at = pause["changed_at"].as_str().unwrap();
    assert!(changed_at.ends_with('Z') && changed_at.len() == 24, "{changed_at}");
    let changed_at = chrono::DateTime::parse_from_rfc3339(changed_at).unwrap();
    let slack = chrono::TimeDelta::seconds(1);
    assert!(
        before - slack <= changed_at && changed_at <= after + slack,
        "{changed_at}"
    );
    // The seeded creation records: nothing before them.
    assert_eq!(records[0]["status_from"], Value::Null);
    assert_eq!(records[0]["start_fielding_at_from"], Value::Null);
    assert_eq!(records[0]["end_fielding_at_from"], Value::Null);
    let update = &records[3];
    assert_ne!(update["end_fielding_at_from"], update["end_fielding_at_to"]);

    // Resuming from any record's cursor gives exactly the records after it.
    let second = cursor_of(&records[1]);
    let (rest, _) = read(&live, Some(second), 3, 100).await;
    assert_eq!(summary(&rest), summary(&records[2..]));
    // From the end: nothing, and a cursor that does not go back.
    let (data, next, has_more) = page(&feed(&live, &format!("after={end}")).await);
    assert!(data.is_empty() && !has_more, "{data:?}");
    assert!(next >= end);
    // The default page holds them all (limit 100).
    let (data, _, has_more) = page(&feed(&live, "").await);
    assert_eq!(summary(&data), summary(&records));
    assert!(!has_more);
    // A full page says there is more.
    let (data, next, has_more) = page(&feed(&live, "limit=4").await);
    assert_eq!(data.len(), 4);
    assert!(has_more, "a fifth record is readable");
    assert_eq!(next, cursor_of(&data[3]), "a full page continues after its last record");
}

async fn a_long_poll_answers_when_a_change_commits_and_empty_after_its_wait(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let (_, end) = read(&live, None, 1, 100).await;

    // Nothing comes: an empty page after the wait, with a cursor to poll on.
    let started = Instant::now();
    let (data, next, has_more) = page(&feed(&live, &format!("after={end}&wait=1")).await);
    let waited = started.elapsed();
    assert!(data.is_empty() && !has_more);
    assert!(next >= end);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "answered after {waited:?} for wait=1"
    );

    // A change comes while it waits: answered with it, long before the wait ends.
    let path = format!("{}?after={next}&wait=20", feed_path(ACCOUNT));
    let poll = async {
        let started = Instant::now();
        let reply = live.send(Method::GET, &path, &authed(&[]), "").await;
        (reply, started, Instant::now())
    };
    let write = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writing = Instant::now();
        assert_no_content(&post(&live, &run, "pause", CURRENT, "").await);
        writing
    };
    let ((reply, started, answered), writing) = tokio::join!(poll, write);
    let (data, _, _) = page(&reply);
    assert_eq!(
        summary(&data),
        [entry(&run, 8, "pause")],
        "the record written while it waited"
    );
    assert!(answered >= writing, "it waited for the write");
    let delay = answered - writing;
    assert!(
        delay < Duration::from_secs(5),
        "answered {delay:?} after the write began ({:?} after the poll)",
        answered - started
    );
    println!("{backend:?}: the long poll answered {delay:?} after the write began");
}

async fn a_runs_history_pages_by_version_and_a_missing_run_is_404(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    assert_no_content(&post(&live, &run, "pause", CURRENT, "").await);
    assert_no_content(&post(&live, &run, "resume", "\"8\"", "").await);
    assert_eq!(
        put(&live, &run, &["\"9\""], &new_dates(&run, 2)).await.status,
        StatusCode::ACCEPTED
    );
    let path = history_path(&run);
    let live = &live;
    let get = |query: &str| {
        let uri = format!("{path}?{query}");
        async move { live.send(Method::GET, &uri, &authed(&[]), "").await }
    };
    let versions = |reply: &Reply| -> Vec<u64> {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        let data = reply.json["data"].as_array().unwrap();
        for record in data {
            assert!(
                record.get("cursor").is_none(),
                "history records carry no cursor: {record}"
            );
            assert_eq!(record["fielding_run_id"], run.id.to_string());
            assert_eq!(record["account_id"], ACCOUNT);
        }
        data.iter().map(|r| r["version"].as_u64().unwrap()).collect()
    };

    let first = get("limit=2").await;
    assert_eq!(versions(&first), [7, 8]);
    assert_eq!(
        (first.json["next_cursor"].as_str(), first.json["has_more"].as_bool()),
        (Some("8"), Some(true))
    );
    let second = get("after=8&limit=2").await;
    assert_eq!(versions(&second), [9, 10]);
    assert_eq!(second.json["next_cursor"], "10");
    assert_eq!(second.json["has_more"], false);
    assert_eq!(second.json["data"][1]["action"], "update_dates");
    let end = get("after=10").await;
    assert!(versions(&end).is_empty());
    assert_eq!(
        end.json["next_cursor"], "10",
        "nothing new: continue after the same version"
    );
    let all = get("after=0").await;
    assert_eq!(versions(&all), [7, 8, 9, 10]);
    assert_eq!(versions(&get("").await), [7, 8, 9, 10]);

    // A run that does not exist, or exists under another target group: 404.
    let missing = live
        .send(Method::GET, &history_path(&ghost(&run)), &authed(&[]), "")
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found_error");
    let elsewhere = FieldingRun {
        target_group_id: fixtures::target_group_id(),
        ..run.clone()
    };
    let moved = live
        .send(Method::GET, &history_path(&elsewhere), &authed(&[]), "")
        .await;
    assert_error(&moved, StatusCode::NOT_FOUND, "not_found_error");
}

async fn bad_parameters_are_400_naming_each_and_unknown_or_repeated_ones_too(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let cases: [(&str, &[&str]); 14] = [
        ("after=7", &["after"]),
        ("after=", &["after"]),
        ("after=01.0", &["after"]),
        ("after=1.0.0", &["after"]),
        ("limit=0", &["limit"]),
        ("limit=1001", &["limit"]),
        ("limit=ten", &["limit"]),
        ("wait=31", &["wait"]),
        ("wait=1.5", &["wait"]),
        ("wait=-1", &["wait"]),
        ("afer=1.0", &["afer"]),
        ("limit=5&limit=5", &["limit"]),
        ("after=x&limit=0&wait=99&extra=1", &["after", "limit", "wait", "extra"]),
        ("wait=1&wait=2&x=1&x=2", &["wait", "x"]),
    ];
    for (query, expected) in cases {
        let reply = feed(&live, query).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), *expected, "?{query}: {}", reply.json);
    }
    // Path, query and version problems in one answer, in that order.
    let reply = live
        .send(
            Method::GET,
            &api("/demand/accounts/0/fielding-run-changes?limit=0"),
            &[("authorization", "Bearer token-101")],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["account_id", "limit", "Cint-API-Version"]);

    let history: [(&str, &[&str]); 6] = [
        ("after=-1", &["after"]),
        ("after=1.0", &["after"]),
        ("after=08", &["after"]),
        ("limit=abc", &["limit"]),
        ("wait=1", &["wait"]),
        ("after=1&after=2&limit=0", &["limit", "after"]),
    ];
    for (query, expected) in history {
        let path = format!("{}?{query}", history_path(&run));
        let reply = live.send(Method::GET, &path, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), *expected, "?{query}: {}", reply.json);
    }
    let path = api(&format!(
        "/demand/accounts/101/projects/lower/target-groups/{}/fielding-runs/{}/changes?limit=0",
        run.target_group_id, run.id
    ));
    let reply = live.send(Method::GET, &path, &authed(&[]), "").await;
    assert_eq!(invalid_names(&reply), ["project_id", "limit"]);
    // Malformed input is judged before the run is looked for: a 400, not a 404.
    let reply = live
        .send(
            Method::GET,
            &format!("{}?limit=0", history_path(&ghost(&run))),
            &authed(&[]),
            "",
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
}

async fn the_feed_is_401_without_a_token_403_for_another_account_and_traced(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    for path in [feed_path(ACCOUNT), history_path(&run)] {
        let reply = live
            .send(Method::GET, &path, &[("cint-api-version", API_VERSION)], "")
            .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));

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
        if path == feed_path(ACCOUNT) {
            // Even a long poll is refused at once.
            let started = Instant::now();
            let reply = live
                .send(
                    Method::GET,
                    &format!("{path}?wait=20"),
                    &[("authorization", &other), ("cint-api-version", API_VERSION)],
                    "",
                )
                .await;
            assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
            assert!(started.elapsed() < Duration::from_secs(5));
        }

        let reply = live
            .send(Method::GET, &path, &[("authorization", "Bearer token-101")], "")
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["Cint-API-Version"]);

        let reply = live
            .send(
                Method::GET,
                &path,
                &authed(&[("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")]),
                "",
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        let [_, trace, span, _] = reply.traceparent();
        assert_eq!(trace, &TRACEPARENT[3..35], "the caller's trace continues");
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(reply.header("tracestate"), Some("congo=t61rcWkgMzE"));

        let reply = live.send(Method::POST, &path, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request_error");
    }
    // Another account's feed: 403 for this principal, 200 for its own.
    let reply = live.send(Method::GET, &feed_path(202), &authed(&[]), "").await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::GET,
            &feed_path(202),
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(
        reply.json["data"],
        serde_json::json!([]),
        "account 101's records are not 202's"
    );
}

async fn a_cursor_before_pruned_records_is_410_and_the_feed_restarts_after_them(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    assert_no_content(&post(&live, &run, "pause", CURRENT, "").await);
    let (records, end) = read(&live, None, 2, 100).await;
    let first = cursor_of(&records[0]);
    let last = cursor_of(&records[1]);

    // Every record so far is older than a cutoff a day ahead.
    let cutoff = Timestamp::from_unix_millis(chrono::Utc::now().timestamp_millis() + 86_400_000).unwrap();
    let pruned = live.store.prune_changes(cutoff, 1000).await.expect("prune_changes");
    assert!(pruned >= 2, "pruned {pruned}");

    for stale in [FeedPosition::ZERO, first] {
        let reply = feed(&live, &format!("after={stale}")).await;
        assert_error(&reply, StatusCode::GONE, "cursor_expired_error");
        let detail = reply.json["detail"].as_str().unwrap();
        assert!(detail.contains("expired"), "{detail}");
        assert!(reply.json.get("invalid_params").is_none(), "{}", reply.json);
    }
    // At or past the newest pruned record nothing was skipped: 200.
    for fine in [last, end] {
        let (data, _, _) = page(&feed(&live, &format!("after={fine}")).await);
        assert!(data.is_empty(), "{data:?}");
    }
    // From the start: the pruned records are not read, later ones are.
    let (data, _, has_more) = page(&feed(&live, "").await);
    assert!(data.is_empty() && !has_more, "{data:?}");
    assert_no_content(&post(&live, &run, "resume", "\"8\"", "").await);
    let (records, _) = read(&live, None, 1, 100).await;
    assert_eq!(summary(&records), [entry(&run, 9, "resume")]);
    assert!(cursor_of(&records[0]) > last);

    // The run's history keeps only what is kept: version 9, resuming after it.
    let history = live.send(Method::GET, &history_path(&run), &authed(&[]), "").await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.json);
    assert_eq!(
        history.json["data"].as_array().map(Vec::len),
        Some(1),
        "{}",
        history.json
    );
    assert_eq!(history.json["data"][0]["version"], 9);
    assert_eq!(history.json["next_cursor"], "9");
}

/// A long poll whose client goes away is dropped with its connection: its
/// subscription to the account's wake-ups ends at once, not at the end of
/// its `wait` (the memory store's notifier shows who is subscribed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_long_poll_ends_with_its_connection() {
    use tokio::io::AsyncWriteExt;

    let live = Live::start(Backend::Memory).await;
    live.seed(Status::Live, 7).await;
    let (_, end) = read(&live, None, 1, 100).await;
    let notifier = live
        .store
        .change_notifier()
        .expect("the memory store wakes its watchers");
    assert_eq!(notifier.watched_accounts(), 0);
    let address = live.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {}?after={end}&wait=30 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer token-101\r\n\
         Cint-API-Version: {API_VERSION}\r\n\r\n",
        feed_path(ACCOUNT)
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while notifier.watched_accounts() == 0 {
        assert!(Instant::now() < deadline, "the long poll never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(socket);
    let gone = Instant::now();
    while notifier.watched_accounts() > 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the abandoned long poll still waits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "the abandoned long poll ended {:?} after its client left",
        gone.elapsed()
    );
}
