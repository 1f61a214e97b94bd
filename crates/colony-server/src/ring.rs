//! The recent past the charts read: records in a [`Ring`] of bounded length, each later
//! than the one before, so that `since` is an exact cursor. The pools' history
//! (`history.rs`) keeps two rings behind one lock, stamped by one [`Clock`] whose times only
//! go up; the cluster's roles' history (`cluster/role_history.rs`) keeps one, timed by the
//! cluster's samples.

use std::{
    collections::VecDeque,
    time::{Instant, SystemTime},
};

/// Times for records: milliseconds since the Unix epoch, read once at start and then moved
/// on by a monotonic clock, so that they never go back (the system clock may); each stamp is
/// later than the one before, even within one millisecond.
#[derive(Debug)]
pub(crate) struct Clock {
    /// Milliseconds since the Unix epoch at `start`.
    epoch_ms: u64,
    start: Instant,
    /// The newest stamp given: the next is later.
    last: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let epoch_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            epoch_ms,
            start: Instant::now(),
            last: 0,
        }
    }

    /// A time for a record: now, or just after the last one if the clock has not moved on a
    /// millisecond since.
    pub(crate) fn stamp(&mut self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last = self.epoch_ms.saturating_add(elapsed).max(self.last + 1);
        self.last
    }

    /// The newest stamp given (0 before the first): a reader's cursor for what comes next.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }
}

/// At most `cap` records in the order they were stamped, the oldest dropped first.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    items: VecDeque<(u64, T)>,
    cap: usize,
}

impl<T> Ring<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap,
        }
    }

    /// The most records kept.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Keeps `item`, stamped `t` (later than every record kept), dropping the oldest when
    /// full.
    pub(crate) fn push(&mut self, t: u64, item: T) {
        if self.cap == 0 {
            return;
        }
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back((t, item));
    }

    /// The records stamped after `since`, oldest first.
    pub(crate) fn after(
        &self,
        since: u64,
    ) -> impl ExactSizeIterator<Item = &(u64, T)> + Clone + '_ {
        let first = self.items.partition_point(|(t, _)| *t <= since);
        self.items.range(first..)
    }

    /// The newest record.
    pub(crate) fn newest(&self) -> Option<&T> {
        self.items.back().map(|(_, item)| item)
    }

    /// The time of the newest record.
    pub(crate) fn newest_time(&self) -> Option<u64> {
        self.items.back().map(|(t, _)| *t)
    }

    /// The time of the oldest record.
    pub(crate) fn oldest_time(&self) -> Option<u64> {
        self.items.front().map(|(t, _)| *t)
    }

    /// Drops the records stamped before `t`.
    pub(crate) fn drop_before(&mut self, t: u64) {
        while self.items.front().is_some_and(|(at, _)| *at < t) {
            self.items.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_only_go_up_even_within_a_millisecond() {
        let mut clock = Clock::new();
        assert_eq!(clock.last(), 0);
        let stamps: Vec<u64> = (0..1_000).map(|_| clock.stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(clock.last(), stamps[999]);
        assert!(
            stamps[0] > 1_600_000_000_000,
            "milliseconds since the epoch"
        );
    }

    #[test]
    fn a_ring_keeps_its_newest_and_reads_after_a_cursor() {
        let mut ring = Ring::new(3);
        assert_eq!(ring.cap(), 3);
        assert!(ring.newest().is_none() && ring.oldest_time().is_none());
        for t in 1..=5 {
            ring.push(t * 10, t);
        }
        let all: Vec<_> = ring.after(0).copied().collect();
        assert_eq!(all, [(30, 3), (40, 4), (50, 5)], "the newest three");
        assert_eq!(ring.after(30).len(), 2, "after is exclusive");
        assert_eq!(ring.after(35).len(), 2);
        assert_eq!(ring.after(50).len(), 0);
        assert_eq!(ring.newest(), Some(&5));
        assert_eq!(ring.oldest_time(), Some(30));
        ring.drop_before(45);
        assert_eq!(ring.after(0).copied().collect::<Vec<_>>(), [(50, 5)]);
        let mut none = Ring::new(0);
        none.push(1, ());
        assert_eq!(none.after(0).len(), 0, "a ring of nothing keeps nothing");
    }
}
