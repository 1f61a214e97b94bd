//! The circuit breaker of one agent, sans-IO: health that acts on routing.
//!
//! [`crate::health`] says how an agent is doing; a [`Breaker`] turns that into what routing
//! may send it ([`Admission`]). A critical agent, or one whose error rate reaches
//! [`BreakerOptions::error_rate`], is taken out (the breaker opens) for `open_for`; then it is
//! on probation, one attempt at a time, until `probation` attempts in a row succeed and the
//! breaker closes, or one fails and it opens again for twice as long, up to `max_open_for`.
//! A degraded agent with a closed breaker is only passed over while a healthy sibling can take
//! the task. A failed agent is the supervisor's business (it is stopped and restarted), so the
//! breaker ignores that state.
//!
//! No clock: `now` is a [`Duration`] since the caller's epoch, and the caller arms a timer at
//! [`Breaker::reopens_at`] and calls [`Breaker::on_tick`] when it fires. On the tree, an open
//! breaker is [`LiveTree::set_sidelined`](crate::tree::LiveTree::set_sidelined), probation is
//! [`LiveTree::set_probation`](crate::tree::LiveTree::set_probation) and a degraded agent is
//! [`LiveTree::set_reduced`](crate::tree::LiveTree::set_reduced).
//!
//! ```
//! use colony_core::breaker::{Admission, Breaker, BreakerOptions, OpenReason, Transition};
//! use colony_core::health::HealthState;
//! use std::time::Duration;
//!
//! let o = BreakerOptions::default();
//! let mut b = Breaker::new();
//! let t = Duration::from_secs;
//! assert_eq!(
//!     b.on_health(HealthState::Healthy, 0.6, t(0), &o),
//!     Some(Transition::Opened { reason: OpenReason::ErrorRate })
//! );
//! assert_eq!(b.admission(HealthState::Healthy), Admission::None);
//! assert_eq!(b.reopens_at(), Some(t(5)));
//! assert_eq!(b.on_tick(t(5), &o), Some(Transition::Probation));
//! assert_eq!(b.admission(HealthState::Healthy), Admission::Probe);
//! b.on_result(true, t(6), &o);
//! b.on_result(true, t(7), &o);
//! assert_eq!(b.on_result(true, t(8), &o), Some(Transition::Closed));
//! assert_eq!(b.admission(HealthState::Degraded), Admission::Reduced);
//! ```

use crate::health::HealthState;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a breaker opens and how it lets its agent back.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BreakerOptions {
    /// Error rate (0..1, as [`Health::error_rate`](crate::health::Health::error_rate) reports
    /// it) at or above which the breaker opens.
    pub error_rate: f64,
    /// How long an open breaker keeps the agent out before probation; doubled each time it
    /// reopens from probation, up to `max_open_for`.
    pub open_for: Duration,
    /// Longest an open breaker keeps the agent out.
    pub max_open_for: Duration,
    /// Successful attempts in probation that close the breaker; one failure there reopens it.
    pub probation: u32,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            error_rate: 0.5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            probation: 3,
        }
    }
}

/// Settings that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("breaker error-rate {got} is out of range: allowed above 0.0 and up to 1.0")]
    ErrorRate { got: f64 },
    #[error("breaker open-for {got:?} is out of range: allowed more than 0 s")]
    OpenFor { got: Duration },
    #[error("breaker max-open-for {got:?} is out of range: allowed from open-for ({open_for:?})")]
    MaxOpenFor { got: Duration, open_for: Duration },
    #[error("breaker probation {got} is out of range: allowed 1 and more")]
    Probation { got: u32 },
}

impl BreakerOptions {
    pub fn validate(&self) -> Result<(), Error> {
        // Written so that NaN is refused too.
        if !(self.error_rate > 0.0 && self.error_rate <= 1.0) {
            return Err(Error::ErrorRate {
                got: self.error_rate,
            });
        }
        if self.open_for.is_zero() {
            return Err(Error::OpenFor { got: self.open_for });
        }
        if self.max_open_for < self.open_for {
            return Err(Error::MaxOpenFor {
                got: self.max_open_for,
                open_for: self.open_for,
            });
        }
        if self.probation == 0 {
            return Err(Error::Probation {
                got: self.probation,
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// The agent takes tasks as its health allows.
    #[default]
    Closed,
    /// The agent takes nothing until [`Breaker::reopens_at`].
    Open,
    /// The agent takes one attempt at a time until enough succeed.
    Probation,
}

/// What routing may send the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Anything it has room for.
    Full,
    /// Degraded: only when no healthy sibling can take the task.
    Reduced,
    /// Nothing.
    None,
    /// Probation: one attempt at a time.
    Probe,
}

/// A change of [`BreakerState`], for events and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened { reason: OpenReason },
    Probation,
    Closed,
}

/// Why a breaker opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpenReason {
    /// Health reported the agent critical.
    Critical,
    /// The agent's error rate reached [`BreakerOptions::error_rate`].
    ErrorRate,
    /// An attempt failed in probation.
    ProbeFailed,
}

/// The circuit breaker of one agent: 24 bytes, so a million agents cost 24 MB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
    /// Successful attempts so far in probation.
    successes: u32,
    /// While open, nanoseconds since the caller's epoch at which probation starts.
    until: u64,
    /// Nanoseconds the breaker was last opened for, the base of the next doubling; 0 once
    /// closed, when the next opening lasts `open_for`.
    open_for: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The agent's health changed or a sweep or response refreshed it: `state` and
    /// `error_rate` as [`crate::health`] reports them, at `now` (since the caller's epoch).
    /// Only a closed breaker listens: probation is judged by results, and a failed agent is
    /// the supervisor's to restart.
    pub fn on_health(
        &mut self,
        state: HealthState,
        error_rate: f64,
        now: Duration,
        options: &BreakerOptions,
    ) -> Option<Transition> {
        if self.state != BreakerState::Closed {
            return None;
        }
        let reason = match state {
            HealthState::Failed => return None,
            HealthState::Critical => OpenReason::Critical,
            _ if error_rate >= options.error_rate => OpenReason::ErrorRate,
            _ => return None,
        };
        Some(self.open(reason, nanos(options.open_for), now))
    }

    /// An attempt on the agent ended, `ok` or not. Only probation counts results: while
    /// closed the health engine counts errors, and while open the attempts ending are ones
    /// started before it opened.
    pub fn on_result(
        &mut self,
        ok: bool,
        now: Duration,
        options: &BreakerOptions,
    ) -> Option<Transition> {
        if self.state != BreakerState::Probation {
            return None;
        }
        if ok {
            self.successes += 1;
            if self.successes < options.probation {
                return None;
            }
            *self = Self::new();
            return Some(Transition::Closed);
        }
        let doubled = self
            .open_for
            .saturating_mul(2)
            .min(nanos(options.max_open_for))
            .max(nanos(options.open_for));
        Some(self.open(OpenReason::ProbeFailed, doubled, now))
    }

    /// Time passed: an open breaker whose time is up enters probation.
    pub fn on_tick(&mut self, now: Duration, _options: &BreakerOptions) -> Option<Transition> {
        if self.state != BreakerState::Open || nanos(now) < self.until {
            return None;
        }
        self.state = BreakerState::Probation;
        self.successes = 0;
        Some(Transition::Probation)
    }

    /// When an open breaker's time is up (for the caller's timer); `None` unless open.
    pub fn reopens_at(&self) -> Option<Duration> {
        (self.state == BreakerState::Open).then(|| Duration::from_nanos(self.until))
    }

    /// What routing may send the agent, given its `health` now. A closed breaker still
    /// admits nothing to a critical or failed agent: the report that opens the breaker (or
    /// stops the agent) may not have arrived yet.
    pub fn admission(&self, health: HealthState) -> Admission {
        match (self.state, health) {
            (BreakerState::Open, _) => Admission::None,
            (BreakerState::Probation, _) => Admission::Probe,
            (BreakerState::Closed, HealthState::Healthy) => Admission::Full,
            (BreakerState::Closed, HealthState::Degraded) => Admission::Reduced,
            (BreakerState::Closed, HealthState::Critical | HealthState::Failed) => Admission::None,
        }
    }

    fn open(&mut self, reason: OpenReason, for_nanos: u64, now: Duration) -> Transition {
        self.state = BreakerState::Open;
        self.successes = 0;
        self.open_for = for_nanos;
        self.until = nanos(now).saturating_add(for_nanos);
        Transition::Opened { reason }
    }
}

/// Nanoseconds, saturating: u64 holds 584 years.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Critical, Degraded, Failed, Healthy};
    use proptest::prelude::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn opened(reason: OpenReason) -> Option<Transition> {
        Some(Transition::Opened { reason })
    }

    /// A breaker opened at `at` by an error rate of 1.
    fn open_at(at: u64, o: &BreakerOptions) -> Breaker {
        let mut b = Breaker::new();
        assert_eq!(
            b.on_health(Healthy, 1.0, s(at), o),
            opened(OpenReason::ErrorRate)
        );
        b
    }

    #[test]
    fn a_closed_breaker_opens_on_critical_health_or_the_error_rate() {
        let o = BreakerOptions::default();
        let mut b = Breaker::new();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.on_health(Healthy, 0.49, s(1), &o), None);
        assert_eq!(b.on_health(Degraded, 0.0, s(1), &o), None);
        assert_eq!(b.on_health(Healthy, f64::NAN, s(1), &o), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.reopens_at(), None);
        assert_eq!(
            b.on_health(Critical, 0.0, s(1), &o),
            opened(OpenReason::Critical)
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.reopens_at(), Some(s(6)));

        let mut b = Breaker::new();
        assert_eq!(
            b.on_health(Degraded, 0.5, s(2), &o),
            opened(OpenReason::ErrorRate),
            "at the threshold opens"
        );
        assert_eq!(b.reopens_at(), Some(s(7)));
        let mut b = Breaker::new();
        assert_eq!(
            b.on_health(Critical, 0.9, s(2), &o),
            opened(OpenReason::Critical),
            "critical is named first"
        );
    }

    #[test]
    fn failed_health_is_the_supervisors_business() {
        let o = BreakerOptions::default();
        let mut b = Breaker::new();
        assert_eq!(b.on_health(Failed, 1.0, s(1), &o), None);
        assert_eq!(b.state(), BreakerState::Closed);
        let mut b = open_at(0, &o);
        assert_eq!(b.on_health(Failed, 1.0, s(1), &o), None);
        assert_eq!(b.reopens_at(), Some(s(5)));
        b.on_tick(s(5), &o);
        assert_eq!(b.on_health(Failed, 1.0, s(6), &o), None);
        assert_eq!(b.state(), BreakerState::Probation);
    }

    #[test]
    fn a_closed_breaker_ignores_results() {
        let o = BreakerOptions::default();
        let mut b = Breaker::new();
        for i in 0..10 {
            assert_eq!(b.on_result(false, s(i), &o), None);
        }
        assert_eq!(b, Breaker::new());
    }

    #[test]
    fn an_open_breaker_waits_for_its_time_then_enters_probation() {
        let o = BreakerOptions::default();
        let mut b = open_at(10, &o);
        assert_eq!(b.on_tick(s(14), &o), None);
        assert_eq!(b.on_tick(s(15) - Duration::from_nanos(1), &o), None);
        // Neither health nor results end it early, or move its time.
        assert_eq!(b.on_health(Critical, 1.0, s(14), &o), None);
        assert_eq!(b.on_result(true, s(14), &o), None);
        assert_eq!(b.on_result(false, s(14), &o), None);
        assert_eq!(b.reopens_at(), Some(s(15)));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.on_tick(s(15), &o), Some(Transition::Probation));
        assert_eq!(b.state(), BreakerState::Probation);
        assert_eq!(b.reopens_at(), None);
        assert_eq!(b.on_tick(s(100), &o), None, "once");
        let mut late = open_at(10, &o);
        assert_eq!(
            late.on_tick(s(40), &o),
            Some(Transition::Probation),
            "a late tick"
        );
    }

    #[test]
    fn probation_closes_after_enough_successes_and_ignores_health() {
        let o = BreakerOptions::default();
        let mut b = open_at(0, &o);
        b.on_tick(s(5), &o);
        assert_eq!(b.on_result(true, s(6), &o), None);
        assert_eq!(b.on_health(Critical, 1.0, s(6), &o), None);
        assert_eq!(b.on_health(Healthy, 0.9, s(6), &o), None);
        assert_eq!(b.on_result(true, s(7), &o), None);
        assert_eq!(b.state(), BreakerState::Probation);
        assert_eq!(b.on_result(true, s(8), &o), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b, Breaker::new(), "nothing of the episode remains");
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let o = BreakerOptions {
            open_for: s(5),
            max_open_for: s(30),
            ..BreakerOptions::default()
        };
        let mut b = open_at(0, &o);
        let mut now = 5;
        let mut spans = Vec::new();
        for _ in 0..5 {
            assert_eq!(b.on_tick(s(now), &o), Some(Transition::Probation));
            // Successes before the failure do not help.
            b.on_result(true, s(now), &o);
            b.on_result(true, s(now), &o);
            assert_eq!(
                b.on_result(false, s(now), &o),
                opened(OpenReason::ProbeFailed)
            );
            let until = b.reopens_at().unwrap().as_secs();
            spans.push(until - now);
            now = until;
        }
        assert_eq!(spans, [10, 20, 30, 30, 30]);
    }

    #[test]
    fn closing_resets_the_backoff() {
        let o = BreakerOptions {
            probation: 1,
            ..BreakerOptions::default()
        };
        let mut b = open_at(0, &o);
        b.on_tick(s(5), &o);
        b.on_result(false, s(5), &o);
        assert_eq!(b.reopens_at(), Some(s(15)));
        b.on_tick(s(15), &o);
        b.on_result(false, s(15), &o);
        assert_eq!(b.reopens_at(), Some(s(35)));
        b.on_tick(s(35), &o);
        assert_eq!(b.on_result(true, s(36), &o), Some(Transition::Closed));
        assert_eq!(
            b.on_health(Critical, 0.0, s(40), &o),
            opened(OpenReason::Critical)
        );
        assert_eq!(b.reopens_at(), Some(s(45)), "open-for again, not 40 s");
        b.on_tick(s(45), &o);
        b.on_result(false, s(45), &o);
        assert_eq!(b.reopens_at(), Some(s(55)), "and doubling from there");
    }

    #[test]
    fn admission_follows_the_state_and_health() {
        let o = BreakerOptions::default();
        let healths = [Healthy, Degraded, Critical, Failed];
        let admit = |b: &Breaker| healths.map(|h| b.admission(h));
        let mut b = Breaker::new();
        use Admission::{Full, None, Probe, Reduced};
        assert_eq!(admit(&b), [Full, Reduced, None, None]);
        b = open_at(0, &o);
        assert_eq!(admit(&b), [None; 4]);
        b.on_tick(s(5), &o);
        assert_eq!(admit(&b), [Probe; 4]);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let d = BreakerOptions::default();
        let err = |o: BreakerOptions| o.validate().unwrap_err().to_string();
        assert_eq!(
            err(BreakerOptions {
                error_rate: 0.0,
                ..d
            }),
            "breaker error-rate 0 is out of range: allowed above 0.0 and up to 1.0"
        );
        assert!(
            err(BreakerOptions {
                error_rate: f64::NAN,
                ..d
            })
            .contains("error-rate NaN")
        );
        assert!(
            err(BreakerOptions {
                error_rate: 1.5,
                ..d
            })
            .contains("error-rate 1.5")
        );
        assert!(
            BreakerOptions {
                error_rate: 1.0,
                ..d
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            err(BreakerOptions {
                open_for: Duration::ZERO,
                ..d
            }),
            "breaker open-for 0ns is out of range: allowed more than 0 s"
        );
        assert_eq!(
            err(BreakerOptions {
                max_open_for: s(4),
                ..d
            }),
            "breaker max-open-for 4s is out of range: allowed from open-for (5s)"
        );
        assert_eq!(
            err(BreakerOptions { probation: 0, ..d }),
            "breaker probation 0 is out of range: allowed 1 and more"
        );
        assert!(d.validate().is_ok());
        assert_eq!(std::mem::size_of::<Breaker>(), 24);
    }

    #[derive(Clone, Debug)]
    enum Event {
        Health(HealthState, f64),
        Result(bool),
        Tick,
    }

    fn event() -> impl Strategy<Value = Event> {
        let health = prop_oneof![Just(Healthy), Just(Degraded), Just(Critical), Just(Failed)];
        let rate = prop_oneof![0.0f64..=1.0, Just(f64::NAN), Just(-1.0), Just(2.0)];
        prop_oneof![
            (health, rate).prop_map(|(h, r)| Event::Health(h, r)),
            any::<bool>().prop_map(Event::Result),
            Just(Event::Tick),
        ]
    }

    fn options() -> impl Strategy<Value = BreakerOptions> {
        (0.01f64..=1.0, 1u64..10_000, 0u64..100_000, 1u32..6).prop_map(
            |(error_rate, open_ms, extra_ms, probation)| BreakerOptions {
                error_rate,
                open_for: Duration::from_millis(open_ms),
                max_open_for: Duration::from_millis(open_ms + extra_ms),
                probation,
            },
        )
    }

    proptest! {
        #[test]
        fn an_open_breaker_admits_nothing_and_every_change_is_reported(
            o in options(),
            events in prop::collection::vec((event(), 0u64..20_000), 0..200),
        ) {
            prop_assert!(o.validate().is_ok());
            let mut b = Breaker::new();
            let mut now = Duration::ZERO;
            for (e, step_ms) in events {
                now += Duration::from_millis(step_ms);
                let before = b;
                let t = match e {
                    Event::Health(h, r) => b.on_health(h, r, now, &o),
                    Event::Result(ok) => b.on_result(ok, now, &o),
                    Event::Tick => b.on_tick(now, &o),
                };
                let expected = match t {
                    None => before.state(),
                    Some(Transition::Opened { .. }) => BreakerState::Open,
                    Some(Transition::Probation) => BreakerState::Probation,
                    Some(Transition::Closed) => BreakerState::Closed,
                };
                prop_assert_eq!(b.state(), expected, "{:?} after {:?}", t, before);
                prop_assert_eq!(b.reopens_at().is_some(), b.state() == BreakerState::Open);
                if let Some(until) = b.reopens_at() {
                    let span = until.saturating_sub(now);
                    prop_assert!(span <= o.max_open_for, "{:?} past the cap", span);
                    if t.is_some() {
                        prop_assert!(span >= o.open_for);
                    }
                }
                for h in [Healthy, Degraded, Critical, Failed] {
                    let a = b.admission(h);
                    if b.state() == BreakerState::Open {
                        prop_assert_eq!(a, Admission::None);
                    }
                    prop_assert!(!matches!(a, Admission::Full | Admission::Reduced) || b.state() == BreakerState::Closed);
                }
            }
        }
    }
}
