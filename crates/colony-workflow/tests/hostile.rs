//! Workflow files written to hurt: names that would leave the output folder, results that
//! cannot be written, templates that would amplify an output past every limit.

use colony_workflow::{Report, Status, parse};
use std::path::Path;

mod common;
use common::{options, problems};

async fn run_in(yaml: &str, base: &Path, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", base).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

#[test]
fn names_that_would_reach_outside_the_output_folder_are_refused() {
    for name in ["..", "../../x", "/etc", "a/b", "a b"] {
        let p = problems(&format!(
            "name: {name:?}\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a}}]\n"
        ));
        assert!(
            p.iter().any(
                |l| l.starts_with("w.yaml:1:7: workflow name:") && l.contains("is not allowed")
            ),
            "{name}: {p:?}"
        );
    }
    // A task id that could not be a file name is refused by `validate`, not by the run.
    let long = "t".repeat(300);
    let p = problems(&format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: {long}}}]\n"
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("300 bytes long: a name may have at most 128")),
        "{p:?}"
    );
    let p = problems("name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: ../x}]\n");
    assert!(
        p.iter()
            .any(|l| l.starts_with("w.yaml:3:14: task id:") && l.contains("not allowed")),
        "{p:?}"
    );
    // The longest allowed id is accepted.
    let ok = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: {}}}]\n",
        "t".repeat(128)
    );
    assert!(parse(&ok, "w.yaml", Path::new(".")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_cannot_be_written_fails_the_run() {
    let out = tempfile::tempdir().unwrap();
    // Folders where the files should go: writing them fails.
    std::fs::create_dir(out.path().join("b.json")).unwrap();
    std::fs::create_dir(out.path().join("summary.json")).unwrap();
    let report = run_in(
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a}, {id: b, needs: [a]}]\n",
        Path::new("."),
        out.path(),
    )
    .await;
    assert_eq!(report.succeeded, 2);
    assert!(!report.all_succeeded(), "{report:#?}");
    assert_eq!(report.unwritten.len(), 2, "{:?}", report.unwritten);
    assert!(
        report
            .unwritten
            .iter()
            .any(|e| e.contains("b.json") && e.starts_with("cannot write")),
        "{:?}",
        report.unwritten
    );
    assert!(
        report.unwritten.iter().any(|e| e.contains("summary.json")),
        "{:?}",
        report.unwritten
    );
    assert!(out.path().join("a.json").is_file());

    // Nothing in the way: nothing unwritten.
    let out = tempfile::tempdir().unwrap();
    let report = run_in(
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a}]\n",
        Path::new("."),
        out.path(),
    )
    .await;
    assert!(report.all_succeeded(), "{report:#?}");
    assert!(report.unwritten.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_references_to_a_big_output_fail_the_task_not_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    // A 4 MB output: `cat` of a 4 MB file.
    std::fs::write(dir.path().join("big.txt"), "x".repeat(4 << 20)).unwrap();
    let refs = "{{outputs.big}}".repeat(300);
    let yaml = format!(
        "name: w\ndefaults: {{retries: 0}}\nagents:\n  - {{name: cat, kind: command, command: {{program: cat, args: [big.txt], workdir: .}}}}\n  - {{name: s, kind: sim}}\ntasks:\n  - {{id: big, agent: cat}}\n  - {{id: amplified, agent: s, needs: [big], prompt: \"{refs}\"}}\n  - {{id: whole, agent: s, needs: [big], input: {{a: \"{{{{outputs.big}}}}\", b: \"{{{{outputs.big}}}}\"}}}}\n"
    );
    let out = dir.path().join("out");
    let report = run_in(&yaml, dir.path(), &out).await;
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    assert_eq!(task("big").status, Status::Succeeded, "{report:#?}");
    for id in ["amplified", "whole"] {
        let t = task(id);
        assert_eq!(t.status, Status::Failed);
        let e = t.error.as_deref().unwrap();
        assert!(
            e.contains("`{{outputs.big}}` would make the task's payload larger than its limit of 1048576 bytes"),
            "{id}: {e}"
        );
    }
    assert!(!report.all_succeeded());
}

/// Every problem `yaml` has, rendered as `colony validate` shows them (snippets included).
fn rendered(yaml: &str) -> String {
    let invalid = match parse(yaml, "w.yaml", Path::new(".")) {
        Ok(_) => panic!("accepted:\n{}", &yaml[..yaml.len().min(300)]),
        Err(invalid) => invalid,
    };
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(10_000);
    let mut out = String::new();
    for d in invalid.diagnostics() {
        handler.render_report(&mut out, &d).unwrap();
    }
    out
}

#[test]
fn validation_refuses_what_the_run_would_refuse() {
    // A NUL byte, written as an escape or as itself.
    let p =
        problems("name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, prompt: \"x\\0y\"}]\n");
    assert!(
        p.iter().any(|l| l.contains("prompt holds a NUL byte")),
        "{p:?}"
    );
    let p = problems(
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, input: {k: [\"\\0\"]}}]\n",
    );
    assert!(
        p.iter().any(|l| l.contains("input holds a NUL byte")),
        "{p:?}"
    );
    let p =
        problems("name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, prompt: \"x\0y\"}]\n");
    assert_eq!(
        p,
        ["w.yaml:3:27: a NUL byte: a workflow file is text, without NUL bytes"]
    );

    // `{{input.KEY}}` of a command pool's arguments, missing from a task's input.
    let p = problems(
        "name: w\nagents: [{name: c, kind: command, command: {program: echo, args: [\"{{input.file}}\", \"{{input.missing}}\"]}}]\ntasks: [{id: a, input: {file: x}}, {id: b}]\n",
    );
    assert!(
        p.iter().any(|l| l.contains(
            "task `a` may run on pool `c`, whose argument 2 takes `{{input.missing}}`: the task has input fields `file`, no field `missing`"
        )),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("task `b`") && l.contains("no input object, no field `file`")),
        "{p:?}"
    );
    // Placeholders nothing would fill, in a prompt or an input.
    for yaml in [
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, prompt: \"{{input.x}}\"}]\n",
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, input: {k: \"{{attempt}}\"}}]\n",
    ] {
        let p = problems(yaml);
        assert!(
            p.iter()
                .any(|l| l.contains("is filled only in a command pool's `args`")),
            "{p:?}"
        );
    }
    let p = problems(
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: a, prompt: \"{{bogus}}\"}]\n",
    );
    assert!(
        p.iter()
            .any(|l| l.contains("unknown placeholder `{{bogus}}`")),
        "{p:?}"
    );
    let p = problems(
        "name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: x}, {id: a, prompt: \"{{outputs.x.f}}\"}]\n",
    );
    assert!(
        p.iter()
            .any(|l| l.contains("names a task that `a` does not need: add `x` to its `needs`")),
        "{p:?}"
    );

    // A payload over the runtime's limit before anything is filled in.
    let big = "x".repeat(1_100_000);
    let p = problems(&format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, prompt: \"{big}\"}}]\n"
    ));
    assert!(
        p.iter().any(|l| l.contains("allowed up to 1048576")),
        "{:?}",
        p.iter().map(|l| &l[..l.len().min(200)]).collect::<Vec<_>>()
    );
}

#[test]
fn messages_name_the_field_and_the_range_not_rust_types() {
    let p = problems("name: w\nagents: [{name: s, kind: sim, count: -1}]\ntasks: [{id: a}]\n");
    assert_eq!(
        p,
        ["w.yaml:2:38: `count` is -1: allowed a whole number in 0..=4294967295"]
    );
    let p = problems(
        "name: w\ndefaults: {priority: 300}\nagents: [{name: s, kind: sim}]\ntasks: [{id: a}]\n",
    );
    assert!(
        p[0].contains("`priority` is 300: allowed a whole number in 0..=255"),
        "{p:?}"
    );
    for l in &p {
        assert!(!l.contains("invalid u"), "{l}");
    }
    // Nesting past the parser's limit: a sentence, not `Depth { depth: 257 }`.
    let deep = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, input: {}{}}}]\n",
        "[".repeat(300),
        "]".repeat(300)
    );
    let p = problems(&deep);
    assert!(
        p.iter()
            .any(|l| l.contains("nested") && l.contains("allowed up to 128")),
        "{p:?}"
    );
    assert!(p.iter().all(|l| !l.contains("{ ")), "{p:?}");
}

#[test]
fn snippets_of_huge_lines_are_cut() {
    let yaml = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, prompt: \"{}\", timeout: zz{}}}]\n",
        "x".repeat(5_000),
        "y".repeat(5_000)
    );
    let out = rendered(&yaml);
    assert!(out.contains("is not a duration"), "{out}");
    assert!(out.contains("w.yaml:3:"), "{out}");
    assert!(out.len() < 2_000, "{} bytes:\n{out}", out.len());
}

#[test]
fn a_hundred_thousand_tasks_validate() {
    let yaml = colony_workflow::bench::generate(
        100_000,
        &colony_workflow::bench::Agents::Sim {
            count: 10,
            error_rate: 0.0,
        },
        1,
    );
    assert!((yaml.len() as u64) < colony_workflow::MAX_FILE_BYTES);
    let w = parse(&yaml, "w.yaml", Path::new(".")).unwrap();
    assert_eq!(w.tasks.len(), 100_000);
}

#[test]
fn a_line_crowded_with_values_is_refused_and_the_same_values_over_lines_pass() {
    let one_line = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, input: [{}0]}}]\n",
        "0,".repeat(20_000)
    );
    let p = problems(&one_line);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("w.yaml:3:1: line 3 holds about 20004 values")
            && p[0].contains("allowed up to 10000 on one line"),
        "{p:?}"
    );
    // Commas inside quotes are text, and a `#` inside a value starts no comment.
    let quoted = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, prompt: \"{}\"}}]\n",
        ",".repeat(20_000)
    );
    assert!(parse(&quoted, "w.yaml", Path::new(".")).is_ok());
    let hidden = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, input: [a#b, {}0]}}]\n",
        "0,".repeat(20_000)
    );
    assert!(problems(&hidden)[0].contains("values of lists and maps"));
    // A quote inside a plain value is a letter: it hides nothing after it.
    for plain in ["a'b", "a\"b", "x - 'b"] {
        let sneaky = format!(
            "name: w\nagents: [{{name: s, kind: sim}}]\ntasks: [{{id: a, input: [{plain}, {}0]}}]\n",
            "1,".repeat(20_000)
        );
        let p = problems(&sneaky);
        assert!(p[0].contains("values of lists and maps"), "{plain}: {p:?}");
    }
    let over_lines = format!(
        "name: w\nagents: [{{name: s, kind: sim}}]\ntasks:\n  - id: a\n    input: [\n{}      0]\n",
        "      0,\n".repeat(20_000)
    );
    assert!(parse(&over_lines, "w.yaml", Path::new(".")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_fails_the_same_tasks_every_run() {
    // Half the attempts fail and none retries: which tasks fail depends only on the seed,
    // not on the order in which eight agents happen to take 200 tasks.
    let mut yaml = String::from(
        "name: w\ndefaults: {retries: 0}\nagents: [{name: s, kind: sim, count: 8, concurrency: 4, sim: {error-rate: 0.5, seed: 7}}]\ntasks:\n",
    );
    for i in 0..200 {
        yaml.push_str(&format!("  - {{id: t{i}, input: {{n: {i}}}}}\n"));
    }
    let mut runs = Vec::new();
    for _ in 0..3 {
        let out = tempfile::tempdir().unwrap();
        let report = run_in(&yaml, Path::new("."), out.path()).await;
        let failed: Vec<String> = report
            .tasks
            .iter()
            .filter(|t| t.status == Status::Failed)
            .map(|t| t.id.clone())
            .collect();
        runs.push(failed);
    }
    assert!(
        (50..150).contains(&runs[0].len()),
        "about half fail: {}",
        runs[0].len()
    );
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[1], runs[2]);
}

#[test]
fn a_misspelt_key_does_not_hide_the_other_problems() {
    // Flow style: the unknown field in the middle, and one at the end of its map.
    let p = problems(
        "name: w\nagents: [{name: s, kind: sim, cuont: 2, concurrency: 1}]\ntasks: [{id: a, needs: [zz], retrys: 3}]\n",
    );
    assert!(
        p.iter().any(|l| l.contains("unknown field `cuont`")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|l| l.contains("unknown field `retrys`")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("w.yaml:3:25: task `a` needs `zz`")),
        "{p:?}"
    );
    // Block style, with a nested value under the misspelt key.
    let p = problems(
        "name: w\nagents:\n  - name: s\n    kind: sim\n    simm:\n      seed: 1\n      latency: 1s\n    count: 0\ntasks:\n  - id: a\n    timeout: nope\n",
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("w.yaml:5:5: unknown field `simm`")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|l| l.contains("count 0 is out of range")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|l| l.contains("`nope` is not a duration")),
        "{p:?}"
    );
}

#[test]
fn more_tasks_than_a_workflow_may_have_are_refused_before_parsing() {
    let mut yaml = String::from("name: w\nagents: [{name: s, kind: sim}]\ntasks:\n");
    for i in 0..=colony_workflow::MAX_TASKS {
        yaml.push_str(&format!("  - {{id: t{i}}}\n"));
    }
    let p = problems(&yaml);
    assert!(
        p[0].contains("`id` keys: a workflow may have at most 100000 tasks"),
        "{:?}",
        &p[..1]
    );
    // TOML: a small file only, and the same count.
    let mut toml = String::from("name = \"w\"\n[[agents]]\nname = \"s\"\nkind = \"sim\"\n");
    for i in 0..60_000 {
        toml.push_str(&format!("[[tasks]]\nid = \"t{i}\"\n"));
    }
    let e = colony_workflow::parse_toml(&toml, "w.toml", Path::new(".")).unwrap_err();
    assert!(
        e.to_string().contains("a TOML workflow may have at most"),
        "{e}"
    );
}

#[test]
fn the_summary_id_is_taken_and_a_templated_input_is_left_to_the_run() {
    let p = problems("name: w\nagents: [{name: s, kind: sim}]\ntasks: [{id: summary}]\n");
    assert!(
        p.iter().any(|p| p.contains("task id `summary` is taken")),
        "{p:?}"
    );
    // The input comes whole from an upstream output: its fields are known when it runs.
    let yaml = "name: w\nagents:\n  - {name: plan, kind: sim}\n  - {name: wc, kind: command, command: {program: wc, args: [\"{{input.file}}\"]}}\n\
                tasks:\n  - {id: plan, agent: plan, input: {file: a}}\n  - {id: count, agent: wc, needs: [plan], input: \"{{outputs.plan.input}}\"}\n";
    assert!(parse(yaml, "w.yaml", Path::new(".")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_are_checked_and_written_raw_never_parsed_whole() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MB of JSON, written pretty (with blanks a tree would lose): `[\n0,\n0,...]`.
    let mut list = String::from("[\n");
    list.push_str(&"0,\n".repeat(699_999));
    list.push_str("0\n]");
    std::fs::write(dir.path().join("list.json"), &list).unwrap();
    let yaml = "name: w\ndefaults: {retries: 0}\nagents:\n  - {name: cat, kind: command, command: {program: cat, args: [list.json], workdir: .}}\n  - {name: s, kind: sim}\ntasks:\n  - {id: list, agent: cat, expect: {json: true, contains: \"0,\\n0\"}}\n  - {id: schema, agent: cat, expect: {schema: {type: array}}}\n  - {id: into, agent: s, needs: [list], prompt: \"{{outputs.list.0}}\"}\n";
    let out = dir.path().join("out");
    let report = run_in(yaml, dir.path(), &out).await;
    let task = |id: &str| report.tasks.iter().find(|t| t.id == id).unwrap();
    // Checked as JSON and as text without a tree.
    assert_eq!(
        task("list").status,
        Status::Succeeded,
        "{:?}",
        task("list").error
    );
    // Its result file holds the output as it came, blanks and all.
    let file = std::fs::read_to_string(out.join("list.json")).unwrap();
    assert!(file.contains(&list), "{}", &file[..300]);
    // A schema needs a tree: not for 2 MB.
    let e = task("schema").error.as_deref().unwrap();
    assert!(
        e.contains("the output is 2100002 bytes: outputs of up to 1048576 bytes are checked against a schema"),
        "{e}"
    );
    // Nor may a placeholder read into it.
    let e = task("into").error.as_deref().unwrap();
    assert!(
        e.contains("`{{outputs.list.0}}` reads the output of `list`, 2100002 bytes")
            && e.contains("up to 1048576 bytes"),
        "{e}"
    );
    // The summary says where the output is.
    assert_eq!(
        serde_json::to_value(task("list").output.as_ref().unwrap()).unwrap(),
        "(2100002 bytes: the output is in list.json)"
    );
}
