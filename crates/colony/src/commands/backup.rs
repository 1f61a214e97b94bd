//! `colony backup` and `colony restore`: copy a journal out and back, consistently.

use crate::{Failure, output::thousands};
use colony_journal::{Error as JournalError, sqlite};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// The journal to copy; it may be in use by a running colony.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Where the copy goes: a file path, or s3://bucket/key (endpoint and credentials from
    /// the AWS_* environment variables).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Print what was copied as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup to restore: a file path, or s3://bucket/key.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The journal to create from it; no colony may be running on it.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Replace an existing journal at `--db`.
    #[arg(long)]
    force: bool,
    /// Print what was copied as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn backup(args: &BackupArgs) -> Result<(), Failure> {
    super::sqlite_only(
        &args.db,
        "a journal in NATS is kept by the servers' replicas (R3 or R5)",
    )?;
    let to = sqlite::Location::parse(&args.to).map_err(failure)?;
    let copied = runtime()?
        .block_on(sqlite::backup_to(&args.db, &to))
        .map_err(failure)?;
    report("backed up", &copied, args.json)
}

pub(crate) fn restore(args: &RestoreArgs) -> Result<(), Failure> {
    super::sqlite_only(
        &args.db,
        "a journal in NATS is kept by the servers' replicas (R3 or R5)",
    )?;
    let from = sqlite::Location::parse(&args.from).map_err(failure)?;
    let copied = runtime()?
        .block_on(sqlite::restore_from(&from, &args.db, args.force))
        .map_err(failure)?;
    report("restored", &copied, args.json)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::work)
}

fn report(verb: &str, copied: &sqlite::Copied, json: bool) -> Result<(), Failure> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(copied).map_err(Failure::work)?
        );
    } else {
        println!(
            "{verb} {} -> {}: {} tasks, {} bytes, {:.3} s",
            copied.from,
            copied.to,
            thousands(copied.tasks),
            thousands(copied.bytes),
            copied.seconds
        );
    }
    Ok(())
}

/// Paths that are wrong, foreign files, a journal in use: the user's to fix (exit 2).
fn failure(error: JournalError) -> Failure {
    match error {
        JournalError::IsDirectory { .. }
        | JournalError::Missing { .. }
        | JournalError::NoFolder { .. }
        | JournalError::NotColony { .. }
        | JournalError::TooNew { .. }
        | JournalError::Locked { .. }
        | JournalError::Exists { .. }
        | JournalError::BadLocation { .. } => Failure::input(error),
        other => Failure::work(other),
    }
}
