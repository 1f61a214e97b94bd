//! A bundle's delivery: the several tasks of one message ([`crate::bundle`]), each attempted
//! as a task alone is ([`super::attempt`]: its own record, lease, attempts and end), as many
//! at once as the slots the bundle holds. The message is kept alive while any runs or waits
//! for a slot, and answered once for all of them ([`combined`]).

use super::{Carried, Kind, Permit, Phase, Shared, answer, attempt};
use crate::{lease::Reply, wire::bundle};
use async_nats::jetstream::{AckKind, Message};
use std::{collections::VecDeque, sync::Arc, time::Duration};
use tokio::sync::Semaphore;

/// The tasks of a bundle not started yet, each with its place.
type Queue = std::sync::Mutex<VecDeque<(usize, Carried)>>;

/// Delivery `delivered` of the bundle of `count` tasks at stream sequence `sequence`,
/// holding `permits` (at least one; at most one for each task). A worker for each permit
/// takes the bundle's tasks in order, each on a slot of the task's role and one of the
/// node's: the first on the slot it was pulled with, the next on one it waits for as every
/// pull does. On a first delivery, the tasks cancelled while it was queued are not run.
pub(super) async fn deliver(
    shared: &Shared,
    message: &Message,
    sequence: u64,
    delivered: u32,
    count: usize,
    permits: Vec<Permit>,
) {
    let Some((role, node)) = permits
        .first()
        .map(|(role, node)| (role.semaphore().clone(), node.semaphore().clone()))
    else {
        return answer(message, Reply::Nak(Duration::ZERO)).await;
    };
    let tasks: VecDeque<(usize, Carried)> = match bundle::decode(count, message.payload.clone()) {
        Ok(tasks) => tasks.into_iter().map(Ok).enumerate().collect(),
        // Each of its tasks fails once, for good, saying why.
        Err(problem) => (0..count)
            .map(|i| (i, Err(format!("its bundle is unreadable: {problem}"))))
            .collect(),
    };
    let cancelled = if delivered == 1 {
        shared.cluster.cancelled_in(sequence).await
    } else {
        // Each task's record is read before it runs.
        Vec::new()
    };
    let queue: Queue = std::sync::Mutex::new(tasks);
    let slots = (role, node);
    let workers = permits.into_iter().map(|permit| {
        let work = Work {
            shared,
            message,
            sequence,
            delivered,
            cancelled: &cancelled,
            queue: &queue,
            slots: &slots,
        };
        work.run(permit)
    });
    let workers = futures::future::join_all(workers);
    let mut workers = std::pin::pin!(workers);
    let every = shared.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let replies = loop {
        tokio::select! {
            replies = &mut workers => break replies,
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!("node {}: bundle {sequence}: in-progress ack: {e}", shared.name);
                }
            }
        }
    };
    let replies: Vec<Option<Reply>> = replies.into_iter().flatten().collect();
    if let Some(reply) = combined(&replies) {
        answer(message, reply).await;
    }
}

/// What every worker of one bundle's delivery shares.
struct Work<'a> {
    shared: &'a Shared,
    message: &'a Message,
    sequence: u64,
    delivered: u32,
    cancelled: &'a [usize],
    queue: &'a Queue,
    /// The semaphores of the bundle's role's slots and of the node's.
    slots: &'a (Arc<Semaphore>, Arc<Semaphore>),
}

impl Work<'_> {
    /// Takes the bundle's tasks one after another until none is left: what each answers.
    async fn run(self, permit: Permit) -> Vec<Option<Reply>> {
        let mut permit = Some(permit);
        let mut replies = Vec::new();
        loop {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some((place, task)) = next else { break };
            if self.cancelled.contains(&place) {
                self.shared.counters.add(Kind::Cancelled);
                replies.push(Some(Reply::Ack));
                continue;
            }
            let Some(id) = bundle::bundled_id(self.sequence, place) else {
                tracing::error!(
                    "node {}: bundle {}: task {place} has no id (the stream's sequence is past the bundles' range); left in the stream",
                    self.shared.name,
                    self.sequence
                );
                replies.push(None);
                continue;
            };
            let permit = match permit.take() {
                Some(permit) => permit,
                None => match self.slot().await {
                    Some(permit) => permit,
                    // The node stopped taking tasks: handed back unstarted.
                    None => {
                        replies.push(Some(Reply::Nak(Duration::ZERO)));
                        continue;
                    }
                },
            };
            let reply = attempt(self.shared, self.message, id, self.delivered, task, permit).await;
            replies.push(reply);
        }
        replies
    }

    /// A slot of the bundle's role and one of the node's, waited for in that order as every
    /// pull takes them; `None` once the node stops taking tasks (draining, handing back).
    async fn slot(&self) -> Option<Permit> {
        let mut phase = self.shared.phase.clone();
        let (role, node) = self.slots;
        let both = async {
            let role = role.clone().acquire_owned().await.ok()?;
            let node = node.clone().acquire_owned().await.ok()?;
            Some((role, node))
        };
        tokio::select! {
            permit = both => permit.filter(|_| *self.shared.phase.borrow() == Phase::Taking),
            _ = phase.wait_for(|p| *p != Phase::Taking) => None,
        }
    }
}

/// One answer for a bundle from its tasks' (`None`: leave the message to be delivered
/// again): none while any task leaves it so (its end unwritten, or another node holding it
/// now); else an ack when every task has ended; else a nak after the longest delay any task
/// asked for (a retry's backoff, or a hand-back's none). On the next delivery each task's
/// record answers for it: the ended ones are acked without running again.
fn combined(replies: &[Option<Reply>]) -> Option<Reply> {
    let mut out = Reply::Ack;
    for reply in replies {
        out = match ((*reply)?, out) {
            (Reply::Ack, out) => out,
            (Reply::Nak(d), Reply::Ack) => Reply::Nak(d),
            (Reply::Nak(d), Reply::Nak(e)) => Reply::Nak(d.max(e)),
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_acked_once_all_ended_and_else_given_back_or_left() {
        let ack = Some(Reply::Ack);
        let nak = |ms| Some(Reply::Nak(Duration::from_millis(ms)));
        assert_eq!(combined(&[ack, ack]), Some(Reply::Ack));
        assert_eq!(combined(&[ack, nak(0), ack]), nak(0));
        assert_eq!(combined(&[nak(500), ack, nak(0)]), nak(500));
        assert_eq!(combined(&[nak(0), nak(2000)]), nak(2000));
        assert_eq!(combined(&[ack, None, nak(0)]), None);
        assert_eq!(combined(&[None]), None);
    }
}
