//! Where a task is cancelled: taken out of the queue it waits in, or its running attempt
//! stopped through its agent's switch.

use super::{Dispatcher, Job};
use crate::events::{Event, Kinds};
use colony_core::{AgentId, TaskId, task::TaskState};
use colony_journal::Record;

/// What a cancellation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cancelled {
    /// The task was waiting: it is cancelled now.
    Now,
    /// The task was running or waiting out a retry's backoff: its attempt is being stopped,
    /// and the task ends cancelled, unless that attempt succeeds first.
    Stopping,
}

impl Dispatcher {
    /// Cancels `task`. A task in no queue is running (on `running_on`, where the journal last
    /// saw it start), waiting out a retry's backoff, or on its way into the dispatcher: it ends
    /// cancelled as soon as its attempt is stopped or it comes back to be routed.
    pub(super) fn cancel(&mut self, task: TaskId, running_on: Option<AgentId>) -> Cancelled {
        if let Some(job) = self.backlog.pop_matching(usize::MAX, |j| j.id == task) {
            self.queued -= 1;
            self.cancelled(job, None);
            return Cancelled::Now;
        }
        for supervisor in 0..self.queues.len() {
            let Some(queue) = self.queues[supervisor].as_mut() else {
                continue;
            };
            if let Some(job) = queue.pop_matching(usize::MAX, |j| j.id == task) {
                self.queued -= 1;
                self.tree.dequeue(AgentId(supervisor as u32));
                self.cancelled(job, None);
                return Cancelled::Now;
            }
        }
        self.cancels.insert(task);
        if let Some(worker) = running_on
            && self.tree.contains(worker)
            && self.tree.load(worker).0 > 0
            && let Some(switch) = self.kill_switches.get(&worker)
        {
            switch.cancel(task);
        }
        Cancelled::Stopping
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
