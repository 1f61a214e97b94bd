//! Workflow files end to end: checked with locations, run on a real runtime with sim agents and
//! real processes, results on disk.

use colony_workflow::{Report, Status, parse};
use std::path::Path;

mod common;
use common::{options, problems};

const AGENTS: &str = "agents:\n  - name: sim\n    kind: sim\n";

#[test]
fn every_problem_is_reported_with_its_line_and_column() {
    // Unknown fields and wrong types, from the parser.
    let p = problems(&format!(
        "name: w\n{AGENTS}tasks:\n  - id: a\n    retrys: 3\n"
    ));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("w.yaml:7:5: unknown field `retrys`"),
        "{p:?}"
    );
    let p = problems(&format!(
        "name: w\n{AGENTS}tasks:\n  - id: a\n    retries: many\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:7:14: `retries` is many: allowed a whole number in 0..=4294967295"]
    );
    // Everything the checks find, all at once.
    let yaml = format!(
        "name: w
{AGENTS}  - name: sim
    kind: sim
tasks:
  - id: a
    needs: [c]
    timeout: 10 parsecs
  - id: b
    needs: [a, zz]
    agent: sym
  - id: c
    needs: [b]
    prompt: \"use {{{{outputs.a}}}}\"
  - id: a
"
    );
    let p = problems(&yaml);
    let expect = [
        "w.yaml:5:11: agent pool `sim` is defined twice",
        "w.yaml:8:9: the tasks' needs form a cycle: a -> c -> b -> a",
        "w.yaml:10:14: `10 parsecs` is not a duration",
        "w.yaml:12:16: task `b` needs `zz`, which is not a task of this workflow",
        "w.yaml:13:12: task `b` asks for agent pool `sym`, which this workflow does not define: did you mean `sim`?",
        "w.yaml:16:13: `{{outputs.a}}` names a task that `c` does not need",
        "w.yaml:17:9: task id `a` is used twice",
    ];
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    assert!(
        !p[3].contains("did you mean"),
        "`zz` is like no task: {}",
        p[3]
    );
    for e in expect {
        assert!(
            p.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in {p:#?}"
        );
    }
}

#[test]
fn a_cycle_is_printed_and_a_missing_program_named() {
    let p = problems(&format!(
        "name: w\n{AGENTS}tasks:\n  - {{id: a, needs: [c]}}\n  - {{id: b, needs: [a]}}\n  - {{id: c, needs: [b]}}\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("the tasks' needs form a cycle: "), "{p:?}");
    for id in ["a", "b", "c"] {
        assert!(p[0].contains(id));
    }
    let p = problems(
        "name: w\nagents:\n  - name: x\n    kind: command\n    command: {program: no-such-program-here}\ntasks: [{id: a}]\n",
    );
    assert!(
        p[0].starts_with("w.yaml:5:24: program `no-such-program-here` is not found"),
        "{p:?}"
    );
}

/// Runs git in `dir`, with an identity for commits.
fn git_in(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
}

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

fn status(report: &Report, id: &str) -> Status {
    report.tasks.iter().find(|t| t.id == id).unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_flow_to_dependents_and_results_are_files() {
    let out = tempfile::tempdir().unwrap();
    let yaml = r#"
name: flow
agents:
  - name: sim
    kind: sim
  - name: echo
    kind: command
    count: 2
    command: { program: echo, args: ["{{input.word}}"] }
tasks:
  - id: first
    agent: echo
    input: { word: hello }
  - id: second
    agent: sim
    needs: [first]
    input: { got: "{{outputs.first}}", text: "said {{outputs.first}}" }
"#;
    let report = run(yaml, out.path()).await;
    assert!(report.all_succeeded(), "{report:#?}");
    let second = &report.tasks[1];
    assert_eq!(second.wave, 1);
    let output = &second.output.as_ref().unwrap().value();
    assert_eq!(output["input"]["got"], "hello");
    assert_eq!(output["input"]["text"], "said hello");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("second.json")).unwrap()).unwrap();
    assert_eq!(file["status"], "succeeded");
    assert_eq!(file["output"], *output);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["succeeded"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_skips_dependents_unless_they_continue_and_checks_are_honest() {
    let out = tempfile::tempdir().unwrap();
    let yaml = r#"
name: failing
defaults: { retries: 1 }
agents:
  - name: sim
    kind: sim
  - name: fails
    kind: command
    command: { program: "false" }
  - name: echo
    kind: command
    command: { program: echo, args: ["not a checksum"] }
tasks:
  - { id: broken, agent: fails }
  - { id: after, agent: sim, needs: [broken] }
  - { id: later, agent: sim, needs: [after] }
  - { id: cleanup, agent: sim, needs: [broken], continue-on-failure: true }
  - id: checked
    agent: echo
    expect: { regex: "^[0-9a-f]{64}" }
"#;
    let report = run(yaml, out.path()).await;
    assert_eq!(status(&report, "broken"), Status::Failed);
    let broken = &report.tasks[0];
    assert_eq!(broken.attempts, 2, "one retry");
    assert!(
        broken.error.as_deref().unwrap().contains("exited with 1"),
        "{broken:?}"
    );
    assert_eq!(status(&report, "after"), Status::Skipped);
    assert_eq!(status(&report, "later"), Status::Skipped);
    // Skipped because of the task that failed, however far up.
    assert!(
        report.tasks[2]
            .error
            .as_deref()
            .unwrap()
            .contains("`broken` failed")
    );
    assert_eq!(status(&report, "cleanup"), Status::Succeeded);
    // The program ran and exited 0, but its output fails the check: not a success.
    assert_eq!(status(&report, "checked"), Status::Failed);
    let checked = &report.tasks[4];
    assert!(
        checked.error.as_deref().unwrap().contains("does not match"),
        "{checked:?}"
    );
    assert!(checked.output.is_none());
    assert_eq!((report.succeeded, report.failed, report.skipped), (1, 2, 2));
    assert!(!report.all_succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_graph_of_sim_tasks_with_failures_completes() {
    let out = tempfile::tempdir().unwrap();
    let mut yaml = String::from(
        "name: wide\nagents:\n  - {name: sim, kind: sim, count: 50, sim: {error-rate: 0.05, seed: 3}}\ntasks:\n",
    );
    for i in 0..500 {
        let needs = if i < 10 {
            String::new()
        } else {
            format!(", needs: [t{}, t{}]", i / 2, i - 7)
        };
        yaml.push_str(&format!("  - {{id: t{i}{needs}}}\n"));
    }
    let report = run(&yaml, out.path()).await;
    assert_eq!(report.tasks.len(), 500);
    // With two retries, 5 % errors leave about 0.0125 % of tasks failed: almost always none.
    assert_eq!(report.succeeded + report.failed + report.skipped, 500);
    assert!(report.succeeded >= 490, "{} succeeded", report.succeeded);
    for t in &report.tasks {
        assert!(out.path().join(format!("{}.json", t.id)).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coding_agents_get_a_worktree_each_and_limits() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| git_in(repo.path(), args);
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("main.rs"), "fn main() {}").unwrap();
    git(&["add", "main.rs"]);
    git(&["commit", "-q", "-m", "start"]);
    let yaml = r#"
name: coders
agents:
  - name: coder
    kind: command
    count: 2
    command:
      program: sh
      args: ["-c", "echo '// {{task}}' >> main.rs && git diff --stat && ulimit -n"]
      worktree: true
      limits: { open-files: 99 }
  - name: reader
    kind: command
    command: { program: "true", worktree: true }
tasks:
  - { id: fix-a, agent: coder, expect: { regex: "main.rs \\| [0-9]+ \\+" } }
  - { id: fix-b, agent: coder, expect: { contains: "99", git-diff: true } }
  - { id: idle, agent: reader, expect: { git-diff: true } }
"#;
    let path = repo.path().join("coders.yaml");
    std::fs::write(&path, yaml).unwrap();
    let workflow = colony_workflow::load(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = colony_workflow::run(&workflow, options(out.path()))
        .await
        .unwrap();
    assert_eq!(report.succeeded, 2, "{report:#?}");
    // A coding agent that changed nothing did not do its job.
    let idle = &report.tasks[2];
    assert_eq!(idle.status, Status::Failed);
    assert!(
        idle.error
            .as_deref()
            .unwrap()
            .contains("no changes in the git checkout"),
        "{idle:?}"
    );
    // Each task changed its own checkout; the repository itself is untouched.
    for id in ["fix-a", "fix-b"] {
        let file = out.path().join("worktrees").join(id).join("main.rs");
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.ends_with(&format!("// {id}\n")), "{text}");
    }
    let main = std::fs::read_to_string(repo.path().join("main.rs")).unwrap();
    assert_eq!(main, "fn main() {}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_endpoint_reviews_and_the_run_counts_tokens_and_cost() {
    let (url, requests) = colony_agents::http::testing::server(1, 429).await;
    let yaml = format!(
        r#"
name: review
agents:
  - name: model
    kind: http
    count: 2
    http:
      base-url: "{url}"
      model: local
      auth: none
      price: {{ input: 1.0, output: 2.0 }}
tasks:
  - {{ id: draft, agent: model, prompt: "write a haiku" }}
  - id: critique
    agent: model
    needs: [draft]
    prompt: "critique: {{{{outputs.draft.content}}}}"
    expect: {{ contains: "echo: critique: echo: write a haiku" }}
"#
    );
    let out = tempfile::tempdir().unwrap();
    let report = run(&yaml, out.path()).await;
    assert!(report.all_succeeded(), "{report:#?}");
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "one 429, retried"
    );
    let critique = report.tasks[1].output.as_ref().unwrap().value();
    assert_eq!(critique["usage"]["prompt_tokens"], 1000);
    // Two answers of 1000 prompt and 500 completion tokens, at $1 and $2 per million.
    assert_eq!(report.usage.prompt_tokens, 2000);
    assert!(
        (report.usage.cost_usd - 0.004).abs() < 1e-12,
        "{:?}",
        report.usage
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_checked_against_a_json_schema() {
    let out = tempfile::tempdir().unwrap();
    let yaml = r#"
name: schema
defaults: { retries: 0 }
agents: [{ name: sim, kind: sim }]
tasks:
  - id: good
    input: { n: 3 }
    expect:
      schema: { type: object, required: [input], properties: { input: { properties: { n: { type: integer } } } } }
  - id: bad
    input: { n: three }
    expect:
      schema: { type: object, properties: { input: { properties: { n: { type: integer } } } } }
"#;
    let report = run(yaml, out.path()).await;
    assert_eq!(status(&report, "good"), Status::Succeeded);
    assert_eq!(status(&report, "bad"), Status::Failed);
    let error = report.tasks[1].error.as_deref().unwrap();
    assert!(
        error.contains("does not match its schema") && error.contains("/input/n"),
        "{error}"
    );
    let bad_schema =
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, expect: {schema: {type: 12}}}]\n";
    assert!(problems(bad_schema)[0].contains("bad JSON Schema"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_a_rate_spaces_its_tasks() {
    let out = tempfile::tempdir().unwrap();
    let yaml = "name: paced\nagents: [{name: slowpoke, kind: sim, count: 4, rate-per-minute: 600}]\ntasks: [{id: a, agent: slowpoke}, {id: b, agent: slowpoke}, {id: c, agent: slowpoke}, {id: d, agent: slowpoke}, {id: e, agent: slowpoke}]\n";
    let started = std::time::Instant::now();
    let report = run(yaml, out.path()).await;
    assert!(report.all_succeeded());
    // 600 a minute is one every 100 ms: the fifth starts 400 ms after the first.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_workflows_are_accepted_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(
        &path,
        r#"name = "from-toml"

[[agents]]
name = "echo"
kind = "command"
command = { program = "echo", args = ["{{input.word}}"] }

[[tasks]]
id = "say"
agent = "echo"
input = { word = "hello" }

[[tasks]]
id = "repeat"
agent = "echo"
needs = ["say"]
input = { word = "{{outputs.say}} again" }
"#,
    )
    .unwrap();
    let workflow = colony_workflow::load(&path).unwrap();
    let report = colony_workflow::run(&workflow, options(&dir.path().join("out")))
        .await
        .unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
    assert_eq!(
        report.tasks[1].output.as_ref().unwrap().value(),
        "hello again"
    );

    std::fs::write(
        &path,
        "name = \"x\"\n[[agents]]\nname = \"a\"\nkind = = \"sim\"\n",
    )
    .unwrap();
    let err = colony_workflow::load(&path).unwrap_err().to_string();
    assert!(err.contains("w.toml:4:"), "{err}");
    std::fs::write(
        &path,
        "name = \"x\"\n[[agents]]\nname = \"a\"\nkind = \"sim\"\n[[tasks]]\nid = \"t\"\nneeds = [\"nope\"]\n",
    )
    .unwrap();
    let err = colony_workflow::load(&path).unwrap_err().to_string();
    assert!(err.contains("task `t` needs `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_process_is_alive_not_silent() {
    // Health sweeps every 100 ms that fail an agent silent for 1 s; the program runs 3 s.
    let out = tempfile::tempdir().unwrap();
    let yaml = "name: long\nagents: [{name: slow, kind: command, command: {program: sleep, args: [\"3\"]}}]\ntasks: [{id: build, agent: slow, timeout: 30s, retries: 0}]\n";
    let workflow = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    let mut o = options(out.path());
    o.runtime.health = colony_core::health::HealthOptions {
        degraded_after: std::time::Duration::from_millis(200),
        critical_after: std::time::Duration::from_millis(500),
        failed_after: std::time::Duration::from_secs(1),
        heartbeat: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let report = colony_workflow::run(&workflow, o).await.unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_credit_only_what_the_attempt_itself_did() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| git_in(repo.path(), args);
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("a.txt"), "one\n").unwrap();
    std::fs::write(repo.path().join("old.txt"), "from before\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(repo.path().join("old.txt"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "start"]);
    // Already dirty before the run, and colony's output lands inside the repository.
    std::fs::write(repo.path().join("a.txt"), "one\ntwo\n").unwrap();
    let yaml = r#"
name: honest
defaults: { retries: 0 }
agents:
  - { name: noop, kind: command, command: { program: "true", workdir: . } }
  - { name: edit, kind: command, command: { program: sh, args: ["-c", "echo three >> a.txt && touch new.txt"], workdir: . } }
tasks:
  - { id: nothing, agent: noop, expect: { git-diff: true } }
  - { id: stale, agent: noop, expect: { files: [old.txt] } }
  - { id: something, agent: edit, needs: [nothing], continue-on-failure: true, expect: { git-diff: true, files: [new.txt] } }
"#;
    let path = repo.path().join("w.yaml");
    std::fs::write(&path, yaml).unwrap();
    let workflow = colony_workflow::load(&path).unwrap();
    let mut o = options(&repo.path().join("colony-out"));
    o.output = Some(repo.path().join("colony-out"));
    let report = colony_workflow::run(&workflow, o).await.unwrap();
    assert_eq!(status(&report, "nothing"), Status::Failed, "{report:#?}");
    assert!(
        report.tasks[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no changes")
    );
    assert_eq!(status(&report, "stale"), Status::Failed);
    assert!(
        report.tasks[1]
            .error
            .as_deref()
            .unwrap()
            .contains("not written by this attempt")
    );
    assert_eq!(
        status(&report, "something"),
        Status::Succeeded,
        "{report:#?}"
    );
}

#[test]
fn what_would_fail_every_attempt_is_refused_up_front() {
    let p = problems("name: w\nagents: [{name: s, kind: sim}]\ntasks:\n  - {id: a, needs: [a]}\n");
    assert!(
        p[0].starts_with("w.yaml:4:21: task `a` needs itself"),
        "{p:?}"
    );
    let p = problems(
        "name: w\nagents: [{name: e, kind: command, command: {program: echo, args: [\"{{outputs.a}}\"]}}]\ntasks: [{id: a}]\n",
    );
    assert!(p[0].contains("command arguments take"), "{p:?}");
    let p = problems("name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, timeout: 8d}]\n");
    assert!(p[0].contains("allowed up to 7 days"), "{p:?}");
    let p = problems(
        "name: w\nagents: [{name: s, kind: sim, sim: {error-rate: 2}}]\ntasks: [{id: a}]\n",
    );
    assert!(p[0].starts_with("w.yaml:2:"), "located: {p:?}");
}

#[test]
fn http_settings_out_of_range_are_refused() {
    let p = problems(
        "name: w\nagents: [{name: m, kind: http, http: {model: x, budget-usd: -1, temperature: .nan}}]\ntasks: [{id: a}]\n",
    );
    assert!(
        p.iter()
            .any(|l| l.contains("budget-usd -1 is out of range"))
            && p.iter()
                .any(|l| l.contains("temperature NaN is out of range")),
        "{p:?}"
    );
    let p = problems("name: w\nagents: [{name: \"\", kind: sim}]\ntasks: [{id: a}]\n");
    assert!(p.iter().any(|l| l.contains("a pool needs a name")), "{p:?}");
}

#[test]
fn the_plan_schedules_the_graph_on_the_pools_slots_from_their_estimates() {
    let w = colony_workflow::parse(
        "name: planned
agents:
  - {name: fast, kind: sim, count: 2, sim: {latency: 1s}}
  - {name: llm, kind: http, http: {model: m}, estimate: {duration: 10s, cost-usd: 0.5}}
  - {name: cli, kind: command, command: {program: \"true\"}}
tasks:
  - {id: a, agent: fast}
  - {id: b, agent: fast}
  - {id: c, agent: fast}
  - {id: d, agent: llm, needs: [a]}
  - {id: e, agent: llm, needs: [b]}
  - {id: f, agent: cli, needs: [d, e]}
  - {id: vote, agent: fast, needs: [c], decide: {voters: 2}}
",
        "w.yaml",
        std::path::Path::new("."),
    )
    .unwrap();
    let plan = colony_workflow::plan::plan(&w);
    // `fast` has 2 slots: a and b at once, then c, then the vote on both slots; `llm` has
    // one: d after a, e after d; f after both, taking no time (no estimate).
    let at = |id: &str| {
        let t = plan.tasks.iter().find(|t| t.id == id).unwrap();
        (t.start_seconds, t.end_seconds)
    };
    assert_eq!(at("a"), (0.0, 1.0));
    assert_eq!(at("c"), (1.0, 2.0));
    assert_eq!(at("vote"), (2.0, 3.0));
    assert_eq!(at("d"), (1.0, 11.0));
    assert_eq!(at("e"), (11.0, 21.0));
    assert_eq!(at("f"), (21.0, 21.0));
    assert_eq!(plan.expected_seconds, 21.0);
    assert_eq!(plan.critical_path, ["a", "d", "f"]);
    assert_eq!(plan.critical_seconds, 11.0);
    assert_eq!(plan.expected_cost_usd, 1.0);
    assert_eq!(plan.tasks.iter().find(|t| t.id == "vote").unwrap().asks, 2);
    assert_eq!(
        plan.waves,
        [vec!["a", "b", "c"], vec!["d", "e", "vote"], vec!["f"]]
    );
    assert_eq!(
        (plan.untimed.as_slice(), plan.uncosted.as_slice()),
        (&["cli".to_owned()][..], &["cli".to_owned()][..])
    );
}

#[test]
fn an_estimate_out_of_range_is_refused_at_its_place() {
    let p = common::problems(
        "name: w\nagents:\n  - {name: a, kind: sim, estimate: {duration: soon, cost-usd: -1}}\ntasks: [{id: t, agent: a}]\n",
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("w.yaml:3:47: `soon` is not a duration")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("w.yaml:3:63: pool `a`: estimate cost-usd -1 is out of range")),
        "{p:#?}"
    );
}

/// A prune between two runs drops the output of a task that succeeded; resuming, the task
/// that reads it and failed runs again, and so the pruned one runs again first rather than
/// hand it nothing. One that nothing reads any more is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_runs_again_what_a_prune_took_the_output_of_and_is_read() {
    use colony_journal::{Journal as _, MemoryJournal};
    fn task<'a>(report: &'a Report, id: &str) -> &'a colony_workflow::Finished {
        report.tasks.iter().find(|t| t.id == id).unwrap()
    }
    let dir = tempfile::tempdir().unwrap();
    let count = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let workflow = |reader: &str| {
        let made = |name: &str| {
            format!(
                "{{program: sh, args: [\"-c\", \"echo x >> {} && echo made-{name}\"]}}",
                dir.path().join(name).display()
            )
        };
        format!(
            "name: pruned\nagents:\n  - {{name: a, kind: command, role: a, command: {}}}\n  - {{name: b, kind: command, role: b, command: {}}}\n  - {{name: r, kind: command, role: reader, command: {{program: sh, args: [\"-c\", {reader:?}]}}}}\ntasks:\n  - {{id: a, role: a}}\n  - {{id: b, role: b}}\n  - id: use\n    role: reader\n    needs: [a, b]\n    retries: 0\n    input: {{ got: \"{{{{outputs.a}}}}\" }}\n",
            made("a"),
            made("b"),
        )
    };
    let journal = std::sync::Arc::new(MemoryJournal::new());
    let out = tempfile::tempdir().unwrap();
    let options = |prior| colony_workflow::Options {
        journal: journal.clone(),
        prior,
        ..options(out.path())
    };
    let first = parse(&workflow("exit 3"), "w.yaml", Path::new(".")).unwrap();
    let report = colony_workflow::run(&first, options(Vec::new()))
        .await
        .unwrap();
    assert_eq!(task(&report, "use").status, Status::Failed, "{report:#?}");
    assert_eq!((count("a"), count("b")), (1, 1));
    let all = colony_journal::Retention {
        keep_last: Some(0),
        ..Default::default()
    };
    assert_eq!(journal.prune(all), 3, "every finished task's output");

    let prior: Vec<_> = (1..=3)
        .filter_map(|id| journal.task(colony_core::TaskId(id)).unwrap())
        .collect();
    assert_eq!(prior.len(), 3, "{prior:#?}");
    let second = parse(&workflow("cat"), "w.yaml", Path::new(".")).unwrap();
    let report = colony_workflow::run(&second, options(prior)).await.unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
    assert_eq!(count("a"), 2, "a's output is read: it ran again");
    assert_eq!(count("b"), 1, "b's is not read: it stays as it was");
    let got = task(&report, "use").output.as_ref().unwrap().value();
    assert_eq!(got["input"]["got"], "made-a", "{got}");
}
