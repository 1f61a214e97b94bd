//! `colony prune`: drop payloads and results of finished tasks, keeping their rows. The
//! ballots of a decision still open are kept whole: its recovery counts them.

use crate::{Failure, output::thousands};
use colony_journal::{SqliteJournal, SqliteOptions, sqlite::Retention};
use std::{path::PathBuf, time::Duration};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("rule").required(true).multiple(true).args(["older_than", "keep_last"])))]
pub(crate) struct Args {
    /// The journal: a SQLite file, or a journal in NATS (nats://HOST:PORT/NAME). A journal in
    /// NATS that a colony keeps is pruned by that colony, which goes on; one that no colony
    /// answers for is taken over here, which stops any process still writing it (only once
    /// it has gone 30 s unwritten and its colony, if one said it lives, has been silent as
    /// long; unless --take-over).
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Prune tasks that finished longer ago than this: 90s, 15m, 12h, 7d.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<Duration>,
    /// Prune all but the newest N finished tasks.
    #[arg(long, value_name = "N")]
    keep_last: Option<u64>,
    /// Print what was pruned as JSON.
    #[arg(long)]
    json: bool,
    /// A journal in NATS written in the last 30 s (by a colony, not by a prune), or whose
    /// colony said in the last 30 s that it lives, that no colony answers for: take it over
    /// and prune it anyway. A colony still writing it (cut off
    /// from NATS, or from before online prunes) stops writing. Without it, a journal that a
    /// colony writes while prune opens it is left to that colony.
    #[arg(long)]
    take_over: bool,
}

/// `90s`, `15m`, `12h`, `7d`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not an age: write a whole number and a unit, like 90s, 15m, 12h or 7d")
    })?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` has no unit colony knows: use s, m, h or d, like 7d"
            ));
        }
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long an age"))
}

pub(crate) fn run(args: &Args) -> Result<(), Failure> {
    let rule = Retention {
        older_than: args.older_than,
        keep_last: args.keep_last,
    };
    if let Some(location) = super::in_nats(&args.db) {
        return prune_nats(location, rule, args.json, args.take_over);
    }
    if args.take_over {
        return Err(Failure::input(anyhow::anyhow!(
            "--take-over is for a journal in NATS (nats://HOST:PORT/NAME): a SQLite file has no keeper to take it from"
        )));
    }
    if !args.db.exists() {
        return Err(Failure::input(colony_journal::Error::Missing {
            path: args.db.display().to_string(),
        }));
    }
    let journal = SqliteJournal::open(SqliteOptions::new(&args.db)).map_err(Failure::input)?;
    let pruned = journal.prune(rule).map_err(Failure::work)?;
    if args.json {
        println!("{}", serde_json::json!({ "pruned": pruned }));
    } else {
        println!(
            "pruned the payloads and results of {} finished tasks",
            thousands(pruned)
        );
    }
    Ok(())
}

/// Prunes a journal in NATS by `rule`, written anew as a snapshot and the history before
/// it purged: by the process keeping it, which goes on, or by this one when none does.
fn prune_nats(location: &str, rule: Retention, json: bool, take_over: bool) -> Result<(), Failure> {
    let options = colony_cluster::JournalOptions::parse(location).map_err(Failure::input)?;
    let pruned =
        colony_cluster::journal::prune(&options, rule, take_over).map_err(|e| match e {
            // Refused: a keeper may still write it.
            colony_cluster::Error::Settings(_) => Failure::input(e),
            e => super::nats_failure(e),
        })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "pruned": pruned.tasks,
                "bytes_before": pruned.bytes_before,
                "bytes_after": pruned.bytes_after,
                "by_keeper": pruned.by_keeper,
            })
        );
    } else {
        println!(
            "pruned the payloads and results of {} finished tasks; the journal {} went from {} \
             to {} bytes{}",
            thousands(pruned.tasks),
            options.name,
            thousands(pruned.bytes_before),
            thousands(pruned.bytes_after),
            if pruned.by_keeper {
                " (pruned by the process keeping it, which goes on)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_age("7").unwrap_err().contains("no unit"));
        assert!(parse_age("d").unwrap_err().contains("not an age"));
        assert!(parse_age("3w").unwrap_err().contains("use s, m, h or d"));
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
