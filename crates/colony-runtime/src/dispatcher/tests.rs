//! Deterministic tests of the dispatcher: current-thread runtime, paused clock, seeded agents.

use crate::{
    Error, Pool, Runtime, RuntimeOptions,
    events::{Event, Kinds},
};
use colony_agents::{
    AgentSpec, Error as AgentError, from_fn,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::{
    hierarchy::Tiers,
    task::{Priority, Requirement, TaskSpec, TaskState},
};
use colony_journal::{Journal, MemoryJournal};
use std::{sync::Arc, time::Duration};

pub(super) fn sim(options: SimOptions) -> Arc<Sim> {
    Arc::new(Sim::new(options).unwrap())
}

pub(super) fn slow(ms: u64) -> SimOptions {
    SimOptions {
        latency: Latency::Fixed {
            value: Duration::from_millis(ms),
        },
        ..SimOptions::default()
    }
}

pub(super) fn two_tiers() -> RuntimeOptions {
    RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        ..RuntimeOptions::default()
    }
}

pub(super) async fn start(
    options: RuntimeOptions,
    pools: Vec<Pool>,
) -> (Runtime, Arc<MemoryJournal>) {
    let journal = Arc::new(MemoryJournal::new());
    let runtime = Runtime::start(options, pools, journal.clone())
        .await
        .unwrap();
    (runtime, journal)
}

pub(super) fn pool(count: u32, agent: Arc<Sim>) -> Pool {
    Pool::new(AgentSpec::new("sim", "worker"), count, agent)
}

#[tokio::test(start_paused = true)]
async fn every_task_ends_and_the_journal_agrees() {
    let flaky = SimOptions {
        seed: 7,
        error_rate: 0.2,
        latency: Latency::Uniform {
            min: Duration::ZERO,
            max: Duration::from_millis(5),
        },
        ..SimOptions::default()
    };
    let (runtime, journal) = start(RuntimeOptions::default(), vec![pool(50, sim(flaky))]).await;
    let h = runtime.handle();
    for _ in 0..5 {
        let accepted = h
            .submit_batch(vec![TaskSpec::default(); 1_000])
            .await
            .unwrap();
        assert_eq!(accepted.count, 1_000);
    }
    h.drain().await.unwrap();
    let stats = h.stats();
    let counts = journal.counts().unwrap();
    assert_eq!(counts.terminal(), 5_000);
    assert_eq!(counts.succeeded, stats.succeeded);
    assert_eq!(counts.dead_lettered, stats.dead_lettered);
    assert!(stats.retries > 500, "a 20% error rate retries: {stats:?}");
    assert!(
        stats.dead_lettered > 0 && stats.dead_lettered < 100,
        "0.2^3 of 5000 is about 40: {stats:?}"
    );
    assert_eq!(journal.stats().fenced, 0);
    assert_eq!((stats.queued, stats.running), (0, 0));
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn higher_priorities_leave_the_queue_first() {
    let (runtime, _) = start(two_tiers(), vec![pool(1, sim(slow(10)))]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::TASKS);
    let at = |p: u8| TaskSpec {
        priority: Priority::new(p).unwrap(),
        ..TaskSpec::default()
    };
    // The first low task takes the only worker; the rest queue behind it.
    let low = h.submit_batch(vec![at(1); 4]).await.unwrap();
    let high = h.submit(at(9)).await.unwrap();
    h.drain().await.unwrap();
    let mut started = Vec::new();
    while let Some(event) = events.try_recv() {
        if let Event::TaskStarted { task, .. } = event {
            started.push(task);
        }
    }
    let low: Vec<_> = low.ids().collect();
    assert_eq!(started, [low[0], high, low[1], low[2], low[3]]);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_runtime_pushes_back_and_loses_nothing() {
    let options = RuntimeOptions {
        queue_capacity: 2,
        ..two_tiers()
    };
    let (runtime, journal) = start(options, vec![pool(2, sim(slow(100)))]).await;
    let h = runtime.handle();
    assert_eq!(h.stats().capacity, 4, "2 workers + 2 queued");
    h.try_submit_batch(vec![TaskSpec::default(); 4])
        .await
        .unwrap();
    let err = h.try_submit(TaskSpec::default()).await.unwrap_err();
    assert!(matches!(err, Error::Full { capacity: 4 }), "{err}");
    assert_eq!(
        journal.counts().unwrap().total(),
        4,
        "a refused task is not journaled"
    );
    let err = h
        .try_submit_batch(vec![TaskSpec::default(); 5])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BatchTooLarge { got: 5, max: 4 }),
        "{err}"
    );
    // A waiting submitter gets in once room frees.
    let waited = h.submit(TaskSpec::default()).await.unwrap();
    h.drain().await.unwrap();
    assert_eq!(
        journal.task(waited).unwrap().unwrap().state,
        TaskState::Succeeded
    );
    assert_eq!(journal.counts().unwrap().succeeded, 5);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn crashes_and_hangs_are_retried_then_dead_lettered() {
    let crashy = sim(SimOptions {
        crash_rate: 1.0,
        ..SimOptions::default()
    });
    let (runtime, journal) = start(two_tiers(), vec![pool(3, crashy)]).await;
    let h = runtime.handle();
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::DeadLettered, 3));
    assert!(
        done.error
            .unwrap()
            .contains("agent crashed: simulated crash")
    );
    // Each retry went to another of the three agents, and an agent's first restart is
    // immediate: all three are back in service by the time the task gives up.
    assert_eq!(h.stats().restarts, 3);
    runtime.shutdown().await;
    assert_eq!(journal.counts().unwrap().dead_lettered, 1);

    let hung = sim(SimOptions {
        hang_rate: 1.0,
        ..SimOptions::default()
    });
    let (runtime, _) = start(two_tiers(), vec![pool(3, hung)]).await;
    let spec = TaskSpec {
        timeout: Duration::from_secs(2),
        max_attempts: 2,
        ..TaskSpec::default()
    };
    let started = tokio::time::Instant::now();
    let done = runtime.handle().submit_wait(spec).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::DeadLettered, 2));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(4_008)..=Duration::from_millis(4_012)).contains(&waited),
        "two timeouts of 2 s and one backoff of 10 ms ± 20 %: {waited:?}"
    );
    assert!(done.error.unwrap().contains("timed out after 2s"));
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_oversized_output_fails_its_task() {
    let agent = Arc::new(from_fn(|_| Ok(vec![b'x'; 2_000].into())));
    let pool = Pool::new(AgentSpec::new("fn", "worker"), 1, agent);
    let options = RuntimeOptions {
        max_output: 1_000,
        ..two_tiers()
    };
    let (runtime, _) = start(options, vec![pool]).await;
    let done = runtime
        .handle()
        .submit_wait(TaskSpec::default())
        .await
        .unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Failed, 1));
    assert_eq!(
        done.error.as_deref(),
        Some("output of 2000 bytes exceeds the limit of 1000 bytes")
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_and_poison_is_quarantined() {
    // Fails its first two attempts, then succeeds.
    let agent = Arc::new(from_fn(|task| {
        if task.attempt < 3 {
            Err(AgentError::retryable("not yet"))
        } else {
            Ok("\"ok\"".into())
        }
    }));
    let fn_pool = Pool::new(AgentSpec::new("fn", "worker"), 1, agent);
    let (runtime, _) = start(two_tiers(), vec![fn_pool]).await;
    let started = tokio::time::Instant::now();
    let done = runtime
        .handle()
        .submit_wait(TaskSpec::default())
        .await
        .unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Succeeded, 3));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(24)..=Duration::from_millis(36)).contains(&waited),
        "10 ms then 20 ms, each ± 20 %: {waited:?}"
    );
    runtime.shutdown().await;

    // A task that crashes every agent it touches stops at 3 crashes, whatever its budget.
    let crashy = sim(SimOptions {
        crash_rate: 1.0,
        ..SimOptions::default()
    });
    let (runtime, _) = start(two_tiers(), vec![pool(5, crashy)]).await;
    let spec = TaskSpec {
        max_attempts: 10,
        ..TaskSpec::default()
    };
    let done = runtime.handle().submit_wait(spec).await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::DeadLettered, 3));
    let error = done.error.unwrap();
    assert!(
        error.starts_with("quarantined as poison: 3 attempts"),
        "{error}"
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn fatal_errors_fail_at_once() {
    let agent = Arc::new(from_fn(|_| Err(AgentError::fatal("bad input"))));
    let pool = Pool::new(AgentSpec::new("fn", "worker"), 2, agent);
    let (runtime, _) = start(two_tiers(), vec![pool]).await;
    let done = runtime
        .handle()
        .submit_wait(TaskSpec::default())
        .await
        .unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Failed, 1));
    assert_eq!(done.error.as_deref(), Some("bad input"));
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_go_only_to_agents_of_their_role() {
    let planner = Pool::new(AgentSpec::new("sim", "planner"), 24, sim(slow(1)));
    let coder = Pool::new(AgentSpec::new("sim", "coder"), 24, sim(slow(1)));
    let (runtime, _) = start(RuntimeOptions::default(), vec![planner, coder]).await;
    let h = runtime.handle();
    let for_coder = TaskSpec {
        requirement: Requirement {
            role: Some("coder".into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    let mut pending = Vec::new();
    for _ in 0..200 {
        pending.push(h.submit_notify(for_coder.clone()).await.unwrap());
    }
    for p in pending {
        let done = p.await.unwrap();
        let agent = done.agent.unwrap();
        assert_eq!(
            h.inspect(move |t| t.spec(agent)).await.unwrap(),
            1,
            "ran on a planner"
        );
    }
    let nobody = TaskSpec {
        requirement: Requirement {
            role: Some("reviewer".into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    let err = h.submit(nobody).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no pool has agents that satisfy role `reviewer`"),
        "{err}"
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_tasks_are_refused_with_the_value_named() {
    let options = RuntimeOptions {
        max_payload: 8,
        ..two_tiers()
    };
    let (runtime, journal) = start(options, vec![pool(1, sim(SimOptions::default()))]).await;
    let h = runtime.handle();
    let big = TaskSpec::with_payload("\"0123456789\"");
    let err = h
        .submit_batch(vec![TaskSpec::default(), big])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("payload of 12 bytes is too large: allowed up to 8"),
        "{err}"
    );
    assert_eq!(
        journal.counts().unwrap().total(),
        0,
        "none of a bad batch is accepted"
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_trace() {
    async fn trace(seed: u64) -> Vec<Event> {
        let faulty = SimOptions {
            seed,
            error_rate: 0.3,
            crash_rate: 0.1,
            latency: Latency::Uniform {
                min: Duration::from_millis(1),
                max: Duration::from_millis(9),
            },
            ..SimOptions::default()
        };
        let options = RuntimeOptions {
            seed,
            ..RuntimeOptions::default()
        };
        let (runtime, _) = start(options, vec![pool(30, sim(faulty))]).await;
        let mut events = runtime.handle().subscribe(Kinds::ALL);
        runtime
            .handle()
            .submit_batch(vec![TaskSpec::default(); 300])
            .await
            .unwrap();
        runtime.handle().drain().await.unwrap();
        runtime.shutdown().await;
        std::iter::from_fn(|| events.try_recv()).collect()
    }
    let (a, b) = (trace(11).await, trace(11).await);
    assert!(a.len() > 900, "{} events", a.len());
    if let Some(i) = (0..a.len().min(b.len())).find(|&i| a[i] != b[i]) {
        panic!(
            "traces differ at event {i}: {:?} vs {:?}; before: {:?}",
            a[i],
            b[i],
            &a[i.saturating_sub(5)..i]
        );
    }
    assert_eq!(a, b);
    assert_ne!(a, trace(12).await);
}

#[tokio::test(start_paused = true)]
async fn spawning_in_waves_and_one_by_one_grows_the_tree() {
    let (runtime, _) = start(
        RuntimeOptions::default(),
        vec![pool(100, sim(SimOptions::default()))],
    )
    .await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::AGENTS);
    let size = std::num::NonZeroU32::new(20).unwrap();
    h.spawn(0, 60, crate::SpawnMode::Waves { size })
        .await
        .unwrap();
    h.spawn(0, 3, crate::SpawnMode::Single).await.unwrap();
    let spawned: Vec<(u8, u32)> = std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            Event::AgentsSpawned { count, tier, .. } => Some((tier, count)),
            _ => None,
        })
        .collect();
    let in_tier = |t: u8| {
        spawned
            .iter()
            .filter(|(tier, _)| *tier == t)
            .map(|(_, n)| n)
            .sum::<u32>()
    };
    assert_eq!(in_tier(3), 63);
    let sizes = h.inspect(|t| t.tier_sizes().to_vec()).await.unwrap();
    assert_eq!(sizes[3], 163);
    assert_eq!(
        sizes[2], 14,
        "163 workers need 14 supervisors at span 12: {sizes:?}"
    );
    assert_eq!(in_tier(2), 14 - 9, "the planned 9 supervisors were full");
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn growing_past_a_full_top_tier_keeps_the_runtime_alive() {
    let (runtime, _) = start(two_tiers(), vec![pool(12, sim(SimOptions::default()))]).await;
    let h = runtime.handle();
    h.spawn(0, 13, crate::SpawnMode::Batch).await.unwrap();
    let sizes = h.inspect(|t| t.tier_sizes().to_vec()).await.unwrap();
    assert_eq!(sizes, [3, 25], "two new roots for the 13 new workers");
    h.submit_batch(vec![TaskSpec::default(); 50]).await.unwrap();
    h.drain().await.unwrap();
    assert_eq!(h.stats().succeeded, 50);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_for_one_spec_does_not_wait_behind_another_specs_queue() {
    // One supervisor over 11 fast A workers and 1 slow B worker.
    let a = Pool::new(AgentSpec::new("sim", "a"), 11, sim(slow(10)));
    let b = Pool::new(AgentSpec::new("sim", "b"), 1, sim(slow(100)));
    let (runtime, _) = start(two_tiers(), vec![a, b]).await;
    let h = runtime.handle();
    let role = |r: &str| TaskSpec {
        requirement: Requirement {
            role: Some(r.into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    h.submit_batch(vec![role("a"); 11]).await.unwrap();
    h.submit_batch(vec![role("b"); 21]).await.unwrap();
    let started = tokio::time::Instant::now();
    let t = h.submit_notify(role("a")).await.unwrap();
    let done = t.await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(
        started.elapsed() <= Duration::from_millis(20),
        "the A task waited {:?} behind B tasks",
        started.elapsed()
    );
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn tasks_for_pools_without_agents_are_refused() {
    let staffed = pool(4, sim(SimOptions::default()));
    let empty = Pool::new(
        AgentSpec::new("sim", "reviewer"),
        0,
        sim(SimOptions::default()),
    );
    let (runtime, journal) = start(two_tiers(), vec![staffed, empty]).await;
    let h = runtime.handle();
    let review = TaskSpec {
        requirement: Requirement {
            role: Some("reviewer".into()),
            ..Requirement::default()
        },
        ..TaskSpec::default()
    };
    assert!(matches!(
        h.submit(review.clone()).await,
        Err(Error::NoAgentFor { .. })
    ));
    assert_eq!(journal.counts().unwrap().total(), 0);
    h.spawn(1, 2, crate::SpawnMode::Batch).await.unwrap();
    let done = h.submit_wait(review).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_query_is_reported_and_the_runtime_goes_on() {
    let (runtime, _) = start(two_tiers(), vec![pool(2, sim(SimOptions::default()))]).await;
    let h = runtime.handle();
    let err = h
        .inspect(|t| t.load(colony_core::AgentId(u32::MAX)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QueryPanicked), "{err}");
    assert_eq!(
        h.submit_wait(TaskSpec::default()).await.unwrap().state,
        TaskState::Succeeded
    );
    let handle = h.clone();
    runtime.shutdown().await;
    assert!(
        matches!(handle.drain().await, Ok(())),
        "nothing was in flight"
    );
    assert!(matches!(
        handle.submit(TaskSpec::default()).await,
        Err(Error::Stopped)
    ));
}

/// A journal whose writes become durable only after a delay, like one with a writer thread.
#[derive(Debug)]
pub(crate) struct Lagging {
    pub(crate) inner: Arc<MemoryJournal>,
    pub(crate) delay: Duration,
}

impl Journal for Lagging {
    fn next_task_id(&self) -> colony_core::TaskId {
        self.inner.next_task_id()
    }
    fn accept(&self, first: colony_core::TaskId, specs: &[TaskSpec]) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.accept(first, specs));
        self.later(result)
    }
    fn record(&self, batch: Vec<colony_journal::Record>) -> colony_journal::Durable {
        // Applied only when the delay is over, as a group commit would.
        let (tx, durable) = colony_journal::Durable::pending();
        let (inner, delay) = (self.inner.clone(), self.delay);
        crate::spawner::Spawner::spawn("lagging-journal", async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(inner.record(batch).await);
        });
        durable
    }
    fn open_decision(
        &self,
        first: colony_core::TaskId,
        specs: &[TaskSpec],
        opening: colony_journal::Opening,
    ) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.open_decision(first, specs, opening));
        self.later(result)
    }
    fn ask(
        &self,
        decision: colony_core::TaskId,
        first: colony_core::TaskId,
        specs: &[TaskSpec],
        call: colony_journal::Call,
    ) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.ask(decision, first, specs, call));
        self.later(result)
    }
    fn close_decision(
        &self,
        id: colony_core::TaskId,
        outcome: std::sync::Arc<str>,
    ) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.close_decision(id, outcome));
        self.later(result)
    }
    fn decided(
        &self,
        id: colony_core::TaskId,
        spec: &TaskSpec,
        taken: colony_journal::Taken,
    ) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.decided(id, spec, taken));
        self.later(result)
    }
    fn decision(
        &self,
        id: colony_core::TaskId,
    ) -> Result<Option<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.decision(id)
    }
    fn decisions(
        &self,
        before: Option<colony_core::TaskId>,
        limit: usize,
    ) -> Result<Vec<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.decisions(before, limit)
    }
    fn open_decisions(&self) -> Result<Vec<colony_journal::DecisionRow>, colony_journal::Error> {
        self.inner.open_decisions()
    }
    fn closed_ballots(
        &self,
        tasks: &[colony_core::TaskId],
    ) -> Result<Vec<colony_core::TaskId>, colony_journal::Error> {
        self.inner.closed_ballots(tasks)
    }
    fn task(
        &self,
        id: colony_core::TaskId,
    ) -> Result<Option<colony_journal::TaskRow>, colony_journal::Error> {
        self.inner.task(id)
    }
    fn counts(&self) -> Result<colony_journal::Counts, colony_journal::Error> {
        self.inner.counts()
    }
    fn unfinished(&self) -> Result<Vec<colony_journal::TaskRow>, colony_journal::Error> {
        self.inner.unfinished()
    }
    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<colony_core::TaskId>,
        limit: usize,
    ) -> Result<Vec<colony_journal::TaskRow>, colony_journal::Error> {
        self.inner.recent(state, before, limit)
    }
    fn recover(&self) -> Result<Vec<colony_journal::TaskRow>, colony_journal::Error> {
        self.inner.recover()
    }
    fn stats(&self) -> colony_journal::Stats {
        self.inner.stats()
    }
    fn record_agents(
        &self,
        tiers: &[String],
        agents: Vec<colony_journal::AgentRecord>,
        replace: bool,
    ) -> colony_journal::Durable {
        let result = futures::executor::block_on(self.inner.record_agents(tiers, agents, replace));
        self.later(result)
    }
    fn agents(&self) -> Result<Vec<colony_journal::AgentRecord>, colony_journal::Error> {
        self.inner.agents()
    }
    fn record_reputations(
        &self,
        rows: Vec<colony_journal::ReputationRow>,
    ) -> colony_journal::Durable {
        self.inner.record_reputations(rows)
    }
    fn reputations(&self) -> Result<Vec<colony_journal::ReputationRow>, colony_journal::Error> {
        self.inner.reputations()
    }
}

impl Lagging {
    fn later(&self, result: Result<(), colony_journal::Error>) -> colony_journal::Durable {
        let (tx, durable) = colony_journal::Durable::pending();
        let delay = self.delay;
        crate::spawner::Spawner::spawn("lagging-journal", async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(result);
        });
        durable
    }
}

#[tokio::test(start_paused = true)]
async fn results_are_told_only_once_the_journal_holds_them() {
    let memory = Arc::new(MemoryJournal::new());
    let journal = Arc::new(Lagging {
        inner: memory.clone(),
        delay: Duration::from_millis(5),
    });
    let runtime = Runtime::start(
        two_tiers(),
        vec![pool(4, sim(SimOptions::default()))],
        journal,
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let accepted = h.submit_batch(vec![TaskSpec::default(); 8]).await.unwrap();
    let done = h.submit_wait(TaskSpec::default()).await.unwrap();
    let row = memory.task(done.id).unwrap().unwrap();
    assert_eq!(
        row.state,
        TaskState::Succeeded,
        "the waiter heard before the journal had it"
    );
    h.drain().await.unwrap();
    assert_eq!(
        memory.counts().unwrap().succeeded,
        9,
        "drain waits for durable results"
    );
    assert_eq!(accepted.count, 8);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_retry_settings_are_refused_with_the_field_named() {
    let bad = |retry: crate::RetryOptions| async move {
        let options = RuntimeOptions {
            retry,
            ..two_tiers()
        };
        let journal = Arc::new(MemoryJournal::new());
        Runtime::start(options, vec![pool(1, sim(SimOptions::default()))], journal)
            .await
            .unwrap_err()
            .to_string()
    };
    let d = crate::RetryOptions::default();
    assert!(
        bad(crate::RetryOptions { jitter: 1.5, ..d })
            .await
            .contains("retry jitter 1.5")
    );
    assert!(
        bad(crate::RetryOptions {
            poison_faults: 0,
            ..d
        })
        .await
        .contains("poison-faults 0")
    );
    let backwards = crate::RetryOptions {
        initial_backoff: Duration::from_secs(5),
        ..d
    };
    assert!(bad(backwards).await.contains("exceeds max-backoff"));
}

#[tokio::test(start_paused = true)]
async fn idle_workers_steal_from_a_sibling_supervisors_queue() {
    // Span 2: two slow workers under one supervisor take 12 tasks (2 run, 10 queue); two more
    // workers arrive under a second supervisor and take work from the first one's queue.
    let options = RuntimeOptions {
        span: 2,
        tiers: Tiers::Named(vec!["c".into(), "s".into(), "w".into()]),
        queue_capacity: 20,
        ..RuntimeOptions::default()
    };
    let (runtime, _) = start(options, vec![pool(2, sim(slow(100)))]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::TASKS);
    let started = tokio::time::Instant::now();
    h.submit_batch(vec![TaskSpec::default(); 12]).await.unwrap();
    h.spawn(0, 2, crate::SpawnMode::Batch).await.unwrap();
    h.drain().await.unwrap();
    let stats = h.stats();
    assert!(stats.steals >= 4, "{stats:?}");
    assert_eq!(stats.succeeded, 12);
    // Two workers alone need 6 rounds of 100 ms. With stealing, 4: the last queued task is
    // not stolen (a queue of 1 is below the 2:1 ratio), so its own supervisor runs it.
    let waited = started.elapsed();
    assert!(waited <= Duration::from_millis(400), "{waited:?}");
    let stolen = std::iter::from_fn(|| events.try_recv())
        .filter(|e| matches!(e, Event::WorkStolen { .. }))
        .count() as u64;
    assert_eq!(stolen, stats.steals);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_agent_of_the_role() {
    let agent = Arc::new(from_fn(|task| {
        if task.attempt == 1 {
            Err(AgentError::retryable("flaky"))
        } else {
            Ok("1".into())
        }
    }));
    let pool = Pool::new(AgentSpec::new("fn", "worker"), 3, agent);
    let (runtime, _) = start(two_tiers(), vec![pool]).await;
    let mut events = runtime.handle().subscribe(Kinds::TASKS);
    for _ in 0..20 {
        let done = runtime
            .handle()
            .submit_wait(TaskSpec::default())
            .await
            .unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
    }
    let mut agents: std::collections::HashMap<colony_core::TaskId, Vec<colony_core::AgentId>> =
        Default::default();
    while let Some(event) = events.try_recv() {
        if let Event::TaskStarted { task, agent, .. } = event {
            agents.entry(task).or_default().push(agent);
        }
    }
    assert_eq!(agents.len(), 20);
    for (task, runs) in agents {
        assert_eq!(runs.len(), 2);
        assert_ne!(runs[0], runs[1], "{task}: retried on the agent that failed");
    }
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_killed_agents_running_task_retries_elsewhere() {
    let (runtime, journal) = start(two_tiers(), vec![pool(2, sim(slow(100)))]).await;
    let h = runtime.handle();
    let pending = h.submit_notify(TaskSpec::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let victim = journal.task(pending.id).unwrap().unwrap().agent.unwrap();
    h.kill(victim).unwrap();
    let done = pending.await.unwrap();
    assert_eq!((done.state, done.attempts), (TaskState::Succeeded, 2));
    assert_ne!(
        done.agent,
        Some(victim),
        "the retry went to the other agent"
    );
    assert_eq!(h.stats().restarts, 1);
    // Killing an idle agent or a manager loses nothing either. The victim's second restart in
    // a burst waits out a backoff; killing the supervisor meanwhile stops its whole subtree,
    // which the runtime (over the top tier) restarts at once: the supervisor and both workers.
    h.kill(victim).unwrap();
    h.kill(colony_core::AgentId(0)).unwrap();
    h.kill(colony_core::AgentId(999)).unwrap();
    assert_eq!(
        h.submit_wait(TaskSpec::default()).await.unwrap().state,
        TaskState::Succeeded
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.stats().restarts, 1 + 3);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rebalancing_evens_out_sibling_queues_on_its_period() {
    // Span 2: supervisor A's two workers are busy for 60 s with 20 tasks queued behind them;
    // a new worker under sibling supervisor B steals one, then B's queue stays empty until
    // the 5 s pass moves some of A's queue over.
    let options = RuntimeOptions {
        span: 2,
        tiers: Tiers::Named(vec!["c".into(), "s".into(), "w".into()]),
        queue_capacity: 40,
        ..RuntimeOptions::default()
    };
    let (runtime, _) = start(options, vec![pool(2, sim(slow(60_000)))]).await;
    let h = runtime.handle();
    let mut events = h.subscribe(Kinds::TASKS);
    let long = TaskSpec {
        timeout: Duration::from_secs(600),
        ..TaskSpec::default()
    };
    h.submit_batch(vec![long; 22]).await.unwrap();
    h.spawn(0, 1, crate::SpawnMode::Batch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(h.stats().rebalanced, 0, "not before the period");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let moved = h.stats().rebalanced;
    // Queues 19 and 0, mean 9.5, tolerance 30 %: both end within 6.65..=12.35.
    assert!((7..=12).contains(&moved), "moved {moved}");
    let (a, b) = h
        .inspect(|t| {
            let sups = t.agents_in_tier(1);
            (t.load(sups[0]).0, t.load(sups[1]).0)
        })
        .await
        .unwrap();
    assert_eq!(a + b, 22, "load moved with the tasks");
    let rebalanced = std::iter::from_fn(|| events.try_recv())
        .filter_map(|e| match e {
            Event::LoadRebalanced { moved, .. } => Some(u64::from(moved)),
            _ => None,
        })
        .sum::<u64>();
    assert_eq!(rebalanced, moved);
    runtime.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failover_policies_send_retries_to_backups_or_keep_them_in_the_pool() {
    use colony_core::agent::Failover;
    // Two pools of one role: the primary fails every attempt, the backup never does.
    let failing = Arc::new(from_fn(|_| Err(AgentError::retryable("endpoint down"))));
    let healthy = Arc::new(from_fn(|t| Ok(t.payload.clone())));
    for failover in [Failover::Backup, Failover::SamePool] {
        let mut primary = AgentSpec::new("http", "coder");
        primary.failover = failover;
        let backup = AgentSpec::new("command", "coder");
        let pools = vec![
            Pool::new(primary, 6, failing.clone()),
            Pool::new(backup, 6, healthy.clone()),
        ];
        let (runtime, _) = start(two_tiers(), pools).await;
        let h = runtime.handle();
        let mut events = h.subscribe(Kinds::TASKS);
        let primaries: Vec<colony_core::AgentId> = h
            .inspect(|t: &colony_core::tree::LiveTree| {
                (0..t.len() as u32)
                    .map(colony_core::AgentId)
                    .filter(|&a| t.tier(a) == t.worker_tier() && t.spec(a) == 0)
                    .collect()
            })
            .await
            .unwrap();
        let mut dead = 0;
        for _ in 0..40 {
            let done = h.submit_wait(TaskSpec::default()).await.unwrap();
            match failover {
                Failover::Backup => assert_eq!(done.state, TaskState::Succeeded),
                _ => dead += u32::from(done.state == TaskState::DeadLettered),
            }
        }
        let mut on_primary: std::collections::HashMap<colony_core::TaskId, u32> =
            Default::default();
        while let Some(event) = events.try_recv() {
            if let Event::TaskStarted { task, agent, .. } = event
                && primaries.contains(&agent)
            {
                *on_primary.entry(task).or_default() += 1;
            }
        }
        match failover {
            // A task that failed on the primary went to the backup: never twice on the primary.
            Failover::Backup => assert!(on_primary.values().all(|&n| n == 1), "{on_primary:?}"),
            // A task that started on the primary stayed there until it was dead-lettered.
            _ => {
                assert!(dead > 0);
                assert_eq!(on_primary.len() as u32, dead);
                assert!(on_primary.values().all(|&n| n == 3), "{on_primary:?}");
            }
        }
        runtime.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_ended_task_is_counted_in_a_latency_bucket() {
    let (runtime, _) = start(two_tiers(), vec![pool(10, sim(slow(5)))]).await;
    let h = runtime.handle();
    let before = h.latencies();
    assert_eq!(h.latencies().quantile_since(&before, 0.5), None);
    h.submit_batch(vec![TaskSpec::default(); 10]).await.unwrap();
    // Cancelled right after it is submitted: the cancellation follows the submission in.
    let id = h.submit(TaskSpec::default()).await.unwrap();
    assert!(h.cancel(id).await.unwrap().is_some());
    h.drain().await.unwrap();
    // Latencies are wall time, not this test's paused clock: only the counts are checked.
    let after = h.latencies();
    assert_eq!(
        after.0.iter().sum::<u64>(),
        11,
        "succeeded and cancelled alike"
    );
    assert!(after.quantile_since(&before, 0.5).is_some());
    runtime.shutdown().await;
}

#[test]
fn latency_quantiles_are_bucket_upper_bounds_of_the_difference() {
    use crate::shared::{LATENCY_BUCKETS, Latencies};
    let bucket = |us: u64| Latencies::bucket(Duration::from_micros(us));
    assert_eq!((bucket(0), bucket(1), bucket(2), bucket(3)), (0, 1, 2, 2));
    assert_eq!((bucket(4_095), bucket(4_096), bucket(5_000)), (12, 13, 13));
    assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
    let mut earlier = Latencies([0; LATENCY_BUCKETS]);
    earlier.0[3] = 1_000;
    let mut later = earlier;
    // Since `earlier`: 90 tasks under 8 µs, 9 under 1,024 µs, 1 under 65,536 µs.
    later.0[3] += 90;
    later.0[10] += 9;
    later.0[16] += 1;
    let q = |q| later.quantile_since(&earlier, q).unwrap().as_micros();
    assert_eq!((q(0.0), q(0.5), q(0.9)), (8, 8, 8));
    assert_eq!((q(0.91), q(0.99)), (1_024, 1_024));
    assert_eq!((q(0.995), q(1.0)), (65_536, 65_536));
    assert_eq!(earlier.quantile_since(&earlier, 0.5), None);
}
