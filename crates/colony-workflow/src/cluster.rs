//! Running a workflow across a cluster (`colony run --nats`): this process schedules the
//! graph and fills each task's payload from its needs' outputs; the cluster's nodes run the
//! tasks, each by the role it asks for (a task naming a pool asks for the pool's role), on
//! whatever pools the nodes host. The workflow's own `agents:` only name roles here.
//!
//! Each ready task goes to the cluster's stream as one task (its timeout, priority and
//! attempts with it) and is waited for through its record. Its `expect` checks run here, on
//! the output the record holds: an output that fails them costs the attempts its cluster task
//! used, and while attempts remain the task goes to the cluster again. Results, `run.log`,
//! `summary.json` and webhooks are a local run's.
//!
//! A vote or a team goes as one cluster task carrying its settings, and the node that takes
//! it seats the voters or forms the team among its own agents (spread, it sends each ballot
//! or ask to the cluster as a task of its own). The workflow's memory is this
//! process's: recalled into a task's input before it goes, written once its output came back
//! and passed its checks. So are the run's topics (`wait:`, `publish:`): a message bus of this
//! process links the run's tasks, a task waiting here, unsent, for its message, and an output
//! published here once it came back. What needs one runtime is refused before anything starts
//! ([`refusals`]): votes whose weights a cluster cannot carry (pools of one role weighed
//! differently: weights cross as roles'), paced pools, and checks that read this machine's
//! files or git checkout while the task runs on a node.
//!
//! With a run's book ([`Booked`]: `colony run --nats --run-id`), what is sent is written to
//! the cluster as it goes, and a task the book holds is waited for rather than sent again:
//! a standby that takes the run over, or the same command run again, goes on from there. A
//! scheduler that no longer leads the run, or finds the book moved under it, stops; one whose
//! run is cancelled for good (`colony_cluster::runs::RunBook::cancel`) cancels its tasks in
//! the cluster and stops.

use crate::{
    Progress, Report, Started, Status, Workflow,
    run::{
        Output, Readers, Results, RunEnd, Writer, conclude, finished, record, release, spec_for,
        verify,
    },
};
use colony_cluster::{
    Cluster, Row,
    leadership::Observer,
    runs::{RunBook, Sent},
};
use colony_core::{
    dag::{Command as Step, Outcome as End, Run},
    task::{TaskSpec, TaskState},
};
use colony_runtime::messages::{Bus, MessageOptions};
use futures::{StreamExt, stream::FuturesUnordered};
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    collections::HashMap,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Instant,
};

/// Most tasks of one run in the cluster at once: each is watched until it ends.
pub const IN_FLIGHT: usize = 1024;

/// Settings of one run across a cluster.
#[derive(Default)]
pub struct ClusterOptions {
    /// Overrides the workflow's output folder.
    pub output: Option<PathBuf>,
    /// Called as each task ends, for progress.
    pub on_finished: Option<Progress>,
    /// Called as each task goes to the cluster.
    pub on_started: Option<Started>,
    /// When it completes, the run stops scheduling: nothing more goes to the cluster, and the
    /// tasks not ended are written `cancelled`. Those in the cluster are cancelled there too,
    /// unless the run has a book: then they run on for whoever takes the run over.
    pub cancel: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The run's book, kept while this process leads the run.
    pub booked: Option<Booked>,
    /// Its topics bridged to the cluster's bus ([`colony_cluster::bus::Bridge`]): agents on
    /// nodes that bridge them hear and reach its tasks. Shared across the cluster: another
    /// run bridging a topic hears this one's messages on it.
    pub bridge_topics: bool,
}

/// A run's book, and whether this process leads the run: it sends nothing once it does not.
#[derive(Debug)]
pub struct Booked {
    pub book: RunBook,
    pub lead: Observer,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// Task `t`'s vote as the cluster carries it: the weights of the pools that can run it as
/// weights of their roles (a pool that cannot run it seats no voter, so its weight counts
/// for nothing), checked as a node would check it.
fn decide_of(
    workflow: &Workflow,
    t: &crate::TaskDef,
    vote: &colony_runtime::decision::Vote,
) -> Result<colony_cluster::Decide, String> {
    let (mut weights, mut roles) = (Vec::new(), Vec::new());
    for (p, &w) in workflow.pools.iter().zip(&vote.pool_weights) {
        if p.spec.satisfies(&t.requirement) {
            weights.push(w);
            roles.push(&*p.spec.role);
        }
    }
    let vote = colony_runtime::decision::Vote {
        pool_weights: weights,
        ..vote.clone()
    };
    let mut decide = colony_cluster::Decide::of(&vote, &roles)?;
    decide.spread = t.spread;
    decide.check()?;
    Ok(decide)
}

/// What a run across a cluster cannot carry, each naming the task or pool and why; empty when
/// it can run.
pub fn refusals(workflow: &Workflow) -> Vec<String> {
    let mut out = Vec::new();
    for t in &workflow.tasks {
        let mut refuse = |what: &str, why: &str| {
            out.push(format!("task `{}`: {what} {why}", t.id));
        };
        if let Some(vote) = &t.decide
            && let Err(why) = decide_of(workflow, t, vote)
        {
            refuse("`decide`", &why);
        }
        // A team goes to the nodes of its first role: a name the cluster can route by; a
        // spread team's asks go to the nodes of every role.
        if let Some(plan) = &t.team {
            let routed = if plan.spread { plan.roles.len() } else { 1 };
            for (r, _) in plan.roles.iter().take(routed) {
                if let Some(role) = r.requirement.role.as_deref()
                    && let Err(e) = colony_cluster::check_role(role)
                {
                    let whose = if plan.spread {
                        "the nodes of each role"
                    } else {
                        "the nodes of its first role"
                    };
                    refuse("`team`", &format!("goes to {whose}: {e}"));
                }
            }
        }
        if !t.expect.files.is_empty() {
            refuse(
                "`expect: files`",
                "checks files on this machine, while the task runs on a node",
            );
        }
        if t.expect.git_diff.is_some() {
            refuse(
                "`expect: git-diff`",
                "checks a git checkout on this machine, while the task runs on a node",
            );
        }
        if let Some(role) = &t.requirement.role
            && let Err(e) = colony_cluster::check_role(role)
        {
            out.push(format!("task `{}`: {e}", t.id));
        }
    }
    for p in &workflow.pools {
        if p.rate_per_minute.is_some() {
            out.push(format!(
                "pool `{}`: `rate` paces one runtime's pool; a cluster's nodes host their own",
                p.name
            ));
        }
    }
    out
}

/// Why a task's time in the cluster ended without its record.
enum Stop {
    /// The task failed to go or to come back.
    Task(String),
    /// The task failed here, before it went: why.
    Failed(String),
    /// The run's book could not be written: this scheduler stops (the run goes on from its
    /// book elsewhere or later).
    Halt(String),
    /// The run was cancelled for good (its book says so): why.
    Cancelled(String),
}

/// A task's time in the cluster: submitted (unless the book has it sent already), written in
/// the book, then waited for until its record is terminal. With it, the book's new revision
/// of the task's entry.
type Waiting = Pin<
    Box<dyn Future<Output = (usize, TaskSpec, Result<(Row, Option<u64>, Checked), Stop>)> + Send>,
>;

/// A task's wait for its message, with its place among the ready tasks to go back to.
type Listening = Pin<
    Box<
        dyn Future<
                Output = (
                    colony_core::task::Priority,
                    Reverse<usize>,
                    usize,
                    Result<serde_json::Value, String>,
                ),
            > + Send,
    >,
>;

/// A record that came back, against the task's checks and the workflow's memory (both in
/// the task's own future, so a slow store never holds the scheduler's loop).
enum Checked {
    /// It succeeded and passed its checks (and is remembered, if it is to be): its output.
    Passed(bytes::Bytes),
    /// It succeeded and failed its checks: why.
    Failed(String),
    /// It passed its checks and could not be remembered (a later recall would miss it) or
    /// published (a task waiting for it would miss it): why.
    Unkept(String),
    /// It did not succeed.
    Ended,
}

/// Where a workflow task stands with the cluster: what to send next, or what was sent.
#[derive(Clone, Copy, Default)]
struct Sending {
    /// Cluster tasks it had before the next (outputs that failed their checks).
    round: u32,
    /// Attempts those spent.
    spent: u32,
    /// The revision of its entry in the book.
    revision: Option<u64>,
    /// The cluster task the book holds for this round.
    sent: Option<u64>,
}

/// A task's recall from the workflow's memory: the memory, the query and how many.
type Recall = (Arc<crate::memory::Memory>, String, usize);

/// What a task sends to the cluster: its task, how several agents of a node work it if they
/// do (a vote, a team), and what the workflow's memory is asked for it before it goes.
struct Going {
    spec: TaskSpec,
    together: Option<colony_cluster::Together>,
    recall: Option<Recall>,
    /// Its `expect` checks, run on the output that comes back.
    checks: crate::Checks,
    /// Where its output is remembered once it passed them (`remember: true`), and as what.
    remember: Option<Arc<crate::memory::Memory>>,
    /// The run's bus and the topic its output is published on once it passed them.
    publish: Option<(Bus, Arc<str>)>,
    task: String,
}

impl Going {
    /// Workflow task `i` going as `spec`, worked by `together`, its input recalled from
    /// `memory` by `recall` (the query and how many).
    fn new(
        workflow: &Workflow,
        i: usize,
        spec: TaskSpec,
        together: Option<colony_cluster::Together>,
        recall: &Option<(String, usize)>,
        memory: Option<&Arc<crate::memory::Memory>>,
        bus: Option<&Bus>,
    ) -> Self {
        let t = &workflow.tasks[i];
        Self {
            spec,
            together,
            recall: memory
                .zip(recall.as_ref())
                .map(|(m, (query, k))| (m.clone(), query.clone(), *k)),
            checks: t.expect.clone(),
            remember: memory.filter(|_| t.remember).cloned(),
            publish: bus.cloned().zip(t.publish.clone()),
            task: t.id.clone(),
        }
    }
}

/// The cluster tasks of a run, by workflow task, from their submission until they end:
/// what a cancelled run cancels in the cluster. Once the run stops for good (why), a task
/// submitted after is cancelled by its own wait.
#[derive(Clone, Default)]
struct InCluster(Arc<Mutex<Held>>);

/// [`InCluster`]'s tasks, and why the run stopped for good.
#[derive(Default)]
struct Held {
    ids: HashMap<usize, u64>,
    stopped: Option<String>,
}

impl InCluster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Task `i` went as `id`; why the run stopped for good, if it did.
    fn sent(&self, i: usize, id: u64) -> Option<String> {
        let mut held = self.lock();
        held.ids.insert(i, id);
        held.stopped.clone()
    }

    fn ended(&self, i: usize) {
        self.lock().ids.remove(&i);
    }

    /// Why the run stopped for good, if it did.
    fn stopped(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    /// The tasks in the cluster now; with `why`, the run stops for good from here on.
    fn take(&self, why: Option<&str>) -> Vec<u64> {
        let mut held = self.lock();
        if let Some(why) = why {
            held.stopped = Some(why.to_owned());
        }
        held.ids.values().copied().collect()
    }
}

fn submit_and_wait(
    cluster: &Cluster,
    booked: Option<&Booked>,
    in_cluster: &InCluster,
    i: usize,
    going: Going,
    sending: Sending,
) -> Waiting {
    let Going {
        mut spec,
        together,
        recall,
        checks,
        remember,
        publish,
        task: task_id,
    } = going;
    let cluster = cluster.clone();
    let in_cluster = in_cluster.clone();
    let book = booked.map(|b| (b.book.clone(), b.lead.clone()));
    Box::pin(async move {
        // With a book, the cluster out of reach stops this scheduler (the run goes on from
        // the book) rather than failing the task: it may well run to its end there.
        let fail = |e: colony_cluster::Error| match e {
            colony_cluster::Error::Nats { .. }
            | colony_cluster::Error::Connect { .. }
            | colony_cluster::Error::NoJetStream { .. }
                if book.is_some() =>
            {
                Stop::Halt(e.to_string())
            }
            e => Stop::Task(e.to_string()),
        };
        let leads = || book.as_ref().is_none_or(|(_, lead)| lead.term().is_some());
        let ended = async {
            let (id, revision) = match sending.sent {
                Some(id) => (id, sending.revision),
                None => {
                    if !leads() {
                        return Err(Stop::Halt(NOT_LEADING.into()));
                    }
                    if let Some(why) = in_cluster.stopped() {
                        return Err(Stop::Cancelled(why));
                    }
                    // What the workflow's memory holds for its query, in its input.
                    if let Some((memory, query, k)) = recall {
                        let recalled = memory
                            .recall(spec.clone(), query, k, colony_cluster::MAX_PAYLOAD)
                            .await
                            .map_err(Stop::Failed)?;
                        spec = recalled;
                        // The search may take a while: still leading?
                        if !leads() {
                            return Err(Stop::Halt(NOT_LEADING.into()));
                        }
                    }
                    let ids = book
                        .as_ref()
                        .map(|(b, _)| vec![b.dedupe_id(i, sending.round)]);
                    let one_id = || ids.clone().and_then(|ids| ids.into_iter().next());
                    let id = match &together {
                        // Decided by vote among the agents of the node that takes it.
                        Some(colony_cluster::Together::Vote(decide)) => {
                            cluster
                                .submit_decided(&spec, decide, one_id())
                                .await
                                .map_err(fail)?
                                .id
                        }
                        // Worked by a team formed among them.
                        Some(colony_cluster::Together::Team(team)) => {
                            cluster
                                .submit_team(&spec, (**team).clone(), one_id())
                                .await
                                .map_err(fail)?
                                .id
                        }
                        None => {
                            cluster
                                .submit(std::slice::from_ref(&spec), ids.as_deref())
                                .await
                                .map_err(fail)?
                                .first()
                                .ok_or_else(|| {
                                    Stop::Task("the cluster answered nothing for the task".into())
                                })?
                                .id
                        }
                    };
                    let revision = match &book {
                        Some((book, _)) => {
                            if !leads() {
                                return Err(Stop::Halt(NOT_LEADING.into()));
                            }
                            Some(note_sent(book, i, id, sending).await?)
                        }
                        None => None,
                    };
                    (id, revision)
                }
            };
            // Sent, or held by the book and first waited for, as the run stopped for good:
            // cancelled here, as the canceller may not know it.
            noted(&cluster, &in_cluster, i, id).await?;
            let row = cluster.wait(id).await.map_err(fail);
            in_cluster.ended(i);
            let row = row?;
            // Cancelled because the run was: said so, not as the task's failure. A book that
            // cannot be read now stops this scheduler rather than call the task failed.
            if let (TaskState::Cancelled, Some((book, _))) = (row.state, &book) {
                match book.meta().await {
                    Ok(Some((meta, _))) => {
                        if let Some(why) = meta.cancelled {
                            return Err(Stop::Cancelled(why));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Stop::Halt(e.to_string())),
                }
            }
            let checked = match (row.state, &row.output) {
                (TaskState::Succeeded, output) => {
                    let output = output.clone().unwrap_or_default();
                    match (verify(Ok(output), &checks), &remember) {
                        (Err(failed), _) => Checked::Failed(failed.to_string()),
                        (Ok(output), Some(memory)) => {
                            match memory.remember(&task_id, &output).await {
                                Ok(()) => Checked::Passed(output),
                                Err(e) => Checked::Unkept(e),
                            }
                        }
                        (Ok(output), None) => Checked::Passed(output),
                    }
                }
                _ => Checked::Ended,
            };
            // Published once it passed (and was remembered): again when a run taken over
            // waits anew for a task its book holds, so that a task waiting still gets it.
            let checked = match (checked, &publish) {
                (Checked::Passed(output), Some((bus, topic))) => {
                    match crate::messages::publish(bus, &task_id, topic, output.clone()).await {
                        Ok(()) => Checked::Passed(output),
                        Err(e) => Checked::Unkept(e),
                    }
                }
                (checked, _) => checked,
            };
            Ok((row, revision, checked))
        }
        .await;
        (i, spec, ended)
    })
}

/// Notes that task `i` is in the cluster as `id`. If the run stopped for good meanwhile, the
/// task is cancelled here (the canceller may not know it) and the run's stop is returned.
async fn noted(cluster: &Cluster, in_cluster: &InCluster, i: usize, id: u64) -> Result<(), Stop> {
    let Some(why) = in_cluster.sent(i, id) else {
        return Ok(());
    };
    if let Err(e) = cluster.cancel(id, &why).await {
        tracing::warn!("task {id} of a cancelled run was not cancelled in the cluster: {e}");
    }
    in_cluster.ended(i);
    Err(Stop::Cancelled(why))
}

/// How several agents of a node work task `i` in the cluster, if they do: decided by vote
/// (its pool weights as their roles', checked before the run started, see [`refusals`]), or
/// by a team sized from `spec`'s payload. Why the vote cannot go or the team cannot be
/// formed, when it cannot.
fn together_of(
    workflow: &Workflow,
    i: usize,
    spec: &TaskSpec,
) -> Result<Option<colony_cluster::Together>, String> {
    let t = &workflow.tasks[i];
    if let Some(plan) = &t.team {
        let team = plan
            .team(&spec.payload)
            .map_err(|e| format!("the team could not be formed: {e}"))?;
        return Ok(Some(colony_cluster::Together::Team(Box::new(team))));
    }
    t.decide
        .as_ref()
        .map(|vote| decide_of(workflow, t, vote).map(colony_cluster::Together::Vote))
        .transpose()
}

const NOT_LEADING: &str = "this process no longer leads the run";

/// How long a run cancelled for good waits for the sends under way to finish (and cancel
/// what they sent).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Cancels the run's tasks that are in the cluster now, all at once, each for at most the
/// client's patience; a failure is said, not fatal (the task runs to its end there).
async fn cancel_in_cluster(
    cluster: &Cluster,
    in_cluster: &InCluster,
    reason: &str,
    for_good: bool,
) {
    let ids = in_cluster.take(for_good.then_some(reason));
    let cancels = ids.iter().map(|&id| async move {
        if let Err(e) = cluster.cancel(id, reason).await {
            tracing::warn!("task {id} of a cancelled run was not cancelled in the cluster: {e}");
        }
    });
    futures::future::join_all(cancels).await;
}

/// Writes in the book that task `i` went as cluster task `id`. Found written already with
/// the same task (a deposed scheduler sent the same round, which the stream deduplicated),
/// it is taken as is.
async fn note_sent(book: &RunBook, i: usize, id: u64, sending: Sending) -> Result<u64, Stop> {
    let sent = Sent {
        id,
        round: sending.round,
        spent: sending.spent,
    };
    match book.put_sent(i, &sent, sending.revision).await {
        Ok(revision) => Ok(revision),
        Err(lost @ colony_cluster::Error::Lost { .. }) => match book.entry(i).await {
            Ok(Some((found, revision))) if found.id == id && found.round == sending.round => {
                Ok(revision)
            }
            _ => Err(Stop::Halt(lost.to_string())),
        },
        Err(e) => Err(Stop::Halt(e.to_string())),
    }
}

/// Runs `workflow` to completion on `cluster`'s nodes and writes its results here.
pub async fn run_on(
    cluster: &Cluster,
    workflow: &Workflow,
    mut options: ClusterOptions,
) -> Result<Report, colony_runtime::Error> {
    let refused = refusals(workflow);
    if !refused.is_empty() {
        return Err(colony_runtime::Error::Options(format!(
            "this workflow cannot run across a cluster: {}",
            refused.join("; ")
        )));
    }
    let started = Instant::now();
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| workflow.output.clone());
    std::fs::create_dir_all(&output).map_err(|e| {
        colony_runtime::Error::Options(format!("cannot create {}: {e}", output.display()))
    })?;
    let hooks = match workflow.webhooks.is_empty() {
        true => None,
        false => Some(
            crate::webhooks::Webhooks::start(&workflow.name, &workflow.webhooks)
                .map_err(colony_runtime::Error::Options)?,
        ),
    };
    // The workflow's memory is this process's: it recalls into a task's payload before the
    // task goes and remembers its output once it came back and passed its checks.
    let memory = crate::memory::open(workflow, &output).await?;
    // The run's topics are this process's too: a bus of its own, made only if a task waits
    // or publishes, whose waiting tasks' mailboxes are open before anything is published.
    let bus = workflow
        .tasks
        .iter()
        .any(|t| t.wait.is_some() || t.publish.is_some())
        .then(|| Bus::new(MessageOptions::default()));
    let mut waits = match &bus {
        Some(bus) => Some(crate::messages::Waits::open(workflow, bus)?),
        None => None,
    };
    // Bridged to the cluster's bus when asked: agents on nodes that bridge a run's topic
    // (`colony node --bridge-topic`) hear what its tasks publish, and what they publish
    // there reaches the tasks that wait on it.
    let _bridge = match &bus {
        Some(bus) if options.bridge_topics => {
            let mut topics: Vec<String> = workflow
                .tasks
                .iter()
                .flat_map(|t| {
                    t.wait
                        .as_ref()
                        .map(|(topic, _)| topic.to_string())
                        .into_iter()
                        .chain(t.publish.as_ref().map(|p| p.to_string()))
                })
                .collect();
            topics.sort();
            topics.dedup();
            let me = format!("run-{}", colony_cluster::random_id());
            Some(
                colony_cluster::bus::Bridge::start(cluster, bus, &me, &topics)
                    .await
                    .map_err(|e| colony_runtime::Error::Options(e.to_string()))?,
            )
        }
        _ => None,
    };
    let mut writer = Writer::start(&output)?;
    writer.hooks = hooks;
    let waves = workflow.graph.waves();
    if let Some(hooks) = &mut writer.hooks {
        hooks.send(
            crate::webhooks::Kind::RunStarted,
            serde_json::json!({
                "tasks": workflow.tasks.len(),
                "waves": waves.iter().max().map_or(0, |w| w + 1),
                "output": output.display().to_string(),
                "resumed": false,
                "cluster": cluster.url(),
            }),
        );
    }
    let n = workflow.tasks.len();
    let mut results = Results {
        tasks: vec![None; n],
        kept: 0,
    };
    let mut outputs: HashMap<String, Output> = HashMap::new();
    let mut left = Readers::new(workflow);
    let mut submitted_at: Vec<Option<Instant>> = vec![None; n];
    let mut sends = vec![Sending::default(); n];
    // Each task's recall query, kept for a round sent again.
    let mut recalls: Vec<Option<(String, usize)>> = vec![None; n];
    let booked = options.booked.take();
    if let Some(booked) = &booked {
        let entries = booked.book.sent().await.map_err(|e| {
            colony_runtime::Error::Options(format!("run {}: {e}", booked.book.run()))
        })?;
        for (i, (sent, revision)) in entries {
            if i >= n {
                return Err(colony_runtime::Error::Options(format!(
                    "run {}: its book holds task {i}, this workflow has {n}: another workflow's run",
                    booked.book.run()
                )));
            }
            sends[i] = Sending {
                round: sent.round,
                spent: sent.spent,
                revision: Some(revision),
                sent: Some(sent.id),
            };
        }
    }
    let leads = || booked.as_ref().is_none_or(|b| b.lead.term().is_some());
    let mut halted: Option<String> = None;
    let in_cluster = InCluster::default();
    let (mut dag, first) = Run::start(&workflow.graph, &[]);
    let mut steps: Vec<Step> = first;
    let mut ready: BinaryHeap<(colony_core::task::Priority, Reverse<usize>, usize)> =
        BinaryHeap::new();
    let mut readied = 0;
    let mut pending: FuturesUnordered<Waiting> = FuturesUnordered::new();
    // Tasks waiting for their message, unsent: they hold none of the in-flight places.
    let mut listening: FuturesUnordered<Listening> = FuturesUnordered::new();
    let mut arrived: HashMap<usize, serde_json::Value> = HashMap::new();
    // Waiting tasks the book holds sent: their message went with them, and is not known here.
    let mut heard_before: std::collections::HashSet<usize> = Default::default();
    let mut cancel = options
        .cancel
        .take()
        .unwrap_or_else(|| Box::pin(std::future::pending()));
    let mut cancelled = false;
    // A run with a book may be cancelled for good (`colony cluster cancel --run`): then its
    // tasks in the cluster are cancelled too, and nothing more is sent.
    let mut cancelled_for_good: Pin<Box<dyn Future<Output = String> + Send>> = match &booked {
        Some(booked) => {
            let book = booked.book.clone();
            Box::pin(async move { book.cancelled().await })
        }
        None => Box::pin(std::future::pending()),
    };
    let mut for_good: Option<String> = None;
    let max_payload = colony_cluster::MAX_PAYLOAD;
    loop {
        for step in std::mem::take(&mut steps) {
            match step {
                Step::Start(i) => {
                    ready.push((workflow.tasks[i].priority, Reverse(readied), i));
                    readied += 1;
                }
                Step::Skip { node, because } => {
                    if let Some(waits) = &mut waits {
                        waits.close(node);
                    }
                    release(workflow, node, &mut left, &mut outputs);
                    let error = format!(
                        "skipped: `{}` failed or was skipped",
                        workflow.tasks[because].id
                    );
                    let f = finished(workflow, &waves, node, Status::Skipped, None, Some(error));
                    record(&mut writer, &mut options.on_finished, &mut results, node, f);
                }
            }
        }
        while pending.len() < IN_FLIGHT
            && let Some((priority, order, i)) = ready.pop()
        {
            // A task that waits for a message waits here first, unsent; one the book holds
            // sent had its message, and is waited for in the cluster instead.
            if let Some(waits) = &mut waits
                && waits.waits(i)
            {
                let waiting = waits.take(i).expect("checked");
                if sends[i].sent.is_none() {
                    listening.push(Box::pin(async move {
                        (priority, order, i, waiting.wait().await)
                    }));
                    continue;
                }
                heard_before.insert(i);
            }
            let spec = spec_for(workflow, i, &outputs, max_payload).and_then(|(spec, recall)| {
                let spec = match arrived.remove(&i) {
                    Some(message) => crate::messages::with_message(spec, message, max_payload)?,
                    None => spec,
                };
                let together = together_of(workflow, i, &spec)?;
                Ok((spec, recall, together))
            });
            release(workflow, i, &mut left, &mut outputs);
            match spec {
                Ok(_) if !leads() => {
                    halted = Some(NOT_LEADING.into());
                    break;
                }
                Ok((spec, recall, together)) => {
                    submitted_at[i] = Some(Instant::now());
                    // Kept for a round sent again: its input is recalled anew each time.
                    recalls[i] = recall;
                    if let Some(on) = &mut options.on_started {
                        on(&workflow.tasks[i].id);
                    }
                    pending.push(submit_and_wait(
                        cluster,
                        booked.as_ref(),
                        &in_cluster,
                        i,
                        Going::new(
                            workflow,
                            i,
                            spec,
                            together,
                            &recalls[i],
                            memory.as_ref(),
                            bus.as_ref(),
                        ),
                        sends[i],
                    ));
                }
                Err(error) => {
                    let f = finished(workflow, &waves, i, Status::Failed, None, Some(error));
                    steps.extend(dag.on_end(&workflow.graph, i, End::Failed));
                    record(&mut writer, &mut options.on_finished, &mut results, i, f);
                }
            }
        }
        if halted.is_some() {
            break;
        }
        if !steps.is_empty() {
            continue;
        }
        if pending.is_empty() && ready.is_empty() && listening.is_empty() {
            break;
        }
        let (i, mut spec, ended) = tokio::select! {
            // A cancel seen at the same time as a task's end comes first (that end may be
            // the cancel's own), then Ctrl-C, then ends and messages.
            biased;
            why = &mut cancelled_for_good => {
                for_good = Some(why);
                break;
            }
            () = &mut cancel => {
                cancelled = true;
                // Without a book the run ends here: so do its tasks in the cluster. With one,
                // they run on for whoever takes the run over.
                if booked.is_none() {
                    cancel_in_cluster(cluster, &in_cluster, "its workflow run was cancelled", false).await;
                }
                break;
            }
            Some(done) = pending.next() => done,
            Some((priority, order, i, heard)) = listening.next() => {
                match heard {
                    // Back to its place among the ready tasks, with its message.
                    Ok(message) => {
                        arrived.insert(i, message);
                        ready.push((priority, order, i));
                    }
                    // A scheduler deposed meanwhile records nothing more.
                    Err(_) if !leads() => {
                        halted = Some(NOT_LEADING.into());
                        break;
                    }
                    Err(error) => {
                        release(workflow, i, &mut left, &mut outputs);
                        let f = finished(workflow, &waves, i, Status::Failed, None, Some(error));
                        steps.extend(dag.on_end(&workflow.graph, i, End::Failed));
                        record(&mut writer, &mut options.on_finished, &mut results, i, f);
                    }
                }
                continue;
            }
        };
        let t = &workflow.tasks[i];
        let mut f = finished(workflow, &waves, i, Status::Failed, None, None);
        f.seconds = submitted_at[i].map_or(0.0, |at| at.elapsed().as_secs_f64());
        let end = match ended {
            Err(Stop::Halt(why)) => {
                halted = Some(why);
                break;
            }
            Err(Stop::Cancelled(why)) => {
                for_good = Some(why);
                break;
            }
            Err(Stop::Task(e)) => {
                f.attempts = sends[i].spent;
                f.error = Some(format!("the cluster: {e}"));
                End::Failed
            }
            Err(Stop::Failed(e)) => {
                f.attempts = sends[i].spent;
                f.error = Some(e);
                End::Failed
            }
            Ok((row, revision, checked)) => {
                if revision.is_some() {
                    sends[i].revision = revision;
                }
                f.attempts = sends[i].spent.saturating_add(row.attempt);
                f.agent = row.agent.and_then(|a| u32::try_from(a).ok());
                f.node = Some(row.node.clone());
                f.cluster_decision = row.decision.clone();
                f.cluster_team = row.team.clone();
                // A vote's or a team's output that fails its checks fails the task, as on
                // one runtime: its voters or members are not asked again.
                let together = t.decide.is_some() || t.team.is_some();
                match checked {
                    Checked::Unkept(e) => {
                        f.error = Some(e);
                        End::Failed
                    }
                    Checked::Passed(output) => {
                        let value = Output::new(output);
                        if left.wanted(i) {
                            outputs.insert(t.id.clone(), value.for_readers());
                        }
                        f.status = Status::Succeeded;
                        f.output = Some(value);
                        End::Succeeded
                    }
                    Checked::Failed(failed) if !together && heard_before.contains(&i) => {
                        f.error = Some(format!(
                            "{failed}; not sent again: the message it waited for went with the cluster task this run's book holds, before this scheduler took the run over"
                        ));
                        End::Failed
                    }
                    Checked::Failed(failed) if !together => {
                        let send = &mut sends[i];
                        send.spent = send.spent.saturating_add(row.attempt.max(1));
                        if send.spent < t.max_attempts {
                            if !leads() {
                                halted = Some(NOT_LEADING.into());
                                break;
                            }
                            // Another cluster task, with the attempts left, its input
                            // recalled anew.
                            spec.max_attempts = t.max_attempts - send.spent;
                            send.round = send.round.saturating_add(1);
                            // Its cluster task of the round before has ended.
                            send.sent = None;
                            let going = Going::new(
                                workflow,
                                i,
                                spec,
                                None,
                                &recalls[i],
                                memory.as_ref(),
                                bus.as_ref(),
                            );
                            pending.push(submit_and_wait(
                                cluster,
                                booked.as_ref(),
                                &in_cluster,
                                i,
                                going,
                                *send,
                            ));
                            continue;
                        }
                        f.error = Some(failed);
                        End::Failed
                    }
                    Checked::Failed(failed) => {
                        f.error = Some(failed);
                        End::Failed
                    }
                    Checked::Ended => {
                        let state = serde_json::to_value(row.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        f.error = Some(row.error.clone().unwrap_or(state));
                        End::Failed
                    }
                }
            }
        };
        record(&mut writer, &mut options.on_finished, &mut results, i, f);
        steps.extend(dag.on_end(&workflow.graph, i, end));
    }
    if let Some(why) = &for_good {
        tracing::warn!("the run was {why}: its tasks in the cluster are cancelled");
        cancelled = true;
        // The canceller cancels what the book holds; these may not be in it yet. Sends under
        // way then finish and cancel what they sent, and waits end with their records.
        cancel_in_cluster(cluster, &in_cluster, why, true).await;
        let drained = async { while pending.next().await.is_some() {} };
        if tokio::time::timeout(DRAIN, drained).await.is_err() {
            tracing::warn!(
                "tasks of the cancelled run still being sent after {}s: they may run to their end",
                DRAIN.as_secs()
            );
        }
    }
    if let (Some(why), Some(booked)) = (halted, &booked) {
        return Err(colony_runtime::Error::Options(format!(
            "stopped scheduling run {}: {why}; the tasks sent run to their end, and a standby \
             or the same command with the same --run-id goes on from the run's book",
            booked.book.run()
        )));
    }
    conclude(
        workflow,
        &waves,
        results,
        writer,
        RunEnd {
            cancelled,
            started,
            output,
            usage: Default::default(),
        },
    )
    .await
}
