//! `colony bench health`: a chaos run in virtual time where a share of the agents turn slow
//! and a share start failing, run twice on the same trace: with health acting (each worker's
//! circuit breaker, the default) and with health only observing (`RuntimeOptions::breaker`
//! `None`). It reports each task's time from its scheduled arrival until the caller holds its
//! completion, the attempts that failed, and the tasks that did not succeed.

use super::{Percentiles, Verdict};
use crate::{Error, Pool, Runtime, RuntimeOptions};
use colony_agents::{Agent, AgentSpec, Execution, Task};
use colony_core::{
    AgentId,
    hierarchy::Tiers,
    task::{TaskSpec, TaskState},
};
use colony_journal::MemoryJournal;
use futures::{StreamExt, stream::FuturesUnordered};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::time::Instant;

/// The swarm and its faults.
#[derive(Clone, Debug)]
pub struct Chaos {
    pub agents: u32,
    /// Tasks offered per second, evenly.
    pub rate: f64,
    /// Length of the run, in virtual seconds.
    pub secs: f64,
    /// A healthy agent's answer time.
    pub latency: Duration,
    /// Share of the agents that answer `slow_latency` instead (critical past 5 s).
    pub slow_share: f64,
    pub slow_latency: Duration,
    /// Share of the agents whose every attempt fails (retryably).
    pub failing_share: f64,
    /// When the faults begin, in virtual seconds: before, every agent is healthy.
    pub faults_at: f64,
    pub seed: u64,
}

impl Default for Chaos {
    fn default() -> Self {
        Self {
            agents: 100,
            rate: 100.0,
            secs: 300.0,
            latency: Duration::from_millis(200),
            slow_share: 0.2,
            slow_latency: Duration::from_secs(8),
            failing_share: 0.05,
            faults_at: 30.0,
            seed: 1,
        }
    }
}

/// One run of the trace.
#[derive(Clone, Debug, Serialize)]
pub struct HealthRun {
    /// `acting` or `observing`.
    pub health: &'static str,
    pub tasks: u64,
    pub succeeded: u64,
    /// From each task's scheduled arrival until the caller held its completion.
    pub task_time: Percentiles,
    pub attempts: u64,
    /// Attempts that failed and were retried.
    pub failed_attempts: u64,
    /// Workers taken out of rotation by their breaker (each opening counts).
    pub sidelined: u64,
    pub seconds: f64,
}

/// What `colony bench health` measured.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    pub agents: u32,
    pub slow_agents: u32,
    pub failing_agents: u32,
    pub runs: Vec<HealthRun>,
    /// The targets: with health acting, a lower p99 task time and fewer failed attempts than
    /// with health observing; every task succeeded in both.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Answers after its latency, slower or failing once the faults begin, by agent.
struct Faulty {
    latency: Duration,
    slow: Duration,
    faults_at: Instant,
    /// Per agent: slow, failing.
    faults: HashMap<AgentId, (bool, bool)>,
}

impl Agent for Faulty {
    fn handle(&self, task: Task) -> Execution {
        let (slow, failing) = if Instant::now() >= self.faults_at {
            self.faults.get(&task.agent).copied().unwrap_or_default()
        } else {
            (false, false)
        };
        let latency = if slow { self.slow } else { self.latency };
        Execution::Running(Box::pin(async move {
            // A slow agent is alive: it beats while it works, so only its answers tell.
            let mut left = latency;
            while left > Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                task.heartbeat.beat();
                left -= Duration::from_secs(1);
            }
            tokio::time::sleep(left).await;
            if failing {
                Err(colony_agents::Error::retryable("failing agent"))
            } else {
                Ok(task.payload)
            }
        }))
    }
}

/// Most tasks one run offers.
pub const MAX_TASKS: u64 = 10_000_000;

impl Chaos {
    /// Checks the settings, naming the first out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Options(what));
        if !(10..=100_000).contains(&self.agents) {
            return bad(format!(
                "{} agents is out of range: allowed 10..=100000",
                self.agents
            ));
        }
        if !(0.1..=100_000.0).contains(&self.rate) || !(1.0..=86_400.0).contains(&self.secs) {
            return bad(format!(
                "a rate of {}/s for {} s is out of range: allowed 0.1..=100000 per second, 1..=86400 s",
                self.rate, self.secs
            ));
        }
        // Each task's time is kept for the percentiles, and each run holds them all.
        if self.rate * self.secs > MAX_TASKS as f64 {
            return bad(format!(
                "a rate of {}/s for {} s is {:.0} tasks, out of range: allowed up to {MAX_TASKS} a run",
                self.rate,
                self.secs,
                self.rate * self.secs
            ));
        }
        let share = 0.0..=0.9;
        if !share.contains(&self.slow_share)
            || !share.contains(&self.failing_share)
            || self.slow_share + self.failing_share > 0.9
        {
            return bad(format!(
                "shares of {} slow and {} failing are out of range: allowed 0..=0.9 together",
                self.slow_share, self.failing_share
            ));
        }
        Ok(())
    }
}

/// Runs the chaos trace with health acting and with health observing, each on a runtime of
/// its own with a paused clock. Must not be called from inside a tokio runtime.
pub fn health(chaos: &Chaos) -> Result<HealthReport, Error> {
    chaos.validate()?;
    let slow = (f64::from(chaos.agents) * chaos.slow_share).round() as u32;
    let failing = (f64::from(chaos.agents) * chaos.failing_share).round() as u32;
    let mut runs = Vec::new();
    for acting in [true, false] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| Error::Options(format!("no runtime for the bench: {e}")))?;
        runs.push(runtime.block_on(run(chaos, acting, slow, failing))?);
    }
    let (acting, observing) = (&runs[0], &runs[1]);
    let mut verdict = Verdict::new();
    for r in &runs {
        verdict.check(r.succeeded == r.tasks, || {
            format!(
                "health {}: {} of {} tasks succeeded",
                r.health, r.succeeded, r.tasks
            )
        });
    }
    verdict.check(acting.task_time.p99_us < observing.task_time.p99_us, || {
        format!(
            "the p99 task time was {:.2} s with health acting against {:.2} s observing",
            acting.task_time.p99_us / 1e6,
            observing.task_time.p99_us / 1e6
        )
    });
    verdict.check(acting.failed_attempts < observing.failed_attempts, || {
        format!(
            "{} attempts failed with health acting against {} observing",
            acting.failed_attempts, observing.failed_attempts
        )
    });
    Ok(HealthReport {
        agents: chaos.agents,
        slow_agents: slow,
        failing_agents: failing,
        runs,
        verdict,
    })
}

async fn run(chaos: &Chaos, acting: bool, slow: u32, failing: u32) -> Result<HealthRun, Error> {
    let started = std::time::Instant::now();
    let start = Instant::now();
    let options = RuntimeOptions {
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        queue_capacity: 100_000,
        breaker: if acting {
            RuntimeOptions::default().breaker
        } else {
            None
        },
        ..RuntimeOptions::default()
    };
    // The faulty agents are chosen after the spawn, by id, with the seed: the same in both
    // runs.
    let agent = Arc::new(std::sync::OnceLock::<Faulty>::new());
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        chaos.agents,
        Arc::new(Deferred(agent.clone())),
    );
    let journal = Arc::new(MemoryJournal::forgetting_finished());
    let runtime = Runtime::start(options, vec![pool], journal).await?;
    let h = runtime.handle().clone();
    let mut workers = h.inspect(|t| t.agents_in_tier(t.worker_tier())).await?;
    let mut rng = SmallRng::seed_from_u64(chaos.seed);
    // A seeded shuffle, then the first ones slow and the next ones failing.
    for i in (1..workers.len()).rev() {
        workers.swap(i, rng.random_range(0..=i));
    }
    let mut faults = HashMap::new();
    for (i, &w) in workers.iter().enumerate() {
        let i = i as u32;
        faults.insert(w, (i < slow, (slow..slow + failing).contains(&i)));
    }
    let _ = agent.set(Faulty {
        latency: chaos.latency,
        slow: chaos.slow_latency,
        faults_at: start + Duration::from_secs_f64(chaos.faults_at),
        faults,
    });
    let length = Duration::from_secs_f64(chaos.secs);
    let every = Duration::from_secs_f64(1.0 / chaos.rate);
    let (mut times, mut tasks, mut succeeded) = (Vec::new(), 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let mut at = Duration::ZERO;
    while at < length {
        tokio::select! {
            biased;
            Some((scheduled, done)) = pending.next(), if !pending.is_empty() => {
                record(&mut times, &mut succeeded, scheduled, done);
                continue;
            }
            () = tokio::time::sleep_until(start + at) => {}
        }
        let scheduled = start + at;
        let task = h
            .submit_notify(TaskSpec {
                max_attempts: 10,
                ..TaskSpec::default()
            })
            .await?;
        tasks += 1;
        pending.push(async move { (scheduled, task.await) });
        at += every;
    }
    while let Some((scheduled, done)) = pending.next().await {
        record(&mut times, &mut succeeded, scheduled, done);
    }
    let stats = h.stats();
    runtime.shutdown().await;
    Ok(HealthRun {
        health: if acting { "acting" } else { "observing" },
        tasks,
        succeeded,
        task_time: Percentiles::of(times),
        attempts: stats.attempts,
        failed_attempts: stats.retries,
        sidelined: stats.sidelined,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn record(
    times: &mut Vec<Duration>,
    succeeded: &mut u64,
    scheduled: Instant,
    done: Result<crate::Completion, Error>,
) {
    times.push(scheduled.elapsed());
    if done.is_ok_and(|c| c.state == TaskState::Succeeded) {
        *succeeded += 1;
    }
}

/// The pool's handler, set once the agents' ids are known.
struct Deferred(Arc<std::sync::OnceLock<Faulty>>);

impl Agent for Deferred {
    fn handle(&self, task: Task) -> Execution {
        match self.0.get() {
            Some(agent) => agent.handle(task),
            None => Execution::Done(Err(colony_agents::Error::retryable("not ready"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_runs_see_the_same_faults_and_the_verdict_reads_their_numbers() {
        let chaos = Chaos {
            agents: 20,
            rate: 20.0,
            secs: 60.0,
            faults_at: 5.0,
            ..Chaos::default()
        };
        let report = health(&chaos).unwrap();
        assert_eq!((report.slow_agents, report.failing_agents), (4, 1));
        let [acting, observing] = &report.runs[..] else {
            panic!("two runs")
        };
        assert_eq!(acting.tasks, observing.tasks);
        assert!(acting.tasks >= 1_190, "{}", acting.tasks);
        assert!(acting.sidelined > 0, "{acting:?}");
        assert_eq!(observing.sidelined, 0);
        assert!(observing.failed_attempts > 0, "{observing:?}");
        let fewer = acting.failed_attempts < observing.failed_attempts;
        assert_eq!(
            report
                .verdict
                .problems
                .iter()
                .any(|p| p.contains("attempts failed")),
            !fewer
        );
    }

    #[test]
    fn a_chaos_out_of_range_is_refused_naming_it() {
        let e = health(&Chaos {
            slow_share: 0.8,
            failing_share: 0.2,
            ..Chaos::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("shares"), "{e}");
    }
}
