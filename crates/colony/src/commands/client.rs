//! The clients of `colony serve`: `colony submit`, `status` and `cancel`, and the `--server`
//! forms of `colony tasks` and `colony agents` (`colony runs` is in `runs.rs`).

use crate::{
    Failure,
    output::{Table, thousands},
};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "COLONY_SERVER", default_value = "http://127.0.0.1:7070")]
    pub(crate) server: String,
    /// A bearer token, when the server asks for one (see `colony token create`).
    #[arg(long, env = "COLONY_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

/// Where `colony tasks` and `colony agents` read: a journal, or a running server.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["db", "server"])))]
pub(crate) struct Source {
    /// The SQLite journal to read.
    #[arg(long, value_name = "PATH")]
    pub(crate) db: Option<std::path::PathBuf>,
    /// A running server to ask instead (`colony serve`).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The server's bearer token.
    #[arg(
        long,
        env = "COLONY_TOKEN",
        hide_env_values = true,
        requires = "server"
    )]
    token: Option<String>,
}

/// What a [`Source`] names.
#[derive(Debug)]
pub(crate) enum Origin<'a> {
    Journal(&'a std::path::Path),
    Server(ServerArgs),
}

impl Source {
    /// The journal or the server named (clap requires one of them).
    pub(crate) fn origin(&self) -> Result<Origin<'_>, Failure> {
        match (&self.db, &self.server) {
            (Some(db), _) => Ok(Origin::Journal(db)),
            (None, Some(server)) => Ok(Origin::Server(ServerArgs {
                server: server.clone(),
                token: self.token.clone(),
            })),
            (None, None) => Err(Failure::input(anyhow::anyhow!(
                "say where to read: --db PATH or --server URL"
            ))),
        }
    }
}

/// An HTTP client of one server. Its errors name the URL: a server that cannot be reached
/// or fails is exit code 1; a request the server refuses as the caller's fault is exit 2.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(args: &ServerArgs) -> Result<Self, Failure> {
        let base = args.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::input(anyhow::anyhow!(
                "--server {base:?} is not an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(Failure::work)?;
        Ok(Self {
            base,
            token: args.token.clone(),
            http,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(self.url(path)), path).await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, Failure> {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.send(request, path).await
    }

    /// Posts `text` as a body of type `kind` (a workflow file: YAML or TOML).
    pub(crate) async fn post_text(
        &self,
        path: &str,
        kind: &str,
        text: String,
    ) -> Result<Value, Failure> {
        let request = self
            .http
            .post(self.url(path))
            .header("content-type", kind)
            .body(text);
        self.send(request, path).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Result<Value, Failure> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let url = self.url(path);
        let response = request
            .send()
            .await
            .map_err(|e| Failure::work(anyhow::anyhow!("cannot reach {url}: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Failure::work(anyhow::anyhow!("{url}: the answer broke off: {e}")))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let error = &value["error"];
        let said = match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => format!("{message} ({code})"),
            _ => String::from_utf8_lossy(&body).trim().to_owned(),
        };
        let message = anyhow::anyhow!("{url}: {status}: {said}");
        Err(if status.is_client_error() && status.as_u16() != 429 {
            Failure::input(message)
        } else {
            Failure::work(message)
        })
    }
}

/// Runs `f` on a small tokio runtime: the clients are one request or a few.
pub(crate) fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?
        .block_on(f)
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The task's payload, as JSON (a bare word that is not JSON is sent as a string).
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    payload: Option<String>,
    /// Submit one task per line of this file (JSON payloads), in batches.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    #[command(flatten)]
    task: TaskFlags,
    /// Wait for the task to end and print its output; exit 1 unless it succeeded.
    #[arg(long, conflicts_with = "file")]
    wait: bool,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// A task's settings as `submit` takes them, to a server or to a cluster.
#[derive(Debug, clap::Args)]
pub(crate) struct TaskFlags {
    /// Only agents of this role may run it.
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// 0 (lowest) to 9.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub(crate) priority: Option<u8>,
    /// Seconds an attempt may run (at most 7 days).
    #[arg(long, value_parser = crate::flags::Float::new(0.001, 604_800.0))]
    pub(crate) timeout: Option<f64>,
    /// Attempts the task may use, retries included, before it is dead-lettered (1 to 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(colony_core::task::MAX_ATTEMPTS)))]
    pub(crate) max_attempts: Option<u32>,
    /// A key of your own, kept with the task.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Makes a retried submission safe: the task is accepted once per key (with --file, per
    /// batch or line).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub(crate) idempotency_key: Option<String>,
}

/// Tasks per batch request when submitting a file.
const BATCH: usize = 10_000;

pub(crate) fn submit(args: &SubmitArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    let task = |payload: Value| {
        let mut t = json!({ "payload": payload });
        let fields = [
            ("role", args.task.role.clone().map(Value::from)),
            ("priority", args.task.priority.map(Value::from)),
            ("timeout", args.task.timeout.map(Value::from)),
            ("max-attempts", args.task.max_attempts.map(Value::from)),
            ("key", args.task.key.clone().map(Value::from)),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                t[name] = v;
            }
        }
        t
    };
    block_on(async {
        let Some(path) = &args.file else {
            let raw = args.payload.as_deref().unwrap_or("null");
            let payload = serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw));
            let body = task(payload);
            let accepted = client
                .post("/v1/tasks", &body, args.task.idempotency_key.as_deref())
                .await?;
            let id = accepted["id"].as_u64().unwrap_or_default();
            if !args.wait {
                if args.json {
                    println!("{accepted}");
                } else {
                    println!("{id}");
                }
                return Ok(());
            }
            let done = wait(&client, id).await?;
            if args.json {
                println!("{done}");
            } else {
                print_task(&done);
            }
            return if done["state"] == "succeeded" {
                Ok(())
            } else {
                Err(Failure::work(anyhow::anyhow!(
                    "task {id} ended {}",
                    done["state"].as_str().unwrap_or("?")
                )))
            };
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::input(anyhow::anyhow!("cannot read {}: {e}", path.display())))?;
        let mut tasks = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let payload: Value = serde_json::from_str(line).map_err(|e| {
                Failure::input(anyhow::anyhow!(
                    "{}:{}: not JSON: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            tasks.push(task(payload));
        }
        if tasks.is_empty() {
            return Err(Failure::input(anyhow::anyhow!(
                "{} holds no tasks: one JSON payload per line",
                path.display()
            )));
        }
        // Each batch's ids are one run; another submitter's may fall between two batches.
        let (mut first, mut count) = (None, 0u64);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (n, chunk) in tasks.chunks(BATCH).enumerate() {
            // Each batch has its own key, so that rerunning after a failure part-way
            // resubmits only the batches the server has not accepted.
            let key = args
                .task
                .idempotency_key
                .as_ref()
                .map(|k| format!("{k}/{n}"));
            let body = json!({ "tasks": chunk });
            let accepted = client
                .post("/v1/tasks/batch", &body, key.as_deref())
                .await?;
            first = first.or(accepted["first"].as_u64());
            let (from, n) = (
                accepted["first"].as_u64().unwrap_or_default(),
                accepted["count"].as_u64().unwrap_or_default(),
            );
            count += n;
            match runs.last_mut() {
                Some((_, last)) if n > 0 && *last + 1 == from => *last = from + n - 1,
                _ if n > 0 => runs.push((from, from + n - 1)),
                _ => {}
            }
        }
        if args.json {
            println!(
                "{}",
                json!({ "first": first, "count": count, "runs": runs })
            );
        } else {
            let ids: Vec<String> = runs.iter().map(|(a, b)| format!("{a}..={b}")).collect();
            println!(
                "{} tasks accepted, ids {}",
                thousands(count),
                ids.join(", ")
            );
        }
        Ok(())
    })
}

/// Polls a task until it ends.
async fn wait(client: &Client, id: u64) -> Result<Value, Failure> {
    let mut pause = Duration::from_millis(20);
    loop {
        let task = client.get(&format!("/v1/tasks/{id}")).await?;
        let state = task["state"].as_str().unwrap_or_default();
        if !matches!(state, "queued" | "running") {
            return Ok(task);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn print_task(task: &Value) {
    let mut t = Table::new(&["field", "value"]);
    for field in ["id", "key", "state", "attempts", "agent", "error", "output"] {
        let v = &task[field];
        let text = match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        t.row(vec![field.to_owned(), text]);
    }
    print!("{}", t.render());
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A task to show; without one, the server's counters.
    id: Option<u64>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn status(args: &StatusArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    block_on(async {
        let Some(id) = args.id else {
            let stats = client.get("/v1/stats").await?;
            if args.json {
                println!("{stats}");
                return Ok(());
            }
            let mut t = Table::new(&["counter", "value"]);
            if let Some(fields) = stats.as_object() {
                for (name, value) in fields {
                    let n = value.as_u64().unwrap_or_default();
                    t.row(vec![name.replace('_', "-"), thousands(n)]);
                }
            }
            print!("{}", t.render());
            return Ok(());
        };
        let task = client.get(&format!("/v1/tasks/{id}")).await?;
        if args.json {
            println!("{task}");
        } else {
            print_task(&task);
        }
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The tasks to cancel.
    #[arg(required = true)]
    ids: Vec<u64>,
}

/// Cancels each task in turn. Exit code 2 when every failure was the caller's (an unknown id,
/// a task already ended: the server's 4xx), as `colony status` of an unknown id; 1 when any
/// was the server's or the network's.
pub(crate) fn cancel(args: &CancelArgs) -> Result<(), Failure> {
    let client = Client::new(&args.server)?;
    block_on(async {
        let mut failed = None;
        let mut work_failed = false;
        for id in &args.ids {
            match client
                .post(&format!("/v1/tasks/{id}/cancel"), &json!({}), None)
                .await
            {
                Ok(r) => println!(
                    "{id}: {}",
                    match r["cancelled"].as_str() {
                        Some("now") => "cancelled",
                        _ => "stopping its attempt; it ends cancelled",
                    }
                ),
                Err(f) => {
                    let e = match f {
                        Failure::Input(e) => e,
                        Failure::Work(e) => {
                            work_failed = true;
                            e
                        }
                    };
                    eprintln!("{id}: {e:#}");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if work_failed => Err(Failure::work(e.context("not every task was cancelled"))),
            Some(e) => Err(Failure::input(e.context("not every task was cancelled"))),
            None => Ok(()),
        }
    })
}

/// `colony tasks --server`: the newest tasks, by state.
pub(crate) fn tasks(
    server: &ServerArgs,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<(), Failure> {
    let client = Client::new(server)?;
    block_on(async {
        let mut path = format!("/v1/tasks?limit={}", limit.clamp(1, 1_000));
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        let stats = client.get("/v1/stats").await?;
        let page = client.get(&path).await?;
        if json {
            println!("{}", json!({ "stats": stats, "tasks": page["tasks"] }));
            return Ok(());
        }
        let mut t = Table::new(&["state", "tasks"]);
        for name in [
            "queued",
            "running",
            "succeeded",
            "failed",
            "dead_lettered",
            "cancelled",
        ] {
            let n = stats[name].as_u64().unwrap_or_default();
            t.row(vec![name.replace('_', "-"), thousands(n)]);
        }
        print!("{}", t.render());
        let rows = page["tasks"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            println!();
            let mut t = Table::new(&["id", "state", "attempts", "agent", "error"]);
            for task in rows {
                let mut error = task["error"].as_str().unwrap_or_default().to_owned();
                if error.chars().count() > 60 {
                    error = error.chars().take(57).collect::<String>() + "...";
                }
                t.row(vec![
                    task["id"].to_string(),
                    task["state"].as_str().unwrap_or_default().to_owned(),
                    task["attempts"].to_string(),
                    task["agent"].as_u64().map_or("-".into(), |a| a.to_string()),
                    error,
                ]);
            }
            print!("{}", t.render());
        }
        Ok(())
    })
}

/// What `colony agents --server` asks for.
#[derive(Debug)]
pub(crate) enum AgentsQuery<'a> {
    Tiers,
    Tier(&'a str),
    Children(u32),
    Ancestors(u32),
    One(u32),
}

/// `colony agents --server`: the live hierarchy.
pub(crate) fn agents(
    server: &ServerArgs,
    query: AgentsQuery<'_>,
    limit: usize,
    json: bool,
) -> Result<(), Failure> {
    let client = Client::new(server)?;
    block_on(async {
        let limit = limit.clamp(1, 1_000);
        let agents: Value = match query {
            AgentsQuery::Tiers => {
                let h = client.get("/v1/hierarchy").await?;
                if json {
                    println!("{h}");
                    return Ok(());
                }
                let mut t = Table::new(&[
                    "tier", "agents", "down", "retired", "degraded", "critical", "failed",
                ]);
                for tier in h["tiers"].as_array().cloned().unwrap_or_default() {
                    let n = |f: &str| thousands(tier[f].as_u64().unwrap_or_default());
                    t.row(vec![
                        tier["name"].as_str().unwrap_or_default().to_owned(),
                        n("agents"),
                        n("down"),
                        n("retired"),
                        n("degraded"),
                        n("critical"),
                        n("failed"),
                    ]);
                }
                print!("{}", t.render());
                return Ok(());
            }
            AgentsQuery::Tier(name) => client
                .get(&format!("/v1/agents?tier={name}&limit={limit}"))
                .await?["agents"]
                .clone(),
            AgentsQuery::Children(id) => client
                .get(&format!("/v1/agents?parent={id}&limit={limit}"))
                .await?["agents"]
                .clone(),
            AgentsQuery::Ancestors(id) => {
                client.get(&format!("/v1/agents/{id}")).await?["ancestors"].clone()
            }
            AgentsQuery::One(id) => {
                let mut one = client.get(&format!("/v1/agents/{id}")).await?;
                if json {
                    println!("{one}");
                    return Ok(());
                }
                if let Some(o) = one.as_object_mut() {
                    o.remove("ancestors");
                    o.remove("children-list");
                }
                Value::Array(vec![one])
            }
        };
        if json {
            println!("{agents}");
            return Ok(());
        }
        let mut t = Table::new(&AGENT_COLUMNS);
        for a in agents.as_array().cloned().unwrap_or_default() {
            t.row(agent_cells(&a));
        }
        print!("{}", t.render());
        Ok(())
    })
}

/// The columns of an agent's row, as `colony agents --server` and `colony cluster agents`
/// print them.
pub(crate) const AGENT_COLUMNS: [&str; 8] = [
    "agent", "tier", "parent", "state", "health", "role", "load", "capacity",
];

/// An agent of the API (`GET /v1/agents`) as the cells of [`AGENT_COLUMNS`]; `-` for
/// what it does not have.
pub(crate) fn agent_cells(agent: &Value) -> Vec<String> {
    [
        "id", "tier", "parent", "state", "health", "role", "load", "capacity",
    ]
    .iter()
    .map(|field| match &agent[*field] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    })
    .collect()
}
