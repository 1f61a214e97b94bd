//! `colony config check` and `colony config show`: the settings `colony serve` would run with,
//! resolved by the same code as `serve` ([`crate::config::resolve`]).

use crate::{Failure, commands::serve};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Check colony.toml, the COLONY_* variables and, if given, a workflow or pools file;
    /// print `ok` or every problem with its file, line and column (exit 2).
    Check(CheckArgs),
    /// Print the settings `colony serve` would run with, every key, and where each came from.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The configuration file (default: $COLONY_CONFIG, else ./colony.toml if it exists).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// A workflow or pools file to check with it, as `serve --pools` would read it.
    file: Option<PathBuf>,
    /// The same as FILE, spelt as `serve --pools` and `config show --pools` spell it.
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    pools: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ShowArgs {
    /// The configuration file (default: $COLONY_CONFIG, else ./colony.toml if it exists).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The pools file, as `serve --pools` takes it.
    #[arg(long, value_name = "FILE")]
    pools: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of `config show --json`.
#[derive(Debug, Serialize)]
struct Entry {
    key: String,
    value: String,
    source: String,
}

pub(crate) fn run(command: &Command) -> Result<(), Failure> {
    match command {
        Command::Check(args) => {
            let pools = args.file.as_ref().or(args.pools.as_ref());
            let flags = crate::config::Flags {
                config: args.config.clone(),
                pools: pools.cloned(),
                ..Default::default()
            };
            let resolved = serve::resolve(&flags)?;
            let file = resolved
                .file
                .as_ref()
                .map_or("no configuration file".into(), |p| p.display().to_string());
            match pools {
                Some(pools) => println!("ok ({file}, {})", pools.display()),
                None => println!("ok ({file})"),
            }
            Ok(())
        }
        Command::Show(args) => {
            let flags = crate::config::Flags {
                config: args.config.clone(),
                pools: args.pools.clone(),
                ..Default::default()
            };
            let resolved = serve::resolve(&flags)?;
            let entries: Vec<Entry> = resolved
                .entries()
                .into_iter()
                .map(|(key, value, source)| Entry {
                    key,
                    value,
                    source: source.to_string(),
                })
                .collect();
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).map_err(Failure::work)?
                );
                return Ok(());
            }
            let width = |f: fn(&Entry) -> &str| {
                entries
                    .iter()
                    .map(|e| f(e).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(6)
            };
            let (k, v) = (width(|e| &e.key), width(|e| &e.value));
            println!("{:<k$}  {:<v$}  source", "key", "value");
            for e in &entries {
                println!("{:<k$}  {:<v$}  {}", e.key, e.value, e.source);
            }
            Ok(())
        }
    }
}
