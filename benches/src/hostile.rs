//! The runner's `hostile` section: the real server binary under clients
//! that hold connections without finishing a request, and under a flood of
//! job creations on SQLite.
//!
//! ```sh
//! cargo build --release -p fielding-server -p fielding-bench
//! cargo run --release -p fielding-bench -- --quick --only hostile
//! ```
//!
//! ## What runs
//!
//! The release `fielding-server` next to the bench's own executable,
//! started as the `http` section starts it (`--listen 127.0.0.1:0`, a fixed
//! `--jwt-secret`, rate limiting off, `RUST_LOG=warn`), plus
//! [`SERVER_FLAGS`] and whatever `FIELDING_BENCH_HOSTILE_FLAGS` holds
//! (split on whitespace): the one place to set the server's timeouts and
//! connection cap for this section. Empty, the server runs with its
//! defaults. The server also reads its `FIELDING_*` environment variables,
//! which the bench passes on.
//!
//! The bench raises its soft limit on open files to the hard limit first
//! (the server inherits it), so 2,000 sockets fit on both sides: what is
//! measured is what the connections cost, not the point at which a process
//! runs out of file descriptors.
//!
//! ## Idle and partial connections
//!
//! One server on the memory store (so a request's own cost is small and
//! steady, and what moves is the connection layer). One **measuring
//! client**, a single keep-alive connection opened before anything else,
//! seeds a run through the API (schedule-from-draft) and then GETs it, one
//! request at a time, recording each latency:
//!
//! 1. **Without attack**: for half the `measure` duration before the
//!    attack and half after it (so a change in the machine's load over the
//!    section weighs on both sides alike; only before it if the client's
//!    connection did not survive the attack).
//! 2. **The attack**: `connections` (2,000) more TCP connections, opened
//!    from 16 threads at once. Half send nothing at all. The other half
//!    send the start of a request whose header never ends: a request line,
//!    a `Host` and a `partial_header_bytes` (4 KiB) header value without
//!    its line end, then `trickle_bytes` more of it every `trickle_every`
//!    (a "slowloris" client that never stops sending, so a timeout on
//!    idleness alone does not catch it). The attack is held for `measure`
//!    once every connection is open. The measuring client measures from
//!    the first hostile connection to the end of the hold: the connection
//!    storm is part of the attack.
//!
//! `hostile_p99_ratio` is the measuring client's p99 under attack ÷ its
//! p99 without (target ≤ 3), each p99 taken as the median over 0.5 s
//! windows of the 99th percentile (nearest rank) in each window: the
//! machine is shared, and a burst of other work then spoils the windows it
//! falls in rather than the whole figure (stderr also shows the p99 over
//! all requests of each side). If the client's connection fails (the
//! server closed it, or a request got no answer within 10 s) its
//! measurement stops there; the failed request counts with the 10 s
//! timeout as its latency and `hostile_client_errors` says so.
//!
//! `hostile_rss_bytes_per_conn` is the server's resident memory
//! (`VmRSS` of `/proc/PID/status`, sampled every 100 ms) at its highest
//! during the hold, minus what it was just before the attack, divided by
//! the connections opened (target ≤ 64 KiB).
//! `hostile_open_at_end` counts the attack's connections the server still
//! held at the end (a write or a read of a closed one fails): with header
//! and idle timeouts it should be 0; with a connection cap, connections
//! beyond it wait unaccepted (they count as open, but cost the server
//! nothing).
//!
//! ## The SQLite log under a flood
//!
//! A second server, on a fresh SQLite file (the server's defaults: WAL,
//! `synchronous=FULL`). `flood_clients` (32) keep-alive clients create jobs
//! (schedule-from-draft, each in a target group of its own, each 201
//! checked) for the flood duration (20 s; `--quick` 5 s) while the `-wal`
//! file's size is sampled every 20 ms: `sqlite_wal_peak_mib` is the largest
//! (target ≤ 64). Then nothing for a while: `sqlite_wal_idle_mib` is its
//! size after `wal_idle` without writes (the issue wants it truncated once
//! the pressure ends), and after a SIGTERM and a clean exit
//! `sqlite_wal_left_after_stop` is 1 if a `-wal` or `-shm` file is still
//! there (target 0).
//!
//! ## Output
//!
//! `name value` lines, first `hostile_p99_ratio`, then
//! `hostile_p99_without_us`, `hostile_p99_attack_us`,
//! `hostile_connections_opened`, `hostile_open_secs` (how long opening
//! them took), `hostile_open_at_end`,
//! `hostile_client_errors`, `hostile_rss_bytes_per_conn`,
//! `hostile_rss_before_mib`, `hostile_rss_attack_mib`, then
//! `sqlite_wal_peak_mib`, `sqlite_wal_idle_mib`,
//! `sqlite_wal_left_after_stop`, `sqlite_wal_flood_jobs_per_sec`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::{self, HttpBenchError, Spawned, ACCOUNT, API_VERSION, END_BASE, PROJECT, START_AT};
use crate::series::{emit, parse_vm_rss, percentile};
use crate::Plan;

/// Flags every server in this section gets on top of the `http` section's:
/// the single place to set the hardening flags (header read timeout,
/// connection cap, idle timeout, ...) for this measurement. Empty: the
/// server's defaults, except the rate limits the `http` section's command
/// turns off (there the measuring client and the attackers share
/// 127.0.0.1, which they would not in real life).
pub const SERVER_FLAGS: &[&str] = &[];

/// More flags, from the environment, split on whitespace (for trying
/// values without a rebuild).
pub const FLAGS_VAR: &str = "FIELDING_BENCH_HOSTILE_FLAGS";

/// The issue's targets.
pub const P99_RATIO_TARGET: f64 = 3.0;
/// ≤ 64 KiB of server memory per hostile connection.
pub const RSS_PER_CONN_TARGET: f64 = 64.0 * 1024.0;
/// ≤ 64 MiB of `-wal` file.
pub const WAL_PEAK_TARGET_MIB: f64 = 64.0;

/// How long the measuring client waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening one hostile connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The measuring client's latencies are taken in windows this long.
const WINDOW: Duration = Duration::from_millis(500);
/// Threads opening the hostile connections.
const OPENERS: usize = 16;
/// How often the server's memory is sampled under attack.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long a stopped server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the `-wal` file's size is sampled.
const WAL_SAMPLE_EVERY: Duration = Duration::from_millis(20);
const MIB: f64 = 1024.0 * 1024.0;

/// Why the section could not measure.
#[derive(Debug, thiserror::Error)]
pub enum HostileError {
    /// Finding, starting or talking to the server the way the `http`
    /// section does failed.
    #[error(transparent)]
    Http(#[from] HttpBenchError),
    /// Local I/O (sockets, files, limits) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered something the section cannot work with.
    #[error("{0}")]
    Answer(String),
}

type Result<T, E = HostileError> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostileError {
    let what = what.into();
    move |source| HostileError::Io { what, source }
}

/// How hard and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostilePlan {
    /// Hostile connections, half silent and half partial headers.
    pub connections: usize,
    /// The unfinished header value each partial connection sends at once.
    pub partial_header_bytes: usize,
    /// How often each partial connection sends more of it.
    pub trickle_every: Duration,
    /// How much more each time.
    pub trickle_bytes: usize,
    /// How long the measuring client measures without attack (half before
    /// it, half after), and how long the attack is held once all its
    /// connections are open.
    pub measure: Duration,
    /// How long the job flood lasts.
    pub flood: Duration,
    /// Concurrent flooding clients.
    pub flood_clients: usize,
    /// How long the log is left alone after the flood before its size is
    /// taken again.
    pub wal_idle: Duration,
}

impl HostilePlan {
    /// `--quick` (about 20 s) or the full plan (about a minute).
    pub fn for_plan(plan: &Plan) -> Self {
        let quick = plan.trial <= Plan::quick().trial;
        Self {
            connections: 2000,
            partial_header_bytes: 4096,
            trickle_every: Duration::from_millis(500),
            trickle_bytes: 16,
            measure: Duration::from_secs(if quick { 3 } else { 8 }),
            flood: Duration::from_secs(if quick { 5 } else { 20 }),
            flood_clients: 32,
            wal_idle: Duration::from_secs(if quick { 2 } else { 5 }),
        }
    }
}

/// [`SERVER_FLAGS`] followed by the words of `extra` (the value of
/// [`FLAGS_VAR`]).
pub fn server_flags(extra: Option<&str>) -> Vec<String> {
    SERVER_FLAGS
        .iter()
        .map(|flag| (*flag).to_owned())
        .chain(extra.unwrap_or_default().split_whitespace().map(str::to_owned))
        .collect()
}

/// The target group of flood job `n`: `01HF100D` and 18 digits.
pub fn flood_target_group(n: u64) -> String {
    format!("01HF100D{n:018}")
}

/// Under the server's default base path, the contract's `/v1`.
fn scope_path(target_group: &str) -> String {
    format!(
        "{}/demand/accounts/{ACCOUNT}/projects/{PROJECT}/target-groups/{target_group}",
        fielding_http::CONTRACT_BASE_PATH
    )
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// From `Content-Length` (0 without one).
    pub content_length: usize,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a response head (everything before the blank line). The
/// server's answers all carry a `Content-Length`; a chunked one is refused
/// rather than misread.
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "a response head that is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP/1.1 status line: {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut head = Head {
        status,
        headers,
        content_length: 0,
    };
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        return Err("a chunked response (this client reads Content-Length bodies only)".into());
    }
    if let Some(length) = head.header("content-length") {
        head.content_length = length
            .parse()
            .map_err(|_| format!("a bad Content-Length: {length:?}"))?;
    }
    Ok(head)
}

/// A minimal HTTP/1.1 keep-alive client on one TCP connection, so that
/// "connected before the attack" is exactly true: it never reconnects.
struct Conn {
    stream: TcpStream,
    host: String,
    token: String,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr, token: &str) -> Result<Self> {
        let stream =
            TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).map_err(io_error(format!("cannot connect to {addr}")))?;
        stream.set_nodelay(true).map_err(io_error("TCP_NODELAY"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(io_error("socket timeouts"))?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            token: token.to_owned(),
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its answer: `(head, body)`. `Err`
    /// (text) when the connection failed.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Result<(Head, Vec<u8>), String> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nCint-API-Version: {API_VERSION}\r\n",
            self.host, self.token
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("cannot send {method} {path}: {e}"))?;
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill()?;
        };
        let head = parse_head(&self.buf[..end])?;
        let total = end + 4 + head.content_length;
        while self.buf.len() < total {
            self.fill()?;
        }
        let body = self.buf[end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok((head, body))
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("no answer: {e}")),
        }
    }

    /// Creates a run in `target_group` through a schedule-from-draft job
    /// and returns the job's `Location`.
    fn create_job(&mut self, target_group: &str, key: &str) -> Result<String, String> {
        let path = format!("{}/fielding-run-jobs/schedule-from-draft", scope_path(target_group));
        let body = format!(r#"{{"start_fielding_at":"{START_AT}","end_fielding_at":"{END_BASE}"}}"#);
        let (head, answer) = self.send("POST", &path, &[("Idempotency-Key", key)], &body)?;
        if head.status != 201 {
            return Err(format!(
                "POST {path}: {} {}",
                head.status,
                String::from_utf8_lossy(&answer)
            ));
        }
        head.header("location")
            .map(str::to_owned)
            .ok_or_else(|| format!("POST {path}: a 201 without a Location"))
    }

    /// Seeds a run and returns its path.
    fn seed_run(&mut self) -> Result<String, String> {
        let target_group = flood_target_group(0);
        let location = self.create_job(&target_group, "hostile-seed")?;
        let (head, body) = self.send("GET", &location, &[], "")?;
        let job: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("GET {location}: {e}"))?;
        match (head.status, job["created_fielding_run_id"].as_str()) {
            (200, Some(id)) => Ok(format!("{}/fielding-runs/{id}", scope_path(&target_group))),
            _ => Err(format!("GET {location}: {} {job}", head.status)),
        }
    }

    /// GETs `path` one request at a time for as long as `going` says;
    /// the latencies in µs, in windows of [`WINDOW`], and the error that
    /// ended it early, if one did (its request then counts with the
    /// client's timeout as its latency).
    fn measure(&mut self, path: &str, going: &dyn Fn() -> bool) -> (Windows, Option<String>) {
        let mut windows = vec![Vec::new()];
        let mut window_start = Instant::now();
        while going() {
            if window_start.elapsed() >= WINDOW {
                windows.push(Vec::new());
                window_start = Instant::now();
            }
            let sent = Instant::now();
            let outcome = self.send("GET", path, &[], "");
            let latency = sent.elapsed().as_micros() as u64;
            let window = windows.last_mut().expect("never empty");
            match outcome {
                Ok((head, _)) if head.status == 200 => window.push(latency),
                Ok((head, body)) => {
                    let body = String::from_utf8_lossy(&body);
                    return (windows, Some(format!("GET {path}: {} {body}", head.status)));
                }
                Err(error) => {
                    window.push(CLIENT_TIMEOUT.as_micros() as u64);
                    return (windows, Some(error));
                }
            }
        }
        (windows, None)
    }

    /// [`Conn::measure`] for `duration`.
    fn measure_for(&mut self, path: &str, duration: Duration) -> (Windows, Option<String>) {
        let until = Instant::now() + duration;
        self.measure(path, &|| Instant::now() < until)
    }
}

/// Latencies (µs) in consecutive windows of [`WINDOW`].
type Windows = Vec<Vec<u64>>;

/// The median over `windows` of each window's 99th percentile (empty
/// windows left out); 0 without any latency. On a machine shared with
/// other work, a burst of it spoils the windows it falls in rather than
/// the whole figure.
pub fn windowed_p99(windows: &[Vec<u64>]) -> f64 {
    let median = crate::median(window_p99s(windows).into_iter().map(|p99| p99 as f64));
    if median.is_nan() {
        0.0
    } else {
        median
    }
}

/// Each non-empty window's 99th percentile, in order.
fn window_p99s(windows: &[Vec<u64>]) -> Vec<u64> {
    windows
        .iter()
        .filter(|w| !w.is_empty())
        .map(|window| {
            let mut sorted = window.clone();
            sorted.sort_unstable();
            percentile(&sorted, 99.0).unwrap_or(0)
        })
        .collect()
}

/// The server's resident memory, in bytes.
fn server_rss(server: &Spawned) -> Result<u64> {
    let path = format!("/proc/{}/status", server.child.id());
    let status = std::fs::read_to_string(&path).map_err(io_error(format!("cannot read {path}")))?;
    parse_vm_rss(&status).ok_or_else(|| HostileError::Answer(format!("no VmRSS line in {path}")))
}

/// The hostile connections, and the thread that keeps the partial ones
/// trickling until told to stop.
struct Attack {
    silent: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    trickler: std::thread::JoinHandle<Vec<TcpStream>>,
    /// Connections that could not be opened.
    refused: usize,
}

impl Attack {
    /// Opens `plan.connections` connections to `addr`, alternately silent
    /// and partial, from [`OPENERS`] threads at once (a connection whose
    /// SYN the kernel drops waits a second for its retry, and that should
    /// not hold up the rest).
    fn open(addr: SocketAddr, plan: &HostilePlan) -> Self {
        let start = Arc::new(format!(
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Hostile: {}",
            "a".repeat(plan.partial_header_bytes)
        ));
        let openers: Vec<_> = (0..OPENERS)
            .map(|opener| {
                let (start, total) = (start.clone(), plan.connections);
                std::thread::spawn(move || {
                    let mut opened = (Vec::new(), Vec::new(), 0usize);
                    for n in (opener..total).step_by(OPENERS) {
                        let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).and_then(|socket| {
                            if n % 2 == 1 {
                                socket.set_write_timeout(Some(CONNECT_TIMEOUT))?;
                                (&socket).write_all(start.as_bytes())?;
                            }
                            Ok(socket)
                        });
                        match socket {
                            Ok(socket) if n % 2 == 1 => opened.1.push(socket),
                            Ok(socket) => opened.0.push(socket),
                            Err(_) => opened.2 += 1,
                        }
                    }
                    opened
                })
            })
            .collect();
        let (mut silent, mut partial, mut refused) = (Vec::new(), Vec::new(), 0);
        for opener in openers {
            match opener.join() {
                Ok((s, p, r)) => {
                    silent.extend(s);
                    partial.extend(p);
                    refused += r;
                }
                Err(_) => refused += plan.connections.div_ceil(OPENERS),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let trickler = {
            let stop = stop.clone();
            let (every, more) = (plan.trickle_every, "a".repeat(plan.trickle_bytes));
            std::thread::spawn(move || {
                // A write that fails means the server closed the
                // connection; it is left out from then on.
                let mut open: Vec<TcpStream> = partial;
                let mut closed = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(every);
                    let (still, gone): (Vec<_>, Vec<_>) = open
                        .into_iter()
                        .partition(|mut socket| socket.write_all(more.as_bytes()).is_ok());
                    open = still;
                    closed.extend(gone);
                }
                // Closed ones first, then the open ones: the caller counts
                // the open ones again the same way as the silent ones.
                closed.extend(open);
                closed
            })
        };
        Self {
            silent,
            stop,
            trickler,
            refused,
        }
    }

    fn opened(&self, plan: &HostilePlan) -> usize {
        plan.connections - self.refused
    }

    /// Stops the trickle and counts the connections the server still
    /// holds; all of them are closed when this returns.
    fn end(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let partial = self.trickler.join().unwrap_or_default();
        self.silent
            .iter()
            .chain(&partial)
            .filter(|socket| still_open(socket))
            .count()
    }
}

/// Whether the server still holds `socket` open: a read that would block
/// (nothing to read, no end of stream) means yes.
fn still_open(socket: &TcpStream) -> bool {
    if socket.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    // The server never answers a request that never ended; a closed
    // connection reads as 0 bytes or an error (reset).
    matches!((&*socket).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Figures, in output order.
type Figures = Vec<(String, String)>;

fn push(figures: &mut Figures, name: &str, value: String) {
    figures.push((name.to_owned(), value));
}

fn attack_figures(
    server: &Spawned,
    token: &str,
    plan: &HostilePlan,
    progress: &mut dyn FnMut(&str),
) -> Result<Figures> {
    let mut client = Conn::connect(server.addr, token)?;
    let run = client.seed_run().map_err(HostileError::Answer)?;
    // Warm-up: the connection, the run, the allocator.
    let (_, failed) = client.measure_for(&run, Duration::from_millis(300));
    if let Some(error) = failed {
        return Err(HostileError::Answer(format!("warm-up: {error}")));
    }
    // Without attack: half before it and half after, so a change in the
    // machine's load over the section weighs on both sides alike.
    let (mut without, failed) = client.measure_for(&run, plan.measure / 2);
    if let Some(error) = failed {
        return Err(HostileError::Answer(format!("without attack: {error}")));
    }
    let rss_before = server_rss(server)?;

    // The client measures from the first hostile connection to the end of
    // the attack: the connection storm is part of it.
    let measuring = Arc::new(AtomicBool::new(true));
    let measurer = {
        let measuring = measuring.clone();
        std::thread::spawn(move || {
            let measured = client.measure(&run, &|| measuring.load(Ordering::SeqCst));
            (client, run, measured)
        })
    };
    let opening = Instant::now();
    let attack = Attack::open(server.addr, plan);
    let opened = attack.opened(plan);
    let open_secs = opening.elapsed().as_secs_f64();
    progress(&format!(
        "{opened} hostile connections open ({} could not be) in {open_secs:.1} s; holding them for {:?}",
        attack.refused, plan.measure
    ));
    let mut rss_attack = 0;
    let holding = Instant::now() + plan.measure;
    while Instant::now() < holding {
        rss_attack = rss_attack.max(server_rss(server)?);
        std::thread::sleep(RSS_SAMPLE_EVERY);
    }
    measuring.store(false, Ordering::SeqCst);
    let (mut client, run, (under, failed)) = measurer
        .join()
        .map_err(|_| HostileError::Answer("the measuring client panicked".into()))?;
    let open_at_end = attack.end();
    match &failed {
        Some(error) => progress(&format!("the measuring client failed under attack: {error}")),
        None => {
            let (after, failed) = client.measure_for(&run, plan.measure / 2);
            if let Some(error) = failed {
                return Err(HostileError::Answer(format!("after the attack: {error}")));
            }
            progress(&format!(
                "window p99s (µs), to judge the noise: before {:?}, under {:?}, after {:?}",
                window_p99s(&without),
                window_p99s(&under),
                window_p99s(&after)
            ));
            without.extend(after);
        }
    }

    let (p99_without, p99_under) = (windowed_p99(&without), windowed_p99(&under));
    let pooled = |windows: &Windows| {
        let mut all: Vec<u64> = windows.concat();
        all.sort_unstable();
        (percentile(&all, 99.0).unwrap_or(0), all.len())
    };
    let ((pooled_without, n_without), (pooled_under, n_under)) = (pooled(&without), pooled(&under));
    progress(&format!(
        "p99 (median over {WINDOW:?} windows) {p99_without:.0} µs without attack, {p99_under:.0} µs under attack; \
         over all requests {pooled_without} µs ({n_without} requests) and {pooled_under} µs ({n_under})"
    ));
    let ratio = p99_under / p99_without.max(1.0);
    let per_conn = rss_attack.saturating_sub(rss_before) as f64 / opened.max(1) as f64;
    let mut figures = Figures::new();
    push(&mut figures, "hostile_p99_ratio", format!("{ratio:.3}"));
    push(&mut figures, "hostile_p99_without_us", format!("{p99_without:.0}"));
    push(&mut figures, "hostile_p99_attack_us", format!("{p99_under:.0}"));
    push(&mut figures, "hostile_connections_opened", opened.to_string());
    push(&mut figures, "hostile_open_secs", format!("{open_secs:.1}"));
    push(&mut figures, "hostile_open_at_end", open_at_end.to_string());
    push(
        &mut figures,
        "hostile_client_errors",
        u8::from(failed.is_some()).to_string(),
    );
    push(&mut figures, "hostile_rss_bytes_per_conn", format!("{per_conn:.0}"));
    push(
        &mut figures,
        "hostile_rss_before_mib",
        format!("{:.1}", rss_before as f64 / MIB),
    );
    push(
        &mut figures,
        "hostile_rss_attack_mib",
        format!("{:.1}", rss_attack as f64 / MIB),
    );
    Ok(figures)
}

/// The size of `path` in bytes, 0 when it does not exist.
fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `path` with `suffix` appended to its file name (`x.sqlite3-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Samples the size of `path` every [`WAL_SAMPLE_EVERY`] until told to
/// stop; returns the largest.
fn sample_peak(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::SeqCst) {
            peak = peak.max(size_of(&path));
            std::thread::sleep(WAL_SAMPLE_EVERY);
        }
        peak.max(size_of(&path))
    })
}

/// Sends SIGTERM and waits for a clean exit.
fn stop_cleanly(server: &mut Spawned) -> Result<()> {
    let pid = libc::pid_t::try_from(server.child.id())
        .map_err(|_| HostileError::Answer("the server's pid does not fit a pid_t".into()))?;
    // SAFETY: kill(2) on our own child, which has not been reaped (we hold
    // its handle and have not waited for it), so the pid is still its.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io_error("cannot send SIGTERM")(std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match server
            .child
            .try_wait()
            .map_err(io_error("cannot wait for the server"))?
        {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                return Err(HostileError::Answer(format!(
                    "{} exited with {status} after SIGTERM; {}",
                    server.what,
                    http::log_tail(&server.log)
                )))
            }
            None if Instant::now() > deadline => {
                return Err(HostileError::Answer(format!(
                    "{} still running {STOP_TIMEOUT:?} after SIGTERM",
                    server.what
                )))
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn flood_figures(
    mut server: Spawned,
    token: &str,
    database: &Path,
    plan: &HostilePlan,
    progress: &mut dyn FnMut(&str),
) -> Result<Figures> {
    let wal = with_suffix(database, "-wal");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(wal.clone(), stop.clone());
    // Job 0's target group is the attack's; the flood starts at 1.
    let next = Arc::new(AtomicU64::new(1));
    let until = Instant::now() + plan.flood;
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.flood_clients)
        .map(|_| {
            let (next, token, addr) = (next.clone(), token.to_owned(), server.addr);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut conn = Conn::connect(addr, &token).map_err(|e| e.to_string())?;
                let mut created = 0;
                while Instant::now() < until {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    conn.create_job(&flood_target_group(n), &format!("hostile-flood-{n}"))?;
                    created += 1;
                }
                Ok(created)
            })
        })
        .collect();
    let mut created = 0;
    let mut failure = None;
    for client in clients {
        match client.join() {
            Ok(Ok(n)) => created += n,
            Ok(Err(error)) => failure = Some(error),
            Err(_) => failure = Some("a flooding client panicked".into()),
        }
    }
    let flooded = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap_or(0);
    if let Some(error) = failure {
        return Err(HostileError::Answer(format!(
            "job flood: {error}; {}",
            http::log_tail(&server.log)
        )));
    }
    progress(&format!(
        "{created} jobs in {:.1} s; -wal peak {:.1} MiB; leaving it alone for {:?}",
        flooded.as_secs_f64(),
        peak as f64 / MIB,
        plan.wal_idle
    ));
    std::thread::sleep(plan.wal_idle);
    let idle = size_of(&wal);
    stop_cleanly(&mut server)?;
    let left = wal.exists() || with_suffix(database, "-shm").exists();
    let mut figures = Figures::new();
    push(&mut figures, "sqlite_wal_peak_mib", format!("{:.1}", peak as f64 / MIB));
    push(&mut figures, "sqlite_wal_idle_mib", format!("{:.1}", idle as f64 / MIB));
    push(&mut figures, "sqlite_wal_left_after_stop", u8::from(left).to_string());
    push(
        &mut figures,
        "sqlite_wal_flood_jobs_per_sec",
        format!("{:.0}", created as f64 / flooded.as_secs_f64()),
    );
    Ok(figures)
}

/// Measures everything; `progress` gets one line per step.
pub fn run(plan: &HostilePlan, progress: &mut dyn FnMut(&str)) -> Result<Figures> {
    // The server's own helper: children (the server) inherit the limit.
    let limit = fielding_server::limits::raise_open_file_limit()
        .ok_or_else(|| HostileError::Answer("cannot read the open files limit (getrlimit)".to_owned()))?;
    let needed = plan.connections as u64 + 256;
    if limit < needed {
        return Err(HostileError::Answer(format!(
            "the open files limit is {limit}, {needed} are needed (raise the hard limit, e.g. `ulimit -Hn {needed}`)"
        )));
    }
    let binary = http::sibling_binary("fielding-server")?;
    let token = http::mint_token(&binary)?;
    let flags = server_flags(std::env::var(FLAGS_VAR).ok().as_deref());
    let dir = tempfile::Builder::new()
        .prefix("fielding-bench-hostile-")
        .tempdir()
        .map_err(io_error("cannot create a temporary directory"))?;
    progress(&format!(
        "server {}, extra flags {flags:?}, open files limit {limit}, temp dir {}",
        binary.display(),
        dir.path().display()
    ));
    let start = |database: &str, name: &str| -> Result<Spawned> {
        let mut command = http::server_command(&binary, database, None, http::AddressLimits::Off);
        command.args(&flags);
        let log = dir.path().join(format!("{name}.stderr.log"));
        Ok(http::spawn_listening(
            command,
            "fielding-server",
            format!("fielding-server on {name}"),
            log,
        )?)
    };

    let server = start("memory", "memory")?;
    let mut figures = attack_figures(&server, &token, plan, progress)?;
    drop(server);

    let database = dir.path().join("flood.sqlite3");
    let database_text = database
        .to_str()
        .ok_or_else(|| HostileError::Answer(format!("{} is not UTF-8", database.display())))?;
    let server = start(database_text, "sqlite")?;
    figures.extend(flood_figures(server, &token, &database, plan, progress)?);
    Ok(figures)
}

/// The runner's entry point: measures, prints the figures on stdout and a
/// verdict on each target on stderr.
pub fn run_and_print(plan: &Plan) -> Result<(), String> {
    let plan = HostilePlan::for_plan(plan);
    eprintln!(
        "fielding-bench hostile: {} idle/partial connections, {:?} of measurement each side, {:?} job flood on SQLite",
        plan.connections, plan.measure, plan.flood
    );
    let started = Instant::now();
    let figures = run(&plan, &mut |line| eprintln!("  {line}")).map_err(|e| e.to_string())?;
    emit(&figures)?;
    let value = |name: &str| {
        figures
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    for (name, target, unit) in [
        ("hostile_p99_ratio", P99_RATIO_TARGET, ""),
        ("hostile_rss_bytes_per_conn", RSS_PER_CONN_TARGET, " bytes"),
        ("sqlite_wal_peak_mib", WAL_PEAK_TARGET_MIB, " MiB"),
    ] {
        if let Some(measured) = value(name) {
            let verdict = if measured <= target { "met" } else { "NOT met" };
            eprintln!("{name} = {measured}{unit} (target <= {target}{unit}): {verdict}");
        }
    }
    eprintln!("hostile: measured in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_chunked_bodies_refused() {
        let head = parse_head(b"HTTP/1.1 201 Created\r\nLocation: /x/y\r\ncontent-length: 12\r\nETag: \"1\"").unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(head.content_length, 12);
        assert_eq!(head.header("location"), Some("/x/y"));
        assert_eq!(head.header("etag"), Some("\"1\""));
        assert_eq!(parse_head(b"HTTP/1.1 204 No Content").unwrap().content_length, 0);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x").is_err());
        assert!(parse_head(b"HTTP/1.0 200 OK").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon").is_err());
    }

    #[test]
    fn flood_target_groups_are_valid_and_distinct() {
        for n in [0, 1, 999_999_999_999_999_999] {
            let id = flood_target_group(n);
            fielding_core::TargetGroupId::parse(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        assert_ne!(flood_target_group(1), flood_target_group(10));
    }

    #[test]
    fn extra_flags_follow_the_built_in_ones() {
        let flags = server_flags(Some(" --max-connections 512\t--header-read-timeout 5 "));
        let tail = &flags[SERVER_FLAGS.len()..];
        assert_eq!(tail, ["--max-connections", "512", "--header-read-timeout", "5"]);
        assert_eq!(server_flags(None).len(), SERVER_FLAGS.len());
    }

    #[test]
    fn the_windowed_p99_is_the_median_of_the_windows_p99s() {
        let steady: Vec<u64> = (1..=100).collect();
        let burst: Vec<u64> = (1..=100).map(|v| v * 100).collect();
        // One window spoiled by a burst of other work moves nothing.
        let windows = vec![steady.clone(), burst, steady.clone(), Vec::new()];
        assert_eq!(windowed_p99(&windows), 99.0);
        assert_eq!(windowed_p99(&[vec![10], vec![30]]), 20.0);
        assert_eq!(windowed_p99(&[]), 0.0);
        assert_eq!(windowed_p99(&[Vec::new()]), 0.0);
    }

    #[test]
    fn file_name_suffixes() {
        let path = Path::new("/tmp/x/flood.sqlite3");
        assert_eq!(with_suffix(path, "-wal"), Path::new("/tmp/x/flood.sqlite3-wal"));
        assert_eq!(size_of(Path::new("/nonexistent/fielding-bench")), 0);
    }
}
