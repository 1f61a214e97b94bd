//! What the tasks stream holds, counted in tasks rather than messages.
//!
//! A bundle's message goes on a subject of its own that says how many tasks it holds
//! ([`settings::bundle_subject`]), so the stream's count of each subject's messages gives
//! every role's and priority's tasks exactly. A consumer counts messages only (waiting to
//! be delivered, and delivered but not acknowledged); its counts become tasks in the
//! proportion of the tasks to the messages of its subjects. The sum of the two is the
//! tasks its subjects hold; the split between them is exact when the role's messages at
//! that priority hold as many tasks each (plain tasks alone, or bundles of one size).

use crate::settings;
use std::collections::{BTreeMap, BTreeSet};

/// The messages and the tasks on the stream's subjects, per role (`*` for tasks any agent
/// may run, as the consumers name it) and priority.
#[derive(Clone, Debug, Default)]
pub(crate) struct InStream {
    by: BTreeMap<(String, u8), Held>,
}

/// Messages, and the tasks they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) messages: u64,
    pub(crate) tasks: u64,
}

impl InStream {
    /// Counts `messages` messages on `subject`; a subject of no task message is passed over.
    pub(crate) fn add(&mut self, subject: &str, messages: u64) {
        let Some((role, priority, tasks)) = settings::parse_subject(subject) else {
            return;
        };
        let role = if role == settings::ANY_ROLE {
            "*"
        } else {
            role
        };
        let held = self.by.entry((role.to_owned(), priority)).or_default();
        held.messages = held.messages.saturating_add(messages);
        held.tasks = held.tasks.saturating_add(messages.saturating_mul(tasks));
    }

    /// Every task the stream holds.
    pub(crate) fn tasks(&self) -> u64 {
        self.by.values().map(|h| h.tasks).sum()
    }

    /// What `role`'s subjects at `priority` hold.
    pub(crate) fn held(&self, role: &str, priority: u8) -> Held {
        self.by
            .get(&(role.to_owned(), priority))
            .copied()
            .unwrap_or_default()
    }

    /// What each role's subjects hold, its priorities summed.
    pub(crate) fn by_role(&self) -> BTreeMap<&str, Held> {
        let mut roles: BTreeMap<&str, Held> = BTreeMap::new();
        for ((role, _), held) in &self.by {
            let sum = roles.entry(role.as_str()).or_default();
            sum.messages = sum.messages.saturating_add(held.messages);
            sum.tasks = sum.tasks.saturating_add(held.tasks);
        }
        roles
    }

    /// The tasks waiting and running of a consumer of `role` at `priority` that counts
    /// `waiting` messages not delivered yet and `running` delivered and not acknowledged.
    /// Without bundles, the consumer's own counts.
    pub(crate) fn split(&self, role: &str, priority: u8, waiting: u64, running: u64) -> (u64, u64) {
        let Held { messages, tasks } = self.held(role, priority);
        if messages == 0 || tasks == messages {
            return (waiting, running);
        }
        let of = |n: u64| {
            let scaled = (u128::from(n) * u128::from(tasks) + u128::from(messages) / 2)
                / u128::from(messages);
            u64::try_from(scaled).unwrap_or(u64::MAX).min(tasks)
        };
        // Running as what is left of both: the two never sum past the tasks held.
        let waited = of(waiting);
        (waited, of(waiting.saturating_add(running)) - waited)
    }

    /// The roles and priorities whose subjects hold tasks and that have no consumer among
    /// `consumed` (no node has served the role yet): every task of theirs waits.
    pub(crate) fn unconsumed<'a>(
        &'a self,
        consumed: &'a BTreeSet<(String, u8)>,
    ) -> impl Iterator<Item = (&'a str, u8, Held)> + 'a {
        self.by
            .iter()
            .filter(move |(key, held)| held.tasks > 0 && !consumed.contains(*key))
            .map(|((role, priority), held)| (role.as_str(), *priority, *held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(subjects: &[(&str, u64)]) -> InStream {
        let mut queued = InStream::default();
        for (subject, messages) in subjects {
            queued.add(subject, *messages);
        }
        queued
    }

    #[test]
    fn plain_tasks_are_counted_as_the_consumer_counts_them() {
        let q = queued(&[("colony.tasks.worker.p5", 7), ("colony.tasks._.p0", 2)]);
        assert_eq!(q.tasks(), 9);
        assert_eq!(q.split("worker", 5, 4, 3), (4, 3));
        // The consumer read a moment apart from the stream: its own counts still.
        assert_eq!(q.split("worker", 5, 5, 3), (5, 3));
        assert_eq!(
            q.held("*", 0),
            Held {
                messages: 2,
                tasks: 2
            }
        );
        assert_eq!(q.split("other", 5, 1, 0), (1, 0));
    }

    #[test]
    fn a_bundle_counts_each_of_its_tasks() {
        // Three bundles of 16 and one of 8 on worker's priority 5: 56 tasks in 4 messages.
        let q = queued(&[
            ("colony.tasks.worker.p5.16", 3),
            ("colony.tasks.worker.p5.8", 1),
            ("colony.tasks.worker.p3", 5),
            ("colony.memory.m", 40),
            ("colony.tasks.worker.p5.x", 9),
        ]);
        assert_eq!(q.tasks(), 61, "the foreign subjects are passed over");
        assert_eq!(
            q.held("worker", 5),
            Held {
                messages: 4,
                tasks: 56
            }
        );
        // Every message waiting, or every one delivered: all 56 tasks either way.
        assert_eq!(q.split("worker", 5, 4, 0), (56, 0));
        assert_eq!(q.split("worker", 5, 0, 4), (0, 56));
        // Half of each: in proportion, summing to the tasks held.
        assert_eq!(q.split("worker", 5, 2, 2), (28, 28));
        assert_eq!(
            q.by_role()["worker"],
            Held {
                messages: 9,
                tasks: 61
            }
        );
        // A plain task and a bundle of two, one waiting and one delivered: 3 tasks, not 4.
        let mixed = queued(&[
            ("colony.tasks.worker.p5", 1),
            ("colony.tasks.worker.p5.2", 1),
        ]);
        assert_eq!(mixed.split("worker", 5, 1, 1), (2, 1));
        // Bundles of one size: exact.
        let even = queued(&[("colony.tasks.worker.p5.16", 10)]);
        assert_eq!(even.split("worker", 5, 3, 7), (48, 112));
        // A consumer that counts more than the stream held a moment before: never more
        // tasks than the stream holds.
        assert_eq!(even.split("worker", 5, 30, 0), (160, 0));
        assert_eq!(even.split("worker", 5, 8, 8), (128, 32));
    }

    #[test]
    fn tasks_of_a_role_no_consumer_takes_all_wait() {
        let q = queued(&[
            ("colony.tasks.new.p5.4", 2),
            ("colony.tasks.new.p7", 1),
            ("colony.tasks.worker.p5", 3),
            ("colony.tasks.gone.p1", 0),
        ]);
        let consumed: BTreeSet<(String, u8)> = [("worker".to_owned(), 5)].into();
        let left: Vec<_> = q
            .unconsumed(&consumed)
            .map(|(role, p, held)| (role, p, held.tasks))
            .collect();
        assert_eq!(left, [("new", 5, 8), ("new", 7, 1)]);
    }
}
