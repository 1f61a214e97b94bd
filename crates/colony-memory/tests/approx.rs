//! Approximate vector search: the HNSW index finds what exact search finds (recall@10 at
//! least 0.95), scores its hits exactly, sees documents added, replaced and deleted after
//! it was built, is built by itself in the background once a namespace is large enough, and
//! is rebuilt from the file alone after the process that wrote it is gone.

use colony_memory::{Document, Memory, Namespace, Query, SqliteMemory};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::time::{Duration, Instant};

const DIM: usize = 32;

/// A unit vector near one of 20 centres.
fn near(rng: &mut SmallRng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[rng.random_range(0..centres.len())];
    let v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.3..0.3)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn centres(rng: &mut SmallRng) -> Vec<Vec<f32>> {
    (0..20)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

fn fill(m: &SqliteMemory, ns: &Namespace, rng: &mut SmallRng, centres: &[Vec<f32>], n: usize) {
    let docs = (0..n)
        .map(|i| Document::new(format!("d{i}"), format!("note {i}")).embedded(near(rng, centres)))
        .collect();
    m.put(ns, docs).unwrap();
}

fn exact(v: Vec<f32>, k: usize) -> Query {
    Query {
        exact: true,
        ..Query::vector(v, k)
    }
}

/// Recall@k of the approximate search against the exact one, over `queries` queries.
fn recall(m: &SqliteMemory, ns: &Namespace, rng: &mut SmallRng, centres: &[Vec<f32>]) -> f64 {
    let (mut found, mut wanted) = (0, 0);
    for _ in 0..50 {
        let v = near(rng, centres);
        let truth = m.search(ns, &exact(v.clone(), 10)).unwrap();
        let got = m.search(ns, &Query::vector(v, 10)).unwrap();
        assert_eq!(got.len(), 10);
        for hit in &got {
            // Scored exactly: the same score as exact search gives the same document.
            if let Some(t) = truth.iter().find(|t| t.id == hit.id) {
                assert!((t.score - hit.score).abs() < 1e-9, "{t:?} {hit:?}");
            }
        }
        wanted += truth.len();
        found += got
            .iter()
            .filter(|h| truth.iter().any(|t| t.id == h.id))
            .count();
    }
    found as f64 / wanted as f64
}

#[test]
fn the_index_finds_what_exact_search_finds_and_follows_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let m = SqliteMemory::open(&dir.path().join("m.db"))
        .unwrap()
        .with_approximate(None)
        .with_cache(0);
    let ns = Namespace::parse("shared").unwrap();
    let mut rng = SmallRng::seed_from_u64(11);
    let centres = centres(&mut rng);
    fill(&m, &ns, &mut rng, &centres, 3_000);
    assert_eq!(m.indexed(&ns), None, "never indexed by itself here");
    assert_eq!(m.rebuild(&ns).unwrap().points, 3_000);
    let r = recall(&m, &ns, &mut rng, &centres);
    assert!(r >= 0.95, "recall@10 {r}");

    // Added after the build: found, by its own vector, first.
    let fresh: Vec<f32> = (0..DIM).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    m.put(
        &ns,
        vec![Document::new("new", "new").embedded(fresh.clone())],
    )
    .unwrap();
    let hits = m.search(&ns, &Query::vector(fresh.clone(), 10)).unwrap();
    assert_eq!(hits[0].id, "new");
    assert_eq!(m.indexed(&ns), Some(3_001));

    // Replaced: its old vector finds it no more as it was; its new one does.
    let other: Vec<f32> = (0..DIM).map(|i| if i == 1 { 1.0 } else { 0.0 }).collect();
    m.put(
        &ns,
        vec![Document::new("new", "moved").embedded(other.clone())],
    )
    .unwrap();
    let hits = m.search(&ns, &Query::vector(other, 10)).unwrap();
    assert_eq!(
        (hits[0].id.as_str(), hits[0].text.as_str()),
        ("new", "moved")
    );
    let hits = m.search(&ns, &Query::vector(fresh.clone(), 10)).unwrap();
    // Its old entry in the graph is dropped: "new" comes back once at most, as it is now.
    assert!(
        hits.iter().all(|h| h.id != "new" || h.text == "moved"),
        "{hits:?}"
    );
    assert!(hits.iter().filter(|h| h.id == "new").count() <= 1);

    // Deleted: never a hit.
    m.delete(&ns, &["new".to_owned()]).unwrap();
    for v in [fresh, near(&mut rng, &centres)] {
        let hits = m.search(&ns, &Query::vector(v, 10)).unwrap();
        assert!(hits.iter().all(|h| h.id != "new"));
        assert_eq!(hits.len(), 10);
    }
}

#[test]
fn a_large_namespace_is_indexed_in_the_background_and_again_from_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let ns = Namespace::parse("team/big").unwrap();
    let mut rng = SmallRng::seed_from_u64(5);
    let centres = centres(&mut rng);
    {
        let m = SqliteMemory::open(&path)
            .unwrap()
            .with_approximate(Some(2_000))
            .with_cache(0);
        fill(&m, &ns, &mut rng, &centres, 2_500);
        // The first vector search is exact, and starts the build.
        let first = m.search(&ns, &Query::vector(near(&mut rng, &centres), 10));
        assert_eq!(first.unwrap().len(), 10);
        let deadline = Instant::now() + Duration::from_secs(120);
        while m.indexed(&ns).is_none() {
            assert!(Instant::now() < deadline, "not indexed in 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(m.indexed(&ns), Some(2_500));
        let r = recall(&m, &ns, &mut rng, &centres);
        assert!(r >= 0.95, "recall@10 {r}");
    }
    // A new process: nothing but the file. The index is rebuilt from it.
    let m = SqliteMemory::open(&path)
        .unwrap()
        .with_approximate(None)
        .with_cache(0);
    assert_eq!(m.indexed(&ns), None);
    assert_eq!(m.rebuild(&ns).unwrap().points, 2_500);
    let r = recall(&m, &ns, &mut rng, &centres);
    assert!(r >= 0.95, "recall@10 {r}");
}

#[test]
fn filtered_and_exact_searches_are_never_approximate() {
    let m = SqliteMemory::in_memory()
        .unwrap()
        .with_approximate(None)
        .with_cache(0);
    let ns = Namespace::parse("shared").unwrap();
    let mut rng = SmallRng::seed_from_u64(3);
    let centres = centres(&mut rng);
    let docs = (0..500)
        .map(|i| {
            Document::new(format!("d{i}"), "x")
                .with("even", i % 2 == 0)
                .embedded(near(&mut rng, &centres))
        })
        .collect();
    m.put(&ns, docs).unwrap();
    m.rebuild(&ns).unwrap();
    let v = near(&mut rng, &centres);
    let filtered = m
        .search(&ns, &Query::vector(v.clone(), 20).filtered("even", true))
        .unwrap();
    assert_eq!(filtered.len(), 20);
    assert!(filtered.iter().all(|h| h.metadata["even"] == true));
    // The exact answer, by brute force over what was stored.
    let truth = m.search(&ns, &exact(v.clone(), 500)).unwrap();
    let want: Vec<&str> = truth
        .iter()
        .filter(|h| h.metadata["even"] == true)
        .take(20)
        .map(|h| h.id.as_str())
        .collect();
    let got: Vec<&str> = filtered.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(got, want);
}
