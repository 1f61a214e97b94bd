//! What an agent is, as far as routing cares: its backend kind, its role and its capabilities.

use crate::task::Requirement;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Describes a kind of worker agent. Many agents share one spec; the registry stores a small
/// index to it rather than a copy per agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentSpec {
    /// The backend that runs these agents (`sim`, `command`, `process`, `http`, ...).
    pub kind: Arc<str>,
    /// The role tasks ask for by name.
    pub role: Arc<str>,
    #[serde(default)]
    pub capabilities: Vec<Arc<str>>,
    /// Tasks one agent runs at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Where a task goes after an attempt on one of these agents failed.
    #[serde(default)]
    pub failover: Failover,
}

/// The failover policy of a role: where the retry of an attempt that failed on an agent of
/// this spec goes. Whatever the policy, a retry avoids the agent that failed when another
/// under the same supervisor can take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    /// Wherever routing sends it, among every agent that can run the task.
    #[default]
    Any,
    /// To a backup: agents of the other pools that can run the task (another backend of the
    /// same role, say). This pool's agents take it only when no other pool has agents.
    Backup,
    /// Back to this pool's agents only (agents with local state the retry needs).
    SamePool,
}

fn one() -> u32 {
    1
}

impl AgentSpec {
    pub fn new(kind: &str, role: &str) -> Self {
        Self {
            kind: kind.into(),
            role: role.into(),
            capabilities: Vec::new(),
            concurrency: 1,
            failover: Failover::Any,
        }
    }

    /// Whether an agent of this spec may run a task with `requirement`.
    pub fn satisfies(&self, requirement: &Requirement) -> bool {
        requirement
            .role
            .as_ref()
            .is_none_or(|role| *role == self.role)
            && requirement
                .capabilities
                .iter()
                .all(|c| self.capabilities.contains(c) || *c == self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_matching() {
        let mut coder = AgentSpec::new("sim", "coder");
        coder.capabilities = vec!["rust".into(), "git".into()];
        let need = |role: Option<&str>, caps: &[&str]| Requirement {
            role: role.map(Into::into),
            capabilities: caps.iter().map(|c| (*c).into()).collect(),
        };
        assert!(coder.satisfies(&need(None, &[])));
        assert!(coder.satisfies(&need(Some("coder"), &["rust"])));
        assert!(!coder.satisfies(&need(Some("planner"), &[])));
        assert!(!coder.satisfies(&need(None, &["rust", "python"])));
    }
}
