//! Health of an agent from its answers and its silences, sans-IO.
//!
//! Each agent's [`Health`] keeps a fast moving average of its response times, a slow one as
//! its baseline, a moving error rate and when it was last heard from. Responses and
//! heartbeats feed it; a supervisor's periodic [`Health::sweep`] over its children turns
//! silence into `Failed`. States follow the response-time average: healthy under 2 s,
//! degraded to 5 s, critical above; failed after 10 s without an answer. A predictive alert
//! fires once when the fast average rises 50 % over the baseline, and re-arms when it falls
//! back. The runtime feeds responses, heartbeats and sweeps (see `colony-runtime`'s
//! `dispatcher/health.rs`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Thresholds and smoothing.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HealthOptions {
    /// Response-time average from which an agent is degraded.
    pub degraded_after: Duration,
    /// Response-time average from which an agent is critical.
    pub critical_after: Duration,
    /// Silence after which an agent is failed.
    pub failed_after: Duration,
    /// How often each supervisor sweeps its busy children, and the interval at which agents
    /// working long attempts are expected to beat.
    pub heartbeat: Duration,
    /// Weight of a new sample in the fast average.
    pub alpha: f64,
    /// Weight of a new sample in the baseline.
    pub baseline_alpha: f64,
    /// Alert when the fast average exceeds the baseline by this fraction.
    pub alert_rise: f64,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            degraded_after: Duration::from_secs(2),
            critical_after: Duration::from_secs(5),
            failed_after: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            alpha: 0.3,
            baseline_alpha: 0.02,
            alert_rise: 0.5,
        }
    }
}

/// Settings that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "health thresholds must rise: degraded-after {degraded:?} < critical-after {critical:?} < failed-after {failed:?}"
    )]
    Order {
        degraded: Duration,
        critical: Duration,
        failed: Duration,
    },
    #[error("health {field} {got} is out of range: allowed above 0.0 and up to 1.0")]
    Alpha { field: &'static str, got: f64 },
    #[error("health alert-rise {got} is out of range: allowed above 0.0")]
    Rise { got: f64 },
    #[error(
        "health heartbeat {got:?} is out of range: allowed from 1 ms to failed-after ({failed:?})"
    )]
    Heartbeat { got: Duration, failed: Duration },
}

impl HealthOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.degraded_after < self.critical_after && self.critical_after < self.failed_after)
            || self.degraded_after.is_zero()
        {
            return Err(Error::Order {
                degraded: self.degraded_after,
                critical: self.critical_after,
                failed: self.failed_after,
            });
        }
        for (field, got) in [
            ("alpha", self.alpha),
            ("baseline-alpha", self.baseline_alpha),
        ] {
            if got.is_nan() || got <= 0.0 || got > 1.0 {
                return Err(Error::Alpha { field, got });
            }
        }
        if self.heartbeat < Duration::from_millis(1) || self.heartbeat > self.failed_after {
            return Err(Error::Heartbeat {
                got: self.heartbeat,
                failed: self.failed_after,
            });
        }
        // Written so that NaN is refused too.
        if self.alert_rise.is_nan() || self.alert_rise <= 0.0 {
            return Err(Error::Rise {
                got: self.alert_rise,
            });
        }
        Ok(())
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    #[default]
    Healthy,
    Degraded,
    Critical,
    Failed,
}

/// What changed, for events and metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    State {
        from: HealthState,
        to: HealthState,
    },
    /// The response-time average rose `alert_rise` over the baseline (`health:alert`).
    Alert {
        average: Duration,
        baseline: Duration,
    },
}

/// One agent's health: 24 bytes, so a million agents cost 24 MB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Health {
    state: HealthState,
    alerted: bool,
    /// Seconds; negative until the first response.
    average: f32,
    baseline: f32,
    error_rate: f32,
    /// Nanoseconds since the caller's epoch.
    last_seen: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl Health {
    /// A new agent, heard from at `now`.
    pub fn new(now: Duration) -> Self {
        Self {
            state: HealthState::Healthy,
            alerted: false,
            average: -1.0,
            baseline: -1.0,
            error_rate: 0.0,
            last_seen: now.as_nanos() as u64,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Moving share of failed responses, 0..1.
    pub fn error_rate(&self) -> f64 {
        f64::from(self.error_rate)
    }

    pub fn average(&self) -> Option<Duration> {
        (self.average >= 0.0).then(|| Duration::from_secs_f32(self.average))
    }

    /// The slow moving average of response times the predictive alert compares against.
    pub fn baseline(&self) -> Option<Duration> {
        (self.baseline >= 0.0).then(|| Duration::from_secs_f32(self.baseline))
    }

    /// When the agent was last heard from.
    pub fn last_seen(&self) -> Duration {
        Duration::from_nanos(self.last_seen)
    }

    /// The agent answered a task after `took`; `ok` says whether it succeeded.
    pub fn on_response(
        &mut self,
        took: Duration,
        ok: bool,
        now: Duration,
        o: &HealthOptions,
    ) -> Vec<Change> {
        self.seen(now);
        let x = took.as_secs_f32();
        let ema = |old: f32, a: f64| {
            if old < 0.0 {
                x
            } else {
                old + a as f32 * (x - old)
            }
        };
        self.average = ema(self.average, o.alpha);
        self.baseline = ema(self.baseline, o.baseline_alpha);
        self.error_rate += o.alpha as f32 * (f32::from(u8::from(!ok)) - self.error_rate);
        let mut changes = self.classify(now, o);
        let (average, baseline) = (self.average, self.baseline);
        let rise = o.alert_rise as f32;
        if !self.alerted && baseline > 0.0 && average >= baseline * (1.0 + rise) {
            self.alerted = true;
            changes.push(Change::Alert {
                average: Duration::from_secs_f32(average),
                baseline: Duration::from_secs_f32(baseline),
            });
        } else if self.alerted && average < baseline * (1.0 + rise / 2.0) {
            self.alerted = false;
        }
        changes
    }

    /// A heartbeat: the agent is alive (a long task reports progress this way).
    pub fn on_heartbeat(&mut self, now: Duration, o: &HealthOptions) -> Vec<Change> {
        self.seen(now);
        self.classify(now, o)
    }

    /// The periodic check of a supervisor over its children: silence becomes failure.
    pub fn sweep(&mut self, now: Duration, o: &HealthOptions) -> Vec<Change> {
        self.classify(now, o)
    }

    fn seen(&mut self, now: Duration) {
        self.last_seen = self.last_seen.max(now.as_nanos() as u64);
    }

    fn classify(&mut self, now: Duration, o: &HealthOptions) -> Vec<Change> {
        // Compared in the stored units: this runs for every response.
        let silence = (now.as_nanos() as u64).saturating_sub(self.last_seen);
        let to = if u128::from(silence) >= o.failed_after.as_nanos() {
            HealthState::Failed
        } else if self.average > o.critical_after.as_secs_f32() {
            HealthState::Critical
        } else if self.average >= o.degraded_after.as_secs_f32() {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        };
        let from = std::mem::replace(&mut self.state, to);
        if from == to {
            Vec::new()
        } else {
            vec![Change::State { from, to }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn states_follow_response_times_and_silence() {
        let o = HealthOptions {
            alpha: 1.0,
            ..HealthOptions::default()
        };
        let mut h = Health::new(s(0.0));
        assert!(h.on_response(s(0.5), true, s(1.0), &o).is_empty());
        assert_eq!(
            h.on_response(s(3.0), true, s(2.0), &o)[0],
            Change::State {
                from: HealthState::Healthy,
                to: HealthState::Degraded
            }
        );
        h.on_response(s(6.0), true, s(3.0), &o);
        assert_eq!(h.state(), HealthState::Critical);
        h.on_response(s(0.1), true, s(4.0), &o);
        assert_eq!(h.state(), HealthState::Healthy);
        assert!(
            h.sweep(s(13.9), &o).is_empty(),
            "9.9 s of silence is not 10"
        );
        assert_eq!(
            h.sweep(s(14.0), &o),
            [Change::State {
                from: HealthState::Healthy,
                to: HealthState::Failed
            }]
        );
        h.on_heartbeat(s(15.0), &o);
        assert_eq!(
            h.state(),
            HealthState::Healthy,
            "a heartbeat brings it back"
        );
    }

    #[test]
    fn the_predictive_alert_fires_once_per_rise() {
        let o = HealthOptions::default();
        let mut h = Health::new(s(0.0));
        let mut t = 0.0;
        // Feeds `n` responses of `took` seconds; returns the alerts raised.
        let mut feed = |h: &mut Health, took: f64, n: usize| {
            let mut alerts = 0;
            for _ in 0..n {
                t += 1.0;
                alerts += h
                    .on_response(s(took), true, s(t), &o)
                    .iter()
                    .filter(|c| matches!(c, Change::Alert { .. }))
                    .count();
            }
            alerts
        };
        assert_eq!(feed(&mut h, 0.1, 200), 0, "a steady agent never alerts");
        assert_eq!(
            feed(&mut h, 0.2, 20),
            1,
            "doubling response times alert once"
        );
        assert_eq!(feed(&mut h, 0.1, 200), 0);
        assert_eq!(feed(&mut h, 0.25, 20), 1, "re-armed after recovering");
    }

    #[test]
    fn error_rate_moves_with_failures() {
        let o = HealthOptions::default();
        let mut h = Health::new(s(0.0));
        for i in 0..50 {
            h.on_response(s(0.1), i % 2 == 0, s(f64::from(i)), &o);
        }
        assert!((0.35..0.65).contains(&h.error_rate()), "{}", h.error_rate());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let d = HealthOptions::default();
        let err = |o: HealthOptions| o.validate().unwrap_err().to_string();
        assert!(
            err(HealthOptions {
                critical_after: s(1.0),
                ..d
            })
            .contains("thresholds must rise")
        );
        assert!(err(HealthOptions { alpha: 0.0, ..d }).contains("health alpha 0"));
        assert!(
            err(HealthOptions {
                baseline_alpha: 2.0,
                ..d
            })
            .contains("baseline-alpha 2")
        );
        assert!(
            err(HealthOptions {
                alert_rise: -1.0,
                ..d
            })
            .contains("alert-rise -1")
        );
        assert!(
            err(HealthOptions {
                heartbeat: Duration::ZERO,
                ..d
            })
            .contains("heartbeat 0ns")
        );
        assert!(d.validate().is_ok());
        assert_eq!(std::mem::size_of::<Health>(), 24);
    }
}
