//! The `command` backend: one process per attempt.
//!
//! The program runs directly (never through a shell) with arguments in which `{{name}}`
//! placeholders are filled from the attempt: `{{task}}`, `{{attempt}}`, `{{agent}}`, and
//! `{{input.KEY}}` from the payload's `input` object (or the payload itself when it has none).
//! The payload goes to the program's stdin; its stdout is the output, kept as JSON when it
//! parses and wrapped as a JSON string when it does not; its stderr goes to a log file per
//! attempt, and its last lines into the error of a failed attempt. The environment is cleared
//! but for an allowlist and the variables given. The process leads a process group of its own,
//! and the whole group is killed when the attempt ends early (timeout, kill, shutdown): nothing
//! it started outlives it.
//!
//! Payloads come from outside (a task posted over HTTP, an upstream model's output), so what
//! they fill in is checked, and a payload that fails a check fails its attempt fatally:
//! - the task's name (the payload's `task`, else the runtime's numeric id) names its log file
//!   and worktree, so it must be a [`Name`]; every joined path stays under its root
//!   ([`join_under`]);
//! - a `workdir` template's root is its text before the first placeholder (up to the last
//!   `/` there): the filled rest must stay under it (no climbing `..`, no absolute value);
//! - an argument that starts with `-` only because of a filled value would be read by the
//!   program as an option (`wc --files0-from=...`): refused unless the pool allows it
//!   ([`CommandOptions::allow_option_values`]).
//!
//! Exit codes in `ok_codes` (0 by default) succeed; 126 and 127 (cannot execute, not found)
//! and a program that cannot be spawned fail the task at once; any other code is retryable.

use crate::{Agent, Error, Execution, Outcome, Task, http::Usage, presets};
use bytes::Bytes;
use colony_core::name::{self, Name, join_under};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest stdout kept; a larger one fails the attempt.
pub const MAX_STDOUT: usize = 16 << 20;
/// Most stderr kept in an attempt's log; the rest is dropped.
pub const MAX_STDERR: usize = 16 << 20;

/// Settings of the `command` backend.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandOptions {
    pub program: String,
    pub args: Vec<String>,
    /// Names of variables passed through from colony's own environment.
    pub env_allow: Vec<String>,
    /// Variables set for the program.
    pub env: Vec<(String, String)>,
    /// Working directory; a `{{task}}` in it makes one per task. Created if missing. Its text
    /// before the first placeholder (up to the last `/` there) is a root the filled-in rest
    /// may not leave.
    pub workdir: Option<String>,
    /// Folder of the stderr logs, one file per attempt: `<task>.<attempt>.stderr`.
    pub logs: Option<PathBuf>,
    pub ok_codes: Vec<i32>,
    /// Names of variables passed through like `env_allow`, whose values are then replaced by
    /// `***` in the output, the stderr log and error messages.
    pub secrets: Vec<String>,
    pub limits: Limits,
    /// Run each attempt in a fresh git worktree of this repository (detached at its `HEAD`),
    /// made at `<worktrees>/<task>`; the worktree is kept for inspection.
    pub worktree: Option<Worktree>,
    /// Let a filled-in placeholder start an argument with `-`. Off by default: a payload's
    /// value would otherwise become an option of the program (`--files0-from=...`, `-exec`).
    /// Refusing is chosen over inserting `--` because `--` ends options only for programs
    /// that parse options that way, and only where colony cannot know they end (`sh -c`,
    /// `find`, `git` take positional words before options).
    pub allow_option_values: bool,
    /// A coding-agent CLI's preset: its arguments come first, the prompt goes to stdin, and
    /// its output is read for its own success flag, its answer, tokens and cost.
    pub cli: Option<presets::CliSettings>,
    /// Name each task by its payload's `task` field (a workflow's task id) rather than by its
    /// numeric id. Only for agents whose tasks come from a workflow file: where anyone with a
    /// token posts tasks (`colony serve --pools`), a payload could name another task and take
    /// its log and worktree, so there every task goes by its numeric id.
    pub names_from_payload: bool,
}

/// Resource limits of each process, applied through util-linux's `prlimit` (so that no code
/// runs between fork and exec).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU seconds.
    pub cpu_seconds: Option<u64>,
    /// Address space, in bytes.
    pub memory_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// Processes of the user, this one included.
    pub processes: Option<u64>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn prlimit_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut add = |flag: &str, v: Option<u64>| {
            if let Some(v) = v {
                args.push(format!("--{flag}={v}"));
            }
        };
        add("cpu", self.cpu_seconds);
        add("as", self.memory_bytes);
        add("nofile", self.open_files);
        add("nproc", self.processes);
        args
    }
}

/// Where attempts' git worktrees come from and go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worktree {
    /// A folder inside the repository to branch worktrees from.
    pub repository: PathBuf,
    /// Folder of the worktrees.
    pub root: PathBuf,
}

impl CommandOptions {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env_allow: vec!["PATH".into(), "HOME".into(), "LANG".into(), "TMPDIR".into()],
            env: Vec::new(),
            workdir: None,
            logs: None,
            ok_codes: vec![0],
            secrets: Vec::new(),
            limits: Limits::default(),
            worktree: None,
            allow_option_values: false,
            cli: None,
            names_from_payload: true,
        }
    }

    /// Settings for `cli`'s preset: its program unless one is set, and its variables passed
    /// through (its API keys as secrets).
    pub fn with_preset(mut self, cli: presets::CliSettings) -> Self {
        if self.program.is_empty() {
            self.program = cli.preset.program().to_owned();
        }
        for name in cli.preset.env() {
            if !self.env_allow.iter().any(|n| n == name) {
                self.env_allow.push((*name).to_owned());
            }
        }
        for name in cli.preset.secrets() {
            if !self.secrets.iter().any(|n| n == name) {
                self.secrets.push((*name).to_owned());
            }
        }
        self.cli = Some(cli);
        self
    }
}

/// Runs one process per attempt (see the module documentation).
#[derive(Debug)]
pub struct Command {
    options: Arc<CommandOptions>,
    account: Arc<Mutex<Usage>>,
}

impl Command {
    pub fn new(mut options: CommandOptions) -> Self {
        options.program = resolve(&options.program);
        Self {
            options: Arc::new(options),
            account: Arc::default(),
        }
    }

    /// Tokens and dollars the pool's CLI calls have used, as their output says (zero for a
    /// program without a preset).
    pub fn usage(&self) -> Usage {
        *lock(&self.account)
    }
}

impl Agent for Command {
    fn handle(&self, task: Task) -> Execution {
        let (options, account) = (self.options.clone(), self.account.clone());
        Execution::Running(Box::pin(
            async move { run(&options, &task, &account).await },
        ))
    }
}

/// A program's full path: a bare name looked up on `PATH` (once, when a pool is built), a
/// path as it is. With a cleared environment the standard library would spawn a bare name with
/// `fork` (copying colony's page tables) rather than `posix_spawn`.
pub fn resolve(program: &str) -> String {
    if program.contains('/') {
        return program.to_owned();
    }
    on_path(program).unwrap_or_else(|| program.to_owned())
}

/// Where `name` is found on `PATH`, if anywhere.
pub fn on_path(name: &str) -> Option<String> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

/// Why an attempt's payload cannot make its command. Each fails the attempt fatally: another
/// attempt of the same payload would be refused the same way.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the payload's `task` is not a usable task name: {0}")]
    Name(#[source] name::Error),
    #[error("the payload's `task` is {0}, not a string: it must be a task name")]
    NameNotText(&'static str),
    #[error("{what}: {message}")]
    Template { what: String, message: String },
    #[error(
        "argument {index} (`{template}`) would be `{value}`, which starts with `-`: the program \
         would take a value from the payload for an option. If it should take such values, set \
         `allow-option-values: true` in the pool's `command:` section"
    )]
    OptionValue {
        /// 1-based, as the arguments are listed in the file.
        index: usize,
        template: String,
        value: String,
    },
    #[error("workdir `{template}`: {source}")]
    Workdir {
        template: String,
        #[source]
        source: name::Error,
    },
}

/// What an attempt's placeholders stand for, read from its payload once.
#[derive(Debug)]
pub struct Placeholders<'a> {
    task: &'a Task,
    /// The workflow's name for the task, else the runtime's id.
    name: Name,
    /// The payload's `input` object, else the payload itself.
    input: serde_json::Value,
    /// The payload's `prompt`, when it is text.
    prompt: Option<String>,
}

impl<'a> Placeholders<'a> {
    /// Reads `task`'s payload. With `names_from_payload`, its `task` field, when present,
    /// must be a valid [`Name`] (it reaches file paths) and names the task; otherwise, or
    /// without one, the task is named by its numeric id.
    pub fn new(task: &'a Task, names_from_payload: bool) -> Result<Self, Refused> {
        let mut payload: serde_json::Value =
            serde_json::from_slice(&task.payload).unwrap_or(serde_json::Value::Null);
        let name = match payload.get("task") {
            _ if !names_from_payload => Name::of_id(task.id.0),
            None | Some(serde_json::Value::Null) => Name::of_id(task.id.0),
            Some(serde_json::Value::String(s)) => Name::parse(s).map_err(Refused::Name)?,
            Some(other) => return Err(Refused::NameNotText(json_kind(other))),
        };
        let prompt = match payload.get("prompt") {
            Some(serde_json::Value::String(p)) => Some(p.clone()),
            _ => None,
        };
        let input = match payload.get_mut("input") {
            Some(input) => input.take(),
            None => payload,
        };
        Ok(Self {
            task,
            name,
            input,
            prompt,
        })
    }

    /// What a coding agent is asked: the payload's `prompt`, else its input's `prompt`
    /// field, else the input itself (as it is when text, else as JSON); `None` without any.
    pub fn prompt(&self) -> Option<String> {
        if let Some(p) = &self.prompt {
            return Some(p.clone());
        }
        match &self.input {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            input => match input.get("prompt") {
                Some(serde_json::Value::String(p)) => Some(p.clone()),
                _ => Some(input.to_string()),
            },
        }
    }

    /// The task's name: the workflow's, else the runtime's id.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Fills `{{...}}` in `template`; names the first unknown placeholder.
    pub fn fill(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` without `}}}}` in {template:?}"))?;
            let key = after[..close].trim();
            match key {
                "task" => out.push_str(self.name.as_str()),
                "attempt" => out.push_str(&self.task.attempt.to_string()),
                "agent" => out.push_str(&self.task.agent.0.to_string()),
                _ => match key.strip_prefix("input.") {
                    Some(field) => match self.input.get(field) {
                        Some(serde_json::Value::String(s)) => out.push_str(s),
                        Some(v) => out.push_str(&v.to_string()),
                        None => return Err(format!("the input has no field `{field}`")),
                    },
                    None => return Err(format!("unknown placeholder `{{{{{key}}}}}`")),
                },
            }
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The program's arguments, filled. An argument whose template does not start with `-`
    /// but whose filled text does got its `-` from a value: refused unless `allow_options`.
    pub fn args(&self, templates: &[String], allow_options: bool) -> Result<Vec<String>, Refused> {
        templates
            .iter()
            .enumerate()
            .map(|(i, template)| {
                let value = self.fill(template).map_err(|message| Refused::Template {
                    what: format!("argument {}", i + 1),
                    message,
                })?;
                if !allow_options && takes_option_from_payload(template, &value) {
                    return Err(Refused::OptionValue {
                        index: i + 1,
                        template: template.clone(),
                        value: value.chars().take(60).collect(),
                    });
                }
                Ok(value)
            })
            .collect()
    }

    /// The working directory `template` names: its text before the first placeholder, up to
    /// the last `/` there, is the root (the user's own setting); the rest, filled, is joined
    /// under it and may not leave it.
    pub fn workdir(&self, template: &str) -> Result<PathBuf, Refused> {
        let Some(open) = template.find("{{") else {
            return Ok(PathBuf::from(template));
        };
        let (root, rest) = match template[..open].rfind('/') {
            Some(slash) => (&template[..=slash], &template[slash + 1..]),
            None => (".", template),
        };
        let filled = self.fill(rest).map_err(|message| Refused::Template {
            what: "workdir".into(),
            message,
        })?;
        join_under(Path::new(root), &filled).map_err(|source| Refused::Workdir {
            template: template.to_owned(),
            source,
        })
    }
}

/// Whether `value`, filled from `template`, lets the payload pick an option of the program:
/// the template's literal start (before its first placeholder) is nothing but dashes, and
/// either it is empty and the value starts with `-` (`{{input.x}}` = `--files0-from=...`),
/// or it is not (`-{{input.x}}`, `--{{input.k}}=...`: the payload names the option).
/// Options the file writes itself (`-n`, `--n={{input.n}}`, `x{{input.n}}`) pass.
fn takes_option_from_payload(template: &str, value: &str) -> bool {
    let Some(open) = template.find("{{") else {
        return false;
    };
    let prefix = &template[..open];
    prefix.bytes().all(|b| b == b'-') && (!prefix.is_empty() || value.starts_with('-'))
}

/// What kind of JSON value `v` is, for messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

async fn run(options: &CommandOptions, task: &Task, account: &Mutex<Usage>) -> Outcome {
    let fatal = |m: String| Err(Error::fatal(m));
    let refused = |e: Refused| Err(Error::fatal(e.to_string()));
    let placeholders = match Placeholders::new(task, options.names_from_payload) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let mut args = match placeholders.args(&options.args, options.allow_option_values) {
        Ok(args) => args,
        Err(e) => return refused(e),
    };
    // A preset's CLI takes the prompt on stdin; any other program the payload.
    let stdin = match &options.cli {
        None => task.payload.clone(),
        Some(cli) => {
            within_budget(options, cli, account)?;
            let Some(prompt) = placeholders.prompt() else {
                return fatal(format!(
                    "a `{}` pool's task needs a prompt: a `prompt`, or an `input` (its \
                     `prompt` field, else the input itself)",
                    cli.preset
                ));
            };
            let mut all = cli.preset.args(cli);
            all.append(&mut args);
            all.extend(cli.preset.trailing_args().iter().map(|a| (*a).to_owned()));
            args = all;
            Bytes::from(prompt)
        }
    };
    let mut dir = None;
    if let Some(worktree) = &options.worktree {
        match fresh_worktree(worktree, placeholders.name()).await {
            Ok(worktree) => dir = Some(worktree),
            Err(e) => return Err(Error::retryable(format!("git worktree: {e}"))),
        }
    }
    if let Some(template) = &options.workdir {
        let workdir = match placeholders.workdir(template) {
            Ok(dir) => dir,
            Err(e) => return refused(e),
        };
        if let Err(e) = tokio::fs::create_dir_all(&workdir).await {
            return fatal(format!(
                "cannot create working directory {}: {e}",
                workdir.display()
            ));
        }
        dir = Some(workdir);
    }
    let log = match &options.logs {
        Some(logs) => {
            match join_under(
                logs,
                format!("{}.{}.stderr", placeholders.name(), task.attempt),
            ) {
                Ok(path) => Some(path),
                Err(e) => return fatal(format!("stderr log: {e}")),
            }
        }
        None => None,
    };
    let call = Call {
        options,
        args: &args,
        stdin,
        dir: dir.as_deref(),
        log: log.as_deref(),
        task,
    };
    let Some(cli) = &options.cli else {
        let ran = call.run(false).await?;
        return plain_outcome(options, ran);
    };
    let mut backoff = cli.backoff;
    for retry in 0.. {
        if retry > 0 {
            within_budget(options, cli, account)?;
        }
        let ran = call.run(retry > 0).await?;
        match read_cli(options, cli, ran, account, dir.as_deref()) {
            Read::Done(outcome) => return outcome,
            Read::RateLimited { message, after } => {
                let program = &options.program;
                let wait = after.unwrap_or(backoff);
                if wait > presets::MAX_RATE_LIMIT_WAIT {
                    return Err(Error::retryable(format!(
                        "`{program}` was rate-limited and asks to wait {}s, longer than the \
                         {}s an attempt waits: {message}",
                        wait.as_secs(),
                        presets::MAX_RATE_LIMIT_WAIT.as_secs()
                    )));
                }
                if retry >= cli.max_retries {
                    return Err(Error::retryable(format!(
                        "`{program}` was rate-limited {} times: {message}",
                        retry + 1
                    )));
                }
                tracing::debug!(%program, wait = ?wait, "Rate-limited; calling again after the wait.");
                // Waiting is the agent alive.
                crate::heartbeat::beating(&task.heartbeat, tokio::time::sleep(wait)).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    unreachable!("the loop returns")
}

/// Refuses a call once the pool's calls have cost its budget.
fn within_budget(
    options: &CommandOptions,
    cli: &presets::CliSettings,
    account: &Mutex<Usage>,
) -> Result<(), Error> {
    if let Some(budget) = cli.budget_usd {
        let spent = lock(account).cost_usd;
        if spent >= budget {
            return Err(Error::fatal(format!(
                "budget spent: ${spent:.4} of ${budget:.4}; `{}` is not started again",
                options.program
            )));
        }
    }
    Ok(())
}

/// One call of the program, as an attempt makes it (more than one after rate limits).
struct Call<'a> {
    options: &'a CommandOptions,
    args: &'a [String],
    stdin: Bytes,
    dir: Option<&'a Path>,
    log: Option<&'a Path>,
    task: &'a Task,
}

/// What a call left: its exit, its stdout and the end of its stderr (secrets hidden), its
/// stderr's quote, and the secrets, to hide again in what is read out of them (a CLI may
/// write part of a key escaped in JSON).
struct Ran {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr_tail: Vec<u8>,
    quote: String,
    secrets: Secrets,
}

impl Call<'_> {
    /// Runs the program to its end; `append` adds its stderr to the attempt's log rather
    /// than replacing it (a call after a rate limit).
    async fn run(&self, append: bool) -> Result<Ran, Error> {
        let options = self.options;
        let fatal = |m: String| Err(Error::fatal(m));
        let mut command = if options.limits.is_empty() {
            let mut c = tokio::process::Command::new(&options.program);
            c.args(self.args);
            c
        } else {
            let mut c = tokio::process::Command::new(PRLIMIT);
            c.args(options.limits.prlimit_args())
                .arg("--")
                .arg(&options.program)
                .args(self.args);
            c
        };
        // Stderr is always read: its end goes into the error of a failed attempt, and it is
        // written to a log only when there is something in it (creating a file per attempt
        // costs more than a short process).
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        clean_env(command.as_std_mut(), &options.env_allow, &options.env);
        let mut secrets = Secrets::default();
        for name in &options.secrets {
            if let Ok(value) = std::env::var(name) {
                command.env(name, &value);
                secrets.add(value);
            }
        }
        if let Some(dir) = self.dir {
            command.current_dir(dir);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return fatal(format!("cannot run `{}`: {e}", options.program)),
        };
        let group = Group::new(child.id());
        let mut stdout = Vec::new();
        let mut stderr = Stderr::default();
        let (stdin, out, err) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let payload = self.stdin.clone();
        let tail_keep = 4 * ERROR_TAIL_BYTES + secrets.longest();
        // Stdin is written while stdout and stderr are read: a program that answers before
        // it has read all its input must not block on a full pipe.
        let io = async {
            let write = async {
                if let Some(mut stdin) = stdin {
                    // A program that does not read its stdin closes the pipe: not an error.
                    let _ = stdin.write_all(&payload).await;
                }
            };
            let read_out = async {
                match out {
                    Some(out) => read_capped(out, MAX_STDOUT + 1, &mut stdout).await,
                    None => Ok(()),
                }
            };
            let log_cap = if self.log.is_some() { MAX_STDERR } else { 0 };
            let read_err = async {
                if let Some(err) = err {
                    // A broken stderr pipe loses only the log and the error's quote.
                    let _ = stderr.read(err, log_cap, tail_keep).await;
                }
            };
            tokio::join!(write, read_out, read_err).1
        };
        // The program's exit ends the call, not the pipes' end: a background child it left
        // holding them gets a moment to let go, then goes with the process group.
        let (status, io) = crate::heartbeat::beating(&self.task.heartbeat, async {
            tokio::pin!(io);
            tokio::select! {
                io_result = &mut io => (child.wait().await, io_result),
                status = child.wait() => {
                    let io_result = tokio::time::timeout(LINGER, &mut io)
                        .await
                        .unwrap_or(Ok(()));
                    (status, io_result)
                }
            }
        })
        .await;
        if let Err(e) = io {
            return Err(Error::retryable(format!("reading stdout: {e}")));
        }
        if let Some(path) = self.log
            && !stderr.log.is_empty()
        {
            let text = secrets.hide(std::mem::take(&mut stderr.log), false, stderr.log_cut);
            if let Err(e) = write_log(path, &text, append).await {
                tracing::warn!(error = %e, path = %path.display(), "Cannot write a stderr log.");
            }
        }
        let status = match status {
            Ok(status) => status,
            Err(e) => return Err(Error::retryable(format!("waiting for the process: {e}"))),
        };
        // The leader is gone; whatever it left running in its group goes too.
        drop(group);
        if stdout.len() > MAX_STDOUT {
            return fatal(format!("stdout exceeds {MAX_STDOUT} bytes"));
        }
        if let Some(code @ (126 | 127)) = status.code() {
            let quote = stderr.quote(&secrets);
            return fatal(format!(
                "`{}` exited with {code}: cannot execute{quote}",
                options.program
            ));
        }
        let quote = stderr.quote(&secrets);
        Ok(Ran {
            status,
            stdout: secrets.hide(stdout, false, false),
            stderr_tail: secrets.hide(std::mem::take(&mut stderr.tail), stderr.tail_cut, false),
            quote,
            secrets,
        })
    }
}

async fn write_log(path: &Path, text: &[u8], append: bool) -> std::io::Result<()> {
    if !append {
        return tokio::fs::write(path, text).await;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    file.write_all(text).await
}

/// A plain program's outcome: its exit code says.
fn plain_outcome(options: &CommandOptions, ran: Ran) -> Outcome {
    let program = &options.program;
    let quote = ran.quote;
    match ran.status.code() {
        Some(code) if options.ok_codes.contains(&code) => Ok(as_json(ran.stdout)),
        Some(code) => Err(Error::retryable(format!(
            "`{program}` exited with {code}{quote}"
        ))),
        None => Err(Error::retryable(format!(
            "`{program}` was killed by a signal{quote}"
        ))),
    }
}

/// What a preset's call came to.
enum Read {
    Done(Outcome),
    RateLimited {
        message: String,
        after: Option<std::time::Duration>,
    },
}

/// A preset CLI's call read: success needs its own success flag and exit 0 (see
/// [`presets`]); what it used is counted whatever the outcome.
fn read_cli(
    options: &CommandOptions,
    cli: &presets::CliSettings,
    ran: Ran,
    account: &Mutex<Usage>,
    dir: Option<&Path>,
) -> Read {
    let program = &options.program;
    let reading = cli
        .preset
        .read(&ran.stdout, &ran.stderr_tail, std::time::SystemTime::now());
    let cost = cli.cost(&reading.usage);
    {
        let mut a = lock(account);
        a.prompt_tokens = a.prompt_tokens.saturating_add(reading.usage.input);
        a.completion_tokens = a.completion_tokens.saturating_add(reading.usage.output);
        a.cost_usd += cost;
    }
    let secrets = &ran.secrets;
    let hide = |text: String| -> String {
        String::from_utf8_lossy(&secrets.hide(text.into_bytes(), false, false)).into_owned()
    };
    let quote = ran.quote;
    let exit = match ran.status.code() {
        Some(code) => format!("exited with {code}"),
        None => "was killed by a signal".to_owned(),
    };
    let outcome = match (ran.status.code(), reading.outcome) {
        (Some(0), Ok(answer)) => {
            let mut out = serde_json::json!({
                "content": answer.text,
                "preset": cli.preset.name(),
                "usage": {
                    "prompt_tokens": reading.usage.input,
                    "completion_tokens": reading.usage.output,
                },
                "cost_usd": cost,
            });
            if let Some(model) = answer.model.or_else(|| cli.model.clone()) {
                out["model"] = model.into();
            }
            if let Some(session) = answer.session {
                out["session"] = session.into();
            }
            if let Some(turns) = answer.turns {
                out["turns"] = turns.into();
            }
            // Where it worked (its worktree): for a later step to test or merge.
            if let Some(dir) = dir {
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
                out["workdir"] = dir.to_string_lossy().into_owned().into();
            }
            Ok(Bytes::from(secrets.hide(
                out.to_string().into_bytes(),
                false,
                false,
            )))
        }
        (_, Ok(_)) => Err(Error::retryable(format!(
            "`{program}` {exit} though its output reports success{quote}"
        ))),
        (_, Err(presets::Failure::RateLimited { message, after })) => {
            return Read::RateLimited {
                message: hide(message),
                after,
            };
        }
        (_, Err(failure @ presets::Failure::Reported(_))) => {
            Err(Error::retryable(hide(format!("`{program}` {failure}"))))
        }
        (Some(0), Err(failure @ presets::Failure::Unreadable(_))) => Err(Error::retryable(hide(
            format!("`{program}` exited with 0 but {failure}{quote}"),
        ))),
        (_, Err(presets::Failure::Unreadable(_))) => {
            Err(Error::retryable(format!("`{program}` {exit}{quote}")))
        }
    };
    Read::Done(outcome)
}

/// How long `<program> --version` may take.
pub const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `<program> --version` prints (stdout, else stderr; at most 4 KiB), or why it printed
/// nothing, run as `options` would run the program: its environment cleared but for what the
/// pool passes. Blocking, for the checks of a file (never on the runtime's threads). Whatever
/// it leaves running in its process group is killed, so that no pipe is held open.
pub fn version_of(options: &CommandOptions) -> Result<String, String> {
    use std::{io::Read, os::unix::process::CommandExt};
    let mut command = std::process::Command::new(&options.program);
    command
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let passed: Vec<String> = options
        .env_allow
        .iter()
        .chain(&options.secrets)
        .cloned()
        .collect();
    clean_env(&mut command, &passed, &options.env);
    let mut child = command.spawn().map_err(|e| format!("cannot run: {e}"))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => break None,
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    };
    // The group goes, the leader too if it still runs: every writer of the pipes is gone.
    drop(Group::new(Some(child.id())));
    let _ = child.kill();
    let _ = child.wait();
    let Some(status) = status else {
        return Err(format!(
            "did not answer within {}s",
            VERSION_TIMEOUT.as_secs()
        ));
    };
    let read = |pipe: Option<&mut dyn Read>| {
        let mut bytes = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(4096).read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let out = read(child.stdout.as_mut().map(|p| p as &mut dyn Read));
    let err = read(child.stderr.as_mut().map(|p| p as &mut dyn Read));
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(if out.trim().is_empty() { err } else { out })
}

/// The tokens and dollars a pool's calls have used.
fn lock(account: &Mutex<Usage>) -> std::sync::MutexGuard<'_, Usage> {
    account.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lines of stderr quoted in a failed attempt's error, at most...
pub const ERROR_TAIL_LINES: usize = 5;
/// ...and bytes, so that an error stays one readable line in a table.
pub const ERROR_TAIL_BYTES: usize = 1024;

/// What was read of an attempt's stderr: the start, for its log, and the end, for its error.
#[derive(Debug, Default)]
struct Stderr {
    /// The first bytes, up to the log's cap.
    log: Vec<u8>,
    /// Whether more came than `log` holds.
    log_cut: bool,
    /// The last bytes.
    tail: Vec<u8>,
    /// Whether bytes came before those `tail` holds.
    tail_cut: bool,
}

impl Stderr {
    /// Reads `from` to its end, keeping up to `log_cap` bytes of its start and `tail_keep`
    /// of its end: memory stays bounded whatever the program writes.
    async fn read(
        &mut self,
        mut from: impl tokio::io::AsyncRead + Unpin,
        log_cap: usize,
        tail_keep: usize,
    ) -> std::io::Result<()> {
        let mut chunk = vec![0; 8192];
        loop {
            let n = from.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            let data = &chunk[..n];
            let room = log_cap - self.log.len();
            self.log.extend_from_slice(&data[..n.min(room)]);
            self.log_cut |= n > room;
            self.tail.extend_from_slice(data);
            // Trimmed once it is twice the size kept: each byte is moved at most once.
            if self.tail.len() > 2 * tail_keep {
                self.tail.drain(..self.tail.len() - tail_keep);
                self.tail_cut = true;
            }
        }
        if self.tail.len() > tail_keep {
            self.tail.drain(..self.tail.len() - tail_keep);
            self.tail_cut = true;
        }
        Ok(())
    }

    /// `; stderr: ...` with the last lines (at most [`ERROR_TAIL_LINES`] and
    /// [`ERROR_TAIL_BYTES`]) on one line, secrets hidden and control characters escaped;
    /// nothing when stderr was empty.
    fn quote(&self, secrets: &Secrets) -> String {
        let hidden = secrets.hide(self.tail.clone(), self.tail_cut, false);
        let text = String::from_utf8_lossy(&hidden);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let last = &lines[lines.len().saturating_sub(ERROR_TAIL_LINES)..];
        if last.is_empty() {
            return String::new();
        }
        // A terminal shows errors: no escape sequence of the program's reaches it.
        let mut joined = escape_controls(&last.join(" | "));
        if joined.len() > ERROR_TAIL_BYTES {
            let mut cut = joined.len() - ERROR_TAIL_BYTES;
            while !joined.is_char_boundary(cut) {
                cut += 1;
            }
            joined = format!("…{}", &joined[cut..]);
        }
        let cut = if self.tail_cut || lines.len() > last.len() {
            "…"
        } else {
            ""
        };
        format!("; stderr: {cut}{joined}")
    }
}

/// `text` with its control characters escaped (`\u{1b}`): for errors shown on terminals.
pub(crate) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Values of secret variables, hidden as `***` wherever a program's text is shown or kept.
#[derive(Debug, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, value: String) {
        if !value.is_empty() {
            self.0.push(value);
        }
    }

    fn longest(&self) -> usize {
        self.0.iter().map(String::len).max().unwrap_or(0)
    }

    /// `text` with every secret in it replaced by `***`. A text cut from a longer one may
    /// start (`cut_start`) with the end of a secret or end (`cut_end`) with its start: bytes
    /// shorter than the longest secret there are dropped unless they are a whole secret.
    fn hide(&self, text: Vec<u8>, cut_start: bool, cut_end: bool) -> Vec<u8> {
        if self.0.is_empty() {
            return text;
        }
        let mut secret = vec![false; text.len()];
        for value in &self.0 {
            let value = value.as_bytes();
            for (i, window) in text.windows(value.len()).enumerate() {
                if window == value {
                    secret[i..i + value.len()].fill(true);
                }
            }
        }
        let edge = self.longest().saturating_sub(1);
        let keep = |i: usize| (!cut_start || i >= edge) && (!cut_end || i + edge < text.len());
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if secret[i] {
                out.extend_from_slice(b"***");
                while i < text.len() && secret[i] {
                    i += 1;
                }
            } else {
                if keep(i) {
                    out.push(text[i]);
                }
                i += 1;
            }
        }
        out
    }
}

/// How long the pipes may stay open after the program exited (held by a child it left).
const LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Clears `command`'s environment but for the variables in `allow` (passed through from
/// colony's own) and `set`.
pub(crate) fn clean_env(
    command: &mut std::process::Command,
    allow: &[String],
    set: &[(String, String)],
) {
    command.env_clear();
    for name in allow {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    for (name, value) in set {
        command.env(name, value);
    }
}

/// Where util-linux's `prlimit` is looked for.
const PRLIMIT: &str = "prlimit";

/// A new worktree at `<root>/<name>`, detached at the repository's `HEAD`; an older one of
/// the same name (an earlier attempt's) is removed first.
async fn fresh_worktree(w: &Worktree, name: &Name) -> Result<PathBuf, String> {
    let path = join_under(&w.root, name).map_err(|e| e.to_string())?;
    let git = |args: Vec<std::ffi::OsString>| {
        let repository = w.repository.clone();
        async move {
            let out = tokio::process::Command::new("git")
                .arg("-C")
                .arg(&repository)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| format!("cannot run git: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        }
    };
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        git(vec![
            "worktree".into(),
            "remove".into(),
            "--force".into(),
            path.clone().into(),
        ])
        .await?;
    }
    tokio::fs::create_dir_all(&w.root)
        .await
        .map_err(|e| format!("{}: {e}", w.root.display()))?;
    git(vec![
        "worktree".into(),
        "add".into(),
        "--detach".into(),
        path.clone().into(),
        "HEAD".into(),
    ])
    .await?;
    Ok(path)
}

/// Reads up to `cap` bytes into `into`, then drains the rest: a program blocked writing to a
/// full pipe would never exit.
async fn read_capped(
    from: impl tokio::io::AsyncRead + Unpin,
    cap: usize,
    into: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut limited = from.take(cap as u64);
    limited.read_to_end(into).await?;
    tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await?;
    Ok(())
}

/// Stdout as JSON: as it is when it parses, else as a JSON string.
fn as_json(stdout: Vec<u8>) -> Bytes {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&stdout).is_ok() {
        return Bytes::from(stdout);
    }
    let text = String::from_utf8_lossy(&stdout);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Bytes::from(serde_json::Value::String(text.to_owned()).to_string())
}

/// A process group, killed when dropped.
/// A process group, killed when dropped, and listed meanwhile so that [`kill_all`] finds it.
pub(crate) struct Group(Option<u32>);

/// Process groups (and the single processes of `process` agents, as negative numbers) alive
/// now: what [`kill_all`] kills when colony must exit without unwinding.
static LIVE: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

impl Group {
    pub(crate) fn new(pid: Option<u32>) -> Self {
        Self::listed(pid, true)
    }

    /// A single process (not a group leader): killed alone.
    pub(crate) fn single(pid: Option<u32>) -> Self {
        Self::listed(pid, false)
    }

    fn listed(pid: Option<u32>, group: bool) -> Self {
        if let Some(id) = pid.and_then(|p| i32::try_from(p).ok()) {
            let entry = if group { id } else { -id };
            LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
            return Self(Some(entry as u32));
        }
        Self(None)
    }
}

fn kill(entry: i32) {
    use nix::{sys::signal, unistd::Pid};
    let _ = if entry > 0 {
        signal::killpg(Pid::from_raw(entry), signal::Signal::SIGKILL)
    } else {
        signal::kill(Pid::from_raw(-entry), signal::Signal::SIGKILL)
    };
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(entry) = self.0 {
            let entry = entry as i32;
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = live.iter().position(|&e| e == entry) {
                live.swap_remove(i);
            }
            drop(live);
            kill(entry);
        }
    }
}

/// Kills every process that command and process agents have running: for an exit that
/// skips destructors (a second Ctrl-C), so that nothing colony started outlives it.
pub fn kill_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for entry in live {
        kill(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::{AgentId, TaskId};

    fn task(payload: &str) -> Task {
        Task::new(TaskId(7), 2, AgentId(3), Bytes::from(payload.to_owned()))
    }

    async fn outcome(options: CommandOptions, payload: &str) -> Outcome {
        match Command::new(options).handle(task(payload)) {
            Execution::Running(f) => f.await,
            Execution::Done(o) => o,
        }
    }

    fn fatal_message(outcome: Outcome) -> String {
        let err = outcome.unwrap_err();
        assert!(!err.is_retryable(), "refused for good: {err}");
        err.to_string()
    }

    #[test]
    fn placeholders_are_filled_from_the_attempt_and_its_input() {
        let t = task(r#"{"task":"count","input":{"file":"a.txt","n":3}}"#);
        fn placeholders(t: &Task) -> Placeholders<'_> {
            Placeholders::new(t, true).unwrap()
        }
        assert_eq!(
            placeholders(&t)
                .fill("{{task}}/{{attempt}}/{{input.file}}/{{ input.n }}")
                .unwrap(),
            "count/2/a.txt/3"
        );
        assert!(
            placeholders(&t)
                .fill("{{input.missing}}")
                .unwrap_err()
                .contains("`missing`")
        );
        assert!(
            placeholders(&t)
                .fill("{{nope}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(placeholders(&t).fill("{{task").is_err());
        // Without a name, the task is named by its id.
        assert_eq!(placeholders(&task("{}")).name().as_str(), "7");
        assert_eq!(placeholders(&task("not json")).name().as_str(), "7");
    }

    #[tokio::test]
    async fn without_names_from_payload_a_task_goes_by_its_id_whatever_its_payload_says() {
        let root = tempfile::tempdir().unwrap();
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "echo {{task}}; echo oops >&2; exit 0".into()];
        o.logs = Some(root.path().to_owned());
        o.names_from_payload = false;
        // Another task's name, and one that is no name at all: both ignored.
        for payload in [r#"{"task":"build"}"#, r#"{"task":"../../x"}"#] {
            let out = outcome(o.clone(), payload).await.unwrap();
            assert_eq!(serde_json::from_slice::<u64>(&out).unwrap(), 7, "{payload}");
        }
        assert!(root.path().join("7.2.stderr").exists());
        assert!(!root.path().join("build.2.stderr").exists());
    }

    #[tokio::test]
    async fn a_task_name_that_is_not_a_name_fails_the_attempt_and_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("a/b/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let worktrees = root.path().join("a/b/worktrees");
        for payload in [
            r#"{"task":"../../../X"}"#,
            r#"{"task":"../../x"}"#,
            r#"{"task":"/tmp/x"}"#,
            r#"{"task":"a/b"}"#,
            r#"{"task":""}"#,
            r#"{"task":".."}"#,
        ] {
            let mut o = CommandOptions::new("sh");
            // Writes to stderr, so that a log would be written if the attempt ran.
            o.args = vec!["-c".into(), "echo oops >&2; exit 1".into()];
            o.logs = Some(logs.clone());
            o.workdir = Some(format!("{}/work/{{{{task}}}}", root.path().display()));
            o.worktree = Some(Worktree {
                repository: root.path().to_owned(),
                root: worktrees.clone(),
            });
            let message = fatal_message(outcome(o, payload).await);
            assert!(message.contains("not a usable task name"), "{message}");
        }
        let message = fatal_message(outcome(CommandOptions::new("true"), r#"{"task":5}"#).await);
        assert!(message.contains("a number, not a string"), "{message}");
        // Nothing was written anywhere: not the logs, not above them, no folder made.
        let mut written: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.path().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                written.push(path);
            }
        }
        written.sort();
        assert_eq!(
            written,
            [root.path().join("a"), root.path().join("a/b"), logs.clone()],
        );
        // A good name's log lands in the logs folder.
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "echo oops >&2".into()];
        o.logs = Some(logs.clone());
        outcome(o, r#"{"task":"fine-name_2"}"#).await.unwrap();
        assert!(logs.join("fine-name_2.2.stderr").is_file());
    }

    #[tokio::test]
    async fn a_workdir_filled_from_the_input_stays_under_its_root() {
        let root = tempfile::tempdir().unwrap();
        let mut o = CommandOptions::new("pwd");
        o.workdir = Some(format!("{}/work/{{{{input.dir}}}}", root.path().display()));
        for (dir, why) in [
            ("../../..", "leaves"),
            ("a/../../../x", "leaves"),
            ("/etc", "absolute"),
            ("//etc", "absolute"),
        ] {
            let payload = serde_json::json!({"input": {"dir": dir}}).to_string();
            let message = fatal_message(outcome(o.clone(), &payload).await);
            assert!(
                message.contains(why) && message.contains("workdir"),
                "{dir}: {message}"
            );
        }
        assert!(!root.path().join("work").exists(), "nothing was created");
        let out = outcome(o.clone(), r#"{"input":{"dir":"a/./b"}}"#)
            .await
            .unwrap();
        let pwd: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(Path::new(&pwd), root.path().join("work/a/b"));
        // The root ends at the last `/` before the first placeholder: `w-{{input.dir}}` may
        // not climb out of the folder holding `w-...` either.
        o.workdir = Some(format!("{}/w-{{{{input.dir}}}}", root.path().display()));
        let message = fatal_message(outcome(o.clone(), r#"{"input":{"dir":"/../../x"}}"#).await);
        assert!(message.contains("leaves"), "{message}");
        let out = outcome(o, r#"{"input":{"dir":"x"}}"#).await.unwrap();
        let pwd: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(Path::new(&pwd), root.path().join("w-x"));
    }

    #[tokio::test]
    async fn values_that_would_be_options_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let (list, data) = (dir.path().join("list"), dir.path().join("data"));
        std::fs::write(&data, "12345").unwrap();
        std::fs::write(&list, format!("{}\0", data.display())).unwrap();
        let mut o = CommandOptions::new("wc");
        o.args = vec!["-c".into(), "{{input.file}}".into()];
        let hostile =
            serde_json::json!({"input": {"file": format!("--files0-from={}", list.display())}})
                .to_string();
        let message = fatal_message(outcome(o.clone(), &hostile).await);
        assert!(
            message.contains("argument 2")
                && message.contains("--files0-from=")
                && message.contains("allow-option-values: true"),
            "{message}"
        );
        // A negative number from the input is such a value too.
        let message = fatal_message(outcome(o.clone(), r#"{"input":{"file":-3}}"#).await);
        assert!(message.contains("`-3`"), "{message}");
        // A template whose literal start is only dashes lets the payload name the option.
        for template in ["-{{input.file}}", "--{{input.file}}"] {
            let mut dashed = o.clone();
            dashed.args = vec!["-w".into(), template.into()];
            let message = fatal_message(
                outcome(dashed, r#"{"input":{"file":"files0-from=/etc/hostname"}}"#).await,
            );
            assert!(message.contains("argument 2"), "{template}: {message}");
        }
        // Options the file writes itself, and values after a literal start, pass.
        let mut echo = CommandOptions::new("echo");
        echo.args = vec!["-n".into(), "--n={{input.n}}".into(), "x{{input.n}}".into()];
        let out = outcome(echo, r#"{"input":{"n":-3}}"#).await.unwrap();
        assert_eq!(&out[..], br#""--n=-3 x-3""#);
        // Allowed: the value reaches the program as an option, which takes it as one.
        o.allow_option_values = true;
        let out = outcome(o, &hostile).await.unwrap();
        let text: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            text,
            format!("5 {}", data.display()),
            "wc read its file list"
        );
    }

    #[tokio::test]
    async fn a_failed_commands_error_ends_with_its_stderr() {
        let mut o = CommandOptions::new("sh");
        o.args = vec![
            "-c".into(),
            "for i in 1 2 3 4 5 6 7; do echo \"line $i\" >&2; done; echo \"key $PATH\" >&2; printf 'bell\\033[2J' >&2; exit 3".into(),
        ];
        o.secrets = vec!["PATH".into()];
        let err = outcome(o, "{}").await.unwrap_err();
        let message = err.to_string();
        assert!(err.is_retryable(), "{message}");
        assert!(
            message.starts_with("`")
                && message.contains(
                    "exited with 3; stderr: …line 5 | line 6 | line 7 | key *** | bell\\u{1b}[2J"
                ),
            "{message}"
        );
        assert!(!message.contains("line 4"), "{message}");
        // A long stderr: the quote is bounded, and comes from its end.
        let mut o = CommandOptions::new("sh");
        o.args = vec![
            "-c".into(),
            "head -c 3000000 /dev/zero | tr '\\0' 'y' >&2; echo; echo the-end >&2; exit 1".into(),
        ];
        let message = outcome(o, "{}").await.unwrap_err().to_string();
        assert!(
            message.ends_with("the-end"),
            "{}",
            &message[message.len() - 100..]
        );
        assert!(
            message.len() < ERROR_TAIL_BYTES + 200,
            "{} bytes",
            message.len()
        );
        // Nothing on stderr, nothing quoted.
        let message = outcome(CommandOptions::new("false"), "{}")
            .await
            .unwrap_err()
            .to_string();
        assert!(message.ends_with("exited with 1"), "{message}");
    }

    #[test]
    fn secrets_are_hidden_even_when_the_text_was_cut_through_one() {
        let mut secrets = Secrets::default();
        secrets.add("sesame-open".into());
        let hide = |text: &str, start, end| {
            String::from_utf8(secrets.hide(text.as_bytes().to_vec(), start, end)).unwrap()
        };
        assert_eq!(hide("a sesame-open b", false, false), "a *** b");
        // The tail of a longer text starting inside the secret: its end is dropped.
        assert_eq!(hide("-open and more text", true, false), "more text");
        // The head of a longer text ending inside it: its start is dropped.
        assert_eq!(hide("more text and sesame", false, true), "more text ");
        // A whole secret at a cut edge is still hidden.
        assert_eq!(hide("sesame-open then", true, false), "*** then");
    }

    #[tokio::test]
    async fn stdout_is_the_output_and_stdin_the_payload() {
        let mut o = CommandOptions::new("cat");
        o.args = vec![];
        let out = outcome(o, r#"{"x":1}"#).await.unwrap();
        assert_eq!(&out[..], br#"{"x":1}"#);
        let mut o = CommandOptions::new("echo");
        o.args = vec!["hello {{input.who}}".into()];
        let out = outcome(o, r#"{"input":{"who":"world"}}"#).await.unwrap();
        assert_eq!(&out[..], br#""hello world""#);
    }

    #[tokio::test]
    async fn exit_codes_decide_and_the_environment_is_cleared() {
        let o = CommandOptions::new("false");
        assert!(outcome(o, "{}").await.unwrap_err().is_retryable());
        let o = CommandOptions::new("/definitely/not/here");
        let err = outcome(o, "{}").await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("cannot run"),
            "{err}"
        );
        let mut o = CommandOptions::new("sh");
        o.args = vec![
            "-c".into(),
            "printf '%s' \"${SECRET:-unset}:${HOSTNAME:-unset}\"".into(),
        ];
        o.env = vec![("SECRET".into(), "s3".into())];
        let out = outcome(o, "{}").await.unwrap();
        assert_eq!(&out[..], br#""s3:unset""#);
    }

    #[tokio::test]
    async fn limits_apply_and_secrets_are_hidden() {
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "echo $(ulimit -n) $(ulimit -t)".into()];
        o.limits = Limits {
            open_files: Some(37),
            cpu_seconds: Some(9),
            ..Limits::default()
        };
        let out = outcome(o, "{}").await.unwrap();
        assert_eq!(&out[..], br#""37 9""#);
        // A process over its CPU time is stopped by the kernel, and the attempt fails.
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "while :; do :; done".into()];
        o.limits.cpu_seconds = Some(1);
        let err = outcome(o, "{}").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        // PATH stands in for a secret: every process has one.
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "echo \"key=$PATH\"; echo \"$PATH\" >&2".into()];
        o.secrets = vec!["PATH".into()];
        let logs = tempfile::tempdir().unwrap();
        o.logs = Some(logs.path().to_owned());
        let out = outcome(o, "{}").await.unwrap();
        assert_eq!(&out[..], br#""key=***""#);
        let log = std::fs::read_to_string(logs.path().join("7.2.stderr")).unwrap();
        assert_eq!(log.trim(), "***");
    }

    #[tokio::test]
    async fn each_attempt_gets_a_fresh_worktree() {
        let repo = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .args(["-C", repo.path().to_str().unwrap()])
                .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(repo.path().join("file.txt"), "tracked").unwrap();
        git(&["add", "file.txt"]);
        git(&["commit", "-q", "-m", "one"]);
        let root = tempfile::tempdir().unwrap();
        let mut o = CommandOptions::new("sh");
        o.args = vec![
            "-c".into(),
            "cat file.txt; echo scratch > new.txt; pwd".into(),
        ];
        o.worktree = Some(Worktree {
            repository: repo.path().to_owned(),
            root: root.path().to_owned(),
        });
        for _ in 0..2 {
            let out = outcome(o.clone(), r#"{"task":"fix-bug"}"#).await.unwrap();
            let text: String = serde_json::from_slice(&out).unwrap();
            assert!(text.starts_with("tracked"), "{text}");
            assert!(text.trim_end().ends_with("fix-bug"), "{text}");
        }
        assert!(root.path().join("fix-bug/new.txt").exists());
    }

    #[tokio::test]
    async fn large_input_and_background_children_do_not_hang_an_attempt() {
        // 1 MB through `cat`: stdin is written while stdout is read.
        let big = format!("\"{}\"", "x".repeat(1 << 20));
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            outcome(CommandOptions::new("cat"), &big),
        )
        .await
        .expect("no pipe deadlock")
        .unwrap();
        assert_eq!(out.len(), big.len());
        // A child left in the background holding stdout: the program's exit ends the attempt.
        let mut o = CommandOptions::new("sh");
        o.args = vec!["-c".into(), "sleep 30 & echo started".into()];
        let started = std::time::Instant::now();
        let out = outcome(o, "{}").await.unwrap();
        assert_eq!(&out[..], br#""started""#);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_attempt_dropped_early_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut o = CommandOptions::new("sh");
        // The shell starts a grandchild that would outlive it, then waits.
        o.args = vec![
            "-c".into(),
            format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        ];
        let Execution::Running(attempt) = Command::new(o).handle(task("{}")) else {
            panic!("a process is always running")
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), attempt).await;
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group was killed: the grandchild is gone (or a zombie awaiting its reaper).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state.split_whitespace().nth(2).is_some_and(|s| s != "Z");
        assert!(!alive, "grandchild {pid} still running: {state}");
    }
}
