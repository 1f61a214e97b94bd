//! The client side of a cluster: connect (making the stream and buckets on first use), submit
//! tasks, look one up, wait for one to end, and the cluster's status.

use crate::{
    Error,
    membership::{self, NodeInfo},
    settings::{self, Settings},
    wire::{Decide, Row, TaskMessage, Together, bundle},
};
use async_nats::jetstream::{self, context::PublishAckFuture, kv, stream::Stream};
use colony_core::task::{TaskSpec, TaskState};
use futures::StreamExt;
use std::time::Duration;

/// Publishes awaiting the stream's acknowledgement at once, per submitter.
const IN_FLIGHT: usize = 1024;
/// How long a submission or a wait rides out NATS being unavailable (a leader election, a
/// server restarting) before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a cancel tries to drop its task's message (or mark a bundle's place).
const DROP_FOR: Duration = Duration::from_secs(15);
/// How often a wait with nothing heard looks whether its task is there at all.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// How long one JetStream request or publish acknowledgement may take before it is sent
/// again: a request to a server that just died is not waited for 10 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A task's message: subject, headers, payload.
type Outgoing = (String, async_nats::HeaderMap, bytes::Bytes);

/// A connection to a cluster: its NATS client, the tasks stream and the buckets.
#[derive(Clone, Debug)]
pub struct Cluster {
    url: String,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: Stream,
    pub(crate) tasks: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) settings: Settings,
    /// The scaling records' bucket, made or opened on first use.
    pub(crate) scaling: std::sync::Arc<tokio::sync::OnceCell<kv::Store>>,
    /// The roles' samples' stream, made or opened on first use.
    pub(crate) roles: std::sync::Arc<tokio::sync::OnceCell<Stream>>,
    /// When the tasks stream was made, in nanoseconds: records are keyed by it and the task's
    /// id, so a stream made again (its ids starting again at 1) never meets an old record.
    epoch: String,
    /// The live nodes as last read for a vote or a team, and when: read again after
    /// [`MEMBERS_FRESH`], so that many votes sent at once do not each read every heartbeat.
    members: std::sync::Arc<tokio::sync::Mutex<Option<Members>>>,
    /// The consumers this client found taking their priority's bundles (or widened so):
    /// not looked at again.
    wide: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// The live nodes, and when they were read.
type Members = (std::time::Instant, Vec<NodeInfo>);

/// How long a read of the live nodes serves the votes and teams sent after it.
const MEMBERS_FRESH: Duration = Duration::from_secs(1);

/// A task the stream accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Submitted {
    /// The task's id: its sequence in the tasks stream, or for a task in a bundle with
    /// others, the bundle's and its place ([`crate::bundle::bundled_id`]).
    pub id: u64,
    /// The stream had this submission already (same idempotency id within its window).
    pub duplicate: bool,
}

/// How a cancellation ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Cancel {
    /// Written cancelled; `was` the state its record had (`None`: no record yet, not started
    /// or not leased yet).
    Cancelled { was: Option<TaskState> },
    /// It had ended already, so: nothing changed.
    AlreadyEnded { state: TaskState },
}

/// Where a task stands, as the cluster knows it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskView {
    /// In the stream, not started yet.
    Queued,
    /// Its record: started at least once.
    Row(Row),
}

/// What the cluster holds now.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// Nodes whose heartbeat is live.
    pub nodes: Vec<NodeInfo>,
    /// Tasks in the stream not yet ended: waiting or running.
    pub unfinished: u64,
    /// Per role: tasks waiting for a node, and delivered but not yet acknowledged.
    pub roles: Vec<RoleStatus>,
    pub replicas: usize,
    /// The server leading the tasks stream's Raft group, if it has a leader now.
    pub leader: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RoleStatus {
    /// The role, or `*` for tasks any agent may run.
    pub role: String,
    /// Tasks waiting to be delivered, each task of a bundle counted ([`crate::backlog`]).
    pub waiting: u64,
    /// Tasks delivered and not acknowledged: running, or in a bundle a node took and
    /// has not acknowledged yet.
    pub running: u64,
    /// Deliveries so far (first deliveries and redeliveries; a bundle is one).
    pub delivered: u64,
    /// Messages waiting to be delivered (a bundle is one).
    pub waiting_messages: u64,
    /// Tasks a message of the role's holds, on average, now: 1 without bundles; `None`
    /// when its subjects hold nothing.
    pub tasks_per_message: Option<f64>,
    /// For each priority with tasks waiting, the stream sequence they start after: the
    /// last one its consumer delivered.
    #[serde(skip)]
    pub(crate) waiting_after: Vec<(u8, u64)>,
}

impl Cluster {
    /// Connects to NATS at `url` and makes the stream and buckets with `settings` if they
    /// are not there. Refuses a cluster made with another replica count.
    pub async fn connect(url: &str, settings: Settings) -> Result<Self, Error> {
        Self::open(url, settings, true).await
    }

    /// Connects as a client: like [`Cluster::connect`], but a cluster already made keeps
    /// its replica count whatever `settings` say.
    pub async fn client(url: &str, settings: Settings) -> Result<Self, Error> {
        Self::open(url, settings, false).await
    }

    async fn open(url: &str, mut settings: Settings, strict: bool) -> Result<Self, Error> {
        settings.validate()?;
        let (client, js) = connect(url, "--nats").await?;
        let mut stream = js
            .get_or_create_stream(settings.stream())
            .await
            .map_err(|e| {
                // A first use of a single development server without --replicas 1.
                let hint = if settings.replicas > 1 {
                    format!(
                        " (fewer servers than its {} replicas? give --replicas 1 for a single server)",
                        settings.replicas
                    )
                } else {
                    String::new()
                };
                Error::nats("the tasks stream", format!("{e}{hint}"))
            })?;
        let info = stream
            .info()
            .await
            .map_err(|e| Error::nats("the tasks stream", e))?;
        let replicas = info.config.num_replicas;
        let epoch = format!("{:x}", info.created.unix_timestamp_nanos());
        if !strict {
            settings.replicas = replicas;
        }
        if replicas != settings.replicas {
            return Err(Error::Settings(format!(
                "the cluster at {url} keeps {replicas} replica(s) of its tasks; this node asked for {}: give --replicas {replicas}",
                settings.replicas
            )));
        }
        let tasks = bucket(&js, settings.tasks_bucket()).await?;
        let nodes = bucket(&js, settings.nodes_bucket()).await?;
        Ok(Self {
            url: shown(url),
            client,
            js,
            stream,
            tasks,
            nodes,
            settings,
            scaling: Default::default(),
            roles: Default::default(),
            epoch,
            members: Default::default(),
            wide: Default::default(),
        })
    }

    /// The servers' URLs, credentials left out.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether its connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Submits tasks, in order; each is accepted once the stream (all its replicas' quorum)
    /// acknowledged it. `ids` gives each its idempotency id (a retried submission with the
    /// same id is accepted once); random ids when `None`.
    pub async fn submit(
        &self,
        specs: &[TaskSpec],
        ids: Option<&[String]>,
    ) -> Result<Vec<Submitted>, Error> {
        self.submit_ballots(specs, ids, None).await
    }

    /// [`Cluster::submit`], each task a ballot whose node says who voted when `weigh` asks
    /// (`Colony-Ballot`).
    pub(crate) async fn submit_ballots(
        &self,
        specs: &[TaskSpec],
        ids: Option<&[String]>,
        weigh: Option<crate::wire::Weigh>,
    ) -> Result<Vec<Submitted>, Error> {
        if let Some(ids) = ids
            && ids.len() != specs.len()
        {
            return Err(Error::Task(format!(
                "{} idempotency ids for {} tasks",
                ids.len(),
                specs.len()
            )));
        }
        let mut messages = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let id = ids.map_or_else(random_id, |ids| ids[i].clone());
            let mut message = outgoing(i, spec, &id, None)?;
            if let Some(weigh) = weigh {
                TaskMessage::mark_ballot(&mut message.1, weigh);
            }
            messages.push(message);
        }
        self.publish_all(messages).await
    }

    /// Submits tasks bundled: up to `per_message` (at most [`bundle::MAX_TASKS`]) tasks of
    /// one role and priority, one after another in `specs`, go in one message of the stream
    /// (within a record's size), so the stream's write, the pull and the ack are paid once
    /// for all of them. Each task keeps its own id ([`bundle::bundled_id`]; a task alone in
    /// its message keeps its stream sequence), record, lease, attempts and cancel. With
    /// `key`, message `n` has idempotency id `<key>.b<n>-<tasks>-<digest>`:
    /// the same call again (the same tasks, the same key, within the stream's duplicate
    /// window) is accepted once, under the same ids; without, a retried call submits its
    /// tasks again. Refused while a live
    /// node reads no bundles. A role's backlog ([`Cluster::status`]) counts each task of a
    /// bundle: its message goes on a subject saying how many it holds.
    pub async fn submit_bundled(
        &self,
        specs: &[TaskSpec],
        per_message: usize,
        key: Option<&str>,
    ) -> Result<Vec<Submitted>, Error> {
        let per_message = per_message.clamp(1, bundle::MAX_TASKS);
        if per_message == 1 {
            let ids: Option<Vec<String>> =
                key.map(|key| (0..specs.len()).map(|n| format!("{key}.b{n}")).collect());
            return self.submit(specs, ids.as_deref()).await;
        }
        // A node from before bundles would run a bundle as one task; one from before their
        // subjects would not be delivered them.
        for node in self.recent_members().await? {
            let (name, why) = if !node.bundles {
                (
                    node.name,
                    "reads no bundles (it would run one as a single task)",
                )
            } else if !node.bundle_subjects {
                (node.name, "takes no bundles from their own subjects")
            } else {
                continue;
            };
            return Err(Error::Task(format!(
                "node {name} runs a colony that {why}: upgrade or drain it first, or submit without bundles"
            )));
        }
        // Each task checked as if sent alone, then put with those before it while they share
        // a subject and the message has room.
        let room = settings::MAX_RECORD - 1024;
        let (mut messages, mut counts) = (Vec::new(), Vec::new());
        let mut group: Vec<Outgoing> = Vec::new();
        let mut size = 0;
        // Message `n` of the call, of the tasks from `first` on, checked whole.
        let mut seal = |group: Vec<Outgoing>, first: usize| {
            let n = group.len();
            let message = bundled(group, key, messages.len());
            let bytes = header_bytes(&message.1) + message.2.len();
            if bytes > settings::MAX_RECORD {
                return Err(Error::Task(format!(
                    "task {first}: its message with its headers takes {bytes} bytes, over the cluster's {} (a long idempotency key?)",
                    settings::MAX_RECORD
                )));
            }
            messages.push(message);
            counts.push(n);
            Ok(())
        };
        for (i, spec) in specs.iter().enumerate() {
            let one = outgoing(i, spec, "", None)?;
            let bytes = header_bytes(&one.1) + one.2.len() + bundle::FRAMING;
            if group.first().is_some_and(|(subject, ..)| {
                *subject != one.0 || group.len() == per_message || size + bytes > room
            }) {
                let first = i - group.len();
                seal(std::mem::take(&mut group), first)?;
                size = 0;
            }
            size += bytes;
            group.push(one);
        }
        if !group.is_empty() {
            let first = specs.len() - group.len();
            seal(group, first)?;
        }
        // Ids past the bundles' range name no task: refused before anything is sent.
        let last = self
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| Error::nats("the tasks stream", e))?
            .state
            .last_sequence;
        if last.saturating_add(messages.len() as u64) >= bundle::BUNDLED {
            return Err(Error::Task(format!(
                "the tasks stream's sequence ({last}) nears the {} its bundles' tasks can be named under: submit without bundles",
                bundle::BUNDLED
            )));
        }
        let bundles: std::collections::BTreeSet<&str> = messages
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n > 1)
            .map(|((subject, ..), _)| subject.as_str())
            .collect();
        for subject in bundles {
            self.widen_for(subject).await?;
        }
        let accepted = match self.publish_all(messages).await {
            Ok(accepted) => accepted,
            // Said in tasks, not messages: each accepted bundle's tasks' ids.
            Err(Error::Partly {
                accepted, error, ..
            }) => {
                let accepted = accepted
                    .iter()
                    .zip(&counts)
                    .flat_map(|(&id, &n)| {
                        (0..n).filter_map(move |i| {
                            if n == 1 {
                                Some(id)
                            } else {
                                bundle::bundled_id(id, i)
                            }
                        })
                    })
                    .collect();
                return Err(Error::Partly {
                    accepted,
                    of: specs.len(),
                    error,
                });
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(specs.len());
        for (message, n) in accepted.into_iter().zip(counts) {
            if n == 1 {
                out.push(message);
                continue;
            }
            for i in 0..n {
                let id = bundle::bundled_id(message.id, i).ok_or_else(|| {
                    Error::Task(format!(
                        "the stream's sequence {} is past the {} a bundle's tasks can be named under: submit without bundles",
                        message.id,
                        bundle::BUNDLED
                    ))
                })?;
                out.push(Submitted {
                    id,
                    duplicate: message.duplicate,
                });
            }
        }
        Ok(out)
    }

    /// Updates a consumer of the tasks stream to `wider` ([`settings::widened`]). It keeps
    /// its place: a bundle it passed over while narrow (an old node pulled past it) is not
    /// delivered; a client widens a consumer before it sends bundles to it, so none is sent
    /// while it is.
    pub(crate) async fn widen_consumer(
        &self,
        wider: jetstream::consumer::Config,
    ) -> Result<jetstream::consumer::PullConsumer, Error> {
        use jetstream::consumer::{FromConsumer, pull};
        let name = wider.durable_name.clone().unwrap_or_default();
        let failed =
            |e: &dyn std::fmt::Display| Error::nats(format!("widening the consumer {name}"), e);
        let config = pull::Config::try_from_consumer_config(wider).map_err(|e| failed(&e))?;
        self.stream
            .update_consumer(config)
            .await
            .map_err(|e| failed(&e))
    }

    /// Widens the consumer that takes the bundles of `subject` ([`settings::bundle_subject`])
    /// where a node from before bundles had subjects made it and no node of this version
    /// has widened it since (the role's nodes all left before the upgrade): else the bundle
    /// would wait, taken by no consumer and seen by no backlog, and the node that widens it
    /// later could have passed it over. A consumer not made yet is made wide by the node
    /// that makes it.
    async fn widen_for(&self, subject: &str) -> Result<(), Error> {
        let Some((role, priority, _)) = settings::parse_subject(subject) else {
            return Ok(());
        };
        let role = (role != settings::ANY_ROLE).then_some(role);
        let name = settings::consumer(role, priority);
        if self.wide.lock().is_ok_and(|wide| wide.contains(&name)) {
            return Ok(());
        }
        let plain = settings::subject(role, priority);
        match self.stream.consumer_info(&name).await {
            Ok(info) => {
                if let Some(wider) = settings::widened(&info.config, &plain) {
                    self.widen_consumer(wider).await?;
                }
            }
            Err(e) => {
                use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
                return match e.kind() {
                    K::NotFound => Ok(()),
                    _ => Err(Error::nats(format!("the consumer {name}"), e)),
                };
            }
        }
        if let Ok(mut wide) = self.wide.lock() {
            wide.insert(name);
        }
        Ok(())
    }

    /// Publishes `messages` in order, up to [`IN_FLIGHT`] awaiting their acknowledgement at
    /// once: what the stream accepted, one for each.
    async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<Vec<Submitted>, Error> {
        let of = messages.len();
        let mut out = Vec::with_capacity(of);
        match self.publish_into(messages, &mut out).await {
            Ok(()) => Ok(out),
            Err(error) if out.is_empty() => Err(error),
            // Failed part-way: what was accepted before is said, so that it is not sent
            // again as new tasks.
            Err(error) => Err(Error::Partly {
                accepted: out.iter().map(|s| s.id).collect(),
                of,
                error: Box::new(error),
            }),
        }
    }

    /// [`Cluster::publish_all`]'s sends: what the stream accepted pushed onto `out` in
    /// order, up to the first failure.
    async fn publish_into(
        &self,
        messages: Vec<Outgoing>,
        out: &mut Vec<Submitted>,
    ) -> Result<(), Error> {
        // The acknowledgements in flight are awaited together, in order: each has its own
        // timeout, and awaited one after another, a thousand lost to a server restarting
        // would take a thousand timeouts before the first was sent again.
        let mut waiting = futures::stream::FuturesOrdered::new();
        for message in messages {
            // The acknowledgements in flight are heard while the publish waits: each holds
            // one of the client's places for acks in flight (5,000, shared by every caller),
            // and a publish waits for one, so submitters that each held a thousand and
            // waited could take them all and wait for good.
            let ack = {
                let publish = self.publish(&message);
                tokio::pin!(publish);
                loop {
                    tokio::select! {
                        ack = &mut publish => break ack,
                        Some(accepted) = waiting.next(), if !waiting.is_empty() => out.push(accepted?),
                    }
                }
            };
            waiting.push_back(async move { self.accepted(&message, ack).await });
            if waiting.len() >= IN_FLIGHT
                && let Some(accepted) = waiting.next().await
            {
                out.push(accepted?);
            }
        }
        while let Some(accepted) = waiting.next().await {
            out.push(accepted?);
        }
        Ok(())
    }

    /// Submits a task decided by vote: the node that takes it seats `decide.voters` of its
    /// own agents that can run it, and the decided value is the task's output (a decision
    /// that fails, with no quorum or a tie, fails the task with the reason). Accepted as
    /// [`Cluster::submit`]'s tasks are; `id` is the idempotency id, random when `None`.
    pub async fn submit_decided(
        &self,
        spec: &TaskSpec,
        decide: &Decide,
        id: Option<String>,
    ) -> Result<Submitted, Error> {
        self.submit_together(spec, &Together::Vote(decide.clone()), id)
            .await
    }

    /// Submits a task worked by a team: the node that takes it forms `team` among its own
    /// agents and runs its steps, and the last step's output is the task's (a team that
    /// fails, its members' failures past its reassignments, fails the task with the reason).
    /// The task goes to the nodes of its own role, else of the team's first role. Accepted
    /// as [`Cluster::submit`]'s tasks are; `id` is the idempotency id, random when `None`.
    pub async fn submit_team(
        &self,
        spec: &TaskSpec,
        team: colony_runtime::team::Team,
        id: Option<String>,
    ) -> Result<Submitted, Error> {
        let mut spec = spec.clone();
        if spec.requirement.role.is_none() {
            spec.requirement.role = team.roles.first().and_then(|r| r.requirement.role.clone());
        }
        self.submit_together(&spec, &Together::Team(Box::new(team)), id)
            .await
    }

    async fn submit_together(
        &self,
        spec: &TaskSpec,
        together: &Together,
        id: Option<String>,
    ) -> Result<Submitted, Error> {
        let id = id.unwrap_or_else(random_id);
        let message = outgoing(0, spec, &id, Some(together))?;
        // A node from before votes and teams crossed the cluster would run it as a plain
        // task and commit one agent's output as if decided or worked: refused while one
        // serves the role.
        let what = match together {
            Together::Vote(d) if d.weigh().is_some() => {
                "counts no spread vote that weighs its voters (it would refuse the vote's header, or not say who voted in its ballots' records)"
            }
            Together::Vote(d) if d.spread => {
                "counts no spread vote (it would refuse the vote's header)"
            }
            Together::Vote(d) if !d.role_weights.is_empty() => {
                "weighs no roles in a vote (it would refuse the vote's header)"
            }
            Together::Vote(_) => "decides no vote (it would run the task as a plain one)",
            Together::Team(t) if t.spread && t.delegation > 0 => {
                "runs no spread team that delegates (it would refuse the team's header)"
            }
            Together::Team(t) if t.spread => {
                "runs no spread team (it would refuse the team's header)"
            }
            Together::Team(_) => "forms no team (it would run the task as a plain one)",
        };
        let can = |n: &NodeInfo| match together {
            Together::Vote(d) => {
                n.votes
                    && (d.role_weights.is_empty() || n.weights)
                    && (!d.spread || n.spread)
                    && (d.weigh().is_none() || n.spread_weights)
            }
            Together::Team(t) => {
                n.teams
                    && (!t.spread || n.spread_teams)
                    && (!t.spread || t.delegation == 0 || n.spread_delegation)
            }
        };
        let role = spec.requirement.role.as_deref();
        // Every ballot of a spread vote of a role weighing 0 would weigh nothing.
        if let Together::Vote(d) = together
            && d.weigh().is_some()
            && d.most_seat_weight(role) == 0.0
        {
            return Err(Error::Task(format!(
                "every voter of this spread vote is an agent of role `{}`, which weighs 0: nothing would be counted",
                role.unwrap_or_default()
            )));
        }
        let members = self.recent_members().await?;
        // A spread team's asks go to the nodes of each of its roles: one that no live node
        // serves would wait for good.
        if let Together::Team(t) = together
            && t.spread
            && let Some(r) = t.roles.iter().find(|r| {
                r.requirement.role.as_deref().is_some_and(|role| {
                    !members
                        .iter()
                        .any(|n| !n.draining && n.roles.iter().any(|own| own == role))
                })
            })
        {
            return Err(Error::Task(format!(
                "team role `{}` asks for nodes of role `{}`, and no live node serves it",
                r.name,
                r.requirement.role.as_deref().unwrap_or_default()
            )));
        }
        if let Some(old) = members
            .into_iter()
            .find(|n| !can(n) && role.is_none_or(|r| n.roles.iter().any(|own| own == r)))
        {
            return Err(Error::Task(format!(
                "node {} serves {} but runs a colony that {what}: upgrade or drain it first",
                old.name,
                role.map_or_else(|| "tasks of any role".to_owned(), |r| format!("role `{r}`"))
            )));
        }
        let ack = self.publish(&message).await;
        self.accepted(&message, ack).await
    }

    /// The live nodes, read at most [`MEMBERS_FRESH`] ago.
    async fn recent_members(&self) -> Result<Vec<NodeInfo>, Error> {
        let mut members = self.members.lock().await;
        if let Some((at, nodes)) = members.as_ref()
            && at.elapsed() < MEMBERS_FRESH
        {
            return Ok(nodes.clone());
        }
        let nodes = membership::list(&self.nodes).await?;
        *members = Some((std::time::Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    async fn publish(
        &self,
        (subject, headers, payload): &Outgoing,
    ) -> Result<PublishAckFuture, Error> {
        self.js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded {
                    Error::Task(format!(
                        "a task's message is over the servers' max_payload: {e}"
                    ))
                } else {
                    Error::nats("publishing a task", e)
                }
            })
    }
    /// The stream's acknowledgement of `message`. A publish or an acknowledgement that failed
    /// (NATS electing a leader, a server restarting) is sent again with the same dedupe id,
    /// for up to [`PATIENCE`]: the stream keeps it once.
    async fn accepted(
        &self,
        message: &Outgoing,
        mut ack: Result<PublishAckFuture, Error>,
    ) -> Result<Submitted, Error> {
        let since = std::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        // Sent again: a duplicate then is most likely this call's own first send, which
        // landed while its answer was lost, not an earlier submission.
        let mut resent = false;
        loop {
            let answer = match ack {
                Ok(ack) => match ack.await {
                    Ok(ack) => Ok(ack),
                    // Never accepted however often it is sent: said at once.
                    Err(e)
                        if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        return Err(Error::Task(format!(
                            "a task's message is over the servers' max_payload: {e}"
                        )));
                    }
                    // The stream refused this message for what it is: never taken either.
                    Err(e) if refused_for_good(&e) => {
                        return Err(Error::Task(format!(
                            "the stream refused a task's message: {e}"
                        )));
                    }
                    Err(e) => Err(Error::nats("the stream's acknowledgement of a task", e)),
                },
                Err(e) => Err(e),
            };
            match answer {
                Ok(ack) => {
                    return Ok(Submitted {
                        id: ack.sequence,
                        duplicate: ack.duplicate && !resent,
                    });
                }
                // Never accepted however often it is sent: said at once.
                Err(e @ Error::Task(_)) => return Err(e),
                Err(e) if since.elapsed() > PATIENCE => return Err(e),
                Err(e) => {
                    tracing::debug!("{e}; sending the task again");
                    // Longer each time (to 2 s), and spread: a batch's thousand sends in
                    // flight that failed together are not all sent again together.
                    let jitter = u64::from(since.elapsed().subsec_micros() % 100);
                    tokio::time::sleep(pause + Duration::from_millis(jitter)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    resent = true;
                    ack = self.publish(message).await;
                }
            }
        }
    }

    /// The key of task `id`'s record in the tasks bucket.
    pub(crate) fn key(&self, id: u64) -> String {
        format!("{}.{id}", self.epoch)
    }

    /// Cancels task `id`: its record is written `cancelled` with `reason` (by a
    /// compare-and-set on what was read, so a node's end that lands first wins and is told),
    /// and its message is dropped from the stream so that no node takes it. A node running
    /// it sees its lease taken at its next check (within a third of `ack_wait`, or at the
    /// lazy lease of a first attempt), stops the attempt, and drops its result (counted
    /// `cancelled` on the node).
    pub async fn cancel(&self, id: u64, reason: &str) -> Result<Cancel, Error> {
        let key = self.key(id);
        let reason = colony_core::text::shorten(reason, 500);
        // This cancellation's own mark, to know its write when the answer is lost.
        let lease = random_id();
        for _ in 0..8 {
            let found = self.row_from_leader(id).await?;
            let (was, written) = match found {
                Some((row, _)) if row.is_terminal() => {
                    if row.state == TaskState::Cancelled {
                        // Cancelled by an earlier call that may not have dropped it.
                        self.forget_message(id).await;
                    }
                    return Ok(Cancel::AlreadyEnded { state: row.state });
                }
                Some((row, revision)) => {
                    let cancelled = Row {
                        state: TaskState::Cancelled,
                        error: Some(reason.clone()),
                        lease: lease.clone(),
                        at_ms: crate::now_ms(),
                        output: None,
                        ..row.clone()
                    };
                    let written = self
                        .tasks
                        .update(&key, cancelled.encode(), revision)
                        .await
                        .map_err(|e| {
                            (
                                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                                e.to_string(),
                            )
                        });
                    (Some(row.state), written)
                }
                None => {
                    // No record: not started, or started and not leased yet. It must be in
                    // the stream, or it is unknown (or ended between the two reads).
                    if !self.in_stream(id).await? {
                        if self.row_from_leader(id).await?.is_some() {
                            continue;
                        }
                        return Err(Error::Unknown { id });
                    }
                    let cancelled = Row {
                        state: TaskState::Cancelled,
                        attempt: 0,
                        charged: 0,
                        node: String::new(),
                        lease: lease.clone(),
                        agent: None,
                        error: Some(reason.clone()),
                        key: None,
                        at_ms: crate::now_ms(),
                        decision: None,
                        team: None,
                        voter: None,
                        output: None,
                    };
                    let written = self
                        .tasks
                        .create(&key, cancelled.encode())
                        .await
                        .map_err(|e| {
                            (
                                e.kind() == kv::CreateErrorKind::AlreadyExists,
                                e.to_string(),
                            )
                        });
                    (None, written)
                }
            };
            match written {
                Ok(_) => {
                    // Gone from the backlog; a node that fetched it already is fenced.
                    self.forget_message(id).await;
                    return Ok(Cancel::Cancelled { was });
                }
                // A node wrote first: read again.
                Err((true, _)) => continue,
                // No answer: the write may have landed (its lease id says whose it is).
                Err((false, e)) => match self.row_from_leader(id).await {
                    Ok(Some((row, _)))
                        if row.state == TaskState::Cancelled && row.lease == lease =>
                    {
                        self.forget_message(id).await;
                        return Ok(Cancel::Cancelled { was });
                    }
                    // Another write (a node's, as it ended or leased the task) made the
                    // compare-and-set fail, told as another error when the client's read
                    // behind it went to a replica that had not seen it yet: read again.
                    Ok(_) => continue,
                    Err(_) => return Err(Error::nats(format!("cancelling task {id}"), e)),
                },
            }
        }
        Err(Error::nats(
            format!("cancelling task {id}"),
            "its record kept changing under the cancellation: try again",
        ))
    }

    /// Whether task `id`'s message is in the stream (for a bundled task, a bundle with its
    /// place): not taken and acknowledged yet.
    async fn in_stream(&self, id: u64) -> Result<bool, Error> {
        let (sequence, place) = bundle::message_of(id);
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => {
                let count = bundle::count(Some(&message.headers));
                Ok(match place {
                    // A task alone in its message: a bundle's sequence names none of its
                    // tasks (each has an id of its own), so it is no task's.
                    None => {
                        count == Ok(1)
                            && crate::settings::parse_subject(message.subject.as_str())
                                .is_some_and(|(_, _, n)| n == 1)
                    }
                    Some(i) => count.is_ok_and(|n| n > 1 && i < n),
                })
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(false)
            }
            Err(e) => Err(Error::nats(
                format!("looking task {id} up in the stream"),
                e,
            )),
        }
    }

    /// Keeps cancelled task `id` from being run: its message dropped from the stream, or, for
    /// a bundled task (its message carries others), its place marked in the bundle's list of
    /// cancelled tasks, which the node taking the bundle reads first
    /// ([`Cluster::cancelled_in`]).
    async fn forget_message(&self, id: u64) {
        match bundle::message_of(id) {
            (sequence, None) => self.drop_message(sequence).await,
            (sequence, Some(place)) => self.mark_cancelled(sequence, place).await,
        }
    }

    /// The key of the list of cancelled tasks of the bundle at `sequence`, in the tasks
    /// bucket beside the records (no record's key: a record's last token is a number).
    fn cancelled_key(&self, sequence: u64) -> String {
        format!("{}.cancelled-{sequence}", self.epoch)
    }

    /// Adds `place` to the bundle's list of cancelled tasks (a compare-and-set, tried for
    /// [`DROP_FOR`]).
    /// Not written, the task may still run; its end is then fenced by its record.
    async fn mark_cancelled(&self, sequence: u64, place: usize) {
        let key = self.cancelled_key(sequence);
        let since = std::time::Instant::now();
        while since.elapsed() < DROP_FOR {
            let (mut places, revision) = match self.tasks.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Vec<usize>>(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                Ok(_) => (Vec::new(), None),
                Err(e) => {
                    tracing::warn!("bundle {sequence}: reading its cancelled tasks: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if places.contains(&place) {
                return;
            }
            places.push(place);
            let value = serde_json::to_vec(&places).unwrap_or_default().into();
            let written = match revision {
                Some(revision) => self.tasks.update(&key, value, revision).await.is_ok(),
                None => self.tasks.create(&key, value).await.is_ok(),
            };
            if written {
                return;
            }
            // Another cancel of the bundle wrote first, or NATS is away: read again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            "bundle {sequence}: task {place} cancelled but not marked within {} s; a node taking it runs it and its end is dropped",
            DROP_FOR.as_secs()
        );
    }

    /// The places of the bundle at `sequence` whose tasks were cancelled before it was taken
    /// (none when the list cannot be read: a cancelled task that runs is fenced at its end).
    pub(crate) async fn cancelled_in(&self, sequence: u64) -> Vec<usize> {
        match self.tasks.entry(self.cancelled_key(sequence)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                serde_json::from_slice(&entry.value).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Drops the message at `sequence` from the stream (tried for [`DROP_FOR`]): a cancelled task no
    /// node should take. Already gone (taken and acked, or dropped before) is done.
    async fn drop_message(&self, sequence: u64) {
        let id = sequence;
        // Tried while NATS may be electing the stream's leader (seconds), not for ever: the
        // record already says cancelled, which fences any attempt at its lease.
        let since = std::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        while since.elapsed() < DROP_FOR {
            match self.stream.delete_message(sequence).await {
                Ok(_) => return,
                // Gone already (acknowledged, or dropped by an earlier call): the server says
                // so with its own code, or, for a message acknowledged on a work queue, as a
                // failed delete (10057) of no message.
                Err(e)
                    if matches!(e.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                            || (j.error_code() == jetstream::ErrorCode(10057)
                                && j.to_string().contains("no message found"))) =>
                {
                    return;
                }
                Err(e) => {
                    tracing::warn!("task {id} cancelled, its message not dropped yet: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::warn!(
            "task {id} cancelled, its message not dropped within {} s: a node that takes it runs it until its lease, and throws its result away",
            DROP_FOR.as_secs()
        );
    }

    /// Records as they are written (a task started, retried, ended), each with its task's
    /// id, where it is in the bucket and when the bucket took it, from `from` on. A watch
    /// that would start more than `most` records back starts `most` sequences before the
    /// last instead (`Watch::cut`), so a busy cluster's past is not read whole. A record that
    /// cannot be read is left out; the watch failing (NATS gone) is told as an error, and
    /// the stream ends after it. So does a watch that the client made again from the
    /// bucket's start (it does so when it reconnects before its first record): the caller
    /// makes it again after the last record it read.
    pub async fn records(&self, from: RecordsFrom, most: u64) -> Result<Watch, Error> {
        use jetstream::consumer::DeliverPolicy;
        let watching = |e: &dyn std::fmt::Display| Error::nats("watching the task records", e);
        let filter = [format!("{}{}.>", self.tasks.prefix, self.epoch)];
        let make = |from| {
            let description = "colony: a watch of the task records";
            crate::watch::ordered(&self.tasks.stream, &self.client, description, &filter, from)
        };
        let policy = match from {
            RecordsFrom::Now => DeliverPolicy::New,
            RecordsFrom::Since(ms) => DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|e| watching(&e))?,
            },
            RecordsFrom::After(revision) => DeliverPolicy::ByStartSequence {
                start_sequence: revision.saturating_add(1),
            },
        };
        // The bucket's last write before the watch: what comes at or before it was there
        // already.
        let until = self
            .tasks
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| watching(&e))?
            .state
            .last_sequence;
        let mut consumer = make(policy).await.map_err(|e| watching(&e))?;
        let mut cut = false;
        if consumer.cached_info().num_pending > most {
            // Too far back: the last `most` sequences (fewer records, as a record written
            // again leaves its older sequence empty).
            let name = consumer.cached_info().name.clone();
            let _ = self.tasks.stream.delete_consumer(&name).await;
            consumer = make(DeliverPolicy::ByStartSequence {
                start_sequence: until.saturating_sub(most) + 1,
            })
            .await
            .map_err(|e| watching(&e))?;
            cut = true;
        }
        let backlog = consumer.cached_info().num_pending;
        // Ends at the first record the client went back for (`crate::watch`).
        let (_, messages) = crate::watch::messages(consumer)
            .await
            .map_err(|e| watching(&e))?;
        let prefix = format!("{}{}.", self.tasks.prefix, self.epoch);
        let records = messages
            .filter_map(move |message| {
                let record = match message {
                    Ok((_, message)) => (|| {
                        let info = message.info().ok()?;
                        let deleted = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("KV-Operation"))
                            .is_some_and(|op| op.as_str() != "PUT");
                        let id = message.subject.strip_prefix(&prefix)?.parse().ok()?;
                        let row = Row::decode(&message.payload).ok()?;
                        let written_ms =
                            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                                .unwrap_or(0);
                        (!deleted).then_some(Ok(Record {
                            id,
                            row,
                            revision: info.stream_sequence,
                            written_ms,
                            earlier: info.stream_sequence <= until,
                            caught_up: info.pending == 0 || info.stream_sequence >= until,
                        }))
                    })(),
                    Err(e) => Some(Err(watching(&e))),
                };
                std::future::ready(record)
            })
            .boxed();
        Ok(Watch {
            records,
            cut,
            until,
            backlog,
        })
    }

    /// Task `id`'s record, if it has started.
    pub async fn row(&self, id: u64) -> Result<Option<(Row, u64)>, Error> {
        let entry = self
            .tasks
            .entry(self.key(id))
            .await
            .map_err(|e| Error::nats(format!("reading task {id}"), e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let row =
                    Row::decode(&entry.value).map_err(|detail| Error::Corrupt { id, detail })?;
                Ok(Some((row, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Task `id`'s record as the bucket's leader has it: never a replica's older copy, as
    /// [`Cluster::row`] may be (reads go to any replica). For deciding whether a write was ours.
    pub(crate) async fn row_from_leader(&self, id: u64) -> Result<Option<(Row, u64)>, Error> {
        let key = self.key(id);
        match from_leader(&self.tasks, &key, &format!("reading task {id}")).await? {
            Some((value, revision)) => {
                let row = Row::decode(&value).map_err(|detail| Error::Corrupt { id, detail })?;
                Ok(Some((row, revision)))
            }
            None => Ok(None),
        }
    }

    /// Where task `id` stands.
    pub async fn task(&self, id: u64) -> Result<TaskView, Error> {
        if let Some((row, _)) = self.row(id).await? {
            return Ok(TaskView::Row(row));
        }
        if self.in_stream(id).await? {
            return Ok(TaskView::Queued);
        }
        // Read again, from the leader: it may have started and ended between the two reads,
        // and a replica may not have its record yet.
        match self.row_from_leader(id).await? {
            Some((row, _)) => Ok(TaskView::Row(row)),
            None => Err(Error::Unknown { id }),
        }
    }

    /// Waits until task `id` has ended, and returns its record. Rides out NATS being
    /// unavailable (a leader election, a server restarting) for up to a minute at a time.
    pub async fn wait(&self, id: u64) -> Result<Row, Error> {
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match self.watch_until_ended(id, &mut failing_since).await {
                Ok(row) => return Ok(row),
                Err(e @ (Error::Corrupt { .. } | Error::Unknown { .. })) => return Err(e),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > PATIENCE {
                        return Err(e);
                    }
                    tracing::debug!("waiting for task {id}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn watch_until_ended(
        &self,
        id: u64,
        failing_since: &mut Option<std::time::Instant>,
    ) -> Result<Row, Error> {
        let mut watch = self
            .tasks
            .watch_with_history(self.key(id))
            .await
            .map_err(|e| Error::nats(format!("watching task {id}"), e))?;
        // Watching again: the next failure has a minute of its own.
        *failing_since = None;
        // Now and then, with nothing heard: a task neither recorded nor in the stream (it
        // names no task, or its message went without a record) never ends.
        let mut look =
            tokio::time::interval_at(tokio::time::Instant::now() + LOOK_EVERY, LOOK_EVERY);
        // Once a record is heard the task is there: no more looks.
        let mut heard = false;
        loop {
            let entry = tokio::select! {
                entry = watch.next() => match entry {
                    Some(entry) => entry,
                    None => break,
                },
                _ = look.tick(), if !heard => {
                    if let Err(e @ Error::Unknown { .. }) = self.task(id).await {
                        return Err(e);
                    }
                    continue;
                }
            };
            let entry = entry.map_err(|e| Error::nats(format!("watching task {id}"), e))?;
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let row = Row::decode(&entry.value).map_err(|detail| Error::Corrupt { id, detail })?;
            heard = true;
            if row.is_terminal() {
                return Ok(row);
            }
        }
        Err(Error::nats(
            format!("watching task {id}"),
            "the watch ended",
        ))
    }

    /// The live nodes, the unfinished tasks, and the backlog of each role, in tasks (each
    /// task of a bundle counted: [`crate::backlog`]). A role no node has served yet has no
    /// consumer: its tasks all wait.
    pub async fn status(&self) -> Result<Status, Error> {
        let reading = |e: &dyn std::fmt::Display| Error::nats("the tasks stream", e);
        let mut listed = self
            .stream
            .info_with_subjects(settings::SUBJECTS)
            .await
            .map_err(|e| reading(&e))?;
        let leader = listed.info.cluster.as_ref().and_then(|c| c.leader.clone());
        let mut queued = crate::backlog::InStream::default();
        while let Some(subject) = listed.next().await {
            let (subject, messages) = subject.map_err(|e| reading(&e))?;
            queued.add(&subject, messages as u64);
        }
        let unfinished = queued.tasks();
        // A role's consumers, one for each priority, summed.
        let mut roles: std::collections::BTreeMap<String, RoleStatus> = Default::default();
        let mut consumed = std::collections::BTreeSet::new();
        let stream = self.stream.clone();
        let mut consumers = stream.consumers();
        let role_status = |role: &str| RoleStatus {
            role: role.to_owned(),
            waiting: 0,
            running: 0,
            delivered: 0,
            waiting_messages: 0,
            tasks_per_message: None,
            waiting_after: Vec::new(),
        };
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| Error::nats("the stream's consumers", e))?;
            let Some((role, priority)) = settings::role_of_consumer(&info.name) else {
                continue;
            };
            consumed.insert((role.to_owned(), priority));
            let (waiting, running) = queued.split(
                role,
                priority,
                info.num_pending,
                info.num_ack_pending as u64,
            );
            let status = roles
                .entry(role.to_owned())
                .or_insert_with(|| role_status(role));
            status.waiting += waiting;
            status.running += running;
            status.delivered += info.delivered.consumer_sequence;
            status.waiting_messages += info.num_pending;
            if info.num_pending > 0 {
                let after = (priority, info.delivered.stream_sequence);
                status.waiting_after.push(after);
            }
        }
        for (role, priority, tasks) in queued.unconsumed(&consumed) {
            let status = roles
                .entry(role.to_owned())
                .or_insert_with(|| role_status(role));
            status.waiting += tasks.tasks;
            status.waiting_messages += tasks.messages;
            status.waiting_after.push((priority, 0));
        }
        let held = queued.by_role();
        for status in roles.values_mut() {
            if let Some(h) = held.get(status.role.as_str()).filter(|h| h.messages > 0) {
                status.tasks_per_message = Some(h.tasks as f64 / h.messages as f64);
            }
        }
        let roles = roles.into_values().collect();
        Ok(Status {
            nodes: membership::list(&self.nodes).await?,
            unfinished,
            roles,
            replicas: self.settings.replicas,
            leader,
        })
    }

    /// The server that leads the tasks stream's Raft group now, if it has a leader.
    pub async fn stream_leader(&self) -> Result<Option<String>, Error> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| Error::nats("the tasks stream", e))?;
        Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
    }

    /// Flushes what this client sent.
    pub async fn flush(&self) -> Result<(), Error> {
        self.client
            .flush()
            .await
            .map_err(|e| Error::nats("flushing", e))
    }
}

/// Task `i`'s message: its subject, headers and payload, once its role, payload and key are
/// within the cluster's limits.
fn outgoing(
    i: usize,
    spec: &TaskSpec,
    id: &str,
    together: Option<&Together>,
) -> Result<Outgoing, Error> {
    if let Some(role) = &spec.requirement.role {
        settings::check_role(role)?;
    }
    // What every node would refuse (attempts, a timeout out of range) is refused when sent;
    // the payload is bounded by the cluster's message, below.
    if let Err(e) = spec.validate(usize::MAX) {
        return Err(Error::Task(format!("task {i}: {e}")));
    }
    if spec.payload.len() > settings::MAX_PAYLOAD {
        return Err(Error::Task(format!(
            "task {i}: a payload of {} bytes is over the cluster's {} bytes",
            spec.payload.len(),
            settings::MAX_PAYLOAD
        )));
    }
    if let Some(key) = &spec.key
        && key.len() > settings::MAX_KEY
    {
        return Err(Error::Task(format!(
            "task {i}: a key of {} bytes is over the cluster's {} bytes",
            key.len(),
            settings::MAX_KEY
        )));
    }
    let headers = TaskMessage::headers(spec, id, together)
        .map_err(|e| Error::Task(format!("task {i}: {e}")))?;
    // The stream takes a message of at most a record's size, headers included: refused here,
    // naming it, rather than by the stream's answer.
    let header_bytes = header_bytes(&headers);
    if header_bytes + spec.payload.len() > settings::MAX_RECORD {
        return Err(Error::Task(format!(
            "task {i}: its headers ({header_bytes} bytes) and payload ({} bytes) are over the cluster's {} bytes a message",
            spec.payload.len(),
            settings::MAX_RECORD
        )));
    }
    let subject = settings::subject(spec.requirement.role.as_deref(), spec.priority.get());
    Ok((subject, headers, spec.payload.clone()))
}

/// Whether the stream refused a message for what it is (over its size, or its headers over
/// theirs), which sending it again cannot change.
fn refused_for_good(e: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| {
            matches!(
                j.error_code(),
                jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        })
}

/// About the bytes `headers` take in a message.
fn header_bytes(headers: &async_nats::HeaderMap) -> usize {
    // `NATS/1.0\r\n` before them and `\r\n` after.
    12usize
        + headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum::<usize>()
}

/// Tasks' messages (of one subject) as message `n` of a call: the one itself when alone,
/// else a bundle. Its dedupe id is random, or with `key` the key's, its place, and how many
/// tasks it holds and a digest of them: the same call again is kept once, and a call with
/// the same key that put other tasks in that place is not taken for it.
fn bundled(mut group: Vec<Outgoing>, key: Option<&str>, n: usize) -> Outgoing {
    let count = group.len();
    let (subject, mut headers, payload) = if count == 1 {
        group.remove(0)
    } else {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(bundle::COUNT, count.to_string().as_str());
        let payload = bundle::encode(group.iter().map(|(_, h, p)| (h, p)));
        let subject = settings::bundle_subject(&group.swap_remove(0).0, count);
        (subject, headers, payload)
    };
    let id = match key {
        None => random_id(),
        Some(key) => {
            use sha2::Digest;
            let mut digest = sha2::Sha256::new();
            digest.update(subject.as_bytes());
            // In order of name: a header map keeps none of its own.
            digest.update(bundle::header_lines(&headers).as_bytes());
            digest.update(&payload);
            let digest = digest.finalize();
            let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("{key}.b{n}-{count}-{short}")
        }
    };
    headers.insert("Nats-Msg-Id", id.as_str());
    (subject, headers, payload)
}

/// `key` of `bucket` as its stream's leader has it (a replica's read may lag): its value and
/// revision, `None` when it was never written or is deleted.
pub(crate) async fn from_leader(
    bucket: &kv::Store,
    key: &str,
    what: &str,
) -> Result<Option<(bytes::Bytes, u64)>, Error> {
    let subject = format!("{}{key}", bucket.prefix);
    match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => {
            let deleted = message
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT");
            Ok((!deleted).then_some((message.payload, message.sequence)))
        }
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(e) => Err(Error::nats(what, e)),
    }
}

/// Servers' URLs as they may be shown (errors, status, the dashboard): without the
/// `user:password@` any of them holds.
pub(crate) fn shown(url: &str) -> String {
    url.split(',')
        .map(|one| match one.split_once("://") {
            Some((scheme, rest)) => {
                let host_end = rest.find('/').unwrap_or(rest.len());
                match rest[..host_end].rfind('@') {
                    Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                    None => one.to_owned(),
                }
            }
            None => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to the NATS servers of `url` (several comma-separated: the client fails over
/// among them) and checks that they run JetStream. `flag` names where the URL was given.
pub(crate) async fn connect(
    url: &str,
    flag: &str,
) -> Result<(async_nats::Client, jetstream::Context), Error> {
    let addrs = url
        .split(',')
        .map(|a| a.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Settings(format!(
                "{flag} `{}`: not a NATS URL ({e}): write nats://HOST:PORT, several comma-separated",
                colony_core::text::shorten(&shown(url), 200)
            ))
        })?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .name("colony")
        .connect(addrs)
        .await
        .map_err(|e| Error::Connect {
            url: shown(url),
            detail: e.to_string(),
        })?;
    // A publish whose ack is not awaited (dropped when a batch failed at an earlier one)
    // holds its place for acks in flight no longer than an awaited one would.
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .ack_timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    js.query_account()
        .await
        .map_err(|_| Error::NoJetStream { url: shown(url) })?;
    Ok((client, js))
}

pub(crate) async fn bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, Error> {
    let name = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    js.create_key_value(config)
        .await
        .map_err(|e| Error::nats(format!("the bucket {name}"), e))
}

/// 128 random bits as hex: an idempotency id no other submission shares, a lease id.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, the time and a counter still make the id unique in this process.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&crate::now_ms().to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{outgoing, shown};
    use colony_core::task::TaskSpec;
    use std::time::Duration;

    /// What no node would take is refused when sent, naming the task and why.
    #[test]
    fn a_task_no_node_would_take_is_refused_when_sent() {
        let why = |spec: TaskSpec| outgoing(4, &spec, "id", None).unwrap_err().to_string();
        let spec = TaskSpec::with_payload("1");
        let attempts = why(TaskSpec {
            max_attempts: 0,
            ..spec.clone()
        });
        assert!(
            attempts.contains("task 4") && attempts.contains("max attempts 0"),
            "{attempts}"
        );
        let many = why(TaskSpec {
            max_attempts: 100_000,
            ..spec.clone()
        });
        assert!(many.contains("max attempts 100000"), "{many}");
        let timeout = why(TaskSpec {
            timeout: Duration::ZERO,
            ..spec.clone()
        });
        assert!(
            timeout.contains("task 4") && timeout.contains("timeout"),
            "{timeout}"
        );
        let mut comma = spec.clone();
        comma.requirement.capabilities = vec!["a,b".into()];
        assert!(why(comma).contains("capability `a,b`"));
        assert!(outgoing(0, &spec, "id", None).is_ok());
    }

    #[test]
    fn credentials_in_a_url_are_never_shown() {
        assert_eq!(shown("nats://a:4222"), "nats://a:4222");
        assert_eq!(
            shown("nats://user:s3cret@a:4222,tls://tok@b:4222,nats://c:4222"),
            "nats://a:4222,tls://b:4222,nats://c:4222"
        );
        assert_eq!(shown("nats://u:p@a:4222/x@y"), "nats://a:4222/x@y");
        assert_eq!(shown("a:4222"), "a:4222");
    }
}

/// Where a watch of the task records ([`Cluster::records`]) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsFrom {
    /// With the next record written.
    Now,
    /// With the first record written at or after this time (milliseconds since the epoch,
    /// by the bucket's clock).
    Since(u64),
    /// With the first record written after this one (its revision in the bucket).
    After(u64),
}

/// A watch of the task records.
pub struct Watch {
    pub records: futures::stream::BoxStream<'static, Result<Record, Error>>,
    /// It starts later than asked, as it would have read more than it was allowed.
    pub cut: bool,
    /// The bucket's last write when it was made: records up to it were there already.
    pub until: u64,
    /// Records it had to read when it was made, before any written after (0: none).
    pub backlog: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("cut", &self.cut)
            .field("until", &self.until)
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

/// A task's record as the watch read it.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: u64,
    pub row: Row,
    /// Its place in the bucket: a later write has a higher one.
    pub revision: u64,
    /// When the bucket took it, by the stream leader's clock.
    pub written_ms: u64,
    /// It was in the bucket already when the watch was made.
    pub earlier: bool,
    /// The watch has read every record that was there when it was made.
    pub caught_up: bool,
}
