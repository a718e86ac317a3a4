//! Retention through the whole server: a finished creation job is
//! readable until its retention runs out, then its GET is a 404 and its
//! idempotency key records a new job; a change record is in the feed until
//! its retention runs out, then a cursor before it is a 410.

use std::time::Duration;

use fielding_core::{AccountId, Timestamp};
use fielding_server::retention::{ChangeRetentionConfig, RetentionConfig};
use fielding_server::{mint_token, Database, JwtSecret, Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::Value;

/// Under the server's default base path, `/v1`.
const JOBS: &str = "/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-run-jobs/schedule-from-draft";

fn in_days(days: i64) -> Timestamp {
    let now = fielding_core::Clock::now(&fielding_core::SystemClock).unix_millis();
    Timestamp::from_unix_millis(now + days * 86_400_000).expect("a date in range")
}

#[tokio::test]
async fn an_expired_job_is_a_404_and_its_key_records_a_new_job() {
    let dir = tempfile::tempdir().unwrap();
    let secret = JwtSecret::new("a secret for the retention test...").unwrap();
    let mut config = ServerConfig::new(Database::Sqlite(dir.path().join("jobs.sqlite3")), secret.clone());
    config.job_retention = Some(RetentionConfig {
        retention: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        batch: 10,
        ..RetentionConfig::default()
    });
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let bearer = mint_token(
        &secret,
        uuid::Uuid::new_v4(),
        &[AccountId::new(101).unwrap()],
        Duration::from_secs(600),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let body = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        in_days(10),
        in_days(40)
    );
    let submit = |key: &'static str| {
        client
            .post(format!("{base}{JOBS}"))
            .bearer_auth(&bearer)
            .header("Cint-API-Version", "2025-12-18")
            .header("idempotency-key", key)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
    };
    let read = |location: String| {
        client
            .get(format!("{base}{location}"))
            .bearer_auth(&bearer)
            .header("Cint-API-Version", "2025-12-18")
            .send()
    };

    let created = submit("kept-a-second").await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let job = read(location.clone()).await.unwrap();
    assert_eq!(job.status(), StatusCode::OK, "readable while within its retention");

    // Retention 1 s, a sweep every 100 ms: gone within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let job = read(location.clone()).await.unwrap();
        if job.status() == StatusCode::NOT_FOUND {
            let body: Value = job.json().await.unwrap();
            assert_eq!(body["object"], "not_found_error", "{body}");
            break;
        }
        assert_eq!(job.status(), StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "the job never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The key is free again: the same submission records a new job (it
    // fails, since the target group has its run now, but it is recorded).
    let again = submit("kept-a-second").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let new_location = again.headers()["location"].to_str().unwrap().to_owned();
    assert_ne!(new_location, location, "a new job, not the expired one");

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// Change retention through the whole server: a change record is in the
/// feed until its retention runs out; then a cursor before it is a 410
/// with the contract's error body, and the feed goes on after it.
#[tokio::test]
async fn an_expired_change_record_leaves_the_feed_and_a_cursor_before_it_is_410() {
    let secret = JwtSecret::new("a secret for the retention test...").unwrap();
    let mut config = ServerConfig::new(Database::Memory, secret.clone());
    config.job_retention = None;
    config.change_retention = Some(ChangeRetentionConfig {
        retention: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        batch: 10,
    });
    let server = Server::bind(&config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let bearer = mint_token(
        &secret,
        uuid::Uuid::new_v4(),
        &[AccountId::new(101).unwrap()],
        Duration::from_secs(600),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let get = |path: String| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(&bearer)
            .header("Cint-API-Version", "2025-12-18")
            .send()
    };
    let feed = |query: &str| get(format!("/v1/demand/accounts/101/fielding-run-changes?{query}"));

    let body = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        in_days(10),
        in_days(40)
    );
    let created = client
        .post(format!("{base}{JOBS}"))
        .bearer_auth(&bearer)
        .header("Cint-API-Version", "2025-12-18")
        .header("idempotency-key", "a-run-to-change")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let page: Value = feed("").await.unwrap().json().await.unwrap();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");
    let record = page["data"][0].clone();
    let cursor = record["cursor"].as_str().unwrap().to_owned();
    let run_path = format!(
        "/v1/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs/{}",
        record["project_id"].as_str().unwrap(),
        record["target_group_id"].as_str().unwrap(),
        record["fielding_run_id"].as_str().unwrap()
    );

    // Retention 1 s, a sweep every 100 ms: gone within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page: Value = feed("").await.unwrap().json().await.unwrap();
        if page["data"] == serde_json::json!([]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never expired: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired = feed("after=0.0").await.unwrap();
    assert_eq!(expired.status(), StatusCode::GONE);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["object"], "cursor_expired_error", "{body}");
    assert!(
        body["id"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{body}"
    );
    let at_the_record = feed(&format!("after={cursor}")).await.unwrap();
    assert_eq!(at_the_record.status(), StatusCode::OK, "nothing after it was pruned");
    let history: Value = get(format!("{run_path}/changes")).await.unwrap().json().await.unwrap();
    assert_eq!(history["data"], serde_json::json!([]), "{history}");

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
