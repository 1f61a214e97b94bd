//! The runtime: a hierarchy of agents in one process, fed tasks and watched.
//!
//! [`Runtime::start`] plans the hierarchy, spawns the agents of every pool and starts the
//! dispatcher, the single event loop that owns the live tree, the supervisors' queues and the
//! running attempts. Callers hold a [`Handle`]: submitting journals the tasks first, then hands
//! them to the dispatcher, which routes each down the tree ([`colony_core::routing`]), starts it
//! on an idle worker or queues it at a supervisor, and records every transition in the journal.
//!
//! An idle agent is an entry in the tree (tens of bytes): no task, thread or timer of its own.
//!
//! ```
//! use colony_agents::{AgentSpec, sim::{Sim, SimOptions}};
//! use colony_core::task::TaskSpec;
//! use colony_journal::MemoryJournal;
//! use colony_runtime::{Pool, Runtime, RuntimeOptions};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let pool = Pool::new(AgentSpec::new("sim", "worker"), 100, Arc::new(Sim::new(SimOptions::default()).unwrap()));
//! let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], Arc::new(MemoryJournal::new())).await.unwrap();
//! let done = runtime.handle().submit_wait(TaskSpec::with_payload("{\"x\":1}")).await.unwrap();
//! assert_eq!(&done.output.unwrap()[..], b"{\"x\":1}");
//! runtime.shutdown().await;
//! # });
//! ```

pub mod agents;
mod autoscale;
pub mod bench;
pub mod decision;
mod dispatcher;
pub mod events;
mod handle;
pub mod messages;
pub mod metrics;
pub mod queue;
mod shared;
pub mod spawner;
pub mod team;

pub use autoscale::AutoscaleOptions;
pub use dispatcher::{Cancelled, Live, Resized};
pub use handle::{Accepted, Handle, Pending, Stats};
pub use shared::{Completion, LATENCY_BUCKETS, Latencies, PoolLoad, Timings};

use colony_agents::{Agent, AgentSpec};
use colony_core::{
    hierarchy::{self, DEFAULT_SPAN, HierarchyOptions, Tiers},
    routing::Strategy,
    task::{self, DEFAULT_MAX_PAYLOAD},
    tree::{LiveTree, MAX_SPECS, TreeOptions},
};
use colony_journal::Journal;
use events::EventBus;
use serde::{Deserialize, Serialize};
use std::{fmt, num::NonZeroU32, sync::Arc, time::Duration};

/// Default tasks a supervisor queues beyond what its workers are running.
pub const DEFAULT_QUEUE_CAPACITY: u32 = 256;
/// Default of [`RuntimeOptions::max_output`]: 16 MiB.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;
/// Default of [`RuntimeOptions::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_micros(50);
/// Longest `linger` allowed: a watch of milliseconds after every turn would be a busy loop.
pub const MAX_LINGER: Duration = Duration::from_millis(1);
/// Default wave size of [`SpawnMode::Waves`].
pub const DEFAULT_WAVE_SIZE: u32 = 20;

/// How the agents of a pool are brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpawnMode {
    /// One agent at a time, each acknowledged before the next.
    Single,
    /// All agents of a pool at once.
    Batch,
    /// `size` agents at a time; each wave is in service before the next starts.
    Waves { size: NonZeroU32 },
}

/// Settings of a runtime.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RuntimeOptions {
    /// The most children one agent supervises.
    pub span: u32,
    /// Tier names top to bottom, or `auto` depth.
    pub tiers: Tiers,
    /// How each tier picks the child a task goes to.
    pub strategy: Strategy,
    /// Tasks a supervisor queues beyond what its workers run. Admission stops when every
    /// queue and worker is full: `submit` waits, `try_submit` says so.
    pub queue_capacity: u32,
    pub spawn: SpawnMode,
    /// Largest task payload accepted, in bytes.
    pub max_payload: usize,
    /// Largest output an agent may return, in bytes; a larger one fails its task.
    pub max_output: usize,
    /// Backoff between attempts, and when a task counts as poison.
    pub retry: RetryOptions,
    /// A worker with nothing to do takes a task from the sibling supervisor with the longest
    /// queue once that queue holds this many (its own holds none: a ratio of at least 2:1).
    pub steal_at: usize,
    /// Periodic evening-out of sibling supervisors' queues.
    pub rebalance: colony_core::rebalance::RebalanceOptions,
    /// How every managing agent supervises its children: strategy, restart policy, restart
    /// intensity and backoff (OTP semantics; see [`colony_core::supervision`]).
    pub supervision: colony_core::supervision::SupervisorOptions,
    /// Per managing tier, by name, what its agents' supervision changes from `supervision`
    /// (the runtime over the top tier keeps `supervision`). Names must be managing tiers of
    /// the hierarchy the runtime plans.
    pub supervision_tiers:
        std::collections::BTreeMap<String, colony_core::supervision::SupervisorOverrides>,
    /// Health thresholds, and the heartbeat interval at which supervisors sweep their busy
    /// children (see [`colony_core::health`]).
    pub health: colony_core::health::HealthOptions,
    /// How health acts on routing: each worker's circuit breaker (see
    /// [`colony_core::breaker`]). `None`: health only observes.
    pub breaker: Option<colony_core::breaker::BreakerOptions>,
    /// Seed of the routing decisions' random choices.
    pub seed: u64,
    /// How long the dispatcher's thread keeps watching for work after a busy turn before it
    /// parks (halved after each watch that saw none). Trades a little CPU while tasks trickle
    /// in for microseconds of latency each. Only when the dispatcher has a thread of its own:
    /// on a multi-threaded tokio runtime.
    #[serde(with = "humantime_micros")]
    pub linger: Duration,
    /// When the autoscaler looks at the pools that have a scaling policy ([`Pool::scaling`]).
    pub autoscale: AutoscaleOptions,
    /// How agents' mailboxes are sized ([`messages`]).
    #[serde(default)]
    pub messages: messages::MessageOptions,
}

mod humantime_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            span: DEFAULT_SPAN,
            tiers: Tiers::default(),
            strategy: Strategy::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            spawn: SpawnMode::Batch,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_output: DEFAULT_MAX_OUTPUT,
            retry: RetryOptions::default(),
            steal_at: 2,
            rebalance: colony_core::rebalance::RebalanceOptions::default(),
            supervision: colony_core::supervision::SupervisorOptions::default(),
            supervision_tiers: std::collections::BTreeMap::new(),
            health: colony_core::health::HealthOptions::default(),
            breaker: Some(colony_core::breaker::BreakerOptions::default()),
            seed: 0,
            linger: DEFAULT_LINGER,
            autoscale: AutoscaleOptions::default(),
            messages: messages::MessageOptions::default(),
        }
    }
}

/// How failed attempts are retried.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetryOptions {
    /// Delay before the second attempt; each further retry doubles it, up to `max_backoff`.
    /// Zero retries at once.
    #[serde(with = "humantime_micros")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_micros")]
    pub max_backoff: Duration,
    /// Each delay moves by up to this fraction of itself, either way, so that tasks failed
    /// together do not come back together.
    pub jitter: f64,
    /// A task whose attempts crashed or hung this many agents is quarantined (dead-lettered as
    /// poison) instead of retried, whatever attempts it has left.
    pub poison_faults: u32,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            jitter: 0.2,
            poison_faults: 3,
        }
    }
}

impl RetryOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.initial_backoff > self.max_backoff {
            return Err(Error::Options(format!(
                "retry initial-backoff {:?} exceeds max-backoff {:?}",
                self.initial_backoff, self.max_backoff
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Options(format!(
                "retry jitter {} is out of range: allowed 0.0..=1.0",
                self.jitter
            )));
        }
        if self.poison_faults == 0 {
            return Err(Error::Options(
                "retry poison-faults 0 is out of range: allowed 1 and up".into(),
            ));
        }
        Ok(())
    }

    /// The engine that decides, after every attempt, what becomes of its task.
    pub(crate) fn policy(&self) -> colony_core::attempt::Policy {
        colony_core::attempt::Policy {
            backoff: colony_core::attempt::Backoff {
                initial: self.initial_backoff,
                max: self.max_backoff,
                jitter: self.jitter,
            },
            poison_faults: self.poison_faults,
        }
    }
}

/// The agents of one kind: their spec, how many, and the handler they share.
#[derive(Clone)]
pub struct Pool {
    pub spec: AgentSpec,
    pub count: u32,
    pub agent: Arc<dyn Agent>,
    /// How the autoscaler sizes this pool; `None` leaves its size to people.
    pub scaling: Option<colony_core::scaling::ScalingOptions>,
}

impl Pool {
    pub fn new(spec: AgentSpec, count: u32, agent: Arc<dyn Agent>) -> Self {
        Self {
            spec,
            count,
            agent,
            scaling: None,
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("spec", &self.spec)
            .field("count", &self.count)
            .finish()
    }
}

/// Why the runtime refused something. Messages name the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Hierarchy(#[from] hierarchy::Error),
    #[error(transparent)]
    Task(#[from] task::Error),
    #[error("queue capacity {got} is out of range: allowed 1..=1000000")]
    QueueCapacity { got: u32 },
    #[error("{got} pools given: allowed 1..={MAX_SPECS}")]
    Pools { got: usize },
    #[error("pool {pool} has concurrency {got}: allowed 1..=10000")]
    Concurrency { pool: usize, got: u32 },
    #[error(
        "no pool has agents that satisfy {}",
        requirement_text(role.as_deref(), capabilities)
    )]
    NoAgentFor {
        role: Option<String>,
        capabilities: Vec<String>,
    },
    #[error(
        "the runtime is full ({capacity} tasks queued or running): try again later or submit and wait"
    )]
    Full { capacity: usize },
    #[error("a batch of {got} tasks can never fit: the runtime holds at most {max} at once")]
    BatchTooLarge { got: usize, max: usize },
    #[error("pool {got} does not exist: this runtime has pools 0..{count}")]
    NoSuchPool { got: usize, count: usize },
    #[error("{0}")]
    Options(String),
    /// A decision that cannot run: its vote's options, or too few workers to seat.
    #[error("decision: {0}")]
    Decision(String),
    /// A team that cannot run: its roles or steps, or too few workers to form it.
    #[error("team: {0}")]
    Team(String),
    #[error("journal: {0}")]
    Journal(#[from] colony_journal::Error),
    #[error("the runtime has stopped")]
    Stopped,
    #[error(
        "the query panicked inside the dispatcher (an agent id out of range?); the runtime goes on"
    )]
    QueryPanicked,
}

impl RuntimeOptions {
    pub fn validate(&self, pools: &[Pool]) -> Result<(), Error> {
        self.messages.validate()?;
        // The spin after every turn: longer would be a busy loop, not a short watch.
        if self.linger > MAX_LINGER {
            return Err(Error::Options(format!(
                "linger {:?} is out of range: allowed up to {MAX_LINGER:?}",
                self.linger
            )));
        }
        self.retry.validate()?;
        self.autoscale.validate()?;
        self.rebalance
            .validate()
            .map_err(|e| Error::Options(e.to_string()))?;
        self.supervision
            .validate()
            .map_err(|e| Error::Options(e.to_string()))?;
        for (tier, overrides) in &self.supervision_tiers {
            overrides
                .over(self.supervision)
                .validate()
                .map_err(|e| Error::Options(format!("tier `{tier}`: {e}")))?;
        }
        self.health
            .validate()
            .map_err(|e| Error::Options(e.to_string()))?;
        if let Some(breaker) = &self.breaker {
            breaker
                .validate()
                .map_err(|e| Error::Options(e.to_string()))?;
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(Error::QueueCapacity {
                got: self.queue_capacity,
            });
        }
        if !(1..=MAX_SPECS).contains(&pools.len()) {
            return Err(Error::Pools { got: pools.len() });
        }
        for (pool, p) in pools.iter().enumerate() {
            if !(1..=10_000).contains(&p.spec.concurrency) {
                return Err(Error::Concurrency {
                    pool,
                    got: p.spec.concurrency,
                });
            }
            if let Some(scaling) = p.scaling {
                colony_core::scaling::Scaler::new(scaling)
                    .map_err(|e| Error::Options(format!("pool {pool}: {e}")))?;
            }
        }
        let workers: u64 = pools.iter().map(|p| u64::from(p.count)).sum();
        HierarchyOptions {
            workers: workers.max(1),
            span: self.span,
            tiers: self.tiers.clone(),
        }
        .validate()?;
        Ok(())
    }
}

/// A running runtime. Dropping it leaves the dispatcher running for as long as handles exist;
/// [`Runtime::shutdown`] stops it.
#[derive(Debug)]
pub struct Runtime {
    handle: Handle,
    /// Resolves when the dispatcher's loop has ended.
    dispatcher: dispatcher::LoopEnded,
}

impl Runtime {
    /// Plans the hierarchy for the pools' worker count, starts the dispatcher and spawns every
    /// pool's agents as `options.spawn` says. Must be called inside a tokio runtime.
    pub async fn start(
        options: RuntimeOptions,
        pools: Vec<Pool>,
        journal: Arc<dyn Journal>,
    ) -> Result<Self, Error> {
        options.validate(&pools)?;
        let workers: u64 = pools.iter().map(|p| u64::from(p.count)).sum();
        let hierarchy = HierarchyOptions {
            workers: workers.max(1),
            span: options.span,
            tiers: options.tiers.clone(),
        };
        let tree = LiveTree::new(&TreeOptions {
            hierarchy,
            queue_capacity: options.queue_capacity,
        })?;
        let managing = &tree.tier_names()[..tree.worker_tier()];
        if let Some(name) = options
            .supervision_tiers
            .keys()
            .find(|n| !managing.iter().any(|m| **m == ***n))
        {
            let names: Vec<&str> = managing.iter().map(|m| &**m).collect();
            return Err(Error::Options(format!(
                "supervision of tier `{name}`: no managing tier has that name (this hierarchy's: {})",
                names.join(", ")
            )));
        }
        let bus = EventBus::new();
        let (shared, dispatcher) = dispatcher::start(&options, &pools, tree, journal, bus);
        let handle = Handle::new(shared);
        let runtime = Self { handle, dispatcher };
        let started = async {
            for (index, pool) in pools.iter().enumerate() {
                runtime
                    .handle
                    .spawn(index, pool.count, options.spawn)
                    .await?;
            }
            // Whatever an earlier process left unfinished runs again, before anything new;
            // the decisions it left open are counted again from their ballots.
            let journal = runtime.handle.journal().clone();
            let mut decisions = decision::Recovered::open(&*journal)?;
            let unfinished = journal.recover()?;
            let unfinished = decision::cancel_closed_ballots(&*journal, unfinished).await?;
            decisions.ballots_among(&unfinished);
            if !unfinished.is_empty() {
                let n = runtime
                    .handle
                    .requeue(unfinished, |task| decisions.ballot(task))?;
                tracing::info!(tasks = n, "Recovered unfinished tasks from the journal.");
            }
            let n = decisions.resume(&runtime.handle);
            if n > 0 {
                tracing::info!(decisions = n, "Recovered open decisions from the journal.");
            }
            autoscale::start(&runtime.handle, &pools, options.autoscale).await
        };
        if let Err(error) = started.await {
            // A runtime that did not start leaves no loop behind to run its tasks.
            runtime.shutdown().await;
            return Err(error);
        }
        Ok(runtime)
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the dispatcher. Attempts still running are abandoned: their tasks stay
    /// unfinished in the journal, for recovery to pick up.
    pub async fn shutdown(self) {
        self.handle.stop();
        let _ = self.dispatcher.await;
    }
}

/// A requirement as a person reads it: `role worker and capabilities gpu, fast`.
fn requirement_text(role: Option<&str>, capabilities: &[String]) -> String {
    let role = role.map(|r| format!("role `{r}`"));
    let capabilities =
        (!capabilities.is_empty()).then(|| format!("capabilities {}", capabilities.join(", ")));
    match (role, capabilities) {
        (Some(r), Some(c)) => format!("{r} and {c}"),
        (Some(r), None) => r,
        (None, Some(c)) => c,
        (None, None) => "any requirement".to_owned(),
    }
}
