//! The journal: colony's system of record for tasks.
//!
//! The runtime records every transition of every task through a [`Journal`]: accepted (before
//! the submitter hears "ok"), started with its attempt number, committed with its result,
//! failed. An implementation applies fencing: a result commits only if its attempt is the
//! task's current lease, so each task has exactly one committed result however often it ran.
//! Every implementation passes the suite in [`testing`].
//!
//! ```
//! use colony_core::{TaskId, AgentId, task::TaskSpec};
//! use colony_journal::{Journal, MemoryJournal, Record};
//! # futures::executor::block_on(async {
//! let journal = MemoryJournal::new();
//! let first = journal.next_task_id();
//! journal.accept(first, &[TaskSpec::default()]).await.unwrap();
//! journal.record(vec![
//!     Record::Started { task: first, attempt: 1, agent: AgentId(7) },
//!     Record::Committed { task: first, attempt: 1, output: "42".into() },
//! ]).await.unwrap();
//! assert_eq!(journal.task(first).unwrap().unwrap().output.as_deref(), Some(&b"42"[..]));
//! # });
//! ```

mod backlog;
mod durable;
mod memory;
pub mod sqlite;
pub mod testing;

pub use backlog::Backlog;
pub use durable::Durable;
pub use memory::MemoryJournal;
pub use sqlite::{AgentQuery, SqliteJournal, SqliteOptions, SqliteReader, Synchronous};

use bytes::Bytes;
use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use std::{sync::Arc, time::Duration};

/// A transition of an accepted task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Attempt `attempt` started on `agent`; it is now the task's lease.
    Started {
        task: TaskId,
        attempt: u32,
        agent: AgentId,
    },
    /// Attempt `attempt` produced `output`. Ignored (and counted as fenced) unless the task is
    /// running and `attempt` is its current lease.
    Committed {
        task: TaskId,
        attempt: u32,
        output: Bytes,
    },
    /// Attempt `attempt` failed with `error`; the task moves to `next`: `Queued` for another
    /// attempt, or `Failed` / `DeadLettered` for good; any other `next` is refused. Fenced like
    /// a commit.
    Failed {
        task: TaskId,
        attempt: u32,
        error: Arc<str>,
        next: TaskState,
    },
    /// The task was cancelled before it ended.
    Cancelled { task: TaskId },
}

impl Record {
    /// The states a failed attempt may move its task to; journals refuse any other.
    pub fn may_follow_failure(next: TaskState) -> bool {
        matches!(
            next,
            TaskState::Queued | TaskState::Failed | TaskState::DeadLettered
        )
    }

    pub fn task(&self) -> TaskId {
        match self {
            Record::Started { task, .. }
            | Record::Committed { task, .. }
            | Record::Failed { task, .. }
            | Record::Cancelled { task } => *task,
        }
    }
}

/// Those of `tasks` inside one of the ballot ranges `[first, end)` of `decisions` (sorted by
/// `first`, not overlapping).
pub(crate) fn ballots_among(tasks: &[TaskId], decisions: &[(u64, u64)]) -> Vec<TaskId> {
    tasks
        .iter()
        .copied()
        .filter(|t| {
            let i = decisions.partition_point(|&(first, _)| first <= t.0);
            i > 0 && t.0 < decisions[i - 1].1
        })
        .collect()
}

/// Refuses an opening whose tasks are not one for each seat it asks.
pub(crate) fn check_opening(specs: &[TaskSpec], opening: &Opening) -> Result<(), Error> {
    let asked = opening.asked as usize;
    if specs.len() != asked || asked > opening.seats.len() {
        return Err(Error::Ballots {
            seats: asked.min(opening.seats.len()),
            specs: specs.len(),
        });
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A worker's reputation, as the journal keeps it across restarts: its score from 0 to 1
/// and the observations behind it, with the pool it was a worker of.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ReputationRow {
    pub agent: AgentId,
    pub pool: u8,
    pub score: f64,
    pub observations: u32,
}

/// One agent of the hierarchy, as the journal records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AgentRecord {
    pub id: AgentId,
    /// Index into the tier names, top tier 0.
    pub tier: u8,
    pub parent: Option<AgentId>,
    /// The pool of a worker; `None` for managers.
    pub pool: Option<u8>,
}

/// What a journal knows about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The current lease: the number of the latest attempt started, 0 before the first.
    pub attempt: u32,
    /// The agent of the latest attempt.
    pub agent: Option<AgentId>,
    pub output: Option<Bytes>,
    pub error: Option<Arc<str>>,
    /// When it ended (a terminal state), in milliseconds since the Unix epoch; `None` while
    /// it has not, or when the journal does not know (a row written before it kept times).
    pub ended_at_ms: Option<u64>,
}

/// Which finished tasks lose their payloads and outputs. A task matching either rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Tasks that finished longer ago than this.
    pub older_than: Option<Duration>,
    /// All but this many of the most recent finished tasks.
    pub keep_last: Option<u64>,
}

impl Retention {
    /// Ages and counts past what a timestamp or a SQLite integer holds mean "nothing is that
    /// old" and "keep everything", not the wrap-around that would prune everything.
    pub fn bounded(self) -> Self {
        let century = Duration::from_secs(100 * 365 * 86_400);
        Self {
            older_than: self.older_than.filter(|age| *age <= century),
            keep_last: self.keep_last.filter(|n| *n <= i64::MAX as u64),
        }
    }
}

/// One voter of a decision, as the journal records it: its ballot task is the decision's
/// id plus the seat's index.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Seat {
    pub agent: AgentId,
    pub pool: u8,
    pub weight: f64,
}

/// What a decision starts from: how it is taken and who votes.
#[derive(Clone, Debug, PartialEq)]
pub struct Opening {
    /// How it is taken (`colony_core::decision::DecisionOptions`), as JSON: kept as given.
    pub options: Arc<str>,
    /// The voters, in the order asked.
    pub seats: Vec<Seat>,
    /// The opening's ballot tasks ask the first `asked` seats, one each: every seat for a
    /// one-round vote, the first proposer alone under `leader`.
    pub asked: u32,
    /// When its ballots were accepted, in milliseconds since the Unix epoch: a decision
    /// recovered after a crash keeps its deadline.
    pub opened_at_ms: u64,
}

/// A decision taken inline, whole: what [`Journal::decided`] records.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    /// Its opening, with no ballot tasks asked (`asked` 0).
    pub opening: Opening,
    /// The decided value (its task's output), or why it failed (its task's error).
    pub result: Result<Bytes, Arc<str>>,
    /// How it ended, as JSON, as [`Journal::close_decision`] takes it.
    pub outcome: Arc<str>,
}

/// Why a decision asked for more tasks after its opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Ballots of a later round (`fast`'s second).
    Ballot,
    /// `leader`: the round's proposer is asked for its proposal.
    Proposal,
    /// `leader`: the reviewers are asked to approve or reject the proposal.
    Review,
    /// A judge agent is asked to settle a tie.
    Judge,
}

/// Tasks a decision asked for after its opening, in one write: tasks `first, first + 1,
/// ...`, the i-th asked of `asked[i]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Call {
    /// The decision's round they belong to.
    pub round: u32,
    pub role: Role,
    pub asked: Vec<Seat>,
    /// When they were accepted, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A decision among agents, as the journal knows it. Its opening's ballots are the tasks
/// `id`, `id + 1`, ..., one per seat asked, accepted with it in one write; each later call
/// is accepted with its tasks in one write too.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRow {
    /// The id of its first ballot task.
    pub id: TaskId,
    pub opening: Opening,
    /// Its later calls, oldest first, each with the id of its first task.
    pub calls: Vec<(TaskId, Call)>,
    /// How it ended, as JSON, once it has; written once and never changed.
    pub outcome: Option<Arc<str>>,
    /// When it ended, in milliseconds since the Unix epoch.
    pub ended_at_ms: Option<u64>,
}

impl DecisionRow {
    /// Every task it asked, with the agent asked, in the order asked: the opening's, then
    /// each call's.
    pub fn tasks(&self) -> impl Iterator<Item = (TaskId, Seat)> + '_ {
        let opening = self.opening.seats.iter().take(self.opening.asked as usize);
        let opening = opening
            .enumerate()
            .map(|(i, seat)| (TaskId(self.id.0 + i as u64), *seat));
        let calls = self.calls.iter().flat_map(|(first, call)| {
            call.asked
                .iter()
                .enumerate()
                .map(|(i, seat)| (TaskId(first.0 + i as u64), *seat))
        });
        opening.chain(calls)
    }

    /// Each range `[first, end)` of its tasks: the opening's, then each call's.
    pub fn ballot_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let opening = (self.id.0, self.id.0 + u64::from(self.opening.asked));
        let calls = self
            .calls
            .iter()
            .map(|(first, call)| (first.0, first.0 + call.asked.len() as u64));
        std::iter::once(opening).chain(calls)
    }
}

/// Number of tasks in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.terminal()
    }

    pub fn terminal(&self) -> u64 {
        self.succeeded + self.failed + self.dead_lettered + self.cancelled
    }

    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Queued => self.queued,
            TaskState::Running => self.running,
            TaskState::Succeeded => self.succeeded,
            TaskState::Failed => self.failed,
            TaskState::DeadLettered => self.dead_lettered,
            TaskState::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Running => &mut self.running,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::DeadLettered => &mut self.dead_lettered,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    /// Moves one task from `from` to `to`.
    pub fn moved(&mut self, from: TaskState, to: TaskState) {
        *self.slot(from) -= 1;
        *self.slot(to) += 1;
    }

    pub fn added(&mut self, state: TaskState, n: u64) {
        *self.slot(state) += n;
    }
}

/// Records a journal refused or dropped, for the invariants' bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commits and failures of attempts that were not the current lease, or of tasks already
    /// terminal: late results, dropped as fencing requires.
    pub fenced: u64,
    /// Transitions naming a task the journal never accepted.
    pub unknown: u64,
    /// Failures whose next state is not `Queued`, `Failed` or `DeadLettered`, refused.
    pub invalid: u64,
}

/// Why a journal could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("task ids must continue from {expected}, got {got}")]
    IdOutOfOrder { expected: TaskId, got: TaskId },
    #[error("a decision asking {seats} voters came with {specs} ballot tasks: one per voter")]
    Ballots { seats: usize, specs: usize },
    #[error("journal storage failed: {0}")]
    Storage(String),
    #[error("the journal is closed")]
    Closed,
    #[error("{path} is a directory: give the path of a database file")]
    IsDirectory { path: String },
    #[error("{path} does not exist: give the path of a colony database")]
    Missing { path: String },
    #[error("folder {path} does not exist: create it, or give a path in a folder that does")]
    NoFolder { path: String },
    #[error("{path} exists: pass --force to replace it")]
    Exists { path: String },
    #[error("{location}: {detail}")]
    BadLocation { location: String, detail: String },
    #[error(
        "{location}: {detail}; check the endpoint (AWS_ENDPOINT, AWS_ALLOW_HTTP for plain http), the bucket, and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    )]
    Remote { location: String, detail: String },
    #[error(
        "{path} is not a colony database: give a new path, or the path of a database colony created"
    )]
    NotColony { path: String },
    #[error(
        "{path} has schema version {version}, newer than this colony understands ({supported}): upgrade colony"
    )]
    TooNew {
        path: String,
        version: i32,
        supported: i32,
    },
    #[error("{path} is locked: {detail}; stop the other process or use another database")]
    Locked { path: String, detail: String },
    #[error(
        "{path}: the disk or the database is full; free space (or raise the page limit) and colony resumes"
    )]
    Full { path: String },
    #[error("{path} is corrupt ({detail}): restore it from a backup (`colony restore`)")]
    Corrupt { path: String, detail: String },
}

/// The system of record for tasks. Implementations are shared between the submitters and the
/// runtime's dispatcher, so every method takes `&self`.
pub trait Journal: std::fmt::Debug + Send + Sync + 'static {
    /// The id the next accepted task gets. Ids are dense: `accept` continues from here.
    fn next_task_id(&self) -> TaskId;

    /// Records tasks `first, first + 1, ...` as accepted and queued. The returned future
    /// resolves once they would survive a crash of the process; only then may the submitter
    /// be told they were accepted.
    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable;

    /// Records transitions in order. Fencing is applied per record (see [`Record`]).
    fn record(&self, batch: Vec<Record>) -> Durable;

    /// Records a decision and accepts its ballot tasks `first, first + 1, ...` (one per seat)
    /// in one write: both survive a crash, or neither. Refused (nothing written) when
    /// `specs` and the seats differ in number.
    fn open_decision(&self, first: TaskId, specs: &[TaskSpec], opening: Opening) -> Durable;

    /// Records that open decision `decision` asks for more tasks (a later round, a leader's
    /// reviews, a judge) and accepts them as tasks `first, first + 1, ...` (one per agent
    /// asked) in one write. Refused (nothing written) when `specs` and `call.asked` differ in
    /// number. Only the decision's owner asks, and only while it is open.
    fn ask(&self, decision: TaskId, first: TaskId, specs: &[TaskSpec], call: Call) -> Durable;

    /// Records how decision `id` ended. The first outcome stands: a second is dropped and
    /// counted as fenced, an unknown decision as unknown (see [`Stats`]).
    fn close_decision(&self, id: TaskId, outcome: Arc<str>) -> Durable;

    /// Records a decision whose ballots were answered inline (by agents that answer inside
    /// their handler, with no ballot tasks: its opening's `asked` is 0) and how it ended, in
    /// one write: task `id`, the question decided, is accepted (continuing the ids, as
    /// [`Journal::accept`]) and ended at once, succeeded with the decided value as its output
    /// or failed with the reason; decision `id` is recorded with its opening and outcome.
    /// Refused (nothing written) when the opening asked for ballot tasks.
    fn decided(&self, id: TaskId, spec: &TaskSpec, taken: Taken) -> Durable;

    fn decision(&self, id: TaskId) -> Result<Option<DecisionRow>, Error>;

    /// The newest decisions first, at most `limit`, with ids below `before` (the next page).
    fn decisions(&self, before: Option<TaskId>, limit: usize) -> Result<Vec<DecisionRow>, Error>;

    /// Decisions without an outcome, oldest first: after a crash, to be counted again from
    /// their ballots.
    fn open_decisions(&self) -> Result<Vec<DecisionRow>, Error>;

    /// Which of `tasks` (ascending) are ballots of decisions that have ended: after a crash,
    /// they are cancelled rather than run again, as the vote that asked for them is over.
    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error>;

    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error>;

    fn counts(&self) -> Result<Counts, Error>;

    /// Tasks not yet terminal, oldest first.
    fn unfinished(&self) -> Result<Vec<TaskRow>, Error>;

    /// The newest tasks first, at most `limit`: those in `state` (all when `None`) with ids
    /// below `before` (the next page), as last recorded. Rows are read until `limit` match, so
    /// a rare state costs a longer read.
    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error>;

    /// Prepares a restart. Every unfinished task goes back to `Queued`, and its lease moves
    /// up by its `max_attempts`, durably, before this returns. The process that died may have
    /// started attempts whose `Started` records never reached the disk; it started at most
    /// `max_attempts` of them past the recorded lease, so after the move no attempt number is
    /// ever given out twice, and a result of the dead process would be fenced. Returns every
    /// unfinished task, oldest first, for the runtime to queue again.
    fn recover(&self) -> Result<Vec<TaskRow>, Error>;

    fn stats(&self) -> Stats;

    /// Records agents of the hierarchy and the names of its tiers. `replace` first forgets
    /// the hierarchy recorded before: a new process records its own.
    fn record_agents(&self, tiers: &[String], agents: Vec<AgentRecord>, replace: bool) -> Durable;

    /// The recorded hierarchy, by id.
    fn agents(&self) -> Result<Vec<AgentRecord>, Error>;

    /// Records workers' reputations; a later row of an agent replaces the earlier.
    fn record_reputations(&self, rows: Vec<ReputationRow>) -> Durable;

    /// Every reputation recorded, by agent id.
    fn reputations(&self) -> Result<Vec<ReputationRow>, Error>;

    /// Whether the journal takes writes now, or why not: a journal that stopped for good (one
    /// in NATS another process took over) says so here, for readiness checks.
    fn writable(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The writes waiting for a writer thread, for submitters to await room in before they
    /// write (see [`Backlog`]); `None` for a journal that never makes a writer wait.
    fn backlog(&self) -> Option<&Backlog> {
        None
    }
}
