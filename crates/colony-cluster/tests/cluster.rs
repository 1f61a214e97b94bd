//! Nodes and clients against a real `nats-server` (one server, R1, `sync_interval: always`):
//! every accepted task ends once, with one committed result; a draining node's attempts go
//! back without costing an attempt. Late results fenced: `crates/colony/tests/cluster.rs`.

use bytes::Bytes;
use colony_agents::sim::{Latency, Sim, SimOptions};
use colony_cluster::{
    Cluster, Node, NodeOptions, Settings, TaskView,
    testing::{self, NatsServer},
};
use colony_core::{
    agent::AgentSpec,
    task::{Requirement, TaskSpec, TaskState},
};
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use std::{sync::Arc, time::Duration};

fn settings() -> Settings {
    Settings {
        replicas: 1,
        ack_wait: Duration::from_secs(2),
        heartbeat_ttl: Duration::from_secs(3),
        ..Settings::default()
    }
}

async fn cluster(server: &NatsServer) -> Cluster {
    testing::connect(&server.url(), settings(), Duration::from_secs(20))
        .await
        .expect("the cluster")
}

async fn runtime(role: &str, agents: u32, latency: Duration) -> Runtime {
    let latency = SimOptions {
        latency: Latency::Fixed { value: latency },
        ..SimOptions::default()
    };
    start(vec![sim_pool(role, agents, latency)]).await
}

/// `agents` `command` agents serving `role`, each running `sh -c SCRIPT sh ARGS...` (the
/// payload on its stdin, `{{input.KEY}}` in `args` filled from it).
fn sh_pool(role: &str, agents: u32, script: &str, args: &[&str]) -> Pool {
    use colony_agents::command::{Command, CommandOptions};
    let mut argv = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let options = CommandOptions {
        args: argv,
        ..CommandOptions::new("sh")
    };
    Pool::new(
        AgentSpec::new("command", role),
        agents,
        Arc::new(Command::new(options)),
    )
}

/// `agents` sim agents serving `role`.
fn sim_pool(role: &str, agents: u32, options: SimOptions) -> Pool {
    let sim = Sim::new(options).unwrap();
    Pool::new(AgentSpec::new("sim", role), agents, Arc::new(sim))
}

/// A runtime of `pools`, its journal in memory.
async fn start(pools: Vec<Pool>) -> Runtime {
    Runtime::start(
        RuntimeOptions::default(),
        pools,
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap()
}

fn options(name: &str) -> NodeOptions {
    NodeOptions {
        name: name.into(),
        max_in_flight: 64,
        drain_timeout: Duration::from_secs(5),
    }
}

fn task(role: Option<&str>, payload: String, max_attempts: u32) -> TaskSpec {
    TaskSpec {
        requirement: Requirement {
            role: role.map(Arc::from),
            ..Requirement::default()
        },
        payload: Bytes::from(payload),
        max_attempts,
        ..TaskSpec::default()
    }
}

/// Milliseconds since the Unix epoch: where a watch of the records starts.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Two processes' buses on `server`'s cluster, bridged as `a` (topics `on_a`) and `b`
/// (topics `on_b`): the buses, and the bridges to hold.
async fn two_bridged(
    server: &NatsServer,
    on_a: &[String],
    on_b: &[String],
) -> (
    colony_runtime::messages::Bus,
    colony_runtime::messages::Bus,
    [colony_cluster::bus::Bridge; 2],
) {
    use colony_cluster::bus::Bridge;
    use colony_runtime::messages::{Bus, MessageOptions};
    let (client_a, client_b) = (cluster(server).await, cluster(server).await);
    let (bus_a, bus_b) = (
        Bus::new(MessageOptions::default()),
        Bus::new(MessageOptions::default()),
    );
    let a = Bridge::start(&client_a, &bus_a, "a", on_a).await.unwrap();
    let b = Bridge::start(&client_b, &bus_b, "b", on_b).await.unwrap();
    (bus_a, bus_b, [a, b])
}

/// A node named `name` over `runtime`, joined to `server`'s cluster.
async fn join(server: &NatsServer, runtime: &Runtime, name: &str) -> Node {
    Node::start(
        cluster(server).await,
        runtime.handle().clone(),
        options(name),
    )
    .await
    .unwrap()
}

/// A team role of `count` members, held by agents of cluster role `name`.
fn team_role(name: &str, count: u32) -> colony_runtime::team::Role {
    colony_runtime::team::Role {
        name: name.into(),
        requirement: Requirement {
            role: Some(name.into()),
            ..Requirement::default()
        },
        count,
    }
}

/// A team step asked of role `role` (of each of its members with `each`).
fn team_step(id: &str, role: usize, each: bool) -> colony_runtime::team::Step {
    colony_runtime::team::Step {
        id: id.into(),
        role,
        each,
        input: None,
    }
}

/// Task `id`'s record once it ended, within a minute.
async fn ended(client: &Cluster, id: u64) -> colony_cluster::Row {
    tokio::time::timeout(Duration::from_secs(60), client.wait(id))
        .await
        .expect("the task ends")
        .unwrap()
}

/// A heartbeat of node `old` serving `role`, as a colony from before votes and teams crossed
/// the cluster writes it (`more` adds fields): the bucket, for the caller to delete it.
async fn old_node(
    server: &NatsServer,
    role: &str,
    more: serde_json::Value,
) -> async_nats::jetstream::kv::Store {
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let nodes = js.get_key_value("colony_nodes").await.unwrap();
    let mut old = serde_json::json!({
        "name": "old", "roles": [role], "agents": 4, "running": 0, "ended": 0,
        "fenced": 0, "draining": false, "started-ms": 1, "at-ms": 1, "version": "0.0.9"
    });
    if let (Some(old), Some(more)) = (old.as_object_mut(), more.as_object()) {
        old.extend(more.clone());
    }
    nodes.put("old", old.to_string().into()).await.unwrap();
    nodes
}

/// Waits until task `id` has a record, which says it runs (a slow node wrote its lease).
async fn until_running(client: &Cluster, id: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let TaskView::Row(row) = client.task(id).await.unwrap() {
            assert_eq!(row.state, TaskState::Running);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_ends_once_across_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    // Started off the async workers: the start waits for the port.
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let (ra, rb) = (
        runtime("worker", 16, Duration::from_millis(1)).await,
        runtime("worker", 16, Duration::from_millis(1)).await,
    );
    let a = join(&server, &ra, "a").await;
    let b = join(&server, &rb, "b").await;

    // Half for the role, half for any agent; a tenth submitted twice with the same id.
    let specs: Vec<TaskSpec> = (0..400)
        .map(|i| {
            task(
                (i % 2 == 0).then_some("worker"),
                format!("{{\"i\":{i}}}"),
                3,
            )
        })
        .collect();
    let ids: Vec<String> = (0..400).map(|i| format!("sub-{i}")).collect();
    let submitted = client.submit(&specs, Some(&ids)).await.unwrap();
    let again = client.submit(&specs[..40], Some(&ids[..40])).await.unwrap();
    for (first, second) in submitted.iter().zip(&again) {
        assert!(
            second.duplicate,
            "a second submission with the same id is dropped"
        );
        assert_eq!(first.id, second.id);
    }
    for (i, s) in submitted.iter().enumerate() {
        let row = tokio::time::timeout(Duration::from_secs(60), client.wait(s.id))
            .await
            .expect("the task ends")
            .unwrap();
        assert_eq!(row.state, TaskState::Succeeded, "task {}: {row:?}", s.id);
        assert_eq!(row.attempt, 1);
        // The sim agent echoes its payload: the committed result is this task's own.
        assert_eq!(
            row.output.as_deref(),
            Some(format!("{{\"i\":{i}}}").as_bytes())
        );
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.unfinished, 0, "the stream holds no ended task");
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(status.nodes[0].roles, ["worker"]);
    let (ra_report, rb_report) = (a.drain().await, b.drain().await);
    assert_eq!(
        ra_report.started + rb_report.started,
        400,
        "{ra_report:?} {rb_report:?}"
    );
    assert_eq!(ra_report.succeeded + rb_report.succeeded, 400);
    assert_eq!(ra_report.fenced + rb_report.fenced, 0);
    assert!(
        client.status().await.unwrap().nodes.is_empty(),
        "drained nodes left"
    );
    ra.shutdown().await;
    rb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_back_without_costing_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // Started off the async workers: the start waits for the port.
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let slow = runtime("worker", 4, Duration::from_secs(30)).await;
    let mut opts = options("slow");
    opts.drain_timeout = Duration::from_millis(200);
    let node = Node::start(cluster(&server).await, slow.handle().clone(), opts)
        .await
        .unwrap();
    // One attempt each: a hand-back that cost one would dead-letter them.
    let specs: Vec<TaskSpec> = (0..4)
        .map(|i| task(Some("worker"), format!("{i}"), 1))
        .collect();
    let submitted = client.submit(&specs, None).await.unwrap();
    for s in &submitted {
        until_running(&client, s.id).await;
    }
    let report = node.drain().await;
    assert_eq!(report.handed_back, 4, "{report:?}");
    slow.shutdown().await;

    let fast = runtime("worker", 4, Duration::from_millis(1)).await;
    let node = join(&server, &fast, "fast").await;
    for (i, s) in submitted.iter().enumerate() {
        let row = tokio::time::timeout(Duration::from_secs(30), client.wait(s.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.state, row.attempt, row.charged),
            (TaskState::Succeeded, 2, 1),
            "{row:?}"
        );
        assert_eq!(row.node, "fast");
        assert_eq!(row.output.as_deref(), Some(format!("{i}").as_bytes()));
    }
    node.drain().await;
    fast.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_unknown_tasks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Started off the async workers: the start waits for the port.
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let three = Settings {
        replicas: 3,
        ..settings()
    };
    let err = Cluster::connect(&server.url(), three)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("keeps 1 replica(s)") && err.contains("--replicas 1"),
        "{err}"
    );
    let err = Cluster::connect("nats://127.0.0.1:1", settings())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{err}"
    );
    let err = Cluster::connect("not a url", settings()).await.unwrap_err();
    assert!(matches!(err, colony_cluster::Error::Settings(_)), "{err}");
    assert!(err.to_string().contains("not a NATS URL"), "{err}");
    let err = client.task(999_999).await.unwrap_err().to_string();
    assert!(err.contains("task 999999 is unknown"), "{err}");
    let bad = task(Some("a.b"), "1".into(), 1);
    let err = client.submit(&[bad], None).await.unwrap_err().to_string();
    assert!(err.contains("role `a.b`"), "{err}");
    let rt = runtime("worker", 1, Duration::from_millis(1)).await;
    let err = Node::start(client.clone(), rt.handle().clone(), options("bad name"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node name `bad name`"), "{err}");
    rt.shutdown().await;
}

/// Two live nodes never share a name: a second node named as a live one waits out the
/// heartbeat TTL and a second, then is refused, naming the name; one named as a node that
/// died without leaving (dropped: its heartbeat stops) takes the name once that heartbeat
/// lapses; one named as a node that drained (it left) takes it at once; and a node whose
/// name another process took while its heartbeat was gone neither writes over that one's
/// heartbeat nor deletes it as it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_nodes_never_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let rt = runtime("worker", 1, Duration::from_millis(1)).await;
    let first = join(&server, &rt, "a").await;
    let asked = std::time::Instant::now();
    let Err(err) = Node::start(client.clone(), rt.handle().clone(), options("a")).await else {
        panic!("a second node named a is refused");
    };
    let waited = asked.elapsed();
    assert!(
        err.to_string().contains("a live node named `a`") && err.to_string().contains("--name"),
        "{err}"
    );
    let ttl = settings().heartbeat_ttl;
    assert!(waited >= ttl, "it waited out the TTL first: {waited:?}");
    let status = client.status().await.unwrap();
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a"], "the first's heartbeat untouched");
    // Gone without leaving: the name is taken once its heartbeat lapses.
    drop(first);
    let asked = std::time::Instant::now();
    let second = join(&server, &rt, "a").await;
    assert!(
        asked.elapsed() < ttl + Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // Left: taken at once.
    second.drain().await;
    let asked = std::time::Instant::now();
    let third = join(&server, &rt, "a").await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // Another process takes the name while this node's heartbeat is gone (as if it had
    // lapsed under a stall): the node's later heartbeats do not write over that one's, nor
    // does its drain delete it.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let nodes = js.get_key_value("colony_nodes").await.unwrap();
    nodes.delete("a").await.unwrap();
    let other = serde_json::json!({
        "name": "a", "instance": "other", "roles": ["worker"], "agents": 1, "running": 0,
        "ended": 0, "fenced": 0, "draining": false, "started-ms": 1, "at-ms": 1,
        "version": "0.0.9"
    });
    nodes.create("a", other.to_string().into()).await.unwrap();
    // The other process beats on, as a live one does.
    let beating = {
        let nodes = nodes.clone();
        let other = other.to_string();
        colony_agents::spawner::Spawner::spawn("other-beats", async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = nodes.put("a", other.clone().into()).await;
            }
        })
    };
    let instance = || async {
        let entry = nodes
            .entry("a")
            .await
            .unwrap()
            .expect("a heartbeat under a");
        let info: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
        info["instance"].clone()
    };
    // Past two of the node's beats (a third of the TTL apart).
    tokio::time::sleep(ttl).await;
    assert_eq!(instance().await, "other");
    third.drain().await;
    assert_eq!(instance().await, "other", "left as it is");
    beating.abort();
    rt.shutdown().await;
}

/// Leadership by KV lease against a real server: one of four candidates leads; when it
/// dies (stops renewing, as a crash does, the key left to expire) a standby leads within
/// the TTL and a second, in a higher term; when that one dies before its first renewal (its
/// key made over the expiry marker must carry the TTL too) the next takes over as fast; one
/// that resigns is replaced at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_a_standby_takes_over_within_the_ttl_and_a_second() {
    use colony_cluster::leadership::{self, Leadership};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let ttl = Duration::from_secs(2);
    let mut candidates: Vec<Option<Leadership>> = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let client = cluster(&server).await;
        let campaign = leadership::campaign(&client, "scaling-worker", name, ttl)
            .await
            .unwrap();
        candidates.push(Some(campaign));
    }
    let leaders = |candidates: &[Option<Leadership>]| -> Vec<(usize, u64)> {
        candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref()?.term().map(|t| (i, t)))
            .collect()
    };
    // Someone leads soon, and never two at once over a few renewals.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while leaders(&candidates).is_empty() {
        assert!(tokio::time::Instant::now() < until, "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..100 {
        let now = leaders(&candidates);
        assert_eq!(now.len(), 1, "{now:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (mut leader, mut term) = leaders(&candidates)[0];
    // The leader dies: dropped without resigning, its key expires after the TTL. Then the
    // new leader dies at once, before it renews.
    for _ in 0..2 {
        let died = std::time::Instant::now();
        candidates[leader] = None;
        let (next, next_term) = loop {
            if let Some(&led) = leaders(&candidates).first() {
                break led;
            }
            assert!(
                died.elapsed() < ttl + Duration::from_secs(2),
                "no takeover after {:?}",
                died.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let takeover = died.elapsed();
        eprintln!("takeover after a leader died: {takeover:?} (TTL {ttl:?})");
        assert!(takeover <= ttl + Duration::from_secs(1), "{takeover:?}");
        assert!(next_term > term, "{next_term} after {term}");
        assert_eq!(leaders(&candidates).len(), 1);
        (leader, term) = (next, next_term);
    }
    let (second, second_term) = (leader, term);
    // The new leader resigns: the last candidate leads without waiting for a TTL.
    let resigned = std::time::Instant::now();
    candidates[second].take().unwrap().resign().await;
    let third = loop {
        if let Some(&led) = leaders(&candidates).first() {
            break led;
        }
        assert!(resigned.elapsed() < ttl, "no takeover after a resignation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("takeover after a resignation: {:?}", resigned.elapsed());
    assert!(third.1 > second_term);
    // Bad names and TTLs are refused, with what is wrong.
    let client = cluster(&server).await;
    let err = leadership::campaign(&client, "a.b", "x", ttl)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("office `a.b`"), "{err}");
    let err = leadership::campaign(&client, "ok", "x", Duration::from_millis(1500))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole seconds from 2s"), "{err}");
}

/// A run's book: every write is a compare-and-set on what the writer read, so a scheduler
/// whose key moved under it is told it lost the run; run ids are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_book_refuses_a_write_over_what_another_scheduler_wrote() {
    use colony_cluster::runs::{RunMeta, Sent};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let book = client.run_book("nightly-7").await.unwrap();
    assert_eq!(book.dedupe_id(3, 1), "run:nightly-7:3:1");
    let meta = RunMeta {
        workflow: "w".into(),
        digest: "d".into(),
        done: false,
        counts: Default::default(),
        code: None,
        scheduler: "a-1".into(),
        term: 5,
        at_ms: 0,
        cancelled: None,
    };
    let first = book.put_meta(&meta, None).await.unwrap();
    let err = book.put_meta(&meta, None).await.unwrap_err();
    assert!(matches!(err, colony_cluster::Error::Lost { .. }), "{err}");
    assert!(err.to_string().contains("another scheduler"), "{err}");
    // The successor writes over what it read; the deposed one's write over the older
    // revision is refused.
    let successor = RunMeta {
        scheduler: "b-2".into(),
        term: 9,
        ..meta.clone()
    };
    book.put_meta(&successor, Some(first)).await.unwrap();
    let late = book.put_meta(&meta, Some(first)).await.unwrap_err();
    assert!(matches!(late, colony_cluster::Error::Lost { .. }), "{late}");
    let (found, _) = book.meta().await.unwrap().unwrap();
    assert!(found.at_ms > 0, "stamped when written");
    assert_eq!(RunMeta { at_ms: 0, ..found }, successor);
    // Listed among the runs, the most recent first.
    let runs = client.runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "nightly-7");
    assert_eq!(runs[0].1.scheduler, "b-2");
    let sent = Sent {
        id: 42,
        round: 0,
        spent: 0,
    };
    let r = book.put_sent(2, &sent, None).await.unwrap();
    let again = Sent {
        id: 43,
        round: 1,
        spent: 1,
    };
    book.put_sent(2, &again, Some(r)).await.unwrap();
    let stale = book.put_sent(2, &sent, Some(r)).await.unwrap_err();
    assert!(
        matches!(stale, colony_cluster::Error::Lost { .. }),
        "{stale}"
    );
    // Read from the stream's leader, with the revision a write over it expects.
    let (entry, revision) = book.entry(2).await.unwrap().unwrap();
    assert_eq!(entry, again);
    assert!(revision > r);
    assert_eq!(book.entry(7).await.unwrap(), None);
    let all = book.sent().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[&2].0, again);
    // Another run's keys are not this one's.
    let other = client.run_book("nightly-70").await.unwrap();
    other.put_sent(0, &sent, None).await.unwrap();
    assert_eq!(book.sent().await.unwrap().len(), 1);
    for bad in ["a.b", "", "a b", &"x".repeat(61)] {
        assert!(client.run_book(bad).await.is_err(), "{bad}");
    }
}

/// The records' stream tells each task's records as nodes write them, from when it opened;
/// a watch made later reads them again from a time or after a revision, bounded; a node's
/// heartbeat tells its hierarchy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_stream_tells_each_record_as_it_is_written() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let ra = runtime("worker", 4, Duration::from_millis(1)).await;
    let node = join(&server, &ra, "a").await;
    use colony_cluster::{Record, RecordsFrom};
    let started_ms = now_ms();
    let watch = client.records(RecordsFrom::Now, u64::MAX).await.unwrap();
    assert!(!watch.cut);
    let mut records = watch.records;
    let specs: Vec<TaskSpec> = (0..3)
        .map(|i| task(Some("worker"), format!("{{\"i\":{i}}}"), 1))
        .collect();
    let submitted = client.submit(&specs, None).await.unwrap();
    let mut ended = std::collections::BTreeSet::new();
    let mut ends = Vec::new();
    while ended.len() < 3 {
        let record: Record = tokio::time::timeout(Duration::from_secs(20), records.next())
            .await
            .expect("a record in time")
            .expect("the stream goes on")
            .expect("the watch holds");
        let Record { id, row, .. } = &record;
        assert!(submitted.iter().any(|s| s.id == *id), "{id}");
        assert_eq!(row.node, "a");
        assert!(!record.earlier, "{record:?}");
        assert!(record.written_ms + 5_000 >= started_ms, "{record:?}");
        if row.state == colony_core::task::TaskState::Succeeded {
            ended.insert(*id);
            ends.push(record);
        }
    }
    // Read again later: from a time, every end is there, as written before the watch; after
    // the first end's revision, the others; bounded to one sequence, at most one, and cut.
    let ended_ids = |watch: colony_cluster::Watch, n: usize| async move {
        let mut ids = std::collections::BTreeSet::new();
        let mut records = watch.records;
        while ids.len() < n {
            let record = tokio::time::timeout(Duration::from_secs(20), records.next())
                .await
                .expect("a record in time")
                .expect("the stream goes on")
                .expect("the watch holds");
            assert!(record.earlier, "{record:?}");
            if record.row.state == colony_core::task::TaskState::Succeeded {
                ids.insert(record.id);
            }
        }
        ids
    };
    let again = client
        .records(
            RecordsFrom::Since(started_ms.saturating_sub(1_000)),
            u64::MAX,
        )
        .await
        .unwrap();
    assert!(!again.cut);
    assert_eq!(ended_ids(again, 3).await, ended);
    let after = client
        .records(RecordsFrom::After(ends[0].revision), u64::MAX)
        .await
        .unwrap();
    let rest: std::collections::BTreeSet<u64> = ends[1..].iter().map(|r| r.id).collect();
    assert_eq!(ended_ids(after, 2).await, rest);
    let bounded = client
        .records(RecordsFrom::Since(started_ms.saturating_sub(1_000)), 1)
        .await
        .unwrap();
    assert!(bounded.cut);
    let mut records = bounded.records;
    let mut read = Vec::new();
    while let Ok(Some(record)) =
        tokio::time::timeout(Duration::from_millis(1_500), records.next()).await
    {
        let record = record.unwrap();
        assert!(record.earlier && record.caught_up, "{record:?}");
        read.push(record.id);
    }
    // The bucket's last write: the last end.
    assert_eq!(read, [ends[2].id], "a watch bounded to one sequence");
    // The node's heartbeat tells its runtime's hierarchy: its tiers, the workers last.
    let status = client.status().await.unwrap();
    let tiers = &status.nodes[0].tiers;
    assert!(!tiers.is_empty(), "{:?}", status.nodes[0]);
    assert_eq!(tiers.last().unwrap().agents, 4, "{tiers:?}");
    assert!(tiers.iter().all(|t| t.down == 0), "{tiers:?}");
    node.drain().await;
    ra.shutdown().await;
}

/// Cancelling: a running task is written cancelled and its node stops the attempt at its
/// next check (fenced, never reported succeeded); a task no node takes is dropped from the
/// stream; an ended task is told as ended; an unknown one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_stops_where_it_runs_and_a_queued_one_never_runs() {
    use colony_cluster::{Cancel, TaskView};
    use colony_core::task::TaskState;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let slow = runtime("slow", 1, Duration::from_secs(60)).await;
    let fast = runtime("fast", 1, Duration::from_millis(1)).await;
    let slow_node = join(&server, &slow, "s").await;
    let fast_node = join(&server, &fast, "f").await;
    let specs = [
        task(Some("slow"), "{}".into(), 3),
        task(Some("nobody"), "{}".into(), 3),
        task(Some("fast"), "{}".into(), 3),
    ];
    let ids: Vec<u64> = client
        .submit(&specs, None)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let (running, queued, done) = (ids[0], ids[1], ids[2]);
    client.wait(done).await.unwrap();
    // The slow task runs past its lazy lease: its record says running.
    let readiness = slow_node.readiness();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(client.task(running).await, Ok(TaskView::Row(ref r)) if r.state == TaskState::Running)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow task never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readiness.running(), 1);
    let told = client.cancel(running, "test").await.unwrap();
    assert_eq!(
        told,
        Cancel::Cancelled {
            was: Some(TaskState::Running)
        }
    );
    let row = client.wait(running).await.unwrap();
    assert_eq!(row.state, TaskState::Cancelled);
    assert_eq!(row.error.as_deref(), Some("test"));
    // Its node stops the attempt at its next check, a third of ack_wait (2 s) on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while readiness.running() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attempt still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No node serves `nobody`: its task waits in the stream until cancelled, then is gone.
    assert_eq!(client.task(queued).await.unwrap(), TaskView::Queued);
    assert_eq!(
        client.cancel(queued, "not needed").await.unwrap(),
        Cancel::Cancelled { was: None }
    );
    match client.task(queued).await.unwrap() {
        TaskView::Row(row) => assert_eq!(row.state, TaskState::Cancelled),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.status().await.unwrap().unfinished,
        0,
        "both messages dropped"
    );
    // A node for `nobody` joining later finds nothing to run.
    let late = runtime("nobody", 1, Duration::from_millis(1)).await;
    let late_node = join(&server, &late, "l").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = late_node.drain().await;
    assert_eq!(report.started, 0, "{report:?}");
    late.shutdown().await;
    // Ended tasks stay as they ended; unknown ones are refused.
    assert_eq!(
        client.cancel(done, "late").await.unwrap(),
        Cancel::AlreadyEnded {
            state: TaskState::Succeeded
        }
    );
    assert_eq!(
        client.cancel(running, "again").await.unwrap(),
        Cancel::AlreadyEnded {
            state: TaskState::Cancelled
        }
    );
    assert!(matches!(
        client.cancel(999_999, "x").await,
        Err(colony_cluster::Error::Unknown { id: 999_999 })
    ));
    let report = slow_node.drain().await;
    assert_eq!(
        (report.succeeded, report.fenced, report.cancelled),
        (0, 0, 1),
        "{report:?}"
    );
    fast_node.drain().await;
    slow.shutdown().await;
    fast.shutdown().await;
}

/// An agent that writes down the payload of each task it runs, in the order it runs them.
struct Recorder(std::sync::Mutex<Vec<String>>);

impl colony_agents::Agent for Recorder {
    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        let said = String::from_utf8_lossy(&task.payload).into_owned();
        self.0.lock().unwrap().push(said);
        colony_agents::Execution::Done(Ok(task.payload))
    }
}

/// Priorities across the cluster: with one slot, a node runs every waiting task of a higher
/// priority before any of a lower one, whatever order they came in, and the role's status
/// sums its consumers of every priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_the_highest_priority_first() {
    use colony_core::task::Priority;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let at = |p: u8, i: usize| TaskSpec {
        priority: Priority::new(p).unwrap(),
        ..task(Some("worker"), format!("p{p}-{i}"), 3)
    };
    // Low first, then high, then the default: submitted before any node runs.
    let mut specs: Vec<TaskSpec> = (0..8).map(|i| at(1, i)).collect();
    specs.extend((0..6).map(|i| at(9, i)));
    specs.extend((0..4).map(|i| at(5, i)));
    let submitted = client.submit(&specs, None).await.unwrap();

    let recorder = Arc::new(Recorder(Default::default()));
    let pool = Pool::new(AgentSpec::new("recorder", "worker"), 1, recorder.clone());
    let rt = start(vec![pool]).await;
    let node = Node::start(
        cluster(&server).await,
        rt.handle().clone(),
        NodeOptions {
            max_in_flight: 1,
            ..options("one-slot")
        },
    )
    .await
    .unwrap();
    for s in &submitted {
        let row = tokio::time::timeout(Duration::from_secs(30), client.wait(s.id))
            .await
            .expect("the task ends")
            .unwrap();
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    }
    let ran = recorder.0.lock().unwrap().clone();
    let priorities: Vec<&str> = ran.iter().map(|r| &r[..2]).collect();
    let mut want = vec!["p9"; 6];
    want.extend(["p5"; 4]);
    want.extend(["p1"; 8]);
    assert_eq!(priorities, want, "ran in this order: {ran:?}");
    // Within one priority, in the order submitted.
    let p1: Vec<&String> = ran.iter().filter(|r| r.starts_with("p1")).collect();
    let in_order: Vec<String> = (0..8).map(|i| format!("p1-{i}")).collect();
    assert_eq!(p1, in_order.iter().collect::<Vec<_>>());
    // One line a role, its consumers of every priority summed: at least 18 deliveries over
    // three consumers (none gave more than 8), more when a lower priority asked in the same
    // round as a higher one was handed back.
    let status = client.status().await.unwrap();
    let roles: Vec<(&str, u64, u64)> = status
        .roles
        .iter()
        .map(|r| (r.role.as_str(), r.waiting, r.running))
        .collect();
    assert_eq!(roles, [("*", 0, 0), ("worker", 0, 0)]);
    assert_eq!(status.roles[0].delivered, 0);
    let delivered = status.roles[1].delivered;
    assert!((18..=26).contains(&delivered), "{delivered} deliveries");
    assert_eq!(node.drain().await.succeeded, 18);
    rt.shutdown().await;
}

/// A node of this version deletes the one consumer of every priority that a node before
/// priorities made (a work-queue stream refuses consumers whose subjects overlap), and the
/// task it had delivered and not acknowledged runs at once, not after `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaces_the_consumer_of_every_priority_and_loses_nothing_it_held() {
    use async_nats::jetstream::{self, consumer::pull};
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let nats = async_nats::connect(server.url()).await.unwrap();
    let stream = jetstream::new(nats)
        .get_stream("COLONY_TASKS")
        .await
        .unwrap();
    let old = stream
        .create_consumer(pull::Config {
            durable_name: Some("role-worker".into()),
            filter_subject: "colony.tasks.worker.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    let submitted = client
        .submit(&[task(Some("worker"), "held".into(), 3)], None)
        .await
        .unwrap();
    // Delivered by the old consumer and never acknowledged: it holds the task for a minute,
    // three times as long as the wait below.
    let mut held = old.fetch().max_messages(1).messages().await.unwrap();
    assert!(held.next().await.unwrap().is_ok());

    let rt = runtime("worker", 2, Duration::from_millis(1)).await;
    let node = join(&server, &rt, "new").await;
    let row = tokio::time::timeout(Duration::from_secs(20), client.wait(submitted[0].id))
        .await
        .expect("the held task ends")
        .unwrap();
    assert_eq!(row.state, TaskState::Succeeded);
    assert!(
        stream.consumer_info("role-worker").await.is_err(),
        "the old consumer is gone"
    );
    assert!(stream.consumer_info("p5-role-worker").await.is_ok());
    node.drain().await;
    rt.shutdown().await;
}

/// Every agent across the cluster: each live node answers for its own agents, filtered as
/// asked and paged; a bad query is named by each node, and a node that is not live is
/// refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_its_own_agents_when_asked() {
    use colony_runtime::agents::AgentQuery;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let (ra, rb) = (
        runtime("alpha", 5, Duration::from_millis(1)).await,
        runtime("beta", 30, Duration::from_millis(1)).await,
    );
    let a = Node::start(
        cluster(&server).await,
        ra.handle().clone(),
        options("node.a"),
    )
    .await
    .unwrap();
    let b = join(&server, &rb, "b").await;
    let workers = |role: &str| AgentQuery {
        role: Some(role.into()),
        limit: Some(1000),
        ..AgentQuery::default()
    };
    let answers = client.agents(None, &workers("beta")).await.unwrap();
    let counts: Vec<(&str, usize, Option<&str>)> = answers
        .iter()
        .map(|n| (n.node.as_str(), n.agents.len(), n.error.as_deref()))
        .collect();
    assert_eq!(counts, [("b", 30, None), ("node.a", 0, None)]);
    assert!(
        answers[0]
            .agents
            .iter()
            .all(|v| v["role"] == "beta" && v["tier"] == "worker"),
        "{:?}",
        answers[0].agents[0]
    );
    // Paged: three at a time, the next page after the last id given.
    let first = &client
        .agents(
            Some("b"),
            &AgentQuery {
                limit: Some(3),
                ..workers("beta")
            },
        )
        .await
        .unwrap()[0];
    assert_eq!(first.agents.len(), 3);
    let after = first.next_after.expect("more pages");
    let second = &client
        .agents(
            Some("b"),
            &AgentQuery {
                after: Some(after),
                ..workers("beta")
            },
        )
        .await
        .unwrap()[0];
    assert_eq!(second.agents.len(), 27);
    assert!(
        second
            .agents
            .iter()
            .all(|v| v["id"].as_u64().unwrap() > u64::from(after))
    );
    // Every agent of node.a, managers too: its whole tree.
    let all = &client
        .agents(
            Some("node.a"),
            &AgentQuery {
                limit: Some(1000),
                ..AgentQuery::default()
            },
        )
        .await
        .unwrap()[0];
    let tree_size = ra.handle().inspect(|t| t.len()).await.unwrap();
    assert_eq!(all.agents.len(), tree_size);
    assert!(all.agents.len() > 5, "workers and their managers");
    // A query bad whatever the node is refused before any is asked; one a node's
    // hierarchy cannot answer, each node names.
    let bad = client
        .agents(
            None,
            &AgentQuery {
                limit: Some(0),
                ..AgentQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("limit 0 is out of range"), "{bad}");
    let parent = client
        .agents(
            None,
            &AgentQuery {
                parent: Some(100_000),
                ..AgentQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(parent.len(), 2);
    for n in &parent {
        let error = n.error.as_deref().unwrap_or_default();
        assert!(error.contains("there is no agent 100000"), "{n:?}");
    }
    let tier = client
        .agents(
            Some("b"),
            &AgentQuery {
                tier: Some("general".into()),
                ..AgentQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(
        tier[0]
            .error
            .as_deref()
            .unwrap()
            .contains("tier \"general\" is not in this hierarchy")
    );
    // A node listed that does not answer (dropped without a drain: its heartbeat lives
    // until its TTL) is named, not left out.
    let rc = runtime("gamma", 2, Duration::from_millis(1)).await;
    let c = join(&server, &rc, "c").await;
    drop(c);
    let answers = client.agents(None, &AgentQuery::default()).await.unwrap();
    let names: Vec<&str> = answers.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["b", "c", "node.a"]);
    let silent = answers[1].error.as_deref().unwrap_or_default();
    assert!(silent.contains("no answer"), "{:?}", answers[1]);
    assert!(answers[0].error.is_none() && answers[2].error.is_none());
    rc.shutdown().await;
    let unknown = client
        .agents(Some("d"), &AgentQuery::default())
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no live node is named `d`"),
        "{unknown}"
    );
    assert!(unknown.to_string().contains("b, c, node.a"), "{unknown}");
    a.drain().await;
    b.drain().await;
    ra.shutdown().await;
    rb.shutdown().await;
}

/// A task decided by vote: the node that takes it seats its voters among its own agents and
/// commits the decided value, with how the decision went, once. A decision that fails
/// (every ballot an error: no quorum) fails its task, never success-shaped; one asking more
/// voters than any node hosts says so; a draining node drops its decision (the ballots
/// cancelled) and hands the task back, and another node decides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_is_decided_once_by_the_node_that_takes_it() {
    use colony_cluster::Decide;
    use colony_core::decision::{DecisionOptions, Protocol};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let majority = |voters: u32| Decide {
        voters,
        options: DecisionOptions::default(),
        reputation: false,
        role_weights: Default::default(),
        spread: false,
    };

    // A slow node takes the first vote; it drains while the ballots are out.
    let slow = runtime("voter", 4, Duration::from_secs(30)).await;
    let mut opts = options("slow");
    opts.drain_timeout = Duration::from_millis(200);
    let node = Node::start(cluster(&server).await, slow.handle().clone(), opts)
        .await
        .unwrap();
    let handed = client
        .submit_decided(
            &task(Some("voter"), "\"yes\"".into(), 1),
            &majority(3),
            None,
        )
        .await
        .unwrap();
    until_running(&client, handed.id).await;
    let report = node.drain().await;
    assert_eq!(report.handed_back, 1, "{report:?}");
    slow.shutdown().await;

    let fast = runtime("voter", 5, Duration::from_millis(1)).await;
    let node = join(&server, &fast, "fast").await;
    let failing = SimOptions {
        error_rate: 1.0,
        ..SimOptions::default()
    };
    let flaky = start(vec![sim_pool("flaky", 3, failing)]).await;
    let flaky_node = join(&server, &flaky, "flaky").await;
    let bft = Decide {
        options: DecisionOptions {
            protocol: Protocol::Bft,
            ..DecisionOptions::default()
        },
        ..majority(4)
    };
    let mut votes = Vec::new();
    for i in 0..6 {
        let how = if i % 2 == 0 { majority(3) } else { bft.clone() };
        let spec = task(Some("voter"), format!("\"answer {i}\""), 3);
        let s = client
            .submit_decided(&spec, &how, Some(format!("vote-{i}")))
            .await
            .unwrap();
        votes.push((i, s.id, how));
    }
    // The same idempotency id again: kept once.
    let again = client
        .submit_decided(
            &task(Some("voter"), "\"answer 0\"".into(), 3),
            &majority(3),
            Some("vote-0".into()),
        )
        .await
        .unwrap();
    assert!(again.duplicate && again.id == votes[0].1);
    for (i, id, how) in votes {
        let row = ended(&client, id).await;
        assert_eq!(row.state, TaskState::Succeeded, "vote {i}: {row:?}");
        assert_eq!(row.node, "fast");
        // The sim voters echo the question (a JSON string, read as its text): all agree.
        assert_eq!(
            row.output.as_deref(),
            Some(format!("answer {i}").as_bytes())
        );
        let d = row.decision.expect("how the decision went");
        assert_eq!(
            (d.protocol, d.voters, d.dissenters, d.reason),
            (how.options.protocol, how.voters, 0, None),
            "vote {i}"
        );
        assert!(d.counted > how.voters / 2 && d.counted <= how.voters);
        assert_eq!(d.support, Some(1.0));
        assert!(row.agent.is_some(), "the winner's voter");
    }
    // The handed-back vote, decided by the fast node on its second delivery, at no cost.
    let row = ended(&client, handed.id).await;
    assert_eq!(
        (row.state, row.node.as_str(), row.charged),
        (TaskState::Succeeded, "fast", 1),
        "{row:?}"
    );
    assert_eq!(row.output.as_deref(), Some(&b"yes"[..]));

    // Every ballot an error: no quorum, the task failed with the reason, not retried.
    let failed = client
        .submit_decided(&task(Some("flaky"), "1".into(), 3), &majority(3), None)
        .await
        .unwrap();
    let row = ended(&client, failed.id).await;
    assert_eq!((row.state, row.attempt), (TaskState::Failed, 1), "{row:?}");
    let error = row.error.unwrap();
    assert!(error.contains("the decision failed: no-quorum"), "{error}");
    assert_eq!(row.output, None);
    let d = row.decision.unwrap();
    assert_eq!((d.reason.as_deref(), d.support), (Some("no-quorum"), None));

    // More voters than a node hosts: said, and dead-lettered once its attempts are spent.
    let too_many = client
        .submit_decided(&task(Some("voter"), "1".into(), 1), &majority(9), None)
        .await
        .unwrap();
    let row = ended(&client, too_many.id).await;
    assert_eq!(row.state, TaskState::DeadLettered, "{row:?}");
    let error = row.error.unwrap();
    assert!(
        error.contains("9 voters asked, but 5 workers can run the task"),
        "{error}"
    );

    // What no node's runtime would take is refused when sent.
    let mut bad = majority(3);
    bad.voters = 0;
    let reputed = Decide {
        reputation: true,
        ..majority(3)
    };
    let one_leader = Decide {
        options: DecisionOptions {
            protocol: Protocol::Leader,
            ..DecisionOptions::default()
        },
        ..majority(1)
    };
    for (how, said) in [
        (bad, "0 voters asked"),
        (reputed, "counted by the weighted and confidence protocols"),
        (one_leader, "leader needs 2 voters or more"),
    ] {
        let err = client
            .submit_decided(&task(Some("voter"), "1".into(), 1), &how, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(said), "{err}");
    }
    // A decide header no node can read (sent past the client) fails its task once, naming
    // the header.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "raw-bad-vote");
    headers.insert("Colony-Role", "voter");
    headers.insert("Colony-Decide", r#"{"voters":0,"options":{}}"#);
    let raw = js
        .publish_with_headers("colony.tasks.voter.p5", headers, "1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let row = ended(&client, raw.sequence).await;
    assert_eq!((row.state, row.attempt), (TaskState::Failed, 0), "{row:?}");
    let error = row.error.unwrap();
    assert!(
        error.contains("unreadable") && error.contains("header Colony-Decide: 0 voters"),
        "{error}"
    );
    // A node from before votes crossed the cluster would run a vote as a plain task: while
    // one serves the role, votes for it are refused, naming it.
    let nodes = old_node(&server, "voter", serde_json::json!({})).await;
    // A client of its own: one that sent a vote within the last second reads the nodes
    // from then.
    let err = cluster(&server)
        .await
        .submit_decided(&task(Some("voter"), "1".into(), 1), &majority(3), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node old serves role `voter` but runs a colony that decides no vote"),
        "{err}"
    );
    nodes.delete("old").await.unwrap();

    let report = node.drain().await;
    // The six votes, the handed-back one and the one with too many voters: each once.
    assert_eq!(
        (report.succeeded, report.dead_lettered, report.fenced),
        (7, 1, 0),
        "{report:?}"
    );
    flaky_node.drain().await;
    fast.shutdown().await;
    flaky.shutdown().await;
}

/// A vote takes a slot for each of its voters on the node that runs it: a node whose voters
/// are busy with votes leaves the next in the stream (or hands it back after a while) for
/// another node, rather than hold it until its own voters are free, where its ballots would
/// queue past its timeout. Votes submitted at once to one node: two run there, the third
/// goes to a node that joins later; one submitted while the first node is full goes there
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_busy_with_votes_leaves_the_next_to_a_node_with_free_voters() {
    use colony_cluster::Decide;
    use colony_core::decision::DecisionOptions;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let three = Decide {
        voters: 3,
        options: DecisionOptions {
            timeout: Duration::from_secs(60),
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread: false,
    };
    let busy = runtime("voter", 6, Duration::from_secs(8)).await;
    let busy_node = join(&server, &busy, "busy").await;
    let submit = |answer: String| {
        let spec = task(Some("voter"), format!("\"{answer}\""), 1);
        let (client, three) = (client.clone(), three.clone());
        async move { client.submit_decided(&spec, &three, None).await.unwrap() }
    };
    let at_once = futures::future::join_all((0..3).map(|i| submit(format!("vote {i}")))).await;
    // Two run (their leases written after a second), long enough to outlast what follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut running = 0;
        for s in &at_once {
            running += usize::from(matches!(client.task(s.id).await, Ok(TaskView::Row(_))));
        }
        if running >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no two votes ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: a vote submitted now finds no room on it either.
    let later = submit("later".into()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let free = runtime("voter", 3, Duration::from_millis(1)).await;
    let free_node = join(&server, &free, "free").await;
    let mut on = std::collections::HashMap::<String, usize>::new();
    let answers = ["vote 0", "vote 1", "vote 2", "later"];
    for (s, answer) in at_once.iter().chain([&later]).zip(answers) {
        let row = ended(&client, s.id).await;
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
        assert_eq!(row.output.as_deref(), Some(answer.as_bytes()), "{row:?}");
        *on.entry(row.node).or_default() += 1;
    }
    assert_eq!(
        on.get("busy"),
        Some(&2),
        "room for two votes of three: {on:?}"
    );
    assert_eq!(on.get("free"), Some(&2), "{on:?}");
    busy_node.drain().await;
    free_node.drain().await;
    busy.shutdown().await;
    free.shutdown().await;
}

/// A task worked by a team: it goes to the nodes of the team's first role, and the node that
/// takes it forms the team among its own agents, runs the steps and commits the last step's
/// output with how the team went. A team whose members fail fails its task, saying why; one
/// needing a role its node does not host says so and is dead-lettered once its attempts
/// are spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_is_formed_and_worked_by_the_node_that_takes_it() {
    use colony_runtime::team::Team;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let pool = |role: &str, n: u32, error_rate: f64| {
        let options = SimOptions {
            error_rate,
            ..SimOptions::default()
        };
        sim_pool(role, n, options)
    };
    let rt = start(vec![
        pool("lead", 1, 0.0),
        pool("hand", 2, 0.0),
        pool("clumsy", 2, 1.0),
    ])
    .await;
    let node = join(&server, &rt, "crew").await;
    let team = |hands: &str| Team {
        roles: vec![team_role("lead", 1), team_role(hands, 2)],
        steps: vec![team_step("plan", 0, false), team_step("work", 1, true)],
        reassignments: 0,
        delegation: 0,
        spread: false,
    };
    let spec = |max_attempts: u32| TaskSpec {
        payload: Bytes::from(r#"{"input":{"job":"build it"}}"#),
        max_attempts,
        ..TaskSpec::default()
    };

    let worked = client
        .submit_team(&spec(3), team("hand"), None)
        .await
        .unwrap();
    let row = ended(&client, worked.id).await;
    assert_eq!(
        (row.state, row.node.as_str()),
        (TaskState::Succeeded, "crew"),
        "{row:?}"
    );
    // The last step asked each hand: its output is theirs, in seat order.
    let output: serde_json::Value = serde_json::from_slice(row.output.as_deref().unwrap()).unwrap();
    assert_eq!(output.as_array().map(Vec::len), Some(2), "{output}");
    let how = row.team.unwrap();
    assert_eq!(
        (how.members, how.steps, how.asks, how.reassigned),
        (3, 2, 3, 0),
        "{how:?}"
    );

    // Members whose every ask fails, and no reassignment allowed: the team fails.
    let failed = client
        .submit_team(&spec(3), team("clumsy"), None)
        .await
        .unwrap();
    let row = ended(&client, failed.id).await;
    assert_eq!((row.state, row.attempt), (TaskState::Failed, 1), "{row:?}");
    let error = row.error.unwrap();
    assert!(error.starts_with("the team failed: "), "{error}");
    assert!(row.team.is_some());

    // A role this node does not host: said, and dead-lettered once its attempt is spent.
    let unformed = client
        .submit_team(&spec(1), team("nobody"), None)
        .await
        .unwrap();
    let row = ended(&client, unformed.id).await;
    assert_eq!(row.state, TaskState::DeadLettered, "{row:?}");
    let error = row.error.unwrap();
    assert!(
        error.contains("node crew:") && error.contains("nobody"),
        "{error}"
    );

    // A node from before teams crossed the cluster (its heartbeat says nothing of them) would
    // run one as a plain task: while one serves the role, teams for it are refused.
    let nodes = old_node(&server, "lead", serde_json::json!({"votes": true})).await;
    let err = cluster(&server)
        .await
        .submit_team(&spec(1), team("hand"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node old serves role `lead` but runs a colony that forms no team"),
        "{err}"
    );
    nodes.delete("old").await.unwrap();

    // What no runtime would run is refused when sent.
    let mut empty = team("hand");
    empty.steps.clear();
    let err = client
        .submit_team(&spec(1), empty, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 steps"), "{err}");

    let report = node.drain().await;
    assert_eq!(
        (
            report.succeeded,
            report.failed,
            report.dead_lettered,
            report.fenced
        ),
        (1, 1, 1, 0),
        "{report:?}"
    );
    rt.shutdown().await;
}

/// `colony bench cluster --voters 3` on one server: every vote decided by its three voters
/// as one; the verdict says only that R1 is not what the target is for (a vote's
/// throughput is not judged). Plain tasks on R1 miss the same, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_bench_checks_its_votes_and_says_what_missed() {
    use colony_cluster::bench::{self, BenchOptions};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    cluster(&server).await;
    let options = BenchOptions {
        tasks: 300,
        nodes: 2,
        agents: 8,
        in_flight: 64,
        payload_bytes: 2,
        voters: 3,
        spread: false,
        command: None,
        bundle: 0,
    };
    let report = bench::run(&server.url(), settings(), &options)
        .await
        .unwrap();
    assert_eq!(
        (report.voters, report.undecided),
        (Some(3), Some(0)),
        "{report:?}"
    );
    assert_eq!(report.unsucceeded, 0);
    assert_eq!(report.attempts, 300);
    assert_eq!(report.verdict.problems.len(), 1, "{:?}", report.verdict);
    assert!(
        report.verdict.problems[0].starts_with("R1"),
        "{:?}",
        report.verdict
    );
    // More voters than a node's agents: refused before anything runs.
    let err = bench::run(
        &server.url(),
        settings(),
        &BenchOptions {
            voters: 9,
            ..options.clone()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--voters 9 is more than the 8 agents"),
        "{err}"
    );
    // Spread over the nodes, a vote may have more voters than a node has agents: each of
    // the 100 decided by its 9 voters as one, its ballots' records not counted as votes.
    let report = bench::run(
        &server.url(),
        settings(),
        &BenchOptions {
            tasks: 100,
            voters: 9,
            spread: true,
            ..options.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.voters, report.undecided, report.unsucceeded),
        (Some(9), Some(0), 0),
        "{report:?}"
    );
    // Each vote an attempt on a node, and so is each ballot that decided it (a majority of
    // 9: at least 5); a ballot not yet started when its vote was decided is cancelled and
    // never runs.
    assert!(report.attempts >= 100 * (1 + 5), "{report:?}");
    // A process per task (`command` agents): `true` succeeds each, judged against the
    // target for processes; `false` fails each, and the verdict says so.
    let report = bench::run(
        &server.url(),
        settings(),
        &BenchOptions {
            tasks: 100,
            voters: 0,
            command: Some("true".into()),
            ..options.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.unsucceeded, report.attempts),
        (0, 100),
        "{report:?}"
    );
    assert_eq!(report.command.as_deref(), Some("true"));
    assert!(
        report
            .verdict
            .problems
            .iter()
            .all(|p| p.starts_with("R1") || p.contains("the target is 1000/s")),
        "{:?}",
        report.verdict
    );
    let report = bench::run(
        &server.url(),
        settings(),
        &BenchOptions {
            tasks: 10,
            voters: 0,
            command: Some("false".into()),
            ..options
        },
    )
    .await
    .unwrap();
    assert_eq!(report.unsucceeded, 10, "{report:?}");
    assert!(
        report
            .verdict
            .problems
            .iter()
            .any(|p| p.contains("10 of 10 tasks did not succeed")),
        "{:?}",
        report.verdict
    );
}

/// A vote's weights cross the cluster by role: the node that takes it weighs each of its
/// pools by the pool's role. Three voters of role `wa` say `x`, two of role `wb` say `y`:
/// each weighing 1, `x` wins; with `wb` at 2, `y` does (4 against 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_weighs_its_voters_by_the_roles_of_the_nodes_pools() {
    use colony_cluster::Decide;
    use colony_core::decision::{DecisionOptions, Protocol};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let saying = |role: &str, word: &str, n: u32| sh_pool(role, n, &format!("echo {word}"), &[]);
    let rt = start(vec![saying("wa", "x", 3), saying("wb", "y", 2)]).await;
    let node = join(&server, &rt, "weigher").await;
    let plain = Decide {
        voters: 5,
        options: DecisionOptions {
            protocol: Protocol::Weighted,
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread: false,
    };
    let weighed = Decide {
        role_weights: [("wb".to_owned(), 2.0)].into(),
        ..plain.clone()
    };
    // The decision ends once its outcome is certain: `x` with its three ballots (3 of 5);
    // weighed, `x` can reach only 3 of 7, and `y` wins with its two (4 of 7).
    for (how, wins) in [(plain, "x"), (weighed, "y")] {
        // No role: the voters are seated among both pools.
        let s = client
            .submit_decided(&task(None, "1".into(), 1), &how, None)
            .await
            .unwrap();
        let row = ended(&client, s.id).await;
        assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
        let output = String::from_utf8_lossy(row.output.as_deref().unwrap()).into_owned();
        assert_eq!(output.trim(), wins, "{row:?}");
        let d = row.decision.unwrap();
        assert_eq!((d.voters, d.reason.as_deref()), (5, None), "{d:?}");
    }
    node.drain().await;
    rt.shutdown().await;
}

/// A spread vote's voters span the nodes: each ballot is a cluster task, run by an agent of
/// any node, and the node that takes the vote counts them. Three nodes of one agent each
/// (two say `x` in 0.3 s, one `y` in 1.5 s): unspread, no node can seat three voters;
/// spread, all three vote and `x` wins against one dissenter. A fourth voter can only be an
/// agent that voted already: its seat is asked again, then counted as silent, and under
/// full participation the vote fails saying why. Decided before the slow ballot ends, the
/// vote cancels it. What a spread vote cannot count is refused when sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_vote_counts_ballots_from_agents_of_several_nodes() {
    use colony_cluster::Decide;
    use colony_core::decision::DecisionOptions;
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let saying =
        |word: &str, after: &str| sh_pool("judge", 1, &format!("sleep {after}; echo {word}"), &[]);
    let mut runtimes = Vec::new();
    let mut nodes = Vec::new();
    for (name, word, after) in [("a", "x", "0.3"), ("b", "x", "0.3"), ("c", "y", "1.5")] {
        let rt = start(vec![saying(word, after)]).await;
        nodes.push(join(&server, &rt, name).await);
        runtimes.push(rt);
    }
    let all_of = |voters: u32, spread: bool| Decide {
        voters,
        options: DecisionOptions {
            participation: 1.0,
            timeout: Duration::from_secs(30),
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread,
    };
    let spec = task(Some("judge"), "\"which?\"".into(), 1);

    let unspread = client
        .submit_decided(&spec, &all_of(3, false), None)
        .await
        .unwrap();
    let row = ended(&client, unspread.id).await;
    assert_eq!(row.state, TaskState::DeadLettered, "{row:?}");
    assert!(
        row.error
            .as_deref()
            .unwrap_or_default()
            .contains("3 voters"),
        "{row:?}"
    );

    let spread = client
        .submit_decided(&spec, &all_of(3, true), None)
        .await
        .unwrap();
    let row = ended(&client, spread.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    let output = String::from_utf8_lossy(row.output.as_deref().unwrap()).into_owned();
    assert_eq!(output.trim(), "x", "{row:?}");
    let d = row.decision.unwrap();
    assert_eq!(
        (d.voters, d.counted, d.dissenters, d.nodes),
        (3, 3, 1, Some(3)),
        "{d:?}"
    );

    let four = client
        .submit_decided(&spec, &all_of(4, true), None)
        .await
        .unwrap();
    let row = ended(&client, four.id).await;
    assert_eq!(row.state, TaskState::Failed, "{row:?}");
    let error = row.error.clone().unwrap_or_default();
    assert!(
        error.contains("no-quorum") && error.contains("had voted already"),
        "{error}"
    );
    let d = row.decision.unwrap();
    assert_eq!(
        (d.voters, d.counted, d.asked, d.nodes),
        (4, 3, 5, Some(3)),
        "{d:?}"
    );

    // Two of three decide under the default participation: the slow ballot still out is
    // cancelled, saying why.
    let since = now_ms();
    let early = Decide {
        options: DecisionOptions::default(),
        ..all_of(3, true)
    };
    let decided = client.submit_decided(&spec, &early, None).await.unwrap();
    let row = ended(&client, decided.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    assert_eq!(row.decision.unwrap().counted, 2);
    let mut records = client
        .records(colony_cluster::RecordsFrom::Since(since), u64::MAX)
        .await
        .unwrap()
        .records;
    loop {
        let record = tokio::time::timeout(Duration::from_secs(20), records.next())
            .await
            .expect("the slow ballot is cancelled")
            .unwrap()
            .unwrap();
        if record.row.state == TaskState::Cancelled {
            assert_eq!(
                record.row.error.as_deref(),
                Some("its vote ended without it"),
                "{record:?}"
            );
            break;
        }
    }

    let too_many = client
        .submit_decided(&spec, &all_of(1001, true), None)
        .await
        .unwrap_err();
    assert!(
        too_many.to_string().contains("at most 1000 voters"),
        "{too_many}"
    );

    for node in nodes {
        node.drain().await;
    }
    for rt in runtimes {
        rt.shutdown().await;
    }
}

/// The one worker of `rt` and its reputation's score, once it has `observations` of them
/// (waited for up to 10 s).
async fn reputation_once(rt: &Runtime, observations: u32) -> (u32, f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = rt
            .handle()
            .observe(|live| {
                let tree = &live.tree;
                (0..tree.len() as u32)
                    .map(colony_core::AgentId)
                    .find(|&a| tree.tier(a) == tree.worker_tier())
                    .map(|a| (a.0, live.reputation(a)))
            })
            .await
            .unwrap()
            .expect("a worker");
        if seen.1.observations() >= observations {
            return (seen.0, seen.1.score());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} observations, waiting for {observations}",
            seen.1.observations()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A spread vote that weighs its voters weighs each ballot by who ran it, as its record
/// says: the role of the agent's pool on its node, and its reputation there when asked.
/// Three nodes of one agent each, of role `big` (saying `y`) and `small` (two saying `x`),
/// a vote any agent may answer: unweighed `x` wins 2 to 1; with `big` weighing 3, `y` wins 3
/// to 2; by reputation too, each ballot's record gives its voter's role and reputation. A
/// decided vote feeds each voter's reputation on its node, the dissenter's down; a word of
/// it naming another role than the agent's is passed over. A node that does not say who
/// voted is refused when such a vote is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_vote_weighs_each_ballot_by_the_role_and_reputation_of_its_voter() {
    use colony_cluster::Decide;
    use colony_core::decision::{DecisionOptions, Protocol};
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let saying = |role: &str, word: &str| sh_pool(role, 1, &format!("sleep 0.2; echo {word}"), &[]);
    let mut runtimes = Vec::new();
    let mut nodes = Vec::new();
    for (name, role, word) in [("a", "big", "y"), ("b", "small", "x"), ("c", "small", "x")] {
        let rt = start(vec![saying(role, word)]).await;
        nodes.push(join(&server, &rt, name).await);
        runtimes.push(rt);
    }
    let vote = |weights: &[(&str, f64)], reputation: bool| Decide {
        voters: 3,
        options: DecisionOptions {
            protocol: Protocol::Weighted,
            participation: 1.0,
            timeout: Duration::from_secs(30),
            ..DecisionOptions::default()
        },
        reputation,
        role_weights: weights.iter().map(|(r, w)| ((*r).to_owned(), *w)).collect(),
        spread: true,
    };
    let spec = task(None, "\"which?\"".into(), 1);
    let decided = |decide: Decide| {
        let (client, spec) = (&client, &spec);
        async move {
            let sent = client.submit_decided(spec, &decide, None).await.unwrap();
            let row = ended(client, sent.id).await;
            assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
            let output = String::from_utf8_lossy(row.output.as_deref().unwrap()).into_owned();
            (output.trim().to_owned(), row.decision.unwrap())
        }
    };
    let (won, d) = decided(vote(&[], false)).await;
    assert_eq!(
        (won.as_str(), d.counted, d.nodes),
        ("x", 3, Some(3)),
        "{d:?}"
    );
    // Each voter's node was told whether its agent agreed: one observation for answering
    // the ballot, one for the vote; `a`'s agent dissented.
    assert_eq!(d.asked, 3, "no seat asked again: {d:?}");
    let mut after = Vec::new();
    for rt in &runtimes {
        after.push(reputation_once(rt, 2).await);
    }
    let [(big, a), (_, b), (_, c)] = after[..] else {
        unreachable!()
    };
    assert!(a < b && (b - c).abs() < 1e-9, "{after:?}");
    // A word naming the agent with another role than its pool's is passed over, as is one
    // of a ballot that ended before the node's process started; with its own role, it is
    // fed, once however often the word names it.
    let nats = async_nats::connect(server.url()).await.unwrap();
    for (role, at_ms, observations) in [("small", None, 2), ("big", Some(1), 2), ("big", None, 3)] {
        let voted = serde_json::json!({"agent": big, "role": role, "agreed": true, "at_ms": at_ms});
        let word = serde_json::json!({"vote": 1, "voters": [voted, voted]});
        nats.publish("colony.agreed.a", word.to_string().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, seen) = reputation_once(&runtimes[0], observations).await;
        let now = runtimes[0]
            .handle()
            .observe(move |live| live.reputation(colony_core::AgentId(big)).observations())
            .await
            .unwrap();
        assert_eq!(now, observations, "role {role}: {seen}");
    }
    let (won, d) = decided(vote(&[("big", 3.0)], false)).await;
    assert_eq!(won, "y", "{d:?}");
    assert_eq!((d.counted, d.support), (3, Some(3.0 / 5.0)), "{d:?}");
    // `small` at 0: only `big`'s ballot weighs.
    let (won, d) = decided(vote(&[("small", 0.0)], false)).await;
    assert_eq!((won.as_str(), d.support), ("y", Some(1.0)), "{d:?}");

    let since = now_ms();
    let (_, d) = decided(vote(&[("big", 3.0)], true)).await;
    assert_eq!(d.counted, 3, "{d:?}");
    let mut records = client
        .records(colony_cluster::RecordsFrom::Since(since), u64::MAX)
        .await
        .unwrap()
        .records;
    let mut voters = Vec::new();
    while voters.len() < 3 {
        let record = tokio::time::timeout(Duration::from_secs(20), records.next())
            .await
            .expect("the ballots' records")
            .unwrap()
            .unwrap();
        if let Some(voter) = record
            .row
            .voter
            .filter(|_| record.row.state == TaskState::Succeeded)
        {
            let reputation = voter.reputation.expect("asked for");
            assert!((0.0..=1.0).contains(&reputation), "{reputation}");
            voters.push(voter.role);
        }
    }
    voters.sort();
    assert_eq!(voters, ["big", "small", "small"]);

    // A vote whose every voter would weigh 0: refused when sent.
    let nothing = client
        .submit_decided(
            &task(Some("small"), "1".into(), 1),
            &vote(&[("small", 0.0)], false),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(nothing.contains("weighs 0"), "{nothing}");
    // A node that would not say who voted serves the vote's role: refused when sent.
    let old = old_node(
        &server,
        "small",
        serde_json::json!({"votes": true, "weights": true, "spread": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = client
        .submit_decided(&spec, &vote(&[("big", 3.0)], false), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("node old") && refused.contains("weighs its voters"),
        "{refused}"
    );
    old.delete("old").await.unwrap();

    for node in nodes {
        node.drain().await;
    }
    for rt in runtimes {
        rt.shutdown().await;
    }
}

/// A spread vote of more rounds asks each round's ballots as cluster tasks: under `fast`, a
/// first round short of 3/4 asks every seat again for a majority; under `leader`, the
/// proposal is asked, then reviews of it (payloads with a `review` field); a tie under
/// `judge` asks one more task, whose payload lists the candidates under `judge`. Nodes `a`
/// and `c` say `x`, `b` says `y`; every agent approves a review and, as a judge, names `y`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_vote_takes_its_rounds_and_its_judge_across_the_cluster() {
    use colony_cluster::Decide;
    use colony_core::decision::{DecisionOptions, Protocol, Tie};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let saying = |word: &str| {
        let script = format!(
            "p=$(cat); sleep 0.3; case \"$p\" in *'\"judge\"'*) echo y;; *'\"review\"'*) echo approve;; *) echo {word};; esac"
        );
        sh_pool("voter", 1, &script, &[])
    };
    let mut runtimes = Vec::new();
    let mut nodes = Vec::new();
    for (name, word) in [("a", "x"), ("b", "y"), ("c", "x")] {
        let rt = start(vec![saying(word)]).await;
        nodes.push(join(&server, &rt, name).await);
        runtimes.push(rt);
    }
    let vote = |voters: u32, protocol: Protocol, tie: Tie| Decide {
        voters,
        options: DecisionOptions {
            protocol,
            tie,
            participation: 1.0,
            timeout: Duration::from_secs(30),
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread: true,
    };
    let spec = task(Some("voter"), r#"{"q": "which?"}"#.into(), 1);
    let output = |row: &colony_cluster::Row| {
        String::from_utf8_lossy(row.output.as_deref().unwrap_or_default())
            .trim()
            .to_owned()
    };

    // x, y, x is short of 3/4: every seat is asked again, and a majority decides.
    let fast = client
        .submit_decided(&spec, &vote(3, Protocol::Fast, Tie::Fail), None)
        .await
        .unwrap();
    let row = ended(&client, fast.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    assert_eq!(output(&row), "x", "{row:?}");
    let d = row.decision.clone().unwrap();
    assert_eq!(d.protocol, Protocol::Fast);
    assert!(d.asked >= 6, "two rounds of three: {d:?}");
    assert!(d.counted >= 2, "{d:?}");

    // The proposal (whichever node's agent makes it) is approved by the two reviews.
    let leader = client
        .submit_decided(&spec, &vote(3, Protocol::Leader, Tie::Fail), None)
        .await
        .unwrap();
    let row = ended(&client, leader.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    assert!(["x", "y"].contains(&output(&row).as_str()), "{row:?}");
    let d = row.decision.clone().unwrap();
    assert!(d.asked >= 3, "a proposal and two reviews: {d:?}");
    assert_eq!(d.nodes, Some(3), "the proposer and two reviewers: {d:?}");

    // Two voters on `a` and `b` tie; the judge's choice wins.
    let c = nodes.pop().unwrap();
    c.drain().await;
    let judged = client
        .submit_decided(&spec, &vote(2, Protocol::Majority, Tie::Judge), None)
        .await
        .unwrap();
    let row = ended(&client, judged.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    assert_eq!(output(&row), "y", "{row:?}");
    let d = row.decision.clone().unwrap();
    assert!(d.asked >= 3, "two ballots and a judge: {d:?}");
    assert_eq!((d.counted, d.dissenters), (2, 1), "{d:?}");

    for node in nodes {
        node.drain().await;
    }
    for rt in runtimes {
        rt.shutdown().await;
    }
}

/// The scaling leader appends each step it decides on a role's size to the roles' stream,
/// beside the samples, for the charts: a node of one agent busy with long tasks is short
/// (its utilisation 1, its backlog waiting), and the leader's step up is read back from the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_leader_marks_each_step_in_the_roles_stream() {
    use colony_cluster::roles::RoleEvent;
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let rt = runtime("w", 1, Duration::from_secs(4)).await;
    let node = join(&server, &rt, "a").await;
    let specs: Vec<TaskSpec> = (0..3).map(|i| task(Some("w"), i.to_string(), 1)).collect();
    client.submit(&specs, None).await.unwrap();
    let mut events = client.role_samples(None).await.unwrap();
    let scaling = colony_cluster::scaling::Scaling::start(
        client.clone(),
        "s1",
        colony_cluster::scaling::ScalingPlan {
            lease: Duration::from_secs(2),
            period: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let step = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.next().await {
            // A step taken; the holds marked beside (the idle `*` role at its floor) are not.
            if let RoleEvent::Decision(step) = event.unwrap().1
                && step.blocked_by.is_none()
            {
                return step;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("a step within 20 s");
    assert_eq!(step.role, "w", "{step:?}");
    // Up, from the leader's last record of the role (its first record is no step).
    assert!(step.from >= 1 && step.to > step.from, "{step:?}");
    assert!(!step.reason.is_empty(), "{step:?}");
    assert!(step.t.abs_diff(now_ms()) < 20_000, "{step:?}");
    scaling.resign().await;
    node.drain().await;
    rt.shutdown().await;
}

/// A node draining while it counts a spread vote waits for it up to its drain timeout, then
/// hands the vote back without costing it an attempt: the ballots still out are cancelled,
/// and another node counts the vote again from ballots of its own. The node that took it
/// first has the only agent (a slow one) when the vote starts; two fast nodes join once
/// that agent holds a ballot.
/// (A hand-back is a delivery more, and no attempt charged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_vote_on_a_draining_node_is_handed_back_and_counted_elsewhere() {
    use colony_cluster::Decide;
    use colony_core::decision::DecisionOptions;
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let slow = runtime("judge", 1, Duration::from_secs(30)).await;
    let mut opts = options("first");
    opts.drain_timeout = Duration::from_millis(500);
    let first = Node::start(cluster(&server).await, slow.handle().clone(), opts)
        .await
        .unwrap();
    let vote = Decide {
        voters: 2,
        options: DecisionOptions {
            participation: 1.0,
            timeout: Duration::from_secs(60),
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread: true,
    };
    // One attempt: a hand-back that cost one would dead-letter it.
    let spec = task(Some("judge"), "\"which?\"".into(), 1);
    let submitted = client.submit_decided(&spec, &vote, None).await.unwrap();
    let since = now_ms();
    until_running(&client, submitted.id).await;
    // The fast nodes join once the slow agent holds a ballot of the vote (its lease written
    // a second in): had they joined before, they could answer both ballots and decide the
    // vote on the first node within its drain timeout, and nothing would be handed back
    // (one run in twelve under load).
    let mut records = client
        .records(colony_cluster::RecordsFrom::Since(since), u64::MAX)
        .await
        .unwrap()
        .records;
    loop {
        let record = tokio::time::timeout(Duration::from_secs(20), records.next())
            .await
            .expect("a ballot runs on the first node")
            .unwrap()
            .unwrap();
        let row = &record.row;
        if record.id != submitted.id && row.node == "first" && row.state == TaskState::Running {
            break;
        }
    }
    let fast = [
        runtime("judge", 1, Duration::from_millis(1)).await,
        runtime("judge", 1, Duration::from_millis(1)).await,
    ];
    let others = [
        join(&server, &fast[0], "b").await,
        join(&server, &fast[1], "c").await,
    ];
    let report = first.drain().await;
    assert!(report.handed_back >= 1, "{report:?}");
    let row = ended(&client, submitted.id).await;
    assert_eq!(
        (row.state, row.charged),
        (TaskState::Succeeded, 1),
        "{row:?}"
    );
    assert!(row.node == "b" || row.node == "c", "{row:?}");
    let d = row.decision.unwrap();
    assert_eq!((d.voters, d.counted, d.nodes), (2, 2, Some(2)), "{d:?}");
    // The first count's slow ballot is cancelled by its dropped count and handed back by
    // its draining node at once: whichever lands first, it ends without being counted.
    for node in others {
        node.drain().await;
    }
    slow.shutdown().await;
    for rt in fast {
        rt.shutdown().await;
    }
}

/// A node counts at most 256 spread votes at once: past that a vote's delivery goes back to
/// the stream for a moment, without costing an attempt (each vote here has one), and every
/// vote is counted in the end. 300 votes of one voter each, whose ballots take 10 s on one
/// of 300 agents (so that their slots never stop the node taking votes): the first 256 are
/// still counting when the rest come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_votes_past_the_counting_table_wait_without_costing_an_attempt() {
    use colony_cluster::Decide;
    use colony_core::decision::DecisionOptions;
    const VOTES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let rt = runtime("judge", VOTES as u32, Duration::from_secs(10)).await;
    let mut opts = options("counter");
    opts.max_in_flight = 2 * VOTES;
    let node = Node::start(cluster(&server).await, rt.handle().clone(), opts)
        .await
        .unwrap();
    let vote = Decide {
        voters: 1,
        options: DecisionOptions {
            timeout: Duration::from_secs(120),
            ..DecisionOptions::default()
        },
        reputation: false,
        role_weights: Default::default(),
        spread: true,
    };
    // Sent at once: the table fills before the first ballots end.
    let specs: Vec<TaskSpec> = (0..VOTES)
        .map(|i| task(Some("judge"), format!("{i}"), 1))
        .collect();
    let sent = futures::future::join_all(
        specs
            .iter()
            .map(|spec| client.submit_decided(spec, &vote, None)),
    )
    .await;
    let ids: Vec<u64> = sent.into_iter().map(|s| s.unwrap().id).collect();
    let mut went_back = 0;
    for (i, id) in ids.into_iter().enumerate() {
        let row = tokio::time::timeout(Duration::from_secs(120), client.wait(id))
            .await
            .expect("every vote ends")
            .unwrap();
        assert_eq!(
            (row.state, row.charged),
            (TaskState::Succeeded, 1),
            "{row:?}"
        );
        assert_eq!(row.output.as_deref(), Some(format!("{i}").as_bytes()));
        if row.attempt > 1 {
            went_back += 1;
        }
    }
    assert!(
        went_back >= VOTES - 256,
        "only {went_back} votes went back, yet at most 256 count at once"
    );
    let report = node.drain().await;
    assert_eq!(
        (report.retried, report.dead_lettered, report.fenced),
        (0, 0, 0),
        "{report:?}"
    );
    rt.shutdown().await;
}

/// A spread team's members are agents of any node: its lead on one node and its hands on
/// another, which no node can form alone. Each step's asks are cluster tasks of their role,
/// with the earlier steps' outputs as their context; a failed ask is made again while the
/// reassignments last, then the team fails naming the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_team_takes_its_members_from_several_nodes() {
    use colony_runtime::team::Team;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let lead = runtime("lead", 1, Duration::from_millis(1)).await;
    let hands = runtime("hand", 2, Duration::from_millis(1)).await;
    let failing = SimOptions {
        error_rate: 1.0,
        ..SimOptions::default()
    };
    let clumsy = start(vec![sim_pool("clumsy", 2, failing)]).await;
    let nodes = [
        join(&server, &lead, "l").await,
        join(&server, &hands, "h").await,
        join(&server, &clumsy, "c").await,
    ];
    let team = |hands: &str, spread: bool| Team {
        roles: vec![team_role("lead", 1), team_role(hands, 2)],
        steps: vec![team_step("plan", 0, false), team_step("work", 1, true)],
        reassignments: 1,
        delegation: 0,
        spread,
    };
    let spec = TaskSpec {
        requirement: Requirement {
            role: Some("lead".into()),
            ..Requirement::default()
        },
        payload: Bytes::from(r#"{"input":{"job":"build it"}}"#),
        max_attempts: 1,
        ..TaskSpec::default()
    };

    // Unspread, the node of the lead has no hands: the team cannot form.
    let alone = client
        .submit_team(&spec, team("hand", false), None)
        .await
        .unwrap();
    let row = ended(&client, alone.id).await;
    assert_ne!(row.state, TaskState::Succeeded, "{row:?}");

    let spread = client
        .submit_team(&spec, team("hand", true), None)
        .await
        .unwrap();
    let row = ended(&client, spread.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    // Each hand echoed what it was asked: the step, its place, and the lead's plan.
    let work: serde_json::Value = serde_json::from_slice(row.output.as_deref().unwrap()).unwrap();
    let work = work.as_array().unwrap();
    assert_eq!(work.len(), 2, "{work:?}");
    for (i, ask) in work.iter().enumerate() {
        assert_eq!(
            (
                &ask["team"]["step"],
                &ask["team"]["index"],
                &ask["team"]["of"]
            ),
            (&"work".into(), &i.into(), &2.into()),
            "{ask}"
        );
        assert_eq!(ask["input"]["job"], "build it", "{ask}");
        assert_eq!(
            ask["team"]["context"]["plan"]["team"]["step"], "plan",
            "{ask}"
        );
    }
    let t = row.team.unwrap();
    assert_eq!(
        (
            t.members,
            t.steps,
            t.asks,
            t.reassigned,
            t.together,
            t.nodes
        ),
        (3, 2, 3, 0, false, Some(2)),
        "{t:?}"
    );

    // A job of 600 kB, echoed by the lead as its plan: the hands' asks would carry it twice
    // (the input, and the plan in the context), over the cluster's payload, so the step
    // cannot be asked and the team fails for good, saying so.
    let big = TaskSpec {
        payload: Bytes::from(format!(
            r#"{{"input":{{"job":"{}"}}}}"#,
            "x".repeat(600_000)
        )),
        ..spec.clone()
    };
    let too_big = client
        .submit_team(&big, team("hand", true), None)
        .await
        .unwrap();
    let row = ended(&client, too_big.id).await;
    assert_eq!(row.state, TaskState::Failed, "{row:?}");
    let error = row.error.clone().unwrap_or_default();
    assert!(
        error.contains("step `work` could not be asked") && error.contains("over the cluster's"),
        "{error}"
    );
    assert_eq!(row.attempt, 1, "not tried again: {row:?}");

    // A role no live node serves: refused when sent rather than waited for.
    let nobody = Team {
        roles: vec![team_role("lead", 1), team_role("nobody", 1)],
        ..team("hand", true)
    };
    let refused = client.submit_team(&spec, nobody, None).await.unwrap_err();
    assert!(
        refused.to_string().contains("no live node serves it"),
        "{refused}"
    );

    // Hands that always fail: one ask is made again, then the team fails saying why.
    let clumsy_team = client
        .submit_team(&spec, team("clumsy", true), None)
        .await
        .unwrap();
    let row = ended(&client, clumsy_team.id).await;
    assert_eq!(row.state, TaskState::Failed, "{row:?}");
    let error = row.error.clone().unwrap_or_default();
    assert!(
        error.contains("step `work`") && error.contains("reassignments are spent"),
        "{error}"
    );
    assert_eq!(row.team.unwrap().reassigned, 1);

    for node in nodes {
        node.drain().await;
    }
    for rt in [lead, hands, clumsy] {
        rt.shutdown().await;
    }
}

/// A spread team's member may hand its ask on, as on one runtime: a lead on one node that
/// answers `{"delegate": {"role": "hand", ...}}` has its plan asked of a hand of another
/// node (with `delegated` in its ask), whose answer stands for the lead's; a delegation
/// back to a role on its chain, or past the levels the team allows (lead to relay to hand
/// at one level), fails the team saying why; a node that would refuse such a team makes
/// it refused when sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_teams_member_hands_its_ask_to_a_member_on_another_node() {
    use colony_runtime::team::Team;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    // The lead hands every ask on to the role its input names; the relay, to a hand.
    let script = r#"printf '{"delegate": {"role": "%s", "input": {"why": "busy"}}}' "$1""#;
    let handing = |role: &str, to: &str| sh_pool(role, 1, script, &[to]);
    let lead = start(vec![handing("lead", "{{input.to}}")]).await;
    let relay = start(vec![handing("relay", "hand")]).await;
    let hands = runtime("hand", 2, Duration::from_millis(1)).await;
    let nodes = [
        join(&server, &lead, "l").await,
        join(&server, &relay, "r").await,
        join(&server, &hands, "h").await,
    ];
    let team = |delegation: u32| Team {
        roles: vec![
            team_role("lead", 1),
            team_role("hand", 2),
            team_role("relay", 1),
        ],
        steps: vec![team_step("plan", 0, false), team_step("work", 1, true)],
        reassignments: 0,
        delegation,
        spread: true,
    };
    let spec = |to: &str| TaskSpec {
        requirement: Requirement {
            role: Some("lead".into()),
            ..Requirement::default()
        },
        payload: Bytes::from(format!(r#"{{"input":{{"job":"build it","to":"{to}"}}}}"#)),
        max_attempts: 1,
        ..TaskSpec::default()
    };

    let sent = client
        .submit_team(&spec("hand"), team(1), None)
        .await
        .unwrap();
    let row = ended(&client, sent.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    let work: serde_json::Value = serde_json::from_slice(row.output.as_deref().unwrap()).unwrap();
    let work = work.as_array().unwrap();
    assert_eq!(work.len(), 2, "{work:?}");
    for ask in work {
        // The plan in the context is the hand's answer to the ask handed on to it.
        let plan = &ask["team"]["context"]["plan"];
        assert_eq!(plan["team"]["step"], "plan", "{ask}");
        assert_eq!(plan["team"]["role"], "hand", "{ask}");
        assert_eq!(plan["team"]["delegated"]["by"], "lead", "{ask}");
        assert_eq!(plan["team"]["delegated"]["input"]["why"], "busy", "{ask}");
    }
    let t = row.team.unwrap();
    assert_eq!((t.steps, t.asks, t.nodes), (2, 4, Some(2)), "{t:?}");

    // Back to its own role: a loop, refused, and the team fails naming it.
    let sent = client
        .submit_team(&spec("lead"), team(1), None)
        .await
        .unwrap();
    let row = ended(&client, sent.id).await;
    assert_eq!(row.state, TaskState::Failed, "{row:?}");
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("step `plan`") && error.contains("cannot delegate to `lead`"),
        "{error}"
    );
    // Lead to relay to hand is two levels: past the one allowed, refused; allowed at two.
    let sent = client
        .submit_team(&spec("relay"), team(1), None)
        .await
        .unwrap();
    let row = ended(&client, sent.id).await;
    assert_eq!(row.state, TaskState::Failed, "{row:?}");
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("role `relay` cannot delegate to `hand`")
            && error.contains("deeper than 1 levels"),
        "{error}"
    );
    let sent = client
        .submit_team(&spec("relay"), team(2), None)
        .await
        .unwrap();
    let row = ended(&client, sent.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    let work: serde_json::Value = serde_json::from_slice(row.output.as_deref().unwrap()).unwrap();
    let plan = &work[0]["team"]["context"]["plan"];
    assert_eq!(plan["team"]["delegated"]["by"], "relay", "{plan}");
    assert_eq!(row.team.unwrap().asks, 5);
    // Without delegation the same answer is just an output: the hands get it as the plan.
    let sent = client
        .submit_team(&spec("hand"), team(0), None)
        .await
        .unwrap();
    let row = ended(&client, sent.id).await;
    assert_eq!(row.state, TaskState::Succeeded, "{row:?}");
    assert_eq!(row.team.unwrap().asks, 3);

    // A node that would refuse the header serves the team's role: refused when sent.
    let old = old_node(
        &server,
        "lead",
        serde_json::json!({"votes": true, "teams": true, "spread-teams": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = client
        .submit_team(&spec("hand"), team(1), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("node old") && refused.contains("delegates"),
        "{refused}"
    );
    old.delete("old").await.unwrap();

    for node in nodes {
        node.drain().await;
    }
    for rt in [lead, relay, hands] {
        rt.shutdown().await;
    }
}

/// A message from another process names its sender `cluster:<process>/<sender>`; a reply
/// sent to that name crosses back to the sender's own mailbox in its process, as from
/// `cluster:<replier's process>/<replier>`. An agent of the other process is reached the
/// same way (`cluster:<process>/agent-N`) when its mailbox is there; none is made for one
/// that has none. A name that is not `<process>/<endpoint>` is refused as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_sender_in_another_process_reaches_its_mailbox() {
    use colony_core::{
        AgentId,
        mailbox::{Address, Endpoint},
    };
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let plans = ["plans".to_owned()];
    let (bus_a, bus_b, _bridges) = two_bridged(&server, &plans, &plans).await;
    let asker = Endpoint::Named("asker".into());
    let mut asker_inbox = bus_a.open(asker.clone()).unwrap();
    let mut agent_inbox = bus_a.open(Endpoint::Agent(AgentId(3))).unwrap();
    let answerer = Endpoint::Named("answerer".into());
    bus_b.subscribe("plans", answerer.clone()).unwrap();
    let mut answerer_inbox = bus_b.open(answerer.clone()).unwrap();
    bus_a
        .send(
            asker.clone(),
            Address::Topic("plans".into()),
            bytes::Bytes::from("which?"),
        )
        .await
        .unwrap();
    let asked = tokio::time::timeout(Duration::from_secs(10), answerer_inbox.recv())
        .await
        .expect("the question crosses")
        .unwrap();
    let from = asked[0].from.clone();
    assert_eq!(from.to_string(), "cluster:a/asker");
    answerer_inbox.ack();
    // Answered to the sender's name, and to an agent of a, by name.
    for (to, body) in [
        (from, "this one"),
        (Endpoint::Named("cluster:a/agent-3".into()), "for the agent"),
        // No mailbox for agent 4 in a: dropped there, none made for it.
        (Endpoint::Named("cluster:a/agent-4".into()), "for nobody"),
    ] {
        bus_b
            .send(answerer.clone(), Address::To(to), bytes::Bytes::from(body))
            .await
            .unwrap();
    }
    // A name that is no `<process>/<endpoint>` is refused here, as any unknown mailbox.
    let nowhere = Endpoint::Named("cluster:nowhere".into());
    let refused = bus_b
        .send(
            answerer.clone(),
            Address::To(nowhere.clone()),
            bytes::Bytes::from("not carried"),
        )
        .await
        .unwrap_err();
    assert_eq!(refused, colony_runtime::messages::Error::NotOpen(nowhere));
    let answer = tokio::time::timeout(Duration::from_secs(10), asker_inbox.recv())
        .await
        .expect("the answer crosses back")
        .unwrap();
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].from.to_string(), "cluster:b/answerer");
    assert_eq!(&answer[0].body[..], b"this one");
    assert_eq!(answer[0].to, Address::To(asker.clone()));
    let agent = tokio::time::timeout(Duration::from_secs(10), agent_inbox.recv())
        .await
        .expect("the agent's message crosses")
        .unwrap();
    assert_eq!(&agent[0].body[..], b"for the agent");
    // Nothing else came: not the question back, and no mailbox was made for agent 4.
    tokio::time::sleep(Duration::from_millis(500)).await;
    asker_inbox.ack();
    assert!(asker_inbox.try_recv().unwrap().is_empty());
    assert!(answerer_inbox.try_recv().unwrap().is_empty());
    let mut agent_4 = bus_a.open(Endpoint::Agent(AgentId(4))).unwrap();
    assert!(agent_4.try_recv().unwrap().is_empty());
}

/// A batch submitted while the server restarts is taken whole, each task once, within a
/// few acknowledgement timeouts: the acknowledgements in flight are awaited together, so
/// those lost with the server are sent again at once, not one timeout after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_submitted_across_a_server_restart_is_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let specs: Vec<TaskSpec> = (0..300)
        .map(|i| task(Some("worker"), format!("{i}"), 1))
        .collect();
    let ids: Vec<String> = (0..300).map(|i| format!("restart-{i}")).collect();
    let first = client
        .submit(&specs[..100], Some(&ids[..100]))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.kill());
    let submitting = {
        let (client, specs, ids) = (client.clone(), specs.clone(), ids.clone());
        colony_agents::spawner::Spawner::spawn("submit-across-a-restart", async move {
            client.submit(&specs[100..], Some(&ids[100..])).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.start()).unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), submitting)
        .await
        .expect("the batch is taken within a few ack timeouts of the restart")
        .unwrap()
        .expect("no panic")
        .unwrap();
    let mut taken: Vec<u64> = first.iter().chain(&rest).map(|s| s.id).collect();
    taken.sort_unstable();
    taken.dedup();
    assert_eq!(taken.len(), 300, "each task its own message");
    assert_eq!(client.status().await.unwrap().unfinished, 300, "each once");
}

/// A bridge rides out NATS going away: what a sender publishes while the server is down
/// waits in the bridge, and once the server is back (the same store) it crosses to the other
/// process, in the order sent, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_topic_carries_what_was_sent_while_nats_was_down() {
    use colony_core::mailbox::{Address, Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let plans = ["plans".to_owned()];
    let (bus_a, bus_b, _bridges) = two_bridged(&server, &plans, &plans).await;
    let me = Endpoint::Named("reader-b".into());
    bus_b.subscribe("plans", me.clone()).unwrap();
    let mut on_b = bus_b.open(me).unwrap();
    let writer = Endpoint::Named("writer-a".into());
    let send = |from: usize, to: usize| {
        let (bus_a, writer) = (bus_a.clone(), writer.clone());
        async move {
            for i in from..to {
                bus_a
                    .send(
                        writer.clone(),
                        Address::Topic("plans".into()),
                        bytes::Bytes::from(i.to_string()),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let mut heard: Vec<String> = Vec::new();
    let mut hear = async |until: usize, within: Duration| {
        let deadline = tokio::time::Instant::now() + within;
        while heard.len() < until {
            let batch = tokio::time::timeout_at(deadline, on_b.recv())
                .await
                .unwrap_or_else(|_| panic!("heard only {heard:?}"))
                .unwrap();
            heard.extend(
                batch
                    .iter()
                    .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
            );
            on_b.ack();
        }
    };
    send(0, 10).await;
    hear(10, Duration::from_secs(10)).await;
    tokio::task::block_in_place(|| server.kill());
    // Sent into the bus while no server runs: held by a's bridge.
    send(10, 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| server.start()).unwrap();
    // Within a few seconds of the restart: one ack timeout (5 s) and a pause, not one
    // timeout for each message held.
    hear(20, Duration::from_secs(20)).await;
    let sent: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(heard, sent, "in the order sent, each once");
    // And nothing more comes: no message twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(on_b.try_recv().unwrap().is_empty());
}

/// Two processes' buses bridged on a topic: what a sender publishes on one reaches the
/// other's readers of the topic, in order, as sent by `cluster:<process>/<sender>`, and
/// never comes back to the process it came from; a topic a process does not bridge stays
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_bridged_by_two_processes_carries_their_messages_both_ways() {
    use colony_core::mailbox::{Address, Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    // a bridges `secrets` too; b does not, so b's readers of it hear nothing of a's.
    let both = ["plans".to_owned(), "secrets".to_owned()];
    let (bus_a, bus_b, _bridges) = two_bridged(&server, &both, &both[..1]).await;
    let reader = |bus: &colony_runtime::messages::Bus, name: &str, topic: &str| {
        let me = Endpoint::Named(name.into());
        bus.subscribe(topic, me.clone()).unwrap();
        bus.open(me).unwrap()
    };
    let mut on_a = reader(&bus_a, "reader-a", "plans");
    let mut on_b = reader(&bus_b, "reader-b", "plans");
    let mut secrets_b = reader(&bus_b, "reader-b2", "secrets");
    let writer_a = Endpoint::Named("writer-a".into());
    for i in 0..100 {
        bus_a
            .send(
                writer_a.clone(),
                Address::Topic("plans".into()),
                bytes::Bytes::from(i.to_string()),
            )
            .await
            .unwrap();
    }
    bus_a
        .send(
            writer_a.clone(),
            Address::Topic("secrets".into()),
            bytes::Bytes::from("mine"),
        )
        .await
        .unwrap();
    let mut heard = Vec::new();
    while heard.len() < 100 {
        let batch = tokio::time::timeout(Duration::from_secs(10), on_b.recv())
            .await
            .expect("the messages cross")
            .unwrap();
        for m in &batch {
            assert_eq!(m.from.to_string(), "cluster:a/writer-a");
            heard.push(String::from_utf8(m.body.to_vec()).unwrap());
        }
        on_b.ack();
    }
    let sent: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(heard, sent, "in the order sent");
    // And back: b's sender reaches a's reader, once.
    bus_b
        .send(
            Endpoint::Named("writer-b".into()),
            Address::Topic("plans".into()),
            bytes::Bytes::from("from b"),
        )
        .await
        .unwrap();
    let mut from_b = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut local = 0;
    while from_b.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "b's message did not reach a"
        );
        let batch = tokio::time::timeout(Duration::from_secs(10), on_a.recv())
            .await
            .expect("a message")
            .unwrap();
        for m in &batch {
            match m.from.to_string().as_str() {
                "writer-a" => local += 1,
                "cluster:b/writer-b" => from_b.push(m.body.clone()),
                other => panic!("{other} sent to a: nothing comes back to where it came from"),
            }
        }
        on_a.ack();
    }
    assert_eq!(local, 100, "a's own, once each");
    assert_eq!(from_b, [bytes::Bytes::from("from b")]);
    // Nothing more comes: no echo, and the topic b does not bridge stayed a's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(on_a.try_recv().unwrap().is_empty());
    // b's own reader heard b's sender, locally, once: not again through the cluster.
    let own: Vec<String> = on_b
        .try_recv()
        .unwrap()
        .iter()
        .map(|m| m.from.to_string())
        .collect();
    assert_eq!(own, ["writer-b"]);
    assert!(secrets_b.try_recv().unwrap().is_empty());
    // A body too large for a message is not carried, and does not hold up what follows.
    let big = bytes::Bytes::from(vec![b'x'; 1_040_000]);
    for body in [big, bytes::Bytes::from("after")] {
        bus_a
            .send(writer_a.clone(), Address::Topic("plans".into()), body)
            .await
            .unwrap();
    }
    let batch = tokio::time::timeout(Duration::from_secs(10), on_b.recv())
        .await
        .expect("the message after the large one crosses")
        .unwrap();
    let bodies: Vec<&[u8]> = batch.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"after".as_slice()]);
}

/// An agent that writes down the payload of each task it runs and fails the first run of a
/// task whose payload is `"flaky"` (retryable).
#[derive(Default)]
struct Flaky(std::sync::Mutex<Vec<String>>);

impl colony_agents::Agent for Flaky {
    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        let said = String::from_utf8_lossy(&task.payload).into_owned();
        let mut ran = self.0.lock().unwrap();
        let again = ran.contains(&said);
        ran.push(said.clone());
        if said == "\"flaky\"" && !again {
            return colony_agents::Execution::Done(Err(colony_agents::Error::retryable("flaky")));
        }
        colony_agents::Execution::Done(Ok(task.payload))
    }
}

/// Tasks bundled several to a message keep what a task alone has: each its own id, record,
/// attempts and cancel. A bundle's task cancelled while queued never runs, and the others
/// do; a retried task runs again alone (the others, ended, are not run twice); a bundle
/// holding more tasks than its node's slots runs them all; one message carries each
/// bundle; a node from before bundles keeps them from being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_tasks_keep_their_own_ids_attempts_and_cancels() {
    use colony_cluster::{Cancel, bundle};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    // A node from before bundles would run one as a single task: refused while it is live.
    let old = old_node(&server, "later", serde_json::json!({})).await;
    let specs: Vec<TaskSpec> = ["\"a\"", "\"b\"", "\"c\""]
        .iter()
        .map(|p| task(Some("later"), (*p).into(), 3))
        .collect();
    let err = client
        .submit_bundled(&specs, 8, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("node old") && err.contains("bundles"), "{err}");
    // One that reads bundles but takes none from their own subjects: refused too.
    let older = old_node(&server, "later", serde_json::json!({"bundles": true})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = client
        .submit_bundled(&specs, 8, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node old") && err.contains("own subjects"),
        "{err}"
    );
    drop(older);
    old.delete("old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Three tasks in one message, no node serving them yet: each its own id and record.
    let ids: Vec<u64> = client
        .submit_bundled(&specs, 8, None)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids.len(), 3);
    let (sequence, _) = bundle::message_of(ids[0]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(bundle::message_of(*id), (sequence, Some(i)));
        assert_eq!(client.task(*id).await.unwrap(), TaskView::Queued);
    }
    // One message, three tasks: counted as three, waiting for a role no node serves yet.
    let status = client.status().await.unwrap();
    assert_eq!(status.unfinished, 3);
    let later_role = status.roles.iter().find(|r| r.role == "later").unwrap();
    assert_eq!(
        (
            later_role.waiting,
            later_role.running,
            later_role.waiting_messages
        ),
        (3, 0, 1)
    );
    assert_eq!(later_role.tasks_per_message, Some(3.0));
    assert!(matches!(
        client
            .cancel(bundle::bundled_id(sequence, 3).unwrap(), "x")
            .await,
        Err(colony_cluster::Error::Unknown { .. })
    ));
    // The bundle's stream sequence is none of its tasks' ids: no task to look up, and a
    // cancel of it drops nothing (its three tasks stay queued).
    assert!(matches!(
        client.task(sequence).await,
        Err(colony_cluster::Error::Unknown { .. })
    ));
    assert!(matches!(
        client.cancel(sequence, "x").await,
        Err(colony_cluster::Error::Unknown { .. })
    ));
    for id in &ids {
        assert_eq!(client.task(*id).await.unwrap(), TaskView::Queued);
    }
    // Nor does waiting on it wait for ever.
    assert!(matches!(
        client.wait(sequence).await,
        Err(colony_cluster::Error::Unknown { .. })
    ));
    assert_eq!(
        client.cancel(ids[1], "not needed").await.unwrap(),
        Cancel::Cancelled { was: None }
    );
    // The others stay queued in the bundle.
    assert_eq!(client.task(ids[0]).await.unwrap(), TaskView::Queued);
    let agent = Arc::new(Flaky::default());
    let pool = Pool::new(AgentSpec::new("flaky", "later"), 2, agent.clone());
    let later = start(vec![pool]).await;
    let node = join(&server, &later, "n").await;
    for (id, state) in [
        (ids[0], TaskState::Succeeded),
        (ids[1], TaskState::Cancelled),
        (ids[2], TaskState::Succeeded),
    ] {
        assert_eq!(ended(&client, id).await.state, state, "task {id}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.status().await.unwrap().unfinished > 0 {
        assert!(std::time::Instant::now() < deadline, "the bundle is acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *agent.0.lock().unwrap(),
        ["\"a\"", "\"c\""],
        "the cancelled task never ran"
    );

    // Forty tasks in bundles of 16 (16, 16, 8) for a node of two agents: each ends once,
    // succeeded, the flaky one on its second attempt, run again alone.
    agent.0.lock().unwrap().clear();
    let payloads: Vec<String> = (0..40)
        .map(|i| match i {
            21 => "\"flaky\"".to_owned(),
            i => format!("\"t{i}\""),
        })
        .collect();
    let specs: Vec<TaskSpec> = payloads
        .iter()
        .map(|p| task(Some("later"), p.clone(), 3))
        .collect();
    let ids: Vec<u64> = client
        .submit_bundled(&specs, 16, Some("forty"))
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let messages: std::collections::BTreeSet<u64> =
        ids.iter().map(|id| bundle::message_of(*id).0).collect();
    assert_eq!(messages.len(), 3, "{ids:?}");
    // The same call again with its key: accepted once, under the same ids.
    let again = client
        .submit_bundled(&specs, 16, Some("forty"))
        .await
        .unwrap();
    assert!(again.iter().all(|s| s.duplicate), "{again:?}");
    assert_eq!(again.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    for (i, id) in ids.iter().enumerate() {
        let row = ended(&client, *id).await;
        assert_eq!(row.state, TaskState::Succeeded, "task {i}: {row:?}");
        assert_eq!(row.output.as_deref(), Some(payloads[i].as_bytes()));
        assert_eq!(row.attempt, if i == 21 { 2 } else { 1 }, "task {i}");
    }
    let ran = agent.0.lock().unwrap().clone();
    for p in &payloads {
        let times = ran.iter().filter(|r| *r == p).count();
        assert_eq!(times, if p == "\"flaky\"" { 2 } else { 1 }, "{p}: {ran:?}");
    }
    // The same key with the tasks grouped otherwise is another call: sent, not taken for
    // the first one's messages.
    let other = client
        .submit_bundled(&specs, 8, Some("forty"))
        .await
        .unwrap();
    assert!(other.iter().all(|s| !s.duplicate), "{other:?}");
    for s in &other {
        assert!(!ids.contains(&s.id));
        assert_eq!(ended(&client, s.id).await.state, TaskState::Succeeded);
    }
    let report = node.drain().await;
    assert_eq!(
        (
            report.succeeded,
            report.retried,
            report.cancelled,
            report.fenced
        ),
        (82, 1, 1, 0),
        "{report:?}"
    );
    assert_eq!(client.status().await.unwrap().unfinished, 0);
    later.shutdown().await;
}

/// A role's backlog counts each task of a bundle, so scaling on it sees the work: 40 tasks
/// in bundles of 16 and 5 plain ones wait for a role whose node left, and are counted 45,
/// both by the status and by the scaling leader's view; a node that joins runs them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roles_backlog_counts_the_tasks_of_its_bundles() {
    use colony_cluster::scaling::RoleView;
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    // A node made the role's consumers and left: they stay, and nothing pulls.
    let rt = runtime("packer", 2, Duration::from_millis(1)).await;
    join(&server, &rt, "first").await.drain().await;
    let specs: Vec<TaskSpec> = (0..40)
        .map(|i| task(Some("packer"), format!("\"b{i}\""), 3))
        .collect();
    let mut ids: Vec<u64> = client
        .submit_bundled(&specs, 16, None)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let plain: Vec<TaskSpec> = (0..5)
        .map(|i| task(Some("packer"), format!("\"p{i}\""), 3))
        .collect();
    ids.extend(
        client
            .submit(&plain, None)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id),
    );
    let status = client.status().await.unwrap();
    assert_eq!(status.unfinished, 45);
    let role = status.roles.iter().find(|r| r.role == "packer").unwrap();
    // 3 bundles (16, 16, 8) and 5 plain tasks: 8 messages.
    assert_eq!((role.waiting, role.running), (45, 0), "{role:?}");
    assert_eq!(role.waiting_messages, 8);
    assert_eq!(role.tasks_per_message, Some(45.0 / 8.0));
    let view = RoleView::of(&status, role, Duration::ZERO);
    assert_eq!((view.waiting, view.waiting_messages), (45, 8));

    let node = join(&server, &rt, "second").await;
    for id in &ids {
        assert_eq!(ended(&client, *id).await.state, TaskState::Succeeded);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.status().await.unwrap();
        let role = status.roles.iter().find(|r| r.role == "packer").unwrap();
        if (status.unfinished, role.waiting, role.running) == (0, 0, 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.drain().await;
    rt.shutdown().await;
}

/// A consumer made by a node from before bundles had subjects of their own takes plain
/// tasks only. A client widens it before it sends bundles to it (the role's nodes may all
/// be gone), so they are counted waiting at once; a node of this version widens those of
/// its roles as it starts; either way the bundles run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_before_bundles_had_subjects_is_widened() {
    use async_nats::jetstream::{self, consumer::pull};
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let client = cluster(&server).await;
    let nats = async_nats::connect(server.url()).await.unwrap();
    let stream = jetstream::new(nats)
        .get_stream("COLONY_TASKS")
        .await
        .unwrap();
    for priority in [5, 7] {
        stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("p{priority}-role-worker")),
                filter_subject: format!("colony.tasks.worker.p{priority}"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let filters = |name: &'static str| {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(name).await.unwrap();
            (info.config.filter_subject, info.config.filter_subjects)
        }
    };
    let specs: Vec<TaskSpec> = (0..3)
        .map(|i| task(Some("worker"), format!("\"{i}\""), 3))
        .collect();
    let ids: Vec<u64> = client
        .submit_bundled(&specs, 8, None)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let wide = vec![
        "colony.tasks.worker.p5".to_owned(),
        "colony.tasks.worker.p5.*".to_owned(),
    ];
    assert_eq!(filters("p5-role-worker").await, (String::new(), wide));
    let status = client.status().await.unwrap();
    let role = status.roles.iter().find(|r| r.role == "worker").unwrap();
    assert_eq!((role.waiting, role.waiting_messages), (3, 1), "{role:?}");
    // Priority 7's, which no bundle went to, is a node's to widen.
    assert_eq!(filters("p7-role-worker").await.1, Vec::<String>::new());
    let rt = runtime("worker", 2, Duration::from_millis(1)).await;
    let node = join(&server, &rt, "new").await;
    assert_eq!(
        filters("p7-role-worker").await.1,
        ["colony.tasks.worker.p7", "colony.tasks.worker.p7.*"]
    );
    for id in &ids {
        assert_eq!(ended(&client, *id).await.state, TaskState::Succeeded);
    }
    let mut urgent = specs.clone();
    for spec in &mut urgent {
        spec.priority = colony_core::task::Priority::new(7).unwrap();
    }
    for s in client.submit_bundled(&urgent, 8, None).await.unwrap() {
        assert_eq!(ended(&client, s.id).await.state, TaskState::Succeeded);
    }
    node.drain().await;
    rt.shutdown().await;
}

/// An attempt that ends while NATS is away for 20 s (its lease written before) is written
/// once the server is back, as the attempt it was: one attempt, succeeded, not charged as
/// lost by a delivery after it. (The same test passes on the node from before ends were
/// kept alive: the client sends its buffered write when it reconnects. What it guards
/// against there is a bucket electing a leader with the server up, which this does not
/// stage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_ends_while_nats_is_away_is_written_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let patient = Settings {
        ack_wait: Duration::from_secs(30),
        ..settings()
    };
    let url = server.url();
    let connect = || testing::connect(&url, patient.clone(), Duration::from_secs(20));
    let client = connect().await.expect("the cluster");
    let rt = start(vec![sh_pool("slow", 1, "sleep 3; echo done", &[])]).await;
    let node = Node::start(connect().await.unwrap(), rt.handle().clone(), options("n"))
        .await
        .unwrap();
    let sent = client
        .submit(&[task(Some("slow"), "1".into(), 1)], None)
        .await
        .unwrap();
    let id = sent[0].id;
    // Its lease written (after the lazy lease's second), the server goes away past the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !matches!(client.task(id).await, Ok(TaskView::Row(ref r)) if r.state == TaskState::Running)
    {
        assert!(std::time::Instant::now() < deadline, "the task's lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| server.kill());
    tokio::time::sleep(Duration::from_secs(20)).await;
    tokio::task::block_in_place(|| server.start()).unwrap();
    let row = ended(&client, id).await;
    assert_eq!(
        (row.state, row.attempt, row.charged),
        (TaskState::Succeeded, 1, 1),
        "{row:?}"
    );
    node.drain().await;
    rt.shutdown().await;
}
