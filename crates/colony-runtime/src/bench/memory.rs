//! `colony bench memory`: the shared memory's embedded store under a synthetic, seeded load.
//! Documents (clustered random unit vectors and words drawn with a skew, as real text has
//! common and rare words) go into two namespaces of one SQLite file, one of 10,000 and one
//! of all of them; then exact vector, text and hybrid searches are timed from the call to
//! its answer; then the approximate index is built over all of them and its searches timed
//! and compared with exact ones (recall@10); then a search answered again by the cache. Each
//! exact search is checked: a query that is a stored document's own vector finds that
//! document first.

use super::{Percentiles, Verdict};
use crate::Error;
use colony_memory::{Document, Memory, Namespace, Query, SqliteMemory};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// Most documents of one run.
pub const MAX_DOCUMENTS: u32 = 1_000_000;
/// Most dimensions of one run's vectors.
pub const MAX_DIMENSION: u32 = 4096;
/// Most timed searches of each kind.
pub const MAX_QUERIES: u32 = 100_000;
/// The namespace of which exact search is held to its target.
const SMALL: u32 = 10_000;
/// Documents per `put`.
const BATCH: usize = 1_000;
/// Hits asked of each search.
const K: usize = 10;
/// Centres the vectors cluster around.
const CLUSTERS: usize = 100;
/// Words of the synthetic vocabulary.
const VOCABULARY: u32 = 5_000;
/// Cache hits timed.
const CACHE_HITS: usize = 1_000;
/// Targets (issue 15).
const TARGET_EXACT_P50: Duration = Duration::from_millis(10);
const TARGET_CACHE_P50: Duration = Duration::from_micros(50);
const TARGET_APPROXIMATE_P50: Duration = Duration::from_millis(2);
const TARGET_RECALL: f64 = 0.95;

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub documents: u32,
    pub dimension: u32,
    pub queries: u32,
    /// Documents stored per second, in batches of 1,000, each synced before it returned.
    pub inserts_per_s: f64,
    /// Exact vector search among 10,000 documents, and among all of them.
    pub exact_small: Percentiles,
    pub exact_all: Percentiles,
    /// Full-text and hybrid search among 10,000.
    pub text_small: Percentiles,
    pub hybrid_small: Percentiles,
    /// The approximate index over all the documents: how long it took to build from the
    /// file, its searches, and the share of the exact top 10 they found.
    pub index_build_s: f64,
    pub approximate_all: Percentiles,
    pub recall_at_10: f64,
    /// A search answered again from the cache.
    pub cache_hit: Percentiles,
    /// The file's size at the end.
    pub file_bytes: u64,
    /// Targets: exact search ≤ 10 ms p50 among 10,000 documents; approximate search ≤ 2 ms
    /// p50 among all, with recall@10 ≥ 0.95; a cache hit < 50 µs p50; and every exact search
    /// found the document whose vector it was.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Runs the workload on a new memory file in `dir`.
pub fn memory(
    dir: &Path,
    documents: u32,
    dimension: u32,
    queries: u32,
    seed: u64,
) -> Result<MemoryReport, Error> {
    let options = |what: String| Err(Error::Options(what));
    if !(SMALL..=MAX_DOCUMENTS).contains(&documents) {
        return options(format!(
            "{documents} documents is out of range: allowed {SMALL}..={MAX_DOCUMENTS}"
        ));
    }
    if !(1..=MAX_DIMENSION).contains(&dimension) {
        return options(format!(
            "{dimension} dimensions is out of range: allowed 1..={MAX_DIMENSION}"
        ));
    }
    if !(1..=MAX_QUERIES).contains(&queries) {
        return options(format!(
            "{queries} queries is out of range: allowed 1..={MAX_QUERIES}"
        ));
    }
    let store = |e: colony_memory::Error| Error::Options(format!("the memory: {e}"));
    let path = dir.join("memory.db");
    // Timed searches are never the cache's: it is off here, and measured apart below. The
    // approximate index is built when asked, below, not by itself in the middle of a timing.
    let memory = SqliteMemory::open(&path)
        .map_err(store)?
        .with_cache(0)
        .with_approximate(None);
    let mut rng = SmallRng::seed_from_u64(seed);
    let data = Data::new(&mut rng, dimension as usize);
    let small = Namespace::parse("bench/small").map_err(store)?;
    let all = Namespace::parse("bench/all").map_err(store)?;

    let started = Instant::now();
    // A few documents of each namespace, to look for by their own vectors.
    let mut kept: [Vec<(String, Vec<f32>)>; 2] = Default::default();
    for (which, ns, n) in [(0, &small, SMALL), (1, &all, documents)] {
        let mut next = 0u32;
        while next < n {
            let batch: Vec<Document> = (next..n.min(next + BATCH as u32))
                .map(|i| data.document(&mut rng, which, i))
                .collect();
            let d = &batch[batch.len() / 2];
            kept[which].push((d.id.clone(), d.embedding.clone().unwrap_or_default()));
            next += batch.len() as u32;
            memory.put(ns, batch).map_err(store)?;
        }
    }
    let inserts_per_s = f64::from(SMALL + documents) / started.elapsed().as_secs_f64();

    let mut verdict = Verdict::new();
    let mut timed_exact = |ns: &Namespace, which: usize| -> Result<Percentiles, Error> {
        let mut times = Vec::with_capacity(queries as usize);
        let kept = &kept[which];
        for q in 0..queries {
            // Half the queries are stored vectors (checked to come first), half new ones.
            let own = (q % 2 == 0).then(|| &kept[(q as usize / 2) % kept.len()]);
            let vector = match own {
                Some((_, v)) => v.clone(),
                None => data.vector(&mut rng),
            };
            let start = Instant::now();
            let hits = memory.search(ns, &exact(vector)).map_err(store)?;
            times.push(start.elapsed());
            verdict.check(hits.len() == K, || {
                format!(
                    "an exact search of {ns} found {} documents, not {K}",
                    hits.len()
                )
            });
            if let Some((id, _)) = own {
                verdict.check(hits.first().is_some_and(|h| &h.id == id), || {
                    format!("{id}'s own vector did not find it first in {ns}")
                });
            }
        }
        Ok(Percentiles::of(times))
    };
    let exact_small = timed_exact(&small, 0)?;
    let exact_all = timed_exact(&all, 1)?;

    let mut timed = |query: &dyn Fn(&mut SmallRng) -> Query| -> Result<Percentiles, Error> {
        let mut times = Vec::with_capacity(queries as usize);
        for _ in 0..queries {
            let query = query(&mut rng);
            let start = Instant::now();
            memory.search(&small, &query).map_err(store)?;
            times.push(start.elapsed());
        }
        Ok(Percentiles::of(times))
    };
    let text_small = timed(&|rng| Query::text(data.words(rng, 3), K))?;
    let hybrid_small = timed(&|rng| Query {
        text: Some(data.words(rng, 3)),
        vector: Some(data.vector(rng)),
        k: K,
        ..Query::default()
    })?;

    // The approximate index over every document: built from the file, then each search's
    // hits compared with the exact ones.
    let built = memory.rebuild(&all).map_err(store)?;
    let mut times = Vec::with_capacity(queries as usize);
    let (mut found, mut wanted) = (0usize, 0usize);
    for _ in 0..queries {
        let vector = data.vector(&mut rng);
        let start = Instant::now();
        let hits = memory
            .search(&all, &Query::vector(vector.clone(), K))
            .map_err(store)?;
        times.push(start.elapsed());
        let truth = memory.search(&all, &exact(vector)).map_err(store)?;
        wanted += truth.len();
        found += hits
            .iter()
            .filter(|h| truth.iter().any(|t| t.id == h.id))
            .count();
    }
    let approximate_all = Percentiles::of(times);
    let recall_at_10 = found as f64 / wanted.max(1) as f64;
    verdict.check(recall_at_10 >= TARGET_RECALL, || {
        format!("approximate search's recall@10 is {recall_at_10:.3}: the target is at least {TARGET_RECALL}")
    });
    verdict.check(approximate_all.p50_us <= micros(TARGET_APPROXIMATE_P50), || {
        format!(
            "approximate search among {documents} documents took {:.0} µs at the median: the target is {} µs",
            approximate_all.p50_us,
            TARGET_APPROXIMATE_P50.as_micros()
        )
    });

    // The cache: the same search again, on a store that keeps them.
    let cached = SqliteMemory::open(&path)
        .map_err(store)?
        .with_approximate(None);
    let query = Query::vector(data.vector(&mut rng), K);
    let first = cached.search(&small, &query).map_err(store)?;
    let mut times = Vec::with_capacity(CACHE_HITS);
    for _ in 0..CACHE_HITS {
        let start = Instant::now();
        let again = cached.search(&small, &query).map_err(store)?;
        times.push(start.elapsed());
        if again != first {
            verdict.check(false, || "a cached search answered differently".into());
            break;
        }
    }
    let cache_hit = Percentiles::of(times);
    let stats = cached.cache_stats();
    verdict.check(stats.hits >= CACHE_HITS as u64, || {
        format!(
            "{} of {CACHE_HITS} repeated searches were the cache's",
            stats.hits
        )
    });
    verdict.check(exact_small.p50_us <= micros(TARGET_EXACT_P50), || {
        format!(
            "exact search among {SMALL} documents took {:.0} µs at the median: the target is {} µs",
            exact_small.p50_us,
            TARGET_EXACT_P50.as_micros()
        )
    });
    verdict.check(cache_hit.p50_us < micros(TARGET_CACHE_P50), || {
        format!(
            "a cache hit took {:.1} µs at the median: the target is under {} µs",
            cache_hit.p50_us,
            TARGET_CACHE_P50.as_micros()
        )
    });
    drop((memory, cached));
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(MemoryReport {
        documents,
        dimension,
        queries,
        inserts_per_s,
        exact_small,
        exact_all,
        text_small,
        hybrid_small,
        index_build_s: built.took.as_secs_f64(),
        approximate_all,
        recall_at_10,
        cache_hit,
        file_bytes,
        verdict,
    })
}

/// The same workload on another store (a ChromaDB server through colony's Chroma store, a
/// memory in NATS), for figures beside the embedded store's.
#[derive(Clone, Debug, Serialize)]
pub struct StoreReport {
    pub documents: u32,
    pub dimension: u32,
    /// Searches timed of the kinds that read every embedding (exact, hybrid): at most 10.
    pub queries: u32,
    pub inserts_per_s: f64,
    /// Exact vector search among 10,000 documents: every vector of the index read, the best
    /// scored again from the record.
    pub exact_small: Percentiles,
    pub text_small: Percentiles,
    pub hybrid_small: Percentiles,
    /// A search among all the documents as the store makes it (Chroma: its own graph, HNSW,
    /// proposing candidates scored exactly; NATS: the process's copy, approximately past
    /// its threshold), and the share of the true top 10 found (brute force, in this process).
    pub approximate_all: Percentiles,
    pub recall_at_10: f64,
    /// Every exact search found the document whose vector it was, every search its `k`
    /// documents, and the namespaces hold what was stored.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Searches of the kinds that read every embedding, on Chroma: each takes about a second.
const CHROMA_SLOW_QUERIES: u32 = 10;

/// Runs the workload on the Chroma server of `options`, in namespaces of a prefix of its
/// own (from `options.prefix`), deleted after.
pub fn chroma(
    mut options: colony_memory::ChromaOptions,
    documents: u32,
    dimension: u32,
    queries: u32,
    seed: u64,
) -> Result<StoreReport, Error> {
    let store = |e: colony_memory::Error| Error::Options(format!("the Chroma memory: {e}"));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    options.prefix = format!("{}-bench{seed}-{stamp}", options.prefix);
    let memory = colony_memory::ChromaMemory::connect(options).map_err(store)?;
    let small = Namespace::parse("bench/small").map_err(store)?;
    let all = Namespace::parse("bench/all").map_err(store)?;
    let report = on_store(
        &memory,
        "the Chroma memory",
        [&small, &all],
        [documents, dimension, queries, CHROMA_SLOW_QUERIES],
        seed,
    );
    // Both namespaces removed whatever happened; the run's own error first.
    let mut removed = Ok(());
    for ns in [&small, &all] {
        if let Err(e) = memory.remove_namespace(ns) {
            tracing::warn!(namespace = %ns, error = %e, "the bench's namespace on Chroma was not removed");
            removed = Err(store(e));
        }
    }
    let report = report?;
    removed.map(|()| report)
}

/// Runs the workload on `memory` (`what`, in errors), in namespaces `[small, all]` that
/// must be empty: `[documents, dimension, queries, slow]`, `slow` the searches timed of the
/// kinds that read every embedding (each takes about a second on Chroma).
pub fn on_store(
    memory: &dyn colony_memory::Memory,
    what: &str,
    [small, all]: [&Namespace; 2],
    [documents, dimension, queries, slow]: [u32; 4],
    seed: u64,
) -> Result<StoreReport, Error> {
    let store = |e: colony_memory::Error| Error::Options(format!("{what}: {e}"));
    if !(SMALL..=MAX_DOCUMENTS).contains(&documents)
        || !(1..=MAX_DIMENSION).contains(&dimension)
        || !(1..=MAX_QUERIES).contains(&queries)
    {
        return Err(Error::Options(format!(
            "documents {SMALL}..={MAX_DOCUMENTS}, dimension 1..={MAX_DIMENSION}, queries 1..={MAX_QUERIES}"
        )));
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let data = Data::new(&mut rng, dimension as usize);
    let started = Instant::now();
    let mut kept: Vec<(String, Vec<f32>)> = Vec::new();
    // Every vector of the large namespace, for the true top 10.
    let mut truth: Vec<(String, Vec<f32>)> = Vec::with_capacity(documents as usize);
    for (which, ns, n) in [(0, small, SMALL), (1, all, documents)] {
        let mut next = 0u32;
        while next < n {
            let batch: Vec<Document> = (next..n.min(next + BATCH as u32))
                .map(|i| data.document(&mut rng, which, i))
                .collect();
            if which == 0 {
                let d = &batch[batch.len() / 2];
                kept.push((d.id.clone(), d.embedding.clone().unwrap_or_default()));
            } else {
                truth.extend(
                    batch
                        .iter()
                        .map(|d| (d.id.clone(), d.embedding.clone().unwrap_or_default())),
                );
            }
            next += batch.len() as u32;
            memory.put(ns, batch).map_err(store)?;
        }
    }
    let inserts_per_s = f64::from(SMALL + documents) / started.elapsed().as_secs_f64();
    let mut verdict = Verdict::new();
    for (ns, n) in [(small, SMALL), (all, documents)] {
        let held = memory.stats(ns).map_err(store)?.documents;
        verdict.check(held == u64::from(n), || {
            format!("{ns} holds {held} documents, not {n}")
        });
    }
    let slow = queries.min(slow);
    let mut times = Vec::new();
    for q in 0..slow {
        let own = (q % 2 == 0).then(|| &kept[(q as usize / 2) % kept.len()]);
        let vector = own.map_or_else(|| data.vector(&mut rng), |(_, v)| v.clone());
        let start = Instant::now();
        let hits = memory.search(small, &exact(vector)).map_err(store)?;
        times.push(start.elapsed());
        verdict.check(hits.len() == K, || {
            format!("an exact search found {} documents, not {K}", hits.len())
        });
        if let Some((id, _)) = own {
            verdict.check(hits.first().is_some_and(|h| &h.id == id), || {
                format!("{id}'s own vector did not find it first")
            });
        }
    }
    let exact_small = Percentiles::of(times);
    let mut timed =
        |n: u32, query: &dyn Fn(&mut SmallRng) -> Query| -> Result<Percentiles, Error> {
            let mut times = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let query = query(&mut rng);
                let start = Instant::now();
                memory.search(small, &query).map_err(store)?;
                times.push(start.elapsed());
            }
            Ok(Percentiles::of(times))
        };
    let text_small = timed(queries, &|rng| Query::text(data.words(rng, 3), K))?;
    let hybrid_small = timed(slow, &|rng| Query {
        text: Some(data.words(rng, 3)),
        vector: Some(data.vector(rng)),
        k: K,
        ..Query::default()
    })?;
    let mut times = Vec::with_capacity(queries as usize);
    let (mut found, mut wanted) = (0usize, 0usize);
    for _ in 0..queries {
        let vector = data.vector(&mut rng);
        let start = Instant::now();
        let hits = memory
            .search(all, &Query::vector(vector.clone(), K))
            .map_err(store)?;
        times.push(start.elapsed());
        verdict.check(hits.len() == K, || {
            format!("a search among all found {} documents, not {K}", hits.len())
        });
        let mut best: Vec<(f64, &str)> = truth
            .iter()
            .map(|(id, v)| (dot(&vector, v), id.as_str()))
            .collect();
        best.select_nth_unstable_by(K - 1, |a, b| b.0.total_cmp(&a.0));
        best.truncate(K);
        wanted += K;
        found += hits
            .iter()
            .filter(|h| best.iter().any(|(_, id)| *id == h.id))
            .count();
    }
    Ok(StoreReport {
        documents,
        dimension,
        queries: slow,
        inserts_per_s,
        exact_small,
        text_small,
        hybrid_small,
        approximate_all: Percentiles::of(times),
        recall_at_10: found as f64 / wanted.max(1) as f64,
        verdict,
    })
}

/// The dot product: the cosine, for the unit vectors of this workload.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// A vector search that reads every embedding.
fn exact(vector: Vec<f32>) -> Query {
    Query {
        exact: true,
        ..Query::vector(vector, K)
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The synthetic data: cluster centres, and how words are drawn.
struct Data {
    centres: Vec<Vec<f32>>,
    dimension: usize,
}

impl Data {
    fn new(rng: &mut SmallRng, dimension: usize) -> Self {
        let centres = (0..CLUSTERS)
            .map(|_| {
                unit(
                    (0..dimension)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect(),
                )
            })
            .collect();
        Self { centres, dimension }
    }

    /// A unit vector near a random centre.
    fn vector(&self, rng: &mut SmallRng) -> Vec<f32> {
        let centre = &self.centres[rng.random_range(0..CLUSTERS)];
        unit(
            centre
                .iter()
                .map(|&c| c + rng.random_range(-0.5..0.5) / (self.dimension as f32).sqrt())
                .collect(),
        )
    }

    /// `n` words, common ones far more often than rare ones.
    fn words(&self, rng: &mut SmallRng, n: usize) -> String {
        (0..n)
            .map(|_| {
                let r: f64 = rng.random();
                format!("w{}", (r * r * f64::from(VOCABULARY)) as u32)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Document `i` of namespace `which`: ids differ between the namespaces.
    fn document(&self, rng: &mut SmallRng, which: usize, i: u32) -> Document {
        let words = rng.random_range(8..24);
        Document::new(format!("d{which}-{i}"), self.words(rng, words))
            .with("shard", i64::from(i % 16))
            .embedded(self.vector(rng))
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_checks_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let report = memory(dir.path(), SMALL, 8, 20, 3).unwrap();
        assert_eq!(report.exact_small.samples, 20);
        assert_eq!(report.cache_hit.samples, CACHE_HITS);
        // Timing targets may miss on a loaded machine in a debug build; the checks may not.
        assert!(
            report.verdict.problems.iter().all(|p| p.contains("target")),
            "{:?}",
            report.verdict.problems
        );
        assert!(report.file_bytes > 0);
        assert!(memory(dir.path(), 10, 8, 20, 3).is_err());
    }
}
