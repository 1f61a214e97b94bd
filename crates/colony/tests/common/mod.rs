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

/// Runs `colony ARGS` and SIGKILLs it half a second after `marker` appears (written by the
/// run's first task: the run is in its journal by then), not after a fixed delay, which a
/// loaded machine can spend starting the process.
pub(crate) fn killed_once_started(args: &[&str], marker: &std::path::Path) {
    let mut child = Command::new(COLONY)
        .args(args)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            marker.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Writes `w.yaml` into `dir`, a workflow to interrupt and resume: `first` counts its runs
/// in `first.count`; `gate` fails until a file `marker` exists; `slow` takes two seconds
/// and counts its runs in `slow.count`; `last` needs them all.
pub(crate) fn resumable_workflow(dir: &std::path::Path) -> std::path::PathBuf {
    let d = dir.display();
    let wf = dir.join("w.yaml");
    std::fs::write(
        &wf,
        format!(
            r#"name: resumable
defaults: {{retries: 0, timeout: 60s}}
agents:
  - name: sh
    kind: command
    count: 4
    command: {{program: sh, args: ["-c", "{{{{input.script}}}}"]}}
tasks:
  - {{id: first, agent: sh, input: {{script: "echo run >> {d}/first.count; echo ok"}}}}
  - {{id: gate, agent: sh, needs: [first], input: {{script: "test -f {d}/marker && echo open"}}}}
  - {{id: slow, agent: sh, needs: [first], input: {{script: "sleep 2; echo slept >> {d}/slow.count; echo done"}}}}
  - {{id: last, agent: sh, needs: [gate, slow], input: {{script: "echo last"}}}}
"#
        ),
    )
    .unwrap();
    wf
}

/// Runs `colony bench crash` for 3 runs of 3,000 tasks and 20 decisions, each killed up to 3
/// times, with `extra` flags, and checks its report: nothing lost or committed twice, every
/// decision taken once from journaled ballots, re-executions within the tasks the kills
/// struck. Returns the kills.
pub(crate) fn crash_bench(extra: &[&str]) -> u64 {
    let mut args = vec![
        "bench",
        "crash",
        "--runs",
        "3",
        "--tasks",
        "3000",
        "--max-kills",
        "3",
        "--decisions",
        "20",
        "--json",
    ];
    args.extend(extra);
    let (stdout, stderr, code) = colony(&args);
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["lost"], 0);
    assert_eq!(json["double_commits"], 0);
    assert_eq!(json["succeeded"], 9_000);
    // Decisions among agents, interrupted too: each taken once, from journaled ballots.
    assert_eq!(json["decisions"], 60);
    assert_eq!(json["decided"], 60);
    assert_eq!(json["announced_twice"], 0);
    assert_eq!(json["stray_ballots"], 0);
    assert!(
        json["re_executions"].as_u64().unwrap() <= json["in_flight_at_kills"].as_u64().unwrap()
    );
    json["kills"].as_u64().unwrap()
}
