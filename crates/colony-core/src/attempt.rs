//! What happens to a task after one of its attempts ends, sans-IO.
//!
//! The runtime tells [`Policy::decide`] how the attempt ended and what it knows of the task so
//! far; the answer is a [`Verdict`]: commit, fail, cancel, retry after a backoff, dead-letter
//! or quarantine, plus what the failed agent's supervisor must hear. Keeping the decision here
//! rather than in the dispatcher lets every combination be tested exactly, with a seeded
//! generator standing in for the runtime's.
//!
//! ```
//! use colony_core::attempt::{Backoff, Decision, End, Policy, Tally};
//! use colony_core::supervision::Exit;
//! use rand::{SeedableRng, rngs::SmallRng};
//! use std::time::Duration;
//!
//! let policy = Policy {
//!     backoff: Backoff {
//!         initial: Duration::from_millis(10),
//!         max: Duration::from_secs(1),
//!         jitter: 0.0,
//!     },
//!     poison_faults: 3,
//! };
//! let mut rng = SmallRng::seed_from_u64(0);
//! // The second attempt of five crashed its agent: retried after 20 ms, the agent's
//! // supervisor hears of the crash.
//! let tally = Tally { attempt: 2, last_attempt: 5, tries: 2, faults: 0 };
//! let verdict = policy.decide(tally, End::Crashed, false, &mut rng);
//! assert_eq!(verdict.decision, Decision::Retry { after: Duration::from_millis(20) });
//! assert_eq!((verdict.faults, verdict.exit), (1, Some(Exit::Crash)));
//! ```

use crate::supervision::Exit;
use rand::Rng;
use std::time::Duration;

/// How an attempt ended, as the runtime saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Succeeded,
    /// The agent said retrying will not help.
    Fatal,
    /// An error worth retrying.
    Retryable,
    /// The agent panicked.
    Crashed,
    /// The attempt ran past its timeout.
    TimedOut,
    /// Its agent was killed from outside: no fault of the task's.
    Killed,
    /// Its agent went silent while running it: a hang, which counts against the task.
    Silent,
    /// Its agent's supervisor stopped it (a sibling's restart, an escalation): no fault of the
    /// task's.
    Stopped,
    /// The task's cancellation reached the attempt.
    Cancelled,
}

impl End {
    /// Whether the attempt took its agent down (a crash or a hang), which is what makes a task
    /// poison. A kill or a stop came from outside and says nothing about the task.
    fn faulted(self) -> bool {
        matches!(self, End::Crashed | End::TimedOut | End::Silent)
    }
}

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the second attempt; each further retry doubles it, up to `max`. Zero
    /// retries at once.
    pub initial: Duration,
    pub max: Duration,
    /// Each delay moves by up to this fraction of itself, either way, so that tasks failed
    /// together do not come back together. The runtime allows 0.0..=1.0.
    pub jitter: f64,
}

impl Backoff {
    /// Delay before attempt `tries + 1`, after `tries` attempts in this process.
    ///
    /// One draw from `rng`, and only when there is a jitter to draw, so seeded runs replay.
    /// Where `Duration::from_secs_f64` would panic (a jitter above 1.0 taking the delay below
    /// zero, a delay past [`Duration::MAX`]) it saturates to zero or `Duration::MAX`; every
    /// other delay is exactly the float computation's.
    pub fn delay(&self, tries: u32, rng: &mut impl Rng) -> Duration {
        if self.initial.is_zero() {
            return Duration::ZERO;
        }
        // 2^30 times any useful initial delay is past any useful max: the cap keeps the
        // power finite.
        let exponent = tries.saturating_sub(1).min(30) as i32;
        let base = (self.initial.as_secs_f64() * 2f64.powi(exponent)).min(self.max.as_secs_f64());
        let jitter = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        let secs = base * (1.0 + jitter);
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
    }
}

/// How failed attempts are retried, and when a task is poison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub backoff: Backoff,
    /// Faults that make a task poison: a task whose attempts crashed or hung this many agents
    /// is quarantined instead of retried, whatever attempts it has left. The runtime allows 1
    /// and up; 0 would quarantine every failed attempt.
    pub poison_faults: u32,
}

/// What the decision reads of the task: the attempt that ended (the lease), the highest
/// attempt it may reach, attempts started in this process, and attempts that crashed or hung
/// an agent so far (not counting this one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    pub attempt: u32,
    pub last_attempt: u32,
    pub tries: u32,
    pub faults: u32,
}

/// What becomes of the task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// It succeeded: the output is the result.
    Commit,
    /// A fatal error ends the task failed.
    Fail,
    /// The task ends cancelled.
    Cancel,
    /// Queued again after `after` (zero: at once).
    Retry { after: Duration },
    /// Out of attempts.
    DeadLetter,
    /// Poison: its attempts took down `poison_faults` agents.
    Quarantine,
}

/// The decision on a task, and what its agent's supervisor must hear.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    /// The task's fault count after this attempt.
    pub faults: u32,
    /// What the failed agent's supervisor must hear: [`Exit::Crash`] for a crash,
    /// [`Exit::Hang`] for a timeout, nothing otherwise (a silent agent's supervisor already
    /// heard of it from the health sweep; a killed or stopped agent's exit was handled where
    /// it was stopped). Whatever the decision: a crash counts against the agent even when the
    /// task was cancelled meanwhile.
    pub exit: Option<Exit>,
}

impl Policy {
    /// The verdict on the task `tally` describes after its attempt ended by `end`.
    /// `cancel_asked`: the task was cancelled while this attempt ran (or before its retry came
    /// due). `rng` is drawn from only for a retry's jitter.
    pub fn decide(
        &self,
        tally: Tally,
        end: End,
        cancel_asked: bool,
        rng: &mut impl Rng,
    ) -> Verdict {
        let faults = if end.faulted() {
            tally.faults.saturating_add(1)
        } else {
            tally.faults
        };
        let exit = match end {
            End::Crashed => Some(Exit::Crash),
            End::TimedOut => Some(Exit::Hang),
            _ => None,
        };
        let decision = match end {
            // A success that beat the cancellation stands.
            End::Succeeded => Decision::Commit,
            End::Cancelled => Decision::Cancel,
            _ if cancel_asked => Decision::Cancel,
            End::Fatal => Decision::Fail,
            // Retrying a task that keeps taking agents down would only take down more, so
            // poison wins over attempts left, and over none left (it says why it ended).
            _ if faults >= self.poison_faults => Decision::Quarantine,
            _ if tally.attempt < tally.last_attempt => Decision::Retry {
                after: self.backoff.delay(tally.tries, rng),
            },
            _ => Decision::DeadLetter,
        };
        Verdict {
            decision,
            faults,
            exit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngCore, SeedableRng, rngs::SmallRng};

    const ENDS: [End; 9] = [
        End::Succeeded,
        End::Fatal,
        End::Retryable,
        End::Crashed,
        End::TimedOut,
        End::Killed,
        End::Silent,
        End::Stopped,
        End::Cancelled,
    ];

    fn backoff(initial_ms: u64, max_ms: u64, jitter: f64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    #[test]
    fn every_end_cancellation_attempts_and_poison_give_their_exact_verdict() {
        use Decision::{Cancel as C, Commit, DeadLetter as D, Fail, Quarantine as Q};
        let policy = Policy {
            backoff: backoff(10, 1_000, 0.0),
            poison_faults: 3,
        };
        // After 3 tries in this process: 10 ms doubled twice.
        let r = Decision::Retry {
            after: Duration::from_millis(40),
        };
        // Per end: the exit its supervisor hears, whether it counts as a fault, then the
        // decision for cancel asked no/yes × attempts left yes/no × faults before 0 / 2 (one
        // short of poison).
        #[rustfmt::skip]
        let table: [(End, Option<Exit>, u32, [Decision; 8]); 9] = [
            (End::Succeeded, None, 0, [Commit, Commit, Commit, Commit, Commit, Commit, Commit, Commit]),
            (End::Fatal, None, 0, [Fail, Fail, Fail, Fail, C, C, C, C]),
            (End::Retryable, None, 0, [r, r, D, D, C, C, C, C]),
            (End::Crashed, Some(Exit::Crash), 1, [r, Q, D, Q, C, C, C, C]),
            (End::TimedOut, Some(Exit::Hang), 1, [r, Q, D, Q, C, C, C, C]),
            (End::Killed, None, 0, [r, r, D, D, C, C, C, C]),
            (End::Silent, None, 1, [r, Q, D, Q, C, C, C, C]),
            (End::Stopped, None, 0, [r, r, D, D, C, C, C, C]),
            (End::Cancelled, None, 0, [C, C, C, C, C, C, C, C]),
        ];
        let mut rng = SmallRng::seed_from_u64(1);
        for (end, exit, fault, decisions) in table {
            let mut expected = decisions.into_iter();
            for cancel_asked in [false, true] {
                for last_attempt in [5, 2] {
                    for faults in [0, 2] {
                        let tally = Tally {
                            attempt: 2,
                            last_attempt,
                            tries: 3,
                            faults,
                        };
                        let got = policy.decide(tally, end, cancel_asked, &mut rng);
                        let want = Verdict {
                            decision: expected.next().unwrap(),
                            faults: faults + fault,
                            exit,
                        };
                        assert_eq!(got, want, "{end:?} cancel asked {cancel_asked}, {tally:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_task_already_at_its_poison_count_is_quarantined_whatever_failed_it() {
        // A lower poison-faults after a restart finds tasks past it; a kill adds no fault but
        // the count already reached is enough.
        let policy = Policy {
            backoff: backoff(10, 1_000, 0.0),
            poison_faults: 2,
        };
        let tally = Tally {
            attempt: 1,
            last_attempt: 5,
            tries: 1,
            faults: 2,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        for end in [End::Retryable, End::Killed, End::Stopped] {
            let verdict = policy.decide(tally, end, false, &mut rng);
            assert_eq!(verdict.decision, Decision::Quarantine, "{end:?}");
            assert_eq!(verdict.faults, 2);
        }
    }

    #[test]
    fn backoff_doubles_from_the_second_try_and_stops_at_its_cap() {
        let b = backoff(10, 1_000, 0.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let delays: Vec<u128> = [0, 1, 2, 3, 4, 7, 8, 31, 32, u32::MAX]
            .into_iter()
            .map(|tries| b.delay(tries, &mut rng).as_millis())
            .collect();
        assert_eq!(
            delays,
            [10, 10, 20, 40, 80, 640, 1_000, 1_000, 1_000, 1_000]
        );
        // The exponent stops at 30: a tiny initial delay with no cap ends at 2^30 times it.
        let tiny = Backoff {
            initial: Duration::from_nanos(1),
            max: Duration::MAX,
            jitter: 0.0,
        };
        assert_eq!(
            tiny.delay(u32::MAX, &mut rng),
            Duration::from_nanos(1 << 30)
        );
    }

    #[test]
    fn zero_initial_backoff_retries_at_once_and_draws_nothing() {
        let b = backoff(0, 1_000, 0.5);
        let (mut used, mut fresh) = (SmallRng::seed_from_u64(4), SmallRng::seed_from_u64(4));
        for tries in [0, 1, 5, u32::MAX] {
            assert_eq!(b.delay(tries, &mut used), Duration::ZERO);
        }
        assert_eq!(used.next_u64(), fresh.next_u64());
    }

    #[test]
    fn jitter_is_one_draw_scaling_the_delay_within_its_fraction() {
        let b = backoff(100, 1_000, 0.2);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1_000 {
            // The delay is the base times (1 + one draw in -jitter..=jitter), nothing else.
            let draw: f64 = rng.clone().random_range(-0.2..=0.2);
            let delay = b.delay(2, &mut rng);
            assert_eq!(delay, Duration::from_secs_f64(0.2 * (1.0 + draw)));
            assert!(
                (Duration::from_millis(160)..=Duration::from_millis(240)).contains(&delay),
                "{delay:?}"
            );
            seen.insert(delay);
        }
        assert!(seen.len() > 900, "jitter spreads: {} distinct", seen.len());
        // The same seed replays the same delays.
        let replay = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..5).map(|t| b.delay(t, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(replay(3), replay(3));
        assert_ne!(replay(3), replay(4));
    }

    #[test]
    fn delays_past_what_a_duration_holds_saturate_instead_of_panicking() {
        let mut rng = SmallRng::seed_from_u64(5);
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter: 0.0,
        };
        assert_eq!(huge.delay(1, &mut rng), Duration::MAX);
        // A jitter of 3.0 (the runtime refuses above 1.0) scales by 1 + -3..=3, below zero a
        // third of the time: those delays are zero.
        let wild = backoff(10, 1_000, 3.0);
        let delays: Vec<Duration> = (0..200).map(|_| wild.delay(1, &mut rng)).collect();
        assert!(delays.contains(&Duration::ZERO));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(40)));
    }

    fn end() -> impl Strategy<Value = End> {
        (0..ENDS.len()).prop_map(|i| ENDS[i])
    }

    proptest! {
        #[test]
        fn no_retry_past_the_last_attempt_or_poison_and_no_draw_but_a_retrys(
            attempt in 0u32..8,
            last_attempt in 0u32..8,
            tries in 0u32..40,
            faults in 0u32..6,
            poison_faults in 1u32..5,
            end in end(),
            cancel_asked: bool,
            initial_ms in 0u64..50,
            jitter in prop_oneof![Just(0.0), 0.0f64..=1.0],
            seed: u64,
        ) {
            let policy = Policy { backoff: backoff(initial_ms, 1_000, jitter), poison_faults };
            let tally = Tally { attempt, last_attempt, tries, faults };
            let (mut used, mut fresh) = (SmallRng::seed_from_u64(seed), SmallRng::seed_from_u64(seed));
            let verdict = policy.decide(tally, end, cancel_asked, &mut used);
            let retried = matches!(verdict.decision, Decision::Retry { .. });
            if let Decision::Retry { after } = verdict.decision {
                prop_assert!(attempt < last_attempt);
                prop_assert!(verdict.faults < poison_faults);
                // The retry's draw is the backoff's, and nothing else's.
                prop_assert_eq!(after, policy.backoff.delay(tries, &mut fresh));
            }
            if attempt >= last_attempt || verdict.faults >= poison_faults {
                prop_assert!(!retried, "{:?} after {:?}", verdict, tally);
            }
            prop_assert_eq!(used.next_u64(), fresh.next_u64());
        }
    }
}
