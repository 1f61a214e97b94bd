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
