//! A workflow's memory: a task remembers its output, a later task recalls it into its input,
//! and the next run of the workflow recalls what the first remembered; bad blocks refused at
//! their line and column.

use colony_workflow::{Report, Status, parse};
use serde_json::Value;
use std::path::Path;

mod common;
use common::{options, problems};

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

fn output(report: &Report, id: &str) -> Value {
    let t = report.tasks.iter().find(|t| t.id == id).unwrap();
    assert_eq!(t.status, Status::Succeeded, "{t:?}");
    t.output.as_ref().unwrap().value()
}

const FILE: &str = "name: remembers\nagents:\n  - {name: say, kind: command, command: {program: echo, args: [\"the supervisor restarts crashed agents\"]}}\n  - {name: sim, kind: sim}\ntasks:\n  - {id: note, agent: say, remember: true}\n  - id: use\n    agent: sim\n    needs: [note]\n    input: { topic: crashes }\n    recall: { query: \"restart crashed agents\", k: 3 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_output_is_recalled_by_a_later_task_and_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(FILE, dir.path()).await;
    assert!(report.all_succeeded(), "{report:#?}");
    // The sim agent answers with its payload: the input, with what was recalled.
    let used = output(&report, "use");
    let recalled = used["input"]["recall"].as_array().unwrap();
    assert_eq!(recalled.len(), 1, "{used:#}");
    assert_eq!(recalled[0]["id"], "note");
    assert_eq!(
        recalled[0]["text"],
        "the supervisor restarts crashed agents"
    );
    assert_eq!(used["input"]["topic"], "crashes");
    assert!(dir.path().join("memory.db").is_file());

    // A second run of another workflow of the same name, in the same folder, recalls what
    // the first remembered before anything of its own.
    let second = "name: remembers\nagents:\n  - {name: sim, kind: sim}\ntasks:\n  - id: again\n    agent: sim\n    recall: { query: \"crashed\" }\n";
    let report = run(second, dir.path()).await;
    let again = output(&report, "again");
    assert_eq!(again["input"]["recall"][0]["id"], "note", "{again:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_with_nothing_remembered_finds_nothing_and_the_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "name: empty\nagents:\n  - {name: sim, kind: sim}\ntasks:\n  - id: t\n    agent: sim\n    recall: { query: \"anything\" }\n";
    let report = run(yaml, dir.path()).await;
    assert_eq!(
        output(&report, "t")["input"]["recall"],
        serde_json::json!([])
    );
}

#[test]
fn bad_memory_blocks_are_reported_at_their_line_and_column() {
    const POOLS: &str = "agents:\n  - {name: sim, kind: sim}\n";
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    recall: {{ query: \"{{{{outputs.x}}}}\", k: 0 }}\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:7:22: `{{outputs.x}}` names a task that `t` does not need: add `x` to its `needs`",
            "w.yaml:7:42: task `t`: recall k 0 is out of range: allowed 1..=100",
        ],
        "{p:#?}"
    );
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    remember: true\n    decide: {{ voters: 1 }}\n"
    ));
    assert!(
        p.iter()
            .any(|m| m.contains("not yet for a decision or a team")),
        "{p:#?}"
    );
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    agent: sim\n    recall: {{ query: x, top: 3 }}\n"
    ));
    assert!(p[0].contains("unknown field `top`"), "{p:#?}");
}

#[test]
fn a_bad_memory_section_is_reported_at_its_line_and_column() {
    const REST: &str =
        "agents:\n  - {name: sim, kind: sim}\ntasks:\n  - {id: t, agent: sim, remember: true}\n";
    let p = problems(&format!(
        "name: w\nmemory:\n  db: m.db\n  chroma: http://127.0.0.1:1\n  shards: 0\n  embedder: {{ base-url: ftp://x, model: m, dimension: 0 }}\n{REST}"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:3:7: memory: `db` and `chroma` both say where the memory is: give one",
            "w.yaml:5:11: memory: shards 0 is out of range: allowed 1..=64",
            "w.yaml:6:25: memory: the embedder's base-url must be an http(s) URL",
            "w.yaml:6:55: memory: the embedder's dimension 0 is out of range: allowed 1..=4096",
        ],
        "{p:#?}"
    );
    let p = problems(&format!(
        "name: w\nmemory:\n  chroma: \"http://h:1?shelf=2\"\n{REST}"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:3:11: memory: chroma") && p[0].contains("unknown setting `shelf`"),
        "{p:#?}"
    );
    let p = problems(&format!("name: w\nmemory:\n  disk: m.db\n{REST}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("disk"), "{p:#?}");
}

/// A memory in NATS (`memory: { db: nats://HOST:PORT/NAME }`) is one every scheduler
/// reaches: a run whose output folder is elsewhere (another machine's, as a run taken over
/// there) recalls what the first run remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_in_different_folders_share_a_memory_in_nats() {
    let dir = tempfile::tempdir().unwrap();
    let server = colony_cluster::testing::NatsServer::single(&dir.path().join("nats")).unwrap();
    let section = format!("memory:\n  db: {}/notes?replicas=1\n", server.url());
    let first = FILE.replacen("agents:", &format!("{section}agents:"), 1);
    // A dry run never reaches it: its memory is in the process.
    let planned = parse(&first, "w.yaml", Path::new(".")).unwrap();
    assert!(planned.memory.nats.is_some());
    assert!(planned.simulated(1.0).0.memory.nats.is_none());
    let report = run(&first, &dir.path().join("one")).await;
    let used = output(&report, "use");
    assert_eq!(used["input"]["recall"][0]["id"], "note", "{used:#}");
    assert!(!dir.path().join("one/memory.db").exists());
    let second = format!(
        "name: remembers\n{section}agents:\n  - {{name: sim, kind: sim}}\ntasks:\n  - id: again\n    agent: sim\n    recall: {{ query: \"crashed\" }}\n"
    );
    let report = run(&second, &dir.path().join("two")).await;
    let again = output(&report, "again");
    assert_eq!(again["input"]["recall"][0]["id"], "note", "{again:#}");
    assert_eq!(
        again["input"]["recall"][0]["text"],
        "the supervisor restarts crashed agents"
    );
}

#[test]
fn a_memory_in_nats_is_checked_at_its_line_and_column() {
    const REST: &str =
        "agents:\n  - {name: sim, kind: sim}\ntasks:\n  - {id: t, agent: sim, remember: true}\n";
    let p = problems(&format!(
        "name: w\nmemory:\n  db: nats://127.0.0.1:4222/a.b\n  shards: 2\n{REST}"
    ));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:3:7: memory: db `nats://127.0.0.1:4222/a.b`")
            && p[0].contains("memory name `a.b`"),
        "{p:#?}"
    );
    assert_eq!(
        p[1],
        "w.yaml:4:11: memory: a memory in NATS is one stream, replicated by its servers: it is not spread over 2 stores"
    );
}
