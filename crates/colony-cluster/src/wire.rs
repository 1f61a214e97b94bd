//! What crosses NATS: a task as a stream message (its settings in headers, its payload as the
//! body, byte for byte) and a task's record in the tasks bucket (one JSON line, then the
//! output's bytes as they are).

use bytes::{BufMut, Bytes, BytesMut};
use colony_core::{
    decision::{DecisionOptions, Protocol},
    task::{MAX_TIMEOUT, Priority, Requirement, TaskSpec, TaskState},
};
use colony_runtime::{decision::Vote, team::Team};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

pub mod bundle;

const KEY: &str = "Colony-Key";
const ROLE: &str = "Colony-Role";
const CAPABILITIES: &str = "Colony-Capabilities";
const HARD: &str = "Colony-Hard";
const PRIORITY: &str = "Colony-Priority";
const TIMEOUT_MS: &str = "Colony-Timeout-Ms";
const MAX_ATTEMPTS: &str = "Colony-Max-Attempts";
const DECIDE: &str = "Colony-Decide";
const TEAM: &str = "Colony-Team";
const BALLOT: &str = "Colony-Ballot";
/// The most a team's settings may take in their header: within the room a message keeps
/// for its headers beside the largest payload.
pub(crate) const MAX_TEAM_HEADER: usize = 12 * 1024;

/// A task worked by several agents of the node that takes it: decided by their vote, or
/// worked by a team formed for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Together {
    Vote(Decide),
    Team(Box<Team>),
}

/// A task decided by vote: how, as it crosses NATS in the `Colony-Decide` header. The node
/// that takes the task seats the voters among its own agents (distinct workers that can run
/// it) and records the decided value as the task's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Decide {
    /// Distinct workers asked, each once.
    pub voters: u32,
    pub options: DecisionOptions,
    /// Under `weighted` and `confidence`, each voter weighs its reputation on its node.
    #[serde(default)]
    pub reputation: bool,
    /// Under `weighted` and `confidence`, the weight of the voters of each role: on the node
    /// that takes the vote, its pools of that role; roles not listed weigh 1. Absent from
    /// the header when empty, so that nodes from before weights read the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub role_weights: BTreeMap<String, f64>,
    /// Its voters span the cluster: each ballot is a cluster task of its own, run by an agent
    /// of any node serving the task's role, and the node that takes the vote counts them
    /// (`node/spread.rs`). Absent from the header when false, so that nodes from before read
    /// the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spread: bool,
}

/// Most roles a vote weighs.
pub const MAX_WEIGHED_ROLES: usize = 64;

/// A ballot of a spread vote that weighs its voters, as its task's `Colony-Ballot` header
/// says: the node that runs it writes in its record who voted ([`Voter`]: the role of the
/// agent's pool there, and with `reputation` the agent's reputation there), which the node
/// counting the vote weighs the ballot by.
///
/// Fields it does not know are passed over: it only asks for more to be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Weigh {
    #[serde(default)]
    pub reputation: bool,
}

/// Who ran a ballot of a vote that weighs its voters ([`Weigh`]), in its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Voter {
    /// The role of the agent's pool on its node.
    pub role: String,
    /// The agent's reputation on its node (0 to 1), when the ballot asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<f64>,
}

/// Refuses weights by role that no vote under `protocol` can take: more than
/// [`MAX_WEIGHED_ROLES`], a name no role can have, a weight out of range, or any weight
/// under a protocol that does not count them.
pub fn check_role_weights(
    weights: &BTreeMap<String, f64>,
    protocol: Protocol,
) -> Result<(), String> {
    if weights.is_empty() {
        return Ok(());
    }
    if !matches!(protocol, Protocol::Weighted | Protocol::Confidence) {
        return Err(format!(
            "weights count only under the weighted and confidence protocols, and this vote is {protocol}"
        ));
    }
    if weights.len() > MAX_WEIGHED_ROLES {
        return Err(format!(
            "weighs {} roles: at most {MAX_WEIGHED_ROLES}",
            weights.len()
        ));
    }
    let max = colony_core::decision::MAX_WEIGHT;
    for (role, w) in weights {
        crate::settings::check_role(role).map_err(|e| format!("a weight's {e}"))?;
        if !(0.0..=max).contains(w) {
            return Err(format!("role `{role}` weighs {w}: allowed 0 up to {max}"));
        }
    }
    Ok(())
}

impl Decide {
    /// What a runtime's vote asks, as the cluster carries it: its pool weights become weights
    /// of the pools' roles (`roles[i]`, pool `i`'s), since a cluster's nodes host pools of
    /// their own. Pools of one role weighed differently are refused, saying so.
    pub fn of(vote: &Vote, roles: &[&str]) -> Result<Self, String> {
        let mut role_weights: BTreeMap<String, f64> = BTreeMap::new();
        for (i, &w) in vote.pool_weights.iter().enumerate() {
            let Some(&role) = roles.get(i) else {
                return Err(format!(
                    "weighs pool {i}, and there are {} pools",
                    roles.len()
                ));
            };
            match role_weights.insert(role.to_owned(), w) {
                Some(other) if other != w => {
                    return Err(format!(
                        "weighs pools of role `{role}` both {other} and {w}, and a cluster weighs voters by role (each node's pools are its own): give the pools of a role one weight"
                    ));
                }
                _ => {}
            }
        }
        role_weights.retain(|_, w| *w != 1.0);
        Ok(Self {
            voters: vote.voters,
            options: vote.options,
            reputation: vote.reputation,
            role_weights,
            spread: false,
        })
    }

    /// The vote a node's runtime takes among its `pools` (by index, as
    /// `colony_runtime::Handle::pools` lists them): each pool weighs its role's weight.
    pub fn vote(&self, pools: &[(colony_core::agent::AgentSpec, u64)]) -> Vote {
        let pool_weights = match self.role_weights.is_empty() {
            true => Vec::new(),
            false => pools
                .iter()
                .map(|(spec, _)| self.role_weights.get(&*spec.role).copied().unwrap_or(1.0))
                .collect(),
        };
        Vote {
            voters: self.voters,
            options: self.options,
            pool_weights,
            reputation: self.reputation,
        }
    }

    /// Refuses what every node's runtime would refuse, so that such a vote is refused when
    /// sent (or before a workflow run starts) rather than tried on node after node.
    pub fn check(&self) -> Result<(), String> {
        check_role_weights(&self.role_weights, self.options.protocol)?;
        // The runtime's own check of a vote; then what its engine checks once it has the
        // voters, which the number of them decides.
        self.vote(&[]).validate().map_err(|e| match e {
            colony_runtime::Error::Decision(why) => why,
            e => e.to_string(),
        })?;
        let n = self.voters;
        if self.spread {
            self.check_spread()?;
        }
        match (self.options.protocol, self.options.faults) {
            (Protocol::Bft, Some(f)) if f > (n - 1) / 3 => Err(format!(
                "bft tolerates at most (n-1)/3 = {} faulty voters of {n}, and {f} are asked",
                (n - 1) / 3
            )),
            (Protocol::Leader, _) if n < 2 => Err(format!(
                "leader needs 2 voters or more (a proposer and a reviewer), and {n} is asked"
            )),
            _ => Ok(()),
        }
    }
}

impl Decide {
    /// Refuses what a vote spread over the cluster cannot count: more voters than
    /// [`MAX_SPREAD_VOTERS`].
    fn check_spread(&self) -> Result<(), String> {
        use crate::node::MAX_SPREAD_VOTERS;
        if self.voters > MAX_SPREAD_VOTERS {
            return Err(format!(
                "a spread vote asks at most {MAX_SPREAD_VOTERS} voters (each a cluster task), and {} are asked",
                self.voters
            ));
        }
        Ok(())
    }

    /// What a spread vote asks of its ballots' nodes: who voted, when it weighs its voters
    /// (by role or reputation, under a protocol that counts weights).
    pub(crate) fn weigh(&self) -> Option<Weigh> {
        let counts = matches!(
            self.options.protocol,
            Protocol::Weighted | Protocol::Confidence
        );
        (self.spread && counts && (self.reputation || !self.role_weights.is_empty())).then_some(
            Weigh {
                reputation: self.reputation,
            },
        )
    }

    /// The most a seat of a spread vote of a task of `role` (any agent's when `None`) can
    /// weigh: its role's weight when the task has one (every ballot goes to an agent of
    /// that role), else the largest of the weights and 1 (a role not listed weighs 1). A
    /// reputation is at most 1.
    pub(crate) fn most_seat_weight(&self, role: Option<&str>) -> f64 {
        match role {
            Some(role) => self.role_weights.get(role).copied().unwrap_or(1.0),
            None => self.role_weights.values().copied().fold(1.0, f64::max),
        }
    }

    /// What a ballot of a spread vote weighs, from who its record says voted: its role's
    /// weight (1 when not listed), times its reputation when the vote asks for it. `Err`
    /// says why it cannot be weighed (a node from before such votes ran it).
    pub(crate) fn seat_weight(&self, voter: Option<&Voter>) -> Result<f64, String> {
        let Some(voter) = voter else {
            return Err(
                "its record says not who voted, so it cannot be weighed (its node runs a colony from before spread votes weighed their voters, or no longer knew the agent when the ballot ended)"
                    .into(),
            );
        };
        let role = self.role_weights.get(&voter.role).copied().unwrap_or(1.0);
        if !self.reputation {
            return Ok(role);
        }
        match voter.reputation {
            Some(r) if (0.0..=1.0).contains(&r) => Ok(role * r),
            Some(r) => Err(format!("its record gives reputation {r}, out of 0 to 1")),
            None => Err("its record gives no reputation to weigh it by".into()),
        }
    }
}

/// How a team went, kept in its task's record: its size and work, without its members'
/// asks (which stay on the node that formed it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TeamSummary {
    /// Members when formed.
    pub members: u32,
    /// Whether every member was a worker of one supervisor.
    pub together: bool,
    /// Steps run (some may be cut short by a failure).
    pub steps: u32,
    /// Tasks asked in all, delegations and reassignments included.
    pub asks: u32,
    /// Members replaced after they failed.
    pub reassigned: u32,
    /// A spread team: the distinct nodes whose agents answered its asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
}

/// How a decision went, kept in its task's record: enough to see its margin and dissent
/// without the ballots (which stay on the node that counted them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DecisionSummary {
    pub protocol: Protocol,
    /// Voters seated.
    pub voters: u32,
    /// Ballots asked (more than the voters when a later round asked again).
    pub asked: u32,
    /// Ballots counted in the deciding (or last) round.
    pub counted: u32,
    pub participation: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// Voters counted against the winner.
    #[serde(default)]
    pub dissenters: u32,
    /// Why it failed, when it did (`no-quorum`, `tie`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A spread vote: the distinct nodes whose agents' ballots were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
}

/// A task as a message of the tasks stream.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskMessage;

impl TaskMessage {
    /// The headers carrying `spec`'s settings (and how it is decided, for a vote), with `id`
    /// as the stream's dedupe id. Refuses text a header cannot carry (control characters)
    /// rather than mangle it.
    pub fn headers(
        spec: &TaskSpec,
        id: &str,
        together: Option<&Together>,
    ) -> Result<async_nats::HeaderMap, String> {
        let mut headers = async_nats::HeaderMap::new();
        let text = |what: &str, value: &str| {
            if value.chars().any(char::is_control) {
                Err(format!(
                    "the task's {what} has a control character: a header cannot carry it"
                ))
            } else {
                Ok(value.to_owned())
            }
        };
        headers.insert("Nats-Msg-Id", text("idempotency key", id)?.as_str());
        if let Some(key) = &spec.key {
            headers.insert(KEY, text("key", key)?.as_str());
        }
        if let Some(role) = &spec.requirement.role {
            headers.insert(ROLE, text("role", role)?.as_str());
        }
        if !spec.requirement.capabilities.is_empty() {
            // Joined by `,`, so one holding it, or none at all, would read back as others.
            if let Some(bad) = spec
                .requirement
                .capabilities
                .iter()
                .find(|c| c.is_empty() || c.contains(','))
            {
                return Err(format!(
                    "capability `{}`: a capability is not empty and holds no `,`",
                    colony_core::text::shorten(bad, 80)
                ));
            }
            let caps = spec.requirement.capabilities.join(",");
            headers.insert(CAPABILITIES, text("capabilities", &caps)?.as_str());
        }
        if spec.requirement.hard {
            headers.insert(HARD, "1");
        }
        headers.insert(PRIORITY, spec.priority.get().to_string().as_str());
        headers.insert(TIMEOUT_MS, spec.timeout.as_millis().to_string().as_str());
        headers.insert(MAX_ATTEMPTS, spec.max_attempts.to_string().as_str());
        match together {
            Some(Together::Vote(decide)) => {
                decide.check()?;
                let json = serde_json::to_string(decide).map_err(|e| e.to_string())?;
                headers.insert(DECIDE, json.as_str());
            }
            Some(Together::Team(team)) => {
                team.validate().map_err(|e| e.to_string())?;
                let json = serde_json::to_string(team).map_err(|e| e.to_string())?;
                if json.len() > MAX_TEAM_HEADER {
                    return Err(format!(
                        "the team's settings take {} bytes, over the {MAX_TEAM_HEADER} a task's header may: fewer steps, or smaller step inputs",
                        json.len()
                    ));
                }
                headers.insert(TEAM, json.as_str());
            }
            None => {}
        }
        Ok(headers)
    }

    /// How the task a message carries is worked by several agents (a vote or a team), if it
    /// is; or what is wrong with it.
    pub fn together(headers: Option<&async_nats::HeaderMap>) -> Result<Option<Together>, String> {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        match (get(DECIDE), get(TEAM)) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(format!(
                "headers {DECIDE} and {TEAM}: a task is decided by vote or worked by a team, not both"
            )),
            (Some(value), None) => {
                let decide: Decide =
                    serde_json::from_str(&value).map_err(|e| format!("header {DECIDE}: {e}"))?;
                decide
                    .check()
                    .map_err(|e| format!("header {DECIDE}: {e}"))?;
                Ok(Some(Together::Vote(decide)))
            }
            (None, Some(value)) => {
                if value.len() > MAX_TEAM_HEADER {
                    return Err(format!(
                        "header {TEAM}: {} bytes, over the {MAX_TEAM_HEADER} it may take",
                        value.len()
                    ));
                }
                let team: Team =
                    serde_json::from_str(&value).map_err(|e| format!("header {TEAM}: {e}"))?;
                team.validate().map_err(|e| format!("header {TEAM}: {e}"))?;
                Ok(Some(Together::Team(Box::new(team))))
            }
        }
    }

    /// Whether the task a message carries is a ballot whose node says who voted
    /// (`Colony-Ballot`), or what is wrong with the header.
    pub fn weigh(headers: Option<&async_nats::HeaderMap>) -> Result<Option<Weigh>, String> {
        match headers.and_then(|h| h.get(BALLOT)) {
            None => Ok(None),
            Some(value) => serde_json::from_str(value.as_str())
                .map(Some)
                .map_err(|e| format!("header {BALLOT}: {e}")),
        }
    }

    /// `headers` of a ballot whose node is to say who voted ([`Weigh`]).
    pub(crate) fn mark_ballot(headers: &mut async_nats::HeaderMap, weigh: Weigh) {
        let json = serde_json::to_string(&weigh).unwrap_or_default();
        headers.insert(BALLOT, json.as_str());
    }

    /// The task a message carries, or what is wrong with it.
    pub fn spec(
        headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
    ) -> Result<TaskSpec, String> {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let number = |name: &str| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("header {name}: `{v}` is not a number"))
                })
                .transpose()
        };
        let mut spec = TaskSpec {
            payload,
            ..TaskSpec::default()
        };
        spec.key = get(KEY).map(Arc::from);
        spec.requirement = Requirement {
            role: get(ROLE).map(Arc::from),
            capabilities: get(CAPABILITIES)
                .map(|c| {
                    c.split(',')
                        .filter(|c| !c.is_empty())
                        .map(Arc::from)
                        .collect()
                })
                .unwrap_or_default(),
            hard: get(HARD).is_some_and(|h| h == "1"),
        };
        if let Some(p) = number(PRIORITY)? {
            spec.priority = u8::try_from(p)
                .ok()
                .and_then(|p| Priority::new(p).ok())
                .ok_or_else(|| format!("header {PRIORITY}: {p} is out of range 0..=9"))?;
        }
        if let Some(ms) = number(TIMEOUT_MS)? {
            let timeout = Duration::from_millis(ms);
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(format!("header {TIMEOUT_MS}: {ms} is out of range"));
            }
            spec.timeout = timeout;
        }
        if let Some(n) = number(MAX_ATTEMPTS)? {
            spec.max_attempts = u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                // A task queued before clients checked the bound runs with the most allowed.
                .map(|n| n.min(colony_core::task::MAX_ATTEMPTS))
                .ok_or_else(|| format!("header {MAX_ATTEMPTS}: {n} is out of range"))?;
        }
        Ok(spec)
    }
}

/// A task's record in the tasks bucket: where it stands, its lease, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Row {
    pub state: TaskState,
    /// The lease: the number of the latest attempt started. Only that attempt's node may end
    /// it, by a compare-and-set on the record's revision.
    pub attempt: u32,
    /// Attempts counted against the task's `max_attempts`: an attempt a draining node handed
    /// back does not count, one lost with its node does.
    pub charged: u32,
    /// The node of the latest attempt.
    pub node: String,
    /// A random id of the write that took the lease (or ended the task): a node that lost
    /// the answer to its own write knows it by this, not by a compare-and-set that now fails.
    #[serde(default)]
    pub lease: String,
    /// The agent of the latest attempt, on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When this record was written, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// A task decided by vote: how the decision went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<DecisionSummary>>,
    /// A task worked by a team: how the team went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Box<TeamSummary>>,
    /// A ballot of a spread vote that weighs its voters: who voted ([`Weigh`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter: Option<Box<Voter>>,
    /// The output of a task that succeeded, kept after the JSON line as it is.
    #[serde(skip)]
    pub output: Option<Bytes>,
}

impl Row {
    /// The record as JSON for people and programs: its fields, the task's `id`, and its
    /// output as JSON when it is JSON, else as text.
    pub fn json(&self, id: u64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["id"] = id.into();
        if let Some(output) = &self.output {
            v["output"] = match serde_json::from_slice::<serde_json::Value>(output) {
                Ok(json) => json,
                Err(_) => String::from_utf8_lossy(output).into_owned().into(),
            };
        }
        v
    }

    pub fn encode(&self) -> Bytes {
        let head = serde_json::to_vec(self).unwrap_or_default();
        let mut out =
            BytesMut::with_capacity(head.len() + 1 + self.output.as_ref().map_or(0, Bytes::len));
        out.put_slice(&head);
        out.put_u8(b'\n');
        if let Some(output) = &self.output {
            out.put_slice(output);
        }
        out.freeze()
    }

    pub fn decode(value: &Bytes) -> Result<Row, String> {
        let split = value
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no record line")?;
        let mut row: Row = serde_json::from_slice(&value[..split]).map_err(|e| e.to_string())?;
        if row.state == TaskState::Succeeded {
            row.output = Some(value.slice(split + 1..));
        }
        Ok(row)
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(self.state, TaskState::Queued | TaskState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_crosses_as_headers_and_its_payload_unchanged() {
        let spec = TaskSpec {
            key: Some("step-1".into()),
            requirement: Requirement {
                role: Some("coder".into()),
                capabilities: vec!["rust".into(), "git".into()],
                hard: true,
            },
            priority: Priority::new(8).unwrap(),
            payload: Bytes::from_static(b"{\"n\": \"\xce\xbb\"}"),
            timeout: Duration::from_millis(2500),
            max_attempts: 4,
        };
        let headers = TaskMessage::headers(&spec, "abc", None).unwrap();
        assert_eq!(
            TaskMessage::spec(Some(&headers), spec.payload.clone()).unwrap(),
            spec
        );
        let bare = TaskMessage::spec(None, Bytes::from_static(b"1")).unwrap();
        assert_eq!(bare.max_attempts, TaskSpec::default().max_attempts);
    }

    #[test]
    fn a_spread_ballot_is_weighed_by_who_its_record_says_voted() {
        let decide = |weights: &[(&str, f64)], reputation: bool, protocol| Decide {
            voters: 3,
            options: DecisionOptions::with(protocol),
            reputation,
            role_weights: weights.iter().map(|(r, w)| ((*r).to_owned(), *w)).collect(),
            spread: true,
        };
        let voter = |role: &str, reputation: Option<f64>| Voter {
            role: role.into(),
            reputation,
        };
        let by_role = decide(&[("big", 3.0), ("tiny", 0.5)], false, Protocol::Weighted);
        assert_eq!(by_role.weigh(), Some(Weigh { reputation: false }));
        assert_eq!(by_role.seat_weight(Some(&voter("big", None))), Ok(3.0));
        assert_eq!(
            by_role.seat_weight(Some(&voter("other", Some(0.2)))),
            Ok(1.0)
        );
        let unsaid = by_role.seat_weight(None).unwrap_err();
        assert!(unsaid.contains("says not who voted"), "{unsaid}");
        // Seated at the most a ballot could weigh: the task's role's, else the largest.
        assert_eq!(by_role.most_seat_weight(Some("tiny")), 0.5);
        assert_eq!(by_role.most_seat_weight(Some("other")), 1.0);
        assert_eq!(by_role.most_seat_weight(None), 3.0);
        let light = decide(&[("tiny", 0.5)], false, Protocol::Weighted);
        assert_eq!(
            light.most_seat_weight(None),
            1.0,
            "a role not listed weighs 1"
        );

        let both = decide(&[("big", 3.0)], true, Protocol::Confidence);
        assert_eq!(both.weigh(), Some(Weigh { reputation: true }));
        assert_eq!(both.seat_weight(Some(&voter("big", Some(0.5)))), Ok(1.5));
        assert!(both.seat_weight(Some(&voter("big", None))).is_err());
        assert!(both.seat_weight(Some(&voter("big", Some(1.5)))).is_err());
        // Nothing to weigh: unspread, or no weights asked.
        let unspread = Decide {
            spread: false,
            ..both.clone()
        };
        assert_eq!(unspread.weigh(), None);
        assert_eq!(decide(&[], false, Protocol::Weighted).weigh(), None);

        // The mark crosses in its header; a bad one is named.
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(TaskMessage::weigh(Some(&headers)), Ok(None));
        TaskMessage::mark_ballot(&mut headers, Weigh { reputation: true });
        assert_eq!(
            TaskMessage::weigh(Some(&headers)),
            Ok(Some(Weigh { reputation: true }))
        );
        headers.insert(BALLOT, "{\"reputation\": \"yes\"}");
        assert!(
            TaskMessage::weigh(Some(&headers))
                .unwrap_err()
                .contains(BALLOT)
        );
        // A later colony's field is passed over: it only asks for more to be written.
        headers.insert(BALLOT, "{\"reputation\": true, \"pool\": true}");
        assert_eq!(
            TaskMessage::weigh(Some(&headers)),
            Ok(Some(Weigh { reputation: true }))
        );
        // Who voted crosses in the record.
        let line = r#"{"state": "succeeded", "attempt": 1, "charged": 1, "node": "b", "at-ms": 1, "voter": {"role": "big", "reputation": 0.75}}"#;
        let row = Row::decode(&Bytes::from(format!("{line}\n"))).unwrap();
        assert_eq!(row.voter, Some(Box::new(voter("big", Some(0.75)))));
        assert_eq!(Row::decode(&row.encode()).unwrap(), row);
    }

    #[test]
    fn bad_headers_are_named() {
        let spec = TaskSpec {
            key: Some("a\r\nInjected: 1".into()),
            ..TaskSpec::default()
        };
        assert!(
            TaskMessage::headers(&spec, "x", None)
                .unwrap_err()
                .contains("control character")
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(PRIORITY, "12");
        let err = TaskMessage::spec(Some(&headers), Bytes::new()).unwrap_err();
        assert!(err.contains("Colony-Priority"), "{err}");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MAX_ATTEMPTS, "0");
        assert!(TaskMessage::spec(Some(&headers), Bytes::new()).is_err());
    }

    #[test]
    fn a_vote_crosses_in_its_header_and_a_bad_one_is_named() {
        use colony_core::decision::Tie;
        let options = DecisionOptions {
            protocol: Protocol::Weighted,
            tie: Tie::First,
            timeout: Duration::from_secs(30),
            ..DecisionOptions::default()
        };
        let vote = Vote {
            reputation: true,
            ..Vote::new(7, options)
        };
        let decide = Decide::of(&vote, &[]).unwrap();
        let vote_of = Together::Vote(decide.clone());
        let headers = TaskMessage::headers(&TaskSpec::default(), "x", Some(&vote_of)).unwrap();
        let read = TaskMessage::together(Some(&headers)).unwrap().unwrap();
        assert_eq!(read, vote_of);
        assert_eq!(decide.vote(&[]), vote);
        // A plain task is no vote.
        let plain = TaskMessage::headers(&TaskSpec::default(), "x", None).unwrap();
        assert_eq!(TaskMessage::together(Some(&plain)).unwrap(), None);
        // Pool weights cross as their pools' roles' weights (1 is left out), and weigh a
        // node's pools of those roles; pools of one role weighed differently are refused.
        let weighed = Vote {
            pool_weights: vec![2.0, 1.0, 2.0],
            ..vote.clone()
        };
        let by_role = Decide::of(&weighed, &["gpt", "llama", "gpt"]).unwrap();
        assert_eq!(
            by_role.role_weights,
            BTreeMap::from([("gpt".to_owned(), 2.0)])
        );
        let with = Together::Vote(by_role.clone());
        let headers = TaskMessage::headers(&TaskSpec::default(), "x", Some(&with)).unwrap();
        assert_eq!(
            TaskMessage::together(Some(&headers)).unwrap().unwrap(),
            with
        );
        let pools = [
            (colony_core::agent::AgentSpec::new("sim", "llama"), 3),
            (colony_core::agent::AgentSpec::new("sim", "gpt"), 2),
        ];
        assert_eq!(by_role.vote(&pools).pool_weights, vec![1.0, 2.0]);
        let err = Decide::of(&weighed, &["gpt", "llama", "llama"]).unwrap_err();
        assert!(err.contains("pools of role `llama` both 1 and 2"), "{err}");
        assert!(Decide::of(&weighed, &["gpt"]).is_err());
        // A weight out of range, or of a role that cannot be one: named when sent.
        for (role, w, says) in [
            ("gpt", 2e6, "role `gpt` weighs 2000000"),
            ("a.b", 2.0, "a weight's"),
        ] {
            let bad = Decide {
                role_weights: BTreeMap::from([(role.to_owned(), w)]),
                ..by_role.clone()
            };
            let err = TaskMessage::headers(&TaskSpec::default(), "x", Some(&Together::Vote(bad)))
                .unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        // Out of range, written or read: named.
        let none = Decide {
            voters: 0,
            ..decide
        };
        let err = TaskMessage::headers(&TaskSpec::default(), "x", Some(&Together::Vote(none)))
            .unwrap_err();
        assert!(err.contains("0 voters asked"), "{err}");
        for bad in [
            r#"{"voters":0,"options":{}}"#,
            r#"{"voters":3,"options":{"threshold":2.0}}"#,
            r#"{"voters":3,"options":{},"extra":1}"#,
            "not json",
        ] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(DECIDE, bad);
            let err = TaskMessage::together(Some(&headers)).unwrap_err();
            assert!(err.starts_with("header Colony-Decide: "), "{bad}: {err}");
        }
    }

    #[test]
    fn a_team_crosses_in_its_header_bounded_and_never_with_a_vote() {
        use colony_runtime::team::{Role, Step};
        let team = Team {
            roles: vec![Role {
                name: "coder".into(),
                requirement: Requirement {
                    role: Some("coders".into()),
                    ..Requirement::default()
                },
                count: 2,
            }],
            steps: vec![Step {
                id: "code".into(),
                role: 0,
                each: true,
                input: serde_json::json!({"strict": true}).as_object().cloned(),
            }],
            reassignments: 3,
            delegation: 1,
            spread: false,
        };
        let together = Together::Team(Box::new(team.clone()));
        let headers = TaskMessage::headers(&TaskSpec::default(), "x", Some(&together)).unwrap();
        assert_eq!(
            TaskMessage::together(Some(&headers)).unwrap(),
            Some(together)
        );
        // A vote and a team on one task: named.
        let mut both = headers.clone();
        both.insert(DECIDE, r#"{"voters":3,"options":{}}"#);
        let err = TaskMessage::together(Some(&both)).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        // Over its bound, written or read: named.
        let mut big = team.clone();
        big.steps[0].input = serde_json::json!({"text": "x".repeat(MAX_TEAM_HEADER)})
            .as_object()
            .cloned();
        let err = TaskMessage::headers(
            &TaskSpec::default(),
            "x",
            Some(&Together::Team(Box::new(big))),
        )
        .unwrap_err();
        assert!(err.contains("over the 12288"), "{err}");
        let mut huge = async_nats::HeaderMap::new();
        huge.insert(TEAM, "x".repeat(MAX_TEAM_HEADER + 1).as_str());
        assert!(
            TaskMessage::together(Some(&huge))
                .unwrap_err()
                .contains("over the")
        );
        // What a runtime would refuse: named.
        let mut bad = async_nats::HeaderMap::new();
        let none = Team {
            steps: Vec::new(),
            ..team
        };
        bad.insert(TEAM, serde_json::to_string(&none).unwrap().as_str());
        let err = TaskMessage::together(Some(&bad)).unwrap_err();
        assert!(
            err.starts_with("header Colony-Team: ") && err.contains("0 steps"),
            "{err}"
        );
    }

    #[test]
    fn a_record_keeps_its_output_byte_for_byte() {
        let row = Row {
            state: TaskState::Succeeded,
            attempt: 2,
            charged: 2,
            node: "n1".into(),
            lease: "f00d".into(),
            agent: Some(7),
            error: None,
            key: None,
            at_ms: 1,
            decision: None,
            team: None,
            voter: None,
            output: Some(Bytes::from_static(b"line\nnext\0\xff")),
        };
        assert_eq!(Row::decode(&row.encode()).unwrap(), row);
        assert!(Row::decode(&Bytes::from_static(b"{}")).is_err());
    }
}
