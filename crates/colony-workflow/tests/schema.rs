//! The shipped JSON Schema agrees with the format: it accepts every example, which the checker
//! also accepts, and refuses what the checker refuses for shape.

use std::path::Path;

fn schema() -> jsonschema::Validator {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/workflow.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn as_json(yaml: &str) -> serde_json::Value {
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn every_example_passes_the_schema_and_the_checker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let validator = schema();
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&as_json(&text))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        // A file without tasks is a pools file, for `colony serve --pools`.
        if text.contains("preset:") {
            // Its CLIs are not installed here: checked as a dry run checks it.
            // `colony/tests/examples.rs` checks it with the fake CLIs on PATH.
            colony_workflow::load_for_rehearsal(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if as_json(&text).get("tasks").is_some() {
            colony_workflow::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else {
            colony_workflow::load_pools(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        seen += 1;
    }
    assert!(seen >= 1);
}

#[test]
fn the_schema_refuses_what_the_format_refuses() {
    let validator = schema();
    for bad in [
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, retrys: 1}]\n",
        "name: x\nagents: [{name: a, kind: http}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: process}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim, count: 0}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim, count: 0, scaling: {min: 1}}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim, scaling: {mni: 1}}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: \"t/1\"}]\n",
        "name: x\nagents: [{name: a, kind: command}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim, preset: claude}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: command, preset: cursor}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {voters: 1, quorom: 1}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {voters: 0}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, team: {roles: [{name: a}]}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, team: {roles: [{name: a, count: 0}], steps: [{id: s, role: a}]}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, team: {roles: [{name: a}], steps: [{id: s, role: a, fan: true}]}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {protocol: majority}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {voters: 1, protocol: fastest}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {voters: 1, tie: judges}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\ntasks: [{id: t, decide: {voters: 1, protocol: weighted, weights: {a: -1}}}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\nwebhooks: [{url: \"ftp://h/x\"}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\nwebhooks: [{url: \"http://h/x\", event: [run:started]}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\nwebhooks: [{url: \"http://h/x\", events: [run:ended]}]\ntasks: [{id: t}]\n",
        "name: x\nagents: [{name: a, kind: sim}]\nwebhooks: [{url: \"http://h/x\", attempts: 21}]\ntasks: [{id: t}]\n",
    ] {
        assert!(!validator.is_valid(&as_json(bad)), "accepted: {bad}");
        assert!(colony_workflow::parse(bad, "x.yaml", Path::new(".")).is_err());
    }
}
