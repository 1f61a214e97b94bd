//! The SQLite journal on real files: conformance, durability, migrations, faults.

use colony_core::{AgentId, TaskId, task::TaskSpec, task::TaskState};
use colony_journal::{Error, Journal, Record, SqliteJournal, SqliteOptions, testing::Suite};
use futures::executor::block_on;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU32, Ordering};

fn open(path: &std::path::Path) -> SqliteJournal {
    SqliteJournal::open(SqliteOptions::new(path)).unwrap()
}

#[test]
fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicU32::new(0);
    Suite::test_all(|| {
        open(
            &dir.path()
                .join(format!("{}.db", n.fetch_add(1, Ordering::Relaxed))),
        )
    });
}

#[test]
fn crash_case() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    // Acknowledged means committed: sync is a no-op, and a crash is dropping the journal
    // (its writer may or may not commit what it still holds) and opening the file again.
    colony_journal::testing::crash_case(
        open(&path),
        |_| {},
        |j| {
            drop(j);
            open(&path)
        },
    );
}

#[test]
fn everything_acknowledged_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("colony.db");
    let j = open(&path);
    let first = j.next_task_id();
    let specs: Vec<TaskSpec> = (0..1000)
        .map(|i| TaskSpec::with_payload(format!("{i}")))
        .collect();
    block_on(j.accept(first, &specs)).unwrap();
    block_on(j.record(vec![
        Record::Started {
            task: first,
            attempt: 1,
            agent: AgentId(3),
        },
        Record::Committed {
            task: first,
            attempt: 1,
            output: "\"ok\"".into(),
        },
        Record::Started {
            task: TaskId(first.0 + 1),
            attempt: 1,
            agent: AgentId(4),
        },
    ]))
    .unwrap();
    drop(j);

    let j = open(&path);
    assert_eq!(j.next_task_id(), TaskId(first.0 + 1000));
    let counts = j.counts().unwrap();
    assert_eq!(
        (counts.queued, counts.running, counts.succeeded),
        (998, 1, 1)
    );
    let row = j.task(first).unwrap().unwrap();
    assert_eq!(
        (row.state, row.output.as_deref()),
        (TaskState::Succeeded, Some(&b"\"ok\""[..]))
    );
    assert_eq!(
        &j.task(TaskId(first.0 + 999)).unwrap().unwrap().spec.payload[..],
        b"999"
    );
    let recovered = j.recover().unwrap();
    assert_eq!(recovered.len(), 999);
    assert_eq!(recovered[0].state, TaskState::Queued);
    assert_eq!(
        recovered[0].attempt,
        1 + 3,
        "the lease moves past what the dead process may have run"
    );
    assert_eq!(j.counts().unwrap().running, 0);
}

#[test]
fn a_second_process_is_kept_off_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("colony.db");
    let _first = open(&path);
    let err = SqliteJournal::open(SqliteOptions::new(&path)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    // Another spelling of the same file is the same file.
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let err = SqliteJournal::open(SqliteOptions::new(&link)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("another colony process holds"),
        "{err}"
    );
}

#[test]
fn bad_files_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteJournal::open(SqliteOptions::new(dir.path())).unwrap_err();
    assert!(matches!(err, Error::IsDirectory { .. }), "{err}");

    let text = dir.path().join("notes.txt");
    let notes = "this is not a database, it is a shopping list\n".repeat(100);
    std::fs::write(&text, &notes).unwrap();
    let err = SqliteJournal::open(SqliteOptions::new(&text)).unwrap_err();
    assert!(matches!(err, Error::NotColony { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        notes,
        "the file is left as it was"
    );

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE photos (id INTEGER)")
        .unwrap();
    let err = SqliteJournal::open(SqliteOptions::new(&other)).unwrap_err();
    assert!(matches!(err, Error::NotColony { .. }), "{err}");

    let newer = dir.path().join("newer.db");
    drop(open(&newer));
    Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteJournal::open(SqliteOptions::new(&newer)).unwrap_err();
    assert!(
        err.to_string()
            .contains("schema version 99, newer than this colony"),
        "{err}"
    );

    let missing = dir.path().join("no/such/folder/colony.db");
    let err = SqliteJournal::open(SqliteOptions::new(&missing)).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let corrupt = dir.path().join("corrupt.db");
    {
        let j = open(&corrupt);
        let specs = vec![TaskSpec::with_payload(vec![b'x'; 2000]); 200];
        block_on(j.accept(j.next_task_id(), &specs)).unwrap();
    }
    let mut bytes = std::fs::read(&corrupt).unwrap();
    for b in &mut bytes[4096..8192] {
        *b = 0xA5;
    }
    std::fs::write(&corrupt, bytes).unwrap();
    let result = SqliteJournal::open(SqliteOptions::new(&corrupt)).and_then(|j| {
        j.unfinished()?;
        Ok(())
    });
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::NotColony { .. }),
        "{err}"
    );
}

#[test]
fn migrates_from_the_previous_version_keeping_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        // A database as version 1 left it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE tasks (
                id INTEGER PRIMARY KEY, key TEXT, priority INTEGER NOT NULL, requirement TEXT,
                payload BLOB NOT NULL, timeout_ms INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
                state INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, agent INTEGER,
                output BLOB, error TEXT, accepted_at INTEGER NOT NULL, finished_at INTEGER);
             CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT INTO counts VALUES (0, 1), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0);
             INSERT INTO tasks (id, priority, payload, timeout_ms, max_attempts, state, accepted_at)
                VALUES (1, 7, X'7B7D', 1000, 3, 0, 0);
             PRAGMA application_id = 1668246638;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let j = open(&path);
    let row = j.task(TaskId(1)).unwrap().unwrap();
    assert_eq!(
        (row.spec.priority.get(), &row.spec.payload[..]),
        (7, &b"{}"[..])
    );
    assert_eq!(j.counts().unwrap().queued, 1);
    assert_eq!(j.next_task_id(), TaskId(2));
    drop(j);
    let conn = Connection::open(&path).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, colony_journal::sqlite::SCHEMA_VERSION);
    let agents: i64 = conn
        .query_row("SELECT count(*) FROM agents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(agents, 0);
}

#[test]
fn a_full_disk_refuses_submissions_and_resumes_when_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    drop(open(&path));
    // Ballast that takes most of the room the journal will be allowed.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE ballast (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO ballast SELECT zeroblob(4000) FROM n;",
        )
        .unwrap();
    let mut options = SqliteOptions::new(&path);
    options.max_page_count = Some(260);
    let j = SqliteJournal::open(options).unwrap();
    let spec = TaskSpec::with_payload(vec![b'7'; 1000]);
    let mut accepted = 0u64;
    let err = loop {
        let first = j.next_task_id();
        match block_on(j.accept(first, &vec![spec.clone(); 10])) {
            Ok(()) => accepted += 10,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "the page limit never bit");
    };
    assert!(matches!(err, Error::Full { .. }), "{err}");
    assert!(err.to_string().contains("free space"), "{err}");
    assert_eq!(
        j.counts().unwrap().total(),
        accepted,
        "a refused batch leaves nothing behind"
    );
    assert!(j.fault().is_some());

    // Transitions of accepted tasks are kept while the disk is full...
    let first = TaskId(1);
    let pending = j.record(vec![
        Record::Started {
            task: first,
            attempt: 1,
            agent: AgentId(1),
        },
        Record::Committed {
            task: first,
            attempt: 1,
            output: vec![b'r'; 50_000].into(),
        },
    ]);
    // ...and land once space frees.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE ballast")
        .unwrap();
    block_on(pending).unwrap();
    assert_eq!(j.task(first).unwrap().unwrap().state, TaskState::Succeeded);
    block_on(j.accept(j.next_task_id(), &[spec])).unwrap();
    assert_eq!(j.counts().unwrap().total(), accepted + 1);
    assert!(j.fault().is_none());
}

#[test]
fn backups_taken_while_writing_are_consistent_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.db");
    let journal = std::sync::Arc::new(open(&path));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (journal, stop) = (journal.clone(), stop.clone());
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let first = journal.next_task_id();
                    block_on(
                        journal.accept(first, &vec![TaskSpec::with_payload("{\"k\":1}"); 200]),
                    )
                    .unwrap();
                    let records = (0..200)
                        .flat_map(|i| {
                            let task = TaskId(first.0 + i);
                            [
                                Record::Started {
                                    task,
                                    attempt: 1,
                                    agent: AgentId(1),
                                },
                                Record::Committed {
                                    task,
                                    attempt: 1,
                                    output: "1".into(),
                                },
                            ]
                        })
                        .collect();
                    block_on(journal.record(records)).unwrap();
                    written += 200;
                }
                written
            })
            .unwrap()
    };
    let mut sizes = Vec::new();
    for i in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let to = dir.path().join(format!("backup-{i}.db"));
        let copied = colony_journal::sqlite::backup(&path, &to).unwrap();
        assert!(copied.tasks > 0);
        // The copy's counts agree with its rows: one snapshot, taken mid-write.
        let check = Connection::open(&to).unwrap();
        let rows: i64 = check
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows as u64, copied.tasks);
        sizes.push(copied.tasks);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    assert!(written >= sizes[2]);

    // A restore needs the journal closed, and --force to replace a file.
    let backup = dir.path().join("backup-2.db");
    let err = colony_journal::sqlite::restore(&backup, &path, true).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(journal);
    let err = colony_journal::sqlite::restore(&backup, &path, false).unwrap_err();
    assert!(err.to_string().contains("pass --force"), "{err}");
    let restored = colony_journal::sqlite::restore(&backup, &path, true).unwrap();
    assert_eq!(restored.tasks, sizes[2]);
    let j = open(&path);
    assert_eq!(j.counts().unwrap().total(), sizes[2]);
    assert_eq!(j.next_task_id(), TaskId(sizes[2] + 1));
    assert!(!dir.path().join("backup-2.db.partial").exists());

    // Bad sources are refused, and nothing is written.
    let err =
        colony_journal::sqlite::backup(&dir.path().join("missing.db"), &dir.path().join("x.db"))
            .unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
    assert!(!dir.path().join("x.db").exists());
    let err = colony_journal::sqlite::backup(&backup, dir.path()).unwrap_err();
    assert!(matches!(err, Error::IsDirectory { .. }), "{err}");
    let same = dir.path().join(".").join("backup-2.db");
    let err = colony_journal::sqlite::backup(&backup, &same).unwrap_err();
    assert!(err.to_string().contains("is the journal itself"), "{err}");
}

#[test]
fn retention_prunes_finished_payloads_and_keeps_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir.path().join("r.db"));
    let first = j.next_task_id();
    block_on(j.accept(first, &vec![TaskSpec::with_payload("\"in\""); 10])).unwrap();
    let records = (0..8)
        .flat_map(|i| {
            let task = TaskId(first.0 + i);
            [
                Record::Started {
                    task,
                    attempt: 1,
                    agent: AgentId(1),
                },
                Record::Committed {
                    task,
                    attempt: 1,
                    output: "\"out\"".into(),
                },
            ]
        })
        .collect();
    block_on(j.record(records)).unwrap();
    use colony_journal::sqlite::Retention;
    let pruned = j
        .prune(Retention {
            keep_last: Some(3),
            ..Retention::default()
        })
        .unwrap();
    assert_eq!(pruned, 5);
    let row = |i: u64| j.task(TaskId(first.0 + i)).unwrap().unwrap();
    assert_eq!((row(0).output, &row(0).spec.payload[..]), (None, &b""[..]));
    assert_eq!(
        row(0).state,
        TaskState::Succeeded,
        "the row and its state stay"
    );
    assert_eq!(
        row(7).output.as_deref(),
        Some(&b"\"out\""[..]),
        "the newest 3 keep theirs"
    );
    assert_eq!(
        &row(9).spec.payload[..],
        b"\"in\"",
        "unfinished tasks are never touched"
    );
    std::thread::sleep(std::time::Duration::from_millis(2));
    let older = Retention {
        older_than: Some(std::time::Duration::ZERO),
        ..Retention::default()
    };
    assert_eq!(j.prune(older).unwrap(), 3);
    assert_eq!(j.prune(older).unwrap(), 0, "nothing left to prune");
    // Absurd rules prune nothing rather than wrapping around to everything.
    let absurd = Retention {
        older_than: Some(std::time::Duration::from_secs(u64::MAX / 2)),
        keep_last: Some(u64::MAX),
    };
    assert_eq!(j.prune(absurd).unwrap(), 0);
    assert_eq!(j.counts().unwrap().total(), 10);
}

#[test]
fn retention_keeps_the_ballots_of_open_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&dir.path().join("d.db"));
    colony_journal::testing::pruning_keeps_the_ballots_of_open_decisions(&j, |j| {
        let all = colony_journal::sqlite::Retention {
            keep_last: Some(0),
            ..Default::default()
        };
        j.prune(all).unwrap()
    });
}

#[test]
fn a_write_that_can_never_commit_is_dropped_and_the_rest_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SqliteOptions::new(dir.path().join("big.db"));
    options.max_value_bytes = Some(10_000);
    let j = SqliteJournal::open(options).unwrap();
    let first = j.next_task_id();
    block_on(j.accept(first, &[TaskSpec::default(), TaskSpec::default()])).unwrap();
    let (a, b) = (first, TaskId(first.0 + 1));
    // Both in one group: the oversized output fails alone.
    let too_big = j.record(vec![
        Record::Started {
            task: a,
            attempt: 1,
            agent: AgentId(1),
        },
        Record::Committed {
            task: a,
            attempt: 1,
            output: vec![b'x'; 50_000].into(),
        },
    ]);
    let fine = j.record(vec![
        Record::Started {
            task: b,
            attempt: 1,
            agent: AgentId(2),
        },
        Record::Committed {
            task: b,
            attempt: 1,
            output: "\"small\"".into(),
        },
    ]);
    assert!(block_on(too_big).is_err());
    block_on(fine).unwrap();
    assert_eq!(j.task(b).unwrap().unwrap().state, TaskState::Succeeded);
    assert_eq!(
        j.task(a).unwrap().unwrap().state,
        TaskState::Queued,
        "left for recovery"
    );
    assert!(j.fault().is_none(), "a bad value is not a storage fault");
    // And the journal goes on.
    block_on(j.accept(j.next_task_id(), &[TaskSpec::default()])).unwrap();
    drop(j); // returns: no retry loop holds the writer
}

#[test]
fn a_decision_written_before_calls_existed_asked_every_seat() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let j = open(&path);
    let seats: Vec<colony_journal::Seat> = (0..3)
        .map(|i| colony_journal::Seat {
            agent: AgentId(i),
            pool: 0,
            weight: 1.0,
        })
        .collect();
    let opening = colony_journal::Opening {
        options: "{}".into(),
        seats,
        asked: 3,
        opened_at_ms: 1,
    };
    block_on(j.open_decision(TaskId(1), &vec![TaskSpec::default(); 3], opening)).unwrap();
    block_on(j.close_decision(TaskId(1), "{}".into())).unwrap();
    drop(j);
    // Version 3 had no `asked` column: its rows read back as NULL.
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE decisions SET asked = NULL", [])
        .unwrap();
    drop(conn);
    let j = open(&path);
    let row = j.decision(TaskId(1)).unwrap().unwrap();
    assert_eq!(row.opening.asked, 3);
    assert!(row.calls.is_empty());
    assert_eq!(
        j.closed_ballots(&[TaskId(1), TaskId(3), TaskId(4)])
            .unwrap(),
        [TaskId(1), TaskId(3)]
    );
}
