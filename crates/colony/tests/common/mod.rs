//! What the command-line tests share: a `colony serve` subprocess on a free loopback port.
// Each test file uses its own part of this.
#![allow(dead_code)]

use serde_json::Value;
use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) const COLONY: &str = env!("CARGO_BIN_EXE_colony");

/// A `colony serve` subprocess, killed when dropped, also when a test fails.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_in(std::path::Path::new("."), extra)
    }

    /// A server started in `dir`, where it finds a `colony.toml` if there is one.
    pub(crate) fn start_in(dir: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_logging(dir, extra, Stdio::null())
    }

    /// A server started in `dir`, its standard error to `stderr`.
    pub(crate) fn start_logging(dir: &std::path::Path, extra: &[&str], stderr: Stdio) -> Self {
        // A free port: bound, read, released. Another process could take it in between,
        // which the wait below would show as a timeout.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(COLONY)
            .current_dir(dir)
            .args(["serve", "--addr", &addr])
            .args(extra)
            .env_remove("COLONY_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Self {
            child,
            url: format!("http://{addr}"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::new(),
        };
        server.wait_until(Duration::from_secs(30), "/healthz to answer", || {
            server
                .request(reqwest::Method::GET, "/healthz", None, None)
                .is_some_and(|(status, _)| status == 200)
        });
        server
    }

    /// Status and body of one request; `None` when nothing answers.
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<(u16, String)> {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.runtime.block_on(async {
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    }

    /// Submits `tasks` (each `{"payload": ...}`) in one batch, which must be accepted.
    pub(crate) fn submit_batch(&self, tasks: Vec<Value>) {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/v1/tasks/batch",
                None,
                Some(serde_json::json!({ "tasks": tasks })),
            )
            .unwrap();
        assert_eq!(status, 202, "{body}");
    }

    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> Value {
        let (status, body) = self
            .request(reqwest::Method::GET, path, token, None)
            .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Stops the server as Ctrl-C does, and waits up to `limit` for it to end: whether it
    /// exited with success.
    pub(crate) fn interrupt(&mut self, limit: Duration) -> bool {
        self.signal("-INT", limit)
    }

    /// Stops the server as `docker stop` or Kubernetes does (SIGTERM), and waits up to
    /// `limit` for it to end: whether it exited with success.
    pub(crate) fn terminate(&mut self, limit: Duration) -> bool {
        self.signal("-TERM", limit)
    }

    fn signal(&mut self, signal: &str, limit: Duration) -> bool {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                start.elapsed() < limit,
                "the server did not stop in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn wait_until(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `colony ARGS` to its end: stdout, stderr and the exit code.
pub(crate) fn colony(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(COLONY).args(args).output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}
