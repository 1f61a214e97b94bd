//! The cache of recent searches: each keyed by its namespace and its whole query (text,
//! vector, filter, `k`), and answered again only while the versions it read are the ones
//! the store holds now. A store bumps a namespace's version in the transaction of every
//! write to it (a ranking by text weighs its words by the namespace's own documents), so a
//! cached answer is never one a fresh search would not give, whichever process wrote.

use crate::{Hit, Namespace, Query};
use std::{
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// Searches kept by default.
pub const DEFAULT_CACHE_ENTRIES: usize = 1024;
/// Bytes of cached hits (their texts, metadata and keys) kept at most.
pub const CACHE_BYTES: usize = 64 << 20;
/// A search whose hits pass this many bytes is not cached: it would crowd out the rest.
const MAX_ENTRY_BYTES: usize = 4 << 20;

/// How a cache has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// The version of its namespace a search read.
pub(crate) type Read = i64;

struct Entry {
    read: Read,
    hits: Vec<Hit>,
    bytes: usize,
}

struct Lru {
    entries: lru::LruCache<Vec<u8>, Entry>,
    bytes: usize,
}

pub(crate) struct Cache {
    lru: Option<Mutex<Lru>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub(crate) fn new(entries: usize) -> Self {
        Self {
            lru: NonZeroUsize::new(entries).map(|n| {
                Mutex::new(Lru {
                    entries: lru::LruCache::new(n),
                    bytes: 0,
                })
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Lru>> {
        // Every update leaves the map and its byte count consistent between statements.
        self.lru
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The query's key, or `None` when nothing is cached. Every part is length-prefixed, so
    /// two different queries never share a key; the vector goes in as its bits.
    pub(crate) fn key(&self, ns: &Namespace, query: &Query) -> Option<Vec<u8>> {
        self.lru.as_ref()?;
        let vector = query.vector.as_deref().unwrap_or(&[]);
        let text = query.text.as_deref().unwrap_or("");
        let mut key = Vec::with_capacity(64 + ns.as_str().len() + text.len() + 4 * vector.len());
        let mut part = |bytes: &[u8]| {
            key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            key.extend_from_slice(bytes);
        };
        part(ns.as_str().as_bytes());
        part(&(query.k as u64).to_le_bytes());
        part(&[
            u8::from(query.text.is_some()),
            u8::from(query.vector.is_some()),
            u8::from(query.exact),
        ]);
        part(text.as_bytes());
        // Metadata is small and flat; its JSON is one canonical spelling per insertion order.
        part(
            serde_json::to_string(&query.filter)
                .unwrap_or_default()
                .as_bytes(),
        );
        key.extend(vector.iter().flat_map(|x| x.to_bits().to_le_bytes()));
        Some(key)
    }

    /// The hits cached for `key`, if they were read at the versions `read`.
    pub(crate) fn get(&self, key: &[u8], read: Read) -> Option<Vec<Hit>> {
        let mut lru = self.lock()?;
        let hit = match lru.entries.get(key) {
            Some(entry) if entry.read == read => Some(entry.hits.clone()),
            _ => None,
        };
        drop(lru);
        match &hit {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        hit
    }

    /// Keeps `hits`, read at `read`, for `key`, evicting the least recently used searches
    /// past the entry or byte bound.
    pub(crate) fn put(&self, key: Vec<u8>, read: Read, hits: &[Hit]) {
        let bytes = key.len()
            + hits
                .iter()
                .map(|h| {
                    std::mem::size_of::<Hit>()
                        + h.id.len()
                        + h.text.len()
                        + h.metadata
                            .iter()
                            .map(|(k, v)| k.len() + v.to_string().len())
                            .sum::<usize>()
                })
                .sum::<usize>();
        let Some(mut lru) = self.lock() else {
            return;
        };
        if let Some(old) = lru.entries.pop(&key) {
            lru.bytes -= old.bytes;
        }
        if bytes > MAX_ENTRY_BYTES {
            return;
        }
        while lru.bytes + bytes > CACHE_BYTES {
            match lru.entries.pop_lru() {
                Some((_, old)) => lru.bytes -= old.bytes,
                None => break,
            }
        }
        let entry = Entry {
            read,
            hits: hits.to_vec(),
            bytes,
        };
        if let Some((_, old)) = lru.entries.push(key, entry) {
            lru.bytes -= old.bytes;
        }
        lru.bytes += bytes;
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let (entries, bytes) = self
            .lock()
            .map_or((0, 0), |l| (l.entries.len() as u64, l.bytes as u64));
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            entries,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, text_bytes: usize) -> Hit {
        Hit {
            id: id.into(),
            score: 1.0,
            text: "x".repeat(text_bytes),
            metadata: Default::default(),
        }
    }

    #[test]
    fn a_cached_search_is_answered_only_at_the_versions_it_read() {
        let cache = Cache::new(8);
        let ns = Namespace::parse("shared").unwrap();
        let key = cache.key(&ns, &Query::text("agents", 3)).unwrap();
        cache.put(key.clone(), 1, &[hit("a", 3)]);
        assert_eq!(cache.get(&key, 1).unwrap()[0].id, "a");
        assert!(cache.get(&key, 2).is_none(), "the namespace changed");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    }

    #[test]
    fn queries_that_differ_anywhere_have_different_keys() {
        let cache = Cache::new(8);
        let a = Namespace::parse("a").unwrap();
        let b = Namespace::parse("b").unwrap();
        let base = Query::vector(vec![1.0, 2.0], 3);
        let keys = [
            cache.key(&a, &base),
            cache.key(&b, &base),
            cache.key(&a, &Query::vector(vec![1.0, 2.5], 3)),
            cache.key(&a, &Query::vector(vec![1.0, 2.0], 4)),
            cache.key(&a, &base.clone().filtered("kind", "note")),
            cache.key(
                &a,
                &Query {
                    exact: true,
                    ..base.clone()
                },
            ),
            cache.key(&a, &Query::text("1 2", 3)),
            // The same words as text, and as text beside a vector.
            cache.key(
                &a,
                &Query {
                    text: Some("1 2".into()),
                    ..base.clone()
                },
            ),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bytes_stay_bounded() {
        let cache = Cache::new(2);
        let ns = Namespace::parse("shared").unwrap();
        let key = |k| cache.key(&ns, &Query::text("w", k)).unwrap();
        cache.put(key(1), 0, &[hit("a", 10)]);
        cache.put(key(2), 0, &[hit("b", 10)]);
        assert!(cache.get(&key(1), 0).is_some());
        cache.put(key(3), 0, &[hit("c", 10)]);
        assert!(cache.get(&key(2), 0).is_none(), "evicted: least recent");
        assert!(cache.get(&key(1), 0).is_some());
        // Too large to keep: not cached, and what it replaced is gone.
        cache.put(key(1), 0, &[hit("big", MAX_ENTRY_BYTES)]);
        assert!(cache.get(&key(1), 0).is_none());
        let stats = cache.stats();
        assert_eq!(stats.entries, 1);
        assert!(stats.bytes < 1024, "{stats:?}");
        // Off: nothing is keyed.
        assert!(Cache::new(0).key(&ns, &Query::text("w", 1)).is_none());
    }
}
