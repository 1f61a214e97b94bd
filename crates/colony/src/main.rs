//! The `colony` command line: clap definitions and terminal output. The work itself lives in
//! the library crates.

mod commands;
mod config;
mod flags;
mod output;
mod signal;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run very large, fault-tolerant swarms of agents.
#[derive(Debug, Parser)]
#[command(name = "colony", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow file to completion: agents, a graph of tasks, results as files.
    Run(commands::workflow::RunArgs),
    /// Check a workflow file without running it; problems come with line and column.
    Validate(commands::workflow::ValidateArgs),
    /// Keep a runtime up behind an HTTP API, Prometheus metrics and a web dashboard.
    Serve(Box<commands::serve::Args>),
    /// Manage the bearer tokens `colony serve --tokens` asks callers for.
    #[command(subcommand)]
    Token(commands::serve::TokenCommand),
    /// Submit a task (or a file of them) to a server; --wait for its result.
    Submit(commands::client::SubmitArgs),
    /// A task's state and result on a server, or the server's counters.
    Status(commands::client::StatusArgs),
    /// Cancel tasks on a server: waiting ones at once, running ones by stopping their attempt.
    Cancel(commands::client::CancelArgs),
    /// Workflow runs on a server (`colony serve --runs DIR`): submit, list, show, cancel.
    #[command(subcommand)]
    Runs(commands::runs::Command),
    /// Plan a hierarchy: agents per tier and span of control.
    Tree(commands::tree::Args),
    /// Measure the runtime: spawn, dispatch, latency, workflow, recovery, crash, restart; each run ends
    /// with a verdict and exits 1 when it is false.
    #[command(subcommand)]
    Bench(commands::bench::Bench),
    /// Tasks per state, and the tasks themselves: from a journal, or a server.
    Tasks(commands::tasks::Args),
    /// The hierarchy: tiers, children, chain of command; recorded in a journal, or live on a server.
    Agents(commands::agents::Args),
    /// Copy a journal to a backup, consistently, even while colony runs on it.
    Backup(commands::backup::BackupArgs),
    /// Put a backup in place as a journal.
    Restore(commands::backup::RestoreArgs),
    /// Drop payloads and results of finished tasks, by age or count; the rows stay.
    Prune(commands::prune::Args),
    /// The agents' shared memory in a SQLite file, on ChromaDB or in NATS: put, get, delete,
    /// search, stats, rebuild, compact.
    #[command(subcommand)]
    Memory(commands::memory::Command),
    /// Watch a running server live in the terminal: population, throughput, health, failures.
    Top(commands::top::Args),
    /// Join a cluster on NATS JetStream with pools of agents, pulling the tasks of their
    /// roles until SIGTERM or Ctrl-C drains the node.
    Node(commands::cluster::NodeArgs),
    /// Clients of a cluster on NATS JetStream: submit, look up and cancel tasks; the cluster's
    /// status, its whole hierarchy and the workflow runs it keeps.
    #[command(subcommand)]
    Cluster(commands::cluster::Command),
    /// Check `colony serve`'s settings (colony.toml, COLONY_* variables, a pools file), or show
    /// the effective ones and where each came from.
    #[command(subcommand)]
    Config(commands::config::Command),
}

/// How a command failed, which decides the exit code: 2 when the caller's input is at fault
/// (clap's usage errors exit 2 too), 1 when the work failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit code 2.
    Input(anyhow::Error),
    /// The work itself failed: exit code 1.
    Work(anyhow::Error),
}

impl Failure {
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure::Input(error.into())
    }

    pub(crate) fn work(error: impl Into<anyhow::Error>) -> Self {
        Failure::Work(error.into())
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COLONY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::workflow::run(&args),
        Command::Validate(args) => commands::workflow::validate(&args),
        Command::Serve(args) => commands::serve::run(&args),
        Command::Token(command) => commands::serve::token(&command),
        Command::Submit(args) => commands::client::submit(&args),
        Command::Status(args) => commands::client::status(&args),
        Command::Runs(command) => commands::runs::run(&command),
        Command::Cancel(args) => commands::client::cancel(&args),
        Command::Tree(args) => commands::tree::run(&args),
        Command::Bench(bench) => commands::bench::run(bench),
        Command::Tasks(args) => commands::tasks::run(&args),
        Command::Agents(args) => commands::agents::run(&args),
        Command::Backup(args) => commands::backup::backup(&args),
        Command::Restore(args) => commands::backup::restore(&args),
        Command::Prune(args) => commands::prune::run(&args),
        Command::Memory(command) => commands::memory::run(&command),
        Command::Top(args) => commands::top::run(&args),
        Command::Config(command) => commands::config::run(&command),
        Command::Node(args) => commands::cluster::node(&args),
        Command::Cluster(command) => commands::cluster::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
        Err(Failure::Work(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, with the names leading to it.
    fn walk<'a>(
        cmd: &'a clap::Command,
        path: Vec<&'a str>,
        out: &mut Vec<(Vec<&'a str>, &'a clap::Command)>,
    ) {
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name());
            out.push((p.clone(), sub));
            walk(sub, p, out);
        }
    }

    fn commands() -> Vec<(Vec<&'static str>, &'static clap::Command)> {
        let cli: &'static clap::Command = Box::leak(Box::new({
            let mut c = Cli::command();
            c.build();
            c
        }));
        let mut out = Vec::new();
        walk(cli, vec![], &mut out);
        out
    }

    #[test]
    fn every_command_and_flag_has_help() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        for (path, cmd) in commands() {
            if cmd.get_name() == "help" {
                continue;
            }
            if cmd.get_about().is_none() {
                missing.push(format!("colony {}", path.join(" ")));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("colony {} {id}", path.join(" ")));
                }
            }
        }
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    /// Every floating-point flag refuses what is not a finite number at parse time, the way
    /// `flags::Float` does; a new `f64` flag with clap's default parser fails here.
    #[test]
    fn every_float_flag_refuses_nan_and_infinity() {
        let mut floats = 0;
        for (path, cmd) in commands() {
            for arg in cmd.get_arguments() {
                if arg.get_value_parser().type_id() != std::any::TypeId::of::<f64>() {
                    continue;
                }
                let flag = format!("--{}", arg.get_long().expect("float flags are long flags"));
                floats += 1;
                for bad in ["NaN", "inf", "-inf", "1e999"] {
                    // `--flag=-inf`: a separate `-inf` would read as a flag.
                    let given = format!("{flag}={bad}");
                    let mut argv = vec!["colony"];
                    argv.extend(&path);
                    argv.push(&given);
                    let error = Cli::try_parse_from(&argv).expect_err(&argv.join(" "));
                    assert_eq!(
                        error.kind(),
                        clap::error::ErrorKind::ValueValidation,
                        "{}: {error}",
                        argv.join(" ")
                    );
                    assert_eq!(error.exit_code(), 2);
                    let text = error.to_string();
                    assert!(
                        text.contains(&flag) && text.contains("not a finite number"),
                        "{text}"
                    );
                }
            }
        }
        // The bench flags and `submit --timeout`: the walk did find them.
        assert!(floats >= 10, "found {floats} float flags");
    }

    #[test]
    fn bench_help_lists_every_benchmark() {
        let help = Cli::command()
            .find_subcommand_mut("bench")
            .expect("bench")
            .render_help()
            .to_string();
        for name in [
            "spawn", "dispatch", "latency", "workflow", "recovery", "crash",
        ] {
            assert!(
                help.contains(&format!("  {name} ")),
                "{name} missing from:\n{help}"
            );
        }
        assert!(
            !help.contains("crash-child"),
            "the internal child is hidden:\n{help}"
        );
    }
}
