//! The control plane: an HTTP API over a running [`colony_runtime::Runtime`], and its
//! Prometheus metrics.
//!
//! Routes (JSON in and out; every error is `{"error": {"code": ..., "message": ...}}` with a
//! 4xx status for anything the caller got wrong):
//!
//! - `POST /v1/tasks`: one task; `202 {"id": N}`.
//! - `POST /v1/tasks/batch`: `{"tasks": [...]}`; `202 {"first": N, "count": M}`.
//! - `GET /v1/tasks/{id}`: the task's state, attempts, agent, output and error.
//! - `GET /v1/stats`: the runtime's counters.
//! - `GET /v1/events`: server-sent events: a `snapshot` of the counters every second, and
//!   `notable` events as they happen (health alerts, escalations); never one event per task
//!   (steals, rebalancing and restarts are counted in the snapshot).
//! - `GET /metrics`: Prometheus text.
//! - `GET /healthz`: `ok`.
//! - `GET /openapi.json`: the OpenAPI document of all of this.
//!
//! The server listens on loopback only: without authentication (not built yet) it refuses any
//! other address.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use colony_core::{
    TaskId,
    task::{Priority, Requirement, TaskSpec},
};
use colony_runtime::Handle;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{net::SocketAddr, sync::Arc, sync::OnceLock, time::Duration};

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body accepted: a batch of tasks with their payloads.
pub const MAX_BODY: usize = 16 << 20;
/// Most tasks in one batch.
pub const MAX_BATCH: usize = 100_000;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0} is not a loopback address: colony serve has no authentication yet, so it listens on 127.0.0.1 or ::1 only"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The process's Prometheus recorder, installed once, whatever the number of servers.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): then ours renders
        // nothing, which the metrics route says.
        let _ = metrics::set_global_recorder(recorder);
        colony_runtime::metrics::describe();
        handle
    })
}

/// Installs the Prometheus recorder: call before the runtime starts, so that its metric
/// handles are registered with it.
pub fn install_metrics() {
    prometheus();
}

/// A listening server.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Option<()>>,
}

impl Server {
    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }

    /// Serves until the process ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts serving `handle`'s runtime on `addr` (port 0 picks a free one).
pub async fn serve(handle: Handle, addr: SocketAddr) -> Result<Server, Error> {
    if !addr.ip().is_loopback() {
        return Err(Error::NotLoopback(addr));
    }
    install_metrics();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let app = router(handle);
    let task = colony_runtime::spawner::Spawner::spawn("http-server", async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "The HTTP server stopped.");
        }
    });
    Ok(Server { addr, task })
}

fn router(handle: Handle) -> Router {
    Router::new()
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/batch", post(submit_batch))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/stats", get(stats))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not-found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(handle))
}

/// A JSON error with a stable code.
fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (status, Json(body)).into_response()
}

/// A task as submitted over HTTP.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct NewTask {
    /// Any JSON: what the agent gets.
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    priority: Option<u8>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

impl NewTask {
    fn spec(self) -> Result<TaskSpec, String> {
        let mut spec = TaskSpec::with_payload(Bytes::from(self.payload.to_string()));
        spec.key = self.key.map(Into::into);
        spec.requirement = Requirement {
            role: self.role.map(Into::into),
            capabilities: self.capabilities.into_iter().map(Into::into).collect(),
        };
        if let Some(p) = self.priority {
            spec.priority = Priority::new(p).map_err(|e| e.to_string())?;
        }
        if let Some(t) = self.timeout {
            if !t.is_finite() || t <= 0.0 || t > 7.0 * 86_400.0 {
                return Err(format!(
                    "timeout {t} is out of range: allowed above 0 and up to 604800 seconds"
                ));
            }
            spec.timeout = Duration::from_secs_f64(t);
        }
        if let Some(m) = self.max_attempts {
            spec.max_attempts = m;
        }
        Ok(spec)
    }
}

/// A JSON body, or the 4xx that says what is wrong with it. (The error path is the rare one:
/// a response by value costs nothing on the path that succeeds.)
#[allow(clippy::result_large_err)]
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    body.map(|Json(t)| t).map_err(|rejection| {
        let status = rejection.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        problem(status, "bad-body", rejection.body_text())
    })
}

/// A runtime refusal as an HTTP status.
fn refused(error: colony_runtime::Error) -> Response {
    use colony_runtime::Error as E;
    match &error {
        E::Full { .. } => problem(StatusCode::TOO_MANY_REQUESTS, "full", error.to_string()),
        E::Stopped => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            error.to_string(),
        ),
        E::Journal(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "journal",
            error.to_string(),
        ),
        _ => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            error.to_string(),
        ),
    }
}

async fn submit(
    State(h): State<Arc<Handle>>,
    task: Result<Json<NewTask>, JsonRejection>,
) -> Response {
    let task = match body(task) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let spec = match task.spec() {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-task", e),
    };
    match h.try_submit(spec).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({ "id": id.0 }))).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    tasks: Vec<NewTask>,
}

async fn submit_batch(
    State(h): State<Arc<Handle>>,
    batch: Result<Json<Batch>, JsonRejection>,
) -> Response {
    let batch = match body(batch) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad-batch",
            format!("{} tasks: a batch holds 1..={MAX_BATCH}", batch.tasks.len()),
        );
    }
    let mut specs = Vec::with_capacity(batch.tasks.len());
    for (i, t) in batch.tasks.into_iter().enumerate() {
        match t.spec() {
            Ok(s) => specs.push(s),
            Err(e) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-task",
                    format!("task {i}: {e}"),
                );
            }
        }
    }
    match h.try_submit_batch(specs).await {
        Ok(a) => (
            StatusCode::ACCEPTED,
            Json(json!({ "first": a.first.0, "count": a.count })),
        )
            .into_response(),
        Err(e) => refused(e),
    }
}

async fn task(State(h): State<Arc<Handle>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{id:?} is not a task id"),
        );
    };
    match h.journal().task(TaskId(id)) {
        Ok(Some(row)) => {
            let output = row.output.as_deref().map(|o| {
                serde_json::from_slice::<Value>(o)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(o).into_owned()))
            });
            Json(json!({
                "id": row.id.0,
                "key": row.spec.key.as_deref(),
                "state": row.state,
                "attempts": row.attempt,
                "agent": row.agent.map(|a| a.0),
                "output": output,
                "error": row.error.as_deref(),
            }))
            .into_response()
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-such-task",
            format!("there is no task {id}"),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e.to_string()),
    }
}

async fn stats(State(h): State<Arc<Handle>>) -> Response {
    Json(h.stats()).into_response()
}

/// The live stream: see the crate documentation.
async fn events(
    State(h): State<Arc<Handle>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use colony_runtime::events::Kinds;
    // Not `Kinds::TASKS`: per-task events would cost the dispatcher for every task, and the
    // snapshot carries their counts.
    let subscription = h.subscribe(Kinds::AGENTS.union(Kinds::HEALTH));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (h, subscription, tick),
        |(h, mut subscription, mut tick)| async move {
            loop {
                let event = tokio::select! {
                    _ = tick.tick() => Event::default()
                        .event("snapshot")
                        .data(serde_json::to_string(&h.stats()).unwrap_or_default()),
                    e = subscription.recv() => match notable(&e?) {
                        Some(v) => Event::default().event("notable").data(v.to_string()),
                        None => continue,
                    },
                };
                return Some((Ok(event), (h, subscription, tick)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The events worth a line on a dashboard, as JSON; `None` for the rest (per task, per agent).
fn notable(e: &colony_runtime::events::Event) -> Option<Value> {
    use colony_runtime::events::Event as E;
    Some(match e {
        E::SupervisorEscalated { supervisor, cause } => {
            json!({"kind": "supervisor-escalated", "supervisor": supervisor.map(|s| s.0), "cause": &**cause})
        }
        E::HealthAlert {
            agent,
            average,
            baseline,
        } => json!({
            "kind": "health-alert", "agent": agent.0,
            "average-ms": average.as_secs_f64() * 1e3, "baseline-ms": baseline.as_secs_f64() * 1e3,
        }),
        _ => return None,
    })
}

async fn metrics_text() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}
