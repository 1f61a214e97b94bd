//! Running a checked [`Workflow`] to completion on a runtime.

use crate::{Backend, Checks, Workflow, template};
use bytes::Bytes;
use colony_agents::{
    Agent, Error as AgentError, Execution, Outcome, Task, command::Command, sim::Sim,
};
use colony_core::{
    dag::{Command as Step, Outcome as End, Run},
    name::join_under,
    task::{TaskSpec, TaskState},
};
use colony_journal::{Journal, TaskRow};
use colony_runtime::{Runtime, RuntimeOptions};
use futures::{StreamExt, stream::FuturesUnordered};
use serde::{Serialize, Serializer};
use serde_json::{Value, json, value::RawValue};
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::Instant,
};

/// How a task of the workflow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Succeeded,
    /// Its attempts failed (or its `expect` checks did), with the cause in `error`.
    Failed,
    /// Never run: a task it needs failed or was skipped.
    Skipped,
    /// Never finished: the run was cancelled first.
    Cancelled,
}

/// One task's result, as written to `<output>/<id>.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Finished {
    pub id: String,
    /// The pool it named, or the role or capabilities it asked for (`any` if none).
    pub runs_on: String,
    pub status: Status,
    /// The wave it belongs to: 0 for tasks that need nothing.
    pub wave: usize,
    pub attempts: u32,
    /// The agent of the last attempt.
    pub agent: Option<u32>,
    /// The cluster node of the last attempt, in a run across a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// From submission to its end.
    pub seconds: f64,
    pub output: Option<Output>,
    pub error: Option<String>,
    /// What its output says it cost (`cost_usd` of an `http` agent's or a coding-agent
    /// CLI's), read before a large output is replaced by a note in the summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// A task decided by vote: how the decision ended, with every voter and ballot (absent
    /// for other tasks, and for a decision that never started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Arc<colony_runtime::decision::Decided>>,
    /// A task decided by vote on a cluster node: how the decision went (its ballots stay on
    /// the node that counted them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_decision: Option<Box<colony_cluster::DecisionSummary>>,
    /// A task worked by a team on a cluster node: how the team went (its asks stay on the
    /// node that formed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_team: Option<Box<colony_cluster::TeamSummary>>,
    /// A task worked by a team: its members, each step's asks and the reassignments (absent
    /// for other tasks, and for a team that never formed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<Arc<colony_runtime::team::Teamed>>,
}

impl Finished {
    /// About how many bytes it holds beyond its fixed fields: its output and its decision.
    fn held(&self) -> usize {
        self.output.as_ref().map_or(0, Output::len)
            + self.decision.as_deref().map_or(0, crate::decide::size)
            + self.team.as_deref().map_or(0, crate::team::size)
    }
}

/// A task's output as its agent gave it, never parsed into a tree (a 16 MB list of numbers
/// would take hundreds of MB as one): an output that is one JSON value is written into result
/// files and the summary as its raw text, anything else as a JSON string. Clones share it.
#[derive(Clone, Debug)]
pub struct Output(Kept);

#[derive(Clone, Debug)]
enum Kept {
    /// One JSON value, checked once when it arrived, without building a tree.
    Json(Arc<RawValue>),
    /// Anything else: text, or bytes that are not even UTF-8.
    Text(Bytes),
    /// An output too large for any placeholder to read, kept for its readers as its size
    /// only (and whether it is text), for their error to name: never its bytes.
    Gone { len: usize, text: bool },
}

impl Output {
    /// Keeps `raw` as it is: as JSON when it is one JSON value, else as text.
    pub fn new(raw: Bytes) -> Self {
        // Raw JSON is written into result files as it is: only what serde_json reads back
        // (strings without lone surrogates, finite numbers, nesting within its limit) counts
        // as JSON; anything else is kept as text.
        let json = std::str::from_utf8(&raw)
            .ok()
            .filter(|text| serde_json::from_str::<Strict>(text).is_ok())
            .and_then(|text| RawValue::from_string(text.to_owned()).ok());
        Self(match json {
            Some(json) => Kept::Json(json.into()),
            None => Kept::Text(raw),
        })
    }

    /// A text, written as a JSON string.
    fn text(text: String) -> Self {
        Self(Kept::Text(Bytes::from(text)))
    }

    /// The `cost_usd` an `http` agent or a coding-agent CLI puts in its output, if any.
    pub fn cost_usd(&self) -> Option<f64> {
        #[derive(serde::Deserialize)]
        struct Cost {
            cost_usd: Option<f64>,
        }
        match &self.0 {
            Kept::Json(raw) if raw.get().starts_with('{') => {
                serde_json::from_str::<Cost>(raw.get())
                    .ok()
                    .and_then(|c| c.cost_usd)
                    .filter(|c| c.is_finite() && *c >= 0.0)
            }
            _ => None,
        }
    }

    /// Its size in bytes (a JSON value's without the blanks around it).
    pub fn len(&self) -> usize {
        match &self.0 {
            Kept::Gone { len, .. } => *len,
            _ => self.as_bytes().len(),
        }
    }

    /// What the readers of this output keep of it: the output itself, or, past what any
    /// placeholder may read, its size alone.
    pub(crate) fn for_readers(&self) -> Self {
        if self.len() <= READ_OUTPUT_BYTES {
            return self.clone();
        }
        Self(Kept::Gone {
            len: self.len(),
            text: self.fills_as_text(),
        })
    }

    /// Whether a placeholder filled with it whole gets text (a JSON string, or not JSON).
    fn fills_as_text(&self) -> bool {
        match &self.0 {
            Kept::Gone { text, .. } => *text,
            Kept::Json(json) => json.get().starts_with('"'),
            Kept::Text(_) => true,
        }
    }

    /// Whether the agent gave no bytes.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The bytes the agent gave (a JSON value's without the blanks around it).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Kept::Json(json) => json.get().as_bytes(),
            Kept::Text(text) => text,
            Kept::Gone { .. } => b"",
        }
    }

    /// Whether it is one JSON value.
    pub fn is_json(&self) -> bool {
        matches!(self.0, Kept::Json(_))
    }

    /// The output as a JSON value: parsed when it is JSON, else its text as a string. This
    /// builds the whole tree, many times the output's size for a long list: the run does it
    /// only for the outputs placeholders read, of up to 1 MiB in all.
    pub fn value(&self) -> Value {
        match &self.0 {
            Kept::Json(json) => serde_json::from_str(json.get())
                .unwrap_or_else(|_| Value::String(json.get().to_owned())),
            Kept::Text(text) => Value::String(String::from_utf8_lossy(text).into_owned()),
            Kept::Gone { len, .. } => Value::String(format!("({len} bytes, not kept)")),
        }
    }
}

/// A JSON value walked without being built, as strictly as serde_json reads one back.
struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Strict, E> {
        if v.is_finite() {
            Ok(Strict)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

impl Serialize for Output {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            // Written as it is, not re-indented.
            Kept::Json(json) => json.serialize(serializer),
            Kept::Text(text) => String::from_utf8_lossy(text).serialize(serializer),
            Kept::Gone { len, .. } => format!("({len} bytes, not kept)").serialize(serializer),
        }
    }
}

/// Bytes of outputs that one task's placeholders may read, in all. Each output read is parsed
/// into a tree while the task's payload is filled (up to ~30 times its size for a list of
/// small numbers), then dropped; a larger output could not fit a payload anyway, whose limit
/// is the same.
pub(crate) const READ_OUTPUT_BYTES: usize = colony_core::task::DEFAULT_MAX_PAYLOAD;

/// Bytes of payloads filled in and handed to the runtime whose tasks have not ended yet, and
/// of outputs not yet written to their result files. A ready task beyond them waits, unfilled,
/// until tasks end and results are written: 600 tasks each filled with the same 1 MB output
/// would otherwise take 600 MB at once. A payload is at most the runtime's `max_payload`
/// (1 MiB by default), so a task can always start when nothing else is in flight.
pub(crate) const IN_FLIGHT_PAYLOAD_BYTES: usize = 64 << 20;

/// The whole run, as written to `<output>/summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub output: PathBuf,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub seconds: f64,
    /// Tokens and dollars spent by the run's `http` agents.
    pub usage: colony_agents::http::Usage,
    pub tasks: Vec<Finished>,
    /// Results that could not be written (a task's file, `run.log`, `summary.json`), each
    /// naming the file and why; a run with any has not succeeded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unwritten: Vec<String>,
    /// What each of the workflow's webhooks delivered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::webhooks::Delivery>,
}

impl Report {
    /// Every task succeeded and every result is on disk.
    pub fn all_succeeded(&self) -> bool {
        self.succeeded == self.tasks.len() && self.unwritten.is_empty()
    }
}

/// Told of each task as it ends.
pub type Progress = Box<dyn FnMut(&Finished) + Send>;

/// Told of each task's id as it is handed to the runtime (queued, then run by an agent).
pub type Started = Box<dyn FnMut(&str) + Send>;

/// Settings of one run.
pub struct Options {
    pub runtime: RuntimeOptions,
    pub journal: Arc<dyn Journal>,
    /// Overrides the workflow's output folder.
    pub output: Option<PathBuf>,
    /// Called as each task ends, for progress.
    pub on_finished: Option<Progress>,
    /// Called as each task is handed to the runtime, for progress.
    pub on_started: Option<Started>,
    /// When it completes, the run stops: nothing more starts, running attempts are abandoned
    /// (their processes killed) and unfinished tasks end `cancelled`.
    pub cancel: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The journal's tasks of an earlier run of this workflow, to resume it: tasks that
    /// succeeded are not run again (their outputs feed their dependents), tasks still
    /// unfinished are finished by the runtime's recovery and waited for, and the others run
    /// again. Empty for a fresh run.
    pub prior: Vec<TaskRow>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("runtime", &self.runtime)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// Checks each output of a pool's agents against its task's `expect`. Every other call
/// (retirement, reinstatement, an alert, the bus) goes to the agent it wraps.
struct Checked {
    inner: Arc<dyn Agent>,
    /// By workflow task id, which the payload carries as `task`.
    checks: Arc<HashMap<String, Checks>>,
    /// Where tasks' worktrees are, for `git-diff` checks.
    worktrees: PathBuf,
    /// The run's output folder, whose changes are never the attempt's.
    output: PathBuf,
}

impl Agent for Checked {
    fn handle(&self, task: Task) -> Execution {
        let id = workflow_id(&task.payload);
        let Some((id, mut checks)) =
            id.and_then(|id| self.checks.get(&id).cloned().map(|c| (id, c)))
        else {
            return self.inner.handle(task);
        };
        // The id is one of the workflow's, each checked as a name: the join cannot fail.
        checks.worktree = join_under(&self.worktrees, &id).ok();
        checks.output = Some(self.output.clone());
        let Some(repo) = checks.git_diff.clone() else {
            checks.started = Some(std::time::SystemTime::now());
            return match self.inner.handle(task) {
                Execution::Done(outcome) => Execution::Done(verify(outcome, &checks)),
                Execution::Running(running) => {
                    Execution::Running(Box::pin(async move { verify(running.await, &checks) }))
                }
            };
        };
        // `git` runs as a child awaited here, never on the dispatcher's thread: what the
        // checkout looked like before, so that a change must be this attempt's own. (A task's
        // own worktree does not exist yet: it is made fresh for the attempt.)
        let inner = self.inner.clone();
        let output = self.output.clone();
        Execution::Running(Box::pin(async move {
            checks.before = Some(fingerprint(&repo, &output).await);
            checks.started = Some(std::time::SystemTime::now());
            let outcome = match inner.handle(task) {
                Execution::Done(outcome) => outcome,
                Execution::Running(running) => running.await,
            };
            let outcome = verify(outcome, &checks)?;
            changed(outcome, &checks).await
        }))
    }

    fn retired(&self, agent: colony_core::AgentId) {
        self.inner.retired(agent);
    }

    fn reinstated(&self, agent: colony_core::AgentId) {
        self.inner.reinstated(agent);
    }

    fn alerted(&self, agent: colony_core::AgentId) {
        self.inner.alerted(agent);
    }

    fn attach_mail(&self, mail: Arc<dyn colony_agents::Mail>) {
        self.inner.attach_mail(mail);
    }
}

/// Makes a `sim` pool's faults repeatable. A sim agent draws an attempt's fate from its seed,
/// the task's id and the attempt; a workflow's tasks get their runtime ids in the order they
/// become ready, which changes from run to run with the agents' concurrency. Here the id the
/// agent sees is a hash of the task's payload instead (its workflow id and its filled-in input,
/// the same in every run of the same file), so that a seed fails the same tasks every run.
struct Repeatable {
    inner: Arc<dyn Agent>,
}

impl Agent for Repeatable {
    fn handle(&self, mut task: Task) -> Execution {
        let mut hash = Fnv::default();
        hash.write(&task.payload);
        task.id = colony_core::TaskId(hash.0);
        self.inner.handle(task)
    }

    fn answers_inline(&self) -> bool {
        self.inner.answers_inline()
    }

    fn retired(&self, agent: colony_core::AgentId) {
        self.inner.retired(agent);
    }

    fn reinstated(&self, agent: colony_core::AgentId) {
        self.inner.reinstated(agent);
    }

    fn alerted(&self, agent: colony_core::AgentId) {
        self.inner.alerted(agent);
    }

    fn attach_mail(&self, mail: Arc<dyn colony_agents::Mail>) {
        self.inner.attach_mail(mail);
    }
}

/// The workflow task id a payload carries, read without building the payload's tree.
fn workflow_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Carried {
        task: String,
    }
    serde_json::from_slice::<Carried>(payload)
        .ok()
        .map(|c| c.task)
}

/// `output` checked against `checks` by a task awaited on a tokio worker: at once when only
/// the output is read, on the blocking pool when files or a git checkout must be read.
pub(crate) async fn verify_awaited(output: bytes::Bytes, checks: Checks) -> Outcome {
    if checks.files.is_empty() && checks.git_diff.is_none() {
        return verify(Ok(output), &checks);
    }
    tokio::task::spawn_blocking(move || verify(Ok(output), &checks))
        .await
        .unwrap_or_else(|e| {
            Err(colony_agents::Error::fatal(format!(
                "the checks stopped: {e}"
            )))
        })
}

/// An output that fails a check fails its attempt (retryably: another attempt may pass).
pub(crate) fn verify(outcome: Outcome, checks: &Checks) -> Outcome {
    let output = outcome?;
    // Checked without building a tree (a 16 MB list would take hundreds of MB as one): only
    // a schema needs one, and only for an output of up to READ_OUTPUT_BYTES.
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&output).is_ok();
    let first = output.iter().find(|b| !b.is_ascii_whitespace()).copied();
    // A JSON string's text is what it says, unescaped; anything else's is its bytes.
    let text: std::borrow::Cow<'_, str> = match first {
        Some(b'"') if is_json => serde_json::from_slice::<String>(&output)
            .map_or_else(|_| String::from_utf8_lossy(&output), Into::into),
        _ => String::from_utf8_lossy(&output),
    };
    let fail = |why: String| Err(AgentError::retryable(format!("expect: {why}")));
    if checks.json && !(is_json && matches!(first, Some(b'{' | b'['))) {
        return fail("the output is not a JSON object or array".into());
    }
    if let Some(re) = &checks.regex
        && !re.is_match(&text)
    {
        return fail(format!("the output does not match /{}/", re.as_str()));
    }
    if let Some(needle) = &checks.contains
        && !text.contains(needle.as_str())
    {
        return fail(format!("the output does not contain {needle:?}"));
    }
    for file in &checks.files {
        let modified = std::fs::metadata(file).and_then(|m| m.modified());
        match (modified, checks.started) {
            (Err(_), _) => return fail(format!("{} does not exist", file.display())),
            // File times come from the kernel's coarse clock, a tick behind ours at most.
            (Ok(at), Some(started)) if at + COARSE_CLOCK < started => {
                return fail(format!(
                    "{} was not written by this attempt (it is older)",
                    file.display()
                ));
            }
            _ => {}
        }
    }
    if let Some(schema) = &checks.schema {
        if !is_json {
            return fail("the output is not JSON, so it cannot match its schema".into());
        }
        if output.len() > READ_OUTPUT_BYTES {
            return fail(format!(
                "the output is {} bytes: outputs of up to {READ_OUTPUT_BYTES} bytes are checked against a schema",
                output.len()
            ));
        }
        let Ok(value) = serde_json::from_slice::<Value>(&output) else {
            return fail("the output is not JSON, so it cannot match its schema".into());
        };
        if let Some(error) = schema.iter_errors(&value).next() {
            return fail(format!(
                "the output does not match its schema: {error} (at {})",
                error.instance_path
            ));
        }
    }
    Ok(output)
}

/// An output whose attempt changed nothing in its git checkout fails its attempt, when its task
/// expects a `git-diff`.
async fn changed(output: Bytes, checks: &Checks) -> Outcome {
    let Some(repo) = &checks.git_diff else {
        return Ok(output);
    };
    let fail = |why: String| Err(AgentError::retryable(format!("expect: {why}")));
    // The task's own worktree, once its attempt has made one, else the repository.
    let own = match &checks.worktree {
        Some(w) if tokio::fs::metadata(w).await.is_ok_and(|m| m.is_dir()) => Some(w),
        _ => None,
    };
    let (dir, before) = match own {
        // A fresh worktree: any change at all is the attempt's.
        Some(own) => (own, Ok(0)),
        None => (repo, checks.before.clone().unwrap_or(Ok(0))),
    };
    let output_dir = checks.output.clone().unwrap_or_default();
    match (before, fingerprint(dir, &output_dir).await) {
        (_, Err(e)) | (Err(e), _) => fail(e),
        (Ok(before), Ok(after)) if after == before => fail(format!(
            "no changes in the git checkout {} by this attempt",
            dir.display()
        )),
        _ => Ok(output),
    }
}

/// How far a file's modification time may lag the clock that timed the attempt's start.
const COARSE_CLOCK: std::time::Duration = std::time::Duration::from_millis(20);

/// The state of a git checkout's changes, colony's own output folder left out: a hash of its
/// status and its diff against `HEAD` (0 for a clean checkout). `git` runs as an awaited child
/// and its output is hashed as it comes, so that neither a slow repository nor a huge diff
/// holds a thread or memory.
async fn fingerprint(dir: &std::path::Path, output: &std::path::Path) -> Result<u64, String> {
    let exclude = std::path::absolute(output).ok().and_then(|o| {
        let d = std::path::absolute(dir).ok()?;
        let rel = o.strip_prefix(d).ok()?.to_owned();
        (!rel.as_os_str().is_empty()).then(|| format!(":(exclude){}", rel.display()))
    });
    let mut hash = Fnv::default();
    let mut written = 0;
    for args in [
        &["status", "--porcelain", "-uall"][..],
        &["diff", "HEAD"][..],
    ] {
        let mut command = tokio::process::Command::new("git");
        command.arg("-C").arg(dir).args(args).arg("--").arg(".");
        command.args(&exclude);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        written += git_output(command, dir, &mut hash).await?;
    }
    Ok(if written == 0 { 0 } else { hash.0 })
}

/// Runs one `git` command, hashing its standard output into `hash`: the bytes it wrote.
async fn git_output(
    mut command: tokio::process::Command,
    dir: &std::path::Path,
    hash: &mut Fnv,
) -> Result<u64, String> {
    use tokio::io::AsyncReadExt as _;
    /// Bytes of `git`'s standard error kept for the message.
    const STDERR_KEPT: u64 = 4096;
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("cannot read git's output".into());
    };
    let mut stderr_text = Vec::new();
    let read_stderr = async {
        let mut stderr = stderr.take(STDERR_KEPT);
        let _ = stderr.read_to_end(&mut stderr_text).await;
    };
    let mut written = 0;
    let read_stdout = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hash.write(&buf[..n]);
                    written += n as u64;
                }
            }
        }
    };
    tokio::join!(read_stdout, read_stderr);
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if status.success() {
        Ok(written)
    } else {
        Err(format!(
            "git in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&stderr_text).trim()
        ))
    }
}

/// FNV-1a: stable across processes and Rust versions, unlike the standard hasher.
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Agents, and those among them that count what they use.
pub type Agents = (Vec<Arc<dyn Agent>>, Vec<Metered>);

/// A pool whose calls cost tokens and dollars: an `http` endpoint, or a preset's CLI.
#[derive(Clone, Debug)]
pub struct Metered {
    /// The pool's name.
    pub pool: String,
    /// Dollars the pool may spend, if it has a budget.
    pub budget_usd: Option<f64>,
    meter: Meter,
}

#[derive(Clone, Debug)]
enum Meter {
    Http(Arc<colony_agents::http::Http>),
    Cli(Arc<Command>),
}

impl Metered {
    /// Tokens and dollars its calls have used so far.
    pub fn usage(&self) -> colony_agents::http::Usage {
        match &self.meter {
            Meter::Http(h) => h.usage(),
            Meter::Cli(c) => c.usage(),
        }
    }
}

/// The agents of `pools`, in order, with those that count their usage (`http` endpoints,
/// preset CLIs).
/// Command agents keep their stderr logs in `output/logs` and their worktrees in
/// `output/worktrees`.
pub fn agents(
    pools: &[crate::PoolDef],
    output: &std::path::Path,
) -> Result<Agents, colony_runtime::Error> {
    let logs = output.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| {
        colony_runtime::Error::Options(format!("cannot create {}: {e}", logs.display()))
    })?;
    let mut endpoints = Vec::new();
    let agents = pools
        .iter()
        .map(|p| {
            let agent: Arc<dyn Agent> = match &p.backend {
                Backend::Sim(o) => Arc::new(
                    Sim::new(o.clone())
                        .map_err(|e| colony_runtime::Error::Options(e.to_string()))?,
                ),
                Backend::Process(o) => {
                    Arc::new(colony_agents::process::Process::new((**o).clone()))
                }
                Backend::Http(o) => {
                    let http =
                        Arc::new(colony_agents::http::Http::new((**o).clone()).map_err(|e| {
                            colony_runtime::Error::Options(format!("pool `{}`: {e}", p.name))
                        })?);
                    endpoints.push(Metered {
                        pool: p.name.clone(),
                        budget_usd: o.budget_usd,
                        meter: Meter::Http(http.clone()),
                    });
                    http
                }
                Backend::Command(o) => {
                    let mut o = (**o).clone();
                    o.logs = Some(logs.clone());
                    if let Some(w) = &mut o.worktree {
                        // Absolute: git runs from the repository, not from here.
                        w.root = std::path::absolute(output.join("worktrees"))
                            .unwrap_or_else(|_| output.join("worktrees"));
                    }
                    let budget = o.cli.as_ref().map(|cli| cli.budget_usd);
                    let command = Arc::new(Command::new(o));
                    if let Some(budget_usd) = budget {
                        endpoints.push(Metered {
                            pool: p.name.clone(),
                            budget_usd,
                            meter: Meter::Cli(command.clone()),
                        });
                    }
                    command
                }
            };
            Ok(agent)
        })
        .collect::<Result<Vec<_>, colony_runtime::Error>>()?;
    Ok((agents, endpoints))
}

/// Runs `workflow` to completion and writes its results.
pub async fn run(
    workflow: &Workflow,
    mut options: Options,
) -> Result<Report, colony_runtime::Error> {
    let started = Instant::now();
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| workflow.output.clone());
    let logs = output.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| {
        colony_runtime::Error::Options(format!("cannot create {}: {e}", logs.display()))
    })?;
    // Only tasks that expect something: the others' attempts go straight to their agents,
    // without reading their payloads for a task id. A decision's checks are of its winner,
    // once decided, not of each ballot; a team's, of its last step's output.
    let checks: Arc<HashMap<String, Checks>> = Arc::new(
        workflow
            .tasks
            .iter()
            .filter(|t| !t.expect.is_empty() && t.decide.is_none() && t.team.is_none())
            .map(|t| (t.id.clone(), t.expect.clone()))
            .collect(),
    );
    let (agents, endpoints) = agents(&workflow.pools, &output)?;
    // Before anything runs: a webhook's secret that is not set stops the run here.
    let hooks = match workflow.webhooks.is_empty() {
        true => None,
        false => Some(
            crate::webhooks::Webhooks::start(&workflow.name, &workflow.webhooks)
                .map_err(colony_runtime::Error::Options)?,
        ),
    };
    let pools = workflow
        .pools
        .iter()
        .zip(agents)
        .map(|(p, inner)| {
            let inner: Arc<dyn Agent> = match p.backend {
                Backend::Sim(_) => Arc::new(Repeatable { inner }),
                _ => inner,
            };
            let agent: Arc<dyn Agent> = if checks.is_empty() {
                inner
            } else {
                Arc::new(Checked {
                    inner,
                    checks: checks.clone(),
                    worktrees: std::path::absolute(output.join("worktrees"))
                        .unwrap_or_else(|_| output.join("worktrees")),
                    output: output.clone(),
                })
            };
            p.pool(agent)
        })
        .collect::<Vec<_>>();
    // Resuming: journal rows are matched to tasks by key, which names the workflow, the task
    // and a fingerprint of its definition; a task that changed since runs again. Unfinished
    // rows that match nothing here are cancelled, before the runtime would recover them.
    let keys: Vec<String> = workflow.tasks.iter().map(|t| key(workflow, t)).collect();
    // A decision's ballots, and a team's asks, are journaled as tasks of its key, but not
    // the decision or the team: an interrupted decision is run again whole, a team keeps
    // the steps its finished asks answered, and their unfinished tasks are cancelled here
    // rather than recovered, as nothing would count them.
    let ballots: HashSet<&str> = workflow
        .tasks
        .iter()
        .zip(&keys)
        .filter(|(t, _)| t.decide.is_some() || t.team.is_some())
        .map(|(_, k)| k.as_str())
        .collect();
    let stale: Vec<colony_journal::Record> = options
        .prior
        .iter()
        .filter(|row| {
            let key = row.spec.key.as_deref();
            !row.state.is_terminal()
                && (key.is_none_or(|k| !keys.iter().any(|own| own == k))
                    || key.is_some_and(|k| ballots.contains(k)))
        })
        .map(|row| colony_journal::Record::Cancelled { task: row.id })
        .collect();
    if !stale.is_empty() {
        tracing::info!(
            tasks = stale.len(),
            "Cancelling unfinished tasks this workflow no longer has."
        );
        options.journal.record(stale).await?;
    }
    let memory = crate::memory::open(workflow, &output).await?;
    let runtime = Runtime::start(options.runtime.clone(), pools, options.journal.clone()).await?;
    let mut writer = Writer::start(&output)?;
    writer.hooks = hooks;
    let handle = runtime.handle().clone();
    // Mailboxes of the tasks that wait for a message, subscribed before any task runs, so
    // that nothing published meanwhile is missed.
    let mut waits = crate::messages::Waits::open(workflow, handle.messages())?;
    let waves = workflow.graph.waves();
    if let Some(hooks) = &mut writer.hooks {
        hooks.send(
            crate::webhooks::Kind::RunStarted,
            serde_json::json!({
                "tasks": workflow.tasks.len(),
                "waves": waves.iter().max().map_or(0, |w| w + 1),
                "output": output.display().to_string(),
                "resumed": !options.prior.is_empty(),
            }),
        );
    }
    let mut results = Results {
        tasks: vec![None; workflow.tasks.len()],
        kept: 0,
    };
    // Only the outputs some task has yet to read: the others are in their result files.
    let mut outputs: HashMap<String, Output> = HashMap::new();
    let mut left = Readers::new(workflow);
    let mut submitted_at: Vec<Option<Instant>> = vec![None; workflow.tasks.len()];
    // Resuming: the latest journal row of each task of the workflow, by its key.
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut latest: HashMap<usize, &TaskRow> = HashMap::new();
    // Per team task, the asks of earlier runs that succeeded, oldest first: its steps they
    // answered are not asked again.
    let mut earlier: HashMap<usize, Vec<&TaskRow>> = HashMap::new();
    for row in &options.prior {
        // A ballot's row is not its decision's outcome, nor a step's its team's: a decision
        // or team task always runs again (a team keeping the steps its asks answered).
        let Some(&i) = row.spec.key.as_deref().and_then(|k| index.get(k)) else {
            continue;
        };
        if workflow.tasks[i].team.is_some() {
            if row.state == TaskState::Succeeded && row.output.is_some() {
                earlier.entry(i).or_default().push(row);
            }
        } else if workflow.tasks[i].decide.is_none() {
            latest.insert(i, row);
        }
    }
    let mut earlier: HashMap<usize, Vec<colony_runtime::team::EarlierAsk>> = earlier
        .into_iter()
        .map(|(i, mut rows)| {
            rows.sort_unstable_by_key(|r| r.id);
            let asks = rows
                .into_iter()
                .map(|r| colony_runtime::team::EarlierAsk {
                    task: r.id,
                    agent: r.agent,
                    payload: r.spec.payload.clone(),
                    output: r.output.clone().unwrap_or_default(),
                })
                .collect();
            (i, asks)
        })
        .collect();
    let again = pruned_and_read(&latest, &left.reads);
    for &i in &again {
        tracing::warn!(
            task = %workflow.tasks[i].id,
            "A task that succeeded in an earlier run has lost its output to colony prune; it runs again for the tasks that read it."
        );
    }
    let mut done = Vec::new();
    let mut recovering: HashMap<usize, colony_core::TaskId> = HashMap::new();
    let mut resumed = Vec::new();
    for (&i, row) in &latest {
        match row.state {
            TaskState::Succeeded if !again.contains(&i) => {
                let value = row.output.clone().map(Output::new);
                if let Some(v) = &value
                    && left.wanted(i)
                {
                    outputs.insert(workflow.tasks[i].id.clone(), v.for_readers());
                }
                let mut f = finished(workflow, &waves, i, Status::Succeeded, value, None);
                f.attempts = row.attempt;
                f.agent = row.agent.map(|a| a.0);
                resumed.push((i, f));
                done.push((i, End::Succeeded));
            }
            TaskState::Queued | TaskState::Running => {
                recovering.insert(i, row.id);
            }
            _ => {}
        }
    }
    // Tasks an earlier run finished or left running do not wait now.
    for &(i, _) in &done {
        waits.close(i);
    }
    for &i in recovering.keys() {
        waits.close(i);
    }
    let mut arrived: HashMap<usize, serde_json::Value> = HashMap::new();
    resumed.sort_unstable_by_key(|r| r.0);
    // What an earlier run finished was told of then: not again to the webhooks.
    let hooks = writer.hooks.take();
    for (i, f) in resumed {
        record(&mut writer, &mut options.on_finished, &mut results, i, f);
    }
    writer.hooks = hooks;
    done.sort_unstable_by_key(|d| d.0);
    // What an earlier run's tasks published is published again, in the file's order, for
    // the tasks of this run that still wait (their mailboxes are open; those of tasks done
    // or running are not). The mailboxes are new, so there is room at once.
    for &(i, _) in &done {
        let t = &workflow.tasks[i];
        let Some(topic) = &t.publish else {
            continue;
        };
        let published = match latest[&i].output.clone() {
            Some(output) => crate::messages::publish(handle.messages(), &t.id, topic, output)
                .await
                .err(),
            None => Some("its output is gone (pruned)".into()),
        };
        if let Some(e) = published {
            tracing::warn!(task = %t.id, "its output from an earlier run was not published again: {e}");
        }
    }
    // Watched from now on, before their needs may even have ended: they run already.
    let mut watched = watch(
        &handle,
        options.journal.clone(),
        recovering.values().copied(),
    );
    let (mut dag, first) = Run::start(&workflow.graph, &done);
    let mut steps: Vec<Step> = first;
    let mut pending: FuturesUnordered<Waiting> = FuturesUnordered::new();
    // Per pool with a rate: the interval between its tasks, and when the next may go.
    let mut pace: HashMap<String, (std::time::Duration, tokio::time::Instant)> = workflow
        .pools
        .iter()
        .filter_map(|p| {
            let every = std::time::Duration::from_secs(60) / p.rate_per_minute?.max(1);
            Some((p.name.clone(), (every, tokio::time::Instant::now())))
        })
        .collect();
    let mut cancel = options
        .cancel
        .take()
        .unwrap_or_else(|| Box::pin(std::future::pending()));
    let mut cancelled = false;
    let max_payload = options.runtime.max_payload;
    // Ready tasks not handed to the runtime yet, unfilled: the highest priority first, then in
    // the order they became ready.
    let mut ready: BinaryHeap<(colony_core::task::Priority, Reverse<usize>, usize)> =
        BinaryHeap::new();
    let mut readied = 0;
    // Tasks of pools with a rate whose turn has not come, unfilled and uncharged, soonest
    // first: a slow pool's tasks must not hold the budget while other pools could run. Each
    // keeps its place in `ready` and its turn, given when it was first due.
    let mut paced: BinaryHeap<Reverse<(tokio::time::Instant, Reverse<usize>, usize)>> =
        BinaryHeap::new();
    let mut turn_given: HashSet<usize> = HashSet::new();
    // Bytes of payloads handed to the runtime whose tasks have not ended, and each task's.
    let mut in_flight: usize = 0;
    let mut charged = vec![0; workflow.tasks.len()];
    loop {
        for step in std::mem::take(&mut steps) {
            match step {
                Step::Start(i) if recovering.contains_key(&i) => {
                    release(workflow, i, &mut left, &mut outputs);
                    // Started by an earlier process; the runtime's recovery finishes it.
                    let ended = watched.remove(&recovering[&i]);
                    submitted_at[i] = Some(Instant::now());
                    if let Some(on) = &mut options.on_started {
                        on(&workflow.tasks[i].id);
                    }
                    let publish = workflow.tasks[i].publish.clone();
                    let (task, bus) = (workflow.tasks[i].id.clone(), handle.messages().clone());
                    pending.push(Box::pin(async move {
                        let completion = match ended {
                            Some(rx) => rx.await.unwrap_or(Err(colony_runtime::Error::Stopped)),
                            None => Err(colony_runtime::Error::Stopped),
                        };
                        // Published once it succeeded, as if this run had started it.
                        let completion = match (completion, publish) {
                            (Ok(mut c), Some(topic)) if c.state == TaskState::Succeeded => {
                                let output = c.output.clone().unwrap_or_default();
                                if let Err(e) =
                                    crate::messages::publish(&bus, &task, &topic, output).await
                                {
                                    c.state = TaskState::Failed;
                                    c.error = Some(e.into());
                                }
                                Ok(c)
                            }
                            (completion, _) => completion,
                        };
                        (i, Waited::Task(completion))
                    }) as Waiting);
                }
                Step::Start(i) => {
                    ready.push((workflow.tasks[i].priority, Reverse(readied), i));
                    readied += 1;
                }
                Step::Skip { node, because } => {
                    waits.close(node);
                    release(workflow, node, &mut left, &mut outputs);
                    let error = format!(
                        "skipped: `{}` failed or was skipped",
                        workflow.tasks[because].id
                    );
                    let f = finished(workflow, &waves, node, Status::Skipped, None, Some(error));
                    record(&mut writer, &mut options.on_finished, &mut results, node, f);
                }
            }
        }
        // Fills in and hands over ready tasks while their payloads, and the outputs still on
        // their way to their files, fit in the budget; with nothing in flight and nothing left
        // to write, the first always may, so that a run never stalls.
        while let Some(&(_, Reverse(order), i)) = ready.peek() {
            // A task that waits for a message waits first, unfilled and uncharged: it holds
            // none of the budget however long it waits, and comes back to its place here
            // with its message.
            if waits.waits(i) {
                ready.pop();
                let waiting = waits.take(i).expect("checked");
                pending.push(Box::pin(
                    async move { (i, Waited::Message(order, waiting.wait().await)) },
                ) as Waiting);
                continue;
            }
            // A pool with a rate: the task gets its turn, and waits for it unfilled, so that
            // the wait holds no budget and never counts against its timeout.
            if turn_given.insert(i)
                && let Some((every, next)) = pace.get_mut(&workflow.tasks[i].runs_on)
            {
                let now = tokio::time::Instant::now();
                let at = (*next).max(now);
                *next = at + *every;
                if at > now {
                    ready.pop();
                    paced.push(Reverse((at, Reverse(order), i)));
                    continue;
                }
            }
            let busy = in_flight.saturating_add(writer.backlog());
            let vote = workflow.tasks[i].decide.as_ref();
            let team = workflow.tasks[i].team.as_ref();
            let holds =
                vote.map_or(0, crate::decide::held) + team.map_or(0, |t| t.held(max_payload));
            let need = max_payload.saturating_add(holds);
            if busy > 0 && busy.saturating_add(need) > IN_FLIGHT_PAYLOAD_BYTES {
                break;
            }
            ready.pop();
            let spec =
                spec_for(workflow, i, &outputs, max_payload).and_then(
                    |(spec, recall)| match arrived.remove(&i) {
                        Some(message) => crate::messages::with_message(spec, message, max_payload)
                            .map(|spec| (spec, recall)),
                        None => Ok((spec, recall)),
                    },
                );
            release(workflow, i, &mut left, &mut outputs);
            match spec {
                Ok((spec, recall)) => {
                    charged[i] = spec.payload.len() + holds;
                    in_flight += charged[i];
                    submitted_at[i] = Some(Instant::now());
                    if let Some(on) = &mut options.on_started {
                        on(&workflow.tasks[i].id);
                    }
                    let handle = handle.clone();
                    pending.push(match (vote, team) {
                        (None, Some(team)) => {
                            let (team, checks) = (team.clone(), workflow.tasks[i].expect.clone());
                            let earlier = earlier.remove(&i).unwrap_or_default();
                            Box::pin(async move {
                                let ended =
                                    crate::team::run(handle, spec, team, checks, earlier).await;
                                (i, Waited::Team(ended))
                            }) as Waiting
                        }
                        (None, None) => {
                            let memory = memory.clone();
                            let remember = workflow.tasks[i].remember;
                            let task = workflow.tasks[i].id.clone();
                            let publish = workflow.tasks[i].publish.clone();
                            Box::pin(async move {
                                let spec = match (&memory, recall) {
                                    (Some(m), Some((query, k))) => {
                                        match m.recall(spec, query, k, max_payload).await {
                                            Ok(spec) => spec,
                                            Err(e) => {
                                                let e = colony_runtime::Error::Options(e);
                                                return (i, Waited::Task(Err(e)));
                                            }
                                        }
                                    }
                                    _ => spec,
                                };
                                let ended = match handle.submit_notify(spec).await {
                                    Ok(p) => p.await,
                                    Err(e) => Err(e),
                                };
                                // Remembered once it succeeded; if it cannot be, the task
                                // fails and says why: a later recall would miss it.
                                let ended = match (ended, &memory) {
                                    (Ok(mut c), Some(m))
                                        if remember && c.state == TaskState::Succeeded =>
                                    {
                                        let output = c.output.clone().unwrap_or_default();
                                        if let Err(e) = m.remember(&task, &output).await {
                                            c.state = TaskState::Failed;
                                            c.error = Some(e.into());
                                        }
                                        Ok(c)
                                    }
                                    (ended, _) => ended,
                                };
                                // Published once it succeeded; if it cannot be, the task
                                // fails and says why: a task waiting for it would miss it.
                                let ended = match (ended, publish) {
                                    (Ok(mut c), Some(topic)) if c.state == TaskState::Succeeded => {
                                        let output = c.output.clone().unwrap_or_default();
                                        let bus = handle.messages();
                                        if let Err(e) =
                                            crate::messages::publish(bus, &task, &topic, output)
                                                .await
                                        {
                                            c.state = TaskState::Failed;
                                            c.error = Some(e.into());
                                        }
                                        Ok(c)
                                    }
                                    (ended, _) => ended,
                                };
                                (i, Waited::Task(ended))
                            }) as Waiting
                        }
                        (Some(vote), _) => {
                            let (vote, checks) = (vote.clone(), workflow.tasks[i].expect.clone());
                            Box::pin(async move {
                                let ended = crate::decide::run(handle, spec, vote, checks).await;
                                (i, Waited::Decision(ended))
                            }) as Waiting
                        }
                    });
                }
                Err(error) => {
                    let f = finished(workflow, &waves, i, Status::Failed, None, Some(error));
                    steps.extend(dag.on_end(&workflow.graph, i, End::Failed));
                    record(&mut writer, &mut options.on_finished, &mut results, i, f);
                }
            }
        }
        if !steps.is_empty() {
            continue;
        }
        if pending.is_empty() && ready.is_empty() && paced.is_empty() {
            break;
        }
        let written = writer.written.clone();
        let next_turn = paced.peek().map(|Reverse((at, _, _))| *at);
        let (i, completion) = tokio::select! {
            Some(done) = pending.next() => done,
            // A paced task's turn came: back to the ready tasks, in its place.
            () = async { tokio::time::sleep_until(next_turn.expect("checked")).await },
                if next_turn.is_some() => {
                let now = tokio::time::Instant::now();
                while let Some(Reverse((at, order, i))) = paced.peek().copied() {
                    if at > now {
                        break;
                    }
                    paced.pop();
                    ready.push((workflow.tasks[i].priority, order, i));
                }
                continue;
            }
            // Ready tasks wait for the result writer to catch up.
            () = written.notified(), if !ready.is_empty() => continue,
            () = &mut cancel => {
                cancelled = true;
                break;
            }
        };
        let completion = match completion {
            // Its message came: back to its place among the ready tasks, to be filled in.
            Waited::Message(order, Ok(message)) => {
                arrived.insert(i, message);
                ready.push((workflow.tasks[i].priority, Reverse(order), i));
                continue;
            }
            Waited::Message(_, Err(error)) => {
                release(workflow, i, &mut left, &mut outputs);
                let f = finished(workflow, &waves, i, Status::Failed, None, Some(error));
                steps.extend(dag.on_end(&workflow.graph, i, End::Failed));
                record(&mut writer, &mut options.on_finished, &mut results, i, f);
                continue;
            }
            other => other,
        };
        in_flight -= std::mem::take(&mut charged[i]);
        let mut f = finished(workflow, &waves, i, Status::Failed, None, None);
        f.seconds = submitted_at[i].map_or(0.0, |t| t.elapsed().as_secs_f64());
        let completion = match completion {
            Waited::Task(completion) => completion,
            Waited::Decision(_) | Waited::Team(_) | Waited::Message(..) => {
                let end = match completion {
                    Waited::Decision(decided) => decision_end(decided, &mut f),
                    Waited::Team(ended) => team_end(ended, &mut f),
                    Waited::Task(_) | Waited::Message(..) => unreachable!("matched above"),
                };
                if let (End::Succeeded, Some(v)) = (end, &f.output)
                    && left.wanted(i)
                {
                    outputs.insert(workflow.tasks[i].id.clone(), v.for_readers());
                }
                record(&mut writer, &mut options.on_finished, &mut results, i, f);
                steps.extend(dag.on_end(&workflow.graph, i, end));
                continue;
            }
        };
        let end = match completion {
            Ok(c) => {
                f.attempts = c.attempts;
                f.agent = c.agent.map(|a| a.0);
                f.error = c.error.map(|e| e.to_string());
                let value = c.output.map(Output::new);
                if c.state == TaskState::Succeeded && f.error.is_none() {
                    f.status = Status::Succeeded;
                    if let Some(v) = &value
                        && left.wanted(i)
                    {
                        outputs.insert(workflow.tasks[i].id.clone(), v.for_readers());
                    }
                    f.output = value;
                    End::Succeeded
                } else {
                    End::Failed
                }
            }
            Err(e) => {
                f.error = Some(e.to_string());
                End::Failed
            }
        };
        record(&mut writer, &mut options.on_finished, &mut results, i, f);
        steps.extend(dag.on_end(&workflow.graph, i, end));
    }
    runtime.shutdown().await;
    let usage = endpoints
        .iter()
        .fold(colony_agents::http::Usage::default(), |total, e| {
            let u = e.usage();
            colony_agents::http::Usage {
                prompt_tokens: total.prompt_tokens + u.prompt_tokens,
                completion_tokens: total.completion_tokens + u.completion_tokens,
                cost_usd: total.cost_usd + u.cost_usd,
            }
        });
    conclude(
        workflow,
        &waves,
        results,
        writer,
        RunEnd {
            cancelled,
            started,
            output,
            usage,
        },
    )
    .await
}

/// How a run ended, for its summary.
pub(crate) struct RunEnd {
    pub(crate) cancelled: bool,
    pub(crate) started: Instant,
    pub(crate) output: PathBuf,
    pub(crate) usage: colony_agents::http::Usage,
}

/// The end of a run, wherever its tasks ran: tasks that never ended are written `cancelled`,
/// the writer finishes, the webhooks are told, and `summary.json` is written.
pub(crate) async fn conclude(
    workflow: &Workflow,
    waves: &[usize],
    results: Results,
    mut writer: Writer,
    ended: RunEnd,
) -> Result<Report, colony_runtime::Error> {
    let RunEnd {
        cancelled,
        started,
        output,
        usage,
    } = ended;
    let tasks: Vec<Finished> = results
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                let why = if cancelled {
                    "the run was cancelled first"
                } else {
                    "never started"
                };
                let f = finished(
                    workflow,
                    waves,
                    i,
                    Status::Cancelled,
                    None,
                    Some(why.into()),
                );
                writer.write(&f);
                f
            })
        })
        .collect();
    let hooks = writer.hooks.take();
    // Waits for the writer's thread to put the last results on disk: off the runtime's
    // workers.
    let mut unwritten = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .unwrap_or_else(|e| vec![format!("the result writer stopped: {e}")]);
    let count = |s: Status| tasks.iter().filter(|t| t.status == s).count();
    let mut report = Report {
        name: workflow.name.clone(),
        output: output.clone(),
        succeeded: count(Status::Succeeded),
        failed: count(Status::Failed),
        skipped: count(Status::Skipped),
        cancelled: count(Status::Cancelled),
        seconds: started.elapsed().as_secs_f64(),
        usage,
        tasks,
        unwritten: Vec::new(),
        webhooks: Vec::new(),
    };
    if let Some(mut hooks) = hooks {
        hooks.send(
            crate::webhooks::Kind::RunFinished,
            serde_json::json!({"summary": {
                "succeeded": report.succeeded, "failed": report.failed,
                "skipped": report.skipped, "cancelled": report.cancelled,
                "seconds": report.seconds, "usage": report.usage,
                "all-succeeded": report.succeeded == report.tasks.len() && unwritten.is_empty(),
                "output": output.display().to_string(),
            }}),
        );
        report.webhooks = hooks.finish().await;
    }
    let summary_path = output.join("summary.json");
    // Up to SUMMARY_OUTPUT_BYTES of outputs and a line per task: written as it is serialized,
    // off the runtime's threads.
    let (mut report, written) = tokio::task::spawn_blocking(move || {
        let written = write_json(&summary_path, &report)
            .map_err(|e| format!("cannot write {}: {e}", summary_path.display()));
        (report, written)
    })
    .await
    .map_err(|e| colony_runtime::Error::Options(format!("the summary's writer stopped: {e}")))?;
    if let Err(e) = written {
        tracing::error!(error = %e, "Cannot write summary.json.");
        unwritten.push(e);
    }
    report.unwritten = unwritten;
    Ok(report)
}

/// A task's key in the journal: `<workflow>/<task>#<fingerprint of its definition>`.
fn key(workflow: &Workflow, t: &crate::TaskDef) -> String {
    let needs: Vec<&str> = t
        .needs
        .iter()
        .map(|&n| workflow.tasks[n].id.as_str())
        .collect();
    let definition = json!({
        "runs-on": t.runs_on,
        "role": t.requirement.role,
        "capabilities": t.requirement.capabilities,
        "needs": needs,
        "input": t.input,
        "prompt": t.prompt,
    });
    // Only a decision or a team adds to the definition: other tasks keep the keys they had.
    let definition = match (&t.decide, &t.team) {
        (Some(vote), _) => {
            let mut d = definition;
            d["decide"] = json!({
                "voters": vote.voters,
                "options": vote.options,
                "weights": vote.pool_weights,
            });
            d.to_string()
        }
        (None, Some(team)) => {
            let mut d = definition;
            d["team"] = json!(format!("{team:?}"));
            d.to_string()
        }
        (None, None) => definition.to_string(),
    };
    // Memory adds to the definition only where it is used, likewise.
    let definition = if t.remember || t.recall.is_some() {
        let mut d: Value = serde_json::from_str(&definition).unwrap_or_default();
        d["remember"] = json!(t.remember);
        d["recall"] = json!(t.recall);
        d.to_string()
    } else {
        definition
    };
    // Messages too: a task that now waits for another topic, or publishes elsewhere, is
    // another task.
    let definition = if t.publish.is_some() || t.wait.is_some() {
        let mut d: Value = serde_json::from_str(&definition).unwrap_or_default();
        d["publish"] = json!(t.publish.as_deref());
        // Its topic, not its deadline: a longer wait is the same task.
        d["wait"] = json!(t.wait.as_ref().map(|(topic, _)| &**topic));
        d.to_string()
    } else {
        definition
    };
    let mut hash = Fnv::default();
    hash.write(definition.as_bytes());
    let hash = hash.0;
    format!("{}/{}#{hash:016x}", workflow.name, t.id)
}

/// A task being waited for: by its completion, by watching the journal, or by its decision.
type Waiting = Pin<Box<dyn Future<Output = (usize, Waited)> + Send>>;

/// How a task the run waited for ended.
enum Waited {
    /// Asked of one agent (or recovered from the journal).
    Task(Result<colony_runtime::Completion, colony_runtime::Error>),
    /// Decided by vote.
    Decision(crate::decide::Ended),
    /// Worked by a team.
    Team(crate::team::Ended),
    /// The wait of a task for its message ended, with it or why not; with the task's place
    /// among the ready ones.
    Message(usize, Result<serde_json::Value, String>),
}

/// Fills `f` with how a team ended: its last step's output, else the error.
fn team_end(ended: crate::team::Ended, f: &mut Finished) -> End {
    f.attempts = ended.teamed.as_ref().map_or(0, |t| t.tasks);
    f.agent = ended.agent.map(|a| a.0);
    f.team = ended.teamed;
    ended_with(ended.result, f)
}

/// Fills `f` with `result`: succeeded with the output, or failed with the error.
fn ended_with(result: Result<bytes::Bytes, String>, f: &mut Finished) -> End {
    match result {
        Ok(output) => {
            f.status = Status::Succeeded;
            f.output = Some(Output::new(output));
            End::Succeeded
        }
        Err(error) => {
            f.error = Some(error);
            End::Failed
        }
    }
}

/// Fills `f` with how a decision ended: the winner's output, else the error; never a
/// success without a winner that passed the task's checks.
fn decision_end(ended: crate::decide::Ended, f: &mut Finished) -> End {
    f.attempts = ended.ballots;
    f.agent = ended.agent.map(|a| a.0);
    f.decision = ended.decided;
    ended_with(ended.result, f)
}

/// Writes `value` as pretty JSON into a new file at `path`, as it is serialized.
fn write_json(path: &std::path::Path, value: &impl Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut file, value)?;
    file.flush()
}

/// A recovered task's end, as the journal holds it.
type Ended =
    tokio::sync::oneshot::Receiver<Result<colony_runtime::Completion, colony_runtime::Error>>;

/// How often the tasks still watched are read again regardless of events: a safety net for an
/// end whose event came before the subscription and whose row was committed after the first
/// read.
const REREAD: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits for the tasks that the runtime recovered from the journal (nobody holds their
/// completions): their rows are read once, then again only when the runtime says one ended
/// (or lost events for this watcher), and every [`REREAD`]. Reads run on the blocking pool,
/// never on the runtime's threads.
fn watch(
    handle: &colony_runtime::Handle,
    journal: Arc<dyn Journal>,
    ids: impl Iterator<Item = colony_core::TaskId>,
) -> HashMap<colony_core::TaskId, Ended> {
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for id in ids {
        let (tx, rx) = tokio::sync::oneshot::channel();
        senders.insert(id, tx);
        receivers.insert(id, rx);
    }
    if senders.is_empty() {
        // No subscription: the dispatcher builds no task events for nobody.
        return receivers;
    }
    let events = handle.subscribe(colony_runtime::events::Kinds::TASKS);
    colony_runtime::spawner::Spawner::spawn(
        "recovered-tasks",
        watch_rows(events, journal, senders),
    );
    receivers
}

async fn watch_rows(
    mut events: colony_runtime::events::Subscription,
    journal: Arc<dyn Journal>,
    mut waiting: HashMap<
        colony_core::TaskId,
        tokio::sync::oneshot::Sender<Result<colony_runtime::Completion, colony_runtime::Error>>,
    >,
) {
    use colony_runtime::events::Event;
    let started = Instant::now();
    // Every row once: some may have ended before the subscription began.
    let mut due: Vec<colony_core::TaskId> = waiting.keys().copied().collect();
    let mut lost = 0;
    let mut sweep = tokio::time::interval(REREAD);
    sweep.tick().await;
    loop {
        waiting.retain(|_, tx| !tx.is_closed());
        if waiting.is_empty() {
            return;
        }
        if !due.is_empty() {
            let ids = std::mem::take(&mut due);
            let reader = journal.clone();
            let rows = tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .map(|id| (id, reader.task(id)))
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(rows) = rows else {
                return;
            };
            for (id, row) in rows {
                let ended = match row {
                    Ok(Some(row)) if row.state.is_terminal() => Ok(colony_runtime::Completion {
                        id,
                        state: row.state,
                        output: row.output,
                        error: row.error,
                        attempts: row.attempt,
                        agent: row.agent,
                        latency: started.elapsed(),
                    }),
                    // Still going: its end comes as an event, or the next sweep sees it.
                    Ok(Some(_)) => continue,
                    Ok(None) => Err(colony_runtime::Error::Stopped),
                    Err(e) => Err(e.into()),
                };
                if let Some(tx) = waiting.remove(&id) {
                    let _ = tx.send(ended);
                }
            }
            continue;
        }
        tokio::select! {
            event = events.recv() => match event {
                // The runtime is gone: nothing will end any more.
                None => return,
                Some(
                    Event::TaskSucceeded { task, .. }
                    | Event::TaskGaveUp { task, .. }
                    | Event::TaskCancelled { task },
                ) if waiting.contains_key(&task) => due.push(task),
                Some(_) => {}
            },
            _ = sweep.tick() => due.extend(waiting.keys().copied()),
        }
        if events.dropped() != lost {
            lost = events.dropped();
            due = waiting.keys().copied().collect();
        }
    }
}

/// Task `i` as the runtime takes it, its input and prompt filled from its needs' outputs,
/// with its recall query filled likewise.
/// The payload's size is charged while it is filled in: past `max_payload` bytes the task
/// fails at once, with what overflowed it.
pub(crate) fn spec_for(
    workflow: &Workflow,
    i: usize,
    outputs: &HashMap<String, Output>,
    max_payload: usize,
) -> Result<(TaskSpec, Option<(String, usize)>), String> {
    let t = &workflow.tasks[i];
    let outputs = &read_outputs(t, outputs, max_payload)?;
    let mut budget = template::Budget::new(max_payload);
    let input = match &t.input {
        Some(v) => Some(
            template::render_value(v, &t.id, outputs, &mut budget)
                .map_err(|e| format!("input: {e}"))?,
        ),
        None => None,
    };
    let prompt = match &t.prompt {
        Some(p) => Some(
            template::render(p, &t.id, outputs, &mut budget).map_err(|e| format!("prompt: {e}"))?,
        ),
        None => None,
    };
    let recall = match &t.recall {
        Some((query, k)) => Some((
            template::render(query, &t.id, outputs, &mut budget)
                .map_err(|e| format!("recall query: {e}"))?,
            *k,
        )),
        None => None,
    };
    let mut payload = json!({ "task": t.id, "input": input.unwrap_or(Value::Null) });
    if let Some(prompt) = prompt {
        payload["prompt"] = Value::String(prompt);
    }
    let spec = TaskSpec {
        key: Some(key(workflow, t).into()),
        requirement: t.requirement.clone(),
        priority: t.priority,
        payload: Bytes::from(payload.to_string()),
        timeout: t.timeout,
        max_attempts: t.max_attempts,
    };
    Ok((spec, recall))
}

/// The outputs that task `t`'s placeholders read, parsed, and only those: at most
/// [`READ_OUTPUT_BYTES`] of them in all, or the error naming the output that passed it, its
/// size and the bound.
fn read_outputs(
    t: &crate::TaskDef,
    outputs: &HashMap<String, Output>,
    max_payload: usize,
) -> Result<HashMap<String, Value>, String> {
    // Each output's first placeholder, in the order they are written, so that the error
    // names the same one every run.
    let mut named: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen = HashSet::new();
    let mut note = |text: &str| {
        // A bad placeholder is for rendering to report, with where it is.
        for part in template::parse(text).unwrap_or_default() {
            if let template::Part::Output { task, path } = part
                && seen.insert(task.clone())
            {
                named.push((task, path));
            }
        }
    };
    if let Some(input) = &t.input {
        template::strings(input, &mut note);
    }
    if let Some(prompt) = &t.prompt {
        note(prompt);
    }
    if let Some((query, _)) = &t.recall {
        note(query);
    }
    let mut read = 0usize;
    let mut values = HashMap::new();
    for (task, path) in named {
        // One it does not have is for rendering to name.
        let Some(output) = outputs.get(&task) else {
            continue;
        };
        let size = output.len();
        read = read.saturating_add(size);
        let placeholder = format!(
            "`{{{{outputs.{}}}}}`",
            std::iter::once(&task)
                .chain(&path)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(".")
        );
        // A text (or a JSON string) filled in whole is at least its size less two quotes: it
        // cannot fit the payload, whose error this is.
        let text = output.fills_as_text();
        if path.is_empty() && text && size.saturating_sub(2) > max_payload {
            return Err(format!(
                "filling {placeholder} would make the task's payload larger than its limit of {max_payload} bytes: the output of `{task}` is {size} bytes"
            ));
        }
        if size > READ_OUTPUT_BYTES {
            return Err(format!(
                "{placeholder} reads the output of `{task}`, {size} bytes: placeholders may read outputs of up to {READ_OUTPUT_BYTES} bytes (the output is in {task}.json)"
            ));
        }
        if read > READ_OUTPUT_BYTES {
            return Err(format!(
                "its placeholders read {read} bytes of outputs, `{task}`'s {} bytes included: placeholders may read up to {READ_OUTPUT_BYTES} bytes of outputs per task",
                output.len()
            ));
        }
        let value = output.value();
        values.insert(task, value);
    }
    Ok(values)
}

pub(crate) fn finished(
    workflow: &Workflow,
    waves: &[usize],
    i: usize,
    status: Status,
    output: Option<Output>,
    error: Option<String>,
) -> Finished {
    Finished {
        id: workflow.tasks[i].id.clone(),
        runs_on: workflow.tasks[i].runs_on.clone(),
        status,
        wave: waves[i],
        attempts: 0,
        agent: None,
        node: None,
        seconds: 0.0,
        cost_usd: None,
        output,
        error,
        decision: None,
        cluster_decision: None,
        cluster_team: None,
        team: None,
    }
}

/// What the result writer is given.
enum Job {
    /// A task's result, into its file.
    Result(PathBuf, Box<Finished>),
    /// A line of `run.log`.
    Log(String),
}

/// Writes result files on a thread of its own, so that a slow file system (creating a file
/// can take a millisecond on a busy ext4) never holds up the graph. Each is serialized
/// straight into its file, an output as the raw text its agent gave.
pub(crate) struct Writer {
    /// The run's output folder, where result files go.
    output: PathBuf,
    /// Bytes of outputs queued and not yet in their files: part of the in-flight budget, so
    /// that a slow disk holds up new tasks rather than piling up their outputs here.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Told each time a result is written (or failed to be).
    written: Arc<tokio::sync::Notify>,
    tx: Option<std::sync::mpsc::Sender<Job>>,
    /// Gives back the writes that failed, each as a message naming the file.
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
    /// Results that could not even be given a path.
    refused: Vec<String>,
    /// The workflow's webhooks, told of each result written.
    pub(crate) hooks: Option<crate::webhooks::Webhooks>,
}

impl Writer {
    /// Starts the writer; it also appends a line per ended task to `<output>/run.log`.
    pub(crate) fn start(output: &std::path::Path) -> Result<Self, colony_runtime::Error> {
        use std::io::Write as _;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let log_path = output.join("run.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| {
                colony_runtime::Error::Options(format!("cannot open {}: {e}", log_path.display()))
            })?;
        let started = std::time::SystemTime::now();
        let _ = writeln!(
            log,
            "{} run started",
            humantime::format_rfc3339_millis(started)
        );
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = Arc::new(tokio::sync::Notify::new());
        let (left, told) = (queued.clone(), written.clone());
        let thread = colony_runtime::spawner::Spawner::spawn_thread("result-writer", move || {
            /// Tells the run when the writer stops, however it stops, so that no task waits
            /// for a backlog nobody will write.
            struct Stopped(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicUsize>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    // Nothing is waiting to be written any more: the backlog is 0 before the
                    // run hears of it (the thread itself is not finished yet at this point).
                    self.1.store(0, std::sync::atomic::Ordering::Relaxed);
                    self.0.notify_one();
                }
            }
            let _stopped = Stopped(told.clone(), left.clone());
            let mut failed = Vec::new();
            for job in rx {
                match job {
                    Job::Log(line) => {
                        if let Err(e) = log.write_all(line.as_bytes()) {
                            failed.push(format!("cannot write {}: {e}", log_path.display()));
                        }
                    }
                    Job::Result(path, f) => {
                        if let Err(e) = write_json(&path, &f) {
                            tracing::error!(error = %e, path = %path.display(), "Cannot write a task's result.");
                            failed.push(format!("cannot write {}: {e}", path.display()));
                        }
                        let size = f.held();
                        drop(f);
                        left.fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                        told.notify_one();
                    }
                }
            }
            failed
        })
        .map_err(|e| colony_runtime::Error::Options(format!("cannot start the result writer: {e}")))?;
        Ok(Self {
            output: output.to_owned(),
            queued,
            written,
            tx: Some(tx),
            thread: Some(thread),
            refused: Vec::new(),
            hooks: None,
        })
    }

    /// Queues `f`'s result file and its run-log line, and its event for the webhooks. The
    /// output is shared, not copied.
    fn write(&mut self, f: &Finished) {
        if let Some(hooks) = &mut self.hooks {
            hooks.task(f);
        }
        let path = match join_under(&self.output, format!("{}.json", f.id)) {
            Ok(path) => path,
            Err(e) => {
                self.refused.push(format!(
                    "the result of task `{}` was not written: {e}",
                    f.id
                ));
                return;
            }
        };
        let line = format!(
            "{} {} {:?} attempts={} seconds={:.3}{}\n",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            f.id,
            f.status,
            f.attempts,
            f.seconds,
            f.error
                .as_deref()
                .map(|e| format!(" error={e:?}"))
                .unwrap_or_default()
        );
        if let Some(tx) = &self.tx {
            let size = f.held();
            self.queued
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            if tx.send(Job::Result(path, Box::new(f.clone()))).is_err() {
                // The writer is gone: nothing will take it off.
                self.queued
                    .fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = tx.send(Job::Log(line));
        }
    }

    /// Bytes of outputs queued and not yet in their files.
    fn backlog(&self) -> usize {
        match &self.thread {
            Some(thread) if !thread.is_finished() => {
                self.queued.load(std::sync::atomic::Ordering::Relaxed)
            }
            // Stopped: what it held is gone, and nothing more will be written.
            _ => 0,
        }
    }

    /// Waits until every result is on disk: the writes that failed.
    fn finish(mut self) -> Vec<String> {
        drop(self.tx.take());
        let mut failed = std::mem::take(&mut self.refused);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(errors) => failed.extend(errors),
                Err(_) => failed.push("the result writer stopped: results may be missing".into()),
            }
        }
        failed
    }
}

/// Outputs larger than this are kept only in their own result file: in the summary (and in
/// memory until the run ends) the output is a note saying where it is.
pub const SUMMARY_RESULT_BYTES: usize = 64 << 10;

/// Bytes of outputs the summary keeps in all (and the run holds until it ends): once they are
/// used up, every further output is a note saying where it is, so that 4,000 outputs of 60 KB
/// make neither a 240 MB summary nor a run that holds them all.
pub(crate) const SUMMARY_OUTPUT_BYTES: usize = 16 << 20;

/// Every task's result for the summary, as tasks end.
pub(crate) struct Results {
    pub(crate) tasks: Vec<Option<Finished>>,
    /// Bytes of outputs kept in `tasks`, at most [`SUMMARY_OUTPUT_BYTES`].
    pub(crate) kept: usize,
}

/// Hands a task's result to the writer, tells the progress callback, and keeps the result for
/// the summary, an output past [`SUMMARY_RESULT_BYTES`] or [`SUMMARY_OUTPUT_BYTES`] replaced
/// by a note.
pub(crate) fn record(
    writer: &mut Writer,
    on_finished: &mut Option<Progress>,
    results: &mut Results,
    i: usize,
    mut f: Finished,
) {
    // Read while the whole output is here: the summary may keep a note in its place.
    f.cost_usd = f.output.as_ref().and_then(Output::cost_usd);
    writer.write(&f);
    if let Some(on) = on_finished {
        on(&f);
    }
    if let Some(output) = &f.output {
        let size = output.len();
        if size > SUMMARY_RESULT_BYTES || results.kept.saturating_add(size) > SUMMARY_OUTPUT_BYTES {
            f.output = Some(Output::text(format!(
                "({size} bytes: the output is in {}.json)",
                f.id
            )));
        } else {
            results.kept += size;
        }
    }
    // A decision's ballots, like an output, are kept in the summary within the same bounds;
    // past them only in the task's own file (its error or output says how it ended).
    if let Some(decided) = &f.decision {
        let size = crate::decide::size(decided);
        if size > SUMMARY_RESULT_BYTES || results.kept.saturating_add(size) > SUMMARY_OUTPUT_BYTES {
            f.decision = None;
        } else {
            results.kept += size;
        }
    }
    if let Some(teamed) = &f.team {
        let size = crate::team::size(teamed);
        if size > SUMMARY_RESULT_BYTES || results.kept.saturating_add(size) > SUMMARY_OUTPUT_BYTES {
            f.team = None;
        } else {
            results.kept += size;
        }
    }
    results.tasks[i] = Some(f);
}

/// Which outputs are still to be read, and by whom. Only a dependent whose input or prompt
/// has a placeholder of a need's output holds that output: a task that merely waits for
/// another (`needs` for order) does not keep its output in memory, so a task that needs a
/// thousand others holds none of their outputs unless it reads them.
pub(crate) struct Readers {
    /// Per task, the tasks not yet started that read its output.
    left: Vec<usize>,
    /// Per task, the needs whose outputs it reads.
    reads: Vec<Vec<usize>>,
}

impl Readers {
    pub(crate) fn new(workflow: &Workflow) -> Self {
        let mut left = vec![0; workflow.tasks.len()];
        let reads: Vec<Vec<usize>> = workflow
            .tasks
            .iter()
            .map(|t| {
                let mut named = HashSet::new();
                let mut note = |text: &str| {
                    for part in template::parse(text).unwrap_or_default() {
                        if let template::Part::Output { task, .. } = part {
                            named.insert(task);
                        }
                    }
                };
                if let Some(input) = &t.input {
                    template::strings(input, &mut note);
                }
                if let Some(prompt) = &t.prompt {
                    note(prompt);
                }
                if let Some((query, _)) = &t.recall {
                    note(query);
                }
                t.needs
                    .iter()
                    .copied()
                    .filter(|&n| named.contains(&workflow.tasks[n].id))
                    .collect()
            })
            .collect();
        for needs in &reads {
            for &n in needs {
                left[n] += 1;
            }
        }
        Self { left, reads }
    }

    /// Whether task `i`'s output is still to be read by a task that has not started.
    pub(crate) fn wanted(&self, i: usize) -> bool {
        self.left[i] > 0
    }
}

/// Resuming: the tasks that succeeded in an earlier run (their `latest` rows) but whose
/// outputs a prune dropped, and that a task to run now reads (by `reads`, per task the needs
/// whose outputs it reads): they run again rather than hand their readers nothing. A task
/// runs now unless it succeeded with its output kept or is still unfinished (recovery
/// finishes it); one run again reads its own needs' outputs too.
fn pruned_and_read(latest: &HashMap<usize, &TaskRow>, reads: &[Vec<usize>]) -> HashSet<usize> {
    let pruned = |i: usize| {
        latest
            .get(&i)
            .is_some_and(|r| r.state == TaskState::Succeeded && r.output.is_none())
    };
    let mut again = HashSet::new();
    loop {
        let mut more = false;
        for (n, needs) in reads.iter().enumerate() {
            let runs = match latest.get(&n) {
                Some(r) if r.state == TaskState::Succeeded => again.contains(&n),
                Some(r) => !matches!(r.state, TaskState::Queued | TaskState::Running),
                None => true,
            };
            if runs {
                for &i in needs {
                    if pruned(i) {
                        more |= again.insert(i);
                    }
                }
            }
        }
        if !more {
            return again;
        }
    }
}

/// Task `i` started or was skipped: the outputs it reads are read by one task less.
pub(crate) fn release(
    workflow: &Workflow,
    i: usize,
    left: &mut Readers,
    outputs: &mut HashMap<String, Output>,
) {
    for &n in &left.reads[i] {
        left.left[n] = left.left[n].saturating_sub(1);
        if left.left[n] == 0 {
            outputs.remove(&workflow.tasks[n].id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_that_reads_back_is_kept_as_json() {
        for good in [r#"{"a": [1, 2.5, "x"]}"#, "\"\\u00e9\"", "null", "-0"] {
            assert!(Output::new(Bytes::from(good)).is_json(), "{good}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            "\"\\ud800\"",
            "1e400",
            deep.as_str(),
            "{\"a\":1} x",
            "plain",
        ] {
            let output = Output::new(Bytes::from(bad.to_owned()));
            assert!(!output.is_json(), "{bad}");
            // Written as a string, which reads back.
            let written = serde_json::to_string(&output).unwrap();
            serde_json::from_str::<Value>(&written).unwrap();
        }
    }

    #[test]
    fn only_readers_hold_an_output_and_past_the_read_limit_only_its_size() {
        let yaml = "name: w\nagents: [{name: s, kind: sim}]\ntasks:\n  - {id: a}\n  - {id: b}\n  - {id: c, needs: [a, b], prompt: \"{{outputs.a}}\"}\n";
        let workflow = crate::parse(yaml, "w.yaml", std::path::Path::new(".")).unwrap();
        let readers = Readers::new(&workflow);
        // `c` reads `a` and merely waits for `b`.
        assert!(readers.wanted(0));
        assert!(!readers.wanted(1));
        assert_eq!(readers.reads[2], vec![0]);
        let big = Output::new(Bytes::from(vec![b'x'; READ_OUTPUT_BYTES + 1]));
        let kept = big.for_readers();
        assert_eq!(kept.len(), READ_OUTPUT_BYTES + 1);
        assert!(kept.as_bytes().is_empty() && kept.fills_as_text());
    }
}
