//! Cluster mode with real parts: `nats-server` processes (one, or three routed with R3),
//! `colony node` subprocesses hosting `command` agents (each execution appends a line to its
//! node's log), and faults from outside: `kill -9` of a node's process group, SIGSTOP past
//! `ack_wait` then SIGCONT, `kill -9` of the stream's leader server. After each: every task
//! ended succeeded (I1), with one committed result (I2), executions per task at most one more
//! than the faults that hit it (I3), and nothing left in the stream (I4).
//!
//! `COLONY_FAULT_RUNS=N` repeats each fault run N times (default 1).

mod common;

use colony_cluster::{
    Cluster, NodeReport, Settings,
    testing::{self, NatsCluster, NatsServer},
};
use colony_core::task::TaskState;
use common::COLONY;
use nix::{sys::signal::Signal, unistd::Pid};
use std::{
    collections::HashMap,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const ACK_WAIT: &str = "2s";

/// A `colony node` subprocess in a process group of its own with its agents' processes: a
/// signal to the group is one to the whole machine. Killed when dropped.
struct NodeProc {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl NodeProc {
    fn start(dir: &Path, url: &str, name: &str, replicas: &str) -> NodeProc {
        Self::start_with(dir, url, name, replicas, &[])
    }

    fn start_with(dir: &Path, url: &str, name: &str, replicas: &str, extra: &[&str]) -> NodeProc {
        Self::start_env(dir, url, name, replicas, extra, &[])
    }

    fn start_env(
        dir: &Path,
        url: &str,
        name: &str,
        replicas: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> NodeProc {
        let log = dir.join(format!("{name}.log"));
        let pools = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &pools,
            format!(
                "name: node-{name}\nagents:\n  - name: sh\n    kind: command\n    count: 4\n    command: {{program: sh, args: [\"-c\", \"echo {{{{input.n}}}} >> {}; sleep {{{{input.sleep}}}}; echo task-{{{{input.n}}}}-done\"]}}\n",
                log.display()
            ),
        )
        .unwrap();
        let stderr = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(COLONY)
            .args([
                "node",
                "--nats",
                url,
                "--replicas",
                replicas,
                "--name",
                name,
            ])
            .args(["--ack-wait", ACK_WAIT, "--drain-timeout", "10s", "--json"])
            // Every node bridges a topic of its bus: the bridge starts and stops with it.
            .args(["--bridge-topic", "signals"])
            .args(extra)
            .arg("--pools")
            .arg(&pools)
            .arg("--out")
            .arg(dir.join(format!("{name}-out")))
            .env_remove("COLONY_NATS")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap();
        NodeProc {
            child: Some(child),
            name: name.into(),
            log,
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// `kill -9` of the node and every process it started.
    fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM: the node drains and prints what it did.
    fn stop(mut self) -> NodeReport {
        let mut child = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "node {} did not drain within 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "node {} exited {status}", self.name);
        let report: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("node {} printed {out:?}: {e}", self.name));
        NodeReport {
            started: report["started"].as_u64().unwrap(),
            succeeded: report["succeeded"].as_u64().unwrap(),
            failed: report["failed"].as_u64().unwrap(),
            retried: report["retried"].as_u64().unwrap(),
            dead_lettered: report["dead_lettered"].as_u64().unwrap(),
            handed_back: report["handed_back"].as_u64().unwrap(),
            fenced: report["fenced"].as_u64().unwrap(),
            cancelled: report["cancelled"].as_u64().unwrap(),
            already_ended: report["already_ended"].as_u64().unwrap(),
        }
    }

    /// Task numbers, one per execution on this node, in order.
    fn executions(&self) -> Vec<u64> {
        executions_in(&self.log)
    }
}

fn executions_in(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One NATS server on loopback and one `colony node` (`a`, R1) that has joined it: what
/// most tests of the commands over a cluster start from.
struct OneNode {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    server: NatsServer,
    url: String,
    cluster: Cluster,
    a: NodeProc,
}

impl OneNode {
    fn start() -> Self {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::single(dir.path()).unwrap();
        let url = server.url();
        let cluster = rt.block_on(client(&url, 1));
        let a = NodeProc::start(dir.path(), &url, "a", "1");
        rt.block_on(wait_for_nodes(&cluster, 1));
        Self {
            rt,
            dir,
            server,
            url,
            cluster,
            a,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn runs() -> usize {
    std::env::var("COLONY_FAULT_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

async fn client(url: &str, replicas: usize) -> Cluster {
    let settings = Settings {
        replicas,
        ..Settings::default()
    };
    testing::connect(url, settings, Duration::from_secs(30))
        .await
        .unwrap()
}

async fn wait_for_nodes(cluster: &Cluster, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status().await.map_or(0, |s| s.nodes.len()) < n {
        assert!(
            Instant::now() < deadline,
            "{n} nodes did not join within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits `count` tasks (`n` = 0.., each sleeping `sleep` seconds) for role `sh`; returns
/// their ids by `n`.
fn submit(url: &str, dir: &Path, count: u64, sleep: f64) -> Vec<u64> {
    submit_with(url, dir, count, sleep, (3, 1))
}

/// As [`submit`], each task with `attempts`, up to `bundle` of them in one message.
fn submit_with(
    url: &str,
    dir: &Path,
    count: u64,
    sleep: f64,
    (attempts, bundle): (u32, u64),
) -> Vec<u64> {
    let file = dir.join("tasks.jsonl");
    let lines: Vec<String> = (0..count)
        .map(|n| format!("{{\"n\":{n},\"sleep\":{sleep}}}"))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = Command::new(COLONY)
        .args([
            "cluster",
            "submit",
            "--nats",
            url,
            "--role",
            "sh",
            "--max-attempts",
            &attempts.to_string(),
            "--bundle",
            &bundle.to_string(),
            "--json",
        ])
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Waits for every task to end, and checks I1-I4 against the nodes' execution logs:
/// returns the tasks executed twice.
async fn check(cluster: &Cluster, ids: &[u64], logs: &[PathBuf], faults_per_task: usize) -> usize {
    let mut executions: HashMap<u64, usize> = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let row = tokio::time::timeout(Duration::from_secs(90), cluster.wait(*id))
            .await
            .unwrap_or_else(|_| panic!("task {id} did not end within 90 s"))
            .unwrap();
        assert_eq!(row.state, TaskState::Succeeded, "task {id}: {row:?}");
        let output =
            String::from_utf8_lossy(row.output.as_deref().unwrap_or_default()).into_owned();
        assert!(
            output.contains(&format!("task-{n}-done")),
            "task {id}'s committed result is its own: {output}"
        );
        executions.insert(n as u64, 0);
    }
    for log in logs {
        for n in executions_in(log) {
            *executions.entry(n).or_default() += 1;
        }
    }
    let mut twice = 0;
    for (n, runs) in &executions {
        assert!(*runs >= 1, "task n={n} succeeded without running");
        assert!(
            *runs <= 1 + faults_per_task,
            "task n={n} ran {runs} times with {faults_per_task} fault(s)"
        );
        if *runs > 1 {
            twice += 1;
        }
    }
    // I4: the backlog drains. An ack lost with a server is made good by the next delivery,
    // which finds the task ended and acks it: within ack_wait, and a little.
    drained(cluster).await;
    twice
}

/// Waits (30 s at most) until the stream holds no unfinished task.
async fn drained(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unfinished = cluster.status().await.map_or(u64::MAX, |s| s.unfinished);
        if unfinished == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} task(s) still in the stream after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes `a` and `b` joined (`replicas` as the cluster's), then `count` tasks of `sleep`
/// seconds with `attempts` each submitted, up to `bundle` in a message; returned once
/// `started` holds of the two.
#[allow(clippy::too_many_arguments)]
fn loaded(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    url: &str,
    cluster: &Cluster,
    replicas: &str,
    (count, sleep, attempts, bundle): (u64, f64, u32, u64),
    started: impl Fn(&NodeProc, &NodeProc) -> bool,
) -> (NodeProc, NodeProc, Vec<u64>) {
    let a = NodeProc::start(dir, url, "a", replicas);
    let b = NodeProc::start(dir, url, "b", replicas);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(cluster.status()).map_or(0, |s| s.nodes.len()) < 2 {
        if Instant::now() > deadline {
            let said: Vec<String> = ["a", "b"]
                .iter()
                .map(|n| {
                    let err = std::fs::read_to_string(dir.join(format!("{n}.stderr")));
                    format!("node {n} said: {}", err.unwrap_or_default())
                })
                .collect();
            panic!("2 nodes did not join within 30 s; {}", said.join("; "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids = submit_with(url, dir, count, sleep, (attempts, bundle));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started(&a, &b) {
        assert!(
            Instant::now() < deadline,
            "the nodes did not start the tasks"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (a, b, ids)
}

#[test]
fn a_node_killed_mid_run_loses_no_task() {
    killed_mid_run(1);
}

/// The same with the tasks bundled 8 to a message: the killed node's bundles, the tasks it
/// ended in them and those it had not started, go to the other node whole; each task there
/// runs if its record says it has not ended, once.
#[test]
fn a_node_killed_mid_bundle_loses_no_task() {
    killed_mid_run(8);
}

fn killed_mid_run(bundle: u64) {
    let rt = runtime();
    for run in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::single(dir.path()).unwrap();
        let url = server.url();
        let cluster = rt.block_on(client(&url, 1));
        // Mid-run: once a has started a few.
        let (mut a, b, ids) = loaded(
            &rt,
            dir.path(),
            &url,
            &cluster,
            "1",
            (40, 0.3, 3, bundle),
            |a, _| a.executions().len() >= 3,
        );
        let killed = Instant::now();
        let killed_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        a.kill();
        let twice = rt.block_on(check(&cluster, &ids, &[a.log.clone(), b.log.clone()], 1));
        // The killed node's tasks in flight: when each ended on the other, after the kill.
        let lost: std::collections::HashSet<u64> = a.executions().into_iter().collect();
        let elsewhere = rt.block_on(async {
            let mut latest = 0u64;
            for n in &lost {
                let (row, _) = cluster.row(ids[*n as usize]).await.unwrap().unwrap();
                if row.node == "b" && row.attempt > 1 {
                    latest = latest.max(row.at_ms.saturating_sub(killed_ms));
                }
            }
            latest
        });
        let report = b.stop();
        assert_eq!(report.fenced, 0);
        eprintln!(
            "run {run}, bundles of {bundle}: kill -9 of a node: {twice} task(s) ran again on the other, the last {:.1} s after the kill (ack_wait 2 s); all 40 done {:.1} s after",
            elsewhere as f64 / 1000.0,
            killed.elapsed().as_secs_f64()
        );
        assert!(twice >= 1, "a's tasks in flight ran again elsewhere");
        drop(server);
    }
}

/// A node killed (`kill -9`) while its decisions' ballots run: each decision is taken again
/// by the other node, from new ballots, and committed once, as the voters agreed; the
/// stream drains.
#[test]
fn a_node_killed_mid_decision_leaves_it_to_another_decided_once() {
    use colony_cluster::Decide;
    use colony_core::{decision::DecisionOptions, task::TaskSpec};
    let rt = runtime();
    for run in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::single(dir.path()).unwrap();
        let url = server.url();
        let cluster = rt.block_on(client(&url, 1));
        let mut a = NodeProc::start(dir.path(), &url, "a", "1");
        let b = NodeProc::start(dir.path(), &url, "b", "1");
        rt.block_on(wait_for_nodes(&cluster, 2));
        // Six decisions of three 2.5 s ballots (long enough that a's cannot end before the
        // kill) on one node of four agents queue for a while: a timeout they all fit in.
        let decide = Decide {
            voters: 3,
            options: DecisionOptions {
                timeout: Duration::from_secs(60),
                ..DecisionOptions::default()
            },
            reputation: false,
            role_weights: Default::default(),
            spread: false,
        };
        let ids: Vec<u64> = rt.block_on(async {
            let mut ids = Vec::new();
            for n in 0..6 {
                let mut spec = TaskSpec::with_payload(format!("{{\"n\":{n},\"sleep\":2.5}}"));
                spec.requirement.role = Some("sh".into());
                ids.push(
                    cluster
                        .submit_decided(&spec, &decide, None)
                        .await
                        .unwrap()
                        .id,
                );
            }
            ids
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.executions().len() < 2 {
            assert!(Instant::now() < deadline, "node a ran no ballot");
            std::thread::sleep(Duration::from_millis(10));
        }
        a.kill();
        let killed = Instant::now();
        let on_a: std::collections::HashSet<u64> = a.executions().into_iter().collect();
        rt.block_on(async {
            for (n, id) in ids.iter().enumerate() {
                let row = tokio::time::timeout(Duration::from_secs(90), cluster.wait(*id))
                    .await
                    .unwrap_or_else(|_| panic!("decision {id} did not end within 90 s"))
                    .unwrap();
                assert_eq!(row.state, TaskState::Succeeded, "decision {id}: {row:?}");
                assert_eq!(
                    row.output.as_deref(),
                    Some(format!("task-{n}-done").as_bytes()),
                    "decision {id}'s committed result is its own"
                );
                let how = row.decision.expect("how it went");
                assert_eq!((how.voters, how.dissenters), (3, 0), "{how:?}");
                if on_a.contains(&(n as u64)) {
                    assert_eq!(row.node, "b", "a's decision {n} was taken again on b");
                }
            }
        });
        // Every decision's ballots: three at most on each node that took it.
        let mut ballots: HashMap<u64, usize> = HashMap::new();
        for n in a.executions().into_iter().chain(b.executions()) {
            *ballots.entry(n).or_default() += 1;
        }
        for n in 0..6u64 {
            let runs = ballots.get(&n).copied().unwrap_or(0);
            let most = if on_a.contains(&n) { 6 } else { 3 };
            assert!((2..=most).contains(&runs), "decision n={n}: {runs} ballots");
        }
        rt.block_on(drained(&cluster));
        let report = b.stop();
        assert_eq!(report.fenced, 0, "{report:?}");
        eprintln!(
            "run {run}: kill -9 mid-decision: {} decision(s) of a taken again on b; all 6 done {:.1} s after the kill",
            on_a.len(),
            killed.elapsed().as_secs_f64()
        );
        drop(server);
    }
}

#[test]
fn a_stalled_node_is_fenced_when_it_wakes() {
    stalled(1);
}

/// The same with the tasks bundled 8 to a message: woken, the stalled node's tasks that
/// waited in its bundles for a slot take their lease before they run, so those the other
/// node took meanwhile do not run there again, and the rest of its results are fenced.
#[test]
fn a_stalled_node_holding_bundles_is_fenced_when_it_wakes() {
    stalled(8);
}

fn stalled(bundle: u64) {
    let rt = runtime();
    for run in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::single(dir.path()).unwrap();
        let url = server.url();
        let cluster = rt.block_on(client(&url, 1));
        let (a, b, ids) = loaded(
            &rt,
            dir.path(),
            &url,
            &cluster,
            "1",
            (24, 1.0, 3, bundle),
            |a, _| a.executions().len() >= 2,
        );
        // Stopped past ack_wait (2 s): its tasks go to b; woken, its results are late.
        a.signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(5));
        a.signal(Signal::SIGCONT);
        let twice = rt.block_on(check(&cluster, &ids, &[a.log.clone(), b.log.clone()], 1));
        let (ra, rb) = (a.stop(), b.stop());
        eprintln!(
            "run {run}, bundles of {bundle}: SIGSTOP 5 s: {twice} task(s) ran again; a fenced {}, b fenced {}",
            ra.fenced, rb.fenced
        );
        assert!(ra.fenced >= 1, "a's late results were refused: {ra:?}");
        assert_eq!(rb.fenced, 0, "{rb:?}");
        assert_eq!(
            ra.succeeded + rb.succeeded,
            24,
            "one committed result per task: {ra:?} {rb:?}"
        );
        drop(server);
    }
}

#[test]
fn the_stream_leader_killed_loses_no_task() {
    let rt = runtime();
    for run in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = NatsCluster::three(dir.path()).unwrap();
        let url = servers.url();
        let cluster = rt.block_on(client(&url, 3));
        // Past a second each: their leases are written while the leader dies.
        let (a, b, ids) = loaded(
            &rt,
            dir.path(),
            &url,
            &cluster,
            "3",
            (40, 1.2, 3, 1),
            |a, b| a.executions().len() + b.executions().len() >= 6,
        );
        let leader = rt.block_on(async {
            for _ in 0..20 {
                if let Ok(Some(leader)) = cluster.stream_leader().await {
                    return leader;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            panic!("the stream has no leader");
        });
        let server = servers
            .servers
            .iter_mut()
            .find(|s| s.name == leader)
            .unwrap();
        let killed = Instant::now();
        server.kill();
        let twice = rt.block_on(check(&cluster, &ids, &[a.log.clone(), b.log.clone()], 1));
        let done = killed.elapsed();
        server.start().unwrap();
        let (ra, rb) = (a.stop(), b.stop());
        eprintln!(
            "run {run}: kill -9 of stream leader {leader}: {twice} task(s) ran again, all done {:.1} s after; fenced {} + {}",
            done.as_secs_f64(),
            ra.fenced,
            rb.fenced
        );
        assert_eq!(
            ra.succeeded + rb.succeeded,
            40,
            "one committed result per task: {ra:?} {rb:?}"
        );
    }
}

#[test]
fn a_rolling_restart_under_load_fails_no_task() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single(dir.path()).unwrap();
    let url = server.url();
    let cluster = rt.block_on(client(&url, 1));
    // One attempt each: a task the restart cost an attempt would fail.
    let (a, b, ids) = loaded(
        &rt,
        dir.path(),
        &url,
        &cluster,
        "1",
        (60, 0.2, 1, 1),
        |a, b| a.executions().len() + b.executions().len() >= 8,
    );
    // Each node in turn: SIGTERM (it finishes what it runs and leaves), then its
    // replacement joins, while the others carry the load.
    let logs = ["a", "b", "a2", "b2"].map(|n| dir.path().join(format!("{n}.log")));
    let ra = a.stop();
    let a2 = NodeProc::start(dir.path(), &url, "a2", "1");
    rt.block_on(wait_for_nodes(&cluster, 2));
    let rb = b.stop();
    let b2 = NodeProc::start(dir.path(), &url, "b2", "1");
    let twice = rt.block_on(check(&cluster, &ids, &logs, 0));
    assert_eq!(twice, 0);
    let (ra2, rb2) = (a2.stop(), b2.stop());
    let reports = [ra, rb, ra2, rb2];
    let succeeded: u64 = reports.iter().map(|r| r.succeeded).sum();
    assert_eq!(succeeded, 60, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|r| r.failed + r.dead_lettered + r.fenced == 0),
        "{reports:?}"
    );
    drop(server);
}

#[test]
fn a_node_answers_its_probes() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::single(dir.path()).unwrap();
    let url = server.url();
    let cluster = rt.block_on(client(&url, 1));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probes = format!("127.0.0.1:{port}");
    let a = NodeProc::start_with(dir.path(), &url, "a", "1", &["--probes", &probes]);
    rt.block_on(wait_for_nodes(&cluster, 1));
    // The node joins, then opens its probes: wait for them to listen.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the probes did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fetch(port, "/healthz"), (200, "ok".into()));
    assert_eq!(fetch(port, "/readyz").0, 200);
    let ids = submit(&url, dir.path(), 3, 0.0);
    rt.block_on(check(&cluster, &ids, std::slice::from_ref(&a.log), 0));
    let (code, metrics) = fetch(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("colony_cluster_attempts_total{outcome=\"succeeded\"} 3"),
        "{metrics}"
    );
    // Cut off from NATS, the node says it takes no work.
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = fetch(port, "/readyz");
        if code == 503 {
            assert!(body.contains("not connected to NATS"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {code} with NATS down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fetch(port, "/healthz").0, 200, "alive all the same");
    server.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetch(port, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz did not come back with NATS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.stop();
}

/// A `colony serve --nats` subprocess on a free loopback port. Killed when dropped.
struct ServeProc {
    child: Option<Child>,
    port: u16,
    name: String,
}

impl ServeProc {
    fn start(dir: &Path, url: &str, name: &str) -> ServeProc {
        Self::start_with(dir, url, name, &[])
    }

    /// [`ServeProc::start`] with `extra` flags.
    fn start_with(dir: &Path, url: &str, name: &str, extra: &[&str]) -> ServeProc {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stderr = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
        let child = Command::new(COLONY)
            .args(["serve", "--nats", url, "--replicas", "1", "--name", name])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--scaling-period", "200ms", "--scaling-lease", "2s"])
            .args(extra)
            .env_remove("COLONY_NATS")
            .env_remove("COLONY_CONFIG")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "serve {name} did not listen within 30 s: {}",
                std::fs::read_to_string(dir.join(format!("{name}.stderr"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ServeProc {
            child: Some(child),
            port,
            name: name.into(),
        }
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = fetch(self.port, "/v1/cluster");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn leads(&self) -> bool {
        self.status()["scaling"]["leading"] == true
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on loopback `port`, addressed to `localhost` as a server without tokens asks.
fn fetch(port: u16, path: &str) -> (u16, String) {
    send(port, "GET", path, &[], "")
}

/// `GET /v1/events` on loopback `port`, read as it comes; open once its headers came (the
/// server makes its watch before it listens).
struct EventStream {
    stream: std::net::TcpStream,
    seen: String,
}

impl EventStream {
    fn open(port: u16) -> Self {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut events = Self {
            stream,
            seen: String::new(),
        };
        events.read_until("the stream's headers", |seen| {
            seen.contains("text/event-stream")
        });
        events
    }

    /// Reads until `done` holds of all read so far, for 10 s at most.
    fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.seen) {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "{what}: {}", self.seen);
        }
    }
}

/// `/v1/history` of the server on loopback `port` once it counts the ends of tasks `ids` in
/// its seconds and in its count since, and lists their records (within 10 s).
fn history_listing(port: u16, ids: &[u64]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = fetch(port, "/v1/history");
        assert_eq!(code, 200, "{body}");
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        let counted: u64 = history["seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[1].as_u64().unwrap())
            .sum();
        let records = history["records"].as_array().unwrap();
        let listed = ids.iter().all(|&id| {
            records
                .iter()
                .any(|r| r["id"] == id && r["state"] == "succeeded")
        });
        if counted >= ids.len() as u64 && history["succeeded"] == counted && listed {
            return history;
        }
        assert!(Instant::now() < deadline, "{history}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Task `body` posted to `/v1/tasks` on loopback `port`, once it succeeded (within 30 s).
fn succeeded(port: u16, body: &str, what: &str) -> serde_json::Value {
    let (code, answer) = send(port, "POST", "/v1/tasks", &[], body);
    assert_eq!(code, 202, "{answer}");
    let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = fetch(port, &format!("/v1/tasks/{id}"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["state"] == "succeeded" {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not end: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `method path` with a JSON body on loopback `port`: the status code and the body.
fn send(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    write!(stream, "{head}\r\n{body}").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (code, body)
}

/// Two `colony serve --nats` over one node: tasks go in over HTTP (a retried request kept
/// once) and come back with their results; exactly one server leads the scaling and writes
/// each role's record; when it is killed the other leads within the lease and a second, and
/// the records carry its later term. Bad requests get a 4xx naming the problem.
#[test]
fn serve_over_the_cluster_takes_tasks_and_one_server_leads_the_scaling() {
    let OneNode {
        rt: _rt,
        dir,
        server: _server,
        url,
        cluster: _cluster,
        a,
    } = OneNode::start();
    let mut serves = vec![
        ServeProc::start(dir.path(), &url, "s1"),
        ServeProc::start(dir.path(), &url, "s2"),
    ];
    assert_eq!(fetch(serves[0].port, "/readyz").0, 200);
    // The event stream, open before any task: records come as nodes write them.
    // Two streams on one server share its watch; each gets every record.
    let mut streams = [
        EventStream::open(serves[1].port),
        EventStream::open(serves[1].port),
    ];
    // A task over HTTP, sent twice with one Idempotency-Key: one id, one execution.
    let task = r#"{"payload": {"n": 7, "sleep": 0}, "role": "sh"}"#;
    let key = ["Idempotency-Key: retry-me"];
    let (code, first) = send(serves[0].port, "POST", "/v1/tasks", &key, task);
    assert_eq!(code, 202, "{first}");
    let (code, again) = send(serves[1].port, "POST", "/v1/tasks", &key, task);
    assert_eq!(code, 202, "{again}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        (&first["duplicate"], &again["duplicate"]),
        (&false.into(), &true.into())
    );
    let id = first["id"].as_u64().unwrap();
    // A batch bundled in one message, each task its own id; sent again with its key (to
    // the other server), accepted once under the same ids.
    let batch = r#"{"tasks": [{"payload": {"n": 8, "sleep": 0}, "role": "sh"}, {"payload": {"n": 9, "sleep": 0}, "role": "sh"}], "bundle": 16}"#;
    let key = ["Idempotency-Key: bundled"];
    let (code, body) = send(serves[1].port, "POST", "/v1/tasks/batch", &key, batch);
    assert_eq!(code, 202, "{body}");
    let (code, again) = send(serves[0].port, "POST", "/v1/tasks/batch", &key, batch);
    assert_eq!(code, 202, "{again}");
    let ids: serde_json::Value = serde_json::from_str(&body).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (&ids["ids"], &ids["duplicates"], &again["duplicates"]),
        (&again["ids"], &0.into(), &2.into())
    );
    let bundled: Vec<(u64, Option<usize>)> = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| colony_cluster::bundle::message_of(v.as_u64().unwrap()))
        .collect();
    assert_eq!(
        (bundled[0].0, bundled[0].1, bundled[1].1),
        (bundled[1].0, Some(0), Some(1)),
        "one message: {ids}"
    );
    let (code, body) = send(
        serves[0].port,
        "POST",
        "/v1/tasks/batch",
        &[],
        r#"{"tasks": [{"payload": 1}], "bundle": 513}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("bundle: from 1 to 512"), "{body}");
    let mut all = vec![id];
    all.extend(
        ids["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, id) in [7, 8, 9].into_iter().zip(&all) {
        loop {
            let (code, body) = fetch(serves[0].port, &format!("/v1/tasks/{id}"));
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["state"] == "succeeded" {
                assert_eq!(v["output"], format!("task-{n}-done"), "{v}");
                break;
            }
            assert!(Instant::now() < deadline, "task {id} did not end: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(a.executions().iter().filter(|n| **n == 7).count(), 1);
    // Each task's end came on the stream, from node a (a task this short ends before its
    // node writes a lease, so its start has no record of its own).
    let told = |seen: &str, id: u64, state: &str| {
        seen.lines().any(|l| {
            l.starts_with("data:")
                && l.contains(&format!("\"id\":{id},"))
                && l.contains(&format!("\"state\":\"{state}\""))
                && l.contains("\"node\":\"a\"")
        })
    };
    for events in &mut streams {
        events.read_until("the records of every task", |seen| {
            all.iter().all(|&id| told(seen, id, "succeeded"))
        });
        assert!(events.seen.contains("event: task"), "{}", events.seen);
    }
    drop(streams);
    // Each server counted the ends since it started, for a dashboard opened later.
    for serve in &serves {
        history_listing(serve.port, &all);
    }
    // A server started after they ended reads them again: its history counts and lists
    // them; its event stream does not send them again, only what is written after.
    let late = ServeProc::start(dir.path(), &url, "s3");
    let mut events = EventStream::open(late.port);
    let history = history_listing(late.port, &all);
    // Read whole before the server listened.
    assert_eq!(history["complete"], true, "{history}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // From fifteen minutes before it started.
    assert!(
        history["since-ms"].as_u64().unwrap() + 14 * 60_000 < now_ms,
        "{history}"
    );
    let (code, body) = send(
        late.port,
        "POST",
        "/v1/tasks",
        &[],
        r#"{"payload": {"n": 12, "sleep": 0}, "role": "sh"}"#,
    );
    assert_eq!(code, 202, "{body}");
    let next: serde_json::Value = serde_json::from_str(&body).unwrap();
    let next = next["id"].as_u64().unwrap();
    events.read_until("the record of the task sent after", |seen| {
        told(seen, next, "succeeded")
    });
    assert!(
        !all.iter()
            .any(|id| events.seen.contains(&format!("\"id\":{id},"))),
        "{}",
        events.seen
    );
    drop((events, late));
    // The dashboard: the page, then its panels, with the node and the role in them.
    let (code, page) = fetch(serves[0].port, "/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("cluster on nats://"), "{page}");
    assert!(page.contains(r#"hx-get="/ui/cluster/nodes""#), "{page}");
    assert!(page.contains("/assets/cluster.js?v="), "{page}");
    let (code, nodes) = fetch(serves[0].port, "/ui/cluster/nodes");
    assert_eq!(code, 200, "{nodes}");
    assert!(nodes.contains("<td>a</td><td>sh (4 slots)</td>"), "{nodes}");
    assert!(nodes.contains("taking work"), "{nodes}");
    let (code, counters) = fetch(serves[0].port, "/ui/cluster");
    assert_eq!(code, 200, "{counters}");
    assert!(counters.contains(r#"id="stat-nodes">1<"#), "{counters}");
    let (code, roles) = fetch(serves[0].port, "/ui/cluster/roles");
    assert_eq!(code, 200, "{roles}");
    assert!(roles.contains("<td>sh</td>"), "{roles}");
    // The whole hierarchy: the cluster, its node, the node's tiers down to its 4 workers.
    let tree = Command::new(COLONY)
        .args(["cluster", "tree", "--nats", &url])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    assert!(
        shown.starts_with("cluster nats://") && shown.contains("1 node, 4 agents"),
        "{shown}"
    );
    assert!(
        shown.contains("└─ node a: 4 agents (taking work)"),
        "{shown}"
    );
    assert!(
        shown.trim_end().ends_with(": 4"),
        "the workers, last: {shown}"
    );
    let json = Command::new(COLONY)
        .args(["cluster", "tree", "--json", "--nats", &url])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["agents"], 4, "{json}");
    assert_eq!(
        json["nodes"][0]["tiers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["agents"],
        4
    );
    assert!(
        nodes.contains("4 worker</td>") || nodes.contains("4 worker ·"),
        "the hierarchy column, its 4 workers: {nodes}"
    );
    // Every agent: the node answers for its own, a page at a time, on the command line and
    // over HTTP.
    let listed = Command::new(COLONY)
        .args([
            "cluster", "agents", "--nats", &url, "--tier", "worker", "--limit", "3",
        ])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let rows: Vec<&str> = shown.lines().filter(|l| l.starts_with("a ")).collect();
    assert_eq!(rows.len(), 3, "{shown}");
    assert!(rows.iter().all(|r| r.contains("worker")), "{shown}");
    assert!(
        shown.contains("node a: more after agent") && shown.contains("--node a --after"),
        "{shown}"
    );
    let nobody = Command::new(COLONY)
        .args(["cluster", "agents", "--nats", &url, "--node", "z"])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&nobody.stderr)
            .contains("no live node is named `z`: the live ones are a"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    let (code, body) = fetch(serves[0].port, "/v1/agents?tier=worker&limit=1000");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["nodes"][0]["node"], "a", "{answer}");
    assert_eq!(
        answer["nodes"][0]["agents"].as_array().unwrap().len(),
        4,
        "{answer}"
    );
    assert_eq!(fetch(serves[0].port, "/v1/agents?after=3").0, 400);
    assert_eq!(fetch(serves[0].port, "/v1/agents?node=z").0, 404);
    let (code, bad) = fetch(serves[0].port, "/v1/agents?limit=0");
    assert_eq!(code, 400);
    assert!(bad.contains("limit 0 is out of range"), "{bad}");
    let (code, bad) = fetch(serves[0].port, "/v1/agents?node=a&tier=general");
    assert_eq!(code, 502, "the one node asked refused: {bad}");
    assert!(
        bad.contains("node-failed") && bad.contains("is not in this hierarchy"),
        "{bad}"
    );
    let (code, script) = fetch(serves[0].port, "/assets/cluster.js");
    assert_eq!(code, 200);
    assert!(script.contains("EventSource(\"/v1/events\")"), "{script}");
    // Exactly one server leads the scaling, and its records say so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let leading: Vec<usize> = (0..2).filter(|&i| serves[i].leads()).collect();
        if leading.len() == 1 {
            break leading[0];
        }
        assert!(leading.len() < 2, "two servers lead the scaling");
        assert!(Instant::now() < deadline, "no server leads the scaling");
        std::thread::sleep(Duration::from_millis(50));
    };
    let holder = serves[leader].status()["scaling"]["this-server"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = |port: u16, role: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = fetch(port, &format!("/v1/scaling/{role}"));
            if code == 200 {
                return serde_json::from_str(&body).unwrap();
            }
            assert_eq!(code, 404, "{body}");
            assert!(
                Instant::now() < deadline,
                "no scaling record of {role}: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let sh = record(serves[1 - leader].port, "sh");
    assert_eq!(sh["leader"], holder.as_str(), "{sh}");
    assert_eq!(
        (sh["nodes"].as_u64(), sh["slots"].as_u64()),
        (Some(1), Some(4)),
        "{sh}"
    );
    assert!(sh["desired"].as_u64().unwrap() >= 1, "{sh}");
    let term = sh["term"].as_u64().unwrap();
    let (_, metrics) = fetch(serves[leader].port, "/metrics");
    assert!(metrics.contains("colony_cluster_nodes 1\n"), "{metrics}");
    assert!(
        metrics.contains("colony_cluster_scaling_leader 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("colony_cluster_node_agents{node=\"a\"} 4\n"),
        "{metrics}"
    );
    let (_, metrics) = fetch(serves[1 - leader].port, "/metrics");
    assert!(
        metrics.contains("colony_cluster_scaling_leader 0\n"),
        "{metrics}"
    );
    // The leader dies: the other leads within the lease (2 s) and a second.
    let killed = Instant::now();
    serves[leader].kill();
    let standby = &serves[1 - leader];
    while !standby.leads() {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "{} did not take over within 3 s",
            standby.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "scaling leader killed: {} led after {:?}",
        standby.name,
        killed.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sh = record(standby.port, "sh");
        if sh["term"].as_u64().unwrap() > term {
            assert_ne!(sh["leader"], holder.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record kept term {term}: {sh}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bad requests are named.
    let port = standby.port;
    let (code, body) = send(
        port,
        "POST",
        "/v1/tasks",
        &[],
        r#"{"payload": 1, "role": "a.b"}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("role `a.b`"), "{body}");
    let weighed =
        r#"{"payload": 1, "decide": {"voters": 3, "protocol": "weighted", "weights": [2]}}"#;
    let (code, body) = send(port, "POST", "/v1/tasks", &[], weighed);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("decide.weights weighs pools by index"),
        "{body}"
    );
    let reputed = r#"{"payload": 1, "decide": {"voters": 3, "reputation": true}}"#;
    let (code, body) = send(port, "POST", "/v1/tasks", &[], reputed);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("weighted and confidence protocols"), "{body}");
    // Weights by role cross the cluster: refused when a role cannot be one, else decided.
    let bad_role = r#"{"payload": 1, "decide": {"voters": 3, "protocol": "weighted", "role-weights": {"a.b": 2}}}"#;
    let (code, body) = send(port, "POST", "/v1/tasks", &[], bad_role);
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("a weight's") && body.contains("a.b"),
        "{body}"
    );
    let by_role = r#"{"payload": {"n": 11, "sleep": 0}, "role": "sh", "decide": {"voters": 3, "protocol": "weighted", "role-weights": {"sh": 2}}}"#;
    let v = succeeded(port, by_role, "the weighed vote");
    assert_eq!(v["output"], "task-11-done", "{v}");
    assert_eq!(v["decision"]["protocol"], "weighted", "{v}");
    // Spread over the cluster: each ballot a cluster task (here all on node a, of which
    // three distinct agents vote); what it cannot count refused.
    let spread = r#"{"payload": {"n": 13, "sleep": 0}, "role": "sh", "decide": {"voters": 3, "participation": 1.0, "spread": true}}"#;
    let v = succeeded(port, spread, "the spread vote");
    assert_eq!(v["output"], "task-13-done", "{v}");
    assert_eq!(
        (&v["decision"]["counted"], &v["decision"]["nodes"]),
        (&3.into(), &1.into()),
        "{v}"
    );
    assert_eq!(a.executions().iter().filter(|n| **n == 13).count(), 3);
    // Weighed by role and reputation: each ballot's record says who voted.
    let weighed = r#"{"payload": {"n": 14, "sleep": 0}, "role": "sh", "decide": {"voters": 3, "participation": 1.0, "protocol": "weighted", "role-weights": {"sh": 2}, "reputation": true, "spread": true}}"#;
    let v = succeeded(port, weighed, "the weighed spread vote");
    assert_eq!(v["output"], "task-14-done", "{v}");
    assert_eq!(v["decision"]["counted"], 3, "{v}");
    let crowd = r#"{"payload": 1, "decide": {"voters": 1001, "spread": true}}"#;
    let (code, body) = send(port, "POST", "/v1/tasks", &[], crowd);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("at most 1000 voters"), "{body}");
    let (code, body) = send(
        port,
        "POST",
        "/v1/tasks/batch",
        &[],
        r#"{"tasks": [{"payload": 1, "decide": {"voters": 3}}]}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("task 0: a batch carries no votes"), "{body}");
    // A task decided by vote: node a seats three of its agents, each runs the command,
    // and the decided output is committed once, with how the decision went.
    let vote = r#"{"payload": {"n": 10, "sleep": 0}, "role": "sh", "decide": {"voters": 3}}"#;
    let decided = succeeded(port, vote, "the vote");
    assert_eq!(decided["output"], "task-10-done", "{decided}");
    assert_eq!(decided["node"], "a", "{decided}");
    let how = &decided["decision"];
    assert_eq!(
        (&how["protocol"], &how["voters"], &how["dissenters"]),
        (&"majority".into(), &3.into(), &0.into()),
        "{decided}"
    );
    // The majority (two of three) decides; the third ballot may have run by then.
    let ballots = a.executions().iter().filter(|n| **n == 10).count();
    assert!((2..=3).contains(&ballots), "{ballots} ballots ran");
    let (code, body) = fetch(port, "/v1/tasks/abc");
    assert_eq!(code, 400, "{body}");
    let (code, body) = fetch(port, "/v1/tasks/999999");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown"), "{body}");
    // Cancelling: a task no node serves is cancelled and gone; again, it has ended; the
    // command line says the same.
    let (code, body) = send(
        port,
        "POST",
        "/v1/tasks",
        &[],
        r#"{"payload": 1, "role": "nobody"}"#,
    );
    assert_eq!(code, 202, "{body}");
    let parked: serde_json::Value = serde_json::from_str(&body).unwrap();
    let parked = parked["id"].as_u64().unwrap();
    let (code, body) = send(port, "POST", &format!("/v1/tasks/{parked}/cancel"), &[], "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""outcome":"cancelled""#), "{body}");
    let (code, body) = fetch(port, &format!("/v1/tasks/{parked}"));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(r#""state":"cancelled""#) && body.contains("cancelled through the API"),
        "{body}"
    );
    let (code, body) = send(port, "POST", &format!("/v1/tasks/{parked}/cancel"), &[], "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already-ended"), "{body}");
    let (code, body) = send(port, "POST", "/v1/tasks/x/cancel", &[], "");
    assert_eq!(code, 400, "{body}");
    let cancel = Command::new(COLONY)
        .args(["cluster", "cancel", "--nats", &url, &parked.to_string()])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cancel.stdout);
    assert_eq!(cancel.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("task {parked}: had ended already (cancelled)")),
        "{said}"
    );
    let (code, body) = fetch(port, "/v1/runs");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, r#"{"runs":[]}"#, "no run kept by a run id here");
    let (code, body) = fetch(port, "/v1/scaling/no-such-role");
    assert_eq!(code, 404, "{body}");
    let (code, body) = fetch(port, "/v1/scaling/a.b");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad-role") && body.contains("a.b"), "{body}");
    // The roles' samples are the cluster's: a server started now answers those sampled
    // before it (by the server that died too), under the same times; a bad cursor is named.
    let times = |h: &serde_json::Value| -> Vec<u64> {
        h["t"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (until, kept) = loop {
        let (code, body) = fetch(port, "/v1/roles/history");
        assert_eq!(code, 200, "{body}");
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        let kept = times(&history);
        if kept.len() >= 2 {
            break (history["until"].as_u64().unwrap(), kept);
        }
        assert!(Instant::now() < deadline, "two samples within 10 s: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(until, *kept.last().unwrap());
    assert!(
        kept.iter().all(|t| t % 2_000 == 0),
        "slots of 2 s: {kept:?}"
    );
    let late = ServeProc::start(dir.path(), &url, "late");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = fetch(late.port, "/v1/roles/history");
        assert_eq!(code, 200, "{body}");
        let answered = times(&serde_json::from_str(&body).unwrap());
        if answered.len() >= kept.len() {
            assert_eq!(answered[..kept.len()], kept[..], "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late server answered {answered:?}, not the {kept:?} before it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(late);
    let (code, body) = fetch(port, &format!("/v1/roles/history?since={until}"));
    assert_eq!(code, 200, "{body}");
    let (code, body) = fetch(port, "/v1/roles/history?since=yesterday");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad-query"), "{body}");
    // `colony top` pointed at the cluster's server shows the cluster: its nodes and roles.
    let top = Command::new(COLONY)
        .args([
            "top",
            "--once",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env_remove("COLONY_SERVER")
        .env_remove("COLONY_TOKEN")
        .output()
        .unwrap();
    let frame = String::from_utf8_lossy(&top.stdout);
    assert_eq!(
        top.status.code(),
        Some(0),
        "{frame}{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(
        frame.contains("cluster at") && frame.contains(" Nodes ") && frame.contains(" Roles"),
        "{frame}"
    );
    assert!(
        frame
            .lines()
            .any(|l| l.starts_with("│ a ") && l.contains(" sh ") && l.contains("taking work")),
        "node a's row: {frame}"
    );
    assert!(frame.contains("│ sh  agents 4"), "role sh's line: {frame}");
    let (code, body) = send(port, "POST", "/v1/tasks", &[], "[1]");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("bad-body"), "{body}");
    a.stop();
    drop(serves);
}

/// Two `colony serve --nats` given one memory in NATS serve it as one: a document posted to
/// one is read, found and deleted through the other at once, and `colony memory` on the
/// same location sees what they stored and stores what they see. A memory file is refused
/// with --nats, and nothing is made.
#[test]
fn servers_of_the_cluster_share_one_memory_in_nats() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single(dir.path()).unwrap();
    let url = server.url();
    let memory = format!("{url}/shared?replicas=1");
    let serves = [
        ServeProc::start_with(dir.path(), &url, "m1", &["--memory", &memory]),
        ServeProc::start_with(dir.path(), &url, "m2", &["--memory", &memory]),
    ];
    let doc = r#"{"namespace": "team/a", "documents": [{"id": "d1", "text": "the migration failed at step three"}]}"#;
    let (code, body) = send(serves[0].port, "POST", "/v1/memory/documents", &[], doc);
    assert_eq!((code, body.as_str()), (200, r#"{"stored":1}"#));
    let (code, body) = fetch(
        serves[1].port,
        "/v1/memory/documents?namespace=team/a&id=d1",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("step three"), "{body}");
    let search = r#"{"namespace": "team/a", "query": {"text": "migration", "k": 3}}"#;
    let (code, body) = send(serves[1].port, "POST", "/v1/memory/search", &[], search);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""id":"d1""#), "{body}");
    let colony = |args: &[&str]| {
        let out = Command::new(COLONY)
            .args(["memory"])
            .args(args)
            .args(["--db", &memory, "-n", "team/a"])
            .env_remove("COLONY_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "colony memory {args:?}: {text}");
        text
    };
    assert!(colony(&["search", "--text", "migration"]).contains("d1"));
    colony(&["put", "d2", "the cache was warmed before the release"]);
    let (code, body) = fetch(serves[0].port, "/v1/memory");
    assert_eq!(code, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["namespaces"][0]["name"], "team/a", "{body}");
    assert_eq!(listed["namespaces"][0]["documents"], 2, "{body}");
    // Its counters are in the server's metrics, beside the cluster's.
    let (code, metrics) = fetch(serves[1].port, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("colony_cluster_nodes")
            && metrics.contains("colony_memory_searches_total"),
        "{metrics}"
    );
    // The dashboard's memory panel shows it on either server.
    let (code, panel) = fetch(serves[1].port, "/ui/memory");
    assert_eq!(code, 200, "{panel}");
    assert!(
        panel.contains("team/a") && panel.contains("memory-table"),
        "{panel}"
    );
    let delete = r#"{"namespace": "team/a", "ids": ["d1", "d9"]}"#;
    let (code, body) = send(serves[1].port, "POST", "/v1/memory/delete", &[], delete);
    assert_eq!((code, body.as_str()), (200, r#"{"deleted":1}"#));
    let (code, _) = fetch(
        serves[0].port,
        "/v1/memory/documents?namespace=team/a&id=d1",
    );
    assert_eq!(code, 404);
    assert!(!colony(&["search", "--text", "migration"]).contains("d1"));
    // Compacted under both servers: they go on serving it, and a process opening it now
    // restores the snapshot.
    let out = Command::new(COLONY)
        .args(["memory", "compact", "--db", &memory])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("compacted the memory shared"), "{said}");
    let (code, body) = fetch(
        serves[1].port,
        "/v1/memory/documents?namespace=team/a&id=d2",
    );
    assert_eq!(code, 200, "{body}");
    assert!(colony(&["get", "d2"]).contains("the cache was warmed"));
    let out = Command::new(COLONY)
        .args(["memory", "compact", "--db", "m.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A memory file would be one machine's: refused with --nats before anything starts.
    let out = Command::new(COLONY)
        .args(["serve", "--nats", &url, "--memory", "m.db"])
        .current_dir(dir.path())
        .env_remove("COLONY_NATS")
        .env_remove("COLONY_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("this machine's"), "{err}");
    assert!(!dir.path().join("m.db").exists());
    // A memory in NATS is one stream, never spread.
    let out = Command::new(COLONY)
        .args(["memory", "stats", "--db", &memory, "--shards", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not spread over 2"), "{err}");
    // Nor has it an index of its own for `rebuild` to check.
    let out = Command::new(COLONY)
        .args(["memory", "rebuild", "--db", &memory, "-n", "team/a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("keeps no index of its own"), "{err}");
}

/// `colony serve --nats` runs no runtime: a runtime's settings, given as flags or read from
/// the settings file, are refused before anything starts, naming where they came from. A
/// node asked to keep its pod's deletion cost outside a pod is refused too.
#[test]
fn what_the_cluster_commands_cannot_use_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(COLONY)
            .args(args)
            .current_dir(dir.path())
            .env_remove("COLONY_NATS")
            .env_remove("COLONY_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["serve", "--nats", "nats://127.0.0.1:1", "--db", "x.db"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--db") && err.contains("--nats"), "{err}");
    let (code, err) = run(&["serve", "--scaling-max", "9"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--nats"), "{err}");
    std::fs::write(dir.path().join("colony.toml"), "[server]\ndb = \"x.db\"\n").unwrap();
    let (code, err) = run(&["serve", "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("colony.toml") && err.contains("`db`"), "{err}");
    assert!(!dir.path().join("x.db").exists());
    std::fs::remove_file(dir.path().join("colony.toml")).unwrap();
    // Bundles are for a file's tasks, of 1 to 512 a message.
    let nats = ["cluster", "submit", "--nats", "nats://127.0.0.1:1"];
    let (code, err) = run(&[&nats[..], &["--bundle", "8", "{}"]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--file"), "{err}");
    let (code, err) = run(&[&nats[..], &["--bundle", "513", "--file", "t.jsonl"]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("513"), "{err}");
    let (code, err) = run(&[
        "bench",
        "cluster",
        "--nats",
        "nats://127.0.0.1:1",
        "--bundle",
        "8",
        "--voters",
        "3",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a vote goes alone"), "{err}");
    // A run id or lease `colony run --nats` cannot use: refused at once, no server needed.
    let flow = dir.path().join("flow.yaml");
    std::fs::write(
        &flow,
        "name: f\nagents: [{name: sh, kind: sim}]\ntasks:\n  - { id: a, agent: sh }\n",
    )
    .unwrap();
    let flow = flow.to_str().unwrap();
    let unreachable = "nats://127.0.0.1:1";
    for (args, says) in [
        (vec!["--run-id", "../etc"], "run id `../etc`"),
        (vec!["--run-id", &"x".repeat(61)], "at most 60 characters"),
        (
            vec!["--run-id", "r", "--lease", "1500ms"],
            "whole seconds from 2s",
        ),
        (vec!["--run-id", "r", "--lease", "5m"], "at most 30s"),
    ] {
        let mut all = vec!["run", "--nats", unreachable];
        all.extend(args);
        all.push(flow);
        let (code, err) = run(&all);
        assert_eq!(code, Some(2), "{all:?}: {err}");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let out = Command::new(COLONY)
        .args([
            "node",
            "--nats",
            "nats://127.0.0.1:1",
            "--pod-deletion-cost",
        ])
        .current_dir(dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("COLONY_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("KUBERNETES_SERVICE_HOST") && err.contains("Kubernetes pod only"),
        "{err}"
    );
}

/// One request the fake Kubernetes API server saw: method, path, authorization,
/// content type, body.
type Seen = (String, String, String, String, String);

/// A Kubernetes API server on loopback, over TLS with its own certificate, that answers
/// every request 200 and keeps what it saw.
fn fake_api(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use std::io::{BufRead, Write};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap(),
    );
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let kept = seen.clone();
    colony_agents::spawner::Spawner::spawn_thread("fake-kubernetes", move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut stream = std::io::BufReader::new(rustls::StreamOwned::new(conn, tcp));
            // Requests on one kept-alive connection, until it closes.
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let (mut length, mut auth, mut kind) = (0usize, String::new(), String::new());
                loop {
                    let mut header = String::new();
                    if stream.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap_or_default();
                    let value = value.trim().to_owned();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.parse().unwrap_or(0),
                        "authorization" => auth = value,
                        "content-type" => kind = value,
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                if std::io::Read::read_exact(&mut stream, &mut body).is_err() {
                    break;
                }
                kept.lock().unwrap().push((
                    method,
                    path,
                    auth,
                    kind,
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if stream.get_mut().write_all(answer.as_bytes()).is_err() {
                    break;
                }
                let _ = stream.get_mut().flush();
            }
        }
    })
    .unwrap();
    (port, seen)
}

/// In a pod, a node keeps its pod's deletion cost at the attempts it runs: 0 idle, 4 while
/// its four agents are busy, 0 again after; each write a merge patch of the pod by its
/// service account's token, checked against the service account's CA.
#[test]
fn a_node_in_a_pod_keeps_its_deletion_cost_at_its_running_attempts() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single(dir.path()).unwrap();
    let url = server.url();
    let cluster = rt.block_on(client(&url, 1));
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (port, seen) = fake_api(&cert);
    let account = dir.path().join("serviceaccount");
    std::fs::create_dir(&account).unwrap();
    std::fs::write(account.join("token"), "test-token\n").unwrap();
    std::fs::write(account.join("ca.crt"), cert.cert.pem()).unwrap();
    std::fs::write(account.join("namespace"), "swarm").unwrap();
    let env = [
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("POD_NAME", "colony-node-7f9c".to_owned()),
        ("COLONY_SERVICE_ACCOUNT", account.display().to_string()),
    ];
    let a = NodeProc::start_env(dir.path(), &url, "a", "1", &["--pod-deletion-cost"], &env);
    rt.block_on(wait_for_nodes(&cluster, 1));
    let costs = || -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(method, path, auth, kind, body)| {
                assert_eq!(method, "PATCH");
                assert_eq!(path, "/api/v1/namespaces/swarm/pods/colony-node-7f9c");
                assert_eq!(auth, "Bearer test-token");
                assert_eq!(kind, "application/merge-patch+json");
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                v["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let wait_for = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while costs() != want {
            assert!(
                Instant::now() < deadline,
                "costs written {:?}, waiting for {want:?}",
                costs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&["0"]);
    let ids = submit(&url, dir.path(), 4, 7.0);
    wait_for(&["0", "4"]);
    rt.block_on(check(&cluster, &ids, std::slice::from_ref(&a.log), 0));
    wait_for(&["0", "4", "0"]);
    a.stop();
}

/// `colony run --nats`: this process schedules a workflow's graph, the cluster's node runs
/// its tasks by role. Outputs flow to dependents; an output that fails its `expect` is sent
/// to the cluster again while attempts remain, then fails, and its dependent is skipped; every
/// result is in its file and the summary. A workflow that needs one runtime is refused
/// before anything runs.
#[test]
fn a_workflow_runs_across_the_cluster() {
    let OneNode {
        rt: _rt,
        dir,
        server: _server,
        url,
        cluster: _cluster,
        a,
    } = OneNode::start();
    let workflow = dir.path().join("flow.yaml");
    std::fs::write(
        &workflow,
        r#"name: across
agents:
  - name: sh          # the nodes host it; here it only names the role (one agent here,
    kind: sim         # three voters there: a node's own agents vote)
tasks:
  - id: first
    agent: sh
    input: { n: 1, sleep: 0 }
  - id: second
    agent: sh
    needs: [first]
    input: { n: "{{outputs.first}}-then", sleep: 0 }
  - id: picky
    agent: sh
    needs: [first]
    retries: 1
    input: { n: 3, sleep: 0 }
    expect: { contains: "never" }
  - id: after-picky
    agent: sh
    needs: [picky]
    input: { n: 4, sleep: 0 }
  - id: checked
    agent: sh
    input: { n: 5, sleep: 0 }
    expect: { regex: "^task-5-done$" }
  - id: voted
    agent: sh
    input: { n: 6, sleep: 0 }
    decide: { voters: 3 }
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(COLONY)
        .args(["run", "--nats", &url, "--json", "--out"])
        .arg(&out)
        .arg(&workflow)
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let task = |id: &str| -> serde_json::Value {
        report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(task("first")["status"], "succeeded", "{report}");
    assert_eq!(task("first")["output"], "task-1-done");
    assert_eq!(task("first")["node"], "a");
    assert_eq!(
        task("second")["output"],
        "task-task-1-done-then-done",
        "{report}"
    );
    let picky = task("picky");
    assert_eq!(picky["status"], "failed", "{picky}");
    assert_eq!(picky["attempts"], 2, "{picky}");
    assert!(
        picky["error"]
            .as_str()
            .unwrap()
            .contains("does not contain"),
        "{picky}"
    );
    assert_eq!(task("after-picky")["status"], "skipped");
    assert_eq!(task("checked")["status"], "succeeded", "{report}");
    // Decided by three of the node's agents: the command's output, and how it went.
    let voted = task("voted");
    assert_eq!(voted["status"], "succeeded", "{voted}");
    assert_eq!(voted["output"], "task-6-done", "{voted}");
    assert_eq!(voted["cluster_decision"]["voters"], 3, "{voted}");
    assert_eq!(
        (&report["succeeded"], &report["failed"], &report["skipped"]),
        (&4.into(), &1.into(), &1.into())
    );
    // Each ran on the node, `picky` once per attempt, `after-picky` never.
    let runs = a.executions();
    let ballots = runs.iter().filter(|r| **r == 6).count();
    assert!(
        (2..=3).contains(&ballots),
        "{ballots} ballots of `voted` ran"
    );
    for (n, times) in [(1, 1), (3, 2), (4, 0), (5, 1)] {
        assert_eq!(
            runs.iter().filter(|r| **r == n).count(),
            times,
            "task {n}: {runs:?}"
        );
    }
    for file in [
        "first.json",
        "second.json",
        "picky.json",
        "summary.json",
        "run.log",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    // What needs one runtime is refused, each problem named, before anything runs.
    let refused = dir.path().join("vote.yaml");
    std::fs::write(
        &refused,
        "name: vote\nagents:\n  - { name: sh-a, kind: sim, role: sh }\n  - { name: sh-b, kind: sim, role: sh }\ntasks:\n  - id: v\n    role: sh\n    decide: { voters: 3, protocol: weighted, weights: { sh-a: 2 } }\n",
    )
    .unwrap();
    let run = Command::new(COLONY)
        .args(["run", "--nats", &url])
        .arg(&refused)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("task `v`: `decide` weighs pools of role `sh` both 2 and 1"),
        "{stderr}"
    );
    a.stop();
}

/// `colony run --nats --run-id RUN --lease 2s --json` of `workflow`, its results in
/// `NAME-out` and its stderr in `NAME.run.stderr` under `dir`.
fn scheduler(dir: &Path, url: &str, workflow: &Path, run: &str, name: &str) -> Child {
    let stderr = std::fs::File::create(dir.join(format!("{name}.run.stderr"))).unwrap();
    Command::new(COLONY)
        .args([
            "run", "--nats", url, "--run-id", run, "--lease", "2s", "--json",
        ])
        .arg("--out")
        .arg(dir.join(format!("{name}-out")))
        .arg(workflow)
        .env_remove("COLONY_NATS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// What scheduler `name` (see [`scheduler`]) wrote on stderr so far.
fn stderr_of(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.run.stderr"))).unwrap()
}

/// Waits up to 30 s for `done`, naming `what` and node `a`'s executions if it does not come.
fn until(what: &str, done: &dyn Fn() -> bool, a: &NodeProc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: {:?}", a.executions());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `colony run --nats --run-id`: of two processes with one run id, one schedules and the
/// other stands by. The scheduler is killed (`kill -9`) while a task runs; the standby takes
/// the run over within the lease and a second, waits for the task that was sent rather than
/// sending it again, and finishes the run: every task ran once. The same command run again
/// says the run is done and runs nothing; another workflow file under the same id is refused.
#[test]
fn a_standby_takes_a_run_over_and_no_task_runs_twice() {
    let OneNode {
        rt,
        dir,
        server: _server,
        url,
        cluster,
        a,
    } = OneNode::start();
    let workflow = dir.path().join("flow.yaml");
    std::fs::write(
        &workflow,
        r#"name: handed-over
agents:
  - name: sh
    kind: sim
tasks:
  - { id: first, agent: sh, input: { n: 1, sleep: 0 } }
  - { id: long, agent: sh, needs: [first], input: { n: 2, sleep: 3 } }
  - { id: last, agent: sh, needs: [long], input: { n: 3, sleep: 0 } }
  - { id: aside, agent: sh, input: { n: 4, sleep: 0 } }
"#,
    )
    .unwrap();
    let scheduler = |name: &str| scheduler(dir.path(), &url, &workflow, "r1", name);
    let stderr_of = |name: &str| stderr_of(dir.path(), name);
    let until = |what: &str, done: &dyn Fn() -> bool| until(what, done, &a);
    let mut first = scheduler("first");
    until("the first scheduler runs a task", &|| {
        a.executions().contains(&1)
    });
    let standby = scheduler("standby");
    until("the standby stands by", &|| {
        stderr_of("standby").contains("standing by")
    });
    until("the long task runs", &|| a.executions().contains(&2));
    first.kill().unwrap();
    let killed = Instant::now();
    first.wait().unwrap();
    until("the standby takes the run over", &|| {
        stderr_of("standby").contains("taking it over")
    });
    let takeover = killed.elapsed();
    eprintln!("a run taken over {takeover:?} after its scheduler died (lease 2s)");
    assert!(takeover <= Duration::from_secs(3), "{takeover:?}");
    let out = standby.wait_with_output().unwrap();
    let stderr = stderr_of("standby");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["succeeded"], 4, "{report}");
    let runs = a.executions();
    for n in 1..=4 {
        assert_eq!(
            runs.iter().filter(|r| **r == n).count(),
            1,
            "task {n} ran once: {runs:?}"
        );
    }
    let task = |id: &str| -> serde_json::Value {
        report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(task("long")["output"], "task-2-done", "{report}");
    assert_eq!(task("last")["output"], "task-3-done", "{report}");
    // The run is done: run again, it says so and sends nothing.
    let again = scheduler("again").wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{}", stderr_of("again"));
    assert!(
        said.contains("run r1 of handed-over was finished by"),
        "{said}"
    );
    assert_eq!(a.executions().len(), 4);
    // The book holds what was sent: a cluster task per workflow task, and the run done.
    let book = rt.block_on(cluster.run_book("r1")).unwrap();
    let sent = rt.block_on(book.sent()).unwrap();
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(
        sent.values().all(|(s, _)| s.round == 0 && s.spent == 0),
        "{sent:?}"
    );
    let (meta, _) = rt.block_on(book.meta()).unwrap().unwrap();
    assert!(meta.done && meta.code == Some(0), "{meta:?}");
    assert_eq!(meta.counts.get("succeeded"), Some(&4));
    // A run whose book holds a task sent already waits for that task instead of sending it
    // (outside the stream's dedupe window, the book is all that keeps it from running twice):
    // run r2's book is given r1's `first`.
    let r2 = rt.block_on(cluster.run_book("r2")).unwrap();
    let first_sent = sent[&0].0;
    rt.block_on(r2.put_sent(0, &first_sent, None)).unwrap();
    let resumed = Command::new(COLONY)
        .args([
            "run", "--nats", &url, "--run-id", "r2", "--lease", "2s", "--json",
        ])
        .arg("--out")
        .arg(dir.path().join("r2-out"))
        .arg(&workflow)
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(report["succeeded"], 4, "{report}");
    let runs = a.executions();
    assert_eq!(runs.iter().filter(|r| **r == 1).count(), 1, "{runs:?}");
    assert_eq!(
        runs.len(),
        7,
        "the other three ran again under r2: {runs:?}"
    );
    // A task that waited for a message and went is not made to wait again when its run is
    // taken over: run r4's book holds `listen` sent (given r1's `first`), and nothing is
    // published on its topic now. A publisher the book holds (`say`, given the same task) is
    // waited for and publishes its output again: `hear` gets it and runs.
    let talk = dir.path().join("talk.yaml");
    std::fs::write(
        &talk,
        r#"name: talk
agents:
  - name: sh
    kind: sim
tasks:
  - { id: listen, agent: sh, input: { n: 1, sleep: 0 }, wait: { topic: gone, timeout: 1s } }
  - { id: hear, agent: sh, input: { n: 6, sleep: 0 }, wait: { topic: said, timeout: 30s } }
  - { id: say, agent: sh, input: { n: 5, sleep: 0 }, publish: said }
"#,
    )
    .unwrap();
    let r4 = rt.block_on(cluster.run_book("r4")).unwrap();
    rt.block_on(r4.put_sent(0, &first_sent, None)).unwrap();
    rt.block_on(r4.put_sent(2, &first_sent, None)).unwrap();
    let resumed = Command::new(COLONY)
        .args([
            "run", "--nats", &url, "--run-id", "r4", "--lease", "2s", "--json",
        ])
        .arg("--out")
        .arg(dir.path().join("r4-out"))
        .arg(&talk)
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(report["succeeded"], 3, "{report}");
    let runs = a.executions();
    assert_eq!(runs.len(), 8, "only `hear` ran: {runs:?}");
    assert_eq!(runs.last(), Some(&6), "{runs:?}");
    // A lease past what the stream's dedupe window covers is refused before anything runs.
    let long = Command::new(COLONY)
        .args(["run", "--nats", &url, "--run-id", "r3", "--lease", "5m"])
        .arg(&workflow)
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&long.stderr);
    assert_eq!(long.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--lease 5m: at most 30s"), "{stderr}");
    // The runs kept in the cluster: r4 the most recent, r1 done and succeeded.
    let listed = Command::new(COLONY)
        .args(["cluster", "runs", "--json", "--nats", &url])
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r4", "r2", "r1"], "{listed}");
    assert_eq!(listed[2]["done"], true);
    assert_eq!(listed[2]["code"], 0);
    assert_eq!(listed[2]["counts"]["succeeded"], 4);
    assert_eq!(listed[2]["workflow"], "handed-over");
    // Another file under the same id is refused.
    std::fs::write(&workflow, "name: other\nagents: [{name: sh, kind: sim}]\ntasks:\n  - { id: x, agent: sh, input: { n: 9, sleep: 0 } }\n").unwrap();
    let other = scheduler("other").wait_with_output().unwrap();
    let stderr = stderr_of("other");
    assert_eq!(other.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another workflow file"), "{stderr}");
    assert_eq!(a.executions().len(), 8);
    a.stop();
}

/// `colony cluster cancel --run ID` and `POST /v1/runs/{id}/cancel`: a run kept by its id is
/// cancelled for good. Its scheduler stops and says so, its standby and a rerun send nothing
/// and say the run was cancelled, the task that was running is stopped on its node and its
/// dependent never runs; cancelled again, the run is done already; an unknown run is refused.
#[test]
fn a_run_cancelled_for_good_stops_its_scheduler_its_standby_and_its_tasks() {
    let OneNode {
        rt,
        dir,
        server: _server,
        url,
        cluster,
        a,
    } = OneNode::start();
    let workflow = dir.path().join("long.yaml");
    std::fs::write(
        &workflow,
        r#"name: long
agents:
  - name: sh
    kind: sim
tasks:
  - { id: first, agent: sh, input: { n: 1, sleep: 0 } }
  - { id: slow, agent: sh, needs: [first], input: { n: 2, sleep: 60 } }
  - { id: last, agent: sh, needs: [slow], input: { n: 3, sleep: 0 } }
"#,
    )
    .unwrap();
    let scheduler = |run: &str, name: &str| scheduler(dir.path(), &url, &workflow, run, name);
    let stderr_of = |name: &str| stderr_of(dir.path(), name);
    let until = |what: &str, done: &dyn Fn() -> bool| until(what, done, &a);
    // Within 15 s, with its code and what it printed.
    let ended = |mut child: Child| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a scheduler did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let cancel = |run: &str| {
        Command::new(COLONY)
            .args(["cluster", "cancel", "--nats", &url, "--run", run])
            .env_remove("COLONY_NATS")
            .output()
            .unwrap()
    };
    let scheduling = scheduler("c1", "first");
    until("the slow task runs", &|| a.executions().contains(&2));
    let standby = scheduler("c1", "standby");
    until("the standby stands by", &|| {
        stderr_of("standby").contains("standing by")
    });
    let out = cancel("c1");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("run c1: cancelled; of its tasks in the cluster, "),
        "{said}"
    );
    let out = ended(scheduling);
    let stderr = stderr_of("first");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run c1 was cancelled by")
            && stderr.contains("colony cluster cancel --run"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["succeeded"], &report["cancelled"]),
        (&1.into(), &2.into()),
        "{report}"
    );
    let out = ended(standby);
    let stderr = stderr_of("standby");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run c1 of long was cancelled by"),
        "{stderr}"
    );
    let out = ended(scheduler("c1", "again"));
    let stderr = stderr_of("again");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run c1 of long was cancelled by"),
        "{stderr}"
    );
    // The slow task's record: cancelled, saying by whom; its attempt stopped on the node.
    let book = rt.block_on(cluster.run_book("c1")).unwrap();
    let sent = rt.block_on(book.sent()).unwrap();
    assert_eq!(sent.len(), 2, "first and slow went: {sent:?}");
    let row = match rt.block_on(cluster.task(sent[&1].0.id)).unwrap() {
        colony_cluster::TaskView::Row(row) => row,
        other => panic!("{other:?}"),
    };
    assert_eq!(row.state, TaskState::Cancelled, "{row:?}");
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .contains("colony cluster cancel --run"),
        "{row:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = rt.block_on(cluster.status()).unwrap();
        let node = status.nodes.iter().find(|n| n.name == "a").unwrap();
        if node.running == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attempt still runs: {node:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Cancelled again, it says so and cancels its tasks again (a cancel cut short is
    // finished so); an unknown run is refused.
    let out = cancel("c1");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("run c1: cancelled already (cancelled by")
            && said.contains("0 cancelled, 2 had ended"),
        "{said}"
    );
    let out = cancel("nope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("run nope: no such run"), "{stderr}");
    // Through the API of `colony serve --nats`.
    let serve = ServeProc::start(dir.path(), &url, "s1");
    let scheduling = scheduler("c2", "api");
    until("c2's slow task runs", &|| {
        a.executions().iter().filter(|n| **n == 2).count() == 2
    });
    let (code, body) = send(serve.port, "POST", "/v1/runs/c2/cancel", &[], "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""outcome":"cancelled""#), "{body}");
    let out = ended(scheduling);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of("api"));
    let (code, body) = send(serve.port, "POST", "/v1/runs/c2/cancel", &[], "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""again":true"#), "{body}");
    // A run that finished is not cancelled: 409, and exit 1 on the command line.
    let quick = dir.path().join("quick.yaml");
    std::fs::write(
        &quick,
        "name: quick\nagents: [{name: sh, kind: sim}]\ntasks:\n  - { id: q, agent: sh, input: { n: 4, sleep: 0 } }\n",
    )
    .unwrap();
    let done = Command::new(COLONY)
        .args(["run", "--nats", &url, "--run-id", "d1", "--lease", "2s"])
        .arg("--out")
        .arg(dir.path().join("d1-out"))
        .arg(&quick)
        .env_remove("COLONY_NATS")
        .output()
        .unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (code, body) = send(serve.port, "POST", "/v1/runs/d1/cancel", &[], "");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("already-done") && body.contains("succeeded"),
        "{body}"
    );
    let out = cancel("d1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("run d1: finished already (1 succeeded"),
        "{stderr}"
    );
    let (code, body) = send(serve.port, "POST", "/v1/runs/nope/cancel", &[], "");
    assert_eq!(code, 404, "{body}");
    let (code, body) = fetch(serve.port, "/v1/runs");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("cancelled through the API"), "{body}");
    // Neither run's last task ever ran.
    assert!(!a.executions().contains(&3), "{:?}", a.executions());
    drop(serve);
    let report = a.stop();
    assert_eq!((report.succeeded, report.cancelled), (3, 2), "{report:?}");
}

/// Ctrl-C on `colony run --nats` (no run id) cancels the run: the task it had in the cluster
/// is cancelled there, its attempt stopped on the node, and the run says cancelled.
#[test]
fn a_cancelled_run_cancels_its_tasks_in_the_cluster() {
    let OneNode {
        rt,
        dir,
        server: _server,
        url,
        cluster,
        a,
    } = OneNode::start();
    let workflow = dir.path().join("long.yaml");
    std::fs::write(
        &workflow,
        "name: long\nagents: [{name: sh, kind: sim}]\ntasks:\n  - { id: slow, agent: sh, input: { n: 1, sleep: 60 } }\n",
    )
    .unwrap();
    let run = Command::new(COLONY)
        .args(["run", "--nats", &url, "--json", "--out"])
        .arg(dir.path().join("out"))
        .arg(&workflow)
        .env_remove("COLONY_NATS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.executions().contains(&1) {
        assert!(Instant::now() < deadline, "the task never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(Pid::from_raw(run.id() as i32), Signal::SIGINT).unwrap();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("those there are cancelled"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cancelled"], 1, "{report}");
    // The cluster's record of that task (the first this server has): cancelled, saying why.
    let row = match rt.block_on(cluster.task(1)).unwrap() {
        colony_cluster::TaskView::Row(row) => row,
        other => panic!("{other:?}"),
    };
    assert_eq!(row.state, TaskState::Cancelled, "{row:?}");
    assert_eq!(row.error.as_deref(), Some("its workflow run was cancelled"));
    // Its attempt is stopped on the node (its lazy lease is a second; the check, a third of
    // ack_wait), well before the task's 60 s: a heartbeat written 1.5 s after the run ended
    // says nothing runs there.
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = rt.block_on(cluster.status()).unwrap();
        let node = status.nodes.iter().find(|n| n.name == "a").unwrap();
        if node.at_ms > ended + 1500 {
            assert_eq!(node.running, 0, "the attempt still runs: {node:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no fresh heartbeat: {node:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = a.stop();
    assert_eq!(
        (report.succeeded, report.fenced, report.cancelled),
        (0, 0, 1),
        "{report:?}"
    );
}
