//! The connection limits over real sockets, on an in-process server:
//! silent, slow and oversized clients are cut off within their limits,
//! kept-alive clients within theirs, the connection cap never stops an
//! admitted client, and shutdown does not wait for connections that have
//! no request in flight.

use std::net::SocketAddr;
use std::time::Duration;

use fielding_server::{ConnectionLimits, Database, JwtSecret, Server, ServerConfig, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long any single wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(15);

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), ServerError>>,
}

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        max_connections: 64,
        max_connections_per_address: None,
        max_header_bytes: 4096,
    }
}

async fn start(connections: ConnectionLimits) -> Running {
    let secret = JwtSecret::new("a secret for the connection tests!").unwrap();
    let mut config = ServerConfig::new(Database::Memory, secret);
    config.connections = connections;
    config.limits.body_read_timeout = Duration::from_secs(2);
    let server = Server::bind(&config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running { addr, stop, serving }
}

/// Reads until the server closes the connection; what it sent meanwhile.
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut received)).await;
    match read {
        Ok(Ok(_)) => {}
        // A reset is a close too.
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(error)) => panic!("reading failed: {error}"),
        Err(_) => panic!("the server did not close the connection within {PATIENCE:?}"),
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends one request and reads one whole response (ending with its JSON
/// body) on a kept-alive connection.
async fn exchange(socket: &mut TcpStream, request: &[u8]) -> String {
    socket.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let server = start(limits()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    let sent = read_to_close(&mut socket).await;
    let waited = opened.elapsed();
    assert_eq!(sent, "", "nothing is sent to a client that sent nothing");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}, the timeout is 1 s"
    );
}

#[tokio::test]
async fn a_trickled_head_does_not_extend_the_header_read_timeout() {
    let server = start(limits()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    socket.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if socket.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, trickle).await.expect("cut off in time");
    let waited = opened.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "cut off after {waited:?}, the timeout is 1 s"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_has_the_idle_timeout_not_the_header_timeout() {
    let server = start(limits()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let answer = exchange(&mut socket, HEALTH).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Longer than the header read timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let answer = exchange(&mut socket, HEALTH).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "still open after 1.8 s idle: {answer}"
    );
    let idle_since = Instant::now();
    assert_eq!(read_to_close(&mut socket).await, "");
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(2800) && waited < Duration::from_secs(5),
        "closed after {waited:?} idle, the idle timeout is 3 s"
    );
}

#[tokio::test]
async fn a_second_head_left_unfinished_gets_the_header_timeout_not_the_idle_one() {
    let server = start(limits()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut socket, HEALTH).await.starts_with("HTTP/1.1 200"));
    socket.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut socket).await, "");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "closed after {waited:?}: the head timeout is 1 s, the idle one 3 s"
    );
}

#[tokio::test]
async fn a_head_past_the_size_limit_is_refused_with_431_and_closed() {
    let server = start(limits()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    // The server may close before reading everything; what it answered
    // is what counts.
    let _ = socket.write_all(big.as_bytes()).await;
    let answer = read_to_close(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

#[tokio::test]
async fn at_the_connection_cap_an_admitted_client_is_served_and_a_newcomer_waits_its_turn() {
    let server = start(ConnectionLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(2),
        ..limits()
    })
    .await;
    let mut admitted = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut admitted, HEALTH).await.starts_with("HTTP/1.1 200"));
    // Three silent clients fill the cap.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let started = Instant::now();
        assert!(exchange(&mut admitted, HEALTH).await.starts_with("HTTP/1.1 200"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    // A fifth connection is not served while the cap is reached...
    let mut newcomer = TcpStream::connect(server.addr).await.unwrap();
    newcomer.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(700), newcomer.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    // ...and is once the silent ones are cut off at the header timeout.
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, newcomer.read(&mut buf))
            .await
            .expect("served once a slot frees up")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(silent);
}

#[tokio::test]
async fn an_address_past_its_connection_limit_has_new_connections_closed_at_once() {
    let server = start(ConnectionLimits {
        max_connections_per_address: Some(2),
        ..limits()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut first, HEALTH).await.starts_with("HTTP/1.1 200"));
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let _ = third.write_all(HEALTH).await;
    let refused = Instant::now();
    assert_eq!(read_to_close(&mut third).await, "", "closed without an answer");
    assert!(
        refused.elapsed() < Duration::from_millis(500),
        "{:?}",
        refused.elapsed()
    );
    // Admitted connections are served as before, and a closed one frees
    // its slot.
    assert!(exchange(&mut first, HEALTH).await.starts_with("HTTP/1.1 200"));
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = TcpStream::connect(server.addr).await.unwrap();
        let _ = again.write_all(HEALTH).await;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(PATIENCE, again.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                assert!(buf.starts_with(b"HTTP/1.1 200"));
                break;
            }
            // The server may not have seen the first one close yet.
            _ => assert!(Instant::now() < deadline, "the slot was never freed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_closes_idle_and_half_sent_connections_at_once() {
    let server = start(ConnectionLimits {
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(exchange(&mut idle, HEALTH).await.starts_with("HTTP/1.1 200"));
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: te").await.unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = Instant::now();
    server.stop.send(()).unwrap();
    for socket in [&mut idle, &mut half, &mut silent] {
        assert_eq!(read_to_close(socket).await, "");
    }
    tokio::time::timeout(PATIENCE, server.serving)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "the grace period (30 s) was not waited out: {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed_at_the_body_read_timeout() {
    let server = start(limits()).await;
    let secret = JwtSecret::new("a secret for the connection tests!").unwrap();
    let token = fielding_server::mint_token(
        &secret,
        uuid::Uuid::new_v4(),
        &[fielding_core::AccountId::new(101).unwrap()],
        Duration::from_secs(600),
    )
    .unwrap();
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-run-jobs/launch-from-draft HTTP/1.1\r\n\
         Host: test\r\nAuthorization: Bearer {token}\r\nCint-API-Version: 2025-12-18\r\nidempotency-key: stalled\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"end_fie"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let answer = read_to_close(&mut socket).await;
    let waited = sent.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("bad_request_error") || answer.contains("\"object\""),
        "{answer:?}"
    );
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(5),
        "answered after {waited:?}, the body timeout is 2 s"
    );
}
