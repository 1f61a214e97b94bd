//! The conformance cases every [`Memory`] passes: the same operations give the same results
//! whatever the store. A store's tests call [`all`] with a function that makes an empty one.

use crate::{Document, Error, Memory, Namespace, Query};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// A conformance case: it panics, saying why, when the store does not conform.
pub type Case = fn(&dyn Memory);

/// Each case, by name.
pub const CASES: &[(&str, Case)] = &[
    (
        "documents_come_back_as_stored",
        documents_come_back_as_stored,
    ),
    (
        "a_put_replaces_documents_of_the_same_id",
        a_put_replaces_documents_of_the_same_id,
    ),
    ("namespaces_are_isolated", namespaces_are_isolated),
    ("deleted_documents_are_gone", deleted_documents_are_gone),
    (
        "text_search_ranks_and_filters",
        text_search_ranks_and_filters,
    ),
    ("vector_search_is_exact", vector_search_is_exact),
    ("hybrid_search_fuses_both", hybrid_search_fuses_both),
    (
        "bad_input_is_refused_and_nothing_stored",
        bad_input_is_refused_and_nothing_stored,
    ),
    ("words_are_counted_alike", words_are_counted_alike),
    (
        "filters_compare_numbers_exactly",
        filters_compare_numbers_exactly,
    ),
];

/// Runs every case on a fresh store from `make`, naming the case that fails.
pub fn all(make: &dyn Fn() -> Box<dyn Memory>) {
    for (name, case) in CASES {
        let memory = make();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&*memory)));
        if let Err(panic) = result {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("conformance case {name} failed: {why}");
        }
    }
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn ids(hits: &[crate::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

pub fn documents_come_back_as_stored(m: &dyn Memory) {
    let shared = ns("shared");
    let d = Document::new("a", "the planner splits the work")
        .with("role", "planner")
        .with("step", 2)
        .with("final", true)
        .embedded(vec![0.5, -1.0, 2.25]);
    m.put(&shared, vec![d.clone(), Document::new("b", "no embedding")])
        .unwrap();
    assert_eq!(m.get(&shared, "a").unwrap(), Some(d));
    assert_eq!(m.get(&shared, "b").unwrap().unwrap().embedding, None);
    assert_eq!(m.get(&shared, "c").unwrap(), None);
    let stats = m.stats(&shared).unwrap();
    assert_eq!((stats.documents, stats.dimension), (2, Some(3)));
    assert_eq!(
        stats.text_bytes,
        ("the planner splits the work".len() + "no embedding".len()) as u64
    );
    assert_eq!(m.namespaces().unwrap(), [shared]);
}

pub fn a_put_replaces_documents_of_the_same_id(m: &dyn Memory) {
    let n = ns("run/1");
    m.put(&n, vec![Document::new("a", "first words")]).unwrap();
    m.put(&n, vec![Document::new("a", "second text").with("v", 2)])
        .unwrap();
    let a = m.get(&n, "a").unwrap().unwrap();
    assert_eq!(
        (a.text.as_str(), a.metadata["v"].as_i64()),
        ("second text", Some(2))
    );
    assert_eq!(m.stats(&n).unwrap().documents, 1);
    // The old text is no longer found; the new one is.
    assert!(m.search(&n, &Query::text("first", 5)).unwrap().is_empty());
    assert_eq!(
        ids(&m.search(&n, &Query::text("second", 5)).unwrap()),
        ["a"]
    );
}

pub fn namespaces_are_isolated(m: &dyn Memory) {
    let (a, b) = (ns("team/a"), ns("team/b"));
    m.put(
        &a,
        vec![Document::new("x", "alpha words").embedded(vec![1.0, 0.0])],
    )
    .unwrap();
    m.put(
        &b,
        vec![Document::new("x", "beta words").embedded(vec![0.0, 1.0, 0.0])],
    )
    .unwrap();
    assert_eq!(m.get(&a, "x").unwrap().unwrap().text, "alpha words");
    assert_eq!(m.get(&b, "x").unwrap().unwrap().text, "beta words");
    assert!(m.search(&a, &Query::text("beta", 5)).unwrap().is_empty());
    assert_eq!(ids(&m.search(&b, &Query::text("words", 5)).unwrap()), ["x"]);
    // Each its own dimension.
    assert_eq!(m.stats(&a).unwrap().dimension, Some(2));
    assert_eq!(m.stats(&b).unwrap().dimension, Some(3));
    assert_eq!(m.delete(&a, &["x".into()]).unwrap(), 1);
    assert!(m.get(&b, "x").unwrap().is_some());
    assert_eq!(m.namespaces().unwrap(), [a, b]);
}

pub fn deleted_documents_are_gone(m: &dyn Memory) {
    let n = ns("agent/7");
    let docs = (0..5)
        .map(|i| {
            Document::new(format!("d{i}"), format!("note number {i}")).embedded(vec![i as f32, 1.0])
        })
        .collect();
    m.put(&n, docs).unwrap();
    assert_eq!(
        m.delete(&n, &["d1".into(), "d3".into(), "nope".into()])
            .unwrap(),
        2
    );
    assert_eq!(m.get(&n, "d1").unwrap(), None);
    let found = m.search(&n, &Query::text("note", 10)).unwrap();
    assert_eq!(found.len(), 3);
    assert!(ids(&found).iter().all(|id| !["d1", "d3"].contains(id)));
    let near = m.search(&n, &Query::vector(vec![1.0, 1.0], 10)).unwrap();
    assert_eq!(near.len(), 3);
    assert_eq!(m.stats(&n).unwrap().documents, 3);
}

pub fn text_search_ranks_and_filters(m: &dyn Memory) {
    let n = ns("shared");
    m.put(
        &n,
        vec![
            Document::new("restart", "restart the agent after the agent crashed")
                .with("kind", "ops"),
            Document::new("once", "the agent wrote a report").with("kind", "ops"),
            Document::new("none", "quarterly tax figures").with("kind", "finance"),
            Document::new("other", "agent agent agent restart").with("kind", "draft"),
        ],
    )
    .unwrap();
    let found = m.search(&n, &Query::text("restart agent", 10)).unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(!ids(&found).contains(&"none"));
    // Best first; a document with both words comes before one with one.
    assert!(
        found.windows(2).all(|w| w[0].score >= w[1].score),
        "{found:?}"
    );
    assert_eq!(found.last().unwrap().id, "once");
    // A filter keeps only documents whose metadata matches.
    let ops = m
        .search(
            &n,
            &Query::text("restart agent", 10).filtered("kind", "ops"),
        )
        .unwrap();
    assert_eq!(ids(&ops).len(), 2);
    assert!(ops.iter().all(|h| h.metadata["kind"] == "ops"));
    assert_eq!(m.search(&n, &Query::text("restart", 1)).unwrap().len(), 1);
    // A filter matches its JSON type too: `true` is not 1, and 1 is not `true` nor "1".
    m.put(
        &n,
        vec![
            Document::new("flag-true", "flagged agent").with("flag", true),
            Document::new("flag-one", "flagged agent").with("flag", 1),
            Document::new("flag-text", "flagged agent").with("flag", "1"),
        ],
    )
    .unwrap();
    for (value, id) in [
        (serde_json::json!(true), "flag-true"),
        (serde_json::json!(1), "flag-one"),
        (serde_json::json!(1.0), "flag-one"),
        (serde_json::json!("1"), "flag-text"),
    ] {
        let q = Query::text("flagged", 10).filtered("flag", value.clone());
        assert_eq!(ids(&m.search(&n, &q).unwrap()), [id], "flag = {value}");
    }
    // Text no word of which is stored finds nothing; syntax is not interpreted.
    assert!(m.search(&n, &Query::text("zebra", 5)).unwrap().is_empty());
    assert!(
        m.search(&n, &Query::text("agent\" OR NEAR(x) *", 5))
            .is_ok()
    );
}

pub fn vector_search_is_exact(m: &dyn Memory) {
    let n = ns("vectors");
    let mut rng = SmallRng::seed_from_u64(7);
    let docs: Vec<Document> = (0..300)
        .map(|i| {
            let v: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
            Document::new(format!("v{i:03}"), "x")
                .with("even", i % 2 == 0)
                .embedded(v)
        })
        .collect();
    m.put(&n, docs.clone()).unwrap();
    let query: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
    // Brute force, apart from the store.
    let mut expected: Vec<(f64, &str)> = docs
        .iter()
        .map(|d| {
            (
                crate::rank::cosine(&query, d.embedding.as_ref().unwrap()),
                d.id.as_str(),
            )
        })
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let found = m.search(&n, &Query::vector(query.clone(), 10)).unwrap();
    assert_eq!(
        ids(&found),
        expected.iter().take(10).map(|e| e.1).collect::<Vec<_>>()
    );
    assert!((found[0].score - expected[0].0).abs() < 1e-5);
    let even = m
        .search(&n, &Query::vector(query.clone(), 5).filtered("even", true))
        .unwrap();
    let want: Vec<&str> = expected
        .iter()
        .filter(|e| e.1[1..].parse::<u32>().unwrap() % 2 == 0)
        .take(5)
        .map(|e| e.1)
        .collect();
    assert_eq!(ids(&even), want);
    // A query of another dimension is refused.
    assert!(matches!(
        m.search(&n, &Query::vector(vec![1.0; 3], 5)),
        Err(Error::Query(_))
    ));
}

pub fn hybrid_search_fuses_both(m: &dyn Memory) {
    let n = ns("hybrid");
    m.put(
        &n,
        vec![
            Document::new("words", "restart policy of the supervisor").embedded(vec![0.0, 1.0]),
            Document::new("near", "unrelated text").embedded(vec![1.0, 0.0]),
            Document::new("both", "supervisor restart").embedded(vec![0.9, 0.1]),
            Document::new("neither", "tax").embedded(vec![-1.0, 0.0]),
        ],
    )
    .unwrap();
    let q = Query {
        text: Some("supervisor restart".into()),
        vector: Some(vec![1.0, 0.0]),
        ..Query::default()
    };
    let found = m.search(&n, &Query { k: 3, ..q }).unwrap();
    assert_eq!(found[0].id, "both", "{found:?}");
    assert_eq!(found.len(), 3);
    assert!(ids(&found).contains(&"words") && ids(&found).contains(&"near"));
}

pub fn bad_input_is_refused_and_nothing_stored(m: &dyn Memory) {
    let n = ns("strict");
    m.put(
        &n,
        vec![Document::new("first", "ok").embedded(vec![1.0, 2.0])],
    )
    .unwrap();
    let before = m.stats(&n).unwrap();
    let refused = [
        // Another dimension than the namespace's, after a good document: none stored.
        vec![
            Document::new("good", "fine"),
            Document::new("wide", "x").embedded(vec![1.0, 2.0, 3.0]),
        ],
        vec![Document::new("nan", "x").embedded(vec![f32::NAN, 1.0])],
        vec![Document::new("huge", "x".repeat(crate::MAX_TEXT_BYTES + 1))],
        vec![Document::new("", "no id")],
        vec![Document::new("nested", "x").with("deep", serde_json::json!({"a": 1}))],
        vec![Document::new("badkey", "x").with("no spaces", 1)],
        vec![
            Document::new("a", "x").embedded(vec![1.0, 2.0]),
            Document::new("b", "x").embedded(vec![1.0]),
        ],
    ];
    for batch in refused {
        let what = format!("{:?}", batch.iter().map(|d| &d.id).collect::<Vec<_>>());
        let e = m.put(&n, batch).unwrap_err();
        assert!(
            matches!(e, Error::Document { .. } | Error::Dimension { .. }),
            "{what}: {e}"
        );
        assert_eq!(m.stats(&n).unwrap(), before, "{what} left something: {e}");
    }
    assert!(m.get(&n, "good").unwrap().is_none());
    // Unknown namespaces, bad names and bad queries: refused, with what is wrong.
    let nowhere = ns("nowhere");
    assert_eq!(
        m.search(&nowhere, &Query::text("x", 1)),
        Err(Error::UnknownNamespace("nowhere".into()))
    );
    assert!(matches!(
        m.get(&nowhere, "x"),
        Err(Error::UnknownNamespace(_))
    ));
    assert!(matches!(m.stats(&nowhere), Err(Error::UnknownNamespace(_))));
    for bad in ["", "a//b", "../x", "a b", "x/..", &"n".repeat(129)] {
        assert!(Namespace::parse(bad).is_err(), "{bad:?}");
    }
    for q in [
        Query::text("x", 0),
        Query::text("x", crate::MAX_K + 1),
        Query::default(),
        Query::text("   ", 3),
        Query::vector(vec![f32::INFINITY, 1.0], 3),
        Query::text("x", 3).filtered("a b", 1),
    ] {
        assert!(matches!(m.search(&n, &q), Err(Error::Query(_))), "{q:?}");
    }
    assert!(!m.namespaces().unwrap().contains(&nowhere));
}

/// Every store counts words alike (runs of letters and digits, lowercased), so that their
/// statistics and rankings agree: an accent makes another word, whatever a store's own
/// index folds.
pub fn words_are_counted_alike(m: &dyn Memory) {
    let n = ns("words");
    m.put(
        &n,
        vec![
            Document::new("accent", "Café open"),
            Document::new("plain", "cafe closed"),
            Document::new("short", "CAFE"),
            Document::new("other", "tea house"),
        ],
    )
    .unwrap();
    let words = crate::query_words("cafe, Open!");
    assert_eq!(words, ["cafe", "open"]);
    let stats = m.text_stats(&n, &words).unwrap();
    assert_eq!(
        (stats.documents, stats.words, stats.df),
        (4, 2 + 2 + 1 + 2, vec![2, 1])
    );
    let found = m.search(&n, &Query::text("cafe", 10)).unwrap();
    assert_eq!(ids(&found), ["short", "plain"], "{found:?}");
    assert_eq!(
        ids(&m.search(&n, &Query::text("café", 10)).unwrap()),
        ["accent"]
    );
    // A namespace never written has no statistics, and no error.
    let none = m.text_stats(&ns("never"), &words).unwrap();
    assert_eq!((none.documents, none.df), (0, vec![0, 0]));
}

/// A filter compares numbers exactly, by text and by vector alike: an integer with an
/// integer, a real with a real, an integer with a real only when the real is that integer.
pub fn filters_compare_numbers_exactly(m: &dyn Memory) {
    let n = ns("numbers");
    let values = [
        ("max", serde_json::json!(i64::MAX)),
        ("big", serde_json::json!(9_007_199_254_740_993_i64)),
        ("one", serde_json::json!(1)),
        ("half", serde_json::json!(1.5)),
        ("yes", serde_json::json!(true)),
    ];
    let docs = values
        .iter()
        .map(|(id, v)| {
            Document::new(*id, "counted value")
                .with("v", v.clone())
                .embedded(vec![1.0, 0.5])
        })
        .collect();
    m.put(&n, docs).unwrap();
    for (filter, want) in [
        (serde_json::json!(i64::MAX), vec!["max"]),
        (serde_json::json!(9_223_372_036_854_775_808_u64), vec![]),
        (serde_json::json!(9_007_199_254_740_993_i64), vec!["big"]),
        (serde_json::json!(9_007_199_254_740_992.0), vec![]),
        (serde_json::json!(1.0), vec!["one"]),
        (serde_json::json!(1.5), vec!["half"]),
        (serde_json::json!(true), vec!["yes"]),
    ] {
        for q in [
            Query::text("counted", 10),
            Query::vector(vec![1.0, 0.5], 10),
        ] {
            let q = q.filtered("v", filter.clone());
            let mut found = ids(&m.search(&n, &q).unwrap())
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            found.sort();
            assert_eq!(found, want, "v = {filter}, {q:?}");
        }
    }
}

/// A real ChromaDB server for tests (`chroma run`, PyPI's `chromadb`), on a free loopback
/// port with a folder of its own, stopped and removed when dropped.
#[derive(Debug)]
pub struct ChromaServer {
    child: std::process::Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Drop for ChromaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ChromaServer {
    /// A fresh server, once it listens; `None` (the caller skips, saying so) when `chroma`
    /// is not on the `PATH`, which fails the test instead when `CI` is set.
    pub fn start() -> Option<Self> {
        use std::{
            net::{TcpListener, TcpStream},
            time::{Duration, Instant},
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        let Some(chroma) = std::env::split_paths(&path)
            .map(|dir| dir.join("chroma"))
            .find(|p| p.is_file())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "chroma is missing: .ci/run installs it (pip install chromadb)"
            );
            eprintln!("chroma not installed (pip install chromadb): skipping this Chroma test");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("colony-chroma-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder for chroma");
        let child = std::process::Command::new(chroma)
            .args([
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--path",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chroma starts");
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chroma did not start in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
