//! How many agents a pool should have, from what the pool shows, with the reason; sans-IO.
//!
//! One [`Scaler`] per pool is shown the pool's [`Signals`] on a period (1-10 s suits) and
//! answers with a [`Decision`]: change the pool to so many agents and why, a step
//! it wanted but did not take and what stopped it, or hold. The caller carries the step out
//! and reports the new size in the next signals; the scaler keeps only when steps were taken
//! and since when the pool has been idle.
//!
//! Four policies, each a [`Policy`] (the presets are seed 001's):
//!
//! - **emergency** ([`Reason::Overload`]): a task has waited `overload-wait` or more. Minds
//!   only its own cooldown.
//! - **reactive** ([`Reason::HighUtilisation`]): busy / capacity is at `high-utilisation` or
//!   above, or tasks queue while every slot is busy.
//! - **predictive** ([`Reason::Forecast`]): a forecast of arrivals (see
//!   [`crate::forecast`]) that has been accurate lately needs more agents than the pool has.
//! - **cost** ([`Reason::LowUtilisation`]): busy / capacity is at `low-utilisation` or below
//!   and nothing queues. The only one that shrinks.
//!
//! The options' `min` and `max` are the pool's only absolute bounds; a policy's `factor`,
//! `max-scale` and `min-scale` size one step, as multiples of the pool's current size, so a
//! pool follows demand over successive steps however far it is from the size it started at.
//! A step is sized by demand. With `per-agent` = capacity / size (the attempts one agent runs
//! at once; 1 when either is 0) and `needed(load)` = ⌈load / (per-agent × high-utilisation)⌉,
//! the agents that run `load` attempts at `high-utilisation`:
//!
//! - emergency and reactive go to `needed(busy + queued)`, but at least ⌈size × factor⌉ (one
//!   factor step) and at most ⌊size × max-scale⌋;
//! - predictive goes straight to what the forecast needs, at most ⌊size × max-scale⌋; its
//!   factor forces no overshoot past that need;
//! - cost goes to ⌊size × factor⌋, but at least ⌈size × min-scale⌉ and no lower than
//!   `needed(busy)`, what a trusted forecast needs, or `min`.
//!
//! Every step moves the pool by at least one agent (a growth step from a pool so small that
//! ⌊size × max-scale⌋ is not above it adds one) and stays within `min`..`max`. The three
//! policies that do not answer to overload wait out their cooldown since the last step any
//! policy took, emergency's included: after a step the signals need time to show its effect,
//! whichever policy took it. Growth wins over shrinking, and a trusted forecast holds the cost
//! policy off the agents it says will be needed.
//!
//! Four corrections answer facts rather than a reading of load, so they neither wait for a
//! cooldown nor start one: a pool at zero with work arriving is activated
//! ([`Reason::Activation`]), a pool outside `min`..`max` is brought back ([`Reason::BelowMin`],
//! [`Reason::AboveMax`]), and a pool that has had no arrivals and nothing queued or running
//! for `idle-after` goes to `min` ([`Reason::Idle`]), to zero when `min` is 0.
//!
//! ```
//! use colony_core::scaling::{Decision, Reason, Scaler, ScalingOptions, Signals};
//! use std::time::Duration;
//!
//! let mut scaler = Scaler::new(ScalingOptions::default()).unwrap();
//! // Nine of ten slots busy: 12 agents would run them at 80 %, but a step is one factor at
//! // least (1.5 × 10) and 2.0 × 10 at most.
//! let busy = Signals { size: 10, busy: 9, capacity: 10, arrivals_per_sec: 3.0, ..Signals::default() };
//! let at = Duration::from_secs(100);
//! assert_eq!(
//!     scaler.decide(&busy, at),
//!     Decision::Scale { from: 10, to: 15, reason: Reason::HighUtilisation },
//! );
//! ```

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How far and how often one policy moves a pool in one step. Factor > 1 grows (emergency,
/// reactive, predictive), < 1 shrinks (cost). The multiples are of the pool's size at the
/// step, not of any earlier size: the options' `min` and `max` are the only absolute bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    /// Growth (above 1, up to 100): the least one emergency or reactive step grows by, to at
    /// least ⌈size × factor⌉ whatever the demand (predictive steps to its forecast's need
    /// instead and does not use it). Shrinking (above 0, below 1): a cost step goes to
    /// ⌊size × factor⌋, or further up for the reasons [`Policy::min_scale`] and
    /// [`ScalingOptions`] give. Every step moves the pool by one agent at least.
    pub factor: f64,
    /// Growth: the most one step grows by, to at most ⌊size × max-scale⌋ (or size + 1 when that
    /// is not above size); at least `factor`, up to 1000. The cost policy does not use it
    /// (1 up to 1000 is accepted).
    pub max_scale: f64,
    /// Shrinking: the most one cost step shrinks by, to at least ⌈size × min-scale⌉; above 0
    /// and up to `factor`. A pool so small that one agent is more than (1 − min-scale) of it is
    /// not shrunk by the cost policy (idling still takes it to `min`). Growth policies do not
    /// use it (0 up to 1 is accepted).
    pub min_scale: f64,
    /// Least time between the last step any policy took and a step of this one (emergency:
    /// between its own steps).
    pub cooldown: Duration,
}

impl Policy {
    /// Seed 001's high-demand-reactive: one step grows to what runs and queues needs, but by
    /// 1.5× at least and 2.0× at most; a minute apart.
    pub const REACTIVE: Policy = Policy {
        factor: 1.5,
        max_scale: 2.0,
        min_scale: 1.0,
        cooldown: Duration::from_secs(60),
    };
    /// Seed 001's predictive-scale-up: one step grows to what the forecast needs, by 1.8× at
    /// most; 30 s apart.
    pub const PREDICTIVE: Policy = Policy {
        factor: 1.3,
        max_scale: 1.8,
        min_scale: 1.0,
        cooldown: Duration::from_secs(30),
    };
    /// Seed 001's cost-optimization: one step shrinks to 0.9×, by one agent at least and to
    /// 0.7× of the pool at most; two minutes apart.
    pub const COST: Policy = Policy {
        factor: 0.9,
        max_scale: 1.0,
        min_scale: 0.7,
        cooldown: Duration::from_secs(120),
    };
    /// Seed 001's emergency: one step grows to what runs and queues needs, but by 2.0× at
    /// least and 3.0× at most; 10 s apart.
    pub const EMERGENCY: Policy = Policy {
        factor: 2.0,
        max_scale: 3.0,
        min_scale: 1.0,
        cooldown: Duration::from_secs(10),
    };
}

/// Bounds, policies and thresholds of one pool's scaling.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScalingOptions {
    /// Fewest agents; 0 lets an idle pool scale to zero. Default 1.
    pub min: u32,
    /// Most agents, at least 1. Default 10 000.
    pub max: u32,
    pub reactive: Policy,
    /// `None` turns predictive scaling off.
    pub predictive: Option<Policy>,
    pub cost: Policy,
    pub emergency: Policy,
    /// Utilisation (busy / capacity, 0..1) at or above which the pool is short: reactive
    /// growth. Default 0.8.
    pub high_utilisation: f64,
    /// Utilisation at or below which it has room to spare: cost shrinking. Default 0.3.
    pub low_utilisation: f64,
    /// Oldest queued task's wait from which the pool is overloaded: emergency growth, which
    /// ignores the other policies' cooldowns (not its own). Default 5 s.
    pub overload_wait: Duration,
    /// A pool idle this long (no arrivals, nothing queued or running) goes to `min` (to zero
    /// when `min` is 0). Default 300 s.
    pub idle_after: Duration,
    /// MAPE (a fraction: 0.2 = 20 %) the forecast must be at or under for the predictive
    /// policy to act. Default 0.2.
    pub max_forecast_error: f64,
}

impl Default for ScalingOptions {
    fn default() -> Self {
        Self {
            min: 1,
            max: 10_000,
            reactive: Policy::REACTIVE,
            predictive: Some(Policy::PREDICTIVE),
            cost: Policy::COST,
            emergency: Policy::EMERGENCY,
            high_utilisation: 0.8,
            low_utilisation: 0.3,
            overload_wait: Duration::from_secs(5),
            idle_after: Duration::from_secs(300),
            max_forecast_error: 0.2,
        }
    }
}

/// Settings that make no sense, with the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("scaling max {got} is out of range: allowed 1 and up")]
    Max { got: u32 },
    #[error("scaling min {got} is out of range: allowed 0 up to max ({max})")]
    Min { got: u32, max: u32 },
    #[error("scaling {field} {got} is out of range: allowed {allowed}")]
    Range {
        field: &'static str,
        got: f64,
        allowed: &'static str,
    },
    #[error("scaling {field} {got:?} is out of range: allowed more than 0 s")]
    Wait { field: &'static str, got: Duration },
}

/// `got` must lie in `low..=high` (`low` itself excluded when `open`); NaN never does.
fn check(
    field: &'static str,
    got: f64,
    (low, open, high): (f64, bool, f64),
    allowed: &'static str,
) -> Result<(), Error> {
    let above = if open { got > low } else { got >= low };
    if above && got <= high {
        Ok(())
    } else {
        Err(Error::Range {
            field,
            got,
            allowed,
        })
    }
}

impl Policy {
    /// `names` are the policy's fields as the error names them; growth policies have a factor
    /// above 1 and a max-scale at least that, the cost policy a factor below 1 and a min-scale
    /// above 0 and at most that.
    fn validate(&self, names: [&'static str; 3], grows: bool) -> Result<(), Error> {
        let [factor, max_scale, min_scale] = names;
        if grows {
            check(
                factor,
                self.factor,
                (1.0, true, 100.0),
                "above 1.0 and up to 100.0",
            )?;
        } else if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(Error::Range {
                field: factor,
                got: self.factor,
                allowed: "above 0.0 and below 1.0",
            });
        }
        check(
            max_scale,
            self.max_scale,
            (1.0, false, 1000.0),
            "1.0 up to 1000.0",
        )?;
        if grows && self.max_scale < self.factor {
            return Err(Error::Range {
                field: max_scale,
                got: self.max_scale,
                allowed: "the policy's factor up to 1000.0",
            });
        }
        if grows {
            check(
                min_scale,
                self.min_scale,
                (0.0, false, 1.0),
                "0.0 up to 1.0",
            )
        } else if self.min_scale > 0.0 && self.min_scale <= self.factor {
            Ok(())
        } else {
            Err(Error::Range {
                field: min_scale,
                got: self.min_scale,
                allowed: "above 0.0 and up to the policy's factor",
            })
        }
    }
}

impl ScalingOptions {
    /// Agents enough for what runs and waits at `high-utilisation`: the size the reactive
    /// policy steps towards.
    pub fn demand(&self, signals: &Signals) -> u32 {
        let load = f64::from(signals.busy) + f64::from(signals.queued);
        agents(ceil(load / (signals.per_agent() * self.high_utilisation)))
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.max == 0 {
            return Err(Error::Max { got: self.max });
        }
        if self.min > self.max {
            return Err(Error::Min {
                got: self.min,
                max: self.max,
            });
        }
        self.reactive.validate(
            [
                "reactive.factor",
                "reactive.max-scale",
                "reactive.min-scale",
            ],
            true,
        )?;
        if let Some(predictive) = &self.predictive {
            predictive.validate(
                [
                    "predictive.factor",
                    "predictive.max-scale",
                    "predictive.min-scale",
                ],
                true,
            )?;
        }
        self.cost
            .validate(["cost.factor", "cost.max-scale", "cost.min-scale"], false)?;
        self.emergency.validate(
            [
                "emergency.factor",
                "emergency.max-scale",
                "emergency.min-scale",
            ],
            true,
        )?;
        check(
            "high-utilisation",
            self.high_utilisation,
            (0.0, true, 1.0),
            "above 0.0 and up to 1.0",
        )?;
        if !(self.low_utilisation >= 0.0 && self.low_utilisation < self.high_utilisation) {
            return Err(Error::Range {
                field: "low-utilisation",
                got: self.low_utilisation,
                allowed: "0.0 up to below high-utilisation",
            });
        }
        for (field, got) in [
            ("overload-wait", self.overload_wait),
            ("idle-after", self.idle_after),
        ] {
            if got.is_zero() {
                return Err(Error::Wait { field, got });
            }
        }
        check(
            "max-forecast-error",
            self.max_forecast_error,
            (0.0, false, f64::MAX),
            "0.0 and up, finite",
        )
    }
}

/// What the engine sees of a pool at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Agents in service.
    pub size: u32,
    /// Attempts running.
    pub busy: u32,
    /// Attempts the pool runs at once: size × concurrency.
    pub capacity: u32,
    /// Tasks waiting for a slot.
    pub queued: u32,
    /// How long the oldest queued task has waited.
    pub oldest_wait: Duration,
    pub arrivals_per_sec: f64,
    /// Not used by any rule yet; carried so that events and metrics of a decision can show it.
    pub p95_wait: Duration,
    /// Forecast arrivals per second over the next horizon, if the caller has one.
    pub forecast_per_sec: Option<f64>,
    /// The forecast's recent MAPE (a fraction); a forecast without one is not trusted.
    pub forecast_error: Option<f64>,
    /// One agent's completions per second at full utilisation, learned by the caller from
    /// completions; 0 = unknown, and then the predictive policy does not act.
    pub per_agent_rate: f64,
}

impl Signals {
    /// Busy / capacity; a pool without capacity is full when anything runs.
    pub fn utilisation(&self) -> f64 {
        if self.capacity == 0 {
            return if self.busy > 0 { 1.0 } else { 0.0 };
        }
        f64::from(self.busy) / f64::from(self.capacity)
    }

    /// Attempts one agent runs at once: capacity / size; 1 when either is 0.
    fn per_agent(&self) -> f64 {
        if self.size == 0 || self.capacity == 0 {
            1.0
        } else {
            f64::from(self.capacity) / f64::from(self.size)
        }
    }

    /// Written so that a NaN rate counts as none.
    fn arriving(&self) -> bool {
        self.arrivals_per_sec > 0.0
    }

    fn idle(&self) -> bool {
        !self.arriving() && self.queued == 0 && self.busy == 0
    }
}

/// Why a step was taken or wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The oldest queued task waited `overload-wait` or more: emergency growth.
    Overload,
    /// Utilisation at or above `high-utilisation`, or tasks queued with every slot busy.
    HighUtilisation,
    /// A trusted forecast needs more agents.
    Forecast,
    /// Utilisation at or below `low-utilisation` with nothing queued: cost shrinking.
    LowUtilisation,
    /// No arrivals and nothing queued or running for `idle-after`.
    Idle,
    /// Work arrived for a pool at zero.
    Activation,
    BelowMin,
    AboveMax,
}

impl Reason {
    /// The reason as events, metrics and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Overload => "overload",
            Reason::HighUtilisation => "high-utilisation",
            Reason::Forecast => "forecast",
            Reason::LowUtilisation => "low-utilisation",
            Reason::Idle => "idle",
            Reason::Activation => "activation",
            Reason::BelowMin => "below-min",
            Reason::AboveMax => "above-max",
        }
    }
}

/// What stopped a wanted step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Blocked {
    /// The policy's cooldown since the last step has not run out.
    Cooldown,
    /// The pool is at `max`.
    AtMax,
    /// The pool cannot shrink: it is at `min`, at what its running attempts need at
    /// `high-utilisation`, or at what a trusted forecast needs; or it is so small that one
    /// agent is more than the cost policy lets a step take ((1 − `min-scale`) of the pool).
    AtMin,
    /// The forecast would grow the pool but its error is above `max-forecast-error`, or
    /// unknown.
    ForecastInaccurate,
}

impl Blocked {
    /// What stopped the step, as events, metrics and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::Cooldown => "cooldown",
            Blocked::AtMax => "at-max",
            Blocked::AtMin => "at-min",
            Blocked::ForecastInaccurate => "forecast-inaccurate",
        }
    }
}

/// What the scaler answers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Change the pool to `to` agents.
    Scale {
        from: u32,
        to: u32,
        reason: Reason,
    },
    /// A step was wanted but not taken.
    Blocked {
        wanted: Reason,
        by: Blocked,
    },
    Hold,
}

/// Slack for products such as 1.1 × 10 = 11.000000000000002, so that they round as written.
const TOLERANCE: f64 = 1e-9;

fn ceil(x: f64) -> f64 {
    (x - TOLERANCE * x.abs().max(1.0)).ceil()
}

fn floor(x: f64) -> f64 {
    (x + TOLERANCE * x.abs().max(1.0)).floor()
}

/// Saturating; NaN becomes 0.
fn agents(x: f64) -> u32 {
    x as u32
}

/// The scaling engine of one pool.
#[derive(Clone, Debug)]
pub struct Scaler {
    options: ScalingOptions,
    /// When a policy (emergency included) last changed the pool; cooldowns run from it.
    last_step: Option<Duration>,
    /// When emergency last did; its own cooldown runs from it.
    last_emergency: Option<Duration>,
    /// Since when the pool has been idle, as of the last decision.
    idle_since: Option<Duration>,
}

impl Scaler {
    /// A scaler for one pool. The policies' multiples are of the pool's size at each step,
    /// and `min` and `max` are its only absolute bounds.
    pub fn new(options: ScalingOptions) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            options,
            last_step: None,
            last_emergency: None,
            idle_since: None,
        })
    }

    pub fn options(&self) -> &ScalingOptions {
        &self.options
    }

    /// Looks at `signals` at `now` and decides. Call it on a period (1-10 s suits); `now`
    /// must not go back. A policy's step is assumed carried out: its time
    /// starts the cooldowns.
    ///
    /// In order: activation; `min`/`max` bounds; the first growth step that can be taken
    /// (emergency, reactive, predictive); else the first growth step wanted, as
    /// [`Decision::Blocked`] (an untrusted forecast excepted); idle; cost shrinking; an
    /// untrusted forecast's block; the cost policy's block; hold.
    pub fn decide(&mut self, signals: &Signals, now: Duration) -> Decision {
        self.idle_since = if signals.idle() {
            self.idle_since.or(Some(now))
        } else {
            None
        };
        let options = &self.options;
        let size = signals.size;
        if size == 0 && (signals.queued > 0 || signals.arriving()) {
            return scale(0, options.min.max(1), Reason::Activation);
        }
        if size > options.max {
            return scale(size, options.max, Reason::AboveMax);
        }
        if size < options.min {
            return scale(size, options.min, Reason::BelowMin);
        }

        let need = self.forecast_need(signals);
        let growth = [
            self.emergency(signals, now),
            self.reactive(signals, now),
            self.predictive(signals, need, now),
        ];
        let growth = growth.iter().flatten();
        if let Some(&step) = growth.clone().find(|d| matches!(d, Decision::Scale { .. })) {
            return self.took(step, now);
        }
        let inaccurate = |d: &&Decision| {
            matches!(
                d,
                Decision::Blocked {
                    by: Blocked::ForecastInaccurate,
                    ..
                }
            )
        };
        if let Some(&blocked) = growth.clone().find(|d| !inaccurate(d)) {
            return blocked;
        }
        let idle_for = self.idle_since.map(|since| now.saturating_sub(since));
        if idle_for.is_some_and(|idle| idle >= options.idle_after) && size > options.min {
            return scale(size, options.min, Reason::Idle);
        }
        let trusted = need.filter(|n| n.trusted).map_or(0, |n| n.agents);
        let shrink = self.cost(signals, trusted, now);
        if let Some(step @ Decision::Scale { .. }) = shrink {
            return self.took(step, now);
        }
        if let Some(&blocked) = growth.clone().find(inaccurate) {
            return blocked;
        }
        shrink.unwrap_or(Decision::Hold)
    }

    /// Records a policy's step.
    fn took(&mut self, step: Decision, now: Duration) -> Decision {
        if let Decision::Scale { reason, .. } = step {
            self.last_step = Some(now);
            if reason == Reason::Overload {
                self.last_emergency = Some(now);
            }
        }
        step
    }

    /// The agents that run `load` attempts at `high-utilisation`, at the signals' attempts per
    /// agent.
    fn needed(&self, signals: &Signals, load: f64) -> u32 {
        agents(ceil(
            load / (signals.per_agent() * self.options.high_utilisation),
        ))
    }

    /// What runs and queues needs.
    fn demand(&self, signals: &Signals) -> u32 {
        self.options.demand(signals)
    }

    fn emergency(&self, signals: &Signals, now: Duration) -> Option<Decision> {
        let overloaded = signals.queued > 0 && signals.oldest_wait >= self.options.overload_wait;
        overloaded.then(|| {
            let policy = &self.options.emergency;
            let to = self.grow_to(signals.size, policy, self.demand(signals), true);
            self.grow(
                signals.size,
                to,
                policy,
                Reason::Overload,
                self.last_emergency,
                now,
            )
        })
    }

    fn reactive(&self, signals: &Signals, now: Duration) -> Option<Decision> {
        // Short of agents, and more are needed than there are (a pool exactly at
        // `high-utilisation` with nothing waiting has what it needs), or tasks wait where no
        // slot is in service at all.
        let short = (signals.utilisation() >= self.options.high_utilisation
            || (signals.queued > 0 && signals.busy >= signals.capacity))
            && (self.demand(signals) > signals.size || signals.capacity == 0);
        short.then(|| {
            let policy = &self.options.reactive;
            let to = self.grow_to(signals.size, policy, self.demand(signals), true);
            self.grow(
                signals.size,
                to,
                policy,
                Reason::HighUtilisation,
                self.last_step,
                now,
            )
        })
    }

    /// Agents the forecast needs, and whether it is trusted; `None` when there is no
    /// predictive policy, no forecast, or no known per-agent rate.
    fn forecast_need(&self, signals: &Signals) -> Option<Need> {
        self.options.predictive?;
        let forecast = signals
            .forecast_per_sec
            .filter(|f| f.is_finite() && *f >= 0.0)?;
        let rate = signals.per_agent_rate;
        if !(rate > 0.0 && rate.is_finite()) {
            return None;
        }
        let agents = agents(ceil(forecast / rate / self.options.high_utilisation));
        // Written so that a NaN error is not trusted.
        let trusted = signals
            .forecast_error
            .is_some_and(|e| e <= self.options.max_forecast_error);
        Some(Need { agents, trusted })
    }

    /// Straight to the need, within one `max-scale` step.
    fn predictive(&self, signals: &Signals, need: Option<Need>, now: Duration) -> Option<Decision> {
        let (policy, need) = (self.options.predictive?, need?);
        if need.agents <= signals.size {
            return None;
        }
        if !need.trusted {
            return Some(Decision::Blocked {
                wanted: Reason::Forecast,
                by: Blocked::ForecastInaccurate,
            });
        }
        let to = self.grow_to(signals.size, &policy, need.agents, false);
        Some(self.grow(
            signals.size,
            to,
            &policy,
            Reason::Forecast,
            self.last_step,
            now,
        ))
    }

    /// Where one growth step of `policy` from `size` goes for `wanted` agents: one agent more
    /// at least, and ⌈size × factor⌉ at least when `by_factor`; ⌊size × max-scale⌋ at most, or
    /// one agent more when that is not above `size`; then `max` at most.
    fn grow_to(&self, size: u32, policy: &Policy, wanted: u32, by_factor: bool) -> u32 {
        let one = size.saturating_add(1);
        let most = agents(floor(f64::from(size) * policy.max_scale)).max(one);
        let least = if by_factor {
            agents(ceil(f64::from(size) * policy.factor)).max(one)
        } else {
            one
        };
        wanted.max(least).min(most).min(self.options.max)
    }

    /// A growth step from `size` to `to`, unless the pool is at `max` or the policy cools
    /// down since `since`.
    fn grow(
        &self,
        size: u32,
        to: u32,
        policy: &Policy,
        reason: Reason,
        since: Option<Duration>,
        now: Duration,
    ) -> Decision {
        if to <= size {
            Decision::Blocked {
                wanted: reason,
                by: Blocked::AtMax,
            }
        } else if cooling(since, policy.cooldown, now) {
            Decision::Blocked {
                wanted: reason,
                by: Blocked::Cooldown,
            }
        } else {
            scale(size, to, reason)
        }
    }

    /// One cost step from the signals' size, no lower than `forecast` (what a trusted forecast
    /// needs) either.
    fn cost(&self, signals: &Signals, forecast: u32, now: Duration) -> Option<Decision> {
        let size = signals.size;
        let spare = signals.utilisation() <= self.options.low_utilisation && signals.queued == 0;
        if size == 0 || !spare {
            return None;
        }
        let policy = &self.options.cost;
        let least = agents(ceil(f64::from(size) * policy.min_scale))
            .max(self.needed(signals, f64::from(signals.busy)))
            .max(forecast)
            .max(self.options.min);
        let step = agents(floor(f64::from(size) * policy.factor)).min(size - 1);
        let to = step.max(least);
        let wanted = Reason::LowUtilisation;
        Some(if to >= size {
            Decision::Blocked {
                wanted,
                by: Blocked::AtMin,
            }
        } else if cooling(self.last_step, policy.cooldown, now) {
            Decision::Blocked {
                wanted,
                by: Blocked::Cooldown,
            }
        } else {
            scale(size, to, wanted)
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Need {
    agents: u32,
    trusted: bool,
}

fn scale(from: u32, to: u32, reason: Reason) -> Decision {
    Decision::Scale { from, to, reason }
}

/// Whether `cooldown` since `since` has not run out at `now`.
fn cooling(since: Option<Duration>, cooldown: Duration, now: Duration) -> bool {
    since.is_some_and(|t| now.saturating_sub(t) < cooldown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use Blocked::{AtMax, AtMin, Cooldown, ForecastInaccurate};
    use Reason::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn scaler() -> Scaler {
        Scaler::new(ScalingOptions::default()).unwrap()
    }

    fn blocked(wanted: Reason, by: Blocked) -> Decision {
        Decision::Blocked { wanted, by }
    }

    /// A pool of `size` agents of one slot each, `busy` of them running.
    fn pool(size: u32, busy: u32) -> Signals {
        Signals {
            size,
            busy,
            capacity: size,
            arrivals_per_sec: 1.0,
            ..Signals::default()
        }
    }

    /// Half busy: neither short nor with room to spare.
    fn steady(size: u32) -> Signals {
        pool(size, size / 2)
    }

    fn overloaded(size: u32) -> Signals {
        Signals {
            queued: 40,
            oldest_wait: secs(6),
            ..pool(size, size)
        }
    }

    /// Half busy, and a forecast of `per_sec` arrivals with error `error`; one agent does one
    /// task per second.
    fn forecast(size: u32, per_sec: f64, error: Option<f64>) -> Signals {
        Signals {
            forecast_per_sec: Some(per_sec),
            forecast_error: error,
            per_agent_rate: 1.0,
            ..steady(size)
        }
    }

    #[test]
    fn presets_are_seed_001s() {
        let p = |factor, max_scale, min_scale, cooldown| Policy {
            factor,
            max_scale,
            min_scale,
            cooldown: secs(cooldown),
        };
        assert_eq!(Policy::REACTIVE, p(1.5, 2.0, 1.0, 60));
        assert_eq!(Policy::PREDICTIVE, p(1.3, 1.8, 1.0, 30));
        assert_eq!(Policy::COST, p(0.9, 1.0, 0.7, 120));
        assert_eq!(Policy::EMERGENCY, p(2.0, 3.0, 1.0, 10));
        let o = ScalingOptions::default();
        assert_eq!((o.min, o.max), (1, 10_000));
        assert_eq!(
            (o.reactive, o.predictive, o.cost, o.emergency),
            (
                Policy::REACTIVE,
                Some(Policy::PREDICTIVE),
                Policy::COST,
                Policy::EMERGENCY
            )
        );
        assert_eq!((o.high_utilisation, o.low_utilisation), (0.8, 0.3));
        assert_eq!((o.overload_wait, o.idle_after), (secs(5), secs(300)));
        assert_eq!(o.max_forecast_error, 0.2);
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn settings_out_of_range_are_refused_with_their_field() {
        let ok = ScalingOptions::default();
        let field = |options: ScalingOptions| match options.validate().unwrap_err() {
            Error::Range { field, .. } | Error::Wait { field, .. } => field,
            Error::Max { .. } => "max",
            Error::Min { .. } => "min",
        };
        let policy = |factor, max_scale, min_scale| Policy {
            factor,
            max_scale,
            min_scale,
            cooldown: secs(1),
        };
        let cases = [
            (
                "max",
                ScalingOptions {
                    min: 0,
                    max: 0,
                    ..ok
                },
            ),
            (
                "min",
                ScalingOptions {
                    min: 5,
                    max: 4,
                    ..ok
                },
            ),
            (
                "reactive.factor",
                ScalingOptions {
                    reactive: policy(1.0, 2.0, 1.0),
                    ..ok
                },
            ),
            (
                "reactive.factor",
                ScalingOptions {
                    reactive: policy(f64::NAN, 2.0, 1.0),
                    ..ok
                },
            ),
            (
                "predictive.max-scale",
                ScalingOptions {
                    predictive: Some(policy(1.3, 0.9, 1.0)),
                    ..ok
                },
            ),
            (
                "reactive.max-scale",
                ScalingOptions {
                    reactive: policy(1.5, 1.4, 1.0),
                    ..ok
                },
            ),
            (
                "emergency.max-scale",
                ScalingOptions {
                    emergency: policy(2.0, 1000.5, 1.0),
                    ..ok
                },
            ),
            (
                "emergency.min-scale",
                ScalingOptions {
                    emergency: policy(2.0, 3.0, 1.5),
                    ..ok
                },
            ),
            (
                "cost.factor",
                ScalingOptions {
                    cost: policy(1.0, 1.0, 0.7),
                    ..ok
                },
            ),
            (
                "cost.factor",
                ScalingOptions {
                    cost: policy(0.0, 1.0, 0.7),
                    ..ok
                },
            ),
            (
                "cost.min-scale",
                ScalingOptions {
                    cost: policy(0.9, 1.0, -0.1),
                    ..ok
                },
            ),
            (
                "cost.min-scale",
                ScalingOptions {
                    cost: policy(0.9, 1.0, 0.0),
                    ..ok
                },
            ),
            (
                "cost.min-scale",
                ScalingOptions {
                    cost: policy(0.9, 1.0, 0.95),
                    ..ok
                },
            ),
            (
                "high-utilisation",
                ScalingOptions {
                    high_utilisation: 0.0,
                    ..ok
                },
            ),
            (
                "high-utilisation",
                ScalingOptions {
                    high_utilisation: 1.01,
                    ..ok
                },
            ),
            (
                "low-utilisation",
                ScalingOptions {
                    low_utilisation: 0.8,
                    ..ok
                },
            ),
            (
                "low-utilisation",
                ScalingOptions {
                    low_utilisation: -0.1,
                    ..ok
                },
            ),
            (
                "overload-wait",
                ScalingOptions {
                    overload_wait: Duration::ZERO,
                    ..ok
                },
            ),
            (
                "idle-after",
                ScalingOptions {
                    idle_after: Duration::ZERO,
                    ..ok
                },
            ),
            (
                "max-forecast-error",
                ScalingOptions {
                    max_forecast_error: f64::INFINITY,
                    ..ok
                },
            ),
        ];
        for (name, options) in cases {
            assert_eq!(field(options), name);
            let message = options.validate().unwrap_err().to_string();
            assert!(
                message.contains(name) && message.contains("allowed"),
                "{message}"
            );
        }
        // Scale to zero, predictive off and the ranges' edges are fine.
        let edges = ScalingOptions {
            min: 0,
            max: 1,
            predictive: None,
            high_utilisation: 1.0,
            low_utilisation: 0.0,
            max_forecast_error: 0.0,
            reactive: policy(1.5, 1.5, 0.0),
            cost: policy(0.5, 1.0, 0.5),
            ..ok
        };
        assert_eq!(edges.validate(), Ok(()));
        assert!(
            Scaler::new(ScalingOptions {
                min: 3,
                max: 2,
                ..ok
            })
            .is_err()
        );
    }

    #[test]
    fn steps_are_relative_to_the_size_at_each_look() {
        let options = ScalingOptions {
            min: 0,
            max: 50,
            ..ScalingOptions::default()
        };
        let t = secs(1_000);
        // The pool grows by what its size at the look allows, and shrinks likewise.
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.options(), &options);
        assert_eq!(s.decide(&pool(20, 20), t), scale(20, 30, HighUtilisation));
        assert_eq!(
            s.decide(&pool(30, 0), t + secs(120)),
            scale(30, 27, LowUtilisation)
        );
        // Whatever it was before, from 20 it shrinks to 18 and from 40 grows up to `max`.
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(20, 0), t), scale(20, 18, LowUtilisation));
        assert_eq!(
            s.decide(&pool(40, 40), t + secs(120)),
            scale(40, 50, HighUtilisation)
        );
    }

    #[test]
    fn work_for_a_pool_at_zero_activates_it_at_once() {
        let options = ScalingOptions {
            min: 0,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        let quiet = Signals::default();
        assert_eq!(s.decide(&quiet, secs(0)), Decision::Hold);
        // A cost step starts the cooldowns; activation does not wait for them.
        assert_eq!(
            s.decide(&pool(4, 0), secs(1)),
            Decision::Scale {
                from: 4,
                to: 3,
                reason: LowUtilisation
            }
        );
        let queued = Signals { queued: 1, ..quiet };
        assert_eq!(s.decide(&queued, secs(2)), scale(0, 1, Activation));
        let arriving = Signals {
            arrivals_per_sec: 0.5,
            ..quiet
        };
        assert_eq!(s.decide(&arriving, secs(2)), scale(0, 1, Activation));
        // With a floor, activation goes straight to it.
        let options = ScalingOptions {
            min: 3,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&queued, secs(0)), scale(0, 3, Activation));
    }

    #[test]
    fn a_pool_outside_its_bounds_is_brought_back_at_once() {
        let options = ScalingOptions {
            min: 2,
            max: 10,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(
            s.decide(&Signals::default(), secs(0)),
            scale(0, 2, BelowMin)
        );
        assert_eq!(s.decide(&pool(1, 1), secs(0)), scale(1, 2, BelowMin));
        assert_eq!(s.decide(&overloaded(25), secs(0)), scale(25, 10, AboveMax));
        // Corrections neither wait for a cooldown nor start one.
        assert_eq!(s.decide(&pool(5, 5), secs(1)), scale(5, 8, HighUtilisation));
        assert_eq!(s.decide(&pool(1, 0), secs(2)), scale(1, 2, BelowMin));
        assert_eq!(
            s.decide(&pool(8, 8), secs(3)),
            blocked(HighUtilisation, Cooldown)
        );
    }

    #[test]
    fn reactive_grows_to_the_demand_between_its_factor_and_max_scale_a_minute_apart() {
        let options = ScalingOptions {
            max: 30,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        let t = secs(1_000);
        // Exactly at 80 %, the pool has what it needs.
        assert_eq!(s.decide(&pool(10, 8), t), Decision::Hold);
        // 9 busy need 12 agents at 80 %, but a step is one factor (1.5 ×) at least.
        assert_eq!(s.decide(&pool(10, 9), t), scale(10, 15, HighUtilisation));
        assert_eq!(
            s.decide(&pool(15, 15), t + secs(59)),
            blocked(HighUtilisation, Cooldown)
        );
        // 13 busy of 15 need 17: ⌈15 × 1.5⌉ = 23.
        assert_eq!(
            s.decide(&pool(15, 13), t + secs(60)),
            scale(15, 23, HighUtilisation)
        );
        // 23 busy need 29, a factor step is 35: `max` caps it, and then blocks.
        assert_eq!(
            s.decide(&pool(23, 23), t + secs(120)),
            scale(23, 30, HighUtilisation)
        );
        assert_eq!(
            s.decide(&pool(30, 30), t + secs(200)),
            blocked(HighUtilisation, AtMax)
        );
        // Under the threshold, nothing is wanted.
        assert_eq!(s.decide(&pool(30, 23), t + secs(300)), Decision::Hold);
        // A queue with every slot busy is short too, even where no slot exists.
        let mut s = scaler();
        let full = Signals {
            queued: 1,
            ..pool(10, 10)
        };
        assert_eq!(s.decide(&full, t), scale(10, 15, HighUtilisation));
        let mut s = scaler();
        let slotless = Signals {
            queued: 1,
            capacity: 0,
            busy: 0,
            ..pool(10, 0)
        };
        assert_eq!(s.decide(&slotless, t), scale(10, 15, HighUtilisation));
        // A step is at least one agent.
        let mut s = scaler();
        assert_eq!(s.decide(&pool(1, 1), t), scale(1, 2, HighUtilisation));
    }

    #[test]
    fn one_reactive_step_is_sized_by_what_runs_and_queues() {
        let t = secs(1_000);
        // 110 attempts need ⌈110 / 0.8⌉ = 138 agents: one step goes to 2.0 × 10.
        let mut s = scaler();
        let flood = Signals {
            queued: 100,
            ..pool(10, 10)
        };
        assert_eq!(s.decide(&flood, t), scale(10, 20, HighUtilisation));
        // 13 attempts need ⌈13 / 0.8⌉ = 17: between 1.5 × 10 and 2.0 × 10, so 17.
        let mut s = scaler();
        let some = Signals {
            queued: 3,
            ..pool(10, 10)
        };
        assert_eq!(s.decide(&some, t), scale(10, 17, HighUtilisation));
        // Two slots an agent: 30 attempts need ⌈30 / (2 × 0.8)⌉ = 19 agents.
        let mut s = scaler();
        let doubled = Signals {
            capacity: 20,
            busy: 20,
            queued: 10,
            ..pool(10, 10)
        };
        assert_eq!(s.decide(&doubled, t), scale(10, 19, HighUtilisation));
    }

    #[test]
    fn a_pool_follows_demand_from_10_to_200_over_successive_steps() {
        // 200 attempts at once, one slot an agent: each look, what the pool runs is busy and
        // the rest queues. Every step doubles the pool (the demand is above 2.0 ×) until `max`.
        let options = ScalingOptions {
            max: 200,
            ..ScalingOptions::default()
        };
        let demand = |size: u32| Signals {
            queued: 200 - size.min(200),
            ..pool(size, size.min(200))
        };
        let mut s = Scaler::new(options).unwrap();
        let (mut size, mut sizes) = (10, vec![10]);
        for minute in 1..20 {
            if let Decision::Scale { from, to, reason } = s.decide(&demand(size), secs(60 * minute))
            {
                assert_eq!((from, reason), (size, HighUtilisation));
                size = to;
                sizes.push(size);
            }
        }
        assert_eq!(sizes, [10, 20, 40, 80, 160, 200]);
        assert_eq!(
            s.decide(&demand(200), secs(3_600)),
            blocked(HighUtilisation, AtMax)
        );
        // Without that `max`, the pool reaches the 250 the demand needs (160 → 250) and holds
        // there, 80 % busy: it has what it needs.
        let mut s = scaler();
        let (mut size, mut sizes) = (10, vec![10]);
        for minute in 1..20 {
            if let Decision::Scale { to, .. } = s.decide(&demand(size), secs(60 * minute)) {
                size = to;
                sizes.push(size);
            }
        }
        assert_eq!(sizes, [10, 20, 40, 80, 160, 250]);
    }

    #[test]
    fn emergency_grows_to_the_demand_between_two_and_three_times_ten_seconds_apart() {
        let options = ScalingOptions {
            max: 100,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        let t = secs(1_000);
        // 10 running and 40 queued need 63: one step goes to 3.0 × 10.
        assert_eq!(s.decide(&overloaded(10), t), scale(10, 30, Overload));
        assert_eq!(
            s.decide(&overloaded(30), t + secs(9)),
            blocked(Overload, Cooldown)
        );
        // 30 and 40 need 88, within 60..=90.
        assert_eq!(
            s.decide(&overloaded(30), t + secs(10)),
            scale(30, 88, Overload)
        );
        // 88 and 40 need 160, less than a factor step (176): `max` caps it, then blocks.
        assert_eq!(
            s.decide(&overloaded(88), t + secs(20)),
            scale(88, 100, Overload)
        );
        assert_eq!(
            s.decide(&overloaded(100), t + secs(30)),
            blocked(Overload, AtMax)
        );
        // A wait just under the threshold is not an overload; reactive is at `max` too.
        let waiting = Signals {
            oldest_wait: secs(4),
            ..overloaded(100)
        };
        assert_eq!(
            s.decide(&waiting, t + secs(35)),
            blocked(HighUtilisation, AtMax)
        );
        // Nothing queued: no overload, whatever the wait says.
        let stale = Signals {
            queued: 0,
            oldest_wait: secs(60),
            ..steady(100)
        };
        assert_eq!(s.decide(&stale, t + secs(40)), Decision::Hold);
        // 300 queued on 10 need 388: 3.0 × 10 at most.
        let mut s = scaler();
        let flood = Signals {
            queued: 300,
            ..overloaded(10)
        };
        assert_eq!(s.decide(&flood, t), scale(10, 30, Overload));
        // One queued task that waited too long: one factor step (2.0 ×) at least.
        let mut s = scaler();
        let one = Signals {
            queued: 1,
            ..overloaded(10)
        };
        assert_eq!(s.decide(&one, t), scale(10, 20, Overload));
    }

    #[test]
    fn emergency_acts_inside_the_reactive_cooldown_and_starts_it() {
        let mut s = scaler();
        let t = secs(1_000);
        assert_eq!(s.decide(&pool(10, 10), t), scale(10, 15, HighUtilisation));
        // 15 running and 40 queued need 69: 3.0 × 15 at most.
        assert_eq!(
            s.decide(&overloaded(15), t + secs(1)),
            scale(15, 45, Overload)
        );
        // Reactive waits its minute from emergency's step, not from its own.
        let short = pool(45, 45);
        assert_eq!(
            s.decide(&short, t + secs(60)),
            blocked(HighUtilisation, Cooldown)
        );
        assert_eq!(
            s.decide(&short, t + secs(61)),
            scale(45, 68, HighUtilisation)
        );
    }

    #[test]
    fn a_trusted_forecast_grows_straight_to_its_need_within_the_predictive_max_scale() {
        let mut s = scaler();
        let t = secs(1_000);
        // 16 arrivals/s at 1 per agent per second, to run at 80 %: 20 agents; 1.8 × 10 at
        // most.
        assert_eq!(
            s.decide(&forecast(10, 16.0, Some(0.1)), t),
            scale(10, 18, Forecast)
        );
        assert_eq!(
            s.decide(&forecast(18, 16.0, Some(0.1)), t + secs(29)),
            blocked(Forecast, Cooldown)
        );
        assert_eq!(
            s.decide(&forecast(18, 16.0, Some(0.2)), t + secs(30)),
            scale(18, 20, Forecast)
        );
        // Enough agents already: nothing wanted.
        assert_eq!(
            s.decide(&forecast(20, 16.0, Some(0.2)), t + secs(60)),
            Decision::Hold
        );
        // Exactly the need, neither one factor step (13) nor max-scale (18): 11.2 arrivals/s
        // need 14; 9.6 need 12.
        let mut s = scaler();
        assert_eq!(
            s.decide(&forecast(10, 11.2, Some(0.0)), t),
            scale(10, 14, Forecast)
        );
        let mut s = scaler();
        assert_eq!(
            s.decide(&forecast(10, 9.6, Some(0.0)), t),
            scale(10, 12, Forecast)
        );
        // `max` caps it, then blocks.
        let options = ScalingOptions {
            max: 16,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(
            s.decide(&forecast(10, 16.0, Some(0.1)), t),
            scale(10, 16, Forecast)
        );
        assert_eq!(
            s.decide(&forecast(16, 16.0, Some(0.1)), t + secs(30)),
            blocked(Forecast, AtMax)
        );
    }

    #[test]
    fn an_untrusted_or_unusable_forecast_does_not_act() {
        let t = secs(1_000);
        let mut s = scaler();
        let inaccurate = blocked(Forecast, ForecastInaccurate);
        assert_eq!(s.decide(&forecast(10, 16.0, Some(0.25)), t), inaccurate);
        assert_eq!(s.decide(&forecast(10, 16.0, None), t), inaccurate);
        assert_eq!(s.decide(&forecast(10, 16.0, Some(f64::NAN)), t), inaccurate);
        for unusable in [
            Signals {
                per_agent_rate: 0.0,
                ..forecast(10, 16.0, Some(0.1))
            },
            Signals {
                forecast_per_sec: None,
                ..forecast(10, 16.0, Some(0.1))
            },
            forecast(10, f64::NAN, Some(0.1)),
        ] {
            assert_eq!(s.decide(&unusable, t), Decision::Hold);
        }
        let off = ScalingOptions {
            predictive: None,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(off).unwrap();
        assert_eq!(s.decide(&forecast(10, 16.0, Some(0.1)), t), Decision::Hold);
        // Anything else acting wins over the untrusted forecast's block.
        let mut s = scaler();
        let short = Signals {
            busy: 10,
            ..forecast(10, 16.0, Some(0.9))
        };
        assert_eq!(s.decide(&short, t), scale(10, 15, HighUtilisation));
        let spare = Signals {
            busy: 1,
            ..forecast(10, 16.0, Some(0.9))
        };
        assert_eq!(
            s.decide(&spare, t + secs(120)),
            scale(10, 9, LowUtilisation)
        );
        // ...but it is reported over the cost policy's own block.
        assert_eq!(
            s.decide(&Signals { size: 9, ..spare }, t + secs(121)),
            inaccurate
        );
    }

    #[test]
    fn cost_shrinks_by_a_tenth_of_the_pool_two_minutes_apart() {
        let mut s = scaler();
        let t = secs(1_000);
        assert_eq!(s.decide(&pool(10, 3), t), scale(10, 9, LowUtilisation));
        assert_eq!(
            s.decide(&pool(9, 2), t + secs(119)),
            blocked(LowUtilisation, Cooldown)
        );
        assert_eq!(
            s.decide(&pool(9, 2), t + secs(120)),
            scale(9, 8, LowUtilisation)
        );
        // A queue means no room to spare, whatever the utilisation.
        let mut s = scaler();
        assert_eq!(
            s.decide(
                &Signals {
                    queued: 1,
                    ..pool(10, 1)
                },
                t
            ),
            Decision::Hold
        );
        // One step is one factor, not one agent, on a large pool: from 100 with 5 running,
        // 90, 81, 72..., until 5 of 15 is above `low-utilisation`.
        let mut s = scaler();
        let (mut size, mut sizes) = (100, vec![100]);
        for step in 0..30 {
            if let Decision::Scale { from, to, reason } =
                s.decide(&pool(size, 5), t + secs(120 * step))
            {
                assert_eq!((from, reason), (size, LowUtilisation));
                size = to;
                sizes.push(size);
            }
        }
        assert_eq!(
            sizes,
            [
                100, 90, 81, 72, 64, 57, 51, 45, 40, 36, 32, 28, 25, 22, 19, 17, 15
            ]
        );
        // At least one agent a step, and (1 - min-scale) of the pool at most: with 0.7, a pool
        // of 3 does not shrink (one agent is a third of it), one of 4 does.
        let mut s = scaler();
        assert_eq!(s.decide(&pool(3, 0), t), blocked(LowUtilisation, AtMin));
        assert_eq!(s.decide(&pool(4, 0), t), scale(4, 3, LowUtilisation));
        // With 0.5, a pool of 2 does, but never below `min`.
        let options = ScalingOptions {
            min: 1,
            cost: Policy {
                min_scale: 0.5,
                ..Policy::COST
            },
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(2, 0), t), scale(2, 1, LowUtilisation));
        assert_eq!(
            s.decide(&pool(1, 0), t + secs(500)),
            blocked(LowUtilisation, AtMin)
        );
    }

    #[test]
    fn cost_never_goes_below_what_runs_needs() {
        // A cost policy that would shrink to 0.3 ×.
        let options = ScalingOptions {
            cost: Policy {
                factor: 0.3,
                min_scale: 0.3,
                ..Policy::COST
            },
            ..ScalingOptions::default()
        };
        let t = secs(1_000);
        // 3 running need ⌈3 / 0.8⌉ = 4, not 3.
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(10, 3), t), scale(10, 4, LowUtilisation));
        // Two slots an agent: 6 running need ⌈6 / (2 × 0.8)⌉ = 4.
        let mut s = Scaler::new(options).unwrap();
        let doubled = Signals {
            capacity: 20,
            busy: 6,
            ..pool(10, 0)
        };
        assert_eq!(s.decide(&doubled, t), scale(10, 4, LowUtilisation));
        // At a `high-utilisation` of 0.35, 1 running needs ⌈1 / 0.35⌉ = 3: a pool of 4 goes
        // to 3, not 2, and one of 3 (spare at a `low-utilisation` of 0.34) cannot shrink.
        let options = ScalingOptions {
            high_utilisation: 0.35,
            ..options
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(4, 1), t), scale(4, 3, LowUtilisation));
        let options = ScalingOptions {
            low_utilisation: 0.34,
            ..options
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(3, 1), t), blocked(LowUtilisation, AtMin));
    }

    #[test]
    fn growth_wins_over_shrinking_and_a_trusted_forecast_holds_cost_off() {
        let t = secs(1_000);
        // Hardly busy, but a trusted forecast needs more: growth.
        let mut s = scaler();
        let coming = Signals {
            busy: 1,
            ..forecast(10, 16.0, Some(0.1))
        };
        assert_eq!(s.decide(&coming, t), scale(10, 18, Forecast));
        // In its cooldown the forecast's growth is still wanted: no shrinking.
        let coming = Signals {
            size: 18,
            capacity: 18,
            ..coming
        };
        assert_eq!(s.decide(&coming, t + secs(20)), blocked(Forecast, Cooldown));
        assert_eq!(s.decide(&coming, t + secs(200)), scale(18, 20, Forecast));
        // A trusted forecast that needs 12 keeps cost from going under 12 (its own step
        // would go to 11 of 13).
        let mut s = scaler();
        let spare = Signals {
            busy: 1,
            ..forecast(13, 9.6, Some(0.1))
        };
        assert_eq!(s.decide(&spare, t), scale(13, 12, LowUtilisation));
        let spare = Signals {
            size: 12,
            capacity: 12,
            ..spare
        };
        assert_eq!(
            s.decide(&spare, t + secs(500)),
            blocked(LowUtilisation, AtMin)
        );
    }

    #[test]
    fn a_pool_idle_long_enough_goes_to_min_even_zero() {
        let options = ScalingOptions {
            min: 0,
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        let idle = |size| Signals {
            size,
            capacity: size,
            ..Signals::default()
        };
        // Idle is low utilisation too: cost trims first, as far as its step allows (a pool of
        // 3 is too small for it).
        assert_eq!(s.decide(&idle(5), secs(0)), scale(5, 4, LowUtilisation));
        assert_eq!(s.decide(&idle(4), secs(150)), scale(4, 3, LowUtilisation));
        // Work at 200 s restarts the idle clock: idle from 201 s, for 300 s at 501 s.
        assert_eq!(s.decide(&pool(3, 1), secs(200)), Decision::Hold);
        assert_eq!(
            s.decide(&idle(3), secs(201)),
            blocked(LowUtilisation, AtMin)
        );
        assert_eq!(
            s.decide(&idle(3), secs(500)),
            blocked(LowUtilisation, AtMin)
        );
        assert_eq!(s.decide(&idle(3), secs(501)), scale(3, 0, Idle));
        assert_eq!(s.decide(&idle(0), secs(502)), Decision::Hold);

        // A running attempt or a queued task is not idle, even without arrivals.
        let mut s = Scaler::new(options).unwrap();
        s.decide(&idle(5), secs(0));
        let running = Signals {
            arrivals_per_sec: 0.0,
            ..pool(4, 1)
        };
        let queued = Signals {
            queued: 1,
            ..idle(3)
        };
        assert_eq!(s.decide(&running, secs(400)), scale(4, 3, LowUtilisation));
        assert_eq!(s.decide(&queued, secs(401)), Decision::Hold);
        assert_eq!(
            s.decide(&idle(3), secs(402)),
            blocked(LowUtilisation, AtMin)
        );
        assert_eq!(
            s.decide(&idle(3), secs(701)),
            blocked(LowUtilisation, AtMin)
        );
        assert_eq!(s.decide(&idle(3), secs(702)), scale(3, 0, Idle));

        // Idle minds no cooldown and starts none; with the default floor it goes to 1.
        let options = ScalingOptions {
            idle_after: secs(60),
            ..ScalingOptions::default()
        };
        let mut s = Scaler::new(options).unwrap();
        assert_eq!(s.decide(&pool(5, 5), secs(0)), scale(5, 8, HighUtilisation));
        assert_eq!(
            s.decide(&idle(8), secs(1)),
            blocked(LowUtilisation, Cooldown)
        );
        assert_eq!(s.decide(&idle(8), secs(61)), scale(8, 1, Idle));
        assert_eq!(
            s.decide(&pool(1, 1), secs(62)),
            scale(1, 2, HighUtilisation)
        );
    }

    /// A pool's scaling policies drawn at random, within their allowed ranges.
    /// Growth: max-scale from the factor up; shrinking: min-scale above 0 up to the factor.
    fn policy(grows: bool) -> impl Strategy<Value = Policy> {
        let factor = if grows { 1.01..3.0 } else { 0.3..0.99 };
        let more = prop_oneof![Just(0.0), 0.0..3.0];
        let share = prop_oneof![Just(1.0), 0.01..=1.0];
        (factor, more, share, 0u64..120).prop_map(move |(factor, more, share, cd)| {
            if grows {
                Policy {
                    factor,
                    max_scale: factor + more,
                    min_scale: share,
                    cooldown: secs(cd),
                }
            } else {
                Policy {
                    factor,
                    max_scale: 1.0 + more,
                    min_scale: factor * share,
                    cooldown: secs(cd),
                }
            }
        })
    }

    fn options() -> impl Strategy<Value = ScalingOptions> {
        (
            (0u32..5, 0u32..40, prop::option::of(policy(true))),
            (policy(true), policy(false), policy(true)),
            (0.5..=1.0, 0.0..0.5, 1u64..20, 1u64..400, 0.0..0.5),
        )
            .prop_map(
                |(
                    (min, extra, predictive),
                    (reactive, cost, emergency),
                    (high, low, wait, idle, error),
                )| {
                    ScalingOptions {
                        min,
                        max: min.max(1) + extra,
                        reactive,
                        predictive,
                        cost,
                        emergency,
                        high_utilisation: high,
                        low_utilisation: low * high,
                        overload_wait: secs(wait),
                        idle_after: secs(idle),
                        max_forecast_error: error,
                    }
                },
            )
    }

    /// One look at the pool: time since the last, then what it shows.
    #[derive(Clone, Debug)]
    struct Look {
        after_ms: u64,
        /// The pool changed under the scaler (agents lost or added by hand).
        resized: Option<u32>,
        /// Nothing arrives, queues or runs, whatever the fields below say.
        quiet: bool,
        concurrency: u32,
        busy_percent: u32,
        queued: u32,
        oldest_wait_ms: u64,
        arrivals: f64,
        forecast: Option<f64>,
        error: Option<f64>,
        rate: f64,
    }

    fn look() -> impl Strategy<Value = Look> {
        (
            (
                0u64..20_000,
                prop::option::weighted(0.05, 0u32..60),
                prop::bool::weighted(0.3),
                1u32..4,
            ),
            (0u32..=120, prop_oneof![Just(0u32), 0u32..50], 0u64..12_000),
            (
                prop_oneof![Just(0.0), 0.0..50.0],
                prop::option::of(0.0..120.0),
            ),
            (prop::option::of(0.0..0.6), prop_oneof![Just(0.0), 0.1..5.0]),
        )
            .prop_map(
                |(
                    (after_ms, resized, quiet, concurrency),
                    (busy_percent, queued, oldest_wait_ms),
                    (arrivals, forecast),
                    (error, rate),
                )| Look {
                    after_ms,
                    resized,
                    quiet,
                    concurrency,
                    busy_percent,
                    queued,
                    oldest_wait_ms,
                    arrivals,
                    forecast,
                    error,
                    rate,
                },
            )
    }

    fn policy_of(options: &ScalingOptions, reason: Reason) -> Option<Policy> {
        match reason {
            Overload => Some(options.emergency),
            HighUtilisation => Some(options.reactive),
            Forecast => options.predictive,
            LowUtilisation => Some(options.cost),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn steps_stay_in_bounds_factors_and_cooldowns(
            options in options(),
            start in 0u32..60,
            looks in prop::collection::vec(look(), 1..150),
        ) {
            prop_assert_eq!(options.validate(), Ok(()));
            let mut s = Scaler::new(options).unwrap();
            let (mut now, mut size) = (Duration::ZERO, start);
            // Last step of any policy, of a policy other than emergency, and of emergency.
            let mut last_policy: Option<Duration> = None;
            let mut last_calm: Option<(Duration, Reason)> = None;
            let mut last_emergency: Option<Duration> = None;
            for look in looks {
                now += Duration::from_millis(look.after_ms);
                if let Some(resized) = look.resized {
                    size = resized;
                }
                let capacity = size * look.concurrency;
                let (busy_percent, queued, arrivals) = if look.quiet {
                    (0, 0, 0.0)
                } else {
                    (look.busy_percent, look.queued, look.arrivals)
                };
                let signals = Signals {
                    size,
                    busy: capacity * busy_percent / 100,
                    capacity,
                    queued,
                    oldest_wait: if queued > 0 { Duration::from_millis(look.oldest_wait_ms) } else { Duration::ZERO },
                    arrivals_per_sec: arrivals,
                    p95_wait: Duration::ZERO,
                    forecast_per_sec: look.forecast,
                    forecast_error: look.error,
                    per_agent_rate: look.rate,
                };
                let Decision::Scale { from, to, reason } = s.decide(&signals, now) else { continue };
                prop_assert_eq!(from, size);
                prop_assert_ne!(from, to);
                prop_assert!((options.min..=options.max).contains(&to), "{} -> {} ({:?})", from, to, reason);
                if let Some(policy) = policy_of(&options, reason) {
                    let at = f64::from(from);
                    if reason == LowUtilisation {
                        // One agent at least, one factor and (1 - min-scale) of the pool at
                        // most, and never below what runs needs at high-utilisation.
                        prop_assert!(to < from);
                        prop_assert!(to >= agents(floor(at * policy.factor)));
                        prop_assert!(to >= agents(ceil(at * policy.min_scale)), "{} -> {}", from, to);
                        let per_agent = if capacity == 0 { 1.0 } else { f64::from(capacity) / at };
                        let running = agents(ceil(f64::from(signals.busy) / (per_agent * options.high_utilisation)));
                        prop_assert!(to >= running, "{} -> {} with {} running", from, to, signals.busy);
                    } else {
                        // max-scale at most (one agent when that is no more than the pool).
                        let most = agents(floor(at * policy.max_scale)).max(from + 1);
                        prop_assert!(to > from);
                        prop_assert!(to <= most, "{} -> {} by {:?}", from, to, reason);
                        if let (Forecast, Some(forecast)) = (reason, signals.forecast_per_sec) {
                            // Straight to the need, not past it.
                            let need = agents(ceil(forecast / signals.per_agent_rate / options.high_utilisation));
                            prop_assert!(to <= need, "{} -> {} for {}", from, to, need);
                        } else {
                            // Emergency and reactive: one factor at least, unless `max` or
                            // max-scale is nearer.
                            let least = agents(ceil(at * policy.factor)).max(from + 1);
                            prop_assert!(to >= least.min(most).min(options.max), "{} -> {} by {:?}", from, to, reason);
                        }
                    }
                    if reason == Overload {
                        prop_assert!(signals.queued > 0 && signals.oldest_wait >= options.overload_wait);
                        if let Some(t) = last_emergency {
                            prop_assert!(now - t >= options.emergency.cooldown);
                        }
                        last_emergency = Some(now);
                    } else {
                        // Every other policy waits out its cooldown since any policy's step,
                        // so two of them are never within the smaller of their cooldowns.
                        if let Some(t) = last_policy {
                            prop_assert!(now - t >= policy.cooldown, "{:?} {:?} after a step", reason, now - t);
                        }
                        if let Some((t, before)) = last_calm {
                            let smaller = policy.cooldown.min(policy_of(&options, before).unwrap().cooldown);
                            prop_assert!(now - t >= smaller);
                        }
                        last_calm = Some((now, reason));
                    }
                    // Inside reactive's cooldown only emergency grows, and only overloaded.
                    if last_policy.is_some_and(|t| now - t < options.reactive.cooldown) && reason != LowUtilisation {
                        prop_assert!(reason == Overload || reason == Forecast);
                        if reason == Overload {
                            prop_assert!(signals.oldest_wait >= options.overload_wait);
                        }
                    }
                    last_policy = Some(now);
                } else {
                    match reason {
                        Activation => prop_assert!(from == 0 && to == options.min.max(1)),
                        BelowMin => prop_assert!(from < options.min && to == options.min),
                        AboveMax => prop_assert!(from > options.max && to == options.max),
                        Idle => prop_assert!(signals.busy == 0 && signals.queued == 0 && to == options.min),
                        _ => unreachable!(),
                    }
                }
                size = to;
            }
        }
    }
}
