//! `colony bench warm`: how long a `process` agent's first task waits for its process, cold
//! (started for it) and warm (taken from the pool's pre-started processes). Each new agent's
//! first task is timed from its hand-over until its answer, against a small Python agent that
//! answers at once; between two new agents the warm pool has time to refill, as it has between
//! an autoscaler's steps.

use super::{Percentiles, Verdict};
use crate::Error;
use bytes::Bytes;
use colony_agents::{
    Agent, Execution, Task,
    process::{Process, ProcessOptions},
};
use colony_core::{AgentId, TaskId};
use serde::Serialize;
use std::time::{Duration, Instant};

/// A protocol-speaking agent that answers every task at once.
const AGENT: &str = r#"
import json, sys
print(json.dumps({"type": "hello", "protocol": 1}), flush=True)
for line in sys.stdin:
    m = json.loads(line)
    print(json.dumps({"type": "result", "id": m["id"], "output": {}}), flush=True)
"#;

/// Most new agents one run times.
pub const MAX_AGENTS: u32 = 10_000;
/// The target for a warm first task, at the 99th percentile.
const TARGET: Duration = Duration::from_millis(5);

/// What `colony bench warm` measured.
#[derive(Clone, Debug, Serialize)]
pub struct WarmReport {
    pub agents: u32,
    pub warm: u32,
    /// First tasks of new agents whose process was started for them.
    pub cold: Percentiles,
    /// First tasks of new agents that took a pre-started process.
    pub warmed: Percentiles,
    /// Whether the warm first task's p99 is within 5 ms and every task succeeded.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Times `agents` new agents' first tasks cold, then warm with `warm` pre-started processes.
pub async fn warm(agents: u32, warm: u32) -> Result<WarmReport, Error> {
    if !(1..=MAX_AGENTS).contains(&agents) {
        return Err(Error::Options(format!(
            "{agents} agents is out of range: allowed 1..={MAX_AGENTS}"
        )));
    }
    if !(1..=1_000).contains(&warm) {
        return Err(Error::Options(format!(
            "a warm pool of {warm} is out of range: allowed 1..=1000"
        )));
    }
    let mut verdict = Verdict::new();
    let cold = first_tasks(agents, 0, &mut verdict).await?;
    let warmed = first_tasks(agents, warm, &mut verdict).await?;
    let warmed = Percentiles::of(warmed);
    verdict.check(warmed.p99_us <= TARGET.as_secs_f64() * 1e6, || {
        format!(
            "a warm first task took {:.2} ms at the 99th percentile: the target is {} ms",
            warmed.p99_us / 1e3,
            TARGET.as_millis()
        )
    });
    Ok(WarmReport {
        agents,
        warm,
        cold: Percentiles::of(cold),
        warmed,
        verdict,
    })
}

/// The first task of each of `agents` new agents, with `warm` pre-started processes.
async fn first_tasks(
    agents: u32,
    warm: u32,
    verdict: &mut Verdict,
) -> Result<Vec<Duration>, Error> {
    let mut options = ProcessOptions::new("python3");
    options.args = vec!["-c".into(), AGENT.into()];
    options.warm = warm;
    let process = Process::new(options);
    // The pool fills once it has handled a task: agent 0's.
    run(&process, 0)
        .await
        .map_err(|e| Error::Options(format!("the bench's Python agent did not answer: {e}")))?;
    let mut times = Vec::with_capacity(agents as usize);
    for agent in 1..=agents {
        if warm > 0 {
            let until = Instant::now() + Duration::from_secs(30);
            while process.warm() < warm as usize {
                if Instant::now() > until {
                    return Err(Error::Options(
                        "the warm pool did not refill within 30 s".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let started = Instant::now();
        let outcome = run(&process, agent).await;
        times.push(started.elapsed());
        verdict.check(outcome.is_ok(), || {
            format!("agent {agent}'s first task failed: {outcome:?}")
        });
    }
    Ok(times)
}

async fn run(process: &Process, agent: u32) -> colony_agents::Outcome {
    let task = Task::new(TaskId(1), 1, AgentId(agent), Bytes::from_static(b"{}"));
    match process.handle(task) {
        Execution::Running(running) => running.await,
        Execution::Done(outcome) => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_new_agent_is_timed_cold_and_warm() {
        let report = warm(5, 2).await.unwrap();
        assert_eq!((report.cold.samples, report.warmed.samples), (5, 5));
        // Every first task succeeded; the verdict may only say so, or name the time.
        assert!(
            report
                .verdict
                .problems
                .iter()
                .all(|p| p.contains("99th percentile")),
            "{:?}",
            report.verdict.problems
        );
    }

    #[tokio::test]
    async fn out_of_range_is_refused_naming_it() {
        let e = warm(0, 2).await.unwrap_err();
        assert!(e.to_string().contains("agents"), "{e}");
        let e = warm(5, 0).await.unwrap_err();
        assert!(e.to_string().contains("warm pool"), "{e}");
    }
}
