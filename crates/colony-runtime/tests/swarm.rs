//! A whole swarm on a real multi-threaded runtime: every task is accounted for in the journal.

use colony_agents::{
    AgentSpec,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::task::{Priority, TaskSpec, TaskState};
use colony_journal::{Journal, MemoryJournal};
use colony_runtime::{Pool, Runtime, RuntimeOptions, spawner::Spawner};
use std::{sync::Arc, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_sim_tasks_on_a_thousand_agents() {
    let sim = SimOptions {
        seed: 2026,
        latency: Latency::Uniform {
            min: Duration::ZERO,
            max: Duration::from_micros(200),
        },
        error_rate: 0.05,
        crash_rate: 0.01,
        ..SimOptions::default()
    };
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        1_000,
        Arc::new(Sim::new(sim).unwrap()),
    );
    let journal = Arc::new(MemoryJournal::new());
    let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], journal.clone())
        .await
        .unwrap();
    let handle = runtime.handle().clone();

    // Four submitters at once, mixed priorities and batch sizes.
    let mut submitters = Vec::new();
    for s in 0..4u64 {
        let handle = handle.clone();
        submitters.push(Spawner::spawn("submitter", async move {
            let mut ids = Vec::new();
            for b in 0..50u64 {
                let priority = Priority::new(((s + b) % 10) as u8).unwrap();
                let specs = vec![
                    TaskSpec {
                        priority,
                        ..TaskSpec::default()
                    };
                    500
                ];
                ids.extend(handle.submit_batch(specs).await.unwrap().ids());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for s in submitters {
        ids.extend(s.await.unwrap().unwrap());
    }
    handle.drain().await.unwrap();

    assert_eq!(ids.len(), 100_000);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100_000, "every accepted task has its own id");
    let counts = journal.counts().unwrap();
    assert_eq!(counts.total(), 100_000);
    assert_eq!(
        counts.terminal(),
        100_000,
        "every accepted task ended: {counts:?}"
    );
    let stats = handle.stats();
    assert_eq!(stats.succeeded + stats.dead_lettered, 100_000);
    assert_eq!(counts.succeeded, stats.succeeded);
    for id in ids.iter().step_by(997) {
        let row = journal.task(*id).unwrap().unwrap();
        assert!(row.state.is_terminal());
        assert!(row.attempt >= 1 && row.attempt <= 3);
        if row.state == TaskState::Succeeded {
            assert!(row.output.is_some());
        }
    }
    assert_eq!(
        journal.stats().fenced,
        0,
        "one lease holder per task in one process"
    );
    assert!(journal.unfinished().unwrap().is_empty());
    runtime.shutdown().await;
}
