//! `/v1/memory` over a real server on loopback and a real SQLite file: documents stored,
//! read, found, deleted; bad input refused with its reason and nothing stored; scopes; and
//! a server without a memory says so.

use colony_agents::sim::SimOptions;
use colony_memory::{Memory, SqliteMemory};
use colony_runtime::RuntimeOptions;
use colony_server::{Config, Scope, Tokens, testing};
use serde_json::{Value, json};
use std::sync::Arc;

async fn json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

/// A request with `body` as its JSON.
fn with_json(r: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    r.header("content-type", "application/json")
        .body(body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_stored_found_and_deleted_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(SqliteMemory::open(&dir.path().join("memory.db")).unwrap());
    let runtime = testing::sim_runtime(4, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        memory: Some(memory.clone()),
        ..testing::local()
    };
    let (server, url) = testing::serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let post =
        |path: &str, body: Value| with_json(client.post(format!("{url}{path}")), &body).send();

    let documents = json!([
        {"id": "a", "text": "agents vote on the plan", "metadata": {"kind": "note"}, "embedding": [1.0, 0.0]},
        {"id": "b", "text": "the queue holds tasks", "metadata": {"kind": "plan"}, "embedding": [0.0, 1.0]},
        {"id": "c", "text": "agents steal work", "metadata": {"kind": "note"}, "embedding": [0.7, 0.7]}
    ]);
    let (status, body) = json(
        post(
            "/v1/memory/documents",
            json!({"namespace": "team/a", "documents": documents}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"stored": 3})));

    // Read back, by id.
    let (status, body) = json(
        client
            .get(format!("{url}/v1/memory/documents?namespace=team/a&id=b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["text"], "the queue holds tasks");
    assert_eq!(body["embedding"], json!([0.0, 1.0]));

    // Found by text with a filter, and by vector.
    let (status, body) = json(
        post(
            "/v1/memory/search",
            json!({"namespace": "team/a", "query": {"text": "agents", "filter": {"kind": "note"}, "k": 5}}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"a") && ids.contains(&"c"), "{ids:?}");
    let (status, body) = json(
        post(
            "/v1/memory/search",
            json!({"namespace": "team/a", "query": {"vector": [0.0, 2.0], "k": 1}}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["hits"][0]["id"], "b");

    // Bad input: refused with what is wrong, nothing stored.
    let bad = json!({"namespace": "team/a", "documents": [
        {"id": "d", "text": "fine", "embedding": [1.0, 0.0]},
        {"id": "e", "text": "wrong dimension", "embedding": [1.0, 0.0, 0.0]}
    ]});
    let (status, body) = json(post("/v1/memory/documents", bad).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "refused");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimensions"),
        "{body}"
    );
    assert_eq!(
        memory
            .stats(&colony_memory::Namespace::parse("team/a").unwrap())
            .unwrap()
            .documents,
        3
    );
    for (path, request, status, code) in [
        (
            "/v1/memory/search",
            json!({"namespace": "team/a", "query": {"text": "x", "k": 0}}),
            400,
            "refused",
        ),
        (
            "/v1/memory/search",
            json!({"namespace": "nobody", "query": {"text": "x", "k": 1}}),
            404,
            "no-such-namespace",
        ),
        (
            "/v1/memory/documents",
            json!({"namespace": "../etc", "documents": []}),
            400,
            "refused",
        ),
        (
            "/v1/memory/documents",
            json!({"namespace": "team/a", "documents": [], "extra": 1}),
            422,
            "bad-body",
        ),
    ] {
        let (got, body) = json(post(path, request.clone()).await.unwrap()).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{request}: {body}"
        );
    }

    // Deleted: gone.
    let (status, body) = json(
        post(
            "/v1/memory/delete",
            json!({"namespace": "team/a", "ids": ["b", "zz"]}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"deleted": 1})));
    let (status, body) = json(
        client
            .get(format!("{url}/v1/memory/documents?namespace=team/a&id=b"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no-such-document"))
    );

    // The list, its cache, an index built on demand, and the metrics.
    let (status, body) = json(
        post("/v1/memory/rebuild", json!({"namespace": "team/a"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["points"], 2);
    let (status, body) = json(client.get(format!("{url}/v1/memory")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["namespaces"][0]["name"], "team/a");
    assert_eq!(body["namespaces"][0]["documents"], 2);
    assert_eq!(body["namespaces"][0]["indexed"], 2);
    assert!(body["cache"]["misses"].as_u64().unwrap() >= 2, "{body}");
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("colony_memory_searches_total{mode=\"text\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("colony_memory_documents_stored_total"));
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_routes_ask_for_their_scope_and_a_server_without_one_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let read = Tokens::create(&path, "dash", Scope::Read).unwrap();
    let submit = Tokens::create(&path, "ci", Scope::Submit).unwrap();
    let memory = Arc::new(SqliteMemory::open(&dir.path().join("memory.db")).unwrap());
    let runtime = testing::sim_runtime(2, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        tokens: Some(Tokens::load(&path).unwrap()),
        memory: Some(memory),
        ..testing::local()
    };
    let (server, url) = testing::serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let put = json!({"namespace": "shared", "documents": [{"id": "a", "text": "x"}]});
    let r = with_json(
        client
            .post(format!("{url}/v1/memory/documents"))
            .bearer_auth(&read),
        &put,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a read token cannot store");
    let r = with_json(
        client
            .post(format!("{url}/v1/memory/documents"))
            .bearer_auth(&submit),
        &put,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = with_json(
        client
            .post(format!("{url}/v1/memory/rebuild"))
            .bearer_auth(&submit),
        &json!({"namespace": "shared"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403, "rebuilding is an admin's");
    let r = with_json(
        client
            .post(format!("{url}/v1/memory/search"))
            .bearer_auth(&read),
        &json!({"namespace": "shared", "query": {"text": "x", "k": 1}}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200, "searching is a read");
    server.stop();

    let (server, url) = testing::serve(&runtime, testing::local()).await;
    let (status, body) = json(reqwest::get(format!("{url}/v1/memory")).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("memory-off"))
    );
    server.stop();
    runtime.shutdown().await;
}
