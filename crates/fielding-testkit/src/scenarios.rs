//! Scenarios that run the service, the bulk runner and the feed's
//! watchers and consumers end to end on a store: what every store's own
//! tests run on top of the conformance cases, which test the store methods
//! one by one. They panic on the first broken expectation, like an
//! `assert!`.

use std::sync::Arc;

use fielding_core::{
    BulkAction, BulkItemFailure, BulkItemOutcome, BulkJobKey, BulkJobStatus, BulkRunner, BulkRunnerOptions,
    FieldingRun, FieldingService, FieldingStore, Status, Timestamp,
};

use crate::fixtures;

mod feed;

pub use feed::feed_follows_the_rules;

/// For each of the five actions: a job over one run in each status and a
/// target group without a run, submitted through [`FieldingService`] and
/// worked by [`BulkRunner::run_until_idle`] in batches of two. Checks that
/// the submission is stored as submitted and does no work; that every item
/// gets [`fixtures::bulk_outcome`]'s outcome (and `TargetGroupNotFound` for
/// the missing run), in submission order; that a run the action moves gets
/// exactly one new version and change record by the submitter and every
/// other run is untouched; that a replay answers the finished job; that
/// another project does not see it; and that nothing is left to claim.
/// Then a job whose every item fails ends `Failed`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = std::sync::Arc::new(fielding_memory::MemoryStore::new());
/// fielding_testkit::scenarios::bulk_jobs_follow_the_rules(store).await;
/// # }
/// ```
pub async fn bulk_jobs_follow_the_rules(store: Arc<dyn FieldingStore>) {
    const STATUSES: [Status; 4] = [Status::Scheduled, Status::Live, Status::Paused, Status::Completed];
    let service = FieldingService::new(Arc::clone(&store));
    let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default().with_batch_size(2));
    for action in BulkAction::ALL {
        let scope = fixtures::scope();
        let mut runs: Vec<FieldingRun> = Vec::new();
        for status in STATUSES {
            let run = fixtures::run()
                .with_scope(fixtures::other_target_group(scope))
                .with_status(status)
                .build();
            if let Err(err) = store.insert(&run, &fixtures::creation(&run)).await {
                panic!("seeding a {status} run: {err}");
            }
            runs.push(run);
        }
        let missing = fixtures::other_target_group(scope).target_group_id;
        let mut ids: Vec<_> = runs.iter().map(|run| run.target_group_id).collect();
        ids.push(missing);
        let new_job = || fixtures::new_bulk_job(scope, "every-status", action, ids.clone());

        let submitted = expect(service.submit_bulk_job(new_job()).await, "submit");
        assert!(!submitted.replayed, "{action}: a first submission is not a replay");
        assert_eq!(
            submitted.job.status,
            BulkJobStatus::Processing,
            "{action}: a submission does no work"
        );
        let stored = expect(service.get_bulk_job(&submitted.job.key()).await, "read the job");
        assert_eq!(
            stored, submitted.job,
            "{action}: stored as submitted, items in order, all pending"
        );

        assert_eq!(
            expect(runner.run_until_idle().await, "run"),
            1,
            "{action}: one job worked"
        );
        assert_eq!(
            expect(runner.run_until_idle().await, "run"),
            0,
            "{action}: nothing left to claim"
        );
        let done = expect(service.get_bulk_job(&submitted.job.key()).await, "read the job");
        assert_eq!(done.status, BulkJobStatus::Completed, "{action}");
        let order: Vec<_> = done.items.iter().map(|item| item.target_group_id).collect();
        assert_eq!(order, ids, "{action}: items keep their order");
        let now = Timestamp::from(chrono::Utc::now());
        for run in &runs {
            let outcome = done.outcome_of(run.target_group_id);
            let what = format!("{action} on a {} run", run.status);
            assert_eq!(outcome, Some(fixtures::bulk_outcome(action, run.status)), "{what}");
            let now_stored = expect(store.get(&run.key()).await, "read a run").expect("the run is still there");
            let history = expect(store.changes(&run.key()).await, "read change records");
            if run.status == action.desired_status() || outcome != Some(BulkItemOutcome::Updated) {
                assert_eq!(now_stored, *run, "{what}: nothing to write");
                assert_eq!(history.len(), 1, "{what}: no change record");
            } else {
                assert_eq!(Some(now_stored.version), run.version.next(), "{what}: one new version");
                assert_eq!(now_stored.effective_status(now), action.desired_status(), "{what}");
                assert_eq!(
                    now_stored.last_changed_by, done.created_by,
                    "{what}: the submitter is recorded"
                );
                assert_eq!(history.len(), 2, "{what}: one change record");
                assert_eq!(history[1].action, action.command().action(), "{what}");
                assert_eq!(history[1].version, now_stored.version, "{what}");
            }
        }
        assert_eq!(
            done.outcome_of(missing),
            Some(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound)),
            "{action}: a target group without a run"
        );

        let replay = expect(service.submit_bulk_job(new_job()).await, "replay");
        assert!(replay.replayed, "{action}: the same key and list is a replay");
        assert_eq!(replay.job, done, "{action}: a replay answers the stored job");
        let elsewhere = BulkJobKey {
            project_id: fixtures::other_project(scope).project_id,
            ..done.key()
        };
        assert_eq!(
            expect(store.get_bulk_job(&elsewhere).await, "read elsewhere"),
            None,
            "{action}"
        );
    }

    // Every item failed: the job failed.
    let scope = fixtures::scope();
    let scheduled = fixtures::run()
        .with_scope(fixtures::other_target_group(scope))
        .with_status(Status::Scheduled)
        .build();
    expect(
        store.insert(&scheduled, &fixtures::creation(&scheduled)).await,
        "seed a run",
    );
    let ids = vec![
        scheduled.target_group_id,
        fixtures::other_target_group(scope).target_group_id,
    ];
    let job = expect(
        service
            .submit_bulk_job(fixtures::new_bulk_job(scope, "all-fail", BulkAction::Pause, ids))
            .await,
        "submit",
    )
    .job;
    assert_eq!(expect(runner.run_until_idle().await, "run"), 1);
    let done = expect(service.get_bulk_job(&job.key()).await, "read the job");
    assert_eq!(done.status, BulkJobStatus::Failed, "a job whose every item failed");
}

fn expect<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: {err}"))
}
