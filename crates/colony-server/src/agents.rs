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
use colony_core::AgentId;
use colony_runtime::agents::{AgentQuery, AgentView, Page, PageError, kinds, view};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

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

/// Agents matching `query`, in id order; a bad query's 400, or the runtime's refusal.
#[allow(clippy::result_large_err)]
pub(crate) async fn page(app: &App, query: AgentQuery) -> Result<Page, Response> {
    colony_runtime::agents::page(&app.handle, query)
        .await
        .map_err(|e| match e {
            PageError::BadQuery(message) => problem(StatusCode::BAD_REQUEST, "bad-query", message),
            PageError::Runtime(e) => refused(e),
        })
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
    let kinds = kinds(&app.handle);
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
