//! A small HTTP client for the reliability tests: seed runs through the
//! API, read a run's version and end, PUT new dates with `If-Match`, and
//! check a run's change records against what the clients saw.

use std::time::Duration;

use fielding_core::{Action, ChangeRecord, FieldingRunId, RunKey, Scope, Timestamp};
use reqwest::StatusCode;
use serde_json::Value;

use super::{in_days, Server, API, API_VERSION, PROJECT};

/// The account every reliability test works in.
pub const ACCOUNT: u32 = 101;

/// The target group of run `index` (one run per target group): the
/// shared test project's target group with its last two characters
/// replaced by `index` (so `index` < 100).
pub fn target_group(index: usize) -> String {
    assert!(index < 100, "at most 100 target groups");
    format!("01BTGNYV6HRNK8K8VKZASZCF{index:02}")
}

/// A run the tests write to: where it is and how to address it.
#[derive(Debug, Clone)]
pub struct SeededRun {
    /// `/v1/demand/accounts/…/fielding-runs/{id}`.
    pub path: String,
    /// The store's key, for reading its change records.
    pub key: RunKey,
    /// Its start, which no test changes.
    pub start: Timestamp,
    /// Its end as seeded.
    pub end: Timestamp,
}

/// A run as a GET shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// From the ETag.
    pub version: u64,
    /// `end_fielding_at`.
    pub end: Timestamp,
}

/// The version an `ETag: "N"` header names.
pub fn etag_version(response: &reqwest::Response) -> Option<u64> {
    let etag = response.headers().get(reqwest::header::ETAG)?.to_str().ok()?;
    etag.trim_matches('"').parse().ok()
}

/// One server's API for one bearer token.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    bearer: String,
}

impl Api {
    /// A client for `server` with its own connection pool.
    pub fn new(server: &Server, bearer: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Self {
            client,
            base: server.url(""),
            bearer: bearer.to_owned(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.bearer)
            .header("Cint-API-Version", API_VERSION)
    }

    /// Schedules run `index` (in target group [`target_group`]`(index)`)
    /// through a schedule-from-draft job, which must complete.
    pub async fn seed_run(&self, index: usize) -> SeededRun {
        let tg = target_group(index);
        let scope_path = format!("{API}/demand/accounts/{ACCOUNT}/projects/{PROJECT}/target-groups/{tg}");
        let (start, end) = (in_days(10), in_days(40));
        let created = self
            .request(
                reqwest::Method::POST,
                &format!("{scope_path}/fielding-run-jobs/schedule-from-draft"),
            )
            .header("idempotency-key", format!("reliability-seed-{index}"))
            .json(&serde_json::json!({ "start_fielding_at": start, "end_fielding_at": end }))
            .send()
            .await
            .expect("submit a schedule job");
        assert_eq!(created.status(), StatusCode::CREATED, "seeding run {index}");
        let location = created.headers()["location"].to_str().expect("a Location").to_owned();
        let job: Value = self
            .request(reqwest::Method::GET, &location)
            .send()
            .await
            .expect("read the job")
            .json()
            .await
            .expect("a job body");
        assert_eq!(job["status"], "Completed", "{job}");
        let id = job["created_fielding_run_id"].as_str().expect("the new run's id");
        let scope = Scope::parse(&ACCOUNT.to_string(), PROJECT, &tg).expect("a valid scope");
        let key = scope.run(FieldingRunId::parse(id).expect("a run id"));
        SeededRun {
            path: format!("{scope_path}/fielding-runs/{id}"),
            key,
            start,
            end,
        }
    }

    /// GET the run: its version and end. `Err` only when the request did
    /// not get an answer (the server is gone); any answer but 200 panics.
    pub async fn read(&self, run: &SeededRun) -> Result<Seen, reqwest::Error> {
        let response = self.request(reqwest::Method::GET, &run.path).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "GET {}", run.path);
        let version = etag_version(&response).expect("an ETag on a GET");
        let body: Value = response.json().await?;
        let end = body["end_fielding_at"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("no end_fielding_at in {body}"));
        Ok(Seen { version, end })
    }

    /// PUT the run's dates (its start, `end`) with `If-Match: "version"`.
    pub async fn put_end(&self, run: &SeededRun, version: u64, end: Timestamp) -> reqwest::Result<reqwest::Response> {
        self.request(reqwest::Method::PUT, &run.path)
            .header("If-Match", format!("\"{version}\""))
            .json(&serde_json::json!({ "start_fielding_at": run.start, "end_fielding_at": end }))
            .send()
            .await
    }
}

/// `at` plus `millis` milliseconds.
pub fn plus_millis(at: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(at.unix_millis() + millis).expect("a date in range")
}

/// Asserts that `records` are exactly versions `1..=final_version`, in
/// order, each once, the first the creation and the rest date updates that
/// left the start alone: a gap is a write that lost its record, a
/// duplicate two writers on one version.
pub fn assert_contiguous(records: &[ChangeRecord], final_version: u64, what: &str) {
    let versions: Vec<u64> = records.iter().map(|r| r.version.get()).collect();
    let expected: Vec<u64> = (1..=final_version).collect();
    assert_eq!(versions, expected, "{what}: change record versions");
    for record in &records[1..] {
        assert_eq!(record.action, Action::UpdateDates, "{what}: {record:?}");
        assert_eq!(Some(record.start_to), record.start_from, "{what}: {record:?}");
    }
}
