//! Moving tasks between sibling supervisors' queues, sans-IO: work stealing and periodic
//! rebalancing.
//!
//! Work stealing ([`steal_from`]) moves one task when a worker runs dry: its supervisor takes
//! it from the sibling with the longest queue, if that queue is long enough to be worth it.
//! Rebalancing ([`plan`]) moves many at once, on a period, when sibling supervisors' queues
//! drift apart: every queue is brought within a tolerance of the siblings' mean by moving tasks
//! from the longest queues to the shortest. Both read queue lengths and answer with indices
//! into them; the runtime moves the tasks.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When and how far queues are evened out.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebalanceOptions {
    /// Time between passes; zero turns rebalancing off.
    pub every: Duration,
    /// How far a queue may stray from its siblings' mean, as a fraction of it.
    pub tolerance: f64,
}

impl Default for RebalanceOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(5),
            tolerance: 0.3,
        }
    }
}

/// A tolerance outside its range, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rebalance tolerance {got} is out of range: allowed above 0.0 and up to 1.0 (100 %)")]
pub struct Error {
    pub got: f64,
}

impl RebalanceOptions {
    pub fn validate(&self) -> Result<(), Error> {
        if self.tolerance.is_nan() || self.tolerance <= 0.0 || self.tolerance > 1.0 {
            return Err(Error {
                got: self.tolerance,
            });
        }
        Ok(())
    }
}

/// Move `count` tasks from queue `from` to queue `to` (indices into the siblings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: usize,
    pub to: usize,
    pub count: usize,
}

/// The moves that bring every queue of `lengths` within `tolerance` of their mean, longest to
/// shortest, or as close as whole tasks allow. No moves when all are within tolerance.
pub fn plan(lengths: &[usize], tolerance: f64) -> Vec<Move> {
    let total: usize = lengths.iter().sum();
    if lengths.len() < 2 || total == 0 {
        return Vec::new();
    }
    let mean = total as f64 / lengths.len() as f64;
    let (upper, lower) = (mean * (1.0 + tolerance), mean * (1.0 - tolerance));
    let mut q = lengths.to_vec();
    let mut moves: Vec<Move> = Vec::new();
    loop {
        let (i, &longest) = q
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .expect("two or more");
        let (j, &shortest) = q
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| **n)
            .expect("two or more");
        let outside = longest as f64 > upper || (shortest as f64) < lower;
        if !outside || longest <= shortest + 1 {
            break;
        }
        q[i] -= 1;
        q[j] += 1;
        match moves.iter_mut().find(|m| m.from == i && m.to == j) {
            Some(m) => m.count += 1,
            None => moves.push(Move {
                from: i,
                to: j,
                count: 1,
            }),
        }
    }
    moves
}

/// Work stealing: which sibling queue an idle worker's supervisor (index `me` among
/// `lengths`) takes a task from: the longest other queue, if it holds at least `steal_at`
/// tasks; the first such on ties. A threshold keeps a worker from taking the one task a
/// sibling is about to start, trading a move for nothing.
pub fn steal_from(lengths: &[usize], me: usize, steal_at: usize) -> Option<usize> {
    let (mut victim, mut longest) = (None, steal_at.saturating_sub(1));
    for (i, &len) in lengths.iter().enumerate() {
        if i != me && len > longest {
            (victim, longest) = (Some(i), len);
        }
    }
    victim
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(lengths: &[usize], moves: &[Move]) -> Vec<usize> {
        let mut q = lengths.to_vec();
        for m in moves {
            q[m.from] -= m.count;
            q[m.to] += m.count;
        }
        q
    }

    #[test]
    fn queues_within_tolerance_are_left_alone() {
        assert!(plan(&[10, 12, 8, 11], 0.3).is_empty());
        assert!(plan(&[0, 0, 0], 0.3).is_empty());
        assert!(plan(&[5], 0.3).is_empty());
    }

    #[test]
    fn a_hot_queue_is_spread_over_its_siblings() {
        let lengths = [40, 0, 2, 6];
        let moves = plan(&lengths, 0.3);
        let q = after(&lengths, &moves);
        assert_eq!(q.iter().sum::<usize>(), 48, "nothing is lost or made");
        let mean = 12.0;
        for n in q {
            assert!((mean * 0.7..=mean * 1.3).contains(&(n as f64)), "{n}");
        }
        assert!(
            moves.iter().all(|m| m.from == 0),
            "only the hot queue gives: {moves:?}"
        );
    }

    #[test]
    fn whole_tasks_stop_the_search() {
        // Mean 0.5: nothing whole can bring 1 and 0 closer.
        assert!(plan(&[1, 0], 0.3).is_empty());
        assert_eq!(
            plan(&[3, 0], 0.3),
            [Move {
                from: 0,
                to: 1,
                count: 1
            }]
        );
    }

    #[test]
    fn tolerance_is_checked() {
        let bad = |t: f64| {
            RebalanceOptions {
                tolerance: t,
                ..RebalanceOptions::default()
            }
            .validate()
        };
        assert!(bad(1.5).unwrap_err().to_string().contains("tolerance 1.5"));
        assert!(bad(0.0).is_err());
        assert!(bad(f64::NAN).is_err());
        assert!(RebalanceOptions::default().validate().is_ok());
    }

    #[test]
    fn a_thief_takes_from_the_first_longest_other_queue() {
        assert_eq!(
            steal_from(&[0, 3, 5, 5, 1], 0, 2),
            Some(2),
            "ties go to the first"
        );
        assert_eq!(
            steal_from(&[9, 3, 4], 0, 2),
            Some(2),
            "its own queue is skipped even when longest"
        );
        assert_eq!(
            steal_from(&[2, 0, 2], 1, 2),
            Some(0),
            "a queue of exactly steal_at"
        );
    }

    #[test]
    fn queues_below_the_threshold_are_left_alone() {
        assert_eq!(steal_from(&[1, 0, 1], 1, 2), None);
        assert_eq!(steal_from(&[0, 5], 1, 6), None);
        assert_eq!(steal_from(&[7], 0, 1), None, "no sibling");
        assert_eq!(steal_from(&[], 0, 1), None);
    }

    #[test]
    fn steal_at_zero_and_one_both_take_any_task() {
        for steal_at in [0, 1] {
            assert_eq!(steal_from(&[0, 0, 1], 0, steal_at), Some(2));
            assert_eq!(steal_from(&[0, 0, 0], 0, steal_at), None, "nothing to take");
        }
    }
}
