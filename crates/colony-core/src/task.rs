//! What a task is: who may run it, how urgent it is, what it carries and how long it may take.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::{fmt, sync::Arc, time::Duration};

/// Largest payload a task may carry unless the runtime is configured otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// Attempts a task gets unless it says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Time an attempt may take unless the task says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest timeout a task may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Urgency from 0 (lowest) to 9 (highest). Higher priorities leave a queue first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    pub const LOWEST: Priority = Priority(0);
    pub const HIGHEST: Priority = Priority(9);
    pub const DEFAULT: Priority = Priority(5);
    /// Number of distinct priorities.
    pub const LEVELS: usize = 10;

    pub fn new(value: u8) -> Result<Self, Error> {
        if value <= Self::HIGHEST.0 {
            Ok(Priority(value))
        } else {
            Err(Error::Priority { got: value.into() })
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u8> for Priority {
    type Error = Error;
    fn try_from(value: u8) -> Result<Self, Error> {
        Self::new(value)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which agents may run a task: a role, capabilities the agent must all have, or both.
/// An empty requirement matches every worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Requirement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Arc<str>>,
    /// Marked hard: routed to the worker with the best reputation among those with room
    /// for it (`LiveTree::best_worker`), not by load alone. It matches the same workers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard: bool,
}

impl Requirement {
    pub fn is_any(&self) -> bool {
        self.role.is_none() && self.capabilities.is_empty()
    }
}

/// A unit of work as submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// The caller's name for the task (a workflow step, an idempotency key); the runtime's own
    /// id is a [`crate::TaskId`] assigned on acceptance.
    pub key: Option<Arc<str>>,
    pub requirement: Requirement,
    pub priority: Priority,
    /// JSON text handed to the agent as is.
    pub payload: Bytes,
    /// Time one attempt may take before it is cancelled and retried.
    pub timeout: Duration,
    /// Attempts before the task is dead-lettered.
    pub max_attempts: u32,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            key: None,
            requirement: Requirement::default(),
            priority: Priority::DEFAULT,
            payload: Bytes::new(),
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl TaskSpec {
    /// A task with default settings carrying `payload`, which must be JSON text.
    pub fn with_payload(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Checks the limits that do not depend on which agents exist.
    pub fn validate(&self, max_payload: usize) -> Result<(), Error> {
        if self.payload.len() > max_payload {
            return Err(Error::PayloadTooLarge {
                got: self.payload.len(),
                max: max_payload,
            });
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(Error::MaxAttempts {
                got: self.max_attempts,
            });
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(Error::Timeout { got: self.timeout });
        }
        Ok(())
    }
}

/// Where a task stands. The last four are terminal: a task in one of them never moves again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Accepted and waiting for an agent.
    Queued,
    /// An attempt is running on an agent.
    Running,
    Succeeded,
    /// The agent reported a fatal error.
    Failed,
    /// Every attempt failed with a retryable error, crash or timeout.
    DeadLettered,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::DeadLettered | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::DeadLettered => "dead-lettered",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task spec outside its limits. Every message names the value and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("priority {got} is out of range: allowed 0..=9")]
    Priority { got: u32 },
    #[error("payload of {got} bytes is too large: allowed up to {max} bytes")]
    PayloadTooLarge { got: usize, max: usize },
    #[error("max attempts {got} is out of range: allowed 1..={MAX_ATTEMPTS}")]
    MaxAttempts { got: u32 },
    #[error("timeout {got:?} is out of range: allowed more than 0 s and up to 7 days")]
    Timeout { got: Duration },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_with_the_value_named() {
        assert_eq!(
            Priority::new(10).unwrap_err().to_string(),
            "priority 10 is out of range: allowed 0..=9"
        );
        let big = TaskSpec::with_payload(vec![b' '; 11]);
        assert!(
            big.validate(10)
                .unwrap_err()
                .to_string()
                .contains("11 bytes")
        );
        let zero = TaskSpec {
            max_attempts: 0,
            ..TaskSpec::default()
        };
        assert!(
            zero.validate(10)
                .unwrap_err()
                .to_string()
                .contains("max attempts 0")
        );
        let instant = TaskSpec {
            timeout: Duration::ZERO,
            ..TaskSpec::default()
        };
        assert!(instant.validate(10).is_err());
        assert!(TaskSpec::default().validate(10).is_ok());
    }
}
