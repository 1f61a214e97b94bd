//! What callers hold: submit tasks, spawn agents, read counters, subscribe to events.

use crate::{
    Error, SpawnMode,
    dispatcher::{Cancelled, Command, Job, Live, Resized},
    events::{Kinds, Subscription},
    metrics::Metrics,
    shared::{Completion, Latencies, PoolCounters, PoolLoad, Shared, Timings, Waiter},
};
use colony_agents::AgentSpec;
use colony_core::{
    AgentId, TaskId,
    task::TaskSpec,
    tree::{LiveTree, SpecMask},
};
use colony_journal::Journal;
use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

/// A cheap-to-clone handle on a running runtime.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// A snapshot of the runtime's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub accepted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    /// Attempts started, first ones and retries.
    pub attempts: u64,
    pub retries: u64,
    /// Tasks an idle worker took from a sibling supervisor's queue.
    pub steals: u64,
    /// Tasks moved between sibling queues by periodic rebalancing.
    pub rebalanced: u64,
    /// Agents brought back into service after a crash, a hang or a kill (their own, or a
    /// sibling's or supervisor's under one-for-all, rest-for-one or escalation).
    pub restarts: u64,
    /// Managing agents (or the runtime, over the top tier) that exceeded their restart
    /// intensity and gave up.
    pub escalations: u64,
    /// Tasks dead-lettered as poison: their attempts crashed or hung too many agents.
    pub quarantined: u64,
    /// Busy agents declared failed by a health sweep: silent for `failed-after`.
    pub health_failures: u64,
    /// Workers taken out of rotation by their circuit breaker (each opening counts).
    pub sidelined: u64,
    /// Tasks waiting in supervisors' queues or for room in the hierarchy.
    pub queued: u64,
    pub running: u64,
    /// Agents in every tier.
    pub agents: u64,
    /// Tasks the hierarchy holds at once.
    pub capacity: u64,
}

impl Stats {
    /// Tasks in a terminal state.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.dead_lettered + self.cancelled
    }
}

/// What [`Handle::enter`] submitted: its tasks, and, when the journal has a writer thread,
/// the answer to wait for before they count as accepted.
#[derive(Debug)]
pub(crate) struct Entered {
    accepted: Accepted,
    ack: Option<oneshot::Receiver<Result<(), colony_journal::Error>>>,
    /// A decision's ballots, which only the vote that asked for them hears of.
    heard_only_by_submitter: bool,
}

impl Entered {
    /// Hands these tasks over to be acked later (on another thread, or after an await):
    /// cancelled if dropped before the journal's answer was read (see [`Unread`]).
    pub(crate) fn unread(self, handle: &Handle) -> Unread {
        Unread {
            entered: self,
            handle: handle.clone(),
            read: false,
        }
    }
}

/// Tasks entered whose journal answer their submitter has not read yet: a decision's
/// ballots, entered in the dispatcher's turn as its voters are seated, or awaiting a later
/// call's journal write. Dropped unread (the submitter stopped waiting), ballots that only it
/// hears of are cancelled: here by id when the journal already took them (as the in-memory
/// one does at once, or its answer came unread; accepted ids are never given out again);
/// else by the dispatcher once it does, as nobody is left to read its answer
/// (`Command::SubmitPending`).
pub(crate) struct Unread {
    entered: Entered,
    handle: Handle,
    read: bool,
}

impl Unread {
    /// The journal's answer, waited for and read; none to wait for when it took the tasks at
    /// once.
    async fn answer(
        mut self,
    ) -> Option<Result<Result<(), colony_journal::Error>, oneshot::error::RecvError>> {
        let answer = match self.entered.ack.as_mut() {
            Some(ack) => Some(ack.await),
            None => None,
        };
        self.read = true;
        answer
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if self.read || !self.entered.heard_only_by_submitter {
            return;
        }
        let taken = match self.entered.ack.as_mut() {
            None => true,
            Some(ack) => matches!(ack.try_recv(), Ok(Ok(()))),
        };
        if taken {
            for task in self.entered.accepted.ids() {
                self.handle.cancel_soon(task);
            }
        }
    }
}

/// Tasks accepted by one submission: ids `first..first + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub first: TaskId,
    pub count: usize,
}

impl Accepted {
    pub fn ids(&self) -> impl Iterator<Item = TaskId> {
        (self.first.0..self.first.0 + self.count as u64).map(TaskId)
    }
}

/// The completion of an accepted task, to be awaited.
#[derive(Debug)]
pub struct Pending {
    pub id: TaskId,
    pub(crate) rx: oneshot::Receiver<Completion>,
}

impl std::future::Future for Pending {
    type Output = Result<Completion, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| Error::Stopped))
    }
}

impl Handle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Takes `n` admission permits, waiting until the hierarchy has room for `n` more tasks.
    pub(crate) async fn wait_for_room(&self, n: usize) -> Result<(), Error> {
        if n > 0 {
            let permits = self.shared.permits.acquire_many(n as u32).await;
            permits.map_err(|_| Error::Stopped)?.forget();
        }
        Ok(())
    }

    /// Accepts a batch of tasks, waiting while the hierarchy is full. Returns once the journal
    /// holds them all; none is accepted if any is invalid.
    pub async fn submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Accepted, Error> {
        let masks = self.admit(&specs)?;
        self.wait_for_room(specs.len()).await?;
        self.accept(specs, masks, |_, _| None, |_| None, None).await
    }

    /// Like [`Handle::submit_batch`] but returns [`Error::Full`] instead of waiting.
    pub async fn try_submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Accepted, Error> {
        let masks = self.admit(&specs)?;
        let n = specs.len();
        if n > 0 {
            match self.shared.permits.try_acquire_many(n as u32) {
                Ok(permits) => permits.forget(),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Stopped),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return Err(Error::Full {
                        capacity: self.shared.counters.capacity.load(Relaxed) as usize,
                    });
                }
            }
        }
        self.accept(specs, masks, |_, _| None, |_| None, None).await
    }

    /// Like [`Handle::submit`] but returns [`Error::Full`] instead of waiting.
    pub async fn try_submit(&self, spec: TaskSpec) -> Result<TaskId, Error> {
        Ok(self.try_submit_batch(vec![spec]).await?.first)
    }

    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId, Error> {
        Ok(self.submit_batch(vec![spec]).await?.first)
    }

    /// Submits one task and waits until it ends.
    pub async fn submit_wait(&self, spec: TaskSpec) -> Result<Completion, Error> {
        self.submit_notify(spec).await?.await
    }

    /// Submits one task; once it is accepted, returns a future of its completion.
    pub async fn submit_notify(&self, spec: TaskSpec) -> Result<Pending, Error> {
        let masks = self.admit(std::slice::from_ref(&spec))?;
        self.shared
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Stopped)?
            .forget();
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        let accepted = self
            .accept(
                vec![spec],
                masks,
                |_, _| tx.take().map(Waiter::One),
                |_| None,
                None,
            )
            .await?;
        Ok(Pending {
            id: accepted.first,
            rx,
        })
    }

    /// Submits a batch and returns completion futures for the tasks whose index `track`
    /// selects: a sample of latencies without a channel per task.
    pub async fn submit_batch_tracked(
        &self,
        specs: Vec<TaskSpec>,
        track: impl Fn(usize) -> bool,
    ) -> Result<(Accepted, Vec<Pending>), Error> {
        let masks = self.admit(&specs)?;
        self.wait_for_room(specs.len()).await?;
        self.accept_tracked(specs, masks, track, |_| None, None)
            .await
    }

    /// Accepts `specs` (of pools `masks`, admitted, their permits held): task `i` followed
    /// if `track(i)`, pinned to the worker `pin(i)` if any (it runs there or nowhere); with
    /// `opening`, as the ballots of a decision journaled with them.
    pub(crate) async fn accept_tracked(
        &self,
        specs: Vec<TaskSpec>,
        masks: Vec<SpecMask>,
        track: impl Fn(usize) -> bool,
        pin: impl Fn(usize) -> Option<AgentId>,
        ballots: Option<crate::decision::Ballots>,
    ) -> Result<(Accepted, Vec<Pending>), Error> {
        let mut receivers = Vec::new();
        let accepted = self
            .accept(
                specs,
                masks,
                |i, _| {
                    track(i).then(|| {
                        let (tx, rx) = oneshot::channel();
                        receivers.push((i, rx));
                        Waiter::One(tx)
                    })
                },
                pin,
                ballots,
            )
            .await?;
        let pending = receivers
            .into_iter()
            .map(|(i, rx)| Pending {
                id: TaskId(accepted.first.0 + i as u64),
                rx,
            })
            .collect();
        Ok((accepted, pending))
    }

    /// Accepts `specs` like [`Handle::accept_tracked`], every task heard in `batch` (a
    /// decision's ballots: their ends wake the reader once per turn, not once each).
    pub(crate) async fn accept_batched(
        &self,
        specs: Vec<TaskSpec>,
        masks: Vec<SpecMask>,
        pin: impl Fn(usize) -> Option<AgentId>,
        ballots: Option<crate::decision::Ballots>,
        batch: &std::sync::Arc<crate::shared::Batch>,
    ) -> Result<Accepted, Error> {
        self.accept(specs, masks, |_, id| Some(batch.sender(id)), pin, ballots)
            .await
    }

    /// Sends the cancellation of `task` without waiting for its answer: for a caller that
    /// cannot wait (a drop).
    pub(crate) fn cancel_soon(&self, task: TaskId) {
        let (reply, _) = oneshot::channel();
        let _ = self.shared.inbox.send(Command::Cancel { task, reply });
    }

    /// Tells the voters' reputations who agreed with a decided outcome (`true`) and who
    /// dissented, without waiting. A runtime's own votes do this as they end; a vote whose
    /// ballots ran here but were counted elsewhere (one spread over a cluster's nodes) is
    /// told by whoever counted it. Agents no longer in the tree are passed over.
    pub fn agreed(&self, votes: Vec<(AgentId, bool)>) {
        let _ = self.shared.inbox.send(Command::Agreed(votes));
    }

    /// Hands back `n` admission permits taken for tasks that were not submitted after all.
    pub(crate) fn give_back_room(&self, n: usize) {
        self.shared.return_permits(n);
    }

    /// Queues again the tasks a journal held unfinished at start (see [`Journal::recover`]).
    /// They need no admission: an earlier process accepted them. A task no pool can run any
    /// more waits in the backlog (and in the journal, queued) until one can. A ballot of a
    /// decision (`ballot` gives its voter and a waiter for its end) runs on its voter again,
    /// or, if the voter is no longer a worker of its pool, is cancelled.
    pub(crate) fn requeue(
        &self,
        rows: Vec<colony_journal::TaskRow>,
        mut ballot: impl FnMut(TaskId) -> Option<(colony_journal::Seat, oneshot::Sender<Completion>)>,
    ) -> Result<usize, Error> {
        let now = Instant::now();
        let n = rows.len();
        let jobs: Vec<Job> = rows
            .into_iter()
            .map(|row| {
                if let Some((seat, waiter)) = ballot(row.id) {
                    return Job::recovered(row, SpecMask::of(seat.pool), now)
                        .pinned(seat.agent)
                        .waited_by(Waiter::One(waiter));
                }
                // No validation: an earlier process accepted these, under its own limits.
                let mask = self.shared.mask_for(&row.spec.requirement);
                if mask.is_empty() {
                    tracing::warn!(task = %row.id, "A recovered task waits for agents that can run it.");
                }
                Job::recovered(row, mask, now)
            })
            .collect();
        self.shared.counters.accepted.fetch_add(n as u64, Relaxed);
        self.shared
            .inbox
            .send(Command::Submit(jobs))
            .map_err(|_| Error::Stopped)?;
        Ok(n)
    }

    /// Checks every spec and resolves which pools may run it: those whose spec satisfies the
    /// requirement and that have agents.
    /// A task no pool can run is named before a batch too large for the room: with every
    /// agent retired, there is no room, and the lack of agents is what to fix.
    pub(crate) fn admit(&self, specs: &[TaskSpec]) -> Result<Vec<SpecMask>, Error> {
        let masks = specs
            .iter()
            .map(|spec| {
                spec.validate(self.shared.max_payload)?;
                let mask = self.shared.mask_for(&spec.requirement).0;
                if mask == 0 {
                    let r = &spec.requirement;
                    return Err(Error::NoAgentFor {
                        role: r.role.as_deref().map(str::to_owned),
                        capabilities: r.capabilities.iter().map(|c| c.to_string()).collect(),
                    });
                }
                Ok(SpecMask(mask))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.fits(specs.len())?;
        Ok(masks)
    }

    /// Refuses a batch of `n` tasks larger than the hierarchy's room, which it would wait
    /// for forever.
    pub(crate) fn fits(&self, n: usize) -> Result<(), Error> {
        let capacity = self.shared.counters.capacity.load(Relaxed) as usize;
        if n > capacity {
            return Err(Error::BatchTooLarge {
                got: n,
                max: capacity,
            });
        }
        Ok(())
    }

    /// Journals the tasks under ids in order, then hands them to the dispatcher. The caller
    /// holds one permit per task.
    async fn accept(
        &self,
        specs: Vec<TaskSpec>,
        masks: Vec<SpecMask>,
        waiter: impl FnMut(usize, TaskId) -> Option<Waiter>,
        pin: impl Fn(usize) -> Option<AgentId>,
        ballots: Option<crate::decision::Ballots>,
    ) -> Result<Accepted, Error> {
        self.journal_room().await;
        let entered = self.enter(specs, masks, waiter, pin, ballots)?;
        self.acked(entered).await
    }

    /// Waits while the journal's writer is behind: a slow or faulty disk makes submitters
    /// wait here, asleep, for the writer to catch up; the journal's channel never blocks the
    /// thread that sends.
    pub(crate) async fn journal_room(&self) {
        if let Some(backlog) = self.shared.journal.backlog() {
            backlog.room().await;
        }
    }

    /// The part of [`Handle::accept`] that does not wait, so that it may run inside the
    /// dispatcher (a decision seats its voters and accepts their ballots in one turn): ids
    /// taken, the journal written (or its write started), the jobs sent on. Await
    /// [`Handle::acked`] with what it returns.
    pub(crate) fn enter(
        &self,
        specs: Vec<TaskSpec>,
        masks: Vec<SpecMask>,
        mut waiter: impl FnMut(usize, TaskId) -> Option<Waiter>,
        pin: impl Fn(usize) -> Option<AgentId>,
        ballots: Option<crate::decision::Ballots>,
    ) -> Result<Entered, Error> {
        let n = specs.len();
        if n == 0 {
            return Ok(Entered {
                accepted: Accepted {
                    first: self.shared.journal.next_task_id(),
                    count: 0,
                },
                ack: None,
                heard_only_by_submitter: false,
            });
        }
        let submitted = Instant::now();
        // A decision's ballots: only the vote that asked for them hears of them.
        let heard_only_by_submitter = ballots.is_some();
        let (first, durable) = {
            let mut next = self
                .shared
                .next_id
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let first = *next;
            let journal = &self.shared.journal;
            let durable = match ballots {
                Some(crate::decision::Ballots::Open(opening)) => {
                    journal.open_decision(TaskId(first), &specs, opening)
                }
                Some(crate::decision::Ballots::Call { decision, call }) => {
                    journal.ask(decision, TaskId(first), &specs, call)
                }
                None => journal.accept(TaskId(first), &specs),
            };
            *next += n as u64;
            (first, durable)
        };
        let jobs: Vec<Job> = specs
            .into_iter()
            .zip(masks)
            .enumerate()
            .map(|(i, (spec, mask))| {
                let id = TaskId(first + i as u64);
                let job = Job::new(id, spec, mask, submitted, waiter(i, id));
                match pin(i) {
                    Some(worker) => job.pinned(worker),
                    None => job,
                }
            })
            .collect();
        let accepted = Accepted {
            first: TaskId(first),
            count: n,
        };
        let mut durable = durable;
        match durable.try_result() {
            // The in-memory journal: durable at once.
            Some(Ok(())) => {
                self.shared.counters.accepted.fetch_add(n as u64, Relaxed);
                Metrics::accepted(n);
                self.shared
                    .inbox
                    .send(Command::Submit(jobs))
                    .map_err(|_| Error::Stopped)?;
                Ok(Entered {
                    accepted,
                    ack: None,
                    heard_only_by_submitter,
                })
            }
            Some(Err(error)) => Err(self.refused(n, error)),
            // A journal with a writer thread: the dispatcher holds the jobs until the group
            // commit, so they are dispatched even if this caller stops waiting.
            None => {
                let (ack, acked) = oneshot::channel();
                self.shared
                    .inbox
                    .send(Command::SubmitPending {
                        jobs,
                        durable,
                        ack,
                        heard_only_by_submitter,
                    })
                    .map_err(|_| Error::Stopped)?;
                Ok(Entered {
                    accepted,
                    ack: Some(acked),
                    heard_only_by_submitter,
                })
            }
        }
    }

    /// The id the next accepted task gets, as of now.
    pub(crate) fn next_id_now(&self) -> TaskId {
        TaskId(
            *self
                .shared
                .next_id
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Runs `write` with the next task id, which it writes to the journal (as one task, or
    /// more under the same id); the id is taken only if `write` succeeds. No other task is
    /// accepted meanwhile, so the journal sees the ids in order.
    pub(crate) fn with_next_id<R>(
        &self,
        write: impl FnOnce(TaskId) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut next = self
            .shared
            .next_id
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let written = write(TaskId(*next))?;
        *next += 1;
        Ok(written)
    }

    /// Waits until the journal holds what [`Handle::enter`] submitted.
    pub(crate) async fn acked(&self, entered: Entered) -> Result<Accepted, Error> {
        if entered.heard_only_by_submitter {
            return self.answered(entered.unread(self)).await;
        }
        let Some(ack) = entered.ack else {
            return Ok(entered.accepted);
        };
        self.accepted_or_refused(entered.accepted, Some(ack.await))
    }

    /// [`Handle::acked`] for tasks handed over unread.
    pub(crate) async fn answered(&self, unread: Unread) -> Result<Accepted, Error> {
        let accepted = unread.entered.accepted;
        let answer = unread.answer().await;
        self.accepted_or_refused(accepted, answer)
    }

    fn accepted_or_refused(
        &self,
        accepted: Accepted,
        answer: Option<Result<Result<(), colony_journal::Error>, oneshot::error::RecvError>>,
    ) -> Result<Accepted, Error> {
        match answer {
            None | Some(Ok(Ok(()))) => Ok(accepted),
            Some(Ok(Err(error))) => Err(self.refused(0, error)),
            Some(Err(_)) => Err(Error::Stopped),
        }
    }

    /// The journal refused a submission: return `permits` and take the next id from the
    /// journal again, since the refused ids were not used. (A submission in flight at the
    /// same moment may then be refused as out of order: faults cost a retry, never an id.)
    pub(crate) fn refused(&self, permits: usize, error: colony_journal::Error) -> Error {
        self.shared.return_permits(permits);
        let mut next = self
            .shared
            .next_id
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *next = self.shared.journal.next_task_id().0;
        error.into()
    }

    /// Adds `count` agents to pool `pool`, in the given mode. Returns the first new agent's id.
    pub async fn spawn(
        &self,
        pool: usize,
        count: u32,
        mode: SpawnMode,
    ) -> Result<Option<AgentId>, Error> {
        if pool >= self.shared.specs.len() {
            return Err(Error::NoSuchPool {
                got: pool,
                count: self.shared.specs.len(),
            });
        }
        let step = match mode {
            SpawnMode::Single => 1,
            SpawnMode::Batch => count.max(1),
            SpawnMode::Waves { size } => size.get(),
        };
        let mut first = None;
        let mut left = count;
        while left > 0 {
            let n = left.min(step);
            let id = self
                .ask(|reply| Command::Spawn {
                    pool: pool as u8,
                    count: n,
                    reply,
                })
                .await?;
            first = first.or(id);
            left -= n;
        }
        Ok(first)
    }

    /// Runs `f` on the live tree inside the dispatcher: chain-of-command queries, loads.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&LiveTree) -> R + Send + 'static,
    ) -> Result<R, Error> {
        self.observe(move |live| f(live.tree)).await
    }

    /// Runs `f` inside the dispatcher on the live hierarchy: the tree, and each worker's
    /// health. The dispatcher waits for it: keep it to a bounded walk.
    pub async fn observe<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Live<'_>) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let query = Box::new(move |live: &Live<'_>| {
            let _ = tx.send(f(live));
        });
        self.shared
            .inbox
            .send(Command::Inspect(query))
            .map_err(|_| Error::Stopped)?;
        within_a_turn(rx).await.ok_or_else(|| {
            if self.shared.stopped.load(Relaxed) {
                Error::Stopped
            } else {
                Error::QueryPanicked
            }
        })
    }

    /// Cancels a task. A waiting task is cancelled at once; a running one when its attempt
    /// has been stopped (an agent process is killed with it), unless that attempt succeeds
    /// first. `Ok(None)` for a task the runtime no longer holds, or never did: the journal
    /// says how it ended.
    pub async fn cancel(&self, task: TaskId) -> Result<Option<Cancelled>, Error> {
        // On the inbox, behind this caller's own submissions: a task submitted and then
        // cancelled is always found.
        self.ask(|reply| Command::Cancel { task, reply }).await
    }

    /// Kills an agent as a crash from outside would. A worker's running attempts end and their
    /// tasks retry, preferably on other agents; a manager's whole subtree stops and the tasks
    /// queued at its supervisors move to their siblings. The agent's supervisor then decides
    /// as it would for any crash: restart (after backoff), or escalate. Unknown agents and
    /// agents already out of service are ignored.
    pub fn kill(&self, agent: AgentId) -> Result<(), Error> {
        self.shared
            .control
            .send(Command::Kill(agent, Instant::now()))
            .map_err(|_| Error::Stopped)
    }

    /// The recovery timings sampled so far.
    pub fn timings(&self) -> Timings {
        self.shared
            .timings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the runtime is idle: every task accepted so far has ended, and no other
    /// is in flight. Under a steady stream of submissions that moment may not come.
    pub async fn drain(&self) -> Result<(), Error> {
        loop {
            let notified = self.shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let s = self.stats();
            if s.finished() >= s.accepted {
                return Ok(());
            }
            if self.shared.stopped.load(Relaxed) {
                return Err(Error::Stopped);
            }
            notified.await;
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Relaxed),
            succeeded: c.succeeded.load(Relaxed),
            failed: c.failed.load(Relaxed),
            dead_lettered: c.dead_lettered.load(Relaxed),
            cancelled: c.cancelled.load(Relaxed),
            attempts: c.attempts.load(Relaxed),
            retries: c.retries.load(Relaxed),
            steals: c.steals.load(Relaxed),
            rebalanced: c.rebalanced.load(Relaxed),
            restarts: c.restarts.load(Relaxed),
            escalations: c.escalations.load(Relaxed),
            quarantined: c.quarantined.load(Relaxed),
            health_failures: c.health_failures.load(Relaxed),
            sidelined: c.sidelined.load(Relaxed),
            queued: c.queued.load(Relaxed),
            running: c.running.load(Relaxed),
            agents: c.agents.load(Relaxed),
            capacity: c.capacity.load(Relaxed),
        }
    }

    /// Shrinks pool `pool` by up to `count` workers: they are retired (out of service, never
    /// restarted) and their running attempts finish where they are. Returns how many were.
    pub async fn retire(&self, pool: usize, count: u32) -> Result<u32, Error> {
        self.resize(pool, count, false).await
    }

    /// Brings up to `count` retired workers of pool `pool` back into service. Returns how
    /// many came back; [`Handle::spawn`] adds new ones.
    pub async fn reinstate(&self, pool: usize, count: u32) -> Result<u32, Error> {
        self.resize(pool, count, true).await
    }

    async fn resize(&self, pool: usize, count: u32, grow: bool) -> Result<u32, Error> {
        if pool >= self.shared.specs.len() {
            return Err(Error::NoSuchPool {
                got: pool,
                count: self.shared.specs.len(),
            });
        }
        self.ask(|reply| Command::Resize {
            pool: pool as u8,
            count,
            grow,
            reply,
        })
        .await
    }

    /// Sends the command `make` builds around a reply channel, and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .inbox
            .send(make(reply))
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Tasks ended so far, by latency bucket.
    pub fn latencies(&self) -> Latencies {
        Latencies(std::array::from_fn(|i| {
            self.shared.counters.latency[i].load(Relaxed)
        }))
    }

    /// Each pool's load, by pool index, as the dispatcher last published it (once per turn).
    pub fn pool_loads(&self) -> Vec<PoolLoad> {
        let shared = &self.shared;
        let now = shared.epoch.elapsed();
        let pools = shared
            .specs
            .iter()
            .zip(&shared.pool_agents)
            .zip(&shared.pool_load);
        pools
            .map(|((spec, agents), load)| {
                let agents = agents.load(Relaxed);
                let since = load.waiting_since.load(Relaxed);
                let waiting_for = if since == PoolCounters::NONE_WAITING {
                    Duration::ZERO
                } else {
                    now.saturating_sub(Duration::from_micros(since))
                };
                PoolLoad {
                    agents,
                    capacity: agents * u64::from(spec.concurrency),
                    busy: load.busy.load(Relaxed),
                    waiting: load.waiting.load(Relaxed),
                    waiting_for,
                    arrivals: load.arrivals.load(Relaxed),
                    ended: load.ended.load(Relaxed),
                    busy_time: Duration::from_micros(load.busy_micros.load(Relaxed)),
                    desired: Some(load.desired.load(Relaxed))
                        .filter(|&d| d != PoolCounters::NONE_WAITING),
                    forecast_per_sec: Some(f64::from_bits(load.forecast.load(Relaxed)))
                        .filter(|f| !f.is_nan()),
                    forecast_error: Some(f64::from_bits(load.forecast_error.load(Relaxed)))
                        .filter(|f| !f.is_nan()),
                }
            })
            .collect()
    }

    /// Brings pool `pool` to `agents` agents: retires the surplus (they finish what they run
    /// and are never restarted), or brings retired ones back first and spawns the rest. One
    /// command, carried out in one turn of the dispatcher: two resizes at once each reach the
    /// size they asked for, the later one last.
    pub async fn set_pool_size(&self, pool: usize, agents: u64) -> Result<Resized, Error> {
        if pool >= self.shared.specs.len() {
            return Err(Error::NoSuchPool {
                got: pool,
                count: self.shared.specs.len(),
            });
        }
        if agents > u64::from(u32::MAX) {
            return Err(Error::Options(format!(
                "a pool of {agents} agents is out of range: allowed up to {}",
                u32::MAX
            )));
        }
        self.ask(|reply| Command::SetSize {
            pool: pool as u8,
            agents: agents as u32,
            reply,
        })
        .await
    }

    /// Records what the autoscaler wants for `pool` and forecasts, for the API.
    pub(crate) fn set_desired(
        &self,
        pool: usize,
        agents: u64,
        forecast: Option<f64>,
        error: Option<f64>,
    ) {
        if let Some(load) = self.shared.pool_load.get(pool) {
            load.desired.store(agents, Relaxed);
            let bits = |v: Option<f64>| v.unwrap_or(f64::NAN).to_bits();
            load.forecast.store(bits(forecast), Relaxed);
            load.forecast_error.store(bits(error), Relaxed);
        }
    }

    /// Whether the dispatcher's loop has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Relaxed)
    }

    /// Resolves once the dispatcher's loop has ended: the runtime stopped, or failed.
    pub(crate) async fn halted(&self) {
        let notified = self.shared.halted.notified();
        tokio::pin!(notified);
        // Registered before the check: a stop between the two still wakes it.
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }

    /// Publishes an event at once, not through the dispatcher's outbox (the autoscaler's, a
    /// decision's end), if anyone listens for its kind.
    pub(crate) fn publish(&self, kinds: Kinds, event: crate::events::Event) {
        if self.shared.bus.wants(kinds) {
            self.shared.bus.publish(vec![event]);
        }
    }

    /// The pools' specs, by pool index, and how many agents each has.
    pub fn pools(&self) -> Vec<(AgentSpec, u64)> {
        let agents = self.shared.pool_agents.iter().map(|n| n.load(Relaxed));
        self.shared.specs.iter().cloned().zip(agents).collect()
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.shared.journal
    }

    pub fn subscribe(&self, kinds: Kinds) -> Subscription {
        self.shared.bus.subscribe(kinds)
    }

    /// Asks the dispatcher to stop after its current turn.
    pub fn stop(&self) {
        let _ = self.shared.inbox.send(Command::Stop);
        self.shared.permits.close();
    }
}

impl Handle {
    /// The runtime's message bus: agents' mailboxes, topics and teams
    /// ([`crate::messages`]). Agents retired for good have their mailboxes closed, and the
    /// messages they held go back to their senders.
    pub fn messages(&self) -> &crate::messages::Bus {
        &self.shared.messages
    }
}

/// How long a caller awaiting a query's reply keeps its worker awake, yielding, before it
/// parks. A query is answered within one turn of the dispatcher (a decision taken inline
/// among 100 voters: 21-35 µs here), and waking a parked worker on the other core costs about
/// as much again on this VM (docs/benchmarks.md, "A caller awake for its answer").
const TURN_WAIT: Duration = Duration::from_micros(100);

/// Awaits `rx`, answered within one turn of the dispatcher (once the commands queued before
/// it are done): for up to [`TURN_WAIT`] the task offers the core to other threads and
/// yields to its worker's other tasks between looks rather than parking, so that the worker
/// (and its core) is awake when the answer comes; past the budget it parks as any await
/// does. Where the process may use one CPU only (its affinity or its cgroup's quota), it
/// parks at once: looking would take the core from the dispatcher. `None` when the sender
/// was dropped unanswered.
async fn within_a_turn<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if cpus < 2 {
        return rx.await.ok();
    }
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(answer) => return Some(answer),
            // A receiver that saw the end must not be awaited again.
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= TURN_WAIT {
            break;
        }
        // The core goes to any thread waiting for it (the dispatcher itself, on a machine
        // with no idle core) before the task yields to its worker's other tasks.
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_after_the_watch_still_comes_and_a_dropped_one_is_an_error() {
        let (tx, rx) = oneshot::channel();
        let sender = crate::spawner::Spawner::spawn_thread("test-answer", move || {
            // Well past TURN_WAIT: the waiter has parked by then.
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7u32).unwrap();
        })
        .unwrap();
        assert_eq!(within_a_turn(rx).await.expect("answered"), 7);
        sender.join().unwrap();

        let (tx, rx) = oneshot::channel::<u32>();
        let start = Instant::now();
        drop(tx);
        assert!(within_a_turn(rx).await.is_none());
        assert!(start.elapsed() < Duration::from_secs(1));

        let (tx, rx) = oneshot::channel();
        tx.send(1u32).unwrap();
        assert_eq!(within_a_turn(rx).await.expect("answered"), 1);
    }
}
