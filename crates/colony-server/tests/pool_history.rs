//! `GET /v1/pools/history`: the pools' sizes once a second and the decisions on them, over
//! real HTTP against a running runtime.

use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_core::scaling::ScalingOptions;
use colony_journal::MemoryJournal;
use colony_runtime::{AutoscaleOptions, Pool, Runtime, RuntimeOptions};
use colony_server::testing::{local, serve, sim_runtime, until};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

/// How often a test looks again at what it waits for.
const POLL: Duration = Duration::from_millis(100);

async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

async fn history(url: &str, query: &str) -> Value {
    let r = reqwest::get(format!("{url}/v1/pools/history{query}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    json(r).await
}

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_shows_in_the_samples_and_as_a_decision() {
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let (server, url) = serve(&runtime, local()).await;

    // The first sample is taken as the server starts.
    let first = history(&url, "").await;
    assert_eq!(first["every-ms"], 1000);
    assert_eq!(first["samples-kept"], 900);
    assert_eq!(first["pools"][0]["kind"], "sim");
    assert_eq!(first["pools"][0]["role"], "worker");
    assert!(!first["t"].as_array().unwrap().is_empty(), "{first}");
    assert_eq!(numbers(&first["pools"][0]["agents"])[0], 20);
    assert_eq!(
        first["pools"][0]["desired"][0],
        Value::Null,
        "not autoscaled"
    );
    assert_eq!(first["events"], json!([]));
    let until_before = first["until"].as_u64().unwrap();

    let r = reqwest::Client::new()
        .put(format!("{url}/v1/pools/0"))
        .header("content-type", "application/json")
        .body(json!({"agents": 8}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Within a couple of samples the pool reads 8, after the decision that made it so.
    let after = until(Duration::from_secs(5), POLL, || async {
        let h = history(&url, "").await;
        (numbers(&h["pools"][0]["agents"]).last() == Some(&8)).then_some(h)
    })
    .await
    .expect("a sample of 8 agents within 5 s");
    let t = numbers(&after["t"]);
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    let agents = numbers(&after["pools"][0]["agents"]);
    assert_eq!(agents.len(), t.len());
    assert_eq!(agents[0], 20);
    let events = after["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let manual = &events[0];
    assert_eq!(
        (
            &manual["kind"],
            &manual["pool"],
            &manual["from"],
            &manual["to"]
        ),
        (&json!("scale:manual"), &json!(0), &json!(20), &json!(8))
    );
    let mark = manual["t"].as_u64().unwrap();
    assert!(mark > until_before);
    let at = t.iter().position(|&t| t > mark).expect("a sample after it");
    assert!(agents[..at].iter().all(|&a| a == 20), "{agents:?}");
    assert!(agents[at..].iter().all(|&a| a == 8), "{agents:?}");

    // `since` gives only what came after: the same decision, and the samples after it.
    let since = history(&url, &format!("?since={until_before}")).await;
    assert!(numbers(&since["t"]).iter().all(|&t| t > until_before));
    assert_eq!(since["events"][0]["to"], 8);
    let now = after["until"].as_u64().unwrap();
    let later = until(Duration::from_secs(5), POLL, || async {
        let h = history(&url, &format!("?since={now}")).await;
        (!h["t"].as_array().unwrap().is_empty()).then_some(h)
    })
    .await
    .expect("a sample a second later");
    assert!(numbers(&later["t"]).iter().all(|&t| t > now));
    assert_eq!(later["events"], json!([]), "the decision came before");
    assert_eq!(
        numbers(&later["pools"][0]["agents"]),
        vec![8; later["t"].as_array().unwrap().len()]
    );
    // Far in the future: nothing, but the pools are still named.
    let none = history(&url, &format!("?since={}", u64::MAX)).await;
    assert_eq!(none["t"], json!([]));
    assert_eq!(none["pools"][0]["agents"], json!([]));
    assert_eq!(none["pools"][0]["kind"], "sim");

    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscalers_decisions_are_marked_with_their_reasons() {
    // The Prometheus recorder first, as `testing::sim_runtime` installs it.
    colony_server::install_metrics();
    let scaling = ScalingOptions {
        min: 1,
        max: 4,
        ..ScalingOptions::default()
    };
    let agent = Arc::new(Sim::new(SimOptions::default()).unwrap());
    let pool = Pool::new(AgentSpec::new("sim", "worker"), 10, agent).scaled(scaling);
    let options = RuntimeOptions {
        autoscale: AutoscaleOptions {
            every: Duration::from_millis(200),
            ..AutoscaleOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(options, vec![pool], Arc::new(MemoryJournal::new()))
        .await
        .unwrap();
    let (server, url) = serve(&runtime, local()).await;
    // Above its max, the pool goes back to it, as a decision with its reason (and then, idle,
    // lower); the samples carry the size the autoscaler wants.
    let h = until(Duration::from_secs(10), POLL, || async {
        let h = history(&url, "").await;
        let agents = numbers(&h["pools"][0]["agents"]);
        (h["events"].as_array().unwrap().len() >= 2 && agents.last() <= Some(&4)).then_some(h)
    })
    .await;
    let Some(h) = h else {
        panic!("no decisions within 10 s: {}", history(&url, "").await);
    };
    let down = &h["events"][0];
    assert_eq!(down["kind"], "scale:down", "{h}");
    assert_eq!(down["reason"], "above-max", "{h}");
    assert_eq!((&down["from"], &down["to"]), (&json!(10), &json!(4)));
    for e in h["events"].as_array().unwrap() {
        let kind = e["kind"].as_str().unwrap();
        assert!(kind.starts_with("scale:") && kind != "scale:manual", "{e}");
    }
    let desired = h["pools"][0]["desired"].as_array().unwrap();
    let last = desired.last().unwrap().as_u64().expect("a desired size");
    assert!((1..=4).contains(&last), "{h}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_is_a_400_naming_the_parameter() {
    let runtime = sim_runtime(4, SimOptions::default(), RuntimeOptions::default()).await;
    let (server, url) = serve(&runtime, local()).await;
    for (query, named) in [
        ("?since=soon", "since"),
        ("?since=-1", "since"),
        ("?since=1.5", "since"),
        ("?since=99999999999999999999999", "since"),
        ("?pool=0", "pool"),
    ] {
        let r = reqwest::get(format!("{url}/v1/pools/history{query}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body = json(r).await;
        assert_eq!(body["error"]["code"], "bad-query", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{query}: {message}");
    }
    // Changing history is no verb of it.
    let r = reqwest::Client::new()
        .put(format!("{url}/v1/pools/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(json(r).await["error"]["code"], "method-not-allowed");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_needs_the_read_scope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let read = colony_server::Tokens::create(&path, "viewer", colony_server::Scope::Read).unwrap();
    let runtime = sim_runtime(4, SimOptions::default(), RuntimeOptions::default()).await;
    let config = colony_server::Config {
        tokens: Some(colony_server::Tokens::load(&path).unwrap()),
        ..local()
    };
    let (server, url) = serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let path = format!("{url}/v1/pools/history");
    let r = client.get(&path).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["error"]["code"], "unauthorized");
    let r = client
        .get(&path)
        .bearer_auth("colony_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client.get(&path).bearer_auth(&read).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["pools"][0]["kind"], "sim");
    // The dashboard's cookie is worth `read`, which is enough.
    let r = client
        .get(&path)
        .header("cookie", format!("colony_token={read}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    runtime.shutdown().await;
}
