//! Backup and restore of a journal file, with SQLite's online backup API.
//!
//! A backup copies every page in one step, inside one read transaction: in WAL mode that is a
//! consistent snapshot while writers go on. The copy is written beside its destination,
//! checked with `PRAGMA integrity_check`, synced, and only then renamed into place, so a
//! destination is either the old file or a complete new one, never half of one.

use super::{SqliteReader, classify, lock_file, read_counts};
use crate::{Counts, Error};
use rusqlite::{Connection, OpenFlags, backup::StepResult};
use serde::Serialize;
use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What a backup or restore copied.
#[derive(Clone, Debug, Serialize)]
pub struct Copied {
    pub from: String,
    pub to: String,
    pub bytes: u64,
    pub tasks: u64,
    pub counts: Counts,
    pub seconds: f64,
}

/// Copies the journal at `db` to the file `to`, consistently, while other processes may write
/// to `db`. An existing file at `to` is replaced only once the copy is complete and checked.
pub fn backup(db: &Path, to: &Path) -> Result<Copied, Error> {
    let started = Instant::now();
    SqliteReader::open(db)?;
    refuse_directory(to)?;
    if super::canonical(db) == super::canonical(to) {
        return Err(Error::BadLocation {
            location: to.display().to_string(),
            detail: "is the journal itself: back it up to another file".into(),
        });
    }
    let partial = partial_path(to);
    let result = copy(db, &partial).and_then(|counts| {
        finish(&partial, to)?;
        Ok(counts)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let (tasks, counts) = result?;
    Ok(Copied {
        from: db.display().to_string(),
        to: to.display().to_string(),
        bytes: std::fs::metadata(to).map_or(0, |m| m.len()),
        tasks,
        counts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Puts the backup at `from` in place as the journal `db`. Refuses while a colony process
/// runs on `db`, and refuses to replace an existing journal unless `replace` is set.
pub fn restore(from: &Path, db: &Path, replace: bool) -> Result<Copied, Error> {
    let started = Instant::now();
    SqliteReader::open(from)?;
    refuse_directory(db)?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Error::NoFolder {
            path: parent.display().to_string(),
        });
    }
    let _lock = lock_file(db)?;
    if db.exists() && !replace {
        return Err(Error::Exists {
            path: db.display().to_string(),
        });
    }
    let partial = partial_path(db);
    let result = copy(from, &partial).and_then(|counts| {
        // The copy is complete and checked. Fold the old journal's write-ahead log into it
        // first, so that if the swap below fails the old journal is whole; then the log can
        // go, and must: it would be replayed onto the restored file.
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Storage(format!("{}: {e}", partial.display())))?;
        // Best effort: a journal being restored is often one that no longer opens.
        if db.exists()
            && let Ok(old) = Connection::open(db)
        {
            let _ = old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        for suffix in ["-wal", "-shm"] {
            let mut side = db.as_os_str().to_owned();
            side.push(suffix);
            match std::fs::remove_file(PathBuf::from(side)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Storage(format!(
                        "cannot remove the old log of {}: {e}",
                        db.display()
                    )));
                }
            }
        }
        finish(&partial, db)?;
        Ok(counts)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let (tasks, counts) = result?;
    Ok(Copied {
        from: from.display().to_string(),
        to: db.display().to_string(),
        bytes: std::fs::metadata(db).map_or(0, |m| m.len()),
        tasks,
        counts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn refuse_directory(path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return Err(Error::IsDirectory {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Copies `from` into a new file `to` page by page, then checks the copy. Returns the tasks
/// and counts the copy holds.
fn copy(from: &Path, to: &Path) -> Result<(u64, Counts), Error> {
    let _ = std::fs::remove_file(to);
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| classify(e, from))?;
    src.busy_timeout(Duration::from_secs(5))
        .map_err(|e| classify(e, from))?;
    let mut dst = Connection::open(to).map_err(|e| classify(e, to))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| classify(e, to))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // All pages in one step: one read transaction, one consistent snapshot.
            match backup.step(-1).map_err(|e| classify(e, from))? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    return Err(Error::Locked {
                        path: from.display().to_string(),
                        detail: "the backup could not read a consistent snapshot for 60 s".into(),
                    });
                }
            }
        }
    }
    // A backup is a single file: no write-ahead log beside it.
    dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(|e| classify(e, to))?;
    let check: String = dst
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| classify(e, to))?;
    if check != "ok" {
        return Err(Error::Corrupt {
            path: to.display().to_string(),
            detail: check,
        });
    }
    let tasks: i64 = dst
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .map_err(|e| classify(e, to))?;
    let counts = read_counts(&dst).map_err(|e| classify(e, to))?;
    if counts.total() != tasks as u64 {
        return Err(Error::Corrupt {
            path: to.display().to_string(),
            detail: format!("{tasks} task rows but the counts say {}", counts.total()),
        });
    }
    drop(dst);
    Ok((tasks as u64, counts))
}

/// Syncs `partial` and renames it to `to`, then syncs the folder so the rename is durable.
fn finish(partial: &Path, to: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", to.display()));
    File::open(partial).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(partial, to).map_err(io)?;
    if let Some(folder) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(folder).and_then(|f| f.sync_all()).map_err(io)?;
    }
    Ok(())
}
