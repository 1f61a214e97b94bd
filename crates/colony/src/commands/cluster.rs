//! `colony node`: a machine joins a cluster on NATS JetStream with its pools of agents; and
//! `colony cluster submit|task|status`: clients of that cluster.

use crate::{Failure, commands::serve, config, output::Table, signal::Stops};
use bytes::Bytes;
use colony_cluster::{Cluster, Node, NodeOptions, Row, Settings, TaskView, kubernetes};
use colony_core::task::{Priority, Requirement, TaskSpec, TaskState};
use colony_journal::MemoryJournal;
use colony_runtime::{Runtime, RuntimeOptions};
use std::{path::PathBuf, sync::Arc, time::Duration};

/// Most bytes of a file of tasks `colony cluster submit --file` reads.
const MAX_FILE: u64 = 256 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct NatsArgs {
    /// The cluster's NATS servers: nats://HOST:PORT, several comma-separated (also
    /// $COLONY_NATS).
    #[arg(long, env = "COLONY_NATS", value_name = "URL")]
    nats: String,
    /// Copies JetStream keeps of the cluster's tasks when this makes them first: 3 or 5;
    /// 1 for a single development server (default 3). A node refuses a cluster made with
    /// another count.
    #[arg(long, value_name = "N")]
    replicas: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Read settings from this TOML file (default: $COLONY_CONFIG, else ./colony.toml if
    /// it exists), as `colony serve` does: its `[runtime]` table and pools.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Simulated agents to host (the pool `sim`, role `worker`), unless --pools (default 1000).
    #[arg(long, conflicts_with = "pools")]
    agents: Option<u32>,
    /// The agents to host, from a workflow-format file's `agents:` list; the node pulls the
    /// tasks of their roles, and tasks that ask for no role.
    #[arg(long, value_name = "FILE")]
    pools: Option<PathBuf>,
    /// Where command agents keep their stderr logs and worktrees (default colony-out/serve).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// This node's name in the cluster (default HOSTNAME-PID): letters, digits, `-`, `_`, `.`.
    #[arg(long)]
    name: Option<String>,
    /// How long a task may go unacknowledged before it is delivered again, to any node, when
    /// this node makes the cluster's consumers: a dead node's tasks run elsewhere after
    /// this (default 30s; 1s to 1h).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    ack_wait: Option<Duration>,
    /// Most attempts at once (default: the agents' capacity, at most 4096).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_in_flight: Option<u64>,
    /// On SIGTERM or Ctrl-C, how long running attempts may finish before they are handed
    /// back to the cluster (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    drain_timeout: Option<Duration>,
    /// Serve /healthz, /readyz (503 while draining or cut off from NATS) and /metrics on
    /// this address, such as 0.0.0.0:9090 for Kubernetes probes; read-only, no tokens.
    #[arg(long, value_name = "ADDR")]
    probes: Option<std::net::SocketAddr>,
    /// In a Kubernetes pod: keep the pod's `controller.kubernetes.io/pod-deletion-cost` at
    /// the attempts it runs, so that a scale-down takes idle nodes first. Needs a service
    /// account allowed to patch pods ($COLONY_SERVICE_ACCOUNT: where it is mounted, default
    /// /var/run/secrets/kubernetes.io/serviceaccount).
    #[arg(long)]
    pod_deletion_cost: bool,
    /// Bridge this topic of the node's message bus to the cluster's (repeatable): what its
    /// agents publish there reaches every process that bridges it (other nodes, a
    /// `colony run --nats` whose tasks wait or publish on it), and what they publish reaches
    /// its agents.
    #[arg(long = "bridge-topic", value_name = "TOPIC")]
    bridge_topics: Vec<String>,
    /// Print what the node did, when it leaves, as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Submit a task (or a file of them) to the cluster; --wait for its result.
    Submit(SubmitArgs),
    /// A task's state and result.
    Task(TaskArgs),
    /// The live nodes and the backlog of each role.
    Status(StatusArgs),
    /// The whole hierarchy: the cluster, its nodes under it, each node's tiers of agents.
    Tree(StatusArgs),
    /// The agents of every live node (or of one), each node answering for its own, a page
    /// each; filter by tier, role, health or state. Exit 1 if a node did not answer.
    Agents(AgentsArgs),
    /// The workflow runs kept in the cluster (`colony run --nats --run-id`): each one's
    /// workflow, whether it is done and how it ended, its scheduler and term.
    Runs(RunsArgs),
    /// Cancel tasks: a waiting one is dropped from the stream, a running one is stopped on
    /// its node, and none is reported succeeded afterwards; exit 1 if any had ended already or
    /// could not be cancelled. With --run, a workflow run kept in the cluster, for good: its
    /// scheduler stops, a standby or rerun sends nothing, and its tasks are cancelled (again,
    /// if it was cancelled before); exit 1 if it had finished or a task could not be.
    Cancel(CancelArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunsArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The most recent N.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit: u64,
    /// Print them as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The tasks' ids, as `submit` printed them.
    #[arg(required_unless_present = "run", conflicts_with = "run", value_parser = clap::value_parser!(u64).range(1..))]
    ids: Vec<u64>,
    /// Cancel this workflow run (`colony run --nats --run-id ID`) for good, and its tasks.
    #[arg(long, value_name = "ID")]
    run: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The task's payload, as JSON (a bare word that is not JSON is sent as a string).
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    payload: Option<String>,
    /// Submit one task per line of this file (JSON payloads).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(flatten)]
    task: crate::commands::client::TaskFlags,
    /// Wait for the task to end and print its output; exit 1 unless it succeeded.
    #[arg(long, conflicts_with = "file")]
    wait: bool,
    /// Put up to this many of the file's tasks (of one role and priority, one after
    /// another) in one message: the cluster's cost per task falls, and each keeps its own
    /// id, record, attempts and cancel. Their ids are not a range: each is printed. With
    /// --idempotency-key, the same file sent again is accepted once, under the same ids.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=512))]
    bundle: Option<u64>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TaskArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The task's id, as `submit` printed it.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Wait for the task to end; exit 1 unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// Print it as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Print it as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AgentsArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Only this node's agents.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The agents of one tier, by name (worker, supervisor, ...).
    #[arg(long, value_name = "NAME")]
    tier: Option<String>,
    /// Workers of this role.
    #[arg(long)]
    role: Option<String>,
    /// Workers in this health: healthy, degraded, critical or failed.
    #[arg(long, value_parser = health)]
    health: Option<colony_core::health::HealthState>,
    /// Agents in this state: up, down, retired or vacant.
    #[arg(long, value_parser = ["up", "down", "retired", "vacant"])]
    state: Option<String>,
    /// The page after this agent id (with --node: ids are each node's own).
    #[arg(long, value_name = "ID", requires = "node")]
    after: Option<u32>,
    /// Most agents each node lists (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    limit: u64,
    /// Print the answers as JSON, one object per node.
    #[arg(long)]
    json: bool,
}

fn health(text: &str) -> Result<colony_core::health::HealthState, String> {
    serde_json::from_value(serde_json::Value::from(text))
        .map_err(|_| format!("`{text}` is not a health: healthy, degraded, critical or failed"))
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| {
        format!(
            "`{}` is not a duration ({e}): write it like `30s`, `500ms` or `5m`",
            colony_core::text::shorten(text, 60)
        )
    })?;
    if d > Duration::from_secs(3600) {
        return Err(format!("{text}: allowed up to 1h"));
    }
    Ok(d)
}

impl NatsArgs {
    pub(crate) fn new(nats: &str, replicas: Option<usize>) -> Self {
        Self {
            nats: nats.to_owned(),
            replicas,
        }
    }

    fn settings(&self, ack_wait: Option<Duration>) -> Result<Settings, Failure> {
        let defaults = Settings::default();
        let settings = Settings {
            replicas: self.replicas.unwrap_or(defaults.replicas),
            ack_wait: ack_wait.unwrap_or(defaults.ack_wait),
            ..defaults
        };
        settings.validate().map_err(Failure::input)?;
        Ok(settings)
    }

    /// Connects as a node (`strict`: the replica count must be the cluster's) or a client
    /// (which takes the cluster's). Unreachable NATS is the work failing (exit 1); settings
    /// the cluster refuses are the caller's (exit 2).
    async fn connect(&self, settings: Settings, strict: bool) -> Result<Cluster, Failure> {
        let connected = if strict || self.replicas.is_some() {
            Cluster::connect(&self.nats, settings).await
        } else {
            Cluster::client(&self.nats, settings).await
        };
        connected.map_err(cluster_failure)
    }
}

/// Settings the cluster refuses are the caller's (exit 2); the rest is the work failing.
fn cluster_failure(e: colony_cluster::Error) -> Failure {
    match e {
        colony_cluster::Error::Settings(_) | colony_cluster::Error::BadRole { .. } => {
            Failure::input(e)
        }
        e => Failure::work(e),
    }
}

impl NatsArgs {
    /// Connects, waiting for NATS up to a minute (a cluster electing its JetStream leader,
    /// pods started together) or until stopped (`None`).
    async fn join(
        &self,
        settings: &Settings,
        strict: bool,
        who: &str,
        stops: &mut Stops,
    ) -> Result<Option<Cluster>, Failure> {
        let since = std::time::Instant::now();
        let mut said = false;
        loop {
            match self.connect(settings.clone(), strict).await {
                Ok(cluster) => return Ok(Some(cluster)),
                Err(Failure::Work(e)) if since.elapsed() < Duration::from_secs(60) => {
                    if !said {
                        eprintln!("{who}: waiting for the cluster: {e:#}");
                        said = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stops.next() => return Ok(None),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What `colony serve --nats` needs beyond the server's own settings.
pub(crate) struct ServeCluster {
    pub(crate) nats: NatsArgs,
    pub(crate) name: Option<String>,
    pub(crate) plan: colony_cluster::scaling::ScalingPlan,
}

/// `colony serve --nats`: the control plane over the cluster, a candidate for scaling
/// leader, until SIGTERM or Ctrl-C (then it resigns, so a standby leads at once).
pub(crate) fn serve(
    args: ServeCluster,
    resolved: &config::Resolved,
    config: colony_server::Config,
) -> Result<(), Failure> {
    let server = &resolved.server;
    // A runtime's settings from the file or the environment have nothing to apply to; a
    // memory file would be this machine's, not the cluster's.
    let local = [
        ("db", server.db.is_some()),
        ("runs", server.runs.is_some()),
        (
            "memory",
            server
                .memory
                .as_deref()
                .is_some_and(|m| super::in_nats(m).is_none()),
        ),
        ("backup-to", server.backup_to.is_some()),
        ("webhook", server.webhook.is_some()),
    ];
    if let Some((name, _)) = local.iter().find(|(_, set)| *set) {
        let source = resolved
            .sources
            .get(&format!("server.{name}"))
            .map_or_else(|| name.to_string(), |s| s.to_string());
        let why = if *name == "memory" {
            "a memory file is this machine's, not every replica's: with --nats give one in NATS (nats://HOST:PORT/NAME) or on Chroma (--memory-chroma), or remove it"
        } else {
            "with --nats the nodes run the tasks: remove it"
        };
        return Err(Failure::input(anyhow::anyhow!(
            "{source}: `{name}` is a setting of a server with a runtime of its own; {why}"
        )));
    }
    let mut config = config;
    if server.memory.is_some() || server.memory_chroma.is_some() {
        config.memory = Some(std::sync::Arc::from(crate::commands::memory::open_memory(
            server.memory.as_deref(),
            server.memory_chroma.as_deref(),
            usize::try_from(server.memory_shards).unwrap_or(1),
            true,
            true,
            ("--memory", "--memory-chroma"),
        )?));
    }
    let settings = args.nats.settings(None)?;
    let name = args.name.clone().unwrap_or_else(default_name);
    let runtime = tokio()?;
    let result = runtime.block_on(async {
        let mut stops = Stops::new();
        let who = format!("colony serve {name}");
        let Some(cluster) = args.nats.join(&settings, false, &who, &mut stops).await? else {
            return Ok(());
        };
        let scaling = colony_cluster::scaling::Scaling::start(cluster.clone(), &name, args.plan)
            .await
            .map_err(|e| match e {
                colony_cluster::Error::Settings(_) => Failure::input(e),
                e => Failure::work(e),
            })?;
        let tokens = config.tokens.is_some();
        let served = colony_server::cluster::serve_cluster(
            cluster,
            scaling.observer(),
            args.plan.period,
            config,
        )
        .await;
        let served = match served {
            Ok(served) => served,
            Err(e) => {
                scaling.resign().await;
                return Err(Failure::input(e));
            }
        };
        eprintln!(
            "colony serves the cluster at {} on {} (as {}{}); Ctrl-C or SIGTERM stops it",
            args.nats.nats,
            served.url(),
            scaling.holder(),
            if tokens { ", tokens required" } else { "" }
        );
        stops.next().await;
        served.stop();
        scaling.resign().await;
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `colony run --nats`: this process schedules the workflow's graph and writes its results;
/// the cluster's nodes run its tasks.
pub(crate) fn run_workflow(
    args: &crate::commands::workflow::RunArgs,
    nats: &str,
    replicas: Option<usize>,
    workflow: &colony_workflow::Workflow,
) -> Result<(), Failure> {
    let refused = colony_workflow::cluster::refusals(workflow);
    if !refused.is_empty() {
        for why in &refused {
            eprintln!("{why}");
        }
        return Err(Failure::input(anyhow::anyhow!(
            "this workflow cannot run across a cluster ({} problem{}): run it without --nats",
            refused.len(),
            if refused.len() == 1 { "" } else { "s" }
        )));
    }
    let nats = NatsArgs::new(nats, replicas);
    let settings = nats.settings(None)?;
    // What the run id and lease allow is refused before any wait for the cluster.
    if let Some((run, lease)) = args.run_id() {
        colony_cluster::runs::check_run_id(run).map_err(Failure::input)?;
        if lease < colony_cluster::leadership::MIN_TTL || lease.subsec_nanos() != 0 {
            return Err(Failure::input(anyhow::anyhow!(
                "--lease {}: whole seconds from {}s",
                humantime::format_duration(lease),
                colony_cluster::leadership::MIN_TTL.as_secs()
            )));
        }
    }
    let digest = match args.run_id() {
        Some((_, lease)) if lease > colony_cluster::runs::MAX_LEASE => {
            return Err(Failure::input(anyhow::anyhow!(
                "--lease {}: at most {}s, so that a standby sends again within the stream's \
                 2-minute duplicate window and no task runs twice",
                humantime::format_duration(lease),
                colony_cluster::runs::MAX_LEASE.as_secs()
            )));
        }
        Some(_) => Some(file_digest(args.file())?),
        None => None,
    };
    let runtime = tokio()?;
    let report = runtime.block_on(async {
        let mut stops = Stops::new();
        let Some(cluster) = nats
            .join(&settings, false, "colony run", &mut stops)
            .await?
        else {
            return Ok(Ended::Stopped);
        };
        let mut scheduling = None;
        if let (Some((run, lease)), Some(digest)) = (args.run_id(), digest) {
            match schedule(&cluster, workflow, run, lease, digest, &mut stops).await? {
                Scheduling::Lead(lead) => scheduling = Some(*lead),
                Scheduling::Done(meta) => return Ok(Ended::Elsewhere(Box::new(meta))),
                Scheduling::Stopped => return Ok(Ended::StoodBy),
            }
        }
        let handing_over = scheduling.is_some();
        let cancel = Box::pin(async move {
            stops.next().await;
            if handing_over {
                eprintln!(
                    "Stopping: no more tasks go to the cluster from here; those there run on, and \
                     a standby or the same command takes the run over."
                );
            } else {
                eprintln!(
                    "Cancelling: no more tasks go to the cluster, and those there are cancelled."
                );
            }
        });
        let booked = scheduling
            .as_ref()
            .map(|lead: &Lead| colony_workflow::cluster::Booked {
                book: lead.book.clone(),
                lead: lead.leadership.observer(),
            });
        let options = colony_workflow::cluster::ClusterOptions {
            output: args.out().map(Into::into),
            on_finished: Some(crate::commands::workflow::progress(workflow, args.json())),
            on_started: None,
            cancel: Some(cancel),
            booked,
            bridge_topics: args.bridge_topics(),
        };
        let report = colony_workflow::cluster::run_on(&cluster, workflow, options).await;
        if let Some(lead) = scheduling {
            // Cancelled for good while it ran: said, with by whom.
            if let Ok(Some((meta, _))) = lead.book.meta().await
                && let Some(why) = meta.cancelled
            {
                eprintln!("run {} was {why}", lead.book.run());
            }
            lead.end(report.as_ref().ok()).await;
        }
        report.map(Ended::Here).map_err(Failure::work)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match report? {
        Ended::Here(report) => crate::commands::workflow::show(args, &report),
        Ended::Elsewhere(meta) => {
            let run = args.run_id().map_or("", |(id, _)| id);
            let said = match &meta.cancelled {
                Some(why) => format!("run {run} of {} was {why}", meta.workflow),
                None => format!(
                    "run {run} of {} was finished by {} (term {}): {}",
                    meta.workflow,
                    meta.scheduler,
                    meta.term,
                    run_counts(&meta)
                ),
            };
            if meta.code == Some(0) {
                println!("{said}");
                Ok(())
            } else {
                Err(Failure::work(anyhow::anyhow!("{said}")))
            }
        }
        Ended::Stopped => Ok(()),
        Ended::StoodBy => Err(Failure::work(anyhow::anyhow!(
            "run {}: stopped while standing by; nothing was scheduled here",
            args.run_id().map_or("", |(id, _)| id)
        ))),
    }
}

/// How `colony run --nats` ended in this process.
enum Ended {
    /// It scheduled the run (or its end) here.
    Here(colony_workflow::Report),
    /// Another process of the same run id finished it.
    Elsewhere(Box<colony_cluster::runs::RunMeta>),
    /// Stopped before it joined the cluster.
    Stopped,
    /// Stopped while another process scheduled the run.
    StoodBy,
}

/// This process leads a run: its book, its lease, and the book's meta at `revision`.
struct Lead {
    book: colony_cluster::runs::RunBook,
    leadership: colony_cluster::leadership::Leadership,
    meta: colony_cluster::runs::RunMeta,
    revision: u64,
}

impl Lead {
    /// The run ended here: a complete run is written done (a cancelled one is left to go on
    /// from its book); the lease is given up either way, so a standby goes on at once.
    async fn end(mut self, report: Option<&colony_workflow::Report>) {
        let leads = self.leadership.term().is_some();
        if let Some(report) = report.filter(|r| r.cancelled == 0 && leads) {
            self.meta.done = true;
            self.meta.code = Some(if report.all_succeeded() { 0 } else { 1 });
            self.meta.counts = [
                ("succeeded", report.succeeded),
                ("failed", report.failed),
                ("skipped", report.skipped),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v as u64))
            .collect();
            if let Err(e) = self.book.put_meta(&self.meta, Some(self.revision)).await {
                eprintln!("warning: run {} is not marked done: {e}", self.book.run());
            }
        }
        self.leadership.resign().await;
    }
}

enum Scheduling {
    Lead(Box<Lead>),
    Done(colony_cluster::runs::RunMeta),
    Stopped,
}

/// Campaigns for run `run` until this process leads it (then checks the book is this
/// workflow's and signs it), the run is seen done, or a signal comes.
async fn schedule(
    cluster: &Cluster,
    workflow: &colony_workflow::Workflow,
    run: &str,
    lease: Duration,
    digest: String,
    stops: &mut Stops,
) -> Result<Scheduling, Failure> {
    let book = cluster.run_book(run).await.map_err(cluster_failure)?;
    let refuse = |why: String| Failure::input(anyhow::anyhow!("run {run}: {why}"));
    let another = |old: &colony_cluster::runs::RunMeta| {
        refuse(format!(
            "it runs another workflow file ({} with digest {}…); give this one another --run-id",
            old.workflow,
            old.digest.chars().take(12).collect::<String>()
        ))
    };
    match book.meta().await.map_err(cluster_failure)? {
        Some((old, _)) if old.digest != digest => return Err(another(&old)),
        Some((old, _)) if old.done => return Ok(Scheduling::Done(old)),
        _ => {}
    }
    let leadership =
        colony_cluster::leadership::campaign(cluster, &book.office(), &default_name(), lease)
            .await
            .map_err(cluster_failure)?;
    let mut said = false;
    let mut warned = false;
    let term = loop {
        if let Some(term) = leadership.term() {
            break term;
        }
        // A read that fails (NATS electing a leader) is tried again: a standby is for then.
        match book.meta().await {
            Ok(Some((meta, _))) if meta.done => {
                leadership.resign().await;
                return Ok(Scheduling::Done(meta));
            }
            Ok(_) => {}
            Err(e) if !warned => {
                eprintln!("run {run}: cannot read its book ({e}); trying again");
                warned = true;
            }
            Err(_) => {}
        }
        if !said {
            eprintln!("run {run}: standing by while another process schedules it");
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stops.next() => {
                leadership.resign().await;
                return Ok(Scheduling::Stopped);
            }
        }
    };
    let found = match book.meta().await {
        Ok(found) => found,
        Err(e) => {
            leadership.resign().await;
            return Err(cluster_failure(e));
        }
    };
    let meta = colony_cluster::runs::RunMeta {
        workflow: workflow.name.clone(),
        digest: digest.clone(),
        done: false,
        counts: Default::default(),
        code: None,
        scheduler: leadership.holder().to_owned(),
        term,
        at_ms: 0,
        cancelled: None,
    };
    let revision = match found {
        Some((old, _)) if old.digest != digest => {
            leadership.resign().await;
            return Err(another(&old));
        }
        Some((old, _)) if old.done => {
            leadership.resign().await;
            return Ok(Scheduling::Done(old));
        }
        Some((_, revision)) => {
            eprintln!("run {run}: taking it over from its book");
            book.put_meta(&meta, Some(revision)).await
        }
        None => book.put_meta(&meta, None).await,
    };
    let revision = match revision {
        Ok(revision) => revision,
        Err(e) => {
            leadership.resign().await;
            // Written done (a cancel) between the read and this write: said as done.
            if let Ok(Some((meta, _))) = book.meta().await
                && meta.done
            {
                return Ok(Scheduling::Done(meta));
            }
            return Err(cluster_failure(e));
        }
    };
    Ok(Scheduling::Lead(Box::new(Lead {
        book,
        leadership,
        meta,
        revision,
    })))
}

/// The SHA-256 of a workflow file, hex: one run id, one file.
fn file_digest(path: &std::path::Path) -> Result<String, Failure> {
    use sha2::Digest as _;
    let bytes = colony_workflow::read::read_bounded(path, colony_workflow::MAX_FILE_BYTES)
        .map_err(|e| Failure::input(anyhow::anyhow!("{e}")))?;
    Ok(sha2::Sha256::digest(bytes.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn tokio() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)
}

/// The default name of a node or server: the host's (its first 50 characters), then the
/// process id, within the 64 characters a name may have.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    format!("{host}-{}", std::process::id())
}

pub(crate) fn node(args: &NodeArgs) -> Result<(), Failure> {
    let flags = config::Flags {
        config: args.config.clone(),
        agents: args.agents,
        pools: args.pools.clone(),
        out: args.out.clone(),
        ..config::Flags::default()
    };
    let resolved = serve::resolve(&flags)?;
    let settings = args.nats.settings(args.ack_wait)?;
    let (pools, _) = serve::pools(&resolved)?;
    let capacity: u64 = pools
        .iter()
        .map(|p| u64::from(p.count) * u64::from(p.spec.concurrency.max(1)))
        .sum();
    let mut runtime_options = RuntimeOptions::default();
    resolved.runtime.apply(&mut runtime_options);
    let name = args.name.clone().unwrap_or_else(default_name);
    let options = NodeOptions {
        name: name.clone(),
        max_in_flight: usize::try_from(args.max_in_flight.unwrap_or(capacity.min(4096)))
            .unwrap_or(4096),
        drain_timeout: args.drain_timeout.unwrap_or(Duration::from_secs(30)),
    };
    let pod = if args.pod_deletion_cost {
        let mounted = std::env::var_os("COLONY_SERVICE_ACCOUNT")
            .map_or_else(|| PathBuf::from(kubernetes::SERVICE_ACCOUNT), PathBuf::from);
        Some(kubernetes::InCluster::from_env(&mounted).map_err(Failure::input)?)
    } else {
        None
    };
    let runtime = tokio()?;
    let result = runtime.block_on(async {
        let mut stops = Stops::new();
        let who = format!("node {name}");
        let Some(cluster) = args.nats.join(&settings, true, &who, &mut stops).await? else {
            return Ok(());
        };
        let colony = Runtime::start(runtime_options, pools, Arc::new(MemoryJournal::new()))
            .await
            .map_err(Failure::input)?;
        // Bridged before the node takes tasks: what its agents publish on a bridged topic
        // from their first task crosses.
        let bridge = match args.bridge_topics.is_empty() {
            true => None,
            false => {
                let bus = colony.handle().messages();
                match colony_cluster::bus::Bridge::start(&cluster, bus, &name, &args.bridge_topics)
                    .await
                {
                    Ok(bridge) => Some(bridge),
                    Err(e) => {
                        colony.shutdown().await;
                        return Err(match e {
                            colony_cluster::Error::Settings(_) => Failure::input(e),
                            e => Failure::work(e),
                        });
                    }
                }
            }
        };
        let node = match Node::start(cluster, colony.handle().clone(), options).await {
            Ok(node) => node,
            Err(e) => {
                colony.shutdown().await;
                return Err(match e {
                    colony_cluster::Error::Settings(_) | colony_cluster::Error::BadRole { .. } => {
                        Failure::input(e)
                    }
                    e => Failure::work(e),
                });
            }
        };
        let probes = match args.probes {
            Some(addr) => {
                let readiness = node.readiness();
                let ready: colony_server::probe::Ready = Arc::new(move || readiness.check());
                match colony_server::probe::serve_probes(addr, ready).await {
                    Ok(probes) => Some(probes),
                    Err(e) => {
                        node.drain().await;
                        colony.shutdown().await;
                        return Err(Failure::input(e));
                    }
                }
            }
            None => None,
        };
        let cost = pod.map(|pod| {
            let readiness = node.readiness();
            colony_agents::spawner::Spawner::spawn(
                "pod-deletion-cost",
                kubernetes::keep_cost(pod, move || readiness.running(), kubernetes::MIN_INTERVAL),
            )
        });
        let mut roles: Vec<String> = colony
            .handle()
            .pools()
            .iter()
            .map(|(s, _)| s.role.to_string())
            .collect();
        roles.dedup();
        eprintln!(
            "node {name} joined the cluster at {} ({capacity} agent slots, roles {}{}); Ctrl-C or SIGTERM drains it",
            args.nats.nats,
            roles.join(", "),
            probes
                .as_ref()
                .map(|p| format!("; probes on http://{}", p.addr()))
                .unwrap_or_default()
        );
        stops.next().await;
        eprintln!("node {name} drains: no new tasks; running ones finish or go back");
        let report = node.drain().await;
        drop(bridge);
        if let Some(cost) = cost {
            cost.abort();
        }
        colony.shutdown().await;
        drop(probes);
        if args.json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            eprintln!(
                "node {name} left: {} attempts started, {} succeeded, {} failed, {} retried, {} dead-lettered, {} handed back, {} fenced, {} cancelled",
                report.started,
                report.succeeded,
                report.failed,
                report.retried,
                report.dead_lettered,
                report.handed_back,
                report.fenced,
                report.cancelled
            );
        }
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

pub(crate) fn run(command: &Command) -> Result<(), Failure> {
    let runtime = tokio()?;
    let result = runtime.block_on(async {
        match command {
            Command::Submit(args) => submit(args).await,
            Command::Task(args) => task(args).await,
            Command::Status(args) => status(args).await,
            Command::Tree(args) => tree(args).await,
            Command::Agents(args) => agents(args).await,
            Command::Cancel(args) => cancel(args).await,
            Command::Runs(args) => runs(args).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn payload_of(raw: &str) -> Bytes {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(_) => Bytes::from(raw.to_owned()),
        Err(_) => Bytes::from(serde_json::Value::from(raw).to_string()),
    }
}

async fn submit(args: &SubmitArgs) -> Result<(), Failure> {
    if args.bundle.is_some() && args.file.is_none() {
        return Err(Failure::input(anyhow::anyhow!(
            "--bundle puts a file's tasks several to a message: give them with --file"
        )));
    }
    if let Some(role) = &args.task.role {
        colony_cluster::check_role(role).map_err(Failure::input)?;
    }
    let spec = |payload: Bytes| -> Result<TaskSpec, Failure> {
        let mut spec = TaskSpec {
            key: args.task.key.as_deref().map(Arc::from),
            requirement: Requirement {
                role: args.task.role.as_deref().map(Arc::from),
                ..Requirement::default()
            },
            payload,
            ..TaskSpec::default()
        };
        if let Some(p) = args.task.priority {
            spec.priority = Priority::new(p).map_err(Failure::input)?;
        }
        if let Some(t) = args.task.timeout {
            spec.timeout = Duration::from_secs_f64(t);
        }
        if let Some(n) = args.task.max_attempts {
            spec.max_attempts = n;
        }
        Ok(spec)
    };
    let (specs, ids) = match &args.file {
        None => {
            let raw = args.payload.as_deref().unwrap_or("null");
            let ids = args.task.idempotency_key.clone().map(|k| vec![k]);
            (vec![spec(payload_of(raw))?], ids)
        }
        Some(path) => {
            // Read on this thread, telling tokio: a file is not read on an async worker.
            let specs = tokio::task::block_in_place(|| read_file(path))?
                .into_iter()
                .map(spec)
                .collect::<Result<Vec<_>, _>>()?;
            let ids = args
                .task
                .idempotency_key
                .as_ref()
                .map(|k| (0..specs.len()).map(|n| format!("{k}/{n}")).collect());
            (specs, ids)
        }
    };
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let bundle = args.bundle.and_then(|n| usize::try_from(n).ok());
    let submitted = match bundle {
        Some(n) if n > 1 => {
            let key = args.task.idempotency_key.as_deref();
            cluster.submit_bundled(&specs, n, key).await
        }
        _ => cluster.submit(&specs, ids.as_deref()).await,
    };
    let submitted = submitted.map_err(|e| match e {
        colony_cluster::Error::Task(_) | colony_cluster::Error::BadRole { .. } => Failure::input(e),
        // What was accepted is printed, as it would have been, before the error says the rest.
        colony_cluster::Error::Partly { ref accepted, .. } => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "ids": accepted, "count": accepted.len() })
                );
            } else {
                for id in accepted {
                    println!("{id}");
                }
            }
            Failure::work(e)
        }
        e => Failure::work(e),
    })?;
    if !args.wait {
        if args.json {
            let ids: Vec<u64> = submitted.iter().map(|s| s.id).collect();
            // Those the stream had already (the same idempotency key within its window).
            let duplicates: Vec<u64> = submitted
                .iter()
                .filter(|s| s.duplicate)
                .map(|s| s.id)
                .collect();
            println!(
                "{}",
                serde_json::json!({ "ids": ids, "count": ids.len(), "duplicates": duplicates })
            );
        } else {
            // Each id, in the order sent: another submitter's tasks may fall between them.
            for s in &submitted {
                println!("{}", s.id);
            }
            let duplicates = submitted.iter().filter(|s| s.duplicate).count();
            if let ([one], 1) = (submitted.as_slice(), duplicates) {
                eprintln!(
                    "(already accepted with this idempotency key: task {})",
                    one.id
                );
            } else if duplicates > 0 {
                eprintln!("({duplicates} of them already accepted with their idempotency keys)");
            }
        }
        return Ok(());
    }
    let id = submitted.first().map_or(0, |s| s.id);
    let row = cluster.wait(id).await.map_err(Failure::work)?;
    print_row(id, &row, args.json);
    ended(id, &row)
}

/// One JSON payload per non-empty line, bounded; a line that is not JSON is named.
fn read_file(path: &std::path::Path) -> Result<Vec<Bytes>, Failure> {
    let read =
        |e: std::io::Error| Failure::input(anyhow::anyhow!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.is_dir() {
        return Err(Failure::input(anyhow::anyhow!(
            "{} is a directory: give a file with one JSON payload per line",
            path.display()
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(Failure::input(anyhow::anyhow!(
            "{} is {} bytes: at most {MAX_FILE} per file; split it",
            path.display(),
            meta.len()
        )));
    }
    // Bounded as read, not only by the size said (a FIFO says 0).
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(read)?, MAX_FILE + 1),
        &mut text,
    )
    .map_err(read)?;
    if text.len() as u64 > MAX_FILE {
        return Err(Failure::input(anyhow::anyhow!(
            "{}: over {MAX_FILE} bytes; split it",
            path.display()
        )));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
            return Err(Failure::input(anyhow::anyhow!(
                "{}:{}: not JSON: {e}",
                path.display(),
                i + 1
            )));
        }
        out.push(Bytes::from(line.to_owned()));
    }
    if out.is_empty() {
        return Err(Failure::input(anyhow::anyhow!(
            "{} holds no tasks: one JSON payload per line",
            path.display()
        )));
    }
    Ok(out)
}

fn ended(id: u64, row: &Row) -> Result<(), Failure> {
    if row.state == TaskState::Succeeded {
        Ok(())
    } else {
        Err(Failure::work(anyhow::anyhow!(
            "task {id} ended {}",
            state_name(row.state)
        )))
    }
}

fn state_name(state: TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn print_row(id: u64, row: &Row, json: bool) {
    if json {
        println!("{}", row.json(id));
        return;
    }
    let mut table = Table::new(&["task", "state", "attempt", "node", "agent"]);
    table.row(vec![
        id.to_string(),
        state_name(row.state),
        row.attempt.to_string(),
        row.node.clone(),
        row.agent.map_or_else(|| "-".into(), |a| a.to_string()),
    ]);
    eprint!("{}", table.render());
    if let Some(error) = &row.error {
        eprintln!("error: {error}");
    }
    if let Some(output) = &row.output {
        println!("{}", String::from_utf8_lossy(output));
    }
}

async fn task(args: &TaskArgs) -> Result<(), Failure> {
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    if args.wait {
        // An id the cluster never had is the caller's mistake, not a wait forever.
        if let Err(e @ colony_cluster::Error::Unknown { .. }) = cluster.task(args.id).await {
            return Err(Failure::input(e));
        }
        let row = cluster.wait(args.id).await.map_err(|e| match e {
            colony_cluster::Error::Unknown { .. } => Failure::input(e),
            e => Failure::work(e),
        })?;
        print_row(args.id, &row, args.json);
        return ended(args.id, &row);
    }
    match cluster.task(args.id).await {
        Ok(TaskView::Row(row)) => print_row(args.id, &row, args.json),
        Ok(TaskView::Queued) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": args.id, "state": "queued" })
                );
            } else {
                println!("task {} is queued: no node has started it", args.id);
            }
        }
        Err(e @ colony_cluster::Error::Unknown { .. }) => return Err(Failure::input(e)),
        Err(e) => return Err(Failure::work(e)),
    }
    Ok(())
}

/// `colony cluster runs`.
async fn runs(args: &RunsArgs) -> Result<(), Failure> {
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let runs = cluster
        .runs(args.limit as usize)
        .await
        .map_err(Failure::work)?;
    if args.json {
        let runs: Vec<serde_json::Value> = runs.iter().map(|(id, meta)| meta.json(id)).collect();
        println!("{}", serde_json::Value::from(runs));
        return Ok(());
    }
    if runs.is_empty() {
        println!("no run is kept in the cluster (runs with --run-id are)");
        return Ok(());
    }
    let mut table = Table::new(&["run", "workflow", "state", "tasks", "scheduler", "term"]);
    for (id, meta) in &runs {
        let state = match (meta.done, meta.code) {
            (true, _) if meta.cancelled.is_some() => "cancelled".to_owned(),
            (true, Some(0)) => "done, succeeded".to_owned(),
            (true, _) => "done, failed".to_owned(),
            (false, _) => "running or stopped".to_owned(),
        };
        let tasks: Vec<String> = meta
            .counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        table.row(vec![
            id.clone(),
            meta.workflow.clone(),
            state,
            tasks.join(", "),
            meta.scheduler.clone(),
            meta.term.to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// `colony cluster cancel ID...`.
async fn cancel(args: &CancelArgs) -> Result<(), Failure> {
    // A run id no run can have is refused before any wait for the cluster.
    if let Some(run) = &args.run {
        colony_cluster::runs::check_run_id(run).map_err(Failure::input)?;
    }
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let who = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let reason = format!(
        "cancelled by {} on {} (colony cluster cancel)",
        colony_core::text::shorten(&who, 64),
        default_name()
    );
    if let Some(run) = &args.run {
        return cancel_run(&cluster, run).await;
    }
    let (mut ended, mut failed) = (0, 0);
    // Each id is tried, whatever the others did.
    for &id in &args.ids {
        match cluster.cancel(id, &reason).await {
            Ok(colony_cluster::Cancel::Cancelled { was }) => println!(
                "task {id}: cancelled (it was {})",
                was.map_or("not started", |s| s.as_str())
            ),
            Ok(colony_cluster::Cancel::AlreadyEnded { state }) => {
                println!("task {id}: had ended already ({})", state.as_str());
                ended += 1;
            }
            Err(e) => {
                eprintln!("task {id}: {e}");
                failed += 1;
            }
        }
    }
    if ended + failed > 0 {
        return Err(Failure::work(anyhow::anyhow!(
            "of {} task(s), {ended} had ended already and {failed} could not be cancelled",
            args.ids.len()
        )));
    }
    Ok(())
}

/// `colony cluster cancel --run ID`: the run cancelled for good, then its tasks.
async fn cancel_run(cluster: &Cluster, run: &str) -> Result<(), Failure> {
    use colony_cluster::runs::RunCancel;
    let book = cluster.run_book(run).await.map_err(cluster_failure)?;
    let who = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let reason = format!(
        "cancelled by {} on {} (colony cluster cancel --run)",
        colony_core::text::shorten(&who, 64),
        default_name()
    );
    match book
        .cancel(cluster, &reason)
        .await
        .map_err(cluster_failure)?
    {
        RunCancel::Unknown => Err(Failure::input(anyhow::anyhow!(
            "run {run}: no such run in the cluster (a run is kept once `colony run --nats --run-id` starts it)"
        ))),
        RunCancel::AlreadyDone { meta } => Err(Failure::work(anyhow::anyhow!(
            "run {run}: finished already ({}), nothing changed",
            run_counts(&meta)
        ))),
        RunCancel::Cancelled {
            again,
            why,
            cancelled,
            ended,
            failed,
        } => {
            let how = match again {
                true => format!("cancelled already ({why})"),
                false => "cancelled".to_owned(),
            };
            println!(
                "run {run}: {how}; of its tasks in the cluster, {cancelled} cancelled, {ended} had ended"
            );
            for why in &failed {
                eprintln!("{why}");
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure::work(anyhow::anyhow!(
                    "run {run}: {} task(s) could not be cancelled (they run to their end; nothing takes their results)",
                    failed.len()
                )))
            }
        }
    }
}

/// A done run's tasks by status, as `3 succeeded, 1 failed`.
fn run_counts(meta: &colony_cluster::runs::RunMeta) -> String {
    let counts: Vec<String> = meta
        .counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    counts.join(", ")
}

/// `colony cluster tree`: the cluster as the root, each live node a subtree of its
/// runtime's tiers, from the nodes' heartbeats.
async fn tree(args: &StatusArgs) -> Result<(), Failure> {
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let status = cluster.status().await.map_err(Failure::work)?;
    if args.json {
        let nodes: Vec<serde_json::Value> = status
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.name,
                    "draining": n.draining,
                    "agents": n.agents,
                    "unhealthy": n.unhealthy,
                    "tiers": n.tiers,
                })
            })
            .collect();
        let agents: u64 = status.nodes.iter().map(|n| n.agents).sum();
        let tree = serde_json::json!({
            "cluster": cluster.url(),
            "agents": agents,
            "nodes": nodes,
        });
        println!("{tree}");
        return Ok(());
    }
    print!("{}", render_tree(cluster.url(), &status.nodes));
    Ok(())
}

async fn agents(args: &AgentsArgs) -> Result<(), Failure> {
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let query = colony_runtime::agents::AgentQuery {
        tier: args.tier.clone(),
        role: args.role.clone(),
        health: args.health,
        state: args.state.clone(),
        after: args.after,
        limit: Some(args.limit as usize),
        ..Default::default()
    };
    let answers = match cluster.agents(args.node.as_deref(), &query).await {
        Ok(answers) => answers,
        Err(e @ colony_cluster::Error::Settings(_)) => return Err(Failure::input(e)),
        Err(e) => return Err(Failure::work(e)),
    };
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|n| n.error.as_ref().map(|e| format!("node {}: {e}", n.node)))
        .collect();
    if args.json {
        for n in &answers {
            println!("{}", serde_json::to_string(n).map_err(Failure::work)?);
        }
    } else {
        print!("{}", render_agents(&answers));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::work(anyhow::anyhow!("{}", failed.join("; "))))
    }
}

/// The nodes' answers as one table, a row per agent, and where each node's next page
/// starts.
fn render_agents(answers: &[colony_cluster::agents::NodeAgents]) -> String {
    use crate::commands::client::{AGENT_COLUMNS, agent_cells};
    let columns: Vec<&str> = std::iter::once("node").chain(AGENT_COLUMNS).collect();
    let mut t = Table::new(&columns);
    let mut more = String::new();
    for n in answers {
        for a in &n.agents {
            let mut row = vec![n.node.clone()];
            row.extend(agent_cells(a));
            t.row(row);
        }
        if let Some(after) = n.next_after {
            more.push_str(&format!(
                "node {}: more after agent {after} (--node {} --after {after})\n",
                n.node, n.node
            ));
        }
    }
    t.render() + &more
}

/// The cluster's hierarchy as text, one line per node and per tier.
fn render_tree(url: &str, nodes: &[colony_cluster::NodeInfo]) -> String {
    use std::fmt::Write as _;
    let agents: u64 = nodes.iter().map(|n| n.agents).sum();
    let mut out = format!(
        "cluster {url}: {} node{}, {} agents\n",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        colony_core::text::thousands(agents)
    );
    for (i, n) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let (branch, under) = if last {
            ("└─", "   ")
        } else {
            ("├─", "│  ")
        };
        let mut about = vec![
            if n.draining {
                "draining"
            } else {
                "taking work"
            }
            .to_owned(),
        ];
        if n.unhealthy > 0 {
            about.push(format!("{} unhealthy", n.unhealthy));
        }
        let _ = writeln!(
            out,
            "{branch} node {}: {} agents ({})",
            n.name,
            colony_core::text::thousands(n.agents),
            about.join(", ")
        );
        if n.tiers.is_empty() {
            let _ = writeln!(out, "{under}└─ (its heartbeat does not tell its tiers)");
        }
        for (j, t) in n.tiers.iter().enumerate() {
            let twig = if j + 1 == n.tiers.len() {
                "└─"
            } else {
                "├─"
            };
            let down = if t.down > 0 {
                format!(" ({} down)", colony_core::text::thousands(t.down))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{under}{twig} {}: {}{down}",
                t.name,
                colony_core::text::thousands(t.agents)
            );
        }
    }
    out
}

async fn status(args: &StatusArgs) -> Result<(), Failure> {
    let settings = args.nats.settings(None)?;
    let cluster = args.nats.connect(settings, false).await?;
    let status = cluster.status().await.map_err(Failure::work)?;
    if args.json {
        println!("{}", serde_json::to_string(&status).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{} node(s), {} unfinished task(s), {} replica(s), stream leader {}",
        status.nodes.len(),
        status.unfinished,
        status.replicas,
        status.leader.as_deref().unwrap_or("none")
    );
    let mut nodes = Table::new(&[
        "node", "roles", "agents", "running", "ended", "fenced", "state",
    ]);
    for n in &status.nodes {
        nodes.row(vec![
            n.name.clone(),
            n.roles.join(","),
            n.agents.to_string(),
            n.running.to_string(),
            n.ended.to_string(),
            n.fenced.to_string(),
            if n.draining { "draining" } else { "taking" }.into(),
        ]);
    }
    print!("{}", nodes.render());
    let mut roles = Table::new(&["role", "waiting", "running"]);
    for r in &status.roles {
        roles.row(vec![
            r.role.clone(),
            r.waiting.to_string(),
            r.running.to_string(),
        ]);
    }
    print!("{}", roles.render());
    Ok(())
}

#[cfg(test)]
mod tree_tests {
    use super::render_tree;
    use colony_cluster::{NodeInfo, TierCount};

    fn node(name: &str, tiers: &[(&str, u64, u64)], unhealthy: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            roles: vec!["worker".into()],
            agents: tiers.iter().map(|t| t.1).sum(),
            draining,
            tiers: tiers
                .iter()
                .map(|&(name, agents, down)| TierCount {
                    name: name.into(),
                    agents,
                    down,
                })
                .collect(),
            unhealthy,
            ..NodeInfo::default()
        }
    }

    #[test]
    fn the_cluster_is_the_root_and_each_node_a_subtree_of_its_tiers() {
        let nodes = [
            node("a", &[("supervisor", 1, 0), ("worker", 12, 2)], 1, false),
            node("b", &[("worker", 1200, 0)], 0, true),
            node("old", &[], 0, false),
        ];
        assert_eq!(
            render_tree("nats://n1:4222", &nodes),
            "cluster nats://n1:4222: 3 nodes, 1,213 agents\n\
             ├─ node a: 13 agents (taking work, 1 unhealthy)\n\
             │  ├─ supervisor: 1\n\
             │  └─ worker: 12 (2 down)\n\
             ├─ node b: 1,200 agents (draining)\n\
             │  └─ worker: 1,200\n\
             └─ node old: 0 agents (taking work)\n\
             \u{20}  └─ (its heartbeat does not tell its tiers)\n"
        );
    }
}
