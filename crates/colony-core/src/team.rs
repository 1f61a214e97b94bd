//! Teams: the workers a supervisor gathers for one task, by role and availability; who takes
//! over a member's role when it fails; how big a team is for a task's complexity; and how far
//! its members may hand work on to each other.
//!
//! - [`form`] seats a team on the live tree. It looks for one supervisor whose own workers
//!   cover every role (a team under one supervisor shares its queue and its health sweep, and
//!   its members' load is seen in one place): the first in tree order that covers it with
//!   room, else the covering one with the fewest busy members and least load; when
//!   no supervisor covers the roles, each role's candidates come from a walk pruned to
//!   the pools that can hold it, nearest the supervisor that could seat most of the team
//!   first. Workers with room come
//!   before busy ones, and those out of service (down for a restart, sidelined by their
//!   breaker) only when nothing else can take the role. The walk is bounded.
//! - [`replace`] picks the worker that takes over a failed member's role, by the same
//!   preferences, nearest the failed member first.
//! - [`Sizing`] turns a complexity score into a team size by a rule the workflow file writes;
//!   [`counts`] splits a size over the roles.
//! - [`Roster`] is the team as it stands: who holds which role, the reassignments made and
//!   the budget left for more.
//! - [`Delegation`] caps what members hand on: a delegation goes one level deeper, never to a
//!   role already on its chain (no cycle), never past a depth, never past a number of asks.
//!   A team therefore always ends.
//!
//! Nothing here does I/O: the runtime (`colony-runtime/src/team.rs`) asks these and carries
//! out the answers.

use crate::{
    AgentId,
    tree::{LiveTree, SpecMask},
};
use std::collections::HashSet;

/// Most members a team may have.
pub const MAX_MEMBERS: u32 = 64;
/// Most roles a team may have.
pub const MAX_ROLES: usize = 16;
/// Most levels of delegation a team may allow.
pub const MAX_DEPTH: u32 = 8;
/// Workers [`form`] and [`replace`] look at, at most, beyond a team's own size.
pub const WALK_BOUND: usize = 4_096;

/// What one role of a team needs: workers of these pools, this many of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub mask: SpecMask,
    pub count: u32,
}

/// A worker seated in a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Index of its role in the team's needs.
    pub role: usize,
    pub agent: AgentId,
    /// Its pool (spec index).
    pub pool: u8,
}

/// A team as [`form`] seated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formation {
    /// Every member, role by role in the needs' order.
    pub members: Vec<Member>,
    /// The supervisor that formed it: every member's when [`Formation::together`], else the
    /// one with most of them.
    pub supervisor: AgentId,
    /// Whether every member is a worker of `supervisor`.
    pub together: bool,
}

/// Why a team could not be formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("role {role} needs {needed} workers, and {found} can take it")]
    Short {
        role: usize,
        needed: u32,
        found: u32,
    },
    #[error("a team of {0} members asked: allowed 1..={MAX_MEMBERS}")]
    Size(u32),
    #[error("{0} roles asked: allowed 1..={MAX_ROLES}")]
    Roles(usize),
}

/// How available a worker is, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Availability {
    Room,
    Busy,
    /// Down for a restart or sidelined by its breaker: its tasks wait for it.
    Out,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    agent: AgentId,
    supervisor: AgentId,
    availability: Availability,
    /// Load for capacity, in millionths.
    share: u64,
}

fn candidate(tree: &LiveTree, agent: AgentId, supervisor: AgentId) -> Candidate {
    let (load, capacity) = tree.load(agent);
    let availability = if tree.is_down(agent) || tree.is_sidelined(agent) {
        Availability::Out
    } else if load < capacity {
        Availability::Room
    } else {
        Availability::Busy
    };
    Candidate {
        agent,
        supervisor,
        availability,
        share: u64::from(load) * 1_000_000 / u64::from(capacity.max(1)),
    }
}

/// Supervisors whose subtree `holds` (a test of its specs), in tree order, each with its
/// workers in `mask` (retired workers are in no mask), until `bound` workers are gathered or
/// `enough` says the supervisors so far will do. Subtrees that fail `holds` are skipped
/// whole, so a walk reaches the pools it wants however far into the tree they are.
fn walk(
    tree: &LiveTree,
    holds: impl Fn(SpecMask) -> bool,
    mask: SpecMask,
    bound: usize,
    mut enough: impl FnMut(AgentId, &[Candidate]) -> bool,
) -> usize {
    let supervisor_tier = tree.worker_tier().saturating_sub(1);
    let mut seen = 0;
    let mut stack: Vec<AgentId> = tree.roots().collect();
    stack.reverse();
    let mut group = Vec::new();
    while let Some(agent) = stack.pop() {
        if seen >= bound {
            break;
        }
        if !holds(tree.mask(agent)) {
            continue;
        }
        if tree.tier(agent) < supervisor_tier {
            let first = stack.len();
            stack.extend(tree.children(agent));
            stack[first..].reverse();
            continue;
        }
        group.clear();
        group.extend(
            tree.children(agent)
                .filter(|&w| tree.mask(w).intersects(mask))
                .map(|w| candidate(tree, w, agent)),
        );
        seen += group.len();
        if enough(agent, &group) {
            break;
        }
    }
    seen
}

/// Workers seated, each with the index of its role.
type Seated = Vec<(usize, Candidate)>;

/// Fills each need from `pool` (best first within each), distinct workers; `None` when a
/// need cannot be filled, with the first such role and how many could take it. The roles
/// fewest workers of `pool` can take are seated first, so that a role that can take only
/// some pools is not left short by a role that could have taken others.
fn fill(
    tree: &LiveTree,
    needs: &[Need],
    pool: &[Candidate],
    allow_out: bool,
) -> Result<Seated, (usize, u32)> {
    let usable = |c: &Candidate| allow_out || c.availability != Availability::Out;
    let mut order: Vec<(usize, usize)> = needs
        .iter()
        .enumerate()
        .map(|(role, need)| {
            let able = pool
                .iter()
                .filter(|c| usable(c) && SpecMask::of(tree.spec(c.agent)).intersects(need.mask))
                .count();
            (able, role)
        })
        .collect();
    order.sort_unstable();
    let mut taken: HashSet<AgentId> = HashSet::new();
    let mut out = Vec::new();
    for (_, role) in order {
        let need = &needs[role];
        let mut found = 0;
        for c in pool {
            if found == need.count {
                break;
            }
            if usable(c)
                && SpecMask::of(tree.spec(c.agent)).intersects(need.mask)
                && !taken.contains(&c.agent)
            {
                taken.insert(c.agent);
                out.push((role, *c));
                found += 1;
            }
        }
        if found < need.count {
            return Err((role, found));
        }
    }
    // Role by role, in the needs' order.
    out.sort_by_key(|(role, _)| *role);
    Ok(out)
}

fn by_preference(pool: &mut [Candidate]) {
    pool.sort_unstable_by_key(|c| (c.availability, c.share, c.agent));
}

/// Seats a team with `needs` (see the module's text). Looks at up to `bound` workers, and
/// stops early at the first supervisor whose workers cover every role with room.
pub fn form(tree: &LiveTree, needs: &[Need], bound: usize) -> Result<Formation, Error> {
    if needs.is_empty() || needs.len() > MAX_ROLES {
        return Err(Error::Roles(needs.len()));
    }
    let size = needs
        .iter()
        .fold(0u32, |sum, n| sum.saturating_add(n.count));
    if size == 0 || size > MAX_MEMBERS {
        return Err(Error::Size(size));
    }
    let mask = SpecMask(needs.iter().fold(0, |m, n| m | n.mask.0));
    // The best supervisor covering every role from its own workers in service: fewest busy
    // members, then least load. Only subtrees holding a pool of every role can have one.
    let covers = |m: SpecMask| needs.iter().all(|n| m.intersects(n.mask));
    let mut best: Option<((usize, u64), AgentId, Seated)> = None;
    let mut own = Vec::new();
    walk(
        tree,
        covers,
        mask,
        bound.max(size as usize),
        |supervisor, group| {
            own.clear();
            own.extend_from_slice(group);
            by_preference(&mut own);
            let Ok(seated) = fill(tree, needs, &own, false) else {
                return false;
            };
            let busy = seated
                .iter()
                .filter(|(_, c)| c.availability != Availability::Room)
                .count();
            let load = seated.iter().map(|(_, c)| c.share).sum();
            if best
                .as_ref()
                .is_none_or(|(score, ..)| (busy, load) < *score)
            {
                best = Some(((busy, load), supervisor, seated));
            }
            busy == 0
        },
    );
    if let Some((_, supervisor, seated)) = best {
        return Ok(Formation {
            members: members(tree, seated),
            supervisor,
            together: true,
        });
    }
    // Spread: each role's candidates from a walk of its own, pruned to the subtrees that
    // hold its pools, until it has found its count of workers with room (or its bound).
    let mut everyone: Vec<Candidate> = Vec::new();
    let mut known: HashSet<AgentId> = HashSet::new();
    for need in needs {
        // Roles sharing its pools compete for the same workers: enough for all of them.
        let want = needs
            .iter()
            .filter(|n| n.mask.intersects(need.mask))
            .fold(0u32, |sum, n| sum.saturating_add(n.count));
        let able = |c: &Candidate| {
            c.availability == Availability::Room
                && SpecMask::of(tree.spec(c.agent)).intersects(need.mask)
        };
        let mut found = everyone.iter().filter(|c| able(c)).count() as u32;
        if found >= want {
            continue;
        }
        let holds = |m: SpecMask| m.intersects(need.mask);
        walk(
            tree,
            holds,
            need.mask,
            bound.max(want as usize),
            |_, group| {
                for c in group {
                    if known.insert(c.agent) {
                        everyone.push(*c);
                        found += u32::from(able(c));
                    }
                }
                found >= want
            },
        );
    }
    // The anchor: the supervisor whose workers found could seat most members on their own.
    let mut by_supervisor: std::collections::HashMap<AgentId, Vec<u32>> = Default::default();
    for c in &everyone {
        if c.availability == Availability::Out {
            continue;
        }
        let counts = by_supervisor
            .entry(c.supervisor)
            .or_insert_with(|| vec![0; needs.len()]);
        for (i, need) in needs.iter().enumerate() {
            if SpecMask::of(tree.spec(c.agent)).intersects(need.mask) {
                counts[i] += 1;
            }
        }
    }
    let anchor = by_supervisor
        .iter()
        .map(|(&sup, counts)| {
            let covered: u32 = counts
                .iter()
                .zip(needs)
                .map(|(&n, need)| n.min(need.count))
                .sum();
            (std::cmp::Reverse(covered), sup)
        })
        .min()
        .map(|(_, sup)| sup)
        .or_else(|| everyone.first().map(|c| c.supervisor));
    // Nobody can take any role.
    let Some(anchor) = anchor else {
        return Err(Error::Short {
            role: 0,
            needed: needs[0].count,
            found: 0,
        });
    };
    // Nearest the anchor first, within each availability.
    everyone.sort_by_cached_key(|c| {
        (
            c.availability,
            distance(tree, anchor, c.supervisor),
            c.share,
            c.agent,
        )
    });
    let seated = fill(tree, needs, &everyone, true).map_err(|(role, found)| Error::Short {
        role,
        needed: needs[role].count,
        found,
    })?;
    let members = members(tree, seated);
    let together = members.iter().all(|m| tree.parent(m.agent) == Some(anchor));
    Ok(Formation {
        members,
        supervisor: anchor,
        together,
    })
}

fn members(tree: &LiveTree, seated: Seated) -> Vec<Member> {
    seated
        .into_iter()
        .map(|(role, c)| Member {
            role,
            agent: c.agent,
            pool: tree.spec(c.agent),
        })
        .collect()
}

/// How far supervisor `b` is from supervisor `a`: 0 the same, 1 siblings, then one more
/// per level up to their common ancestor.
fn distance(tree: &LiveTree, a: AgentId, b: AgentId) -> u32 {
    if a == b {
        return 0;
    }
    let mut level = 1;
    let (mut x, mut y) = (tree.parent(a), tree.parent(b));
    while x != y {
        level += 1;
        x = x.and_then(|p| tree.parent(p));
        y = y.and_then(|p| tree.parent(p));
    }
    level
}

/// The worker that takes over `failed`'s role: one of `mask` not in `exclude` (the team's
/// members and those that failed it), in service with room first, then busy, then out of
/// service, nearest `failed`'s supervisor first within each. Looks at the failed member's
/// supervisor's workers, then its siblings' and cousins', then anywhere, up to `bound`.
/// When `failed` is no longer a worker of the tree (trimmed away, its id reused), the search
/// starts from `anchor`, the supervisor that formed the team. `None` when no worker can take
/// the role.
pub fn replace(
    tree: &LiveTree,
    failed: AgentId,
    anchor: AgentId,
    mask: SpecMask,
    exclude: &HashSet<AgentId>,
    bound: usize,
) -> Option<AgentId> {
    let worker_tier = tree.worker_tier();
    let is_worker = |a: AgentId| tree.contains(a) && tree.tier(a) == worker_tier;
    let near = if is_worker(failed) {
        tree.parent(failed)?
    } else if tree.contains(anchor) && tree.tier(anchor) + 1 == worker_tier {
        anchor
    } else {
        tree.roots().next()?
    };
    let usable =
        |w: AgentId| is_worker(w) && tree.mask(w).intersects(mask) && !exclude.contains(&w);
    let mut pool: Vec<Candidate> = tree
        .children(near)
        .filter(|&w| usable(w))
        .map(|w| candidate(tree, w, near))
        .collect();
    let best_here = pool
        .iter()
        .filter(|c| c.availability == Availability::Room)
        .min_by_key(|c| (c.share, c.agent))
        .map(|c| c.agent);
    if best_here.is_some() {
        return best_here;
    }
    walk(
        tree,
        |m| m.intersects(mask),
        mask,
        bound,
        |supervisor, group| {
            if supervisor != near {
                pool.extend(group.iter().filter(|c| !exclude.contains(&c.agent)));
            }
            false
        },
    );
    pool.into_iter()
        .min_by_key(|c| {
            (
                c.availability,
                distance(tree, near, c.supervisor),
                c.share,
                c.agent,
            )
        })
        .map(|c| c.agent)
}

/// A rule that turns a complexity score into a team size: one member per `per` points,
/// rounded up, within `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sizing {
    pub per: f64,
    pub min: u32,
    pub max: u32,
}

impl Sizing {
    /// The size for `score`; refused when the score is not a finite number of at least 0.
    pub fn size(&self, score: f64) -> Result<u32, String> {
        if !score.is_finite() || score < 0.0 {
            return Err(format!(
                "a complexity score must be a finite number of at least 0, not {score}"
            ));
        }
        let wanted = (score / self.per).ceil();
        // A float past u32 saturates: the max bounds it anyway. Never a panic on bounds the
        // caller did not validate: the max wins.
        Ok((wanted as u32).max(self.min).min(self.max))
    }

    /// Checks the rule itself: a positive `per`, and `1 <= min <= max <= MAX_MEMBERS`.
    pub fn validate(&self) -> Result<(), String> {
        if !self.per.is_finite() || self.per <= 0.0 {
            return Err(format!("per must be a number above 0, not {}", self.per));
        }
        if self.min == 0 || self.min > self.max || self.max > MAX_MEMBERS {
            return Err(format!(
                "min {} and max {} must satisfy 1 <= min <= max <= {MAX_MEMBERS}",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

/// Splits `size` members over roles with fixed counts (`Some`) and at most one role that
/// takes the rest (`None`, at least one member). Without such a role, `size` must be the
/// sum of the counts.
pub fn counts(fixed: &[Option<u32>], size: u32) -> Result<Vec<u32>, String> {
    let set = fixed
        .iter()
        .flatten()
        .fold(0u32, |sum, &c| sum.saturating_add(c));
    match fixed.iter().filter(|c| c.is_none()).count() {
        0 if set == size => Ok(fixed.iter().map(|c| c.unwrap_or(0)).collect()),
        0 => Err(format!(
            "the roles' counts add up to {set}, but the team has {size} members"
        )),
        1 if size > set => Ok(fixed.iter().map(|c| c.unwrap_or(size - set)).collect()),
        1 => Err(format!(
            "a team of {size} leaves no member for the role without a count: the other roles take {set}"
        )),
        _ => Err("at most one role may go without a count (it takes the rest)".into()),
    }
}

/// A member's failure, and what the team does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reassign {
    /// Give member `index`'s role to another worker.
    Replace { index: usize },
    /// No reassignment left: the team fails.
    Exhausted,
    /// Not a member (any more): nothing to do.
    Unknown,
}

/// The team as it stands: who holds which role, and what reassignments are left.
#[derive(Clone, Debug)]
pub struct Roster {
    members: Vec<Member>,
    left: u32,
    /// (role, agent replaced, agent replacing), in order.
    reassigned: Vec<(usize, AgentId, AgentId)>,
}

impl Roster {
    /// The members of `formation`, with `reassignments` allowed over the team's life.
    pub fn new(formation: &Formation, reassignments: u32) -> Self {
        Self {
            members: formation.members.clone(),
            left: reassignments,
            reassigned: Vec::new(),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members of `role`, in seat order, with their index.
    pub fn of_role(&self, role: usize) -> impl Iterator<Item = (usize, &Member)> {
        self.members
            .iter()
            .enumerate()
            .filter(move |(_, m)| m.role == role)
    }

    pub fn agents(&self) -> HashSet<AgentId> {
        self.members.iter().map(|m| m.agent).collect()
    }

    /// Workers a replacement must not be: the members, and every worker that failed the
    /// team (a role must not bounce back to the worker it was taken from).
    pub fn excluded(&self) -> HashSet<AgentId> {
        let mut out = self.agents();
        out.extend(self.reassigned.iter().map(|&(_, from, _)| from));
        out
    }

    /// Every reassignment made: role, the member replaced and its replacement.
    pub fn reassigned(&self) -> &[(usize, AgentId, AgentId)] {
        &self.reassigned
    }

    /// `agent` failed its role: replace it while reassignments are left.
    pub fn failed(&mut self, agent: AgentId) -> Reassign {
        let Some(index) = self.members.iter().position(|m| m.agent == agent) else {
            return Reassign::Unknown;
        };
        if self.left == 0 {
            return Reassign::Exhausted;
        }
        Reassign::Replace { index }
    }

    /// Member `index`'s role now held by `agent` (of `pool`): one reassignment spent.
    pub fn replaced(&mut self, index: usize, agent: AgentId, pool: u8) {
        let m = &mut self.members[index];
        self.reassigned.push((m.role, m.agent, agent));
        m.agent = agent;
        m.pool = pool;
        self.left = self.left.saturating_sub(1);
    }
}

/// Why a delegation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("delegation deeper than {max} levels")]
    Depth { max: u32 },
    #[error("role {role} is already on this delegation's chain: it would loop")]
    Cycle { role: usize },
    #[error("the team already asked {max} steps and delegations")]
    Asks { max: u32 },
}

/// The cap on what a team's members hand on to each other.
#[derive(Clone, Debug)]
pub struct Delegation {
    max_depth: u32,
    max_asks: u32,
    asks: u32,
}

impl Delegation {
    /// At most `max_depth` levels below a step, and `max_asks` steps and delegations asked
    /// in all (the steps themselves count).
    pub fn new(max_depth: u32, max_asks: u32) -> Self {
        Self {
            max_depth: max_depth.min(MAX_DEPTH),
            max_asks,
            asks: 0,
        }
    }

    /// A step of the file asked: counted against the asks.
    pub fn step(&mut self) -> Result<(), Refused> {
        if self.asks >= self.max_asks {
            return Err(Refused::Asks { max: self.max_asks });
        }
        self.asks += 1;
        Ok(())
    }

    /// The member at the end of `chain` (roles, from the step's own down) hands work on to
    /// `to`: allowed, and counted, or refused with why.
    pub fn delegate(&mut self, chain: &[usize], to: usize) -> Result<(), Refused> {
        if chain.len() as u32 > self.max_depth {
            return Err(Refused::Depth {
                max: self.max_depth,
            });
        }
        if chain.contains(&to) {
            return Err(Refused::Cycle { role: to });
        }
        self.step()
    }
}

#[cfg(test)]
mod tests;
