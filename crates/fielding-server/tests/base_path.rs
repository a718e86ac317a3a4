//! The real binary's base path: the API under the contract's `/v1` by
//! default (where a client generated from the contract calls it), `/` with
//! `--base-path /` (the paths as the contract writes them), any other
//! with `--base-path` or `FIELDING_BASE_PATH`; `/health` and `/ready` at
//! the root whatever it is; a bad one refused before the server starts.

mod common;

use common::*;
use reqwest::StatusCode;

/// The contract path of the schedule-from-draft jobs of the test's target group.
fn schedule_jobs() -> String {
    format!(
        "/demand/accounts/101/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-run-jobs/schedule-from-draft"
    )
}

/// The path of the test's list, relative to the base path.
fn list() -> String {
    list_path(101)
        .strip_prefix(API)
        .expect("under the default base path")
        .to_owned()
}

/// Submits a schedule job at `path`; its `Location`.
async fn submit(server: &Server, bearer: &str, path: &str) -> String {
    let body = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        in_days(10),
        in_days(40)
    );
    let response = client()
        .post(server.url(path))
        .bearer_auth(bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("idempotency-key", "base-path")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "POST {path}");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// `GET /health` and `GET /ready` answer 200 at the root.
async fn probes_at_the_root(server: &Server) {
    for probe in ["/health", "/ready"] {
        assert_eq!(get(server, probe, None).await.0, StatusCode::OK, "{probe}");
    }
}

#[tokio::test]
async fn by_default_the_api_is_under_v1_and_the_bare_paths_are_a_404() {
    let server = Server::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let printed = server.printed();
    assert!(
        printed.contains(&format!("api: http://{}/v1", server.addr)),
        "the banner names the API's URL:\n{printed}"
    );
    assert!(
        printed.contains(&format!("http://{}/v1/demand/accounts/101/", server.addr)),
        "the banner's curl is under /v1:\n{printed}"
    );
    let bearer = token(SECRET, &[101]);

    let (status, _, body) = get(&server, &format!("/v1{}", list()), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(&server, &list(), Some(&bearer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["object"], "not_found_error", "in the contract's error format");

    let submitted = format!("/v1{}", schedule_jobs());
    let location = submit(&server, &bearer, &submitted).await;
    assert!(location.starts_with(&format!("{submitted}/")), "{location}");
    let (status, _, job) = get(&server, &location, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "Completed", "{job}");

    probes_at_the_root(&server).await;
    assert_eq!(
        get(&server, "/v1/health", None).await.0,
        StatusCode::UNAUTHORIZED,
        "not a probe: the API's"
    );
}

#[tokio::test]
async fn base_path_slash_restores_the_bare_paths() {
    let server = Server::start(&["--database", "memory", "--jwt-secret", SECRET, "--base-path", "/"]);
    let bearer = token(SECRET, &[101]);

    let (status, _, body) = get(&server, &list(), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get(&server, &format!("/v1{}", list()), Some(&bearer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let submitted = schedule_jobs();
    let location = submit(&server, &bearer, &submitted).await;
    assert!(location.starts_with(&format!("{submitted}/")), "{location}");
    let (status, _, job) = get(&server, &location, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{job}");

    probes_at_the_root(&server).await;
}

#[tokio::test]
async fn the_environment_variable_sets_it_and_the_flag_wins() {
    let mut from_env = command();
    from_env.env("FIELDING_BASE_PATH", "/api/fielding");
    let server = Server::launch(from_env, &["--database", "memory", "--jwt-secret", SECRET]);
    let bearer = token(SECRET, &[101]);
    let (status, _, body) = get(&server, &format!("/api/fielding{}", list()), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let location = submit(&server, &bearer, &format!("/api/fielding{}", schedule_jobs())).await;
    assert!(location.starts_with("/api/fielding/demand/"), "{location}");
    probes_at_the_root(&server).await;
    drop(server);

    let mut both = command();
    both.env("FIELDING_BASE_PATH", "/api/fielding");
    let server = Server::launch(
        both,
        &["--database", "memory", "--jwt-secret", SECRET, "--base-path", "/v2"],
    );
    let (status, _, body) = get(&server, &format!("/v2{}", list()), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn a_bad_base_path_exits_non_zero_naming_the_flag_and_the_rule() {
    for (bad, rule) in [
        ("v1", "must start with `/`"),
        ("/v1/", "must not end with `/`"),
        ("/v1?x=1", "'?'"),
        ("/v1#top", "'#'"),
        ("/a/../b", "`..`"),
        ("/v 1", "' '"),
    ] {
        let output = run(&["--listen", "127.0.0.1:0", "--database", "memory", "--base-path", bad]);
        assert!(!output.status.success(), "{bad:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("--base-path"), "{bad:?}: {stderr}");
        assert!(stderr.contains(rule), "{bad:?}: {stderr}");
    }
    let output = command()
        .env("FIELDING_BASE_PATH", "/".repeat(300))
        .args(["--listen", "127.0.0.1:0", "--database", "memory"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("at most 256 bytes"), "{stderr}");
}
