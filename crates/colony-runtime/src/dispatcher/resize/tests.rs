//! Shrinking and growing a pool back: retired workers take no task, are never restarted,
//! finish what they run; the tasks they would have taken wait, and run when workers return.
//! Retired workers of a pool without an autoscaler at the tree's end leave it once idle, and
//! the pool grows back into their places.

use crate::dispatcher::tests::{pool, sim, slow, start, two_tiers};
use colony_core::{
    AgentId,
    task::{TaskSpec, TaskState},
};
use colony_journal::Journal;
use std::time::Duration;

/// The workers in the tree now, and the tree's size.
async fn workers(h: &crate::Handle) -> (Vec<AgentId>, usize) {
    h.observe(|live| {
        (
            live.tree.agents_in_tier(live.tree.worker_tier()),
            live.tree.len(),
        )
    })
    .await
    .unwrap()
}

/// The supervisor of each of `workers`.
async fn parents(h: &crate::Handle, workers: &[AgentId]) -> Vec<Option<AgentId>> {
    let workers = workers.to_vec();
    h.observe(move |live| workers.iter().map(|&w| live.tree.parent(w)).collect())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retired_workers_leave_the_tree_and_the_pool_grows_back_into_their_places() {
    let (runtime, journal) = start(two_tiers(), vec![pool(4, sim(slow(10)))]).await;
    let h = runtime.handle();
    let (before, len) = workers(h).await;
    let supervisors = parents(h, &before).await;
    assert_eq!(h.retire(0, 3).await.unwrap(), 3);
    assert_eq!(h.pools()[0].1, 1);
    // The newest three were idle at the tree's end: they are gone, not kept retired.
    let (after, len_after) = workers(h).await;
    assert_eq!(after, before[..1], "the oldest worker stays");
    assert_eq!(len_after, len - 3);
    assert_eq!(h.stats().agents, len_after as u64);
    assert_eq!(h.observe(|live| live.retired()).await.unwrap(), 0);
    let accepted = h.submit_batch(vec![TaskSpec::default(); 8]).await.unwrap();
    h.drain().await.unwrap();
    for id in accepted.ids() {
        let row = journal.task(id).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Succeeded);
        assert_eq!(row.agent, Some(before[0]), "{id} ran on the one left");
    }
    // Growing takes the places back: the same ids under the same supervisors.
    let r = h.set_pool_size(0, 4).await.unwrap();
    assert_eq!((r.agents, r.reinstated, r.spawned), (4, 0, 3));
    assert_eq!(workers(h).await, (before.clone(), len));
    assert_eq!(parents(h, &before).await, supervisors);
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
    // Their attempts over, they left the tree: growing spawns a worker in a place of theirs.
    assert_eq!(workers(h).await.0, vec![]);
    assert_eq!(h.set_pool_size(0, 1).await.unwrap().spawned, 1);
    assert_eq!(waiting.await.unwrap().state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_supervisors_restart_leaves_its_retired_workers_retired() {
    use crate::Pool;
    use colony_agents::AgentSpec;
    // Pool `a`'s newest worker retires but keeps its place: pool `b`'s worker comes after
    // it, at the tree's end.
    let a = Pool::new(AgentSpec::new("sim", "a"), 2, sim(slow(1)));
    let b = Pool::new(AgentSpec::new("sim", "b"), 1, sim(slow(1)));
    let (runtime, _journal) = start(two_tiers(), vec![a, b]).await;
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

#[tokio::test(start_paused = true)]
async fn tasks_queued_where_their_pool_retired_move_to_where_it_still_serves() {
    use crate::Pool;
    use colony_agents::AgentSpec;
    use colony_core::task::Requirement;
    // Four workers a supervisor: pool `a`'s fifth worker shares the second supervisor with
    // pool `b`'s three.
    let options = crate::RuntimeOptions {
        span: 4,
        ..two_tiers()
    };
    let a = Pool::new(AgentSpec::new("sim", "a"), 5, sim(slow(100)));
    let b = Pool::new(AgentSpec::new("sim", "b"), 3, sim(slow(100)));
    let (runtime, _journal) = start(options, vec![a, b]).await;
    let h = runtime.handle();
    let for_a = TaskSpec {
        requirement: Requirement {
            role: Some("a".into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    let accepted = h.submit_batch(vec![for_a.clone(); 12]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!((h.stats().running, h.stats().queued), (5, 7));
    // The newest worker of `a`, the one beside `b`'s, goes: the tasks queued there for `a`
    // must not wait for it.
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    tokio::time::timeout(Duration::from_secs(60), h.drain())
        .await
        .expect("no task is stranded where its pool no longer serves")
        .unwrap();
    assert_eq!(h.stats().succeeded, accepted.count as u64);
    // Tasks for `a` go only where `a` still has workers from now on.
    let done = h.submit_wait(for_a).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let retired = h
        .observe(|live| {
            let w = live.tree.agents_in_tier(live.tree.worker_tier());
            w.into_iter()
                .filter(|&x| live.is_retired(x))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert_ne!(done.agent, retired.first().copied());
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn each_pools_load_counts_its_own_tasks_and_the_age_of_its_backlog() {
    use crate::Pool;
    use colony_agents::AgentSpec;
    use colony_core::task::Requirement;
    let a = Pool::new(AgentSpec::new("sim", "a"), 2, sim(slow(100)));
    let b = Pool::new(AgentSpec::new("sim", "b"), 3, sim(slow(100)));
    let (runtime, _journal) = start(two_tiers(), vec![a, b]).await;
    let h = runtime.handle();
    let for_role = |role: &str| TaskSpec {
        requirement: Requirement {
            role: Some(role.into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    h.submit_batch(vec![for_role("a"); 5]).await.unwrap();
    h.submit_batch(vec![for_role("b"); 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let [a, b] = h.pool_loads()[..] else {
        panic!("two pools")
    };
    assert_eq!((a.agents, a.capacity, a.busy, a.waiting), (2, 2, 2, 3));
    assert_eq!((a.arrivals, a.ended), (5, 0));
    assert!(
        a.waiting_for >= Duration::from_millis(29),
        "waiting since the first turn: {:?}",
        a.waiting_for
    );
    assert_eq!((b.agents, b.busy, b.waiting, b.arrivals), (3, 1, 0, 1));
    assert_eq!(b.waiting_for, Duration::ZERO, "nothing of b's waits");
    h.drain().await.unwrap();
    let [a, b] = h.pool_loads()[..] else {
        panic!("two pools")
    };
    assert_eq!(
        (a.busy, a.waiting, a.ended, a.waiting_for),
        (0, 0, 5, Duration::ZERO)
    );
    assert_eq!((b.busy, b.ended), (0, 1));
    // Five attempts of 100 ms on `a`'s agents, one on `b`'s.
    assert_eq!(
        (a.busy_time, b.busy_time),
        (Duration::from_millis(500), Duration::from_millis(100))
    );
    // A pool resized to a size: surplus retired, then retired ones back before new ones.
    // `a`'s newest retires before `b`'s workers and keeps its place; `b`'s two newest were at
    // the tree's end and left it.
    let r = h.set_pool_size(0, 1).await.unwrap();
    assert_eq!((r.agents, r.retired), (1, 1));
    let r = h.set_pool_size(1, 1).await.unwrap();
    assert_eq!((r.agents, r.retired), (1, 2));
    let r = h.set_pool_size(0, 2).await.unwrap();
    assert_eq!((r.agents, r.reinstated, r.spawned), (2, 1, 0));
    let r = h.set_pool_size(1, 5).await.unwrap();
    assert_eq!((r.agents, r.reinstated, r.spawned), (5, 0, 4));
    assert_eq!(h.pool_loads()[1].capacity, 5);
    assert!(h.set_pool_size(2, 1).await.is_err(), "no pool 2");
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_resizes_at_once_each_reach_the_size_they_asked_for() {
    let (runtime, _journal) = start(two_tiers(), vec![pool(4, sim(slow(10)))]).await;
    let h = runtime.handle();
    // Both read 4 agents; each must still land on 6, not add 2 twice.
    let (a, b) = tokio::join!(h.set_pool_size(0, 6), h.set_pool_size(0, 6));
    assert_eq!((a.unwrap().agents, b.unwrap().agents), (6, 6));
    assert_eq!(h.pools()[0].1, 6);
    let (a, b) = tokio::join!(h.set_pool_size(0, 2), h.set_pool_size(0, 5));
    assert_eq!(
        (a.unwrap().agents, b.unwrap().agents),
        (2, 5),
        "the later one last"
    );
    assert_eq!(h.pools()[0].1, 5);
    runtime.shutdown().await;
}

/// An agent whose first attempt at each task never answers; later attempts succeed at once.
struct HangsFirstTime;

impl colony_agents::Agent for HangsFirstTime {
    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        if task.attempt == 1 {
            return colony_agents::Execution::Running(Box::pin(std::future::pending()));
        }
        colony_agents::Execution::Done(Ok(bytes::Bytes::from_static(b"done")))
    }
}

fn hangs_first_time() -> std::sync::Arc<dyn colony_agents::Agent> {
    std::sync::Arc::new(HangsFirstTime)
}

/// Retires the only worker of a one-worker pool while it runs a task that hangs; returns
/// the worker and the task's completion.
async fn retired_while_hanging(h: &crate::Handle) -> (AgentId, crate::handle::Pending) {
    let spec = TaskSpec {
        // Far off: only the health sweep or a kill can end the attempt.
        timeout: Duration::from_secs(3_600),
        ..TaskSpec::default()
    };
    let done = h.submit_notify(spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stats().running, 1);
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    let worker = h
        .observe(|live| {
            live.tree
                .agents_in_tier(live.tree.worker_tier())
                .into_iter()
                .find(|&w| live.is_retired(w))
        })
        .await
        .unwrap()
        .unwrap();
    (worker, done)
}

/// Once the pool grows back, the task runs again and succeeds; the worker was never
/// restarted by its supervisor in between.
async fn the_task_runs_again_once_the_pool_grows(
    h: &crate::Handle,
    worker: AgentId,
    done: crate::handle::Pending,
) {
    assert_eq!(h.stats().running, 0, "its attempt was stopped");
    assert_eq!(h.stats().restarts, 0, "nothing restarts a retired worker");
    let row = h.journal().task(done.id).unwrap().unwrap();
    assert!(
        !row.state.is_terminal(),
        "the task waits for a worker: {row:?}"
    );
    // Its attempt over, it left the tree; the pool grows back into its place.
    assert!(!workers(h).await.0.contains(&worker));
    assert_eq!(h.set_pool_size(0, 1).await.unwrap().spawned, 1);
    assert_eq!(workers(h).await.0, vec![worker]);
    let done = done.await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_retired_worker_that_hangs_is_found_and_its_task_runs_elsewhere() {
    let pools = vec![crate::Pool::new(
        colony_agents::AgentSpec::new("sim", "worker"),
        1,
        hangs_first_time(),
    )];
    let (runtime, _journal) = start(two_tiers(), pools).await;
    let h = runtime.handle();
    let (worker, done) = retired_while_hanging(h).await;
    // The sweep finds it silent (failed-after 10 s, 1 s sweeps) as it would in service.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(h.stats().health_failures, 1);
    the_task_runs_again_once_the_pool_grows(h, worker, done).await;
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn killing_a_retired_busy_worker_stops_its_attempts() {
    let pools = vec![crate::Pool::new(
        colony_agents::AgentSpec::new("sim", "worker"),
        1,
        hangs_first_time(),
    )];
    let (runtime, _journal) = start(two_tiers(), pools).await;
    let h = runtime.handle();
    let (worker, done) = retired_while_hanging(h).await;
    h.kill(worker).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    the_task_runs_again_once_the_pool_grows(h, worker, done).await;
    runtime.shutdown().await;
}

/// Tasks admitted one by one until admission says the runtime is full.
async fn admitted_until_full(h: &crate::Handle) -> usize {
    let mut n = 0;
    loop {
        match h.try_submit(TaskSpec::default()).await {
            Ok(_) => n += 1,
            Err(crate::Error::Full { .. }) => return n,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pool_shrunk_by_hand_gives_its_admission_room_back_and_grows_it_again() {
    let options = crate::RuntimeOptions {
        queue_capacity: 8,
        ..two_tiers()
    };
    let (runtime, journal) = start(options, vec![pool(4, sim(slow(1_000)))]).await;
    let h = runtime.handle();
    // Four workers running one task each, and the supervisor's queue of eight.
    assert_eq!(admitted_until_full(h).await, 12);
    // Three busy workers retire with every permit taken: the room leaves as tasks end.
    assert_eq!(h.retire(0, 3).await.unwrap(), 3);
    h.drain().await.unwrap();
    assert_eq!(admitted_until_full(h).await, 9, "one worker and the queue");
    h.drain().await.unwrap();
    // Every worker of the supervisor retired: its queue's room leaves too.
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    let refused = h.try_submit(TaskSpec::default()).await;
    assert!(
        matches!(refused, Err(crate::Error::NoAgentFor { .. })),
        "{refused:?}"
    );
    assert_eq!(h.set_pool_size(0, 4).await.unwrap().agents, 4);
    assert_eq!(admitted_until_full(h).await, 12, "all the room is back");
    h.drain().await.unwrap();
    let counts = journal.counts().unwrap();
    assert_eq!(counts.succeeded, 12 + 9 + 12, "every admitted task ran");
    runtime.shutdown().await;
}
