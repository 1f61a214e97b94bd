//! Continuous backup of the journal (`colony serve --backup-to URL --backup-every DURATION`).
//!
//! A consistent copy of the SQLite journal is taken when the server starts and then once
//! every interval, to a file or an `s3://` object, with the online backup of
//! `colony_journal::sqlite::backup_to`: a snapshot read while the runtime goes on writing,
//! checked (`integrity_check`, the task counts), and put in place whole, so the destination
//! always holds a complete, checked journal, at most one interval (plus one backup's time)
//! old. A backup that takes longer than the interval delays the next one; none overlap.
//!
//! A backup that fails does not stop the server: it is counted and logged, the next one is
//! tried at its time, and the failure shows on `GET /v1/backup`, on `/metrics`
//! (`colony_backup_consecutive_failures`, `colony_backup_last_success_timestamp_seconds`;
//! the alert rules in `deploy/prometheus/alerts.yml` fire on them) and on the dashboard's
//! event list (`backup:failed`, then `backup:recovered`).

use colony_journal::sqlite::{self, Copied, Location};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use serde::Serialize;
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The interval when none is given.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5 * 60);
/// The shortest interval: a backup reads the whole journal.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest interval.
pub const MAX_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest error text kept of a failed backup.
const MAX_ERROR_CHARS: usize = 1000;

const LAST_SUCCESS: &str = "colony_backup_last_success_timestamp_seconds";
const LAST_SECONDS: &str = "colony_backup_last_duration_seconds";
const LAST_BYTES: &str = "colony_backup_last_size_bytes";
const BACKUPS: &str = "colony_backups_total";
const CONSECUTIVE: &str = "colony_backup_consecutive_failures";
const INTERVAL: &str = "colony_backup_interval_seconds";

/// Describes the backup's metrics to the recorder.
pub(crate) fn describe() {
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "When the last backup of the journal that succeeded ended, in seconds since the Unix epoch."
    );
    describe_gauge!(
        LAST_SECONDS,
        Unit::Seconds,
        "How long the last backup that succeeded took."
    );
    describe_gauge!(
        LAST_BYTES,
        Unit::Bytes,
        "Size of the last backup that succeeded."
    );
    describe_counter!(
        BACKUPS,
        Unit::Count,
        "Backups of the journal taken, by outcome (ok, failed)."
    );
    describe_gauge!(
        CONSECUTIVE,
        Unit::Count,
        "Backups that failed since the last one that succeeded."
    );
    describe_gauge!(
        INTERVAL,
        Unit::Seconds,
        "How often the journal is backed up."
    );
}

/// What to back up, where, how often.
#[derive(Clone, Debug)]
pub struct Backup {
    /// The SQLite journal the runtime writes.
    pub db: PathBuf,
    pub to: Location,
    /// Between the starts of two backups; a longer backup delays the next.
    pub every: Duration,
}

/// The last backup that succeeded.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Success {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub seconds: f64,
    pub bytes: u64,
    /// Tasks the copy holds.
    pub tasks: u64,
}

/// The last backup that failed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Failure {
    pub at_ms: u64,
    pub error: String,
    /// Failed in a row with this one.
    pub consecutive: u64,
}

/// What the backups have done, as `GET /v1/backup` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// Where the backups go.
    pub to: String,
    pub every_seconds: f64,
    /// Whether one is being taken now.
    pub running: bool,
    /// Backups that succeeded, and that failed, since the server started.
    pub succeeded: u64,
    pub failed: u64,
    /// Failed since the last that succeeded: above 0, the copy at `to` is getting old.
    pub consecutive_failures: u64,
    pub last_success: Option<Success>,
    pub last_failure: Option<Failure>,
}

/// The backups' status, shared by the loop, the API and the event stream.
#[derive(Debug)]
pub struct Backups {
    backup: Backup,
    status: Mutex<Status>,
    /// Held by the backup under way, until its copy has ended: backups never overlap, not
    /// even the last one with one the stopped loop left running.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Backups {
    pub fn new(backup: Backup) -> Arc<Self> {
        let status = Status {
            to: backup.to.to_string(),
            every_seconds: backup.every.as_secs_f64(),
            running: false,
            succeeded: 0,
            failed: 0,
            consecutive_failures: 0,
            last_success: None,
            last_failure: None,
        };
        Arc::new(Self {
            backup,
            status: Mutex::new(status),
            gate: Arc::default(),
        })
    }

    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        // A panic while holding it left plain counters: still the best account there is.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one backup now, once the one under way (if any) has ended, and records how it
    /// went. The copy runs in a task of its own (its file work on tokio's blocking pool),
    /// holding the gate: a caller that stops waiting leaves it to finish, never beside another.
    pub async fn once(self: &Arc<Self>) -> Result<Copied, colony_journal::Error> {
        let gate = self.gate.clone().lock_owned().await;
        let (db, to) = (self.backup.db.clone(), self.backup.to.clone());
        self.lock().running = true;
        let started = Instant::now();
        let copy = colony_runtime::spawner::Spawner::spawn("backup-copy", async move {
            let _gate = gate;
            sqlite::backup_to(&db, &to).await
        });
        let result = match copy.await {
            Ok(Some(result)) => result,
            Ok(None) => Err(colony_journal::Error::Storage(
                "the backup stopped with a panic".into(),
            )),
            Err(e) => Err(colony_journal::Error::Storage(format!(
                "the backup stopped: {e}"
            ))),
        };
        let at_ms = unix_ms();
        let mut status = self.lock();
        status.running = false;
        match &result {
            Ok(copied) => {
                let recovered = status.consecutive_failures;
                status.succeeded += 1;
                status.consecutive_failures = 0;
                status.last_success = Some(Success {
                    at_ms,
                    seconds: started.elapsed().as_secs_f64(),
                    bytes: copied.bytes,
                    tasks: copied.tasks,
                });
                counter!(BACKUPS, "outcome" => "ok").increment(1);
                gauge!(LAST_SUCCESS).set(at_ms as f64 / 1e3);
                gauge!(LAST_SECONDS).set(started.elapsed().as_secs_f64());
                gauge!(LAST_BYTES).set(copied.bytes as f64);
                gauge!(CONSECUTIVE).set(0.0);
                if recovered > 0 {
                    tracing::warn!(
                        "the journal is backed up to {} again, after {recovered} failed backups",
                        status.to
                    );
                }
            }
            Err(e) => {
                status.failed += 1;
                status.consecutive_failures += 1;
                let error = colony_core::text::shorten(&e.to_string(), MAX_ERROR_CHARS);
                tracing::warn!(
                    "the backup of the journal to {} failed ({} in a row): {error}",
                    status.to,
                    status.consecutive_failures
                );
                status.last_failure = Some(Failure {
                    at_ms,
                    error,
                    consecutive: status.consecutive_failures,
                });
                counter!(BACKUPS, "outcome" => "failed").increment(1);
                gauge!(CONSECUTIVE).set(status.consecutive_failures as f64);
            }
        }
        result
    }
}

/// The loop that backs the journal up, the first at once; it stops when this is dropped
/// (with the server's task that holds it).
#[derive(Debug)]
pub(crate) struct Looping(tokio::task::JoinHandle<Option<()>>);

impl Drop for Looping {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Looping {
    pub(crate) fn start(backups: Arc<Backups>) -> Self {
        // Here, not in `Backups::new`: the server's recorder is installed by now.
        gauge!(INTERVAL).set(backups.backup.every.as_secs_f64());
        gauge!(CONSECUTIVE).set(0.0);
        Self(colony_runtime::spawner::Spawner::spawn(
            "backup",
            async move {
                let mut tick = tokio::time::interval(backups.backup.every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // The outcome is recorded in the status; the loop goes on either way.
                    let _ = backups.once().await;
                }
            },
        ))
    }
}

/// The changes in the backups for the event stream since `seen` (failures, and failures in a
/// row): a `backup:failed` line when a backup failed, then `backup:recovered` when one
/// succeeded after failures, both when both happened since. Updates `seen`.
pub(crate) fn notable(backups: &Backups, seen: &mut (u64, u64)) -> Vec<serde_json::Value> {
    let status = backups.lock();
    let now = (status.failed, status.consecutive_failures);
    let before = std::mem::replace(seen, now);
    let mut lines = Vec::new();
    let failed_since = now.0 > before.0;
    if failed_since && let Some(failure) = &status.last_failure {
        lines.push(serde_json::json!({
            "kind": "backup:failed", "to": status.to,
            "consecutive-failures": failure.consecutive, "error": failure.error,
        }));
    }
    if now.1 == 0 && (before.1 > 0 || failed_since) {
        let after = if failed_since {
            status.last_failure.as_ref().map_or(0, |f| f.consecutive)
        } else {
            before.1
        };
        lines.push(serde_json::json!({
            "kind": "backup:recovered", "to": status.to, "after-failures": after,
        }));
    }
    lines
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::{TaskId, task::TaskSpec};
    use colony_journal::{Journal, SqliteJournal, SqliteOptions, SqliteReader};

    /// A journal file with `tasks` accepted.
    async fn journal(dir: &std::path::Path, tasks: u64) -> (PathBuf, SqliteJournal) {
        let db = dir.join("journal.db");
        let j = SqliteJournal::open(SqliteOptions::new(&db)).unwrap();
        let specs: Vec<TaskSpec> = (0..tasks)
            .map(|i| TaskSpec::with_payload(i.to_string()))
            .collect();
        j.accept(TaskId(1), &specs).await.unwrap();
        (db, j)
    }

    #[tokio::test]
    async fn a_failed_backup_is_counted_and_told_and_the_next_one_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _journal) = journal(dir.path(), 3).await;
        let folder = dir.path().join("backups");
        let backups = Backups::new(Backup {
            db,
            to: Location::File(folder.join("copy.db")),
            every: Duration::from_secs(60),
        });
        let mut seen = (0, 0);
        assert!(
            notable(&backups, &mut seen).is_empty(),
            "nothing happened yet"
        );
        // The folder is missing: the backup fails, and says so.
        assert!(backups.once().await.is_err());
        let status = backups.status();
        assert_eq!(
            (status.succeeded, status.failed, status.consecutive_failures),
            (0, 1, 1)
        );
        assert!(status.last_success.is_none());
        assert!(status.last_failure.is_some());
        let failed = notable(&backups, &mut seen);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0]["kind"], "backup:failed");
        assert!(notable(&backups, &mut seen).is_empty(), "told once");
        assert!(backups.once().await.is_err());
        assert_eq!(notable(&backups, &mut seen)[0]["consecutive-failures"], 2);
        // The folder is there again: the next backup succeeds, and the failures are over.
        std::fs::create_dir(&folder).unwrap();
        let copied = backups.once().await.unwrap();
        let status = backups.status();
        assert_eq!(
            (status.succeeded, status.failed, status.consecutive_failures),
            (1, 2, 0)
        );
        let success = status.last_success.unwrap();
        assert_eq!((success.bytes, success.tasks), (copied.bytes, 3));
        assert!(!status.running);
        let recovered = notable(&backups, &mut seen);
        assert_eq!(recovered.len(), 1, "{recovered:?}");
        assert_eq!(recovered[0]["kind"], "backup:recovered");
        assert_eq!(recovered[0]["after-failures"], 2);
        assert!(notable(&backups, &mut seen).is_empty(), "told once");
        // A failure and a success between two looks: both told, in order.
        std::fs::remove_dir_all(&folder).unwrap();
        assert!(backups.once().await.is_err());
        std::fs::create_dir(&folder).unwrap();
        backups.once().await.unwrap();
        let both = notable(&backups, &mut seen);
        let kinds: Vec<&str> = both.iter().map(|l| l["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["backup:failed", "backup:recovered"]);
        assert_eq!(both[0]["consecutive-failures"], 1);
        assert_eq!(both[1]["after-failures"], 1);
        let copy = SqliteReader::open(folder.join("copy.db")).unwrap();
        assert_eq!(copy.counts().unwrap().total(), 3);
    }

    #[tokio::test]
    async fn the_loop_backs_up_at_once_then_every_interval_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal) = journal(dir.path(), 2).await;
        let to = dir.path().join("copy.db");
        let backups = Backups::new(Backup {
            db,
            to: Location::File(to.clone()),
            every: Duration::from_millis(200),
        });
        let looping = Looping::start(backups.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while backups.status().succeeded < 1 {
            assert!(Instant::now() < deadline, "no first backup");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            SqliteReader::open(&to).unwrap().counts().unwrap().total(),
            2
        );
        // Written after the first backup: a later one holds it.
        let more: Vec<TaskSpec> = (0..5)
            .map(|i| TaskSpec::with_payload(i.to_string()))
            .collect();
        journal.accept(TaskId(3), &more).await.unwrap();
        while SqliteReader::open(&to).unwrap().counts().unwrap().total() < 7 {
            assert!(Instant::now() < deadline, "no later backup");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The copy is in place a moment before its success is recorded.
        while backups.status().succeeded < 2 {
            assert!(
                Instant::now() < deadline,
                "the later backup is not recorded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(looping);
        // Let an abort land, and a backup under way end.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stopped = backups.status().succeeded;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            backups.status().succeeded,
            stopped,
            "no backup after the loop stopped"
        );
    }
}
