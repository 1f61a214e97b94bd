//! Cancellation: waiting tasks leave their queue, running attempts are stopped, other
//! attempts on the same agent go on, and what ended stays as it ended.

use super::Cancelled;
use crate::{
    Pool,
    dispatcher::tests::{pool, sim, slow, start, two_tiers},
};
use colony_agents::AgentSpec;
use colony_core::task::{TaskSpec, TaskState};
use colony_journal::Journal;
use std::time::Duration;

/// Longer than any wait in these tests, shorter than the default task timeout.
const LONG: u64 = 60_000;

#[tokio::test(start_paused = true)]
async fn a_waiting_task_is_cancelled_at_once_and_the_next_one_runs() {
    let (runtime, journal) = start(two_tiers(), vec![pool(1, sim(slow(100)))]).await;
    let h = runtime.handle();
    let first = h.submit_notify(TaskSpec::default()).await.unwrap();
    let second = h.submit_notify(TaskSpec::default()).await.unwrap();
    let third = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stats().queued, 2);
    assert_eq!(h.cancel(second.id).await.unwrap(), Some(Cancelled::Now));
    let done = second.await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Cancelled, 0));
    assert_eq!(first.await.unwrap().state, TaskState::Succeeded);
    assert_eq!(third.await.unwrap().state, TaskState::Succeeded);
    let row = journal.task(done.id).unwrap().unwrap();
    assert_eq!(row.state, TaskState::Cancelled);
    let stats = h.stats();
    assert_eq!((stats.cancelled, stats.succeeded, stats.queued), (1, 2, 0));
    // Ended tasks, and tasks that never were, are not cancelled again.
    assert_eq!(h.cancel(done.id).await.unwrap(), None);
    assert_eq!(h.cancel(colony_core::TaskId(999)).await.unwrap(), None);
    assert_eq!(h.stats().cancelled, 1);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_running_attempt_is_stopped_and_its_neighbour_goes_on() {
    let mut spec = AgentSpec::new("sim", "worker");
    spec.concurrency = 2;
    let slow_pool = Pool::new(spec, 1, sim(slow(LONG)));
    let (runtime, journal) = start(two_tiers(), vec![slow_pool]).await;
    let h = runtime.handle();
    let doomed = h.submit_notify(TaskSpec::default()).await.unwrap();
    let neighbour = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.stats().running, 2);
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.cancel(doomed.id).await.unwrap(),
        Some(Cancelled::Stopping)
    );
    let done = doomed.await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Cancelled, 1));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stopped, not waited for"
    );
    assert_eq!(
        journal.task(done.id).unwrap().unwrap().state,
        TaskState::Cancelled
    );
    // The other attempt on the same agent was not touched, and the agent was not restarted.
    let stats = h.stats();
    assert_eq!((stats.running, stats.restarts, stats.retries), (1, 0, 0));
    // Its freed slot takes the next task.
    let next = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.stats().running, 2);
    assert_eq!(h.cancel(next.id).await.unwrap(), Some(Cancelled::Stopping));
    assert_eq!(next.await.unwrap().state, TaskState::Cancelled);
    tokio::time::sleep(Duration::from_millis(LONG)).await;
    assert_eq!(neighbour.await.unwrap().state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_out_a_retry_is_cancelled_when_it_comes_due() {
    let failing = crate::dispatcher::tests::sim(colony_agents::sim::SimOptions {
        error_rate: 1.0,
        ..slow(10)
    });
    let (runtime, _journal) = start(two_tiers(), vec![pool(1, failing)]).await;
    let h = runtime.handle();
    let spec = TaskSpec {
        max_attempts: 100,
        ..TaskSpec::default()
    };
    let task = h.submit_notify(spec).await.unwrap();
    // The first attempt fails after 10 ms; the retry waits out its backoff (10 ms).
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(h.stats().retries, 1);
    assert_eq!(h.cancel(task.id).await.unwrap(), Some(Cancelled::Stopping));
    let done = task.await.unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    assert!(done.attempts <= 2, "no retries after the cancel: {done:?}");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_woken_for_its_neighbours_cancel_still_hears_a_kill() {
    let mut spec = AgentSpec::new("sim", "worker");
    spec.concurrency = 3;
    let slow_pool = Pool::new(spec, 2, sim(slow(LONG)));
    let (runtime, journal) = start(two_tiers(), vec![slow_pool]).await;
    let h = runtime.handle();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(h.submit_notify(TaskSpec::default()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    let agent = journal.task(ids[0]).unwrap().unwrap().agent.unwrap();
    // The three attempts share one agent (the first idle worker takes up to three).
    let on_agent: Vec<_> = ids
        .iter()
        .filter(|id| journal.task(**id).unwrap().unwrap().agent == Some(agent))
        .copied()
        .collect();
    assert!(on_agent.len() >= 2, "{on_agent:?}");
    // Cancelling one wakes every attempt on the agent; the others listen again...
    assert_eq!(
        h.cancel(on_agent[0]).await.unwrap(),
        Some(Cancelled::Stopping)
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stats().cancelled, 1);
    // ...and still hear the kill: their tasks retry on the other worker.
    h.kill(agent).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = h.stats();
    assert_eq!(stats.retries, on_agent.len() as u64 - 1, "{stats:?}");
    tokio::time::sleep(Duration::from_millis(LONG)).await;
    for t in tasks {
        let done = t.await.unwrap();
        if done.id == on_agent[0] {
            assert_eq!(done.state, TaskState::Cancelled);
        } else {
            assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
        }
    }
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_attempt_of_a_crashing_agent_leaves_the_agent_in_service() {
    // Every attempt crashes after 10 ms; the cancel comes first.
    let crashing = sim(colony_agents::sim::SimOptions {
        crash_rate: 1.0,
        ..slow(10)
    });
    let (runtime, _journal) = start(two_tiers(), vec![pool(1, crashing)]).await;
    let h = runtime.handle();
    let task = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.cancel(task.id).await.unwrap(), Some(Cancelled::Stopping));
    let done = task.await.unwrap();
    assert_eq!(done.state, TaskState::Cancelled);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Whether the crash or the cancel came first, the task did not retry, and a crash, if
    // it came, was the supervisor's to act on: the agent is in service for the next task.
    assert_eq!(h.stats().retries, 0);
    let next = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.stats().running, 1, "the agent took the next task");
    assert_eq!(h.cancel(next.id).await.unwrap(), Some(Cancelled::Stopping));
    assert_eq!(next.await.unwrap().state, TaskState::Cancelled);
    runtime.shutdown().await;
}
