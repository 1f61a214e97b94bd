//! Decisions by vote among agents, sans-IO: ballots in, a decision or "not yet" out.
//!
//! A [`Decision`] is made from [`DecisionOptions`] and its participants (agents, each with a
//! weight). The caller owns the clock: `now` is the time since the decision started. It
//! [`cast`](Decision::cast)s ballots as they arrive, arms a timer at
//! [`deadline`](Decision::deadline) and calls [`expire`](Decision::expire) when it fires.
//! Each call answers with a [`Progress`]: `Pending`, a `NextRound` to ask for (`fast`,
//! `leader`), `NeedsJudge` (a tie under the `judge` policy: run the judge, then
//! [`judge`](Decision::judge)), or `Done` with the [`Outcome`].
//!
//! An outcome is `Decided` (the winner's value and representative output, its support and
//! margin, the voters for it and the dissenters) or `Failed` with a [`Reason`]
//! (`no-quorum`, `no-agreement`, `tie`, `timeout`, `too-many-faults`, `rejected`): never a
//! success-shaped answer. Both keep the [`Record`]: every ballot in arrival order with its
//! [`Status`], every candidate of the deciding round, participation and equivocators.
//!
//! Ballots are fenced: a ballot from an agent that is not a participant, for another round,
//! or of the wrong kind is [`Refused`] and not recorded. A second ballot with the same vote is
//! refused as a duplicate; a second, different one is recorded as an equivocation and never
//! counted (under `bft` the first is withdrawn too). Outputs are compared by a normalised key
//! ([`Normalise`]: by default trimmed, with runs of whitespace made one space).
//!
//! # Protocols and their guarantees
//!
//! "Weight" is one per voter except under `weighted` and `confidence`. "More than the
//! threshold" is of the weight counted in the round; participation is of the participants'
//! weight (`weighted`, `confidence`) or number.
//!
//! - **majority** (alias `quorum`): decides `v` only if `v` has more than `threshold`
//!   (default 50 %) of the weight counted and at least `participation` (default 50 %) of the
//!   participants voted. With a threshold of at least 50 % there is never more than one
//!   winner. It decides as soon as `v` would pass whatever the ballots still out say, and
//!   otherwise when every participant voted or at the deadline; the outcome (value or
//!   reason) does not depend on the order of the ballots.
//! - **weighted**: the same, each ballot weighing its participant's weight (configured, or
//!   the agent's reputation: the caller chooses).
//! - **confidence**: the same, each ballot weighing its participant's weight ×
//!   ln(c / (1 − c)) for its confidence `c`, clamped to 0.5..=0.99: the weighting with which a
//!   weighted majority of independent voters is most often right when confidences are
//!   calibrated (Nitzan and Paroush, 1982). A voter at 0.5 or below says it is guessing and
//!   weighs nothing. Every ballot must carry a confidence.
//! - **similarity**: free-text outputs are grouped before counting: an output joins the
//!   cluster it is most like if their [similarity](similarity) reaches `similarity`
//!   (default 0.8: at 0.7, "the capital of France is Lyon" would group with "... is
//!   Paris", 5 of 7 words shared), else starts one; then as majority. Clusters are formed greedily in arrival
//!   order, so which outputs group together (not the guarantee) can depend on the order.
//! - **bft**: `n` voters of which at most `f` are faulty (`faults`, default ⌊(n − 1) / 3⌋;
//!   refused unless n ≥ 3f + 1). Decides `v` only on matching ballots from 2f + 1
//!   non-equivocating voters (more than (n + f) / 2 when n > 3f + 1), so at least f + 1
//!   honest voters chose `v`, and no two orders of the same ballots can decide different
//!   values: any two such quorums share an honest voter. With at most `f` faulty voters
//!   (lying, equivocating, silent) and every honest ballot in time, it decides what the
//!   honest voters agree on. An equivocator's ballots are excluded; more than `f` voters seen
//!   faulty (equivocating, or silent at the deadline) fail with `too-many-faults` rather than
//!   risk a wrong decision. Weights, threshold and participation are not used, and the only
//!   tie policy is `fail`: a tie-break would decide without a quorum. More than `f` voters
//!   that lie consistently cannot be told from honest ones by any count of votes.
//! - **fast**: round 0 decides `v` as soon as ⌈fast-quorum × n⌉ ballots (default 3/4 of all
//!   participants) match; once no value can get there, or at half the timeout, round 1 opens
//!   and is decided as majority by the deadline.
//! - **leader**: round `r`'s proposer is participant `r` in list order; its output is accepted
//!   when more than `threshold` of the reviews counted (the other participants) approve, with
//!   `participation` of the reviewers. A rejected, unreviewed or missing proposal passes the
//!   turn to the next proposer, for at most `max-rounds` rounds, round `r` ending by
//!   timeout × (r + 1) / rounds.
//!
//! Every protocol has a `timeout` (default 5 s). A tie (two or more candidates sharing the
//! most weight, none passing; under `leader`, as many rejections as approvals) is settled by
//! the `tie` policy: `fail` (the default), `first` (the candidate backed by the earliest
//! participant in the list; under `leader`, the proposal) or `judge` (the caller runs a judge
//! agent within `judge-timeout`). A winner chosen by a tie-break is marked so
//! ([`Winner::tie_break`]). The same ballots in the same order always give the same outcome.
//!
//! Work is bounded: at most [`MAX_PARTICIPANTS`] participants, outputs up to
//! [`MAX_OUTPUT_BYTES`], two recorded ballots per participant and round. Under exact
//! matching a ballot costs one pass over its output and one hash lookup (with up to 8
//! candidates, a comparison with each instead), and the checks after it are O(1)
//! (O(candidates) when a `bft` ballot is withdrawn); under `similarity`, at most
//! [`similarity::MAX_CLUSTERS`] bounded comparisons. Closing a round is O(ballots).
//!
//! ```
//! use colony_core::decision::{Ballot, Decision, DecisionOptions, Participant, Progress};
//! use colony_core::AgentId;
//! use std::time::Duration;
//!
//! let voters: Vec<Participant> = (0..5).map(|i| Participant::new(AgentId(i))).collect();
//! let mut vote = Decision::new(DecisionOptions::default(), &voters).unwrap();
//! let at = Duration::from_millis(10);
//! for (i, answer) in ["42", " 42", "41"].into_iter().enumerate() {
//!     assert_eq!(vote.cast(Ballot::output(AgentId(i as u32), answer), at), Ok(Progress::Pending));
//! }
//! // Three of five for "42" pass 50 % whatever the last two say.
//! let Ok(Progress::Done(outcome)) = vote.cast(Ballot::output(AgentId(3), "42"), at) else {
//!     panic!("decided")
//! };
//! let winner = outcome.winner().unwrap();
//! assert_eq!(&*winner.value, "42");
//! assert_eq!(winner.dissenters, [AgentId(2)]);
//! assert_eq!(outcome.record().participation, 0.8);
//! ```

mod engine;
pub mod similarity;
mod tally;
#[cfg(test)]
mod tests;

pub use engine::Decision;

use crate::AgentId;
use serde::{Deserialize, Serialize};
use std::{fmt, sync::Arc, time::Duration};

/// Most participants of one decision.
pub const MAX_PARTICIPANTS: usize = 100_000;
/// Longest output a ballot may carry, in bytes; a longer one is refused.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Largest weight of a participant. Weights are counted in millionths, exactly.
pub const MAX_WEIGHT: f64 = 1e6;
/// Most rounds of a `leader` decision.
pub const MAX_ROUNDS: u32 = 64;
/// Longest `timeout` and `judge-timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// How a decision counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// More than `threshold` of the voters, with `participation`.
    #[default]
    #[serde(alias = "quorum")]
    Majority,
    /// More than `threshold` of the weight of the ballots.
    Weighted,
    /// More than `threshold` of weight × calibrated confidence.
    Confidence,
    /// Majority over clusters of alike free-text outputs.
    Similarity,
    /// 2f + 1 matching ballots of n ≥ 3f + 1 voters.
    Bft,
    /// 3/4 in one round, else a second, majority round.
    Fast,
    /// A proposer's output, approved by a majority of reviewers, else the next proposer.
    Leader,
}

/// What settles a tie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tie {
    /// The decision fails with [`Reason::Tie`].
    #[default]
    Fail,
    /// The tied candidate backed by the earliest participant in the list wins (under
    /// `leader`, the proposal is accepted).
    First,
    /// A judge agent chooses: the decision answers [`Progress::NeedsJudge`].
    Judge,
}

/// What makes two outputs the same vote under the exact-match protocols (`similarity`
/// always compares [`similarity::normalise_text`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalise {
    /// Byte for byte.
    Exact,
    /// Trimmed, runs of whitespace made one space ([`similarity::normalise_space`]).
    #[default]
    Trim,
    /// Also lower case, without punctuation ([`similarity::normalise_text`]): for short
    /// answers; it would make `a+b` and `a-b` one vote.
    Text,
}

impl Protocol {
    /// Its name, as files, events and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Majority => "majority",
            Protocol::Weighted => "weighted",
            Protocol::Confidence => "confidence",
            Protocol::Similarity => "similarity",
            Protocol::Bft => "bft",
            Protocol::Fast => "fast",
            Protocol::Leader => "leader",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Tie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tie::Fail => "fail",
            Tie::First => "first",
            Tie::Judge => "judge",
        })
    }
}

/// How one decision is taken. Fields a protocol does not use are still validated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct DecisionOptions {
    pub protocol: Protocol,
    /// A winner needs more than this fraction of the weight counted; 0.5 up to below 1.0.
    /// Default 0.5. Not used by `bft` and `fast`'s round 0.
    pub threshold: f64,
    /// At least this fraction of the participants (by weight under `weighted` and
    /// `confidence`; of the reviewers under `leader`) must vote; above 0.0 up to 1.0.
    /// Default 0.5. Not used by `bft` and `fast`'s round 0.
    pub participation: f64,
    /// Time from the start by which the decision is taken or fails; more than 0 s, up to
    /// 1 day. Default 5 s.
    pub timeout: Duration,
    /// What settles a tie. Default `fail`; `bft` allows only `fail`.
    pub tie: Tie,
    /// Time a judge has to choose, from the tie; more than 0 s, up to 1 day. Default 5 s.
    pub judge_timeout: Duration,
    /// What makes two outputs the same vote under exact matching. Default `trim`.
    pub normalise: Normalise,
    /// `similarity`: how alike (0 to 1) two outputs must be to group; above 0.0 up to 1.0.
    /// Default 0.8.
    pub similarity: f64,
    /// `bft`: faulty voters tolerated, f, with n ≥ 3f + 1. Default ⌊(n − 1) / 3⌋.
    pub faults: Option<u32>,
    /// `fast`: the fraction of all participants whose matching ballots decide round 0;
    /// above 0.5 up to 1.0. Default 0.75.
    pub fast_quorum: f64,
    /// `leader`: most proposers tried, 1 up to 64 (and at most the participants). Default 3.
    pub max_rounds: u32,
}

impl Default for DecisionOptions {
    fn default() -> Self {
        Self {
            protocol: Protocol::Majority,
            threshold: 0.5,
            participation: 0.5,
            timeout: Duration::from_secs(5),
            tie: Tie::Fail,
            judge_timeout: Duration::from_secs(5),
            normalise: Normalise::Trim,
            similarity: 0.8,
            faults: None,
            fast_quorum: 0.75,
            max_rounds: 3,
        }
    }
}

impl DecisionOptions {
    /// The defaults, with `protocol`.
    pub fn with(protocol: Protocol) -> Self {
        Self {
            protocol,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        check(
            "threshold",
            self.threshold,
            (0.5, false, 1.0, true),
            "0.5 up to below 1.0",
        )?;
        check(
            "participation",
            self.participation,
            (0.0, true, 1.0, false),
            "above 0.0 and up to 1.0",
        )?;
        check(
            "similarity",
            self.similarity,
            (0.0, true, 1.0, false),
            "above 0.0 and up to 1.0",
        )?;
        check(
            "fast-quorum",
            self.fast_quorum,
            (0.5, true, 1.0, false),
            "above 0.5 and up to 1.0",
        )?;
        for (field, got) in [
            ("timeout", self.timeout),
            ("judge-timeout", self.judge_timeout),
        ] {
            if got.is_zero() || got > MAX_TIMEOUT {
                return Err(Error::Wait { field, got });
            }
        }
        if !(1..=MAX_ROUNDS).contains(&self.max_rounds) {
            return Err(Error::MaxRounds {
                got: self.max_rounds,
            });
        }
        if self.protocol == Protocol::Bft && self.tie != Tie::Fail {
            return Err(Error::BftTie { tie: self.tie });
        }
        Ok(())
    }
}

/// `got` must lie between `low` and `high`, each excluded when its flag says open; NaN never
/// does.
fn check(
    field: &'static str,
    got: f64,
    (low, low_open, high, high_open): (f64, bool, f64, bool),
    allowed: &'static str,
) -> Result<(), Error> {
    let above = if low_open { got > low } else { got >= low };
    let below = if high_open { got < high } else { got <= high };
    if above && below {
        Ok(())
    } else {
        Err(Error::Range {
            field,
            got,
            allowed,
        })
    }
}

/// Options or participants that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("decision {field} {got} is out of range: allowed {allowed}")]
    Range {
        field: &'static str,
        got: f64,
        allowed: &'static str,
    },
    #[error("decision {field} {got:?} is out of range: allowed more than 0 s and up to 1 day")]
    Wait { field: &'static str, got: Duration },
    #[error("decision max-rounds {got} is out of range: allowed 1 up to 64")]
    MaxRounds { got: u32 },
    #[error(
        "decision tie {tie} is not allowed with bft: a tie-break would decide without 2f+1 matching ballots; use fail"
    )]
    BftTie { tie: Tie },
    #[error("decision has {got} participants: allowed 1 up to 100000")]
    Participants { got: usize },
    #[error("decision participant {agent} is listed twice")]
    Twice { agent: AgentId },
    #[error(
        "decision participant {agent} weight {got} is out of range: allowed 0.0 up to 1000000.0"
    )]
    Weight { agent: AgentId, got: f64 },
    #[error("decision participants' weights add up to 0: {protocol} needs one above 0")]
    NoWeight { protocol: Protocol },
    #[error(
        "decision faults {f} is out of range: bft needs n >= 3f+1 voters, and {n} voters tolerate at most {max} faulty; add voters or lower faults"
    )]
    Faults { n: usize, f: u32, max: u32 },
    #[error("decision has {got} participant: leader needs 2 or more (a proposer and a reviewer)")]
    Leader { got: usize },
}

/// A voter and its weight (used by `weighted` and `confidence`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Participant {
    pub agent: AgentId,
    /// 0.0 up to 1,000,000, counted in millionths. Default 1.
    pub weight: f64,
}

impl Participant {
    /// `agent` with weight 1.
    pub fn new(agent: AgentId) -> Self {
        Self { agent, weight: 1.0 }
    }

    pub fn weighted(agent: AgentId, weight: f64) -> Self {
        Self { agent, weight }
    }
}

/// What a ballot says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vote {
    /// An output: the value voted for, or under `leader` the proposal.
    Output(Arc<str>),
    /// `leader`: a reviewer approves the round's proposal.
    Approve,
    /// `leader`: a reviewer rejects it.
    Reject,
}

/// One agent's vote in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ballot {
    pub voter: AgentId,
    /// 0 but for `fast`'s second round and `leader`'s later proposers.
    pub round: u32,
    pub vote: Vote,
    /// How sure the voter is, 0.0 to 1.0: required by `confidence`, recorded by the others.
    pub confidence: Option<f64>,
}

impl Ballot {
    /// A vote for `output`, in round 0, without a confidence.
    pub fn output(voter: AgentId, output: impl Into<Arc<str>>) -> Self {
        Self {
            voter,
            round: 0,
            vote: Vote::Output(output.into()),
            confidence: None,
        }
    }

    /// `leader`: a review of the round's proposal.
    pub fn review(voter: AgentId, approve: bool) -> Self {
        Self {
            voter,
            round: 0,
            vote: if approve { Vote::Approve } else { Vote::Reject },
            confidence: None,
        }
    }

    pub fn with_confidence(self, confidence: f64) -> Self {
        Self {
            confidence: Some(confidence),
            ..self
        }
    }

    pub fn in_round(self, round: u32) -> Self {
        Self { round, ..self }
    }
}

/// A ballot the decision would not record, and why. Nothing about the decision changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("{voter} is not a participant of this decision")]
    NotParticipant { voter: AgentId },
    #[error("{voter} has already voted in round {round}")]
    Duplicate { voter: AgentId, round: u32 },
    #[error("{voter} voted in round {got}, but round {open} is open")]
    WrongRound { voter: AgentId, got: u32, open: u32 },
    #[error("{voter} sent {got}, but this ballot must be {wanted}")]
    Kind {
        voter: AgentId,
        got: &'static str,
        wanted: &'static str,
    },
    #[error("{voter} reviewed round {round} before its proposal arrived")]
    NoProposal { voter: AgentId, round: u32 },
    #[error("{voter} sent confidence {got:?}: allowed 0.0 up to 1.0, and required by confidence")]
    Confidence { voter: AgentId, got: Option<f64> },
    #[error("{voter} sent {bytes} bytes: outputs up to 1048576 bytes are compared")]
    TooLong { voter: AgentId, bytes: usize },
    #[error("{voter} voted at or after the deadline {deadline:?}: expire the decision first")]
    Late { voter: AgentId, deadline: Duration },
    #[error("{voter} voted, but the decision is over or waits for its judge")]
    Closed { voter: AgentId },
    #[error("no judge was asked: the decision is not tied")]
    NotJudging,
    #[error("the judge chose candidate {got}, but there are {candidates}")]
    NotACandidate { got: usize, candidates: usize },
    #[error("the judge answered at or after its deadline {deadline:?}: expire the decision")]
    JudgeLate { deadline: Duration },
    #[error("{voter} weighs {got}: allowed 0 up to the {most} it was seated with")]
    Weight { voter: AgentId, got: f64, most: f64 },
}

/// Where a decision is.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Waiting for more ballots, or the deadline.
    Pending,
    /// `fast` or `leader`: round `round` is open; ask for its ballots (under `leader`, the
    /// proposal of `proposer` first).
    NextRound {
        round: u32,
        proposer: Option<AgentId>,
    },
    /// Tied under the `judge` policy: run the judge over these, then
    /// [`Decision::judge`] with its choice (an index here) or none.
    NeedsJudge { candidates: Vec<Candidate> },
    /// Over. The outcome is shared with the decision, which keeps it.
    Done(Arc<Outcome>),
}

/// How a decision ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Outcome {
    Decided { winner: Winner, record: Record },
    Failed { reason: Reason, record: Record },
}

impl Outcome {
    pub fn winner(&self) -> Option<&Winner> {
        match self {
            Outcome::Decided { winner, .. } => Some(winner),
            Outcome::Failed { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Decided { .. } => None,
            Outcome::Failed { reason, .. } => Some(*reason),
        }
    }

    pub fn record(&self) -> &Record {
        match self {
            Outcome::Decided { record, .. } | Outcome::Failed { record, .. } => record,
        }
    }
}

/// What won, by how much, and who disagreed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Winner {
    /// The normalised key of the value (for `similarity`, of its cluster's first output).
    pub value: Arc<str>,
    /// An output as an agent sent it: the one of the earliest participant in the list among
    /// those who voted for the value (under `leader`, the proposal).
    pub representative: Arc<str>,
    /// The winner's share of the weight counted in the deciding round (under `leader`, of
    /// the reviews).
    pub support: f64,
    /// `support` minus the runner-up's share (under `leader`, minus the rejections' share).
    pub margin: f64,
    /// Voters counted for the winner in the deciding round (under `leader`, the proposer and
    /// the approving reviewers), in arrival order.
    pub voters: Vec<AgentId>,
    /// Every other voter counted in the deciding round, in arrival order.
    pub dissenters: Vec<AgentId>,
    /// How a tie was broken, if it was.
    pub tie_break: Option<TieBreak>,
}

/// How a tie was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TieBreak {
    First,
    Judge,
}

/// Why a decision failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Fewer than `participation` voted by the deadline.
    NoQuorum,
    /// No value got the support the protocol needs (more than the threshold; a bft quorum;
    /// a majority in `fast`'s round 1).
    NoAgreement,
    /// The top candidates were tied, or the judge chose none of them.
    Tie,
    /// The deadline passed with the decision open: a judge that did not answer, or a
    /// `leader` round without a proposal.
    Timeout,
    /// `bft`: more than `f` voters were seen faulty.
    TooManyFaults,
    /// `leader`: the reviewers rejected the last proposal.
    Rejected,
}

impl Reason {
    /// Its name, as events and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoQuorum => "no-quorum",
            Reason::NoAgreement => "no-agreement",
            Reason::Tie => "tie",
            Reason::Timeout => "timeout",
            Reason::TooManyFaults => "too-many-faults",
            Reason::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that went into an outcome: kept whether it decided or failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub protocol: Protocol,
    /// The round that decided or failed.
    pub round: u32,
    /// The share of the participants (by weight under `weighted` and `confidence`) counted
    /// in that round.
    pub participation: f64,
    /// That round's candidates, by first appearance; [`Recorded::candidate`] indexes them.
    pub candidates: Vec<Candidate>,
    /// Every ballot recorded, every round, in arrival order.
    pub ballots: Vec<Recorded>,
    /// Voters that sent two different ballots in a round, by id.
    pub equivocators: Vec<AgentId>,
    /// When it ended, from its start (written as seconds).
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
}

/// One value voted for in a round.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Candidate {
    /// Its normalised key.
    pub value: Arc<str>,
    /// The output of the earliest participant in the list that voted for it.
    pub representative: Arc<str>,
    /// Its weight: voters, or under `weighted` the sum of their weights, under `confidence`
    /// of weight × ln(c / (1 − c)).
    pub weight: f64,
    /// Its share of the weight counted in the round.
    pub share: f64,
    pub voters: u32,
}

/// A ballot as the decision recorded it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recorded {
    pub ballot: Ballot,
    /// When it was cast, from the decision's start (written as seconds).
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
    pub status: Status,
    /// In an outcome, for a ballot counted in the deciding round: its candidate in
    /// [`Record::candidates`].
    pub candidate: Option<u32>,
}

/// What became of a recorded ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Counted,
    /// A second, different ballot from a voter in the same round: never counted.
    Equivocation,
    /// `bft`: an equivocator's first ballot, no longer counted.
    Withdrawn,
}

/// A duration as seconds: how a person reading a record counts time.
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
