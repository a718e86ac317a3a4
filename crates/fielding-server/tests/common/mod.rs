//! Helpers shared by the test binaries that start the real server as a
//! process: the binary's path and a clean environment, a running server
//! with its output, tokens, requests.
//!
//! Every wait is a poll with a generous deadline (the machine may be small
//! and busy); no fixed sleeps.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod api;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fielding_core::Timestamp;
use reqwest::StatusCode;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fielding-server");
pub const SECRET: &str = "integration-test secret, 32 bytes or more";
pub const API_VERSION: &str = "2025-12-18";
pub const PROJECT: &str = "01BTGNYV6HRNK8K8VKZASZCFP0";
pub const TARGET_GROUP: &str = "01BTGNYV6HRNK8K8VKZASZCFP1";
/// How long a server may take to start, or to stop, on a busy machine.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub const ENV_VARS: [&str; 25] = [
    "FIELDING_LISTEN",
    "FIELDING_BASE_PATH",
    "FIELDING_METRICS",
    "FIELDING_DATABASE",
    "FIELDING_PG_SCHEMA",
    "FIELDING_JWT_SECRET",
    "FIELDING_RATE_LIMIT_PER_SECOND",
    "FIELDING_RATE_LIMIT_BURST",
    "FIELDING_BODY_LIMIT",
    "FIELDING_SHUTDOWN_GRACE",
    "FIELDING_ADDRESS_RATE_LIMIT_PER_SECOND",
    "FIELDING_ADDRESS_RATE_LIMIT_BURST",
    "FIELDING_HEADER_READ_TIMEOUT",
    "FIELDING_BODY_READ_TIMEOUT",
    "FIELDING_IDLE_TIMEOUT",
    "FIELDING_MAX_CONNECTIONS",
    "FIELDING_MAX_CONNECTIONS_PER_ADDRESS",
    "FIELDING_MAX_HEADER_BYTES",
    "FIELDING_JOB_RETENTION",
    "FIELDING_CHANGE_RETENTION",
    "FIELDING_BULK_CONCURRENCY",
    "FIELDING_BULK_BATCH_SIZE",
    "FIELDING_BULK_LEASE",
    "FIELDING_BULK_POLL_INTERVAL_MS",
    "FIELDING_BULK_BODY_LIMIT",
];

/// The path the server serves the API under by default (the contract's
/// server URL's `/v1`): every API path here starts with it, so a
/// `Location` the server answers can be requested as it is.
pub const API: &str = fielding_http::CONTRACT_BASE_PATH;

/// `path` (a contract path, `/demand/...`) under [`API`].
pub fn api(path: &str) -> String {
    format!("{API}{path}")
}

pub fn list_path(account: u32) -> String {
    format!("{API}/demand/accounts/{account}/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-runs")
}

/// The binary with none of the caller's FIELDING_* settings.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

/// Runs the binary to completion (for `token`, `--help`, refusals).
pub fn run(args: &[&str]) -> Output {
    command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// A server process; killed on drop if still running.
pub struct Server {
    /// The process.
    pub child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    stdout: Receiver<String>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Everything printed so far (stdout and stderr), for assertions and
    /// failure messages.
    output: Arc<Mutex<Vec<String>>>,
}

fn forward(
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<Vec<String>>>,
    lines: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            output.lock().unwrap().push(line.clone());
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

impl Server {
    /// Starts the server with `args` (plus `--listen 127.0.0.1:0`) and
    /// waits for the address it prints.
    pub fn start(args: &[&str]) -> Self {
        Self::launch(command(), args)
    }

    /// [`Server::start`] with logs at `warn`: no access log line per
    /// request, for tests that send thousands.
    pub fn start_quiet(args: &[&str]) -> Self {
        let mut quiet = command();
        quiet.env("RUST_LOG", "warn");
        Self::launch(quiet, args)
    }

    /// [`Server::start`] with `command` (e.g. [`command`] with an
    /// environment variable set).
    pub fn launch(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, stdout) = mpsc::channel();
        let readers = vec![
            forward(child.stdout.take().unwrap(), output.clone(), Some(tx)),
            forward(child.stderr.take().unwrap(), output.clone(), None),
        ];
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout,
            readers,
            output,
        };
        let line = server.wait_for_line("listening on http://");
        let addr = line.rsplit("http://").next().unwrap().trim();
        server.addr = addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
        // The banner's last line: everything before it has been read.
        server.wait_for_line("try: curl");
        server
    }

    /// The first stdout line (from now on) containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no line with {needle:?} in time:\n{}", self.printed()),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "the server exited ({status:?}) before printing {needle:?}:\n{}",
                        self.printed()
                    )
                }
            }
        }
    }

    /// Waits until `needle` appears in anything the server printed
    /// (stdout or the stderr log).
    pub fn wait_for_line_anywhere(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.printed().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in time:\n{}", self.printed());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a process already told to stop to exit.
    pub fn stop_with_nothing_more(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Read the output to its end before anyone looks at it.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.printed());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn printed(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; it has not been reaped
        // (we have not waited for it), so the pid is still its.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill failed");
        self.stop_with_nothing_more()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A token from the `token` subcommand.
pub fn token(secret: &str, accounts: &[u32]) -> String {
    let mut args = vec!["token".to_owned(), "--secret".to_owned(), secret.to_owned()];
    for account in accounts {
        args.extend(["--account".to_owned(), account.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.trim().to_owned()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn get(server: &Server, path: &str, token: Option<&str>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = client().get(server.url(path)).header("Cint-API-Version", API_VERSION);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// `days` from now (the lifecycle wants a schedule's start in the future).
pub fn in_days(days: i64) -> Timestamp {
    let now = fielding_core::Clock::now(&fielding_core::SystemClock).unix_millis();
    Timestamp::from_unix_millis(now + days * 86_400_000).expect("a date in range")
}
