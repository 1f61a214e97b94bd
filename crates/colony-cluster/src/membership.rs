//! Node membership: each node's heartbeat in the nodes bucket, whose entries expire after the
//! heartbeat TTL. A node that stops beating drops out of the list on its own; a draining node
//! deletes its entry as it leaves.

use crate::Error;
use async_nats::jetstream::kv;
use futures::StreamExt;
use std::time::Duration;

/// What a node says of itself in its heartbeat.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeInfo {
    pub name: String,
    /// The process's own id, random: two processes given one name tell their heartbeats
    /// apart by it (empty from a node that does not say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The roles its pools serve.
    pub roles: Vec<String>,
    pub agents: u64,
    /// Per role its pools serve: agents, and attempts they run at once.
    #[serde(default)]
    pub by_role: std::collections::BTreeMap<String, RoleSlots>,
    /// Attempts running on it now.
    pub running: u64,
    /// Attempts it ended since it started (succeeded, failed, retried, handed back).
    pub ended: u64,
    /// Its results refused because another node held the task by then.
    pub fenced: u64,
    /// It stopped taking tasks and finishes or hands back those it has.
    pub draining: bool,
    pub started_ms: u64,
    /// When this heartbeat was written.
    pub at_ms: u64,
    pub version: String,
    /// Its runtime's hierarchy, top tier first: the node's subtree of the cluster's (empty
    /// from a node that does not say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierCount>,
    /// Its workers whose health checks say degraded, critical or failed.
    #[serde(default)]
    pub unhealthy: u64,
    /// It decides the tasks that carry a vote (`Colony-Decide`). A node from before votes
    /// crossed the cluster does not say so, and would run such a task as a plain one.
    #[serde(default)]
    pub votes: bool,
    /// It forms the teams of the tasks that carry one (`Colony-Team`); as for `votes`.
    #[serde(default)]
    pub teams: bool,
    /// It weighs a vote's voters by role (`role-weights` in `Colony-Decide`); a node from
    /// before would refuse such a vote's header.
    #[serde(default)]
    pub weights: bool,
    /// It counts votes spread over the cluster (`spread` in `Colony-Decide`); a node from
    /// before would refuse such a vote's header.
    #[serde(default)]
    pub spread: bool,
    /// It runs teams spread over the cluster (`spread` in `Colony-Team`); a node from before
    /// would refuse such a team's header.
    #[serde(default)]
    pub spread_teams: bool,
    /// It says who voted in the records of the ballots of spread votes that weigh their
    /// voters (`Colony-Ballot`), and counts such votes; a node from before would run such a
    /// ballot and say nothing of its voter, and refuse such a vote's header.
    #[serde(default)]
    pub spread_weights: bool,
    /// Its spread teams hand asks on (`delegation` above 0); a node from before would refuse
    /// such a team's header.
    #[serde(default)]
    pub spread_delegation: bool,
    /// It reads bundles, messages of several tasks (`Colony-Bundle`); a node from before
    /// would run a bundle as one task.
    #[serde(default)]
    pub bundles: bool,
    /// Its consumers take bundles on subjects of their own (`colony.tasks.<role>.p<N>.<n>`,
    /// so the stream counts their tasks); a node from before would leave them undelivered
    /// until a node of this version widens the role's consumers.
    #[serde(default)]
    pub bundle_subjects: bool,
}

/// One tier of a node's hierarchy: its agents, and those down (crashed, waiting for a
/// restart, or stopped with their manager).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TierCount {
    pub name: String,
    pub agents: u64,
    pub down: u64,
}

/// The hierarchy of a node's runtime as its heartbeat tells it, and its unhealthy workers:
/// `None` when the runtime does not answer within `patience` (its heartbeat keeps the last,
/// and is not late for it).
pub(crate) async fn hierarchy(
    handle: &colony_runtime::Handle,
    patience: std::time::Duration,
) -> Option<(Vec<TierCount>, u64)> {
    let asked = handle.observe(|live| {
        let tree = live.tree;
        let tiers = tree
            .tier_names()
            .iter()
            .zip(tree.tier_sizes())
            .enumerate()
            .map(|(i, (name, &n))| TierCount {
                name: name.to_string(),
                agents: u64::from(n),
                down: live.down(i),
            })
            .collect();
        (tiers, live.unhealthy().iter().sum())
    });
    tokio::time::timeout(patience, asked).await.ok()?.ok()
}

/// A node's agents of one role and the attempts they run at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleSlots {
    pub agents: u64,
    pub slots: u64,
}

/// Why a heartbeat was not written.
#[derive(Debug)]
pub(crate) enum Unwritten {
    /// Another process's heartbeat holds the name: not written over.
    Taken(Box<NodeInfo>),
    Failed(Error),
}

/// The heartbeat under the name, if it is a node's (not a marker of one that left).
async fn held(nodes: &kv::Store, name: &str) -> Result<Option<(NodeInfo, u64)>, Error> {
    let entry = nodes
        .entry(name)
        .await
        .map_err(|e| Error::nats(format!("reading the heartbeat of node {name}"), e))?;
    Ok(entry
        .filter(|entry| entry.operation == kv::Operation::Put)
        .and_then(|entry| {
            let info = serde_json::from_slice::<NodeInfo>(&entry.value).ok()?;
            Some((info, entry.revision))
        }))
}

/// Writes `info` as this process's heartbeat, over its last one at `revision` (created when
/// `None`, or when that one is gone: lapsed or deleted). Only this process's heartbeat is
/// written over: one of another process under the name (it joined while this one's
/// heartbeat had lapsed) is left, and said. Returns the new revision.
pub(crate) async fn renew(
    nodes: &kv::Store,
    info: &NodeInfo,
    revision: Option<u64>,
) -> Result<u64, Unwritten> {
    let name = info.name.as_str();
    let value = bytes::Bytes::from(serde_json::to_vec(info).unwrap_or_default());
    let failed = |e: &dyn std::fmt::Display| {
        Unwritten::Failed(Error::nats(format!("the heartbeat of node {name}"), e))
    };
    if let Some(revision) = revision {
        match nodes.update(name, value.clone(), revision).await {
            Ok(revision) => return Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(failed(&e)),
        }
    }
    // Not this process's last revision (or none): whose is the name now?
    match held(nodes, name).await.map_err(Unwritten::Failed)? {
        // This process's own, its answer lost: written over at its revision.
        Some((own, revision)) if own.instance == info.instance => nodes
            .update(name, value, revision)
            .await
            .map_err(|e| failed(&e)),
        Some((other, _)) => Err(Unwritten::Taken(Box::new(other))),
        None => match nodes.create(name, value).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match held(nodes, name).await.map_err(Unwritten::Failed)? {
                    Some((other, _)) if other.instance != info.instance => {
                        Err(Unwritten::Taken(Box::new(other)))
                    }
                    _ => Err(failed(&"created meanwhile")),
                }
            }
            Err(e) => Err(failed(&e)),
        },
    }
}

/// Enters `info` in the nodes bucket under its name, as a create: two live nodes never share
/// a name (each one's heartbeat would overwrite the other's, and the cluster would count
/// one). A name whose heartbeat is there already, from another process, is the name of a
/// node that died without leaving (its entry lapses within `ttl`) or of a live one: it is
/// waited for up to `ttl` and a second, then refused, naming it. Returns the heartbeat's
/// revision, which later ones are written over ([`renew`]).
pub(crate) async fn join(nodes: &kv::Store, info: &NodeInfo, ttl: Duration) -> Result<u64, Error> {
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
    let mut said = false;
    loop {
        match renew(nodes, info, None).await {
            Ok(revision) => return Ok(revision),
            Err(Unwritten::Failed(e)) => return Err(e),
            Err(Unwritten::Taken(held)) if tokio::time::Instant::now() >= deadline => {
                let age = crate::now_ms().saturating_sub(held.at_ms);
                return Err(Error::Settings(format!(
                    "a live node named `{}` is in the cluster already (another process, started {} ms since the epoch; its heartbeat renewed {:.1} s ago): give this node another --name",
                    info.name,
                    held.started_ms,
                    age as f64 / 1e3
                )));
            }
            Err(Unwritten::Taken(_)) => {
                if !said {
                    said = true;
                    tracing::info!(
                        "node {}: the name has a heartbeat of another process; waiting up to {:.0} s for it to lapse",
                        info.name,
                        (ttl + Duration::from_secs(1)).as_secs_f64()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes this process's heartbeat (`info`'s), at its last `revision`, or at the one the
/// bucket has if that is this process's too (a write whose answer was lost): a heartbeat of
/// another process under the name is left.
pub(crate) async fn leave(
    nodes: &kv::Store,
    info: &NodeInfo,
    revision: Option<u64>,
) -> Result<(), Error> {
    let name = info.name.as_str();
    let leaving = |e: &dyn std::fmt::Display| Error::nats(format!("node {name} leaving"), e);
    match nodes.delete_expect_revision(name, revision).await {
        Ok(()) => Ok(()),
        Err(e) => match held(nodes, name).await? {
            Some((own, revision)) if own.instance == info.instance => nodes
                .delete_expect_revision(name, Some(revision))
                .await
                .map_err(|e| leaving(&e)),
            Some(_) => Err(leaving(
                &"another process's heartbeat holds the name: left as it is",
            )),
            None if revision.is_some() => Ok(()),
            None => Err(leaving(&e)),
        },
    }
}

/// The nodes whose heartbeat has not expired, by name.
pub(crate) async fn list(nodes: &kv::Store) -> Result<Vec<NodeInfo>, Error> {
    let mut names = Vec::new();
    match nodes.keys().await {
        Ok(mut keys) => {
            while let Some(key) = keys.next().await {
                names.push(key.map_err(|e| Error::nats("listing nodes", e))?);
            }
        }
        Err(e) => return Err(Error::nats("listing nodes", e)),
    }
    let mut out = Vec::new();
    for name in names {
        let entry = nodes
            .entry(name.as_str())
            .await
            .map_err(|e| Error::nats("reading a node's heartbeat", e))?;
        if let Some(entry) = entry
            && entry.operation == kv::Operation::Put
            && let Ok(info) = serde_json::from_slice::<NodeInfo>(&entry.value)
        {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
