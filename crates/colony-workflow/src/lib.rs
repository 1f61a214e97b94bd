//! Workflow files: agent pools and a dependency graph of tasks, checked and run to completion.
//!
//! [`load`] reads a YAML file ([`file`] is its format, `docs/workflow.md` its guide), checks
//! it ([`check`]: unknown fields, wrong types, bad durations, duplicate ids, unknown
//! references, cycles, missing programs, templates naming outputs the task does not need) and
//! reports every problem with the file, line, column and a snippet. [`run()`] runs a checked
//! [`Workflow`] on a [`colony_runtime::Runtime`]: each task starts as soon as the tasks it
//! needs have succeeded, its output checked against its `expect`, its result written to
//! `<output>/<id>.json`.
//!
//! ```
//! let yaml = "name: hi\nagents: [{name: echo, kind: sim}]\ntasks: [{id: a}, {id: b, needs: [a]}]\n";
//! let workflow = colony_workflow::parse(yaml, "hi.yaml", std::path::Path::new(".")).unwrap();
//! assert_eq!(workflow.tasks.len(), 2);
//! ```

pub mod bench;
mod check;
pub mod cluster;
mod decide;
pub mod file;
mod memory;
mod messages;
mod payload;
pub mod plan;
pub mod read;
mod run;
pub mod runtime;
pub mod team;
mod template;
pub mod webhooks;

pub use check::{Position, Problem};
pub use read::{ReadError, read_bounded};
pub use run::{
    Agents, Finished, Metered, Options, Progress, Report, SUMMARY_RESULT_BYTES, Started, Status,
    agents, run,
};

use colony_agents::{AgentSpec, command::CommandOptions, sim::SimOptions};
use colony_core::{
    dag::Graph,
    task::{Priority, Requirement},
};
use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

/// A checked workflow, ready to run.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    /// Folder of the results.
    pub output: PathBuf,
    pub pools: Vec<PoolDef>,
    /// In file order; [`Workflow::graph`] holds their `needs` by index.
    pub tasks: Vec<TaskDef>,
    pub graph: Graph,
    /// The file's `runtime:` section, checked; the runtime's defaults without one.
    pub runtime: RuntimeSettings,
    /// The keys its `runtime:` section writes, and where.
    pub written: Vec<(&'static str, Position)>,
    /// Where its memory lives and what embeds it (its `memory:` section).
    pub memory: MemorySettings,
    /// Where its events are posted (its `webhooks:` section).
    pub webhooks: Vec<webhooks::Webhook>,
}

/// A workflow's memory: where (`None`: `<output>/memory.db`), over how many stores, and
/// embedded by what (`None`: lexically, 384 dimensions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemorySettings {
    pub place: Option<colony_memory::Place>,
    /// A memory in NATS instead (`db: nats://HOST:PORT/NAME`): one every scheduler reaches.
    pub nats: Option<colony_cluster::memory::MemoryOptions>,
    pub shards: usize,
    pub embedder: Option<EmbedderSettings>,
}

/// An OpenAI-compatible embeddings endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedderSettings {
    pub base_url: String,
    pub model: String,
    /// The variable holding the API key, read when the run starts.
    pub api_key_env: Option<String>,
    pub dimension: usize,
}

/// Settings of the whole runtime a file may give (its `runtime:` section, or `colony.toml`'s
/// `[runtime]` table): what [`RuntimeSettings::apply`] sets on the
/// [`colony_runtime::RuntimeOptions`] it runs with. Every option of the runtime but those
/// only a program sets (how agents are spawned, payload and output limits, the dispatcher's
/// linger).
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSettings {
    /// The most children one agent supervises.
    pub span: u32,
    /// Tier names top to bottom, or `auto` depth.
    pub tiers: colony_core::hierarchy::Tiers,
    /// How each tier picks the child a task goes to.
    pub strategy: colony_core::routing::Strategy,
    /// Tasks a supervisor queues beyond what its workers run.
    pub queue_capacity: u32,
    /// Queue length from which an idle worker steals from a sibling supervisor.
    pub steal_at: usize,
    /// Periodic evening-out of sibling supervisors' queues.
    pub rebalance: colony_core::rebalance::RebalanceOptions,
    /// Health thresholds and the heartbeat interval.
    pub health: colony_core::health::HealthOptions,
    /// How every managing agent supervises its children.
    pub supervision: colony_core::supervision::SupervisorOptions,
    /// Per managing tier, by name, what its supervision changes from `supervision`.
    pub supervision_tiers:
        std::collections::BTreeMap<String, colony_core::supervision::SupervisorOverrides>,
    /// Backoff between attempts, and when a task counts as poison.
    pub retry: colony_runtime::RetryOptions,
    /// Seed of the routing decisions' random choices.
    pub seed: u64,
    /// When and how far ahead the autoscaler looks at the pools that have `scaling:`.
    pub autoscale: colony_runtime::AutoscaleOptions,
    /// Each worker's circuit breaker; `None` (`breaker: off`): health only observes.
    pub breaker: Option<colony_core::breaker::BreakerOptions>,
    /// How the message bus is sized.
    pub messages: colony_runtime::messages::MessageOptions,
}

impl Default for RuntimeSettings {
    /// What [`colony_runtime::RuntimeOptions::default`] has: a file without the section
    /// changes nothing.
    fn default() -> Self {
        Self::of(&colony_runtime::RuntimeOptions::default())
    }
}

impl RuntimeSettings {
    /// The settings `options` has.
    pub fn of(o: &colony_runtime::RuntimeOptions) -> Self {
        Self {
            span: o.span,
            tiers: o.tiers.clone(),
            strategy: o.strategy,
            queue_capacity: o.queue_capacity,
            steal_at: o.steal_at,
            rebalance: o.rebalance,
            health: o.health,
            supervision: o.supervision,
            supervision_tiers: o.supervision_tiers.clone(),
            retry: o.retry,
            seed: o.seed,
            autoscale: o.autoscale,
            breaker: o.breaker,
            messages: o.messages.clone(),
        }
    }

    /// Sets these settings on `options`, leaving the rest as they are.
    pub fn apply(&self, options: &mut colony_runtime::RuntimeOptions) {
        options.span = self.span;
        options.tiers = self.tiers.clone();
        options.strategy = self.strategy;
        options.queue_capacity = self.queue_capacity;
        options.steal_at = self.steal_at;
        options.rebalance = self.rebalance;
        options.health = self.health;
        options.supervision = self.supervision;
        options.supervision_tiers = self.supervision_tiers.clone();
        options.retry = self.retry;
        options.seed = self.seed;
        options.autoscale = self.autoscale;
        options.breaker = self.breaker;
        options.messages = self.messages.clone();
    }

    /// `section`, read from `text`, written over these settings and checked: the settings,
    /// or every problem with its line and column in `text`. How `colony serve` layers
    /// `colony.toml`'s `[runtime]` table and `COLONY_RUNTIME_*` variables over a pools file's
    /// `runtime:` section.
    pub fn layer(&self, section: &file::Runtime, text: &str) -> Result<Self, Vec<Problem>> {
        runtime::layer(section, self, text)
    }
}

/// The pools of a file for `colony serve`, with its runtime settings. Derefs to the pools.
#[derive(Debug)]
pub struct Pools {
    pub pools: Vec<PoolDef>,
    pub runtime: RuntimeSettings,
    /// The keys its `runtime:` section writes, and where: for `colony config show`.
    pub written: Vec<(&'static str, Position)>,
}

impl std::ops::Deref for Pools {
    type Target = [PoolDef];

    fn deref(&self) -> &[PoolDef] {
        &self.pools
    }
}

#[derive(Debug)]
pub struct PoolDef {
    pub name: String,
    pub spec: AgentSpec,
    pub count: u32,
    /// Attempts started per minute at most.
    pub rate_per_minute: Option<u32>,
    /// How the autoscaler sizes the pool, checked; `None` leaves its size to people.
    pub scaling: Option<colony_core::scaling::ScalingOptions>,
    pub backend: Backend,
    /// What one task is expected to take (its `estimate:`), for plans.
    pub estimate: plan::Estimate,
}

impl PoolDef {
    /// The runtime's pool of this definition, its agents served by `agent`, handed to the
    /// autoscaler when the file scales it.
    pub fn pool(&self, agent: std::sync::Arc<dyn colony_agents::Agent>) -> colony_runtime::Pool {
        let pool = colony_runtime::Pool::new(self.spec.clone(), self.count, agent);
        match self.scaling {
            Some(options) => pool.scaled(options),
            None => pool,
        }
    }
}

#[derive(Debug)]
pub enum Backend {
    Sim(SimOptions),
    Command(Box<CommandOptions>),
    Process(Box<colony_agents::process::ProcessOptions>),
    Http(Box<colony_agents::http::HttpOptions>),
}

#[derive(Debug)]
pub struct TaskDef {
    pub id: String,
    /// What runs it, for progress: the pool it names, else the role or capabilities it asks
    /// for, else `team` for a team's task, else `any`.
    pub runs_on: String,
    pub requirement: Requirement,
    pub needs: Vec<usize>,
    pub input: Option<serde_json::Value>,
    pub prompt: Option<String>,
    pub priority: Priority,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub continue_on_failure: bool,
    pub expect: Checks,
    /// Decided by a vote of several agents instead of asked of one: the vote's winner is the
    /// task's output.
    pub decide: Option<colony_runtime::decision::Vote>,
    /// Its vote's voters span a cluster's nodes (`decide: spread`, `colony run --nats`).
    pub spread: bool,
    /// Worked by a team formed for it: the last step's output is the task's.
    pub team: Option<team::Plan>,
    /// Its output is stored in the workflow's memory once it succeeds.
    pub remember: bool,
    /// The workflow's memory is searched before it runs: the query (a template) and k.
    pub recall: Option<(String, usize)>,
    /// Its output is published on this topic once it succeeds.
    pub publish: Option<std::sync::Arc<str>>,
    /// It waits for a message on this topic, up to this long, before it runs.
    pub wait: Option<(std::sync::Arc<str>, Duration)>,
}

/// What an output must pass for its attempt to succeed.
#[derive(Debug, Default, Clone)]
pub struct Checks {
    pub json: bool,
    pub regex: Option<regex::Regex>,
    pub contains: Option<String>,
    pub files: Vec<PathBuf>,
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// The checkout that must have changes, when the task expects a `git-diff`; a task's own
    /// worktree takes its place when there is one.
    pub git_diff: Option<PathBuf>,
    /// Where the task's own worktree would be; set when it runs.
    pub worktree: Option<PathBuf>,
    /// Set when an attempt starts: a hash of the checkout's changes then, and the time.
    pub before: Option<Result<u64, String>>,
    pub started: Option<std::time::SystemTime>,
    /// The run's output folder, left out of `git-diff`.
    pub output: Option<PathBuf>,
}

impl Checks {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        !self.json
            && self.regex.is_none()
            && self.contains.is_none()
            && self.files.is_empty()
            && self.schema.is_none()
            && self.git_diff.is_none()
    }
}

/// A workflow file that cannot run: every problem found, to be shown with snippets.
#[derive(Debug)]
pub struct Invalid {
    pub file: String,
    pub problems: Vec<Problem>,
    source: Arc<NamedSource<String>>,
    text: Arc<str>,
}

impl Invalid {
    fn new(file: &str, text: &str, problems: Vec<Problem>) -> Self {
        Self {
            file: file.to_owned(),
            problems,
            source: Arc::new(NamedSource::new(file, text.to_owned())),
            text: text.into(),
        }
    }

    /// One diagnostic per problem, for `miette` to render with snippets. A snippet of a line
    /// longer than [`SNIPPET_CHARS`] shows only a window of it around the problem.
    pub fn diagnostics(&self) -> Vec<ProblemReport> {
        self.problems
            .iter()
            .map(|p| {
                let (source, span) = match p.at {
                    None => (Source::Whole(self.source.clone()), None),
                    Some(at) => match Window::around(&self.file, &self.text, at) {
                        Some((window, span)) => (Source::Window(Arc::new(window)), Some(span)),
                        None => (
                            Source::Whole(self.source.clone()),
                            Some(span(&self.text, at.line(), at.column())),
                        ),
                    },
                };
                ProblemReport {
                    problem: p.clone(),
                    file: self.file.clone(),
                    source,
                    span,
                }
            })
            .collect()
    }
}

/// Characters of a line a snippet shows at most.
pub const SNIPPET_CHARS: usize = 160;

/// What a snippet is cut from: the whole file, or a window of one long line.
#[derive(Debug, Clone)]
enum Source {
    Whole(Arc<NamedSource<String>>),
    Window(Arc<Window>),
}

impl miette::SourceCode for Source {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        match self {
            Source::Whole(s) => s.read_span(span, before, after),
            Source::Window(w) => Ok(Box::new(miette::MietteSpanContents::new_named(
                w.name.clone(),
                w.text.as_bytes(),
                SourceSpan::new(0.into(), w.text.len()),
                w.line,
                w.column,
                1,
            ))),
        }
    }
}

/// A part of one long line of a file: its text, the 0-based line, and the 0-based column of
/// the problem.
#[derive(Debug)]
struct Window {
    name: String,
    text: String,
    line: usize,
    column: usize,
}

impl Window {
    /// A window of the line of `at`, when that line is too long to show whole, with the span
    /// of the problem's token in it.
    fn around(file: &str, text: &str, at: Position) -> Option<(Self, SourceSpan)> {
        let line = text.lines().nth(at.line().saturating_sub(1) as usize)?;
        if line.chars().count() <= SNIPPET_CHARS {
            return None;
        }
        let column = at.column().saturating_sub(1) as usize;
        let start = column.saturating_sub(SNIPPET_CHARS / 4);
        let shown: String = line.chars().skip(start).take(SNIPPET_CHARS).collect();
        let lead = if start > 0 { "…" } else { "" };
        let text = format!("{lead}{shown}…");
        let offset = lead.len()
            + shown
                .chars()
                .take(column - start)
                .map(char::len_utf8)
                .sum::<usize>();
        let token = &text[offset.min(text.len())..];
        let len = token
            .find([',', ']', '}', '#'])
            .unwrap_or(token.len())
            .clamp(1, 40)
            .min(token.len().max(1));
        let window = Self {
            name: file.to_owned(),
            text,
            line: at.line().saturating_sub(1) as usize,
            column,
        };
        Some((window, SourceSpan::new(offset.into(), len)))
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.at {
                Some(at) => write!(
                    f,
                    "{}:{}:{}: {}",
                    self.file,
                    at.line(),
                    at.column(),
                    p.message
                )?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// One problem of an [`Invalid`] file, as a `miette` diagnostic.
#[derive(Debug)]
pub struct ProblemReport {
    problem: Problem,
    file: String,
    source: Source,
    span: Option<SourceSpan>,
}

impl fmt::Display for ProblemReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem.at {
            Some(at) => write!(
                f,
                "{}:{}:{}: {}",
                self.file,
                at.line(),
                at.column(),
                self.problem.message
            ),
            None => write!(f, "{}: {}", self.file, self.problem.message),
        }
    }
}

impl std::error::Error for ProblemReport {}

impl Diagnostic for ProblemReport {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("colony::workflow"))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.span.map(|_| &self.source as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.problem.label.clone()),
            span,
        ))))
    }
}

/// The byte span of the token at 1-based `line` and `column` of `text`.
fn span(text: &str, line: u64, column: u64) -> SourceSpan {
    let start_of_line: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let line_text = text[start_of_line.min(text.len())..]
        .lines()
        .next()
        .unwrap_or("");
    let offset: usize = line_text
        .chars()
        .take(column.saturating_sub(1) as usize)
        .map(char::len_utf8)
        .sum();
    let token = &line_text[offset.min(line_text.len())..];
    let len = token
        .find([',', ']', '}', '#'])
        .unwrap_or(token.len())
        .max(1);
    SourceSpan::new((start_of_line + offset).into(), len.min(token.len().max(1)))
}

/// Why a workflow could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Longest workflow or pools file read, in bytes: a generated graph of 100,000 tasks takes
/// about 4 MB; what parsing makes of a file this long stays well under 300 MB.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Reads and checks the workflow file at `path`: YAML, or TOML when its name ends in `.toml`.
/// The file must be a regular file of at most [`MAX_FILE_BYTES`], in UTF-8.
pub fn load(path: &Path) -> Result<Workflow, Error> {
    load_for(path, check::Purpose::Run)
}

/// Reads and checks the workflow file at `path` for a dry run (`colony run --sim`): sim agents
/// stand in for every pool, so its programs and CLIs need not be installed.
pub fn load_for_rehearsal(path: &Path) -> Result<Workflow, Error> {
    load_for(path, check::Purpose::Rehearse)
}

/// Reads and checks the workflow file at `path` for a run across a cluster (`colony run
/// --nats`): the nodes host the pools, so their programs need not be installed here, and a
/// vote's voters or a team's members are not bounded by the file's pool sizes.
pub fn load_for_cluster(path: &Path) -> Result<Workflow, Error> {
    load_for(path, check::Purpose::Cluster)
}

fn load_for(path: &Path, purpose: check::Purpose) -> Result<Workflow, Error> {
    let text = read_bounded(path, MAX_FILE_BYTES)?;
    // `w.yaml` has the parent `""`: the current folder, which paths must be able to name.
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.display().to_string();
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(parse_toml_for(&text, &name, base, purpose)?);
    }
    Ok(parse_for(&text, &name, base, purpose)?)
}

/// Reads and checks the pools of a workflow-format file for `colony serve`: its `agents`,
/// checked as `colony validate` checks them. Its tasks, if it has any, are checked too but
/// not run: the server's tasks come over HTTP. Its `runtime:` section comes with them.
pub fn load_pools(path: &Path) -> Result<Pools, Error> {
    let workflow = load_for(path, check::Purpose::Pools)?;
    Ok(Pools {
        pools: workflow.pools,
        runtime: workflow.runtime,
        written: workflow.written,
    })
}

/// Checks a workflow written in TOML. The checks run on the same format: syntax errors point
/// into the TOML text; the other problems name the task or pool they are about, but carry no
/// line and column (they are found in a translation of the file).
pub fn parse_toml(text: &str, file: &str, base: &Path) -> Result<Workflow, Invalid> {
    parse_toml_for(text, file, base, check::Purpose::Run)
}

/// Largest TOML workflow, in bytes. TOML is read whole into a tree and translated to YAML
/// before it is checked, three copies of it at once, with none of the YAML parser's budgets:
/// kept small, since files big enough to need more are generated, and YAML.
pub const MAX_TOML_BYTES: usize = 1 << 20;

fn parse_toml_for(
    text: &str,
    file: &str,
    base: &Path,
    purpose: check::Purpose,
) -> Result<Workflow, Invalid> {
    if text.len() > MAX_TOML_BYTES {
        let problem = Problem {
            message: format!(
                "the file is {} bytes: a TOML workflow may have at most {MAX_TOML_BYTES}; write a larger one in YAML",
                text.len()
            ),
            at: None,
            label: String::new(),
        };
        return Err(Invalid::new(file, "", vec![problem]));
    }
    if let Some(problem) = too_many_tasks(text, '=') {
        return Err(Invalid::new(file, text, vec![problem]));
    }
    let value: serde_json::Value = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            Position {
                line: before.matches('\n').count() as u64 + 1,
                column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1,
            }
        });
        let problem = Problem {
            message: e.message().to_owned(),
            at,
            label: "here".into(),
        };
        Invalid::new(file, text, vec![problem])
    })?;
    let yaml = serde_saphyr::to_string(&value).map_err(|e| {
        let problem = Problem {
            message: format!("cannot translate the file: {e}"),
            at: None,
            label: String::new(),
        };
        Invalid::new(file, text, vec![problem])
    })?;
    parse_for(&yaml, file, base, purpose).map_err(|invalid| {
        let problems = invalid
            .problems
            .into_iter()
            .map(|p| Problem { at: None, ..p })
            .collect();
        Invalid::new(file, text, problems)
    })
}

/// Checks workflow `text`, read from `file`; relative paths in it start at `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Workflow, Invalid> {
    parse_for(text, file, base, check::Purpose::Run)
}

fn parse_for(
    text: &str,
    file: &str,
    base: &Path,
    purpose: check::Purpose,
) -> Result<Workflow, Invalid> {
    // The parser would report a NUL byte as something else (an unclosed quote).
    if let Some(nul) = text.find('\0') {
        let (line, column) = read::position(&text.as_bytes()[..nul]);
        return Err(Invalid::new(
            file,
            text,
            vec![Problem {
                message: "a NUL byte: a workflow file is text, without NUL bytes".into(),
                at: Some(Position { line, column }),
                label: "NUL byte".into(),
            }],
        ));
    }
    if let Some(problem) = crowded_line(text).or_else(|| too_many_tasks(text, ':')) {
        return Err(Invalid::new(file, text, vec![problem]));
    }
    // An unknown field stops the parser; it is reported, blanked out (spaces, so that every
    // line and column stays where it was) and the file parsed again, so that a misspelt key
    // does not hide the file's other problems.
    let mut problems = Vec::new();
    let mut blanked: Option<String> = None;
    loop {
        let current = blanked.as_deref().unwrap_or(text);
        match serde_saphyr::from_str_with_options::<file::File>(
            current,
            yaml_options(current.len()),
        ) {
            Ok(parsed) => {
                return match check::check(parsed, base, purpose) {
                    Ok(workflow) if problems.is_empty() => Ok(workflow),
                    Ok(_) => Err(Invalid::new(file, text, problems)),
                    Err(more) => {
                        problems.extend(more);
                        Err(Invalid::new(file, text, problems))
                    }
                };
            }
            Err(e) => {
                let mut problem = parse_problem(&e, text);
                let next = unknown_field(&problem.message)
                    .filter(|_| problems.len() < MAX_BLANKED)
                    .and_then(|key| blank_field(current, e.location()?, key));
                match next {
                    Some((next, key_at)) => {
                        // At the key itself, not at the map holding it.
                        let (line, column) = read::position(&current.as_bytes()[..key_at]);
                        problem.at = Some(Position { line, column });
                        problems.push(problem);
                        blanked = Some(next);
                    }
                    None => {
                        problems.push(problem);
                        return Err(Invalid::new(file, text, problems));
                    }
                }
            }
        }
    }
}

/// Unknown fields reported before the rest of the file is left unchecked.
const MAX_BLANKED: usize = 20;

/// A parser error as a problem of the file.
fn parse_problem(e: &serde_saphyr::Error, text: &str) -> Problem {
    let at = e.location().and_then(check::known);
    let message = match e.without_snippet() {
        serde_saphyr::Error::Budget { breach, .. } => budget_message(breach),
        e => {
            // The parser's own snippet and "line L column C" are left out: ours show them
            // once.
            let message = e.to_string();
            let message = message
                .strip_prefix("error: ")
                .unwrap_or(&message)
                .split_once(": ")
                .filter(|(head, _)| head.starts_with("line "))
                .map_or(message.as_str(), |(_, m)| m);
            let message = message
                .rsplit_once(" at line ")
                .map_or(message, |(m, _)| m)
                .trim();
            plain_message(message, text, at)
        }
    };
    Problem {
        message,
        at,
        label: "here".into(),
    }
}

/// The field an "unknown field `x`, expected ..." message names.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(key, _)| key)
}

/// `text` with the field `key` (its key and its value) replaced by spaces: the first `key:`
/// at or after `at`, which is the key itself or the start of the flow map holding it.
/// `None` when it cannot be found. Also gives where the key starts.
fn blank_field(text: &str, at: serde_saphyr::Location, key: &str) -> Option<(String, usize)> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(at.line().saturating_sub(1) as usize)
        .map(str::len)
        .sum();
    let from = line_start
        + text[line_start..]
            .chars()
            .take(at.column().saturating_sub(1) as usize)
            .map(char::len_utf8)
            .sum::<usize>();
    let bytes = text.as_bytes();
    if key.is_empty() {
        return None;
    }
    // The key: preceded by a blank, `{`, `,` or the start of a line, followed by `:`.
    let mut k = from;
    let start = loop {
        let found = k + text.get(k..)?.find(key)?;
        let before = found.checked_sub(1).map(|i| bytes[i]);
        let after = text[found + key.len()..].trim_start_matches([' ', '\t']);
        if matches!(
            before,
            None | Some(b' ' | b'\t' | b'\n' | b'{' | b',' | b'"' | b'\'')
        ) && (after.starts_with(':') || after.starts_with("\":") || after.starts_with("':"))
        {
            break found;
        }
        k = found + key.len();
    };
    // In a flow map: the parser pointed at it, or the key follows its `{` or a `,` on its
    // line (a flow map nested in a block one is pointed at by the block key's line).
    let line_of = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let flow = bytes.get(from) == Some(&b'{')
        || text[line_of..start]
            .trim_end_matches(['"', '\''])
            .trim_end()
            .ends_with(['{', ',']);
    let mut end;
    let mut out = bytes.to_vec();
    if flow {
        // Up to the `,` or `}` that ends the value, outside nested lists, maps and quotes.
        let mut depth = 0usize;
        let mut quote: Option<u8> = None;
        end = start;
        while end < bytes.len() {
            let b = bytes[end];
            match quote {
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None => match b {
                    b'"' | b'\'' => quote = Some(b),
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' if depth > 0 => depth -= 1,
                    b',' if depth == 0 => {
                        end += 1;
                        break;
                    }
                    b'}' => {
                        // The last field: the comma before it goes too.
                        if let Some(comma) = text[..start].trim_end().strip_suffix(',') {
                            let c = comma.len();
                            out[c] = b' ';
                        }
                        break;
                    }
                    _ => {}
                },
            }
            end += 1;
        }
    } else {
        // The rest of its line, and the lines under it: more indented, or a list at its
        // own indentation.
        let indent = start - line_of;
        end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        while end < text.len() {
            let next = &text[end + 1..];
            let line = next.split('\n').next().unwrap_or("");
            let own = line.len() - line.trim_start_matches(' ').len();
            let blank = line.trim().is_empty();
            if blank || own > indent || (own == indent && line[own..].starts_with("- ")) {
                end += 1 + line.len();
            } else {
                break;
            }
        }
    }
    for b in &mut out[start..end.min(bytes.len())] {
        if *b != b'\n' && *b != b'\r' {
            *b = b' ';
        }
    }
    // Spaces replaced whole characters only: the text is still UTF-8.
    String::from_utf8(out).ok().map(|t| (t, start))
}

/// YAML nodes (values, lists, maps) a file may hold per byte of it. The densest file that
/// means something, a generated graph of 100,000 tasks, has one node per 5 bytes; a denser
/// one is padding.
const BYTES_PER_NODE: usize = 4;

/// Nodes any file may hold, however short: the parser's own default.
const MIN_NODES: usize = 250_000;

/// The parser's limits for a file of `len` bytes: nodes and events in proportion to its size
/// (a file of [`MAX_FILE_BYTES`] may hold 100,000 tasks and more), aliases kept few, since
/// each one replays what it names.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let nodes = (len / BYTES_PER_NODE).max(MIN_NODES);
    let budget = serde_saphyr::Budget {
        max_nodes: nodes,
        // An event opens or closes a node: at most two per node.
        max_events: nodes.saturating_mul(2),
        max_total_scalar_bytes: MAX_FILE_BYTES as usize,
        max_depth: MAX_DEPTH,
        max_documents: 1,
        max_aliases: MAX_ALIASES,
        max_anchors: MAX_ALIASES,
        ..serde_saphyr::Budget::default()
    };
    serde_saphyr::Options {
        budget: Some(budget),
        alias_limits: serde_saphyr::options::AliasLimits {
            // What aliases replay counts as if it were written out: no more than the file
            // itself may hold.
            max_total_replayed_events: nodes,
            ..Default::default()
        },
        with_snippet: false,
        ..serde_saphyr::Options::default()
    }
}

/// Values of flow lists and maps (`[a, b]`, `{k: v}`) one line may hold. The YAML parser
/// keeps a few hundred bytes per value of the line it is on: a one-line list of millions of
/// values would take gigabytes. Written over several lines, the same list costs nothing.
pub const MAX_LINE_ITEMS: usize = 10_000;

/// The first line with more than [`MAX_LINE_ITEMS`] flow items, as a problem. Counts `,`,
/// `[` and `{` outside quoted strings and comments. A quote opens a string only where a value
/// starts (at the line's start, after `[`, `{`, `,`, `:`, or a blank after `-`), as in YAML:
/// in a plain value such as `a'b` it is a letter, and must not hide the rest of the line.
fn crowded_line(text: &str) -> Option<Problem> {
    for (n, line) in text.lines().enumerate() {
        // Cheap first: a line that short cannot be crowded.
        if line.len() <= MAX_LINE_ITEMS {
            continue;
        }
        let mut items = 0;
        let mut quote: Option<u8> = None;
        let mut escaped = false;
        let mut previous = b' ';
        // The last byte before this one that is not a blank, whether a blank followed it, and
        // whether every such byte so far was a `-` (block sequence entries: `- - 'a'`).
        let mut significant: Option<u8> = None;
        let mut blank_since = false;
        let mut only_dashes = true;
        for &b in line.as_bytes() {
            let before = std::mem::replace(&mut previous, b);
            let value_starts = match significant {
                None => true,
                Some(b'[' | b'{' | b',' | b':') => true,
                Some(b'-') => blank_since && only_dashes,
                Some(_) => false,
            };
            if b == b' ' || b == b'\t' {
                blank_since = true;
            } else if quote.is_none() {
                significant = Some(b);
                blank_since = false;
                only_dashes &= b == b'-';
            }
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' && q == b'"' {
                        escaped = true;
                    } else if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'"' | b'\'' if value_starts => quote = Some(b),
                    // A comment only after a blank: `a#b` is a value.
                    b'#' if before == b' ' || before == b'\t' => break,
                    b',' | b'[' | b'{' => items += 1,
                    _ => {}
                },
            }
        }
        if items > MAX_LINE_ITEMS {
            return Some(Problem {
                message: format!(
                    "line {} holds about {items} values of lists and maps: allowed up to {MAX_LINE_ITEMS} on one line; write them over several lines",
                    n + 1
                ),
                at: Some(Position {
                    line: n as u64 + 1,
                    column: 1,
                }),
                label: "too many values on one line".into(),
            });
        }
    }
    None
}

/// Most tasks one workflow may have: the largest that validates and runs within colony's
/// memory bound (300 MB) on this format.
pub const MAX_TASKS: usize = 100_000;

/// A problem if `text` has more `id` keys (`id:`, `"id":`, `id =` with `separator`) than a
/// workflow may have tasks, counted before parsing: a file of hundreds of thousands of tiny
/// tasks costs the parser gigabytes. Every task has an `id`; a key named `id` inside an input
/// counts too, so the count is an upper bound, and a file at the limit is checked exactly
/// after parsing.
fn too_many_tasks(text: &str, separator: char) -> Option<Problem> {
    let bytes = text.as_bytes();
    let mut ids = 0usize;
    let mut from = 0;
    while let Some(found) = text[from..].find("id") {
        let at = from + found;
        from = at + 2;
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let starts = matches!(
            before,
            None | Some(b' ' | b'\t' | b'\n' | b'{' | b',' | b'-' | b'"' | b'\'')
        );
        let rest = text[from..]
            .trim_start_matches(['"', '\''])
            .trim_start_matches([' ', '\t']);
        if starts && rest.starts_with(separator) {
            ids += 1;
        }
    }
    (ids > MAX_TASKS).then(|| Problem {
        message: format!(
            "the file has {ids} `id` keys: a workflow may have at most {MAX_TASKS} tasks"
        ),
        at: None,
        label: String::new(),
    })
}

/// Deepest nesting of lists and maps in a file.
const MAX_DEPTH: usize = 128;

/// Aliases (`*name`) and anchors (`&name`) a file may hold.
const MAX_ALIASES: usize = 10_000;

/// What a breached limit of the YAML parser means, for a person.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Nodes { nodes } | B::Events { events: nodes } => format!(
            "the file holds more than {nodes} YAML values, lists and maps: a file may hold one per {BYTES_PER_NODE} bytes of it (at least {MIN_NODES})"
        ),
        B::Depth { depth } => {
            format!("lists and maps are nested {depth} deep: allowed up to {MAX_DEPTH}")
        }
        B::Aliases { aliases } => {
            format!("the file uses {aliases} aliases (`*name`): allowed up to {MAX_ALIASES}")
        }
        B::Anchors { anchors } => {
            format!("the file defines {anchors} anchors (`&name`): allowed up to {MAX_ALIASES}")
        }
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "the file uses {aliases} aliases of {anchors} anchors: more than 10 aliases per anchor is refused, as each alias copies what it names"
        ),
        B::ScalarBytes { total_scalar_bytes } => format!(
            "the file's values take {total_scalar_bytes} bytes: allowed up to {MAX_FILE_BYTES}"
        ),
        B::Documents { documents } => {
            format!("the file holds {documents} YAML documents (`---`): allowed 1")
        }
        B::MergeKeys { merge_keys } => format!("the file uses {merge_keys} merge keys (`<<`)"),
        B::SequenceUnbalanced => "the file's lists and maps are not closed properly".into(),
        B::InputBytes { input_bytes } => {
            format!("the file is {input_bytes} bytes long: allowed up to {MAX_FILE_BYTES}")
        }
    }
}

/// The parser's message, with its Rust type names put as a person would: `invalid u32` on a
/// `count: -1` becomes "`count` is -1: allowed a whole number in 0..=4294967295".
fn plain_message(message: &str, text: &str, at: Option<Position>) -> String {
    let range = |ty: &str| -> Option<&'static str> {
        Some(match ty {
            "u8" => "a whole number in 0..=255",
            "u16" => "a whole number in 0..=65535",
            "u32" => "a whole number in 0..=4294967295",
            "u64" => "a whole number in 0..=18446744073709551615",
            "i32" => "a whole number in -2147483648..=2147483647",
            "i64" => "a whole number",
            "f64" | "f32" => "a number",
            "bool" => "`true` or `false`",
            _ => return None,
        })
    };
    let wanted = message
        .strip_prefix("invalid ")
        .and_then(|ty| range(ty.trim()))
        .or_else(|| {
            // serde's own wording: "invalid type: string \"x\", expected u32".
            message
                .rsplit_once("expected ")
                .and_then(|(_, ty)| range(ty.trim()))
        });
    let Some(wanted) = wanted else {
        if message.contains("alias replay") {
            return "aliases (`*name`) would copy more values than the file may hold: write the values out, or use fewer aliases".into();
        }
        if message.contains("recursion limit") {
            return format!("lists and maps are nested too deep: allowed up to {MAX_DEPTH}");
        }
        return shorten(message, 300);
    };
    let Some(at) = at else {
        return format!("{}: allowed {wanted}", shorten(message, 300));
    };
    let (key, value) = key_and_value(text, at);
    match key {
        Some(key) => format!("`{key}` is {value}: allowed {wanted}"),
        None => format!("{value} is not allowed here: write {wanted}"),
    }
}

/// The key written before `at` on its line (`count` in `{name: s, count: -1}`), and the
/// token at `at`, shortened.
fn key_and_value(text: &str, at: Position) -> (Option<String>, String) {
    let line = text
        .lines()
        .nth(at.line.saturating_sub(1) as usize)
        .unwrap_or("");
    let offset: usize = line
        .chars()
        .take(at.column.saturating_sub(1) as usize)
        .map(char::len_utf8)
        .sum();
    let (before, token) = line.split_at(offset.min(line.len()));
    let token = token
        .split([',', ']', '}', '#'])
        .next()
        .unwrap_or("")
        .trim();
    let key = before
        .trim_end()
        .strip_suffix(':')
        .map(|b| {
            b.rsplit(['{', ',', ' ', '-', '['])
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|k| !k.is_empty());
    (key, shorten(token, 60))
}

pub(crate) use colony_core::text::shorten;
