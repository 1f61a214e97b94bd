//! The dispatcher: one event loop that owns the live tree, the supervisors' queues and every
//! running attempt.
//!
//! One turn of the loop takes up to 256 commands (submissions, spawns, queries) and whatever
//! attempts have ended, then lets freed workers take queued tasks, routes what waited for room,
//! and publishes the turn's journal records, events, counters and returned permits in one go.
//! An attempt that finishes inside [`Agent::handle`] never leaves the loop: a no-op task costs
//! a route, two journal records and no allocation beyond its job.

use crate::{
    Pool, RuntimeOptions,
    events::{Event, EventBus, Kinds},
    handle::{Completion, Counters, Handle, Shared},
    metrics::Metrics,
    queue::{Full, PriorityQueue},
    spawner::{Spawner, panic_message},
};
use bytes::Bytes;
use colony_agents::{Agent, Beats, Error as AgentError, Execution, Heartbeat, Outcome, Task};
use colony_core::{
    AgentId, TaskId,
    agent::Failover,
    health::{Health, HealthOptions},
    routing::{SpecMask, Strategy, Tree},
    supervision::{Exit, Supervisor, SupervisorOptions},
    task::{Priority, TaskSpec, TaskState},
};
use colony_journal::{Durable, Journal, Record};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use rand::{SeedableRng, rngs::SmallRng};
use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use supervise::{Stop, StopKind, Switch, Wake};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// Commands and ended attempts handled per turn of the loop.
const BATCH: usize = 256;
/// Backlogged tasks tried per turn that still find no room, before the turn ends.
const BACKLOG_TRIES: usize = 64;

pub(crate) enum Command {
    /// Jobs the journal already holds.
    Submit(Vec<Job>),
    /// Jobs whose acceptance the journal has yet to make durable: they are dispatched once it
    /// is, even if the submitter stopped waiting, and dropped (with their permits returned)
    /// if it fails.
    SubmitPending {
        jobs: Vec<Job>,
        durable: Durable,
        ack: oneshot::Sender<Result<(), colony_journal::Error>>,
    },
    Spawn {
        pool: u8,
        count: u32,
        reply: oneshot::Sender<Option<AgentId>>,
    },
    Inspect(Box<dyn FnOnce(&Live<'_>) + Send>),
    /// Cancel a task: at once if it waits, by stopping its attempt if it runs; `None` back
    /// when the dispatcher holds no such task.
    Cancel {
        task: TaskId,
        reply: oneshot::Sender<Option<Cancelled>>,
    },
    /// Kill an agent, as a crash from outside would: its running attempts end and retry.
    Kill(AgentId, Instant),
    /// Retire up to `count` workers of `pool` (`grow: false`), or bring retired ones back.
    Resize {
        pool: u8,
        count: u32,
        grow: bool,
        reply: oneshot::Sender<u32>,
    },
    Stop,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit(jobs) | Command::SubmitPending { jobs, .. } => {
                write!(f, "Submit({} jobs)", jobs.len())
            }
            Command::Spawn { pool, count, .. } => write!(f, "Spawn({count} in pool {pool})"),
            Command::Inspect(_) => f.write_str("Inspect"),
            Command::Cancel { task, .. } => write!(f, "Cancel({task})"),
            Command::Kill(agent, _) => write!(f, "Kill({agent})"),
            Command::Resize {
                pool, count, grow, ..
            } => write!(f, "Resize({pool}, {count}, grow: {grow})"),
            Command::Stop => f.write_str("Stop"),
        }
    }
}

/// An accepted task on its way through the hierarchy.
#[derive(Debug)]
pub(crate) struct Job {
    id: TaskId,
    /// The pools this attempt may run on: `eligible`, narrowed by a failover policy.
    mask: SpecMask,
    /// Every pool that can run the task.
    eligible: SpecMask,
    priority: Priority,
    /// Number of the latest attempt started: the lease. Counts from 0 for a new task.
    attempt: u32,
    /// The highest attempt number this task may reach before it is dead-lettered.
    last_attempt: u32,
    timeout: Duration,
    payload: Bytes,
    submitted: Instant,
    waiter: Option<oneshot::Sender<Completion>>,
    /// Whether the task holds an admission permit, returned when it ends. Tasks recovered
    /// from the journal at start hold none: they were admitted by an earlier process.
    permit: bool,
    /// Kept while no pool with agents can run the task (a recovered task whose pool has
    /// none yet), to find its pools again when agents are spawned.
    requirement: Option<Box<colony_core::task::Requirement>>,
    /// Attempts started in this process.
    tries: u32,
    /// The agent of the last attempt, which a retry avoids when another can take it.
    last_agent: Option<AgentId>,
    /// When the last attempt failed, while a retry is pending: to time the redispatch.
    failed_at: Option<Instant>,
    /// Attempts of this task that crashed or hung their agent.
    faults: u32,
}

impl Job {
    /// A task the journal held unfinished at start, queued again. [`Journal::recover`] has
    /// already moved its lease past every attempt the dead process may have started; it gets
    /// its full budget of attempts again, since the death was no fault of the task's.
    ///
    /// [`Journal::recover`]: colony_journal::Journal::recover
    pub(crate) fn recovered(row: colony_journal::TaskRow, mask: SpecMask, now: Instant) -> Self {
        let spec = row.spec;
        Self {
            id: row.id,
            mask,
            eligible: mask,
            priority: spec.priority,
            attempt: row.attempt,
            last_attempt: row.attempt + spec.max_attempts,
            timeout: spec.timeout,
            payload: spec.payload,
            submitted: now,
            waiter: None,
            permit: false,
            requirement: mask.is_empty().then(|| Box::new(spec.requirement)),
            tries: 0,
            faults: 0,
            last_agent: None,
            failed_at: None,
        }
    }

    pub(crate) fn new(
        id: TaskId,
        spec: TaskSpec,
        mask: SpecMask,
        submitted: Instant,
        waiter: Option<oneshot::Sender<Completion>>,
    ) -> Self {
        Self {
            id,
            mask,
            eligible: mask,
            priority: spec.priority,
            attempt: 0,
            last_attempt: spec.max_attempts,
            timeout: spec.timeout,
            payload: spec.payload,
            submitted,
            waiter,
            permit: true,
            requirement: None,
            tries: 0,
            faults: 0,
            last_agent: None,
            failed_at: None,
        }
    }
}

#[derive(Clone, Copy)]
enum ErrorKind {
    Retryable,
    Fatal,
}

/// How an attempt ended.
enum Ended {
    Outcome(Outcome),
    /// The agent panicked running it.
    Crash(String),
    TimedOut(Duration),
    /// Stopped from outside: the agent was killed, went silent, or its supervisor stopped it.
    Stopped(Stop),
    /// Its task was cancelled.
    Cancelled,
}

/// An attempt that ended after leaving [`Agent::handle`].
struct Finished {
    worker: AgentId,
    /// The worker's incarnation when the attempt started.
    incarnation: u32,
    job: Job,
    ended: Ended,
    elapsed: Duration,
}

type RunningAttempt = Pin<Box<dyn Future<Output = Finished> + Send>>;
type Accepting =
    Pin<Box<dyn Future<Output = (Result<(), colony_journal::Error>, Vec<Job>, Ack)> + Send>>;
type Ack = oneshot::Sender<Result<(), colony_journal::Error>>;
type Flushing = Pin<Box<dyn Future<Output = Result<(), colony_journal::Error>> + Send>>;

/// One task in this many has its dispatch latency recorded.
const DISPATCH_SAMPLE: u64 = 16;

/// The live hierarchy as a query inside the dispatcher sees it.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub tree: &'a Tree,
    health: &'a [Health],
    unhealthy: [u64; 3],
    retired: &'a std::collections::HashSet<AgentId>,
}

/// Agents of `tier` out of service and due back: those down, less the workers retired
/// (down for good).
fn due_back(tree: &Tree, retired: usize, tier: usize) -> u64 {
    let down = tree.down_in_tier(tier);
    if tier == tree.worker_tier() {
        down.saturating_sub(retired as u64)
    } else {
        down
    }
}

impl std::fmt::Debug for Live<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("agents", &self.tree.len())
            .finish()
    }
}

impl Live<'_> {
    /// A worker's health; healthy until it has answered from outside `handle`.
    pub fn health(&self, agent: AgentId) -> colony_core::health::HealthState {
        self.health
            .get(agent.index())
            .map_or(colony_core::health::HealthState::Healthy, Health::state)
    }

    /// Agents of `tier` out of service now and due back (retired ones are not), kept as they
    /// go down and come back.
    pub fn down(&self, tier: usize) -> u64 {
        due_back(self.tree, self.retired.len(), tier)
    }

    /// Workers retired from their pools.
    pub fn retired(&self) -> u64 {
        self.retired.len() as u64
    }

    /// Whether `agent` is a retired worker.
    pub fn is_retired(&self, agent: AgentId) -> bool {
        self.retired.contains(&agent)
    }

    /// Workers degraded, critical and failed now, kept as their health changes.
    pub fn unhealthy(&self) -> [u64; 3] {
        self.unhealthy
    }
}

/// Resolves once the dispatcher's loop has ended (or was dropped with its runtime).
pub(crate) type LoopEnded = oneshot::Receiver<()>;

/// Builds the shared state and starts the loop: on a thread of its own when the caller's
/// runtime is multi-threaded (see [`thread`]), as a task on a current-thread runtime, whose
/// one thread everything shares anyway (and whose paused clock tests rely on).
pub(crate) fn start(
    options: &RuntimeOptions,
    pools: &[Pool],
    tree: Tree,
    journal: Arc<dyn Journal>,
    bus: EventBus,
) -> (Handle, LoopEnded) {
    let (inbox, commands) = mpsc::unbounded_channel();
    let (control, controls) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        inbox,
        control,
        stopped: AtomicBool::new(false),
        pool_agents: pools.iter().map(|_| AtomicU64::new(0)).collect(),
        next_id: Mutex::new(journal.next_task_id().0),
        journal,
        permits: Semaphore::new(0),
        specs: pools.iter().map(|p| p.spec.clone()).collect(),
        max_payload: options.max_payload,
        counters: Counters::default(),
        drained: Notify::new(),
        bus,
        timings: Mutex::new(crate::handle::Timings::default()),
    });
    let dispatcher = Dispatcher {
        agents: pools
            .iter()
            .map(|p| (p.agent.clone(), p.spec.concurrency, p.spec.failover))
            .collect(),
        // Managers exist before any worker: a kill may name one at once.
        queues: std::iter::repeat_with(|| None).take(tree.len()).collect(),
        incarnations: vec![0; tree.len()],
        backlog: PriorityQueue::new(usize::MAX),
        running: FuturesUnordered::new(),
        freed: Vec::new(),
        records: Vec::new(),
        events: Vec::new(),
        completions: Vec::new(),
        flushing: FuturesUnordered::new(),
        accepting: FuturesUnordered::new(),
        delayed: FuturesUnordered::new(),
        retry: options.retry,
        strategy: options.strategy,
        hierarchy_recorded: false,
        max_output: options.max_output,
        orphans: 0,
        kill_switches: std::collections::HashMap::new(),
        down_published: vec![0; tree.tier_names().len()],
        cancels: std::collections::HashSet::new(),
        live: cancel::Whereabouts::default(),
        retired: std::collections::HashSet::new(),
        supervision: options.supervision,
        engines: std::collections::HashMap::new(),
        restarting: FuturesUnordered::new(),
        health_options: options.health,
        health: Vec::new(),
        unhealthy: [0; 3],
        beats: Arc::new(Beats::new(tokio::time::Instant::now())),
        steal_at: options.steal_at.max(1),
        rebalance: options.rebalance,
        rng: SmallRng::seed_from_u64(options.seed),
        metrics: Metrics::register(),
        turn: Turn::default(),
        capacity: 0,
        queued: 0,
        tree,
        shared: shared.clone(),
    };
    let (ended, ended_rx) = oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    // On a thread of its own, the loop must still stop when the runtime shuts down, as it did
    // when it was one of the runtime's tasks, instead of outliving the drivers its timers use:
    // the runtime drops the lifeline with its tasks, and the lifeline holds the shutdown
    // until the loop has stopped (see `thread::Lifeline`).
    let (alive, stopped) = if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        let (lifeline, alive, stopped) = thread::Lifeline::new();
        Spawner::spawn("dispatcher-lifeline", lifeline.watch());
        (Some(alive), Some(stopped))
    } else {
        (None, None)
    };
    let on_thread = alive.is_some();
    // Unconstrained by tokio's cooperative budget: the loop already yields whenever nothing
    // is ready, and a budget spent on ended attempts would make retry timers and kill
    // notices look pending for as long as the swarm stays busy.
    let run: thread::Loop = Box::pin(async move {
        tokio::task::unconstrained(dispatcher.run(commands, controls, alive)).await;
        let _ = ended.send(());
        // Dropped with the loop, however it ends: the lifeline's wait is over.
        drop(stopped);
    });
    let on_pool = if on_thread {
        match thread::spawn(run, runtime, options.linger) {
            Ok(()) => None,
            Err((run, error)) => {
                tracing::warn!(%error, "No thread for the dispatcher: it runs on tokio's pool.");
                Some(run)
            }
        }
    } else {
        Some(run)
    };
    if let Some(run) = on_pool {
        Spawner::spawn("dispatcher", run);
    }
    (Handle::new(shared), ended_rx)
}

/// What one turn changed, published at its end.
#[derive(Debug, Default)]
struct Turn {
    succeeded: u64,
    failed: u64,
    dead_lettered: u64,
    cancelled: u64,
    /// Tasks ended this turn, by latency bucket.
    latency: [u64; crate::handle::LATENCY_BUCKETS],
    attempts: u64,
    retries: u64,
    restarts_crash: u64,
    restarts_timeout: u64,
    escalations: u64,
    quarantined: u64,
    health_failures: u64,
    alerts: u64,
    /// Ended tasks that held an admission permit.
    permits: u64,
    steals: u64,
    /// Tasks moved by rebalancing.
    rebalanced: u64,
}

struct Dispatcher {
    tree: Tree,
    /// Per pool: the shared handler, the concurrency of one agent and the failover policy.
    agents: Vec<(Arc<dyn Agent>, u32, Failover)>,
    /// Per agent id: the queue of a supervisor, created on first use.
    queues: Vec<Option<Box<PriorityQueue<Job>>>>,
    /// Per agent id: how many times it was replaced.
    incarnations: Vec<u32>,
    /// Tasks that found no subtree with room for them, waiting for one.
    backlog: PriorityQueue<Job>,
    running: FuturesUnordered<RunningAttempt>,
    /// Workers that ended an attempt this turn and may take a queued task.
    freed: Vec<AgentId>,
    records: Vec<Record>,
    events: Vec<Event>,
    /// Completions of this turn, sent once its records are durable.
    completions: Vec<(oneshot::Sender<Completion>, Completion)>,
    /// Journal writes of earlier turns still on their way to disk.
    flushing: FuturesUnordered<Flushing>,
    /// Submissions waiting for the journal to make them durable.
    accepting: FuturesUnordered<Accepting>,
    /// Retries waiting out their backoff.
    delayed: FuturesUnordered<Pin<Box<dyn Future<Output = Job> + Send>>>,
    retry: crate::RetryOptions,
    strategy: Strategy,
    rng: SmallRng,
    metrics: Metrics,
    turn: Turn,
    /// Whether this process has recorded its hierarchy in the journal yet.
    hierarchy_recorded: bool,
    max_output: usize,
    /// Backlogged tasks that no pool with agents can run yet.
    orphans: usize,
    /// Per agent that ever ran an attempt outside `handle`: wakes those attempts to end them.
    kill_switches: std::collections::HashMap<AgentId, Arc<Switch>>,
    /// Per tier, agents out of service and due back, as the metric last said.
    down_published: Vec<u64>,
    /// Tasks cancelled that were not waiting: they end cancelled when their attempt ends or
    /// their retry comes due.
    cancels: std::collections::HashSet<TaskId>,
    /// Where the tasks that are in no queue are, for cancellation to find them.
    live: cancel::Whereabouts,
    /// Workers retired from their pools: out of service, never restarted.
    retired: std::collections::HashSet<AgentId>,
    supervision: SupervisorOptions,
    /// Per managing agent (and [`supervise::TOP`] for the runtime over the top tier) whose
    /// children exited: its supervision engine. Removed when the agent itself stops.
    engines: std::collections::HashMap<u32, Supervisor>,
    /// Restarts waiting out their backoff.
    restarting: FuturesUnordered<Pin<Box<dyn Future<Output = supervise::Restart> + Send>>>,
    health_options: HealthOptions,
    /// Per worker that has answered: its health.
    health: Vec<Health>,
    /// Busy agents degraded, critical, failed.
    unhealthy: [u64; 3],
    /// When each agent was last heard from; agents beat on it while running long attempts.
    beats: Arc<Beats>,
    /// Queue length of a sibling supervisor from which an idle worker steals.
    steal_at: usize,
    rebalance: colony_core::rebalance::RebalanceOptions,
    /// Tasks the tree holds at once; permits handed out so far.
    capacity: u64,
    /// Tasks in supervisors' queues and the backlog.
    queued: u64,
    shared: Arc<Shared>,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut controls: mpsc::UnboundedReceiver<Command>,
        mut alive: Option<oneshot::Receiver<()>>,
    ) {
        // However the loop ends, even by a panic, submitters and drainers stop waiting.
        let _stopped = StopGuard(self.shared.clone());
        let mut batch = Vec::with_capacity(BATCH);
        let every = self.rebalance.every;
        let mut rebalance = (!every.is_zero()).then(|| {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let every = self.health_options.heartbeat;
        let mut sweep = Some({
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        'turns: loop {
            // Biased, for reproducible runs; the other sources are drained below every turn, so
            // a steady stream of commands cannot starve them.
            tokio::select! {
                biased;
                // Resolves (closed) only when the runtime that started the loop shuts down.
                _ = async { alive.as_mut().expect("checked").await }, if alive.is_some() => {
                    break 'turns;
                }
                Some(command) = controls.recv() => {
                    if !self.command(command) {
                        break 'turns;
                    }
                }
                n = commands.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break 'turns;
                    }
                    for command in batch.drain(..) {
                        if !self.command(command) {
                            break 'turns;
                        }
                    }
                }
                Some(finished) = self.running.next(), if !self.running.is_empty() => {
                    self.finished(finished);
                }
                Some(job) = self.delayed.next(), if !self.delayed.is_empty() => {
                    self.queued -= 1;
                    self.live.backoff.remove(&job.id);
                    self.route_or_wait(job);
                }
                () = next_tick(&mut rebalance), if rebalance.is_some() => {
                    self.rebalance();
                }
                Some(restart) = self.restarting.next(), if !self.restarting.is_empty() => {
                    self.restart(restart);
                }
                () = next_tick(&mut sweep) => {
                    self.sweep();
                }
                Some((result, jobs, ack)) = self.accepting.next(), if !self.accepting.is_empty() => {
                    self.accepted(result, jobs, ack);
                }
                Some(result) = self.flushing.next(), if !self.flushing.is_empty() => {
                    if let Err(error) = result {
                        tracing::error!(%error, "Journal write failed.");
                    }
                }
            }
            while let Ok(command) = controls.try_recv() {
                if !self.command(command) {
                    break 'turns;
                }
            }
            for _ in 0..BATCH {
                match self.running.next().now_or_never() {
                    Some(Some(finished)) => self.finished(finished),
                    _ => break,
                }
            }
            while let Some(Some((result, jobs, ack))) = self.accepting.next().now_or_never() {
                self.accepted(result, jobs, ack);
            }
            while let Some(Some(job)) = self.delayed.next().now_or_never() {
                self.queued -= 1;
                self.live.backoff.remove(&job.id);
                self.route_or_wait(job);
            }
            while let Some(Some(result)) = self.flushing.next().now_or_never() {
                if let Err(error) = result {
                    tracing::error!(%error, "Journal write failed.");
                }
            }
            if rebalance.is_some() && next_tick(&mut rebalance).now_or_never().is_some() {
                self.rebalance();
            }
            while let Some(Some(restart)) = self.restarting.next().now_or_never() {
                self.restart(restart);
            }
            if next_tick(&mut sweep).now_or_never().is_some() {
                self.sweep();
            }
            self.settle();
            self.publish();
        }
        self.publish();
    }

    /// Handles one command; `false` to stop.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(jobs) => {
                for job in jobs {
                    self.route_or_wait(job);
                }
            }
            Command::SubmitPending { jobs, durable, ack } => {
                if let (Some(first), Some(last)) = (jobs.first(), jobs.last()) {
                    self.live.pending.push((first.id, last.id));
                }
                self.accepting
                    .push(Box::pin(async move { (durable.await, jobs, ack) }));
            }
            Command::Spawn { pool, count, reply } => {
                let first = self.spawn(pool, count);
                let _ = reply.send(first);
            }
            Command::Inspect(query) => {
                // A panicking query drops its reply channel; the caller hears of it.
                let live = Live {
                    tree: &self.tree,
                    health: &self.health,
                    unhealthy: self.unhealthy,
                    retired: &self.retired,
                };
                let _ = catch_unwind(AssertUnwindSafe(|| query(&live)));
            }
            Command::Cancel { task, reply } => {
                let _ = reply.send(self.cancel(task));
            }
            Command::Kill(agent, at) => self.kill(agent, at),
            Command::Resize {
                pool,
                count,
                grow,
                reply,
            } => {
                let n = if grow {
                    self.reinstate(pool, count)
                } else {
                    self.retire(pool, count)
                };
                let _ = reply.send(n);
            }
            Command::Stop => return false,
        }
        true
    }

    /// A submission the journal has now made durable, or failed to.
    fn accepted(&mut self, result: Result<(), colony_journal::Error>, jobs: Vec<Job>, ack: Ack) {
        if let Some(first) = jobs.first() {
            self.live.pending.retain(|&(f, _)| f != first.id);
        }
        match result {
            Ok(()) => {
                self.shared
                    .counters
                    .accepted
                    .fetch_add(jobs.len() as u64, Relaxed);
                Metrics::accepted(jobs.len());
                for job in jobs {
                    self.route_or_wait(job);
                }
                let _ = ack.send(Ok(()));
            }
            Err(error) => {
                self.shared.permits.add_permits(jobs.len());
                for job in &jobs {
                    self.cancels.remove(&job.id);
                }
                let _ = ack.send(Err(error));
            }
        }
    }

    /// Adds `count` workers to pool `pool`; returns the first one's id.
    fn spawn(&mut self, pool: u8, count: u32) -> Option<AgentId> {
        let started = Instant::now();
        let before = self.tree.len();
        let concurrency = self.agents[pool as usize].1;
        let workers = self.tree.add_workers(count, pool, concurrency);
        let after = self.tree.len();
        self.queues.resize_with(after, || None);
        self.incarnations.resize(after, 0);
        self.shared.pool_agents[pool as usize].fetch_add(u64::from(count), Relaxed);
        self.record_hierarchy(before, after);
        // New workers are idle: let them look at their supervisors' queues.
        self.freed.extend(&workers);
        // Tasks that had no pool with agents may have one now.
        if self.orphans > 0 {
            let shared = self.shared.clone();
            let mut found = 0;
            self.backlog.for_each_mut(|job| {
                if let Some(requirement) = &job.requirement {
                    job.mask = shared.mask_for(requirement);
                    job.eligible = job.mask;
                    if !job.mask.is_empty() {
                        job.requirement = None;
                        found += 1;
                    }
                }
            });
            self.orphans -= found;
        }
        // Room of agents out of service counts: they come back, and their tasks wait.
        let capacity = self.tree.installed_capacity();
        self.shared
            .permits
            .add_permits((capacity - self.capacity) as usize);
        self.capacity = capacity;
        // Published now, not at the end of the turn: the spawner hears back before then.
        self.shared.counters.agents.store(after as u64, Relaxed);
        self.shared.counters.capacity.store(capacity, Relaxed);
        self.metrics.spawned.increment((after - before) as u64);
        self.metrics.spawn_duration.record(started.elapsed());
        for (name, size) in self.tree.tier_names().iter().zip(self.tree.tier_sizes()) {
            Metrics::tier_size(name, *size);
        }
        self.publish_down(true);
        if self.shared.bus.wants(Kinds::AGENTS) {
            // Growth past the plan interleaves new managers with the new workers: one event
            // per run of consecutive ids in one tier.
            let mut id = before;
            while id < after {
                let tier = self.tree.tier(AgentId(id as u32));
                let run = (id..after)
                    .take_while(|&i| self.tree.tier(AgentId(i as u32)) == tier)
                    .count();
                self.events.push(Event::AgentsSpawned {
                    first: AgentId(id as u32),
                    count: run as u32,
                    tier: tier as u8,
                });
                id += run;
            }
        }
        workers.first().copied()
    }

    /// Hands agents `before..after` to the journal, which serves chain-of-command queries
    /// from them. The first spawn of a process replaces what an earlier one recorded.
    fn record_hierarchy(&mut self, before: usize, after: usize) {
        let replace = !self.hierarchy_recorded;
        // The managing tiers come first, from the plan, on the first spawn.
        let from = if replace { 0 } else { before };
        let worker_tier = self.tree.worker_tier();
        let records = (from..after)
            .map(|i| {
                let id = AgentId(i as u32);
                let tier = self.tree.tier(id);
                colony_journal::AgentRecord {
                    id,
                    tier: tier as u8,
                    parent: self.tree.parent(id),
                    pool: (tier == worker_tier).then(|| self.tree.spec(id)),
                }
            })
            .collect();
        let tiers: Vec<String> = self
            .tree
            .tier_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let mut durable = self.shared.journal.record_agents(&tiers, records, replace);
        self.hierarchy_recorded = true;
        match durable.try_result() {
            Some(Ok(())) => {}
            Some(Err(error)) => tracing::error!(%error, "Recording the hierarchy failed."),
            None => self.flushing.push(Box::pin(durable)),
        }
    }

    /// Routes `job`, or puts it at the back of the backlog when nothing has room for it.
    fn route_or_wait(&mut self, mut job: Job) {
        if !self.cancels.is_empty() && self.cancels.remove(&job.id) {
            self.cancelled(job, None);
            return;
        }
        self.orphans += usize::from(job.requirement.is_some());
        if let Some(failed) = job.failed_at.take() {
            self.shared.time(|t| &mut t.redispatch, failed.elapsed());
        }
        if let Err(job) = self.route(job) {
            self.queued += 1;
            let _ = self.backlog.push(job.priority, job);
        }
    }

    /// Sends a task down the tree: to an idle worker at once, or into a supervisor's queue.
    /// Hands the task back when no subtree with agents for it has room.
    // The job comes back by value on the rare no-room path; boxing it would allocate on the
    // hot path instead.
    #[allow(clippy::result_large_err)]
    fn route(&mut self, job: Job) -> Result<(), Job> {
        let Some(supervisor) = self.tree.route(job.mask, self.strategy, &mut self.rng) else {
            return Err(job);
        };
        self.tree.enqueue(supervisor);
        if let Some(worker) = self.tree.idle_worker(supervisor, job.mask, job.last_agent) {
            self.start(worker, job);
            return Ok(());
        }
        if self.shared.bus.wants(Kinds::TASKS) {
            self.events.push(Event::TaskQueued {
                task: job.id,
                supervisor,
            });
        }
        // The tree admits no more than the supervisor's capacity, so this bound only bites
        // if the tree and the queues disagree; the task then waits in the backlog.
        let bound = self.tree.load(supervisor).1 as usize;
        let queue = self.queue(supervisor, bound);
        // Workers spawned since the queue was made raise the supervisor's capacity.
        queue.set_capacity(bound);
        match queue.push(job.priority, job) {
            Ok(()) => {
                self.queued += 1;
                Ok(())
            }
            Err(Full(job)) => {
                self.tree.dequeue(supervisor);
                Err(job)
            }
        }
    }

    /// The queue of `supervisor`, made on first use with room for `bound` tasks.
    fn queue(&mut self, supervisor: AgentId, bound: usize) -> &mut PriorityQueue<Job> {
        let slot = &mut self.queues[supervisor.index()];
        if slot.is_none() {
            self.live.queues.push(supervisor);
        }
        slot.get_or_insert_with(|| Box::new(PriorityQueue::new(bound)))
    }

    /// Starts the next attempt of `job` on `worker`, whose supervisor already counts it.
    fn start(&mut self, worker: AgentId, mut job: Job) {
        // Sampled: a clock read and a histogram update on every task would cost the hot path.
        if job.attempt == 0 && job.id.0.is_multiple_of(DISPATCH_SAMPLE) {
            self.metrics.dispatch.record(job.submitted.elapsed());
        }
        job.attempt += 1;
        job.tries += 1;
        job.last_agent = Some(worker);
        self.turn.attempts += 1;
        self.tree.start(worker);
        self.records.push(Record::Started {
            task: job.id,
            attempt: job.attempt,
            agent: worker,
        });
        if self.shared.bus.wants(Kinds::ACTIVITY) && self.tree.load(worker).0 == 1 {
            self.events.push(Event::AgentActivated { agent: worker });
        }
        if self.shared.bus.wants(Kinds::TASKS) {
            self.events.push(Event::TaskStarted {
                task: job.id,
                agent: worker,
                attempt: job.attempt,
            });
        }
        let agent = &self.agents[self.tree.spec(worker) as usize].0;
        let task = Task {
            id: job.id,
            attempt: job.attempt,
            agent: worker,
            payload: job.payload.clone(),
            heartbeat: Heartbeat::new(self.beats.clone(), worker),
        };
        match catch_unwind(AssertUnwindSafe(|| agent.handle(task))) {
            Ok(Execution::Done(outcome)) => self.ended(worker, job, Ended::Outcome(outcome)),
            Err(panic) => self.ended(worker, job, Ended::Crash(panic_message(&*panic).to_owned())),
            Ok(Execution::Running(running)) => {
                let timeout = job.timeout;
                // Taking work is a sign of life: the silence a sweep measures starts now.
                self.beats.beat(worker);
                // Created here, before the attempt is first polled: a stop from now on
                // reaches it even if the attempt has not run yet.
                let switch = self.kill_switches.entry(worker).or_default().clone();
                let woken = switch.notify.clone().notified_owned();
                let fired = switch.fired();
                let (task, incarnation) = (job.id, self.incarnations[worker.index()]);
                self.live.running.insert(task, worker);
                self.running.push(Box::pin(async move {
                    // tokio's clock: tests with paused time see virtual response times.
                    let started = tokio::time::Instant::now();
                    let attempt =
                        tokio::time::timeout(timeout, AssertUnwindSafe(running).catch_unwind());
                    tokio::pin!(attempt, woken);
                    let ended = loop {
                        tokio::select! {
                            biased;
                            () = &mut woken => {
                                // Listening again before looking, so that nothing fired in
                                // between goes unseen.
                                woken.set(switch.notify.clone().notified_owned());
                                match switch.wake(fired, task) {
                                    Some(Wake::Stopped(stop)) => break Ended::Stopped(stop),
                                    Some(Wake::Cancelled) => break Ended::Cancelled,
                                    None => {}
                                }
                            }
                            result = &mut attempt => break match result {
                                Ok(Ok(outcome)) => Ended::Outcome(outcome),
                                Ok(Err(panic)) => Ended::Crash(panic_message(&*panic).to_owned()),
                                Err(_) => Ended::TimedOut(timeout),
                            },
                        }
                    };
                    Finished {
                        worker,
                        incarnation,
                        job,
                        ended,
                        elapsed: started.elapsed(),
                    }
                }));
            }
        }
    }

    fn finished(&mut self, f: Finished) {
        self.metrics.attempt_duration.record(f.elapsed);
        self.live.running.remove(&f.job.id);
        let current = f.incarnation == self.incarnations[f.worker.index()];
        self.ended_after(f.worker, f.job, f.ended, Some(f.elapsed), current);
    }

    /// An attempt ended inside [`Agent::handle`].
    fn ended(&mut self, worker: AgentId, job: Job, ended: Ended) {
        self.ended_after(worker, job, ended, None, true);
    }

    /// Commits, retries or gives up on the attempt `job.attempt` that `worker` ran, for
    /// `elapsed` outside `handle`. `current` says whether the agent that ran it is still in
    /// service: a crash of an incarnation already replaced is no news to its supervisor.
    fn ended_after(
        &mut self,
        worker: AgentId,
        mut job: Job,
        ended: Ended,
        elapsed: Option<Duration>,
        current: bool,
    ) {
        let micros = elapsed.map(|e| e.as_secs_f32() * 1e6);
        // An output the journal could not hold is no result: the task fails, saying why.
        let ended = match ended {
            Ended::Outcome(Ok(output)) if output.len() > self.max_output => {
                Ended::Outcome(Err(AgentError::fatal(format!(
                    "output of {} bytes exceeds the limit of {} bytes",
                    output.len(),
                    self.max_output
                ))))
            }
            other => other,
        };
        self.tree.finish(worker, micros);
        self.freed.push(worker);
        // A cancelled task ends so however its attempt ended, unless it succeeded first. A
        // crash or a hang still counts against the agent, for its supervisor to act on.
        let asked = !self.cancels.is_empty() && self.cancels.remove(&job.id);
        // The attempt ended before it saw the cancellation: its agent's switch forgets it.
        if asked
            && !matches!(ended, Ended::Cancelled)
            && let Some(switch) = self.kill_switches.get(&worker)
        {
            switch.forget(job.id);
        }
        let cancelled =
            matches!(ended, Ended::Cancelled) || (asked && !matches!(ended, Ended::Outcome(Ok(_))));
        // Health follows attempts that left `handle`, where a response time means something;
        // one finished inside it answered at once, and tracking it would tax the hot path.
        if let Some(took) = elapsed
            && current
            && !matches!(ended, Ended::Cancelled)
        {
            let ok = matches!(ended, Ended::Outcome(Ok(_)));
            self.observe(worker, took, ok);
        }
        let (task, attempt) = (job.id, job.attempt);
        let error: Arc<str> = match ended {
            Ended::Outcome(Ok(output)) => {
                self.records.push(Record::Committed {
                    task,
                    attempt,
                    output: output.clone(),
                });
                if self.shared.bus.wants(Kinds::TASKS) {
                    self.events.push(Event::TaskSucceeded {
                        task,
                        agent: worker,
                        attempt,
                    });
                }
                self.turn.succeeded += 1;
                self.complete(job, TaskState::Succeeded, Some(output), None, Some(worker));
                return;
            }
            Ended::Outcome(Err(AgentError::Fatal(_))) if cancelled => {
                self.cancelled(job, Some(worker));
                return;
            }
            Ended::Outcome(Err(AgentError::Fatal(error))) => {
                self.records.push(Record::Failed {
                    task,
                    attempt,
                    error: error.clone(),
                    next: TaskState::Failed,
                });
                self.failed_event(worker, &job, &error, false, ErrorKind::Fatal);
                self.turn.failed += 1;
                self.complete(job, TaskState::Failed, None, Some(error), Some(worker));
                return;
            }
            Ended::Outcome(Err(AgentError::Retryable(error))) => error,
            Ended::Crash(message) => {
                job.faults += 1;
                let cause: Arc<str> = format!("agent crashed: {message}").into();
                if current {
                    let at = Instant::now();
                    self.supervise(worker, Exit::Crash, cause.clone(), StopKind::Supervisor, at);
                }
                cause
            }
            Ended::TimedOut(after) => {
                job.faults += 1;
                self.time_hang(elapsed);
                let cause: Arc<str> = format!("attempt timed out after {after:?}").into();
                if current {
                    let at = Instant::now();
                    self.supervise(worker, Exit::Hang, cause.clone(), StopKind::Supervisor, at);
                }
                cause
            }
            Ended::Cancelled => "cancelled".into(),
            Ended::Stopped(stop) => {
                match stop.kind {
                    StopKind::Killed => {
                        self.shared.time(|t| &mut t.detection, stop.at.elapsed());
                    }
                    StopKind::Silent => {
                        job.faults += 1;
                        self.time_hang(elapsed);
                    }
                    StopKind::Supervisor => {}
                }
                stop.cause
            }
        };
        if cancelled {
            self.cancelled(job, Some(worker));
            return;
        }
        // A task that took down agents on several attempts is poison: retrying it would only
        // take down more.
        let poison = job.faults >= self.retry.poison_faults;
        let retry = attempt < job.last_attempt && !poison;
        let next = if retry {
            TaskState::Queued
        } else {
            TaskState::DeadLettered
        };
        self.records.push(Record::Failed {
            task,
            attempt,
            error: error.clone(),
            next,
        });
        self.failed_event(worker, &job, &error, retry, ErrorKind::Retryable);
        if retry {
            self.turn.retries += 1;
            job.mask = self.failover(worker, job.eligible);
            job.failed_at = Some(Instant::now());
            let delay = self.retry.delay(job.tries, &mut self.rng);
            if delay.is_zero() {
                self.route_or_wait(job);
            } else {
                self.queued += 1;
                self.live.backoff.insert(job.id);
                self.delayed.push(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    job
                }));
            }
        } else {
            self.turn.dead_lettered += 1;
            self.turn.quarantined += u64::from(poison);
            let error = if poison {
                format!(
                    "quarantined as poison: {} attempts crashed or hung their agents; last error: {error}",
                    job.faults
                )
            } else {
                format!("dead-lettered after attempt {attempt}; last error: {error}")
            };
            self.complete(
                job,
                TaskState::DeadLettered,
                None,
                Some(error.into()),
                Some(worker),
            );
        }
    }

    /// The pools a retry may go to after an attempt on `worker` failed, by the failover
    /// policy of `worker`'s pool.
    fn failover(&self, worker: AgentId, eligible: SpecMask) -> SpecMask {
        let pool = self.tree.spec(worker);
        match self.agents[pool as usize].2 {
            Failover::Any => eligible,
            Failover::SamePool => SpecMask::of(pool),
            Failover::Backup => {
                let staffed = self.shared.staffed().0;
                let backups = SpecMask(eligible.0 & staffed & !SpecMask::of(pool).0);
                if backups.is_empty() {
                    eligible
                } else {
                    backups
                }
            }
        }
    }

    /// The engines' clock: tokio's time since the heartbeat board's epoch, so tests with a
    /// paused clock see virtual time. Read when needed, never kept: a value from before the
    /// loop waited would be stale.
    fn now(&self) -> Duration {
        self.beats.epoch().elapsed()
    }

    /// Samples how long a hung attempt ran before the runtime gave up on it.
    fn time_hang(&self, elapsed: Option<Duration>) {
        if let Some(elapsed) = elapsed {
            self.shared.time(|t| &mut t.hang_detection, elapsed);
        }
    }

    fn failed_event(
        &mut self,
        worker: AgentId,
        job: &Job,
        error: &Arc<str>,
        retry: bool,
        error_kind: ErrorKind,
    ) {
        if self.shared.bus.wants(Kinds::TASKS) {
            self.events.push(Event::TaskFailed {
                task: job.id,
                agent: worker,
                attempt: job.attempt,
                error: error.clone(),
                retry,
            });
            if !retry {
                // A fatal error ends a task as failed even on its last attempt.
                let fatal = matches!(error_kind, ErrorKind::Fatal);
                self.events.push(Event::TaskGaveUp {
                    task: job.id,
                    dead_lettered: !fatal,
                });
            }
        }
    }

    /// A task reached a terminal state. Whoever waits for it hears so once the turn's records
    /// are durable.
    fn complete(
        &mut self,
        job: Job,
        state: TaskState,
        output: Option<Bytes>,
        error: Option<Arc<str>>,
        agent: Option<AgentId>,
    ) {
        let latency = job.submitted.elapsed();
        self.metrics.latency.record(latency);
        self.turn.latency[crate::handle::Latencies::bucket(latency)] += 1;
        self.turn.permits += u64::from(job.permit);
        if let Some(waiter) = job.waiter {
            let completion = Completion {
                id: job.id,
                state,
                output,
                error,
                attempts: job.attempt,
                agent,
                latency,
            };
            self.completions.push((waiter, completion));
        }
    }

    /// Freed workers take queued tasks; the backlog takes the room that frees.
    fn settle(&mut self) {
        let mut misses = 0;
        loop {
            while let Some(worker) = self.freed.pop() {
                let (load, capacity) = self.tree.load(worker);
                if load >= capacity {
                    continue;
                }
                let supervisor = self.tree.parent(worker).expect("workers have supervisors");
                let spec = SpecMask::of(self.tree.spec(worker));
                // The whole queue is looked at: a task only this worker's spec can run must
                // not wait behind tasks for other specs.
                let next = self.queues[supervisor.index()]
                    .as_mut()
                    .and_then(|q| q.pop_matching(usize::MAX, |job| job.mask.intersects(spec)))
                    .or_else(|| self.steal(supervisor, spec));
                match next {
                    Some(job) => {
                        self.queued -= 1;
                        self.start(worker, job);
                    }
                    None if load == 0 && self.shared.bus.wants(Kinds::ACTIVITY) => {
                        self.events.push(Event::AgentIdle { agent: worker });
                    }
                    None => {}
                }
            }
            if misses >= BACKLOG_TRIES.min(self.backlog.len()) {
                break;
            }
            let Some(job) = self.backlog.pop() else { break };
            match self.route(job) {
                Ok(()) => self.queued -= 1,
                Err(job) => {
                    // No room for it yet: to the back, so the tasks behind it get their turn.
                    misses += 1;
                    let _ = self.backlog.push(job.priority, job);
                }
            }
        }
    }

    /// The periodic pass that evens out sibling supervisors' queues (see
    /// [`colony_core::rebalance`]); the idle workers of a supervisor that received tasks
    /// look at its queue when the turn settles.
    fn rebalance(&mut self) {
        let supervisor_tier = self.tree.worker_tier() - 1;
        let groups: Vec<Vec<AgentId>> = if supervisor_tier == 0 {
            vec![self.tree.roots().collect()]
        } else {
            let parents = self.tree.agents_in_tier(supervisor_tier - 1);
            parents
                .into_iter()
                .map(|p| self.tree.children(p).collect())
                .collect()
        };
        for mut siblings in groups {
            siblings.retain(|&s| !self.tree.is_down(s) && !self.tree.is_vacant(s));
            let lengths: Vec<usize> = siblings
                .iter()
                .map(|s| self.queues[s.index()].as_ref().map_or(0, |q| q.len()))
                .collect();
            let mut moved = 0;
            for m in colony_core::rebalance::plan(&lengths, self.rebalance.tolerance) {
                let (from, to) = (siblings[m.from], siblings[m.to]);
                let can_run = self.tree.mask(to);
                for _ in 0..m.count {
                    let job = self.queues[from.index()].as_mut().and_then(|q| {
                        q.pop_matching(usize::MAX, |job| job.mask.intersects(can_run))
                    });
                    let Some(job) = job else { break };
                    self.tree.dequeue(from);
                    self.tree.enqueue(to);
                    let bound = self.tree.load(to).1 as usize;
                    self.queue(to, bound).push_front(job.priority, job);
                    moved += 1;
                }
                self.freed.extend(self.tree.children(to));
            }
            if moved > 0 {
                self.turn.rebalanced += moved;
                if self.shared.bus.wants(Kinds::TASKS) {
                    let parent = self.tree.parent(siblings[0]);
                    self.events.push(Event::LoadRebalanced {
                        parent,
                        moved: moved as u32,
                    });
                }
            }
        }
    }

    /// Work stealing: `supervisor` has a worker of `spec` with nothing to do, so it takes a
    /// task that worker can run from the sibling supervisor with the longest queue, if that
    /// queue holds at least `steal_at` tasks. The task's load moves with it.
    fn steal(&mut self, supervisor: AgentId, spec: SpecMask) -> Option<Job> {
        let parent = self.tree.parent(supervisor)?;
        let (mut victim, mut longest) = (None, self.steal_at.saturating_sub(1));
        for sibling in self.tree.children(parent) {
            let len = self.queues[sibling.index()].as_ref().map_or(0, |q| q.len());
            if sibling != supervisor && len > longest {
                (victim, longest) = (Some(sibling), len);
            }
        }
        let victim = victim?;
        let job = self.queues[victim.index()]
            .as_mut()?
            .pop_matching(usize::MAX, |job| job.mask.intersects(spec))?;
        self.tree.dequeue(victim);
        self.tree.enqueue(supervisor);
        self.turn.steals += 1;
        if self.shared.bus.wants(Kinds::TASKS) {
            self.events.push(Event::WorkStolen {
                task: job.id,
                from: victim,
                to: supervisor,
            });
        }
        Some(job)
    }

    /// Ends the turn: hands its records to the journal, then, once they are durable, returns
    /// the permits of ended tasks, counts them and tells their waiters.
    fn publish(&mut self) {
        if !self.events.is_empty() {
            self.shared.bus.publish(std::mem::take(&mut self.events));
        }
        let t = std::mem::take(&mut self.turn);
        let c = &self.shared.counters;
        let m = &self.metrics;
        for (bucket, n) in c.latency.iter().zip(t.latency) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        bump(&c.attempts, &m.attempts, t.attempts);
        bump(&c.retries, &m.retries, t.retries);
        bump(&c.steals, &m.steals, t.steals);
        bump(&c.rebalanced, &m.rebalanced, t.rebalanced);
        let restarts = t.restarts_crash + t.restarts_timeout;
        if restarts > 0 {
            c.restarts.fetch_add(restarts, Relaxed);
            m.restarts_crash.increment(t.restarts_crash);
            m.restarts_timeout.increment(t.restarts_timeout);
        }
        bump(&c.escalations, &m.escalations, t.escalations);
        bump(&c.health_failures, &m.health_failures, t.health_failures);
        if t.quarantined > 0 {
            c.quarantined.fetch_add(t.quarantined, Relaxed);
        }
        if t.alerts > 0 {
            m.alerts.increment(t.alerts);
        }
        let running = self.running.len() as u64;
        c.queued.store(self.queued, Relaxed);
        c.running.store(running, Relaxed);
        c.agents.store(self.tree.len() as u64, Relaxed);
        c.capacity.store(self.capacity, Relaxed);
        m.queued.set(self.queued as f64);
        m.running.set(running as f64);
        m.succeeded.increment(t.succeeded);
        m.failed.increment(t.failed);
        m.dead_lettered.increment(t.dead_lettered);
        m.cancelled.increment(t.cancelled);
        self.publish_down(false);
        let release = Release {
            shared: self.shared.clone(),
            succeeded: t.succeeded,
            failed: t.failed,
            dead_lettered: t.dead_lettered,
            cancelled: t.cancelled,
            permits: t.permits,
            completions: std::mem::take(&mut self.completions),
        };
        if self.records.is_empty() {
            release.run(&Ok(()));
            return;
        }
        let mut durable = self
            .shared
            .journal
            .record(std::mem::take(&mut self.records));
        match durable.try_result() {
            Some(result) => release.run(&result),
            None => {
                let (commit, started) = (self.metrics.commit.clone(), Instant::now());
                self.flushing.push(Box::pin(async move {
                    let result = durable.await;
                    commit.record(started.elapsed());
                    release.run(&result);
                    result
                }));
            }
        }
    }
}

impl Dispatcher {
    /// Sets the gauge of agents out of service and due back, per tier: where it changed, or
    /// everywhere (`all`, so that every tier has the series).
    fn publish_down(&mut self, all: bool) {
        for (tier, name) in self.tree.tier_names().iter().enumerate() {
            let down = due_back(&self.tree, self.retired.len(), tier);
            if let Some(published) = self.down_published.get_mut(tier)
                && (all || *published != down)
            {
                Metrics::tier_down(name, down);
                *published = down;
            }
        }
    }
}

/// What a turn tells the outside once its records are durable.
struct Release {
    shared: Arc<Shared>,
    succeeded: u64,
    failed: u64,
    dead_lettered: u64,
    cancelled: u64,
    permits: u64,
    completions: Vec<(oneshot::Sender<Completion>, Completion)>,
}

impl Release {
    /// `journaled` is how the turn's records fared. If the journal could not record them,
    /// waiters still hear how their tasks ended (the work did happen) and why the journal
    /// does not say so: it will recover those tasks at the next start.
    fn run(self, journaled: &Result<(), colony_journal::Error>) {
        let finished = self.succeeded + self.failed + self.dead_lettered + self.cancelled;
        if let Err(error) = journaled {
            tracing::error!(%error, "The journal could not record a turn's transitions.");
        }
        for (waiter, mut completion) in self.completions {
            if let Err(error) = journaled {
                completion.error = Some(format!("not recorded in the journal: {error}").into());
            }
            let _ = waiter.send(completion);
        }
        if finished == 0 {
            return;
        }
        let c = &self.shared.counters;
        c.succeeded.fetch_add(self.succeeded, Relaxed);
        c.failed.fetch_add(self.failed, Relaxed);
        c.dead_lettered.fetch_add(self.dead_lettered, Relaxed);
        c.cancelled.fetch_add(self.cancelled, Relaxed);
        self.shared.permits.add_permits(self.permits as usize);
        self.shared.drained.notify_waiters();
    }
}

/// Marks the runtime stopped when the dispatcher's loop ends, however it ends.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Relaxed);
        self.0.permits.close();
        self.0.drained.notify_waiters();
    }
}

/// Adds a turn's count to a counter callers read and to its metric.
fn bump(counter: &AtomicU64, metric: &metrics::Counter, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Relaxed);
        metric.increment(n);
    }
}

/// The next tick of the rebalancing interval; never, when there is none.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

mod cancel;
pub use cancel::Cancelled;
mod health;
mod resize;
mod supervise;
#[cfg(test)]
mod tests;
mod thread;
