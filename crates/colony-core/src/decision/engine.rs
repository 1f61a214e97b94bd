//! The [`Decision`] state machine: fencing, counting and each protocol's rule for when to
//! close a round.

use super::similarity::{normalise_space, normalise_text};
use super::tally::Tally;
use super::{
    Ballot, Candidate, DecisionOptions, Error, MAX_OUTPUT_BYTES, MAX_PARTICIPANTS, MAX_WEIGHT,
    Normalise, Outcome, Participant, Progress, Protocol, Reason, Record, Recorded, Refused, Status,
    Tie, TieBreak, Vote, Winner,
};
use crate::AgentId;
use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::Duration,
};

/// Weights are counted in millionths.
const UNIT: f64 = 1e6;
/// The most a confidence can weigh: ln(0.99 / 0.01).
const MAX_CONFIDENCE: f64 = 0.99;

/// One decision among a fixed list of participants. See the [module](super) for the
/// protocols and what each guarantees.
#[derive(Clone, Debug)]
pub struct Decision {
    options: DecisionOptions,
    participants: Vec<Participant>,
    index: HashMap<AgentId, u32, BuildHasherDefault<IdHasher>>,
    /// Each participant's share of participation: its weight in millionths under `weighted`
    /// and `confidence`, else 1.
    units: Vec<u64>,
    total_units: u64,
    /// `bft`: matching ballots that decide; `fast`: round 0's.
    quorum: u64,
    /// `bft`: faulty voters tolerated.
    faults: u32,
    /// `leader`: rounds there can be.
    rounds: u32,
    /// Once over, empty when the outcome's record holds the same ballots (see
    /// [`Decision::ballots`]).
    ballots: Vec<Recorded>,
    /// The participant index of each recorded ballot.
    voters: Vec<u32>,
    round: Round,
    stage: Stage,
}

#[derive(Clone, Debug)]
enum Stage {
    Voting,
    /// Tied under the judge policy: these candidates, until then.
    Judging {
        candidates: Vec<u32>,
        until: Duration,
    },
    Done(Arc<Outcome>),
}

/// A participant's ballot in the open round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Open,
    /// Its counted ballot.
    Voted(usize),
    /// Its first ballot, then a different one.
    Equivocated(usize),
}

/// The state of the open round.
#[derive(Clone, Debug)]
struct Round {
    number: u32,
    ends: Duration,
    /// Index of its first ballot in the decision's ballots.
    first_ballot: usize,
    slots: Vec<Slot>,
    /// Participants that have not voted.
    open: u32,
    /// The most weight they could still add.
    open_units: u64,
    /// Participation units of the voters counted.
    cast: u64,
    tally: Tally,
    equivocators: u32,
    /// `leader`: the participant that proposes, its proposal, and the reviews.
    proposer: Option<u32>,
    proposal: Option<usize>,
    approve: u64,
    reject: u64,
}

impl Decision {
    /// A decision among `participants` (in priority order: `tie = first` and `leader` follow
    /// it), starting at time zero.
    pub fn new(options: DecisionOptions, participants: &[Participant]) -> Result<Self, Error> {
        options.validate()?;
        let n = participants.len();
        if n == 0 || n > MAX_PARTICIPANTS {
            return Err(Error::Participants { got: n });
        }
        let mut index = HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default());
        for (i, p) in participants.iter().enumerate() {
            if !(p.weight >= 0.0 && p.weight <= MAX_WEIGHT) {
                return Err(Error::Weight {
                    agent: p.agent,
                    got: p.weight,
                });
            }
            if index.insert(p.agent, i as u32).is_some() {
                return Err(Error::Twice { agent: p.agent });
            }
        }
        let weighted = matches!(options.protocol, Protocol::Weighted | Protocol::Confidence);
        let units: Vec<u64> = participants
            .iter()
            .map(|p| {
                if weighted {
                    (p.weight * UNIT).round() as u64
                } else {
                    1
                }
            })
            .collect();
        let total_units = units.iter().sum();
        if total_units == 0 {
            return Err(Error::NoWeight {
                protocol: options.protocol,
            });
        }
        let n32 = n as u32;
        let max_faults = (n32 - 1) / 3;
        let faults = options.faults.unwrap_or(max_faults);
        let mut quorum = 0;
        match options.protocol {
            Protocol::Bft => {
                if faults > max_faults {
                    return Err(Error::Faults {
                        n,
                        f: faults,
                        max: max_faults,
                    });
                }
                // 2f + 1 of 3f + 1; with more voters, enough that two quorums always share
                // f + 1 voters, one of them honest.
                quorum = u64::from(2 * faults + 1).max((n as u64 + u64::from(faults)) / 2 + 1);
            }
            Protocol::Fast => {
                quorum = ((options.fast_quorum * n as f64).ceil() as u64).clamp(1, n as u64);
            }
            Protocol::Leader if n < 2 => return Err(Error::Leader { got: n }),
            _ => {}
        }
        let rounds = match options.protocol {
            Protocol::Fast => 2,
            Protocol::Leader => options.max_rounds.min(n32),
            _ => 1,
        };
        let mut decision = Self {
            options,
            participants: participants.to_vec(),
            index,
            units,
            total_units,
            quorum,
            faults,
            rounds,
            // One ballot each is the usual round: no growing while they arrive.
            ballots: Vec::with_capacity(n),
            voters: Vec::with_capacity(n),
            round: Round::empty(),
            stage: Stage::Voting,
        };
        decision.round = decision.open_round(0);
        Ok(decision)
    }

    pub fn options(&self) -> &DecisionOptions {
        &self.options
    }

    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// The open round (the last one, once over).
    pub fn round(&self) -> u32 {
        self.round.number
    }

    /// `leader`: the participant whose proposal the open round waits for or reviews.
    pub fn proposer(&self) -> Option<AgentId> {
        self.round
            .proposer
            .map(|p| self.participants[p as usize].agent)
    }

    /// `bft`: the faulty voters tolerated, and the matching ballots that decide.
    pub fn bft_quorum(&self) -> Option<(u32, u64)> {
        (self.options.protocol == Protocol::Bft).then_some((self.faults, self.quorum))
    }

    /// When the caller should call [`Decision::expire`]: the open round's end or the judge's
    /// deadline; `None` once over.
    pub fn deadline(&self) -> Option<Duration> {
        match &self.stage {
            Stage::Voting => Some(self.round.ends),
            Stage::Judging { until, .. } => Some(*until),
            Stage::Done(_) => None,
        }
    }

    /// Every ballot recorded so far, in arrival order.
    pub fn ballots(&self) -> &[Recorded] {
        match &self.stage {
            Stage::Done(outcome) if self.ballots.is_empty() => &outcome.record().ballots,
            _ => &self.ballots,
        }
    }

    pub fn outcome(&self) -> Option<&Arc<Outcome>> {
        match &self.stage {
            Stage::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// A ballot arrived at `now`. Refused ballots change nothing; an equivocation is recorded
    /// (and under `bft` withdraws the voter's first ballot), so it answers with progress.
    pub fn cast(&mut self, ballot: Ballot, now: Duration) -> Result<Progress, Refused> {
        self.cast_as(ballot, None, now)
    }

    /// A ballot whose voter's weight is known only as it arrives (a seat filled by whichever
    /// agent answers, as a vote spread over a cluster seats them): its counted ballot weighs
    /// `weight`, from 0 up to the weight it was seated with, which is the most it could
    /// weigh. Until a seat's ballot is counted it weighs that most: in what the voters still
    /// out could add, and a silent seat in the participation. Only `weighted` and
    /// `confidence` count weights; the others count the ballot as [`Decision::cast`] does.
    pub fn cast_weighing(
        &mut self,
        ballot: Ballot,
        weight: f64,
        now: Duration,
    ) -> Result<Progress, Refused> {
        self.cast_as(ballot, Some(weight), now)
    }

    fn cast_as(
        &mut self,
        ballot: Ballot,
        weight: Option<f64>,
        now: Duration,
    ) -> Result<Progress, Refused> {
        let voter = ballot.voter;
        if !matches!(self.stage, Stage::Voting) {
            return Err(Refused::Closed { voter });
        }
        if now >= self.round.ends {
            return Err(Refused::Late {
                voter,
                deadline: self.round.ends,
            });
        }
        let p = *self
            .index
            .get(&voter)
            .ok_or(Refused::NotParticipant { voter })? as usize;
        if ballot.round != self.round.number {
            return Err(Refused::WrongRound {
                voter,
                got: ballot.round,
                open: self.round.number,
            });
        }
        self.check(&ballot, p)?;
        match self.round.slots[p] {
            Slot::Equivocated(_) => Err(Refused::Duplicate {
                voter,
                round: self.round.number,
            }),
            Slot::Voted(first) if self.same_vote(&self.ballots[first].ballot, &ballot) => {
                Err(Refused::Duplicate {
                    voter,
                    round: self.round.number,
                })
            }
            Slot::Voted(first) => Ok(self.equivocate(p, first, ballot, now)),
            Slot::Open => {
                if let Some(weight) = weight {
                    self.settle_weight(p, weight)?;
                }
                Ok(self.count(p, ballot, now))
            }
        }
    }

    /// Participant `p`, whose slot is open, weighs `weight` from now on: what it was seated
    /// with, less, comes off the total and off what the open voters could add.
    fn settle_weight(&mut self, p: usize, weight: f64) -> Result<(), Refused> {
        let most = self.participants[p].weight;
        if !(weight >= 0.0 && weight <= most) {
            return Err(Refused::Weight {
                voter: self.participants[p].agent,
                got: weight,
                most,
            });
        }
        if !matches!(
            self.options.protocol,
            Protocol::Weighted | Protocol::Confidence
        ) {
            return Ok(());
        }
        let (units, most_weight) = (self.units[p], self.most_weight(p));
        self.units[p] = ((weight * UNIT).round() as u64).min(units);
        self.total_units -= units - self.units[p];
        self.round.open_units -= most_weight - self.most_weight(p);
        self.participants[p].weight = weight;
        Ok(())
    }

    /// Time passed: at or after the [deadline](Decision::deadline), the open round closes
    /// (a `fast` or `leader` decision may move to its next round; call again at the new
    /// deadline) or an unanswered judge fails the decision. Before it, `Pending`. Once over,
    /// the outcome again.
    pub fn expire(&mut self, now: Duration) -> Progress {
        match &self.stage {
            Stage::Done(outcome) => Progress::Done(outcome.clone()),
            Stage::Judging { until, .. } if now >= *until => self.fail(Reason::Timeout, now),
            Stage::Judging { .. } => Progress::Pending,
            Stage::Voting if now < self.round.ends => Progress::Pending,
            Stage::Voting => self.review(now, true),
        }
    }

    /// No more ballots can come this round (the caller knows the voters still out will not
    /// answer: their work ended without an output), so the open round closes now as it would
    /// at its deadline; a silent voter counts as it would then (under `bft`, as faulty).
    /// While a judge is out, `Pending`; once over, the outcome again.
    pub fn close(&mut self, now: Duration) -> Progress {
        match &self.stage {
            Stage::Done(outcome) => Progress::Done(outcome.clone()),
            Stage::Judging { .. } => Progress::Pending,
            Stage::Voting => self.review(now, true),
        }
    }

    /// The judge chose candidate `choice` of [`Progress::NeedsJudge`], or none: the decision
    /// fails with [`Reason::Tie`] (under `leader`, the proposal is rejected and the turn
    /// passes).
    pub fn judge(&mut self, choice: Option<usize>, now: Duration) -> Result<Progress, Refused> {
        let Stage::Judging { candidates, until } = &self.stage else {
            return Err(Refused::NotJudging);
        };
        if now >= *until {
            return Err(Refused::JudgeLate { deadline: *until });
        }
        let chosen = match choice {
            None => None,
            Some(i) => Some(*candidates.get(i).ok_or(Refused::NotACandidate {
                got: i,
                candidates: candidates.len(),
            })?),
        };
        self.stage = Stage::Voting;
        Ok(match (self.options.protocol, chosen) {
            (Protocol::Leader, Some(_)) => self.accept(Some(TieBreak::Judge), now),
            (Protocol::Leader, None) => self.pass_turn(Reason::Rejected, now),
            (_, Some(c)) => self.decide(c, Some(TieBreak::Judge), now),
            (_, None) => self.fail(Reason::Tie, now),
        })
    }

    /// Refuses what no protocol would record from participant `p` in the open round.
    fn check(&self, ballot: &Ballot, p: usize) -> Result<(), Refused> {
        let voter = ballot.voter;
        let confidence_ok = match ballot.confidence {
            Some(c) => (0.0..=1.0).contains(&c),
            None => self.options.protocol != Protocol::Confidence,
        };
        if !confidence_ok {
            return Err(Refused::Confidence {
                voter,
                got: ballot.confidence,
            });
        }
        let proposer = self.round.proposer == Some(p as u32);
        let (got, wanted) = match (&ballot.vote, self.options.protocol) {
            (Vote::Output(text), _) if text.len() > MAX_OUTPUT_BYTES => {
                return Err(Refused::TooLong {
                    voter,
                    bytes: text.len(),
                });
            }
            (Vote::Output(_), Protocol::Leader) if !proposer => ("an output", "a review"),
            (Vote::Approve | Vote::Reject, Protocol::Leader) if proposer => {
                ("a review", "the proposal")
            }
            (Vote::Approve | Vote::Reject, Protocol::Leader) => {
                if self.round.proposal.is_none() {
                    return Err(Refused::NoProposal {
                        voter,
                        round: self.round.number,
                    });
                }
                return Ok(());
            }
            (Vote::Approve | Vote::Reject, _) => ("a review", "an output"),
            (Vote::Output(_), _) => return Ok(()),
        };
        Err(Refused::Kind { voter, got, wanted })
    }

    /// The key outputs are compared by.
    fn key<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match (self.options.protocol, self.options.normalise) {
            (Protocol::Similarity, _) | (_, Normalise::Text) => Cow::Owned(normalise_text(text)),
            (_, Normalise::Trim) => normalise_space(text),
            (_, Normalise::Exact) => Cow::Borrowed(text),
        }
    }

    fn same_vote(&self, first: &Ballot, second: &Ballot) -> bool {
        match (&first.vote, &second.vote) {
            (Vote::Output(a), Vote::Output(b)) => self.key(a) == self.key(b),
            (a, b) => a == b,
        }
    }

    /// The weight of participant `p`'s ballot.
    fn weight(&self, p: usize, confidence: Option<f64>) -> u64 {
        match self.options.protocol {
            Protocol::Weighted => self.units[p],
            Protocol::Confidence => {
                let c = confidence.unwrap_or(0.5).clamp(0.5, MAX_CONFIDENCE);
                (self.units[p] as f64 * (c / (1.0 - c)).ln()).round() as u64
            }
            _ => 1,
        }
    }

    /// The most weight participant `p`'s ballot could have.
    fn most_weight(&self, p: usize) -> u64 {
        self.weight(p, Some(MAX_CONFIDENCE))
    }

    fn count(&mut self, p: usize, ballot: Ballot, now: Duration) -> Progress {
        let at = self.ballots.len();
        let units = self.weight(p, ballot.confidence);
        let candidate = match &ballot.vote {
            Vote::Output(text) => {
                let key = self.key(text);
                let c = self.round.tally.candidate(key);
                if self.round.proposer == Some(p as u32) {
                    self.round.proposal = Some(at);
                } else {
                    self.round.tally.add(c, units);
                }
                Some(c)
            }
            Vote::Approve => {
                self.round.approve += 1;
                None
            }
            Vote::Reject => {
                self.round.reject += 1;
                None
            }
        };
        let most = self.most_weight(p);
        let round = &mut self.round;
        round.slots[p] = Slot::Voted(at);
        if round.proposer != Some(p as u32) {
            // The proposer is not among the reviews a leader round waits for.
            round.open -= 1;
            round.open_units -= most;
        }
        round.cast += self.units[p];
        self.record(p, ballot, now, Status::Counted, candidate);
        self.review(now, false)
    }

    fn equivocate(&mut self, p: usize, first: usize, ballot: Ballot, now: Duration) -> Progress {
        self.round.slots[p] = Slot::Equivocated(first);
        self.round.equivocators += 1;
        self.record(p, ballot, now, Status::Equivocation, None);
        if self.options.protocol != Protocol::Bft {
            return Progress::Pending;
        }
        self.ballots[first].status = Status::Withdrawn;
        let units = self.weight(p, self.ballots[first].ballot.confidence);
        if let Some(c) = self.ballots[first].candidate {
            self.round.tally.remove(c, units);
        }
        self.round.cast -= self.units[p];
        self.review(now, false)
    }

    fn record(&mut self, p: usize, ballot: Ballot, at: Duration, status: Status, c: Option<u32>) {
        self.ballots.push(Recorded {
            ballot,
            at,
            status,
            candidate: c,
        });
        self.voters.push(p as u32);
    }

    /// Whether the open round can close, and how; `expired` at its deadline.
    fn review(&mut self, now: Duration, expired: bool) -> Progress {
        match (self.options.protocol, self.round.number) {
            (Protocol::Bft, _) => self.review_bft(now, expired),
            (Protocol::Fast, 0) => self.review_fast(now, expired),
            (Protocol::Leader, _) => self.review_leader(now, expired),
            _ => self.review_threshold(now, expired),
        }
    }

    /// More than `threshold` of `total`.
    fn passes(&self, units: u64, total: u64) -> bool {
        units as f64 > self.options.threshold * total as f64
    }

    /// Whether `cast` of `of` take part enough; never when nothing weighs (every seat's
    /// weight settled at 0).
    fn quorate(&self, cast: u64, of: u64) -> bool {
        of > 0 && cast as f64 >= self.options.participation * of as f64
    }

    fn review_threshold(&mut self, now: Duration, expired: bool) -> Progress {
        let round = &self.round;
        let quorate = self.quorate(round.cast, self.total_units);
        if let Some((best, units)) = round.tally.best()
            && quorate
            && self.passes(units, round.tally.counted + round.open_units)
        {
            return self.decide(best, None, now);
        }
        if round.open > 0 && !expired {
            return Progress::Pending;
        }
        if !quorate {
            return self.fail(Reason::NoQuorum, now);
        }
        if let Some((best, units)) = round.tally.best()
            && self.passes(units, round.tally.counted)
        {
            return self.decide(best, None, now);
        }
        let top = round.tally.top();
        if top.len() < 2 {
            return self.fail(Reason::NoAgreement, now);
        }
        match self.options.tie {
            Tie::Fail => self.fail(Reason::Tie, now),
            Tie::First => {
                let first = self.earliest();
                let c = top
                    .into_iter()
                    .min_by_key(|&c| first[c as usize])
                    .unwrap_or_default();
                self.decide(c, Some(TieBreak::First), now)
            }
            Tie::Judge => self.ask_judge(top, now),
        }
    }

    fn review_fast(&mut self, now: Duration, expired: bool) -> Progress {
        let round = &self.round;
        let best = round.tally.best();
        if let Some((c, units)) = best
            && units >= self.quorum
        {
            return self.decide(c, None, now);
        }
        let most = best.map_or(0, |(_, units)| units);
        if expired || most + u64::from(round.open) < self.quorum {
            return self.next_round();
        }
        Progress::Pending
    }

    fn review_bft(&mut self, now: Duration, expired: bool) -> Progress {
        let round = &self.round;
        if round.equivocators > self.faults {
            return self.fail(Reason::TooManyFaults, now);
        }
        let best = round.tally.best();
        if let Some((c, units)) = best
            && units >= self.quorum
        {
            return self.decide(c, None, now);
        }
        let most = best.map_or(0, |(_, units)| units);
        if !expired && most + u64::from(round.open) >= self.quorum {
            return Progress::Pending;
        }
        let silent = if expired { round.open } else { 0 };
        if round.equivocators + silent > self.faults {
            self.fail(Reason::TooManyFaults, now)
        } else {
            self.fail(Reason::NoAgreement, now)
        }
    }

    fn review_leader(&mut self, now: Duration, expired: bool) -> Progress {
        let round = &self.round;
        if round.proposal.is_none() {
            return if expired {
                self.pass_turn(Reason::Timeout, now)
            } else {
                Progress::Pending
            };
        }
        let reviewers = self.participants.len() as u64 - 1;
        let (approve, reject) = (round.approve, round.reject);
        let open = u64::from(round.open);
        let quorate = self.quorate(approve + reject, reviewers);
        if quorate && self.passes(approve, approve + reject + open) {
            return self.accept(None, now);
        }
        // Rejected early only when the open reviews could make it neither pass nor tie.
        let hopeless =
            !self.passes(approve + open, approve + reject + open) && approve + open < reject;
        if !(hopeless || open == 0 || expired) {
            return Progress::Pending;
        }
        if !quorate {
            return self.pass_turn(Reason::NoQuorum, now);
        }
        if self.passes(approve, approve + reject) {
            return self.accept(None, now);
        }
        if approve != reject {
            return self.pass_turn(Reason::Rejected, now);
        }
        match self.options.tie {
            Tie::Fail => self.pass_turn(Reason::Tie, now),
            Tie::First => self.accept(Some(TieBreak::First), now),
            Tie::Judge => {
                let proposal = round.proposal.and_then(|b| self.ballots[b].candidate);
                self.ask_judge(proposal.into_iter().collect(), now)
            }
        }
    }

    /// `leader`: the round's proposal is not accepted for `reason`; the next proposer's turn,
    /// or the decision fails with it after the last.
    fn pass_turn(&mut self, reason: Reason, now: Duration) -> Progress {
        if self.round.number + 1 < self.rounds {
            self.next_round()
        } else {
            self.fail(reason, now)
        }
    }

    fn next_round(&mut self) -> Progress {
        let number = self.round.number + 1;
        self.round = self.open_round(number);
        Progress::NextRound {
            round: number,
            proposer: self.proposer(),
        }
    }

    fn open_round(&self, number: u32) -> Round {
        let timeout = self.options.timeout;
        let (ends, proposer) = match self.options.protocol {
            Protocol::Fast if number == 0 => (timeout / 2, None),
            Protocol::Leader => (timeout * (number + 1) / self.rounds, Some(number)),
            _ => (timeout, None),
        };
        let n = self.participants.len();
        let similarity =
            (self.options.protocol == Protocol::Similarity).then_some(self.options.similarity);
        let open_units = (0..n)
            .filter(|&p| proposer != Some(p as u32))
            .map(|p| self.most_weight(p))
            .sum();
        Round {
            number,
            ends,
            first_ballot: self.ballots.len(),
            slots: vec![Slot::Open; n],
            open: n as u32 - u32::from(proposer.is_some()),
            open_units,
            cast: 0,
            tally: Tally::new(similarity),
            equivocators: 0,
            proposer,
            proposal: None,
            approve: 0,
            reject: 0,
        }
    }

    fn ask_judge(&mut self, candidates: Vec<u32>, now: Duration) -> Progress {
        let listed = self.candidates();
        let shown = candidates
            .iter()
            .filter_map(|&c| listed.get(c as usize).cloned())
            .collect();
        self.stage = Stage::Judging {
            candidates,
            until: now.saturating_add(self.options.judge_timeout),
        };
        Progress::NeedsJudge { candidates: shown }
    }

    /// Candidate `c` of the open round won.
    fn decide(&mut self, c: u32, tie_break: Option<TieBreak>, now: Duration) -> Progress {
        let tally = &self.round.tally;
        let counted = tally.counted.max(1) as f64;
        let units = tally.candidates[c as usize].units;
        let (voters, dissenters) = self.split(|b| b.candidate == Some(c));
        let candidates = self.candidates();
        let chosen = &candidates[c as usize];
        let winner = Winner {
            value: chosen.value.clone(),
            representative: chosen.representative.clone(),
            support: units as f64 / counted,
            margin: (units as f64 - tally.runner_up(c) as f64) / counted,
            voters,
            dissenters,
            tie_break,
        };
        let record = self.record_of(candidates, now);
        self.finish(Outcome::Decided { winner, record })
    }

    /// `leader`: the open round's proposal is accepted.
    fn accept(&mut self, tie_break: Option<TieBreak>, now: Duration) -> Progress {
        let Some(proposal) = self.round.proposal else {
            return self.fail(Reason::Timeout, now);
        };
        let (approve, reject) = (self.round.approve, self.round.reject);
        let reviews = (approve + reject).max(1) as f64;
        let (voters, dissenters) = self.split(|b| b.ballot.vote != Vote::Reject);
        let candidates = self.candidates();
        let value = self.ballots[proposal]
            .candidate
            .and_then(|c| candidates.get(c as usize))
            .map(|c| c.value.clone())
            .unwrap_or_default();
        let representative = match &self.ballots[proposal].ballot.vote {
            Vote::Output(text) => text.clone(),
            Vote::Approve | Vote::Reject => value.clone(),
        };
        let winner = Winner {
            value,
            representative,
            support: approve as f64 / reviews,
            margin: (approve as f64 - reject as f64) / reviews,
            voters,
            dissenters,
            tie_break,
        };
        let record = self.record_of(candidates, now);
        self.finish(Outcome::Decided { winner, record })
    }

    fn fail(&mut self, reason: Reason, now: Duration) -> Progress {
        let candidates = self.candidates();
        let record = self.record_of(candidates, now);
        self.finish(Outcome::Failed { reason, record })
    }

    fn finish(&mut self, outcome: Outcome) -> Progress {
        let outcome = Arc::new(outcome);
        self.stage = Stage::Done(outcome.clone());
        Progress::Done(outcome)
    }

    /// The voters counted in the open round for whom `backs` holds, and the others.
    fn split(&self, backs: impl Fn(&Recorded) -> bool) -> (Vec<AgentId>, Vec<AgentId>) {
        // Sized once for the round's ballots: no growing by doubling on the decision's path.
        let n = self.ballots.len() - self.round.first_ballot;
        let mut voters = Vec::with_capacity(n);
        let mut dissenters = Vec::with_capacity(n);
        for b in self.round_ballots().filter(|b| b.status == Status::Counted) {
            if backs(b) {
                voters.push(b.ballot.voter);
            } else {
                dissenters.push(b.ballot.voter);
            }
        }
        (voters, dissenters)
    }

    fn round_ballots(&self) -> impl Iterator<Item = &Recorded> {
        self.ballots[self.round.first_ballot..].iter()
    }

    /// For each candidate of the open round, the earliest participant (in list order) with a
    /// counted ballot for it, and that ballot; `u32::MAX` when there is none.
    fn earliest(&self) -> Vec<(u32, usize)> {
        let mut first = vec![(u32::MAX, usize::MAX); self.round.tally.candidates.len()];
        let start = self.round.first_ballot;
        for (i, b) in self.ballots[start..].iter().enumerate() {
            if let (Status::Counted, Some(c)) = (b.status, b.candidate) {
                let p = self.voters[start + i];
                let slot = &mut first[c as usize];
                if p < slot.0 {
                    *slot = (p, start + i);
                }
            }
        }
        first
    }

    fn candidates(&self) -> Vec<Candidate> {
        let tally = &self.round.tally;
        let counted = tally.counted.max(1) as f64;
        let scale = match self.options.protocol {
            Protocol::Weighted | Protocol::Confidence => UNIT,
            _ => 1.0,
        };
        let leader = self.options.protocol == Protocol::Leader;
        let first = self.earliest();
        tally
            .candidates
            .iter()
            .zip(first)
            .map(|(count, (_, ballot))| {
                let representative = match self.ballots.get(ballot).map(|b| &b.ballot.vote) {
                    Some(Vote::Output(text)) => text.clone(),
                    _ => count.value.clone(),
                };
                if leader {
                    // The proposal: weighed by its approvals.
                    let reviews = (self.round.approve + self.round.reject).max(1) as f64;
                    return Candidate {
                        value: count.value.clone(),
                        representative,
                        weight: self.round.approve as f64,
                        share: self.round.approve as f64 / reviews,
                        voters: self.round.approve as u32,
                    };
                }
                Candidate {
                    value: count.value.clone(),
                    representative,
                    weight: count.units as f64 / scale,
                    share: count.units as f64 / counted,
                    voters: count.voters,
                }
            })
            .collect()
    }

    /// The record of the decision ending now. Its ballots are moved out of the decision when
    /// they are the same (every ballot counted in this round, the usual case), so they are
    /// kept once; [`Decision::ballots`] then reads them from the outcome.
    fn record_of(&mut self, candidates: Vec<Candidate>, now: Duration) -> Record {
        let start = self.round.first_ballot;
        let same = start == 0 && self.ballots.iter().all(|b| b.status == Status::Counted);
        let ballots = if same {
            std::mem::take(&mut self.ballots)
        } else {
            self.ballots
                .iter()
                .enumerate()
                .map(|(i, b)| Recorded {
                    candidate: b
                        .candidate
                        .filter(|_| i >= start && b.status == Status::Counted),
                    ..b.clone()
                })
                .collect()
        };
        let mut equivocators: Vec<AgentId> = ballots
            .iter()
            .filter(|b| b.status == Status::Equivocation)
            .map(|b| b.ballot.voter)
            .collect();
        equivocators.sort_unstable();
        equivocators.dedup();
        Record {
            protocol: self.options.protocol,
            round: self.round.number,
            participation: self.round.cast as f64 / self.total_units.max(1) as f64,
            candidates,
            ballots,
            equivocators,
            at: now,
        }
    }
}

impl Round {
    /// A placeholder until the first round is opened.
    fn empty() -> Self {
        Self {
            number: 0,
            ends: Duration::ZERO,
            first_ballot: 0,
            slots: Vec::new(),
            open: 0,
            open_units: 0,
            cast: 0,
            tally: Tally::new(None),
            equivocators: 0,
            proposer: None,
            proposal: None,
            approve: 0,
            reject: 0,
        }
    }
}

/// Hashes an agent id for the participant index. Ids are small integers the runtime assigns
/// and the participants are the caller's, so one multiply (folded, so that both the low bits
/// and the high bits vary) spreads them well, at a fraction of SipHash's cost.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl IdHasher {
    fn mix(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}
