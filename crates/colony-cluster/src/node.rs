//! A node: pulls the tasks of the roles its local runtime's pools serve, runs each as one
//! attempt on that runtime (its hierarchy, routing, supervision and agents), and ends it in
//! the tasks bucket under the lease it took. [`crate::lease`] decides; this module does the IO.

use crate::{
    Cluster, Error,
    client::random_id,
    lease::{self, Outcome, Reply, Step},
    membership::{self, NodeInfo},
    settings::{self, MAX_ERROR, MAX_RECORD},
    wire::{DecisionSummary, Row, TaskMessage, TeamSummary, Together, Voter, Weigh, bundle},
};
use async_nats::jetstream::{
    AckKind, Message,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    kv,
};
use colony_agents::spawner::Spawner;
use colony_core::task::{Priority, TaskSpec, TaskState};
use colony_runtime::Handle;
use futures::StreamExt;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{Semaphore, watch};

mod agreed;
mod bundled;
mod slots;
mod spread;
use slots::{Held, InQueue, Permit, Slots};
pub use spread::MAX_SPREAD_VOTERS;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Its name in the cluster: letters, digits, `-`, `_` and `.`; unique among live nodes.
    pub name: String,
    /// Most attempts it runs at once (its agents' capacity is a good value).
    pub max_in_flight: usize,
    /// On drain, how long running attempts may go on before they are handed back.
    pub drain_timeout: Duration,
}

/// What a node did, counted since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeReport {
    /// Attempts it started.
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Attempts that failed and left their task queued for another.
    pub retried: u64,
    pub dead_lettered: u64,
    /// Attempts it gave back unfinished while draining.
    pub handed_back: u64,
    /// Results it could not commit: another node held the task by then (I2).
    pub fenced: u64,
    /// Attempts stopped, their results dropped, because their task was cancelled.
    pub cancelled: u64,
    /// Deliveries of tasks that had already ended (acked, not run again).
    pub already_ended: u64,
}

#[derive(Debug, Default)]
struct Counters {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    handed_back: AtomicU64,
    fenced: AtomicU64,
    cancelled: AtomicU64,
    already_ended: AtomicU64,
    running: AtomicU64,
}

/// What a node counts; each also goes to `/metrics` as
/// `colony_cluster_attempts_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Started,
    Succeeded,
    Failed,
    Retried,
    DeadLettered,
    HandedBack,
    Fenced,
    Cancelled,
    AlreadyEnded,
}

impl Counters {
    fn add(&self, kind: Kind) {
        let (counter, name) = match kind {
            Kind::Started => (&self.started, "started"),
            Kind::Succeeded => (&self.succeeded, "succeeded"),
            Kind::Failed => (&self.failed, "failed"),
            Kind::Retried => (&self.retried, "retried"),
            Kind::DeadLettered => (&self.dead_lettered, "dead-lettered"),
            Kind::HandedBack => (&self.handed_back, "handed-back"),
            Kind::Fenced => (&self.fenced, "fenced"),
            Kind::Cancelled => (&self.cancelled, "cancelled"),
            Kind::AlreadyEnded => (&self.already_ended, "already-ended"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("colony_cluster_attempts_total", "outcome" => name).increment(1);
    }

    fn report(&self) -> NodeReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeReport {
            started: get(&self.started),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            handed_back: get(&self.handed_back),
            fenced: get(&self.fenced),
            cancelled: get(&self.cancelled),
            already_ended: get(&self.already_ended),
        }
    }
}

/// A node's phases: taking tasks, draining (no new ones), handing back (stop what runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Taking,
    Draining,
    HandingBack,
}

/// What every delivery of one node shares.
#[derive(Debug)]
struct Shared {
    cluster: Cluster,
    handle: Handle,
    name: String,
    counters: Counters,
    phase: watch::Receiver<Phase>,
    /// The consumers' `ack_wait` (the shortest): whoever made them set it, maybe another
    /// node with another setting; in-progress acks go every third of it.
    ack_wait: Duration,
    /// The node's slots, and each consumer's: a role's are its agents' capacity, so a node
    /// never holds a role's tasks its agents cannot start.
    slots: Slots,
    /// Places for the spread votes this node counts (they hold no slot).
    counting: Arc<Semaphore>,
    /// One taken by each delivery until it has answered the stream: a drain waits for all
    /// (a bundle lets its tasks' slots go as each ends, before its one answer is sent).
    delivering: Arc<Semaphore>,
    /// The ends of their ballot tasks, heard on one watch.
    ends: Arc<spread::Ends>,
    /// The revision of this node's last heartbeat written (0 before the first): the next is
    /// written over it, and only over it. Held while a heartbeat is written: the drain's and
    /// the loop's, at once, would each find the other's revision and take it for another
    /// process's write.
    beat: tokio::sync::Mutex<u64>,
}

impl Shared {
    /// Writes `info` as this node's heartbeat, over its last one; says once when another
    /// process holds the name (it joined while this node's heartbeat had lapsed), and
    /// leaves that one's heartbeat as it is.
    async fn beat(&self, info: &NodeInfo, said: &mut bool) {
        let mut beat = self.beat.lock().await;
        let last = Some(*beat).filter(|&r| r > 0);
        match membership::renew(&self.cluster.nodes, info, last).await {
            Ok(revision) => {
                *beat = revision;
                *said = false;
            }
            Err(membership::Unwritten::Taken(other)) => {
                if !std::mem::replace(said, true) {
                    tracing::error!(
                        "node {}: another process (started {} ms since the epoch) took the name while this node's heartbeat had lapsed; its heartbeat is left as it is, and this node is not listed: give one of them another --name",
                        self.name,
                        other.started_ms
                    );
                }
            }
            Err(membership::Unwritten::Failed(e)) => tracing::warn!("{e}"),
        }
    }
}

/// Whether a node takes work: connected to NATS, and not draining.
#[derive(Clone, Debug)]
pub struct Readiness {
    shared: Arc<Shared>,
}

impl Readiness {
    /// Attempts running on the node now.
    pub fn running(&self) -> u64 {
        self.shared.counters.running.load(Ordering::Relaxed)
    }

    pub fn check(&self) -> Result<(), String> {
        if *self.shared.phase.borrow() != Phase::Taking {
            return Err(format!("node {} is draining", self.shared.name));
        }
        match self.shared.cluster.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!(
                "node {} is not connected to NATS ({state:?})",
                self.shared.name
            )),
        }
    }
}

/// A node in the cluster, running until [`Node::drain`]. Dropped without a drain, it stops
/// pulling and hands back what runs at once; its heartbeat expires with its TTL.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    drain_timeout: Duration,
    pullers: Vec<tokio::task::JoinHandle<Option<()>>>,
    heart: tokio::task::JoinHandle<Option<()>>,
    /// Answers `colony cluster agents` for this node's agents.
    answers: tokio::task::JoinHandle<Option<()>>,
    /// Feeds its agents' reputations with what spread votes they voted in came to.
    agreed: tokio::task::JoinHandle<Option<()>>,
    info: NodeInfo,
}

impl Node {
    /// Joins the cluster: makes the consumers of the roles `handle`'s pools serve (and of
    /// tasks any agent may run), writes the first heartbeat, and starts pulling.
    pub async fn start(
        cluster: Cluster,
        handle: Handle,
        options: NodeOptions,
    ) -> Result<Node, Error> {
        check_name(&options.name)?;
        let mut roles: Vec<String> = handle
            .pools()
            .iter()
            .map(|(spec, _)| spec.role.to_string())
            .collect();
        roles.sort();
        roles.dedup();
        for role in &roles {
            settings::check_role(role)?;
        }
        let agents = handle.pools().iter().map(|(_, n)| *n).sum();
        let max_in_flight = options.max_in_flight.clamp(1, 100_000) as u64;
        let capacity = |role: Option<&str>| -> u32 {
            let of_role: u64 = handle
                .pools()
                .iter()
                .filter(|(spec, _)| role.is_none_or(|r| *spec.role == *r))
                .map(|(spec, n)| n * u64::from(spec.concurrency.max(1)))
                .sum();
            u32::try_from(of_role.clamp(1, max_in_flight)).unwrap_or(u32::MAX)
        };
        let mut consumers = Vec::new();
        for role in roles.iter().map(|r| Some(r.as_str())).chain([None]) {
            consumers.push((role.map(str::to_owned), by_priority(&cluster, role).await?));
        }
        let ack_wait = consumers
            .iter_mut()
            .flat_map(|(_, c)| c.iter_mut())
            .map(|c| c.cached_info().config.ack_wait)
            .min()
            .unwrap_or(cluster.settings.ack_wait)
            .max(Duration::from_millis(300));
        let by_role = roles
            .iter()
            .map(|role| {
                let agents = handle
                    .pools()
                    .iter()
                    .filter(|(spec, _)| *spec.role == **role)
                    .map(|(_, n)| *n)
                    .sum();
                let slots = u64::from(capacity(Some(role)));
                (role.clone(), membership::RoleSlots { agents, slots })
            })
            .collect();
        let now = crate::now_ms();
        let info = NodeInfo {
            name: options.name.clone(),
            instance: random_id(),
            roles: roles.clone(),
            agents,
            by_role,
            running: 0,
            ended: 0,
            fenced: 0,
            draining: false,
            started_ms: now,
            at_ms: now,
            version: env!("CARGO_PKG_VERSION").into(),
            tiers: Vec::new(),
            unhealthy: 0,
            votes: true,
            teams: true,
            weights: true,
            spread: true,
            spread_teams: true,
            spread_weights: true,
            spread_delegation: true,
            bundles: true,
            bundle_subjects: true,
        };
        let mut info = info;
        let patience = Duration::from_secs(1);
        if let Some((tiers, unhealthy)) = membership::hierarchy(&handle, patience).await {
            (info.tiers, info.unhealthy) = (tiers, unhealthy);
        }
        let (phase, phase_rx) = watch::channel(Phase::Taking);
        // Subscribed before it is listed (a node in the list answers for its agents), and
        // answering once it is: while it waits for its name, a live node of that name
        // answers alone.
        let answers = crate::agents::answer_queries(
            cluster.client.clone(),
            &options.name,
            now,
            handle.clone(),
            phase_rx.clone(),
        )
        .await?;
        let agreed = agreed::hear(
            cluster.client.clone(),
            (&options.name, now),
            handle.clone(),
            phase_rx.clone(),
        )
        .await?;
        let ttl = cluster.settings.heartbeat_ttl;
        let joined = membership::join(&cluster.nodes, &info, ttl).await?;
        let answers = Spawner::spawn("cluster-agent-queries", answers);
        let agreed = Spawner::spawn("cluster-votes-agreed", agreed);
        // The node's own slots (--max-in-flight), which every delivery takes besides its
        // role's.
        let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
        let slots = Slots::new(
            all,
            consumers
                .iter()
                .map(|(role, _)| (role.clone(), capacity(role.as_deref()))),
        );
        let shared = Arc::new(Shared {
            cluster,
            handle,
            name: options.name.clone(),
            counters: Counters::default(),
            phase: phase_rx,
            ack_wait,
            slots,
            counting: Arc::new(Semaphore::new(spread::MAX_COUNTING)),
            delivering: Arc::new(Semaphore::new(DELIVERING as usize)),
            ends: Arc::default(),
            beat: tokio::sync::Mutex::new(joined),
        });
        let mut pullers = Vec::new();
        for (role, consumer) in consumers {
            let slot = shared
                .slots
                .role(role.as_deref())
                .expect("a slot for each consumer's role");
            let pull = pull_loop(
                shared.clone(),
                consumer,
                slot.semaphore.clone(),
                shared.slots.node().semaphore.clone(),
            );
            pullers.push(Spawner::spawn("cluster-pull", pull));
        }
        let heart = Spawner::spawn("cluster-heartbeat", heartbeat(shared.clone(), info.clone()));
        Ok(Node {
            shared,
            phase,
            drain_timeout: options.drain_timeout,
            pullers,
            heart,
            answers,
            agreed,
            info,
        })
    }

    pub fn report(&self) -> NodeReport {
        self.shared.counters.report()
    }

    /// What answers `/readyz` for this node, while it runs and as it drains.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            shared: self.shared.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Leaves the cluster without losing work: stops pulling, lets running attempts finish
    /// for up to the drain timeout, hands back the rest (a nak each, not counted as an
    /// attempt), and deletes its heartbeat.
    pub async fn drain(self) -> NodeReport {
        let _ = self.phase.send(Phase::Draining);
        let mut info = self.info.clone();
        info.draining = true;
        info.at_ms = crate::now_ms();
        self.shared.beat(&info, &mut false).await;
        for puller in self.pullers {
            let _ = puller.await;
        }
        let slots = &self.shared.slots;
        // Every slot free, and no spread vote counting (it holds none).
        let counting = &self.shared.counting;
        let delivering = &self.shared.delivering;
        let idle = || async {
            let all = slots.all().map(|s| s.semaphore.acquire_many(s.size));
            futures::future::join3(
                futures::future::join_all(all),
                counting.acquire_many(spread::MAX_COUNTING as u32),
                delivering.acquire_many(DELIVERING),
            )
            .await
        };
        if tokio::time::timeout(self.drain_timeout, idle())
            .await
            .is_err()
        {
            let _ = self.phase.send(Phase::HandingBack);
            let _ = idle().await;
        }
        // Its last heartbeat written, not cut off midway (its revision would be lost).
        let beat = self.shared.beat.lock().await;
        self.heart.abort();
        let last = Some(*beat).filter(|&r| r > 0);
        drop(beat);
        let nodes = &self.shared.cluster.nodes;
        if let Err(e) = membership::leave(nodes, &self.info, last).await {
            tracing::warn!("{e}");
        }
        // Out of the list first: a node listed answers for its agents.
        self.answers.abort();
        self.agreed.abort();
        let _ = self.shared.cluster.flush().await;
        self.shared.counters.report()
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if colony_core::mailbox::is_process_name(name) {
        Ok(())
    } else {
        Err(Error::Settings(format!(
            "node name `{}`: use letters, digits, `-`, `_` and `.` (not first or last), at most 128",
            name.chars().take(140).collect::<String>()
        )))
    }
}

/// The consumers of `role`'s tasks (any agent's when `None`), one for each priority, the
/// highest first, made if they are not there, each taking its priority's plain tasks and
/// bundles (one made before bundles had subjects of their own is widened). The one
/// consumer of every priority that
/// nodes made before is deleted first: its subjects overlap theirs, which a work-queue
/// stream refuses. The tasks it had delivered and not yet acknowledged stay in the stream,
/// and the new consumers deliver them again.
async fn by_priority(cluster: &Cluster, role: Option<&str>) -> Result<Vec<PullConsumer>, Error> {
    let unsorted = settings::unsorted_consumer(role);
    if let Err(e) = cluster.stream.delete_consumer(&unsorted).await {
        let gone = matches!(
            e.kind(),
            async_nats::jetstream::stream::ConsumerErrorKind::JetStream(ref j)
                if j.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
        );
        if !gone {
            return Err(Error::nats(format!("deleting the consumer {unsorted}"), e));
        }
    }
    let made = settings::consumers(role)
        .into_iter()
        .map(|(name, subject)| {
            let config = pull::Config {
                durable_name: Some(name.clone()),
                filter_subjects: settings::filters(&subject),
                ack_policy: AckPolicy::Explicit,
                ack_wait: cluster.settings.ack_wait,
                // Attempts are counted in the task's record, where a hand-back does not count:
                // the stream delivers until the record says the task ended.
                max_deliver: -1,
                max_ack_pending: 100_000,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            };
            async move {
                // A cluster just started, or electing its meta leader, answers late or not at
                // all for a while: asked again for up to MAKE_WAIT, then the last error.
                let deadline = Instant::now() + MAKE_WAIT;
                let mut pause = Duration::from_millis(250);
                loop {
                    match cluster
                        .stream
                        .get_or_create_consumer(&name, config.clone())
                        .await
                    {
                        Ok(consumer) => {
                            // Made by a node from before bundles had subjects of their own.
                            let info = consumer.cached_info();
                            return match settings::widened(&info.config, &subject) {
                                None => Ok(consumer),
                                Some(wider) => cluster.widen_consumer(wider).await,
                            };
                        }
                        Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                            tracing::debug!("the consumer {name}: {e}; asking again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => return Err(Error::nats(format!("the consumer {name}"), e)),
                    }
                }
            }
        });
    futures::future::try_join_all(made).await
}

/// How long a node keeps asking for its consumers while the cluster cannot make them yet.
const MAKE_WAIT: Duration = Duration::from_secs(30);

/// Whether making a consumer failed for a while only: no answer in time, no server to
/// answer, or a cluster without a (meta) leader for now.
fn transient(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::{ErrorCode, stream::ConsumerErrorKind as K};
    match e.kind() {
        K::TimedOut | K::Request => true,
        K::JetStream(j) => [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_LEADER,
        ]
        .contains(&j.error_code()),
        _ => false,
    }
}

async fn heartbeat(shared: Arc<Shared>, mut info: NodeInfo) {
    let every = shared.cluster.settings.heartbeat_ttl / 3;
    let mut said = false;
    let mut phase = shared.phase.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            // The node is gone (dropped without a drain): so is its heartbeat.
            changed = phase.changed() => if changed.is_err() { return },
        }
        let report = shared.counters.report();
        info.running = shared.counters.running.load(Ordering::Relaxed);
        info.ended = report.succeeded
            + report.failed
            + report.retried
            + report.dead_lettered
            + report.handed_back
            + report.cancelled;
        info.fenced = report.fenced;
        info.draining = *phase.borrow() != Phase::Taking;
        let patience = (every / 2).min(Duration::from_secs(1));
        if let Some((tiers, unhealthy)) = membership::hierarchy(&shared.handle, patience).await {
            (info.tiers, info.unhealthy) = (tiers, unhealthy);
        }
        info.at_ms = crate::now_ms();
        shared.beat(&info, &mut said).await;
    }
}

/// Deliveries a node holds at once, at most, each until it has answered the stream (its
/// slots bound them far lower).
const DELIVERING: u32 = 1 << 20;

/// How long a node tries to write an attempt's end while it takes work, keeping the
/// delivery alive meanwhile: past a leader election of the bucket (seconds).
const END_PATIENCE: Duration = Duration::from_secs(30);

/// Longest wait for an ack or nak to leave: while the client reconnects its sends queue up.
const ACK_SEND_WAIT: Duration = Duration::from_secs(2);

/// How long a node with nothing to do waits on a role's consumers before asking again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// How much past IDLE_WAIT a node waits for the servers to end its waiting requests.
const IDLE_SLACK: Duration = Duration::from_millis(500);

/// How long a busy node leaves a priority it found empty before asking it again: the empty
/// asks cost a round trip each, ahead of the priority that has work. An idle node waits on
/// every priority at once, so this delays a higher priority's task only while the node is
/// busy with lower ones.
const RECHECK: Duration = Duration::from_millis(50);

/// How long a priority whose consumer answered with an error (it is electing a leader, or
/// is gone) is left before it is asked again: not at once, again and again.
const BACKOFF: Duration = Duration::from_millis(500);
/// How long a vote or team handed back for want of slots stays out of every node's reach:
/// a node that cannot seat it now would be given it again at once.
const NO_ROOM_DELAY: Duration = Duration::from_millis(250);

/// Longest a node waits for the answer to an ask that does not wait before it goes on: the
/// server answers at once, and a consumer whose leader just died would otherwise hold the
/// pull (a reply lost with a connection, for good). The answer is still read to its end,
/// aside, for up to `ack_wait`, and what comes then is handed back ([`late`]).
const ASK_LIMIT: Duration = Duration::from_secs(1);

/// Pulls one role's tasks while the node takes tasks, as many as it has free slots, each run
/// on its own, the highest priority first: `consumers` are the role's, one for each
/// priority, the highest first. With slots free, it asks them in that order for what they
/// have now, without waiting, until the slots are taken. When none has anything, it lets
/// its slots go and waits on all of them at once for the first task to come, and reads what
/// the other waiting requests are given to their end ([`rest`]) before it returns.
async fn pull_loop(
    shared: Arc<Shared>,
    consumers: Vec<PullConsumer>,
    slots: Arc<Semaphore>,
    node_slots: Arc<Semaphore>,
) {
    let mut phase = shared.phase.clone();
    let mut want = 1;
    // Until when each priority is left alone: found empty (RECHECK) or answering with
    // errors (BACKOFF).
    let mut left_until: Vec<Option<Instant>> = vec![None; consumers.len()];
    // The last wait on every priority ended with nothing: wait again without asking first.
    let mut quiet = false;
    // Tasks a message of each priority carried when last pulled (a bundle's several): as
    // many fewer messages are asked for.
    let mut per_message = vec![1; consumers.len()];
    // The role's tasks waiting in bundles this node holds.
    let queued = shared.slots.of_role(&slots).map(|slot| slot.queued.clone());
    let mut rests = Vec::new();
    while *phase.borrow() == Phase::Taking {
        let both = async {
            let role = slots.clone().acquire_owned().await.ok()?;
            let node = node_slots.clone().acquire_owned().await.ok()?;
            Some((role, node))
        };
        let first = tokio::select! {
            permit = both => match permit { Some(p) => p, None => break },
            changed = phase.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        // Bundles this node holds have tasks waiting for a slot: the slot goes to them, and
        // no more work is taken until none waits.
        if let Some(queued) = queued.as_ref().filter(|q| q.any()) {
            drop(first);
            tokio::select! {
                () = queued.emptied() => {}
                _ = phase.changed() => {}
            }
            continue;
        }
        let mut permits = vec![first];
        // As many as the last pull found, doubled: a role with nothing to deliver holds one
        // slot while it waits, not a batch of the node's.
        while permits.len() < want {
            match try_permit(&slots, &node_slots) {
                Some(permit) => permits.push(permit),
                None => break,
            }
        }
        let asked = permits.len();
        if !quiet {
            let pulled = (&mut permits, per_message.as_mut_slice());
            ask_in_order(&shared, &consumers, pulled, &mut left_until).await;
        }
        let got = asked - permits.len();
        if got > 0 {
            want = (2 * got).clamp(want, 256);
            continue;
        }
        want = 1;
        // Nothing at any priority: wait on every one at once, holding no slot meanwhile (a
        // role waiting for work must not keep another from the node's slots).
        drop(permits);
        let waiting = consumers
            .iter()
            .map(|c| c.fetch().max_messages(1).expires(IDLE_WAIT).messages());
        let mut batches = Vec::with_capacity(consumers.len());
        for batch in futures::future::join_all(waiting).await {
            match batch {
                Ok(batch) => batches.push(batch),
                Err(e) => tracing::warn!("node {}: pulling tasks: {e}", shared.name),
            }
        }
        if batches.is_empty() {
            pause(&mut phase, BACKOFF).await;
            continue;
        }
        let mut waiting = futures::stream::select_all(batches);
        // The servers end each request at IDLE_WAIT; one lost with a consumer's dead leader
        // would hold the pull until the client's own limit, 5 s later. Past IDLE_WAIT and a
        // little, the requests are read to their end aside and the node asks again.
        let came = tokio::select! {
            came = tokio::time::timeout(IDLE_WAIT + IDLE_SLACK, waiting.next()) => came.ok(),
            _ = phase.changed() => None,
        };
        quiet = matches!(came, Some(None));
        let errored = matches!(came, Some(Some(Err(_))));
        match came {
            Some(Some(Ok(message))) => {
                // Work came at its priority: that one is asked again at once. The
                // consumers go from the highest priority down.
                let index = settings::priority_of_subject(&message.subject)
                    .and_then(|p| Priority::HIGHEST.get().checked_sub(p));
                if let Some(left) = index.and_then(|i| left_until.get_mut(usize::from(i))) {
                    *left = None;
                }
                take(&shared, message, &slots, &node_slots).await;
            }
            Some(Some(Err(e))) => tracing::debug!("node {}: pulling tasks: {e}", shared.name),
            Some(None) | None => {}
        }
        if !waiting.is_empty() {
            rests.retain(|r: &tokio::task::JoinHandle<_>| !r.is_finished());
            rests.push(Spawner::spawn(
                "cluster-pull-rest",
                rest(shared.clone(), waiting, slots.clone(), node_slots.clone()),
            ));
        }
        // A consumer answered with an error: not asked again at once.
        if errored {
            pause(&mut phase, BACKOFF).await;
        }
    }
    // A drain waits for the pullers: the waiting requests are read to their end first, so
    // what they are given is handed back before the node leaves.
    for rest in rests {
        let _ = rest.await;
    }
}

/// Sleeps for `time`, or less if the node's phase changes.
async fn pause(phase: &mut watch::Receiver<Phase>, time: Duration) {
    tokio::select! {
        () = tokio::time::sleep(time) => {}
        _ = phase.changed() => {}
    }
}

/// Asks a role's consumers, the highest priority first, for what they hold now, without
/// waiting, while `permits` last, in two rounds of asks sent at once. First the highest
/// priority that had work when last asked and each above it not left alone (each of those
/// for one message: they had none): the empty ones then cost no round trip of their own
/// ahead of the work. Then, if slots remain, each below
/// it not left alone. In each round what a higher priority gives is taken first, and what
/// comes beyond the slots is handed back at once; a consumer that does not answer holds the
/// round for [`ASK_LIMIT`] at most, whatever the number of priorities. Each priority is
/// asked for a message for every `per_message[i]` slots (the most tasks one of its
/// messages carried when last pulled: a bundle takes a slot for each of its tasks).
async fn ask_in_order(
    shared: &Arc<Shared>,
    consumers: &[PullConsumer],
    (permits, per_message): (&mut Vec<Permit>, &mut [usize]),
    left_until: &mut [Option<Instant>],
) {
    let now = Instant::now();
    let working = left_until
        .iter()
        .position(Option::is_none)
        .unwrap_or(consumers.len().saturating_sub(1));
    let split = consumers.len().min(working + 1);
    for round in [0..split, split..consumers.len()] {
        if permits.is_empty() {
            break;
        }
        let asked: Vec<usize> = round
            .filter(|&i| left_until[i].is_none_or(|until| now >= until))
            .collect();
        // One above the one that had work is asked for a message: it had none when last
        // asked, and what it gives beyond the slots the one below also takes would be handed
        // back (counted as a delivery). If it has work now it leads the next pull.
        let n = |i: usize| {
            if i < working {
                1
            } else {
                (permits.len() / per_message[i].max(1)).max(1)
            }
        };
        let asks = asked.iter().map(|&i| ask(&consumers[i], n(i)));
        let answers = futures::future::join_all(asks).await;
        for (&i, given) in asked.iter().zip(answers) {
            if let Ok(given) = &given
                && let Some(most) = given.messages.iter().map(tasks_in).max()
            {
                per_message[i] = most;
            }
            left_until[i] = take_asked(shared, given, permits, now).await;
        }
    }
}

/// A slot of the role's and one of the node's, if both are free now.
fn try_permit(slots: &Arc<Semaphore>, node_slots: &Arc<Semaphore>) -> Option<Permit> {
    let role = slots.clone().try_acquire_owned().ok()?;
    let node = node_slots.clone().try_acquire_owned().ok()?;
    Some((role, node))
}

/// What one priority's consumer gave when asked without waiting: its tasks, and whether
/// its answer failed (an error status, such as a consumer electing a leader, or no end in
/// [`ASK_LIMIT`]). A "requests pending" answer (other nodes' waiting requests will be given
/// its tasks) ends the answer like an empty one: the client does not tell them apart.
struct Asked {
    messages: Vec<Message>,
    failed: bool,
    /// The answer, still open after [`ASK_LIMIT`].
    late: Option<pull::Batch>,
}

/// Asks `consumer` for up to `n` tasks it holds now, without waiting, and reads the answer
/// to its end. An error when the request could not be sent.
async fn ask(consumer: &PullConsumer, n: usize) -> Result<Asked, String> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut asked = Asked {
        messages: Vec::new(),
        failed: false,
        late: None,
    };
    let read = async {
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => asked.messages.push(message),
                Err(e) => {
                    tracing::debug!("pulling tasks: {e}");
                    asked.failed = true;
                }
            }
        }
    };
    if tokio::time::timeout(ASK_LIMIT, read).await.is_err() {
        tracing::warn!("pulling tasks: no answer in {ASK_LIMIT:?}");
        asked.failed = true;
        asked.late = Some(batch);
    }
    Ok(asked)
}

/// Runs what a consumer gave while `permits` last and hands back the rest at once. Returns
/// until when its priority is left alone: [`RECHECK`] on if it gave nothing, [`BACKOFF`]
/// on if it failed.
async fn take_asked(
    shared: &Arc<Shared>,
    given: Result<Asked, String>,
    permits: &mut Vec<Permit>,
    now: Instant,
) -> Option<Instant> {
    let asked = match given {
        Ok(asked) => asked,
        Err(e) => {
            tracing::warn!("node {}: pulling tasks: {e}", shared.name);
            return Some(now + BACKOFF);
        }
    };
    let left = if asked.failed {
        Some(now + BACKOFF)
    } else {
        asked.messages.is_empty().then_some(now + RECHECK)
    };
    if let Some(batch) = asked.late {
        Spawner::spawn("cluster-pull-late", late(batch, shared.ack_wait));
    }
    for message in asked.messages {
        // A bundle takes a slot for each of its tasks while there are some, at least one.
        let n = tasks_in(&message).min(permits.len());
        if n == 0 {
            answer(&message, Reply::Nak(Duration::ZERO)).await;
            continue;
        }
        let taken = permits.split_off(permits.len() - n);
        start(shared, message, taken).await;
    }
    left
}

/// Reads an answer given up on ([`ASK_LIMIT`]) to its end, for up to `wait`, and hands back
/// at once what comes: a task given to an answer nobody reads would wait until `ack_wait`.
async fn late(mut batch: pull::Batch, wait: Duration) {
    let read = async {
        while let Some(message) = batch.next().await {
            if let Ok(message) = message {
                answer(&message, Reply::Nak(Duration::ZERO)).await;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
}

/// Reads the waiting requests of an idle pull to their end: a request dropped unread would
/// leave the task it is given undelivered until `ack_wait`. What comes runs if the node
/// takes tasks and has a slot free, and is handed back at once otherwise.
async fn rest(
    shared: Arc<Shared>,
    mut waiting: futures::stream::SelectAll<pull::Batch>,
    slots: Arc<Semaphore>,
    node_slots: Arc<Semaphore>,
) {
    while let Some(message) = waiting.next().await {
        if let Ok(message) = message {
            take(&shared, message, &slots, &node_slots).await;
        }
    }
}

/// Runs a task an idle pull was given if the node takes tasks (not draining, not dropped)
/// and has a slot free, and hands it back at once otherwise.
async fn take(
    shared: &Arc<Shared>,
    message: Message,
    slots: &Arc<Semaphore>,
    node: &Arc<Semaphore>,
) {
    let taking = *shared.phase.borrow() == Phase::Taking && shared.phase.has_changed().is_ok();
    match try_permit(slots, node).filter(|_| taking) {
        Some(permit) => {
            let mut permits = vec![permit];
            let count = tasks_in(&message);
            while permits.len() < count
                && let Some(permit) = try_permit(slots, node)
            {
                permits.push(permit);
            }
            start(shared, message, permits).await;
        }
        None => answer(&message, Reply::Nak(Duration::ZERO)).await,
    }
}

/// What a delivery holds from the moment it is taken: its slots (one, or up to one for each
/// task of a bundle), a place among the node's deliveries (a drain waits for every one to
/// have answered), and for each task of a bundle beyond its slots, a place in its role's
/// queue ([`slots::Queued`]).
struct Taken {
    permits: Vec<Permit>,
    queued: Vec<InQueue>,
    _delivering: tokio::sync::OwnedSemaphorePermit,
}

/// Runs one delivery on its own, holding `permits` until it ends; counted among the node's
/// deliveries, and a bundle's tasks beyond its slots in its role's queue, before it is
/// spawned: the pull that took it sees them at once.
async fn start(shared: &Arc<Shared>, message: Message, permits: Vec<Permit>) {
    let Ok(delivering) = shared.delivering.clone().try_acquire_owned() else {
        // The node is draining (its drain holds every place): handed back.
        return answer(&message, Reply::Nak(Duration::ZERO)).await;
    };
    let beyond = tasks_in(&message).saturating_sub(permits.len());
    let queued = permits
        .first()
        .and_then(|(role, _)| shared.slots.of_role(role.semaphore()))
        .map(|slot| (0..beyond).map(|_| slot.queued.enter()).collect())
        .unwrap_or_default();
    let taken = Taken {
        permits,
        queued,
        _delivering: delivering,
    };
    let shared = shared.clone();
    Spawner::spawn("cluster-task", async move {
        deliver(&shared, message, taken).await;
    });
}

/// How many tasks `message` carries (a bundle's several), 1 when its header cannot say.
fn tasks_in(message: &Message) -> usize {
    bundle::count(message.headers.as_ref()).unwrap_or(1)
}

/// A delivery counted as running (`NodeReport`'s heartbeat and `colony_cluster_running`)
/// while it is held.
struct Counted<'a>(&'a Shared);

impl<'a> Counted<'a> {
    fn count(shared: &'a Shared) -> Self {
        shared.counters.running.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("colony_cluster_running").increment(1.0);
        Self(shared)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.counters.running.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("colony_cluster_running").decrement(1.0);
    }
}

/// One delivery, holding its slots until it ends: a task's (one, or more for a vote or a
/// team), or a bundle's ([`bundled::deliver`]). Answers the stream as the task's attempt
/// says ([`attempt`]).
async fn deliver(shared: &Shared, message: Message, taken: Taken) {
    let Taken {
        permits,
        queued,
        _delivering,
    } = taken;
    let (sequence, delivered) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
        ),
        Err(e) => {
            tracing::warn!(
                "node {}: a delivery without its ack subject: {e}",
                shared.name
            );
            return;
        }
    };
    let count = match bundle::count(message.headers.as_ref()) {
        Ok(count) => count,
        Err(problem) => {
            // Its tasks cannot be named (a bundle of a later colony, say): failed under the
            // message's own id, for good, rather than delivered again and again.
            tracing::error!(
                "node {}: the message at {sequence} is unreadable: {problem}",
                shared.name
            );
            if let Some(reply) = unreadable(shared, sequence, &problem).await {
                answer(&message, reply).await;
            }
            return;
        }
    };
    if count > 1 {
        let bundle = (sequence, delivered, count);
        return bundled::deliver(shared, &message, bundle, permits, queued).await;
    }
    let Some(permit) = permits.into_iter().next() else {
        return answer(&message, Reply::Nak(Duration::ZERO)).await;
    };
    let id = sequence;
    let task = Ok((
        message.headers.clone().unwrap_or_default(),
        message.payload.clone(),
    ));
    let (spec, together, weigh) = match read(task) {
        Ok(read) => read,
        Err(problem) => {
            if let Some(reply) = unreadable(shared, id, &problem).await {
                answer(&message, reply).await;
            }
            return;
        }
    };
    let held = match hold(
        shared,
        &message,
        (id, delivered),
        &spec,
        together.as_ref(),
        permit,
    )
    .await
    {
        Ok(held) => held,
        Err(reply) => return answer(&message, reply).await,
    };
    let lease = if delivered == 1 {
        Lease::Lazy
    } else {
        Lease::Read
    };
    let settled = attempt(
        shared,
        (&message, false),
        (id, delivered),
        (spec, together, weigh),
        lease,
    );
    let settled = settled.await;
    drop(held);
    if let Some(reply) = settled.reply() {
        answer(&message, reply).await;
    }
}

/// A task as its message (or its place in a bundle) carries it: its headers and payload, or
/// why they cannot be read.
type Carried = Result<(async_nats::HeaderMap, bytes::Bytes), String>;

/// A task read: its spec, how several agents work it, and whether it is a ballot whose
/// record says who voted.
type Read = (TaskSpec, Option<Together>, Option<Weigh>);

/// What a task's message (or its place in a bundle) carries, read. Else why it cannot be
/// read.
fn read(task: Carried) -> Result<Read, String> {
    let (headers, payload) = task?;
    let spec = TaskMessage::spec(Some(&headers), payload)?;
    let together = TaskMessage::together(Some(&headers))?;
    Ok((spec, together, TaskMessage::weigh(Some(&headers))?))
}

/// Fails task `id`, which no node can read, once, for good: acked (`Some`) only once a
/// record says how it ended (this one, or another node's).
async fn unreadable(shared: &Shared, id: u64, problem: &str) -> Option<Reply> {
    let row = Row {
        state: TaskState::Failed,
        attempt: 0,
        charged: 0,
        node: shared.name.clone(),
        lease: random_id(),
        agent: None,
        error: Some(format!("the task's message is unreadable: {problem}")),
        key: None,
        at_ms: crate::now_ms(),
        decision: None,
        team: None,
        voter: None,
        output: None,
    };
    // Counted failed by the node whose write failed it; one that found it ended already (a
    // delivery before this one, maybe another node's) counts it so.
    let kind = match write_new(&shared.cluster.tasks, &shared.cluster.key(id), &row).await {
        Ok(_) => Some(Kind::Failed),
        Err(_) => match shared.cluster.row(id).await {
            Ok(Some((r, _))) if r.is_terminal() => Some(Kind::AlreadyEnded),
            _ => None,
        },
    };
    kind.map(|kind| {
        shared.counters.add(kind);
        Reply::Ack
    })
}

/// The slots delivery `delivered` of task `id` runs on: `permit`, or for a vote or a team
/// a slot for each agent it asks, had before anything is written (without them it goes
/// back to the stream for a node with room). A vote or a team spread over the cluster
/// takes none: its ballots or asks take theirs where they run (a slot held while it waits
/// for them could be the one they need), and it takes one of the node's places for
/// counting instead. Else what to answer now.
async fn hold(
    shared: &Shared,
    message: &Message,
    (id, delivered): (u64, u32),
    spec: &TaskSpec,
    together: Option<&Together>,
    permit: Permit,
) -> Result<Held, Reply> {
    let spread = match together {
        Some(Together::Vote(d)) => d.spread,
        Some(Together::Team(t)) => t.spread,
        None => false,
    };
    let needs = together
        .filter(|_| !spread)
        .and_then(|t| shared.slots.needs(spec.requirement.role.as_deref(), t));
    if needs.is_none() && !spread {
        return Ok(Held::one(permit));
    }
    // One that ended is answered now, not after a wait for room.
    if delivered > 1
        && matches!(shared.cluster.row(id).await, Ok(Some((row, _))) if row.is_terminal())
    {
        shared.counters.add(Kind::AlreadyEnded);
        return Err(Reply::Ack);
    }
    match needs {
        None => {
            drop(permit);
            match shared.counting.clone().try_acquire_owned() {
                Ok(counting) => Ok(Held::counting(counting)),
                Err(_) => Err(Reply::Nak(NO_ROOM_DELAY)),
            }
        }
        Some(needs) => match room(shared, message, id, permit, &needs).await {
            Some(held) => Ok(held),
            None => Err(Reply::Nak(NO_ROOM_DELAY)),
        },
    }
}

/// How an attempt's lease is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// A first delivery, run at once: nothing read, the lease written lazily (see `run`).
    Lazy,
    /// A first delivery that waited in its bundle for a slot: the lease written as a create
    /// before it runs, so that a task another node took meanwhile (this node stalled past
    /// `ack_wait`), or one cancelled meanwhile, is not run here.
    Created,
    /// A later delivery: the record read and the lease written over it ([`take_lease`]).
    Read,
}

/// How a delivery's attempt left its task: what to answer the stream, or why nothing is
/// (the message is then delivered again after `ack_wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Answer(Reply),
    /// Another node holds the task now (this node's lease was taken, or never written).
    Taken,
    /// Its lease or end could not be written or read now (NATS unavailable).
    Unwritten,
}

impl Settled {
    fn reply(self) -> Option<Reply> {
        match self {
            Settled::Answer(reply) => Some(reply),
            Settled::Taken | Settled::Unwritten => None,
        }
    }
}

/// Delivery `delivered` of task `id`, carried by `message`, on slots held by the caller:
/// take the lease as `lease` says, run the attempt, end it under the lease. In-progress
/// acks go on `message` while it runs, unless `acked` says its caller sends them (a
/// bundle's, once for all its tasks). How it left the task.
async fn attempt(
    shared: &Shared,
    (message, acked): (&Message, bool),
    (id, delivered): (u64, u32),
    (spec, together, weigh): Read,
    lease: Lease,
) -> Settled {
    let _running = Counted::count(shared);
    let first =
        || match lease::on_delivery(None, &spec, &shared.name, &random_id(), 1, crate::now_ms()) {
            Step::Start(row) => Some(row),
            _ => None,
        };
    let (started, revision) = match lease {
        Lease::Lazy | Lease::Created if delivered == 1 => {
            let Some(row) = first() else {
                return Settled::Unwritten;
            };
            if lease == Lease::Lazy {
                (row, None)
            } else {
                match create_lease(shared, id, &row).await {
                    Ok(revision) => (row, Some(revision)),
                    Err(settled) => return settled,
                }
            }
        }
        _ => match take_lease(shared, &spec, id, delivered).await {
            Ok((row, revision)) => (row, Some(revision)),
            Err(settled) => return settled,
        },
    };
    shared.counters.add(Kind::Started);
    let keepalive = (!acked).then_some(message);
    let Some((outcome, revision, summaries)) = run(
        shared,
        keepalive,
        &spec,
        (together, weigh),
        id,
        &started,
        revision,
    )
    .await
    else {
        let kind = lost(shared, id).await;
        shared.counters.add(kind);
        // A cancelled task has ended: its message may go (a bundle's, with its others).
        return if kind == Kind::Cancelled {
            Settled::Answer(Reply::Ack)
        } else {
            Settled::Taken
        };
    };
    let kind = match &outcome {
        Outcome::Succeeded { .. } => Kind::Succeeded,
        Outcome::Fatal { .. } => Kind::Failed,
        Outcome::Retryable { .. } if started.charged >= spec.max_attempts => Kind::DeadLettered,
        Outcome::Retryable { .. } => Kind::Retried,
        Outcome::HandBack => Kind::HandedBack,
    };
    let (mut ended, mut reply) = lease::after_attempt(&started, &spec, outcome, crate::now_ms());
    if let Some(error) = &mut ended.error {
        *error = colony_core::text::shorten(error, MAX_ERROR);
    }
    (ended.decision, ended.team) = (summaries.decision, summaries.team);
    ended.voter = summaries.voter.map(Box::new);
    let agreed = summaries.agreed;
    let mut kind = kind;
    if ended.encode().len() > MAX_RECORD {
        // The record cannot hold it (a long key with a large output): failed for good,
        // saying so, rather than retried until its attempts are spent.
        let size = ended.output.as_ref().map_or(0, bytes::Bytes::len);
        let (mut fatal, r) = lease::after_attempt(
            &started,
            &spec,
            Outcome::Fatal {
                error: format!(
                    "its result of {size} bytes does not fit the cluster's record of {MAX_RECORD} bytes"
                ),
                agent: ended.agent,
            },
            crate::now_ms(),
        );
        fatal.decision = ended.decision.take();
        fatal.team = ended.team.take();
        (ended, reply, kind) = (fatal, r, Kind::Failed);
    }
    // The delivery kept alive while the end is written (a leader election may take
    // seconds), so that it is not delivered again to another node meanwhile.
    let ending = end(shared, id, &ended, revision);
    let written = match keepalive {
        Some(message) => {
            let mut ending = std::pin::pin!(ending);
            let every = shared.ack_wait / 3;
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    written = &mut ending => break written,
                    _ = progress.tick() => keep_alive(shared, message, ("task", id)).await,
                }
            }
        }
        None => ending.await,
    };
    match written {
        Ended::Written => {
            shared.counters.add(kind);
            // A spread vote decided and written once: its voters' nodes feed their
            // reputations.
            if kind == Kind::Succeeded && !agreed.is_empty() {
                agreed::tell(&shared.cluster.client, id, agreed).await;
            }
            Settled::Answer(reply)
        }
        Ended::Fenced => {
            let kind = lost(shared, id).await;
            shared.counters.add(kind);
            tracing::info!(
                "node {}: task {id} attempt {} {}",
                shared.name,
                started.attempt,
                if kind == Kind::Cancelled {
                    "dropped: the task was cancelled"
                } else {
                    "fenced: another node holds the task now"
                }
            );
            if kind == Kind::Cancelled {
                Settled::Answer(Reply::Ack)
            } else {
                Settled::Taken
            }
        }
        Ended::Unwritten => Settled::Unwritten,
    }
}

/// Why an attempt's result could not be written: its task was cancelled (the record says
/// so), or another node holds it.
/// Counted as the record says when read (a read that fails or is late counts fenced).
async fn lost(shared: &Shared, id: u64) -> Kind {
    let read = tokio::time::timeout(shared.ack_wait / 3, shared.cluster.row_from_leader(id));
    match read.await {
        Ok(Ok(Some((row, _)))) if row.state == TaskState::Cancelled => Kind::Cancelled,
        _ => Kind::Fenced,
    }
}

/// Writes the lease of a first delivery before it runs, as a create: else how that left the
/// task (an ack when the record says it ended; another node holding it; or the record not
/// written or read now).
async fn create_lease(shared: &Shared, id: u64, row: &Row) -> Result<u64, Settled> {
    let e = match write_new(&shared.cluster.tasks, &shared.cluster.key(id), row).await {
        Ok(revision) => return Ok(revision),
        Err(e) => e,
    };
    match latest_patiently(shared, id).await {
        // Landed, its answer lost.
        Ok(Some((now, revision))) if now.lease == row.lease => Ok(revision),
        Ok(Some((now, _))) if now.is_terminal() => {
            shared.counters.add(if now.state == TaskState::Cancelled {
                Kind::Cancelled
            } else {
                Kind::AlreadyEnded
            });
            Err(Settled::Answer(Reply::Ack))
        }
        Ok(Some(_)) if matches!(e, Write::Conflict) => Err(Settled::Taken),
        _ => {
            if let Write::Other(e) = e {
                tracing::warn!("node {}: task {id}: writing its lease: {e}", shared.name);
            }
            Err(Settled::Unwritten)
        }
    }
}

/// Takes the lease of a delivery after the first: reads the record, and writes the running
/// row [`lease::on_delivery`] gives with a compare-and-set on the revision read (again on a
/// conflict). Else what to answer: an ack when there is nothing to run (the task ended, or
/// no attempt is left), nothing when the record cannot be read or written now (delivered
/// again).
async fn take_lease(
    shared: &Shared,
    spec: &TaskSpec,
    id: u64,
    delivered: u32,
) -> Result<(Row, u64), Settled> {
    let tasks = &shared.cluster.tasks;
    for _ in 0..8 {
        let current = match shared.cluster.row(id).await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!("node {}: {e}", shared.name);
                return Err(Settled::Unwritten);
            }
        };
        let revision = current.as_ref().map(|(_, r)| *r);
        let step = lease::on_delivery(
            current.as_ref().map(|(row, _)| row),
            spec,
            &shared.name,
            &random_id(),
            delivered,
            crate::now_ms(),
        );
        let (row, dead) = match step {
            Step::Finished => {
                shared.counters.add(Kind::AlreadyEnded);
                return Err(Settled::Answer(Reply::Ack));
            }
            Step::DeadLetter(row) => (row, true),
            Step::Start(row) => (row, false),
        };
        let key = shared.cluster.key(id);
        let written = match revision {
            None => write_new(tasks, &key, &row).await,
            Some(revision) => write(tasks, &key, &row, revision).await,
        };
        // A write whose answer was lost may have landed: the record says, by its lease id.
        let written = match written {
            Ok(revision) => Some(revision),
            Err(e) => match ours(shared, id, &row).await {
                Ok(Some(revision)) => Some(revision),
                Ok(None) if matches!(e, Write::Conflict) => continue,
                // Not written, or not known: not run. Delivered again after ack_wait.
                _ => {
                    if let Write::Other(e) = e {
                        tracing::warn!("node {}: task {id}: taking its lease: {e}", shared.name);
                    }
                    return Err(Settled::Unwritten);
                }
            },
        };
        match written {
            Some(_) if dead => {
                shared.counters.add(Kind::DeadLettered);
                return Err(Settled::Answer(Reply::Ack));
            }
            Some(revision) => return Ok((row, revision)),
            None => return Err(Settled::Unwritten),
        }
    }
    Err(Settled::Unwritten)
}

/// Who ran a ballot on agent `agent` of this node's runtime, as [`Weigh`] asks: its pool's
/// role, and its reputation here, read in the dispatcher's next turn after the ballot
/// ended. `None` when the runtime no longer has the agent (its pool shrank past it) or does
/// not answer: the ballot then cannot be weighed, and its counting node asks the seat
/// again. An agent retired and its id given to a new worker in between is read as that
/// worker (a pool grows a tree's tail again): a narrow window, named in cluster.md.
async fn voter(handle: &Handle, agent: colony_core::AgentId, weigh: Weigh) -> Option<Voter> {
    let pools = handle.pools();
    let (pool, reputation) = handle
        .observe(move |live| {
            live.tree
                .contains(agent)
                .then(|| (live.tree.spec(agent), live.reputation(agent).score()))
        })
        .await
        .ok()??;
    let (spec, _) = pools.get(usize::from(pool))?;
    Some(Voter {
        role: spec.role.to_string(),
        reputation: weigh.reputation.then_some(reputation),
    })
}

/// How the work of several agents went, for the task's record.
#[derive(Default)]
struct Summaries {
    decision: Option<Box<DecisionSummary>>,
    team: Option<Box<TeamSummary>>,
    /// A ballot of a spread vote that weighs its voters: who voted.
    voter: Option<Voter>,
    /// A decided spread vote: its voters by node, each agreeing or dissenting, told to
    /// their nodes once the end is written.
    agreed: std::collections::BTreeMap<String, Vec<agreed::Voted>>,
}

/// How an attempt ended on this node's runtime.
struct Finished {
    state: TaskState,
    output: Option<bytes::Bytes>,
    error: Option<Arc<str>>,
    agent: Option<colony_core::AgentId>,
    summaries: Summaries,
}

impl Finished {
    fn of_task(c: colony_runtime::Completion) -> Self {
        Self {
            state: c.state,
            output: c.output,
            error: c.error,
            agent: c.agent,
            summaries: Summaries::default(),
        }
    }

    /// A team's end as the task's: its last step's output, or a failure naming why.
    fn of_team(teamed: &colony_runtime::team::Teamed) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let summary = TeamSummary {
            members: count(teamed.formed.len()),
            together: teamed.together,
            steps: count(teamed.steps.len()),
            asks: teamed.tasks,
            reassigned: count(teamed.reassigned.len()),
            nodes: None,
        };
        let summaries = Summaries {
            team: Some(Box::new(summary)),
            ..Summaries::default()
        };
        let agent = teamed
            .steps
            .last()
            .and_then(|s| s.asks.last())
            .map(|a| a.agent);
        match (&teamed.output, &teamed.error) {
            (Some(output), None) => Self {
                state: TaskState::Succeeded,
                output: Some(output.clone()),
                error: None,
                agent,
                summaries,
            },
            (_, error) => Self {
                state: TaskState::Failed,
                output: None,
                error: Some(
                    format!(
                        "the team failed: {}",
                        error.as_deref().unwrap_or("it ended without an output")
                    )
                    .into(),
                ),
                agent,
                summaries,
            },
        }
    }

    /// A spread team's end as the task's: its last step's output, or a failure naming why.
    fn of_spread_team(teamed: spread::SpreadTeam) -> Self {
        let summary = TeamSummary {
            members: teamed.members,
            together: false,
            steps: teamed.steps,
            asks: teamed.asks,
            reassigned: teamed.reassigned,
            nodes: Some(teamed.nodes),
        };
        let summaries = Summaries {
            team: Some(Box::new(summary)),
            ..Summaries::default()
        };
        match teamed.output {
            Ok(output) => Self {
                state: TaskState::Succeeded,
                output: Some(output),
                error: None,
                agent: None,
                summaries,
            },
            Err(error) => Self {
                state: TaskState::Failed,
                output: None,
                error: Some(format!("the team failed: {error}").into()),
                agent: None,
                summaries,
            },
        }
    }

    /// A spread vote's outcome as the task's end: the winner's output, or a failure naming
    /// the reason and why voters have no ballot counted. The winner's agents are other
    /// nodes', so the record names none.
    fn of_spread(mut spread: spread::Spread) -> Self {
        let record = spread.outcome.record();
        let winner = spread.outcome.winner();
        let summary = DecisionSummary {
            protocol: record.protocol,
            voters: spread.voters,
            asked: spread.asked,
            counted: spread.counted(),
            participation: record.participation,
            support: winner.map(|w| w.support),
            margin: winner.map(|w| w.margin),
            dissenters: winner.map_or(0, |w| u32::try_from(w.dissenters.len()).unwrap_or(u32::MAX)),
            reason: spread.outcome.reason().map(|r| r.as_str().to_owned()),
            nodes: Some(spread.nodes),
        };
        let summaries = Summaries {
            decision: Some(Box::new(summary)),
            agreed: std::mem::take(&mut spread.agreed),
            ..Summaries::default()
        };
        match winner {
            Some(winner) => Self {
                state: TaskState::Succeeded,
                output: Some(bytes::Bytes::from(winner.representative.to_string())),
                error: None,
                agent: None,
                summaries,
            },
            None => {
                let mut error = format!(
                    "the decision failed: {} ({} of {} voters' ballots counted, over {} nodes, participation {:.2})",
                    spread.outcome.reason().map_or("unknown", |r| r.as_str()),
                    spread.counted(),
                    spread.voters,
                    spread.nodes,
                    record.participation
                );
                for problem in &spread.problems {
                    error.push_str("; ");
                    error.push_str(problem);
                }
                Self {
                    state: TaskState::Failed,
                    output: None,
                    error: Some(error.into()),
                    agent: None,
                    summaries,
                }
            }
        }
    }

    /// A decision's outcome as the task's end: the winner's output (of the earliest voter,
    /// in seat order, who voted for it), or a failure naming the reason. Never a
    /// success-shaped answer without a winner.
    fn of_decision(decided: &colony_runtime::decision::Decided) -> Self {
        let record = decided.outcome.record();
        let winner = decided.outcome.winner();
        let summary = DecisionSummary {
            protocol: record.protocol,
            voters: u32::try_from(decided.voters.len()).unwrap_or(u32::MAX),
            asked: decided.asked,
            counted: u32::try_from(decided.counted()).unwrap_or(u32::MAX),
            participation: record.participation,
            support: winner.map(|w| w.support),
            margin: winner.map(|w| w.margin),
            dissenters: winner.map_or(0, |w| u32::try_from(w.dissenters.len()).unwrap_or(u32::MAX)),
            reason: decided.outcome.reason().map(|r| r.as_str().to_owned()),
            nodes: None,
        };
        let Some(winner) = winner else {
            let failure = decided.failure().unwrap_or_default();
            return Self {
                state: TaskState::Failed,
                output: None,
                error: Some(format!("the decision failed: {failure}").into()),
                agent: None,
                summaries: Summaries {
                    decision: Some(Box::new(summary)),
                    ..Summaries::default()
                },
            };
        };
        Self {
            state: TaskState::Succeeded,
            output: Some(bytes::Bytes::from(winner.representative.to_string())),
            error: None,
            agent: decided.winner_agent(),
            summaries: Summaries {
                decision: Some(Box::new(summary)),
                ..Summaries::default()
            },
        }
    }
}

/// The slots `needs` says, in place of `held`: at once if they are free; else, if no other
/// delivery of the node waits for its own, waited for (first come, first served, so work
/// taken after it does not pass it) for up to `ack_wait` with in-progress acks meanwhile.
/// `None` when another waits already, when the wait runs out, or when the node stops taking
/// tasks first: the delivery goes back to the stream, for a node with room.
async fn room(
    shared: &Shared,
    message: &Message,
    id: u64,
    held: Permit,
    needs: &slots::Needs,
) -> Option<Held> {
    let held = match shared.slots.try_widen(held, needs) {
        Ok(held) => return Some(held),
        Err(held) => held,
    };
    let _turn = shared.slots.wait_turn()?;
    let give_up = tokio::time::sleep(shared.ack_wait);
    let mut give_up = std::pin::pin!(give_up);
    let held = Held::one(held);
    let mut phase = shared.phase.clone();
    let every = shared.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let widen = shared.slots.widen(held, needs);
    let mut widen = std::pin::pin!(widen);
    loop {
        if *phase.borrow_and_update() != Phase::Taking {
            return None;
        }
        tokio::select! {
            held = &mut widen => return held,
            () = &mut give_up => return None,
            _ = progress.tick() => keep_alive(shared, message, ("task", id)).await,
            changed = phase.changed() => if changed.is_err() {
                return None;
            }
        }
    }
}

/// An attempt running on this node's runtime: how it ended, or the outcome it ended with
/// before it could run (refused, stopped).
type Running = std::pin::Pin<Box<dyn Future<Output = Result<Finished, Outcome>> + Send>>;

/// A spread vote or team run as an attempt: ended as `end` says, or, when it could not run
/// (NATS out of reach), failed to be tried again.
fn spread_run<T: 'static, F>(shared: &Shared, run: F, end: fn(T) -> Finished) -> Running
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    let name = shared.name.clone();
    Box::pin(async move {
        let done = run.await.map_err(|e| Outcome::Retryable {
            error: format!("node {name}: {e}"),
            agent: None,
        })?;
        Ok(end(done))
    })
}

/// Runs attempt `started` of task `id` on the local runtime (a decision among its agents,
/// or a team formed of them, when `together` says so), keeping the delivery alive with
/// in-progress acks on `message` (none when its caller sends them: a bundle's), and stopping it when the node hands back. A lease not written yet (a
/// first delivery) is written once the attempt has run [`lease::LAZY_LEASE`]; if another
/// node wrote first, the attempt is stopped and `None` returned: it is fenced. Else the
/// outcome, the revision of the lease if it was written, and how a vote or team went.
async fn run(
    shared: &Shared,
    message: Option<&Message>,
    spec: &TaskSpec,
    (together, weigh): (Option<Together>, Option<Weigh>),
    id: u64,
    started: &Row,
    mut revision: Option<u64>,
) -> Option<(Outcome, Option<u64>, Summaries)> {
    let none = Summaries::default;
    // Fetched as the node began to hand back: given back at once.
    if *shared.phase.borrow() == Phase::HandingBack {
        return Some((Outcome::HandBack, revision, none()));
    }
    let local = TaskSpec {
        max_attempts: 1,
        ..spec.clone()
    };
    let name = shared.name.clone();
    let refused = move |e: colony_runtime::Error| {
        let error = format!("node {name}: {e}");
        match e {
            // The task itself is refused (its payload over this runtime's limit, say): no
            // node of this configuration would take it.
            colony_runtime::Error::Task(_) => Outcome::Fatal { error, agent: None },
            // Too few agents here to seat the voters or form the team, say: another node may
            // have them.
            _ => Outcome::Retryable { error, agent: None },
        }
    };
    let lost = {
        let name = shared.name.clone();
        move |e: colony_runtime::Error| Outcome::Retryable {
            error: format!("node {name}: {e}"),
            agent: None,
        }
    };
    let handle = shared.handle.clone();
    // The runtime's task, when the attempt is one (a vote or a team is several).
    let (task, mut pending): (Option<colony_core::TaskId>, Running) = match together {
        None => match shared.handle.submit_notify(local).await {
            Ok(pending) => (
                Some(pending.id),
                Box::pin(async move {
                    let mut finished = pending.await.map(Finished::of_task).map_err(lost)?;
                    if let (Some(weigh), Some(agent)) = (weigh, finished.agent) {
                        finished.summaries.voter = voter(&handle, agent, weigh).await;
                    }
                    Ok(finished)
                }),
            ),
            Err(e) => return Some((refused(e), revision, none())),
        },
        // Its ballots sent to the cluster and counted here while the delivery is kept alive
        // below; dropped (its ballots still out cancelled) when fenced or handed back.
        Some(Together::Vote(decide)) if decide.spread => {
            let (cluster, ends) = (shared.cluster.clone(), shared.ends.clone());
            let counting = spread::decide(
                cluster,
                ends,
                spec.clone(),
                decide,
                id,
                started.lease.clone(),
            );
            (None, spread_run(shared, counting, Finished::of_spread))
        }
        // Seated (which may wait for room on this runtime) and counted while the delivery
        // is kept alive below, so a wait for room is acked, fenced and handed back too.
        Some(Together::Vote(decide)) => (
            None,
            Box::pin(async move {
                let voting = handle
                    .decide(local, decide.vote(&handle.pools()))
                    .await
                    .map_err(refused)?;
                let decided = voting.outcome().await.map_err(lost)?;
                Ok(Finished::of_decision(&decided))
            }),
        ),
        // Its asks sent to the cluster step by step, as a spread vote's ballots are.
        Some(Together::Team(team)) if team.spread => {
            let (cluster, ends) = (shared.cluster.clone(), shared.ends.clone());
            let working = spread::team(
                cluster,
                ends,
                spec.clone(),
                *team,
                id,
                started.lease.clone(),
            );
            (None, spread_run(shared, working, Finished::of_spread_team))
        }
        // Formed and worked the same way. A team that formed and then failed is its end,
        // not an error.
        Some(Together::Team(team)) => (
            None,
            Box::pin(async move {
                let teamed = handle.team(local, *team).await.map_err(refused)?;
                Ok(Finished::of_team(&teamed))
            }),
        ),
    };
    // Stops the attempt: a task is cancelled on the runtime (and ends as such, so the loop
    // waits for it); a vote or a team is dropped, which cancels its tasks still out (true:
    // the loop ends now).
    let stop = || async move {
        match task {
            Some(task) => {
                let _ = shared.handle.cancel(task).await;
                false
            }
            None => true,
        }
    };
    let mut phase = shared.phase.clone();
    let every = shared.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lazy = tokio::time::sleep(lease::LAZY_LEASE.min(every));
    let mut lazy = std::pin::pin!(lazy);
    let (mut handing_back, mut fenced) = (false, false);
    let stopped = || Err(Outcome::HandBack);
    let finished = loop {
        // Biased: a lease another node took since a stall is found (the lazy write fails)
        // before an in-progress ack could keep that node's delivery alive.
        tokio::select! {
            biased;
            done = &mut pending => break done,
            () = &mut lazy, if revision.is_none() && !fenced => {
                match write_new(&shared.cluster.tasks, &shared.cluster.key(id), started).await {
                    Ok(r) => revision = Some(r),
                    Err(e) => match latest(shared, id).await {
                        // Landed, its answer lost.
                        Ok(Some((now, r))) if now.lease == started.lease => revision = Some(r),
                        // Another node's record: it holds the task.
                        Ok(Some(_)) if matches!(e, Write::Conflict) => {
                            fenced = true;
                            if stop().await {
                                break stopped();
                            }
                        }
                        // Not written, or not known: tried again later; the end is written
                        // as a create, or over this node's own lease if it landed (`end`).
                        _ => {
                            tracing::warn!("node {}: task {id}: writing its lease", shared.name);
                            lazy.as_mut().reset(tokio::time::Instant::now() + every);
                        }
                    },
                }
            }
            _ = progress.tick(), if !fenced => {
                // A node whose lease another node took (it stalled past ack_wait) stops,
                // rather than keep the other's delivery alive with its in-progress acks.
                // Only a newer revision than this node's lease, with another lease id, says so:
                // the leader's copy, read within a third of the tick so the ack is not late.
                if let Some(own) = revision
                    && let Ok(Ok(Some((now, r)))) =
                        tokio::time::timeout(every / 3, shared.cluster.row_from_leader(id)).await
                    && r > own
                    && now.lease != started.lease
                {
                    fenced = true;
                    if stop().await {
                        break stopped();
                    }
                    continue;
                }
                if let Some(message) = message {
                    keep_alive(shared, message, ("task", id)).await;
                }
            }
            changed = phase.changed(), if !handing_back => {
                if changed.is_err() || *phase.borrow() == Phase::HandingBack {
                    handing_back = true;
                    if stop().await {
                        break stopped();
                    }
                }
            }
        }
    };
    drop(pending);
    if fenced {
        return None;
    }
    let finished = match finished {
        Ok(f) => f,
        Err(_) if handing_back => return Some((Outcome::HandBack, revision, none())),
        Err(outcome) => return Some((outcome, revision, none())),
    };
    let agent = finished.agent.map(|a| u64::from(a.0));
    let outcome = match finished.state {
        TaskState::Succeeded => {
            let output = finished.output.unwrap_or_default();
            if output.len() > MAX_RECORD - 4096 {
                Outcome::Fatal {
                    error: format!(
                        "its output of {} bytes is over the cluster's record of {} bytes: keep large results in a file or store and return where",
                        output.len(),
                        MAX_RECORD - 4096
                    ),
                    agent,
                }
            } else {
                Outcome::Succeeded { output, agent }
            }
        }
        TaskState::Failed => Outcome::Fatal {
            error: error_text(finished.error),
            agent,
        },
        TaskState::Cancelled if handing_back => Outcome::HandBack,
        _ => Outcome::Retryable {
            error: error_text(finished.error),
            agent,
        },
    };
    Some((outcome, revision, finished.summaries))
}

fn error_text(error: Option<Arc<str>>) -> String {
    error.map_or_else(|| "the attempt failed".to_owned(), |e| e.to_string())
}

enum Ended {
    Written,
    Fenced,
    Unwritten,
}

/// Writes an attempt's end under its lease (as a create when its lease was never written: a
/// first delivery that ended quickly). A failed write is followed by a read of the leader's
/// copy: the write may have landed with its answer lost (then it is ours), this node's own
/// lease may be there (then the end goes over it), or another node holds the task (fenced).
/// NATS unavailable (a leader election) is retried for up to [`END_PATIENCE`] while the node
/// takes work, `min(ack_wait, 10 s)` from when it drains: the compare-and-set makes a retry
/// safe.
async fn end(shared: &Shared, id: u64, row: &Row, revision: Option<u64>) -> Ended {
    // Tried through a leader election (the caller keeps the delivery alive meanwhile) while
    // the node takes work, and within the pod's grace once it drains, from when it began
    // to: an end not written by then is the next delivery's to settle.
    let draining = shared.ack_wait.min(Duration::from_secs(10));
    let mut phase = shared.phase.clone();
    let mut taking = *phase.borrow_and_update() == Phase::Taking;
    let mut deadline = tokio::time::Instant::now() + if taking { END_PATIENCE } else { draining };
    let trying = end_by(shared, id, row, revision);
    let mut trying = std::pin::pin!(trying);
    loop {
        tokio::select! {
            ended = &mut trying => return ended,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("node {}: task {id}: its end could not be written in time", shared.name);
                return Ended::Unwritten;
            }
            changed = phase.changed(), if taking => {
                if changed.is_err() || *phase.borrow_and_update() != Phase::Taking {
                    taking = false;
                    deadline = deadline.min(tokio::time::Instant::now() + draining);
                }
            }
        }
    }
}

/// [`end`]'s tries, until one settles it ([`end`] stops them at its deadline).
async fn end_by(shared: &Shared, id: u64, row: &Row, mut revision: Option<u64>) -> Ended {
    let mut wait = Duration::from_millis(50);
    let key = shared.cluster.key(id);
    loop {
        let written = match revision {
            Some(revision) => write(&shared.cluster.tasks, &key, row, revision).await,
            None => write_new(&shared.cluster.tasks, &key, row).await,
        };
        let e = match written {
            Ok(_) => return Ended::Written,
            Err(e) => e,
        };
        match latest(shared, id).await {
            // This end landed, its answer lost.
            Ok(Some((now, _)))
                if now.lease == row.lease
                    && now.state == row.state
                    && now.attempt == row.attempt =>
            {
                return Ended::Written;
            }
            // This node's own lease landed unbeknown to it (a lazy write whose answer was
            // lost): the end goes over it.
            Ok(Some((now, r)))
                if now.lease == row.lease
                    && now.state == TaskState::Running
                    && revision != Some(r) =>
            {
                revision = Some(r);
                continue;
            }
            // Another node's write: it holds the task.
            Ok(Some(_)) if matches!(e, Write::Conflict) => return Ended::Fenced,
            _ => {}
        }
        let why = match e {
            Write::Conflict => "its record could not be read".to_owned(),
            Write::Other(e) => e,
        };
        tracing::debug!(
            "node {}: task {id}: its end not written yet: {why}",
            shared.name
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// The record as the bucket's leader has it, read up to twice: `Err` when it cannot
/// be read now. A write whose answer was lost is told from another node's by this and the
/// lease id; a stale replica never decides it.
async fn latest(shared: &Shared, id: u64) -> Result<Option<(Row, u64)>, ()> {
    for _ in 0..2 {
        match shared.cluster.row_from_leader(id).await {
            Ok(found) => return Ok(found),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Err(())
}

/// [`latest`], tried for a third of `ack_wait` (a leader election, say) before the record
/// is taken as unreadable: for a lease written whose answer was lost, which, unread, would
/// charge its task an attempt that never ran. No in-progress ack goes meanwhile: the
/// delivery's `ack_wait` bounds it.
async fn latest_patiently(shared: &Shared, id: u64) -> Result<Option<(Row, u64)>, ()> {
    let until = tokio::time::Instant::now() + shared.ack_wait / 3;
    loop {
        match tokio::time::timeout_at(until, latest(shared, id)).await {
            Ok(Err(())) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(read) => return read,
            Err(_) => return Err(()),
        }
    }
}

/// Whether the record is `row` as this node wrote it (same lease id, state and attempt): a
/// write that landed though its answer was lost. `Err` when the record cannot be read.
async fn ours(shared: &Shared, id: u64, row: &Row) -> Result<Option<u64>, ()> {
    Ok(latest_patiently(shared, id)
        .await?
        .and_then(|(now, revision)| {
            (now.lease == row.lease && now.state == row.state && now.attempt == row.attempt)
                .then_some(revision)
        }))
}

/// Tells the stream that a delivery (`what` `id`: its task, or bundle) is still worked on.
/// Waited for a third of a tick at most: while the client reconnects its sends queue up,
/// and a loop waiting here would not see its attempt end or the node drain.
async fn keep_alive(shared: &Shared, message: &Message, (what, id): (&str, u64)) {
    let every = shared.ack_wait / 3;
    match tokio::time::timeout(every / 3, message.ack_with(AckKind::Progress)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("node {}: {what} {id}: in-progress ack: {e}", shared.name),
        Err(_) => tracing::warn!(
            "node {}: {what} {id}: in-progress ack not sent within {} ms",
            shared.name,
            (every / 3).as_millis()
        ),
    }
}

async fn answer(message: &Message, reply: Reply) {
    let kind = match reply {
        Reply::Ack => AckKind::Ack,
        Reply::Nak(delay) if delay.is_zero() => AckKind::Nak(None),
        Reply::Nak(delay) => AckKind::Nak(Some(delay)),
    };
    // Not waited for long: an ack lost means one more delivery, which the record then
    // answers (`Step::Finished`); the record, not the ack, is what must be durable.
    match tokio::time::timeout(ACK_SEND_WAIT, message.ack_with(kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("an ack was not sent: {e}"),
        Err(_) => tracing::debug!("an ack was not sent within {} s", ACK_SEND_WAIT.as_secs()),
    }
}

enum Write {
    Conflict,
    Other(String),
}

async fn write(tasks: &kv::Store, key: &str, row: &Row, revision: u64) -> Result<u64, Write> {
    tasks
        .update(key, row.encode(), revision)
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => Write::Conflict,
            _ => Write::Other(e.to_string()),
        })
}

async fn write_new(tasks: &kv::Store, key: &str, row: &Row) -> Result<u64, Write> {
    tasks
        .create(key, row.encode())
        .await
        .map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => Write::Conflict,
            _ => Write::Other(e.to_string()),
        })
}
