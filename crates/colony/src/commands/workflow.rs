//! `colony run` and `colony validate`: workflow files.

use crate::{
    Failure,
    output::{Table, thousands},
};
use colony_journal::{Journal, MemoryJournal, SqliteJournal, SqliteOptions};
use colony_runtime::RuntimeOptions;
use colony_workflow::{Finished, Status, Workflow};
use std::{io::IsTerminal, path::PathBuf, sync::Arc, time::Duration};

#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// The workflow file (YAML).
    file: PathBuf,
    /// Also print the plan: the waves, the critical path, and the expected duration and cost
    /// from the pools' `estimate:` (sim pools: their latency), on their slots.
    #[arg(long)]
    plan: bool,
    /// Print the plan as JSON on stdout (with --plan).
    #[arg(long, requires = "plan")]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The workflow file (YAML).
    file: PathBuf,
    /// Folder of the results; the workflow's `output` otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Journal the run to this SQLite file (created if missing), or to a journal in NATS
    /// (nats://HOST:PORT/NAME[?replicas=1]); in memory otherwise.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Continue the run journaled in `--db`: tasks that succeeded are not run again, tasks
    /// left unfinished are finished, the rest run.
    #[arg(long, requires = "db")]
    resume: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// A dry run: print the plan, then run every task with each pool that is not `sim`
    /// replaced by a `sim` agent of its shape (no program, process or endpoint is called;
    /// `expect` checks and webhooks are skipped), results in `<output>.sim`.
    #[arg(long, conflicts_with_all = ["db", "resume"])]
    sim: bool,
    /// With --sim, how much faster than its estimate each stand-in answers (default 1000:
    /// a 30 s estimate answers in 30 ms).
    #[arg(long, value_name = "N", requires = "sim", default_value_t = 1000.0,
          value_parser = crate::flags::Float::new(0.001, 1e9))]
    sim_speed: f64,
    /// Run the tasks across a cluster on NATS JetStream: nats://HOST:PORT, several
    /// comma-separated. This process schedules the graph and writes the results; the
    /// cluster's nodes (`colony node`) run each task by its role.
    #[arg(long, value_name = "URL", conflicts_with_all = ["db", "resume", "sim"])]
    nats: Option<String>,
    /// With --nats: copies JetStream keeps of the cluster's tasks if this run makes them
    /// first (3 or 5; 1 for one development server); a cluster already made keeps its own.
    #[arg(long, value_name = "N", requires = "nats")]
    replicas: Option<usize>,
    /// With --nats: the run's id (letters, digits, `_`, `-`; up to 60). What is sent is kept
    /// in the cluster under it, and of the processes run with one id one schedules at a
    /// time: a standby takes the run over when it dies, and the same command run again goes
    /// on where the run stopped.
    #[arg(long, value_name = "ID", requires = "nats")]
    run_id: Option<String>,
    /// With --run-id: the scheduler's lease; a standby takes the run over within it and a
    /// second of the scheduler's death (2s to 30s, whole seconds).
    #[arg(long, value_name = "DURATION", requires = "run_id", default_value = "10s",
          value_parser = crate::commands::cluster::duration)]
    lease: Duration,
    /// With --nats: bridge the run's topics (those its tasks wait or publish on) to the
    /// cluster's message bus, so that agents on nodes bridging them (`colony node
    /// --bridge-topic`) hear and reach its tasks. Bridged topics are shared across the
    /// cluster: another run bridging one hears this one's messages on it.
    #[arg(long, requires = "nats")]
    bridge_topics: bool,
}

impl RunArgs {
    /// Whether the run's topics are bridged to the cluster's bus.
    pub(crate) fn bridge_topics(&self) -> bool {
        self.bridge_topics
    }

    /// The results' folder it asks for, if any.
    pub(crate) fn out(&self) -> Option<&std::path::Path> {
        self.out.as_deref()
    }

    pub(crate) fn file(&self) -> &std::path::Path {
        &self.file
    }

    pub(crate) fn run_id(&self) -> Option<(&str, Duration)> {
        self.run_id.as_deref().map(|id| (id, self.lease))
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

/// Loads and checks a workflow; a bad one is reported with snippets and exits 2.
fn load(file: &std::path::Path) -> Result<Workflow, Failure> {
    colony_workflow::load(file).map_err(invalid)
}

/// A workflow file that cannot be used: each problem reported with its snippet, exit 2.
pub(crate) fn invalid(error: colony_workflow::Error) -> Failure {
    match error {
        colony_workflow::Error::Invalid(invalid) => {
            let handler =
                miette::GraphicalReportHandler::new_themed(if std::io::stderr().is_terminal() {
                    miette::GraphicalTheme::unicode()
                } else {
                    miette::GraphicalTheme::unicode_nocolor()
                });
            for d in invalid.diagnostics() {
                let mut out = String::new();
                if handler.render_report(&mut out, &d).is_ok() {
                    eprint!("{out}");
                } else {
                    eprintln!("{d}");
                }
            }
            let n = invalid.problems.len();
            Failure::input(anyhow::anyhow!(
                "{} has {n} problem{}; nothing was started",
                invalid.file,
                if n == 1 { "" } else { "s" }
            ))
        }
        e => Failure::input(e),
    }
}

pub(crate) fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let w = load(&args.file)?;
    let waves = w.graph.waves().into_iter().max().map_or(0, |m| m + 1);
    let agents: u64 = w.pools.iter().map(|p| u64::from(p.count)).sum();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if args.json {
        let plan = colony_workflow::plan::plan(&w);
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).map_err(Failure::work)?
        );
        return Ok(());
    }
    println!(
        "{}: ok ({} in {}, {} of {})",
        args.file.display(),
        plural(w.tasks.len(), "task"),
        plural(waves, "wave"),
        plural(w.pools.len(), "pool"),
        plural(agents as usize, "agent")
    );
    if args.plan {
        print_plan(&colony_workflow::plan::plan(&w));
    }
    Ok(())
}

/// The plan as text: the waves, the critical path, the expected time and cost, and what
/// the estimates lack.
fn print_plan(plan: &colony_workflow::plan::Plan) {
    let seconds = |s: f64| {
        humantime::format_duration(std::time::Duration::from_millis((s * 1e3).round() as u64))
            .to_string()
    };
    for (i, wave) in plan.waves.iter().enumerate() {
        let shown: Vec<&str> = wave.iter().take(12).map(String::as_str).collect();
        let more = wave.len().saturating_sub(shown.len());
        println!(
            "wave {i}: {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let path: Vec<&str> = plan.critical_path.iter().map(String::as_str).collect();
    println!(
        "critical path: {} ({})",
        path.join(" -> "),
        seconds(plan.critical_seconds)
    );
    println!(
        "expected: {} and ${:.2}, every task succeeding at its first attempt",
        seconds(plan.expected_seconds),
        plan.expected_cost_usd
    );
    if !plan.untimed.is_empty() {
        println!(
            "no time estimate for {}: their tasks count as taking none (give each an `estimate: {{duration: ...}}`)",
            pools(&plan.untimed)
        );
    }
    if !plan.uncosted.is_empty() {
        println!(
            "no cost estimate for {}: their tasks count as free (give each an `estimate: {{cost-usd: ...}}`)",
            pools(&plan.uncosted)
        );
    }
}

/// `pool a` or `pools a, b`.
fn pools(names: &[String]) -> String {
    let s = if names.len() == 1 { "" } else { "s" };
    format!("pool{s} {}", names.join(", "))
}

pub(crate) fn run(args: &RunArgs) -> Result<(), Failure> {
    let workflow = if args.sim {
        colony_workflow::load_for_rehearsal(&args.file).map_err(invalid)?
    } else if args.nats.is_some() {
        colony_workflow::load_for_cluster(&args.file).map_err(invalid)?
    } else {
        load(&args.file)?
    };
    if let Some(nats) = &args.nats {
        return crate::commands::cluster::run_workflow(args, nats, args.replicas, &workflow);
    }
    let workflow = if args.sim {
        // The dry run never writes where the real run's results are.
        if let Some(out) = &args.out
            && std::path::absolute(out).ok() == std::path::absolute(&workflow.output).ok()
        {
            return Err(Failure::input(anyhow::anyhow!(
                "--out {}: is where the real run's results go: give a dry run another folder",
                out.display()
            )));
        }
        let plan = colony_workflow::plan::plan(&workflow);
        let (simulated, changed) = workflow.simulated(args.sim_speed);
        if !args.json {
            print_plan(&plan);
            if !changed.replaced.is_empty() {
                println!(
                    "dry run: sim agents stand in for {}",
                    pools(&changed.replaced)
                );
            }
            if !changed.unchecked.is_empty() {
                println!(
                    "dry run: the expect checks of {} are not run",
                    changed.unchecked.join(", ")
                );
            }
            if changed.webhooks > 0 {
                println!("dry run: no webhook is posted to");
            }
        }
        simulated
    } else {
        workflow
    };
    let (journal, prior): (Arc<dyn Journal>, Vec<colony_journal::TaskRow>) = match &args.db {
        Some(db) if super::in_nats(db).is_some() => {
            let journal = super::open_nats_journal(super::in_nats(db).unwrap_or_default())?;
            check_earlier(&journal, db, args.resume)?;
            let prior = if args.resume {
                // Newest first from the journal: the run reads them oldest first.
                let mut rows = journal
                    .recent(None, None, usize::MAX)
                    .map_err(Failure::work)?;
                rows.reverse();
                rows
            } else {
                Vec::new()
            };
            (Arc::new(journal), prior)
        }
        Some(path) => {
            let journal = SqliteJournal::open(SqliteOptions::new(path)).map_err(Failure::input)?;
            check_earlier(&journal, path, args.resume)?;
            // Resuming needs the rows: the outputs of what succeeded feed their dependents.
            let prior = if args.resume {
                journal.tasks(None, usize::MAX).map_err(Failure::work)?
            } else {
                Vec::new()
            };
            (Arc::new(journal), prior)
        }
        // Nothing reads a result back from the journal in memory (each reaches the run as
        // its task ends): keeping every payload and output would grow with the run.
        None => (Arc::new(MemoryJournal::forgetting_finished()), Vec::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)?;
    let on_finished = progress(&workflow, args.json);
    let cancel = Box::pin(async {
        // Made when the run starts; a second signal right after the first is kept for the
        // second wait, not lost between the two.
        let mut stops = crate::signal::Stops::new();
        stops.next().await;
        eprintln!(
            "Cancelling: running tasks are stopped; Ctrl-C (or SIGTERM) again to quit at once."
        );
        colony_runtime::spawner::Spawner::spawn("second-ctrl-c", async move {
            let code = stops.next().await;
            // Exiting skips destructors: the agents' processes are killed first.
            colony_agents::command::kill_all();
            std::process::exit(code);
        });
    });
    let mut runtime_options = RuntimeOptions::default();
    workflow.runtime.apply(&mut runtime_options);
    let options = colony_workflow::Options {
        runtime: runtime_options,
        journal,
        output: args.out.clone(),
        on_started: None,
        on_finished: Some(on_finished),
        cancel: Some(cancel),
        prior,
    };
    let report = runtime
        .block_on(colony_workflow::run(&workflow, options))
        .map_err(Failure::work)?;
    show(args, &report)
}

/// Prints a run's report (a table, or `--json`) and says whether it succeeded.
pub(crate) fn show(args: &RunArgs, report: &colony_workflow::Report) -> Result<(), Failure> {
    if args.json {
        // The same as summary.json, written as it is serialized: up to 16 MiB of outputs.
        use std::io::Write as _;
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut stdout, &report).map_err(Failure::work)?;
        writeln!(stdout)
            .and_then(|()| stdout.flush())
            .map_err(Failure::work)?;
    } else {
        // A cost column when an output says what it cost (`http` agents, coding-agent CLIs).
        let costs: Vec<Option<f64>> = report.tasks.iter().map(|f| f.cost_usd).collect();
        let costed = costs.iter().any(Option::is_some);
        let mut headers = vec!["task", "status", "wave", "attempts", "seconds"];
        if costed {
            headers.push("cost");
        }
        let mut t = Table::new(&headers);
        for (f, cost) in report.tasks.iter().zip(&costs) {
            let mut row = vec![
                f.id.clone(),
                format!("{:?}", f.status).to_lowercase(),
                f.wave.to_string(),
                f.attempts.to_string(),
                format!("{:.2}", f.seconds),
            ];
            if costed {
                row.push(cost.map_or_else(String::new, |c| format!("${c:.4}")));
            }
            t.row(row);
        }
        print!("{}", t.render());
        println!(
            "{}: {} succeeded, {} failed, {} skipped, {} cancelled in {:.2} s; results in {}",
            report.name,
            thousands(report.succeeded as u64),
            thousands(report.failed as u64),
            thousands(report.skipped as u64),
            thousands(report.cancelled as u64),
            report.seconds,
            report.output.display()
        );
        let u = &report.usage;
        if u.prompt_tokens + u.completion_tokens > 0 {
            println!(
                "tokens: {} prompt + {} completion; cost ${:.4}",
                thousands(u.prompt_tokens),
                thousands(u.completion_tokens),
                u.cost_usd
            );
        }
    }
    if !report.unwritten.is_empty() {
        for e in &report.unwritten {
            eprintln!("error: {e}");
        }
        return Err(Failure::work(anyhow::anyhow!(
            "{} result file{} of {} could not be written",
            report.unwritten.len(),
            if report.unwritten.len() == 1 { "" } else { "s" },
            report.output.display()
        )));
    }
    if args.sim && !report.all_succeeded() {
        eprintln!(
            "dry run: a stand-in answers with its input (or, for an http pool or a coding-agent \
             CLI, with the prompt as its content), so a task that reads a field only a real \
             output has, or a vote that needs confidences or reviews, can fail here and not in \
             a real run: see each task's error"
        );
    }
    if report.all_succeeded() {
        Ok(())
    } else {
        Err(Failure::work(anyhow::anyhow!(
            "{} of {} tasks did not succeed",
            report.tasks.len() - report.succeeded,
            report.tasks.len()
        )))
    }
}

/// What the user sees while a run goes on. On a terminal: a bar per pool (or role) with its
/// counts, failures and ETA. Elsewhere (a pipe, a CI log): a line per task as it ends. With
/// `--json`: nothing, so that stdout stays machine-readable and stderr quiet.
pub(crate) fn progress(workflow: &Workflow, json: bool) -> colony_workflow::Progress {
    if json {
        return Box::new(|_| {});
    }
    let total = workflow.tasks.len();
    if !std::io::stderr().is_terminal() {
        let mut done = 0;
        return Box::new(move |f: &Finished| {
            done += 1;
            let why = f
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            eprintln!(
                "[{done}/{total}] {} {} ({:.2} s){why}",
                f.id,
                status(f.status),
                f.seconds
            );
        });
    }
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>14} [{bar:30}] {pos}/{len} {msg} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut by_group: std::collections::BTreeMap<String, u64> = Default::default();
    for t in &workflow.tasks {
        *by_group.entry(t.runs_on.clone()).or_default() += 1;
    }
    let groups: std::collections::HashMap<String, (indicatif::ProgressBar, u64)> = by_group
        .into_iter()
        .map(|(name, len)| {
            let bar = bars.add(indicatif::ProgressBar::new(len));
            bar.set_style(style.clone());
            bar.set_prefix(name.clone());
            (name, (bar, 0))
        })
        .collect();
    let mut groups = groups;
    Box::new(move |f: &Finished| {
        if let Some((bar, failures)) = groups.get_mut(&f.runs_on) {
            if f.status != Status::Succeeded {
                *failures += 1;
                bar.set_message(format!("{failures} not succeeded"));
                let _ = bars.println(format!(
                    "{} {}: {}",
                    f.id,
                    status(f.status),
                    f.error.as_deref().unwrap_or("")
                ));
            }
            bar.inc(1);
            if bar.position() == bar.length().unwrap_or(0) {
                bar.finish();
            }
        }
    })
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Succeeded => "ok",
        Status::Failed => "FAILED",
        Status::Skipped => "skipped",
        Status::Cancelled => "cancelled",
    }
}

/// Refuses to start a new run on a journal holding an earlier run's unfinished tasks,
/// unless resuming. Counted from the journal's counters: a fresh run reads no rows at all.
fn check_earlier(journal: &dyn Journal, db: &std::path::Path, resume: bool) -> Result<(), Failure> {
    let counts = journal.counts().map_err(Failure::work)?;
    let unfinished = counts.total().saturating_sub(counts.terminal());
    if unfinished > 0 && !resume {
        return Err(Failure::input(anyhow::anyhow!(
            "{} holds {unfinished} unfinished tasks of an earlier run: add --resume to \
             continue it, or give another --db",
            db.display()
        )));
    }
    Ok(())
}
