//! `/v1/messages`: the runtime's message bus over HTTP ([`colony_runtime::messages`]).
//!
//! - `GET /v1/messages` [read]: the bus's counts (sent, delivered, acknowledged, read
//!   again, returned, unreturnable, waits at full mailboxes, mailboxes, messages held,
//!   topics, teams) and, as `listed`, its topics with their subscribers, the first
//!   [`MAX_LISTED`] by name.
//! - `POST /v1/messages` [submit]: `{"to": {"agent": N} | {"mailbox": NAME} |
//!   {"topic": NAME} | {"team": N}, "body": STRING}`; `200 {"delivered": N}`. The message
//!   is from `http`: a caller cannot speak as an agent. At a full mailbox the request waits
//!   for room up to [`SEND_WAIT`], then answers 503 `mailbox-full` with the copies already
//!   put (a broadcast puts one copy per mailbox in turn).
//!
//! A body over the bus's limit, an unknown agent or an unopened mailbox, or a bad topic is
//! a 4xx naming the problem, with nothing sent.
//!
//! A caller reads a named mailbox as its one reader, in acknowledged batches, as an agent
//! reads its own (all [submit]: reading takes messages away):
//!
//! - `POST /v1/messages/read` `{"mailbox": NAME, "max"?: N, "wait-ms"?: MS}`: opens the
//!   mailbox the first time (from then on messages can be sent to it), waits up to `wait-ms`
//!   (at most [`MAX_WAIT`]; 0, the default, does not wait) for messages and takes up to `max`
//!   (the bus's batch by default): `200 {"batch": K | null, "messages": [...]}`, each message
//!   as a `process` agent gets it. A batch not acknowledged when the next read comes is
//!   given back and read again first: a reader that died mid-batch loses nothing. One read
//!   of a mailbox at a time: another while one waits is `409 busy`.
//! - `POST /v1/messages/ack` `{"mailbox": NAME, "batch": K}`: the batch's messages leave the
//!   mailbox, `200 {"acknowledged": N}`; `409 stale-batch` for a batch given back or
//!   acknowledged already.
//! - `POST /v1/messages/subscribe`, `/unsubscribe` `{"mailbox": NAME, "topic": T}`: the
//!   mailbox (opened if need be) hears a topic from now on, or no longer.
//! - `POST /v1/messages/close` `{"mailbox": NAME}`: the mailbox closes; what it held goes
//!   back to its senders, `200 {"returned": N}`.
//!
//! At most [`MAX_READERS`] mailboxes are read over HTTP at once; one that no call used for
//! [`READER_IDLE`] is closed (its messages go back to their senders), so an abandoned
//! mailbox cannot fill up and hold its topics' publishers waiting. A mailbox has one reader:
//! reading or subscribing a name over HTTP takes it from another reader of the same name (a
//! workflow's `wait:`), which then reads nothing more. When another reader takes it back,
//! the HTTP reader's next read or acknowledgement is `409 fenced` (its batch is the other
//! reader's), and the read after opens it again; a mailbox closed under it is `410 closed`.

use crate::{App, Object, body, problem};
use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint, check_topic},
};
use colony_runtime::messages::{Error, MessageStats};
use colony_runtime::{
    messages::{Bus, Closed, Inbox},
    spawner::Spawner,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

/// Most topics `GET /v1/messages` lists.
pub const MAX_LISTED: usize = 1_000;
/// How long a send over HTTP waits at a full mailbox.
pub const SEND_WAIT: Duration = Duration::from_secs(5);
/// Who messages sent over HTTP are from.
pub const SENDER: &str = "http";
/// Longest a read over HTTP waits for messages.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most mailboxes read over HTTP at once.
pub const MAX_READERS: usize = 1_024;
/// A mailbox read over HTTP that no call used for this long is closed, what it held going
/// back to its senders.
pub const READER_IDLE: Duration = Duration::from_secs(10 * 60);

/// The mailboxes read over HTTP, each by its one reader.
#[derive(Debug, Default)]
pub(crate) struct Readers {
    readers: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Reader>>>>,
    /// The last batch's number, for every mailbox: a batch's number is never given again,
    /// so an acknowledgement cannot reach a later reader's batch.
    batches: AtomicU64,
    /// Mailboxes the sweep closed, newest last (at most [`MAX_READERS`]): the next read or
    /// acknowledgement of one is told so once, rather than finding a new, empty mailbox.
    swept: Mutex<VecDeque<Arc<str>>>,
}

/// A mailbox's reader over HTTP, and its batch taken and not acknowledged.
#[derive(Debug)]
pub(crate) struct Reader {
    inbox: Inbox,
    /// Its batch's number (numbers start at 1).
    batch: u64,
    /// Messages of batch `batch` not acknowledged yet (0: none outstanding).
    taken: usize,
    /// When a call last used it.
    used: Instant,
}

type Shared = Arc<tokio::sync::Mutex<Reader>>;

impl Readers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Shared>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader of `name`, the mailbox opened for it the first time (and, with `topic`,
    /// subscribed to it, under the same hold of the map: a `close` cannot come between).
    #[allow(clippy::result_large_err)]
    fn get_or_open(
        &self,
        bus: &Bus,
        name: &Arc<str>,
        topic: Option<&str>,
    ) -> Result<Shared, Response> {
        let mut readers = self.lock();
        let reader = match readers.get(name) {
            Some(reader) => reader.clone(),
            None => {
                if readers.len() >= MAX_READERS {
                    return Err(problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too-many-readers",
                        format!(
                            "{MAX_READERS} mailboxes are read over HTTP already: close one (`POST /v1/messages/close`) first"
                        ),
                    ));
                }
                let inbox = bus.open(Endpoint::Named(name.clone())).map_err(refused)?;
                let reader = Arc::new(tokio::sync::Mutex::new(Reader {
                    inbox,
                    batch: 0,
                    taken: 0,
                    used: Instant::now(),
                }));
                readers.insert(name.clone(), reader.clone());
                reader
            }
        };
        if let Some(topic) = topic {
            bus.subscribe(topic, Endpoint::Named(name.clone()))
                .map_err(refused)?;
        }
        Ok(reader)
    }

    /// Whether `name` is read over HTTP; its reader, if so.
    fn get(&self, name: &str) -> Option<Shared> {
        self.lock().get(name).cloned()
    }

    /// `name`'s reader no longer reads (its mailbox closed, or another reader took it over).
    fn forget(&self, name: &str, reader: &Shared) {
        let mut readers = self.lock();
        if readers.get(name).is_some_and(|r| Arc::ptr_eq(r, reader)) {
            readers.remove(name);
        }
    }

    /// Closes `name`'s mailbox, what it held going back to its senders, and forgets its
    /// reader, under one hold of the map: a read or subscription comes before or after.
    fn close(&self, bus: &Bus, name: &Arc<str>, why: &str) -> usize {
        let mut readers = self.lock();
        readers.remove(name);
        bus.close(&Endpoint::Named(name.clone()), why)
    }

    /// Closes the mailboxes no call used for `idle` ([`READER_IDLE`]): a reader that went
    /// away leaves no mailbox filling up and holding its topics' publishers waiting.
    fn sweep(&self, bus: &Bus, idle: Duration) -> usize {
        // Taken out of the map, each held until its mailbox is closed (a call that finds
        // it meanwhile is `busy`); closed after the map is let go, which may take a while.
        let idle: Vec<(Arc<str>, tokio::sync::OwnedMutexGuard<Reader>)> = {
            let mut readers = self.lock();
            let names: Vec<Arc<str>> = readers.keys().cloned().collect();
            names
                .into_iter()
                .filter_map(|name| {
                    let guard = readers.get(&name)?.clone().try_lock_owned().ok()?;
                    if guard.used.elapsed() < idle {
                        return None;
                    }
                    readers.remove(&name);
                    Some((name, guard))
                })
                .collect()
        };
        for (name, _held) in &idle {
            let returned = bus.close(
                &Endpoint::Named(name.clone()),
                "its HTTP reader left it unread",
            );
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.len() >= MAX_READERS {
                swept.pop_front();
            }
            swept.push_back(name.clone());
            drop(swept);
            tracing::info!(mailbox = %name, returned, "Closed a mailbox read over HTTP and left idle.");
        }
        idle.len()
    }

    /// Whether the sweep closed `name` since its last call: said once.
    fn was_swept(&self, name: &str) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        match swept.iter().position(|n| **n == *name) {
            Some(i) => {
                swept.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Sweeps the idle readers of [`Readers`] once a minute, while the server runs.
pub(crate) struct Sweeper(tokio::task::JoinHandle<Option<()>>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sweeper {
    pub(crate) fn start(app: Arc<App>) -> Self {
        Self(Spawner::spawn("mailbox-readers", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                app.readers.sweep(app.handle.messages(), READER_IDLE);
            }
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum To {
    Agent(u32),
    Mailbox(String),
    Topic(String),
    Team(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Send {
    to: To,
    body: String,
}

/// What `GET /v1/messages` and the dashboard's panel show.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    #[serde(flatten)]
    pub(crate) stats: MessageStats,
    /// The topics by name, with their subscribers (`topics` is how many there are).
    pub(crate) listed: Vec<Topic>,
    /// Whether there are topics past the first [`MAX_LISTED`].
    pub(crate) more: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: usize,
}

pub(crate) fn overview(app: &App) -> Overview {
    let bus = app.handle.messages();
    let mut topics = bus.topics();
    let more = topics.len() > MAX_LISTED;
    topics.truncate(MAX_LISTED);
    Overview {
        stats: bus.stats(),
        listed: topics
            .into_iter()
            .map(|(name, subscribers)| Topic { name, subscribers })
            .collect(),
        more,
    }
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    Json(overview(&app)).into_response()
}

/// A mailbox's name from a request: named as a topic is.
#[allow(clippy::result_large_err)]
fn mailbox_name(name: &str) -> Result<Arc<str>, Response> {
    match check_topic(name) {
        Ok(()) => Ok(Arc::from(name)),
        Err(_) => Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-mailbox",
            format!(
                "a mailbox is named as a topic is: letters, digits, `-`, `_`, `.`, in parts joined by `/`; got {:?}",
                name.chars().take(140).collect::<String>()
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Read {
    mailbox: String,
    max: Option<usize>,
    wait_ms: Option<u64>,
}

pub(crate) async fn read(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Read>>, JsonRejection>,
) -> Response {
    let read = match body(request) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = match mailbox_name(&read.mailbox) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let batch = app.handle.messages().options().batch;
    let max = match read.max {
        None => batch,
        Some(n) if (1..=batch).contains(&n) => n,
        Some(n) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-max",
                format!("max is {n}: a read takes 1 to the bus's batch of {batch} messages"),
            );
        }
    };
    let wait = Duration::from_millis(read.wait_ms.unwrap_or(0));
    if wait > MAX_WAIT {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-wait",
            format!(
                "wait-ms is {}: at most {}",
                wait.as_millis(),
                MAX_WAIT.as_millis()
            ),
        );
    }
    if app.readers.was_swept(&name) {
        return gone(&name, Closed::Closed);
    }
    let bus = app.handle.messages();
    let reader = match app.readers.get_or_open(bus, &name, None) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // One read of a mailbox at a time: a second would take the first one's batch away.
    let Ok(mut guard) = reader.try_lock() else {
        return busy(&name);
    };
    let r = &mut *guard;
    r.used = Instant::now();
    // The batch before, not acknowledged, goes back to the front, to be read first.
    let taken = match r.inbox.give_back() {
        Ok(()) => {
            r.taken = 0;
            if wait.is_zero() {
                r.inbox.try_recv_at_most(max)
            } else {
                match tokio::time::timeout(wait, r.inbox.recv_at_most(max)).await {
                    Ok(taken) => taken,
                    Err(_) => Ok(Vec::new()),
                }
            }
        }
        Err(closed) => Err(closed),
    };
    r.used = Instant::now();
    let messages = match taken {
        Ok(m) => m,
        Err(closed) => {
            drop(guard);
            app.readers.forget(&name, &reader);
            return gone(&name, closed);
        }
    };
    let batch = if messages.is_empty() {
        None
    } else {
        r.batch = app.readers.batches.fetch_add(1, Relaxed) + 1;
        r.taken = messages.len();
        Some(r.batch)
    };
    let messages: Vec<serde_json::Value> = messages
        .into_iter()
        .map(|m| colony_agents::Letter::from(m).to_json())
        .collect();
    Json(json!({ "batch": batch, "messages": messages })).into_response()
}

/// A read of `name` is under way.
fn busy(name: &str) -> Response {
    problem(
        StatusCode::CONFLICT,
        "busy",
        format!("a read of mailbox {name} is under way: a mailbox is read by one call at a time"),
    )
}

/// The HTTP reader of `name` reads nothing more, for this reason.
fn gone(name: &str, closed: Closed) -> Response {
    match closed {
        Closed::Closed => problem(
            StatusCode::GONE,
            "closed",
            format!(
                "mailbox {name} was closed (by a call, its owner, or after {} minutes unused), what it held handed back to its senders, its topics left: read it again to open it anew",
                READER_IDLE.as_secs() / 60
            ),
        ),
        Closed::Fenced => problem(
            StatusCode::CONFLICT,
            "fenced",
            format!(
                "another reader opened mailbox {name} and reads its messages now: read it again to take it back"
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ack {
    mailbox: String,
    batch: u64,
}

pub(crate) async fn ack(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Ack>>, JsonRejection>,
) -> Response {
    let ack = match body(request) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let name = match mailbox_name(&ack.mailbox) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let stale = |why: &str| {
        problem(
            StatusCode::CONFLICT,
            "stale-batch",
            format!(
                "batch {} of mailbox {name} is not the one outstanding: {why}",
                ack.batch
            ),
        )
    };
    if app.readers.was_swept(&name) {
        return gone(&name, Closed::Closed);
    }
    let Some(reader) = app.readers.get(&name) else {
        return stale("the mailbox is not read over HTTP now");
    };
    // A read under way gave the batch back before it waits.
    let Ok(mut r) = reader.try_lock() else {
        return stale("a read under way gave it back");
    };
    if ack.batch != r.batch || r.taken == 0 {
        return stale("a later read gave it back, or it was acknowledged already");
    }
    r.used = Instant::now();
    r.taken = 0;
    match r.inbox.acknowledge() {
        Ok(n) => Json(json!({ "acknowledged": n })).into_response(),
        Err(closed) => {
            drop(r);
            app.readers.forget(&name, &reader);
            gone(&name, closed)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscription {
    mailbox: String,
    topic: String,
}

pub(crate) async fn subscribe(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Subscription>>, JsonRejection>,
) -> Response {
    subscription(&app, request, true)
}

pub(crate) async fn unsubscribe(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Subscription>>, JsonRejection>,
) -> Response {
    subscription(&app, request, false)
}

fn subscription(
    app: &App,
    request: Result<Json<Object<Subscription>>, JsonRejection>,
    on: bool,
) -> Response {
    let s = match body(request) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = match mailbox_name(&s.mailbox) {
        Ok(n) => n,
        Err(r) => return r,
    };
    if let Err(e) = check_topic(&s.topic) {
        return problem(StatusCode::BAD_REQUEST, "bad-topic", e.to_string());
    }
    let bus = app.handle.messages();
    if !on {
        bus.unsubscribe(&s.topic, &Endpoint::Named(name));
        return Json(json!({})).into_response();
    }
    // Opened first: a topic's message reaches only a mailbox that exists.
    match app.readers.get_or_open(bus, &name, Some(&s.topic)) {
        Ok(reader) => {
            // A use: the mailbox is not idle.
            if let Ok(mut r) = reader.try_lock() {
                r.used = Instant::now();
            }
            Json(json!({})).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Close {
    mailbox: String,
}

pub(crate) async fn close(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Close>>, JsonRejection>,
) -> Response {
    let close = match body(request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let name = match mailbox_name(&close.mailbox) {
        Ok(n) => n,
        Err(r) => return r,
    };
    // Every message held goes back, the batch taken included; a read waiting on the
    // mailbox wakes to find it closed.
    let returned = app.readers.close(
        app.handle.messages(),
        &name,
        "its reader closed it over HTTP",
    );
    Json(json!({ "returned": returned })).into_response()
}

pub(crate) async fn send(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Send>>, JsonRejection>,
) -> Response {
    let send = match body(request) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let to = match send.to {
        To::Agent(id) => Address::To(Endpoint::Agent(AgentId(id))),
        // Another process's endpoint (`cluster:<process>/<endpoint>`) may be sent to, though
        // not opened here.
        To::Mailbox(name) if colony_core::mailbox::far_endpoint(&name).is_some() => {
            Address::To(Endpoint::Named(name.into()))
        }
        To::Mailbox(name) => match mailbox_name(&name) {
            Ok(name) => Address::To(Endpoint::Named(name)),
            Err(r) => return r,
        },
        To::Topic(name) => match check_topic(&name) {
            Ok(()) => Address::Topic(name.into()),
            Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-topic", e.to_string()),
        },
        To::Team(n) => Address::Team(n),
    };
    let bus = app.handle.messages();
    let sent = bus.send(
        Endpoint::Named(Arc::from(SENDER)),
        to,
        Bytes::from(send.body),
    );
    match tokio::time::timeout(SEND_WAIT, sent).await {
        Ok(Ok(sent)) => Json(json!({ "delivered": sent.delivered })).into_response(),
        Ok(Err(e)) => refused(e),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "mailbox-full",
            format!(
                "a mailbox stayed full for {SEND_WAIT:?}: copies before it were put, the rest were not"
            ),
        ),
    }
}

fn refused(error: Error) -> Response {
    let (status, code) = match &error {
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        Error::NoMailbox(_) | Error::NotOpen(_) => (StatusCode::NOT_FOUND, "no-mailbox"),
        Error::TooManyMailboxes => (StatusCode::SERVICE_UNAVAILABLE, "too-many-mailboxes"),
        Error::Directory(_) => (StatusCode::BAD_REQUEST, "refused"),
    };
    problem(status, code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_runtime::messages::MessageOptions;

    #[tokio::test]
    async fn a_mailbox_left_idle_is_closed_and_one_being_read_is_not() {
        let bus = Bus::new(MessageOptions::default());
        let readers = Readers::default();
        let left = readers
            .get_or_open(&bus, &Arc::from("left"), Some("news"))
            .unwrap();
        let reading = readers
            .get_or_open(&bus, &Arc::from("reading"), None)
            .unwrap();
        let from = Endpoint::Named(Arc::from("ops"));
        let mut back = bus.open(from.clone()).unwrap();
        bus.send(
            from.clone(),
            Address::To(Endpoint::Named(Arc::from("left"))),
            Bytes::from("unread"),
        )
        .await
        .unwrap();
        // Not idle for long enough: kept.
        assert_eq!(readers.sweep(&bus, Duration::from_secs(600)), 0);
        assert!(!readers.was_swept("left"));
        // A read under way holds its reader: never idle.
        let held = reading.lock().await;
        drop(left);
        assert_eq!(readers.sweep(&bus, Duration::ZERO), 1);
        drop(held);
        assert!(readers.get("left").is_none());
        assert!(readers.get("reading").is_some());
        // Its next call is told, once.
        assert!(readers.was_swept("left"));
        assert!(!readers.was_swept("left"));
        // Its message went back to its sender, and it hears its topic no more.
        let returned = back.try_recv().unwrap();
        assert_eq!(&returned[0].body[..], b"unread");
        let sent = bus
            .send(from, Address::Topic("news".into()), Bytes::from("x"))
            .await
            .unwrap();
        assert_eq!(sent.delivered, 0);
    }
}
