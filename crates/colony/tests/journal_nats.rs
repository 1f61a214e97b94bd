//! `--db nats://...`: the journal in a JetStream stream on a real `nats-server`, used by
//! real `colony` processes that are killed (SIGKILL) and started again.

mod common;

use colony_cluster::testing::NatsServer;
use common::{Server, colony};
use std::time::Duration;

fn nats() -> (tempfile::TempDir, NatsServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::single(&dir.path().join("nats")).expect("nats-server starts");
    (dir, server)
}

#[test]
fn killed_mid_run_on_a_journal_in_nats_nothing_is_lost_or_committed_twice() {
    let (_dir, server) = nats();
    let url = server.url();
    assert!(common::crash_bench(&["--nats", &url, "--replicas", "1"]) >= 1);
}

#[test]
fn a_workflow_run_on_a_journal_in_nats_resumes_where_it_was_killed() {
    let (dir, server) = nats();
    let wf = common::resumable_workflow(dir.path());
    // The gate open from the start: the resumed run ends with every task succeeded.
    std::fs::write(dir.path().join("marker"), "").unwrap();
    let db = format!("{}/resumable?replicas=1", server.url());
    let (w, out) = (wf.to_str().unwrap(), dir.path().join("out"));
    let out = out.to_str().unwrap();
    common::killed_once_started(
        &["run", w, "--db", &db, "--out", out],
        &dir.path().join("first.count"),
    );
    let (_, stderr, code) = colony(&["run", w, "--db", &db, "--out", out]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("add --resume"), "{stderr}");
    let (stdout, stderr, code) =
        colony(&["run", w, "--db", &db, "--out", out, "--resume", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["succeeded"], 4, "{report}");
    let runs = std::fs::read_to_string(dir.path().join("first.count")).unwrap();
    assert_eq!(runs.lines().count(), 1, "succeeded before: not run again");
}

#[test]
fn a_server_on_a_journal_in_nats_is_replaced_by_another_that_finds_every_task() {
    let (_dir, server) = nats();
    let db = format!("{}/serve?replicas=1", server.url());
    let first = Server::start(&["--agents", "4", "--db", &db]);
    let tasks: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({ "payload": { "n": i } }))
        .collect();
    first.submit_batch(tasks);
    first.wait_until(Duration::from_secs(30), "the tasks to end", || {
        first.get("/v1/stats", None)["succeeded"] == 50
    });
    // Another process takes the journal over while the first still runs: the first can
    // accept nothing more.
    let second = Server::start(&["--agents", "4", "--db", &db]);
    let (status, body) = first
        .request(
            reqwest::Method::POST,
            "/v1/tasks",
            None,
            Some(serde_json::json!({ "payload": {} })),
        )
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("taken over"), "{body}");
    let (status, body) = first
        .request(reqwest::Method::GET, "/readyz", None, None)
        .unwrap();
    assert_eq!(status, 503, "not ready once taken over: {body}");
    drop(first);
    let listed = second.get("/v1/tasks?state=succeeded&limit=100", None);
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 50, "{listed}");
    let task = second.get("/v1/tasks/50", None);
    assert_eq!(
        (&task["state"], &task["output"]),
        (
            &serde_json::json!("succeeded"),
            &serde_json::json!({ "n": 49 })
        ),
        "{task}"
    );
    assert_eq!(
        second.get("/v1/stats", None)["succeeded"],
        0,
        "nothing ran again"
    );
    // Read from the command line, the journal is not taken over: the server goes on.
    let (stdout, stderr, code) = colony(&["tasks", "--db", &db, "--state", "succeeded", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["tasks"].as_array().unwrap().len(),
        20,
        "--limit's default"
    );
    assert_eq!(report["tasks"][0]["id"], 1, "oldest first");
    second.submit_batch(vec![serde_json::json!({ "payload": {} })]);
    // Pruned from the command line, the journal is pruned by the server keeping it, which
    // goes on: its finished tasks lose their outputs, and it takes tasks as before.
    let (stdout, stderr, code) = colony(&["prune", "--db", &db, "--keep-last", "10", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["by_keeper"], true, "{report}");
    assert!(report["pruned"].as_u64().unwrap() >= 40, "{report}");
    let pruned = second.get("/v1/tasks/1", None);
    assert!(pruned["output"].is_null(), "{pruned}");
    second.submit_batch(vec![serde_json::json!({ "payload": {} })]);
    let (status, body) = second
        .request(reqwest::Method::GET, "/readyz", None, None)
        .unwrap();
    assert_eq!(status, 200, "still its journal: {body}");
    // A location that is not one is refused before anything starts.
    let (_, stderr, code) = colony(&["serve", "--db", "nats://127.0.0.1:1/a.b"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("journal name"), "{stderr}");
}

#[test]
fn commands_that_work_on_a_sqlite_file_refuse_a_journal_in_nats_and_say_so() {
    let db = "nats://127.0.0.1:1/j";
    for (args, says) in [
        (
            vec!["agents", "--db", db],
            "through the `colony serve` that keeps it",
        ),
        (vec!["backup", "--db", db, "--to", "b.db"], "replicas"),
    ] {
        let (_, stderr, code) = colony(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("SQLite file only") && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    // A continuous backup of it is refused with the rest of the settings.
    let (_, stderr, code) = colony(&["serve", "--db", db, "--backup-to", "b.db"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kept by the servers' replicas"), "{stderr}");
    // And the other way round: taking over is for a journal in NATS.
    let (_, stderr, code) = colony(&["prune", "--db", "x.db", "--keep-last", "1", "--take-over"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--take-over is for a journal in NATS"),
        "{stderr}"
    );
}

#[test]
fn prune_keeps_every_row_of_a_journal_in_nats_and_the_newest_finished_tasks_whole() {
    let (dir, server) = nats();
    let db = format!("{}/pruned?replicas=1", server.url());
    let out = dir.path().join("out");
    let quickstart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.yaml");
    let (_, stderr, code) = colony(&[
        "run",
        quickstart.to_str().unwrap(),
        "--db",
        &db,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    // The run wrote it a moment ago and no process answers for it: it may still be kept by
    // one cut off from NATS, so it is taken over only when asked.
    let (_, stderr, code) = colony(&["prune", "--db", &db, "--older-than", "1d"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("written") && stderr.contains("--take-over"),
        "{stderr}"
    );
    // By age: every task ended moments ago, none a day ago.
    let (stdout, stderr, code) = colony(&[
        "prune",
        "--db",
        &db,
        "--older-than",
        "1d",
        "--json",
        "--take-over",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pruned"], 0, "{report}");
    let (stdout, stderr, code) = colony(&["prune", "--db", &db, "--keep-last", "2", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pruned"], 4, "six succeeded, two kept: {report}");
    assert!(
        report["bytes_after"].as_u64() < report["bytes_before"].as_u64(),
        "{report}"
    );
    let (stdout, stderr, code) = colony(&["tasks", "--db", &db, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let tasks: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(tasks["total"], 6, "every row kept: {tasks}");
    // By age again: the two kept by count ended before now.
    let (stdout, stderr, code) = colony(&["prune", "--db", &db, "--older-than", "0s", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pruned"], 2, "{report}");
    let (stdout, _, code) = colony(&["prune", "--db", &db, "--keep-last", "2"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("of 0 finished tasks"), "{stdout}");
    // A journal that is not there is bad input, as a missing SQLite file is.
    let missing = format!("{}/missing", server.url());
    for args in [
        &["prune", "--db", &missing, "--keep-last", "2"][..],
        &["tasks", "--db", &missing][..],
    ] {
        let (_, stderr, code) = colony(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("no such journal at"), "{args:?}: {stderr}");
    }
}
