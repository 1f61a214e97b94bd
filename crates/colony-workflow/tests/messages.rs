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
