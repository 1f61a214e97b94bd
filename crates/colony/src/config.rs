//! The settings of `colony serve`, resolved in one place from every layer, lowest first:
//! built-in defaults, the pools file's `runtime:` section, `colony.toml`, `COLONY_*`
//! environment variables, command-line flags. `colony serve`, `colony config check` and
//! `colony config show` all call [`resolve`], so that what is shown is what runs.
//! `docs/configuration.md` documents every key.

use colony_journal::sqlite::Location;
use colony_workflow::{
    Pools, RuntimeSettings,
    file::{self, Located, Where},
};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

/// Longest `colony.toml` read, in bytes: a complete file is a few kilobytes.
pub(crate) const MAX_CONFIG_BYTES: u64 = 256 << 10;

/// Longest value of one `COLONY_*` variable read, in bytes.
const MAX_ENV_BYTES: usize = 4096;

/// The file read when neither `--config` nor `COLONY_CONFIG` names one, if it exists.
pub(crate) const DEFAULT_FILE: &str = "colony.toml";

/// The variable naming the configuration file.
pub(crate) const CONFIG_VAR: &str = "COLONY_CONFIG";

/// Prefix of the variables that set `[runtime]` keys: `COLONY_RUNTIME_` and the key's path
/// in capitals, `.` and `-` as `_` (`health.failed-after` is `COLONY_RUNTIME_HEALTH_FAILED_AFTER`).
const RUNTIME_PREFIX: &str = "COLONY_RUNTIME_";

/// Every key of `[server]`, in the order `config show` lists them. Each is also the flag
/// `--KEY` of `colony serve` and the variable `COLONY_KEY` (capitals, `-` as `_`).
pub(crate) const SERVER_KEYS: &[&str] = &[
    "addr",
    "agents",
    "pools",
    "out",
    "db",
    "tokens",
    "tls-cert",
    "tls-key",
    "rate-limit",
    "runs",
    "memory",
    "memory-chroma",
    "memory-shards",
    "max-connections",
    "header-timeout",
    "idle-timeout",
    "backup-to",
    "backup-every",
    "webhook",
    "webhook-secret-env",
];

/// Keys whose values are numbers: a variable setting one is read as a number.
const NUMERIC_KEYS: &[&str] = &[
    "server.agents",
    "server.rate-limit",
    "server.memory-shards",
    "server.max-connections",
    "server.header-timeout",
    "server.idle-timeout",
    "runtime.span",
    "runtime.weights.load",
    "runtime.weights.latency",
    "runtime.weights.affinity",
    "runtime.queue-capacity",
    "runtime.steal-at",
    "runtime.rebalance.tolerance",
    "runtime.health.alpha",
    "runtime.health.baseline-alpha",
    "runtime.health.alert-rise",
    "runtime.supervision.max-restarts",
    "runtime.supervision.multiplier",
    "runtime.supervision.jitter",
    "runtime.retry.jitter",
    "runtime.retry.poison-faults",
    "runtime.seed",
    "runtime.breaker.error-rate",
    "runtime.breaker.probation",
    "runtime.messages.capacity",
    "runtime.messages.batch",
    "runtime.messages.max-body",
];

/// Default of `--addr`.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:7070";
/// Default of `--agents`.
pub(crate) const DEFAULT_AGENTS: u32 = 1_000;
/// Default of `--out`.
pub(crate) const DEFAULT_OUT: &str = "colony-out/serve";
/// Most of `--max-connections`.
pub(crate) const MAX_CONNECTIONS: u64 = 1_000_000;
/// Most seconds of `--header-timeout` and `--idle-timeout`.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 3_600;

/// The variable that sets `key` (`server.addr`, `runtime.health.heartbeat`).
pub(crate) fn variable(key: &str) -> String {
    let name = match key.strip_prefix("server.") {
        Some(k) => format!("COLONY_{k}"),
        None => format!("COLONY_{key}"),
    };
    name.to_ascii_uppercase().replace(['.', '-'], "_")
}

/// `colony.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Document {
    #[serde(default)]
    server: Server,
    #[serde(default)]
    runtime: file::Runtime,
}

/// `[server]`: the flags of `colony serve`, each absent key taking the layer below.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Server {
    #[serde(default)]
    addr: Option<Located<String>>,
    #[serde(default)]
    agents: Option<Located<u32>>,
    #[serde(default)]
    pools: Option<Located<String>>,
    #[serde(default)]
    out: Option<Located<String>>,
    #[serde(default)]
    db: Option<Located<String>>,
    #[serde(default)]
    tokens: Option<Located<String>>,
    #[serde(default)]
    tls_cert: Option<Located<String>>,
    #[serde(default)]
    tls_key: Option<Located<String>>,
    #[serde(default)]
    rate_limit: Option<Located<u32>>,
    #[serde(default)]
    runs: Option<Located<String>>,
    #[serde(default)]
    memory: Option<Located<String>>,
    #[serde(default)]
    memory_chroma: Option<Located<String>>,
    #[serde(default)]
    memory_shards: Option<Located<u64>>,
    #[serde(default)]
    max_connections: Option<Located<u64>>,
    #[serde(default)]
    header_timeout: Option<Located<u64>>,
    #[serde(default)]
    idle_timeout: Option<Located<u64>>,
    #[serde(default)]
    backup_to: Option<Located<String>>,
    #[serde(default)]
    backup_every: Option<Located<String>>,
    #[serde(default)]
    webhook: Option<Located<String>>,
    #[serde(default)]
    webhook_secret_env: Option<Located<String>>,
}

/// The flags of `colony serve` that were given; `None` takes the layers below.
#[derive(Debug, Default, Clone)]
pub(crate) struct Flags {
    pub(crate) config: Option<PathBuf>,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) agents: Option<u32>,
    pub(crate) pools: Option<PathBuf>,
    pub(crate) out: Option<PathBuf>,
    pub(crate) db: Option<PathBuf>,
    pub(crate) tokens: Option<PathBuf>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) rate_limit: Option<NonZeroU32>,
    pub(crate) runs: Option<PathBuf>,
    pub(crate) memory: Option<PathBuf>,
    pub(crate) memory_chroma: Option<String>,
    pub(crate) memory_shards: Option<u64>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) header_timeout: Option<u64>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) backup_to: Option<String>,
    pub(crate) backup_every: Option<Duration>,
    pub(crate) webhook: Option<String>,
    pub(crate) webhook_secret_env: Option<String>,
}

/// Where a setting came from, lowest layer first: the order of precedence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    Default,
    /// The pools file, and the line of the key.
    Pools(String, u64),
    /// The configuration file, and the line of the key.
    File(String, u64),
    Env(String),
    Flag(&'static str),
}

impl Source {
    /// The layer, without where in it: two settings from one layer have equal ranks.
    fn rank(&self) -> u8 {
        match self {
            Source::Default => 0,
            Source::Pools(..) => 1,
            Source::File(..) => 2,
            Source::Env(_) => 3,
            Source::Flag(_) => 4,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Pools(path, line) | Source::File(path, line) => write!(f, "{path}:{line}"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Every problem found in the layers, each with where it is: `path:line:column: message`,
/// or `env COLONY_X: message`.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) problems: Vec<String>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for Invalid {}

/// Why the settings could not be resolved.
#[derive(Debug)]
pub(crate) enum Error {
    /// The configuration file, a variable or a flag is wrong.
    Invalid(Invalid),
    /// The configuration file could not be read.
    Read(colony_workflow::ReadError),
    /// The pools file could not be read or is wrong.
    Pools(colony_workflow::Error),
}

/// The server's settings, resolved.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub(crate) addr: SocketAddr,
    pub(crate) agents: u32,
    pub(crate) pools: Option<PathBuf>,
    pub(crate) out: PathBuf,
    pub(crate) db: Option<PathBuf>,
    pub(crate) tokens: Option<PathBuf>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) rate_limit: Option<NonZeroU32>,
    pub(crate) runs: Option<PathBuf>,
    pub(crate) memory: Option<PathBuf>,
    /// The memory on a ChromaDB server instead: its URL, as `colony memory --chroma` takes.
    pub(crate) memory_chroma: Option<String>,
    /// Stores the memory is spread over.
    pub(crate) memory_shards: u64,
    pub(crate) max_connections: u64,
    pub(crate) header_timeout: u64,
    pub(crate) idle_timeout: u64,
    /// Where the journal is backed up continuously, if anywhere.
    pub(crate) backup_to: Option<Location>,
    /// How often.
    pub(crate) backup_every: Duration,
    /// Where every run posted to `/v1/runs` also posts its events, and the variable of the
    /// secret they are signed with.
    pub(crate) webhook: Option<String>,
    pub(crate) webhook_secret_env: Option<String>,
}

/// Everything `colony serve` runs with, and where each setting came from.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) server: ServerSettings,
    /// The pools file's pools, when there is one.
    pub(crate) pools: Option<Pools>,
    pub(crate) runtime: RuntimeSettings,
    /// The configuration file read, if any.
    pub(crate) file: Option<PathBuf>,
    /// Each key (`server.addr`, `runtime.span`) and where its value came from.
    pub(crate) sources: BTreeMap<String, Source>,
}

impl Resolved {
    /// Every key with its value and source, server keys first, in the documented order.
    pub(crate) fn entries(&self) -> Vec<(String, String, Source)> {
        let s = &self.server;
        let path = |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
        let values: Vec<String> = vec![
            s.addr.to_string(),
            s.agents.to_string(),
            path(&s.pools),
            s.out.display().to_string(),
            path(&s.db),
            path(&s.tokens),
            path(&s.tls_cert),
            path(&s.tls_key),
            s.rate_limit.map_or("-".into(), |n| n.to_string()),
            path(&s.runs),
            path(&s.memory),
            s.memory_chroma.clone().unwrap_or_else(|| "-".into()),
            s.memory_shards.to_string(),
            s.max_connections.to_string(),
            s.header_timeout.to_string(),
            s.idle_timeout.to_string(),
            s.backup_to.as_ref().map_or("-".into(), |l| l.to_string()),
            humantime::format_duration(s.backup_every).to_string(),
            s.webhook.clone().unwrap_or_else(|| "-".into()),
            s.webhook_secret_env.clone().unwrap_or_else(|| "-".into()),
        ];
        let source = |key: &str| self.sources.get(key).cloned().unwrap_or(Source::Default);
        let mut out: Vec<_> = SERVER_KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| {
                let key = format!("server.{k}");
                let from = source(&key);
                (key, v, from)
            })
            .collect();
        for (k, v) in self.runtime.entries() {
            let key = format!("runtime.{k}");
            let from = source(&key);
            out.push((key, v, from));
        }
        out
    }
}

/// One layer read from text: the configuration file, or the variables written as one.
struct Layer {
    document: Document,
    text: String,
    /// How a place in `text` is named.
    names: Names,
}

/// How the places of a layer are named.
enum Names {
    /// A file: `path:line:column`; paths in it are relative to `base`.
    File { path: String, base: PathBuf },
    /// The variables: line `n` of the text is the `n`th variable.
    Env(Vec<String>),
}

impl Layer {
    /// The source of a value written at `at`.
    fn source(&self, at: Where) -> Source {
        let line = at.position(&self.text).map_or(0, |p| p.line);
        match &self.names {
            Names::File { path, .. } => Source::File(path.clone(), line),
            Names::Env(vars) => Source::Env(
                vars.get(line.saturating_sub(1) as usize)
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    /// A problem at `at`, named as the layer names places.
    fn problem(&self, at: Where, message: &str) -> String {
        let position = at.position(&self.text);
        match (&self.names, position) {
            (Names::File { path, .. }, Some(p)) => {
                format!("{path}:{}:{}: {message}", p.line, p.column)
            }
            (Names::File { path, .. }, None) => format!("{path}: {message}"),
            (Names::Env(_), _) => format!("{}: {message}", self.source(at)),
        }
    }

    /// A path as written in this layer: relative to the file's folder in a file, to the
    /// current folder in a variable.
    fn path(&self, written: &str) -> PathBuf {
        match &self.names {
            Names::File { base, .. } => base.join(written),
            Names::Env(_) => PathBuf::from(written),
        }
    }
}

/// Where the configuration file is: `--config`, else `COLONY_CONFIG`, else `./colony.toml`
/// if there is one.
fn config_path(flags: &Flags, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    if let Some(path) = &flags.config {
        return Some(path.clone());
    }
    if let Some(path) = env.get(CONFIG_VAR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_FILE);
    default.exists().then(|| default.to_owned())
}

/// Reads and parses the configuration file at `path`.
fn read_file(path: &Path) -> Result<Layer, Error> {
    let text = colony_workflow::read_bounded(path, MAX_CONFIG_BYTES).map_err(Error::Read)?;
    let name = path.display().to_string();
    // `colony.toml` has the parent `""`: its paths stay as written, relative to here.
    let base = path.parent().unwrap_or(Path::new("")).to_owned();
    let names = Names::File { path: name, base };
    parse(text, names)
}

fn parse(text: String, names: Names) -> Result<Layer, Error> {
    match toml::from_str::<Document>(&text) {
        Ok(document) => Ok(Layer {
            document,
            text,
            names,
        }),
        Err(e) => {
            let layer = Layer {
                document: Document::default(),
                text,
                names,
            };
            let at = e.span().map_or(Where::Unknown, |s| Where::Offset(s.start));
            let message = e.message().trim().to_owned();
            Err(Error::Invalid(Invalid {
                problems: vec![layer.problem(at, &message)],
            }))
        }
    }
}

/// The `COLONY_*` variables that set keys, written as one TOML document, one variable a
/// line, so that they are read and checked as the file is. Other `COLONY_*` variables
/// (`COLONY_LOG`, `COLONY_SERVER`, ...) are not settings of `serve` and are left alone; an
/// unknown `COLONY_RUNTIME_*` one is an error.
fn read_env(env: &BTreeMap<String, String>) -> Result<Layer, Error> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for k in SERVER_KEYS {
        let key = format!("server.{k}");
        keys.insert(variable(&key), key);
    }
    for k in colony_workflow::runtime::KEYS {
        let key = format!("runtime.{k}");
        keys.insert(variable(&key), key);
    }
    let mut problems = Vec::new();
    let mut text = String::new();
    let mut vars = Vec::new();
    for (name, value) in env {
        let Some(key) = keys.get(name) else {
            if name.starts_with(RUNTIME_PREFIX) {
                problems.push(format!(
                    "env {name}: no runtime setting has this name (see `colony config show` for the keys; a key's variable is {RUNTIME_PREFIX} and its path in capitals, `.` and `-` as `_`)"
                ));
            }
            continue;
        };
        if value.len() > MAX_ENV_BYTES {
            problems.push(format!(
                "env {name}: its value is {} bytes: allowed up to {MAX_ENV_BYTES}",
                value.len()
            ));
            continue;
        }
        let written = if NUMERIC_KEYS.contains(&key.as_str()) {
            number(value).unwrap_or_else(|| toml_string(value))
        } else {
            toml_string(value)
        };
        text.push_str(&format!("{key} = {written}\n"));
        vars.push(name.clone());
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(Invalid { problems }));
    }
    parse(text, Names::Env(vars))
}

/// `value` as a TOML number, if it is one.
fn number(value: &str) -> Option<String> {
    let v = value.trim();
    if let Ok(n) = v.parse::<i64>() {
        return Some(n.to_string());
    }
    let f = v.parse::<f64>().ok()?;
    Some(if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{f:?}")
    })
}

/// `value` as a TOML string, quoted and escaped on one line (a JSON string is a TOML basic
/// string): line `n` of the text must stay the `n`th variable, even when a value holds a
/// line break.
fn toml_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// One server key's value and where it came from, from the highest layer that sets it.
struct Pick<T> {
    value: Option<T>,
    source: Source,
}

/// Resolves every layer into the settings `colony serve` runs with. `env` holds the process's
/// variables (only `COLONY_*` ones are read).
pub(crate) fn resolve(flags: &Flags, env: &BTreeMap<String, String>) -> Result<Resolved, Error> {
    let config = config_path(flags, env);
    let file = match &config {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    let vars = read_env(env)?;
    let layers: Vec<&Layer> = file.iter().chain([&vars]).collect();
    let mut problems = Vec::new();
    let mut sources: BTreeMap<String, Source> = BTreeMap::new();

    // Server keys: the highest layer that sets each, checked where it is written.
    macro_rules! pick {
        ($field:ident, $key:literal, $flag:expr, |$layer:ident, $v:ident| $read:expr) => {{
            let mut pick = Pick {
                value: None,
                source: Source::Default,
            };
            for $layer in &layers {
                if let Some($v) = &$layer.document.server.$field {
                    let read: Result<_, String> = $read;
                    match read {
                        Ok(value) => {
                            pick = Pick {
                                value: Some(value),
                                source: $layer.source($v.at),
                            }
                        }
                        Err(message) => problems.push($layer.problem($v.at, &message)),
                    }
                }
            }
            if let Some(value) = $flag {
                pick = Pick {
                    value: Some(value),
                    source: Source::Flag($key),
                };
            }
            if pick.value.is_some() {
                sources.insert(format!("server.{}", $key), pick.source.clone());
            }
            pick
        }};
    }
    let addr = pick!(addr, "addr", flags.addr, |l, v| v
        .value
        .parse::<SocketAddr>()
        .map_err(|_| format!(
            "addr `{}` is not an address: write it like `127.0.0.1:7070`",
            colony_core::text::shorten(&v.value, 60)
        )));
    let agents = pick!(agents, "agents", flags.agents, |l, v| Ok(v.value));
    let pools = pick!(pools, "pools", flags.pools.clone(), |l, v| written_path(
        l, v
    ));
    let out = pick!(out, "out", flags.out.clone(), |l, v| written_path(l, v));
    let db = pick!(db, "db", flags.db.clone(), |l, v| written_db(l, v));
    let tokens = pick!(tokens, "tokens", flags.tokens.clone(), |l, v| written_path(
        l, v
    ));
    let tls_cert = pick!(tls_cert, "tls-cert", flags.tls_cert.clone(), |l, v| {
        written_path(l, v)
    });
    let tls_key = pick!(tls_key, "tls-key", flags.tls_key.clone(), |l, v| {
        written_path(l, v)
    });
    let rate_limit = pick!(rate_limit, "rate-limit", flags.rate_limit, |l, v| {
        NonZeroU32::new(v.value)
            .ok_or_else(|| "rate-limit 0 is out of range: allowed 1..=4294967295".to_owned())
    });
    let runs = pick!(runs, "runs", flags.runs.clone(), |l, v| written_path(l, v));
    let memory = pick!(memory, "memory", flags.memory.clone(), |l, v| {
        written_db(l, v)
    });
    let memory_chroma = pick!(
        memory_chroma,
        "memory-chroma",
        flags.memory_chroma.clone(),
        |l, v| {
            colony_memory::ChromaOptions::from_url(&v.value)
                .map(|_| v.value.clone())
                .map_err(|e| format!("memory-chroma {e}"))
        }
    );
    let memory_shards = pick!(
        memory_shards,
        "memory-shards",
        flags.memory_shards,
        |l, v| { within("memory-shards", v.value, colony_memory::MAX_SHARDS as u64,) }
    );
    let max_connections = pick!(
        max_connections,
        "max-connections",
        flags.max_connections,
        |l, v| { within("max-connections", v.value, MAX_CONNECTIONS) }
    );
    let header_timeout = pick!(
        header_timeout,
        "header-timeout",
        flags.header_timeout,
        |l, v| { within("header-timeout", v.value, MAX_TIMEOUT_SECS) }
    );
    let idle_timeout = pick!(idle_timeout, "idle-timeout", flags.idle_timeout, |l, v| {
        within("idle-timeout", v.value, MAX_TIMEOUT_SECS)
    });
    let backup_to = pick!(
        backup_to,
        "backup-to",
        flags
            .backup_to
            .as_deref()
            .map(|to| backup_location(to, None).map_err(|m| format!("--backup-to: {m}"))),
        |l, v| backup_location(&v.value, Some(l)).map(Ok)
    );
    let backup_every = pick!(backup_every, "backup-every", flags.backup_every, |l, v| {
        backup_every(&v.value)
    });
    let webhook = pick!(
        webhook,
        "webhook",
        flags.webhook.clone().map(|url| {
            colony_workflow::webhooks::Webhook::check_url(&url)
                .map(|()| url)
                .map_err(|m| format!("--webhook: {m}"))
        }),
        |l, v| {
            colony_workflow::webhooks::Webhook::check_url(&v.value).map(|()| Ok(v.value.clone()))
        }
    );
    let webhook_secret_env = pick!(
        webhook_secret_env,
        "webhook-secret-env",
        flags.webhook_secret_env.clone().map(|name| {
            colony_workflow::webhooks::Webhook::check_variable(&name)
                .map(|()| name)
                .map_err(|m| format!("--webhook-secret-env: {m}"))
        }),
        |l, v| {
            colony_workflow::webhooks::Webhook::check_variable(&v.value)
                .map(|()| Ok(v.value.clone()))
        }
    );
    // Whether a layer or flag wrote them, valid or not: a "needs" problem is for a key not
    // written at all, not one whose value was refused.
    let backup_to_written =
        backup_to.value.is_some() || written_in(&layers, |s| s.backup_to.is_some());
    let webhook_written = webhook.value.is_some() || written_in(&layers, |s| s.webhook.is_some());
    let mut flagged = |pick: Pick<Result<String, String>>| Pick {
        value: match pick.value {
            Some(Ok(value)) => Some(value),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            None => None,
        },
        source: pick.source,
    };
    let webhook = flagged(webhook);
    let webhook_secret_env = flagged(webhook_secret_env);
    // A flag's value is checked by clap, but for a location: its problem shows here.
    let backup_to = Pick {
        value: match backup_to.value {
            Some(Ok(location)) => Some(location),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            None => None,
        },
        source: backup_to.source,
    };

    // `agents` and `pools` are two ways to say what runs: the higher layer's wins; one layer
    // giving both is a contradiction.
    let (mut agents, mut pools) = (agents, pools);
    if agents.value.is_some() && pools.value.is_some() {
        match agents.source.rank().cmp(&pools.source.rank()) {
            std::cmp::Ordering::Less => {
                sources.remove("server.agents");
                agents.value = None;
            }
            std::cmp::Ordering::Greater => {
                sources.remove("server.pools");
                pools.value = None;
            }
            std::cmp::Ordering::Equal => problems.push(format!(
                "{}: agents and pools both say what runs (agents at {}, pools at {}): give one",
                agents.source, agents.source, pools.source
            )),
        }
    }
    // One memory, a file or a server: the higher layer's wins; one layer giving both is a
    // contradiction.
    let (mut memory, mut memory_chroma) = (memory, memory_chroma);
    if memory.value.is_some() && memory_chroma.value.is_some() {
        match memory.source.rank().cmp(&memory_chroma.source.rank()) {
            std::cmp::Ordering::Less => {
                sources.remove("server.memory");
                memory.value = None;
            }
            std::cmp::Ordering::Greater => {
                sources.remove("server.memory-chroma");
                memory_chroma.value = None;
            }
            std::cmp::Ordering::Equal => problems.push(format!(
                "{}: memory and memory-chroma both say where the memory is (memory at {}, memory-chroma at {}): give one",
                memory.source, memory.source, memory_chroma.source
            )),
        }
    }
    // A certificate needs its key, and a key its certificate.
    if tls_cert.value.is_some() != tls_key.value.is_some() {
        let (given, missing) = if tls_cert.value.is_some() {
            (&tls_cert.source, "tls-key")
        } else {
            (&tls_key.source, "tls-cert")
        };
        problems.push(format!(
            "{given}: tls-cert and tls-key go together: {missing} is missing"
        ));
    }
    // A backup needs a journal file to copy, and another file to copy it to; an interval
    // alone backs nothing up.
    match (&backup_to.value, &db.value) {
        (Some(_), None) => problems.push(format!(
            "{}: backup-to needs db: the journal in memory has no file to back up",
            backup_to.source
        )),
        (Some(_), Some(db)) if crate::commands::in_nats(db).is_some() => problems.push(format!(
            "{}: backup-to copies a SQLite journal; a journal in NATS ({}) is kept by the servers' replicas",
            backup_to.source,
            db.display()
        )),
        (Some(Location::File(to)), Some(db)) if to == db => problems.push(format!(
            "{}: backup-to is the journal itself ({}): back it up to another file",
            backup_to.source,
            to.display()
        )),
        _ => {}
    }
    if backup_every.value.is_some() && !backup_to_written {
        problems.push(format!(
            "{}: backup-every needs backup-to: say where the backups go",
            backup_every.source
        ));
    }
    // The server's webhook is for the runs posted to it; a secret for no webhook signs nothing.
    if webhook.value.is_some() && runs.value.is_none() {
        problems.push(format!(
            "{}: webhook needs runs: it posts the events of the runs posted to /v1/runs",
            webhook.source
        ));
    }
    if webhook_secret_env.value.is_some() && !webhook_written {
        problems.push(format!(
            "{}: webhook-secret-env needs webhook: say where the events go",
            webhook_secret_env.source
        ));
    }
    // Server problems do not stop the runtime's keys from being checked: every problem of the
    // layers is reported at once.
    let server = ServerSettings {
        addr: addr
            .value
            .unwrap_or_else(|| DEFAULT_ADDR.parse().expect("the default address parses")),
        agents: agents.value.unwrap_or(DEFAULT_AGENTS),
        pools: pools.value,
        out: out.value.unwrap_or_else(|| PathBuf::from(DEFAULT_OUT)),
        db: db.value,
        tokens: tokens.value,
        tls_cert: tls_cert.value,
        tls_key: tls_key.value,
        rate_limit: rate_limit.value,
        runs: runs.value,
        memory: memory.value,
        memory_chroma: memory_chroma.value,
        memory_shards: memory_shards.value.unwrap_or(1),
        max_connections: max_connections
            .value
            .unwrap_or(colony_server::conn::MAX_CONNECTIONS as u64),
        header_timeout: header_timeout
            .value
            .unwrap_or(colony_server::conn::HEADER_TIMEOUT.as_secs()),
        idle_timeout: idle_timeout
            .value
            .unwrap_or(colony_server::conn::IDLE_TIMEOUT.as_secs()),
        backup_to: backup_to.value,
        backup_every: backup_every
            .value
            .unwrap_or(colony_server::backup::DEFAULT_EVERY),
        webhook: webhook.value,
        webhook_secret_env: webhook_secret_env.value,
    };

    // The runtime: the pools file's section, then each layer over it.
    let pools = match &server.pools {
        Some(p) if problems.is_empty() => {
            Some(colony_workflow::load_pools(p).map_err(Error::Pools)?)
        }
        _ => None,
    };
    let mut runtime = RuntimeSettings::default();
    let mut written: Vec<(&'static str, Source)> = Vec::new();
    if let (Some(p), Some(path)) = (&pools, &server.pools) {
        runtime = p.runtime.clone();
        let name = path.display().to_string();
        written.extend(
            p.written
                .iter()
                .map(|(key, at)| (*key, Source::Pools(name.clone(), at.line))),
        );
    }
    for layer in &layers {
        match runtime.layer(&layer.document.runtime, &layer.text) {
            Ok(next) => runtime = next,
            Err(found) => {
                for p in found {
                    let at = p.at.map_or(Where::Unknown, |p| Where::Line {
                        line: p.line,
                        column: p.column,
                    });
                    problems.push(layer.problem(at, &p.message));
                }
            }
        }
        written.extend(
            colony_workflow::runtime::written(&layer.document.runtime)
                .into_iter()
                .map(|(key, at)| (key, layer.source(at))),
        );
    }
    // Each layer checked the tiers it names against the tiers it knew; the runtime takes
    // them from the hierarchy that serve plans, which a later layer (or `tiers: auto`) may
    // have changed.
    if problems.is_empty() && !runtime.supervision_tiers.is_empty() {
        let workers = match &pools {
            Some(p) => p.iter().map(|d| u64::from(d.count)).sum::<u64>(),
            None => u64::from(server.agents),
        };
        let plan = colony_core::hierarchy::Plan::new(&colony_core::hierarchy::HierarchyOptions {
            workers: workers.max(1),
            span: runtime.span,
            tiers: runtime.tiers.clone(),
        });
        if let Ok(plan) = plan {
            let tiers = plan.tiers();
            let managing: Vec<&str> = tiers[..tiers.len().saturating_sub(1)]
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            let named = written
                .iter()
                .rev()
                .find(|(key, _)| *key == "supervision.tiers")
                .map(|(_, source)| source.to_string());
            for name in runtime.supervision_tiers.keys() {
                if !managing.contains(&name.as_str()) {
                    problems.push(format!(
                        "{}: supervision of tier `{name}`: no managing tier has that name (the hierarchy serve plans: {})",
                        named.as_deref().unwrap_or("runtime"),
                        managing.join(", ")
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(Invalid { problems }));
    }
    // A key's source is the last layer that wrote it, or wrote `breaker` for its keys.
    for (key, source) in written {
        sources.insert(format!("runtime.{key}"), source.clone());
        if key == "breaker" {
            for k in colony_workflow::runtime::KEYS {
                if k.starts_with("breaker.") {
                    sources.insert(format!("runtime.{k}"), source.clone());
                }
            }
        } else if key.starts_with("breaker.") {
            sources.insert("runtime.breaker".into(), source);
        }
    }
    Ok(Resolved {
        server,
        pools,
        runtime,
        file: config,
        sources,
    })
}

/// A path as written in `layer`, refused when empty.
fn written_path(layer: &Layer, v: &Located<String>) -> Result<PathBuf, String> {
    if v.value.is_empty() {
        return Err("an empty path: name a file or folder".into());
    }
    Ok(layer.path(&v.value))
}

/// Where the journal (or the memory) is, as written: a file path (relative to the file's
/// folder), or one in NATS (`nats://HOST:PORT/NAME`), kept as written.
fn written_db(layer: &Layer, v: &Located<String>) -> Result<PathBuf, String> {
    if colony_cluster::journal::in_nats(&v.value) {
        return Ok(PathBuf::from(&v.value));
    }
    written_path(layer, v)
}

/// Whether any of `layers` writes the `[server]` key `written` looks for.
fn written_in(layers: &[&Layer], written: impl Fn(&Server) -> bool) -> bool {
    layers.iter().any(|l| written(&l.document.server))
}

/// Where backups go, as written: an `s3://` URL, or a file path (relative to the file's
/// folder in a configuration file).
fn backup_location(written: &str, layer: Option<&Layer>) -> Result<Location, String> {
    if written.is_empty() {
        return Err("an empty location: name a file or an s3://bucket/key".into());
    }
    let location = Location::parse(written).map_err(|e| e.to_string())?;
    Ok(match (location, layer) {
        (Location::File(_), Some(layer)) => Location::File(layer.path(written)),
        (location, _) => location,
    })
}

/// How often to back up, written like `5m` or `30s`, from one second to a week.
pub(crate) fn backup_every(written: &str) -> Result<Duration, String> {
    use colony_server::backup::{MAX_EVERY, MIN_EVERY};
    let every = humantime::parse_duration(written).map_err(|e| {
        format!(
            "backup-every `{}` is not a duration ({e}): write it like `5m`, `30s` or `1h`",
            colony_core::text::shorten(written, 60)
        )
    })?;
    if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
        return Err(format!(
            "backup-every {} is out of range: allowed {} to {}",
            humantime::format_duration(every),
            humantime::format_duration(MIN_EVERY),
            humantime::format_duration(MAX_EVERY)
        ));
    }
    Ok(every)
}

/// `value` when it lies in `1..=max`.
fn within(key: &str, value: u64, max: u64) -> Result<u64, String> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{key} {value} is out of range: allowed 1..={max}"))
    }
}

/// The process's `COLONY_*` variables. One that is not UTF-8 is an error naming it.
pub(crate) fn environment() -> Result<BTreeMap<String, String>, Invalid> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with("COLONY_")) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => {
                out.insert(name.to_owned(), value);
            }
            Err(_) => problems.push(format!("env {name}: its value is not UTF-8")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Invalid { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_own_variable() {
        let mut seen = std::collections::HashSet::new();
        for k in SERVER_KEYS {
            assert!(seen.insert(variable(&format!("server.{k}"))), "{k}");
        }
        for k in colony_workflow::runtime::KEYS {
            assert!(seen.insert(variable(&format!("runtime.{k}"))), "{k}");
        }
        assert!(seen.contains("COLONY_TOKENS"));
        assert!(seen.contains("COLONY_TLS_CERT"));
        assert!(seen.contains("COLONY_RUNTIME_HEALTH_FAILED_AFTER"));
        assert!(!seen.contains(CONFIG_VAR));
        for key in NUMERIC_KEYS {
            let (layer, k) = key.split_once('.').unwrap();
            let known = match layer {
                "server" => SERVER_KEYS.contains(&k),
                _ => colony_workflow::runtime::KEYS.contains(&k),
            };
            assert!(known, "{key}");
        }
    }

    #[test]
    fn variables_are_written_as_toml_values_safely() {
        assert_eq!(number("24").as_deref(), Some("24"));
        assert_eq!(number("0.5").as_deref(), Some("0.5"));
        assert_eq!(number("NaN").as_deref(), Some("nan"));
        assert_eq!(number("5s"), None);
        // A value cannot add keys of its own.
        let sneaky = "x\"\nserver.addr = \"0.0.0.0:1";
        let env = BTreeMap::from([("COLONY_DB".to_string(), sneaky.to_string())]);
        let layer = read_env(&env).unwrap();
        assert!(layer.document.server.addr.is_none());
        assert_eq!(layer.document.server.db.unwrap().value, sneaky);
    }
}
