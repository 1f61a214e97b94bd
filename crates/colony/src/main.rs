//! The `colony` command line: clap definitions and terminal output. The work itself lives in
//! the library crates.

mod commands;
mod output;

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
    Serve(commands::serve::Args),
    /// Manage the bearer tokens `colony serve --tokens` asks callers for.
    #[command(subcommand)]
    Token(commands::serve::TokenCommand),
    /// Submit a task (or a file of them) to a server; --wait for its result.
    Submit(commands::client::SubmitArgs),
    /// A task's state and result on a server, or the server's counters.
    Status(commands::client::StatusArgs),
    /// Cancel tasks on a server: waiting ones at once, running ones by stopping their attempt.
    Cancel(commands::client::CancelArgs),
    /// Plan a hierarchy: agents per tier and span of control.
    Tree(commands::tree::Args),
    /// Measure the runtime: spawn, dispatch, latency.
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
    /// Watch a running server live in the terminal: population, throughput, health, failures.
    Top(commands::top::Args),
}

/// How a command failed, which decides the exit code.
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
        Command::Cancel(args) => commands::client::cancel(&args),
        Command::Tree(args) => commands::tree::run(&args),
        Command::Bench(bench) => commands::bench::run(bench),
        Command::Tasks(args) => commands::tasks::run(&args),
        Command::Agents(args) => commands::agents::run(&args),
        Command::Backup(args) => commands::backup::backup(&args),
        Command::Restore(args) => commands::backup::restore(&args),
        Command::Prune(args) => commands::prune::run(&args),
        Command::Top(args) => commands::top::run(&args),
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
