//! `colony token`, `colony serve --tokens` and the client commands, as real processes over
//! real HTTP on loopback.

mod common;

use common::{COLONY, Server};
use serde_json::{Value, json};
use std::{
    process::Command,
    time::{Duration, Instant},
};

/// Runs colony with `args`; stdout, stderr and the exit code.
fn colony(args: &[&str], token: Option<&str>) -> (String, String, i32) {
    let mut command = Command::new(COLONY);
    command
        .args(args)
        .env_remove("COLONY_TOKEN")
        .env_remove("COLONY_SERVER");
    if let Some(t) = token {
        command.env("COLONY_TOKEN", t);
    }
    let out = command.output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn clients_submit_wait_list_and_cancel_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let tokens_arg = tokens.to_str().unwrap();
    let create = |name: &str, scope: &str| {
        let (out, err, code) = colony(
            &[
                "token", "create", "--name", name, "--scope", scope, "--tokens", tokens_arg,
            ],
            None,
        );
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("keep it now"), "{err}");
        out.trim().to_owned()
    };
    let submit = create("ci", "submit");
    let read = create("dash", "read");
    let (_, err, code) = colony(
        &[
            "token", "create", "--name", "ci", "--scope", "read", "--tokens", tokens_arg,
        ],
        None,
    );
    assert_eq!(code, 2, "a second token of the same name: {err}");
    let server = Server::start(&["--agents", "100", "--tokens", tokens_arg]);
    let url = server.url.clone();
    let s = url.as_str();

    let (out, err, code) = colony(
        &[
            "submit",
            "--server",
            s,
            "--wait",
            "--key",
            "k",
            r#"{"x": 1}"#,
        ],
        Some(&submit),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("succeeded") && out.contains(r#"{"x":1}"#),
        "{out}"
    );

    let lines = dir.path().join("tasks.jsonl");
    std::fs::write(&lines, "{\"n\": 1}\n\n{\"n\": 2}\n\"three\"\n").unwrap();
    let (out, err, code) = colony(
        &[
            "submit",
            "--server",
            s,
            "--file",
            lines.to_str().unwrap(),
            "--json",
        ],
        Some(&submit),
    );
    assert_eq!(code, 0, "{err}");
    let accepted: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(accepted["count"], 3);
    let last = accepted["first"].as_u64().unwrap() + 2;
    std::fs::write(&lines, "{\"n\": 1}\n{oops\n").unwrap();
    let (_, err, code) = colony(
        &["submit", "--server", s, "--file", lines.to_str().unwrap()],
        Some(&submit),
    );
    assert_eq!(code, 2);
    assert!(err.contains("tasks.jsonl:2: not JSON"), "{err}");

    // Reading needs only the read token.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, err, code) = colony(
            &["status", "--server", s, &last.to_string(), "--json"],
            Some(&read),
        );
        assert_eq!(code, 0, "{err}");
        let task: Value = serde_json::from_str(out.trim()).unwrap();
        if task["state"] == "succeeded" {
            assert_eq!(task["output"], "three");
            break;
        }
        assert!(Instant::now() < deadline, "{task}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (out, _, code) = colony(&["status", "--server", s], Some(&read));
    assert_eq!(code, 0);
    assert!(
        out.contains("succeeded") && out.contains("accepted"),
        "{out}"
    );
    let (out, err, code) = colony(
        &["tasks", "--server", s, "--state", "succeeded", "--json"],
        Some(&read),
    );
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 4);
    let (out, err, code) = colony(&["agents", "--server", s], Some(&read));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("worker") && out.contains("100"), "{out}");
    let (out, err, code) = colony(&["agents", "--server", s, "--children", "0"], Some(&read));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("up") && out.contains("healthy"), "{out}");

    // Refusals name the server and what it said; the caller's mistakes exit 2.
    let (_, err, code) = colony(&["submit", "--server", s, "1"], Some(&read));
    assert_eq!(code, 2);
    assert!(err.contains(s) && err.contains("forbidden"), "{err}");
    let (_, err, code) = colony(&["status", "--server", s], None);
    assert_eq!(code, 2);
    assert!(err.contains("unauthorized"), "{err}");
    // An unknown id is the caller's mistake, for cancel as for status: exit 2.
    let (_, err, code) = colony(&["status", "--server", s, "999999"], Some(&read));
    assert_eq!(code, 2);
    assert!(err.contains("no-such-task"), "{err}");
    let (_, err, code) = colony(&["cancel", "--server", s, "999999"], Some(&submit));
    assert_eq!(code, 2, "not every task was cancelled");
    assert!(err.contains("no-such-task"), "{err}");
    let (_, err, code) = colony(&["cancel", "--server", s, &last.to_string()], Some(&submit));
    assert_eq!(code, 2);
    assert!(err.contains("already-ended"), "{err}");
    let (_, err, code) = colony(&["status", "--server", "http://127.0.0.1:1"], None);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach http://127.0.0.1:1"), "{err}");
    let (_, err, code) = colony(&["cancel", "--server", "http://127.0.0.1:1", "5"], None);
    assert_eq!(code, 1, "a server out of reach is not the caller's mistake");
    assert!(err.contains("cannot reach http://127.0.0.1:1"), "{err}");
}

#[test]
fn serve_refuses_a_public_address_without_tokens_and_a_bad_tokens_file() {
    let (_, err, code) = colony(&["serve", "--addr", "0.0.0.0:0"], None);
    assert_eq!(code, 2);
    assert!(err.contains("not a loopback address"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ci submit sha256:beef\n").unwrap();
    let (_, err, code) = colony(
        &[
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("tokens:1: the hash"), "{err}");
}

#[test]
fn serve_runs_the_pools_of_a_file_and_tasks_pick_them_by_role() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pools = root.join("examples/serve-pools.yaml");
    let out = tempfile::tempdir().unwrap();
    let (pools, out) = (pools.to_str().unwrap(), out.path().to_str().unwrap());
    let server = Server::start(&["--pools", pools, "--out", out]);
    let url = server.url.clone();
    let readme = root.join("README.md").canonicalize().unwrap();
    let payload = serde_json::json!({ "file": readme }).to_string();
    let (out, err, code) = colony(
        &[
            "submit", "--server", &url, "--role", "checksum", "--wait", "--json", &payload,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    let expected = Command::new("sha256sum").arg(&readme).output().unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    assert_eq!(
        done["output"].as_str().unwrap(),
        expected.trim_end(),
        "{done}"
    );
    let (out, _, code) = colony(&["agents", "--server", &url, "--json"], None);
    assert_eq!(code, 0);
    let h: Value = serde_json::from_str(out.trim()).unwrap();
    let workers = h["tiers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        workers["agents"], 108,
        "100 planners, 4 checksums, 4 word counts"
    );
    // A role no pool has is refused, naming it.
    let (_, err, code) = colony(&["submit", "--server", &url, "--role", "poet", "1"], None);
    assert_eq!(code, 2);
    assert!(err.contains("poet"), "{err}");
}

#[test]
fn a_bad_pools_file_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let pools = dir.path().join("pools.yaml");
    std::fs::write(&pools, "name: p\nagents:\n  - { name: a, kind: robot }\n").unwrap();
    let (_, err, code) = colony(&["serve", "--pools", pools.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pools.yaml:3"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
}

/// `colony runs`: a workflow submitted and waited for, listed, shown and cancelled from the
/// command line, with exit codes that say whose fault a refusal was.
#[test]
fn runs_are_submitted_waited_for_listed_shown_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let tokens_arg = tokens.to_str().unwrap();
    let (out, err, code) = colony(
        &[
            "token", "create", "--name", "ops", "--scope", "admin", "--tokens", tokens_arg,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_owned();
    let runs = dir.path().join("runs");
    let server = Server::start(&[
        "--agents",
        "10",
        "--tokens",
        tokens_arg,
        "--runs",
        runs.to_str().unwrap(),
    ]);
    let url = server.url.clone();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "name: cli-run\nagents:\n  - {name: plan, kind: sim, sim: {latency: 5ms}}\n  - name: tool\n    \
         kind: command\n    command: {program: sh, args: [\"-c\", \"echo '{\\\"cost_usd\\\": 0.5}'\"]}\n  \
         - {name: slow, kind: sim, sim: {latency: 60s}}\n\
         tasks:\n  - {id: think, agent: plan}\n  - {id: measure, agent: tool, needs: [think]}\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (out, err, code) = colony(
        &["runs", "submit", "--server", &url, "--wait", path],
        Some(&admin),
    );
    assert_eq!(code, 0, "{err}");
    let measure = out.lines().find(|l| l.starts_with("measure")).unwrap();
    assert!(
        measure.contains("succeeded") && measure.trim_end().ends_with("$0.5000"),
        "{out}"
    );
    assert!(
        out.contains("run 1: succeeded (2 tasks); cost $0.5000"),
        "{out}"
    );
    let (out, err, code) = colony(&["runs", "list", "--server", &url], Some(&admin));
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.contains("cli-run")).unwrap();
    assert!(row.contains("succeeded") && row.contains("2/2"), "{out}");
    let (out, _, code) = colony(
        &["runs", "show", "--server", &url, "--json", "1"],
        Some(&admin),
    );
    assert_eq!(code, 0);
    let graph: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(graph["graph"][1]["needs"], json!(["think"]));
    // Ended already: refused as the caller's fault.
    let (_, err, code) = colony(&["runs", "cancel", "--server", &url, "1"], Some(&admin));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already-ended"), "{err}");
    // A long run, started and then cancelled.
    let slow = dir.path().join("slow.yaml");
    std::fs::write(
        &slow,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("agent: tool, needs", "agent: slow, needs"),
    )
    .unwrap();
    let (out, err, code) = colony(
        &["runs", "submit", "--server", &url, slow.to_str().unwrap()],
        Some(&admin),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("run 2 started"), "{out}");
    server.wait_until(Duration::from_secs(10), "the slow task to start", || {
        let (out, _, _) = colony(
            &["runs", "show", "--server", &url, "--json", "2"],
            Some(&admin),
        );
        serde_json::from_str::<Value>(&out).is_ok_and(|g| g["graph"][1]["state"] == "started")
    });
    let (out, err, code) = colony(&["runs", "cancel", "--server", &url, "2"], Some(&admin));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopping"), "{out}");
    server.wait_until(Duration::from_secs(10), "the run to end cancelled", || {
        let (out, _, _) = colony(
            &["runs", "show", "--server", &url, "--json", "2"],
            Some(&admin),
        );
        serde_json::from_str::<Value>(&out).is_ok_and(|g| g["state"] == "cancelled")
    });
    // A file the server refuses, and one that cannot be read: input errors.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nagents: []\ntasks: [{id: a, agent: nobody}]\n",
    )
    .unwrap();
    let (_, err, code) = colony(
        &["runs", "submit", "--server", &url, bad.to_str().unwrap()],
        Some(&admin),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad-workflow") && err.contains("nobody"),
        "{err}"
    );
    let (_, err, code) = colony(
        &["runs", "submit", "--server", &url, "/no/such/w.yaml"],
        Some(&admin),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/no/such/w.yaml"), "{err}");
}
