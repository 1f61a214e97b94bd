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
        let file = path.to_str().unwrap();
        let validated = Command::cargo_bin("colony")
            .unwrap()
            .current_dir(elsewhere.path())
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
