//! `colony top` against a real `colony serve` subprocess.

mod common;

use common::{COLONY, Server};
use serde_json::{Value, json};
use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

/// Runs `colony top` with `args`, with no COLONY_* settings from the environment.
fn top(args: &[&str]) -> Output {
    Command::new(COLONY)
        .arg("top")
        .args(args)
        .env_remove("COLONY_SERVER")
        .env_remove("COLONY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn top_once_shows_the_counters_tiers_and_pools_of_a_running_server() {
    let server = Server::start(&["--agents", "200"]);
    let tasks: Vec<Value> = (0..300).map(|i| json!({ "payload": i })).collect();
    server.submit_batch(tasks);
    server.wait_until(Duration::from_secs(60), "the batch to finish", || {
        let stats = server.get("/v1/stats", None);
        stats["succeeded"].as_u64().unwrap()
            + stats["failed"].as_u64().unwrap()
            + stats["dead_lettered"].as_u64().unwrap()
            == 300
    });
    // A resize, once a sample has seen it, shows in the pools panel with its decision.
    let (status, body) = server
        .request(
            reqwest::Method::PUT,
            "/v1/pools/0",
            None,
            Some(json!({ "agents": 150 })),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    server.wait_until(Duration::from_secs(10), "a sample of 150 agents", || {
        let history = server.get("/v1/pools/history", None);
        history["pools"][0]["agents"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_u64)
            == Some(150)
    });
    // A decision by vote: its panel sits beside the failures.
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/v1/tasks",
            None,
            Some(json!({ "payload": "yes", "decide": { "voters": 3 } })),
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let decision = body["decision"].as_u64().unwrap();
    server.wait_until(Duration::from_secs(10), "the decision to end", || {
        server.get(&format!("/v1/decisions/{decision}"), None)["state"] == "decided"
    });
    let succeeded = server.get("/v1/stats", None)["succeeded"].as_u64().unwrap();
    let tiers = server.get("/v1/hierarchy", None)["tiers"].clone();

    let out = top(&["--once", "--server", &server.url]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 30, "one 100x30 frame:\n{stdout}");
    let header = stdout.lines().next().unwrap();
    assert!(header.contains(&server.url), "{header}");
    assert!(
        stdout.contains(&format!("succeeded {succeeded} ")),
        "succeeded {succeeded}:\n{stdout}"
    );
    let pool = stdout
        .lines()
        .find(|l| l.contains("│ sim/worker "))
        .unwrap_or_else(|| panic!("no pools panel:\n{stdout}"));
    assert!(pool.contains("agents 150  desired -"), "{pool}");
    assert!(pool.contains("resized by hand 200 → 150"), "{pool}");
    assert!(
        stdout.contains("┌ Pools: agents over the last "),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("Latest failed") && l.contains("Latest decisions by vote")),
        "{stdout}"
    );
    for tier in tiers.as_array().unwrap() {
        let name = tier["name"].as_str().unwrap();
        let agents = tier["agents"].as_u64().unwrap().to_string();
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("│ {name} ")) && l.contains(&agents)),
            "tier {name} with {agents} agents:\n{stdout}"
        );
    }
}

#[test]
fn top_names_the_url_it_cannot_reach() {
    let out = top(&["--once", "--server", "http://127.0.0.1:1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A server that answers every request with a body that never ends: `colony top` reads
/// up to its bound and says so, rather than filling its memory.
#[test]
fn top_refuses_an_answer_past_its_bound() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    use colony_agents::spawner::Spawner;
    let _ = Spawner::spawn_thread("endless-server", move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = Spawner::spawn_thread("endless-answer", move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n");
                let chunk = vec![b' '; 1 << 20];
                while stream.write_all(&chunk).is_ok() {}
            });
        }
    });
    let out = top(&["--once", "--server", &format!("http://127.0.0.1:{port}")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("answered more than 16777216 bytes"),
        "{stderr}"
    );
}

#[test]
fn top_passes_the_token_and_says_when_one_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let token = create_token(&tokens);
    let server = Server::start(&["--agents", "200", "--tokens", tokens.to_str().unwrap()]);

    let out = top(&["--once", "--server", &server.url]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&server.url), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("--token"), "{stderr}");

    let out = Command::new(COLONY)
        .args(["top", "--once", "--server", &server.url])
        .env_remove("COLONY_SERVER")
        .env("COLONY_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("succeeded 0 "));
}

fn create_token(tokens: &Path) -> String {
    let out = Command::new(COLONY)
        .args(["token", "create", "--name", "top", "--scope", "read"])
        .arg("--tokens")
        .arg(tokens)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}
