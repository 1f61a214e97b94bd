//! Every benchmark ends with a verdict, printed and in `--json`, and exits 1 when it is false;
//! every floating-point flag refuses what is not a finite number with exit code 2. Real
//! processes, real output.

use assert_cmd::Command;
use serde_json::Value;

/// Runs colony: stdout, stderr, exit code.
fn colony(args: &[&str]) -> (String, String, i32) {
    let out = Command::cargo_bin("colony")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn a_kill_rate_that_kills_no_agent_exits_1() {
    // 92 workers at 0.0001 a second for 0.3 s: 0.003 kills, none made. Before, this run
    // printed "verdict ok" and exited 0 without killing anything.
    let (stdout, stderr, code) = colony(&[
        "bench",
        "recovery",
        "--agents",
        "100",
        "--tasks",
        "500",
        "--kill-rate",
        "0.0001",
        "--secs",
        "0.3",
        "--json",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let report = json(&stdout);
    assert_eq!(report["ok"], false);
    assert_eq!(report["kills"], 0);
    assert_eq!(report["lost"], 0);
    let problems = report["problems"].to_string();
    assert!(problems.contains("no agent was killed"), "{problems}");
    assert!(
        stderr.contains("ok: false") && stderr.contains("no agent was killed"),
        "{stderr}"
    );
    // Without --json: the table's `ok` row, and the problem under it.
    let (stdout, _, code) = colony(&[
        "bench",
        "recovery",
        "--agents",
        "100",
        "--tasks",
        "500",
        "--kill-rate",
        "0.0001",
        "--secs",
        "0.3",
    ]);
    assert_eq!(code, 1);
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("ok "))
        .expect(&stdout);
    assert!(ok.ends_with("false"), "{stdout}");
    assert!(stdout.contains("problem: no agent was killed"), "{stdout}");
}

#[test]
fn the_verdict_is_printed_and_in_the_json() {
    for args in [
        &[
            "bench", "dispatch", "--agents", "200", "--tasks", "5000", "--json",
        ][..],
        &[
            "bench",
            "dispatch",
            "--agents",
            "200",
            "--tasks",
            "5000",
            "--durable",
            "--answer",
            "woken",
            "--json",
        ],
        &[
            "bench", "latency", "--agents", "100", "--rate", "2000", "--secs", "0.3", "--json",
        ],
        &[
            "bench",
            "latency",
            "--agents",
            "100",
            "--rate",
            "500",
            "--secs",
            "0.3",
            "--durable",
            "--answer",
            "woken",
            "--json",
        ],
        &[
            "bench",
            "spawn",
            "--agents",
            "2000",
            "--idle-secs",
            "0",
            "--json",
        ],
        &[
            "bench",
            "recovery",
            "--agents",
            "100",
            "--tasks",
            "5000",
            "--kill-rate",
            "0.5",
            "--secs",
            "1",
            "--latency-us",
            "0",
            "--answer",
            "woken",
            "--json",
        ],
        &[
            "bench",
            "workflow",
            "--tasks",
            "300",
            "--agents",
            "8",
            "--error-rate",
            "0",
            "--json",
        ],
    ] {
        let (stdout, stderr, code) = colony(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let report = json(&stdout);
        assert_eq!(report["ok"], true, "{args:?}: {report}");
        assert_eq!(report["problems"], Value::Array(vec![]), "{args:?}");
    }
    let (stdout, stderr, code) = colony(&[
        "bench", "latency", "--agents", "100", "--rate", "1000", "--secs", "0.2", "--answer",
        "woken",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("woken"), "{stdout}");
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("ok "))
        .expect(&stdout);
    assert!(ok.ends_with("true"), "{stdout}");
}

#[test]
fn a_workflow_bench_whose_tasks_fail_without_injected_errors_exits_1() {
    // Command agents running `false`: every task fails, and its dependents are skipped.
    let (stdout, stderr, code) = colony(&[
        "bench",
        "workflow",
        "--tasks",
        "40",
        "--agents",
        "4",
        "--command",
        "false",
        "--json",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let report = json(&stdout);
    assert_eq!(report["ok"], false);
    // Only tasks that ran count: the skipped ones never started.
    let ran = report["ran"].as_u64().unwrap();
    assert_eq!(ran, report["failed"].as_u64().unwrap());
    assert_eq!(ran + report["skipped"].as_u64().unwrap(), 40);
    assert_eq!(report["journal_terminal"].as_u64().unwrap(), ran);
    assert!(
        report["problems"]
            .to_string()
            .contains("with no error injected"),
        "{report}"
    );
}

#[test]
fn a_crash_child_whose_ledger_cannot_be_written_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("run.db");
    let (_, stderr, code) = colony(&[
        "bench",
        "crash-child",
        "--db",
        db.to_str().unwrap(),
        "--ledger",
        "/dev/full",
        "--tasks",
        "100",
        "--agents",
        "4",
        "--seed",
        "1",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("could not be written"), "{stderr}");
}

#[test]
fn float_flags_refuse_what_is_not_a_finite_number() {
    for (args, needle) in [
        (
            &["bench", "recovery", "--restart-period-secs", "NaN"][..],
            "'--restart-period-secs <RESTART_PERIOD_SECS>': NaN is not a finite number",
        ),
        (
            &["bench", "latency", "--rate=inf"],
            "'--rate <RATE>': inf is not a finite number",
        ),
        (
            &["bench", "latency", "--secs", "1e999"],
            "1e999 is not a finite number",
        ),
        (
            &["bench", "spawn", "--idle-secs=-1"],
            "-1 is out of range: allowed 0..=3600",
        ),
        (
            &["bench", "workflow", "--error-rate", "nan"],
            "nan is not a finite number",
        ),
        (
            &["submit", "--timeout", "NaN", "1"],
            "'--timeout <TIMEOUT>': NaN is not a finite number",
        ),
        (
            &["bench", "latency", "--rate", "1", "--secs", "0.5"],
            "offers no task",
        ),
    ] {
        let (stdout, stderr, code) = colony(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn settings_the_new_benches_refuse_are_input_errors() {
    for args in [
        &[
            "bench",
            "autoscale",
            "--minutes",
            "10",
            "--period-minutes",
            "100",
        ][..],
        &[
            "bench",
            "health",
            "--slow-share",
            "0.9",
            "--failing-share",
            "0.5",
        ][..],
        &["bench", "health", "--rate", "100000", "--secs", "86400"][..],
    ] {
        let (_, stderr, code) = colony(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("out of range"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_vote_checks_every_outcome_and_states_its_timing_verdict() {
    // Debug builds miss the 50 µs target; the verdict must say so and exit 1, and the
    // outcomes (counted again by the bench) must never be among the problems.
    let (stdout, stderr, code) = colony(&[
        "bench", "vote", "--agents", "15", "--rounds", "30", "--json",
    ]);
    let report = json(&stdout);
    assert_eq!(
        report["decided"].as_u64().unwrap() + report["failed"].as_u64().unwrap(),
        30
    );
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.iter().all(|p| !p.starts_with("round")),
        "{problems:?}"
    );
    assert_eq!(report["ok"], problems.is_empty(), "{report}");
    assert_eq!(code, if problems.is_empty() { 0 } else { 1 }, "{stderr}");
    // A peer script that cannot run is an error that names it, after colony's rounds.
    let (_, stderr, code) = colony(&[
        "bench",
        "vote",
        "--agents",
        "5",
        "--rounds",
        "1",
        "--erlang",
        "/nonexistent/peer.escript",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/peer.escript"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
