//! Cluster mode: many machines, one swarm, on NATS JetStream.
//!
//! Nothing here is a consensus of colony's own. JetStream replicates and orders; colony uses
//! three of its parts:
//!
//! - **the tasks stream** (`COLONY_TASKS`, work-queue retention, file storage): a submitted
//!   task is one message on `colony.tasks.<role>.p<priority>` (a bundle of `n` tasks on
//!   that subject with `.<n>` more); its stream sequence is the task's id, and "accepted"
//!   is said only once the stream acknowledged it. A node pulls through the durable
//!   consumer of each role it hosts, with explicit acks, an `ack_wait`
//!   kept alive by in-progress acks while a task runs, and a nak with a delay for a retry.
//! - **the tasks bucket** (KV `colony_tasks`): one key per task that has started, holding its
//!   state, its lease (attempt number) and, once it ended, its result. Every write is a
//!   compare-and-set on the key's revision: that revision is the fencing token, so a node
//!   whose lease was taken over (it stalled past `ack_wait`, its message went to another
//!   node) cannot commit (I2 across nodes).
//! - **the nodes bucket** (KV `colony_nodes`, entries expire after the heartbeat TTL): each
//!   node's heartbeat, so membership is per node, never per agent.
//!
//! [`lease`] decides, sans IO, what a node does with a delivery and how an attempt's end
//! moves its task; [`Node`] does the IO around it; [`Cluster`] is the client side (submit,
//! look up, wait, status). [`testing`] starts real `nats-server` processes for tests.

pub mod agents;
mod backlog;
pub mod bench;
pub mod bus;
mod client;
pub mod journal;
pub mod kubernetes;
pub mod leadership;
pub mod lease;
mod membership;
pub mod memory;
mod node;
pub mod roles;
pub mod runs;
pub mod scaling;
mod settings;
pub mod testing;
mod watch;
mod wire;

pub use client::{
    Cancel, Cluster, Record, RecordsFrom, RoleStatus, Status, Submitted, TaskView, Watch, random_id,
};
pub use journal::{JetStreamJournal, JournalOptions};
pub use membership::{NodeInfo, RoleSlots, TierCount};
pub use node::{MAX_SPREAD_VOTERS, Node, NodeOptions, NodeReport, Readiness};
pub use settings::{MAX_KEY, MAX_PAYLOAD, MAX_RECORD, Settings, check_role};
pub use wire::bundle;
pub use wire::{
    Decide, DecisionSummary, MAX_WEIGHED_ROLES, Row, TaskMessage, TeamSummary, Together,
    check_role_weights,
};

/// Why the cluster could not do what it was asked.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach NATS at {url}: {detail}; is nats-server running there with JetStream enabled (-js)?"
    )]
    Connect { url: String, detail: String },
    #[error(
        "NATS at {url} has no JetStream: start nats-server with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream { url: String },
    #[error("{0}")]
    Settings(String),
    #[error(
        "role `{role}` cannot name a cluster subject: use 1 to 64 letters, digits, `_` and `-` (a role of `_` alone is taken: it stands for tasks any agent may run)"
    )]
    BadRole { role: String },
    #[error("{what}: {detail}")]
    Nats { what: String, detail: String },
    /// A journal read or pruned that was never made (a wrong URL or name, most likely).
    #[error("no such journal at {url} (no stream {stream})")]
    NoJournal { url: String, stream: String },
    #[error("task {id} is unknown to the cluster: never accepted, or its record was purged")]
    Unknown { id: u64 },
    #[error("task {id}'s record is unreadable: {detail}")]
    Corrupt { id: u64, detail: String },
    #[error("{0}")]
    Task(String),
    #[error(
        "run {run} moved on under this scheduler ({key} changed): another scheduler took it over"
    )]
    Lost { run: String, key: String },
    /// A batch failed part-way: the tasks `accepted` (their ids, in the order sent) were,
    /// the others of the `of` may or may not have been.
    #[error(
        "{error}; {} of the {of} tasks were accepted before it (their ids are in this error's details), and the rest may or may not have been: send them again under the same idempotency keys, or look them up",
        accepted.len()
    )]
    Partly {
        accepted: Vec<u64>,
        of: usize,
        error: Box<Error>,
    },
}

impl Error {
    pub(crate) fn nats(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Nats {
            what: what.into(),
            detail: err.to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
