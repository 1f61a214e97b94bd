//! The workloads behind `colony bench`: spawn, dispatch, latency, recovery and restart.
//!
//! Each returns a report of what it measured on this process: wall time from the runtime's
//! own clock, memory from the kernel's resident set size, CPU time from `/proc/self/stat`.
//! Each report carries a [`Verdict`]: whether the run did the work it claims (every task
//! ended, in the journal too, and none failed where no fault was injected), so that a run
//! whose work went wrong cannot pass for a fast one.
//!
//! Latencies end where the caller's do: a task of the bench's own ([`Receipts`]) awaits each
//! followed task's completion and notes when it arrives, after the dispatcher's turn, the
//! journal's commit on durable runs, and the wakeup.

use crate::{
    Completion, Error, Handle, Pending, Pool, Runtime, RuntimeOptions, SpawnMode, spawner::Spawner,
};
use colony_agents::{
    AgentSpec,
    sim::{Answer, Sim, SimOptions},
};
use colony_core::{
    hierarchy::{HierarchyOptions, MAX_WORKERS, Plan, Tiers},
    task::{TaskSpec, TaskState},
};
use colony_journal::{Counts, Journal, MemoryJournal, SqliteJournal, SqliteOptions};
use futures::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Whether a benchmark's run did what it claims, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// What went wrong, one sentence each; empty when `ok`.
    pub problems: Vec<String>,
}

impl Verdict {
    /// A verdict that holds until a check fails.
    pub fn new() -> Self {
        Self {
            ok: true,
            problems: Vec::new(),
        }
    }

    /// Records `problem` unless `holds`.
    pub fn check(&mut self, holds: bool, problem: impl FnOnce() -> String) {
        if !holds {
            self.ok = false;
            self.problems.push(problem());
        }
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Self::new()
    }
}

/// Tasks of a `dispatch` run followed to their caller, at most: every k-th task is, with k
/// chosen to spread this many over the run.
pub const DISPATCH_SAMPLES: u64 = 65_536;

/// A durable journal for a benchmark.
#[derive(Clone)]
pub enum BenchJournal {
    Sqlite(SqliteOptions),
    /// Another journal (one in NATS), opened by `open` each time a runtime starts; `shown`
    /// names it in the report.
    Other {
        shown: String,
        open: Arc<dyn Fn() -> Result<Arc<dyn Journal>, Error> + Send + Sync>,
    },
}

impl BenchJournal {
    /// Where the journal is, for the report.
    pub fn shown(&self) -> String {
        match self {
            BenchJournal::Sqlite(sqlite) => sqlite.path.display().to_string(),
            BenchJournal::Other { shown, .. } => shown.clone(),
        }
    }
}

impl std::fmt::Debug for BenchJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The shape of the swarm a benchmark builds.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Agents in all tiers together; the worker count is the largest that fits.
    pub agents: u64,
    pub span: u32,
    pub tiers: Tiers,
    pub sim: SimOptions,
    /// How sim attempts without latency answer: inline, or woken from another task.
    pub answer: Answer,
    /// Where the journal lives: a SQLite file or another journal, or memory when `None`.
    pub journal: Option<BenchJournal>,
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
        // Past the planner's largest hierarchy the count would be cut silently: refused.
        let most = total(MAX_WORKERS)?;
        if self.agents > most {
            return Err(Error::Options(format!(
                "{} agents is out of range: allowed up to {most} (the hierarchy of {MAX_WORKERS} workers)",
                self.agents
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

    /// Agents in every tier of the hierarchy over `workers` workers.
    pub fn planned(&self, workers: u64) -> Result<u64, Error> {
        Ok(Plan::new(&HierarchyOptions {
            workers,
            span: self.span,
            tiers: self.tiers.clone(),
        })?
        .total())
    }

    async fn start(&self, spawn: SpawnMode) -> Result<Runtime, Error> {
        let workers = self.workers()?;
        let sim = Sim::new(self.sim.clone())
            .map_err(|e| Error::Options(e.to_string()))?
            .answering(self.answer);
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
            Some(BenchJournal::Sqlite(sqlite)) => Arc::new(SqliteJournal::open(sqlite.clone())?),
            Some(BenchJournal::Other { open, .. }) => open()?,
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

/// Completions as the caller receives them. A task of the bench's own awaits every followed
/// task and notes the moment its completion reaches it: a latency measured here ends after the
/// dispatcher's turn, the journal's commit of the result (durable runs: the dispatcher sends a
/// completion only once it is durable) and the wakeup of the waiting task.
struct Receipts {
    tx: mpsc::UnboundedSender<(Instant, Pending)>,
    task: tokio::task::JoinHandle<Option<Received>>,
}

/// What [`Receipts`] collected.
#[derive(Default)]
struct Received {
    /// From each task's start instant to its completion's arrival.
    latency: Vec<Duration>,
    /// From acceptance to the terminal state, as the dispatcher measured it.
    dispatcher: Vec<Duration>,
    /// Completions in a state other than succeeded.
    unsuccessful: u64,
    /// Completions that never came: the runtime stopped first.
    missing: u64,
}

impl Received {
    fn note(&mut self, from: Instant, completion: Result<Completion, Error>, at: Instant) {
        match completion {
            Ok(c) => {
                self.latency.push(at.saturating_duration_since(from));
                self.dispatcher.push(c.latency);
                self.unsuccessful += u64::from(c.state != TaskState::Succeeded);
            }
            Err(_) => self.missing += 1,
        }
    }

    fn received(&self) -> u64 {
        self.latency.len() as u64
    }
}

impl Receipts {
    fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<(Instant, Pending)>();
        let task = Spawner::spawn("bench-receipts", collect(rx));
        Self { tx, task }
    }

    /// Follows `pending`, whose latency counts from `from`. A plain send: the submitter of
    /// the latency bench is an OS thread, and must never wait here.
    fn follow(&self, from: Instant, pending: Pending) {
        // The receiving task ends only after `finish` drops the sender.
        let _ = self.tx.send((from, pending));
    }

    /// Waits for every followed completion.
    async fn finish(self) -> Result<Received, Error> {
        drop(self.tx);
        self.task
            .await
            .map_err(|_| Error::Stopped)?
            .ok_or(Error::Stopped)
    }
}

/// Awaits every completion sent on `rx` until it closes, noting when each arrives.
async fn collect(mut rx: mpsc::UnboundedReceiver<(Instant, Pending)>) -> Received {
    let mut waiting = FuturesUnordered::new();
    let mut received = Received::default();
    let mut open = true;
    loop {
        tokio::select! {
            // Arrivals first: their time is what is measured.
            biased;
            Some((from, completion, at)) = waiting.next(), if !waiting.is_empty() => {
                received.note(from, completion, at);
            }
            next = rx.recv(), if open => match next {
                Some((from, pending)) => waiting.push(async move {
                    let completion = pending.await;
                    (from, completion, Instant::now())
                }),
                None => open = false,
            },
            else => break,
        }
    }
    received
}

/// The journal's counts when a run begins, to tell its own tasks from earlier ones (`--db`
/// may name a journal that already holds some).
struct Before(Counts);

impl Before {
    /// Tasks the journal held unfinished: recovered, they run in this run too.
    fn recovered(&self) -> u64 {
        self.0.queued + self.0.running
    }

    /// Checks that every task of the run (`tasks` submitted plus those recovered) ended, in
    /// the journal, and succeeded: none of these workloads injects a fault. Returns how many
    /// ended.
    fn check(&self, after: Counts, tasks: u64, verdict: &mut Verdict) -> u64 {
        let before = &self.0;
        let ended = after.terminal().saturating_sub(before.terminal());
        let expected = tasks + self.recovered();
        verdict.check(ended == expected, || {
            format!(
                "the journal holds {ended} tasks ended in this run, not {expected} ({tasks} submitted, {} recovered)",
                self.recovered()
            )
        });
        let unfinished = after.queued + after.running;
        verdict.check(unfinished == 0, || {
            format!("the journal still holds {unfinished} tasks unfinished")
        });
        let failed = after.failed.saturating_sub(before.failed);
        let dead = after.dead_lettered.saturating_sub(before.dead_lettered);
        let cancelled = after.cancelled.saturating_sub(before.cancelled);
        verdict.check(failed + dead + cancelled == 0, || {
            format!(
                "{failed} failed, {dead} dead-lettered and {cancelled} cancelled in the journal, with no fault injected"
            )
        });
        ended
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
    /// After the idle spell the first pool shrinks to a hundredth of its workers: how many
    /// agents the tree then holds, and the resident set given back per worker retired.
    pub agents_after_shrink: u64,
    pub bytes_freed_per_retired: f64,
    /// Whether the hierarchy holds every agent planned, and the runtime counts them all.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Spawns the swarm, then leaves it idle for `idle` to measure what idle agents cost.
pub async fn spawn(swarm: &Swarm, mode: SpawnMode, idle: Duration) -> Result<SpawnReport, Error> {
    let workers = swarm.workers()?;
    let planned = swarm.planned(workers)?;
    let rss_before = resident_bytes();
    let started = Instant::now();
    let runtime = swarm.start(mode).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = resident_bytes();
    let handle = runtime.handle().clone();
    let tiers = tier_sizes(&handle).await?;
    let agents: u64 = tiers.iter().map(|(_, n)| u64::from(*n)).sum();
    let counted = handle.stats().agents;
    let cpu_before = cpu_time();
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let idle_cpu = cpu_time().saturating_sub(cpu_before).as_secs_f64();
    // Shrunk by hand, a pool gives its retired workers' places back.
    let before_shrink = resident_bytes();
    let pool_size = handle.pools()[0].1;
    let keep = (pool_size / 100).max(1);
    handle.set_pool_size(0, keep).await?;
    let agents_after_shrink = handle.stats().agents;
    let retired = pool_size.saturating_sub(keep);
    let bytes_freed_per_retired =
        before_shrink.saturating_sub(resident_bytes()) as f64 / retired.max(1) as f64;
    runtime.shutdown().await;
    let mut verdict = Verdict::new();
    verdict.check(agents == planned, || {
        format!("the hierarchy holds {agents} agents, not the {planned} planned")
    });
    verdict.check(counted == planned, || {
        format!("the runtime counts {counted} agents, not the {planned} planned")
    });
    verdict.check(agents_after_shrink == counted - retired, || {
        format!(
            "after retiring {retired} idle workers the tree holds {agents_after_shrink} agents, not {}: their places were not given back",
            counted - retired
        )
    });
    Ok(SpawnReport {
        agents,
        workers,
        tiers,
        mode: mode_name(mode),
        seconds,
        agents_per_second: agents as f64 / seconds,
        bytes_per_agent: rss_after.saturating_sub(rss_before) as f64 / agents.max(1) as f64,
        idle_cpu_percent: 100.0 * idle_cpu / idle_seconds.max(1e-9),
        idle_seconds,
        agents_after_shrink,
        bytes_freed_per_retired,
        verdict,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct DispatchReport {
    pub agents: u64,
    pub workers: u64,
    pub tasks: u64,
    pub batch: usize,
    /// How sim attempts answered: `inline` or `woken`.
    pub answer: String,
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub attempts: u64,
    /// Tasks the journal held unfinished at start; they ran in this run too.
    pub recovered: u64,
    /// Tasks that ended in the journal during the run: must equal `tasks + recovered`.
    pub journal_terminal: u64,
    /// One task in `sample_every` is followed to its caller.
    pub sample_every: u64,
    /// From the moment the submitter offered a followed task's batch (before waiting for room
    /// and for the journal) to the moment its completion reached the caller.
    pub latency: Percentiles,
    /// From acceptance to the terminal state, as the dispatcher measures it, for the same
    /// tasks: the figure earlier versions reported as latency, for the first task of each
    /// batch only.
    pub dispatcher_latency: Percentiles,
    /// How long each batch took to be accepted: waiting for room in the hierarchy and, with a
    /// SQLite journal, for the group commit.
    pub accept_latency: Percentiles,
    /// The SQLite file, when the journal was durable.
    pub journal: Option<String>,
    /// From opening the journal to accepting work: spawning the agents and recovering what
    /// the journal held unfinished.
    pub start_seconds: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
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
    let before = Before(handle.journal().counts()?);
    let workers = swarm.workers()?;
    let agents = handle.stats().agents;
    let every = tasks.div_ceil(DISPATCH_SAMPLES).max(1);
    let receipts = Receipts::start();
    let started = Instant::now();
    let mut accepts = Vec::new();
    let mut offered = 0u64;
    // A batch larger than the hierarchy holds could never be admitted.
    let batch = batch.min(handle.stats().capacity as usize).max(1);
    while offered < tasks {
        let n = (tasks - offered).min(batch as u64) as usize;
        let specs = vec![TaskSpec::with_payload(payload.clone()); n];
        let asked = Instant::now();
        let first = offered;
        let (_, tracked) = handle
            .submit_batch_tracked(specs, |i| (first + i as u64).is_multiple_of(every))
            .await?;
        accepts.push(asked.elapsed());
        for pending in tracked {
            receipts.follow(asked, pending);
        }
        offered += n as u64;
    }
    handle.drain().await?;
    let seconds = started.elapsed().as_secs_f64();
    let received = receipts.finish().await?;
    let stats = handle.stats();
    let counts = handle.journal().counts()?;
    runtime.shutdown().await;
    let mut verdict = Verdict::new();
    // Tasks recovered from a used journal count as accepted by this process too.
    let expected = tasks + before.recovered();
    verdict.check(stats.accepted == expected, || {
        format!(
            "{} tasks accepted of {tasks} submitted and {} recovered",
            stats.accepted,
            before.recovered()
        )
    });
    let journal_terminal = before.check(counts, tasks, &mut verdict);
    let followed = tasks.div_ceil(every);
    verdict.check(received.received() == followed, || {
        format!(
            "{} completions of {followed} followed tasks reached the caller ({} never came)",
            received.received(),
            received.missing
        )
    });
    verdict.check(received.unsuccessful == 0, || {
        format!(
            "{} followed tasks did not succeed, with no fault injected",
            received.unsuccessful
        )
    });
    Ok(DispatchReport {
        agents,
        workers,
        tasks,
        batch,
        answer: answer_name(swarm.answer),
        seconds,
        tasks_per_second: tasks as f64 / seconds,
        succeeded: stats.succeeded,
        failed: stats.failed,
        dead_lettered: stats.dead_lettered,
        attempts: stats.attempts,
        recovered: before.recovered(),
        journal_terminal,
        sample_every: every,
        latency: Percentiles::of(received.latency),
        dispatcher_latency: Percentiles::of(received.dispatcher),
        accept_latency: Percentiles::of(accepts),
        journal: swarm.journal.as_ref().map(BenchJournal::shown),
        start_seconds,
        verdict,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub agents: u64,
    /// How sim attempts answered: `inline` or `woken`.
    pub answer: String,
    /// How the submitter waited for each task's time: `spin` or `sleep`.
    pub pace: Pace,
    pub offered_per_second: f64,
    /// Tasks accepted per second over the time the submitter took: below the offered rate
    /// when it fell behind its schedule.
    pub achieved_per_second: f64,
    pub tasks: u64,
    pub seconds: f64,
    /// From each task's scheduled submission time (not the moment it was sent: a submitter
    /// that falls behind its schedule counts) to the moment its completion reached the caller.
    pub latency: Percentiles,
    /// From the scheduled time to acceptance: the submitter's lag behind its schedule, the
    /// wait for room and, with a SQLite journal, the commit of the task.
    pub accept_latency: Percentiles,
    /// From acceptance to the terminal state, as the dispatcher measures it: the figure
    /// earlier versions reported as latency.
    pub dispatcher_latency: Percentiles,
    /// The SQLite file, when the journal was durable.
    pub journal: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Most tasks one `latency` run offers: 10 million receipts take about half a gigabyte.
pub const MAX_LATENCY_TASKS: u64 = 10_000_000;

/// How the `latency` submitter waits for each task's scheduled time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// Spins on the clock: every task leaves on time, and the submitter holds a core.
    Spin,
    /// Sleeps until the time is due (the kernel wakes it tens of microseconds late), then
    /// submits every task that came due meanwhile: the core is free for the runtime, as it
    /// is when submissions come from the network.
    Sleep,
}

/// Offers `rate` single-task submissions per second for `duration`, open loop: a submitter
/// thread keeps to the schedule whatever the runtime does, and every task's time from its
/// scheduled submission to its completion reaching the caller is recorded.
pub async fn latency(
    swarm: &Swarm,
    rate: f64,
    duration: Duration,
    pace: Pace,
) -> Result<LatencyReport, Error> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(Error::Options(format!(
            "offered rate {rate} is not a positive number"
        )));
    }
    let tasks = (rate * duration.as_secs_f64()).round() as u64;
    // Every task's receipt is kept (about 48 bytes each): the offer is bounded so that a
    // large rate times a long run is refused instead of exhausting memory.
    if tasks > MAX_LATENCY_TASKS {
        return Err(Error::Options(format!(
            "{rate}/s for {duration:?} offers {tasks} tasks: at most {MAX_LATENCY_TASKS} per run"
        )));
    }
    let runtime = swarm.start(SpawnMode::Batch).await?;
    let handle = runtime.handle().clone();
    let before = Before(handle.journal().counts()?);
    let agents = handle.stats().agents;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let submitter = handle.clone();
    let receipts = Receipts::start();
    let follow = receipts.tx.clone();
    let thread = Spawner::spawn_thread("bench-submitter", move || {
        let mut accepts = Vec::with_capacity(tasks as usize);
        let start = Instant::now();
        for i in 0..tasks {
            let due = start + interval.mul_f64(i as f64);
            match pace {
                Pace::Spin => {
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                }
                Pace::Sleep => {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
            let pending =
                futures::executor::block_on(submitter.submit_notify(TaskSpec::default()))?;
            accepts.push(due.elapsed());
            let _ = follow.send((due, pending));
        }
        Ok::<_, Error>((accepts, start.elapsed()))
    })
    .map_err(|e| Error::Options(format!("cannot start the submitter thread: {e}")))?;
    let (accepts, submit_time) = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(|_| Error::Stopped)??;
    handle.drain().await?;
    let received = receipts.finish().await?;
    let counts = handle.journal().counts()?;
    runtime.shutdown().await;
    let seconds = submit_time.as_secs_f64();
    let mut verdict = Verdict::new();
    verdict.check(tasks > 0, || {
        format!("no task offered: {rate}/s for {duration:?} rounds to 0")
    });
    before.check(counts, tasks, &mut verdict);
    verdict.check(received.received() == tasks, || {
        format!(
            "{} completions of {tasks} tasks reached the caller ({} never came)",
            received.received(),
            received.missing
        )
    });
    verdict.check(received.unsuccessful == 0, || {
        format!(
            "{} tasks did not succeed, with no fault injected",
            received.unsuccessful
        )
    });
    Ok(LatencyReport {
        agents,
        answer: answer_name(swarm.answer),
        pace,
        offered_per_second: rate,
        achieved_per_second: tasks as f64 / seconds.max(1e-9),
        tasks,
        seconds,
        latency: Percentiles::of(received.latency),
        accept_latency: Percentiles::of(accepts),
        dispatcher_latency: Percentiles::of(received.dispatcher),
        journal: swarm.journal.as_ref().map(BenchJournal::shown),
        verdict,
    })
}

/// The name of an [`Answer`] in reports.
pub fn answer_name(answer: Answer) -> String {
    match answer {
        Answer::Inline => "inline".into(),
        Answer::Woken => "woken".into(),
    }
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

pub mod autoscale;
pub mod crash;
pub mod health;
pub mod memory;
pub mod messages;
pub mod restart;
pub mod vote;
pub mod warm;

/// How often `recovery` kills its share of the workers.
const KILL_TICK: Duration = Duration::from_millis(100);

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
    /// Whether every task ended once, in the journal too, the kills asked for happened, and
    /// nothing failed unless a fault was injected.
    #[serde(flatten)]
    pub verdict: Verdict,
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
    // Kills owed accumulate across ticks, so that a rate below one kill per tick is kept
    // on average instead of rounding to none.
    let per_tick = workers as f64 * kill_rate * KILL_TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut kills = 0;
    let killing = Instant::now();
    while killing.elapsed() < kill_for && handle.stats().finished() < tasks {
        owed += per_tick;
        while owed >= 1.0 {
            let victim = colony_core::AgentId(first_worker + rng.random_range(0..workers as u32));
            handle.kill(victim)?;
            kills += 1;
            owed -= 1.0;
        }
        tokio::time::sleep(KILL_TICK).await;
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
    let mut verdict = Verdict::new();
    verdict.check(stats.accepted == tasks, || {
        format!("{} tasks accepted of {tasks}", stats.accepted)
    });
    verdict.check(lost == 0, || {
        format!("{lost} accepted tasks are not terminal in the journal")
    });
    verdict.check(duplicate_commits == 0, || {
        format!("{duplicate_commits} tasks counted as ended beyond those the journal holds")
    });
    verdict.check(journal_agrees, || {
        format!(
            "the journal counts {} succeeded, {} failed, {} dead-lettered; the runtime {}, {}, {}",
            counts.succeeded,
            counts.failed,
            counts.dead_lettered,
            stats.succeeded,
            stats.failed,
            stats.dead_lettered
        )
    });
    verdict.check(kill_rate == 0.0 || kills > 0, || {
        format!(
            "no agent was killed: a kill rate of {kill_rate} of {workers} workers is {:.3} kills a second, and the killing lasted {kill_seconds:.2} s",
            workers as f64 * kill_rate
        )
    });
    let sim = &swarm.sim;
    let injected = sim.error_rate + sim.crash_rate + sim.hang_rate > 0.0;
    verdict.check(injected || stats.failed + stats.dead_lettered == 0, || {
        format!(
            "{} failed and {} dead-lettered with no fault injected: kills must not cost a task its attempts",
            stats.failed, stats.dead_lettered
        )
    });
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
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm(agents: u64) -> Swarm {
        Swarm {
            agents,
            span: 10,
            tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
            sim: SimOptions::default(),
            answer: Answer::Inline,
            journal: None,
            retry: crate::RetryOptions::default(),
            supervision: Default::default(),
            health: Default::default(),
        }
    }

    /// Per task, the caller's latency starts before acceptance and ends after the terminal
    /// state, so every order statistic of it is at least the dispatcher's.
    fn caller_sees_at_least_the_dispatcher(caller: &Percentiles, dispatcher: &Percentiles) {
        assert_eq!(caller.samples, dispatcher.samples);
        for (c, d) in [
            (caller.p50_us, dispatcher.p50_us),
            (caller.p99_us, dispatcher.p99_us),
            (caller.max_us, dispatcher.max_us),
        ] {
            assert!(c >= d, "caller {c} µs < dispatcher {d} µs");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatch_follows_every_kth_task_to_its_caller() {
        let report = dispatch(&swarm(60), 1_000, 64, 2).await.unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.journal_terminal, 1_000);
        // 1,000 tasks are fewer than the samples wanted: every task is followed, not only the
        // first of each of the 16 batches.
        assert_eq!(report.sample_every, 1);
        assert_eq!(report.latency.samples, 1_000);
        caller_sees_at_least_the_dispatcher(&report.latency, &report.dispatcher_latency);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatch_samples_spread_over_every_batch() {
        // More tasks than samples: every third task is followed, 46,667 of them, where
        // following the first of each batch gave 35.
        let report = dispatch(&swarm(60), 140_000, 4_096, 2).await.unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.sample_every, 3);
        assert_eq!(report.latency.samples, 46_667);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatch_whose_tasks_fail_has_a_false_verdict() {
        let mut s = swarm(60);
        s.sim.error_rate = 1.0;
        let report = dispatch(&s, 200, 50, 2).await.unwrap();
        assert!(!report.verdict.ok);
        let problems = report.verdict.problems.join("\n");
        assert!(problems.contains("200 dead-lettered"), "{problems}");
        assert!(problems.contains("did not succeed"), "{problems}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_dispatch_counts_only_its_own_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = swarm(60);
        s.journal = Some(BenchJournal::Sqlite(SqliteOptions::new(
            dir.path().join("j.db"),
        )));
        let first = dispatch(&s, 300, 100, 2).await.unwrap();
        assert!(first.verdict.ok, "{:?}", first.verdict.problems);
        // The same journal again: its 300 earlier tasks are not this run's.
        let second = dispatch(&s, 200, 100, 2).await.unwrap();
        assert!(second.verdict.ok, "{:?}", second.verdict.problems);
        assert_eq!(second.journal_terminal, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_counts_from_the_schedule_with_woken_answers() {
        let mut s = swarm(60);
        s.answer = Answer::Woken;
        let report = latency(&s, 2_000.0, Duration::from_millis(100), Pace::Spin)
            .await
            .unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.answer, "woken");
        assert_eq!(report.tasks, 200);
        assert_eq!(report.latency.samples, 200);
        assert_eq!(report.accept_latency.samples, 200);
        caller_sees_at_least_the_dispatcher(&report.latency, &report.dispatcher_latency);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sleeping_submitter_still_offers_every_task_and_counts_its_lateness() {
        // 20,000/s is a task every 50 µs, shorter than most sleeps: tasks leave in bursts,
        // late, and the lateness is part of their latency.
        let report = latency(
            &swarm(60),
            20_000.0,
            Duration::from_millis(100),
            Pace::Sleep,
        )
        .await
        .unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.pace, Pace::Sleep);
        assert_eq!(report.tasks, 2_000);
        assert_eq!(report.latency.samples, 2_000);
        caller_sees_at_least_the_dispatcher(&report.latency, &report.dispatcher_latency);
        for (caller, accepted) in [
            (report.latency.p50_us, report.accept_latency.p50_us),
            (report.latency.max_us, report.accept_latency.max_us),
        ] {
            assert!(
                caller >= accepted,
                "caller {caller} µs < accepted {accepted} µs"
            );
        }
    }

    #[test]
    fn more_agents_than_the_largest_hierarchy_are_refused() {
        let mut s = swarm(60);
        s.agents = 99_999_999_999;
        let e = s.workers().unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[tokio::test]
    async fn a_latency_offer_beyond_what_its_receipts_may_hold_is_refused() {
        let e = latency(
            &swarm(60),
            10_000_000.0,
            Duration::from_secs(3_600),
            Pace::Spin,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("at most 10000000 per run"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_checks_the_agents_against_the_plan() {
        let report = spawn(&swarm(60), SpawnMode::Batch, Duration::ZERO)
            .await
            .unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.agents, swarm(60).planned(report.workers).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_rate_that_kills_no_agent_fails_the_verdict() {
        // 54 workers at 1e-4 a second for 0.3 s: 0.0016 kills expected, none made.
        let report = recovery(
            &swarm(60),
            100,
            1e-4,
            Duration::from_millis(300),
            Duration::from_secs(5),
            1,
        )
        .await
        .unwrap();
        assert_eq!(report.kills, 0);
        assert!(!report.verdict.ok);
        assert!(
            report.verdict.problems[0].contains("no agent was killed"),
            "{:?}",
            report.verdict.problems
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kills_without_injected_faults_lose_nothing() {
        let mut s = swarm(60);
        s.sim.latency = colony_agents::sim::Latency::Fixed {
            value: Duration::from_millis(5),
        };
        // A fraction of a kill per tick adds up instead of rounding away: 54 workers at 0.15
        // a second is 0.81 kills a tick (rounded, the old way, 1 a tick). 5,000 tasks of 5 ms
        // on 54 workers last about 0.5 s.
        let report = recovery(
            &s,
            5_000,
            0.15,
            Duration::from_secs(5),
            Duration::from_secs(5),
            1,
        )
        .await
        .unwrap();
        assert!(report.kills > 0);
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.succeeded, 5_000);
    }
}
