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

/// The words of a text, as every store counts them: runs of letters and digits, lowercased.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Most distinct words of a query that count: the rest are ignored.
pub(crate) const MAX_QUERY_WORDS: usize = 64;

/// A query's distinct words, in the order first said, at most [`MAX_QUERY_WORDS`].
pub(crate) fn query_words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        if out.len() == MAX_QUERY_WORDS {
            break;
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// How often a document holds each of `words`, and how many words it has.
pub(crate) fn counts(words: &[String], document: impl Iterator<Item = String>) -> (Vec<u32>, u64) {
    let mut tf = vec![0u32; words.len()];
    let mut length = 0u64;
    for w in document {
        length += 1;
        if let Some(i) = words.iter().position(|q| *q == w) {
            tf[i] += 1;
        }
    }
    (tf, length)
}

/// Whether `metadata` has every field of `filter`, of the same JSON type: `true` is not 1,
/// 1 is 1.0; as a store's query compares them.
pub(crate) fn matches(metadata: &crate::Metadata, filter: &crate::Metadata) -> bool {
    use serde_json::Value;
    filter
        .iter()
        .all(|(key, want)| match (metadata.get(key), want) {
            (Some(Value::Number(a)), Value::Number(b)) => same_number(a, b),
            (Some(a), b) => a == b,
            (None, _) => false,
        })
}

/// Whether two numbers are equal as SQLite compares them: an integer (what fits in `i64`)
/// with an integer exactly, a real with a real by value, and an integer with a real only
/// when the real is that integer exactly.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        (Some(i), None) => b.as_f64().is_some_and(|f| int_is_real(i, f)),
        (None, Some(i)) => a.as_f64().is_some_and(|f| int_is_real(i, f)),
        (None, None) => a.as_f64() == b.as_f64(),
    }
}

fn int_is_real(i: i64, f: f64) -> bool {
    // 2^63 is the first real past i64: anything in range converts without loss to compare.
    const RANGE: std::ops::Range<f64> = -9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0;
    f.fract() == 0.0 && RANGE.contains(&f) && f as i64 == i
}

/// BM25's term-frequency saturation and length normalization, the usual values.
const BM25_K1: f64 = 1.2;
const BM25_B: f64 = 0.75;

/// Scores documents by BM25 against a namespace's statistics ([`crate::TextStats`]), which
/// may come from several stores summed: the same statistics and the same document give
/// the same score, bit for bit, wherever it is computed.
pub(crate) struct Bm25<'a> {
    words: &'a [String],
    idf: Vec<f64>,
    average: f64,
}

impl<'a> Bm25<'a> {
    pub(crate) fn new(words: &'a [String], stats: &crate::TextStats) -> Self {
        let n = stats.documents as f64;
        let idf = stats
            .df
            .iter()
            .map(|&df| {
                let df = (df as f64).min(n);
                (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
            })
            .collect();
        let average = if stats.documents == 0 {
            1.0
        } else {
            (stats.words as f64 / n).max(1.0)
        };
        Self {
            words,
            idf,
            average,
        }
    }

    /// A document's score from its words; 0 when it has none of the query's.
    pub(crate) fn score(&self, document: impl Iterator<Item = String>) -> f64 {
        let (tf, length) = counts(self.words, document);
        self.score_counts(&tf, length)
    }

    /// A document's score from how often it holds each query word and its length in words.
    pub(crate) fn score_counts(&self, tf: &[u32], length: u64) -> f64 {
        let norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length as f64 / self.average);
        tf.iter()
            .zip(&self.idf)
            .filter(|(tf, _)| **tf > 0)
            .map(|(&tf, idf)| {
                let tf = f64::from(tf);
                idf * tf * (BM25_K1 + 1.0) / (tf + norm)
            })
            .sum()
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

/// Candidates each ranking gives a hybrid search: fusion needs more than `k`; no more than
/// a search may ask for, so that a store spread over several asks each for as many.
pub(crate) fn hybrid_depth(k: usize) -> usize {
    (k * 4).clamp(50, crate::MAX_K).max(k)
}

/// A hybrid search's hits from its text and vector rankings (each best first, of
/// [`hybrid_depth`] at most): reciprocal-rank fused, the best `k`.
pub(crate) fn hybrid(
    by_text: Vec<crate::Hit>,
    by_vector: Vec<crate::Hit>,
    k: usize,
) -> Vec<crate::Hit> {
    let text_ids: Vec<String> = by_text.iter().map(|h| h.id.clone()).collect();
    let vector_ids: Vec<String> = by_vector.iter().map(|h| h.id.clone()).collect();
    let mut found: std::collections::HashMap<String, crate::Hit> = by_text
        .into_iter()
        .chain(by_vector)
        .map(|h| (h.id.clone(), h))
        .collect();
    fuse(&[&text_ids, &vector_ids])
        .into_iter()
        .take(k)
        .filter_map(|(score, id)| {
            let mut hit = found.remove(id)?;
            hit.score = score;
            Some(hit)
        })
        .collect()
}

/// Merges rankings of disjoint documents (each best first) into the best `k`: by score,
/// then id, as every store orders its own.
pub(crate) fn merge(rankings: Vec<Vec<crate::Hit>>, k: usize) -> Vec<crate::Hit> {
    let mut all: Vec<crate::Hit> = rankings.into_iter().flatten().collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bm25_prefers_rare_words_and_short_documents() {
        let words = query_words("restart Agent restart");
        assert_eq!(words, ["restart", "agent"]);
        let stats = crate::TextStats {
            documents: 10,
            words: 60,
            df: vec![1, 8],
        };
        let bm = Bm25::new(&words, &stats);
        let rare = bm.score(super::words("restart now"));
        let common = bm.score(super::words("agent now"));
        assert!(rare > common, "{rare} {common}");
        let short = bm.score(super::words("agent"));
        let long = bm.score(super::words("agent and a great many other words here"));
        assert!(short > long);
        assert_eq!(bm.score(super::words("nothing")), 0.0);
    }

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
