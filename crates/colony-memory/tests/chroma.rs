//! The Chroma store against a real ChromaDB server (`chroma run`, PyPI's `chromadb`, which
//! `.ci/run` installs): every conformance case; the same answers as the SQLite store for
//! the same random writes; a memory spread over Chroma collections; and what a broken
//! server or a bad setting gets.

use colony_memory::{
    ChromaMemory, ChromaOptions, Document, Error, Memory, Namespace, Query, Sharded, SqliteMemory,
    testing,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value, json};
use std::{
    net::TcpListener,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

type Server = testing::ChromaServer;

fn start() -> Option<Server> {
    Server::start()
}

static PREFIXES: AtomicUsize = AtomicUsize::new(0);

/// A memory of its own in the server: a prefix no other has.
fn memory(server: &Server) -> ChromaMemory {
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    let mut options = ChromaOptions::new(format!("http://127.0.0.1:{}", server.port));
    options.prefix = format!("t{n}");
    // Small enough that the conformance case of 300 vectors goes through Chroma's graph.
    options.exact_up_to = 100;
    ChromaMemory::connect(options).unwrap()
}

#[test]
fn the_chroma_store_passes_every_case_and_answers_as_sqlite_does() {
    let Some(server) = start() else { return };
    testing::all(&|| Box::new(memory(&server)));
    testing::all(&|| {
        Box::new(
            Sharded::new(vec![
                Box::new(memory(&server)) as Box<dyn Memory>,
                Box::new(memory(&server)),
                Box::new(memory(&server)),
            ])
            .unwrap(),
        )
    });
    for seed in 0..2 {
        same_answers_as_sqlite(&server, seed);
    }
    refusals(&server);
    replaced_metadata_is_gone(&server);
    an_index_behind_its_record_is_not_trusted(&server);
}

/// What a write that failed between the record and the index leaves (entries missing from
/// the index, the namespace marked behind): exact searches read the record and answer as
/// SQLite does; a rebuild writes the index again from the record and clears the mark.
fn an_index_behind_its_record_is_not_trusted(server: &Server) {
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    let mut options = ChromaOptions::new(server.url());
    options.prefix = format!("t{n}");
    let m = ChromaMemory::connect(options).unwrap();
    let sqlite = SqliteMemory::in_memory().unwrap();
    let ns = Namespace::parse("behind").unwrap();
    let mut rng = SmallRng::seed_from_u64(9);
    let docs: Vec<Document> = (0..30)
        .map(|i| {
            Document::new(format!("d{i}"), "x")
                .with("even", i % 2 == 0)
                .embedded((0..4).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        })
        .collect();
    m.put(&ns, docs.clone()).unwrap();
    sqlite.put(&ns, docs.clone()).unwrap();
    // The index loses five entries and the namespace is marked, as by a put that died
    // after writing the record.
    let http = reqwest::blocking::Client::new();
    let base = format!(
        "{}/api/v2/tenants/default_tenant/databases/default_database/collections",
        server.url()
    );
    let id = |name: &str| -> String {
        let c: Value = http
            .get(format!("{base}/{name}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        c["id"].as_str().unwrap().to_owned()
    };
    let (docs_id, vecs_id) = (
        id(&format!("t{n}.behind.docs")),
        id(&format!("t{n}.behind.vecs")),
    );
    let lost: Vec<String> = (0..10).step_by(2).map(|i| format!("d{i}")).collect();
    let r = http
        .post(format!("{base}/{vecs_id}/delete"))
        .json(&json!({ "ids": lost }))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let record: Value = http
        .get(format!("{base}/t{n}.behind.docs"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut meta = record["metadata"].clone();
    meta["colony:index-behind"] = json!(true);
    let r = http
        .put(format!("{base}/{docs_id}"))
        .json(&json!({ "new_metadata": meta }))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let ids = |h: Vec<colony_memory::Hit>| h.into_iter().map(|h| h.id).collect::<Vec<_>>();
    let check = |what: &str| {
        for d in docs.iter().take(10) {
            let v = d.embedding.clone().unwrap();
            for q in [
                Query {
                    exact: true,
                    ..Query::vector(v.clone(), 5)
                },
                Query::vector(v.clone(), 5).filtered("even", true),
            ] {
                assert_eq!(
                    ids(m.search(&ns, &q).unwrap()),
                    ids(sqlite.search(&ns, &q).unwrap()),
                    "{what}: {q:?}"
                );
            }
        }
    };
    check("behind");
    let rebuilt = m.rebuild(&ns).unwrap();
    assert_eq!(rebuilt.points, 30);
    let record: Value = http
        .get(format!("{base}/t{n}.behind.docs"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        record["metadata"]["colony:index-behind"],
        Value::Null,
        "{record}"
    );
    let vecs: Value = http
        .get(format!("{base}/{vecs_id}/count"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(vecs, json!(30));
    check("rebuilt");

    // The index deleted outside colony: the next put makes one holding only its batch, so
    // the namespace stays behind until a rebuild.
    let r = http
        .delete(format!("{base}/t{n}.behind.vecs"))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let extra = Document::new("late", "x").embedded(vec![0.1, 0.2, 0.3, 0.4]);
    m.put(&ns, vec![extra.clone()]).unwrap();
    sqlite.put(&ns, vec![extra]).unwrap();
    let behind = |http: &reqwest::blocking::Client| -> Value {
        let r: Value = http
            .get(format!("{base}/t{n}.behind.docs"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["metadata"]["colony:index-behind"].clone()
    };
    assert_eq!(behind(&http), json!(true));
    check("index recreated");
    assert_eq!(m.rebuild(&ns).unwrap().points, 31);
    assert_eq!(behind(&http), Value::Null);
    check("rebuilt again");

    // A namespace without vectors is cleared by a rebuild too.
    let plain = Namespace::parse("plain").unwrap();
    m.put(&plain, vec![Document::new("a", "no vector")])
        .unwrap();
    assert_eq!(m.rebuild(&plain).unwrap().points, 0);
}

/// Chroma merges an entry's metadata with what was there: a key the new version lacks must
/// not be found by a filter, nor come back.
fn replaced_metadata_is_gone(server: &Server) {
    let m = memory(server);
    let ns = Namespace::parse("shared").unwrap();
    m.put(
        &ns,
        vec![
            Document::new("a", "restart the agent")
                .with("kind", "ops")
                .with("final", true)
                .embedded(vec![1.0, 0.0]),
        ],
    )
    .unwrap();
    m.put(
        &ns,
        vec![Document::new("a", "restart the agent").with("step", 2)],
    )
    .unwrap();
    for q in [
        Query::text("restart", 5).filtered("kind", "ops"),
        Query::text("restart", 5).filtered("final", true),
        Query::vector(vec![1.0, 0.0], 5),
    ] {
        assert_eq!(m.search(&ns, &q).unwrap(), Vec::new(), "{q:?}");
    }
    let a = m.get(&ns, "a").unwrap().unwrap();
    assert_eq!(a, Document::new("a", "restart the agent").with("step", 2));
    // The namespace keeps its dimension once it had vectors, as SQLite does.
    assert_eq!(m.stats(&ns).unwrap().dimension, Some(2));
}

const WORDS: &[&str] = &[
    "agent",
    "restart",
    "supervisor",
    "crash",
    "vote",
    "quorum",
    "task",
    "journal",
    "lease",
    "worker",
    "pool",
    "heartbeat",
];

/// Random writes to SQLite and to Chroma, and after each a search by text, by vector and
/// by both, filtered or not: the same documents in the same order; text scores equal bit
/// for bit, vector scores within f32 rounding (SQLite sums in f32 lanes).
fn same_answers_as_sqlite(server: &Server, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let sqlite = SqliteMemory::in_memory().unwrap();
    let chroma = memory(server);
    let ns = Namespace::parse("run/a_b.c").unwrap();
    for step in 0..25 {
        if rng.random_bool(0.8) {
            let batch: Vec<Document> = (0..rng.random_range(1..12))
                .map(|_| {
                    let text: Vec<&str> = (0..rng.random_range(0..10))
                        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                        .collect();
                    let mut d =
                        Document::new(format!("d{}", rng.random_range(0..40)), text.join(" "))
                            .with("kind", ["a", "b"][rng.random_range(0..2)])
                            .with("n", rng.random_range(0..3));
                    if rng.random_bool(0.7) {
                        d = d.embedded((0..6).map(|_| rng.random_range(-1.0f32..1.0)).collect());
                    }
                    d
                })
                .collect();
            assert_eq!(
                sqlite.put(&ns, batch.clone()),
                chroma.put(&ns, batch),
                "step {step}"
            );
        } else {
            let ids: Vec<String> = (0..3)
                .map(|_| format!("d{}", rng.random_range(0..40)))
                .collect();
            assert_eq!(
                sqlite.delete(&ns, &ids),
                chroma.delete(&ns, &ids),
                "step {step}"
            );
        }
        assert_eq!(sqlite.stats(&ns), chroma.stats(&ns), "step {step}");
        let id = format!("d{}", rng.random_range(0..40));
        assert_eq!(sqlite.get(&ns, &id), chroma.get(&ns, &id), "step {step}");
        let words = format!(
            "{} {}",
            WORDS[rng.random_range(0..WORDS.len())],
            WORDS[rng.random_range(0..WORDS.len())]
        );
        let k = rng.random_range(1..15);
        let vector: Vec<f32> = (0..6).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut queries = vec![
            Query::text(words.clone(), k),
            Query::vector(vector.clone(), k),
            Query {
                text: Some(words),
                vector: Some(vector),
                k,
                ..Query::default()
            },
        ];
        if rng.random_bool(0.5) {
            let n = rng.random_range(0..3);
            queries = queries.into_iter().map(|q| q.filtered("n", n)).collect();
        }
        for (i, q) in queries.iter().enumerate() {
            let (a, b) = match (sqlite.search(&ns, q), chroma.search(&ns, q)) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    assert_eq!(a, b, "step {step}, {q:?}");
                    continue;
                }
            };
            let ids = |h: &[colony_memory::Hit]| h.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&a), ids(&b), "step {step}, {q:?}");
            for (x, y) in a.iter().zip(&b) {
                if i == 1 {
                    assert!((x.score - y.score).abs() < 1e-5, "step {step}: {x:?} {y:?}");
                } else {
                    assert_eq!(x, y, "step {step}, {q:?}");
                }
            }
        }
    }
    assert_eq!(sqlite.namespaces(), chroma.namespaces());
}

fn refusals(server: &Server) {
    let url = format!("http://127.0.0.1:{}", server.port);
    let bad = |f: &dyn Fn(&mut ChromaOptions)| {
        let mut o = ChromaOptions::new(url.clone());
        f(&mut o);
        ChromaMemory::connect(o).unwrap_err()
    };
    let e = bad(&|o| o.database = "nowhere".into());
    assert!(e.to_string().contains("no database \"nowhere\""), "{e}");
    let e = bad(&|o| o.prefix = "a.b".into());
    assert!(e.to_string().contains("prefix"), "{e}");
    let e = bad(&|o| o.tenant = "../x".into());
    assert!(e.to_string().contains("tenant"), "{e}");
    let e = bad(&|o| o.url = "ftp://x".into());
    assert!(e.to_string().contains("http://"), "{e}");
    // Nothing listening: a clear error, not a hang or a panic.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = ChromaOptions::new(format!("http://127.0.0.1:{port}"));
    o.timeout = Duration::from_secs(2);
    assert!(matches!(ChromaMemory::connect(o), Err(Error::Store(_))));
}
