//! The writer thread: group commit, fencing in the transaction, and retry after a fault.

use super::{Shared, SqliteOptions, classify, state_code};
use crate::{AgentRecord, Call, Counts, Error, Opening, Record, ReputationRow, Stats};
use colony_core::{
    TaskId,
    task::{TaskSpec, TaskState},
};
use futures::channel::oneshot;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

type Done = oneshot::Sender<Result<(), Error>>;

/// What the writer is asked to do.
pub(super) enum Write {
    /// Tasks accepted; with `decision`, the decision they are the ballots of, in the same
    /// transaction.
    Accept {
        first: TaskId,
        specs: Vec<TaskSpec>,
        decision: Option<Ballots>,
        done: Done,
    },
    /// How a decision ended.
    Decided {
        id: TaskId,
        outcome: Arc<str>,
        done: Done,
    },
    Record {
        records: Vec<Record>,
        done: Done,
    },
    /// Running tasks go back to queued: their attempts died with the last process.
    Recover {
        done: Done,
    },
    /// Records workers' reputations, each replacing the agent's earlier row.
    Reputations {
        rows: Vec<ReputationRow>,
        done: Done,
    },
    /// Records agents of the hierarchy.
    Agents {
        tiers: Vec<String>,
        agents: Vec<AgentRecord>,
        replace: bool,
        done: Done,
    },
    /// Drops payloads and outputs of finished tasks, keeping the rows.
    Prune {
        rule: Retention,
        done: oneshot::Sender<Result<u64, Error>>,
    },
}

/// Whose ballots accepted tasks are.
pub(super) enum Ballots {
    /// A new decision's opening.
    Open(Opening),
    /// A later call of an open decision.
    Call { decision: TaskId, call: Call },
    /// A decision taken inline, whole: the one task accepted is its question, ended at once.
    Taken(crate::Taken),
}

pub use crate::Retention;

impl Write {
    fn weight(&self) -> usize {
        match self {
            Write::Accept { specs, .. } => specs.len(),
            Write::Record { records, .. } => records.len(),
            Write::Recover { .. } | Write::Prune { .. } | Write::Decided { .. } => 1,
            Write::Agents { agents, .. } => agents.len(),
            Write::Reputations { rows, .. } => rows.len(),
        }
    }
}

/// Longest pause between retries of a group that failed to commit.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    shared: Arc<Shared>,
    commit_records: usize,
    commit_wait: Duration,
    /// The id the next accepted task must have: ids are dense.
    next_id: u64,
}

/// What one transaction changed, applied to the shared state only if it commits.
#[derive(Default)]
struct Delta {
    moves: Vec<(TaskState, TaskState)>,
    added: u64,
    stats: Stats,
    next_id: u64,
    /// Tasks pruned, by index of the `Prune` write in the group.
    pruned: Vec<(usize, u64)>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        shared: Arc<Shared>,
        options: &SqliteOptions,
        next_id: u64,
    ) -> Self {
        Self {
            conn,
            path,
            shared,
            commit_records: options.commit_records.max(1),
            commit_wait: options.commit_wait,
            next_id,
        }
    }

    pub(super) fn run(mut self, inbox: mpsc::Receiver<Write>) {
        // Transitions that failed to commit for a passing reason, retried before anything new.
        let mut retry: Vec<Write> = Vec::new();
        // Writes of a group that failed for good, tried one by one to find the bad one.
        let mut isolate: VecDeque<Write> = VecDeque::new();
        let mut backoff = Duration::from_millis(10);
        let mut closed = false;
        loop {
            let mut group = std::mem::take(&mut retry);
            if group.is_empty()
                && let Some(w) = isolate.pop_front()
            {
                group.push(w);
            }
            let mut weight: usize = group.iter().map(Write::weight).sum();
            if group.is_empty() {
                match inbox.recv() {
                    Ok(w) => {
                        self.shared.backlog.took(1);
                        weight += w.weight();
                        group.push(w);
                    }
                    Err(_) => return,
                }
            }
            let deadline = Instant::now() + self.commit_wait;
            while isolate.is_empty() && weight < self.commit_records {
                let next = match inbox.try_recv() {
                    Ok(w) => Some(w),
                    Err(mpsc::TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            None
                        } else {
                            inbox.recv_timeout(left).ok()
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        None
                    }
                };
                let Some(w) = next else { break };
                self.shared.backlog.took(1);
                weight += w.weight();
                group.push(w);
            }
            match self.commit(&group) {
                Ok((mut delta, refused)) => {
                    let pruned = std::mem::take(&mut delta.pruned);
                    self.publish(delta);
                    let mut fault = self.shared.fault.lock().unwrap_or_else(|p| p.into_inner());
                    if fault.take().is_some() {
                        tracing::info!("Journal commits again.");
                    }
                    drop(fault);
                    backoff = Duration::from_millis(10);
                    for (i, w) in group.into_iter().enumerate() {
                        if let Write::Prune { done, .. } = w {
                            let n = pruned.iter().find(|(j, _)| *j == i).map_or(0, |(_, n)| *n);
                            let _ = done.send(Ok(n));
                            continue;
                        }
                        let result = refused
                            .iter()
                            .find(|(j, _)| *j == i)
                            .map_or(Ok(()), |(_, e)| Err(e.clone()));
                        done(w, result);
                    }
                }
                Err(error) if !passing(&error) => {
                    if group.len() > 1 {
                        // Some write in the group can never commit: find it alone.
                        isolate.extend(group);
                    } else {
                        tracing::error!(%error, "A journal write can never commit; it is dropped, and its tasks are recovered at the next start.");
                        for w in group {
                            done(w, Err(error.clone()));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "Journal commit failed; refusing submissions until it clears.");
                    *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(error.clone());
                    // Submissions fail now, so nobody is told "accepted" about tasks the disk
                    // does not hold; transitions of accepted tasks wait for the fault to clear,
                    // unless the journal is closing: then they are left to recovery.
                    for w in group {
                        match w {
                            Write::Accept { .. } | Write::Prune { .. } => {
                                done(w, Err(error.clone()))
                            }
                            other if closed => done(other, Err(error.clone())),
                            other => retry.push(other),
                        }
                    }
                    if closed && retry.is_empty() && isolate.is_empty() {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Applies a group in one transaction. Returns what changed, and the submissions refused
    /// on their own (by index in the group) while the rest committed.
    fn commit(&mut self, group: &[Write]) -> Result<(Delta, Vec<(usize, Error)>), Error> {
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| classify(e, &path);
        let now = unix_micros();
        let mut delta = Delta {
            next_id: self.next_id,
            ..Delta::default()
        };
        let mut refused = Vec::new();
        let tx = Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(&fail)?;
        for (i, w) in group.iter().enumerate() {
            match w {
                Write::Accept {
                    first,
                    specs,
                    decision,
                    ..
                } => {
                    if first.0 != delta.next_id {
                        refused.push((
                            i,
                            Error::IdOutOfOrder {
                                expected: TaskId(delta.next_id),
                                got: *first,
                            },
                        ));
                        continue;
                    }
                    insert(&tx, *first, specs, now).map_err(&fail)?;
                    match decision {
                        Some(Ballots::Open(opening)) => {
                            open_decision(&tx, *first, opening).map_err(&fail)?;
                        }
                        Some(Ballots::Call { decision, call }) => {
                            ask(&tx, *decision, *first, call).map_err(&fail)?;
                        }
                        Some(Ballots::Taken(taken)) => {
                            open_decision(&tx, *first, &taken.opening).map_err(&fail)?;
                            close_decision(&tx, *first, &taken.outcome, &mut delta)
                                .map_err(&fail)?;
                            let to = end_taken(&tx, *first, &taken.result, now).map_err(&fail)?;
                            delta.moves.push((TaskState::Queued, to));
                        }
                        None => {}
                    }
                    delta.added += specs.len() as u64;
                    delta.next_id = first.0 + specs.len() as u64;
                }
                Write::Record { records, .. } => {
                    for record in records {
                        apply(&tx, record, now, &mut delta).map_err(&fail)?;
                    }
                }
                Write::Decided { id, outcome, .. } => {
                    close_decision(&tx, *id, outcome, &mut delta).map_err(&fail)?;
                }
                Write::Agents {
                    tiers,
                    agents,
                    replace,
                    ..
                } => {
                    record_agents(&tx, tiers, agents, *replace).map_err(&fail)?;
                }
                Write::Reputations { rows, .. } => {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT OR REPLACE INTO reputations (agent, pool, score, observations) \
                             VALUES (?1, ?2, ?3, ?4)",
                        )
                        .map_err(&fail)?;
                    for r in rows {
                        stmt.execute(params![r.agent.0, r.pool, r.score, r.observations])
                            .map_err(&fail)?;
                    }
                }
                Write::Prune { rule, .. } => {
                    let before = rule.older_than.map(|age| now - age.as_micros() as i64);
                    // Finished tasks below this id are beyond the newest `keep_last`.
                    let cut: Option<i64> = match rule.keep_last {
                        None => None,
                        Some(keep) => tx
                            .query_row(
                                "SELECT id FROM tasks WHERE state >= 2 \
                                 ORDER BY id DESC LIMIT 1 OFFSET ?1",
                                [keep as i64],
                                |r| r.get::<_, i64>(0),
                            )
                            .optional()
                            .map_err(&fail)?
                            .map(|id| id + 1),
                    };
                    // The ballots of decisions still open are kept whole: a decision
                    // recovered counts their outputs. Pruned are the ids between them.
                    let mut n = 0;
                    let gaps = outside(&open_ballots(&tx).map_err(&fail)?);
                    let mut prune = tx
                        .prepare_cached(
                            "UPDATE tasks SET payload = X'', output = NULL \
                             WHERE id >= ?3 AND id < ?4 AND state >= 2 \
                             AND (payload != X'' OR output IS NOT NULL) \
                             AND ((?1 IS NOT NULL AND finished_at < ?1) \
                                  OR (?2 IS NOT NULL AND id < ?2))",
                        )
                        .map_err(&fail)?;
                    for (from, to) in gaps {
                        n += prune
                            .execute(params![before, cut, from, to])
                            .map_err(&fail)? as u64;
                    }
                    delta.pruned.push((i, n));
                }
                Write::Recover { .. } => {
                    let n = tx
                        .execute("UPDATE tasks SET state = 0 WHERE state = 1", [])
                        .map_err(&fail)?;
                    tx.execute(
                        "UPDATE tasks SET attempt = attempt + max_attempts WHERE state = 0",
                        [],
                    )
                    .map_err(&fail)?;
                    delta
                        .moves
                        .extend((0..n).map(|_| (TaskState::Running, TaskState::Queued)));
                }
            }
        }
        let mut counts = Counts::default();
        counts.added(TaskState::Queued, delta.added);
        let mut change = [0i64; 6];
        change[0] += delta.added as i64;
        for (from, to) in &delta.moves {
            change[state_code(*from) as usize] -= 1;
            change[state_code(*to) as usize] += 1;
        }
        {
            let mut stmt = tx
                .prepare_cached("UPDATE counts SET n = n + ?2 WHERE state = ?1")
                .map_err(&fail)?;
            for (state, n) in change.iter().enumerate().filter(|(_, n)| **n != 0) {
                stmt.execute(params![state as i64, n]).map_err(&fail)?;
            }
        }
        tx.commit().map_err(&fail)?;
        self.next_id = delta.next_id;
        Ok((delta, refused))
    }

    fn publish(&self, delta: Delta) {
        let mut counts = self.shared.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.added(TaskState::Queued, delta.added);
        for (from, to) in delta.moves {
            counts.moved(from, to);
        }
        drop(counts);
        let mut stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.fenced += delta.stats.fenced;
        stats.unknown += delta.stats.unknown;
        stats.invalid += delta.stats.invalid;
        self.shared.next_id.fetch_max(delta.next_id, Relaxed);
    }
}

/// Whether a failed commit may succeed if tried again: a full disk, a lock held by another
/// program, an I/O error. Anything else (a value SQLite refuses, a corrupt page) never will.
fn passing(error: &Error) -> bool {
    match error {
        Error::Full { .. } | Error::Locked { .. } => true,
        Error::Storage(message) => message.contains("disk I/O error"),
        _ => false,
    }
}

fn done(w: Write, result: Result<(), Error>) {
    let done = match w {
        Write::Accept { done, .. }
        | Write::Record { done, .. }
        | Write::Recover { done }
        | Write::Decided { done, .. }
        | Write::Agents { done, .. }
        | Write::Reputations { done, .. } => done,
        Write::Prune { done, .. } => {
            let _ = done.send(result.map(|()| 0));
            return;
        }
    };
    let _ = done.send(result);
}

fn record_agents(
    tx: &Transaction<'_>,
    tiers: &[String],
    agents: &[AgentRecord],
    replace: bool,
) -> rusqlite::Result<()> {
    if replace {
        tx.execute("DELETE FROM agents", [])?;
        tx.execute("DELETE FROM tiers", [])?;
    }
    let mut stmt =
        tx.prepare_cached("INSERT OR REPLACE INTO tiers (tier, name) VALUES (?1, ?2)")?;
    for (i, name) in tiers.iter().enumerate() {
        stmt.execute(params![i as i64, name])?;
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO agents (id, tier, parent, pool) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for a in agents {
        stmt.execute(params![a.id.0, a.tier, a.parent.map(|p| p.0), a.pool])?;
    }
    Ok(())
}

fn open_decision(tx: &Transaction<'_>, id: TaskId, opening: &Opening) -> rusqlite::Result<()> {
    let seats = serde_json::to_string(&opening.seats).expect("seats are plain data");
    tx.prepare_cached(
        "INSERT INTO decisions (id, options, seats, opened_at, asked) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.0 as i64,
        &*opening.options,
        seats,
        opening.opened_at_ms as i64,
        opening.asked
    ])?;
    Ok(())
}

fn ask(tx: &Transaction<'_>, decision: TaskId, first: TaskId, call: &Call) -> rusqlite::Result<()> {
    let text = serde_json::to_string(call).expect("a call is plain data");
    tx.prepare_cached(
        "INSERT INTO decision_calls (first, decision, call, tasks) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        first.0 as i64,
        decision.0 as i64,
        text,
        call.asked.len() as i64
    ])?;
    Ok(())
}

/// Ends the question of a decision taken inline, just inserted: succeeded with the decided
/// value, or failed with the reason.
fn end_taken(
    tx: &Transaction<'_>,
    id: TaskId,
    result: &Result<bytes::Bytes, Arc<str>>,
    now: i64,
) -> rusqlite::Result<TaskState> {
    let (state, output, error) = match result {
        Ok(value) => (TaskState::Succeeded, Some(&value[..]), None),
        Err(reason) => (TaskState::Failed, None, Some(&**reason)),
    };
    tx.prepare_cached(
        "UPDATE tasks SET state = ?2, output = ?3, error = ?4, finished_at = ?5 WHERE id = ?1",
    )?
    .execute(params![id.0 as i64, state_code(state), output, error, now])?;
    Ok(state)
}

/// The first outcome stands: a second is fenced.
fn close_decision(
    tx: &Transaction<'_>,
    id: TaskId,
    outcome: &str,
    delta: &mut Delta,
) -> rusqlite::Result<()> {
    let closed = tx
        .prepare_cached(
            "UPDATE decisions SET outcome = ?2, ended_at = ?3 WHERE id = ?1 AND outcome IS NULL",
        )?
        .execute(params![id.0 as i64, outcome, crate::now_ms() as i64])?;
    if closed == 0 {
        let exists = tx
            .prepare_cached("SELECT 1 FROM decisions WHERE id = ?1")?
            .exists([id.0 as i64])?;
        if exists {
            delta.stats.fenced += 1;
        } else {
            delta.stats.unknown += 1;
        }
    }
    Ok(())
}

fn insert(
    tx: &Transaction<'_>,
    first: TaskId,
    specs: &[TaskSpec],
    now: i64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO tasks (id, key, priority, requirement, payload, timeout_ms, max_attempts, \
         state, attempt, accepted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8)",
    )?;
    for (i, spec) in specs.iter().enumerate() {
        let requirement = if spec.requirement.is_any() {
            None
        } else {
            Some(serde_json::to_string(&spec.requirement).expect("a requirement is plain data"))
        };
        stmt.execute(params![
            (first.0 + i as u64) as i64,
            spec.key.as_deref(),
            spec.priority.get(),
            requirement,
            &spec.payload[..],
            spec.timeout.as_millis() as i64,
            spec.max_attempts,
            now,
        ])?;
    }
    Ok(())
}

/// Applies one transition with its fencing condition in the statement itself.
fn apply(
    tx: &Transaction<'_>,
    record: &Record,
    now: i64,
    delta: &mut Delta,
) -> rusqlite::Result<()> {
    let task = record.task().0 as i64;
    let (changed, from, to) = match record {
        Record::Started { attempt, agent, .. } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET state = 1, attempt = ?2, agent = ?3 \
                 WHERE id = ?1 AND attempt < ?2 AND state = ?4",
            )?;
            if stmt.execute(params![task, attempt, agent.0, 0])? == 1 {
                (true, TaskState::Queued, TaskState::Running)
            } else {
                let again = stmt.execute(params![task, attempt, agent.0, 1])? == 1;
                (again, TaskState::Running, TaskState::Running)
            }
        }
        Record::Committed {
            attempt, output, ..
        } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET state = 2, output = ?3, error = NULL, finished_at = ?4 \
                 WHERE id = ?1 AND attempt = ?2 AND state = 1",
            )?;
            let changed = stmt.execute(params![task, attempt, &output[..], now])? == 1;
            (changed, TaskState::Running, TaskState::Succeeded)
        }
        Record::Failed {
            attempt,
            error,
            next,
            ..
        } => {
            if !Record::may_follow_failure(*next) {
                delta.stats.invalid += 1;
                return Ok(());
            }
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET state = ?3, error = ?4, \
                 finished_at = CASE WHEN ?3 >= 2 THEN ?5 END \
                 WHERE id = ?1 AND attempt = ?2 AND state = 1",
            )?;
            let changed =
                stmt.execute(params![task, attempt, state_code(*next), &**error, now])? == 1;
            (changed, TaskState::Running, *next)
        }
        Record::Cancelled { .. } => {
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET state = 5, finished_at = ?2 WHERE id = ?1 AND state = ?3",
            )?;
            if stmt.execute(params![task, now, 0])? == 1 {
                (true, TaskState::Queued, TaskState::Cancelled)
            } else if stmt.execute(params![task, now, 1])? == 1 {
                (true, TaskState::Running, TaskState::Cancelled)
            } else {
                // Cancelling a finished task is no fault of anyone's: nothing to count.
                return Ok(());
            }
        }
    };
    if changed {
        if from != to {
            delta.moves.push((from, to));
        }
        return Ok(());
    }
    let exists = tx
        .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?
        .exists([task])?;
    if exists {
        delta.stats.fenced += 1;
    } else {
        delta.stats.unknown += 1;
    }
    Ok(())
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The task ids `[first, end)` of every ballot of a decision still open: its opening's and
/// its later calls'.
fn open_ballots(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, id + coalesce(asked, json_array_length(seats)) FROM decisions \
         WHERE outcome IS NULL \
         UNION ALL \
         SELECT c.first, c.first + c.tasks FROM decision_calls c \
         JOIN decisions d ON d.id = c.decision WHERE d.outcome IS NULL",
    )?;
    let ranges = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    ranges.collect()
}

/// The ids `[from, to)` from 0 to `i64::MAX` that none of `ranges` (each `[first, end)`, in
/// any order, overlapping or not) holds.
fn outside(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut ranges = ranges.to_vec();
    ranges.sort_unstable();
    let mut gaps = Vec::with_capacity(ranges.len() + 1);
    let mut from = 0;
    for (first, end) in ranges {
        if end <= first {
            continue;
        }
        if first > from {
            gaps.push((from, first));
        }
        from = from.max(end);
    }
    if from < i64::MAX {
        gaps.push((from, i64::MAX));
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::outside;

    #[test]
    fn the_ids_outside_ranges_are_the_gaps_between_them() {
        assert_eq!(outside(&[]), vec![(0, i64::MAX)]);
        assert_eq!(outside(&[(5, 8)]), vec![(0, 5), (8, i64::MAX)]);
        // Unsorted, overlapping, touching, nested and empty ranges.
        assert_eq!(
            outside(&[(20, 30), (5, 8), (7, 10), (10, 12), (21, 22), (15, 15)]),
            vec![(0, 5), (12, 20), (30, i64::MAX)]
        );
        assert_eq!(outside(&[(0, 3)]), vec![(3, i64::MAX)]);
    }
}
