//! Bulk jobs in memory: the jobs, their idempotency keys, their claims,
//! and the indexes claiming and expiry walk.

use std::collections::{BTreeSet, HashMap};

use fielding_core::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ClaimToken,
    IdempotencyKey, JobId, StoreError, TargetGroupId, Timestamp,
};

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Debug)]
pub(crate) struct StoredBulkJob {
    pub(crate) job: BulkJob,
    claim: Option<BulkClaim>,
    /// Each item's position in `job.items`.
    position: FastMap<TargetGroupId, usize>,
}

impl StoredBulkJob {
    /// The recorded outcome of `target_group_id`: `Err` when the job has
    /// no such item (the caller broke the trait's promise).
    pub(crate) fn outcome(&self, target_group_id: &TargetGroupId) -> Result<Option<BulkItemOutcome>, StoreError> {
        let at = self
            .position
            .get(target_group_id)
            .ok_or_else(|| not_an_item(&self.job, target_group_id))?;
        Ok(self.job.items[*at].outcome)
    }

    pub(crate) fn record(&mut self, target_group_id: &TargetGroupId, outcome: BulkItemOutcome) {
        if let Some(at) = self.position.get(target_group_id) {
            self.job.items[*at].outcome = Some(outcome);
        }
    }
}

#[cold]
fn not_an_item(job: &BulkJob, target_group_id: &TargetGroupId) -> StoreError {
    StoreError::internal(format!(
        "target group {target_group_id} is not an item of {}",
        job.key()
    ))
}

#[derive(Debug, Default)]
pub(crate) struct BulkJobs {
    jobs: FastMap<JobId, StoredBulkJob>,
    /// Idempotency keys are unique per account among bulk jobs.
    keys: FastMap<(AccountId, IdempotencyKey), JobId>,
    /// Processing jobs by creation time: what claims walk, oldest first.
    processing: BTreeSet<(Timestamp, JobId)>,
    /// Finished jobs by finish time: what expiry takes from the front.
    finished: BTreeSet<(Timestamp, JobId)>,
}

impl BulkJobs {
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn create(&mut self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        let key = (job.account_id, job.idempotency_key.clone());
        if let Some(existing) = self.keys.get(&key).and_then(|id| self.jobs.get(id)) {
            return Ok(BulkJobCreated::Existing(existing.job.clone()));
        }
        if self.jobs.contains_key(&job.id) {
            return Err(StoreError::internal(format!("bulk job id {} is already taken", job.id)));
        }
        let position = job
            .items
            .iter()
            .enumerate()
            .map(|(at, item)| (item.target_group_id, at))
            .collect();
        if job.status == BulkJobStatus::Processing {
            self.processing.insert((job.created_at, job.id));
        } else {
            self.finished.insert((job.created_at, job.id));
        }
        self.keys.insert(key, job.id);
        self.jobs.insert(
            job.id,
            StoredBulkJob {
                job: job.clone(),
                claim: None,
                position,
            },
        );
        Ok(BulkJobCreated::Created)
    }

    pub(crate) fn get(&self, key: &BulkJobKey) -> Option<&StoredBulkJob> {
        self.jobs.get(&key.id).filter(|stored| stored.job.key() == *key)
    }

    /// The job at `key` if `token` holds it.
    pub(crate) fn held(&mut self, key: &BulkJobKey, token: ClaimToken) -> Result<&mut StoredBulkJob, StoreError> {
        self.jobs
            .get_mut(&key.id)
            .filter(|stored| {
                stored.job.key() == *key
                    && stored.job.status == BulkJobStatus::Processing
                    && stored.claim.is_some_and(|claim| claim.token == token)
            })
            .ok_or(StoreError::ClaimLost { key: *key, token })
    }

    pub(crate) fn claim(&mut self, now: Timestamp, claim: &BulkClaim) -> Option<BulkJob> {
        let jobs = &mut self.jobs;
        let id = self.processing.iter().map(|(_, id)| *id).find(|id| {
            jobs.get(id)
                .is_some_and(|stored| stored.claim.is_none_or(|held| held.lease_until <= now))
        })?;
        let stored = jobs.get_mut(&id)?;
        stored.claim = Some(*claim);
        Some(stored.job.clone())
    }

    pub(crate) fn renew(&mut self, key: &BulkJobKey, claim: &BulkClaim) -> bool {
        match self.held(key, claim.token) {
            Ok(stored) => {
                stored.claim = Some(*claim);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn finish(
        &mut self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> bool {
        let Ok(stored) = self.held(key, token) else {
            return false;
        };
        stored.job.status = status;
        stored.claim = None;
        let created_at = stored.job.created_at;
        self.processing.remove(&(created_at, key.id));
        self.finished.insert((finished_at, key.id));
        true
    }

    pub(crate) fn expire(&mut self, cutoff: Timestamp, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            match self.finished.first() {
                Some(&(at, id)) if at < cutoff => {
                    self.finished.pop_first();
                    if let Some(stored) = self.jobs.remove(&id) {
                        self.keys.remove(&(stored.job.account_id, stored.job.idempotency_key));
                    }
                    removed += 1;
                }
                _ => break,
            }
        }
        removed
    }
}
