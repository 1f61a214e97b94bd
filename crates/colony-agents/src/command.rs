//! The `command` backend: one process per attempt.
//!
//! The program runs directly (never through a shell) with arguments in which `{{name}}`
//! placeholders are filled from the attempt: `{{task}}`, `{{attempt}}`, `{{agent}}`, and
//! `{{input.KEY}}` from the payload's `input` object (or the payload itself when it has none).
//! The payload goes to the program's stdin; its stdout is the output, kept as JSON when it
//! parses and wrapped as a JSON string when it does not; its stderr goes to a log file per
//! attempt. The environment is cleared but for an allowlist and the variables given. The
//! process leads a process group of its own, and the whole group is killed when the attempt
//! ends early (timeout, kill, shutdown): nothing it started outlives it.
//!
//! Exit codes in `ok_codes` (0 by default) succeed; 126 and 127 (cannot execute, not found)
//! and a program that cannot be spawned fail the task at once; any other code is retryable.

use crate::{Agent, Error, Execution, Outcome, Task};
use bytes::Bytes;
use std::{path::PathBuf, process::Stdio, sync::Arc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest stdout kept; a larger one fails the attempt.
pub const MAX_STDOUT: usize = 16 << 20;
/// Most stderr kept in an attempt's log; the rest is dropped.
pub const MAX_STDERR: usize = 16 << 20;

/// Settings of the `command` backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOptions {
    pub program: String,
    pub args: Vec<String>,
    /// Names of variables passed through from colony's own environment.
    pub env_allow: Vec<String>,
    /// Variables set for the program.
    pub env: Vec<(String, String)>,
    /// Working directory; a `{{task}}` in it makes one per task. Created if missing.
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
        }
    }
}

/// Runs one process per attempt (see the module documentation).
#[derive(Debug)]
pub struct Command {
    options: Arc<CommandOptions>,
}

impl Command {
    pub fn new(mut options: CommandOptions) -> Self {
        options.program = resolve(&options.program);
        Self {
            options: Arc::new(options),
        }
    }
}

impl Agent for Command {
    fn handle(&self, task: Task) -> Execution {
        let options = self.options.clone();
        Execution::Running(Box::pin(async move { run(&options, &task).await }))
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

/// What an attempt's placeholders stand for, read from its payload once.
#[derive(Debug)]
pub struct Placeholders<'a> {
    task: &'a Task,
    /// The workflow's name for the task, else the runtime's id.
    name: String,
    /// The payload's `input` object, else the payload itself.
    input: serde_json::Value,
}

impl<'a> Placeholders<'a> {
    pub fn new(task: &'a Task) -> Self {
        let mut payload: serde_json::Value =
            serde_json::from_slice(&task.payload).unwrap_or(serde_json::Value::Null);
        let name = payload
            .get("task")
            .and_then(|t| t.as_str())
            .map_or_else(|| task.id.0.to_string(), str::to_owned);
        let input = match payload.get_mut("input") {
            Some(input) => input.take(),
            None => payload,
        };
        Self { task, name, input }
    }

    /// The task's name: the workflow's, else the runtime's id.
    pub fn name(&self) -> &str {
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
                "task" => out.push_str(&self.name),
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
}

async fn run(options: &CommandOptions, task: &Task) -> Outcome {
    let fatal = |m: String| Err(Error::fatal(m));
    let placeholders = Placeholders::new(task);
    let args: Vec<String> = match options.args.iter().map(|a| placeholders.fill(a)).collect() {
        Ok(args) => args,
        Err(e) => return fatal(format!("argument: {e}")),
    };
    let mut command = if options.limits.is_empty() {
        let mut c = tokio::process::Command::new(&options.program);
        c.args(&args);
        c
    } else {
        let mut c = tokio::process::Command::new(PRLIMIT);
        c.args(options.limits.prlimit_args())
            .arg("--")
            .arg(&options.program)
            .args(&args);
        c
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    clean_env(&mut command, &options.env_allow, &options.env);
    let mut secrets: Vec<String> = Vec::new();
    for name in &options.secrets {
        if let Ok(value) = std::env::var(name) {
            command.env(name, &value);
            if !value.is_empty() {
                secrets.push(value);
            }
        }
    }
    let hide = |text: String| -> String {
        secrets
            .iter()
            .fold(text, |t, secret| t.replace(secret.as_str(), "***"))
    };
    if let Some(worktree) = &options.worktree {
        match fresh_worktree(worktree, placeholders.name()).await {
            Ok(dir) => {
                command.current_dir(dir);
            }
            Err(e) => return Err(Error::retryable(format!("git worktree: {e}"))),
        }
    }
    if let Some(dir) = &options.workdir {
        let dir = match placeholders.fill(dir) {
            Ok(d) => PathBuf::from(d),
            Err(e) => return fatal(format!("workdir: {e}")),
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return fatal(format!(
                "cannot create working directory {}: {e}",
                dir.display()
            ));
        }
        command.current_dir(dir);
    }
    // Piped, and written to a log only when there is something in it: creating a file per
    // attempt costs more than a short process.
    command.stderr(if options.logs.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return fatal(format!("cannot run `{}`: {e}", options.program)),
    };
    let group = Group::new(child.id());
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (stdin, out, err) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let payload = task.payload.clone();
    // Stdin is written while stdout and stderr are read: a program that answers before it
    // has read all its input must not block on a full pipe.
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
        let read_err = async {
            match err {
                Some(err) => read_capped(err, MAX_STDERR, &mut stderr).await,
                None => Ok(()),
            }
        };
        tokio::join!(write, read_out, read_err).1
    };
    // The program's exit ends the attempt, not the pipes' end: a background child it left
    // holding them gets a moment to let go, then goes with the process group.
    let (status, io) = crate::heartbeat::beating(&task.heartbeat, async {
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
    if let Some(logs) = &options.logs
        && !stderr.is_empty()
    {
        let path = logs.join(format!("{}.{}.stderr", placeholders.name(), task.attempt));
        let stderr = if secrets.is_empty() {
            stderr
        } else {
            hide(String::from_utf8_lossy(&stderr).into_owned()).into_bytes()
        };
        if let Err(e) = tokio::fs::write(&path, &stderr).await {
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
    match status.code() {
        Some(code) if options.ok_codes.contains(&code) => Ok(as_json(if secrets.is_empty() {
            stdout
        } else {
            hide(String::from_utf8_lossy(&stdout).into_owned()).into_bytes()
        })),
        Some(code @ (126 | 127)) => fatal(format!(
            "`{}` exited with {code}: cannot execute",
            options.program
        )),
        Some(code) => Err(Error::retryable(format!(
            "`{}` exited with {code}",
            options.program
        ))),
        None => Err(Error::retryable(format!(
            "`{}` was killed by a signal",
            options.program
        ))),
    }
}

/// How long the pipes may stay open after the program exited (held by a child it left).
const LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Clears `command`'s environment but for the variables in `allow` (passed through from
/// colony's own) and `set`.
pub(crate) fn clean_env(
    command: &mut tokio::process::Command,
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
async fn fresh_worktree(w: &Worktree, name: &str) -> Result<PathBuf, String> {
    let path = w.root.join(name);
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
    if path.exists() {
        git(vec![
            "worktree".into(),
            "remove".into(),
            "--force".into(),
            path.clone().into(),
        ])
        .await?;
    }
    std::fs::create_dir_all(&w.root).map_err(|e| format!("{}: {e}", w.root.display()))?;
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

    #[test]
    fn placeholders_are_filled_from_the_attempt_and_its_input() {
        let t = task(r#"{"task":"count","input":{"file":"a.txt","n":3}}"#);
        assert_eq!(
            Placeholders::new(&t)
                .fill("{{task}}/{{attempt}}/{{input.file}}/{{ input.n }}")
                .unwrap(),
            "count/2/a.txt/3"
        );
        assert!(
            Placeholders::new(&t)
                .fill("{{input.missing}}")
                .unwrap_err()
                .contains("`missing`")
        );
        assert!(
            Placeholders::new(&t)
                .fill("{{nope}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(Placeholders::new(&t).fill("{{task").is_err());
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
