//! Bounded priority queues: what a supervisor holds for its workers.

use colony_core::task::Priority;
use std::collections::VecDeque;

/// A push that found the queue full; the item comes back so the caller decides what to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

/// A queue with one FIFO per priority: pushes and pops are O(1), and the highest priority
/// present always leaves first.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    buckets: [VecDeque<T>; Priority::LEVELS],
    /// Bit `p` set while bucket `p` holds items.
    occupied: u16,
    len: usize,
    capacity: usize,
}

impl<T> PriorityQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            buckets: Default::default(),
            occupied: 0,
            len: 0,
            capacity,
        }
    }

    pub fn push(&mut self, priority: Priority, item: T) -> Result<(), Full<T>> {
        if self.len >= self.capacity {
            return Err(Full(item));
        }
        let p = priority.get();
        self.buckets[p as usize].push_back(item);
        self.occupied |= 1 << p;
        self.len += 1;
        Ok(())
    }

    /// Puts an item back at the head of its priority, bypassing the bound: for items that
    /// were already counted, such as one taken and then found unusable.
    pub fn push_front(&mut self, priority: Priority, item: T) {
        let p = priority.get();
        self.buckets[p as usize].push_front(item);
        self.occupied |= 1 << p;
        self.len += 1;
    }

    /// The oldest item of the highest priority.
    pub fn pop(&mut self) -> Option<T> {
        self.pop_matching(1, |_| true)
    }

    /// The first item, highest priority first, for which `accept` holds, looking at no more
    /// than `depth` items of each priority.
    pub fn pop_matching(&mut self, depth: usize, accept: impl Fn(&T) -> bool) -> Option<T> {
        let mut occupied = self.occupied;
        while occupied != 0 {
            let p = 15 - occupied.leading_zeros() as usize;
            occupied &= !(1 << p);
            let bucket = &mut self.buckets[p];
            if let Some(i) = bucket.iter().take(depth).position(&accept) {
                let item = bucket.remove(i).expect("position is in range");
                if bucket.is_empty() {
                    self.occupied &= !(1 << p);
                }
                self.len -= 1;
                return Some(item);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Visits every queued item, to update it in place.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        for bucket in &mut self.buckets {
            bucket.iter_mut().for_each(&mut f);
        }
    }

    /// Changes the bound; items already queued beyond a lower bound stay.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> Priority {
        Priority::new(n).unwrap()
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut q = PriorityQueue::new(10);
        for (prio, item) in [(1, "low-a"), (9, "urgent"), (5, "mid"), (1, "low-b")] {
            q.push(p(prio), item).unwrap();
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["urgent", "mid", "low-a", "low-b"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_hands_the_item_back() {
        let mut q = PriorityQueue::new(2);
        q.push(p(0), 1).unwrap();
        q.push(p(0), 2).unwrap();
        assert_eq!(q.push(p(9), 3), Err(Full(3)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn matching_skips_items_others_must_take() {
        let mut q = PriorityQueue::new(10);
        for item in [1, 2, 3, 4] {
            q.push(p(3), item).unwrap();
        }
        assert_eq!(q.pop_matching(2, |&x| x % 2 == 0), Some(2));
        assert_eq!(
            q.pop_matching(1, |&x| x == 4),
            None,
            "4 is beyond the depth looked at"
        );
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.len(), 2);
    }
}
