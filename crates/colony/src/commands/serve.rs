//! `colony serve`: a runtime that stays up, with its HTTP API and metrics.

use crate::Failure;
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_journal::{Journal, MemoryJournal, SqliteJournal, SqliteOptions};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen: a loopback address (there is no authentication yet).
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: SocketAddr,
    /// Simulated agents to run the tasks (the pool `sim`, role `worker`).
    #[arg(long, default_value_t = 1_000)]
    agents: u32,
    /// Journal to this SQLite file (created if missing); in memory otherwise.
    #[arg(long)]
    db: Option<PathBuf>,
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    if !args.addr.ip().is_loopback() {
        return Err(Failure::input(colony_server::Error::NotLoopback(args.addr)));
    }
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
        let sim = Sim::new(SimOptions::default()).map_err(Failure::input)?;
        let pool = Pool::new(AgentSpec::new("sim", "worker"), args.agents, Arc::new(sim));
        let colony = Runtime::start(RuntimeOptions::default(), vec![pool], journal)
            .await
            .map_err(Failure::input)?;
        let server = colony_server::serve(colony.handle().clone(), args.addr)
            .await
            .map_err(Failure::input)?;
        eprintln!(
            "colony serves on http://{} ({} agents); Ctrl-C stops it",
            server.addr, args.agents
        );
        let _ = tokio::signal::ctrl_c().await;
        server.stop();
        colony.shutdown().await;
        Ok(())
    })
}
