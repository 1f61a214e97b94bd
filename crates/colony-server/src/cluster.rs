//! `colony serve --nats`: the control plane over a cluster ([`colony_cluster`]). Any number
//! may run, each serving the whole cluster from NATS; they elect one of themselves to decide
//! every role's scaling ([`colony_cluster::scaling`]), and any of them answers for it.
//!
//! Routes (JSON; errors as on the runtime's server; scopes in brackets):
//!
//! - `POST /v1/tasks` [submit]: one task into the cluster's stream: `202 {"id", "duplicate"}`
//!   once the stream's replicas acknowledged it. An `Idempotency-Key` header becomes the
//!   task's dedupe id (per caller): a retry within the stream's duplicate window (2 minutes)
//!   gets the same id and `"duplicate": true`, and the task is kept once.
//! - `POST /v1/tasks/batch` [submit]: `{"tasks": [...]}`; `202 {"ids": [...], "duplicates": N}`.
//! - `GET /v1/tasks/{id}` [read]: `{"id", "state": "queued"}` until a node starts it, then
//!   its record (state, attempt, node, agent, error, output).
//! - `GET /v1/cluster` [read]: live nodes, unfinished tasks, each role's backlog, the stream's
//!   leader, and whether this server leads the scaling.
//! - `GET /v1/scaling/{role}` [read]: the role's scaling as the leader last decided it
//!   (`desired` nodes, with the signals and the reason), for KEDA's metrics-api scaler; `_`
//!   for tasks any agent may run; `stale` when older than three periods.
//! - `GET /v1/roles/history?since=` [read]: each role's agents, nodes, waiting and running
//!   tasks every 2 s over the last fifteen minutes, from the cluster's stream of samples
//!   (every server appends its own, one a slot is kept), so every server shows the same
//!   ([`role_history`]).
//! - `GET /metrics` [read]: the cluster's nodes, backlogs and desired sizes, read from NATS
//!   (the status at most once a second, shared: [`fresh`]), so every server shows the same.
//! - `GET /healthz` (alive), `GET /readyz` (connected to NATS): open to all.

use crate::{
    Config, Error, MAX_BATCH, Object, Server, auth, auth::Gate, body, conn, problem, tasks::NewTask,
};
use axum::{
    Json, Router,
    extract::{FromRef, Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use colony_cluster::{Cluster, Record, RecordsFrom, TaskView, Watch, leadership::Observer};
use colony_core::task::TaskState;
use serde::Deserialize;
use serde_json::json;
use std::{fmt::Write, sync::Arc, time::Duration};

mod fresh;
mod role_history;

/// Longest a reading of the cluster's status may take.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// What every handler of the cluster's control plane shares.
#[derive(Debug)]
pub(crate) struct ClusterApp {
    pub(crate) cluster: Cluster,
    pub(crate) gate: Gate,
    /// Whether this server leads the scaling.
    pub(crate) scaling: Observer,
    /// How often the scaling leader looks: a record older than three periods is stale.
    pub(crate) period: Duration,
    /// Event streams open at once, at most `max_streams`.
    streams: Arc<tokio::sync::Semaphore>,
    feed: Arc<Feed>,
    /// Each role's agents and backlog over the last 15 minutes, for the dashboard's chart.
    roles: Arc<role_history::RoleHistory>,
    /// The cluster's status, read at most once a second for every reader here.
    latest: fresh::Fresh<colony_cluster::Status, colony_cluster::Error>,
    max_streams: usize,
    /// The agents' shared memory, when one every replica reaches was given (in NATS, or on
    /// a Chroma server), served under `/v1/memory` as a runtime's server serves its own.
    memory: Option<Arc<dyn colony_memory::Memory>>,
    memory_calls: Arc<tokio::sync::Semaphore>,
}

impl crate::memory::Keeps for ClusterApp {
    fn memory(&self) -> Option<&Arc<dyn colony_memory::Memory>> {
        self.memory.as_ref()
    }
    fn memory_calls(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.memory_calls
    }
}

impl ClusterApp {
    /// The cluster's status as read within the last second (or now, once, for every caller
    /// waiting): the dashboard's panels, `/v1/cluster`, `/metrics` and the roles' sampler
    /// share it.
    pub(crate) async fn status(
        &self,
    ) -> Result<Arc<colony_cluster::Status>, colony_cluster::Error> {
        // Bounded: a read stuck on NATS (a listing of the heartbeats waits out a reconnect)
        // would hold every reader here.
        self.latest
            .get(|| async {
                tokio::time::timeout(STATUS_WAIT, self.cluster.status())
                    .await
                    .unwrap_or_else(|_| {
                        Err(colony_cluster::Error::Nats {
                            what: "the cluster".into(),
                            detail: format!("no answer within {} s", STATUS_WAIT.as_secs()),
                        })
                    })
            })
            .await
    }
}

impl FromRef<Arc<ClusterApp>> for Gate {
    fn from_ref(app: &Arc<ClusterApp>) -> Gate {
        app.gate.clone()
    }
}

/// Starts serving the cluster as `config` says (its tokens, TLS, rate limit, connection
/// limits, and the memory it serves, which must be one every replica reaches; it runs no
/// workflows); `scaling` says whether this process
/// leads the scaling (see [`colony_cluster::scaling::Scaling`]).
pub async fn serve_cluster(
    cluster: Cluster,
    scaling: Observer,
    period: Duration,
    config: Config,
) -> Result<Server, Error> {
    let addr = config.addr;
    if config.tokens.is_none() && !addr.ip().is_loopback() {
        return Err(Error::NotLoopback(addr));
    }
    let tls = match &config.tls {
        Some(tls) => Some(crate::rustls_config(tls)?),
        None => None,
    };
    let tokens = config.tokens.is_some();
    if config.memory.is_some() {
        // Its calls count into the process's recorder, which `/metrics` adds.
        crate::live::install_metrics();
    }
    // The history starts as far back as the dashboard's chart reaches: read again from the
    // records, so that a server started anew shows what went before it.
    let history_start = now_ms().saturating_sub(KEEP_SECONDS as u64 * 1000);
    let cluster_for_feed = cluster.clone();
    let app = Arc::new(ClusterApp {
        cluster,
        gate: Gate::new(config.tokens, config.rate_limit, tls.is_some()),
        scaling,
        period,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
        max_streams: config.max_streams,
        roles: Arc::default(),
        latest: fresh::Fresh::default(),
        feed: Feed::start(cluster_for_feed, history_start).await,
        memory: config.memory,
        memory_calls: Arc::new(tokio::sync::Semaphore::new(crate::READS)),
    });
    role_history::sample_every(Arc::downgrade(&app));
    role_history::follow(Arc::downgrade(&app));
    let router = router(app);
    let bind = |source| Error::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(warning) = crate::plain_text_warning(addr, tokens, tls.is_some()) {
        tracing::warn!("{warning}");
    }
    let limits = config.connections;
    let task = colony_runtime::spawner::Spawner::spawn("http-server", async move {
        conn::serve(listener, router, tls, limits).await;
    });
    Ok(Server { addr, scheme, task })
}

fn router(app: Arc<ClusterApp>) -> Router {
    let scoped = |scope, routes| crate::scoped(&app.gate, scope, routes);
    let read = Router::new()
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/cluster", get(status))
        .route("/v1/scaling/{role}", get(scaling))
        .route("/v1/events", get(events))
        .route("/v1/history", get(history))
        .route("/v1/roles/history", get(role_history::history))
        .route("/v1/runs", get(runs))
        .route("/v1/agents", get(agents))
        .route("/v1/memory", get(crate::memory::list::<ClusterApp>))
        .route(
            "/v1/memory/documents",
            get(crate::memory::get::<ClusterApp>),
        )
        .route(
            "/v1/memory/search",
            post(crate::memory::search::<ClusterApp>),
        )
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::cluster::read_routes());
    let submit = Router::new()
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/batch", post(submit_batch))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route(
            "/v1/memory/documents",
            post(crate::memory::put::<ClusterApp>),
        )
        .route(
            "/v1/memory/delete",
            post(crate::memory::delete::<ClusterApp>),
        );
    let admin = Router::new().route(
        "/v1/memory/rebuild",
        post(crate::memory::rebuild::<ClusterApp>),
    );
    let open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/login", post(auth::login))
        .merge(crate::dashboard::cluster::open_routes());
    let router = Router::new()
        .merge(scoped(auth::Scope::Read, read))
        .merge(scoped(auth::Scope::Submit, submit))
        .merge(scoped(auth::Scope::Admin, admin))
        .merge(open);
    crate::guarded(router, app.gate.clone()).with_state(app)
}

/// A cluster refusal or failure as an HTTP status.
fn failed(error: colony_cluster::Error) -> Response {
    let message = error.to_string();
    let (status, code) = status_of(&error);
    match error {
        // What was accepted before the failure goes with it, so that it is not sent again.
        colony_cluster::Error::Partly { accepted, .. } => {
            let body = serde_json::json!({
                "error": { "code": code, "message": message, "accepted": accepted }
            });
            (status, Json(body)).into_response()
        }
        _ => problem(status, code, message),
    }
}

/// The status and code of the problem `error` is.
fn status_of(error: &colony_cluster::Error) -> (StatusCode, &'static str) {
    use colony_cluster::Error as E;
    match error {
        E::Partly { error, .. } => status_of(error),
        E::Unknown { .. } => (StatusCode::NOT_FOUND, "unknown-task"),
        E::BadRole { .. } | E::Task(_) | E::Settings(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "refused")
        }
        E::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
        E::Lost { .. } => (StatusCode::CONFLICT, "lost"),
        E::NoJournal { .. } => (StatusCode::NOT_FOUND, "no-journal"),
        E::Connect { .. } | E::NoJetStream { .. } | E::Nats { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "nats-unavailable")
        }
    }
}

/// A task the cluster can carry (at most the cluster's payload), and how it is decided if
/// by vote.
#[allow(clippy::result_large_err)]
fn spec(
    task: NewTask,
    index: Option<usize>,
) -> Result<(colony_core::task::TaskSpec, Option<colony_cluster::Decide>), Response> {
    let at = index.map_or_else(String::new, |i| format!("task {i}: "));
    let refused = |e: String| {
        problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            format!("{at}{e}"),
        )
    };
    let (spec, decide) = task.spec().map_err(refused)?;
    let decide = decide
        .map(crate::decisions::NewDecision::for_cluster)
        .transpose()
        .map_err(refused)?;
    Ok((spec, decide))
}

/// The dedupe id of a request's `Idempotency-Key`, per caller, so that two callers' keys
/// never meet.
#[allow(clippy::result_large_err)]
fn dedupe_id(
    headers: &HeaderMap,
    caller: Option<&axum::Extension<auth::Caller>>,
) -> Result<Option<String>, Response> {
    let Some(key) = crate::tasks::idempotency_key(headers)? else {
        return Ok(None);
    };
    let caller = caller.map_or("", |c| &*c.name);
    let digest = {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(caller.as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        hash.finalize()
    };
    Ok(Some(
        digest[..16].iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

async fn submit(
    State(app): State<Arc<ClusterApp>>,
    caller: Option<axum::Extension<auth::Caller>>,
    headers: HeaderMap,
    task: Result<Json<Object<NewTask>>, JsonRejection>,
) -> Response {
    let id = match dedupe_id(&headers, caller.as_ref()) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let task = match body(task) {
        Ok(task) => task,
        Err(response) => return response,
    };
    let (spec, decide) = match spec(task, None) {
        Ok(spec) => spec,
        Err(response) => return response,
    };
    let submitted = match &decide {
        Some(decide) => app
            .cluster
            .submit_decided(&spec, decide, id)
            .await
            .map(|s| vec![s]),
        None => {
            let ids = id.map(|id| vec![id]);
            app.cluster.submit(&[spec], ids.as_deref()).await
        }
    };
    match submitted {
        Ok(submitted) => match submitted.first() {
            Some(s) => (
                StatusCode::ACCEPTED,
                Json(json!({"id": s.id, "duplicate": s.duplicate})),
            )
                .into_response(),
            None => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not-accepted",
                "the cluster answered nothing for the task",
            ),
        },
        Err(e) => failed(e),
    }
}

/// `POST /v1/tasks/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    tasks: Vec<NewTask>,
    /// Up to this many of the tasks (of one role and priority, one after another) in one
    /// message of the cluster's stream.
    #[serde(default)]
    bundle: Option<u64>,
}

async fn submit_batch(
    State(app): State<Arc<ClusterApp>>,
    caller: Option<axum::Extension<auth::Caller>>,
    headers: HeaderMap,
    batch: Result<Json<Object<Batch>>, JsonRejection>,
) -> Response {
    let id = match dedupe_id(&headers, caller.as_ref()) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let batch = match body(batch) {
        Ok(batch) => batch,
        Err(response) => return response,
    };
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-batch",
            format!(
                "a batch holds from 1 to {MAX_BATCH} tasks, not {}",
                batch.tasks.len()
            ),
        );
    }
    let mut specs = Vec::with_capacity(batch.tasks.len());
    for (i, task) in batch.tasks.into_iter().enumerate() {
        match spec(task, Some(i)) {
            Ok((spec, None)) => specs.push(spec),
            Ok((_, Some(_))) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "refused",
                    format!(
                        "task {i}: a batch carries no votes here: submit a task decided by vote on its own, to /v1/tasks"
                    ),
                );
            }
            Err(response) => return response,
        }
    }
    let bundle = match batch.bundle {
        None | Some(1) => None,
        Some(n @ 2..=512) => usize::try_from(n).ok(),
        Some(n) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-batch",
                format!("bundle: from 1 to 512 tasks a message, not {n}"),
            );
        }
    };
    let submitted = match bundle {
        // One key for the batch: each message's id is the key's and its place.
        Some(n) => app.cluster.submit_bundled(&specs, n, id.as_deref()).await,
        None => {
            // One key for the batch: each task's id is the key's and its place in the batch.
            let ids: Option<Vec<String>> =
                id.map(|id| (0..specs.len()).map(|i| format!("{id}.{i}")).collect());
            app.cluster.submit(&specs, ids.as_deref()).await
        }
    };
    match submitted {
        Ok(submitted) => {
            let duplicates = submitted.iter().filter(|s| s.duplicate).count();
            let ids: Vec<u64> = submitted.iter().map(|s| s.id).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({"ids": ids, "duplicates": duplicates})),
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}

/// A task id from a path, or the 400 that says what is wrong with it.
#[allow(clippy::result_large_err)]
fn task_id(id: &str) -> Result<u64, Response> {
    match id.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!(
                "task id {:?} is not a number from 1 up",
                colony_core::text::shorten(id, 40)
            ),
        )),
    }
}

async fn task(State(app): State<Arc<ClusterApp>>, Path(id): Path<String>) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(response) => return response,
    };
    match app.cluster.task(id).await {
        Ok(TaskView::Queued) => Json(json!({"id": id, "state": "queued"})).into_response(),
        Ok(TaskView::Row(row)) => Json(row.json(id)).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /v1/runs` [read]: the workflow runs kept in the cluster, the most recent first.
async fn runs(State(app): State<Arc<ClusterApp>>) -> Response {
    match app.cluster.runs(100).await {
        Ok(runs) => {
            let runs: Vec<serde_json::Value> =
                runs.iter().map(|(id, meta)| meta.json(id)).collect();
            Json(json!({ "runs": runs })).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `POST /v1/tasks/{id}/cancel` [submit]: `200 {"id", "outcome": "cancelled", "was"}`, or
/// `409 already-ended` with the state it ended in.
async fn cancel(
    State(app): State<Arc<ClusterApp>>,
    Path(id): Path<String>,
    caller: Option<axum::Extension<auth::Caller>>,
) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let by = caller.map_or_else(
        || "a caller on loopback".to_owned(),
        |c| format!("token {:?}", c.name),
    );
    // Run to its end even if the caller goes: a record written `cancelled` whose message is
    // left in the stream is a cancel half done.
    let cluster = app.cluster.clone();
    let cancelling = colony_runtime::spawner::Spawner::spawn("cancel-task", async move {
        cluster
            .cancel(id, &format!("cancelled through the API by {by}"))
            .await
    });
    let Ok(Some(outcome)) = cancelling.await else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("task {id}: the cancel stopped before its end"),
        );
    };
    match outcome {
        Ok(colony_cluster::Cancel::AlreadyEnded { state }) => problem(
            StatusCode::CONFLICT,
            "already-ended",
            format!("task {id} ended already: {}", state.as_str()),
        ),
        Ok(outcome) => {
            let mut v = serde_json::to_value(&outcome).unwrap_or_default();
            v["id"] = id.into();
            Json(v).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `POST /v1/runs/{id}/cancel` [submit]: the workflow run cancelled for good, then its
/// tasks in the cluster: `200 {"id", "outcome": "cancelled", "again", "why", "cancelled",
/// "ended", "failed"}` (`again`: it was cancelled already, its tasks cancelled again);
/// `409 already-done` when it finished; `404 unknown-run`.
async fn cancel_run(
    State(app): State<Arc<ClusterApp>>,
    Path(id): Path<String>,
    caller: Option<axum::Extension<auth::Caller>>,
) -> Response {
    use colony_cluster::runs::RunCancel;
    let book = match app.cluster.run_book(&id).await {
        Ok(book) => book,
        Err(e) => return failed(e),
    };
    let by = caller.map_or_else(
        || "a caller on loopback".to_owned(),
        |c| format!("token {:?}", c.name),
    );
    // Run to its end even if the caller goes: a cancel cut short leaves tasks running.
    let cluster = app.cluster.clone();
    let cancelling = colony_runtime::spawner::Spawner::spawn("cancel-run", async move {
        book.cancel(&cluster, &format!("cancelled through the API by {by}"))
            .await
    });
    let Ok(Some(outcome)) = cancelling.await else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("run {id}: the cancel stopped before its end"),
        );
    };
    match outcome {
        Ok(RunCancel::Unknown) => problem(
            StatusCode::NOT_FOUND,
            "unknown-run",
            format!("run {id}: no such run in the cluster"),
        ),
        Ok(RunCancel::AlreadyDone { meta }) => problem(
            StatusCode::CONFLICT,
            "already-done",
            format!(
                "run {id} finished already: {}",
                match meta.code {
                    Some(0) => "succeeded",
                    _ => "failed",
                }
            ),
        ),
        Ok(outcome) => {
            let mut v = serde_json::to_value(&outcome).unwrap_or_default();
            v["id"] = id.into();
            Json(v).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `GET /v1/agents?node=&tier=&pool=&role=&health=&state=&parent=&after=&limit=`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    /// Only this node's agents (`after` and `parent` are ids of one node's).
    node: Option<String>,
    tier: Option<String>,
    pool: Option<u8>,
    role: Option<String>,
    health: Option<colony_core::health::HealthState>,
    state: Option<String>,
    parent: Option<u32>,
    after: Option<u32>,
    limit: Option<usize>,
}

/// Every live node's page of agents (or one node's), each node answering for its own:
/// `{"nodes": [{"node", "agents", "next-after", "error"}]}`.
async fn agents(
    State(app): State<Arc<ClusterApp>>,
    query: Result<axum::extract::Query<AgentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-query", e.body_text()),
    };
    let node = q.node;
    let query = colony_runtime::agents::AgentQuery {
        tier: q.tier,
        pool: q.pool,
        role: q.role,
        health: q.health,
        state: q.state,
        parent: q.parent,
        after: q.after,
        limit: q.limit,
    };
    if let Err(message) = query.check() {
        return problem(StatusCode::BAD_REQUEST, "bad-query", message);
    }
    if node.is_none() && (query.after.is_some() || query.parent.is_some()) {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "after and parent are agent ids of one node: name it with node",
        );
    }
    match app.cluster.agents(node.as_deref(), &query).await {
        // The one node asked gave no page: its error is the answer.
        Ok(nodes) if node.is_some() && nodes.iter().all(|n| n.error.is_some()) => {
            let why = nodes
                .iter()
                .filter_map(|n| n.error.as_deref())
                .collect::<Vec<_>>();
            problem(StatusCode::BAD_GATEWAY, "node-failed", why.join("; "))
        }
        Ok(nodes) => Json(json!({ "nodes": nodes })).into_response(),
        Err(e @ colony_cluster::Error::Settings(_)) => {
            problem(StatusCode::NOT_FOUND, "no-such-node", e.to_string())
        }
        Err(e) => failed(e),
    }
}

async fn status(State(app): State<Arc<ClusterApp>>) -> Response {
    match app.status().await {
        Ok(status) => {
            let mut v = serde_json::to_value(&status).unwrap_or_default();
            v["scaling"] = json!({
                "this-server": app.scaling.holder(),
                "leading": app.scaling.term().is_some(),
                "term": app.scaling.term(),
            });
            v["now-ms"] = now_ms().into();
            Json(v).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn scaling(State(app): State<Arc<ClusterApp>>, Path(role): Path<String>) -> Response {
    match app.cluster.scaling(&role).await {
        Ok(Some(record)) => {
            let age = now_ms().saturating_sub(record.at_ms);
            let mut v = serde_json::to_value(&record).unwrap_or_default();
            v["age-ms"] = age.into();
            v["stale"] = (u128::from(age) > 3 * app.period.as_millis()).into();
            Json(v).into_response()
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-scaling",
            format!(
                "no scaling decided for role {:?} yet: the leader decides each role whose consumer exists (a node serving it has joined)",
                colony_core::text::shorten(&role, 80)
            ),
        ),
        Err(e @ (colony_cluster::Error::BadRole { .. } | colony_cluster::Error::Settings(_))) => {
            problem(StatusCode::BAD_REQUEST, "bad-role", e.to_string())
        }
        Err(e) => failed(e),
    }
}

/// One watch of the task records per server, for as long as it runs: it counts them for
/// `/v1/history` ([`Seen`]) and tells the event streams the small events, not every record's
/// output, so NATS serves one watch, not one per browser. It starts as far back as the
/// history keeps (those records are the history's, not the streams'), and a watch made again
/// (NATS was out of reach) goes on after the last record read, so that none written
/// meanwhile is missed.
#[derive(Debug)]
pub(crate) struct Feed {
    tx: tokio::sync::broadcast::Sender<FeedEvent>,
    seen: Seen,
    /// Where the first watch starts, in milliseconds since the epoch.
    start_ms: u64,
    /// The revision of the last record read; 0 before the first.
    last: std::sync::atomic::AtomicU64,
    /// The bucket's last write when the first watch was made: records up to it are the
    /// history's, not the streams'.
    history_until: std::sync::OnceLock<u64>,
    /// Whether the first watch has read the history whole.
    complete: tokio::sync::watch::Sender<bool>,
}

/// How long a server waits, as it starts, for its history to be read before it listens.
const HISTORY_READ: Duration = Duration::from_secs(10);

/// The most records a watch reads of the past, the history's or what was written while
/// NATS was out of reach: a busy cluster writes millions in the history's span.
const MOST_RECORDS_BACK: u64 = 200_000;

/// An event of the feed for the streams: a `task` record, as sent, or the watch `failed`
/// (it is made again).
#[derive(Clone, Debug)]
enum FeedEvent {
    Task(Arc<str>),
    Failed(Arc<str>),
}

impl Feed {
    /// The feed of `cluster`'s records, its history from `start_ms`, watching from now on.
    /// The first watch is made before this returns (unless NATS is out of reach: then it is
    /// made as soon as it can be), so that an event stream opened once the server listens
    /// gets every record written after.
    /// It then waits for the history to be read, up to [`HISTORY_READ`], so that a
    /// dashboard opened at once sees it whole (`/v1/history` says whether it is).
    async fn start(cluster: Cluster, start_ms: u64) -> Arc<Self> {
        let feed = Arc::new(Self {
            tx: tokio::sync::broadcast::channel(1024).0,
            seen: Seen::new(start_ms),
            start_ms,
            last: std::sync::atomic::AtomicU64::new(0),
            history_until: std::sync::OnceLock::new(),
            complete: tokio::sync::watch::channel(false).0,
        });
        let from = feed.from();
        let first = cluster
            .records(from, MOST_RECORDS_BACK)
            .await
            .map(|watch| (from, watch));
        let watching = feed.clone();
        let mut complete = feed.complete.subscribe();
        colony_runtime::spawner::Spawner::spawn("cluster-feed", async move {
            watching.watch(cluster, first).await;
        });
        let _ = tokio::time::timeout(HISTORY_READ, complete.wait_for(|c| *c)).await;
        feed
    }

    /// Whether the history has been read whole.
    fn complete(&self) -> bool {
        *self.complete.borrow()
    }

    /// A receiver of the feed: what is read from now on (once the watch is made, when NATS
    /// was out of reach).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FeedEvent> {
        self.tx.subscribe()
    }

    /// Where the next watch starts: the history's start, or after the last record read.
    fn from(&self) -> RecordsFrom {
        match self.last.load(std::sync::atomic::Ordering::Relaxed) {
            0 => RecordsFrom::Since(self.start_ms),
            last => RecordsFrom::After(last),
        }
    }

    async fn watch(
        &self,
        cluster: Cluster,
        first: Result<(RecordsFrom, Watch), colony_cluster::Error>,
    ) {
        use futures::StreamExt;
        let failed = |e: &colony_cluster::Error| {
            FeedEvent::Failed(json!({"error": e.to_string()}).to_string().into())
        };
        let mut first = Some(first);
        loop {
            let watch = match first.take() {
                Some(made) => made,
                None => {
                    let from = self.from();
                    cluster
                        .records(from, MOST_RECORDS_BACK)
                        .await
                        .map(|watch| (from, watch))
                }
            };
            match watch {
                Ok((
                    from,
                    Watch {
                        mut records,
                        cut,
                        until,
                        backlog,
                    },
                )) => {
                    let history = *self.history_until.get_or_init(|| until);
                    if backlog == 0 {
                        self.complete.send_replace(true);
                    }
                    let mut first = matches!(from, RecordsFrom::Since(_)) && cut;
                    while let Some(record) = records.next().await {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                let _ = self.tx.send(failed(&e));
                                continue;
                            }
                        };
                        let Record {
                            id,
                            row,
                            revision,
                            written_ms,
                            caught_up,
                            ..
                        } = record;
                        self.last
                            .store(revision, std::sync::atomic::Ordering::Relaxed);
                        if std::mem::take(&mut first) {
                            // Cut: the history starts with the first record read.
                            self.seen.since(written_ms);
                        }
                        let text: Arc<str> = json!({
                            "id": id,
                            "state": row.state,
                            "attempt": row.attempt,
                            "node": row.node,
                            "error": row.error.as_deref()
                                .map(|e| colony_core::text::shorten(e, 300)),
                            "at-ms": row.at_ms,
                        })
                        .to_string()
                        .into();
                        // A second the server's clock has not reached yet (the bucket's
                        // leader's is ahead) is counted as the server's current one.
                        let second = written_ms.min(now_ms()) / 1000;
                        self.seen.record(second, row.state, text.clone());
                        if revision > history {
                            let _ = self.tx.send(FeedEvent::Task(text));
                        }
                        if caught_up {
                            self.complete.send_replace(true);
                        }
                    }
                }
                Err(e) => {
                    let _ = self.tx.send(failed(&e));
                }
            }
            // The watch ended (NATS out of reach): made again after a pause.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `GET /v1/events`: the cluster's task records as they are written (`task` events: the
/// task's id, state, attempt, node, and error; `failed` when the records cannot be watched,
/// then `task` again once they can), for the dashboard and any watcher. A stream that falls
/// more than 1,024 events behind skips what it missed.
async fn events(State(app): State<Arc<ClusterApp>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    // Held for as long as the stream is open.
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            format!(
                "{} event streams are open, the most this server keeps: try again later",
                app.max_streams
            ),
        );
    };
    let rx = app.feed.subscribe();
    let stream = futures::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(FeedEvent::Task(data)) => Event::default().event("task").data(&*data),
                Ok(FeedEvent::Failed(data)) => Event::default().event("failed").data(&*data),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(event), (rx, permit)));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn readyz(State(app): State<Arc<ClusterApp>>) -> Response {
    if app.cluster.connected() {
        "ready".into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-connected",
            format!("not connected to NATS at {}", app.cluster.url()),
        )
    }
}

/// Seconds of tasks ended kept for `/v1/history`: the dashboard's chart spans as many, as a
/// runtime's does.
const KEEP_SECONDS: usize = 900;
/// Latest records kept for `/v1/history`: the dashboard's list shows as many.
const KEEP_RECORDS: usize = 100;

/// What a server read of the task records, from fifteen minutes before it started: tasks
/// ended each second over the last fifteen minutes, counts since, and the latest records. A
/// dashboard opened later starts from it rather than from nothing.
#[derive(Debug)]
struct Seen {
    inner: std::sync::Mutex<SeenInner>,
}

#[derive(Debug)]
struct SeenInner {
    since_ms: u64,
    /// Oldest first: second (since the epoch), succeeded, failed (or dead-lettered).
    seconds: std::collections::VecDeque<(u64, u64, u64)>,
    /// Oldest first, each as the event stream sends it.
    records: std::collections::VecDeque<Arc<str>>,
    succeeded: u64,
    failed: u64,
}

impl Seen {
    fn new(since_ms: u64) -> Self {
        Self {
            inner: std::sync::Mutex::new(SeenInner {
                since_ms,
                seconds: Default::default(),
                records: Default::default(),
                succeeded: 0,
                failed: 0,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The history starts later than asked: at `ms`.
    fn since(&self, ms: u64) {
        self.inner().since_ms = ms;
    }

    /// A record written at second `at` (since the epoch), most likely the latest: the bucket
    /// stamps its writes in order by its leader's clock, so an earlier one comes only when
    /// that leader changed and its clock was ahead.
    fn record(&self, at: u64, state: TaskState, text: Arc<str>) {
        let mut inner = self.inner();
        let (succeeded, failed) = match state {
            TaskState::Succeeded => (1, 0),
            TaskState::Failed | TaskState::DeadLettered => (0, 1),
            _ => (0, 0),
        };
        inner.succeeded += succeeded;
        inner.failed += failed;
        let latest = inner.seconds.back().map_or(at, |s| s.0.max(at));
        match inner.seconds.binary_search_by_key(&at, |s| s.0) {
            Ok(i) => {
                let second = &mut inner.seconds[i];
                second.1 += succeeded;
                second.2 += failed;
            }
            Err(_) if at + KEEP_SECONDS as u64 <= latest => {}
            Err(i) => inner.seconds.insert(i, (at, succeeded, failed)),
        }
        while inner
            .seconds
            .front()
            .is_some_and(|s| s.0 + KEEP_SECONDS as u64 <= latest)
        {
            inner.seconds.pop_front();
        }
        inner.records.push_back(text);
        if inner.records.len() > KEEP_RECORDS {
            inner.records.pop_front();
        }
    }

    /// The view `/v1/history` answers, as of second `now`: the seconds of the last fifteen
    /// minutes, oldest first, `now` (still counting) the last.
    fn view(&self, now: u64) -> serde_json::Value {
        let inner = self.inner();
        let seconds: Vec<serde_json::Value> = inner
            .seconds
            .iter()
            .filter(|s| s.0 <= now && s.0 + (KEEP_SECONDS as u64) > now)
            .map(|&(t, succeeded, failed)| json!([t, succeeded, failed]))
            .collect();
        let records: Vec<serde_json::Value> = inner
            .records
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        json!({
            "since-ms": inner.since_ms,
            "now": now,
            "seconds": seconds,
            "succeeded": inner.succeeded,
            "failed": inner.failed,
            "records": records,
        })
    }
}

/// `GET /v1/history`: what this server read of the task records since `since-ms` (fifteen
/// minutes before it started, or later when that span held too many): tasks that succeeded
/// and failed each second over the last fifteen minutes, by the second the bucket took
/// their records (`seconds`, `[second, succeeded, failed]` oldest first, the current second
/// `now` the last, still counting), the counts since, the latest 100 records as
/// `/v1/events` sends them, oldest first, and whether the records from before the server
/// started have been read whole (`complete`).
async fn history(State(app): State<Arc<ClusterApp>>) -> Response {
    let mut view = app.feed.seen.view(now_ms() / 1000);
    view["complete"] = app.feed.complete().into();
    Json(view).into_response()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A label value as Prometheus's text format writes it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(app): State<Arc<ClusterApp>>) -> Response {
    let status = match app.status().await {
        Ok(status) => status,
        Err(e) => return failed(e),
    };
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "colony_cluster_nodes",
        "gauge",
        "Nodes whose heartbeat is live.",
    );
    let _ = writeln!(out, "colony_cluster_nodes {}", status.nodes.len());
    family(
        &mut out,
        "colony_cluster_unfinished",
        "gauge",
        "Tasks in the stream not yet ended, waiting or running (each task of a bundle counted).",
    );
    let _ = writeln!(out, "colony_cluster_unfinished {}", status.unfinished);
    type Of = fn(&colony_cluster::NodeInfo) -> u64;
    let per_node: [(&str, &str, &str, Of); 5] = [
        (
            "colony_cluster_node_agents",
            "gauge",
            "Agents on the node.",
            |n| n.agents,
        ),
        (
            "colony_cluster_node_running",
            "gauge",
            "Attempts running on the node.",
            |n| n.running,
        ),
        (
            "colony_cluster_node_attempts_ended_total",
            "counter",
            "Attempts the node ended since it started.",
            |n| n.ended,
        ),
        (
            "colony_cluster_node_fenced_total",
            "counter",
            "Results of the node refused because another node held the task by then.",
            |n| n.fenced,
        ),
        (
            "colony_cluster_node_draining",
            "gauge",
            "1 while the node drains.",
            |n| u64::from(n.draining),
        ),
    ];
    for (name, kind, help, of) in per_node {
        family(&mut out, name, kind, help);
        for node in &status.nodes {
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", label(&node.name), of(node));
        }
    }
    family(
        &mut out,
        "colony_cluster_role_waiting",
        "gauge",
        "Tasks of the role waiting for a node.",
    );
    for role in &status.roles {
        let _ = writeln!(
            out,
            "colony_cluster_role_waiting{{role=\"{}\"}} {}",
            label(&role.role),
            role.waiting
        );
    }
    family(
        &mut out,
        "colony_cluster_role_running",
        "gauge",
        "Tasks of the role delivered to a node and not yet ended.",
    );
    for role in &status.roles {
        let _ = writeln!(
            out,
            "colony_cluster_role_running{{role=\"{}\"}} {}",
            label(&role.role),
            role.running
        );
    }
    family(
        &mut out,
        "colony_cluster_role_desired_nodes",
        "gauge",
        "Nodes the scaling leader wants for the role.",
    );
    for role in &status.roles {
        if let Ok(Some(record)) = app.cluster.scaling(&role.role).await {
            let _ = writeln!(
                out,
                "colony_cluster_role_desired_nodes{{role=\"{}\"}} {}",
                label(&role.role),
                record.desired
            );
        }
    }
    family(
        &mut out,
        "colony_cluster_scaling_leader",
        "gauge",
        "1 while this server leads the scaling.",
    );
    let _ = writeln!(
        out,
        "colony_cluster_scaling_leader {}",
        u8::from(app.scaling.term().is_some())
    );
    // The memory's own (searches, documents stored, the cache), this server's.
    if app.memory.is_some() {
        out.push_str(&crate::live::rendered());
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch failed part-way answers as its failure does, with the ids it had accepted.
    #[tokio::test]
    async fn a_batch_failed_part_way_says_what_it_accepted() {
        let partly = colony_cluster::Error::Partly {
            accepted: vec![4, 5],
            of: 3,
            error: Box::new(colony_cluster::Error::Nats {
                what: "the stream's acknowledgement of a task".into(),
                detail: "timed out".into(),
            }),
        };
        let response = failed(partly);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "nats-unavailable");
        assert_eq!(body["error"]["accepted"], json!([4, 5]));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("timed out") && message.contains("2 of the 3 tasks were accepted"),
            "{message}"
        );
    }

    #[test]
    fn the_history_keeps_fifteen_minutes_of_seconds_and_the_latest_records() {
        let seen = Seen::new(1_000);
        let record =
            |at, state, n: u64| seen.record(at, state, json!({ "id": n }).to_string().into());
        record(10, TaskState::Succeeded, 1);
        record(10, TaskState::Running, 2);
        record(10, TaskState::Failed, 3);
        record(12, TaskState::DeadLettered, 4);
        record(12, TaskState::Succeeded, 5);
        assert_eq!(seen.view(11)["seconds"], json!([[10, 1, 1]]));
        let view = seen.view(12);
        assert_eq!(
            view["seconds"],
            json!([[10, 1, 1], [12, 1, 1]]),
            "the second still counting too"
        );
        assert_eq!(
            (view["succeeded"].as_u64(), view["failed"].as_u64()),
            (Some(2), Some(2))
        );
        // A record stamped earlier than the last (the bucket's leader changed) goes in its
        // own second.
        record(11, TaskState::Succeeded, 7);
        record(10, TaskState::Succeeded, 8);
        assert_eq!(
            seen.view(12)["seconds"],
            json!([[10, 2, 1], [11, 1, 0], [12, 1, 1]])
        );
        // Fifteen minutes on, the first seconds are gone; the counts since stay; a record
        // older than that is counted but has no second.
        record(910, TaskState::Succeeded, 6);
        record(10, TaskState::Failed, 9);
        let view = seen.view(910);
        assert_eq!(
            view["seconds"],
            json!([[11, 1, 0], [12, 1, 1], [910, 1, 0]])
        );
        assert_eq!(view["succeeded"], 5);
        assert_eq!(view["failed"], 3);
        for n in 0..150 {
            record(911, TaskState::Running, 100 + n);
        }
        let records = seen.view(912)["records"].as_array().unwrap().clone();
        assert_eq!(records.len(), KEEP_RECORDS);
        assert_eq!(
            records[0]["id"], 150,
            "the oldest of the latest hundred first"
        );
        assert_eq!(records[99]["id"], 249);
        assert_eq!(seen.view(912)["since-ms"], 1_000);
        // A history cut short starts later.
        seen.since(5_000);
        assert_eq!(seen.view(912)["since-ms"], 5_000);
    }
}
