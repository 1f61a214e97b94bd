//! `colony serve --pools` with a coding-agent CLI's pool (the fake `claude`): what its calls
//! cost, their tokens and its budget are on `/metrics`.

use serde_json::{Value, json};
use std::time::Duration;

mod common;
use common::Server;

#[test]
fn a_cli_pool_s_spending_and_budget_are_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let fake = std::path::absolute(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../colony-agents/tests/fake-cli/claude"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pools.yaml"),
        format!(
            "name: spend\nagents:\n  - name: coder\n    kind: command\n    preset: claude\n    \
             count: 2\n    command: {{program: \"{}\", budget-usd: 1.5}}\n",
            fake.display()
        ),
    )
    .unwrap();
    let server = Server::start_in(dir.path(), &["--pools", "pools.yaml"]);
    let tasks: Vec<Value> = (0..4)
        .map(|i| json!({ "payload": { "prompt": format!("fix bug {i}") } }))
        .collect();
    server.submit_batch(tasks);
    server.wait_until(Duration::from_secs(60), "the tasks to succeed", || {
        server.get("/v1/stats", None)["succeeded"].as_u64() == Some(4)
    });
    let metrics = server
        .request(reqwest::Method::GET, "/metrics", None, None)
        .unwrap()
        .1;
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    // The fake reports $0.0125 a call.
    assert!((value("colony_pool_spent_usd{pool=\"coder\"}") - 0.05).abs() < 1e-9);
    assert_eq!(value("colony_pool_budget_usd{pool=\"coder\"}"), 1.5);
    assert!(value("colony_pool_tokens{pool=\"coder\",kind=\"completion\"}") >= 200.0);
    assert!(value("colony_pool_tokens{pool=\"coder\",kind=\"prompt\"}") > 400.0);
}
