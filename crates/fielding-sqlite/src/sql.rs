//! The SQL text of every statement on runs, change records and creation
//! jobs. The schema itself is in `migrations`.

use fielding_core::JobState;

pub(crate) const INSERT_RUN: &str =
    "INSERT INTO fielding_runs (id, account_id, project_id, target_group_id, start_ms, end_ms, \
                          status, version, last_changed_at_ms, last_changed_by) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Bound with a change record's eleven columns (`codec::change_params`),
/// then its run's account, project and target group and its feed position.
pub(crate) const INSERT_CHANGE: &str =
    "INSERT INTO change_records (run_id, version, action, changed_at_ms, changed_by, \
                             status_from, status_to, start_from_ms, start_to_ms, end_from_ms, end_to_ms, \
                             account_id, project_id, target_group_id, position) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Bound with a run's ten columns in table order (the key first, as in
/// [`INSERT_RUN`]), then the expected version.
pub(crate) const UPDATE_RUN: &str = "UPDATE fielding_runs SET start_ms = ?5, end_ms = ?6, status = ?7, version = ?8, \
                          last_changed_at_ms = ?9, last_changed_by = ?10 \
                          WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4 \
                          AND version = ?11";

pub(crate) const VERSION_AT_KEY: &str = "SELECT version FROM fielding_runs \
                              WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4";

pub(crate) const SCOPE_TAKEN: &str =
    "SELECT 1 FROM fielding_runs WHERE account_id = ?1 AND project_id = ?2 AND target_group_id = ?3";

/// `get`: a run by its key (id and scope).
pub(crate) const RUN_BY_KEY: &str = "SELECT id, account_id, project_id, target_group_id, start_ms, end_ms, status, \
                                     version, last_changed_at_ms, last_changed_by FROM fielding_runs \
                                     WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4";

/// `find_by_target_group`: a run by its full scope (the unique index).
pub(crate) const RUN_BY_SCOPE: &str = "SELECT id, account_id, project_id, target_group_id, start_ms, end_ms, status, \
                                       version, last_changed_at_ms, last_changed_by FROM fielding_runs \
                                       WHERE account_id = ?1 AND project_id = ?2 AND target_group_id = ?3";

/// `changes`: the records of the run at a key (scope included), in version
/// order. Records carry their run's scope, so no join: the `(run_id,
/// version)` index gives them in order.
pub(crate) const CHANGES_AT_KEY: &str =
    "SELECT run_id, version, action, changed_at_ms, changed_by, status_from, status_to, \
            start_from_ms, start_to_ms, end_from_ms, end_to_ms \
       FROM change_records \
      WHERE run_id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4 \
      ORDER BY version";

/// The columns of `fielding_run_jobs`, in the order `codec::read_job` reads them.
pub(crate) const JOB_COLUMNS: &str =
    "id, account_id, project_id, target_group_id, kind, idempotency_key, start_ms, end_ms, \
                           fielding_run_id, created_at_ms, created_by, trace_id, status, failure_code, \
                           failure_description";

/// Records a job unless the account has one under its key: the unique key
/// `(account_id, idempotency_key)` decides, so no check-then-insert gap.
/// A job handed over already finished counts as finished when it was
/// created (`finished_at_ms`).
pub(crate) const INSERT_JOB: &str =
    "INSERT INTO fielding_run_jobs (id, account_id, project_id, target_group_id, kind, \
                          idempotency_key, start_ms, end_ms, fielding_run_id, created_at_ms, created_by, trace_id, \
                          status, failure_code, failure_description, finished_at_ms) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                          CASE WHEN ?13 = 'Processing' THEN NULL ELSE ?10 END) \
                          ON CONFLICT (account_id, idempotency_key) DO NOTHING";

/// Records an outcome, only while the job is processing (first one wins).
/// The status columns are the core's ([`JobOutcome::to_columns`](fielding_core::JobOutcome::to_columns)).
pub(crate) fn finish_job_sql() -> String {
    format!(
        "UPDATE fielding_run_jobs SET status = ?1, failure_code = ?2, failure_description = ?3, \
         finished_at_ms = ?8 \
         WHERE id = ?4 AND account_id = ?5 AND project_id = ?6 AND target_group_id = ?7 \
         AND status = '{}'",
        JobState::PROCESSING
    )
}

/// Removes up to `?2` jobs finished before `?1`, oldest first: the search
/// walks the partial index on `finished_at_ms`, so a call costs its limit,
/// not the table. The status test is a second guard: a processing job has
/// no finish time and is never in the index anyway. The idempotency key is
/// a column of the row, so it goes with it.
pub(crate) fn expire_jobs_sql() -> String {
    format!(
        "DELETE FROM fielding_run_jobs WHERE id IN (\
         SELECT id FROM fielding_run_jobs WHERE finished_at_ms < ?1 AND status <> '{}' \
         ORDER BY finished_at_ms LIMIT ?2)",
        JobState::PROCESSING
    )
}

pub(crate) fn job_by_key_sql() -> String {
    format!("SELECT {JOB_COLUMNS} FROM fielding_run_jobs WHERE account_id = ?1 AND idempotency_key = ?2")
}

pub(crate) fn job_by_id_sql() -> String {
    format!(
        "SELECT {JOB_COLUMNS} FROM fielding_run_jobs \
         WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_never_matches_the_core_processing_status() {
        assert!(
            expire_jobs_sql().contains("AND status <> 'Processing'"),
            "{}",
            expire_jobs_sql()
        );
    }

    #[test]
    fn finish_only_matches_the_core_processing_status() {
        assert!(
            finish_job_sql().ends_with("AND status = 'Processing'"),
            "{}",
            finish_job_sql()
        );
    }
}
