//! The autoscaler against a real runtime on tokio's paused clock: a loaded pool grows within
//! its policies' bounds and shrinks back when idle, and a pool at zero accepts tasks and comes
//! back for them.

use super::AutoscaleOptions;
use crate::{
    Pool, Runtime, RuntimeOptions,
    events::{Event, Kinds, Subscription},
};
use colony_agents::{
    AgentSpec,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::{
    hierarchy::Tiers,
    scaling::{Policy, Reason, ScalingOptions},
    task::{TaskSpec, TaskState},
};
use colony_journal::MemoryJournal;
use std::{sync::Arc, time::Duration};

fn slow_pool(count: u32, ms: u64, scaling: ScalingOptions) -> Pool {
    let sim = Sim::new(SimOptions {
        latency: Latency::Fixed {
            value: Duration::from_millis(ms),
        },
        ..SimOptions::default()
    })
    .unwrap();
    Pool::new(AgentSpec::new("sim", "worker"), count, Arc::new(sim)).scaled(scaling)
}

async fn start(pool: Pool) -> Runtime {
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        autoscale: AutoscaleOptions {
            every: Duration::from_secs(1),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .unwrap()
}

/// A policy as the seed's, with a cooldown short enough for a test to see several steps.
fn quick(policy: Policy) -> Policy {
    Policy {
        cooldown: Duration::from_secs(2),
        ..policy
    }
}

/// Every scaling event published so far.
fn scaled(events: &mut Subscription) -> Vec<(u32, u32, Reason)> {
    std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            Event::PoolScaled {
                from, to, reason, ..
            } => Some((from, to, reason)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_loaded_pool_grows_within_its_bounds_and_shrinks_back_when_idle() {
    let scaling = ScalingOptions {
        min: 1,
        max: 5,
        reactive: quick(Policy::REACTIVE),
        predictive: None,
        cost: quick(Policy::COST),
        emergency: quick(Policy::EMERGENCY),
        overload_wait: Duration::from_secs(60),
        idle_after: Duration::from_secs(10),
        ..ScalingOptions::default()
    };
    let runtime = start(slow_pool(2, 100, scaling)).await;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    // 25 s of work for two agents: as much as admission takes at once.
    let accepted = h
        .submit_batch(vec![TaskSpec::default(); 250])
        .await
        .unwrap();
    // Looks at 1 s, 2 s, ...; steps 2 s apart at least.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    // Every slot busy and a backlog: the first step is as large as the reactive policy
    // allows (2x), the next reaches `max`.
    assert_eq!(
        scaled(&mut events),
        [
            (2, 4, Reason::HighUtilisation),
            (4, 5, Reason::HighUtilisation)
        ]
    );
    assert_eq!(h.pools()[0].1, 5);
    h.drain().await.unwrap();
    assert_eq!(h.stats().succeeded, accepted.count as u64);
    // Idle: back down, the retired agents' room kept for admission. Cost shrinking steps down
    // one agent at a time while a step may take at most 30 % of the pool (5 -> 4 -> 3, then
    // one agent would be more); idleness takes the pool to its minimum.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        scaled(&mut events),
        [
            (5, 4, Reason::LowUtilisation),
            (4, 3, Reason::LowUtilisation),
            (3, 1, Reason::Idle)
        ]
    );
    assert_eq!(h.pools()[0].1, 1);
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pool_at_zero_accepts_tasks_and_comes_back_for_them() {
    let scaling = ScalingOptions {
        min: 0,
        max: 3,
        predictive: None,
        idle_after: Duration::from_secs(5),
        ..ScalingOptions::default()
    };
    let runtime = start(slow_pool(0, 10, scaling)).await;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    assert_eq!(h.pools()[0].1, 0, "started at zero");
    let pending = h.submit_notify(TaskSpec::default()).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the pool came back within a tick or two")
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let steps = scaled(&mut events);
    assert_eq!(
        steps.first(),
        Some(&(0, 1, Reason::Activation)),
        "{steps:?}"
    );
    // Idle again: back to zero.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let steps = scaled(&mut events);
    assert_eq!(steps.last(), Some(&(1, 0, Reason::Idle)), "{steps:?}");
    assert_eq!(h.pools()[0].1, 0);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn options_out_of_range_are_refused_naming_the_field() {
    let pool = slow_pool(
        1,
        1,
        ScalingOptions {
            min: 5,
            max: 2,
            ..ScalingOptions::default()
        },
    );
    let error = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("pool 0") && error.contains("min"), "{error}");
    let options = RuntimeOptions {
        autoscale: AutoscaleOptions {
            every: Duration::ZERO,
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let pool = slow_pool(1, 1, ScalingOptions::default());
    let error = Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("autoscale every"), "{error}");
}

/// Runs every attempt for 10 ms and counts, per task, how many times it was handed one.
struct Counting(std::sync::Mutex<std::collections::HashMap<colony_core::TaskId, u32>>);

impl colony_agents::Agent for Counting {
    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        *self.0.lock().unwrap().entry(task.id).or_default() += 1;
        colony_agents::Execution::Running(Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(bytes::Bytes::from_static(b"done"))
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn a_hundred_resizes_under_load_lose_no_task_and_run_none_twice() {
    let counting = Arc::new(Counting(Default::default()));
    // Scaled, so that it accepts tasks at zero; the resizes below are the test's, the
    // autoscaler's first look comes after the test.
    let scaling = ScalingOptions {
        min: 0,
        max: 16,
        ..ScalingOptions::default()
    };
    let pool = Pool::new(AgentSpec::new("sim", "worker"), 8, counting.clone()).scaled(scaling);
    let journal = Arc::new(MemoryJournal::new());
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        span: 4,
        autoscale: AutoscaleOptions {
            every: Duration::from_secs(3600),
            horizon: Duration::from_secs(3600),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(options, vec![pool], journal.clone())
        .await
        .unwrap();
    let h = runtime.handle().clone();
    let submitter = {
        let h = h.clone();
        crate::spawner::Spawner::spawn("submitter", async move {
            let mut ids = Vec::new();
            for _ in 0..40 {
                let accepted = h.submit_batch(vec![TaskSpec::default(); 50]).await.unwrap();
                ids.extend(accepted.ids());
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            ids
        })
    };
    // Sizes from zero to sixteen and back, a step every 3 ms while tasks run.
    for step in 0..100u64 {
        let size = [0, 3, 16, 1, 8, 0, 12, 5][step as usize % 8];
        h.set_pool_size(0, size).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    h.set_pool_size(0, 8).await.unwrap();
    let ids = submitter.await.unwrap().expect("the submitter finished");
    tokio::time::timeout(Duration::from_secs(600), h.drain())
        .await
        .expect("every task ends")
        .unwrap();
    assert_eq!(ids.len(), 2_000);
    let runs = counting.0.lock().unwrap().clone();
    for id in &ids {
        let row = colony_journal::Journal::task(&*journal, *id)
            .unwrap()
            .unwrap();
        assert_eq!(row.state, TaskState::Succeeded, "{id}");
        assert_eq!(runs.get(id), Some(&1), "{id} ran once");
    }
    assert_eq!(h.stats().succeeded, 2_000);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scaled_down_stops_the_processes_of_its_retired_agents() {
    use colony_agents::process::{Process, ProcessOptions};
    // A process agent that answers with its pid.
    let mut o = ProcessOptions::new("python3");
    o.args = vec![
        "-c".into(),
        "import json, sys, os\nprint(json.dumps({'type': 'hello', 'protocol': 1}), flush=True)\nfor line in sys.stdin:\n    m = json.loads(line)\n    print(json.dumps({'type': 'result', 'id': m['id'], 'output': os.getpid()}), flush=True)\n".into(),
    ];
    let process = Arc::new(Process::new(o));
    let pool = Pool::new(AgentSpec::new("process", "worker"), 4, process.clone());
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .unwrap();
    let h = runtime.handle().clone();
    // Every agent starts its process.
    let mut pids = std::collections::HashMap::new();
    for _ in 0..40 {
        let done = h.submit_wait(TaskSpec::default()).await.unwrap();
        let pid: u32 = pid_of(&done);
        pids.insert(done.agent.unwrap(), pid);
        if pids.len() == 4 {
            break;
        }
    }
    assert_eq!((pids.len(), process.live()), (4, 4));
    h.set_pool_size(0, 1).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while process.live() > 1 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        process.live(),
        1,
        "the three retired agents' processes stopped"
    );
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let pid: u32 = pid_of(&done);
    assert_eq!(
        pids.get(&done.agent.unwrap()),
        Some(&pid),
        "the one left serves on"
    );
    runtime.shutdown().await;
}

/// The pid a process agent answered with: its output is the number.
fn pid_of(done: &crate::Completion) -> u32 {
    let output = done.output.as_ref().expect("an output");
    std::str::from_utf8(output).unwrap().trim().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_lets_go_of_the_runtime_as_soon_as_it_stops() {
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        autoscale: AutoscaleOptions {
            // A look an hour away: the stop must not wait for it.
            every: Duration::from_secs(3_600),
            horizon: Duration::from_secs(3_600),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let journal = Arc::new(MemoryJournal::new());
    let pool = slow_pool(2, 10, ScalingOptions::default());
    let runtime = Runtime::start(options, vec![pool], journal.clone())
        .await
        .unwrap();
    assert!(Arc::strong_count(&journal) > 1);
    runtime.shutdown().await;
    // The autoscaler's task ends within a few polls, in no virtual time.
    let stopped = tokio::time::Instant::now();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(stopped.elapsed(), Duration::ZERO);
    assert_eq!(
        Arc::strong_count(&journal),
        1,
        "nothing holds the runtime's state after its stop"
    );
}

#[tokio::test(start_paused = true)]
async fn untargeted_tasks_that_a_staffed_pool_serves_do_not_wake_a_pool_at_zero() {
    let scaling = ScalingOptions {
        min: 0,
        max: 3,
        predictive: None,
        idle_after: Duration::from_secs(5),
        ..ScalingOptions::default()
    };
    let sim = |ms| {
        Arc::new(
            Sim::new(SimOptions {
                latency: Latency::Fixed {
                    value: Duration::from_millis(ms),
                },
                ..SimOptions::default()
            })
            .unwrap(),
        )
    };
    let a = Pool::new(AgentSpec::new("sim", "a"), 0, sim(10)).scaled(scaling);
    let b = Pool::new(AgentSpec::new("sim", "b"), 2, sim(10));
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        autoscale: AutoscaleOptions {
            every: Duration::from_secs(1),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let journal = Arc::new(MemoryJournal::new());
    let runtime = Runtime::start(options, vec![a, b], journal.clone())
        .await
        .unwrap();
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    // Thirty seconds of untargeted tasks, 20 a second, more than a moment's queue at times.
    let mut pending = Vec::new();
    for _ in 0..30 {
        for _ in 0..20 {
            pending.push(h.submit_notify(TaskSpec::default()).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for p in pending {
        let done = p.await.unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
    }
    assert_eq!(scaled(&mut events), vec![], "pool `a` stayed at zero");
    assert_eq!(h.pools()[0].1, 0);
    // A task only `a` runs wakes it.
    let only_a = TaskSpec {
        requirement: colony_core::task::Requirement {
            role: Some("a".into()),
            ..Default::default()
        },
        ..TaskSpec::default()
    };
    let done = tokio::time::timeout(Duration::from_secs(5), h.submit_wait(only_a))
        .await
        .expect("pool `a` came back for it")
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(scaled(&mut events), vec![(0, 1, Reason::Activation)]);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_step_blocked_look_after_look_is_said_once() {
    let scaling = ScalingOptions {
        min: 2,
        max: 5,
        predictive: None,
        idle_after: Duration::from_secs(1),
        ..ScalingOptions::default()
    };
    let runtime = start(slow_pool(2, 10, scaling)).await;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    // Idle at its floor for ten looks: each wants to shrink and cannot.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let blocked = |events: &mut Subscription| {
        std::iter::from_fn(|| events.try_recv())
            .filter(|e| matches!(e, Event::ScaleBlocked { .. }))
            .count()
    };
    assert_eq!(blocked(&mut events), 1, "one event for the spell");
    // A step ends the spell: grown by hand, the idle pool steps down to its floor, and
    // the next spell at the floor is said again, once.
    h.set_pool_size(0, 3).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    let steps = after
        .iter()
        .filter(|e| matches!(e, Event::PoolScaled { from: 3, to: 2, .. }))
        .count();
    let spells = after
        .iter()
        .filter(|e| matches!(e, Event::ScaleBlocked { .. }))
        .count();
    assert_eq!((steps, spells), (1, 1), "{after:?}");
    runtime.shutdown().await;
}
