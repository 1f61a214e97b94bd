//! Where a task goes: the routing policies that send it down the [`LiveTree`] to a supervisor,
//! and the worker under that supervisor that runs it.
//!
//! A task descends from the top tier to a supervisor in one pass that looks only at the
//! children of the nodes on its path, using the aggregate load, capacity and specs the tree
//! keeps per subtree: O(depth × span) at worst, O(depth) for the sampling strategies. When that
//! pass dead-ends (a subtree's room belongs to other specs) a depth-first search finds any
//! supervisor with room. Nothing here does I/O.

use crate::{
    AgentId,
    tree::{LiveTree, Node, SpecMask},
};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Random probes before a sampling strategy falls back to a scan.
const PROBES: usize = 4;
/// Children the weighted strategy scores per level.
const WINDOW: usize = 16;

/// How a node picks among its children.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Power of two choices: sample two children, take the one with less load per capacity.
    #[default]
    LeastLoaded,
    RoundRobin,
    /// Lowest weighted score of load, latency and capability affinity. Every child is scored
    /// up to 16 of them; wider levels score a window of 16 that rotates from call to call.
    Weighted(Weights),
    Random,
}

/// Weights of the [`Strategy::Weighted`] score; a lower score wins.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Weights {
    /// Times the load per capacity of a subtree, 0..1.
    pub load: f32,
    /// Times the subtree's latency average relative to the slowest candidate, 0..1.
    pub latency: f32,
    /// Added when the subtree also holds agents of specs the task did not ask for.
    pub affinity: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            load: 1.0,
            latency: 0.5,
            affinity: 0.25,
        }
    }
}

impl LiveTree {
    /// Picks the supervisor a task needing one of `mask`'s specs goes to, or `None` when no
    /// subtree with such agents has room.
    pub fn route(
        &mut self,
        mask: SpecMask,
        strategy: Strategy,
        rng: &mut impl Rng,
    ) -> Option<AgentId> {
        self.descend(mask, strategy, rng)
            .or_else(|| self.first_fit(mask))
    }

    /// One pass down by `strategy`. It can reach a dead end when a subtree's room belongs to
    /// agents of other specs.
    fn descend(
        &mut self,
        mask: SpecMask,
        strategy: Strategy,
        rng: &mut impl Rng,
    ) -> Option<AgentId> {
        let supervisor_tier = (self.worker_tier() - 1) as u8;
        let mut cursor = self.root_cursor;
        let mut node = pick(&self.nodes, &self.roots, &mut cursor, mask, strategy, rng)?;
        self.root_cursor = cursor;
        while self.nodes[node as usize].tier < supervisor_tier {
            let n = &self.nodes[node as usize];
            let mut cursor = n.cursor as usize;
            let child = pick(&self.nodes, &n.children, &mut cursor, mask, strategy, rng)?;
            self.nodes[node as usize].cursor = cursor as u16;
            node = child;
        }
        Some(AgentId(node))
    }

    /// Depth-first search for any supervisor with agents of `mask` and room, skipping
    /// subtrees that are full or hold no such agents.
    fn first_fit(&self, mask: SpecMask) -> Option<AgentId> {
        let supervisor_tier = (self.worker_tier() - 1) as u8;
        let ok = |&n: &u32| eligible(&self.nodes[n as usize], mask);
        let mut stack: Vec<u32> = self.roots.iter().rev().copied().filter(ok).collect();
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n as usize];
            if node.tier == supervisor_tier {
                return Some(AgentId(n));
            }
            stack.extend(node.children.iter().rev().copied().filter(ok));
        }
        None
    }

    /// A child of `supervisor` of a spec in `mask` that can take another task, taking turns.
    /// A worker marked reduced ([`LiveTree::set_reduced`]: degraded) is taken only when no
    /// other child can, and `avoid` only when no other child, reduced or not, can: a retry
    /// prefers another agent of the same role over the one its last attempt failed on.
    /// Taking a reduced worker moves the cursor past it, so reduced workers take turns too;
    /// taking `avoid` leaves the cursor where it was.
    pub fn idle_worker(
        &mut self,
        supervisor: AgentId,
        mask: SpecMask,
        avoid: Option<AgentId>,
    ) -> Option<AgentId> {
        let sup = &self.nodes[supervisor.index()];
        let len = sup.children.len();
        let start = sup.cursor as usize;
        let mut reduced = None;
        let mut avoided = None;
        for i in 0..len {
            let slot = (start + i) % len;
            let child = sup.children[slot];
            let w = &self.nodes[child as usize];
            if w.load < w.capacity && mask.intersects(SpecMask::of(w.spec)) {
                if Some(AgentId(child)) == avoid {
                    avoided = Some(slot);
                    continue;
                }
                if w.is_reduced() {
                    reduced = reduced.or(Some(slot));
                    continue;
                }
                self.nodes[supervisor.index()].cursor = ((slot + 1) % len) as u16;
                return Some(AgentId(child));
            }
        }
        if let Some(slot) = reduced {
            let sup = &mut self.nodes[supervisor.index()];
            sup.cursor = ((slot + 1) % len) as u16;
            return Some(AgentId(sup.children[slot]));
        }
        avoided.map(|slot| AgentId(self.nodes[supervisor.index()].children[slot]))
    }
}

impl LiveTree {
    /// For a task marked hard: the worker with the best `score` (its reputation) among
    /// those in service with room for `mask`; among equals the one with the least load for
    /// its capacity, then the first in tree order. Workers marked reduced are taken only
    /// when no other has room. The walk enters only subtrees with room and stops once it has
    /// seen `bound` workers with room, so it costs at most `bound` workers and their
    /// ancestors: with more workers free than that, the best of the first `bound` in tree
    /// order wins.
    pub fn best_worker(
        &self,
        mask: SpecMask,
        bound: usize,
        score: impl Fn(AgentId) -> f64,
    ) -> Option<AgentId> {
        let worker_tier = self.worker_tier();
        // (not reduced, score, -share), compared in that order.
        let mut best: Option<((bool, f64, i64), AgentId)> = None;
        let mut seen = 0;
        let mut stack: Vec<AgentId> = self.roots().collect();
        stack.reverse();
        while let Some(agent) = stack.pop() {
            if seen >= bound {
                break;
            }
            if !eligible(&self.nodes[agent.index()], mask) {
                continue;
            }
            if self.tier(agent) < worker_tier {
                let first = stack.len();
                stack.extend(self.children(agent));
                stack[first..].reverse();
                continue;
            }
            if !mask.intersects(SpecMask::of(self.spec(agent)))
                || self.is_down(agent)
                || self.is_sidelined(agent)
            {
                continue;
            }
            seen += 1;
            let (load, capacity) = self.load(agent);
            let share = i64::from(load) * 1_000_000 / i64::from(capacity.max(1));
            let key = (!self.is_reduced(agent), score(agent), -share);
            let better = match &best {
                None => true,
                Some((b, _)) => key.partial_cmp(b) == Some(std::cmp::Ordering::Greater),
            };
            if better {
                best = Some((key, agent));
            }
        }
        best.map(|(_, agent)| agent)
    }
}

fn eligible(node: &Node, mask: SpecMask) -> bool {
    node.mask.intersects(mask) && node.load < node.capacity
}

/// `a` carries less load for its capacity than `b`.
fn lighter(a: &Node, b: &Node) -> bool {
    u64::from(a.load) * u64::from(b.capacity) <= u64::from(b.load) * u64::from(a.capacity)
}

fn pick(
    nodes: &[Node],
    candidates: &[u32],
    cursor: &mut usize,
    mask: SpecMask,
    strategy: Strategy,
    rng: &mut impl Rng,
) -> Option<u32> {
    let len = candidates.len();
    if len == 0 {
        return None;
    }
    let node = |i: usize| &nodes[candidates[i] as usize];
    match strategy {
        Strategy::RoundRobin => {
            let start = *cursor % len;
            let i = (0..len)
                .map(|k| (start + k) % len)
                .find(|&i| eligible(node(i), mask))?;
            *cursor = (i + 1) % len;
            Some(candidates[i])
        }
        Strategy::Random | Strategy::LeastLoaded => {
            let first = sample(candidates, nodes, mask, None, rng)?;
            if strategy == Strategy::Random || len == 1 {
                return Some(candidates[first]);
            }
            let second = sample(candidates, nodes, mask, Some(first), rng).unwrap_or(first);
            let best = if lighter(node(first), node(second)) {
                first
            } else {
                second
            };
            Some(candidates[best])
        }
        Strategy::Weighted(w) => {
            // Score the next `WINDOW` eligible children from the cursor: every child of a
            // normal span, and a rotating window of a wide top tier.
            let start = *cursor % len;
            let mut window = [0usize; WINDOW];
            let mut n = 0;
            for i in (0..len)
                .map(|k| (start + k) % len)
                .filter(|&i| eligible(node(i), mask))
            {
                window[n] = i;
                n += 1;
                if n == WINDOW {
                    break;
                }
            }
            let window = &window[..n];
            let slowest = window
                .iter()
                .map(|&i| node(i).latency_ema_us)
                .fold(0.0, f32::max);
            let score = |n: &Node| {
                let load = n.load as f32 / n.capacity.max(1) as f32;
                let latency = if slowest > 0.0 {
                    n.latency_ema_us / slowest
                } else {
                    0.0
                };
                let foreign = n.mask.0 & !mask.0 != 0;
                w.load * load + w.latency * latency + if foreign { w.affinity } else { 0.0 }
            };
            let (i, _) = window.iter().map(|&i| (i, score(node(i)))).fold(
                None,
                |best: Option<(usize, f32)>, (i, s)| match best {
                    Some((_, b)) if b <= s => best,
                    _ => Some((i, s)),
                },
            )?;
            *cursor = (i + 1) % len;
            Some(candidates[i])
        }
    }
}

/// Index of a uniformly chosen eligible candidate other than `exclude`: a few random probes,
/// then a scan from a random start, so a mostly-eligible level costs O(1) and a sparse one
/// stays correct.
fn sample(
    candidates: &[u32],
    nodes: &[Node],
    mask: SpecMask,
    exclude: Option<usize>,
    rng: &mut impl Rng,
) -> Option<usize> {
    let len = candidates.len();
    let ok = |i: usize| Some(i) != exclude && eligible(&nodes[candidates[i] as usize], mask);
    for _ in 0..PROBES {
        let i = rng.random_range(0..len);
        if ok(i) {
            return Some(i);
        }
    }
    let start = rng.random_range(0..len);
    (0..len).map(|k| (start + k) % len).find(|&i| ok(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hierarchy::{HierarchyOptions, Tiers},
        tree::{TreeOptions, tests::tree},
    };
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn least_loaded_prefers_lighter_subtrees() {
        let mut t = tree(12 * 12 * 12 * 2, 12, 100);
        assert_eq!(t.roots().len(), 2);
        // Load every supervisor below master 0 heavily.
        let heavy: Vec<AgentId> = t
            .subtree(AgentId(0))
            .into_iter()
            .filter(|a| t.tier(*a) == 2)
            .collect();
        for &s in &heavy {
            for _ in 0..90 {
                t.enqueue(s);
            }
        }
        let mut rng = SmallRng::seed_from_u64(7);
        let mut into_heavy = 0;
        for _ in 0..1_000 {
            let s = t
                .route(SpecMask::ALL, Strategy::LeastLoaded, &mut rng)
                .unwrap();
            if heavy.contains(&s) {
                into_heavy += 1;
            }
        }
        // Two choices among two masters always compare both.
        assert_eq!(
            into_heavy, 0,
            "{into_heavy} of 1000 tasks went to the loaded subtree"
        );
    }

    #[test]
    fn round_robin_visits_every_supervisor_in_turn() {
        let mut t = tree(144, 12, 4);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            seen.insert(
                t.route(SpecMask::ALL, Strategy::RoundRobin, &mut rng)
                    .unwrap(),
            );
        }
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn full_subtrees_are_never_chosen_and_a_full_tree_says_so() {
        let mut t = tree(24, 12, 2);
        let mut rng = SmallRng::seed_from_u64(3);
        // 24 workers + 2 supervisors × 2 queued = 28 slots.
        for _ in 0..28 {
            let s = t
                .route(SpecMask::ALL, Strategy::Random, &mut rng)
                .expect("room left");
            t.enqueue(s);
        }
        assert_eq!(
            t.route(SpecMask::ALL, Strategy::LeastLoaded, &mut rng),
            None
        );
        let worker = AgentId(t.len() as u32 - 1);
        t.start(worker);
        t.finish(worker, Some(10.0));
        assert!(
            t.route(
                SpecMask::ALL,
                Strategy::Weighted(Weights::default()),
                &mut rng
            )
            .is_some()
        );
    }

    #[test]
    fn agents_out_of_service_are_passed_by_and_come_back() {
        let mut t = tree(24, 12, 2);
        let mut rng = SmallRng::seed_from_u64(3);
        let sups = t.agents_in_tier(t.worker_tier() - 1);
        let (sup_a, sup_b) = (sups[0], sups[1]);
        assert_eq!(t.load(sup_a).1, 14);
        // A worker out of service: never idle, its room withdrawn up the tree.
        let worker = t.children(sup_a).next().unwrap();
        assert!(t.set_down(worker, true));
        assert!(!t.set_down(worker, true), "already down");
        assert!(t.is_down(worker));
        assert_eq!(t.load(sup_a).1, 13);
        let installed = t.installed_capacity();
        assert_eq!(installed, 24 + 2 * 2, "what comes back counts");
        for _ in 0..11 {
            let w = t.idle_worker(sup_a, SpecMask::ALL, None).unwrap();
            assert_ne!(w, worker);
            t.start(w);
        }
        assert_eq!(t.idle_worker(sup_a, SpecMask::ALL, None), None);
        // A whole subtree out: every task goes to the other supervisor.
        t.set_down(sup_a, true);
        for w in t.children(sup_a).collect::<Vec<_>>() {
            t.set_down(w, true);
        }
        assert_eq!(t.load(sup_a).1, 0);
        for _ in 0..50 {
            let s = t.route(SpecMask::ALL, Strategy::LeastLoaded, &mut rng);
            assert_eq!(s, Some(sup_b));
        }
        assert_eq!(t.installed_capacity(), installed);
        // Workers added under a supervisor out of service come up with it.
        let late = t.add_worker(0, 1);
        if t.parent(late) == Some(sup_a) {
            assert!(t.is_down(late));
        }
        t.set_down(sup_a, false);
        for w in t.children(sup_a).collect::<Vec<_>>() {
            t.set_down(w, false);
        }
        assert!(!t.is_down(worker));
        let expected = 2 + t.children(sup_a).len() as u32;
        assert_eq!(t.load(sup_a).1, expected);
    }

    #[test]
    fn a_supervisor_without_workers_in_service_takes_no_tasks() {
        let mut t = tree(24, 12, 2);
        let mut rng = SmallRng::seed_from_u64(3);
        let sups = t.agents_in_tier(t.worker_tier() - 1);
        let workers: Vec<AgentId> = t.children(sups[0]).collect();
        for &w in &workers[1..] {
            t.set_down(w, true);
        }
        assert!(!t.is_vacant(sups[0]));
        assert_eq!(t.load(sups[0]).1, 2 + 1, "its queue and one worker");
        t.set_down(workers[0], true);
        assert!(t.is_vacant(sups[0]) && !t.is_down(sups[0]));
        assert_eq!(t.load(sups[0]).1, 0);
        for _ in 0..20 {
            let s = t
                .route(SpecMask::ALL, Strategy::RoundRobin, &mut rng)
                .unwrap();
            assert_eq!(s, sups[1]);
        }
        t.set_down(workers[3], false);
        assert!(!t.is_vacant(sups[0]));
        assert_eq!(t.load(sups[0]).1, 2 + 1);
        assert_eq!(t.installed_capacity(), 28);
    }

    #[test]
    fn a_hard_task_goes_to_the_best_scored_worker_with_room() {
        let mut t = tree(48, 12, 4);
        let workers: Vec<AgentId> = (0..t.len() as u32)
            .map(AgentId)
            .filter(|&a| t.tier(a) == t.worker_tier())
            .collect();
        assert_eq!(workers.len(), 48);
        let star = workers[30];
        let second = workers[5];
        let score = |a: AgentId| {
            if a == star {
                0.9
            } else if a == second {
                0.8
            } else {
                0.5
            }
        };
        assert_eq!(t.best_worker(SpecMask::ALL, 1_000, score), Some(star));
        // Busy, the star gives way to the next best; reduced, it is taken last.
        t.enqueue(t.parent(star).unwrap());
        t.start(star);
        assert_eq!(t.best_worker(SpecMask::ALL, 1_000, score), Some(second));
        t.finish(star, None);
        t.set_reduced(star, true);
        assert_eq!(t.best_worker(SpecMask::ALL, 1_000, score), Some(second));
        t.set_reduced(star, false);
        // The walk is bounded: within the first 10 workers, the second is the best.
        assert_eq!(t.best_worker(SpecMask::ALL, 10, score), Some(second));
        // Among equals, the first in tree order; no worker of the mask, none.
        assert_eq!(
            t.best_worker(SpecMask::ALL, 1_000, |_| 0.5),
            Some(workers[0])
        );
        assert_eq!(t.best_worker(SpecMask::of(3), 1_000, score), None);
    }

    #[test]
    fn routing_honours_specs() {
        let hierarchy = HierarchyOptions {
            workers: 48,
            span: 12,
            tiers: Tiers::default(),
        };
        let mut t = LiveTree::new(&TreeOptions {
            hierarchy,
            queue_capacity: 4,
        })
        .unwrap();
        t.add_workers(36, 0, 1);
        let first_coder = t.add_workers(12, 1, 1)[0];
        let coder_sup = t.parent(first_coder).unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        for strategy in [
            Strategy::LeastLoaded,
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::Weighted(Weights::default()),
        ] {
            for _ in 0..20 {
                assert_eq!(
                    t.route(SpecMask::of(1), strategy, &mut rng),
                    Some(coder_sup)
                );
            }
        }
        let w = t.idle_worker(coder_sup, SpecMask::of(1), None).unwrap();
        assert_eq!(t.spec(w), 1);
        assert_eq!(t.idle_worker(coder_sup, SpecMask::of(0), None), None);
        // Another agent is preferred to the one to avoid, which is still taken if alone.
        let other = t.idle_worker(coder_sup, SpecMask::of(1), Some(w)).unwrap();
        assert_ne!(other, w);
        for _ in 0..11 {
            let busy = t.idle_worker(coder_sup, SpecMask::of(1), Some(w)).unwrap();
            if busy == w {
                break;
            }
            t.enqueue(coder_sup);
            t.start(busy);
        }
        assert_eq!(t.idle_worker(coder_sup, SpecMask::of(1), Some(w)), Some(w));
    }

    #[test]
    fn a_reduced_worker_is_taken_only_when_no_other_can() {
        let mut t = tree(12, 12, 2);
        let sup = t.agents_in_tier(t.worker_tier() - 1)[0];
        let workers: Vec<AgentId> = t.children(sup).collect();
        for &w in &workers[..3] {
            assert!(t.set_reduced(w, true));
        }
        // The healthy ones in turn from the cursor, then the reduced ones in turn.
        let mut taken = Vec::new();
        while let Some(w) = t.idle_worker(sup, SpecMask::ALL, None) {
            t.enqueue(sup);
            t.start(w);
            taken.push(w);
        }
        let mut expected = workers[3..].to_vec();
        expected.extend(&workers[..3]);
        assert_eq!(taken, expected);
        // One reduced worker free again and one healthy: the healthy one first.
        for w in [workers[1], workers[7]] {
            t.finish(w, None);
        }
        assert_eq!(t.idle_worker(sup, SpecMask::ALL, None), Some(workers[7]));
        t.start(workers[7]);
        assert_eq!(t.idle_worker(sup, SpecMask::ALL, None), Some(workers[1]));
        // The cursor moved past the reduced one taken. Cleared, it comes before a reduced
        // one earlier in turn.
        t.enqueue(sup);
        t.start(workers[1]);
        t.set_reduced(workers[1], false);
        for w in [workers[0], workers[1]] {
            t.finish(w, None);
        }
        assert_eq!(t.idle_worker(sup, SpecMask::ALL, None), Some(workers[1]));
    }

    #[test]
    fn the_worker_to_avoid_comes_after_reduced_ones() {
        let mut t = tree(12, 12, 2);
        let sup = t.agents_in_tier(t.worker_tier() - 1)[0];
        let workers: Vec<AgentId> = t.children(sup).collect();
        let run = |t: &mut LiveTree, w: AgentId| {
            t.enqueue(sup);
            t.start(w);
        };
        for &w in &workers[3..] {
            run(&mut t, w);
        }
        let (healthy, reduced, avoid) = (workers[0], workers[1], workers[2]);
        t.set_reduced(reduced, true);
        let pick = |t: &mut LiveTree| t.idle_worker(sup, SpecMask::ALL, Some(avoid));
        assert_eq!(pick(&mut t), Some(healthy));
        run(&mut t, healthy);
        assert_eq!(pick(&mut t), Some(reduced));
        run(&mut t, reduced);
        assert_eq!(pick(&mut t), Some(avoid));
        // Reduced and avoided at once: still the last resort, after other reduced ones.
        t.set_reduced(avoid, true);
        t.finish(reduced, None);
        assert_eq!(pick(&mut t), Some(reduced));
        run(&mut t, reduced);
        assert_eq!(pick(&mut t), Some(avoid));
    }

    #[test]
    fn sidelined_and_probation_workers_get_no_more_than_their_room() {
        let mut t = crate::tree::tests::planned(24, 12, 2);
        t.add_workers(24, 0, 4);
        let mut rng = SmallRng::seed_from_u64(4);
        let sups = t.agents_in_tier(t.worker_tier() - 1);
        let workers: Vec<AgentId> = t.children(sups[0]).collect();
        for &w in &workers {
            t.set_sidelined(w, true);
        }
        for _ in 0..20 {
            assert_eq!(
                t.route(SpecMask::ALL, Strategy::LeastLoaded, &mut rng),
                Some(sups[1])
            );
        }
        assert_eq!(t.idle_worker(sups[0], SpecMask::ALL, None), None);
        // Back on probation: one attempt at a time.
        t.set_probation(workers[4], true);
        t.set_sidelined(workers[4], false);
        assert_eq!(t.load(sups[0]).1, 2 + 1);
        assert_eq!(
            t.idle_worker(sups[0], SpecMask::ALL, None),
            Some(workers[4])
        );
        t.enqueue(sups[0]);
        t.start(workers[4]);
        assert_eq!(t.idle_worker(sups[0], SpecMask::ALL, None), None);
        t.finish(workers[4], None);
        t.set_probation(workers[4], false);
        assert_eq!(t.load(sups[0]).1, 2 + 4);
    }

    #[test]
    fn a_dead_end_falls_back_to_any_subtree_with_room() {
        // Span 2: master 0 over a spec-0 supervisor and a mixed one, master 1 over a spec-0
        // supervisor and a mixed one. With master 0's mixed supervisor full, master 0 still
        // looks open for spec 1 (its room is spec 0's), so the first descent dead-ends there.
        let tiers = Tiers::Named(vec!["m".into(), "s".into(), "w".into()]);
        let hierarchy = HierarchyOptions {
            workers: 8,
            span: 2,
            tiers,
        };
        let mut t = LiveTree::new(&TreeOptions {
            hierarchy,
            queue_capacity: 1,
        })
        .unwrap();
        for spec in [0, 0, 1, 0, 0, 0, 1, 0] {
            t.add_worker(spec, 1);
        }
        let (full, open) = (AgentId(3), AgentId(5));
        assert_eq!(t.mask(full), SpecMask(0b11));
        let (load, capacity) = t.load(full);
        for _ in load..capacity {
            t.enqueue(full);
        }
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..4 {
            assert_eq!(
                t.route(SpecMask::of(1), Strategy::RoundRobin, &mut rng),
                Some(open)
            );
        }
        let (load, capacity) = t.load(open);
        for _ in load..capacity {
            t.enqueue(open);
        }
        assert_eq!(
            t.route(SpecMask::of(1), Strategy::LeastLoaded, &mut rng),
            None
        );
    }

    #[test]
    fn weighted_prefers_faster_subtrees() {
        let mut t = tree(12 * 12 * 12 * 2, 12, 10);
        let slow_worker = t
            .subtree(AgentId(0))
            .into_iter()
            .find(|a| t.tier(*a) == 3)
            .unwrap();
        let fast_worker = t
            .subtree(AgentId(1))
            .into_iter()
            .find(|a| t.tier(*a) == 3)
            .unwrap();
        for (w, us) in [(slow_worker, 5_000.0), (fast_worker, 10.0)] {
            t.enqueue(t.parent(w).unwrap());
            t.start(w);
            t.finish(w, Some(us));
        }
        let mut rng = SmallRng::seed_from_u64(5);
        let s = t
            .route(
                SpecMask::ALL,
                Strategy::Weighted(Weights::default()),
                &mut rng,
            )
            .unwrap();
        assert!(
            t.ancestors(s).any(|a| a == AgentId(1)),
            "went to {s}, not under the fast master"
        );
    }
}
