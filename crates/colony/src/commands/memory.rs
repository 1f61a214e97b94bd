//! `colony memory`: the agents' shared memory in a SQLite file (or spread over several, or
//! on a ChromaDB server): put, get, delete, search, stats, rebuild. Embeddings, when asked for, are lexical by default
//! (`colony_memory::Lexical`): they find the same words and spellings, not the same meaning,
//! and need no model; with `--embedder-url` and `--embedder-model` they come from an
//! OpenAI-compatible endpoint (`colony_memory::Remote`).

use crate::Failure;
use colony_memory::{
    ChromaOptions, Document, Embedder, Error, Lexical, MAX_BATCH, MAX_TEXT_BYTES, Memory, Metadata,
    Namespace, Opening, Place, Query, Remote, RemoteOptions,
};
use serde_json::Value;
use std::{
    io::{BufRead, Read},
    path::{Path, PathBuf},
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Store a document (replacing one of the same id), or a file of them, one JSON per line.
    Put(PutArgs),
    /// Print a document as JSON.
    Get(GetArgs),
    /// Delete documents by id.
    Delete(DeleteArgs),
    /// Find documents by their words, by lexical nearness to a text, or both.
    Search(SearchArgs),
    /// What a memory holds: each namespace's documents, embedding dimension and text bytes.
    Stats(StatsArgs),
    /// Build a namespace's approximate (HNSW) index from the file and check it: its
    /// recall@k against exact search, for stored embeddings taken as queries. The index
    /// lives in the process that searches (`colony serve --memory` builds its own, or
    /// `POST /v1/memory/rebuild`): this proves one can be rebuilt from the file alone, and
    /// how well it finds. With --chroma, writes a Chroma memory's index again from its
    /// record (stop its writers first; --queries, -k and --min-recall are for a file).
    Rebuild(RebuildArgs),
    /// Compact a memory in NATS (--db nats://HOST:PORT/NAME): its whole state written as a
    /// snapshot after its last write, and every message before the snapshot purged, so
    /// that a process opening it replays the snapshot, not every write ever made. Other
    /// processes may go on writing; one cut off from NATS meanwhile reopens it.
    Compact(CompactArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CompactArgs {
    /// The memory in NATS: nats://HOST:PORT/NAME (several servers comma-separated).
    #[arg(long, value_name = "LOCATION")]
    db: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    at: Where,
    /// Stored embeddings searched both ways, spread over the namespace (0: build only).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    queries: u32,
    /// Documents found per search.
    #[arg(long, short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=colony_memory::MAX_K as i64))]
    k: u32,
    /// Exit 1 when the recall is under this (0 to 1).
    #[arg(long, value_parser = crate::flags::Float::new(0.0, 1.0))]
    min_recall: Option<f64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Where {
    #[command(flatten)]
    store: StoreArgs,
    /// The namespace: segments of letters, digits, `.`, `_`, `-`, joined by `/`.
    #[arg(long, short = 'n', default_value = "shared", value_name = "NAME")]
    namespace: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    at: Where,
    /// The document's id (with TEXT).
    #[arg(requires = "text", conflicts_with = "jsonl")]
    id: Option<String>,
    /// The document's text.
    text: Option<String>,
    /// A metadata field of the document: KEY=VALUE (a number, true or false, else text).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    meta: Vec<(String, Value)>,
    /// Documents from this file instead, one JSON object per line:
    /// {"id", "text", "metadata"?, "embedding"?}.
    #[arg(long, value_name = "PATH", required_unless_present = "id")]
    jsonl: Option<PathBuf>,
    /// Give each document without an embedding one: lexical, or from --embedder-url.
    #[arg(long)]
    embed: bool,
    /// Dimensions of the embeddings made: the lexical ones', or the endpoint model's.
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..=colony_memory::MAX_DIMENSION as i64))]
    dimension: u32,
    #[command(flatten)]
    embedder: EmbedderArgs,
}

/// An OpenAI-compatible embedding endpoint instead of lexical embeddings.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedderArgs {
    /// The endpoint's base URL (`/embeddings` is added), e.g. https://api.openai.com/v1.
    #[arg(long, value_name = "URL", requires = "embedder_model")]
    embedder_url: Option<String>,
    /// The model the endpoint embeds with; --dimension must be its dimension.
    #[arg(long, value_name = "MODEL", requires = "embedder_url")]
    embedder_model: Option<String>,
    /// The environment variable that holds the endpoint's API key.
    #[arg(long, value_name = "VAR", requires = "embedder_url")]
    embedder_key_env: Option<String>,
}

impl EmbedderArgs {
    /// The embedder asked for: the endpoint's, else lexical, of `dimension` values.
    fn embedder(&self, dimension: u32) -> Result<Box<dyn Embedder>, Failure> {
        let (Some(url), Some(model)) = (&self.embedder_url, &self.embedder_model) else {
            return Ok(Box::new(Lexical::new(dimension as usize).map_err(failure)?));
        };
        let mut options = RemoteOptions::new(url, model, dimension as usize);
        if let Some(var) = &self.embedder_key_env {
            let key = std::env::var(var).map_err(|_| {
                Failure::input(anyhow::anyhow!(
                    "--embedder-key-env {var}: that variable is not set (or not UTF-8)"
                ))
            })?;
            options.api_key = Some(key);
        }
        Ok(Box::new(Remote::new(options).map_err(failure)?))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    at: Where,
    /// The document's id.
    id: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    at: Where,
    /// Ids of the documents to delete.
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["text", "near"])))]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    at: Where,
    /// Documents with these words (full-text, ranked by BM25).
    #[arg(long, value_name = "TEXT")]
    text: Option<String>,
    /// Documents whose embedding is nearest this text's (lexical, or --embedder-url's); with --text, the
    /// two rankings fused.
    #[arg(long, value_name = "TEXT")]
    near: Option<String>,
    /// Documents found, at most.
    #[arg(long, short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=colony_memory::MAX_K as i64))]
    k: u32,
    /// Only documents with this metadata field: KEY=VALUE.
    #[arg(long = "where", value_name = "KEY=VALUE", value_parser = key_value)]
    filter: Vec<(String, Value)>,
    /// Dimensions of the embedding of --near: the namespace's.
    #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..=colony_memory::MAX_DIMENSION as i64))]
    dimension: u32,
    /// Embed --near as the namespace's documents were embedded, by an endpoint.
    #[command(flatten)]
    embedder: EmbedderArgs,
    /// Print the hits as JSON.
    #[arg(long)]
    json: bool,
}

/// Where the memory is: a SQLite file, or a ChromaDB server; spread over several or not.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The memory's SQLite file (`put` creates it). With --shards N, the files PATH.1-of-N
    /// to PATH.N-of-N. Or a memory in NATS JetStream, shared by every process that opens it:
    /// nats://HOST:PORT/NAME (several servers comma-separated; ?replicas=1 for a single one).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "chroma",
        conflicts_with = "chroma"
    )]
    db: Option<PathBuf>,
    /// A ChromaDB server instead (its HTTP v2 API): http://HOST:PORT, with
    /// ?tenant=T&database=D&prefix=P&token-env=VAR as needed (default_tenant,
    /// default_database, colony; the token, if any, read from that variable).
    #[arg(long, value_name = "URL")]
    chroma: Option<String>,
    /// Spread the memory over N stores, each document in the one its id hashes to; searches
    /// ask all of them and give what one store would. Always the same N for one memory.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=colony_memory::MAX_SHARDS as i64))]
    shards: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Longest line of a JSON-lines file: a document of the most text, all of it escaped
/// (`\uXXXX`, six bytes a byte), the largest embedding written out, and its metadata.
const MAX_LINE: u64 =
    6 * MAX_TEXT_BYTES as u64 + 32 * colony_memory::MAX_DIMENSION as u64 + 256 * 1024;
/// Bytes of documents held before a batch of a JSON-lines file is stored.
const BATCH_BYTES: usize = 64 << 20;

/// `KEY=VALUE`, the value a number or a boolean when it reads as one, else text.
fn key_value(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    let value = match serde_json::from_str::<Value>(value) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(value.to_owned()),
    };
    Ok((key.to_owned(), value))
}

/// Bad input is the caller's to fix (exit 2); a store that fails is the work failing.
fn failure(e: Error) -> Failure {
    match e {
        Error::Store(_) | Error::Embedder(_) => Failure::work(e),
        _ => Failure::input(e),
    }
}

/// The memory `at` says, which must exist unless `create`.
fn open(at: &StoreArgs, create: bool) -> Result<Box<dyn Memory>, Failure> {
    // One command, then the process ends: an approximate index built for a single search
    // would cost more than the exact search it replaces.
    open_memory(
        at.db.as_deref(),
        at.chroma.as_deref(),
        at.shards as usize,
        create,
        false,
        ("--db", "--chroma"),
    )
}

/// The memory in file `db`, or on the Chroma server of `chroma`, spread over `n` stores;
/// files must exist unless `create`; approximate indexes are built when `approximate`.
/// Also `colony serve`'s; errors are said of the flags `names` (the file's, the server's).
pub(crate) fn open_memory(
    db: Option<&Path>,
    chroma: Option<&str>,
    n: usize,
    create: bool,
    approximate: bool,
    names: (&str, &str),
) -> Result<Box<dyn Memory>, Failure> {
    let (place, flag) = match (chroma, db) {
        (Some(url), _) => (
            Place::Chroma(ChromaOptions::from_url(url).map_err(|e| named(names.1, e))?),
            names.1,
        ),
        (None, Some(db)) if super::in_nats(db).is_some() => {
            let location = super::in_nats(db).unwrap_or_default();
            return open_in_nats(location, n, create, approximate, names.0);
        }
        (None, Some(db)) => (Place::File(db.to_owned()), names.0),
        (None, None) => {
            return Err(Failure::input(anyhow::anyhow!(
                "give --db PATH or --chroma URL"
            )));
        }
    };
    colony_memory::open(&Opening {
        place,
        shards: n,
        create,
        approximate,
    })
    .map_err(|e| named(flag, e))
}

/// The memory in NATS at `location` (`nats://HOST:PORT/NAME`), named by `flag`: one stream,
/// never spread over several.
fn open_in_nats(
    location: &str,
    n: usize,
    create: bool,
    approximate: bool,
    flag: &str,
) -> Result<Box<dyn Memory>, Failure> {
    if n != 1 {
        return Err(Failure::input(anyhow::anyhow!(
            "{flag}: a memory in NATS is one stream, replicated by its servers: it is not spread over {n} stores"
        )));
    }
    let refused = |e: colony_cluster::Error| match e {
        colony_cluster::Error::Settings(_) => Failure::input(e),
        e => Failure::work(anyhow::Error::new(e).context(flag.to_owned())),
    };
    let options = colony_cluster::memory::MemoryOptions::parse(location, flag).map_err(refused)?;
    let memory = colony_cluster::memory::NatsMemory::open(&options, create, approximate, flag)
        .map_err(refused)?;
    Ok(Box::new(memory))
}

fn compact(args: &CompactArgs) -> Result<(), Failure> {
    let refused = |e: colony_cluster::Error| match e {
        colony_cluster::Error::Settings(_) => Failure::input(e),
        e => Failure::work(anyhow::Error::new(e).context("--db")),
    };
    if !colony_cluster::journal::in_nats(&args.db) {
        return Err(Failure::input(anyhow::anyhow!(
            "--db {}: compact is for a memory in NATS (nats://HOST:PORT/NAME); a SQLite file keeps no history to compact",
            args.db
        )));
    }
    let options =
        colony_cluster::memory::MemoryOptions::parse(&args.db, "--db").map_err(refused)?;
    let memory = colony_cluster::memory::NatsMemory::open(&options, false, false, "--db")
        .map_err(refused)?;
    let done = memory.compact().map_err(refused)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "messages-before": done.messages_before,
                "bytes-before": done.bytes_before,
                "messages-after": done.messages_after,
                "bytes-after": done.bytes_after,
                "snapshot-of": done.snapshot_of,
            })
        );
    } else {
        println!(
            "compacted the memory {}: {} messages ({} bytes) before, {} ({} bytes) after; the snapshot holds its state after message {}",
            options.name,
            done.messages_before,
            done.bytes_before,
            done.messages_after,
            done.bytes_after,
            done.snapshot_of
        );
    }
    Ok(())
}

/// A memory's error, said of the flag that named it.
fn named(flag: &str, e: Error) -> Failure {
    match failure(e) {
        Failure::Input(e) => Failure::Input(e.context(flag.to_owned())),
        Failure::Work(e) => Failure::Work(e.context(flag.to_owned())),
    }
}

fn namespace(at: &Where) -> Result<Namespace, Failure> {
    Namespace::parse(&at.namespace).map_err(failure)
}

pub(crate) fn run(command: &Command) -> Result<(), Failure> {
    match command {
        Command::Put(args) => put(args),
        Command::Get(args) => {
            let memory = open(&args.at.store, false)?;
            let ns = namespace(&args.at)?;
            match memory.get(&ns, &args.id).map_err(failure)? {
                Some(d) => {
                    println!("{}", serde_json::to_string(&d).map_err(Failure::work)?);
                    Ok(())
                }
                None => Err(Failure::work(anyhow::anyhow!(
                    "no document {:?} in namespace {ns}",
                    args.id
                ))),
            }
        }
        Command::Delete(args) => {
            let memory = open(&args.at.store, false)?;
            let ns = namespace(&args.at)?;
            let n = memory.delete(&ns, &args.ids).map_err(failure)?;
            println!("deleted {n} of {} documents from {ns}", args.ids.len());
            Ok(())
        }
        Command::Search(args) => search(args),
        Command::Rebuild(args) => rebuild(args),
        Command::Compact(args) => compact(args),
        Command::Stats(args) => {
            let memory = open(&args.store, false)?;
            let (all, _) = memory.listed(usize::MAX).map_err(failure)?;
            if args.json {
                let json: Vec<Value> = all
                    .iter()
                    .map(|(ns, s)| serde_json::json!({"namespace": ns, "documents": s.documents, "dimension": s.dimension, "text-bytes": s.text_bytes, "embedder": s.embedder}))
                    .collect();
                println!("{}", Value::Array(json));
            } else {
                println!(
                    "{:<32} {:>10} {:>9} {:>12}  embedder",
                    "namespace", "documents", "dimension", "text bytes"
                );
                for (ns, s) in &all {
                    let dimension = s.dimension.map_or("-".to_owned(), |d| d.to_string());
                    println!(
                        "{:<32} {:>10} {:>9} {:>12}  {}",
                        ns.as_str(),
                        s.documents,
                        dimension,
                        s.text_bytes,
                        s.embedder.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
    }
}

fn rebuild(args: &RebuildArgs) -> Result<(), Failure> {
    if args.at.store.chroma.is_some() {
        return rebuild_chroma(args);
    }
    if args
        .at
        .store
        .db
        .as_deref()
        .and_then(super::in_nats)
        .is_some()
    {
        return Err(Failure::input(anyhow::anyhow!(
            "--db: a memory in NATS keeps no index of its own to check: each process's copy builds its own (`colony serve --memory nats://...` as it searches, or POST /v1/memory/rebuild)"
        )));
    }
    let (Some(db), 1) = (&args.at.store.db, args.at.store.shards) else {
        return Err(Failure::input(anyhow::anyhow!(
            "rebuild checks colony's index of one SQLite file (--db PATH, one shard), or writes a Chroma memory's index again (--chroma URL)"
        )));
    };
    // Checked as every opening is (not spread over several files, a memory), then the file
    // itself, for what only a SQLite memory does.
    open_memory(Some(db), None, 1, false, false, ("--db", "--chroma"))?;
    let memory = colony_memory::open_file(db, false)
        .map_err(|e| named("--db", e))?
        .with_approximate(None)
        .with_cache(0);
    let ns = namespace(&args.at)?;
    let built = memory.rebuild(&ns).map_err(failure)?;
    let queries = memory.sample(&ns, args.queries as usize).map_err(failure)?;
    let k = args.k as usize;
    let (mut found, mut wanted) = (0usize, 0usize);
    for vector in &queries {
        let mut exact = Query::vector(vector.clone(), k);
        exact.exact = true;
        let truth: std::collections::HashSet<String> = memory
            .search(&ns, &exact)
            .map_err(failure)?
            .into_iter()
            .map(|h| h.id)
            .collect();
        let approximate = memory
            .search(&ns, &Query::vector(vector.clone(), k))
            .map_err(failure)?;
        wanted += truth.len();
        found += approximate.iter().filter(|h| truth.contains(&h.id)).count();
    }
    let recall = (wanted > 0).then(|| found as f64 / wanted as f64);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "namespace": ns,
                "points": built.points,
                "took-ms": built.took.as_millis() as u64,
                "queries": queries.len(),
                "k": k,
                "recall": recall,
            })
        );
    } else {
        println!(
            "{ns}: an index of {} embeddings built from the file in {:.2} s",
            built.points,
            built.took.as_secs_f64()
        );
        match recall {
            Some(r) => println!(
                "recall@{k}: {r:.3} over {} stored embeddings searched both ways",
                queries.len()
            ),
            None => println!("recall: not checked (no queries, or no embeddings)"),
        }
    }
    if let (Some(min), Some(r)) = (args.min_recall, recall)
        && r < min
    {
        return Err(Failure::work(anyhow::anyhow!(
            "recall@{k} {r:.3} is under --min-recall {min}"
        )));
    }
    if args.min_recall.is_some() && recall.is_none() {
        return Err(Failure::work(anyhow::anyhow!(
            "--min-recall given, but there are no embeddings to check it with (--queries 0, or {ns} has none)"
        )));
    }
    Ok(())
}

/// A Chroma memory's index written again from its record (after a write that failed
/// midway); its recall is Chroma's graph's, not checked here.
fn rebuild_chroma(args: &RebuildArgs) -> Result<(), Failure> {
    if args.min_recall.is_some() {
        return Err(Failure::input(anyhow::anyhow!(
            "--min-recall checks colony's own index of a SQLite file; a Chroma memory's graph is Chroma's"
        )));
    }
    let memory = open(&args.at.store, false)?;
    let ns = namespace(&args.at)?;
    let built = memory.rebuild(&ns).map_err(failure)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "namespace": ns,
                "points": built.points,
                "took-ms": built.took.as_millis() as u64,
            })
        );
    } else {
        println!(
            "{ns}: the index written again from the record: {} vectors in {:.2} s",
            built.points,
            built.took.as_secs_f64()
        );
    }
    Ok(())
}

fn put(args: &PutArgs) -> Result<(), Failure> {
    let ns = namespace(&args.at)?;
    let embedder = args.embedder.embedder(args.dimension)?;
    let memory = open(&args.at.store, true)?;
    let mut stored = 0usize;
    let store = |mut batch: Vec<Document>| -> Result<usize, Failure> {
        let brought_own = batch.iter().any(|d| d.embedding.is_some());
        if args.embed {
            let texts: Vec<&str> = batch
                .iter()
                .filter(|d| d.embedding.is_none())
                .map(|d| d.text.as_str())
                .collect();
            let mut vectors = embedder.embed(&texts).map_err(failure)?.into_iter();
            for d in batch.iter_mut().filter(|d| d.embedding.is_none()) {
                d.embedding = vectors.next();
            }
        }
        let n = batch.len();
        // With --embed, the namespace records (or checks) what made its vectors: when the
        // embedder made every one of them (a line that brought its own is not its).
        if args.embed && !brought_own {
            memory
                .put_embedded(&ns, batch, embedder.kind())
                .map_err(failure)?;
        } else {
            memory.put(&ns, batch).map_err(failure)?;
        }
        Ok(n)
    };
    match (&args.id, &args.text, &args.jsonl) {
        (Some(id), Some(text), None) => {
            let metadata: Metadata = args.meta.iter().cloned().collect();
            stored += store(vec![Document {
                id: id.clone(),
                text: text.clone(),
                metadata,
                embedding: None,
            }])?;
        }
        (None, None, Some(path)) => {
            // Batches of MAX_BATCH, each stored whole: a bad line stops the import there,
            // with its line number, and what came before it is stored.
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", path.display())))?;
            let mut lines = std::io::BufReader::new(file);
            let mut batch = Vec::new();
            let mut held = 0usize;
            let mut line = String::new();
            let mut number = 0usize;
            loop {
                line.clear();
                number += 1;
                let read = (&mut lines)
                    .take(MAX_LINE)
                    .read_line(&mut line)
                    .map_err(|e| {
                        Failure::input(anyhow::anyhow!("{}:{number}: {e}", path.display()))
                    })?;
                if read == 0 {
                    break;
                }
                if !line.ends_with('\n') && read as u64 >= MAX_LINE {
                    return Err(Failure::input(anyhow::anyhow!(
                        "{}:{number}: the line is longer than a document may be ({} bytes of text); {stored} documents stored before it",
                        path.display(),
                        MAX_TEXT_BYTES
                    )));
                }
                if line.trim().is_empty() {
                    continue;
                }
                let d: Document = serde_json::from_str(&line).map_err(|e| {
                    Failure::input(anyhow::anyhow!(
                        "{}:{number}: not a document ({e}); {stored} documents stored before it",
                        path.display()
                    ))
                })?;
                held += d.text.len() + 4 * d.embedding.as_ref().map_or(0, Vec::len);
                batch.push(d);
                // Stored by count or by bytes held, whichever comes first.
                if batch.len() == MAX_BATCH || held >= BATCH_BYTES {
                    stored += store(std::mem::take(&mut batch))?;
                    held = 0;
                }
            }
            if !batch.is_empty() {
                stored += store(batch)?;
            }
        }
        _ => {
            return Err(Failure::input(anyhow::anyhow!(
                "give ID and TEXT, or --jsonl PATH"
            )));
        }
    }
    println!("stored {stored} documents in {ns}");
    Ok(())
}

fn search(args: &SearchArgs) -> Result<(), Failure> {
    let memory = open(&args.at.store, false)?;
    let ns = namespace(&args.at)?;
    let (vector, embedder) = match &args.near {
        Some(text) => {
            let embedder = args.embedder.embedder(args.dimension)?;
            let vector = embedder.embed(&[text]).map_err(failure)?.pop();
            (vector, Some(embedder.kind().to_owned()))
        }
        None => (None, None),
    };
    let query = Query {
        text: args.text.clone(),
        vector,
        filter: args.filter.iter().cloned().collect(),
        k: args.k as usize,
        exact: true,
        embedder,
    };
    let hits = memory.search(&ns, &query).map_err(failure)?;
    if args.json {
        println!("{}", serde_json::to_string(&hits).map_err(Failure::work)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("nothing found in {ns}");
    }
    for (i, h) in hits.iter().enumerate() {
        let text: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "{:>3}  {:>9.4}  {}  {}",
            i + 1,
            h.score,
            h.id,
            colony_core::text::shorten(&text, 80)
        );
    }
    Ok(())
}
