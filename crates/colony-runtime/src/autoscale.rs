//! Where a pool is scaled: a task that, on a period, reads each scaled pool's load, feeds its
//! arrivals to a forecaster, asks the pool's [`Scaler`] what size it should have, and resizes
//! the pool through the same [`Handle::set_pool_size`] a person's `PUT /v1/pools` uses.
//!
//! The decisions are `colony-core`'s ([`colony_core::scaling`], [`colony_core::forecast`]);
//! this driver only measures and carries out. What it measures, per pool, between two ticks:
//! the arrival rate (tasks accepted that the pool may run), the backlog (tasks waiting for it)
//! and its age, utilisation (attempts running over what its agents run at once), and one
//! agent's service rate at full utilisation (attempts ended per second over the busy share of
//! its agents, smoothed), which turns a forecast of arrivals into a number of agents.
//!
//! A pool scaled to zero keeps the admission room of its retired agents, so tasks for it are
//! still accepted: they wait, and the first tick that sees them activates the pool. A pool
//! that starts with no agents is given one and has it retired at once, for that room.

use crate::{
    Handle, Pool,
    events::{Event, Kinds},
    shared::PoolLoad,
    spawner::Spawner,
};
use colony_core::{
    forecast::{ForecastOptions, Forecaster},
    scaling::{Blocked, Decision, Reason, Scaler, ScalingOptions, Signals},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When and how far ahead the autoscaler looks. Which pools it scales, and how, is each
/// pool's [`Pool::scaling`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AutoscaleOptions {
    /// Time between two looks at every scaled pool.
    pub every: Duration,
    /// How far ahead the forecast of arrivals reaches (SPEC §7: five minutes).
    pub horizon: Duration,
    pub forecast: ForecastOptions,
}

impl Default for AutoscaleOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(5),
            horizon: Duration::from_secs(300),
            forecast: ForecastOptions::default(),
        }
    }
}

impl AutoscaleOptions {
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: String| Err(crate::Error::Options(what));
        if self.every < Duration::from_millis(10) || self.every > Duration::from_secs(3600) {
            return bad(format!(
                "autoscale every {:?} is out of range: allowed 10ms..=1h",
                self.every
            ));
        }
        if self.horizon < self.every {
            return bad(format!(
                "autoscale horizon {:?} is shorter than its period {:?}",
                self.horizon, self.every
            ));
        }
        self.forecast
            .validate()
            .map_err(|e| crate::Error::Options(e.to_string()))
    }
}

/// Most forecasts one look makes: a horizon of more periods is looked at this many times,
/// evenly spaced (a year at 10 ms would be 3 billion).
const MAX_FORECASTS: usize = 10_000;

/// Weight of the newest sample in the smoothed service rate of one agent.
const RATE_SMOOTHING: f64 = 0.3;

/// One scaled pool: its engine, its forecaster and what the last tick saw.
struct Scaled {
    pool: usize,
    scaler: Scaler,
    forecaster: Forecaster,
    /// Attempts one agent runs at once.
    concurrency: u32,
    last: PoolLoad,
    /// Smoothed attempts one agent ends per second at full utilisation; 0 until measured.
    per_agent_rate: f64,
    /// The step the last look wanted and could not take, if it was blocked.
    blocked: Option<(Reason, Blocked)>,
}

impl Scaled {
    /// What the pool looks like now, from its load and the one `elapsed` earlier.
    fn signals(&mut self, load: &PoolLoad, elapsed: Duration, horizon: Duration) -> Signals {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let arrivals = load.arrivals.saturating_sub(self.last.arrivals);
        let ended = load.ended.saturating_sub(self.last.ended);
        self.forecaster.observe(arrivals as f64);
        // One agent's attempts per second at full utilisation: `concurrency` at a time, each
        // taking the mean time of those that ended in the interval.
        let busy = load
            .busy_time
            .saturating_sub(self.last.busy_time)
            .as_secs_f64();
        if ended > 0 && busy > 0.0 {
            let sample = f64::from(self.concurrency) * ended as f64 / busy;
            self.per_agent_rate = if self.per_agent_rate == 0.0 {
                sample
            } else {
                RATE_SMOOTHING * sample + (1.0 - RATE_SMOOTHING) * self.per_agent_rate
            };
        }
        // What the pool must be ready for: the highest rate the forecast expects before the
        // autoscaler can take another predictive step (its cooldown and one look), within the
        // horizon. The horizon's mean would hide a rise that comes inside it.
        let lead = self
            .scaler
            .options()
            .predictive
            .map_or(horizon, |p| p.cooldown.saturating_add(elapsed))
            .min(horizon);
        let steps = (lead.as_secs_f64() / secs).ceil().max(1.0) as usize;
        let stride = steps.div_ceil(MAX_FORECASTS);
        let forecast_per_sec = (stride..=steps)
            .step_by(stride)
            .map(|k| self.forecaster.predict(k))
            .try_fold(0.0f64, |peak, p| p.map(|p| peak.max(p)))
            .map(|peak| peak / secs);
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        // How long the oldest waiting task has waited is not kept; two bounds of it are. The
        // backlog's age (since none waited) overstates it under steady load, where a task or
        // two wait at every turn's end for microseconds; the time the backlog takes to clear
        // at the pool's present rate (Little's law) says what a task arriving now will wait.
        let ended_per_sec = ended as f64 / secs;
        let wait = if ended_per_sec > 0.0 {
            Duration::from_secs_f64(load.waiting as f64 / ended_per_sec).min(load.waiting_for)
        } else {
            load.waiting_for
        };
        self.last = *load;
        Signals {
            size: clamp(load.agents),
            busy: clamp(load.busy),
            capacity: clamp(load.capacity),
            queued: clamp(load.waiting),
            oldest_wait: wait,
            arrivals_per_sec: arrivals as f64 / secs,
            // Per-pool waits are not sampled; the estimate above stands for them.
            p95_wait: wait,
            forecast_per_sec,
            forecast_error: self.forecaster.mape(),
            per_agent_rate: self.per_agent_rate,
        }
    }
}

/// Starts the autoscaler for the pools that have a scaling policy; nothing when none has.
pub(crate) async fn start(
    handle: &Handle,
    pools: &[Pool],
    options: AutoscaleOptions,
) -> Result<(), crate::Error> {
    let mut scaled = Vec::new();
    for (index, pool) in pools.iter().enumerate() {
        let Some(scaling) = pool.scaling else {
            continue;
        };
        let scaler = Scaler::new(scaling)
            .map_err(|e| crate::Error::Options(format!("pool {index}: {e}")))?;
        let forecaster =
            Forecaster::new(options.forecast).map_err(|e| crate::Error::Options(e.to_string()))?;
        if pool.count == 0 {
            // The room of one agent, for admission while the pool is at zero.
            handle.set_pool_size(index, 1).await?;
            handle.set_pool_size(index, 0).await?;
        }
        handle.set_desired(index, u64::from(pool.count), None, None);
        scaled.push(Scaled {
            pool: index,
            scaler,
            forecaster,
            concurrency: pool.spec.concurrency.max(1),
            last: handle.pool_loads()[index],
            per_agent_rate: 0.0,
            blocked: None,
        });
    }
    if scaled.is_empty() {
        return Ok(());
    }
    Spawner::spawn("autoscaler", run(handle.clone(), scaled, options));
    Ok(())
}

async fn run(handle: Handle, mut scaled: Vec<Scaled>, options: AutoscaleOptions) {
    // tokio's clock: tests with a paused clock scale in virtual time.
    let epoch = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(epoch + options.every, options.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = epoch;
    let metrics =
        crate::metrics::Scaling::register(&scaled.iter().map(|s| s.pool).collect::<Vec<_>>());
    loop {
        // The runtime's stop ends the loop at once, not at the next look: it holds the
        // runtime's shared state (the journal included) while it runs.
        tokio::select! {
            _ = tick.tick() => {}
            () = handle.halted() => return,
        }
        let now = tokio::time::Instant::now();
        let elapsed = now - last;
        last = now;
        let loads = handle.pool_loads();
        for (s, m) in scaled.iter_mut().zip(&metrics) {
            let Some(load) = loads.get(s.pool) else {
                continue;
            };
            let signals = s.signals(load, elapsed, options.horizon);
            let decision = s.scaler.decide(&signals, now - epoch);
            m.observe(&signals, &decision);
            let desired = match decision {
                Decision::Scale { to, .. } => to,
                Decision::Blocked { .. } | Decision::Hold => signals.size,
            };
            handle.set_desired(
                s.pool,
                u64::from(desired),
                signals.forecast_per_sec,
                signals.forecast_error,
            );
            let pool = s.pool as u8;
            match decision {
                Decision::Scale { from, to, reason } => {
                    match handle.set_pool_size(s.pool, u64::from(to)).await {
                        Ok(_) => handle.publish(
                            Kinds::SCALING,
                            Event::PoolScaled {
                                pool,
                                from,
                                to,
                                reason,
                            },
                        ),
                        Err(error) => {
                            tracing::warn!(pool, to, %error, "Scaling a pool failed.");
                        }
                    }
                }
                // Said once per spell, not at every look: an idle pool at its floor is
                // blocked from shrinking at each one. The metrics count every look.
                Decision::Blocked { wanted, by } if s.blocked != Some((wanted, by)) => {
                    handle.publish(Kinds::SCALING, Event::ScaleBlocked { pool, wanted, by });
                }
                Decision::Blocked { .. } | Decision::Hold => {}
            }
            s.blocked = match decision {
                Decision::Blocked { wanted, by } => Some((wanted, by)),
                _ => None,
            };
        }
    }
}

impl Pool {
    /// This pool, scaled by `options` between their bounds.
    pub fn scaled(mut self, options: ScalingOptions) -> Self {
        self.scaling = Some(options);
        self
    }
}

#[cfg(test)]
mod tests;
