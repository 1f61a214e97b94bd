//! Connections against a real server on loopback, over raw TCP where a well-behaved client
//! library would not misbehave: half-open connections, the cap, the timeouts, and the JSON
//! answers of the HTTP layer.

use colony_agents::sim::SimOptions;
use colony_runtime::{Runtime, RuntimeOptions};
use colony_server::{
    Config, Limits, Tls,
    testing::{local, serve, sim_runtime},
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn start(limits: Limits) -> (Runtime, colony_server::Server) {
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        connections: limits,
        ..local()
    };
    let (server, _) = serve(&runtime, config).await;
    (runtime, server)
}

/// Half a request: a head that never ends.
const HALF: &[u8] = b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// Sends `request` on a new connection and reads the answer: status, head, and body (read to
/// the end of the connection, or `content-length`). A server that answers before reading
/// everything may close while the request is still being written; that is not an error here.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                return (status, head, bytes[end + 4..end + 4 + length].to_vec());
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "the connection ended before a whole answer: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer in 10 s: {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
}

/// The error code of a JSON error body; panics if the body is no such thing.
fn code(head: &str, body: &[u8]) -> String {
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let value: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(body));
    });
    value["error"]["code"].as_str().unwrap().to_owned()
}

/// Whether the server has closed `stream` (reads end), waiting up to `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_connections_do_not_keep_a_good_request_out() {
    // The server's cap and the attackers' connections both take file descriptors of this
    // process: 6,000 attackers and a cap of 2,000 stay well under a limit of 20,000 (or the
    // test says what it needs).
    let attackers = 6_000;
    let cap = 2_000;
    let (runtime, server) = start(Limits {
        max_connections: cap,
        ..Limits::default()
    })
    .await;
    let mut half_open = Vec::with_capacity(attackers);
    for i in 0..attackers {
        let mut stream = TcpStream::connect(server.addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e} (is `ulimit -n` at least 10,000?)"));
        stream.write_all(HALF).await.unwrap();
        half_open.push(stream);
    }
    // A good request, through a client library, is answered within a second.
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/v1/stats", server.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // The oldest half-open connections were closed to make room; the newest are still open.
    let mut evicted = 0;
    for stream in half_open.iter_mut().take(attackers - cap) {
        if closed(stream, Duration::from_millis(50)).await {
            evicted += 1;
        }
    }
    assert!(evicted >= attackers - cap, "{evicted} evicted");
    let last = half_open.last_mut().unwrap();
    assert!(!closed(last, Duration::from_millis(50)).await);
    drop(half_open);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_a_newcomer_gets_a_json_503() {
    let (runtime, server) = start(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    // Three event streams: requests in flight for as long as they are open.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(stream);
    }
    let (status, head, body) = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(code(&head, &body), "too-many-connections");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // A stream closed frees its place.
    drop(streams.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, head, _) = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_their_timeouts() {
    let (runtime, server) = start(Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..Limits::default()
    })
    .await;
    // Nothing sent at all, and half a head: both closed at the header timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(HALF).await.unwrap();
    // A request answered, then nothing: kept alive until the idle timeout.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut idle).await;
    assert_eq!(status, 200);
    // Generous bounds: what is tested is that they close at all, and in that order.
    assert!(closed(&mut silent, Duration::from_secs(5)).await);
    assert!(closed(&mut half, Duration::from_secs(5)).await);
    assert!(
        !closed(&mut idle, Duration::from_millis(100)).await,
        "the idle timeout is longer than the header timeout"
    );
    assert!(closed(&mut idle, Duration::from_secs(5)).await);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_connection_that_never_shakes_hands_is_evicted_too() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        tls: Some(Tls {
            cert: cert_path,
            key: key_path,
        }),
        connections: Limits {
            max_connections: 4,
            ..Limits::default()
        },
        ..local()
    };
    let (server, _) = serve(&runtime, config).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let started = Instant::now();
    let r = client
        .get(format!("https://localhost:{}/healthz", server.addr.port()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layers_own_refusals_are_json() {
    let (runtime, server) = start(Limits::default()).await;
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n",
        (0..120)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: {}\r\n\r\n",
        "b".repeat(500_000)
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, "bad-request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nbad header\r\n\r\n".to_vec(),
            400,
            "bad-request",
        ),
        (long_uri.into_bytes(), 414, "uri-too-long"),
        (many_headers.into_bytes(), 431, "headers-too-large"),
        (huge_header.into_bytes(), 431, "headers-too-large"),
        // Rejections of axum's extractors, which it writes as text.
        (
            b"GET /v1/tasks/%FF HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            400,
            "bad-request",
        ),
        (
            b"GET /ui/tasks?state=a&state=b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            400,
            "bad-request",
        ),
    ];
    for (request, status, expected) in cases {
        let (got, head, body) = exchange(server.addr, &request).await;
        let shown = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        assert_eq!(got, status, "{shown}: {head}");
        assert_eq!(code(&head, &body), expected, "{shown}");
    }
    // A body over the limit where the route reads raw bytes (axum's text 413).
    let r = reqwest::Client::new()
        .post(format!("{}/v1/runs", server.url()))
        .header("content-type", "application/yaml")
        .body(vec![b'#'; colony_server::MAX_BODY + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let value: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(value["error"]["code"], "payload-too-large", "{value}");
    // The server is unharmed.
    let r = reqwest::get(format!("{}/healthz", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_bodies_stall_are_evicted_and_time_out() {
    let (runtime, server) = start(Limits {
        max_connections: 3,
        // Long enough that none of the others times out while the evicted one is looked for.
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    // Heads sent whole, bodies begun and never finished: the handlers wait on them.
    let stalled = b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"payload\": ";
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(stalled).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // At the cap, the slowest of them makes room for a good request.
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{}/v1/stats", server.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // One of them went at once. Which one is the scheduler's choice: a connection starts
    // waiting on its body when its handler first polls it, not when its bytes arrived, so the
    // order in which the three were sent does not decide which waited longest.
    // One deadline for the three: a timeout polls its read before its clock, so a connection
    // already closed is seen as closed after the deadline too.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut went = Vec::new();
    let mut byte = [0u8; 1];
    for (i, stream) in slow.iter_mut().enumerate() {
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await
        {
            went.push(i);
        }
    }
    assert_eq!(
        went.len(),
        1,
        "exactly one was evicted for the newcomer: {went:?}"
    );
    // And the others go when their bodies have not moved for the idle timeout.
    for (i, stream) in slow.iter_mut().enumerate() {
        if !went.contains(&i) {
            assert!(
                closed(stream, Duration::from_secs(5)).await,
                "connection {i}"
            );
        }
    }
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_must_be_a_json_object() {
    let (runtime, server) = start(Limits::default()).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        client
            .post(format!("{}{path}", server.url()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    for body in ["[]", "[{}]", "[1, \"x\"]", "\"x\"", "7", "null", "true"] {
        let r = post("/v1/tasks", body).await.unwrap();
        let status = r.status().as_u16();
        let value: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(status, 422, "{body}: {value}");
        assert_eq!(value["error"]["code"], "bad-body", "{body}");
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("a JSON object"),
            "{value}"
        );
    }
    let r = post("/v1/tasks/batch", r#"{"tasks": [{}, []]}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = post("/v1/tasks/batch", "[[]]").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(runtime.handle().stats().accepted, 0, "no task was accepted");
    assert_eq!(post("/v1/tasks", "{}").await.unwrap().status(), 202);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_their_answers_are_evicted() {
    let (runtime, server) = start(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    // Twenty tasks whose outputs (their payloads, echoed) make a page of about 16 MB: more
    // than the sockets' buffers hold, so that writing it waits for the client to read.
    let client = reqwest::Client::new();
    let payload = serde_json::json!({ "payload": "x".repeat(800_000) }).to_string();
    for _ in 0..20 {
        let r = client
            .post(format!("{}/v1/tasks", server.url()))
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    runtime.handle().drain().await.unwrap();
    let page = b"GET /v1/tasks?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut deaf = Vec::new();
    for _ in 0..3 {
        // A small receive buffer, fixed: the kernel would otherwise grow it to take it all.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        stream.write_all(page).await.unwrap();
        deaf.push(stream);
    }
    // While the server makes the pages, their connections are its to finish, and a newcomer
    // may hear 503; once they wait on their clients, one makes room.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = fresh()
            .get(format!("{}/v1/stats", server.url()))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => break,
            503 => assert!(Instant::now() < deadline, "still refused after 20 s"),
            other => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The one closed gets less than its page; the others, read now, get all of theirs.
    let mut short = 0;
    for stream in &mut deaf {
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if got >= 16_000_000 {
                    return;
                }
            }
        })
        .await;
        if got < 16_000_000 {
            short += 1;
        }
    }
    assert_eq!(short, 1, "one deaf client made room");
    server.stop();
    runtime.shutdown().await;
}
