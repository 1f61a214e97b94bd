//! What the callers' side hands the dispatcher's loop, and what the loop shows it back: the
//! commands, the jobs (accepted tasks on their way through the hierarchy), the live view a
//! query reads, and what a cancellation did. `Handle` builds these; the loop's parts consume
//! them.

use crate::shared::Waiter;
use bytes::Bytes;
use colony_core::{
    AgentId, TaskId,
    health::{Health, HealthState},
    task::{Priority, TaskSpec},
    tree::{LiveTree, SpecMask},
};
use colony_journal::Durable;
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

pub(crate) enum Command {
    /// Jobs the journal already holds.
    Submit(Vec<Job>),
    /// Jobs whose acceptance the journal has yet to make durable: they are dispatched once it
    /// is, even if the submitter stopped waiting, and dropped (with their permits returned)
    /// if it fails. Jobs `heard_only_by_submitter` (a decision's ballots, which only its
    /// vote counts) are cancelled instead when the submitter stopped waiting: nobody would
    /// hear of them.
    SubmitPending {
        jobs: Vec<Job>,
        durable: Durable,
        ack: oneshot::Sender<Result<(), colony_journal::Error>>,
        heard_only_by_submitter: bool,
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
    /// Voters of a decided outcome, counted for the winner (`true`) or dissenting: their
    /// reputations hear of it.
    Agreed(Vec<(AgentId, bool)>),
    /// Bring `pool` to `agents` agents: retire, or reinstate and spawn, in one turn.
    SetSize {
        pool: u8,
        agents: u32,
        reply: oneshot::Sender<Resized>,
    },
    Stop,
}

/// What [`Handle::set_pool_size`](crate::Handle::set_pool_size) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resized {
    /// The pool's agents now.
    pub agents: u64,
    pub retired: u32,
    /// Retired agents brought back into service.
    pub reinstated: u32,
    pub spawned: u32,
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
            Command::Agreed(votes) => write!(f, "Agreed({} voters)", votes.len()),
            Command::SetSize { pool, agents, .. } => write!(f, "SetSize({pool}, {agents})"),
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
    pub(super) id: TaskId,
    /// The pools this attempt may run on: `eligible`, narrowed by a failover policy.
    pub(super) mask: SpecMask,
    /// Every pool that can run the task.
    pub(super) eligible: SpecMask,
    pub(super) priority: Priority,
    /// Number of the latest attempt started: the lease. Counts from 0 for a new task.
    pub(super) attempt: u32,
    /// The highest attempt number this task may reach before it is dead-lettered.
    pub(super) last_attempt: u32,
    pub(super) timeout: Duration,
    pub(super) payload: Bytes,
    pub(super) submitted: Instant,
    pub(super) waiter: Option<Waiter>,
    /// Whether the task holds an admission permit, returned when it ends. Tasks recovered
    /// from the journal at start hold none: they were admitted by an earlier process.
    pub(super) permit: bool,
    /// Kept while no pool with agents can run the task (a recovered task whose pool has
    /// none yet), to find its pools again when agents are spawned.
    pub(super) requirement: Option<Box<colony_core::task::Requirement>>,
    /// Attempts started in this process.
    pub(super) tries: u32,
    /// The agent of the last attempt, which a retry avoids when another can take it.
    pub(super) last_agent: Option<AgentId>,
    /// When the last attempt failed, while a retry is pending: to time the redispatch.
    pub(super) failed_at: Option<Instant>,
    /// Attempts of this task that crashed or hung their agent.
    pub(super) faults: u32,
    /// The one worker that may run it: a decision's ballot, which must come from the voter
    /// seated for it. Never stolen or rebalanced; cancelled if the worker leaves its pool.
    pub(super) pin: Option<AgentId>,
    /// Marked hard: routed to the best-reputed worker with room.
    pub(super) hard: bool,
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
            hard: spec.requirement.hard,
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
            pin: None,
        }
    }

    pub(crate) fn new(
        id: TaskId,
        spec: TaskSpec,
        mask: SpecMask,
        submitted: Instant,
        waiter: Option<Waiter>,
    ) -> Self {
        Self {
            hard: spec.requirement.hard,
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
            pin: None,
        }
    }
}

impl Job {
    /// The same job, to be run by `worker` only.
    pub(crate) fn pinned(self, worker: AgentId) -> Self {
        Self {
            pin: Some(worker),
            ..self
        }
    }

    /// Tells `waiter` how the task ended.
    pub(crate) fn waited_by(self, waiter: Waiter) -> Self {
        Self {
            waiter: Some(waiter),
            ..self
        }
    }
}

/// The live hierarchy as a query inside the dispatcher sees it.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub tree: &'a LiveTree,
    pub(super) watch: &'a super::health::Watch,
    pub(super) health: &'a [Health],
    pub(super) unhealthy: [u64; 3],
    pub(super) retired: &'a HashSet<AgentId>,
    pub(super) attempts: &'a super::attempts::Attempts,
}

/// Agents of `tier` out of service and due back: those down, less the workers retired
/// (down for good).
pub(super) fn due_back(tree: &LiveTree, retired: usize, tier: usize) -> u64 {
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
    pub fn health(&self, agent: AgentId) -> HealthState {
        self.health
            .get(agent.index())
            .map_or(HealthState::Healthy, Health::state)
    }

    /// Agents of `tier` out of service now and due back (retired ones are not), kept as they
    /// go down and come back.
    pub fn down(&self, tier: usize) -> u64 {
        due_back(self.tree, self.retired.len(), tier)
    }

    /// A worker's error rate (0..1) and its response-time baseline, once it has answered an
    /// attempt outside `handle`.
    pub fn error_rate_and_baseline(&self, agent: AgentId) -> Option<(f64, Option<Duration>)> {
        self.health
            .get(agent.index())
            .filter(|h| h.average().is_some())
            .map(|h| (h.error_rate(), h.baseline()))
    }

    /// Whether `worker` is in its pool and in service: not retired, down or sidelined.
    pub(crate) fn in_service(&self, worker: AgentId) -> bool {
        !self.retired.contains(&worker)
            && !self.tree.is_down(worker)
            && !self.tree.is_sidelined(worker)
    }

    /// Whether the agents of `pool` answer inline (`Agent::answers_inline`).
    pub(crate) fn answers_inline(&self, pool: u8) -> bool {
        self.attempts.answers_inline(pool)
    }

    /// Asks `worker`, whose pool answers inline, for its answer to `payload` now, for
    /// decision `task` (see `Attempts::answer_inline`).
    pub(crate) fn answer_inline(
        &self,
        worker: AgentId,
        task: colony_core::TaskId,
        payload: &bytes::Bytes,
    ) -> Result<bytes::Bytes, String> {
        let pool = self.tree.spec(worker);
        self.attempts.answer_inline(worker, pool, task, payload)
    }

    /// A worker's reputation: its quality score from its checks and its agreement with
    /// decided outcomes (the prior until it has answered or voted).
    pub fn reputation(&self, agent: AgentId) -> colony_core::reputation::Reputation {
        self.watch.reputation(agent)
    }

    /// A worker's circuit breaker: `closed` unless health took it out of rotation (`open`)
    /// or it is on probation.
    pub fn breaker(&self, agent: AgentId) -> colony_core::breaker::BreakerState {
        self.watch.breaker(agent)
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

/// What a cancellation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cancelled {
    /// The task was waiting: it is cancelled now.
    Now,
    /// The task was running, waiting out a retry's backoff, or on its way in: its attempt is
    /// being stopped, and the task ends cancelled, unless that attempt succeeds first.
    Stopping,
}
