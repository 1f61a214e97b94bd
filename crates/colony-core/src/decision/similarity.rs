//! How outputs are compared: the normalisations, and the measures the `similarity` protocol
//! clusters free text by.
//!
//! Two outputs are alike when their similarity reaches the decision's `similarity` threshold.
//! Similarity is the larger of two measures on normalised text ([`normalise_text`]):
//!
//! - the Jaccard index of their sets of words (shared words / words in either), which ignores
//!   word order and repetition: "Paris is the capital of France" and "the capital of France
//!   is Paris" score 1;
//! - for short answers (both at most [`EDIT_WORDS`] words and [`EDIT_CHARS`] characters),
//!   one minus their edit distance over the longer length, which forgives typos ("Pari" and
//!   "Paris" score 0.8). Not for sentences: "the capital of France is Lyon" is five edits
//!   from "... is Paris", 0.83 alike by characters, but only 5 of 7 words are shared.
//!
//! The work is bounded whatever agents send: the measures read only the first
//! [`COMPARED_CHARS`] characters of a normalised output, edit distance only texts of at most
//! [`EDIT_CHARS`], and a new output is compared with at most [`MAX_CLUSTERS`] clusters, so a
//! ballot costs at most `MAX_CLUSTERS` × (a merge of two word lists + a 64 × 64 table).

use std::borrow::Cow;

/// Characters of a normalised output that the similarity measures read; the rest is not
/// compared (two outputs that agree on this much are alike however they end).
pub const COMPARED_CHARS: usize = 1024;

/// Normalised outputs this short (in characters) or shorter, of at most [`EDIT_WORDS`]
/// words, are also compared by edit distance; others by their words only.
pub const EDIT_CHARS: usize = 64;

/// Most words of an output compared by edit distance.
pub const EDIT_WORDS: usize = 3;

/// Clusters a new output is compared with. Past this many, an output like none of the first
/// ones stands alone: it groups only with outputs that normalise to the same text.
pub const MAX_CLUSTERS: usize = 32;

/// `text` trimmed, with every run of whitespace made one space: the default key of the
/// exact-match protocols (see [`Normalise::Trim`](super::Normalise::Trim)). Borrows when
/// there is nothing to change.
pub fn normalise_space(text: &str) -> Cow<'_, str> {
    if is_clean_ascii(text) {
        Cow::Borrowed(text)
    } else {
        collapse_space(text)
    }
}

/// [`normalise_space`] of any text, decoding its characters.
#[inline(never)]
fn collapse_space(text: &str) -> Cow<'_, str> {
    let trimmed = text.trim();
    let mut previous_space = false;
    let clean = trimmed.chars().all(|c| {
        let bad = c.is_whitespace() && (c != ' ' || previous_space);
        previous_space = c.is_whitespace();
        !bad
    });
    if clean {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    for word in trimmed.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Cow::Owned(out)
}

/// Whether `text` is printable ASCII with single spaces between words and none at either
/// end: what most outputs are, checked a byte at a time, without decoding characters.
/// Anything else (a tab, a line break, any non-ASCII character) takes the general path.
fn is_clean_ascii(text: &str) -> bool {
    // A leading space is not clean; nor is empty text (left to the general path).
    let mut previous_space = true;
    for &b in text.as_bytes() {
        if b.is_ascii_graphic() {
            previous_space = false;
        } else if b == b' ' && !previous_space {
            previous_space = true;
        } else {
            return false;
        }
    }
    !previous_space
}

/// `text` in lower case, apostrophes dropped ("don't" is "dont"), every other character that
/// is neither a letter nor a digit a word break, words separated by one space: what the
/// similarity measures compare, and the key of [`Normalise::Text`](super::Normalise::Text).
pub fn normalise_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else if !matches!(c, '\'' | '’') {
            gap = true;
        }
    }
    out
}

/// What the measures need of one normalised output, computed once.
#[derive(Clone, Debug)]
pub(super) struct Features {
    /// Hashes of its distinct words, sorted.
    words: Vec<u64>,
    /// Its characters, when it is short enough for edit distance.
    chars: Option<Vec<char>>,
}

impl Features {
    /// The features of `normalised` (the output of [`normalise_text`]).
    pub(super) fn of(normalised: &str) -> Self {
        let (head, short) = match normalised.char_indices().nth(EDIT_CHARS) {
            None => (normalised, true),
            Some(_) => match normalised.char_indices().nth(COMPARED_CHARS) {
                Some((cut, _)) => (&normalised[..cut], false),
                None => (normalised, false),
            },
        };
        let mut words: Vec<u64> = head.split(' ').filter(|w| !w.is_empty()).map(fnv).collect();
        words.sort_unstable();
        words.dedup();
        let short = short && head.split(' ').count() <= EDIT_WORDS;
        Self {
            words,
            chars: short.then(|| head.chars().collect()),
        }
    }

    /// How alike the two outputs are, from 0 (nothing shared) to 1.
    pub(super) fn similarity(&self, other: &Self) -> f64 {
        let words = jaccard(&self.words, &other.words);
        match (&self.chars, &other.chars) {
            (Some(a), Some(b)) => words.max(edit_similarity(a, b)),
            _ => words,
        }
    }
}

/// The clusters of one round of a `similarity` decision: the features of each cluster's first
/// output, which later outputs are compared with. Cluster `i` is candidate `i` of the tally.
#[derive(Clone, Debug)]
pub(super) struct Clusters {
    seeds: Vec<Features>,
    threshold: f64,
}

impl Clusters {
    pub(super) fn new(threshold: f64) -> Self {
        Self {
            seeds: Vec::new(),
            threshold,
        }
    }

    /// The cluster most like `normalised` among those at or above the threshold (the first
    /// on equal similarity), and its features for [`Clusters::found`] when there is none.
    pub(super) fn closest(&self, normalised: &str) -> (Option<u32>, Features) {
        let features = Features::of(normalised);
        let mut best: Option<(u32, f64)> = None;
        for (i, seed) in self.seeds.iter().enumerate() {
            let s = seed.similarity(&features);
            if s >= self.threshold && best.is_none_or(|(_, b)| s > b) {
                best = Some((i as u32, s));
            }
        }
        (best.map(|(i, _)| i), features)
    }

    /// A new cluster starts with an output of these features, unless there are
    /// [`MAX_CLUSTERS`] already.
    pub(super) fn found(&mut self, features: Features) {
        if self.seeds.len() < MAX_CLUSTERS {
            self.seeds.push(features);
        }
    }
}

/// Shared / total of two sorted, deduplicated lists; two empty texts are the same text.
fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared as f64 / (a.len() + b.len() - shared) as f64
}

/// One minus the Levenshtein distance over the longer length.
fn edit_similarity(a: &[char], b: &[char]) -> f64 {
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    1.0 - row[b.len()] as f64 / longer as f64
}

/// FNV-1a: a fixed hash, so the same words give the same features in every process.
fn fnv(word: &str) -> u64 {
    word.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn similarity(a: &str, b: &str) -> f64 {
        Features::of(&normalise_text(a)).similarity(&Features::of(&normalise_text(b)))
    }

    #[test]
    fn space_normalisation_trims_and_collapses_and_borrows_when_it_can() {
        assert!(matches!(normalise_space("yes"), Cow::Borrowed("yes")));
        assert!(matches!(normalise_space("  a b  "), Cow::Borrowed("a b")));
        assert_eq!(normalise_space(" a \t b\n\nc "), "a b c");
        assert_eq!(normalise_space("a  b"), "a b");
        assert_eq!(normalise_space(""), "");
        assert_eq!(normalise_space("A b"), "A b", "case is kept");
        for text in [
            " a",
            "a ",
            "a\u{b}b",
            "a\u{85}b",
            "a\u{a0}",
            "\u{3000}a",
            "é  b",
            "x\u{1f}y",
        ] {
            assert_eq!(
                normalise_space(text),
                text.split_whitespace().collect::<Vec<_>>().join(" "),
                "{text:?}"
            );
        }
    }

    #[test]
    fn text_normalisation_drops_case_punctuation_and_apostrophes() {
        assert_eq!(normalise_text("  Paris, FRANCE!  "), "paris france");
        assert_eq!(normalise_text("Don't—stop"), "dont stop");
        assert_eq!(normalise_text("x=1;y=2"), "x 1 y 2");
        assert_eq!(normalise_text("Émile Zola"), "émile zola");
        assert_eq!(normalise_text("?!"), "");
    }

    #[test]
    fn word_order_and_repetition_do_not_matter() {
        assert_eq!(
            similarity(
                "Paris is the capital of France.",
                "the capital of France is Paris"
            ),
            1.0
        );
        assert_eq!(similarity("yes yes yes", "Yes"), 1.0);
        // {the, answer, is, 42} against {answer, 42}: 2 of 4.
        assert_eq!(similarity("The answer is 42", "answer: 42"), 0.5);
        assert_eq!(similarity("answer is 42", "answer: 42"), 1.0 - 3.0 / 12.0);
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("", "something"), 0.0);
    }

    #[test]
    fn short_answers_forgive_typos_long_ones_are_compared_by_words() {
        assert_eq!(similarity("Pari", "Paris"), 0.8);
        assert_eq!(similarity("kitten", "sitting"), 1.0 - 3.0 / 7.0);
        let long_a = format!("{} colour", "word ".repeat(20));
        let long_b = format!("{} color", "word ".repeat(20));
        assert!(normalise_text(&long_a).chars().count() > EDIT_CHARS);
        // Edit distance would say 0.99; the words say {word, colour} against {word, color}.
        assert_eq!(similarity(&long_a, &long_b), 1.0 / 3.0);
        assert_eq!(
            similarity(
                "The capital of France is Lyon",
                "The capital of France is Paris"
            ),
            5.0 / 7.0,
            "a sentence by its words"
        );
    }

    #[test]
    fn only_the_compared_head_of_a_long_output_counts() {
        let head = "alpha beta gamma ".repeat(COMPARED_CHARS / 17 + 1);
        let a = format!("{head} one two three four");
        let b = format!("{head} five six seven eight");
        assert_eq!(similarity(&a, &b), 1.0);
    }

    #[test]
    fn an_output_joins_the_most_alike_cluster_and_clusters_are_capped() {
        let mut clusters = Clusters::new(0.7);
        let (none, f) = clusters.closest("paris");
        assert_eq!(none, None);
        clusters.found(f);
        let (none, f) = clusters.closest("lyon");
        assert_eq!(none, None);
        clusters.found(f);
        assert_eq!(clusters.closest("pariss").0, Some(0));
        assert_eq!(clusters.closest("lyons").0, Some(1));
        for i in 2..MAX_CLUSTERS + 5 {
            let words: Vec<String> = (0..12).map(|w| format!("word{i}x{w}")).collect();
            let (near, f) = clusters.closest(&words.join(" "));
            assert_eq!(near, None);
            clusters.found(f);
        }
        assert_eq!(clusters.seeds.len(), MAX_CLUSTERS);
    }
}
