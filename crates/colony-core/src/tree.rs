//! The live hierarchy: every agent of every tier, its parent and children, and the aggregate
//! load and capacity of every subtree.
//!
//! Every node keeps the load (tasks queued or running) and capacity of its subtree and the set
//! of agent specs found below it, so that [`crate::routing`] can send a task from the top tier
//! to a supervisor looking only at the children of the nodes on its path. This module keeps
//! those aggregates true as workers join, tasks come and go, agents leave and return service,
//! and workers whose circuit breaker is open, on probation or degraded leave rotation, take
//! one task at a time or are passed over; where a task goes is routing's business. Nothing
//! here does I/O: the runtime owns a [`LiveTree`] and tells it what happened.

use crate::{
    AgentId,
    hierarchy::{Error, HierarchyOptions, Plan},
};
use std::{collections::VecDeque, sync::Arc};

/// Most distinct agent specs a tree routes between: a spec set is a 64-bit mask.
pub const MAX_SPECS: usize = 64;

const NO_PARENT: u32 = u32::MAX;
/// Weight of the newest sample in a latency moving average.
const EMA_ALPHA: f32 = 0.2;

/// A set of agent specs, one bit per spec index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpecMask(pub u64);

impl SpecMask {
    pub const ALL: SpecMask = SpecMask(u64::MAX);

    pub fn of(spec: u8) -> Self {
        SpecMask(1 << spec)
    }

    pub fn intersects(self, other: SpecMask) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Bit of [`Node::own`] set while the node is out of service.
const DOWN: u32 = 1 << 31;
/// Bit of a supervisor's [`Node::own`] set while none of its workers is in rotation (each is
/// down or sidelined): its queue's room is withdrawn too, since nobody would serve it.
const VACANT: u32 = 1 << 30;
/// Bit of a worker's [`Node::own`] set while it is out of rotation though in service (its
/// circuit breaker is open): its room is withdrawn as a down worker's is, uncounted as down.
const SIDELINED: u32 = 1 << 29;
/// Bit of a worker's [`Node::own`] set while it is on probation: its room is at most 1.
const PROBATION: u32 = 1 << 28;
/// Bit of a worker's [`Node::own`] set while it is degraded: an idle-worker search takes it
/// only when no other worker can.
const REDUCED: u32 = 1 << 27;
/// Flags that withdraw all of a node's room.
const WITHDRAWING: u32 = DOWN | VACANT | SIDELINED;
/// The bits of [`Node::own`] below the flags: the room itself.
const ROOM: u32 = REDUCED - 1;

/// Room a node with `own` adds to its subtree now.
fn room(own: u32) -> u32 {
    if own & WITHDRAWING != 0 {
        0
    } else if own & PROBATION != 0 {
        (own & ROOM).min(1)
    } else {
        own & ROOM
    }
}

/// One agent's place in the tree. The fields [`crate::routing`] reads on its hot path are
/// crate-visible so that a descent costs plain field reads, as it did when both lived in one
/// module; only this module changes them, except the round-robin cursors routing advances.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    parent: u32,
    pub(crate) tier: u8,
    /// For workers, the index of their spec.
    pub(crate) spec: u8,
    /// Where the next round-robin (or weighted window, or idle-worker search) among the
    /// children starts.
    pub(crate) cursor: u16,
    /// Specs present in this subtree.
    pub(crate) mask: SpecMask,
    /// Tasks queued or running in this subtree.
    pub(crate) load: u32,
    /// Tasks this subtree holds when full: workers' concurrency plus supervisors' queues.
    pub(crate) capacity: u32,
    /// What this node itself adds to `capacity` (a worker's concurrency, a supervisor's
    /// queue) in the low bits ([`ROOM`]), and the flags that withdraw or cap it ([`DOWN`],
    /// [`VACANT`], [`SIDELINED`], [`PROBATION`]) or rank the worker last ([`REDUCED`]).
    own: u32,
    pub(crate) latency_ema_us: f32,
    pub(crate) children: Vec<u32>,
}

impl Node {
    /// Whether an idle-worker search takes this worker only when no other can.
    #[inline]
    pub(crate) fn is_reduced(&self) -> bool {
        self.own & REDUCED != 0
    }
}

/// Size and shape of a [`LiveTree`].
#[derive(Clone, Debug)]
pub struct TreeOptions {
    pub hierarchy: HierarchyOptions,
    /// Tasks one supervisor queues beyond what its workers run.
    pub queue_capacity: u32,
}

/// The live hierarchy: the agents of every tier, their parents and children, and the load and
/// capacity of every subtree.
#[derive(Debug)]
pub struct LiveTree {
    /// Every agent, indexed by its id.
    pub(crate) nodes: Vec<Node>,
    tier_names: Vec<Arc<str>>,
    tier_sizes: Vec<u32>,
    /// The agents of the top tier, where every descent starts.
    pub(crate) roots: Vec<u32>,
    /// Round-robin cursor among the roots, which have no parent node to keep it.
    pub(crate) root_cursor: usize,
    span: u32,
    queue_capacity: u32,
    plan: Plan,
    /// Planned workers not yet added.
    planned_left: u64,
    /// Room withdrawn from the tree by agents out of service.
    withdrawn: u64,
    /// Per tier, agents out of service (see [`LiveTree::set_down`]).
    down: Vec<u64>,
    /// Per managing tier, nodes with room for another child, for growth past the plan.
    open: Vec<VecDeque<u32>>,
    /// Per managing tier, whether `open` has been filled from the plan's nodes.
    open_known: Vec<bool>,
}

impl LiveTree {
    /// The managing tiers of the plan for `options`, with no workers yet: add them with
    /// [`LiveTree::add_worker`] (they take their planned places) or all at once with
    /// [`LiveTree::add_workers`].
    pub fn new(options: &TreeOptions) -> Result<Self, Error> {
        assert!(
            options.queue_capacity <= ROOM,
            "queue capacity {} exceeds {ROOM}",
            options.queue_capacity
        );
        let plan = Plan::new(&options.hierarchy)?;
        let tiers = plan.tiers();
        let worker_tier = tiers.len() - 1;
        let managers = plan.total() - plan.workers();
        let mut nodes = Vec::with_capacity(plan.total() as usize);
        for (t, tier) in tiers[..worker_tier].iter().enumerate() {
            for raw in tier.first..tier.first + tier.count {
                let id = AgentId(raw as u32);
                let children = plan.children(id);
                let children = if t + 1 < worker_tier {
                    children.collect()
                } else {
                    Vec::new()
                };
                nodes.push(Node {
                    parent: plan.parent(id).map_or(NO_PARENT, |p| p.0),
                    tier: t as u8,
                    spec: 0,
                    cursor: 0,
                    mask: SpecMask::default(),
                    load: 0,
                    capacity: if t + 1 == worker_tier {
                        options.queue_capacity
                    } else {
                        0
                    },
                    own: if t + 1 == worker_tier {
                        options.queue_capacity
                    } else {
                        0
                    },
                    latency_ema_us: 0.0,
                    children,
                });
            }
        }
        debug_assert_eq!(nodes.len() as u64, managers);
        let mut tree = Self {
            tier_names: tiers.iter().map(|t| Arc::from(t.name.as_str())).collect(),
            tier_sizes: tiers[..worker_tier]
                .iter()
                .map(|t| t.count as u32)
                .chain([0])
                .collect(),
            roots: (0..tiers[0].count as u32).collect(),
            root_cursor: 0,
            span: plan.span(),
            queue_capacity: options.queue_capacity,
            planned_left: plan.workers(),
            withdrawn: 0,
            down: vec![0; tiers.len()],
            open: vec![VecDeque::new(); worker_tier],
            open_known: vec![false; worker_tier],
            nodes,
            plan,
        };
        // Supervisors' queue capacity counts toward every ancestor.
        for sup in tree.tier_range(worker_tier - 1) {
            let capacity = tree.nodes[sup as usize].capacity;
            tree.for_ancestors(sup, |n| n.capacity += capacity);
        }
        Ok(tree)
    }

    /// Adds `count` workers of one spec and returns their ids. Ids increase but need not be
    /// consecutive: growth past the plan creates managers in between.
    pub fn add_workers(&mut self, count: u32, spec: u8, concurrency: u32) -> Vec<AgentId> {
        self.nodes.reserve(count as usize);
        (0..count)
            .map(|_| self.add_worker(spec, concurrency))
            .collect()
    }

    /// Adds one worker: in its planned place while the plan has room, then under the
    /// supervisors that have room, taking turns, growing new managers when every one is full.
    pub fn add_worker(&mut self, spec: u8, concurrency: u32) -> AgentId {
        assert!(
            (spec as usize) < MAX_SPECS,
            "spec index {spec} exceeds {MAX_SPECS}"
        );
        assert!(
            concurrency <= ROOM,
            "concurrency {concurrency} exceeds {ROOM}"
        );
        let worker_tier = self.worker_tier();
        let parent = if self.planned_left > 0 {
            self.planned_left -= 1;
            let next = AgentId(self.nodes.len() as u32);
            self.plan
                .parent(next)
                .expect("planned workers have parents")
                .0
        } else {
            self.open_slot(worker_tier - 1)
        };
        // Growth may have added managers: the worker's id comes after them.
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            parent,
            tier: worker_tier as u8,
            spec,
            cursor: 0,
            mask: SpecMask::of(spec),
            load: 0,
            capacity: concurrency,
            own: concurrency,
            latency_ema_us: 0.0,
            children: Vec::new(),
        });
        self.nodes[parent as usize].children.push(id);
        self.tier_sizes[worker_tier] += 1;
        self.for_ancestors(id, |n| {
            n.capacity += concurrency;
            n.mask.0 |= 1 << spec;
        });
        // A supervisor out of service brings its new workers up when it comes back.
        if self.is_down(AgentId(parent)) {
            self.set_down(AgentId(id), true);
        } else {
            self.set_flag(AgentId(parent), VACANT, false);
        }
        AgentId(id)
    }

    /// Removes agents from the end of the tree while the last one may go: a worker with
    /// nothing counted in it that `gone` says has left for good (a retired worker whose
    /// attempts have ended; `gone` hears its spec), or a manager grown past the plan with no
    /// children left that `gone` accepts (it hears `None`). Their room and counts leave the tree's books, and a planned worker's
    /// place is planned again: the next worker added takes it. Ids are reused from the new
    /// end. The nodes' memory is given back once the tree is under half of what it holds.
    /// Returns the ids removed.
    pub fn trim_tail(
        &mut self,
        mut gone: impl FnMut(AgentId, Option<u8>) -> bool,
    ) -> std::ops::Range<u32> {
        let end = self.nodes.len() as u32;
        let worker_tier = self.worker_tier();
        let planned_managers = self.plan.total() - self.plan.workers();
        while let Some(last) = self.nodes.last() {
            let id = (self.nodes.len() - 1) as u32;
            let tier = last.tier as usize;
            let removable = last.load == 0
                && last.children.is_empty()
                && (tier == worker_tier || u64::from(id) >= self.plan.total())
                && u64::from(id) >= planned_managers;
            let spec = (tier == worker_tier).then_some(last.spec);
            if !removable || !gone(AgentId(id), spec) {
                break;
            }
            self.pop_node();
        }
        let start = self.nodes.len() as u32;
        if start < end {
            // Nodes with room for growth are listed again when growth next needs them.
            for open in &mut self.open {
                open.clear();
            }
            self.open_known.iter_mut().for_each(|k| *k = false);
            if self.nodes.len() < self.nodes.capacity() / 2 {
                self.nodes.shrink_to_fit();
            }
        }
        start..end
    }

    /// Removes the last node, which has nothing counted in it and no children.
    fn pop_node(&mut self) {
        let id = (self.nodes.len() - 1) as u32;
        let agent = AgentId(id);
        // Out of its ancestors' specs, and its flags off: room it withdrew returns to the
        // books, to leave them whole.
        self.set_retired(agent, true);
        for flag in [DOWN, VACANT, SIDELINED, PROBATION, REDUCED] {
            self.set_flag(agent, flag, false);
        }
        let node = &self.nodes[id as usize];
        let (capacity, parent, tier) = (node.capacity, node.parent, node.tier as usize);
        self.for_ancestors(id, |n| n.capacity -= capacity);
        self.tier_sizes[tier] -= 1;
        if tier == self.worker_tier() && u64::from(id) < self.plan.total() {
            self.planned_left += 1;
        }
        if parent == NO_PARENT {
            self.roots.retain(|&r| r != id);
            self.root_cursor = 0;
        } else {
            let children = &mut self.nodes[parent as usize].children;
            if let Some(i) = children.iter().rposition(|&c| c == id) {
                children.remove(i);
            }
        }
        self.nodes.pop();
        // A supervisor left with no worker in rotation has no room.
        if parent != NO_PARENT && tier == self.worker_tier() {
            let sup = AgentId(parent);
            let vacant = self
                .children(sup)
                .all(|w| self.nodes[w.index()].own & (DOWN | SIDELINED) != 0);
            self.set_flag(sup, VACANT, vacant);
        }
    }

    /// A node of `tier` that can take one more child, created (with its own parent) if needed.
    fn open_slot(&mut self, tier: usize) -> u32 {
        if !self.open_known[tier] {
            // Once, when the plan is used up; from then on the list is kept up to date.
            let span = self.span as usize;
            let open: VecDeque<u32> = self
                .tier_members(tier)
                .filter(|&n| self.nodes[n as usize].children.len() < span)
                .collect();
            self.open[tier] = open;
            self.open_known[tier] = true;
        }
        if let Some(node) = self.open[tier].pop_front() {
            if self.nodes[node as usize].children.len() + 1 < self.span as usize {
                self.open[tier].push_back(node);
            }
            return node;
        }
        let parent = if tier == 0 {
            NO_PARENT
        } else {
            self.open_slot(tier - 1)
        };
        let id = self.nodes.len() as u32;
        let is_supervisor = tier + 1 == self.worker_tier();
        let capacity = if is_supervisor {
            self.queue_capacity
        } else {
            0
        };
        self.nodes.push(Node {
            parent,
            tier: tier as u8,
            spec: 0,
            cursor: 0,
            mask: SpecMask::default(),
            load: 0,
            capacity,
            own: capacity,
            latency_ema_us: 0.0,
            children: Vec::new(),
        });
        self.tier_sizes[tier] += 1;
        if parent == NO_PARENT {
            self.roots.push(id);
        } else {
            self.nodes[parent as usize].children.push(id);
            self.for_ancestors(id, |n| n.capacity += capacity);
        }
        self.open[tier].push_back(id);
        id
    }

    /// The agents of tier `tier`. O(agents): for periodic passes, not per task.
    pub fn agents_in_tier(&self, tier: usize) -> Vec<AgentId> {
        self.tier_members(tier).map(AgentId).collect()
    }

    fn tier_members(&self, tier: usize) -> impl Iterator<Item = u32> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| n.tier as usize == tier)
            .map(|(i, _)| i as u32)
    }

    fn tier_range(&self, tier: usize) -> std::ops::Range<u32> {
        let t = &self.plan.tiers()[tier];
        t.first as u32..(t.first + t.count) as u32
    }

    fn for_ancestors(&mut self, node: u32, mut f: impl FnMut(&mut Node)) {
        let mut at = self.nodes[node as usize].parent;
        while at != NO_PARENT {
            let n = &mut self.nodes[at as usize];
            f(n);
            at = n.parent;
        }
    }

    /// Counts a task routed to `supervisor` in it and every ancestor.
    pub fn enqueue(&mut self, supervisor: AgentId) {
        self.nodes[supervisor.index()].load += 1;
        self.for_ancestors(supervisor.0, |n| n.load += 1);
    }

    /// A task counted in `worker`'s supervisor starts on `worker`.
    pub fn start(&mut self, worker: AgentId) {
        self.nodes[worker.index()].load += 1;
    }

    /// A task on `worker` ended: it leaves the load of the worker and every ancestor.
    /// `latency_us` feeds the moving averages used by [`Strategy::Weighted`](crate::routing::Strategy::Weighted).
    pub fn finish(&mut self, worker: AgentId, latency_us: Option<f32>) {
        let update = |n: &mut Node| {
            n.load -= 1;
            if let Some(x) = latency_us {
                n.latency_ema_us = if n.latency_ema_us == 0.0 {
                    x
                } else {
                    n.latency_ema_us + EMA_ALPHA * (x - n.latency_ema_us)
                };
            }
        };
        update(&mut self.nodes[worker.index()]);
        self.for_ancestors(worker.0, update);
    }

    /// Takes `agent` out of service (`down`) or puts it back. Out of service, what it adds to
    /// its subtree's room (a worker's concurrency, a supervisor's queue) is withdrawn, so
    /// routing and idle-worker searches pass it by; tasks it already holds keep their load.
    /// Returns whether anything changed. Taking a whole subtree out is one call per agent.
    pub fn set_down(&mut self, agent: AgentId, down: bool) -> bool {
        if !self.set_flag(agent, DOWN, down) {
            return false;
        }
        self.update_vacancy(agent);
        true
    }

    /// Takes worker `worker` out of rotation (`sidelined`: its circuit breaker is open) or
    /// puts it back, without counting it out of service: its room is withdrawn as a down
    /// worker's is (so a supervisor whose workers are all down or sidelined is vacant), and
    /// comes back only once it is neither. Independent of [`LiveTree::set_down`] and
    /// [`LiveTree::set_retired`]. Returns whether anything changed.
    pub fn set_sidelined(&mut self, worker: AgentId, sidelined: bool) -> bool {
        if !self.set_flag(worker, SIDELINED, sidelined) {
            return false;
        }
        self.update_vacancy(worker);
        true
    }

    /// Whether `worker` is out of rotation (see [`LiveTree::set_sidelined`]).
    pub fn is_sidelined(&self, worker: AgentId) -> bool {
        self.nodes[worker.index()].own & SIDELINED != 0
    }

    /// Caps worker `worker`'s room at one task (`probation`: its circuit breaker lets one
    /// attempt through at a time) or lifts the cap. The room given up counts as withdrawn,
    /// so [`LiveTree::installed_capacity`] stays. Returns whether anything changed.
    pub fn set_probation(&mut self, worker: AgentId, probation: bool) -> bool {
        self.set_flag(worker, PROBATION, probation)
    }

    /// Whether `worker`'s room is capped at one task (see [`LiveTree::set_probation`]).
    pub fn is_probation(&self, worker: AgentId) -> bool {
        self.nodes[worker.index()].own & PROBATION != 0
    }

    /// Marks worker `worker` degraded (`reduced`) or not: an idle-worker search
    /// ([`LiveTree::idle_worker`]) takes it only when no other worker with room can take the
    /// task. Its room and its supervisor's are unchanged. Returns whether anything changed.
    pub fn set_reduced(&mut self, worker: AgentId, reduced: bool) -> bool {
        self.set_flag(worker, REDUCED, reduced)
    }

    /// Whether `worker` is passed over while others can work (see [`LiveTree::set_reduced`]).
    pub fn is_reduced(&self, worker: AgentId) -> bool {
        self.nodes[worker.index()].is_reduced()
    }

    /// After worker `agent` left or rejoined rotation, its supervisor is vacant exactly when
    /// none of its workers is in rotation.
    fn update_vacancy(&mut self, agent: AgentId) {
        if self.nodes[agent.index()].tier as usize == self.worker_tier()
            && let Some(sup) = self.parent(agent)
        {
            let vacant = self
                .children(sup)
                .all(|w| self.nodes[w.index()].own & (DOWN | SIDELINED) != 0);
            self.set_flag(sup, VACANT, vacant);
        }
    }

    /// Sets or clears `flag` of `agent`, withdrawing or restoring room as that changes what
    /// the agent adds to its subtree.
    fn set_flag(&mut self, agent: AgentId, flag: u32, on: bool) -> bool {
        let node = &mut self.nodes[agent.index()];
        if (node.own & flag != 0) == on {
            return false;
        }
        let was = room(node.own);
        node.own ^= flag;
        if flag == DOWN
            && let Some(n) = self.down.get_mut(node.tier as usize)
        {
            if on {
                *n += 1;
            } else {
                *n -= 1;
            }
        }
        let is = room(node.own);
        if is < was {
            let cut = was - is;
            node.capacity -= cut;
            self.withdrawn += u64::from(cut);
            self.for_ancestors(agent.0, |n| n.capacity -= cut);
        } else if is > was {
            let back = is - was;
            node.capacity += back;
            self.withdrawn -= u64::from(back);
            self.for_ancestors(agent.0, |n| n.capacity += back);
        }
        true
    }

    /// Takes worker `agent`'s spec out of its ancestors' masks (`retired`), or puts it back:
    /// a worker retired from its pool must not draw tasks of its spec to a supervisor that
    /// has no other worker of it. Out of service for a restart, a worker stays in the masks:
    /// its tasks wait for it. Costs a pass over the children of each ancestor.
    pub fn set_retired(&mut self, agent: AgentId, retired: bool) {
        let node = &mut self.nodes[agent.index()];
        node.mask = if retired {
            SpecMask::default()
        } else {
            SpecMask::of(node.spec)
        };
        let mut at = node.parent;
        while at != NO_PARENT {
            let children = &self.nodes[at as usize].children;
            let mask = children
                .iter()
                .fold(0u64, |m, &c| m | self.nodes[c as usize].mask.0);
            let n = &mut self.nodes[at as usize];
            n.mask = SpecMask(mask);
            at = n.parent;
        }
    }

    /// Agents of `tier` out of service now (see [`LiveTree::set_down`]), counted as they go
    /// down and come back.
    pub fn down_in_tier(&self, tier: usize) -> u64 {
        self.down.get(tier).copied().unwrap_or(0)
    }

    /// Whether `agent` is out of service (see [`LiveTree::set_down`]).
    pub fn is_down(&self, agent: AgentId) -> bool {
        self.nodes[agent.index()].own & DOWN != 0
    }

    /// Whether supervisor `agent` has no worker in rotation (each is down or sidelined), and
    /// so no room for tasks.
    pub fn is_vacant(&self, agent: AgentId) -> bool {
        self.nodes[agent.index()].own & VACANT != 0
    }

    /// Tasks one supervisor queues beyond what its workers run.
    pub fn queue_capacity(&self) -> u32 {
        self.queue_capacity
    }

    /// Tasks the tree holds at once with every agent in service.
    pub fn installed_capacity(&self) -> u64 {
        self.roots
            .iter()
            .map(|&r| u64::from(self.nodes[r as usize].capacity))
            .sum::<u64>()
            + self.withdrawn
    }

    /// A task counted in `supervisor` left it without running (cancelled, or moved away).
    pub fn dequeue(&mut self, supervisor: AgentId) {
        self.nodes[supervisor.index()].load -= 1;
        self.for_ancestors(supervisor.0, |n| n.load -= 1);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn worker_tier(&self) -> usize {
        self.tier_names.len() - 1
    }

    pub fn tier_names(&self) -> &[Arc<str>] {
        &self.tier_names
    }

    /// Number of agents in each tier, top down.
    pub fn tier_sizes(&self) -> &[u32] {
        &self.tier_sizes
    }

    pub fn contains(&self, agent: AgentId) -> bool {
        agent.index() < self.nodes.len()
    }

    pub fn tier(&self, agent: AgentId) -> usize {
        self.nodes[agent.index()].tier as usize
    }

    pub fn parent(&self, agent: AgentId) -> Option<AgentId> {
        let p = self.nodes[agent.index()].parent;
        (p != NO_PARENT).then_some(AgentId(p))
    }

    pub fn children(&self, agent: AgentId) -> impl ExactSizeIterator<Item = AgentId> + '_ {
        self.nodes[agent.index()]
            .children
            .iter()
            .map(|&c| AgentId(c))
    }

    pub fn ancestors(&self, agent: AgentId) -> impl Iterator<Item = AgentId> + '_ {
        std::iter::successors(self.parent(agent), |&a| self.parent(a))
    }

    /// The other agents with `agent`'s parent; for the top tier, the other roots.
    pub fn siblings(&self, agent: AgentId) -> impl Iterator<Item = AgentId> + '_ {
        let peers: &[u32] = match self.parent(agent) {
            Some(p) => &self.nodes[p.index()].children,
            None => &self.roots,
        };
        peers
            .iter()
            .map(|&c| AgentId(c))
            .filter(move |&a| a != agent)
    }

    /// Every agent below `agent`, breadth first. O(size of the subtree).
    pub fn subtree(&self, agent: AgentId) -> Vec<AgentId> {
        let mut out: Vec<AgentId> = self.children(agent).collect();
        let mut i = 0;
        while i < out.len() {
            let next = out[i];
            out.extend(self.children(next));
            i += 1;
        }
        out
    }

    /// Load and capacity of `agent`'s subtree.
    pub fn load(&self, agent: AgentId) -> (u32, u32) {
        let n = &self.nodes[agent.index()];
        (n.load, n.capacity)
    }

    pub fn spec(&self, agent: AgentId) -> u8 {
        self.nodes[agent.index()].spec
    }

    /// Specs present below `agent`.
    pub fn mask(&self, agent: AgentId) -> SpecMask {
        self.nodes[agent.index()].mask
    }

    pub fn latency_ema_us(&self, agent: AgentId) -> f32 {
        self.nodes[agent.index()].latency_ema_us
    }

    /// The agents of the top tier.
    pub fn roots(&self) -> impl ExactSizeIterator<Item = AgentId> + '_ {
        self.roots.iter().map(|&r| AgentId(r))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hierarchy::Tiers;
    use proptest::prelude::*;

    /// A tree of `workers` workers of spec 0 and concurrency 1, for tests of any module.
    pub(crate) fn tree(workers: u32, span: u32, queue_capacity: u32) -> LiveTree {
        let mut tree = planned(workers, span, queue_capacity);
        tree.add_workers(workers, 0, 1);
        tree
    }

    /// The managing tiers planned for `workers`, with no worker added yet.
    pub(crate) fn planned(workers: u32, span: u32, queue_capacity: u32) -> LiveTree {
        let hierarchy = HierarchyOptions {
            workers: workers.into(),
            span,
            tiers: Tiers::default(),
        };
        LiveTree::new(&TreeOptions {
            hierarchy,
            queue_capacity,
        })
        .unwrap()
    }

    /// Every count the tree keeps agrees with its nodes.
    fn books(t: &LiveTree) {
        let mut sizes = vec![0u32; t.tier_sizes.len()];
        let mut down = vec![0u64; t.tier_sizes.len()];
        let mut nominal = 0u64;
        for (i, n) in t.nodes.iter().enumerate() {
            sizes[n.tier as usize] += 1;
            down[n.tier as usize] += u64::from(n.own & DOWN != 0);
            nominal += u64::from(n.own & ROOM);
            let below: u32 = n
                .children
                .iter()
                .map(|&c| t.nodes[c as usize].capacity)
                .sum();
            assert_eq!(n.capacity, room(n.own) + below, "capacity of {i}");
            if !n.children.is_empty() {
                let mask = n
                    .children
                    .iter()
                    .fold(0, |m, &c| m | t.nodes[c as usize].mask.0);
                assert_eq!(n.mask.0, mask, "mask of {i}");
            }
            for &c in &n.children {
                assert_eq!(t.nodes[c as usize].parent, i as u32, "parent of {c}");
            }
            assert_eq!(
                n.parent == NO_PARENT,
                t.roots.contains(&(i as u32)),
                "root {i}"
            );
        }
        assert_eq!(sizes, t.tier_sizes, "tier sizes");
        assert_eq!(down, t.down, "down per tier");
        assert_eq!(t.installed_capacity(), nominal, "installed capacity");
    }

    proptest! {
        /// Grown, shrunk by retirement and trimmed, and grown again in any order, the tree's
        /// books stay whole; trimmed places are taken again by the next workers added.
        #[test]
        fn trimming_retired_workers_leaves_the_books_whole(
            steps in prop::collection::vec((1..60u32, 0..60u32, any::<bool>()), 1..8),
            span in 2..6u32,
        ) {
            let mut t = planned(20, span, 3);
            let mut retired = std::collections::HashSet::new();
            for (add, retire, down_first) in steps {
                t.add_workers(add, (add % 3) as u8, 1 + add % 2);
                // Retire the newest workers in service, as a pool shrinking does.
                let worker_tier = t.worker_tier();
                let mut serving: Vec<AgentId> = t
                    .agents_in_tier(worker_tier)
                    .into_iter()
                    .filter(|w| !retired.contains(w))
                    .collect();
                serving.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
                for &w in serving.iter().take(retire as usize) {
                    if down_first {
                        t.set_sidelined(w, true);
                    }
                    t.set_down(w, true);
                    t.set_retired(w, true);
                    retired.insert(w);
                }
                books(&t);
                let len = t.len();
                let workers: std::collections::HashSet<AgentId> =
                    t.agents_in_tier(worker_tier).into_iter().collect();
                // Managers may go once empty; workers once retired.
                let trimmed = t.trim_tail(|a, _| !workers.contains(&a) || retired.contains(&a));
                prop_assert_eq!(trimmed.end as usize, len);
                prop_assert_eq!(t.len(), trimmed.start as usize);
                retired.retain(|w| (w.0) < trimmed.start);
                books(&t);
                // The last agent left is no removable one.
                if let Some(last) = t.nodes.last() {
                    let id = AgentId(t.len() as u32 - 1);
                    prop_assert!(
                        !(last.tier as usize == worker_tier && retired.contains(&id)) || last.load > 0
                    );
                }
            }
        }
    }

    #[test]
    fn a_trimmed_planned_place_is_taken_again_and_memory_comes_back() {
        let mut t = planned(1_000, 12, 4);
        t.add_workers(1_000, 0, 1);
        let full = t.installed_capacity();
        let worker_tier = t.worker_tier();
        let workers = t.agents_in_tier(worker_tier);
        let parents: Vec<Option<AgentId>> = workers.iter().map(|&w| t.parent(w)).collect();
        // All but the first ten retire, newest first.
        for &w in &workers[10..] {
            t.set_down(w, true);
            t.set_retired(w, true);
        }
        let gone: std::collections::HashSet<AgentId> = workers[10..].iter().copied().collect();
        let trimmed = t.trim_tail(|a, _| gone.contains(&a));
        assert_eq!(trimmed.len(), 990);
        assert_eq!(t.tier_sizes()[worker_tier], 10);
        assert!(
            t.nodes.capacity() < 1_000,
            "memory given back: {}",
            t.nodes.capacity()
        );
        books(&t);
        // Growing again takes the planned places, under the planned parents.
        let again = t.add_workers(990, 0, 1);
        assert_eq!(again, workers[10..].to_vec());
        let now: Vec<Option<AgentId>> = workers.iter().map(|&w| t.parent(w)).collect();
        assert_eq!(now, parents);
        assert_eq!(t.installed_capacity(), full);
        books(&t);
        // A busy retired worker stays, and keeps everything before it.
        let last = *workers.last().unwrap();
        let sup = t.parent(last).unwrap();
        t.enqueue(sup);
        t.start(last);
        for &w in &workers[500..] {
            t.set_down(w, true);
            t.set_retired(w, true);
        }
        let gone: std::collections::HashSet<AgentId> = workers[500..].iter().copied().collect();
        assert!(t.trim_tail(|a, _| gone.contains(&a)).is_empty());
        t.finish(last, None);
        assert_eq!(t.trim_tail(|a, _| gone.contains(&a)).len(), 500);
        books(&t);
    }

    #[test]
    fn tree_matches_its_plan() {
        let t = tree(100_000, 12, 8);
        assert_eq!(t.tier_sizes(), [58, 695, 8_334, 100_000]);
        let plan = Plan::new(&HierarchyOptions::with_workers(100_000)).unwrap();
        for raw in (0..t.len() as u32).step_by(97) {
            assert_eq!(t.parent(AgentId(raw)), plan.parent(AgentId(raw)));
        }
        let master = AgentId(0);
        let (_, capacity) = t.load(master);
        let workers_below = t
            .subtree(master)
            .iter()
            .filter(|a| t.tier(**a) == 3)
            .count() as u32;
        let supervisors_below = t
            .subtree(master)
            .iter()
            .filter(|a| t.tier(**a) == 2)
            .count() as u32;
        assert_eq!(capacity, workers_below + 8 * supervisors_below);
    }

    #[test]
    fn agents_out_of_service_are_counted_per_tier_however_they_went_down() {
        // 23 workers: the last supervisor has room for one more.
        let mut t = tree(23, 12, 1);
        let worker_tier = t.worker_tier();
        let sup = t.parent(AgentId(t.len() as u32 - 1)).unwrap();
        assert_eq!(t.down_in_tier(worker_tier), 0);
        assert!(t.set_down(sup, true));
        assert!(!t.set_down(sup, true), "already down: no change, no count");
        // A worker added under a supervisor out of service comes in down, and is counted.
        let extra = t.add_worker(0, 1);
        assert_eq!(t.parent(extra), Some(sup));
        assert_eq!(t.down_in_tier(worker_tier), 1);
        assert_eq!(t.down_in_tier(t.tier(sup)), 1);
        assert!(t.set_down(sup, false) && t.set_down(extra, false));
        let counts: Vec<u64> = (0..4).map(|i| t.down_in_tier(i)).collect();
        assert_eq!(counts, [0, 0, 0, 0]);
        // The vacant flag withdraws room too, but is no agent going down.
        for w in t.children(sup).collect::<Vec<_>>() {
            t.set_down(w, true);
        }
        assert!(t.is_vacant(sup));
        assert_eq!(t.down_in_tier(t.tier(sup)), 0);
    }

    #[test]
    fn a_sidelined_worker_gives_up_its_room_without_going_down() {
        let mut t = tree(24, 12, 2);
        let worker_tier = t.worker_tier();
        let sup = t.agents_in_tier(worker_tier - 1)[0];
        let root = t.roots().next().unwrap();
        let worker = t.children(sup).next().unwrap();
        assert_eq!((t.load(sup).1, t.load(root).1), (14, 28));
        assert!(t.set_sidelined(worker, true));
        assert!(!t.set_sidelined(worker, true), "already sidelined");
        assert!(t.is_sidelined(worker) && !t.is_down(worker));
        assert_eq!(
            (t.load(worker).1, t.load(sup).1, t.load(root).1),
            (0, 13, 27)
        );
        assert_eq!(t.down_in_tier(worker_tier), 0);
        assert_eq!(t.installed_capacity(), 28);
        assert!(t.set_sidelined(worker, false));
        assert!(!t.is_sidelined(worker));
        assert_eq!(
            (t.load(worker).1, t.load(sup).1, t.load(root).1),
            (1, 14, 28)
        );
        assert_eq!(t.installed_capacity(), 28);
    }

    #[test]
    fn a_supervisor_whose_workers_are_all_down_or_sidelined_is_vacant() {
        let mut t = tree(24, 12, 2);
        let sup = t.agents_in_tier(t.worker_tier() - 1)[0];
        let workers: Vec<AgentId> = t.children(sup).collect();
        for &w in &workers {
            t.set_sidelined(w, true);
        }
        assert!(t.is_vacant(sup));
        assert_eq!(t.load(sup).1, 0);
        assert_eq!(t.installed_capacity(), 28);
        t.set_sidelined(workers[5], false);
        assert!(!t.is_vacant(sup));
        assert_eq!(t.load(sup).1, 2 + 1);
        // Half down, half sidelined: vacant all the same, and only the down ones counted.
        for &w in &workers[..6] {
            t.set_down(w, true);
        }
        assert!(t.is_vacant(sup));
        assert_eq!(t.down_in_tier(t.worker_tier()), 6);
        t.set_down(workers[0], false);
        assert!(t.is_vacant(sup), "workers[0] is still sidelined");
        t.set_sidelined(workers[0], false);
        assert!(!t.is_vacant(sup));
        assert_eq!(t.load(sup).1, 2 + 1);
        assert_eq!(t.installed_capacity(), 28);
    }

    #[test]
    fn down_and_sidelined_are_independent_and_both_must_clear() {
        let mut t = tree(24, 12, 2);
        let worker_tier = t.worker_tier();
        let sup = t.agents_in_tier(worker_tier - 1)[0];
        let worker = t.children(sup).next().unwrap();
        for (first_cleared_down, order) in [(true, "down first"), (false, "sidelined first")] {
            assert!(t.set_down(worker, true) && t.set_sidelined(worker, true));
            assert_eq!(t.load(sup).1, 13, "{order}");
            assert_eq!(t.down_in_tier(worker_tier), 1, "{order}");
            if first_cleared_down {
                assert!(t.set_down(worker, false));
            } else {
                assert!(t.set_sidelined(worker, false));
            }
            assert_eq!(t.load(sup).1, 13, "{order}: still out");
            assert_eq!(t.installed_capacity(), 28, "{order}");
            if first_cleared_down {
                assert!(t.set_sidelined(worker, false));
            } else {
                assert!(t.set_down(worker, false));
            }
            assert_eq!(t.load(sup).1, 14, "{order}: back");
            assert_eq!(t.down_in_tier(worker_tier), 0, "{order}");
        }
        // Retirement only touches specs.
        t.set_sidelined(worker, true);
        t.set_retired(worker, true);
        assert!(t.is_sidelined(worker));
        t.set_retired(worker, false);
        t.set_sidelined(worker, false);
        assert_eq!((t.load(sup).1, t.mask(sup)), (14, SpecMask::of(0)));
    }

    #[test]
    fn probation_caps_a_workers_room_at_one() {
        let mut t = planned(12, 12, 2);
        let workers = t.add_workers(12, 0, 3);
        let sup = t.parent(workers[0]).unwrap();
        assert_eq!(t.load(sup).1, 38);
        assert!(t.set_probation(workers[0], true));
        assert!(!t.set_probation(workers[0], true));
        assert!(t.is_probation(workers[0]));
        assert_eq!((t.load(workers[0]).1, t.load(sup).1), (1, 36));
        assert_eq!(t.installed_capacity(), 38);
        // Sidelined on probation: nothing; back from the sideline: the probe's one.
        t.set_sidelined(workers[0], true);
        assert_eq!((t.load(workers[0]).1, t.load(sup).1), (0, 35));
        t.set_sidelined(workers[0], false);
        assert_eq!(t.load(workers[0]).1, 1);
        assert!(t.set_probation(workers[0], false));
        assert_eq!((t.load(workers[0]).1, t.load(sup).1), (3, 38));
        assert_eq!(t.installed_capacity(), 38);
        // Neither probation nor a reduced mark counts as leaving rotation.
        for &w in &workers {
            t.set_probation(w, true);
            t.set_reduced(w, true);
        }
        assert!(!t.is_vacant(sup) && t.is_reduced(workers[3]));
        assert_eq!(t.load(sup).1, 2 + 12);
        assert!(t.set_reduced(workers[3], false) && !t.is_reduced(workers[3]));
        assert_eq!(t.load(sup).1, 2 + 12, "a reduced mark keeps the room");
    }

    #[test]
    fn growth_past_the_plan_keeps_spans_and_adds_managers() {
        let mut t = tree(12, 12, 1);
        assert_eq!(t.tier_sizes(), [1, 1, 1, 12]);
        let extra = t.add_worker(0, 1);
        let sup = t.parent(extra).unwrap();
        assert_eq!(t.tier_sizes(), [1, 1, 2, 13]);
        assert_eq!(t.children(sup).len(), 1);
        for _ in 0..12 * 12 * 12 {
            t.add_worker(0, 1);
        }
        for a in 0..t.len() as u32 {
            assert!(t.children(AgentId(a)).len() <= 12);
        }
        assert_eq!(
            t.tier_sizes()[0],
            2,
            "a second master once the first is full"
        );
        assert_eq!(t.roots().len(), 2);
    }

    /// Capacity of `agent`'s subtree computed afresh from the flags.
    fn fresh_capacity(t: &LiveTree, agent: u32) -> u32 {
        let n = &t.nodes[agent as usize];
        room(n.own)
            + n.children
                .iter()
                .map(|&c| fresh_capacity(t, c))
                .sum::<u32>()
    }

    #[derive(Clone, Copy, Debug)]
    enum Flag {
        Down,
        Sidelined,
        Probation,
        Reduced,
        Retired,
        Grow,
    }

    proptest! {
        #[test]
        fn flags_in_any_order_keep_every_aggregate_true(
            changes in prop::collection::vec(
                (0usize..4, any::<prop::sample::Index>(), any::<bool>(), 0usize..6),
                0..120,
            ),
            grown in 0u32..20,
        ) {
            let flags = [Flag::Down, Flag::Sidelined, Flag::Probation, Flag::Reduced, Flag::Retired, Flag::Grow];
            let mut t = tree(30, 4, 2);
            for i in 0..grown {
                t.add_worker(0, 1 + i % 3);
            }
                        for (tier, pick, on, flag) in changes {
                let members = t.agents_in_tier(tier);
                let agent = members[pick.index(members.len())];
                let worker = tier == t.worker_tier();
                match flags[flag] {
                    Flag::Down => { t.set_down(agent, on); }
                    Flag::Sidelined if worker => { t.set_sidelined(agent, on); }
                    Flag::Probation if worker => { t.set_probation(agent, on); }
                    Flag::Reduced if worker => { t.set_reduced(agent, on); }
                    Flag::Retired if worker => t.set_retired(agent, on),
                    Flag::Grow => {
                        t.add_worker(0, 2);
                    }
                    _ => {}
                }
                let installed: u64 = t.nodes.iter().map(|n| u64::from(n.own & ROOM)).sum();
                prop_assert_eq!(t.installed_capacity(), installed);
                for r in t.roots.clone() {
                    prop_assert_eq!(t.nodes[r as usize].capacity, fresh_capacity(&t, r));
                }
                for tier in 0..=t.worker_tier() {
                    let down = t.agents_in_tier(tier).into_iter().filter(|&a| t.is_down(a)).count();
                    prop_assert_eq!(t.down_in_tier(tier), down as u64);
                }
                for sup in t.agents_in_tier(t.worker_tier() - 1) {
                    let out = t.children(sup).all(|w| t.is_down(w) || t.is_sidelined(w));
                    prop_assert_eq!(t.is_vacant(sup), out, "{:?}", sup);
                }
            }
        }
    }
}
