//! The journal in a JetStream stream against a real `nats-server` (one server, R1,
//! `sync_interval: always`): it passes the conformance suite every journal passes, keeps
//! what it acknowledged across a crash, replays to the same journal, fences out a process
//! that another took the journal over from (busy or idle), and waits out a server restart.

use bytes::Bytes;
use colony_cluster::{
    JetStreamJournal, JournalOptions,
    testing::{NatsCluster, NatsServer},
};
use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use colony_journal::{
    Journal, Opening, Record, ReputationRow, Seat, Stats, Taken,
    testing::{self, assert_same_reads},
};
use futures::executor::block_on;
use std::sync::atomic::{AtomicUsize, Ordering};

fn options(server: &str, name: &str) -> JournalOptions {
    JournalOptions {
        url: server.to_owned(),
        name: name.to_owned(),
        replicas: 1,
        compact_above: colony_cluster::journal::COMPACT_ABOVE,
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
    // Halted: what the writer had not appended is lost, as in a kill.
    testing::crash_case(
        open(&url, "crash"),
        |_| {},
        |journal| {
            journal.halt();
            open(&url, "crash")
        },
    );
    // Closed: what was queued is appended first.
    testing::crash_case(
        open(&url, "closed"),
        |_| {},
        |journal| {
            drop(journal);
            open(&url, "closed")
        },
    );
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
    // Decisions (their ends keep their times), agents and reputations come back too.
    let seats: Vec<Seat> = (0..3)
        .map(|i| Seat {
            agent: AgentId(i),
            pool: 0,
            weight: 0.5 + f64::from(i),
        })
        .collect();
    let opening = |asked: u32| Opening {
        options: r#"{"protocol":"majority"}"#.into(),
        seats: seats.clone(),
        asked,
        opened_at_ms: 1_700_000_000_000,
    };
    let decision = first.next_task_id();
    let ballots = vec![TaskSpec::default(); 3];
    block_on(first.open_decision(decision, &ballots, opening(3))).unwrap();
    block_on(first.close_decision(decision, r#"{"outcome":"yes"}"#.into())).unwrap();
    let inline = first.next_task_id();
    let taken = Taken {
        opening: opening(0),
        result: Ok("\"yes\"".into()),
        outcome: "{}".into(),
    };
    block_on(first.decided(inline, &TaskSpec::default(), taken)).unwrap();
    let reputation = ReputationRow {
        agent: AgentId(2),
        pool: 0,
        score: 0.75,
        observations: 4,
    };
    block_on(first.record_reputations(vec![reputation])).unwrap();
    let nan = ReputationRow {
        score: f64::NAN,
        ..reputation
    };
    let refused = block_on(first.record_reputations(vec![nan])).unwrap_err();
    assert!(refused.to_string().contains("finite"), "{refused}");
    assert_eq!(first.stats().fenced, 50);
    let row = first.task(id).unwrap().unwrap();
    assert_eq!(row.spec.payload.len(), 600_002);
    // Read without taking it over, then by a second process that does: the same journal.
    let read = colony_cluster::journal::read(&options(&url, "replay")).unwrap();
    assert_same_reads(&first, &read);
    block_on(first.record(vec![Record::Cancelled { task: id }])).expect("not taken over by a read");
    let second = open(&url, "replay");
    assert_same_reads(&first, &second);
    assert_eq!(second.stats(), Stats::default(), "a process counts its own");
    assert!(
        second
            .decision(decision)
            .unwrap()
            .unwrap()
            .ended_at_ms
            .is_some()
    );
    drop(first);
    drop(second);
    let third = open(&url, "replay");
    assert_eq!(
        third.counts().unwrap().succeeded,
        51,
        "50 tasks and the decision taken inline"
    );
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
fn a_busy_process_is_taken_over_and_loses_no_write_it_was_told_was_durable() {
    let (_dir, server) = server();
    let url = server.url();
    let old = open(&url, "busy");
    let writing = std::thread::scope(|scope| {
        let old = &old;
        let writer = scope.spawn(move || {
            // One task at a time, each waited for, until the journal refuses one.
            let mut acknowledged = 0u64;
            loop {
                let id = old.next_task_id();
                match block_on(old.accept(id, &[TaskSpec::default()])) {
                    Ok(()) => acknowledged = id.0,
                    Err(e) => return (acknowledged, e.to_string()),
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let new = open(&url, "busy");
        let (acknowledged, refused) = writer.join().unwrap();
        (new, acknowledged, refused)
    });
    let (new, acknowledged, refused) = writing;
    assert!(refused.contains("taken over"), "{refused}");
    assert!(acknowledged > 0, "the old process wrote before");
    assert_eq!(
        new.next_task_id().0 - 1,
        acknowledged,
        "every task acknowledged is in the journal, and none refused"
    );
}

#[test]
fn an_idle_process_learns_it_was_taken_over_before_it_writes() {
    let (_dir, server) = server();
    let url = server.url();
    let old = open(&url, "idle");
    assert!(old.writable().is_ok());
    let _new = open(&url, "idle");
    let started = std::time::Instant::now();
    while old.writable().is_ok() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still writable 10 s after being taken over"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let why = old.writable().unwrap_err().to_string();
    assert!(why.contains("taken over"), "{why}");
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

/// Opens a journal on a cluster just started, which elects its meta leader first.
fn open_on_three(options: &JournalOptions) -> JetStreamJournal {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match JetStreamJournal::open(options.clone()) {
            Ok(journal) => return journal,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn on_three_servers_a_journal_keeps_three_copies() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::three(dir.path()).expect("three nats-servers start");
    let mut options = options(&cluster.url(), "r3");
    options.replicas = 3;
    let journal = open_on_three(&options);
    let id = journal.next_task_id();
    block_on(journal.accept(id, &[TaskSpec::default()])).unwrap();
    drop(journal);
    let replicas = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(cluster.url().split(',').next().unwrap())
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream("COLONY_JOURNAL_r3").await.unwrap();
            stream.info().await.unwrap().config.num_replicas
        });
    assert_eq!(replicas, 3);
    // Reopened as a journal of one copy: it keeps its three (opened as the first was, again
    // while a loaded machine's three servers may be electing a leader).
    options.replicas = 1;
    let reopened = open_on_three(&options);
    assert_eq!(reopened.counts().unwrap().queued, 1);
}

/// The leader of a journal's stream on three servers, by name, once it has one.
fn stream_leader(url: &str, stream: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(url.split(',').next().unwrap())
                .await
                .unwrap();
            let js = async_nats::jetstream::new(client);
            for _ in 0..40 {
                if let Ok(mut s) = js.get_stream(stream).await
                    && let Ok(info) = s.info().await
                    && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
                {
                    return leader;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            panic!("{stream} has no leader");
        })
}

#[test]
fn a_killed_stream_leader_costs_a_pause_and_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::three(dir.path()).expect("three nats-servers start");
    let url = cluster.url();
    let mut options = options(&url, "leader");
    options.replicas = 3;
    let journal = open_on_three(&options);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (acknowledged, longest) = std::thread::scope(|scope| {
        let (journal, stop) = (&journal, &stop);
        let writer = scope.spawn(move || {
            // A task accepted and run, each write waited for, until told to stop.
            let (mut acknowledged, mut longest) = (0u64, std::time::Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let id = journal.next_task_id();
                block_on(journal.accept(id, &[TaskSpec::default()])).expect("accepted");
                block_on(journal.record(vec![
                    Record::Started {
                        task: id,
                        attempt: 1,
                        agent: AgentId(1),
                    },
                    Record::Committed {
                        task: id,
                        attempt: 1,
                        output: "42".into(),
                    },
                ]))
                .expect("committed");
                acknowledged = id.0;
                longest = longest.max(started.elapsed());
            }
            (acknowledged, longest)
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        let leader = stream_leader(&url, "COLONY_JOURNAL_leader");
        let server = cluster
            .servers
            .iter_mut()
            .find(|s| s.name == leader)
            .unwrap();
        server.kill();
        // Past the election: writes went on after it.
        std::thread::sleep(std::time::Duration::from_secs(12));
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        server.start().unwrap();
        written
    });
    drop(journal);
    let reopened = JetStreamJournal::open(options).expect("reopened");
    let counts = reopened.counts().unwrap();
    eprintln!(
        "{acknowledged} tasks acknowledged; the longest write took {:.1} s across the leader's kill",
        longest.as_secs_f64()
    );
    assert_eq!(
        counts.succeeded, acknowledged,
        "every acknowledged task, once"
    );
    assert_eq!(counts.total(), acknowledged);
    assert!(
        longest < std::time::Duration::from_secs(30),
        "a write waited {longest:?}"
    );
}

/// Messages and bytes in the journal's stream, and its first sequence.
fn stream_state(url: &str, stream: &str) -> (u64, u64, u64) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream(stream).await.unwrap();
            let state = stream.info().await.unwrap().state.clone();
            (state.messages, state.bytes, state.first_sequence)
        })
}

#[test]
fn a_journal_opened_past_its_size_is_compacted_and_reads_the_same() {
    let (_dir, server) = server();
    let url = server.url();
    let first = open(&url, "compact");
    // Many small writes, each its own message: a long history for a small state.
    for round in 0..200u64 {
        let id = first.next_task_id();
        let specs = vec![TaskSpec::with_payload(format!("{{\"n\":{round}}}")); 2];
        block_on(first.accept(id, &specs)).unwrap();
        for attempt in 1..=3 {
            block_on(first.record(vec![Record::Started {
                task: id,
                attempt,
                agent: AgentId(attempt),
            }]))
            .unwrap();
            let next = if attempt < 3 {
                TaskState::Queued
            } else {
                TaskState::Failed
            };
            block_on(first.record(vec![Record::Failed {
                task: id,
                attempt,
                error: "boom".into(),
                next,
            }]))
            .unwrap();
        }
        block_on(first.record(vec![Record::Cancelled {
            task: TaskId(id.0 + 1),
        }]))
        .unwrap();
    }
    let seats = vec![Seat {
        agent: AgentId(4),
        pool: 0,
        weight: 2.0,
    }];
    let decision = first.next_task_id();
    let opening = Opening {
        options: "{}".into(),
        seats,
        asked: 1,
        opened_at_ms: 7,
    };
    block_on(first.open_decision(decision, &[TaskSpec::default()], opening)).unwrap();
    block_on(first.record_reputations(vec![ReputationRow {
        agent: AgentId(4),
        pool: 0,
        score: 0.5,
        observations: 2,
    }]))
    .unwrap();
    drop(first);
    let (before, bytes, _) = stream_state(&url, "COLONY_JOURNAL_compact");
    // Not past the size: nothing changes.
    let mut options = options(&url, "compact");
    options.compact_above = bytes * 10;
    let kept = JetStreamJournal::open(options.clone()).unwrap();
    drop(kept);
    let (unchanged, _, first_kept) = stream_state(&url, "COLONY_JOURNAL_compact");
    assert_eq!(
        (unchanged, first_kept),
        (before + 1, 1),
        "only a claim more"
    );
    // Past it: compacted.
    options.compact_above = 1;
    let compacted = JetStreamJournal::open(options.clone()).unwrap();
    let (after, after_bytes, first_left) = stream_state(&url, "COLONY_JOURNAL_compact");
    assert!(after < before / 10, "{before} messages, {after} after");
    assert!(
        after_bytes < bytes / 2,
        "{bytes} bytes, {after_bytes} after"
    );
    assert!(
        first_left > before,
        "every message before the snapshot purged"
    );
    // The same journal, read back from the snapshot, and written on after it.
    let read = colony_cluster::journal::read(&options).unwrap();
    assert_same_reads(&compacted, &read);
    assert_eq!(read.counts().unwrap().failed, 200);
    assert_eq!(read.counts().unwrap().cancelled, 200);
    assert_eq!(read.task(TaskId(1)).unwrap().unwrap().attempt, 3);
    assert_eq!(read.reputations().unwrap().len(), 1);
    assert!(read.decision(decision).unwrap().is_some());
    let id = compacted.next_task_id();
    block_on(compacted.accept(id, &[TaskSpec::default()])).unwrap();
    drop(compacted);
    options.compact_above = u64::MAX;
    let reopened = JetStreamJournal::open(options).unwrap();
    assert_eq!(
        reopened.counts().unwrap().queued,
        2,
        "the decision's ballot and the task after"
    );
    assert_eq!(reopened.counts().unwrap().total(), 402);
}

#[test]
fn a_journal_larger_than_what_the_server_lets_a_client_fall_behind_replays_whole() {
    // The server cuts off a client more than 8 MB behind (a slow consumer): a replay that
    // asked for every message at once, and applied them slower than they came, was.
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single_with(dir.path(), "max_pending: 8MB").unwrap();
    let url = server.url();
    let journal = open(&url, "large");
    for round in 0..40 {
        let id = journal.next_task_id();
        let payload = format!("\"{}\"", "y".repeat(900_000 + round));
        block_on(journal.accept(id, &[TaskSpec::with_payload(payload)])).unwrap();
    }
    drop(journal);
    let reopened = open(&url, "large");
    assert_eq!(reopened.counts().unwrap().queued, 40);
    let last = reopened.task(TaskId(40)).unwrap().unwrap();
    assert_eq!(last.spec.payload.len(), 900_041);
}

/// Twenty tasks with payloads of 8 KiB: 1-15 end (succeeded with an output as large, or
/// every third failed), 16-20 stay queued.
fn fill_to_prune(journal: &JetStreamJournal) {
    let big = "x".repeat(8 * 1024);
    let specs: Vec<TaskSpec> = (0..20)
        .map(|i| TaskSpec::with_payload(format!("{{\"i\":{i},\"pad\":\"{big}\"}}")))
        .collect();
    block_on(journal.accept(TaskId(1), &specs)).unwrap();
    for id in 1..=15u64 {
        let task = TaskId(id);
        let end = if id % 3 == 0 {
            Record::Failed {
                task,
                attempt: 1,
                error: "boom".into(),
                next: TaskState::Failed,
            }
        } else {
            Record::Committed {
                task,
                attempt: 1,
                output: Bytes::from(big.clone()),
            }
        };
        let started = Record::Started {
            task,
            attempt: 1,
            agent: AgentId(1),
        };
        block_on(journal.record(vec![started, end])).unwrap();
    }
}

/// The beat of journal `name`'s keeper in the keepers' bucket: what it says, if it is there.
fn beat_of(url: &str, name: &str) -> Option<serde_json::Value> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let store = js.get_key_value("COLONY_JOURNAL_KEEPERS").await.ok()?;
        let entry = store.entry(name).await.unwrap()?;
        (entry.operation == async_nats::jetstream::kv::Operation::Put)
            .then(|| serde_json::from_slice(&entry.value).unwrap())
    })
}

/// A process keeping a journal says it lives while idle: a prune that no keeper answers (it
/// crashed a moment ago, or is cut off from NATS) leaves alone a journal gone quiet past
/// `QUIET` whose keeper said so within it, naming the process; a keeper that closes
/// cleanly takes its word back.
#[test]
fn a_quiet_journal_whose_keeper_said_it_lives_is_taken_over_only_when_asked() {
    let (_dir, server) = server();
    let url = server.url();
    let journal = open(&url, "beats");
    // It beats once it is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let said = loop {
        match beat_of(&url, "beats") {
            Some(said) => break said,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None => panic!("no beat of the keeper"),
        }
    };
    assert_eq!(said["pid"], std::process::id(), "{said}");
    drop(journal);
    assert_eq!(beat_of(&url, "beats"), None, "closed: no keeper lives");

    let journal = open(&url, "beats");
    fill_to_prune(&journal);
    std::thread::sleep(colony_cluster::journal::QUIET + std::time::Duration::from_secs(2));
    // As a crash would: it answers no more, and its last beat stays.
    journal.halt();
    let options = options(&url, "beats");
    let keep = colony_journal::Retention {
        keep_last: Some(3),
        ..Default::default()
    };
    let refused = colony_cluster::journal::prune(&options, keep, false).unwrap_err();
    let pid = format!("pid {}", std::process::id());
    assert!(
        matches!(&refused, colony_cluster::Error::Settings(why)
            if why.contains(&pid) && why.contains("said it lived") && why.contains("--take-over")),
        "{refused}"
    );
    let pruned = colony_cluster::journal::prune(&options, keep, true).unwrap();
    assert!(!pruned.by_keeper && pruned.tasks == 12, "{pruned:?}");
}

#[test]
fn pruning_drops_finished_payloads_and_outputs_but_the_newest_and_keeps_every_row() {
    let (_dir, server) = server();
    let url = server.url();
    let journal = open(&url, "prune");
    fill_to_prune(&journal);
    let counts = journal.counts().unwrap();
    drop(journal);
    let options = options(&url, "prune");
    let keep = |last| colony_journal::Retention {
        keep_last: Some(last),
        ..Default::default()
    };
    // Written a moment ago and no process answers: a keeper cut off from NATS may still
    // write it, so it is taken over only when asked.
    let refused = colony_cluster::journal::prune(&options, keep(3), false).unwrap_err();
    assert!(
        matches!(&refused, colony_cluster::Error::Settings(why) if why.contains("--take-over") && why.contains("written")),
        "{refused}"
    );
    let pruned = colony_cluster::journal::prune(&options, keep(3), true).unwrap();
    assert!(
        !pruned.by_keeper,
        "no process kept it: pruned by taking it over"
    );
    assert_eq!(pruned.tasks, 12, "15 finished, the newest 3 kept");
    assert!(
        pruned.bytes_after < pruned.bytes_before / 2,
        "{pruned:?}: the history with the payloads is purged"
    );
    let read = colony_cluster::journal::read(&options).unwrap();
    assert_eq!(read.counts().unwrap(), counts, "every row and state kept");
    for id in 1..=20u64 {
        let row = read.task(TaskId(id)).unwrap().unwrap();
        let kept = id > 12;
        assert_eq!(!row.spec.payload.is_empty(), kept, "task {id}: {row:?}");
        if id <= 15 && id % 3 != 0 {
            assert_eq!(row.output.is_some(), kept, "task {id}'s output");
        }
        if id % 3 == 0 && id <= 15 {
            assert_eq!(row.error.as_deref(), Some("boom"), "task {id}'s error kept");
        }
    }
    // Nothing left to drop (and what was written last was a prune's: no keeper to fear);
    // and the journal is written on as before.
    assert_eq!(
        colony_cluster::journal::prune(&options, keep(3), false)
            .unwrap()
            .tasks,
        0
    );
    // A journal that is not there is not made by pruning it.
    let missing = self::options(&url, "missing");
    assert!(matches!(
        colony_cluster::journal::prune(&missing, keep(3), false),
        Err(colony_cluster::Error::NoJournal { .. })
    ));
    assert!(
        colony_cluster::journal::read(&missing).is_err(),
        "no stream made"
    );
    let reopened = JetStreamJournal::open(options.clone()).unwrap();
    assert_same_reads(&reopened, &read);
    block_on(reopened.accept(TaskId(21), &[TaskSpec::default()])).unwrap();
    assert_eq!(reopened.counts().unwrap().queued, 6);
}

/// The process keeping a journal prunes it once at a time: a prune asked while another's
/// snapshot waits to be written is refused, saying so, rather than copy the whole state
/// again for each request; once the first has answered, the next is taken.
#[test]
fn a_keeper_takes_one_prune_at_a_time() {
    let (_dir, server) = server();
    let url = server.url();
    let journal = open(&url, "flooded");
    fill_to_prune(&journal);
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 30_000;
    let asked = bytes::Bytes::from(format!("{{\"keep-last\":3,\"until-ms\":{until}}}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answers: Vec<serde_json::Value> = runtime.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let ask = || client.request("colony.journal-prune.flooded", asked.clone());
        // Sent together: the second comes while the keeper reads the stream for the first.
        let (first, second) = futures::join!(ask(), ask());
        let third = ask().await;
        [first, second, third]
            .into_iter()
            .map(|answer| serde_json::from_slice(&answer.unwrap().payload).unwrap())
            .collect()
    });
    let refused: Vec<&serde_json::Value> = answers[..2]
        .iter()
        .filter(|a| a.get("error").is_some())
        .collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("a prune of this journal is under way"),
        "{answers:?}"
    );
    let pruned = answers[..2]
        .iter()
        .find(|a| a.get("error").is_none())
        .unwrap();
    assert_eq!(pruned["pruned"], 12, "{answers:?}");
    // Taken once the first had answered: nothing left to prune.
    assert_eq!(answers[2]["pruned"], 0, "{answers:?}");
    journal.writable().unwrap();
}

/// A journal a process keeps is pruned by that process, asked by `prune`: it goes on
/// writing (it is not taken over), writes made before, while and after the prune runs land
/// in their order around its snapshot, and the journal read back is the process's own.
#[test]
fn a_journal_kept_by_a_process_is_pruned_by_it_as_it_goes_on_writing() {
    let (_dir, server) = server();
    let url = server.url();
    let journal = std::sync::Arc::new(open(&url, "kept"));
    fill_to_prune(&journal);
    // Tasks accepted, four in flight at a time, from before the prune is asked until
    // after it is done.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (journal, done) = (journal.clone(), done.clone());
        colony_agents::spawner::Spawner::spawn_thread("late-writes", move || {
            let mut late = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) || late < 8 {
                let durables: Vec<_> = (late..late + 4)
                    .map(|i| {
                        let spec = TaskSpec::with_payload(format!("{{\"late\":{i}}}"));
                        journal.accept(TaskId(21 + i), &[spec])
                    })
                    .collect();
                for durable in durables {
                    block_on(durable).unwrap();
                }
                late += 4;
            }
            late
        })
        .unwrap()
    };
    let options = options(&url, "kept");
    let keep = colony_journal::Retention {
        keep_last: Some(3),
        ..Default::default()
    };
    let pruned = colony_cluster::journal::prune(&options, keep, false).unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    let late = writing.join().unwrap();
    assert!(pruned.by_keeper, "{pruned:?}");
    assert_eq!(pruned.tasks, 12, "15 finished, the newest 3 kept");
    assert!(
        pruned.bytes_after < pruned.bytes_before,
        "{pruned:?}: the history with the payloads is purged"
    );
    // Still its journal: it writes on.
    journal.writable().unwrap();
    let next = TaskId(21 + late);
    block_on(journal.accept(next, &[TaskSpec::default()])).unwrap();
    assert!(
        journal
            .task(TaskId(1))
            .unwrap()
            .unwrap()
            .spec
            .payload
            .is_empty()
    );
    // Read back, the journal is the one the process holds: pruned, and every task accepted
    // during the prune there, with its payload.
    let read = colony_cluster::journal::read(&options).unwrap();
    assert_same_reads(&*journal, &read);
    for i in 0..late {
        let row = read.task(TaskId(21 + i)).unwrap().unwrap();
        assert_eq!(
            &row.spec.payload[..],
            format!("{{\"late\":{i}}}").as_bytes()
        );
    }
    assert_eq!(read.counts().unwrap().queued, 5 + late + 1);
}
