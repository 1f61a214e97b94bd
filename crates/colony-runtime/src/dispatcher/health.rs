//! Where agents' health is watched: responses feed each worker's [`Health`], heartbeats land
//! on the [`Beats`](colony_agents::Beats) board, and once per heartbeat interval every
//! supervisor with busy children sweeps them. A busy agent silent for `failed-after` is
//! declared failed: it is stopped as a hang and its supervisor decides what follows.
//!
//! The sweep walks down from the roots into busy subtrees only, so an idle swarm costs
//! nothing and a busy one O(busy agents) per interval; no agent has a timer of its own.

use super::{Dispatcher, outbox::Outbox, supervise::StopKind};
use crate::events::{Event, Kinds};
use colony_agents::Beats;
use colony_core::{
    AgentId,
    health::{Change, Health, HealthOptions, HealthState},
    supervision::Exit,
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// The health part of the loop: every worker's health and the board their heartbeats land on.
pub(super) struct Watch {
    pub(super) options: HealthOptions,
    /// Per worker that has answered: its health.
    health: Vec<Health>,
    /// Workers degraded, critical, failed, and their gauges.
    unhealthy: [u64; 3],
    gauges: [metrics::Gauge; 3],
    /// When each agent was last heard from; agents beat on it while running long attempts.
    pub(super) beats: Arc<Beats>,
}

impl Watch {
    pub(super) fn new(options: HealthOptions, beats: Arc<Beats>) -> Self {
        Self {
            options,
            health: Vec::new(),
            unhealthy: [0; 3],
            gauges: crate::metrics::Metrics::unhealthy(),
            beats,
        }
    }

    /// The engines' clock: tokio's time since the heartbeat board's epoch, so tests with a
    /// paused clock see virtual time. Read when needed, never kept: a value from before the
    /// loop waited would be stale.
    pub(super) fn now(&self) -> Duration {
        self.beats.epoch().elapsed()
    }

    pub(super) fn health(&self) -> &[Health] {
        &self.health
    }

    pub(super) fn unhealthy(&self) -> [u64; 3] {
        self.unhealthy
    }

    /// The health of `worker`, created when it first answers; `agents` is the tree's size.
    fn health_of(&mut self, worker: AgentId, agents: usize) -> &mut Health {
        if self.health.len() <= worker.index() {
            let now = self.now();
            self.health
                .resize(agents.max(worker.index() + 1), Health::new(now));
        }
        &mut self.health[worker.index()]
    }

    /// `worker` answered an attempt after `took`.
    pub(super) fn observe(
        &mut self,
        out: &mut Outbox,
        agents: usize,
        worker: AgentId,
        took: Duration,
        ok: bool,
    ) {
        let (now, options) = (self.now(), self.options);
        let changes = self
            .health_of(worker, agents)
            .on_response(took, ok, now, &options);
        if !changes.is_empty() {
            self.changed(out, worker, &changes);
        }
    }

    /// A new incarnation of `worker` starts healthy.
    pub(super) fn reset(&mut self, worker: AgentId) {
        if worker.index() < self.health.len() {
            let before = self.health[worker.index()].state();
            self.health[worker.index()] = Health::new(self.now());
            if before != HealthState::Healthy {
                self.count(before, HealthState::Healthy);
            }
        }
    }

    /// Feeds busy `worker`'s latest heartbeat and the time to its health; returns how long it
    /// has been silent if that made it failed.
    fn check(&mut self, out: &mut Outbox, agents: usize, worker: AgentId) -> Option<Duration> {
        let (now, options) = (self.now(), self.options);
        let beat = self.beats.last(worker);
        let health = self.health_of(worker, agents);
        let mut changes = Vec::new();
        if let Some(beat) = beat
            && beat > health.last_seen()
        {
            changes.extend(health.on_heartbeat(beat, &options));
        }
        changes.extend(health.sweep(now, &options));
        let silent =
            (health.state() == HealthState::Failed).then(|| now.saturating_sub(health.last_seen()));
        if !changes.is_empty() {
            self.changed(out, worker, &changes);
        }
        silent
    }

    fn changed(&mut self, out: &mut Outbox, agent: AgentId, changes: &[Change]) {
        for change in changes {
            match *change {
                Change::State { from, to } => {
                    self.count(from, to);
                    out.event(Kinds::HEALTH, || Event::HealthChanged { agent, from, to });
                }
                Change::Alert { average, baseline } => {
                    out.turn.alerts += 1;
                    out.event(Kinds::HEALTH, || Event::HealthAlert {
                        agent,
                        average,
                        baseline,
                    });
                }
            }
        }
    }

    /// Keeps the counts and gauges of unhealthy workers as one moves from `from` to `to`.
    fn count(&mut self, from: HealthState, to: HealthState) {
        let slot = |s: HealthState| match s {
            HealthState::Healthy => None,
            HealthState::Degraded => Some(0),
            HealthState::Critical => Some(1),
            HealthState::Failed => Some(2),
        };
        if let Some(i) = slot(from) {
            self.unhealthy[i] -= 1;
            self.gauges[i].set(self.unhealthy[i] as f64);
        }
        if let Some(i) = slot(to) {
            self.unhealthy[i] += 1;
            self.gauges[i].set(self.unhealthy[i] as f64);
        }
    }
}

impl Dispatcher {
    /// `worker` answered an attempt after `took`.
    pub(super) fn observe(&mut self, worker: AgentId, took: Duration, ok: bool) {
        let agents = self.tree.len();
        self.watch.observe(&mut self.out, agents, worker, took, ok);
    }

    /// The sweep: every busy worker's heartbeats and silence are looked at, and the silent
    /// ones are stopped as hangs, their supervisors deciding what follows.
    pub(super) fn sweep(&mut self) {
        let worker_tier = self.tree.worker_tier();
        let busy = |tree: &super::LiveTree, a: AgentId| tree.load(a).0 > 0;
        let mut stack: Vec<AgentId> = self.tree.roots().filter(|&r| busy(&self.tree, r)).collect();
        let mut silent = Vec::new();
        let agents = self.tree.len();
        while let Some(node) = stack.pop() {
            if self.tree.tier(node) + 1 < worker_tier {
                stack.extend(self.tree.children(node).filter(|&c| busy(&self.tree, c)));
                continue;
            }
            for worker in self.tree.children(node) {
                if !busy(&self.tree, worker) || self.tree.is_down(worker) {
                    continue;
                }
                if let Some(silence) = self.watch.check(&mut self.out, agents, worker) {
                    silent.push((worker, self.supervision.incarnation(worker), silence));
                }
            }
        }
        let at = Instant::now();
        for (worker, incarnation, silence) in silent {
            if self.supervision.incarnation(worker) != incarnation || self.tree.is_down(worker) {
                continue;
            }
            self.out.turn.health_failures += 1;
            let cause = format!("no answer or heartbeat for {silence:.1?}").into();
            self.supervise(worker, Exit::Hang, cause, StopKind::Silent, at);
        }
    }
}

#[cfg(test)]
mod tests;
