//! The runtime on a real SQLite file: every task lands on disk, and a restart finishes what
//! the last process left.

use colony_agents::{
    AgentSpec,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::task::{TaskSpec, TaskState};
use colony_journal::{Journal, SqliteJournal, SqliteOptions};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use std::{sync::Arc, time::Duration};

fn pool(count: u32, sim: SimOptions) -> Pool {
    Pool::new(
        AgentSpec::new("sim", "worker"),
        count,
        Arc::new(Sim::new(sim).unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_is_on_disk_when_drain_returns() {
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(SqliteJournal::open(SqliteOptions::new(dir.path().join("c.db"))).unwrap());
    let flaky = SimOptions {
        seed: 5,
        error_rate: 0.1,
        ..SimOptions::default()
    };
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool(100, flaky)],
        journal.clone(),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    for _ in 0..20 {
        h.submit_batch(vec![TaskSpec::with_payload("{}"); 1_000])
            .await
            .unwrap();
    }
    h.drain().await.unwrap();
    let counts = journal.counts().unwrap();
    assert_eq!(counts.terminal(), 20_000, "{counts:?}");
    assert_eq!(counts.succeeded, h.stats().succeeded);
    assert_eq!(journal.stats().fenced, 0);
    runtime.shutdown().await;
    // What the counters say is what the rows say.
    let rows = journal
        .tasks(Some(TaskState::Succeeded), usize::MAX)
        .unwrap();
    assert_eq!(rows.len() as u64, counts.succeeded);
}

/// Runs a process on the journal at `path` until `running` attempts are recorded as started,
/// then stops it: what it leaves unfinished is the next process's to recover.
async fn leave_running(
    path: &std::path::Path,
    pools: Vec<Pool>,
    specs: Vec<TaskSpec>,
    running: u64,
) {
    let journal = Arc::new(SqliteJournal::open(SqliteOptions::new(path)).unwrap());
    let runtime = Runtime::start(RuntimeOptions::default(), pools, journal.clone())
        .await
        .unwrap();
    runtime.handle().submit_batch(specs).await.unwrap();
    while journal.counts().unwrap().running < running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finishes_what_the_last_process_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let stuck = SimOptions {
        latency: Latency::Fixed {
            value: Duration::from_secs(3600),
        },
        ..SimOptions::default()
    };
    leave_running(
        &path,
        vec![pool(10, stuck)],
        vec![TaskSpec::default(); 25],
        10,
    )
    .await;
    let journal = Arc::new(SqliteJournal::open(SqliteOptions::new(&path)).unwrap());
    let before = journal.counts().unwrap();
    assert_eq!((before.running, before.queued), (10, 15));
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool(10, SimOptions::default())],
        journal.clone(),
    )
    .await
    .unwrap();
    runtime.handle().drain().await.unwrap();
    let after = journal.counts().unwrap();
    assert_eq!(after.succeeded, 25, "{after:?}");
    let rows = journal.tasks(None, 100).unwrap();
    // Numbers skip past any attempt the dead process may have started unrecorded: the
    // journal's lease plus max attempts (3), then the next.
    let restarted = rows.iter().filter(|r| r.attempt == 1 + 3 + 1).count();
    let fresh = rows.iter().filter(|r| r.attempt == 3 + 1).count();
    assert_eq!(
        (restarted, fresh),
        (10, 15),
        "interrupted attempts get a new lease"
    );
    // New work goes on with ids after the old ones.
    let id = runtime.handle().submit(TaskSpec::default()).await.unwrap();
    assert_eq!(id.0, 26);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_fault_stops_new_work_and_the_runtime_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fault.db");
    let mut options = SqliteOptions::new(&path);
    options.busy_timeout = Duration::from_millis(200);
    let journal = Arc::new(SqliteJournal::open(options).unwrap());
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool(10, SimOptions::default())],
        journal.clone(),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    h.submit_batch(vec![TaskSpec::default(); 100])
        .await
        .unwrap();
    h.drain().await.unwrap();

    // Another program takes the write lock: submissions fail, naming the lock, and nothing
    // is acknowledged.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = h
        .submit_batch(vec![TaskSpec::default(); 10])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(journal.fault().is_some());
    assert_eq!(h.stats().accepted, 100);
    other.execute_batch("COMMIT").unwrap();
    drop(other);

    // Once the lock is gone, work is accepted and runs again.
    let mut accepted = None;
    for _ in 0..50 {
        match h.submit_batch(vec![TaskSpec::default(); 10]).await {
            Ok(a) => {
                accepted = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        accepted.is_some(),
        "submissions resume after the fault clears"
    );
    h.drain().await.unwrap();
    assert_eq!(journal.counts().unwrap().succeeded, 110);
    assert!(journal.fault().is_none());
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_tasks_wait_for_their_pool_and_run_once_it_has_agents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let coder = |count: u32, sim: SimOptions| {
        Pool::new(
            AgentSpec::new("sim", "coder"),
            count,
            Arc::new(Sim::new(sim).unwrap()),
        )
    };
    let for_coder = TaskSpec {
        requirement: colony_core::task::Requirement {
            role: Some("coder".into()),
            ..Default::default()
        },
        ..TaskSpec::default()
    };
    let stuck = SimOptions {
        latency: Latency::Fixed {
            value: Duration::from_secs(3600),
        },
        ..SimOptions::default()
    };
    leave_running(&path, vec![coder(5, stuck)], vec![for_coder.clone(); 5], 5).await;
    // The restart has no coders yet: the five wait, and nothing else is held up.
    let journal = Arc::new(SqliteJournal::open(SqliteOptions::new(&path)).unwrap());
    let pools = vec![
        pool(4, SimOptions::default()),
        coder(0, SimOptions::default()),
    ];
    let runtime = Runtime::start(RuntimeOptions::default(), pools, journal.clone())
        .await
        .unwrap();
    let h = runtime.handle();
    let other = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(other.state, TaskState::Succeeded);
    assert_eq!(journal.counts().unwrap().queued, 5);
    h.spawn(1, 2, colony_runtime::SpawnMode::Batch)
        .await
        .unwrap();
    h.drain().await.unwrap();
    assert_eq!(journal.counts().unwrap().succeeded, 6);
    runtime.shutdown().await;
}
