//! Where an attempt runs: handed to its agent inside `catch_unwind`, finished inline or kept
//! running (under its timeout, and its agent's switch, which stops it from outside), and, when
//! it failed and may retry, held for its backoff. What happens to the task after an attempt
//! ends is decided in `colony-core` (`attempt`), and carried out by the dispatcher.

use super::{
    cancel::Whereabouts,
    command::Job,
    supervise::{Stop, Switch, Wake},
};
use crate::spawner::panic_message;
use colony_agents::{Agent, AgentMail, Beats, Execution, Heartbeat, Mail, Outcome, Task};
use colony_core::{AgentId, TaskId, agent::Failover};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

/// How an attempt ended.
pub(super) enum Ended {
    Outcome(Outcome),
    /// The agent panicked running it.
    Crash(String),
    TimedOut(Duration),
    /// Stopped from outside: the agent was killed, went silent, or its supervisor stopped it.
    Stopped(Stop),
    /// Its task was cancelled.
    Cancelled,
}

/// An attempt that ended after leaving [`Agent::handle`].
pub(super) struct Finished {
    pub(super) worker: AgentId,
    /// The worker's incarnation when the attempt started.
    pub(super) incarnation: u32,
    pub(super) job: Job,
    pub(super) ended: Ended,
    pub(super) elapsed: Duration,
}

/// What [`Attempts::next`] brings.
pub(super) enum Next {
    Finished(Finished),
    /// A retry's backoff is over.
    Due(Job),
}

type RunningAttempt = Pin<Box<dyn Future<Output = Finished> + Send>>;
type Delayed = Pin<Box<dyn Future<Output = Job> + Send>>;

/// A pool's handler as the dispatcher uses it.
pub(super) struct PoolHandler {
    pub(super) agent: Arc<dyn Agent>,
    /// Attempts one agent of the pool runs at once.
    pub(super) concurrency: u32,
    pub(super) failover: Failover,
}

/// The attempts under way and the retries waiting out their backoff.
pub(super) struct Attempts {
    pools: Vec<PoolHandler>,
    running: FuturesUnordered<RunningAttempt>,
    /// Retries waiting out their backoff.
    delayed: FuturesUnordered<Delayed>,
    /// Per agent that ever ran an attempt outside `handle`: wakes those attempts to end them.
    switches: HashMap<AgentId, Arc<Switch>>,
    /// Where the tasks that are running or backing off are, for cancellation to find them.
    pub(super) whereabouts: Whereabouts,
    /// Tasks cancelled that were not waiting: they end cancelled when their attempt ends or
    /// their retry comes due.
    cancels: HashSet<TaskId>,
    /// Longest output a result may have: the journal holds no more.
    pub(super) max_output: usize,
    /// The message bus, handed to every attempt as its agent's view ([`Task::mail`]).
    mail: Arc<dyn Mail>,
}

impl Attempts {
    pub(super) fn new(pools: Vec<PoolHandler>, max_output: usize, mail: Arc<dyn Mail>) -> Self {
        Self {
            mail,
            pools,
            running: FuturesUnordered::new(),
            delayed: FuturesUnordered::new(),
            switches: HashMap::new(),
            whereabouts: Whereabouts::default(),
            cancels: HashSet::new(),
            max_output,
        }
    }

    pub(super) fn pool(&self, pool: u8) -> &PoolHandler {
        &self.pools[pool as usize]
    }

    /// Attempts running outside `handle`.
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }

    /// Hands `job`'s attempt (already counted: `job.attempt` is its lease) to `worker` of
    /// `pool`, whose incarnation is `incarnation`. An attempt that finishes inside
    /// [`Agent::handle`] comes back at once with how it ended; one that keeps running ends
    /// through [`Attempts::next_finished`].
    pub(super) fn launch(
        &mut self,
        worker: AgentId,
        pool: u8,
        incarnation: u32,
        job: Job,
        beats: &Arc<Beats>,
    ) -> Option<(Job, Ended)> {
        let agent = &self.pools[pool as usize].agent;
        let task = Task {
            id: job.id,
            attempt: job.attempt,
            agent: worker,
            payload: job.payload.clone(),
            heartbeat: Heartbeat::new(beats.clone(), worker),
            mail: AgentMail::new(worker, self.mail.clone()),
        };
        let running = match catch_unwind(AssertUnwindSafe(|| agent.handle(task))) {
            Ok(Execution::Done(outcome)) => return Some((job, Ended::Outcome(outcome))),
            Err(panic) => return Some((job, Ended::Crash(panic_message(&*panic).to_owned()))),
            Ok(Execution::Running(running)) => running,
        };
        let timeout = job.timeout;
        // Taking work is a sign of life: the silence a sweep measures starts now.
        beats.beat(worker);
        // Created here, before the attempt is first polled: a stop from now on reaches it
        // even if the attempt has not run yet.
        let switch = self.switches.entry(worker).or_default().clone();
        let woken = switch.notify.clone().notified_owned();
        let fired = switch.fired();
        let task = job.id;
        self.whereabouts.running.insert(task, worker);
        self.running.push(Box::pin(async move {
            // tokio's clock: tests with paused time see virtual response times.
            let started = tokio::time::Instant::now();
            let attempt = tokio::time::timeout(timeout, AssertUnwindSafe(running).catch_unwind());
            tokio::pin!(attempt, woken);
            let ended = loop {
                tokio::select! {
                    biased;
                    () = &mut woken => {
                        // Listening again before looking, so that nothing fired in between
                        // goes unseen.
                        woken.set(switch.notify.clone().notified_owned());
                        match switch.wake(fired, task) {
                            Some(Wake::Stopped(stop)) => break Ended::Stopped(stop),
                            Some(Wake::Cancelled) => break Ended::Cancelled,
                            None => {}
                        }
                    }
                    result = &mut attempt => break match result {
                        Ok(Ok(outcome)) => Ended::Outcome(outcome),
                        Ok(Err(panic)) => Ended::Crash(panic_message(&*panic).to_owned()),
                        Err(_) => Ended::TimedOut(timeout),
                    },
                }
            };
            Finished {
                worker,
                incarnation,
                job,
                ended,
                elapsed: started.elapsed(),
            }
        }));
        None
    }

    /// Whether the agents of `pool` answer inline ([`Agent::answers_inline`]).
    pub(super) fn answers_inline(&self, pool: u8) -> bool {
        self.pools
            .get(pool as usize)
            .is_some_and(|p| p.agent.answers_inline())
    }

    /// Asks `worker` of `pool` (whose agents answer inline) for its answer to `payload`
    /// inside this call, for decision `task`: no attempt is counted and nothing is
    /// journaled. Its output, or why it gave none (its error, a panic, an answer that was
    /// not inline, an output longer than a result may be).
    pub(super) fn answer_inline(
        &self,
        worker: AgentId,
        pool: u8,
        task: TaskId,
        payload: &bytes::Bytes,
    ) -> Result<bytes::Bytes, String> {
        let agent = &self.pools[pool as usize].agent;
        let task = Task {
            id: task,
            attempt: 1,
            agent: worker,
            payload: payload.clone(),
            // The answer is due inside `handle`, before the dispatcher's turn ends: no beat
            // of it could be watched, and an attached line costs two atomic operations a voter.
            heartbeat: Heartbeat::detached(),
            mail: AgentMail::new(worker, self.mail.clone()),
        };
        match catch_unwind(AssertUnwindSafe(|| agent.handle(task))) {
            Ok(Execution::Done(Ok(output))) if output.len() > self.max_output => Err(format!(
                "its answer of {} bytes is longer than the {} a result may have",
                output.len(),
                self.max_output
            )),
            Ok(Execution::Done(Ok(output))) => Ok(output),
            Ok(Execution::Done(Err(error))) => Err(error.to_string()),
            Ok(Execution::Running(_)) => {
                Err("its agent did not answer inside its handler, as its pool says it does".into())
            }
            Err(panic) => Err(format!("its agent panicked: {}", panic_message(&*panic))),
        }
    }

    /// The next attempt running outside `handle` to end, or else the next retry whose
    /// backoff is over; pending while there is neither.
    pub(super) async fn next(&mut self) -> Next {
        let (running, delayed) = (&mut self.running, &mut self.delayed);
        let next = tokio::select! {
            biased;
            Some(finished) = running.next(), if !running.is_empty() => Next::Finished(finished),
            Some(job) = delayed.next(), if !delayed.is_empty() => Next::Due(job),
            else => std::future::pending().await,
        };
        match next {
            Next::Finished(finished) => Next::Finished(self.left(finished)),
            Next::Due(job) => Next::Due(self.due(job)),
        }
    }

    /// An attempt that has ended already, if one has.
    pub(super) fn try_finished(&mut self) -> Option<Finished> {
        let finished = self.running.next().now_or_never()??;
        Some(self.left(finished))
    }

    fn left(&mut self, finished: Finished) -> Finished {
        self.whereabouts.running.remove(&finished.job.id);
        finished
    }

    /// Holds `job` for `delay` before its retry.
    pub(super) fn delay(&mut self, job: Job, delay: Duration) {
        self.whereabouts.backoff.insert(job.id);
        self.delayed.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            job
        }));
    }

    /// A retry whose backoff is over already, if one is.
    pub(super) fn try_due(&mut self) -> Option<Job> {
        let job = self.delayed.next().now_or_never()??;
        Some(self.due(job))
    }

    fn due(&mut self, job: Job) -> Job {
        self.whereabouts.backoff.remove(&job.id);
        job
    }

    /// The switch of `agent`, if it ever ran an attempt outside `handle`.
    pub(super) fn switch(&self, agent: AgentId) -> Option<&Arc<Switch>> {
        self.switches.get(&agent)
    }

    /// Agents from `start` on left the tree, with no attempt running.
    pub(super) fn forget_from(&mut self, start: usize) {
        self.switches.retain(|a, _| a.index() < start);
        self.switches.shrink_to_fit();
    }

    /// Marks `task` cancelled while it is not waiting in a queue.
    pub(super) fn ask_cancel(&mut self, task: TaskId) {
        self.cancels.insert(task);
    }

    /// Whether `task` was asked to cancel (and forgets that it was).
    pub(super) fn cancel_asked(&mut self, task: TaskId) -> bool {
        !self.cancels.is_empty() && self.cancels.remove(&task)
    }
}
