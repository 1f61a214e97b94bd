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
//! A ballot's vote is its task's output, as text. An output that is a JSON object with a
//! `vote` field votes for that field (a string as is, anything else as its JSON text), with
//! the object's `confidence` (a number) as its confidence: the `confidence` protocol needs
//! it.
//!
//! Not run here yet: the `fast` and `leader` protocols (they take more than one round of
//! tasks) and a `judge` tie-break; a decision is not recovered after a crash of colony (its
//! ballot tasks are, as ordinary tasks, but nothing counts them again).

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
use std::{future::Future, pin::Pin, sync::Arc};
use tokio::time::Instant;

/// What to decide by: how many voters, the protocol and its options, and the voters' weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Vote {
    /// Distinct workers asked, each once.
    pub voters: u32,
    pub options: DecisionOptions,
    /// Under `weighted` and `confidence`, the weight of each pool's voters, by pool index;
    /// pools not listed weigh 1.
    pub pool_weights: Vec<f64>,
}

impl Vote {
    /// `voters` voters deciding by `options`, each weighing 1.
    pub fn new(voters: u32, options: DecisionOptions) -> Self {
        Self {
            voters,
            options,
            pool_weights: Vec::new(),
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
    /// Decided, with the winner, or failed with its reason; every ballot counted either way.
    pub outcome: Outcome,
    /// Every voter seated, in the order they were asked.
    pub voters: Vec<Voter>,
}

type BallotFuture = Pin<Box<dyn Future<Output = (usize, Result<Completion, Error>)> + Send>>;

/// A decision under way: its voters are seated and their ballot tasks accepted.
pub struct Voting {
    handle: Handle,
    decision: Decision,
    voters: Vec<Voter>,
    pending: FuturesUnordered<BallotFuture>,
    started: Instant,
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
    /// The voters seated, in the order asked, with their ballot tasks.
    pub fn voters(&self) -> &[Voter] {
        &self.voters
    }

    /// Counts the ballots as their tasks end, until the engine has an outcome: decided, or
    /// failed (at the deadline at the latest). The ballot tasks still out are then cancelled,
    /// as they are if the vote is dropped before it ends.
    pub async fn outcome(mut self) -> Result<Decided, Error> {
        let outcome = loop {
            let deadline = match self.decision.deadline() {
                Some(d) => self.started + d,
                None => match self.decision.outcome() {
                    Some(o) => break o.clone(),
                    None => return Err(Error::Decision("the decision stopped undecided".into())),
                },
            };
            let progress = tokio::select! {
                Some((i, ended)) = self.pending.next(), if !self.pending.is_empty() => {
                    let now = self.started.elapsed();
                    let progress = self.count(i, ended?, now);
                    match progress {
                        Progress::Pending if self.pending.is_empty() => self.decision.close(now),
                        other => other,
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.decision.expire(self.started.elapsed())
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
        self.report(&outcome);
        // Ballots that ended meanwhile need no cancelling; they came too late to count.
        while let Some(Some((i, Ok(ended)))) = self.pending.next().now_or_never() {
            let voter = &mut self.voters[i];
            voter.state = Some(ended.state);
            voter.problem = Some("its ballot task ended after the vote did".into());
        }
        self.cancel_the_rest();
        Ok(Decided {
            outcome,
            voters: std::mem::take(&mut self.voters),
        })
    }

    /// Cancels the ballot tasks still out, without waiting: a ballot that ends first ends
    /// as it does.
    fn cancel_the_rest(&self) {
        for voter in &self.voters {
            if voter.state.is_none() {
                self.handle.cancel_soon(voter.task);
            }
        }
    }

    /// Tells the event stream and the metrics how the decision ended.
    fn report(&self, outcome: &Outcome) {
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
                first_ballot: self.voters[0].task,
                protocol: record.protocol,
                voters: self.voters.len() as u32,
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
    if text.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text)
        && let Some(vote) = object.get("vote")
    {
        let vote = match vote {
            serde_json::Value::String(s) => s.clone(),
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
    Ok(Ballot::output(voter, text))
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
            let seats = self.inspect(move |tree| seat(tree, mask, n)).await?;
            if seats.len() < n {
                return Err(Error::Decision(format!(
                    "{n} voters asked, but {} workers can run the task",
                    seats.len()
                )));
            }
            let participants: Vec<Participant> = seats
                .iter()
                .map(|&(agent, pool)| {
                    let weight = vote.pool_weights.get(pool as usize).copied();
                    Participant::weighted(agent, weight.unwrap_or(1.0))
                })
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
        let masks = seats.iter().map(|&(_, pool)| SpecMask::of(pool)).collect();
        let (_, completions) = self
            .accept_tracked(specs, masks, |_| true, |i| Some(seats[i].0))
            .await?;
        let started = Instant::now();
        let voters = seats
            .iter()
            .zip(&completions)
            .map(|(&(agent, pool), pending)| Voter {
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
            decision,
            voters,
            pending,
            started,
        })
    }
}

#[cfg(test)]
mod tests;
