//! `/v1/messages` over a real server on loopback: a message sent to a topic reaches its
//! subscribers from `http`, bad sends are refused with nothing sent, the counts and topics
//! are listed, scopes hold, and the dashboard's panel shows them.

use bytes::Bytes;
use colony_agents::sim::SimOptions;
use colony_core::mailbox::Endpoint;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_sent_counted_and_shown_over_http() {
    let runtime = testing::sim_runtime(4, SimOptions::default(), RuntimeOptions::default()).await;
    let bus = runtime.handle().messages().clone();
    let reader = Endpoint::Named(Arc::from("watcher"));
    let mut inbox = bus.open(reader.clone()).unwrap();
    bus.subscribe("plans/new", reader.clone()).unwrap();
    let (server, url) = testing::serve(&runtime, testing::local()).await;
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(format!("{url}/v1/messages"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };

    let (status, body) = json(
        post(json!({"to": {"topic": "plans/new"}, "body": "ship it"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    let got = inbox.try_recv().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, Bytes::from_static(b"ship it"));
    // From `http`, whatever the caller would like to be.
    assert_eq!(got[0].from, Endpoint::Named(Arc::from("http")));
    let (status, body) = json(
        post(json!({"to": {"mailbox": "watcher"}, "body": "direct"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));

    // Refused, each with its reason, nothing sent.
    for (to, status, code) in [
        (json!({"agent": 999_999}), 404, "no-mailbox"),
        (json!({"mailbox": "nobody"}), 404, "no-mailbox"),
        (json!({"mailbox": "../etc"}), 400, "bad-mailbox"),
        (json!({"topic": "a//b"}), 400, "bad-topic"),
    ] {
        let (s, body) = json(post(json!({"to": to, "body": "x"})).await.unwrap()).await;
        assert_eq!(
            (s, body["error"]["code"].as_str().unwrap()),
            (status, code),
            "{to}"
        );
    }
    let (s, body) = json(
        post(json!({"to": {"team": 1}, "from": "agent-1", "body": "x"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    let (s, _) = json(
        post(json!({"to": {"topic": "t", "team": 1}, "body": "x"}))
            .await
            .unwrap(),
    )
    .await;
    // Two addresses at once: refused as a bad body (serde reads it as malformed).
    assert!(s == 400 || s == 422, "{s}");
    let big = "x".repeat(colony_runtime::messages::DEFAULT_MAX_BODY + 1);
    let (s, body) = json(
        post(json!({"to": {"topic": "plans/new"}, "body": big}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str().unwrap()),
        (413, "too-large")
    );
    assert_eq!(inbox.try_recv().unwrap().len(), 1);

    let (status, body) = json(
        client
            .get(format!("{url}/v1/messages"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["sent"], 2);
    assert_eq!(body["topics"], 1);
    assert_eq!(
        body["listed"],
        json!([{"name": "plans/new", "subscribers": 1}])
    );

    let panel = client
        .get(format!("{url}/ui/messages"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(panel.contains("2 sent"), "{panel}");
    assert!(
        panel.contains("<td>plans/new</td><td class=\"num\">1</td>"),
        "{panel}"
    );
    let page = client
        .get(format!("{url}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"hx-get="/ui/messages""#));
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_needs_the_submit_scope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let reader = Tokens::create(&path, "dash", Scope::Read).unwrap();
    let sender = Tokens::create(&path, "ci", Scope::Submit).unwrap();
    let runtime = testing::sim_runtime(2, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        tokens: Some(Tokens::load(&path).unwrap()),
        ..testing::local()
    };
    let (server, url) = testing::serve(&runtime, config).await;
    let client = reqwest::Client::new();
    let send = |token: &str| {
        client
            .post(format!("{url}/v1/messages"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(json!({"to": {"topic": "t"}, "body": "x"}).to_string())
            .send()
    };
    assert_eq!(send(&reader).await.unwrap().status(), 403);
    assert_eq!(send(&sender).await.unwrap().status(), 200);
    let listed = client
        .get(format!("{url}/v1/messages"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_mailbox_is_read_over_http_in_acknowledged_batches_and_loses_nothing() {
    let runtime = testing::sim_runtime(2, SimOptions::default(), RuntimeOptions::default()).await;
    let bus = runtime.handle().messages().clone();
    let ops = Endpoint::Named(Arc::from("ops"));
    let mut returns = bus.open(ops.clone()).unwrap();
    let (server, url) = testing::serve(&runtime, testing::local()).await;
    let client = reqwest::Client::new();
    let call = |path: &str, body: Value| {
        client
            .post(format!("{url}/v1/messages/{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let send = |body: &'static str| {
        let bus = bus.clone();
        let ops = ops.clone();
        async move {
            bus.send(
                ops,
                colony_core::mailbox::Address::To(Endpoint::Named(Arc::from("desk"))),
                Bytes::from(body),
            )
            .await
            .unwrap()
        }
    };

    // The first read opens it: nothing waits yet.
    let (s, body) = json(call("read", json!({"mailbox": "desk"})).await.unwrap()).await;
    assert_eq!((s, body), (200, json!({"batch": null, "messages": []})));
    let (s, _) = json(
        call("subscribe", json!({"mailbox": "desk", "topic": "news"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let on_news = bus
        .send(
            ops.clone(),
            colony_core::mailbox::Address::Topic("news".into()),
            Bytes::from("one"),
        )
        .await
        .unwrap();
    assert_eq!(on_news.delivered, 1);
    let (s, _) = json(
        client
            .post(format!("{url}/v1/messages"))
            .header("content-type", "application/json")
            .body(json!({"to": {"mailbox": "desk"}, "body": "two"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);

    // A batch of one, read again by the next read while it is not acknowledged.
    let read_one = || call("read", json!({"mailbox": "desk", "max": 1}));
    let (s, first) = json(read_one().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(
        first,
        json!({"batch": 1, "messages": [
            {"from": {"mailbox": "ops"}, "to": {"topic": "news"}, "body": "one"}
        ]})
    );
    let (_, again) = json(read_one().await.unwrap()).await;
    assert_eq!(again["batch"], 2);
    assert_eq!(again["messages"], first["messages"]);
    assert_eq!(bus.stats().redelivered, 1);
    // Only the batch outstanding is acknowledged, once.
    let ack = |batch: u64| call("ack", json!({"mailbox": "desk", "batch": batch}));
    let (s, body) = json(ack(1).await.unwrap()).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("stale-batch"))
    );
    let (s, body) = json(ack(2).await.unwrap()).await;
    assert_eq!((s, body), (200, json!({"acknowledged": 1})));
    let (s, _) = json(ack(2).await.unwrap()).await;
    assert_eq!(s, 409);
    let (_, next) = json(read_one().await.unwrap()).await;
    assert_eq!(next["batch"], 3);
    assert_eq!(
        next["messages"],
        json!([{"from": {"mailbox": "http"}, "to": {"mailbox": "desk"}, "body": "two"}])
    );
    assert_eq!(json(ack(3).await.unwrap()).await.0, 200);

    // A read that waits is answered by the message sent while it waits; meanwhile, another
    // read of the mailbox is refused, and so is an acknowledgement (it gave its batch back).
    let waiting = call("read", json!({"mailbox": "desk", "wait-ms": 20_000}));
    let (reply, ()) = tokio::join!(waiting, async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (s, body) = json(read_one().await.unwrap()).await;
        assert_eq!((s, body["error"]["code"].as_str()), (409, Some("busy")));
        let (s, body) = json(ack(3).await.unwrap()).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (409, Some("stale-batch"))
        );
        send("three").await;
    });
    let (_, body) = json(reply.unwrap()).await;
    assert_eq!(body["messages"][0]["body"], "three");
    let batch = body["batch"].as_u64().unwrap();
    assert_eq!(json(ack(batch).await.unwrap()).await.0, 200);
    let (_, body) = json(
        call("read", json!({"mailbox": "desk", "wait-ms": 50}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, json!({"batch": null, "messages": []}));

    // Unsubscribed, the topic reaches nobody.
    let (s, _) = json(
        call("unsubscribe", json!({"mailbox": "desk", "topic": "news"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(bus.topics().is_empty());

    // Another reader takes the mailbox over while a batch is out: acknowledging that batch
    // is refused (the other reader has it), and so is the next read; the one after takes
    // the mailbox back, the unacknowledged batch first.
    send("four").await;
    let (_, out) = json(read_one().await.unwrap()).await;
    let out = out["batch"].as_u64().unwrap();
    let mut other = bus.open(Endpoint::Named(Arc::from("desk"))).unwrap();
    assert_eq!(other.try_recv().unwrap().len(), 1);
    let (s, body) = json(ack(out).await.unwrap()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("fenced")));
    send("five").await;
    let (s, body) = json(read_one().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(body["messages"][0]["body"], "four");
    // The fenced-out reader's acknowledgement counts for nothing.
    assert!(other.try_recv().is_err());
    let mut other = bus.open(Endpoint::Named(Arc::from("desk"))).unwrap();
    let (s, body) = json(read_one().await.unwrap()).await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("fenced")));
    drop(other.try_recv());
    let (s, body) = json(read_one().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(body["messages"][0]["body"], "four");

    // Closed: what it held goes back to its sender, and nothing more can be sent to it.
    let (s, body) = json(call("close", json!({"mailbox": "desk"})).await.unwrap()).await;
    assert_eq!((s, body), (200, json!({"returned": 2})));
    let back = returns.try_recv().unwrap();
    let bodies: Vec<&[u8]> = back.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [b"four", b"five"]);
    assert_eq!(
        back[0].returned.as_ref().unwrap().by,
        Endpoint::Named(Arc::from("desk"))
    );
    let e = bus
        .send(
            ops.clone(),
            colony_core::mailbox::Address::To(Endpoint::Named(Arc::from("desk"))),
            Bytes::from("five"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, colony_runtime::messages::Error::NotOpen(_)));

    // Bad requests name their problem.
    for (body, code) in [
        (json!({"mailbox": "desk", "max": 0}), "bad-max"),
        (json!({"mailbox": "desk", "max": 100_000}), "bad-max"),
        (json!({"mailbox": "desk", "wait-ms": 60_000}), "bad-wait"),
        (json!({"mailbox": "../desk"}), "bad-mailbox"),
        (json!({"mailbox": "desk", "from": "agent-1"}), "bad-body"),
    ] {
        let (s, got) = json(call("read", body.clone()).await.unwrap()).await;
        assert!(s == 400 || s == 422, "{body}: {s}");
        assert_eq!(got["error"]["code"], code, "{body}");
    }
    let (s, got) = json(
        call("subscribe", json!({"mailbox": "desk", "topic": "a//b"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, got["error"]["code"].as_str()), (400, Some("bad-topic")));
    server.stop();
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_mailbox_needs_the_submit_scope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let reader = Tokens::create(&path, "dash", Scope::Read).unwrap();
    let sender = Tokens::create(&path, "ci", Scope::Submit).unwrap();
    let runtime = testing::sim_runtime(2, SimOptions::default(), RuntimeOptions::default()).await;
    let config = Config {
        tokens: Some(Tokens::load(&path).unwrap()),
        ..testing::local()
    };
    let (server, url) = testing::serve(&runtime, config).await;
    let client = reqwest::Client::new();
    for path in ["read", "ack", "subscribe", "unsubscribe", "close"] {
        let call = |token: &str| {
            client
                .post(format!("{url}/v1/messages/{path}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(json!({"mailbox": "desk", "topic": "t", "batch": 1}).to_string())
                .send()
        };
        assert_eq!(call(&reader).await.unwrap().status(), 403, "{path}");
    }
    let read = client
        .post(format!("{url}/v1/messages/read"))
        .bearer_auth(&sender)
        .header("content-type", "application/json")
        .body(json!({"mailbox": "desk"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    server.stop();
    runtime.shutdown().await;
}
