//! A vote whose voters span the cluster (`spread` in `Colony-Decide`). The node that takes
//! it does not seat its own agents: it asks each ballot as a cluster task of its own, which
//! any node serving the task's role runs on one of its agents, and counts what comes back
//! under the protocol, in the sans-IO engine (`colony_core::decision::Decision`), at once as
//! each ballot ends. Voters are told apart by node and agent, as their ballots' records name
//! them: a second ballot from an agent that voted already is not counted, and its seat is
//! asked once more. The ballot tasks still out when the decision ends, or when the attempt
//! is dropped (fenced, handed back), are cancelled.

use crate::{Cluster, Error, RecordsFrom, Row, wire::Decide};
use colony_core::{
    AgentId,
    decision::{Decision, Outcome, Participant, Progress},
    task::{TaskSpec, TaskState},
};
use futures::{StreamExt, stream::FuturesUnordered};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};
use tokio::sync::oneshot;

/// Most voters of one spread vote: each is a cluster task, and its wait a watch.
pub const MAX_SPREAD_VOTERS: u32 = 1_000;

/// Most spread votes and teams a node runs at once: one run here holds no slot (its ballots
/// or asks take theirs where they run), so this bounds them instead.
pub(super) const MAX_COUNTING: usize = 256;

/// Most times one seat is asked: once, and again when its ballot came from an agent that
/// had voted already.
const ASKS_PER_SEAT: u32 = 2;

/// What became of one seat.
#[derive(Debug, Default)]
struct Seat {
    asked: u32,
    /// The node whose agent's ballot counted for it.
    voter: Option<String>,
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
    /// Why they are cancelled, in their records.
    why: &'static str,
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.ids.drain().collect();
        let (cluster, why) = (self.cluster.clone(), self.why);
        colony_agents::spawner::Spawner::spawn("spread-vote-cancel", async move {
            futures::stream::iter(ids)
                .for_each_concurrent(32, |id| {
                    let cluster = cluster.clone();
                    async move {
                        if let Err(e) = cluster.cancel(id, why).await {
                            tracing::warn!("task {id} not cancelled ({why}): {e}");
                        }
                    }
                })
                .await;
        });
    }
}

/// The ends of the ballot tasks a node's spread votes wait for, heard on one watch of the
/// task records made while any waits (not a watch each: a vote has up to 1,000 ballots, a
/// node counts up to 256 votes). While it runs, the node reads every record the cluster
/// writes.
#[derive(Debug)]
pub(super) struct Ends {
    inner: std::sync::Mutex<EndsInner>,
    /// Whether the watch is made: what ends from then on comes on it.
    live: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct EndsInner {
    waiting: HashMap<u64, oneshot::Sender<Row>>,
    watching: bool,
}

impl Default for Ends {
    fn default() -> Self {
        Self {
            inner: Default::default(),
            live: tokio::sync::watch::channel(false).0,
        }
    }
}

/// Task `id`'s wait for its end, given up when dropped.
struct Waiting<'a> {
    ends: &'a Ends,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.ends.lock().waiting.remove(&self.id);
    }
}

impl Ends {
    fn lock(&self) -> std::sync::MutexGuard<'_, EndsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Task `id`'s record once it has ended: heard on the watch, or read once the watch is
    /// made (it may have ended before).
    async fn ended(self: &Arc<Self>, cluster: &Cluster, id: u64) -> Row {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut inner = self.lock();
            inner.waiting.insert(id, tx);
            !std::mem::replace(&mut inner.watching, true)
        };
        let _waiting = Waiting { ends: self, id };
        if start {
            let ends = self.clone();
            let cluster = cluster.clone();
            colony_agents::spawner::Spawner::spawn("spread-vote-ends", async move {
                ends.watch(cluster).await;
            });
        }
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|live| *live).await;
        if let Ok(Some((row, _))) = cluster.row(id).await
            && row.is_terminal()
        {
            return row;
        }
        match rx.await {
            Ok(row) => row,
            // Not sent while this waits.
            Err(_) => std::future::pending().await,
        }
    }

    /// The watch: made again after the last record read when it fails, ended once nobody
    /// waits (decided under the lock a wait registers under).
    async fn watch(&self, cluster: Cluster) {
        let mut last = None;
        loop {
            let from = last.map_or(RecordsFrom::Now, RecordsFrom::After);
            if let Ok(mut watch) = cluster.records(from, u64::MAX).await {
                // Made again, before any record was read, after where this one started:
                // an end written in between is not missed.
                last.get_or_insert(watch.until);
                self.live.send_replace(true);
                while let Some(Ok(record)) = watch.records.next().await {
                    last = Some(record.revision);
                    let mut inner = self.lock();
                    if record.row.is_terminal()
                        && let Some(tx) = inner.waiting.remove(&record.id)
                    {
                        let _ = tx.send(record.row);
                    }
                    if inner.waiting.is_empty() {
                        inner.watching = false;
                        self.live.send_replace(false);
                        return;
                    }
                }
                self.live.send_replace(false);
            }
            {
                let mut inner = self.lock();
                if inner.waiting.is_empty() {
                    inner.watching = false;
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// The priority of a spread vote's ballots or a spread team's asks: one above their task's,
/// so that nodes take the work of what is under way before more of it.
fn one_above(priority: colony_core::task::Priority) -> colony_core::task::Priority {
    use colony_core::task::Priority;
    Priority::new((priority.get() + 1).min(Priority::HIGHEST.get())).unwrap_or(Priority::HIGHEST)
}

/// Most ballot tasks sent in one go: a send that fails part-way leaves at most these
/// running unasked-for.
const SEND_AT_ONCE: usize = 32;

/// Decides task `vote` (its attempt's lease id `lease`, which keeps its ballots' ids apart
/// from another attempt's) by `decide.voters` ballots of `spec`, each a cluster task of
/// one attempt (as a vote's ballot on one runtime), one priority above the vote's so that
/// nodes take the ballots of the votes being counted before more votes.
pub(super) async fn decide(
    cluster: Cluster,
    ends: Arc<Ends>,
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
    let until = started + deadline;
    let now = || started.elapsed();
    let priority = one_above(spec.priority);
    let ballot_spec = TaskSpec {
        max_attempts: 1,
        priority,
        ..spec
    };
    let mut seats: Vec<Seat> = (0..n).map(|_| Seat::default()).collect();
    let mut out = Out {
        cluster: cluster.clone(),
        ids: HashSet::new(),
        why: "its vote ended without it",
    };
    let mut waits = FuturesUnordered::new();
    // Asks seats `asking` again (once more each), in sends of [`SEND_AT_ONCE`], each id kept
    // in `out` as soon as its send is acknowledged.
    let ask = async |seats: &mut Vec<Seat>,
                     out: &mut Out,
                     asking: &[u32]|
           -> Result<Vec<(u32, u64)>, Error> {
        let mut asked = Vec::with_capacity(asking.len());
        for chunk in asking.chunks(SEND_AT_ONCE) {
            let ids: Vec<String> = chunk
                .iter()
                .map(|&s| {
                    let seat = &mut seats[s as usize];
                    seat.asked += 1;
                    format!("ballot-{vote}-{lease}-{s}-{}", seat.asked)
                })
                .collect();
            let specs = vec![ballot_spec.clone(); chunk.len()];
            for (&seat, task) in chunk.iter().zip(cluster.submit(&specs, Some(&ids)).await?) {
                out.ids.insert(task.id);
                asked.push((seat, task.id));
            }
        }
        Ok(asked)
    };
    let all: Vec<u32> = (0..n).collect();
    for (seat, id) in tokio::time::timeout_at(until, ask(&mut seats, &mut out, &all))
        .await
        .map_err(|_| Error::Task("its ballots could not all be sent before its timeout".into()))??
    {
        waits.push(ballot_end(&ends, &cluster, seat, id));
    }
    let mut voted: HashSet<(String, u64)> = HashSet::new();
    let mut asked = n;
    let outcome = loop {
        let progress = tokio::select! {
            Some((seat, id, row)) = waits.next() => {
                out.ids.remove(&id);
                let s = seat as usize;
                if row.state == TaskState::Succeeded {
                    // A ballot whose record names no agent is told apart from none.
                    let voter = row.agent.map(|agent| (row.node.clone(), agent));
                    match voter.clone().filter(|v| voted.contains(v)) {
                        Some(again) => {
                            let who = format!("agent {} of node {}", again.1, again.0);
                            let resend = seats[s].asked < ASKS_PER_SEAT && now() < deadline;
                            let asked_again = match resend {
                                true => tokio::time::timeout_at(until, ask(&mut seats, &mut out, &[seat]))
                                    .await
                                    .ok()
                                    .and_then(Result::ok),
                                false => None,
                            };
                            match asked_again {
                                // Asked again: another agent may take it.
                                Some(again) => {
                                    asked += 1;
                                    for (seat, id) in again {
                                        waits.push(ballot_end(&ends, &cluster, seat, id));
                                    }
                                }
                                None => {
                                    seats[s].problem =
                                        Some(format!("its ballots came from {who}, which had voted already"));
                                }
                            }
                            Progress::Pending
                        }
                        None => {
                            let output = row.output.clone().unwrap_or_default();
                            match colony_runtime::decision::ballot(AgentId(seat), &output) {
                                Ok(ballot) => match decision.cast(ballot, now()) {
                                    Ok(progress) => {
                                        if let Some(v) = &voter {
                                            voted.insert(v.clone());
                                        }
                                        seats[s].voter = Some(row.node.clone());
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
                } else {
                    seats[s].problem = Some(match row.error {
                        Some(error) => format!("its ballot task {id} {}: {error}", row.state),
                        None => format!("its ballot task {id} {}", row.state),
                    });
                    Progress::Pending
                }
            }
            () = tokio::time::sleep_until(until) => decision.expire(now()),
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
    let nodes: HashSet<&str> = seats.iter().filter_map(|s| s.voter.as_deref()).collect();
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
fn ballot_end(
    ends: &Arc<Ends>,
    cluster: &Cluster,
    seat: u32,
    id: u64,
) -> impl std::future::Future<Output = (u32, u64, Row)> + Send + 'static {
    let (ends, cluster) = (ends.clone(), cluster.clone());
    async move { (seat, id, ends.ended(&cluster, id).await) }
}

/// A spread team run to its end: the last step's output, or why it failed.
#[derive(Debug)]
pub(super) struct SpreadTeam {
    pub(super) output: Result<bytes::Bytes, String>,
    /// Members: the roles' counts.
    pub(super) members: u32,
    /// Steps run (the last may have failed).
    pub(super) steps: u32,
    /// Ask tasks sent, the asks made again included.
    pub(super) asks: u32,
    /// Asks made again after theirs failed.
    pub(super) reassigned: u32,
    /// Distinct nodes whose agents answered its asks.
    pub(super) nodes: u32,
}

/// Runs team `team` of task `id` (its attempt's lease id `lease`, which keeps its asks' ids
/// apart from another attempt's) with agents of any node: each step's asks (one, or one per
/// member of its role with `each`) are cluster tasks of the role's requirement, one
/// attempt each, one priority above the team's task, whose payload is the task's with the
/// step's input over it and a `team` field (`step`, `role`, `index`, `of`, `members` empty,
/// `context`: the earlier steps' outputs), as on one runtime. An ask that fails is made
/// again while the team's reassignments last; then the team fails, naming the step. So does
/// a step the cluster cannot carry (an ask over its payload, a role it cannot route), for
/// good; NATS out of reach fails the attempt, to be retried.
pub(super) async fn team(
    cluster: Cluster,
    ends: Arc<Ends>,
    spec: TaskSpec,
    team: colony_runtime::team::Team,
    id: u64,
    lease: String,
) -> Result<SpreadTeam, Error> {
    use serde_json::{Map, Value, json};
    team.validate().map_err(|e| Error::Task(e.to_string()))?;
    let priority = one_above(spec.priority);
    let members = team
        .roles
        .iter()
        .fold(0u32, |sum, r| sum.saturating_add(r.count));
    let mut out = Out {
        cluster: cluster.clone(),
        ids: HashSet::new(),
        why: "its team ended without it",
    };
    let mut context = Map::new();
    let (mut asks, mut reassigned, mut steps) = (0u32, 0u32, 0u32);
    let mut nodes: HashSet<String> = HashSet::new();
    let mut last = bytes::Bytes::new();
    let ended = |output, steps, asks, reassigned, nodes: &HashSet<String>| SpreadTeam {
        output,
        members,
        steps,
        asks,
        reassigned,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
    };
    for step in &team.steps {
        steps += 1;
        let role = &team.roles[step.role];
        let of = if step.each { role.count as usize } else { 1 };
        // The payload written once a step, each ask's put together around it: the context
        // (every earlier output) is not copied per ask.
        let mut base = colony_runtime::team::step_payload(&spec.payload, step);
        base.remove("team");
        let base = Value::Object(base).to_string();
        let context_text = Value::Object(context.clone()).to_string();
        let payload_of = |index: usize| {
            let head = json!({
                "step": &*step.id,
                "role": &*role.name,
                "index": index,
                "of": of,
                "members": [],
            })
            .to_string();
            let mut payload =
                String::with_capacity(base.len() + head.len() + context_text.len() + 24);
            payload.push_str(&base[..base.len() - 1]);
            if base.len() > 2 {
                payload.push(',');
            }
            payload.push_str("\"team\":");
            payload.push_str(&head[..head.len() - 1]);
            payload.push_str(",\"context\":");
            payload.push_str(&context_text);
            payload.push_str("}}");
            bytes::Bytes::from(payload)
        };
        let largest = payload_of(of - 1).len();
        if largest > crate::MAX_PAYLOAD {
            let error = format!(
                "step `{}` could not be asked: its ask of {largest} bytes (the task's payload and the earlier steps' outputs) is over the cluster's {} bytes",
                step.id,
                crate::MAX_PAYLOAD
            );
            return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
        }
        let ask_spec = |index: usize| TaskSpec {
            requirement: role.requirement.clone(),
            payload: payload_of(index),
            max_attempts: 1,
            priority,
            ..spec.clone()
        };
        let mut outputs: Vec<Option<bytes::Bytes>> = vec![None; of];
        let mut waits = FuturesUnordered::new();
        // What the cluster refuses to carry fails the team; else the attempt fails.
        let unsendable = |e: Error| match e {
            Error::Task(_) | Error::BadRole { .. } => {
                Ok(format!("step `{}` could not be asked: {e}", step.id))
            }
            e => Err(e),
        };
        for chunk in (0..of).collect::<Vec<_>>().chunks(SEND_AT_ONCE) {
            let specs: Vec<TaskSpec> = chunk.iter().map(|&i| ask_spec(i)).collect();
            let ids: Vec<String> = chunk
                .iter()
                .map(|i| format!("team-{id}-{lease}-{}-{i}-{asks}", step.id))
                .collect();
            let sent = match cluster.submit(&specs, Some(&ids)).await {
                Ok(sent) => sent,
                Err(e) => {
                    let error = unsendable(e)?;
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
            };
            for (&index, task) in chunk.iter().zip(sent) {
                asks += 1;
                out.ids.insert(task.id);
                waits.push(ballot_end(&ends, &cluster, index as u32, task.id));
            }
        }
        while let Some((index, task, row)) = waits.next().await {
            out.ids.remove(&task);
            if row.state == TaskState::Succeeded {
                nodes.insert(row.node.clone());
                outputs[index as usize] = Some(row.output.unwrap_or_default());
                continue;
            }
            let why = row
                .error
                .unwrap_or_else(|| format!("its task {task} ended {}", row.state));
            if reassigned >= team.reassignments {
                let error = format!(
                    "step `{}`: the ask of role `{}` failed ({why}), and the team's {} reassignments are spent",
                    step.id, role.name, team.reassignments
                );
                return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
            }
            reassigned += 1;
            let again = match cluster
                .submit(
                    &[ask_spec(index as usize)],
                    Some(&[format!("team-{id}-{lease}-{}-{index}-{asks}", step.id)]),
                )
                .await
            {
                Ok(again) => again,
                Err(e) => {
                    let error = unsendable(e)?;
                    return Ok(ended(Err(error), steps, asks, reassigned, &nodes));
                }
            };
            asks += 1;
            for task in again {
                out.ids.insert(task.id);
                waits.push(ballot_end(&ends, &cluster, index, task.id));
            }
        }
        // Every ask answered: the loop ends once none is out, and a failure past the
        // reassignments ended the team.
        let Some(mut outputs) = outputs.into_iter().collect::<Option<Vec<_>>>() else {
            return Err(Error::Task(format!(
                "step `{}` ended with an ask unanswered",
                step.id
            )));
        };
        let output = if step.each {
            let all: Vec<Value> = outputs.iter().map(colony_runtime::team::as_value).collect();
            bytes::Bytes::from(Value::Array(all).to_string())
        } else {
            outputs.swap_remove(0)
        };
        context.insert(step.id.to_string(), colony_runtime::team::as_value(&output));
        last = output;
    }
    Ok(ended(Ok(last), steps, asks, reassigned, &nodes))
}
