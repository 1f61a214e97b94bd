//! Supervision as the runtime carries it out: paused clock, seeded agents, real engines.

use super::super::tests::{pool, sim, slow, start, two_tiers};
use crate::{
    Handle, RuntimeOptions,
    events::{Event, Kinds, Subscription},
};
use colony_core::{
    AgentId,
    hierarchy::Tiers,
    supervision::{RestartPolicy, Strategy, SupervisorOptions},
    task::{TaskSpec, TaskState},
    tree::LiveTree,
};
use colony_journal::Journal;
use std::{collections::BTreeSet, time::Duration};

fn supervised(strategy: Strategy, restart: RestartPolicy) -> RuntimeOptions {
    RuntimeOptions {
        supervision: SupervisorOptions {
            strategy,
            restart,
            jitter: 0.0,
            ..SupervisorOptions::default()
        },
        ..two_tiers()
    }
}

/// A coordinator over supervisors of two workers each.
fn three_tiers() -> RuntimeOptions {
    RuntimeOptions {
        span: 2,
        tiers: Tiers::Named(vec![
            "coordinator".into(),
            "supervisor".into(),
            "worker".into(),
        ]),
        ..RuntimeOptions::default()
    }
}

/// The children of `agent`.
async fn children(h: &Handle, agent: AgentId) -> Vec<AgentId> {
    h.inspect(move |t: &LiveTree| t.children(agent).collect())
        .await
        .unwrap()
}

async fn is_down(h: &Handle, agent: AgentId) -> bool {
    h.inspect(move |t: &LiveTree| t.is_down(agent))
        .await
        .unwrap()
}

async fn all_down(h: &Handle) -> bool {
    h.inspect(|t: &LiveTree| (0..t.len() as u32).all(|i| t.is_down(AgentId(i))))
        .await
        .unwrap()
}

/// Agents restarted among the events received so far.
fn restarted(events: &mut Subscription) -> BTreeSet<AgentId> {
    std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            Event::AgentRestarted { agent, .. } => Some(agent),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_strategy_restarts_the_children_it_names() {
    for (strategy, expected) in [
        (Strategy::OneForOne, vec![1]),
        (Strategy::OneForAll, vec![0, 1, 2, 3]),
        (Strategy::RestForOne, vec![1, 2, 3]),
    ] {
        let options = supervised(strategy, RestartPolicy::Permanent);
        let (runtime, _) = start(options, vec![pool(4, sim(slow(1)))]).await;
        let h = runtime.handle();
        let mut events = h.subscribe(Kinds::AGENTS);
        let workers = children(h, AgentId(0)).await;
        h.kill(workers[1]).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let expected: BTreeSet<AgentId> = expected.iter().map(|&i| workers[i]).collect();
        assert_eq!(restarted(&mut events), expected, "{strategy:?}");
        assert_eq!(h.stats().restarts, expected.len() as u64);
        runtime.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_for_all_retries_the_siblings_tasks_without_blaming_them() {
    let options = supervised(Strategy::OneForAll, RestartPolicy::Permanent);
    let (runtime, journal) = start(options, vec![pool(3, sim(slow(100)))]).await;
    let h = runtime.handle();
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(h.submit_notify(TaskSpec::default()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let victim = journal.task(pending[0].id).unwrap().unwrap().agent.unwrap();
    h.kill(victim).unwrap();
    for p in pending {
        let done = p.await.unwrap();
        // Each task's first attempt was stopped with its agent: one retry, no fault counted,
        // so nothing comes near poison quarantine.
        assert_eq!((done.state, done.attempts), (TaskState::Succeeded, 2));
    }
    assert_eq!(h.stats().restarts, 3);
    assert_eq!(h.stats().quarantined, 0);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn temporary_children_stay_down_and_work_goes_to_the_others() {
    let options = supervised(Strategy::OneForOne, RestartPolicy::Temporary);
    let (runtime, journal) = start(options, vec![pool(2, sim(slow(1)))]).await;
    let h = runtime.handle();
    let workers = children(h, AgentId(0)).await;
    h.kill(workers[0]).unwrap();
    for _ in 0..10 {
        let done = h.submit_wait(TaskSpec::default()).await.unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
        assert_eq!(done.agent, Some(workers[1]));
    }
    assert_eq!(h.stats().restarts, 0);
    assert!(is_down(h, workers[0]).await);
    assert_eq!(journal.counts().unwrap().succeeded, 10);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restarts_back_off_within_a_burst() {
    let (runtime, _) = start(
        supervised(Strategy::OneForOne, RestartPolicy::Permanent),
        vec![pool(2, sim(slow(1)))],
    )
    .await;
    let h = runtime.handle();
    let worker = children(h, AgentId(0)).await[0];
    h.kill(worker).unwrap();
    tokio::time::sleep(Duration::from_micros(1)).await;
    assert!(!is_down(h, worker).await, "the first restart is immediate");
    h.kill(worker).unwrap();
    tokio::time::sleep(Duration::from_millis(9)).await;
    assert!(is_down(h, worker).await, "the second waits 10 ms");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(!is_down(h, worker).await);
    h.kill(worker).unwrap();
    tokio::time::sleep(Duration::from_millis(19)).await;
    assert!(is_down(h, worker).await, "the third waits 20 ms");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(!is_down(h, worker).await);
    assert_eq!(h.stats().restarts, 3);
    assert_eq!(h.stats().escalations, 0);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn exceeding_intensity_escalates_once_and_moves_the_queue_to_a_sibling() {
    // A coordinator over two supervisors of two workers each; every worker is busy for a
    // second and each supervisor has tasks queued.
    let options = RuntimeOptions {
        supervision: SupervisorOptions {
            jitter: 0.0,
            ..SupervisorOptions::default()
        },
        ..three_tiers()
    };
    let (runtime, journal) = start(options, vec![pool(4, sim(slow(1_000)))]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::AGENTS.union(Kinds::TASKS));
    let (a, b) = h
        .inspect(|t: &LiveTree| {
            let sups = t.agents_in_tier(1);
            (sups[0], sups[1])
        })
        .await
        .unwrap();
    let (a_workers, b_workers) = (children(h, a).await, children(h, b).await);
    let accepted = h.submit_batch(vec![TaskSpec::default(); 12]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Four exits within 5 s: three restarts, then the fourth exceeds the intensity.
    for _ in 0..4 {
        h.kill(a_workers[0]).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut queued_at_a = BTreeSet::new();
    let mut escalated = Vec::new();
    let mut moved_to_b = 0;
    for event in std::iter::from_fn(|| events.try_recv()) {
        match event {
            Event::TaskQueued { task, supervisor } if supervisor == a => {
                queued_at_a.insert(task);
            }
            Event::SupervisorEscalated { supervisor, .. } => escalated.push(supervisor),
            Event::TaskStarted { task, agent, .. }
                if queued_at_a.contains(&task) && b_workers.contains(&agent) =>
            {
                moved_to_b += 1;
            }
            _ => {}
        }
    }
    assert_eq!(escalated, [Some(a)], "escalated exactly once");
    assert_eq!(h.stats().escalations, 1);
    assert!(!queued_at_a.is_empty());
    h.drain().await.unwrap();
    for event in std::iter::from_fn(|| events.try_recv()) {
        if let Event::TaskStarted { task, agent, .. } = event
            && queued_at_a.contains(&task)
            && b_workers.contains(&agent)
        {
            moved_to_b += 1;
        }
    }
    assert!(
        moved_to_b > 0,
        "tasks queued at the supervisor that gave up ran under its sibling"
    );
    for id in accepted.ids() {
        assert_eq!(
            journal.task(id).unwrap().unwrap().state,
            TaskState::Succeeded
        );
    }
    // The coordinator restarted the supervisor that gave up, with its workers.
    let down = h
        .inspect(move |t: &LiveTree| t.is_down(a) || t.children(a).any(|w| t.is_down(w)))
        .await
        .unwrap();
    assert!(!down);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_top_tier_escalating_restarts_everything_after_the_longest_backoff() {
    let options = RuntimeOptions {
        supervision: SupervisorOptions {
            max_restarts: 1,
            jitter: 0.0,
            ..SupervisorOptions::default()
        },
        ..two_tiers()
    };
    let (runtime, _) = start(options, vec![pool(2, sim(slow(1)))]).await;
    let h = runtime.handle();
    // The supervisor is a root: the runtime itself supervises it. One restart is allowed;
    // the second kill exceeds that.
    h.kill(AgentId(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    h.kill(AgentId(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stats().escalations, 1);
    assert!(all_down(h).await);
    // Nothing is lost meanwhile: a task waits for the restart.
    let pending = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(pending.await.unwrap().state, TaskState::Succeeded);
    assert!(!all_down(h).await);
    runtime.shutdown().await;
}

#[tokio::test]
async fn bad_supervision_and_health_settings_are_refused_with_the_field_named() {
    let refuse = |options: RuntimeOptions| async move {
        let journal = std::sync::Arc::new(colony_journal::MemoryJournal::new());
        crate::Runtime::start(options, vec![pool(1, sim(slow(1)))], journal)
            .await
            .unwrap_err()
            .to_string()
    };
    let zero = RuntimeOptions {
        supervision: SupervisorOptions {
            max_restarts: 0,
            period: Duration::ZERO,
            ..SupervisorOptions::default()
        },
        ..RuntimeOptions::default()
    };
    assert!(refuse(zero).await.contains("supervision period 0ns"));
    let mut slow_beat = RuntimeOptions::default();
    slow_beat.health.heartbeat = Duration::from_secs(60);
    assert!(refuse(slow_beat).await.contains("health heartbeat 60s"));
    let mut tolerance = RuntimeOptions::default();
    tolerance.rebalance.tolerance = 1.5;
    assert!(refuse(tolerance).await.contains("tolerance"));
}

// Regressions found in review.

#[tokio::test(start_paused = true)]
async fn spawning_while_agents_are_down_keeps_the_permits_right() {
    let (runtime, _) = start(
        supervised(Strategy::OneForOne, RestartPolicy::Permanent),
        vec![pool(2, sim(slow(1)))],
    )
    .await;
    let h = runtime.handle();
    h.kill(AgentId(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    h.kill(AgentId(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        all_down(h).await,
        "the second restart waits out its backoff"
    );
    let before = h.stats().capacity;
    h.spawn(0, 1, crate::SpawnMode::Batch).await.unwrap();
    assert_eq!(h.stats().capacity, before + 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let done = h.submit_batch(vec![TaskSpec::default(); 3]).await.unwrap();
    assert_eq!(done.count, 3);
    h.drain().await.unwrap();
    assert_eq!(h.stats().succeeded, 3);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn killing_a_manager_before_any_worker_exists_is_harmless() {
    let (runtime, _) = start(two_tiers(), vec![pool(0, sim(slow(1)))]).await;
    let h = runtime.handle();
    h.kill(AgentId(0)).unwrap();
    h.spawn(0, 2, crate::SpawnMode::Batch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_whose_workers_are_all_gone_hands_its_tasks_to_a_sibling() {
    let options = RuntimeOptions {
        supervision: SupervisorOptions {
            restart: RestartPolicy::Temporary,
            ..SupervisorOptions::default()
        },
        ..three_tiers()
    };
    let (runtime, _) = start(options, vec![pool(4, sim(slow(10)))]).await;
    let h = runtime.handle();
    let a = h
        .inspect(|t: &LiveTree| t.agents_in_tier(1)[0])
        .await
        .unwrap();
    // Tasks queued at A first, then both of its workers die for good.
    h.submit_batch(vec![TaskSpec::default(); 8]).await.unwrap();
    for w in children(h, a).await {
        h.kill(w).unwrap();
    }
    for _ in 0..20 {
        let done =
            tokio::time::timeout(Duration::from_secs(600), h.submit_wait(TaskSpec::default()))
                .await
                .expect("no task is stuck at the supervisor with no workers");
        assert_eq!(done.unwrap().state, TaskState::Succeeded);
    }
    h.drain().await.unwrap();
    assert_eq!(h.stats().succeeded, 28);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_sweep_fails_each_silent_incarnation_once() {
    use colony_agents::sim::SimOptions;
    let options = supervised(Strategy::OneForAll, RestartPolicy::Permanent);
    let hung = sim(SimOptions {
        hang_rate: 1.0,
        ..SimOptions::default()
    });
    let (runtime, _) = start(options, vec![pool(2, hung)]).await;
    let h = runtime.handle();
    let spec = TaskSpec {
        timeout: Duration::from_secs(600),
        max_attempts: 1,
        ..TaskSpec::default()
    };
    let (a, b) = (
        h.submit_notify(spec.clone()).await.unwrap(),
        h.submit_notify(spec).await.unwrap(),
    );
    a.await.unwrap();
    b.await.unwrap();
    // The first failure restarts both (one-for-all); the second worker's new incarnation
    // is not the silent one, so the same sweep leaves it alone.
    assert_eq!(h.stats().health_failures, 1);
    assert_eq!(h.stats().restarts, 2);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_started_after_a_quiet_spell_is_not_taken_for_silent() {
    let mut options = two_tiers();
    options.health.heartbeat = Duration::from_secs(10);
    options.rebalance.every = Duration::ZERO;
    let (runtime, _) = start(options, vec![pool(1, sim(slow(5_000)))]).await;
    let h = runtime.handle();
    let t0 = tokio::time::Instant::now();
    h.submit_wait(TaskSpec::default()).await.unwrap();
    tokio::time::sleep_until(t0 + Duration::from_millis(19_900)).await;
    h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(h.stats().health_failures, 0);
    runtime.shutdown().await;
}

/// Kills the first worker of the first supervisor four times within a second; returns the
/// escalations counted.
async fn four_quick_exits(options: RuntimeOptions) -> u64 {
    let (runtime, _) = start(options, vec![pool(4, sim(slow(10)))]).await;
    let h = runtime.handle();
    let supervisor = h
        .inspect(|t: &LiveTree| t.agents_in_tier(1)[0])
        .await
        .unwrap();
    let worker = children(h, supervisor).await[0];
    for _ in 0..4 {
        h.kill(worker).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let escalations = h.stats().escalations;
    runtime.shutdown().await;
    escalations
}

#[tokio::test(start_paused = true)]
async fn a_tier_of_its_own_supervises_with_its_own_intensity() {
    let quiet = SupervisorOptions {
        jitter: 0.0,
        ..SupervisorOptions::default()
    };
    // Everyone's intensity (3 in 5 s): the fourth exit escalates.
    let everyone = RuntimeOptions {
        supervision: quiet,
        ..three_tiers()
    };
    assert_eq!(four_quick_exits(everyone.clone()).await, 1);
    // The supervisor tier allows ten: no escalation. The coordinators' tier is untouched.
    let mut patient = everyone.clone();
    patient.supervision_tiers.insert(
        "supervisor".into(),
        colony_core::supervision::SupervisorOverrides {
            max_restarts: Some(10),
            ..Default::default()
        },
    );
    assert_eq!(four_quick_exits(patient).await, 0);
    // Overrides on the coordinators' tier change nothing for the workers' supervisors.
    let mut elsewhere = everyone;
    elsewhere.supervision_tiers.insert(
        "coordinator".into(),
        colony_core::supervision::SupervisorOverrides {
            max_restarts: Some(10),
            ..Default::default()
        },
    );
    assert_eq!(four_quick_exits(elsewhere).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tier_override_must_name_a_managing_tier_and_stay_in_range() {
    let mut options = three_tiers();
    options.supervision_tiers.insert(
        "worker".into(),
        colony_core::supervision::SupervisorOverrides::default(),
    );
    let error = crate::Runtime::start(
        options,
        vec![pool(4, sim(slow(10)))],
        std::sync::Arc::new(colony_journal::MemoryJournal::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("tier `worker`") && error.contains("coordinator, supervisor"),
        "{error}"
    );
    let mut options = three_tiers();
    options.supervision_tiers.insert(
        "supervisor".into(),
        colony_core::supervision::SupervisorOverrides {
            max_restarts: Some(0),
            ..Default::default()
        },
    );
    let error = crate::Runtime::start(
        options,
        vec![pool(4, sim(slow(10)))],
        std::sync::Arc::new(colony_journal::MemoryJournal::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("tier `supervisor`") && error.contains("max-restarts 0"),
        "{error}"
    );
}
