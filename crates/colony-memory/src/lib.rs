//! The shared memory of colony's agents: documents kept by namespace (a run's, a team's, an
//! agent's, or shared), each with its text, flat metadata and, optionally, an embedding, and
//! found again by full-text search, exact vector search, or both fused.
//!
//! [`Memory`] is the one interface; [`SqliteMemory`] is the embedded store (one SQLite file,
//! FTS5 for text, embeddings searched exactly, in WAL mode with every write synced before it
//! is acknowledged), and [`testing`] the conformance cases every store passes. [`Lexical`]
//! embeds text without a model: hashed words and character trigrams, which find the same
//! words, not the same meaning.
//!
//! Recent searches are cached, each answered again only while what it read is unchanged
//! (`cache.rs`); a large namespace's vector searches go through an HNSW graph built from the
//! file, scored exactly (`approx.rs`).
//!
//! Everything that comes in is bounded and checked before anything is stored, and a batch
//! is stored whole or not at all: a namespace name ([`Namespace::parse`]), a document's id,
//! text ([`MAX_TEXT_BYTES`]), metadata ([`MAX_METADATA_KEYS`], flat values only) and
//! embedding (finite numbers, [`MAX_DIMENSION`] at most, and the namespace's dimension once
//! it has one), a query's `k` ([`MAX_K`]).

mod approx;
mod cache;
mod chroma;
mod embed;
mod open;
mod rank;
mod remote;
mod sharded;
mod sqlite;
pub mod testing;

pub use approx::{DEFAULT_APPROXIMATE_FROM, Rebuilt};
pub use cache::{CACHE_BYTES, CacheStats, DEFAULT_CACHE_ENTRIES};
pub use chroma::{ChromaMemory, ChromaOptions};
pub use embed::{Embedder, Lexical};
pub use open::{Opening, Place, open, open_file, shard_path};
pub use remote::{Remote, RemoteOptions};
pub use sharded::{MAX_SHARDS, Sharded};
pub use sqlite::{Dumped, SqliteMemory};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 128;
/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest document text, in bytes.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Most metadata fields of one document.
pub const MAX_METADATA_KEYS: usize = 32;
/// Longest metadata key, and longest string value, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Most dimensions of an embedding.
pub const MAX_DIMENSION: usize = 4096;
/// Most documents one `put` stores.
pub const MAX_BATCH: usize = 10_000;
/// Most bytes of text and embeddings one `put` stores.
pub const MAX_BATCH_BYTES: usize = 256 << 20;
/// Largest magnitude of an embedding's value: squares of 4,096 of them still sum within `f32`.
pub const MAX_VALUE: f32 = 1e15;
/// Most hits one search returns.
pub const MAX_K: usize = 1_000;

/// Flat metadata: each value a string, a number or a boolean.
pub type Metadata = Map<String, Value>;

/// Why the memory refused or failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("namespace {name:?}: {why}")]
    Namespace { name: String, why: &'static str },
    #[error("no namespace {0} in this memory")]
    UnknownNamespace(String),
    #[error("document {index} of the batch: {why}")]
    Document { index: usize, why: String },
    #[error(
        "document {index} of the batch: an embedding of {got} dimensions, and namespace {namespace} holds {expected}"
    )]
    Dimension {
        namespace: String,
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Query(String),
    #[error(
        "namespace {namespace} holds embeddings made by `{holds}`, and these were made by `{got}`: nearness between them means nothing"
    )]
    Mixed {
        namespace: String,
        holds: String,
        got: String,
    },
    #[error("the store: {0}")]
    Store(String),
    /// An embedding endpoint failed or answered what is not a set of embeddings.
    #[error("the embedder: {0}")]
    Embedder(String),
    /// How the memory was to be opened is wrong: a path, a URL, a number of stores.
    #[error("{0}")]
    Setting(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

/// A namespace: one or more segments of letters, digits, `.`, `_` and `-`, joined by `/`
/// (`shared`, `run/abc`, `team/feature`, `agent/12`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(name: &str) -> Result<Self, Error> {
        let refuse = |why| {
            Err(Error::Namespace {
                name: name.chars().take(MAX_NAMESPACE_BYTES).collect(),
                why,
            })
        };
        if name.is_empty() {
            return refuse("empty");
        }
        if name.len() > MAX_NAMESPACE_BYTES {
            return refuse("longer than 128 bytes");
        }
        for segment in name.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return refuse("a segment between `/` is empty, `.` or `..`");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return refuse("only letters, digits, `.`, `_`, `-` and `/` between segments");
            }
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Namespace {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Namespace::parse(&s)
    }
}

impl From<Namespace> for String {
    fn from(n: Namespace) -> String {
        n.0
    }
}

/// A document: its id within its namespace, its text, metadata and embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

impl Document {
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: text.into(),
            metadata: Metadata::new(),
            embedding: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    pub fn embedded(mut self, embedding: Vec<f32>) -> Self {
        self.embedding = Some(embedding);
        self
    }

    /// Checks the document's bounds; `index` is its place in its batch, for the error.
    fn check(&self, index: usize) -> Result<(), Error> {
        let refuse = |why: String| Err(Error::Document { index, why });
        if self.id.is_empty() || self.id.len() > MAX_ID_BYTES {
            return refuse(format!(
                "its id is {} bytes: allowed 1..={MAX_ID_BYTES}",
                self.id.len()
            ));
        }
        if self.id.chars().any(char::is_control) {
            return refuse("its id holds a control character".into());
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return refuse(format!(
                "its text is {} bytes: allowed up to {MAX_TEXT_BYTES}",
                self.text.len()
            ));
        }
        check_metadata(&self.metadata).or_else(refuse)?;
        if let Some(e) = &self.embedding {
            if e.is_empty() || e.len() > MAX_DIMENSION {
                return refuse(format!(
                    "its embedding has {} dimensions: allowed 1..={MAX_DIMENSION}",
                    e.len()
                ));
            }
            if let Some(i) = e.iter().position(|x| !x.is_finite() || x.abs() > MAX_VALUE) {
                return refuse(format!(
                    "its embedding's value {i} is {}: every value must be a finite number of at most {MAX_VALUE:e} in magnitude",
                    e[i]
                ));
            }
        }
        Ok(())
    }
}

/// Metadata is flat and bounded: at most [`MAX_METADATA_KEYS`] keys of letters, digits, `_`,
/// `-` and `.`, each a string, a number or a boolean.
fn check_metadata(metadata: &Metadata) -> Result<(), String> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(format!(
            "its metadata has {} fields: allowed up to {MAX_METADATA_KEYS}",
            metadata.len()
        ));
    }
    for (key, value) in metadata {
        check_key(key)?;
        match value {
            Value::String(s) if s.len() > MAX_METADATA_VALUE_BYTES => {
                return Err(format!(
                    "its metadata field `{key}` is {} bytes: allowed up to {MAX_METADATA_VALUE_BYTES}",
                    s.len()
                ));
            }
            Value::String(_) | Value::Bool(_) => {}
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {}
            other => {
                return Err(format!(
                    "its metadata field `{key}` is {other}: a value must be a string, a number or a boolean"
                ));
            }
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > MAX_METADATA_KEY_BYTES
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "metadata key {key:?}: 1 to {MAX_METADATA_KEY_BYTES} letters, digits, `_`, `-` or `.`"
        ));
    }
    Ok(())
}

/// What a search looks for: text (full-text), a vector (exact nearest by cosine), or both
/// (their rankings fused), among the documents whose metadata has every field of `filter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub filter: Metadata,
    pub k: usize,
    /// Search every embedding, even in a namespace with an approximate index.
    #[serde(default)]
    pub exact: bool,
    /// What made `vector` (`lexical`, `http:MODEL`): refused in a namespace whose vectors
    /// another embedder made. Unsaid, not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<String>,
}

impl Query {
    pub fn text(text: impl Into<String>, k: usize) -> Self {
        Self {
            text: Some(text.into()),
            k,
            ..Self::default()
        }
    }

    pub fn vector(vector: Vec<f32>, k: usize) -> Self {
        Self {
            vector: Some(vector),
            k,
            ..Self::default()
        }
    }

    pub fn filtered(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.filter.insert(key.to_owned(), value.into());
        self
    }

    fn check(&self) -> Result<(), Error> {
        let refuse = |why: String| Err(Error::Query(why));
        if let Some(e) = &self.embedder {
            check_embedder(e)?;
        }
        if self.k == 0 || self.k > MAX_K {
            return refuse(format!("k is {}: allowed 1..={MAX_K}", self.k));
        }
        match (&self.text, &self.vector) {
            (None, None) => return refuse("a query needs text, a vector or both".into()),
            (Some(t), _) if t.len() > MAX_TEXT_BYTES => {
                return refuse(format!(
                    "the query's text is {} bytes: allowed up to {MAX_TEXT_BYTES}",
                    t.len()
                ));
            }
            _ => {}
        }
        if let Some(v) = &self.vector {
            if v.is_empty() || v.len() > MAX_DIMENSION {
                return refuse(format!(
                    "the query's vector has {} dimensions: allowed 1..={MAX_DIMENSION}",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite() || x.abs() > MAX_VALUE) {
                return refuse(format!(
                    "the query's vector holds a value that is not a finite number of at most {MAX_VALUE:e} in magnitude"
                ));
            }
        }
        check_metadata(&self.filter).map_err(|e| Error::Query(format!("the filter: {e}")))
    }
}

/// One document found, best first: its score (higher is better; for text, its BM25;
/// for a vector, the cosine similarity; for both, the fused reciprocal-rank score).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    pub score: f64,
    pub text: String,
    pub metadata: Metadata,
}

/// What a namespace holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub documents: u64,
    /// Its embeddings' dimension, once one was stored.
    pub dimension: Option<usize>,
    /// Bytes of text held.
    pub text_bytes: u64,
    /// What made its embeddings, when a writer said (`lexical`, `http:MODEL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<String>,
}

/// What a text search scores by (BM25): a namespace's documents, their words, and how many
/// documents hold each word of the query. A namespace spread over several stores is scored
/// by the sum of theirs, so that its ranking is the one a single store would give.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextStats {
    pub documents: u64,
    /// Words in all its documents.
    pub words: u64,
    /// Documents holding each word of the query, in the query's order.
    pub df: Vec<u64>,
}

impl TextStats {
    /// Adds another store's share of the same namespace.
    pub fn add(&mut self, other: &TextStats) {
        self.documents += other.documents;
        self.words += other.words;
        if self.df.len() < other.df.len() {
            self.df.resize(other.df.len(), 0);
        }
        for (a, b) in self.df.iter_mut().zip(&other.df) {
            *a += b;
        }
    }
}

/// The distinct words of a query's text that a text search looks for, lowercased, in the
/// order said: [`TextStats::df`] counts them in this order.
pub fn query_words(text: &str) -> Vec<String> {
    rank::query_words(text)
}

/// Longest name of an embedder.
pub const MAX_EMBEDDER_LEN: usize = 256;

/// Checks an embedder's name: 1 to [`MAX_EMBEDDER_LEN`] bytes, no control characters.
pub fn check_embedder(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_EMBEDDER_LEN || name.chars().any(char::is_control) {
        return Err(Error::Query(format!(
            "an embedder's name is 1 to {MAX_EMBEDDER_LEN} bytes without control characters; got {:?}",
            name.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// A store of documents by namespace. Its calls block (a disk, a network): call them from
/// a blocking thread, never from an async worker.
pub trait Memory: Send + Sync + std::fmt::Debug {
    /// Stores `documents` in `namespace` (created with the first), replacing those of the
    /// same ids: all of them, or none and the first problem.
    fn put(&self, namespace: &Namespace, documents: Vec<Document>) -> Result<(), Error>;
    /// [`Memory::put`] of documents whose embeddings `embedder` made (`lexical`,
    /// `http:MODEL`): the namespace records it with its first embeddings, and refuses
    /// embeddings another embedder made, with nothing stored. A store that keeps no record
    /// just stores them.
    fn put_embedded(
        &self,
        namespace: &Namespace,
        documents: Vec<Document>,
        embedder: &str,
    ) -> Result<(), Error> {
        check_embedder(embedder)?;
        self.put(namespace, documents)
    }
    fn get(&self, namespace: &Namespace, id: &str) -> Result<Option<Document>, Error>;
    /// Deletes the documents of `ids` there are; how many.
    fn delete(&self, namespace: &Namespace, ids: &[String]) -> Result<u64, Error>;
    /// The `query.k` best documents of `namespace`; refused for a namespace never written.
    fn search(&self, namespace: &Namespace, query: &Query) -> Result<Vec<Hit>, Error> {
        self.search_scored(namespace, query, None)
    }
    /// [`Memory::search`], its text scored by `stats` when given (those of every store the
    /// namespace is spread over), else by the store's own.
    fn search_scored(
        &self,
        namespace: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, Error>;
    /// The statistics of `namespace` a search for `words` ([`query_words`]) scores by; an
    /// unknown namespace has none.
    fn text_stats(&self, namespace: &Namespace, words: &[String]) -> Result<TextStats, Error>;
    fn stats(&self, namespace: &Namespace) -> Result<Stats, Error>;
    fn namespaces(&self) -> Result<Vec<Namespace>, Error>;
    /// The first `most` namespaces with their statistics, and whether there are more: one
    /// reading of the whole memory (a store that reads over a network reads once).
    fn listed(&self, most: usize) -> Result<(Vec<(Namespace, Stats)>, bool), Error> {
        let names = self.namespaces()?;
        let more = names.len() > most;
        let listed = names
            .into_iter()
            .take(most)
            .map(|ns| {
                let stats = self.stats(&ns)?;
                Ok((ns, stats))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((listed, more))
    }
    /// How the store's cache of searches has done (all zero for a store without one).
    fn cache_stats(&self) -> CacheStats {
        CacheStats::default()
    }
    /// Documents in `namespace`'s approximate index of colony's, when one is ready.
    fn indexed(&self, _namespace: &Namespace) -> Option<usize> {
        None
    }
    /// Builds `namespace`'s approximate index of colony's now, from the store; refused by a
    /// store that keeps none (Chroma keeps its own).
    fn rebuild(&self, namespace: &Namespace) -> Result<Rebuilt, Error> {
        Err(Error::Query(format!(
            "this store keeps no index of colony's to rebuild for {namespace}: only a SQLite memory has one"
        )))
    }
}

/// Checks a batch before anything of it is stored: its size, each document, one dimension.
pub fn check_batch(documents: &[Document]) -> Result<(), Error> {
    if documents.len() > MAX_BATCH {
        return Err(Error::Document {
            index: MAX_BATCH,
            why: format!(
                "a batch of {} documents: allowed up to {MAX_BATCH}",
                documents.len()
            ),
        });
    }
    let mut dimension = None;
    let mut bytes = 0usize;
    for (index, d) in documents.iter().enumerate() {
        d.check(index)?;
        bytes += d.text.len() + 4 * d.embedding.as_ref().map_or(0, Vec::len);
        if bytes > MAX_BATCH_BYTES {
            return Err(Error::Document {
                index,
                why: format!(
                    "the batch passes {MAX_BATCH_BYTES} bytes of text and embeddings here"
                ),
            });
        }
        if let Some(e) = &d.embedding {
            match dimension {
                None => dimension = Some(e.len()),
                Some(n) if n != e.len() => {
                    return Err(Error::Document {
                        index,
                        why: format!(
                            "its embedding has {} dimensions, and the batch's first has {n}",
                            e.len()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
