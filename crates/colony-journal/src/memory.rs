use crate::{
    AgentRecord, Call, Counts, DecisionRow, Durable, Error, Journal, Opening, Record, Stats,
    TaskRow,
};
use bytes::Bytes;
use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use std::sync::{Arc, Mutex, MutexGuard};

/// A journal that keeps everything in memory: fast, and gone with the process. Tasks live in a
/// vector indexed by id, so a batch of transitions costs one lock and one index per record.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rows: Rows,
    agents: Vec<AgentRecord>,
    /// By id, which rises with each decision opened.
    decisions: Vec<DecisionRow>,
    reputations: std::collections::BTreeMap<AgentId, crate::ReputationRow>,
    counts: Counts,
    stats: Stats,
    /// Drop a task's payload and output once it is terminal (see
    /// [`MemoryJournal::forgetting_finished`]).
    forget_finished: bool,
}

#[derive(Debug)]
struct Row {
    spec: TaskSpec,
    state: TaskState,
    attempt: u32,
    agent: Option<AgentId>,
    output: Option<Bytes>,
    error: Option<Arc<str>>,
    /// When it ended, in milliseconds since the Unix epoch, if known.
    ended_at_ms: Option<u64>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A journal that keeps no payload or output of a finished task, only its row (state,
    /// attempts, error), as `prune` does on disk: for a run that hands each result to its
    /// caller and never reads it back (`colony run` without `--db`), so that its memory does
    /// not grow with every output and payload of the run.
    pub fn forgetting_finished() -> Self {
        Self {
            inner: Mutex::new(Inner {
                forget_finished: true,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a row half-written (every update is a
        // few assignments), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Rows in fixed-size chunks: growing never copies the rows already there, so no append
/// holds the lock for the milliseconds a reallocation of millions of rows takes.
#[derive(Debug, Default)]
struct Rows {
    chunks: Vec<Vec<Row>>,
    len: usize,
}

const CHUNK: usize = 1 << 16;

impl Rows {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Option<&Row> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Row> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    fn push(&mut self, row: Row) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(row);
        self.len += 1;
    }
}

/// Task ids start at 1; row `i` holds task `i + 1`.
fn index(id: TaskId) -> usize {
    (id.0 as usize).wrapping_sub(1)
}

impl Inner {
    /// Applies `record`; a task it ends ends at `at_ms`, if known.
    fn apply(&mut self, record: Record, at_ms: Option<u64>) {
        let forget = self.forget_finished;
        let Some(row) = self.rows.get_mut(index(record.task())) else {
            self.stats.unknown += 1;
            return;
        };
        let from = row.state;
        match record {
            Record::Started { attempt, agent, .. } => {
                if from.is_terminal() || attempt <= row.attempt {
                    self.stats.fenced += 1;
                    return;
                }
                row.attempt = attempt;
                row.agent = Some(agent);
                row.state = TaskState::Running;
            }
            Record::Committed {
                attempt, output, ..
            } => {
                if from != TaskState::Running || attempt != row.attempt {
                    self.stats.fenced += 1;
                    return;
                }
                row.output = Some(output);
                row.error = None;
                row.state = TaskState::Succeeded;
            }
            Record::Failed {
                attempt,
                error,
                next,
                ..
            } => {
                if !Record::may_follow_failure(next) {
                    self.stats.invalid += 1;
                    return;
                }
                if from != TaskState::Running || attempt != row.attempt {
                    self.stats.fenced += 1;
                    return;
                }
                row.error = Some(error);
                row.state = next;
            }
            Record::Cancelled { .. } => {
                if from.is_terminal() {
                    return;
                }
                row.state = TaskState::Cancelled;
            }
        }
        if row.state.is_terminal() {
            row.ended_at_ms = at_ms;
            if forget {
                row.spec.payload = Bytes::new();
                row.output = None;
            }
        }
        self.counts.moved(from, row.state);
    }

    /// Tasks `first, first + 1, ...` queued, if `first` continues the ids.
    fn accept(&mut self, first: TaskId, specs: &[TaskSpec]) -> Result<(), Error> {
        let expected = TaskId(self.rows.len() as u64 + 1);
        if first != expected {
            return Err(Error::IdOutOfOrder {
                expected,
                got: first,
            });
        }
        for spec in specs {
            self.rows.push(Row {
                spec: spec.clone(),
                state: TaskState::Queued,
                attempt: 0,
                agent: None,
                output: None,
                error: None,
                ended_at_ms: None,
            });
        }
        self.counts.added(TaskState::Queued, specs.len() as u64);
        Ok(())
    }

    fn row(&self, id: TaskId) -> Option<TaskRow> {
        let row = self.rows.get(index(id))?;
        Some(TaskRow {
            id,
            spec: row.spec.clone(),
            state: row.state,
            attempt: row.attempt,
            agent: row.agent,
            output: row.output.clone(),
            error: row.error.clone(),
            ended_at_ms: row.ended_at_ms,
        })
    }
}

impl MemoryJournal {
    /// Sets tasks' rows as they are in `rows` (ascending ids, each at most one past the last
    /// task held): a row already held is replaced, the next one appended. For a journal that
    /// keeps its state as a snapshot of rows: restored over the writes that made them, or
    /// over nothing, the rows come out the same.
    pub fn restore_rows(&self, rows: Vec<TaskRow>) -> Result<(), Error> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for row in rows {
            let at = index(row.id);
            let restored = Row {
                spec: row.spec,
                state: row.state,
                attempt: row.attempt,
                agent: row.agent,
                output: row.output,
                error: row.error,
                ended_at_ms: row.ended_at_ms,
            };
            if at == inner.rows.len() {
                inner.counts.added(restored.state, 1);
                inner.rows.push(restored);
                continue;
            }
            let Some(held) = inner.rows.get_mut(at) else {
                return Err(Error::IdOutOfOrder {
                    expected: TaskId(inner.rows.len() as u64 + 1),
                    got: row.id,
                });
            };
            inner.counts.moved(held.state, restored.state);
            *held = restored;
        }
        Ok(())
    }

    /// Sets decisions as they are in `rows`: one held is replaced, another added.
    pub fn restore_decisions(&self, rows: Vec<DecisionRow>) {
        let mut inner = self.lock();
        for row in rows {
            // Ascending ids past those held (a snapshot read alone) are appended.
            if inner.decisions.last().is_none_or(|last| last.id < row.id) {
                inner.decisions.push(row);
                continue;
            }
            match inner.decisions.binary_search_by_key(&row.id, |d| d.id) {
                Ok(i) => inner.decisions[i] = row,
                Err(i) => inner.decisions.insert(i, row),
            }
        }
    }

    /// Forgets the fenced, unknown and invalid records counted so far: a journal that
    /// replays an earlier process's writes into this one counts, as a SQLite journal does,
    /// only those of its own process.
    pub fn clear_stats(&self) {
        self.lock().stats = Stats::default();
    }

    /// [`Journal::record`], the tasks it ends ended at `at_ms` (milliseconds since the Unix
    /// epoch; `None`: not known) rather than now: for a journal that replays its writes
    /// into this one.
    pub fn record_at(&self, batch: Vec<Record>, at_ms: Option<u64>) -> Durable {
        let mut inner = self.lock();
        for record in batch {
            inner.apply(record, at_ms);
        }
        Durable::ready(Ok(()))
    }

    /// [`Journal::close_decision`], ended at `at_ms` (milliseconds since the Unix epoch)
    /// rather than now: for a journal that replays its writes into this one.
    pub fn close_decision_at(&self, id: TaskId, outcome: Arc<str>, at_ms: u64) -> Durable {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Ok(i) = inner.decisions.binary_search_by_key(&id, |d| d.id) else {
            inner.stats.unknown += 1;
            return Durable::ready(Ok(()));
        };
        let row = &mut inner.decisions[i];
        if row.outcome.is_some() {
            inner.stats.fenced += 1;
        } else {
            row.outcome = Some(outcome);
            row.ended_at_ms = Some(at_ms);
        }
        Durable::ready(Ok(()))
    }

    /// [`Journal::decided`], ended at `at_ms` (milliseconds since the Unix epoch) rather
    /// than now: for a journal that replays its writes into this one.
    pub fn decided_at(
        &self,
        id: TaskId,
        spec: &TaskSpec,
        taken: crate::Taken,
        at_ms: u64,
    ) -> Durable {
        if let Err(e) = crate::check_opening(&[], &taken.opening) {
            return Durable::ready(Err(e));
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Err(e) = inner.accept(id, std::slice::from_ref(spec)) {
            return Durable::ready(Err(e));
        }
        let row = inner.rows.get_mut(index(id)).expect("just accepted");
        row.state = match taken.result {
            Ok(value) => {
                row.output = Some(value);
                TaskState::Succeeded
            }
            Err(reason) => {
                row.error = Some(reason);
                TaskState::Failed
            }
        };
        row.ended_at_ms = Some(at_ms);
        if inner.forget_finished {
            row.spec.payload = Bytes::new();
            row.output = None;
        }
        inner.counts.moved(TaskState::Queued, row.state);
        inner.decisions.push(DecisionRow {
            id,
            opening: taken.opening,
            calls: Vec::new(),
            outcome: Some(taken.outcome),
            ended_at_ms: Some(at_ms),
        });
        Durable::ready(Ok(()))
    }
}

impl MemoryJournal {
    /// Drops the payloads and outputs of the finished tasks `rule` selects (beyond the
    /// newest `keep_last` finished ones by id, or ended longer ago than `older_than`),
    /// keeping their rows, states and errors, as `colony prune` does to a SQLite file.
    /// Returns how many tasks lost theirs. A task whose end time is not known is not old.
    /// Unfinished tasks are never touched, nor the ballots of a decision still open: its
    /// recovery counts them.
    pub fn prune(&self, rule: crate::Retention) -> u64 {
        let rule = rule.bounded();
        let before = rule
            .older_than
            .map(|age| crate::now_ms().saturating_sub(age.as_millis() as u64));
        let mut inner = self.lock();
        // The ballots of decisions still open are kept whole: a decision recovered counts
        // their outputs.
        let mut open: Vec<(u64, u64)> = inner
            .decisions
            .iter()
            .filter(|d| d.outcome.is_none())
            .flat_map(|d| d.ballot_ranges())
            .collect();
        open.sort_unstable();
        let mut kept = 0;
        let mut pruned = 0;
        for i in (0..inner.rows.len()).rev() {
            let Some(row) = inner.rows.get_mut(i) else {
                continue;
            };
            if !row.state.is_terminal() {
                continue;
            }
            let beyond = rule.keep_last.is_some_and(|keep| kept >= keep);
            kept += 1;
            let old = before.is_some_and(|b| row.ended_at_ms.is_some_and(|at| at < b));
            if !(beyond || old) {
                continue;
            }
            if !crate::ballots_among(&[TaskId(i as u64 + 1)], &open).is_empty() {
                continue;
            }
            if !row.spec.payload.is_empty() || row.output.is_some() {
                row.spec.payload = Bytes::new();
                row.output = None;
                pruned += 1;
            }
        }
        pruned
    }
}

impl Journal for MemoryJournal {
    fn next_task_id(&self) -> TaskId {
        TaskId(self.lock().rows.len() as u64 + 1)
    }

    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable {
        Durable::ready(self.lock().accept(first, specs))
    }

    fn open_decision(&self, first: TaskId, specs: &[TaskSpec], opening: Opening) -> Durable {
        if let Err(e) = crate::check_opening(specs, &opening) {
            return Durable::ready(Err(e));
        }
        let mut inner = self.lock();
        let accepted = inner.accept(first, specs);
        if accepted.is_ok() {
            inner.decisions.push(DecisionRow {
                id: first,
                opening,
                calls: Vec::new(),
                outcome: None,
                ended_at_ms: None,
            });
        }
        Durable::ready(accepted)
    }

    fn ask(&self, decision: TaskId, first: TaskId, specs: &[TaskSpec], call: Call) -> Durable {
        if specs.len() != call.asked.len() {
            return Durable::ready(Err(Error::Ballots {
                seats: call.asked.len(),
                specs: specs.len(),
            }));
        }
        let mut inner = self.lock();
        let accepted = inner.accept(first, specs);
        if accepted.is_ok()
            && let Ok(i) = inner.decisions.binary_search_by_key(&decision, |d| d.id)
        {
            inner.decisions[i].calls.push((first, call));
        }
        Durable::ready(accepted)
    }

    fn close_decision(&self, id: TaskId, outcome: Arc<str>) -> Durable {
        self.close_decision_at(id, outcome, crate::now_ms())
    }

    fn decided(&self, id: TaskId, spec: &TaskSpec, taken: crate::Taken) -> Durable {
        self.decided_at(id, spec, taken, crate::now_ms())
    }

    fn decision(&self, id: TaskId) -> Result<Option<DecisionRow>, Error> {
        let inner = self.lock();
        let found = inner.decisions.binary_search_by_key(&id, |d| d.id);
        Ok(found.ok().map(|i| inner.decisions[i].clone()))
    }

    fn decisions(&self, before: Option<TaskId>, limit: usize) -> Result<Vec<DecisionRow>, Error> {
        let inner = self.lock();
        Ok(inner
            .decisions
            .iter()
            .rev()
            .filter(|d| before.is_none_or(|b| d.id < b))
            .take(limit)
            .cloned()
            .collect())
    }

    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error> {
        let inner = self.lock();
        let mut closed: Vec<(u64, u64)> = inner
            .decisions
            .iter()
            .filter(|d| d.outcome.is_some())
            .flat_map(|d| d.ballot_ranges())
            .collect();
        closed.sort_unstable();
        Ok(crate::ballots_among(tasks, &closed))
    }

    fn open_decisions(&self) -> Result<Vec<DecisionRow>, Error> {
        let inner = self.lock();
        Ok(inner
            .decisions
            .iter()
            .filter(|d| d.outcome.is_none())
            .cloned()
            .collect())
    }

    fn record(&self, batch: Vec<Record>) -> Durable {
        self.record_at(batch, Some(crate::now_ms()))
    }

    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
        Ok(self.lock().row(id))
    }

    fn counts(&self) -> Result<Counts, Error> {
        Ok(self.lock().counts)
    }

    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, Error> {
        let inner = self.lock();
        let end = before.map_or(inner.rows.len(), |b| {
            (b.0.saturating_sub(1) as usize).min(inner.rows.len())
        });
        Ok((0..end)
            .rev()
            .filter(|&i| state.is_none_or(|s| inner.rows.get(i).is_some_and(|r| r.state == s)))
            .filter_map(|i| inner.row(TaskId(i as u64 + 1)))
            .take(limit)
            .collect())
    }

    fn unfinished(&self) -> Result<Vec<TaskRow>, Error> {
        let inner = self.lock();
        Ok((0..inner.rows.len())
            .filter(|&i| inner.rows.get(i).is_some_and(|r| !r.state.is_terminal()))
            .filter_map(|i| inner.row(TaskId(i as u64 + 1)))
            .collect())
    }

    fn recover(&self) -> Result<Vec<TaskRow>, Error> {
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for i in 0..inner.rows.len() {
                let row = inner.rows.get_mut(i).expect("in range");
                if row.state.is_terminal() {
                    continue;
                }
                row.attempt += row.spec.max_attempts;
                if row.state == TaskState::Running {
                    row.state = TaskState::Queued;
                    inner.counts.moved(TaskState::Running, TaskState::Queued);
                }
            }
        }
        self.unfinished()
    }

    fn stats(&self) -> Stats {
        self.lock().stats
    }

    fn record_agents(&self, _tiers: &[String], agents: Vec<AgentRecord>, replace: bool) -> Durable {
        let mut inner = self.lock();
        if replace {
            inner.agents.clear();
        }
        // Spawns come in id order: appending keeps the list sorted without sorting it, so a
        // million agents in waves of 20 cost a million pushes, not fifty thousand sorts.
        let in_order = agents.windows(2).all(|w| w[0].id < w[1].id)
            && match (inner.agents.last(), agents.first()) {
                (Some(last), Some(first)) => last.id < first.id,
                _ => true,
            };
        inner.agents.extend(agents);
        if !in_order {
            // The latest record of an agent wins: reversed, a stable sort puts it first.
            inner.agents.reverse();
            inner.agents.sort_by_key(|a| a.id);
            inner.agents.dedup_by_key(|a| a.id);
        }
        Durable::ready(Ok(()))
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        Ok(self.lock().agents.clone())
    }

    fn record_reputations(&self, rows: Vec<crate::ReputationRow>) -> Durable {
        let mut inner = self.lock();
        for row in rows {
            inner.reputations.insert(row.agent, row);
        }
        Durable::ready(Ok(()))
    }

    fn reputations(&self) -> Result<Vec<crate::ReputationRow>, Error> {
        Ok(self.lock().reputations.values().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::testing::Suite::test_all(MemoryJournal::new);
    }

    #[test]
    fn forgetting_finished_keeps_rows_and_drops_payloads_and_outputs() {
        let journal = MemoryJournal::forgetting_finished();
        let first = journal.next_task_id();
        let second = TaskId(first.0 + 1);
        let spec = TaskSpec::with_payload("{\"big\": 1}");
        futures::executor::block_on(journal.accept(first, &[spec.clone(), spec])).unwrap();
        let agent = AgentId(3);
        futures::executor::block_on(journal.record(vec![
            Record::Started {
                task: first,
                attempt: 1,
                agent,
            },
            Record::Committed {
                task: first,
                attempt: 1,
                output: "42".into(),
            },
            Record::Started {
                task: second,
                attempt: 1,
                agent,
            },
        ]))
        .unwrap();
        let done = journal.task(first).unwrap().unwrap();
        assert_eq!(done.state, TaskState::Succeeded);
        assert_eq!((done.output, done.spec.payload.len()), (None, 0));
        // An unfinished task keeps its payload: it may still run again.
        let running = journal.task(second).unwrap().unwrap();
        assert_eq!(&running.spec.payload[..], b"{\"big\": 1}");
        assert_eq!(journal.counts().unwrap().succeeded, 1);
    }

    #[test]
    fn the_crash_double_loses_exactly_the_unsynced_tail() {
        use crate::testing::{Crashable, Suite, crash_case};
        Suite::test_all(|| {
            // Synced after every write, the double behaves like any journal.
            AutoSync(Crashable::new())
        });
        crash_case(Crashable::new(), Crashable::sync, Crashable::crash);
    }

    /// [`crate::testing::Crashable`] that syncs each write at once.
    #[derive(Debug)]
    struct AutoSync(crate::testing::Crashable);

    impl Journal for AutoSync {
        fn next_task_id(&self) -> TaskId {
            self.0.next_task_id()
        }
        fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable {
            let d = self.0.accept(first, specs);
            self.0.sync();
            d
        }
        fn record(&self, batch: Vec<Record>) -> Durable {
            let d = self.0.record(batch);
            self.0.sync();
            d
        }
        fn open_decision(
            &self,
            first: TaskId,
            specs: &[TaskSpec],
            opening: crate::Opening,
        ) -> Durable {
            let d = self.0.open_decision(first, specs, opening);
            self.0.sync();
            d
        }
        fn ask(&self, decision: TaskId, first: TaskId, specs: &[TaskSpec], call: Call) -> Durable {
            let d = self.0.ask(decision, first, specs, call);
            self.0.sync();
            d
        }
        fn close_decision(&self, id: TaskId, outcome: Arc<str>) -> Durable {
            let d = self.0.close_decision(id, outcome);
            self.0.sync();
            d
        }
        fn decided(&self, id: TaskId, spec: &TaskSpec, taken: crate::Taken) -> Durable {
            let d = self.0.decided(id, spec, taken);
            self.0.sync();
            d
        }
        fn decision(&self, id: TaskId) -> Result<Option<crate::DecisionRow>, Error> {
            self.0.decision(id)
        }
        fn decisions(
            &self,
            before: Option<TaskId>,
            limit: usize,
        ) -> Result<Vec<crate::DecisionRow>, Error> {
            self.0.decisions(before, limit)
        }
        fn open_decisions(&self) -> Result<Vec<crate::DecisionRow>, Error> {
            self.0.open_decisions()
        }
        fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, Error> {
            self.0.closed_ballots(tasks)
        }
        fn task(&self, id: TaskId) -> Result<Option<TaskRow>, Error> {
            self.0.task(id)
        }
        fn counts(&self) -> Result<Counts, Error> {
            self.0.counts()
        }
        fn unfinished(&self) -> Result<Vec<TaskRow>, Error> {
            self.0.unfinished()
        }
        fn recent(
            &self,
            state: Option<TaskState>,
            before: Option<TaskId>,
            limit: usize,
        ) -> Result<Vec<TaskRow>, Error> {
            self.0.recent(state, before, limit)
        }
        fn recover(&self) -> Result<Vec<TaskRow>, Error> {
            self.0.recover()
        }
        fn stats(&self) -> Stats {
            self.0.stats()
        }
        fn record_agents(
            &self,
            tiers: &[String],
            agents: Vec<AgentRecord>,
            replace: bool,
        ) -> Durable {
            self.0.record_agents(tiers, agents, replace)
        }
        fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
            self.0.agents()
        }
        fn record_reputations(&self, rows: Vec<crate::ReputationRow>) -> Durable {
            let d = self.0.record_reputations(rows);
            self.0.sync();
            d
        }
        fn reputations(&self) -> Result<Vec<crate::ReputationRow>, Error> {
            self.0.reputations()
        }
    }
}

#[cfg(test)]
mod restore {
    use super::*;
    use futures::executor::block_on;

    /// A journal with some history: tasks in every state, one decision closed and one open.
    fn lived() -> MemoryJournal {
        let j = MemoryJournal::new();
        let specs: Vec<TaskSpec> = (0..6)
            .map(|i| TaskSpec::with_payload(format!("{i}")))
            .collect();
        block_on(j.accept(TaskId(1), &specs)).unwrap();
        let started = |t, a| Record::Started {
            task: TaskId(t),
            attempt: a,
            agent: AgentId(a),
        };
        block_on(j.record(vec![
            started(1, 1),
            Record::Committed {
                task: TaskId(1),
                attempt: 1,
                output: "one".into(),
            },
            started(2, 1),
            Record::Failed {
                task: TaskId(2),
                attempt: 1,
                error: "boom".into(),
                next: TaskState::Queued,
            },
            started(2, 2),
            started(3, 1),
            Record::Cancelled { task: TaskId(4) },
        ]))
        .unwrap();
        let opening = crate::Opening {
            options: "{}".into(),
            seats: vec![crate::Seat {
                agent: AgentId(9),
                pool: 0,
                weight: 1.0,
            }],
            asked: 1,
            opened_at_ms: 5,
        };
        block_on(j.open_decision(TaskId(7), &[TaskSpec::default()], opening.clone())).unwrap();
        block_on(j.close_decision_at(TaskId(7), "{\"done\":1}".into(), 9)).unwrap();
        block_on(j.open_decision(TaskId(8), &[TaskSpec::default()], opening)).unwrap();
        j
    }

    fn keep(last: u64) -> crate::Retention {
        crate::Retention {
            keep_last: Some(last),
            ..crate::Retention::default()
        }
    }

    #[test]
    fn pruning_by_age_takes_what_ended_before_it_and_nothing_of_unknown_end() {
        let j = MemoryJournal::new();
        block_on(j.accept(TaskId(1), &vec![TaskSpec::with_payload("p"); 4])).unwrap();
        let end = |task: u64, at_ms: Option<u64>| {
            let task = TaskId(task);
            let records = vec![
                Record::Started {
                    task,
                    attempt: 1,
                    agent: AgentId(1),
                },
                Record::Committed {
                    task,
                    attempt: 1,
                    output: "out".into(),
                },
            ];
            block_on(j.record_at(records, at_ms)).unwrap();
        };
        let hour_ago = crate::now_ms() - 3_600_000;
        end(1, Some(hour_ago - 1_000));
        end(2, None);
        end(3, Some(hour_ago + 60_000));
        assert_eq!(
            j.task(TaskId(1)).unwrap().unwrap().ended_at_ms,
            Some(hour_ago - 1_000)
        );
        assert_eq!(
            j.task(TaskId(4)).unwrap().unwrap().ended_at_ms,
            None,
            "unfinished"
        );
        let older = |age| crate::Retention {
            older_than: Some(std::time::Duration::from_secs(age)),
            ..crate::Retention::default()
        };
        assert_eq!(j.prune(older(3_600)), 1, "task 1 only");
        let whole = |t| j.task(TaskId(t)).unwrap().unwrap().output.is_some();
        assert!(!whole(1) && whole(2) && whole(3));
        // Either rule: the newest finished (task 3) kept by count, and task 2, of no known
        // end, by neither.
        let both = crate::Retention {
            keep_last: Some(2),
            ..older(0)
        };
        assert_eq!(j.prune(both), 1, "task 3, ended before now");
        assert!(whole(2) && !whole(3));
        // A task ended by a record of now has its time.
        block_on(j.record(vec![Record::Cancelled { task: TaskId(4) }])).unwrap();
        let at = j.task(TaskId(4)).unwrap().unwrap().ended_at_ms.unwrap();
        assert!(at.abs_diff(crate::now_ms()) < 60_000, "{at}");
    }

    #[test]
    fn pruning_keeps_the_ballots_of_open_decisions() {
        crate::testing::pruning_keeps_the_ballots_of_open_decisions(&MemoryJournal::new(), |j| {
            j.prune(keep(0))
        });
    }

    #[test]
    fn pruning_keeps_the_newest_finished_and_every_unfinished_task_whole() {
        let j = lived();
        // Finished: task 1 (succeeded, with an output) and task 4 (cancelled, the newer).
        assert_eq!(j.prune(keep(1)), 1);
        let one = j.task(TaskId(1)).unwrap().unwrap();
        assert!(
            one.spec.payload.is_empty() && one.output.is_none(),
            "{one:?}"
        );
        assert_eq!(one.state, TaskState::Succeeded);
        assert_eq!(&j.task(TaskId(4)).unwrap().unwrap().spec.payload[..], b"3");
        assert_eq!(j.prune(keep(0)), 1, "the cancelled one too");
        assert_eq!(j.prune(keep(0)), 0, "nothing left to drop");
        for (id, payload) in [(2, "1"), (3, "2"), (5, "4"), (6, "5")] {
            let row = j.task(TaskId(id)).unwrap().unwrap();
            assert_eq!(
                &row.spec.payload[..],
                payload.as_bytes(),
                "unfinished {row:?}"
            );
        }
        assert_eq!(j.counts().unwrap().succeeded, 1, "rows and states kept");
    }

    #[test]
    fn rows_restored_over_nothing_or_over_their_history_come_out_the_same() {
        let original = lived();
        let mut rows = original.recent(None, None, usize::MAX).unwrap();
        rows.reverse();
        let decisions = original.decisions(None, usize::MAX).unwrap();
        // Over nothing.
        let fresh = MemoryJournal::new();
        fresh.restore_rows(rows.clone()).unwrap();
        fresh.restore_decisions(decisions.clone());
        crate::testing::assert_same_reads(&original, &fresh);
        // Over the history that made them.
        let again = lived();
        again.restore_rows(rows.clone()).unwrap();
        again.restore_decisions(decisions);
        crate::testing::assert_same_reads(&original, &again);
        // A row past the next is refused.
        let gap = MemoryJournal::new();
        let err = gap.restore_rows(rows[2..].to_vec()).unwrap_err();
        assert!(matches!(err, Error::IdOutOfOrder { .. }), "{err}");
    }
}
