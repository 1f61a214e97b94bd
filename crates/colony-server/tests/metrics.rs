//! The Prometheus text of a server that ran work, checked by Prometheus's own `promtool`.

use colony_agents::{
    AgentSpec,
    sim::{Latency, Sim, SimOptions},
};
use colony_journal::{SqliteJournal, SqliteOptions};
use colony_runtime::{Pool, Runtime, RuntimeOptions};
use std::{io::Write, process::Stdio, sync::Arc, time::Duration};

/// The alert rules shipped for Prometheus, and their unit tests.
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/prometheus/alerts.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/prometheus/alerts.test.yml"
);

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Runs `promtool ARGS`: whether it succeeded, and what it said.
fn run_promtool(args: &[&str]) -> (bool, String) {
    let promtool = promtool();
    let out = std::process::Command::new(&promtool)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {promtool} ({e}): install Debian's `prometheus` package (.ci/run does), or point PROMTOOL at promtool"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn the_alert_rules_are_valid_and_fire_when_backups_fail_or_budgets_run_out() {
    let (ok, said) = run_promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool refused the rules:\n{said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
    // The unit tests name the rules file relative to themselves.
    let (ok, said) = run_promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "the alert rules' tests failed:\n{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_and_every_promised_series_is_there() {
    let promtool = promtool();
    colony_server::install_metrics();
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(SqliteOptions::new(dir.path().join("j.db"))).unwrap();
    let sim = SimOptions {
        error_rate: 0.1,
        latency: Latency::Fixed {
            value: Duration::from_millis(1),
        },
        ..SimOptions::default()
    };
    let pool = Pool::new(
        AgentSpec::new("sim", "worker"),
        50,
        Arc::new(Sim::new(sim).unwrap()),
    );
    let runtime = Runtime::start(RuntimeOptions::default(), vec![pool], Arc::new(journal))
        .await
        .unwrap();
    // Backed up as `serve --backup-to` does, so that its series are there too.
    let backups = colony_server::backup::Backups::new(colony_server::backup::Backup {
        db: dir.path().join("j.db"),
        to: colony_journal::sqlite::Location::File(dir.path().join("copy.db")),
        every: Duration::from_secs(3600),
    });
    // A pool of a coding-agent CLI (the fake `claude`), so that the spending series are
    // there too.
    let fake = std::path::absolute(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../colony-agents/tests/fake-cli/claude"
    ))
    .unwrap();
    let pools = colony_workflow::parse(
        &format!(
            "name: p\nagents:\n  - name: coder\n    kind: command\n    preset: claude\n    \
             command: {{program: \"{}\", budget-usd: 2}}\ntasks: [{{id: t, agent: coder}}]\n",
            fake.display()
        ),
        "p.yaml",
        dir.path(),
    )
    .unwrap();
    let (_, spend) = colony_workflow::agents(&pools.pools, dir.path()).unwrap();
    let server = colony_server::serve(
        runtime.handle().clone(),
        colony_server::Config {
            backup: Some(backups.clone()),
            spend,
            ..colony_server::Config::local("127.0.0.1:0".parse().unwrap())
        },
    )
    .await
    .unwrap();
    let h = runtime.handle();
    for _ in 0..4 {
        h.submit_batch(vec![colony_core::task::TaskSpec::default(); 500])
            .await
            .unwrap();
    }
    h.drain().await.unwrap();
    h.kill(colony_core::AgentId(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let backed_up =
        colony_server::testing::until(Duration::from_secs(30), Duration::from_millis(20), || {
            let succeeded = backups.status().succeeded;
            async move { (succeeded > 0).then_some(()) }
        })
        .await;
    assert!(backed_up.is_some(), "no backup: {:?}", backups.status());
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "colony_agents{tier=",
        "colony_agents_down{tier=",
        "colony_agents_spawned_total",
        "colony_spawn_duration_seconds_bucket{le=",
        "colony_dispatch_latency_seconds_bucket{le=",
        "colony_task_latency_seconds_bucket{le=",
        "colony_attempt_duration_seconds_bucket{le=",
        "colony_journal_commit_seconds_bucket{le=",
        "colony_tasks_queued",
        "colony_tasks_running",
        "colony_tasks_finished_total{state=\"succeeded\"}",
        "colony_task_retries_total",
        "colony_agent_restarts_total{cause=",
        "colony_work_steals_total",
        "colony_tasks_rebalanced_total",
        "colony_backup_last_success_timestamp_seconds",
        "colony_backup_last_duration_seconds",
        "colony_backup_last_size_bytes",
        "colony_backups_total{outcome=\"ok\"}",
        "colony_backup_consecutive_failures",
        "colony_backup_interval_seconds",
        "colony_pool_spent_usd{pool=\"coder\"}",
        "colony_pool_tokens{pool=\"coder\",kind=\"prompt\"}",
        "colony_pool_budget_usd{pool=\"coder\"} 2",
    ] {
        assert!(text.contains(series), "{series} is missing:\n{text}");
    }
    // Every metric the Grafana dashboard queries is one the server exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/colony.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("colony_"));
            for name in names {
                queried += 1;
                assert!(
                    text.contains(&format!("\n{name}")),
                    "the dashboard's panel {:?} queries {name}, which /metrics lacks",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried > 20, "{queried}");
    // And every metric the alert rules use.
    let rules = std::fs::read_to_string(RULES).unwrap();
    let mut used = 0;
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(|expr| expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("colony_"))
    {
        used += 1;
        assert!(
            text.contains(&format!("\n{name}")),
            "the alert rules use {name}, which /metrics lacks"
        );
    }
    assert!(used >= 4, "{used}");
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {promtool} ({e}): install Debian's `prometheus` package (.ci/run does), or point PROMTOOL at promtool"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{said}"
    );
    // promtool's lint findings (naming, help texts) are problems too.
    assert!(said.trim().is_empty(), "promtool found problems:\n{said}");
    server.stop();
    runtime.shutdown().await;
}
