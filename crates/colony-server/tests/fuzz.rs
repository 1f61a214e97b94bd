//! Arbitrary requests (methods, paths, headers, bodies) sent as raw bytes to a real server on
//! loopback: no panic, no 5xx, every error a 4xx with a JSON body, and a good request still
//! answered afterwards. The case count is modest, so that it runs in seconds; set
//! `PROPTEST_CASES` for a longer run.

use colony_agents::sim::SimOptions;
use colony_runtime::RuntimeOptions;
use colony_server::{
    Config, Scope, Tokens,
    testing::{local, serve, sim_runtime},
};
use proptest::prelude::*;
use serde_json::Value;
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One request, as parts the strategy picks.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Paths the server serves, pieces of them, and arbitrary bytes.
fn path() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "/",
        "/healthz",
        "/openapi.json",
        "/login",
        "/logout",
        "/metrics",
        "/v1/tasks",
        "/v1/tasks/batch",
        "/v1/tasks/1",
        "/v1/tasks/1/cancel",
        "/v1/hierarchy",
        "/v1/agents",
        "/v1/agents/0",
        "/v1/pools",
        "/v1/pools/history?since=0",
        "/v1/runs",
        "/v1/runs/1",
        "/v1/stats",
        "/ui/stats",
        "/ui/tasks",
        "/ui/agents/0",
        "/ui/failures",
        "/assets/htmx.min.js",
    ]);
    prop_oneof![
        known.clone().prop_map(str::to_owned),
        (known, "[ -~]{0,40}").prop_map(|(p, tail)| format!("{p}{tail}")),
        "/[ -~]{0,200}",
        "/(%[0-9A-Fa-f]{2}|[a-z/?=&]){0,40}",
        prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| format!("/{}", String::from_utf8_lossy(&b))),
    ]
}

fn header() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "content-type",
            "authorization",
            "cookie",
            "idempotency-key",
            "origin",
            "sec-fetch-site",
            "accept",
            "transfer-encoding",
            "expect",
            "range",
        ])
        .prop_map(str::to_owned),
        "[!-~&&[^:]]{1,30}",
        "[ -~]{0,20}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/yaml",
            "application/x-www-form-urlencoded",
            "Bearer colony_x",
            "chunked",
            "100-continue",
            "null",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,100}",
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    (name, value)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = prop_oneof![
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just(r#"{"payload": 1}"#.to_owned()),
        Just(r#"{"tasks": [{}]}"#.to_owned()),
        Just(r#"{"agents": -1}"#.to_owned()),
        Just(r#"{"priority": 300, "timeout": 1e309}"#.to_owned()),
        "[ -~]{0,200}",
    ];
    prop_oneof![
        json.prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..400),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
        ])
        .prop_map(str::to_owned),
        "[A-Z]{1,10}",
        "[ -~]{0,10}",
    ];
    (
        method,
        path(),
        prop::collection::vec(header(), 0..6),
        body(),
    )
        .prop_map(|(method, path, headers, body)| Request {
            method,
            path,
            headers,
            body,
        })
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            self.method, self.path
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        // One answer per connection, and a body the server can tell the end of.
        out.push_str(&format!(
            "Connection: close\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// What the server said: the status and, for an error, its body; `None` if it closed the
/// connection without a word (allowed only after a refusal it could not phrase, never seen
/// so far, and reported as a failure here).
async fn send(addr: SocketAddr, request: &Request) -> Result<(u16, String, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // The server may answer and close before taking the whole request.
    let _ = stream.write_all(&request.bytes()).await;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no status line: {head:?}"))?;
            // Success answers may stream (the event stream): their bodies are not needed.
            if status < 400 || request.method == "HEAD" {
                return Ok((status, head, Vec::new()));
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| format!("an error without content-length: {head:?}"))?;
            if bytes.len() >= end + 4 + length {
                return Ok((status, head, bytes[end + 4..end + 4 + length].to_vec()));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                return Err(format!(
                    "closed after {:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&bytes))),
            Err(_) => return Err("no answer within 10 s".into()),
        }
    }
}

#[test]
fn arbitrary_requests_get_an_answer_or_a_json_4xx_and_the_server_goes_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One server open to loopback, and one that asks for tokens, with a rate limit.
    let (runtime, server, guarded, token) = rt.block_on(async {
        let runtime = sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
        let (server, _) = serve(&runtime, local()).await;
        let path = dir.path().join("tokens");
        let token = Tokens::create(&path, "ci", Scope::Submit).unwrap();
        let config = Config {
            tokens: Some(Tokens::load(&path).unwrap()),
            rate_limit: Some(1_000.try_into().unwrap()),
            ..local()
        };
        let (guarded, _) = serve(&runtime, config).await;
        (runtime, server, guarded, token)
    });
    let addrs = [server.addr, guarded.addr];
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // Half the requests to the guarded server carry its real token, so that what lies
    // behind authentication is fuzzed too, not only the refusal of junk tokens.
    let outcome = runner.run(
        &(request(), 0..2usize, any::<bool>()),
        |(mut request, which, known)| {
            if which == 1 && known {
                request
                    .headers
                    .retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
                request
                    .headers
                    .push(("authorization".into(), format!("Bearer {token}")));
            }
            let answer = rt.block_on(send(addrs[which], &request));
            let (status, head, body) = answer.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(status < 500, "{status} for {request:?}: {head}");
            if status >= 400 && request.method != "HEAD" {
                let json: Value = serde_json::from_slice(&body).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{status} not JSON ({e}) for {request:?}: {head} {:?}",
                        String::from_utf8_lossy(&body)
                    ))
                })?;
                prop_assert!(
                    json["error"]["code"].is_string() && json["error"]["message"].is_string(),
                    "{status} {json} for {request:?}"
                );
            }
            Ok(())
        },
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/tasks", server.url()))
            .header("content-type", "application/json")
            .body(r#"{"payload": "still here"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        server.stop();
        guarded.stop();
        runtime.shutdown().await;
    });
}
