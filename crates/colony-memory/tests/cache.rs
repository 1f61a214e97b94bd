//! The cache of searches never answers what a fresh search would not: two stores on one
//! file, one caching and one not (as two processes would be), take turns writing at random,
//! and after every write each search gives the same hits through both.

use colony_memory::{Document, Memory, Namespace, Query, SqliteMemory};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const WORDS: &[&str] = &["agent", "task", "vote", "team", "memory", "route", "queue"];

fn doc(rng: &mut SmallRng, id: u32) -> Document {
    let text: Vec<&str> = (0..rng.random_range(1..6))
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    Document::new(format!("d{id}"), text.join(" "))
        .with("kind", if rng.random_bool(0.5) { "note" } else { "plan" })
        .embedded((0..4).map(|_| rng.random_range(-1.0..1.0)).collect())
}

fn queries(rng: &mut SmallRng) -> Vec<Query> {
    let vector: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
    let word = WORDS[rng.random_range(0..WORDS.len())];
    vec![
        Query::text(word, 5),
        Query::text(word, 5).filtered("kind", "note"),
        Query::vector(vector.clone(), 5),
        Query {
            text: Some(word.into()),
            vector: Some(vector),
            k: 5,
            ..Query::default()
        },
    ]
}

#[test]
fn a_cached_search_always_equals_a_fresh_one_whoever_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let cached = SqliteMemory::open(&path).unwrap();
    let fresh = SqliteMemory::open(&path).unwrap().with_cache(0);
    let namespaces = [
        Namespace::parse("team/a").unwrap(),
        Namespace::parse("team/b").unwrap(),
    ];
    let mut rng = SmallRng::seed_from_u64(7);
    for ns in &namespaces {
        cached.put(ns, vec![doc(&mut rng, 0)]).unwrap();
    }
    let mut asked = Vec::new();
    for step in 0..300 {
        // A write through either store, to either namespace: a put or a delete.
        let writer: &dyn Memory = if rng.random_bool(0.5) {
            &cached
        } else {
            &fresh
        };
        let ns = &namespaces[rng.random_range(0..2)];
        let id = rng.random_range(0..20);
        if rng.random_bool(0.8) {
            writer.put(ns, vec![doc(&mut rng, id)]).unwrap();
        } else {
            writer.delete(ns, &[format!("d{id}")]).unwrap();
        }
        // The counts the file keeps by triggers are what its rows say.
        let raw = rusqlite::Connection::open(&path).unwrap();
        for ns in &namespaces {
            let (n, bytes): (i64, i64) = raw
                .query_row(
                    "SELECT count(*), coalesce(sum(length(CAST(text AS BLOB))), 0)
                     FROM documents WHERE namespace = ?1",
                    [ns.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let stats = fresh.stats(ns).unwrap();
            assert_eq!(
                (stats.documents, stats.text_bytes),
                (n as u64, bytes as u64)
            );
        }
        // The same queries again and again, so that the cache has answers to give.
        if step % 10 == 0 {
            asked = queries(&mut rng);
        }
        for ns in &namespaces {
            for query in &asked {
                let a = cached.search(ns, query).unwrap();
                let b = fresh.search(ns, query).unwrap();
                assert_eq!(a, b, "step {step}, {ns}, {query:?}");
                // Asked twice in a row with no write between: the second is the cache's.
                assert_eq!(cached.search(ns, query).unwrap(), b);
            }
        }
    }
    let stats = cached.cache_stats();
    assert!(stats.hits >= 2400, "{stats:?}");
    assert!(stats.misses > 0, "{stats:?}");
    assert_eq!(fresh.cache_stats().entries, 0);
}

#[test]
fn a_file_from_before_versions_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    {
        // The first schema: namespaces without versions, no store row.
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE namespaces (name TEXT PRIMARY KEY, dimension INTEGER);
             INSERT INTO namespaces VALUES ('shared', NULL);
             CREATE TABLE documents (
                 seq INTEGER PRIMARY KEY,
                 namespace TEXT NOT NULL REFERENCES namespaces(name),
                 id TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL,
                 embedding BLOB, UNIQUE (namespace, id));
             INSERT INTO documents VALUES (7, 'shared', 'old', 'an old row', '{}', NULL);
             PRAGMA application_id = 1668113773;",
        )
        .unwrap();
    }
    let m = SqliteMemory::open_existing(&path).unwrap();
    let ns = Namespace::parse("shared").unwrap();
    // Its counts were filled from its rows.
    let stats = m.stats(&ns).unwrap();
    assert_eq!((stats.documents, stats.text_bytes), (1, 10));
    m.put(&ns, vec![Document::new("a", "an agent's note")])
        .unwrap();
    assert_eq!(m.stats(&ns).unwrap().documents, 2);
    let query = Query::text("agent", 3);
    assert_eq!(m.search(&ns, &query).unwrap().len(), 1);
    assert_eq!(m.search(&ns, &query).unwrap().len(), 1);
    assert_eq!(m.cache_stats().hits, 1);
    // Its rows' words were counted when it was brought up to date, as `put` counts them.
    let stats = m.text_stats(&ns, &["old".into()]).unwrap();
    assert_eq!(
        (stats.documents, stats.words, stats.df),
        (2, 3 + 4, vec![1])
    );
    assert_eq!(m.search(&ns, &Query::text("old", 3)).unwrap()[0].id, "old");
    drop(m);
    // Marked as the new format: a binary that knows only the first refuses it.
    let db = rusqlite::Connection::open(&path).unwrap();
    let id: i64 = db
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(id, 0x636d_6533);
    // Its documents took their `seq` from the store's row, which went up with them.
    let (seq, max): (i64, i64) = db
        .query_row(
            "SELECT (SELECT seq FROM store), (SELECT max(seq) FROM documents)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(seq, max);
}
