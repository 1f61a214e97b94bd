//! A bundle's delivery: the several tasks of one message ([`crate::bundle`]), each attempted
//! as a task alone is ([`super::attempt`]: its own record, lease, attempts and end), on a
//! slot of its own, let go as it ends. The message is kept alive while any runs or waits
//! for a slot, and answered once for all of them ([`combined`]).

use super::{
    Carried, Kind, Lease, Permit, Phase, Shared, answer, attempt, read,
    slots::{Held, Queued},
    unreadable,
};
use crate::{lease::Reply, wire::bundle};
use async_nats::jetstream::{AckKind, Message};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::Semaphore;

/// Delivery `delivered` of the bundle of `count` tasks at stream sequence `sequence`,
/// holding `permits` (at least one; at most one for each task). Its tasks start at once on
/// those slots, in order; the others wait for a slot of their role and one of the node's
/// as every pull does, ahead of the role's next pull ([`Queued`]), and take their lease
/// before they run ([`Lease::Created`]). On a first delivery, the tasks cancelled while it
/// was queued are not run.
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
    let tasks: Vec<Carried> = match bundle::decode(count, message.payload.clone()) {
        Ok(tasks) => tasks.into_iter().map(Ok).collect(),
        // Each of its tasks fails once, for good, saying why.
        Err(problem) => (0..count)
            .map(|_| Err(format!("its bundle is unreadable: {problem}")))
            .collect(),
    };
    // Read before anything runs, within a third of ack_wait (the first in-progress ack is
    // due then); not read, none is taken for cancelled: a cancelled task that runs has its
    // end refused by its record.
    let cancelled = if delivered == 1 {
        let read = shared.cluster.cancelled_in(sequence);
        tokio::time::timeout(shared.ack_wait / 3, read)
            .await
            .unwrap_or_default()
    } else {
        // Each task's record is read before it runs.
        Vec::new()
    };
    let queued = shared.slots.of_role(&role).map(|slot| slot.queued.clone());
    let work = Work {
        shared,
        message,
        sequence,
        delivered,
        slots: (role, node),
        queued,
        lost: AtomicBool::new(false),
    };
    let mut permits = permits.into_iter();
    let mut runs = Vec::with_capacity(count);
    for (place, task) in tasks.into_iter().enumerate() {
        let cancelled = cancelled.contains(&place);
        let permit = if cancelled { None } else { permits.next() };
        if !cancelled
            && permit.is_none()
            && let Some(queued) = &work.queued
        {
            queued.add(1);
        }
        runs.push(work.one(place, task, permit, cancelled));
    }
    // Those not needed (tasks cancelled) go back at once.
    drop(permits);
    let runs = futures::future::join_all(runs);
    let mut runs = std::pin::pin!(runs);
    let every = shared.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let ended = loop {
        tokio::select! {
            ended = &mut runs => break ended,
            // Not once a task found another node holding it: the bundle is that node's now.
            _ = progress.tick(), if !work.lost.load(Ordering::Acquire) => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!("node {}: bundle {sequence}: in-progress ack: {e}", shared.name);
                }
            }
        }
    };
    if let Some(reply) = combined(&ended) {
        answer(message, reply).await;
    }
}

/// What every task of one bundle's delivery shares.
struct Work<'a> {
    shared: &'a Shared,
    message: &'a Message,
    sequence: u64,
    delivered: u32,
    /// The semaphores of the bundle's role's slots and of the node's.
    slots: (Arc<Semaphore>, Arc<Semaphore>),
    /// The count of the role's tasks waiting in bundles for a slot.
    queued: Option<Arc<Queued>>,
    /// A task's attempt was left unanswered (another node holds it now, or its end could
    /// not be written): the bundle will be delivered again, so the tasks not started yet
    /// are left to that delivery, and its in-progress acks stop.
    lost: AtomicBool,
}

impl Work<'_> {
    /// Task `place` of the bundle, on `permit` or a slot it waits for (counted in
    /// `queued` by the caller): what it answers. Its slot is let go as it ends.
    async fn one(
        &self,
        place: usize,
        task: Carried,
        permit: Option<Permit>,
        cancelled: bool,
    ) -> Option<Reply> {
        if cancelled {
            // Its record says so already.
            self.shared.counters.add(Kind::Cancelled);
            return Some(Reply::Ack);
        }
        let waited = permit.is_none();
        let permit = match permit {
            Some(permit) => Some(permit),
            None => {
                let permit = if self.lost.load(Ordering::Acquire) {
                    None
                } else {
                    self.slot().await
                };
                if let Some(queued) = &self.queued {
                    queued.done();
                }
                permit
            }
        };
        let Some(permit) = permit else {
            if self.lost.load(Ordering::Acquire) {
                return None;
            }
            // The node stopped taking tasks while it waited: handed back unstarted.
            return Some(Reply::Nak(Duration::ZERO));
        };
        let _held = Held::one(permit);
        if self.lost.load(Ordering::Acquire) {
            return None;
        }
        let Some(id) = bundle::bundled_id(self.sequence, place) else {
            // The client names no such bundle: it checks the stream's sequence first.
            tracing::error!(
                "node {}: bundle {}: task {place} has no id (the stream's sequence is past the bundles' range); left in the stream",
                self.shared.name,
                self.sequence
            );
            return None;
        };
        let (spec, together) = match read(task) {
            Ok((spec, None)) => (spec, None),
            Ok((_, Some(_))) => {
                let problem = "a bundle carries plain tasks only: a vote or a team goes alone";
                return unreadable(self.shared, id, problem).await;
            }
            Err(problem) => return unreadable(self.shared, id, &problem).await,
        };
        let lease = match (self.delivered, waited) {
            (1, false) => Lease::Lazy,
            (1, true) => Lease::Created,
            _ => Lease::Read,
        };
        let (shared, message) = (self.shared, self.message);
        let reply = attempt(
            shared,
            message,
            (id, self.delivered),
            (spec, together),
            lease,
        )
        .await;
        if reply.is_none() {
            self.lost.store(true, Ordering::Release);
        }
        reply
    }

    /// A slot of the bundle's role and one of the node's, waited for in that order as every
    /// pull takes them; `None` once the node stops taking tasks (draining, handing back).
    async fn slot(&self) -> Option<Permit> {
        let mut phase = self.shared.phase.clone();
        let (role, node) = &self.slots;
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
