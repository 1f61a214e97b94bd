//! Tasks that talk by topic: one publishes its output, others wait for it and get it in
//! their input as `message`, without needing the publisher; a wait that gets nothing fails
//! by its deadline and says why; bad blocks refused at their line and column.

use colony_workflow::{Report, Status, parse};
use std::path::Path;

mod common;
use common::{options, problems};

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

const POOLS: &str = "agents:\n  - {name: sim, kind: sim, count: 3}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_get_the_published_output_and_a_wait_for_nothing_fails_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: talk\n{POOLS}tasks:\n  - {{id: a, agent: sim, input: {{word: hello}}, publish: words}}\n  - {{id: b, agent: sim, input: {{n: 1}}, wait: {{topic: words}}}}\n  - {{id: c, agent: sim, wait: {{topic: words}}}}\n  - {{id: lonely, agent: sim, input: {{n: 2}}, wait: {{topic: never, timeout: 200ms}}}}\n  - {{id: after, agent: sim, needs: [lonely]}}\n"
    );
    let report = run(&yaml, dir.path()).await;
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    for id in ["a", "b", "c"] {
        assert_eq!(task(id).status, Status::Succeeded, "{:?}", task(id));
    }
    // Both waiters got the same message: the publisher's output, from `workflow/a`.
    for id in ["b", "c"] {
        let out = task(id).output.as_ref().unwrap().value();
        let m = &out["input"]["message"];
        assert_eq!(m["from"], "workflow/a", "{out:#}");
        assert_eq!(m["topic"], "words");
        assert_eq!(m["body"]["input"]["word"], "hello", "{out:#}");
    }
    assert_eq!(task("b").output.as_ref().unwrap().value()["input"]["n"], 1);
    let lonely = task("lonely");
    assert_eq!(lonely.status, Status::Failed);
    assert_eq!(
        lonely.error.as_deref(),
        Some("wait: no message on topic `never` within 200ms"),
        "{lonely:?}"
    );
    assert_eq!(task("after").status, Status::Skipped);
}

#[test]
fn bad_topics_and_waits_are_refused_at_their_place() {
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    publish: \"a//b\"\n    wait: {{ topic: \"../up\", timeout: 2d }}\n"
    ));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:7:14: task `t`: publish: a topic name"),
        "{p:#?}"
    );
    assert!(
        p[1].starts_with("w.yaml:8:20: task `t`: wait: a topic name"),
        "{p:#?}"
    );
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    wait: {{ topic: ok, timeout: 2d }}\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:7:33: task `t`: wait timeout 2days is out of range: allowed 1ms..=1day"],
        "{p:#?}"
    );
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    publish: out\n    decide: {{ voters: 1 }}\n"
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("`publish` and `wait` are for tasks asked of one agent")),
        "{p:#?}"
    );
}

/// Resumed, a run publishes again what its tasks published in the earlier run: `b` waits on
/// `words` after `gate`, which failed the first time (so `b` was skipped); resumed, `a` is
/// not run again and `b` gets its output from the earlier run, where without it `b` would
/// wait out its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_publishes_again_what_its_earlier_run_published() {
    use colony_journal::{Journal as _, MemoryJournal};
    let dir = tempfile::tempdir().unwrap();
    let workflow = |gate: &str| {
        format!(
            "name: again\nagents:\n  - {{name: sim, kind: sim, count: 2}}\n  - {{name: gate, kind: command, command: {{program: sh, args: [\"-c\", {gate:?}]}}}}\ntasks:\n  - {{id: a, agent: sim, input: {{word: hello}}, publish: words}}\n  - {{id: gate, agent: gate, retries: 0}}\n  - {{id: b, agent: sim, needs: [gate], input: {{n: 1}}, wait: {{topic: words, timeout: 3s}}}}\n"
        )
    };
    let journal = std::sync::Arc::new(MemoryJournal::new());
    let options = |prior| colony_workflow::Options {
        journal: journal.clone(),
        prior,
        ..options(dir.path())
    };
    let first = parse(&workflow("exit 3"), "w.yaml", Path::new(".")).unwrap();
    let report = colony_workflow::run(&first, options(Vec::new()))
        .await
        .unwrap();
    let status =
        |report: &Report, id: &str| report.tasks.iter().find(|t| t.id == id).unwrap().status;
    assert_eq!(status(&report, "a"), Status::Succeeded, "{report:#?}");
    assert_eq!(status(&report, "b"), Status::Skipped, "{report:#?}");
    let prior: Vec<_> = (1..=3)
        .filter_map(|id| journal.task(colony_core::TaskId(id)).unwrap())
        .collect();
    assert_eq!(prior.len(), 2, "a and gate ran: {prior:#?}");
    let second = parse(&workflow("echo open"), "w.yaml", Path::new(".")).unwrap();
    let report = colony_workflow::run(&second, options(prior)).await.unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
    let a = report.tasks.iter().find(|t| t.id == "a").unwrap();
    assert_eq!(a.attempts, 1, "a is the earlier run's: {a:?}");
    let b = report.tasks.iter().find(|t| t.id == "b").unwrap();
    let got = b.output.as_ref().unwrap().value();
    let m = &got["input"]["message"];
    assert_eq!(m["from"], "workflow/a", "{got:#}");
    assert_eq!(m["body"]["input"]["word"], "hello", "{got:#}");
    assert!(
        journal.task(colony_core::TaskId(5)).unwrap().is_none(),
        "the second run ran gate and b only"
    );
}
