//! The memory in a JetStream stream against a real `nats-server` (one server, R1,
//! `sync_interval: always`): it passes the conformance cases every memory passes; two
//! processes' copies see each other's writes at once and agree on every write either
//! refused; a batch larger than a message is stored whole while others write between its
//! parts; a copy opened later replays to the same memory; a message that is not a write is
//! passed over, and a write no copy can read stops them all.

use colony_cluster::{
    memory::{MemoryOptions, NatsMemory},
    testing::NatsServer,
};
use colony_memory::{Document, Error, Memory, Namespace, Query, testing};
use std::sync::atomic::{AtomicUsize, Ordering};

fn options(url: &str, name: &str) -> MemoryOptions {
    MemoryOptions::parse(&format!("{url}/{name}?replicas=1"), "--memory").unwrap()
}

fn open(url: &str, name: &str) -> NatsMemory {
    NatsMemory::open(&options(url, name), true, true, "--memory").expect("the memory opens")
}

fn server(extra: &str) -> (tempfile::TempDir, NatsServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single_with(dir.path(), extra).expect("nats-server starts");
    (dir, server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn js(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Messages in memory `name`'s stream now.
fn messages(url: &str, name: &str) -> u64 {
    runtime().block_on(async {
        let stream = js(url)
            .await
            .get_stream(format!("COLONY_MEMORY_{name}"))
            .await
            .unwrap();
        stream.get_info().await.unwrap().state.messages
    })
}

/// Publishes `body` with `headers` on memory `name`'s subject, by hand; its sequence.
fn publish(url: &str, name: &str, headers: &[(&str, &str)], body: &'static str) -> u64 {
    runtime().block_on(async {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        js(url)
            .await
            .publish_with_headers(format!("colony.memory.{name}"), map, body.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    })
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn ids(hits: &[colony_memory::Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

#[test]
fn it_passes_the_conformance_cases() {
    let (_dir, server) = server("");
    let n = AtomicUsize::new(0);
    testing::all(&|| {
        let name = format!("conformance-{}", n.fetch_add(1, Ordering::Relaxed));
        Box::new(open(&server.url(), &name))
    });
}

#[test]
fn two_processes_copies_see_each_others_writes_and_agree_on_what_was_refused() {
    let (_dir, server) = server("");
    let (a, b) = (open(&server.url(), "shared"), open(&server.url(), "shared"));
    let notes = ns("team/notes");
    a.put(
        &notes,
        vec![
            Document::new("1", "the deploy failed on a missing migration"),
            Document::new("2", "cache warmed before the release").with("kind", "ops"),
        ],
    )
    .unwrap();
    // Read at once from the other copy: a read waits for every write acknowledged before it.
    assert_eq!(
        b.get(&notes, "2").unwrap().unwrap().text,
        "cache warmed before the release"
    );
    let q = Query {
        text: Some("deploy migration".into()),
        k: 5,
        ..Query::default()
    };
    assert_eq!(ids(&b.search(&notes, &q).unwrap()), ["1"]);
    assert_eq!(b.delete(&notes, &["1".into(), "9".into()]).unwrap(), 1);
    assert!(a.get(&notes, "1").unwrap().is_none());
    assert_eq!(a.stats(&notes).unwrap().documents, 1);

    // Two writers race to give a new namespace its dimension: one wins, the other is
    // refused, and both copies say the same of it.
    let vectors = ns("team/vectors");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            a.put(
                &vectors,
                vec![Document::new("x", "three").embedded(vec![1.0, 0.0, 0.0])],
            )
        });
        let tb = s.spawn(|| {
            b.put(
                &vectors,
                vec![Document::new("y", "two").embedded(vec![0.0, 1.0])],
            )
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one write wins: {ra:?} {rb:?}"
    );
    let refused = ra.err().or(rb.err()).unwrap();
    assert!(
        matches!(refused, Error::Dimension { .. }),
        "refused for its dimension: {refused}"
    );
    let (sa, sb) = (a.stats(&vectors).unwrap(), b.stats(&vectors).unwrap());
    assert_eq!(sa, sb);
    assert_eq!(sa.documents, 1);
    assert_eq!(a.get(&vectors, "x").unwrap(), b.get(&vectors, "x").unwrap());
    assert_eq!(a.namespaces().unwrap(), b.namespaces().unwrap());

    // A namespace's embedder is one for every copy.
    let made = ns("team/made");
    a.put_embedded(
        &made,
        vec![Document::new("m", "m").embedded(vec![1.0, 0.0])],
        "lexical",
    )
    .unwrap();
    let mixed = b
        .put_embedded(
            &made,
            vec![Document::new("n", "n").embedded(vec![0.0, 1.0])],
            "http:other",
        )
        .unwrap_err();
    assert!(matches!(mixed, Error::Mixed { .. }), "{mixed}");
    assert!(a.get(&made, "n").unwrap().is_none());

    // Bad input is refused before anything is sent: nothing reaches the stream.
    let bad = a.put(&notes, vec![Document::new("", "no id")]).unwrap_err();
    assert!(matches!(bad, Error::Document { index: 0, .. }), "{bad}");
}

#[test]
fn a_batch_larger_than_a_message_is_stored_whole_while_others_write_and_replays_the_same() {
    // Messages of at most 64 KiB: a batch of 1 MiB goes in about twenty parts.
    let (_dir, server) = server("max_payload: 65536");
    let url = server.url();
    let (a, b) = (open(&url, "parts"), open(&url, "parts"));
    let big = ns("big");
    let small = ns("small");
    let batch: Vec<Document> = (0..64)
        .map(|i| Document::new(format!("d{i}"), format!("word{i} ").repeat(2000)))
        .collect();
    std::thread::scope(|s| {
        let busy = s.spawn(|| {
            for i in 0..200 {
                b.put(&small, vec![Document::new(format!("s{i}"), "small")])
                    .unwrap();
            }
        });
        a.put(&big, batch.clone())
            .expect("the large batch is stored");
        busy.join().unwrap();
    });
    for copy in [&a, &b] {
        assert_eq!(copy.stats(&big).unwrap().documents, 64);
        assert_eq!(copy.stats(&small).unwrap().documents, 200);
        assert_eq!(copy.get(&big, "d63").unwrap().unwrap(), batch[63]);
    }
    // The large batch went in parts: more messages than the writes.
    let sent = messages(&url, "parts");
    assert!(sent >= 200 + 14, "{sent} messages");
    // A message that is not a write (sent by hand) is passed over by every copy.
    publish(&url, "parts", &[], "not a write");
    a.put(
        &small,
        vec![Document::new("after", "after the stray message")],
    )
    .unwrap();
    assert!(b.get(&small, "after").unwrap().is_some());
    // A copy opened now replays the stream to the same memory.
    let c = open(&url, "parts");
    for space in [&big, &small] {
        assert_eq!(c.stats(space).unwrap(), a.stats(space).unwrap());
    }
    assert_eq!(c.get(&big, "d0").unwrap().unwrap(), batch[0]);

    // A write no copy can read (a newer colony's, say) stops every copy rather than let
    // them drift: each call is refused, saying so, and a copy opened anew stops there too.
    let headers = [
        ("Colony-Write", "from-the-future-1"),
        ("Colony-Part", "1/1"),
    ];
    publish(&url, "parts", &headers, r#"{"merge": {}}"#);
    for copy in [&a, &b, &c] {
        let e = copy.get(&small, "after").unwrap_err().to_string();
        assert!(
            e.contains("copy stopped") && e.contains("cannot be read as a write"),
            "{e}"
        );
    }
    let e = NatsMemory::open(&options(&url, "parts"), false, false, "--db").unwrap_err();
    assert!(e.to_string().contains("copy stopped"), "{e}");
    // A stopped copy writes nothing: it could not tell what became of the write.
    let before = messages(&url, "parts");
    let e = a
        .put(&small, vec![Document::new("late", "late")])
        .unwrap_err();
    assert!(e.to_string().contains("copy stopped"), "{e}");
    assert_eq!(messages(&url, "parts"), before);
}

#[test]
fn a_memory_not_made_is_refused_unless_made_and_a_bad_location_is_named() {
    let (_dir, server) = server("");
    let e = NatsMemory::open(&options(&server.url(), "absent"), false, false, "--db").unwrap_err();
    assert!(e.to_string().contains("--db: no memory absent at"), "{e}");
    for (location, says) in [
        ("nats://127.0.0.1:4222", "no memory name"),
        ("nats://127.0.0.1:4222/a.b", "memory name `a.b`"),
        ("http://127.0.0.1:4222/a", "http:// is not a NATS server"),
        (
            "nats://127.0.0.1:4222/a?replicas=2",
            "replicas must be 3 or 5",
        ),
    ] {
        let e = MemoryOptions::parse(location, "--memory")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--memory `"), "{e}");
        assert!(e.contains(says), "{location}: {e}");
    }
}

const CHILD: &str = "COLONY_NATS_MEMORY_KILL_CHILD";

/// Batches of 20 documents of about 10 KB each (four or so messages through a server whose
/// `max_payload` is 64 KiB), each acknowledged on stdout once `put` returned, until killed:
/// run only as the child of `a_writer_killed_between_parts_leaves_whole_batches_only`.
#[test]
#[ignore = "the child process of a_writer_killed_between_parts_leaves_whole_batches_only"]
fn nats_writer() {
    let spec = std::env::var(CHILD).expect("run by the kill test");
    let (url, round) = spec.split_once('|').unwrap();
    let memory = open(url, "killed");
    let ns = ns("ingest");
    for batch in 0.. {
        let docs = (0..20)
            .map(|i| {
                let id = format!("r{round}-b{batch}-{i}");
                let text = format!("{id} ") + &"ingest ".repeat(1500);
                Document::new(id, text).embedded(vec![batch as f32, i as f32, 1.0])
            })
            .collect();
        memory.put(&ns, docs).unwrap();
        println!("acked {batch}");
    }
}

/// `kill -9` of a writer sending batches in parts, at a different point each round: every
/// batch it was told was stored is there, and every batch there is whole (a batch whose
/// last part never came is in no copy).
#[test]
fn a_writer_killed_between_parts_leaves_whole_batches_only() {
    use std::io::{BufRead, BufReader};
    let (_dir, server) = server("max_payload: 65536");
    let url = server.url();
    let mut acked: Vec<(u32, u32)> = Vec::new();
    for round in 0..4u32 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "nats_writer", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD, format!("{url}|{round}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wanted = 2 + round * 3;
        let mut seen = 0;
        while seen < wanted {
            let line = lines.next().expect("the writer stopped early").unwrap();
            if let Some(batch) = line.strip_prefix("acked ") {
                acked.push((round, batch.parse().unwrap()));
                seen += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(u64::from(round) * 7));
        child.kill().unwrap();
        for line in lines.map_while(Result::ok) {
            if let Some(batch) = line.strip_prefix("acked ") {
                acked.push((round, batch.parse().unwrap()));
            }
        }
        child.wait().unwrap();
    }
    let memory = open(&url, "killed");
    let ns = ns("ingest");
    for &(round, batch) in &acked {
        let d = memory.get(&ns, &format!("r{round}-b{batch}-19")).unwrap();
        assert_eq!(
            d.unwrap_or_else(|| panic!("acknowledged batch {round}/{batch} is missing"))
                .embedding,
            Some(vec![batch as f32, 19.0, 1.0])
        );
    }
    // Whole batches only: as many documents as 20 times the batches begun.
    let held = memory.stats(&ns).unwrap().documents;
    assert_eq!(held % 20, 0, "{held} documents: a batch stored in part");
    assert!(held >= acked.len() as u64 * 20, "{held}");
    for round in 0..4u32 {
        for batch in 0.. {
            let first = memory.get(&ns, &format!("r{round}-b{batch}-0")).unwrap();
            let last = memory.get(&ns, &format!("r{round}-b{batch}-19")).unwrap();
            assert_eq!(first.is_some(), last.is_some(), "batch {round}/{batch}");
            if first.is_none() {
                break;
            }
        }
    }
}

/// A write made while the server is down waits for it, and lands once it is back; the
/// copy's watch is made again and the write is answered from it.
#[test]
fn a_write_waits_out_a_server_restart() {
    let (_dir, mut server) = server("");
    let url = server.url();
    let memory = open(&url, "restart");
    let notes = ns("notes");
    memory
        .put(&notes, vec![Document::new("a", "before")])
        .unwrap();
    server.kill();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| memory.put(&notes, vec![Document::new("b", "during")]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        server.start().expect("nats-server starts again");
        waiting
            .join()
            .unwrap()
            .expect("stored once the server is back");
    });
    assert_eq!(memory.get(&notes, "b").unwrap().unwrap().text, "during");
    let again = open(&url, "restart");
    assert_eq!(again.stats(&notes).unwrap().documents, 2);
}

/// A memory written over and over (documents replaced and deleted, a namespace emptied that
/// keeps its dimension, an embedder recorded) is compacted: the stream then holds the
/// snapshot, in parts, and what came after it. A copy opened afterwards restores the
/// snapshot and answers as the others do, refusing what they refuse; the copies that
/// followed all along go on writing and reading.
#[test]
fn a_compacted_memory_opens_from_its_snapshot_the_same() {
    let (_dir, server) = server("max_payload: 65536");
    let url = server.url();
    let (a, b) = (open(&url, "compact"), open(&url, "compact"));
    let (notes, emptied) = (ns("notes"), ns("emptied"));
    for round in 0..5 {
        let docs = (0..100)
            .map(|i| {
                let text = format!("round {round} note {i} ") + &"agents ".repeat(50);
                Document::new(format!("d{i}"), text).embedded(vec![i as f32, round as f32, 1.0])
            })
            .collect();
        a.put_embedded(&notes, docs, "lexical").unwrap();
    }
    b.delete(&notes, &["d0".into(), "d1".into()]).unwrap();
    b.put(
        &emptied,
        vec![Document::new("e", "e").embedded(vec![1.0, 2.0])],
    )
    .unwrap();
    b.delete(&emptied, &["e".into()]).unwrap();
    let done = a.compact().expect("compacted");
    assert!(
        done.messages_after < done.messages_before && done.bytes_after < done.bytes_before,
        "{done:?}"
    );
    // The followers go on.
    b.put(&notes, vec![Document::new("d500", "after the snapshot")])
        .unwrap();
    assert!(a.get(&notes, "d500").unwrap().is_some());
    let c = open(&url, "compact");
    let same = |x: &NatsMemory, y: &NatsMemory| {
        assert_eq!(x.namespaces().unwrap(), y.namespaces().unwrap());
        for space in [&notes, &emptied] {
            assert_eq!(x.stats(space).unwrap(), y.stats(space).unwrap());
        }
        for id in ["d0", "d2", "d99", "d500"] {
            assert_eq!(
                x.get(&notes, id).unwrap(),
                y.get(&notes, id).unwrap(),
                "{id}"
            );
        }
        let q = Query {
            text: Some("round 4 note 17 agents".into()),
            vector: Some(vec![17.0, 4.0, 1.0]),
            k: 5,
            ..Query::default()
        };
        assert_eq!(x.search(&notes, &q).unwrap(), y.search(&notes, &q).unwrap());
    };
    same(&a, &c);
    assert_eq!(
        c.get(&notes, "d2").unwrap().unwrap().embedding,
        Some(vec![2.0, 4.0, 1.0])
    );
    // What the others refuse, the restored copy refuses: the emptied namespace's dimension,
    // the recorded embedder.
    let three = || vec![Document::new("t", "t").embedded(vec![1.0, 2.0, 3.0])];
    assert!(matches!(
        c.put(&emptied, three()).unwrap_err(),
        Error::Dimension { .. }
    ));
    let mixed = c.put_embedded(&notes, three(), "http:other").unwrap_err();
    assert!(
        matches!(mixed, Error::Dimension { .. } | Error::Mixed { .. }),
        "{mixed}"
    );
    // Compacted again, from a restored copy, and opened again: the same.
    c.put(&notes, vec![Document::new("d501", "later still")])
        .unwrap();
    c.compact().expect("compacted again");
    let d = open(&url, "compact");
    same(&b, &d);
    assert!(d.get(&notes, "d501").unwrap().is_some());
}

/// A write whose parts straddle a compaction (its first part before the snapshot, its last
/// after) is stored by the copy that followed all along and by one that opens after, from
/// the parts the snapshot held; a message deleted by hand is passed over by a copy that
/// opens after, not taken for a compaction.
#[test]
fn a_write_straddling_a_compaction_is_stored_by_every_copy() {
    let (_dir, server) = server("");
    let url = server.url();
    let a = open(&url, "straddle");
    let notes = ns("notes");
    a.put(&notes, vec![Document::new("before", "before")])
        .unwrap();
    let frame = r#"{"put": {"namespace": "notes", "documents": [{"id": "held", "text": "held across the snapshot"}]}}"#;
    let (one, two) = frame.split_at(frame.len() / 2);
    let part = |body: &'static str, part: &'static str| {
        let headers = [("Colony-Write", "by-hand-1"), ("Colony-Part", part)];
        publish(&url, "straddle", &headers, body)
    };
    part(one, "1/2");
    a.put(&notes, vec![Document::new("between", "between")])
        .unwrap();
    a.compact().expect("compacted");
    part(two, "2/2");
    let c = open(&url, "straddle");
    for copy in [&a, &c] {
        assert_eq!(
            copy.get(&notes, "held").unwrap().map(|d| d.text).as_deref(),
            Some("held across the snapshot")
        );
        assert_eq!(copy.stats(&notes).unwrap().documents, 3);
    }
    // A message in the middle deleted by hand: a copy opening after passes over the gap.
    a.put(&notes, vec![Document::new("gone", "deleted by hand")])
        .unwrap();
    let last = a.put(&notes, vec![Document::new("kept", "kept")]);
    assert!(last.is_ok());
    runtime().block_on(async {
        let stream = js(&url)
            .await
            .get_stream("COLONY_MEMORY_straddle")
            .await
            .unwrap();
        let gone = stream
            .get_last_raw_message_by_subject("colony.memory.straddle")
            .await
            .unwrap()
            .sequence
            - 1;
        stream.delete_message(gone).await.unwrap();
    });
    let d = open(&url, "straddle");
    assert!(d.get(&notes, "kept").unwrap().is_some());
    assert!(d.get(&notes, "gone").unwrap().is_none());
}

/// A process that opens a memory to write it compacts it once its stream passes the bound,
/// when the snapshot is under half of it; one that only reads does not, nor one whose
/// snapshot would save little.
#[test]
fn a_memory_opened_to_write_past_its_bound_is_compacted_when_worth_it() {
    let (_dir, server) = server("");
    let url = server.url();
    let mut small = options(&url, "bounded");
    small.compact_above = 64 << 10;
    let messages = || messages(&url, "bounded");
    let notes = ns("notes");
    let docs = |round: u32| -> Vec<Document> {
        (0..50)
            .map(|i| {
                Document::new(
                    format!("d{i}"),
                    format!("round {round} ") + &"x".repeat(1000),
                )
            })
            .collect()
    };
    {
        let a = NatsMemory::open(&small, true, false, "--db").unwrap();
        for round in 0..10 {
            a.put(&notes, docs(round)).unwrap();
        }
    }
    assert_eq!(messages(), 10);
    // Opened to read: left as it is.
    let reader = NatsMemory::open(&small, false, false, "--db").unwrap();
    assert_eq!(messages(), 10);
    // Opened to write: about 500 KB of the same 50 documents become one snapshot.
    let writer = NatsMemory::open(&small, true, false, "--db").unwrap();
    assert_eq!(messages(), 1);
    for copy in [&reader, &writer] {
        assert_eq!(copy.stats(&notes).unwrap().documents, 50);
        assert!(
            copy.get(&notes, "d7")
                .unwrap()
                .unwrap()
                .text
                .starts_with("round 9 ")
        );
    }
    // Distinct documents only: a snapshot would save nothing, so nothing is written.
    let distinct = ns("distinct");
    for round in 0..3 {
        let batch = (0..50)
            .map(|i| Document::new(format!("r{round}-{i}"), "y".repeat(1000)))
            .collect();
        writer.put(&distinct, batch).unwrap();
    }
    let before = messages();
    drop(NatsMemory::open(&small, true, false, "--db").unwrap());
    assert_eq!(messages(), before);
}
