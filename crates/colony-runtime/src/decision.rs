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
//! Not run here yet: the `fast` and `leader` protocols (they take more than one round of
//! tasks) and a `judge` tie-break.

use crate::{Completion, Error, Handle};
use bytes::Bytes;
use colony_core::{
    AgentId, TaskId,
    decision::{
        self, Ballot, Decision, DecisionOptions, MAX_PARTICIPANTS, Outcome, Participant, Progress,
        Protocol, Tie,
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
    fn validate(&self) -> Result<(), Error> {
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
        if matches!(self.options.protocol, Protocol::Fast | Protocol::Leader) {
            return invalid(format!(
                "protocol {} takes more than one round of tasks, which the runtime does not run \
                 yet: use majority, weighted, confidence, similarity or bft",
                self.options.protocol
            ));
        }
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
        if self.options.tie == Tie::Judge {
            return invalid(
                "tie: judge asks a judge agent, which the runtime does not run yet: use fail or first"
                    .into(),
            );
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
    let mut found: Vec<(u8, u64, AgentId)> = Vec::new();
    let (mut with_room, mut in_service) = (0, 0);
    let mut stack: Vec<AgentId> = tree.roots().collect();
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
    /// The ballot task asked of it.
    pub task: TaskId,
    /// How its ballot task ended; `None` if it was still out when the vote ended (it is then
    /// cancelled).
    pub state: Option<TaskState>,
    /// Why its ballot did not count: its task ended without an output (the task's error),
    /// or the engine refused what it sent.
    pub problem: Option<Arc<str>>,
}

/// A decision run to its end.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Decided {
    /// The decision's id: its first ballot task's.
    pub id: TaskId,
    /// Decided, with the winner, or failed with its reason; every ballot counted either way.
    pub outcome: Outcome,
    /// Every voter seated, in the order they were asked.
    pub voters: Vec<Voter>,
}

type BallotFuture = Pin<Box<dyn Future<Output = (usize, Result<Completion, Error>)> + Send>>;

/// A decision under way: its voters are seated and their ballot tasks accepted.
pub struct Voting {
    handle: Handle,
    /// The decision's id: its first ballot task's.
    id: TaskId,
    decision: Decision,
    voters: Vec<Voter>,
    pending: FuturesUnordered<BallotFuture>,
    /// When this process took the decision up, and how far into the decision that was: 0 but
    /// for a decision recovered after a crash.
    started: Instant,
    offset: Duration,
}

impl std::fmt::Debug for Voting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voting")
            .field("voters", &self.voters)
            .field("out", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Voting {
    fn drop(&mut self) {
        self.cancel_the_rest();
    }
}

impl Voting {
    /// The decision's id: its first ballot task's.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The voters seated, in the order asked, with their ballot tasks.
    pub fn voters(&self) -> &[Voter] {
        &self.voters
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
    /// failed (at the deadline at the latest). The ballot tasks still out are then cancelled,
    /// as they are if the vote is dropped before it ends. Returns once the journal holds the
    /// outcome.
    pub async fn outcome(mut self) -> Result<Decided, Error> {
        let outcome = loop {
            // Nothing left to wait for (a decision recovered with every ballot in): it is
            // closed now.
            if self.pending.is_empty() && self.decision.outcome().is_none() {
                let now = self.now();
                if let Progress::Done(outcome) = self.decision.close(now) {
                    break outcome;
                }
            }
            let deadline = match self.decision.deadline() {
                Some(d) => self.instant(d),
                None => match self.decision.outcome() {
                    Some(o) => break o.clone(),
                    None => return Err(Error::Decision("the decision stopped undecided".into())),
                },
            };
            let progress = tokio::select! {
                Some((i, ended)) = self.pending.next(), if !self.pending.is_empty() => {
                    let now = self.now();
                    let progress = self.count(i, ended?, now);
                    match progress {
                        Progress::Pending if self.pending.is_empty() => self.decision.close(now),
                        other => other,
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.decision.expire(self.now())
                }
            };
            match progress {
                Progress::Pending => {}
                Progress::Done(outcome) => break outcome,
                // Not asked for: `fast`, `leader` and a judge are refused before a vote starts.
                Progress::NextRound { .. } | Progress::NeedsJudge { .. } => {
                    return Err(Error::Decision(
                        "the decision asked for another round or a judge, which the runtime does not run"
                            .into(),
                    ));
                }
            }
        };
        // Ballots that ended meanwhile need no cancelling; they came too late to count.
        while let Some(Some((i, Ok(ended)))) = self.pending.next().now_or_never() {
            let voter = &mut self.voters[i];
            voter.state = Some(ended.state);
            voter.problem = Some("its ballot task ended after the vote did".into());
        }
        self.cancel_the_rest();
        let decided = Decided {
            id: self.id,
            outcome,
            voters: std::mem::take(&mut self.voters),
        };
        let record = serde_json::to_string(&decided)
            .map_err(|e| Error::Decision(format!("the outcome could not be written: {e}")))?;
        self.handle
            .journal()
            .close_decision(self.id, record.into())
            .await?;
        self.report(&decided);
        Ok(decided)
    }

    /// Cancels the ballot tasks still out, without waiting: a ballot that ends first ends
    /// as it does.
    fn cancel_the_rest(&mut self) {
        // Their waiters go with them: nothing is left to count.
        self.pending = FuturesUnordered::new();
        for voter in &self.voters {
            if voter.state.is_none() {
                self.handle.cancel_soon(voter.task);
            }
        }
    }

    /// Tells the event stream and the metrics how the decision ended, and the voters'
    /// reputations who agreed with a decided outcome.
    fn report(&self, decided: &Decided) {
        let outcome = &decided.outcome;
        if let Some(winner) = outcome.winner() {
            let agreed = winner.voters.iter().map(|&v| (v, true));
            let dissented = winner.dissenters.iter().map(|&v| (v, false));
            self.handle.agreed(agreed.chain(dissented).collect());
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
        crate::metrics::Metrics::decision(
            protocol,
            result,
            record.at,
            record.participation,
            dissent,
        );
        self.handle.publish(
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

    /// Voter `i`'s ballot task ended: its output is cast, else the voter is silent.
    fn count(&mut self, i: usize, ended: Completion, now: std::time::Duration) -> Progress {
        let voter = &mut self.voters[i];
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
        let ballot = match ballot(voter.agent, &output) {
            Ok(ballot) => ballot,
            Err(problem) => {
                voter.problem = Some(problem.into());
                return Progress::Pending;
            }
        };
        match self.decision.cast(ballot, now) {
            Ok(progress) => progress,
            Err(refused) => {
                voter.problem = Some(refused.to_string().into());
                Progress::Pending
            }
        }
    }
}

/// The ballot an output casts (see the module docs).
fn ballot(voter: AgentId, output: &Bytes) -> Result<Ballot, String> {
    let text = std::str::from_utf8(output)
        .map_err(|e| format!("its output is not UTF-8 text ({e}), so it cannot be a vote"))?;
    ballot_of(voter, text, true)
}

/// The ballot `text` casts; an `http` answer's content is read once more (`envelope`).
fn ballot_of(voter: AgentId, text: &str, envelope: bool) -> Result<Ballot, String> {
    use serde_json::Value;
    let json = match text.trim_start().as_bytes().first() {
        Some(b'{' | b'"') => serde_json::from_str::<Value>(text).ok(),
        _ => None,
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
                Some(Value::String(content)) if envelope => ballot_of(voter, content, false),
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
        let specs = vec![spec; n];
        let mask = self.admit(&specs)?[0];
        // Room first, then seats: seated voters must not leave while the ballots wait for it.
        self.wait_for_room(n).await?;
        let seated = async {
            // Each with its reputation, read in the same turn as the seats.
            let seats = self
                .observe(move |live| {
                    seat(live.tree, mask, n)
                        .into_iter()
                        .map(|(agent, pool)| (agent, pool, live.reputation(agent).score()))
                        .collect::<Vec<_>>()
                })
                .await?;
            if seats.len() < n {
                return Err(Error::Decision(format!(
                    "{n} voters asked, but {} workers can run the task",
                    seats.len()
                )));
            }
            // Each voter's weight: its pool's, times its reputation when asked for.
            let seats: Vec<(AgentId, u8, f64)> = seats
                .into_iter()
                .map(|(agent, pool, reputation)| {
                    let weight = vote.pool_weights.get(pool as usize).copied();
                    let weight = weight.unwrap_or(1.0);
                    let weight = if vote.reputation {
                        weight * reputation
                    } else {
                        weight
                    };
                    (agent, pool, weight)
                })
                .collect();
            let participants: Vec<Participant> = seats
                .iter()
                .map(|&(agent, _, weight)| Participant::weighted(agent, weight))
                .collect();
            let decision = Decision::new(vote.options, &participants)
                .map_err(|e| Error::Decision(e.to_string()))?;
            Ok((seats, decision))
        }
        .await;
        let (seats, decision) = match seated {
            Ok(seated) => seated,
            Err(e) => {
                self.give_back_room(n);
                return Err(e);
            }
        };
        // Each ballot may run only in its voter's pool: that is the demand it makes.
        let masks = seats
            .iter()
            .map(|&(_, pool, _)| SpecMask::of(pool))
            .collect();
        let opening = colony_journal::Opening {
            options: serde_json::to_string(&vote.options)
                .map_err(|e| Error::Decision(format!("the options could not be written: {e}")))?
                .into(),
            seats: seats
                .iter()
                .map(|&(agent, pool, weight)| colony_journal::Seat {
                    agent,
                    pool,
                    weight,
                })
                .collect(),
            opened_at_ms: unix_ms(),
        };
        let (accepted, completions) = self
            .accept_tracked(specs, masks, |_| true, |i| Some(seats[i].0), Some(opening))
            .await?;
        let started = Instant::now();
        let voters = seats
            .iter()
            .zip(&completions)
            .map(|(&(agent, pool, _), pending)| Voter {
                agent,
                pool,
                task: pending.id,
                state: None,
                problem: None,
            })
            .collect();
        let pending = completions
            .into_iter()
            .enumerate()
            .map(|(i, pending)| -> BallotFuture { Box::pin(async move { (i, pending.await) }) })
            .collect();
        Ok(Voting {
            handle: self.clone(),
            id: accepted.first,
            decision,
            voters,
            pending,
            started,
            offset: Duration::ZERO,
        })
    }
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
        let seats: HashMap<TaskId, colony_journal::Seat> = self
            .open
            .iter()
            .flat_map(|d| {
                d.opening
                    .seats
                    .iter()
                    .enumerate()
                    .map(|(i, seat)| (TaskId(d.id.0 + i as u64), *seat))
            })
            .collect();
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

    /// Decision `row` as it stood: the ballots the journal holds as ended cast, the others
    /// awaited.
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
        let participants: Vec<Participant> = row
            .opening
            .seats
            .iter()
            .map(|s| Participant::weighted(s.agent, s.weight))
            .collect();
        let decision =
            Decision::new(options, &participants).map_err(|e| Error::Decision(e.to_string()))?;
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(row.opening.opened_at_ms));
        // Ballots the journal holds as ended count as cast by now, or just before the
        // deadline if that passed while colony was down.
        let cast_at = match decision.deadline() {
            Some(d) => elapsed.min(d.saturating_sub(Duration::from_micros(1))),
            None => elapsed,
        };
        let mut voting = Voting {
            handle: handle.clone(),
            id: row.id,
            voters: Vec::with_capacity(participants.len()),
            decision,
            pending: FuturesUnordered::new(),
            started: Instant::now(),
            offset: elapsed,
        };
        for (i, seat) in row.opening.seats.iter().enumerate() {
            let task = TaskId(row.id.0 + i as u64);
            voting.voters.push(Voter {
                agent: seat.agent,
                pool: seat.pool,
                task,
                state: None,
                problem: None,
            });
            if let Some(rx) = self.receivers.remove(&task) {
                let pending = crate::Pending { id: task, rx };
                voting
                    .pending
                    .push(Box::pin(async move { (i, pending.await) }));
                continue;
            }
            let ended = match handle.journal().task(task)? {
                Some(ended) if ended.state.is_terminal() => ended,
                // Unfinished, yet not recovered: nothing will run it.
                _ => {
                    voting.voters[i].problem =
                        Some("its ballot task was not recovered after a crash".into());
                    continue;
                }
            };
            let completion = Completion::recovered(ended);
            if voting.decision.outcome().is_some() {
                // Decided by the ballots before it: this one came too late to count.
                voting.voters[i].state = Some(completion.state);
                voting.voters[i].problem = Some("its ballot task ended after the vote did".into());
            } else {
                voting.count(i, completion, cast_at);
            }
        }
        Ok(voting)
    }
}

#[cfg(test)]
mod tests;
