//! `GET /metrics` on the real binary: the Prometheus text format, no token
//! needed, and the counters move with traffic.

mod common;

use common::*;
use reqwest::StatusCode;

/// The value of the sample `name{labels}` (labels as printed, e.g.
/// `status="2xx"`) in a Prometheus text page, if it is there.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    page.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let matches = series == name
            || (series.starts_with(&format!("{name}{{")) && (labels.is_empty() || series.contains(labels)));
        matches.then(|| value.parse().ok()).flatten()
    })
}

async fn metrics_page(server: &Server) -> String {
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_are_exported_without_a_token_and_count_the_traffic() {
    let server = Server::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let bearer = token(SECRET, &[101]);
    for _ in 0..3 {
        let (status, _, body) = get(&server, &list_path(101), Some(&bearer)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _, _) = get(&server, &list_path(101), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let page = metrics_page(&server).await;
    let ok = sample(&page, "fielding_server_responses_total", "status=\"2xx\"")
        .unwrap_or_else(|| panic!("no 2xx responses counted:\n{page}"));
    let refused = sample(&page, "fielding_server_responses_total", "status=\"4xx\"")
        .unwrap_or_else(|| panic!("no 4xx responses counted:\n{page}"));
    assert!(ok >= 3.0 && refused >= 1.0, "2xx {ok}, 4xx {refused}:\n{page}");
    let accepted = sample(&page, "fielding_server_connections_accepted_total", "")
        .unwrap_or_else(|| panic!("no connections counted:\n{page}"));
    assert!(accepted >= 1.0, "{page}");

    // The counters move: three more reads, three more 2xx answers.
    for _ in 0..3 {
        get(&server, &list_path(101), Some(&bearer)).await;
    }
    let later = metrics_page(&server).await;
    let ok_later = sample(&later, "fielding_server_responses_total", "status=\"2xx\"").unwrap_or_default();
    assert!(ok_later >= ok + 3.0, "2xx went from {ok} to {ok_later}");
}

/// A creation job through the API shows in the library's own metrics: the
/// command, the job's states, the store calls' latency histogram, and a
/// rate-limit refusal by its reason.
#[tokio::test]
async fn the_librarys_command_job_store_and_refusal_metrics_are_exported() {
    let server = Server::start(&[
        "--database",
        "memory",
        "--jwt-secret",
        SECRET,
        "--rate-limit-per-second",
        "1",
        "--rate-limit-burst",
        "2",
    ]);
    let bearer = token(SECRET, &[101]);
    let body = format!(r#"{{"end_fielding_at":"{}"}}"#, in_days(30));
    let path = api(&format!(
        "/demand/accounts/101/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-run-jobs/launch-from-draft"
    ));
    let response = client()
        .post(server.url(&path))
        .bearer_auth(&bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("idempotency-key", "metrics-1")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{}",
        response.text().await.unwrap()
    );
    // The burst is 2: a few quick reads are refused with 429.
    let mut limited = 0;
    for _ in 0..4 {
        let (status, _, _) = get(&server, &list_path(101), Some(&bearer)).await;
        limited += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(limited >= 1, "the rate limit never refused");

    let page = metrics_page(&server).await;
    let launched = sample(&page, "fielding_commands_total", "action=\"launch\",outcome=\"ok\"")
        .or_else(|| sample(&page, "fielding_commands_total", "outcome=\"ok\",action=\"launch\""));
    assert_eq!(launched, Some(1.0), "{page}");
    for state in ["submitted", "completed"] {
        let labels = format!("kind=\"creation\",state=\"{state}\"");
        let alt = format!("state=\"{state}\",kind=\"creation\"");
        let jobs = sample(&page, "fielding_jobs_total", &labels).or_else(|| sample(&page, "fielding_jobs_total", &alt));
        assert_eq!(jobs, Some(1.0), "{state}:\n{page}");
    }
    let inserts = sample(
        &page,
        "fielding_store_call_duration_seconds_count",
        "operation=\"insert\"",
    );
    assert_eq!(inserts, Some(1.0), "{page}");
    assert!(
        page.contains("fielding_store_call_duration_seconds_bucket{operation=\"insert\",le=\"0.001\"}"),
        "a histogram with buckets, not a summary:\n{page}"
    );
    let refused = sample(&page, "fielding_http_refusals_total", "reason=\"rate_limited\"");
    assert!(refused.is_some_and(|n| n >= 1.0), "{page}");
    assert!(page.contains("# HELP fielding_commands_total"), "described:\n{page}");
}

#[tokio::test]
async fn metrics_off_records_nothing_and_the_route_is_404() {
    let server = Server::start(&["--database", "memory", "--jwt-secret", SECRET, "--metrics", "off"]);
    let bearer = token(SECRET, &[101]);
    let (status, _, body) = get(&server, &list_path(101), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
