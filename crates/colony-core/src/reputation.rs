//! An agent's reputation: a quality score from 0 to 1, sans-IO.
//!
//! Two kinds of evidence move it: the checks of its work (an attempt that succeeded, output
//! checks included, is good; one that failed on its own account, by an error, a crash or a
//! timeout, is bad) and its agreement with decided outcomes (a voter counted for the winner
//! is good; a dissenter is bad). A decision that failed says nothing about who was right,
//! and an attempt stopped from outside (a kill, a cancellation) nothing about the agent.
//!
//! The score starts at [`Reputation::PRIOR`] and is the mean of the prior and the evidence
//! while there is little (the prior counting as one observation), then a moving average
//! with weight [`Reputation::ALPHA`] on the newest, so that an agent that got worse is seen
//! within tens of observations, whatever its past. Weighted votes may use it as the voter's
//! weight (`colony_runtime::decision::Vote::reputation`), and tasks marked hard go to the
//! best-reputed worker with room (`LiveTree::best_worker`).

use serde::Serialize;

/// One agent's quality score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Reputation {
    score: f64,
    observations: u32,
}

impl Default for Reputation {
    fn default() -> Self {
        Self {
            score: Self::PRIOR,
            observations: 0,
        }
    }
}

impl Reputation {
    /// The score of an agent nothing is known of.
    pub const PRIOR: f64 = 0.5;
    /// The weight of the newest observation once there are enough: about the last 20
    /// observations carry most of the score.
    pub const ALPHA: f64 = 0.1;

    pub fn new() -> Self {
        Self::default()
    }

    /// One more piece of evidence: good (a check passed, an agreement) or bad.
    pub fn observe(&mut self, good: bool) {
        // The running mean with the prior as one observation, until that weighs less than
        // ALPHA: then the moving average.
        let weight = (1.0 / (f64::from(self.observations) + 2.0)).max(Self::ALPHA);
        let x = if good { 1.0 } else { 0.0 };
        self.score += weight * (x - self.score);
        self.observations = self.observations.saturating_add(1);
    }

    /// From 0 (always wrong) to 1 (always right).
    pub fn score(&self) -> f64 {
        self.score
    }

    /// Pieces of evidence seen.
    pub fn observations(&self) -> u32 {
        self.observations
    }

    /// A reputation as it was kept (by a journal, across a restart): `None` when the score
    /// is not a number from 0 to 1.
    pub fn restore(score: f64, observations: u32) -> Option<Self> {
        (0.0..=1.0).contains(&score).then_some(Self {
            score,
            observations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_kept_reputation_goes_on_where_it_stood() {
        let mut r = Reputation::new();
        for good in [true, true, false, true, true, true] {
            r.observe(good);
        }
        let mut kept = Reputation::restore(r.score(), r.observations()).unwrap();
        assert_eq!(kept, r);
        r.observe(false);
        kept.observe(false);
        assert_eq!(kept, r);
        assert_eq!(Reputation::restore(f64::NAN, 1), None);
        assert_eq!(Reputation::restore(1.5, 1), None);
    }

    #[test]
    fn it_starts_at_the_prior_and_averages_with_it_while_evidence_is_thin() {
        let mut r = Reputation::new();
        assert_eq!((r.score(), r.observations()), (0.5, 0));
        r.observe(true);
        assert!((r.score() - 0.75).abs() < 1e-12, "(0.5 + 1) / 2");
        r.observe(false);
        assert!((r.score() - 0.5).abs() < 1e-12, "(0.5 + 1 + 0) / 3");
        r.observe(true);
        assert!((r.score() - 0.625).abs() < 1e-12, "(0.5 + 1 + 0 + 1) / 4");
        assert_eq!(r.observations(), 3);
    }

    #[test]
    fn an_agent_that_got_worse_is_seen_whatever_its_past() {
        let mut r = Reputation::new();
        for _ in 0..10_000 {
            r.observe(true);
        }
        assert!(r.score() > 0.99);
        for _ in 0..20 {
            r.observe(false);
        }
        assert!(r.score() < 0.15, "{}", r.score());
    }

    #[test]
    fn a_better_agent_scores_higher() {
        // Right 90 % and 60 % of the time, in the same seeded order.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 1_000) as f64 / 1_000.0
        };
        let (mut good, mut fair) = (Reputation::new(), Reputation::new());
        let (mut sum_good, mut sum_fair) = (0.0, 0.0);
        for i in 0..5_000 {
            let draw = next();
            good.observe(draw < 0.9);
            fair.observe(draw < 0.6);
            if i >= 1_000 {
                sum_good += good.score();
                sum_fair += fair.score();
            }
        }
        let (mean_good, mean_fair) = (sum_good / 4_000.0, sum_fair / 4_000.0);
        assert!((mean_good - 0.9).abs() < 0.03, "{mean_good}");
        assert!((mean_fair - 0.6).abs() < 0.03, "{mean_fair}");
    }

    proptest! {
        #[test]
        fn the_score_stays_between_0_and_1(evidence in proptest::collection::vec(any::<bool>(), 0..500)) {
            let mut r = Reputation::new();
            for good in evidence {
                let before = r.score();
                r.observe(good);
                prop_assert!((0.0..=1.0).contains(&r.score()));
                // Good evidence never lowers it; bad never raises it.
                if good {
                    prop_assert!(r.score() >= before);
                } else {
                    prop_assert!(r.score() <= before);
                }
            }
        }
    }
}
