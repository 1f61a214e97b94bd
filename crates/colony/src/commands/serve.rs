//! `colony serve`: a runtime that stays up, with its HTTP API, metrics and dashboard; and
//! `colony token create`, which makes the tokens it asks for.

use crate::{Failure, config};
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_journal::{Journal, MemoryJournal, SqliteJournal, SqliteOptions};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use colony_server::{Config, Scope, Tls, Tokens};
use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read settings from this TOML file (default: $COLONY_CONFIG, else ./colony.toml if
    /// it exists); flags and COLONY_* variables override it. See docs/configuration.md.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Where to listen (default 127.0.0.1:7070). Without --tokens, a loopback address only.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Simulated agents to run the tasks (the pool `sim`, role `worker`), unless --pools
    /// (default 1000).
    #[arg(long, conflicts_with = "pools")]
    agents: Option<u32>,
    /// The agents to run, from a workflow-format file's `agents:` list (sim, command,
    /// process, http pools); tasks pick them with `role`. Its tasks, if any, are not run.
    #[arg(long, value_name = "FILE")]
    pools: Option<PathBuf>,
    /// Where command agents keep their stderr logs and worktrees (default colony-out/serve).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Journal to this SQLite file (created if missing), or to a journal in NATS
    /// (nats://HOST:PORT/NAME[?replicas=1]: replicated, taken over by whichever process
    /// opens it last); in memory otherwise.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Ask every caller for a bearer token from this file (see `colony token create`); also
    /// $COLONY_TOKENS.
    #[arg(long, value_name = "PATH")]
    tokens: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// Requests per second each client may make (per token; per address without tokens).
    #[arg(long, value_name = "N")]
    rate_limit: Option<NonZeroU32>,
    /// Run workflow files posted to /v1/runs (admin scope), results under DIR. Off without
    /// it: a workflow may start programs on this host.
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
    /// Serve the agents' shared memory in this SQLite file under /v1/memory (created if
    /// absent; a file that is not a memory is refused), or in NATS JetStream:
    /// nats://HOST:PORT/NAME, shared by every process that opens it (with --nats, a memory
    /// must be in NATS or on Chroma). Off without it and --memory-chroma.
    #[arg(long, value_name = "PATH", conflicts_with = "memory_chroma")]
    memory: Option<PathBuf>,
    /// Serve the memory on this ChromaDB server instead: http://HOST:PORT, with
    /// ?tenant=T&database=D&prefix=P&token-env=VAR as needed (see `colony memory --chroma`).
    #[arg(long, value_name = "URL")]
    memory_chroma: Option<String>,
    /// Spread the memory over N stores (files PATH.1-of-N.., or Chroma prefixes
    /// PREFIX-1-of-N..); always the same N for one memory (default 1).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=colony_memory::MAX_SHARDS as u64))]
    memory_shards: Option<u64>,
    /// Most connections open at once (default 4096). At the cap, the one waiting longest for
    /// a request is closed to make room; if every one is busy, the newcomer gets 503. Keep it
    /// under the process's file limit (`ulimit -n`).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=config::MAX_CONNECTIONS))]
    max_connections: Option<u64>,
    /// Seconds a new connection has to send a complete request head, TLS handshake included
    /// (default 10).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=config::MAX_TIMEOUT_SECS))]
    header_timeout: Option<u64>,
    /// Seconds a kept-alive connection may stay idle between requests (default 30).
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=config::MAX_TIMEOUT_SECS))]
    idle_timeout: Option<u64>,
    /// Back the journal (--db) up continuously to this file or s3://bucket/key: at start,
    /// every --backup-every, and once more when the server stops. Each copy is consistent
    /// and checked, and replaces the last one only once complete. A failed backup is
    /// logged and shown on /v1/backup and /metrics; the server goes on.
    #[arg(long, value_name = "URL")]
    backup_to: Option<String>,
    /// How often to back up with --backup-to, like 30s, 5m or 1h (default 5m; 1s to 7d).
    #[arg(long, value_name = "DURATION", value_parser = config::backup_every)]
    backup_every: Option<Duration>,
    /// Post the events of every run posted to /v1/runs (needs --runs) to this http(s) URL:
    /// the run's start, its failed tasks, its end with the summary (besides the webhooks its
    /// own file names).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// Sign --webhook's events with the secret in this variable (X-Colony-Signature-256).
    #[arg(long, value_name = "VAR")]
    webhook_secret_env: Option<String>,
    /// Serve a cluster on NATS JetStream instead of a runtime of its own: nats://HOST:PORT,
    /// several comma-separated. Its nodes (`colony node`) run the tasks; this server takes
    /// tasks, shows the cluster, and stands for election as the scaling leader.
    #[arg(long, value_name = "URL",
          conflicts_with_all = ["agents", "pools", "db", "runs", "backup_to", "backup_every",
                                "webhook", "webhook_secret_env"])]
    nats: Option<String>,
    /// With --nats: copies JetStream keeps of the cluster's tasks if this server makes them
    /// first (3 or 5; 1 for one development server); a cluster already made keeps its own.
    #[arg(long, value_name = "N", requires = "nats")]
    replicas: Option<usize>,
    /// With --nats: this server's name as a candidate for scaling leader (default
    /// HOSTNAME-PID): letters, digits, `-` and `_`.
    #[arg(long, requires = "nats")]
    name: Option<String>,
    /// With --nats: how often the scaling leader looks at each role (default 5s).
    #[arg(long, value_name = "DURATION", requires = "nats",
          value_parser = crate::commands::cluster::duration)]
    scaling_period: Option<Duration>,
    /// With --nats: the scaling leader's lease; a standby takes over within it and a second
    /// after the leader dies (default 5s; whole seconds from 2s).
    #[arg(long, value_name = "DURATION", requires = "nats",
          value_parser = crate::commands::cluster::duration)]
    scaling_lease: Option<Duration>,
    /// With --nats: fewest nodes the scaling leader asks for a role (default 1; 0 lets an
    /// idle role scale to zero).
    #[arg(long, value_name = "N", requires = "nats")]
    scaling_min: Option<u32>,
    /// With --nats: most nodes the scaling leader asks for a role (default 100).
    #[arg(long, value_name = "N", requires = "nats")]
    scaling_max: Option<u32>,
}

impl Args {
    /// The flags given, for [`config::resolve`].
    pub(crate) fn flags(&self) -> config::Flags {
        config::Flags {
            config: self.config.clone(),
            addr: self.addr,
            agents: self.agents,
            pools: self.pools.clone(),
            out: self.out.clone(),
            db: self.db.clone(),
            tokens: self.tokens.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            rate_limit: self.rate_limit,
            runs: self.runs.clone(),
            memory: self.memory.clone(),
            memory_chroma: self.memory_chroma.clone(),
            memory_shards: self.memory_shards,
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            backup_to: self.backup_to.clone(),
            backup_every: self.backup_every,
            webhook: self.webhook.clone(),
            webhook_secret_env: self.webhook_secret_env.clone(),
        }
    }
}

impl Args {
    /// What `colony serve --nats` needs beyond the server's settings.
    fn cluster(&self, nats: &str) -> crate::commands::cluster::ServeCluster {
        let defaults = colony_cluster::scaling::ScalingPlan::default();
        crate::commands::cluster::ServeCluster {
            nats: crate::commands::cluster::NatsArgs::new(nats, self.replicas),
            name: self.name.clone(),
            plan: colony_cluster::scaling::ScalingPlan {
                period: self.scaling_period.unwrap_or(defaults.period),
                lease: self.scaling_lease.unwrap_or(defaults.lease),
                policy: colony_core::scaling::ScalingOptions {
                    min: self.scaling_min.unwrap_or(1),
                    max: self.scaling_max.unwrap_or(100),
                    ..defaults.policy
                },
            },
        }
    }
}

/// The settings of `serve` from every layer, or why they cannot be used (exit 2).
pub(crate) fn resolve(flags: &config::Flags) -> Result<config::Resolved, Failure> {
    let env = config::environment().map_err(Failure::input)?;
    config::resolve(flags, &env).map_err(|e| match e {
        config::Error::Invalid(invalid) => {
            for problem in &invalid.problems {
                eprintln!("{problem}");
            }
            let n = invalid.problems.len();
            Failure::input(anyhow::anyhow!(
                "the settings have {n} problem{}",
                if n == 1 { "" } else { "s" }
            ))
        }
        config::Error::Read(e) => Failure::input(e),
        config::Error::Pools(e) => crate::commands::workflow::invalid(e),
    })
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    let resolved = resolve(&args.flags())?;
    let settings = &resolved.server;
    let tokens = match &settings.tokens {
        Some(path) => Some(Tokens::load(path).map_err(Failure::input)?),
        None => None,
    };
    if tokens.is_none() && !settings.addr.ip().is_loopback() {
        return Err(Failure::input(colony_server::Error::NotLoopback(
            settings.addr,
        )));
    }
    let connections = colony_server::Limits {
        max_connections: usize::try_from(settings.max_connections).unwrap_or(usize::MAX),
        header_timeout: Duration::from_secs(settings.header_timeout),
        idle_timeout: Duration::from_secs(settings.idle_timeout),
    };
    let tls = settings
        .tls_cert
        .clone()
        .zip(settings.tls_key.clone())
        .map(|(cert, key)| Tls { cert, key });
    if let Some(nats) = &args.nats {
        let config = Config {
            tokens,
            tls,
            rate_limit: settings.rate_limit,
            connections,
            ..Config::local(settings.addr)
        };
        return crate::commands::cluster::serve(args.cluster(nats), &resolved, config);
    }
    // The server's webhook signs with a secret that must be there now, not at a run's start.
    if let Some(var) = &settings.webhook_secret_env
        && std::env::var(var).map_or(true, |v| v.is_empty())
    {
        return Err(Failure::input(anyhow::anyhow!(
            "--webhook-secret-env {var}: the variable is not set (or is empty)"
        )));
    }
    let backups = match (&settings.backup_to, &settings.db) {
        (Some(to), Some(db)) => {
            let source = resolved
                .sources
                .get("server.backup-to")
                .map_or_else(|| "backup-to".to_owned(), |s| s.to_string());
            check_backup_folder(to, db, &source)?;
            Some(colony_server::backup::Backups::new(
                colony_server::backup::Backup {
                    db: db.clone(),
                    to: to.clone(),
                    every: settings.backup_every,
                },
            ))
        }
        _ => None,
    };
    let mut config = Config {
        addr: settings.addr,
        tokens,
        tls,
        rate_limit: settings.rate_limit,
        runs: settings.runs.clone(),
        memory: match (&settings.memory, &settings.memory_chroma) {
            (None, None) => None,
            (path, chroma) => Some(Arc::from(crate::commands::memory::open_memory(
                path.as_deref(),
                chroma.as_deref(),
                usize::try_from(settings.memory_shards).unwrap_or(1),
                true,
                true,
                ("--memory", "--memory-chroma"),
            )?)),
        },
        max_streams: colony_server::MAX_STREAMS,
        connections,
        backup: backups.clone(),
        spend: Vec::new(),
        run_webhooks: settings
            .webhook
            .iter()
            .map(|url| {
                let mut webhook = colony_workflow::webhooks::Webhook::new(url.clone());
                webhook.secret_env = settings.webhook_secret_env.clone();
                webhook
            })
            .collect(),
    };
    let mut runtime_options = RuntimeOptions::default();
    resolved.runtime.apply(&mut runtime_options);
    let (pools, spend) = pools(&resolved)?;
    config.spend = spend;
    let agents: u64 = pools.iter().map(|p| u64::from(p.count)).sum();
    let journal: Arc<dyn Journal> = match &settings.db {
        Some(db) => match super::in_nats(db) {
            Some(location) => {
                let started = std::time::Instant::now();
                let journal = super::open_nats_journal(location)?;
                let counts = journal.counts().map_err(Failure::work)?;
                eprintln!(
                    "journal {} in NATS: {} tasks, {} unfinished, read back in {:.1} s",
                    journal.name(),
                    counts.total(),
                    counts.total() - counts.terminal(),
                    started.elapsed().as_secs_f64()
                );
                Arc::new(journal)
            }
            None => Arc::new(SqliteJournal::open(SqliteOptions::new(db)).map_err(Failure::input)?),
        },
        None => Arc::new(MemoryJournal::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let served = runtime.block_on(async {
        // From the start: a signal while the runtime starts stops it once it has.
        let mut stops = crate::signal::Stops::new();
        // Before the runtime registers its metrics, so that they land in /metrics.
        colony_server::install_metrics();
        let colony = Runtime::start(runtime_options, pools, journal)
            .await
            .map_err(Failure::input)?;
        let server = colony_server::serve(colony.handle().clone(), config)
            .await
            .map_err(Failure::input)?;
        eprintln!(
            "colony serves on {} ({} agents{}{}); Ctrl-C or SIGTERM stops it",
            server.url(),
            agents,
            if settings.tokens.is_some() {
                ", tokens required"
            } else {
                ""
            },
            match &resolved.file {
                Some(path) => format!(", settings from {}", path.display()),
                None => String::new(),
            }
        );
        stops.next().await;
        server.stop();
        colony.shutdown().await;
        if let Some(backups) = backups {
            last_backup(&backups, &mut stops).await;
        }
        Ok(())
    });
    // A copy left running (the last backup, skipped) is not waited for: the destination
    // keeps the last complete one, as a copy is put in place only once complete.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served
}

/// The pools the settings say to run: the pools file's, else `agents` sim agents (pool
/// `sim`, role `worker`); with what each metered pool may spend.
pub(crate) fn pools(
    resolved: &config::Resolved,
) -> Result<(Vec<Pool>, Vec<colony_workflow::Metered>), Failure> {
    match &resolved.pools {
        None => {
            let sim = Sim::new(SimOptions::default()).map_err(Failure::input)?;
            let spec = AgentSpec::new("sim", "worker");
            let pool = Pool::new(
                spec,
                resolved.server.agents,
                Arc::new(sim) as Arc<dyn colony_agents::Agent>,
            );
            Ok((vec![pool], Vec::new()))
        }
        Some(defs) => {
            let (agents, spend) =
                colony_workflow::agents(defs, &resolved.server.out).map_err(Failure::input)?;
            let pools = defs
                .iter()
                .zip(agents)
                .map(|(d, agent)| d.pool(agent))
                .collect();
            Ok((pools, spend))
        }
    }
}

/// Refuses, before anything starts, a backup file every backup would fail to write: a
/// folder, one in a folder that is not there, or the journal itself under another name.
/// (A folder that goes away later fails those backups, which say so.) `source` says where
/// the setting came from.
fn check_backup_folder(
    to: &colony_journal::sqlite::Location,
    db: &std::path::Path,
    source: &str,
) -> Result<(), Failure> {
    let colony_journal::sqlite::Location::File(path) = to else {
        return Ok(());
    };
    let refuse = |why: String| {
        Err(Failure::input(anyhow::anyhow!(
            "{source}: backup-to {}: {why}",
            path.display()
        )))
    };
    if path.is_dir() {
        return refuse("is a folder: name the file the backup goes to".into());
    }
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(folder) = folder
        && !folder.is_dir()
    {
        return refuse(format!("the folder {} does not exist", folder.display()));
    }
    // The same file by another path (`./j.db`, a link to its folder): its folder, resolved,
    // and its name.
    let resolved = |p: &std::path::Path| {
        let folder = p.parent().filter(|f| !f.as_os_str().is_empty());
        let folder = folder.unwrap_or(std::path::Path::new("."));
        std::fs::canonicalize(folder)
            .ok()
            .zip(p.file_name().map(|n| n.to_owned()))
    };
    if resolved(path).is_some() && resolved(path) == resolved(db) {
        return refuse(format!(
            "is the journal itself ({}): back it up to another file",
            db.display()
        ));
    }
    Ok(())
}

/// The backup taken once the runtime has stopped, so that the copy holds the journal's last
/// state; a second Ctrl-C skips it.
async fn last_backup(
    backups: &Arc<colony_server::backup::Backups>,
    stops: &mut crate::signal::Stops,
) {
    let to = backups.status().to;
    eprintln!("backing the journal up to {to} a last time (Ctrl-C or SIGTERM again skips it)");
    tokio::select! {
        result = backups.once() => match result {
            Ok(copied) => eprintln!(
                "backed up {} tasks to {to} ({} bytes, {:.3} s)",
                copied.tasks, copied.bytes, copied.seconds
            ),
            Err(e) => eprintln!("the last backup to {to} failed: {e}"),
        },
        _ = stops.next() => eprintln!(
            "the last backup to {to} was skipped: the copy there is the last one that succeeded"
        ),
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token, add its hash to the tokens file, and print the token (shown only once).
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// A name for the token: who or what uses it (letters, digits, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// What it allows: read; submit (and read); admin (and submit).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["read", "submit", "admin"]))]
    scope: String,
    /// The tokens file `colony serve --tokens` reads; created readable by its owner only.
    #[arg(long, env = "COLONY_TOKENS", value_name = "PATH")]
    tokens: PathBuf,
}

pub(crate) fn token(command: &TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => {
            let scope: Scope = args
                .scope
                .parse()
                .map_err(|e: String| Failure::input(anyhow::anyhow!(e)))?;
            let token = Tokens::create(&args.tokens, &args.name, scope).map_err(Failure::input)?;
            eprintln!(
                "token {:?} ({scope}) added to {}; it is not stored anywhere, keep it now:",
                args.name,
                args.tokens.display()
            );
            println!("{token}");
            Ok(())
        }
    }
}
