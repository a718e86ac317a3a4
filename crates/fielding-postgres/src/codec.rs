//! Rows to and from the core codec's column values
//! ([`fielding_core::codec`]): binding runs, change records and jobs as
//! statement parameters and reading fetched rows back. What the values
//! mean (ranges, names, what fits together) is decided in the core; this
//! module only knows PostgreSQL's types: `integer` accounts, `timestamptz`
//! times, `uuid` users.

use chrono::{DateTime, Utc};
use fielding_core::codec::{self, ChangeRow, JobRow, RunRow};
use fielding_core::{AccountId, ChangeRecord, FieldingRun, FieldingRunJob, StoreError};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::Row;

use crate::error::backend;

pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the ten columns of a run, in table order. `insert` and the
/// compare-and-swap both use this, so their parameter order cannot drift
/// apart.
pub(crate) fn bind_run<'q>(query: PgQuery<'q>, run: &'q FieldingRun) -> PgQuery<'q> {
    let row = RunRow::encode(run);
    query
        .bind(row.id)
        .bind(integer(row.account_id))
        .bind(row.project_id)
        .bind(row.target_group_id)
        .bind(time(row.start_fielding_at))
        .bind(time(row.end_fielding_at))
        .bind(row.status)
        .bind(row.version)
        .bind(time(row.last_changed_at))
        .bind(row.last_changed_by)
}

/// Binds the columns of a change record (all but `run_id`, which the
/// statements take from the run), in table order.
pub(crate) fn bind_change<'q>(query: PgQuery<'q>, change: &'q ChangeRecord) -> PgQuery<'q> {
    let row = ChangeRow::encode(change);
    query
        .bind(row.version)
        .bind(row.action)
        .bind(time(row.changed_at))
        .bind(row.changed_by)
        .bind(row.status_from)
        .bind(row.status_to)
        .bind(row.start_from.map(time))
        .bind(time(row.start_to))
        .bind(row.end_from.map(time))
        .bind(time(row.end_to))
}

/// Binds the fifteen columns of a creation job, in table order.
pub(crate) fn bind_job<'q, O>(
    query: sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>,
    job: &'q FieldingRunJob,
) -> sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments> {
    let row = JobRow::encode(job);
    query
        .bind(row.id)
        .bind(integer(row.account_id))
        .bind(row.project_id)
        .bind(row.target_group_id)
        .bind(row.kind)
        .bind(row.idempotency_key)
        .bind(row.start_fielding_at.map(time))
        .bind(time(row.end_fielding_at))
        .bind(row.fielding_run_id)
        .bind(time(row.created_at))
        .bind(row.created_by)
        .bind(row.trace_id)
        .bind(row.status)
        .bind(row.failure_code)
        .bind(row.failure_description)
}

/// The runs of a batch write as one array per column (what `UNNEST`
/// takes), filled from the same core codec as `bind_run`. Only the columns
/// a write changes, and the row's id: a write never moves a run's scope.
#[derive(Debug, Default)]
pub(crate) struct RunArrays {
    id: Vec<String>,
    start_fielding_at: Vec<DateTime<Utc>>,
    end_fielding_at: Vec<DateTime<Utc>>,
    status: Vec<String>,
    version: Vec<i64>,
    last_changed_at: Vec<DateTime<Utc>>,
    last_changed_by: Vec<uuid::Uuid>,
    expected: Vec<i64>,
}

impl RunArrays {
    /// Adds `run`, to be written if the stored run is at `expected`.
    pub(crate) fn push(&mut self, run: &FieldingRun, expected: fielding_core::Version) {
        let row = RunRow::encode(run);
        self.id.push(row.id.to_owned());
        self.start_fielding_at.push(time(row.start_fielding_at));
        self.end_fielding_at.push(time(row.end_fielding_at));
        self.status.push(row.status.to_owned());
        self.version.push(row.version);
        self.last_changed_at.push(time(row.last_changed_at));
        self.last_changed_by.push(row.last_changed_by);
        self.expected.push(codec::version_to_column(expected));
    }

    /// Binds the eight arrays: id, the five changed columns and the
    /// version, then the expected version.
    pub(crate) fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.id)
            .bind(self.start_fielding_at)
            .bind(self.end_fielding_at)
            .bind(self.status)
            .bind(self.version)
            .bind(self.last_changed_at)
            .bind(self.last_changed_by)
            .bind(self.expected)
    }
}

/// Change records as one array per column, `run_id` included, in table
/// order (the columns `bind_change` binds, after the run id).
#[derive(Debug, Default)]
pub(crate) struct ChangeArrays {
    run_id: Vec<String>,
    version: Vec<i64>,
    action: Vec<String>,
    changed_at: Vec<DateTime<Utc>>,
    changed_by: Vec<uuid::Uuid>,
    status_from: Vec<Option<String>>,
    status_to: Vec<String>,
    start_from: Vec<Option<DateTime<Utc>>>,
    start_to: Vec<DateTime<Utc>>,
    end_from: Vec<Option<DateTime<Utc>>>,
    end_to: Vec<DateTime<Utc>>,
}

impl ChangeArrays {
    /// Adds `change`.
    pub(crate) fn push(&mut self, change: &ChangeRecord) {
        let row = ChangeRow::encode(change);
        self.run_id.push(row.run_id.to_owned());
        self.version.push(row.version);
        self.action.push(row.action.to_owned());
        self.changed_at.push(time(row.changed_at));
        self.changed_by.push(row.changed_by);
        self.status_from.push(row.status_from.map(str::to_owned));
        self.status_to.push(row.status_to.to_owned());
        self.start_from.push(row.start_from.map(time));
        self.start_to.push(time(row.start_to));
        self.end_from.push(row.end_from.map(time));
        self.end_to.push(time(row.end_to));
    }

    /// Binds the eleven arrays, in table order.
    pub(crate) fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.run_id)
            .bind(self.version)
            .bind(self.action)
            .bind(self.changed_at)
            .bind(self.changed_by)
            .bind(self.status_from)
            .bind(self.status_to)
            .bind(self.start_from)
            .bind(self.start_to)
            .bind(self.end_from)
            .bind(self.end_to)
    }
}

/// An account as the `integer` column (1 to `i32::MAX` by construction).
pub(crate) fn account(id: AccountId) -> i32 {
    integer(i64::from(id.get()))
}

fn integer(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Unix milliseconds as `timestamptz`. The core's timestamps lie in years
/// 0000-9999, well inside chrono's range.
pub(crate) fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// A `timestamptz` as Unix milliseconds (the core checks the range).
pub(crate) fn millis(value: DateTime<Utc>) -> i64 {
    value.timestamp_millis()
}

pub(crate) fn column<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| backend("decode", e))
}

pub(crate) fn decode_run(row: &PgRow) -> Result<FieldingRun, StoreError> {
    decode_run_at(row, 0)
}

/// A run whose columns start at column `first` of `row`.
pub(crate) fn decode_run_at(row: &PgRow, first: usize) -> Result<FieldingRun, StoreError> {
    let at = |n: usize| first + n;
    RunRow {
        id: column(row, at(0))?,
        account_id: i64::from(column::<i32>(row, at(1))?),
        project_id: column(row, at(2))?,
        target_group_id: column(row, at(3))?,
        start_fielding_at: millis(column(row, at(4))?),
        end_fielding_at: millis(column(row, at(5))?),
        status: column(row, at(6))?,
        version: column(row, at(7))?,
        last_changed_at: millis(column(row, at(8))?),
        last_changed_by: column(row, at(9))?,
    }
    .decode()
}

pub(crate) fn decode_change(row: &PgRow) -> Result<ChangeRecord, StoreError> {
    decode_change_at(row, 0)
}

/// A change record whose columns start at column `first` of `row`.
pub(crate) fn decode_change_at(row: &PgRow, first: usize) -> Result<ChangeRecord, StoreError> {
    let at = |n: usize| first + n;
    ChangeRow {
        run_id: column(row, at(0))?,
        version: column(row, at(1))?,
        action: column(row, at(2))?,
        changed_at: millis(column(row, at(3))?),
        changed_by: column(row, at(4))?,
        status_from: column(row, at(5))?,
        status_to: column(row, at(6))?,
        start_from: column::<Option<DateTime<Utc>>>(row, at(7))?.map(millis),
        start_to: millis(column(row, at(8))?),
        end_from: column::<Option<DateTime<Utc>>>(row, at(9))?.map(millis),
        end_to: millis(column(row, at(10))?),
    }
    .decode()
}

/// PostgreSQL's `xid8` (a 64-bit transaction id, epoch included), which
/// sqlx has no type for: the first number of a feed position. Eight bytes
/// big-endian in the binary format, decimal in the text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Xid8(pub(crate) u64);

/// `xid8`'s type OID, fixed in PostgreSQL's catalog since it was added (13).
const XID8_OID: u32 = 5069;

impl sqlx::Type<Postgres> for Xid8 {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(XID8_OID))
    }
}

impl sqlx::Encode<'_, Postgres> for Xid8 {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

impl sqlx::Decode<'_, Postgres> for Xid8 {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(Xid8(u64::from_be_bytes(bytes)))
            }
            PgValueFormat::Text => Ok(Xid8(value.as_str()?.parse()?)),
        }
    }
}

pub(crate) fn decode_job(row: &PgRow) -> Result<FieldingRunJob, StoreError> {
    JobRow {
        id: column(row, 0)?,
        account_id: i64::from(column::<i32>(row, 1)?),
        project_id: column(row, 2)?,
        target_group_id: column(row, 3)?,
        kind: column(row, 4)?,
        idempotency_key: column(row, 5)?,
        start_fielding_at: column::<Option<DateTime<Utc>>>(row, 6)?.map(millis),
        end_fielding_at: millis(column(row, 7)?),
        fielding_run_id: column(row, 8)?,
        created_at: millis(column(row, 9)?),
        created_by: column(row, 10)?,
        trace_id: column(row, 11)?,
        status: column(row, 12)?,
        failure_code: column(row, 13)?,
        failure_description: column(row, 14)?,
    }
    .decode()
}

/// A stored version (read alone, to report a conflict).
pub(crate) fn version(value: i64) -> Result<fielding_core::Version, StoreError> {
    codec::version(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_core::Timestamp;

    #[test]
    fn times_convert_exactly_at_the_extremes() {
        for t in [Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH] {
            assert_eq!(millis(time(t.unix_millis())), t.unix_millis());
            assert_eq!(time(t.unix_millis()), t.as_datetime());
        }
    }
}
