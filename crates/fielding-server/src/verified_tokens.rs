//! A bounded memory of tokens that verified, so a client sending the same
//! bearer token on every request pays for the HMAC and the claims' JSON
//! once rather than on every request.
//!
//! What must stay true, for the cache to weaken nothing:
//! - **Only tokens that verified are remembered.** A refused token is never
//!   stored, so junk from a hostile client neither fills the cache nor
//!   costs it anything beyond the full verification it would cost anyway.
//! - **A hit decides exactly as a full verification at the same moment
//!   would.** The signature and the claims' shape do not depend on time;
//!   what does (`exp`, `iat`, each with the leeway) is checked again on
//!   every hit, and an entry that no longer passes is dropped and the token
//!   verified in full, which names the reason.
//! - **Bounded.** At most `capacity` entries; tokens longer than
//!   [`MAX_CACHED_TOKEN_BYTES`] are not remembered. When full, expired
//!   entries go first (looked for at most once a second), then an
//!   arbitrary one (the map's hash is keyed from the operating system's
//!   randomness, so which one cannot be steered from outside).
//! - **The key is the whole token**, compared byte for byte, never a digest
//!   of it: two tokens share an entry only if they are the same token.
//!
//! The map hashes with aHash, keyed per map from the operating system's
//! randomness, rather than std's SipHash: every request hashes its whole
//! token (a few hundred bytes) once, and aHash is built for speed where
//! SipHash is built for strength. SipHash's extra strength buys nothing here: only
//! tokens that verified (signed with the server's secret) are ever stored,
//! so a client cannot choose keys to collide; a lookup of an unknown token
//! walks one probe sequence, as it would in any hash map.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use fielding_http::auth::Principal;

/// Tokens longer than this are verified every time: real ones are a few
/// hundred bytes, and a cache of huge keys would cost memory for nothing.
pub const MAX_CACHED_TOKEN_BYTES: usize = 2048;

/// The default number of tokens remembered per authenticator.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What a verified token stands for, and the claims its validity in time
/// depends on.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp: u64,
    iat: u64,
}

/// The cache; see the module docs for what it guarantees.
#[derive(Debug)]
pub(crate) struct VerifiedTokens {
    entries: Mutex<Entries>,
    capacity: usize,
    leeway: u64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Box<str>, Verified, ahash::RandomState>,
    /// When a full cache may next look for expired entries: at most once a
    /// second, so that more live tokens than the capacity cost one eviction
    /// per miss rather than a pass over the whole map under the lock.
    next_sweep: u64,
}

/// Whether a token with these claims passes the time checks at `now`, with
/// `leeway` seconds of skew: the same arithmetic as the full verification
/// (`exp` no earlier than `now - leeway`, `iat` no later than
/// `now + leeway`).
pub(crate) fn in_time(exp: u64, iat: u64, now: u64, leeway: u64) -> bool {
    exp >= now.saturating_sub(leeway) && iat <= now.saturating_add(leeway)
}

impl VerifiedTokens {
    /// Remembers up to `capacity` tokens (0 remembers none).
    pub(crate) fn new(capacity: usize, leeway: u64) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity,
            leeway,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map is consistent after any panic (every change is one call on
        // it), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The principal of `token` if it verified before and is still in time
    /// at `now`. An entry out of time is dropped.
    pub(crate) fn get(&self, token: &str, now: u64) -> Option<Principal> {
        // A token too long to be remembered is not hashed either: a
        // hostile client's huge tokens cost no more than their refusal.
        if self.capacity == 0 || token.len() > MAX_CACHED_TOKEN_BYTES {
            return None;
        }
        let mut entries = self.entries();
        let verified = entries.map.get(token)?;
        if in_time(verified.exp, verified.iat, now, self.leeway) {
            return Some(verified.principal.clone());
        }
        entries.map.remove(token);
        None
    }

    /// Remembers that `token` verified to `principal`, with these claims.
    /// Call only after a full verification succeeded.
    pub(crate) fn insert(&self, token: &str, principal: &Principal, exp: u64, iat: u64, now: u64) {
        if self.capacity == 0 || token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let mut guard = self.entries();
        let entries = &mut *guard;
        if entries.map.len() >= self.capacity && !entries.map.contains_key(token) {
            if now >= entries.next_sweep {
                let leeway = self.leeway;
                entries.map.retain(|_, v| in_time(v.exp, v.iat, now, leeway));
                entries.next_sweep = now.saturating_add(1);
            }
            if entries.map.len() >= self.capacity {
                if let Some(victim) = entries.map.keys().next().cloned() {
                    entries.map.remove(&victim);
                }
            }
        }
        entries.map.insert(
            token.into(),
            Verified {
                principal: principal.clone(),
                exp,
                iat,
            },
        );
    }

    /// How many tokens are remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_core::{AccountId, UserId};
    use fielding_http::auth::AccountAccess;

    fn principal(account: i64) -> Principal {
        Principal {
            user_id: UserId::new(uuid::Uuid::nil()),
            accounts: AccountAccess::Only(vec![AccountId::new(account).unwrap()]),
        }
    }

    #[test]
    fn time_checks_match_the_verification_arithmetic() {
        // exp: still good up to `leeway` seconds after it, not one second more.
        assert!(in_time(1_000, 0, 1_030, 30));
        assert!(!in_time(1_000, 0, 1_031, 30));
        // iat: up to `leeway` seconds in the future.
        assert!(in_time(5_000, 1_030, 1_000, 30));
        assert!(!in_time(5_000, 1_031, 1_000, 30));
        // No underflow near the epoch.
        assert!(in_time(0, 0, 10, 30));
    }

    #[test]
    fn a_hit_gives_the_principal_until_the_token_expires_then_forgets_it() {
        let cache = VerifiedTokens::new(8, 30);
        cache.insert("t", &principal(101), 1_000, 900, 950);
        assert!(cache.get("t", 950).is_some());
        assert!(cache.get("t", 1_030).is_some());
        assert!(cache.get("t", 1_031).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when found");
        assert!(cache.get("other", 950).is_none());
    }

    #[test]
    fn a_clock_moved_back_before_iat_is_a_miss() {
        let cache = VerifiedTokens::new(8, 30);
        cache.insert("t", &principal(101), 10_000, 5_000, 5_000);
        assert!(cache.get("t", 4_970).is_some());
        assert!(cache.get("t", 4_969).is_none());
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_drops_expired_entries_first() {
        let cache = VerifiedTokens::new(3, 0);
        cache.insert("old", &principal(1), 100, 0, 50);
        cache.insert("a", &principal(2), 1_000, 0, 50);
        cache.insert("b", &principal(3), 1_000, 0, 50);
        // Full; at 200 "old" is expired and makes room.
        cache.insert("c", &principal(4), 1_000, 0, 200);
        assert_eq!(cache.len(), 3);
        for token in ["a", "b", "c"] {
            assert!(cache.get(token, 200).is_some(), "{token} kept");
        }
        // Full of live entries: one of them goes, the new one is kept
        // (no second sweep within the same second).
        cache.insert("d", &principal(5), 1_000, 0, 200);
        assert_eq!(cache.len(), 3);
        assert!(cache.get("d", 200).is_some());
        for n in 0..1_000 {
            cache.insert(&format!("t{n}"), &principal(6), 1_000, 0, 200);
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn huge_tokens_and_a_zero_capacity_remember_nothing() {
        let cache = VerifiedTokens::new(8, 30);
        let huge = "x".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        cache.insert(&huge, &principal(1), 1_000, 0, 0);
        assert!(cache.get(&huge, 0).is_none());
        let off = VerifiedTokens::new(0, 30);
        off.insert("t", &principal(1), 1_000, 0, 0);
        assert!(off.get("t", 0).is_none());
    }
}
