//! A task's `decide:` block: checked into the runtime's [`Vote`], every problem at its line
//! and column; and, when the task runs, the decision asked of the runtime and its outcome
//! turned into the task's end: the winner's output, or a failure naming the reason.

use crate::{
    Backend, Checks, PoolDef,
    check::{ParseDuration, Problem, suggest},
    file,
};
use bytes::Bytes;
use colony_core::{
    decision::{
        DecisionOptions, Error as OptionsError, MAX_PARTICIPANTS, MAX_WEIGHT, Protocol, Tie,
    },
    task::{Requirement, TaskSpec},
};
use colony_runtime::{
    Handle,
    decision::{Decided, Vote},
};
use serde_saphyr::Spanned;
use std::{collections::HashMap, sync::Arc, time::Duration};

/// What a task's `decide:` block is checked against.
pub(crate) struct Voting<'a> {
    pub(crate) task: &'a file::Task,
    pub(crate) requirement: &'a Requirement,
    pub(crate) pools: &'a [PoolDef],
    pub(crate) pool_index: &'a HashMap<&'a str, usize>,
    /// The task's timeout, which is the vote's unless the block says otherwise.
    pub(crate) timeout: Duration,
    /// The file's pools are the agents that vote (not across a cluster, whose nodes host
    /// their own): more voters than they have is refused.
    pub(crate) agents_here: bool,
}

impl Voting<'_> {
    /// The vote `d` asks for, or `None` with every problem recorded.
    pub(crate) fn vote(
        &self,
        d: &Spanned<file::Decide>,
        problems: &mut Vec<Problem>,
        duration: &ParseDuration,
    ) -> Option<Vote> {
        let before = problems.len();
        let block = &d.value;
        let voters = self.voters(block, problems);
        let options = self.options(block, problems, duration);
        let pool_weights = self.weights(block, options.protocol, problems);
        let reputation = self.reputation(block, options.protocol, problems);
        self.spread(block, problems);
        self.runnable(d, problems);
        if problems.len() > before {
            return None;
        }
        Some(Vote {
            voters,
            options,
            pool_weights,
            reputation,
        })
    }

    /// `spread`: a cluster run's, whose nodes' agents vote; a run on one runtime has its
    /// own agents only.
    fn spread(&self, block: &file::Decide, problems: &mut Vec<Problem>) {
        if let Some(spread) = &block.spread
            && spread.value
            && self.agents_here
        {
            problems.push(Problem::at(
                spread,
                format!(
                    "task `{}`: decide spread spreads the voters over a cluster's nodes, and this run has one runtime: run it with colony run --nats, or remove it",
                    self.id()
                ),
                "spread without a cluster",
            ));
        }
    }

    /// `reputation`: only under `weighted` and `confidence`, which count weights.
    fn reputation(
        &self,
        block: &file::Decide,
        protocol: Protocol,
        problems: &mut Vec<Problem>,
    ) -> bool {
        let Some(reputation) = &block.reputation else {
            return false;
        };
        if reputation.value && !matches!(protocol, Protocol::Weighted | Protocol::Confidence) {
            problems.push(Problem::at(
                reputation,
                format!(
                    "task `{}`: decide reputation weighs voters only under protocol weighted or confidence, and this one is {protocol}: remove it or change the protocol",
                    self.id()
                ),
                "not counted",
            ));
        }
        reputation.value
    }

    fn id(&self) -> &str {
        &self.task.id.value
    }

    /// The pools that can run the task, by index.
    fn able(&self) -> impl Iterator<Item = (usize, &PoolDef)> {
        self.pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.spec.satisfies(self.requirement))
    }

    /// `voters`, within 1..=MAX_PARTICIPANTS and, when the pools' sizes are known, at most
    /// their agents: each voter is a distinct agent.
    fn voters(&self, block: &file::Decide, problems: &mut Vec<Problem>) -> u32 {
        let v = &block.voters;
        if v.value == 0 || v.value as usize > MAX_PARTICIPANTS {
            problems.push(Problem::at(
                v,
                format!(
                    "task `{}`: decide voters {} is out of range: allowed 1..={MAX_PARTICIPANTS}",
                    self.id(),
                    v.value
                ),
                "out of range",
            ));
            return v.value;
        }
        // An autoscaled pool may grow to its `max`: only more than that is sure to fail.
        let (mut most, mut scaled) = (0u64, false);
        let mut names = Vec::new();
        for (_, p) in self.able() {
            most += u64::from(p.scaling.map_or(p.count, |s| s.max));
            scaled |= p.scaling.is_some();
            names.push(format!("`{}`", p.name));
        }
        // No pool can run the task: reported as such already.
        if self.agents_here && !names.is_empty() && u64::from(v.value) > most {
            let size = if scaled {
                format!("at most {most} agents (scaled up to their max)")
            } else {
                format!("{most} agents")
            };
            problems.push(Problem::at(
                v,
                format!(
                    "task `{}` asks for {} voters, but the pools that can run it ({}) have {size}: each voter is a distinct agent",
                    self.id(),
                    v.value,
                    names.join(", ")
                ),
                "more voters than agents",
            ));
        }
        v.value
    }

    /// The decision's options: the defaults, what the block writes, and the task's timeout
    /// unless it writes one; every value out of range reported at its key.
    fn options(
        &self,
        block: &file::Decide,
        problems: &mut Vec<Problem>,
        duration: &ParseDuration,
    ) -> DecisionOptions {
        let mut o = DecisionOptions::default();
        if let Some(p) = &block.protocol {
            o.protocol = p.value;
        }
        if let Some(t) = &block.tie {
            o.tie = t.value;
        }
        let number =
            |v: &Option<Spanned<f64>>, default: f64| v.as_ref().map_or(default, |v| v.value);
        o.threshold = number(&block.threshold, o.threshold);
        o.participation = number(&block.participation, o.participation);
        o.similarity = number(&block.similarity, o.similarity);
        o.fast_quorum = number(&block.fast_quorum, o.fast_quorum);
        if let Some(n) = &block.normalise {
            o.normalise = n.value;
        }
        o.faults = block.faults.as_ref().map(|f| f.value);
        if let Some(m) = &block.max_rounds {
            o.max_rounds = m.value;
        }
        o.timeout = match &block.timeout {
            Some(t) => duration(t, problems).unwrap_or(o.timeout),
            None => self.timeout.min(colony_core::decision::MAX_TIMEOUT),
        };
        if let Some(t) = &block.judge_timeout {
            o.judge_timeout = duration(t, problems).unwrap_or(o.judge_timeout);
        }
        self.check_options(block, &mut o, problems);
        o
    }

    /// Reports every value `o.validate()` refuses, at its key: each refused value is reported
    /// and put back to its default, and the rest checked again.
    fn check_options(
        &self,
        block: &file::Decide,
        o: &mut DecisionOptions,
        problems: &mut Vec<Problem>,
    ) {
        let defaults = DecisionOptions::default();
        // One round per field at most: each round puts one field back.
        for _ in 0..12 {
            let Err(e) = o.validate() else { break };
            let at = match &e {
                OptionsError::Range { field, .. } => {
                    let (v, default) = match *field {
                        "threshold" => (&block.threshold, &mut o.threshold),
                        "participation" => (&block.participation, &mut o.participation),
                        "similarity" => (&block.similarity, &mut o.similarity),
                        _ => (&block.fast_quorum, &mut o.fast_quorum),
                    };
                    *default = match *field {
                        "threshold" => defaults.threshold,
                        "participation" => defaults.participation,
                        "similarity" => defaults.similarity,
                        _ => defaults.fast_quorum,
                    };
                    v.as_ref().map(|v| v.referenced)
                }
                OptionsError::Wait { field, .. } if *field == "judge-timeout" => {
                    o.judge_timeout = defaults.judge_timeout;
                    block.judge_timeout.as_ref().map(|v| v.referenced)
                }
                OptionsError::Wait { .. } => {
                    o.timeout = defaults.timeout;
                    block.timeout.as_ref().map(|v| v.referenced)
                }
                OptionsError::MaxRounds { .. } => {
                    o.max_rounds = defaults.max_rounds;
                    block.max_rounds.as_ref().map(|v| v.referenced)
                }
                OptionsError::BftTie { .. } => {
                    o.tie = Tie::Fail;
                    block.tie.as_ref().map(|v| v.referenced)
                }
                // Not refused by `validate`; stop rather than loop.
                _ => None,
            };
            let message = format!("task `{}`: {e}", self.id());
            problems.push(Problem {
                message,
                at: at.and_then(crate::check::known),
                label: "out of range".into(),
            });
            if at.is_none() {
                break;
            }
        }
        if o.protocol == Protocol::Bft
            && let Some(f) = &block.faults
        {
            let n = block.voters.value;
            if u64::from(n) < 3 * u64::from(f.value) + 1 {
                problems.push(Problem::at(
                    f,
                    format!(
                        "task `{}`: decide faults {} needs at least {} voters (bft needs n >= 3f+1), and {n} are asked: add voters or lower faults",
                        self.id(),
                        f.value,
                        3 * u64::from(f.value) + 1
                    ),
                    "too many faults",
                ));
            }
        }
        if o.protocol == Protocol::Leader
            && block.voters.value < 2
            && let Some(p) = &block.protocol
        {
            problems.push(Problem::at(
                p,
                format!(
                    "task `{}`: decide protocol `leader` needs 2 voters or more (a proposer and a reviewer), and {} is asked",
                    self.id(),
                    block.voters.value
                ),
                "too few voters",
            ));
        }
    }

    /// Each pool's weight by index (1 for those not named), from `weights`: only under
    /// `weighted` and `confidence`, which count them, with known pools that can run the task
    /// and weights in 0..=MAX_WEIGHT, not all 0.
    fn weights(
        &self,
        block: &file::Decide,
        protocol: Protocol,
        problems: &mut Vec<Problem>,
    ) -> Vec<f64> {
        let Some(weights) = &block.weights else {
            return Vec::new();
        };
        let id = self.id();
        if !matches!(protocol, Protocol::Weighted | Protocol::Confidence) {
            problems.push(Problem::at(
                weights,
                format!(
                    "task `{id}`: decide weights count only under protocol weighted or confidence, and this one is {protocol}: remove them or change the protocol"
                ),
                "not counted",
            ));
        }
        let mut by_pool = vec![1.0; self.pools.len()];
        let mut named = vec![false; self.pools.len()];
        for (name, w) in &weights.value.0 {
            let Some(&i) = self.pool_index.get(name.value.as_str()) else {
                problems.push(Problem::at(
                    name,
                    format!(
                        "task `{id}`: decide weights name pool `{}`, which this workflow does not define{}",
                        name.value,
                        suggest(&name.value, self.pool_index.keys().copied())
                    ),
                    "unknown pool",
                ));
                continue;
            };
            if std::mem::replace(&mut named[i], true) {
                problems.push(Problem::at(
                    name,
                    format!(
                        "task `{id}`: decide weights name pool `{}` twice",
                        name.value
                    ),
                    "twice",
                ));
            }
            if !self.pools[i].spec.satisfies(self.requirement) {
                problems.push(Problem::at(
                    name,
                    format!(
                        "task `{id}`: decide weights name pool `{}`, which cannot run the task: its agents never vote",
                        name.value
                    ),
                    "never votes",
                ));
            }
            if !(0.0..=MAX_WEIGHT).contains(&w.value) {
                problems.push(Problem::at(
                    w,
                    format!(
                        "task `{id}`: decide weight {} of pool `{}` is out of range: allowed 0 up to {MAX_WEIGHT}",
                        w.value, name.value
                    ),
                    "out of range",
                ));
                continue;
            }
            by_pool[i] = w.value;
        }
        let mut able = self.able().peekable();
        if able.peek().is_some() && able.all(|(i, _)| by_pool[i] == 0.0) {
            problems.push(Problem::at(
                weights,
                format!(
                    "task `{id}`: decide weights give every pool that can run the task weight 0: no ballot could count"
                ),
                "all zero",
            ));
        }
        by_pool
    }

    /// What a decision cannot run with: voters sharing one worktree, or a `git-diff` check,
    /// which no one voter's attempt answers for.
    fn runnable(&self, d: &Spanned<file::Decide>, problems: &mut Vec<Problem>) {
        let id = self.id();
        for (_, p) in self.able() {
            if let Backend::Command(o) = &p.backend
                && o.worktree.is_some()
            {
                problems.push(Problem::at(
                    d,
                    format!(
                        "task `{id}` is decided by vote, and pool `{}`, which can run it, gives each task a git worktree named after it: its voters would share one; use a pool without `worktree: true`",
                        p.name
                    ),
                    "shared worktree",
                ));
            }
        }
        if self.task.expect.as_ref().is_some_and(|e| e.git_diff) {
            problems.push(Problem::at(
                d,
                format!(
                    "task `{id}` is decided by vote and expects a git-diff: the winner's output is no one attempt's, so no change can be credited to it; remove one"
                ),
                "git-diff and a vote",
            ));
        }
    }
}

/// How a decision task ended, for the run to record.
#[derive(Debug)]
pub(crate) struct Ended {
    /// The winner's output, checked against the task's `expect`, or why there is none.
    pub(crate) result: Result<Bytes, String>,
    /// The decision, when it ran to an outcome.
    pub(crate) decided: Option<Arc<Decided>>,
    /// Ballot tasks asked.
    pub(crate) ballots: u32,
    /// The agent whose output is the winner's.
    pub(crate) agent: Option<colony_core::AgentId>,
}

/// Runs a decision for `spec` and checks its winner against `checks`. Awaited on a tokio
/// worker: every wait is the runtime's, and a `files` check reads the disk on the blocking
/// pool.
pub(crate) async fn run(handle: Handle, spec: TaskSpec, vote: Vote, mut checks: Checks) -> Ended {
    let ballots = vote.voters;
    let refused = |why: String| Ended {
        result: Err(why),
        decided: None,
        ballots: 0,
        agent: None,
    };
    let started = std::time::SystemTime::now();
    let voting = match handle.decide(spec, vote).await {
        Ok(voting) => voting,
        Err(e) => return refused(format!("the decision could not start: {e}")),
    };
    let decided = match voting.outcome().await {
        Ok(decided) => Arc::new(decided),
        Err(e) => {
            return Ended {
                ballots,
                ..refused(format!("the decision stopped without an outcome: {e}"))
            };
        }
    };
    let Some(winner) = decided.outcome.winner() else {
        let failure = decided.failure().unwrap_or_default();
        return Ended {
            result: Err(format!(
                "the decision failed: {failure}; the ballots are in its result file"
            )),
            ballots: decided.asked,
            decided: Some(decided),
            agent: None,
        };
    };
    // The representative is the output of the earliest voter, in the order seated, that
    // voted for the winner.
    let agent = decided.winner_agent();
    let output = Bytes::from(winner.representative.to_string());
    let result = if checks.is_empty() {
        Ok(output)
    } else {
        checks.started = Some(started);
        crate::run::verify_awaited(output, checks)
            .await
            .map_err(|e| format!("the decision's winner failed its checks: {e}"))
    };
    Ended {
        result,
        ballots: decided.asked,
        decided: Some(decided),
        agent,
    }
}

/// Bytes a decision may hold while it runs: each ballot's vote, up to the engine's limit
/// of an output. Charged against the run's in-flight budget, as payloads are.
pub(crate) fn held(vote: &Vote) -> usize {
    (vote.voters as usize).saturating_mul(colony_core::decision::MAX_OUTPUT_BYTES)
}

/// About how many bytes `decided` takes written out: its values and a line per ballot and
/// voter. For the result writer's and the summary's budgets, without serializing it.
pub(crate) fn size(decided: &Decided) -> usize {
    let record = decided.outcome.record();
    let ballots: usize = record
        .ballots
        .iter()
        .map(|b| match &b.ballot.vote {
            colony_core::decision::Vote::Output(v) => v.len() + 200,
            _ => 200,
        })
        .sum();
    let candidates: usize = record
        .candidates
        .iter()
        .map(|c| c.value.len() + c.representative.len() + 100)
        .sum();
    let voters: usize = decided
        .voters
        .iter()
        .map(|v| 150 + v.problem.as_deref().map_or(0, str::len))
        .sum();
    let winner = decided.outcome.winner().map_or(0, |w| {
        w.value.len() + w.representative.len() + 20 * (w.voters.len() + w.dissenters.len())
    });
    ballots + candidates + voters + winner
}
