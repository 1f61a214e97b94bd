//! A memory spread over several SQLite stores conforms, and every search of it, by text,
//! vector or both, with or without a filter, gives what one store holding everything gives:
//! the same documents, in the same order, with the same scores, bit for bit.

use colony_memory::{
    Document, Error, Memory, Namespace, Query, Sharded, SqliteMemory, TextStats, testing,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn spread(n: usize) -> Sharded {
    Sharded::new(
        (0..n)
            .map(|_| Box::new(SqliteMemory::in_memory().unwrap()) as Box<dyn Memory>)
            .collect(),
    )
    .unwrap()
}

#[test]
fn a_memory_over_three_stores_passes_every_case() {
    testing::all(&|| Box::new(spread(3)));
}

#[test]
fn a_memory_over_one_store_passes_every_case() {
    testing::all(&|| Box::new(spread(1)));
}

#[test]
fn no_stores_or_too_many_are_refused() {
    assert!(matches!(Sharded::new(Vec::new()), Err(Error::Store(_))));
    let many = (0..=colony_memory::MAX_SHARDS)
        .map(|_| Box::new(SqliteMemory::in_memory().unwrap()) as Box<dyn Memory>)
        .collect();
    assert!(matches!(Sharded::new(many), Err(Error::Store(_))));
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
    "retry",
    "steal",
    "route",
    "team",
    "memory",
    "recall",
];

fn text(rng: &mut SmallRng) -> String {
    let n = rng.random_range(0..12);
    (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn vector(rng: &mut SmallRng) -> Vec<f32> {
    (0..8).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The same random writes to one store and to `shards` stores, and after each a text, a
/// vector and a hybrid search, filtered or not, compared.
fn same_answers(seed: u64, shards: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let one = SqliteMemory::in_memory().unwrap();
    let many = spread(shards);
    let namespaces = [
        Namespace::parse("shared").unwrap(),
        Namespace::parse("team/a").unwrap(),
    ];
    for step in 0..120 {
        let ns = &namespaces[rng.random_range(0..namespaces.len())];
        if rng.random_bool(0.8) {
            let batch: Vec<Document> = (0..rng.random_range(1..15))
                .map(|_| {
                    let mut d =
                        Document::new(format!("d{}", rng.random_range(0..80)), text(&mut rng))
                            .with("kind", ["a", "b", "c"][rng.random_range(0..3)])
                            .with("n", rng.random_range(0..3));
                    if rng.random_bool(0.7) {
                        d = d.embedded(vector(&mut rng));
                    }
                    d
                })
                .collect();
            assert_eq!(
                one.put(ns, batch.clone()),
                many.put(ns, batch),
                "step {step}"
            );
        } else {
            let ids: Vec<String> = (0..rng.random_range(1..6))
                .map(|_| format!("d{}", rng.random_range(0..80)))
                .collect();
            assert_eq!(one.delete(ns, &ids), many.delete(ns, &ids), "step {step}");
        }
        for ns in &namespaces {
            assert_eq!(one.stats(ns), many.stats(ns), "step {step}");
            let id = format!("d{}", rng.random_range(0..80));
            assert_eq!(one.get(ns, &id), many.get(ns, &id), "step {step}");
            let words: Vec<&str> = (0..rng.random_range(1..4))
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let k = rng.random_range(1..25);
            let mut queries = vec![
                Query::text(words.join(" "), k),
                Query {
                    vector: Some(vector(&mut rng)),
                    k,
                    exact: true,
                    ..Query::default()
                },
                Query {
                    text: Some(words.join(" ")),
                    vector: Some(vector(&mut rng)),
                    k,
                    ..Query::default()
                },
            ];
            if rng.random_bool(0.5) {
                let kind = ["a", "b", "c"][rng.random_range(0..3)];
                queries = queries
                    .into_iter()
                    .map(|q| q.filtered("kind", kind))
                    .collect();
            }
            for q in &queries {
                assert_eq!(
                    one.search(ns, q),
                    many.search(ns, q),
                    "step {step}, {ns}, {q:?}"
                );
            }
        }
    }
    assert_eq!(one.namespaces(), many.namespaces());
}

#[test]
fn searches_over_three_stores_equal_one_stores() {
    for seed in 0..6 {
        same_answers(seed, 3);
    }
}

#[test]
fn searches_over_seven_stores_equal_one_stores() {
    for seed in 10..13 {
        same_answers(seed, 7);
    }
}

#[test]
fn text_is_scored_by_the_statistics_of_every_store() {
    // A word common in one store and rare in another: scored by its own store's counts,
    // a document would rank by where it lives.
    let many = spread(2);
    let ns = Namespace::parse("shared").unwrap();
    let docs: Vec<Document> = (0..40)
        .map(|i| {
            Document::new(
                format!("d{i}"),
                if i < 30 { "lease agent" } else { "lease" },
            )
        })
        .collect();
    many.put(&ns, docs.clone()).unwrap();
    let words = colony_memory::query_words("lease agent");
    let sum = many.text_stats(&ns, &words).unwrap();
    assert_eq!(
        sum,
        TextStats {
            documents: 40,
            words: 30 * 2 + 10,
            df: vec![40, 30],
        }
    );
    let one = SqliteMemory::in_memory().unwrap();
    one.put(&ns, docs).unwrap();
    assert_eq!(one.text_stats(&ns, &words).unwrap(), sum);
}

#[test]
fn a_spread_namespace_keeps_one_dimension_and_one_embedder() {
    let many = spread(4);
    let ns = Namespace::parse("shared").unwrap();
    many.put_embedded(
        &ns,
        vec![Document::new("a", "x").embedded(vec![1.0, 0.0])],
        "lexical",
    )
    .unwrap();
    // Whichever store a document goes to, the namespace's dimension and embedder hold.
    for i in 0..20 {
        let id = format!("other{i}");
        assert!(matches!(
            many.put(
                &ns,
                vec![Document::new(id.as_str(), "y").embedded(vec![1.0; 3])]
            ),
            Err(Error::Dimension { .. })
        ));
        assert!(matches!(
            many.put_embedded(
                &ns,
                vec![Document::new(id.as_str(), "y").embedded(vec![1.0, 2.0])],
                "http:model"
            ),
            Err(Error::Mixed { .. })
        ));
    }
    assert_eq!(many.stats(&ns).unwrap().documents, 1);
    assert_eq!(
        many.stats(&ns).unwrap().embedder.as_deref(),
        Some("lexical")
    );
}

#[test]
fn spread_files_hold_their_documents_when_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Sharded::new(
            (0..3)
                .map(|i| {
                    Box::new(SqliteMemory::open(&dir.path().join(format!("m{i}.db"))).unwrap())
                        as Box<dyn Memory>
                })
                .collect(),
        )
        .unwrap()
    };
    let ns = Namespace::parse("run/1").unwrap();
    {
        let m = open();
        let docs = (0..300)
            .map(|i| Document::new(format!("d{i}"), format!("note {i} about agents")))
            .collect();
        m.put(&ns, docs).unwrap();
    }
    let m = open();
    assert_eq!(m.stats(&ns).unwrap().documents, 300);
    assert_eq!(
        m.get(&ns, "d123").unwrap().unwrap().text,
        "note 123 about agents"
    );
    // Every store holds a share.
    for i in 0..3 {
        let one = SqliteMemory::open(&dir.path().join(format!("m{i}.db"))).unwrap();
        let n = one.stats(&ns).unwrap().documents;
        assert!((50..=150).contains(&n), "store {i} holds {n}");
    }
}
