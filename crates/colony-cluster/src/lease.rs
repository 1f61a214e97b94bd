//! What a node does with a delivered task, and how an attempt's end moves it: sans IO. The
//! node reads the task's record, asks [`on_delivery`], writes the row it returns with a
//! compare-and-set on the revision it read, runs the attempt, and writes [`after_attempt`]'s
//! row with a compare-and-set on the revision of its own write. A write that loses the
//! compare-and-set means another node holds the task now: the attempt is fenced.

use crate::wire::Row;
use bytes::Bytes;
use colony_core::task::{TaskSpec, TaskState};
use std::time::Duration;

/// What to do with a delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Start an attempt: write this row (state running, the next lease), then run.
    Start(Row),
    /// The task already ended (its node died after writing the record and before its ack):
    /// ack the message, run nothing.
    Finished,
    /// No attempt is left: write this row (dead-lettered) and ack.
    DeadLetter(Row),
}

/// How an attempt on this node ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded {
        output: Bytes,
        agent: Option<u64>,
    },
    /// An error no retry can fix.
    Fatal {
        error: String,
        agent: Option<u64>,
    },
    /// An error, a crash or a timeout: another attempt may succeed.
    Retryable {
        error: String,
        agent: Option<u64>,
    },
    /// The node is draining and gives the task back unfinished: it does not count.
    HandBack,
}

/// What the node answers the stream after writing the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The task ended: the stream may drop its message.
    Ack,
    /// Deliver it again after this delay, to any node.
    Nak(Duration),
}

/// The step for the `delivered`-th delivery (JetStream's count, from 1) of `spec` to `node`,
/// given the task's record (`None` when no node wrote one yet).
///
/// A first delivery starts attempt 1 without a record being read or written first: a node
/// writes its lease only once the attempt has run for a while ([`LAZY_LEASE`]), or writes the
/// end straight away, as a create that fails if any other node wrote first. A later delivery
/// means earlier ones were not acknowledged within `ack_wait`; its node writes the lease
/// before it runs, past every number given out (attempt numbers never repeat). A recorded
/// attempt lost with its node counts against `max_attempts`; an unrecorded one does not.
pub fn on_delivery(
    current: Option<&Row>,
    spec: &TaskSpec,
    node: &str,
    lease: &str,
    delivered: u32,
    now_ms: u64,
) -> Step {
    let delivered = delivered.max(1);
    let running = |attempt: u32, charged: u32| Row {
        state: TaskState::Running,
        attempt,
        charged,
        node: node.to_owned(),
        lease: lease.to_owned(),
        agent: None,
        error: None,
        key: spec.key.as_deref().map(str::to_owned),
        at_ms: now_ms,
        decision: None,
        team: None,
        voter: None,
        output: None,
    };
    let start = |attempt: u32, charged: u32| Step::Start(running(attempt, charged));
    let lost = |row: Row, attempt: u32, lost_node: &str| {
        Step::DeadLetter(Row {
            state: TaskState::DeadLettered,
            error: Some(format!(
                "attempt {attempt} was lost with node {lost_node} (no ack within ack_wait) and it was the last of {}",
                spec.max_attempts
            )),
            at_ms: now_ms,
            output: None,
            lease: lease.to_owned(),
            ..row
        })
    };
    let Some(row) = current else {
        // No node wrote anything: earlier deliveries were lost before they could (a node that
        // died in an attempt's first moments, or one that could not reach the record while
        // NATS elected a leader). None is charged: nothing says it ran, and a fault of the
        // cluster must not fail the task. The lease is written before this attempt runs, so
        // a task that kills its nodes is counted from here on.
        return start(delivered, 1);
    };
    match row.state {
        s if s != TaskState::Queued && s != TaskState::Running => Step::Finished,
        // A running record delivered again: its node stopped acknowledging (died, stalled,
        // cut off) for longer than ack_wait. That attempt is lost and counted.
        TaskState::Running if row.charged >= spec.max_attempts => {
            lost(row.clone(), row.attempt, &row.node)
        }
        _ => start((row.attempt + 1).max(delivered), row.charged + 1),
    }
}

/// How long a first attempt runs before its node writes its lease: attempts shorter than
/// this cost one write (their end), longer ones show as running.
pub const LAZY_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// The row ending attempt `started` (the row this node wrote to start it) with `outcome`,
/// and the reply to the stream.
pub fn after_attempt(
    started: &Row,
    spec: &TaskSpec,
    outcome: Outcome,
    now_ms: u64,
) -> (Row, Reply) {
    let mut row = Row {
        at_ms: now_ms,
        output: None,
        error: None,
        ..started.clone()
    };
    match outcome {
        Outcome::Succeeded { output, agent } => {
            row.state = TaskState::Succeeded;
            row.agent = agent;
            row.output = Some(output);
            (row, Reply::Ack)
        }
        Outcome::Fatal { error, agent } => {
            row.state = TaskState::Failed;
            row.agent = agent;
            row.error = Some(error);
            (row, Reply::Ack)
        }
        Outcome::Retryable { error, agent } => {
            row.agent = agent;
            row.error = Some(error);
            if row.charged >= spec.max_attempts {
                row.state = TaskState::DeadLettered;
                (row, Reply::Ack)
            } else {
                row.state = TaskState::Queued;
                let delay = retry_delay(row.charged);
                (row, Reply::Nak(delay))
            }
        }
        Outcome::HandBack => {
            row.state = TaskState::Queued;
            row.charged = row.charged.saturating_sub(1);
            row.error = Some(format!("handed back by draining node {}", row.node));
            (row, Reply::Nak(Duration::ZERO))
        }
    }
}

/// The wait before a failed task's next attempt: 500 ms, doubling per attempt counted, at
/// most 30 s.
pub fn retry_delay(charged: u32) -> Duration {
    let doublings = charged.saturating_sub(1).min(6);
    Duration::from_millis(500 << doublings).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_attempts: u32) -> TaskSpec {
        TaskSpec {
            max_attempts,
            ..TaskSpec::default()
        }
    }

    fn started(step: Step) -> Row {
        match step {
            Step::Start(row) => row,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn leases_only_move_up_and_a_lost_attempt_counts() {
        let spec = spec(2);
        let first = started(on_delivery(None, &spec, "a", "l", 1, 1));
        assert_eq!(
            (first.attempt, first.charged, first.state),
            (1, 1, TaskState::Running)
        );
        // Node a died: the message comes to b with the record still running.
        let second = started(on_delivery(Some(&first), &spec, "b", "l", 2, 2));
        assert_eq!(
            (second.attempt, second.charged, second.node.as_str()),
            (2, 2, "b")
        );
        // b died too: no attempt is left.
        match on_delivery(Some(&second), &spec, "c", "l", 3, 3) {
            Step::DeadLetter(row) => {
                assert_eq!(row.state, TaskState::DeadLettered);
                assert_eq!(row.attempt, 2);
                assert!(row.error.unwrap().contains("lost with node b"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deliveries_lost_without_a_record_are_not_charged() {
        // Nine deliveries went to nodes that wrote nothing (leader elections, deaths in an
        // attempt's first moments): the tenth still runs, as attempt 10, the first charged.
        let one = spec(1);
        let tenth = started(on_delivery(None, &one, "c", "l", 10, 1));
        assert_eq!((tenth.attempt, tenth.charged), (10, 1));
        // Its lease written, a loss of this one is charged: the task is dead-lettered.
        match on_delivery(Some(&tenth), &one, "d", "l", 11, 2) {
            Step::DeadLetter(row) => {
                assert_eq!((row.state, row.attempt), (TaskState::DeadLettered, 10));
            }
            other => panic!("{other:?}"),
        }
        let spec = spec(3);
        // A record behind the delivery count: the lease moves past both.
        let queued = Row {
            state: TaskState::Queued,
            ..started(on_delivery(None, &spec, "a", "l", 1, 1))
        };
        assert_eq!(
            started(on_delivery(Some(&queued), &spec, "b", "l", 4, 2)).attempt,
            4
        );
    }

    #[test]
    fn an_ended_task_is_only_acked() {
        let spec = spec(3);
        let row = started(on_delivery(None, &spec, "a", "l", 1, 1));
        for outcome in [
            Outcome::Succeeded {
                output: Bytes::from_static(b"1"),
                agent: Some(3),
            },
            Outcome::Fatal {
                error: "bad".into(),
                agent: None,
            },
        ] {
            let (done, reply) = after_attempt(&row, &spec, outcome, 2);
            assert_eq!(reply, Reply::Ack);
            assert!(done.is_terminal());
            assert_eq!(
                on_delivery(Some(&done), &spec, "b", "l", 2, 3),
                Step::Finished
            );
        }
    }

    #[test]
    fn retries_until_the_attempts_are_spent_and_hand_backs_are_free() {
        let spec = spec(2);
        let first = started(on_delivery(None, &spec, "a", "l", 1, 1));
        let retry = Outcome::Retryable {
            error: "timeout".into(),
            agent: None,
        };
        let (queued, reply) = after_attempt(&first, &spec, retry.clone(), 2);
        assert_eq!(
            (queued.state, reply),
            (TaskState::Queued, Reply::Nak(retry_delay(1)))
        );
        let second = started(on_delivery(Some(&queued), &spec, "b", "l", 2, 3));
        // b drains: the attempt is handed back and does not count.
        let (back, reply) = after_attempt(&second, &spec, Outcome::HandBack, 4);
        assert_eq!(
            (back.state, back.charged, reply),
            (TaskState::Queued, 1, Reply::Nak(Duration::ZERO))
        );
        let third = started(on_delivery(Some(&back), &spec, "c", "l", 3, 5));
        assert_eq!((third.attempt, third.charged), (3, 2));
        let (dead, reply) = after_attempt(&third, &spec, retry, 6);
        assert_eq!((dead.state, reply), (TaskState::DeadLettered, Reply::Ack));
        assert_eq!(dead.error.as_deref(), Some("timeout"));
    }

    #[test]
    fn the_retry_delay_doubles_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(100), Duration::from_secs(30));
    }
}
