//! `colony serve --backup-to`: the journal backed up continuously while tasks are written,
//! every backup a journal that restores and passes `integrity_check`; a failing destination
//! shown and survived; a last backup when the server stops.

use serde_json::{Value, json};
use std::{
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod common;
use common::{Server, colony};

/// Tasks a restored backup holds, after checking it as a journal: `colony restore` checks
/// the copy's integrity and counts; `integrity_check` is asked again of the restored file.
fn restored_tasks(backup: &Path, restored: &Path) -> u64 {
    let (out, err, code) = colony(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--db",
        restored.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "the backup does not restore: {err}");
    let copied: Value = serde_json::from_str(&out).unwrap();
    let check = std::process::Command::new("sqlite3")
        .arg(restored)
        .arg("PRAGMA integrity_check;")
        .output();
    // sqlite3 may be absent: `restore` checked the same pragma.
    if let Ok(check) = check
        && check.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
    }
    copied["tasks"].as_u64().unwrap()
}

#[test]
fn the_journal_is_backed_up_while_it_is_written_and_every_backup_restores() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut server = Server::start_logging(
        dir.path(),
        &[
            "--agents",
            "50",
            "--db",
            "j.db",
            "--backup-to",
            "backups/copy.db",
            "--backup-every",
            "1s",
        ],
        Stdio::from(log),
    );
    let backup = dir.path().join("backups/copy.db");

    // Write load: batches of tasks submitted without pause until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, submitted, url) = (stop.clone(), submitted.clone(), server.url.clone());
        colony_runtime::spawner::Spawner::spawn_thread("test-writer", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let http = reqwest::Client::new();
            let tasks: Vec<Value> = (0..200).map(|i| json!({ "payload": i })).collect();
            let body = json!({ "tasks": tasks }).to_string();
            while !stop.load(Ordering::Relaxed) {
                let status = runtime.block_on(async {
                    http.post(format!("{url}/v1/tasks/batch"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap()
                        .status()
                });
                assert_eq!(status.as_u16(), 202);
                submitted.fetch_add(200, Ordering::Relaxed);
            }
        })
        .unwrap()
    };

    // Each new backup taken under that load restores, checks, and holds no fewer tasks than
    // the one before.
    let (mut seen, mut restored, mut last_tasks) = (0, 0, 0);
    let start = Instant::now();
    while restored < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "backups stopped"
        );
        let status = server.get("/v1/backup", None);
        let succeeded = status["succeeded"].as_u64().unwrap();
        if succeeded > seen {
            seen = succeeded;
            let tasks = restored_tasks(&backup, &dir.path().join(format!("r{restored}.db")));
            assert!(tasks >= last_tasks, "{tasks} tasks after {last_tasks}");
            last_tasks = tasks;
            restored += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last_tasks > 0, "the backups taken under load hold no task");
    let status = server.get("/v1/backup", None);
    assert_eq!(status["to"], "backups/copy.db");
    assert_eq!(status["every-seconds"], 1.0);
    assert_eq!(status["failed"], 0);
    assert!(status["last-success"]["bytes"].as_u64().unwrap() > 0);

    // The destination's folder goes away: backups fail, are counted and shown, and the
    // server goes on taking tasks.
    std::fs::rename(dir.path().join("backups"), dir.path().join("moved")).unwrap();
    server.wait_until(Duration::from_secs(30), "a failed backup", || {
        server.get("/v1/backup", None)["consecutive-failures"].as_u64() >= Some(1)
    });
    let status = server.get("/v1/backup", None);
    assert!(
        status["last-failure"]["error"]
            .as_str()
            .unwrap()
            .contains("copy.db"),
        "{status}"
    );
    let metrics = server
        .request(reqwest::Method::GET, "/metrics", None, None)
        .unwrap()
        .1;
    assert!(
        metrics.contains("colony_backups_total{outcome=\"failed\"}"),
        "{metrics}"
    );
    // The series the alert rules need, set once the server's recorder is in place.
    assert!(
        metrics.contains("\ncolony_backup_interval_seconds 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\ncolony_backup_last_success_timestamp_seconds "),
        "{metrics}"
    );
    let failing = metrics
        .lines()
        .find_map(|l| l.strip_prefix("colony_backup_consecutive_failures "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(failing >= Some(1.0), "{failing:?}");
    let before = submitted.load(Ordering::Relaxed);
    server.wait_until(Duration::from_secs(30), "tasks accepted meanwhile", || {
        submitted.load(Ordering::Relaxed) > before + 1000
    });
    // It comes back: the next backup succeeds and the failures are over.
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    server.wait_until(Duration::from_secs(30), "a backup again", || {
        server.get("/v1/backup", None)["consecutive-failures"] == 0
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Stopped as Ctrl-C does: a last backup, taken once the runtime has stopped, holds every
    // task the journal holds.
    assert!(server.interrupt(Duration::from_secs(120)), "serve failed");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("a last time"), "{log}");
    let in_backup = restored_tasks(&backup, &dir.path().join("last.db"));
    let (out, err, code) = colony(&[
        "tasks",
        "--db",
        dir.path().join("j.db").to_str().unwrap(),
        "--json",
        "--limit",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let journal: Value = serde_json::from_str(&out).unwrap();
    let total = journal["total"].as_u64().unwrap();
    assert_eq!(in_backup, total, "{out}");
    assert!(total >= submitted.load(Ordering::Relaxed), "{out}");
}

/// SIGTERM (`docker stop`, Kubernetes) stops the server as Ctrl-C does: the runtime stops,
/// the last backup is taken, and it exits 0 (as PID 1 in a container it would otherwise not
/// even hear the signal, and be killed after the grace period).
#[test]
fn sigterm_stops_the_server_cleanly_with_its_last_backup() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut server = Server::start_logging(
        dir.path(),
        &[
            "--agents",
            "10",
            "--db",
            "j.db",
            "--backup-to",
            "copy.db",
            "--backup-every",
            "1h",
        ],
        Stdio::from(log),
    );
    server.submit_batch((0..50).map(|i| json!({ "payload": i })).collect());
    assert!(server.terminate(Duration::from_secs(60)), "serve failed");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("a last time"), "{log}");
    assert!(log.contains("backed up"), "{log}");
    assert_eq!(
        restored_tasks(&dir.path().join("copy.db"), &dir.path().join("r.db")),
        50
    );
}
