//! `/v1/memory`: the agents' shared memory over HTTP, when the server was given one
//! (`colony serve --memory FILE`, `--memory nats://HOST:PORT/NAME`, `--memory-chroma URL`;
//! a cluster's server, `colony serve --nats`, one all its replicas share: in NATS or on
//! Chroma). Every call runs on the blocking pool (a store blocks), at most 4 at once, apart
//! from the journal's reads.
//!
//! - `GET /v1/memory` [read]: every namespace with its documents, dimension, bytes of text
//!   and approximate index, and the cache's hits and misses.
//! - `POST /v1/memory/documents` [submit]: `{"namespace", "documents": [...]}`, stored all
//!   or none; `200 {"stored": N}`.
//! - `GET /v1/memory/documents?namespace=&id=` [read]: one document.
//! - `POST /v1/memory/delete` [submit]: `{"namespace", "ids": [...]}`; `{"deleted": N}`.
//! - `POST /v1/memory/search` [read]: `{"namespace", "query": {text, vector, filter, k,
//!   exact}}`; `{"hits": [...]}`, best first.
//! - `POST /v1/memory/rebuild` [admin]: `{"namespace"}`: builds its approximate index now
//!   (this server's: a memory in NATS has a copy, and an index, in each replica).
//!
//! A store's refusal (a bad namespace, document or query) is a 400 naming the problem; a
//! namespace never written, a 404; the store failing, a 503.

use crate::{App, Object, body, problem};
use axum::{
    Json,
    extract::{Query as UrlQuery, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_memory::{CacheStats, Document, Memory, Namespace, Query};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{sync::Arc, time::Instant};
use tokio::sync::Semaphore;

/// Most namespaces `GET /v1/memory` lists, each with its counts.
pub const MAX_LISTED: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Put {
    namespace: String,
    documents: Vec<Document>,
    /// What made the documents' embeddings: recorded by the namespace, and checked.
    #[serde(default)]
    embedder: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Delete {
    namespace: String,
    ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Search {
    namespace: String,
    query: Query,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Named {
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct One {
    namespace: String,
    id: String,
}

/// A server that may serve a memory: a runtime's ([`App`]) or a cluster's.
pub(crate) trait Keeps: Send + Sync + 'static {
    fn memory(&self) -> Option<&Arc<dyn Memory>>;
    /// One permit per memory call on the blocking pool.
    fn memory_calls(&self) -> &Arc<Semaphore>;
}

impl Keeps for App {
    fn memory(&self) -> Option<&Arc<dyn Memory>> {
        self.memory.as_ref()
    }
    fn memory_calls(&self) -> &Arc<Semaphore> {
        &self.memory_calls
    }
}

/// The server's memory, or the 404 that says it has none.
#[allow(clippy::result_large_err)]
fn store(app: &impl Keeps) -> Result<Arc<dyn Memory>, Response> {
    app.memory().cloned().ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "memory-off",
            "this server has no memory: start it with --memory (a file, or nats://HOST:PORT/NAME) or --memory-chroma URL",
        )
    })
}

/// The store and the request's body, or the answer that says why not.
#[allow(clippy::result_large_err)]
fn store_and<T>(
    app: &impl Keeps,
    request: Result<Json<Object<T>>, JsonRejection>,
) -> Result<(Arc<dyn Memory>, T), Response> {
    let store = store(app)?;
    Ok((store, body(request)?))
}

#[allow(clippy::result_large_err)]
fn namespace(name: &str) -> Result<Namespace, Response> {
    Namespace::parse(name).map_err(refused)
}

/// A store's error as an HTTP answer.
fn refused(error: colony_memory::Error) -> Response {
    use colony_memory::Error as E;
    match &error {
        E::UnknownNamespace(_) => problem(
            StatusCode::NOT_FOUND,
            "no-such-namespace",
            error.to_string(),
        ),
        E::Store(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "memory", error.to_string()),
        _ => problem(StatusCode::BAD_REQUEST, "refused", error.to_string()),
    }
}

/// Runs `work` on the store, on the blocking pool.
async fn with_store<T: Send + 'static>(
    app: &impl Keeps,
    store: Arc<dyn Memory>,
    work: impl FnOnce(&dyn Memory) -> Result<T, colony_memory::Error> + Send + 'static,
) -> Result<T, Response> {
    match App::blocking_under(app.memory_calls(), move || work(&*store)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(refused(e)),
        Err(e) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, "memory", e)),
    }
}

/// What `GET /v1/memory` and the dashboard's panel show: the first [`MAX_LISTED`]
/// namespaces, each with its counts, and the cache.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    pub(crate) namespaces: Vec<Space>,
    /// Whether there are namespaces past the first [`MAX_LISTED`].
    pub(crate) more: bool,
    pub(crate) cache: CacheStats,
}

#[derive(Debug, Serialize)]
pub(crate) struct Space {
    pub(crate) name: Namespace,
    pub(crate) documents: u64,
    pub(crate) dimension: Option<usize>,
    pub(crate) text_bytes: u64,
    /// Documents in its approximate index, when it has one.
    pub(crate) indexed: Option<usize>,
    /// What made its embeddings, when a writer said.
    pub(crate) embedder: Option<String>,
}

fn overview(m: &dyn Memory) -> Result<Overview, colony_memory::Error> {
    let (listed, more) = m.listed(MAX_LISTED)?;
    let namespaces = listed
        .into_iter()
        .map(|(ns, stats)| Space {
            documents: stats.documents,
            dimension: stats.dimension,
            text_bytes: stats.text_bytes,
            indexed: m.indexed(&ns),
            embedder: stats.embedder,
            name: ns,
        })
        .collect();
    Ok(Overview {
        namespaces,
        more,
        cache: m.cache_stats(),
    })
}

/// The server's memory at a glance; `None` when it has none.
pub(crate) async fn overview_of(app: &impl Keeps) -> Result<Option<Overview>, Response> {
    match app.memory().cloned() {
        None => Ok(None),
        Some(store) => with_store(app, store, overview).await.map(Some),
    }
}

pub(crate) async fn list<A: Keeps>(State(app): State<Arc<A>>) -> Response {
    if let Err(r) = self::store(&*app) {
        return r;
    }
    match overview_of(&*app).await {
        Ok(overview) => Json(overview).into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn put<A: Keeps>(
    State(app): State<Arc<A>>,
    request: Result<Json<Object<Put>>, JsonRejection>,
) -> Response {
    let (store, put) = match store_and(&*app, request) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ns = match namespace(&put.namespace) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let n = put.documents.len();
    let (documents, embedder) = (put.documents, put.embedder);
    let stored = move |m: &dyn Memory| match &embedder {
        Some(e) => m.put_embedded(&ns, documents, e),
        None => m.put(&ns, documents),
    };
    match with_store(&*app, store, stored).await {
        Ok(()) => {
            metrics::counter!("colony_memory_documents_stored_total").increment(n as u64);
            Json(json!({ "stored": n })).into_response()
        }
        Err(r) => r,
    }
}

pub(crate) async fn get<A: Keeps>(
    State(app): State<Arc<A>>,
    query: Result<UrlQuery<One>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let store = match self::store(&*app) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let one = match query {
        Ok(UrlQuery(one)) => one,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-query", e.body_text()),
    };
    let ns = match namespace(&one.namespace) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let id = one.id.clone();
    match with_store(&*app, store, move |m| m.get(&ns, &id)).await {
        Ok(Some(document)) => Json(document).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-such-document",
            format!("namespace {} holds no document {:?}", one.namespace, one.id),
        ),
        Err(r) => r,
    }
}

pub(crate) async fn delete<A: Keeps>(
    State(app): State<Arc<A>>,
    request: Result<Json<Object<Delete>>, JsonRejection>,
) -> Response {
    let (store, delete) = match store_and(&*app, request) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if delete.ids.len() > colony_memory::MAX_BATCH {
        return problem(
            StatusCode::BAD_REQUEST,
            "too-many",
            format!(
                "{} ids: allowed up to {} at once",
                delete.ids.len(),
                colony_memory::MAX_BATCH
            ),
        );
    }
    let ns = match namespace(&delete.namespace) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    match with_store(&*app, store, move |m| m.delete(&ns, &delete.ids)).await {
        Ok(n) => Json(json!({ "deleted": n })).into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn search<A: Keeps>(
    State(app): State<Arc<A>>,
    request: Result<Json<Object<Search>>, JsonRejection>,
) -> Response {
    let (store, search) = match store_and(&*app, request) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ns = match namespace(&search.namespace) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    let mode = match (&search.query.text, &search.query.vector) {
        (Some(_), Some(_)) => "hybrid",
        (Some(_), None) => "text",
        _ => "vector",
    };
    let started = Instant::now();
    let searched = App::blocking_under(app.memory_calls(), move || {
        let hits = store.search(&ns, &search.query);
        (hits, store.cache_stats())
    })
    .await;
    match searched {
        Ok((Ok(hits), cache)) => {
            metrics::counter!("colony_memory_searches_total", "mode" => mode).increment(1);
            metrics::histogram!("colony_memory_search_seconds", "mode" => mode)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("colony_memory_cache_hits_total").absolute(cache.hits);
            metrics::counter!("colony_memory_cache_misses_total").absolute(cache.misses);
            Json(json!({ "hits": hits })).into_response()
        }
        Ok((Err(e), _)) => refused(e),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "memory", e),
    }
}

pub(crate) async fn rebuild<A: Keeps>(
    State(app): State<Arc<A>>,
    request: Result<Json<Object<Named>>, JsonRejection>,
) -> Response {
    let (store, named) = match store_and(&*app, request) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ns = match namespace(&named.namespace) {
        Ok(ns) => ns,
        Err(r) => return r,
    };
    match with_store(&*app, store, move |m| m.rebuild(&ns)).await {
        Ok(rebuilt) => Json(rebuilt).into_response(),
        Err(r) => r,
    }
}
