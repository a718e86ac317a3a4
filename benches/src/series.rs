//! Small helpers shared by the sections: percentiles, the lost-update
//! check, resident memory, the CSV files written by the runner's
//! `--csv DIR`, printing figures and scratch PostgreSQL schemas. The
//! workloads' own harness is in [`crate::harness`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// The `p`-th percentile (0 < `p` <= 100) of `sorted` (ascending), by the
/// nearest-rank method: the smallest value with at least `p`% of the values
/// at or below it. `None` when `sorted` is empty or `p` is out of range.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What the end of a contention trial found for one run, and what the
/// clients did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHistory {
    /// The version the run was seeded at.
    pub seeded_version: u64,
    /// The version the store holds at the end.
    pub final_version: u64,
    /// Updates the clients saw succeed (202) on this run.
    pub successes: u64,
    /// The versions of the run's change records, as the store returns them.
    pub record_versions: Vec<u64>,
    /// How far the run's end moved, in milliseconds; every successful
    /// update moves it by exactly +1 ms from what its GET read.
    pub end_moved_ms: i64,
}

/// The outcome of [`lost_updates`]: how many updates went missing, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostUpdates {
    /// 0 when the history is exactly what the successes promise.
    pub lost: u64,
    /// One line per problem found.
    pub problems: Vec<String>,
}

/// Checks one run's history against the successes the clients saw:
///
/// * the final version is the seeded version + the successes (every 202
///   is exactly one new version; more or fewer is an update lost or made
///   up);
/// * the change records are exactly versions `1..=final`, each once, in
///   order (a gap is a write without its record; a duplicate, two writers
///   on one version);
/// * the end moved by exactly one millisecond per success (each update
///   writes what it read + 1 ms, so an update applied over a stale read
///   shows here even if the versions add up).
///
/// `lost` adds up the size of every discrepancy, so it is 0 exactly when
/// all three hold.
pub fn lost_updates(history: &RunHistory) -> LostUpdates {
    let mut out = LostUpdates::default();
    let expected_final = history.seeded_version.saturating_add(history.successes);
    if history.final_version != expected_final {
        out.lost += history.final_version.abs_diff(expected_final);
        out.problems.push(format!(
            "final version {} but seeded {} + {} successes = {expected_final}",
            history.final_version, history.seeded_version, history.successes
        ));
    }
    let mut seen = std::collections::BTreeMap::<u64, u64>::new();
    for &v in &history.record_versions {
        *seen.entry(v).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=history.final_version).filter(|v| !seen.contains_key(v)).collect();
    if !missing.is_empty() {
        out.lost += missing.len() as u64;
        out.problems.push(format!("no change record for versions {missing:?}"));
    }
    let extra: u64 = seen
        .iter()
        .map(|(&v, &n)| if v == 0 || v > history.final_version { n } else { n - 1 })
        .sum();
    if extra > 0 {
        out.lost += extra;
        out.problems.push(format!(
            "{extra} change records duplicate a version or lie outside 1..={}",
            history.final_version
        ));
    }
    if missing.is_empty() && extra == 0 && !history.record_versions.windows(2).all(|w| w[0] < w[1]) {
        out.lost += 1;
        out.problems.push("the change records are out of order".into());
    }
    if history.end_moved_ms != history.successes as i64 {
        out.lost += history.end_moved_ms.abs_diff(history.successes as i64);
        out.problems.push(format!(
            "the end moved {} ms for {} successes of +1 ms each",
            history.end_moved_ms, history.successes
        ));
    }
    out
}

/// This process's resident set size in bytes (`VmRSS` of
/// `/proc/self/status`).
pub fn resident_bytes() -> Result<u64, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    parse_vm_rss(&status).ok_or_else(|| "no VmRSS line in /proc/self/status".to_string())
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => kib.checked_mul(1024),
        Some(_) => None,
    }
}

/// Gives freed heap memory back to the operating system (glibc's
/// `malloc_trim`), so that a resident-memory delta measured next counts
/// new pages rather than reusing pages an earlier measurement freed.
/// Does nothing on other platforms.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer, touches only the
    // allocator's own free lists, and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A CSV table: a header and rows of already formatted cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csv {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    /// An empty table with these columns.
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<String>) -> Result<(), String> {
        if row.len() != self.header.len() {
            return Err(format!(
                "a CSV row has {} cells for {} columns",
                row.len(),
                self.header.len()
            ));
        }
        self.rows.push(row);
        Ok(())
    }

    /// The table as text: a header line, then one line per row. Cells
    /// holding a comma, quote or line break are quoted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
            let cells: Vec<String> = cells.map(quote).collect();
            let _ = writeln!(out, "{}", cells.join(","));
        };
        line(&mut self.header.iter().copied(), &mut out);
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str), &mut out);
        }
        out
    }

    /// Writes the table to `dir/name`, creating `dir` if needed.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.write_all(self.render().as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    }
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

/// A two-worker runtime with timers and I/O, its threads named `name`
/// (the sections that drive stores and servers in-process).
pub fn two_worker_runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the {name} runtime: {e}"))
}

/// Writes `name value` lines to stdout.
pub fn emit(figures: &[(String, String)]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    for (name, value) in figures {
        writeln!(out, "{name} {value}").map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write to stdout: {e}"))
}

/// The PostgreSQL server the benchmarks use: `FIELDING_PG_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn pg_url() -> String {
    std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Runs `work` on a current-thread runtime of its own, on a thread of its
/// own (so it may be called from anywhere, a runtime's thread included).
fn on_own_runtime<T: Send + 'static>(
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
        rt.block_on(work())
    })
    .join()
    .map_err(|_| "a PostgreSQL helper thread panicked".to_string())?
}

/// Whether PostgreSQL answers at `url` within 5 s.
pub fn pg_reachable(url: &str) -> Result<(), String> {
    use fielding_postgres::sqlx::Connection as _;
    let url = url.to_string();
    on_own_runtime(move || {
        Box::pin(async move {
            let conn = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                fielding_postgres::sqlx::PgConnection::connect(&url),
            )
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
            .map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(())
        })
    })
}

/// A scratch PostgreSQL schema name, `fielding_bench_<tag>_<pid>_<random>`,
/// dropped (`DROP SCHEMA ... CASCADE`) by [`PgSchema::drop_now`] or, failing
/// that, when the guard is dropped (on an error or a panic).
#[derive(Debug)]
pub struct PgSchema {
    url: String,
    name: String,
    dropped: bool,
}

impl PgSchema {
    /// A fresh name; nothing is created until a store migrates it.
    pub fn new(url: &str, tag: &str) -> Self {
        let name = format!(
            "fielding_bench_{tag}_{}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            url: url.to_string(),
            name,
            dropped: false,
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the schema and everything in it now.
    pub fn drop_now(mut self) -> Result<(), String> {
        self.dropped = true;
        drop_schema(&self.url, &self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if !self.dropped {
            if let Err(e) = drop_schema(&self.url, &self.name) {
                eprintln!("cannot drop the scratch schema {}: {e}", self.name);
            }
        }
    }
}

fn drop_schema(url: &str, name: &str) -> Result<(), String> {
    use fielding_postgres::sqlx::{self, Connection as _};
    let (url, name) = (url.to_string(), name.to_string());
    on_own_runtime(move || {
        Box::pin(async move {
            let mut conn = fielding_postgres::sqlx::PgConnection::connect(&url)
                .await
                .map_err(|e| format!("cannot connect to drop schema {name}: {e}"))?;
            let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("cannot drop schema {name}: {e}"));
            let _ = conn.close().await;
            dropped.map(|_| ())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 99.9), Some(100));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&values, 0.5), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        // Ten values: p99 is the largest, p90 the ninth.
        let ten: Vec<u64> = (10..=100).step_by(10).collect();
        assert_eq!(percentile(&ten, 99.0), Some(100));
        assert_eq!(percentile(&ten, 90.0), Some(90));
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(percentile(&values, 0.0), None);
        assert_eq!(percentile(&values, 101.0), None);
        assert_eq!(percentile(&values, f64::NAN), None);
    }

    fn clean(successes: u64) -> RunHistory {
        RunHistory {
            seeded_version: 1,
            final_version: 1 + successes,
            successes,
            record_versions: (1..=1 + successes).collect(),
            end_moved_ms: successes as i64,
        }
    }

    #[test]
    fn a_complete_history_has_no_lost_update() {
        for n in [0, 1, 5, 1000] {
            assert_eq!(lost_updates(&clean(n)), LostUpdates::default(), "{n} successes");
        }
    }

    #[test]
    fn a_gap_in_the_change_records_is_detected() {
        let mut history = clean(5);
        history.record_versions = vec![1, 2, 4, 5, 6];
        let found = lost_updates(&history);
        assert_eq!(found.lost, 1, "{found:?}");
        assert!(found.problems[0].contains("[3]"), "{found:?}");
    }

    #[test]
    fn a_success_without_a_new_version_is_detected() {
        // Two clients both saw 202 for the same version: the store holds
        // one version too few, and the end moved once too few.
        let mut history = clean(4);
        history.successes = 5;
        let found = lost_updates(&history);
        assert_eq!(found.lost, 2, "{found:?}");
        assert_eq!(found.problems.len(), 2, "{found:?}");
    }

    #[test]
    fn duplicates_out_of_range_and_disorder_are_detected() {
        let mut history = clean(3);
        history.record_versions = vec![1, 2, 3, 3, 4];
        assert_eq!(lost_updates(&history).lost, 1);
        history.record_versions = vec![1, 2, 3, 4, 9];
        assert_eq!(lost_updates(&history).lost, 1);
        history.record_versions = vec![1, 3, 2, 4];
        assert_eq!(lost_updates(&history).lost, 1);
        // An update over a stale read: versions add up, the end does not.
        let mut stale = clean(3);
        stale.end_moved_ms = 2;
        assert_eq!(lost_updates(&stale).lost, 1);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: x kB"), None);
        assert_eq!(parse_vm_rss("Name: x"), None);
        assert!(resident_bytes().is_ok_and(|b| b > 0));
    }

    #[test]
    fn csv_quotes_and_checks_row_width() {
        let mut csv = Csv::new(&["a", "b"]);
        csv.push(vec!["1".into(), "x,y".into()]).expect("two cells");
        csv.push(vec!["say \"hi\"".into(), String::new()]).expect("two cells");
        assert!(csv.push(vec!["only one".into()]).is_err());
        assert_eq!(csv.render(), "a,b\n1,\"x,y\"\n\"say \"\"hi\"\"\",\n");
    }
}
