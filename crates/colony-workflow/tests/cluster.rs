//! What a run across a cluster cannot carry is refused before anything starts, each problem
//! naming its task or pool; a workflow of plain tasks, or of votes, has none.

use colony_workflow::{cluster::refusals, parse};
use std::path::Path;

#[test]
fn what_needs_one_runtime_is_refused_naming_the_task_and_why() {
    let yaml = r#"name: w
agents:
  - { name: sim, kind: sim, count: 4 }
  - { name: paced, kind: sim, rate-per-minute: 60 }
tasks:
  - { id: vote, agent: sim, decide: { voters: 3 } }
  - { id: weighed, agent: sim, decide: { voters: 3, protocol: weighted, weights: { sim: 2 } } }
  - id: crew
    team:
      size: 2
      roles: [{ name: sim }]
      steps: [{ id: s, role: sim }]
  - { id: talk, agent: sim, publish: words }
  - { id: listen, agent: sim, wait: { topic: words } }
  - { id: keep, agent: sim, remember: true }
  - { id: look, agent: sim, recall: { query: "x", k: 1 } }
  - { id: made, agent: sim, expect: { files: [out.txt] } }
  - { id: changed, agent: sim, expect: { git-diff: true } }
  - { id: plain, agent: sim, input: { n: 1 }, expect: { regex: "^1$" } }
"#;
    let workflow = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    let refused = refusals(&workflow);
    let has = |needle: &str| refused.iter().any(|r| r.contains(needle));
    for (what, why) in [
        ("task `weighed`: `decide`", "pools of one runtime"),
        ("task `crew`: `team`", "one runtime"),
        ("task `talk`: `wait` and `publish`", "message bus"),
        ("task `listen`: `wait` and `publish`", "message bus"),
        ("task `keep`: `remember` and `recall`", "memory"),
        ("task `look`: `remember` and `recall`", "memory"),
        ("task `made`: `expect: files`", "this machine"),
        ("task `changed`: `expect: git-diff`", "git checkout"),
        ("pool `paced`: `rate`", "paces"),
    ] {
        assert!(
            refused.iter().any(|r| r.contains(what) && r.contains(why)),
            "{what}: {refused:#?}"
        );
    }
    // A vote is taken by the node that takes the task, among its own agents.
    assert!(
        !has("`plain`") && !has("`vote`") && !has("pool `sim`"),
        "{refused:#?}"
    );
    assert_eq!(refused.len(), 9, "{refused:#?}");

    let plain = "name: p\nagents: [{ name: sim, kind: sim }]\ntasks:\n  - { id: a, agent: sim }\n  - { id: b, agent: sim, needs: [a], expect: { json: true } }\n";
    let workflow = parse(plain, "p.yaml", Path::new(".")).unwrap();
    assert_eq!(refusals(&workflow), Vec::<String>::new());
}
