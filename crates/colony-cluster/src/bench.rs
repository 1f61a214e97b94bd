//! `colony bench cluster`: tasks end to end through JetStream. One submitter publishes
//! `tasks` no-op tasks with up to 1,024 in flight; `nodes` in-process nodes, each with its own
//! runtime of sim agents and its own NATS connection, run them; a watcher of the tasks bucket
//! sees each end. Throughput is tasks ended over the time from the first publish to the last
//! end; latency per task is from its publish to the watcher seeing its end. With `voters`,
//! each task is a majority vote among that many of its node's agents (sent by
//! [`Cluster::submit_decided`], up to 1,024 at once), checked decided as they voted. With
//! `command`, the nodes' agents are `command` agents running that program once per task.

use crate::{Cluster, Node, NodeOptions, Row, Settings};
use bytes::Bytes;
use colony_agents::{
    command::{Command, CommandOptions},
    sim::{Latency, Sim, SimOptions},
};
use colony_core::{agent::AgentSpec, task::TaskSpec, task::TaskState};
use colony_runtime::{
    Pool, Runtime, RuntimeOptions,
    bench::{Percentiles, Verdict},
};
use futures::StreamExt;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// Tasks per second the cluster must carry end to end, R3 with `sync_interval: always`.
pub const TARGET_PER_SECOND: f64 = 10_000.0;
/// Tasks per second with a process per task (`command`): the runtime's own target for
/// `command` agents on one machine, which the cluster must not lower.
pub const COMMAND_TARGET_PER_SECOND: f64 = 1_000.0;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub tasks: u64,
    pub nodes: usize,
    /// Sim agents per node.
    pub agents: u32,
    /// Attempts each node runs at once.
    pub in_flight: usize,
    pub payload_bytes: usize,
    /// Each task a majority vote among this many of its node's agents; 0: plain tasks.
    pub voters: u32,
    /// Each vote spread over the cluster: its ballots are cluster tasks of their own, run by
    /// any node's agents, counted by the node that takes the vote.
    pub spread: bool,
    /// The nodes' agents run this program once per task (`command` agents), not sims.
    pub command: Option<String>,
    /// Up to this many plain tasks in one message ([`Cluster::submit_bundled`]); 0 or 1:
    /// one each.
    pub bundle: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub tasks: u64,
    pub nodes: usize,
    pub replicas: usize,
    /// Voters of each task, when each is a vote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voters: Option<u32>,
    /// Each vote was spread over the cluster.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spread: bool,
    /// The program each task ran, with `command` agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Most tasks in one message, when they were bundled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<usize>,
    /// Votes whose record did not say they were decided by all their voters as one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecided: Option<u64>,
    pub seconds: f64,
    pub per_second: f64,
    /// From publish to the end seen, per task.
    pub latency: Percentiles,
    /// Attempts started over all nodes: more than `tasks` when some ran twice.
    pub attempts: u64,
    pub fenced: u64,
    /// Tasks that did not succeed.
    pub unsucceeded: u64,
    pub verdict: Verdict,
}

/// Runs the benchmark against the (empty) cluster at `url`.
pub async fn run(
    url: &str,
    settings: Settings,
    options: &BenchOptions,
) -> Result<BenchReport, crate::Error> {
    if options.spread && options.voters == 0 {
        return Err(crate::Error::Settings(
            "--spread spreads votes, and no vote is asked: give --voters".into(),
        ));
    }
    if options.bundle > 1 && options.voters > 0 {
        return Err(crate::Error::Settings(
            "--bundle bundles plain tasks, and a vote goes alone: give one of them".into(),
        ));
    }
    if options.bundle > crate::bundle::MAX_TASKS {
        return Err(crate::Error::Settings(format!(
            "--bundle {}: a message carries at most {} tasks",
            options.bundle,
            crate::bundle::MAX_TASKS
        )));
    }
    // A spread vote's voters are any node's agents.
    if options.voters > options.agents && !options.spread {
        return Err(crate::Error::Settings(format!(
            "--voters {} is more than the {} agents of a node",
            options.voters, options.agents
        )));
    }
    let client = Cluster::connect(url, settings.clone()).await?;
    let status = client.status().await?;
    if status.unfinished > 0 {
        return Err(crate::Error::Settings(format!(
            "the cluster at {url} holds {} unfinished tasks: benchmark an empty one",
            status.unfinished
        )));
    }
    let mut nodes = Vec::new();
    let mut runtimes = Vec::new();
    for i in 0..options.nodes {
        let pool = match &options.command {
            Some(program) => Pool::new(
                AgentSpec::new("command", "bench"),
                options.agents,
                Arc::new(Command::new(CommandOptions::new(program.clone()))),
            ),
            None => {
                let sim = Sim::new(SimOptions {
                    latency: Latency::Fixed {
                        value: Duration::ZERO,
                    },
                    ..SimOptions::default()
                })
                .map_err(|e| crate::Error::Settings(e.to_string()))?;
                Pool::new(
                    AgentSpec::new("sim", "bench"),
                    options.agents,
                    Arc::new(sim),
                )
            }
        };
        let journal = Arc::new(colony_journal::MemoryJournal::new());
        let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], journal)
            .await
            .map_err(|e| crate::Error::Settings(e.to_string()))?;
        let cluster = Cluster::connect(url, settings.clone()).await?;
        let node = Node::start(
            cluster,
            runtime.handle().clone(),
            NodeOptions {
                name: format!("bench-{}", i + 1),
                max_in_flight: options.in_flight,
                drain_timeout: Duration::from_secs(10),
            },
        )
        .await?;
        nodes.push(node);
        runtimes.push(runtime);
    }
    // The watcher starts before the first publish: it sees every end.
    let mut watch = client
        .tasks
        .watch_all()
        .await
        .map_err(|e| crate::Error::nats("watching the tasks bucket", e))?;
    let payload = Bytes::from(format!(
        "\"{}\"",
        "x".repeat(options.payload_bytes.saturating_sub(2))
    ));
    let spec = TaskSpec {
        requirement: colony_core::task::Requirement {
            role: Some("bench".into()),
            ..Default::default()
        },
        payload,
        ..TaskSpec::default()
    };
    let started = Instant::now();
    let publisher = {
        let client = client.clone();
        let total = options.tasks;
        let voters = options.voters;
        let spread = options.spread;
        let bundle = options.bundle;
        colony_agents::spawner::Spawner::spawn("bench-publish", async move {
            let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(total as usize);
            if voters > 0 {
                let decide = crate::Decide {
                    voters,
                    options: colony_core::decision::DecisionOptions::default(),
                    reputation: false,
                    role_weights: Default::default(),
                    spread,
                };
                let (client, spec, decide) = (&client, &spec, &decide);
                let mut going = futures::stream::iter(0..total)
                    .map(|_| async move {
                        let at = Instant::now();
                        client
                            .submit_decided(spec, decide, None)
                            .await
                            .map(|s| (s.id, at))
                    })
                    .buffer_unordered(1024);
                while let Some(s) = going.next().await {
                    let (id, at) = s?;
                    sent.insert(id, at);
                }
                return Ok::<_, crate::Error>(sent);
            }
            let chunk = 4096u64;
            let mut done = 0;
            while done < total {
                let n = chunk.min(total - done);
                let specs = vec![spec.clone(); n as usize];
                let at = Instant::now();
                let submitted = match bundle {
                    0 | 1 => client.submit(&specs, None).await?,
                    n => client.submit_bundled(&specs, n, None).await?,
                };
                for s in submitted {
                    sent.insert(s.id, at);
                }
                done += n;
            }
            Ok::<_, crate::Error>(sent)
        })
    };
    let mut ended: HashMap<u64, (Instant, TaskState)> =
        HashMap::with_capacity(options.tasks as usize);
    let mut undecided = 0u64;
    let deadline = Duration::from_secs(60) + Duration::from_millis(options.tasks);
    while (ended.len() as u64) < options.tasks {
        let next =
            tokio::time::timeout(deadline.saturating_sub(started.elapsed()), watch.next()).await;
        let Ok(Some(entry)) = next else { break };
        let Ok(entry) = entry else { continue };
        let Ok(row) = Row::decode(&entry.value) else {
            continue;
        };
        // A spread vote's ballots are tasks of their own, whose records say no decision.
        let ballot = options.spread && row.decision.is_none();
        if row.is_terminal()
            && !ballot
            && let Some(Ok(id)) = entry.key.rsplit('.').next().map(str::parse::<u64>)
            && !ended.contains_key(&id)
        {
            ended.insert(id, (Instant::now(), row.state));
            // The sim voters echo the question: a vote is decided by all of them as one (with
            // `command`, as long as the program says the same each time, as `true` does).
            let decided = row
                .decision
                .as_ref()
                .is_some_and(|d| d.voters == options.voters && d.dissenters == 0);
            if options.voters > 0 && !decided {
                undecided += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let sent = match publisher.await {
        Ok(Some(Ok(sent))) => sent,
        Ok(Some(Err(e))) => return Err(e),
        _ => return Err(crate::Error::Task("the publisher panicked".into())),
    };
    let mut reports = Vec::new();
    for node in nodes {
        reports.push(node.drain().await);
    }
    for runtime in runtimes {
        runtime.shutdown().await;
    }
    let latency = Percentiles::of(
        ended
            .iter()
            .filter_map(|(id, (at, _))| sent.get(id).map(|s| at.saturating_duration_since(*s)))
            .collect(),
    );
    let unsucceeded = options.tasks
        - ended
            .values()
            .filter(|(_, s)| *s == TaskState::Succeeded)
            .count() as u64;
    let per_second = ended.len() as f64 / seconds.max(1e-9);
    let mut verdict = Verdict::new();
    verdict.check(unsucceeded == 0, || {
        format!(
            "{unsucceeded} of {} tasks did not succeed (or were not seen to end)",
            options.tasks
        )
    });
    verdict.check(settings.replicas >= 3, || {
        format!(
            "R{}: the target is for R3 with sync_interval: always",
            settings.replicas
        )
    });
    verdict.check(undecided == 0, || {
        format!("{undecided} votes were not decided by all their voters as one")
    });
    // The target is for tasks; a vote's throughput is reported, not judged.
    let target = match options.command {
        Some(_) => COMMAND_TARGET_PER_SECOND,
        None => TARGET_PER_SECOND,
    };
    verdict.check(options.voters > 0 || per_second >= target, || {
        format!(
            "{per_second:.0} tasks/s end to end: the target is {target:.0}/s ({:.1}x short)",
            target / per_second.max(1e-9)
        )
    });
    Ok(BenchReport {
        tasks: options.tasks,
        nodes: options.nodes,
        replicas: settings.replicas,
        voters: (options.voters > 0).then_some(options.voters),
        spread: options.spread,
        command: options.command.clone(),
        bundle: (options.bundle > 1 && options.voters == 0).then_some(options.bundle),
        undecided: (options.voters > 0).then_some(undecided),
        seconds,
        per_second,
        latency,
        attempts: reports.iter().map(|r| r.started).sum(),
        fenced: reports.iter().map(|r| r.fenced).sum(),
        unsucceeded,
        verdict,
    })
}
