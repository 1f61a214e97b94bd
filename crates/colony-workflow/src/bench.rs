//! `colony bench workflow`: a generated graph, run end to end, for the cost per task.

use crate::{Options, Report};
use colony_journal::MemoryJournal;
use colony_runtime::RuntimeOptions;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use std::{fmt::Write, path::Path, sync::Arc, time::Instant};

/// The agents of a generated workflow.
#[derive(Clone, Debug)]
pub enum Agents {
    /// Sim agents answering at once, failing retryably at `error_rate`.
    Sim { count: u32, error_rate: f64 },
    /// Agents running `program` once per task.
    Command { count: u32, program: String },
}

/// A workflow of `tasks` tasks in which each task after the first tenth needs up to three
/// earlier ones, chosen at random from `seed`.
pub fn generate(tasks: usize, agents: &Agents, seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut y = format!(
        "# {tasks} tasks in a random graph, made by\n# `colony bench workflow --tasks {tasks} --seed {seed} --write FILE`.\nname: dag-{tasks}\nagents:\n"
    );
    match agents {
        Agents::Sim { count, error_rate } => {
            let _ = writeln!(
                y,
                "  - {{name: worker, kind: sim, count: {count}, sim: {{error-rate: {error_rate}, seed: {seed}}}}}"
            );
        }
        Agents::Command { count, program } => {
            let _ = writeln!(
                y,
                "  - {{name: worker, kind: command, count: {count}, command: {{program: {program:?}}}}}"
            );
        }
    }
    y.push_str("tasks:\n");
    let roots = (tasks / 10).max(1);
    for i in 0..tasks {
        if i < roots {
            let _ = writeln!(y, "  - {{id: t{i}}}");
            continue;
        }
        let mut needs: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..i))
            .collect();
        needs.sort_unstable();
        needs.dedup();
        let needs: Vec<String> = needs.iter().map(|n| format!("t{n}")).collect();
        let _ = writeln!(y, "  - {{id: t{i}, needs: [{}]}}", needs.join(", "));
    }
    y
}

/// What `colony bench workflow` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub tasks: usize,
    pub waves: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Reading and checking the file.
    pub check_seconds: f64,
    /// Running it, results written.
    pub run_seconds: f64,
    /// Run time per task: with agents that answer at once, the orchestration's own cost.
    pub us_per_task: f64,
    pub tasks_per_second: f64,
}

/// Generates, checks and runs a workflow in `out`.
pub async fn run(
    tasks: usize,
    agents: &Agents,
    seed: u64,
    out: &Path,
) -> Result<BenchReport, String> {
    let yaml = generate(tasks, agents, seed);
    let checking = Instant::now();
    let workflow =
        crate::parse(&yaml, "generated.yaml", Path::new(".")).map_err(|e| e.to_string())?;
    let check_seconds = checking.elapsed().as_secs_f64();
    let waves = workflow
        .graph
        .waves()
        .into_iter()
        .max()
        .map_or(0, |w| w + 1);
    let options = Options {
        runtime: RuntimeOptions::default(),
        journal: Arc::new(MemoryJournal::new()),
        output: Some(out.to_owned()),
        on_finished: None,
        cancel: None,
        prior: Vec::new(),
    };
    let running = Instant::now();
    let report: Report = crate::run(&workflow, options)
        .await
        .map_err(|e| e.to_string())?;
    let run_seconds = running.elapsed().as_secs_f64();
    Ok(BenchReport {
        tasks,
        waves,
        succeeded: report.succeeded,
        failed: report.failed,
        skipped: report.skipped,
        check_seconds,
        run_seconds,
        us_per_task: run_seconds * 1e6 / tasks as f64,
        tasks_per_second: tasks as f64 / run_seconds,
    })
}
