//! What a run of a dependency graph is expected to take, sans-IO, in virtual time: its
//! critical path (the longest chain of needs, whatever the pools), and a schedule of its
//! jobs on pools of limited slots, which gives the expected duration.
//!
//! The schedule is an approximation of the runtime's, not an optimal one: a job is queued on
//! its one pool when the last of its needs ends, and each pool starts its queued jobs in
//! that order (jobs readied at once by index) as slots free; priorities are not modelled,
//! nor a task's freedom to run on any of several pools. A job that asks for more slots than
//! its pool has takes them all. Every job is assumed to succeed at its first attempt. A node
//! without a job (`jobs` shorter than the graph) takes no time on pool 0.
//!
//! ```
//! use colony_core::{dag::{Graph, Node}, plan::{Job, critical_path, schedule}};
//! use std::time::Duration;
//!
//! // a -> c, b -> c, on one pool of one slot.
//! let graph = Graph::new(vec![Node::new(vec![]), Node::new(vec![]), Node::new(vec![0, 1])]).unwrap();
//! let s = Duration::from_secs;
//! let jobs = [Job::new(s(2), 0), Job::new(s(3), 0), Job::new(s(1), 0)];
//! assert_eq!(critical_path(&graph, &jobs), (s(4), vec![1, 2]));
//! assert_eq!(schedule(&graph, &jobs, &[1]).makespan, s(6));
//! ```

use crate::dag::Graph;
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    time::Duration,
};

/// One node's work: how long it takes, on which pool, holding how many of its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub duration: Duration,
    pub pool: usize,
    pub width: u32,
}

impl Job {
    /// A job of one slot.
    pub fn new(duration: Duration, pool: usize) -> Self {
        Self {
            duration,
            pool,
            width: 1,
        }
    }
}

/// When each job starts and ends, and when the last ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub start: Vec<Duration>,
    pub end: Vec<Duration>,
    pub makespan: Duration,
}

/// The longest chain of needs by the jobs' durations, and its nodes in order, to a node
/// nothing needs (the first such chain by index when several are as long). Pools are not limited here: no run can be
/// shorter.
pub fn critical_path(graph: &Graph, jobs: &[Job]) -> (Duration, Vec<usize>) {
    let n = graph.len();
    let jobs = padded(jobs, n);
    let mut finish = vec![Duration::ZERO; n];
    let mut via: Vec<Option<usize>> = vec![None; n];
    for node in graph.topological() {
        let (ready, from) = graph
            .needs(node)
            .iter()
            .map(|&need| (finish[need], Some(need)))
            .fold(
                (Duration::ZERO, None),
                |best, c| if c.0 > best.0 { c } else { best },
            );
        finish[node] = ready + jobs[node].duration;
        via[node] = from;
    }
    // The chain ends at a node nothing needs: one always ends as late as any other (what
    // needs a node ends no earlier), so the path runs to the end of the graph.
    let dependents = graph.dependents();
    let Some(last) = (0..n)
        .filter(|&i| dependents[i].is_empty())
        .max_by_key(|&i| (finish[i], Reverse(i)))
    else {
        return (Duration::ZERO, Vec::new());
    };
    let mut path = vec![last];
    while let Some(prev) = via[*path.last().unwrap_or(&last)] {
        path.push(prev);
    }
    path.reverse();
    (finish[last], path)
}

/// Runs `jobs` along `graph` on pools of `capacity` slots each, in virtual time. A job of a
/// pool with no slots (or beyond `capacity`'s length) is given one.
pub fn schedule(graph: &Graph, jobs: &[Job], capacity: &[u32]) -> Schedule {
    let n = graph.len();
    let jobs = padded(jobs, n);
    let jobs = &jobs[..];
    let slots = |pool: usize| capacity.get(pool).copied().unwrap_or(1).max(1);
    let pools = jobs
        .iter()
        .map(|j| j.pool + 1)
        .max()
        .unwrap_or(0)
        .max(capacity.len());
    let mut free: Vec<u32> = (0..pools).map(slots).collect();
    let mut queued: Vec<VecDeque<usize>> = vec![VecDeque::new(); pools];
    let mut missing: Vec<usize> = (0..n).map(|i| graph.needs(i).len()).collect();
    let dependents = graph.dependents();
    let mut start = vec![Duration::ZERO; n];
    let mut end = vec![Duration::ZERO; n];
    // Ends to come: (time, node), earliest first.
    let mut ends: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let mut now = Duration::ZERO;
    for (i, need) in missing.iter().enumerate() {
        if *need == 0 {
            queued[jobs[i].pool].push_back(i);
        }
    }
    let mut done = 0;
    loop {
        // Each pool starts what it has queued, in order, while it has room for the first.
        for pool in 0..pools {
            while let Some(&next) = queued[pool].front() {
                let width = jobs[next].width.clamp(1, slots(pool));
                if free[pool] < width {
                    break;
                }
                queued[pool].pop_front();
                free[pool] -= width;
                start[next] = now;
                end[next] = now + jobs[next].duration;
                ends.push(Reverse((end[next], next)));
            }
        }
        let Some(Reverse((at, node))) = ends.pop() else {
            break;
        };
        now = at;
        let mut ended = vec![node];
        // Everything that ends at the same time, before anything starts.
        while let Some(&Reverse((t, other))) = ends.peek() {
            if t != at {
                break;
            }
            ends.pop();
            ended.push(other);
        }
        let mut readied = Vec::new();
        for node in ended {
            done += 1;
            let pool = jobs[node].pool;
            free[pool] += jobs[node].width.clamp(1, slots(pool));
            for &d in &dependents[node] {
                missing[d] -= 1;
                if missing[d] == 0 {
                    readied.push(d);
                }
            }
        }
        // Readied at one time: queued by index.
        readied.sort_unstable();
        for d in readied {
            queued[jobs[d].pool].push_back(d);
        }
    }
    debug_assert_eq!(done, n, "a checked graph runs every node");
    Schedule {
        makespan: end.iter().copied().max().unwrap_or_default(),
        start,
        end,
    }
}

/// `jobs`, one per node: a node without one takes no time on pool 0.
fn padded(jobs: &[Job], n: usize) -> std::borrow::Cow<'_, [Job]> {
    if jobs.len() >= n {
        std::borrow::Cow::Borrowed(jobs)
    } else {
        let mut all = jobs.to_vec();
        all.resize(n, Job::new(Duration::ZERO, 0));
        std::borrow::Cow::Owned(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::Node;
    use proptest::prelude::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_pool_of_one_slot_runs_its_jobs_in_turn_and_wide_jobs_wait_for_room() {
        // Three independent jobs on one pool of two slots: two at once, then the third.
        let graph = Graph::new(vec![Node::new(vec![]); 3]).unwrap();
        let jobs = [Job::new(s(2), 0), Job::new(s(2), 0), Job::new(s(2), 0)];
        let plan = schedule(&graph, &jobs, &[2]);
        assert_eq!(plan.start, [s(0), s(0), s(2)]);
        assert_eq!(plan.makespan, s(4));
        // A job as wide as the pool waits for both slots; one wider takes them all.
        let wide = [
            Job::new(s(1), 0),
            Job {
                width: 2,
                ..Job::new(s(3), 0)
            },
            Job {
                width: 9,
                ..Job::new(s(1), 0)
            },
        ];
        let plan = schedule(&graph, &wide, &[2]);
        assert_eq!(plan.start, [s(0), s(1), s(4)]);
        assert_eq!(plan.makespan, s(5));
        // Another pool is not held up by this one's queue.
        let two = [Job::new(s(5), 0), Job::new(s(5), 0), Job::new(s(1), 1)];
        let plan = schedule(&graph, &two, &[1, 1]);
        assert_eq!(plan.start, [s(0), s(5), s(0)]);
    }

    #[test]
    fn the_critical_path_is_the_longest_chain_of_needs() {
        // a(1) -> b(5) -> d(1); a -> c(2) -> d
        let graph = Graph::new(vec![
            Node::new(vec![]),
            Node::new(vec![0]),
            Node::new(vec![0]),
            Node::new(vec![1, 2]),
        ])
        .unwrap();
        let jobs = [
            Job::new(s(1), 0),
            Job::new(s(5), 0),
            Job::new(s(2), 0),
            Job::new(s(1), 0),
        ];
        assert_eq!(critical_path(&graph, &jobs), (s(7), vec![0, 1, 3]));
        // With room for both branches the run takes the critical path; with one slot, all.
        assert_eq!(schedule(&graph, &jobs, &[2]).makespan, s(7));
        assert_eq!(schedule(&graph, &jobs, &[1]).makespan, s(9));
        let empty = Graph::new(vec![]).unwrap();
        assert_eq!(critical_path(&empty, &[]), (Duration::ZERO, vec![]));
        assert_eq!(schedule(&empty, &[], &[]).makespan, Duration::ZERO);
    }

    /// A random graph: each node needs some earlier ones.
    fn graphs() -> impl Strategy<Value = (Graph, Vec<Job>, Vec<u32>)> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec(
                    proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                    n,
                ),
                proptest::collection::vec((0u64..20, 0usize..3, 1u32..4), n),
                proptest::collection::vec(0u32..4, 0..3),
            )
                .prop_map(move |(needs, jobs, capacity)| {
                    let nodes = needs
                        .iter()
                        .enumerate()
                        .map(|(i, picks)| {
                            let mut needs: Vec<usize> = if i == 0 {
                                vec![]
                            } else {
                                picks.iter().map(|p| p.index(i)).collect()
                            };
                            needs.sort_unstable();
                            needs.dedup();
                            Node::new(needs)
                        })
                        .collect();
                    let jobs = jobs
                        .into_iter()
                        .map(|(d, pool, width)| Job {
                            duration: Duration::from_millis(d),
                            pool,
                            width,
                        })
                        .collect();
                    (Graph::new(nodes).unwrap(), jobs, capacity)
                })
        })
    }

    proptest! {
        #[test]
        fn a_schedule_keeps_needs_and_slots_and_lies_between_the_bounds((graph, jobs, capacity) in graphs()) {
            let plan = schedule(&graph, &jobs, &capacity);
            let (critical, path) = critical_path(&graph, &jobs);
            // No job starts before its needs end, and each takes its duration.
            for (i, job) in jobs.iter().enumerate() {
                for &need in graph.needs(i) {
                    prop_assert!(plan.start[i] >= plan.end[need]);
                }
                prop_assert_eq!(plan.end[i] - plan.start[i], job.duration);
            }
            // At no time does a pool hold more slots than it has.
            for (i, job) in jobs.iter().enumerate() {
                let t = plan.start[i];
                let slots = capacity.get(job.pool).copied().unwrap_or(1).max(1);
                let held: u32 = jobs.iter().enumerate()
                    .filter(|(k, o)| o.pool == job.pool && plan.start[*k] <= t && t < plan.end[*k])
                    .map(|(_, o)| o.width.clamp(1, slots))
                    .sum();
                prop_assert!(held <= slots, "pool {} holds {held} of {slots}", job.pool);
            }
            // Never shorter than the critical path, never longer than everything in turn.
            let total: Duration = jobs.iter().map(|j| j.duration).sum();
            prop_assert!(plan.makespan >= critical && plan.makespan <= total);
            // The path is a chain of needs whose durations add up to its length.
            prop_assert_eq!(path.iter().map(|&i| jobs[i].duration).sum::<Duration>(), critical);
            for pair in path.windows(2) {
                prop_assert!(graph.needs(pair[1]).contains(&pair[0]));
            }
            // Replaying gives the same schedule.
            prop_assert_eq!(schedule(&graph, &jobs, &capacity), plan);
        }
    }
}
