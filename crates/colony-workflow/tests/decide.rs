//! Tasks decided by a vote of several agents: checked with locations, run on a real runtime
//! with command agents that answer differently, the outcome and its ballots on disk.

use colony_journal::MemoryJournal;
use colony_runtime::RuntimeOptions;
use colony_workflow::{Options, Report, Status, parse};
use serde_json::Value;
use std::{path::Path, sync::Arc};

mod common;
use common::{options, problems};

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

fn task<'a>(report: &'a Report, id: &str) -> &'a colony_workflow::Finished {
    report.tasks.iter().find(|t| t.id == id).unwrap()
}

fn result_file(out: &Path, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("{id}.json"))).unwrap()).unwrap()
}

/// A pool of `count` command agents of role `voter` that print what `script` prints.
fn voters(name: &str, count: u32, script: &str) -> String {
    format!(
        "  - name: {name}\n    kind: command\n    role: voter\n    count: {count}\n    command: {{ program: sh, args: [\"-c\", {script:?}] }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_decides_and_dependents_see_the_winner() {
    let out = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: vote\nagents:\n{}{}  - {{name: sim, kind: sim}}\ntasks:\n  - id: answer\n    role: voter\n    decide: {{ voters: 5, timeout: 30s }}\n  - id: use\n    agent: sim\n    needs: [answer]\n    input: {{ got: \"{{{{outputs.answer}}}}\" }}\n",
        voters("right", 3, "echo forty-two"),
        voters("wrong", 2, "echo wrong-{{agent}}"),
    );
    let report = run(&yaml, out.path()).await;
    assert!(report.all_succeeded(), "{report:#?}");
    let answer = task(&report, "answer");
    assert_eq!(answer.output.as_ref().unwrap().value(), "forty-two");
    assert_eq!(answer.attempts, 5, "one ballot per voter");
    // The dependent's input was filled with the winner.
    let used = task(&report, "use").output.as_ref().unwrap().value();
    assert_eq!(used["input"]["got"], "forty-two");
    // The result file carries the decision: the winner, and every voter seated.
    let file = result_file(out.path(), "answer");
    let decision = &file["decision"];
    assert_eq!(decision["outcome"]["result"], "decided", "{file:#}");
    let winner = &decision["outcome"]["winner"];
    assert_eq!(winner["value"], "forty-two");
    assert!(winner["support"].as_f64().unwrap() > 0.5, "{winner:#}");
    assert_eq!(winner["voters"].as_array().unwrap().len(), 3, "{winner:#}");
    assert_eq!(decision["voters"].as_array().unwrap().len(), 5);
    let ballots = decision["outcome"]["record"]["ballots"].as_array().unwrap();
    assert!(ballots.len() >= 3, "{decision:#}");
    for b in ballots {
        assert_eq!(b["status"], "counted");
    }
    // An ordinary task's file has no decision.
    assert!(result_file(out.path(), "use").get("decision").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tie_under_tie_fail_fails_the_task_and_skips_its_dependents() {
    let out = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: tied\nagents:\n{}{}  - {{name: sim, kind: sim}}\ntasks:\n  - id: answer\n    role: voter\n    decide: {{ voters: 4, tie: fail, timeout: 30s }}\n  - {{id: after, agent: sim, needs: [answer]}}\n",
        voters("yes", 2, "echo yes"),
        voters("no", 2, "echo no"),
    );
    let report = run(&yaml, out.path()).await;
    let answer = task(&report, "answer");
    assert_eq!(answer.status, Status::Failed, "{answer:#?}");
    assert!(answer.output.is_none());
    let error = answer.error.as_deref().unwrap();
    assert!(error.starts_with("the decision failed: tie"), "{error}");
    assert_eq!(task(&report, "after").status, Status::Skipped);
    // Every ballot is in the result file, each counted for one of the two.
    let file = result_file(out.path(), "answer");
    let outcome = &file["decision"]["outcome"];
    assert_eq!(outcome["result"], "failed");
    assert_eq!(outcome["reason"], "tie");
    let ballots = outcome["record"]["ballots"].as_array().unwrap();
    assert_eq!(ballots.len(), 4, "{outcome:#}");
    let mut votes: Vec<&str> = ballots
        .iter()
        .map(|b| b["ballot"]["vote"]["output"].as_str().unwrap().trim())
        .collect();
    votes.sort_unstable();
    assert_eq!(votes, ["no", "no", "yes", "yes"]);
    assert_eq!(file["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_that_all_fail_leave_no_quorum() {
    let out = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: silent\nagents:\n{}  - {{name: sim, kind: sim}}\ntasks:\n  - id: answer\n    role: voter\n    retries: 0\n    decide: {{ voters: 3, timeout: 30s }}\n  - {{id: after, agent: sim, needs: [answer]}}\n",
        voters("broken", 3, "exit 3"),
    );
    let report = run(&yaml, out.path()).await;
    let answer = task(&report, "answer");
    assert_eq!(answer.status, Status::Failed);
    let error = answer.error.as_deref().unwrap();
    assert!(
        error.starts_with("the decision failed: no-quorum"),
        "{error}"
    );
    assert_eq!(task(&report, "after").status, Status::Skipped);
    let file = result_file(out.path(), "answer");
    let voters = file["decision"]["voters"].as_array().unwrap();
    assert_eq!(voters.len(), 3);
    for v in voters {
        // Its one attempt failed: the ballot task is dead-lettered, the voter silent.
        assert_eq!(v["state"], "dead-lettered", "{v:#}");
        assert!(
            v["problem"].as_str().unwrap().contains("exited with 3"),
            "{v:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidence_decides_where_a_majority_cannot() {
    let sure = r#"echo '{"vote": "blue", "confidence": 0.95}'"#;
    let unsure = r#"echo "{\"vote\": \"red-{{agent}}\", \"confidence\": 0.6}""#;
    for (protocol, decided) in [("confidence", true), ("majority", false)] {
        let out = tempfile::tempdir().unwrap();
        let yaml = format!(
            "name: sure\nagents:\n{}{}tasks:\n  - id: colour\n    role: voter\n    decide: {{ voters: 4, protocol: {protocol}, timeout: 30s }}\n",
            voters("sure", 2, sure),
            voters("unsure", 2, unsure),
        );
        let report = run(&yaml, out.path()).await;
        let colour = task(&report, "colour");
        if decided {
            assert_eq!(colour.status, Status::Succeeded, "{colour:#?}");
            // The vote's value, not the object that carried it.
            assert_eq!(colour.output.as_ref().unwrap().value(), "blue");
        } else {
            // Two of four for blue is not more than half.
            assert_eq!(colour.status, Status::Failed, "{colour:#?}");
            let error = colour.error.as_deref().unwrap();
            assert!(
                error.starts_with("the decision failed: no-agreement"),
                "{error}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_count_by_pool_and_the_winner_meets_the_tasks_checks() {
    let out = tempfile::tempdir().unwrap();
    // One heavy voter outweighs two light ones under `weighted`.
    let yaml = format!(
        "name: weighed\nagents:\n{}{}tasks:\n  - id: pick\n    role: voter\n    decide: {{ voters: 3, protocol: weighted, weights: {{ heavy: 3, light: 1 }}, timeout: 30s }}\n  - id: checked\n    role: voter\n    decide: {{ voters: 3, protocol: weighted, weights: {{ heavy: 3 }}, timeout: 30s }}\n    expect: {{ regex: \"^b\" }}\n",
        voters("light", 2, "echo b"),
        voters("heavy", 1, "echo a"),
    );
    let report = run(&yaml, out.path()).await;
    let pick = task(&report, "pick");
    assert_eq!(pick.status, Status::Succeeded, "{pick:#?}");
    assert_eq!(pick.output.as_ref().unwrap().value(), "a");
    // The heavy pool's one voter counted 3: the weight is its pool's, by name. (Support
    // depends on how many light ballots came before the heavy one decided it.)
    let record = &result_file(out.path(), "pick")["decision"]["outcome"]["record"];
    let a = record["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["value"] == "a")
        .unwrap();
    assert_eq!(a["weight"], 3.0, "{record:#}");
    assert_eq!(a["voters"], 1, "{record:#}");
    // The winner fails the task's check: the task fails, though the vote was decided.
    let checked = task(&report, "checked");
    assert_eq!(checked.status, Status::Failed, "{checked:#?}");
    let error = checked.error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "the decision's winner failed its checks: expect: the output does not match /^b/"
        ),
        "{error}"
    );
    assert!(checked.output.is_none());
    assert_eq!(
        result_file(out.path(), "checked")["decision"]["outcome"]["result"],
        "decided"
    );
}

const POOLS: &str = "agents:\n  - {name: a, kind: sim, role: voter, count: 2}\n  - {name: b, kind: sim, role: voter, count: 1}\n";

#[test]
fn bad_decide_blocks_are_reported_at_their_line_and_column() {
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide:\n      voters: 2\n      quorom: 3\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:10:7: unknown field `quorom`"),
        "{p:#?}"
    );

    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide: {{ voters: 0 }}\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:8:23: task `t`: decide voters 0 is out of range: allowed 1..=100000"]
    );

    let runs = format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide:\n      voters: 3\n      protocol: fast\n      tie: judge\n"
    );
    let parsed = colony_workflow::parse(&runs, "w.yaml", std::path::Path::new("."));
    assert!(parsed.is_ok(), "fast and a judge are run: {parsed:?}");
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide:\n      voters: 1\n      protocol: leader\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:10:17: task `t`: decide protocol `leader` needs 2 voters or more"),
        "{p:#?}"
    );

    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide:\n      voters: 3\n      protocol: weighted\n      weights: {{ a: 2, bb: 1, b: -1 }}\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:11:24: task `t`: decide weights name pool `bb`, which this workflow does not define: did you mean `b`?",
            "w.yaml:11:34: task `t`: decide weight -1 of pool `b` is out of range: allowed 0 up to 1000000",
        ]
    );
}

#[test]
fn what_a_vote_cannot_do_is_refused_up_front() {
    // More voters than the agents that can run the task.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide: {{ voters: 4 }}\n"
    ));
    assert_eq!(
        p,
        [
            "w.yaml:8:23: task `t` asks for 4 voters, but the pools that can run it (`a`, `b`) have 3 agents: each voter is a distinct agent"
        ]
    );
    // Values out of range, each at its key, all at once.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide:\n      voters: 3\n      threshold: 1.5\n      participation: 0\n      timeout: 2d\n"
    ));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:10:18: task `t`: decision threshold 1.5"),
        "{p:#?}"
    );
    assert!(
        p[1].starts_with("w.yaml:11:22: task `t`: decision participation 0"),
        "{p:#?}"
    );
    assert!(
        p[2].starts_with("w.yaml:12:16: task `t`: decision timeout"),
        "{p:#?}"
    );
    // Weights a majority would not count; bft with more faults than its voters tolerate.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide: {{ voters: 3, weights: {{ a: 2 }} }}\n  - id: u\n    role: voter\n    decide: {{ voters: 3, protocol: bft, faults: 1 }}\n"
    ));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with(
            "w.yaml:8:35: task `t`: decide weights count only under protocol weighted or confidence"
        ),
        "{p:#?}"
    );
    assert!(
        p[1].starts_with("w.yaml:11:49: task `u`: decide faults 1 needs at least 4 voters"),
        "{p:#?}"
    );
    // Reputation weighs only where weights count.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide: {{ voters: 3, reputation: true }}\n  - id: u\n    role: voter\n    decide: {{ voters: 3, protocol: weighted, reputation: true }}\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with(
            "w.yaml:8:38: task `t`: decide reputation weighs voters only under protocol weighted or confidence"
        ),
        "{p:#?}"
    );
    // A vote spread over a cluster's nodes, in a run of one runtime.
    let p = problems(&format!(
        "name: w\n{POOLS}tasks:\n  - id: t\n    role: voter\n    decide: {{ voters: 3, spread: true }}\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with(
            "w.yaml:8:34: task `t`: decide spread spreads the voters over a cluster's nodes, and this run has one runtime"
        ),
        "{p:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_decides_again_rather_than_take_a_ballot_for_the_outcome() {
    use colony_journal::Journal as _;
    let workflow = |answer: &str| {
        format!(
            "name: again\nagents:\n{}  - {{name: sim, kind: sim}}\ntasks:\n  - {{id: plain, agent: sim}}\n  - id: answer\n    role: voter\n    decide: {{ voters: 3, timeout: 30s }}\n",
            voters("v", 3, &format!("echo {answer}")),
        )
    };
    let journal = Arc::new(MemoryJournal::new());
    let out = tempfile::tempdir().unwrap();
    let first = parse(&workflow("first"), "w.yaml", Path::new(".")).unwrap();
    let options = |prior| Options {
        runtime: RuntimeOptions::default(),
        journal: journal.clone(),
        output: Some(out.path().to_owned()),
        on_started: None,
        on_finished: None,
        cancel: None,
        prior,
    };
    let report = colony_workflow::run(&first, options(Vec::new()))
        .await
        .unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
    // Every row of the first run: the plain task's and the three ballots', of one key.
    let prior: Vec<_> = (0..16)
        .filter_map(|id| journal.task(colony_core::TaskId(id)).unwrap())
        .collect();
    assert_eq!(prior.len(), 4, "{prior:#?}");
    // The voters now answer otherwise; the task's definition, and so its key, is the same.
    let second = parse(&workflow("second"), "w.yaml", Path::new(".")).unwrap();
    let report = colony_workflow::run(&second, options(prior)).await.unwrap();
    assert!(report.all_succeeded(), "{report:#?}");
    // The plain task was not run again; the decision was, and its winner is the new one.
    assert_eq!(task(&report, "plain").attempts, 1);
    let answer = task(&report, "answer");
    assert_eq!(answer.output.as_ref().unwrap().value(), "second");
    assert!(answer.decision.is_some());
}
