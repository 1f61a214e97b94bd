//! Where agents' health is watched: responses feed each worker's [`Health`], heartbeats land
//! on the [`Beats`](colony_agents::Beats) board, and once per heartbeat interval every
//! supervisor with busy children sweeps them. A busy agent silent for `failed-after` is
//! declared failed: it is stopped as a hang and its supervisor decides what follows.
//!
//! The sweep walks down from the roots into busy subtrees only, so an idle swarm costs
//! nothing and a busy one O(busy agents) per interval; no agent has a timer of its own.

use super::{Dispatcher, supervise::StopKind};
use crate::events::{Event, Kinds};
use colony_core::{
    AgentId,
    health::{Change, Health, HealthState},
    supervision::Exit,
};
use std::time::{Duration, Instant};

impl Dispatcher {
    /// The health of `worker`, created when it first answers.
    fn health_of(&mut self, worker: AgentId) -> &mut Health {
        if self.health.len() <= worker.index() {
            let now = self.now();
            self.health
                .resize(self.tree.len().max(worker.index() + 1), Health::new(now));
        }
        &mut self.health[worker.index()]
    }

    /// `worker` answered an attempt after `took`.
    pub(super) fn observe(&mut self, worker: AgentId, took: Duration, ok: bool) {
        let (now, options) = (self.now(), self.health_options);
        let changes = self.health_of(worker).on_response(took, ok, now, &options);
        if !changes.is_empty() {
            self.health_changed(worker, &changes);
        }
    }

    /// A new incarnation starts healthy.
    pub(super) fn health_reset(&mut self, worker: AgentId) {
        if worker.index() < self.health.len() {
            let before = self.health[worker.index()].state();
            self.health[worker.index()] = Health::new(self.now());
            if before != HealthState::Healthy {
                self.count_state(before, HealthState::Healthy);
            }
        }
    }

    /// The sweep of every supervisor over its busy children.
    pub(super) fn sweep(&mut self) {
        let worker_tier = self.tree.worker_tier();
        let (now, options) = (self.now(), self.health_options);
        let busy = |d: &Self, a: AgentId| d.tree.load(a).0 > 0;
        let mut stack: Vec<AgentId> = self.tree.roots().filter(|&r| busy(self, r)).collect();
        let mut silent = Vec::new();
        while let Some(node) = stack.pop() {
            if self.tree.tier(node) + 1 < worker_tier {
                stack.extend(self.tree.children(node).filter(|&c| busy(self, c)));
                continue;
            }
            let children: Vec<AgentId> = self.tree.children(node).collect();
            for worker in children {
                if !busy(self, worker) || self.tree.is_down(worker) {
                    continue;
                }
                let beat = self.beats.last(worker);
                let health = self.health_of(worker);
                let mut changes = Vec::new();
                if let Some(beat) = beat
                    && beat > health.last_seen()
                {
                    changes.extend(health.on_heartbeat(beat, &options));
                }
                changes.extend(health.sweep(now, &options));
                if health.state() == HealthState::Failed {
                    let silence = now.saturating_sub(health.last_seen());
                    silent.push((worker, self.incarnations[worker.index()], silence));
                }
                if !changes.is_empty() {
                    self.health_changed(worker, &changes);
                }
            }
        }
        let at = Instant::now();
        for (worker, incarnation, silence) in silent {
            // An earlier failure of this sweep may have restarted it already (one-for-all,
            // rest-for-one, an escalation): that incarnation is not the silent one.
            if self.incarnations[worker.index()] != incarnation || self.tree.is_down(worker) {
                continue;
            }
            self.turn.health_failures += 1;
            let cause = format!("no answer or heartbeat for {silence:.1?}").into();
            self.supervise(worker, Exit::Hang, cause, StopKind::Silent, at);
        }
    }

    fn health_changed(&mut self, agent: AgentId, changes: &[Change]) {
        for change in changes {
            match *change {
                Change::State { from, to } => {
                    self.count_state(from, to);
                    if self.shared.bus.wants(Kinds::HEALTH) {
                        self.events.push(Event::HealthChanged { agent, from, to });
                    }
                }
                Change::Alert { average, baseline } => {
                    self.turn.alerts += 1;
                    if self.shared.bus.wants(Kinds::HEALTH) {
                        self.events.push(Event::HealthAlert {
                            agent,
                            average,
                            baseline,
                        });
                    }
                }
            }
        }
    }

    /// Keeps the per-state gauges of unhealthy agents.
    fn count_state(&mut self, from: HealthState, to: HealthState) {
        let slot = |s: HealthState| match s {
            HealthState::Healthy => None,
            HealthState::Degraded => Some(0),
            HealthState::Critical => Some(1),
            HealthState::Failed => Some(2),
        };
        if let Some(i) = slot(from) {
            self.unhealthy[i] -= 1;
            self.metrics.unhealthy[i].set(self.unhealthy[i] as f64);
        }
        if let Some(i) = slot(to) {
            self.unhealthy[i] += 1;
            self.metrics.unhealthy[i].set(self.unhealthy[i] as f64);
        }
    }
}

#[cfg(test)]
mod tests;
