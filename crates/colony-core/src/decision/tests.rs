//! Tests of the decision engine: each protocol's rules, fencing, ties and failures; property
//! tests of the guarantees; seeded simulated voters for accuracy; the large tallies.

use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::SliceRandom};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn a(i: u32) -> AgentId {
    AgentId(i)
}

fn voters(n: u32) -> Vec<Participant> {
    (0..n).map(|i| Participant::new(a(i))).collect()
}

fn vote(i: u32, text: &str) -> Ballot {
    Ballot::output(a(i), text)
}

fn new(options: DecisionOptions, n: u32) -> Decision {
    Decision::new(options, &voters(n)).unwrap()
}

/// The outcome of a finished progress; fails the test otherwise.
fn done(progress: Progress) -> Arc<Outcome> {
    match progress {
        Progress::Done(outcome) => outcome,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

fn cast(d: &mut Decision, ballot: Ballot) -> Progress {
    d.cast(ballot, ms(1)).unwrap()
}

fn winner(outcome: &Outcome) -> &str {
    &outcome.winner().expect("decided").value
}

// ---- majority ----

#[test]
fn majority_decides_as_soon_as_the_rest_cannot_change_it() {
    let mut d = new(DecisionOptions::default(), 5);
    assert_eq!(cast(&mut d, vote(0, "yes")), Progress::Pending);
    assert_eq!(cast(&mut d, vote(1, "no")), Progress::Pending);
    assert_eq!(cast(&mut d, vote(2, "yes")), Progress::Pending, "2 of 5");
    let outcome = done(cast(&mut d, vote(3, "yes ")));
    assert_eq!(winner(&outcome), "yes");
    let w = outcome.winner().unwrap();
    assert_eq!(&*w.representative, "yes", "participant 0's output");
    assert_eq!(w.voters, [a(0), a(2), a(3)]);
    assert_eq!(w.dissenters, [a(1)]);
    assert_eq!(w.support, 0.75);
    assert_eq!(w.margin, 0.5);
    assert_eq!(w.tie_break, None);
    let record = outcome.record();
    assert_eq!(record.participation, 0.8);
    assert_eq!(record.ballots.len(), 4);
    assert_eq!(record.round, 0);
    assert_eq!(record.at, ms(1));
    assert_eq!(record.candidates.len(), 2);
    assert_eq!(record.candidates[0].voters, 3);
    assert_eq!(record.candidates[1].share, 0.25);
    assert_eq!(record.ballots[3].candidate, Some(0));
    assert_eq!(d.outcome(), Some(&outcome));
    assert_eq!(d.deadline(), None);
    assert_eq!(
        d.cast(vote(4, "no"), ms(2)),
        Err(Refused::Closed { voter: a(4) })
    );
    assert_eq!(d.expire(ms(10_000)), Progress::Done(outcome));
}

#[test]
fn majority_waits_for_every_ballot_or_the_deadline_when_it_could_go_either_way() {
    // 2 yes, 1 no of 4: the last could tie it.
    let mut d = new(DecisionOptions::default(), 4);
    for (i, v) in ["yes", "yes", "no"].into_iter().enumerate() {
        assert_eq!(cast(&mut d, vote(i as u32, v)), Progress::Pending);
    }
    assert_eq!(d.deadline(), Some(ms(5_000)));
    assert_eq!(d.expire(ms(4_999)), Progress::Pending);
    let outcome = done(d.expire(ms(5_000)));
    assert_eq!(winner(&outcome), "yes", "2 of the 3 counted");
    assert_eq!(outcome.winner().unwrap().dissenters, [a(2)]);
    assert_eq!(outcome.record().participation, 0.75);
}

#[test]
fn closing_a_round_early_counts_the_silent_as_the_deadline_would() {
    // Five voters, two of whose work ended without an output: with "yes" 2 of 3 counted and
    // 3 of 5 voting, the round need not wait for the deadline.
    let mut d = new(DecisionOptions::default(), 5);
    cast(&mut d, vote(0, "yes"));
    cast(&mut d, vote(1, "no"));
    cast(&mut d, vote(2, "yes"));
    let outcome = done(d.close(ms(2)));
    assert_eq!(winner(&outcome), "yes");
    assert_eq!(
        outcome.record().at,
        ms(2),
        "closed when asked, not at the deadline"
    );
    assert_eq!(
        d.close(ms(3)),
        Progress::Done(outcome),
        "once over, the outcome again"
    );
    // Too few left to vote is no quorum at once, as at the deadline.
    let mut d = new(DecisionOptions::default(), 5);
    cast(&mut d, vote(0, "yes"));
    assert_eq!(done(d.close(ms(2))).reason(), Some(Reason::NoQuorum));
    // Under bft the silent count as faulty: 4 voters tolerate 1, two silent are too many.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 4);
    cast(&mut d, vote(0, "x"));
    cast(&mut d, vote(1, "x"));
    assert_eq!(done(d.close(ms(2))).reason(), Some(Reason::TooManyFaults));
}

#[test]
fn a_plurality_is_not_a_majority() {
    let mut d = new(DecisionOptions::default(), 5);
    for (i, v) in ["a", "a", "b", "c", "d"].into_iter().enumerate() {
        let p = cast(&mut d, vote(i as u32, v));
        if i < 4 {
            assert_eq!(p, Progress::Pending);
        } else {
            assert_eq!(done(p).reason(), Some(Reason::NoAgreement));
        }
    }
    let record = d.outcome().unwrap().record();
    assert_eq!(record.ballots.len(), 5, "the ballots are kept on failure");
    assert_eq!(record.candidates.len(), 4);
}

#[test]
fn too_few_voters_by_the_deadline_is_no_quorum() {
    let options = DecisionOptions {
        participation: 0.6,
        ..DecisionOptions::default()
    };
    let mut d = new(options, 5);
    cast(&mut d, vote(0, "x"));
    cast(&mut d, vote(1, "x"));
    let outcome = done(d.expire(ms(5_000)));
    assert_eq!(outcome.reason(), Some(Reason::NoQuorum));
    assert_eq!(outcome.record().participation, 0.4);
    assert_eq!(outcome.winner(), None, "never a success-shaped answer");
    // The same two in favour and a third makes it: 3 of 5 pass whatever the rest say.
    let mut d = new(options, 5);
    cast(&mut d, vote(0, "x"));
    cast(&mut d, vote(1, "x"));
    assert_eq!(winner(&done(cast(&mut d, vote(2, "x")))), "x");
}

#[test]
fn a_tie_fails_by_default_or_goes_to_the_first_participant_or_a_judge() {
    let ballots = [(3, "b"), (0, "a"), (1, "a"), (2, "b")];
    let run = |tie: Tie| {
        let mut d = new(
            DecisionOptions {
                tie,
                ..DecisionOptions::default()
            },
            4,
        );
        let mut last = Progress::Pending;
        for (i, v) in ballots {
            last = cast(&mut d, vote(i, v));
        }
        (d, last)
    };
    let (_, p) = run(Tie::Fail);
    assert_eq!(done(p).reason(), Some(Reason::Tie));

    let (_, p) = run(Tie::First);
    let outcome = done(p);
    assert_eq!(
        winner(&outcome),
        "a",
        "participant 0 backs a, though b came first"
    );
    let w = outcome.winner().unwrap();
    assert_eq!(w.tie_break, Some(TieBreak::First));
    assert_eq!(w.support, 0.5);
    assert_eq!(w.margin, 0.0);
    assert_eq!(w.dissenters, [a(3), a(2)]);

    let (mut d, p) = run(Tie::Judge);
    let Progress::NeedsJudge { candidates } = p else {
        panic!("a judge is asked: {p:?}")
    };
    let shown: Vec<&str> = candidates.iter().map(|c| &*c.value).collect();
    assert_eq!(shown, ["b", "a"]);
    assert_eq!(d.deadline(), Some(ms(5_001)), "judge-timeout from the tie");
    assert_eq!(
        d.cast(vote(0, "a"), ms(2)),
        Err(Refused::Closed { voter: a(0) })
    );
    assert_eq!(
        d.judge(Some(2), ms(2)),
        Err(Refused::NotACandidate {
            got: 2,
            candidates: 2
        })
    );
    let outcome = done(d.judge(Some(0), ms(3)).unwrap());
    assert_eq!(winner(&outcome), "b");
    assert_eq!(outcome.winner().unwrap().tie_break, Some(TieBreak::Judge));
    assert_eq!(d.judge(Some(0), ms(4)), Err(Refused::NotJudging));

    let (mut d, _) = run(Tie::Judge);
    assert_eq!(
        done(d.judge(None, ms(3)).unwrap()).reason(),
        Some(Reason::Tie)
    );
    let (mut d, _) = run(Tie::Judge);
    assert_eq!(d.expire(ms(5_000)), Progress::Pending);
    assert_eq!(
        d.judge(Some(0), ms(5_001)),
        Err(Refused::JudgeLate {
            deadline: ms(5_001)
        })
    );
    assert_eq!(done(d.expire(ms(5_001))).reason(), Some(Reason::Timeout));
}

// ---- fencing ----

#[test]
fn ballots_are_fenced() {
    let mut d = new(DecisionOptions::default(), 4);
    assert_eq!(
        d.cast(vote(9, "x"), ms(1)),
        Err(Refused::NotParticipant { voter: a(9) })
    );
    assert_eq!(
        d.cast(vote(0, "x").in_round(1), ms(1)),
        Err(Refused::WrongRound {
            voter: a(0),
            got: 1,
            open: 0
        })
    );
    assert_eq!(
        d.cast(Ballot::review(a(0), true), ms(1)),
        Err(Refused::Kind {
            voter: a(0),
            got: "a review",
            wanted: "an output"
        })
    );
    let huge: String = "x".repeat(MAX_OUTPUT_BYTES + 1);
    assert!(matches!(
        d.cast(vote(0, &huge), ms(1)),
        Err(Refused::TooLong { .. })
    ));
    for bad in [-0.1, 1.1, f64::NAN] {
        assert!(matches!(
            d.cast(vote(0, "x").with_confidence(bad), ms(1)),
            Err(Refused::Confidence { .. })
        ));
    }
    assert_eq!(
        d.cast(vote(0, "x"), ms(5_000)),
        Err(Refused::Late {
            voter: a(0),
            deadline: ms(5_000)
        })
    );
    assert!(d.ballots().is_empty(), "nothing refused is recorded");

    cast(&mut d, vote(0, "x"));
    assert_eq!(
        d.cast(vote(0, "  x "), ms(2)),
        Err(Refused::Duplicate {
            voter: a(0),
            round: 0
        }),
        "the same vote again, as normalised"
    );
    // A different second ballot is recorded as an equivocation and not counted.
    assert_eq!(d.cast(vote(0, "y"), ms(3)), Ok(Progress::Pending));
    assert_eq!(d.ballots()[1].status, Status::Equivocation);
    assert_eq!(
        d.cast(vote(0, "z"), ms(4)),
        Err(Refused::Duplicate {
            voter: a(0),
            round: 0
        }),
        "one equivocation is recorded, no more"
    );
    cast(&mut d, vote(1, "y"));
    cast(&mut d, vote(2, "y"));
    let outcome = done(cast(&mut d, vote(3, "x")));
    // y has 2 of 4 counted: not a majority, and a 2-2 tie, though 0 also said y.
    assert_eq!(outcome.reason(), Some(Reason::Tie));
    assert_eq!(outcome.record().equivocators, [a(0)]);
    assert_eq!(outcome.record().participation, 1.0);
}

#[test]
fn normalisation_decides_what_is_the_same_vote() {
    let run = |normalise: Normalise| {
        let mut d = new(
            DecisionOptions {
                normalise,
                ..DecisionOptions::default()
            },
            3,
        );
        for (i, text) in ["Paris", " Paris\n", "paris."].into_iter().enumerate() {
            if let Progress::Done(outcome) = cast(&mut d, vote(i as u32, text)) {
                return outcome;
            }
        }
        panic!("undecided")
    };
    assert_eq!(
        run(Normalise::Exact).reason(),
        Some(Reason::Tie),
        "three values of one vote each"
    );
    let trim = run(Normalise::Trim);
    assert_eq!(winner(&trim), "Paris");
    assert_eq!(trim.record().ballots.len(), 2, "2 of 3 decide");
    let text = run(Normalise::Text);
    assert_eq!(winner(&text), "paris");
    assert_eq!(&*text.winner().unwrap().representative, "Paris");
    assert_eq!(text.winner().unwrap().voters, [a(0), a(1)]);
}

// ---- weighted and confidence ----

#[test]
fn weighted_counts_weights_and_participation_by_weight() {
    let people = [
        Participant::weighted(a(0), 5.0),
        Participant::weighted(a(1), 2.0),
        Participant::weighted(a(2), 2.0),
        Participant::weighted(a(3), 0.0),
    ];
    let mut d = Decision::new(DecisionOptions::with(Protocol::Weighted), &people).unwrap();
    cast(&mut d, vote(1, "no"));
    cast(&mut d, vote(2, "no"));
    cast(&mut d, vote(3, "no"));
    let outcome = done(cast(&mut d, vote(0, "yes")));
    assert_eq!(winner(&outcome), "yes", "5 of 9");
    let w = outcome.winner().unwrap();
    assert_eq!(w.support, 5.0 / 9.0);
    assert_eq!(w.dissenters, [a(1), a(2), a(3)]);
    assert_eq!(outcome.record().candidates[0].weight, 4.0);
    // Weight 5 of 9 voting is quorate; 4 of 9 is not.
    let mut d = Decision::new(DecisionOptions::with(Protocol::Weighted), &people).unwrap();
    cast(&mut d, vote(1, "no"));
    cast(&mut d, vote(2, "no"));
    assert_eq!(done(d.expire(ms(5_000))).reason(), Some(Reason::NoQuorum));
    assert_eq!(
        Decision::new(
            DecisionOptions::with(Protocol::Weighted),
            &[Participant::weighted(a(0), 0.0)]
        )
        .unwrap_err()
        .to_string(),
        "decision participants' weights add up to 0: weighted needs one above 0"
    );
}

/// Seats whose weight is settled by the ballot that fills them: each counts what it
/// weighs, a seat still open counts the most it could weigh (so nothing is decided that a
/// late heavy ballot could overturn), and a silent seat counts that most in the
/// participation.
#[test]
fn a_seats_weight_is_settled_when_its_ballot_is_counted() {
    let seats: Vec<Participant> = (0..3).map(|i| Participant::weighted(a(i), 3.0)).collect();
    let options = DecisionOptions::with(Protocol::Weighted);
    let mut d = Decision::new(options, &seats).unwrap();
    // 1 + 1 against the 3 the open seat could add: not decided yet.
    assert_eq!(
        d.cast_weighing(vote(0, "x"), 1.0, ms(1)),
        Ok(Progress::Pending)
    );
    assert_eq!(
        d.cast_weighing(vote(1, "x"), 1.0, ms(1)),
        Ok(Progress::Pending)
    );
    let outcome = done(d.cast_weighing(vote(2, "y"), 3.0, ms(2)).unwrap());
    assert_eq!(winner(&outcome), "y", "3 of 5");
    assert_eq!(outcome.winner().unwrap().support, 3.0 / 5.0);
    assert_eq!(outcome.record().participation, 1.0);
    assert_eq!(d.participants()[0].weight, 1.0);

    // A seat settled light no longer counts its most among what the open seats could add:
    // 1 + 3 against the 3 still out is decided before the last seat votes.
    let mut d = Decision::new(options, &seats).unwrap();
    cast_weighed(&mut d, 0, "x", 1.0);
    let outcome = done(d.cast_weighing(vote(1, "x"), 3.0, ms(1)).unwrap());
    assert_eq!(winner(&outcome), "x", "4 of the 7 that can still weigh");
    assert_eq!(outcome.winner().unwrap().support, 1.0);
    // Under confidence too: each ballot by its settled weight times its confidence's.
    let mut d = Decision::new(DecisionOptions::with(Protocol::Confidence), &seats).unwrap();
    let sure = |i: u32, text: &str| vote(i, text).with_confidence(0.9);
    assert_eq!(
        d.cast_weighing(sure(0, "x"), 1.0, ms(1)),
        Ok(Progress::Pending)
    );
    assert_eq!(
        d.cast_weighing(sure(1, "y"), 3.0, ms(1)),
        Ok(Progress::Pending)
    );
    let outcome = done(d.cast_weighing(sure(2, "x"), 1.0, ms(1)).unwrap());
    assert_eq!(winner(&outcome), "y", "3 against 1 + 1, at one confidence");

    // More than seated, or not a number: refused, nothing changed.
    let mut d = Decision::new(options, &seats).unwrap();
    for w in [3.5, -1.0, f64::NAN] {
        assert!(matches!(
            d.cast_weighing(vote(0, "x"), w, ms(1)),
            Err(Refused::Weight { most: 3.0, .. })
        ));
    }
    // A silent seat weighs its most in the participation: 1 of 7 is not a quorum.
    cast_weighed(&mut d, 0, "x", 1.0);
    assert_eq!(done(d.expire(ms(5_000))).reason(), Some(Reason::NoQuorum));
    let mut d = Decision::new(options, &seats).unwrap();
    cast_weighed(&mut d, 0, "x", 3.0);
    cast_weighed(&mut d, 1, "y", 1.0);
    let outcome = done(d.expire(ms(5_000)));
    assert_eq!(winner(&outcome), "x", "4 of 7 took part; x 3 to 1");
    assert_eq!(outcome.record().participation, 4.0 / 7.0);

    // Every seat settled at 0: nothing weighs, no quorum (not a tie of nothing).
    let mut d = Decision::new(options, &seats).unwrap();
    for i in 0..2 {
        cast_weighed(&mut d, i, "x", 0.0);
    }
    let outcome = done(d.cast_weighing(vote(2, "y"), 0.0, ms(1)).unwrap());
    assert_eq!(outcome.reason(), Some(Reason::NoQuorum));

    // Protocols that weigh no one count the ballot as it is.
    let mut d = Decision::new(DecisionOptions::with(Protocol::Majority), &seats).unwrap();
    cast_weighed(&mut d, 0, "x", 0.0);
    assert_eq!(winner(&done(cast_weighed(&mut d, 1, "x", 0.0))), "x");
}

fn cast_weighed(d: &mut Decision, i: u32, text: &str, weight: f64) -> Progress {
    d.cast_weighing(vote(i, text), weight, ms(1)).unwrap()
}

#[test]
fn confidence_weighs_calibrated_confidence() {
    let mut d = new(DecisionOptions::with(Protocol::Confidence), 3);
    assert_eq!(
        d.cast(vote(0, "x"), ms(1)),
        Err(Refused::Confidence {
            voter: a(0),
            got: None
        }),
        "required"
    );
    // ln(0.95 / 0.05) = 2.94 beats 2 × ln(0.7 / 0.3) = 1.69.
    cast(&mut d, vote(0, "x").with_confidence(0.95));
    cast(&mut d, vote(1, "y").with_confidence(0.7));
    let outcome = done(cast(&mut d, vote(2, "y").with_confidence(0.7)));
    assert_eq!(winner(&outcome), "x");
    assert_eq!(outcome.winner().unwrap().dissenters, [a(1), a(2)]);
    // A guess weighs nothing: 0.5 and below.
    let mut d = new(DecisionOptions::with(Protocol::Confidence), 3);
    cast(&mut d, vote(0, "x").with_confidence(0.6));
    cast(&mut d, vote(1, "y").with_confidence(0.5));
    let outcome = done(cast(&mut d, vote(2, "y").with_confidence(0.1)));
    assert_eq!(winner(&outcome), "x");
    assert_eq!(outcome.winner().unwrap().support, 1.0);
}

// ---- similarity ----

#[test]
fn similarity_groups_paraphrases_that_exact_match_splits() {
    let outputs = [
        "The capital of France is Paris.",
        "Paris is the capital of France",
        "Lyon",
        "the capital of france is PARIS!",
        "Lyon",
    ];
    let run = |protocol: Protocol| {
        let mut d = new(DecisionOptions::with(protocol), 5);
        for (i, text) in outputs.into_iter().enumerate() {
            if let Progress::Done(outcome) = cast(&mut d, vote(i as u32, text)) {
                return (i, outcome);
            }
        }
        panic!("undecided")
    };
    let (last, outcome) = run(Protocol::Majority);
    assert_eq!((last, outcome.reason()), (4, Some(Reason::NoAgreement)));
    let (last, outcome) = run(Protocol::Similarity);
    assert_eq!(last, 3, "3 of 5 alike: decided before the last ballot");
    let w = outcome.winner().unwrap();
    assert_eq!(&*w.value, "the capital of france is paris");
    assert_eq!(&*w.representative, "The capital of France is Paris.");
    assert_eq!(w.voters, [a(0), a(1), a(3)]);
    assert_eq!(w.dissenters, [a(2)]);
    // A wrong answer in the same words stays apart at the default 0.8.
    let mut d = new(DecisionOptions::with(Protocol::Similarity), 3);
    cast(&mut d, vote(0, "The capital of France is Paris"));
    cast(&mut d, vote(1, "The capital of France is Lyon"));
    assert_eq!(
        done(cast(&mut d, vote(2, "Pari"))).reason(),
        Some(Reason::Tie),
        "three clusters of one: Lyon apart, and Pari is not like a sentence"
    );
}

// ---- bft ----

#[test]
fn bft_needs_enough_voters_for_its_faults() {
    let options = DecisionOptions {
        faults: Some(2),
        ..DecisionOptions::with(Protocol::Bft)
    };
    assert_eq!(
        Decision::new(options, &voters(6)).unwrap_err().to_string(),
        "decision faults 2 is out of range: bft needs n >= 3f+1 voters, and 6 voters tolerate at most 1 faulty; add voters or lower faults"
    );
    assert_eq!(
        Decision::new(options, &voters(7)).unwrap().bft_quorum(),
        Some((2, 5))
    );
    assert_eq!(
        new(DecisionOptions::with(Protocol::Bft), 10).bft_quorum(),
        Some((3, 7))
    );
    // f = 1 of 10: two quorums of 3 could be disjoint; 6 always share two voters.
    let one = DecisionOptions {
        faults: Some(1),
        ..DecisionOptions::with(Protocol::Bft)
    };
    assert_eq!(
        Decision::new(one, &voters(10)).unwrap().bft_quorum(),
        Some((1, 6))
    );
    assert!(
        DecisionOptions {
            tie: Tie::First,
            ..DecisionOptions::with(Protocol::Bft)
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("tie first is not allowed with bft")
    );
}

#[test]
fn bft_decides_on_2f_plus_1_and_excludes_equivocators() {
    // n = 4, f = 1: 3 matching ballots decide.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 4);
    cast(&mut d, vote(0, "v"));
    cast(&mut d, vote(1, "v"));
    // 1 votes w after v: both its ballots are out.
    assert_eq!(cast(&mut d, vote(1, "w")), Progress::Pending);
    assert_eq!(d.ballots()[0].status, Status::Counted);
    assert_eq!(d.ballots()[1].status, Status::Withdrawn);
    assert_eq!(cast(&mut d, vote(2, "v")), Progress::Pending, "2 of 3");
    let outcome = done(cast(&mut d, vote(3, "v")));
    assert_eq!(winner(&outcome), "v");
    let w = outcome.winner().unwrap();
    assert_eq!(w.voters, [a(0), a(2), a(3)]);
    assert!(
        w.dissenters.is_empty(),
        "the equivocator is not a dissenter"
    );
    assert_eq!(outcome.record().equivocators, [a(1)]);
    assert_eq!(outcome.record().participation, 0.75);
}

#[test]
fn bft_refuses_rather_than_decide_with_more_than_f_faults() {
    // Two equivocators of 4 (f = 1): too many, at once.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 4);
    for (i, v) in [(0, "v"), (0, "w"), (1, "v")] {
        assert_eq!(cast(&mut d, vote(i, v)), Progress::Pending);
    }
    let outcome = done(cast(&mut d, vote(1, "w")));
    assert_eq!(outcome.reason(), Some(Reason::TooManyFaults));
    // Two silent of 4: the two honest ballots are not 3; at the deadline, too many faults.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 4);
    cast(&mut d, vote(0, "v"));
    cast(&mut d, vote(1, "v"));
    assert_eq!(d.expire(ms(4_999)), Progress::Pending);
    assert_eq!(
        done(d.expire(ms(5_000))).reason(),
        Some(Reason::TooManyFaults)
    );
    // One silent and a 2-1 split: the honest voters disagree; known as soon as it is certain.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 4);
    cast(&mut d, vote(0, "v"));
    cast(&mut d, vote(1, "w"));
    assert_eq!(
        done(cast(&mut d, vote(2, "u"))).reason(),
        Some(Reason::NoAgreement)
    );
}

// ---- fast ----

#[test]
fn fast_decides_in_one_round_on_three_quarters() {
    let mut d = new(DecisionOptions::with(Protocol::Fast), 8);
    for i in 0..5 {
        assert_eq!(cast(&mut d, vote(i, "v")), Progress::Pending);
    }
    let outcome = done(cast(&mut d, vote(5, "v")));
    assert_eq!(winner(&outcome), "v", "6 of 8");
    assert_eq!(outcome.record().round, 0);
}

#[test]
fn fast_takes_a_second_majority_round_otherwise() {
    let mut d = new(DecisionOptions::with(Protocol::Fast), 4);
    assert_eq!(d.deadline(), Some(ms(2_500)), "round 0 has half the time");
    cast(&mut d, vote(0, "v"));
    cast(&mut d, vote(1, "w"));
    assert_eq!(
        cast(&mut d, vote(2, "w")),
        Progress::Pending,
        "w could still get 3"
    );
    assert_eq!(
        cast(&mut d, vote(3, "u")),
        Progress::NextRound {
            round: 1,
            proposer: None
        },
        "no value can reach 3 of 4"
    );
    assert_eq!(d.round(), 1);
    assert_eq!(d.deadline(), Some(ms(5_000)));
    assert!(
        matches!(
            d.cast(vote(3, "v"), ms(1)),
            Err(Refused::WrongRound {
                got: 0,
                open: 1,
                ..
            })
        ),
        "round 0 is over"
    );
    cast(&mut d, vote(0, "w").in_round(1));
    cast(&mut d, vote(1, "w").in_round(1));
    let outcome = done(cast(&mut d, vote(2, "w").in_round(1)));
    assert_eq!(winner(&outcome), "w", "3 of 4 in round 1");
    assert_eq!(outcome.record().round, 1);
    assert_eq!(outcome.record().ballots.len(), 7, "both rounds' ballots");
    assert_eq!(outcome.record().ballots[0].candidate, None, "round 0's");
    // Silence in round 0 ends it at its deadline.
    let mut d = new(DecisionOptions::with(Protocol::Fast), 4);
    cast(&mut d, vote(0, "v"));
    cast(&mut d, vote(1, "v"));
    assert_eq!(
        d.expire(ms(2_500)),
        Progress::NextRound {
            round: 1,
            proposer: None
        }
    );
    assert_eq!(done(d.expire(ms(5_000))).reason(), Some(Reason::NoQuorum));
}

#[test]
fn the_ballots_read_the_same_once_the_decision_is_over() {
    // Every ballot counted in the deciding round: the outcome's record keeps them once.
    let mut d = new(DecisionOptions::default(), 3);
    cast(&mut d, vote(0, "v"));
    let before = d.ballots().to_vec();
    let outcome = done(cast(&mut d, vote(1, "v")));
    assert_eq!(&d.ballots()[..1], before);
    assert_eq!(d.ballots(), outcome.record().ballots);
    assert_eq!(d.outcome(), Some(&outcome));
    assert_eq!(d.close(ms(2)), Progress::Done(outcome.clone()));
    // An earlier round's ballots: the record drops their candidates, the decision does not.
    let mut d = new(DecisionOptions::with(Protocol::Fast), 4);
    for (i, v) in ["v", "w", "w", "u"].into_iter().enumerate() {
        cast(&mut d, vote(i as u32, v));
    }
    cast(&mut d, vote(0, "w").in_round(1));
    cast(&mut d, vote(1, "w").in_round(1));
    let before = d.ballots().to_vec();
    let outcome = done(cast(&mut d, vote(2, "w").in_round(1)));
    assert_eq!(&d.ballots()[..6], before);
    assert_eq!(d.ballots().len(), 7);
    assert_eq!(d.ballots()[0].candidate, Some(0));
    assert_eq!(outcome.record().ballots[0].candidate, None);
    assert_eq!(d.outcome(), Some(&outcome));
}

// ---- leader ----

#[test]
fn leader_accepts_an_approved_proposal() {
    let mut d = new(DecisionOptions::with(Protocol::Leader), 4);
    assert_eq!(d.proposer(), Some(a(0)));
    assert_eq!(
        d.cast(Ballot::review(a(1), true), ms(1)),
        Err(Refused::NoProposal {
            voter: a(1),
            round: 0
        })
    );
    assert!(matches!(
        d.cast(vote(1, "mine"), ms(1)),
        Err(Refused::Kind {
            got: "an output",
            wanted: "a review",
            ..
        })
    ));
    cast(&mut d, vote(0, "plan A"));
    assert!(matches!(
        d.cast(Ballot::review(a(0), true), ms(1)),
        Err(Refused::Kind {
            got: "a review",
            ..
        })
    ));
    cast(&mut d, Ballot::review(a(1), true));
    cast(&mut d, Ballot::review(a(2), false));
    let outcome = done(cast(&mut d, Ballot::review(a(3), true)));
    let w = outcome.winner().unwrap();
    assert_eq!(&*w.representative, "plan A");
    assert_eq!(w.voters, [a(0), a(1), a(3)]);
    assert_eq!(w.dissenters, [a(2)]);
    assert_eq!(w.support, 2.0 / 3.0);
    assert_eq!(outcome.record().participation, 1.0);
}

#[test]
fn leader_passes_the_turn_on_rejection_or_silence_for_bounded_rounds() {
    let mut d = new(DecisionOptions::with(Protocol::Leader), 3);
    // 3 rounds of 5 s: round r ends at (r + 1) × 5/3 s.
    assert_eq!(d.deadline(), Some(Duration::from_secs(5) / 3));
    cast(&mut d, vote(0, "plan A"));
    assert_eq!(
        cast(&mut d, Ballot::review(a(1), false)),
        Progress::Pending,
        "1 could still tie"
    );
    assert_eq!(
        cast(&mut d, Ballot::review(a(2), false)),
        Progress::NextRound {
            round: 1,
            proposer: Some(a(1))
        }
    );
    // Participant 1 says nothing in its turn.
    assert_eq!(
        d.expire(Duration::from_secs(10) / 3),
        Progress::NextRound {
            round: 2,
            proposer: Some(a(2))
        }
    );
    cast(&mut d, vote(2, "plan C").in_round(2));
    cast(&mut d, Ballot::review(a(0), false).in_round(2));
    let outcome = done(cast(&mut d, Ballot::review(a(1), false).in_round(2)));
    assert_eq!(outcome.reason(), Some(Reason::Rejected));
    assert_eq!(outcome.record().round, 2);
    assert_eq!(outcome.record().ballots.len(), 6);
}

#[test]
fn leader_ties_follow_the_policy() {
    let run = |tie: Tie| {
        let mut d = new(
            DecisionOptions {
                tie,
                max_rounds: 1,
                ..DecisionOptions::with(Protocol::Leader)
            },
            3,
        );
        cast(&mut d, vote(0, "plan A"));
        cast(&mut d, Ballot::review(a(1), true));
        let last = cast(&mut d, Ballot::review(a(2), false));
        (d, last)
    };
    assert_eq!(done(run(Tie::Fail).1).reason(), Some(Reason::Tie));
    let outcome = done(run(Tie::First).1);
    assert_eq!(outcome.winner().unwrap().tie_break, Some(TieBreak::First));
    let (mut d, p) = run(Tie::Judge);
    let Progress::NeedsJudge { candidates } = p else {
        panic!("{p:?}")
    };
    assert_eq!(&*candidates[0].representative, "plan A");
    assert_eq!(
        done(d.judge(None, ms(2)).unwrap()).reason(),
        Some(Reason::Rejected)
    );
    let (mut d, _) = run(Tie::Judge);
    assert_eq!(
        &*done(d.judge(Some(0), ms(2)).unwrap())
            .winner()
            .unwrap()
            .representative,
        "plan A"
    );
}

// ---- options ----

#[test]
fn bad_options_and_participants_name_the_field() {
    let d = DecisionOptions::default();
    assert!(d.validate().is_ok());
    let err = |o: DecisionOptions| o.validate().unwrap_err().to_string();
    assert_eq!(
        err(DecisionOptions {
            threshold: 0.4,
            ..d
        }),
        "decision threshold 0.4 is out of range: allowed 0.5 up to below 1.0"
    );
    assert!(
        err(DecisionOptions {
            threshold: 1.0,
            ..d
        })
        .contains("threshold 1 ")
    );
    assert!(
        err(DecisionOptions {
            participation: f64::NAN,
            ..d
        })
        .contains("participation NaN")
    );
    assert!(
        err(DecisionOptions {
            similarity: 0.0,
            ..d
        })
        .contains("similarity 0 ")
    );
    assert!(
        err(DecisionOptions {
            fast_quorum: 0.5,
            ..d
        })
        .contains("fast-quorum 0.5 ")
    );
    assert_eq!(
        err(DecisionOptions {
            timeout: Duration::ZERO,
            ..d
        }),
        "decision timeout 0ns is out of range: allowed more than 0 s and up to 1 day"
    );
    assert!(
        err(DecisionOptions {
            judge_timeout: MAX_TIMEOUT + ms(1),
            ..d
        })
        .contains("judge-timeout")
    );
    assert_eq!(
        err(DecisionOptions { max_rounds: 0, ..d }),
        "decision max-rounds 0 is out of range: allowed 1 up to 64"
    );
    let people = |list: &[Participant]| Decision::new(d, list).unwrap_err().to_string();
    assert_eq!(
        people(&[]),
        "decision has 0 participants: allowed 1 up to 100000"
    );
    assert_eq!(
        people(&[Participant::new(a(1)), Participant::new(a(1))]),
        "decision participant agent-1 is listed twice"
    );
    assert_eq!(
        people(&[Participant::weighted(a(1), -1.0)]),
        "decision participant agent-1 weight -1 is out of range: allowed 0.0 up to 1000000.0"
    );
    assert!(people(&[Participant::weighted(a(1), f64::INFINITY)]).contains("weight inf"));
    assert!(
        Decision::new(DecisionOptions::with(Protocol::Leader), &voters(1))
            .unwrap_err()
            .to_string()
            .contains("leader needs 2 or more")
    );
    let toml_like: DecisionOptions =
        serde_json::from_str(r#"{"protocol": "quorum", "tie": "judge"}"#).unwrap();
    assert_eq!(toml_like.protocol, Protocol::Majority);
    assert_eq!(toml_like.tie, Tie::Judge);
    assert!(serde_json::from_str::<DecisionOptions>(r#"{"treshold": 0.6}"#).is_err());
}

// ---- size ----

#[test]
fn ten_thousand_ballots_tally_to_the_right_winner() {
    let n = 10_000;
    let mut d = new(DecisionOptions::default(), n);
    let mut last = Progress::Pending;
    for i in 0..n {
        let v = if i % 2 == 0 || i == n - 1 { "A" } else { "B" };
        last = d.cast(vote(i, v), ms(u64::from(i) / 10)).unwrap();
        if i < n - 1 {
            assert_eq!(last, Progress::Pending, "ballot {i}");
        }
    }
    let outcome = done(last);
    let w = outcome.winner().unwrap();
    assert_eq!(&*w.value, "A");
    assert_eq!((w.voters.len(), w.dissenters.len()), (5_001, 4_999));
    assert!((w.margin - 2.0 / 10_000.0).abs() < 1e-12);
    assert_eq!(outcome.record().participation, 1.0);
}

#[test]
fn a_thousand_voter_bft_decision_survives_its_faults() {
    // f = 333: 111 liars, 111 equivocators and 111 silent against 667 honest.
    let mut d = new(DecisionOptions::with(Protocol::Bft), 1_000);
    assert_eq!(d.bft_quorum(), Some((333, 667)));
    let mut ballots = Vec::new();
    for i in 0..1_000u32 {
        match if i < 999 { i % 9 } else { 3 } {
            0 => ballots.push(vote(i, "B")),
            1 => {
                ballots.push(vote(i, "A"));
                ballots.push(vote(i, "B"));
            }
            2 => {}
            _ => ballots.push(vote(i, "A")),
        }
    }
    ballots.shuffle(&mut SmallRng::seed_from_u64(14));
    let mut outcome = None;
    for (t, b) in ballots.into_iter().enumerate() {
        match d.cast(b, ms(t as u64)) {
            Ok(Progress::Done(o)) => outcome = Some(o),
            Ok(_) => {}
            Err(Refused::Closed { .. }) => assert!(outcome.is_some()),
            Err(e) => panic!("{e}"),
        }
    }
    let outcome = outcome.unwrap_or_else(|| done(d.expire(ms(5_000))));
    let w = outcome.winner().expect("the honest value");
    assert_eq!(&*w.value, "A");
    assert!(w.voters.len() >= 667);
    assert!(
        w.dissenters.iter().all(|v| v.0 % 9 < 2),
        "only liars, and equivocators whose second ballot came later, said B"
    );
}

// ---- seeded simulated voters ----

/// P(at least `k` of `n` are right), each right with probability `p`.
fn binomial_at_least(n: u64, k: u64, p: f64) -> f64 {
    let choose = |n: u64, k: u64| (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64);
    (k..=n)
        .map(|j| choose(n, j) * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32))
        .sum()
}

/// How often the decision picks `right` over `trials` rounds of simulated voters; `voter(i,
/// rng)` gives voter i's ballot text and confidence.
fn accuracy(
    options: DecisionOptions,
    people: &[Participant],
    trials: u32,
    seed: u64,
    mut voter: impl FnMut(usize, &mut SmallRng) -> (String, f64),
    right: impl Fn(&str) -> bool,
) -> f64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut wins = 0;
    for _ in 0..trials {
        let mut d = Decision::new(options, people).unwrap();
        let mut outcome = None;
        for (i, p) in people.iter().enumerate() {
            let (text, confidence) = voter(i, &mut rng);
            let ballot = Ballot::output(p.agent, text).with_confidence(confidence);
            if let Ok(Progress::Done(o)) = d.cast(ballot, ms(1)) {
                outcome = Some(o);
                break;
            }
        }
        let outcome = outcome.unwrap_or_else(|| done(d.expire(options.timeout)));
        if outcome.winner().is_some_and(|w| right(&w.representative)) {
            wins += 1;
        }
    }
    f64::from(wins) / f64::from(trials)
}

#[test]
fn seven_voters_right_60_percent_of_the_time_are_right_71_percent_together() {
    let expected = binomial_at_least(7, 4, 0.6);
    assert!((expected - 0.710_208).abs() < 1e-6);
    let got = accuracy(
        DecisionOptions::default(),
        &voters(7),
        10_000,
        7,
        |_, rng| {
            let right = rng.random_bool(0.6);
            ((if right { "right" } else { "wrong" }).to_owned(), 0.6)
        },
        |r| r == "right",
    );
    assert!(
        (got - expected).abs() <= 0.01,
        "majority accuracy {got}, binomial {expected}"
    );
}

#[test]
fn weights_and_confidence_beat_a_plain_majority_when_voters_differ() {
    // One expert and four weak voters; a weak voter's mistakes split over two wrong answers.
    let skill = [0.9, 0.65, 0.6, 0.55, 0.55];
    let log_odds = |p: f64| (p / (1.0 - p)).ln();
    let reputed: Vec<Participant> = skill
        .iter()
        .enumerate()
        .map(|(i, &p)| Participant::weighted(a(i as u32), log_odds(p)))
        .collect();
    let voter = |i: usize, rng: &mut SmallRng| {
        let text = if rng.random_bool(skill[i]) {
            "right"
        } else if rng.random_bool(0.5) {
            "wrong"
        } else {
            "worse"
        };
        (text.to_owned(), skill[i])
    };
    let majority = accuracy(
        DecisionOptions::default(),
        &voters(5),
        10_000,
        1,
        voter,
        |r| r == "right",
    );
    let weighted = accuracy(
        DecisionOptions::with(Protocol::Weighted),
        &reputed,
        10_000,
        1,
        voter,
        |r| r == "right",
    );
    let confidence = accuracy(
        DecisionOptions::with(Protocol::Confidence),
        &voters(5),
        10_000,
        1,
        voter,
        |r| r == "right",
    );
    assert!(
        weighted > majority + 0.05 && confidence > majority + 0.05,
        "majority {majority}, weighted {weighted}, confidence {confidence}"
    );
    // The expert decides alone: its 0.9, give or take the sampling.
    assert!((weighted - 0.9).abs() < 0.015, "{weighted}");
}

#[test]
fn similarity_keeps_the_majority_accuracy_where_exact_match_loses_it() {
    let paraphrases = [
        "The capital of France is Paris.",
        "Paris is the capital of France",
        "the capital of france is PARIS",
        "Paris is the capital of France!",
    ];
    let voter = |_: usize, rng: &mut SmallRng| {
        let text = if rng.random_bool(0.6) {
            paraphrases[rng.random_range(0..paraphrases.len())]
        } else if rng.random_bool(0.5) {
            "The capital of France is Lyon."
        } else {
            "Marseille"
        };
        (text.to_owned(), 0.6)
    };
    let right = |r: &str| paraphrases.contains(&r);
    let similarity = accuracy(
        DecisionOptions::with(Protocol::Similarity),
        &voters(7),
        10_000,
        3,
        voter,
        right,
    );
    let exact = accuracy(
        DecisionOptions {
            normalise: Normalise::Text,
            ..DecisionOptions::default()
        },
        &voters(7),
        10_000,
        3,
        voter,
        right,
    );
    let expected = binomial_at_least(7, 4, 0.6);
    assert!(
        (similarity - expected).abs() <= 0.015,
        "similarity {similarity}, binomial {expected}"
    );
    assert!(exact < expected - 0.2, "exact match {exact}");
}

// ---- properties ----

/// What a byzantine voter does.
#[derive(Clone, Debug)]
enum Fault {
    /// Votes this value, consistently.
    Lie(u8),
    /// Votes one value, then another.
    Equivocate(u8, u8),
    Silent,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u8..4).prop_map(Fault::Lie),
        (0u8..4, 1u8..4).prop_map(|(x, d)| Fault::Equivocate(x, (x + d) % 4)),
        Just(Fault::Silent),
    ]
}

/// The ballots of `honest` values (voters 0..) and `faults` (the voters after), shuffled by
/// `seed`; equivocators' pairs stay together when `adjacent`.
fn bft_ballots(honest: &[u8], faults: &[Fault], seed: u64, adjacent: bool) -> Vec<Ballot> {
    let mut groups: Vec<Vec<Ballot>> = honest
        .iter()
        .enumerate()
        .map(|(i, v)| vec![vote(i as u32, &v.to_string())])
        .collect();
    for (j, f) in faults.iter().enumerate() {
        let i = (honest.len() + j) as u32;
        match f {
            Fault::Lie(v) => groups.push(vec![vote(i, &v.to_string())]),
            Fault::Equivocate(x, y) if adjacent => {
                groups.push(vec![vote(i, &x.to_string()), vote(i, &y.to_string())]);
            }
            Fault::Equivocate(x, y) => {
                groups.push(vec![vote(i, &x.to_string())]);
                groups.push(vec![vote(i, &y.to_string())]);
            }
            Fault::Silent => {}
        }
    }
    groups.shuffle(&mut SmallRng::seed_from_u64(seed));
    groups.into_iter().flatten().collect()
}

/// Casts `ballots` one millisecond apart, then expires the decision if it is still open.
fn run(options: DecisionOptions, n: u32, ballots: &[Ballot]) -> Arc<Outcome> {
    let mut d = new(options, n);
    for (t, b) in ballots.iter().enumerate() {
        match d.cast(b.clone(), ms(t as u64)) {
            Ok(Progress::Done(outcome)) => return outcome,
            Ok(Progress::Pending) => {}
            Ok(other) => panic!("{other:?}"),
            Err(Refused::Duplicate { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    loop {
        match d.expire(d.deadline().expect("open")) {
            Progress::Done(outcome) => return outcome,
            Progress::NextRound { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

fn result(outcome: &Outcome) -> Result<Arc<str>, Reason> {
    match outcome {
        Outcome::Decided { winner, .. } => Ok(winner.value.clone()),
        Outcome::Failed { reason, .. } => Err(*reason),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bft_with_at_most_f_faults_decides_only_what_honest_voters_chose(
        f in 1u32..5,
        extra in 0u32..3,
        agree in any::<bool>(),
        values in prop::collection::vec(0u8..3, 20),
        faults in prop::collection::vec(fault(), 0..5),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let n = 3 * f + 1 + extra;
        let faults = &faults[..faults.len().min(f as usize)];
        let honest: Vec<u8> = (0..n as usize - faults.len())
            .map(|i| if agree { 7 } else { values[i % values.len()] })
            .collect();
        let options = DecisionOptions::with(Protocol::Bft);
        let ballots = bft_ballots(&honest, faults, seeds.0, false);
        let outcome = run(options, n, &ballots);
        if let Some(w) = outcome.winner() {
            let backers = honest.iter().filter(|v| v.to_string() == *w.value).count();
            prop_assert!(backers > f as usize, "{} honest backers of {}", backers, w.value);
        }
        if agree {
            prop_assert_eq!(result(&outcome), Ok(Arc::from("7")), "the honest voters agree");
        }
        prop_assert_eq!(&run(options, n, &ballots), &outcome, "a replay is the same");
        let other = run(options, n, &bft_ballots(&honest, faults, seeds.1, false));
        let equivocation = faults.iter().any(|f| matches!(f, Fault::Equivocate(..)));
        if !equivocation {
            prop_assert_eq!(result(&other), result(&outcome), "order does not matter");
        } else if let (Ok(x), Ok(y)) = (result(&other), result(&outcome)) {
            prop_assert_eq!(x, y, "no two orders decide different values");
        }
    }

    #[test]
    fn bft_with_more_than_f_seen_faults_refuses(
        f in 1u32..5,
        faulty in 1u32..20,
        kinds in prop::collection::vec((any::<bool>(), 0u8..4, 1u8..4), 20),
        seed in any::<u64>(),
    ) {
        let n = 3 * f + 1;
        let faulty = (f + 1 + faulty % (n - f)).min(n) as usize;
        let faults: Vec<Fault> = kinds[..faulty]
            .iter()
            .map(|&(silent, x, d)| if silent { Fault::Silent } else { Fault::Equivocate(x, (x + d) % 4) })
            .collect();
        let honest = vec![0u8; n as usize - faulty];
        let outcome = run(DecisionOptions::with(Protocol::Bft), n, &bft_ballots(&honest, &faults, seed, true));
        let seen = outcome.record().equivocators.len();
        match result(&outcome) {
            Ok(v) => prop_assert_eq!(&*v, "0", "only the honest value"),
            Err(Reason::TooManyFaults) => {}
            // An equivocator not yet seen looks like a dissenting voter: then no value can
            // get a quorum, which is said as soon as it is certain.
            Err(Reason::NoAgreement) => prop_assert!(seen <= f as usize, "{} equivocators seen", seen),
            Err(other) => prop_assert!(false, "{}", other),
        }
        if faults.iter().all(|f| matches!(f, Fault::Silent)) && outcome.winner().is_none() {
            prop_assert_eq!(outcome.reason(), Some(Reason::TooManyFaults), "silence is seen at the deadline");
        }
    }

    #[test]
    fn fast_takes_a_second_round_exactly_when_the_first_lacks_three_quarters(
        first in prop::collection::vec(prop::option::of(0u8..3), 1..17),
        second in prop::collection::vec(prop::option::of(0u8..3), 17),
    ) {
        let n = first.len() as u32;
        let mut d = new(DecisionOptions::with(Protocol::Fast), n);
        let mut progress = Progress::Pending;
        for (i, v) in first.iter().enumerate() {
            if let Some(v) = v {
                progress = d.cast(vote(i as u32, &v.to_string()), ms(1)).unwrap();
                if progress != Progress::Pending {
                    break;
                }
            }
        }
        if progress == Progress::Pending {
            progress = d.expire(d.deadline().unwrap());
        }
        let most = (0..3u8)
            .map(|v| first.iter().filter(|x| **x == Some(v)).count() as u32)
            .max()
            .unwrap_or(0);
        if 4 * most >= 3 * n {
            let outcome = match progress {
                Progress::Done(o) => o,
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(outcome.record().round, 0);
            let w = outcome.winner().unwrap();
            prop_assert!(4 * w.voters.len() as u32 >= 3 * n);
        } else {
            prop_assert_eq!(progress, Progress::NextRound { round: 1, proposer: None });
            let mut last = Progress::Pending;
            for (i, v) in second[..n as usize].iter().enumerate() {
                if let Some(v) = v {
                    last = d.cast(vote(i as u32, &v.to_string()).in_round(1), ms(3_000)).unwrap();
                    if last != Progress::Pending {
                        break;
                    }
                }
            }
            if last == Progress::Pending {
                last = d.expire(ms(5_000));
            }
            let Progress::Done(outcome) = last else { panic!("{last:?}") };
            prop_assert_eq!(outcome.record().round, 1);
            if let Some(w) = outcome.winner() {
                prop_assert!(2 * w.voters.len() > w.voters.len() + w.dissenters.len());
            }
        }
    }

    #[test]
    fn majority_never_decides_without_more_than_the_threshold(
        weighted in any::<bool>(),
        weights in prop::collection::vec(0u32..7, 1..13),
        choices in prop::collection::vec((prop::option::of(0u8..3), prop::option::of(0u8..3)), 13),
        threshold in prop_oneof![Just(0.5), Just(0.6), Just(2.0 / 3.0), Just(0.75)],
        participation in prop_oneof![Just(0.1), Just(0.5), Just(0.8), Just(1.0)],
        tie in prop_oneof![Just(Tie::Fail), Just(Tie::First)],
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        let n = weights.len();
        // Weights in halves: sums of them are exact in f64.
        let people: Vec<Participant> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Participant::weighted(a(i as u32), f64::from(w) / 2.0 + 0.5))
            .collect();
        let protocol = if weighted { Protocol::Weighted } else { Protocol::Majority };
        let options = DecisionOptions { threshold, participation, tie, ..DecisionOptions::with(protocol) };
        let mut ballots = Vec::new();
        for (i, (first, second)) in choices[..n].iter().enumerate() {
            // An equivocator's two ballots stay in their order: its first is the one counted.
            if let Some(v) = first {
                let mut mine = vec![vote(i as u32, &v.to_string())];
                if let Some(w) = second.filter(|w| w != v) {
                    mine.push(vote(i as u32, &w.to_string()));
                }
                ballots.push(mine);
            }
        }
        let order = |seed: u64| {
            let mut groups = ballots.clone();
            groups.shuffle(&mut SmallRng::seed_from_u64(seed));
            groups.into_iter().flatten().collect::<Vec<_>>()
        };
        let play = |ballots: &[Ballot]| {
            let mut d = Decision::new(options, &people).unwrap();
            for (t, b) in ballots.iter().enumerate() {
                if let Ok(Progress::Done(o)) = d.cast(b.clone(), ms(t as u64)) {
                    return o;
                }
            }
            match d.expire(ms(5_000)) {
                Progress::Done(o) => o,
                other => panic!("{other:?}"),
            }
        };
        let weight = |agent: AgentId| if weighted { people[agent.index()].weight } else { 1.0 };
        let outcome = play(&order(seeds.0));
        let record = outcome.record();
        let counted: Vec<&Recorded> = record.ballots.iter().filter(|b| b.status == Status::Counted).collect();
        let mut seen: Vec<AgentId> = counted.iter().map(|b| b.ballot.voter).collect();
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        prop_assert_eq!(before, seen.len(), "one counted ballot per voter");
        let total: f64 = counted.iter().map(|b| weight(b.ballot.voter)).sum();
        let for_value = |value: &str| -> f64 {
            counted
                .iter()
                .filter(|b| matches!(&b.ballot.vote, Vote::Output(t) if &**t == value))
                .map(|b| weight(b.ballot.voter))
                .sum()
        };
        if let Some(w) = outcome.winner() {
            let mine = for_value(&w.value);
            for v in 0..3u8 {
                let theirs = for_value(&v.to_string());
                if *w.value != *v.to_string() {
                    prop_assert!(theirs <= mine, "a single winner");
                }
            }
            match w.tie_break {
                None => prop_assert!(mine > threshold * total, "{} of {} at {}", mine, total, threshold),
                Some(TieBreak::First) => prop_assert!((0..3u8).any(|v| *w.value != *v.to_string() && for_value(&v.to_string()) == mine)),
                Some(TieBreak::Judge) => prop_assert!(false, "no judge here"),
            }
            let mut everyone: Vec<AgentId> = w.voters.iter().chain(&w.dissenters).copied().collect();
            everyone.sort_unstable();
            prop_assert_eq!(everyone, seen, "voters and dissenters are every counted voter");
            for b in &counted {
                let backs = matches!(&b.ballot.vote, Vote::Output(t) if **t == *w.value);
                prop_assert_eq!(backs, w.voters.contains(&b.ballot.voter));
            }
        }
        if outcome.reason() == Some(Reason::NoQuorum) {
            prop_assert!(record.participation < participation);
        }
        prop_assert_eq!(&play(&order(seeds.0)), &outcome, "a replay is the same");
        prop_assert_eq!(result(&play(&order(seeds.1))), result(&outcome), "order does not matter");
    }
}
