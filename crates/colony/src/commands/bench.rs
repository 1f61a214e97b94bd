//! `colony bench`: measure the runtime on this machine.

use crate::{
    Failure,
    flags::Float,
    output::{Table, thousands},
};
use colony_agents::sim::{Answer, SimOptions};
use colony_core::hierarchy::{DEFAULT_SPAN, DEFAULT_TIERS, Tiers};
use colony_journal::{SqliteOptions, Synchronous};
use colony_runtime::{
    SpawnMode,
    bench::{self, BenchJournal, Percentiles, Swarm, Verdict, crash},
};
use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Bench {
    /// Spawn a hierarchy of in-process agents; time it, weigh it, and watch it idle.
    Spawn {
        #[command(flatten)]
        swarm: SwarmArgs,
        /// single | batch | waves
        #[arg(long, default_value = "batch", value_parser = ["single", "batch", "waves"])]
        mode: String,
        /// Agents per wave with `--mode waves`.
        #[arg(long, default_value_t = 20)]
        wave_size: u32,
        /// Seconds to leave the agents idle while measuring CPU use.
        #[arg(long, default_value_t = 2.0, value_parser = Float::new(0.0, 3600.0))]
        idle_secs: f64,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// Push no-op tasks through the hierarchy, journal included.
    Dispatch {
        #[command(flatten)]
        swarm: SwarmArgs,
        #[command(flatten)]
        answer: AnswerArgs,
        /// Tasks to run.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        /// Tasks per submission.
        #[arg(long, default_value_t = 4_096)]
        batch: usize,
        /// Journal to a SQLite file (a new temporary one unless `--db` names one).
        #[arg(long)]
        durable: bool,
        /// Size of each task's JSON payload.
        #[arg(long, default_value_t = 2)]
        payload_bytes: usize,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// Offer single tasks on a fixed schedule; time each from its scheduled submission until
    /// the caller receives its completion.
    Latency {
        #[command(flatten)]
        swarm: SwarmArgs,
        #[command(flatten)]
        answer: AnswerArgs,
        /// Tasks offered per second.
        #[arg(long, default_value_t = 100_000.0, value_parser = Float::new(1.0, 10_000_000.0))]
        rate: f64,
        /// Seconds to keep offering.
        #[arg(long, default_value_t = 5.0, value_parser = Float::new(0.01, 3600.0))]
        secs: f64,
        /// Journal to a SQLite file (a new temporary one unless `--db` names one): latencies
        /// then include the commit of each task and of its result.
        #[arg(long)]
        durable: bool,
        /// How the submitter waits for each task's time. spin: on the clock, holding a core;
        /// sleep: asleep, then every task due meanwhile (late ones count their lateness).
        #[arg(long, value_enum, default_value = "spin")]
        pace: PaceArg,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL the process running a durable workload at random moments, restart it on the
    /// same journal, and check that no task was lost or committed twice.
    Crash(CrashArgs),
    /// Kill a share of the workers every second while tasks run, on top of injected errors,
    /// crashes and hangs; check that every task ends and the journal agrees.
    Recovery(RecoveryArgs),
    /// One supervisor of --children workers; kill them one at a time and time each kill until
    /// the replacement has answered a task (Erlang's W4).
    Restart {
        /// Workers under the one supervisor.
        #[arg(long, default_value_t = 100)]
        children: u32,
        /// Kills, one at a time: child k mod --children (100 by default, so that the p99 is
        /// not the maximum).
        #[arg(long, default_value_t = 100)]
        kills: u32,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// Generate a workflow (a random graph), check it and run it to completion: the cost of
    /// orchestration per task, or the rate of command agents' processes.
    Workflow(WorkflowArgs),
    /// Offer one demand trace (a daily cycle compressed to minutes, plus bursts) to a pool of
    /// sim agents in virtual time, at a static size, scaled reactively, and scaled with the
    /// forecast too; compare waits, objective misses and agent-seconds.
    Autoscale(AutoscaleArgs),
    /// A chaos run in virtual time: a share of the agents turn slow and a share start failing;
    /// compare health acting (circuit breakers) with health only observing.
    Health(HealthArgs),
    /// Time new `process` agents' first tasks: with a process started for each (cold) and
    /// with one taken from the pool's pre-started processes (warm). Needs python3.
    Warm {
        /// New agents to time, in each mode.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::warm::MAX_AGENTS)))]
        agents: u32,
        /// Processes kept pre-started.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
        warm: u32,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// Rounds of a majority vote among in-process agents (Erlang's W5): each decision runs
    /// through the runtime (voters seated and asked inline, the decision journaled in one
    /// write; with --ballot-tasks, a journaled ballot task pinned to each) and is timed until
    /// the caller holds the outcome; beside it, the engine tallying 10,000 ballots and, with
    /// --erlang, the peer's W5 in the same run.
    Vote {
        /// Voters, each a worker of its own.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::vote::MAX_AGENTS)))]
        agents: u32,
        /// Decisions timed (after 10 untimed ones).
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::vote::MAX_ROUNDS)))]
        rounds: u32,
        /// The Erlang peer's script (`erlang_peer.escript`), run with `escript ... w5` after
        /// colony's rounds: its p99 joins the verdict (colony's must be at most half).
        #[arg(long, value_name = "SCRIPT")]
        erlang: Option<PathBuf>,
        /// The voters do not say they answer inline, so each ballot is a task of its own:
        /// how a decision among agents that answer later (processes, endpoints) runs.
        #[arg(long)]
        ballot_tasks: bool,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// The shared memory's embedded store: documents (seeded, clustered vectors and skewed
    /// words) stored in batches, then exact vector search among 10,000 and among all of
    /// them, text and hybrid search, approximate search over all (HNSW, with its recall@10
    /// against exact), and a search answered again from the cache, each timed from the call
    /// to its answer. In a temporary directory, deleted after.
    Memory {
        /// Documents of the larger namespace (a second one holds 10,000 more).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(10_000..=i64::from(bench::memory::MAX_DOCUMENTS)))]
        documents: u32,
        /// Dimensions of each document's vector.
        #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::memory::MAX_DIMENSION)))]
        dimension: u32,
        /// Searches timed of each kind.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::memory::MAX_QUERIES)))]
        queries: u32,
        /// Seed of the documents and queries.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run the workload on this ChromaDB server instead, through colony's Chroma store
        /// (http://HOST:PORT, as `colony memory --chroma`), in namespaces deleted after:
        /// the same figures beside the embedded store's, but for the cache and the index
        /// build (Chroma indexes as it stores).
        #[arg(long, value_name = "URL", conflicts_with = "nats")]
        chroma: Option<String>,
        /// Run the workload on a memory in NATS JetStream instead (nats://HOST:PORT/NAME, as
        /// `colony memory --db`; ?replicas=1 for a single server), in a memory of its own
        /// named after NAME, deleted after: every write through the stream and this
        /// process's copy, every read after the copy caught up with the stream.
        #[arg(long, value_name = "LOCATION")]
        nats: Option<String>,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// The message bus: a direct stream (one sender, one reader), Erlang's W5 over a topic
    /// of 100 agents that answer by direct message, broadcasts to a team of 12, and a run of
    /// messages from 8 senders to 64 agents whose readers are killed every millisecond and 4
    /// of which are retired halfway (0 lost, 0 reordered per sender, or the verdict fails).
    /// Latency is from the send to the reader taking the message.
    Messages {
        /// Messages of the direct stream and of the kills run.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=bench::messages::MAX_MESSAGES))]
        messages: u64,
        /// Rounds of the topic (after 10 untimed ones) and team loads.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::messages::MAX_ROUNDS)))]
        rounds: u32,
        /// Seed of which reader is killed when.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The Erlang peer's script (`erlang_peer.escript`): its W5 with 100 agents runs
        /// after colony's loads, beside the topic rounds.
        #[arg(long, value_name = "SCRIPT")]
        erlang: Option<PathBuf>,
        /// Print the report as JSON, verdict included.
        #[arg(long)]
        json: bool,
    },
    /// Tasks end to end through a cluster on NATS JetStream: in-process nodes of sim agents
    /// pull them; throughput and latency from publish to the end seen.
    Cluster(ClusterArgs),
    /// The process `bench crash` kills (internal).
    #[command(hide = true)]
    CrashChild(CrashChildArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// The cluster's NATS servers (comma-separated); without it, the bench starts three
    /// nats-server processes from PATH (R3, file storage, sync_interval: always) in a
    /// temporary folder.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Replicas of the cluster's tasks: 3 or 5; 1 for a single server.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Tasks to run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    tasks: u64,
    /// Nodes, each with its own runtime and NATS connection, in this process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    nodes: u64,
    /// Sim agents per node.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    agents: u32,
    /// Attempts each node runs at once.
    #[arg(long, default_value_t = 1_024, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    in_flight: u64,
    /// Size of each task's JSON payload.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=65_536))]
    payload_bytes: u64,
    /// Each task a majority vote among this many agents of the node that takes it (checked
    /// decided as they voted; the tasks/s target is not judged); 0: plain tasks.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    voters: u32,
    /// Spread each vote over the cluster: its ballots are cluster tasks of their own, run by
    /// any node's agents, and the node that takes the vote counts them (with --voters).
    #[arg(long, requires = "voters")]
    spread: bool,
    /// The nodes' agents run this program once per task (`command` agents) instead of sims;
    /// the target is then 1,000 tasks/s. Mind --agents: each runs a process at once.
    #[arg(long, value_name = "PROGRAM")]
    command: Option<String>,
    /// Up to this many plain tasks in one message of the stream (each keeps its own id,
    /// record, attempts and cancel); 1: one each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=512))]
    bundle: u64,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

fn cluster(args: &ClusterArgs) -> Result<(), Failure> {
    use colony_cluster::{
        Settings,
        bench::{self as cb, BenchOptions},
        testing::NatsCluster,
    };
    let settings = Settings {
        replicas: args.replicas,
        ..Settings::default()
    };
    settings.validate().map_err(Failure::input)?;
    if args.bundle > 1 && args.voters > 0 {
        return Err(Failure::input(anyhow::anyhow!(
            "--bundle bundles plain tasks, and a vote goes alone: give --bundle or --voters"
        )));
    }
    if args.voters > args.agents && !args.spread {
        return Err(Failure::input(anyhow::anyhow!(
            "--voters {} is more than the {} agents of a node (--agents)",
            args.voters,
            args.agents
        )));
    }
    // Its own servers start before the runtime: their start waits with blocking sleeps.
    let dir = tempfile::tempdir().map_err(Failure::work)?;
    let own = match &args.nats {
        Some(_) => None,
        None => {
            if args.replicas != 3 {
                return Err(Failure::input(anyhow::anyhow!(
                    "--replicas {}: the bench's own cluster has three servers (R3); give --nats for another",
                    args.replicas
                )));
            }
            Some(NatsCluster::three(dir.path()).map_err(|e| Failure::work(anyhow::anyhow!(e)))?)
        }
    };
    let url = args
        .nats
        .clone()
        .or_else(|| own.as_ref().map(NatsCluster::url))
        .unwrap_or_default();
    let options = BenchOptions {
        tasks: args.tasks,
        nodes: usize::try_from(args.nodes).unwrap_or(1),
        agents: args.agents,
        in_flight: usize::try_from(args.in_flight).unwrap_or(1024),
        payload_bytes: usize::try_from(args.payload_bytes).unwrap_or(2),
        voters: args.voters,
        spread: args.spread,
        command: args.command.clone(),
        bundle: usize::try_from(args.bundle).unwrap_or(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let report = runtime.block_on(async {
        // A new cluster elects its JetStream leader first.
        let ready =
            colony_cluster::testing::connect(&url, settings.clone(), Duration::from_secs(30)).await;
        match ready {
            Ok(_) => cb::run(&url, settings, &options).await,
            Err(e) => Err(e),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(own);
    let report = report.map_err(|e| match e {
        colony_cluster::Error::Settings(_) => Failure::input(e),
        e => Failure::work(e),
    })?;
    if args.json {
        print_json(&report)?;
        return judge("cluster", &report.verdict);
    }
    let ms = |us: f64| format!("{:.1} ms", us / 1000.0);
    let mut t = Table::new(&[
        "tasks", "voters", "bundle", "nodes", "replicas", "seconds", "tasks/s", "p50", "p99",
        "max", "attempts", "fenced",
    ]);
    t.row(vec![
        thousands(report.tasks),
        report.voters.map_or_else(|| "-".into(), |v| v.to_string()),
        report.bundle.map_or_else(|| "-".into(), |n| n.to_string()),
        report.nodes.to_string(),
        report.replicas.to_string(),
        format!("{:.2}", report.seconds),
        format!("{:.0}", report.per_second),
        ms(report.latency.p50_us),
        ms(report.latency.p99_us),
        ms(report.latency.max_us),
        thousands(report.attempts),
        report.fenced.to_string(),
    ]);
    print!("{}", t.render());
    print_ok(&report.verdict);
    judge("cluster", &report.verdict)
}

#[derive(Debug, clap::Args)]
pub(crate) struct AutoscaleArgs {
    /// Length of the trace, in virtual minutes.
    #[arg(long, default_value_t = 60.0, value_parser = Float::new(1.0, bench::autoscale::MAX_MINUTES))]
    minutes: f64,
    /// Length of one cycle ("day"), in virtual minutes.
    #[arg(long, default_value_t = 15.0, value_parser = Float::new(1.0, bench::autoscale::MAX_MINUTES))]
    period_minutes: f64,
    /// Arrivals per second at the cycle's low point.
    #[arg(long, default_value_t = 20.0, value_parser = Float::new(0.0, 10_000.0))]
    base_rate: f64,
    /// Arrivals per second at the cycle's high point.
    #[arg(long, default_value_t = 200.0, value_parser = Float::new(0.001, 10_000.0))]
    peak_rate: f64,
    /// Bursts of an extra half of the peak rate, a minute each, at seeded times.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    bursts: u32,
    /// Service time of every task, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    task_ms: u64,
    /// The pool's largest size, and the static mode's size.
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_agents: u32,
    /// The autoscaler's period, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = Float::new(0.01, 3600.0))]
    every_secs: f64,
    /// A task waiting longer than this many seconds misses its objective.
    #[arg(long, default_value_t = 5.0, value_parser = Float::new(0.0, 86_400.0))]
    slo_secs: f64,
    /// Seed of the bursts' times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run the trace once, reactively scaled, on real `process` agents (one python3 process
    /// each) in real time, then idle down and count the processes left. Minutes are real.
    #[arg(long)]
    process: bool,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Worker agents.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    agents: u32,
    /// Tasks offered per second, evenly.
    #[arg(long, default_value_t = 100.0, value_parser = Float::new(0.1, 100_000.0))]
    rate: f64,
    /// Length of the run, in virtual seconds.
    #[arg(long, default_value_t = 300.0, value_parser = Float::new(1.0, 86_400.0))]
    secs: f64,
    /// Share of the agents that turn slow (8 s answers, critical past 5 s).
    #[arg(long, default_value_t = 0.2, value_parser = Float::new(0.0, 0.9))]
    slow_share: f64,
    /// Share of the agents whose every attempt fails.
    #[arg(long, default_value_t = 0.05, value_parser = Float::new(0.0, 0.9))]
    failing_share: f64,
    /// Seed of which agents turn faulty.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CrashArgs {
    /// Runs, each on a new journal.
    #[arg(long, default_value_t = 20)]
    runs: u32,
    /// Tasks per run.
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Decisions per run, among 5 agents each, opened between the batches of tasks: by
    /// majority and by leader (a proposal, then four reviews) in turn.
    #[arg(long, default_value_t = 0)]
    decisions: u64,
    /// Each run is killed between 1 and this many times before it may finish.
    #[arg(long, default_value_t = 5)]
    max_kills: u32,
    /// Worker agents in the child.
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Seed of the kill times and the agents' latencies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep each run's journal in NATS at this URL (nats://HOST:PORT, several
    /// comma-separated), a journal per run deleted once checked, rather than in a SQLite file.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// With --nats: the copies the servers keep of each journal (3 or 5; 1 for a single
    /// server).
    #[arg(long, default_value_t = 3, requires = "nats")]
    replicas: usize,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RecoveryArgs {
    #[command(flatten)]
    swarm: SwarmArgs,
    // Matters with `--latency-us 0` only: attempts with a latency wait on a timer.
    #[command(flatten)]
    answer: AnswerArgs,
    /// Tasks to run.
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// Share of the workers killed each second (0 to 1). A rate that kills no agent before the
    /// work ends fails the verdict.
    #[arg(long, default_value_t = 0.1, value_parser = Float::new(0.0, 1.0))]
    kill_rate: f64,
    /// Seconds to keep killing (less if the tasks finish first).
    #[arg(long, default_value_t = 30.0, value_parser = Float::new(0.0, 3600.0))]
    secs: f64,
    /// Each attempt takes a uniform 0..=this many microseconds.
    #[arg(long, default_value_t = 2_000)]
    latency_us: u64,
    /// Probability an attempt fails with a retryable error.
    #[arg(long, default_value_t = 0.0, value_parser = Float::new(0.0, 1.0))]
    error_rate: f64,
    /// Probability an attempt crashes its agent.
    #[arg(long, default_value_t = 0.0, value_parser = Float::new(0.0, 1.0))]
    crash_rate: f64,
    /// Probability an attempt hangs until its timeout.
    #[arg(long, default_value_t = 0.0, value_parser = Float::new(0.0, 1.0))]
    hang_rate: f64,
    /// Timeout of one attempt, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    timeout_ms: u64,
    /// Delay before a retry, doubling up to 1 s; 0 retries at once.
    #[arg(long, default_value_t = 10)]
    retry_backoff_ms: u64,
    /// How each managing agent restarts its children when one exits.
    #[arg(long, value_enum, default_value = "one-for-one")]
    strategy: SupervisionStrategy,
    /// Restarts a managing agent allows within --restart-period-secs before it escalates.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// The window, in seconds, over which --max-restarts counts a managing agent's restarts.
    #[arg(long, default_value_t = 5.0, value_parser = Float::new(0.0, 1e6))]
    restart_period_secs: f64,
    /// Health sweep interval: how often supervisors look at their busy children.
    #[arg(long, default_value_t = 1_000)]
    heartbeat_ms: u64,
    /// Silence after which a busy agent is declared failed.
    #[arg(long, default_value_t = 10_000)]
    failed_after_ms: u64,
    /// Seed of the agents' latencies and faults, and of the choice of agents to kill.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CrashChildArgs {
    /// The journal of the run, kept across kills: a SQLite file, or nats://HOST:PORT/NAME.
    #[arg(long)]
    db: PathBuf,
    /// The file every attempt started is appended to.
    #[arg(long)]
    ledger: PathBuf,
    /// Tasks of the whole run; a restarted child submits those not yet accepted.
    #[arg(long)]
    tasks: u64,
    /// Worker agents.
    #[arg(long)]
    agents: u32,
    /// Seed of the agents' latencies.
    #[arg(long)]
    seed: u64,
    /// Decisions of the whole run.
    #[arg(long, default_value_t = 0)]
    decisions: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SwarmArgs {
    /// Agents in all tiers together.
    #[arg(long, default_value_t = 10_000)]
    agents: u64,
    /// The most children one agent supervises.
    #[arg(long, default_value_t = DEFAULT_SPAN)]
    span: u32,
    /// Tier names, top to bottom, separated by commas.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TIERS.map(String::from))]
    tiers: Vec<String>,
    /// Journal to this SQLite file instead of memory (created if missing), or to a journal
    /// in NATS (nats://HOST:PORT/NAME[?replicas=1]).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// full: every commit survives a power cut; normal: faster, a power cut can lose the last
    /// commits (a crash of colony cannot).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    synchronous: String,
}

/// `--answer` of the benchmarks that run tasks.
#[derive(Debug, clap::Args)]
pub(crate) struct AnswerArgs {
    /// How sim attempts without latency answer. inline: inside the call, with no wakeup (the
    /// runtime's own cost; no real agent answers so); woken: from another task through a
    /// channel, so each attempt is parked and woken as one doing I/O is.
    #[arg(long, value_enum, default_value = "inline")]
    answer: AnswerArg,
}

impl AnswerArgs {
    fn answer(&self) -> Answer {
        match self.answer {
            AnswerArg::Inline => Answer::Inline,
            AnswerArg::Woken => Answer::Woken,
        }
    }
}

/// The values of `--pace` of `colony bench latency`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum PaceArg {
    Spin,
    Sleep,
}

impl From<PaceArg> for bench::Pace {
    fn from(p: PaceArg) -> Self {
        match p {
            PaceArg::Spin => Self::Spin,
            PaceArg::Sleep => Self::Sleep,
        }
    }
}

/// The values of `--answer`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum AnswerArg {
    Inline,
    Woken,
}

impl SwarmArgs {
    fn swarm(&self) -> Result<Swarm, Failure> {
        let journal = match &self.db {
            None => None,
            Some(path) => Some(match super::in_nats(path) {
                Some(location) => {
                    let options =
                        colony_cluster::JournalOptions::parse(location).map_err(Failure::input)?;
                    BenchJournal::Other {
                        shown: location.to_owned(),
                        open: Arc::new(move || {
                            let journal =
                                colony_cluster::JetStreamJournal::open(options.clone())
                                    .map_err(|e| colony_runtime::Error::Options(e.to_string()))?;
                            Ok(Arc::new(journal) as Arc<dyn colony_journal::Journal>)
                        }),
                    }
                }
                None => {
                    let mut options = SqliteOptions::new(path);
                    if self.synchronous == "normal" {
                        options.synchronous = Synchronous::Normal;
                    }
                    BenchJournal::Sqlite(options)
                }
            }),
        };
        let swarm = Swarm {
            agents: self.agents,
            span: self.span,
            tiers: Tiers::Named(self.tiers.clone()),
            sim: SimOptions::default(),
            answer: Answer::Inline,
            journal,
            retry: colony_runtime::RetryOptions::default(),
            supervision: Default::default(),
            health: Default::default(),
        };
        swarm.workers().map_err(Failure::input)?;
        Ok(swarm)
    }
}

/// Checks an integer flag; floating-point flags are checked while parsing ([`Float`]).
fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), Failure> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Failure::input(anyhow::anyhow!(
            "{name} {value} is out of range: allowed {min}..={max}"
        )))
    }
}

/// The verdict's row: `ok`, true or false.
fn verdict_rows(t: &mut Table, verdict: &Verdict) {
    t.row(vec!["ok".into(), verdict.ok.to_string()]);
}

/// Prints the table, then each problem on a line of its own (too long for a column).
fn print_table(t: &Table, problems: &[String]) {
    print!("{}", t.render());
    for problem in problems {
        println!("problem: {problem}");
    }
}

/// The verdict under a table of several rows: `ok`, then each problem on a line.
fn print_ok(verdict: &Verdict) {
    println!("ok: {}", verdict.ok);
    for problem in &verdict.problems {
        println!("problem: {problem}");
    }
}

/// Exit code 1 with the problems when the verdict is false.
fn judge(bench: &str, verdict: &Verdict) -> Result<(), Failure> {
    if verdict.ok {
        Ok(())
    } else {
        Err(Failure::work(anyhow::anyhow!(
            "bench {bench}: ok: false: {}",
            verdict.problems.join("; ")
        )))
    }
}

pub(crate) fn run(bench: Bench) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    match bench {
        Bench::Autoscale(args) => return autoscale(&args),
        Bench::Cluster(args) => return cluster(&args),
        Bench::Health(args) => return health(&args),
        Bench::Crash(args) => return crash(&args),
        Bench::Workflow(args) => return workflow(&args),
        Bench::Recovery(args) => {
            let mut swarm = args.swarm.swarm()?;
            swarm.answer = args.answer.answer();
            check_range("--tasks", args.tasks, 1, 1_000_000_000)?;
            check_range("--timeout-ms", args.timeout_ms, 1, 3_600_000)?;
            swarm.sim = SimOptions {
                seed: args.seed,
                latency: colony_agents::sim::Latency::Uniform {
                    min: Duration::ZERO,
                    max: Duration::from_micros(args.latency_us),
                },
                error_rate: args.error_rate,
                crash_rate: args.crash_rate,
                hang_rate: args.hang_rate,
                stands_in_for: None,
            };
            colony_agents::sim::Sim::new(swarm.sim.clone()).map_err(Failure::input)?;
            check_range("--retry-backoff-ms", args.retry_backoff_ms, 0, 1_000)?;
            swarm.retry.initial_backoff = Duration::from_millis(args.retry_backoff_ms);
            swarm.supervision = colony_core::supervision::SupervisorOptions {
                strategy: args.strategy.into(),
                max_restarts: args.max_restarts,
                // Finite and in range: checked by its parser.
                period: Duration::from_secs_f64(args.restart_period_secs),
                ..Default::default()
            };
            swarm.supervision.validate().map_err(|e| {
                Failure::input(anyhow::anyhow!(
                    "{e} (--max-restarts, --restart-period-secs)"
                ))
            })?;
            swarm.health = colony_core::health::HealthOptions {
                heartbeat: Duration::from_millis(args.heartbeat_ms),
                failed_after: Duration::from_millis(args.failed_after_ms),
                ..Default::default()
            };
            // Degraded and critical scale with failed-after, keeping the defaults' proportions.
            swarm.health.degraded_after = swarm.health.failed_after / 5;
            swarm.health.critical_after = swarm.health.failed_after / 2;
            swarm.health.validate().map_err(|e| {
                Failure::input(anyhow::anyhow!("{e} (--heartbeat-ms, --failed-after-ms)"))
            })?;
            let report = runtime
                .block_on(bench::recovery(
                    &swarm,
                    args.tasks,
                    args.kill_rate,
                    Duration::from_secs_f64(args.secs),
                    Duration::from_millis(args.timeout_ms),
                    args.seed,
                ))
                .map_err(failure)?;
            if args.json {
                print_json(&report)?;
            } else {
                let mut t = Table::new(&["recovery", ""]);
                t.row(vec![
                    "agents (workers)".into(),
                    format!(
                        "{} ({})",
                        thousands(report.agents),
                        thousands(report.workers)
                    ),
                ]);
                t.row(vec![
                    "kills".into(),
                    format!(
                        "{} over {:.1} s",
                        thousands(report.kills),
                        report.kill_seconds
                    ),
                ]);
                t.row(vec!["tasks accepted".into(), thousands(report.accepted)]);
                t.row(vec!["succeeded".into(), thousands(report.succeeded)]);
                t.row(vec![
                    "dead-lettered".into(),
                    thousands(report.dead_lettered),
                ]);
                t.row(vec!["failed".into(), thousands(report.failed)]);
                t.row(vec!["lost".into(), thousands(report.lost)]);
                t.row(vec![
                    "re-executions".into(),
                    thousands(report.re_executions),
                ]);
                t.row(vec!["agent restarts".into(), thousands(report.restarts)]);
                t.row(vec![
                    "supervisor escalations".into(),
                    thousands(report.escalations),
                ]);
                t.row(vec![
                    "quarantined (poison)".into(),
                    thousands(report.quarantined),
                ]);
                t.row(vec![
                    "failed by health sweep".into(),
                    thousands(report.health_failures),
                ]);
                t.row(vec![
                    "duplicate commits".into(),
                    thousands(report.duplicate_commits),
                ]);
                let p = |p: &Percentiles| {
                    format!(
                        "{:.1} / {:.1} µs ({} samples)",
                        p.p50_us, p.p99_us, p.samples
                    )
                };
                let beats = |b: [f64; 2]| format!("{:.3} / {:.3} heartbeats", b[0], b[1]);
                t.row(vec![
                    "kill -> attempt ended p50 / p99".into(),
                    p(&report.detection),
                ]);
                t.row(vec!["".into(), beats(report.detection_heartbeats)]);
                t.row(vec![
                    "hang -> given up p50 / p99".into(),
                    p(&report.hang_detection),
                ]);
                t.row(vec!["".into(), beats(report.hang_detection_heartbeats)]);
                t.row(vec![
                    "exit -> replacement serving p50 / p99".into(),
                    p(&report.restart),
                ]);
                t.row(vec![
                    "failure -> redispatched p50 / p99".into(),
                    p(&report.redispatch),
                ]);
                t.row(vec![
                    "late results fenced".into(),
                    thousands(report.late_results_fenced),
                ]);
                t.row(vec![
                    "journal agrees".into(),
                    report.journal_agrees.to_string(),
                ]);
                t.row(vec!["seconds".into(), format!("{:.1}", report.seconds)]);
                verdict_rows(&mut t, &report.verdict);
                print_table(&t, &report.verdict.problems);
            }
            judge("recovery", &report.verdict)?;
        }
        Bench::Restart {
            children,
            kills,
            json,
        } => {
            check_range(
                "--children",
                u64::from(children),
                2,
                u64::from(bench::restart::MAX_CHILDREN),
            )?;
            check_range(
                "--kills",
                u64::from(kills),
                1,
                u64::from(bench::restart::MAX_KILLS),
            )?;
            let report = runtime
                .block_on(bench::restart::restart(children, kills))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("restart", &report.verdict);
            }
            let mut t = Table::new(&["restart", ""]);
            t.row(vec![
                "children".into(),
                thousands(u64::from(report.children)),
            ]);
            t.row(vec!["kills".into(), thousands(u64::from(report.kills))]);
            t.row(vec![
                "answered by the replacement".into(),
                thousands(u64::from(report.answered_by_replacement)),
            ]);
            let k = &report.kill_to_answer;
            t.row(vec![
                "kill -> replacement answered".into(),
                format!(
                    "median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                    k.p50_us, k.p99_us, k.max_us
                ),
            ]);
            let d = &report.dispatcher_restart;
            t.row(vec![
                "  dispatcher: kill -> in service".into(),
                format!(
                    "median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
                    d.p50_us, d.p99_us, d.max_us
                ),
            ]);
            t.row(vec!["agent restarts".into(), thousands(report.restarts)]);
            t.row(vec![
                "supervisor escalations".into(),
                thousands(report.escalations),
            ]);
            t.row(vec!["seconds".into(), format!("{:.2}", report.seconds)]);
            verdict_rows(&mut t, &report.verdict);
            print_table(&t, &report.verdict.problems);
            judge("restart", &report.verdict)?;
        }
        Bench::Warm { agents, warm, json } => {
            let report = runtime
                .block_on(bench::warm::warm(agents, warm))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("warm", &report.verdict);
            }
            let mut t = Table::new(&["first task of a new agent", "p50", "p99", "max"]);
            for (name, p) in [("cold start", &report.cold), ("warm", &report.warmed)] {
                let ms = |us: f64| format!("{:.2} ms", us / 1e3);
                t.row(vec![name.into(), ms(p.p50_us), ms(p.p99_us), ms(p.max_us)]);
            }
            print!("{}", t.render());
            print_ok(&report.verdict);
            judge("warm", &report.verdict)?;
        }
        Bench::Vote {
            agents,
            rounds,
            erlang,
            ballot_tasks,
            json,
        } => {
            let ballots = if ballot_tasks {
                bench::vote::Ballots::Tasks
            } else {
                bench::vote::Ballots::Inline
            };
            let report = runtime
                .block_on(bench::vote::vote(
                    agents,
                    rounds,
                    ballots,
                    erlang.as_deref(),
                ))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("vote", &report.verdict);
            }
            let us = |p: f64| format!("{p:.1} µs");
            let mut t = Table::new(&["vote", "p50", "p99", "max"]);
            let d = &report.decision;
            t.row(vec![
                format!(
                    "colony: a decision among {}, ballots {} ({} decided, {} tied)",
                    report.agents,
                    report.ballots.as_str(),
                    report.decided,
                    report.failed
                ),
                us(d.p50_us),
                us(d.p99_us),
                us(d.max_us),
            ]);
            match &report.erlang {
                Some(e) => t.row(vec![
                    "Erlang W5, same run".into(),
                    us(e.p50_us),
                    us(e.p99_us),
                    us(e.max_us),
                ]),
                None => t.row(vec![
                    "Erlang W5: not run (--erlang)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]),
            }
            t.row(vec![
                "engine: 10,000 ballots tallied".into(),
                us(report.tally_10k_us),
                "-".into(),
                "-".into(),
            ]);
            print!("{}", t.render());
            print_ok(&report.verdict);
            judge("vote", &report.verdict)?;
        }
        Bench::Messages {
            messages,
            rounds,
            seed,
            erlang,
            json,
        } => {
            let report = runtime
                .block_on(bench::messages::messages(
                    messages,
                    rounds,
                    seed,
                    erlang.as_deref(),
                ))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("messages", &report.verdict);
            }
            let us = |p: f64| format!("{p:.1} µs");
            let rate = |r: f64| format!("{:.0}/s", r);
            let mut t = Table::new(&["messages", "read", "rate", "p50", "p99", "max"]);
            let flow = |t: &mut Table, name: String, f: &bench::messages::Flow| {
                t.row(vec![
                    name,
                    f.messages.to_string(),
                    rate(f.per_second),
                    us(f.latency.p50_us),
                    us(f.latency.p99_us),
                    us(f.latency.max_us),
                ]);
            };
            flow(
                &mut t,
                "direct: one sender, one reader".into(),
                &report.direct,
            );
            flow(&mut t, "team of 12: broadcast".into(), &report.team);
            let r = &report.topic;
            let reads = u64::from(r.rounds) * 2 * u64::from(r.subscribers);
            t.row(vec![
                format!(
                    "topic of {}: round to a certain majority (W5)",
                    r.subscribers
                ),
                reads.to_string(),
                rate(r.per_second),
                us(r.decided.p50_us),
                us(r.decided.p99_us),
                us(r.decided.max_us),
            ]);
            t.row(vec![
                format!("topic of {}: round to every answer", r.subscribers),
                "-".into(),
                "-".into(),
                us(r.round.p50_us),
                us(r.round.p99_us),
                us(r.round.max_us),
            ]);
            match &report.erlang {
                Some(e) => t.row(vec![
                    "Erlang W5, same run".into(),
                    "-".into(),
                    "-".into(),
                    us(e.p50_us),
                    us(e.p99_us),
                    us(e.max_us),
                ]),
                None => t.row(vec![
                    "Erlang W5: not run (--erlang)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]),
            }
            print!("{}", t.render());
            let k = &report.kills;
            println!(
                "kills: {} messages in {:.2} s, {} readers killed, {} agents retired: {} read, {} read again, {} returned, {} refused; {} lost, {} reordered",
                k.messages,
                k.seconds,
                k.readers_killed,
                k.agents_retired,
                k.read,
                k.redelivered,
                k.returned,
                k.refused,
                k.lost,
                k.reordered
            );
            print_ok(&report.verdict);
            judge("messages", &report.verdict)?;
        }
        Bench::Memory {
            documents,
            dimension,
            queries,
            seed,
            chroma,
            nats,
            json,
        } => {
            let on_store = match (chroma, nats) {
                (Some(url), _) => {
                    let options = colony_memory::ChromaOptions::from_url(&url)
                        .map_err(|e| Failure::input(anyhow::anyhow!("--chroma: {e}")))?;
                    let report =
                        bench::memory::chroma(options, documents, dimension, queries, seed)
                            .map_err(failure)?;
                    Some((format!("on Chroma at {url}"), "Chroma's graph", report))
                }
                (None, Some(location)) => {
                    let report = memory_on_nats(&location, documents, dimension, queries, seed)?;
                    Some((format!("in NATS at {location}"), "the copy", report))
                }
                (None, None) => None,
            };
            if let Some((place, graph, report)) = on_store {
                if json {
                    print_json(&report)?;
                    return judge("memory", &report.verdict);
                }
                println!(
                    "{place}: {} + 10,000 documents of {} dimensions stored: {:.0} documents/s",
                    report.documents, report.dimension, report.inserts_per_s
                );
                let ms = |us: f64| format!("{:.3} ms", us / 1e3);
                let mut t = Table::new(&["search, k = 10", "p50", "p99", "max"]);
                for (name, p) in [
                    (
                        "exact vector, 10,000 documents".to_owned(),
                        &report.exact_small,
                    ),
                    (
                        "text (BM25), 10,000 documents".to_owned(),
                        &report.text_small,
                    ),
                    ("hybrid, 10,000 documents".to_owned(), &report.hybrid_small),
                    (
                        format!(
                            "{graph}, {} documents: recall@10 {:.3}",
                            report.documents, report.recall_at_10
                        ),
                        &report.approximate_all,
                    ),
                ] {
                    t.row(vec![name, ms(p.p50_us), ms(p.p99_us), ms(p.max_us)]);
                }
                print!("{}", t.render());
                print_ok(&report.verdict);
                return judge("memory", &report.verdict);
            }
            let scratch = tempfile::tempdir().map_err(Failure::work)?;
            let report = bench::memory::memory(scratch.path(), documents, dimension, queries, seed)
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("memory", &report.verdict);
            }
            println!(
                "{} + 10,000 documents of {} dimensions stored: {:.0} documents/s ({:.0} MiB file)",
                report.documents,
                report.dimension,
                report.inserts_per_s,
                report.file_bytes as f64 / f64::from(1 << 20)
            );
            let ms = |us: f64| format!("{:.3} ms", us / 1e3);
            let mut t = Table::new(&["search, k = 10", "p50", "p99", "max"]);
            for (name, p) in [
                (
                    "exact vector, 10,000 documents".to_owned(),
                    &report.exact_small,
                ),
                (
                    format!("exact vector, {} documents", report.documents),
                    &report.exact_all,
                ),
                (
                    "text (BM25), 10,000 documents".to_owned(),
                    &report.text_small,
                ),
                ("hybrid, 10,000 documents".to_owned(), &report.hybrid_small),
                ("cache hit".to_owned(), &report.cache_hit),
            ] {
                t.row(vec![name, ms(p.p50_us), ms(p.p99_us), ms(p.max_us)]);
            }
            t.row(vec![
                format!(
                    "approximate (HNSW), {} documents: recall@10 {:.3}",
                    report.documents, report.recall_at_10
                ),
                ms(report.approximate_all.p50_us),
                ms(report.approximate_all.p99_us),
                ms(report.approximate_all.max_us),
            ]);
            print!("{}", t.render());
            println!(
                "approximate index built from the file in {:.1} s",
                report.index_build_s
            );
            print_ok(&report.verdict);
            judge("memory", &report.verdict)?;
        }
        Bench::CrashChild(args) => {
            let options = crash::ChildOptions {
                db: args.db,
                ledger: args.ledger,
                tasks: args.tasks,
                agents: args.agents,
                seed: args.seed,
                decisions: args.decisions,
            };
            let journal: Arc<dyn colony_journal::Journal> = match super::in_nats(&options.db) {
                Some(location) => Arc::new(super::open_nats_journal(location)?),
                None => crash::open_sqlite(&options.db).map_err(failure)?,
            };
            runtime
                .block_on(crash::child(&options, journal))
                .map_err(failure)?;
        }
        Bench::Spawn {
            swarm,
            mode,
            wave_size,
            idle_secs,
            json,
        } => {
            let swarm = swarm.swarm()?;
            let size = NonZeroU32::new(wave_size).ok_or_else(|| {
                Failure::input(anyhow::anyhow!(
                    "--wave-size 0 is out of range: allowed 1.."
                ))
            })?;
            let mode = match mode.as_str() {
                "single" => SpawnMode::Single,
                "waves" => SpawnMode::Waves { size },
                _ => SpawnMode::Batch,
            };
            let report = runtime
                .block_on(bench::spawn(
                    &swarm,
                    mode,
                    Duration::from_secs_f64(idle_secs),
                ))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("spawn", &report.verdict);
            }
            let mut t = Table::new(&["spawn", ""]);
            for (name, count) in &report.tiers {
                t.row(vec![format!("  {name}"), thousands(u64::from(*count))]);
            }
            t.row(vec!["agents".into(), thousands(report.agents)]);
            t.row(vec!["mode".into(), report.mode.clone()]);
            t.row(vec!["seconds".into(), format!("{:.3}", report.seconds)]);
            t.row(vec![
                "agents/s".into(),
                thousands(report.agents_per_second as u64),
            ]);
            t.row(vec![
                "bytes per agent (RSS)".into(),
                format!("{:.0}", report.bytes_per_agent),
            ]);
            t.row(vec![
                format!("idle CPU over {:.1} s", report.idle_seconds),
                format!("{:.2} %", report.idle_cpu_percent),
            ]);
            t.row(vec![
                "agents after shrinking to 1 %".into(),
                thousands(report.agents_after_shrink),
            ]);
            t.row(vec![
                "bytes freed per retired worker (RSS)".into(),
                format!("{:.0}", report.bytes_freed_per_retired),
            ]);
            verdict_rows(&mut t, &report.verdict);
            print_table(&t, &report.verdict.problems);
            judge("spawn", &report.verdict)?;
        }
        Bench::Dispatch {
            swarm,
            answer,
            tasks,
            batch,
            durable,
            payload_bytes,
            json,
        } => {
            check_range("--payload-bytes", payload_bytes as u64, 2, 1_000_000)?;
            let mut swarm = swarm.swarm()?;
            swarm.answer = answer.answer();
            let scratch = tempfile::tempdir().map_err(Failure::work)?;
            if durable && swarm.journal.is_none() {
                swarm.journal = Some(BenchJournal::Sqlite(SqliteOptions::new(
                    scratch.path().join("bench.db"),
                )));
            }
            check_range("--tasks", tasks, 1, 1_000_000_000)?;
            check_range("--batch", batch as u64, 1, 1_000_000)?;
            let report = runtime
                .block_on(bench::dispatch(&swarm, tasks, batch, payload_bytes))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("dispatch", &report.verdict);
            }
            let mut t = Table::new(&["dispatch", ""]);
            t.row(vec![
                "agents (workers)".into(),
                format!(
                    "{} ({})",
                    thousands(report.agents),
                    thousands(report.workers)
                ),
            ]);
            t.row(vec!["tasks".into(), thousands(report.tasks)]);
            t.row(vec!["seconds".into(), format!("{:.3}", report.seconds)]);
            t.row(vec![
                "tasks/s".into(),
                thousands(report.tasks_per_second as u64),
            ]);
            t.row(vec!["succeeded".into(), thousands(report.succeeded)]);
            t.row(vec![
                "journal: ended in this run".into(),
                thousands(report.journal_terminal),
            ]);
            t.row(vec!["sim answers".into(), report.answer.clone()]);
            t.row(vec![
                "journal".into(),
                report.journal.clone().unwrap_or_else(|| "memory".into()),
            ]);
            t.row(vec![
                "start (spawn + recovery)".into(),
                format!("{:.3} s", report.start_seconds),
            ]);
            t.row(vec![
                "accept wait p50 / p99".into(),
                format!(
                    "{:.0} / {:.0} µs",
                    report.accept_latency.p50_us, report.accept_latency.p99_us
                ),
            ]);
            latency_rows(
                &mut t,
                &format!("sampled 1 in {}", report.sample_every),
                "batch offered",
                &report.latency,
                &report.dispatcher_latency,
            );
            verdict_rows(&mut t, &report.verdict);
            print_table(&t, &report.verdict.problems);
            judge("dispatch", &report.verdict)?;
        }
        Bench::Latency {
            swarm,
            answer,
            rate,
            secs,
            durable,
            pace,
            json,
        } => {
            let mut swarm = swarm.swarm()?;
            swarm.answer = answer.answer();
            if rate * secs < 1.0 {
                return Err(Failure::input(anyhow::anyhow!(
                    "--rate {rate} for --secs {secs} offers no task: their product must be at least 1"
                )));
            }
            let scratch = tempfile::tempdir().map_err(Failure::work)?;
            if durable && swarm.journal.is_none() {
                swarm.journal = Some(BenchJournal::Sqlite(SqliteOptions::new(
                    scratch.path().join("bench.db"),
                )));
            }
            let report = runtime
                .block_on(bench::latency(
                    &swarm,
                    rate,
                    Duration::from_secs_f64(secs),
                    pace.into(),
                ))
                .map_err(failure)?;
            if json {
                print_json(&report)?;
                return judge("latency", &report.verdict);
            }
            let mut t = Table::new(&["latency", ""]);
            t.row(vec!["agents".into(), thousands(report.agents)]);
            t.row(vec![
                "offered/s".into(),
                thousands(report.offered_per_second as u64),
            ]);
            t.row(vec![
                "achieved/s".into(),
                thousands(report.achieved_per_second as u64),
            ]);
            t.row(vec!["tasks".into(), thousands(report.tasks)]);
            t.row(vec![
                "journal".into(),
                report.journal.clone().unwrap_or_else(|| "memory".into()),
            ]);
            t.row(vec!["sim answers".into(), report.answer.clone()]);
            t.row(vec![
                "submitter pace".into(),
                format!("{:?}", report.pace).to_lowercase(),
            ]);
            t.row(vec![
                "scheduled -> accepted p50 / p99".into(),
                format!(
                    "{:.1} / {:.1} µs",
                    report.accept_latency.p50_us, report.accept_latency.p99_us
                ),
            ]);
            latency_rows(
                &mut t,
                "every task",
                "scheduled",
                &report.latency,
                &report.dispatcher_latency,
            );
            verdict_rows(&mut t, &report.verdict);
            print_table(&t, &report.verdict.problems);
            judge("latency", &report.verdict)?;
        }
    }
    Ok(())
}

/// `--db` of a journal in NATS.
fn nats_location(options: &colony_cluster::JournalOptions) -> String {
    format!(
        "{}/{}?replicas={}",
        options.url, options.name, options.replicas
    )
}

fn crash(args: &CrashArgs) -> Result<(), Failure> {
    check_range("--runs", u64::from(args.runs), 1, 10_000)?;
    check_range("--tasks", args.tasks, 1, 10_000_000)?;
    check_range("--max-kills", u64::from(args.max_kills), 1, 1_000)?;
    check_range("--agents", u64::from(args.agents), 1, 1_000_000)?;
    check_range("--decisions", args.decisions, 0, 100_000)?;
    let exe = std::env::current_exe().map_err(Failure::work)?;
    let scratch = tempfile::tempdir().map_err(Failure::work)?;
    // In NATS: a journal per run, named for this bench so that no earlier one is met.
    let nats = args.nats.as_ref().map(|url| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let bench = format!("crash-{}-{now}", std::process::id());
        move |run: u32| colony_cluster::JournalOptions {
            url: url.clone(),
            name: format!("{bench}-{run}"),
            replicas: args.replicas,
            compact_above: colony_cluster::journal::COMPACT_ABOVE,
        }
    });
    if let Some(nats) = &nats {
        colony_cluster::JournalOptions::parse(&nats_location(&nats(0))).map_err(Failure::input)?;
    }
    let location = |run: u32| nats.as_ref().map(|n| PathBuf::from(nats_location(&n(run))));
    let location = |run: u32| location(run).unwrap_or_default();
    let reopen = |db: &Path| -> Result<Box<dyn crash::Readback>, colony_runtime::Error> {
        // Read without taking the journal over: a child may still be writing it.
        let journal = colony_cluster::JournalOptions::parse(&db.to_string_lossy())
            .and_then(|options| colony_cluster::journal::read(&options))
            .map_err(|e| colony_runtime::Error::Options(e.to_string()))?;
        Ok(Box::new(Arc::new(journal)))
    };
    let journals = crash::Journals {
        location: &location,
        reopen: &reopen,
    };
    let report = crash::parent(
        &exe,
        args.runs,
        args.tasks,
        args.decisions,
        args.agents,
        args.max_kills,
        args.seed,
        scratch.path(),
        nats.is_some().then_some(&journals),
    );
    if let Some(nats) = &nats {
        let deleted = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Failure::work)?
            .block_on(async {
                for run in 0..args.runs {
                    colony_cluster::journal::delete(&nats(run)).await?;
                }
                Ok::<_, colony_cluster::Error>(())
            });
        if let Err(e) = deleted {
            eprintln!("the bench's journals could not all be deleted: {e}");
        }
    }
    let report = report.map_err(Failure::work)?;
    if args.json {
        print_json(&report)?;
    } else {
        let mut t = Table::new(&["crash", ""]);
        t.row(vec!["runs".into(), thousands(u64::from(report.runs))]);
        t.row(vec!["kills".into(), thousands(u64::from(report.kills))]);
        t.row(vec!["tasks".into(), thousands(report.tasks)]);
        t.row(vec!["succeeded".into(), thousands(report.succeeded)]);
        t.row(vec!["lost".into(), thousands(report.lost)]);
        t.row(vec![
            "double commits".into(),
            thousands(report.double_commits),
        ]);
        t.row(vec!["executions".into(), thousands(report.executions)]);
        t.row(vec![
            "re-executions".into(),
            thousands(report.re_executions),
        ]);
        t.row(vec![
            "in flight at kills".into(),
            thousands(report.in_flight_at_kills),
        ]);
        t.row(vec![
            "excess executions".into(),
            thousands(report.excess_executions),
        ]);
        t.row(vec!["stray rows".into(), thousands(report.stray_rows)]);
        t.row(vec![
            "commits missing from the ledger".into(),
            thousands(report.unledgered_commits),
        ]);
        t.row(vec![
            "children that died on their own".into(),
            thousands(u64::from(report.children_died)),
        ]);
        if report.decisions > 0 {
            t.row(vec!["decisions".into(), thousands(report.decisions)]);
            t.row(vec![
                "open at kills".into(),
                thousands(report.decisions_open_at_kills),
            ]);
            t.row(vec!["decided yes".into(), thousands(report.decided)]);
            t.row(vec![
                "announced twice".into(),
                thousands(report.announced_twice),
            ]);
            t.row(vec![
                "stray ballots".into(),
                thousands(report.stray_ballots),
            ]);
        }
        t.row(vec!["seconds".into(), format!("{:.1}", report.seconds)]);
        verdict_rows(&mut t, &report.verdict);
        print_table(&t, &report.verdict.problems);
    }
    judge("crash", &report.verdict)
}

/// `bench health`: its runtimes are its own, on paused clocks.
fn health(args: &HealthArgs) -> Result<(), Failure> {
    let chaos = bench::health::Chaos {
        agents: args.agents,
        rate: args.rate,
        secs: args.secs,
        slow_share: args.slow_share,
        failing_share: args.failing_share,
        seed: args.seed,
        ..bench::health::Chaos::default()
    };
    // Settings out of range are the user's input (exit 2), not the bench failing.
    chaos
        .validate()
        .map_err(|e| Failure::input(anyhow::anyhow!(e)))?;
    let report = bench::health::health(&chaos).map_err(failure)?;
    if args.json {
        print_json(&report)?;
        return judge("health", &report.verdict);
    }
    println!(
        "{} agents, {} slow and {} failing after {} s",
        report.agents, report.slow_agents, report.failing_agents, chaos.faults_at
    );
    let mut t = Table::new(&[
        "health",
        "tasks",
        "succeeded",
        "task time p50",
        "p99",
        "max",
        "failed attempts",
        "sidelined",
    ]);
    for r in &report.runs {
        let secs = |us: f64| format!("{:.2} s", us / 1e6);
        t.row(vec![
            r.health.into(),
            thousands(r.tasks),
            thousands(r.succeeded),
            secs(r.task_time.p50_us),
            secs(r.task_time.p99_us),
            secs(r.task_time.max_us),
            thousands(r.failed_attempts),
            thousands(r.sidelined),
        ]);
    }
    print!("{}", t.render());
    print_ok(&report.verdict);
    judge("health", &report.verdict)
}

/// `bench autoscale`: its runtimes are its own, on paused clocks.
fn autoscale(args: &AutoscaleArgs) -> Result<(), Failure> {
    let trace = bench::autoscale::Trace {
        minutes: args.minutes,
        period_minutes: args.period_minutes,
        base_rate: args.base_rate,
        peak_rate: args.peak_rate,
        bursts: args.bursts,
        task: Duration::from_millis(args.task_ms),
        max_agents: args.max_agents,
        every: Duration::from_secs_f64(args.every_secs),
        slo: Duration::from_secs_f64(args.slo_secs),
        seed: args.seed,
    };
    trace
        .validate()
        .map_err(|e| Failure::input(anyhow::anyhow!(e)))?;
    if args.process {
        return autoscale_on_processes(&trace, args.json);
    }
    let report = bench::autoscale::autoscale(&trace).map_err(failure)?;
    if args.json {
        print_json(&report)?;
        return judge("autoscale", &report.verdict);
    }
    let mut t = Table::new(&[
        "mode",
        "tasks",
        "wait p50",
        "wait p95",
        "wait p99",
        "objective misses",
        "agent-seconds",
        "peak agents",
        "ups / downs",
        "forecast error",
    ]);
    for m in &report.modes {
        let secs = |us: f64| format!("{:.2} s", us / 1e6);
        t.row(vec![
            format!("{:?}", m.mode).to_lowercase(),
            thousands(m.tasks),
            secs(m.wait.p50_us),
            secs(m.wait.p95_us),
            secs(m.wait.p99_us),
            thousands(m.slo_misses),
            thousands(m.agent_seconds as u64),
            thousands(m.peak_agents),
            format!("{} / {}", m.scale_ups, m.scale_downs),
            m.forecast_error
                .map_or("-".into(), |e| format!("{:.1} %", e * 100.0)),
        ]);
    }
    print!("{}", t.render());
    println!(
        "predictive against reactive: p95 wait {:.0} % less, agent-seconds {:+.0} %",
        report.predictive_wait_cut * 100.0,
        report.predictive_extra_agent_seconds * 100.0
    );
    print_ok(&report.verdict);
    judge("autoscale", &report.verdict)
}

/// `colony bench autoscale --process`.
fn autoscale_on_processes(trace: &bench::autoscale::Trace, json: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let report = runtime
        .block_on(bench::autoscale::on_processes(trace))
        .map_err(|e| match e {
            colony_runtime::Error::Options(_) => Failure::input(e),
            e => failure(e),
        })?;
    if json {
        print_json(&report)?;
        return judge("autoscale", &report.verdict);
    }
    let secs = |us: f64| format!("{:.2} s", us / 1e6);
    println!(
        "{} tasks, {} succeeded; wait p50 {}, p95 {}, p99 {}",
        thousands(report.tasks),
        thousands(report.succeeded),
        secs(report.wait.p50_us),
        secs(report.wait.p95_us),
        secs(report.wait.p99_us)
    );
    println!(
        "agents: peak {}, {} steps up, {} down; processes: peak {}, at most {} beyond the pool's size",
        report.peak_agents,
        report.scale_ups,
        report.scale_downs,
        report.peak_processes,
        report.most_surplus
    );
    println!(
        "after idling: {} agents, {} processes, {} child processes of colony",
        report.final_agents,
        report.final_processes,
        report
            .children_left
            .map_or("(no /proc)".into(), |n| n.to_string())
    );
    print_ok(&report.verdict);
    judge("autoscale", &report.verdict)
}

/// Bad paths and foreign or newer databases are the user's input; anything else is the work
/// failing.
fn failure(error: colony_runtime::Error) -> Failure {
    use colony_journal::Error as J;
    match &error {
        colony_runtime::Error::Journal(
            J::IsDirectory { .. }
            | J::Missing { .. }
            | J::NoFolder { .. }
            | J::NotColony { .. }
            | J::TooNew { .. }
            | J::Locked { .. },
        ) => Failure::input(error),
        _ => Failure::work(error),
    }
}

/// The caller's latency, counted from `from`, and the dispatcher's, side by side.
fn latency_rows(
    t: &mut Table,
    which: &str,
    from: &str,
    caller: &Percentiles,
    dispatcher: &Percentiles,
) {
    t.row(vec![
        "latency samples".into(),
        format!("{} ({which})", thousands(caller.samples as u64)),
    ]);
    t.row(vec![
        "latency".into(),
        format!("{from} -> caller has it (dispatcher: accepted -> ended)"),
    ]);
    for (name, c, d) in [
        ("p50", caller.p50_us, dispatcher.p50_us),
        ("p95", caller.p95_us, dispatcher.p95_us),
        ("p99", caller.p99_us, dispatcher.p99_us),
        ("max", caller.max_us, dispatcher.max_us),
    ] {
        t.row(vec![format!("  {name}"), format!("{c:.1} µs ({d:.1} µs)")]);
    }
}

fn print_json(report: &impl serde::Serialize) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(report).map_err(Failure::work)?
    );
    Ok(())
}

/// `--strategy` of `colony bench recovery`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum SupervisionStrategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

impl From<SupervisionStrategy> for colony_core::supervision::Strategy {
    fn from(s: SupervisionStrategy) -> Self {
        match s {
            SupervisionStrategy::OneForOne => Self::OneForOne,
            SupervisionStrategy::OneForAll => Self::OneForAll,
            SupervisionStrategy::RestForOne => Self::RestForOne,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct WorkflowArgs {
    /// Tasks in the generated graph.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Agents in the one pool.
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Share of sim attempts that fail (retryably), 0 to 1. With 0, any failed or skipped
    /// task fails the verdict.
    #[arg(long, default_value_t = 0.05, value_parser = Float::new(0.0, 1.0))]
    error_rate: f64,
    /// Run this program once per task (command agents) instead of sim agents.
    #[arg(long)]
    command: Option<String>,
    /// Seed of the graph's shape and of the sim agents' errors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the generated workflow to this file instead of running it.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Print the report as JSON, verdict included.
    #[arg(long)]
    json: bool,
}

fn workflow(args: &WorkflowArgs) -> Result<(), Failure> {
    use colony_workflow::bench::{self as wf, Agents};
    check_range("--tasks", args.tasks as u64, 1, 1_000_000)?;
    check_range("--agents", u64::from(args.agents), 1, 1_000_000)?;
    let agents = match &args.command {
        Some(program) => Agents::Command {
            count: args.agents,
            program: program.clone(),
        },
        None => Agents::Sim {
            count: args.agents,
            error_rate: args.error_rate,
        },
    };
    if let Some(path) = &args.write {
        std::fs::write(path, wf::generate(args.tasks, &agents, args.seed))
            .map_err(|e| Failure::work(anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
        return Ok(());
    }
    let out = tempfile::tempdir().map_err(Failure::work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let report = runtime
        .block_on(wf::run(args.tasks, &agents, args.seed, out.path()))
        .map_err(|e| Failure::input(anyhow::anyhow!(e)))?;
    if args.json {
        print_json(&report)?;
    } else {
        let mut t = Table::new(&["workflow", ""]);
        t.row(vec![
            "tasks (waves)".into(),
            format!("{} ({})", thousands(report.tasks as u64), report.waves),
        ]);
        t.row(vec![
            "succeeded / failed / skipped".into(),
            format!(
                "{} / {} / {}",
                report.succeeded, report.failed, report.skipped
            ),
        ]);
        t.row(vec!["ran".into(), thousands(report.ran as u64)]);
        t.row(vec![
            "journal: ended".into(),
            thousands(report.journal_terminal),
        ]);
        t.row(vec![
            "check".into(),
            format!("{:.3} s", report.check_seconds),
        ]);
        t.row(vec!["run".into(), format!("{:.3} s", report.run_seconds)]);
        t.row(vec![
            "per task that ran".into(),
            format!("{:.1} µs", report.us_per_task),
        ]);
        t.row(vec![
            "tasks that ran/s".into(),
            thousands(report.tasks_per_second as u64),
        ]);
        t.row(vec!["ok".into(), report.ok.to_string()]);
        print_table(&t, &report.problems);
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::work(anyhow::anyhow!(
            "bench workflow: ok: false: {}",
            report.problems.join("; ")
        )))
    }
}

/// `colony bench memory --nats`: the workload on a memory in NATS of its own (the seed and
/// the time, then the location's name), deleted after whatever happened.
fn memory_on_nats(
    location: &str,
    documents: u32,
    dimension: u32,
    queries: u32,
    seed: u64,
) -> Result<bench::memory::StoreReport, Failure> {
    use colony_cluster::memory::{MemoryOptions, NatsMemory};
    let mut options = MemoryOptions::parse(location, "--nats").map_err(Failure::input)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Names are ASCII (checked when parsed): cut at 64 bytes, the time kept.
    let mut own = format!("bench{seed}-{stamp}-{}", options.name);
    own.truncate(64);
    options.name = own;
    let memory = NatsMemory::open(&options, true, true, "--nats").map_err(|e| match e {
        colony_cluster::Error::Settings(_) => Failure::input(e),
        e => Failure::work(e),
    })?;
    let names = ["bench/small", "bench/all"].map(colony_memory::Namespace::parse);
    let [Ok(small), Ok(all)] = names else {
        return Err(Failure::work(anyhow::anyhow!("the bench's namespaces")));
    };
    let report = bench::memory::on_store(
        &memory,
        "the memory in NATS",
        [&small, &all],
        [documents, dimension, queries, queries],
        seed,
    );
    let deleted = memory.delete_stream();
    let report = report.map_err(failure)?;
    deleted.map_err(Failure::work)?;
    Ok(report)
}
