//! The hierarchy over HTTP: tiers and their health, agents by tier, pool, role and health,
//! one agent's chain of command; kills and pool growth.
//!
//! Every query runs inside the dispatcher on the live tree ([`colony_runtime::Handle::observe`]),
//! so each is bounded: a page of agents, the children of one, one pass for the tier summary.

use crate::{App, problem, refused};
use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_core::{AgentId, health::HealthState};
use colony_runtime::Live;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// Most agents one page lists.
pub(crate) const MAX_PAGE: usize = 1_000;
/// Most agents one query looks at: a page of a rare filter over a million agents comes in
/// several requests rather than one long stall of the dispatcher.
const SCAN: usize = 100_000;

/// An agent as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct AgentView {
    pub(crate) id: u32,
    pub(crate) tier: Arc<str>,
    pub(crate) parent: Option<u32>,
    pub(crate) children: usize,
    /// Workers only: the pool's index, kind and role.
    pub(crate) pool: Option<u8>,
    pub(crate) kind: Option<Arc<str>>,
    pub(crate) role: Option<Arc<str>>,
    /// `up`, `down` (stopped, not yet restarted), `retired` (a worker taken out of its
    /// pool) or `vacant` (a supervisor whose workers are all out of service).
    pub(crate) state: &'static str,
    pub(crate) health: HealthState,
    /// A worker's circuit breaker: `closed`, `open` (out of rotation for its health) or
    /// `probation` (one attempt at a time); `null` for managers.
    pub(crate) breaker: Option<colony_core::breaker::BreakerState>,
    /// A worker's moving share of failed answers, and its response-time baseline (the slow
    /// average the predictive alert compares against), once it has answered.
    pub(crate) error_rate: Option<f64>,
    pub(crate) baseline_ms: Option<f64>,
    /// A worker's quality score, 0 to 1, from its checks and its agreement with decided
    /// outcomes (0.5 before any), and the observations it rests on.
    pub(crate) reputation: Option<f64>,
    pub(crate) reputation_observations: Option<u32>,
    /// Tasks running on a worker, or held in a manager's subtree; and how many it can hold.
    pub(crate) load: u32,
    pub(crate) capacity: u32,
    /// A worker's moving average response time.
    pub(crate) latency_ms: Option<f64>,
}

/// The pools' kinds and roles, by index, for views built inside the dispatcher.
type Kinds = Arc<Vec<(Arc<str>, Arc<str>)>>;

fn kinds(app: &App) -> Kinds {
    Arc::new(
        app.handle
            .pools()
            .into_iter()
            .map(|(spec, _)| (spec.kind, spec.role))
            .collect(),
    )
}

pub(crate) fn view(live: &Live<'_>, kinds: &Kinds, id: AgentId) -> AgentView {
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

/// One tier in the summary.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct TierView {
    pub(crate) name: Arc<str>,
    pub(crate) agents: u64,
    pub(crate) down: u64,
    /// Workers retired from their pools (in `agents`, out of service for good).
    pub(crate) retired: u64,
    pub(crate) degraded: u64,
    pub(crate) critical: u64,
    pub(crate) failed: u64,
}

/// The whole hierarchy, tier by tier. Health is a worker's: managers have none of their own.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Summary {
    pub(crate) tiers: Vec<TierView>,
    /// The agents of the top tier.
    pub(crate) roots: Vec<u32>,
}

pub(crate) async fn summary(app: &App) -> Result<Summary, colony_runtime::Error> {
    app.handle
        .observe(|live| {
            let tree = live.tree;
            let mut tiers: Vec<TierView> = tree
                .tier_names()
                .iter()
                .zip(tree.tier_sizes())
                .map(|(name, &n)| TierView {
                    name: name.clone(),
                    agents: u64::from(n),
                    ..TierView::default()
                })
                .collect();
            // Kept by the dispatcher as they change: no pass over a million agents.
            for (i, t) in tiers.iter_mut().enumerate() {
                t.down = live.down(i);
            }
            if let Some(workers) = tiers.get_mut(tree.worker_tier()) {
                [workers.degraded, workers.critical, workers.failed] = live.unhealthy();
                workers.retired = live.retired();
            }
            Summary {
                tiers,
                roots: tree.roots().map(|r| r.0).collect(),
            }
        })
        .await
}

pub(crate) async fn hierarchy(State(app): State<Arc<App>>) -> Response {
    match summary(&app).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => refused(e),
    }
}

/// `GET /v1/agents?tier=&pool=&role=&health=&state=&parent=&after=&limit=`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentQuery {
    pub(crate) tier: Option<String>,
    pub(crate) pool: Option<u8>,
    pub(crate) role: Option<String>,
    pub(crate) health: Option<HealthState>,
    pub(crate) state: Option<String>,
    /// The children of this agent.
    pub(crate) parent: Option<u32>,
    /// The page after this id.
    pub(crate) after: Option<u32>,
    pub(crate) limit: Option<usize>,
}

/// A page of agents, and the `after` of the next page when there may be more.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Page {
    pub(crate) agents: Vec<AgentView>,
    pub(crate) next_after: Option<u32>,
}

/// Agents matching `query`, in id order.
pub(crate) async fn page(app: &App, query: AgentQuery) -> Result<Page, Response> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("limit {limit} is out of range: allowed 1..={MAX_PAGE}"),
        ));
    }
    if let Some(state) = &query.state
        && !["up", "down", "retired", "vacant"].contains(&state.as_str())
    {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("state {state:?} is not one of up, down, retired, vacant"),
        ));
    }
    let kinds = kinds(app);
    let result = app
        .handle
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
        .await;
    match result {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(message)) => Err(problem(StatusCode::BAD_REQUEST, "bad-query", message)),
        Err(e) => Err(refused(e)),
    }
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<AgentQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-query", e.body_text()),
    };
    match page(&app, query).await {
        Ok(page) => Json(page).into_response(),
        Err(r) => r,
    }
}

/// One agent with its chain of command (nearest first) and its children.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Detail {
    #[serde(flatten)]
    pub(crate) agent: AgentView,
    pub(crate) ancestors: Vec<AgentView>,
    pub(crate) children_list: Vec<AgentView>,
}

/// An agent id from the path, or the 400 that says it is none.
#[allow(clippy::result_large_err)]
fn agent_id(id: &str) -> Result<AgentId, Response> {
    id.parse::<u32>().map(AgentId).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{id:?} is not an agent id"),
        )
    })
}

pub(crate) async fn detail(app: &App, id: AgentId) -> Result<Option<Detail>, Response> {
    let kinds = kinds(app);
    app.handle
        .observe(move |live| {
            let tree = live.tree;
            if !tree.contains(id) {
                return None;
            }
            Some(Detail {
                agent: view(live, &kinds, id),
                ancestors: tree.ancestors(id).map(|a| view(live, &kinds, a)).collect(),
                children_list: tree.children(id).map(|c| view(live, &kinds, c)).collect(),
            })
        })
        .await
        .map_err(refused)
}

pub(crate) async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match agent_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match detail(&app, id).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-such-agent",
            format!("there is no agent {id}"),
        ),
        Err(r) => r,
    }
}

pub(crate) async fn kill(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match agent_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app
        .handle
        .inspect(move |tree| tree.contains(id).then(|| tree.is_down(id)))
        .await
    {
        Ok(Some(false)) => {}
        Ok(Some(true)) => {
            return problem(
                StatusCode::CONFLICT,
                "not-in-service",
                format!("agent {id} is out of service already (down for a restart, or retired)"),
            );
        }
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                "no-such-agent",
                format!("there is no agent {id}"),
            );
        }
        Err(e) => return refused(e),
    }
    match app.handle.kill(id) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "killed": id.0 }))).into_response(),
        Err(e) => refused(e),
    }
}

pub(crate) async fn pools(State(app): State<Arc<App>>) -> Response {
    let loads = app.handle.pool_loads();
    let pools: Vec<_> = app
        .handle
        .pools()
        .into_iter()
        .zip(loads)
        .enumerate()
        .map(|(i, ((spec, agents), load))| {
            json!({
                "pool": i, "kind": &*spec.kind, "role": &*spec.role, "agents": agents,
                "concurrency": spec.concurrency,
                "capabilities": spec.capabilities.iter().map(|c| &**c).collect::<Vec<_>>(),
                "busy": load.busy, "waiting": load.waiting,
                "waiting-for-ms": load.waiting_for.as_secs_f64() * 1e3,
                "arrivals": load.arrivals, "ended": load.ended, "desired": load.desired,
                "forecast-per-second": load.forecast_per_sec, "forecast-error": load.forecast_error,
            })
        })
        .collect();
    Json(json!({ "pools": pools })).into_response()
}

/// The index a path names among `count` pools.
fn pool_index(pool: &str, count: usize) -> Option<usize> {
    pool.parse::<usize>().ok().filter(|&i| i < count)
}

/// The 404 for a path that names no pool, saying which there are.
fn no_such_pool(pool: &str, count: usize) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no-such-pool",
        format!("there is no pool {pool:?}: this runtime has pools 0..{count}"),
    )
}

/// `GET /v1/scaling/{pool}`: what an outside autoscaler (KEDA's metrics-api scaler, an HPA
/// through an adapter) needs of one pool: the size colony's autoscaler wants (or, for a pool
/// it does not scale, the size the reactive policy's default would step towards: enough to
/// keep its agents at most 80 % busy with nothing waiting), and the backlog.
pub(crate) async fn scaling(State(app): State<Arc<App>>, Path(pool): Path<String>) -> Response {
    let loads = app.handle.pool_loads();
    let Some(index) = pool_index(&pool, loads.len()) else {
        return no_such_pool(&pool, loads.len());
    };
    let load = &loads[index];
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let signals = colony_core::scaling::Signals {
        size: clamp(load.agents),
        busy: clamp(load.busy),
        capacity: clamp(load.capacity),
        queued: clamp(load.waiting),
        ..Default::default()
    };
    let needed = u64::from(colony_core::scaling::ScalingOptions::default().demand(&signals));
    let desired = load.desired.unwrap_or(needed);
    let utilisation = signals.utilisation();
    Json(json!({
        "pool": index, "agents": load.agents, "desired": desired,
        "autoscaled": load.desired.is_some(),
        "waiting": load.waiting, "waiting-for-ms": load.waiting_for.as_secs_f64() * 1e3,
        "busy": load.busy, "capacity": load.capacity, "utilisation": utilisation,
    }))
    .into_response()
}

/// `PUT /v1/pools/{pool}`: `{"agents": N}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resize {
    agents: u64,
}

/// Most agents one request may add or retire.
const MAX_GROWTH: u64 = 1_000_000;

pub(crate) async fn resize(
    State(app): State<Arc<App>>,
    Path(pool): Path<String>,
    body: Result<Json<crate::Object<Resize>>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let want = match crate::body(body) {
        Ok(r) => r.agents,
        Err(r) => return r,
    };
    let pools = app.handle.pools();
    let Some(index) = pool_index(&pool, pools.len()) else {
        return no_such_pool(&pool, pools.len());
    };
    let have = pools[index].1;
    let change = want.abs_diff(have);
    if change > MAX_GROWTH {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-many",
            format!(
                "changing a pool by {change} agents at once: allowed up to {MAX_GROWTH} per request"
            ),
        );
    }
    // Retired workers finish what they run; they come back first when the pool grows.
    let resized = match app.handle.set_pool_size(index, want).await {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let (agents, retired) = (resized.agents, resized.retired);
    if agents != have {
        app.history.mark(
            index,
            crate::history::Change::Manual {
                from: have,
                to: agents,
            },
        );
    }
    let added = resized.reinstated + resized.spawned;
    Json(json!({ "pool": index, "agents": agents, "added": added, "retired": retired }))
        .into_response()
}
