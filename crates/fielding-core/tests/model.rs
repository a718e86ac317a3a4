//! Model-based test: random sequences of clock moves and commands run against
//! `FieldingService` over `MemoryStore`, and against a small reference model
//! written from the rules (not from the code). After every step the outcome
//! (ok, or which error) must agree, and the invariants must hold.

use std::sync::Arc;

use fielding_core::lifecycle::{effective_status, Command};
use fielding_core::{
    Action, Applied, FieldingError, FieldingRunId, FieldingService, IfMatch, ManualClock, RunKey, Scope, Status,
    Timestamp, UserId,
};
use fielding_memory::MemoryStore;
use fielding_testkit::{fixtures, Fault, Faults, FaultyStore};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The grid most times sit on: half an hour, so equalities (start == now,
/// end == start, now == end) come up often. Some values are off by 1 ms.
const UNIT: i64 = 30 * 60 * 1000;

fn t0() -> i64 {
    "2030-03-01T09:00:00Z".parse::<Timestamp>().unwrap().unix_millis()
}

fn ts(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(millis).unwrap()
}

// ---------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Base {
    Now,
    Start,
    End,
}

/// A date relative to now, or to the run's current start or end.
#[derive(Debug, Clone, Copy)]
struct Date {
    base: Base,
    units: i64,
    millis: i64,
}

/// Which `If-Match` a command sends.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Current,
    Older,
    Newer,
    Any,
    WeakCurrent,
}

#[derive(Debug, Clone)]
enum Step {
    Advance(i64),
    Schedule(Date, Date),
    Launch(Date),
    Update(Tag, Date, Date),
    LaunchNow(Tag),
    Pause(Tag),
    Resume(Tag),
    Complete(Tag),
    Relaunch(Tag),
    InjectConflict,
}

fn date() -> impl Strategy<Value = Date> {
    (
        prop_oneof![Just(Base::Now), Just(Base::Start), Just(Base::End)],
        -6i64..=12,
        prop_oneof![6 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)],
    )
        .prop_map(|(base, units, millis)| Date { base, units, millis })
}

const SAME_START: Date = Date {
    base: Base::Start,
    units: 0,
    millis: 0,
};

const SAME_END: Date = Date {
    base: Base::End,
    units: 0,
    millis: 0,
};

/// Often the current start (the only start a started run accepts).
fn update_start() -> impl Strategy<Value = Date> {
    prop_oneof![2 => Just(SAME_START), 3 => date()]
}

/// Sometimes the current end, so "same dates" comes up.
fn update_end() -> impl Strategy<Value = Date> {
    prop_oneof![1 => Just(SAME_END), 4 => date()]
}

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        8 => Just(Tag::Current),
        1 => Just(Tag::Older),
        1 => Just(Tag::Newer),
        2 => Just(Tag::Any),
        1 => Just(Tag::WeakCurrent),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![(0i64..=8).prop_map(|u| u * UNIT), Just(1i64)].prop_map(Step::Advance),
        2 => (date(), date()).prop_map(|(s, e)| Step::Schedule(s, e)),
        1 => date().prop_map(Step::Launch),
        4 => (tag(), update_start(), update_end()).prop_map(|(t, s, e)| Step::Update(t, s, e)),
        2 => tag().prop_map(Step::LaunchNow),
        2 => tag().prop_map(Step::Pause),
        2 => tag().prop_map(Step::Resume),
        2 => tag().prop_map(Step::Complete),
        2 => tag().prop_map(Step::Relaunch),
        1 => Just(Step::InjectConflict),
    ]
}

// ---------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Scheduled,
    Live,
    Paused,
    Completed,
}

impl St {
    fn public(self) -> Status {
        match self {
            St::Scheduled => Status::Scheduled,
            St::Live => Status::Live,
            St::Paused => Status::Paused,
            St::Completed => Status::Completed,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct MRun {
    stored: St,
    start: i64,
    end: i64,
    version: u64,
}

impl MRun {
    /// The rule: the end having passed closes any run; a scheduled run
    /// whose start has come is live.
    fn status(&self, now: i64) -> St {
        if now >= self.end {
            St::Completed
        } else if self.stored == St::Scheduled && self.start <= now {
            St::Live
        } else {
            self.stored
        }
    }
}

/// What a step should come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok { changed: bool },
    BadRequest(Vec<&'static str>),
    NotFound,
    Precondition { current: u64 },
    InvalidState,
    HasRun,
}

impl Outcome {
    fn of(result: &Result<Applied, FieldingError>) -> Outcome {
        match result {
            Ok(applied) => Outcome::Ok {
                changed: applied.changed,
            },
            Err(FieldingError::Validation { params }) => {
                let mut names: Vec<&'static str> = params
                    .iter()
                    .map(|p| match p.name.as_ref() {
                        "start_fielding_at" => "start_fielding_at",
                        "end_fielding_at" => "end_fielding_at",
                        other => panic!("unexpected field {other}"),
                    })
                    .collect();
                names.sort_unstable();
                Outcome::BadRequest(names)
            }
            Err(FieldingError::NotFound { .. }) => Outcome::NotFound,
            Err(FieldingError::PreconditionFailed { current }) => Outcome::Precondition { current: current.get() },
            Err(FieldingError::InvalidState { .. }) => Outcome::InvalidState,
            Err(FieldingError::TargetGroupHasRun { .. }) => Outcome::HasRun,
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }

    /// The machine code a refusal must carry (`None` for a success).
    fn code(&self) -> Option<&'static str> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::BadRequest(_) => Some("bad_request_error"),
            Outcome::NotFound => Some("not_found_error"),
            Outcome::Precondition { .. } => Some("precondition_failed_error"),
            Outcome::InvalidState | Outcome::HasRun => Some("invalid_state_error"),
        }
    }
}

fn bad(mut fields: Vec<&'static str>) -> Outcome {
    fields.sort_unstable();
    Outcome::BadRequest(fields)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Update(i64, i64),
    LaunchNow,
    Pause,
    Resume,
    Complete,
    Relaunch,
}

#[derive(Debug)]
struct Model {
    now: i64,
    run: Option<MRun>,
    successes: u64,
    pending_conflicts: u64,
}

impl Model {
    fn resolve(&self, date: Date) -> i64 {
        let base = match (date.base, self.run) {
            (Base::Start, Some(run)) => run.start,
            (Base::End, Some(run)) => run.end,
            _ => self.now,
        };
        base + date.units * UNIT + date.millis
    }

    fn create(&mut self, stored: St, start: i64, end: i64) -> Outcome {
        self.run = Some(MRun {
            stored,
            start,
            end,
            version: 1,
        });
        Outcome::Ok { changed: true }
    }

    fn schedule(&mut self, start: i64, end: i64) -> Outcome {
        let mut fields = Vec::new();
        if start < self.now {
            fields.push("start_fielding_at");
        }
        if end <= start {
            fields.push("end_fielding_at");
        }
        if !fields.is_empty() {
            return bad(fields);
        }
        if self.run.is_some() {
            return Outcome::HasRun;
        }
        self.create(St::Scheduled, start, end)
    }

    fn launch(&mut self, end: i64) -> Outcome {
        if end <= self.now {
            return bad(vec!["end_fielding_at"]);
        }
        if self.run.is_some() {
            return Outcome::HasRun;
        }
        self.create(St::Live, self.now, end)
    }

    fn command(&mut self, tag: Tag, cmd: Cmd) -> Outcome {
        let now = self.now;
        let Some(run) = self.run else {
            return Outcome::NotFound;
        };
        let matches = matches!(tag, Tag::Current | Tag::Any);
        if !matches {
            return Outcome::Precondition { current: run.version };
        }
        let status = run.status(now);
        let next = match cmd {
            Cmd::Update(start, end) => {
                if end <= start {
                    // Input checks come first; a scheduled run's past start
                    // is reported alongside.
                    let mut fields = vec!["end_fielding_at"];
                    if status == St::Scheduled && start < now {
                        fields.push("start_fielding_at");
                    }
                    return bad(fields);
                }
                match status {
                    St::Completed => return Outcome::InvalidState,
                    St::Scheduled if start < now => return bad(vec!["start_fielding_at"]),
                    St::Scheduled => {}
                    St::Live | St::Paused => {
                        if start != run.start {
                            return Outcome::InvalidState;
                        }
                        if end <= now {
                            return bad(vec!["end_fielding_at"]);
                        }
                    }
                }
                if (start, end) == (run.start, run.end) {
                    return Outcome::Ok { changed: false };
                }
                MRun {
                    stored: status,
                    start,
                    end,
                    ..run
                }
            }
            Cmd::LaunchNow if status == St::Scheduled => MRun {
                stored: St::Live,
                start: now,
                end: now + (run.end - run.start),
                ..run
            },
            Cmd::Pause if status == St::Live => MRun {
                stored: St::Paused,
                ..run
            },
            Cmd::Resume if status == St::Paused => MRun {
                stored: St::Live,
                ..run
            },
            Cmd::Complete if status != St::Completed => MRun {
                stored: St::Completed,
                ..run
            },
            Cmd::Relaunch if status == St::Completed && now < run.end => MRun {
                stored: St::Live,
                start: if run.start > now { now } else { run.start },
                ..run
            },
            _ => return Outcome::InvalidState,
        };
        // An injected conflict reports the version after the one read. A
        // specific tag does not accept it: 412. `*` does, so the service
        // decides again (on the same state: the fault changed nothing), up
        // to 32 decisions in all.
        let mut decisions = 1;
        while self.pending_conflicts > 0 {
            self.pending_conflicts -= 1;
            if !matches!(tag, Tag::Any) || decisions == 32 {
                return Outcome::Precondition {
                    current: run.version + 1,
                };
            }
            decisions += 1;
        }
        self.run = Some(MRun {
            version: run.version + 1,
            ..next
        });
        self.successes += 1;
        Outcome::Ok { changed: true }
    }
}

// ---------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------

struct System {
    store: MemoryStore,
    /// The faults of the store the service writes through.
    faults: Faults,
    clock: ManualClock,
    service: FieldingService,
    scope: Scope,
    /// The run's key once created; before that, a key that finds nothing.
    key: RunKey,
}

impl System {
    fn new() -> Self {
        let store = MemoryStore::new();
        let clock = ManualClock::new(ts(t0()));
        let faulty = FaultyStore::new(store.clone());
        let faults = faulty.faults().clone();
        let service = FieldingService::new(Arc::new(faulty)).with_clock(Arc::new(clock.clone()));
        let scope = fixtures::scope();
        Self {
            store,
            faults,
            clock,
            service,
            scope,
            key: scope.run(FieldingRunId::generate()),
        }
    }

    fn if_match(&self, tag: Tag, version: Option<u64>) -> IfMatch {
        let v = version.unwrap_or(1);
        let text = match tag {
            Tag::Current => format!("\"{v}\""),
            Tag::Older => format!("\"{}\"", v.saturating_sub(1)),
            Tag::Newer => format!("\"{}\"", v + 1),
            Tag::Any => "*".to_owned(),
            Tag::WeakCurrent => format!("W/\"{v}\""),
        };
        IfMatch::parse(&text).unwrap()
    }

    async fn command(&self, tag: Tag, version: Option<u64>, cmd: Cmd) -> Result<Applied, FieldingError> {
        let command = match cmd {
            Cmd::Update(start, end) => Command::UpdateDates {
                start_fielding_at: ts(start),
                end_fielding_at: ts(end),
            },
            Cmd::LaunchNow => Command::LaunchNow,
            Cmd::Pause => Command::Pause,
            Cmd::Resume => Command::Resume,
            Cmd::Complete => Command::Complete,
            Cmd::Relaunch => Command::Relaunch,
        };
        self.service
            .execute(&self.key, &self.if_match(tag, version), &command, UserId::random())
            .await
    }
}

fn action_of(step: &Step) -> Option<Action> {
    Some(match step {
        Step::Schedule(..) => Action::Schedule,
        Step::Launch(_) => Action::Launch,
        Step::Update(..) => Action::UpdateDates,
        Step::LaunchNow(_) => Action::LaunchNow,
        Step::Pause(_) => Action::Pause,
        Step::Resume(_) => Action::Resume,
        Step::Complete(_) => Action::Complete,
        Step::Relaunch(_) => Action::Relaunch,
        Step::Advance(_) | Step::InjectConflict => return None,
    })
}

async fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut sys = System::new();
    let mut model = Model {
        now: t0(),
        run: None,
        successes: 0,
        pending_conflicts: 0,
    };

    for (i, step) in steps.iter().enumerate() {
        let before = model.run;
        let status_before = before.map(|r| r.status(model.now));
        let service_before = sys.store.run(&sys.key);
        let version = before.map(|r| r.version);

        let (expected, actual): (Outcome, Option<Result<Applied, FieldingError>>) = match *step {
            Step::Advance(millis) => {
                model.now += millis;
                sys.clock.advance(chrono::TimeDelta::milliseconds(millis));
                (Outcome::Ok { changed: false }, None)
            }
            Step::InjectConflict => {
                model.pending_conflicts += 1;
                sys.faults.inject(Fault::Conflict, 1);
                (Outcome::Ok { changed: false }, None)
            }
            Step::Schedule(s, e) => {
                let (start, end) = (model.resolve(s), model.resolve(e));
                let expected = model.schedule(start, end);
                let result = sys
                    .service
                    .schedule(sys.scope, ts(start), ts(end), UserId::random())
                    .await;
                (expected, Some(result))
            }
            Step::Launch(e) => {
                let end = model.resolve(e);
                let expected = model.launch(end);
                let result = sys.service.launch(sys.scope, ts(end), UserId::random()).await;
                (expected, Some(result))
            }
            Step::Update(tag, s, e) => {
                let cmd = Cmd::Update(model.resolve(s), model.resolve(e));
                (model.command(tag, cmd), Some(sys.command(tag, version, cmd).await))
            }
            Step::LaunchNow(tag) => (
                model.command(tag, Cmd::LaunchNow),
                Some(sys.command(tag, version, Cmd::LaunchNow).await),
            ),
            Step::Pause(tag) => (
                model.command(tag, Cmd::Pause),
                Some(sys.command(tag, version, Cmd::Pause).await),
            ),
            Step::Resume(tag) => (
                model.command(tag, Cmd::Resume),
                Some(sys.command(tag, version, Cmd::Resume).await),
            ),
            Step::Complete(tag) => (
                model.command(tag, Cmd::Complete),
                Some(sys.command(tag, version, Cmd::Complete).await),
            ),
            Step::Relaunch(tag) => (
                model.command(tag, Cmd::Relaunch),
                Some(sys.command(tag, version, Cmd::Relaunch).await),
            ),
        };
        let now = model.now;

        // 1. The outcome agrees with the model.
        if let Some(result) = &actual {
            let got = Outcome::of(result);
            prop_assert_eq!(&got, &expected, "step {}: {:?} at {}", i, step, ts(now));
            if let Err(err) = result {
                prop_assert_eq!(Some(err.code()), expected.code());
            }
            if let Ok(applied) = result {
                let run = model.run.expect("the model has a run after a success");
                prop_assert_eq!(applied.run.version.get(), run.version, "step {}: returned version", i);
                prop_assert_eq!(applied.etag, applied.run.version.etag());
                prop_assert_eq!(
                    applied.run.start_fielding_at,
                    ts(run.start),
                    "step {}: returned start",
                    i
                );
                prop_assert_eq!(applied.run.end_fielding_at, ts(run.end), "step {}: returned end", i);
                prop_assert_eq!(
                    applied.run.status,
                    run.status(now).public(),
                    "step {}: returned run's status",
                    i
                );
                if before.is_none() {
                    sys.key = applied.run.key();
                }
            }
        }

        // 2. The stored state agrees with the model.
        match model.run {
            None => prop_assert!(sys.store.is_empty(), "step {}: nothing created yet", i),
            Some(run) => {
                let got = sys
                    .service
                    .get(&sys.key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got.version.get(), run.version, "step {}: version", i);
                prop_assert_eq!(got.status, run.status(now).public(), "step {}: effective status", i);
                prop_assert_eq!(got.start_fielding_at, ts(run.start), "step {}: start", i);
                prop_assert_eq!(got.end_fielding_at, ts(run.end), "step {}: end", i);
                prop_assert_eq!(sys.store.len(), 1);

                // Invariants.
                prop_assert!(got.start_fielding_at < got.end_fielding_at, "step {}: start < end", i);
                prop_assert_eq!(
                    got.version.get(),
                    1 + model.successes,
                    "step {}: version == 1 + changes",
                    i
                );

                let changes = sys
                    .service
                    .changes(&sys.key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let versions: Vec<u64> = changes.iter().map(|c| c.version.get()).collect();
                prop_assert_eq!(
                    versions,
                    (1..=run.version).collect::<Vec<_>>(),
                    "step {}: records 1..=version",
                    i
                );
                prop_assert!(changes.iter().all(|c| c.run_id == sys.key.id));
                for pair in changes.windows(2) {
                    prop_assert!(
                        pair[1].status_from.is_some(),
                        "only the first record has no status_from"
                    );
                    prop_assert_eq!(Some(pair[0].start_to), pair[1].start_from, "records chain (start)");
                    prop_assert_eq!(Some(pair[0].end_to), pair[1].end_from, "records chain (end)");
                }

                // The record of this step, if it wrote one.
                if let Some(Ok(applied)) = &actual {
                    let last = changes.last().expect("at least one record");
                    if applied.changed {
                        prop_assert_eq!(last.version, applied.run.version);
                        prop_assert_eq!(Some(last.action), action_of(step), "step {}: recorded action", i);
                        prop_assert_eq!(last.changed_at, ts(now));
                        prop_assert_eq!(last.changed_by, applied.run.last_changed_by);
                        prop_assert_eq!(applied.run.last_changed_at, ts(now));
                        prop_assert_eq!(
                            last.status_from,
                            status_before.map(St::public),
                            "step {}: status_from",
                            i
                        );
                        prop_assert_eq!(last.start_to, ts(run.start));
                        prop_assert_eq!(last.end_to, ts(run.end));
                        prop_assert_eq!(
                            effective_status(last.status_to, last.start_to, last.end_to, ts(now)),
                            run.status(now).public(),
                            "step {}: status_to",
                            i
                        );
                    }
                }
            }
        }

        // 3. Nothing changes after completed, except by relaunch.
        if status_before == Some(St::Completed) && !matches!(step, Step::Relaunch(_)) {
            if let Some(result) = &actual {
                prop_assert!(
                    !matches!(result, Ok(Applied { changed: true, .. })),
                    "step {}: {:?} changed a completed run",
                    i,
                    step
                );
            }
            prop_assert_eq!(
                sys.store.run(&sys.key),
                service_before,
                "step {}: completed run untouched",
                i
            );
        }
        prop_assert_eq!(sys.faults.pending(Fault::Conflict), model.pending_conflicts);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn service_agrees_with_the_reference_model(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(check(steps))?;
    }

    /// The same, but starting with a run already in place so every case
    /// exercises commands rather than creation.
    #[test]
    fn service_agrees_with_the_reference_model_from_a_scheduled_run(
        first in (date(), date()),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let schedule = Step::Schedule(
            Date { base: Base::Now, units: first.0.units.rem_euclid(6), millis: 0 },
            Date { base: Base::Now, units: 7 + first.1.units.rem_euclid(6), millis: 0 },
        );
        let all = std::iter::once(schedule).chain(steps).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(check(all))?;
    }
}
