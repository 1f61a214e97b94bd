//! What the callers' side and the dispatcher's loop share: the channels into the loop, the
//! admission permits, the counters the loop publishes once per turn, and what a task's end
//! tells its waiter. Both sides depend on this module; neither depends on the other's insides.

use crate::{dispatcher::Command, events::EventBus};
use bytes::Bytes;
use colony_agents::AgentSpec;
use colony_core::{AgentId, TaskId, task::TaskState, tree::SpecMask};
use colony_journal::Journal;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::sync::{Notify, Semaphore, mpsc};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inbox: mpsc::UnboundedSender<Command>,
    /// Commands the dispatcher reads before any other: kills, which must not wait behind
    /// a backlog of submissions.
    pub(crate) control: mpsc::UnboundedSender<Command>,
    /// Set when the dispatcher's loop has ended.
    pub(crate) stopped: AtomicBool,
    /// Woken when the dispatcher's loop has ended (see [`crate::Handle::halted`]).
    pub(crate) halted: Notify,
    /// Per pool, agents spawned: a task is admitted only if some pool that may run it has any.
    pub(crate) pool_agents: Vec<AtomicU64>,
    /// Pools an autoscaler sizes: they count as having agents even at zero, since tasks for
    /// them bring them back.
    pub(crate) scaled: SpecMask,
    /// Per pool, its load as the loop last published it (see [`PoolLoad`]).
    pub(crate) pool_load: Vec<PoolCounters>,
    /// Where the loop's published instants count from.
    pub(crate) epoch: tokio::time::Instant,
    pub(crate) journal: Arc<dyn Journal>,
    /// One permit per task the hierarchy can hold (queued or running); taken at submission,
    /// returned when the task ends.
    pub(crate) permits: Semaphore,
    /// Permits withdrawn (a pool shrank) while taken by tasks: those tasks' permits are not
    /// returned when they end, until the debt is paid.
    pub(crate) permit_debt: AtomicU64,
    pub(crate) specs: Vec<AgentSpec>,
    pub(crate) max_payload: usize,
    /// The next task id, under the lock that keeps journal acceptance in id order.
    pub(crate) next_id: Mutex<u64>,
    pub(crate) counters: Counters,
    /// Woken when every accepted task has ended.
    pub(crate) drained: Notify,
    pub(crate) bus: EventBus,
    /// Messages between agents: their mailboxes, topics and teams.
    pub(crate) messages: crate::messages::Bus,
    /// Recovery timings, for benchmarks: kill to attempt ended, failure to next attempt.
    pub(crate) timings: Mutex<Timings>,
}

/// Samples of how fast the runtime reacts to faults, kept up to [`Timings::LIMIT`] each.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// From an outside kill to the end of the killed attempt.
    pub detection: Vec<Duration>,
    /// From the start of an attempt that hung to the runtime giving up on it: its timeout,
    /// or its agent's silence found by a health sweep.
    pub hang_detection: Vec<Duration>,
    /// From an agent's exit to its next incarnation in service, restart backoff included.
    pub restart: Vec<Duration>,
    /// From a failed attempt's end to its retry being dispatched again (to an agent, a
    /// supervisor's queue or the backlog), retry backoff included.
    pub redispatch: Vec<Duration>,
}

impl Timings {
    pub const LIMIT: usize = 1_000_000;

    pub(crate) fn add(samples: &mut Vec<Duration>, d: Duration) {
        if samples.len() < Self::LIMIT {
            samples.push(d);
        }
    }
}

impl Shared {
    /// The pools that may run a task with `requirement` and have agents now; only when none
    /// has, the autoscaled ones at zero that may run it (the task brings them back). A task
    /// that pools with agents can run counts in no pool at zero's demand: an untargeted
    /// stream served by a static pool must not wake an autoscaled one again and again.
    pub(crate) fn mask_for(&self, requirement: &colony_core::task::Requirement) -> SpecMask {
        let suitable = if requirement.is_any() {
            u64::MAX
        } else {
            self.specs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.satisfies(requirement))
                .fold(0u64, |m, (i, _)| m | 1 << i)
        };
        let ready = suitable & self.with_agents().0;
        SpecMask(if ready != 0 {
            ready
        } else {
            suitable & self.staffed().0
        })
    }

    /// Returns `n` admission permits (tasks ended, or a submission refused; or room back),
    /// paying a withdrawal's debt first.
    pub(crate) fn return_permits(&self, n: usize) {
        let mut n = n as u64;
        let _ = self
            .permit_debt
            .fetch_update(Relaxed, Relaxed, |debt| {
                let pay = debt.min(n);
                (pay > 0).then_some(debt - pay)
            })
            .map(|debt| n -= debt.min(n));
        if n > 0 {
            self.permits.add_permits(n as usize);
        }
    }

    /// Takes `n` admission permits away (room that left the tree): those free now at once,
    /// the rest as their tasks end.
    pub(crate) fn withdraw_permits(&self, n: u64) {
        let now = self.permits.forget_permits(n as usize) as u64;
        if n > now {
            self.permit_debt.fetch_add(n - now, Relaxed);
        }
    }

    /// The pools that have agents now.
    pub(crate) fn staffed(&self) -> SpecMask {
        SpecMask(self.with_agents().0 | self.scaled.0)
    }

    /// The pools that have agents now, autoscaled ones at zero left out: where a retry can
    /// go without waiting for a pool to come back.
    pub(crate) fn with_agents(&self) -> SpecMask {
        SpecMask(
            self.pool_agents
                .iter()
                .enumerate()
                .filter(|(_, n)| n.load(Relaxed) > 0)
                .fold(0u64, |m, (i, _)| m | 1 << i),
        )
    }

    /// Adds a sample of how fast the runtime reacted, to the series `which` picks.
    pub(crate) fn time(&self, which: fn(&mut Timings) -> &mut Vec<Duration>, d: Duration) {
        let mut timings = self.timings.lock().unwrap_or_else(|p| p.into_inner());
        Timings::add(which(&mut timings), d);
    }
}

/// Counters the dispatcher publishes once per turn of its loop.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) steals: AtomicU64,
    pub(crate) rebalanced: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) escalations: AtomicU64,
    pub(crate) quarantined: AtomicU64,
    pub(crate) health_failures: AtomicU64,
    pub(crate) sidelined: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) agents: AtomicU64,
    pub(crate) capacity: AtomicU64,
    /// Tasks ended, by latency bucket (see [`Latencies`]).
    pub(crate) latency: [AtomicU64; LATENCY_BUCKETS],
}

/// Buckets of [`Latencies`]: the last holds everything from 2^30 µs (18 minutes) up.
pub const LATENCY_BUCKETS: usize = 32;

/// How many tasks have ended, by their latency from acceptance to the end, in power-of-two
/// buckets of microseconds: bucket 0 holds latencies under 1 µs, bucket `b` those in
/// `[2^(b-1), 2^b)` µs. Counts only grow; the difference of two readings is what ended
/// between them. Cheap to keep on the hot path (one add per task), coarse by design: the
/// Prometheus histogram has the finer buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latencies(pub [u64; LATENCY_BUCKETS]);

impl Latencies {
    /// The bucket of a latency.
    pub(crate) fn bucket(latency: Duration) -> usize {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        (64 - micros.leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1) of the tasks that ended
    /// since `earlier`; `None` if none did.
    pub fn quantile_since(&self, earlier: &Latencies, q: f64) -> Option<Duration> {
        let counts: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|i| self.0[i].saturating_sub(earlier.0[i]));
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(1u64 << i));
            }
        }
        Some(Duration::from_micros(1u64 << (LATENCY_BUCKETS - 1)))
    }
}

/// Who hears how a task ended.
pub(crate) enum Waiter {
    /// The one caller waiting for this task.
    One(tokio::sync::oneshot::Sender<Completion>),
    /// The reader of a batch of tasks (a decision's ballots), which hears their ends
    /// together: the completions of one turn wake it once, not once each. Boxed: every
    /// queued job carries a waiter, and ballots are few.
    Batch(Box<BatchSender>),
}

impl Waiter {
    /// Hands the waiter its task's end. A batch's reader is not woken: the batch is returned
    /// when it needs waking, for the sender to wake it once it has sent every end of its
    /// turn (a reader woken by the first end would take that one alone, and be woken again
    /// for the next).
    pub(crate) fn send(self, completion: Completion) -> Option<Arc<Batch>> {
        match self {
            Waiter::One(tx) => {
                let _ = tx.send(completion);
                None
            }
            Waiter::Batch(mut sender) => {
                sender.sent = true;
                let batch = sender.batch.clone();
                batch.push_quietly(Ok(completion)).then_some(batch)
            }
        }
    }
}

/// The ends of a batch's tasks, handed over together: `Ok` with how a task ended, or `Err`
/// with a task whose waiter was dropped without an end (the runtime stopped).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    ended: std::sync::Mutex<Vec<Result<Completion, TaskId>>>,
    reader: futures::task::AtomicWaker,
}

impl Batch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The waiter of task `task`, one of this batch's.
    pub(crate) fn sender(self: &Arc<Self>, task: TaskId) -> Waiter {
        Waiter::Batch(Box::new(BatchSender {
            batch: self.clone(),
            task,
            sent: false,
        }))
    }

    fn push(&self, ended: Result<Completion, TaskId>) {
        if self.push_quietly(ended) {
            self.wake();
        }
    }

    /// Adds an end without waking the reader; whether the batch was empty (the reader needs
    /// waking, by [`Batch::wake`] once the rest of the turn's ends are in too).
    fn push_quietly(&self, ended: Result<Completion, TaskId>) -> bool {
        let mut all = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        all.push(ended);
        all.len() == 1
    }

    pub(crate) fn wake(&self) {
        self.reader.wake();
    }

    /// Moves the ends heard so far into `out`: ready if there were any, else the reader is
    /// woken by the next.
    pub(crate) fn poll_take(
        &self,
        cx: &mut std::task::Context<'_>,
        out: &mut std::collections::VecDeque<Result<Completion, TaskId>>,
    ) -> std::task::Poll<()> {
        self.reader.register(cx.waker());
        if self.take_now(out) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Moves the ends heard so far into `out`, without waiting; whether there were any.
    pub(crate) fn take_now(
        &self,
        out: &mut std::collections::VecDeque<Result<Completion, TaskId>>,
    ) -> bool {
        let mut all = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let any = !all.is_empty();
        out.extend(all.drain(..));
        any
    }
}

/// One task's waiter in a [`Batch`]: dropped without an end (its job dropped as the runtime
/// stops), it says so.
pub(crate) struct BatchSender {
    batch: Arc<Batch>,
    task: TaskId,
    sent: bool,
}

impl Drop for BatchSender {
    fn drop(&mut self) {
        if !self.sent {
            self.batch.push(Err(self.task));
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiter::One(_) => f.write_str("Waiter::One"),
            Waiter::Batch(b) => write!(f, "Waiter::Batch({})", b.task),
        }
    }
}

/// How a task ended, for a caller that waited for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub id: TaskId,
    pub state: TaskState,
    pub output: Option<Bytes>,
    pub error: Option<Arc<str>>,
    pub attempts: u32,
    /// The agent of the last attempt.
    pub agent: Option<AgentId>,
    /// From acceptance to the terminal state, measured by the dispatcher.
    pub latency: Duration,
}

impl Completion {
    /// How a task ended, as the journal of an earlier process holds it.
    pub(crate) fn recovered(row: colony_journal::TaskRow) -> Self {
        Self {
            id: row.id,
            state: row.state,
            output: row.output,
            error: row.error,
            attempts: row.attempt,
            agent: row.agent,
            latency: Duration::ZERO,
        }
    }
}

/// What the loop publishes of one pool once per turn: the demand on it and the work it does.
#[derive(Debug)]
pub(crate) struct PoolCounters {
    pub(crate) waiting: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) arrivals: AtomicU64,
    pub(crate) ended: AtomicU64,
    pub(crate) busy_micros: AtomicU64,
    /// Microseconds after [`Shared::epoch`] since which tasks this pool may run have waited
    /// without a break; [`PoolCounters::NONE_WAITING`] while none waits.
    pub(crate) waiting_since: AtomicU64,
    /// The size the autoscaler last wanted; [`PoolCounters::NONE_WAITING`] for a pool it
    /// does not scale.
    pub(crate) desired: AtomicU64,
    /// The autoscaler's forecast of arrivals per second and its error (MAPE), as `f64` bits;
    /// NaN until it has one.
    pub(crate) forecast: AtomicU64,
    pub(crate) forecast_error: AtomicU64,
}

impl PoolCounters {
    pub(crate) const NONE_WAITING: u64 = u64::MAX;
}

impl Default for PoolCounters {
    fn default() -> Self {
        Self {
            waiting: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            busy_micros: AtomicU64::new(0),
            waiting_since: AtomicU64::new(Self::NONE_WAITING),
            desired: AtomicU64::new(Self::NONE_WAITING),
            forecast: AtomicU64::new(f64::NAN.to_bits()),
            forecast_error: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

/// One pool's load, as the dispatcher last published it: what an autoscaler, the API and
/// `/metrics` read. A task that several pools may run counts in each of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PoolLoad {
    /// Agents in service or due back (spawned, less retired).
    pub agents: u64,
    /// Attempts those agents run at once: agents × concurrency.
    pub capacity: u64,
    /// Attempts running on the pool's agents.
    pub busy: u64,
    /// Tasks waiting (queued, backlogged, or backing off before a retry) that it may run.
    pub waiting: u64,
    /// How long tasks it may run have been waiting without a break: the age of its backlog.
    #[serde(serialize_with = "micros")]
    pub waiting_for: Duration,
    /// Tasks accepted since start that it may run.
    pub arrivals: u64,
    /// Attempts its agents ended since start.
    pub ended: u64,
    /// How long those attempts ran, summed (attempts answered inside `handle` count as none).
    #[serde(serialize_with = "micros")]
    pub busy_time: Duration,
    /// The size the autoscaler last wanted for it; `None` when it has no scaling policy.
    pub desired: Option<u64>,
    /// The autoscaler's forecast of arrivals per second over its horizon, once it has one.
    pub forecast_per_sec: Option<f64>,
    /// That forecast's mean absolute percentage error over its window, as a ratio.
    pub forecast_error: Option<f64>,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
