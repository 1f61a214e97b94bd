//! The dispatcher: one event loop that owns the live tree, the supervisors' queues and every
//! running attempt.
//!
//! One turn of the loop takes up to 256 commands (submissions, spawns, queries) and whatever
//! attempts have ended, then lets freed workers take queued tasks, routes what waited for room,
//! and publishes the turn's journal records, events, counters and returned permits in one go.
//! An attempt that finishes inside [`Agent::handle`](colony_agents::Agent::handle) never
//! leaves the loop: a no-op task costs a route, two journal records and no allocation beyond
//! its job.
//!
//! The loop's state is split by what owns it, one module each:
//!
//! | part | owns | module |
//! |---|---|---|
//! | the live tree | agents, parents, loads, who is down | `colony_core::tree::LiveTree` |
//! | placement | supervisors' queues, the backlog: route, steal, rebalance | [`placement`] |
//! | attempts | running attempts, agents' switches, retries' backoff | [`attempts`] |
//! | supervision | incarnations, restart engines, restarts' backoff, retired workers | [`supervise`] |
//! | health | workers' health, the heartbeat board, the sweep | [`health`] |
//! | outbox | the turn's records, events, counters and completions | [`outbox`] |
//!
//! A part's own methods borrow only that part (and, passed in, the tree or the outbox).
//! What crosses parts (a task's path from route to end, an agent's stop and restart, a spawn,
//! a cancellation, a resize) is a method of [`Dispatcher`] in the module of that flow.
//! The decisions (where a task goes, whether it retries or is dead-lettered or quarantined,
//! after what backoff, where a retry fails over to, which sibling to steal from, which agents
//! restart) are `colony-core`'s sans-IO engines.

use crate::{
    Pool, RuntimeOptions,
    events::{Event, Kinds},
    shared::{Counters, PoolCounters, Shared},
    spawner::Spawner,
};
use attempts::{Attempts, Ended, Finished, Next, PoolHandler};
use bytes::Bytes;
use colony_agents::{Beats, Error as AgentError};
use colony_core::{
    AgentId, TaskId,
    attempt::{Decision, End, Policy, Tally},
    task::TaskState,
    tree::{LiveTree, SpecMask},
};
use colony_journal::{Journal, Record};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use health::Watch;
use outbox::{Gauges, Outbox};
use placement::{Placement, Routed};
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
use supervise::{StopKind, Supervision};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// Commands and ended attempts handled per turn of the loop.
const BATCH: usize = 256;
/// One task in this many has its dispatch latency recorded.
const DISPATCH_SAMPLE: u64 = 16;
/// Workers with room a hard task's route compares at most: the walk stays bounded on a tree
/// of a million workers.
const HARD_BOUND: usize = 1_024;

/// A submission awaiting its journal write: the write's result, the jobs, the submitter's
/// acknowledgement, and whether only the submitter hears of the jobs.
type Accepting =
    Pin<Box<dyn Future<Output = (Result<(), colony_journal::Error>, Vec<Job>, Ack, bool)> + Send>>;
type Ack = oneshot::Sender<Result<(), colony_journal::Error>>;

/// Resolves once the dispatcher's loop has ended (or was dropped with its runtime).
pub(crate) type LoopEnded = oneshot::Receiver<()>;

/// Builds the shared state and starts the loop: on a thread of its own when the caller's
/// runtime is multi-threaded (see [`thread`]), as a task on a current-thread runtime, whose
/// one thread everything shares anyway (and whose paused clock tests rely on).
pub(crate) fn start(
    options: &RuntimeOptions,
    pools: &[Pool],
    tree: LiveTree,
    journal: Arc<dyn Journal>,
    bus: crate::events::EventBus,
) -> (Arc<Shared>, LoopEnded) {
    let (inbox, commands) = mpsc::unbounded_channel();
    let (control, controls) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        inbox,
        control,
        stopped: AtomicBool::new(false),
        halted: Notify::new(),
        pool_agents: pools.iter().map(|_| AtomicU64::new(0)).collect(),
        pool_load: pools.iter().map(|_| PoolCounters::default()).collect(),
        scaled: SpecMask(
            pools
                .iter()
                .enumerate()
                .filter(|(_, p)| p.scaling.is_some())
                .fold(0, |m, (i, _)| m | 1 << i),
        ),
        epoch: tokio::time::Instant::now(),
        next_id: Mutex::new(journal.next_task_id().0),
        journal,
        permits: Semaphore::new(0),
        permit_debt: AtomicU64::new(0),
        specs: pools.iter().map(|p| p.spec.clone()).collect(),
        max_payload: options.max_payload,
        counters: Counters::default(),
        drained: Notify::new(),
        bus,
        messages: crate::messages::Bus::new(options.messages.clone()),
        timings: Mutex::new(crate::shared::Timings::default()),
    });
    // Agents the plan placed already have ids: messages to them are taken from now on.
    shared.messages.set_agents(tree.len() as u64);
    // Each pool's backend gets the bus before any task, for agents that read and send.
    let mail: Arc<dyn colony_agents::Mail> = Arc::new(shared.messages.clone());
    for pool in pools.iter() {
        pool.agent.attach_mail(mail.clone());
    }
    let handlers = pools
        .iter()
        .map(|p| PoolHandler {
            agent: p.agent.clone(),
            concurrency: p.spec.concurrency,
            failover: p.spec.failover,
        })
        .collect();
    let dispatcher = Dispatcher {
        place: Placement::new(
            tree.len(),
            pools.len(),
            options.strategy,
            options.steal_at,
            options.rebalance,
        ),
        attempts: Attempts::new(handlers, options.max_output, mail),
        supervision: Supervision::new(
            options.supervision,
            tree.tier_names()[..tree.worker_tier()]
                .iter()
                .map(|name| {
                    options
                        .supervision_tiers
                        .get(&**name)
                        .map_or(options.supervision, |o| o.over(options.supervision))
                })
                .collect(),
            tree.len(),
        ),
        watch: Watch::new(
            options.health,
            options.breaker,
            Arc::new(Beats::new(tokio::time::Instant::now())),
        ),
        out: Outbox::new(shared.clone(), tree.tier_names().len(), pools.len()),
        freed: Vec::new(),
        trim_due: false,
        accepting: FuturesUnordered::new(),
        pending: Vec::new(),
        retry: options.retry.policy(),
        rng: SmallRng::seed_from_u64(options.seed),
        hierarchy_recorded: false,
        capacity: 0,
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
    (shared, ended_rx)
}

struct Dispatcher {
    /// The live tree: who reports to whom, and the load and room of every subtree. Every part
    /// reads it; placement, supervision and spawning change it.
    tree: LiveTree,
    /// One seeded stream for every random choice (routes, retry jitter, restart jitter), so a
    /// run is reproducible from its seed.
    rng: SmallRng,
    place: Placement,
    attempts: Attempts,
    supervision: Supervision,
    watch: Watch,
    out: Outbox,
    /// Workers that ended an attempt this turn or came into service: they may take a queued
    /// task when the turn settles.
    freed: Vec<AgentId>,
    /// A retired worker was left with nothing to run: the tree's end may be trimmed when the
    /// turn settles (see [`Dispatcher::trim`]).
    trim_due: bool,
    /// Submissions waiting for the journal to make them durable.
    accepting: FuturesUnordered<Accepting>,
    /// First and last task id of each of those, for cancellation to find them.
    pending: Vec<(TaskId, TaskId)>,
    /// What becomes of a task after an attempt ends (from [`crate::RetryOptions`]).
    retry: Policy,
    /// Whether this process has recorded its hierarchy in the journal yet.
    hierarchy_recorded: bool,
    /// Tasks the tree holds at once; permits handed out so far.
    capacity: u64,
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
        let every = self.place.rebalance.every;
        let mut rebalance = (!every.is_zero()).then(|| interval(every));
        let mut sweep = Some(interval(self.watch.options.heartbeat));
        // Reputations an earlier process kept: read once, on the dispatcher's own thread,
        // before the first spawn.
        match self.shared.journal.reputations() {
            Ok(rows) => {
                self.watch.restoring(rows);
                self.watch.restore(&self.tree, 0, self.tree.len());
            }
            Err(error) => {
                tracing::warn!(%error, "Reputations could not be read: every agent starts at the prior.");
            }
        }
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
                next = self.attempts.next() => match next {
                    Next::Finished(finished) => self.finished(finished),
                    Next::Due(job) => self.due(job),
                },
                () = next_tick(&mut rebalance), if rebalance.is_some() => {
                    self.rebalance();
                }
                restart = self.supervision.next_restart() => {
                    self.restart(restart);
                }
                () = next_tick(&mut sweep) => {
                    self.sweep();
                }
                Some((result, jobs, ack, only)) = self.accepting.next(), if !self.accepting.is_empty() => {
                    self.accepted(result, jobs, ack, only);
                }
                Some(result) = self.out.flushed(), if self.out.is_flushing() => {
                    outbox::log_flushed(result);
                }
            }
            while let Ok(command) = controls.try_recv() {
                if !self.command(command) {
                    break 'turns;
                }
            }
            for _ in 0..BATCH {
                match self.attempts.try_finished() {
                    Some(finished) => self.finished(finished),
                    None => break,
                }
            }
            while let Some(Some((result, jobs, ack, only))) = self.accepting.next().now_or_never() {
                self.accepted(result, jobs, ack, only);
            }
            while let Some(job) = self.attempts.try_due() {
                self.due(job);
            }
            self.out.drain_flushed();
            if rebalance.is_some() && next_tick(&mut rebalance).now_or_never().is_some() {
                self.rebalance();
            }
            while let Some(restart) = self.supervision.try_restart() {
                self.restart(restart);
            }
            if next_tick(&mut sweep).now_or_never().is_some() {
                self.sweep();
            }
            self.settle();
            self.publish();
        }
        self.save_reputations();
        self.publish();
    }

    /// Handles one command; `false` to stop.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(jobs) => {
                for job in jobs {
                    self.out.arrived(&job);
                    self.route_or_wait(job);
                }
            }
            Command::SubmitPending {
                jobs,
                durable,
                ack,
                heard_only_by_submitter,
            } => {
                if let (Some(first), Some(last)) = (jobs.first(), jobs.last()) {
                    self.pending.push((first.id, last.id));
                }
                self.accepting.push(Box::pin(async move {
                    (durable.await, jobs, ack, heard_only_by_submitter)
                }));
            }
            Command::Spawn { pool, count, reply } => {
                let first = self.spawn(pool, count);
                let _ = reply.send(first);
            }
            Command::Inspect(query) => {
                // A panicking query drops its reply channel; the caller hears of it.
                let live = Live {
                    tree: &self.tree,
                    watch: &self.watch,
                    health: self.watch.health(),
                    unhealthy: self.watch.unhealthy(),
                    retired: self.supervision.retired(),
                    attempts: &self.attempts,
                };
                let _ = catch_unwind(AssertUnwindSafe(|| query(&live)));
            }
            Command::Cancel { task, reply } => {
                let _ = reply.send(self.cancel(task));
            }
            Command::Kill(agent, at) => self.kill(agent, at),
            Command::Agreed(votes) => self.watch.agreed(self.tree.len(), &votes),
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
            Command::SetSize {
                pool,
                agents,
                reply,
            } => {
                let _ = reply.send(self.set_size(pool, agents));
            }
            Command::Stop => return false,
        }
        true
    }

    /// A submission the journal has now made durable, or failed to. Jobs that only their
    /// submitter would hear of end cancelled if it stopped waiting (see
    /// [`Command::SubmitPending`]).
    fn accepted(
        &mut self,
        result: Result<(), colony_journal::Error>,
        jobs: Vec<Job>,
        ack: Ack,
        heard_only_by_submitter: bool,
    ) {
        if let Some(first) = jobs.first() {
            self.pending.retain(|&(f, _)| f != first.id);
        }
        match result {
            Ok(()) => {
                self.shared
                    .counters
                    .accepted
                    .fetch_add(jobs.len() as u64, Relaxed);
                crate::metrics::Metrics::accepted(jobs.len());
                let unheard = heard_only_by_submitter && ack.is_closed();
                for job in jobs {
                    if unheard {
                        self.attempts.ask_cancel(job.id);
                    }
                    self.out.arrived(&job);
                    self.route_or_wait(job);
                }
                let _ = ack.send(Ok(()));
            }
            Err(error) => {
                self.shared.return_permits(jobs.len());
                for job in &jobs {
                    self.attempts.cancel_asked(job.id);
                }
                let _ = ack.send(Err(error));
            }
        }
    }

    /// A retry's backoff is over.
    fn due(&mut self, job: Job) {
        self.place.tally(job.mask, false);
        self.route_or_wait(job);
    }

    /// Routes `job` and starts it if it found an idle worker, or puts it at the back of the
    /// backlog when nothing has room for it.
    fn route_or_wait(&mut self, mut job: Job) {
        if self.attempts.cancel_asked(job.id) {
            self.cancelled(job, None);
            return;
        }
        if let Some(failed) = job.failed_at.take() {
            self.shared.time(|t| &mut t.redispatch, failed.elapsed());
        }
        match self.route(job) {
            Ok(Routed::Start(worker, job)) => self.start(worker, job),
            Ok(Routed::Queued) => {}
            Ok(Routed::Unrunnable(job)) => self.unrunnable(job),
            Err(job) => self.place.wait(job),
        }
    }

    /// Sends `job` down the tree ([`Placement::route`]); a task marked hard goes first to the
    /// best-reputed worker with room for it (its last agent, on a retry, only if no other
    /// has room), and queues like any task when none has.
    #[allow(clippy::result_large_err)]
    fn route(&mut self, job: Job) -> Result<Routed, Job> {
        if job.hard && job.pin.is_none() {
            let watch = &self.watch;
            let avoid = job.last_agent;
            let score = |a: AgentId| {
                if Some(a) == avoid {
                    -1.0
                } else {
                    watch.reputation(a).score()
                }
            };
            if let Some(worker) = self.tree.best_worker(job.mask, HARD_BOUND, score)
                && let Some(supervisor) = self.tree.parent(worker)
            {
                self.tree.enqueue(supervisor);
                return Ok(Routed::Start(worker, job));
            }
        }
        self.place
            .route(&mut self.tree, &mut self.rng, &mut self.out, job)
    }

    /// Starts the next attempt of `job` on `worker`, whose supervisor already counts it.
    fn start(&mut self, worker: AgentId, mut job: Job) {
        // Sampled: a clock read and a histogram update on every task would cost the hot path.
        if job.attempt == 0 && job.id.0.is_multiple_of(DISPATCH_SAMPLE) {
            self.out.metrics.dispatch.record(job.submitted.elapsed());
        }
        job.attempt += 1;
        job.tries += 1;
        job.last_agent = Some(worker);
        self.out.turn.attempts += 1;
        self.tree.start(worker);
        let pool = self.tree.spec(worker);
        self.out.pools[pool as usize].busy += 1;
        self.out.record(Record::Started {
            task: job.id,
            attempt: job.attempt,
            agent: worker,
        });
        if self.tree.load(worker).0 == 1 {
            self.out
                .event(Kinds::ACTIVITY, || Event::AgentActivated { agent: worker });
        }
        let (task, attempt) = (job.id, job.attempt);
        self.out.event(Kinds::TASKS, || Event::TaskStarted {
            task,
            agent: worker,
            attempt,
        });
        let incarnation = self.supervision.incarnation(worker);
        let beats = &self.watch.beats;
        if let Some((job, ended)) = self.attempts.launch(worker, pool, incarnation, job, beats) {
            self.ended_after(worker, job, ended, None, true);
        }
    }

    fn finished(&mut self, f: Finished) {
        self.out.metrics.attempt_duration.record(f.elapsed);
        let current = f.incarnation == self.supervision.incarnation(f.worker);
        self.ended_after(f.worker, f.job, f.ended, Some(f.elapsed), current);
    }
    /// Carries out what [`Policy::decide`](colony_core::attempt::Policy::decide) says of the
    /// attempt `job.attempt` that `worker` ran, for `elapsed` outside `handle`: commit, fail,
    /// cancel, retry after a backoff, dead-letter or quarantine. `current` says whether the
    /// agent that ran it is still in service: a crash of an incarnation already replaced is no
    /// news to its supervisor.
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
            Ended::Outcome(Ok(output)) if output.len() > self.attempts.max_output => {
                Ended::Outcome(Err(AgentError::fatal(format!(
                    "output of {} bytes exceeds the limit of {} bytes",
                    output.len(),
                    self.attempts.max_output
                ))))
            }
            other => other,
        };
        self.tree.finish(worker, micros);
        self.freed.push(worker);
        // Retired workers are down: the set is looked up only for those.
        self.trim_due |= self.tree.load(worker).0 == 0
            && self.tree.is_down(worker)
            && self.supervision.retired().contains(&worker);
        let tally = &mut self.out.pools[self.tree.spec(worker) as usize];
        tally.busy -= 1;
        tally.ended += 1;
        // Time spent outside `handle`: what one agent's service rate is measured from.
        tally.busy_micros += elapsed.map_or(0, |e| u64::try_from(e.as_micros()).unwrap_or(0));
        let asked = self.attempts.cancel_asked(job.id);
        // The attempt ended before it saw the cancellation: its agent's switch forgets it.
        if asked
            && !matches!(ended, Ended::Cancelled)
            && let Some(switch) = self.attempts.switch(worker)
        {
            switch.forget(job.id);
        }
        // Health follows attempts that left `handle`, where a response time means something;
        // one finished inside it answered at once, and tracking it would tax the hot path.
        if let Some(took) = elapsed
            && current
            && !matches!(ended, Ended::Cancelled)
        {
            let ok = matches!(ended, Ended::Outcome(Ok(_)));
            self.observe(worker, took, ok);
        }
        // The output of a success, or the cause of anything else.
        let (end, result): (End, Result<Bytes, Arc<str>>) = match ended {
            Ended::Outcome(Ok(output)) => (End::Succeeded, Ok(output)),
            Ended::Outcome(Err(AgentError::Fatal(error))) => (End::Fatal, Err(error)),
            Ended::Outcome(Err(AgentError::Retryable(error))) => (End::Retryable, Err(error)),
            Ended::Crash(message) => (
                End::Crashed,
                Err(format!("agent crashed: {message}").into()),
            ),
            Ended::TimedOut(after) => {
                self.time_hang(elapsed);
                let cause = format!("attempt timed out after {after:?}").into();
                (End::TimedOut, Err(cause))
            }
            Ended::Cancelled => (End::Cancelled, Err("cancelled".into())),
            Ended::Stopped(stop) => {
                let end = match stop.kind {
                    StopKind::Killed => {
                        self.shared.time(|t| &mut t.detection, stop.at.elapsed());
                        End::Killed
                    }
                    StopKind::Silent => {
                        self.time_hang(elapsed);
                        End::Silent
                    }
                    StopKind::Supervisor => End::Stopped,
                };
                (end, Err(stop.cause))
            }
        };
        let tally = Tally {
            attempt: job.attempt,
            last_attempt: job.last_attempt,
            tries: job.tries,
            faults: job.faults,
        };
        let verdict = self.retry.decide(tally, end, asked, &mut self.rng);
        job.faults = verdict.faults;
        // A crash or a hang counts against the agent whatever becomes of the task, for its
        // supervisor to act on.
        if let Some(exit) = verdict.exit
            && current
            && let Err(cause) = &result
        {
            let (cause, at) = (cause.clone(), Instant::now());
            self.supervise(worker, exit, cause, StopKind::Supervisor, at);
        }
        let (task, attempt) = (job.id, job.attempt);
        let error = match result {
            Ok(output) if verdict.decision == Decision::Commit => {
                self.out.record(Record::Committed {
                    task,
                    attempt,
                    output: output.clone(),
                });
                self.out.event(Kinds::TASKS, || Event::TaskSucceeded {
                    task,
                    agent: worker,
                    attempt,
                });
                self.out.turn.succeeded += 1;
                let state = TaskState::Succeeded;
                self.out
                    .complete(job, state, Some(output), None, Some(worker));
                return;
            }
            // The engine commits every success and nothing else: neither arm is taken.
            Ok(_) => "succeeded, yet not committed".into(),
            Err(error) => error,
        };
        match verdict.decision {
            Decision::Cancel => self.cancelled(job, Some(worker)),
            // A commit without an output fails rather than vanish (see above: never taken).
            Decision::Fail | Decision::Commit => {
                self.failed(worker, &job, &error, TaskState::Failed);
                self.out.turn.failed += 1;
                let state = TaskState::Failed;
                self.out
                    .complete(job, state, None, Some(error), Some(worker));
            }
            Decision::Retry { after } => {
                self.failed(worker, &job, &error, TaskState::Queued);
                self.out.turn.retries += 1;
                if job.pin.is_some() {
                    // A pinned task retries on its worker, or nowhere once that has left its
                    // pool: its place (and id) may be another agent's by the time a backoff
                    // ends.
                    if self.supervision.retired().contains(&worker) {
                        self.unrunnable(job);
                        return;
                    }
                } else {
                    let pool = self.tree.spec(worker);
                    // A backup must have agents now: one at zero would keep the retry waiting.
                    let staffed = self.shared.with_agents();
                    job.mask =
                        self.attempts
                            .pool(pool)
                            .failover
                            .choose(pool, job.eligible, staffed);
                }
                job.failed_at = Some(Instant::now());
                if after.is_zero() {
                    self.route_or_wait(job);
                } else {
                    self.place.tally(job.mask, true);
                    self.attempts.delay(job, after);
                }
            }
            Decision::DeadLetter | Decision::Quarantine => {
                self.failed(worker, &job, &error, TaskState::DeadLettered);
                self.out.turn.dead_lettered += 1;
                let error = if verdict.decision == Decision::Quarantine {
                    self.out.turn.quarantined += 1;
                    format!(
                        "quarantined as poison: {} attempts crashed or hung their agents; last error: {error}",
                        job.faults
                    )
                } else {
                    format!("dead-lettered after attempt {attempt}; last error: {error}")
                };
                let state = TaskState::DeadLettered;
                self.out
                    .complete(job, state, None, Some(error.into()), Some(worker));
            }
        }
    }

    /// Samples how long a hung attempt ran before the runtime gave up on it.
    fn time_hang(&self, elapsed: Option<Duration>) {
        if let Some(elapsed) = elapsed {
            self.shared.time(|t| &mut t.hang_detection, elapsed);
        }
    }

    /// Records that the attempt `job.attempt` on `worker` failed with `error` and what the
    /// task does next (`Failed`, `Queued` for a retry, `DeadLettered`), and says so to
    /// subscribers.
    fn failed(&mut self, worker: AgentId, job: &Job, error: &Arc<str>, next: TaskState) {
        let (task, attempt) = (job.id, job.attempt);
        self.out.record(Record::Failed {
            task,
            attempt,
            error: error.clone(),
            next,
        });
        let retry = next == TaskState::Queued;
        self.out.event(Kinds::TASKS, || Event::TaskFailed {
            task,
            agent: worker,
            attempt,
            error: error.clone(),
            retry,
        });
        if !retry {
            // A fatal error ends a task as failed even on its last attempt.
            let dead_lettered = next == TaskState::DeadLettered;
            self.out.event(Kinds::TASKS, || Event::TaskGaveUp {
                task,
                dead_lettered,
            });
        }
    }

    /// Freed workers take queued tasks; the backlog takes the room that frees.
    fn settle(&mut self) {
        self.apply_acts();
        let mut misses = 0;
        loop {
            while let Some(worker) = self.freed.pop() {
                let (load, capacity) = self.tree.load(worker);
                if load >= capacity {
                    continue;
                }
                match self.place.next_for(&mut self.tree, &mut self.out, worker) {
                    Some(job) => {
                        self.start(worker, job);
                        // A worker of several slots back from a restart takes each task
                        // pinned to it while it has room.
                        if self.place.has_pinned(worker) {
                            self.freed.push(worker);
                        }
                    }
                    None if load == 0 => {
                        self.out
                            .event(Kinds::ACTIVITY, || Event::AgentIdle { agent: worker });
                    }
                    None => {}
                }
            }
            let Some(job) = self.place.backlog_front(misses) else {
                break;
            };
            match self.route(job) {
                Ok(Routed::Start(worker, job)) => self.start(worker, job),
                Ok(Routed::Queued) => {}
                Ok(Routed::Unrunnable(job)) => self.unrunnable(job),
                Err(job) => {
                    misses += 1;
                    self.place.back_of_backlog(job);
                }
            }
        }
        if std::mem::take(&mut self.trim_due) {
            self.trim();
        }
    }

    /// The periodic pass that evens out sibling supervisors' queues; the idle workers of a
    /// supervisor that received tasks look at its queue when the turn settles.
    fn rebalance(&mut self) {
        for supervisor in self.place.rebalance(&mut self.tree, &mut self.out) {
            self.freed.extend(self.tree.children(supervisor));
        }
    }

    /// Ends the turn (see [`Outbox::publish`]).
    fn publish(&mut self) {
        let gauges = Gauges {
            waiting: self.place.waiting(),
            queued: self.place.queued(),
            running: self.attempts.running() as u64,
            capacity: self.capacity,
            retired: self.supervision.retired().len(),
        };
        self.out.publish(&self.tree, gauges);
    }
}

/// Marks the runtime stopped when the dispatcher's loop ends, however it ends.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Relaxed);
        self.0.permits.close();
        self.0.drained.notify_waiters();
        self.0.halted.notify_waiters();
    }
}

/// A timer that ticks every `every` from one `every` from now, and after a stall ticks once,
/// not once per tick missed.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The next tick of an interval; never, when there is none.
async fn next_tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

mod attempts;
mod cancel;
mod command;
mod health;
mod outbox;
mod placement;
mod resize;
mod spawning;
mod supervise;
#[cfg(test)]
pub(crate) mod tests;
mod thread;

pub use command::Resized;
pub use command::{Cancelled, Live};
pub(crate) use command::{Command, Job};
