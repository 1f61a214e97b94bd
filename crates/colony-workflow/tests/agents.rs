//! Agent settings: what a run would refuse, or what would break silently, is reported by the
//! checks with its line and column; what depends on the environment (an `http` pool's key) is
//! refused when the pools are built, before anything runs.

use colony_workflow::parse;
use std::{path::Path, time::Instant};

mod common;
use common::{has, options, problems};

#[test]
fn zeros_and_bad_urls_are_reported_at_their_field() {
    let yaml = r#"name: w
agents:
  - name: tools
    kind: command
    command:
      program: echo
      args: ["a\0b"]
      limits: { cpu-seconds: 0, memory-mb: 0, open-files: 0, processes: 0 }
  - name: model
    kind: http
    http:
      base-url: ftp://models.example/v1
      model: m
      max-tokens: 0
      requests-per-minute: 0
  - name: nul
    kind: http
    http: { base-url: "http://a\0b/v1", model: m, auth: none, api-key-env: KEY }
  - name: huge
    kind: command
    command: { program: echo, limits: { memory-mb: 18446744073709551615 } }
tasks: [{ id: t, agent: tools }]
"#;
    let p = problems(yaml);
    has(&p, "w.yaml:7:14:", &["NUL byte"]);
    has(
        &p,
        "w.yaml:8:30:",
        &["limits.cpu-seconds 0", "allowed 1 and up"],
    );
    has(
        &p,
        "w.yaml:8:44:",
        &["limits.memory-mb 0", "allowed 1..=17592186044415"],
    );
    has(
        &p,
        "w.yaml:8:59:",
        &["limits.open-files 0", "allowed 1 and up"],
    );
    has(
        &p,
        "w.yaml:8:73:",
        &["limits.processes 0", "allowed 1 and up"],
    );
    has(
        &p,
        "w.yaml:12:17:",
        &[
            "pool `model`: base-url `ftp://models.example/v1` is not an http(s) URL",
            "https://api.openai.com/v1",
        ],
    );
    has(
        &p,
        "w.yaml:14:19:",
        &["pool `model`: max-tokens 0 is out of range: allowed 1 and up"],
    );
    has(
        &p,
        "w.yaml:15:28:",
        &["pool `model`: requests-per-minute 0 is out of range: allowed 1 and up"],
    );
    has(
        &p,
        "w.yaml:18:23:",
        &["pool `nul`: base-url `http://a\\0b/v1` holds a control character"],
    );
    has(
        &p,
        "w.yaml:18:76:",
        &["pool `nul` names a key in api-key-env `KEY` and says `auth: none`"],
    );
    has(
        &p,
        "w.yaml:21:52:",
        &["limits.memory-mb 18446744073709551615 is out of range"],
    );
    // Nothing else: every problem above, once, and the program found.
    assert_eq!(p.len(), 11, "{p:#?}");
}

#[test]
fn a_missing_program_does_not_hide_the_pools_other_problems() {
    let yaml = "name: w\nagents:\n  - name: c\n    kind: command\n    command: { program: no-such-program-here, limits: { memory-mb: 0 } }\ntasks: [{ id: t }]\n";
    let p = problems(yaml);
    has(&p, "w.yaml:5:25:", &["no-such-program-here", "not found"]);
    has(&p, "w.yaml:5:68:", &["limits.memory-mb 0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_its_api_key_is_refused_before_it_starts() {
    // A port nothing listens on: without the check, each attempt retried its connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "name: w\nagents:\n  - name: reviewer\n    kind: http\n    http: {{ base-url: \"http://127.0.0.1:{port}/v1\", model: m, api-key-env: COLONY_TEST_NO_SUCH_KEY }}\ntasks: [{{ id: t, prompt: hi }}]\n"
    );
    // `colony validate` passes: the file is right, the environment is not.
    let workflow = parse(&yaml, "w.yaml", Path::new(".")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let e = colony_workflow::run(&workflow, options(out.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pool `reviewer`")
            && e.contains("`COLONY_TEST_NO_SUCH_KEY` is not set")
            && e.contains("auth: none"),
        "{e}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused up front, not after retries: {:?}",
        started.elapsed()
    );
    assert!(
        !out.path().join("t.json").exists(),
        "no task ran, no result was written"
    );
    // The example's own pools: refused the same way when its key's variable is unset.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = colony_workflow::load(&root.join("examples/llm-review.yaml")).unwrap();
    if std::env::var_os("OPENAI_API_KEY").is_none() {
        let e = colony_workflow::agents(&example.pools, out.path())
            .err()
            .expect("refused without OPENAI_API_KEY")
            .to_string();
        assert!(e.contains("`OPENAI_API_KEY` is not set"), "{e}");
    }
}

#[test]
fn the_schema_refuses_the_same_agent_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/workflow.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let file = |http: &str, command: &str| {
        let yaml = format!(
            "name: x\nagents:\n  - {{name: m, kind: http, http: {{model: m, {http}}}}}\n  - {{name: c, kind: command, command: {{program: echo, {command}}}}}\ntasks: [{{id: t, agent: m}}]\n"
        );
        let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        (validator.is_valid(&value), yaml)
    };
    for (http, command) in [
        ("base-url: ftp://x/v1", ""),
        ("base-url: \"http://a\\0b\"", ""),
        ("max-tokens: 0", ""),
        ("auth: basic", ""),
        ("api-key-env: \"A=B\"", ""),
        ("", "limits: {memory-mb: 0}"),
        ("", "allow-option-values: maybe"),
    ] {
        let (valid, yaml) = file(http, command);
        assert!(!valid, "the schema accepted:\n{yaml}");
        assert!(parse(&yaml, "x.yaml", Path::new(".")).is_err(), "{yaml}");
    }
    let (valid, yaml) = file(
        "base-url: \"http://127.0.0.1:8000/v1\", auth: none",
        "allow-option-values: true",
    );
    assert!(valid, "{yaml}");
    assert!(parse(&yaml, "x.yaml", Path::new(".")).is_ok(), "{yaml}");
}

#[test]
fn amounts_are_reported_at_their_field_with_their_value() {
    let yaml = "name: w\nagents:\n  - name: m\n    kind: http\n    http: { model: x, budget-usd: -1, temperature: .nan, price: { input: -0.5, output: .inf } }\ntasks: [{ id: a }]\n";
    let p = problems(yaml);
    has(
        &p,
        "w.yaml:5:35:",
        &["pool `m`: budget-usd -1 is out of range", "0 or more"],
    );
    has(
        &p,
        "w.yaml:5:52:",
        &["pool `m`: temperature NaN is out of range"],
    );
    has(
        &p,
        "w.yaml:5:74:",
        &["pool `m`: price.input -0.5 is out of range"],
    );
    has(
        &p,
        "w.yaml:5:88:",
        &["pool `m`: price.output inf is out of range"],
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn only_workflow_runs_name_command_tasks_from_their_payload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pools.yaml");
    std::fs::write(
        &path,
        "name: p\nagents:\n  - { name: tools, kind: command, command: { program: echo } }\n\
         tasks:\n  - { id: one, agent: tools }\n",
    )
    .unwrap();
    let names_from_payload = |backend: &colony_workflow::Backend| match backend {
        colony_workflow::Backend::Command(o) => o.names_from_payload,
        other => panic!("not a command pool: {other:?}"),
    };
    // `colony run`: the workflow's own task ids name logs and worktrees.
    let run = colony_workflow::load(&path).unwrap();
    assert!(names_from_payload(&run.pools[0].backend));
    // `colony serve --pools`: anyone with a token posts tasks, so ids name them.
    let serve = colony_workflow::load_pools(&path).unwrap();
    assert!(!names_from_payload(&serve[0].backend));
}

#[test]
fn a_process_pools_warm_idle_and_grace_settings_are_read_and_checked() {
    let yaml = "name: w\nagents:\n  - name: p\n    kind: process\n    process: {program: sh, warm: 3, idle-timeout: 5m, stop-grace: 2s, replace-on-alert: false}\ntasks:\n  - id: t\n";
    let workflow = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    let colony_workflow::Backend::Process(o) = &workflow.pools[0].backend else {
        panic!("a process pool")
    };
    assert_eq!(o.warm, 3);
    assert_eq!(o.idle_timeout, Some(std::time::Duration::from_secs(300)));
    assert_eq!(o.stop_grace, std::time::Duration::from_secs(2));
    assert!(!o.replace_on_alert);
    let bad = "name: w\nagents:\n  - name: p\n    kind: process\n    process: {program: sh, warm: 5000, idle-timeout: 0s, stop-grace: soon}\ntasks:\n  - id: t\n";
    let problems = problems(bad);
    has(&problems, "w.yaml:5:", &["warm 5000", "0..=1000"]);
    has(&problems, "w.yaml:5:", &["duration of 0"]);
    has(&problems, "w.yaml:5:", &["`soon` is not a duration"]);
}
