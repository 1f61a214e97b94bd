//! `colony bench workflow`: a generated graph, run end to end, for the cost per task.

use crate::{Options, Report};
use colony_journal::{Journal, MemoryJournal};
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
    pub cancelled: usize,
    /// Tasks that ran: succeeded or failed. Skipped tasks never started, and do not count in
    /// the rates below.
    pub ran: usize,
    /// Tasks the run's journal holds in a terminal state: must equal `ran`.
    pub journal_terminal: u64,
    /// Reading and checking the file.
    pub check_seconds: f64,
    /// Running it, results written.
    pub run_seconds: f64,
    /// Run time per task that ran: with agents that answer at once, the orchestration's own
    /// cost.
    pub us_per_task: f64,
    /// Tasks that ran, per second.
    pub tasks_per_second: f64,
    /// Whether every task ended once, and none failed or was skipped unless errors were
    /// injected.
    pub ok: bool,
    /// What went wrong, one sentence each; empty when `ok`.
    pub problems: Vec<String>,
}

impl BenchReport {
    /// The verdict on a run of `tasks` tasks: every one ended once; without injected errors
    /// none failed, was skipped or cancelled; with them, a skip has a failure behind it.
    fn judge(&mut self, agents: &Agents) {
        let mut problems = Vec::new();
        let ended = self.succeeded + self.failed + self.skipped + self.cancelled;
        if self.journal_terminal != self.ran as u64 {
            problems.push(format!(
                "the journal holds {} tasks ended, not the {} that ran",
                self.journal_terminal, self.ran
            ));
        }
        if ended != self.tasks {
            problems.push(format!(
                "{ended} tasks ended of {}: {} succeeded, {} failed, {} skipped, {} cancelled",
                self.tasks, self.succeeded, self.failed, self.skipped, self.cancelled
            ));
        }
        let injected = matches!(agents, Agents::Sim { error_rate, .. } if *error_rate > 0.0);
        if !injected && self.failed + self.skipped > 0 {
            problems.push(format!(
                "{} failed and {} skipped with no error injected",
                self.failed, self.skipped
            ));
        }
        if let Agents::Sim { error_rate, .. } = agents
            && *error_rate > 0.0
        {
            // A task fails only when every attempt does: p^attempts of those that ran, with
            // room for chance (four times that, plus three).
            let attempts = crate::check::DEFAULT_RETRIES as i32 + 1;
            let allowed = (self.ran as f64 * error_rate.powi(attempts) * 4.0).ceil() as u64 + 3;
            if self.failed as u64 > allowed {
                problems.push(format!(
                    "{} tasks failed: an error rate of {error_rate} over {attempts} attempts \
                     allows about {allowed} of {} that ran",
                    self.failed, self.ran
                ));
            }
        }
        if self.succeeded == 0 {
            problems.push("no task succeeded".to_owned());
        }
        if injected && self.skipped > 0 && self.failed == 0 {
            problems.push(format!("{} skipped with no task failed", self.skipped));
        }
        if self.cancelled > 0 {
            problems.push(format!(
                "{} cancelled: nothing cancels a bench",
                self.cancelled
            ));
        }
        if self.ran == 0 {
            problems.push("no task ran".to_owned());
        }
        self.ok = problems.is_empty();
        self.problems = problems;
    }
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
    let journal = Arc::new(MemoryJournal::new());
    let options = Options {
        runtime: RuntimeOptions::default(),
        journal: journal.clone(),
        output: Some(out.to_owned()),
        on_started: None,
        on_finished: None,
        cancel: None,
        prior: Vec::new(),
    };
    let running = Instant::now();
    let report: Report = crate::run(&workflow, options)
        .await
        .map_err(|e| e.to_string())?;
    let run_seconds = running.elapsed().as_secs_f64();
    let ran = report.succeeded + report.failed;
    let mut bench = BenchReport {
        tasks,
        waves,
        succeeded: report.succeeded,
        failed: report.failed,
        skipped: report.skipped,
        cancelled: report.cancelled,
        ran,
        journal_terminal: journal.counts().map_err(|e| e.to_string())?.terminal(),
        check_seconds,
        run_seconds,
        us_per_task: run_seconds * 1e6 / ran.max(1) as f64,
        tasks_per_second: ran as f64 / run_seconds,
        ok: false,
        problems: Vec::new(),
    };
    bench.judge(agents);
    Ok(bench)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tasks: usize, succeeded: usize, failed: usize, skipped: usize) -> BenchReport {
        BenchReport {
            tasks,
            waves: 1,
            succeeded,
            failed,
            skipped,
            cancelled: 0,
            ran: succeeded + failed,
            journal_terminal: (succeeded + failed) as u64,
            check_seconds: 0.0,
            run_seconds: 1.0,
            us_per_task: 0.0,
            tasks_per_second: 0.0,
            ok: false,
            problems: Vec::new(),
        }
    }

    const CLEAN: Agents = Agents::Sim {
        count: 1,
        error_rate: 0.0,
    };
    const FLAKY: Agents = Agents::Sim {
        count: 1,
        error_rate: 0.1,
    };

    #[test]
    fn failures_without_injected_errors_fail_the_verdict() {
        let mut r = report(10, 10, 0, 0);
        r.judge(&CLEAN);
        assert!(r.ok, "{:?}", r.problems);
        let mut r = report(10, 7, 1, 2);
        r.judge(&CLEAN);
        assert!(!r.ok);
        assert!(r.problems[0].contains("1 failed and 2 skipped with no error injected"));
        let command = Agents::Command {
            count: 1,
            program: "true".into(),
        };
        let mut r = report(10, 9, 1, 0);
        r.judge(&command);
        assert!(!r.ok);
        let mut r = report(10, 7, 1, 2);
        r.judge(&FLAKY);
        assert!(r.ok, "{:?}", r.problems);
    }

    #[test]
    fn more_failures_than_the_injected_rate_allows_fail_the_verdict() {
        // One failure whose dependents were all skipped: 10,000 tasks, almost none succeeded.
        let mut r = report(10_000, 0, 1, 9_999);
        r.judge(&FLAKY);
        assert!(!r.ok);
        assert!(
            r.problems.iter().any(|p| p == "no task succeeded"),
            "{:?}",
            r.problems
        );
        // 10 % errors over three attempts: about one task in a thousand fails.
        let mut r = report(10_000, 9_000, 1_000, 0);
        r.judge(&FLAKY);
        assert!(
            r.problems.iter().any(|p| p.contains("1000 tasks failed")),
            "{:?}",
            r.problems
        );
        let mut r = report(10_000, 9_990, 10, 0);
        r.judge(&FLAKY);
        assert!(r.ok, "{:?}", r.problems);
    }

    #[test]
    fn every_task_must_end_once() {
        let mut r = report(10, 8, 0, 0);
        r.judge(&FLAKY);
        assert!(!r.ok);
        assert!(r.problems[0].contains("8 tasks ended of 10"));
        let mut r = report(10, 8, 0, 2);
        r.judge(&FLAKY);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("skipped with no task failed"))
        );
        let mut r = report(10, 10, 0, 0);
        r.journal_terminal = 9;
        r.judge(&FLAKY);
        assert!(!r.ok);
        assert!(r.problems[0].contains("the journal holds 9 tasks ended, not the 10 that ran"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_run_counts_only_tasks_that_ran() {
        let out = tempfile::tempdir().unwrap();
        let r = run(200, &FLAKY, 3, out.path()).await.unwrap();
        assert_eq!(r.ran + r.skipped, 200);
        assert_eq!(r.journal_terminal, r.ran as u64);
        assert!(r.ok, "{:?}", r.problems);
        let out = tempfile::tempdir().unwrap();
        let clean = run(200, &CLEAN, 3, out.path()).await.unwrap();
        assert_eq!((clean.ran, clean.failed, clean.skipped), (200, 0, 0));
        assert!(clean.ok, "{:?}", clean.problems);
    }
}
