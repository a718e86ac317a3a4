//! Every change record of every run, in one append-only log.
//!
//! Why not a `Vec` per run: a million runs would mean a million small heap
//! allocations (each rounded up to four records once it grows), copies as
//! each one doubles, and writes scattered over cold memory on the hot path.
//! One log of fixed-size chunks is written sequentially, never moves a
//! record, and wastes at most one partly filled chunk. Each record links to
//! the previous record of the same run, so a run's history is a walk back
//! from its latest record: reading a history (tests, audits) pays, writing
//! (every command) does not.

use fielding_core::ChangeRecord;

/// Records per chunk: large enough that chunk allocation is rare, small
/// enough that an idle store does not reserve much.
const CHUNK: usize = 4096;

/// The position of a record in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogIndex(usize);

#[derive(Debug)]
struct Slot {
    record: ChangeRecord,
    previous: Option<LogIndex>,
}

#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    chunks: Vec<Vec<Slot>>,
}

impl ChangeLog {
    /// Appends `record`, linked to the run's `previous` record.
    pub(crate) fn push(&mut self, record: ChangeRecord, previous: Option<LogIndex>) -> LogIndex {
        let needs_chunk = self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK);
        if needs_chunk {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk_no = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_no];
        chunk.push(Slot { record, previous });
        LogIndex(chunk_no * CHUNK + chunk.len() - 1)
    }

    /// Appends a run's records in order; returns the index of the last one.
    pub(crate) fn push_all(&mut self, records: Vec<ChangeRecord>) -> Option<LogIndex> {
        records
            .into_iter()
            .fold(None, |previous, record| Some(self.push(record, previous)))
    }

    fn slot(&self, index: LogIndex) -> Option<&Slot> {
        self.chunks.get(index.0 / CHUNK)?.get(index.0 % CHUNK)
    }

    /// The history ending at `last`, oldest first.
    pub(crate) fn history(&self, last: Option<LogIndex>) -> Vec<ChangeRecord> {
        let mut out = Vec::new();
        let mut next = last;
        while let Some(slot) = next.and_then(|i| self.slot(i)) {
            out.push(slot.record.clone());
            next = slot.previous;
        }
        out.reverse();
        out
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_testkit::fixtures;

    fn record(run: &fielding_core::FieldingRun, version: u64) -> ChangeRecord {
        ChangeRecord {
            version: fielding_core::Version::new(version).unwrap(),
            ..ChangeRecord::created(run, fielding_core::Action::UpdateDates)
        }
    }

    #[test]
    fn interleaved_histories_stay_apart_across_chunk_boundaries() {
        let (a, b) = (fixtures::run().build(), fixtures::run().build());
        let mut log = ChangeLog::default();
        let (mut last_a, mut last_b) = (None, None);
        for version in 1..=(CHUNK as u64 + 10) {
            last_a = Some(log.push(record(&a, version), last_a));
            if version % 3 == 0 {
                last_b = Some(log.push(record(&b, version / 3), last_b));
            }
        }
        let history_a = log.history(last_a);
        assert_eq!(history_a.len(), CHUNK + 10);
        assert!(history_a
            .iter()
            .enumerate()
            .all(|(i, r)| r.run_id == a.id && r.version.get() == i as u64 + 1));
        let history_b = log.history(last_b);
        assert_eq!(history_b.len(), (CHUNK + 10) / 3);
        assert!(history_b.iter().all(|r| r.run_id == b.id));
        assert!(log.history(None).is_empty());
    }
}
