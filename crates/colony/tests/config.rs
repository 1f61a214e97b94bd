//! `colony.toml`, `COLONY_*` variables and flags, as real processes: which layer wins, where
//! `config show` says each setting came from, problems with their file, line and column or
//! their variable, and settings that reach the runtime of `serve` and `run`.

use std::{path::Path, process::Command};

mod common;
use common::{COLONY, Server};

/// Runs colony in `dir` with only the variables `env`: stdout, stderr, exit code.
fn colony(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (String, String, i32) {
    let out = Command::new(COLONY)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

const CONFIG: &str = r#"# colony serve's settings
[server]
addr = "127.0.0.1:7171"
db = "data/colony.db"
agents = 12

[runtime]
span = 6
strategy = "round-robin"

[runtime.health]
heartbeat = "250ms"
"#;

const POOLS: &str = "name: pools
agents:
  - {name: a, kind: sim, count: 4}
runtime:
  span: 8
  seed: 7
  breaker: off
  retry: {jitter: 0.1}
";

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("colony.toml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("pools.yaml"), POOLS).unwrap();
    dir
}

/// `config show --json` as key -> (value, source).
fn show(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::collections::HashMap<String, (String, String)> {
    let mut argv = vec!["config", "show", "--json"];
    argv.extend(args);
    let (out, err, code) = colony(dir, env, &argv);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_owned(),
                (
                    e["value"].as_str().unwrap().to_owned(),
                    e["source"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn each_layer_overrides_the_one_below_and_show_says_which() {
    let dir = setup();
    let got = show(
        dir.path(),
        &[
            ("COLONY_ADDR", "127.0.0.1:9000"),
            ("COLONY_RUNTIME_SEED", "9"),
            ("COLONY_RUNTIME_HEALTH_FAILED_AFTER", "20s"),
            ("COLONY_LOG", "warn"),
        ],
        &["--pools", "pools.yaml"],
    );
    let at = |key: &str| got.get(key).unwrap_or_else(|| panic!("{key}")).clone();
    let pair = |v: &str, s: &str| (v.to_owned(), s.to_owned());
    // Environment over file.
    assert_eq!(at("server.addr"), pair("127.0.0.1:9000", "env COLONY_ADDR"));
    // File over default; paths in the file are relative to its folder.
    assert_eq!(at("server.db"), pair("data/colony.db", "colony.toml:4"));
    // A flag over the file: --pools wins over the file's `agents`, its alternative.
    assert_eq!(at("server.pools"), pair("pools.yaml", "flag --pools"));
    assert_eq!(at("server.agents"), pair("1000", "default"));
    assert_eq!(at("server.out"), pair("colony-out/serve", "default"));
    // File over pools file, pools file over default, environment over pools file.
    assert_eq!(at("runtime.span"), pair("6", "colony.toml:8"));
    assert_eq!(at("runtime.retry.jitter"), pair("0.1", "pools.yaml:8"));
    assert_eq!(at("runtime.breaker"), pair("off", "pools.yaml:7"));
    assert_eq!(at("runtime.seed"), pair("9", "env COLONY_RUNTIME_SEED"));
    assert_eq!(
        at("runtime.health.failed-after"),
        pair("20s", "env COLONY_RUNTIME_HEALTH_FAILED_AFTER")
    );
    assert_eq!(
        at("runtime.health.heartbeat"),
        pair("250ms", "colony.toml:12")
    );
    assert_eq!(at("runtime.queue-capacity"), pair("256", "default"));
    assert_eq!(at("runtime.supervision.max-restarts"), pair("3", "default"));

    // COLONY_CONFIG names another file; --config wins over it.
    std::fs::write(dir.path().join("other.toml"), "[runtime]\nspan = 30\n").unwrap();
    std::fs::write(dir.path().join("third.toml"), "[runtime]\nspan = 40\n").unwrap();
    let got = show(dir.path(), &[("COLONY_CONFIG", "other.toml")], &[]);
    assert_eq!(got["runtime.span"], pair("30", "other.toml:2"));
    let got = show(
        dir.path(),
        &[("COLONY_CONFIG", "other.toml")],
        &["--config", "third.toml"],
    );
    assert_eq!(got["runtime.span"], pair("40", "third.toml:2"));
    // Without a file anywhere, everything is a default.
    let empty = tempfile::tempdir().unwrap();
    let got = show(empty.path(), &[], &[]);
    assert!(got.values().all(|(_, s)| s == "default"), "{got:?}");
}

#[test]
fn show_lists_every_key() {
    let dir = setup();
    let (out, err, code) = colony(
        dir.path(),
        &[("COLONY_RUNTIME_SEED", "9")],
        &["config", "show", "--pools", "pools.yaml"],
    );
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn problems_name_the_file_line_and_column_or_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(dir.path().join("colony.toml"), toml).unwrap();
        let (out, err, code) = colony(dir.path(), env, &["config", "check"]);
        assert_eq!(code, 2, "{toml}: {out}{err}");
        err
    };
    // A value of the wrong type, an unknown key, a value out of range.
    let err = check("[runtime]\nseed = 1\nspan = \"wide\"\n", &[]);
    assert!(
        err.contains("colony.toml:3:8: invalid type: string \"wide\""),
        "{err}"
    );
    let err = check("[server]\nadr = \"127.0.0.1:1\"\n", &[]);
    assert!(
        err.contains("colony.toml:2:1: unknown field `adr`"),
        "{err}"
    );
    let err = check("[runtime.supervison]\nperiod = \"5s\"\n", &[]);
    assert!(err.contains("colony.toml:1:"), "{err}");
    assert!(err.contains("unknown field `supervison`"), "{err}");
    let err = check(
        "[runtime]\nspan = 1\n[runtime.supervision]\nmax-restarts = 0\n[server]\nheader-timeout = 0\n",
        &[],
    );
    assert!(
        err.contains("colony.toml:2:8: span of control 1 is out of range: allowed 2..=10000"),
        "{err}"
    );
    assert!(
        err.contains("colony.toml:4:16: supervision max-restarts 0 is out of range"),
        "{err}"
    );
    assert!(
        err.contains("colony.toml:6:18: header-timeout 0 is out of range: allowed 1..=3600"),
        "{err}"
    );
    assert!(err.contains("the settings have 3 problems"), "{err}");
    let err = check("[server]\naddr = \"here\"\n", &[]);
    assert!(
        err.contains("colony.toml:2:8: addr `here` is not an address"),
        "{err}"
    );
    let err = check("[server]\ntls-cert = \"c.pem\"\n", &[]);
    assert!(
        err.contains("colony.toml:2: tls-cert and tls-key go together"),
        "{err}"
    );

    // Variables: a bad value, one out of range, an unknown runtime key.
    let ok = "[runtime]\nspan = 6\n";
    let err = check(ok, &[("COLONY_RUNTIME_SPAN", "wide")]);
    assert!(
        err.contains("env COLONY_RUNTIME_SPAN: invalid type: string \"wide\""),
        "{err}"
    );
    // A line break in one value does not move the blame onto the variables after it.
    let err = check(
        ok,
        &[
            ("COLONY_RUNTIME_AUTOSCALE_SEASON", "1h\nx"),
            ("COLONY_RUNTIME_SPAN", "wide"),
        ],
    );
    assert!(
        err.contains("env COLONY_RUNTIME_SPAN: invalid type: string \"wide\""),
        "{err}"
    );
    let err = check(ok, &[("COLONY_RUNTIME_HEALTH_HEARTBEAT", "0s")]);
    assert!(
        err.contains("env COLONY_RUNTIME_HEALTH_HEARTBEAT: a duration of 0 is not allowed"),
        "{err}"
    );
    let err = check(ok, &[("COLONY_MAX_CONNECTIONS", "0")]);
    assert!(
        err.contains("env COLONY_MAX_CONNECTIONS: max-connections 0 is out of range"),
        "{err}"
    );
    let err = check(ok, &[("COLONY_RUNTIME_SPNA", "6")]);
    assert!(
        err.contains("env COLONY_RUNTIME_SPNA: no runtime setting has this name"),
        "{err}"
    );
    let err = check(ok, &[("COLONY_RUNTIME_RETRY_JITTER", "NaN")]);
    assert!(
        err.contains("env COLONY_RUNTIME_RETRY_JITTER: retry jitter NaN is not a finite number"),
        "{err}"
    );

    // A pools file checked with it: YAML problems with their line and column.
    std::fs::write(
        dir.path().join("pools.yaml"),
        "name: p\nagents: [{name: a, kind: sim}]\nruntime:\n  queue-capacity: 0\n  healt: {}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("colony.toml"), ok).unwrap();
    let (out, err, code) = colony(dir.path(), &[], &["config", "check", "pools.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("pools.yaml:5:3: unknown field `healt`"),
        "{err}"
    );
    assert!(
        err.contains("pools.yaml:4:19: queue capacity 0 is out of range: allowed 1..=1000000"),
        "{err}"
    );

    // Good settings: `ok`.
    std::fs::write(dir.path().join("pools.yaml"), POOLS).unwrap();
    let (out, err, code) = colony(dir.path(), &[], &["config", "check", "pools.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok"), "{out}");
    // Spelt as serve and config show spell it, the same check.
    let (same, err, code) = colony(
        dir.path(),
        &[],
        &["config", "check", "--pools", "pools.yaml"],
    );
    assert_eq!((code, &same), (0, &out), "{err}");
    // Tiers named by one layer and changed by another: the pools file supervises its `lead`
    // tier, then colony.toml plans a hierarchy without one.
    std::fs::write(
        dir.path().join("tiers.yaml"),
        "name: p\nagents: [{name: a, kind: sim, count: 4}]\nruntime:\n  tiers: [boss, lead, worker]\n  supervision:\n    tiers: {lead: {max-restarts: 3}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flat.toml"),
        "[runtime]\ntiers = [\"top\", \"worker\"]\n",
    )
    .unwrap();
    let (out, err, code) = colony(
        dir.path(),
        &[],
        &["config", "check", "--config", "flat.toml", "tiers.yaml"],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("tiers.yaml:6: supervision of tier `lead`: no managing tier has that name (the hierarchy serve plans: top)"),
        "{err}"
    );
    // A file too large to be a configuration is refused before it is parsed.
    std::fs::write(dir.path().join("big.toml"), "#".repeat(1 << 20)).unwrap();
    let (_, err, code) = colony(
        dir.path(),
        &[],
        &["config", "check", "--config", "big.toml"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("more than the limit"), "{err}");
    // A named file that is missing is an error, not a silent default.
    let (_, err, code) = colony(
        dir.path(),
        &[("COLONY_CONFIG", "nowhere.toml")],
        &["config", "check"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nowhere.toml"), "{err}");
}

#[test]
fn a_workflows_runtime_section_shapes_the_hierarchy_it_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.yaml"),
        "name: shaped
agents: [{name: a, kind: sim, count: 9}]
tasks: [{id: t}]
runtime:
  span: 3
  tiers: [boss, lead, hand]
  strategy: round-robin
",
    )
    .unwrap();
    let (_, err, code) = colony(dir.path(), &[], &["run", "w.yaml", "--db", "w.db"]);
    assert_eq!(code, 0, "{err}");
    let (out, err, code) = colony(dir.path(), &[], &["agents", "--db", "w.db", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tiers: Vec<(String, u64)> = json["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["agents"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [("boss".into(), 1), ("lead".into(), 3), ("hand".into(), 9)]
    );
}

#[test]
fn serve_runs_with_colony_toml_under_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    // The file's address is taken by no one: the flag's (Server::start's) must win.
    std::fs::write(
        dir.path().join("colony.toml"),
        "[server]\naddr = \"127.0.0.1:1\"\nagents = 16\n[runtime]\nspan = 4\ntiers = [\"top\", \"mid\", \"bottom\"]\n",
    )
    .unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let hierarchy = server.get("/v1/hierarchy", None);
    let tiers: Vec<(String, u64)> = hierarchy["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["agents"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [("top".into(), 1), ("mid".into(), 4), ("bottom".into(), 16)],
        "{hierarchy}"
    );
}

#[test]
fn backup_settings_are_layered_and_their_problems_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/colony.toml"),
        "[server]\ndb = \"colony.db\"\nbackup-to = \"backups/colony.db\"\n",
    )
    .unwrap();
    // A file path in the file is relative to its folder; the interval defaults to 5 minutes.
    let got = show(dir.path(), &[], &["--config", "conf/colony.toml"]);
    let pair = |v: &str, s: &str| (v.to_owned(), s.to_owned());
    assert_eq!(
        got["server.backup-to"],
        pair("conf/backups/colony.db", "conf/colony.toml:3")
    );
    assert_eq!(got["server.backup-every"], pair("5m", "default"));
    // A variable over the file, a flag over the variable; an s3:// URL stays as written.
    let got = show(
        dir.path(),
        &[
            ("COLONY_BACKUP_TO", "s3://bucket/colony/journal.db"),
            ("COLONY_BACKUP_EVERY", "90s"),
        ],
        &["--config", "conf/colony.toml"],
    );
    assert_eq!(
        got["server.backup-to"],
        pair("s3://bucket/colony/journal.db", "env COLONY_BACKUP_TO")
    );
    assert_eq!(
        got["server.backup-every"],
        pair("1m 30s", "env COLONY_BACKUP_EVERY")
    );

    let problem = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(dir.path().join("colony.toml"), toml).unwrap();
        let (out, err, code) = colony(dir.path(), env, &["config", "check"]);
        assert_eq!(code, 2, "{toml}: {out}{err}");
        err
    };
    let err = problem("[server]\nbackup-to = \"copy.db\"\n", &[]);
    assert!(err.contains("colony.toml:2: backup-to needs db"), "{err}");
    let err = problem("[server]\ndb = \"j.db\"\nbackup-to = \"j.db\"\n", &[]);
    assert!(err.contains("backup-to is the journal itself"), "{err}");
    let err = problem("[server]\ndb = \"j.db\"\nbackup-every = \"1m\"\n", &[]);
    assert!(
        err.contains("colony.toml:3: backup-every needs backup-to"),
        "{err}"
    );
    let err = problem(
        "[server]\ndb = \"j.db\"\nbackup-to = \"c.db\"\nbackup-every = \"often\"\n",
        &[],
    );
    assert!(
        err.contains("colony.toml:4:16: backup-every `often` is not a duration"),
        "{err}"
    );
    let err = problem(
        "[server]\ndb = \"j.db\"\nbackup-to = \"c.db\"\nbackup-every = \"100ms\"\n",
        &[],
    );
    assert!(
        err.contains("backup-every 100ms is out of range: allowed 1s to 7days"),
        "{err}"
    );
    let err = problem(
        "[server]\ndb = \"j.db\"\n",
        &[("COLONY_BACKUP_TO", "ftp://host/file")],
    );
    assert!(
        err.contains("env COLONY_BACKUP_TO: ftp://host/file: ftp:// is not supported"),
        "{err}"
    );
    // The flags are checked as the file is.
    std::fs::write(dir.path().join("colony.toml"), "").unwrap();
    let (_, err, code) = colony(
        dir.path(),
        &[],
        &["serve", "--backup-to", "c.db", "--backup-every", "9d"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("out of range"), "{err}");
    let (_, err, code) = colony(dir.path(), &[], &["serve", "--backup-to", "c.db"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("flag --backup-to: backup-to needs db"),
        "{err}"
    );
    let (_, err, code) = colony(
        dir.path(),
        &[],
        &["serve", "--db", "j.db", "--backup-to", "missing/c.db"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the folder missing does not exist"), "{err}");
    // The journal by another path is still the journal.
    let (_, err, code) = colony(
        dir.path(),
        &[],
        &["serve", "--db", "j.db", "--backup-to", "./j.db"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("flag --backup-to: backup-to ./j.db: is the journal itself"),
        "{err}"
    );
    assert!(!dir.path().join("j.db").exists(), "nothing started");
    // A "needs" problem shows beside an unrelated one.
    let err = problem(
        "[server]\naddr = \"nowhere\"\ndb = \"j.db\"\nbackup-every = \"1m\"\n",
        &[],
    );
    assert!(err.contains("addr `nowhere` is not an address"), "{err}");
    assert!(err.contains("backup-every needs backup-to"), "{err}");
    // A refused value is one problem, not also a "needs" problem of the key after it.
    let err = problem(
        "[server]\ndb = \"j.db\"\nbackup-to = \"ftp://x/y\"\nbackup-every = \"1m\"\n",
        &[],
    );
    assert!(err.contains("ftp:// is not supported"), "{err}");
    assert!(!err.contains("needs backup-to"), "{err}");
}

#[test]
fn the_servers_webhook_needs_runs_and_a_set_secret() {
    let dir = tempfile::tempdir().unwrap();
    let problem = |toml: &str| {
        std::fs::write(dir.path().join("colony.toml"), toml).unwrap();
        let (out, err, code) = colony(dir.path(), &[], &["config", "check"]);
        assert_eq!(code, 2, "{toml}: {out}{err}");
        err
    };
    let err = problem("[server]\nwebhook = \"http://127.0.0.1:9/hook\"\n");
    assert!(err.contains("colony.toml:2: webhook needs runs"), "{err}");
    let err = problem("[server]\nruns = \"runs\"\nwebhook = \"gopher://x\"\n");
    assert!(
        err.contains("colony.toml:3:11: `gopher://x` is not an http(s) URL"),
        "{err}"
    );
    let err = problem(
        "[server]\nruns = \"runs\"\nwebhook = \"http://h/x\"\nwebhook-secret-env = \"A-B\"\n",
    );
    assert!(
        err.contains("secret-env `A-B` is not a variable's name"),
        "{err}"
    );
    let err = problem("[server]\nwebhook-secret-env = \"SECRET\"\n");
    assert!(err.contains("webhook-secret-env needs webhook"), "{err}");
    // Shown with where it came from.
    std::fs::write(
        dir.path().join("colony.toml"),
        "[server]\nruns = \"runs\"\nwebhook = \"http://h/x\"\n",
    )
    .unwrap();
    let got = show(
        dir.path(),
        &[("COLONY_WEBHOOK_SECRET_ENV", "HOOK_KEY")],
        &[],
    );
    assert_eq!(
        got["server.webhook"],
        ("http://h/x".to_owned(), "colony.toml:3".to_owned())
    );
    assert_eq!(
        got["server.webhook-secret-env"],
        (
            "HOOK_KEY".to_owned(),
            "env COLONY_WEBHOOK_SECRET_ENV".to_owned()
        )
    );
    // `serve` refuses a secret's variable that is not set, before it starts.
    std::fs::write(dir.path().join("colony.toml"), "").unwrap();
    let (_, err, code) = colony(
        dir.path(),
        &[],
        &[
            "serve",
            "--runs",
            "runs",
            "--webhook",
            "http://h/x",
            "--webhook-secret-env",
            "HOOK_KEY",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("HOOK_KEY: the variable is not set"), "{err}");
}

#[test]
fn a_journal_in_nats_is_kept_as_written_not_taken_for_a_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("colony.toml"),
        "[server]\ndb = \"nats://10.0.0.5:4222/orders?replicas=5\"\n",
    )
    .unwrap();
    let got = show(dir.path(), &[], &[]);
    assert_eq!(
        got["server.db"],
        (
            "nats://10.0.0.5:4222/orders?replicas=5".to_owned(),
            "colony.toml:2".to_owned()
        )
    );
}

/// A memory in NATS written in a settings file elsewhere is kept as written, not joined to
/// the file's folder as a memory file's path is.
#[test]
fn a_memory_in_nats_is_kept_as_written_wherever_the_file_is() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/colony.toml"),
        "[server]\nmemory = \"nats://10.0.0.5:4222/notes\"\n",
    )
    .unwrap();
    let got = show(dir.path(), &[("COLONY_CONFIG", "conf/colony.toml")], &[]);
    assert_eq!(got["server.memory"].0, "nats://10.0.0.5:4222/notes");
    std::fs::write(
        dir.path().join("conf/colony.toml"),
        "[server]\nmemory = \"notes.db\"\n",
    )
    .unwrap();
    let got = show(dir.path(), &[("COLONY_CONFIG", "conf/colony.toml")], &[]);
    assert_eq!(got["server.memory"].0, "conf/notes.db");
}
