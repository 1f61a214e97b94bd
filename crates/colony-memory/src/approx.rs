//! Approximate vector search: an HNSW graph (`hnsw_rs`) per large namespace, built from the
//! SQLite file and never its record. Each point is a document's `seq`, which the store never
//! reuses and gives anew to a replaced document, so the graph only ever lacks documents (the
//! newer ones, added to it before the next search) or holds some that are gone (deleted or
//! replaced, dropped when their rows are not found). A search asks the graph for more
//! candidates than it returns and scores them exactly from their stored embeddings; when
//! too few candidates are still documents, the store searches exactly instead.
//!
//! A namespace is indexed when a vector search finds it holds at least the store's
//! threshold of embeddings: in the background, from a connection of its own (a search
//! meanwhile is exact), or at once by [`SqliteMemory::rebuild`](crate::SqliteMemory::rebuild).

use crate::{Error, Namespace};
use hnsw_rs::prelude::{Distance, Hnsw};
use rusqlite::Connection;
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

/// Embeddings a namespace holds before its vector searches become approximate, by default.
pub const DEFAULT_APPROXIMATE_FROM: usize = 20_000;
/// Neighbours kept per point and layer.
const CONNECTIONS: usize = 24;
/// Layers of the graph, at most.
const LAYERS: usize = 16;
/// Candidates explored while inserting a point.
const EF_CONSTRUCTION: usize = 200;
/// Candidates explored by a search, at least.
const EF_SEARCH: usize = 128;

/// The distance between unit vectors: 1 minus their dot product, summed in eight `f32`
/// lanes (one vector register). Never below 0, and never a panic on rounding, unlike the
/// crate's own cosine and dot distances, which assert on it.
#[derive(Clone, Copy, Default)]
pub(crate) struct UnitDot;

const LANES: usize = 8;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let mut sums = [0f32; LANES];
        let whole = a.len().min(b.len()) / LANES * LANES;
        for (x, y) in a[..whole]
            .chunks_exact(LANES)
            .zip(b[..whole].chunks_exact(LANES))
        {
            for l in 0..LANES {
                sums[l] += x[l] * y[l];
            }
        }
        let mut dot: f32 = sums.iter().sum();
        for (x, y) in a[whole..].iter().zip(&b[whole..]) {
            dot += x * y;
        }
        (1.0 - dot).max(0.0)
    }
}

/// `v` scaled to length 1 (all zeros stays so: nothing is near it).
pub(crate) fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

/// One namespace's graph, of its embeddings scaled to unit length.
pub(crate) struct Index {
    hnsw: Hnsw<'static, f32, UnitDot>,
    /// The highest `seq` in the graph: documents above it are added before a search.
    pub(crate) indexed_to: i64,
    pub(crate) points: usize,
}

impl Index {
    /// A graph of `points` (each a document's embedding and `seq`).
    fn build(points: &[(Vec<f32>, usize)]) -> Self {
        let mut hnsw = Hnsw::new(
            CONNECTIONS,
            points.len().max(1),
            LAYERS,
            EF_CONSTRUCTION,
            UnitDot,
        );
        let refs: Vec<(&Vec<f32>, usize)> = points.iter().map(|(v, id)| (v, *id)).collect();
        hnsw.parallel_insert(&refs);
        hnsw.set_searching_mode(true);
        Self {
            hnsw,
            indexed_to: points.iter().map(|(_, id)| *id as i64).max().unwrap_or(0),
            points: points.len(),
        }
    }

    /// Adds documents newer than the graph.
    pub(crate) fn add(&mut self, points: &[(Vec<f32>, usize)]) {
        if points.is_empty() {
            return;
        }
        self.hnsw.set_searching_mode(false);
        for (v, id) in points {
            self.hnsw.insert((v, *id));
            self.indexed_to = self.indexed_to.max(*id as i64);
        }
        self.points += points.len();
        self.hnsw.set_searching_mode(true);
    }

    /// The `seq`s of up to `n` documents nearest `vector`, nearest first.
    pub(crate) fn nearest(&self, vector: &[f32], n: usize) -> Vec<i64> {
        self.hnsw
            .search(&unit(vector), n, EF_SEARCH.max(n))
            .into_iter()
            .map(|neighbour| neighbour.d_id as i64)
            .collect()
    }
}

/// What building a namespace's graph did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    pub points: usize,
    #[serde(with = "millis")]
    pub took: Duration,
}

mod millis {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

enum Slot {
    /// Being built in the background.
    Building,
    Ready(Arc<RwLock<Index>>),
    /// The last background build failed: not tried again until a rebuild asks.
    Failed,
}

/// The store's graphs, by namespace.
pub(crate) struct Indexes {
    /// Where a background build reads from; `None` for a store in memory (built on demand
    /// only).
    path: Option<PathBuf>,
    /// Embeddings from which a namespace is indexed; `None`: never by itself.
    pub(crate) from: Option<usize>,
    slots: Arc<Mutex<HashMap<Namespace, Slot>>>,
}

impl Indexes {
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            from: Some(DEFAULT_APPROXIMATE_FROM),
            slots: Arc::default(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The namespace's graph, if one is ready.
    pub(crate) fn ready(&self, ns: &Namespace) -> Option<Arc<RwLock<Index>>> {
        match self.slots().get(ns) {
            Some(Slot::Ready(index)) => Some(index.clone()),
            _ => None,
        }
    }

    /// A vector search scanned `embeddings` of `ns`: a namespace that large and not indexed
    /// yet starts being indexed in the background.
    pub(crate) fn scanned(&self, ns: &Namespace, embeddings: usize) {
        let (Some(from), Some(path)) = (self.from, &self.path) else {
            return;
        };
        if embeddings < from {
            return;
        }
        {
            let mut slots = self.slots();
            if slots.contains_key(ns) {
                return;
            }
            slots.insert(ns.clone(), Slot::Building);
        }
        let (slots, name, path) = (self.slots.clone(), ns.clone(), path.clone());
        let spawned = std::thread::Builder::new()
            .name("colony-memory-index".into())
            .spawn(move || {
                let built = Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(Error::from)
                .and_then(|db| newer(&db, &name, 0))
                .map(|points| Index::build(&points));
                let slot = match built {
                    Ok(index) => Slot::Ready(Arc::new(RwLock::new(index))),
                    Err(_) => Slot::Failed,
                };
                // Only into its own place: a rebuild meanwhile put a newer graph there.
                let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(slots.get(&name), Some(Slot::Building)) {
                    slots.insert(name, slot);
                }
            });
        if spawned.is_err() {
            self.slots().insert(ns.clone(), Slot::Failed);
        }
    }

    /// Builds `ns`'s graph of `points` (read from the file since `started`), replacing any.
    pub(crate) fn install(
        &self,
        ns: &Namespace,
        points: &[(Vec<f32>, usize)],
        started: Instant,
    ) -> Rebuilt {
        let index = Index::build(points);
        self.slots()
            .insert(ns.clone(), Slot::Ready(Arc::new(RwLock::new(index))));
        Rebuilt {
            points: points.len(),
            took: started.elapsed(),
        }
    }
}

/// The embeddings of `ns` with a `seq` above `after`, scaled to unit length. Read along
/// the `seq`s from `after` on (`+namespace` keeps SQLite from walking the namespace's whole
/// index instead: after a build, the rows past `after` are few).
pub(crate) fn newer(
    db: &Connection,
    ns: &Namespace,
    after: i64,
) -> Result<Vec<(Vec<f32>, usize)>, Error> {
    let mut stmt = db.prepare_cached(
        "SELECT seq, embedding FROM documents
         WHERE seq > ?1 AND +namespace = ?2 AND embedding IS NOT NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map(rusqlite::params![after, ns.as_str()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    rows.map(|row| {
        let (seq, bytes) = row?;
        Ok((unit(&crate::sqlite::floats(&bytes)), seq as usize))
    })
    .collect()
}
