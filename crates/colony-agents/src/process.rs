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
//!
//! An agent retired from its pool has its process stopped once the attempts it holds have
//! ended: SIGTERM, then SIGKILL after [`ProcessOptions::stop_grace`]. With
//! [`ProcessOptions::idle_timeout`], a process idle that long is stopped the same way
//! (hibernation) and the agent's next task starts a new one.
//!
//! ## Messages
//!
//! A process that says `"messages": true` in its hello reads and sends messages between
//! agents ([`crate::Mail`]) on the same pipes, once colony has told it which agent it is:
//!
//! ```text
//! colony  -> process  {"type":"agent","agent":12}                     once it serves agent 12
//! colony  -> process  {"type":"messages","batch":1,"messages":[{"from":{"agent":3},
//!                      "to":{"topic":"plans"},"body":"..."}]}         a batch of its mailbox
//! process -> colony   {"type":"read","batch":1}                      acknowledges the batch
//! process -> colony   {"type":"send","to":{"agent":5},"body":"..."}  also {"topic"}, {"team"},
//!                                                                    {"mailbox"}
//! process -> colony   {"type":"subscribe","topic":"plans"}           and "unsubscribe"
//! colony  -> process  {"type":"refused","to":{...},"error":"..."}    a send that failed
//! ```
//!
//! The next batch comes once the process acknowledged the one before. A process that exits
//! (or is stopped) with a batch unacknowledged gives it back to the agent's mailbox: the
//! agent's next process reads it first. A message handed back to its sender carries
//! `"returned": {"by", "why"}`. Subscriptions are the agent's: they outlive its processes.
//! Messages are sent in the order the process wrote them; a send waits while the mailbox it
//! goes to is full, and the process's later lines wait behind it. An agent whose process
//! is not running (before its first task, hibernated) has its messages kept in its mailbox
//! until one runs. Bodies reach a process as text (invalid UTF-8 replaced).
//!
//! A line is at most [`MAX_LINE`] bytes, so that a process cannot make colony hold an
//! unbounded line. A longer line is never kept: when it names its attempt in its first bytes
//! (`{"type":"result","id":"7.1",...`), that attempt fails (for good: its answer is too big)
//! and the rest of the line is skipped; otherwise the process is stopped and every attempt it
//! held fails, retryably. Stderr lines are cut at 4 KiB in colony's log.

use crate::{Agent, Error, Execution, Letter, Mail, Outcome, Task, spawner::Spawner};
use bytes::Bytes;
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint},
};
use serde::Deserialize;
use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
    sync::oneshot,
};

/// Protocol version spoken.
pub const PROTOCOL: u32 = 1;

/// How much of an over-long stdout line is looked at for the attempt it names, and how much
/// of an unreadable line or of a stderr line is kept for the log.
const SHOWN: usize = 4096;

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
    /// Where the process runs; where colony runs when `None`.
    pub workdir: Option<std::path::PathBuf>,
    /// A process with no attempt for this long is stopped; the agent's next task starts a
    /// new one. `None`: it lives as long as its agent.
    pub idle_timeout: Option<Duration>,
    /// Between the SIGTERM that asks a process to stop and the SIGKILL that makes it.
    pub stop_grace: Duration,
    /// Processes kept started (hello said) and unclaimed, so that an agent's first task does
    /// not wait for a cold start: the pool fills once it has handled a task, and refills as
    /// agents claim them.
    pub warm: u32,
    /// On a predictive health alert (the agent's response times rose over its baseline),
    /// start a new process and move the agent onto it; the old one stops once its attempts
    /// have ended.
    pub replace_on_alert: bool,
}

impl ProcessOptions {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env_allow: vec!["PATH".into(), "HOME".into(), "LANG".into(), "TMPDIR".into()],
            env: Vec::new(),
            hello_timeout: Duration::from_secs(10),
            workdir: None,
            idle_timeout: None,
            stop_grace: Duration::from_secs(5),
            warm: 0,
            replace_on_alert: true,
        }
    }
}

/// A message from the process.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Message {
    Hello {
        protocol: u32,
        /// Whether it reads and sends messages (see the module's text).
        #[serde(default)]
        messages: bool,
    },
    Read {
        batch: u64,
    },
    Send {
        to: To,
        body: String,
    },
    Subscribe {
        topic: String,
    },
    Unsubscribe {
        topic: String,
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

/// Where a process sends a message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum To {
    Agent(u32),
    Mailbox(String),
    Topic(String),
    Team(u64),
}

impl To {
    fn address(&self) -> Result<Address, String> {
        Ok(match self {
            To::Agent(a) => Address::To(Endpoint::Agent(AgentId(*a))),
            To::Mailbox(name) => {
                colony_core::mailbox::check_send_name(name)
                    .map_err(|_| format!("{name:?} is not a mailbox's name"))?;
                Address::To(Endpoint::Named(name.as_str().into()))
            }
            To::Topic(t) => {
                colony_core::mailbox::check_topic(t).map_err(|e| e.to_string())?;
                Address::Topic(t.as_str().into())
            }
            To::Team(t) => Address::Team(*t),
        })
    }
}

/// Messages a process sends, waiting their turn: sent one at a time, in order.
const OUTGOING: usize = 1024;

/// A process's side of the message bus (see the module's text), shared by its connection,
/// its reader and the tasks that carry its messages.
struct Messaging {
    /// It said `"messages": true` in its hello.
    wanted: bool,
    /// Done once, by whichever attempt binds it first; every other attempt waits for it,
    /// so that no task line goes before the agent line.
    bound: tokio::sync::OnceCell<()>,
    /// The agent it serves, once bound; never changes after.
    agent: OnceLock<AgentId>,
    bus: OnceLock<Arc<dyn Mail>>,
    /// Its sends, to the task that makes them in order.
    outgoing: OnceLock<tokio::sync::mpsc::Sender<(To, Bytes)>>,
    /// Lines telling it of sends refused, to the task that writes them: never written by
    /// a task the reader waits on, so a process that does not read cannot stall its own
    /// answers.
    refusals: OnceLock<tokio::sync::mpsc::Sender<String>>,
    /// The last batch it acknowledged.
    acked: tokio::sync::watch::Sender<u64>,
    /// The last batch written to it: an acknowledgement of a later one is of nothing yet.
    written: std::sync::atomic::AtomicU64,
    /// A batch was written and not acknowledged yet: it is busy, not idle.
    reading: std::sync::atomic::AtomicBool,
    /// Set when its stdout closed: it is gone.
    ended: tokio::sync::watch::Sender<bool>,
    /// Its connection's last use (milliseconds after `epoch`), touched by message work too.
    used: Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
}

impl Messaging {
    fn new(wanted: bool, epoch: std::time::Instant) -> Self {
        Self {
            wanted,
            bound: tokio::sync::OnceCell::new(),
            agent: OnceLock::new(),
            bus: OnceLock::new(),
            outgoing: OnceLock::new(),
            refusals: OnceLock::new(),
            acked: tokio::sync::watch::Sender::new(0),
            written: 0.into(),
            reading: false.into(),
            ended: tokio::sync::watch::Sender::new(false),
            used: Arc::default(),
            epoch,
        }
    }

    /// Message work is use: an idle timeout counts from it.
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.used.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tells the process a send was refused, without waiting: dropped (and logged) when
    /// the refusals not yet written fill their queue.
    fn refuse(&self, line: String) {
        match self.refusals.get().map(|r| r.try_send(line)) {
            Some(Ok(())) => {}
            _ => tracing::warn!("A process was not told of a refused send: it reads too slowly."),
        }
    }
}

/// How long one send of a process waits for room in a full mailbox before it is refused.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// Refusals not yet written to a process, at most.
const REFUSALS: usize = 256;

type Waiters = Arc<Mutex<HashMap<String, (oneshot::Sender<Outcome>, crate::Heartbeat)>>>;

/// Per agent that ran a task: its process, started once by whichever attempt comes first.
type Conns = Arc<Mutex<HashMap<AgentId, Arc<tokio::sync::OnceCell<Arc<Conn>>>>>>;

type Retired = Arc<Mutex<std::collections::HashSet<AgentId>>>;

/// One agent's live process.
struct Conn {
    stdin: tokio::sync::Mutex<ChildStdin>,
    messaging: Arc<Messaging>,
    waiting: Waiters,
    /// Set by the reader when the process's stdout closes: it is gone.
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Killed when an attempt is abandoned unanswered, when the process writes a line over
    /// [`MAX_LINE`] that names no attempt, and when the connection is dropped.
    child: Arc<Mutex<Child>>,
    /// Lists the process for `command::kill_all`, and kills it when the connection goes.
    _listed: crate::command::Group,
    /// When an attempt last began or ended, in milliseconds after the backend's epoch.
    used: Arc<std::sync::atomic::AtomicU64>,
}

impl Conn {
    fn touch(&self, epoch: std::time::Instant) {
        let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.used.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn busy(&self) -> bool {
        self.messaging
            .reading
            .load(std::sync::atomic::Ordering::Relaxed)
            || !self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }
}

/// Runs tasks on long-lived processes, one per agent (see the module documentation).
pub struct Process {
    options: Arc<ProcessOptions>,
    /// The runtime's message bus, once given.
    mail: Arc<OnceLock<Arc<dyn Mail>>>,
    conns: Conns,
    /// Agents retired from their pool (taken under `conns`' lock, after it): an attempt that
    /// reaches one after its retirement runs on a process of its own, stopped when it ends.
    retired: Retired,
    epoch: std::time::Instant,
    /// Whether the task that stops idle processes runs.
    sweeping: Arc<std::sync::atomic::AtomicBool>,
    spare: Arc<Spare>,
    /// Agents whose replacement process is starting after an alert.
    replacing: Retired,
    /// Processes replaced after an alert, for tests and reports.
    replaced: Arc<std::sync::atomic::AtomicU64>,
}

/// Started processes no agent has claimed yet, and how many more are being started.
#[derive(Default)]
struct Spare {
    ready: Mutex<Vec<Arc<Conn>>>,
    starting: std::sync::atomic::AtomicU32,
}

impl Spare {
    /// A live spare process, if one is ready.
    fn take(&self) -> Option<Arc<Conn>> {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = ready.pop() {
            if !conn.dead.load(std::sync::atomic::Ordering::Relaxed) {
                return Some(conn);
            }
        }
        None
    }

    /// Starts processes until `warm` are ready or starting.
    fn refill(self: &Arc<Self>, options: &Arc<ProcessOptions>, epoch: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let ready = {
            // Warm processes that died meanwhile are dropped, and replaced.
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            ready.retain(|c| !c.dead.load(Relaxed));
            ready.len() as u32
        };
        let wanted = options
            .warm
            .saturating_sub(ready + self.starting.load(Relaxed));
        for _ in 0..wanted {
            self.starting.fetch_add(1, Relaxed);
            let (spare, options) = (Arc::downgrade(self), options.clone());
            Spawner::spawn("process-warm", async move {
                let started = start(&options, epoch).await;
                let Some(spare) = spare.upgrade() else {
                    return;
                };
                spare.starting.fetch_sub(1, Relaxed);
                match started {
                    Ok(conn) => spare
                        .ready
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(conn),
                    Err(error) => {
                        tracing::warn!(program = %options.program, %error, "A warm process did not start.");
                    }
                }
            });
        }
    }
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
            mail: Arc::default(),
            conns: Arc::default(),
            retired: Arc::default(),
            epoch: std::time::Instant::now(),
            sweeping: Arc::default(),
            spare: Arc::default(),
            replacing: Arc::default(),
            replaced: Arc::default(),
        }
    }

    /// Processes replaced after a predictive alert so far.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Warm processes ready to be claimed now.
    pub fn warm(&self) -> usize {
        self.spare
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Starts, once, the task that stops processes idle for `idle_timeout`; it ends with the
    /// backend.
    fn sweep_idle(&self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        if self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let (conns, options, epoch) = (
            Arc::downgrade(&self.conns),
            self.options.clone(),
            self.epoch,
        );
        Spawner::spawn("process-hibernation", async move {
            let every = (idle / 4).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                let Some(conns) = conns.upgrade() else {
                    return;
                };
                let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                let asleep: Vec<Arc<Conn>> = {
                    let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
                    let mut asleep = Vec::new();
                    map.retain(|_, cell| {
                        let Some(conn) = cell.get() else {
                            return true;
                        };
                        let used = conn.used.load(std::sync::atomic::Ordering::Relaxed);
                        let idle = !conn.busy() && now.saturating_sub(used) >= idle_ms;
                        if idle {
                            asleep.push(conn.clone());
                        }
                        !idle
                    });
                    asleep
                };
                for conn in asleep {
                    Spawner::spawn("process-stop", stop(conn, options.stop_grace));
                }
            }
        });
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
        self.sweep_idle();
        let (options, conns, epoch) = (self.options.clone(), self.conns.clone(), self.epoch);
        let (spare, retired, mail) = (self.spare.clone(), self.retired.clone(), self.mail.clone());
        Execution::Running(Box::pin(async move {
            attempt(&options, &conns, &retired, &spare, &mail, epoch, task).await
        }))
    }

    fn attach_mail(&self, mail: Arc<dyn Mail>) {
        let _ = self.mail.set(mail);
    }

    fn retired(&self, agent: AgentId) {
        let cell = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(agent);
            conns.remove(&agent)
        };
        if let Some(conn) = cell.and_then(|c| c.get().cloned()) {
            Spawner::spawn("process-stop", stop(conn, self.options.stop_grace));
        }
    }

    fn reinstated(&self, agent: AgentId) {
        let _conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&agent);
    }

    /// Starts a new process for `agent` (a warm one if ready) and moves the agent onto it;
    /// the old process serves the attempts it holds and then stops. Nothing happens if the
    /// agent has no live process, or a replacement is already starting.
    fn alerted(&self, agent: AgentId) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.options.replace_on_alert {
            return;
        }
        let old = {
            let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            match conns.get(&agent).and_then(|c| c.get()) {
                Some(conn) if !conn.dead.load(Relaxed) => conn.clone(),
                _ => return,
            }
        };
        if !self
            .replacing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent)
        {
            return;
        }
        let (options, conns, retired, epoch) = (
            self.options.clone(),
            self.conns.clone(),
            self.retired.clone(),
            self.epoch,
        );
        let (spare, replacing, replaced, mail) = (
            self.spare.clone(),
            self.replacing.clone(),
            self.replaced.clone(),
            self.mail.clone(),
        );
        Spawner::spawn("process-replace", async move {
            let warm = spare.take();
            if options.warm > 0 {
                spare.refill(&options, epoch);
            }
            let fresh = match warm {
                Some(conn) => Ok(conn),
                None => start(&options, epoch).await,
            };
            match fresh {
                Ok(fresh) => {
                    // Moved only if the agent still runs on the process that alerted: not
                    // retired, hibernated or replaced after a death meanwhile.
                    let moved = {
                        let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
                        let current = map
                            .get(&agent)
                            .and_then(|c| c.get())
                            .is_some_and(|c| Arc::ptr_eq(c, &old));
                        let gone = retired
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&agent);
                        if current && !gone {
                            fresh.touch(epoch);
                            map.insert(
                                agent,
                                Arc::new(tokio::sync::OnceCell::new_with(Some(fresh.clone()))),
                            );
                            true
                        } else {
                            false
                        }
                    };
                    if moved {
                        // The new process reads the agent's mailbox now (the old one's
                        // reader is fenced out, its unacknowledged batch read here again).
                        bind(&fresh, agent, mail.get()).await;
                        replaced.fetch_add(1, Relaxed);
                        tracing::info!(%agent, program = %options.program, "Replaced a process after its health alert.");
                        stop(old, options.stop_grace).await;
                    } else {
                        stop(fresh, options.stop_grace).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%agent, program = %options.program, %error, "A replacement process did not start.");
                }
            }
            replacing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&agent);
        });
    }
}

/// Stops a process no agent uses any more: once the attempts it holds have ended, SIGTERM,
/// then SIGKILL if it has not exited within `grace`.
async fn stop(conn: Arc<Conn>, grace: Duration) {
    // Marked dead under the lock attempts register under, once none is registered: from then
    // on no attempt is handed to it.
    loop {
        {
            let waiting = conn.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.is_empty() || conn.dead.load(std::sync::atomic::Ordering::Relaxed) {
                conn.dead.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = conn.child.lock().unwrap_or_else(|p| p.into_inner()).id();
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        use nix::{sys::signal, unistd::Pid};
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGTERM);
    }
    // A grace too long to add is as good as none: wait for the exit.
    let now = tokio::time::Instant::now();
    let deadline = now
        .checked_add(grace)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
    loop {
        let exited = conn
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait()
            .map_or(true, |status| status.is_some());
        if exited {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = conn
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn attempt(
    options: &Arc<ProcessOptions>,
    conns: &Conns,
    retired: &Retired,
    spare: &Arc<Spare>,
    mail: &OnceLock<Arc<dyn Mail>>,
    epoch: std::time::Instant,
    task: Task,
) -> Outcome {
    // A process stopped (hibernated) between this attempt's finding it and registering on
    // it costs the attempt nothing: it looks again, once.
    let once = || try_attempt(options, conns, retired, spare, mail, epoch, &task);
    match once().await {
        Ok(outcome) => outcome,
        Err(Stopped) => once()
            .await
            .unwrap_or_else(|Stopped| Err(Error::retryable("the process exited"))),
    }
}

/// The process an attempt found was stopped before the attempt registered on it.
struct Stopped;

async fn try_attempt(
    options: &Arc<ProcessOptions>,
    conns: &Conns,
    retired: &Retired,
    spare: &Arc<Spare>,
    mail: &OnceLock<Arc<dyn Mail>>,
    epoch: std::time::Instant,
    task: &Task,
) -> Result<Outcome, Stopped> {
    let (cell, one_off) = {
        let mut map = conns.lock().unwrap_or_else(|p| p.into_inner());
        if retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&task.agent)
        {
            // Retired after this attempt was handed over: a process of its own, not kept.
            (Arc::default(), true)
        } else {
            let cell = map.entry(task.agent).or_default();
            // A dead process is replaced by a new one.
            if cell
                .get()
                .is_some_and(|c| c.dead.load(std::sync::atomic::Ordering::Relaxed))
            {
                *cell = Arc::default();
            }
            (cell.clone(), false)
        }
    };
    let cell: Arc<tokio::sync::OnceCell<Arc<Conn>>> = cell;
    let conn = match cell
        .get_or_try_init(|| async {
            // A warm process if one is ready, else a cold start; either way the pool refills.
            let warm = spare.take();
            if options.warm > 0 {
                spare.refill(options, epoch);
            }
            match warm {
                Some(conn) => Ok(conn),
                None => start(options, epoch).await,
            }
        })
        .await
    {
        Ok(conn) => conn.clone(),
        Err(e) => {
            let error = format!("process `{}`: {e}", options.program);
            return Ok(Err(Error::retryable(error)));
        }
    };
    conn.touch(epoch);
    if !one_off {
        bind(&conn, task.agent, mail.get()).await;
    }
    let id = format!("{}.{}", task.id.0, task.attempt);
    let (tx, rx) = oneshot::channel();
    {
        // Checked under the lock the reader clears when the process dies: an attempt is
        // either registered before that (and failed by it) or sees the process dead.
        let mut waiting = conn.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if conn.dead.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Stopped);
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
            return Ok(Err(Error::retryable(format!("the process is gone: {e}"))));
        }
        let _ = stdin.flush().await;
    }
    let outcome = rx
        .await
        .unwrap_or_else(|_| Err(Error::retryable("the process exited before answering")));
    conn.touch(epoch);
    if one_off {
        drop(_forget);
        Spawner::spawn("process-stop", stop(conn, options.stop_grace));
    }
    Ok(outcome)
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

/// `conn` serves `agent` from now on: if it asked for messages and there is a bus, it is
/// told which agent it is, reads the agent's mailbox and sends as the agent. Once per
/// process; a later call does nothing.
async fn bind(conn: &Arc<Conn>, agent: AgentId, bus: Option<&Arc<dyn Mail>>) {
    let m = &conn.messaging;
    let Some(bus) = bus.filter(|_| m.wanted) else {
        return;
    };
    // Whoever comes first binds; the others wait here until it has, so that their task
    // lines follow the agent line.
    m.bound.get_or_init(|| bind_once(conn, agent, bus)).await;
}

async fn bind_once(conn: &Arc<Conn>, agent: AgentId, bus: &Arc<dyn Mail>) {
    let m = &conn.messaging;
    let _ = m.agent.set(agent);
    let _ = m.bus.set(bus.clone());
    // Its sends are taken from now on, before it learns who it is and may start sending.
    let (tx, rx) = tokio::sync::mpsc::channel(OUTGOING);
    let _ = m.outgoing.set(tx);
    let (refusals, refused) = tokio::sync::mpsc::channel(REFUSALS);
    let _ = m.refusals.set(refusals);
    Spawner::spawn("process-send", sending(m.clone(), bus.clone(), agent, rx));
    Spawner::spawn(
        "process-refusals",
        tell_refusals(Arc::downgrade(conn), m.clone(), refused),
    );
    // Told first, before any batch: written under the same lock as every other line.
    let line = serde_json::json!({ "type": "agent", "agent": agent.0 }).to_string() + "\n";
    if !write_message_line(conn, &line).await {
        return;
    }
    match bus.open(agent) {
        Ok(letters) => {
            Spawner::spawn(
                "process-mail",
                forward(Arc::downgrade(conn), m.clone(), letters),
            );
        }
        Err(e) => tracing::warn!(%agent, error = %e, "The agent's mailbox could not be opened."),
    }
}

/// How long a line about messages may take to reach a process: one that does not read
/// its stdin that long is stopped, rather than held (with its connection) for ever.
const MESSAGE_WRITE: Duration = Duration::from_secs(30);

/// Writes a line about messages to the process within [`MESSAGE_WRITE`]; a process that
/// does not take it in time is stopped. `false` when it is gone.
async fn write_message_line(conn: &Conn, line: &str) -> bool {
    match tokio::time::timeout(MESSAGE_WRITE, write_line(conn, line)).await {
        Ok(written) => written,
        Err(_) => {
            tracing::warn!("A process read none of its stdin for {MESSAGE_WRITE:?}; stopping it.");
            conn.dead.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = conn
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_kill();
            false
        }
    }
}

/// Writes `line` to the process; `false` when it is gone.
async fn write_line(conn: &Conn, line: &str) -> bool {
    let mut stdin = conn.stdin.lock().await;
    if stdin.write_all(line.as_bytes()).await.is_err() {
        conn.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        return false;
    }
    let _ = stdin.flush().await;
    true
}

/// Hands the agent's mailbox to its process a batch at a time, each once the one before
/// was acknowledged; ends with the process (a batch unacknowledged goes back to the
/// mailbox with `letters`) or when another reader takes the mailbox over.
async fn forward(conn: std::sync::Weak<Conn>, m: Arc<Messaging>, letters: Box<dyn crate::Letters>) {
    forward_batches(conn, &m, letters).await;
    // However it ended, no batch of it is out any more.
    m.reading.store(false, std::sync::atomic::Ordering::Relaxed);
}

async fn forward_batches(
    conn: std::sync::Weak<Conn>,
    m: &Arc<Messaging>,
    mut letters: Box<dyn crate::Letters>,
) {
    let mut ended = m.ended.subscribe();
    let mut acked = m.acked.subscribe();
    let mut batch = 0u64;
    loop {
        // Biased: asking for the next batch acknowledges the last, which the process did
        // acknowledge even if it exited just after.
        let next = tokio::select! {
            biased;
            next = letters.next() => next,
            _ = ended.wait_for(|e| *e) => return,
        };
        let Some(letters_in) = next else {
            return;
        };
        batch += 1;
        let messages: Vec<serde_json::Value> = letters_in.iter().map(Letter::to_json).collect();
        let line = serde_json::json!({ "type": "messages", "batch": batch, "messages": messages })
            .to_string()
            + "\n";
        let Some(conn) = conn.upgrade() else {
            return;
        };
        m.reading.store(true, std::sync::atomic::Ordering::Relaxed);
        m.written.store(batch, std::sync::atomic::Ordering::Relaxed);
        m.touch();
        if !write_message_line(&conn, &line).await {
            return;
        }
        drop(conn);
        tokio::select! {
            biased;
            read = acked.wait_for(|a| *a >= batch) => if read.is_err() { return },
            _ = ended.wait_for(|e| *e) => return,
        }
        m.reading.store(false, std::sync::atomic::Ordering::Relaxed);
        m.touch();
    }
}

/// The `refused` line for a send to `to`.
fn refused_line(to: &To, error: &str) -> String {
    let shown = match to {
        To::Agent(a) => serde_json::json!({ "agent": a }),
        To::Mailbox(n) => serde_json::json!({ "mailbox": n }),
        To::Topic(t) => serde_json::json!({ "topic": t }),
        To::Team(t) => serde_json::json!({ "team": t }),
    };
    serde_json::json!({ "type": "refused", "to": shown, "error": error }).to_string() + "\n"
}

/// Sends what the process wrote, in order, as its agent, each waiting at most
/// [`SEND_WAIT`] for room; a send refused is told to the process (through
/// [`tell_refusals`]). Ends with the process.
async fn sending(
    m: Arc<Messaging>,
    bus: Arc<dyn Mail>,
    agent: AgentId,
    mut outgoing: tokio::sync::mpsc::Receiver<(To, Bytes)>,
) {
    let mut ended = m.ended.subscribe();
    loop {
        let (to, body) = tokio::select! {
            biased;
            next = outgoing.recv() => match next {
                Some(next) => next,
                None => return,
            },
            // Gone, with nothing queued (`biased`: what it wrote before it went is sent).
            _ = ended.wait_for(|e| *e) => return,
        };
        m.touch();
        let sent = match to.address() {
            Ok(address) => {
                match tokio::time::timeout(SEND_WAIT, bus.send(agent, address, body)).await {
                    Ok(sent) => sent.map(|_| ()),
                    Err(_) => Err(format!(
                        "a mailbox it reaches stayed full for {} s (to a topic or team, the copies before it were put)",
                        SEND_WAIT.as_secs()
                    )),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(error) = sent {
            m.refuse(refused_line(&to, &error));
        }
    }
}

/// Writes the refusals to the process, on a task of their own: a process that does not
/// read its stdin holds up only this. Ends with the process.
async fn tell_refusals(
    conn: std::sync::Weak<Conn>,
    m: Arc<Messaging>,
    mut lines: tokio::sync::mpsc::Receiver<String>,
) {
    let mut ended = m.ended.subscribe();
    loop {
        let line = tokio::select! {
            biased;
            _ = ended.wait_for(|e| *e) => return,
            next = lines.recv() => match next {
                Some(line) => line,
                None => return,
            },
        };
        let Some(conn) = conn.upgrade() else {
            return;
        };
        if !write_message_line(&conn, &line).await {
            return;
        }
    }
}

/// Starts a process and waits for its hello.
async fn start(options: &ProcessOptions, epoch: std::time::Instant) -> Result<Arc<Conn>, String> {
    let mut command = tokio::process::Command::new(&options.program);
    if let Some(dir) = &options.workdir {
        command.current_dir(dir);
    }
    command
        .args(&options.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::command::clean_env(command.as_std_mut(), &options.env_allow, &options.env);
    let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = Lines::new(child.stdout.take().ok_or("no stdout")?, MAX_LINE);
    if let Some(stderr) = child.stderr.take() {
        let program = options.program.clone();
        Spawner::spawn("process-stderr", async move {
            // Only logged: a line is kept up to what the log shows of it.
            let mut lines = Lines::new(stderr, SHOWN);
            loop {
                match lines.next().await {
                    Ok(Line::Full(line)) => {
                        tracing::info!(program = %program, "{}", String::from_utf8_lossy(line));
                    }
                    Ok(Line::TooLong(start)) => {
                        let start = String::from_utf8_lossy(start);
                        tracing::info!(program = %program, "{start}… (a line over {SHOWN} bytes, cut)");
                        if lines.skip_line().await.is_err() {
                            break;
                        }
                    }
                    Ok(Line::End) | Err(_) => break,
                }
            }
        });
    }
    // The hello comes first.
    let hello = tokio::time::timeout(options.hello_timeout, lines.next())
        .await
        .map_err(|_| format!("no hello within {:?}", options.hello_timeout))?
        .map_err(|e| format!("reading its hello: {e}"))?;
    let hello = match hello {
        Line::Full(line) => line,
        Line::TooLong(_) => {
            return Err(format!(
                "its first line is over {MAX_LINE} bytes: not a hello"
            ));
        }
        Line::End => return Err("it exited before saying hello".into()),
    };
    let wants_messages = match serde_json::from_slice::<Message>(hello) {
        Ok(Message::Hello {
            protocol: PROTOCOL,
            messages,
        }) => messages,
        Ok(Message::Hello { protocol, .. }) => {
            return Err(format!(
                "it speaks protocol {protocol}; colony speaks {PROTOCOL}"
            ));
        }
        _ => {
            return Err(format!("its first line is not a hello: {:?}", shown(hello)));
        }
    };
    let messaging = Arc::new(Messaging::new(wants_messages, epoch));
    let messaging_used = messaging.used.clone();
    let waiting: Waiters = Arc::default();
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed = crate::command::Group::single(child.id());
    let child = Arc::new(Mutex::new(child));
    let reader = Reader {
        messaging: messaging.clone(),
        waiting: waiting.clone(),
        dead: dead.clone(),
        child: Arc::downgrade(&child),
        program: options.program.clone(),
    };
    Spawner::spawn("process-reader", reader.run(lines));
    let conn = Arc::new(Conn {
        stdin: tokio::sync::Mutex::new(stdin),
        messaging,
        waiting,
        dead,
        _listed: listed,
        child,
        used: messaging_used,
    });
    conn.touch(epoch);
    Ok(conn)
}

/// Reads a process's stdout and hands each answer to the attempt waiting for it.
struct Reader {
    messaging: Arc<Messaging>,
    waiting: Waiters,
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Weak: once the connection is gone, its process was killed with it.
    child: std::sync::Weak<Mutex<Child>>,
    program: String,
}

impl Reader {
    async fn run(self, mut lines: Lines<tokio::process::ChildStdout>) {
        loop {
            match lines.next().await {
                Ok(Line::Full(line)) => {
                    if let Some(send) = self.line(line)
                        && let Some(out) = self.messaging.outgoing.get()
                    {
                        // Queued behind its earlier sends, in order; never waited for here,
                        // so that its answers are read whatever its sends wait for.
                        match out.try_send(send) {
                            Ok(()) => {}
                            Err(tokio::sync::mpsc::error::TrySendError::Full((to, _))) => {
                                self.messaging.refuse(refused_line(
                                    &to,
                                    &format!("{OUTGOING} of its sends are waiting already"),
                                ));
                            }
                            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
                Ok(Line::TooLong(start)) => {
                    if !self.too_long(start) {
                        break;
                    }
                    if lines.skip_line().await.is_err() {
                        break;
                    }
                }
                Ok(Line::End) | Err(_) => break,
            }
        }
        // Stdout closed (or was given up): the process is gone, and every attempt it held
        // fails with it.
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        waiting.clear();
        drop(waiting);
        self.messaging.ended.send_replace(true);
    }

    /// Handles one line; a message to send is handed back, to be sent in turn.
    fn line(&self, line: &[u8]) -> Option<(To, Bytes)> {
        let message = match serde_json::from_slice::<Message>(line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(program = %self.program, error = %e, line = %shown(line), "Not a protocol line.");
                return None;
            }
        };
        let m = &self.messaging;
        let unbound = |what: &str| {
            tracing::warn!(program = %self.program, "A process {what} before it was told its agent (or without asking for messages in its hello): ignored.");
        };
        if matches!(
            message,
            Message::Read { .. } | Message::Send { .. } | Message::Subscribe { .. }
        ) {
            m.touch();
        }
        match message {
            Message::Read { batch } => {
                let batch = batch.min(m.written.load(std::sync::atomic::Ordering::Relaxed));
                m.acked.send_if_modified(|a| {
                    let newer = batch > *a;
                    if newer {
                        *a = batch;
                    }
                    newer
                });
                return None;
            }
            Message::Send { to, body } => {
                if m.outgoing.get().is_none() {
                    unbound("sent a message");
                    return None;
                }
                return Some((to, Bytes::from(body)));
            }
            Message::Subscribe { topic } | Message::Unsubscribe { topic }
                if m.agent.get().is_none() || m.bus.get().is_none() =>
            {
                unbound(&format!("subscribed to or left topic {topic:?}"));
                return None;
            }
            Message::Subscribe { topic } => {
                if let (Some(agent), Some(bus)) = (m.agent.get(), m.bus.get())
                    && let Err(e) = bus.subscribe(*agent, &topic)
                {
                    tracing::warn!(program = %self.program, %agent, error = %e, "A subscription was refused.");
                }
                return None;
            }
            Message::Unsubscribe { topic } => {
                if let (Some(agent), Some(bus)) = (m.agent.get(), m.bus.get()) {
                    bus.unsubscribe(*agent, &topic);
                }
                return None;
            }
            _ => {}
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
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
            Message::Hello { .. }
            | Message::Read { .. }
            | Message::Send { .. }
            | Message::Subscribe { .. }
            | Message::Unsubscribe { .. } => {}
        }
        None
    }

    /// A line over [`MAX_LINE`], of which `start` was read. Fails the attempt it names and
    /// returns true (the rest of the line is to be skipped); when it names none held, stops the
    /// process, fails every attempt it held and returns false.
    fn too_long(&self, start: &[u8]) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, _)) =
            attempt_id(&start[..start.len().min(SHOWN)]).and_then(|id| waiting.remove(&id))
        {
            let _ = tx.send(Err(Error::fatal(format!(
                "process `{}` answered with a line over {MAX_LINE} bytes, the limit of a line",
                self.program
            ))));
            return true;
        }
        tracing::warn!(program = %self.program, start = %shown(start), "A line over {MAX_LINE} bytes naming no attempt; stopping the process.");
        for (_, (tx, _)) in waiting.drain() {
            let _ = tx.send(Err(Error::retryable(format!(
                "process `{}` wrote a line over {MAX_LINE} bytes, the limit of a line, and was stopped",
                self.program
            ))));
        }
        self.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(child) = self.child.upgrade() {
            let _ = child.lock().unwrap_or_else(|p| p.into_inner()).start_kill();
        }
        false
    }
}

/// The attempt id a protocol line names in its first bytes (its top-level `"id":"7.1"`), if
/// it does. Only the object's own `id` counts: one inside its output is someone else's.
fn attempt_id(start: &[u8]) -> Option<String> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < start.len() {
        match start[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let end = string_end(start, i + 1)?;
                if depth == 1
                    && &start[i + 1..end] == b"id"
                    && let Some(id) = string_after_colon(&start[end + 1..])
                {
                    return Some(id);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where the JSON string whose text starts at `from` ends (its closing quote).
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    while from < text.len() {
        match text[from] {
            b'\\' => from += 2,
            b'"' => return Some(from),
            _ => from += 1,
        }
    }
    None
}

/// The string value in `: "value"` at the start of `rest` (without escapes, as ids are).
fn string_after_colon(rest: &[u8]) -> Option<String> {
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest.get(end) == Some(&b'"'))
        .then(|| std::str::from_utf8(&rest[..end]).ok().map(str::to_owned))
        .flatten()
}

/// The start of a line, for a message or the log.
fn shown(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    if line.len() > SHOWN {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

/// What [`Lines::next`] read.
#[derive(Debug)]
enum Line<'a> {
    /// A whole line, without its newline (or the last bytes before the end).
    Full(&'a [u8]),
    /// The first `max` bytes of a longer line; the rest is still unread.
    TooLong(&'a [u8]),
    End,
}

/// Longest line read from a process's stdout, in bytes: the most memory its answers hold in
/// colony at once, as large as a task's output may be. (Its stderr lines are kept up to
/// 4 KiB, what the log shows of them.)
pub const MAX_LINE: usize = 16 << 20;

/// Capacity a line buffer keeps between lines; a larger one is freed after its line.
const KEPT_LINE_CAPACITY: usize = 64 << 10;

/// Lines of at most `max` bytes: [`MAX_LINE`] for answers, less for what is only logged.
struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(from: R, max: usize) -> Self {
        Self {
            reader: BufReader::new(from),
            line: Vec::new(),
            max,
        }
    }

    async fn next(&mut self) -> std::io::Result<Line<'_>> {
        self.line.clear();
        // After one long answer, its buffer is let go rather than held for the life of the
        // process: many agents each keeping 16 MiB would add up.
        if self.line.capacity() > KEPT_LINE_CAPACITY {
            self.line = Vec::new();
        }
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(if self.line.is_empty() {
                    Line::End
                } else {
                    Line::Full(&self.line)
                });
            }
            let (end, newline) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            if self.line.len() + end > self.max {
                let room = self.max - self.line.len();
                self.line.extend_from_slice(&available[..room]);
                self.reader.consume(room);
                return Ok(Line::TooLong(&self.line));
            }
            self.line.extend_from_slice(&available[..end]);
            self.reader.consume(end + usize::from(newline));
            if newline {
                return Ok(Line::Full(&self.line));
            }
        }
    }

    /// Reads past the rest of the current line without keeping it.
    async fn skip_line(&mut self) -> std::io::Result<()> {
        self.line = Vec::new();
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(());
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.reader.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = available.len();
                    self.reader.consume(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_may_send_to_another_processs_endpoint_but_not_to_a_bad_name() {
        let to = |json: &str| serde_json::from_str::<To>(json).unwrap().address();
        assert_eq!(
            to(r#"{"mailbox": "cluster:node-1/asker"}"#),
            Ok(Address::To(Endpoint::Named("cluster:node-1/asker".into())))
        );
        assert!(to(r#"{"mailbox": "plain/name"}"#).is_ok());
        let refused = to(r#"{"mailbox": "cluster:nowhere"}"#).unwrap_err();
        assert!(refused.contains("is not a mailbox's name"), "{refused}");
    }
    use colony_core::TaskId;

    /// A protocol-speaking agent in Python: echoes payloads, fails on request, dies on request.
    const AGENT: &str = r#"
import json, sys, os, signal, time
if "--stubborn" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"type": "hello", "protocol": 1}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    p = m["payload"] or {}
    if p.get("die"):
        sys.exit(3)
    if p.get("hang"):
        time.sleep(60)
    if p.get("sleep"):
        time.sleep(p["sleep"])
    if p.get("huge"):
        big = "x" * (17 << 20)
        print(json.dumps({"type": "result", "id": m["id"], "output": big}), flush=True)
        continue
    print(json.dumps({"type": "progress", "id": m["id"]}), flush=True)
    if p.get("fail"):
        print(json.dumps({"type": "error", "id": m["id"], "message": "asked to fail", "retryable": False}), flush=True)
    else:
        print(json.dumps({"type": "result", "id": m["id"], "output": {"pid": os.getpid(), "echo": p}}), flush=True)
"#;

    fn agent() -> Process {
        Process::new(options())
    }

    fn options() -> ProcessOptions {
        let mut o = ProcessOptions::new("python3");
        o.args = vec!["-c".into(), AGENT.into()];
        o
    }

    /// Whether process `pid` still exists (a zombie not yet reaped counts as gone).
    fn alive(pid: u64) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
    }

    /// Waits up to `within` for process `pid` to be gone.
    async fn gone(pid: u64, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while alive(pid) {
            if tokio::time::Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn a_retired_agents_process_finishes_its_attempt_then_stops() {
        let p = agent();
        let pid = pid(&run(&p, 0, "{}").await.unwrap());
        let other = pid_of(&run(&p, 1, "{}").await);
        // An attempt under way when the agent is retired finishes where it runs.
        let slow = run(&p, 0, r#"{"sleep": 0.4}"#);
        let retire = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            p.retired(AgentId(0));
        };
        let (out, ()) = tokio::join!(slow, retire);
        assert_eq!(pid_of(&out), pid, "the attempt ended on its process");
        assert!(
            gone(pid, Duration::from_secs(5)).await,
            "stopped after its attempt"
        );
        assert!(alive(other), "the other agent's process serves on");
        assert_eq!(p.live(), 1);
    }

    #[tokio::test]
    async fn an_attempt_that_reaches_a_retired_agent_runs_on_a_process_that_is_not_kept() {
        let p = agent();
        let before = pid(&run(&p, 0, "{}").await.unwrap());
        // Handed over before the retirement, first polled after it.
        p.retired(AgentId(0));
        let late = pid(&run(&p, 0, "{}").await.unwrap());
        assert_ne!(before, late, "not the stopped process");
        assert_eq!(p.live(), 0, "none kept for a retired agent");
        assert!(
            gone(late, Duration::from_secs(5)).await,
            "stopped after its attempt"
        );
        assert!(gone(before, Duration::from_secs(5)).await);
        // Back in its pool, it has a process of its own again.
        p.reinstated(AgentId(0));
        let again = pid(&run(&p, 0, "{}").await.unwrap());
        assert_eq!(p.live(), 1);
        assert_eq!(pid(&run(&p, 0, "{}").await.unwrap()), again);
    }

    #[tokio::test]
    async fn an_alert_moves_the_agent_onto_a_new_process_and_the_old_one_stops_after_its_attempt() {
        let p = agent();
        let old = pid(&run(&p, 0, "{}").await.unwrap());
        // An attempt under way when the alert comes finishes on the old process.
        let slow = run(&p, 0, r#"{"sleep": 0.5}"#);
        let alert = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            p.alerted(AgentId(0));
            // Alerts while the replacement starts change nothing more.
            p.alerted(AgentId(0));
        };
        let (out, ()) = tokio::join!(slow, alert);
        assert_eq!(pid_of(&out), old, "the attempt ended where it ran");
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while p.replaced() == 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(p.replaced(), 1);
        let new = pid(&run(&p, 0, "{}").await.unwrap());
        assert_ne!(new, old, "the agent runs on its replacement");
        assert!(
            gone(old, Duration::from_secs(5)).await,
            "the old process stopped"
        );
        assert_eq!(p.live(), 1);
        // An agent without a process has nothing to replace.
        p.alerted(AgentId(7));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!((p.replaced(), p.live()), (1, 1));
    }

    #[tokio::test]
    async fn with_replace_on_alert_off_an_alert_changes_nothing() {
        let mut o = options();
        o.replace_on_alert = false;
        let p = Process::new(o);
        let before = pid(&run(&p, 0, "{}").await.unwrap());
        p.alerted(AgentId(0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pid(&run(&p, 0, "{}").await.unwrap()), before);
        assert_eq!(p.replaced(), 0);
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut o = options();
        o.args.push("--stubborn".into());
        o.stop_grace = Duration::from_millis(300);
        let p = Process::new(o);
        let pid = pid(&run(&p, 0, "{}").await.unwrap());
        let asked = tokio::time::Instant::now();
        p.retired(AgentId(0));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(alive(pid), "SIGTERM ignored: alive within the grace");
        assert!(gone(pid, Duration::from_secs(5)).await, "killed after it");
        assert!(asked.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn an_idle_process_hibernates_and_its_agents_next_task_starts_another() {
        let mut o = options();
        o.idle_timeout = Some(Duration::from_millis(200));
        let p = Process::new(o);
        let first = pid(&run(&p, 0, "{}").await.unwrap());
        // Busy for longer than the idle timeout: not idle.
        let busy = pid(&run(&p, 0, r#"{"sleep": 0.5}"#).await.unwrap());
        assert_eq!(
            first, busy,
            "an attempt longer than idle-timeout keeps its process"
        );
        assert!(
            gone(first, Duration::from_secs(5)).await,
            "hibernated once idle"
        );
        assert_eq!(p.live(), 0);
        let next = pid(&run(&p, 0, "{}").await.unwrap());
        assert_ne!(first, next, "woken by work: a new process");
    }

    #[tokio::test]
    async fn warm_processes_serve_new_agents_first_tasks_and_are_replaced() {
        let mut o = options();
        o.warm = 2;
        let p = Process::new(o);
        run(&p, 0, "{}").await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while p.warm() < 2 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.warm(), 2, "the pool filled after its first task");
        let spares: Vec<u64> = p
            .spare
            .ready
            .lock()
            .unwrap()
            .iter()
            .map(|c| u64::from(c.child.lock().unwrap().id().unwrap()))
            .collect();
        let claimed = pid(&run(&p, 1, "{}").await.unwrap());
        assert!(spares.contains(&claimed), "agent 1 took a warm process");
        assert_eq!(
            pid(&run(&p, 1, "{}").await.unwrap()),
            claimed,
            "and keeps it"
        );
        while p.warm() < 2 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            (p.warm(), p.live()),
            (2, 2),
            "refilled; spares are not agents'"
        );
    }

    fn pid_of(out: &Outcome) -> u64 {
        pid(out.as_ref().unwrap())
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
    async fn an_answer_over_the_line_limit_fails_its_attempt_and_the_process_serves_on() {
        let p = agent();
        let first = pid(&run(&p, 0, "{}").await.unwrap());
        let err = run(&p, 0, r#"{"huge":true}"#).await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains(&format!("over {MAX_LINE} bytes")),
            "{err}"
        );
        // The rest of the line was skipped: the next answer is read whole, from the same process.
        assert_eq!(pid(&run(&p, 0, "{}").await.unwrap()), first);
    }

    #[tokio::test]
    async fn lines_are_cut_at_the_limit() {
        let text = [
            b"short\n".to_vec(),
            vec![b'y'; MAX_LINE + 10],
            b"\nafter\nlast".to_vec(),
        ]
        .concat();
        let mut lines = Lines::new(&text[..], MAX_LINE);
        assert!(matches!(lines.next().await.unwrap(), Line::Full(b"short")));
        match lines.next().await.unwrap() {
            Line::TooLong(start) => assert_eq!(start.len(), MAX_LINE),
            other => panic!("{other:?}"),
        }
        lines.skip_line().await.unwrap();
        assert!(matches!(lines.next().await.unwrap(), Line::Full(b"after")));
        assert!(matches!(lines.next().await.unwrap(), Line::Full(b"last")));
        assert!(matches!(lines.next().await.unwrap(), Line::End));
        // A line of exactly the limit is whole.
        let text = [vec![b'z'; MAX_LINE], b"\n".to_vec()].concat();
        let mut lines = Lines::new(&text[..], MAX_LINE);
        assert!(matches!(lines.next().await.unwrap(), Line::Full(l) if l.len() == MAX_LINE));
        assert_eq!(
            attempt_id(br#"{"type":"result", "id" : "7.1","output":"#),
            Some("7.1".into())
        );
        assert_eq!(attempt_id(br#"{"type":"result","output":"xxxx"#), None);
        // An `id` inside the output, or a value "id", is not the line's.
        assert_eq!(
            attempt_id(br#"{"type":"result","output":{"id":"3.1","x":"#),
            None
        );
        assert_eq!(
            attempt_id(br#"{"type":"id","note":"a \"id\": here","id":"9.2","output":"#),
            Some("9.2".into())
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
