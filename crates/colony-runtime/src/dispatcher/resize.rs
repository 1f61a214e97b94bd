//! Where a pool shrinks: workers are retired, and grown back into service.
//!
//! A retired worker stays in the tree, out of service for good: no task is routed to it, its
//! supervisor never restarts it, and its running attempts finish where they are, still
//! watched: the health sweep finds one silent, and a kill stops them, their tasks going back
//! to be retried elsewhere (no supervisor hears of it, so no sibling restarts). Its backend
//! is told ([`colony_agents::Agent::retired`]): a `process` agent's process is stopped once
//! those attempts have ended. Growing the pool again first brings its retired workers back,
//! then spawns new ones.
//!
//! Admission follows the pool's size ([`Dispatcher::admit_room`]): a retired worker's room
//! (its concurrency, and its supervisor's queue once every worker there is retired) leaves
//! admission, so a pool shrunk by hand pushes back on submitters as a smaller pool would.
//! An autoscaled pool keeps the room of its retired workers (at most its `max`'s): tasks
//! admitted beyond what it runs now are the demand that grows it back, and a pool at zero
//! must accept the tasks that wake it. The room of an agent down for a restart stays too:
//! it comes back, and its tasks wait for it.

use super::{Dispatcher, command::Resized};
use colony_core::{AgentId, tree::SpecMask};
use std::sync::atomic::Ordering::Relaxed;

impl Dispatcher {
    /// Brings pool `pool` to `agents` agents in this turn: retires the surplus, or brings
    /// retired workers back first and spawns the rest.
    pub(super) fn set_size(&mut self, pool: u8, agents: u32) -> Resized {
        let have = self.shared.pool_agents[pool as usize].load(Relaxed);
        let want = u64::from(agents);
        let mut resized = Resized::default();
        if want < have {
            resized.retired = self.retire(pool, (have - want) as u32);
        } else if want > have {
            let change = (want - have) as u32;
            resized.reinstated = self.reinstate(pool, change);
            let left = change - resized.reinstated;
            if left > 0 {
                self.spawn(pool, left);
                resized.spawned = left;
            }
        }
        resized.agents = self.shared.pool_agents[pool as usize].load(Relaxed);
        resized
    }

    /// Retires up to `count` workers of pool `pool`: those out of service first, then idle
    /// ones, then busy ones, the newest first in each. Returns how many it retired.
    pub(super) fn retire(&mut self, pool: u8, count: u32) -> u32 {
        let worker_tier = self.tree.worker_tier();
        let mut candidates: Vec<AgentId> = self
            .tree
            .agents_in_tier(worker_tier)
            .into_iter()
            .filter(|&w| self.tree.spec(w) == pool && !self.supervision.retired().contains(&w))
            .collect();
        // Down, then idle, then busy; newest first.
        candidates.sort_by_key(|&w| {
            let group = if self.tree.is_down(w) {
                0
            } else if self.tree.load(w).0 == 0 {
                1
            } else {
                2
            };
            (group, std::cmp::Reverse(w.0))
        });
        candidates.truncate(count as usize);
        let mut supervisors = Vec::new();
        for &w in &candidates {
            self.supervision.retire(w);
            // What it still runs ends as no news to its supervisor: a crash there is not a
            // reason to restart a worker that is gone.
            self.watch.reset(&mut self.out, w);
            self.tree.set_down(w, true);
            self.tree.set_retired(w, true);
            supervisors.extend(self.tree.parent(w));
            // Its backend lets go of what it keeps for it (a `process` agent's process, once
            // the attempts it runs have ended).
            self.attempts.pool(pool).agent.retired(w);
            // Messages it had not read go back to their senders.
            self.shared.messages.close(
                &colony_core::mailbox::Endpoint::Agent(w),
                "the agent was retired",
            );
            // Tasks pinned to it (a decision's ballots) wait for nobody now.
            for job in self.place.unpin(&mut self.tree, w) {
                self.unrunnable(job);
            }
        }
        let n = candidates.len() as u32;
        self.shared.pool_agents[pool as usize].fetch_sub(u64::from(n), Relaxed);
        supervisors.sort_unstable();
        supervisors.dedup();
        self.rehome(supervisors);
        self.admit_room();
        // Idle ones at the tree's end leave it now; busy ones once their attempts end.
        self.trim();
        n
    }

    /// Gives back the places at the tree's end of workers retired for good from pools
    /// without an autoscaler, once their attempts have ended, and of managers grown past the
    /// plan that are left with no children: their nodes, queues, health and switches go,
    /// and the next workers added take their ids (and planned places) again. An autoscaled
    /// pool keeps its retired workers' places: their room is what lets it accept the tasks
    /// that grow it back, and growing reuses them. Only the end is trimmed: a retired worker
    /// before one in service keeps its place until the pool grows back into it.
    pub(super) fn trim(&mut self) {
        let (retired, scaled) = (self.supervision.retired(), self.shared.scaled);
        let removed = self.tree.trim_tail(|agent, spec| match spec {
            Some(spec) => retired.contains(&agent) && !scaled.intersects(SpecMask::of(spec)),
            // A manager grown past the plan that the tree found empty.
            None => true,
        });
        if removed.is_empty() {
            return;
        }
        let start = removed.start as usize;
        self.place.forget_from(start);
        self.supervision.forget_agents(removed.clone());
        self.watch.forget_from(start);
        self.attempts.forget_from(start);
        self.freed.retain(|w| w.index() < start);
        // A big spawn left it as long as the tree was.
        self.freed.shrink_to(self.freed.len().max(1_024));
        self.shared
            .counters
            .agents
            .store(self.tree.len() as u64, Relaxed);
        self.shared.messages.forget_agents_from(start as u32);
        self.shared.messages.set_agents(self.tree.len() as u64);
        for (name, size) in self.tree.tier_names().iter().zip(self.tree.tier_sizes()) {
            crate::metrics::Metrics::tier_size(name, *size);
        }
        self.admit_room();
        self.out
            .publish_down(&self.tree, self.supervision.retired().len(), true);
    }

    /// Brings the admission permits to the room the tree holds now: what its agents hold
    /// in service or due back from a restart, less what retired workers of pools without
    /// an autoscaler held. Room that left is withdrawn from the free permits at once, and
    /// from the permits of tasks in flight as they end.
    pub(super) fn admit_room(&mut self) {
        let worker_tier = self.tree.worker_tier();
        let retired = self.supervision.retired();
        let gone = |w: AgentId| {
            retired.contains(&w)
                && !self
                    .shared
                    .scaled
                    .intersects(SpecMask::of(self.tree.spec(w)))
        };
        let mut room = 0u64;
        let mut supervisors = Vec::new();
        for &w in retired {
            if gone(w) {
                room += u64::from(self.attempts.pool(self.tree.spec(w)).concurrency);
                supervisors.extend(self.tree.parent(w));
            }
        }
        supervisors.sort_unstable();
        supervisors.dedup();
        for s in supervisors {
            if self.tree.tier(s) + 1 == worker_tier && self.tree.children(s).all(gone) {
                room += u64::from(self.tree.queue_capacity());
            }
        }
        let capacity = self.tree.installed_capacity().saturating_sub(room);
        if capacity > self.capacity {
            self.shared
                .return_permits((capacity - self.capacity) as usize);
        } else if capacity < self.capacity {
            self.shared.withdraw_permits(self.capacity - capacity);
        }
        self.capacity = capacity;
        self.shared.counters.capacity.store(capacity, Relaxed);
    }

    /// Brings up to `count` retired workers of pool `pool` back into service, the oldest
    /// first. Returns how many came back.
    pub(super) fn reinstate(&mut self, pool: u8, count: u32) -> u32 {
        let mut back: Vec<AgentId> = self
            .supervision
            .retired()
            .iter()
            .copied()
            .filter(|&w| self.tree.spec(w) == pool)
            .collect();
        back.sort_unstable();
        back.truncate(count as usize);
        for &w in &back {
            self.supervision.reinstate(w);
            self.attempts.pool(pool).agent.reinstated(w);
            self.shared.messages.reinstate(w);
            self.tree.set_retired(w, false);
            self.watch.reset(&mut self.out, w);
            // Under a supervisor waiting out a restart, the worker comes up with it.
            if self.tree.parent(w).is_some_and(|p| self.tree.is_down(p)) {
                continue;
            }
            self.tree.set_down(w, false);
            self.freed.push(w);
        }
        let n = back.len() as u32;
        self.shared.pool_agents[pool as usize].fetch_add(u64::from(n), Relaxed);
        self.admit_room();
        n
    }

    /// Moves the tasks queued at `supervisors` that they cannot run any more to where they
    /// can: all of them when a supervisor has no worker in service, else those of specs it no
    /// longer has (its workers of them retired).
    pub(super) fn rehome(&mut self, supervisors: Vec<AgentId>) {
        for job in self.place.evict(&mut self.tree, supervisors) {
            self.route_or_wait(job);
        }
    }
}

#[cfg(test)]
mod tests;
