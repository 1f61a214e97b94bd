//! `colony bench restart`, the W4 workload: one supervisor of `children` workers, killed one
//! at a time; each kill is timed until its replacement has answered a task.
//!
//! The probe task must land on the replacement and nowhere else, and routing picks among idle
//! workers. So every worker first takes a *held* task, which runs until the end of the run:
//! when one is killed, its held attempt is stopped (to retry after the retry backoff) and its
//! replacement is the one idle worker in the swarm when the probe arrives. The completion
//! names the agent that answered, and the verdict checks that it is the killed one.

use super::{Percentiles, Verdict};
use crate::{Error, Pool, RetryOptions, Runtime, RuntimeOptions, SpawnMode};
use bytes::Bytes;
use colony_agents::{Agent, AgentSpec, Execution, Task};
use colony_core::{
    AgentId,
    hierarchy::Tiers,
    supervision::{Strategy, SupervisorOptions},
    task::{Priority, TaskSpec, TaskState},
};
use colony_journal::MemoryJournal;
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// Most children of the one supervisor: the hierarchy's largest span.
pub const MAX_CHILDREN: u32 = colony_core::hierarchy::MAX_SPAN;
/// Most kills of one run.
pub const MAX_KILLS: u32 = 100_000;
/// Longest wait for a replacement's answer, or for the swarm to be busy again, before the run
/// is judged failed.
const PATIENCE: Duration = Duration::from_secs(5);
/// Delay before a killed held task runs again: long enough that the probe, not the held task,
/// reaches the replacement first (its turn takes microseconds), short enough to keep a run of
/// 100 kills within seconds.
const HELD_RETRY: Duration = Duration::from_millis(20);
/// The probe's payload; anything else is held.
const PROBE: &[u8] = b"\"probe\"";

/// What `colony bench restart` measured.
#[derive(Clone, Debug, Serialize)]
pub struct RestartReport {
    pub children: u32,
    pub kills: u32,
    /// From the kill until the caller holds the replacement's answer to a probe task: the
    /// kill command, the restart, the probe's submission, dispatch and completion.
    pub kill_to_answer: Percentiles,
    /// From the kill to the replacement in service, as the dispatcher measures it.
    pub dispatcher_restart: Percentiles,
    /// Probes answered by the replacement of the worker just killed.
    pub answered_by_replacement: u32,
    /// Agents brought back into service, as the runtime counts them.
    pub restarts: u64,
    pub escalations: u64,
    pub seconds: f64,
    /// Whether every kill was followed by its replacement's answer, and every task succeeded.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Answers probes at once; holds every other task until the run releases it.
struct Holder {
    release: watch::Receiver<bool>,
}

impl Agent for Holder {
    fn handle(&self, task: Task) -> Execution {
        if task.payload == PROBE {
            return Execution::Done(Ok(task.payload));
        }
        let mut release = self.release.clone();
        Execution::Running(Box::pin(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    changed = release.wait_for(|&r| r) => {
                        // A closed channel means the run is over as well.
                        let _ = changed;
                        return Ok(Bytes::from_static(b"{}"));
                    }
                    // A held attempt is not a hang: the health sweep must not replace it.
                    _ = beat.tick() => task.heartbeat.beat(),
                }
            }
        }))
    }
}

/// Waits until `children` attempts run and nothing is queued, or `PATIENCE` passes.
async fn all_busy(runtime: &Runtime, children: u32) -> bool {
    let until = Instant::now() + PATIENCE;
    loop {
        let stats = runtime.handle().stats();
        if stats.running == u64::from(children) && stats.queued == 0 {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Kills the children of one supervisor one at a time, `kills` times in all (child `k` mod
/// `children`, as Erlang's W4 does), timing each kill until the replacement has answered.
pub async fn restart(children: u32, kills: u32) -> Result<RestartReport, Error> {
    if !(2..=MAX_CHILDREN).contains(&children) {
        return Err(Error::Options(format!(
            "{children} children is out of range: allowed 2..={MAX_CHILDREN}"
        )));
    }
    if !(1..=MAX_KILLS).contains(&kills) {
        return Err(Error::Options(format!(
            "{kills} kills is out of range: allowed 1..={MAX_KILLS}"
        )));
    }
    let (release, released) = watch::channel(false);
    let pool = Pool::new(
        AgentSpec::new("holder", "worker"),
        children,
        Arc::new(Holder { release: released }),
    );
    let options = RuntimeOptions {
        span: children,
        tiers: Tiers::Named(vec!["supervisor".into(), "worker".into()]),
        spawn: SpawnMode::Batch,
        retry: RetryOptions {
            initial_backoff: HELD_RETRY,
            max_backoff: HELD_RETRY,
            jitter: 0.0,
            ..RetryOptions::default()
        },
        // Erlang's W4 supervisor: one-for-one, an intensity no run reaches.
        supervision: SupervisorOptions {
            strategy: Strategy::OneForOne,
            max_restarts: 1_000_000,
            period: Duration::from_secs(1),
            ..SupervisorOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new())).await?;
    let result = kill_each(&runtime, children, kills).await;
    let _ = release.send(true);
    let drained = tokio::time::timeout(PATIENCE, runtime.handle().drain()).await;
    let stats = runtime.handle().stats();
    let counts = runtime.handle().journal().counts();
    let timings = runtime.handle().timings();
    runtime.shutdown().await;
    let (samples, answered, mut verdict, seconds) = result?;
    let counts = counts?;
    verdict.check(matches!(drained, Ok(Ok(()))), || {
        "the held tasks did not all end after their release".into()
    });
    let tasks = u64::from(children) + u64::from(answered);
    verdict.check(
        counts.succeeded == tasks && stats.succeeded == tasks,
        || {
            format!(
                "{} tasks succeeded in the journal and {} in the runtime, not {tasks} ({children} held, {answered} probes)",
                counts.succeeded, stats.succeeded
            )
        },
    );
    verdict.check(
        counts.failed + counts.dead_lettered + counts.cancelled == 0,
        || {
            format!(
                "{} failed, {} dead-lettered, {} cancelled: a kill must not cost a task",
                counts.failed, counts.dead_lettered, counts.cancelled
            )
        },
    );
    verdict.check(stats.restarts == u64::from(answered), || {
        format!(
            "{} agents restarted for {answered} kills answered",
            stats.restarts
        )
    });
    verdict.check(stats.escalations == 0, || {
        format!("{} supervisors escalated", stats.escalations)
    });
    Ok(RestartReport {
        children,
        kills,
        kill_to_answer: Percentiles::of(samples),
        dispatcher_restart: Percentiles::of(timings.restart),
        answered_by_replacement: answered,
        restarts: stats.restarts,
        escalations: stats.escalations,
        seconds,
        verdict,
    })
}

/// The kills themselves: per kill, the time to the replacement's answer.
async fn kill_each(
    runtime: &Runtime,
    children: u32,
    kills: u32,
) -> Result<(Vec<std::time::Duration>, u32, Verdict, f64), Error> {
    let handle = runtime.handle();
    let mut verdict = Verdict::new();
    let held = TaskSpec {
        timeout: colony_core::task::MAX_TIMEOUT,
        ..TaskSpec::with_payload("{}")
    };
    handle.submit_batch(vec![held; children as usize]).await?;
    let first_worker = (handle.stats().agents - u64::from(children)) as u32;
    let probe = TaskSpec {
        priority: Priority::HIGHEST,
        ..TaskSpec::with_payload(std::str::from_utf8(PROBE).expect("ASCII"))
    };
    let mut samples = Vec::with_capacity(kills as usize);
    let mut answered = 0;
    let started = Instant::now();
    for k in 0..kills {
        if !all_busy(runtime, children).await {
            verdict.check(false, || {
                format!(
                    "before kill {k}: the {children} workers were not all busy again within {PATIENCE:?}"
                )
            });
            break;
        }
        let victim = AgentId(first_worker + k % children);
        // The probe goes first, and waits in the queue (every worker is busy): the kill then
        // reaches the dispatcher ahead of the held task's retry (20 ms later), so the
        // replacement's first task is the probe even when this task is slow to run again.
        let t0 = Instant::now();
        let pending = handle.submit_notify(probe.clone()).await?;
        handle.kill(victim)?;
        let completion = match tokio::time::timeout(PATIENCE, pending).await {
            Ok(c) => c?,
            Err(_) => {
                verdict.check(false, || {
                    format!("kill {k}: no answer to the probe within {PATIENCE:?}")
                });
                break;
            }
        };
        let took = t0.elapsed();
        let by_replacement =
            completion.agent == Some(victim) && completion.state == TaskState::Succeeded;
        verdict.check(by_replacement, || {
            format!(
                "kill {k}: the probe was answered by {:?} ({:?}), not by {victim}'s replacement",
                completion.agent, completion.state
            )
        });
        if !by_replacement {
            break;
        }
        answered += 1;
        samples.push(took);
    }
    Ok((samples, answered, verdict, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kill_is_answered_by_its_replacement() {
        let report = restart(10, 12).await.unwrap();
        assert!(report.verdict.ok, "{:?}", report.verdict.problems);
        assert_eq!(report.answered_by_replacement, 12);
        assert_eq!(report.kill_to_answer.samples, 12);
        assert_eq!(report.restarts, 12);
        assert_eq!(report.dispatcher_restart.samples, 12);
        // Generous: the first restart of a child is immediate, so a replacement answers
        // within a second even on a loaded machine.
        assert!(report.kill_to_answer.max_us < 1e6, "{report:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_range_sizes_are_refused() {
        let e = restart(1, 5).await.unwrap_err().to_string();
        assert!(e.contains("1 children is out of range"), "{e}");
        let e = restart(10, 0).await.unwrap_err().to_string();
        assert!(e.contains("0 kills is out of range"), "{e}");
    }
}
