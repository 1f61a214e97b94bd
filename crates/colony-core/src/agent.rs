//! What an agent is, as far as routing cares: its backend kind, its role and its capabilities.

use crate::{task::Requirement, tree::SpecMask};
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

impl Failover {
    /// The pools a retry may go to after an attempt on an agent of `pool` failed, among
    /// `eligible` (every pool that can run the task); `staffed` is the set of pools that have
    /// agents now. A backup must be staffed, or the retry would wait for agents that may
    /// never come while this pool's could run it.
    pub fn choose(self, pool: u8, eligible: SpecMask, staffed: SpecMask) -> SpecMask {
        match self {
            Failover::Any => eligible,
            Failover::SamePool => SpecMask::of(pool),
            Failover::Backup => {
                let backups = SpecMask(eligible.0 & staffed.0 & !SpecMask::of(pool).0);
                if backups.is_empty() {
                    eligible
                } else {
                    backups
                }
            }
        }
    }
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
            hard: false,
        };
        assert!(coder.satisfies(&need(None, &[])));
        assert!(coder.satisfies(&need(Some("coder"), &["rust"])));
        assert!(!coder.satisfies(&need(Some("planner"), &[])));
        assert!(!coder.satisfies(&need(None, &["rust", "python"])));
    }

    #[test]
    fn failover_sends_a_retry_where_its_policy_says() {
        // Pools 0, 1 and 3 can run the task; pool 1 has failed it.
        let eligible = SpecMask(0b1011);
        let everyone = SpecMask(0b1111);
        assert_eq!(Failover::Any.choose(1, eligible, everyone), eligible);
        assert_eq!(
            Failover::SamePool.choose(1, eligible, SpecMask::default()),
            SpecMask::of(1),
            "the same pool even with no agents now: its retry waits for them"
        );
        assert_eq!(
            Failover::Backup.choose(1, eligible, everyone),
            SpecMask(0b1001),
            "the other eligible pools"
        );
        assert_eq!(
            Failover::Backup.choose(1, eligible, SpecMask(0b0110)),
            eligible,
            "no other eligible pool is staffed: back to every eligible one, this one too"
        );
        assert_eq!(
            Failover::Backup.choose(1, SpecMask::of(1), everyone),
            SpecMask::of(1),
            "this pool is the only one that can run it"
        );
        assert_eq!(
            Failover::Backup.choose(1, eligible, SpecMask(0b1010)),
            SpecMask::of(3),
            "only staffed backups; pool 2 is staffed but cannot run it"
        );
    }
}
