//! The live hierarchy as pages of agents: each agent's tier, place, pool, state, health,
//! breaker, reputation and load, read inside the dispatcher ([`Handle::observe`]) and
//! bounded (a page of matches, at most [`SCAN`] agents looked at), so that a query over a
//! million agents is several short ones. The HTTP API and a cluster node's answers to
//! `colony cluster agents` both list agents through it.

use crate::{Error, Handle, Live};
use colony_core::{AgentId, health::HealthState};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most agents one page lists.
pub const MAX_PAGE: usize = 1_000;
/// Most agents one query looks at: a page of a rare filter over a million agents comes in
/// several requests rather than one long stall of the dispatcher.
pub const SCAN: usize = 100_000;

/// An agent as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentView {
    pub id: u32,
    pub tier: Arc<str>,
    pub parent: Option<u32>,
    pub children: usize,
    /// Workers only: the pool's index, kind and role.
    pub pool: Option<u8>,
    pub kind: Option<Arc<str>>,
    pub role: Option<Arc<str>>,
    /// `up`, `down` (stopped, not yet restarted), `retired` (a worker taken out of its
    /// pool) or `vacant` (a supervisor whose workers are all out of service).
    pub state: &'static str,
    pub health: HealthState,
    /// A worker's circuit breaker: `closed`, `open` (out of rotation for its health) or
    /// `probation` (one attempt at a time); `null` for managers.
    pub breaker: Option<colony_core::breaker::BreakerState>,
    /// A worker's moving share of failed answers, and its response-time baseline (the slow
    /// average the predictive alert compares against), once it has answered.
    pub error_rate: Option<f64>,
    pub baseline_ms: Option<f64>,
    /// A worker's quality score, 0 to 1, from its checks and its agreement with decided
    /// outcomes (0.5 before any), and the observations it rests on.
    pub reputation: Option<f64>,
    pub reputation_observations: Option<u32>,
    /// Tasks running on a worker, or held in a manager's subtree; and how many it can hold.
    pub load: u32,
    pub capacity: u32,
    /// A worker's moving average response time.
    pub latency_ms: Option<f64>,
}

/// The pools' kinds and roles, by index, for views built inside the dispatcher.
pub type Kinds = Arc<Vec<(Arc<str>, Arc<str>)>>;

pub fn kinds(handle: &Handle) -> Kinds {
    Arc::new(
        handle
            .pools()
            .into_iter()
            .map(|(spec, _)| (spec.kind, spec.role))
            .collect(),
    )
}

pub fn view(live: &Live<'_>, kinds: &Kinds, id: AgentId) -> AgentView {
    let tree = live.tree;
    let tier = tree.tier(id);
    let worker = tier == tree.worker_tier();
    let pool = worker.then(|| tree.spec(id));
    let kind = pool.and_then(|p| kinds.get(p as usize));
    let (load, capacity) = tree.load(id);
    let latency = tree.latency_ema_us(id);
    let detail = worker.then(|| live.error_rate_and_baseline(id)).flatten();
    AgentView {
        id: id.0,
        tier: tree.tier_names()[tier].clone(),
        parent: tree.parent(id).map(|p| p.0),
        children: tree.children(id).len(),
        pool,
        kind: kind.map(|k| k.0.clone()),
        role: kind.map(|k| k.1.clone()),
        state: if live.is_retired(id) {
            "retired"
        } else if tree.is_down(id) {
            "down"
        } else if !worker && tree.is_vacant(id) {
            "vacant"
        } else {
            "up"
        },
        health: if worker {
            live.health(id)
        } else {
            HealthState::Healthy
        },
        breaker: worker.then(|| live.breaker(id)),
        error_rate: detail.map(|d| d.0),
        baseline_ms: detail.and_then(|d| d.1).map(|b| b.as_secs_f64() * 1e3),
        reputation: worker.then(|| live.reputation(id).score()),
        reputation_observations: worker.then(|| live.reputation(id).observations()),
        load,
        capacity,
        latency_ms: (worker && latency > 0.0).then(|| f64::from(latency) / 1e3),
    }
}

/// Which agents a page lists (`GET /v1/agents?tier=&pool=&role=&health=&state=&parent=&after=&limit=`);
/// unset fields do not filter.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    pub tier: Option<String>,
    pub pool: Option<u8>,
    pub role: Option<String>,
    pub health: Option<HealthState>,
    pub state: Option<String>,
    /// The children of this agent.
    pub parent: Option<u32>,
    /// The page after this id.
    pub after: Option<u32>,
    pub limit: Option<usize>,
}

impl AgentQuery {
    /// What is wrong with this query whatever the hierarchy: a limit out of range, or a
    /// state that is none. (A tier or a parent is checked against the hierarchy asked.)
    pub fn check(&self) -> Result<(), String> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(format!(
                "limit {limit} is out of range: allowed 1..={MAX_PAGE}"
            ));
        }
        if let Some(state) = &self.state
            && !["up", "down", "retired", "vacant"].contains(&state.as_str())
        {
            return Err(format!(
                "state {state:?} is not one of up, down, retired, vacant"
            ));
        }
        Ok(())
    }
}

/// A page of agents, and the `after` of the next page when there may be more.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Page {
    pub agents: Vec<AgentView>,
    pub next_after: Option<u32>,
}

/// Why a page of agents was not given.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The query asks for something this hierarchy does not have, or out of range.
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Runtime(#[from] Error),
}

/// Agents matching `query`, in id order.
pub async fn page(handle: &Handle, query: AgentQuery) -> Result<Page, PageError> {
    query.check().map_err(PageError::BadQuery)?;
    let limit = query.limit.unwrap_or(100);
    let kinds = kinds(handle);
    let result = handle
        .observe(move |live| {
            let tree = live.tree;
            let tier = match &query.tier {
                None => None,
                Some(name) => match tree.tier_names().iter().position(|t| **t == **name) {
                    Some(t) => Some(t),
                    None => {
                        let names: Vec<&str> = tree.tier_names().iter().map(|t| &**t).collect();
                        return Err(format!(
                            "tier {name:?} is not in this hierarchy: it has {}",
                            names.join(", ")
                        ));
                    }
                },
            };
            if let Some(p) = query.parent
                && !tree.contains(AgentId(p))
            {
                return Err(format!("there is no agent {p}"));
            }
            let start = query.after.map_or(0, |a| a.saturating_add(1));
            let candidates: Box<dyn Iterator<Item = AgentId>> = match query.parent {
                Some(p) => Box::new(tree.children(AgentId(p)).filter(move |c| c.0 >= start)),
                None => Box::new((start..tree.len() as u32).map(AgentId)),
            };
            let worker_tier = tree.worker_tier();
            let (mut agents, mut scanned, mut last) = (Vec::new(), 0, None);
            for id in candidates {
                // The dispatcher waits for this walk: it stops after a page of matches, or
                // after SCAN agents, and the caller goes on from `next-after`.
                if agents.len() == limit || scanned == SCAN {
                    break;
                }
                scanned += 1;
                last = Some(id.0);
                // The cheap tests first; a view is built for matches only.
                let t = tree.tier(id);
                let worker = t == worker_tier;
                if tier.is_some_and(|want| t != want)
                    || (query.pool.is_some() && !(worker && query.pool == Some(tree.spec(id))))
                    || (query.health.is_some()
                        && !(worker && query.health == Some(live.health(id))))
                {
                    continue;
                }
                let v = view(live, &kinds, id);
                let keep = query
                    .role
                    .as_deref()
                    .is_none_or(|r| v.role.as_deref() == Some(r))
                    && query.state.as_deref().is_none_or(|s| v.state == s);
                if keep {
                    agents.push(v);
                }
            }
            let end = match query.parent {
                Some(p) => tree.children(AgentId(p)).last().map_or(0, |c| c.0),
                None => (tree.len() as u32).saturating_sub(1),
            };
            Ok(Page {
                agents,
                next_after: last.filter(|&l| l < end),
            })
        })
        .await?;
    result.map_err(PageError::BadQuery)
}
