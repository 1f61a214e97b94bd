//! A vote whose voters span the cluster (`spread` in `Colony-Decide`). The node that takes
//! it does not seat its own agents: it asks each ballot as a cluster task of its own, which
//! any node serving the task's role runs on one of its agents, and counts what comes back
//! under the protocol, in the sans-IO engine (`colony_core::decision::Decision`), at once as
//! each ballot ends. Voters are told apart by node and agent, as their ballots' records name
//! them: a second ballot from an agent that voted already is not counted, and its seat is
//! asked once more. The ballot tasks still out when the decision ends, or when the attempt
//! is dropped (fenced, handed back), are cancelled.

use super::agreed;
use crate::{
    Cluster, Error, RecordsFrom, Row,
    wire::{Decide, Weigh},
};
use colony_core::{
    AgentId,
    decision::{Candidate, Decision, Outcome, Participant, Progress, Protocol, Vote},
    task::{TaskSpec, TaskState},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};
use tokio::sync::oneshot;

/// Most voters of one spread vote: each is a cluster task, and its wait a watch.
pub const MAX_SPREAD_VOTERS: u32 = 1_000;

/// Most spread votes and teams a node runs at once: one run here holds no slot (its ballots
/// or asks take theirs where they run), so this bounds them instead.
pub(super) const MAX_COUNTING: usize = 256;

/// Most times one seat is asked: once, and again when its ballot came from an agent that
/// had voted already.
const ASKS_PER_SEAT: u32 = 2;

/// What became of one seat.
#[derive(Debug, Default)]
struct Seat {
    asked: u32,
    /// Who cast the ballot last counted for it.
    voter: Option<Counted>,
    /// Why it has no ballot counted.
    problem: Option<String>,
}

/// Who cast a ballot counted for a seat.
#[derive(Debug)]
struct Counted {
    /// The node whose agent it was.
    node: String,
    /// The agent, when its ballot's record named one.
    agent: Option<u64>,
    /// The role of the agent's pool, when its ballot's record said it.
    role: Option<String>,
    /// When its ballot's record was written.
    at_ms: u64,
}

/// A spread vote run to its end.
#[derive(Debug)]
pub(super) struct Spread {
    pub(super) outcome: Arc<Outcome>,
    pub(super) voters: u32,
    /// Ballot tasks asked, the seats asked again included.
    pub(super) asked: u32,
    /// Distinct nodes whose agents' ballots were counted.
    pub(super) nodes: u32,
    /// Why seats have no ballot counted, the first few, for a failure's message.
    pub(super) problems: Vec<String>,
    /// A decided vote's voters counted in the deciding round, by node: whether each agreed
    /// with the outcome, for their nodes to feed their reputations once the vote's end is
    /// written.
    pub(super) agreed: BTreeMap<String, Vec<agreed::Voted>>,
}

impl Spread {
    /// Ballots counted in the deciding (or last) round.
    pub(super) fn counted(&self) -> u32 {
        let record = self.outcome.record();
        let n = record
            .ballots
            .iter()
            .filter(|b| {
                b.status == colony_core::decision::Status::Counted && b.ballot.round == record.round
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The ballot tasks still out, cancelled when dropped: the vote ended, or its attempt was
/// dropped before.
struct Out {
    cluster: Cluster,
    ids: HashSet<u64>,
    /// Why they are cancelled, in their records.
    why: &'static str,
}

impl Drop for Out {
    fn drop(&mut self) {
        self.cancel_all(self.why);
    }
}

impl Out {
    /// Cancels every task out now (in the background), saying `why` in their records.
    fn cancel_all(&mut self, why: &'static str) {
        if self.ids.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.ids.drain().collect();
        let cluster = self.cluster.clone();
        colony_agents::spawner::Spawner::spawn("spread-vote-cancel", async move {
            futures::stream::iter(ids)
                .for_each_concurrent(32, |id| {
                    let cluster = cluster.clone();
                    async move {
                        if let Err(e) = cluster.cancel(id, why).await {
                            tracing::warn!("task {id} not cancelled ({why}): {e}");
                        }
                    }
                })
                .await;
        });
    }
}

/// The ends of the ballot tasks a node's spread votes wait for, heard on one watch of the
/// task records made while any waits (not a watch each: a vote has up to 1,000 ballots, a
/// node counts up to 256 votes). While it runs, the node reads every record the cluster
/// writes.
#[derive(Debug)]
pub(super) struct Ends {
    inner: std::sync::Mutex<EndsInner>,
    /// Whether the watch is made: what ends from then on comes on it.
    live: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct EndsInner {
    waiting: HashMap<u64, oneshot::Sender<Row>>,
    watching: bool,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            inner: Default::default(),
            live: tokio::sync::watch::channel(false).0,
        }
    }
}

/// Task `id`'s wait for its end, given up when dropped.
struct Waiting<'a> {
    ends: &'a Ends,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.ends.lock().waiting.remove(&self.id);
    }
}

impl Ends {
    fn lock(&self) -> std::sync::MutexGuard<'_, EndsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Task `id`'s record once it has ended: heard on the watch, or read once the watch is
    /// made (it may have ended before).
    async fn ended(self: &Arc<Self>, cluster: &Cluster, id: u64) -> Row {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut inner = self.lock();
            inner.waiting.insert(id, tx);
            !std::mem::replace(&mut inner.watching, true)
        };
        let _waiting = Waiting { ends: self, id };
        if start {
            let ends = self.clone();
            let cluster = cluster.clone();
            colony_agents::spawner::Spawner::spawn("spread-vote-ends", async move {
                ends.watch(cluster).await;
            });
        }
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|live| *live).await;
        if let Ok(Some((row, _))) = cluster.row(id).await
            && row.is_terminal()
        {
            return row;
        }
        match rx.await {
            Ok(row) => row,
            // Not sent while this waits.
            Err(_) => std::future::pending().await,
        }
    }

    /// The watch: made again after the last record read when it fails, ended once nobody
    /// waits (decided under the lock a wait registers under).
    async fn watch(&self, cluster: Cluster) {
        let mut last = None;
        loop {
            let from = last.map_or(RecordsFrom::Now, RecordsFrom::After);
            if let Ok(mut watch) = cluster.records(from, u64::MAX).await {
                // Made again, before any record was read, after where this one started:
                // an end written in between is not missed.
                last.get_or_insert(watch.until);
                self.live.send_replace(true);
                while let Some(Ok(record)) = watch.records.next().await {
                    last = Some(record.revision);
                    let mut inner = self.lock();
                    if record.row.is_terminal()
                        && let Some(tx) = inner.waiting.remove(&record.id)
                    {
                        let _ = tx.send(record.row);
                    }
                    if inner.waiting.is_empty() {
                        inner.watching = false;
                        self.live.send_replace(false);
                        return;
                    }
                }
                self.live.send_replace(false);
            }
            {
                let mut inner = self.lock();
                if inner.waiting.is_empty() {
                    inner.watching = false;
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// The priority of a spread vote's ballots or a spread team's asks: one above their task's,
/// so that nodes take the work of what is under way before more of it.
fn one_above(priority: colony_core::task::Priority) -> colony_core::task::Priority {
    use colony_core::task::Priority;
    Priority::new((priority.get() + 1).min(Priority::HIGHEST.get())).unwrap_or(Priority::HIGHEST)
}

/// Why a round's ballots still out are cancelled when the next round opens, or a judge is
/// asked.
const ROUND_OVER: &str = "its round ended without it";

/// Most ballot tasks sent in one go: a send that fails part-way leaves at most these
/// running unasked-for.
const SEND_AT_ONCE: usize = 32;

/// What a ballot task of a spread vote was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// Seat `seat`'s ballot in round `round`: its output, or under `leader` the round's
    /// proposal (the proposer's) or a review of it (the others').
    Seat { seat: u32, round: u32 },
    /// The judge of a tie.
    Judge,
}

/// A spread vote being counted: the engine, the seats, and the ballot tasks out.
struct Count {
    cluster: Cluster,
    ends: Arc<Ends>,
    decision: Decision,
    /// The vote's task as each ballot asks it: one attempt, one priority above the vote's.
    ballot: TaskSpec,
    vote: u64,
    lease: String,
    seats: Vec<Seat>,
    out: Out,
    waits: FuturesUnordered<futures::future::BoxFuture<'static, (Asked, u64, Row)>>,
    /// The open round's ballot tasks, or the judge, still out.
    open: usize,
    /// The agents (node, agent) whose ballots count in the open round: one ballot each.
    voted: HashSet<(String, u64)>,
    /// Ballot tasks asked in all (the judge's included).
    asked: u32,
    /// `leader`: the round whose proposal's reviews are asked.
    reviewed: Option<u32>,
    /// The tie the judge is asked to settle; empty while no judge is asked.
    candidates: Vec<Candidate>,
    /// Why the judge chose none, when it did not.
    judge_problem: Option<String>,
    /// A vote that weighs its voters: how (its ballots' records say who voted, and each
    /// counted ballot weighs what [`Decide::seat_weight`] says).
    weighing: Option<(Weigh, Decide)>,
    started: tokio::time::Instant,
}

impl Count {
    fn now(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The open round's deadline (or the judge's), as an instant.
    fn until(&self) -> tokio::time::Instant {
        self.started + self.decision.deadline().unwrap_or_else(|| self.now())
    }

    /// Asks seats `asking` for their ballots of round `round` (`payload` over the task's:
    /// a review's), in sends of [`SEND_AT_ONCE`], each id kept in `out` as soon as its send
    /// is acknowledged.
    async fn ask(
        &mut self,
        asking: &[u32],
        round: u32,
        payload: Option<bytes::Bytes>,
    ) -> Result<(), Error> {
        let spec = match payload {
            Some(payload) => TaskSpec {
                payload,
                ..self.ballot.clone()
            },
            None => self.ballot.clone(),
        };
        for chunk in asking.chunks(SEND_AT_ONCE) {
            let (vote, lease) = (self.vote, &self.lease);
            let ids: Vec<String> = chunk
                .iter()
                .map(|&s| {
                    let seat = &mut self.seats[s as usize];
                    seat.asked += 1;
                    seat.problem = None;
                    format!("ballot-{vote}-{lease}-r{round}-{s}-{}", seat.asked)
                })
                .collect();
            let specs = vec![spec.clone(); chunk.len()];
            for (&seat, task) in chunk.iter().zip(
                self.cluster
                    .submit_ballots(&specs, Some(&ids), self.weighing.as_ref().map(|w| w.0))
                    .await?,
            ) {
                self.wait(Asked::Seat { seat, round }, task.id);
            }
        }
        Ok(())
    }

    /// Waits for ballot task `id`, asked for `asked`, as one of the open round's.
    fn wait(&mut self, asked: Asked, id: u64) {
        self.out.ids.insert(id);
        self.open += 1;
        self.asked += 1;
        self.waits
            .push(task_end(&self.ends, &self.cluster, asked, id).boxed());
    }

    /// Asks `asking` within the open round's deadline: those not asked by then are silent,
    /// saying so, as are those the cluster refuses (a review's payload over its message); NATS
    /// out of reach fails the vote's attempt, to be tried again.
    async fn ask_in_time(
        &mut self,
        asking: &[u32],
        round: u32,
        payload: Option<bytes::Bytes>,
    ) -> Result<(), Error> {
        let until = self.until();
        let asked = tokio::time::timeout_at(until, self.ask(asking, round, payload)).await;
        let why = match asked {
            Ok(Err(Error::Task(refused))) => format!("its ballot could not be asked: {refused}"),
            Ok(asked) => return asked,
            Err(_) => "its ballot could not be sent before the round's deadline".into(),
        };
        for &s in asking {
            let seat = &mut self.seats[s as usize];
            if seat.voter.is_none() {
                seat.problem = Some(why.clone());
            }
        }
        Ok(())
    }

    /// The engine opened round `round` (`fast`'s second, or `leader`'s next proposer): the
    /// last round's ballots still out are cancelled, and the new round's asked (every seat
    /// again, or the proposer alone).
    async fn next_round(&mut self, round: u32, proposer: Option<AgentId>) -> Result<(), Error> {
        self.out.cancel_all(ROUND_OVER);
        self.open = 0;
        self.voted.clear();
        // What a seat did or missed is told of the deciding (or last) round.
        for seat in &mut self.seats {
            *seat = Seat::default();
        }
        let asking: Vec<u32> = match proposer {
            Some(proposer) => vec![proposer.0],
            None => (0..self.decision.participants().len() as u32).collect(),
        };
        self.ask_in_time(&asking, round, None).await
    }

    /// A tie under `judge`: a judge is asked, as a cluster task whose payload lists the
    /// candidates. What the engine answers when none can be asked: the tie stands.
    async fn ask_judge(&mut self, candidates: Vec<Candidate>) -> Progress {
        self.out.cancel_all(ROUND_OVER);
        self.open = 0;
        let spec = TaskSpec {
            payload: colony_runtime::decision::judge_payload(&self.ballot.payload, &candidates),
            ..self.ballot.clone()
        };
        // Under `leader` each tied round asks a judge of its own.
        let id = format!(
            "judge-{}-{}-r{}",
            self.vote,
            self.lease,
            self.decision.round()
        );
        let sent = tokio::time::timeout_at(
            self.until(),
            self.cluster
                .submit(std::slice::from_ref(&spec), Some(&[id])),
        )
        .await;
        match sent {
            Ok(Ok(tasks)) if tasks.first().is_some_and(|t| !t.duplicate) => {
                self.candidates = candidates;
                self.wait(Asked::Judge, tasks[0].id);
                Progress::Pending
            }
            Ok(Err(e)) => {
                self.judge_problem = Some(format!("it could not be asked: {e}"));
                self.judged(None)
            }
            Ok(Ok(_)) => {
                self.judge_problem = Some("it was asked before, under the same id".into());
                self.judged(None)
            }
            _ => {
                self.judge_problem = Some("it could not be asked before its deadline".into());
                self.judged(None)
            }
        }
    }

    /// The judge chose candidate `choice`, or none.
    fn judged(&mut self, choice: Option<usize>) -> Progress {
        let now = self.now();
        match self.decision.judge(choice, now) {
            Ok(progress) => progress,
            // Refused when late: the deadline then fails the decision.
            Err(refused) => {
                self.judge_problem
                    .get_or_insert_with(|| refused.to_string());
                Progress::Pending
            }
        }
    }

    /// Ballot task `id`, asked for `asked`, ended as `row` says.
    async fn ended(&mut self, asked: Asked, id: u64, row: Row) -> Result<Progress, Error> {
        self.out.ids.remove(&id);
        let (seat, round) = match asked {
            Asked::Judge if self.candidates.is_empty() => return Ok(Progress::Pending),
            Asked::Judge => {
                self.open = self.open.saturating_sub(1);
                let candidates = std::mem::take(&mut self.candidates);
                let choice = match (row.state, &row.output) {
                    (TaskState::Succeeded, Some(output)) => {
                        colony_runtime::decision::judge_choice(output, &candidates)
                    }
                    (state, _) => Err(match &row.error {
                        Some(error) => format!("its task {id} {state}: {error}"),
                        None => format!("its task {id} {state}"),
                    }),
                };
                let choice = choice.map_err(|why| self.judge_problem = Some(why)).ok();
                return Ok(self.judged(choice));
            }
            Asked::Seat { seat, round } => (seat, round),
        };
        // A ballot of a round gone by, or of a round a judge now settles, counts for nothing.
        if round != self.decision.round() || !self.candidates.is_empty() {
            return Ok(Progress::Pending);
        }
        self.open = self.open.saturating_sub(1);
        let s = seat as usize;
        if row.state != TaskState::Succeeded {
            self.seats[s].problem = Some(match row.error {
                Some(error) => format!("its ballot task {id} {}: {error}", row.state),
                None => format!("its ballot task {id} {}", row.state),
            });
            return Ok(Progress::Pending);
        }
        // A ballot whose record names no agent is told apart from none.
        let voter = row.agent.map(|agent| (row.node.clone(), agent));
        if let Some(again) = voter.clone().filter(|v| self.voted.contains(v)) {
            let who = format!("agent {} of node {}", again.1, again.0);
            if self.seats[s].asked < ASKS_PER_SEAT && self.now() < self.deadline() {
                // Asked again: another agent may take it.
                let payload = self.review_payload(seat);
                self.ask_in_time(&[seat], round, payload).await?;
            } else {
                self.seats[s].problem = Some(format!(
                    "its ballots came from {who}, which had voted already"
                ));
            }
            return Ok(Progress::Pending);
        }
        let output = row.output.clone().unwrap_or_default();
        let proposer = self.decision.proposer();
        let reviewing =
            self.decision.options().protocol == Protocol::Leader && proposer != Some(AgentId(seat));
        let read = if reviewing {
            colony_runtime::decision::review(AgentId(seat), &output)
        } else {
            colony_runtime::decision::ballot(AgentId(seat), &output)
        };
        let ballot = match read {
            Ok(ballot) => ballot.in_round(round),
            Err(problem) => {
                self.seats[s].problem = Some(problem);
                return Ok(Progress::Pending);
            }
        };
        let proposal = match (&ballot.vote, proposer == Some(AgentId(seat))) {
            // Without the newline a process's stdout ends with.
            (Vote::Output(text), true) => Some(text.trim_end().to_owned()),
            _ => None,
        };
        let cast = match &self.weighing {
            None => self.decision.cast(ballot, self.now()),
            Some((_, decide)) => match decide.seat_weight(row.voter.as_deref()) {
                Ok(weight) => self.decision.cast_weighing(ballot, weight, self.now()),
                // Asked again while the seat has asks left: another node may say who voted.
                Err(problem)
                    if self.seats[s].asked < ASKS_PER_SEAT && self.now() < self.deadline() =>
                {
                    tracing::debug!(
                        "vote {}: ballot task {id}: {problem}; asking again",
                        self.vote
                    );
                    let payload = self.review_payload(seat);
                    self.ask_in_time(&[seat], round, payload).await?;
                    return Ok(Progress::Pending);
                }
                Err(problem) => {
                    self.seats[s].problem = Some(format!("its ballot task {id}: {problem}"));
                    return Ok(Progress::Pending);
                }
            },
        };
        let progress = match cast {
            Ok(progress) => progress,
            Err(refused) => {
                self.seats[s].problem = Some(refused.to_string());
                return Ok(Progress::Pending);
            }
        };
        if let Some(v) = voter {
            self.voted.insert(v);
        }
        self.seats[s].voter = Some(Counted {
            node: row.node.clone(),
            agent: row.agent,
            role: row.voter.as_ref().map(|v| v.role.clone()),
            at_ms: row.at_ms,
        });
        // `leader`: the proposal is in; every other seat is asked to review it.
        if let (Progress::Pending, Some(proposal)) = (&progress, proposal)
            && self.reviewed != Some(round)
        {
            self.reviewed = Some(round);
            let reviewers: Vec<u32> = (0..self.seats.len() as u32)
                .filter(|&r| r != seat)
                .collect();
            let payload = colony_runtime::decision::review_payload(&self.ballot.payload, &proposal);
            self.ask_in_time(&reviewers, round, Some(payload)).await?;
        }
        Ok(progress)
    }

    /// The open round's deadline, from the start.
    fn deadline(&self) -> std::time::Duration {
        self.decision.deadline().unwrap_or_default()
    }

    /// `leader`: the review payload seat `seat` is asked again with (it reviews the open
    /// round's proposal); `None` for a ballot or a proposal.
    fn review_payload(&self, seat: u32) -> Option<bytes::Bytes> {
        let proposer = self.decision.proposer()?;
        if proposer == AgentId(seat) {
            return None;
        }
        let round = self.decision.round();
        let proposal = self.decision.ballots().iter().rev().find_map(|b| {
            match (&b.ballot.vote, b.status) {
                (Vote::Output(text), colony_core::decision::Status::Counted)
                    if b.ballot.voter == proposer && b.ballot.round == round =>
                {
                    Some(text.trim_end().to_owned())
                }
                _ => None,
            }
        })?;
        Some(colony_runtime::decision::review_payload(
            &self.ballot.payload,
            &proposal,
        ))
    }
}

/// Decides task `vote` (its attempt's lease id `lease`, which keeps its ballots' ids apart
/// from another attempt's) by `decide.voters` ballots of `spec`, each a cluster task of
/// one attempt (as a vote's ballot on one runtime), one priority above the vote's so that
/// nodes take the ballots of the votes being counted before more votes. A protocol of more
/// rounds asks each round's ballots as tasks of their own (`fast`: every seat again;
/// `leader`: the round's proposer, then every other seat to review the proposal, in a
/// payload with a `review` field), and a tie under `judge` asks one more task, whose payload
/// has a `judge` field listing the candidates.
pub(super) async fn decide(
    cluster: Cluster,
    ends: Arc<Ends>,
    spec: TaskSpec,
    decide: Decide,
    vote: u64,
    lease: String,
) -> Result<Spread, Error> {
    let n = decide.voters;
    // A vote that weighs its voters seats each at the most it could weigh, settled as its
    // ballot is counted.
    let weighing = decide.weigh().map(|weigh| (weigh, decide.clone()));
    let most = match &weighing {
        Some(_) => decide.most_seat_weight(spec.requirement.role.as_deref()),
        None => 1.0,
    };
    let participants: Vec<Participant> = (0..n)
        .map(|i| Participant::weighted(AgentId(i), most))
        .collect();
    let decision = Decision::new(decide.options, &participants)
        .map_err(|e| Error::Task(format!("the vote cannot be counted: {e}")))?;
    let priority = one_above(spec.priority);
    let mut count = Count {
        out: Out {
            cluster: cluster.clone(),
            ids: HashSet::new(),
            why: "its vote ended without it",
        },
        cluster,
        ends,
        decision,
        ballot: TaskSpec {
            max_attempts: 1,
            priority,
            ..spec
        },
        vote,
        lease,
        seats: (0..n).map(|_| Seat::default()).collect(),
        waits: FuturesUnordered::new(),
        open: 0,
        voted: HashSet::new(),
        asked: 0,
        reviewed: None,
        candidates: Vec::new(),
        judge_problem: None,
        weighing,
        started: tokio::time::Instant::now(),
    };
    let first: Vec<u32> = match count.decision.proposer() {
        Some(proposer) => vec![proposer.0],
        None => (0..n).collect(),
    };
    tokio::time::timeout_at(count.until(), count.ask(&first, 0, None))
        .await
        .map_err(|_| {
            Error::Task("its ballots could not all be sent before its timeout".into())
        })??;
    let outcome = 'counting: loop {
        let until = count.until();
        let mut progress = tokio::select! {
            Some((asked, id, row)) = count.waits.next() => count.ended(asked, id, row).await?,
            () = tokio::time::sleep_until(until) => count.decision.expire(count.now()),
        };
        loop {
            progress = match progress {
                Progress::Done(outcome) => break 'counting outcome,
                // Every seat answered, or can no longer: the round closes now.
                Progress::Pending if count.open == 0 => match count.decision.close(count.now()) {
                    Progress::Pending => break,
                    closed => closed,
                },
                Progress::Pending => break,
                Progress::NextRound { round, proposer } => {
                    count.next_round(round, proposer).await?;
                    Progress::Pending
                }
                Progress::NeedsJudge { candidates } => count.ask_judge(candidates).await,
            };
        }
    };
    // The ballots still out are cancelled.
    count.out.cancel_all(count.out.why);
    let nodes: HashSet<&str> = count
        .seats
        .iter()
        .filter_map(|s| s.voter.as_ref().map(|v| v.node.as_str()))
        .collect();
    let agreed = agreement(&outcome, &count.seats);
    let judge = count.judge_problem.map(|p| format!("the judge: {p}"));
    let problems = count
        .seats
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.problem.as_ref().map(|p| format!("voter {i}: {p}")))
        .take(3)
        .chain(judge)
        .collect();
    Ok(Spread {
        outcome,
        voters: n,
        asked: count.asked,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        problems,
        agreed,
    })
}

/// The voters of `outcome`'s deciding round (seats, as the engine knows them) as the agents
/// that cast their ballots, by node: counted for the winner or dissenting. None when the
/// vote failed; a seat whose ballot's record named no agent is passed over. A seat's voter is
/// of the deciding round: each round starts its seats anew.
fn agreement(outcome: &Outcome, seats: &[Seat]) -> BTreeMap<String, Vec<agreed::Voted>> {
    let mut by_node: BTreeMap<String, Vec<agreed::Voted>> = BTreeMap::new();
    let Some(winner) = outcome.winner() else {
        return by_node;
    };
    let agreeing = winner.voters.iter().map(|&seat| (seat, true));
    let dissenting = winner.dissenters.iter().map(|&seat| (seat, false));
    for (seat, agreed) in agreeing.chain(dissenting) {
        let Some(counted) = seats.get(seat.index()).and_then(|s| s.voter.as_ref()) else {
            continue;
        };
        let Some(agent) = counted.agent else {
            continue;
        };
        by_node
            .entry(counted.node.clone())
            .or_default()
            .push(agreed::Voted {
                agent,
                role: counted.role.clone(),
                agreed,
                at_ms: Some(counted.at_ms),
            });
    }
    by_node
}

/// Task `id`, asked for `key`, once it ended.
fn task_end<K: Send + 'static>(
    ends: &Arc<Ends>,
    cluster: &Cluster,
    key: K,
    id: u64,
) -> impl std::future::Future<Output = (K, u64, Row)> + Send + 'static {
    let (ends, cluster) = (ends.clone(), cluster.clone());
    async move { (key, id, ends.ended(&cluster, id).await) }
}

/// A spread team run to its end: the last step's output, or why it failed.
#[derive(Debug)]
pub(super) struct SpreadTeam {
    pub(super) output: Result<bytes::Bytes, String>,
    /// Members: the roles' counts.
    pub(super) members: u32,
    /// Steps run (the last may have failed).
    pub(super) steps: u32,
    /// Ask tasks sent, the asks made again included.
    pub(super) asks: u32,
    /// Asks made again after theirs failed.
    pub(super) reassigned: u32,
    /// Distinct nodes whose agents answered its asks.
    pub(super) nodes: u32,
}

/// Runs team `team` of task `id` (its attempt's lease id `lease`, which keeps its asks' ids
/// apart from another attempt's) with agents of any node: each step's asks (one, or one per
/// member of its role with `each`) are cluster tasks of the role's requirement, one
/// attempt each, one priority above the team's task, whose payload is the task's with the
/// step's input over it and a `team` field (`step`, `role`, `index`, `of`, `members` empty,
/// `context`: the earlier steps' outputs), as on one runtime. An ask that fails is made
/// again while the team's reassignments last; then the team fails, naming the step. An
/// answer that hands the ask on (`{"delegate": {"role", "input"}}`, with `delegation`
/// above 0) asks the role named instead, with `delegated` (`by`, `input`) in its `team`
/// field, under the cap of one runtime (`colony_core::team::Delegation`: no deeper than
/// the team allows, never back to a role on its chain, the team's asks bounded); its answer
/// stands for the one that handed it on. A delegation refused fails the team, as does a
/// step the cluster cannot carry (an ask over its payload, a role it cannot route), for
/// good; NATS out of reach fails the attempt, to be retried.
pub(super) async fn team(
    cluster: Cluster,
    ends: Arc<Ends>,
    spec: TaskSpec,
    team: colony_runtime::team::Team,
    id: u64,
    lease: String,
) -> Result<SpreadTeam, Error> {
    use serde_json::{Map, Value, json};
    team.validate().map_err(|e| Error::Task(e.to_string()))?;
    let priority = one_above(spec.priority);
    let members = team
        .roles
        .iter()
        .fold(0u32, |sum, r| sum.saturating_add(r.count));
    let mut out = Out {
        cluster: cluster.clone(),
        ids: HashSet::new(),
        why: "its team ended without it",
    };
    let mut context = Map::new();
    let (mut asks, mut reassigned, mut steps) = (0u32, 0u32, 0u32);
    let mut nodes: HashSet<String> = HashSet::new();
    let mut last = bytes::Bytes::new();
    let mut delegation = colony_core::team::Delegation::new(team.delegation, team.max_asks());
    let ended = |output, steps, asks, reassigned, nodes: &HashSet<String>| SpreadTeam {
        output,
        members,
        steps,
        asks,
        reassigned,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
    };
    for step in &team.steps {
        steps += 1;
        if let Err(e) = delegation.step() {
            let error = format!("step `{}`: {e}", step.id);
            return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
        }
        let of = if step.each {
            team.roles[step.role].count as usize
        } else {
            1
        };
        // The payload written once a step, each ask's put together around it: the context
        // (every earlier output) is not copied per ask.
        let mut base = colony_runtime::team::step_payload(&spec.payload, step);
        base.remove("team");
        let base = Value::Object(base).to_string();
        let context_text = Value::Object(context.clone()).to_string();
        // The ask of place `index` by a member of role `role`, handed on to it as
        // `delegated` says when it was.
        let payload_of = |index: usize, role: usize, delegated: Option<&Value>| {
            let mut head = json!({
                "step": &*step.id,
                "role": &*team.roles[role].name,
                "index": index,
                "of": of,
                "members": [],
            });
            if let Some(d) = delegated {
                head["delegated"] = d.clone();
            }
            let head = head.to_string();
            let mut payload =
                String::with_capacity(base.len() + head.len() + context_text.len() + 24);
            payload.push_str(&base[..base.len() - 1]);
            if base.len() > 2 {
                payload.push(',');
            }
            payload.push_str("\"team\":");
            payload.push_str(&head[..head.len() - 1]);
            payload.push_str(",\"context\":");
            payload.push_str(&context_text);
            payload.push_str("}}");
            bytes::Bytes::from(payload)
        };
        let largest = payload_of(of - 1, step.role, None).len();
        if largest > crate::MAX_PAYLOAD {
            let error = format!(
                "step `{}` could not be asked: its ask of {largest} bytes (the task's payload and the earlier steps' outputs) is over the cluster's {} bytes",
                step.id,
                crate::MAX_PAYLOAD
            );
            return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
        }
        // Each place's ask as it stands: the roles it went through (the step's first), and
        // how it was handed on.
        let mut chains: Vec<Vec<usize>> = vec![vec![step.role]; of];
        let mut handed: Vec<Option<Value>> = vec![None; of];
        let ask_spec = |index: usize, role: usize, delegated: Option<&Value>| TaskSpec {
            requirement: team.roles[role].requirement.clone(),
            payload: payload_of(index, role, delegated),
            max_attempts: 1,
            priority,
            ..spec.clone()
        };
        let mut outputs: Vec<Option<bytes::Bytes>> = vec![None; of];
        let mut waits = FuturesUnordered::new();
        // What the cluster refuses to carry fails the team; else the attempt fails.
        let unsendable = |e: Error| match e {
            Error::Task(_) | Error::BadRole { .. } => {
                Ok(format!("step `{}` could not be asked: {e}", step.id))
            }
            e => Err(e),
        };
        for chunk in (0..of).collect::<Vec<_>>().chunks(SEND_AT_ONCE) {
            let specs: Vec<TaskSpec> = chunk
                .iter()
                .map(|&i| ask_spec(i, step.role, None))
                .collect();
            let ids: Vec<String> = chunk
                .iter()
                .map(|i| format!("team-{id}-{lease}-{}-{i}-{asks}", step.id))
                .collect();
            let sent = match cluster.submit(&specs, Some(&ids)).await {
                Ok(sent) => sent,
                Err(e) => {
                    let error = unsendable(e)?;
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
            };
            for (&index, task) in chunk.iter().zip(sent) {
                asks += 1;
                out.ids.insert(task.id);
                waits.push(task_end(&ends, &cluster, index as u32, task.id));
            }
        }
        while let Some((index, task, row)) = waits.next().await {
            out.ids.remove(&task);
            let i = index as usize;
            let role = *chains[i].last().unwrap_or(&step.role);
            if row.state == TaskState::Succeeded {
                nodes.insert(row.node.clone());
                let output = row.output.unwrap_or_default();
                let (to, input) = match colony_runtime::team::delegation_asked(&team, &output) {
                    Ok(None) => {
                        outputs[i] = Some(output);
                        continue;
                    }
                    Ok(Some(asked)) => asked,
                    // Worded as one runtime's.
                    Err(why) => return Ok(ended(Err(why), steps, asks, reassigned, &nodes)),
                };
                let by = team.roles[role].name.clone();
                if let Err(e) = delegation.delegate(&chains[i], to) {
                    let error = format!(
                        "step `{}`: role `{by}` cannot delegate to `{}`: {e}",
                        step.id, team.roles[to].name
                    );
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
                let delegated = json!({"by": &*by, "input": input});
                let size = payload_of(i, to, Some(&delegated)).len();
                if size > crate::MAX_PAYLOAD {
                    let error = format!(
                        "step `{}`: role `{by}`'s ask handed on to `{}` takes {size} bytes with the input it gave, over the cluster's {} bytes",
                        step.id,
                        team.roles[to].name,
                        crate::MAX_PAYLOAD
                    );
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
                chains[i].push(to);
                handed[i] = Some(delegated);
            } else {
                let why = row
                    .error
                    .unwrap_or_else(|| format!("its task {task} ended {}", row.state));
                if reassigned >= team.reassignments {
                    let error = format!(
                        "step `{}`: the ask of role `{}` failed ({why}), and the team's {} reassignments are spent",
                        step.id, team.roles[role].name, team.reassignments
                    );
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
                reassigned += 1;
            }
            // Asked again: of the same role after a failure, of the one named after a
            // delegation.
            let role = *chains[i].last().unwrap_or(&step.role);
            let again = match cluster
                .submit(
                    &[ask_spec(i, role, handed[i].as_ref())],
                    Some(&[format!("team-{id}-{lease}-{}-{index}-{asks}", step.id)]),
                )
                .await
            {
                Ok(again) => again,
                Err(e) => {
                    let error = unsendable(e)?;
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
            };
            asks += 1;
            for task in again {
                out.ids.insert(task.id);
                waits.push(task_end(&ends, &cluster, index, task.id));
            }
        }
        // Every ask answered: the loop ends once none is out, and a failure past the
        // reassignments ended the team.
        let Some(mut outputs) = outputs.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(Error::Task(format!(
                "step `{}` ended with an ask unanswered",
                step.id
            )));
        };
        let output = if step.each {
            let all: Vec<Value> = outputs.iter().map(colony_runtime::team::as_value).collect();
            bytes::Bytes::from(Value::Array(all).to_string())
        } else {
            outputs.swap_remove(0)
        };
        context.insert(step.id.to_string(), colony_runtime::team::as_value(&output));
        last = output;
    }
    Ok(ended(Ok(last), steps, asks, reassigned, &nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::decision::{Ballot, DecisionOptions};
    use std::time::Duration;

    /// Who agreed is told by node, for the agents the records named.
    #[test]
    fn a_decided_votes_voters_are_told_by_node_whether_they_agreed() {
        let options = DecisionOptions {
            participation: 1.0,
            ..DecisionOptions::with(Protocol::Majority)
        };
        let seats: Vec<Participant> = (0..4).map(|i| Participant::new(AgentId(i))).collect();
        let mut decision = Decision::new(options, &seats).unwrap();
        let mut progress = Progress::Pending;
        for (seat, vote) in [(0, "x"), (1, "x"), (2, "y"), (3, "x")] {
            progress = decision
                .cast(Ballot::output(AgentId(seat), vote), Duration::ZERO)
                .unwrap();
        }
        let Progress::Done(outcome) = progress else {
            panic!("{progress:?}")
        };
        let counted = |node: &str, agent: Option<u64>| Seat {
            voter: Some(Counted {
                node: node.into(),
                agent,
                role: Some("r".into()),
                at_ms: 12,
            }),
            ..Seat::default()
        };
        let seats = [
            counted("a", Some(5)),
            // Its record named no agent: no one to tell.
            counted("b", None),
            counted("b", Some(7)),
            // No voter kept for it (the seat started anew): no one to tell.
            Seat::default(),
        ];
        let told = agreement(&outcome, &seats);
        let voted = |agent, agreed| agreed::Voted {
            agent,
            role: Some("r".into()),
            agreed,
            at_ms: Some(12),
        };
        assert_eq!(told["a"], [voted(5, true)]);
        assert_eq!(told["b"], [voted(7, false)]);
        assert_eq!(told.len(), 2);

        let failed = Outcome::Failed {
            record: outcome.record().clone(),
            reason: colony_core::decision::Reason::NoQuorum,
        };
        assert!(agreement(&failed, &seats).is_empty());
    }
}
