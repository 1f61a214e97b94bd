//! Agents: anything that takes a task and returns a result.
//!
//! An [`Agent`] is shared by every agent of its kind; the registry entry of one agent is a few
//! bytes in the runtime, and [`Task`] tells the handler which agent and which attempt it is
//! serving. A handler that finishes at once returns [`Execution::Done`] and costs no
//! allocation; one that waits returns [`Execution::Running`] with a future the runtime polls.
//!
//! ```
//! use colony_agents::{Agent, Execution, Task, from_fn};
//!
//! let upper = from_fn(|task: &Task| Ok(task.payload.to_ascii_uppercase().into()));
//! # let task = Task::new(colony_core::TaskId(1), 1, colony_core::AgentId(0), "\"hi\"".into());
//! match upper.handle(task) {
//!     Execution::Done(Ok(out)) => assert_eq!(&out[..], b"\"HI\""),
//!     _ => unreachable!(),
//! }
//! ```

pub mod command;
pub mod heartbeat;
pub mod http;
pub mod presets;
pub mod process;
pub mod sim;
pub mod spawner;

pub use heartbeat::{Beats, Heartbeat};

pub use colony_core::agent::AgentSpec;

use bytes::Bytes;
use colony_core::{AgentId, TaskId};
use std::{fmt, future::Future, pin::Pin, sync::Arc};

/// One attempt of a task, as an agent sees it.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: TaskId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The agent serving this attempt.
    pub agent: AgentId,
    /// The task's JSON payload.
    pub payload: Bytes,
    /// Tells the runtime the agent is alive while a long attempt runs. An agent silent for
    /// the health's `failed-after` (10 s by default) while it holds an attempt is declared
    /// failed and replaced, and its attempts retried.
    pub heartbeat: Heartbeat,
    /// The runtime's message bus as this agent sees it: send as the agent, subscribe it to
    /// topics, read its mailbox.
    pub mail: AgentMail,
}

impl Task {
    /// An attempt whose heartbeats go nowhere: for calling an agent outside a runtime.
    pub fn new(id: TaskId, attempt: u32, agent: AgentId, payload: Bytes) -> Self {
        Self {
            id,
            attempt,
            agent,
            payload,
            heartbeat: Heartbeat::detached(),
            mail: AgentMail::detached(agent),
        }
    }

    /// This attempt, its agent reaching the messages of `mail`.
    pub fn with_mail(mut self, mail: Arc<dyn Mail>) -> Self {
        self.mail = AgentMail::new(self.agent, mail);
        self
    }
}

/// The message bus as one agent sees it, handed to it with every attempt
/// ([`Task::mail`]): what it sends is from the agent, what it reads is the agent's own
/// mailbox, which outlives the agent's restarts.
///
/// A mailbox has one reader at a time: [`AgentMail::open`] fences out the agent's earlier
/// reader (an attempt still running, or a `process` agent's own), and the batch that reader
/// had not acknowledged is read again first. An agent whose pool runs several attempts at
/// once on one worker (`concurrency` above 1) should read its mailbox from one of them
/// only: each `open` takes the mailbox from the others, whose acknowledgements then fail. A reader dropped with its batch unacknowledged
/// (its attempt failed, panicked or timed out) gives the batch back, so a crash loses no
/// message: acknowledge a batch only once what it asked for is done.
///
/// ```
/// use colony_agents::{Agent, Execution, Task, from_fn};
///
/// // Answers with how many messages were waiting for it.
/// let counter = from_fn(|task: &Task| {
///     let mut inbox = task.mail.open().map_err(colony_agents::Error::retryable)?;
///     let n = inbox.try_next().map_or(0, |batch| batch.len());
///     inbox.ack();
///     Ok(n.to_string().into())
/// });
/// # let task = Task::new(colony_core::TaskId(1), 1, colony_core::AgentId(0), "{}".into());
/// // Outside a runtime there is no bus: the attempt fails, retryably.
/// assert!(matches!(counter.handle(task), Execution::Done(Err(_))));
/// ```
#[derive(Clone)]
pub struct AgentMail {
    agent: AgentId,
    mail: Option<Arc<dyn Mail>>,
}

impl fmt::Debug for AgentMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMail")
            .field("agent", &self.agent)
            .field("attached", &self.mail.is_some())
            .finish()
    }
}

/// Why [`AgentMail`] refuses outside a runtime.
const NO_BUS: &str = "no message bus: the agent is not running in a runtime";

impl AgentMail {
    /// `agent`'s view of `mail`.
    pub fn new(agent: AgentId, mail: Arc<dyn Mail>) -> Self {
        Self {
            agent,
            mail: Some(mail),
        }
    }

    /// No bus: every call is refused (an agent called outside a runtime).
    pub fn detached(agent: AgentId) -> Self {
        Self { agent, mail: None }
    }

    /// Whether there is a bus behind this view.
    pub fn is_attached(&self) -> bool {
        self.mail.is_some()
    }

    /// Sends `body` from this agent to every mailbox `to` reaches, waiting at full ones (a
    /// full mailbox pushes back; nothing is dropped): how many copies were put.
    pub fn send(
        &self,
        to: colony_core::mailbox::Address,
        body: impl Into<Bytes>,
    ) -> MailFuture<'static, Result<u32, String>> {
        match &self.mail {
            Some(mail) => mail.send(self.agent, to, body.into()),
            None => Box::pin(std::future::ready(Err(NO_BUS.to_owned()))),
        }
    }

    /// This agent hears what is published on `topic` from now on, across its restarts.
    pub fn subscribe(&self, topic: &str) -> Result<(), String> {
        match &self.mail {
            Some(mail) => mail.subscribe(self.agent, topic),
            None => Err(NO_BUS.to_owned()),
        }
    }

    pub fn unsubscribe(&self, topic: &str) {
        if let Some(mail) = &self.mail {
            mail.unsubscribe(self.agent, topic);
        }
    }

    /// Opens this agent's mailbox as its only reader (see the type's text).
    pub fn open(&self) -> Result<Box<dyn Letters>, String> {
        match &self.mail {
            Some(mail) => mail.open(self.agent),
            None => Err(NO_BUS.to_owned()),
        }
    }
}

/// Why an attempt did not produce an output. The variant is the retry decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Worth another attempt, possibly on another agent (a timeout, a 503, a flaky tool).
    #[error("{0}")]
    Retryable(Arc<str>),
    /// Another attempt would fail the same way (bad input, a missing program).
    #[error("{0}")]
    Fatal(Arc<str>),
}

impl Error {
    pub fn retryable(message: impl Into<Arc<str>>) -> Self {
        Self::Retryable(message.into())
    }

    pub fn fatal(message: impl Into<Arc<str>>) -> Self {
        Self::Fatal(message.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// The result of one attempt: the output (JSON text) or why there is none.
pub type Outcome = Result<Bytes, Error>;

/// An attempt still in progress.
pub type Running = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What [`Agent::handle`] returns.
pub enum Execution {
    /// Finished while handling: no future, no allocation.
    Done(Outcome),
    /// Still going; the runtime polls it, bounded by the task's timeout.
    Running(Running),
}

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Execution::Done(outcome) => f.debug_tuple("Done").field(outcome).finish(),
            Execution::Running(_) => f.write_str("Running"),
        }
    }
}

/// Runs tasks for every agent of one kind. A panic in `handle` or in the future it returns is
/// a crash of that agent: the runtime catches it, replaces the agent and retries the task.
pub trait Agent: Send + Sync + 'static {
    fn handle(&self, task: Task) -> Execution;

    /// Whether every `handle` call answers inside itself (`Execution::Done`), computing its
    /// answer and doing nothing an attempt run again would repeat. The runtime then asks
    /// these agents for a decision's ballots inline, in the dispatcher's turn that seats
    /// them, with one journal write for the whole decision rather than a task per ballot
    /// (`colony_runtime::decision`). Such a `handle` runs on the dispatcher's thread: it must
    /// not block, wait for the runtime or submit tasks, and may be asked the same question
    /// twice. Each answer is asked once: an error, retryable or not, is a silent ballot (a
    /// ballot task would be retried), and a panic is not a crash of the agent (nothing is
    /// restarted). An agent that says so and then answers with `Execution::Running` casts no
    /// ballot (its future is dropped unpolled). Its task's heartbeat is detached: the answer
    /// is due before the dispatcher's turn ends, so no beat could be watched meanwhile.
    fn answers_inline(&self) -> bool {
        false
    }

    /// `agent` was retired from its pool: it gets no more tasks, and what it runs finishes
    /// where it is. A backend that keeps something per agent (the `process` backend's
    /// process) lets it go. Called on the dispatcher's thread: it must not block.
    fn retired(&self, _agent: colony_core::AgentId) {}

    /// `agent`, retired earlier, is back in its pool.
    fn reinstated(&self, _agent: colony_core::AgentId) {}

    /// The runtime predicts that `agent` is failing: its response times rose over its
    /// baseline by the alert margin (`health:alert`). A backend that keeps something per
    /// agent may replace it before it fails (the `process` backend starts a new process and
    /// moves the agent onto it). Called on the dispatcher's thread: it must not block.
    fn alerted(&self, _agent: colony_core::AgentId) {}

    /// The runtime's message bus, given once when the runtime starts: a backend whose
    /// agents read and send messages (the `process` backend, for processes that ask for
    /// them) keeps it. Called before any task.
    fn attach_mail(&self, _mail: Arc<dyn Mail>) {}
}

/// A future a [`Mail`] call returns.
pub type MailFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The runtime's message bus as a backend sees it (see `colony_runtime::messages`): agents'
/// mailboxes, read in acknowledged batches, topics and teams.
pub trait Mail: Send + Sync + 'static {
    /// Sends `body` from agent `from` to every mailbox `to` reaches, waiting at full ones:
    /// how many copies were put, or why none could be.
    fn send(
        &self,
        from: colony_core::AgentId,
        to: colony_core::mailbox::Address,
        body: Bytes,
    ) -> MailFuture<'static, Result<u32, String>>;

    /// `agent` hears what is published on `topic` from now on.
    fn subscribe(&self, agent: colony_core::AgentId, topic: &str) -> Result<(), String>;

    fn unsubscribe(&self, agent: colony_core::AgentId, topic: &str);

    /// Opens `agent`'s mailbox as its only reader (an older reader is fenced out, and what
    /// it had not acknowledged is read here first).
    fn open(&self, agent: colony_core::AgentId) -> Result<Box<dyn Letters>, String>;
}

/// The reader of one agent's mailbox.
pub trait Letters: Send {
    /// Acknowledges the batch before, then waits for the next one; `None` once the mailbox
    /// closed or another reader took it over. Dropped with a batch unacknowledged, the batch
    /// goes back to the mailbox.
    fn next(&mut self) -> MailFuture<'_, Option<Vec<Letter>>>;

    /// Like [`Letters::next`], without waiting: an empty batch when nothing waits.
    fn try_next(&mut self) -> Option<Vec<Letter>>;

    /// Acknowledges the batch taken last: its messages leave the mailbox for good. `false`
    /// when they did not: another reader opened the mailbox since (the batch is read again
    /// there) or it closed (the batch went back to its senders); this reader reads nothing
    /// more.
    fn ack(&mut self) -> bool;
}

/// A message as a backend hands it to its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Letter {
    pub from: colony_core::mailbox::Endpoint,
    pub to: colony_core::mailbox::Address,
    pub body: Bytes,
    /// For a message handed back to its sender: the mailbox it could not be read in, and why.
    pub returned: Option<(colony_core::mailbox::Endpoint, Arc<str>)>,
}

impl Letter {
    /// The message as JSON, as a `process` agent and an HTTP reader get it:
    /// `{"from": {"agent": N} | {"mailbox": NAME}, "to": ... | {"topic": T} | {"team": N},
    /// "body": TEXT, "returned"?: {"by": ..., "why": TEXT}}`. A body is text: bytes that are
    /// not UTF-8 are replaced by U+FFFD.
    pub fn to_json(&self) -> serde_json::Value {
        use colony_core::mailbox::{Address, Endpoint};
        fn endpoint(e: &Endpoint) -> serde_json::Value {
            match e {
                Endpoint::Agent(a) => serde_json::json!({ "agent": a.0 }),
                Endpoint::Named(n) => serde_json::json!({ "mailbox": &**n }),
            }
        }
        let to = match &self.to {
            Address::To(e) => endpoint(e),
            Address::Topic(t) => serde_json::json!({ "topic": &**t }),
            Address::Team(t) => serde_json::json!({ "team": t }),
        };
        let mut v = serde_json::json!({
            "from": endpoint(&self.from),
            "to": to,
            "body": String::from_utf8_lossy(&self.body),
        });
        if let Some((by, why)) = &self.returned {
            v["returned"] = serde_json::json!({ "by": endpoint(by), "why": &**why });
        }
        v
    }
}

/// An agent from a function that finishes at once.
pub fn from_fn<F>(f: F) -> FnAgent<F>
where
    F: Fn(&Task) -> Outcome + Send + Sync + 'static,
{
    FnAgent(f)
}

/// See [`from_fn`].
pub struct FnAgent<F>(F);

impl<F> fmt::Debug for FnAgent<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAgent")
    }
}

impl<F> Agent for FnAgent<F>
where
    F: Fn(&Task) -> Outcome + Send + Sync + 'static,
{
    fn handle(&self, task: Task) -> Execution {
        Execution::Done((self.0)(&task))
    }
}
