//! Ranking: cosine similarity, the best `k` of many, and reciprocal-rank fusion of two
//! rankings.

use std::{cmp::Ordering, collections::BinaryHeap};

/// The cosine similarity of `a` and `b` (of one length); 0 when either is all zeros.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// A scored item, ordered so that a max-heap's top is the worst kept: lower score first,
/// then the later key (ties go to the smaller key).
struct Worst<T> {
    score: f64,
    key: String,
    item: T,
}

impl<T> PartialEq for Worst<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Worst<T> {}
impl<T> PartialOrd for Worst<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Worst<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// Keeps the `k` best of the items offered, by score then key.
pub(crate) struct TopK<T> {
    k: usize,
    heap: BinaryHeap<Worst<T>>,
}

impl<T> TopK<T> {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Whether an item of `score` could be kept: it may then be offered (ties are settled
    /// by key, so an equal score could be).
    pub(crate) fn admits(&self, score: f64) -> bool {
        !score.is_nan()
            && (self.heap.len() < self.k || self.heap.peek().is_some_and(|w| score >= w.score))
    }

    pub(crate) fn offer(&mut self, score: f64, key: String, item: T) {
        self.heap.push(Worst { score, key, item });
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// Best first.
    pub(crate) fn into_sorted(self) -> Vec<(f64, String, T)> {
        let mut all: Vec<Worst<T>> = self.heap.into_vec();
        all.sort();
        all.into_iter().map(|w| (w.score, w.key, w.item)).collect()
    }
}

/// The constant of reciprocal-rank fusion: each ranking gives an item 1 / (60 + rank).
pub(crate) const RRF_K: f64 = 60.0;

/// Fuses rankings (ids, best first) into one score per id.
pub(crate) fn fuse<'a>(rankings: &[&'a [String]]) -> Vec<(f64, &'a str)> {
    let mut scores: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for ranking in rankings {
        for (rank, id) in ranking.iter().enumerate() {
            *scores.entry(id.as_str()).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(f64, &str)> = scores.into_iter().map(|(id, s)| (s, id)).collect();
    fused.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_best_and_breaks_ties_by_key() {
        let mut top = TopK::new(2);
        for (s, k) in [(0.5, "b"), (0.9, "c"), (0.5, "a"), (0.1, "d")] {
            top.offer(s, k.to_owned(), ());
        }
        let kept: Vec<String> = top.into_sorted().into_iter().map(|x| x.1).collect();
        assert_eq!(kept, ["c", "a"]);
    }

    #[test]
    fn cosine_is_one_for_the_same_direction_and_zero_for_nothing() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!(cosine(&[1.0, 0.0], &[-1.0, 0.0]) < -0.99);
    }

    #[test]
    fn fusion_favours_what_both_rankings_place_high() {
        let a = ["x".to_owned(), "y".to_owned(), "z".to_owned()];
        let b = ["y".to_owned(), "w".to_owned()];
        let fused = fuse(&[&a, &b]);
        assert_eq!(fused[0].1, "y");
        assert_eq!(fused.len(), 4);
    }
}
