//! Where a task is cancelled: taken out of the queue it waits in, or its running attempt
//! stopped through its agent's switch.

use super::{Dispatcher, Job};
use crate::events::{Event, Kinds};
use colony_core::{AgentId, TaskId, task::TaskState};
use colony_journal::Record;
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// What a cancellation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cancelled {
    /// The task was waiting: it is cancelled now.
    Now,
    /// The task was running, waiting out a retry's backoff, or on its way in: its attempt is
    /// being stopped, and the task ends cancelled, unless that attempt succeeds first.
    Stopping,
}

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
    /// Submissions the journal is making durable: first and last task id of each.
    pub(super) pending: Vec<(TaskId, TaskId)>,
    /// Supervisors that have had a queue, the only ones a queued task can be in.
    pub(super) queues: Vec<AgentId>,
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
        if let Some(job) = self.backlog.pop_matching(usize::MAX, |j| j.id == task) {
            self.queued -= 1;
            self.orphans -= usize::from(job.requirement.is_some());
            self.cancelled(job, None);
            return Some(Cancelled::Now);
        }
        for i in 0..self.live.queues.len() {
            let supervisor = self.live.queues[i];
            let Some(queue) = self.queues[supervisor.index()].as_mut() else {
                continue;
            };
            if queue.is_empty() {
                continue;
            }
            if let Some(job) = queue.pop_matching(usize::MAX, |j| j.id == task) {
                self.queued -= 1;
                self.tree.dequeue(supervisor);
                self.cancelled(job, None);
                return Some(Cancelled::Now);
            }
        }
        if let Some(&worker) = self.live.running.get(&task) {
            self.cancels.insert(task);
            if let Some(switch) = self.kill_switches.get(&worker) {
                switch.cancel(task);
            }
            return Some(Cancelled::Stopping);
        }
        let arriving = self
            .live
            .pending
            .iter()
            .any(|&(first, last)| (first.0..=last.0).contains(&task.0));
        if arriving || self.live.backoff.contains(&task) {
            self.cancels.insert(task);
            return Some(Cancelled::Stopping);
        }
        None
    }

    /// `job` ends cancelled; `worker` ran its last attempt, if any did.
    pub(super) fn cancelled(&mut self, job: Job, worker: Option<AgentId>) {
        self.records.push(Record::Cancelled { task: job.id });
        if self.shared.bus.wants(Kinds::TASKS) {
            self.events.push(Event::TaskCancelled { task: job.id });
        }
        self.turn.cancelled += 1;
        self.complete(
            job,
            TaskState::Cancelled,
            None,
            Some("cancelled".into()),
            worker,
        );
    }
}

#[cfg(test)]
mod tests;
