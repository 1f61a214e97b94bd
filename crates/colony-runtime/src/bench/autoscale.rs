//! `colony bench autoscale`: one demand trace, a daily cycle compressed to minutes plus
//! bursts, offered three times to a pool of sim agents with real latency: at a static size
//! (the pool's maximum, all the time), scaled by the reactive policies only, and scaled with
//! the predictive policy too. It runs in virtual time (tokio's paused clock), so an hour of
//! trace takes seconds, and every mode sees the same arrivals at the same instants.
//!
//! Each task's wait is measured from its scheduled arrival (admission waits included) until
//! its agent started it: the time from the schedule until the caller holds the completion,
//! less the agents' fixed service time. Agent-seconds are the pool's size summed once a
//! (virtual) second.

use super::{Percentiles, Verdict};
use crate::{AutoscaleOptions, Error, Pool, Runtime, RuntimeOptions, events::Kinds};
use colony_agents::{
    AgentSpec,
    sim::{Latency, Sim, SimOptions},
};
use colony_core::{
    forecast::ForecastOptions,
    hierarchy::Tiers,
    scaling::{Policy, ScalingOptions},
    task::{TaskSpec, TaskState},
};
use colony_journal::MemoryJournal;
use futures::{StreamExt, stream::FuturesUnordered};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;

/// The trace and the pool.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Length of the trace, in virtual minutes.
    pub minutes: f64,
    /// Length of one cycle ("day"), in virtual minutes.
    pub period_minutes: f64,
    /// Arrivals per second at the cycle's low and high points.
    pub base_rate: f64,
    pub peak_rate: f64,
    /// Bursts of an extra half of the peak rate, a minute each, at seeded times.
    pub bursts: u32,
    /// Service time of every task.
    pub task: Duration,
    /// The pool's largest size (the static mode's size).
    pub max_agents: u32,
    /// The autoscaler's period.
    pub every: Duration,
    /// A task waiting longer than this misses its objective.
    pub slo: Duration,
    pub seed: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            minutes: 60.0,
            period_minutes: 15.0,
            base_rate: 20.0,
            peak_rate: 200.0,
            bursts: 3,
            task: Duration::from_millis(500),
            max_agents: 150,
            every: Duration::from_secs(5),
            slo: Duration::from_secs(5),
            seed: 1,
        }
    }
}

/// Granularity of the arrival schedule.
const TICK: Duration = Duration::from_millis(100);
/// Longest trace, in virtual minutes.
pub const MAX_MINUTES: f64 = 24.0 * 60.0;

/// How the pool was sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Static,
    Reactive,
    Predictive,
}

/// One mode's run of the trace.
#[derive(Clone, Debug, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub tasks: u64,
    pub succeeded: u64,
    /// From the scheduled arrival until the task started (its service time taken off).
    pub wait: Percentiles,
    /// Tasks that waited longer than the objective.
    pub slo_misses: u64,
    /// The same for the tasks scheduled after the first two cycles, once the forecast has
    /// the history it needs: where the predictive mode can differ from the reactive one.
    pub warm_wait: Percentiles,
    pub warm_slo_misses: u64,
    pub agent_seconds: f64,
    pub peak_agents: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    /// The autoscaler's decisions by outcome and reason (`up:forecast`, `down:idle`,
    /// `blocked:forecast:cooldown`, ...).
    pub decisions: std::collections::BTreeMap<String, u64>,
    /// The autoscaler's forecast error (MAPE) at the end of the trace, when it made one.
    pub forecast_error: Option<f64>,
    /// Seconds of real time the mode took.
    pub seconds: f64,
}

/// What `colony bench autoscale` measured.
#[derive(Clone, Debug, Serialize)]
pub struct AutoscaleReport {
    pub minutes: f64,
    pub period_minutes: f64,
    pub base_rate: f64,
    pub peak_rate: f64,
    pub bursts: u32,
    pub task_ms: f64,
    pub max_agents: u32,
    pub modes: Vec<ModeReport>,
    /// How much less the predictive mode's p95 wait is than the reactive one's after the
    /// first two cycles (0.5: half).
    pub predictive_wait_cut: f64,
    /// How many more agent-seconds the predictive mode used than the reactive one (0.1: 10 %).
    pub predictive_extra_agent_seconds: f64,
    /// The targets: the cut at least 50 %, the extra at most 10 %, the forecast's error at
    /// most 20 %, every task succeeded in every mode.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Trace {
    /// Checks the settings, naming the first out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Options(what));
        if !(1.0..=MAX_MINUTES).contains(&self.minutes) {
            return bad(format!(
                "{} minutes is out of range: allowed 1..={MAX_MINUTES}",
                self.minutes
            ));
        }
        if !(1.0..=self.minutes).contains(&self.period_minutes) {
            return bad(format!(
                "a period of {} minutes is out of range: allowed 1 up to the trace's {}",
                self.period_minutes, self.minutes
            ));
        }
        if !(0.0..=10_000.0).contains(&self.base_rate)
            || !(self.base_rate..=10_000.0).contains(&self.peak_rate)
            || self.peak_rate <= 0.0
        {
            return bad(format!(
                "rates {} to {} per second are out of range: allowed 0 <= base <= peak <= 10000, peak above 0",
                self.base_rate, self.peak_rate
            ));
        }
        if !(1..=100_000).contains(&self.max_agents) {
            return bad(format!(
                "{} agents is out of range: allowed 1..=100000",
                self.max_agents
            ));
        }
        if self.task.is_zero() || self.task > Duration::from_secs(600) {
            return bad(format!(
                "a task of {:?} is out of range: allowed above 0 up to 10 minutes",
                self.task
            ));
        }
        Ok(())
    }

    /// Arrivals per second at `t` into the trace: the cycle, plus any burst under way.
    fn rate(&self, t: Duration, bursts: &[Duration]) -> f64 {
        let period = self.period_minutes * 60.0;
        let phase = std::f64::consts::TAU * t.as_secs_f64() / period;
        let cycle = self.base_rate + (self.peak_rate - self.base_rate) * (1.0 - phase.cos()) / 2.0;
        let bursting = bursts
            .iter()
            .any(|&b| t >= b && t < b + Duration::from_secs(60));
        cycle + if bursting { self.peak_rate / 2.0 } else { 0.0 }
    }

    /// The pool's options in `mode`.
    fn scaling(&self, mode: Mode) -> Option<ScalingOptions> {
        let options = ScalingOptions {
            min: 1,
            max: self.max_agents,
            predictive: None,
            ..ScalingOptions::default()
        };
        match mode {
            Mode::Static => None,
            Mode::Reactive => Some(options),
            Mode::Predictive => Some(ScalingOptions {
                predictive: Some(Policy::PREDICTIVE),
                ..options
            }),
        }
    }
}

/// Runs the trace in each mode, each on a runtime of its own with a paused clock. Must not be
/// called from inside a tokio runtime.
pub fn autoscale(trace: &Trace) -> Result<AutoscaleReport, Error> {
    trace.validate()?;
    let mut rng = SmallRng::seed_from_u64(trace.seed);
    let length = Duration::from_secs_f64(trace.minutes * 60.0);
    let mut bursts: Vec<Duration> = (0..trace.bursts)
        .map(|_| Duration::from_secs_f64(rng.random_range(0.0..length.as_secs_f64())))
        .collect();
    bursts.sort();
    let mut modes = Vec::new();
    for mode in [Mode::Static, Mode::Reactive, Mode::Predictive] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| Error::Options(format!("no runtime for the bench: {e}")))?;
        modes.push(runtime.block_on(run(trace, mode, &bursts))?);
    }
    let (reactive, predictive) = (&modes[1], &modes[2]);
    // No wait to cut is no cut: 0 against 0 is the same.
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 1.0 };
    let predictive_wait_cut = 1.0 - ratio(predictive.warm_wait.p95_us, reactive.warm_wait.p95_us);
    let predictive_extra_agent_seconds =
        ratio(predictive.agent_seconds, reactive.agent_seconds) - 1.0;
    let mut verdict = Verdict::new();
    for m in &modes {
        verdict.check(m.succeeded == m.tasks, || {
            format!(
                "{:?}: {} of {} tasks succeeded",
                m.mode, m.succeeded, m.tasks
            )
        });
    }
    verdict.check(predictive_wait_cut >= 0.5, || {
        format!(
            "the predictive policy cut the p95 wait by {:.0} % against reactive only: the target is at least 50 %",
            predictive_wait_cut * 100.0
        )
    });
    verdict.check(predictive_extra_agent_seconds <= 0.1, || {
        format!(
            "the predictive policy used {:.0} % more agent-seconds than reactive only: the target is at most 10 %",
            predictive_extra_agent_seconds * 100.0
        )
    });
    match predictive.forecast_error {
        Some(error) => verdict.check(error <= 0.2, || {
            format!(
                "the forecast's error (MAPE) was {:.0} %: the target is at most 20 %",
                error * 100.0
            )
        }),
        None => verdict.check(false, || "the autoscaler made no forecast".into()),
    }
    Ok(AutoscaleReport {
        minutes: trace.minutes,
        period_minutes: trace.period_minutes,
        base_rate: trace.base_rate,
        peak_rate: trace.peak_rate,
        bursts: trace.bursts,
        task_ms: trace.task.as_secs_f64() * 1e3,
        max_agents: trace.max_agents,
        modes,
        predictive_wait_cut,
        predictive_extra_agent_seconds,
        verdict,
    })
}

/// The trace in one mode.
async fn run(trace: &Trace, mode: Mode, bursts: &[Duration]) -> Result<ModeReport, Error> {
    let started = std::time::Instant::now();
    let sim = Sim::new(SimOptions {
        latency: Latency::Fixed { value: trace.task },
        ..SimOptions::default()
    })
    .map_err(|e| Error::Options(e.to_string()))?;
    // Scaled modes start where the cycle starts: enough agents for the base rate.
    let base_need = (trace.base_rate * trace.task.as_secs_f64() / 0.8).ceil() as u32;
    let count = match mode {
        Mode::Static => trace.max_agents,
        _ => base_need.clamp(1, trace.max_agents),
    };
    let mut pool = Pool::new(AgentSpec::new("sim", "worker"), count, Arc::new(sim));
    pool.scaling = trace.scaling(mode);
    let season = (trace.period_minutes * 60.0 / trace.every.as_secs_f64()).round() as usize;
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        // Room to queue a burst at the peak: admission must not be what the policies see.
        queue_capacity: 100_000,
        autoscale: AutoscaleOptions {
            every: trace.every,
            horizon: Duration::from_secs(300).max(trace.every),
            forecast: ForecastOptions {
                season,
                ..ForecastOptions::default()
            },
        },
        ..RuntimeOptions::default()
    };
    let journal = Arc::new(MemoryJournal::forgetting_finished());
    let runtime = Runtime::start(options, vec![pool], journal).await?;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    let length = Duration::from_secs_f64(trace.minutes * 60.0);
    let start = Instant::now();
    let mut waits = Vec::new();
    // The forecast needs two cycles of history; before that, both scaled modes are reactive.
    let warm = start + Duration::from_secs_f64(2.0 * trace.period_minutes * 60.0);
    let (mut warm_waits, mut warm_misses) = (Vec::new(), 0u64);
    let (mut tasks, mut succeeded, mut slo_misses) = (0u64, 0u64, 0u64);
    let (mut agent_seconds, mut peak_agents) = (0.0, 0u64);
    let mut pending = FuturesUnordered::new();
    let mut record = |scheduled: Instant, completion: Result<crate::Completion, Error>| {
        if let Ok(c) = completion
            && c.state == TaskState::Succeeded
        {
            succeeded += 1;
            let wait = scheduled.elapsed().saturating_sub(trace.task);
            if wait > trace.slo {
                slo_misses += 1;
                warm_misses += u64::from(scheduled >= warm);
            }
            waits.push(wait);
            if scheduled >= warm {
                warm_waits.push(wait);
            }
        }
    };
    let (mut at, mut carry, mut ticks) = (Duration::ZERO, 0.0, 0u64);
    while at < length {
        // What ended meanwhile, then the tick's arrivals.
        tokio::select! {
            biased;
            Some((scheduled, done)) = pending.next(), if !pending.is_empty() => {
                record(scheduled, done);
                continue;
            }
            () = tokio::time::sleep_until(start + at) => {}
        }
        carry += trace.rate(at, bursts) * TICK.as_secs_f64();
        let n = carry.floor();
        carry -= n;
        let scheduled = start + at;
        for _ in 0..n as u64 {
            let task = h.submit_notify(TaskSpec::default()).await?;
            tasks += 1;
            pending.push(async move { (scheduled, task.await) });
        }
        ticks += 1;
        if ticks.is_multiple_of(10) {
            let agents = h.pools()[0].1;
            agent_seconds += agents as f64;
            peak_agents = peak_agents.max(agents);
        }
        at += TICK;
    }
    while let Some((scheduled, done)) = pending.next().await {
        record(scheduled, done);
    }
    let forecast_error = h.pool_loads()[0].forecast_error;
    let (mut scale_ups, mut scale_downs) = (0, 0);
    let mut decisions = std::collections::BTreeMap::new();
    while let Some(event) = events.try_recv() {
        let key = match event {
            crate::events::Event::PoolScaled {
                from, to, reason, ..
            } => {
                let up = to > from;
                if up {
                    scale_ups += 1;
                } else {
                    scale_downs += 1;
                }
                format!("{}:{}", if up { "up" } else { "down" }, reason.as_str())
            }
            crate::events::Event::ScaleBlocked { wanted, by, .. } => {
                format!("blocked:{}:{}", wanted.as_str(), by.as_str())
            }
            _ => continue,
        };
        *decisions.entry(key).or_insert(0) += 1;
    }
    runtime.shutdown().await;
    Ok(ModeReport {
        mode,
        tasks,
        succeeded,
        wait: Percentiles::of(waits),
        slo_misses,
        warm_wait: Percentiles::of(warm_waits),
        warm_slo_misses: warm_misses,
        agent_seconds,
        peak_agents,
        scale_ups,
        scale_downs,
        decisions,
        forecast_error,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A protocol-speaking agent that answers each task after its first argument's milliseconds.
const SLEEPER: &str = r#"
import json, sys, time
delay = float(sys.argv[1]) / 1000
print(json.dumps({"type": "hello", "protocol": 1}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    time.sleep(delay)
    print(json.dumps({"type": "result", "id": m["id"], "output": {}}), flush=True)
"#;

/// Longest trace on real processes, in (real) minutes.
pub const MAX_PROCESS_MINUTES: f64 = 30.0;
/// Largest pool of real processes.
pub const MAX_PROCESS_AGENTS: u32 = 500;
/// Between SIGTERM and SIGKILL for the run's processes.
const PROCESS_GRACE: Duration = Duration::from_secs(2);
/// A scaled pool with no work goes to its minimum after this long.
const PROCESS_IDLE_AFTER: Duration = Duration::from_secs(10);

/// What `colony bench autoscale --process` measured: the trace, reactively scaled, on real
/// `process` agents (one Python process per agent), in real time.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub minutes: f64,
    pub tasks: u64,
    pub succeeded: u64,
    /// From the scheduled arrival until the task started (its service time taken off).
    pub wait: Percentiles,
    pub peak_agents: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    /// Most agent processes alive at one sample (once a second).
    pub peak_processes: u64,
    /// Most processes alive beyond the pool's size at one sample: retired agents' processes
    /// finishing their attempts, or in their stop grace.
    pub most_surplus: u64,
    /// After the trace and an idle spell: the pool's size, its agents' processes, and the
    /// child processes of colony still alive (read from /proc; absent without it).
    pub final_agents: u64,
    pub final_processes: u64,
    pub children_left: Option<u64>,
    pub seconds: f64,
    /// Every task succeeded, the pool shrank, and after it no process outlived its agent.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Runs `trace` in real time on a reactively scaled pool of `process` agents (python3 must
/// be on the PATH), then lets the pool idle down to its minimum and counts what is left.
/// Cooldowns are shortened to fit minutes (reactive 5 s, cost 10 s, emergency 2 s; idle
/// after 10 s). Must be called from a multi-threaded tokio runtime.
pub async fn on_processes(trace: &Trace) -> Result<ProcessReport, Error> {
    trace.validate()?;
    if trace.minutes > MAX_PROCESS_MINUTES {
        return Err(Error::Options(format!(
            "{} minutes is out of range on processes, which run in real time: allowed 1..={MAX_PROCESS_MINUTES}",
            trace.minutes
        )));
    }
    if trace.max_agents > MAX_PROCESS_AGENTS {
        return Err(Error::Options(format!(
            "{} agents is out of range on processes: allowed 1..={MAX_PROCESS_AGENTS}",
            trace.max_agents
        )));
    }
    let started = std::time::Instant::now();
    let mut o = colony_agents::process::ProcessOptions::new("python3");
    o.args = vec![
        "-c".into(),
        SLEEPER.into(),
        trace.task.as_millis().to_string(),
    ];
    o.stop_grace = PROCESS_GRACE;
    let backend = Arc::new(colony_agents::process::Process::new(o));
    let quick = |policy: Policy, secs| Policy {
        cooldown: Duration::from_secs(secs),
        ..policy
    };
    let scaling = ScalingOptions {
        min: 1,
        max: trace.max_agents,
        predictive: None,
        reactive: quick(Policy::REACTIVE, 5),
        cost: quick(Policy::COST, 10),
        emergency: quick(Policy::EMERGENCY, 2),
        idle_after: PROCESS_IDLE_AFTER,
        ..ScalingOptions::default()
    };
    let base_need = (trace.base_rate * trace.task.as_secs_f64() / 0.8).ceil() as u32;
    let pool = Pool::new(
        AgentSpec::new("process", "worker"),
        base_need.clamp(1, trace.max_agents),
        backend.clone(),
    )
    .scaled(scaling);
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        queue_capacity: 100_000,
        autoscale: AutoscaleOptions {
            every: trace.every,
            horizon: Duration::from_secs(300).max(trace.every),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(
        options,
        vec![pool],
        Arc::new(MemoryJournal::forgetting_finished()),
    )
    .await?;
    let h = runtime.handle().clone();
    let mut events = h.subscribe(Kinds::SCALING);
    let length = Duration::from_secs_f64(trace.minutes * 60.0);
    let bursts: Vec<Duration> = Vec::new();
    let start = Instant::now();
    let (mut tasks, mut succeeded, mut waits) = (0u64, 0u64, Vec::new());
    let (mut peak_agents, mut peak_processes, mut most_surplus) = (0u64, 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let mut record = |scheduled: Instant, completion: Result<crate::Completion, Error>| {
        if let Ok(c) = completion
            && c.state == TaskState::Succeeded
        {
            succeeded += 1;
            waits.push(scheduled.elapsed().saturating_sub(trace.task));
        }
    };
    let (mut at, mut carry, mut ticks) = (Duration::ZERO, 0.0, 0u64);
    while at < length {
        tokio::select! {
            biased;
            Some((scheduled, done)) = pending.next(), if !pending.is_empty() => {
                record(scheduled, done);
                continue;
            }
            () = tokio::time::sleep_until(start + at) => {}
        }
        carry += trace.rate(at, &bursts) * TICK.as_secs_f64();
        let n = carry.floor();
        carry -= n;
        let scheduled = start + at;
        for _ in 0..n as u64 {
            let task = h.submit_notify(TaskSpec::default()).await?;
            tasks += 1;
            pending.push(async move { (scheduled, task.await) });
        }
        ticks += 1;
        if ticks.is_multiple_of(10) {
            let (agents, live) = (h.pools()[0].1, backend.live() as u64);
            peak_agents = peak_agents.max(agents);
            peak_processes = peak_processes.max(live);
            most_surplus = most_surplus.max(live.saturating_sub(agents));
        }
        at += TICK;
    }
    while let Some((scheduled, done)) = pending.next().await {
        record(scheduled, done);
    }
    // Idle: the pool goes to its minimum, and its retired agents' processes stop.
    let until = Instant::now() + PROCESS_IDLE_AFTER + trace.every * 4 + PROCESS_GRACE * 2;
    loop {
        let settled =
            h.pools()[0].1 == 1 && backend.live() == 1 && children().is_none_or(|n| n == 1);
        if settled || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (final_agents, final_processes) = (h.pools()[0].1, backend.live() as u64);
    let children_left = children();
    let (mut scale_ups, mut scale_downs) = (0, 0);
    while let Some(event) = events.try_recv() {
        if let crate::events::Event::PoolScaled { from, to, .. } = event {
            if to > from {
                scale_ups += 1;
            } else {
                scale_downs += 1;
            }
        }
    }
    runtime.shutdown().await;
    let mut verdict = Verdict::new();
    verdict.check(succeeded == tasks, || {
        format!("{succeeded} of {tasks} tasks succeeded")
    });
    verdict.check(scale_downs > 0, || {
        "the pool never shrank: the run shows nothing about stopped processes".into()
    });
    verdict.check(final_processes == final_agents, || {
        format!("{final_processes} processes outlived the trace for {final_agents} agents")
    });
    if let Some(left) = children_left {
        verdict.check(left == final_agents, || {
            format!("{left} child processes are alive for {final_agents} agents")
        });
    }
    Ok(ProcessReport {
        minutes: trace.minutes,
        tasks,
        succeeded,
        wait: Percentiles::of(waits),
        peak_agents,
        scale_ups,
        scale_downs,
        peak_processes,
        most_surplus,
        final_agents,
        final_processes,
        children_left,
        seconds: started.elapsed().as_secs_f64(),
        verdict,
    })
}

/// This process's children alive now (zombies not counted), from /proc; `None` without it.
fn children() -> Option<u64> {
    let me = std::process::id();
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: the state, then the parent's pid.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (state, parent) = (fields.next(), fields.next());
        if state != Some("Z") && parent.and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            n += 1;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_runs_the_same_trace_and_the_verdict_reads_its_numbers() {
        let trace = Trace {
            // Three cycles and a third: the forecast needs two to start.
            minutes: 10.0,
            period_minutes: 3.0,
            base_rate: 2.0,
            peak_rate: 20.0,
            bursts: 1,
            task: Duration::from_millis(200),
            max_agents: 20,
            every: Duration::from_secs(2),
            ..Trace::default()
        };
        let report = autoscale(&trace).unwrap();
        let tasks: Vec<u64> = report.modes.iter().map(|m| m.tasks).collect();
        assert!(tasks[0] > 1_000, "{tasks:?}");
        assert!(tasks.iter().all(|&t| t == tasks[0]), "one trace: {tasks:?}");
        for m in &report.modes {
            assert_eq!(m.succeeded, m.tasks, "{:?}", m.mode);
        }
        let [fixed, reactive, predictive] = &report.modes[..] else {
            panic!("three modes")
        };
        assert_eq!(fixed.peak_agents, 20);
        assert_eq!((fixed.scale_ups, fixed.scale_downs), (0, 0));
        assert!(
            reactive.scale_ups > 0 && reactive.peak_agents > 1,
            "{reactive:?}"
        );
        assert!(
            reactive.agent_seconds < fixed.agent_seconds,
            "scaling saves agent-seconds: {} against {}",
            reactive.agent_seconds,
            fixed.agent_seconds
        );
        assert!(predictive.forecast_error.is_some(), "{predictive:?}");
        // The verdict is the targets', whatever they came to.
        let cut_met = report.predictive_wait_cut >= 0.5;
        assert_eq!(
            report
                .verdict
                .problems
                .iter()
                .any(|p| p.contains("p95 wait")),
            !cut_met
        );
    }

    #[test]
    fn a_trace_out_of_range_is_refused_naming_it() {
        let e = autoscale(&Trace {
            minutes: 0.5,
            ..Trace::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("minutes"), "{e}");
        let e = autoscale(&Trace {
            base_rate: 50.0,
            peak_rate: 10.0,
            ..Trace::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("rates"), "{e}");
    }
}
