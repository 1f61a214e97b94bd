//! Messages between a real runtime's agents: an agent's mailbox outlives its restarts, and
//! what a retired agent held goes back to its senders.

use bytes::Bytes;
use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint},
};
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions, messages::Error};
// (tempfile: the marker file of the process agent's test.)
use std::{sync::Arc, time::Duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_outlives_restarts_and_a_retired_agents_messages_come_back() {
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        4,
        Arc::new(Sim::new(SimOptions::default()).unwrap()),
    );
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let mut workers: Vec<AgentId> = h
        .observe(|live| live.tree.agents_in_tier(live.tree.worker_tier()))
        .await
        .unwrap();
    workers.sort_unstable();
    let bus = h.messages();
    let me = Endpoint::Named(Arc::from("me"));
    let mut mine = bus.open(me.clone()).unwrap();
    // An id the runtime never had is refused from the start.
    let e = bus
        .send(
            me.clone(),
            Address::To(Endpoint::Agent(AgentId(4_000_000_000))),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoMailbox(_)));

    // A worker killed and restarted reads what was sent to it before.
    let first = Endpoint::Agent(workers[0]);
    bus.send(
        me.clone(),
        Address::To(first.clone()),
        Bytes::from_static(b"before"),
    )
    .await
    .unwrap();
    h.kill(workers[0]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut inbox = bus.open(first).unwrap();
    let got = inbox.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"before");

    // The newest idle worker goes first when the pool shrinks: its unread messages come
    // back to their sender, and it can be sent nothing more.
    let last = Endpoint::Agent(*workers.last().unwrap());
    for body in ["a", "b"] {
        bus.send(me.clone(), Address::To(last.clone()), Bytes::from(body))
            .await
            .unwrap();
    }
    assert_eq!(h.retire(0, 1).await.unwrap(), 1);
    let back = mine.try_recv().unwrap();
    let bodies: Vec<&[u8]> = back.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"a", b"b"]);
    assert!(back.iter().all(|m| m.returned.as_ref().unwrap().by == last));
    let e = bus
        .send(me.clone(), Address::To(last.clone()), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e, Error::NoMailbox(last));
    // An id past the tree's end is no agent.
    let e = bus
        .send(
            me,
            Address::To(Endpoint::Agent(AgentId(1_000_000))),
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoMailbox(_)));
    assert_eq!(bus.stats().returned, 2);
    runtime.shutdown().await;
}

/// A `process` agent that asks for messages: subscribes to `news` once told its agent,
/// answers each message to its sender with `echo:BODY:PID`, and acknowledges each batch.
/// `die` makes it exit before acknowledging, once (a marker file says it did).
const TALKER: &str = r#"
import json, os, sys
mark = sys.argv[1]
print(json.dumps({"type": "hello", "protocol": 1, "messages": True}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "agent":
        print(json.dumps({"type": "subscribe", "topic": "news"}), flush=True)
    elif m["type"] == "messages":
        for msg in m["messages"]:
            if msg["body"] == "die" and not os.path.exists(mark):
                open(mark, "w").close()
                os._exit(3)
            body = "echo:" + msg["body"] + ":" + str(os.getpid())
            print(json.dumps({"type": "send", "to": msg["from"], "body": body}), flush=True)
        print(json.dumps({"type": "send", "to": {"agent": 4000000000}, "body": "x"}), flush=True)
        print(json.dumps({"type": "read", "batch": m["batch"]}), flush=True)
    elif m["type"] == "refused":
        print(json.dumps({"type": "send", "to": {"mailbox": "me"}, "body": "refused:" + m["error"]}), flush=True)
    elif m["type"] == "task":
        print(json.dumps({"type": "result", "id": m["id"], "output": {"pid": os.getpid()}}), flush=True)
"#;

/// Reads `inbox` until `enough` says so of what came, or 10 s passed.
async fn read(
    inbox: &mut colony_runtime::messages::Inbox,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !enough(&got) {
        match tokio::time::timeout_at(until, inbox.recv()).await {
            Ok(Ok(batch)) => got.extend(
                batch
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
            ),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_agent_reads_its_mailbox_answers_and_loses_nothing_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("died");
    let mut options = colony_agents::process::ProcessOptions::new("python3");
    options.args = vec!["-c".into(), TALKER.into(), mark.to_str().unwrap().into()];
    let pool = Pool::new(
        AgentSpec::new("talker", "worker"),
        1,
        Arc::new(colony_agents::process::Process::new(options)),
    );
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let bus = h.messages().clone();
    let me = Endpoint::Named(Arc::from("me"));
    let mut mine = bus.open(me.clone()).unwrap();
    // Its first task starts its process, which is told its agent and subscribes.
    let done = h
        .submit_wait(colony_core::task::TaskSpec::with_payload("{}"))
        .await
        .unwrap();
    let agent = done.agent.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.topics().is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bus.topics(), [(Arc::from("news"), 1)]);

    let sent = bus
        .send(
            me.clone(),
            Address::Topic("news".into()),
            Bytes::from_static(b"hello"),
        )
        .await
        .unwrap();
    assert_eq!(sent.delivered, 1);
    let got = read(&mut mine, |g| g.len() >= 2).await;
    assert!(got[0].starts_with("echo:hello:"), "{got:?}");
    // Its send to an agent that does not exist came back to it as refused, and it said so.
    assert!(
        got[1].starts_with("refused:") && got[1].contains("no mailbox"),
        "{got:?}"
    );
    let first_pid = got[0].rsplit(':').next().unwrap().to_owned();

    // Directly to the agent: `die` kills the process before it acknowledges, with `after`
    // in the same batch or behind it. Its next process reads them again and answers both.
    for body in ["die", "after"] {
        bus.send(
            me.clone(),
            Address::To(Endpoint::Agent(agent)),
            Bytes::from(body),
        )
        .await
        .unwrap();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !mark.exists() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(mark.exists(), "the process never read `die`");
    // The agent's next task starts its next process.
    let again = h
        .submit_wait(colony_core::task::TaskSpec::with_payload("{}"))
        .await
        .unwrap();
    assert_eq!(again.agent, Some(agent));
    let echoes = |g: &[String]| g.iter().filter(|b| b.starts_with("echo:")).count();
    let got = read(&mut mine, |g| echoes(g) >= 2).await;
    let echoes: Vec<&String> = got.iter().filter(|b| b.starts_with("echo:")).collect();
    assert_eq!(echoes.len(), 2, "{got:?}");
    assert!(
        echoes[0].starts_with("echo:die:") && echoes[1].starts_with("echo:after:"),
        "{got:?}"
    );
    assert!(
        !echoes[0].ends_with(&first_pid),
        "answered by the process that died: {got:?}"
    );
    assert!(bus.stats().redelivered >= 1);
    runtime.shutdown().await;
}

/// An in-process agent that reaches the bus through its attempts' [`colony_agents::Task::mail`]:
/// `{"subscribe": TOPIC}` subscribes it, `{"send": BODY}` sends BODY to the `me` mailbox
/// (awaiting room), and `{"read": true}` answers with the bodies waiting in its mailbox;
/// with `"crash": true`, a batch holding `crash` panics the attempt before acknowledging.
struct Reader;

impl colony_agents::Agent for Reader {
    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        use colony_agents::{Error as Failed, Execution};
        let ask: serde_json::Value = serde_json::from_slice(&task.payload).unwrap();
        if let Some(topic) = ask["subscribe"].as_str() {
            return Execution::Done(
                task.mail
                    .subscribe(topic)
                    .map(|()| Bytes::from_static(b"{}"))
                    .map_err(Failed::fatal),
            );
        }
        if let Some(body) = ask["send"].as_str() {
            let sent = task.mail.send(
                Address::To(Endpoint::Named(Arc::from("me"))),
                body.to_owned(),
            );
            return Execution::Running(Box::pin(async move {
                let n = sent.await.map_err(Failed::fatal)?;
                Ok(Bytes::from(n.to_string()))
            }));
        }
        let mut inbox = match task.mail.open() {
            Ok(inbox) => inbox,
            Err(e) => return Execution::Done(Err(Failed::fatal(e))),
        };
        let batch = inbox.try_next().unwrap_or_default();
        let bodies: Vec<String> = batch
            .iter()
            .map(|l| String::from_utf8_lossy(&l.body).into_owned())
            .collect();
        if ask["crash"] == true && bodies.iter().any(|b| b == "crash") {
            panic!("crashed holding an unacknowledged batch");
        }
        inbox.ack();
        Execution::Done(Ok(serde_json::to_vec(&bodies).unwrap().into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_agent_reads_its_mailbox_through_its_task_and_a_crash_loses_nothing() {
    let pool = Pool::new(AgentSpec::new("reader", "worker"), 1, Arc::new(Reader));
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let h = runtime.handle();
    let bus = h.messages().clone();
    let me = Endpoint::Named(Arc::from("me"));
    let mut mine = bus.open(me.clone()).unwrap();
    let run = |payload: &str| {
        let spec = colony_core::task::TaskSpec::with_payload(payload.to_owned());
        let h = h.clone();
        async move {
            let done = h.submit_wait(spec).await.unwrap();
            assert_eq!(
                done.state,
                colony_core::task::TaskState::Succeeded,
                "{:?}",
                done.error
            );
            let output = String::from_utf8(done.output.clone().unwrap().to_vec()).unwrap();
            (output, done)
        }
    };

    let (_, done) = run(r#"{"subscribe": "news"}"#).await;
    let agent = done.agent.unwrap();
    assert_eq!(bus.topics(), [(Arc::from("news"), 1)]);
    bus.send(
        me.clone(),
        Address::Topic("news".into()),
        Bytes::from("hello"),
    )
    .await
    .unwrap();
    bus.send(
        me.clone(),
        Address::To(Endpoint::Agent(agent)),
        Bytes::from("direct"),
    )
    .await
    .unwrap();
    assert_eq!(run(r#"{"read": true}"#).await.0, r#"["hello","direct"]"#);
    // Read and acknowledged: nothing waits any more.
    assert_eq!(run(r#"{"read": true}"#).await.0, "[]");

    // An attempt that panics holding its batch gives it back as it unwinds (before anyone
    // opens the mailbox again); the agent's next task reads the same messages, in order.
    for body in ["crash", "after"] {
        bus.send(
            me.clone(),
            Address::To(Endpoint::Agent(agent)),
            Bytes::from(body),
        )
        .await
        .unwrap();
    }
    let mut spec = colony_core::task::TaskSpec::with_payload(r#"{"read": true, "crash": true}"#);
    spec.max_attempts = 1;
    let crashed = h.submit_wait(spec).await.unwrap();
    assert_eq!(crashed.state, colony_core::task::TaskState::DeadLettered);
    assert_eq!(bus.stats().redelivered, 2);
    let (out, _) = run(r#"{"read": true}"#).await;
    assert_eq!(out, r#"["crash","after"]"#);

    // What the agent sends is from the agent.
    assert_eq!(run(r#"{"send": "from inside"}"#).await.0, "1");
    let got = mine.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, Endpoint::Agent(agent));
    assert_eq!(&got[0].body[..], b"from inside");
    runtime.shutdown().await;
}

/// A `process` agent that, asked a task, sends `a` then `b` to the mailbox `full`, and
/// answers the task with the first refusal colony tells it.
const FULLER: &str = r#"
import json, sys
print(json.dumps({"type": "hello", "protocol": 1, "messages": True}), flush=True)
pending = None
for line in sys.stdin:
    m = json.loads(line)
    if m["type"] == "task":
        pending = m["id"]
        for body in ("a", "b"):
            print(json.dumps({"type": "send", "to": {"mailbox": "full"}, "body": body}), flush=True)
    elif m["type"] == "refused" and pending is not None:
        out = {"error": m["error"], "to": m["to"]}
        print(json.dumps({"type": "result", "id": pending, "output": out}), flush=True)
        pending = None
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_send_that_waits_10_s_at_a_full_mailbox_is_refused_and_told() {
    let mut options = colony_agents::process::ProcessOptions::new("python3");
    options.args = vec!["-c".into(), FULLER.into()];
    let pool = Pool::new(
        AgentSpec::new("fuller", "worker"),
        1,
        Arc::new(colony_agents::process::Process::new(options)),
    );
    let mut runtime_options = RuntimeOptions::default();
    runtime_options.messages.capacity = 1;
    runtime_options.messages.batch = 1;
    let runtime = Runtime::start(runtime_options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .unwrap();
    let h = runtime.handle();
    let bus = h.messages().clone();
    // Opened, never read: it takes one message and is then full.
    let mut full = bus.open(Endpoint::Named(Arc::from("full"))).unwrap();
    let done = h
        .submit_wait(colony_core::task::TaskSpec::with_payload("{}"))
        .await
        .unwrap();
    assert_eq!(
        done.state,
        colony_core::task::TaskState::Succeeded,
        "{:?}",
        done.error
    );
    let told: serde_json::Value = serde_json::from_slice(&done.output.unwrap()).unwrap();
    assert_eq!(told["to"], serde_json::json!({"mailbox": "full"}));
    assert!(
        told["error"]
            .as_str()
            .unwrap()
            .contains("stayed full for 10 s"),
        "{told}"
    );
    assert_eq!(bus.stats().waits, 1);
    // `a` was put; `b`, refused, never is, even once there is room.
    let got = full.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"a");
    full.ack();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(full.try_recv().unwrap().is_empty());
    runtime.shutdown().await;
}
