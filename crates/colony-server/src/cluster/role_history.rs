//! Each role's size and backlog over time, on `colony serve --nats`: every 2 s a sampler
//! reads the cluster's status (the live nodes' heartbeats and each role's consumers) into a
//! ring: per role, the agents of the live nodes serving it, those nodes, its tasks waiting
//! and running. `GET /v1/roles/history?since=` serves it, for the dashboard's roles chart.
//!
//! ```text
//! GET /v1/roles/history             the whole window: 15 minutes, one sample every 2 s
//! GET /v1/roles/history?since=T     what was sampled after T, the `until` of a former answer
//! ```
//!
//! Memory is bounded: [`SAMPLES`] samples of at most [`MAX_ROLES`] roles (by name, the
//! first ones). Times are milliseconds since the Unix epoch, read once at start and moved on
//! by a monotonic clock, each later than the one before, so that `since` is an exact cursor.
//! A sample the cluster could not give (NATS out of reach) is skipped, leaving a gap.

use crate::{
    problem,
    ring::{Clock, Ring},
};
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_cluster::{NodeInfo, Status};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

/// Time between two samples: the dashboard's own refresh.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 15 minutes at one every 2 s.
pub(crate) const SAMPLES: usize = 450;
/// Roles sampled, the first by name. A role costs 48 bytes a sample (its shared name and
/// four counts), so the ring holds at most 450 × 64 × 48 bytes, about 1.4 MB, and the names.
pub(crate) const MAX_ROLES: usize = 64;

/// One role at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    agents: u64,
    nodes: u64,
    waiting: u64,
    running: u64,
}

/// Every sampled role at one time, by name.
type Roles = Box<[(Arc<str>, Sample)]>;

/// The samples, and the clock that stamps them.
#[derive(Debug)]
struct Ticks {
    clock: Clock,
    ring: Ring<Roles>,
}

/// The roles' recent past, shared by the sampler and the readers.
#[derive(Debug)]
pub(crate) struct RoleHistory {
    ticks: Mutex<Ticks>,
}

impl Default for RoleHistory {
    fn default() -> Self {
        Self::new(SAMPLES)
    }
}

/// Samples the cluster's status (as the server shares it) into `app`'s history every
/// [`EVERY`], until the server is dropped.
pub(crate) fn sample_every(app: Weak<super::ClusterApp>) {
    colony_runtime::spawner::Spawner::spawn("cluster-role-history", async move {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(app) = app.upgrade() else {
                return;
            };
            // Bounded: `status` gives up after its own wait.
            match app.status().await {
                Ok(status) => app.roles.sample_status(&status),
                Err(e) => tracing::debug!("the roles' history skipped a sample: {e}"),
            }
        }
    });
}

impl RoleHistory {
    fn new(samples: usize) -> Self {
        Self {
            ticks: Mutex::new(Ticks {
                clock: Clock::new(),
                ring: Ring::new(samples),
            }),
        }
    }

    fn ticks(&self) -> std::sync::MutexGuard<'_, Ticks> {
        // Nothing under the lock leaves the ring half changed: a poisoned lock is as good.
        self.ticks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sample_status(&self, status: &Status) {
        let backlog: Vec<(&str, u64, u64)> = status
            .roles
            .iter()
            .map(|r| (r.role.as_str(), r.waiting, r.running))
            .collect();
        self.sample(&status.nodes, &backlog);
    }

    /// Takes in one reading of the cluster: each role of a live node (draining ones too:
    /// their agents are still there) or of the stream (`backlog`: each role's tasks waiting
    /// and running; `*` for tasks any agent may run, which every agent serves).
    fn sample(&self, nodes: &[NodeInfo], backlog: &[(&str, u64, u64)]) {
        let mut roles: BTreeMap<&str, Sample> = BTreeMap::new();
        for node in nodes {
            for (role, slots) in &node.by_role {
                let s = roles.entry(role.as_str()).or_default();
                s.agents += slots.agents;
                s.nodes += 1;
            }
        }
        if backlog.iter().any(|(role, ..)| *role == "*") {
            let s = roles.entry("*").or_default();
            s.agents = nodes.iter().map(|n| n.agents).sum();
            s.nodes = nodes.len() as u64;
        }
        for &(role, waiting, running) in backlog {
            let s = roles.entry(role).or_default();
            s.waiting = waiting;
            s.running = running;
        }
        let mut ticks = self.ticks();
        // A name the last sample had is shared, not copied again.
        let named = |name: &str| -> Arc<str> {
            ticks
                .ring
                .newest()
                .and_then(|roles| roles.iter().find(|(n, _)| &**n == name))
                .map_or_else(|| name.into(), |(n, _)| n.clone())
        };
        let roles: Roles = roles
            .into_iter()
            .take(MAX_ROLES)
            .map(|(name, sample)| (named(name), sample))
            .collect();
        let t = ticks.clock.stamp();
        ticks.ring.push(t, roles);
    }

    /// What was sampled after `since` (everything kept, without it), as a column per role
    /// that any of those samples has, by name (the first [`MAX_ROLES`] of them); `null`
    /// where a sample lacks the role.
    fn read(&self, since: Option<u64>) -> Columns {
        let since = since.unwrap_or(0);
        let kept = self.ticks();
        let ticks = kept.ring.after(since);
        let mut names: Vec<Arc<str>> = ticks
            .clone()
            .flat_map(|(_, roles)| roles.iter().map(|(name, _)| name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names.truncate(MAX_ROLES);
        let rows = ticks.len();
        let mut columns = Columns {
            every_ms: u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX),
            samples_kept: kept.ring.cap(),
            until: kept.clock.last(),
            t: Vec::with_capacity(rows),
            roles: names
                .into_iter()
                .map(|role| RoleColumns::with_capacity(role, rows))
                .collect(),
        };
        for (t, roles) in ticks {
            columns.t.push(*t);
            for role in &mut columns.roles {
                let sample = roles
                    .binary_search_by(|(name, _)| name.cmp(&role.role))
                    .ok()
                    .map(|i| roles[i].1);
                role.push(sample);
            }
        }
        columns
    }
}

/// One role's samples, each column aligned with [`Columns::t`].
#[derive(Debug, Serialize)]
struct RoleColumns {
    role: Arc<str>,
    agents: Vec<Option<u64>>,
    nodes: Vec<Option<u64>>,
    waiting: Vec<Option<u64>>,
    running: Vec<Option<u64>>,
}

impl RoleColumns {
    fn with_capacity(role: Arc<str>, rows: usize) -> Self {
        Self {
            role,
            agents: Vec::with_capacity(rows),
            nodes: Vec::with_capacity(rows),
            waiting: Vec::with_capacity(rows),
            running: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, sample: Option<Sample>) {
        self.agents.push(sample.map(|s| s.agents));
        self.nodes.push(sample.map(|s| s.nodes));
        self.waiting.push(sample.map(|s| s.waiting));
        self.running.push(sample.map(|s| s.running));
    }
}

/// The answer of `GET /v1/roles/history`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Columns {
    every_ms: u64,
    samples_kept: usize,
    /// The time of the newest sample: ask with `since` set to it for what comes next.
    until: u64,
    t: Vec<u64>,
    roles: Vec<RoleColumns>,
}

/// `GET /v1/roles/history?since=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Milliseconds since the Unix epoch: only what was sampled after it.
    since: Option<u64>,
}

pub(crate) async fn history(
    State(app): State<Arc<super::ClusterApp>>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => Json(app.roles.read(q.since)).into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, "bad-query", e.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_cluster::RoleSlots;

    fn node(name: &str, roles: &[(&str, u64)]) -> NodeInfo {
        let mut info = NodeInfo {
            name: name.into(),
            ..NodeInfo::default()
        };
        for &(role, agents) in roles {
            info.roles.push(role.into());
            info.agents += agents;
            info.by_role.insert(
                role.into(),
                RoleSlots {
                    agents,
                    slots: agents,
                },
            );
        }
        info
    }

    #[test]
    fn roles_are_summed_over_nodes_and_a_role_gone_reads_as_null() {
        let history = RoleHistory::new(3);
        history.sample(
            &[
                node("a", &[("gpu", 2), ("cpu", 8)]),
                node("b", &[("cpu", 4)]),
            ],
            &[("cpu", 10, 12), ("*", 1, 0)],
        );
        history.sample(&[node("b", &[("cpu", 4)])], &[("cpu", 3, 4)]);
        let all = history.read(None);
        assert_eq!(all.t.len(), 2);
        assert!(all.t[0] < all.t[1] && all.until == all.t[1]);
        let names: Vec<&str> = all.roles.iter().map(|r| &*r.role).collect();
        assert_eq!(names, ["*", "cpu", "gpu"]);
        let (any, cpu, gpu) = (&all.roles[0], &all.roles[1], &all.roles[2]);
        assert_eq!(any.agents, [Some(14), None]);
        assert_eq!(any.nodes, [Some(2), None]);
        assert_eq!(cpu.agents, [Some(12), Some(4)]);
        assert_eq!(cpu.nodes, [Some(2), Some(1)]);
        assert_eq!(cpu.waiting, [Some(10), Some(3)]);
        assert_eq!(cpu.running, [Some(12), Some(4)]);
        assert_eq!(gpu.agents, [Some(2), None]);
        assert_eq!(gpu.waiting, [Some(0), None]);

        // After the first: only the second, and only the roles it has.
        let next = history.read(Some(all.t[0]));
        assert_eq!(next.t, [all.t[1]]);
        let names: Vec<&str> = next.roles.iter().map(|r| &*r.role).collect();
        assert_eq!(names, ["cpu"]);
        assert!(history.read(Some(all.until)).t.is_empty());

        // The oldest goes first once the ring is full.
        history.sample(&[], &[]);
        history.sample(&[], &[]);
        let kept = history.read(None);
        assert_eq!(kept.t.len(), 3);
        assert_eq!(kept.t[0], all.t[1]);
        assert_eq!(kept.samples_kept, 3);
    }

    #[test]
    fn at_most_max_roles_are_kept_a_sample() {
        let history = RoleHistory::new(2);
        let names: Vec<String> = (0..MAX_ROLES + 5).map(|i| format!("r{i:03}")).collect();
        let backlog: Vec<(&str, u64, u64)> = names.iter().map(|r| (r.as_str(), 1, 0)).collect();
        history.sample(&[], &backlog);
        assert_eq!(history.ticks().ring.newest().unwrap().len(), MAX_ROLES);
        let read = history.read(None);
        assert_eq!(read.roles.len(), MAX_ROLES);
        assert_eq!(&*read.roles[0].role, "r000");
    }
}
