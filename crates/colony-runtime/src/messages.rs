//! Where agents talk: messages sent to an agent, a named reader, a topic's subscribers or a
//! team's members, held in bounded mailboxes and read in acknowledged batches.
//!
//! The [`Bus`] carries out what `colony_core::mailbox` decides. Each mailbox is its own lock
//! and two notifications (something to read, room to put), so senders to different
//! mailboxes never meet. [`Bus::send`] puts a message in every mailbox its address reaches,
//! in the directory's order; at a full mailbox it waits, asleep, for room: a full mailbox
//! pushes back on its senders and drops nothing. A sender's messages reach each mailbox in
//! the order it sent them.
//!
//! A mailbox has one reader at a time, an [`Inbox`]. [`Inbox::recv`] waits for messages and
//! takes up to a batch (256 by default); asking for the next batch, or [`Inbox::ack`],
//! acknowledges the one before. An inbox dropped with its batch unacknowledged (its task was
//! aborted, it panicked) gives the batch back to the front of the mailbox for the next
//! reader, so a reader killed mid-batch loses nothing; a newer inbox of the same mailbox
//! fences out the older one. An agent's mailbox outlives its restarts (a restarted agent
//! reads what its predecessor had not acknowledged); when the agent is retired for good,
//! [`Bus::close`] hands every message it held back to its sender's mailbox (past that
//! mailbox's capacity if need be: what comes back is bounded by what closed), marked
//! [`Message::returned`], and counts it; a sender with no mailbox is counted as
//! unreturnable and logged.

use bytes::Bytes;
use colony_core::{
    AgentId,
    mailbox::{self, Address, Directory, Endpoint, Mailbox, Refused},
};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};
use tokio::sync::Notify;

/// Default longest body of a message: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Most mailboxes a bus holds at once.
pub const MAX_MAILBOXES: usize = 4_000_000;

/// How a bus is sized.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MessageOptions {
    /// Messages a mailbox holds (taken and unacknowledged ones included).
    pub capacity: usize,
    /// Messages an [`Inbox::recv`] takes at most.
    pub batch: usize,
    /// Longest body, in bytes.
    pub max_body: usize,
}

impl Default for MessageOptions {
    fn default() -> Self {
        Self {
            capacity: mailbox::DEFAULT_CAPACITY,
            batch: mailbox::DEFAULT_BATCH,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Most messages one mailbox may be set to hold.
pub const MAX_CAPACITY: usize = 1 << 20;
/// Longest body [`MessageOptions::max_body`] may allow: 64 MiB.
pub const MAX_BODY: usize = 64 << 20;

impl MessageOptions {
    pub fn validate(&self) -> Result<(), crate::Error> {
        let out = |what: &str, got: usize, max: usize| {
            crate::Error::Options(format!(
                "messages {what} {got} is out of range: allowed 1..={max}"
            ))
        };
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(out("capacity", self.capacity, MAX_CAPACITY));
        }
        if !(1..=self.capacity).contains(&self.batch) {
            return Err(out("batch", self.batch, self.capacity));
        }
        if !(1..=MAX_BODY).contains(&self.max_body) {
            return Err(out("max-body", self.max_body, MAX_BODY));
        }
        Ok(())
    }
}

/// Why a message could not be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a message body of {got} bytes is over the limit of {max}")]
    TooLarge { got: usize, max: usize },
    #[error("{0} has no mailbox: it does not exist, or has left")]
    NoMailbox(Endpoint),
    #[error("{0} is not a mailbox anyone reads: open it first")]
    NotOpen(Endpoint),
    #[error("a bus holds at most {MAX_MAILBOXES} mailboxes")]
    TooManyMailboxes,
    #[error(transparent)]
    Directory(#[from] mailbox::Error),
}

/// A message as its reader gets it.
#[derive(Clone, Debug)]
pub struct Message {
    pub from: Endpoint,
    /// How it was addressed: to its reader, or to a topic or team the reader is in.
    pub to: Address,
    pub body: Bytes,
    /// When it was sent: its latency is counted from here.
    pub sent: Instant,
    /// Set on a message handed back to its sender: the mailbox it was in, and why it was
    /// not read there.
    pub returned: Option<Returned>,
}

/// Why a message came back to its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Returned {
    pub by: Endpoint,
    pub why: Arc<str>,
}

/// What a send did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Mailboxes the message was put in.
    pub delivered: u32,
}

/// Counts since the bus started.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MessageStats {
    /// Messages sent (one per send, whatever its fan-out).
    pub sent: u64,
    /// Copies put in mailboxes.
    pub delivered: u64,
    /// Copies read and acknowledged.
    pub acknowledged: u64,
    /// Copies handed out again after their reader left without acknowledging them.
    pub redelivered: u64,
    /// Copies handed back to their sender's mailbox as undeliverable.
    pub returned: u64,
    /// Copies undeliverable whose sender has no mailbox to take them back: counted and
    /// logged, never silent.
    pub unreturnable: u64,
    /// Times a sender waited for room in a full mailbox.
    pub waits: u64,
    /// Mailboxes open now.
    pub mailboxes: u64,
    /// Copies held in mailboxes now.
    pub held: u64,
    pub topics: u64,
    pub teams: u64,
}

struct Slot {
    mailbox: Mutex<Mailbox<Message>>,
    /// Woken when a message is put.
    readable: Notify,
    /// Woken when messages leave (acknowledged) or the mailbox closes.
    writable: Notify,
}

impl Slot {
    fn new(capacity: usize) -> Self {
        Self {
            mailbox: Mutex::new(Mailbox::new(capacity)),
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mailbox<Message>> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bus's metric handles, looked up once.
struct Meters {
    sent: [metrics::Counter; 4],
    delivered: metrics::Counter,
    returned: metrics::Counter,
    unreturnable: metrics::Counter,
    waits: metrics::Counter,
    latency: metrics::Histogram,
}

impl Meters {
    fn register() -> Self {
        use crate::metrics as m;
        Self {
            sent: ["agent", "named", "topic", "team"]
                .map(|kind| metrics::counter!(m::MESSAGES_SENT, "to" => kind)),
            delivered: metrics::counter!(m::MESSAGES_DELIVERED),
            returned: metrics::counter!(m::MESSAGES_RETURNED),
            unreturnable: metrics::counter!(m::MESSAGES_UNRETURNABLE),
            waits: metrics::counter!(m::MAILBOX_WAITS),
            latency: metrics::histogram!(m::MESSAGE_LATENCY),
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    acknowledged: AtomicU64,
    redelivered: AtomicU64,
    returned: AtomicU64,
    unreturnable: AtomicU64,
    waits: AtomicU64,
}

struct Inner {
    options: MessageOptions,
    directory: Mutex<Directory>,
    slots: Mutex<HashMap<Endpoint, Arc<Slot>>>,
    /// Agents retired for good: their mailboxes are closed until the id is reused.
    gone: Mutex<HashSet<AgentId>>,
    /// Agent ids below this exist (the runtime's tree's length); every id, for a bus of
    /// its own.
    agents: AtomicU64,
    /// Named endpoints a test accepts that have no mailbox here, and the mailbox that takes
    /// their messages instead (a bridge to other processes: [`Bus::forward`]).
    forwards: Mutex<Vec<Forward>>,
    counters: Counters,
    meters: Meters,
}

/// The names a forward takes (a test of the name), and the mailbox they go to.
type Forward = (fn(&str) -> bool, Endpoint);

/// The message bus of a runtime (see the module's text). Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Bus {
    pub fn new(options: MessageOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                directory: Mutex::default(),
                slots: Mutex::default(),
                gone: Mutex::default(),
                agents: AtomicU64::new(u64::MAX),
                forwards: Mutex::default(),
                counters: Counters::default(),
                meters: Meters::register(),
            }),
        }
    }

    pub fn options(&self) -> &MessageOptions {
        &self.inner.options
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.inner
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, Arc<Slot>>> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone(&self) -> std::sync::MutexGuard<'_, HashSet<AgentId>> {
        self.inner.gone.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `endpoint` is an agent the runtime does not have, or one retired for good.
    /// Locks `gone`: callers holding `slots` or `directory` take it after them, never before.
    fn is_gone(&self, endpoint: &Endpoint) -> bool {
        match endpoint {
            Endpoint::Agent(a) if u64::from(a.0) >= self.inner.agents.load(Relaxed) => true,
            Endpoint::Agent(a) => self.gone().contains(a),
            Endpoint::Named(_) => false,
        }
    }

    /// The mailbox of `endpoint`: an agent's is made on first use (unless it was retired); a
    /// named one exists only once opened.
    fn slot(&self, endpoint: &Endpoint, create: bool) -> Result<Arc<Slot>, Error> {
        self.slot_in(&mut self.slots(), endpoint, create)
    }

    /// [`Bus::slot`], with `slots` locked by the caller.
    fn slot_in(
        &self,
        slots: &mut HashMap<Endpoint, Arc<Slot>>,
        endpoint: &Endpoint,
        create: bool,
    ) -> Result<Arc<Slot>, Error> {
        // Looked at under `slots`, which `close` holds while it marks an agent gone and
        // takes its mailbox away: no mailbox is made again for an agent being retired.
        if self.is_gone(endpoint) {
            return Err(Error::NoMailbox(endpoint.clone()));
        }
        if let Some(slot) = slots.get(endpoint) {
            return Ok(slot.clone());
        }
        if !create && matches!(endpoint, Endpoint::Named(_)) {
            return Err(Error::NotOpen(endpoint.clone()));
        }
        if slots.len() >= MAX_MAILBOXES {
            return Err(Error::TooManyMailboxes);
        }
        let slot = Arc::new(Slot::new(self.inner.options.capacity));
        slots.insert(endpoint.clone(), slot.clone());
        Ok(slot)
    }

    /// Opens `endpoint`'s mailbox for reading, as its only reader: an older inbox of it is
    /// fenced out, and the batch it had not acknowledged is read again here first. Refused
    /// for a retired agent.
    pub fn open(&self, endpoint: Endpoint) -> Result<Inbox, Error> {
        let slot = self.slot(&endpoint, true)?;
        let (epoch, redelivered) = {
            let mut mailbox = slot.lock();
            let before = mailbox.redelivered();
            let epoch = mailbox.attach();
            (epoch, mailbox.redelivered() - before)
        };
        self.inner
            .counters
            .redelivered
            .fetch_add(redelivered, Relaxed);
        // A fenced-out reader waiting for messages looks again and finds itself stale.
        slot.readable.notify_waiters();
        Ok(Inbox {
            bus: self.clone(),
            endpoint,
            slot,
            epoch,
            batch: 0,
        })
    }

    /// Messages to a named endpoint `accept` takes that has no mailbox here go to `to`'s
    /// mailbox instead, addressed as they were: how a bridge to other processes hears what
    /// is sent to their endpoints (`cluster:<process>/<endpoint>`). The first forward that
    /// accepts a name takes it; a name none accepts is refused as before. Closing `to`
    /// ends its forwards.
    pub fn forward(&self, accept: fn(&str) -> bool, to: Endpoint) {
        self.inner
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((accept, to));
    }

    /// Stops the forwards to `to`.
    pub fn stop_forwarding(&self, to: &Endpoint) {
        self.inner
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, e)| e != to);
    }

    /// Where a message to `endpoint`, which has no mailbox here, is forwarded.
    fn forwarded(&self, endpoint: &Endpoint) -> Option<Endpoint> {
        let Endpoint::Named(name) = endpoint else {
            return None;
        };
        self.inner
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(accept, _)| accept(name))
            .map(|(_, to)| to.clone())
    }

    /// Puts a message in `to`'s mailbox only if it has one now and it has room: nothing is
    /// made and nothing waits (a message from outside, which must not open mailboxes here
    /// or hold up the one who relays it). `Ok(false)` when it was not put: no mailbox, or
    /// a full one.
    pub fn deliver_existing(
        &self,
        from: Endpoint,
        to: Endpoint,
        body: Bytes,
    ) -> Result<bool, Error> {
        let max = self.inner.options.max_body;
        if body.len() > max {
            return Err(Error::TooLarge {
                got: body.len(),
                max,
            });
        }
        let slot = {
            let slots = self.slots();
            if self.is_gone(&to) {
                return Ok(false);
            }
            match slots.get(&to) {
                Some(slot) => slot.clone(),
                None => return Ok(false),
            }
        };
        self.inner.counters.sent.fetch_add(1, Relaxed);
        let kind = match &to {
            Endpoint::Agent(_) => 0,
            Endpoint::Named(_) => 1,
        };
        self.inner.meters.sent[kind].increment(1);
        let message = Message {
            from,
            to: Address::To(to.clone()),
            body,
            sent: Instant::now(),
            returned: None,
        };
        Ok(self.try_put(&to, &slot, message).unwrap_or(false))
    }

    /// `who` hears what is published on `topic` from now on.
    pub fn subscribe(&self, topic: &str, who: Endpoint) -> Result<(), Error> {
        let mut directory = self.directory();
        // Under `directory`: `close` marks an agent gone before it takes it out of the
        // directory, so a subscription either is refused or is taken out with the rest.
        if self.is_gone(&who) {
            return Err(Error::NoMailbox(who));
        }
        directory.subscribe(topic, who)?;
        Ok(())
    }

    pub fn unsubscribe(&self, topic: &str, who: &Endpoint) {
        self.directory().unsubscribe(topic, who);
    }

    /// Team `team`'s members, for messages to [`Address::Team`].
    pub fn set_team(&self, team: u64, members: Vec<AgentId>) {
        self.directory().set_team(team, members);
    }

    pub fn end_team(&self, team: u64) {
        self.directory().end_team(team);
    }

    /// Sends `body` from `from` to every mailbox `to` reaches, waiting at full ones for room
    /// (see the module's text). A message to one mailbox that does not exist is refused; a
    /// topic or team with nobody in it reaches nobody (`delivered: 0`).
    pub async fn send(&self, from: Endpoint, to: Address, body: Bytes) -> Result<Sent, Error> {
        let max = self.inner.options.max_body;
        if body.len() > max {
            return Err(Error::TooLarge {
                got: body.len(),
                max,
            });
        }
        // One mailbox: the directory is not asked (nor locked).
        let reach = match &to {
            Address::To(e) => vec![e.clone()],
            _ => {
                let mut reach = self.directory().reach(&to, &from);
                // What a forwarder (a bridge) brought in from elsewhere is not handed back
                // to it: it would only drop it again.
                if let Endpoint::Named(name) = &from
                    && name.starts_with(colony_core::mailbox::FAR)
                {
                    let forwards = self
                        .inner
                        .forwards
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    reach.retain(|e| !forwards.iter().any(|(_, to)| to == e));
                }
                reach
            }
        };
        let forwarded;
        let slots: Vec<(&Endpoint, Arc<Slot>)> = match &to {
            Address::To(_) => match self.slot(&reach[0], false) {
                Ok(slot) => vec![(&reach[0], slot)],
                Err(e @ Error::NotOpen(_)) => {
                    forwarded = self.forwarded(&reach[0]).ok_or(e)?;
                    vec![(&forwarded, self.slot(&forwarded, false)?)]
                }
                Err(e) => return Err(e),
            },
            // One hold of the lock for the whole fan-out. A subscriber that left between
            // the lookup and now is passed over; one that never read has no mailbox yet
            // and gets one, as an agent sent a message directly does.
            _ => {
                let mut slots = self.slots();
                reach
                    .iter()
                    .filter_map(|e| Some((e, self.slot_in(&mut slots, e, false).ok()?)))
                    .collect()
            }
        };
        self.inner.counters.sent.fetch_add(1, Relaxed);
        let kind = match &to {
            Address::To(Endpoint::Agent(_)) => 0,
            Address::To(Endpoint::Named(_)) => 1,
            Address::Topic(_) => 2,
            Address::Team(_) => 3,
        };
        self.inner.meters.sent[kind].increment(1);
        let message = Message {
            from,
            to,
            body,
            sent: Instant::now(),
            returned: None,
        };
        let mut delivered = 0;
        // A copy is a few reference counts: the body is shared, never copied.
        for (endpoint, slot) in &slots {
            if self.put(endpoint, slot, message.clone()).await {
                delivered += 1;
            }
        }
        Ok(Sent { delivered })
    }

    /// Puts `message` in `endpoint`'s mailbox `slot`, waiting for room; `false` if the
    /// mailbox closed meanwhile (the message then went back to its sender).
    async fn put(&self, endpoint: &Endpoint, slot: &Slot, mut message: Message) -> bool {
        let mut waited = false;
        loop {
            message = match self.try_put(endpoint, slot, message) {
                Ok(delivered) => return delivered,
                Err(back) => back,
            };
            // Full. Listening before looking again: room made in between is not missed.
            let room = slot.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            message = match self.try_put(endpoint, slot, message) {
                Ok(delivered) => return delivered,
                Err(back) => back,
            };
            if !waited {
                waited = true;
                self.inner.counters.waits.fetch_add(1, Relaxed);
                self.inner.meters.waits.increment(1);
            }
            room.await;
        }
    }

    /// Puts `message` in `endpoint`'s mailbox `slot` if it has room: `Ok(true)` put,
    /// `Ok(false)` the mailbox closed (the message went back to its sender), `Err` full.
    fn try_put(&self, endpoint: &Endpoint, slot: &Slot, message: Message) -> Result<bool, Message> {
        // Closed or not is looked at under the mailbox's lock, which `close` holds while it
        // empties it: nothing is put in a mailbox that closed.
        let put = slot.lock().put(message);
        match put {
            Ok(()) => {
                slot.readable.notify_one();
                self.delivered();
                Ok(true)
            }
            Err(Refused::Full(back)) => Err(back),
            Err(Refused::Closed(back)) => {
                self.bounce(
                    endpoint.clone(),
                    Arc::from("its reader left for good"),
                    back,
                );
                Ok(false)
            }
        }
    }

    fn delivered(&self) {
        self.inner.counters.delivered.fetch_add(1, Relaxed);
        self.inner.meters.delivered.increment(1);
    }

    /// Hands `message`, undeliverable at `by` for `why`, back to its sender's mailbox
    /// without waiting (past its capacity if need be), or counts it as unreturnable when
    /// the sender has none.
    fn bounce(&self, by: Endpoint, why: Arc<str>, mut message: Message) {
        if message.returned.is_some() {
            // A returned message is not returned again: that could go round for ever.
            self.unreturnable(&message, "it was itself a returned message");
            return;
        }
        let Some(slot) = self.slots().get(&message.from).cloned() else {
            self.unreturnable(&message, "its sender has no mailbox");
            return;
        };
        message.returned = Some(Returned { by, why });
        // Past the capacity if need be: what comes back is bounded by what the closed
        // mailbox held, and refusing it would lose it.
        let put = slot.lock().put_back(message);
        match put {
            Ok(()) => {
                slot.readable.notify_one();
                self.delivered();
                self.inner.counters.returned.fetch_add(1, Relaxed);
                self.inner.meters.returned.increment(1);
            }
            Err(Refused::Closed(message) | Refused::Full(message)) => {
                self.unreturnable(&message, "its sender's mailbox closed")
            }
        }
    }

    fn unreturnable(&self, message: &Message, why: &str) {
        self.inner.counters.unreturnable.fetch_add(1, Relaxed);
        self.inner.meters.unreturnable.increment(1);
        tracing::warn!(
            from = %message.from,
            to = %message.to,
            bytes = message.body.len(),
            "A message could not be delivered, nor handed back: {why}."
        );
    }

    /// `endpoint`'s owner left for good (an agent retired, a named reader done): its mailbox
    /// closes, it leaves every topic and team, and each message it held goes back to its
    /// sender. Returns how many it held.
    pub fn close(&self, endpoint: &Endpoint, why: &str) -> usize {
        // Marked gone and its mailbox taken away under one hold of `slots` (see `slot`);
        // marked gone before it leaves the directory (see `subscribe`).
        let slot = {
            let mut slots = self.slots();
            if let Endpoint::Agent(a) = endpoint {
                self.gone().insert(*a);
            }
            slots.remove(endpoint)
        };
        self.directory().forget(endpoint);
        self.stop_forwarding(endpoint);
        let Some(slot) = slot else {
            return 0;
        };
        let held = slot.lock().close();
        slot.writable.notify_waiters();
        slot.readable.notify_waiters();
        let why: Arc<str> = Arc::from(why);
        let n = held.len();
        for message in held {
            self.bounce(endpoint.clone(), why.clone(), message);
        }
        n
    }

    /// The runtime's tree holds `n` agents, with ids below `n`.
    pub(crate) fn set_agents(&self, n: u64) {
        self.inner.agents.store(n, Relaxed);
    }

    /// Agents from `start` on left the runtime's tree (retired workers, managers no longer
    /// needed): their mailboxes close, what they held goes back to its senders, they leave
    /// their topics and teams, and their ids may be given to new agents, whose mailboxes
    /// start empty.
    pub(crate) fn forget_agents_from(&self, start: u32) {
        let left = |e: &Endpoint| matches!(e, Endpoint::Agent(a) if a.0 >= start);
        let mut leaving: Vec<Endpoint> = self.slots().keys().filter(|e| left(e)).cloned().collect();
        leaving.extend(self.directory().agents_from(start));
        leaving.sort_unstable();
        leaving.dedup();
        for endpoint in &leaving {
            self.close(endpoint, "the agent left the hierarchy");
        }
        self.gone().retain(|a| a.0 < start);
    }

    /// Agent `agent` is back in service (a retired worker reinstated), with an empty
    /// mailbox.
    pub(crate) fn reinstate(&self, agent: AgentId) {
        self.gone().remove(&agent);
    }

    pub fn stats(&self) -> MessageStats {
        let c = &self.inner.counters;
        let (mailboxes, held) = {
            let slots = self.slots();
            let held = slots.values().map(|s| s.lock().len() as u64).sum();
            (slots.len() as u64, held)
        };
        let (topics, teams) = {
            let d = self.directory();
            (d.topics().count() as u64, d.teams() as u64)
        };
        MessageStats {
            sent: c.sent.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            acknowledged: c.acknowledged.load(Relaxed),
            redelivered: c.redelivered.load(Relaxed),
            returned: c.returned.load(Relaxed),
            unreturnable: c.unreturnable.load(Relaxed),
            waits: c.waits.load(Relaxed),
            mailboxes,
            held,
            topics,
            teams,
        }
    }

    /// The topics, with their subscriber counts.
    pub fn topics(&self) -> Vec<(Arc<str>, usize)> {
        self.directory()
            .topics()
            .map(|(t, n)| (t.clone(), n))
            .collect()
    }
}

/// The bus as the agents' backends see it: an agent sends as itself and reads its own
/// mailbox.
impl colony_agents::Mail for Bus {
    fn send(
        &self,
        from: AgentId,
        to: Address,
        body: Bytes,
    ) -> colony_agents::MailFuture<'static, Result<u32, String>> {
        let bus = self.clone();
        Box::pin(async move {
            bus.send(Endpoint::Agent(from), to, body)
                .await
                .map(|sent| sent.delivered)
                .map_err(|e| e.to_string())
        })
    }

    fn subscribe(&self, agent: AgentId, topic: &str) -> Result<(), String> {
        Bus::subscribe(self, topic, Endpoint::Agent(agent)).map_err(|e| e.to_string())
    }

    fn unsubscribe(&self, agent: AgentId, topic: &str) {
        Bus::unsubscribe(self, topic, &Endpoint::Agent(agent));
    }

    fn open(&self, agent: AgentId) -> Result<Box<dyn colony_agents::Letters>, String> {
        Bus::open(self, Endpoint::Agent(agent))
            .map(|inbox| Box::new(inbox) as Box<dyn colony_agents::Letters>)
            .map_err(|e| e.to_string())
    }
}

impl colony_agents::Letters for Inbox {
    fn next(&mut self) -> colony_agents::MailFuture<'_, Option<Vec<colony_agents::Letter>>> {
        Box::pin(async move { Some(letters(self.recv().await.ok()?)) })
    }

    fn try_next(&mut self) -> Option<Vec<colony_agents::Letter>> {
        Some(letters(self.try_recv().ok()?))
    }

    fn ack(&mut self) -> bool {
        self.acknowledge().is_ok()
    }
}

/// Messages as a backend hands them to its agent.
fn letters(batch: Vec<Message>) -> Vec<colony_agents::Letter> {
    batch.into_iter().map(Into::into).collect()
}

impl From<Message> for colony_agents::Letter {
    fn from(m: Message) -> Self {
        Self {
            from: m.from,
            to: m.to,
            body: m.body,
            returned: m.returned.map(|r| (r.by, r.why)),
        }
    }
}

/// The reader of one mailbox (see the module's text).
pub struct Inbox {
    bus: Bus,
    endpoint: Endpoint,
    slot: Arc<Slot>,
    epoch: u64,
    /// Messages of the batch taken and not acknowledged.
    batch: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("endpoint", &self.endpoint)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Why an inbox reads nothing more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    #[error("the mailbox was closed: its owner left")]
    Closed,
    #[error("a newer reader opened this mailbox")]
    Fenced,
}

impl Inbox {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Acknowledges the batch taken last: its messages leave the mailbox. A fenced-out
    /// reader's acknowledgement counts for nothing: its batch is the new reader's.
    pub fn ack(&mut self) {
        let _ = self.acknowledge();
    }

    /// [`Inbox::ack`], saying what came of it: how many messages left the mailbox, or why
    /// none did (another reader took the batch over, or the mailbox closed and handed it
    /// back to its senders).
    pub fn acknowledge(&mut self) -> Result<usize, Closed> {
        if self.batch == 0 {
            return Ok(0);
        }
        self.batch = 0;
        let n = {
            let mut mailbox = self.slot.lock();
            reads(&mailbox, self.epoch)?;
            mailbox.ack(self.epoch)
        };
        if n > 0 {
            self.bus
                .inner
                .counters
                .acknowledged
                .fetch_add(n as u64, Relaxed);
            self.slot.writable.notify_waiters();
        }
        Ok(n)
    }

    /// Gives the batch taken last back to the front of the mailbox, unacknowledged, for
    /// the next batch to take again first. Refused when the reader no longer reads.
    pub fn give_back(&mut self) -> Result<(), Closed> {
        let n = {
            let mut mailbox = self.slot.lock();
            reads(&mailbox, self.epoch)?;
            let before = mailbox.redelivered();
            mailbox.detach(self.epoch);
            mailbox.redelivered() - before
        };
        self.batch = 0;
        if n > 0 {
            self.bus.inner.counters.redelivered.fetch_add(n, Relaxed);
            self.slot.readable.notify_one();
        }
        Ok(())
    }

    /// Acknowledges the batch before, then waits for messages and takes up to a batch,
    /// oldest first.
    pub async fn recv(&mut self) -> Result<Vec<Message>, Closed> {
        self.recv_at_most(self.bus.inner.options.batch).await
    }

    /// Like [`Inbox::recv`], without waiting: an empty batch when nothing waits.
    pub fn try_recv(&mut self) -> Result<Vec<Message>, Closed> {
        self.try_recv_at_most(self.bus.inner.options.batch)
    }

    /// Like [`Inbox::try_recv`], taking at most `max` messages (at least 1).
    pub fn try_recv_at_most(&mut self, max: usize) -> Result<Vec<Message>, Closed> {
        self.ack();
        Ok(self.try_take_at_most(max.max(1))?.unwrap_or_default())
    }

    /// Like [`Inbox::recv`], taking at most `max` messages (at least 1).
    pub async fn recv_at_most(&mut self, max: usize) -> Result<Vec<Message>, Closed> {
        self.ack();
        let max = max.max(1);
        loop {
            if let Some(batch) = self.try_take_at_most(max)? {
                return Ok(batch);
            }
            // Listening before looking again: a message put in between is not missed.
            let slot = self.slot.clone();
            let readable = slot.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            if let Some(batch) = self.try_take_at_most(max)? {
                return Ok(batch);
            }
            readable.await;
        }
    }

    fn try_take_at_most(&mut self, max: usize) -> Result<Option<Vec<Message>>, Closed> {
        let batch = {
            let mut mailbox = self.slot.lock();
            reads(&mailbox, self.epoch)?;
            mailbox.take(self.epoch, max)
        };
        if batch.is_empty() {
            return Ok(None);
        }
        self.batch = batch.len();
        let now = Instant::now();
        let latency = &self.bus.inner.meters.latency;
        for message in &batch {
            latency.record(now.saturating_duration_since(message.sent).as_secs_f64());
        }
        Ok(Some(batch))
    }
}

/// Whether the reader of `epoch` still reads `mailbox`: not once it closed, or another
/// reader opened it.
fn reads(mailbox: &Mailbox<Message>, epoch: u64) -> Result<(), Closed> {
    if mailbox.is_closed() {
        Err(Closed::Closed)
    } else if mailbox.epoch() != epoch {
        Err(Closed::Fenced)
    } else {
        Ok(())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Unacknowledged: the batch goes back to the front for the next reader.
        if self.batch > 0 {
            let mut mailbox = self.slot.lock();
            let before = mailbox.redelivered();
            mailbox.detach(self.epoch);
            let n = mailbox.redelivered() - before;
            drop(mailbox);
            self.bus.inner.counters.redelivered.fetch_add(n, Relaxed);
            self.slot.readable.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
