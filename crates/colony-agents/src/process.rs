//! The `process` backend: one long-lived process per agent, speaking JSON lines on stdio.
//!
//! An agent's process starts with its first task (an idle agent costs no process) and serves
//! every task of that agent afterwards, several at once if the agent's concurrency allows.
//! It is isolated from colony and from the other agents' processes. One JSON object per line:
//!
//! ```text
//! process -> colony   {"type":"hello","protocol":1}                  once, first
//! colony  -> process  {"type":"task","id":"7.1","task":7,"attempt":1,"payload":{...}}
//! process -> colony   {"type":"progress","id":"7.1"}                 heartbeat, any number
//! process -> colony   {"type":"result","id":"7.1","output":{...}}    then the task is done
//! process -> colony   {"type":"error","id":"7.1","message":"...","retryable":true}
//! ```
//!
//! `id` names the attempt; answers may come in any order. Anything on stdout that is not such
//! a line is ignored and logged; stderr goes to colony's log. When the process exits, every
//! attempt it held fails (retryably) and the agent's next task starts a new process: the
//! runtime's supervisor sees the crash and restarts the agent. When an attempt ends early
//! (its timeout, a kill), colony forgets it; a process that cannot stop work it was given
//! should be killed by its supervisor's restart.

use crate::{Agent, Error, Execution, Outcome, Task, spawner::Spawner};
use bytes::Bytes;
use colony_core::AgentId;
use serde::Deserialize;
use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::oneshot,
};

/// Protocol version spoken.
pub const PROTOCOL: u32 = 1;

/// Settings of the `process` backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessOptions {
    pub program: String,
    pub args: Vec<String>,
    /// Names of variables passed through from colony's environment.
    pub env_allow: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Time a new process has to say hello.
    pub hello_timeout: Duration,
}

impl ProcessOptions {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env_allow: vec!["PATH".into(), "HOME".into(), "LANG".into(), "TMPDIR".into()],
            env: Vec::new(),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// A message from the process.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Message {
    Hello {
        protocol: u32,
    },
    Progress {
        id: String,
    },
    Result {
        id: String,
        #[serde(default)]
        output: serde_json::Value,
    },
    Error {
        id: String,
        message: String,
        #[serde(default = "yes")]
        retryable: bool,
    },
}

fn yes() -> bool {
    true
}

type Waiters = Arc<Mutex<HashMap<String, (oneshot::Sender<Outcome>, crate::Heartbeat)>>>;

/// Per agent that ran a task: its process, started once by whichever attempt comes first.
type Conns = Arc<Mutex<HashMap<AgentId, Arc<tokio::sync::OnceCell<Arc<Conn>>>>>>;

/// One agent's live process.
struct Conn {
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiting: Waiters,
    /// Set by the reader when the process's stdout closes: it is gone.
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Killed when an attempt is abandoned unanswered, and when the connection is dropped.
    child: Mutex<Child>,
    /// Lists the process for `command::kill_all`, and kills it when the connection goes.
    _listed: crate::command::Group,
}

/// Runs tasks on long-lived processes, one per agent (see the module documentation).
pub struct Process {
    options: Arc<ProcessOptions>,
    conns: Conns,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Process {
    pub fn new(mut options: ProcessOptions) -> Self {
        options.program = crate::command::resolve(&options.program);
        Self {
            options: Arc::new(options),
            conns: Arc::default(),
        }
    }

    /// Processes alive now.
    pub fn live(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|c| {
                c.get()
                    .is_some_and(|c| !c.dead.load(std::sync::atomic::Ordering::Relaxed))
            })
            .count()
    }
}

impl Agent for Process {
    fn handle(&self, task: Task) -> Execution {
        let options = self.options.clone();
        let conns = self.conns.clone();
        Execution::Running(Box::pin(
            async move { attempt(&options, &conns, task).await },
        ))
    }
}

async fn attempt(options: &Arc<ProcessOptions>, conns: &Conns, task: Task) -> Outcome {
    let cell = {
        let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
        let cell = map.entry(task.agent).or_default();
        // A dead process is replaced by a new one.
        if cell
            .get()
            .is_some_and(|c| c.dead.load(std::sync::atomic::Ordering::Relaxed))
        {
            *cell = Arc::default();
        }
        cell.clone()
    };
    let conn = cell
        .get_or_try_init(|| start(options))
        .await
        .map_err(|e| Error::retryable(format!("process `{}`: {e}", options.program)))?
        .clone();
    let id = format!("{}.{}", task.id.0, task.attempt);
    let (tx, rx) = oneshot::channel();
    {
        // Checked under the lock the reader clears when the process dies: an attempt is
        // either registered before that (and failed by it) or sees the process dead.
        let mut waiting = conn.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if conn.dead.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::retryable("the process exited"));
        }
        waiting.insert(id.clone(), (tx, task.heartbeat.clone()));
    }
    // Forgets the attempt however it ends; one abandoned unanswered (its timeout, a kill, a
    // health failure) takes the process down with it, so that the agent's restart is real.
    let _forget = Forget(conn.clone(), id.clone());
    let payload: serde_json::Value =
        serde_json::from_slice(&task.payload).unwrap_or(serde_json::Value::Null);
    let line = serde_json::json!({
        "type": "task", "id": id, "task": task.id.0, "attempt": task.attempt, "payload": payload,
    })
    .to_string()
        + "\n";
    {
        let mut stdin = conn.stdin.lock().await;
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            conn.dead.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(Error::retryable(format!("the process is gone: {e}")));
        }
        let _ = stdin.flush().await;
    }
    rx.await
        .unwrap_or_else(|_| Err(Error::retryable("the process exited before answering")))
}

struct Forget(Arc<Conn>, String);

impl Drop for Forget {
    fn drop(&mut self) {
        let unanswered = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1)
            .is_some();
        if unanswered {
            self.0
                .dead
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = self
                .0
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_kill();
        }
    }
}

/// Starts a process and waits for its hello.
async fn start(options: &ProcessOptions) -> Result<Arc<Conn>, String> {
    let mut command = tokio::process::Command::new(&options.program);
    command
        .args(&options.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::command::clean_env(&mut command, &options.env_allow, &options.env);
    let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    if let Some(stderr) = child.stderr.take() {
        let program = options.program.clone();
        Spawner::spawn("process-stderr", async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(program = %program, "{line}");
            }
        });
    }
    // The hello comes first.
    let hello = tokio::time::timeout(options.hello_timeout, lines.next_line())
        .await
        .map_err(|_| format!("no hello within {:?}", options.hello_timeout))?
        .map_err(|e| format!("reading its hello: {e}"))?
        .ok_or("it exited before saying hello")?;
    match serde_json::from_str::<Message>(&hello) {
        Ok(Message::Hello { protocol: PROTOCOL }) => {}
        Ok(Message::Hello { protocol }) => {
            return Err(format!(
                "it speaks protocol {protocol}; colony speaks {PROTOCOL}"
            ));
        }
        _ => return Err(format!("its first line is not a hello: {hello:?}")),
    }
    let waiting: Waiters = Arc::default();
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, d, program) = (waiting.clone(), dead.clone(), options.program.clone());
    Spawner::spawn("process-reader", async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let message = match serde_json::from_str::<Message>(&line) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(program = %program, error = %e, line = %line, "Not a protocol line.");
                    continue;
                }
            };
            let mut waiting = w.lock().unwrap_or_else(|p| p.into_inner());
            match message {
                Message::Progress { id } => {
                    if let Some((_, beat)) = waiting.get(&id) {
                        beat.beat();
                    }
                }
                Message::Result { id, output } => {
                    if let Some((tx, _)) = waiting.remove(&id) {
                        let _ = tx.send(Ok(Bytes::from(output.to_string())));
                    }
                }
                Message::Error {
                    id,
                    message,
                    retryable,
                } => {
                    if let Some((tx, _)) = waiting.remove(&id) {
                        let e = if retryable {
                            Error::retryable(message)
                        } else {
                            Error::fatal(message)
                        };
                        let _ = tx.send(Err(e));
                    }
                }
                Message::Hello { .. } => {}
            }
        }
        // Stdout closed: the process is gone, and every attempt it held fails with it.
        let mut waiting = w.lock().unwrap_or_else(|p| p.into_inner());
        d.store(true, std::sync::atomic::Ordering::Relaxed);
        waiting.clear();
    });
    Ok(Arc::new(Conn {
        stdin: tokio::sync::Mutex::new(stdin),
        waiting,
        dead,
        _listed: crate::command::Group::single(child.id()),
        child: Mutex::new(child),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::TaskId;

    /// A protocol-speaking agent in Python: echoes payloads, fails on request, dies on request.
    const AGENT: &str = r#"
import json, sys, os
print(json.dumps({"type": "hello", "protocol": 1}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    p = m["payload"] or {}
    if p.get("die"):
        sys.exit(3)
    if p.get("hang"):
        import time
        time.sleep(60)
    print(json.dumps({"type": "progress", "id": m["id"]}), flush=True)
    if p.get("fail"):
        print(json.dumps({"type": "error", "id": m["id"], "message": "asked to fail", "retryable": False}), flush=True)
    else:
        print(json.dumps({"type": "result", "id": m["id"], "output": {"pid": os.getpid(), "echo": p}}), flush=True)
"#;

    fn agent() -> Process {
        let mut o = ProcessOptions::new("python3");
        o.args = vec!["-c".into(), AGENT.into()];
        Process::new(o)
    }

    async fn run(p: &Process, agent: u32, payload: &str) -> Outcome {
        let task = Task::new(
            TaskId(1),
            1,
            AgentId(agent),
            Bytes::from(payload.to_owned()),
        );
        match p.handle(task) {
            Execution::Running(f) => f.await,
            Execution::Done(o) => o,
        }
    }

    fn pid(out: &Bytes) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(out).unwrap();
        v["pid"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn one_process_per_agent_serves_its_tasks_and_is_replaced_when_it_dies() {
        let p = agent();
        let a = run(&p, 0, r#"{"x":1}"#).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["echo"]["x"], 1);
        let again = run(&p, 0, "{}").await.unwrap();
        assert_eq!(pid(&a), pid(&again), "the same process serves the agent");
        let other = run(&p, 1, "{}").await.unwrap();
        assert_ne!(pid(&a), pid(&other), "another agent, another process");
        assert_eq!(p.live(), 2);
        let err = run(&p, 0, r#"{"fail":true}"#).await.unwrap_err();
        assert!(!err.is_retryable() && err.to_string().contains("asked to fail"));
        let err = run(&p, 0, r#"{"die":true}"#).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let after = run(&p, 0, "{}").await.unwrap();
        assert_ne!(pid(&a), pid(&after), "a new process after the old one died");
    }

    #[tokio::test]
    async fn an_abandoned_attempt_takes_its_process_down() {
        let p = agent();
        let first = pid(&run(&p, 0, "{}").await.unwrap());
        let hung = run(&p, 0, r#"{"hang":true}"#);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), hung)
                .await
                .is_err()
        );
        // The hung process was killed with its abandoned attempt: a new one serves the agent.
        let next = run(&p, 0, "{}").await.unwrap();
        assert_ne!(first, pid(&next));
        assert!(
            !std::path::Path::new(&format!("/proc/{first}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{first}/stat"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .nth(2)
                    == Some("Z")
        );
    }

    #[tokio::test]
    async fn a_process_that_does_not_speak_the_protocol_is_refused() {
        let mut o = ProcessOptions::new("sh");
        o.args = vec!["-c".into(), "echo hi; sleep 5".into()];
        let err = run(&Process::new(o), 0, "{}").await.unwrap_err();
        assert!(err.to_string().contains("not a hello"), "{err}");
        let mut o = ProcessOptions::new("sh");
        o.args = vec!["-c".into(), "sleep 5".into()];
        o.hello_timeout = Duration::from_millis(200);
        let err = run(&Process::new(o), 0, "{}").await.unwrap_err();
        assert!(err.to_string().contains("no hello within"), "{err}");
    }
}
