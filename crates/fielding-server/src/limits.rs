//! How long a connection may take and how many may be open: the settings
//! that keep slow, silent and oversized clients from holding the server.
//!
//! Every value has a flag and an environment variable (see [`crate::cli`])
//! and is explained in `docs/server.md`.

use std::time::Duration;

/// The default [`ConnectionLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [`ConnectionLimits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The default [`crate::app::ApiLimits::body_read_timeout`]: the API router's
/// ([`fielding_http::DEFAULT_BODY_TIMEOUT`]).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = fielding_http::DEFAULT_BODY_TIMEOUT;

/// The default [`ConnectionLimits::max_header_bytes`]: room for a long
/// bearer token and trace headers, far below what would let a few
/// thousand unfinished requests pin real memory.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The smallest `--max-header-bytes` accepted: a request line, a bearer
/// token and the contract's headers do not fit in less.
pub const MIN_MAX_HEADER_BYTES: usize = 1024;

/// File descriptors kept back from the connection cap for everything
/// else the process opens: the listener, the database files or pool,
/// logs.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 128;

/// The cap used when the open-file limit cannot be read, and the largest
/// automatic cap.
pub const FALLBACK_MAX_CONNECTIONS: usize = 1024;

/// The default [`ConnectionLimits::max_connections_per_address`]: far more
/// than a client's connection pool needs, far fewer than the cap, so one
/// address that opens connections and sends nothing cannot keep everyone
/// else waiting at the cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

/// The largest `--max-connections` accepted.
pub const MAX_MAX_CONNECTIONS: u64 = 1_000_000;

/// The largest automatic cap, however high the open-file limit: beyond
/// it, more connections only mean more memory for clients that wait.
pub const MAX_AUTO_CONNECTIONS: usize = 10_000;

/// Limits on every connection the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client has to send a complete request head (request
    /// line and headers), counted from the connection's opening for its
    /// first request and from the first byte for later ones. Past it the
    /// connection is closed.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may sit between requests (after a
    /// response, before the first byte of the next request).
    pub idle_timeout: Duration,
    /// The most connections open at once. Past it the server stops
    /// accepting: new connections wait in the listen backlog until one
    /// closes, and those already admitted are served as before.
    pub max_connections: usize,
    /// The most connections one client address (IPv6: one /64) may have
    /// open; past it its new connections are closed at once. `None`: no
    /// such limit (behind a reverse proxy, where every client shares the
    /// proxy's address).
    pub max_connections_per_address: Option<usize>,
    /// The largest request head (request line plus headers) in bytes;
    /// larger ones are answered 431 and the connection closed.
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    /// The `DEFAULT_*` values, and a connection cap derived from the
    /// process's open-file limit ([`auto_max_connections`]).
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: auto_max_connections(),
            max_connections_per_address: Some(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The connection cap that fits the open-file limit: the soft limit less
/// [`RESERVED_FILE_DESCRIPTORS`], between 16 and [`MAX_AUTO_CONNECTIONS`];
/// [`FALLBACK_MAX_CONNECTIONS`] when the limit cannot be read.
///
/// The server binary first raises its soft limit to the hard one
/// ([`raise_open_file_limit`]), as most servers do, so the cap follows
/// what the administrator allowed rather than the shell's default.
pub fn auto_max_connections() -> usize {
    open_file_limit().map_or(FALLBACK_MAX_CONNECTIONS, cap_for_open_files)
}

fn cap_for_open_files(limit: u64) -> usize {
    let usable = limit.saturating_sub(RESERVED_FILE_DESCRIPTORS);
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_AUTO_CONNECTIONS)
}

/// The soft limit on open files, if it can be read.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (read == 0).then_some(limit.rlim_cur)
}

/// The soft limit on open files, if it can be read.
#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

/// Raises the soft open-file limit to the hard limit and returns the new
/// soft limit (unchanged when it cannot be raised).
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Raises the soft open-file limit to the hard limit and returns the new
/// soft limit (unchanged when it cannot be raised).
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_other_files_and_stays_in_range() {
        assert_eq!(cap_for_open_files(1024), 1024 - 128);
        assert_eq!(cap_for_open_files(64), 16);
        assert_eq!(cap_for_open_files(0), 16);
        assert_eq!(cap_for_open_files(1 << 20), MAX_AUTO_CONNECTIONS);
        assert_eq!(cap_for_open_files(u64::MAX), MAX_AUTO_CONNECTIONS);
    }

    #[cfg(unix)]
    #[test]
    fn the_automatic_cap_follows_the_open_file_limit() {
        let limit = open_file_limit().expect("readable on unix");
        assert_eq!(auto_max_connections(), cap_for_open_files(limit));
        assert!(raise_open_file_limit().expect("readable") >= limit);
    }
}
