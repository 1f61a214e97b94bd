//! [`ChromaMemory`]: the memory on a ChromaDB server, over its HTTP v2 API, for users who
//! already run one.
//!
//! A namespace is two collections of the configured tenant and database:
//! - `PREFIX.NAME.docs`, the record: one entry per document, holding its text, its metadata
//!   (flat, for Chroma's filters, and as JSON, to come back exactly as stored), its
//!   embedding (as JSON), and its words, lowercased between spaces, as Chroma's document,
//!   so that `$contains " word "` finds whole words whatever their case. Chroma wants a
//!   vector for every entry: these carry a placeholder of one dimension. The collection's
//!   own metadata counts the namespace's words and bytes of text, and holds its dimension
//!   and embedder.
//! - `PREFIX.NAME.vecs`, an index: the embedded documents' vectors in Chroma's HNSW graph
//!   (cosine), written after the record. It only proposes candidates: every hit is scored
//!   from the record, exactly, so a vector left stale by a failed write costs recall, never
//!   a wrong answer, and the index can always be written again from the record.
//!
//! Text is ranked by colony's BM25 ([`crate::TextStats`]), as in every store. Chroma has no
//! transactions: a `put` is checked whole before anything is written, and one that fails
//! midway (the server gone) may leave part of its batch; putting it again stores it whole.
//! One `ChromaMemory` should write a namespace at a time: its writes take turns, another
//! process's do not. Two writers at once can skew the counts (BM25's average length,
//! `stats`), and can clear the mark that tells exact searches the index is behind its
//! record (one writer's clearing while the other is between record and index), so that an
//! exact search misses what the other's failed write left out of the index; a rebuild
//! while another writes can do the same. A rebuild with the writers stopped repairs it.
//!
//! Blocking: call it from a thread that may block, never from an async task.

use crate::{
    Document, Error, Hit, Memory, Metadata, Namespace, Query, Stats, TextStats, check_batch,
    rank::{Bm25, TopK, cosine, hybrid, hybrid_depth, matches, query_words, words},
};
use serde_json::{Map, Value, json};
use std::{collections::HashMap, io::Read, sync::Mutex, time::Duration};

/// Where the server is and which of its collections are colony's.
#[derive(Clone, PartialEq, Eq)]
pub struct ChromaOptions {
    /// `http://HOST:PORT`.
    pub url: String,
    pub tenant: String,
    pub database: String,
    /// Starts the name of every collection this memory makes: letters, digits, `_` and
    /// `-`, beginning with a letter or digit, at most 64.
    pub prefix: String,
    /// Sent as `x-chroma-token`, when the server wants one.
    pub token: Option<String>,
    /// The variable to read `token` from when connecting, when `token` is not given.
    pub token_env: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// A vector search of a namespace with at most this many documents reads every
    /// embedding and is exact; above, Chroma's graph proposes the candidates.
    pub exact_up_to: usize,
}

impl std::fmt::Debug for ChromaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ChromaOptions")
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .field("database", &self.database)
            .field("prefix", &self.prefix)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

impl ChromaOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tenant: "default_tenant".into(),
            database: "default_database".into(),
            prefix: "colony".into(),
            token: None,
            token_env: None,
            timeout: Duration::from_secs(30),
            exact_up_to: 2_000,
        }
    }
}

/// Entries read per request: a page of texts is at most this many documents.
const PAGE: usize = 100;
/// Vectors read per request from a namespace's index.
const VEC_PAGE: usize = 1_000;
/// Ids read per request, when only ids are wanted.
const ID_PAGE: usize = 1_000;
/// Entries written per request (the server takes up to a few thousand) and their bytes.
const WRITE_BATCH: usize = 500;
const WRITE_BYTES: usize = 16 << 20;
/// Most documents one text search reads: a query whose words are in more is refused.
const MAX_SCANNED: usize = 200_000;
/// Largest answer read from the server.
const MAX_REPLY_BYTES: u64 = 256 << 20;

/// Keys of an entry's metadata that are colony's own: a colon is in no user key.
const TEXT: &str = "colony:text";
const METADATA: &str = "colony:metadata";
const EMBEDDING: &str = "colony:embedding";
const EMBEDDED: &str = "colony:embedded";
const WORDS: &str = "colony:words";
const BYTES: &str = "colony:text_bytes";
const DIMENSION: &str = "colony:dimension";
const EMBEDDER: &str = "colony:embedder";
const BEHIND: &str = "colony:index-behind";

/// A namespace's collections, by id.
#[derive(Clone, Debug)]
struct Space {
    docs: String,
    vecs: Option<String>,
}

/// The memory on a ChromaDB server (see the module's text).
pub struct ChromaMemory {
    options: ChromaOptions,
    base: String,
    client: crate::remote::Http,
    spaces: Mutex<HashMap<Namespace, Space>>,
    /// Writes of this process, one at a time: each reads, changes and writes its
    /// namespace's counts.
    writing: Mutex<()>,
}

impl std::fmt::Debug for ChromaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromaMemory")
            .field("url", &self.options.url)
            .field("tenant", &self.options.tenant)
            .field("database", &self.options.database)
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

/// A collection's name for a namespace: `/`, `.` and `_` written as `_s`, `_d` and `__`,
/// so that names of two namespaces never meet, and no name holds `..`.
fn encode(ns: &Namespace) -> String {
    let mut out = String::with_capacity(ns.as_str().len() * 2);
    for c in ns.as_str().chars() {
        match c {
            '/' => out.push_str("_s"),
            '.' => out.push_str("_d"),
            '_' => out.push_str("__"),
            c => out.push(c),
        }
    }
    out
}

fn decode(name: &str) -> Option<Namespace> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '_' {
            match chars.next()? {
                's' => out.push('/'),
                'd' => out.push('.'),
                '_' => out.push('_'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Namespace::parse(&out).ok()
}

/// A document's words as Chroma holds them: lowercased, each between spaces.
fn spaced(text: &str) -> String {
    let mut out = String::from(" ");
    for w in words(text) {
        out.push_str(&w);
        out.push(' ');
    }
    out
}

fn store(why: impl std::fmt::Display) -> Error {
    Error::Store(format!("chroma: {why}"))
}

/// The part of a filter Chroma can apply exactly (strings and booleans; numbers are
/// matched by colony, since Chroma tells integers from floats), as a `where` clause with
/// `more`; and whether that was the whole filter.
fn pushed(filter: &Metadata, more: Vec<Value>) -> (Option<Value>, bool) {
    let mut clauses = more;
    let mut whole = true;
    for (key, value) in filter {
        match value {
            Value::String(_) | Value::Bool(_) => clauses.push(json!({ key: { "$eq": value } })),
            _ => whole = false,
        }
    }
    let clause = match clauses.len() {
        0 => None,
        1 => clauses.pop(),
        _ => Some(json!({ "$and": clauses })),
    };
    (clause, whole)
}

/// One entry of the record, read back.
struct Entry {
    id: String,
    metadata: Map<String, Value>,
}

impl Entry {
    fn document(self) -> Result<Document, Error> {
        let text = self.text()?.to_owned();
        let metadata = self.user_metadata()?;
        let embedding = self.embedding()?;
        Ok(Document {
            id: self.id,
            text,
            metadata,
            embedding,
        })
    }

    fn text(&self) -> Result<&str, Error> {
        self.metadata
            .get(TEXT)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                store(format!(
                    "entry {:?} has no text: not written by colony",
                    self.id
                ))
            })
    }

    fn user_metadata(&self) -> Result<Metadata, Error> {
        let raw = self
            .metadata
            .get(METADATA)
            .and_then(Value::as_str)
            .unwrap_or("{}");
        serde_json::from_str(raw).map_err(|e| store(format!("entry {:?}'s metadata: {e}", self.id)))
    }

    fn embedding(&self) -> Result<Option<Vec<f32>>, Error> {
        match self.metadata.get(EMBEDDING).and_then(Value::as_str) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| store(format!("entry {:?}'s embedding: {e}", self.id))),
        }
    }

    fn words(&self) -> u64 {
        self.metadata
            .get(WORDS)
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    fn bytes(&self) -> u64 {
        self.text().map_or(0, |t| t.len() as u64)
    }

    fn embedded(&self) -> bool {
        self.metadata.get(EMBEDDED).and_then(Value::as_bool) == Some(true)
    }

    fn hit(self, score: f64) -> Result<Hit, Error> {
        Ok(Hit {
            score,
            text: self.text()?.to_owned(),
            metadata: self.user_metadata()?,
            id: self.id,
        })
    }
}

/// A namespace's counts and settings, kept in its record's metadata.
#[derive(Clone, Debug, Default)]
struct Counts {
    words: u64,
    text_bytes: u64,
    dimension: Option<usize>,
    embedder: Option<String>,
    /// The index may be behind the record: set before a write and cleared after it only
    /// when it was clear before, so a write that failed midway leaves it set until the
    /// index is written again from the record ([`Memory::rebuild`]).
    behind: bool,
}

impl Counts {
    fn of(collection: &Value) -> Self {
        let m = &collection["metadata"];
        Self {
            words: m[WORDS].as_u64().unwrap_or(0),
            text_bytes: m[BYTES].as_u64().unwrap_or(0),
            dimension: m[DIMENSION].as_u64().map(|d| d as usize),
            embedder: m[EMBEDDER].as_str().map(str::to_owned),
            behind: m[BEHIND].as_bool() == Some(true),
        }
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert(WORDS.into(), json!(self.words));
        m.insert(BYTES.into(), json!(self.text_bytes));
        if let Some(d) = self.dimension {
            m.insert(DIMENSION.into(), json!(d));
        }
        if let Some(e) = &self.embedder {
            m.insert(EMBEDDER.into(), json!(e));
        }
        if self.behind {
            m.insert(BEHIND.into(), json!(true));
        }
        Value::Object(m)
    }
}

impl ChromaMemory {
    /// Connects to the server and checks that it answers and has the tenant and database.
    pub fn connect(mut options: ChromaOptions) -> Result<Self, Error> {
        if let (None, Some(var)) = (&options.token, &options.token_env) {
            options.token = Some(std::env::var(var).map_err(|_| {
                Error::Setting(format!("chroma token-env {var}: that variable is not set"))
            })?);
        }
        let prefix = &options.prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Setting(format!(
                "chroma prefix {prefix:?}: 1 to 64 letters, digits, `_` or `-`, beginning with a letter or digit"
            )));
        }
        for (what, name) in [("tenant", &options.tenant), ("database", &options.database)] {
            if name.is_empty()
                || name.len() > 128
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(Error::Setting(format!(
                    "chroma {what} {name:?}: 1 to 128 letters, digits, `_`, `-` or `.`"
                )));
            }
        }
        let url = options.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Setting(format!(
                "chroma at {url:?}: the URL must begin with http:// or https://"
            )));
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(store)?;
        let memory = Self {
            base: format!(
                "{url}/api/v2/tenants/{}/databases/{}",
                options.tenant, options.database
            ),
            client: crate::remote::Http::new(client),
            spaces: Mutex::new(HashMap::new()),
            writing: Mutex::new(()),
            options,
        };
        memory.call(
            reqwest::Method::GET,
            &format!("{url}/api/v2/heartbeat"),
            None,
        )?;
        if memory
            .call(reqwest::Method::GET, &memory.base.clone(), None)?
            .is_none()
        {
            return Err(store(format!(
                "no database {:?} of tenant {:?} at {url}: create it first",
                memory.options.database, memory.options.tenant
            )));
        }
        Ok(memory)
    }

    /// A request; `None` when the server answers 404.
    fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, Error> {
        let mut request = self.client.request(method, url);
        if let Some(token) = &self.options.token {
            request = request.header("x-chroma-token", token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let reply = request
            .send()
            .map_err(|e| store(format!("{}: {e}", self.options.url)))?;
        let status = reply.status();
        let mut bytes = Vec::new();
        reply
            .take(MAX_REPLY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| store(format!("reading an answer: {e}")))?;
        if bytes.len() as u64 > MAX_REPLY_BYTES {
            return Err(store(format!(
                "an answer of more than {MAX_REPLY_BYTES} bytes"
            )));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                store(format!(
                    "{status} with an answer that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ))
            })?
        };
        if !status.is_success() {
            let message = value["message"].as_str().unwrap_or("").to_owned();
            return Err(store(format!("{status}: {message}")));
        }
        Ok(Some(value))
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call(
            reqwest::Method::POST,
            &format!("{}/{path}", self.base),
            Some(body),
        )?
        .ok_or_else(|| store(format!("{path}: not found (was the collection deleted?)")))
    }

    fn name(&self, ns: &Namespace, kind: &str) -> String {
        format!("{}.{}.{kind}", self.options.prefix, encode(ns))
    }

    /// The collection `name`, if there is one.
    fn collection(&self, name: &str) -> Result<Option<Value>, Error> {
        self.call(
            reqwest::Method::GET,
            &format!("{}/collections/{name}", self.base),
            None,
        )
    }

    fn create(&self, name: &str, metadata: Option<Value>) -> Result<Value, Error> {
        let mut body = json!({
            "name": name,
            "get_or_create": true,
            "configuration": { "hnsw": { "space": "cosine" } },
        });
        if let Some(m) = metadata {
            body["metadata"] = m;
        }
        self.post("collections", &body)
    }

    /// `ns`'s collections; `None` when it was never written.
    fn space(&self, ns: &Namespace) -> Result<Option<Space>, Error> {
        // Cached once whole: a namespace without vectors yet may gain them from another
        // process, so its collections are looked for again.
        if let Some(space) = self.spaces().get(ns)
            && space.vecs.is_some()
        {
            return Ok(Some(space.clone()));
        }
        let Some(docs) = self.collection(&self.name(ns, "docs"))? else {
            return Ok(None);
        };
        let vecs = self
            .collection(&self.name(ns, "vecs"))?
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        let space = Space {
            docs: id_of(&docs)?,
            vecs,
        };
        self.spaces().insert(ns.clone(), space.clone());
        Ok(Some(space))
    }

    fn known(&self, ns: &Namespace) -> Result<Space, Error> {
        self.space(ns)?
            .ok_or_else(|| Error::UnknownNamespace(ns.to_string()))
    }

    fn spaces(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Space>> {
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self, ns: &Namespace) -> Result<Counts, Error> {
        let docs = self
            .collection(&self.name(ns, "docs"))?
            .ok_or_else(|| Error::UnknownNamespace(ns.to_string()))?;
        Ok(Counts::of(&docs))
    }

    /// Writes the namespace's counts. Chroma replaces a collection's metadata whole: a
    /// dimension or embedder recorded meanwhile (by another process) is kept, never
    /// written back as absent.
    fn set_counts(&self, ns: &Namespace, space: &Space, counts: &Counts) -> Result<(), Error> {
        let now = self.counts(ns)?;
        let counts = Counts {
            dimension: now.dimension.or(counts.dimension),
            embedder: now.embedder.or_else(|| counts.embedder.clone()),
            ..counts.clone()
        };
        self.call(
            reqwest::Method::PUT,
            &format!("{}/collections/{}", self.base, space.docs),
            Some(&json!({ "new_metadata": counts.json() })),
        )?
        .ok_or_else(|| store("the namespace's record went while it was written"))?;
        Ok(())
    }

    fn count(&self, collection: &str) -> Result<u64, Error> {
        let n = self
            .call(
                reqwest::Method::GET,
                &format!("{}/collections/{collection}/count", self.base),
                None,
            )?
            .ok_or_else(|| store("the namespace's record went while it was read"))?;
        n.as_u64().ok_or_else(|| store(format!("a count of {n}")))
    }

    /// Entries of the record by id (include their metadata).
    fn entries(&self, space: &Space, ids: &[String]) -> Result<Vec<Entry>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE) {
            let got = self.post(
                &format!("collections/{}/get", space.docs),
                &json!({ "ids": chunk, "include": ["metadatas"] }),
            )?;
            out.extend(entries_of(&got)?);
        }
        Ok(out)
    }

    /// Every entry of collection `id` matching `clause` and `document`, page by page, with
    /// what `include` asks; `f` sees each page. At most [`MAX_SCANNED`] entries are read: a
    /// scan that would read more is refused.
    fn scan(
        &self,
        collection: &str,
        clause: Option<&Value>,
        document: Option<&Value>,
        include: &[&str],
        page: usize,
        f: impl FnMut(&Value) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        self.scan_up_to(collection, clause, document, include, page, MAX_SCANNED, f)
    }

    /// [`Self::scan`] refusing past `cap` entries instead (`usize::MAX`: never, for a
    /// rebuild, which must read everything and keeps only ids).
    #[allow(clippy::too_many_arguments)]
    fn scan_up_to(
        &self,
        collection: &str,
        clause: Option<&Value>,
        document: Option<&Value>,
        include: &[&str],
        page: usize,
        cap: usize,
        mut f: impl FnMut(&Value) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        let mut offset = 0;
        loop {
            let mut body = json!({ "include": include, "limit": page, "offset": offset });
            if let Some(c) = clause {
                body["where"] = c.clone();
            }
            if let Some(d) = document {
                body["where_document"] = d.clone();
            }
            let got = self.post(&format!("collections/{collection}/get"), &body)?;
            let n = got["ids"].as_array().map_or(0, Vec::len);
            f(&got)?;
            offset += n;
            if n < page {
                return Ok(offset);
            }
            if offset > cap {
                return Err(Error::Query(format!(
                    "the search would read more than {MAX_SCANNED} documents of the namespace in Chroma: narrow it (rarer words, a filter)"
                )));
            }
        }
    }

    fn upsert(
        &self,
        collection: &str,
        rows: Vec<(String, Vec<f32>, String, Value)>,
    ) -> Result<(), Error> {
        let mut batch: Vec<(String, Vec<f32>, String, Value)> = Vec::new();
        let mut bytes = 0;
        let flush = |batch: &mut Vec<(String, Vec<f32>, String, Value)>| -> Result<(), Error> {
            if batch.is_empty() {
                return Ok(());
            }
            let (mut ids, mut embeddings, mut documents, mut metadatas) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, e, d, m) in batch.drain(..) {
                ids.push(id);
                embeddings.push(e);
                documents.push(d);
                metadatas.push(m);
            }
            self.post(
                &format!("collections/{collection}/upsert"),
                &json!({ "ids": ids, "embeddings": embeddings, "documents": documents, "metadatas": metadatas }),
            )?;
            Ok(())
        };
        for row in rows {
            bytes += row.0.len() + row.2.len() + row.3.to_string().len() + 4 * row.1.len();
            batch.push(row);
            if batch.len() >= WRITE_BATCH || bytes >= WRITE_BYTES {
                flush(&mut batch)?;
                bytes = 0;
            }
        }
        flush(&mut batch)
    }

    fn remove(&self, collection: &str, ids: &[String]) -> Result<(), Error> {
        for chunk in ids.chunks(WRITE_BATCH) {
            self.post(
                &format!("collections/{collection}/delete"),
                &json!({ "ids": chunk }),
            )?;
        }
        Ok(())
    }

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
        let space = match self.space(ns)? {
            Some(s) => s,
            None => {
                let docs = self.create(&self.name(ns, "docs"), Some(Counts::default().json()))?;
                let space = Space {
                    docs: id_of(&docs)?,
                    vecs: None,
                };
                self.spaces().insert(ns.clone(), space.clone());
                space
            }
        };
        let mut counts = self.counts(ns)?;
        let had_vectors = counts.dimension.is_some();
        let first = documents.iter().position(|d| d.embedding.is_some());
        if let Some(index) = first {
            let got = documents[index].embedding.as_ref().map_or(0, Vec::len);
            match counts.dimension {
                Some(expected) if expected != got => {
                    return Err(Error::Dimension {
                        namespace: ns.to_string(),
                        index,
                        expected,
                        got,
                    });
                }
                Some(_) => {}
                None => {
                    counts.dimension = Some(got);
                    // As one store does: the embedder is recorded with the first vectors.
                    counts.embedder = embedder.map(str::to_owned);
                    // Recorded before any entry is written: a write that fails midway still
                    // leaves the namespace's dimension for the next one to be checked by.
                    self.set_counts(ns, &space, &counts)?;
                }
            }
            if let (Some(got), Some(holds)) = (embedder, &counts.embedder)
                && got != holds
            {
                return Err(Error::Mixed {
                    namespace: ns.to_string(),
                    holds: holds.clone(),
                    got: got.to_owned(),
                });
            }
        }
        // Marked behind with the counts as they stand: a put that fails after it has changed
        // nothing they count.
        let marked = Counts {
            behind: true,
            ..counts.clone()
        };
        // The ids of a batch may repeat: the last is kept, as one store keeps it.
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, d) in documents.iter().enumerate() {
            last.insert(d.id.clone(), i);
        }
        let ids: Vec<String> = documents
            .iter()
            .enumerate()
            .filter(|(i, d)| last[d.id.as_str()] == *i)
            .map(|(_, d)| d.id.clone())
            .collect();
        let old = self.entries(&space, &ids)?;
        for e in &old {
            counts.words = counts.words.saturating_sub(e.words());
            counts.text_bytes = counts.text_bytes.saturating_sub(e.bytes());
        }
        // Chroma merges an entry's metadata with what was there: the old entry's keys the
        // new one lacks are written as null, which removes them.
        let mut gone: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for e in &old {
            let user: Vec<String> = e.user_metadata()?.keys().cloned().collect();
            gone.insert(e.id.clone(), (e.metadata.keys().cloned().collect(), user));
        }
        let mut record = Vec::with_capacity(ids.len());
        let mut index = Vec::new();
        let mut unindexed: Vec<String> = old
            .iter()
            .filter(|e| e.embedded())
            .map(|e| e.id.clone())
            .collect();
        for (i, d) in documents.into_iter().enumerate() {
            if last[d.id.as_str()] != i {
                continue;
            }
            let spaced = spaced(&d.text);
            let n = words(&d.text).count() as u64;
            counts.words += n;
            counts.text_bytes += d.text.len() as u64;
            let user = serde_json::to_string(&d.metadata).map_err(store)?;
            let (old_keys, old_user) = gone.remove(&d.id).unwrap_or_default();
            let mut m = d.metadata.clone();
            m.insert(TEXT.into(), json!(d.text));
            m.insert(METADATA.into(), json!(user));
            m.insert(WORDS.into(), json!(n));
            m.insert(EMBEDDED.into(), json!(d.embedding.is_some()));
            if let Some(e) = &d.embedding {
                m.insert(
                    EMBEDDING.into(),
                    json!(serde_json::to_string(e).map_err(store)?),
                );
                unindexed.retain(|id| *id != d.id);
                let mut flat = d.metadata.clone();
                for key in old_user {
                    flat.entry(key).or_insert(Value::Null);
                }
                index.push((d.id.clone(), e.clone(), String::new(), Value::Object(flat)));
            }
            for key in old_keys {
                m.entry(key).or_insert(Value::Null);
            }
            record.push((d.id, vec![1.0], spaced, Value::Object(m)));
        }
        // The record first: the index only proposes candidates, each checked against it.
        // Marked behind until both are written, and after if it was, or the index is new.
        self.set_counts(ns, &space, &marked)?;
        self.upsert(&space.docs, record)?;
        if !index.is_empty() || !unindexed.is_empty() {
            let vecs = match self.index_of(ns)? {
                Some(v) => v,
                None => {
                    // Vectors stored before, and no index to hold them (deleted outside
                    // colony, a removal that stopped halfway): the one made now holds only
                    // this batch, so the namespace stays behind until a rebuild.
                    counts.behind |= had_vectors;
                    id_of(&self.create(&self.name(ns, "vecs"), None)?)?
                }
            };
            self.upsert(&vecs, index)?;
            self.remove(&vecs, &unindexed)?;
        }
        self.set_counts(ns, &space, &counts)
    }

    /// `ns`'s index collection, looked up by name rather than from the cache (it may have
    /// been deleted meanwhile), the cache brought up to date; `None` when there is none.
    fn index_of(&self, ns: &Namespace) -> Result<Option<String>, Error> {
        let vecs = self
            .collection(&self.name(ns, "vecs"))?
            .map(|v| id_of(&v))
            .transpose()?;
        if let Some(cached) = self.spaces().get_mut(ns) {
            cached.vecs = vecs.clone();
        }
        Ok(vecs)
    }

    /// `ns`'s statistics for `words`, counted by Chroma.
    fn stats_of(
        &self,
        ns: &Namespace,
        space: &Space,
        words: &[String],
    ) -> Result<TextStats, Error> {
        let counts = self.counts(ns)?;
        let documents = self.count(&space.docs)?;
        let mut df = Vec::with_capacity(words.len());
        for w in words {
            let contains = json!({ "$contains": format!(" {w} ") });
            // Ids only, in one request: paging by offset costs Chroma a pass over the
            // matches for every page.
            df.push(self.scan(
                &space.docs,
                None,
                Some(&contains),
                &[],
                MAX_SCANNED + 1,
                |_| Ok(()),
            )? as u64);
        }
        Ok(TextStats {
            documents,
            words: counts.words,
            df,
        })
    }

    fn text_ranked(
        &self,
        ns: &Namespace,
        space: &Space,
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
        let own;
        let stats = match stats {
            Some(s) => s,
            None => {
                own = self.stats_of(ns, space, &words)?;
                &own
            }
        };
        let bm25 = Bm25::new(&words, stats);
        let contains: Vec<Value> = words
            .iter()
            .map(|w| json!({ "$contains": format!(" {w} ") }))
            .collect();
        let document = if contains.len() == 1 {
            contains[0].clone()
        } else {
            json!({ "$or": contains })
        };
        let (clause, whole) = pushed(filter, Vec::new());
        let include: &[&str] = if whole {
            &["documents"]
        } else {
            &["documents", "metadatas"]
        };
        let mut top = TopK::new(k);
        self.scan(
            &space.docs,
            clause.as_ref(),
            Some(&document),
            include,
            PAGE,
            |page| {
                let ids = page["ids"].as_array().cloned().unwrap_or_default();
                let docs = page["documents"].as_array().cloned().unwrap_or_default();
                for (i, id) in ids.iter().enumerate() {
                    let id = id.as_str().unwrap_or_default();
                    if !whole {
                        let entry = Entry {
                            id: id.to_owned(),
                            metadata: page["metadatas"][i]
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        };
                        if !matches(&entry.user_metadata()?, filter) {
                            continue;
                        }
                    }
                    let spaced = docs.get(i).and_then(Value::as_str).unwrap_or("");
                    let score = bm25.score(
                        spaced
                            .split(' ')
                            .filter(|w| !w.is_empty())
                            .map(str::to_owned),
                    );
                    if score > 0.0 && top.admits(score) {
                        top.offer(score, id.to_owned(), ());
                    }
                }
                Ok(())
            },
        )?;
        self.hits(
            space,
            top.into_sorted()
                .into_iter()
                .map(|(s, id, ())| (s, id))
                .collect(),
        )
    }

    /// The hits of `(score, id)`s, in their order, read from the record.
    fn hits(&self, space: &Space, best: Vec<(f64, String)>) -> Result<Vec<Hit>, Error> {
        let ids: Vec<String> = best.iter().map(|(_, id)| id.clone()).collect();
        let mut found: HashMap<String, Entry> = self
            .entries(space, &ids)?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        best.into_iter()
            .filter_map(|(score, id)| found.remove(&id).map(|e| e.hit(score)))
            .collect()
    }

    fn vector_ranked(
        &self,
        ns: &Namespace,
        space: &Space,
        vector: &[f32],
        filter: &Metadata,
        k: usize,
        exact: bool,
    ) -> Result<Vec<Hit>, Error> {
        let counts = self.counts(ns)?;
        match counts.dimension {
            None => return Ok(Vec::new()),
            Some(d) if d != vector.len() => {
                return Err(Error::Query(format!(
                    "the query's vector has {} dimensions, and namespace {ns} holds {d}",
                    vector.len()
                )));
            }
            Some(_) => {}
        }
        let exact = exact
            || !filter.is_empty()
            || space.vecs.is_none()
            || self.count(&space.docs)? <= self.options.exact_up_to as u64;
        if !exact
            && let Some(vecs) = &space.vecs
            && let Some(hits) = self.approximate(space, vecs, vector, k)?
        {
            return Ok(hits);
        }
        // Read through the index only when it is known to hold the record's vectors.
        if !counts.behind
            && let Some(vecs) = &space.vecs
            && let Some(hits) = self.exact_from_index(space, vecs, vector, filter, k)?
        {
            return Ok(hits);
        }
        // Every embedding of the record the filter lets through, scored here.
        let (clause, _) = pushed(filter, vec![json!({ EMBEDDED: { "$eq": true } })]);
        let mut top = TopK::new(k);
        self.scan(
            &space.docs,
            clause.as_ref(),
            None,
            &["metadatas"],
            PAGE,
            |page| {
                for entry in entries_of(page)? {
                    if !matches(&entry.user_metadata()?, filter) {
                        continue;
                    }
                    if let Some(e) = entry.embedding()?
                        && e.len() == vector.len()
                    {
                        let score = cosine(vector, &e);
                        if top.admits(score) {
                            top.offer(score, entry.id, ());
                        }
                    }
                }
                Ok(())
            },
        )?;
        self.hits(
            space,
            top.into_sorted()
                .into_iter()
                .map(|(s, id, ())| (s, id))
                .collect(),
        )
    }

    /// The best `k` by every vector of the index the filter lets through (read in pages of
    /// 1,000: vectors only, a few MB a page, where the record's pages carry whole texts), the
    /// best of them scored again from the record and checked against its metadata; `None`
    /// when fewer than `k` of those survive while the index proposed more (then the record
    /// is read). Used only while the namespace is not marked behind.
    fn exact_from_index(
        &self,
        space: &Space,
        vecs: &str,
        vector: &[f32],
        filter: &Metadata,
        k: usize,
    ) -> Result<Option<Vec<Hit>>, Error> {
        let (clause, _) = pushed(filter, Vec::new());
        let wanted = k + (k / 2).max(8);
        let mut top = TopK::new(wanted);
        let scanned = self.scan(
            vecs,
            clause.as_ref(),
            None,
            &["embeddings", "metadatas"],
            VEC_PAGE,
            |page| {
                for (i, id) in page["ids"].as_array().into_iter().flatten().enumerate() {
                    let Some(e) = page["embeddings"][i].as_array() else {
                        continue;
                    };
                    let e: Vec<f32> = e
                        .iter()
                        .filter_map(|x| x.as_f64())
                        .map(|x| x as f32)
                        .collect();
                    if e.len() != vector.len() {
                        continue;
                    }
                    let flat = page["metadatas"][i]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    if !matches(&flat, filter) {
                        continue;
                    }
                    let score = cosine(vector, &e);
                    if top.admits(score) {
                        top.offer(score, id.as_str().unwrap_or_default().to_owned(), ());
                    }
                }
                Ok(())
            },
        )?;
        let ids: Vec<String> = top
            .into_sorted()
            .into_iter()
            .map(|(_, id, ())| id)
            .collect();
        let proposed = ids.len();
        let best = self.rescored(space, &ids, vector, filter, k)?;
        if best.len() < k && best.len() < proposed.min(scanned) {
            return Ok(None);
        }
        Ok(Some(best))
    }

    /// The best `k` of the documents `ids`, read from the record: those still embedded with
    /// the query's dimension and passing `filter`, scored exactly.
    fn rescored(
        &self,
        space: &Space,
        ids: &[String],
        vector: &[f32],
        filter: &Metadata,
        k: usize,
    ) -> Result<Vec<Hit>, Error> {
        let mut best = TopK::new(k);
        for entry in self.entries(space, ids)? {
            if !matches(&entry.user_metadata()?, filter) {
                continue;
            }
            if let Some(e) = entry.embedding()?
                && e.len() == vector.len()
            {
                best.offer(cosine(vector, &e), entry.id.clone(), entry.metadata);
            }
        }
        best.into_sorted()
            .into_iter()
            .map(|(score, id, metadata)| Entry { id, metadata }.hit(score))
            .collect()
    }

    /// The best `k` of the graph's candidates, scored exactly from the record; `None` when
    /// fewer than `k` of them are still embedded documents.
    fn approximate(
        &self,
        space: &Space,
        vecs: &str,
        vector: &[f32],
        k: usize,
    ) -> Result<Option<Vec<Hit>>, Error> {
        let got = self.post(
            &format!("collections/{vecs}/query"),
            &json!({ "query_embeddings": [vector], "n_results": k + (k / 2).max(8), "include": [] }),
        )?;
        let ids: Vec<String> = got["ids"][0]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let best = self.rescored(space, &ids, vector, &Metadata::new(), k)?;
        Ok((best.len() == k).then_some(best))
    }
}

fn id_of(collection: &Value) -> Result<String, Error> {
    collection["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| store(format!("a collection without an id: {collection}")))
}

fn entries_of(got: &Value) -> Result<Vec<Entry>, Error> {
    let ids = got["ids"].as_array().cloned().unwrap_or_default();
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| {
            Ok(Entry {
                id: id
                    .as_str()
                    .ok_or_else(|| store(format!("an id of {id}")))?
                    .to_owned(),
                metadata: got["metadatas"][i].as_object().cloned().unwrap_or_default(),
            })
        })
        .collect()
}

impl Memory for ChromaMemory {
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
        let space = self.known(ns)?;
        self.entries(&space, &[id.to_owned()])?
            .into_iter()
            .next()
            .map(Entry::document)
            .transpose()
    }

    fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64, Error> {
        let space = self.known(ns)?;
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        let old = self.entries(&space, &unique)?;
        if old.is_empty() {
            return Ok(0);
        }
        let mut counts = self.counts(ns)?;
        // Marked with the counts as they stand: a delete that fails has changed nothing they
        // count.
        let marked = Counts {
            behind: true,
            ..counts.clone()
        };
        for e in &old {
            counts.words = counts.words.saturating_sub(e.words());
            counts.text_bytes = counts.text_bytes.saturating_sub(e.bytes());
        }
        let gone: Vec<String> = old.iter().map(|e| e.id.clone()).collect();
        self.set_counts(ns, &space, &marked)?;
        self.remove(&space.docs, &gone)?;
        let indexed: Vec<String> = old
            .iter()
            .filter(|e| e.embedded())
            .map(|e| e.id.clone())
            .collect();
        if !indexed.is_empty() {
            match self.index_of(ns)? {
                Some(vecs) => self.remove(&vecs, &indexed)?,
                // Embedded documents and no index: it went outside colony.
                None => counts.behind = true,
            }
        }
        self.set_counts(ns, &space, &counts)?;
        Ok(gone.len() as u64)
    }

    fn search_scored(
        &self,
        ns: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, Error> {
        query.check()?;
        let space = self.known(ns)?;
        if let (Some(got), Some(_)) = (&query.embedder, &query.vector)
            && let Some(holds) = self.counts(ns)?.embedder
            && &holds != got
        {
            return Err(Error::Mixed {
                namespace: ns.to_string(),
                holds,
                got: got.clone(),
            });
        }
        let k = query.k;
        match (&query.text, &query.vector) {
            (Some(text), None) => self.text_ranked(ns, &space, text, stats, &query.filter, k),
            (None, Some(vector)) => {
                self.vector_ranked(ns, &space, vector, &query.filter, k, query.exact)
            }
            (Some(text), Some(vector)) => {
                let depth = hybrid_depth(k);
                let by_text = self.text_ranked(ns, &space, text, stats, &query.filter, depth)?;
                let by_vector =
                    self.vector_ranked(ns, &space, vector, &query.filter, depth, true)?;
                Ok(hybrid(by_text, by_vector, k))
            }
            (None, None) => Err(Error::Query("a query needs text, a vector or both".into())),
        }
    }

    /// Writes the namespace's index again from its record: every embedded document's
    /// vector and metadata, and no other; then the index is no longer marked behind.
    fn rebuild(&self, ns: &Namespace) -> Result<crate::Rebuilt, Error> {
        let started = std::time::Instant::now();
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up afresh: a cached index may have been deleted.
        self.spaces().remove(ns);
        let space = self.known(ns)?;
        let mut points = 0;
        if let Some(dimension) = self.counts(ns)?.dimension {
            let vecs = match &space.vecs {
                Some(v) => v.clone(),
                None => id_of(&self.create(&self.name(ns, "vecs"), None)?)?,
            };
            self.spaces().remove(ns);
            // Page by page, the whole record however large: each page's vectors written
            // with their metadata, the keys the index held that the record no longer has as
            // null (Chroma merges an entry's metadata). Only the ids are kept.
            let mut wanted = std::collections::HashSet::new();
            self.scan_up_to(
                &space.docs,
                Some(&json!({ EMBEDDED: { "$eq": true } })),
                None,
                &["metadatas"],
                PAGE,
                usize::MAX,
                |page| {
                    let mut rows = Vec::new();
                    for e in entries_of(page)? {
                        if let Some(v) = e.embedding()?
                            && v.len() == dimension
                        {
                            wanted.insert(e.id.clone());
                            rows.push((e.id.clone(), v, String::new(), e.user_metadata()?));
                        }
                    }
                    let ids: Vec<&String> = rows.iter().map(|r| &r.0).collect();
                    let held: HashMap<String, Map<String, Value>> = entries_of(&self.post(
                        &format!("collections/{vecs}/get"),
                        &json!({ "ids": ids, "include": ["metadatas"] }),
                    )?)?
                    .into_iter()
                    .map(|e| (e.id, e.metadata))
                    .collect();
                    let rows = rows
                        .into_iter()
                        .map(|(id, v, d, mut m)| {
                            for key in held.get(&id).into_iter().flat_map(|h| h.keys()) {
                                m.entry(key.clone()).or_insert(Value::Null);
                            }
                            (id, v, d, Value::Object(m))
                        })
                        .collect();
                    self.upsert(&vecs, rows)
                },
            )?;
            points = wanted.len();
            // The index's own entries whose documents are gone or not embedded any more.
            let mut extra = Vec::new();
            self.scan_up_to(&vecs, None, None, &[], ID_PAGE, usize::MAX, |page| {
                for id in page["ids"].as_array().into_iter().flatten() {
                    if let Some(id) = id.as_str()
                        && !wanted.contains(id)
                    {
                        extra.push(id.to_owned());
                    }
                }
                Ok(())
            })?;
            self.remove(&vecs, &extra)?;
        }
        // Cleared on the counts as they are now, with or without vectors.
        let now = self.counts(ns)?;
        self.set_counts(
            ns,
            &space,
            &Counts {
                behind: false,
                ..now
            },
        )?;
        Ok(crate::Rebuilt {
            points,
            took: started.elapsed(),
        })
    }

    fn text_stats(&self, ns: &Namespace, words: &[String]) -> Result<TextStats, Error> {
        match self.space(ns)? {
            Some(space) => self.stats_of(ns, &space, words),
            None => Ok(TextStats {
                df: vec![0; words.len()],
                ..TextStats::default()
            }),
        }
    }

    fn stats(&self, ns: &Namespace) -> Result<Stats, Error> {
        let space = self.known(ns)?;
        let counts = self.counts(ns)?;
        Ok(Stats {
            documents: self.count(&space.docs)?,
            dimension: counts.dimension,
            text_bytes: counts.text_bytes,
            embedder: counts.embedder,
        })
    }

    fn namespaces(&self) -> Result<Vec<Namespace>, Error> {
        let start = format!("{}.", self.options.prefix);
        let mut out: Vec<Namespace> = self
            .collection_names()?
            .iter()
            .filter_map(|name| {
                name.strip_prefix(&start)
                    .and_then(|n| n.strip_suffix(".docs"))
                    .and_then(decode)
                    // Only names this store makes: another program's collection is not a
                    // namespace.
                    .filter(|ns| *name == self.name(ns, "docs"))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl ChromaMemory {
    /// Deletes namespace `ns`, both its collections, with every document; whether it was
    /// there.
    pub fn remove_namespace(&self, ns: &Namespace) -> Result<bool, Error> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.spaces().remove(ns);
        let mut was = false;
        for kind in ["vecs", "docs"] {
            was |= self
                .call(
                    reqwest::Method::DELETE,
                    &format!("{}/collections/{}", self.base, self.name(ns, kind)),
                    None,
                )?
                .is_some();
        }
        Ok(was)
    }

    /// The names of every collection of the database (at most [`MAX_SCANNED`]).
    pub fn collection_names(&self) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .call(
                    reqwest::Method::GET,
                    &format!("{}/collections?limit={ID_PAGE}&offset={offset}", self.base),
                    None,
                )?
                .ok_or_else(|| store("the database went while its collections were listed"))?;
            let names = page.as_array().cloned().unwrap_or_default();
            out.extend(
                names
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned)),
            );
            offset += names.len();
            // A short page is the last; a server that ignored the offset is not followed
            // for ever.
            if names.len() < ID_PAGE || offset >= MAX_SCANNED {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_namespaces_never_meet_and_come_back() {
        let names = ["a/b", "a_sb", "a.b", "a_db", "a__b", "x..y", "run/1_2.3-4"];
        let encoded: Vec<String> = names
            .iter()
            .map(|n| encode(&Namespace::parse(n).unwrap()))
            .collect();
        for (n, e) in names.iter().zip(&encoded) {
            assert_eq!(decode(e).unwrap().as_str(), *n);
            assert!(!e.contains('.') && !e.contains('/'), "{e}");
        }
        let mut unique = encoded.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(decode("a_x").is_none());
    }

    #[test]
    fn a_filter_matches_values_of_its_own_type() {
        let m: Metadata =
            serde_json::from_value(json!({"a": 1, "b": true, "c": "1", "d": 2.0})).unwrap();
        let f = |v: Value| -> Metadata { serde_json::from_value(v).unwrap() };
        assert!(matches(&m, &f(json!({"a": 1.0}))));
        assert!(matches(&m, &f(json!({"d": 2}))));
        assert!(!matches(&m, &f(json!({"b": 1}))));
        assert!(!matches(&m, &f(json!({"c": 1}))));
        assert!(!matches(&m, &f(json!({"z": 1}))));
        let (clause, whole) = pushed(&f(json!({"c": "1", "a": 1})), Vec::new());
        assert!(!whole);
        assert_eq!(clause, Some(json!({"c": {"$eq": "1"}})));
        assert_eq!(spaced("Restart, the agent!"), " restart the agent ");
    }
}
