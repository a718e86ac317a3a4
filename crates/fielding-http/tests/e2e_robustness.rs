//! Generated malformed requests over real TCP, against one live server per
//! test (in-memory store, SQLite on a temporary file, PostgreSQL in a fresh
//! schema): never a 5xx,
//! every response in the contract's shape (errors in its `Error` format),
//! and the seeded runs never changed by a request that got a non-2xx answer.

mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
}

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use common::live::{api, run_path, Backend, Live, Options, Reply};
use fielding_core::{AccountId, Action, ChangeRecord, FieldingRun, Scope, Status};
use fielding_http::rate_limit::RateLimitPolicy;
use fielding_testkit::fixtures;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// How many responses of each status a run saw.
type Seen = std::sync::Mutex<std::collections::BTreeMap<u16, usize>>;

/// Stands for a valid PUT body for the run as it is when sent.
const DATES: &[u8] = b"<dates>";

/// Stands for "the run's ETag at the time of sending" in generated headers.
const CURRENT: &[u8] = b"<current>";

#[derive(Debug, Clone)]
enum Id {
    Real,
    Lower,
    Short,
    Long,
    Percent,
    Junk(String),
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    account: String,
    project: Id,
    target_group: Id,
    run: Id,
    collection: String,
    tail: String,
    query: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        3 => Just(Method::GET),
        4 => Just(Method::PUT),
        4 => Just(Method::POST),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
        1 => Just(Method::HEAD),
        1 => Just(Method::OPTIONS),
        1 => "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap_or(Method::TRACE)),
    ]
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        16 => Just(Id::Real),
        1 => Just(Id::Lower),
        1 => Just(Id::Short),
        1 => Just(Id::Long),
        1 => Just(Id::Percent),
        1 => "[A-Za-z0-9%._~-]{0,30}".prop_map(Id::Junk),
        1 => prop_oneof![Just("%FF%FE"), Just("%00"), Just("%2F"), Just("..%2F.."), Just("%C3%A9")]
            .prop_map(|s| Id::Junk(s.to_owned())),
    ]
}

fn account() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => Just("101".to_owned()),
        1 => Just("202".to_owned()),
        1 => prop_oneof![Just("0"), Just("-1"), Just("2147483648"), Just("99999999999999999999"), Just("1e3"), Just("%31%30%31"), Just("")]
            .prop_map(str::to_owned),
        1 => "[0-9a-z]{1,12}",
    ]
}

fn tail() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        2 => prop_oneof![Just("/pause"), Just("/resume"), Just("/complete"), Just("/relaunch"), Just("/launch-now")]
            .prop_map(str::to_owned),
        1 => prop_oneof![Just("/"), Just("/pause/"), Just("/pause/x"), Just("/a/b/c"), Just("/%70ause"), Just("/PAUSE")]
            .prop_map(str::to_owned),
        1 => "(/[a-z%0-9-]{0,12}){1,3}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(0x20u8..0x7f, 0..48),
        proptest::collection::vec(
            any::<u8>().prop_filter("header-safe", |b| *b >= 0x20 && *b != 0x7f),
            0..48
        ),
    ]
}

fn if_match() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => Just(CURRENT.to_vec()),
        1 => Just(b"\"6\"".to_vec()),
        1 => Just(b"*".to_vec()),
        1 => Just(b"W/\"7\"".to_vec()),
        1 => Just(b"7".to_vec()),
        1 => Just(b"\"99999999999999999999999\"".to_vec()),
        1 => Just(b"\"-1\", ,,".to_vec()),
        2 => header_value(),
    ]
}

fn api_version() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        18 => Just(b"2025-12-18".to_vec()),
        1 => Just(b"2025-02-30".to_vec()),
        1 => Just(b"2025-12-18 ".to_vec()),
        1 => header_value(),
    ]
}

fn authorization() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        24 => Just(b"Bearer token-101".to_vec()),
        1 => Just(b"Bearer token-other".to_vec()),
        1 => Just(b"bearer   token-101".to_vec()),
        1 => Just(b"Basic dG9rZW4tMTAxOg==".to_vec()),
        1 => header_value(),
    ]
}

fn traceparent() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(common::live::TRACEPARENT.as_bytes().to_vec()),
        2 => "[0-9a-fA-F]{2}-[0-9a-f]{30,33}-[0-9a-f]{15,17}-[0-9a-f]{2}(-[a-z]{0,4})?".prop_map(String::into_bytes),
        1 => header_value(),
    ]
}

/// Mostly JSON, so most bodies are read; sometimes anything else (415).
fn content_type() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => Just(b"application/json".to_vec()),
        2 => Just(b"application/json; charset=utf-8".to_vec()),
        1 => Just(b"text/plain".to_vec()),
        1 => Just(b"multipart/form-data; boundary=x".to_vec()),
        1 => header_value(),
    ]
}

/// Mostly one line, sometimes none, sometimes two.
fn lines<S: Strategy<Value = Vec<u8>>>(value: fn() -> S) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        1 => Just(Vec::new()),
        16 => value().prop_map(|v| vec![v]),
        1 => proptest::collection::vec(value(), 2),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    (
        lines(authorization),
        lines(api_version),
        lines(if_match),
        proptest::option::of(traceparent()),
        proptest::option::of(header_value()),
        proptest::option::weighted(0.9, content_type()),
    )
        .prop_map(|(auth, version, tags, trace, state, content)| {
            let mut out = Vec::new();
            // Usually exactly one credential and one version, as a client sends.
            out.extend(auth.into_iter().map(|v| ("authorization", v)));
            out.extend(version.into_iter().map(|v| ("cint-api-version", v)));
            out.extend(tags.into_iter().map(|v| ("if-match", v)));
            out.extend(trace.map(|v| ("traceparent", v)));
            out.extend(state.map(|v| ("tracestate", v)));
            out.extend(content.map(|v| ("content-type", v)));
            out
        })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!("2031-01-01T00:00:00Z")),
        Just(json!("2031-02-30T00:00:00Z")),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("start_fielding_at".to_owned()),
                    Just("end_fielding_at".to_owned()),
                    "[a-z_]{1,10}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => Just(b"{}".to_vec()),
        // The run's own start and a later end: a PUT the live run accepts.
        4 => Just(DATES.to_vec()),
        // Valid dates, so some requests are accepted and the rest must not be.
        3 => (1i64..60, 0i64..3).prop_map(|(days, start)| {
            let now = chrono::Utc::now();
            let start = now - chrono::TimeDelta::days(1) + chrono::TimeDelta::days(start * 400);
            let end = now + chrono::TimeDelta::days(days);
            format!(
                r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
                start.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                end.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            )
            .into_bytes()
        }),
        1 => Just(br#"{"start_fielding_at":null,"end_fielding_at":[]}"#.to_vec()),
        1 => Just(br#"{"start_fielding_at":1e400,"end_fielding_at":-99999999999999999999999999}"#.to_vec()),
        1 => Just(br#"{"start_fielding_at":"9999-12-31T23:59:59.999Z","end_fielding_at":"0000-01-01T00:00:00Z"}"#.to_vec()),
        1 => Just(br#"{"start_fielding_at":"2031-01-01T00:00:00Z","start_fielding_at":"2031-01-02T00:00:00Z"}"#.to_vec()),
        1 => (1usize..5000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => (1usize..300).prop_map(|depth| {
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)).into_bytes()
        }),
        1 => (1000usize..3000).prop_map(|n| vec![b' '; n]),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        2 => "\\PC{0,64}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..96),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        1 => "\\?[a-z=&%0-9]{0,20}",
    ]
}

/// A method and a tail: mostly one the router serves, sometimes any.
fn endpoint() -> impl Strategy<Value = (Method, String)> {
    let served = prop_oneof![
        Just((Method::GET, String::new())),
        Just((Method::PUT, String::new())),
        Just((Method::POST, "/pause".to_owned())),
        Just((Method::POST, "/resume".to_owned())),
        Just((Method::POST, "/complete".to_owned())),
        Just((Method::POST, "/relaunch".to_owned())),
        Just((Method::POST, "/launch-now".to_owned())),
    ];
    prop_oneof![3 => served, 1 => (methods(), tail())]
}

fn cases() -> impl Strategy<Value = Case> {
    (
        endpoint(),
        account(),
        (id(), id(), id()),
        prop_oneof![8 => Just("fielding-runs".to_owned()), 1 => Just("fielding-run".to_owned()), 1 => Just("Fielding-Runs".to_owned()), 1 => Just("fielding-runs/".to_owned())],
        query(),
        headers(),
        body(),
    )
        .prop_map(
            |((method, tail), account, (project, target_group, run), collection, query, headers, body)| Case {
                method,
                account,
                project,
                target_group,
                run,
                collection,
                tail,
                query,
                headers,
                body,
            },
        )
}

fn render(id: &Id, real: &str) -> String {
    match id {
        Id::Real => real.to_owned(),
        Id::Lower => real.to_lowercase(),
        Id::Short => real[..real.len() - 1].to_owned(),
        Id::Long => format!("{real}0"),
        Id::Percent => real.bytes().map(|b| format!("%{b:02X}")).collect(),
        Id::Junk(junk) => junk.clone(),
    }
}

impl Case {
    fn path(&self, run: &FieldingRun) -> String {
        let mut path = api(&format!(
            "/demand/accounts/{}/projects/{}/target-groups/{}/{}",
            self.account,
            render(&self.project, run.project_id.as_str()),
            render(&self.target_group, run.target_group_id.as_str()),
            self.collection,
        ));
        // Sometimes the list (no run id), mostly one run.
        if !matches!(&self.run, Id::Junk(j) if j.is_empty()) {
            path.push('/');
            path.push_str(&render(&self.run, run.id.as_str()));
        }
        path.push_str(&self.tail);
        path
    }

    fn header_map(&self, current: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let value = if value == CURRENT { current.as_bytes() } else { value };
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    }
}

async fn seed(live: &Live, account: i64, status: Status) -> FieldingRun {
    let scope = Scope::new(
        AccountId::new(account).unwrap(),
        fixtures::project_id(),
        fixtures::target_group_id(),
    );
    let run = fixtures::run()
        .with_scope(scope)
        .with_status(status)
        .with_version(7)
        .build();
    live.store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .unwrap();
    run
}

async fn one_case(
    live: &Live,
    client: &reqwest::Client,
    runs: &[FieldingRun],
    case: Case,
    seen: &Seen,
) -> Result<(), TestCaseError> {
    // The first run is the target; the others (another status, another
    // account) are bystanders.
    let target = &runs[0];
    let mut before = Vec::new();
    for run in runs {
        before.push(live.snapshot(&run.key()).await);
    }
    let current = before[0]
        .0
        .as_ref()
        .map(|r| format!("\"{}\"", r.version.get()))
        .unwrap_or_default();
    let body = match (&before[0].0, case.body == DATES) {
        (Some(run), true) => {
            let days = 1 + (run.version.get() % 20) as i64;
            common::live::new_dates(run, days).into_bytes()
        }
        _ => case.body.clone(),
    };
    let path = format!("{}{}", case.path(target), case.query);
    let Ok(url) = reqwest::Url::parse(&format!("{}{path}", live.base)) else {
        return Ok(()); // not a URL a client could send
    };
    let request = client
        .request(case.method.clone(), url.clone())
        .headers(case.header_map(&current))
        .body(body)
        .build()
        .map_err(|e| TestCaseError::fail(format!("building the request: {e}")))?;
    let reply: Reply = live.execute_on(client, request).await;
    *seen.lock().unwrap().entry(reply.status.as_u16()).or_default() += 1;
    let what = format!("{} {path} -> {}", case.method, reply.status);
    prop_assert!(
        !reply.status.is_server_error(),
        "{what}: {}",
        String::from_utf8_lossy(&reply.bytes)
    );
    prop_assert!(reply.headers.contains_key("traceparent"), "{what}: no traceparent");
    if case.method != Method::HEAD {
        // The path as the server saw it (the URL parser may normalise it).
        common::contract::contract().check(&case.method, url.path(), reply.status, &reply.headers, &reply.json);
        if !reply.status.is_success() {
            let object = reply.json["object"].as_str().unwrap_or_default();
            prop_assert!(!object.is_empty(), "{what}: error body without object: {}", reply.json);
            if reply.status.as_u16() != 429 {
                prop_assert!(reply.json["detail"].is_string(), "{what}: {}", reply.json);
            }
        }
    }
    if !reply.status.is_success() {
        for (run, before) in runs.iter().zip(&before) {
            let after = live.snapshot(&run.key()).await;
            prop_assert_eq!(before, &after, "{}: a refused request changed a run", what);
        }
    } else {
        // A success may change the target only, never a bystander.
        for (run, before) in runs.iter().zip(&before).skip(1) {
            let after = live.snapshot(&run.key()).await;
            prop_assert_eq!(before, &after, "{}: a request to another run changed this one", what);
        }
    }
    Ok(())
}

fn fuzz(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if backend == Backend::Postgres && !runtime.block_on(common::pg::available()) {
        return; // a developer's machine without PostgreSQL: see `common::pg`
    }
    let (live, runs) = runtime.block_on(async {
        let live = Live::start_with(
            backend,
            Options {
                rate_limit: Some(RateLimitPolicy::per_second(100_000, 100_000).unwrap()),
                body_limit: 1024,
                ..Options::default()
            },
        )
        .await;
        let runs = vec![
            seed(&live, 101, Status::Live).await,
            seed(&live, 101, Status::Completed).await,
            seed(&live, 202, Status::Live).await,
        ];
        (live, runs)
    });
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    });
    let seen = Seen::default();
    // A new connection per request: an oversized body may leave the server
    // closing a connection a pooled client would reuse (see e2e_requests.rs,
    // `oversized_body_answer_announces_connection_close`).
    let client = common::live::unpooled_client();
    let result = runner.run(&cases(), |case| {
        runtime.block_on(one_case(&live, &client, &runs, case, &seen))
    });
    if let Err(failure) = result {
        panic!("{backend:?}: {failure}");
    }
    let seen = seen.into_inner().unwrap();
    println!("{backend:?}: statuses seen {seen:?}");
    // The generator reaches past the first gate: several refusals, not
    // only 401 at the door.
    assert!(seen.len() >= 4, "{backend:?}: too few distinct statuses: {seen:?}");
    let (run, _) = runtime.block_on(live.snapshot(&runs[0].key()));
    assert!(run.is_some(), "the run is still there");
    drop(live);
    runtime.shutdown_background();
}

#[test]
fn malformed_requests_over_tcp_memory() {
    fuzz(Backend::Memory);
}

#[test]
fn malformed_requests_over_tcp_sqlite() {
    fuzz(Backend::Sqlite);
}

#[test]
fn malformed_requests_over_tcp_postgres() {
    fuzz(Backend::Postgres);
}

/// Each path shape the generator makes, checked once by hand so the
/// generator is known to produce what it claims.
#[test]
fn rendered_paths_have_the_intended_shapes() {
    let scope = Scope::new(
        AccountId::new(101).unwrap(),
        fixtures::project_id(),
        fixtures::target_group_id(),
    );
    let run = fixtures::run().with_scope(scope).build();
    let real = run.id.as_str();
    assert_eq!(render(&Id::Real, real), real);
    assert_eq!(render(&Id::Short, real).len(), 25);
    assert_eq!(render(&Id::Long, real).len(), 27);
    assert_eq!(render(&Id::Lower, real), real.to_lowercase());
    assert_eq!(render(&Id::Percent, real).len(), 26 * 3);
    let case = Case {
        method: Method::GET,
        account: "101".into(),
        project: Id::Real,
        target_group: Id::Real,
        run: Id::Junk(String::new()),
        collection: "fielding-runs".into(),
        tail: String::new(),
        query: String::new(),
        headers: vec![("if-match", CURRENT.to_vec())],
        body: Vec::new(),
    };
    assert!(case.path(&run).ends_with("/fielding-runs"));
    assert_eq!(case.header_map("\"7\"")["if-match"], "\"7\"");
    let case = Case {
        run: Id::Real,
        tail: "/pause".into(),
        ..case
    };
    assert_eq!(case.path(&run), format!("{}/pause", run_path(&run)));
}
