//! How a memory's writes travel in its stream: a write's frame (JSON, embeddings as base64
//! of little-endian `f32`, a third of their JSON size), cut into parts of at most a message
//! each, and the parts gathered again by each copy ([`Frames`]), in whatever order other
//! writers' messages came between them.

use base64::Engine;
use bytes::Bytes;
use colony_memory::{Document, Metadata, Namespace};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The header naming the write a message is a part of (its writer's id, then a count).
pub(crate) const WRITE_HEADER: &str = "Colony-Write";
/// The header naming a message's part of its write: `i/n`.
pub(crate) const PART_HEADER: &str = "Colony-Part";
/// The header of each part of a snapshot: the sequence whose state it holds.
pub(crate) const SNAPSHOT_HEADER: &str = "Colony-Snapshot";
/// Most parts of one write: with the servers' default `max_payload` (1 MiB), 256 MiB.
pub(crate) const MAX_PARTS: usize = 256;
/// Most bytes of parts a copy holds for writes whose last part has not come (a writer that
/// died between two parts leaves its first ones): past it, the write begun first is dropped.
pub(crate) const PENDING_BYTES: usize = 512 << 20;
/// Longest write id a copy gathers parts of (colony's are about 40 bytes).
const MAX_WRITE_ID: usize = 128;
/// A write none of whose parts came in this many messages is dropped: its writer is gone
/// (a live one sends its parts one after the other).
const STALE: u64 = 100_000;
/// Most writes a copy holds parts of at once (writers sending large batches at the same
/// time): past it, the write begun first is dropped.
const PENDING_WRITES: usize = 1024;

/// One write, as its frame holds it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Write {
    Put {
        namespace: Namespace,
        documents: Vec<Carried>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        embedder: Option<String>,
    },
    Delete {
        namespace: Namespace,
        ids: Vec<String>,
    },
    /// The whole memory as it was after the message the parts' `Colony-Snapshot` names, its
    /// parts consecutive right after it: what a copy that starts where the stream was
    /// compacted restores; a copy that read the messages before it passes over it.
    Snapshot {
        spaces: Vec<Space>,
        /// The parts of writes whose last part had not come: a copy that restores the
        /// snapshot gathers them from there, as the copies that read them did.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<HeldWrite>,
    },
}

/// A write whose last part had not come when a snapshot was taken: its parts so far, and
/// the sequences of its first and latest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct HeldWrite {
    write: String,
    /// Each part, base64, or none yet.
    parts: Vec<Option<String>>,
    first: u64,
    latest: u64,
}

/// A namespace whole, as a snapshot carries it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct Space {
    pub(crate) namespace: Namespace,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dimension: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) embedder: Option<String>,
    pub(crate) documents: Vec<Carried>,
}

/// A document as a write carries it: its embedding as base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Carried {
    id: String,
    text: String,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedding: Option<String>,
}

impl Carried {
    pub(crate) fn of(document: Document) -> Self {
        let embedding = document.embedding.map(|e| {
            let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        Carried {
            id: document.id,
            text: document.text,
            metadata: document.metadata,
            embedding,
        }
    }

    pub(crate) fn document(self) -> Result<Document, String> {
        let embedding = match self.embedding {
            None => None,
            Some(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("document {:?}: its embedding: {e}", self.id))?;
                if bytes.len() % 4 != 0 {
                    return Err(format!(
                        "document {:?}: an embedding of {} bytes, not whole f32s",
                        self.id,
                        bytes.len()
                    ));
                }
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                )
            }
        };
        Ok(Document {
            id: self.id,
            text: self.text,
            metadata: self.metadata,
            embedding,
        })
    }
}

/// The parts of writes read so far whose last part has not come, by write.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    pending: HashMap<String, Pending>,
    bytes: usize,
    /// The snapshot being gathered: apart from the writes held (not counted against their
    /// bounds, never in a snapshot), and dropped by the first message of another write,
    /// since a snapshot's parts are consecutive.
    snapshot: Option<Gathering>,
}

/// A snapshot being gathered: its write, its parts, the sequence its next part must have.
#[derive(Debug)]
struct Gathering {
    write: String,
    parts: Vec<Option<Bytes>>,
    next: u64,
    bytes: usize,
}

/// What became of a message taken as a part.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The write's whole frame: its last part came.
    Whole(Bytes),
    /// Held until the write's other parts come.
    Held,
    /// Not a part a copy can gather (said why); every copy passes over it alike.
    Passed(String),
}

#[derive(Debug)]
struct Pending {
    parts: Vec<Option<Bytes>>,
    got: usize,
    bytes: usize,
    /// Sequences of its first part and of its latest.
    first: u64,
    latest: u64,
}

/// Reads a `Colony-Part` header: `(i, n)` with `1 <= i <= n <= MAX_PARTS`.
fn part_of(header: &str) -> Option<(usize, usize)> {
    let (i, n) = header.split_once('/')?;
    let (i, n) = (i.parse::<usize>().ok()?, n.parse::<usize>().ok()?);
    (1 <= i && i <= n && n <= MAX_PARTS).then_some((i, n))
}

impl Frames {
    /// Takes the part `part` (`i/n`) of write `write`, the message at `sequence`; the write's
    /// whole frame once its last part came. Parts of other writes may come between, but a
    /// writer sends its parts in order, so a write's first part starts it: a later part of
    /// a write not begun (dropped, or finished and sent again) is passed over. A write left
    /// incomplete (its writer died) is dropped once stale or when what is held passes its
    /// bounds, oldest first: every copy reads the same messages, so every copy drops the
    /// same.
    pub(crate) fn part(
        &mut self,
        sequence: u64,
        write: &str,
        part: &str,
        body: &[u8],
        snapshot: bool,
    ) -> Part {
        if self.snapshot.as_ref().is_some_and(|g| g.write != write) {
            // Another write came between its parts: that snapshot was abandoned.
            self.snapshot = None;
        }
        self.forget_stale(sequence);
        let Some((i, n)) = part_of(part) else {
            return Part::Passed(format!("its {PART_HEADER} header is {part:?}, not i/n"));
        };
        if write.len() > MAX_WRITE_ID {
            return Part::Passed(format!(
                "a write id of {} bytes (at most {MAX_WRITE_ID})",
                write.len()
            ));
        }
        if n == 1 {
            return Part::Whole(Bytes::copy_from_slice(body));
        }
        if snapshot {
            return self.snapshot_part(sequence, write, i, n, body);
        }
        let pending = match self.pending.get_mut(write) {
            Some(pending) => pending,
            None if i == 1 => {
                // Its own bookkeeping counts too: the id and a place for each part.
                let overhead = write.len() + n * std::mem::size_of::<Option<Bytes>>();
                self.bytes += overhead;
                self.pending.entry(write.to_owned()).or_insert(Pending {
                    parts: vec![None; n],
                    got: 0,
                    bytes: overhead,
                    first: sequence,
                    latest: sequence,
                })
            }
            None => {
                return Part::Passed(format!(
                    "part {i}/{n} of write {write}, which was not begun (dropped, or done)"
                ));
            }
        };
        if pending.parts.len() != n {
            return Part::Passed(format!(
                "part {i}/{n} of write {write}, which has {} parts",
                pending.parts.len()
            ));
        }
        pending.latest = sequence;
        if pending.parts[i - 1].is_none() {
            pending.got += 1;
            pending.bytes += body.len();
            self.bytes += body.len();
            // A copy, not a slice of the connection's buffer, which would hold all of it.
            pending.parts[i - 1] = Some(Bytes::copy_from_slice(body));
        }
        if pending.got == n {
            let Some(done) = self.pending.remove(write) else {
                return Part::Held;
            };
            self.bytes -= done.bytes;
            let mut whole = Vec::with_capacity(done.bytes);
            for part in done.parts.into_iter().flatten() {
                whole.extend_from_slice(&part);
            }
            return Part::Whole(Bytes::from(whole));
        }
        while self.bytes > PENDING_BYTES || self.pending.len() > PENDING_WRITES {
            let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first)
                .map(|(w, _)| w.clone())
            else {
                break;
            };
            self.drop_write(&oldest, "the parts held passed their bounds");
        }
        Part::Held
    }

    /// Ends a snapshot being gathered when the message at `sequence` is not its next part:
    /// a snapshot's parts are consecutive. Called for every message, colony's or not.
    pub(crate) fn not_next(&mut self, sequence: u64) {
        if self.snapshot.as_ref().is_some_and(|g| g.next != sequence) {
            self.snapshot = None;
        }
    }

    /// Part `i` of `n` of snapshot `write`, the message at `sequence`.
    fn snapshot_part(
        &mut self,
        sequence: u64,
        write: &str,
        i: usize,
        n: usize,
        body: &[u8],
    ) -> Part {
        match &mut self.snapshot {
            Some(g) if g.parts.len() == n && g.bytes + body.len() <= PENDING_BYTES / 2 => {
                g.bytes += body.len();
                g.parts[i - 1].get_or_insert_with(|| Bytes::copy_from_slice(body));
                g.next = sequence + 1;
            }
            Some(_) => {
                self.snapshot = None;
                return Part::Passed(format!(
                    "part {i}/{n} of snapshot {write}: of another count, or past what a snapshot may hold"
                ));
            }
            None if i == 1 => {
                let mut parts = vec![None; n];
                parts[0] = Some(Bytes::copy_from_slice(body));
                self.snapshot = Some(Gathering {
                    write: write.to_owned(),
                    parts,
                    next: sequence + 1,
                    bytes: body.len(),
                });
            }
            None => {
                return Part::Passed(format!("part {i}/{n} of snapshot {write}, not begun"));
            }
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|g| g.parts.iter().all(Option::is_some))
            && let Some(g) = self.snapshot.take()
        {
            let mut whole = Vec::with_capacity(g.bytes);
            for part in g.parts.into_iter().flatten() {
                whole.extend_from_slice(&part);
            }
            return Part::Whole(Bytes::from(whole));
        }
        Part::Held
    }
    /// The writes held, for a snapshot.
    pub(crate) fn held(&self) -> Vec<HeldWrite> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut held: Vec<HeldWrite> = self
            .pending
            .iter()
            .map(|(write, p)| HeldWrite {
                write: write.clone(),
                parts: p
                    .parts
                    .iter()
                    .map(|part| part.as_ref().map(|b| b64.encode(b)))
                    .collect(),
                first: p.first,
                latest: p.latest,
            })
            .collect();
        held.sort_by_key(|h| h.first);
        held
    }

    /// Takes the writes a snapshot held, as the copies that read them hold them, bytes and
    /// all.
    pub(crate) fn hold(&mut self, held: Vec<HeldWrite>) -> Result<(), String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        for h in held {
            let n = h.parts.len();
            if n == 0 || n > MAX_PARTS || h.write.len() > MAX_WRITE_ID {
                return Err(format!("a held write {:?} of {n} parts", h.write));
            }
            let parts = h
                .parts
                .into_iter()
                .map(|p| p.map(|t| b64.decode(t).map(Bytes::from)).transpose())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("a held write's part: {e}"))?;
            let got = parts.iter().flatten().count();
            let bytes = h.write.len()
                + n * std::mem::size_of::<Option<Bytes>>()
                + parts.iter().flatten().map(Bytes::len).sum::<usize>();
            self.bytes += bytes;
            self.pending.insert(
                h.write,
                Pending {
                    parts,
                    got,
                    bytes,
                    first: h.first,
                    latest: h.latest,
                },
            );
        }
        Ok(())
    }

    fn forget_stale(&mut self, sequence: u64) {
        let stale: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.latest + STALE < sequence)
            .map(|(w, _)| w.clone())
            .collect();
        for write in stale {
            self.drop_write(&write, "no part of it came for 100,000 messages");
        }
    }

    fn drop_write(&mut self, write: &str, why: &str) {
        if let Some(p) = self.pending.remove(write) {
            self.bytes -= p.bytes;
            tracing::warn!(
                write,
                got = p.got,
                parts = p.parts.len(),
                why,
                "A memory write's parts were dropped before its last came: its writer was told it failed, or died."
            );
        }
    }

    /// Writes and bytes held, for tests.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        (self.pending.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_crosses_whole_its_embedding_exactly() {
        let d =
            Document::new("a", "text")
                .with("n", 1.5)
                .embedded(vec![0.1, -2.5e-9, f32::MAX, 0.0]);
        let json = serde_json::to_string(&Carried::of(d.clone())).unwrap();
        let back: Carried = serde_json::from_str(&json).unwrap();
        assert_eq!(back.document().unwrap(), d);
        let bad = Carried {
            id: "b".into(),
            text: String::new(),
            metadata: Metadata::new(),
            embedding: Some("AAAA AA".into()),
        };
        assert!(bad.document().is_err());
    }

    #[test]
    fn parts_of_writes_interleaved_come_back_whole_and_an_abandoned_one_is_dropped() {
        let mut frames = Frames::default();
        let whole = |s: &str| Part::Whole(Bytes::from(s.to_owned()));
        assert_eq!(frames.part(1, "w1", "1/3", b"ab", false), Part::Held);
        // Another writer's one-part write and the start of an abandoned one between.
        assert_eq!(frames.part(2, "w2", "1/1", b"xy", false), whole("xy"));
        assert_eq!(frames.part(3, "dead", "1/2", b"zz", false), Part::Held);
        assert_eq!(frames.part(4, "w1", "2/3", b"cd", false), Part::Held);
        // A part sent twice counts once.
        assert_eq!(frames.part(5, "w1", "2/3", b"cd", false), Part::Held);
        assert_eq!(frames.part(6, "w1", "3/3", b"ef", false), whole("abcdef"));
        assert_eq!(frames.counts().0, 1);
        // Parts no copy can gather are passed over, alike in each.
        for (write, part) in [
            ("x", "0/2"),
            ("x", "3/2"),
            ("x", "2/2"),
            ("dead", "1/5"),
            ("w1", "3/3"),
        ] {
            assert!(
                matches!(frames.part(7, write, part, b"", false), Part::Passed(_)),
                "{write} {part}"
            );
        }
        let long = "w".repeat(MAX_WRITE_ID + 1);
        assert!(matches!(
            frames.part(8, &long, "1/1", b"", false),
            Part::Passed(_)
        ));
        assert_eq!(frames.counts().0, 1);
        // Stale once 100,000 messages passed without a part of it.
        assert_eq!(
            frames.part(3 + STALE + 1, "w3", "1/1", b"q", false),
            whole("q")
        );
        assert_eq!(frames.counts(), (0, 0));
    }

    #[test]
    fn writes_held_cross_a_snapshot_as_they_were() {
        let mut frames = Frames::default();
        assert_eq!(frames.part(1, "w1", "1/3", b"ab", false), Part::Held);
        assert_eq!(
            frames.part(2, "w2", "2/2", b"zz", false),
            Part::Passed("part 2/2 of write w2, which was not begun (dropped, or done)".into())
        );
        assert_eq!(frames.part(3, "w1", "3/3", b"ef", false), Part::Held);
        let json = serde_json::to_string(&frames.held()).unwrap();
        let mut restored = Frames::default();
        restored.hold(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(restored.counts(), frames.counts());
        for f in [&mut frames, &mut restored] {
            assert_eq!(
                f.part(4, "w1", "2/3", b"cd", false),
                Part::Whole(Bytes::from_static(b"abcdef"))
            );
            assert_eq!(f.counts(), (0, 0));
        }
    }

    #[test]
    fn a_snapshot_is_gathered_apart_and_dropped_by_any_other_write_between_its_parts() {
        let mut frames = Frames::default();
        assert_eq!(frames.part(1, "w1", "1/2", b"ab", false), Part::Held);
        assert_eq!(frames.part(2, "s1", "1/2", b"{", true), Part::Held);
        // Not counted with the writes held, and never in a snapshot.
        assert_eq!(frames.counts().0, 1);
        assert_eq!(frames.held().len(), 1);
        // Another write's message between its parts: it was abandoned.
        assert_eq!(
            frames.part(3, "w1", "2/2", b"cd", false),
            Part::Whole(Bytes::from_static(b"abcd"))
        );
        assert!(matches!(
            frames.part(4, "s1", "2/2", b"}", true),
            Part::Passed(_)
        ));
        // A whole one, parts back to back.
        assert_eq!(frames.part(5, "s2", "1/2", b"{", true), Part::Held);
        assert_eq!(
            frames.part(6, "s2", "2/2", b"}", true),
            Part::Whole(Bytes::from_static(b"{}"))
        );
        assert_eq!(frames.counts(), (0, 0));
        // A message not of colony's between its parts ends one too.
        assert_eq!(frames.part(7, "s3", "1/2", b"{", true), Part::Held);
        frames.not_next(8);
        frames.not_next(9);
        assert!(matches!(
            frames.part(9, "s3", "2/2", b"}", true),
            Part::Passed(_)
        ));
    }

    #[test]
    fn writes_held_past_their_bound_are_dropped_oldest_first() {
        let mut frames = Frames::default();
        for i in 0..=PENDING_WRITES as u64 {
            assert_eq!(
                frames.part(i + 1, &format!("w{i}"), "1/2", b"a", false),
                Part::Held
            );
        }
        assert_eq!(frames.counts().0, PENDING_WRITES);
        // The first begun was dropped: its last part is passed over.
        assert!(matches!(
            frames.part(5000, "w0", "2/2", b"b", false),
            Part::Passed(_)
        ));
        assert_eq!(
            frames.part(5001, "w1", "2/2", b"b", false),
            Part::Whole(Bytes::from_static(b"ab"))
        );
    }
}
