//! Generated requests through the router, in-process. Most are what a
//! client would send (a valid token, an existing run in some status, a
//! plausible body, the current `If-Match`), so they reach the handlers and
//! the lifecycle; a minority carry one or more mutations (bad credentials,
//! another account, a stale or malformed tag, a bad API version, a wrong
//! method, a broken path or body). For every request: never a 5xx, never a
//! panic, `traceparent` always, errors in the error format, a refused
//! request changes no run, a success changes only its target and by at
//! most one version. Over the whole run every kind of answer is reached,
//! successes included, so those properties are exercised where it matters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use fielding_core::{AccountId, FieldingRun, FieldingRunId, FieldingService, Scope, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

const API_VERSION: &str = "2025-12-18";
/// Every seeded run is at version 3.
const VERSION: u64 = 3;
const COMMANDS: [&str; 5] = ["pause", "resume", "complete", "relaunch", "launch-now"];
/// The seeded runs: four of account 101, one per status, and one of
/// account 202 (which the principal of `Bearer t` may not touch).
const SEEDED: [(i64, Status); 5] = [
    (101, Status::Scheduled),
    (101, Status::Live),
    (101, Status::Paused),
    (101, Status::Completed),
    (202, Status::Live),
];

#[derive(Debug, Clone)]
enum Target {
    /// An index into [`SEEDED`].
    Seeded(usize),
    /// A run id nobody has.
    Ghost,
}

#[derive(Debug, Clone)]
enum Route {
    List,
    Get,
    Put,
    Command(&'static str),
}

/// What is wrong with a request, if anything. Most requests have no
/// mutation; some have one, a few two (so checks also meet each other).
#[derive(Debug, Clone)]
enum Mutation {
    NoAuthorization,
    JunkAuthorization(Vec<u8>),
    /// The token of account 202's principal.
    AnotherAccount,
    NoApiVersion,
    JunkApiVersion(Vec<u8>),
    StaleTag,
    WeakTag,
    NoTag,
    JunkTag(Vec<u8>),
    /// `If-Match: *`: well-formed, any version.
    StarTag,
    /// A method the route does not serve.
    WrongMethod(Method),
    LowercaseRunId,
    JunkAccount(String),
    JunkTail(String),
    /// PUT: the end a day before the start.
    EndBeforeStart,
    JunkBody(Vec<u8>),
    /// No `Content-Type` line.
    NoContentType,
    /// A `Content-Type` other than JSON.
    ContentType(Vec<u8>),
    /// Well-formed or junk; either way the request is served.
    Traceparent(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    target: Target,
    route: Route,
    /// PUT: the same start, the end `days` later. A command: no body, or
    /// `{}` when `days` is even.
    days: i64,
    mutations: Vec<Mutation>,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        16 => (0..4usize).prop_map(Target::Seeded),
        1 => Just(Target::Seeded(4)),
        2 => Just(Target::Ghost),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        1 => Just(Route::List),
        2 => Just(Route::Get),
        4 => Just(Route::Put),
        6 => proptest::sample::select(&COMMANDS[..]).prop_map(Route::Command),
    ]
}

fn junk_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(0x20u8..0x7f, 0..40),
        proptest::collection::vec(
            any::<u8>().prop_filter("header-safe", |b| *b >= 0x20 && *b != 0x7f),
            0..40
        ),
    ]
}

fn junk_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(br#"{"start_fielding_at":null,"end_fielding_at":[]}"#.to_vec()),
        Just(br#"{"start_fielding_at":"9999-12-31T23:59:59.999Z","end_fielding_at":"0000-01-01T00:00:00Z"}"#.to_vec()),
        Just(br#"{"colour":"red"}"#.to_vec()),
        "\\PC{0,64}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::NoAuthorization),
        junk_header().prop_map(Mutation::JunkAuthorization),
        Just(Mutation::AnotherAccount),
        Just(Mutation::NoApiVersion),
        junk_header().prop_map(Mutation::JunkApiVersion),
        Just(Mutation::StaleTag),
        Just(Mutation::WeakTag),
        Just(Mutation::NoTag),
        junk_header().prop_map(Mutation::JunkTag),
        Just(Mutation::StarTag),
        prop_oneof![Just(Method::DELETE), Just(Method::PATCH), Just(Method::OPTIONS)].prop_map(Mutation::WrongMethod),
        prop_oneof![Just(Method::DELETE), Just(Method::PATCH)].prop_map(Mutation::WrongMethod),
        Just(Mutation::LowercaseRunId),
        prop_oneof![
            Just("-1".to_owned()),
            Just("0".to_owned()),
            Just("99999999999999999999".to_owned()),
            "[A-Za-z0-9%._~-]{0,12}"
        ]
        .prop_map(Mutation::JunkAccount),
        "/[a-z-]{0,12}".prop_map(Mutation::JunkTail),
        Just(Mutation::EndBeforeStart),
        junk_body().prop_map(Mutation::JunkBody),
        Just(Mutation::NoContentType),
        prop_oneof![
            Just(b"text/plain".to_vec()),
            Just(b"application/merge-patch+json".to_vec()),
            junk_header()
        ]
        .prop_map(Mutation::ContentType),
        prop_oneof![
            Just(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
            junk_header()
        ]
        .prop_map(Mutation::Traceparent),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        16 => Just(Vec::new()),
        14 => mutation().prop_map(|m| vec![m]),
        2 => proptest::collection::vec(mutation(), 2),
    ]
}

fn cases() -> impl Strategy<Value = Case> {
    (target(), route(), 1..20i64, mutations()).prop_map(|(target, route, days, mutations)| Case {
        target,
        route,
        days,
        mutations,
    })
}

impl Case {
    /// Nothing wrong with the request itself (a `*` tag or any
    /// `traceparent` is fine).
    fn well_formed(&self) -> bool {
        self.mutations
            .iter()
            .all(|m| matches!(m, Mutation::StarTag | Mutation::Traceparent(_)))
    }

    fn method(&self) -> Method {
        for mutation in &self.mutations {
            if let Mutation::WrongMethod(method) = mutation {
                return method.clone();
            }
        }
        match self.route {
            Route::List | Route::Get => Method::GET,
            Route::Put => Method::PUT,
            Route::Command(_) => Method::POST,
        }
    }

    fn path(&self, run: &FieldingRun) -> String {
        let mut account = run.account_id.to_string();
        let mut id = run.id.to_string();
        let mut tail = String::new();
        for mutation in &self.mutations {
            match mutation {
                Mutation::JunkAccount(junk) => account = junk.clone(),
                Mutation::LowercaseRunId => id = id.to_lowercase(),
                Mutation::JunkTail(junk) => tail = junk.clone(),
                _ => {}
            }
        }
        let list = format!(
            "/demand/accounts/{account}/projects/{}/target-groups/{}/fielding-runs",
            run.project_id, run.target_group_id
        );
        let path = match self.route {
            Route::List => list,
            Route::Get | Route::Put => format!("{list}/{id}"),
            Route::Command(command) => format!("{list}/{id}/{command}"),
        };
        format!("{path}{tail}")
    }

    fn body(&self, run: &FieldingRun) -> Vec<u8> {
        let dates = |end: fielding_core::Timestamp| {
            format!(
                r#"{{"start_fielding_at":"{}","end_fielding_at":"{end}"}}"#,
                run.start_fielding_at
            )
            .into_bytes()
        };
        for mutation in &self.mutations {
            match mutation {
                Mutation::JunkBody(bytes) => return bytes.clone(),
                Mutation::EndBeforeStart => {
                    return dates(run.start_fielding_at.checked_add(chrono::TimeDelta::days(-1)).unwrap())
                }
                _ => {}
            }
        }
        match self.route {
            Route::Put => dates(
                run.end_fielding_at
                    .checked_add(chrono::TimeDelta::days(self.days))
                    .unwrap(),
            ),
            _ if self.days % 2 == 0 => b"{}".to_vec(),
            _ => Vec::new(),
        }
    }

    /// The header lines to send, in order.
    fn headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut authorization = Some(b"Bearer t".to_vec());
        let mut api_version = Some(API_VERSION.as_bytes().to_vec());
        let mut if_match = Some(format!("\"{VERSION}\"").into_bytes());
        let mut content_type = Some(b"application/json".to_vec());
        let mut traceparent = None;
        for mutation in &self.mutations {
            match mutation {
                Mutation::NoAuthorization => authorization = None,
                Mutation::JunkAuthorization(junk) => authorization = Some(junk.clone()),
                Mutation::AnotherAccount => authorization = Some(b"Bearer other".to_vec()),
                Mutation::NoApiVersion => api_version = None,
                Mutation::JunkApiVersion(junk) => api_version = Some(junk.clone()),
                Mutation::StaleTag => if_match = Some(format!("\"{}\"", VERSION - 1).into_bytes()),
                Mutation::WeakTag => if_match = Some(format!("W/\"{VERSION}\"").into_bytes()),
                Mutation::NoTag => if_match = None,
                Mutation::JunkTag(junk) => if_match = Some(junk.clone()),
                Mutation::StarTag => if_match = Some(b"*".to_vec()),
                Mutation::Traceparent(value) => traceparent = Some(value.clone()),
                Mutation::NoContentType => content_type = None,
                Mutation::ContentType(value) => content_type = Some(value.clone()),
                _ => {}
            }
        }
        [
            ("authorization", authorization),
            ("cint-api-version", api_version),
            ("if-match", if_match),
            ("content-type", content_type),
            ("traceparent", traceparent),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect()
    }
}

/// How many answers of each status the run saw.
type Seen = Mutex<BTreeMap<u16, usize>>;

async fn one_case(case: Case, seen: &Seen) -> Result<(), TestCaseError> {
    let store = MemoryStore::new();
    let runs: Vec<FieldingRun> = SEEDED
        .iter()
        .map(|(account, status)| {
            let scope = Scope::new(
                AccountId::new(*account).unwrap(),
                fixtures::project_id(),
                fixtures::target_group_id(),
            );
            let run = fixtures::run()
                .with_scope(scope)
                .with_status(*status)
                .with_version(VERSION)
                .build();
            store.seed(run.clone()).unwrap();
            run
        })
        .collect();
    let only = |account| AccountAccess::Only(vec![AccountId::new(account).unwrap()]);
    let tokens = StaticTokens::new()
        .with_token(
            "t",
            Principal {
                user_id: UserId::random(),
                accounts: only(101),
            },
        )
        .with_token(
            "other",
            Principal {
                user_id: UserId::random(),
                accounts: only(202),
            },
        );
    let app = FieldingApi::new(FieldingService::new(Arc::new(store.clone())), Arc::new(tokens)).router();

    let target = match case.target {
        Target::Seeded(index) => runs[index].clone(),
        Target::Ghost => FieldingRun {
            id: FieldingRunId::generate(),
            ..runs[1].clone()
        },
    };
    let method = case.method();
    let path = case.path(&target);
    let Ok(mut request) = Request::builder()
        .method(method.clone())
        .uri(&path)
        .body(Body::from(case.body(&target)))
    else {
        return Ok(()); // not a request a client could send
    };
    let headers = request.headers_mut();
    for (name, value) in case.headers() {
        if let Ok(value) = axum::http::HeaderValue::from_bytes(&value) {
            headers.append(name, value);
        }
    }
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    *seen.lock().unwrap().entry(status.as_u16()).or_default() += 1;
    let has_trace = response.headers().contains_key("traceparent");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let what = format!("{method} {path} -> {status}");
    prop_assert!(!status.is_server_error(), "{what}: {}", String::from_utf8_lossy(&bytes));
    prop_assert!(has_trace, "{what}: no traceparent");
    if !status.is_success() && !bytes.is_empty() {
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            TestCaseError::fail(format!(
                "{what}: error body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        prop_assert!(json["object"].is_string(), "{what}: {json}");
    }
    if case.well_formed() {
        // Only the target can refuse a well-formed request: a run nobody
        // has, another account's run, or the lifecycle.
        let allowed: &[u16] = match (&case.target, &case.route) {
            (Target::Ghost, Route::List) => &[200],
            (Target::Ghost, _) => &[404],
            (Target::Seeded(4), _) => &[403],
            (_, Route::List | Route::Get) => &[200],
            (_, Route::Put) => &[202, 422],
            (_, Route::Command("launch-now")) => &[200, 422],
            (_, Route::Command(_)) => &[204, 422],
        };
        prop_assert!(
            allowed.contains(&status.as_u16()),
            "{what}: a well-formed request ({case:?}) must get one of {allowed:?}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    for run in &runs {
        let now = store.run(&run.key()).expect("a seeded run stays");
        if status.is_success() && run.id == target.id {
            // The target of a success: the next version, or unchanged.
            let version = now.version.get();
            prop_assert!(
                version == VERSION || version == VERSION + 1,
                "{what}: version {version} after a success from {VERSION}"
            );
            if version == VERSION {
                prop_assert_eq!(&now, run, "{}: changed without a new version", what);
            }
        } else if status.is_success() {
            prop_assert_eq!(&now, run, "{}: a request to another run changed this one", what);
        } else {
            prop_assert_eq!(&now, run, "{}: a refused request changed a run", what);
        }
    }
    Ok(())
}

#[test]
fn generated_requests_never_5xx_never_panic_and_refusals_never_change_a_run() {
    // The time driver: the router bounds each body read with a timer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = Seen::default();
    let result = runner.run(&cases(), |case| runtime.block_on(one_case(case, &seen)));
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let seen = seen.into_inner().unwrap();
    println!("statuses seen: {seen:?}");
    let total: usize = seen.values().sum();
    let successes: usize = seen
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    // The generator reaches the handlers: successes of every kind and every
    // refusal the endpoints can give, not only 401 and 405 at the door.
    let expected = [
        StatusCode::OK,
        StatusCode::ACCEPTED,
        StatusCode::NO_CONTENT,
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::PRECONDITION_FAILED,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::UNPROCESSABLE_ENTITY,
    ];
    let missing: Vec<u16> = expected
        .iter()
        .map(StatusCode::as_u16)
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(missing.is_empty(), "statuses never reached: {missing:?}; seen {seen:?}");
    assert!(
        successes * 5 >= total,
        "most requests are meant to be well-formed, yet only {successes} of {total} succeeded: {seen:?}"
    );
}
