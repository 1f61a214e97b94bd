//! Embeddings: the [`Embedder`] interface, and [`Lexical`], which needs no model.

use crate::{Error, MAX_DIMENSION, MAX_TEXT_BYTES};

/// Turns texts into vectors of one dimension.
pub trait Embedder: Send + Sync {
    fn dimension(&self) -> usize;
    /// One vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error>;
    /// What it is, for the record: `lexical`, or a model's name.
    fn kind(&self) -> &str;
}

/// Hashed words and character trigrams of the lowercased text, signed, L2-normalised: texts
/// that share words and spellings are near, whatever they mean. Lexical, not semantic: it
/// finds "restart the agent" near "agent restarts", not near "reboot the worker". No model,
/// no download, the same vector on every machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lexical {
    dimension: usize,
}

impl Lexical {
    /// Vectors of `dimension` values (384 matches small sentence models).
    pub fn new(dimension: usize) -> Result<Self, Error> {
        if dimension == 0 || dimension > MAX_DIMENSION {
            return Err(Error::Query(format!(
                "a lexical embedding of {dimension} dimensions: allowed 1..={MAX_DIMENSION}"
            )));
        }
        Ok(Self { dimension })
    }

    fn add(&self, v: &mut [f32], feature: &[u8], weight: f32) {
        // FNV-1a: stable across machines and releases, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in feature {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let index = (h % self.dimension as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[index] += sign * weight;
    }

    fn one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimension];
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            self.add(&mut v, word.as_bytes(), 1.0);
            // Trigrams of the word with its edges marked: spellings near each other.
            let marked: Vec<char> = std::iter::once('<')
                .chain(word.chars())
                .chain(std::iter::once('>'))
                .collect();
            for w in marked.windows(3) {
                let gram: String = w.iter().collect();
                self.add(&mut v, gram.as_bytes(), 0.5);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Embedder for Lexical {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        if let Some(i) = texts.iter().position(|t| t.len() > MAX_TEXT_BYTES) {
            return Err(Error::Query(format!(
                "text {i} is {} bytes: allowed up to {MAX_TEXT_BYTES}",
                texts[i].len()
            )));
        }
        Ok(texts.iter().map(|t| self.one(t)).collect())
    }

    fn kind(&self) -> &str {
        "lexical"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::cosine;

    #[test]
    fn shared_words_are_near_and_others_far_and_vectors_are_stable() {
        let e = Lexical::new(384).unwrap();
        let v = e
            .embed(&[
                "restart the failed agent",
                "the agent restarts after it failed",
                "quarterly tax report",
                "",
            ])
            .unwrap();
        assert!(cosine(&v[0], &v[1]) > 0.5, "{}", cosine(&v[0], &v[1]));
        assert!(cosine(&v[0], &v[2]) < 0.2, "{}", cosine(&v[0], &v[2]));
        assert!(v[3].iter().all(|&x| x == 0.0));
        let norm: f32 = v[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        // The same text, the same vector: no randomness, no state.
        assert_eq!(v[0], e.embed(&["restart the failed agent"]).unwrap()[0]);
        assert!(Lexical::new(0).is_err());
    }
}
