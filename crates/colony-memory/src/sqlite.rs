//! The embedded store: one SQLite file. Documents in a table, their text indexed by FTS5
//! (an external-content index kept by triggers in the same transaction as the row), their
//! embeddings as little-endian `f32` blobs searched exactly. WAL with `synchronous = FULL`:
//! a `put` that returned is on disk.

use crate::{
    Document, Error, Hit, Memory, Metadata, Namespace, Query, Stats, TextStats,
    approx::{self, Index, Indexes, Rebuilt},
    cache::{Cache, CacheStats, DEFAULT_CACHE_ENTRIES},
    check_batch,
    rank::{Bm25, TopK, hybrid, hybrid_depth, query_words},
};
use rusqlite::{Connection, OptionalExtension, params, types::Value as Sql};
use serde_json::Value;
use std::{
    path::Path,
    sync::{Mutex, RwLock},
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    dimension INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    documents INTEGER NOT NULL DEFAULT 0,
    text_bytes INTEGER NOT NULL DEFAULT 0,
    embedder TEXT,
    words INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS store (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB,
    words INTEGER NOT NULL DEFAULT 0,
    UNIQUE (namespace, id)
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts
    USING fts5(text, content='documents', content_rowid='seq');
CREATE TRIGGER IF NOT EXISTS documents_ai AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts(rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER IF NOT EXISTS documents_ad AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts(documents_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TRIGGER IF NOT EXISTS documents_au AFTER UPDATE ON documents BEGIN
    INSERT INTO documents_fts(documents_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    INSERT INTO documents_fts(rowid, text) VALUES (new.seq, new.text);
END;
";

/// Each namespace's documents, bytes of text and words, kept by the file itself in the
/// writing transaction, so that `stats` (and the dashboard that polls it) and BM25's
/// average length read one row instead of every document. Made anew at every open, after
/// [`migrate`], which adds and fills the columns of an older file.
const COUNTS: &str = "
DROP TRIGGER IF EXISTS documents_count_ai;
DROP TRIGGER IF EXISTS documents_count_ad;
DROP TRIGGER IF EXISTS documents_count_au;
CREATE TRIGGER documents_count_ai AFTER INSERT ON documents BEGIN
    UPDATE namespaces SET documents = documents + 1,
        text_bytes = text_bytes + length(CAST(new.text AS BLOB)),
        words = words + new.words
    WHERE name = new.namespace;
END;
CREATE TRIGGER documents_count_ad AFTER DELETE ON documents BEGIN
    UPDATE namespaces SET documents = documents - 1,
        text_bytes = text_bytes - length(CAST(old.text AS BLOB)),
        words = words - old.words
    WHERE name = old.namespace;
END;
CREATE TRIGGER documents_count_au AFTER UPDATE ON documents BEGIN
    UPDATE namespaces SET documents = documents - 1,
        text_bytes = text_bytes - length(CAST(old.text AS BLOB)),
        words = words - old.words
    WHERE name = old.namespace;
    UPDATE namespaces SET documents = documents + 1,
        text_bytes = text_bytes + length(CAST(new.text AS BLOB)),
        words = words + new.words
    WHERE name = new.namespace;
END;
";

/// What marks a SQLite file as a colony memory (`PRAGMA application_id`): "cme3" since
/// each document's words are counted for BM25 ("cme2": writes bump versions and take their
/// `seq` from the store's row). A file of an older format ("cmem", "cme2") is brought up
/// to date when opened; a binary that knows only an older one refuses a file of this one,
/// so that it can never write it without keeping what the cache, the approximate index and
/// the text ranking rely on.
const APPLICATION_ID: i64 = 0x636d_6533;
const OLDER_APPLICATION_IDS: [i64; 2] = [0x636d_656d, 0x636d_6532];

fn is_memory(id: i64) -> bool {
    id == APPLICATION_ID || OLDER_APPLICATION_IDS.contains(&id)
}

/// Bytes of the file mapped into memory, at most.
const MMAP_BYTES: i64 = 1 << 30;
/// The page cache, in KiB.
const CACHE_KIB: u32 = 64 * 1024;

/// Documents in one SQLite file (or in memory, for tests), with a cache of recent searches.
pub struct SqliteMemory {
    db: Mutex<Connection>,
    cache: Cache,
    approx: Indexes,
}

impl std::fmt::Debug for SqliteMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteMemory")
    }
}

impl SqliteMemory {
    /// The memory in file `path`, created if absent.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        // A search reads every embedding of its namespace: mapped, not copied through a
        // 2 MB page cache one page per call.
        db.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        db.pragma_update(None, "cache_size", -(CACHE_KIB as i64))?;
        Self::with(db, Some(path.to_owned()))
    }

    /// The memory in file `path`, which must exist and be a memory: nothing is created, and
    /// a file that is not one (a journal, say) is refused untouched.
    pub fn open_existing(path: &Path) -> Result<Self, Error> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let db = Connection::open_with_flags(path, flags)?;
        let id: i64 = db.pragma_query_value(None, "application_id", |r| r.get(0))?;
        if !is_memory(id) {
            return Err(Error::Store(format!(
                "{} is not a colony memory file",
                path.display()
            )));
        }
        drop(db);
        Self::open(path)
    }

    /// A memory that lives as long as the value: for tests and throwaway runs.
    pub fn in_memory() -> Result<Self, Error> {
        Self::with(Connection::open_in_memory()?, None)
    }

    fn with(db: Connection, path: Option<std::path::PathBuf>) -> Result<Self, Error> {
        db.pragma_update(None, "foreign_keys", "ON")?;
        let id: i64 = db.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let tables: i64 = db.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        // A file of something else is not made into a memory.
        if !is_memory(id) && tables > 0 {
            return Err(Error::Store(
                "the file holds other tables and is not a colony memory".into(),
            ));
        }
        // One transaction: two processes opening an old file at once migrate it once.
        let tx =
            rusqlite::Transaction::new_unchecked(&db, rusqlite::TransactionBehavior::Immediate)?;
        let indexed: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'documents_fts'",
            [],
            |r| r.get(0),
        )?;
        tx.execute_batch(SCHEMA)?;
        if !indexed {
            // Rows from before the text index (none, in a new file): indexed now.
            tx.execute_batch("INSERT INTO documents_fts(documents_fts) VALUES ('rebuild')")?;
        }
        migrate(&tx)?;
        tx.execute_batch(SCHEMA)?;
        // The counting triggers, made anew only when they are not this format's (a change
        // of schema makes every other connection prepare its statements again).
        let current: bool = tx.query_row(
            "SELECT count(*) = 3 FROM sqlite_schema
             WHERE type = 'trigger' AND name LIKE 'documents_count_%' AND sql LIKE '%.words%'",
            [],
            |r| r.get(0),
        )?;
        if !current {
            tx.execute_batch(COUNTS)?;
        }
        // The store's one row, once the tables it reads exist.
        tx.execute(
            "INSERT OR IGNORE INTO store (one, version, seq)
             VALUES (1, 0, (SELECT coalesce(max(seq), 0) FROM documents))",
            [],
        )?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
        Ok(Self {
            db: Mutex::new(db),
            cache: Cache::new(DEFAULT_CACHE_ENTRIES),
            approx: Indexes::new(path),
        })
    }

    /// Makes vector searches (without a filter, not asked to be exact) approximate in a
    /// namespace once it holds `from` embeddings (`None`: never, unless [`Self::rebuild`]
    /// indexes it). [`crate::DEFAULT_APPROXIMATE_FROM`] unless set.
    pub fn with_approximate(mut self, from: Option<usize>) -> Self {
        self.approx.from = from;
        self
    }

    /// Documents in `ns`'s approximate index, if it has one ready.
    pub fn indexed(&self, ns: &Namespace) -> Option<usize> {
        self.approx
            .ready(ns)
            .map(|index| index.read().unwrap_or_else(|p| p.into_inner()).points)
    }

    /// Builds `ns`'s approximate index now, from the file, replacing any: its vector searches
    /// are approximate from then on.
    pub fn rebuild(&self, ns: &Namespace) -> Result<Rebuilt, Error> {
        let started = std::time::Instant::now();
        // Read in one snapshot; the graph is built after the connection is let go, so that
        // other calls need not wait for it.
        let points = {
            let db = self.db();
            let db = db.unchecked_transaction()?;
            known(&db, ns)?;
            approx::newer(&db, ns, 0)?
        };
        Ok(self.approx.install(ns, &points, started))
    }

    /// Up to `n` of `ns`'s embeddings, spread evenly over it in the order stored: queries
    /// for checking its approximate index against exact search. At most
    /// [`crate::MAX_K`] × 100 are read.
    pub fn sample(&self, ns: &Namespace, n: usize) -> Result<Vec<Vec<f32>>, Error> {
        let n = n.min(crate::MAX_K * 100);
        let db = self.db();
        let db = db.unchecked_transaction()?;
        known(&db, ns)?;
        let total: i64 = db.query_row(
            "SELECT count(*) FROM documents WHERE namespace = ?1 AND embedding IS NOT NULL",
            [ns.as_str()],
            |r| r.get(0),
        )?;
        if n == 0 || total == 0 {
            return Ok(Vec::new());
        }
        let every = (total as usize).div_ceil(n).max(1);
        let mut stmt = db.prepare(
            "SELECT embedding FROM documents WHERE namespace = ?1 AND embedding IS NOT NULL
             ORDER BY seq",
        )?;
        let rows = stmt.query_map([ns.as_str()], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::with_capacity(n);
        for (i, row) in rows.enumerate() {
            if out.len() == n {
                break;
            }
            if i % every == 0 {
                out.push(floats(&row?));
            }
        }
        Ok(out)
    }

    /// Everything of `ns` a copy of it needs: its record (dimension, embedder) and every
    /// document, by id. For a memory in NATS, whose snapshot is each namespace dumped.
    pub fn dump(&self, ns: &Namespace) -> Result<Dumped, Error> {
        let db = self.db();
        let (dimension, embedder) = db
            .query_row(
                "SELECT dimension, embedder FROM namespaces WHERE name = ?1",
                [ns.as_str()],
                |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()?
            .ok_or_else(|| Error::UnknownNamespace(ns.to_string()))?;
        let mut stmt = db.prepare(
            "SELECT id, text, metadata, embedding FROM documents WHERE namespace = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([ns.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })?;
        let documents = rows
            .map(|row| {
                let (id, text, meta, embedding) = row?;
                Ok(Document {
                    id,
                    text,
                    metadata: metadata(&meta)?,
                    embedding: embedding.as_deref().map(floats),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Dumped {
            dimension: dimension.map(|d| d as usize),
            embedder,
            documents,
        })
    }

    /// Makes namespace `ns`, which must not be here, what `dumped` says: its documents
    /// stored (in batches, `stored` told after each), then its record set as it was (a
    /// dimension kept by a namespace whose documents were deleted, an embedder recorded).
    pub fn restore(
        &self,
        ns: &Namespace,
        dumped: Dumped,
        stored: &mut dyn FnMut(),
    ) -> Result<(), Error> {
        if namespace(&self.db(), ns)?.is_some() {
            return Err(Error::Store(format!(
                "namespace {ns} is here already: a snapshot restores an empty copy"
            )));
        }
        let mut documents = dumped.documents;
        loop {
            let mut bytes = 0;
            let take = documents
                .iter()
                .take(crate::MAX_BATCH)
                .take_while(|d| {
                    bytes += d.text.len() + 4 * d.embedding.as_ref().map_or(0, Vec::len);
                    bytes <= crate::MAX_BATCH_BYTES
                })
                .count()
                .max(1)
                .min(documents.len());
            let rest = documents.split_off(take);
            self.put_by(ns, documents, None)?;
            stored();
            documents = rest;
            if documents.is_empty() {
                break;
            }
        }
        self.db().execute(
            "UPDATE namespaces SET dimension = ?2, embedder = ?3 WHERE name = ?1",
            params![
                ns.as_str(),
                dumped.dimension.map(|d| d as i64),
                dumped.embedder
            ],
        )?;
        Ok(())
    }

    /// Keeps up to `entries` recent searches' results (0: none), each answered again while
    /// what it read is unchanged. [`DEFAULT_CACHE_ENTRIES`] unless set.
    pub fn with_cache(mut self, entries: usize) -> Self {
        self.cache = Cache::new(entries);
        self
    }

    /// How the cache of searches has done so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Brings an older file up to date, adding what it lacks: namespaces' versions (at 0: no
/// search of the file is cached yet) and counts (filled from the rows), and the store's
/// `seq` (at 0: `put` takes the higher of it and the table's highest).
fn migrate(db: &Connection) -> Result<(), Error> {
    let has = |table: &str, column: &str| -> Result<bool, Error> {
        Ok(db.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?)
    };
    if !has("namespaces", "version")? {
        db.execute_batch("ALTER TABLE namespaces ADD COLUMN version INTEGER NOT NULL DEFAULT 0")?;
    }
    if !has("namespaces", "documents")? {
        db.execute_batch(
            "ALTER TABLE namespaces ADD COLUMN documents INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE namespaces ADD COLUMN text_bytes INTEGER NOT NULL DEFAULT 0;
             UPDATE namespaces SET
                 documents = (SELECT count(*) FROM documents d WHERE d.namespace = name),
                 text_bytes = (SELECT coalesce(sum(length(CAST(d.text AS BLOB))), 0)
                               FROM documents d WHERE d.namespace = name);",
        )?;
    }
    if !has("store", "seq")? {
        db.execute_batch("ALTER TABLE store ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")?;
    }
    if !has("namespaces", "embedder")? {
        // Unknown for what was stored before: nothing to check it against.
        db.execute_batch("ALTER TABLE namespaces ADD COLUMN embedder TEXT")?;
    }
    if !has("documents", "words")? {
        db.execute_batch(
            "ALTER TABLE documents ADD COLUMN words INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE namespaces ADD COLUMN words INTEGER NOT NULL DEFAULT 0;",
        )?;
        // Counted as `put` counts them, one document at a time; the text is unchanged, so
        // the triggers that would index it again (and count it) are left out meanwhile and
        // made again after.
        db.execute_batch(
            "DROP TRIGGER IF EXISTS documents_au; DROP TRIGGER IF EXISTS documents_count_au;",
        )?;
        let mut read = db.prepare("SELECT seq, text FROM documents")?;
        let mut write = db.prepare("UPDATE documents SET words = ?2 WHERE seq = ?1")?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let text = row
                .get_ref(1)?
                .as_str()
                .map_err(|e| Error::Store(e.to_string()))?;
            write.execute(params![seq, word_count(text)])?;
        }
        db.execute_batch(
            "UPDATE namespaces SET words =
                 (SELECT coalesce(sum(d.words), 0) FROM documents d WHERE d.namespace = name);",
        )?;
    }
    Ok(())
}

/// Marks a write to `ns`: its version and the store's go up in the writing transaction, so
/// that every cached search that read it, here or in another process, is stale.
fn written(tx: &Connection, ns: &Namespace) -> Result<(), Error> {
    tx.execute(
        "UPDATE namespaces SET version = version + 1 WHERE name = ?1",
        [ns.as_str()],
    )?;
    tx.execute("UPDATE store SET version = version + 1", [])?;
    Ok(())
}

/// What a search read, as a version: its namespace's (a ranking by text weighs its words
/// by the namespace's documents alone).
fn versions(db: &Connection, ns: &Namespace) -> Result<i64, Error> {
    db.prepare_cached("SELECT version FROM namespaces WHERE name = ?1")?
        .query_row([ns.as_str()], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::UnknownNamespace(ns.to_string()))
}

/// Words in a text, as BM25 counts them.
fn word_count(text: &str) -> i64 {
    crate::rank::words(text).count() as i64
}

/// The namespace's dimension (`Some(None)` when it holds no embedding yet); `None` when
/// it was never written.
fn namespace(db: &Connection, ns: &Namespace) -> Result<Option<Option<usize>>, Error> {
    Ok(db
        .query_row(
            "SELECT dimension FROM namespaces WHERE name = ?1",
            [ns.as_str()],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .map(|d| d.map(|d| d as usize)))
}

/// What made `ns`'s embeddings, if a writer said.
fn embedder_of(db: &Connection, ns: &Namespace) -> Result<Option<String>, Error> {
    Ok(db
        .prepare_cached("SELECT embedder FROM namespaces WHERE name = ?1")?
        .query_row([ns.as_str()], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

fn known(db: &Connection, ns: &Namespace) -> Result<Option<usize>, Error> {
    namespace(db, ns)?.ok_or_else(|| Error::UnknownNamespace(ns.to_string()))
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn metadata(text: &str) -> Result<Metadata, Error> {
    serde_json::from_str(text).map_err(|e| Error::Store(format!("a document's metadata: {e}")))
}

/// ` AND json_extract(d.metadata, ?) = ?` per filter field, with its parameters.
fn filter_clause(filter: &Metadata, params: &mut Vec<Sql>) -> String {
    let mut clause = String::new();
    for (key, value) in filter {
        params.push(Sql::Text(format!("$.\"{key}\"")));
        let path = params.len();
        params.push(match value {
            Value::Bool(b) => Sql::Integer(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Sql::Integer(i),
                None => Sql::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Sql::Text(s.clone()),
            // Refused by the query's check.
            _ => Sql::Null,
        });
        // Of the same JSON type too: SQLite reads `true` as 1, and 1 must not match it.
        let types = match value {
            Value::Bool(_) => "'true', 'false'",
            Value::Number(_) => "'integer', 'real'",
            _ => "'text'",
        };
        clause.push_str(&format!(
            " AND json_extract(d.metadata, ?{path}) = ?{} AND json_type(d.metadata, ?{path}) IN ({types})",
            path + 1
        ));
    }
    clause
}

/// The query's words, each quoted, any of them: an FTS5 query no input can break (a word
/// is letters and digits only).
fn match_expression(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The best documents kept by `top` (by `seq`), best first, their text and metadata read.
fn read_hits(db: &Connection, top: TopK<i64>) -> Result<Vec<Hit>, Error> {
    let mut fetch = db.prepare_cached("SELECT text, metadata FROM documents WHERE seq = ?1")?;
    top.into_sorted()
        .into_iter()
        .map(|(score, id, seq)| {
            let (text, meta) = fetch.query_row([seq], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            Ok(Hit {
                id,
                score,
                text,
                metadata: metadata(&meta)?,
            })
        })
        .collect()
}

/// A document holding a word of a text search's, as counted.
struct Candidate {
    seq: i64,
    id: String,
    tf: Vec<u32>,
    length: u64,
}

/// Every document of `ns` holding a word of `words` that passes `filter`, counted as every
/// store counts words, with how many hold each word (the namespace's, whatever the filter),
/// read in `db`'s snapshot. FTS5 proposes them; a document it finds only by folding an accent holds none
/// of the words as counted, and is left out, as every store leaves it.
fn candidates(
    db: &Connection,
    ns: &Namespace,
    words: &[String],
    filter: &Metadata,
) -> Result<(Vec<Candidate>, Vec<u64>), Error> {
    // Metadata is read only when a filter looks at it.
    let mut stmt = db.prepare_cached(if filter.is_empty() {
        "SELECT d.seq, d.id, d.text, NULL
         FROM documents_fts JOIN documents d ON d.seq = documents_fts.rowid
         WHERE documents_fts MATCH ?1 AND d.namespace = ?2"
    } else {
        "SELECT d.seq, d.id, d.text, d.metadata
         FROM documents_fts JOIN documents d ON d.seq = documents_fts.rowid
         WHERE documents_fts MATCH ?1 AND d.namespace = ?2"
    })?;
    let mut rows = stmt.query(params![match_expression(words), ns.as_str()])?;
    let mut df = vec![0u64; words.len()];
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let text = row
            .get_ref(2)?
            .as_str()
            .map_err(|e| Error::Store(e.to_string()))?;
        let (tf, length) = crate::rank::counts(words, crate::rank::words(text));
        if tf.iter().all(|&n| n == 0) {
            continue;
        }
        for (d, &n) in df.iter_mut().zip(&tf) {
            *d += u64::from(n > 0);
        }
        let passes = filter.is_empty() || {
            let meta = row
                .get_ref(3)?
                .as_str()
                .map_err(|e| Error::Store(e.to_string()))?;
            crate::rank::matches(&metadata(meta)?, filter)
        };
        // Counted in `df` whatever the filter; kept only if it passes.
        if passes {
            out.push(Candidate {
                seq: row.get(0)?,
                id: row.get(1)?,
                tf,
                length,
            });
        }
    }
    Ok((out, df))
}

/// `ns`'s documents and words in all, from its row; `None` for a namespace never written.
fn totals(db: &Connection, ns: &Namespace) -> Result<Option<(u64, u64)>, Error> {
    Ok(db
        .prepare_cached("SELECT documents, words FROM namespaces WHERE name = ?1")?
        .query_row([ns.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })
        .optional()?)
}

/// `ns`'s statistics for a text search of `words`, read in `db`'s snapshot; all zero for a
/// namespace never written.
fn text_stats(db: &Connection, ns: &Namespace, words: &[String]) -> Result<TextStats, Error> {
    let Some((documents, total)) = totals(db, ns)? else {
        return Ok(TextStats {
            df: vec![0; words.len()],
            ..TextStats::default()
        });
    };
    let (_, df) = candidates(db, ns, words, &Metadata::new())?;
    Ok(TextStats {
        documents,
        words: total,
        df,
    })
}

impl SqliteMemory {
    /// A search's hits, read in `db`'s snapshot.
    fn ranked(
        &self,
        db: &Connection,
        ns: &Namespace,
        dimension: Option<usize>,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, Error> {
        let k = query.k;
        match (&query.text, &query.vector) {
            (Some(text), None) => Self::text_ranked(db, ns, text, stats, &query.filter, k),
            (None, Some(vector)) => self.vector_search(db, ns, dimension, vector, query),
            (Some(text), Some(vector)) => {
                let depth = hybrid_depth(k);
                let by_text = Self::text_ranked(db, ns, text, stats, &query.filter, depth)?;
                let (by_vector, _) =
                    Self::vector_ranked(db, ns, dimension, vector, &query.filter, depth)?;
                Ok(hybrid(by_text, by_vector, k))
            }
            (None, None) => Err(Error::Query("a query needs text, a vector or both".into())),
        }
    }

    /// The best `k` documents holding a word of `text`, by BM25 over `stats` (the
    /// namespace's own when not given).
    fn text_ranked(
        db: &Connection,
        ns: &Namespace,
        text: &str,
        stats: Option<&TextStats>,
        filter: &Metadata,
        k: usize,
    ) -> Result<Vec<Hit>, Error> {
        let words = query_words(text);
        if words.is_empty() {
            return Err(Error::Query(
                "the query's text has no word to search for".into(),
            ));
        }
        let (candidates, df) = candidates(db, ns, &words, filter)?;
        let own;
        let stats = match stats {
            Some(s) => s,
            None => {
                let (documents, total) = totals(db, ns)?.unwrap_or((0, 0));
                own = TextStats {
                    documents,
                    words: total,
                    df,
                };
                &own
            }
        };
        let bm25 = Bm25::new(&words, stats);
        let mut top = TopK::new(k);
        for c in candidates {
            let score = bm25.score_counts(&c.tf, c.length);
            if top.admits(score) {
                top.offer(score, c.id, c.seq);
            }
        }
        read_hits(db, top)
    }

    fn vector_ranked(
        db: &Connection,
        ns: &Namespace,
        dimension: Option<usize>,
        vector: &[f32],
        filter: &Metadata,
        k: usize,
    ) -> Result<(Vec<Hit>, usize), Error> {
        match dimension {
            // No embedding stored yet: nothing is near.
            None => return Ok((Vec::new(), 0)),
            Some(d) if d != vector.len() => {
                return Err(Error::Query(format!(
                    "the query's vector has {} dimensions, and namespace {ns} holds {d}",
                    vector.len()
                )));
            }
            Some(_) => {}
        }
        let mut params = vec![Sql::Text(ns.to_string())];
        let clause = filter_clause(filter, &mut params);
        // Scored straight from the stored bytes, and only the best `k` read whole.
        let sql = format!(
            "SELECT d.seq, d.id, d.embedding FROM documents d
             WHERE d.namespace = ?1 AND d.embedding IS NOT NULL{clause}"
        );
        let mut stmt = db.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let query = Query64::of(vector);
        let mut top = TopK::new(k);
        let mut scanned = 0;
        while let Some(row) = rows.next()? {
            scanned += 1;
            let bytes = row
                .get_ref(2)?
                .as_blob()
                .map_err(|e| Error::Store(e.to_string()))?;
            if bytes.len() != 4 * vector.len() {
                return Err(Error::Store(format!(
                    "an embedding of namespace {ns} holds {} bytes, not {}: the file was not written by this store",
                    bytes.len(),
                    4 * vector.len()
                )));
            }
            let score = query.cosine(bytes);
            // Most rows fall short of the best `k`: their ids are never read.
            if top.admits(score) {
                top.offer(score, row.get(1)?, row.get::<_, i64>(0)?);
            }
        }
        let hits = read_hits(db, top)?;
        Ok((hits, scanned))
    }

    /// A search by vector alone: approximate when the namespace has a graph and the query
    /// neither filters nor asks to be exact (and enough of the graph's candidates are still
    /// documents), else exact, after which a namespace found large enough starts being
    /// indexed.
    fn vector_search(
        &self,
        db: &Connection,
        ns: &Namespace,
        dimension: Option<usize>,
        vector: &[f32],
        query: &Query,
    ) -> Result<Vec<Hit>, Error> {
        let approximate = !query.exact && query.filter.is_empty();
        if approximate
            && dimension == Some(vector.len())
            && let Some(index) = self.approx.ready(ns)
            && let Some(hits) = Self::approximate(db, ns, &index, vector, query.k)?
        {
            return Ok(hits);
        }
        let (hits, scanned) =
            Self::vector_ranked(db, ns, dimension, vector, &query.filter, query.k)?;
        if approximate {
            self.approx.scanned(ns, scanned);
        }
        Ok(hits)
    }

    /// The best `k` of the graph's nearest candidates, scored exactly from their stored
    /// embeddings; `None` when fewer than `k` of them are still documents of `ns`. Documents
    /// newer than the graph are added to it first.
    fn approximate(
        db: &Connection,
        ns: &Namespace,
        index: &RwLock<Index>,
        vector: &[f32],
        k: usize,
    ) -> Result<Option<Vec<Hit>>, Error> {
        let indexed_to = index.read().unwrap_or_else(|p| p.into_inner()).indexed_to;
        let newer = approx::newer(db, ns, indexed_to)?;
        if !newer.is_empty() {
            index.write().unwrap_or_else(|p| p.into_inner()).add(&newer);
        }
        let candidates = index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nearest(vector, k + (k / 2).max(8));
        let query = Query64::of(vector);
        let mut fetch = db.prepare_cached(
            "SELECT id, text, metadata, embedding FROM documents WHERE seq = ?1 AND namespace = ?2",
        )?;
        let mut top = TopK::new(k);
        for seq in candidates {
            let row = fetch
                .query_row(params![seq, ns.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                })
                .optional()?;
            // Gone (deleted, or replaced under a new `seq`): not a candidate any more.
            let Some((id, text, meta, Some(bytes))) = row else {
                continue;
            };
            if bytes.len() == 4 * vector.len() {
                top.offer(query.cosine(&bytes), id, (text, meta));
            }
        }
        let best = top.into_sorted();
        if best.len() < k {
            return Ok(None);
        }
        best.into_iter()
            .map(|(score, id, (text, meta))| {
                Ok(Hit {
                    id,
                    score,
                    text,
                    metadata: metadata(&meta)?,
                })
            })
            .collect::<Result<_, Error>>()
            .map(Some)
    }
}

/// A query vector ready to be compared with stored embeddings, and its norm.
struct Query64 {
    values: Vec<f32>,
    norm: f64,
}

/// Lanes of the cosine's sums: eight `f32`, one vector register.
const LANES: usize = 8;

impl Query64 {
    fn of(vector: &[f32]) -> Self {
        let norm = vector
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        Self {
            values: vector.to_vec(),
            norm,
        }
    }

    /// The cosine similarity with an embedding stored as little-endian `f32` bytes (of the
    /// same dimension: the namespace's); 0 when either is all zeros. Summed in `f32` lanes,
    /// as vector search does everywhere: scores agree with `f64` arithmetic to about 1e-6.
    fn cosine(&self, bytes: &[u8]) -> f64 {
        let mut dot = [0f32; LANES];
        let mut squares = [0f32; LANES];
        let whole = self.values.len() / LANES * LANES;
        for (b, q) in bytes[..whole * 4]
            .chunks_exact(4 * LANES)
            .zip(self.values[..whole].chunks_exact(LANES))
        {
            let mut x = [0f32; LANES];
            for (l, v) in x.iter_mut().enumerate() {
                *v = f32::from_le_bytes([b[4 * l], b[4 * l + 1], b[4 * l + 2], b[4 * l + 3]]);
            }
            for l in 0..LANES {
                dot[l] += x[l] * q[l];
                squares[l] += x[l] * x[l];
            }
        }
        let mut d: f64 = dot.iter().map(|&v| f64::from(v)).sum();
        let mut s: f64 = squares.iter().map(|&v| f64::from(v)).sum();
        for (b, &q) in bytes[whole * 4..]
            .chunks_exact(4)
            .zip(&self.values[whole..])
        {
            let x = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            d += x * f64::from(q);
            s += x * x;
        }
        if s == 0.0 || self.norm == 0.0 {
            0.0
        } else {
            d / (s.sqrt() * self.norm)
        }
    }
}

impl SqliteMemory {
    /// [`Memory::put`], recording or checking the embedder that made the embeddings, when
    /// the caller names it.
    fn put_by(
        &self,
        ns: &Namespace,
        documents: Vec<Document>,
        embedder: Option<&str>,
    ) -> Result<(), Error> {
        check_batch(&documents)?;

        let mut db = self.db();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let dimension = match namespace(&tx, ns)? {
            Some(d) => d,
            None => {
                tx.execute(
                    "INSERT INTO namespaces (name, dimension) VALUES (?1, NULL)",
                    [ns.as_str()],
                )?;
                None
            }
        };
        let batch = documents
            .iter()
            .find_map(|d| d.embedding.as_ref().map(Vec::len));
        match (dimension, batch) {
            (Some(expected), Some(got)) if expected != got => {
                let index = documents
                    .iter()
                    .position(|d| d.embedding.is_some())
                    .unwrap_or(0);
                // Dropped without a commit: nothing of the batch is stored.
                return Err(Error::Dimension {
                    namespace: ns.to_string(),
                    index,
                    expected,
                    got,
                });
            }
            (None, Some(got)) => {
                tx.execute(
                    "UPDATE namespaces SET dimension = ?2 WHERE name = ?1",
                    params![ns.as_str(), got as i64],
                )?;
            }
            _ => {}
        }
        // Which embedder made the namespace's vectors: recorded with the first, checked
        // after. Raw embeddings (no embedder said) are taken as they come.
        if let (Some(got), Some(_)) = (embedder, batch) {
            match embedder_of(&tx, ns)? {
                Some(holds) if holds != got => {
                    return Err(Error::Mixed {
                        namespace: ns.to_string(),
                        holds,
                        got: got.to_owned(),
                    });
                }
                Some(_) => {}
                // Vectors there already, made by nobody said: left unrecorded, since what
                // made them is not known.
                None if dimension.is_some() => {}
                None => {
                    tx.execute(
                        "UPDATE namespaces SET embedder = ?2 WHERE name = ?1",
                        params![ns.as_str(), got],
                    )?;
                }
            }
        }
        {
            // A replaced document is deleted and stored anew under the next `seq`, which the
            // store never gives twice: an approximate index tells new documents by it.
            // The higher of the store's and the table's: a row written some other way
            // cannot make the next `seq` collide.
            let mut seq: i64 = tx.query_row(
                "SELECT max((SELECT seq FROM store), (SELECT coalesce(max(seq), 0) FROM documents))",
                [],
                |r| r.get(0),
            )?;
            let mut delete =
                tx.prepare("DELETE FROM documents WHERE namespace = ?1 AND id = ?2")?;
            let mut insert = tx.prepare(
                "INSERT INTO documents (seq, namespace, id, text, metadata, embedding, words)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for d in &documents {
                let meta =
                    serde_json::to_string(&d.metadata).map_err(|e| Error::Store(e.to_string()))?;
                delete.execute(params![ns.as_str(), d.id])?;
                seq += 1;
                insert.execute(params![
                    seq,
                    ns.as_str(),
                    d.id,
                    d.text,
                    meta,
                    d.embedding.as_deref().map(blob),
                    word_count(&d.text)
                ])?;
            }
            tx.execute("UPDATE store SET seq = ?1", [seq])?;
        }
        written(&tx, ns)?;
        tx.commit()?;
        Ok(())
    }
}

/// A namespace whole, as [`SqliteMemory::dump`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Dumped {
    pub dimension: Option<usize>,
    pub embedder: Option<String>,
    pub documents: Vec<Document>,
}

impl Memory for SqliteMemory {
    fn put(&self, ns: &Namespace, documents: Vec<Document>) -> Result<(), Error> {
        self.put_by(ns, documents, None)
    }

    fn put_embedded(
        &self,
        ns: &Namespace,
        documents: Vec<Document>,
        embedder: &str,
    ) -> Result<(), Error> {
        crate::check_embedder(embedder)?;
        self.put_by(ns, documents, Some(embedder))
    }

    fn get(&self, ns: &Namespace, id: &str) -> Result<Option<Document>, Error> {
        let db = self.db();
        known(&db, ns)?;
        let row = db
            .query_row(
                "SELECT text, metadata, embedding FROM documents WHERE namespace = ?1 AND id = ?2",
                params![ns.as_str(), id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(text, meta, embedding)| {
            Ok(Document {
                id: id.to_owned(),
                text,
                metadata: metadata(&meta)?,
                embedding: embedding.as_deref().map(floats),
            })
        })
        .transpose()
    }

    fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64, Error> {
        let mut db = self.db();
        known(&db, ns)?;
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut deleted = 0;
        {
            let mut delete =
                tx.prepare("DELETE FROM documents WHERE namespace = ?1 AND id = ?2")?;
            for id in ids {
                deleted += delete.execute(params![ns.as_str(), id])? as u64;
            }
        }
        if deleted > 0 {
            written(&tx, ns)?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    fn text_stats(&self, ns: &Namespace, words: &[String]) -> Result<TextStats, Error> {
        let db = self.db();
        let db = db.unchecked_transaction()?;
        text_stats(&db, ns, words)
    }

    fn search_scored(
        &self,
        ns: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, Error> {
        query.check()?;
        let db = self.db();
        // One snapshot: another process's write between the ranking and the reading of the
        // best documents must not change what is returned.
        let db = db.unchecked_transaction()?;
        let dimension = known(&db, ns)?;
        if let (Some(got), Some(_)) = (&query.embedder, &query.vector)
            && let Some(holds) = embedder_of(&db, ns)?
            && &holds != got
        {
            return Err(Error::Mixed {
                namespace: ns.to_string(),
                holds,
                got: got.clone(),
            });
        }
        // Scored by statistics from outside, a search is not the store's own to cache.
        let key = match (stats, &query.text) {
            (Some(_), Some(_)) => None,
            _ => self.cache.key(ns, query),
        };
        let read = match &key {
            Some(key) => {
                let read = versions(&db, ns)?;
                if let Some(hits) = self.cache.get(key, read) {
                    return Ok(hits);
                }
                Some(read)
            }
            None => None,
        };
        let hits = self.ranked(&db, ns, dimension, query, stats)?;
        if let (Some(key), Some(read)) = (key, read) {
            self.cache.put(key, read, &hits);
        }
        Ok(hits)
    }

    fn stats(&self, ns: &Namespace) -> Result<Stats, Error> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT dimension, documents, text_bytes, embedder FROM namespaces WHERE name = ?1",
                [ns.as_str()],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let (dimension, documents, text_bytes, embedder) =
            row.ok_or_else(|| Error::UnknownNamespace(ns.to_string()))?;
        Ok(Stats {
            documents: documents.max(0) as u64,
            dimension: dimension.map(|d| d as usize),
            text_bytes: text_bytes.max(0) as u64,
            embedder,
        })
    }

    fn cache_stats(&self) -> CacheStats {
        SqliteMemory::cache_stats(self)
    }

    fn indexed(&self, ns: &Namespace) -> Option<usize> {
        SqliteMemory::indexed(self, ns)
    }

    fn rebuild(&self, ns: &Namespace) -> Result<Rebuilt, Error> {
        SqliteMemory::rebuild(self, ns)
    }

    fn namespaces(&self) -> Result<Vec<Namespace>, Error> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name FROM namespaces ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names
            .map(|n| {
                let n = n?;
                Namespace::parse(&n)
                    .map_err(|_| Error::Store(format!("the store holds a bad namespace {n:?}")))
            })
            .collect()
    }
}
