//! Each role's size and backlog over time, on `colony serve --nats`: every 2 s each server
//! reads the cluster's status (the live nodes' heartbeats and each role's consumers) and
//! appends the sample to the cluster's stream of samples under its slot of time, where the
//! first server's sample of a slot is kept (`colony_cluster::roles`); each server reads that
//! stream (its last 15 minutes, then each sample as it comes) into a ring, per role: the
//! agents of the live nodes serving it, those nodes, its tasks waiting and running.
//! `GET /v1/roles/history?since=` serves it, for the dashboard's roles chart and `colony
//! top`: every server answers the same samples under the same times, and one started anew
//! answers the past too. The scaling leader's steps on a role's size, appended to the same
//! stream, are kept beside the samples and answered as `events`, for the chart's marks.
//!
//! ```text
//! GET /v1/roles/history             the whole window: 15 minutes, one sample every 2 s
//! GET /v1/roles/history?since=T     what was sampled after T, the `until` of a former answer
//! ```
//!
//! Memory is bounded: [`SAMPLES`] samples of at most [`MAX_ROLES`] roles (by name, the
//! first ones). A sample's time is its slot (milliseconds since the Unix epoch, a multiple
//! of 2 s); a sample no later than the last one taken (a server whose clock is behind) is
//! left out, so that `since` is an exact cursor. A slot no server could sample (NATS out of
//! reach) is a gap.

use crate::{problem, ring::Ring};
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_cluster::roles::{EVERY, MAX_ROLES, RoleDecision, RoleEvent, RoleSample, slot};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

/// Samples kept: 15 minutes at one every 2 s.
pub(crate) const SAMPLES: usize = 450;

/// One role at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    agents: u64,
    nodes: u64,
    waiting: u64,
    running: u64,
}

/// Every sampled role at one time, sorted by name. A role costs 48 bytes a sample (its
/// shared name and four counts), so the ring holds at most 450 × 64 × 48 bytes, about 1.4
/// MB, and the names.
type Roles = Box<[(Arc<str>, Sample)]>;

/// Most of the scaling leader's steps kept: it looks every 5 s by default, so fifteen
/// minutes of steps on 64 roles at most.
pub(crate) const MARKS: usize = 2_048;

/// A step the scaling leader decided on a role's size, as the API spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Mark {
    t: u64,
    role: Arc<str>,
    /// `scale:up`, `scale:down` or `scale:blocked`, as a runtime's pools history names its
    /// autoscaler's.
    kind: &'static str,
    from: u32,
    to: u32,
    /// Why it scaled; for a step held back, the step it wanted.
    reason: String,
    /// What held a step back.
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<String>,
}

/// The samples, the time of the newest, and the scaling leader's steps among them, each
/// kept under the time it is told at: its own time, or just after the newest sample (and
/// the step before) when it came after them, so that a step that reached the stream late
/// (a leader's clock behind a sampler's) is still told, once, with the next sample.
#[derive(Debug)]
struct Ticks {
    last: u64,
    ring: Ring<Roles>,
    marks: Ring<Mark>,
}

/// The roles' recent past, shared by the stream's reader and the handlers.
#[derive(Debug)]
pub(crate) struct RoleHistory {
    ticks: Mutex<Ticks>,
}

impl Default for RoleHistory {
    fn default() -> Self {
        Self::new(SAMPLES)
    }
}

/// Every [`EVERY`], in the middle of each slot (so that each tick falls in a slot of its
/// own), until the server is dropped: samples the cluster's status (as the server shares it)
/// and appends the sample to the cluster's stream of them. A sample the stream does not take
/// (NATS away, or no right to its stream) is taken into this server's own history, so that
/// its chart goes on; said once when appending starts failing, and once when it works again.
pub(crate) fn sample_every(app: Weak<super::ClusterApp>) {
    colony_runtime::spawner::Spawner::spawn("cluster-role-sampler", async move {
        let mut failing = false;
        let mut sampled = None;
        loop {
            // Asleep until the middle of the next slot, by the system clock each time: a
            // slow turn (an append waiting out its ack) or a step of the clock does not move
            // the sampling off the middle for good.
            tokio::time::sleep(Duration::from_millis(to_middle(super::now_ms()))).await;
            let t = slot(super::now_ms());
            if sampled.replace(t) == Some(t) {
                continue;
            }
            let Some(app) = app.upgrade() else {
                return;
            };
            // Bounded: `status` gives up after its own wait, and an append after its ack's.
            let sample = match app.status().await {
                Ok(status) => RoleSample::of(t, &status),
                Err(e) => {
                    tracing::debug!("the roles' history skipped a sample: {e}");
                    continue;
                }
            };
            match app.cluster.publish_roles(&sample).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the roles' samples are appended to the cluster again");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(
                            "the roles' sample was not appended to the cluster ({e}): this server's chart keeps its own samples until it is"
                        );
                    }
                    app.roles.take(sample, super::now_ms());
                }
            }
        }
    });
}

/// The cluster's samples after `last`; `None` once the server is dropped. Asked again every
/// second while they cannot be read.
async fn samples(
    app: &Weak<super::ClusterApp>,
    last: Option<u64>,
) -> Option<colony_cluster::roles::Samples> {
    loop {
        let cluster = app.upgrade()?.cluster.clone();
        match cluster.role_samples(last).await {
            Ok(samples) => return Some(samples),
            Err(e) => tracing::debug!("the roles' samples cannot be read: {e}"),
        }
        drop(cluster);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Milliseconds from `now_ms` to the middle of the next slot, later than `now_ms`.
fn to_middle(now_ms: u64) -> u64 {
    let every_ms = u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX);
    let mut middle = slot(now_ms) + every_ms / 2;
    if middle <= now_ms {
        middle += every_ms;
    }
    middle - now_ms
}

/// Reads the cluster's stream of samples into `app`'s history until the server is dropped:
/// what it keeps, then each sample as it is appended; made again after the last sample read
/// when it fails.
pub(crate) fn follow(app: Weak<super::ClusterApp>) {
    colony_runtime::spawner::Spawner::spawn("cluster-role-history", async move {
        let mut last = None;
        loop {
            let Some(mut samples) = samples(&app, last).await else {
                return;
            };
            loop {
                // While none comes, the server is looked at every few seconds: one dropped
                // ends this.
                let next = tokio::time::timeout(4 * EVERY, samples.next()).await;
                let Some(app) = app.upgrade() else {
                    return;
                };
                match next {
                    Ok(Some(Ok((seq, event)))) => {
                        last = Some(seq);
                        match event {
                            RoleEvent::Sample(sample) => app.roles.take(sample, super::now_ms()),
                            RoleEvent::Decision(step) => app.roles.mark(step, super::now_ms()),
                        }
                    }
                    Err(_) => {}
                    Ok(Some(Err(e))) => {
                        tracing::debug!("the roles' samples: {e}; read again");
                        break;
                    }
                    Ok(None) => break,
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

impl RoleHistory {
    fn new(samples: usize) -> Self {
        Self {
            ticks: Mutex::new(Ticks {
                last: 0,
                ring: Ring::new(samples),
                marks: Ring::new(MARKS),
            }),
        }
    }

    fn ticks(&self) -> std::sync::MutexGuard<'_, Ticks> {
        // Nothing under the lock leaves the ring half changed: a poisoned lock is as good.
        self.ticks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one sample, read at `now_ms`, unless it is no later than the last one
    /// taken, or is not a slot's, or is from the future (a server whose clock is ahead would
    /// otherwise hold every other sample out until real time caught up). Its roles are kept
    /// by name, the first [`MAX_ROLES`] of them (a sample is the cluster's, read from NATS:
    /// not trusted to be sorted or bounded).
    fn take(&self, sample: RoleSample, now_ms: u64) {
        let every_ms = u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX);
        if !sample.t.is_multiple_of(every_ms) || sample.t > now_ms.saturating_add(every_ms) {
            return;
        }
        let mut ticks = self.ticks();
        if sample.t <= ticks.last {
            return;
        }
        let mut counts: Vec<(String, Sample)> = sample
            .roles
            .into_iter()
            .filter(|c| colony_cluster::check_role(&c.role).is_ok() || c.role == "*")
            .map(|c| {
                let s = Sample {
                    agents: c.agents,
                    nodes: c.nodes,
                    waiting: c.waiting,
                    running: c.running,
                };
                (c.role, s)
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts.dedup_by(|a, b| a.0 == b.0);
        counts.truncate(MAX_ROLES);
        // A name the last sample had is shared, not copied again.
        let named = |name: &str| -> Arc<str> {
            ticks
                .ring
                .newest()
                .and_then(|roles| roles.iter().find(|(n, _)| &**n == name))
                .map_or_else(|| name.into(), |(n, _)| n.clone())
        };
        let roles: Roles = counts
            .iter()
            .map(|(name, sample)| (named(name), *sample))
            .collect();
        ticks.last = sample.t;
        ticks.ring.push(sample.t, roles);
        // Steps older than the oldest sample are off the chart.
        let oldest = ticks.ring.oldest_time().unwrap_or(0);
        ticks.marks.drop_before(oldest);
    }

    /// Notes a step of the scaling leader, read at `now_ms`, unless it is from the future
    /// (a leader whose clock is ahead) or names no role a sample can have.
    fn mark(&self, step: RoleDecision, now_ms: u64) {
        let every_ms = u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX);
        if step.t > now_ms.saturating_add(every_ms)
            || (step.role != "*" && colony_cluster::check_role(&step.role).is_err())
        {
            return;
        }
        let mut ticks = self.ticks();
        let told = step
            .t
            .max(ticks.last + 1)
            .max(ticks.marks.newest_time().map_or(0, |t| t + 1));
        let mark = Mark {
            t: step.t,
            role: step.role.into(),
            kind: match (&step.blocked_by, step.to > step.from) {
                (Some(_), _) => "scale:blocked",
                (None, true) => "scale:up",
                (None, false) => "scale:down",
            },
            from: step.from,
            to: step.to,
            reason: colony_core::text::shorten(&step.reason, 200),
            by: step
                .blocked_by
                .as_deref()
                .map(|by| colony_core::text::shorten(by, 200)),
        };
        ticks.marks.push(told, mark);
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
            // Never behind the reader's cursor: a server whose ring lags (started just now,
            // or reading again) must not make a reader of another start over.
            until: kept.last.max(since),
            t: Vec::with_capacity(rows),
            roles: names
                .into_iter()
                .map(|role| RoleColumns::with_capacity(role, rows))
                .collect(),
            events: Vec::new(),
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
        // Up to the newest sample: a step after it is told with the sample that passes it,
        // so that `since` stays one cursor over both (a step is kept under the time it is
        // told at: see `Ticks`).
        columns.events = kept
            .marks
            .after(since)
            .filter(|(t, _)| *t <= kept.last)
            .map(|(_, mark)| mark.clone())
            .collect();
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
    /// The scaling leader's steps after `since`, up to `until`, oldest first.
    events: Vec<Mark>,
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
    use colony_cluster::roles::RoleCount;

    impl RoleHistory {
        /// Takes `sample` as if read a slot after its time.
        fn take_now(&self, sample: RoleSample) {
            let now = sample.t + 2_000;
            self.take(sample, now);
        }
    }

    fn sample(t: u64, roles: &[(&str, u64, u64)]) -> RoleSample {
        RoleSample {
            t,
            roles: roles
                .iter()
                .map(|&(role, agents, waiting)| RoleCount {
                    role: role.into(),
                    agents,
                    nodes: 1,
                    waiting,
                    running: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn samples_come_in_order_and_a_role_gone_reads_as_null() {
        let history = RoleHistory::new(3);
        history.take_now(sample(2_000, &[("gpu", 2, 0), ("cpu", 12, 10)]));
        history.take_now(sample(4_000, &[("cpu", 4, 3)]));
        // No later than the last: another server's, whose clock is behind.
        history.take_now(sample(4_000, &[("cpu", 99, 99)]));
        history.take_now(sample(1_000, &[("cpu", 99, 99)]));
        let all = history.read(None);
        assert_eq!(all.t, [2_000, 4_000]);
        assert_eq!(all.until, 4_000);
        let names: Vec<&str> = all.roles.iter().map(|r| &*r.role).collect();
        assert_eq!(
            names,
            ["cpu", "gpu"],
            "by name, whatever the sample's order"
        );
        let (cpu, gpu) = (&all.roles[0], &all.roles[1]);
        assert_eq!(cpu.agents, [Some(12), Some(4)]);
        assert_eq!(cpu.waiting, [Some(10), Some(3)]);
        assert_eq!(gpu.agents, [Some(2), None]);
        assert_eq!(gpu.nodes, [Some(1), None]);

        // After the first: only the second, and only the roles it has.
        let next = history.read(Some(2_000));
        assert_eq!(next.t, [4_000]);
        let names: Vec<&str> = next.roles.iter().map(|r| &*r.role).collect();
        assert_eq!(names, ["cpu"]);
        assert!(history.read(Some(all.until)).t.is_empty());
        // A reader's cursor ahead of this server's samples (it read another's, which is
        // ahead) is kept, not moved back.
        assert_eq!(history.read(Some(6_000)).until, 6_000);

        // From the future (a clock ahead), or not a slot's: left out.
        history.take(sample(10_000, &[("cpu", 1, 1)]), 5_000);
        history.take(sample(5_001, &[("cpu", 1, 1)]), 9_000);
        assert_eq!(history.read(None).t, [2_000, 4_000]);
        history.take(sample(6_000, &[("cpu", 1, 1)]), 5_000);
        assert_eq!(history.read(None).until, 6_000, "within a slot of now");

        // The oldest goes first once the ring is full.
        history.take_now(sample(8_000, &[]));
        history.take_now(sample(10_000, &[]));
        let kept = history.read(None);
        assert_eq!(kept.t, [6_000, 8_000, 10_000]);
        assert_eq!(kept.samples_kept, 3);
    }

    fn step(t: u64, role: &str, from: u32, to: u32) -> RoleDecision {
        RoleDecision {
            t,
            role: role.into(),
            from,
            to,
            reason: "backlog".into(),
            blocked_by: None,
        }
    }

    #[test]
    fn the_leaders_steps_are_told_with_the_sample_that_passes_them() {
        let history = RoleHistory::new(3);
        history.take_now(sample(2_000, &[("cpu", 4, 40)]));
        history.mark(step(2_500, "cpu", 1, 2), 2_600);
        // Newer than the newest sample: not told yet.
        let first = history.read(None);
        assert!(first.events.is_empty(), "{first:?}");
        history.take_now(sample(4_000, &[("cpu", 8, 20)]));
        let next = history.read(Some(first.until));
        assert_eq!(next.events.len(), 1, "{next:?}");
        let told = serde_json::to_value(&next.events[0]).unwrap();
        assert_eq!(
            told,
            serde_json::json!({"t": 2_500, "role": "cpu", "kind": "scale:up", "from": 1, "to": 2, "reason": "backlog"})
        );
        // Told once: not again after the cursor passed it.
        assert!(history.read(Some(next.until)).events.is_empty());
        assert_eq!(
            history.read(None).events.len(),
            1,
            "kept while its samples are"
        );
        // From the future, or of no role a sample can have: left out.
        history.mark(step(60_000, "cpu", 2, 1), 4_100);
        history.mark(step(3_000, "a.b", 2, 1), 4_100);
        assert_eq!(history.read(None).events.len(), 1);
        // A step that reached the stream after the sample that passes it (a leader's clock
        // behind a sampler's) is told with the next sample, once, with its own time.
        let cursor = history.read(None).until;
        history.mark(step(3_500, "cpu", 2, 1), 4_100);
        history.mark(step(2_400, "cpu", 1, 3), 4_100);
        assert!(history.read(Some(cursor)).events.is_empty(), "not yet");
        history.take_now(sample(6_000, &[("cpu", 4, 0)]));
        let late = history.read(Some(cursor));
        let told: Vec<(u64, &str)> = late.events.iter().map(|m| (m.t, m.kind)).collect();
        assert_eq!(told, [(3_500, "scale:down"), (2_400, "scale:up")]);
        assert!(
            history.read(Some(late.until)).events.is_empty(),
            "told once"
        );
        // A step held back is told as one, saying by what.
        let cursor = history.read(None).until;
        let held = RoleDecision {
            blocked_by: Some("cooldown".into()),
            ..step(5_500, "cpu", 3, 3)
        };
        history.mark(held, 6_000);
        history.take_now(sample(8_000, &[("cpu", 4, 0)]));
        let told = serde_json::to_value(&history.read(Some(cursor)).events[0]).unwrap();
        assert_eq!(
            told,
            serde_json::json!({"t": 5_500, "role": "cpu", "kind": "scale:blocked", "from": 3, "to": 3, "reason": "backlog", "by": "cooldown"})
        );
        // Steps told before the oldest sample kept go with it.
        history.take_now(sample(8_000, &[]));
        history.take_now(sample(10_000, &[]));
        history.take_now(sample(12_000, &[]));
        assert!(history.read(None).events.is_empty());
    }

    #[test]
    fn samples_are_taken_in_the_middle_of_the_next_slot() {
        assert_eq!(to_middle(4_000), 1_000);
        assert_eq!(to_middle(4_999), 1);
        assert_eq!(to_middle(5_000), 2_000, "later than now: the next slot's");
        assert_eq!(to_middle(5_001), 1_999);
        assert_eq!(to_middle(5_999), 1_001);
    }

    #[test]
    fn a_sample_from_nats_is_cut_to_max_roles_sorted_and_without_repeats() {
        let history = RoleHistory::new(2);
        let names: Vec<String> = (0..MAX_ROLES + 5)
            .rev()
            .map(|i| format!("r{i:03}"))
            .collect();
        let mut roles: Vec<(&str, u64, u64)> = names.iter().map(|r| (r.as_str(), 1, 0)).collect();
        roles.push(("r000", 7, 7));
        history.take_now(sample(2_000, &roles));
        assert_eq!(history.ticks().ring.newest().unwrap().len(), MAX_ROLES);
        let read = history.read(None);
        assert_eq!(read.roles.len(), MAX_ROLES);
        assert_eq!(&*read.roles[0].role, "r000");
        assert_eq!(&*read.roles[1].role, "r001");
    }
}
