//! Each role's size and backlog over time, kept in the cluster rather than in one control
//! plane's memory: every `colony serve --nats` samples the cluster's status every
//! [`EVERY`] and appends the sample to the stream `COLONY_ROLES` under its slot of time
//! (the sample's `t`, a multiple of [`EVERY`]; `Nats-Msg-Id: roles-<t>`), so that of the
//! servers sampling one slot the stream keeps the first; and every server reads the stream
//! (what it keeps, [`KEEP`], then each sample as it comes) for its charts. All servers
//! answer the same samples, and one started anew answers the past as well. The scaling
//! leader appends each step it decides on a role's size ([`RoleDecision`]) beside them, for
//! the charts' marks.

use crate::{Cluster, Error, NodeInfo, Status};
use async_nats::jetstream::{consumer, stream};
use futures::{StreamExt, stream::BoxStream};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// The stream of samples.
pub(crate) const ROLES_STREAM: &str = "COLONY_ROLES";
/// The samples' subject.
const SUBJECT: &str = "colony.roles";
/// The scaling leader's decisions' subject.
const DECISIONS: &str = "colony.roles.decision";
/// The steps it was held from: a subject of their own, which a server from before them does
/// not read as a step (it would show a hold as a step down to the same size).
const HOLDS: &str = "colony.roles.held";
/// Time between two samples: the dashboard's own refresh.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a sample is kept: the charts' fifteen minutes, and one more.
pub const KEEP: Duration = Duration::from_secs(16 * 60);
/// Roles in one sample, the first by name.
pub const MAX_ROLES: usize = 64;
/// Room in the stream for the scaling leader's steps, beside the samples.
const MAX_STEPS: u64 = 2_048;
/// The most a sample's message may take: 64 roles of names up to 64 bytes and four counts.
const MAX_SAMPLE: usize = 64 * 1024;

/// One role at one sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleCount {
    pub role: String,
    /// Agents of the live nodes serving it (`*`: every agent).
    pub agents: u64,
    /// Live nodes serving it.
    pub nodes: u64,
    /// Its tasks waiting in the stream, and delivered and not yet acknowledged.
    pub waiting: u64,
    pub running: u64,
}

/// Every sampled role at one time, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSample {
    /// The sample's slot: milliseconds since the Unix epoch, a multiple of [`EVERY`].
    pub t: u64,
    pub roles: Vec<RoleCount>,
}

/// A step the scaling leader decided on a role's size, in nodes, or one it wanted and was
/// held from (`blocked_by`: then `from` and `to` are the size it holds, and `reason` what it
/// wanted; appended on a subject of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDecision {
    /// When it was decided: milliseconds since the Unix epoch, the leader's clock.
    pub t: u64,
    pub role: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// What held the step it wanted (`cooldown`, `at-max`, ...), for a step it did not
    /// take. Absent from a step taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
}

/// What the roles' stream holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleEvent {
    Sample(RoleSample),
    Decision(RoleDecision),
}

/// The slot of time `ms` (since the Unix epoch) falls in.
pub fn slot(ms: u64) -> u64 {
    let every = u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX);
    ms / every * every
}

impl RoleSample {
    /// The sample of the cluster's `status` for slot `t`.
    pub fn of(t: u64, status: &Status) -> Self {
        let backlog: Vec<(&str, u64, u64)> = status
            .roles
            .iter()
            .map(|r| (r.role.as_str(), r.waiting, r.running))
            .collect();
        Self::from_parts(t, &status.nodes, &backlog)
    }

    /// Each role of a live node (draining ones too: their agents are still there) or of the
    /// stream (`backlog`: each role's tasks waiting and running; `*` for tasks any agent may
    /// run, which every agent serves), summed over the nodes; the first [`MAX_ROLES`] by
    /// name.
    pub(crate) fn from_parts(t: u64, nodes: &[NodeInfo], backlog: &[(&str, u64, u64)]) -> Self {
        let mut counts: BTreeMap<String, RoleCount> = BTreeMap::new();
        for node in nodes {
            for (role, slots) in &node.by_role {
                let c = counts.entry(role.clone()).or_default();
                c.agents += slots.agents;
                c.nodes += 1;
            }
        }
        if backlog.iter().any(|(role, ..)| *role == "*") {
            let c = counts.entry("*".into()).or_default();
            c.agents = nodes.iter().map(|n| n.agents).sum();
            c.nodes = nodes.len() as u64;
        }
        for &(role, waiting, running) in backlog {
            let c = counts.entry(role.into()).or_default();
            c.waiting = waiting;
            c.running = running;
        }
        Self {
            t,
            roles: counts
                .into_iter()
                .take(MAX_ROLES)
                .map(|(role, count)| RoleCount { role, ..count })
                .collect(),
        }
    }
}

/// Samples and decisions as the stream gives them, each with its stream sequence; an error
/// ends it.
pub type Samples = BoxStream<'static, Result<(u64, RoleEvent), Error>>;

impl Cluster {
    /// The stream of samples, made on first use.
    async fn roles_stream(&self) -> Result<stream::Stream, Error> {
        let config = stream::Config {
            name: ROLES_STREAM.into(),
            description: Some("colony: each role's size and backlog, a sample every 2 s".into()),
            subjects: vec![SUBJECT.into(), DECISIONS.into(), HOLDS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.settings.replicas,
            max_age: KEEP,
            // Two servers whose clocks differ by a slot may each keep theirs: room for both,
            // and for the leader's steps.
            max_messages: i64::try_from(2 * KEEP.as_secs() / EVERY.as_secs() + MAX_STEPS)
                .unwrap_or(i64::MAX),
            max_message_size: MAX_SAMPLE as i32,
            duplicate_window: Duration::from_secs(120),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let stream = self
            .roles
            .get_or_try_init(|| async {
                let what = |e: &dyn std::fmt::Display| Error::nats("the roles' samples", e);
                let mut stream = self
                    .js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| what(&e))?;
                // Made by a build before the leader's steps, or its holds: it takes their
                // subjects now.
                let info = stream.info().await.map_err(|e| what(&e))?;
                let missing: Vec<&str> = [DECISIONS, HOLDS]
                    .into_iter()
                    .filter(|d| !info.config.subjects.iter().any(|s| s == d))
                    .collect();
                if !missing.is_empty() {
                    let mut wider = info.config.clone();
                    wider
                        .subjects
                        .extend(missing.into_iter().map(str::to_owned));
                    self.js.update_stream(wider).await.map_err(|e| what(&e))?;
                }
                Ok::<_, Error>(stream)
            })
            .await?;
        Ok(stream.clone())
    }

    /// Appends `sample` under its slot: a second sample of the slot (another server's) is
    /// dropped by the stream.
    pub async fn publish_roles(&self, sample: &RoleSample) -> Result<(), Error> {
        self.roles_stream().await?;
        let body = serde_json::to_vec(sample).map_err(|e| Error::Task(e.to_string()))?;
        if body.len() > MAX_SAMPLE {
            return Err(Error::Task(format!(
                "a sample of {} bytes is over the {MAX_SAMPLE} a sample may take",
                body.len()
            )));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("roles-{}", sample.t).as_str());
        self.js
            .publish_with_headers(SUBJECT, headers, body.into())
            .await
            .map_err(|e| Error::nats("appending a roles' sample", e))?
            .await
            .map_err(|e| Error::nats("appending a roles' sample", e))?;
        Ok(())
    }

    /// Appends a step the scaling leader decided; one appended twice (the same role, leader
    /// term and time) is kept once.
    pub async fn publish_role_decision(
        &self,
        decision: &RoleDecision,
        term: u64,
    ) -> Result<(), Error> {
        self.roles_stream().await?;
        let body = serde_json::to_vec(decision).map_err(|e| Error::Task(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("scale-{}-{term}-{}", decision.role, decision.t);
        headers.insert("Nats-Msg-Id", id.as_str());
        let what = "appending a scaling decision";
        self.js
            .publish_with_headers(
                if decision.blocked_by.is_some() {
                    HOLDS
                } else {
                    DECISIONS
                },
                headers,
                body.into(),
            )
            .await
            .map_err(|e| Error::nats(what, e))?
            .await
            .map_err(|e| Error::nats(what, e))?;
        Ok(())
    }

    /// The samples and decisions after stream sequence `after` (every one kept when `None`),
    /// then each as it is appended. A sample that does not read is left out; the watch failing (NATS
    /// gone), or made again by the client from the stream's start, ends it with an error:
    /// the caller makes it again after the last sequence it read.
    pub async fn role_samples(&self, after: Option<u64>) -> Result<Samples, Error> {
        let watching = |e: String| Error::nats("watching the roles' samples", e);
        let stream = self.roles_stream().await?;
        let from = match after {
            None => consumer::DeliverPolicy::All,
            Some(last) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
        };
        let description = "colony: a watch of the roles' samples";
        let consumer = crate::watch::ordered(&stream, &self.client, description, &[], from)
            .await
            .map_err(watching)?;
        let (_, messages) = crate::watch::messages(consumer).await.map_err(watching)?;
        Ok(messages
            .filter_map(move |read| {
                std::future::ready(match read {
                    // Over what a sample may take (a stream made by hand, without the
                    // bound): left out, not read.
                    Ok((_, message)) if message.payload.len() > MAX_SAMPLE => None,
                    Ok((seq, message))
                        if [DECISIONS, HOLDS].contains(&message.subject.as_str()) =>
                    {
                        serde_json::from_slice::<RoleDecision>(&message.payload)
                            .ok()
                            .map(|d| Ok((seq, RoleEvent::Decision(d))))
                    }
                    Ok((seq, message)) => serde_json::from_slice::<RoleSample>(&message.payload)
                        .ok()
                        .map(|sample| Ok((seq, RoleEvent::Sample(sample)))),
                    Err(e) => Some(Err(watching(e))),
                })
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoleSlots;

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
    fn roles_are_summed_over_nodes_and_the_any_role_counts_every_agent() {
        let sample = RoleSample::from_parts(
            4_000,
            &[
                node("a", &[("gpu", 2), ("cpu", 8)]),
                node("b", &[("cpu", 4)]),
            ],
            &[("cpu", 10, 12), ("*", 1, 0)],
        );
        let count = |role: &str| sample.roles.iter().find(|r| r.role == role).cloned();
        let names: Vec<&str> = sample.roles.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(names, ["*", "cpu", "gpu"]);
        assert_eq!(
            count("cpu"),
            Some(RoleCount {
                role: "cpu".into(),
                agents: 12,
                nodes: 2,
                waiting: 10,
                running: 12
            })
        );
        assert_eq!(count("*").map(|c| (c.agents, c.nodes)), Some((14, 2)));
        assert_eq!(count("gpu").map(|c| (c.agents, c.waiting)), Some((2, 0)));
    }

    #[test]
    fn at_most_max_roles_are_sampled_and_slots_are_whole() {
        let names: Vec<String> = (0..MAX_ROLES + 5).map(|i| format!("r{i:03}")).collect();
        let backlog: Vec<(&str, u64, u64)> = names.iter().map(|r| (r.as_str(), 1, 0)).collect();
        let sample = RoleSample::from_parts(0, &[], &backlog);
        assert_eq!(sample.roles.len(), MAX_ROLES);
        assert_eq!(sample.roles[0].role, "r000");
        assert!(serde_json::to_vec(&sample).unwrap().len() < MAX_SAMPLE);
        assert_eq!(slot(0), 0);
        assert_eq!(slot(3_999), 2_000);
        assert_eq!(slot(4_000), 4_000);
    }
}
