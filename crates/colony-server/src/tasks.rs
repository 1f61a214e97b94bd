//! Where tasks come in over HTTP, and are looked up and cancelled.

use crate::{App, MAX_BATCH, Object, body, problem, refused};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use colony_core::{
    TaskId,
    task::{Priority, Requirement, TaskSpec, TaskState},
};
use colony_journal::TaskRow;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A task as submitted over HTTP.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct NewTask {
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
    /// Routed to the best-reputed worker with room.
    #[serde(default)]
    hard: bool,
    /// Asked of several agents at once, their outputs counted as ballots.
    #[serde(default)]
    decide: Option<crate::decisions::NewDecision>,
}

impl NewTask {
    pub(crate) fn spec(
        mut self,
    ) -> Result<(TaskSpec, Option<crate::decisions::NewDecision>), String> {
        let decide = self.decide.take();
        Ok((self.ordinary()?, decide))
    }

    fn ordinary(self) -> Result<TaskSpec, String> {
        let mut spec = TaskSpec::with_payload(Bytes::from(self.payload.to_string()));
        spec.key = self.key.map(Into::into);
        spec.requirement = Requirement {
            role: self.role.map(Into::into),
            capabilities: self.capabilities.into_iter().map(Into::into).collect(),
            hard: self.hard,
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

/// Answers to requests that carried an `Idempotency-Key`, per caller, for a day (the newest
/// [`Idempotency::KEYS`] of them): a retry of a request whose answer was lost gets the same
/// answer, and the tasks are not accepted twice.
#[derive(Debug, Default)]
pub(crate) struct Idempotency {
    inner: Mutex<Remembered>,
}

/// An idempotency key, and the token that used it.
type KeyOf = (Option<Arc<str>>, String);

#[derive(Debug, Default)]
struct Remembered {
    answers: HashMap<KeyOf, Answer>,
    /// When each key was first used, oldest first, with the generation of its answer: a key
    /// forgotten and used again has a newer one, which the old entry must not evict.
    order: VecDeque<(Instant, KeyOf, u64)>,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Answer {
    /// Fingerprint of the request that used the key first.
    request: u64,
    generation: u64,
    /// `None` while the first request is being handled.
    body: Option<Value>,
}

/// What to do with a request that carries a key.
enum Claim {
    /// The first with its key: handle it, then [`Idempotency::finish`].
    First(KeyOf, u64),
    /// Answered already, or refused: send this.
    Answered(Response),
}

impl Idempotency {
    const KEYS: usize = 100_000;
    const KEEP: Duration = Duration::from_secs(86_400);

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claim(&self, caller: Option<Arc<str>>, key: String, request: u64) -> Claim {
        let mut r = self.lock();
        let now = Instant::now();
        // Answers are kept up to KEYS; entries of answers already forgotten (refused
        // requests) count too, up to twice that, so that they cannot grow without bound.
        while let Some((at, _, _)) = r.order.front() {
            if now.duration_since(*at) < Self::KEEP
                && r.answers.len() <= Self::KEYS
                && r.order.len() <= 2 * Self::KEYS
            {
                break;
            }
            if let Some((_, old, generation)) = r.order.pop_front()
                && r.answers
                    .get(&old)
                    .is_some_and(|a| a.generation == generation)
            {
                r.answers.remove(&old);
            }
        }
        let id = (caller, key);
        match r.answers.get(&id) {
            None => {
                r.generation += 1;
                let generation = r.generation;
                let answer = Answer {
                    request,
                    generation,
                    body: None,
                };
                r.answers.insert(id.clone(), answer);
                r.order.push_back((now, id.clone(), generation));
                Claim::First(id, generation)
            }
            Some(a) if a.request != request => Claim::Answered(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                format!(
                    "Idempotency-Key {:?} was used for a different request",
                    id.1
                ),
            )),
            Some(Answer { body: None, .. }) => Claim::Answered(problem(
                StatusCode::CONFLICT,
                "in-flight",
                format!(
                    "a request with Idempotency-Key {:?} is still being handled: retry shortly",
                    id.1
                ),
            )),
            Some(Answer {
                body: Some(body), ..
            }) => {
                let mut response = (StatusCode::ACCEPTED, Json(body.clone())).into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Claim::Answered(response)
            }
        }
    }

    /// Remembers the answer to a first request; forgets the key if it was refused, so that
    /// a retry is handled afresh.
    fn finish(&self, id: KeyOf, generation: u64, accepted: Option<Value>) {
        let mut r = self.lock();
        let Some(answer) = r
            .answers
            .get_mut(&id)
            .filter(|a| a.generation == generation)
        else {
            return;
        };
        match accepted {
            Some(body) => answer.body = Some(body),
            None => {
                r.answers.remove(&id);
            }
        }
    }
}

/// The request's `Idempotency-Key`, if any, or the 400 that says what is wrong with it.
#[allow(clippy::result_large_err)]
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) => Ok(Some(key.to_owned())),
        _ => Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-idempotency-key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// What one request submits.
enum Submission {
    One(TaskSpec),
    Batch(Vec<TaskSpec>),
    /// A task asked of several agents, decided by their vote.
    Decide(TaskSpec, colony_runtime::decision::Vote),
}

/// Submits what the request holds, once per idempotency key; `fingerprint` tells a retry
/// from another request with the same key.
async fn accept(
    app: &Arc<App>,
    headers: &HeaderMap,
    caller: Option<Arc<str>>,
    fingerprint: Option<u64>,
    submission: Submission,
) -> Response {
    let key = match idempotency_key(headers) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let result = match key {
        None => submit_now(app, submission).await,
        Some(key) => match app
            .idempotency
            .claim(caller, key, fingerprint.unwrap_or_default())
        {
            Claim::Answered(response) => return response,
            Claim::First(id, generation) => {
                // On a task of its own: a caller that goes away while the journal makes the
                // tasks durable must not leave its key "in flight", unanswerable, for a day.
                let app = app.clone();
                let submitted = colony_runtime::spawner::Spawner::spawn("idempotent", async move {
                    let result = submit_now(&app, submission).await;
                    app.idempotency
                        .finish(id, generation, result.as_ref().ok().cloned());
                    result
                });
                match submitted.await {
                    Ok(Some(result)) => result,
                    _ => Err(colony_runtime::Error::Stopped),
                }
            }
        },
    };
    match result {
        Ok(body) => (StatusCode::ACCEPTED, Json(body)).into_response(),
        Err(e) => refused(e),
    }
}

async fn submit_now(app: &App, submission: Submission) -> Result<Value, colony_runtime::Error> {
    match submission {
        Submission::One(spec) => app
            .handle
            .try_submit(spec)
            .await
            .map(|id| json!({ "id": id.0 })),
        Submission::Batch(specs) => app
            .handle
            .try_submit_batch(specs)
            .await
            .map(|a| json!({ "first": a.first.0, "count": a.count })),
        Submission::Decide(spec, vote) => crate::decisions::start(app, spec, vote).await,
    }
}

/// A hash of what a request asks for, when it carries an idempotency key: only such a
/// request pays for one.
fn fingerprint(headers: &HeaderMap, what: &impl std::fmt::Debug) -> Option<u64> {
    headers.contains_key("idempotency-key").then(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        format!("{what:?}").hash(&mut hasher);
        hasher.finish()
    })
}

fn caller_name(caller: Option<axum::Extension<crate::auth::Caller>>) -> Option<Arc<str>> {
    caller.map(|c| c.0.name)
}

pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: HeaderMap,
    task: Result<Json<Object<NewTask>>, JsonRejection>,
) -> Response {
    let task = match body(task) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let print = fingerprint(&headers, &task);
    let submission = match task.spec() {
        Ok((spec, None)) => Submission::One(spec),
        Ok((spec, Some(decide))) => match decide.vote(&app.handle.pools()) {
            Ok(vote) => Submission::Decide(spec, vote),
            Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-decision", e),
        },
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "bad-task", e),
    };
    accept(&app, &headers, caller_name(caller), print, submission).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    tasks: Vec<Object<NewTask>>,
}

pub(crate) async fn submit_batch(
    State(app): State<Arc<App>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: HeaderMap,
    batch: Result<Json<Object<Batch>>, JsonRejection>,
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
    let print = fingerprint(&headers, &batch);
    let mut specs = Vec::with_capacity(batch.tasks.len());
    for (i, Object(t)) in batch.tasks.into_iter().enumerate() {
        match t.spec() {
            Ok((s, None)) => specs.push(s),
            Ok((_, Some(_))) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-task",
                    format!("task {i}: a task with decide is submitted on its own, to /v1/tasks"),
                );
            }
            Err(e) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad-task",
                    format!("task {i}: {e}"),
                );
            }
        }
    }
    let batch = Submission::Batch(specs);
    accept(&app, &headers, caller_name(caller), print, batch).await
}

/// A task id from the path, or the 400 that says it is none.
#[allow(clippy::result_large_err)]
pub(crate) fn task_id(id: &str) -> Result<TaskId, Response> {
    id.parse::<u64>().map(TaskId).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{id:?} is not a task id"),
        )
    })
}

/// A task as the API shows it.
pub(crate) fn view(row: &TaskRow) -> Value {
    let output = row.output.as_deref().map(|o| {
        serde_json::from_slice::<Value>(o)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(o).into_owned()))
    });
    json!({
        "id": row.id.0,
        "key": row.spec.key.as_deref(),
        "state": row.state,
        "attempts": row.attempt,
        "agent": row.agent.map(|a| a.0),
        "output": output,
        "error": row.error.as_deref(),
    })
}

pub(crate) async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    // The view, up to 16 MiB of output, is made on the blocking pool with the read.
    let read = app.read(move |journal| Ok(journal.task(id)?.map(|row| json_bytes(&view(&row)))));
    match read.await {
        Ok(Some(body)) => body,
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no-such-task",
            format!("there is no task {id}"),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e),
    }
}

/// `value` as a JSON response, serialized where it is called: on the blocking pool, for a
/// value that may hold megabytes of task outputs.
fn json_bytes(value: &Value) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serialize",
            e.to_string(),
        ),
    }
}

/// `GET /v1/tasks?state=&before=&limit=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// Most tasks one page lists.
pub(crate) const MAX_PAGE: usize = 1_000;

/// A task state by its API name, or the message that lists the names.
pub(crate) fn parse_state(s: &str) -> Result<TaskState, String> {
    use TaskState as S;
    [
        S::Queued,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::DeadLettered,
        S::Cancelled,
    ]
    .into_iter()
    .find(|state| state.as_str() == s)
    .ok_or_else(|| {
        format!(
            "state {s:?} is not one of queued, running, succeeded, failed, dead-lettered, cancelled"
        )
    })
}

/// The newest tasks, as `GET /v1/tasks` lists them: the page, made with the read on the
/// blocking pool (a page of 1,000 tasks may hold megabytes of outputs).
#[allow(clippy::result_large_err)]
async fn recent(app: &App, query: &ListQuery) -> Result<Response, Response> {
    let state = match query.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            Some(parse_state(s).map_err(|e| problem(StatusCode::BAD_REQUEST, "bad-query", e))?)
        }
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            format!("limit {limit} is out of range: allowed 1..={MAX_PAGE}"),
        ));
    }
    let before = query.before.map(TaskId);
    app.read(move |journal| {
        let rows = journal.recent(state, before, limit)?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|r| r.id.0))
            .flatten();
        let tasks: Vec<Value> = rows.iter().map(view).collect();
        Ok(json_bytes(&json!({ "tasks": tasks, "next-before": next })))
    })
    .await
    .map_err(|e| problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e))
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "expected state, before and limit: for example ?state=failed&limit=50",
        );
    };
    match recent(&app, &query).await {
        Ok(page) | Err(page) => page,
    }
}

pub(crate) async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let id = match task_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match app.handle.cancel(id).await {
        Ok(Some(how)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id.0, "cancelled": how })),
        )
            .into_response(),
        Ok(None) => match app.read(move |journal| journal.task(id)).await {
            Ok(Some(row)) => problem(
                StatusCode::CONFLICT,
                "already-ended",
                format!("task {id} already ended: {}", row.state),
            ),
            Ok(None) => problem(
                StatusCode::NOT_FOUND,
                "no-such-task",
                format!("there is no task {id}"),
            ),
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, "journal", e),
        },
        Err(e) => refused(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_forgotten_and_used_again_outlives_its_first_use() {
        let keys = Idempotency::default();
        let first = |keys: &Idempotency, key: &str, request: u64| match keys.claim(
            None,
            key.to_owned(),
            request,
        ) {
            Claim::First(id, generation) => Some((id, generation)),
            Claim::Answered(_) => None,
        };
        // A first use refused (the runtime was full): forgotten, so a retry is handled afresh.
        let (id, generation) = first(&keys, "a", 7).unwrap();
        keys.finish(id, generation, None);
        let (id, generation) = first(&keys, "a", 7).unwrap();
        keys.finish(id, generation, Some(json!({"id": 1})));
        // Refused requests with keys of their own, until the entries kept reach their bound
        // and the first use's entry is the one evicted.
        for i in 0..2 * Idempotency::KEYS - 1 {
            let (id, generation) = first(&keys, &format!("k{i}"), 1).unwrap();
            keys.finish(id, generation, None);
        }
        // The answer of the second use survived the eviction of the first: a retry is
        // answered again, not accepted twice.
        assert!(first(&keys, "a", 7).is_none());
        let r = keys.lock();
        assert_eq!(
            r.order.len(),
            2 * Idempotency::KEYS,
            "the first use's entry went"
        );
        assert_eq!(r.answers.len(), 1);
    }
}
