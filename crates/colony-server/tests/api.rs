//! The HTTP API against a real runtime, over real HTTP on loopback.

use colony_agents::sim::SimOptions;
use colony_runtime::{Runtime, RuntimeOptions};
use colony_server::testing::{local, serve, sim_runtime};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

/// A response's body as JSON (`null` when it is not).
async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

async fn start() -> (Runtime, colony_server::Server, String) {
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let (server, url) = serve(&runtime, local()).await;
    (runtime, server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_submitted_queried_and_counted() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/tasks"))
        .header("content-type", "application/json")
        .body(json!({"payload": {"x": 1}, "key": "first"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_u64().unwrap();
    let batch: Vec<Value> = (0..500).map(|i| json!({"payload": i})).collect();
    let r = client
        .post(format!("{url}/v1/tasks/batch"))
        .header("content-type", "application/json")
        .body(json!({ "tasks": batch }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(json(r).await["count"], 500);
    runtime.handle().drain().await.unwrap();
    let task = json(
        client
            .get(format!("{url}/v1/tasks/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["output"], json!({"x": 1}));
    assert_eq!(task["key"], "first");
    let stats = json(client.get(format!("{url}/v1/stats")).send().await.unwrap()).await;
    assert_eq!(stats["succeeded"], 501);
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("colony_task_attempts_total"), "{metrics}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_json_4xx_with_a_code() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let json_post = |path: &str, body: String| {
        client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = vec![
        (client.get(format!("{url}/nope")), 404, "not-found"),
        (
            client.delete(format!("{url}/v1/tasks")),
            405,
            "method-not-allowed",
        ),
        (json_post("/v1/tasks", "{not json".into()), 400, "bad-body"),
        (
            json_post(
                "/v1/tasks",
                json!({"payload": 1, "colour": "red"}).to_string(),
            ),
            422,
            "bad-body",
        ),
        (
            json_post("/v1/tasks", json!({"priority": 12}).to_string()),
            422,
            "bad-task",
        ),
        (
            json_post("/v1/tasks", json!({"timeout": -1}).to_string()),
            422,
            "bad-task",
        ),
        (
            json_post("/v1/tasks", json!({"role": "nobody"}).to_string()),
            422,
            "refused",
        ),
        (
            json_post("/v1/tasks/batch", json!({"tasks": []}).to_string()),
            422,
            "bad-batch",
        ),
        (
            json_post("/v1/tasks", "x".repeat(colony_server::MAX_BODY + 1)),
            413,
            "bad-body",
        ),
        (client.get(format!("{url}/v1/tasks/abc")), 400, "bad-id"),
        (
            client.get(format!("{url}/v1/tasks/99999")),
            404,
            "no-such-task",
        ),
        (
            client.post(format!("{url}/v1/tasks")).body("{}"),
            415,
            "bad-body",
        ),
    ];
    for (request, status, code) in cases {
        let r = request.send().await.unwrap();
        let got = r.status().as_u16();
        let body = json(r).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    // Good requests are unaffected.
    let r = json_post("/v1/tasks", "{}".into()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test]
async fn it_listens_on_loopback_only() {
    let (runtime, server, _) = start().await;
    let err = colony_server::serve(
        runtime.handle().clone(),
        colony_server::Config::local("0.0.0.0:0".parse().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_a_snapshot_every_second() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (runtime, server, _) = start().await;
    runtime
        .handle()
        .submit_batch(vec![colony_core::task::TaskSpec::default(); 100])
        .await
        .unwrap();
    runtime.handle().drain().await.unwrap();
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(
            b"GET /v1/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("\"succeeded\":100") && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: snapshot"), "{seen}");
    assert!(seen.contains("\"succeeded\":100"), "{seen}");
    // The snapshot after the tasks ended carries their latency; one with none ended, `null`.
    assert!(seen.contains("\"latency-p99-ms\":"), "{seen}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_served() {
    let (runtime, server, url) = start().await;
    let doc = json(reqwest::get(format!("{url}/openapi.json")).await.unwrap()).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Every documented route answers something other than "no such route"...
    for (path, methods) in paths {
        let concrete = path.replace("{id}", "1");
        for method in methods.as_object().unwrap().keys() {
            let r = reqwest::Client::new()
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{url}{concrete}"),
                )
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = if path == "/v1/events" {
                Value::Null
            } else {
                json(r).await
            };
            assert_ne!(
                body["error"]["code"], "not-found",
                "{method} {path}: {status}"
            );
            assert_ne!(status, 405, "{method} {path}");
        }
    }
    // ...and the routes the server has are all documented.
    for path in [
        "/v1/tasks",
        "/v1/tasks/batch",
        "/v1/tasks/{id}",
        "/v1/stats",
        "/v1/events",
        "/metrics",
        "/metrics/runs",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/tasks/{id}/cancel",
        "/v1/hierarchy",
        "/v1/agents",
        "/v1/agents/{id}",
        "/v1/agents/{id}/kill",
        "/v1/pools",
        "/v1/pools/{id}",
        "/v1/pools/history",
        "/v1/scaling/{pool}",
        "/login",
        "/logout",
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/graph",
        "/v1/runs/{id}/results/{task}",
        "/v1/runs/{id}/logs/{task}/{attempt}",
        "/v1/decisions",
        "/v1/decisions/{id}",
        "/v1/memory",
        "/v1/memory/documents",
        "/v1/memory/delete",
        "/v1/memory/search",
        "/v1/memory/rebuild",
        "/v1/messages",
        "/v1/messages/read",
        "/v1/messages/ack",
        "/v1/messages/subscribe",
        "/v1/messages/unsubscribe",
        "/v1/messages/close",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_with_its_key_is_accepted_once() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let send = |path: &str, key: &str, body: Value| {
        client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let first = send("/v1/tasks", "k1", json!({"payload": 1}))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = json(first).await["id"].clone();
    let again = send("/v1/tasks", "k1", json!({"payload": 1}))
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json(again).await["id"], id);
    let other = send("/v1/tasks", "k1", json!({"payload": 2}))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(json(other).await["error"]["code"], "idempotency-key-reused");
    let batch = json!({"tasks": [{"payload": 1}, {"payload": 2}]});
    let b1 = json(send("/v1/tasks/batch", "b1", batch.clone()).await.unwrap()).await;
    let b2 = json(send("/v1/tasks/batch", "b1", batch).await.unwrap()).await;
    assert_eq!(b1, b2);
    runtime.handle().drain().await.unwrap();
    assert_eq!(
        runtime.handle().stats().accepted,
        3,
        "one task and one batch of two"
    );
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_newest_first_and_cancelled() {
    let slow = SimOptions {
        latency: colony_agents::sim::Latency::Fixed {
            value: Duration::from_secs(60),
        },
        ..SimOptions::default()
    };
    let runtime = sim_runtime(1, slow, RuntimeOptions::default()).await;
    let (server, url) = serve(&runtime, local()).await;
    let client = reqwest::Client::new();
    let batch: Vec<Value> = (0..3).map(|i| json!({"payload": i})).collect();
    let r = client
        .post(format!("{url}/v1/tasks/batch"))
        .header("content-type", "application/json")
        .body(json!({ "tasks": batch }).to_string())
        .send()
        .await
        .unwrap();
    let first = json(r).await["first"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancel = |id: u64| client.post(format!("{url}/v1/tasks/{id}/cancel")).send();
    // The first runs, the others wait: one is cancelled at once, the runner is stopped.
    let r = json(cancel(first + 2).await.unwrap()).await;
    assert_eq!(r["cancelled"], "now");
    let r = json(cancel(first).await.unwrap()).await;
    assert_eq!(r["cancelled"], "stopping");
    let r = cancel(first + 2).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(json(r).await["error"]["code"], "already-ended");
    assert_eq!(cancel(999).await.unwrap().status(), 404);
    assert_eq!(cancel(0).await.unwrap().status(), 404);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while runtime.handle().stats().cancelled < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = |q: &str| client.get(format!("{url}/v1/tasks{q}")).send();
    let cancelled = json(list("?state=cancelled").await.unwrap()).await;
    let ids: Vec<u64> = cancelled["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [first + 2, first]);
    let page = json(list("?limit=2").await.unwrap()).await;
    assert_eq!(page["tasks"][0]["id"], first + 2);
    assert_eq!(page["next-before"], first + 1);
    let rest = json(
        list(&format!("?limit=2&before={}", first + 1))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next-before"], Value::Null);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hierarchy_is_walked_filtered_and_grown() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let get = |path: String| client.get(format!("{url}{path}")).send();
    let h = json(get("/v1/hierarchy".into()).await.unwrap()).await;
    let tiers = h["tiers"].as_array().unwrap();
    let workers = tiers.last().unwrap();
    assert_eq!(workers["agents"], 20);
    assert_eq!(workers["down"], 0);
    let root = h["roots"][0].as_u64().unwrap();
    // Down from a root to a worker, one level at a time.
    let mut at = root;
    let mut path = vec![];
    loop {
        let agent = json(get(format!("/v1/agents/{at}")).await.unwrap()).await;
        path.push(agent["tier"].as_str().unwrap().to_owned());
        let children = agent["children-list"].as_array().unwrap();
        if children.is_empty() {
            assert_eq!(agent["role"], "worker");
            assert_eq!(agent["state"], "up");
            // A worker that has not answered outside `handle` has no rate or baseline yet.
            assert_eq!(agent["breaker"], "closed", "{agent}");
            assert_eq!(agent["error-rate"], Value::Null, "{agent}");
            assert_eq!(agent["ancestors"].as_array().unwrap().len(), path.len() - 1);
            break;
        }
        at = children[0]["id"].as_u64().unwrap();
    }
    assert_eq!(path.len(), tiers.len());
    let name = workers["name"].as_str().unwrap();
    let page = json(
        get(format!("/v1/agents?tier={name}&limit=15"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["agents"].as_array().unwrap().len(), 15);
    let after = page["next-after"].as_u64().unwrap();
    let rest = json(
        get(format!("/v1/agents?tier={name}&after={after}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest["agents"].as_array().unwrap().len(), 5);
    assert_eq!(rest["next-after"], Value::Null);
    let r = get("/v1/agents?tier=generals".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        json(r).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generals")
    );
    assert_eq!(get("/v1/agents/123456".into()).await.unwrap().status(), 404);
    // Pools grow; they do not shrink, and say so.
    let resize = |n: u64| {
        client
            .put(format!("{url}/v1/pools/0"))
            .header("content-type", "application/json")
            .body(json!({ "agents": n }).to_string())
            .send()
    };
    let grown = json(resize(30).await.unwrap()).await;
    assert_eq!(
        (grown["agents"].clone(), grown["added"].clone()),
        (json!(30), json!(10))
    );
    let pools = json(get("/v1/pools".into()).await.unwrap()).await;
    assert_eq!(pools["pools"][0]["agents"], 30);
    // Shrinking retires workers; idle ones at the tree's end (the newest, retired first)
    // leave it at once, and growing takes their places again.
    let before = runtime.handle().stats().agents;
    let shrunk = json(resize(5).await.unwrap()).await;
    assert_eq!(
        (shrunk["agents"].clone(), shrunk["retired"].clone()),
        (json!(5), json!(25))
    );
    let h = json(get("/v1/hierarchy".into()).await.unwrap()).await;
    let workers = h["tiers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            workers["agents"].clone(),
            workers["retired"].clone(),
            workers["down"].clone()
        ),
        (json!(5), json!(0), json!(0)),
        "the retired gave their places back: {h}"
    );
    let listed = json(
        get("/v1/agents?state=retired&limit=100".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["agents"].as_array().unwrap().len(), 0);
    assert!(runtime.handle().stats().agents <= before - 25);
    let regrown = json(resize(12).await.unwrap()).await;
    assert_eq!(
        (regrown["agents"].clone(), regrown["added"].clone()),
        (json!(12), json!(7))
    );
    let h = json(get("/v1/hierarchy".into()).await.unwrap()).await;
    let workers = h["tiers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(workers["agents"], 12, "{h}");
    // Tasks still run on what is left.
    let r = client
        .post(format!("{url}/v1/tasks"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client
        .put(format!("{url}/v1/pools/9"))
        .header("content-type", "application/json")
        .body("{\"agents\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // What an outside autoscaler reads: the pool's load, and (no scaling policy here) the
    // agents that would keep it at most 80 % busy with nothing waiting.
    // The dispatcher publishes a pool's load at the end of the turn that took the task.
    let mut pools = json(get("/v1/pools".into()).await.unwrap()).await;
    for _ in 0..100 {
        if pools["pools"][0]["arrivals"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        pools = json(get("/v1/pools".into()).await.unwrap()).await;
    }
    assert_eq!(pools["pools"][0]["desired"], Value::Null);
    assert_eq!(pools["pools"][0]["arrivals"], 1, "{pools}");
    let scaling = json(get("/v1/scaling/0".into()).await.unwrap()).await;
    assert_eq!(scaling["agents"], 12, "{scaling}");
    assert_eq!(scaling["autoscaled"], false);
    let (busy, waiting) = (
        scaling["busy"].as_u64().unwrap(),
        scaling["waiting"].as_u64().unwrap(),
    );
    let needed = ((busy + waiting) as f64 / 0.8).ceil() as u64;
    assert_eq!(scaling["desired"].as_u64().unwrap(), needed, "{scaling}");
    assert_eq!(get("/v1/scaling/9".into()).await.unwrap().status(), 404);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoveries_and_growth_are_notable_once_a_second() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (runtime, server, _) = start().await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(
            b"GET /v1/events HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The first snapshot says the stream is subscribed.
    while !seen.contains("event: snapshot") {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let h = runtime.handle();
    let before = h.stats().agents;
    h.spawn(
        0,
        30,
        colony_runtime::SpawnMode::Waves {
            size: 5.try_into().unwrap(),
        },
    )
    .await
    .unwrap();
    let workers = h
        .inspect(|t| t.agents_in_tier(t.worker_tier()))
        .await
        .unwrap();
    for w in &workers[..4] {
        h.kill(*w).unwrap();
    }
    // Six waves and a cascade of restarts: each a line a second with its count, summing to
    // the runtime's own counts.
    let notable = |seen: &str| -> Vec<Value> {
        seen.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v.get("kind").is_some())
            .collect()
    };
    let sum = |lines: &[Value], kind: &str, field: &str| -> (u64, usize) {
        let of_kind: Vec<&Value> = lines.iter().filter(|v| v["kind"] == kind).collect();
        let total = of_kind.iter().map(|v| v[field].as_u64().unwrap()).sum();
        (total, of_kind.len())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (added, restarts) = loop {
        let (added, restarts) = (h.stats().agents - before, h.stats().restarts);
        let lines = notable(&seen);
        if sum(&lines, "scaled", "agents-added").0 == added
            && sum(&lines, "recovered", "agents").0 == restarts
            && restarts >= 4
        {
            break (added, restarts);
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:?}");
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    };
    let lines = notable(&seen);
    // Thirty workers, and the supervisors they needed.
    assert!(added > 30);
    // Counted a second at a time: far fewer lines than agents, whatever the machine's load.
    assert!(
        sum(&lines, "scaled", "agents-added").1 * 4 <= added as usize,
        "{lines:?}"
    );
    // Four kills under one supervisor exceed its intensity: it escalates, and its subtree is
    // restarted with it.
    assert!(restarts > 4);
    assert!(
        sum(&lines, "recovered", "agents").1 * 4 <= restarts as usize,
        "{lines:?}"
    );
    server.stop();
    runtime.shutdown().await;
}

/// A server with workflow runs on, their results under `folder`, and a client that holds
/// an admin token (runs need tokens).
async fn with_runs(
    folder: &std::path::Path,
) -> (Runtime, colony_server::Server, String, reqwest::Client) {
    with_runs_posting_to(folder, Vec::new()).await
}

/// [`with_runs`], every run also posting its events to `webhooks`.
async fn with_runs_posting_to(
    folder: &std::path::Path,
    webhooks: Vec<colony_workflow::webhooks::Webhook>,
) -> (Runtime, colony_server::Server, String, reqwest::Client) {
    let (runtime, _, _) = start().await;
    let path = folder.join("tokens");
    let admin = colony_server::Tokens::create(&path, "ops", colony_server::Scope::Admin).unwrap();
    let config = colony_server::Config {
        runs: Some(folder.to_owned()),
        run_webhooks: webhooks,
        tokens: Some(colony_server::Tokens::load(&path).unwrap()),
        ..local()
    };
    let (server, url) = serve(&runtime, config).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    (runtime, server, url, client)
}

/// Run `id` once it has ended, within ten seconds.
async fn ended(client: &reqwest::Client, url: &str, id: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{url}/v1/runs/{id}")).send().await;
        let run = json(r.unwrap()).await;
        if run["state"] != "running" {
            return run;
        }
        assert!(tokio::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WORKFLOW: &str = r#"
name: over-http
agents:
  - { name: planner, kind: sim, sim: { latency: 5ms } }
  - { name: slow, kind: sim, sim: { latency: 60s } }
tasks:
  - { id: plan, agent: planner, input: { step: 1 } }
  - { id: build, agent: planner, needs: [plan], input: { step: 2 } }
  - { id: ship, agent: planner, needs: [build], input: { step: 3 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_posted_to_a_server_with_a_webhook_posts_its_events_there() {
    // A receiver on loopback, keeping each event's kind and body.
    let got: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = got.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let kind = headers["x-colony-event"].to_str().unwrap().to_owned();
                got.lock()
                    .unwrap()
                    .push((kind, serde_json::from_slice(&body).unwrap()));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    colony_runtime::spawner::Spawner::spawn("test-receiver", async move {
        axum::serve(listener, app).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let webhook = colony_workflow::webhooks::Webhook::new(hook.clone());
    let (runtime, server, url, client) = with_runs_posting_to(dir.path(), vec![webhook]).await;
    let r = client
        .post(format!("{url}/v1/runs"))
        .header("content-type", "application/yaml")
        .body(WORKFLOW.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_u64().unwrap();
    let run = ended(&client, &url, id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    // The run's end waits for its webhooks' queues: both events are in.
    let got = got.lock().unwrap().clone();
    let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["run:started", "run:finished"]);
    assert_eq!(got[0].1["run"], "over-http");
    assert_eq!(got[1].1["summary"]["succeeded"], 3);
    assert_eq!(
        run["report"]["webhooks"][0]["url"],
        colony_workflow::webhooks::shown(&hook).as_str()
    );
    assert_eq!(run["report"]["webhooks"][0]["delivered"], 2);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_posted_runs_to_completion_and_its_results_are_files() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, server, url, client) = with_runs(dir.path()).await;
    let post = |body: &str| {
        client
            .post(format!("{url}/v1/runs"))
            .header("content-type", "application/yaml")
            .body(body.to_owned())
            .send()
    };
    let r = post(WORKFLOW).await.unwrap();
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_u64().unwrap();
    let run = ended(&client, &url, id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["report"]["succeeded"], 3);
    let finished: Vec<&str> = run["finished"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(finished, ["plan", "build", "ship"], "in dependency order");
    let ship = std::fs::read_to_string(dir.path().join(format!("{id}/ship.json"))).unwrap();
    assert!(ship.contains("\"succeeded\""), "{ship}");
    let list = json(client.get(format!("{url}/v1/runs")).send().await.unwrap()).await;
    assert_eq!(list["runs"][0]["id"], id);
    assert_eq!(list["runs"][0]["succeeded"], 3);
    // A bad file is refused whole, each problem with its line and column.
    let r = post("name: x\nagents: []\ntasks:\n  - { id: a, agent: nobody }\n")
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = json(r).await;
    assert_eq!(body["error"]["code"], "bad-workflow");
    let problem = &body["error"]["problems"][0];
    assert!(
        problem["message"].as_str().unwrap().contains("nobody"),
        "{body}"
    );
    assert_eq!(problem["line"], 4);
    // A long run is cancelled: nothing more starts and it ends cancelled.
    let slow = WORKFLOW.replace(
        "agent: planner, needs: [plan]",
        "agent: slow, needs: [plan]",
    );
    let id = json(post(&slow).await.unwrap()).await["id"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancel = || client.post(format!("{url}/v1/runs/{id}/cancel")).send();
    assert_eq!(cancel().await.unwrap().status(), 202);
    let run = ended(&client, &url, id).await;
    assert_eq!(run["state"], "cancelled", "{run}");
    assert_eq!(run["report"]["succeeded"], 1);
    assert_eq!(cancel().await.unwrap().status(), 409);
    assert_eq!(
        client
            .get(format!("{url}/v1/runs/77"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_runs_folder_no_workflow_runs() {
    let (runtime, server, url) = start().await;
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/runs"))
        .body(WORKFLOW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"]["code"], "runs-disabled");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_filter_over_many_agents_comes_in_bounded_pages() {
    let runtime = sim_runtime(150_000, SimOptions::default(), RuntimeOptions::default()).await;
    let (server, url) = serve(&runtime, local()).await;
    let client = reqwest::Client::new();
    // No worker has failed: each request looks at a bounded number of agents and says
    // where to go on, until the end.
    let mut after: Option<u64> = None;
    let mut requests = 0;
    loop {
        let q = match after {
            Some(a) => format!("health=failed&after={a}"),
            None => "health=failed".to_owned(),
        };
        let page = json(
            client
                .get(format!("{url}/v1/agents?{q}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        requests += 1;
        assert!(page["agents"].as_array().unwrap().is_empty(), "{page}");
        match page["next-after"].as_u64() {
            Some(a) => {
                assert!(after.is_none_or(|b| a > b), "{page}");
                after = Some(a);
            }
            None => break,
        }
    }
    let total = runtime.handle().stats().agents;
    assert_eq!(requests, total.div_ceil(100_000), "{total} agents");
    // The summary counts without a walk: every worker healthy, none down.
    let h = json(
        reqwest::get(format!("{}/v1/hierarchy", server.url()))
            .await
            .unwrap(),
    )
    .await;
    let workers = h["tiers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(workers["agents"], 150_000);
    assert_eq!(
        (workers["down"].clone(), workers["failed"].clone()),
        (json!(0), json!(0))
    );
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_agents_out_of_service_as_a_walk_does() {
    // A second restart in a burst waits a minute: the worker stays out of service.
    let mut options = RuntimeOptions::default();
    options.supervision.initial_backoff = Duration::from_secs(60);
    options.supervision.max_backoff = Duration::from_secs(60);
    let runtime = sim_runtime(20, SimOptions::default(), options).await;
    let (server, _) = serve(&runtime, local()).await;
    let h = runtime.handle();
    let victim = h
        .inspect(|t| t.agents_in_tier(t.worker_tier())[3])
        .await
        .unwrap();
    h.kill(victim).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.stats().restarts < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    h.kill(victim).unwrap();
    let url = server.url();
    let get = |path: &str| reqwest::get(format!("{url}{path}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (summary, walked) = loop {
        let summary = json(get("/v1/hierarchy").await.unwrap()).await;
        let walked = json(get("/v1/agents?state=down").await.unwrap()).await;
        if walked["agents"].as_array().unwrap().len() == 1 {
            break (summary, walked);
        }
        assert!(tokio::time::Instant::now() < deadline, "{walked}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(walked["agents"][0]["id"], victim.0);
    let workers = summary["tiers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(workers["down"], 1, "{summary}");
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
    let config = colony_server::Config {
        max_streams: 2,
        ..local()
    };
    let (server, url) = serve(&runtime, config).await;
    let open = || async {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket
            .write_all(b"GET /v1/events HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = socket.read(&mut head).await.unwrap();
        (socket, String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let (first, head) = open().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = open().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let r = reqwest::get(format!("{url}/v1/events")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(json(r).await["error"]["code"], "too-many-streams");
    // Closing one gives its place back, once the server notices (its next write fails).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, head) = open().await;
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    runtime.shutdown().await;
}

/// Decision `id` as `GET /v1/decisions/{id}` shows it once it is no longer open, within 10 s.
async fn decision_ended(client: &reqwest::Client, url: &str, id: u64) -> Value {
    colony_server::testing::until(Duration::from_secs(10), Duration::from_millis(10), || {
        let (client, url) = (client.clone(), url.to_owned());
        async move {
            let r = client
                .get(format!("{url}/v1/decisions/{id}"))
                .send()
                .await
                .ok()?;
            let view = json(r).await;
            (view["state"] != "open").then_some(view)
        }
    })
    .await
    .expect("the decision ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_with_decide_is_voted_on_and_its_decision_followed() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let ended = |id: u64| decision_ended(&client, &url, id);
    // Sim agents answer with the payload: five voters, each sure of "yes".
    let r = post(
        "/v1/tasks",
        json!({"payload": {"vote": "yes", "confidence": 0.9},
               "decide": {"voters": 5, "protocol": "confidence", "timeout": 10}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let started = json(r).await;
    let id = started["decision"].as_u64().unwrap();
    assert_eq!(started["location"], format!("/v1/decisions/{id}"));
    let agents: std::collections::HashSet<u64> = started["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["agent"].as_u64().unwrap())
        .collect();
    assert_eq!(agents.len(), 5, "five distinct voters: {started}");
    let decided = ended(id).await;
    assert_eq!(decided["state"], "decided", "{decided}");
    assert_eq!(decided["value"], "yes");
    assert_eq!(decided["options"]["protocol"], "confidence");
    // Decided as soon as the ballots still out could not change it.
    let counted = decided["outcome"]["record"]["ballots"]
        .as_array()
        .unwrap()
        .len();
    assert!((3..=5).contains(&counted), "{decided}");
    assert!(decided["ended-at-ms"].as_u64() >= decided["opened-at-ms"].as_u64());
    // The voters counted for the winner gained reputation; the others are at the prior.
    let winners: Vec<u64> = decided["outcome"]["winner"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let agents = json(
        client
            .get(format!("{url}/v1/agents?tier=worker&limit=100"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for agent in agents["agents"].as_array().unwrap() {
        let id = agent["id"].as_u64().unwrap();
        let score = agent["reputation"].as_f64().unwrap();
        let seen = agent["reputation-observations"].as_u64().unwrap();
        if winners.contains(&id) {
            assert!(score > 0.5 && seen >= 1, "{agent}");
        } else {
            assert_eq!((score, seen), (0.5, 0), "{agent}");
        }
    }

    // Under leader, the first voter proposes and the others review: a sim agent echoes its
    // payload, so each reviewer reads its copy of the proposal's vote, `yes`, as approval.
    let r = post(
        "/v1/tasks",
        json!({"payload": {"vote": "yes"}, "decide": {"voters": 3, "protocol": "leader"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let started = json(r).await;
    let leader = started["decision"].as_u64().unwrap();
    let nulls = started["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["task"].is_null())
        .count();
    assert_eq!(nulls, 2, "only the proposer is asked at first: {started}");
    let decided = ended(leader).await;
    assert_eq!(decided["state"], "decided", "{decided}");
    assert_eq!(decided["value"], "yes");
    let reviews = decided["outcome"]["record"]["ballots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["ballot"]["vote"] == "approve")
        .count();
    assert_eq!(reviews, 2, "{decided}");
    assert!(
        decided["voters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["task"].is_u64()),
        "each voter's latest task: {decided}"
    );

    // Without a confidence every ballot is refused: nobody counted, so no quorum, and the
    // decision says so rather than answer.
    let r = post(
        "/v1/tasks",
        json!({"payload": "plain", "decide": {"voters": 3, "protocol": "confidence"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let second = json(r).await["decision"].as_u64().unwrap();
    let failed = ended(second).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["reason"], "no-quorum");
    assert_eq!(failed["value"], Value::Null);
    assert!(
        failed["voters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["problem"].as_str().unwrap().contains("confidence")),
        "{failed}"
    );

    let list = json(
        client
            .get(format!("{url}/v1/decisions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ids: Vec<u64> = list["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [second, leader, id], "newest first");
    assert_eq!(list["decisions"][1]["value"], "yes");
    let page = json(
        client
            .get(format!("{url}/v1/decisions?limit=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["next-before"], second);

    // What cannot be run is refused, saying why, and nothing is accepted.
    let before = json(client.get(format!("{url}/v1/stats")).send().await.unwrap()).await;
    for (decide, code, says) in [
        (
            json!({"voters": 1, "protocol": "leader"}),
            "refused",
            "leader needs 2 or more",
        ),
        (
            json!({"voters": 3, "tie": "judge", "judge-timeout": 0}),
            "bad-decision",
            "decide.judge-timeout",
        ),
        (
            json!({"voters": 3, "protocol": "fast", "fast-quorum": 5}),
            "refused",
            "fast-quorum",
        ),
        (
            json!({"voters": 3, "protocol": "leader", "max-rounds": 1000}),
            "refused",
            "max-rounds 1000 is out of range",
        ),
        (json!({"voters": 0}), "refused", "0 voters"),
        (
            json!({"voters": 3, "spread": true}),
            "bad-decision",
            "this server runs one runtime",
        ),
        (json!({"voters": 50}), "refused", "workers can run the task"),
        (
            json!({"voters": 3, "timeout": -1}),
            "bad-decision",
            "decide.timeout",
        ),
        (
            json!({"voters": 3, "reputation": true}),
            "refused",
            "weights by reputation",
        ),
        (
            json!({"voters": 3, "weights": [1, 1]}),
            "bad-decision",
            "decide.weights",
        ),
        (
            json!({"voters": 3, "protocol": "weighted", "weights": [1], "role-weights": {"x": 2}}),
            "bad-decision",
            "give one",
        ),
        (
            json!({"voters": 3, "role-weights": {"x": 2}}),
            "bad-decision",
            "count only under the weighted and confidence protocols",
        ),
        (
            json!({"voters": 3, "protocol": "weighted", "role-weights": {"x": 5e7}}),
            "bad-decision",
            "role `x` weighs 50000000",
        ),
    ] {
        let r = post("/v1/tasks", json!({"payload": 1, "decide": decide}))
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{decide}");
        let body = json(r).await;
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    let r = post("/v1/tasks", json!({"payload": 1, "decide": {"voterz": 3}}))
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert!(
        json(r).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("voterz")
    );
    let r = post(
        "/v1/tasks/batch",
        json!({"tasks": [{"payload": 1, "decide": {"voters": 2}}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let after = json(client.get(format!("{url}/v1/stats")).send().await.unwrap()).await;
    assert_eq!(
        after["accepted"], before["accepted"],
        "nothing refused was accepted"
    );
    let none = client
        .get(format!("{url}/v1/decisions/9999"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    let bad = client
        .get(format!("{url}/v1/decisions/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    server.stop();
    runtime.shutdown().await;
}

/// In-process agents that answer inside their handler: every third says no, the rest yes.
struct Inline;

impl colony_agents::Agent for Inline {
    fn answers_inline(&self) -> bool {
        true
    }

    fn handle(&self, task: colony_agents::Task) -> colony_agents::Execution {
        let said: &'static [u8] = if task.agent.0.is_multiple_of(3) {
            b"no"
        } else {
            b"yes"
        };
        colony_agents::Execution::Done(Ok(bytes::Bytes::from_static(said)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_taken_inline_reads_over_http_as_it_was_decided() {
    let spec = colony_agents::AgentSpec::new("voter", "worker");
    let pool = colony_runtime::Pool::new(spec, 9, std::sync::Arc::new(Inline));
    let journal = std::sync::Arc::new(colony_journal::MemoryJournal::new());
    let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], journal)
        .await
        .unwrap();
    let (server, url) = serve(&runtime, local()).await;
    let vote = colony_runtime::decision::Vote::new(9, Default::default());
    let question = colony_core::task::TaskSpec::with_payload("which?");
    let voting = runtime.handle().decide(question, vote).await.unwrap();
    let decided = voting.outcome().await.unwrap();
    assert!(decided.inline);
    let id = decided.id.0;
    let get = |path: String| async move { json(reqwest::get(path).await.unwrap()).await };
    // Counted again from the journaled answers: the outcome the caller got.
    let view = get(format!("{url}/v1/decisions/{id}")).await;
    assert_eq!(view["state"], "decided");
    assert_eq!(view["value"], "yes");
    assert_eq!(view["inline"], true);
    assert_eq!(
        view["outcome"],
        serde_json::to_value(&decided.outcome).unwrap()
    );
    assert_eq!(
        view["voters"],
        serde_json::to_value(&decided.voters).unwrap()
    );
    assert!(
        view["voters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["task"].is_null())
    );
    let list = get(format!("{url}/v1/decisions")).await;
    assert_eq!(list["decisions"][0]["id"], id);
    assert_eq!(list["decisions"][0]["value"], "yes");
    // Its own task is the question, ended with the decided value.
    let task = get(format!("{url}/v1/tasks/{id}")).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    server.stop();
    runtime.shutdown().await;
}

/// A run's graph, live and after: each task's wave, needs, state, attempts and cost; its
/// result files and stderr logs served by name, nothing else; the dashboard's runs panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_shows_its_graph_live_and_serves_its_results_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    // An earlier server's run 1 left its folder: its files are never taken for a new run's.
    std::fs::create_dir_all(dir.path().join("1/logs")).unwrap();
    std::fs::write(dir.path().join("1/logs/measure.1.stderr"), "stale\n").unwrap();
    let (runtime, server, url, client) = with_runs(dir.path()).await;
    let workflow = r#"
name: graph
agents:
  - { name: planner, kind: sim, sim: { latency: 5ms } }
  - { name: slow, kind: sim, sim: { latency: 60s } }
  - name: tool
    kind: command
    command: { program: sh, args: ["-c", "echo oops >&2; echo '{\"cost_usd\": 0.5}'"] }
tasks:
  - { id: plan, agent: planner }
  - { id: measure, agent: tool, needs: [plan] }
  - { id: build, agent: slow, needs: [plan] }
  - { id: ship, agent: planner, needs: [build, measure] }
"#;
    let r = client
        .post(format!("{url}/v1/runs"))
        .header("content-type", "application/yaml")
        .body(workflow)
        .send()
        .await
        .unwrap();
    let id = json(r).await["id"].as_u64().unwrap();
    assert_eq!(id, 2, "the folder of run 1 is taken");
    let graph = || async {
        json(
            client
                .get(format!("{url}/v1/runs/{id}/graph"))
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    // Live: the slow task started, the one after it waiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let live = loop {
        let g = graph().await;
        if g["graph"][1]["state"] == "succeeded" && g["graph"][2]["state"] == "started" {
            break g;
        }
        assert!(tokio::time::Instant::now() < deadline, "{g}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node = |g: &Value, i: usize| g["graph"][i].clone();
    assert_eq!(node(&live, 0)["id"], "plan");
    assert_eq!(node(&live, 0)["wave"], 0);
    assert_eq!(node(&live, 3)["wave"], 2);
    assert_eq!(
        node(&live, 3)["needs"],
        serde_json::json!(["measure", "build"]),
        "in the file's order"
    );
    assert_eq!(node(&live, 3)["state"], "waiting");
    assert_eq!(node(&live, 1)["cost-usd"], 0.5);
    assert_eq!(node(&live, 1)["attempts"], 1);
    assert_eq!(live["cost-usd"], 0.5);
    assert_eq!(live["waves"], 3);
    // The first waves only, as a live view asks for them.
    let first = json(
        client
            .get(format!("{url}/v1/runs/{id}/graph?waves=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first["waves"], 3);
    assert_eq!(first["graph"].as_array().unwrap().len(), 1, "{first}");
    // The dashboard's panel: the run, its tasks' states and links to their files, once the
    // result writer has put them on disk.
    let panel = loop {
        let panel = client.get(format!("{url}/ui/runs")).send().await.unwrap();
        assert_eq!(panel.status(), 200);
        assert_eq!(panel.headers()["cache-control"], "no-store");
        let panel = panel.text().await.unwrap();
        if panel.contains("/results/measure") {
            break panel;
        }
        assert!(tokio::time::Instant::now() < deadline, "{panel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(panel.contains(&format!(r#"data-run="{id}""#)), "{panel}");
    assert!(
        panel.contains(r#"<span class="pill started">started</span>"#),
        "{panel}"
    );
    assert!(
        panel.contains(r#"<span class="pill waiting">waiting</span>"#),
        "{panel}"
    );
    assert!(
        panel.contains(&format!(
            r#"href="/v1/runs/{id}/results/measure">result</a>"#
        )),
        "{panel}"
    );
    assert!(
        panel.contains(&format!(
            r#"href="/v1/runs/{id}/logs/measure/1">stderr 1</a>"#
        )),
        "{panel}"
    );
    assert!(!panel.contains("/logs/plan/"), "no log, no link: {panel}");
    // The files, by name.
    let get = |path: String| client.get(format!("{url}{path}")).send();
    let result = get(format!("/v1/runs/{id}/results/measure")).await.unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()["content-type"], "application/json");
    let result = json(result).await;
    assert_eq!(result["output"]["cost_usd"], 0.5);
    let log = get(format!("/v1/runs/{id}/logs/measure/1")).await.unwrap();
    assert_eq!(log.status(), 200);
    assert_eq!(log.text().await.unwrap(), "oops\n");
    for (path, code) in [
        (format!("/v1/runs/{id}/logs/measure/2"), "no-such-attempt"),
        (format!("/v1/runs/{id}/logs/plan/1"), "no-log"),
        (format!("/v1/runs/{id}/results/ship"), "no-result"),
        (format!("/v1/runs/{id}/results/nope"), "no-such-task"),
        (format!("/v1/runs/{id}/results/..%2Fplan"), "no-such-task"),
    ] {
        let r = get(path.clone()).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(json(r).await["error"]["code"], code, "{path}");
    }
    client
        .post(format!("{url}/v1/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let run = ended(&client, &url, id).await;
    assert_eq!(run["graph"][2]["state"], "cancelled", "{run}");
    assert_eq!(run["graph"][3]["state"], "cancelled", "{run}");
    server.stop();
    runtime.shutdown().await;
}

/// `/readyz` answers ready while the runtime takes work, and 503 `not-ready` once it has
/// stopped, while `/healthz` (the process is alive) still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_runtime_and_liveness_the_process() {
    let (runtime, server, url) = start().await;
    let client = reqwest::Client::new();
    let r = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await, json!({"ready": true}));
    runtime.shutdown().await;
    let r = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = json(r).await;
    assert_eq!(body["error"]["code"], "not-ready", "{body}");
    let r = client.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

/// In-process agents that always say `word`, inside their handler.
struct Says(&'static [u8]);

impl colony_agents::Agent for Says {
    fn answers_inline(&self) -> bool {
        true
    }

    fn handle(&self, _task: colony_agents::Task) -> colony_agents::Execution {
        colony_agents::Execution::Done(Ok(bytes::Bytes::from_static(self.0)))
    }
}

/// `decide.role-weights` weighs each pool of a role: three voters of role `wa` say `x`, two
/// of role `wb` say `y`; each weighing 1, `x` wins; with `wb` at 2, `y` does (4 against 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_weighs_its_voters_by_role() {
    let pool = |role: &str, n: u32, word: &'static [u8]| {
        colony_runtime::Pool::new(
            colony_agents::AgentSpec::new("says", role),
            n,
            std::sync::Arc::new(Says(word)),
        )
    };
    let journal = std::sync::Arc::new(colony_journal::MemoryJournal::new());
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool("wa", 3, b"x"), pool("wb", 2, b"y")],
        journal,
    )
    .await
    .unwrap();
    let (server, url) = serve(&runtime, local()).await;
    let client = reqwest::Client::new();
    for (weights, wins) in [(json!({}), "x"), (json!({"wb": 2}), "y")] {
        let r = client
            .post(format!("{url}/v1/tasks"))
            .json(&json!({"payload": 1, "decide": {
                "voters": 5, "protocol": "weighted", "role-weights": weights}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = json(r).await["decision"].as_u64().unwrap();
        let decided = decision_ended(&client, &url, id).await;
        assert_eq!(decided["state"], "decided", "{decided}");
        assert_eq!(decided["value"], wins, "{decided}");
    }
    server.stop();
    runtime.shutdown().await;
}
