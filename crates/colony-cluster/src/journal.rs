//! A [`Journal`] kept in a JetStream stream: a runtime's system of record replicated on the
//! NATS servers (R3 in production), so that losing the machine loses no accepted task. A
//! runtime started on another machine on the same journal replays it and goes on from
//! where the first stopped; the first, if it still runs, is fenced out.
//!
//! Each journal is one stream, `COLONY_JOURNAL_<name>` (file storage, kept until deleted),
//! whose messages are its writes in order. A process keeps the whole journal in memory (a
//! [`MemoryJournal`], its mirror): reads are answered there, and each write is applied to
//! the mirror and appended to the stream by the journal's writer thread, which gathers the
//! writes waiting into one message (a group commit). A write is durable once the stream
//! acknowledged its message: on R3, once a majority of the servers wrote it. Each message
//! is published expecting the stream's last sequence to be the one this process wrote
//! last, so a second process that took the journal over (its first write, a claim, lands
//! after this one's last) makes every later write of the first fail: it stops, rather
//! than write over the other's. A frame larger than a message may be goes in consecutive
//! parts; a frame whose parts did not all land (its writer died between them) is skipped
//! on replay, so a write survives whole or not at all.
//!
//! Opening replays the stream: its time and the memory it takes grow with the tasks the
//! journal holds. A journal opened past a size is compacted first (`Writer::compact`):
//! its state written whole, and the messages before it purged.

mod codec;
mod keeper;

use crate::{Error, client::shown};
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use codec::{
    AgentLine, DecisionLine, OpeningLine, Outcome, Rec, ReputationLine, RowLine, Spec, Write,
};
use colony_core::{TaskId, task::TaskSpec, task::TaskState};
use colony_journal::{
    AgentRecord, Backlog, Call, Counts, DecisionRow, Durable, Journal, MemoryJournal, Opening,
    Record, ReputationRow, Stats, Taken, TaskRow,
};
use futures::{FutureExt, StreamExt, channel::oneshot};
use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Room left beside a message's body for its headers.
const HEADROOM: usize = 8 * 1024;
/// The smallest body of one message, whatever the servers' `max_payload`.
const MIN_PART: usize = 16 * 1024;
/// Most parts of one frame (most bytes of one write, with the servers' `max_payload`),
/// bounding what a replay holds before it applies a frame.
const MAX_PARTS: usize = 256;
/// How long a write is retried while NATS cannot take it (a leader election, a server
/// restarting) before the journal stops.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Writes queued or in flight before submitters wait for room ([`Backlog`]): NATS being
/// away for a while makes them wait, not the queue grow.
const QUEUE: usize = 4096;
/// An idle writer looks this often whether another process took the journal over.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long `prune` waits for the process keeping a journal to prune it.
const PRUNE_WAIT: Duration = Duration::from_secs(300);
/// How often `prune` asks before it takes a journal to have no keeper (every 0.5 s).
const NO_KEEPER_TRIES: usize = 6;
/// How long a journal must have gone unwritten for `prune` to take it over when no process
/// answered, unless told to (`take_over`): a keeper that did not answer may be cut off from
/// NATS for a while, or be a colony from before online prunes, rather than gone.
pub const QUIET: Duration = Duration::from_secs(30);
/// How the dedupe ids of a prune's own writes start, so that a prune after it can tell them
/// from a keeper's.
const PRUNE_WRITER: &str = "prune-";
/// Bytes of messages a replay asks for at once.
const REPLAY_BYTES: usize = 4 << 20;
/// Messages a replay asks for at once, when they are small.
const REPLAY_MESSAGES: usize = 4096;
/// A replay that receives nothing for this long gives up.
const REPLAY_WAIT: Duration = Duration::from_secs(30);
/// A journal is compacted when it is opened with more bytes than this in its stream (and
/// its snapshot would be under half of them), by default.
pub const COMPACT_ABOVE: u64 = 64 << 20;
/// Tasks' or decisions' rows in one write of a snapshot, at most (fewer when theirs are
/// larger than a write may be).
const SNAPSHOT_ROWS: usize = 512;
/// Reputations in one write of a snapshot.
const SNAPSHOT_CHUNK: usize = 8192;
/// The header naming a message's part of its frame: `1/1` for a frame in one message.
const PART_HEADER: &str = "Colony-Part";

/// Where a journal is and how it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// NATS servers, comma-separated.
    pub url: String,
    /// The journal's name: its stream is `COLONY_JOURNAL_<name>`.
    pub name: String,
    /// Copies the servers keep: 3 or 5; 1 for a single development server. A journal made
    /// before keeps its own.
    pub replicas: usize,
    /// Opened with more bytes than this in its stream, the journal is compacted: its state
    /// written whole after the last message, and every message before it purged (skipped
    /// when the snapshot would not be under half of them). [`COMPACT_ABOVE`] by default.
    pub compact_above: u64,
}

impl JournalOptions {
    /// Reads `nats://HOST:PORT[,nats://HOST:PORT...]/NAME[?replicas=N]` (or `tls://`), the
    /// form `--db` takes for a journal in NATS. Replicas default to 3.
    pub fn parse(location: &str) -> Result<Self, Error> {
        let (url, name, replicas) = parse_location(location, "--db", "journal")?;
        Ok(JournalOptions {
            url,
            name,
            replicas,
            compact_above: COMPACT_ABOVE,
        })
    }

    fn stream(&self) -> String {
        format!("COLONY_JOURNAL_{}", self.name)
    }

    fn subject(&self) -> String {
        format!("colony.journal.{}", self.name)
    }
}

/// Reads `nats://HOST:PORT[,nats://HOST:PORT...]/NAME[?replicas=N]` (or `tls://`), the form
/// `flag` takes for a `what` (a journal, a memory) in NATS: the servers, the name, and the
/// replicas (3 unless said).
pub(crate) fn parse_location(
    location: &str,
    flag: &str,
    what: &str,
) -> Result<(String, String, usize), Error> {
    let bad = |detail: &str| {
        Error::Settings(format!(
            "{flag} `{}`: {detail}; write nats://HOST:PORT/NAME, with ?replicas=1 for a single development server",
            colony_core::text::shorten(&shown(location), 200)
        ))
    };
    let (rest, query) = match location.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (location, None),
    };
    let replicas = match query {
        None => 3,
        Some(query) => match query.strip_prefix("replicas=").map(str::parse) {
            Some(Ok(n)) => n,
            _ => return Err(bad("the only setting after ? is replicas=N")),
        },
    };
    if !matches!(replicas, 1 | 3 | 5) {
        return Err(bad("replicas must be 3 or 5, or 1 for a single server"));
    }
    let Some((url, name)) = rest.rsplit_once('/') else {
        return Err(bad(&format!("no {what} name")));
    };
    for server in url.split(',') {
        let Some((scheme, address)) = server.trim().split_once("://") else {
            return Err(bad(&format!("no {what} name after the server")));
        };
        if !matches!(scheme, "nats" | "tls") {
            return Err(bad(&format!("{scheme}:// is not a NATS server")));
        }
        if address.is_empty() || address.contains('/') {
            return Err(bad("a server is HOST:PORT, and the name one word after it"));
        }
    }
    check_name(name, what).map_err(|e| bad(&e))?;
    Ok((url.to_owned(), name.to_owned(), replicas))
}

/// Whether `location` names a journal in NATS rather than a file.
pub fn in_nats(location: &str) -> bool {
    location.starts_with("nats://") || location.starts_with("tls://")
}

/// Deletes the journal's stream, with everything in it: for benchmarks and tests that make
/// journals of their own. A journal that is not there is not an error.
pub async fn delete(options: &JournalOptions) -> Result<(), Error> {
    let (_client, js) = crate::client::connect(&options.url, "--db").await?;
    match js.delete_stream(options.stream()).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::nats(format!("the journal {}", options.name), e)),
    }
}

/// Reads the journal without taking it over: its writes replayed into a journal in memory,
/// while the process that keeps it (if one does) goes on writing. For checks and tools;
/// blocks until read.
pub fn read(options: &JournalOptions) -> Result<MemoryJournal, Error> {
    let options = options.clone();
    on_own_thread("colony-journal-read", move || async move {
        let (mut writer, _) = Writer::connect(&options, false).await?;
        let last = writer.last_sequence().await?;
        let mirror = MemoryJournal::new();
        writer.replay(&mirror, &mut Replay::default(), last).await?;
        mirror.clear_stats();
        Ok(mirror)
    })
}

/// Runs the future `work` makes on a thread of its own, with a runtime of its own, and
/// waits for it: the blocking entry points serve tools, inside a runtime or not.
fn on_own_thread<T, F>(
    name: &'static str,
    work: impl FnOnce() -> F + Send + 'static,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, Error>>,
{
    let thread = colony_agents::spawner::Spawner::spawn_thread(name, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::nats("the journal's thread", e))?
            .block_on(work())
    })
    .map_err(|e| Error::nats("the journal's thread", e))?;
    thread
        .join()
        .map_err(|_| Error::nats("the journal's thread", "it panicked"))?
}

/// Most bytes of one message's body on the servers `client` is connected to: their
/// `max_payload`, less room for headers.
pub(crate) fn part_size(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(HEADROOM)
        .max(MIN_PART)
}

/// The stream `name` (made if it is not there) of a log of writes in order on `subject`: a
/// journal's or a memory's (`what`). File storage, kept until deleted, dedupe ids
/// remembered two minutes.
/// The log stream `name`: made as [`log_stream`] does when `make`, else found; `missing()`
/// when it is not there, and other failures named with `what`.
pub(crate) async fn open_log_stream(
    js: &jetstream::Context,
    make: bool,
    (name, subject): (String, String),
    replicas: usize,
    what: &str,
    missing: impl FnOnce() -> Error,
) -> Result<stream::Stream, Error> {
    if make {
        return log_stream(js, name, subject, replicas, what).await;
    }
    js.get_stream(name).await.map_err(|e| match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
        {
            missing()
        }
        _ => Error::nats(what, e),
    })
}

pub(crate) async fn log_stream(
    js: &jetstream::Context,
    name: String,
    subject: String,
    replicas: usize,
    what: &str,
) -> Result<stream::Stream, Error> {
    let config = stream::Config {
        name,
        description: Some(format!("colony: {what}")),
        subjects: vec![subject],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| {
        let hint = if replicas > 1 {
            " (fewer servers than replicas? give ?replicas=1 for a single server)"
        } else {
            ""
        };
        Error::nats(what, format!("{e}{hint}"))
    })
}

/// What a compaction did.
enum Compacted {
    /// Nothing: the snapshot would not have been worth it, or could not be written.
    Skipped,
    /// The snapshot of `size` bytes is written; what it replaces is gone if `purged`.
    Written { size: u64, purged: bool },
}

/// What [`prune`] did: tasks that lost their payloads and outputs, and the stream's bytes
/// before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Pruned by the process keeping the journal, which goes on; else this one took the
    /// journal over to prune it (no process kept it).
    pub by_keeper: bool,
}

/// Drops the payloads and outputs of the finished tasks `rule` selects (all but the newest
/// `keep_last`, those that ended longer ago than `older_than`; their rows, states and
/// errors stay, and the ballots of decisions still open are kept whole), as `colony prune`
/// does to a SQLite file. A task ended by a write from before the journal kept times has no
/// known end, and is not pruned by age. The journal must exist. A process keeping it is
/// asked to prune it (on `colony.journal-prune.<name>`) and goes on: it prunes its copy and
/// takes its state whole under its queue's lock (its writes wait meanwhile), appends that
/// snapshot after the writes queued before it, purges what is before it, and answers
/// (`Pruned::by_keeper`). When none keeps it (NATS says no one takes the request), it is
/// opened and claimed here, pruned, written whole as a snapshot, and everything before the
/// snapshot purged; that stops any process still writing it, so a journal written in the
/// last [`QUIET`] is taken over only with `take_over` (else refused, as `Error::Settings`,
/// saying so). Either way it is written anew even when no task was left to prune, so that a
/// prune whose purge failed is finished by the next. Blocks until done.
pub fn prune(
    options: &JournalOptions,
    rule: colony_journal::Retention,
    take_over: bool,
) -> Result<Pruned, Error> {
    let options = options.clone();
    on_own_thread("colony-journal-prune", move || async move {
        // Looked up first: a journal that is not there is not made by pruning it.
        let (mut probe, ()) = Writer::connect(&options, false).await?;
        let bytes_before = probe.state().await?.bytes;
        // A process keeping the journal prunes it itself, and goes on.
        let what = format!("pruning the journal {}", options.name);
        let until_ms = crate::now_ms() + u64::try_from(PRUNE_WAIT.as_millis()).unwrap_or(u64::MAX);
        let asked = serde_json::to_vec(&RetentionAsked::of(rule, until_ms)).unwrap_or_default();
        let client = probe.js.client();
        // No one taking it may be a keeper reconnecting to NATS: asked again for a few
        // seconds before the journal is taken to have none.
        let mut answered = None;
        for _ in 0..NO_KEEPER_TRIES {
            let request = async_nats::Request::new()
                .payload(Bytes::from(asked.clone()))
                .timeout(Some(PRUNE_WAIT));
            match client
                .send_request(prune_subject(&options.name), request)
                .await
            {
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => {
                    answered = Some(other);
                    break;
                }
            }
        }
        match answered.unwrap_or_else(|| {
            Err(async_nats::RequestError::new(
                async_nats::RequestErrorKind::NoResponders,
            ))
        }) {
            Ok(answer) => {
                let answer: serde_json::Value = serde_json::from_slice(&answer.payload)
                    .map_err(|e| Error::nats(&what, format!("its keeper answered {e}")))?;
                if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
                    return Err(Error::nats(
                        &what,
                        format!("the process keeping it could not: {error}"),
                    ));
                }
                let field = |name: &str| answer.get(name).and_then(|v| v.as_u64());
                // A keeper that could not read the stream's size after its purge says none:
                // read here, rather than told as 0.
                let bytes_after = match field("bytes_after") {
                    Some(bytes) => bytes,
                    None => probe.state().await?.bytes,
                };
                return Ok(Pruned {
                    tasks: field("pruned").unwrap_or(0),
                    bytes_before: field("bytes_before").unwrap_or(bytes_before),
                    bytes_after,
                    by_keeper: true,
                });
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(Error::nats(
                    &what,
                    format!(
                        "the process keeping it did not answer within {} s (it prunes as it writes; a prune of a large journal takes a while): look at its log, then run prune again",
                        PRUNE_WAIT.as_secs()
                    ),
                ));
            }
            Err(e) => return Err(Error::nats(&what, e)),
        }
        // No one answered: a journal written a moment ago may have a keeper that could not,
        // unless what was written last was a prune's.
        let state = probe.state().await?;
        let by_prune = match probe.stream.get_raw_message(state.last_sequence).await {
            Ok(last) => last
                .headers
                .get("Nats-Msg-Id")
                .is_some_and(|id| id.as_str().starts_with(PRUNE_WRITER)),
            Err(_) => false,
        };
        // The server's clock dates the write and the beat, this machine's is now: the check
        // assumes they roughly agree. A time dated ahead of now counts as just now.
        let never = state.messages == 0 || state.last_sequence == 0;
        let guarded = !take_over && !by_prune && !never;
        // An idle keeper says it lives: its last beat, if it beat.
        let beat = if guarded {
            keeper::read(&probe.js, &options.name).await
        } else {
            Ok(None)
        };
        keeper::may_take_over(
            &what,
            take_over,
            (never, by_prune),
            keeper::since(state.last_timestamp.unix_timestamp_nanos()),
            beat.as_ref()
                .map(|b| b.as_ref().map(|(_, said, age)| (said, *age)))
                .map_err(Clone::clone),
        )
        .map_err(Error::Settings)?;
        drop(probe);
        // Claimed only after the write the check saw, and while the beat it saw is the last,
        // unless told to take it over: a keeper that writes or beats meanwhile keeps it.
        let after = guarded.then(|| Unchanged {
            sequence: state.last_sequence,
            beat: beat.ok().flatten().map(|(revision, _, _)| revision),
        });
        let (mut writer, mirror) = Writer::open_as(&options, Some(PRUNE_WRITER), after).await?;
        let tasks = mirror.prune(rule);
        match writer.compact(&mirror, usize::MAX).await? {
            Compacted::Written { purged: true, .. } => {}
            Compacted::Written { purged: false, .. } => {
                return Err(Error::nats(
                    what,
                    "the pruned state is written, but the writes before it could not \
                             be purged: run prune again",
                ));
            }
            Compacted::Skipped => {
                return Err(Error::nats(
                    what,
                    "a line of its snapshot (one task's or decision's row, or every \
                             agent) is larger than a write may be: nothing was pruned",
                ));
            }
        }
        let bytes_after = writer.state().await?.bytes;
        Ok(Pruned {
            tasks,
            bytes_before,
            bytes_after,
            by_keeper: false,
        })
    })
}

/// A journal's name becomes a stream name and a subject token: letters, digits, `_` and
/// `-`, at most 64.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{what} name `{}`: use 1 to 64 letters, digits, `_` and `-`",
            colony_core::text::shorten(name, 80)
        ));
    }
    Ok(())
}

/// A journal in a JetStream stream. See the module's documentation.
#[derive(Debug)]
pub struct JetStreamJournal {
    /// Shared with the writer thread, which prunes it when asked (see [`prune`]).
    mirror: Arc<MemoryJournal>,
    /// Held while a write is applied to the mirror and queued, so that the stream gets the
    /// writes in the order the mirror took them (a prune's snapshot too).
    queue: Arc<Mutex<mpsc::UnboundedSender<Item>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Most bytes of one write: the parts a replay takes of one frame.
    max_write: usize,
    name: String,
}

/// What the journal and its writer thread share.
#[derive(Debug)]
struct Shared {
    /// Why the journal stopped taking writes, once it has.
    stopped: Mutex<Option<String>>,
    /// Writes queued and not yet durable (or failed).
    backlog: Backlog,
    /// Set by [`JetStreamJournal::halt`]: the writer appends nothing more.
    halted: AtomicBool,
}

impl Shared {
    fn stop(&self, reason: String) {
        lock(&self.stopped).get_or_insert(reason);
    }

    fn stopped(&self) -> Option<String> {
        lock(&self.stopped).clone()
    }
}

/// What the writer thread keeps of the journal besides the stream: what it shares with the
/// journal, its queue and its mirror (to prune when asked).
struct Keeping<'a> {
    shared: &'a Shared,
    queue: &'a Mutex<mpsc::UnboundedSender<Item>>,
    mirror: &'a MemoryJournal,
}

/// The subject the process keeping journal `name` takes prunes on.
fn prune_subject(name: &str) -> String {
    format!("colony.journal-prune.{name}")
}

/// A prune's rule as it crosses NATS.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RetentionAsked {
    older_than_ms: Option<u64>,
    keep_last: Option<u64>,
    /// When the one who asked gives up waiting (ms since the epoch): a prune taken later is
    /// not done.
    until_ms: Option<u64>,
}

impl RetentionAsked {
    fn of(rule: colony_journal::Retention, until_ms: u64) -> Self {
        Self {
            older_than_ms: rule
                .older_than
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            keep_last: rule.keep_last,
            until_ms: Some(until_ms),
        }
    }

    fn retention(&self) -> colony_journal::Retention {
        colony_journal::Retention {
            older_than: self.older_than_ms.map(Duration::from_millis),
            keep_last: self.keep_last,
        }
    }
}

/// An answer saying why a prune could not be done.
fn json_error(why: &str) -> serde_json::Value {
    serde_json::json!({ "error": why })
}

#[derive(Debug)]
struct Queued {
    line: Vec<u8>,
    done: oneshot::Sender<Result<(), colony_journal::Error>>,
}

/// What the writer thread appends, in the order queued: a write, or the state a prune left,
/// taken as the writes before it had made it.
#[derive(Debug)]
enum Item {
    Line(Queued),
    Snapshot(Snapshot),
}

/// A prune asked of the process keeping the journal: the pruned state's lines, to append
/// whole and purge what is before them, and whom to answer.
#[derive(Debug)]
struct Snapshot {
    state: State,
    tasks: u64,
    bytes_before: u64,
    reply: async_nats::Subject,
}

/// What a prune saw of a journal's keeper before opening it, which must still hold when it
/// claims it: the stream's last sequence, and the revision of the keeper's last beat.
struct Unchanged {
    sequence: u64,
    beat: Option<u64>,
}

/// What the writer thread reports once it opened the journal: the mirror, and the size of
/// one message's body.
type Opened = Result<(Arc<MemoryJournal>, usize), Error>;

impl JetStreamJournal {
    /// Opens the journal (making its stream if it is not there), replays it, and claims it
    /// for this process: a process that wrote it before can write no more. Blocks until
    /// then; call it before a runtime starts, or off its workers.
    pub fn open(options: JournalOptions) -> Result<Self, Error> {
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Opened>();
        let (queue, writes) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        let shared = Arc::new(Shared {
            stopped: Mutex::new(None),
            backlog: Backlog::new(QUEUE),
            halted: AtomicBool::new(false),
        });
        let name = options.name.clone();
        let writer = {
            let (shared, queue) = (shared.clone(), queue.clone());
            colony_agents::spawner::Spawner::spawn_thread("colony-journal", move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = opened_tx.send(Err(Error::nats("the journal's thread", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (mut writer, mirror) = match Writer::open(&options).await {
                        Ok((writer, mirror)) => (writer, Arc::new(mirror)),
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    // Asked to prune: answered here, in the order of the writes; taking
                    // the requests before the journal is reported open, so that a prune
                    // right after finds its keeper.
                    let prunes = match writer.js.client().subscribe(prune_subject(&options.name)).await {
                        Ok(prunes) => Some(prunes),
                        Err(e) => {
                            tracing::warn!(journal = options.name, error = %e, "The journal cannot be pruned while this process keeps it: prune takes it over.");
                            None
                        }
                    };
                    let _ = writer.js.client().flush().await;
                    if opened_tx.send(Ok((mirror.clone(), writer.part))).is_err() {
                        return;
                    }
                    // It says it lives from now on, with as many copies of that as the
                    // journal has (whatever the location asked).
                    let replicas = writer.stream.cached_info().config.num_replicas;
                    let mut beats = keeper::Beats::new(writer.js.clone(), &options.name, replicas, &writer.id);
                    beats.beat().await;
                    writer.beats = Some(beats);
                    let keeping = Keeping {
                        shared: &shared,
                        queue: &queue,
                        mirror: &mirror,
                    };
                    writer.run(writes, prunes, &keeping).await;
                });
            })
            .map_err(|e| Error::nats("the journal's thread", e))?
        };
        let (mirror, part) = opened_rx
            .recv()
            .map_err(|_| Error::nats("the journal's thread", "it ended while opening"))??;
        Ok(Self {
            mirror,
            queue,
            shared,
            writer: Mutex::new(Some(writer)),
            max_write: MAX_PARTS * part,
            name,
        })
    }

    /// Applies a write to the mirror with `apply` and queues `write` for the stream; both
    /// under one lock, so that the stream's order is the mirror's.
    fn write(&self, write: Write, apply: impl FnOnce(&MemoryJournal) -> Durable) -> Durable {
        let refused = |why: String| Durable::ready(Err(colony_journal::Error::Storage(why)));
        if !write.finite() {
            return refused(
                "a weight or score that is not a finite number cannot be journaled".into(),
            );
        }
        let line = write.line();
        if line.len() > self.max_write {
            return refused(format!(
                "a write of {} bytes is over the {} a journal in NATS takes at once",
                line.len(),
                self.max_write
            ));
        }
        let queue = lock(&self.queue);
        if let Some(reason) = self.shared.stopped() {
            return refused(reason);
        }
        // A journal in memory answers at once.
        if let Some(Err(e)) = apply(&self.mirror).try_result() {
            return Durable::ready(Err(e));
        }
        let (done, durable) = Durable::pending();
        self.shared.backlog.add();
        if queue.send(Item::Line(Queued { line, done })).is_err() {
            self.shared.backlog.took(1);
            return match self.shared.stopped() {
                Some(reason) => refused(reason),
                None => Durable::ready(Err(colony_journal::Error::Closed)),
            };
        }
        durable
    }

    /// The journal's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the writer where it is, as a crash would: what it has not appended yet is never
    /// appended. For tests of what survives a crash.
    #[doc(hidden)]
    pub fn halt(self) {
        self.shared.halted.store(true, Ordering::Release);
    }
}

impl Drop for JetStreamJournal {
    /// Closes the queue and waits for the writer to append what is in it.
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut *lock(&self.queue), closed));
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Journal for JetStreamJournal {
    fn next_task_id(&self) -> TaskId {
        self.mirror.next_task_id()
    }

    fn accept(&self, first: TaskId, specs: &[TaskSpec]) -> Durable {
        let write = Write::Accept {
            first: first.0,
            specs: Spec::all(specs),
        };
        self.write(write, |m| m.accept(first, specs))
    }

    fn record(&self, batch: Vec<Record>) -> Durable {
        let at_ms = crate::now_ms();
        let write = Write::Record {
            records: batch.iter().map(Rec::of).collect(),
            at_ms: Some(at_ms),
        };
        self.write(write, |m| m.record_at(batch, Some(at_ms)))
    }

    fn open_decision(&self, first: TaskId, specs: &[TaskSpec], opening: Opening) -> Durable {
        let write = Write::Open {
            first: first.0,
            specs: Spec::all(specs),
            opening: OpeningLine::of(&opening),
        };
        self.write(write, |m| m.open_decision(first, specs, opening))
    }

    fn ask(&self, decision: TaskId, first: TaskId, specs: &[TaskSpec], call: Call) -> Durable {
        let write = Write::Ask {
            decision: decision.0,
            first: first.0,
            specs: Spec::all(specs),
            call: call.clone(),
        };
        self.write(write, |m| m.ask(decision, first, specs, call))
    }

    fn close_decision(&self, id: TaskId, outcome: Arc<str>) -> Durable {
        let at_ms = crate::now_ms();
        let write = Write::Close {
            id: id.0,
            outcome: outcome.clone(),
            at_ms,
        };
        self.write(write, |m| m.close_decision_at(id, outcome, at_ms))
    }

    fn decided(&self, id: TaskId, spec: &TaskSpec, taken: Taken) -> Durable {
        let at_ms = crate::now_ms();
        let write = Write::Decided {
            id: id.0,
            spec: Spec::of(spec),
            opening: OpeningLine::of(&taken.opening),
            result: Outcome::of(&taken.result),
            outcome: taken.outcome.clone(),
            at_ms,
        };
        self.write(write, |m| m.decided_at(id, spec, taken, at_ms))
    }

    fn decision(&self, id: TaskId) -> Result<Option<DecisionRow>, colony_journal::Error> {
        self.mirror.decision(id)
    }

    fn decisions(
        &self,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>, colony_journal::Error> {
        self.mirror.decisions(before, limit)
    }

    fn open_decisions(&self) -> Result<Vec<DecisionRow>, colony_journal::Error> {
        self.mirror.open_decisions()
    }

    fn closed_ballots(&self, tasks: &[TaskId]) -> Result<Vec<TaskId>, colony_journal::Error> {
        self.mirror.closed_ballots(tasks)
    }

    fn task(&self, id: TaskId) -> Result<Option<TaskRow>, colony_journal::Error> {
        self.mirror.task(id)
    }

    fn counts(&self) -> Result<Counts, colony_journal::Error> {
        self.mirror.counts()
    }

    fn unfinished(&self) -> Result<Vec<TaskRow>, colony_journal::Error> {
        self.mirror.unfinished()
    }

    fn recent(
        &self,
        state: Option<TaskState>,
        before: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, colony_journal::Error> {
        self.mirror.recent(state, before, limit)
    }

    /// Moves the leases in the mirror, appends the move, and waits until it is durable:
    /// blocks the calling thread for the round trip.
    fn recover(&self) -> Result<Vec<TaskRow>, colony_journal::Error> {
        let mut unfinished = Vec::new();
        let durable = self.write(Write::Recover, |m| match m.recover() {
            Ok(rows) => {
                unfinished = rows;
                Durable::ready(Ok(()))
            }
            Err(e) => Durable::ready(Err(e)),
        });
        futures::executor::block_on(durable)?;
        Ok(unfinished)
    }

    fn stats(&self) -> Stats {
        self.mirror.stats()
    }

    fn record_agents(&self, tiers: &[String], agents: Vec<AgentRecord>, replace: bool) -> Durable {
        let write = Write::Agents {
            tiers: tiers.to_vec(),
            agents: agents.iter().map(AgentLine::of).collect(),
            replace,
        };
        self.write(write, |m| m.record_agents(tiers, agents, replace))
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, colony_journal::Error> {
        self.mirror.agents()
    }

    fn record_reputations(&self, rows: Vec<ReputationRow>) -> Durable {
        let write = Write::Reputations {
            rows: rows.iter().map(ReputationLine::of).collect(),
        };
        self.write(write, |m| m.record_reputations(rows))
    }

    fn reputations(&self) -> Result<Vec<ReputationRow>, colony_journal::Error> {
        self.mirror.reputations()
    }

    fn backlog(&self) -> Option<&Backlog> {
        Some(&self.shared.backlog)
    }

    fn writable(&self) -> Result<(), colony_journal::Error> {
        if let Some(reason) = self.shared.stopped() {
            return Err(colony_journal::Error::Storage(reason));
        }
        if lock(&self.queue).is_closed() {
            // The writer thread ended (it panicked): nothing more is appended.
            return Err(colony_journal::Error::Closed);
        }
        Ok(())
    }
}

/// The writer thread's side: the stream, and the sequence this process wrote last.
struct Writer {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    /// This process's id, in each message's dedupe id.
    id: String,
    /// The stream's last sequence as this process knows it: its own last message, once it
    /// claimed the journal.
    last: u64,
    /// Messages this process appended, for the dedupe ids.
    appended: u64,
    /// Most bytes of one message's body: the servers' `max_payload`, less room for headers.
    part: usize,
    shown: String,
    /// A prune's snapshot is queued and not yet written: a prune asked meanwhile is
    /// refused, rather than copy the whole state again for each request.
    pruning: bool,
    /// The process keeping the journal: where it says it lives, and when it last did.
    beats: Option<keeper::Beats>,
}

impl Writer {
    /// Connects, and makes the stream when `make` (else finds it).
    async fn connect(options: &JournalOptions, make: bool) -> Result<(Writer, ()), Error> {
        let (client, js) = crate::client::connect(&options.url, "--db").await?;
        let part = part_size(&client);
        let what = format!("the journal {}", options.name);
        let stream = open_log_stream(
            &js,
            make,
            (options.stream(), options.subject()),
            options.replicas,
            &what,
            || Error::NoJournal {
                url: options.url.clone(),
                stream: options.stream(),
            },
        )
        .await?;
        let writer = Writer {
            js,
            stream,
            subject: options.subject(),
            id: crate::client::random_id(),
            last: 0,
            appended: 0,
            part,
            shown: what,
            pruning: false,
            beats: None,
        };
        Ok((writer, ()))
    }

    /// The stream's state as its server has it now: its last sequence, its bytes.
    async fn state(&mut self) -> Result<async_nats::jetstream::stream::State, Error> {
        let info = self
            .stream
            .info()
            .await
            .map_err(|e| Error::nats(&self.shown, e))?;
        Ok(info.state.clone())
    }

    async fn last_sequence(&mut self) -> Result<u64, Error> {
        Ok(self.state().await?.last_sequence)
    }

    /// Opens the journal: replays it, then claims it with a message appended whatever the
    /// stream's last sequence (the process that wrote before, if it still writes, cannot
    /// append after it), then replays what that process appended before the claim.
    async fn open(options: &JournalOptions) -> Result<(Writer, MemoryJournal), Error> {
        Writer::open_as(options, None, None).await
    }

    /// [`Writer::open`], the writer's id (each of its messages' dedupe id starts with it)
    /// starting with `prefix` (a prune's writes say they are a prune's), and, with `after`,
    /// the claim appended only right after that sequence and while the keeper's last beat is
    /// the one seen: refused (`Error::Settings`) when another process appended or beat since.
    async fn open_as(
        options: &JournalOptions,
        prefix: Option<&str>,
        after: Option<Unchanged>,
    ) -> Result<(Writer, MemoryJournal), Error> {
        let (mut writer, ()) = Writer::connect(options, true).await?;
        if let Some(prefix) = prefix {
            writer.id = format!("{prefix}{}", writer.id);
        }
        let mirror = MemoryJournal::new();
        let mut replay = Replay::default();
        let last = writer.last_sequence().await?;
        writer.replay(&mirror, &mut replay, last).await?;
        let claim = Write::Claim {
            writer: writer.id.clone(),
            at_ms: crate::now_ms(),
        };
        if let Some(seen) = &after {
            // A beat gone since (its keeper closed, or the bucket forgot it) is no sign.
            let why = match keeper::read(&writer.js, &options.name).await {
                Ok(None) => None,
                Ok(Some((revision, _, _))) if Some(revision) == seen.beat => None,
                Ok(Some(_)) => Some("the process keeping it said it lives while this one opened it: it was left to it".to_owned()),
                Err(e) => Some(format!("whether the process keeping it lives could not be read again ({e})")),
            };
            if let Some(why) = why {
                return Err(Error::Settings(format!(
                    "{}: {why}; run prune again",
                    writer.shown
                )));
            }
        }
        let expect = after.map_or(Expect::Nothing, |seen| Expect::Last(seen.sequence));
        let claimed = match writer
            .publish(Bytes::from(claim.line()), "1/1", expect)
            .await
        {
            Ok(sequence) => sequence,
            Err(Append::Failed(e)) => return Err(Error::nats(&writer.shown, e)),
            // A claim that expects no sequence has no other process come before it; one
            // that expects `after` does when another appended since.
            Err(Append::Taken) => {
                return Err(Error::Settings(format!(
                    "{}: another process wrote it while this one opened it: the process keeping it is back, so it was left to it; run prune again",
                    writer.shown
                )));
            }
        };
        writer.replay(&mirror, &mut replay, claimed - 1).await?;
        writer.last = claimed;
        mirror.clear_stats();
        let bytes = writer.state().await?.bytes;
        if bytes > options.compact_above {
            // Worth it only when the snapshot is under half of what it replaces.
            let budget = usize::try_from(bytes / 2).unwrap_or(usize::MAX);
            if let Compacted::Written { size, purged: true } =
                writer.compact(&mirror, budget).await?
            {
                tracing::info!(
                    journal = options.name,
                    before = bytes,
                    after = size,
                    "Compacted the journal: its state written whole, the writes before it purged."
                );
            }
        }
        Ok((writer, mirror))
    }

    /// Writes the state of `mirror` after the last message, as writes that set it whole
    /// (rows, decisions, agents, reputations), then purges every message before them: the
    /// stream then holds the snapshot and what comes after it. Read back over the messages
    /// before it (the purge did not happen: this process died first), the snapshot sets
    /// what they made, so the journal is the same either way. Skipped when the snapshot
    /// would pass `budget` bytes, or one of its lines a message's parts.
    async fn compact(&mut self, mirror: &MemoryJournal, budget: usize) -> Result<Compacted, Error> {
        let failed = |e: colony_journal::Error| Error::nats("compacting the journal", e);
        let Some(lines) = snapshot(mirror, budget, MAX_PARTS * self.part).map_err(failed)? else {
            return Ok(Compacted::Skipped);
        };
        let size: u64 = lines.iter().map(|l| l.len() as u64).sum();
        let start = self
            .append_lines(lines)
            .await
            .map_err(|e| Error::nats(&self.shown, e.to_string()))?;
        // The journal is whole with or without the purge: a failed one is tried at the next
        // open, and this one goes on.
        if let Err(e) = self.stream.purge().sequence(start).await {
            tracing::warn!(journal = self.shown, error = %e, "The snapshot is written but what it replaces could not be purged; the next open tries again.");
            return Ok(Compacted::Written {
                size,
                purged: false,
            });
        }
        Ok(Compacted::Written { size, purged: true })
    }

    /// Appends a snapshot's lines, as few messages as they fit in; the sequence of the first.
    async fn append_lines(&mut self, lines: Vec<Vec<u8>>) -> Result<u64, Append> {
        let start = self.last + 1;
        let not_halted = AtomicBool::new(false);
        let mut frame = Vec::new();
        for line in lines {
            if !frame.is_empty() && frame.len() + line.len() > self.part {
                let full = Bytes::from(std::mem::take(&mut frame));
                self.append(full, &not_halted).await?;
            }
            frame.extend_from_slice(&line);
        }
        if !frame.is_empty() {
            self.append(Bytes::from(frame), &not_halted).await?;
        }
        Ok(start)
    }

    /// Applies the messages after `self.last` up to `until` to `mirror`.
    async fn replay(
        &mut self,
        mirror: &MemoryJournal,
        replay: &mut Replay,
        until: u64,
    ) -> Result<(), Error> {
        if until <= self.last {
            return Ok(());
        }
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.last + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats(&self.shown, e))?;
        let name = consumer.cached_info().name.clone();
        // Bounded in bytes: asked for whole, a large journal sent faster than it is applied
        // makes the server take this client for a slow consumer (past 64 MiB pending, by
        // default) and cut it off. At least two messages, however large they may be.
        let batch = REPLAY_BYTES.max(2 * (self.part + HEADROOM));
        let messages = consumer
            .stream()
            .max_bytes_per_batch(batch)
            .max_messages_per_batch(REPLAY_MESSAGES)
            .messages()
            .await
            .map_err(|e| Error::nats(&self.shown, e));
        let replayed = match messages {
            Ok(messages) => self.apply(messages, mirror, replay, until).await,
            Err(e) => Err(e),
        };
        // Best effort: an ephemeral consumer left behind goes after a minute unused.
        let _ = self.stream.delete_consumer(&name).await;
        replayed
    }

    /// Applies `messages` to `mirror` until `until`: [`Writer::replay`]'s loop.
    async fn apply(
        &mut self,
        mut messages: consumer::pull::Stream,
        mirror: &MemoryJournal,
        replay: &mut Replay,
        mut until: u64,
    ) -> Result<(), Error> {
        while self.last < until {
            let message = match tokio::time::timeout(REPLAY_WAIT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(Error::nats(&self.shown, e)),
                Ok(None) => break,
                Err(_) => {
                    return Err(Error::nats(
                        &self.shown,
                        format!(
                            "no message after {} of {until} for {} s while replaying",
                            self.last,
                            REPLAY_WAIT.as_secs()
                        ),
                    ));
                }
            };
            let info = message.info().map_err(|e| Error::nats(&self.shown, e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence > until {
                if sequence == self.last + 1 {
                    break;
                }
                // Messages were purged under this replay (another process compacted the
                // journal): its snapshot lies ahead, past where this replay meant to stop.
                until = self.last_sequence().await?;
                if sequence > until {
                    break;
                }
            }
            let part = message
                .headers
                .as_ref()
                .and_then(|h| h.get(PART_HEADER))
                .map(|v| v.as_str().to_owned());
            let frame = replay
                .part(part.as_deref(), message.payload.clone())
                .map_err(|e| corrupt(&self.shown, sequence, &e))?;
            if let Some(frame) = frame {
                for write in codec::lines(&frame).map_err(|e| corrupt(&self.shown, sequence, &e))? {
                    write
                        .apply(mirror)
                        .map_err(|e| corrupt(&self.shown, sequence, &e.to_string()))?;
                }
            }
            self.last = sequence;
            if pending == 0 {
                // Nothing more in the stream (messages up to `until` were removed).
                break;
            }
        }
        self.last = self.last.max(until);
        Ok(())
    }

    /// Appends the writes queued, a group commit per message, until the journal is
    /// dropped; after a write that cannot be made durable, or once another process took
    /// the journal over, fails every later one. Prunes asked on `prunes` are taken in the
    /// writes' order (see [`Writer::take_prune`]).
    async fn run(
        &mut self,
        mut writes: mpsc::UnboundedReceiver<Item>,
        mut prunes: Option<async_nats::Subscriber>,
        keeping: &Keeping<'_>,
    ) {
        let shared = keeping.shared;
        let max_frame = MAX_PARTS * self.part;
        let mut carried: Option<Item> = None;
        loop {
            // A prune asked is taken at once, even while writes keep coming.
            if let Some(Some(asked)) = prunes.as_mut().and_then(|p| p.next().now_or_never()) {
                if !self.take_prune(asked, keeping).await {
                    break;
                }
                continue;
            }
            let first = match carried.take() {
                Some(first) => first,
                None => {
                    let asked = async {
                        match prunes.as_mut() {
                            Some(prunes) => prunes.next().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        Some(asked) = asked => {
                            if !self.take_prune(asked, keeping).await {
                                break;
                            }
                            continue;
                        }
                        first = writes.recv() => match first {
                            Some(first) => first,
                            None => break,
                        },
                        () = tokio::time::sleep(WATCH_EVERY) => {
                            // Idle: a process that took the journal over says so here,
                            // before this one's next write.
                            if let Err(reason) = self.watch().await {
                                shared.stop(reason);
                                break;
                            }
                            if let Some(beats) = self.beats.as_mut() {
                                beats.beat().await;
                            }
                            continue;
                        }
                    }
                }
            };
            let first = match first {
                Item::Line(first) => first,
                Item::Snapshot(snapshot) => {
                    if !self.write_snapshot(snapshot, shared).await {
                        break;
                    }
                    continue;
                }
            };
            if shared.halted.load(Ordering::Acquire) {
                shared.backlog.took(1);
                drop(first);
                break;
            }
            let mut frame = first.line;
            let mut done = vec![first.done];
            while frame.len() < self.part {
                let Ok(next) = writes.try_recv() else { break };
                let next = match next {
                    Item::Line(next) => next,
                    // After the writes before it: this frame first.
                    snapshot @ Item::Snapshot(_) => {
                        carried = Some(snapshot);
                        break;
                    }
                };
                if frame.len() + next.line.len() > max_frame {
                    carried = Some(Item::Line(next));
                    break;
                }
                frame.extend_from_slice(&next.line);
                done.push(next.done);
            }
            let result = self.append(Bytes::from(frame), &shared.halted).await;
            let result = result.map_err(|e| {
                let reason = match e {
                    Append::Taken => format!(
                        "{} was taken over by another process: this one writes no more",
                        self.shown
                    ),
                    Append::Failed(e) => format!("{}: {e}", self.shown),
                };
                tracing::error!(reason, "The journal stopped taking writes.");
                shared.stop(reason.clone());
                colony_journal::Error::Storage(reason)
            });
            shared.backlog.took(done.len());
            for done in done {
                let _ = done.send(result.clone());
            }
            if result.is_err() {
                break;
            }
        }
        // Prunes asked and not taken are answered: this process keeps the journal no more.
        if let Some(mut prunes) = prunes {
            let _ = prunes.unsubscribe().await;
            while let Some(Some(asked)) = prunes.next().now_or_never() {
                if let Some(reply) = asked.reply {
                    let why = shared
                        .stopped()
                        .unwrap_or_else(|| "the journal closed".into());
                    self.answer(&reply, json_error(&why)).await;
                }
            }
        }
        // Closed, not crashed nor taken over: no keeper lives any more.
        if let Some(beats) = self.beats.take()
            && !shared.halted.load(Ordering::Acquire)
            && shared.stopped().is_none()
        {
            beats.stop().await;
        }
        // Whatever came after a failure (or was queued when it happened) fails too.
        writes.close();
        let queued = carried
            .into_iter()
            .chain(std::iter::from_fn(|| writes.try_recv().ok()));
        let reason = shared.stopped();
        let failed = || match &reason {
            Some(reason) => colony_journal::Error::Storage(reason.clone()),
            None => colony_journal::Error::Closed,
        };
        for queued in queued {
            match queued {
                Item::Line(queued) => {
                    shared.backlog.took(1);
                    let _ = queued.done.send(Err(failed()));
                }
                Item::Snapshot(snapshot) => {
                    self.answer(&snapshot.reply, json_error(&failed().to_string()))
                        .await;
                }
            }
        }
    }

    /// A prune asked by `colony prune` (`request`: a [`Retention`](colony_journal::Retention)
    /// as JSON): the mirror pruned and its state copied under the queue's lock, so that it
    /// is the state the writes queued before it made, then queued after them
    /// ([`Writer::write_snapshot`] writes it out, appends it and answers). The runtime's
    /// writes wait for the lock meanwhile: the prune of the mirror and a copy of its rows,
    /// which share their payloads and outputs. False when this process no longer holds the
    /// journal (it then stops, unanswered: the one that holds it answers).
    async fn take_prune(&mut self, request: async_nats::Message, keeping: &Keeping<'_>) -> bool {
        let Some(reply) = request.reply.clone() else {
            return true;
        };
        let asked = match serde_json::from_slice::<RetentionAsked>(&request.payload) {
            Ok(asked) => asked,
            Err(e) => {
                self.answer(&reply, json_error(&format!("a prune asked as {e}")))
                    .await;
                return true;
            }
        };
        // Given up on by the one who asked: not done behind its back.
        if asked.until_ms.is_some_and(|until| until <= crate::now_ms()) {
            return true;
        }
        // One at a time: each copies the whole state under the queue's lock.
        if self.pruning {
            self.answer(
                &reply,
                json_error(
                    "a prune of this journal is under way: run prune again once it has ended",
                ),
            )
            .await;
            return true;
        }
        // A process another took the journal over from finds out here, rather than prune
        // its stale copy and answer for a journal it no longer holds.
        if let Err(reason) = self.watch().await {
            keeping.shared.stop(reason);
            return false;
        }
        let bytes_before = match self.state().await {
            Ok(state) => state.bytes,
            Err(e) => {
                self.answer(&reply, json_error(&e.to_string())).await;
                return true;
            }
        };
        let queued = {
            let queue = lock(keeping.queue);
            if let Some(reason) = keeping.shared.stopped() {
                Err(reason)
            } else if queue.is_closed() {
                Err("the journal is closing".to_owned())
            } else {
                let tasks = keeping.mirror.prune(asked.retention());
                match State::of(keeping.mirror) {
                    Ok(state) => queue
                        .send(Item::Snapshot(Snapshot {
                            state,
                            tasks,
                            bytes_before,
                            reply: reply.clone(),
                        }))
                        .map(|()| self.pruning = true)
                        .map_err(|_| "the journal is closing".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if let Err(why) = queued {
            self.answer(&reply, json_error(&why)).await;
        }
        true
    }

    /// Writes a prune's snapshot out and appends it after the writes queued before it,
    /// purges what is before it, and answers; false when it could not be appended (the
    /// journal then stops, as after any write that cannot be made durable).
    async fn write_snapshot(&mut self, snapshot: Snapshot, shared: &Shared) -> bool {
        self.pruning = false;
        let Snapshot {
            state,
            tasks,
            bytes_before,
            reply,
        } = snapshot;
        if shared.halted.load(Ordering::Acquire) {
            self.answer(&reply, json_error("the journal halted")).await;
            return false;
        }
        let Some(lines) = state.lines(usize::MAX, MAX_PARTS * self.part) else {
            // The mirror is pruned and the stream is not: its copies differ in the payloads
            // and outputs of finished tasks until this process opens it again.
            self.answer(
                &reply,
                json_error("a line of its snapshot (one task's or decision's row, or every agent) is larger than a write may be: nothing was purged, and this process's copy (not the journal's) lost the payloads and outputs it pruned"),
            )
            .await;
            return true;
        };
        let start = match self.append_lines(lines).await {
            Ok(start) => start,
            Err(e) => {
                let reason = format!("{}: {e}", self.shown);
                tracing::error!(reason, "The journal stopped taking writes.");
                shared.stop(reason.clone());
                self.answer(&reply, json_error(&reason)).await;
                return false;
            }
        };
        let answer = match self.stream.purge().sequence(start).await {
            Ok(_) => serde_json::json!({
                "pruned": tasks,
                "bytes_before": bytes_before,
                "bytes_after": self.state().await.ok().map(|state| state.bytes),
            }),
            // Whole either way: the next prune, or the next open past its size, purges.
            Err(e) => json_error(&format!(
                "the pruned state is written, but the writes before it could not be purged ({e}): run prune again"
            )),
        };
        self.answer(&reply, answer).await;
        true
    }

    /// Answers a prune asked on `reply`.
    async fn answer(&self, reply: &async_nats::Subject, answer: serde_json::Value) {
        let client = self.js.client();
        if let Err(e) = client
            .publish(reply.clone(), Bytes::from(answer.to_string()))
            .await
        {
            tracing::warn!(journal = self.shown, error = %e, "A prune's answer was not sent.");
        }
        let _ = client.flush().await;
    }

    /// Whether this process still holds the journal: no message after its last.
    async fn watch(&mut self) -> Result<(), String> {
        match self.last_sequence().await {
            Ok(last) if last != self.last => {
                let reason = format!(
                    "{} was taken over by another process: this one writes no more",
                    self.shown
                );
                tracing::error!(reason, "The journal stopped taking writes.");
                Err(reason)
            }
            // NATS unreachable: the next write finds out how long for.
            _ => Ok(()),
        }
    }

    /// Appends a frame, in parts if it is larger than a message may be, each part expecting
    /// the last sequence this process knows.
    async fn append(&mut self, frame: Bytes, halted: &AtomicBool) -> Result<(), Append> {
        let parts = frame.len().div_ceil(self.part).max(1);
        for i in 0..parts {
            if halted.load(Ordering::Acquire) {
                return Err(Append::Failed("halted".into()));
            }
            let part = frame.slice(i * self.part..((i + 1) * self.part).min(frame.len()));
            let expect = Expect::Last(self.last);
            self.last = self
                .publish(part, &format!("{}/{parts}", i + 1), expect)
                .await?;
        }
        Ok(())
    }

    /// Publishes one message and returns its sequence, trying again while NATS cannot take
    /// it, with the same dedupe id.
    async fn publish(&mut self, body: Bytes, part: &str, expect: Expect) -> Result<u64, Append> {
        self.appended += 1;
        let id = format!("{}-{}", self.id, self.appended);
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let mut message = jetstream::message::PublishMessage::build()
                .payload(body.clone())
                .message_id(&id)
                .header(PART_HEADER, part);
            if let Expect::Last(last) = expect {
                message = message.expected_last_sequence(last);
            }
            let sent = match self.js.send_publish(self.subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let error = match sent {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => e,
            };
            match (error.kind(), expect) {
                (PublishErrorKind::WrongLastSequence, Expect::Last(last)) => {
                    // Either an earlier try of this message landed with its answer lost,
                    // or another process appended: the message after `last` says which.
                    match self.stream.get_raw_message(last + 1).await {
                        Ok(next) => {
                            let ours = next
                                .headers
                                .get(async_nats::header::NATS_MESSAGE_ID)
                                .is_some_and(|v| v.as_str() == id);
                            return if ours {
                                Ok(next.sequence)
                            } else {
                                Err(Append::Taken)
                            };
                        }
                        // Gone: purged by another process's compaction, so another
                        // process holds the journal.
                        Err(_) => return Err(Append::Taken),
                    }
                }
                (PublishErrorKind::MaxPayloadExceeded, _) => {
                    return Err(Append::Failed(error.to_string()));
                }
                // No responders ("stream not found") is what a stream just made answers
                // until its group elects a leader, and a stream whose leader died: tried again.
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Append::Failed(format!(
                    "NATS did not take a write for {} s: {error}",
                    RETRY_FOR.as_secs()
                )));
            }
            tracing::warn!(%error, "A journal write failed; trying again.");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The state of `mirror` as lines of writes that set it whole: every agent in one line
/// that replaces those held, reputations (the latest of each agent wins), tasks' rows in
/// ascending ids, decisions by id. Each sets what the history made, and nothing the
/// history made is ever removed but agents, so read over the history, over any part of
/// it, or alone, and cut short anywhere after its first frame, the journal comes out the
/// same. `None` when its lines would pass `budget` bytes, or one of them `max_line`.
fn snapshot(
    mirror: &MemoryJournal,
    budget: usize,
    max_line: usize,
) -> Result<Option<Vec<Vec<u8>>>, colony_journal::Error> {
    Ok(State::of(mirror)?.lines(budget, max_line))
}

/// The state of a mirror, copied as it stood (rows and decisions share their payloads and
/// outputs with it): cheap to take under a lock, written out as lines after.
#[derive(Debug)]
struct State {
    agents: Vec<AgentRecord>,
    reputations: Vec<ReputationRow>,
    rows: Vec<TaskRow>,
    decisions: Vec<DecisionRow>,
}

impl State {
    fn of(mirror: &MemoryJournal) -> Result<Self, colony_journal::Error> {
        let mut rows = mirror.recent(None, None, usize::MAX)?;
        rows.reverse();
        let mut decisions = mirror.decisions(None, usize::MAX)?;
        decisions.reverse();
        Ok(Self {
            agents: mirror.agents()?,
            reputations: mirror.reputations()?,
            rows,
            decisions,
        })
    }

    /// Its lines (see [`snapshot`]); `None` past `budget` bytes, or a line past `max_line`.
    fn lines(self, budget: usize, max_line: usize) -> Option<Vec<Vec<u8>>> {
        let mut lines = Lines {
            lines: Vec::new(),
            size: 0,
            budget,
            max_line,
        };
        // In one line, so in one frame, which is read back whole or not at all: it replaces
        // the agents the history (or a part of it) recorded.
        let agents = Write::Agents {
            tiers: Vec::new(),
            agents: self.agents.iter().map(AgentLine::of).collect(),
            replace: true,
        };
        if !lines.push(agents.line()) {
            return None;
        }
        let write = |chunk: &[ReputationRow]| Write::Reputations {
            rows: chunk.iter().map(ReputationLine::of).collect(),
        };
        if !lines.chunked(&self.reputations, SNAPSHOT_CHUNK, &write) {
            return None;
        }
        let write = |chunk: &[TaskRow]| Write::Rows {
            rows: chunk.iter().map(RowLine::of).collect(),
        };
        if !lines.chunked(&self.rows, SNAPSHOT_ROWS, &write) {
            return None;
        }
        drop(self.rows);
        let write = |chunk: &[DecisionRow]| Write::Decisions {
            rows: chunk.iter().map(DecisionLine::of).collect(),
        };
        if !lines.chunked(&self.decisions, SNAPSHOT_ROWS, &write) {
            return None;
        }
        Some(lines.lines)
    }
}

/// A snapshot's lines as they are made, at most `budget` bytes in all and `max_line` each.
struct Lines {
    lines: Vec<Vec<u8>>,
    size: usize,
    budget: usize,
    max_line: usize,
}

impl Lines {
    /// Adds `line`; false when it passes a bound.
    fn push(&mut self, line: Vec<u8>) -> bool {
        self.size += line.len();
        let fits = self.size <= self.budget && line.len() <= self.max_line;
        self.lines.push(line);
        fits
    }

    /// Adds `items` as lines of `write`, in order, up to `most` items a line and fewer when
    /// theirs would pass `max_line` (large payloads or outputs): a chunk too large is halved
    /// until it fits. False when one item alone passes it, or all the budget.
    fn chunked<T>(&mut self, items: &[T], most: usize, write: &impl Fn(&[T]) -> Write) -> bool {
        items.chunks(most).all(|chunk| self.halved(chunk, write))
    }

    fn halved<T>(&mut self, chunk: &[T], write: &impl Fn(&[T]) -> Write) -> bool {
        let line = write(chunk).line();
        if line.len() <= self.max_line || chunk.len() <= 1 {
            return self.push(line);
        }
        let (first, second) = chunk.split_at(chunk.len() / 2);
        self.halved(first, write) && self.halved(second, write)
    }
}

/// What a publish expects of the stream.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Its last sequence is this: no other process appended since.
    Last(u64),
    /// Nothing: a claim lands wherever the stream is.
    Nothing,
}

/// Why an append failed.
#[derive(Debug)]
enum Append {
    /// Another process wrote to the journal since this one's last write.
    Taken,
    Failed(String),
}

impl std::fmt::Display for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Append::Taken => f.write_str("taken over by another process"),
            Append::Failed(e) => f.write_str(e),
        }
    }
}

fn corrupt(journal: &str, sequence: u64, detail: &str) -> Error {
    Error::nats(
        journal,
        format!(
            "message {sequence} cannot be read back ({detail}); it was not written by this version of colony, or the stream was changed by hand"
        ),
    )
}

/// The parts of a frame read so far.
#[derive(Debug, Default)]
struct Replay {
    parts: Vec<Bytes>,
    expected: usize,
}

impl Replay {
    /// Takes the next message's body and its `Colony-Part` header (`i/n`); returns a frame
    /// once its last part came. A frame left incomplete (its writer died between two
    /// parts, or another process's claim came between them) is dropped.
    fn part(&mut self, header: Option<&str>, body: Bytes) -> Result<Option<Bytes>, String> {
        let (i, n) = header
            .and_then(|h| h.split_once('/'))
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .filter(|&(i, n)| 1 <= i && i <= n && n <= MAX_PARTS)
            .ok_or_else(|| format!("its {PART_HEADER} header is {header:?}, not i/n"))?;
        if i == 1 {
            self.parts.clear();
            self.expected = n;
        } else if self.expected != n || self.parts.len() + 1 != i {
            // Not the next part of the frame being read: the rest of an abandoned frame.
            self.parts.clear();
            self.expected = 0;
            return Ok(None);
        }
        self.parts.push(body);
        if i < n {
            return Ok(None);
        }
        let frame = if self.parts.len() == 1 {
            self.parts.pop().unwrap_or_default()
        } else {
            let mut whole = Vec::with_capacity(self.parts.iter().map(Bytes::len).sum());
            for part in self.parts.drain(..) {
                whole.extend_from_slice(&part);
            }
            Bytes::from(whole)
        };
        self.expected = 0;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::AgentId;
    use colony_journal::Seat;

    /// Writes that make a journal with every kind of state: agents recorded, replaced and
    /// added to; reputations updated; tasks retried, ended, recovered; a decision with a
    /// later call, closed, and one left open.
    fn history() -> Vec<Write> {
        let agent = |id: u32, parent: Option<u32>| AgentRecord {
            id: AgentId(id),
            tier: u8::from(parent.is_some()),
            parent: parent.map(AgentId),
            pool: parent.map(|_| 0),
        };
        let seats: Vec<Seat> = (0..2)
            .map(|i| Seat {
                agent: AgentId(10 + i),
                pool: 0,
                weight: 1.0,
            })
            .collect();
        let opening = Opening {
            options: "{}".into(),
            seats: seats.clone(),
            asked: 2,
            opened_at_ms: 1,
        };
        let specs = |n: usize| Spec::all(&vec![TaskSpec::with_payload("{}"); n]);
        let reputation = |agent: u32, score: f64| ReputationRow {
            agent: AgentId(agent),
            pool: 0,
            score,
            observations: 1,
        };
        let records = |records: Vec<Record>| Write::Record {
            records: records.iter().map(Rec::of).collect(),
            at_ms: Some(1_700_000_000_000),
        };
        vec![
            Write::Agents {
                tiers: vec!["top".into(), "worker".into()],
                agents: [agent(1, None), agent(2, Some(1)), agent(3, Some(1))]
                    .iter()
                    .map(AgentLine::of)
                    .collect(),
                replace: true,
            },
            Write::Accept {
                first: 1,
                specs: specs(3),
            },
            records(vec![
                Record::Started {
                    task: TaskId(1),
                    attempt: 1,
                    agent: AgentId(2),
                },
                Record::Failed {
                    task: TaskId(1),
                    attempt: 1,
                    error: "boom".into(),
                    next: TaskState::Queued,
                },
                Record::Started {
                    task: TaskId(2),
                    attempt: 1,
                    agent: AgentId(3),
                },
                Record::Committed {
                    task: TaskId(2),
                    attempt: 1,
                    output: "two".into(),
                },
            ]),
            Write::Reputations {
                rows: [reputation(2, 0.25), reputation(3, 0.5)]
                    .iter()
                    .map(ReputationLine::of)
                    .collect(),
            },
            // A new process records its own hierarchy: agent 3 is gone.
            Write::Agents {
                tiers: Vec::new(),
                agents: [agent(1, None), agent(2, Some(1))]
                    .iter()
                    .map(AgentLine::of)
                    .collect(),
                replace: true,
            },
            Write::Recover,
            Write::Open {
                first: 4,
                specs: specs(2),
                opening: OpeningLine::of(&opening),
            },
            Write::Ask {
                decision: 4,
                first: 6,
                specs: specs(1),
                call: Call {
                    round: 1,
                    role: colony_journal::Role::Judge,
                    asked: seats[..1].to_vec(),
                    at_ms: 2,
                },
            },
            Write::Close {
                id: 4,
                outcome: "{\"yes\":1}".into(),
                at_ms: 3,
            },
            Write::Open {
                first: 7,
                specs: specs(2),
                opening: OpeningLine::of(&opening),
            },
            Write::Reputations {
                rows: [reputation(2, 0.75)]
                    .iter()
                    .map(ReputationLine::of)
                    .collect(),
            },
            Write::Agents {
                tiers: Vec::new(),
                agents: [agent(4, Some(1))].iter().map(AgentLine::of).collect(),
                replace: false,
            },
            records(vec![
                Record::Started {
                    task: TaskId(1),
                    attempt: 5,
                    agent: AgentId(4),
                },
                Record::Committed {
                    task: TaskId(1),
                    attempt: 5,
                    output: vec![0xff, 1].into(),
                },
                Record::Cancelled { task: TaskId(3) },
            ]),
        ]
    }

    fn replayed(writes: impl IntoIterator<Item = Write>) -> MemoryJournal {
        let mirror = MemoryJournal::new();
        for write in writes {
            write.apply(&mirror).unwrap();
        }
        mirror
    }

    fn same(a: &MemoryJournal, b: &MemoryJournal, what: &str) {
        assert_eq!(a.next_task_id(), b.next_task_id(), "{what}");
        assert_eq!(a.counts().unwrap(), b.counts().unwrap(), "{what}");
        assert_eq!(
            a.recent(None, None, usize::MAX).unwrap(),
            b.recent(None, None, usize::MAX).unwrap(),
            "{what}"
        );
        assert_eq!(
            a.decisions(None, usize::MAX).unwrap(),
            b.decisions(None, usize::MAX).unwrap(),
            "{what}"
        );
        assert_eq!(a.agents().unwrap(), b.agents().unwrap(), "{what}");
        assert_eq!(a.reputations().unwrap(), b.reputations().unwrap(), "{what}");
    }

    #[test]
    fn a_snapshot_read_alone_over_its_history_or_any_part_of_it_or_cut_short_is_the_journal() {
        let whole = replayed(history());
        let lines = snapshot(&whole, usize::MAX, usize::MAX).unwrap().unwrap();
        let writes = || -> Vec<Write> {
            lines
                .iter()
                .flat_map(|l| codec::lines(l).unwrap())
                .collect()
        };
        same(&whole, &replayed(writes()), "alone");
        let n = history().len();
        for k in 0..=n {
            let over = history().into_iter().take(k).chain(writes());
            same(
                &whole,
                &replayed(over),
                &format!("over the first {k} writes"),
            );
        }
        // Cut short after its first line (a frame of its own or the first frame's start).
        for cut in 1..=lines.len() {
            let part = writes().into_iter().take(cut);
            same(
                &whole,
                &replayed(history().into_iter().chain(part)),
                &format!("cut at {cut}"),
            );
        }
        // Too large for the budget: none.
        assert!(snapshot(&whole, 10, usize::MAX).unwrap().is_none());
    }

    #[test]
    fn a_snapshot_of_large_rows_has_lines_of_fewer_rows_each_under_the_bound() {
        let whole = MemoryJournal::new();
        let payload = "p".repeat(10_000);
        let specs = vec![TaskSpec::with_payload(payload); 300];
        futures::executor::block_on(whole.accept(TaskId(1), &specs)).unwrap();
        let bound = 64 << 10;
        let lines = snapshot(&whole, usize::MAX, bound)
            .unwrap()
            .expect("it fits");
        assert!(lines.iter().all(|l| l.len() <= bound));
        assert!(lines.len() > 300 * 10_000 / bound, "{} lines", lines.len());
        let writes = lines.iter().flat_map(|l| codec::lines(l).unwrap());
        same(&whole, &replayed(writes), "in lines of fewer rows");
        // One row alone larger than a line may be: none.
        assert!(snapshot(&whole, usize::MAX, 5_000).unwrap().is_none());
    }

    #[test]
    fn a_location_names_the_servers_the_journal_and_its_copies() {
        let o = JournalOptions::parse("nats://a:4222,nats://b:4222/orders?replicas=5").unwrap();
        assert_eq!(
            (o.url.as_str(), o.name.as_str(), o.replicas),
            ("nats://a:4222,nats://b:4222", "orders", 5)
        );
        assert_eq!(
            JournalOptions::parse("nats://a:4222/j").unwrap().replicas,
            3
        );
        for bad in [
            "nats://a:4222",
            "nats://a:4222/",
            "nats://a:4222/a.b",
            "nats://a:4222/j?replicas=2",
            "nats://a:4222/j?sync=no",
        ] {
            let err = JournalOptions::parse(bad).unwrap_err().to_string();
            assert!(err.contains("--db"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_frame_comes_back_from_its_parts_and_an_abandoned_one_is_skipped() {
        let mut r = Replay::default();
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(r.part(Some("1/1"), b("whole")).unwrap(), Some(b("whole")));
        assert_eq!(r.part(Some("1/3"), b("ab")).unwrap(), None);
        assert_eq!(r.part(Some("2/3"), b("cd")).unwrap(), None);
        // Its writer died: the next frame starts.
        assert_eq!(r.part(Some("1/2"), b("x")).unwrap(), None);
        assert_eq!(r.part(Some("2/2"), b("y")).unwrap(), Some(b("xy")));
        assert_eq!(r.part(Some("3/3"), b("late")).unwrap(), None);
        assert!(r.part(None, b("?")).is_err());
        assert!(r.part(Some("2/1"), b("?")).is_err());
    }
}
