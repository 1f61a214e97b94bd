//! Where messages between agents wait: a bounded mailbox read in acknowledged batches, and
//! the directory that says whose mailboxes an address reaches.
//!
//! A [`Mailbox`] holds messages in the order they were put, up to its capacity: a full
//! mailbox refuses the message and hands it back ([`Refused::Full`]), so the sender waits or
//! is told, and nothing is dropped. Only a message coming back to its sender from a closed
//! mailbox may go past the capacity ([`Mailbox::put_back`]). A closed mailbox refuses
//! everything ([`Refused::Closed`]). Its reader takes up to a batch of messages at a time and
//! acknowledges the batch once handled. A reader that ends without acknowledging (it was
//! killed, it panicked, it was replaced) gives its batch back to the front of the mailbox, in
//! order, for the next reader: delivery is at least once, and a sender's messages are read
//! in the order it sent them, redeliveries included. Each reader is fenced by an epoch, as an
//! attempt is by its lease: a stale reader's acknowledgement is ignored.
//!
//! A [`Directory`] maps an [`Address`] to the mailboxes it reaches: an agent's own, a
//! topic's subscribers, a team's members. Both are plain data, tested without a clock.

use crate::AgentId;
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    sync::Arc,
};

/// Messages a mailbox holds by default.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Messages a reader takes at once by default (seed 002's batch per cycle).
pub const DEFAULT_BATCH: usize = 256;
/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 128;
/// Most topics one directory holds.
pub const MAX_TOPICS: usize = 65_536;
/// Most subscribers of one topic.
pub const MAX_SUBSCRIBERS: usize = 1_000_000;

/// Who owns a mailbox: an agent, or a named reader (a workflow task, an HTTP client, a
/// benchmark's consumer).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Agent(AgentId),
    Named(Arc<str>),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Agent(a) => a.fmt(f),
            Endpoint::Named(n) => f.write_str(n),
        }
    }
}

/// Where a message is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// One mailbox.
    To(Endpoint),
    /// Every subscriber of a topic.
    Topic(Arc<str>),
    /// Every member of a team, by the team's number.
    Team(u64),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::To(e) => e.fmt(f),
            Address::Topic(t) => write!(f, "topic `{t}`"),
            Address::Team(t) => write!(f, "team {t}"),
        }
    }
}

/// What the directory or a mailbox refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "a topic name is 1 to {MAX_TOPIC_LEN} letters, digits, `-`, `_`, `.`, in parts joined by `/` (none empty, `.` or `..`); got {0:?}"
    )]
    BadTopic(String),
    #[error("no more than {MAX_TOPICS} topics may exist at once")]
    TooManyTopics,
    #[error("topic `{0}` already has {MAX_SUBSCRIBERS} subscribers")]
    TooManySubscribers(Arc<str>),
}

/// Checks a topic's name: up to [`MAX_TOPIC_LEN`] ASCII letters, digits, `-`, `_`, `.`, in
/// non-empty parts joined by `/`, none of them `.` or `..`.
pub fn check_topic(name: &str) -> Result<(), Error> {
    let ok = name.len() <= MAX_TOPIC_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && name.split('/').all(|part| !matches!(part, "" | "." | ".."));
    if ok {
        Ok(())
    } else {
        Err(Error::BadTopic(
            name.chars().take(MAX_TOPIC_LEN + 1).collect(),
        ))
    }
}

/// How a sender of another process of a cluster is named on a bus: `cluster:<process>/<endpoint>`.
pub const FAR: &str = "cluster:";

/// A name `cluster:<process>/<endpoint>` as the process and the endpoint it names there:
/// the process a node's or run's name (letters, digits, `-`, `_`, `.`, at most 128), the
/// endpoint `agent-N` or a mailbox's name.
pub fn far_endpoint(name: &str) -> Option<(&str, &str)> {
    let (process, endpoint) = name.strip_prefix(FAR)?.split_once('/')?;
    (is_process_name(process) && (far_agent(endpoint).is_some() || check_topic(endpoint).is_ok()))
        .then_some((process, endpoint))
}

/// Whether `name` can name a process of a cluster (a node's, a run's): letters, digits, `-`,
/// `_` and `.` (not first or last), at most 128 bytes.
pub fn is_process_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
}

/// `agent-N`, written as an agent's id is (no sign, no leading zero): N.
pub fn far_agent(endpoint: &str) -> Option<u32> {
    let n = endpoint.strip_prefix("agent-")?;
    let canonical =
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    canonical.then(|| n.parse().ok()).flatten()
}

/// A name a message may be sent to: a mailbox's (as [`check_topic`]), or another process's
/// endpoint (`cluster:<process>/<endpoint>`, see [`far_endpoint`]).
pub fn check_send_name(name: &str) -> Result<(), Error> {
    if far_endpoint(name).is_some() {
        return Ok(());
    }
    check_topic(name)
}

/// A message a mailbox refused, handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// No room: the sender may wait for some.
    Full(T),
    /// The mailbox closed: its owner left for good.
    Closed(T),
}

/// A bounded mailbox with one reader at a time (see the module's text).
#[derive(Debug)]
pub struct Mailbox<T> {
    queue: VecDeque<T>,
    /// Taken by the reader of epoch `epoch` and not acknowledged yet, oldest first.
    taken: Vec<T>,
    capacity: usize,
    /// The current reader's epoch; 0 before the first reader.
    epoch: u64,
    /// Messages handed out more than once so far.
    redelivered: u64,
    /// Closed for good: refuses every message.
    closed: bool,
}

impl<T> Mailbox<T> {
    /// An empty mailbox holding up to `capacity` messages (at least 1), taken ones included.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            taken: Vec::new(),
            capacity: capacity.max(1),
            epoch: 0,
            redelivered: 0,
            closed: false,
        }
    }

    /// Messages held: waiting and taken.
    pub fn len(&self) -> usize {
        self.queue.len() + self.taken.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages waiting to be taken.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Room for more messages.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// The current reader's epoch (0 before the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Messages handed out more than once so far.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// Whether the mailbox closed for good.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Puts `message` last, or hands it back when the mailbox is full or closed.
    pub fn put(&mut self, message: T) -> Result<(), Refused<T>> {
        if self.closed {
            return Err(Refused::Closed(message));
        }
        if self.room() == 0 {
            return Err(Refused::Full(message));
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// Puts `message` last even past the capacity: for a message coming back to its sender
    /// from a mailbox that closed. What comes back is bounded by what the closed mailboxes
    /// held, and refusing it would lose it.
    /// Refused only when the mailbox closed.
    pub fn put_back(&mut self, message: T) -> Result<(), Refused<T>> {
        if self.closed {
            return Err(Refused::Closed(message));
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// A new reader takes over: any batch its predecessor took and did not acknowledge goes
    /// back to the front, in order. Returns the new reader's epoch.
    pub fn attach(&mut self) -> u64 {
        self.give_back();
        self.epoch += 1;
        self.epoch
    }

    /// The reader of `epoch` left: its unacknowledged batch goes back to the front. Ignored
    /// from a stale reader.
    pub fn detach(&mut self, epoch: u64) {
        if epoch == self.epoch {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        self.redelivered += self.taken.len() as u64;
        for message in self.taken.drain(..).rev() {
            self.queue.push_front(message);
        }
    }

    /// The reader of `epoch` takes up to `max` waiting messages, oldest first, once it has
    /// acknowledged its previous batch (until then, nothing). A stale reader gets nothing.
    pub fn take(&mut self, epoch: u64, max: usize) -> Vec<T>
    where
        T: Clone,
    {
        if epoch != self.epoch || !self.taken.is_empty() {
            return Vec::new();
        }
        let n = max.min(self.queue.len());
        self.taken.extend(self.queue.drain(..n));
        self.taken.clone()
    }

    /// The reader of `epoch` handled its batch: the messages leave the mailbox. Returns how
    /// many left; 0 from a stale reader, whose batch is someone else's now.
    pub fn ack(&mut self, epoch: u64) -> usize {
        if epoch != self.epoch {
            return 0;
        }
        let n = self.taken.len();
        self.taken.clear();
        n
    }

    /// Closes the mailbox for good (its owner is gone) and empties it: every message held,
    /// taken ones first, in order. Any reader becomes stale, and nothing is put any more.
    pub fn close(&mut self) -> Vec<T> {
        self.closed = true;
        self.epoch += 1;
        let mut all: Vec<T> = self.taken.drain(..).collect();
        all.extend(self.queue.drain(..));
        all
    }
}

/// Who an address reaches: topics' subscribers and teams' members.
#[derive(Debug, Default)]
pub struct Directory {
    topics: BTreeMap<Arc<str>, BTreeSet<Endpoint>>,
    /// Per subscriber, its topics: leaving all of them costs what it subscribed to.
    subscribed: BTreeMap<Endpoint, BTreeSet<Arc<str>>>,
    teams: BTreeMap<u64, Vec<AgentId>>,
}

impl Directory {
    /// `who` subscribes to `topic`. Subscribing twice is subscribing once.
    pub fn subscribe(&mut self, topic: &str, who: Endpoint) -> Result<(), Error> {
        check_topic(topic)?;
        let name: Arc<str> = match self.topics.get_key_value(topic) {
            Some((name, subscribers)) => {
                if subscribers.len() >= MAX_SUBSCRIBERS && !subscribers.contains(&who) {
                    return Err(Error::TooManySubscribers(topic.into()));
                }
                name.clone()
            }
            None if self.topics.len() >= MAX_TOPICS => return Err(Error::TooManyTopics),
            None => topic.into(),
        };
        self.subscribed
            .entry(who.clone())
            .or_default()
            .insert(name.clone());
        self.topics.entry(name).or_default().insert(who);
        Ok(())
    }

    /// `who` leaves `topic`; a topic left with no subscriber is forgotten.
    pub fn unsubscribe(&mut self, topic: &str, who: &Endpoint) {
        if let Some(subscribers) = self.topics.get_mut(topic) {
            subscribers.remove(who);
            if subscribers.is_empty() {
                self.topics.remove(topic);
            }
        }
        if let Some(topics) = self.subscribed.get_mut(who) {
            topics.remove(topic);
            if topics.is_empty() {
                self.subscribed.remove(who);
            }
        }
    }

    /// `who` leaves every topic and team (its owner is gone).
    pub fn forget(&mut self, who: &Endpoint) {
        for topic in self.subscribed.remove(who).into_iter().flatten() {
            if let Some(subscribers) = self.topics.get_mut(&topic) {
                subscribers.remove(who);
                if subscribers.is_empty() {
                    self.topics.remove(&topic);
                }
            }
        }
        if let Endpoint::Agent(agent) = who {
            for members in self.teams.values_mut() {
                members.retain(|m| m != agent);
            }
        }
    }

    /// Agents with ids from `start` on that subscribe to some topic.
    pub fn agents_from(&self, start: u32) -> Vec<Endpoint> {
        self.subscribed
            .range(Endpoint::Agent(AgentId(start))..)
            .map(|(e, _)| e.clone())
            .filter(|e| matches!(e, Endpoint::Agent(_)))
            .collect()
    }

    /// Team `team` has these members (replacing any it had).
    pub fn set_team(&mut self, team: u64, members: Vec<AgentId>) {
        self.teams.insert(team, members);
    }

    /// Team `team` ended.
    pub fn end_team(&mut self, team: u64) {
        self.teams.remove(&team);
    }

    /// The topics and their subscriber counts, by name.
    pub fn topics(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.topics.iter().map(|(t, s)| (t, s.len()))
    }

    pub fn teams(&self) -> usize {
        self.teams.len()
    }

    /// The mailboxes `to` reaches, each once, in a stable order; `from` is left out of a
    /// topic or team it belongs to (nobody hears their own broadcast).
    pub fn reach(&self, to: &Address, from: &Endpoint) -> Vec<Endpoint> {
        match to {
            Address::To(e) => vec![e.clone()],
            Address::Topic(t) => self
                .topics
                .get(t)
                .into_iter()
                .flatten()
                .filter(|e| *e != from)
                .cloned()
                .collect(),
            Address::Team(t) => {
                let mut seen = BTreeSet::new();
                self.teams
                    .get(t)
                    .into_iter()
                    .flatten()
                    .map(|a| Endpoint::Agent(*a))
                    .filter(|e| e != from && seen.insert(e.clone()))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests;
