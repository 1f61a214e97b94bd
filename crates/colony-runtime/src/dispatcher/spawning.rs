//! Where agents join: workers added to the live tree (taking their planned places, or
//! growing the tree past its plan), the parts told of the new agents, the admission permits
//! raised by the room they bring, and the hierarchy recorded in the journal for
//! chain-of-command queries.

use super::Dispatcher;
use crate::{
    events::{Event, Kinds},
    metrics::Metrics,
};
use colony_core::AgentId;
use std::{sync::atomic::Ordering::Relaxed, time::Instant};

impl Dispatcher {
    /// Adds `count` workers to pool `pool`; returns the first one's id.
    pub(super) fn spawn(&mut self, pool: u8, count: u32) -> Option<AgentId> {
        let started = Instant::now();
        let before = self.tree.len();
        let concurrency = self.attempts.pool(pool).concurrency;
        let workers = self.tree.add_workers(count, pool, concurrency);
        let after = self.tree.len();
        self.place.grow(after);
        self.supervision.grow(after);
        self.watch.restore(&self.tree, before, after);
        self.shared.pool_agents[pool as usize].fetch_add(u64::from(count), Relaxed);
        self.record_hierarchy(before, after);
        // New workers are idle: let them look at their supervisors' queues.
        self.freed.extend(&workers);
        // Tasks that had no pool with agents may have one now.
        self.place.adopt_orphans(&self.shared);
        self.admit_room();
        // Published now, not at the end of the turn: the spawner hears back before then.
        self.shared.counters.agents.store(after as u64, Relaxed);
        self.shared.messages.set_agents(after as u64);
        self.out.metrics.spawned.increment((after - before) as u64);
        self.out.metrics.spawn_duration.record(started.elapsed());
        for (name, size) in self.tree.tier_names().iter().zip(self.tree.tier_sizes()) {
            Metrics::tier_size(name, *size);
        }
        self.out
            .publish_down(&self.tree, self.supervision.retired().len(), true);
        if self.out.wants(Kinds::AGENTS) {
            // Growth past the plan interleaves new managers with the new workers: one event
            // per run of consecutive ids in one tier.
            let mut id = before;
            while id < after {
                let tier = self.tree.tier(AgentId(id as u32));
                let run = (id..after)
                    .take_while(|&i| self.tree.tier(AgentId(i as u32)) == tier)
                    .count();
                self.out.event(Kinds::AGENTS, || Event::AgentsSpawned {
                    first: AgentId(id as u32),
                    count: run as u32,
                    tier: tier as u8,
                });
                id += run;
            }
        }
        workers.first().copied()
    }

    /// Hands agents `before..after` to the journal, which serves chain-of-command queries
    /// from them. The first spawn of a process replaces what an earlier one recorded.
    fn record_hierarchy(&mut self, before: usize, after: usize) {
        let replace = !self.hierarchy_recorded;
        // The managing tiers come first, from the plan, on the first spawn.
        let from = if replace { 0 } else { before };
        let worker_tier = self.tree.worker_tier();
        let records = (from..after)
            .map(|i| {
                let id = AgentId(i as u32);
                let tier = self.tree.tier(id);
                colony_journal::AgentRecord {
                    id,
                    tier: tier as u8,
                    parent: self.tree.parent(id),
                    pool: (tier == worker_tier).then(|| self.tree.spec(id)),
                }
            })
            .collect();
        let tiers: Vec<String> = self
            .tree
            .tier_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let durable = self.shared.journal.record_agents(&tiers, records, replace);
        self.hierarchy_recorded = true;
        self.out.flush(durable, "Recording the hierarchy");
    }
}
