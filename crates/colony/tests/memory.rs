//! `colony memory` as a user runs it: a real SQLite file, documents put one by one and from
//! a JSON-lines file, found by words and by lexical nearness, deleted; bad input refused
//! with exit 2, naming what is wrong and where, and nothing created or stored by it.

use serde_json::Value;

mod common;
use common::colony;

#[test]
fn documents_are_put_found_and_deleted_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let db = db.to_str().unwrap();
    for (id, text, kind) in [
        (
            "restart",
            "restart the failed agent after it crashed",
            "ops",
        ),
        ("tax", "quarterly tax figures", "finance"),
        ("report", "the agent wrote its report", "ops"),
    ] {
        let meta = format!("kind={kind}");
        let (out, err, code) = colony(&[
            "memory", "put", "--db", db, "-n", "team/a", id, text, "--meta", &meta, "--embed",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("stored 1 documents in team/a"), "{out}");
    }
    let lines = dir.path().join("more.jsonl");
    std::fs::write(
        &lines,
        "{\"id\":\"j1\",\"text\":\"agent notes\",\"metadata\":{\"kind\":\"ops\"}}\n\n{\"id\":\"j2\",\"text\":\"tax notes\"}\n",
    )
    .unwrap();
    let (out, err, code) = colony(&[
        "memory",
        "put",
        "--db",
        db,
        "-n",
        "team/a",
        "--jsonl",
        lines.to_str().unwrap(),
        "--embed",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored 2 documents"), "{out}");

    let search = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["memory", "search", "--db", db, "-n", "team/a", "--json"];
        args.extend(extra);
        let (out, err, code) = colony(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    };
    let ids = |hits: &[Value]| -> Vec<String> {
        hits.iter()
            .map(|h| h["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let by_words = search(&["--text", "restart agent"]);
    assert_eq!(ids(&by_words)[0], "restart");
    assert!(!ids(&by_words).contains(&"tax".to_owned()));
    let ops = search(&["--text", "agent", "--where", "kind=ops"]);
    assert_eq!(ops.len(), 3, "{ops:?}");
    let near = search(&["--near", "the agents restarted", "-k", "1"]);
    assert_eq!(ids(&near), ["restart"]);
    let both = search(&[
        "--text",
        "quarterly tax",
        "--near",
        "tax figures",
        "-k",
        "2",
    ]);
    assert_eq!(ids(&both)[0], "tax");

    let (out, _, code) = colony(&["memory", "get", "--db", db, "-n", "team/a", "report"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["metadata"]["kind"], "ops");
    assert_eq!(doc["embedding"].as_array().unwrap().len(), 384);

    let (out, _, code) = colony(&[
        "memory", "delete", "--db", db, "-n", "team/a", "report", "nope",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 1 of 2"), "{out}");
    let (out, _, code) = colony(&["memory", "stats", "--db", db, "--json"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["namespace"], "team/a");
    assert_eq!(stats[0]["documents"], 4);
    assert_eq!(stats[0]["dimension"], 384);
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let db = db.to_str().unwrap();
    // Reading a memory that does not exist creates nothing.
    let (_, err, code) = colony(&["memory", "search", "--db", db, "--text", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("no such memory file"), "{err}");
    assert!(!std::path::Path::new(db).exists());
    let (_, _, code) = colony(&["memory", "put", "--db", db, "a", "first", "--embed"]);
    assert_eq!(code, 0);
    for (args, says) in [
        (
            vec!["memory", "put", "--db", db, "-n", "../up", "a", "x"],
            "namespace",
        ),
        (
            vec!["memory", "put", "--db", db, "b", "x", "--meta", "a b=1"],
            "metadata key \"a b\"",
        ),
        (
            vec![
                "memory",
                "put",
                "--db",
                db,
                "c",
                "x",
                "--embed",
                "--dimension",
                "8",
            ],
            "holds 384",
        ),
        (
            vec![
                "memory", "search", "--db", db, "-n", "nowhere", "--text", "x",
            ],
            "no namespace nowhere",
        ),
        (
            vec!["memory", "search", "--db", db, "--text", "   "],
            "no word",
        ),
        (
            vec!["memory", "put", "--db", "/dev/null", "a", "x"],
            "not a regular file",
        ),
        (
            vec!["memory", "stats", "--db", "/tmp"],
            "not a regular file",
        ),
        (
            vec![
                "memory",
                "search",
                "--db",
                db,
                "--near",
                "x",
                "--dimension",
                "8",
            ],
            "holds 384",
        ),
    ] {
        let (_, err, code) = colony(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A SQLite file that is not a memory (a journal) is refused, and left as it was.
    let journal = dir.path().join("journal.db");
    drop(
        colony_journal::SqliteJournal::open(colony_journal::SqliteOptions::new(&journal)).unwrap(),
    );
    let before = std::fs::read(&journal).unwrap();
    for command in ["stats", "search"] {
        let mut args = vec!["memory", command, "--db", journal.to_str().unwrap()];
        if command == "search" {
            args.extend(["--text", "x"]);
        }
        let (_, err, code) = colony(&args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("not a colony memory file"), "{err}");
    }
    assert_eq!(std::fs::read(&journal).unwrap(), before);
    let (_, err, code) = colony(&["memory", "put", "--db", journal.to_str().unwrap(), "a", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a colony memory"), "{err}");
    let lines = dir.path().join("bad.jsonl");
    std::fs::write(&lines, "{\"id\":\"ok\",\"text\":\"fine\"}\n{\"id\": 3}\n").unwrap();
    let (_, err, code) = colony(&[
        "memory",
        "put",
        "--db",
        db,
        "--jsonl",
        lines.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.jsonl:2: not a document"), "{err}");
    // Only the first document is in the memory: the refused ones left nothing.
    let (out, _, _) = colony(&["memory", "stats", "--db", db, "--json"]);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["documents"], 1, "{stats}");
}

#[test]
fn colony_serve_serves_the_memory_file_it_is_given_and_refuses_one_that_is_not_a_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (_, err, code) = colony(&[
        "memory",
        "put",
        "--db",
        db.to_str().unwrap(),
        "--namespace",
        "shared",
        "a",
        "agents remember together",
    ]);
    assert_eq!(code, 0, "{err}");
    let server = common::Server::start(&["--memory", db.to_str().unwrap()]);
    let found = server
        .request(
            reqwest::Method::POST,
            "/v1/memory/search",
            None,
            Some(serde_json::json!({"namespace": "shared", "query": {"text": "remember", "k": 3}})),
        )
        .unwrap();
    assert_eq!(found.0, 200, "{}", found.1);
    let hits: Value = serde_json::from_str(&found.1).unwrap();
    assert_eq!(hits["hits"][0]["id"], "a");
    drop(server);

    // Not a memory: refused before serving, the file untouched.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "plain text").unwrap();
    let (_, err, code) = colony(&["serve", "--memory", other.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--memory"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "plain text");
    // A pipe is never opened (SQLite would wait on it for a writer forever).
    let pipe = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap();
    assert!(made.success());
    let (_, err, code) = colony(&["serve", "--memory", pipe.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

/// `colony memory rebuild`: an index built from the file alone finds what exact search
/// finds, measured, and a demanded recall it cannot meet exits 1; a namespace never
/// written is refused.
#[test]
fn an_index_is_rebuilt_from_the_file_and_checked_against_exact_search() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let db = db.to_str().unwrap();
    let lines = dir.path().join("docs.jsonl");
    let mut text = String::new();
    for i in 0..600 {
        text.push_str(&format!(
            "{{\"id\":\"d{i}\",\"text\":\"note {i} about topic {} and {}\"}}\n",
            i % 37,
            i % 11
        ));
    }
    std::fs::write(&lines, text).unwrap();
    let (_, err, code) = colony(&[
        "memory",
        "put",
        "--db",
        db,
        "-n",
        "notes",
        "--jsonl",
        lines.to_str().unwrap(),
        "--embed",
        "--dimension",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    let (out, err, code) = colony(&[
        "memory",
        "rebuild",
        "--db",
        db,
        "-n",
        "notes",
        "--queries",
        "50",
        "--json",
        "--min-recall",
        "0.9",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["points"], 600);
    assert_eq!(v["queries"], 50);
    let recall = v["recall"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&recall), "{v}");
    // Asking for more than it can give fails, saying so. (A recall of exactly 1.0 meets any
    // bound, so only a bound above it can fail: refused by the flag itself.)
    let (_, err, code) = colony(&[
        "memory",
        "rebuild",
        "--db",
        db,
        "-n",
        "notes",
        "--min-recall",
        "1.5",
    ]);
    assert_eq!(code, 2, "{err}");
    // A recall demanded and nothing to measure it with: not a silent pass.
    let (_, err, code) = colony(&[
        "memory",
        "rebuild",
        "--db",
        db,
        "-n",
        "notes",
        "--queries",
        "0",
        "--min-recall",
        "0.5",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no embeddings to check it with"), "{err}");
    let (_, err, code) = colony(&["memory", "rebuild", "--db", db, "-n", "nothing/here"]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing/here"), "{err}");
}

/// A toy OpenAI-compatible embedding server on loopback: each text's vector counts its
/// words hashed into 8 slots, so texts sharing words are near. It wants the bearer key
/// `secret`, and answers a text holding `BADDIM` with a vector of 3 values. It prints its
/// port, then serves until killed.
const EMBEDDINGS: &str = r#"
import hashlib, http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        if self.path != "/v1/embeddings":
            self.send_response(404); self.end_headers(); return
        if self.headers.get("Authorization") != "Bearer secret":
            self.send_response(401); self.end_headers(); self.wfile.write(b'{"error":"bad key"}'); return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = []
        for i, text in enumerate(body["input"]):
            v = [0.0] * 8
            for w in text.lower().split():
                v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 8] += 1.0
            if "BADDIM" in text:
                v = v[:3]
            data.append({"object": "embedding", "index": i, "embedding": v})
        out = json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// Kills the toy server when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn documents_are_embedded_by_an_openai_compatible_endpoint() {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", EMBEDDINGS])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Killed(child);
    let url = format!("http://127.0.0.1:{}/v1", port.trim());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let db = db.to_str().unwrap();
    let with_key = |args: &[&str], key: &str| {
        let out = std::process::Command::new(common::COLONY)
            .args(args)
            .env("TOY_KEY", key)
            .output()
            .unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
            out.status.code().unwrap_or(-1),
        )
    };
    let remote = [
        "--dimension",
        "8",
        "--embedder-url",
        &url,
        "--embedder-model",
        "toy",
        "--embedder-key-env",
        "TOY_KEY",
    ];
    for (id, text) in [
        ("a", "agents restart crashed workers"),
        ("b", "quarterly tax figures"),
        ("c", "the supervisor restarts agents"),
    ] {
        let mut args = vec![
            "memory", "put", "--db", db, "-n", "toy", id, text, "--embed",
        ];
        args.extend(remote);
        let (_, err, code) = with_key(&args, "secret");
        assert_eq!(code, 0, "{err}");
    }
    let mut args = vec![
        "memory",
        "search",
        "--db",
        db,
        "-n",
        "toy",
        "--near",
        "tax figures",
        "-k",
        "1",
        "--json",
    ];
    args.extend(remote);
    let (out, err, code) = with_key(&args, "secret");
    assert_eq!(code, 0, "{err}");
    let hits: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(hits[0]["id"], "b", "{out}");
    // The namespace knows its vectors are the endpoint's: a lexical --near is refused.
    let (_, err, code) = colony(&[
        "memory",
        "search",
        "--db",
        db,
        "-n",
        "toy",
        "--near",
        "tax",
        "--dimension",
        "8",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("made by `http:toy`, and these were made by `lexical`"),
        "{err}"
    );

    // A wrong key, and an answer of the wrong dimension: exit 1, saying what came, nothing
    // stored.
    let mut args = vec![
        "memory",
        "put",
        "--db",
        db,
        "-n",
        "toy",
        "d",
        "more words",
        "--embed",
    ];
    args.extend(remote);
    let (_, err, code) = with_key(&args, "wrong");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    let mut args = vec![
        "memory",
        "put",
        "--db",
        db,
        "-n",
        "toy",
        "e",
        "BADDIM words",
        "--embed",
    ];
    args.extend(remote);
    let (_, err, code) = with_key(&args, "secret");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("answered an embedding of 3 dimensions: 8 were declared for model toy"),
        "{err}"
    );
    let (out, _, code) = colony(&["memory", "stats", "--db", db, "--json"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["documents"], 3, "{out}");
    // A key variable that is not set is bad input.
    let mut args = vec![
        "memory", "put", "--db", db, "-n", "toy", "f", "x", "--embed",
    ];
    args.extend([
        "--dimension",
        "8",
        "--embedder-url",
        &url,
        "--embedder-model",
        "toy",
    ]);
    args.extend(["--embedder-key-env", "COLONY_TEST_NO_SUCH_VAR"]);
    let (_, err, code) = colony(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("COLONY_TEST_NO_SUCH_VAR"), "{err}");
}

#[test]
fn a_memory_spread_over_files_is_used_as_one_and_opened_only_as_spread() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let db = db.to_str().unwrap();
    let lines = dir.path().join("docs.jsonl");
    let docs: String = (0..60)
        .map(|i| {
            let text = if i % 3 == 0 {
                "restart the agent"
            } else {
                "quarterly tax figures"
            };
            format!("{{\"id\":\"d{i}\",\"text\":\"{text} {i}\"}}\n")
        })
        .collect();
    std::fs::write(&lines, docs).unwrap();
    let put = |shards: &str| {
        colony(&[
            "memory",
            "put",
            "--db",
            db,
            "--shards",
            shards,
            "--jsonl",
            lines.to_str().unwrap(),
            "--embed",
        ])
    };
    let (out, err, code) = put("3");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored 60 documents"), "{out}");
    for i in 1..=3 {
        assert!(dir.path().join(format!("memory.db.{i}-of-3")).is_file());
    }
    assert!(!dir.path().join("memory.db").exists());
    let (out, err, code) = colony(&[
        "memory",
        "search",
        "--db",
        db,
        "--shards",
        "3",
        "--text",
        "restart agent",
        "-k",
        "50",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let hits: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(hits.len(), 20);
    let (out, _, code) = colony(&["memory", "stats", "--db", db, "--shards", "3", "--json"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["documents"], 60);
    // Another count would look for documents in the wrong files: refused, naming the count.
    for wrong in ["1", "4"] {
        let (_, err, code) = colony(&["memory", "get", "--db", db, "--shards", wrong, "d3"]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("spread over 3 files") && err.contains("give 3 shards"),
            "{err}"
        );
    }
    let (out, err, code) = colony(&["memory", "get", "--db", db, "--shards", "3", "d3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restart the agent 3"), "{out}");
    // Rebuild is of one file.
    let (_, err, code) = colony(&["memory", "rebuild", "--db", db, "--shards", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("one SQLite file"), "{err}");
}

#[test]
fn a_bad_chroma_address_is_refused_with_what_is_wrong() {
    for (url, says) in [
        ("ftp://x:1", "http://HOST:PORT"),
        ("http://127.0.0.1:1?shelf=3", "unknown setting `shelf`"),
        (
            "http://127.0.0.1:1?token-env=COLONY_TEST_NO_SUCH_VAR",
            "not set",
        ),
        ("not a url", "--chroma"),
        ("http://user:hunter2@127.0.0.1:1", "no user or password"),
    ] {
        let (_, err, code) = colony(&["memory", "stats", "--chroma", url]);
        assert_eq!(code, 2, "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        assert!(
            !err.contains("hunter2"),
            "a password is never echoed: {err}"
        );
    }
    // Nothing listening: the work fails (exit 1), saying where it looked.
    let (_, err, code) = colony(&["memory", "stats", "--chroma", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn a_memory_on_chroma_is_used_through_the_command_line_and_opened_only_as_spread() {
    let Some(chroma) = colony_memory::testing::ChromaServer::start() else {
        return;
    };
    let url = format!("{}?prefix=cli", chroma.url());
    let (out, err, code) = colony(&[
        "memory",
        "put",
        "--chroma",
        &url,
        "--shards",
        "2",
        "-n",
        "team/a",
        "r1",
        "restart the failed agent",
        "--meta",
        "kind=ops",
        "--embed",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored 1 documents in team/a"), "{out}");
    let (out, err, code) = colony(&[
        "memory", "search", "--chroma", &url, "--shards", "2", "-n", "team/a", "--text", "agent",
        "--near", "restart", "--where", "kind=ops", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let hits: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(hits[0]["id"], "r1", "{out}");
    // Another count would look in other collections: refused, naming the count.
    for wrong in ["1", "3"] {
        let (_, err, code) = colony(&["memory", "stats", "--chroma", &url, "--shards", wrong]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("spread over 2") && err.contains("give 2 shards"),
            "{err}"
        );
    }
    let (out, err, code) = colony(&[
        "memory", "stats", "--chroma", &url, "--shards", "2", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["documents"], 1, "{out}");
    assert_eq!(stats[0]["embedder"], "lexical", "{out}");
}

#[test]
fn colony_serve_serves_a_memory_spread_over_files_and_refuses_two_memories() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spread.db");
    let db = db.to_str().unwrap();
    let docs: Vec<String> = (0..12).map(|i| format!("d{i}")).collect();
    for id in &docs {
        let (_, err, code) = colony(&[
            "memory",
            "put",
            "--db",
            db,
            "--shards",
            "3",
            id,
            "agents remember together",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    // Through colony.toml's keys, as a user would keep them.
    std::fs::write(
        dir.path().join("colony.toml"),
        format!("[server]\nmemory = \"{db}\"\nmemory-shards = 3\n"),
    )
    .unwrap();
    let server = common::Server::start_in(dir.path(), &[]);
    let found = server
        .request(
            reqwest::Method::POST,
            "/v1/memory/search",
            None,
            Some(
                serde_json::json!({"namespace": "shared", "query": {"text": "remember", "k": 20}}),
            ),
        )
        .unwrap();
    assert_eq!(found.0, 200, "{}", found.1);
    let hits: Value = serde_json::from_str(&found.1).unwrap();
    assert_eq!(hits["hits"].as_array().unwrap().len(), 12, "{hits}");
    drop(server);
    // The same memory with another count: refused before serving.
    let (_, err, code) = colony(&["serve", "--memory", db, "--memory-shards", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("spread over 3"), "{err}");
    // A file and a server in one layer: which memory is meant is not guessed.
    let (_, err, code) = colony(&[
        "serve",
        "--memory",
        db,
        "--memory-chroma",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, 2, "{err}");
    std::fs::write(
        dir.path().join("both.toml"),
        format!("[server]\nmemory = \"{db}\"\nmemory-chroma = \"http://127.0.0.1:1\"\n"),
    )
    .unwrap();
    let both = dir.path().join("both.toml");
    let (_, err, code) = colony(&["config", "check", "--config", both.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("memory and memory-chroma"), "{err}");
}

/// A workflow's `memory:` section: its memory spread over two files where it says, its
/// outputs embedded by an endpoint, recalled by a later task.
#[test]
fn a_workflow_remembers_into_the_memory_its_file_names_embedded_by_an_endpoint() {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", EMBEDDINGS])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Killed(child);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        format!(
            "name: remembers\nmemory:\n  db: notes/memory.db\n  shards: 2\n  embedder: {{ base-url: \"http://127.0.0.1:{}/v1\", model: toy, api-key-env: TOY_KEY, dimension: 8 }}\nagents:\n  - {{name: say, kind: command, command: {{program: echo, args: [\"the supervisor restarts crashed agents\"]}}}}\n  - {{name: sim, kind: sim}}\ntasks:\n  - {{id: note, agent: say, remember: true}}\n  - id: use\n    agent: sim\n    needs: [note]\n    input: {{ topic: crashes }}\n    recall: {{ query: \"restarts crashed agents\", k: 3 }}\n",
            port.trim()
        ),
    )
    .unwrap();
    let run = |key: &str| {
        let out = std::process::Command::new(common::COLONY)
            .args(["run", file.to_str().unwrap(), "--json"])
            .env("TOY_KEY", key)
            .output()
            .unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
            out.status.code().unwrap_or(-1),
        )
    };
    let (out, err, code) = run("secret");
    assert_eq!(code, 0, "{out}\n{err}");
    // The sim agent answers with its payload: the input, with what was recalled.
    let summary: Value = serde_json::from_str(&out).unwrap();
    let used = summary["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "use")
        .unwrap()
        .clone();
    let recalled = &used["output"]["input"]["recall"];
    assert_eq!(recalled[0]["id"], "note", "{used:#}");
    assert_eq!(
        recalled[0]["text"], "the supervisor restarts crashed agents",
        "{used:#}"
    );
    for i in 1..=2 {
        assert!(
            dir.path()
                .join(format!("notes/memory.db.{i}-of-2"))
                .is_file()
        );
    }
    let db = dir.path().join("notes/memory.db");
    let (out, err, code) = colony(&[
        "memory",
        "stats",
        "--db",
        db.to_str().unwrap(),
        "--shards",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["namespace"], "workflow/remembers", "{out}");
    assert_eq!(stats[0]["embedder"], "http:toy", "{out}");
    assert_eq!(stats[0]["dimension"], 8, "{out}");
    // A wrong key: the endpoint refuses, and the task that remembers fails saying why.
    let (out, err, code) = run("wrong");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("401") || err.contains("401"), "{out}\n{err}");
}
