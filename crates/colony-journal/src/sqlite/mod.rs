//! The SQLite journal: the system of record on disk.
//!
//! One writer thread owns the write connection and commits in groups: it takes every write
//! waiting in its channel (up to `commit_records` records, optionally waiting
//! `commit_wait` for more) into one transaction, so one fsync covers thousands of tasks.
//! Each writer's `Durable` resolves when its group commits. Reads use their own connection.
//! WAL mode, `synchronous=FULL` unless told otherwise, a busy timeout, and a lock file that
//! keeps a second colony process off the same database. Sending a write never blocks: the
//! channel is unbounded, and submitters await room in its [`Backlog`] before they write.
//!
//! When a commit fails (disk full, database locked by another program), the group is rolled
//! back: submissions in it get the error, nothing half-written, while transitions of tasks
//! already accepted are kept and retried until the fault clears.

mod backup;
mod remote;
mod schema;
mod writer;

pub use backup::{Copied, backup, restore};
pub use remote::{Location, backup_to, restore_from};

use crate::{
    AgentRecord, Backlog, Call, Counts, DecisionRow, Durable, Error, Journal, Opening, Record,
    Seat, Stats, TaskRow,
};
use colony_core::{
    AgentId, TaskId,
    task::{Priority, Requirement, TaskSpec, TaskState},
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::Duration,
};
pub use writer::Retention;
use writer::{Ballots, Write, Writer};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = schema::LATEST;

/// How hard SQLite works to make a commit survive a power cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is synced at every commit: a committed task survives a power cut.
    #[default]
    Full,
    /// The WAL is synced at checkpoints only: a power cut can lose the last commits (a process
    /// crash cannot). Faster.
    Normal,
}

/// Settings of a [`SqliteJournal`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Most records one transaction commits.
    pub commit_records: usize,
    /// How long the writer waits for more writes after the first of a group; 0 commits what
    /// is waiting at once (groups still form while a commit's fsync runs).
    pub commit_wait: Duration,
    /// How long a write waits for a lock held by another program before failing.
    pub busy_timeout: Duration,
    /// Largest database in pages (4 KiB); `None` for SQLite's default. Lets tests force a
    /// full disk.
    pub max_page_count: Option<u64>,
    /// Writes waiting for the writer before submitters wait for room (see [`Backlog`]).
    pub queue: usize,
    /// Largest value (payload, output, error text) the database stores, in bytes; `None` for
    /// SQLite's limit (1,000,000,000). A write with a larger value can never commit: it is
    /// dropped with an error and the rest of its group commits.
    pub max_value_bytes: Option<usize>,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            commit_records: 20_000,
            commit_wait: Duration::ZERO,
            busy_timeout: Duration::from_secs(2),
            max_page_count: None,
            queue: 4_096,
            max_value_bytes: None,
        }
    }
}

/// State the writer thread publishes for readers.
#[derive(Debug)]
struct Shared {
    counts: Mutex<Counts>,
    stats: Mutex<Stats>,
    /// The id after the highest accepted task.
    next_id: AtomicU64,
    /// The error of the last failed commit while it has not cleared.
    fault: Mutex<Option<Error>>,
    /// Writes sent and not yet taken by the writer.
    backlog: Backlog,
}

/// A journal in a SQLite file.
#[derive(Debug)]
pub struct SqliteJournal {
    path: PathBuf,
    writes: Option<mpsc::Sender<Write>>,
    reader: SqliteReader,
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Held for the journal's lifetime: one colony process per database.
    _lock: File,
}

impl SqliteJournal {
    /// Opens or creates the database at `options.path`, migrating it to the current schema.
    pub fn open(options: SqliteOptions) -> Result<Self, Error> {
        let path = options.path.clone();
        let shown = path.display().to_string();
        if path.as_os_str().is_empty() {
            return Err(Error::Missing {
                path: "an empty path".into(),
            });
        }
        if path.is_dir() {
            return Err(Error::IsDirectory { path: shown });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(Error::NoFolder {
                path: parent.display().to_string(),
            });
        }
        let lock = lock_file(&path)?;
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(e, &path))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| classify(e, &path))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| classify(e, &path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Storage(format!(
                "{shown}: cannot switch to WAL mode (got {mode})"
            )));
        }
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| classify(e, &path))?;
        if let Some(pages) = options.max_page_count {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(|e| classify(e, &path))?;
        }
        if let Some(bytes) = options.max_value_bytes {
            let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, bytes)
                .map_err(|e| classify(e, &path))?;
        }
        schema::migrate(&mut conn, &path)?;

        let shared = Arc::new(Shared {
            counts: Mutex::default(),
            stats: Mutex::default(),
            next_id: AtomicU64::default(),
            fault: Mutex::default(),
            backlog: Backlog::new(options.queue),
        });
        *shared.counts.lock().expect("fresh") =
            read_counts(&conn).map_err(|e| classify(e, &path))?;
        let next: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM tasks", [], |r| {
                r.get(0)
            })
            .map_err(|e| classify(e, &path))?;
        let next = next as u64;
        shared.next_id.store(next, Relaxed);

        let reader = SqliteReader::connect(&path)?;

        let (writes, inbox) = mpsc::channel();
        let writer = Writer::new(conn, path.clone(), shared.clone(), &options, next);
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(inbox))
            .map_err(|e| Error::Storage(format!("cannot start the journal writer: {e}")))?;
        Ok(Self {
            path,
            writes: Some(writes),
            reader,
            shared,
            writer: Some(writer),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The storage fault that stops commits right now, if any.
    pub fn fault(&self) -> Option<Error> {
        self.shared
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands `write` to the writer without waiting: the channel is unbounded, and callers
    /// that add work await [`Backlog::room`] first.
    fn send(&self, write: Write) -> Result<(), Error> {
        let writes = self.writes.as_ref().ok_or(Error::Closed)?;
        self.shared.backlog.add();
        writes.send(write).map_err(|_| {
            self.shared.backlog.took(1);
            Error::Closed
        })
    }

    /// Tasks in `state` (all when `None`), lowest id first, at most `limit`.
    pub fn tasks(&self, state: Option<TaskState>, limit: usize) -> Result<Vec<TaskRow>, Error> {
        self.reader.tasks(state, limit)
    }

    /// Drops the payloads and outputs of finished tasks that `rule` selects, keeping their
    /// rows, states and errors. Returns how many tasks lost theirs. Unfinished tasks are
    /// never touched, nor the ballots of a decision still open: its recovery counts them.
    pub fn prune(&self, rule: Retention) -> Result<u64, Error> {
        let rule = rule.bounded();
        if rule == Retention::default() {
            return Ok(0);
        }
        let (done, result) = futures::channel::oneshot::channel();
        self.send(Write::Prune { rule, done })?;
        futures::executor::block_on(result).map_err(|_| Error::Closed)?
    }
}

/// Which recorded agents to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentQuery {
    All,
    One(AgentId),
    /// The agents that report to this one.
    Children(AgentId),
    /// The chain of command above this agent, nearest first.
    Ancestors(AgentId),
    /// The agents of the tier with this index (top tier 0).
    Tier(u8),
}

/// Read-only access to a colony database, also while another process runs on it: no lock
/// file, no writes, no migration.
#[derive(Debug)]
pub struct SqliteReader {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteReader {
    /// Opens an existing database for reading; it must be of this build's schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if path.is_dir() {
            return Err(Error::IsDirectory { path: shown });
        }
        if !path.exists() {
            return Err(Error::Missing { path: shown });
        }
        let reader = Self::connect(path)?;
        let (app, version) = reader.read(|c| {
            let app: i32 = c.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            let version: i32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            Ok((app, version))
        })?;
        if app != schema::APPLICATION_ID {
            return Err(Error::NotColony { path: shown });
        }
        if version > schema::LATEST {
            return Err(Error::TooNew {
                path: shown,
                version,
                supported: schema::LATEST,
            });
        }
        if version < schema::LATEST {
            return Err(Error::Storage(format!(
                "{shown} has schema version {version}: run colony on it once to migrate it to {}",
                schema::LATEST
            )));
        }
        Ok(reader)
    }

    fn connect(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(e, path))?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(|e| classify(e, path))?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| classify(e, &self.path))
    }

    /// Tasks in `state` (all when `None`), lowest id first, at most `limit`.
    pub fn tasks(&self, state: Option<TaskState>, limit: usize) -> Result<Vec<TaskRow>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY id LIMIT ?2"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(rusqlite::params![state.map(state_code), limit], task_row)?;
            rows.collect()
        })
    }

    /// See [`Journal::recent`].
    pub fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) AND id < ?2 \
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let before = before.map_or(i64::MAX, |b| i64::try_from(b.0).unwrap_or(i64::MAX));
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let state = state.map(state_code);
            let rows = stmt.query_map(rusqlite::params![state, before, limit], task_row)?;
            rows.collect()
        })
    }

    pub fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))?
                .query_row([id.0 as i64], task_row)
                .optional()
        })
    }

    /// Tasks per state as last committed.
    pub fn counts(&self) -> Result<Counts, Error> {
        self.read(read_counts)
    }

    /// Recorded agents that `query` selects, by id, at most `limit`. Every query uses an index
    /// (the primary key, `parent` or `tier`): none scans the hierarchy.
    pub fn agents(&self, query: AgentQuery, limit: usize) -> Result<Vec<AgentRecord>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let (sql, key): (&str, i64) = match query {
                AgentQuery::All => ("SELECT id, tier, parent, pool FROM agents ORDER BY id LIMIT ?2", -1),
                AgentQuery::Children(id) => (
                    "SELECT id, tier, parent, pool FROM agents WHERE parent = ?1 ORDER BY id LIMIT ?2",
                    i64::from(id.0),
                ),
                AgentQuery::Tier(tier) => (
                    "SELECT id, tier, parent, pool FROM agents WHERE tier = ?1 ORDER BY id LIMIT ?2",
                    i64::from(tier),
                ),
                AgentQuery::Ancestors(id) => (
                    "WITH RECURSIVE chain(id, tier, parent, pool, depth) AS (
                        SELECT id, tier, parent, pool, 0 FROM agents WHERE id = ?1
                        UNION ALL
                        SELECT a.id, a.tier, a.parent, a.pool, c.depth + 1
                        FROM agents a JOIN chain c ON a.id = c.parent
                     )
                     SELECT id, tier, parent, pool FROM chain WHERE depth > 0 ORDER BY depth LIMIT ?2",
                    i64::from(id.0),
                ),
                AgentQuery::One(id) => (
                    "SELECT id, tier, parent, pool FROM agents WHERE id = ?1 LIMIT ?2",
                    i64::from(id.0),
                ),
            };
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(rusqlite::params![key, limit], |r| {
                Ok(AgentRecord {
                    id: AgentId(r.get(0)?),
                    tier: r.get(1)?,
                    parent: r.get::<_, Option<u32>>(2)?.map(AgentId),
                    pool: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Tier names top down, with the number of recorded agents in each.
    pub fn tiers(&self) -> Result<Vec<(String, u64)>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.name, (SELECT count(*) FROM agents a WHERE a.tier = t.tier) \
                 FROM tiers t ORDER BY t.tier",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    pub fn decision(&self, id: TaskId) -> Result<Option<DecisionRow>, Error> {
        self.read(|c| {
            let row = c
                .prepare_cached(&format!(
                    "SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?1"
                ))?
                .query_row([id.0 as i64], decision_row)
                .optional()?;
            row.map(|row| with_calls(c, row)).transpose()
        })
    }

    /// See [`Journal::decisions`].
    pub fn decisions(
        &self,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DECISION_COLUMNS} FROM decisions WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let before = before.map_or(i64::MAX, |b| i64::try_from(b.0).unwrap_or(i64::MAX));
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(rusqlite::params![before, limit], decision_row)?;
            let rows: Vec<DecisionRow> = rows.collect::<rusqlite::Result<_>>()?;
            rows.into_iter().map(|row| with_calls(c, row)).collect()
        })
    }

    /// See [`Journal::closed_ballots`]: one range read of the decisions that can hold them.
    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error> {
        let (Some(lo), Some(hi)) = (tasks.first(), tasks.last()) else {
            return Ok(Vec::new());
        };
        // A decision holding `lo` began at most MAX_PARTICIPANTS - 1 tasks before it.
        let from =
            lo.0.saturating_sub(colony_core::decision::MAX_PARTICIPANTS as u64);
        let closed: Vec<(u64, u64)> = self.read(|c| {
            let range = |r: &Row<'_>| {
                let first = r.get::<_, i64>(0)? as u64;
                Ok((first, first + r.get::<_, i64>(1)? as u64))
            };
            let bounds = rusqlite::params![from as i64, hi.0 as i64];
            let mut stmt = c.prepare_cached(
                "SELECT id, coalesce(asked, json_array_length(seats)) FROM decisions \
                 WHERE id BETWEEN ?1 AND ?2 AND outcome IS NOT NULL",
            )?;
            let mut ranges: Vec<(u64, u64)> = stmt.query_map(bounds, range)?.collect::<rusqlite::Result<_>>()?;
            // Later calls: their tasks are far from the decision's id.
            let mut stmt = c.prepare_cached(
                "SELECT c.first, c.tasks FROM decision_calls c JOIN decisions d ON d.id = c.decision \
                 WHERE c.first BETWEEN ?1 AND ?2 AND d.outcome IS NOT NULL",
            )?;
            ranges.extend(stmt.query_map(bounds, range)?.collect::<rusqlite::Result<Vec<_>>>()?);
            ranges.sort_unstable();
            Ok(ranges)
        })?;
        Ok(crate::ballots_among(tasks, &closed))
    }

    fn open_decisions(&self) -> Result<Vec<DecisionRow>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DECISION_COLUMNS} FROM decisions WHERE outcome IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([], decision_row)?;
            let rows: Vec<DecisionRow> = rows.collect::<rusqlite::Result<_>>()?;
            rows.into_iter().map(|row| with_calls(c, row)).collect()
        })
    }

    fn unfinished(&self) -> Result<Vec<TaskRow>, Error> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE state < 2 ORDER BY id"
            ))?;
            let rows = stmt.query_map([], task_row)?;
            rows.collect()
        })
    }
}

impl Drop for SqliteJournal {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what it holds and stop.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Journal for SqliteJournal {
    fn next_task_id(&self) -> TaskId {
        TaskId(self.shared.next_id.load(Relaxed))
    }

    fn backlog(&self) -> Option<&Backlog> {
        Some(&self.shared.backlog)
    }

    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable {
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Accept {
            first,
            specs: specs.to_vec(),
            decision: None,
            done,
        }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn open_decision(&self, first: TaskId, specs: &[TaskSpec], opening: Opening) -> Durable {
        if let Err(e) = crate::check_opening(specs, &opening) {
            return Durable::ready(Err(e));
        }
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Accept {
            first,
            specs: specs.to_vec(),
            decision: Some(Ballots::Open(opening)),
            done,
        }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn ask(&self, decision: TaskId, first: TaskId, specs: &[TaskSpec], call: Call) -> Durable {
        if specs.len() != call.asked.len() {
            return Durable::ready(Err(Error::Ballots {
                seats: call.asked.len(),
                specs: specs.len(),
            }));
        }
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Accept {
            first,
            specs: specs.to_vec(),
            decision: Some(Ballots::Call { decision, call }),
            done,
        }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn close_decision(&self, id: TaskId, outcome: Arc<str>) -> Durable {
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Decided { id, outcome, done }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn decided(&self, id: TaskId, spec: &TaskSpec, taken: crate::Taken) -> Durable {
        if let Err(e) = crate::check_opening(&[], &taken.opening) {
            return Durable::ready(Err(e));
        }
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Accept {
            first: id,
            specs: vec![spec.clone()],
            decision: Some(Ballots::Taken(taken)),
            done,
        }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn decision(&self, id: TaskId) -> Result<Option<DecisionRow>, Error> {
        self.reader.decision(id)
    }

    fn decisions(&self, before: Option<TaskId>, limit: usize) -> Result<Vec<DecisionRow>, Error> {
        self.reader.decisions(before, limit)
    }

    fn open_decisions(&self) -> Result<Vec<DecisionRow>, Error> {
        self.reader.open_decisions()
    }

    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error> {
        self.reader.closed_ballots(tasks)
    }

    fn record(&self, batch: Vec<Record>) -> Durable {
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Record {
            records: batch,
            done,
        }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        self.reader.task(id)
    }

    fn counts(&self) -> Result<Counts, Error> {
        Ok(*self.shared.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn unfinished(&self) -> Result<Vec<TaskRow>, Error> {
        self.reader.unfinished()
    }

    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        self.reader.recent(state, before, limit)
    }

    fn recover(&self) -> Result<Vec<TaskRow>, Error> {
        let (done, durable) = Durable::pending();
        self.send(Write::Recover { done })?;
        futures::executor::block_on(durable)?;
        self.unfinished()
    }

    fn stats(&self) -> Stats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_agents(&self, tiers: &[String], agents: Vec<AgentRecord>, replace: bool) -> Durable {
        let (done, durable) = Durable::pending();
        let write = Write::Agents {
            tiers: tiers.to_vec(),
            agents,
            replace,
            done,
        };
        if let Err(error) = self.send(write) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        self.reader.agents(AgentQuery::All, usize::MAX)
    }

    fn record_reputations(&self, rows: Vec<crate::ReputationRow>) -> Durable {
        let (done, durable) = Durable::pending();
        if let Err(error) = self.send(Write::Reputations { rows, done }) {
            return Durable::ready(Err(error));
        }
        durable
    }

    fn reputations(&self) -> Result<Vec<crate::ReputationRow>, Error> {
        self.reader.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT agent, pool, score, observations FROM reputations ORDER BY agent",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(crate::ReputationRow {
                    agent: AgentId(r.get(0)?),
                    pool: r.get(1)?,
                    score: r.get(2)?,
                    observations: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }
}

const DECISION_COLUMNS: &str = "id, options, seats, opened_at, outcome, ended_at, asked";

/// `row` with its later calls, oldest first.
fn with_calls(c: &Connection, mut row: DecisionRow) -> rusqlite::Result<DecisionRow> {
    let mut stmt = c.prepare_cached(
        "SELECT first, call FROM decision_calls WHERE decision = ?1 ORDER BY first",
    )?;
    let calls = stmt.query_map([row.id.0 as i64], |r| {
        let text: String = r.get(1)?;
        let call: Call = serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok((TaskId(r.get::<_, i64>(0)? as u64), call))
    })?;
    row.calls = calls.collect::<rusqlite::Result<_>>()?;
    Ok(row)
}

fn decision_row(r: &Row<'_>) -> rusqlite::Result<DecisionRow> {
    let seats: String = r.get(2)?;
    let seats: Vec<Seat> = serde_json::from_str(&seats).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    // Rows from before migration 4 asked every seat.
    let asked = r.get::<_, Option<u32>>(6)?.unwrap_or(seats.len() as u32);
    Ok(DecisionRow {
        id: TaskId(r.get::<_, i64>(0)? as u64),
        calls: Vec::new(),
        opening: Opening {
            options: r.get::<_, String>(1)?.into(),
            seats,
            asked,
            opened_at_ms: r.get::<_, i64>(3)? as u64,
        },
        outcome: r.get::<_, Option<String>>(4)?.map(Into::into),
        ended_at_ms: r.get::<_, Option<i64>>(5)?.map(|t| t as u64),
    })
}

const COLUMNS: &str = "id, key, priority, requirement, payload, timeout_ms, max_attempts, \
                       state, attempt, agent, output, error, finished_at";

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    let requirement: Option<String> = r.get(3)?;
    let requirement = match requirement {
        None => Requirement::default(),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?,
    };
    let priority: u8 = r.get(2)?;
    let state: i64 = r.get(7)?;
    let output: Option<Vec<u8>> = r.get(10)?;
    let error: Option<String> = r.get(11)?;
    let agent: Option<u32> = r.get(9)?;
    let key: Option<String> = r.get(1)?;
    let finished_at: Option<i64> = r.get(12)?;
    Ok(TaskRow {
        id: TaskId(r.get::<_, i64>(0)? as u64),
        spec: TaskSpec {
            key: key.map(Into::into),
            requirement,
            priority: Priority::new(priority.min(Priority::HIGHEST.get())).unwrap_or_default(),
            payload: r.get::<_, Vec<u8>>(4)?.into(),
            timeout: Duration::from_millis(r.get::<_, i64>(5)?.max(1) as u64),
            max_attempts: r.get(6)?,
        },
        state: state_from(state),
        attempt: r.get(8)?,
        agent: agent.map(AgentId),
        output: output.map(Into::into),
        error: error.map(Into::into),
        // Microseconds on disk; only a terminal row's counts (a retried task's is cleared).
        ended_at_ms: finished_at
            .filter(|_| state >= 2)
            .map(|us| us.max(0) as u64 / 1000),
    })
}

pub(crate) fn state_code(state: TaskState) -> i64 {
    match state {
        TaskState::Queued => 0,
        TaskState::Running => 1,
        TaskState::Succeeded => 2,
        TaskState::Failed => 3,
        TaskState::DeadLettered => 4,
        TaskState::Cancelled => 5,
    }
}

fn state_from(code: i64) -> TaskState {
    match code {
        0 => TaskState::Queued,
        1 => TaskState::Running,
        2 => TaskState::Succeeded,
        3 => TaskState::Failed,
        4 => TaskState::DeadLettered,
        _ => TaskState::Cancelled,
    }
}

fn read_counts(conn: &Connection) -> rusqlite::Result<Counts> {
    let mut counts = Counts::default();
    let mut stmt = conn.prepare("SELECT state, n FROM counts")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (state, n) = row?;
        counts.added(state_from(state), n.max(0) as u64);
    }
    Ok(counts)
}

/// Takes the lock file beside the database, or says which process holds it.
pub(crate) fn lock_file(path: &Path) -> Result<File, Error> {
    // One lock per file, however its path is spelled (relative, through a symlink).
    let path = &canonical(path);
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            Error::Storage(format!(
                "cannot open lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.display().to_string(),
            detail: format!("another colony process holds {}", lock_path.display()),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Storage(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// The canonical form of `path`, which need not exist yet: its folder's canonical form and
/// its name (a symlink at the path itself is followed when it exists).
pub(crate) fn canonical(path: &Path) -> PathBuf {
    if let Ok(full) = std::fs::canonicalize(path) {
        return full;
    }
    let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()),
        None => std::env::current_dir().unwrap_or_default(),
    };
    match path.file_name() {
        Some(name) => folder.join(name),
        None => path.to_owned(),
    }
}

/// Turns a SQLite error into one that says what happened and what to do.
pub(crate) fn classify(e: rusqlite::Error, path: &Path) -> Error {
    let path_text = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => Error::Full { path: path_text },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Locked {
            path: path_text,
            detail: "another program holds a lock on the database".into(),
        },
        Some(ErrorCode::NotADatabase) => Error::NotColony { path: path_text },
        Some(ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: path_text,
            detail: e.to_string(),
        },
        Some(ErrorCode::CannotOpen) => Error::Storage(format!("cannot open {path_text}: {e}")),
        Some(ErrorCode::ReadOnly) => Error::Storage(format!("{path_text} is read-only: {e}")),
        _ => Error::Storage(format!("{path_text}: {e}")),
    }
}
