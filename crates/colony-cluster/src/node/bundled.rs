//! A bundle's delivery: the several tasks of one message ([`crate::bundle`]), each attempted
//! as a task alone is ([`super::attempt`]: its own record, lease, attempts and end), on a
//! slot of its own, let go as it ends. The message is kept alive while any runs or waits
//! for a slot, and answered once for all of them ([`combined`]).

use super::{
    Carried, Kind, Lease, Permit, Phase, Settled, Shared, answer, attempt, read,
    slots::{Held, InQueue},
    unreadable,
};
use crate::{lease::Reply, wire::bundle};
use async_nats::jetstream::Message;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, Semaphore};

/// Delivery `delivered` of the bundle of `count` tasks at stream sequence `sequence`,
/// holding `permits` (at least one; at most one for each task) and a place in its role's
/// queue for each task beyond them (`queued`). Its tasks start at once on those slots, in
/// order; the others wait for a slot of their role and one of the node's as every pull
/// does, ahead of the role's next pull ([`super::slots::Queued`]), and take their lease
/// before they run ([`Lease::Created`]). On a first delivery, the tasks marked cancelled
/// while it was queued are not run.
pub(super) async fn deliver(
    shared: &Shared,
    message: &Message,
    (sequence, delivered, count): (u64, u32, usize),
    permits: Vec<Permit>,
    queued: Vec<InQueue>,
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
    // Ticking from the delivery's start: the read below may take a while.
    let every = shared.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
    let work = Work {
        shared,
        message,
        sequence,
        delivered,
        slots: (role, node),
        lost: AtomicBool::new(false),
        told: Notify::new(),
    };
    let (mut permits, mut queued) = (permits.into_iter(), queued.into_iter());
    let mut runs = Vec::with_capacity(count);
    for (place, task) in tasks.into_iter().enumerate() {
        let cancelled = cancelled.contains(&place);
        let start = if cancelled {
            Start::Cancelled
        } else if let Some(permit) = permits.next() {
            Start::Now(permit)
        } else {
            Start::Waiting(queued.next())
        };
        runs.push(work.one(place, task, start));
    }
    // Those not needed (tasks cancelled) go back at once.
    drop((permits, queued));
    let runs = futures::future::join_all(runs);
    let mut runs = std::pin::pin!(runs);
    let ended = loop {
        tokio::select! {
            ended = &mut runs => break ended,
            // Not once a task found another node holding it: the bundle is that node's now.
            _ = progress.tick(), if !work.lost.load(Ordering::Acquire) => {
                super::keep_alive(shared, message, ("bundle", sequence)).await;
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
    /// A task found another node holding it: the bundle was delivered again (this node
    /// stalled past `ack_wait`), so the tasks not started yet are left to that delivery,
    /// and the in-progress acks stop.
    lost: AtomicBool,
    /// Told when `lost` is set, to the tasks waiting for a slot.
    told: Notify,
}

/// How a task of a bundle starts.
enum Start {
    /// Cancelled while the bundle was queued (its record says so already).
    Cancelled,
    /// On one of the slots the bundle was taken with.
    Now(Permit),
    /// On a slot it waits for, counted in its role's queue meanwhile.
    Waiting(Option<InQueue>),
}

impl Work<'_> {
    /// Task `place` of the bundle, started as `start` says: what it answers (`None`: the
    /// message is left to be delivered again). Its slot is let go as it ends.
    async fn one(&self, place: usize, task: Carried, start: Start) -> Option<Reply> {
        let (permit, waited) = match start {
            Start::Cancelled => {
                self.shared.counters.add(Kind::Cancelled);
                return Some(Reply::Ack);
            }
            Start::Now(permit) => (Some(permit), false),
            Start::Waiting(place_in_queue) => {
                let permit = self.slot().await;
                drop(place_in_queue);
                (permit, true)
            }
        };
        if self.lost.load(Ordering::Acquire) {
            return None;
        }
        // The node stopped taking tasks while it waited: handed back unstarted.
        let Some(permit) = permit else {
            return Some(Reply::Nak(Duration::ZERO));
        };
        let _held = Held::one(permit);
        let Some(id) = bundle::bundled_id(self.sequence, place) else {
            // The client sends no bundle this far in the stream: failed under the message's
            // own sequence rather than delivered again and again.
            tracing::error!(
                "node {}: bundle {}: task {place} has no id (the stream's sequence is past the bundles' range)",
                self.shared.name,
                self.sequence
            );
            let problem = "the bundle is past the stream sequences its tasks can be named under";
            return unreadable(self.shared, self.sequence, problem).await;
        };
        let (spec, together, weigh) = match read(task) {
            Ok((spec, None, weigh)) => (spec, None, weigh),
            Ok((_, Some(_), _)) => {
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
        let task = (spec, together, weigh);
        let ended = attempt(
            self.shared,
            (self.message, true),
            (id, self.delivered),
            task,
            lease,
        );
        let settled = ended.await;
        if settled == Settled::Taken {
            self.lost.store(true, Ordering::Release);
            self.told.notify_waiters();
        }
        settled.reply()
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
        let told = self.told.notified();
        let mut told = std::pin::pin!(told);
        told.as_mut().enable();
        if self.lost.load(Ordering::Acquire) {
            return None;
        }
        tokio::select! {
            permit = both => permit.filter(|_| *self.shared.phase.borrow() == Phase::Taking),
            _ = phase.wait_for(|p| *p != Phase::Taking) => None,
            () = told => None,
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
