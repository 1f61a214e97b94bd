//! `kill -9` during ingest: a child process stores batches and says which were acknowledged;
//! it is killed mid-stream, several times over one file, and every document it acknowledged
//! is there afterwards, found by id (with its embedding) and by its words.

use colony_memory::{Document, Memory, Namespace, Query, SqliteMemory};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

const CHILD: &str = "COLONY_MEMORY_KILL_CHILD";

/// The writer, run only as the child (ignored otherwise): batches of 20 documents, each
/// acknowledged on stdout once `put` returned, until killed.
#[test]
#[ignore = "the child process of every_acknowledged_document_survives_kill_9_during_ingest"]
fn writer() {
    let spec = std::env::var(CHILD).expect("run by the kill test");
    let (path, round) = spec.split_once('|').unwrap();
    let memory = SqliteMemory::open(std::path::Path::new(path)).unwrap();
    let ns = Namespace::parse("ingest").unwrap();
    for batch in 0.. {
        let docs = (0..20)
            .map(|i| {
                let id = format!("r{round}-b{batch}-{i}");
                let text = format!("ingest round {round} batch {batch} document {i} {id}");
                Document::new(id, text).embedded(vec![batch as f32, i as f32, 1.0])
            })
            .collect();
        memory.put(&ns, docs).unwrap();
        println!("acked {batch}");
    }
}

#[test]
fn every_acknowledged_document_survives_kill_9_during_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let mut acked: Vec<(u32, u32)> = Vec::new();
    for round in 0..4u32 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, format!("{}|{round}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill it after a few acknowledgements, at a different point each round.
        let wanted = 3 + round * 5;
        let mut seen = 0;
        while seen < wanted {
            let line = lines.next().expect("the writer stopped early").unwrap();
            if let Some(batch) = line.strip_prefix("acked ") {
                acked.push((round, batch.parse().unwrap()));
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(u64::from(round) * 3));
        child.kill().unwrap();
        // Acknowledgements printed before the kill landed count too.
        for line in lines.map_while(Result::ok) {
            if let Some(batch) = line.strip_prefix("acked ") {
                acked.push((round, batch.parse().unwrap()));
            }
        }
        child.wait().unwrap();
    }
    let memory = SqliteMemory::open(&path).unwrap();
    let ns = Namespace::parse("ingest").unwrap();
    let stats = memory.stats(&ns).unwrap();
    assert!(stats.documents >= acked.len() as u64 * 20, "{stats:?}");
    for &(round, batch) in &acked {
        for i in 0..20 {
            let id = format!("r{round}-b{batch}-{i}");
            let d = memory.get(&ns, &id).unwrap();
            let d = d.unwrap_or_else(|| panic!("acknowledged {id} is missing"));
            assert_eq!(d.embedding, Some(vec![batch as f32, i as f32, 1.0]));
        }
        let id = format!("r{round}-b{batch}-7");
        let found = memory.search(&ns, &Query::text(&id, 3)).unwrap();
        assert!(
            found.iter().any(|h| h.id == id),
            "{id} not found by its words"
        );
    }
    // The index agrees with the rows: as many documents found by a word every one has.
    let all = memory
        .search(&ns, &Query::text("ingest", colony_memory::MAX_K))
        .unwrap();
    assert_eq!(
        all.len() as u64,
        stats.documents.min(colony_memory::MAX_K as u64)
    );
}
