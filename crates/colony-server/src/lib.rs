//! The control plane: an HTTP API over a running [`colony_runtime::Runtime`], its Prometheus
//! metrics, and the web dashboard.
//!
//! Routes (JSON in and out; every error is `{"error": {"code": ..., "message": ...}}` with a
//! 4xx status for anything the caller got wrong). The scope each needs is in brackets; with no
//! tokens configured, none is asked for.
//!
//! - `POST /v1/tasks` [submit]: one task; `202 {"id": N}`.
//! - `POST /v1/tasks/batch` [submit]: `{"tasks": [...]}`; `202 {"first": N, "count": M}`.
//!   Both take an `Idempotency-Key` header: a retried request with the same key gets the first
//!   one's answer, and no task is accepted twice.
//! - `GET /v1/tasks` [read]: the newest tasks, by state, in pages.
//! - `GET /v1/tasks/{id}` [read]: the task's state, attempts, agent, output and error.
//! - `POST /v1/tasks/{id}/cancel` [submit].
//! - `GET /v1/hierarchy` [read]: tiers, agents per tier, out of service, health.
//! - `GET /v1/agents` [read]: agents by tier, pool, role, health, parent; in pages.
//! - `GET /v1/agents/{id}` [read]: one agent, its chain of command and its children.
//! - `POST /v1/agents/{id}/kill` [admin]: as a crash would; its supervisor restarts it.
//! - `GET /v1/pools` [read]; `PUT /v1/pools/{name}` [admin]: shrink or grow a pool.
//! - `GET /v1/pools/history?since=` [read]: each pool's size, desired size, backlog and busy
//!   agents once a second over the last 15 minutes, and the scaling decisions among them
//!   (see [`history`]).
//! - `GET /v1/scaling/{pool}` [read]: one pool's desired size and backlog, for KEDA's
//!   metrics-api scaler.
//! - `POST /v1/runs` [admin]: run a workflow file (see [`runs`]); `GET /v1/runs`,
//!   `GET /v1/runs/{id}`, `GET /v1/runs/{id}/graph`, `GET /v1/runs/{id}/results/{task}`,
//!   `GET /v1/runs/{id}/logs/{task}/{attempt}` [read]; `POST /v1/runs/{id}/cancel` [submit].
//! - `GET /v1/memory`, `GET /v1/memory/documents`, `POST /v1/memory/search` [read];
//!   `POST /v1/memory/documents`, `POST /v1/memory/delete` [submit];
//!   `POST /v1/memory/rebuild` [admin]: the agents' shared memory (see [`memory`]), when the
//!   server has one.
//! - `GET /v1/messages` [read]; `POST /v1/messages` [submit]: the message bus's counts and
//!   topics, and a message sent from `http`; `POST /v1/messages/read|ack|subscribe|
//!   unsubscribe|close` [submit]: a named mailbox read over HTTP in acknowledged batches
//!   (see [`messages`]).
//! - `GET /v1/stats` [read]: the runtime's counters.
//! - `GET /v1/events` [read]: server-sent events: a `snapshot` of the counters every second,
//!   and `notable` events as they happen (health alerts, escalations, scaling decisions,
//!   decisions by vote that ended); never one event per
//!   task (steals, rebalancing and restarts are counted in the snapshot).
//! - `GET /metrics` [read]: Prometheus text; `GET /metrics/runs` [read]: that of the
//!   workflow runs' runtimes, kept apart (see [`runs`]).
//! - `GET /healthz` (alive), `GET /readyz` (the runtime takes work), `GET /openapi.json`:
//!   open to all.
//! - `GET /` and `/ui/...`: the dashboard (see [`dashboard`]).
//!
//! Without tokens the server listens on loopback only. With them ([`Tokens`]), anywhere;
//! with a certificate, over TLS.

mod agents;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod conn;
pub mod dashboard;
mod decisions;
mod history;
mod live;
pub mod memory;
pub mod messages;
pub mod probe;
mod ring;
pub mod runs;
mod tasks;
pub mod testing;

pub use auth::{Scope, Tokens, TokensError};
pub use conn::Limits;
pub use live::install_metrics;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, rejection::JsonRejection},
    http::StatusCode,
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use colony_runtime::Handle;
use serde_json::json;
use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
};

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body accepted: a batch of tasks with their payloads.
pub const MAX_BODY: usize = 16 << 20;
/// Most tasks in one batch.
pub const MAX_BATCH: usize = 100_000;
/// Default of [`Config::max_streams`].
pub const MAX_STREAMS: usize = 256;

/// How a server listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port 0 picks a free one.
    pub addr: SocketAddr,
    /// Tokens callers must present. Without them, only loopback addresses are allowed.
    pub tokens: Option<Tokens>,
    /// Serve HTTPS with this certificate chain and private key (PEM files).
    pub tls: Option<Tls>,
    /// Requests per second each client may make (a token, or an address without tokens);
    /// over it, `429` with `Retry-After`.
    pub rate_limit: Option<NonZeroU32>,
    /// Accept workflow runs over HTTP (`POST /v1/runs`, admin scope), with their results in
    /// this folder. Off when `None`: a workflow can start programs on this host.
    pub runs: Option<PathBuf>,
    /// Webhooks every run posted to `/v1/runs` posts its events to, besides its own.
    pub run_webhooks: Vec<colony_workflow::webhooks::Webhook>,
    /// Most event streams (`/v1/events`) open at once: each costs the dispatcher a little on
    /// every turn. Over it, `429 too-many-streams`.
    pub max_streams: usize,
    /// Open connections and how long they may wait for a request (see [`conn`]).
    pub connections: Limits,
    /// The agents' shared memory, served under `/v1/memory` (see [`memory`]); off when
    /// `None`.
    pub memory: Option<Arc<dyn colony_memory::Memory>>,
    /// Back the journal up continuously (see [`backup`]); off when `None`.
    pub backup: Option<Arc<backup::Backups>>,
    /// The pools whose calls cost tokens and dollars (`http` agents, coding-agent CLIs):
    /// what they spent, and their budgets, on `/metrics`.
    pub spend: Vec<colony_workflow::Metered>,
}

impl Config {
    /// Plain HTTP on `addr`, no tokens, no rate limit: loopback only.
    pub fn local(addr: SocketAddr) -> Self {
        Self {
            addr,
            tokens: None,
            tls: None,
            rate_limit: None,
            runs: None,
            max_streams: MAX_STREAMS,
            connections: Limits::default(),
            memory: None,
            backup: None,
            run_webhooks: Vec::new(),
            spend: Vec::new(),
        }
    }
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0} is not a loopback address: without tokens (--tokens) colony serve listens on 127.0.0.1 or ::1 only"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {path}: {problem}")]
    Tls { path: PathBuf, problem: String },
    #[error(
        "workflow runs (--runs) start programs on this host: they need tokens (--tokens), so that only an admin token can submit one"
    )]
    RunsWithoutTokens,
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) handle: Handle,
    /// Tokens, rate limits, and whether it serves TLS.
    pub(crate) gate: auth::Gate,
    pub(crate) idempotency: tasks::Idempotency,
    pub(crate) runs: Option<runs::Runs>,
    /// One permit per event stream open; a stream costs the dispatcher on every turn.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) max_streams: usize,
    /// One permit per journal read (or view made) running on the blocking pool: the reads
    /// share one SQLite connection, so more at once would only hold threads waiting for it.
    /// The permit goes with the work, not the request, so a client that hangs up cannot
    /// leave more running.
    pub(crate) reads: Arc<tokio::sync::Semaphore>,
    /// The pools' recent sizes and the decisions on them, sampled by the server's
    /// [`history::Sampler`].
    pub(crate) history: Arc<history::History>,
    pub(crate) memory: Option<Arc<dyn colony_memory::Memory>>,
    /// One permit per memory call on the blocking pool: its own, so that a long one (an
    /// approximate index being built) never holds up the journal's reads.
    pub(crate) memory_calls: Arc<tokio::sync::Semaphore>,
    /// The named mailboxes read over HTTP (`/v1/messages/read`).
    pub(crate) readers: messages::Readers,
    /// The journal's continuous backup, when there is one.
    pub(crate) backup: Option<Arc<backup::Backups>>,
    /// Pools whose calls cost, for `/metrics`.
    pub(crate) spend: Vec<colony_workflow::Metered>,
}

/// Journal reads on the blocking pool at once (see [`App::reads`]).
pub(crate) const READS: usize = 4;

impl App {
    /// Runs a journal read on tokio's blocking pool: an SQLite read blocks its thread, and
    /// must not hold one of the runtime's workers.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn colony_journal::Journal) -> Result<T, colony_journal::Error>
        + Send
        + 'static,
    ) -> Result<T, String> {
        let journal = self.handle.journal().clone();
        self.blocking(move || read(&*journal))
            .await?
            .map_err(|e| e.to_string())
    }

    /// Runs `work` on tokio's blocking pool under one of [`App::reads`]' permits, held until
    /// the work ends even if the caller stops waiting.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        Self::blocking_under(&self.reads, work).await
    }

    /// Runs `work` on tokio's blocking pool under one of `permits`, held until the work
    /// ends even if the caller stops waiting.
    pub(crate) async fn blocking_under<T: Send + 'static>(
        permits: &Arc<tokio::sync::Semaphore>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| format!("the read stopped: {e}"))
    }
}

/// A listening server.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    task: tokio::task::JoinHandle<Option<()>>,
}

impl Server {
    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops listening.
    pub fn stop(self) {
        self.task.abort();
    }

    /// Serves until the process ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts serving `handle`'s runtime as `config` says.
pub async fn serve(handle: Handle, config: Config) -> Result<Server, Error> {
    let addr = config.addr;
    if config.tokens.is_none() && !addr.ip().is_loopback() {
        return Err(Error::NotLoopback(addr));
    }
    if config.tokens.is_none() && config.runs.is_some() {
        return Err(Error::RunsWithoutTokens);
    }
    install_metrics();
    let tls = match &config.tls {
        Some(tls) => Some(rustls_config(tls)?),
        None => None,
    };
    let tokens = config.tokens.is_some();
    let app = Arc::new(App {
        handle,
        gate: auth::Gate::new(config.tokens, config.rate_limit, tls.is_some()),
        idempotency: tasks::Idempotency::default(),
        runs: config
            .runs
            .map(|folder| runs::Runs::new(folder, config.run_webhooks)),
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
        max_streams: config.max_streams,
        reads: Arc::new(tokio::sync::Semaphore::new(READS)),
        history: Arc::default(),
        memory: config.memory,
        memory_calls: Arc::new(tokio::sync::Semaphore::new(READS)),
        readers: messages::Readers::default(),
        backup: config.backup,
        spend: config.spend,
    });
    let sampler = history::Sampler::start(app.handle.clone(), app.history.clone());
    let sweeper = messages::Sweeper::start(app.clone());
    let backups = app.backup.clone().map(backup::Looping::start);
    let router = router(app);
    let bind = |source| Error::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(warning) = plain_text_warning(addr, tokens, tls.is_some()) {
        tracing::warn!("{warning}");
    }
    let limits = config.connections;
    let task = colony_runtime::spawner::Spawner::spawn("http-server", async move {
        // The sampler stops with the server: when this task ends or is aborted.
        let _sampler = sampler;
        let _sweeper = sweeper;
        let _backups = backups;
        conn::serve(listener, router, tls, limits).await;
    });
    Ok(Server { addr, scheme, task })
}

/// What to warn of when a server with tokens listens beyond loopback without TLS: its tokens
/// cross the network readable by anyone on the way.
pub fn plain_text_warning(addr: SocketAddr, tokens: bool, tls: bool) -> Option<String> {
    (tokens && !tls && !addr.ip().is_loopback()).then(|| {
        format!(
            "serving on {addr}, beyond loopback, over plain HTTP: tokens and data cross the network unencrypted; use --tls-cert and --tls-key, or a TLS proxy in front"
        )
    })
}

/// A TLS acceptor from PEM files, with rustls and the aws-lc-rs provider.
pub(crate) fn rustls_config(tls: &Tls) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let problem = |path: &Path, problem: String| Error::Tls {
        path: path.to_owned(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| problem(&tls.cert, format!("no certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(problem(&tls.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| problem(&tls.key, format!("no private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(&tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| problem(&tls.key, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn router(app: Arc<App>) -> Router {
    let scoped = |scope: Scope, routes| scoped(&app.gate, scope, routes);
    let read = Router::new()
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::one))
        .route("/v1/hierarchy", get(agents::hierarchy))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{id}", get(agents::one))
        .route("/v1/pools", get(agents::pools))
        .route("/v1/pools/history", get(history::history))
        .route("/v1/scaling/{pool}", get(agents::scaling))
        .route("/v1/decisions", get(decisions::list))
        .route("/v1/decisions/{id}", get(decisions::one))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::one))
        .route("/v1/runs/{id}/graph", get(runs::graph_of))
        .route("/v1/runs/{id}/results/{task}", get(runs::result))
        .route("/v1/runs/{id}/logs/{task}/{attempt}", get(runs::log))
        .route("/v1/stats", get(live::stats))
        .route("/v1/backup", get(live::backup))
        .route("/v1/events", get(live::events))
        .route("/metrics", get(live::metrics_text))
        .route("/metrics/runs", get(runs::metrics_text))
        .route("/v1/memory", get(memory::list::<App>))
        .route("/v1/memory/documents", get(memory::get::<App>))
        .route("/v1/memory/search", post(memory::search::<App>))
        .route("/v1/messages", get(messages::list))
        .merge(dashboard::read_routes());
    let submit = Router::new()
        .route("/v1/tasks", post(tasks::submit))
        .route("/v1/tasks/batch", post(tasks::submit_batch))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/memory/documents", post(memory::put::<App>))
        .route("/v1/memory/delete", post(memory::delete::<App>))
        .route("/v1/messages", post(messages::send))
        .route("/v1/messages/read", post(messages::read))
        .route("/v1/messages/ack", post(messages::ack))
        .route("/v1/messages/subscribe", post(messages::subscribe))
        .route("/v1/messages/unsubscribe", post(messages::unsubscribe))
        .route("/v1/messages/close", post(messages::close));
    let admin = Router::new()
        .route("/v1/agents/{id}/kill", post(agents::kill))
        .route("/v1/pools/{name}", put(agents::resize))
        .route("/v1/runs", post(runs::submit))
        .route("/v1/memory/rebuild", post(memory::rebuild::<App>));
    let open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(live::readyz))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/login", post(auth::login))
        .merge(dashboard::open_routes());
    let router = Router::new()
        .merge(scoped(Scope::Read, read))
        .merge(scoped(Scope::Submit, submit))
        .merge(scoped(Scope::Admin, admin))
        .merge(open);
    guarded(router, app.gate.clone()).with_state(app)
}

/// Most bytes of a non-JSON error's text kept as its message.
const ERROR_TEXT: usize = 4_096;

/// The last word on every answer: an error that is not JSON yet (an extractor's rejection,
/// which axum writes as text) becomes one, its code from its status, its message its text.
/// `routes` behind `scope`: a caller without a token worth it is refused.
pub(crate) fn scoped<S: Clone + Send + Sync + 'static>(
    gate: &auth::Gate,
    scope: Scope,
    routes: Router<S>,
) -> Router<S> {
    routes.route_layer(from_fn_with_state(
        gate.clone(),
        move |state, request, next| auth::require(scope, state, request, next),
    ))
}

/// What every router of a server has around its routes: JSON answers for unknown routes and
/// methods, the body limit, the guard (rate limits, browser checks) and errors as problems.
pub(crate) fn guarded<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    gate: auth::Gate,
) -> Router<S> {
    router
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not-found", "no such route") })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(from_fn_with_state(gate, auth::guard))
        .layer(axum::middleware::map_response(json_errors))
}

pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let reason = status.canonical_reason().unwrap_or("error");
    let text = match axum::body::to_bytes(body, ERROR_TEXT).await {
        Ok(bytes) if !bytes.trim_ascii().is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => reason.to_owned(),
    };
    let code = reason.to_ascii_lowercase().replace(' ', "-");
    let mut answer = problem(status, &code, text);
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// A JSON error with a stable code.
pub(crate) fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (status, Json(body)).into_response()
}

/// A JSON body, which must be an object, or the 4xx that says what is wrong with it. (The
/// error path is the rare one: a response by value costs nothing on the path that succeeds.)
#[allow(clippy::result_large_err)]
pub(crate) fn body<T>(body: Result<Json<Object<T>>, JsonRejection>) -> Result<T, Response> {
    body.map(|Json(Object(t))| t).map_err(|rejection| {
        let status = rejection.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        problem(status, "bad-body", rejection.body_text())
    })
}

/// `T` from a JSON object only. serde's derived structs also take an array of their fields
/// in order (`[]` would be a task with every field left out), which no caller means.
#[derive(Debug)]
pub(crate) struct Object<T>(pub(crate) T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// A runtime refusal as an HTTP status.
pub(crate) fn refused(error: colony_runtime::Error) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_over_plain_http_beyond_loopback_are_warned_of() {
        let public: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let warning = plain_text_warning(public, true, false).expect("a warning");
        assert!(warning.contains("0.0.0.0:7070"), "{warning}");
        assert!(warning.contains("--tls-cert"), "{warning}");
        // TLS, loopback, or no tokens to lose: nothing to warn of.
        assert_eq!(plain_text_warning(public, true, true), None);
        assert_eq!(
            plain_text_warning("127.0.0.1:7070".parse().unwrap(), true, false),
            None
        );
        assert_eq!(
            plain_text_warning("[::1]:7070".parse().unwrap(), true, false),
            None
        );
        assert_eq!(plain_text_warning(public, false, false), None);
    }
}
