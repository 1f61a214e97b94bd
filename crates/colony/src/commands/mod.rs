//! One module per subcommand.

pub(crate) mod agents;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod memory;
pub(crate) mod prune;
pub(crate) mod runs;
pub(crate) mod serve;
pub(crate) mod tasks;
pub(crate) mod top;
pub(crate) mod tree;
pub(crate) mod workflow;

/// The location of a journal in NATS (`--db nats://HOST:PORT/NAME`), if `db` is one.
pub(crate) fn in_nats(db: &std::path::Path) -> Option<&str> {
    db.to_str()
        .filter(|text| colony_cluster::journal::in_nats(text))
}

/// A journal in NATS that could not be read or pruned: one that is not there is bad input
/// (exit 2, as a missing SQLite file is), anything else a failure of the work (exit 1).
pub(crate) fn nats_failure(error: colony_cluster::Error) -> crate::Failure {
    match error {
        colony_cluster::Error::NoJournal { .. } => crate::Failure::input(error),
        error => crate::Failure::work(error),
    }
}

/// Opens the journal in NATS at `location`, replayed and claimed for this process. Blocks:
/// call it before the runtime starts.
pub(crate) fn open_nats_journal(
    location: &str,
) -> Result<colony_cluster::JetStreamJournal, crate::Failure> {
    let options = colony_cluster::JournalOptions::parse(location).map_err(crate::Failure::input)?;
    colony_cluster::JetStreamJournal::open(options).map_err(|e| match e {
        colony_cluster::Error::Settings(_) => crate::Failure::input(e),
        e => crate::Failure::work(e),
    })
}

/// Refuses a journal in NATS where only a SQLite file will do, saying what to use instead.
pub(crate) fn sqlite_only(db: &std::path::Path, instead: &str) -> Result<(), crate::Failure> {
    match in_nats(db) {
        Some(_) => Err(crate::Failure::input(anyhow::anyhow!(
            "--db nats://...: this command works on a SQLite file only; {instead}"
        ))),
        None => Ok(()),
    }
}
