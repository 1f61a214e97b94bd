//! Health as the runtime watches it: paused clock, seeded agents, real sweeps.

use super::super::tests::{pool, sim, slow, start, two_tiers};
use crate::{
    Pool,
    events::{Event, Kinds},
};
use colony_agents::{Agent, AgentSpec, Execution, Task, sim::SimOptions};
use colony_core::{
    health::HealthState,
    task::{TaskSpec, TaskState},
};
use colony_journal::Journal;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_failed_within_failed_after_plus_one_sweep() {
    let hung = sim(SimOptions {
        hang_rate: 1.0,
        ..SimOptions::default()
    });
    let (runtime, journal) = start(two_tiers(), vec![pool(2, hung)]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::HEALTH);
    // The task's own timeout is far off: only the health sweep can notice.
    let spec = TaskSpec {
        timeout: Duration::from_secs(600),
        max_attempts: 1,
        ..TaskSpec::default()
    };
    let submitted = tokio::time::Instant::now();
    let done = h.submit_wait(spec).await.unwrap();
    let took = submitted.elapsed();
    assert_eq!(done.state, TaskState::DeadLettered);
    let error = done.error.unwrap();
    assert!(error.contains("no answer or heartbeat for 10"), "{error}");
    assert!(
        took >= Duration::from_secs(10) && took <= Duration::from_secs(11),
        "detected after {took:?}: failed-after 10 s plus at most one 1 s sweep"
    );
    assert_eq!(h.stats().health_failures, 1);
    let detection = h.timings().hang_detection;
    assert_eq!(detection.len(), 1);
    assert!(detection[0] >= Duration::from_secs(10) && detection[0] <= Duration::from_secs(11));
    let changes: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    assert!(
        changes.iter().any(|e| matches!(
            e,
            Event::HealthChanged {
                to: HealthState::Failed,
                ..
            }
        )),
        "{changes:?}"
    );
    assert_eq!(journal.counts().unwrap().dead_lettered, 1);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_long_task_that_beats_is_left_alone_and_slow_answers_degrade() {
    // 30 s tasks: three times failed-after, but the agent beats every second.
    let (runtime, _) = start(two_tiers(), vec![pool(1, sim(slow(30_000)))]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::HEALTH);
    let spec = TaskSpec {
        timeout: Duration::from_secs(120),
        ..TaskSpec::default()
    };
    let done = h.submit_wait(spec).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Succeeded, 1));
    assert_eq!(h.stats().health_failures, 0);
    // A 30 s answer is far above critical-after (5 s): the agent's breaker opens.
    let changes: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    let agent = done.agent.unwrap();
    assert_eq!(
        changes,
        [
            Event::HealthChanged {
                agent,
                from: HealthState::Healthy,
                to: HealthState::Critical,
            },
            Event::AgentSidelined {
                agent,
                reason: colony_core::breaker::OpenReason::Critical
            }
        ]
    );
    runtime.shutdown().await;
}

/// Answers after whatever latency the test last set.
struct Adjustable(Arc<AtomicU64>);

impl Agent for Adjustable {
    fn handle(&self, task: Task) -> Execution {
        let ms = self.0.load(Relaxed);
        Execution::Running(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(task.payload)
        }))
    }
}

/// [`Adjustable`], and keeps the agents the runtime said were alerted.
struct Alerted(Adjustable, std::sync::Mutex<Vec<colony_core::AgentId>>);

impl Agent for Alerted {
    fn handle(&self, task: Task) -> Execution {
        self.0.handle(task)
    }

    fn alerted(&self, agent: colony_core::AgentId) {
        self.1.lock().unwrap().push(agent);
    }
}

#[tokio::test(start_paused = true)]
async fn rising_response_times_raise_one_predictive_alert_and_tell_the_backend() {
    let latency = Arc::new(AtomicU64::new(10));
    let backend = Arc::new(Alerted(Adjustable(latency.clone()), Default::default()));
    let agent = Pool::new(AgentSpec::new("sim", "worker"), 1, backend.clone());
    let (runtime, _) = start(two_tiers(), vec![agent]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::HEALTH);
    for _ in 0..100 {
        h.submit_wait(TaskSpec::default()).await.unwrap();
    }
    assert_eq!(events.try_recv(), None, "a steady agent raises nothing");
    latency.store(30, Relaxed);
    for _ in 0..20 {
        h.submit_wait(TaskSpec::default()).await.unwrap();
    }
    let alerts: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    assert!(
        matches!(
            alerts.as_slice(),
            [Event::HealthAlert { average, baseline, .. }]
                if *average >= baseline.mul_f64(1.5)
        ),
        "one alert when the average rises 50 % over the baseline: {alerts:?}"
    );
    let Event::HealthAlert { agent, .. } = alerts[0] else {
        unreachable!()
    };
    assert_eq!(
        *backend.1.lock().unwrap(),
        vec![agent],
        "the backend heard, once"
    );
    runtime.shutdown().await;
}

/// Fails every attempt on the agents in `bad`; answers the others after 10 ms.
struct FailsOn(std::sync::Mutex<Vec<colony_core::AgentId>>);

impl Agent for FailsOn {
    fn handle(&self, task: Task) -> Execution {
        let bad = self.0.lock().unwrap().contains(&task.agent);
        Execution::Running(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if bad {
                Err(colony_agents::Error::retryable("this agent is broken"))
            } else {
                Ok(task.payload)
            }
        }))
    }
}

/// Makes the first worker fail every attempt from now on; returns it.
async fn break_first_worker(h: &crate::Handle, agent: &FailsOn) -> colony_core::AgentId {
    let bad = h
        .inspect(|t| t.agents_in_tier(t.worker_tier())[0])
        .await
        .unwrap();
    agent.0.lock().unwrap().push(bad);
    bad
}

async fn failing_pool(options: crate::RuntimeOptions) -> (crate::Runtime, Arc<FailsOn>) {
    let agent = Arc::new(FailsOn(Default::default()));
    let pool = Pool::new(AgentSpec::new("sim", "worker"), 4, agent.clone());
    let (runtime, _) = start(options, vec![pool]).await;
    (runtime, agent)
}

#[tokio::test(start_paused = true)]
async fn a_failing_agent_is_sidelined_put_on_probation_and_readmitted_once_it_recovers() {
    let (runtime, agent) = failing_pool(two_tiers()).await;
    let h = runtime.handle();
    let bad = break_first_worker(h, &agent).await;
    let mut events = h.subscribe(Kinds::HEALTH);
    // Enough tasks that the broken agent fails several and its error rate passes 50 %.
    for _ in 0..40 {
        let done = h.submit_wait(TaskSpec::default()).await.unwrap();
        assert_eq!(done.state, TaskState::Succeeded, "a retry went elsewhere");
    }
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    assert!(
        seen.contains(&Event::AgentSidelined {
            agent: bad,
            reason: colony_core::breaker::OpenReason::ErrorRate
        }),
        "{seen:?}"
    );
    assert_eq!(h.stats().sidelined, 1);
    let breaker = h.observe(move |l| l.breaker(bad)).await.unwrap();
    assert_eq!(breaker, colony_core::breaker::BreakerState::Open);
    // While it is out, every task runs elsewhere.
    for _ in 0..20 {
        let done = h.submit_wait(TaskSpec::default()).await.unwrap();
        assert_ne!(done.agent, Some(bad));
        assert_eq!(done.attempts, 1);
    }
    // It recovers; after its open time a sweep puts it on probation, and three good answers
    // readmit it.
    agent.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
    assert!(
        seen.contains(&Event::AgentOnProbation { agent: bad }),
        "{seen:?}"
    );
    // Busy siblings leave the tasks to it: four at once, one each.
    let mut readmitted = false;
    for _ in 0..20 {
        let batch: Vec<_> =
            futures::future::join_all((0..4).map(|_| h.submit_wait(TaskSpec::default()))).await;
        assert!(
            batch
                .iter()
                .all(|d| d.as_ref().unwrap().state == TaskState::Succeeded)
        );
        let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv()).collect();
        if seen.contains(&Event::AgentReadmitted { agent: bad }) {
            readmitted = true;
            break;
        }
    }
    assert!(
        readmitted,
        "three good answers on probation close the breaker"
    );
    let breaker = h.observe(move |l| l.breaker(bad)).await.unwrap();
    assert_eq!(breaker, colony_core::breaker::BreakerState::Closed);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_breaker_health_only_observes() {
    let options = crate::RuntimeOptions {
        breaker: None,
        ..two_tiers()
    };
    let (runtime, agent) = failing_pool(options).await;
    let h = runtime.handle();
    break_first_worker(h, &agent).await;
    let mut tried_bad = 0;
    for _ in 0..60 {
        let done = h.submit_wait(TaskSpec::default()).await.unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
        tried_bad += u32::from(done.attempts > 1);
    }
    assert_eq!(h.stats().sidelined, 0);
    assert!(
        tried_bad > 10,
        "the broken agent kept its share: {tried_bad} retries"
    );
    runtime.shutdown().await;
}
