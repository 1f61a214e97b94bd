//! A [`Memory`] kept in a JetStream stream: the agents' shared memory on the NATS servers
//! (R3 in production), one memory for every process of a cluster that opens it: control-plane
//! replicas, the schedulers of workflow runs (a run taken over on another machine finds what
//! the first remembered), `colony memory` on any machine.
//!
//! Each memory is one stream, `COLONY_MEMORY_<name>` (file storage, kept until deleted),
//! whose messages are its writes in order: a `put` of a batch, a `delete`, or a snapshot
//! of the whole (see the end of this). Every process
//! that opens it keeps a copy (a [`SqliteMemory`] in memory, its mirror) that a thread of its
//! own brings up to date from the stream, write by write, in the stream's order; so every
//! copy takes the same writes in the same order and holds the same documents.
//!
//! - **A write** is published, then waited for in this process's copy: what applying it
//!   said (stored; refused because the namespace holds another dimension or another
//!   embedder's embeddings) is the call's answer, and every other copy says the same of it.
//!   A write was checked before it was sent (its size, each document), so what a copy
//!   refuses is only what the memory held by then. It is durable once the stream
//!   acknowledged it (on R3, a majority of the servers wrote it). A batch larger than a
//!   message goes in parts, each naming its write; other writers' messages may come
//!   between them, and a copy applies a batch only once its last part came, in the
//!   stream's order of that last part: a batch is stored whole or not at all.
//! - **A copy never drifts**: what it cannot apply as every copy would (a write it cannot
//!   read, from a newer colony; a store that failed here alone; a panic) stops it, and every
//!   later call is refused, saying so, until the process opens the memory again.
//! - **A read** (`get`, `search`, `stats`, `namespaces`) first asks the stream for its last
//!   message, and is answered by the copy once it applied that far: it sees every write
//!   acknowledged before it began, wherever that write was made.
//!
//! Opening replays the stream, and the copy holds the whole memory. The stream keeps every
//! write (a document replaced or deleted is still in it) until it is compacted
//! ([`NatsMemory::compact`], or as a writer opens it past a bound): the copy written whole
//! as a snapshot, and what it replaces purged.

mod wire;

use crate::{Error, client::shown};
use async_nats::jetstream::{self, consumer::DeliverPolicy, context::PublishErrorKind, stream};
use bytes::Bytes;
use colony_memory::{
    CacheStats, Document, Hit, Memory, Namespace, Query, Rebuilt, SqliteMemory, Stats, TextStats,
};
use futures::StreamExt;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use wire::{
    Carried, Frames, HeldWrite, MAX_PARTS, PART_HEADER, PENDING_BYTES, Part, SNAPSHOT_HEADER,
    Space, WRITE_HEADER, Write,
};

/// How long a call waits for this process's copy to reach the write or the read it makes
/// while the copy applies nothing: a copy replaying a long stream takes as long as it takes.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long one message is tried again while NATS cannot take it (a leader election, a
/// server restarting), with the same dedupe id.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How long the copy's watch waits before it is made again after it broke.
const REWATCH: Duration = Duration::from_millis(500);
/// Times a compaction takes its snapshot again when another writer wrote while it was sent.
const COMPACT_TRIES: u32 = 3;

/// What [`NatsMemory::compact`] did: the stream's messages and bytes before and after, and
/// the sequence whose state the snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    pub messages_before: u64,
    pub bytes_before: u64,
    pub messages_after: u64,
    pub bytes_after: u64,
    pub snapshot_of: u64,
}

/// Where a memory in NATS is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    /// NATS servers, comma-separated.
    pub url: String,
    /// The memory's name: its stream is `COLONY_MEMORY_<name>`.
    pub name: String,
    /// Copies the servers keep: 3 or 5; 1 for a single development server. A memory made
    /// before keeps its own.
    pub replicas: usize,
    /// A process that opens the memory to write it (`create`) compacts it when its stream
    /// holds more bytes than this and the snapshot would be under half of them.
    /// [`crate::journal::COMPACT_ABOVE`] (64 MiB) by default.
    pub compact_above: u64,
}

impl MemoryOptions {
    /// Reads `nats://HOST:PORT[,nats://HOST:PORT...]/NAME[?replicas=N]` (or `tls://`), as
    /// `flag` gave it. Replicas default to 3.
    pub fn parse(location: &str, flag: &str) -> Result<Self, Error> {
        let (url, name, replicas) = crate::journal::parse_location(location, flag, "memory")?;
        Ok(MemoryOptions {
            url,
            name,
            replicas,
            compact_above: crate::journal::COMPACT_ABOVE,
        })
    }

    fn stream(&self) -> String {
        format!("COLONY_MEMORY_{}", self.name)
    }

    fn subject(&self) -> String {
        format!("colony.memory.{}", self.name)
    }
}

impl Write {
    /// Applies the write to `copy`: documents stored, or deleted. A document that cannot be
    /// read back refuses the write, alike in every copy.
    fn apply(self, copy: &SqliteMemory) -> Result<u64, colony_memory::Error> {
        match self {
            Write::Put {
                namespace,
                documents,
                embedder,
            } => {
                let documents = documents
                    .into_iter()
                    .map(Carried::document)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(colony_memory::Error::Query)?;
                let n = documents.len() as u64;
                match embedder {
                    Some(embedder) => copy.put_embedded(&namespace, documents, &embedder),
                    None => copy.put(&namespace, documents),
                }
                .map(|()| n)
            }
            Write::Delete { namespace, ids } => copy.delete(&namespace, &ids),
            // Passed over by a copy that read what it sums up (see `take`).
            Write::Snapshot { .. } => Ok(0),
        }
    }
}

/// How far this process's copy is, and the answers of the writes this process waits for.
#[derive(Default)]
struct Followed {
    /// The stream's sequence of the last message applied.
    applied: u64,
    /// Writes of this process a call waits for, by id.
    awaited: HashSet<String>,
    /// Their answers, once applied.
    answers: HashMap<String, Result<u64, colony_memory::Error>>,
    /// Why the watch of the stream is broken, while it is.
    trouble: Option<String>,
    /// Why the copy stopped for good, once it has.
    stopped: Option<String>,
    /// Bumped at each message applied and each batch of a snapshot restored: a call waits
    /// for as long as it moves.
    progress: u64,
    /// The place of the last snapshot this copy restored: writes before it were applied by
    /// other copies, and no answer of theirs is known here.
    restored_through: u64,
}

/// What the calls and the thread that keeps the copy share.
struct Inner {
    /// The copy: replaced whole when a snapshot is restored into a new one.
    copy: std::sync::RwLock<Arc<SqliteMemory>>,
    /// Whether a copy builds approximate indexes.
    approximate: bool,
    /// What the thread keeping the copy holds between messages; locked while a message is
    /// applied, and while a snapshot is taken: the copy, its held parts and
    /// `followed.applied` then agree.
    applying: Mutex<Copying>,
    followed: Mutex<Followed>,
    moved: Condvar,
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    /// Each write's id starts with it.
    writer: String,
    writes: AtomicU64,
    /// Most bytes of one message's body.
    part: usize,
    /// `the memory NAME`, for errors.
    shown: String,
}

impl Inner {
    fn copy(&self) -> Arc<SqliteMemory> {
        self.copy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A new, empty copy.
    fn new_copy(&self) -> Result<SqliteMemory, colony_memory::Error> {
        new_copy(self.approximate)
    }

    /// Most bytes of one write's frame: its servers' `max_payload` [`MAX_PARTS`] times, and
    /// no more than every copy holds while it gathers a write's parts.
    fn largest_write(&self) -> usize {
        (MAX_PARTS * self.part).min(PENDING_BYTES / 2)
    }
}

/// An empty copy, which builds approximate indexes when `approximate`.
fn new_copy(approximate: bool) -> Result<SqliteMemory, colony_memory::Error> {
    let copy = SqliteMemory::in_memory()?;
    Ok(if approximate {
        copy
    } else {
        copy.with_approximate(None)
    })
}

fn lock(mutex: &Mutex<Followed>) -> MutexGuard<'_, Followed> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A memory in a JetStream stream. See the module's documentation.
pub struct NatsMemory {
    inner: Arc<Inner>,
    /// Runs the client; dropped without waiting (a memory may be dropped on an async thread).
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the thread keeping the copy to stop.
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for NatsMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsMemory")
            .field("stream", &self.inner.shown)
            .finish_non_exhaustive()
    }
}

impl NatsMemory {
    /// Opens the memory `options` says (named by `flag` in errors): its stream is made when
    /// `create` (else one that is not there is refused, as `Error::Settings`), replayed into
    /// this process's copy, and followed from then on. The copy builds approximate indexes
    /// of large namespaces when `approximate` (a process that makes one search and ends is
    /// better without). Blocks: call it where a thread may.
    pub fn open(
        options: &MemoryOptions,
        create: bool,
        approximate: bool,
        flag: &str,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("colony-memory-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::nats("the memory's client", e))?;
        let compact_above = options.compact_above;
        let (options, flag) = (options.clone(), flag.to_owned());
        let inner = wait_for(runtime.handle(), async move {
            connect(&options, create, approximate, &flag).await
        })??;
        let inner = Arc::new(inner);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let follower = inner.clone();
        let handle = runtime.handle().clone();
        colony_agents::spawner::Spawner::spawn_thread("colony-memory-copy", move || {
            handle.block_on(follow(follower, stopped));
        })
        .map_err(|e| Error::nats("the memory's copy", e))?;
        let memory = NatsMemory {
            inner,
            runtime: Some(runtime),
            stop,
        };
        // What the stream held when opened is in the copy before the first call.
        memory.fresh().map_err(|e| Error::nats("opening it", e))?;
        if create && matches!(memory.state(), Ok((_, bytes)) if bytes > compact_above) {
            // Not worth failing the opening for: the memory works uncompacted.
            match memory.compacting(Some(compact_above)) {
                Ok(Some(done)) => tracing::info!(
                    memory = memory.inner.shown,
                    before = done.bytes_before,
                    after = done.bytes_after,
                    "Compacted the memory: its state written whole, the writes before it purged."
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(memory = memory.inner.shown, error = %e, "The memory could not be compacted as it was opened; it works as it is.")
                }
            }
        }
        Ok(memory)
    }

    /// Waits until the copy applied everything the stream held when called: up to its last
    /// message on the memory's subject (one deleted by hand is not waited for).
    fn fresh(&self) -> Result<(), colony_memory::Error> {
        let (stream, subject) = (self.inner.stream.clone(), self.inner.subject.clone());
        let last = self
            .run(async move {
                match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => Ok(message.sequence),
                    Err(e)
                        if matches!(
                            e.kind(),
                            jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                        ) =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(e.to_string()),
                }
            })?
            .map_err(|e| self.store(format!("cannot read the stream's last message: {e}")))?;
        self.caught_up(last)
    }

    /// Waits until the copy applied message `sequence`, for as long as it goes on applying
    /// (it fails after [`CATCH_UP`] without one message applied, or one batch restored).
    fn caught_up(&self, sequence: u64) -> Result<(), colony_memory::Error> {
        let mut deadline = Instant::now() + CATCH_UP;
        let mut followed = lock(&self.inner.followed);
        let mut seen = followed.progress;
        while followed.applied < sequence {
            if let Some(why) = &followed.stopped {
                return Err(self.store(format!(
                    "this process's copy stopped: {why}; open the memory again (restart the process) once that is mended"
                )));
            }
            let now = Instant::now();
            if followed.progress > seen {
                seen = followed.progress;
                deadline = now + CATCH_UP;
            }
            if now >= deadline {
                return Err(self.store(format!(
                    "this process's copy applied message {} of {sequence} and none more in {} s{}",
                    followed.applied,
                    CATCH_UP.as_secs(),
                    followed
                        .trouble
                        .as_ref()
                        .map(|t| format!(" ({t})"))
                        .unwrap_or_default()
                )));
            }
            followed = self
                .inner
                .moved
                .wait_timeout(followed, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        if let Some(why) = &followed.stopped {
            return Err(self.store(format!(
                "this process's copy stopped: {why}; open the memory again (restart the process) once that is mended"
            )));
        }
        Ok(())
    }

    fn store(&self, why: String) -> colony_memory::Error {
        colony_memory::Error::Store(format!("{}: {why}", self.inner.shown))
    }

    /// Runs `work` on the client's runtime and waits for it here.
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, colony_memory::Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| self.store("closed".into()))?;
        wait_for(runtime.handle(), work).map_err(|e| self.store(e.to_string()))
    }

    /// Sends `write` and waits until this process's copy applied it: what applying it said.
    fn write(&self, write: Write) -> Result<u64, colony_memory::Error> {
        // A stopped copy writes nothing: it could not tell what became of it.
        self.caught_up(0)?;
        let op = self.next_op();
        let frame = Bytes::from(
            serde_json::to_vec(&write).map_err(|e| self.store(format!("encoding a write: {e}")))?,
        );
        let most = self.inner.largest_write();
        if frame.len() > most {
            return Err(colony_memory::Error::Query(format!(
                "a write of {} bytes (as sent): a memory in NATS takes up to {most} in one ({MAX_PARTS} messages of its servers' max_payload, at most {} MiB); store the batch in smaller ones",
                frame.len(),
                (PENDING_BYTES / 2) >> 20
            )));
        }
        let awaited = Awaited::new(&self.inner, op.clone());
        let (inner, sent) = (self.inner.clone(), op.clone());
        let sequence = self
            .run(async move { publish_frame(&inner, frame, &sent).await })?
            .map_err(|e| self.store(e))?;
        self.caught_up(sequence).map_err(|e| {
            self.store(format!(
                "the write is stored (message {sequence}), but this process's copy has not applied it: {e}"
            ))
        })?;
        let (answer, restored) = {
            let mut followed = lock(&self.inner.followed);
            (
                followed.answers.remove(&awaited.op),
                followed.restored_through,
            )
        };
        drop(awaited);
        answer.unwrap_or_else(|| {
            Err(self.store(if sequence <= restored {
                format!(
                    "write {op} is stored (message {sequence}), but this process's copy restored a snapshot taken after it, so it cannot tell what applying it said: read it back"
                )
            } else {
                format!(
                    "write {op} was acknowledged but its parts were dropped before its last came (held past their bound): try again"
                )
            }))
        })
    }

    /// Deletes the memory's stream, with everything in it, and closes this copy: for
    /// benchmarks and tests that make memories of their own. Blocks.
    pub fn delete_stream(self) -> Result<(), Error> {
        let (js, name) = (
            self.inner.js.clone(),
            self.inner.stream.cached_info().config.name.clone(),
        );
        self.run(async move {
            js.delete_stream(name)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .map_err(|e| Error::nats("deleting the memory", e))?
        .map_err(|e| Error::nats(&self.inner.shown, e))
    }

    /// Compacts the memory's stream: this copy's whole state (every namespace's record
    /// and documents) written as a snapshot right after the last message it applied, in
    /// consecutive parts, then every message before the snapshot purged. A copy that opens
    /// afterwards restores the snapshot and goes on from there; one that follows the stream
    /// now passes over it. Taken again (up to 3 times) when another writer wrote while it
    /// was sent; refused when the snapshot would be larger than a write may be. A copy of
    /// another process that had not read up to the snapshot's place when the purge came
    /// (cut off from NATS meanwhile, say) restores the snapshot into a new copy. Blocks.
    pub fn compact(&self) -> Result<Compacted, Error> {
        self.compacting(None)?
            .ok_or_else(|| Error::nats(&self.inner.shown, "the compaction was skipped"))
    }

    /// [`NatsMemory::compact`]; with `if_worth` (a bound), `None` and nothing written when the
    /// stream holds no more bytes than the bound, or the snapshot would not be under half
    /// of them.
    fn compacting(&self, if_worth: Option<u64>) -> Result<Option<Compacted>, Error> {
        let failed = |e: colony_memory::Error| Error::nats("compacting", e);
        let before = self.state()?;
        for _ in 0..COMPACT_TRIES {
            self.fresh().map_err(failed)?;
            // Another process may have compacted it meanwhile.
            let now = self.state()?;
            let least = self.estimate().map_err(failed)?;
            if if_worth.is_some_and(|above| now.1 <= above || least * 2 > now.1) {
                return Ok(None);
            }
            let most = self.inner.largest_write();
            let too_large = |bytes| {
                Error::nats(
                    &self.inner.shown,
                    format!(
                        "its snapshot would be {bytes} bytes or more, more than one write may be ({most}): it cannot be compacted"
                    ),
                )
            };
            // Refused before the copy is read whole: that would hold it twice in memory.
            if least > most as u64 {
                return Err(too_large(least));
            }
            let (after, spaces, held) = self.snapshot().map_err(failed)?;
            let frame = Bytes::from(
                serde_json::to_vec(&Write::Snapshot { spaces, held })
                    .map_err(|e| Error::nats("compacting", e))?,
            );
            if if_worth.is_some() && frame.len() as u64 * 2 > now.1 {
                return Ok(None);
            }
            if frame.len() > most {
                return Err(too_large(frame.len() as u64));
            }
            let (inner, op) = (self.inner.clone(), self.next_op());
            let sent = self
                .run(async move { publish_snapshot(&inner, frame, &op, after).await })
                .map_err(failed)?
                .map_err(|e| Error::nats(&self.inner.shown, e))?;
            let Some(first) = sent else {
                tracing::info!(
                    memory = self.inner.shown,
                    "Another writer wrote while the snapshot was sent; taking it again."
                );
                continue;
            };
            let stream = self.inner.stream.clone();
            self.run(async move { stream.purge().sequence(first).await.map(|_| ()).map_err(|e| e.to_string()) })
                .map_err(failed)?
                .map_err(|e| Error::nats(&self.inner.shown, format!("the snapshot is written (from message {first}), but what it replaces could not be purged: {e}")))?;
            let after_state = self.state()?;
            return Ok(Some(Compacted {
                messages_before: before.0,
                bytes_before: before.1,
                messages_after: after_state.0,
                bytes_after: after_state.1,
                snapshot_of: after,
            }));
        }
        Err(Error::nats(
            &self.inner.shown,
            format!(
                "other writers wrote while its snapshot was sent, {COMPACT_TRIES} times: compact it when it is written less"
            ),
        ))
    }

    /// Fewer bytes than a snapshot of the copy takes, from its counts alone (its text, and
    /// 20 bytes a document): a compaction it says is not worth it is not, and the snapshot
    /// itself decides the rest.
    fn estimate(&self) -> Result<u64, colony_memory::Error> {
        let (listed, _) = self.inner.copy().listed(usize::MAX)?;
        Ok(listed
            .iter()
            .map(|(_, stats)| stats.text_bytes + stats.documents * 20)
            .sum())
    }

    /// The stream's messages and bytes.
    fn state(&self) -> Result<(u64, u64), Error> {
        let stream = self.inner.stream.clone();
        let info = self
            .run(async move { stream.get_info().await.map_err(|e| e.to_string()) })
            .map_err(|e| Error::nats("reading the stream", e))?
            .map_err(|e| Error::nats(&self.inner.shown, e))?;
        Ok((info.state.messages, info.state.bytes))
    }

    /// The copy's whole state and the sequence it is the state after, read while no message
    /// is applied.
    fn snapshot(&self) -> Result<(u64, Vec<Space>, Vec<HeldWrite>), colony_memory::Error> {
        let copying = self
            .inner
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.caught_up(0)?;
        let after = lock(&self.inner.followed).applied;
        let held = copying.frames.held();
        let copy = self.inner.copy();
        let spaces = copy
            .namespaces()?
            .into_iter()
            .map(|namespace| {
                let dumped = copy.dump(&namespace)?;
                Ok(Space {
                    namespace,
                    dimension: dumped.dimension,
                    embedder: dumped.embedder,
                    documents: dumped.documents.into_iter().map(Carried::of).collect(),
                })
            })
            .collect::<Result<Vec<_>, colony_memory::Error>>()?;
        Ok((after, spaces, held))
    }

    fn next_op(&self) -> String {
        let n = self.inner.writes.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{n}", self.inner.writer)
    }
}

impl Drop for NatsMemory {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A write this process waits for: its answer is kept for it until dropped.
struct Awaited {
    inner: Arc<Inner>,
    op: String,
}

impl Awaited {
    fn new(inner: &Arc<Inner>, op: String) -> Self {
        lock(&inner.followed).awaited.insert(op.clone());
        Awaited {
            inner: inner.clone(),
            op,
        }
    }
}

impl Drop for Awaited {
    fn drop(&mut self) {
        let mut followed = lock(&self.inner.followed);
        followed.awaited.remove(&self.op);
        followed.answers.remove(&self.op);
    }
}

/// Runs `work` on `runtime` and waits for it on this thread, which may be any (a blocking
/// call made from an async thread would only block it, not panic as `block_on` would).
fn wait_for<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    drop(runtime.spawn(async move {
        let _ = tx.send(work.await);
    }));
    rx.recv()
        .map_err(|_| Error::nats("the memory's client", "it stopped"))
}

/// Connects, and makes the stream when `create` (else finds it).
async fn connect(
    options: &MemoryOptions,
    create: bool,
    approximate: bool,
    flag: &str,
) -> Result<Inner, Error> {
    let (client, js) = crate::client::connect(&options.url, flag).await?;
    let part = crate::journal::part_size(&client);
    let url = shown(&options.url);
    let shown = format!("the memory {} at {url}", options.name);
    let stream = crate::journal::open_log_stream(
        &js,
        create,
        (options.stream(), options.subject()),
        options.replicas,
        &shown,
        || {
            Error::Settings(format!(
                "{flag}: no memory {} at {url} (no stream {})",
                options.name,
                options.stream()
            ))
        },
    )
    .await?;
    let copy = new_copy(approximate).map_err(|e| Error::nats(&shown, e))?;
    Ok(Inner {
        copy: std::sync::RwLock::new(Arc::new(copy)),
        approximate,
        applying: Mutex::new(Copying::default()),
        followed: Mutex::new(Followed::default()),
        moved: Condvar::new(),
        js,
        stream,
        subject: options.subject(),
        writer: crate::client::random_id(),
        writes: AtomicU64::new(0),
        part,
        shown,
    })
}

/// Publishes `frame` as write `op`, in as many messages as it takes, one after the other;
/// the sequence of the last (the one that completes it in every copy).
async fn publish_frame(inner: &Inner, frame: Bytes, op: &str) -> Result<u64, String> {
    let parts = frame.len().div_ceil(inner.part).max(1);
    let mut last = 0;
    for i in 0..parts {
        let body = frame.slice(i * inner.part..((i + 1) * inner.part).min(frame.len()));
        let part = format!("{}/{parts}", i + 1);
        last = publish(inner, body, op, &part, None)
            .await?
            .ok_or_else(|| "a part of the write was refused".to_owned())?;
    }
    Ok(last)
}

/// Publishes a snapshot of the state after message `after` as write `op`, its parts right
/// after `after` and after each other; the sequence of its first, or `None` when another
/// writer's message came first (what was sent of it is passed over by every copy).
async fn publish_snapshot(
    inner: &Inner,
    frame: Bytes,
    op: &str,
    after: u64,
) -> Result<Option<u64>, String> {
    let parts = frame.len().div_ceil(inner.part).max(1);
    let (mut last, mut first) = (after, None);
    for i in 0..parts {
        let body = frame.slice(i * inner.part..((i + 1) * inner.part).min(frame.len()));
        let part = format!("{}/{parts}", i + 1);
        match publish(inner, body, op, &part, Some((after, last))).await? {
            Some(sequence) => last = sequence,
            None => return Ok(None),
        }
        first.get_or_insert(last);
    }
    Ok(first)
}

/// Publishes one part, tried again with the same dedupe id while NATS cannot take it; its
/// sequence. A snapshot's part (`snapshot`: the sequence whose state it holds, and the one
/// it must come right after) carries its header and lands right after that message, or
/// not at all: `None` when another writer's message came first.
async fn publish(
    inner: &Inner,
    body: Bytes,
    op: &str,
    part: &str,
    snapshot: Option<(u64, u64)>,
) -> Result<Option<u64>, String> {
    let deadline = Instant::now() + RETRY_FOR;
    let id = format!("{op}.{part}");
    loop {
        let mut message = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(&id)
            .header(WRITE_HEADER, op)
            .header(PART_HEADER, part);
        if let Some((after, last)) = snapshot {
            message = message
                .header(SNAPSHOT_HEADER, after.to_string().as_str())
                .expected_last_sequence(last);
        }
        let sent = match inner.js.send_publish(inner.subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let error = match sent {
            Ok(ack) => return Ok(Some(ack.sequence)),
            Err(e) => e,
        };
        match (error.kind(), snapshot) {
            (PublishErrorKind::WrongLastSequence, Some((_, last))) => {
                // This part landed with its answer lost, or another writer came first.
                return Ok(match inner.stream.get_raw_message(last + 1).await {
                    Ok(next)
                        if next
                            .headers
                            .get(async_nats::header::NATS_MESSAGE_ID)
                            .is_some_and(|v| v.as_str() == id) =>
                    {
                        Some(next.sequence)
                    }
                    _ => None,
                });
            }
            (PublishErrorKind::MaxPayloadExceeded, _) => return Err(error.to_string()),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "NATS did not take a write for {} s: {error}",
                RETRY_FOR.as_secs()
            ));
        }
        tracing::warn!(memory = inner.shown, %error, "A memory write failed; trying again.");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the copy: applies the stream's messages in order, from the first, until told to
/// stop; a watch that breaks is made again after the last message applied.
async fn follow(inner: Arc<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = inner.js.client();
    loop {
        let last = inner
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last;
        let from = DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        };
        let watched = async {
            let consumer = crate::watch::ordered(
                &inner.stream,
                &client,
                "colony: a memory's copy",
                std::slice::from_ref(&inner.subject),
                from,
            )
            .await?;
            crate::watch::messages(consumer).await
        };
        let trouble = match watched.await {
            Ok((_, mut messages)) => loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok((sequence, message))) => {
                        if !apply(&inner, sequence, &message) {
                            return;
                        }
                    }
                    Some(Err(e)) => break e,
                    None => break "the watch ended".to_owned(),
                }
            },
            Err(e) => e,
        };
        tracing::warn!(
            memory = inner.shown,
            trouble,
            "The memory's copy lost its watch of the stream; making it again."
        );
        lock(&inner.followed).trouble = Some(trouble);
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            () = tokio::time::sleep(REWATCH) => {}
        }
    }
}

/// What the thread keeping the copy holds between messages.
#[derive(Debug, Default)]
struct Copying {
    frames: Frames,
    /// The snapshot this copy restores before anything else: the stream began with it.
    restoring: Option<(String, u64)>,
    /// The last message taken: while a snapshot is restored, ahead of `followed.applied`,
    /// which stays where the copy was until the snapshot is whole.
    last: u64,
}

/// Applies one message to the copy (a write once its last part came), and says so; `false`
/// when the copy stopped, because it could not apply the message as every copy would.
fn apply(inner: &Inner, sequence: u64, message: &async_nats::jetstream::Message) -> bool {
    let mut copying = inner
        .applying
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        take(inner, &mut copying, sequence, message)
    }))
    .unwrap_or_else(|panic| {
        Err(format!(
            "applying it panicked: {}",
            colony_agents::spawner::panic_message(&*panic)
        ))
    });
    let mut followed = lock(&inner.followed);
    let going = match applied {
        Ok(answered) => {
            if let Some((op, answer)) = answered
                && followed.awaited.contains(&op)
            {
                followed.answers.insert(op, answer);
            }
            copying.last = sequence;
            if copying.restoring.is_none() {
                followed.applied = sequence;
            }
            followed.progress += 1;
            followed.trouble = None;
            true
        }
        Err(why) => {
            let why = format!("message {sequence}: {why}");
            tracing::error!(
                memory = inner.shown,
                why,
                "The memory's copy stopped: it cannot apply a message as every other copy would."
            );
            followed.stopped = Some(why);
            false
        }
    };
    drop(followed);
    drop(copying);
    inner.moved.notify_all();
    going
}

/// A write's id and what applying it said.
type Answered = (String, Result<u64, colony_memory::Error>);

/// [`apply`]'s work: the answer to a write of this process's, or why the copy must stop.
fn take(
    inner: &Inner,
    copying: &mut Copying,
    sequence: u64,
    message: &async_nats::jetstream::Message,
) -> Result<Option<Answered>, String> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let applied = copying.last;
    if sequence != applied + 1 {
        // Messages before this one are gone. A snapshot's first part after them (the
        // stream was compacted past this copy's place, or this copy starts where it was
        // compacted) is restored into a new copy, from nothing: what this copy held, and
        // the parts it gathered, are the snapshot's to say. Anything else was deleted by
        // hand, and is passed over as it was.
        let begins = header(SNAPSHOT_HEADER)
            .and_then(|after| after.parse::<u64>().ok())
            .filter(|after| after + 1 == sequence)
            .filter(|_| header(PART_HEADER).is_some_and(|p| p.starts_with("1/")));
        match (header(WRITE_HEADER), begins) {
            (Some(op), Some(after)) => {
                copying.restoring = Some((op, after));
                copying.frames = Frames::default();
            }
            _ => tracing::warn!(
                memory = inner.shown,
                from = applied + 1,
                to = sequence - 1,
                "Messages of the memory's stream are gone, not by a compaction (deleted by hand?); passed over."
            ),
        }
    }
    // A snapshot's parts are consecutive: any other message ends one being gathered.
    copying.frames.not_next(sequence);
    let Some(op) = header(WRITE_HEADER) else {
        // Not a write of colony's: every copy passes over it alike.
        tracing::warn!(
            memory = inner.shown,
            sequence,
            "A message of the memory's stream is not a write of colony's; passed over."
        );
        return Ok(None);
    };
    let part = header(PART_HEADER).unwrap_or_default();
    let snapshot = header(SNAPSHOT_HEADER).is_some();
    let frame = match copying
        .frames
        .part(sequence, &op, &part, &message.payload, snapshot)
    {
        Part::Passed(why) => {
            tracing::warn!(
                memory = inner.shown,
                sequence,
                why,
                "A message of the memory's stream is not a part any copy can gather; passed over."
            );
            return Ok(None);
        }
        Part::Held => return Ok(None),
        Part::Whole(frame) => frame,
    };
    // A snapshot of the history this copy read: passed over unread.
    if copying.restoring.is_none() && header(SNAPSHOT_HEADER).is_some() {
        return Ok(None);
    }
    let write = serde_json::from_slice::<Write>(&frame)
        .map_err(|e| format!("it cannot be read as a write ({e}): a newer colony's?"))?;
    match (write, copying.restoring.take()) {
        (Write::Snapshot { spaces, held }, Some((snapshot, after))) if snapshot == op => {
            let copy = restore(inner, spaces)?;
            let mut followed = lock(&inner.followed);
            followed.restored_through = followed.restored_through.max(after);
            drop(followed);
            copying.frames.hold(held)?;
            *inner
                .copy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(copy);
            Ok(None)
        }
        (_, Some((snapshot, _))) => Err(format!(
            "write {op} came before snapshot {snapshot} was whole, though a snapshot's parts are consecutive"
        )),
        (Write::Snapshot { .. }, None) => Ok(None),
        (write, None) => match write.apply(&inner.copy()) {
            // A store that failed here would not fail in the other copies.
            Err(colony_memory::Error::Store(e)) => Err(format!("this copy's store failed: {e}")),
            answer => Ok(Some((op, answer))),
        },
    }
}

/// A new copy holding a snapshot's namespaces; each batch restored counts as progress.
fn restore(inner: &Inner, spaces: Vec<Space>) -> Result<SqliteMemory, String> {
    let copy = inner
        .new_copy()
        .map_err(|e| format!("a new copy for the snapshot: {e}"))?;
    let mut stored = || {
        lock(&inner.followed).progress += 1;
        inner.moved.notify_all();
    };
    for space in spaces {
        let documents = space
            .documents
            .into_iter()
            .map(Carried::document)
            .collect::<Result<Vec<_>, _>>()?;
        let dumped = colony_memory::Dumped {
            dimension: space.dimension,
            embedder: space.embedder,
            documents,
        };
        copy.restore(&space.namespace, dumped, &mut stored)
            .map_err(|e| format!("restoring the snapshot's {}: {e}", space.namespace))?;
    }
    Ok(copy)
}

impl Memory for NatsMemory {
    fn put(
        &self,
        namespace: &Namespace,
        documents: Vec<Document>,
    ) -> Result<(), colony_memory::Error> {
        colony_memory::check_batch(&documents)?;
        self.write(Write::Put {
            namespace: namespace.clone(),
            documents: documents.into_iter().map(Carried::of).collect(),
            embedder: None,
        })
        .map(|_| ())
    }

    fn put_embedded(
        &self,
        namespace: &Namespace,
        documents: Vec<Document>,
        embedder: &str,
    ) -> Result<(), colony_memory::Error> {
        colony_memory::check_embedder(embedder)?;
        colony_memory::check_batch(&documents)?;
        self.write(Write::Put {
            namespace: namespace.clone(),
            documents: documents.into_iter().map(Carried::of).collect(),
            embedder: Some(embedder.to_owned()),
        })
        .map(|_| ())
    }

    fn get(
        &self,
        namespace: &Namespace,
        id: &str,
    ) -> Result<Option<Document>, colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().get(namespace, id)
    }

    fn delete(&self, namespace: &Namespace, ids: &[String]) -> Result<u64, colony_memory::Error> {
        if ids.len() > colony_memory::MAX_BATCH {
            return Err(colony_memory::Error::Query(format!(
                "a delete of {} ids: allowed up to {}",
                ids.len(),
                colony_memory::MAX_BATCH
            )));
        }
        self.write(Write::Delete {
            namespace: namespace.clone(),
            ids: ids.to_vec(),
        })
    }

    fn search_scored(
        &self,
        namespace: &Namespace,
        query: &Query,
        stats: Option<&TextStats>,
    ) -> Result<Vec<Hit>, colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().search_scored(namespace, query, stats)
    }

    fn text_stats(
        &self,
        namespace: &Namespace,
        words: &[String],
    ) -> Result<TextStats, colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().text_stats(namespace, words)
    }

    fn stats(&self, namespace: &Namespace) -> Result<Stats, colony_memory::Error> {
        self.fresh()?;
        Memory::stats(&*self.inner.copy(), namespace)
    }

    fn namespaces(&self) -> Result<Vec<Namespace>, colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().namespaces()
    }

    fn listed(&self, most: usize) -> Result<(Vec<(Namespace, Stats)>, bool), colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().listed(most)
    }

    fn cache_stats(&self) -> CacheStats {
        self.inner.copy().cache_stats()
    }

    fn indexed(&self, namespace: &Namespace) -> Option<usize> {
        self.inner.copy().indexed(namespace)
    }

    /// Builds this process's copy's approximate index (each process keeps its own).
    fn rebuild(&self, namespace: &Namespace) -> Result<Rebuilt, colony_memory::Error> {
        self.fresh()?;
        self.inner.copy().rebuild(namespace)
    }
}
