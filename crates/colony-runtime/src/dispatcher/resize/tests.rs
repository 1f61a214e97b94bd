//! Shrinking and growing a pool back: retired workers take no task, are never restarted,
//! finish what they run; the tasks they would have taken wait, and run when workers return.

use crate::dispatcher::tests::{pool, sim, slow, start, two_tiers};
use colony_core::{
    AgentId,
    task::{TaskSpec, TaskState},
};
use colony_journal::Journal;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn retired_workers_take_no_task_and_come_back_when_the_pool_grows() {
    let (runtime, journal) = start(two_tiers(), vec![pool(4, sim(slow(10)))]).await;
    let h = runtime.handle();
    assert_eq!(h.retire(0, 3).await.unwrap(), 3);
    assert_eq!(h.pools()[0].1, 1);
    let retired: Vec<AgentId> = h
        .observe(|live| {
            live.tree
                .agents_in_tier(live.tree.worker_tier())
                .into_iter()
                .filter(|&w| live.is_retired(w))
                .collect()
        })
        .await
        .unwrap();
    assert_eq!(retired.len(), 3);
    // The oldest worker is the one left: the newest idle ones went first.
    let accepted = h.submit_batch(vec![TaskSpec::default(); 8]).await.unwrap();
    h.drain().await.unwrap();
    for id in accepted.ids() {
        let row = journal.task(id).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Succeeded);
        assert!(
            !retired.contains(&row.agent.unwrap()),
            "{id} ran on a retired worker"
        );
    }
    // The hierarchy says so: out of service for good, not down awaiting a restart.
    let (down, gone) = h
        .observe(|live| (live.down(live.tree.worker_tier()), live.retired()))
        .await
        .unwrap();
    assert_eq!((down, gone), (0, 3));
    assert_eq!(
        h.reinstate(0, 5).await.unwrap(),
        3,
        "only three were retired"
    );
    assert_eq!(h.pools()[0].1, 4);
    let accepted = h.submit_batch(vec![TaskSpec::default(); 8]).await.unwrap();
    h.drain().await.unwrap();
    let used: std::collections::HashSet<AgentId> = accepted
        .ids()
        .map(|id| journal.task(id).unwrap().unwrap().agent.unwrap())
        .collect();
    assert_eq!(used.len(), 4, "all four workers serve again");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn busy_workers_retire_after_their_attempts_and_queued_tasks_wait() {
    let (runtime, _journal) = start(two_tiers(), vec![pool(2, sim(slow(100)))]).await;
    let h = runtime.handle();
    let running = [
        h.submit_notify(TaskSpec::default()).await.unwrap(),
        h.submit_notify(TaskSpec::default()).await.unwrap(),
    ];
    let waiting = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!((h.stats().running, h.stats().queued), (2, 1));
    assert_eq!(h.retire(0, 2).await.unwrap(), 2);
    // No pool has agents for a new task now: it is refused, not lost.
    assert!(h.try_submit(TaskSpec::default()).await.is_err());
    for r in running {
        assert_eq!(
            r.await.unwrap().state,
            TaskState::Succeeded,
            "finished where it ran"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (h.stats().running, h.stats().queued),
        (0, 1),
        "the queued one waits"
    );
    assert_eq!(h.reinstate(0, 1).await.unwrap(), 1);
    assert_eq!(waiting.await.unwrap().state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_supervisors_restart_leaves_its_retired_workers_retired() {
    let (runtime, _journal) = start(two_tiers(), vec![pool(3, sim(slow(1)))]).await;
    let h = runtime.handle();
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    let supervisor = h
        .inspect(|t| t.agents_in_tier(t.worker_tier() - 1)[0])
        .await
        .unwrap();
    h.kill(supervisor).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.stats().restarts >= 3, "{:?}", h.stats());
    let (down, retired, serving) = h
        .observe(|live| {
            let workers = live.tree.agents_in_tier(live.tree.worker_tier());
            let serving = workers.iter().filter(|&&w| !live.tree.is_down(w)).count();
            (live.down(live.tree.worker_tier()), live.retired(), serving)
        })
        .await
        .unwrap();
    assert_eq!((down, retired, serving), (0, 1, 2));
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    runtime.shutdown().await;
}
