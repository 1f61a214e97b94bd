//! Every example runs from any folder: relative paths in a workflow file start at the file's
//! folder, never at the folder colony was started in.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
}

/// `PATH` with the fake coding-agent CLIs first: `coding-swarm` runs on them, offline.
fn path_with_fakes() -> String {
    let fakes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../colony-agents/tests/fake-cli");
    let fakes = std::path::absolute(fakes).unwrap();
    format!(
        "{}:{}",
        fakes.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A copy of `file` as the one commit of a new git repository, for an example whose agents
/// work in worktrees of the repository the file is in: not this one.
fn in_new_repository(file: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join(file.file_name().unwrap());
    std::fs::copy(file, &copy).unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=t",
            "commit",
            "-qm",
            "example",
        ],
    ] {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }
    copy
}

#[test]
fn every_example_validates_and_runs_from_another_folder() {
    let elsewhere = tempfile::tempdir().unwrap();
    let mut ran = Vec::new();
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let repository = tempfile::tempdir().unwrap();
        let path = if name == "coding-swarm" {
            in_new_repository(&path, repository.path())
        } else {
            path
        };
        let file = path.to_str().unwrap();
        let validated = Command::cargo_bin("colony")
            .unwrap()
            .current_dir(elsewhere.path())
            .env("PATH", path_with_fakes())
            .args(["validate", file])
            .output()
            .unwrap();
        // The model review and vote need endpoints and keys; the pools file has no tasks to
        // run.
        if name == "llm-review" || name == "decide-llm" || name == "serve-pools" {
            continue;
        }
        assert!(
            validated.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&validated.stderr)
        );
        let out = elsewhere.path().join(format!("out-{name}"));
        let run = Command::cargo_bin("colony")
            .unwrap()
            .current_dir(elsewhere.path())
            .env("PATH", path_with_fakes())
            .args(["run", file, "--json", "--out"])
            .arg(&out)
            .timeout(std::time::Duration::from_secs(240))
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(report["failed"], 0, "{name}");
        assert!(out.join("summary.json").is_file(), "{name}");
        ran.push(name);
    }
    ran.sort();
    assert_eq!(
        ran,
        [
            "app-plan",
            "coding-swarm",
            "dag-10000",
            "decide",
            "messages",
            "pipeline",
            "process-agents",
            "quickstart",
            "remember",
            "team"
        ]
    );
    // Nothing was written where colony was started but the asked-for output.
    let mut left: Vec<String> = std::fs::read_dir(elsewhere.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert!(left.iter().all(|f| f.starts_with("out-")), "{left:?}");
}

#[test]
fn the_flaky_coder_of_app_plan_retries_the_same_tasks_every_run() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = tempfile::tempdir().unwrap();
        let run = Command::cargo_bin("colony")
            .unwrap()
            .args(["run", "--json", "--out"])
            .arg(out.path())
            .arg(examples().join("app-plan.yaml"))
            .output()
            .unwrap();
        assert!(run.status.success());
        let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        let retried: Vec<String> = report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["attempts"].as_u64().unwrap() > 1)
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        runs.push(retried);
    }
    assert!(!runs[0].is_empty(), "the coder never failed");
    assert_eq!(runs[0], runs[1]);
}

/// `colony run --sim` on every example: a plan, then a run on stand-ins with the same tasks
/// in the same waves as the plan (and the real run) has, all in the dry run's own folder.
#[test]
fn every_example_rehearses_with_sim_as_many_tasks_in_the_same_waves() {
    let out = tempfile::tempdir().unwrap();
    let mut rehearsed = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "yaml") || name == "serve-pools" {
            continue;
        }
        let file = path.to_str().unwrap();
        let run = |args: &[&str]| {
            let o = Command::cargo_bin("colony")
                .unwrap()
                .current_dir(out.path())
                .env("PATH", path_with_fakes())
                .args(args)
                .output()
                .unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        };
        let (code, plan) = run(&["validate", "--plan", "--json", file]);
        assert_eq!(code, Some(0), "{name}");
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        let folder = out.path().join(&name);
        let (code, summary) = run(&[
            "run",
            "--sim",
            "--json",
            "--out",
            folder.to_str().unwrap(),
            file,
        ]);
        let summary: serde_json::Value = serde_json::from_str(&summary)
            .unwrap_or_else(|e| panic!("{name}: no summary ({e}): {summary}"));
        let planned = plan["tasks"].as_array().unwrap();
        let ran = summary["tasks"].as_array().unwrap();
        assert_eq!(ran.len(), planned.len(), "{name}");
        for (p, r) in planned.iter().zip(ran) {
            assert_eq!((&p["id"], &p["wave"]), (&r["id"], &r["wave"]), "{name}");
        }
        assert!(folder.join("summary.json").is_file(), "{name}");
        // Every task succeeds on stand-ins (those of `http` pools and coding-agent CLIs answer
        // in their shape, so `{{outputs.ID.content}}` reads) but where a vote needs
        // confidences or reviews (`decide`): those fail, and say so.
        let failing: &[&str] = match name.as_str() {
            "decide" => &["by-confidence", "by-leader", "agreed"],
            _ => &[],
        };
        for task in ran {
            let expected = if failing.contains(&task["id"].as_str().unwrap()) {
                ["failed", "skipped"].as_slice()
            } else {
                ["succeeded"].as_slice()
            };
            assert!(
                expected.contains(&task["status"].as_str().unwrap()),
                "{name}: {task}"
            );
        }
        assert_eq!(code, Some(if failing.is_empty() { 0 } else { 1 }), "{name}");
        rehearsed += 1;
    }
    assert!(rehearsed >= 10, "{rehearsed}");
}
