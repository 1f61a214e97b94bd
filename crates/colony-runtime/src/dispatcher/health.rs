//! Where agents' health is watched: responses feed each worker's [`Health`], heartbeats land
//! on the [`Beats`](colony_agents::Beats) board, and once per heartbeat interval every
//! supervisor with busy children sweeps them. A busy agent silent for `failed-after` is
//! declared failed: it is stopped as a hang and its supervisor decides what follows.
//!
//! The sweep walks down from the roots into busy subtrees only, so an idle swarm costs
//! nothing and a busy one O(busy agents) per interval; no agent has a timer of its own.
//!
//! Health acts through a circuit breaker per worker ([`colony_core::breaker`]): a critical
//! worker, or one whose error rate reaches `breaker.error-rate`, is sidelined (routing sends it
//! nothing, and it is not counted down); when its time is up, the sweep puts it on probation,
//! one attempt at a time, until enough succeed in a row; a degraded worker is passed over while
//! a healthy sibling can take the task. A new incarnation starts with a closed breaker.

use super::{Dispatcher, outbox::Outbox, supervise::StopKind};
use crate::events::{Event, Kinds};
use colony_agents::Beats;
use colony_core::tree::LiveTree;
use colony_core::{
    AgentId,
    breaker::{Breaker, BreakerOptions, BreakerState, Transition},
    health::{Change, Health, HealthOptions, HealthState},
    reputation::Reputation,
    supervision::Exit,
};
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// How often the sweep journals the reputations that changed (and once more as the loop
/// ends).
pub(super) const REPUTATIONS_EVERY: Duration = Duration::from_secs(30);

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
    /// `None` when health only observes.
    breaker: Option<BreakerOptions>,
    /// Per worker that has answered: its circuit breaker.
    breakers: Vec<Breaker>,
    /// Per worker that has answered or voted: its reputation. Unlike its health, it
    /// outlives an incarnation: a restarted agent is the same agent.
    reputations: Vec<Reputation>,
    /// Per agent: whether its reputation changed since it was last handed to the journal;
    /// and those agents, in the order they changed.
    dirty: Vec<bool>,
    changed: Vec<AgentId>,
    /// Reputations an earlier process journaled, by agent, until that agent is spawned.
    restored: HashMap<AgentId, colony_journal::ReputationRow>,
    /// When the reputations were last journaled, by [`Watch::now`].
    reputations_saved: Duration,
    /// Workers whose breaker is open or on probation: the sweep ticks them.
    tripped: Vec<AgentId>,
    /// Breakers' transitions and degraded flags not yet carried to the tree.
    pub(super) acts: Vec<Act>,
}

/// What the tree must be told of a worker's breaker or health.
#[derive(Clone, Copy, Debug)]
pub(super) enum Act {
    Breaker(AgentId, Transition),
    /// A degraded worker is passed over (`true`) or no longer (`false`).
    Reduced(AgentId, bool),
    /// A worker's predictive alert fired: its backend hears of it.
    Alerted(AgentId),
}

impl Watch {
    pub(super) fn new(
        options: HealthOptions,
        breaker: Option<BreakerOptions>,
        beats: Arc<Beats>,
    ) -> Self {
        Self {
            breaker,
            breakers: Vec::new(),
            reputations: Vec::new(),
            dirty: Vec::new(),
            changed: Vec::new(),
            restored: HashMap::new(),
            reputations_saved: Duration::ZERO,
            tripped: Vec::new(),
            acts: Vec::new(),
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
            let len = agents.max(worker.index() + 1);
            self.health.resize(len, Health::new(now));
            if self.breaker.is_some() {
                self.breakers.resize(len, Breaker::new());
            }
        }
        &mut self.health[worker.index()]
    }

    /// The breaker of `worker`: closed until it has answered.
    pub(super) fn breaker(&self, worker: AgentId) -> BreakerState {
        self.breakers
            .get(worker.index())
            .map_or(BreakerState::Closed, Breaker::state)
    }

    /// Feeds `worker`'s health (and, after an attempt, its result) to its breaker, and says
    /// what the tree must change.
    fn judge(&mut self, out: &mut Outbox, worker: AgentId, result: Option<bool>) {
        let Some(options) = self.breaker else {
            return;
        };
        let now = self.now();
        let (state, rate) = {
            let h = &self.health[worker.index()];
            (h.state(), h.error_rate())
        };
        let breaker = &mut self.breakers[worker.index()];
        let before = breaker.state();
        let mut transition = result.and_then(|ok| breaker.on_result(ok, now, &options));
        if transition.is_none() {
            transition = breaker.on_health(state, rate, now, &options);
        }
        if let Some(t) = transition {
            if before == BreakerState::Closed {
                self.tripped.push(worker);
            }
            self.act(out, worker, t);
        }
    }

    /// Records a breaker's transition for the tree, and says so to subscribers.
    fn act(&mut self, out: &mut Outbox, agent: AgentId, transition: Transition) {
        self.acts.push(Act::Breaker(agent, transition));
        match transition {
            Transition::Opened { reason } => {
                out.turn.sidelined += 1;
                out.event(Kinds::HEALTH, || Event::AgentSidelined { agent, reason });
            }
            Transition::Probation => {
                out.event(Kinds::HEALTH, || Event::AgentOnProbation { agent });
            }
            Transition::Closed => out.event(Kinds::HEALTH, || Event::AgentReadmitted { agent }),
        }
    }

    /// Open breakers whose time is up go on probation; closed ones leave the list.
    fn tick_breakers(&mut self, out: &mut Outbox) {
        let Some(options) = self.breaker else {
            return;
        };
        let now = self.now();
        let mut tripped = std::mem::take(&mut self.tripped);
        tripped.retain(|&worker| {
            let breaker = &mut self.breakers[worker.index()];
            let transition = breaker.on_tick(now, &options);
            let still = breaker.state() != BreakerState::Closed;
            if let Some(t) = transition {
                self.act(out, worker, t);
            }
            still
        });
        self.tripped = tripped;
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
        self.judge(out, worker, Some(ok));
        self.reputation_of(worker, agents).observe(ok);
    }

    /// `worker`'s reputation, about to change: it is handed to the journal at the next
    /// sweep.
    fn reputation_of(&mut self, worker: AgentId, agents: usize) -> &mut Reputation {
        let i = worker.index();
        if self.reputations.len() <= i {
            let len = agents.max(i + 1);
            self.reputations.resize(len, Reputation::new());
            self.dirty.resize(len, false);
        }
        if !self.dirty[i] {
            self.dirty[i] = true;
            self.changed.push(worker);
        }
        &mut self.reputations[i]
    }

    /// Reputations an earlier process journaled, for the agents spawned from now on.
    pub(super) fn restoring(&mut self, rows: Vec<colony_journal::ReputationRow>) {
        self.restored = rows.into_iter().map(|r| (r.agent, r)).collect();
    }

    /// Agents `from..to` were spawned: a worker journaled by an earlier process as a worker
    /// of the same pool takes its reputation up where it stood.
    pub(super) fn restore(&mut self, tree: &LiveTree, from: usize, to: usize) {
        if self.restored.is_empty() {
            return;
        }
        for i in from..to {
            let agent = AgentId(i as u32);
            let Some(row) = self.restored.remove(&agent) else {
                continue;
            };
            if tree.tier(agent) != tree.worker_tier() || tree.spec(agent) != row.pool {
                continue;
            }
            if let Some(kept) = Reputation::restore(row.score, row.observations) {
                if self.reputations.len() <= i {
                    self.reputations.resize(to, Reputation::new());
                    self.dirty.resize(to, false);
                }
                self.reputations[i] = kept;
            }
        }
    }

    /// Whether [`REPUTATIONS_EVERY`] passed since the reputations were last journaled.
    pub(super) fn reputations_due(&self) -> bool {
        self.now().saturating_sub(self.reputations_saved) >= REPUTATIONS_EVERY
    }

    /// The reputations changed since the last call, as the journal keeps them.
    pub(super) fn unsaved(&mut self, tree: &LiveTree) -> Vec<colony_journal::ReputationRow> {
        self.reputations_saved = self.now();
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .filter_map(|agent| {
                let i = agent.index();
                self.dirty[i] = false;
                let r = self.reputations[i];
                (i < tree.len() && tree.tier(agent) == tree.worker_tier()).then(|| {
                    colony_journal::ReputationRow {
                        agent,
                        pool: tree.spec(agent),
                        score: r.score(),
                        observations: r.observations(),
                    }
                })
            })
            .collect()
    }

    /// Voters of a decided outcome: counted for the winner (`true`) or dissenting. Agents
    /// no longer in the tree (`agents` long) are passed over.
    pub(super) fn agreed(&mut self, agents: usize, votes: &[(AgentId, bool)]) {
        for &(voter, agreed) in votes {
            if voter.index() < agents {
                self.reputation_of(voter, agents).observe(agreed);
            }
        }
    }

    /// `worker`'s reputation: the prior until it has answered or voted.
    pub(super) fn reputation(&self, worker: AgentId) -> Reputation {
        self.reputations
            .get(worker.index())
            .copied()
            .unwrap_or_default()
    }

    /// Agents from `start` on left the tree: their health, breakers and pending acts go,
    /// and the counts of unhealthy workers no longer hold them.
    pub(super) fn forget_from(&mut self, start: usize) {
        for i in start..self.health.len() {
            let state = self.health[i].state();
            if state != HealthState::Healthy {
                self.count(state, HealthState::Healthy);
            }
        }
        self.health.truncate(start);
        self.breakers.truncate(start);
        self.reputations.truncate(start);
        self.dirty.truncate(start);
        self.changed.retain(|a| a.index() < start);
        if self.health.len() < self.health.capacity() / 2 {
            self.health.shrink_to_fit();
            self.breakers.shrink_to_fit();
        }
        self.tripped.retain(|w| w.index() < start);
        self.acts.retain(|act| {
            let (Act::Breaker(w, _) | Act::Reduced(w, _) | Act::Alerted(w)) = *act;
            w.index() < start
        });
    }

    /// A new incarnation of `worker` starts healthy, its breaker closed.
    pub(super) fn reset(&mut self, out: &mut Outbox, worker: AgentId) {
        if worker.index() < self.health.len() {
            let before = self.health[worker.index()].state();
            self.health[worker.index()] = Health::new(self.now());
            if before != HealthState::Healthy {
                self.count(before, HealthState::Healthy);
            }
        }
        if let Some(breaker) = self.breakers.get_mut(worker.index())
            && breaker.state() != BreakerState::Closed
        {
            *breaker = Breaker::new();
            // Whoever saw it sidelined hears it is back.
            self.act(out, worker, Transition::Closed);
        }
        if self.breaker.is_some() {
            self.acts.push(Act::Reduced(worker, false));
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
                    if self.breaker.is_some()
                        && (from == HealthState::Degraded) != (to == HealthState::Degraded)
                    {
                        self.acts
                            .push(Act::Reduced(agent, to == HealthState::Degraded));
                    }
                    out.event(Kinds::HEALTH, || Event::HealthChanged { agent, from, to });
                }
                Change::Alert { average, baseline } => {
                    out.turn.alerts += 1;
                    self.acts.push(Act::Alerted(agent));
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

    /// Carries the breakers' transitions and degraded flags to the tree: a sidelined worker
    /// gives up its room (a supervisor left with none has its queue moved on), one on
    /// probation gets room for one attempt, a readmitted one all its room back.
    pub(super) fn apply_acts(&mut self) {
        if self.watch.acts.is_empty() {
            return;
        }
        let mut vacated = Vec::new();
        for act in std::mem::take(&mut self.watch.acts) {
            match act {
                Act::Breaker(w, Transition::Opened { .. }) => {
                    self.tree.set_probation(w, false);
                    self.tree.set_sidelined(w, true);
                    if let Some(parent) = self.tree.parent(w)
                        && self.tree.is_vacant(parent)
                    {
                        vacated.push(parent);
                    }
                }
                Act::Breaker(w, Transition::Probation) => {
                    self.tree.set_sidelined(w, false);
                    self.tree.set_probation(w, true);
                    self.freed.push(w);
                }
                Act::Breaker(w, Transition::Closed) => {
                    self.tree.set_sidelined(w, false);
                    self.tree.set_probation(w, false);
                    self.freed.push(w);
                }
                Act::Reduced(w, reduced) => {
                    self.tree.set_reduced(w, reduced);
                }
                Act::Alerted(w) => {
                    if self.tree.tier(w) == self.tree.worker_tier()
                        && !self.supervision.retired().contains(&w)
                    {
                        let pool = self.tree.spec(w);
                        self.attempts.pool(pool).agent.alerted(w);
                    }
                }
            }
        }
        vacated.sort_unstable();
        vacated.dedup();
        self.rehome(vacated);
    }

    /// Hands the reputations changed since they were last handed over to the journal, which
    /// keeps them for the next process.
    pub(super) fn save_reputations(&mut self) {
        let rows = self.watch.unsaved(&self.tree);
        if !rows.is_empty() {
            let durable = self.shared.journal.record_reputations(rows);
            self.out.flush(durable, "Recording reputations");
        }
    }

    /// The sweep: every busy worker's heartbeats and silence are looked at, and the silent
    /// ones are stopped as hangs, their supervisors deciding what follows. Open breakers whose
    /// time is up go on probation. Every [`REPUTATIONS_EVERY`], the reputations changed are
    /// journaled: a soft state, written seldom so that a million busy workers do not add a
    /// million rows a second to the journal writer's load.
    pub(super) fn sweep(&mut self) {
        self.watch.tick_breakers(&mut self.out);
        if self.watch.reputations_due() {
            self.save_reputations();
        }
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
                // A retired worker is down but still runs what it had: its silence counts.
                if !busy(&self.tree, worker)
                    || (self.tree.is_down(worker) && !self.supervision.retired().contains(&worker))
                {
                    continue;
                }
                if let Some(silence) = self.watch.check(&mut self.out, agents, worker) {
                    silent.push((worker, self.supervision.incarnation(worker), silence));
                }
            }
        }
        let at = Instant::now();
        for (worker, incarnation, silence) in silent {
            if self.supervision.incarnation(worker) != incarnation {
                continue;
            }
            let cause = format!("no answer or heartbeat for {silence:.1?}").into();
            if self.supervision.retired().contains(&worker) {
                self.out.turn.health_failures += 1;
                self.stop_retired(worker, cause, StopKind::Silent, at);
                continue;
            }
            if self.tree.is_down(worker) {
                continue;
            }
            self.out.turn.health_failures += 1;
            self.supervise(worker, Exit::Hang, cause, StopKind::Silent, at);
        }
    }
}

#[cfg(test)]
mod tests;
