//! The count of one round: which candidate each key belongs to, and each candidate's weight.

use super::similarity::Clusters;
use std::{borrow::Cow, collections::HashMap, sync::Arc};

/// Up to this many candidates of exact keys, a key is found by comparing it with each of
/// them, which costs less than hashing it: most votes have a few candidates.
const SCANNED: usize = 8;

/// One candidate value of a round.
#[derive(Clone, Debug)]
pub(super) struct Count {
    /// Its normalised key (for `similarity`, the key of the cluster's first output).
    pub(super) value: Arc<str>,
    /// Weight of the ballots counted for it, in the engine's integer units.
    pub(super) units: u64,
    pub(super) voters: u32,
}

/// Candidates by key, with their counted weight. Weights are integers so that sums are exact
/// and the same in any order: replaying ballots in another order gives the same totals.
#[derive(Clone, Debug)]
pub(super) struct Tally {
    /// Every key seen, to its candidate; under `similarity` many keys lead to one cluster.
    keys: HashMap<Arc<str>, u32>,
    pub(super) candidates: Vec<Count>,
    /// Weight of every ballot counted.
    pub(super) counted: u64,
    /// The candidate with the most weight (the lowest index among equals).
    best: Option<u32>,
    clusters: Option<Clusters>,
}

impl Tally {
    /// A tally of exact keys, or with `similarity`, of clusters of alike keys.
    pub(super) fn new(similarity: Option<f64>) -> Self {
        Self {
            keys: HashMap::new(),
            candidates: Vec::new(),
            counted: 0,
            best: None,
            clusters: similarity.map(Clusters::new),
        }
    }

    /// The candidate of `key` (already normalised), made if it is new.
    pub(super) fn candidate(&mut self, key: Cow<'_, str>) -> u32 {
        let found = if self.clusters.is_none() && self.candidates.len() <= SCANNED {
            // Exact keys: each candidate's value is its one key, so a key none of them is,
            // is new.
            let mut values = self.candidates.iter().map(|c| &*c.value);
            values.position(|value| value == key).map(|c| c as u32)
        } else {
            self.keys.get(key.as_ref()).copied()
        };
        match found {
            Some(c) => c,
            None => self.make(&key),
        }
    }

    /// The candidate of a key not seen before: a cluster's, or a new one.
    #[inline(never)]
    fn make(&mut self, key: &str) -> u32 {
        let key: Arc<str> = Arc::from(key);
        let c = match &mut self.clusters {
            None => push(&mut self.candidates, &key),
            Some(clusters) => match clusters.closest(&key) {
                (Some(c), _) => c,
                (None, features) => {
                    clusters.found(features);
                    push(&mut self.candidates, &key)
                }
            },
        };
        self.keys.insert(key, c);
        c
    }

    pub(super) fn add(&mut self, c: u32, units: u64) {
        let count = &mut self.candidates[c as usize];
        count.units += units;
        count.voters += 1;
        let total = count.units;
        self.counted += units;
        match self.best {
            Some(b) if self.candidates[b as usize].units > total => {}
            Some(b) if self.candidates[b as usize].units == total && b < c => {}
            _ => self.best = Some(c),
        }
    }

    /// A ballot counted for `c` is withdrawn (its voter equivocated, under `bft`).
    pub(super) fn remove(&mut self, c: u32, units: u64) {
        let count = &mut self.candidates[c as usize];
        count.units -= units;
        count.voters -= 1;
        self.counted -= units;
        self.best = None;
        for (i, count) in self.candidates.iter().enumerate() {
            if self
                .best
                .is_none_or(|b| count.units > self.candidates[b as usize].units)
            {
                self.best = Some(i as u32);
            }
        }
    }

    /// The candidate with the most weight, and its weight.
    pub(super) fn best(&self) -> Option<(u32, u64)> {
        self.best.map(|b| (b, self.candidates[b as usize].units))
    }

    /// The most weight any candidate but `c` has.
    pub(super) fn runner_up(&self, c: u32) -> u64 {
        self.candidates
            .iter()
            .enumerate()
            .filter(|&(i, _)| i as u32 != c)
            .map(|(_, count)| count.units)
            .max()
            .unwrap_or(0)
    }

    /// The candidates sharing the most weight, when it is above 0, by index.
    pub(super) fn top(&self) -> Vec<u32> {
        let Some((_, most)) = self.best().filter(|&(_, w)| w > 0) else {
            return Vec::new();
        };
        (0..self.candidates.len() as u32)
            .filter(|&i| self.candidates[i as usize].units == most)
            .collect()
    }
}

fn push(candidates: &mut Vec<Count>, key: &Arc<str>) -> u32 {
    candidates.push(Count {
        value: key.clone(),
        units: 0,
        voters: 0,
    });
    (candidates.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_candidate_follows_additions_and_withdrawals() {
        let mut t = Tally::new(None);
        let a = t.candidate("a".into());
        let b = t.candidate("b".into());
        assert_eq!(t.candidate(Cow::Owned("a".to_owned())), a);
        assert_eq!(t.best(), None);
        assert!(t.top().is_empty(), "nothing counted");
        t.add(b, 2);
        t.add(a, 2);
        assert_eq!(t.best(), Some((a, 2)), "the lowest index among equals");
        assert_eq!(t.top(), [a, b]);
        t.add(b, 1);
        assert_eq!(t.best(), Some((b, 3)));
        assert_eq!(t.runner_up(b), 2);
        assert_eq!(t.top(), [b]);
        t.remove(b, 2);
        assert_eq!(t.best(), Some((a, 2)));
        assert_eq!(t.counted, 3);
        assert_eq!(t.candidates[b as usize].voters, 1);
    }

    #[test]
    fn similar_keys_share_a_candidate() {
        let mut t = Tally::new(Some(0.7));
        let paris = t.candidate("paris is the capital".into());
        assert_eq!(t.candidate("the capital is paris".into()), paris);
        assert_ne!(t.candidate("lyon".into()), paris);
        assert_eq!(t.candidates.len(), 2);
        assert_eq!(&*t.candidates[paris as usize].value, "paris is the capital");
    }
}
