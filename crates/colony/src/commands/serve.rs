//! `colony serve`: a runtime that stays up, with its HTTP API, metrics and dashboard; and
//! `colony token create`, which makes the tokens it asks for.

use crate::Failure;
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
    /// Where to listen. Without --tokens, a loopback address only.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Simulated agents to run the tasks (the pool `sim`, role `worker`), unless --pools.
    #[arg(long, default_value_t = 1_000, conflicts_with = "pools")]
    agents: u32,
    /// The agents to run, from a workflow-format file's `agents:` list (sim, command,
    /// process, http pools); tasks pick them with `role`. Its tasks, if any, are not run.
    #[arg(long, value_name = "FILE")]
    pools: Option<PathBuf>,
    /// Where command agents keep their stderr logs and worktrees.
    #[arg(long, value_name = "DIR", default_value = "colony-out/serve")]
    out: PathBuf,
    /// Journal to this SQLite file (created if missing); in memory otherwise.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Ask every caller for a bearer token from this file (see `colony token create`).
    #[arg(long, env = "COLONY_TOKENS", value_name = "PATH")]
    tokens: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requests per second each client may make (per token; per address without tokens).
    #[arg(long, value_name = "N")]
    rate_limit: Option<NonZeroU32>,
    /// Run workflow files posted to /v1/runs (admin scope), results under DIR. Off without
    /// it: a workflow may start programs on this host.
    #[arg(long, value_name = "DIR")]
    runs: Option<PathBuf>,
    /// Most connections open at once. At the cap, the one waiting longest for a request is
    /// closed to make room; if every one is busy, the newcomer gets 503. Keep it under the
    /// process's file limit (`ulimit -n`).
    #[arg(long, value_name = "N", default_value_t = colony_server::conn::MAX_CONNECTIONS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Seconds a new connection has to send a complete request head (TLS handshake included).
    #[arg(long, value_name = "SECS", default_value_t = colony_server::conn::HEADER_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    header_timeout: u64,
    /// Seconds a kept-alive connection may stay idle between requests.
    #[arg(long, value_name = "SECS", default_value_t = colony_server::conn::IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    idle_timeout: u64,
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    let tokens = match &args.tokens {
        Some(path) => Some(Tokens::load(path).map_err(Failure::input)?),
        None => None,
    };
    if tokens.is_none() && !args.addr.ip().is_loopback() {
        return Err(Failure::input(colony_server::Error::NotLoopback(args.addr)));
    }
    let config = Config {
        addr: args.addr,
        tokens,
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| Tls { cert, key }),
        rate_limit: args.rate_limit,
        runs: args.runs.clone(),
        max_streams: colony_server::MAX_STREAMS,
        connections: colony_server::Limits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(args.header_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
        },
    };
    // A pools file may set the autoscaler's timing and the breakers in its `runtime:`.
    let mut runtime_options = RuntimeOptions::default();
    let pools = match &args.pools {
        None => {
            let sim = Sim::new(SimOptions::default()).map_err(Failure::input)?;
            let spec = AgentSpec::new("sim", "worker");
            vec![Pool::new(
                spec,
                args.agents,
                Arc::new(sim) as Arc<dyn colony_agents::Agent>,
            )]
        }
        Some(path) => {
            let defs =
                colony_workflow::load_pools(path).map_err(crate::commands::workflow::invalid)?;
            defs.runtime.apply(&mut runtime_options);
            let (agents, _) = colony_workflow::agents(&defs, &args.out).map_err(Failure::input)?;
            defs.iter()
                .zip(agents)
                .map(|(d, agent)| {
                    let pool = Pool::new(d.spec.clone(), d.count, agent);
                    match d.scaling {
                        Some(options) => pool.scaled(options),
                        None => pool,
                    }
                })
                .collect()
        }
    };
    let agents: u64 = pools.iter().map(|p| u64::from(p.count)).sum();
    let journal: Arc<dyn Journal> = match &args.db {
        Some(path) => {
            Arc::new(SqliteJournal::open(SqliteOptions::new(path)).map_err(Failure::input)?)
        }
        None => Arc::new(MemoryJournal::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    runtime.block_on(async {
        // Before the runtime registers its metrics, so that they land in /metrics.
        colony_server::install_metrics();
        let colony = Runtime::start(runtime_options, pools, journal)
            .await
            .map_err(Failure::input)?;
        let server = colony_server::serve(colony.handle().clone(), config)
            .await
            .map_err(Failure::input)?;
        eprintln!(
            "colony serves on {} ({} agents{}); Ctrl-C stops it",
            server.url(),
            agents,
            if args.tokens.is_some() {
                ", tokens required"
            } else {
                ""
            }
        );
        let _ = tokio::signal::ctrl_c().await;
        server.stop();
        colony.shutdown().await;
        Ok(())
    })
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
