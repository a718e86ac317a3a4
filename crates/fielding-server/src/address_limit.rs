//! The per-address limits: one token bucket per client address, checked
//! before anything else (authentication included), so one address cannot
//! take more than its share however it calls, with or without a token;
//! and a count of each address's open connections
//! ([`ConnectionsPerAddress`]), so one address cannot fill the connection
//! cap with connections that never send a request.
//!
//! IPv6 clients are bucketed by their /64 prefix: a single host usually
//! holds a whole /64 and could otherwise rotate through addresses.
//! Behind a reverse proxy every client shares the proxy's address: raise
//! or turn off the limit there (`docs/server.md`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use fielding_http::rate_limit::{too_many_requests, RateLimitPolicy, RateLimiter};

use crate::telemetry;

/// The default per-address policy: ten times the default per-principal
/// rate, so it only bites floods and crowds behind one address.
pub fn default_policy() -> RateLimitPolicy {
    RateLimitPolicy::per_second(1_000, 2_000).unwrap_or_default()
}

/// The buckets of every client address: the API's keyed limiter, keyed by
/// the address (IPv6: its /64 prefix).
#[derive(Debug)]
pub struct AddressLimiter {
    limiter: RateLimiter<IpAddr>,
}

impl AddressLimiter {
    /// Buckets that follow `policy`.
    pub fn new(policy: RateLimitPolicy) -> Self {
        Self {
            limiter: RateLimiter::new(policy),
        }
    }

    /// Takes one request from `address`'s bucket, or says how many whole
    /// seconds (at least 1) until one would pass.
    pub fn check(&self, address: IpAddr) -> Result<(), u64> {
        self.limiter.check(&bucket_of(address))
    }

    /// Forgets buckets that are full again (call now and then).
    pub fn forget_idle(&self) {
        self.limiter.forget_idle();
    }
}

/// The key an address is counted under: IPv4 as is (and IPv4-mapped IPv6
/// as IPv4), IPv6 by its /64 prefix.
fn bucket_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// How many connections each client address has open, against a maximum.
#[derive(Debug)]
pub struct ConnectionsPerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection: its address's count goes down when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    connections: Arc<ConnectionsPerAddress>,
    bucket: IpAddr,
}

impl ConnectionsPerAddress {
    /// At most `max` open connections per address (IPv6: per /64).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `address`, or `None` when the
    /// address has its maximum open already.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let bucket = bucket_of(address);
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(bucket).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            connections: Arc::clone(self),
            bucket,
        })
    }

    /// How many connections `address` has open.
    pub fn open(&self, address: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        open.get(&bucket_of(address)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Entries go when their last connection does: the map holds only
        // addresses with connections open.
        if let Some(count) = open.get_mut(&self.bucket) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.bucket);
            }
        }
    }
}

/// Middleware: 429 with `Retry-After` and the contract's body when the
/// caller's address has no token left; requests without a known peer
/// address (an app driven in-process) pass.
pub async fn limit_by_address(State(limiter): State<Arc<AddressLimiter>>, request: Request, next: Next) -> Response {
    match limiter.refusal(&request) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

impl AddressLimiter {
    /// The 429 [`limit_by_address`] answers `request` with, if its address
    /// has no token left (counted); `None` lets it pass, as it does a
    /// request without a known peer address.
    pub fn refusal<B>(&self, request: &axum::http::Request<B>) -> Option<Response> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
        self.refusal_for(peer)
    }

    /// The 429 a request from `peer` is answered with, if that address
    /// has no token left (counted); `None` lets it pass. [`Self::refusal`]
    /// for a caller that knows the address without a `ConnectInfo`.
    pub fn refusal_for(&self, peer: IpAddr) -> Option<Response> {
        let seconds = self.check(peer).err()?;
        metrics::counter!(telemetry::ADDRESS_LIMITED).increment(1);
        Some(too_many_requests(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_address_waits() {
        let limiter = AddressLimiter::new(RateLimitPolicy::per_second(1, 2).unwrap());
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        let wait = limiter.check(ip("192.0.2.1")).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert!(
            limiter.check(ip("192.0.2.2")).is_ok(),
            "another address has its own bucket"
        );
    }

    #[test]
    fn an_ipv6_host_is_one_client_per_64_prefix() {
        let limiter = AddressLimiter::new(RateLimitPolicy::per_second(1, 1).unwrap());
        assert!(limiter.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(
            limiter.check(ip("2001:db8:1:2:ffff::9")).is_err(),
            "same /64, same bucket"
        );
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn an_address_gets_at_most_its_connections_and_frees_them_on_close() {
        let connections = ConnectionsPerAddress::new(2);
        let first = connections.admit(ip("192.0.2.1")).unwrap();
        let _second = connections.admit(ip("192.0.2.1")).unwrap();
        assert!(connections.admit(ip("192.0.2.1")).is_none(), "a third is refused");
        assert!(
            connections.admit(ip("2001:db8::1")).is_some(),
            "others are not affected"
        );
        drop(first);
        assert_eq!(connections.open(ip("192.0.2.1")), 1);
        assert!(
            connections.admit(ip("192.0.2.1")).is_some(),
            "a closed one frees its slot"
        );
        assert_eq!(
            connections.open(ip("2001:db8::1")),
            0,
            "entries go with their last connection"
        );
    }

    #[test]
    fn a_bare_address_and_a_request_from_it_share_a_bucket() {
        let limiter = AddressLimiter::new(RateLimitPolicy::per_second(1, 2).unwrap());
        let from = |peer: &str| {
            let mut request = axum::http::Request::new(());
            let peer: SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        };
        assert!(limiter.refusal_for(ip("192.0.2.1")).is_none());
        assert!(limiter.refusal(&from("192.0.2.1:40000")).is_none());
        let refused = limiter.refusal_for(ip("192.0.2.1")).expect("the burst is spent");
        assert_eq!(refused.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
        assert!(limiter.refusal(&from("192.0.2.1:40001")).is_some());
        assert!(limiter.refusal_for(ip("192.0.2.2")).is_none(), "another address");
        assert!(
            limiter.refusal(&axum::http::Request::new(())).is_none(),
            "a request without a peer passes"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        assert_eq!(bucket_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(bucket_of(ip("2001:db8::1")), ip("2001:db8::"));
    }
}
