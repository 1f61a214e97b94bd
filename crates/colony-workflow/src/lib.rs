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
pub mod file;
pub mod read;
mod run;
mod template;

pub use check::{Position, Problem};
pub use read::{ReadError, read_bounded};
pub use run::{Agents, Finished, Options, Progress, Report, Status, agents, run};

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
}

#[derive(Debug)]
pub struct PoolDef {
    pub name: String,
    pub spec: AgentSpec,
    pub count: u32,
    /// Attempts started per minute at most.
    pub rate_per_minute: Option<u32>,
    pub backend: Backend,
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
    /// for, else `any`.
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

    /// One diagnostic per problem, for `miette` to render with snippets.
    pub fn diagnostics(&self) -> Vec<ProblemReport> {
        self.problems
            .iter()
            .map(|p| ProblemReport {
                problem: p.clone(),
                file: self.file.clone(),
                source: self.source.clone(),
                span: p.at.map(|at| span(&self.text, at.line(), at.column())),
            })
            .collect()
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
    source: Arc<NamedSource<String>>,
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
        self.span.map(|_| &*self.source as &dyn miette::SourceCode)
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
/// about 4 MB; what parsing makes of a file stays within a few hundred megabytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads and checks the workflow file at `path`: YAML, or TOML when its name ends in `.toml`.
/// The file must be a regular file of at most [`MAX_FILE_BYTES`], in UTF-8.
pub fn load(path: &Path) -> Result<Workflow, Error> {
    load_for(path, check::Purpose::Run)
}

fn load_for(path: &Path, purpose: check::Purpose) -> Result<Workflow, Error> {
    let text = read_bounded(path, MAX_FILE_BYTES)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path.display().to_string();
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(parse_toml_for(&text, &name, base, purpose)?);
    }
    Ok(parse_for(&text, &name, base, purpose)?)
}

/// Reads and checks the pools of a workflow-format file for `colony serve`: its `agents`,
/// checked as `colony validate` checks them. Its tasks, if it has any, are checked too but
/// not run: the server's tasks come over HTTP.
pub fn load_pools(path: &Path) -> Result<Vec<PoolDef>, Error> {
    Ok(load_for(path, check::Purpose::Pools)?.pools)
}

/// Checks a workflow written in TOML. The checks run on the same format: syntax errors point
/// into the TOML text; the other problems name the task or pool they are about, but carry no
/// line and column (they are found in a translation of the file).
pub fn parse_toml(text: &str, file: &str, base: &Path) -> Result<Workflow, Invalid> {
    parse_toml_for(text, file, base, check::Purpose::Run)
}

fn parse_toml_for(
    text: &str,
    file: &str,
    base: &Path,
    purpose: check::Purpose,
) -> Result<Workflow, Invalid> {
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
    let parsed: file::File = serde_saphyr::from_str(text).map_err(|e| {
        let at = e.location().and_then(check::known);
        // The parser's own snippet and "line L column C" are left out: ours show them once.
        let message = e.without_snippet().to_string();
        let message = message
            .strip_prefix("error: ")
            .unwrap_or(&message)
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line "))
            .map_or(message.as_str(), |(_, m)| m);
        let message = message
            .rsplit_once(" at line ")
            .map_or(message, |(m, _)| m)
            .trim()
            .to_owned();
        Invalid::new(
            file,
            text,
            vec![Problem {
                message,
                at,
                label: "here".into(),
            }],
        )
    })?;
    check::check(parsed, base, purpose).map_err(|problems| Invalid::new(file, text, problems))
}
