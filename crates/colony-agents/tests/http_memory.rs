//! An `http` endpoint that answers with a huge body: the attempt fails with the limit named,
//! and colony's memory stays bounded. Alone in its test binary, so that the peak resident size
//! it reads is its own.

use bytes::Bytes;
use colony_agents::{
    Agent, Execution, Task,
    http::{Auth, Http, HttpOptions, MAX_RESPONSE},
    spawner::Spawner,
};
use colony_core::{AgentId, TaskId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::peak_rss;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_fails_the_attempt_and_memory_stays_bounded() {
    // A real server on loopback: a 200 OK without a length, then 300 MiB streamed 1 MiB at a
    // time (never held whole).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    Spawner::spawn("test-flood-server", async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let mega = vec![b' '; 1 << 20];
            for _ in 0..300 {
                if socket.write_all(&mega).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut options = HttpOptions::new(url, "flood");
    options.auth = Auth::None;
    let http = Http::new(options).unwrap();
    let before = peak_rss();
    let task = Task::new(TaskId(1), 1, AgentId(0), Bytes::from_static(b"{}"));
    let Execution::Running(attempt) = http.handle(task) else {
        panic!("a request waits")
    };
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), attempt)
        .await
        .expect("the attempt ends at the limit, not at the body's end")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("more than {MAX_RESPONSE} bytes")),
        "{err}"
    );
    let grown = peak_rss().saturating_sub(before);
    // One answer's worth at most (16 MiB), with room for the buffer's growth; reading the
    // whole body held all 300 MiB.
    assert!(
        grown < 100 << 20,
        "peak memory grew by {} MB for a 300 MiB answer",
        grown >> 20
    );
    eprintln!("peak memory grew by {} MB", grown >> 20);
}
