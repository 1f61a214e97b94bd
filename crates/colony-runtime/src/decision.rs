//! Where a decision is run: one task asked of several distinct workers at once, their outputs
//! counted as ballots by `colony-core`'s decision engine, and one outcome returned.
//!
//! [`Handle::decide`] seats the voters (distinct workers that can run the task, idle and
//! lightly loaded ones first), accepts one ballot task per voter pinned to it (journaled like
//! any task, so a ballot runs on its voter or not at all: never stolen, rebalanced or moved,
//! and cancelled if its voter leaves the pool), and starts the clock. [`Voting::outcome`]
//! then casts each ballot as its task ends, closes the vote early once every ballot task has
//! ended, expires it at the deadline, and cancels the ballot tasks still out once it is
//! decided. A voter whose task ended without an output (failed, dead-lettered, cancelled) is
//! silent; an output the engine refuses is kept with the reason. The outcome is the engine's:
//! a winner with every ballot and the dissent, or a failure with its reason (`no-quorum`,
//! `tie`, ...), never a success-shaped answer.
//!
//! A ballot's vote is its task's output, as text, read as the agent meant it:
//! - a JSON object with a `vote` field votes for that field (a string as is, anything else
//!   as its JSON text), with the object's `confidence` (a number) as its confidence: the
//!   `confidence` protocol needs it;
//! - a JSON string (what a `command` agent's text output becomes) votes for its text;
//! - an `http` agent's answer (a JSON object with the model's `content`, and its model and
//!   usage, which differ from voter to voter) votes for its content, read again by these
//!   rules: a model that answers `{"vote": ..., "confidence": ...}` votes with it;
//! - anything else votes for its text.
//!
//! A decision is journaled with its ballot tasks, in one write, and its outcome once it is
//! taken, before anyone hears of it. After a crash of colony, [`recover`] counts each open
//! decision again: the ballots the journal holds as ended are cast (in the order of the
//! voters, as cast before the deadline: no outcome was ever told, so counting what the
//! journal holds is a decision the voters could have reached), the ballot tasks still
//! unfinished run again on their voters (cancelled, so silent, when the voter is no longer a
//! worker of its pool), and the deadline is the one the decision opened with, by the wall
//! clock. A decision the journal holds as closed is never taken again: its outcome stands,
//! and a second close is fenced.
//!
//! Voters whose agents answer inside their handler (`Agent::answers_inline`) are asked
//! without ballot tasks when every seat is such an agent in service and the protocol needs
//! nobody asked later (not `leader`, not `tie: judge`): the dispatcher's turn that seats them
//! asks each in seat order and casts its answer at once (`count_inline`), and the decision
//! is journaled whole in one write, its answers in place of its outcome, which
//! [`outcome_of`] counts again for readers. Nothing of it is left to recover after a crash.
//!
//! Decisions of more than one call of tasks:
//! - `fast`: when its first round does not decide, every voter is asked again (the same
//!   task, pinned to it), round 0's ballots still out are cancelled, and round 1 is counted
//!   as a classic majority;
//! - `leader`: the first voter alone is asked for a proposal; once it is in, every other
//!   voter gets a review task (the task's spec, its payload given a field
//!   `"review": {"proposal": <text>}`) and answers `approve`
//!   or `reject` (also `yes`/`no`, `accept`, `true`/`false`, as text or as `{"vote": ...}`);
//!   a proposal not accepted passes the turn to the next voter, up to `max-rounds`;
//! - a tie under `tie: judge` asks one worker that can run the task and did not vote (else
//!   the first voter) to choose, the task's payload given a field
//!   `"judge": {"candidates": [<value>, ...]}`; it answers
//!   with a candidate's index (from 0) or its value; anything else, or no answer within
//!   `judge-timeout`, leaves the tie standing (`tie`).
//!
//! Each later call is journaled with its tasks in one write, so a recovered decision replays
//! its opening and its calls in order, and asks what it had not asked yet.

use crate::{Completion, Error, Handle};
use bytes::Bytes;
use colony_core::{
    AgentId, TaskId,
    decision::{
        self, Ballot, Decision, DecisionOptions, MAX_PARTICIPANTS, Outcome, Participant, Progress,
        Protocol,
    },
    task::{TaskSpec, TaskState},
    tree::{LiveTree, SpecMask},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};
use tokio::{sync::oneshot, time::Instant};

/// What to decide by: how many voters, the protocol and its options, and the voters' weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Vote {
    /// Distinct workers asked, each once.
    pub voters: u32,
    pub options: DecisionOptions,
    /// Under `weighted` and `confidence`, the weight of each pool's voters, by pool index;
    /// pools not listed weigh 1.
    pub pool_weights: Vec<f64>,
    /// Under `weighted` and `confidence`, each voter also weighs its reputation (0 to 1,
    /// `colony_core::reputation`) as it stands when the voters are seated.
    pub reputation: bool,
}

impl Vote {
    /// `voters` voters deciding by `options`, each weighing 1.
    pub fn new(voters: u32, options: DecisionOptions) -> Self {
        Self {
            voters,
            options,
            pool_weights: Vec::new(),
            reputation: false,
        }
    }

    /// Refuses what the runtime cannot run, naming it.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |why: String| Err(Error::Decision(why));
        if self.voters == 0 || self.voters as usize > MAX_PARTICIPANTS {
            return invalid(format!(
                "{} voters asked: allowed 1..={MAX_PARTICIPANTS}",
                self.voters
            ));
        }
        self.options
            .validate()
            .map_err(|e| Error::Decision(e.to_string()))?;
        if self.reputation
            && !matches!(
                self.options.protocol,
                Protocol::Weighted | Protocol::Confidence
            )
        {
            return invalid(format!(
                "weights by reputation are counted by the weighted and confidence protocols, not by {}",
                self.options.protocol
            ));
        }
        if let Some((pool, w)) = self
            .pool_weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(0.0..=decision::MAX_WEIGHT).contains(*w))
        {
            return invalid(format!(
                "pool {pool} weighs {w}: allowed 0 up to {}",
                decision::MAX_WEIGHT
            ));
        }
        Ok(())
    }
}

/// Up to `n` distinct workers of a pool in `mask` that are in their pool (not retired), by
/// preference: in service with room, then in service and busy, then down for a restart or
/// sidelined by their breaker (their ballots wait for them); lighter load first within each.
/// Each with its pool. It runs inside the dispatcher, so the walk is bounded: it ends once
/// `n` workers with room are found, or 4 × `n` in service; the whole tree is walked only when
/// fewer are in service.
fn seat(tree: &LiveTree, mask: SpecMask, n: usize) -> Vec<(AgentId, u8)> {
    let worker_tier = tree.worker_tier();
    // Sized for what the walk usually meets, so that it does not grow by doubling.
    let mut found: Vec<(u8, u64, AgentId)> = Vec::with_capacity(n.saturating_mul(2).min(4096));
    let (mut with_room, mut in_service) = (0, 0);
    let mut stack: Vec<AgentId> = Vec::with_capacity(64);
    stack.extend(tree.roots());
    stack.reverse();
    while let Some(agent) = stack.pop() {
        if with_room == n || in_service >= n.saturating_mul(4) {
            break;
        }
        if !tree.mask(agent).intersects(mask) {
            continue;
        }
        if tree.tier(agent) < worker_tier {
            let first = stack.len();
            stack.extend(tree.children(agent));
            // Children in tree order, the first on top.
            stack[first..].reverse();
            continue;
        }
        let (load, capacity) = tree.load(agent);
        let group = if tree.is_down(agent) || tree.is_sidelined(agent) {
            2
        } else if load < capacity {
            with_room += 1;
            in_service += 1;
            0
        } else {
            in_service += 1;
            1
        };
        // Load for its capacity, in millionths.
        let share = u64::from(load) * 1_000_000 / u64::from(capacity.max(1));
        found.push((group, share, agent));
    }
    found.sort_unstable();
    found.truncate(n);
    found
        .into_iter()
        .map(|(_, _, agent)| (agent, tree.spec(agent)))
        .collect()
}

/// What became of one voter's ballot.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Voter {
    pub agent: AgentId,
    pub pool: u8,
    /// The latest ballot task asked of it (a later round's, a review); `None` if it was
    /// never asked (a `leader` reviewer whose proposer never proposed).
    pub task: Option<TaskId>,
    /// How that task ended; `None` if it was still out when its round or the vote ended (it
    /// is then cancelled).
    pub state: Option<TaskState>,
    /// Why its ballot did not count: its task ended without an output (the task's error),
    /// or the engine refused what it sent.
    pub problem: Option<Arc<str>>,
}

impl Voter {
    fn new(seat: &colony_journal::Seat) -> Self {
        Self {
            agent: seat.agent,
            pool: seat.pool,
            task: None,
            state: None,
            problem: None,
        }
    }
}

/// A decision run to its end.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decided {
    /// The decision's id: its first ballot task's.
    pub id: TaskId,
    /// Decided, with the winner, or failed with its reason; every ballot counted either way.
    pub outcome: Arc<Outcome>,
    /// Every voter seated, in the order they were asked.
    pub voters: Vec<Voter>,
    /// The judge asked to settle a tie, if one was.
    pub judge: Option<Voter>,
    /// Ballot tasks asked in all: one per voter, more when a later round, reviews or a
    /// judge were asked. Taken inline, the answers asked.
    pub asked: u32,
    /// Its ballots were answered inline, in the dispatcher's turn that seated the voters:
    /// no voter has a ballot task, and its id is the id of its own task (the question, ended
    /// with the decided value or the reason).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
}

impl Decided {
    /// Ballots counted in the deciding (or last) round: a later round asks the voters again.
    pub fn counted(&self) -> usize {
        let record = self.outcome.record();
        record
            .ballots
            .iter()
            .filter(|b| b.status == decision::Status::Counted && b.ballot.round == record.round)
            .count()
    }

    /// The voter whose output stands for the winner: the earliest seated who voted for it.
    pub fn winner_agent(&self) -> Option<AgentId> {
        let winner = self.outcome.winner()?;
        self.voters
            .iter()
            .map(|v| v.agent)
            .find(|a| winner.voters.contains(a))
    }

    /// Why it failed, for people: the reason and the ballots counted (`no-quorum (1 of 3
    /// voters' ballots counted, participation 0.33)`); `None` once decided.
    pub fn failure(&self) -> Option<String> {
        if self.outcome.winner().is_some() {
            return None;
        }
        let record = self.outcome.record();
        let round = match record.round {
            0 => String::new(),
            r => format!(" in round {r}"),
        };
        Some(format!(
            "{} ({} of {} voters' ballots counted{round}, participation {:.2})",
            self.outcome.reason().map_or("unknown", |r| r.as_str()),
            self.counted(),
            self.voters.len(),
            record.participation
        ))
    }
}

/// Whose ballot tasks the journal is asked to accept: a new decision's, or a later call's.
pub(crate) enum Ballots {
    Open(colony_journal::Opening),
    Call {
        decision: TaskId,
        call: colony_journal::Call,
    },
}

/// What became of one call's tasks.
enum Called {
    /// Asked: the tasks, in the order of the agents asked.
    Asked(Vec<TaskId>),
    /// Not asked, and why.
    NotAsked(Arc<str>),
}

/// Who a ballot task was asked of: a seat, in a round, or the judge.
#[derive(Clone, Copy, Debug)]
enum Asked {
    Seat { seat: usize, round: u32 },
    Judge,
}

type BallotFuture = Pin<Box<dyn Future<Output = (Asked, Result<Completion, Error>)> + Send>>;

/// A decision under way: its voters are seated and their ballot tasks accepted.
pub struct Voting {
    handle: Handle,
    /// The decision's id: its first ballot task's.
    id: TaskId,
    decision: Decision,
    /// What the voters are asked: asked again in a later round, and shown to reviewers and
    /// a judge.
    spec: TaskSpec,
    seats: Vec<colony_journal::Seat>,
    voters: Vec<Voter>,
    judge: Option<Voter>,
    /// The candidates the judge chooses among.
    candidates: Vec<decision::Candidate>,
    /// `leader`: the round whose reviews were asked.
    reviewed: Option<u32>,
    /// Ballot tasks asked so far.
    asked: u32,
    /// What the engine answered that still needs acting on (a recovered decision's next
    /// round or judge, not yet asked before the crash).
    carry: Option<Progress>,
    /// Ballot tasks recovered after a crash, each awaited on its own.
    pending: FuturesUnordered<BallotFuture>,
    /// Ballot tasks asked by this process: their ends heard together, each one's asker by
    /// its task.
    batch: Arc<crate::shared::Batch>,
    out: HashMap<TaskId, Asked>,
    heard: std::collections::VecDeque<Result<Completion, TaskId>>,
    /// When this process took the decision up, and how far into the decision that was: 0 but
    /// for a decision recovered after a crash.
    started: Instant,
    offset: Duration,
    /// Taken inline already, journaled and reported: what [`Voting::outcome`] returns.
    taken: Option<Decided>,
}

impl std::fmt::Debug for Voting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voting")
            .field("voters", &self.voters)
            .field("out", &(self.pending.len() + self.out.len()))
            .finish_non_exhaustive()
    }
}

impl Drop for Voting {
    fn drop(&mut self) {
        self.cancel_the_rest();
    }
}

impl Voting {
    /// Decision `id` among `seats`, taken up `offset` into it, nothing asked yet.
    fn new(
        handle: Handle,
        id: TaskId,
        decision: Decision,
        spec: TaskSpec,
        seats: Vec<colony_journal::Seat>,
        offset: Duration,
    ) -> Self {
        Self {
            handle,
            id,
            decision,
            spec,
            voters: seats.iter().map(Voter::new).collect(),
            seats,
            judge: None,
            candidates: Vec::new(),
            reviewed: None,
            asked: 0,
            carry: None,
            pending: FuturesUnordered::new(),
            batch: crate::shared::Batch::new(),
            out: HashMap::new(),
            heard: std::collections::VecDeque::new(),
            started: Instant::now(),
            offset,
            taken: None,
        }
    }

    /// The decision's id: its first ballot task's.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The voters seated, in the order asked, with their latest ballot tasks.
    pub fn voters(&self) -> &[Voter] {
        match &self.taken {
            Some(decided) => &decided.voters,
            None => &self.voters,
        }
    }

    /// Time since the decision opened, by the engine's clock.
    fn now(&self) -> Duration {
        self.offset + self.started.elapsed()
    }

    /// The instant at time `at` of the decision.
    fn instant(&self, at: Duration) -> Instant {
        self.started + at.saturating_sub(self.offset)
    }

    /// Counts the ballots as their tasks end, until the engine has an outcome: decided, or
    /// failed (at the deadline at the latest). A `fast` decision asks its voters again when
    /// its first round does not decide; a `leader` decision asks the reviewers once the
    /// proposal is in, and the next proposer when it is not accepted; a tie under `judge`
    /// asks a judge. The ballot tasks still out are then cancelled, as they are if the vote
    /// is dropped before it ends. Returns once the journal holds the outcome.
    pub async fn outcome(mut self) -> Result<Decided, Error> {
        if let Some(decided) = self.taken.take() {
            return Ok(decided);
        }
        let mut progress = self.carry.take().unwrap_or(Progress::Pending);
        // A recovered `leader` decision whose proposal came before the crash, its reviews not.
        let proposer = self.decision.proposer();
        if let Some(seat) = self.voters.iter().position(|v| Some(v.agent) == proposer)
            && let Some(text) = self.proposal_unreviewed(seat)
        {
            self.ask_reviews(self.decision.round(), &text).await?;
        }
        let outcome = loop {
            match progress {
                Progress::Pending => {}
                Progress::Done(outcome) => break outcome,
                Progress::NextRound { round, proposer } => {
                    self.next_round(round, proposer).await?;
                    progress = Progress::Pending;
                    continue;
                }
                Progress::NeedsJudge { candidates } => {
                    progress = self.ask_judge(candidates).await?;
                    continue;
                }
            }
            // Nothing left to wait for: the round closes now, as at its deadline.
            if !self.waiting() {
                match self.decision.close(self.now()) {
                    Progress::Pending => {}
                    other => {
                        progress = other;
                        continue;
                    }
                }
            }
            let deadline = match self.decision.deadline() {
                Some(d) => self.instant(d),
                None => match self.decision.outcome() {
                    Some(o) => break o.clone(),
                    None => return Err(Error::Decision("the decision stopped undecided".into())),
                },
            };
            progress = tokio::select! {
                Some((asked, ended)) = self.next_ended(), if self.waiting() => {
                    let now = self.now();
                    self.ended(asked, ended?, now).await?
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.decision.expire(self.now())
                }
            };
        };
        self.drain_ended();
        self.cancel_the_rest();
        let decided = Decided {
            id: self.id,
            outcome,
            voters: std::mem::take(&mut self.voters),
            judge: self.judge.take(),
            asked: self.asked,
            inline: false,
        };
        let record = serde_json::to_string(&decided)
            .map_err(|e| Error::Decision(format!("the outcome could not be written: {e}")))?;
        self.handle
            .journal()
            .close_decision(self.id, record.into())
            .await?;
        report(&self.handle, &decided);
        Ok(decided)
    }

    /// Whether a ballot task asked is still out.
    fn waiting(&self) -> bool {
        !self.pending.is_empty() || !self.out.is_empty()
    }

    /// The next ballot task to end, with who it was asked of; `None` when none is out.
    async fn next_ended(&mut self) -> Option<(Asked, Result<Completion, Error>)> {
        loop {
            while let Some(heard) = self.heard.pop_front() {
                let task = match &heard {
                    Ok(c) => c.id,
                    Err(task) => *task,
                };
                // Not out any more: a round left, or cancelled.
                if let Some(asked) = self.out.remove(&task) {
                    return Some((asked, heard.map_err(|_| Error::Stopped)));
                }
            }
            if !self.waiting() {
                return None;
            }
            let (pending, batch, heard, out) =
                (&mut self.pending, &self.batch, &mut self.heard, &self.out);
            let recovered = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(Some(ended)) = pending.poll_next_unpin(cx) {
                    return std::task::Poll::Ready(Some(ended));
                }
                if !out.is_empty() && batch.poll_take(cx, heard).is_ready() {
                    return std::task::Poll::Ready(None);
                }
                std::task::Poll::Pending
            })
            .await;
            if let Some(ended) = recovered {
                return Some(ended);
            }
        }
    }

    /// Ballots that ended meanwhile need no cancelling; they came too late to count.
    fn drain_ended(&mut self) {
        let mut late = Vec::new();
        while let Some(Some((asked, Ok(ended)))) = self.pending.next().now_or_never() {
            late.push((asked, ended.state));
        }
        self.batch.take_now(&mut self.heard);
        for heard in std::mem::take(&mut self.heard) {
            if let Ok(ended) = heard
                && let Some(asked) = self.out.remove(&ended.id)
            {
                late.push((asked, ended.state));
            }
        }
        for (asked, state) in late {
            let Some(voter) = self.voter(asked) else {
                continue;
            };
            voter.state = Some(state);
            voter.problem = Some("its ballot task ended after its round did".into());
        }
    }

    /// Cancels the ballot tasks still out, without waiting: a ballot that ends first ends
    /// as it does.
    fn cancel_the_rest(&mut self) {
        // Their waiters go with them: nothing is left to count.
        self.pending.clear();
        self.out.clear();
        self.heard.clear();
        for voter in self.voters.iter().chain(&self.judge) {
            if let (None, Some(task)) = (voter.state, voter.task) {
                self.handle.cancel_soon(task);
            }
        }
    }

    /// The engine opened round `round`: the last round's ballots still out are cancelled,
    /// and the round's are asked (`fast`: every voter again; `leader`: the proposer's
    /// proposal).
    async fn next_round(&mut self, round: u32, proposer: Option<AgentId>) -> Result<(), Error> {
        self.drain_ended();
        self.cancel_the_rest();
        let (role, seats): (colony_journal::Role, Vec<usize>) = match proposer {
            Some(agent) => {
                let seat = self.voters.iter().position(|v| v.agent == agent);
                (colony_journal::Role::Proposal, seat.into_iter().collect())
            }
            None => (
                colony_journal::Role::Ballot,
                (0..self.seats.len()).collect(),
            ),
        };
        let specs = vec![self.spec.clone(); seats.len()];
        self.ask(round, role, &seats, specs).await
    }

    /// `leader`: the proposal of round `round` is in; each other voter is asked to review it.
    async fn ask_reviews(&mut self, round: u32, proposal: &str) -> Result<(), Error> {
        self.reviewed = Some(round);
        let proposer = self.decision.proposer();
        let seats: Vec<usize> = (0..self.voters.len())
            .filter(|&i| Some(self.voters[i].agent) != proposer)
            .collect();
        let spec = TaskSpec {
            payload: review_payload(&self.spec.payload, proposal),
            ..self.spec.clone()
        };
        let specs = vec![spec; seats.len()];
        self.ask(round, colony_journal::Role::Review, &seats, specs)
            .await
    }

    /// Asks `seats` (indexes into the voters) for ballot tasks `specs` of round `round`, each
    /// pinned to its voter, journaled as one call of the decision.
    async fn ask(
        &mut self,
        round: u32,
        role: colony_journal::Role,
        seats: &[usize],
        specs: Vec<TaskSpec>,
    ) -> Result<(), Error> {
        if seats.is_empty() {
            return Ok(());
        }
        let asked = seats.iter().map(|&i| self.seats[i]).collect();
        match self.call(round, role, asked, specs).await? {
            Called::Asked(completions) => {
                for (&seat, task) in seats.iter().zip(completions) {
                    self.await_asked(Asked::Seat { seat, round }, task);
                }
            }
            Called::NotAsked(why) => {
                for &seat in seats {
                    self.voters[seat].problem = Some(why.clone());
                }
            }
        }
        Ok(())
    }

    /// Accepts the tasks `specs` (all alike but for their agent) of one call of the decision,
    /// the i-th pinned to `asked[i]`, journaled with the call in one write. Not asked when
    /// the runtime refuses the task (a review or judge payload over the payload limit, no
    /// pool with agents for it) or no room frees up before the decision's deadline.
    async fn call(
        &mut self,
        round: u32,
        role: colony_journal::Role,
        asked: Vec<colony_journal::Seat>,
        specs: Vec<TaskSpec>,
    ) -> Result<Called, Error> {
        if let Some(spec) = specs.first()
            && let Err(refused) = self.handle.admit(std::slice::from_ref(spec))
        {
            return Ok(Called::NotAsked(
                format!("its task could not be asked: {refused}").into(),
            ));
        }
        if !self.room_in_time(asked.len()).await? {
            return Ok(Called::NotAsked(
                "no room to ask it before the round's deadline".into(),
            ));
        }
        let masks = asked.iter().map(|s| SpecMask::of(s.pool)).collect();
        let agents: Vec<AgentId> = asked.iter().map(|s| s.agent).collect();
        let call = colony_journal::Call {
            round,
            role,
            asked,
            at_ms: unix_ms(),
        };
        let ballots = Ballots::Call {
            decision: self.id,
            call,
        };
        let n = specs.len();
        let accepted = self
            .handle
            .accept_batched(
                specs,
                masks,
                |i| Some(agents[i]),
                Some(ballots),
                &self.batch,
            )
            .await?;
        Ok(Called::Asked(
            (0..n as u64)
                .map(|i| TaskId(accepted.first.0 + i))
                .collect(),
        ))
    }

    /// Waits for room for `n` more tasks, until the decision's deadline: `false` if it came
    /// first (the round then closes without them, or the judge's time runs out).
    fn room_in_time(&self, n: usize) -> impl Future<Output = Result<bool, Error>> + Send + 'static {
        let deadline = self.decision.deadline().map(|d| self.instant(d));
        let handle = self.handle.clone();
        async move {
            let Some(deadline) = deadline else {
                return Ok(false);
            };
            tokio::select! {
                room = handle.wait_for_room(n) => room.map(|()| true),
                () = tokio::time::sleep_until(deadline) => Ok(false),
            }
        }
    }

    /// The voter, or the judge, a ballot task was asked of.
    fn voter(&mut self, asked: Asked) -> Option<&mut Voter> {
        match asked {
            Asked::Seat { seat, .. } => self.voters.get_mut(seat),
            Asked::Judge => self.judge.as_mut(),
        }
    }

    /// Waits for `task`, the ballot task asked of `asked`, heard in the batch.
    fn await_asked(&mut self, asked: Asked, task: TaskId) {
        let Some(voter) = self.voter(asked) else {
            return;
        };
        voter.task = Some(task);
        voter.state = None;
        voter.problem = None;
        self.asked += 1;
        self.out.insert(task, asked);
    }

    /// Waits for `pending`, the ballot task asked of `asked` (recovered after a crash).
    fn await_ballot(&mut self, asked: Asked, pending: crate::Pending) {
        let Some(voter) = self.voter(asked) else {
            return;
        };
        voter.task = Some(pending.id);
        voter.state = None;
        voter.problem = None;
        self.asked += 1;
        self.pending
            .push(Box::pin(async move { (asked, pending.await) }));
    }

    /// A tie under `judge`: a worker that can run the task and did not vote (else the first
    /// voter) is asked to choose among `candidates`. What the engine answers if none can be
    /// asked: the tie stands.
    async fn ask_judge(&mut self, candidates: Vec<decision::Candidate>) -> Result<Progress, Error> {
        // No pool that can run the task has agents left: no judge, so the tie stands.
        let Ok(masks) = self.handle.admit(std::slice::from_ref(&self.spec)) else {
            return self.judged(None);
        };
        let mask = masks[0];
        let n = self.voters.len();
        let found = self
            .handle
            .observe(move |live| seat(live.tree, mask, n + 1))
            .await?;
        let judge = found
            .iter()
            .find(|(agent, _)| self.voters.iter().all(|v| v.agent != *agent))
            .or(found.first())
            .copied();
        let Some((agent, pool)) = judge else {
            return self.judged(None);
        };
        let spec = TaskSpec {
            payload: judge_payload(&self.spec.payload, &candidates),
            ..self.spec.clone()
        };
        self.candidates = candidates;
        let seat = colony_journal::Seat {
            agent,
            pool,
            weight: 0.0,
        };
        self.judge = Some(Voter::new(&seat));
        let round = self.decision.round();
        match self
            .call(round, colony_journal::Role::Judge, vec![seat], vec![spec])
            .await?
        {
            Called::Asked(completions) => {
                for task in completions {
                    self.await_asked(Asked::Judge, task);
                }
                Ok(Progress::Pending)
            }
            Called::NotAsked(why) => {
                if let Some(judge) = &mut self.judge {
                    judge.problem = Some(why);
                }
                self.judged(None)
            }
        }
    }

    /// The judge chose `choice` (an index into the candidates), or none.
    fn judged(&mut self, choice: Option<usize>) -> Result<Progress, Error> {
        match self.decision.judge(choice, self.now()) {
            Ok(progress) => Ok(progress),
            Err(refused) => {
                if let Some(judge) = &mut self.judge {
                    judge
                        .problem
                        .get_or_insert_with(|| refused.to_string().into());
                }
                Ok(Progress::Pending)
            }
        }
    }

    /// A ballot task asked of `asked` ended at `now`: counted, and acted on (`leader`: a
    /// proposal is reviewed; a judge's choice is taken).
    async fn ended(
        &mut self,
        asked: Asked,
        ended: Completion,
        now: Duration,
    ) -> Result<Progress, Error> {
        match asked {
            Asked::Judge => {
                let choice = self.choice(ended);
                self.judged(choice)
            }
            Asked::Seat { seat, round } => {
                let progress = self.count(seat, round, ended, now);
                let proposal = self.proposal_unreviewed(seat);
                if let (Progress::Pending, Some(text)) = (&progress, proposal) {
                    self.ask_reviews(round, &text).await?;
                }
                Ok(progress)
            }
        }
    }

    /// `leader`: the proposal voter `seat` just made in the open round, if it was counted
    /// and its reviews are not asked yet.
    fn proposal_unreviewed(&self, seat: usize) -> Option<String> {
        let round = self.decision.round();
        let agent = self.voters[seat].agent;
        if self.decision.proposer() != Some(agent) || self.reviewed == Some(round) {
            return None;
        }
        let last = self.decision.ballots().last()?;
        match (&last.ballot.vote, last.status) {
            // Without the newline a process's stdout ends with.
            (decision::Vote::Output(text), decision::Status::Counted)
                if last.ballot.voter == agent && last.ballot.round == round =>
            {
                Some(text.trim_end().to_owned())
            }
            _ => None,
        }
    }

    /// The judge's answer: a candidate's index, or its value.
    fn choice(&mut self, ended: Completion) -> Option<usize> {
        let judge = self.judge.as_mut()?;
        judge.state = Some(ended.state);
        let text = match (ended.state, ended.output) {
            (TaskState::Succeeded, Some(output)) => output,
            (state, _) => {
                judge.problem = Some(
                    ended
                        .error
                        .unwrap_or_else(|| format!("its task ended {}", state.as_str()).into()),
                );
                return None;
            }
        };
        match judge_choice(&text, &self.candidates) {
            Ok(found) => Some(found),
            Err(problem) => {
                judge.problem = Some(problem.into());
                None
            }
        }
    }

    /// Voter `seat`'s ballot task of round `round` ended: its output is cast, else the voter
    /// is silent. Under `leader`, a reviewer's output is read as its review.
    fn count(&mut self, seat: usize, round: u32, ended: Completion, now: Duration) -> Progress {
        let review = self.decision.options().protocol == Protocol::Leader
            && self.decision.proposer() != Some(self.voters[seat].agent);
        let voter = &mut self.voters[seat];
        voter.state = Some(ended.state);
        let output = match (ended.state, ended.output) {
            (TaskState::Succeeded, Some(output)) => output,
            (state, _) => {
                voter.problem =
                    Some(ended.error.unwrap_or_else(|| {
                        format!("its ballot task ended {}", state.as_str()).into()
                    }));
                return Progress::Pending;
            }
        };
        let read = if review {
            self::review(voter.agent, &output)
        } else {
            ballot(voter.agent, &output)
        };
        let ballot = match read {
            Ok(ballot) => ballot.in_round(round),
            Err(problem) => {
                voter.problem = Some(problem.into());
                return Progress::Pending;
            }
        };
        match self.decision.cast(ballot, now) {
            Ok(progress) => progress,
            Err(refused) => {
                self.voters[seat].problem = Some(refused.to_string().into());
                Progress::Pending
            }
        }
    }
}

/// Tells the event stream and the metrics how the decision ended, and the voters'
/// reputations who agreed with a decided outcome.
fn report(handle: &Handle, decided: &Decided) {
    let outcome = &decided.outcome;
    if let Some(winner) = outcome.winner() {
        let agreed = winner.voters.iter().map(|&v| (v, true));
        let dissented = winner.dissenters.iter().map(|&v| (v, false));
        handle.agreed(agreed.chain(dissented).collect());
    }
    let record = outcome.record();
    let protocol = record.protocol.as_str();
    let counted = record
        .ballots
        .iter()
        .filter(|b| b.status == decision::Status::Counted)
        .count() as u32;
    let dissent = outcome.winner().map(|w| {
        let all = w.voters.len() + w.dissenters.len();
        w.dissenters.len() as f64 / all.max(1) as f64
    });
    let result = match outcome.reason() {
        None => "decided",
        Some(reason) => reason.as_str(),
    };
    crate::metrics::Metrics::decision(protocol, result, record.at, record.participation, dissent);
    handle.publish(
        crate::events::Kinds::DECISIONS,
        crate::events::Event::DecisionEnded {
            first_ballot: decided.id,
            protocol: record.protocol,
            voters: decided.voters.len() as u32,
            counted,
            value: outcome.winner().map(|w| w.value.clone()),
            reason: outcome.reason(),
        },
    );
}

/// A `leader` reviewer's output read as its review (see [`as_review`]): also a cluster's, for
/// a vote whose reviews run on several nodes.
pub fn review(voter: AgentId, output: &Bytes) -> Result<Ballot, String> {
    ballot(voter, output).and_then(as_review)
}

/// The payload of a `leader` review of `proposal`, for a task whose payload is `payload`.
pub fn review_payload(payload: &Bytes, proposal: &str) -> Bytes {
    let review = serde_json::json!({ "proposal": proposal });
    Bytes::from(with_field(payload, "review", review).to_string())
}

/// The payload of a judge asked to choose among `candidates`, for a task whose payload is
/// `payload`.
pub fn judge_payload(payload: &Bytes, candidates: &[decision::Candidate]) -> Bytes {
    let values: Vec<&str> = candidates.iter().map(|c| &*c.value).collect();
    let judge = serde_json::json!({ "candidates": values });
    Bytes::from(with_field(payload, "judge", judge).to_string())
}

/// The candidate a judge's output chose: its index among `candidates`, or its value; else
/// why it chose none.
pub fn judge_choice(output: &Bytes, candidates: &[decision::Candidate]) -> Result<usize, String> {
    let said = match ballot(AgentId(0), output)?.vote {
        decision::Vote::Output(text) => text,
        _ => return Err("it gave a review, not a choice".into()),
    };
    let said = said.trim();
    said.parse::<usize>()
        .ok()
        .filter(|&i| i < candidates.len())
        .or_else(|| candidates.iter().position(|c| c.value.trim() == said))
        .ok_or_else(|| {
            format!("it chose {said:?}, which is neither a candidate's index nor its value")
        })
}

/// A reviewer's ballot read as its review: `approve` (or `approved`, `accept`, `yes`,
/// `true`) or `reject` (or `rejected`, `no`, `false`), in any case.
fn as_review(ballot: Ballot) -> Result<Ballot, String> {
    let decision::Vote::Output(text) = &ballot.vote else {
        return Ok(ballot);
    };
    let word = text
        .trim()
        .trim_matches(|c: char| c == '.' || c == '!')
        .to_lowercase();
    let approve = match word.as_str() {
        "approve" | "approved" | "accept" | "yes" | "true" => true,
        "reject" | "rejected" | "no" | "false" => false,
        _ => {
            return Err(format!(
                "its review {:?} is neither approve nor reject",
                colony_core::text::shorten(text, 80)
            ));
        }
    };
    let review = Ballot::review(ballot.voter, approve);
    Ok(match ballot.confidence {
        Some(c) => review.with_confidence(c),
        None => review,
    })
}

/// A task's payload for a review or a judge: a JSON object keeps its fields (so an agent
/// reads the task as it did, `{{input.KEY}}` included) and gains `key`; any other payload
/// goes under `task`, beside `key`.
fn with_field(payload: &Bytes, key: &str, value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let task = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut fields)) => {
            fields.insert(key.to_owned(), value);
            return Value::Object(fields);
        }
        Ok(other) => other,
        Err(_) => Value::String(String::from_utf8_lossy(payload).into_owned()),
    };
    serde_json::json!({ "task": task, key: value })
}

/// The ballot an output casts (see the module docs): also a cluster's, for a vote whose
/// ballots run on several nodes.
pub fn ballot(voter: AgentId, output: &Bytes) -> Result<Ballot, String> {
    let text = std::str::from_utf8(output)
        .map_err(|e| format!("its output is not UTF-8 text ({e}), so it cannot be a vote"))?;
    ballot_of(voter, text, true)
}

/// The ballot `text` casts; an `http` answer's content is read once more (`envelope`). Text
/// that is not JSON is the vote itself (kept without a copy when it is shared already).
fn ballot_of<T: AsRef<str> + Into<Arc<str>>>(
    voter: AgentId,
    whole: T,
    envelope: bool,
) -> Result<Ballot, String> {
    use serde_json::Value;
    let text = whole.as_ref();
    let json = match text.trim_start().as_bytes().first() {
        Some(b'{' | b'"') => serde_json::from_str::<Value>(text).ok(),
        _ => return Ok(Ballot::output(voter, whole)),
    };
    match json {
        Some(Value::String(s)) => Ok(Ballot::output(voter, s)),
        Some(Value::Object(object)) => {
            if let Some(vote) = object.get("vote") {
                let vote = match vote {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let ballot = Ballot::output(voter, vote);
                return match object.get("confidence") {
                    None => Ok(ballot),
                    Some(c) => match c.as_f64() {
                        Some(c) => Ok(ballot.with_confidence(c)),
                        None => Err(format!("its confidence {c} is not a number")),
                    },
                };
            }
            match object.get("content") {
                Some(Value::String(content)) if envelope => {
                    ballot_of(voter, content.as_str(), false)
                }
                _ => Ok(Ballot::output(voter, text)),
            }
        }
        _ => Ok(Ballot::output(voter, text)),
    }
}

impl Handle {
    /// Starts a decision: asks `spec` of `vote.voters` distinct workers that can run it, one
    /// ballot task each pinned to its voter, and returns once the journal holds them. Await
    /// [`Voting::outcome`] for the result. Refused, with nothing accepted, when fewer workers
    /// can run the task than voters are asked, or the vote cannot run (see [`Vote`]).
    pub async fn decide(&self, spec: TaskSpec, vote: Vote) -> Result<Voting, Error> {
        vote.validate()?;
        let n = vote.voters as usize;
        let mask = self.admit(std::slice::from_ref(&spec))?[0];
        self.fits(n)?;
        let options = options_text(&vote.options)?;
        // The journal's room before the hierarchy's: a caller that stops waiting for the
        // first holds no permit yet. Then room, then seats: seated voters must not leave
        // while the ballots wait for room.
        self.journal_room().await;
        self.wait_for_room(n).await?;
        // `leader` asks its first proposer alone; the others are asked once it proposed.
        let asked = match vote.options.protocol {
            Protocol::Leader => 1,
            _ => n,
        };
        let batch = crate::shared::Batch::new();
        // Seated, and their ballot tasks submitted, in one turn of the dispatcher: the caller
        // waits for it once, not twice. (A voter retired before its ballot is routed has
        // the ballot cancelled, as the worker left its pool.)
        let opened = {
            let (handle, batch, spec) = (self.clone(), batch.clone(), spec.clone());
            self.observe(move |live| open(live, &handle, &vote, mask, options, asked, spec, &batch))
                .await?
        };
        let (seats, decision, entered) = match opened? {
            Opened::Asked {
                seats,
                decision,
                entered,
            } => (seats, decision, entered),
            Opened::Taken {
                decision,
                decided,
                durable,
            } => {
                let decided = match durable {
                    // Written and reported in the dispatcher's turn.
                    None => decided,
                    // Awaited and reported apart from this caller: one that stops waiting
                    // leaves no decision journaled and never told.
                    Some(durable) => {
                        let handle = self.clone();
                        let told = crate::spawner::Spawner::spawn("decision-inline", async move {
                            durable.await?;
                            report(&handle, &decided);
                            Ok::<_, colony_journal::Error>(decided)
                        });
                        match told.await {
                            Ok(Some(Ok(decided))) => decided,
                            Ok(Some(Err(e))) => return Err(self.refused(0, e)),
                            _ => return Err(Error::Stopped),
                        }
                    }
                };
                // Nothing is left to ask or count: no voters of its own to keep.
                let mut voting = Voting::new(
                    self.clone(),
                    decided.id,
                    decision,
                    spec,
                    Vec::new(),
                    Duration::ZERO,
                );
                voting.taken = Some(*decided);
                return Ok(voting);
            }
        };
        // A caller that stops waiting here has the ballots cancelled: nobody would count
        // them (`handle::Unread`).
        let accepted = self.answered(entered).await?;
        let mut voting = Voting::new(
            self.clone(),
            accepted.first,
            decision,
            spec,
            seats,
            Duration::ZERO,
        );
        voting.batch = batch;
        for seat in 0..asked {
            let task = TaskId(accepted.first.0 + seat as u64);
            voting.await_asked(Asked::Seat { seat, round: 0 }, task);
        }
        Ok(voting)
    }
}

/// `options` as the journal keeps them (JSON). The last ones written on this thread are
/// kept: a caller's decisions mostly share their options, and writing them costs more than
/// comparing them.
fn options_text(options: &DecisionOptions) -> Result<Arc<str>, Error> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(DecisionOptions, Arc<str>)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((kept, text)) = last
            && kept == options
        {
            return Ok(text.clone());
        }
        let text: Arc<str> = serde_json::to_string(options)
            .map_err(|e| Error::Decision(format!("the options could not be written: {e}")))?
            .into();
        *last = Some((*options, text.clone()));
        Ok(text)
    })
}

/// What [`open`] did.
enum Opened {
    /// The ballot tasks of the first seats asked are submitted.
    Asked {
        seats: Vec<colony_journal::Seat>,
        decision: Decision,
        entered: crate::handle::Unread,
    },
    /// Every voter answered inline: the decision is taken, and written once `durable`
    /// resolves; written and reported already when there is nothing to wait for.
    Taken {
        decision: Decision,
        decided: Box<Decided>,
        durable: Option<colony_journal::Durable>,
    },
}

/// Inside the dispatcher: seats `vote.voters` workers of `mask` (each weighed by its pool's
/// weight, times its reputation when the vote asks for it), opens the decision and submits
/// the ballot tasks of the first `asked` seats, each pinned to its voter and heard in
/// `batch`. Nothing is accepted when too few workers can vote or the engine refuses them,
/// and the `n` permits taken for the seats are handed back; else those of the seats not
/// asked yet are (the asked ones' go back as their tasks end, or on the journal's refusal).
/// When every seat is in service and its pool answers inline, and the protocol takes no
/// proposal and no judge, the voters are asked inline instead and the decision taken at once
/// ([`take_inline`]): no ballot task, and every permit goes back.
#[allow(clippy::too_many_arguments)]
fn open(
    live: &crate::dispatcher::Live<'_>,
    handle: &Handle,
    vote: &Vote,
    mask: SpecMask,
    options: Arc<str>,
    asked: usize,
    spec: TaskSpec,
    batch: &Arc<crate::shared::Batch>,
) -> Result<Opened, Error> {
    let n = vote.voters as usize;
    // Every seat's permit goes back if this ends early: refused, or a panic in between.
    let room = Room { handle, n };
    let seats: Vec<colony_journal::Seat> = seat(live.tree, mask, n)
        .into_iter()
        .map(|(agent, pool)| {
            let weight = vote.pool_weights.get(pool as usize).copied();
            let weight = weight.unwrap_or(1.0);
            let weight = if vote.reputation {
                weight * live.reputation(agent).score()
            } else {
                weight
            };
            colony_journal::Seat {
                agent,
                pool,
                weight,
            }
        })
        .collect();
    let decision = if seats.len() < n {
        Err(Error::Decision(format!(
            "{n} voters asked, but {} workers can run the task",
            seats.len()
        )))
    } else {
        Decision::new(vote.options, &participants(&seats))
            .map_err(|e| Error::Decision(e.to_string()))
    };
    let mut decision = decision?;
    let inline = !matches!(vote.options.protocol, Protocol::Leader)
        && vote.options.tie != decision::Tie::Judge
        && seats
            .iter()
            .all(|s| live.answers_inline(s.pool) && live.in_service(s.agent));
    if inline {
        // No ballot tasks: the seats' permits go back as `room` drops.
        let (decided, durable) = take_inline(live, handle, &mut decision, &seats, options, &spec)?;
        if durable.is_none() {
            // Written at once (the in-memory journal): reported here, where the outcome was
            // just counted, rather than read again by the caller on another core.
            report(handle, &decided);
        }
        return Ok(Opened::Taken {
            decision,
            decided: Box::new(decided),
            durable,
        });
    }
    // Each ballot may run only in its voter's pool: that is the demand it makes.
    let masks = seats[..asked]
        .iter()
        .map(|s| SpecMask::of(s.pool))
        .collect();
    let opening = colony_journal::Opening {
        options,
        seats: seats.clone(),
        asked: asked as u32,
        opened_at_ms: unix_ms(),
    };
    // From here the asked seats' permits go back with their tasks (or on the journal's
    // refusal, in `enter`); the others' now.
    std::mem::forget(room);
    handle.give_back_room(n - asked);
    let entered = handle.enter(
        vec![spec; asked],
        masks,
        |_, id| Some(batch.sender(id)),
        |i| Some(seats[i].agent),
        Some(Ballots::Open(opening)),
    )?;
    Ok(Opened::Asked {
        seats,
        decision,
        entered: entered.unread(handle),
    })
}

/// Inside the dispatcher: takes `decision` among `seats`, whose agents answer inline, at once
/// ([`count_inline`]), each voter handed `spec`'s payload inside its handler. The decision is
/// then journaled whole, under the next task id (its own task, the question, ended with the
/// decided value or the reason), in one write that keeps the answers and when they came
/// ([`Answers`]), from which the engine counts the same outcome again when it is read
/// ([`outcome_of`]). Returns it, and the write to wait for before anyone hears of it (none
/// when the journal wrote it at once). Nothing
/// is written, and no id taken, when the journal refuses it.
///
/// The voters are asked without holding the ids (submitters would wait on them meanwhile),
/// told the id the decision takes if no task is accepted in between; if one was, they are
/// asked again holding them (an answer given inline does nothing else, so asking again is
/// harmless), so the id an agent saw is always the decision's.
fn take_inline(
    live: &crate::dispatcher::Live<'_>,
    handle: &Handle,
    decision: &mut Decision,
    seats: &[colony_journal::Seat],
    options: Arc<str>,
    spec: &TaskSpec,
) -> Result<(Decided, Option<colony_journal::Durable>), Error> {
    let opened_at_ms = unix_ms();
    let peeked = handle.next_id_now();
    let first = ask_inline(live, decision, seats, spec, peeked)?;
    handle.with_next_id(|id| {
        let (outcome, voters, asked, answers) = if id == peeked {
            first
        } else {
            // Counted anew: the engine as it opened, from the same seats.
            *decision = Decision::new(*decision.options(), &participants(seats))
                .map_err(|e| Error::Decision(e.to_string()))?;
            ask_inline(live, decision, seats, spec, id)?
        };
        let result = match (outcome.winner(), outcome.reason()) {
            (Some(winner), _) => Ok(Bytes::from(winner.representative.to_string())),
            (None, reason) => Err(reason.map_or("undecided", |r| r.as_str()).into()),
        };
        let record = answers
            .to_json()
            .map_err(|e| Error::Decision(format!("the answers could not be written: {e}")))?;
        let taken = colony_journal::Taken {
            opening: colony_journal::Opening {
                options,
                seats: seats.to_vec(),
                asked: 0,
                opened_at_ms,
            },
            result,
            outcome: record.into(),
        };
        let decided = Decided {
            id,
            outcome,
            voters,
            judge: None,
            asked,
            inline: true,
        };
        let mut durable = handle.journal().decided(id, spec, taken);
        match durable.try_result() {
            Some(Err(refused)) => Err(refused.into()),
            // The in-memory journal: written at once.
            Some(Ok(())) => Ok((decided, None)),
            None => Ok((decided, Some(durable))),
        }
    })
}

/// One pass of [`take_inline`]: every voter asked for decision `id`, counted, and the
/// answers to journal.
fn ask_inline(
    live: &crate::dispatcher::Live<'_>,
    decision: &mut Decision,
    seats: &[colony_journal::Seat],
    spec: &TaskSpec,
    id: TaskId,
) -> Result<(Arc<Outcome>, Vec<Voter>, u32, Answers), Error> {
    // Read for every answer: the processor's counter, scaled, costs a third of the
    // system's monotonic clock.
    let started = quanta::Instant::now();
    let payload = own_copy(&spec.payload);
    let mut at = Vec::with_capacity(seats.len());
    let mut closed = Vec::new();
    let mut texts = Texts::default();
    let (outcome, voters, asked) = count_inline(
        decision,
        seats,
        |agent| {
            let output = live.answer_inline(agent, id, &payload);
            let (when, us) = micros(started.elapsed());
            at.push(us);
            Ok((texts.of(output), when))
        },
        || {
            let (when, us) = micros(started.elapsed());
            closed.push(us);
            Ok(when)
        },
    )?;
    let answers = Answers {
        format: Answers::FORMAT,
        texts: texts.said,
        said: Listed::Indices(texts.order),
        at,
        closed,
        value: outcome.winner().map(|w| w.value.clone()),
        reason: outcome.reason().map(|r| r.as_str().into()),
    };
    Ok((outcome, voters, asked, answers))
}

/// Most bytes of a payload copied for the voters asked inline (see [`own_copy`]).
const OWN_COPY: usize = 4 * 1024;

/// The payload the voters asked inline each get a handle on: a small one copied into storage
/// of the dispatcher's own, a larger one as it is. Each voter's handle costs an atomic
/// increment and decrement of the storage's count. The caller's copy was made shareable on
/// the caller's thread, where its count can share a cache line with what that thread reads
/// while it waits for the answer; with the dispatcher's own copy, W5's p99 over 10,000
/// rounds went from 50-52 µs to 42-44 µs (docs/benchmarks.md).
fn own_copy(payload: &Bytes) -> Bytes {
    if payload.len() <= OWN_COPY {
        Bytes::copy_from_slice(payload)
    } else {
        payload.clone()
    }
}

/// A time into a decision taken inline, to the microsecond it is in: as the engine is told
/// it, and in microseconds as the journal keeps it, so that the decision counted again from
/// the journal is the one taken. Against a deadline that is not a whole microsecond, an
/// answer in the deadline's own microsecond counts as before it.
fn micros(elapsed: Duration) -> (Duration, u64) {
    let us = elapsed.as_micros() as u64;
    (Duration::from_micros(us), us)
}

/// An output as the text an answer given inline must be: else why it cannot be a ballot.
fn as_text(output: &[u8]) -> Result<Arc<str>, String> {
    std::str::from_utf8(output)
        .map(Arc::from)
        .map_err(|e| format!("its output is not UTF-8 text ({e}), so it cannot be a vote"))
}

/// What the voters of one decision answered, as the journal keeps it: the answers in the
/// order first given (`said`), and for each voter asked, the index of its answer (`order`).
/// The first few distinct texts are listed once and shared by the voters who say them: most
/// votes have a few distinct answers, and a new copy costs an allocation and a check of its
/// UTF-8 for every voter. Past them, and for every error, an answer is listed on its own.
#[derive(Default)]
struct Texts {
    said: Vec<Said>,
    order: Vec<u32>,
    /// The outputs of the first few distinct texts, each with its index and text.
    kept: Vec<(Bytes, u32, Arc<str>)>,
}

impl Texts {
    /// Distinct texts looked for; past them, each new answer is listed on its own.
    const KEPT: usize = 8;

    /// What a voter answered (its output, or why it gave none), listed; returns it as a
    /// ballot's text, or why it cannot be one.
    fn of(&mut self, answer: Result<Bytes, String>) -> Result<Arc<str>, String> {
        let output = answer.map_err(|why| self.nothing(why))?;
        if let Some((_, i, text)) = self.kept.iter().find(|(seen, ..)| *seen == output) {
            self.order.push(*i);
            return Ok(text.clone());
        }
        let text = as_text(&output).map_err(|why| self.nothing(why))?;
        let i = self.list(Said::Text(text.clone()));
        if self.kept.len() < Self::KEPT {
            self.kept.push((output, i, text.clone()));
        }
        Ok(text)
    }

    /// No ballot, and why: listed, and handed back.
    fn nothing(&mut self, why: String) -> String {
        self.list(Said::Nothing {
            error: why.as_str().into(),
        });
        why
    }

    /// A new answer, listed for the voter asked last; its index.
    fn list(&mut self, said: Said) -> u32 {
        let i = self.said.len() as u32;
        self.said.push(said);
        self.order.push(i);
        i
    }
}

/// Counts a decision whose voters answer inline: each voter in seat order is asked
/// (`answer`: what it said, or why it said nothing, and when) and its ballot cast at once,
/// until the engine decides or the round's deadline has passed (voters after that are not
/// asked); a round that ends undecided is closed (at `closing()`), and `fast`'s second round
/// asks every voter again. The same
/// counting serves the dispatcher's turn and the reading of the journal's record, so the
/// outcome read back is the one decided. Returns the outcome, every voter, and the answers
/// asked.
fn count_inline(
    decision: &mut Decision,
    seats: &[colony_journal::Seat],
    mut answer: impl FnMut(AgentId) -> Result<(Result<Arc<str>, String>, Duration), Error>,
    mut closing: impl FnMut() -> Result<Duration, Error>,
) -> Result<(Arc<Outcome>, Vec<Voter>, u32), Error> {
    let mut voters: Vec<Voter> = seats.iter().map(Voter::new).collect();
    let mut asked = 0;
    let mut round = 0;
    // When the last answer came: past the round's deadline, nobody more is asked in it.
    let mut last = Duration::ZERO;
    loop {
        let mut progress = Progress::Pending;
        // The round's: it holds while the round is pending.
        let deadline = decision.deadline();
        for voter in &mut voters {
            (voter.state, voter.problem) = (None, None);
            let late = deadline.is_some_and(|d| last >= d);
            if !matches!(progress, Progress::Pending) || late {
                continue;
            }
            asked += 1;
            let (said, at) = answer(voter.agent)?;
            last = at;
            voter.state = Some(if said.is_ok() {
                TaskState::Succeeded
            } else {
                TaskState::Failed
            });
            if deadline.is_some_and(|d| at >= d) {
                voter.problem = Some("its answer came after its round's deadline".into());
                continue;
            }
            let cast = said
                .and_then(|text| ballot_of(voter.agent, text, true))
                .and_then(|b| {
                    decision
                        .cast(b.in_round(round), at)
                        .map_err(|refused| refused.to_string())
                });
            match cast {
                Ok(p) => progress = p,
                Err(problem) => voter.problem = Some(problem.into()),
            }
        }
        if matches!(progress, Progress::Pending) {
            progress = decision.close(closing()?);
        }
        match progress {
            Progress::Done(outcome) => return Ok((outcome, voters, asked)),
            Progress::NextRound {
                round: next,
                proposer: None,
            } => round = next,
            other => {
                return Err(Error::Decision(format!(
                    "a decision taken inline came to {other:?}, which needs agents asked later"
                )));
            }
        }
    }
}

/// What one voter answered inline, as the journal keeps it: its text, or why it said
/// nothing that could be a ballot.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Said {
    Text(Arc<str>),
    Nothing { error: Arc<str> },
}

/// A decision taken inline as the journal keeps it, in place of its outcome: its voters'
/// answers in the order asked, when each came (`at`, from the decision's start), and when
/// each round that ended undecided was closed. Far smaller than the outcome (which lists
/// every ballot and voter), so the one write of the decision is cheap; [`outcome_of`] counts
/// the outcome from it again.
///
/// Format 2 lists the answers (`texts`: the first few distinct texts once, see [`Texts`])
/// and each voter's as its index there (`said`), its times in microseconds; format 1,
/// written before, lists each voter's answer whole in `said`, its times in nanoseconds.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Answers {
    /// [`Answers::FORMAT`] when written: a record of another format is not counted again.
    format: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    texts: Vec<Said>,
    said: Listed,
    at: Vec<u64>,
    closed: Vec<u64>,
    /// What was decided (the winner's value), or why not: counting again must give it.
    value: Option<Arc<str>>,
    reason: Option<Arc<str>>,
}

/// The voters' answers in a record: indices into its texts (format 2), or whole (format 1).
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Listed {
    Indices(Vec<u32>),
    Whole(Vec<Said>),
}

impl Answers {
    /// The format written now; the formats read.
    const FORMAT: u32 = 2;
    const READ: [u32; 2] = [1, 2];

    /// The record as serde writes it, with its lists of numbers written directly: a voter's
    /// index and time cost a few instructions each here, against a formatter call per
    /// punctuation mark and number through serde, in the dispatcher's turn.
    fn to_json(&self) -> Result<String, serde_json::Error> {
        fn numbers(out: &mut String, list: impl Iterator<Item = u64>) {
            let mut digits = itoa::Buffer::new();
            out.push('[');
            for (i, n) in list.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match u8::try_from(n) {
                    // Most of them: an index among a few texts, a time of a few microseconds.
                    Ok(digit @ 0..=9) => out.push(char::from(b'0' + digit)),
                    _ => out.push_str(digits.format(n)),
                }
            }
            out.push(']');
        }
        let mut out = String::with_capacity(96 + 16 * self.at.len());
        out.push_str("{\"format\":");
        out.push_str(itoa::Buffer::new().format(self.format));
        if !self.texts.is_empty() {
            out.push_str(",\"texts\":");
            out.push_str(&serde_json::to_string(&self.texts)?);
        }
        out.push_str(",\"said\":");
        match &self.said {
            Listed::Indices(order) => numbers(&mut out, order.iter().map(|&i| u64::from(i))),
            Listed::Whole(said) => out.push_str(&serde_json::to_string(said)?),
        }
        out.push_str(",\"at\":");
        numbers(&mut out, self.at.iter().copied());
        out.push_str(",\"closed\":");
        numbers(&mut out, self.closed.iter().copied());
        out.push_str(",\"value\":");
        out.push_str(&serde_json::to_string(&self.value)?);
        out.push_str(",\"reason\":");
        out.push_str(&serde_json::to_string(&self.reason)?);
        out.push('}');
        Ok(out)
    }

    /// Each voter's answer in the order asked, from a record of `format`: else why the
    /// record does not hold them.
    fn voters_said(format: u32, texts: &[Said], said: Listed) -> Result<Vec<Said>, String> {
        match (format, said) {
            (1, Listed::Whole(said)) => Ok(said),
            // An empty list reads as indices whatever the format.
            (1 | 2, Listed::Indices(order)) if order.is_empty() => Ok(Vec::new()),
            (2, Listed::Indices(order)) => order
                .into_iter()
                .map(|i| {
                    texts.get(i as usize).cloned().ok_or_else(|| {
                        format!("an answer is text {i}, but it lists {}", texts.len())
                    })
                })
                .collect(),
            (format, _) => Err(format!(
                "its answers are not listed as format {format} lists them"
            )),
        }
    }
}

/// How decision `row` ended, as JSON (a [`Decided`]), once it has: the outcome journaled, or
/// for a decision taken inline, the outcome counted again from its journaled answers by the
/// engine, which gives what it gave when the decision was taken. An error when the record
/// does not read.
pub fn outcome_of(row: &colony_journal::DecisionRow) -> Result<Option<serde_json::Value>, Error> {
    let Some(text) = row.outcome.as_deref() else {
        return Ok(None);
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::Decision(format!(
            "decision {}: its record does not read: {e}",
            row.id
        ))
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| unreadable(&e))?;
    if value.get("said").is_none() {
        return Ok(Some(value));
    }
    let answers: Answers = serde_json::from_value(value).map_err(|e| unreadable(&e))?;
    if !Answers::READ.contains(&answers.format) {
        return Err(unreadable(&format!(
            "its answers are of format {}, this colony counts formats {:?}",
            answers.format,
            Answers::READ
        )));
    }
    let Answers {
        format,
        texts,
        said,
        at,
        closed,
        value,
        reason,
    } = answers;
    let said = Answers::voters_said(format, &texts, said).map_err(|e| unreadable(&e))?;
    // Nanoseconds in format 1, microseconds since.
    let time = |t: u64| match format {
        1 => Duration::from_nanos(t),
        _ => Duration::from_micros(t),
    };
    let options: DecisionOptions =
        serde_json::from_str(&row.opening.options).map_err(|e| unreadable(&e))?;
    let mut decision =
        Decision::new(options, &participants(&row.opening.seats)).map_err(|e| unreadable(&e))?;
    let ends = || unreadable(&"it ends before the decision does");
    let mut answered = said.into_iter().zip(at);
    let mut closed = closed.into_iter();
    let (outcome, voters, asked) = count_inline(
        &mut decision,
        &row.opening.seats,
        |_| {
            let (said, at) = answered.next().ok_or_else(ends)?;
            let said = match said {
                Said::Text(text) => Ok(text),
                Said::Nothing { error } => Err(error.to_string()),
            };
            Ok((said, time(at)))
        },
        || closed.next().map(time).ok_or_else(ends),
    )?;
    let again = (
        outcome.winner().map(|w| w.value.clone()),
        outcome.reason().map(|r| Arc::<str>::from(r.as_str())),
    );
    if again != (value.clone(), reason.clone()) {
        return Err(unreadable(&format!(
            "counted again it gives {again:?} where {:?} was decided",
            (value, reason)
        )));
    }
    let decided = Decided {
        id: row.id,
        outcome,
        voters,
        judge: None,
        asked,
        inline: true,
    };
    serde_json::to_value(&decided)
        .map(Some)
        .map_err(|e| unreadable(&e))
}

/// The admission permits of a decision's seats, handed back if it is dropped.
struct Room<'a> {
    handle: &'a Handle,
    n: usize,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.handle.give_back_room(self.n);
    }
}

/// The engine's participants of `seats`, each with its weight.
fn participants(seats: &[colony_journal::Seat]) -> Vec<Participant> {
    seats
        .iter()
        .map(|s| Participant::weighted(s.agent, s.weight))
        .collect()
}

/// Milliseconds since the Unix epoch, by the wall clock: a decision's deadline outlives the
/// process that opened it.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cancels the ballot tasks among `unfinished` whose decision ended before a crash (it was
/// closed before its stragglers' cancellations were written): the vote is over, so they run
/// nowhere. Returns the other tasks.
pub(crate) async fn cancel_closed_ballots(
    journal: &dyn colony_journal::Journal,
    unfinished: Vec<colony_journal::TaskRow>,
) -> Result<Vec<colony_journal::TaskRow>, Error> {
    let ids: Vec<TaskId> = unfinished.iter().map(|row| row.id).collect();
    let closed = journal.closed_ballots(&ids)?;
    if closed.is_empty() {
        return Ok(unfinished);
    }
    let records = closed
        .iter()
        .map(|&task| colony_journal::Record::Cancelled { task })
        .collect();
    journal.record(records).await?;
    tracing::info!(
        ballots = closed.len(),
        "Cancelled the ballot tasks of decisions that ended before the crash."
    );
    Ok(unfinished
        .into_iter()
        .filter(|row| closed.binary_search(&row.id).is_err())
        .collect())
}

/// The decisions a journal held open at start, with a waiter for each ballot task still
/// unfinished: handed to [`Handle::requeue`] with the tasks, then to [`Recovered::resume`].
#[derive(Default)]
pub(crate) struct Recovered {
    open: Vec<colony_journal::DecisionRow>,
    /// Unfinished ballot tasks: their voter, and their waiter until requeued.
    ballots: HashMap<TaskId, (colony_journal::Seat, Option<oneshot::Sender<Completion>>)>,
    receivers: HashMap<TaskId, oneshot::Receiver<Completion>>,
}

impl Recovered {
    /// The open decisions of `journal`, read before its tasks are recovered.
    pub(crate) fn open(journal: &dyn colony_journal::Journal) -> Result<Self, Error> {
        Ok(Self {
            open: journal.open_decisions()?,
            ..Self::default()
        })
    }

    /// Notes which of the `unfinished` tasks are ballots, so that they run on their voters
    /// and are waited for.
    pub(crate) fn ballots_among(&mut self, unfinished: &[colony_journal::TaskRow]) {
        if self.open.is_empty() {
            return;
        }
        // Every task each decision asked, with the agent it was asked of.
        let seats: HashMap<TaskId, colony_journal::Seat> =
            self.open.iter().flat_map(|d| d.tasks()).collect();
        for row in unfinished {
            if let Some(seat) = seats.get(&row.id) {
                let (tx, rx) = oneshot::channel();
                self.ballots.insert(row.id, (*seat, Some(tx)));
                self.receivers.insert(row.id, rx);
            }
        }
    }

    /// For [`Handle::requeue`]: a ballot task's voter and waiter.
    pub(crate) fn ballot(
        &mut self,
        task: TaskId,
    ) -> Option<(colony_journal::Seat, oneshot::Sender<Completion>)> {
        let (seat, waiter) = self.ballots.get_mut(&task)?;
        Some((*seat, waiter.take()?))
    }

    /// Takes every open decision up again, each counted to its end in the background (its
    /// outcome journaled and published as any decision's). Returns how many.
    pub(crate) fn resume(mut self, handle: &Handle) -> usize {
        let n = self.open.len();
        for row in std::mem::take(&mut self.open) {
            let id = row.id;
            match self.voting(handle, row) {
                Ok(voting) => {
                    crate::spawner::Spawner::spawn("decision-recovered", async move {
                        if let Err(error) = voting.outcome().await {
                            tracing::error!(decision = %id, %error, "A recovered decision could not be taken.");
                        }
                    });
                }
                Err(error) => {
                    tracing::error!(decision = %id, %error, "A recovered decision could not be read; it stays open in the journal.");
                }
            }
        }
        n
    }

    /// Decision `row` as it stood: its opening and each later call replayed in the order
    /// they were asked, the ballots the journal holds as ended cast, the others awaited.
    fn voting(
        &mut self,
        handle: &Handle,
        row: colony_journal::DecisionRow,
    ) -> Result<Voting, Error> {
        let options: DecisionOptions = serde_json::from_str(&row.opening.options).map_err(|e| {
            Error::Decision(format!(
                "its options {} do not read: {e}",
                row.opening.options
            ))
        })?;
        let decision = Decision::new(options, &participants(&row.opening.seats))
            .map_err(|e| Error::Decision(e.to_string()))?;
        let spec = match handle.journal().task(row.id)? {
            Some(first) => first.spec,
            None => {
                return Err(Error::Decision(
                    "its first ballot task is not in the journal".into(),
                ));
            }
        };
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(row.opening.opened_at_ms));
        let leader = decision.options().protocol == Protocol::Leader;
        let mut voting = Voting::new(
            handle.clone(),
            row.id,
            decision,
            spec,
            row.opening.seats,
            elapsed,
        );
        let opening = colony_journal::Call {
            round: 0,
            role: if leader {
                colony_journal::Role::Proposal
            } else {
                colony_journal::Role::Ballot
            },
            asked: voting.seats[..(row.opening.asked as usize).min(voting.seats.len())].to_vec(),
            at_ms: row.opening.opened_at_ms,
        };
        let mut progress = Progress::Pending;
        for (first, call) in std::iter::once((row.id, opening)).chain(row.calls) {
            progress = self.replay(&mut voting, progress, first, call, elapsed)?;
        }
        if !matches!(progress, Progress::Pending) {
            voting.carry = Some(progress);
        }
        Ok(voting)
    }

    /// Replays one call of a recovered decision, `progress` being what the engine answered
    /// last. Returns what it answers now.
    fn replay(
        &mut self,
        voting: &mut Voting,
        mut progress: Progress,
        first: TaskId,
        call: colony_journal::Call,
        elapsed: Duration,
    ) -> Result<Progress, Error> {
        // Ballots the journal holds as ended count as cast by now, or just before their
        // round's deadline if that passed while colony was down.
        let cast_at = |decision: &Decision| match decision.deadline() {
            Some(d) => elapsed.min(d.saturating_sub(Duration::from_micros(1))),
            None => elapsed,
        };
        let mismatch = |what: &str| {
            Error::Decision(format!(
                "the journal holds {what} (round {}) that the decision, counted again, did not ask for",
                call.round
            ))
        };
        let journal = voting.handle.journal().clone();
        if call.role == colony_journal::Role::Judge {
            if !matches!(progress, Progress::NeedsJudge { .. }) {
                progress = voting.decision.close(cast_at(&voting.decision));
            }
            let Progress::NeedsJudge { candidates } = progress else {
                return Err(mismatch("a judge's call"));
            };
            voting.candidates = candidates;
            let seat = call
                .asked
                .first()
                .ok_or_else(|| mismatch("an empty judge's call"))?;
            voting.judge = Some(Voter::new(seat));
            if let Some(rx) = self.receivers.remove(&first) {
                voting.await_ballot(Asked::Judge, crate::Pending { id: first, rx });
                return Ok(Progress::Pending);
            }
            if let Some(judge) = &mut voting.judge {
                judge.task = Some(first);
            }
            voting.asked += 1;
            return match journal.task(first)? {
                Some(ended) if ended.state.is_terminal() => {
                    let choice = voting.choice(Completion::recovered(ended));
                    let at = cast_at(&voting.decision);
                    Ok(voting
                        .decision
                        .judge(choice, at)
                        .unwrap_or(Progress::Pending))
                }
                _ => Ok(Progress::Pending),
            };
        }
        // This call is what the engine asked for when it opened the round.
        if matches!(progress, Progress::NextRound { round, .. } if round == call.round) {
            progress = Progress::Pending;
        }
        if call.round > voting.decision.round() {
            if !matches!(progress, Progress::NextRound { .. }) {
                // The round was closed before the crash: it closes again the same way.
                let _closed = voting.decision.close(cast_at(&voting.decision));
            }
            if voting.decision.round() != call.round {
                return Err(mismatch("a later round's call"));
            }
            progress = Progress::Pending;
        }
        if call.role == colony_journal::Role::Review {
            voting.reviewed = Some(call.round);
        }
        for (i, asked) in call.asked.iter().enumerate() {
            let task = TaskId(first.0 + i as u64);
            let seat = voting
                .voters
                .iter()
                .position(|v| v.agent == asked.agent)
                .ok_or_else(|| mismatch("a ballot of an agent not seated"))?;
            if let Some(rx) = self.receivers.remove(&task) {
                let pending = crate::Pending { id: task, rx };
                voting.await_ballot(
                    Asked::Seat {
                        seat,
                        round: call.round,
                    },
                    pending,
                );
                continue;
            }
            voting.asked += 1;
            let voter = &mut voting.voters[seat];
            voter.task = Some(task);
            voter.state = None;
            voter.problem = None;
            let ended = match journal.task(task)? {
                Some(ended) if ended.state.is_terminal() => ended,
                // Unfinished, yet not recovered: nothing will run it.
                _ => {
                    voter.problem = Some("its ballot task was not recovered after a crash".into());
                    continue;
                }
            };
            let completion = Completion::recovered(ended);
            if voting.decision.outcome().is_some() || !matches!(progress, Progress::Pending) {
                // Decided by the ballots before it: this one came too late to count.
                voter.state = Some(completion.state);
                voter.problem = Some("its ballot task ended after its round did".into());
            } else {
                let at = cast_at(&voting.decision);
                progress = voting.count(seat, call.round, completion, at);
            }
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests;
