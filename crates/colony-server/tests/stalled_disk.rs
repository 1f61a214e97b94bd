//! A stalled journal disk: submitters wait for it, and the server still answers everything
//! that does not need it.

use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_journal::{Journal, SqliteJournal, SqliteOptions};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use colony_server::testing::{local, serve};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_answered_while_submissions_wait_for_a_stalled_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stall.db");
    let mut options = SqliteOptions::new(&path);
    // The writer waits up to 30 s for a lock another program holds; two writes fill its queue.
    let stall = Duration::from_secs(30);
    options.busy_timeout = stall;
    options.queue = 2;
    let journal = Arc::new(SqliteJournal::open(options).unwrap());
    colony_server::install_metrics();
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        8,
        Arc::new(Sim::new(SimOptions::default()).unwrap()),
    );
    let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], journal.clone())
        .await
        .unwrap();
    let (server, url) = serve(&runtime, local()).await;
    let client = reqwest::Client::new();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let stalled = Instant::now();
    // Far more submissions than the writer's queue holds, all waiting on the disk.
    let mut posts = Vec::new();
    for i in 0..24 {
        let (client, url) = (client.clone(), url.clone());
        posts.push(colony_runtime::spawner::Spawner::spawn(
            "stalled-post",
            async move {
                client
                    .post(format!("{url}/v1/tasks"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"payload": {{"n": {i}}}}}"#))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            },
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        journal.backlog().unwrap().waiting() >= 2,
        "the queue is full"
    );

    // The server answers what needs no disk write, many times over, while the disk is stuck.
    for _ in 0..20 {
        let r = client.get(format!("{url}/v1/stats")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = client.get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        stalled.elapsed() < stall / 2,
        "answered only after {:?} of the stall",
        stalled.elapsed()
    );

    other.execute_batch("COMMIT").unwrap();
    drop(other);
    for post in posts {
        let status = post.await.unwrap().unwrap().unwrap();
        // Accepted, or refused for the lock by the group that met it; never lost unanswered.
        assert!(status == 202 || status == 503, "status {status}");
    }
    runtime.handle().drain().await.unwrap();
    let counts = journal.counts().unwrap();
    assert_eq!(counts.terminal(), runtime.handle().stats().accepted);
    drop(server);
    runtime.shutdown().await;
}
