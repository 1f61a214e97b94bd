//! A workflow run posted to a server keeps its metrics apart from the server's. On its own
//! in this file: the Prometheus recorder is the process's, and other tests' runtimes would
//! move the numbers read here.

use colony_agents::sim::SimOptions;
use colony_runtime::RuntimeOptions;
use colony_server::{
    Config, Scope, Tokens,
    testing::{local, serve, sim_runtime},
};
use serde_json::Value;
use std::time::Duration;

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

/// The value of the series `name` (with its labels, as Prometheus writes them), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Every `colony_agents{tier=...}` series, summed: the agents of the runtime.
fn agents(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("colony_agents{tier="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const WORKFLOW: &str = r#"
name: beside-the-server
agents:
  - { name: crowd, kind: sim, count: 300, sim: { latency: 1ms } }
tasks:
  - { id: a, agent: crowd }
  - { id: b, agent: crowd }
  - { id: c, agent: crowd, needs: [a, b] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_run_leaves_the_servers_metrics_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let path = dir.path().join("tokens");
    let admin = Tokens::create(&path, "ops", Scope::Admin).unwrap();
    let config = Config {
        runs: Some(dir.path().to_owned()),
        tokens: Some(Tokens::load(&path).unwrap()),
        ..local()
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{url}{path}"))
            .bearer_auth(&admin)
            .send()
    };
    for _ in 0..5 {
        let r = client
            .post(format!("{url}/v1/tasks"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    runtime.handle().drain().await.unwrap();
    let before = get("/metrics").await.unwrap().text().await.unwrap();
    assert_eq!(
        series(&before, "colony_tasks_accepted_total"),
        Some(5.0),
        "{before}"
    );
    let server_agents = agents(&before);
    assert!(server_agents >= 20.0, "{before}");
    let r = client
        .post(format!("{url}/v1/runs"))
        .bearer_auth(&admin)
        .header("content-type", "application/yaml")
        .body(WORKFLOW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let run = json(get(&format!("/v1/runs/{id}")).await.unwrap()).await;
        if run["state"] != "running" {
            assert_eq!(run["state"], "succeeded", "{run}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server's numbers are its own: its tasks, its agents.
    let after = get("/metrics").await.unwrap().text().await.unwrap();
    assert_eq!(
        series(&after, "colony_tasks_accepted_total"),
        Some(5.0),
        "{after}"
    );
    assert_eq!(agents(&after), server_agents, "{after}");
    // The run's are in the runs' registry.
    let runs = get("/metrics/runs").await.unwrap().text().await.unwrap();
    assert_eq!(
        series(&runs, "colony_tasks_accepted_total"),
        Some(3.0),
        "{runs}"
    );
    assert!(agents(&runs) >= 300.0, "{runs}");
    server.stop();
    runtime.shutdown().await;
}
