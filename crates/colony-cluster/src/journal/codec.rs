//! How a journal's writes are kept in its stream: each write one JSON line, the lines of a
//! group commit in one frame, a frame in one message or, when larger than a message may
//! be, in consecutive parts.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use colony_core::{AgentId, TaskId, task::Priority, task::Requirement, task::TaskSpec};
use colony_journal::{
    AgentRecord, Call, DecisionRow, Journal, MemoryJournal, Opening, Record, ReputationRow, Seat,
    Taken, TaskRow,
};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};

/// One write, as its line says it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "write", rename_all = "kebab-case")]
pub(super) enum Write {
    /// A process took the journal over: writes of an earlier one after this are refused.
    Claim {
        writer: String,
        at_ms: u64,
    },
    Accept {
        first: u64,
        specs: Vec<Spec>,
    },
    Record {
        records: Vec<Rec>,
        /// When they were written, in milliseconds since the Unix epoch: the tasks they end
        /// ended then. Absent from a journal written before it was kept (not known then).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
    Open {
        first: u64,
        specs: Vec<Spec>,
        opening: OpeningLine,
    },
    Ask {
        decision: u64,
        first: u64,
        specs: Vec<Spec>,
        call: Call,
    },
    Close {
        id: u64,
        outcome: Arc<str>,
        at_ms: u64,
    },
    Decided {
        id: u64,
        spec: Spec,
        opening: OpeningLine,
        result: Outcome,
        outcome: Arc<str>,
        at_ms: u64,
    },
    Agents {
        tiers: Vec<String>,
        agents: Vec<AgentLine>,
        replace: bool,
    },
    Reputations {
        rows: Vec<ReputationLine>,
    },
    Recover,
    /// Tasks' rows as a snapshot holds them (ascending ids): set whole, over the writes
    /// that made them or over nothing.
    Rows {
        rows: Vec<RowLine>,
    },
    /// Decisions as a snapshot holds them, set whole.
    Decisions {
        rows: Vec<DecisionLine>,
    },
}

impl Write {
    /// Whether every number it carries is finite: JSON has no NaN or infinity, and a write
    /// that could not be read back would leave a journal that cannot be opened.
    pub(super) fn finite(&self) -> bool {
        let seats = |seats: &[Seat]| seats.iter().all(|s| s.weight.is_finite());
        match self {
            Write::Open { opening, .. } | Write::Decided { opening, .. } => seats(&opening.seats),
            Write::Ask { call, .. } => seats(&call.asked),
            Write::Reputations { rows } => rows.iter().all(|r| r.score.is_finite()),
            Write::Decisions { rows } => rows.iter().all(|d| {
                seats(&d.opening.seats) && d.calls.iter().all(|(_, call)| seats(&call.asked))
            }),
            _ => true,
        }
    }

    pub(super) fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("every field serializes");
        line.push(b'\n');
        line
    }

    /// Applies the write to `mirror`, as the journal did when it was made: the same writes
    /// in the same order give the same journal.
    pub(super) fn apply(self, mirror: &MemoryJournal) -> Result<(), colony_journal::Error> {
        let mut done = match self {
            Write::Claim { .. } => return Ok(()),
            Write::Accept { first, specs } => {
                let specs: Vec<TaskSpec> = specs.into_iter().map(Spec::into_spec).collect();
                mirror.accept(TaskId(first), &specs)
            }
            Write::Record { records, at_ms } => {
                mirror.record_at(records.into_iter().map(Rec::into_record).collect(), at_ms)
            }
            Write::Open {
                first,
                specs,
                opening,
            } => {
                let specs: Vec<TaskSpec> = specs.into_iter().map(Spec::into_spec).collect();
                mirror.open_decision(TaskId(first), &specs, opening.into_opening())
            }
            Write::Ask {
                decision,
                first,
                specs,
                call,
            } => {
                let specs: Vec<TaskSpec> = specs.into_iter().map(Spec::into_spec).collect();
                mirror.ask(TaskId(decision), TaskId(first), &specs, call)
            }
            Write::Close { id, outcome, at_ms } => {
                mirror.close_decision_at(TaskId(id), outcome, at_ms)
            }
            Write::Decided {
                id,
                spec,
                opening,
                result,
                outcome,
                at_ms,
            } => {
                let taken = Taken {
                    opening: opening.into_opening(),
                    result: match result {
                        Outcome::Value(value) => Ok(value.0),
                        Outcome::Reason(reason) => Err(reason),
                    },
                    outcome,
                };
                mirror.decided_at(TaskId(id), &spec.into_spec(), taken, at_ms)
            }
            Write::Agents {
                tiers,
                agents,
                replace,
            } => {
                let agents = agents.into_iter().map(AgentLine::into_record).collect();
                mirror.record_agents(&tiers, agents, replace)
            }
            Write::Reputations { rows } => {
                mirror.record_reputations(rows.into_iter().map(ReputationLine::into_row).collect())
            }
            Write::Recover => return mirror.recover().map(drop),
            Write::Rows { rows } => {
                return mirror.restore_rows(rows.into_iter().map(RowLine::into_row).collect());
            }
            Write::Decisions { rows } => {
                mirror.restore_decisions(rows.into_iter().map(DecisionLine::into_row).collect());
                return Ok(());
            }
        };
        // A journal in memory knows at once.
        done.try_result()
            .unwrap_or(Err(colony_journal::Error::Closed))
    }
}

/// Bytes kept as text when they are UTF-8 (a payload or output is JSON text, as a rule),
/// else as `{"base64": "..."}`.
#[derive(Debug)]
pub(super) struct Blob(pub(super) Bytes);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("base64", &BASE64.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Raw { base64: String },
        }
        Ok(Blob(match Either::deserialize(d)? {
            Either::Text(text) => Bytes::from(text),
            Either::Raw { base64 } => Bytes::from(
                BASE64
                    .decode(base64)
                    .map_err(|e| serde::de::Error::custom(format!("base64: {e}")))?,
            ),
        }))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Arc<str>>,
    requirement: Requirement,
    priority: Priority,
    payload: Blob,
    timeout: Duration,
    max_attempts: u32,
}

impl Spec {
    pub(super) fn of(spec: &TaskSpec) -> Self {
        Spec {
            key: spec.key.clone(),
            requirement: spec.requirement.clone(),
            priority: spec.priority,
            payload: Blob(spec.payload.clone()),
            timeout: spec.timeout,
            max_attempts: spec.max_attempts,
        }
    }

    fn into_spec(self) -> TaskSpec {
        TaskSpec {
            key: self.key,
            requirement: self.requirement,
            priority: self.priority,
            payload: self.payload.0,
            timeout: self.timeout,
            max_attempts: self.max_attempts,
        }
    }

    pub(super) fn all(specs: &[TaskSpec]) -> Vec<Spec> {
        specs.iter().map(Spec::of).collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "is", rename_all = "kebab-case")]
pub(super) enum Rec {
    Started {
        task: TaskId,
        attempt: u32,
        agent: AgentId,
    },
    Committed {
        task: TaskId,
        attempt: u32,
        output: Blob,
    },
    Failed {
        task: TaskId,
        attempt: u32,
        error: Arc<str>,
        next: colony_core::task::TaskState,
    },
    Cancelled {
        task: TaskId,
    },
}

impl Rec {
    pub(super) fn of(record: &Record) -> Self {
        match record {
            Record::Started {
                task,
                attempt,
                agent,
            } => Rec::Started {
                task: *task,
                attempt: *attempt,
                agent: *agent,
            },
            Record::Committed {
                task,
                attempt,
                output,
            } => Rec::Committed {
                task: *task,
                attempt: *attempt,
                output: Blob(output.clone()),
            },
            Record::Failed {
                task,
                attempt,
                error,
                next,
            } => Rec::Failed {
                task: *task,
                attempt: *attempt,
                error: error.clone(),
                next: *next,
            },
            Record::Cancelled { task } => Rec::Cancelled { task: *task },
        }
    }

    fn into_record(self) -> Record {
        match self {
            Rec::Started {
                task,
                attempt,
                agent,
            } => Record::Started {
                task,
                attempt,
                agent,
            },
            Rec::Committed {
                task,
                attempt,
                output,
            } => Record::Committed {
                task,
                attempt,
                output: output.0,
            },
            Rec::Failed {
                task,
                attempt,
                error,
                next,
            } => Record::Failed {
                task,
                attempt,
                error,
                next,
            },
            Rec::Cancelled { task } => Record::Cancelled { task },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct OpeningLine {
    options: Arc<str>,
    seats: Vec<Seat>,
    asked: u32,
    opened_at_ms: u64,
}

impl OpeningLine {
    pub(super) fn of(opening: &Opening) -> Self {
        OpeningLine {
            options: opening.options.clone(),
            seats: opening.seats.clone(),
            asked: opening.asked,
            opened_at_ms: opening.opened_at_ms,
        }
    }

    fn into_opening(self) -> Opening {
        Opening {
            options: self.options,
            seats: self.seats,
            asked: self.asked,
            opened_at_ms: self.opened_at_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Outcome {
    Value(Blob),
    Reason(Arc<str>),
}

impl Outcome {
    pub(super) fn of(result: &Result<Bytes, Arc<str>>) -> Self {
        match result {
            Ok(value) => Outcome::Value(Blob(value.clone())),
            Err(reason) => Outcome::Reason(reason.clone()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AgentLine {
    id: AgentId,
    tier: u8,
    parent: Option<AgentId>,
    pool: Option<u8>,
}

impl AgentLine {
    pub(super) fn of(agent: &AgentRecord) -> Self {
        AgentLine {
            id: agent.id,
            tier: agent.tier,
            parent: agent.parent,
            pool: agent.pool,
        }
    }

    fn into_record(self) -> AgentRecord {
        AgentRecord {
            id: self.id,
            tier: self.tier,
            parent: self.parent,
            pool: self.pool,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ReputationLine {
    agent: AgentId,
    pool: u8,
    score: f64,
    observations: u32,
}

impl ReputationLine {
    pub(super) fn of(row: &ReputationRow) -> Self {
        ReputationLine {
            agent: row.agent,
            pool: row.pool,
            score: row.score,
            observations: row.observations,
        }
    }

    fn into_row(self) -> ReputationRow {
        ReputationRow {
            agent: self.agent,
            pool: self.pool,
            score: self.score,
            observations: self.observations,
        }
    }
}

/// A task's row, whole.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct RowLine {
    id: TaskId,
    spec: Spec,
    state: colony_core::task::TaskState,
    attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_at_ms: Option<u64>,
}

impl RowLine {
    pub(super) fn of(row: &TaskRow) -> Self {
        RowLine {
            id: row.id,
            spec: Spec::of(&row.spec),
            state: row.state,
            attempt: row.attempt,
            agent: row.agent,
            output: row.output.clone().map(Blob),
            error: row.error.clone(),
            ended_at_ms: row.ended_at_ms,
        }
    }

    fn into_row(self) -> TaskRow {
        TaskRow {
            id: self.id,
            spec: self.spec.into_spec(),
            state: self.state,
            attempt: self.attempt,
            agent: self.agent,
            output: self.output.map(|b| b.0),
            error: self.error,
            ended_at_ms: self.ended_at_ms,
        }
    }
}

/// A decision's row, whole.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct DecisionLine {
    id: TaskId,
    opening: OpeningLine,
    calls: Vec<(TaskId, Call)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_at_ms: Option<u64>,
}

impl DecisionLine {
    pub(super) fn of(row: &DecisionRow) -> Self {
        DecisionLine {
            id: row.id,
            opening: OpeningLine::of(&row.opening),
            calls: row.calls.clone(),
            outcome: row.outcome.clone(),
            ended_at_ms: row.ended_at_ms,
        }
    }

    fn into_row(self) -> DecisionRow {
        DecisionRow {
            id: self.id,
            opening: self.opening.into_opening(),
            calls: self.calls,
            outcome: self.outcome,
            ended_at_ms: self.ended_at_ms,
        }
    }
}

/// The writes of one frame, in order; a line that is not a write is refused with its
/// number.
pub(super) fn lines(frame: &[u8]) -> Result<Vec<Write>, String> {
    frame
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| format!("write {} of the frame: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_raw_bytes_come_back_as_they_went() {
        for bytes in [&b"{\"a\":\"\\n\xc3\xa9\"}"[..], &[0xff, 0, 10, 13][..], b""] {
            let line = serde_json::to_vec(&Blob(Bytes::copy_from_slice(bytes))).unwrap();
            let back: Blob = serde_json::from_slice(&line).unwrap();
            assert_eq!(&back.0[..], bytes);
            assert!(!line.contains(&b'\n'), "one line each");
            assert!(line.len() <= 2 * bytes.len() + 16, "raw bytes as base64");
        }
    }

    #[test]
    fn a_task_ends_at_its_write_s_time_and_at_none_known_in_a_write_from_before() {
        let mirror = MemoryJournal::new();
        futures::executor::block_on(mirror.accept(TaskId(1), &vec![TaskSpec::default(); 2]))
            .unwrap();
        let frame = concat!(
            r#"{"write":"record","records":[{"is":"cancelled","task":1}]}"#,
            "\n",
            r#"{"write":"record","records":[{"is":"cancelled","task":2}],"at_ms":1700000000000}"#,
            "\n",
        );
        for write in lines(frame.as_bytes()).unwrap() {
            write.apply(&mirror).unwrap();
        }
        let ended = |id| mirror.task(TaskId(id)).unwrap().unwrap().ended_at_ms;
        assert_eq!((ended(1), ended(2)), (None, Some(1_700_000_000_000)));
        // Written with it again, as made.
        let write = Write::Record {
            records: vec![Rec::of(&Record::Cancelled { task: TaskId(2) })],
            at_ms: Some(5),
        };
        let line = String::from_utf8(write.line()).unwrap();
        assert!(line.contains(r#""at_ms":5"#), "{line}");
    }

    #[test]
    fn a_line_that_is_not_a_write_is_named() {
        let frame = b"{\"write\":\"recover\"}\n{\"write\":\"nonsense\"}\n";
        let err = lines(frame).unwrap_err();
        assert!(err.starts_with("write 2 of the frame"), "{err}");
    }
}
