//! The journal in a JetStream stream against a real `nats-server` (one server, R1,
//! `sync_interval: always`): it passes the conformance suite every journal passes, keeps
//! what it acknowledged across a crash, replays to the same journal, fences out a process
//! that another took the journal over from, and waits out a server restart.

use bytes::Bytes;
use colony_cluster::{
    JetStreamJournal, JournalOptions,
    testing::{NatsCluster, NatsServer},
};
use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use colony_journal::{Journal, Record, testing};
use futures::executor::block_on;
use std::sync::atomic::{AtomicUsize, Ordering};

fn options(server: &str, name: &str) -> JournalOptions {
    JournalOptions {
        url: server.to_owned(),
        name: name.to_owned(),
        replicas: 1,
    }
}

fn open(server: &str, name: &str) -> JetStreamJournal {
    JetStreamJournal::open(options(server, name)).expect("the journal opens")
}

fn server() -> (tempfile::TempDir, NatsServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single(dir.path()).expect("nats-server starts");
    (dir, server)
}

#[test]
fn it_passes_the_conformance_suite() {
    let (_dir, server) = server();
    let n = AtomicUsize::new(0);
    testing::Suite::test_all(|| {
        let name = format!("suite-{}", n.fetch_add(1, Ordering::Relaxed));
        open(&server.url(), &name)
    });
}

#[test]
fn what_it_acknowledged_survives_a_crash() {
    let (_dir, server) = server();
    let url = server.url();
    testing::crash_case(
        open(&url, "crash"),
        |_| {},
        |journal| {
            drop(journal);
            open(&url, "crash")
        },
    );
}

/// Every read of `a` and `b` the same.
fn same(a: &impl Journal, b: &impl Journal) {
    assert_eq!(a.next_task_id(), b.next_task_id());
    assert_eq!(a.counts().unwrap(), b.counts().unwrap());
    assert_eq!(a.stats(), b.stats());
    assert_eq!(
        a.recent(None, None, usize::MAX).unwrap(),
        b.recent(None, None, usize::MAX).unwrap()
    );
    assert_eq!(
        a.decisions(None, usize::MAX).unwrap(),
        b.decisions(None, usize::MAX).unwrap()
    );
    assert_eq!(a.agents().unwrap(), b.agents().unwrap());
    assert_eq!(a.reputations().unwrap(), b.reputations().unwrap());
}

#[test]
fn a_reopened_journal_is_the_one_written_large_writes_and_all() {
    let (_dir, server) = server();
    let url = server.url();
    let first = open(&url, "replay");
    // Writes in flight together share messages; payloads of raw bytes and a frame of
    // several parts (three payloads of 600 KB) come back byte for byte.
    let mut pending = Vec::new();
    for round in 0..50u64 {
        let id = first.next_task_id();
        let specs: Vec<TaskSpec> = (0..20)
            .map(|i| TaskSpec::with_payload(format!("{{\"round\":{round},\"i\":{i}}}")))
            .collect();
        pending.push(first.accept(id, &specs));
        pending.push(first.record(vec![
            Record::Started {
                task: id,
                attempt: 1,
                agent: AgentId(round as u32),
            },
            Record::Committed {
                task: id,
                attempt: 1,
                output: Bytes::from(vec![0xff, 0, round as u8]),
            },
            Record::Committed {
                task: id,
                attempt: 7,
                output: "late".into(),
            },
        ]));
    }
    let big: Vec<TaskSpec> = (0..3)
        .map(|i| TaskSpec::with_payload(format!("\"{}\"", "x".repeat(600_000 + i))))
        .collect();
    let id = first.next_task_id();
    pending.push(first.accept(id, &big));
    for write in pending {
        block_on(write).expect("durable");
    }
    assert_eq!(first.stats().fenced, 50);
    let row = first.task(id).unwrap().unwrap();
    assert_eq!(row.spec.payload.len(), 600_002);
    // Read by a second process while the first still runs: the same journal.
    let second = open(&url, "replay");
    same(&first, &second);
    drop(first);
    drop(second);
    let third = open(&url, "replay");
    assert_eq!(third.counts().unwrap().succeeded, 50);
    assert_eq!(
        third.task(TaskId(1)).unwrap().unwrap().output.as_deref(),
        Some(&[0xff, 0, 0][..])
    );
}

#[test]
fn a_process_whose_journal_was_taken_over_writes_no_more() {
    let (_dir, server) = server();
    let url = server.url();
    let old = open(&url, "taken");
    let id = old.next_task_id();
    block_on(old.accept(id, &[TaskSpec::default(), TaskSpec::default()])).unwrap();
    let new = open(&url, "taken");
    assert_eq!(
        new.counts().unwrap().queued,
        2,
        "the new process reads it all"
    );
    let refused = block_on(old.record(vec![Record::Started {
        task: id,
        attempt: 1,
        agent: AgentId(1),
    }]))
    .expect_err("the old process is fenced");
    assert!(refused.to_string().contains("taken over"), "{refused}");
    let again = block_on(old.record(vec![Record::Cancelled { task: id }]));
    assert!(again.is_err(), "and stays stopped");
    // The new one writes on; the old one's refused write is nowhere.
    let recovered = new.recover().unwrap();
    assert_eq!(recovered.len(), 2);
    block_on(new.record(vec![Record::Cancelled { task: id }])).unwrap();
    drop(new);
    let row = open(&url, "taken").task(id).unwrap().unwrap();
    assert_eq!((row.state, row.agent), (TaskState::Cancelled, None));
}

#[test]
fn a_write_waits_out_a_server_restart() {
    let (_dir, mut server) = server();
    let url = server.url();
    let journal = open(&url, "restart");
    let id = journal.next_task_id();
    block_on(journal.accept(id, &[TaskSpec::default()])).unwrap();
    server.kill();
    let waiting = journal.record(vec![Record::Started {
        task: id,
        attempt: 1,
        agent: AgentId(3),
    }]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.start().expect("nats-server starts again");
    block_on(waiting).expect("durable once the server is back");
    drop(journal);
    let row = open(&url, "restart").task(id).unwrap().unwrap();
    assert_eq!((row.state, row.attempt), (TaskState::Running, 1));
}

#[test]
fn on_three_servers_a_journal_keeps_three_copies() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::three(dir.path()).expect("three nats-servers start");
    let mut options = options(&cluster.url(), "r3");
    options.replicas = 3;
    // The cluster elects its meta leader first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let journal = loop {
        match JetStreamJournal::open(options.clone()) {
            Ok(journal) => break journal,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let id = journal.next_task_id();
    block_on(journal.accept(id, &[TaskSpec::default()])).unwrap();
    drop(journal);
    options.replicas = 1;
    let reopened = JetStreamJournal::open(options).expect("a journal keeps its own replicas");
    assert_eq!(reopened.counts().unwrap().queued, 1);
}
