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

/// Ends the test process if `done` is not set within `limit`: a dispatcher blocked on a
/// worker thread would otherwise hang the test instead of failing it.
fn watchdog(limit: Duration, what: &'static str) -> Arc<std::sync::atomic::AtomicBool> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    colony_runtime::spawner::Spawner::spawn_thread("watchdog", move || {
        std::thread::sleep(limit);
        if !flag.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("watchdog: {what} did not finish within {limit:?}");
            std::process::exit(101);
        }
    })
    .unwrap();
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_never_blocks_kills_cancellations_or_health_sweeps() {
    use colony_core::tree::LiveTree;
    use colony_runtime::events::{Event, Kinds};
    let done = watchdog(
        Duration::from_secs(60),
        "the stalled-disk test (a blocked tokio worker?)",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stall.db");
    let mut options = SqliteOptions::new(&path);
    // The writer waits up to 30 s for a lock another program holds: a stalled disk. Two
    // writes fill its queue.
    let stall = Duration::from_secs(30);
    options.busy_timeout = stall;
    options.queue = 2;
    let journal = Arc::new(SqliteJournal::open(options).unwrap());
    let mut runtime_options = RuntimeOptions::default();
    runtime_options.health.heartbeat = Duration::from_millis(50);
    runtime_options.health.degraded_after = Duration::from_millis(100);
    runtime_options.health.critical_after = Duration::from_millis(200);
    runtime_options.health.failed_after = Duration::from_millis(400);
    let hung = SimOptions {
        hang_rate: 1.0,
        ..SimOptions::default()
    };
    let runtime = Runtime::start(
        runtime_options,
        vec![
            pool(4, SimOptions::default()),
            Pool::new(
                AgentSpec::new("sim", "hung"),
                2,
                Arc::new(Sim::new(hung).unwrap()),
            ),
        ],
        journal.clone(),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::AGENTS.union(Kinds::HEALTH));
    // Before the stall: two tasks that hang on the hung pool's two agents (only the health
    // sweep ends their attempts), and a third, queued behind them, to cancel later.
    let hang = TaskSpec {
        timeout: Duration::from_secs(600),
        max_attempts: 1,
        requirement: colony_core::task::Requirement {
            role: Some("hung".into()),
            ..Default::default()
        },
        ..TaskSpec::default()
    };
    let first = h.submit_batch(vec![hang.clone(); 3]).await.unwrap().first;

    // Another program takes the write lock: every commit now waits.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let stalled = std::time::Instant::now();
    // Submitters pile up behind the stalled writer, far more than its queue holds; they
    // must wait asleep, not on a tokio worker.
    let mut submitters = Vec::new();
    for _ in 0..32 {
        let h = h.clone();
        submitters.push(colony_runtime::spawner::Spawner::spawn(
            "stalled-submitter",
            async move { h.submit(TaskSpec::default()).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        journal.backlog().unwrap().waiting() >= 2,
        "the writer's queue is full"
    );

    // Kills are handled: a killed worker is restarted.
    let worker = h
        .inspect(|t: &LiveTree| {
            t.agents_in_tier(t.worker_tier())
                .into_iter()
                .find(|a| t.spec(*a) == 0)
                .unwrap()
        })
        .await
        .unwrap();
    h.kill(worker).unwrap();
    let restarted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(Event::AgentRestarted { agent, .. }) if agent == worker => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(restarted, Ok(true), "the killed worker came back");

    // Health sweeps run: the silent agents are failed.
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(Event::HealthChanged {
                    to: colony_core::health::HealthState::Failed,
                    ..
                }) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(failed, Ok(true), "a silent agent was failed by the sweep");

    // Cancellations are answered.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(10),
        h.cancel(colony_core::TaskId(first.0 + 2)),
    )
    .await;
    assert!(
        matches!(cancelled, Ok(Ok(_))),
        "the dispatcher answered the cancellation: {cancelled:?}"
    );

    // All of it happened while the writer was stuck, not after its wait gave up: a blocked
    // worker thread would also stop the timeouts above, so the wall clock is the witness.
    assert!(
        stalled.elapsed() < stall / 2,
        "kill, sweep and cancel were handled only after {:?} of the stall",
        stalled.elapsed()
    );

    // The lock goes: the waiting submitters are answered, and whatever was accepted ends.
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    for s in submitters {
        let _ = s.await;
    }
    tokio::time::timeout(Duration::from_secs(20), h.drain())
        .await
        .expect("the backlog drains once the disk is back")
        .unwrap();
    let counts = journal.counts().unwrap();
    assert_eq!(counts.terminal(), h.stats().accepted, "{counts:?}");
    runtime.shutdown().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A tokio runtime dropped while attempts run (a process ending without `shutdown`): the
/// dispatcher on its own thread stops with it, before its drivers go, so the attempts stay
/// unfinished for recovery instead of ending as crashes of timers polled after the drivers.
#[test]
fn a_runtime_dropped_mid_work_leaves_its_attempts_for_recovery() {
    use colony_journal::MemoryJournal;
    let journal = Arc::new(MemoryJournal::new());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let slow = SimOptions {
        latency: Latency::Fixed {
            value: Duration::from_secs(30),
        },
        ..SimOptions::default()
    };
    let runtime = tokio.block_on(async {
        let runtime = Runtime::start(
            RuntimeOptions::default(),
            vec![pool(4, slow)],
            journal.clone(),
        )
        .await
        .unwrap();
        let spec = TaskSpec {
            timeout: Duration::from_secs(60),
            ..TaskSpec::default()
        };
        runtime.handle().submit_batch(vec![spec; 4]).await.unwrap();
        while journal.counts().unwrap().running < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runtime
    });
    drop(tokio);
    // Anything the loop did after the drop would show by now.
    std::thread::sleep(Duration::from_millis(300));
    let counts = journal.counts().unwrap();
    assert_eq!(counts.running, 4, "{counts:?}");
    assert_eq!(counts.total(), 4, "{counts:?}");
    assert_eq!(journal.stats().fenced, 0);
    drop(runtime);
}
