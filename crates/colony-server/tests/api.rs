//! The HTTP API against a real runtime, over real HTTP on loopback.

use colony_agents::{
    AgentSpec,
    sim::{Sim, SimOptions},
};
use colony_journal::MemoryJournal;
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

/// A response's body as JSON (`null` when it is not).
async fn json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

async fn start() -> (Runtime, colony_server::Server, String) {
    colony_server::install_metrics();
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        20,
        Arc::new(Sim::new(SimOptions::default()).unwrap()),
    );
    let runtime = Runtime::start(
        RuntimeOptions::default(),
        vec![pool],
        Arc::new(MemoryJournal::new()),
    )
    .await
    .unwrap();
    let server = colony_server::serve(
        runtime.handle().clone(),
        colony_server::Config::local("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.addr);
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
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
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
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: snapshot"), "{seen}");
    assert!(seen.contains("\"succeeded\":100"), "{seen}");
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
        "/healthz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    server.stop();
    runtime.shutdown().await;
}
