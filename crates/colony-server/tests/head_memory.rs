//! Memory held by half-sent request heads stays bounded, alone in its own test binary so
//! that nothing else moves the process's resident set while it is measured.

use colony_agents::sim::SimOptions;
use colony_runtime::RuntimeOptions;
use colony_server::{
    Config, Limits,
    testing::{local, serve, sim_runtime},
};
use std::time::Duration;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// The process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_unfinished_heads_cannot_make_the_server_hold_their_bytes() {
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        connections: Limits {
            max_connections: 1_000,
            header_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
        ..local()
    };
    let (server, _) = serve(&runtime, config).await;
    let before = rss();
    // 400 clients each send 300 KB of a head that never ends: hyper's default buffer would
    // keep all of it, 120 MB; the server keeps at most 64 KiB each, then answers 431.
    let filler = vec![b'a'; 300_000];
    let mut clients = Vec::new();
    for _ in 0..400 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.write_all(&filler)).await;
        clients.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 60 << 20,
        "400 long heads grew the server by {} MB",
        grown >> 20
    );
    drop(clients);
    drop(server);
    runtime.shutdown().await;
}
