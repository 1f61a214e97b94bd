//! A vote whose voters span the cluster (`spread` in `Colony-Decide`). The node that takes
//! it does not seat its own agents: it asks each ballot as a cluster task of its own, which
//! any node serving the task's role runs on one of its agents, and counts what comes back
//! under the protocol, in the sans-IO engine (`colony_core::decision::Decision`), at once as
//! each ballot ends. Voters are told apart by node and agent, as their ballots' records name
//! them: a second ballot from an agent that voted already is not counted, and its seat is
//! asked once more. The ballot tasks still out when the decision ends, or when the attempt
//! is dropped (fenced, handed back), are cancelled.

use crate::{Cluster, Error, wire::Decide};
use colony_core::{
    AgentId,
    decision::{Decision, Outcome, Participant, Progress},
    task::{TaskSpec, TaskState},
};
use futures::{StreamExt, stream::FuturesUnordered};
use std::{collections::HashSet, sync::Arc};

/// Most voters of one spread vote: each is a cluster task, and its wait a watch.
pub const MAX_SPREAD_VOTERS: u32 = 1_000;

/// Most spread votes a node counts at once: a vote counted here holds no slot (its ballots
/// take theirs where they run), so this bounds them instead.
pub(super) const MAX_COUNTING: usize = 256;

/// Most times one seat is asked: once, and again when its ballot came from an agent that
/// had voted already.
const ASKS_PER_SEAT: u32 = 2;

/// What became of one seat.
#[derive(Debug, Default)]
struct Seat {
    asked: u32,
    /// Node and agent whose ballot counted for it.
    voter: Option<(String, Option<u64>)>,
    /// Why it has no ballot counted.
    problem: Option<String>,
}

/// A spread vote run to its end.
#[derive(Debug)]
pub(super) struct Spread {
    pub(super) outcome: Arc<Outcome>,
    pub(super) voters: u32,
    /// Ballot tasks asked, the seats asked again included.
    pub(super) asked: u32,
    /// Distinct nodes whose agents' ballots were counted.
    pub(super) nodes: u32,
    /// Why seats have no ballot counted, the first few, for a failure's message.
    pub(super) problems: Vec<String>,
}

impl Spread {
    /// Ballots counted (a spread vote has one round).
    pub(super) fn counted(&self) -> u32 {
        let record = self.outcome.record();
        let n = record
            .ballots
            .iter()
            .filter(|b| b.status == colony_core::decision::Status::Counted)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The ballot tasks still out, cancelled when dropped: the vote ended, or its attempt was
/// dropped before.
struct Out {
    cluster: Cluster,
    ids: HashSet<u64>,
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.ids.drain().collect();
        let cluster = self.cluster.clone();
        colony_agents::spawner::Spawner::spawn("spread-vote-cancel", async move {
            futures::stream::iter(ids)
                .for_each_concurrent(32, |id| {
                    let cluster = cluster.clone();
                    async move {
                        if let Err(e) = cluster.cancel(id, "its vote ended without it").await {
                            tracing::warn!("ballot task {id} not cancelled: {e}");
                        }
                    }
                })
                .await;
        });
    }
}

/// Decides task `vote` (its attempt's lease id `lease`, which keeps its ballots' ids apart
/// from another attempt's) by `decide.voters` ballots of `spec`, each a cluster task.
pub(super) async fn decide(
    cluster: Cluster,
    spec: TaskSpec,
    decide: Decide,
    vote: u64,
    lease: String,
) -> Result<Spread, Error> {
    let n = decide.voters;
    let participants: Vec<Participant> = (0..n).map(|i| Participant::new(AgentId(i))).collect();
    let mut decision = Decision::new(decide.options, &participants)
        .map_err(|e| Error::Task(format!("the vote cannot be counted: {e}")))?;
    let deadline = decision.deadline().unwrap_or(decide.options.timeout);
    let started = tokio::time::Instant::now();
    let now = || started.elapsed();
    let ballot_spec = TaskSpec {
        // Each ballot once: a ballot whose agent failed is a voter silent, as locally.
        max_attempts: spec.max_attempts,
        ..spec
    };
    let mut seats: Vec<Seat> = (0..n).map(|_| Seat::default()).collect();
    let mut out = Out {
        cluster: cluster.clone(),
        ids: HashSet::new(),
    };
    let mut waits = FuturesUnordered::new();
    let ask = |seats: &mut Vec<Seat>, asking: &[u32]| {
        let ids: Vec<String> = asking
            .iter()
            .map(|&s| {
                let seat = &mut seats[s as usize];
                seat.asked += 1;
                format!("ballot-{vote}-{lease}-{s}-{}", seat.asked)
            })
            .collect();
        let specs = vec![ballot_spec.clone(); asking.len()];
        let cluster = cluster.clone();
        async move { cluster.submit(&specs, Some(&ids)).await }
    };
    let all: Vec<u32> = (0..n).collect();
    let submitted = ask(&mut seats, &all).await?;
    for (&seat, task) in all.iter().zip(&submitted) {
        out.ids.insert(task.id);
        waits.push(ballot_end(cluster.clone(), seat, task.id));
    }
    let mut voted: HashSet<(String, Option<u64>)> = HashSet::new();
    let mut asked = n;
    let outcome = loop {
        let progress = tokio::select! {
            Some((seat, id, ended)) = waits.next() => {
                out.ids.remove(&id);
                let s = seat as usize;
                match ended {
                    Ok(row) if row.state == TaskState::Succeeded => {
                        let voter = (row.node.clone(), row.agent);
                        if voted.contains(&voter) {
                            let who = who(&voter);
                            if seats[s].asked < ASKS_PER_SEAT {
                                // Asked again: another agent may take it.
                                let again = ask(&mut seats, &[seat]).await?;
                                asked += 1;
                                let id = again[0].id;
                                out.ids.insert(id);
                                waits.push(ballot_end(cluster.clone(), seat, id));
                            } else {
                                seats[s].problem =
                                    Some(format!("its ballots came from {who}, which had voted already"));
                            }
                            Progress::Pending
                        } else {
                            let output = row.output.clone().unwrap_or_default();
                            match colony_runtime::decision::ballot(AgentId(seat), &output) {
                                Ok(ballot) => match decision.cast(ballot, now()) {
                                    Ok(progress) => {
                                        voted.insert(voter.clone());
                                        seats[s].voter = Some(voter);
                                        progress
                                    }
                                    Err(refused) => {
                                        seats[s].problem = Some(refused.to_string());
                                        Progress::Pending
                                    }
                                },
                                Err(problem) => {
                                    seats[s].problem = Some(problem);
                                    Progress::Pending
                                }
                            }
                        }
                    }
                    Ok(row) => {
                        seats[s].problem = Some(match row.error {
                            Some(error) => format!("its ballot task {id} {}: {error}", row.state),
                            None => format!("its ballot task {id} {}", row.state),
                        });
                        Progress::Pending
                    }
                    Err(e) => {
                        seats[s].problem = Some(format!("its ballot task {id}: {e}"));
                        Progress::Pending
                    }
                }
            }
            () = tokio::time::sleep_until(started + deadline) => decision.expire(now()),
        };
        let progress = match progress {
            // Every seat answered, or can no longer: the round closes now.
            Progress::Pending if waits.is_empty() => decision.close(now()),
            progress => progress,
        };
        match progress {
            Progress::Done(outcome) => break outcome,
            Progress::Pending => {}
            // Refused when sent (`Decide::check`): a spread vote has one round, no judge.
            Progress::NextRound { .. } | Progress::NeedsJudge { .. } => {
                return Err(Error::Task(
                    "a spread vote has one round and no judge".into(),
                ));
            }
        }
    };
    // The ballots still out are cancelled as `out` drops.
    drop(out);
    let nodes: HashSet<&str> = seats
        .iter()
        .filter_map(|s| s.voter.as_ref().map(|(node, _)| node.as_str()))
        .collect();
    let problems = seats
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.problem.as_ref().map(|p| format!("voter {i}: {p}")))
        .take(3)
        .collect();
    Ok(Spread {
        outcome,
        voters: n,
        asked,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        problems,
    })
}

/// Seat `seat`'s ballot task `id`, once it ended.
async fn ballot_end(cluster: Cluster, seat: u32, id: u64) -> (u32, u64, Result<crate::Row, Error>) {
    (seat, id, cluster.wait(id).await)
}

/// An agent of a node, for people.
fn who((node, agent): &(String, Option<u64>)) -> String {
    match agent {
        Some(agent) => format!("agent {agent} of node {node}"),
        None => format!("an agent of node {node}"),
    }
}
