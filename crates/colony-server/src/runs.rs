//! Workflow runs over HTTP: a workflow file is checked as `colony validate` would, then run
//! to completion as `colony run` would, with its own pools, beside the server's runtime.
//!
//! A workflow may start programs on this host (`command` and `process` pools), so runs are
//! off unless the server is given a folder for them ([`crate::Config::runs`]) and tokens, and
//! submitting one needs the `admin` scope and a YAML or TOML content type (which a web page
//! cannot send to another site unasked). Each run's results go to `<folder>/<run>/`, as `colony run
//! --out` writes them; its tasks are journaled in memory, so a run cut short by the server
//! stopping is not resumed.
//!
//! A run's runtime is a runtime of its own, with the same metric names as the server's: left
//! to the process's recorder, its gauges would overwrite the server's (its agents and queue
//! in place of the server's) and its counters add to them. So each run goes on a thread of
//! its own, with a tokio runtime of its own, whose metrics go to a registry of runs
//! (`GET /metrics/runs`) and never reach `/metrics`. Its own thread also
//! keeps its work off the workers that answer the API.

use crate::{App, problem};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use colony_workflow::{Finished, Report, Status};
use serde::Serialize;
use serde_json::json;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};
use tokio::sync::oneshot;

/// Most runs remembered; the oldest finished ones are forgotten first (their files stay).
const KEEP: usize = 1_000;

/// The runs of one server.
#[derive(Debug)]
pub(crate) struct Runs {
    folder: PathBuf,
    /// The server's webhooks, added to every run's own.
    webhooks: Vec<colony_workflow::webhooks::Webhook>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    runs: BTreeMap<u64, Arc<Mutex<Run>>>,
}

/// One run as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Run {
    id: u64,
    name: String,
    /// `running`, `succeeded` (every task did), `failed`, `cancelled`, or `error` (it could
    /// not start or stopped short; see `error`).
    state: &'static str,
    tasks: usize,
    finished: Vec<Finished>,
    started: u64,
    output: PathBuf,
    error: Option<String>,
    report: Option<Report>,
    /// Every task with its wave, what it needs, and where it stands: the run's graph, live.
    graph: Vec<Node>,
    /// Dollars its tasks' outputs report (`http` agents, coding-agent CLIs) so far.
    cost_usd: f64,
    #[serde(skip)]
    index: HashMap<String, usize>,
    #[serde(skip)]
    cancel: Option<oneshot::Sender<()>>,
}

/// One task of a run as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) wave: usize,
    pub(crate) needs: Vec<String>,
    /// `waiting` (for what it needs), `started` (handed to the runtime: queued, then run by
    /// an agent), then how it ended: `succeeded`, `failed`, `skipped` or `cancelled`.
    pub(crate) state: &'static str,
    pub(crate) attempts: u32,
    /// From submission to its end.
    pub(crate) seconds: Option<f64>,
    /// What its output says it cost.
    pub(crate) cost_usd: Option<f64>,
    /// Whether its attempts' stderr logs are its own: not for a task decided by vote or
    /// worked by a team, whose asks share the task's name.
    #[serde(skip)]
    pub(crate) own_logs: bool,
}

/// The graph of `workflow`, every task waiting.
fn graph(workflow: &colony_workflow::Workflow) -> Vec<Node> {
    let waves = workflow.graph.waves();
    workflow
        .tasks
        .iter()
        .zip(waves)
        .map(|(t, wave)| Node {
            id: t.id.clone(),
            wave,
            needs: t
                .needs
                .iter()
                .map(|&n| workflow.tasks[n].id.clone())
                .collect(),
            state: "waiting",
            attempts: 0,
            seconds: None,
            cost_usd: None,
            own_logs: t.decide.is_none() && t.team.is_none(),
        })
        .collect()
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
        Status::Skipped => "skipped",
        Status::Cancelled => "cancelled",
    }
}

impl Run {
    fn started_task(&mut self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.graph[i].state = "started";
        }
    }

    fn finished_task(&mut self, f: &Finished) {
        let cost = f.cost_usd;
        if let Some(&i) = self.index.get(&f.id) {
            let node = &mut self.graph[i];
            node.state = status_name(f.status);
            node.attempts = f.attempts;
            node.seconds = Some(f.seconds);
            node.cost_usd = cost;
            self.cost_usd += cost.unwrap_or(0.0);
        }
        self.finished.push(f.clone());
    }
}

/// What the dashboard shows of a run.
#[derive(Debug)]
pub(crate) struct RunView {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) state: &'static str,
    pub(crate) started: u64,
    pub(crate) cost_usd: f64,
    /// Up to the number asked for, in the file's order.
    pub(crate) graph: Vec<Node>,
    pub(crate) tasks: usize,
    /// Tasks by how they stand, in `STATES` order.
    pub(crate) counts: [usize; 6],
    pub(crate) error: Option<String>,
    /// Its results' folder: which files exist is looked up when the view is drawn.
    pub(crate) output: PathBuf,
}

/// The states a task goes through, in the order counts are given.
pub(crate) const STATES: [&str; 6] = [
    "waiting",
    "started",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
];

impl Runs {
    /// The `runs` newest runs, each with up to `tasks` of its tasks.
    pub(crate) fn views(&self, runs: usize, tasks: usize) -> Vec<RunView> {
        let newest: Vec<Arc<Mutex<Run>>> = self
            .lock()
            .runs
            .values()
            .rev()
            .take(runs)
            .cloned()
            .collect();
        newest
            .iter()
            .map(|r| {
                let r = lock(r);
                let mut counts = [0; 6];
                for node in &r.graph {
                    if let Some(i) = STATES.iter().position(|s| *s == node.state) {
                        counts[i] += 1;
                    }
                }
                RunView {
                    id: r.id,
                    name: r.name.clone(),
                    state: r.state,
                    started: r.started,
                    cost_usd: r.cost_usd,
                    graph: r.graph.iter().take(tasks).cloned().collect(),
                    tasks: r.tasks,
                    counts,
                    error: r.error.clone(),
                    output: r.output.clone(),
                }
            })
            .collect()
    }
}

impl Runs {
    pub(crate) fn new(folder: PathBuf, webhooks: Vec<colony_workflow::webhooks::Webhook>) -> Self {
        Self {
            folder,
            webhooks,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock(run: &Mutex<Run>) -> std::sync::MutexGuard<'_, Run> {
    run.lock().unwrap_or_else(|p| p.into_inner())
}

#[allow(clippy::result_large_err)]
fn enabled(app: &App) -> Result<&Runs, Response> {
    app.runs.as_ref().ok_or_else(|| {
        problem(
            StatusCode::FORBIDDEN,
            "runs-disabled",
            "this server runs no workflows: start it with --runs DIR to allow them",
        )
    })
}

/// `POST /v1/runs`: the workflow file as the body (YAML; TOML with `content-type:
/// application/toml`).
pub(crate) async fn submit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let runs = match enabled(&app) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "the workflow is not UTF-8 text",
        );
    };
    // A named type, which a page cannot send to another site without asking first.
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let toml = kind.starts_with("application/toml");
    if !(toml || kind.starts_with("application/yaml") || kind.starts_with("application/x-yaml")) {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad-content-type",
            format!(
                "content-type {kind:?}: a workflow is sent as application/yaml or application/toml"
            ),
        );
    }
    let text = text.to_owned();
    drop(body);
    // Checking a file of up to 16 MiB takes a while: on the blocking pool, not on a worker
    // of the runtime that answers every other request.
    let parsed = tokio::task::spawn_blocking(move || {
        let base = std::env::current_dir().unwrap_or_default();
        let parsed = if toml {
            colony_workflow::parse_toml(&text, "workflow", &base)
        } else {
            colony_workflow::parse(&text, "workflow", &base)
        };
        parsed.map(|w| {
            let nodes = graph(&w);
            (w, nodes)
        })
    })
    .await;
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "check-failed",
                format!("checking the workflow stopped: {e}"),
            );
        }
    };
    let (mut workflow, nodes) = match parsed {
        Ok(w) => w,
        Err(invalid) => {
            let problems: Vec<_> = invalid
                .problems
                .iter()
                .map(|p| {
                    json!({
                        "message": p.message,
                        "line": p.at.map(|a| a.line()),
                        "column": p.at.map(|a| a.column()),
                    })
                })
                .collect();
            let body = json!({ "error": {
                "code": "bad-workflow",
                "message": invalid.to_string(),
                "problems": problems,
            }});
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
        }
    };
    workflow.webhooks.extend(runs.webhooks.iter().cloned());
    // A folder of an earlier server's run keeps its files: its id is not given again, so
    // that no run's results and logs mix with another's.
    let mut id = runs.lock().next + 1;
    loop {
        match tokio::fs::try_exists(runs.folder.join(id.to_string())).await {
            Ok(false) => break,
            Ok(true) => id += 1,
            Err(e) => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "runs-folder",
                    format!("cannot read the runs folder: {e}"),
                );
            }
        }
    }
    let (id, run) = {
        let mut inner = runs.lock();
        // Another run may have taken it meanwhile: then the next after both.
        let id = id.max(inner.next + 1);
        inner.next = id;
        let (tx, rx) = oneshot::channel();
        let run = Arc::new(Mutex::new(Run {
            id,
            name: workflow.name.clone(),
            state: "running",
            tasks: workflow.tasks.len(),
            finished: Vec::new(),
            started: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            output: runs.folder.join(id.to_string()),
            error: None,
            report: None,
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.id.clone(), i))
                .collect(),
            graph: nodes,
            cost_usd: 0.0,
            cancel: Some(tx),
        }));
        inner.runs.insert(id, run.clone());
        while inner.runs.len() > KEEP {
            let oldest = inner
                .runs
                .iter()
                .find(|(_, r)| lock(r).state != "running")
                .map(|(id, _)| *id);
            match oldest {
                Some(old) => inner.runs.remove(&old),
                None => break,
            };
        }
        (id, (run, rx))
    };
    let (run, cancelled) = run;
    let output = lock(&run).output.clone();
    let progress = run.clone();
    let starting = run.clone();
    let options = colony_workflow::Options {
        runtime: colony_runtime::RuntimeOptions::default(),
        journal: Arc::new(colony_journal::MemoryJournal::new()),
        output: Some(output),
        on_started: Some(Box::new(move |id: &str| lock(&starting).started_task(id))),
        on_finished: Some(Box::new(move |f: &Finished| {
            lock(&progress).finished_task(f);
        })),
        cancel: Some(Box::pin(async move {
            // A dropped sender (the run forgotten) is no cancellation.
            if cancelled.await.is_err() {
                std::future::pending::<()>().await;
            }
        })),
        prior: Vec::new(),
    };
    let finished = run.clone();
    let started = colony_runtime::spawner::Spawner::spawn_thread("workflow-run", move || {
        // Everything the run's runtime records, on this thread, goes to the runs' registry.
        let _recorder = metrics::set_default_local_recorder(registry());
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the run's runtime: {e}"))
            .and_then(|rt| {
                rt.block_on(colony_workflow::run(&workflow, options))
                    .map_err(|e| e.to_string())
            });
        let mut r = lock(&finished);
        r.cancel = None;
        match result {
            Ok(report) => {
                // Tasks the run ended without running (cancelled) are told only here.
                for t in &report.tasks {
                    if let Some(&i) = r.index.get(&t.id)
                        && matches!(r.graph[i].state, "waiting" | "started")
                    {
                        r.graph[i].state = status_name(t.status);
                        r.graph[i].attempts = t.attempts;
                    }
                }
                // The pools' metered total counts what outputs do not: ballots, team steps,
                // retries and failed calls of `http` agents and coding-agent CLIs.
                r.cost_usd = r.cost_usd.max(report.usage.cost_usd);
                r.state = if report.all_succeeded() {
                    "succeeded"
                } else if report.cancelled > 0 {
                    "cancelled"
                } else {
                    "failed"
                };
                r.report = Some(report);
            }
            Err(e) => {
                r.state = "error";
                r.error = Some(e);
                // Stopped short: nothing more of it runs.
                for node in &mut r.graph {
                    if matches!(node.state, "waiting" | "started") {
                        node.state = "cancelled";
                    }
                }
            }
        }
    });
    if let Err(e) = started {
        let mut r = lock(&run);
        r.cancel = None;
        r.state = "error";
        r.error = Some(format!("cannot start a thread for the run: {e}"));
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "url": format!("/v1/runs/{id}") })),
    )
        .into_response()
}

/// The registry every run's runtime records its metrics in, apart from the server's.
fn registry() -> &'static metrics_exporter_prometheus::PrometheusRecorder {
    static RUNS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusRecorder> =
        std::sync::OnceLock::new();
    RUNS.get_or_init(|| {
        let recorder = crate::live::recorder();
        metrics::with_local_recorder(&recorder, colony_runtime::metrics::describe);
        recorder
    })
}

/// `GET /metrics/runs`: the metrics of every workflow run's runtime since the server started,
/// as Prometheus text; the server's own are at `/metrics`.
pub(crate) async fn metrics_text() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        registry().handle().render(),
    )
        .into_response()
}

/// The query of `GET /v1/runs`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// `GET /v1/runs?limit=N`: the runs remembered (all, or the `N` newest), newest first,
/// without their tasks.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Response {
    let runs = match enabled(&app) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let all: Vec<Arc<Mutex<Run>>> = runs
        .lock()
        .runs
        .values()
        .rev()
        .take(q.limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    // Counting goes over every task that ended in up to 1,000 runs: on the blocking pool.
    off_the_workers(&app, move || {
        let rows: Vec<_> = all
            .iter()
            .map(|r| {
                let r = lock(r);
                // From the graph, which also holds the tasks a run ended without running.
                let count =
                    |s: Status| r.graph.iter().filter(|n| n.state == status_name(s)).count();
                json!({
                    "id": r.id, "name": r.name, "state": r.state, "tasks": r.tasks,
                    "cost-usd": r.cost_usd,
                    "succeeded": count(Status::Succeeded), "failed": count(Status::Failed),
                    "skipped": count(Status::Skipped), "cancelled": count(Status::Cancelled),
                    "started": r.started, "error": r.error,
                })
            })
            .collect();
        serde_json::to_vec(&json!({ "runs": rows }))
    })
    .await
}

/// A JSON answer made by `make` on tokio's blocking pool: a run's view holds every task that
/// ended in it (a workflow may have 100,000), too much to serialize on a worker of the
/// runtime, and under a lock the run's own thread takes as its tasks end.
async fn off_the_workers(
    app: &App,
    make: impl FnOnce() -> Result<Vec<u8>, serde_json::Error> + Send + 'static,
) -> Response {
    match app.blocking(make).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(Err(e)) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serialize",
            e.to_string(),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, "serialize", e),
    }
}

#[allow(clippy::result_large_err)]
fn find(app: &App, id: &str) -> Result<Arc<Mutex<Run>>, Response> {
    let runs = enabled(app)?;
    let Ok(n) = id.parse::<u64>() else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("{id:?} is not a run id"),
        ));
    };
    runs.lock().runs.get(&n).cloned().ok_or_else(|| {
        problem(
            StatusCode::NOT_FOUND,
            "no-such-run",
            format!("there is no run {n}"),
        )
    })
}

/// `GET /v1/runs/{id}`: the run, each task that has ended, and the report once it is done.
pub(crate) async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match find(&app, &id) {
        Ok(run) => off_the_workers(&app, move || serde_json::to_vec(&*lock(&run))).await,
        Err(r) => r,
    }
}

/// `GET /v1/runs/{id}/graph`: the run's tasks with where each stands, without outputs: what
/// a live view polls.
pub(crate) async fn graph_of(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<GraphQuery>,
) -> Response {
    match find(&app, &id) {
        Ok(run) => {
            off_the_workers(&app, move || {
                // Copied under the lock, written out after: the run's own thread takes the
                // lock as each task starts and ends.
                let (head, graph) = {
                    let r = lock(&run);
                    let waves = r.graph.iter().map(|n| n.wave + 1).max().unwrap_or(0);
                    let head = json!({
                        "id": r.id, "name": r.name, "state": r.state, "tasks": r.tasks,
                        "cost-usd": r.cost_usd, "started": r.started, "waves": waves,
                    });
                    let shown = q.waves.unwrap_or(usize::MAX);
                    let graph: Vec<Node> =
                        r.graph.iter().filter(|n| n.wave < shown).cloned().collect();
                    (head, graph)
                };
                let mut body = head;
                body["graph"] = serde_json::to_value(graph)?;
                serde_json::to_vec(&body)
            })
            .await
        }
        Err(r) => r,
    }
}

/// The query of `GET /v1/runs/{id}/graph`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct GraphQuery {
    /// Only the tasks of the first this many waves.
    waves: Option<usize>,
}

/// `POST /v1/runs/{id}/cancel`: nothing more starts, running attempts are stopped, and the
/// tasks that did not finish end `cancelled`.
pub(crate) async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let run = match find(&app, &id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut r = lock(&run);
    match r.cancel.take() {
        Some(tx) => {
            let _ = tx.send(());
            (
                StatusCode::ACCEPTED,
                Json(json!({ "id": r.id, "cancelled": "stopping" })),
            )
                .into_response()
        }
        None => problem(
            StatusCode::CONFLICT,
            "already-ended",
            format!("run {} already ended: {}", r.id, r.state),
        ),
    }
}

/// Largest result file or stderr log served.
const MAX_FILE: u64 = 64 << 20;

/// `GET /v1/runs/{id}/results/{task}`: the task's result file, as `colony run` writes it.
pub(crate) async fn result(
    State(app): State<Arc<App>>,
    Path((id, task)): Path<(String, String)>,
) -> Response {
    let (output, _, _) = match task_of(&app, id, task.clone()).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    serve_file(
        &output,
        &format!("{task}.json"),
        "application/json",
        "no-result",
        &format!("task {task} has no result file yet"),
    )
    .await
}

/// `GET /v1/runs/{id}/logs/{task}/{attempt}`: what the attempt wrote on stderr (a `command`
/// agent's), secrets hidden.
pub(crate) async fn log(
    State(app): State<Arc<App>>,
    Path((id, task, attempt)): Path<(String, String, String)>,
) -> Response {
    let (output, attempts, own_logs) = match task_of(&app, id, task.clone()).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let attempt = match attempt.parse::<u32>() {
        Ok(a) if own_logs && (1..=attempts.max(1)).contains(&a) => a,
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "no-such-attempt",
                format!("task {task} has no attempt {attempt:?}"),
            );
        }
    };
    serve_file(
        &output.join("logs"),
        &format!("{task}.{attempt}.stderr"),
        "text/plain; charset=utf-8",
        "no-log",
        &format!("attempt {attempt} of task {task} wrote nothing on stderr"),
    )
    .await
}

/// The run's output folder, the task's attempts so far and whether its logs are its own, for
/// a task of run `id`. The run's lock is taken on the blocking pool: it may be held a while
/// by a view of a large run.
async fn task_of(
    app: &Arc<App>,
    id: String,
    task: String,
) -> Result<(PathBuf, u32, bool), Response> {
    let run = find(app, &id)?;
    let found = app
        .blocking(move || {
            let r = lock(&run);
            match r.index.get(&task) {
                Some(&i) => Ok((r.output.clone(), r.graph[i].attempts, r.graph[i].own_logs)),
                None => Err(format!("run {} has no task {task:?}", r.id)),
            }
        })
        .await;
    match found {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(message)) => Err(problem(StatusCode::NOT_FOUND, "no-such-task", message)),
        Err(e) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, "busy", e)),
    }
}

/// `root/name`, a file of the run's own, read whole (it is at most [`MAX_FILE`]).
async fn serve_file(
    root: &std::path::Path,
    name: &str,
    kind: &'static str,
    missing: &'static str,
    missing_message: &str,
) -> Response {
    let path = match colony_core::name::join_under(root, name) {
        Ok(path) => path,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-name", e.to_string()),
    };
    // Not followed: a link an agent planted in the output folder names a file of someone else's.
    match tokio::fs::symlink_metadata(&path).await {
        Ok(m) if m.len() > MAX_FILE => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("{name} has {} bytes: over the {MAX_FILE} served", m.len()),
            );
        }
        Ok(m) if m.file_type().is_file() => {}
        _ => return problem(StatusCode::NOT_FOUND, missing, missing_message),
    }
    let read = async {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(&path).await?;
        let mut bytes = Vec::new();
        // A log that grew since: what fits.
        file.take(MAX_FILE).read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    match read.await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; sandbox",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "read-failed",
            format!("cannot read {name}: {e}"),
        ),
    }
}
