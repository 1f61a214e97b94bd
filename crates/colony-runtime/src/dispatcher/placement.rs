//! Where a task waits for an agent: routed down the live tree to a supervisor, queued there by
//! priority, taken by a freed worker, stolen by an idle sibling, moved by rebalancing, or held
//! in the backlog while no subtree has room. The choices themselves (which child, which sibling
//! to steal from, which moves even out queues) are `colony-core`'s; this part owns the queues
//! they act on.

use super::{command::Job, outbox::Outbox};
use crate::{
    events::{Event, Kinds},
    queue::{Full, PriorityQueue},
    shared::Shared,
};
use colony_core::{
    AgentId, TaskId,
    rebalance::{self, RebalanceOptions},
    routing::Strategy,
    tree::{LiveTree, SpecMask},
};
use rand::rngs::SmallRng;
use std::collections::{HashMap, VecDeque};

/// Backlogged tasks tried per turn that still find no room, before the turn ends.
const BACKLOG_TRIES: usize = 64;

/// Where a routed task went.
pub(super) enum Routed {
    /// To an idle worker, whose supervisor already counts it: start it there now.
    Start(AgentId, Job),
    /// Into a supervisor's queue, or its pinned worker's.
    Queued,
    /// A pinned task whose worker left its pool (retired or gone): nobody may run it.
    Unrunnable(Job),
}

pub(super) struct Placement {
    /// Per agent id: the queue of a supervisor, made on first use.
    queues: Vec<Option<Box<PriorityQueue<Job>>>>,
    /// Supervisors that have had a queue, the only ones a queued task can be in.
    with_queues: Vec<AgentId>,
    /// Per worker: pinned tasks waiting for it, in arrival order. Counted in its
    /// supervisor's load like a queued task, taken before anything else when the worker has
    /// room, and never stolen, rebalanced or evicted.
    pinned: HashMap<AgentId, VecDeque<Job>>,
    /// Tasks that found no subtree with room for them, waiting for one.
    backlog: PriorityQueue<Job>,
    /// Backlogged tasks that no pool with agents can run yet.
    orphans: usize,
    /// Tasks in supervisors' queues, the backlog, and retries' backoff.
    queued: u64,
    /// The same, per pool that may run them (a task that several pools may run counts in
    /// each): the demand the autoscaler sees.
    waiting: Vec<u64>,
    strategy: Strategy,
    /// Queue length of a sibling supervisor from which an idle worker steals.
    steal_at: usize,
    pub(super) rebalance: RebalanceOptions,
    /// Sibling queues' lengths, kept to look for a queue to steal from without allocating.
    lengths: Vec<usize>,
}

impl Placement {
    pub(super) fn new(
        agents: usize,
        pools: usize,
        strategy: Strategy,
        steal_at: usize,
        rebalance: RebalanceOptions,
    ) -> Self {
        Self {
            // Managers exist before any worker: a kill may name one at once.
            queues: std::iter::repeat_with(|| None).take(agents).collect(),
            with_queues: Vec::new(),
            pinned: HashMap::new(),
            backlog: PriorityQueue::new(usize::MAX),
            orphans: 0,
            queued: 0,
            waiting: vec![0; pools],
            strategy,
            steal_at: steal_at.max(1),
            rebalance,
            lengths: Vec::new(),
        }
    }

    /// The tree grew to `agents`.
    pub(super) fn grow(&mut self, agents: usize) {
        self.queues.resize_with(agents, || None);
    }

    /// Agents from `start` on left the tree, with nothing queued at them.
    pub(super) fn forget_from(&mut self, start: usize) {
        debug_assert!(
            self.queues[start.min(self.queues.len())..]
                .iter()
                .all(|q| q.as_ref().is_none_or(|q| q.is_empty()))
        );
        self.queues.truncate(start);
        if self.queues.len() < self.queues.capacity() / 2 {
            self.queues.shrink_to_fit();
        }
        self.with_queues.retain(|s| s.index() < start);
        debug_assert!(self.pinned.keys().all(|w| w.index() < start));
    }

    /// Sends a task down the tree: to an idle worker, or into a supervisor's queue. Hands the
    /// task back when no subtree with agents for it has room.
    // The job comes back by value on the rare no-room path; boxing it would allocate on the
    // hot path instead.
    #[allow(clippy::result_large_err)]
    pub(super) fn route(
        &mut self,
        tree: &mut LiveTree,
        rng: &mut SmallRng,
        out: &mut Outbox,
        job: Job,
    ) -> Result<Routed, Job> {
        if let Some(worker) = job.pin {
            return Ok(self.route_pinned(tree, out, worker, job));
        }
        let Some(supervisor) = tree.route(job.mask, self.strategy, rng) else {
            return Err(job);
        };
        tree.enqueue(supervisor);
        if let Some(worker) = tree.idle_worker(supervisor, job.mask, job.last_agent) {
            return Ok(Routed::Start(worker, job));
        }
        out.event(Kinds::TASKS, || Event::TaskQueued {
            task: job.id,
            supervisor,
        });
        // The tree admits no more than the supervisor's capacity, so this bound only bites
        // if the tree and the queues disagree; the task then waits in the backlog.
        let bound = tree.load(supervisor).1 as usize;
        let mask = job.mask;
        let queue = self.queue(supervisor, bound);
        // Workers spawned since the queue was made raise the supervisor's capacity.
        queue.set_capacity(bound);
        match queue.push(job.priority, job) {
            Ok(()) => {
                self.tally(mask, true);
                Ok(Routed::Queued)
            }
            Err(Full(job)) => {
                tree.dequeue(supervisor);
                Err(job)
            }
        }
    }

    /// A pinned task goes to its worker: started now if it has room and is in service, else
    /// queued for it (a restarting or sidelined worker takes it when it is back). A worker
    /// retired or trimmed from its pool never will.
    fn route_pinned(
        &mut self,
        tree: &mut LiveTree,
        out: &mut Outbox,
        worker: AgentId,
        job: Job,
    ) -> Routed {
        // Its worker retired, or its place taken by an agent of another pool.
        if !tree.contains(worker)
            || tree.tier(worker) != tree.worker_tier()
            || !tree.mask(worker).intersects(job.eligible)
        {
            return Routed::Unrunnable(job);
        }
        let supervisor = tree.parent(worker).expect("workers have supervisors");
        tree.enqueue(supervisor);
        let (load, capacity) = tree.load(worker);
        if load < capacity {
            return Routed::Start(worker, job);
        }
        out.event(Kinds::TASKS, || Event::TaskQueued {
            task: job.id,
            supervisor,
        });
        self.tally(job.mask, true);
        self.pinned.entry(worker).or_default().push_back(job);
        Routed::Queued
    }

    /// Whether tasks pinned to `worker` wait for it.
    pub(super) fn has_pinned(&self, worker: AgentId) -> bool {
        !self.pinned.is_empty() && self.pinned.contains_key(&worker)
    }

    /// Takes out the tasks pinned to `worker`, which left its pool: nobody may run them.
    pub(super) fn unpin(&mut self, tree: &mut LiveTree, worker: AgentId) -> Vec<Job> {
        let jobs: Vec<Job> = self.pinned.remove(&worker).into_iter().flatten().collect();
        if let Some(supervisor) = tree.parent(worker) {
            for job in &jobs {
                tree.dequeue(supervisor);
                self.tally(job.mask, false);
            }
        }
        jobs
    }

    /// Puts `job` at the back of the backlog, to wait for room.
    pub(super) fn wait(&mut self, job: Job) {
        self.tally(job.mask, true);
        self.orphans += usize::from(job.requirement.is_some());
        let _ = self.backlog.push(job.priority, job);
    }

    /// The queue of `supervisor`, made on first use with room for `bound` tasks.
    fn queue(&mut self, supervisor: AgentId, bound: usize) -> &mut PriorityQueue<Job> {
        let slot = &mut self.queues[supervisor.index()];
        if slot.is_none() {
            self.with_queues.push(supervisor);
        }
        slot.get_or_insert_with(|| Box::new(PriorityQueue::new(bound)))
    }

    /// The next task for `worker`, which has room: a task pinned to it, else the highest-priority one its spec can run
    /// from its supervisor's queue (the whole queue is looked at: a task only this worker's
    /// spec can run must not wait behind tasks for other specs), else one stolen from a
    /// sibling supervisor.
    pub(super) fn next_for(
        &mut self,
        tree: &mut LiveTree,
        out: &mut Outbox,
        worker: AgentId,
    ) -> Option<Job> {
        if let Some(pinned) = self.pinned.get_mut(&worker) {
            let job = pinned.pop_front().expect("no empty pinned queue is kept");
            if pinned.is_empty() {
                self.pinned.remove(&worker);
            }
            self.tally(job.mask, false);
            return Some(job);
        }
        let supervisor = tree.parent(worker).expect("workers have supervisors");
        let spec = SpecMask::of(tree.spec(worker));
        let job = self.queues[supervisor.index()]
            .as_mut()
            .and_then(|q| q.pop_matching(usize::MAX, |job| job.mask.intersects(spec)))
            .or_else(|| self.steal(tree, out, supervisor, spec))?;
        self.tally(job.mask, false);
        Some(job)
    }

    /// Work stealing: `supervisor` has a worker of `spec` with nothing to do, so it takes a
    /// task that worker can run from the sibling that [`rebalance::steal_from`] picks. The
    /// task's load moves with it.
    fn steal(
        &mut self,
        tree: &mut LiveTree,
        out: &mut Outbox,
        supervisor: AgentId,
        spec: SpecMask,
    ) -> Option<Job> {
        let parent = tree.parent(supervisor)?;
        let mut me = 0;
        self.lengths.clear();
        for (i, sibling) in tree.children(parent).enumerate() {
            if sibling == supervisor {
                me = i;
            }
            let len = self.queues[sibling.index()].as_ref().map_or(0, |q| q.len());
            self.lengths.push(len);
        }
        let victim = rebalance::steal_from(&self.lengths, me, self.steal_at);
        let victim = tree.children(parent).nth(victim?)?;
        let job = self.queues[victim.index()]
            .as_mut()?
            .pop_matching(usize::MAX, |job| job.mask.intersects(spec))?;
        tree.dequeue(victim);
        tree.enqueue(supervisor);
        out.turn.steals += 1;
        out.event(Kinds::TASKS, || Event::WorkStolen {
            task: job.id,
            from: victim,
            to: supervisor,
        });
        Some(job)
    }

    /// One try at the backlog's front task, for room that freed: `None` when there is none to
    /// try this turn (empty, or [`BACKLOG_TRIES`] misses already).
    pub(super) fn backlog_front(&mut self, misses: usize) -> Option<Job> {
        if misses >= BACKLOG_TRIES.min(self.backlog.len()) {
            return None;
        }
        let job = self.backlog.pop()?;
        self.tally(job.mask, false);
        Some(job)
    }

    /// A backlogged task that still found no room goes to the back, so the tasks behind it
    /// get their turn.
    pub(super) fn back_of_backlog(&mut self, job: Job) {
        self.tally(job.mask, true);
        let _ = self.backlog.push(job.priority, job);
    }

    /// Tasks whose pools had no agents may have some now (`shared` says which pools do).
    pub(super) fn adopt_orphans(&mut self, shared: &Shared) {
        if self.orphans == 0 {
            return;
        }
        let mut adopted = Vec::new();
        self.backlog.for_each_mut(|job| {
            if let Some(requirement) = &job.requirement {
                job.mask = shared.mask_for(requirement);
                job.eligible = job.mask;
                if !job.mask.is_empty() {
                    job.requirement = None;
                    adopted.push(job.mask);
                }
            }
        });
        self.orphans -= adopted.len();
        // An orphan counted in no pool's demand while it had none; now it counts in its own.
        for mask in adopted {
            self.tally(mask, true);
            self.queued -= 1;
        }
    }

    /// Tasks waiting: in a queue, the backlog or a retry's backoff.
    pub(super) fn queued(&self) -> u64 {
        self.queued
    }

    /// Tasks waiting, per pool that may run them.
    pub(super) fn waiting(&self) -> &[u64] {
        &self.waiting
    }

    /// Counts a task that starts (`up`) or stops waiting, in the total and in each pool of
    /// `mask`.
    pub(super) fn tally(&mut self, mask: SpecMask, up: bool) {
        let mut bits = mask.0;
        if up {
            self.queued += 1;
        } else {
            self.queued -= 1;
        }
        while bits != 0 {
            let pool = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(n) = self.waiting.get_mut(pool) {
                *n = if up { *n + 1 } else { n.saturating_sub(1) };
            }
        }
    }

    /// The periodic pass that evens out sibling supervisors' queues (see
    /// [`colony_core::rebalance`]). Returns the supervisors that received tasks: their idle
    /// workers should look at their queues.
    pub(super) fn rebalance(&mut self, tree: &mut LiveTree, out: &mut Outbox) -> Vec<AgentId> {
        let supervisor_tier = tree.worker_tier() - 1;
        let groups: Vec<Vec<AgentId>> = if supervisor_tier == 0 {
            vec![tree.roots().collect()]
        } else {
            let parents = tree.agents_in_tier(supervisor_tier - 1);
            parents
                .into_iter()
                .map(|p| tree.children(p).collect())
                .collect()
        };
        let mut received = Vec::new();
        for mut siblings in groups {
            siblings.retain(|&s| !tree.is_down(s) && !tree.is_vacant(s));
            let lengths: Vec<usize> = siblings
                .iter()
                .map(|s| self.queues[s.index()].as_ref().map_or(0, |q| q.len()))
                .collect();
            let mut moved = 0;
            for m in rebalance::plan(&lengths, self.rebalance.tolerance) {
                let (from, to) = (siblings[m.from], siblings[m.to]);
                let can_run = tree.mask(to);
                for _ in 0..m.count {
                    let job = self.queues[from.index()].as_mut().and_then(|q| {
                        q.pop_matching(usize::MAX, |job| job.mask.intersects(can_run))
                    });
                    let Some(job) = job else { break };
                    tree.dequeue(from);
                    tree.enqueue(to);
                    let bound = tree.load(to).1 as usize;
                    self.queue(to, bound).push_front(job.priority, job);
                    moved += 1;
                }
                received.push(to);
            }
            if moved > 0 {
                out.turn.rebalanced += moved;
                let parent = tree.parent(siblings[0]);
                out.event(Kinds::TASKS, || Event::LoadRebalanced {
                    parent,
                    moved: moved as u32,
                });
            }
        }
        received
    }

    /// Takes out of `supervisors`' queues the tasks they cannot run any more: all of them
    /// when a supervisor has no worker in service, else those of specs it no longer has (its
    /// workers of them retired). The caller routes them again.
    pub(super) fn evict(&mut self, tree: &mut LiveTree, supervisors: Vec<AgentId>) -> Vec<Job> {
        let mut homeless: Vec<Job> = Vec::new();
        for sup in supervisors {
            let all = tree.is_down(sup) || tree.is_vacant(sup);
            let can_run = tree.mask(sup);
            let Some(queue) = self.queues[sup.index()].as_mut() else {
                continue;
            };
            while let Some(job) =
                queue.pop_matching(usize::MAX, |j| all || !j.mask.intersects(can_run))
            {
                tree.dequeue(sup);
                homeless.push(job);
            }
        }
        for job in &homeless {
            self.tally(job.mask, false);
        }
        homeless
    }

    /// Takes `task` out of whichever queue it waits in, if any.
    pub(super) fn remove(&mut self, tree: &mut LiveTree, task: TaskId) -> Option<Job> {
        let pinned = self
            .pinned
            .iter()
            .find_map(|(&w, q)| q.iter().position(|j| j.id == task).map(|i| (w, i)));
        if let Some((worker, i)) = pinned {
            let queue = self.pinned.get_mut(&worker).expect("just found");
            let job = queue.remove(i).expect("just found");
            if queue.is_empty() {
                self.pinned.remove(&worker);
            }
            if let Some(supervisor) = tree.parent(worker) {
                tree.dequeue(supervisor);
            }
            self.tally(job.mask, false);
            return Some(job);
        }
        if let Some(job) = self.backlog.pop_matching(usize::MAX, |j| j.id == task) {
            self.tally(job.mask, false);
            self.orphans -= usize::from(job.requirement.is_some());
            return Some(job);
        }
        for &supervisor in &self.with_queues {
            let Some(queue) = self.queues[supervisor.index()].as_mut() else {
                continue;
            };
            if queue.is_empty() {
                continue;
            }
            if let Some(job) = queue.pop_matching(usize::MAX, |j| j.id == task) {
                tree.dequeue(supervisor);
                let mask = job.mask;
                self.tally(mask, false);
                return Some(job);
            }
        }
        None
    }
}
