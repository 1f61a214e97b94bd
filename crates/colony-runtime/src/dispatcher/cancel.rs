//! Where a task is cancelled: taken out of the queue it waits in, or its running attempt
//! stopped through its agent's switch.

use super::{
    Dispatcher,
    command::{Cancelled, Job},
};
use crate::events::{Event, Kinds};
use colony_core::{AgentId, TaskId, task::TaskState};
use colony_journal::Record;
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// Where the dispatcher's tasks are when they are in no queue, kept only for cancellation:
/// a task is found, or known to be no longer live, without a scan of every agent.
#[derive(Debug, Default)]
pub(super) struct Whereabouts {
    /// Attempts running outside `handle`, by task: the agent that runs each. Written for
    /// every such attempt, so hashed by a multiply rather than SipHash (ids are ours, not an
    /// attacker's choice).
    pub(super) running: HashMap<TaskId, AgentId, BuildHasherDefault<IdHasher>>,
    /// Tasks waiting out a retry's backoff.
    pub(super) backoff: std::collections::HashSet<TaskId>,
}

/// Hashes a task id with one multiply by an odd constant (Fibonacci hashing).
#[derive(Debug, Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Dispatcher {
    /// Cancels `task` if this dispatcher holds it; `None` if it does not (it ended, or never
    /// was). A waiting task is cancelled at once. A running attempt is woken through its
    /// agent's switch; a retry waiting out its backoff, or a submission on its way in, ends
    /// cancelled when it comes to be routed.
    pub(super) fn cancel(&mut self, task: TaskId) -> Option<Cancelled> {
        if let Some(job) = self.place.remove(&mut self.tree, task) {
            self.cancelled(job, None);
            return Some(Cancelled::Now);
        }
        if let Some(&worker) = self.attempts.whereabouts.running.get(&task) {
            self.attempts.ask_cancel(task);
            if let Some(switch) = self.attempts.switch(worker) {
                switch.cancel(task);
            }
            return Some(Cancelled::Stopping);
        }
        let arriving = self
            .pending
            .iter()
            .any(|&(first, last)| (first.0..=last.0).contains(&task.0));
        if arriving || self.attempts.whereabouts.backoff.contains(&task) {
            self.attempts.ask_cancel(task);
            return Some(Cancelled::Stopping);
        }
        None
    }

    /// `job` ends cancelled; `worker` ran its last attempt, if any did.
    pub(super) fn cancelled(&mut self, job: Job, worker: Option<AgentId>) {
        self.cancelled_for(job, worker, "cancelled");
    }

    /// `job` is pinned to a worker that left its pool: nobody may run it, so it ends
    /// cancelled, saying why.
    pub(super) fn unrunnable(&mut self, job: Job) {
        let worker = job.pin;
        self.cancelled_for(
            job,
            worker,
            "cancelled: the worker it was pinned to left its pool",
        );
    }

    fn cancelled_for(&mut self, job: Job, worker: Option<AgentId>, why: &str) {
        let task = job.id;
        self.out.record(Record::Cancelled { task });
        self.out
            .event(Kinds::TASKS, || Event::TaskCancelled { task });
        self.out.turn.cancelled += 1;
        self.out
            .complete(job, TaskState::Cancelled, None, Some(why.into()), worker);
    }
}

#[cfg(test)]
mod tests;
