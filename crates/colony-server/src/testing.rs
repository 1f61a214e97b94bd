//! Test support, for this crate's tests and its users': a runtime of simulated agents, and a
//! server for it on a free loopback port.

use crate::{Config, Server};
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use std::{future::Future, sync::Arc, time::Duration};

/// A runtime with `workers` simulated agents (pool `sim`, role `worker`) behaving as `sim`
/// says, journaled in memory. Installs the Prometheus recorder first, so that the runtime's
/// metrics reach `/metrics`.
///
/// # Panics
/// If the options are invalid: this is for tests.
pub async fn sim_runtime(workers: u32, sim: SimOptions, options: RuntimeOptions) -> Runtime {
    crate::install_metrics();
    let agent = Arc::new(Sim::new(sim).expect("valid sim options"));
    let pool = Pool::new(AgentSpec::new("sim", "worker"), workers, agent);
    Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .expect("a runtime starts")
}

/// Serves `runtime` as `config` says, on a free port of 127.0.0.1 whatever `config.addr`
/// holds; the server and its base URL.
///
/// # Panics
/// If the server cannot start: this is for tests.
pub async fn serve(runtime: &Runtime, config: Config) -> (Server, String) {
    let config = Config {
        addr: "127.0.0.1:0".parse().expect("an address"),
        ..config
    };
    let server = crate::serve(runtime.handle().clone(), config)
        .await
        .expect("the server starts");
    let url = server.url();
    (server, url)
}

/// Polls `check` every `every` until it gives something, for at most `timeout`.
pub async fn until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = check().await {
            return Some(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// A config with nothing but a loopback address: no tokens, no TLS, no limits.
pub fn local() -> Config {
    Config::local("127.0.0.1:0".parse().expect("an address"))
}
