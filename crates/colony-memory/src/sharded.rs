//! One memory spread over several stores (SQLite files, Chroma collections): each document
//! lives in the store its id hashes to, and a search asks every store and merges their
//! answers into the one a single store holding everything would give. Text is scored by
//! BM25 over the statistics of all the stores summed, so a document's score does not
//! depend on where it lives; an exact vector search is the best `k` of each store's best
//! `k`; a hybrid search fuses the two merged rankings as a single store fuses its own.

use crate::{
    CacheStats, Document, Error, Hit, Memory, Namespace, Query, Rebuilt, Stats, TextStats,
    check_batch,
    rank::{hybrid, hybrid_depth, merge, query_words},
};

/// Most stores one memory is spread over.
pub const MAX_SHARDS: usize = 64;

/// A memory spread over stores by a hash of each document's id.
pub struct Sharded {
    shards: Vec<Box<dyn Memory>>,
    /// Puts of this process, one at a time: a batch's check against the whole namespace
    /// and its writes must not interleave with another's (two first batches of different
    /// dimensions landing in different stores).
    writing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sharded({} stores)", self.shards.len())
    }
}

impl Sharded {
    /// A memory over `shards`, in their order: a document's store is fixed by its id and
    /// the number of stores, so the same stores must always be given in the same order.
    pub fn new(shards: Vec<Box<dyn Memory>>) -> Result<Self, Error> {
        if shards.is_empty() || shards.len() > MAX_SHARDS {
            return Err(Error::Store(format!(
                "a sharded memory needs 1 to {MAX_SHARDS} stores; got {}",
                shards.len()
            )));
        }
        Ok(Self {
            shards,
            writing: std::sync::Mutex::new(()),
        })
    }

    /// The store that holds (or would hold) document `id`: FNV-1a of its bytes, so that
    /// every process and every build places it alike.
    pub fn shard_of(&self, id: &str) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash % self.shards.len() as u64) as usize
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// `f` on every store at once (they may be disks or servers), answers in their order.
    fn each<T: Send>(&self, f: impl Fn(&dyn Memory) -> T + Sync) -> Vec<T> {
        if self.shards.len() == 1 {
            return vec![f(&*self.shards[0])];
        }
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .shards
                .iter()
                .map(|shard| {
                    let f = &f;
                    scope.spawn(move || f(&**shard))
                })
                .collect();
            running
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// Each store's stats of `ns` (`None` where it was never written); refused when no
    /// store knows it.
    fn known(&self, ns: &Namespace) -> Result<Vec<Option<Stats>>, Error> {
        let mut any = false;
        let mut out = Vec::with_capacity(self.shards.len());
        for stats in self.each(|m| m.stats(ns)) {
            match stats {
                Ok(s) => {
                    any = true;
                    out.push(Some(s));
                }
                Err(Error::UnknownNamespace(_)) => out.push(None),
                Err(e) => return Err(e),
            }
        }
        if any {
            Ok(out)
        } else {
            Err(Error::UnknownNamespace(ns.to_string()))
        }
    }

    /// Checks a batch against the whole namespace (its dimension and embedder, which a
    /// store that holds none of it yet cannot know), then stores each store's part.
    fn put_by(
        &self,
        ns: &Namespace,
        documents: Vec<Document>,
        embedder: Option<&str>,
    ) -> Result<(), Error> {
        check_batch(&documents)?;
        if let Some(e) = embedder {
            crate::check_embedder(e)?;
        }
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let stats = match self.known(ns) {
            Ok(s) => s,
            Err(Error::UnknownNamespace(_)) => vec![None; self.shards.len()],
            Err(e) => return Err(e),
        };
        let dimension = stats.iter().flatten().find_map(|s| s.dimension);
        let holds = stats.iter().flatten().find_map(|s| s.embedder.clone());
        let batch = documents.iter().position(|d| d.embedding.is_some());
        if let (Some(expected), Some(index)) = (dimension, batch) {
            let got = documents[index].embedding.as_ref().map_or(0, Vec::len);
            if got != expected {
                return Err(Error::Dimension {
                    namespace: ns.to_string(),
                    index,
                    expected,
                    got,
                });
            }
        }
        // As one store does: the embedder is recorded with the namespace's first vectors
        // and checked after; vectors stored unlabelled leave it unrecorded.
        let label = match (embedder, batch) {
            (Some(got), Some(_)) => match holds {
                Some(holds) if holds != got => {
                    return Err(Error::Mixed {
                        namespace: ns.to_string(),
                        holds,
                        got: got.to_owned(),
                    });
                }
                Some(_) => Some(got),
                None if dimension.is_some() => None,
                None => Some(got),
            },
            _ => None,
        };
        let mut parts: Vec<Vec<Document>> = vec![Vec::new(); self.shards.len()];
        if documents.is_empty() {
            // The namespace is made, as by one store.
            return self.shards[0].put(ns, Vec::new());
        }
        for d in documents {
            let i = self.shard_of(&d.id);
            parts[i].push(d);
        }
        let mut stored = Vec::new();
        for (i, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let done = match label {
                Some(label) => self.shards[i].put_embedded(ns, part, label),
                None => self.shards[i].put(ns, part),
            };
            match done {
                Ok(()) => stored.push(i),
                Err(e) if stored.is_empty() => return Err(e),
                Err(e) => {
                    return Err(Error::Store(format!(
                        "store {i} of {} failed after stores {stored:?} stored their part of the batch: {e}; \
                         put the batch again to store it whole (a document replaces its namesake)",
                        self.shards.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The merged best `k` of a search whose text is scored by `stats`.
    fn gathered(
        &self,
        ns: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
        known: &[Option<Stats>],
    ) -> Result<Vec<Hit>, Error> {
        let answers = self.each(|m| m.search_scored(ns, query, stats));
        let mut rankings = Vec::with_capacity(answers.len());
        for (answer, known) in answers.into_iter().zip(known) {
            match answer {
                Ok(hits) => rankings.push(hits),
                // A store that holds none of the namespace has nothing to add.
                Err(Error::UnknownNamespace(_)) if known.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(merge(rankings, query.k))
    }
}

impl Memory for Sharded {
    fn put(&self, ns: &Namespace, documents: Vec<Document>) -> Result<(), Error> {
        self.put_by(ns, documents, None)
    }

    fn put_embedded(
        &self,
        ns: &Namespace,
        documents: Vec<Document>,
        embedder: &str,
    ) -> Result<(), Error> {
        self.put_by(ns, documents, Some(embedder))
    }

    fn get(&self, ns: &Namespace, id: &str) -> Result<Option<Document>, Error> {
        match self.shards[self.shard_of(id)].get(ns, id) {
            Err(Error::UnknownNamespace(_)) => self.known(ns).map(|_| None),
            other => other,
        }
    }

    fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64, Error> {
        let known = self.known(ns)?;
        let mut parts: Vec<Vec<String>> = vec![Vec::new(); self.shards.len()];
        for id in ids {
            parts[self.shard_of(id)].push(id.clone());
        }
        let mut deleted = 0;
        for (i, part) in parts.into_iter().enumerate() {
            if part.is_empty() || known[i].is_none() {
                continue;
            }
            deleted += self.shards[i].delete(ns, &part)?;
        }
        Ok(deleted)
    }

    fn search_scored(
        &self,
        ns: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, Error> {
        query.check()?;
        let known = self.known(ns)?;
        let own;
        let stats = match (&query.text, stats) {
            (_, Some(s)) => Some(s),
            (None, None) => None,
            (Some(text), None) => {
                let words = query_words(text);
                if words.is_empty() {
                    return Err(Error::Query(
                        "the query's text has no word to search for".into(),
                    ));
                }
                own = self.text_stats(ns, &words)?;
                Some(&own)
            }
        };
        match (&query.text, &query.vector) {
            (Some(text), Some(vector)) => {
                let depth = hybrid_depth(query.k);
                let by_text = Query {
                    text: Some(text.clone()),
                    vector: None,
                    k: depth,
                    ..query.clone()
                };
                // Exact, as a store ranks a hybrid search's vectors.
                let by_vector = Query {
                    text: None,
                    vector: Some(vector.clone()),
                    k: depth,
                    exact: true,
                    ..query.clone()
                };
                let by_text = self.gathered(ns, &by_text, stats, &known)?;
                let by_vector = self.gathered(ns, &by_vector, None, &known)?;
                Ok(hybrid(by_text, by_vector, query.k))
            }
            _ => self.gathered(ns, query, stats, &known),
        }
    }

    fn text_stats(&self, ns: &Namespace, words: &[String]) -> Result<TextStats, Error> {
        let mut sum = TextStats {
            df: vec![0; words.len()],
            ..TextStats::default()
        };
        for stats in self.each(|m| m.text_stats(ns, words)) {
            sum.add(&stats?);
        }
        Ok(sum)
    }

    fn stats(&self, ns: &Namespace) -> Result<Stats, Error> {
        let known = self.known(ns)?;
        let mut sum = Stats {
            documents: 0,
            dimension: None,
            text_bytes: 0,
            embedder: None,
        };
        for s in known.into_iter().flatten() {
            sum.documents += s.documents;
            sum.text_bytes += s.text_bytes;
            sum.dimension = sum.dimension.or(s.dimension);
            sum.embedder = sum.embedder.or(s.embedder);
        }
        Ok(sum)
    }

    fn cache_stats(&self) -> CacheStats {
        let mut sum = CacheStats::default();
        for s in self.each(|m| m.cache_stats()) {
            sum.hits += s.hits;
            sum.misses += s.misses;
            sum.entries += s.entries;
            sum.bytes += s.bytes;
        }
        sum
    }

    fn indexed(&self, ns: &Namespace) -> Option<usize> {
        self.each(|m| m.indexed(ns))
            .into_iter()
            .flatten()
            .reduce(|a, b| a + b)
    }

    /// Each store's index, built at once; the points of all, the longest build.
    fn rebuild(&self, ns: &Namespace) -> Result<Rebuilt, Error> {
        let known = self.known(ns)?;
        let mut sum = Rebuilt {
            points: 0,
            took: std::time::Duration::ZERO,
        };
        for (built, known) in self.each(|m| m.rebuild(ns)).into_iter().zip(&known) {
            match built {
                Ok(b) => {
                    sum.points += b.points;
                    sum.took = sum.took.max(b.took);
                }
                Err(Error::UnknownNamespace(_)) if known.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sum)
    }

    fn namespaces(&self) -> Result<Vec<Namespace>, Error> {
        let mut all = Vec::new();
        for names in self.each(|m| m.namespaces()) {
            all.extend(names?);
        }
        all.sort();
        all.dedup();
        Ok(all)
    }
}
