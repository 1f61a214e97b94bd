//! Preset pools in a workflow file: their settings checked at their line and column, the CLI
//! checked when the file is (found, answering `--version`), and a run through the fake CLIs
//! whose outputs and summed usage are the CLIs' own.

use colony_workflow::{Status, parse};
use std::path::{Path, PathBuf};

mod common;
use common::{has, options, problems};

fn fake(cli: &str) -> String {
    // Not canonical: the link's name says which CLI the fake is.
    std::path::absolute(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../colony-agents/tests/fake-cli")
            .join(cli),
    )
    .unwrap()
    .to_string_lossy()
    .into_owned()
}

#[test]
fn preset_settings_are_checked_at_their_field() {
    let (claude, codex) = (fake("claude"), fake("codex"));
    let yaml = format!(
        r#"name: w
agents:
  - name: a
    kind: sim
    preset: claude
  - name: b
    kind: command
    preset: codex
    command: {{ program: "{codex}", max-turns: 3, budget-usd: 0 }}
  - name: c
    kind: command
    preset: claude
    command: {{ program: "{claude}", price: {{ input: 1, output: 2 }}, rate-limit-retries: 50 }}
  - name: d
    kind: command
    command: {{ program: echo, model: m }}
  - name: e
    kind: command
    preset: gemini
    command: {{ program: ./no-such-gemini }}
tasks: [{{ id: t, agent: b }}]
"#
    );
    let p = problems(&yaml);
    has(&p, "w.yaml:5:13:", &["`preset:`", "kind: command"]);
    has(
        &p,
        "w.yaml:9:",
        &["the codex CLI takes no limit on its turns"],
    );
    has(&p, "w.yaml:9:", &["budget-usd 0 is out of range"]);
    has(&p, "w.yaml:13:", &["reports its own cost"]);
    has(&p, "w.yaml:13:", &["rate-limit-retries 50"]);
    has(&p, "w.yaml:16:", &["`model` is read by a preset's CLI"]);
    has(&p, "w.yaml:20:", &["`./no-such-gemini` is not found"]);
    let p =
        problems("name: w\nagents: [{name: f, kind: command, preset: cursor}]\ntasks: [{id: t}]\n");
    has(
        &p,
        "w.yaml:2:43:",
        &["unknown variant `cursor`", "`claude`, `codex`"],
    );
}

#[test]
fn a_preset_without_its_cli_on_path_is_refused_and_a_dry_run_does_not_need_it() {
    let yaml = "name: w\nagents: [{name: a, kind: command, preset: opencode, \
                command: {program: colony-no-such-opencode}}]\ntasks: [{id: t, prompt: hi}]\n";
    let p = problems(yaml);
    has(&p, "w.yaml:2:", &["`colony-no-such-opencode` is not found"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, yaml).unwrap();
    assert!(colony_workflow::load(&file).is_err());
    let rehearsal = colony_workflow::load_for_rehearsal(&file).unwrap();
    let plan = colony_workflow::plan::plan(&rehearsal);
    // Without an estimate, the preset's rough figure.
    assert_eq!(plan.expected_cost_usd, 0.20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_coding_agents_gives_their_answers_and_their_cost() {
    let yaml = format!(
        r#"name: swarm
agents:
  - name: planner
    kind: command
    preset: claude
    command: {{ program: "{claude}", model: sonnet, max-turns: 5 }}
  - name: coder
    kind: command
    preset: codex
    count: 2
    command: {{ program: "{codex}", price: {{ input: 1, output: 10 }} }}
  - name: critic
    kind: command
    preset: gemini
    command: {{ program: "{gemini}" }}
tasks:
  - {{ id: plan, agent: planner, prompt: "Plan the parser." }}
  - {{ id: code, agent: coder, needs: [plan], prompt: "Build: {{{{outputs.plan.content}}}}" }}
  - {{ id: flaky, agent: coder, prompt: "[error]", retries: 1 }}
  - {{ id: check, agent: critic, needs: [code], input: {{ prompt: "Check {{{{outputs.code.content}}}}" }} }}
"#,
        claude = fake("claude"),
        codex = fake("codex"),
        gemini = fake("gemini"),
    );
    let workflow = parse(&yaml, "w.yaml", Path::new(".")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = colony_workflow::run(&workflow, options(out.path()))
        .await
        .unwrap();
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    assert_eq!(task("plan").status, Status::Succeeded, "{:?}", task("plan"));
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("plan.json")).unwrap())
            .unwrap();
    assert_eq!(plan["output"]["content"], "done: Plan the parser.");
    assert_eq!(plan["output"]["model"], "sonnet");
    assert_eq!(task("code").status, Status::Succeeded);
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("check.json")).unwrap())
            .unwrap();
    assert_eq!(
        check["output"]["content"],
        "done: Check done: Build: done: Plan the parser."
    );
    // An error the CLI reports with exit 0 fails the task, each attempt.
    let flaky = task("flaky");
    assert_eq!(flaky.status, Status::Failed);
    assert_eq!(flaky.attempts, 2);
    assert!(
        flaky
            .error
            .as_deref()
            .unwrap()
            .contains("reported an error"),
        "{flaky:?}"
    );
    // Claude's own cost, codex's tokens at its price (the failed calls reported none), and
    // gemini's tokens unpriced.
    // The fake codex counts 1000 tokens and one a word of its prompt (5 here).
    let codex = (1000.0 + 5.0) * 1.0 / 1e6 + 200.0 * 10.0 / 1e6;
    assert!(
        (report.usage.cost_usd - (0.0125 + codex)).abs() < 1e-9,
        "{:?}",
        report.usage
    );
    assert!(report.usage.prompt_tokens > 1000 && report.usage.completion_tokens > 200);
}
