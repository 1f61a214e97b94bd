//! The workloads behind `colony bench`: spawn, dispatch and latency.
//!
//! Each returns a report of what it measured on this process: wall time from the runtime's
//! own clock, memory from the kernel's resident set size, CPU time from `/proc/self/stat`.

use crate::{Error, Handle, Pool, Runtime, RuntimeOptions, SpawnMode, spawner::Spawner};
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_core::{
    hierarchy::{HierarchyOptions, MAX_WORKERS, Plan, Tiers},
    task::TaskSpec,
};
use colony_journal::{Journal, MemoryJournal, SqliteJournal, SqliteOptions};
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// The shape of the swarm a benchmark builds.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Agents in all tiers together; the worker count is the largest that fits.
    pub agents: u64,
    pub span: u32,
    pub tiers: Tiers,
    pub sim: SimOptions,
    /// Where the journal lives: a SQLite file, or memory when `None`.
    pub journal: Option<SqliteOptions>,
    pub retry: crate::RetryOptions,
    pub supervision: colony_core::supervision::SupervisorOptions,
    pub health: colony_core::health::HealthOptions,
}

impl Swarm {
    /// The largest worker count whose full hierarchy has at most `self.agents` agents.
    pub fn workers(&self) -> Result<u64, Error> {
        let total = |workers: u64| {
            Plan::new(&HierarchyOptions {
                workers,
                span: self.span,
                tiers: self.tiers.clone(),
            })
            .map(|p| p.total())
        };
        if total(1)? > self.agents {
            return Err(Error::Options(format!(
                "{} agents cannot hold one worker with its managers: allowed at least {}",
                self.agents,
                total(1)?
            )));
        }
        let (mut lo, mut hi) = (1, self.agents.min(MAX_WORKERS));
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if total(mid)? <= self.agents {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        Ok(lo)
    }

    async fn start(&self, spawn: SpawnMode) -> Result<Runtime, Error> {
        let workers = self.workers()?;
        let sim = Sim::new(self.sim.clone()).map_err(|e| Error::Options(e.to_string()))?;
        let pool = Pool::new(
            AgentSpec::new("sim", "worker"),
            workers as u32,
            Arc::new(sim),
        );
        let options = RuntimeOptions {
            span: self.span,
            tiers: self.tiers.clone(),
            spawn,
            retry: self.retry,
            supervision: self.supervision,
            health: self.health,
            ..RuntimeOptions::default()
        };
        let journal: Arc<dyn Journal> = match &self.journal {
            Some(sqlite) => Arc::new(SqliteJournal::open(sqlite.clone())?),
            None => Arc::new(MemoryJournal::new()),
        };
        Runtime::start(options, vec![pool], journal).await
    }
}

/// Percentiles of a latency sample, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at =
            |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
        Self {
            samples: samples.len(),
            p50_us: at(0.50),
            p95_us: at(0.95),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SpawnReport {
    pub agents: u64,
    pub workers: u64,
    pub tiers: Vec<(String, u32)>,
    pub mode: String,
    pub seconds: f64,
    pub agents_per_second: f64,
    /// Growth of the resident set while spawning, per agent.
    pub bytes_per_agent: f64,
    /// CPU used by the whole process while the agents sat idle, in percent of one core.
    pub idle_cpu_percent: f64,
    pub idle_seconds: f64,
}

/// Spawns the swarm, then leaves it idle for `idle` to measure what idle agents cost.
pub async fn spawn(swarm: &Swarm, mode: SpawnMode, idle: Duration) -> Result<SpawnReport, Error> {
    let workers = swarm.workers()?;
    let rss_before = resident_bytes();
    let started = Instant::now();
    let runtime = swarm.start(mode).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = resident_bytes();
    let handle = runtime.handle().clone();
    let tiers = tier_sizes(&handle).await?;
    let agents: u64 = tiers.iter().map(|(_, n)| u64::from(*n)).sum();
    let cpu_before = cpu_time();
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let idle_cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    runtime.shutdown().await;
    Ok(SpawnReport {
        agents,
        workers,
        tiers,
        mode: mode_name(mode),
        seconds,
        agents_per_second: agents as f64 / seconds,
        bytes_per_agent: rss_after.saturating_sub(rss_before) as f64 / agents as f64,
        idle_cpu_percent: 100.0 * idle_cpu / idle_seconds.max(1e-9),
        idle_seconds,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct DispatchReport {
    pub agents: u64,
    pub workers: u64,
    pub tasks: u64,
    pub batch: usize,
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub attempts: u64,
    /// Tasks the journal holds in a terminal state at the end: must equal `tasks`.
    pub journal_terminal: u64,
    /// Submit-to-done latency of the first task of every batch.
    pub latency: Percentiles,
    /// How long each batch took to be accepted: waiting for room in the hierarchy and, with a
    /// SQLite journal, for the group commit.
    pub accept_latency: Percentiles,
    /// The SQLite file, when the journal was durable.
    pub journal: Option<String>,
    /// From opening the journal to accepting work: spawning the agents and recovering what
    /// the journal held unfinished.
    pub start_seconds: f64,
}

/// Pushes `tasks` tasks through the swarm in batches of `batch`, and waits for all to end.
pub async fn dispatch(
    swarm: &Swarm,
    tasks: u64,
    batch: usize,
    payload_bytes: usize,
) -> Result<DispatchReport, Error> {
    // A JSON string of the asked size.
    let payload = bytes::Bytes::from(format!(
        "\"{}\"",
        "x".repeat(payload_bytes.saturating_sub(2))
    ));
    let starting = Instant::now();
    let runtime = swarm.start(SpawnMode::Batch).await?;
    let start_seconds = starting.elapsed().as_secs_f64();
    let handle = runtime.handle().clone();
    let workers = swarm.workers()?;
    let agents = handle.stats().agents;
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut accepts = Vec::new();
    let mut left = tasks;
    // A batch larger than the hierarchy holds could never be admitted.
    let batch = batch.min(handle.stats().capacity as usize).max(1);
    while left > 0 {
        let n = left.min(batch as u64) as usize;
        let specs = vec![TaskSpec::with_payload(payload.clone()); n];
        let asked = Instant::now();
        let (_, tracked) = handle.submit_batch_tracked(specs, |i| i == 0).await?;
        accepts.push(asked.elapsed());
        pending.extend(tracked);
        left -= n as u64;
    }
    handle.drain().await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(pending.len());
    for p in pending {
        latencies.push(p.await?.latency);
    }
    let stats = handle.stats();
    let journal_terminal = handle.journal().counts()?.terminal();
    runtime.shutdown().await;
    Ok(DispatchReport {
        agents,
        workers,
        tasks,
        batch,
        seconds,
        tasks_per_second: tasks as f64 / seconds,
        succeeded: stats.succeeded,
        failed: stats.failed,
        dead_lettered: stats.dead_lettered,
        attempts: stats.attempts,
        journal_terminal,
        latency: Percentiles::of(latencies),
        accept_latency: Percentiles::of(accepts),
        journal: swarm.journal.as_ref().map(|j| j.path.display().to_string()),
        start_seconds,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub agents: u64,
    pub offered_per_second: f64,
    pub achieved_per_second: f64,
    pub tasks: u64,
    pub seconds: f64,
    /// Submit-to-done latency of every task, measured by the dispatcher.
    pub latency: Percentiles,
}

/// Offers `rate` single-task submissions per second for `duration`, open loop: a submitter
/// thread keeps to the schedule whatever the runtime does, and every task's submit-to-done
/// time is recorded.
pub async fn latency(swarm: &Swarm, rate: f64, duration: Duration) -> Result<LatencyReport, Error> {
    let runtime = swarm.start(SpawnMode::Batch).await?;
    let handle = runtime.handle().clone();
    let agents = handle.stats().agents;
    let tasks = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let submitter = handle.clone();
    let thread = Spawner::spawn_thread("bench-submitter", move || {
        let mut pending = Vec::with_capacity(tasks as usize);
        let start = Instant::now();
        for i in 0..tasks {
            let due = start + interval.mul_f64(i as f64);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            match futures::executor::block_on(submitter.submit_notify(TaskSpec::default())) {
                Ok(p) => pending.push(p),
                Err(e) => return Err(e),
            }
        }
        Ok((pending, start.elapsed()))
    })
    .map_err(|e| Error::Options(format!("cannot start the submitter thread: {e}")))?;
    let (pending, submit_time) = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(|_| Error::Stopped)??;
    handle.drain().await?;
    let mut latencies = Vec::with_capacity(pending.len());
    for p in pending {
        latencies.push(p.await?.latency);
    }
    runtime.shutdown().await;
    let seconds = submit_time.as_secs_f64();
    Ok(LatencyReport {
        agents,
        offered_per_second: rate,
        achieved_per_second: tasks as f64 / seconds,
        tasks,
        seconds,
        latency: Percentiles::of(latencies),
    })
}

async fn tier_sizes(handle: &Handle) -> Result<Vec<(String, u32)>, Error> {
    handle
        .inspect(|tree| {
            tree.tier_names()
                .iter()
                .map(|n| n.to_string())
                .zip(tree.tier_sizes().iter().copied())
                .collect()
        })
        .await
}

fn mode_name(mode: SpawnMode) -> String {
    match mode {
        SpawnMode::Single => "single".into(),
        SpawnMode::Batch => "batch".into(),
        SpawnMode::Waves { size } => format!("waves of {size}"),
    }
}

/// The resident set size of this process, from `/proc/self/statm`; 0 where there is none.
pub fn resident_bytes() -> u64 {
    const PAGE: u64 = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

/// User plus system CPU time of this process, from `/proc/self/stat` (in 1/100 s ticks).
pub fn cpu_time() -> Duration {
    const TICKS_PER_SECOND: u64 = 100;
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
    Duration::from_millis(ticks.unwrap_or(0) * 1000 / TICKS_PER_SECOND)
}

pub mod crash;

/// What `colony bench recovery` measured.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    pub agents: u64,
    pub workers: u64,
    pub tasks: u64,
    /// Share of the workers killed each second while killing lasted.
    pub kill_rate: f64,
    pub kill_seconds: f64,
    pub kills: u64,
    pub accepted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Accepted tasks the journal does not hold in a terminal state at the end: must be 0.
    pub lost: u64,
    pub attempts: u64,
    pub re_executions: u64,
    /// Agents brought back into service (each agent of a restarted subtree counts).
    pub restarts: u64,
    /// Managing agents that exceeded their restart intensity and gave up.
    pub escalations: u64,
    /// Tasks dead-lettered as poison: their attempts crashed or hung too many agents.
    pub quarantined: u64,
    /// Busy agents a health sweep declared failed after a silence.
    pub health_failures: u64,
    /// Tasks the runtime counted as ended beyond those the journal holds terminal: a task
    /// committed twice would count twice here. Must be 0.
    pub duplicate_commits: u64,
    /// Results of attempts that had lost their lease, dropped by the journal's fencing.
    pub late_results_fenced: u64,
    /// Whether the runtime's counts of succeeded, failed and dead-lettered tasks equal the
    /// journal's: a task counted twice, or committed twice, would break this.
    pub journal_agrees: bool,
    /// From a kill to the end of the killed attempt.
    pub detection: Percentiles,
    /// From the start of a hung attempt to the runtime giving up on it: its timeout, or a
    /// health sweep finding its agent silent.
    pub hang_detection: Percentiles,
    /// The heartbeat (sweep) interval, and the two detection p50 / p99 as multiples of it.
    pub heartbeat_ms: f64,
    pub detection_heartbeats: [f64; 2],
    pub hang_detection_heartbeats: [f64; 2],
    /// From an agent's exit to its next incarnation in service, restart backoff included.
    pub restart: Percentiles,
    /// From a failed attempt to its retry being dispatched again, retry backoff included.
    pub redispatch: Percentiles,
    pub seconds: f64,
    pub ok: bool,
}

/// Runs `tasks` tasks while killing `kill_rate` of the workers per second for `kill_for`, on
/// top of whatever faults the swarm's sim agents inject; then waits for every task to end.
pub async fn recovery(
    swarm: &Swarm,
    tasks: u64,
    kill_rate: f64,
    kill_for: Duration,
    timeout: Duration,
    seed: u64,
) -> Result<RecoveryReport, Error> {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    let runtime = swarm.start(SpawnMode::Batch).await?;
    let handle = runtime.handle().clone();
    let workers = swarm.workers()?;
    let agents = handle.stats().agents;
    let first_worker = (agents - workers) as u32;
    let started = Instant::now();
    let submitter = {
        let handle = handle.clone();
        let batch = (handle.stats().capacity as u64).clamp(1, 1_000);
        Spawner::spawn("bench-submitter", async move {
            let mut left = tasks;
            while left > 0 {
                let n = left.min(batch);
                let spec = TaskSpec {
                    timeout,
                    ..TaskSpec::default()
                };
                handle.submit_batch(vec![spec; n as usize]).await?;
                left -= n;
            }
            Ok::<(), Error>(())
        })
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let per_tick = (workers as f64 * kill_rate / 10.0).round() as u64;
    let mut kills = 0;
    let killing = Instant::now();
    while killing.elapsed() < kill_for && handle.stats().finished() < tasks {
        for _ in 0..per_tick {
            let victim = colony_core::AgentId(first_worker + rng.random_range(0..workers as u32));
            handle.kill(victim)?;
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kill_seconds = killing.elapsed().as_secs_f64().min(kill_for.as_secs_f64());
    submitter
        .await
        .map_err(|_| Error::Stopped)?
        .ok_or(Error::Stopped)??;
    handle.drain().await?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = handle.stats();
    let counts = handle.journal().counts()?;
    let journal_stats = handle.journal().stats();
    let timings = handle.timings();
    runtime.shutdown().await;
    let lost = stats.accepted.saturating_sub(counts.terminal());
    let duplicate_commits = stats.finished().saturating_sub(counts.terminal());
    let heartbeat_us = swarm.health.heartbeat.as_secs_f64() * 1e6;
    let detection = Percentiles::of(timings.detection);
    let hang_detection = Percentiles::of(timings.hang_detection);
    let beats = |p: &Percentiles| [p.p50_us / heartbeat_us, p.p99_us / heartbeat_us];
    let journal_agrees = counts.succeeded == stats.succeeded
        && counts.failed == stats.failed
        && counts.dead_lettered == stats.dead_lettered;
    Ok(RecoveryReport {
        agents,
        workers,
        tasks,
        kill_rate,
        kill_seconds,
        kills,
        accepted: stats.accepted,
        succeeded: stats.succeeded,
        failed: stats.failed,
        dead_lettered: stats.dead_lettered,
        lost,
        attempts: stats.attempts,
        re_executions: stats.attempts.saturating_sub(stats.accepted),
        restarts: stats.restarts,
        escalations: stats.escalations,
        quarantined: stats.quarantined,
        health_failures: stats.health_failures,
        duplicate_commits,
        late_results_fenced: journal_stats.fenced,
        journal_agrees,
        heartbeat_ms: heartbeat_us / 1e3,
        detection_heartbeats: beats(&detection),
        hang_detection_heartbeats: beats(&hang_detection),
        detection,
        hang_detection,
        restart: Percentiles::of(timings.restart),
        redispatch: Percentiles::of(timings.redispatch),
        seconds,
        ok: lost == 0 && duplicate_commits == 0 && journal_agrees && stats.accepted == tasks,
    })
}
