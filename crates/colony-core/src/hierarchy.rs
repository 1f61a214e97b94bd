//! The hierarchy planner: from a worker count, a span of control and tier names, the size of
//! every tier and the parent of every agent.
//!
//! Each tier is `ceil(size below / span)` nodes and children are spread evenly over their
//! parents: the first `size % parents` parents take one child more than the others. Agents are
//! numbered tier by tier from the top, so every chain-of-command query is arithmetic on ids:
//! nothing is searched and nothing is stored per agent.

use crate::AgentId;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Default span of control: the most children one agent supervises.
pub const DEFAULT_SPAN: u32 = 12;
/// Default tier names, top to bottom.
pub const DEFAULT_TIERS: [&str; 4] = ["master", "coordinator", "supervisor", "worker"];
/// Largest worker count a plan accepts. With its managers it stays well inside a `u32` id.
pub const MAX_WORKERS: u64 = 50_000_000;
/// Largest span of control a plan accepts.
pub const MAX_SPAN: u32 = 10_000;
/// Most tiers a plan may have.
pub const MAX_TIERS: usize = 16;

/// How the tiers are chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tiers {
    /// These tiers, top to bottom; the last one holds the workers.
    Named(Vec<String>),
    /// Add tiers above the workers until one root remains.
    Auto,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers::Named(DEFAULT_TIERS.iter().map(|s| s.to_string()).collect())
    }
}

/// What a plan is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HierarchyOptions {
    /// Number of agents in the bottom tier, the ones that run tasks.
    pub workers: u64,
    /// The most children any agent has.
    pub span: u32,
    /// Tier names, or `auto` depth.
    pub tiers: Tiers,
}

impl HierarchyOptions {
    /// The default shape (span 12, four tiers) for `workers` workers.
    pub fn with_workers(workers: u64) -> Self {
        Self {
            workers,
            span: DEFAULT_SPAN,
            tiers: Tiers::default(),
        }
    }

    /// Checks every field, naming the one that is wrong and the range it must be in.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Error::Workers { got: self.workers });
        }
        if !(2..=MAX_SPAN).contains(&self.span) {
            return Err(Error::Span { got: self.span });
        }
        if let Tiers::Named(names) = &self.tiers {
            if names.len() < 2 {
                return Err(Error::TooFewTiers { got: names.len() });
            }
            if names.len() > MAX_TIERS {
                return Err(Error::TooManyTiers { got: names.len() });
            }
            for (index, name) in names.iter().enumerate() {
                if name.trim().is_empty() {
                    return Err(Error::EmptyTierName {
                        position: index + 1,
                    });
                }
                if names[..index].contains(name) {
                    return Err(Error::DuplicateTier { name: name.clone() });
                }
            }
        }
        Ok(())
    }
}

/// Why a plan could not be made. Every message names the value and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("worker count {got} is out of range: allowed 1..={MAX_WORKERS}")]
    Workers { got: u64 },
    #[error("span of control {got} is out of range: allowed 2..={MAX_SPAN}")]
    Span { got: u32 },
    #[error("{got} tier name(s) given: at least 2 are needed (a top tier and the worker tier)")]
    TooFewTiers { got: usize },
    #[error("{got} tiers given: at most {MAX_TIERS} are allowed")]
    TooManyTiers { got: usize },
    #[error("tier name number {position} is empty")]
    EmptyTierName { position: usize },
    #[error("tier name `{name}` appears more than once")]
    DuplicateTier { name: String },
}

/// One tier of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    /// Number of agents in this tier.
    pub count: u64,
    /// Id of this tier's first agent; the tier holds `first..first + count`.
    pub first: u64,
}

/// How many children the agents of one tier have.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanStats {
    pub min: u64,
    pub avg: f64,
    pub max: u64,
}

/// A computed hierarchy: tier sizes, and every agent's parent and children by arithmetic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    tiers: Vec<Tier>,
    span: u32,
}

impl Plan {
    pub fn new(options: &HierarchyOptions) -> Result<Self, Error> {
        options.validate()?;
        let span = u64::from(options.span);
        let parents_of = |count: u64| count.div_ceil(span);
        // Sizes bottom-up; reversed to top-down below.
        let mut counts = vec![options.workers];
        let names: Vec<String> = match &options.tiers {
            Tiers::Named(names) => {
                while counts.len() < names.len() {
                    counts.push(parents_of(*counts.last().expect("never empty")));
                }
                names.clone()
            }
            Tiers::Auto => {
                while counts.len() < 2 || *counts.last().expect("never empty") > 1 {
                    counts.push(parents_of(*counts.last().expect("never empty")));
                }
                if counts.len() > MAX_TIERS {
                    return Err(Error::TooManyTiers { got: counts.len() });
                }
                auto_names(counts.len())
            }
        };
        counts.reverse();
        let mut first = 0;
        let tiers = names
            .into_iter()
            .zip(counts)
            .map(|(name, count)| {
                let tier = Tier { name, count, first };
                first += count;
                tier
            })
            .collect();
        Ok(Self {
            tiers,
            span: options.span,
        })
    }

    /// Tiers from the top down; the last one holds the workers.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    pub fn span(&self) -> u32 {
        self.span
    }

    /// Number of agents in all tiers.
    pub fn total(&self) -> u64 {
        self.tiers.iter().map(|t| t.count).sum()
    }

    pub fn workers(&self) -> u64 {
        self.tiers.last().map_or(0, |t| t.count)
    }

    /// The tier index of `agent`, or `None` if the plan has no such agent.
    pub fn tier_of(&self, agent: AgentId) -> Option<usize> {
        let id = u64::from(agent.0);
        self.tiers
            .iter()
            .position(|t| (t.first..t.first + t.count).contains(&id))
    }

    /// The agent `agent` reports to; `None` for the top tier and for unknown agents.
    pub fn parent(&self, agent: AgentId) -> Option<AgentId> {
        let tier = self.tier_of(agent)?;
        if tier == 0 {
            return None;
        }
        let (up, down) = (&self.tiers[tier - 1], &self.tiers[tier]);
        let child = u64::from(agent.0) - down.first;
        let (base, extra) = (down.count / up.count, down.count % up.count);
        let cut = extra * (base + 1);
        let parent = if child < cut {
            child / (base + 1)
        } else {
            extra + (child - cut) / base
        };
        Some(id(up.first + parent))
    }

    /// The agents that report to `agent`, a contiguous range of ids; empty for workers.
    pub fn children(&self, agent: AgentId) -> Range<u32> {
        let Some(tier) = self.tier_of(agent) else {
            return 0..0;
        };
        let Some(down) = self.tiers.get(tier + 1) else {
            return 0..0;
        };
        let up = &self.tiers[tier];
        let range = child_range(u64::from(agent.0) - up.first, up.count, down.count);
        (down.first + range.start) as u32..(down.first + range.end) as u32
    }

    /// The chain of command above `agent`, nearest first.
    pub fn ancestors(&self, agent: AgentId) -> impl Iterator<Item = AgentId> + '_ {
        std::iter::successors(self.parent(agent), |&a| self.parent(a))
    }

    /// The other children of `agent`'s parent. Top-tier agents are siblings of each other.
    pub fn siblings(&self, agent: AgentId) -> impl Iterator<Item = AgentId> + '_ {
        let range = match (self.parent(agent), self.tier_of(agent)) {
            (Some(parent), _) => self.children(parent),
            (None, Some(0)) => 0..self.tiers[0].count as u32,
            (None, _) => 0..0,
        };
        range.map(AgentId).filter(move |&a| a != agent)
    }

    /// Every agent below `agent`, as one contiguous range per lower tier (top down). Because
    /// children are contiguous and ordered like their parents, a subtree is contiguous in
    /// every tier.
    pub fn subtree(&self, agent: AgentId) -> Vec<Range<u32>> {
        let mut ranges = Vec::new();
        let mut current = agent.0..agent.0 + 1;
        while !current.is_empty() {
            let (first, last) = (AgentId(current.start), AgentId(current.end - 1));
            let next = self.children(first).start..self.children(last).end;
            if next.is_empty() {
                break;
            }
            ranges.push(next.clone());
            current = next;
        }
        ranges
    }

    /// Children per agent of tier `tier`; `None` for the worker tier and unknown tiers.
    pub fn span_stats(&self, tier: usize) -> Option<SpanStats> {
        let (up, down) = (self.tiers.get(tier)?, self.tiers.get(tier + 1)?);
        let (base, extra) = (down.count / up.count, down.count % up.count);
        Some(SpanStats {
            min: base,
            avg: down.count as f64 / up.count as f64,
            max: base + u64::from(extra > 0),
        })
    }
}

/// Children of parent `p` (index within its tier) when `children` are spread over `parents`.
fn child_range(p: u64, parents: u64, children: u64) -> Range<u64> {
    let (base, extra) = (children / parents, children % parents);
    let start = p * base + p.min(extra);
    start..start + base + u64::from(p < extra)
}

fn id(raw: u64) -> AgentId {
    AgentId(u32::try_from(raw).expect("plans are bounded far below u32::MAX agents"))
}

/// Names for `depth` automatic tiers: `master` on top, `supervisor` above `worker`, and
/// `coordinator` (numbered when there are several) in between.
fn auto_names(depth: usize) -> Vec<String> {
    let middle = depth.saturating_sub(3);
    let mut names = Vec::with_capacity(depth);
    if depth >= 3 {
        names.push("master".to_string());
    }
    match middle {
        0 => {}
        1 => names.push("coordinator".to_string()),
        n => names.extend((1..=n).map(|i| format!("coordinator-{i}"))),
    }
    names.push("supervisor".to_string());
    names.push("worker".to_string());
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(plan: &Plan) -> Vec<u64> {
        plan.tiers().iter().map(|t| t.count).collect()
    }

    #[test]
    fn hundred_thousand_workers_at_span_twelve() {
        let plan = Plan::new(&HierarchyOptions::with_workers(100_000)).unwrap();
        assert_eq!(counts(&plan), [58, 695, 8_334, 100_000]);
        assert_eq!(plan.total(), 109_087);
    }

    #[test]
    fn nine_thousand_three_hundred_sixty_workers() {
        let plan = Plan::new(&HierarchyOptions::with_workers(9_360)).unwrap();
        assert_eq!(counts(&plan), [6, 65, 780, 9_360]);
        assert_eq!(plan.total(), 10_211);
        let stats = plan.span_stats(0).unwrap();
        assert_eq!((stats.min, stats.max), (10, 11));
    }

    #[test]
    fn auto_depth_adds_tiers_until_one_root() {
        let options = HierarchyOptions {
            tiers: Tiers::Auto,
            ..HierarchyOptions::with_workers(100_000)
        };
        let plan = Plan::new(&options).unwrap();
        assert_eq!(counts(&plan), [1, 5, 58, 695, 8_334, 100_000]);
        let names: Vec<_> = plan.tiers().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "master",
                "coordinator-1",
                "coordinator-2",
                "coordinator-3",
                "supervisor",
                "worker"
            ]
        );
        let one = HierarchyOptions {
            tiers: Tiers::Auto,
            ..HierarchyOptions::with_workers(1)
        };
        assert_eq!(counts(&Plan::new(&one).unwrap()), [1, 1]);
    }

    #[test]
    fn chain_of_command() {
        let plan = Plan::new(&HierarchyOptions::with_workers(100_000)).unwrap();
        let last_worker = AgentId(109_086);
        let chain: Vec<_> = plan.ancestors(last_worker).collect();
        assert_eq!(chain.len(), 3);
        assert_eq!(
            chain[2],
            AgentId(57),
            "the last worker reports up to the last master"
        );
        assert_eq!(plan.siblings(AgentId(0)).count(), 57);
        let subtree = plan.subtree(AgentId(0));
        assert_eq!(subtree.len(), 3);
        let workers: u32 = subtree[2].clone().map(|_| 1).sum();
        assert!(
            (1_716..=1_728).contains(&workers),
            "a master holds about 12^3 workers"
        );
    }

    #[test]
    fn bad_input_names_the_value() {
        let err = |o: HierarchyOptions| Plan::new(&o).unwrap_err().to_string();
        let base = HierarchyOptions::with_workers(10);
        assert!(
            err(HierarchyOptions {
                span: 1,
                ..base.clone()
            })
            .contains("span of control 1")
        );
        assert!(
            err(HierarchyOptions {
                span: 0,
                ..base.clone()
            })
            .contains("allowed 2..=")
        );
        assert!(
            err(HierarchyOptions {
                workers: 0,
                ..base.clone()
            })
            .contains("worker count 0")
        );
        let tiers = |names: &[&str]| Tiers::Named(names.iter().map(|s| s.to_string()).collect());
        assert!(
            err(HierarchyOptions {
                tiers: tiers(&["a", "b", "a"]),
                ..base.clone()
            })
            .contains("`a` appears more than once")
        );
        assert!(
            err(HierarchyOptions {
                tiers: tiers(&["a", " "]),
                ..base.clone()
            })
            .contains("empty")
        );
        assert!(
            err(HierarchyOptions {
                tiers: tiers(&["a"]),
                ..base
            })
            .contains("at least 2")
        );
    }

    proptest! {
        #[test]
        fn every_agent_has_one_parent_one_tier_up(
            workers in 1u64..5_000,
            span in 2u32..40,
            depth in 2usize..6,
        ) {
            let names = (0..depth).map(|i| format!("t{i}")).collect();
            let plan = Plan::new(&HierarchyOptions { workers, span, tiers: Tiers::Named(names) }).unwrap();
            let tiers = plan.tiers();
            prop_assert_eq!(tiers.iter().map(|t| t.count).sum::<u64>(), plan.total());
            prop_assert_eq!(plan.workers(), workers);
            for (t, tier) in tiers.iter().enumerate() {
                if let Some(stats) = plan.span_stats(t) {
                    prop_assert!(stats.max <= u64::from(span));
                    prop_assert!(stats.max - stats.min <= 1, "sizes differ by at most one");
                }
                let mut seen_children = 0;
                for raw in tier.first..tier.first + tier.count {
                    let agent = AgentId(raw as u32);
                    let children = plan.children(agent);
                    seen_children += children.len();
                    for child in children {
                        prop_assert_eq!(plan.parent(AgentId(child)), Some(agent));
                        prop_assert_eq!(plan.tier_of(AgentId(child)), Some(t + 1));
                    }
                    match plan.parent(agent) {
                        None => prop_assert_eq!(t, 0),
                        Some(parent) => prop_assert_eq!(plan.tier_of(parent), Some(t - 1)),
                    }
                }
                if let Some(down) = tiers.get(t + 1) {
                    prop_assert_eq!(seen_children as u64, down.count, "every child has a parent");
                }
            }
        }
    }
}
