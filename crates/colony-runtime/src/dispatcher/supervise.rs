//! Where an agent is stopped, restarted or given up on: the runtime's half of the
//! supervision trees.
//!
//! Every managing agent supervises its children with a [`Supervisor`] engine from
//! `colony-core`, created when one of its children first exits; the runtime itself supervises
//! the top tier. When a child exits (a crash, a hang, silence, a kill), its incarnation ends at
//! once: it goes out of service, its running attempts are stopped and retry elsewhere, and a
//! stopped supervisor's queued tasks move to its siblings. The parent's engine then says which
//! children restart and after what backoff, or that the parent gives up: it escalates, its own
//! subtree stops, and its parent decides in turn.

use super::Dispatcher;
use crate::events::{Event, Kinds};
use colony_core::{
    AgentId, TaskId,
    supervision::{Command, Exit, Supervisor, SupervisorOptions},
};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use rand::rngs::SmallRng;
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Notify;

/// Key of the runtime's own engine, which supervises the top tier.
pub(super) const TOP: u32 = u32::MAX;

/// Why a running attempt was stopped from outside it.
#[derive(Clone, Debug)]
pub(super) struct Stop {
    pub(super) cause: Arc<str>,
    pub(super) at: Instant,
    pub(super) kind: StopKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StopKind {
    /// Killed from outside ([`crate::Handle::kill`]): no fault of the task's.
    Killed,
    /// The agent went silent while running it: a hang, counted against the task.
    Silent,
    /// Its supervisor stopped the agent: a sibling's restart, an escalation, or the agent's
    /// own replacement after another of its attempts crashed.
    Supervisor,
}

/// Wakes an agent's attempts running outside `handle` to end them, saying why: all of them
/// when the agent is stopped, or one whose task is cancelled.
#[derive(Debug, Default)]
pub(super) struct Switch {
    pub(super) notify: Arc<Notify>,
    state: std::sync::Mutex<SwitchState>,
}

#[derive(Debug, Default)]
struct SwitchState {
    /// The latest stop, and how many there have been: an attempt is stopped by those fired
    /// after it started.
    stop: Option<Stop>,
    fired: u64,
    /// Tasks cancelled while running here, until their attempts see it.
    cancels: Vec<TaskId>,
}

/// Why an attempt's switch woke it.
pub(super) enum Wake {
    Stopped(Stop),
    Cancelled,
}

impl Switch {
    fn state(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many stops have been fired: an attempt notes it when it starts.
    pub(super) fn fired(&self) -> u64 {
        self.state().fired
    }

    /// What, if anything, ends the attempt of `task` that started when `fired` stops had
    /// been fired. A wake for another attempt's cancellation is nothing to this one.
    pub(super) fn wake(&self, fired: u64, task: TaskId) -> Option<Wake> {
        let mut state = self.state();
        if state.fired > fired {
            let stop = state.stop.clone().unwrap_or(Stop {
                cause: "stopped".into(),
                at: Instant::now(),
                kind: StopKind::Supervisor,
            });
            return Some(Wake::Stopped(stop));
        }
        let at = state.cancels.iter().position(|&t| t == task)?;
        state.cancels.swap_remove(at);
        Some(Wake::Cancelled)
    }

    fn fire(&self, stop: Stop) {
        {
            let mut state = self.state();
            state.stop = Some(stop);
            state.fired += 1;
        }
        self.notify.notify_waiters();
    }

    /// Ends the attempt of `task` running on this agent, if one is.
    pub(super) fn cancel(&self, task: TaskId) {
        self.state().cancels.push(task);
        self.notify.notify_waiters();
    }

    /// Forgets a cancellation no attempt picked up: its task was not running here after all.
    pub(super) fn forget(&self, task: TaskId) {
        self.state().cancels.retain(|&t| t != task);
    }
}

/// A restart waiting out its backoff: the agent, the incarnation it brings up, why, whether
/// the exit was a hang, and when the exit happened.
pub(super) type Restart = (AgentId, u32, Arc<str>, bool, Instant);

/// The supervision part of the loop: which incarnation of every agent is in service, the
/// restart engines of the managers whose children exited, the restarts waiting out their
/// backoff, and the workers retired for good.
pub(super) struct Supervision {
    options: SupervisorOptions,
    /// Per managing tier: its agents' supervision of their children.
    tiers: Vec<SupervisorOptions>,
    /// Per agent id: how many times it was replaced.
    incarnations: Vec<u32>,
    /// Per managing agent (and [`TOP`] for the runtime over the top tier) whose children
    /// exited: its supervision engine. Removed when the agent itself stops.
    engines: HashMap<u32, Supervisor>,
    /// Restarts waiting out their backoff.
    restarting: FuturesUnordered<Pin<Box<dyn Future<Output = Restart> + Send>>>,
    /// Workers retired from their pools: out of service, never restarted.
    retired: HashSet<AgentId>,
}

impl Supervision {
    /// `options` for every supervisor, `tiers` in place of them per managing tier (from the
    /// top; fewer than the managing tiers leaves the rest on `options`).
    pub(super) fn new(
        options: SupervisorOptions,
        tiers: Vec<SupervisorOptions>,
        agents: usize,
    ) -> Self {
        Self {
            options,
            tiers,
            incarnations: vec![0; agents],
            engines: HashMap::new(),
            restarting: FuturesUnordered::new(),
            retired: HashSet::new(),
        }
    }

    /// The tree grew to `agents`. Incarnations are never dropped: an id the tree gives again
    /// goes on from the last incarnation of the agent that had it, so that nothing meant for
    /// that agent (an attempt's end, a restart) is taken for the new one's.
    pub(super) fn grow(&mut self, agents: usize) {
        if agents > self.incarnations.len() {
            self.incarnations.resize(agents, 0);
        }
    }

    /// Agents `ids` left the tree: their incarnations end, and they are no longer retired
    /// or supervising.
    pub(super) fn forget_agents(&mut self, ids: std::ops::Range<u32>) {
        for id in ids {
            let agent = AgentId(id);
            self.end_incarnation(agent);
            self.retired.remove(&agent);
            self.engines.remove(&id);
        }
    }

    /// The incarnation of `agent` in service (or last in service).
    pub(super) fn incarnation(&self, agent: AgentId) -> u32 {
        self.incarnations[agent.index()]
    }

    /// Ends the incarnation of `agent`: attempts it started are no longer its current ones.
    pub(super) fn end_incarnation(&mut self, agent: AgentId) {
        self.incarnations[agent.index()] += 1;
    }

    pub(super) fn retired(&self) -> &HashSet<AgentId> {
        &self.retired
    }

    pub(super) fn retire(&mut self, worker: AgentId) {
        self.retired.insert(worker);
        self.end_incarnation(worker);
    }

    /// Takes `worker` off the retired list; `false` if it was not on it.
    pub(super) fn reinstate(&mut self, worker: AgentId) -> bool {
        self.retired.remove(&worker)
    }

    /// What the engine of `key` (whose agent is of managing tier `tier`; `None` for [`TOP`])
    /// says of its child `index` (of `children`) exiting with `exit` at `now`.
    fn on_exit(
        &mut self,
        (key, tier): (u32, Option<usize>),
        children: usize,
        index: usize,
        exit: Exit,
        now: Duration,
        rng: &mut SmallRng,
    ) -> Vec<Command> {
        let options = tier
            .and_then(|t| self.tiers.get(t).copied())
            .unwrap_or(self.options);
        let engine = self
            .engines
            .entry(key)
            .or_insert_with(|| Supervisor::new(options, children).expect("validated"));
        engine.set_children(children);
        engine.on_exit(index, exit, now, rng)
    }

    /// A managing agent stopped or restarted: its engine starts afresh.
    fn forget(&mut self, key: u32) {
        self.engines.remove(&key);
    }

    /// Brings `restart` about after `after`.
    fn later(&mut self, restart: Restart, after: Duration) {
        self.restarting.push(Box::pin(async move {
            tokio::time::sleep(after).await;
            restart
        }));
    }

    /// The next restart whose backoff is over; pending while none waits.
    pub(super) async fn next_restart(&mut self) -> Restart {
        match self.restarting.next().await {
            Some(restart) => restart,
            None => std::future::pending().await,
        }
    }

    /// A restart whose backoff is over already, if one is.
    pub(super) fn try_restart(&mut self) -> Option<Restart> {
        self.restarting.next().now_or_never()?
    }
}

impl Dispatcher {
    /// `child` exited (`exit`, for `cause`): ends its incarnation and carries out what its
    /// supervisor decides. `kind` is how its own running attempts are stopped.
    /// `at` is when the exit happened.
    pub(super) fn supervise(
        &mut self,
        child: AgentId,
        exit: Exit,
        cause: Arc<str>,
        kind: StopKind,
        at: Instant,
    ) {
        self.stop(child, &cause, kind, at);
        let (key, tier, siblings): (u32, Option<usize>, Vec<AgentId>) =
            match self.tree.parent(child) {
                Some(parent) => (
                    parent.0,
                    Some(self.tree.tier(parent)),
                    self.tree.children(parent).collect(),
                ),
                None => (TOP, None, self.tree.roots().collect()),
            };
        let Some(index) = siblings.iter().position(|&a| a == child) else {
            return;
        };
        let now = self.watch.now();
        let commands =
            self.supervision
                .on_exit((key, tier), siblings.len(), index, exit, now, &mut self.rng);
        if commands.is_empty() {
            self.stopped_event(child, &cause, None);
        }
        let hang = exit == Exit::Hang;
        for command in commands {
            match command {
                Command::Restart { children, after } => {
                    for i in children {
                        let sibling = siblings[i];
                        if sibling != child {
                            let why: Arc<str> =
                                format!("restarted with its sibling {child}: {cause}").into();
                            self.stop(sibling, &why, StopKind::Supervisor, at);
                        }
                        self.stopped_event(sibling, &cause, Some(after));
                        self.restart_after(sibling, after, cause.clone(), hang, at);
                    }
                }
                Command::Escalate => self.escalate(key, &cause, hang, at),
            }
        }
    }

    /// The engine under `key` exceeded its restart intensity.
    fn escalate(&mut self, key: u32, cause: &Arc<str>, hang: bool, at: Instant) {
        self.out.turn.escalations += 1;
        let supervisor = (key != TOP).then_some(AgentId(key));
        let why: Arc<str> = match supervisor {
            Some(s) => format!("{s} exceeded its restart intensity; last exit: {cause}").into(),
            None => {
                format!("the top tier exceeded its restart intensity; last exit: {cause}").into()
            }
        };
        self.out
            .event(Kinds::AGENTS, || Event::SupervisorEscalated {
                supervisor,
                cause: why.clone(),
            });
        match supervisor {
            Some(manager) => self.supervise(manager, Exit::Crash, why, StopKind::Supervisor, at),
            None => {
                // Nothing above the runtime to hand the failure to, and giving up would lose
                // tasks: the whole hierarchy restarts after the longest backoff, afresh.
                tracing::error!(cause = %why, "Restarting every agent.");
                self.supervision.forget(TOP);
                let after = self.supervision.options.max_backoff;
                for root in self.tree.roots().collect::<Vec<_>>() {
                    self.stop(root, &why, StopKind::Supervisor, at);
                    self.stopped_event(root, &why, Some(after));
                    self.restart_after(root, after, why.clone(), hang, at);
                }
            }
        }
    }

    /// Ends the current incarnation of `agent` and of every agent below it: out of service,
    /// running attempts stopped, queued tasks moved to siblings.
    pub(super) fn stop(&mut self, agent: AgentId, cause: &Arc<str>, kind: StopKind, at: Instant) {
        let worker_tier = self.tree.worker_tier();
        let mut agents = vec![agent];
        agents.extend(self.tree.subtree(agent));
        // A supervisor left with no worker in service has no room either: its queue moves.
        let mut emptied = Vec::new();
        if self.tree.tier(agent) == worker_tier
            && let Some(sup) = self.tree.parent(agent)
        {
            emptied.push(sup);
        }
        for a in agents {
            self.supervision.end_incarnation(a);
            let tier = self.tree.tier(a);
            self.tree.set_down(a, true);
            if tier == worker_tier {
                if self.tree.load(a).0 > 0
                    && let Some(switch) = self.attempts.switch(a)
                {
                    // The agent's own attempts carry its stop's kind; those of agents stopped
                    // along with it are no fault of their tasks.
                    let kind = if a == agent {
                        kind
                    } else {
                        StopKind::Supervisor
                    };
                    switch.fire(Stop {
                        cause: cause.clone(),
                        at,
                        kind,
                    });
                }
            } else {
                self.supervision.forget(a.0);
                if tier + 1 == worker_tier {
                    emptied.push(a);
                }
            }
        }
        self.rehome(emptied);
    }

    /// Brings `agent` (and, for a manager, its subtree) back into service after `after`.
    fn restart_after(
        &mut self,
        agent: AgentId,
        after: Duration,
        cause: Arc<str>,
        hang: bool,
        at: Instant,
    ) {
        let restart = (agent, self.supervision.incarnation(agent), cause, hang, at);
        if after.is_zero() {
            self.restart(restart);
        } else {
            self.supervision.later(restart, after);
        }
    }

    /// A restart's backoff is over: the new incarnation of the agent and of every agent
    /// below it goes into service, unless something stopped it again meanwhile.
    pub(super) fn restart(&mut self, (agent, incarnation, cause, hang, at): Restart) {
        if self.supervision.incarnation(agent) != incarnation || !self.tree.is_down(agent) {
            return;
        }
        let worker_tier = self.tree.worker_tier();
        let mut agents = vec![agent];
        agents.extend(self.tree.subtree(agent));
        for a in agents {
            // A retired worker stays out of service whatever its supervisor restarts.
            if self.supervision.retired.contains(&a) || !self.tree.set_down(a, false) {
                continue;
            }
            if hang {
                self.out.turn.restarts_timeout += 1;
            } else {
                self.out.turn.restarts_crash += 1;
            }
            if self.tree.tier(a) == worker_tier {
                self.watch.reset(&mut self.out, a);
                self.freed.push(a);
            } else {
                // A restarted manager starts with a fresh engine.
                self.supervision.forget(a.0);
            }
            let incarnation = self.supervision.incarnation(a);
            self.out.event(Kinds::AGENTS, || Event::AgentRestarted {
                agent: a,
                incarnation,
                cause: cause.clone(),
            });
        }
        self.shared.time(|t| &mut t.restart, at.elapsed());
    }

    fn stopped_event(&mut self, agent: AgentId, cause: &Arc<str>, restart_in: Option<Duration>) {
        self.out.event(Kinds::AGENTS, || Event::AgentStopped {
            agent,
            cause: cause.clone(),
            restart_in,
        });
    }

    /// Kills `agent` from outside, as a crash would.
    /// A retired worker still running attempts has them stopped, as a crash would, but
    /// nothing restarts it.
    pub(super) fn kill(&mut self, agent: AgentId, at: Instant) {
        if !self.tree.contains(agent) {
            return;
        }
        if self.supervision.retired.contains(&agent) {
            if self.tree.load(agent).0 > 0 {
                self.stop_retired(agent, "killed".into(), StopKind::Killed, at);
            }
            return;
        }
        if self.tree.is_down(agent) {
            return;
        }
        self.supervise(agent, Exit::Crash, "killed".into(), StopKind::Killed, at);
    }

    /// Stops what retired worker `worker` still runs (a hang found, or a kill): its
    /// attempts end as faults and their tasks go back to be retried elsewhere. No supervisor
    /// hears of it: a worker that is gone is not restarted, nor are its siblings.
    pub(super) fn stop_retired(
        &mut self,
        worker: AgentId,
        cause: Arc<str>,
        kind: StopKind,
        at: Instant,
    ) {
        self.stop(worker, &cause, kind, at);
        self.stopped_event(worker, &cause, None);
    }
}

#[cfg(test)]
mod tests;
