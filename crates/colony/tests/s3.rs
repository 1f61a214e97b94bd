//! Backups to S3 against a real S3-compatible server on loopback (moto, from PyPI; `.ci/run`
//! installs it).

use assert_cmd::Command;
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP request to the server; moto needs no signature to create a bucket. A server
/// just started may still reset a connection: the caller tries again.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// `http` until it answers, for up to 30 s.
fn http_answered(port: u16, method: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http(port, method, path) {
            Ok(response) => return response,
            Err(e) => assert!(Instant::now() < deadline, "{method} {path}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_moto() -> Option<(Server, u16)> {
    let Ok(path) = which("moto_server") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto_server is missing: .ci/run installs it"
        );
        eprintln!("moto_server not installed (pip install 'moto[server]'): skipping the S3 test");
        return None;
    };
    let port = free_port();
    let child = std::process::Command::new(path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((server, port))
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

fn colony(port: u16, args: &[&str]) -> (String, String, i32) {
    let out = Command::cargo_bin("colony")
        .unwrap()
        .args(args)
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

/// moto with `bucket` made, and a journal `c.db` of `tasks` tasks in `dir`: the server, its
/// port and the journal's path. `None` where moto is not installed (never in CI).
fn moto_and_journal(
    bucket: &str,
    dir: &std::path::Path,
    tasks: u32,
) -> Option<(Server, u16, String)> {
    let (server, port) = start_moto()?;
    assert!(http_answered(port, "PUT", &format!("/{bucket}")).starts_with("HTTP/1.1 200"));
    let db = dir.join("c.db").to_str().unwrap().to_owned();
    let tasks = tasks.to_string();
    let (_, stderr, code) = colony(
        port,
        &[
            "bench", "dispatch", "--agents", "20", "--tasks", &tasks, "--db", &db,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    Some((server, port, db))
}

/// Restores the backup at `url` as the journal `restored`: the tasks it holds.
fn restored_total(port: u16, url: &str, restored: &str) -> u64 {
    let (_, stderr, code) = colony(port, &["restore", "--from", url, "--db", restored]);
    assert_eq!(code, 0, "{stderr}");
    let (stdout, _, _) = colony(port, &["tasks", "--db", restored, "--json", "--limit", "0"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    json["total"].as_u64().unwrap()
}

#[test]
fn backup_to_s3_and_restore_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_server, port, db)) = moto_and_journal("colony-test", dir.path(), 5_000) else {
        return;
    };
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let restored = path("restored.db");

    let url = "s3://colony-test/backups/c.db";
    let (stdout, stderr, code) = colony(port, &["backup", "--db", &db, "--to", url, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (json["tasks"].as_u64(), json["to"].as_str()),
        (Some(5_000), Some(url))
    );
    assert!(
        !std::path::Path::new(&format!("{db}.upload")).exists(),
        "the staged copy is gone"
    );

    assert_eq!(restored_total(port, url, &restored), 5_000);

    // What goes wrong says so, and leaves nothing behind.
    let (_, stderr, code) = colony(
        port,
        &[
            "restore",
            "--from",
            "s3://colony-test/backups/none.db",
            "--db",
            &path("n.db"),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no such object"), "{stderr}");
    assert!(!std::path::Path::new(&path("n.db")).exists());
    let (_, stderr, code) = colony(port, &["backup", "--db", &db, "--to", "s3://colony-test"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("name the bucket and the object"),
        "{stderr}"
    );
    let dead = free_port();
    let (_, stderr, code) = colony(dead, &["backup", "--db", &db, "--to", url]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Connection refused") && stderr.contains("AWS_ENDPOINT"),
        "{stderr}"
    );
}

#[test]
fn serve_backs_its_journal_up_to_s3_continuously() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_moto, port, db)) = moto_and_journal("colony-serve", dir.path(), 3_000) else {
        return;
    };
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let url = "s3://colony-serve/continuous/c.db";
    let addr = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("colony"))
        .args(["serve", "--addr", &addr, "--agents", "10", "--db", &db])
        .args(["--backup-to", url, "--backup-every", "1s"])
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Server(child);
    let serve_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // Two backups at least, one a second, each uploaded whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(Instant::now() < deadline, "no backups to S3");
        if let Ok(response) = http(serve_port, "GET", "/v1/backup")
            && let Some((_, body)) = response.split_once("\r\n\r\n")
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(body)
            && status["succeeded"].as_u64() >= Some(2)
        {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["to"], url);
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(status["last-success"]["tasks"], 3_000, "{status}");
    let restored = path("restored.db");
    assert_eq!(restored_total(port, url, &restored), 3_000);
}
