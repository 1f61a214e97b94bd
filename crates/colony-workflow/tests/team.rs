//! Tasks worked by a team formed for them: checked with locations, run on a real runtime
//! with command agents that read the team's context from their stdin, a failing member's
//! role reassigned, the team's record on disk.

use colony_workflow::{Report, Status, parse};
use serde_json::Value;
use std::{path::Path, sync::Arc};

mod common;
use common::{options, problems};

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

fn result_file(out: &Path, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("{id}.json"))).unwrap()).unwrap()
}

/// A member that answers with its step, its index among the step's members, its agent and
/// the steps it saw in the team's context; it fails first if `fail` is a path it can make.
const MEMBER: &str = r#"import json, os, sys
p = json.load(sys.stdin)
t = p["team"]
fail = sys.argv[2] if len(sys.argv) > 2 else ""
if fail and t["step"] == "write":
    try:
        os.mkdir(fail)
        sys.exit("this writer fails once")
    except FileExistsError:
        pass
print(json.dumps({"step": t["step"], "index": t["index"], "agent": int(sys.argv[1]), "saw": sorted(t["context"]), "goal": p["input"].get("goal"), "members": len(t["members"])}))
"#;

fn pools(dir: &Path, fail: Option<&Path>) -> String {
    let script = dir.join("member.py");
    std::fs::write(&script, MEMBER).unwrap();
    let fail = fail.map_or(String::new(), |f| {
        format!(", {:?}", f.display().to_string())
    });
    let pool = |role: &str, count: u32| {
        format!(
            "  - name: {role}\n    kind: command\n    role: {role}\n    count: {count}\n    command: {{ program: python3, args: [{:?}, \"{{{{agent}}}}\"{fail}] }}\n",
            script.display().to_string()
        )
    };
    format!(
        "agents:\n{}{}{}  - {{name: sim, kind: sim}}\n",
        pool("planner", 2),
        pool("writer", 6),
        pool("reviewer", 2)
    )
}

const TEAM: &str = "    input: { goal: docs, complexity: 9 }\n    team:\n      size-from: { field: complexity, per: 2, max: 6 }\n      roles:\n        - { name: planner, count: 1 }\n        - { name: writer }\n        - { name: reviewer, count: 1 }\n      steps:\n        - { id: plan, role: planner }\n        - { id: write, role: writer, each: true }\n        - { id: review, role: reviewer }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_sized_by_complexity_works_its_steps_and_hands_its_output_on() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: team\n{}tasks:\n  - id: feature\n{TEAM}  - id: use\n    agent: sim\n    needs: [feature]\n    input: {{ got: \"{{{{outputs.feature.step}}}}\" }}\n",
        pools(dir.path(), None)
    );
    let out = dir.path().join("out");
    let report = run(&yaml, &out).await;
    assert!(report.all_succeeded(), "{report:#?}");
    let file = result_file(&out, "feature");
    // Complexity 9 at one member per 2 points: 5 members, three of them writers.
    let team = &file["team"];
    let roles: Vec<&str> = team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["planner", "writer", "writer", "writer", "reviewer"],
        "{file:#}"
    );
    assert_eq!(
        team["together"], true,
        "ten workers fit under one supervisor: {file:#}"
    );
    let steps = team["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[1]["asks"].as_array().unwrap().len(), 3);
    assert_eq!(file["attempts"], 5);
    // The output is the review's, which saw both earlier steps and the task's own input.
    let output = &file["output"];
    assert_eq!(output["step"], "review", "{file:#}");
    assert_eq!(output["saw"], serde_json::json!(["plan", "write"]));
    assert_eq!(output["goal"], "docs");
    assert_eq!(output["members"], 5);
    let used = report.tasks.iter().find(|t| t.id == "use").unwrap();
    assert_eq!(
        used.output.as_ref().unwrap().value()["input"]["got"],
        "review"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_fails_is_replaced_and_the_team_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("failed-once");
    let yaml = format!(
        "name: team\n{}tasks:\n  - id: feature\n{TEAM}",
        pools(dir.path(), Some(&marker))
    );
    let out = dir.path().join("out");
    let report = run(&yaml, &out).await;
    assert!(report.all_succeeded(), "{report:#?}");
    let file = result_file(&out, "feature");
    let reassigned = file["team"]["reassigned"].as_array().unwrap();
    assert_eq!(reassigned.len(), 1, "{file:#}");
    assert_eq!(reassigned[0]["role"], "writer");
    assert!(
        reassigned[0]["why"]
            .as_str()
            .unwrap()
            .contains("this writer fails once"),
        "{file:#}"
    );
    assert_ne!(reassigned[0]["from"], reassigned[0]["to"]);
    assert_eq!(file["attempts"], 6, "five asks and one again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_with_no_reassignment_left_fails_and_its_dependents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("failed-once");
    let team = TEAM.replace("      steps:", "      reassign: 0\n      steps:");
    let yaml = format!(
        "name: team\n{}tasks:\n  - id: feature\n{team}  - {{id: after, agent: sim, needs: [feature]}}\n",
        pools(dir.path(), Some(&marker))
    );
    let out = dir.path().join("out");
    let report = run(&yaml, &out).await;
    let feature = report.tasks.iter().find(|t| t.id == "feature").unwrap();
    assert_eq!(feature.status, Status::Failed);
    let error = feature.error.as_deref().unwrap();
    assert!(
        error.contains("the team failed") && error.contains("0 reassignments are spent"),
        "{error}"
    );
    assert_eq!(
        report
            .tasks
            .iter()
            .find(|t| t.id == "after")
            .unwrap()
            .status,
        Status::Skipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complexity_that_is_no_number_at_run_time_fails_the_task_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let team = TEAM.replace(
        "input: { goal: docs, complexity: 9 }",
        "needs: [score]\n    input: { goal: docs, complexity: \"{{outputs.score}}\" }",
    );
    let yaml = format!(
        "name: team\n{}  - {{name: say, kind: command, command: {{program: echo, args: [lots]}}}}\ntasks:\n  - {{id: score, agent: say}}\n  - id: feature\n{team}",
        pools(dir.path(), None)
    );
    let report = run(&yaml, &dir.path().join("out")).await;
    let feature = report.tasks.iter().find(|t| t.id == "feature").unwrap();
    assert_eq!(feature.status, Status::Failed);
    let error = feature.error.as_deref().unwrap();
    assert!(
        error.contains("input field `complexity`, which is `\"lots\"`: it must be a number"),
        "{error}"
    );
}

const POOLS: &str = "agents:\n  - {name: a, kind: sim, role: planner, count: 2}\n  - {name: b, kind: sim, role: writer, count: 3}\n";

#[test]
fn bad_team_blocks_are_reported_at_their_line_and_column() {
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    team:\n      size: 9\n      roles:\n        - {{ name: planner, count: 1 }}\n        - {{ name: writer }}\n        - {{ name: tester }}\n      steps:\n        - {{ id: plan, role: planer }}\n        - {{ id: plan, role: writer, input: 3 }}\n      delegation: 9\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:12:19: task `t`: no agent pool can take team role `tester`: none has role \"tester\" and capabilities []",
            "w.yaml:12:19: task `t`: team roles `writer` and `tester` both go without a count: at most one may (it takes the members left)",
            "w.yaml:14:29: task `t`: team step `plan` is asked of role `planer`, which the team does not have: did you mean `planner`?",
            "w.yaml:15:17: task `t`: team step `plan` is listed twice",
            "w.yaml:15:44: task `t`: team step `plan` input must be a map of fields set over the task's input",
            "w.yaml:16:19: task `t`: team delegation 9 is out of range: allowed 0..=8 levels",
        ],
    );

    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: writer\n    input: {{ size: big }}\n    team:\n      size-from: {{ field: size, max: 99 }}\n      roles: [{{ name: planner, count: 1 }}, {{ name: writer }}]\n      steps: [{{ id: go, role: writer }}]\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:7:11: task `t` works as a team, whose roles say which agents take part: move `agent`, `role`, `capabilities` or `hard` into a role",
            "w.yaml:10:38: task `t`: team size-from: min 2 and max 99 must satisfy 1 <= min <= max <= 64",
            "w.yaml:10:27: task `t`: team size-from field `size` is `\"big\"` in the task's input: it must be a number",
        ],
    );

    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    team:\n      size: 5\n      roles: [{{ name: planner, count: 1 }}, {{ name: writer }}]\n      steps: [{{ id: go, role: writer, each: true }}]\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:9:52: task `t`: team role `writer` needs 4 members, and the pools that can take it have 3 agents: each member is a distinct agent"
        ],
    );

    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    decide: {{ voters: 2 }}\n    team:\n      roles: [{{ name: planner, count: 1 }}]\n      steps: []\n"
    ));
    assert!(
        p.iter()
            .any(|m| m.contains("both decides by vote and works as a team")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("a team takes 1..=64 steps, and this one has 0")),
        "{p:#?}"
    );

    // A team spread over a cluster's nodes, in a run of one runtime.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    team:\n      roles: [{{ name: planner, count: 1 }}]\n      steps: [{{ id: go, role: planner }}]\n      spread: true\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:10:15: task `t`: team spread takes the members from a cluster's nodes, and this run has one runtime: run it with colony run --nats, or remove it"
        ],
    );
}

/// A workflow named `name` with the pools and `tasks`, run on an in-memory journal that
/// outlives each run, so that a later run can resume from the rows an earlier one left.
struct Resumable {
    dir: tempfile::TempDir,
    w: colony_workflow::Workflow,
    journal: Arc<colony_journal::MemoryJournal>,
}

impl Resumable {
    fn new(name: &str, tasks: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("name: {name}\n{}tasks:\n{tasks}", pools(dir.path(), None));
        let w = parse(&yaml, "w.yaml", Path::new(".")).unwrap();
        let journal = Arc::new(colony_journal::MemoryJournal::new());
        Self { dir, w, journal }
    }

    /// Options of a run resuming from `prior`.
    fn options(&self, prior: Vec<colony_journal::TaskRow>) -> colony_workflow::Options {
        colony_workflow::Options {
            journal: self.journal.clone(),
            prior,
            ..options(&self.dir.path().join("out"))
        }
    }

    async fn run(&self, prior: Vec<colony_journal::TaskRow>) -> Report {
        colony_workflow::run(&self.w, self.options(prior))
            .await
            .unwrap()
    }

    /// Every row the journal holds now.
    fn rows(&self) -> Vec<colony_journal::TaskRow> {
        use colony_journal::Journal as _;
        (0..32)
            .filter_map(|id| self.journal.task(colony_core::TaskId(id)).unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_keeps_the_team_steps_its_earlier_asks_answered() {
    let r = Resumable::new(
        "again",
        &format!("  - {{id: plain, agent: sim}}\n  - id: feature\n{TEAM}"),
    );
    let report = r.run(Vec::new()).await;
    assert!(report.all_succeeded(), "{report:#?}");
    let first = report.tasks.iter().find(|t| t.id == "feature").unwrap();
    let first_output = first.output.as_ref().unwrap().value().clone();
    // The plain task's row and the team's five asks, all of the team's key.
    let prior = r.rows();
    assert_eq!(prior.len(), 6, "{prior:#?}");
    let step_of = |row: &colony_journal::TaskRow| {
        let payload: serde_json::Value = serde_json::from_slice(&row.spec.payload).unwrap();
        payload["team"]["step"].as_str().map(str::to_owned)
    };
    // The run resumed with `keep` of the earlier rows: the team's record, and its asks.
    let resumed = |keep: Vec<colony_journal::TaskRow>| {
        let r = &r;
        async move {
            let report = r.run(keep).await;
            assert!(report.all_succeeded(), "{report:#?}");
            let feature = report
                .tasks
                .into_iter()
                .find(|t| t.id == "feature")
                .unwrap();
            let steps: Vec<(String, bool, usize)> = feature
                .team
                .as_ref()
                .unwrap()
                .steps
                .iter()
                .map(|s| (s.id.to_string(), s.resumed, s.asks.len()))
                .collect();
            (feature, steps)
        }
    };
    let step = |id: &str, resumed: bool, asks: usize| (id.to_owned(), resumed, asks);

    // Every step answered: nothing is asked again (the steps show the earlier asks), and
    // the team's output is the same, by the same member.
    let (feature, steps) = resumed(prior.clone()).await;
    assert_eq!(feature.attempts, 0);
    assert_eq!(
        steps,
        [
            step("plan", true, 1),
            step("write", true, 3),
            step("review", true, 1)
        ]
    );
    assert_eq!(feature.agent, first.agent);
    assert_eq!(feature.output.as_ref().unwrap().value(), first_output);

    // Interrupted before its review: only the review is asked.
    let before_review: Vec<_> = prior
        .iter()
        .filter(|r| step_of(r).as_deref() != Some("review"))
        .cloned()
        .collect();
    let (feature, steps) = resumed(before_review.clone()).await;
    assert_eq!(feature.attempts, 1);
    assert_eq!(
        steps,
        [
            step("plan", true, 1),
            step("write", true, 3),
            step("review", false, 1)
        ]
    );
    assert_eq!(feature.output.as_ref().unwrap().value()["step"], "review");

    // Interrupted within the step asked of every writer, one of three having answered: that
    // step is asked again whole, and the one after it.
    let mut writes = 0;
    let within: Vec<_> = before_review
        .iter()
        .filter(|r| {
            step_of(r).as_deref() != Some("write") || {
                writes += 1;
                writes == 1
            }
        })
        .cloned()
        .collect();
    let (feature, steps) = resumed(within).await;
    assert_eq!(feature.attempts, 4);
    assert_eq!(
        steps,
        [
            step("plan", true, 1),
            step("write", false, 3),
            step("review", false, 1)
        ]
    );

    // Asks made of another input are not this run's steps: the team works again whole.
    let other: Vec<_> = prior
        .iter()
        .cloned()
        .map(|mut r| {
            if step_of(&r).is_some() {
                let text = String::from_utf8(r.spec.payload.to_vec()).unwrap();
                assert!(text.contains("\"docs\""), "{text}");
                r.spec.payload = text.replace("\"docs\"", "\"other\"").into();
            }
            r
        })
        .collect();
    let (feature, steps) = resumed(other).await;
    assert_eq!(feature.attempts, 5, "the team worked again");
    assert!(steps.iter().all(|s| !s.1), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_team_whose_kept_output_fails_its_checks_works_again() {
    // Its output never holds `never`: the team succeeds and the task fails its check.
    let r = Resumable::new(
        "checked",
        &format!("  - id: feature\n    expect: {{ contains: never }}\n{TEAM}"),
    );
    let report = r.run(Vec::new()).await;
    assert!(!report.all_succeeded());
    let prior = r.rows();
    assert_eq!(prior.len(), 5, "{prior:#?}");
    let report = r.run(prior).await;
    let feature = report.tasks.iter().find(|t| t.id == "feature").unwrap();
    // Kept whole, it would fail the same way for ever: it was asked again, and failed again.
    assert_eq!(feature.attempts, 5);
    assert!(
        feature
            .team
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .all(|s| !s.resumed),
        "{feature:#?}"
    );
    assert!(
        feature
            .error
            .as_deref()
            .unwrap()
            .contains("failed its checks"),
        "{feature:#?}"
    );
}

#[test]
fn roles_sharing_pools_are_checked_together_and_each_step_s_fields_by_its_role() {
    // Two roles of one pool of three agents: four members cannot be distinct.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    team:\n      roles:\n        - {{ name: lead, role: writer, count: 2 }}\n        - {{ name: writer, count: 2 }}\n      steps: [{{ id: go, role: writer }}]\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:10:19: task `t`: team roles `lead`, `writer` need 4 members together, and the pools that can take them have 3 agents: each member is a distinct agent"
        ],
    );
    // size-from's smallest team must fit too.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    input: {{ n: 3 }}\n    team:\n      size-from: {{ field: n, min: 5, max: 6 }}\n      roles: [{{ name: planner, count: 1 }}, {{ name: writer }}]\n      steps: [{{ id: go, role: writer }}]\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:10:52: task `t`: team role `writer` needs 4 members, and the pools that can take it have 3 agents: each member is a distinct agent"
        ],
    );
    // A field a command pool reads, given by the step that asks that pool, is there; one
    // that no step gives is reported once, for the role's pool only.
    let pools = "agents:\n  - {name: a, kind: command, role: planner, command: {program: echo, args: [\"{{input.topic}}\"]}}\n  - {name: b, kind: command, role: writer, command: {program: echo, args: [\"{{input.part}}\"]}}\n";
    let ok = format!(
        "name: w\n{pools}tasks:\n  - id: t\n    input: {{ topic: x }}\n    team:\n      roles: [{{ name: planner, count: 1 }}, {{ name: writer, count: 1 }}]\n      steps: [{{ id: plan, role: planner }}, {{ id: go, role: writer, input: {{ part: 1 }} }}]\n"
    );
    assert!(parse(&ok, "w.yaml", Path::new(".")).is_ok());
    let p = problems(&ok.replace("input: { part: 1 } ", "").replace(
        "{ id: go, role: writer }",
        "{ id: go, role: writer }, { id: again, role: writer }",
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("may run on pool `b`") && p[0].contains("no field `part`"),
        "{p:#?}"
    );
}
