//! Dependency graphs of tasks, sans-IO: which task may start, which must be skipped.
//!
//! A [`Graph`] holds each node's `needs` (the nodes it waits for), checked once for cycles; a
//! [`Run`] follows one execution of it. A node starts as soon as every node it needs has
//! succeeded: there is no barrier between "waves", which are only what a user sees ([`Graph::
//! waves`]). When a node fails or is skipped, its dependents are skipped with the cause,
//! unless they say `continue_on_failure`, in which case they run once all their needs have
//! ended, however they ended.
//!
//! ```
//! use colony_core::dag::{Command, Graph, Node, Outcome, Run};
//!
//! // build -> test -> deploy
//! let graph = Graph::new(vec![Node::new(vec![]), Node::new(vec![0]), Node::new(vec![1])]).unwrap();
//! let (mut run, first) = Run::start(&graph, &[]);
//! assert_eq!(first, [Command::Start(0)]);
//! assert_eq!(run.on_end(&graph, 0, Outcome::Succeeded), [Command::Start(1)]);
//! assert_eq!(run.on_end(&graph, 1, Outcome::Failed), [Command::Skip { node: 2, because: 1 }]);
//! assert!(run.finished());
//! ```

use std::collections::VecDeque;

/// One node: the indices of the nodes it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub needs: Vec<usize>,
    /// Run even when a need failed or was skipped, once every need has ended.
    pub continue_on_failure: bool,
}

impl Node {
    pub fn new(needs: Vec<usize>) -> Self {
        Self {
            needs,
            continue_on_failure: false,
        }
    }
}

/// A graph that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The nodes of the cycle, in order: each needs the next, and the last needs the first.
    #[error("the graph has a cycle through nodes {0:?}")]
    Cycle(Vec<usize>),
    #[error("node {node} needs node {need}, which does not exist ({len} nodes)")]
    Unknown {
        node: usize,
        need: usize,
        len: usize,
    },
    #[error("node {0} needs itself")]
    SelfNeed(usize),
}

/// A checked dependency graph.
#[derive(Clone, Debug)]
pub struct Graph {
    nodes: Vec<Node>,
    dependents: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(nodes: Vec<Node>) -> Result<Self, Error> {
        let len = nodes.len();
        let mut dependents = vec![Vec::new(); len];
        for (node, n) in nodes.iter().enumerate() {
            for &need in &n.needs {
                if need >= len {
                    return Err(Error::Unknown { node, need, len });
                }
                if need == node {
                    return Err(Error::SelfNeed(node));
                }
                dependents[need].push(node);
            }
        }
        let graph = Self { nodes, dependents };
        if let Some(cycle) = graph.cycle() {
            return Err(Error::Cycle(cycle));
        }
        Ok(graph)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn needs(&self, node: usize) -> &[usize] {
        &self.nodes[node].needs
    }

    /// The wave of each node: 0 for nodes that need nothing, else one more than the latest
    /// wave among its needs.
    pub fn waves(&self) -> Vec<usize> {
        let mut wave = vec![0; self.len()];
        for node in self.topological() {
            wave[node] = self.nodes[node]
                .needs
                .iter()
                .map(|&n| wave[n] + 1)
                .max()
                .unwrap_or(0);
        }
        wave
    }

    /// The nodes that need `node`, for each node.
    pub(crate) fn dependents(&self) -> &[Vec<usize>] {
        &self.dependents
    }

    /// Nodes in an order where each comes after everything it needs (Kahn's algorithm).
    pub(crate) fn topological(&self) -> Vec<usize> {
        let mut missing: Vec<usize> = self.nodes.iter().map(|n| n.needs.len()).collect();
        let mut ready: VecDeque<usize> = (0..self.len()).filter(|&n| missing[n] == 0).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(node) = ready.pop_front() {
            order.push(node);
            for &d in &self.dependents[node] {
                missing[d] -= 1;
                if missing[d] == 0 {
                    ready.push_back(d);
                }
            }
        }
        order
    }

    /// A cycle, if there is one: an iterative depth-first search along `needs`.
    fn cycle(&self) -> Option<Vec<usize>> {
        if self.topological().len() == self.len() {
            return None;
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; self.len()];
        for root in 0..self.len() {
            if mark[root] != Mark::New {
                continue;
            }
            // (node, index of the next need to look at)
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = Mark::OnPath;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                match self.nodes[node].needs.get(*next) {
                    Some(&need) => {
                        *next += 1;
                        match mark[need] {
                            Mark::New => {
                                mark[need] = Mark::OnPath;
                                path.push((need, 0));
                            }
                            Mark::OnPath => {
                                let from = path.iter().position(|&(n, _)| n == need)?;
                                return Some(path[from..].iter().map(|&(n, _)| n).collect());
                            }
                            Mark::Done => {}
                        }
                    }
                    None => {
                        mark[node] = Mark::Done;
                        path.pop();
                    }
                }
            }
        }
        None
    }
}

/// How a node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// What the runner must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Start(usize),
    /// Never run `node`: `because` (a node it needs, directly or not) failed.
    Skip {
        node: usize,
        because: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Started,
    Succeeded,
    Failed,
    Skipped,
}

/// One execution of a [`Graph`].
#[derive(Clone, Debug)]
pub struct Run {
    state: Vec<State>,
    /// Per node: needs that have not ended yet.
    open: Vec<usize>,
    /// Per node: a need that failed or was skipped, if any.
    blame: Vec<Option<usize>>,
    ended: usize,
}

impl Run {
    /// Starts a run in which the nodes of `done` already ended as given (a resumed run);
    /// returns the first commands.
    pub fn start(graph: &Graph, done: &[(usize, Outcome)]) -> (Self, Vec<Command>) {
        let mut run = Self {
            state: vec![State::Waiting; graph.len()],
            open: graph.nodes.iter().map(|n| n.needs.len()).collect(),
            blame: vec![None; graph.len()],
            ended: 0,
        };
        let mut commands = Vec::new();
        for &(node, outcome) in done {
            if matches!(run.state[node], State::Waiting | State::Started) {
                run.state[node] = State::Started;
                commands.extend(run.on_end(graph, node, outcome));
            }
        }
        for node in 0..graph.len() {
            if run.state[node] == State::Waiting && run.open[node] == 0 {
                run.state[node] = State::Started;
                commands.push(Command::Start(node));
            }
        }
        // Starts for nodes that `done` says ended anyway are dropped.
        commands.retain(|c| match *c {
            Command::Start(n) => !done.iter().any(|&(d, _)| d == n),
            Command::Skip { .. } => true,
        });
        (run, commands)
    }

    /// Every node has ended: succeeded, failed or skipped.
    pub fn finished(&self) -> bool {
        self.ended == self.state.len()
    }

    /// `node`, which was started, ended with `outcome`.
    pub fn on_end(&mut self, graph: &Graph, node: usize, outcome: Outcome) -> Vec<Command> {
        if self.state[node] != State::Started {
            return Vec::new();
        }
        let mut commands = Vec::new();
        let mut ended: VecDeque<(usize, State)> = VecDeque::from([(
            node,
            match outcome {
                Outcome::Succeeded => State::Succeeded,
                Outcome::Failed => State::Failed,
            },
        )]);
        while let Some((node, state)) = ended.pop_front() {
            self.state[node] = state;
            self.ended += 1;
            let culprit = match state {
                State::Failed => Some(node),
                State::Skipped => self.blame[node],
                _ => None,
            };
            for &d in &graph.dependents[node] {
                self.open[d] -= 1;
                if self.blame[d].is_none() {
                    self.blame[d] = culprit;
                }
                if self.state[d] != State::Waiting {
                    continue;
                }
                match self.blame[d] {
                    Some(because) if !graph.nodes[d].continue_on_failure => {
                        // Skipped as soon as one need fails: no need to wait for the others.
                        self.state[d] = State::Skipped;
                        commands.push(Command::Skip { node: d, because });
                        ended.push_back((d, State::Skipped));
                    }
                    _ if self.open[d] == 0 => {
                        self.state[d] = State::Started;
                        commands.push(Command::Start(d));
                    }
                    _ => {}
                }
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(needs: &[&[usize]]) -> Graph {
        Graph::new(needs.iter().map(|n| Node::new(n.to_vec())).collect()).unwrap()
    }

    #[test]
    fn a_node_starts_when_its_needs_succeed_without_waiting_for_its_wave() {
        // 0 -> 2, 1 -> 3 -> 4, and 2 needs only 0: it starts before 1 ends.
        let g = graph(&[&[], &[], &[0], &[1], &[2, 3]]);
        assert_eq!(g.waves(), [0, 0, 1, 1, 2]);
        let (mut run, first) = Run::start(&g, &[]);
        assert_eq!(first, [Command::Start(0), Command::Start(1)]);
        assert_eq!(run.on_end(&g, 0, Outcome::Succeeded), [Command::Start(2)]);
        assert_eq!(run.on_end(&g, 2, Outcome::Succeeded), []);
        assert_eq!(run.on_end(&g, 1, Outcome::Succeeded), [Command::Start(3)]);
        assert_eq!(run.on_end(&g, 3, Outcome::Succeeded), [Command::Start(4)]);
        assert!(!run.finished());
        assert_eq!(run.on_end(&g, 4, Outcome::Succeeded), []);
        assert!(run.finished());
    }

    #[test]
    fn failure_skips_dependents_transitively_unless_they_continue() {
        // 0 -> 1 -> 2, and 3 needs 1 but continues on failure, 4 needs 3.
        let mut nodes: Vec<Node> = [&[][..], &[0], &[1], &[1], &[3]]
            .iter()
            .map(|n| Node::new(n.to_vec()))
            .collect();
        nodes[3].continue_on_failure = true;
        let g = Graph::new(nodes).unwrap();
        let (mut run, _) = Run::start(&g, &[]);
        assert_eq!(
            run.on_end(&g, 0, Outcome::Failed),
            [
                Command::Skip {
                    node: 1,
                    because: 0
                },
                Command::Skip {
                    node: 2,
                    because: 0
                },
                Command::Start(3),
            ]
        );
        assert_eq!(run.on_end(&g, 3, Outcome::Succeeded), [Command::Start(4)]);
        assert_eq!(run.on_end(&g, 4, Outcome::Succeeded), []);
        assert!(run.finished());
    }

    #[test]
    fn cycles_are_found_and_named() {
        let err = Graph::new(vec![
            Node::new(vec![]),
            Node::new(vec![3]),
            Node::new(vec![1]),
            Node::new(vec![2, 0]),
        ])
        .unwrap_err();
        let Error::Cycle(cycle) = err else {
            panic!("{err:?}")
        };
        let mut sorted = cycle.clone();
        sorted.sort();
        assert_eq!(sorted, [1, 2, 3]);
        // Each node of the cycle needs the next.
        let needs: [&[usize]; 4] = [&[], &[3], &[1], &[2, 0]];
        for (i, &n) in cycle.iter().enumerate() {
            let next = cycle[(i + 1) % cycle.len()];
            assert!(needs[n].contains(&next), "{cycle:?}");
        }
        assert_eq!(
            Graph::new(vec![Node::new(vec![0])]).unwrap_err(),
            Error::SelfNeed(0)
        );
        assert!(matches!(
            Graph::new(vec![Node::new(vec![5])]).unwrap_err(),
            Error::Unknown { need: 5, .. }
        ));
    }

    #[test]
    fn a_resumed_run_redoes_nothing_that_ended() {
        let g = graph(&[&[], &[0], &[0], &[1, 2]]);
        let (mut run, first) = Run::start(&g, &[(0, Outcome::Succeeded), (1, Outcome::Succeeded)]);
        assert_eq!(first, [Command::Start(2)]);
        assert_eq!(run.on_end(&g, 2, Outcome::Succeeded), [Command::Start(3)]);
        assert_eq!(run.on_end(&g, 3, Outcome::Succeeded), []);
        assert!(run.finished());
    }

    proptest! {
        /// Random DAGs (edges only to earlier nodes) with random outcomes: every node ends
        /// exactly once, and starts only after all its needs ended.
        #[test]
        fn every_node_ends_exactly_once(
            edges in prop::collection::vec(prop::collection::vec(0..1000usize, 0..4), 1..60),
            failures in prop::collection::vec(any::<bool>(), 60),
        ) {
            let nodes: Vec<Node> = edges
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut needs: Vec<usize> =
                        if i == 0 { vec![] } else { e.iter().map(|x| x % i).collect() };
                    needs.sort();
                    needs.dedup();
                    Node { needs, continue_on_failure: i % 5 == 0 }
                })
                .collect();
            let g = Graph::new(nodes).unwrap();
            let (mut run, first) = Run::start(&g, &[]);
            let mut queue: VecDeque<Command> = first.into();
            let mut ended = vec![0u32; g.len()];
            while let Some(c) = queue.pop_front() {
                match c {
                    Command::Start(n) => {
                        for &need in g.needs(n) {
                            prop_assert!(ended[need] == 1, "{n} started before {need} ended");
                        }
                        ended[n] += 1;
                        let outcome = if failures[n] { Outcome::Failed } else { Outcome::Succeeded };
                        queue.extend(run.on_end(&g, n, outcome));
                    }
                    Command::Skip { node, .. } => ended[node] += 1,
                }
            }
            prop_assert!(ended.iter().all(|&e| e == 1), "{ended:?}");
            prop_assert!(run.finished());
        }
    }
}
