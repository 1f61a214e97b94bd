//! Leadership of what must be single across a cluster (the scaling engine of each role; a
//! workflow run's scheduler once runs go across the cluster), by a lease in a KV bucket.
//!
//! One key per office in the leaders bucket (`colony_leaders`), every write with a
//! per-message TTL:
//!
//! - a candidate takes an office by **creating** its key: of several creates, one succeeds;
//! - the leader **renews** every third of the TTL, by a compare-and-set on the key's revision
//!   that carries the TTL again;
//! - a leader leads only until two thirds of the TTL after it *sent* the last renewal that was
//!   acknowledged. The key lives a TTL from when the server *stored* that write, which is
//!   later, so a leader cut off from NATS stops before its key can expire and before anyone
//!   else can take it: two leaders never act at once;
//! - a leader that dies stops renewing; its key expires a TTL after its last renewal, the
//!   server leaves a delete marker, and the standbys, who watch the key (and try every second
//!   besides), create it at once: a takeover within the TTL and a second;
//! - the **term** is the revision of the write that created the key, so it only grows. What a
//!   leader writes elsewhere carries its term and is written by compare-and-set on what it
//!   read, so once a successor has written a deposed leader reads the later term and stops,
//!   or has its write refused (see the scaling records of `colony serve --nats`).
//!
//! The third of the TTL between a leader's end and its key's expiry assumes the servers'
//! clocks, which expire the key, do not jump forward that much mid-lease.
//!
//! A write whose answer was lost (a stream leader election) may have landed: the claim names
//! its holder (the candidate's name and a random suffix, unique per process), so a candidate
//! that finds its own claim where it expected none adopts it rather than fencing itself, and
//! leads again once a renewal is acknowledged.
//!
//! [`Election`] decides, sans IO, on virtual time; [`campaign`] runs it against the bucket.

use crate::{Cluster, Error};
use async_nats::jetstream::{self, kv};
use colony_agents::spawner::Spawner;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

/// The bucket of leases.
pub(crate) const LEADERS_BUCKET: &str = "colony_leaders";
/// Shortest and longest lease: NATS counts a message's TTL in whole seconds, and a takeover
/// should not wait more than ten minutes.
pub const MIN_TTL: Duration = Duration::from_secs(2);
pub const MAX_TTL: Duration = Duration::from_secs(600);

/// What a lease's value says: who holds it and since which term (0 in the creating write,
/// whose revision is the term).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub holder: String,
    pub term: u64,
}

/// The key as a candidate saw it: its revision, and the claim in it (`None` once deleted or
/// expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub revision: u64,
    pub claim: Option<Claim>,
}

impl Seen {
    /// The term of the claim seen.
    fn term(&self) -> u64 {
        match &self.claim {
            Some(claim) if claim.term != 0 => claim.term,
            _ => self.revision,
        }
    }
}

/// What the candidate must write now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the key with the claim `{holder, term: 0}`.
    Create,
    /// Update the key at `revision` with the claim `{holder, term}`.
    Renew { revision: u64, term: u64 },
    /// Nothing until [`Election::wake_at`] or an observation.
    Wait,
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Written {
        revision: u64,
    },
    /// The key was not at the revision the write expected; what a read then found (`None`:
    /// no key at all).
    Conflict(Option<Seen>),
    /// No answer (NATS unavailable, or the answer lost), or a conflict whose read failed.
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Following {
        try_at: Duration,
    },
    Leading {
        term: u64,
        revision: u64,
        /// It acts as leader until then.
        valid_until: Duration,
        renew_at: Duration,
    },
    Resigned,
}

/// One candidate's election for one office, sans IO: times are offsets on the caller's
/// monotonic clock.
#[derive(Clone, Debug)]
pub struct Election {
    holder: String,
    ttl: Duration,
    state: State,
}

impl Election {
    /// A candidate named `holder` (unique among live candidates) for a lease of `ttl`.
    pub fn new(holder: impl Into<String>, ttl: Duration, now: Duration) -> Self {
        Self {
            holder: holder.into(),
            ttl,
            state: State::Following { try_at: now },
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn valid_for(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// How long a standby waits between tries when it saw the key held, and a leader's
    /// patience with one write.
    pub fn retry(&self) -> Duration {
        (self.ttl / 3).min(Duration::from_secs(1))
    }

    /// The term it leads in at `now`, if it leads.
    pub fn leading(&self, now: Duration) -> Option<u64> {
        match self.state {
            State::Leading {
                term, valid_until, ..
            } if now < valid_until => Some(term),
            _ => None,
        }
    }

    /// Until when it leads, if it leads at `now`.
    pub fn valid_until(&self, now: Duration) -> Option<Duration> {
        match self.state {
            State::Leading { valid_until, .. } if now < valid_until => Some(valid_until),
            _ => None,
        }
    }

    /// What to write at `now`.
    pub fn next(&self, now: Duration) -> Op {
        match self.state {
            State::Following { try_at } if now >= try_at => Op::Create,
            State::Leading {
                term,
                revision,
                renew_at,
                ..
            } if now >= renew_at => Op::Renew { revision, term },
            _ => Op::Wait,
        }
    }

    /// When it next has something to do or stops leading, if nothing is observed before.
    pub fn wake_at(&self, now: Duration) -> Duration {
        match self.state {
            State::Following { try_at } => try_at,
            State::Leading {
                valid_until,
                renew_at,
                ..
            } if valid_until > now => renew_at.min(valid_until),
            State::Leading { renew_at, .. } => renew_at,
            State::Resigned => Duration::MAX,
        }
    }

    /// `op`, sent at `sent_at`, ended with `answer` at `now`.
    pub fn answered(&mut self, op: Op, answer: Answer, sent_at: Duration, now: Duration) {
        match (op, answer) {
            (Op::Create, Answer::Written { revision }) => {
                if let State::Following { .. } = self.state {
                    self.state = State::Leading {
                        term: revision,
                        revision,
                        valid_until: sent_at + self.valid_for(),
                        renew_at: sent_at + self.renew_every(),
                    };
                }
            }
            (Op::Renew { term, .. }, Answer::Written { revision }) => {
                if let State::Leading {
                    term: leading,
                    revision: known,
                    ..
                } = self.state
                    && leading == term
                    && revision > known
                {
                    self.state = State::Leading {
                        term,
                        revision,
                        valid_until: sent_at + self.valid_for(),
                        renew_at: sent_at + self.renew_every(),
                    };
                }
            }
            (Op::Create, Answer::Conflict(seen)) => {
                if let Some(seen) = seen {
                    self.observed(seen, now);
                }
                // The key was there when the write arrived: whatever a read says now, do not
                // try again at once, or a read that lags the write would make a hot loop.
                let soonest = now + self.retry() / 4;
                if let State::Following { try_at } = &mut self.state {
                    *try_at = (*try_at).max(soonest);
                }
            }
            (Op::Renew { .. }, Answer::Conflict(seen)) => {
                // The key moved from the revision it renews: the lease is lost, unless what
                // moved it was its own renewal whose answer was lost.
                let known = match self.state {
                    State::Leading { revision, .. } => revision,
                    _ => return,
                };
                match seen {
                    Some(seen)
                        if seen.revision > known
                            && seen.claim.as_ref().is_some_and(|c| c.holder == self.holder) =>
                    {
                        self.observed(seen, now)
                    }
                    Some(Seen { claim: Some(_), .. }) => {
                        self.state = State::Following {
                            try_at: now + self.retry(),
                        }
                    }
                    _ => self.state = State::Following { try_at: now },
                }
            }
            (_, Answer::Unavailable) => {
                let retry = self.retry();
                match &mut self.state {
                    State::Following { try_at } => *try_at = now + retry,
                    // Validity runs out on its own; try again soon while it lasts.
                    State::Leading { renew_at, .. } => *renew_at = now + retry / 4,
                    State::Resigned => {}
                }
            }
            (Op::Wait, _) => {}
        }
    }

    /// The key was seen as `seen` at `now` (a watch, or a read after a conflict).
    pub fn observed(&mut self, seen: Seen, now: Duration) {
        let ours = seen
            .claim
            .as_ref()
            .is_some_and(|claim| claim.holder == self.holder);
        match self.state {
            State::Resigned => {}
            State::Leading { revision, .. } if seen.revision <= revision => {}
            State::Leading {
                term, valid_until, ..
            } if ours && seen.term() == term => {
                // Our own write, whose answer was lost: confirm it with a renewal now.
                self.state = State::Leading {
                    term,
                    revision: seen.revision,
                    valid_until,
                    renew_at: now,
                };
            }
            State::Leading { .. } | State::Following { .. } if ours => {
                // Our claim from a write whose answer was lost: hold it, lead once a renewal
                // is acknowledged.
                self.state = State::Leading {
                    term: seen.term(),
                    revision: seen.revision,
                    valid_until: now,
                    renew_at: now,
                };
            }
            State::Leading { .. } | State::Following { .. } => {
                let try_at = if seen.claim.is_none() {
                    now
                } else {
                    now + self.retry()
                };
                self.state = State::Following { try_at };
            }
        }
    }

    /// Stops campaigning; the revision to delete if it held the key.
    pub fn resign(&mut self) -> Option<u64> {
        let held = match self.state {
            State::Leading { revision, .. } => Some(revision),
            _ => None,
        };
        self.state = State::Resigned;
        held
    }
}

/// A term of leadership as a campaign publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub term: u64,
    /// It leads until then unless a renewal moves it on.
    pub until: Instant,
}

/// A campaign for one office, running until resigned or dropped (dropping it stops renewing
/// without deleting the key, as a crash would: a standby takes over when the key expires).
#[derive(Debug)]
pub struct Leadership {
    office: String,
    holder: String,
    term: watch::Receiver<Option<Term>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Option<()>>,
}

impl Leadership {
    pub fn office(&self) -> &str {
        &self.office
    }

    /// The candidate's name in claims: the name it was given and a random suffix.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The term this process leads in now, if it leads.
    pub fn term(&self) -> Option<u64> {
        let held = *self.term.borrow();
        held.filter(|t| Instant::now() < t.until).map(|t| t.term)
    }

    /// A receiver of the campaign's terms, for a loop that acts as leader.
    pub fn watch(&self) -> watch::Receiver<Option<Term>> {
        self.term.clone()
    }

    /// A view of the campaign for others to read whether it leads.
    pub fn observer(&self) -> Observer {
        Observer {
            holder: self.holder.clone(),
            term: self.term.clone(),
        }
    }

    /// Stops campaigning and gives the office up at once (deletes the key if it holds it).
    pub async fn resign(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Whether a campaign leads, for those who only read it (a server's status routes).
#[derive(Clone, Debug)]
pub struct Observer {
    holder: String,
    term: watch::Receiver<Option<Term>>,
}

impl Observer {
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The term the campaign leads in now, if it leads; `None` also once it ended.
    pub fn term(&self) -> Option<u64> {
        let held = *self.term.borrow();
        held.filter(|t| Instant::now() < t.until).map(|t| t.term)
    }
}

/// Campaigns for `office` as `name` with leases of `ttl` (from 2 s to 10 min, whole seconds).
pub async fn campaign(
    cluster: &Cluster,
    office: &str,
    name: &str,
    ttl: Duration,
) -> Result<Leadership, Error> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) || ttl.subsec_nanos() != 0 {
        return Err(Error::Settings(format!(
            "lease TTL {ttl:?}: allowed whole seconds from 2s to 10m"
        )));
    }
    crate::settings::check_name("office", office)?;
    crate::settings::check_name("candidate name", name)?;
    let bucket = leaders(cluster).await?;
    let holder = format!("{name}-{}", &crate::client::random_id()[..8]);
    let (tx, rx) = watch::channel(None);
    let (stop, stopped) = oneshot::channel();
    let run = Campaign {
        bucket,
        js: cluster.js.clone(),
        office: office.to_owned(),
        election: Election::new(holder.clone(), ttl, Duration::ZERO),
        ttl,
        tx,
    };
    let task = Spawner::spawn("cluster-leadership", run.run(stopped));
    Ok(Leadership {
        office: office.to_owned(),
        holder,
        term: rx,
        stop: Some(stop),
        task,
    })
}

/// The leaders bucket, made on first use: per-message TTLs, and delete markers when they
/// expire so that watchers see a lease end.
pub(crate) async fn leaders(cluster: &Cluster) -> Result<kv::Store, Error> {
    let config = kv::Config {
        bucket: LEADERS_BUCKET.into(),
        description: "colony: leases of single offices".into(),
        history: 1,
        max_value_size: 4096,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cluster.settings.replicas,
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    crate::client::bucket(&cluster.js, config).await
}

/// The office's lease as the bucket holds it now.
pub(crate) async fn read(bucket: &kv::Store, office: &str) -> Result<Option<Seen>, Error> {
    let entry = bucket
        .entry(office)
        .await
        .map_err(|e| Error::nats(format!("reading the lease of {office}"), e))?;
    Ok(entry.map(seen))
}

fn seen(entry: kv::Entry) -> Seen {
    Seen {
        revision: entry.revision,
        claim: claim_in(entry.operation, &entry.value),
    }
}

/// The claim an entry makes. A value that is not a claim (a newer colony's, or written by
/// hand) still holds the key, by nobody we know: only its expiry or deletion frees it.
fn claim_in(operation: kv::Operation, value: &[u8]) -> Option<Claim> {
    match operation {
        kv::Operation::Put => Some(serde_json::from_slice(value).unwrap_or_else(|_| Claim {
            holder: String::new(),
            term: 0,
        })),
        kv::Operation::Delete | kv::Operation::Purge => None,
    }
}

struct Campaign {
    bucket: kv::Store,
    js: jetstream::Context,
    office: String,
    election: Election,
    ttl: Duration,
    tx: watch::Sender<Option<Term>>,
}

impl Campaign {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let start = Instant::now();
        let mut watch = None;
        let mut watch_again_at = start;
        loop {
            let now = start.elapsed();
            self.publish(start, now);
            let op = self.election.next(now);
            if op != Op::Wait {
                let answer = tokio::select! {
                    answer = tokio::time::timeout(self.election.retry(), self.write(op)) => {
                        answer.unwrap_or(Answer::Unavailable)
                    }
                    _ = &mut stopped => break,
                };
                self.election.answered(op, answer, now, start.elapsed());
                continue;
            }
            if watch.is_none() && Instant::now() >= watch_again_at {
                let made = tokio::select! {
                    made = tokio::time::timeout(
                        self.election.retry(),
                        self.bucket.watch(&self.office),
                    ) => made,
                    _ = &mut stopped => break,
                };
                watch = made.ok().and_then(Result::ok);
                // NATS unavailable: make it again after a pause; the tries go on meanwhile.
                watch_again_at = Instant::now() + self.election.retry();
                continue;
            }
            let mut wake = start
                + self
                    .election
                    .wake_at(now)
                    .min(now + Duration::from_secs(3600));
            if watch.is_none() {
                wake = wake.min(watch_again_at);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                entry = next_entry(&mut watch) => match entry {
                    Some(entry) => self.election.observed(seen(entry), start.elapsed()),
                    // The watch ended (NATS unavailable): make it again after a pause.
                    None => {
                        watch = None;
                        watch_again_at = Instant::now() + self.election.retry();
                    }
                },
                _ = &mut stopped => break,
            }
        }
        self.tx.send_replace(None);
        let mut held = self.election.resign();
        if held.is_none() {
            // A create in flight when it stopped may have landed: a claim of ours is ours.
            let found =
                tokio::time::timeout(self.election.retry(), read(&self.bucket, &self.office));
            if let Ok(Ok(Some(seen))) = found.await
                && seen
                    .claim
                    .is_some_and(|c| c.holder == self.election.holder())
            {
                held = Some(seen.revision);
            }
        }
        if let Some(revision) = held {
            let deleted =
                tokio::time::timeout(self.election.retry(), self.delete_with_ttl(revision)).await;
            if !matches!(deleted, Ok(Ok(_))) {
                tracing::debug!(office = %self.office, "a resigned lease was left to expire");
            }
        }
    }

    /// Deletes the key at `revision` with a marker that expires itself after a minute: an
    /// office used once (a workflow run's) leaves nothing behind for ever.
    async fn delete_with_ttl(&self, revision: u64) -> Result<u64, bool> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        self.publish_with_ttl(
            revision,
            headers,
            Duration::from_secs(60),
            bytes::Bytes::new(),
        )
        .await
    }

    fn publish(&self, start: Instant, now: Duration) {
        let held = self
            .election
            .leading(now)
            .zip(self.election.valid_until(now))
            .map(|(term, until)| Term {
                term,
                until: start + until,
            });
        self.tx.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
    }

    async fn write(&self, op: Op) -> Answer {
        let (revision, term) = match op {
            Op::Create => (0, 0),
            Op::Renew { revision, term } => (revision, term),
            Op::Wait => return Answer::Unavailable,
        };
        let claim = Claim {
            holder: self.election.holder().to_owned(),
            term,
        };
        let value = bytes::Bytes::from(serde_json::to_vec(&claim).unwrap_or_default());
        let mut written = self.write_with_ttl(revision, value.clone()).await;
        if op == Op::Create && written == Err(true) {
            // A create over a delete or expiry marker expects the marker's revision.
            match read(&self.bucket, &self.office).await {
                Ok(Some(Seen {
                    revision: marker,
                    claim: None,
                })) => written = self.write_with_ttl(marker, value).await,
                Ok(seen) => return Answer::Conflict(seen),
                Err(_) => return Answer::Unavailable,
            }
        }
        match written {
            Ok(revision) => Answer::Written { revision },
            Err(true) => match read(&self.bucket, &self.office).await {
                Ok(seen) => Answer::Conflict(seen),
                Err(_) => Answer::Unavailable,
            },
            Err(false) => Answer::Unavailable,
        }
    }

    /// A compare-and-set on the key's revision (0: no key) that carries the TTL, which the
    /// bucket's `update` cannot and its `create_with_ttl` drops over a marker: `Err(true)` on
    /// a wrong revision.
    async fn write_with_ttl(&self, revision: u64, value: bytes::Bytes) -> Result<u64, bool> {
        let headers = async_nats::HeaderMap::new();
        self.publish_with_ttl(revision, headers, self.ttl, value)
            .await
    }

    /// Publishes to the key with its revision expected (0: none) and a TTL: `Err(true)` on a
    /// wrong revision.
    async fn publish_with_ttl(
        &self,
        revision: u64,
        mut headers: async_nats::HeaderMap,
        ttl: Duration,
        value: bytes::Bytes,
    ) -> Result<u64, bool> {
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        headers.insert(
            async_nats::header::NATS_MESSAGE_TTL,
            ttl.as_secs().to_string().as_str(),
        );
        let subject = format!("$KV.{LEADERS_BUCKET}.{}", self.office);
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|_| false)?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => Err(e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence),
        }
    }
}

async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    match watch {
        Some(watch) => match watch.next().await {
            Some(Ok(entry)) => Some(entry),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
