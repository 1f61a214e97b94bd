//! How many nodes each role should have, decided by one leader for the whole cluster.
//!
//! Every `colony serve --nats` campaigns for the office `scaling` ([`crate::leadership`]);
//! the one that leads looks at the cluster once a period and runs colony's scaling engine
//! ([`colony_core::scaling::Scaler`]) per role, in nodes: a role's size is the nodes that
//! serve it, its capacity their slots for it, its load the role's consumer (tasks waiting and
//! running), the oldest waiting task's age and the arrival rate. Its answer goes to the
//! scaling bucket (`colony_scaling`), one record per role, which every server reads for
//! `GET /v1/scaling/{role}` (KEDA's metrics-api scaler then sizes the nodes' Deployment).
//!
//! The desired size is sticky: a step is taken as carried out (the engine's own assumption),
//! so it holds while KEDA starts or stops nodes, and a new leader starts from the record the
//! last one left. Each record carries its writer's term and is written by compare-and-set; a
//! leader that finds a record of a later term stops, so a deposed leader's late write never
//! replaces a newer one's.

use crate::{
    Cluster, Error, RoleStatus, Status,
    leadership::{self, Leadership, Term},
};
use async_nats::jetstream::{self, kv};
use colony_agents::spawner::Spawner;
use colony_core::scaling::{Decision, Scaler, ScalingOptions, Signals};
use serde::{Deserialize, Serialize};
use std::{collections::HashMap, time::Duration};
use tokio::{sync::watch, time::Instant};

/// The bucket of scaling records.
pub(crate) const SCALING_BUCKET: &str = "colony_scaling";
/// The office whose leader decides.
pub const OFFICE: &str = "scaling";

/// One role's scaling, as the leader last decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScalingRecord {
    /// The role, or `_` for tasks any agent may run.
    pub role: String,
    /// Nodes the role should have.
    pub desired: u32,
    /// Nodes serving it now (draining ones left out).
    pub nodes: u32,
    /// Attempts those nodes run at once for it.
    pub slots: u64,
    pub waiting: u64,
    pub running: u64,
    pub oldest_wait_ms: u64,
    pub arrivals_per_sec: f64,
    /// `scale`, `hold` or `blocked`.
    pub decision: String,
    /// Why it scaled, or what it wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What stopped a step it wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// The leader's term when it wrote this, and its name.
    pub term: u64,
    pub leader: String,
    pub at_ms: u64,
}

/// How the leader decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalingPlan {
    /// How often it looks.
    pub period: Duration,
    /// The engine's bounds and policies, in nodes.
    pub policy: ScalingOptions,
    /// The leadership lease.
    pub lease: Duration,
}

impl Default for ScalingPlan {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(5),
            policy: ScalingOptions::default(),
            lease: Duration::from_secs(5),
        }
    }
}

/// What the cluster shows of one role at one look.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoleView {
    pub nodes: u32,
    pub slots: u64,
    pub waiting: u64,
    pub running: u64,
    pub oldest_wait: Duration,
    /// The role consumer's deliveries so far (messages: a bundle is one).
    pub delivered: u64,
    /// Messages waiting (a bundle is one), of which `waiting` counts the tasks.
    pub waiting_messages: u64,
    /// Tasks a message of the role holds now (1 without bundles; `None` when the stream
    /// holds none of its): what turns messages arriving into tasks arriving.
    pub tasks_per_message: Option<f64>,
}

impl RoleView {
    /// The role's nodes and slots from the live, non-draining nodes; its load from its
    /// consumer.
    pub fn of(status: &Status, role: &RoleStatus, oldest_wait: Duration) -> Self {
        let mut view = RoleView {
            waiting: role.waiting,
            running: role.running,
            oldest_wait,
            delivered: role.delivered,
            waiting_messages: role.waiting_messages,
            tasks_per_message: role.tasks_per_message,
            ..RoleView::default()
        };
        for node in status.nodes.iter().filter(|n| !n.draining) {
            let slots = if role.role == "*" {
                node.by_role.values().map(|r| r.slots).sum()
            } else {
                match node.by_role.get(&role.role) {
                    Some(r) => r.slots,
                    None => continue,
                }
            };
            view.nodes += 1;
            view.slots += slots;
        }
        view
    }
}

/// One role's engine in one term.
#[derive(Debug)]
struct RolePlan {
    scaler: Scaler,
    desired: u32,
    /// When it last looked, and the messages counted then (waiting + delivered).
    last: Option<(Duration, u64)>,
    /// Tasks a message held when the stream last held any of the role's: bundles that
    /// arrive and drain between two looks are counted at it.
    per_message: f64,
}

/// The leader's decisions, sans IO: a term's engines, one per role.
#[derive(Debug)]
pub struct Planner {
    policy: ScalingOptions,
    term: u64,
    leader: String,
    roles: HashMap<String, RolePlan>,
}

impl Planner {
    pub fn new(policy: ScalingOptions, term: u64, leader: impl Into<String>) -> Self {
        Self {
            policy,
            term,
            leader: leader.into(),
            roles: HashMap::new(),
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// Decides `role` from `view` at `now` (this process's clock); `previous` is the record
    /// the last leader left, whose desired size a new term starts from.
    pub fn plan(
        &mut self,
        role: &str,
        view: RoleView,
        previous: Option<&ScalingRecord>,
        now: Duration,
        at_ms: u64,
    ) -> ScalingRecord {
        let policy = self.policy;
        let plan = self
            .roles
            .entry(role.to_owned())
            .or_insert_with(|| RolePlan {
                // Validated when the plan was made; the defaults otherwise.
                scaler: Scaler::new(policy)
                    .unwrap_or_else(|_| Scaler::new(ScalingOptions::default()).expect("defaults")),
                desired: previous.map_or(view.nodes, |p| p.desired),
                last: None,
                per_message: 1.0,
            });
        // Messages arrived, in tasks at what a message holds now, or held last (a message
        // holds one at least).
        if let Some(per_message) = view.tasks_per_message {
            plan.per_message = per_message.max(1.0);
        }
        let arrived = view.waiting_messages + view.delivered;
        let arrivals_per_sec = match plan.last {
            Some((then, before)) if now > then => {
                let messages = arrived.saturating_sub(before) as f64;
                messages * plan.per_message / (now - then).as_secs_f64()
            }
            _ => 0.0,
        };
        plan.last = Some((now, arrived));
        let per_node = if view.nodes > 0 {
            view.slots as f64 / f64::from(view.nodes)
        } else {
            1.0
        };
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let signals = Signals {
            size: plan.desired,
            busy: clamp(view.running),
            capacity: clamp((per_node * f64::from(plan.desired)).round() as u64),
            queued: clamp(view.waiting),
            oldest_wait: view.oldest_wait,
            arrivals_per_sec,
            ..Signals::default()
        };
        let decision = plan.scaler.decide(&signals, now);
        let (name, reason, blocked_by) = match decision {
            Decision::Scale { to, reason, .. } => {
                plan.desired = to;
                ("scale", Some(reason.as_str()), None)
            }
            Decision::Blocked { wanted, by } => {
                ("blocked", Some(wanted.as_str()), Some(by.as_str()))
            }
            Decision::Hold => ("hold", None, None),
        };
        ScalingRecord {
            role: role.to_owned(),
            desired: plan.desired,
            nodes: view.nodes,
            slots: view.slots,
            waiting: view.waiting,
            running: view.running,
            oldest_wait_ms: view.oldest_wait.as_millis() as u64,
            arrivals_per_sec,
            decision: name.into(),
            reason: reason.map(str::to_owned),
            blocked_by: blocked_by.map(str::to_owned),
            term: self.term,
            leader: self.leader.clone(),
            at_ms,
        }
    }
}

/// The scaling bucket, made on first use.
pub(crate) async fn bucket(cluster: &Cluster) -> Result<kv::Store, Error> {
    let config = kv::Config {
        bucket: SCALING_BUCKET.into(),
        description: "colony: each role's scaling, as the leader decided it".into(),
        history: 1,
        max_value_size: 16 * 1024,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cluster.settings.replicas,
        ..Default::default()
    };
    crate::client::bucket(&cluster.js, config).await
}

/// A role as a key of the scaling bucket: `*` (tasks any agent may run) is `_`.
fn key(role: &str) -> &str {
    if role == "*" { "_" } else { role }
}

/// A role's record, with its revision.
pub(crate) async fn read(
    bucket: &kv::Store,
    role: &str,
) -> Result<Option<(ScalingRecord, u64)>, Error> {
    let entry = bucket
        .entry(key(role))
        .await
        .map_err(|e| Error::nats(format!("reading the scaling of {role}"), e))?;
    Ok(entry.and_then(|entry| {
        (entry.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice(&entry.value).ok())
            .flatten()
            .map(|record| (record, entry.revision))
    }))
}

impl Cluster {
    /// A role's scaling as the leader last decided it (`*` or `_` for tasks any agent may
    /// run); `None` before any leader looked at it.
    pub async fn scaling(&self, role: &str) -> Result<Option<ScalingRecord>, Error> {
        if role != "*" && role != "_" {
            crate::settings::check_role(role)?;
        }
        let bucket = self.scaling.get_or_try_init(|| bucket(self)).await?;
        Ok(read(bucket, role).await?.map(|(record, _)| record))
    }
}

/// A campaign for the scaling office and, while it leads, the engine's loop.
#[derive(Debug)]
pub struct Scaling {
    leadership: Leadership,
    task: tokio::task::JoinHandle<Option<()>>,
}

impl Scaling {
    /// Campaigns as `name` and decides while it leads.
    pub async fn start(cluster: Cluster, name: &str, plan: ScalingPlan) -> Result<Self, Error> {
        plan.policy
            .validate()
            .map_err(|e| Error::Settings(e.to_string()))?;
        if plan.period < Duration::from_millis(100) || plan.period > Duration::from_secs(600) {
            return Err(Error::Settings(format!(
                "scaling period {:?}: allowed from 100ms to 10m",
                plan.period
            )));
        }
        let bucket = bucket(&cluster).await?;
        let leadership = leadership::campaign(&cluster, OFFICE, name, plan.lease).await?;
        let leader = leadership.holder().to_owned();
        let terms = leadership.watch();
        let task = Spawner::spawn(
            "cluster-scaling",
            decide(cluster, bucket, terms, leader, plan),
        );
        Ok(Self { leadership, task })
    }

    /// The term this process leads the scaling in, if it does.
    pub fn leading(&self) -> Option<u64> {
        self.leadership.term()
    }

    /// Its name in the lease.
    pub fn holder(&self) -> &str {
        self.leadership.holder()
    }

    /// A view of whether it leads, for a server's routes.
    pub fn observer(&self) -> leadership::Observer {
        self.leadership.observer()
    }

    /// Stops deciding and gives the office up.
    pub async fn resign(self) {
        self.task.abort();
        self.leadership.resign().await;
    }
}

fn current(terms: &watch::Receiver<Option<Term>>) -> Option<u64> {
    let held = *terms.borrow();
    held.filter(|t| Instant::now() < t.until).map(|t| t.term)
}

async fn decide(
    cluster: Cluster,
    bucket: kv::Store,
    terms: watch::Receiver<Option<Term>>,
    leader: String,
    plan: ScalingPlan,
) {
    let start = Instant::now();
    let mut planner: Option<Planner> = None;
    // When each role's last hold was marked, by this leader.
    let mut holds: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(plan.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The campaign ended (its leadership dropped or resigned): so does this loop.
        if terms.has_changed().is_err() {
            return;
        }
        let Some(term) = current(&terms) else {
            planner = None;
            continue;
        };
        let planner = match &mut planner {
            Some(p) if p.term() == term => p,
            slot => slot.insert(Planner::new(plan.policy, term, leader.clone())),
        };
        let status = match cluster.status().await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!("scaling: the cluster's status is unavailable: {e}");
                continue;
            }
        };
        for role in &status.roles {
            let oldest = oldest_wait(&cluster, role).await;
            let view = RoleView::of(&status, role, oldest);
            let previous = match read(&bucket, &role.role).await {
                Ok(previous) => previous,
                Err(e) => {
                    tracing::warn!("scaling: {e}");
                    break;
                }
            };
            if let Some((record, _)) = &previous
                && record.term > term
            {
                tracing::info!(
                    "scaling: a later leader ({}, term {}) decides now; this one (term {term}) stops",
                    record.leader,
                    record.term
                );
                break;
            }
            let record = planner.plan(
                &role.role,
                view,
                previous.as_ref().map(|(r, _)| r),
                start.elapsed(),
                crate::now_ms(),
            );
            if current(&terms) != Some(term) {
                break;
            }
            let value = serde_json::to_vec(&record).unwrap_or_default();
            let written = match previous {
                Some((_, revision)) => bucket
                    .update(key(&role.role), value.into(), revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => bucket
                    .create(key(&role.role), value.into())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => {
                    if record.decision == "scale" {
                        tracing::info!(
                            role = %record.role,
                            to = record.desired,
                            reason = record.reason.as_deref().unwrap_or(""),
                            "scaling decided"
                        );
                    }
                    let last_hold = holds.get(&role.role).copied();
                    let before = previous.as_ref().map(|(r, _)| r);
                    if let Some(step) = mark_of(before, &record, last_hold) {
                        if step.blocked_by.is_some() {
                            holds.insert(role.role.clone(), step.t);
                        }
                        // For the charts' marks; a chart without it loses a mark, no more.
                        // Apart from the loop: a roles' stream slow to answer holds no decision.
                        let cluster = cluster.clone();
                        colony_agents::spawner::Spawner::spawn("scaling-mark", async move {
                            if let Err(e) = cluster.publish_role_decision(&step, term).await {
                                tracing::debug!("scaling: the step was not marked: {e}");
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!("scaling: the record of {} was not written: {e}", role.role)
                }
            }
        }
    }
}

/// Least time between two marks of holds of one role: a role going between holding and
/// being held every look marks a hold a minute at most, so holds do not crowd the steps
/// and samples out of the roles' stream.
pub(crate) const HOLD_EVERY_MS: u64 = 60_000;

/// The mark on the roles chart that `record` makes, after `previous` (the record it
/// replaces): a step it took, from the size before; a step it wanted and was held from,
/// when it was not held from that same step, by the same, the look before (a leader held by
/// a cooldown for a minute would mark every look otherwise), and the role's last hold
/// marked (`last_hold`, its time) is [`HOLD_EVERY_MS`] old.
pub(crate) fn mark_of(
    previous: Option<&ScalingRecord>,
    record: &ScalingRecord,
    last_hold: Option<u64>,
) -> Option<crate::roles::RoleDecision> {
    let mark = |from: u32, blocked_by: Option<String>| crate::roles::RoleDecision {
        t: record.at_ms,
        role: record.role.clone(),
        from,
        to: record.desired,
        reason: record.reason.clone().unwrap_or_default(),
        blocked_by,
    };
    match record.decision.as_str() {
        "scale" => {
            let from = previous?.desired;
            (from != record.desired).then(|| mark(from, None))
        }
        "blocked" => {
            let same = previous.is_some_and(|p| {
                p.decision == "blocked"
                    && p.reason == record.reason
                    && p.blocked_by == record.blocked_by
            });
            let recent = last_hold.is_some_and(|t| record.at_ms < t.saturating_add(HOLD_EVERY_MS));
            (!same && !recent).then(|| mark(record.desired, record.blocked_by.clone()))
        }
        _ => None,
    }
}

/// How long the role's oldest waiting task has waited: of each priority with tasks waiting,
/// the first message after the last one its consumer delivered (of its plain tasks and of
/// its bundles), the oldest of them.
async fn oldest_wait(cluster: &Cluster, role: &RoleStatus) -> Duration {
    let token = if role.role == "*" {
        None
    } else {
        Some(role.role.as_str())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut oldest = Duration::ZERO;
    for &(priority, after) in &role.waiting_after {
        // Its plain tasks' subject and its bundles'.
        for subject in crate::settings::filters(&crate::settings::subject(token, priority)) {
            if let Ok(message) = cluster
                .stream
                .get_first_raw_message_by_subject(subject, after + 1)
                .await
            {
                let age = now - message.time.unix_timestamp_nanos();
                oldest = oldest.max(Duration::from_nanos(u64::try_from(age).unwrap_or(0)));
            }
        }
    }
    oldest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeInfo, membership::RoleSlots};

    fn node(name: &str, role: &str, slots: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            roles: vec![role.into()],
            agents: slots,
            by_role: [(
                role.to_owned(),
                RoleSlots {
                    agents: slots,
                    slots,
                },
            )]
            .into(),
            draining,
            ..NodeInfo::default()
        }
    }

    fn status(nodes: Vec<NodeInfo>, waiting: u64, running: u64) -> (Status, RoleStatus) {
        let role = RoleStatus {
            role: "worker".into(),
            waiting,
            running,
            delivered: 0,
            waiting_messages: waiting,
            tasks_per_message: Some(1.0),
            waiting_after: Vec::new(),
        };
        let status = Status {
            nodes,
            unfinished: waiting + running,
            roles: vec![role.clone()],
            replicas: 1,
            leader: None,
        };
        (status, role)
    }

    #[test]
    fn a_roles_view_counts_its_live_nodes_that_are_not_draining() {
        let (status, role) = status(
            vec![
                node("a", "worker", 4, false),
                node("b", "worker", 4, true),
                node("c", "other", 8, false),
            ],
            3,
            2,
        );
        let view = RoleView::of(&status, &role, Duration::ZERO);
        assert_eq!((view.nodes, view.slots), (1, 4));
        let any = RoleStatus {
            role: "*".into(),
            ..role
        };
        let view = RoleView::of(&status, &any, Duration::ZERO);
        assert_eq!((view.nodes, view.slots), (2, 12));
    }

    #[test]
    fn a_backlog_grows_the_role_and_the_size_holds_while_the_nodes_start() {
        let policy = ScalingOptions {
            min: 1,
            max: 20,
            ..ScalingOptions::default()
        };
        let mut planner = Planner::new(policy, 7, "serve-1");
        // Two nodes of 4 slots, all busy, 40 waiting for 6 s: emergency growth.
        let view = RoleView {
            nodes: 2,
            slots: 8,
            waiting: 40,
            running: 8,
            oldest_wait: Duration::from_secs(6),
            delivered: 100,
            waiting_messages: 40,
            tasks_per_message: Some(1.0),
        };
        let at = Duration::from_secs(100);
        let record = planner.plan("worker", view, None, at, 1);
        assert_eq!(record.decision, "scale");
        assert_eq!(record.reason.as_deref(), Some("overload"));
        // Busy 8 + waiting 40 at 80 % of 4 slots a node: 15 nodes, at most 3 × 2 = 6.
        assert_eq!(record.desired, 6);
        assert_eq!((record.term, record.leader.as_str()), (7, "serve-1"));
        // KEDA has not started them yet: the desired size holds (emergency's cooldown).
        let later = planner.plan("worker", view, None, at + Duration::from_secs(5), 2);
        assert_eq!(later.desired, 6);
        assert_eq!(later.decision, "blocked");
        assert_eq!(later.blocked_by.as_deref(), Some("cooldown"));
        // Arrivals: 45 more waiting or delivered in the 5 s since the last look.
        let arriving = RoleView {
            waiting: 50,
            waiting_messages: 50,
            delivered: 135,
            ..view
        };
        let third = planner.plan("worker", arriving, None, at + Duration::from_secs(10), 3);
        assert!((third.arrivals_per_sec - 9.0).abs() < 1e-9, "{third:?}");
        // Bundles of 8: 5 messages more in 5 s are 40 tasks, 8 a second.
        let bundled = RoleView {
            waiting: 400,
            waiting_messages: 50,
            delivered: 140,
            tasks_per_message: Some(8.0),
            ..view
        };
        let fourth = planner.plan("worker", bundled, None, at + Duration::from_secs(15), 4);
        assert!((fourth.arrivals_per_sec - 8.0).abs() < 1e-9, "{fourth:?}");
        assert_eq!(fourth.waiting, 400, "the backlog in tasks");
        // Bundles that came and went between two looks, the stream empty at the next:
        // counted at what a message held last, 10 messages in 5 s of 8 tasks.
        let drained = RoleView {
            waiting: 0,
            waiting_messages: 0,
            delivered: 200,
            tasks_per_message: None,
            ..view
        };
        let fifth = planner.plan("worker", drained, None, at + Duration::from_secs(20), 5);
        assert!((fifth.arrivals_per_sec - 16.0).abs() < 1e-9, "{fifth:?}");
    }

    #[test]
    fn a_new_term_starts_from_the_desired_size_the_last_leader_left() {
        let mut planner = Planner::new(ScalingOptions::default(), 9, "serve-2");
        let previous = ScalingRecord {
            role: "worker".into(),
            desired: 5,
            nodes: 3,
            slots: 12,
            waiting: 0,
            running: 6,
            oldest_wait_ms: 0,
            arrivals_per_sec: 1.0,
            decision: "scale".into(),
            reason: Some("high-utilisation".into()),
            blocked_by: None,
            term: 4,
            leader: "serve-1".into(),
            at_ms: 0,
        };
        // Nodes still starting (3 of 5), half busy: nothing to do but hold at 5.
        let view = RoleView {
            nodes: 3,
            slots: 12,
            waiting: 0,
            running: 10,
            oldest_wait: Duration::ZERO,
            delivered: 10,
            waiting_messages: 0,
            tasks_per_message: None,
        };
        let record = planner.plan("worker", view, Some(&previous), Duration::from_secs(1), 1);
        assert_eq!(record.desired, 5, "{record:?}");
        assert_eq!(record.decision, "hold");
        assert_eq!(record.term, 9);
    }

    #[test]
    fn a_step_held_back_is_marked_once_until_what_holds_it_changes() {
        let record = |decision: &str, desired: u32, reason: &str, by: Option<&str>| ScalingRecord {
            role: "worker".into(),
            desired,
            nodes: 2,
            slots: 8,
            waiting: 40,
            running: 8,
            oldest_wait_ms: 0,
            arrivals_per_sec: 0.0,
            decision: decision.into(),
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            blocked_by: by.map(str::to_owned),
            term: 1,
            leader: "s".into(),
            at_ms: 7,
        };
        let scaled = record("scale", 6, "overload", None);
        let held = record("blocked", 6, "overload", Some("cooldown"));
        // A step taken: from the size before.
        let step = mark_of(Some(&record("hold", 2, "", None)), &scaled, None).unwrap();
        assert_eq!((step.from, step.to, step.blocked_by), (2, 6, None));
        assert_eq!(mark_of(None, &scaled, None), None, "no size before it");
        // Held: marked once, at the size held, saying by what.
        let mark = mark_of(Some(&scaled), &held, None).unwrap();
        assert_eq!((mark.from, mark.to), (6, 6));
        assert_eq!(
            (mark.reason.as_str(), mark.blocked_by.as_deref()),
            ("overload", Some("cooldown"))
        );
        assert_eq!(
            mark_of(Some(&held), &held, None),
            None,
            "the same hold again"
        );
        // Held by something else, or for another step: marked again.
        let by_max = record("blocked", 6, "overload", Some("at-max"));
        assert!(mark_of(Some(&held), &by_max, None).is_some());
        let other = record("blocked", 6, "high-utilisation", Some("cooldown"));
        assert!(mark_of(Some(&held), &other, None).is_some());
        assert_eq!(
            mark_of(Some(&held), &record("hold", 6, "", None), None),
            None
        );
        // A hold a minute after the role's last one marked at most: going between holding
        // and being held every look does not mark every other look.
        let after_a_hold = record("hold", 6, "", None);
        assert_eq!(mark_of(Some(&after_a_hold), &held, Some(7 - 1)), None);
        let held_later = ScalingRecord {
            at_ms: 7 + HOLD_EVERY_MS,
            ..held.clone()
        };
        assert!(mark_of(Some(&after_a_hold), &held_later, Some(7)).is_some());
    }

    #[test]
    fn work_for_a_role_with_no_nodes_activates_it() {
        let mut planner = Planner::new(ScalingOptions::default(), 1, "s");
        let view = RoleView {
            waiting: 3,
            ..RoleView::default()
        };
        let record = planner.plan("worker", view, None, Duration::from_secs(1), 1);
        assert_eq!((record.decision.as_str(), record.desired), ("scale", 1));
        assert_eq!(record.reason.as_deref(), Some("activation"));
    }
}
