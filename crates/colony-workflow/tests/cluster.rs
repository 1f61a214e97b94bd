//! What a run across a cluster cannot carry is refused before anything starts, each problem
//! naming its task or pool; a workflow of plain tasks, votes and memory has none, and runs
//! on a real `nats-server` with an in-process node.

use colony_agents::sim::{Sim, SimOptions};
use colony_cluster::{Node, NodeOptions, Settings, testing};
use colony_core::agent::AgentSpec;
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use colony_workflow::{
    Status,
    cluster::{ClusterOptions, refusals, run_on},
    load, load_for_cluster, parse,
};
use std::{path::Path, sync::Arc, time::Duration};

/// A real `nats-server`, node `n` on it with `agents` sim agents of role `sim` (they echo
/// their payload: what reached them is their output), and a client of the cluster.
struct OneNode {
    server: testing::NatsServer,
    rt: Runtime,
    node: Node,
    client: colony_cluster::Cluster,
    _bridge: Option<colony_cluster::bus::Bridge>,
}

async fn one_node(dir: &Path, agents: u32) -> OneNode {
    let sim = Sim::new(SimOptions::default()).unwrap();
    let pool = Pool::new(AgentSpec::new("sim", "sim"), agents, Arc::new(sim));
    node_of(dir, vec![pool], &[]).await
}

/// A real `nats-server`, node `n` on it with `pools`, its bus bridging `bridged` (before it
/// takes tasks, as `colony node --bridge-topic` does), and a client of the cluster.
async fn node_of(dir: &Path, pools: Vec<Pool>, bridged: &[String]) -> OneNode {
    let server = tokio::task::block_in_place(|| testing::NatsServer::single(dir)).unwrap();
    let settings = Settings {
        replicas: 1,
        ack_wait: Duration::from_secs(2),
        heartbeat_ttl: Duration::from_secs(3),
        ..Settings::default()
    };
    let url = server.url();
    let connect = || testing::connect(&url, settings.clone(), Duration::from_secs(20));
    let rt = Runtime::start(
        RuntimeOptions::default(),
        pools,
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let on_node = connect().await.unwrap();
    let bridge = match bridged.is_empty() {
        true => None,
        false => Some(
            colony_cluster::bus::Bridge::start(&on_node, rt.handle().messages(), "n", bridged)
                .await
                .unwrap(),
        ),
    };
    let node = Node::start(
        on_node,
        rt.handle().clone(),
        NodeOptions {
            name: "n".into(),
            max_in_flight: 16,
            drain_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    let client = connect().await.unwrap();
    OneNode {
        server,
        rt,
        node,
        client,
        _bridge: bridge,
    }
}

#[test]
fn what_needs_one_runtime_is_refused_naming_the_task_and_why() {
    let yaml = r#"name: w
agents:
  - { name: sim, kind: sim, count: 4 }
  - { name: paced, kind: sim, rate-per-minute: 60 }
  - { name: gpt-a, kind: sim, role: gpt }
  - { name: gpt-b, kind: sim, role: gpt }
  - { name: gpt-v, kind: sim, role: gpt, count: 2, capabilities: [vision] }
tasks:
  - id: sees
    role: gpt
    capabilities: [vision]
    decide: { voters: 2, protocol: weighted, weights: { gpt-v: 2 } }
  - { id: clash, role: gpt, decide: { voters: 2, protocol: weighted, weights: { gpt-a: 2 } } }
  - { id: vote, agent: sim, decide: { voters: 3 } }
  - { id: weighed, agent: sim, decide: { voters: 3, protocol: weighted, weights: { sim: 2 } } }
  - { id: talk, agent: sim, publish: words }
  - { id: listen, agent: sim, wait: { topic: words } }
  - { id: keep, agent: sim, remember: true }
  - { id: look, agent: sim, recall: { query: "x", k: 1 } }
  - { id: made, agent: sim, expect: { files: [out.txt] } }
  - { id: changed, agent: sim, expect: { git-diff: true } }
  - { id: plain, agent: sim, input: { n: 1 }, expect: { regex: "^1$" } }
"#;
    let workflow = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    let refused = refusals(&workflow);
    let has = |needle: &str| refused.iter().any(|r| r.contains(needle));
    for (what, why) in [
        ("task `clash`: `decide`", "pools of role `gpt` both 2 and 1"),
        ("task `made`: `expect: files`", "this machine"),
        ("task `changed`: `expect: git-diff`", "git checkout"),
        ("pool `paced`: `rate`", "paces"),
    ] {
        assert!(
            refused.iter().any(|r| r.contains(what) && r.contains(why)),
            "{what}: {refused:#?}"
        );
    }
    // A vote is taken by the node that takes the task, among its own agents; the memory and
    // the run's topics are the scheduler's.
    for carried in [
        "`plain`",
        "`vote`",
        "`weighed`",
        "`sees`",
        "`keep`",
        "`look`",
        "`talk`",
        "`listen`",
        "pool `sim`",
    ] {
        assert!(!has(carried), "{carried}: {refused:#?}");
    }
    assert_eq!(refused.len(), 4, "{refused:#?}");

    let plain = "name: p\nagents: [{ name: sim, kind: sim }]\ntasks:\n  - { id: a, agent: sim }\n  - { id: b, agent: sim, needs: [a], expect: { json: true } }\n";
    let workflow = parse(plain, "p.yaml", Path::new(".")).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
}

/// A vote spread over the cluster (`decide: spread`) is a cluster run's: its ballots go as
/// cluster tasks, counted by the node that takes the vote (in rounds, under `fast`), and
/// what such a vote cannot count (more than 1,000 voters) is refused before the run starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_vote_goes_to_the_cluster_and_what_it_cannot_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let refused = write(
        "refused.yaml",
        r#"name: r
agents:
  - { name: sim, kind: sim, count: 3 }
tasks:
  - { id: weighed, agent: sim, decide: { voters: 3, protocol: weighted, weights: { sim: 2 }, spread: true } }
  - { id: crowd, agent: sim, decide: { voters: 1001, spread: true } }
"#,
    );
    let delegating = write(
        "delegating.yaml",
        r#"name: d
agents:
  - { name: sim, kind: sim, count: 3 }
tasks:
  - id: crew
    team:
      roles: [{ name: lead, agent: sim, count: 1 }]
      steps: [{ id: plan, role: lead }]
      delegation: 1
      spread: true
"#,
    );
    // A spread team's members hand asks on as one runtime's do.
    let delegates = load_for_cluster(&delegating).unwrap();
    assert_eq!(refusals(&delegates), Vec::<String>::new());
    let refused = refusals(&load_for_cluster(&refused).unwrap());
    assert_eq!(refused.len(), 1, "{refused:#?}");
    // Weights cross as the roles' (each ballot weighed by who ran it); more voters than
    // cluster tasks a spread vote asks are refused.
    assert!(
        refused[0].contains("task `crowd`") && refused[0].contains("at most 1000 voters"),
        "{refused:#?}"
    );

    let OneNode {
        server: _server,
        rt,
        node,
        client,
        ..
    } = one_node(dir.path(), 3).await;
    let path = write(
        "spread.yaml",
        r#"name: s
agents:
  - { name: sim, kind: sim, count: 3 }
tasks:
  - { id: vote, agent: sim, input: { answer: 7 }, decide: { voters: 3, spread: true } }
  - id: crew
    input: { job: "build it" }
    team:
      size: 3
      roles: [{ name: lead, agent: sim, count: 1 }, { name: hand, agent: sim }]
      steps: [{ id: plan, role: lead }, { id: work, role: hand, each: true }]
      spread: true
  - { id: quick, agent: sim, input: { answer: 8 }, decide: { voters: 3, protocol: fast, spread: true } }
"#,
    );
    let workflow = load_for_cluster(&path).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
    let run = run_on(&client, &workflow, ClusterOptions::default());
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends within 2 minutes")
        .unwrap();
    let vote = &report.tasks[0];
    assert_eq!(vote.status, Status::Succeeded, "{vote:?}");
    let decided = vote.cluster_decision.as_ref().unwrap();
    // Decided once two of the three agree; the third may have voted by then.
    assert_eq!(
        (decided.voters, decided.dissenters, decided.nodes),
        (3, 0, Some(1)),
        "{decided:?}"
    );
    assert!((2..=3).contains(&decided.counted), "{decided:?}");
    // The team's asks went as cluster tasks: three, two of them the hands' at once.
    let crew = &report.tasks[1];
    assert_eq!(crew.status, Status::Succeeded, "{crew:?}");
    let worked = crew.cluster_team.as_ref().unwrap();
    assert_eq!(
        (worked.members, worked.steps, worked.asks, worked.together),
        (3, 2, 3, false),
        "{worked:?}"
    );
    // `fast` over the cluster: the three agree, so a round decides: the first, unless an
    // agent took two seats' ballots (its second is not counted, and asked again), which
    // leaves it short of 3/4 and a second round decides.
    let quick = &report.tasks[2];
    assert_eq!(quick.status, Status::Succeeded, "{quick:?}");
    let decided = quick.cluster_decision.as_ref().unwrap();
    assert_eq!(
        (decided.protocol, decided.voters, decided.dissenters),
        (colony_core::decision::Protocol::Fast, 3, 0),
        "{decided:?}"
    );
    assert!(decided.counted >= 2 && decided.asked >= 3, "{decided:?}");
    node.drain().await;
    rt.shutdown().await;
}

/// The workflow's memory is the scheduler's: a task's output is remembered once it came
/// back from its node and passed its checks, and a later task's query finds it in its input
/// before it goes. A vote goes to the node and comes back decided, with how it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_run_remembers_recalls_votes_and_forms_teams() {
    let dir = tempfile::tempdir().unwrap();
    let OneNode {
        server: _server,
        rt,
        node,
        client,
        ..
    } = one_node(dir.path(), 3).await;
    let yaml = r#"name: mem
agents:
  - { name: sim, kind: sim, count: 3 }
tasks:
  - { id: keep, agent: sim, input: { fact: "the sky is green" }, remember: true }
  - id: look
    agent: sim
    needs: [keep]
    input: { q: 1 }
    recall: { query: "sky green", k: 1 }
  - { id: vote, agent: sim, input: { answer: 42 }, decide: { voters: 3 } }
  - id: crew
    input: { job: "build it", complexity: 3 }
    team:
      size-from: { field: complexity, per: 1, min: 2, max: 3 }
      roles: [{ name: lead, agent: sim, count: 1 }, { name: hand, agent: sim }]
      steps: [{ id: plan, role: lead }, { id: work, role: hand, each: true }]
"#;
    let workflow = parse(yaml, "mem.yaml", dir.path()).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
    let out = dir.path().join("out");
    let run = run_on(
        &client,
        &workflow,
        ClusterOptions {
            output: Some(out.clone()),
            ..ClusterOptions::default()
        },
    );
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends within 2 minutes")
        .unwrap();
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    for id in ["keep", "look", "vote", "crew"] {
        assert_eq!(task(id).status, Status::Succeeded, "{:?}", task(id));
        assert_eq!(task(id).node.as_deref(), Some("n"));
    }
    let output = |id: &str| -> serde_json::Value {
        serde_json::to_value(task(id).output.as_ref().unwrap()).unwrap()
    };
    let recalled = &output("look")["input"]["recall"];
    assert_eq!(recalled[0]["id"], "keep", "{recalled}");
    assert!(
        recalled[0]["text"]
            .as_str()
            .unwrap()
            .contains("the sky is green"),
        "{recalled}"
    );
    assert!(out.join("memory.db").exists());
    assert_eq!(output("vote")["input"]["answer"], 42);
    let decided = task("vote").cluster_decision.as_ref().unwrap();
    assert_eq!((decided.voters, decided.dissenters), (3, 0));
    // A team of three (sized from the input's complexity) formed on the node: the lead's
    // plan, then each of the two hands at once; the output is theirs, in seat order.
    let worked = task("crew").cluster_team.as_ref().unwrap();
    assert_eq!(
        (worked.members, worked.steps, worked.asks, worked.reassigned),
        (3, 2, 3, 0),
        "{worked:?}"
    );
    let work = output("crew");
    assert_eq!(work.as_array().map(Vec::len), Some(2), "{work}");
    node.drain().await;
    rt.shutdown().await;
}

/// Checked for a run across a cluster, a file's pools only name roles: their programs need
/// not be on this machine, and a vote's voters or a team's members are not bounded by the
/// file's pool sizes (a node's own agents vote and form teams). Checked for a local run, the
/// same file is refused on all three counts.
#[test]
fn for_a_cluster_the_pools_are_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        r#"name: w
agents:
  - { name: coders, kind: command, command: { program: colony-no-such-program-here } }
tasks:
  - { id: vote, agent: coders, decide: { voters: 5 } }
  - id: crew
    team:
      size: 4
      roles: [{ name: coder, agent: coders }]
      steps: [{ id: s, role: coder }]
"#,
    )
    .unwrap();
    let here = load(&file).unwrap_err().to_string();
    let local = match load(&file).unwrap_err() {
        colony_workflow::Error::Invalid(invalid) => invalid.problems,
        e => panic!("{e}"),
    };
    let said = |needle: &str| local.iter().any(|p| p.message.contains(needle));
    assert!(said("colony-no-such-program-here"), "{here}: {local:#?}");
    assert!(said("asks for 5 voters"), "{local:#?}");
    assert!(said("needs 4 members"), "{local:#?}");
    let workflow = load_for_cluster(&file).unwrap();
    assert!(workflow.tasks[0].decide.is_some() && workflow.tasks[1].team.is_some());
    assert_eq!(refusals(&workflow), Vec::<String>::new());
}

/// The run's topics are the scheduler's: a task that waits is sent only once its message
/// came, and finds it in its input; the publisher's output is published once it came back
/// from its node. A wait that hears nothing by its deadline fails its task and skips its
/// dependents, sending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_run_links_tasks_by_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let OneNode {
        server: _server,
        rt,
        node,
        client,
        ..
    } = one_node(dir.path(), 2).await;
    // `listen` is first in the file, so ready first: it waits while `plan` runs.
    let yaml = r#"name: talk
agents:
  - { name: sim, kind: sim, count: 2 }
tasks:
  - { id: listen, agent: sim, input: { q: 1 }, wait: { topic: plans, timeout: 30s } }
  - { id: plan, agent: sim, input: { plan: "build it" }, publish: plans }
  - { id: deaf, agent: sim, input: { q: 2 }, wait: { topic: nobody, timeout: 1s } }
  - { id: after, agent: sim, needs: [deaf] }
"#;
    let workflow = parse(yaml, "talk.yaml", dir.path()).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
    let run = run_on(
        &client,
        &workflow,
        ClusterOptions {
            output: Some(dir.path().join("out")),
            ..ClusterOptions::default()
        },
    );
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends within a minute")
        .unwrap();
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    for id in ["listen", "plan"] {
        assert_eq!(task(id).status, Status::Succeeded, "{:?}", task(id));
        assert_eq!(task(id).node.as_deref(), Some("n"));
    }
    let heard: serde_json::Value =
        serde_json::to_value(task("listen").output.as_ref().unwrap()).unwrap();
    let message = &heard["input"]["message"];
    assert_eq!(message["topic"], "plans", "{heard}");
    assert_eq!(message["from"], "workflow/plan", "{heard}");
    assert_eq!(message["body"]["input"]["plan"], "build it", "{heard}");
    assert_eq!(heard["input"]["q"], 1, "{heard}");
    // Nothing was published on `nobody`: the wait fails its task, never sent to a node.
    let deaf = task("deaf");
    assert_eq!(deaf.status, Status::Failed);
    assert_eq!(
        deaf.error.as_deref(),
        Some("wait: no message on topic `nobody` within 1s")
    );
    assert_eq!(deaf.node, None, "{deaf:?}");
    assert_eq!(task("after").status, Status::Skipped);
    assert_eq!(node.report().succeeded, 2, "{:?}", node.report());
    node.drain().await;
    rt.shutdown().await;
}

/// An agent on a node reaches a run's topic through the cluster's bus: the node bridges
/// `signals` (`colony node --bridge-topic`), the run bridges its own topics, and a task
/// waiting on `signals` gets what the node's agent published there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_node_publishes_to_a_task_of_the_run_waiting_on_its_topic() {
    use colony_core::mailbox::Address;
    /// Publishes `{"go": true}` on `signals`, then answers.
    struct Herald;
    impl colony_agents::Agent for Herald {
        fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
            let sent = task
                .mail
                .send(Address::Topic("signals".into()), r#"{"go":true}"#);
            colony_agents::Execution::Running(Box::pin(async move {
                sent.await.map_err(colony_agents::Error::fatal)?;
                Ok(bytes::Bytes::from_static(b"\"said\""))
            }))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new(SimOptions::default()).unwrap();
    let pools = vec![
        Pool::new(AgentSpec::new("sim", "sim"), 2, Arc::new(sim)),
        Pool::new(AgentSpec::new("herald", "herald"), 1, Arc::new(Herald)),
    ];
    let OneNode {
        server: _server,
        rt,
        node,
        client,
        _bridge,
    } = node_of(dir.path(), pools, &["signals".to_owned()]).await;
    let yaml = r#"name: herald
agents:
  - { name: sim, kind: sim, count: 2 }
  - { name: herald, kind: sim, role: herald }
tasks:
  - { id: listen, agent: sim, input: { q: 1 }, wait: { topic: signals, timeout: 30s } }
  - { id: shout, agent: herald, input: { x: 1 } }
"#;
    let workflow = parse(yaml, "herald.yaml", dir.path()).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
    let options = ClusterOptions {
        bridge_topics: true,
        ..ClusterOptions::default()
    };
    let run = run_on(&client, &workflow, options);
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends within a minute")
        .unwrap();
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    for id in ["listen", "shout"] {
        assert_eq!(task(id).status, Status::Succeeded, "{:?}", task(id));
    }
    let heard: serde_json::Value =
        serde_json::to_value(task("listen").output.as_ref().unwrap()).unwrap();
    let message = &heard["input"]["message"];
    assert_eq!(message["topic"], "signals", "{heard}");
    assert_eq!(message["body"]["go"], true, "{heard}");
    assert!(
        message["from"].as_str().unwrap().starts_with("cluster:n/"),
        "{heard}"
    );
    node.drain().await;
    rt.shutdown().await;
}
