//! Back-pressure from a journal's writer to the tasks that feed it.
//!
//! A journal with a writer thread takes writes into an unbounded channel, so that sending
//! never blocks the thread that sends: the runtime's dispatcher and submitters run on tokio's
//! workers, and a blocked worker stops kills, cancellations and health sweeps with it. The
//! bound moves to this count of waiting writes: submitters await [`Backlog::room`] before they
//! write, so a slow or faulty disk makes them wait, asleep, instead of blocking a thread.
//! The dispatcher's own writes are not held back: they record the ends of tasks that already
//! hold admission permits, which the runtime returns only once those ends are durable, so
//! they are bounded by admission.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Writes sent to a writer and not yet taken by it, against a limit.
#[derive(Debug)]
pub struct Backlog {
    waiting: AtomicUsize,
    limit: usize,
    freed: Notify,
}

impl Backlog {
    /// A backlog that has room while fewer than `limit` writes wait (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            limit: limit.max(1),
            freed: Notify::new(),
        }
    }

    /// A write was sent.
    pub fn add(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    /// The writer took `n` writes.
    pub fn took(&self, n: usize) {
        let before = self.waiting.fetch_sub(n, Ordering::AcqRel);
        if before >= self.limit && before - n < self.limit {
            self.freed.notify_waiters();
        }
    }

    /// Writes waiting for the writer.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn has_room(&self) -> bool {
        self.waiting() < self.limit
    }

    /// Resolves once fewer than the limit of writes wait. Several callers may pass at once,
    /// so the backlog can exceed its limit by one write per concurrent caller.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a `took` between the check and the wait wakes it.
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn room_waits_while_full_and_wakes_when_the_writer_takes() {
        let backlog = Backlog::new(2);
        assert!(backlog.room().now_or_never().is_some());
        backlog.add();
        backlog.add();
        assert!(!backlog.has_room());
        let mut waiting = Box::pin(backlog.room());
        assert!((&mut waiting).now_or_never().is_none(), "full: it waits");
        backlog.took(1);
        assert!(waiting.now_or_never().is_some(), "room again: it resolves");
        assert_eq!(backlog.waiting(), 1);
    }
}
