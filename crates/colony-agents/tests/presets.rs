//! Every preset against its fake CLI (`tests/fake-cli/fake_cli.py`, which prints what the real
//! CLI prints), through real subprocesses: success, a CLI-reported error with exit 0, a non-zero
//! exit, a rate limit tried again, a hang cut by the attempt's end, a huge output, malformed
//! output and a cut stream; tokens and cost counted; the budget stops new calls.
//!
//! `COLONY_REAL_CLIS=1` also runs each real CLI found on `PATH` once (it costs money).

use bytes::Bytes;
use colony_agents::{
    Agent, Execution, Outcome, Task,
    command::{Command, CommandOptions},
    presets::{CliSettings, Preset},
};
use colony_core::{AgentId, TaskId};
use std::{path::PathBuf, time::Duration};

fn fake(preset: Preset) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake-cli")
        .join(preset.name())
        .to_string_lossy()
        .into_owned()
}

struct Pool {
    command: Command,
    dir: tempfile::TempDir,
}

fn pool(preset: Preset, tune: impl FnOnce(&mut CliSettings)) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let mut cli = CliSettings::new(preset);
    cli.backoff = Duration::from_millis(10);
    cli.price = colony_agents::http::Price {
        input_per_million: 1.0,
        output_per_million: 10.0,
    };
    tune(&mut cli);
    let mut o = CommandOptions::new(fake(preset)).with_preset(cli);
    o.workdir = Some(dir.path().to_string_lossy().into_owned());
    o.logs = Some(dir.path().to_owned());
    Pool {
        command: Command::new(o),
        dir,
    }
}

impl Pool {
    async fn ask(&self, prompt: &str) -> Outcome {
        let payload = serde_json::json!({"task": "t", "prompt": prompt}).to_string();
        match self
            .command
            .handle(Task::new(TaskId(1), 1, AgentId(0), Bytes::from(payload)))
        {
            Execution::Running(f) => f.await,
            Execution::Done(o) => o,
        }
    }
}

fn json(out: &Bytes) -> serde_json::Value {
    serde_json::from_slice(out).unwrap()
}

#[tokio::test]
async fn a_success_gives_the_answer_its_tokens_and_its_cost() {
    for preset in Preset::ALL {
        let p = pool(preset, |_| {});
        let out = json(&p.ask("add a test for parse()").await.unwrap());
        assert_eq!(out["content"], "done: add a test for parse()", "{preset}");
        assert_eq!(out["preset"], preset.name());
        let cost = out["cost_usd"].as_f64().unwrap();
        assert!(cost > 0.0, "{preset}: {out}");
        assert!(out["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{out}");
        assert!(
            out["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{out}"
        );
        // The pool's count is the calls' sum.
        p.ask("again").await.unwrap();
        let usage = p.command.usage();
        assert!(
            usage.cost_usd > cost && usage.cost_usd < 3.0 * cost,
            "{preset}: {usage:?}"
        );
    }
    // The CLI's own cost wins; codex and gemini are priced from their tokens.
    let claude = json(&pool(Preset::Claude, |_| {}).ask("x").await.unwrap());
    assert_eq!(claude["cost_usd"], 0.0125);
    let codex = json(&pool(Preset::Codex, |_| {}).ask("x").await.unwrap());
    let expected = (1001.0 * 1.0 + 200.0 * 10.0) / 1e6;
    assert!(
        (codex["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{codex}"
    );
}

#[tokio::test]
async fn the_prompt_goes_to_stdin_and_the_settings_to_arguments() {
    let p = pool(Preset::Claude, |c| {
        c.model = Some("sonnet".into());
        c.max_turns = Some(4);
    });
    let out = json(&p.ask("-rf / [echo-args]").await.unwrap());
    assert_eq!(
        out["content"],
        "-p --output-format json --model sonnet --max-turns 4"
    );
    assert_eq!(out["model"], "sonnet");
    let codex = json(
        &pool(Preset::Codex, |_| {})
            .ask("[echo-args]")
            .await
            .unwrap(),
    );
    assert_eq!(codex["content"], "exec --json --skip-git-repo-check -");
}

#[tokio::test]
async fn an_error_the_cli_reports_fails_even_with_exit_0() {
    // Claude, codex, aider and opencode exit 0 here; gemini writes its error to stderr and
    // exits 1, as it does.
    for preset in Preset::ALL {
        let err = pool(preset, |_| {}).ask("[error]").await.unwrap_err();
        assert!(err.is_retryable(), "{preset}");
        assert!(
            err.to_string()
                .contains("reported an error: the fake CLI reports a failure"),
            "{preset}: {err}"
        );
    }
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_its_stderr() {
    for preset in Preset::ALL {
        let p = pool(preset, |_| {});
        let err = p.ask("[exit]").await.unwrap_err().to_string();
        assert!(err.contains("exited with 2"), "{preset}: {err}");
        assert!(err.contains("told to fail"), "{preset}: {err}");
        assert!(
            p.dir.path().join("t.1.stderr").exists(),
            "{preset}: the log"
        );
    }
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_within_the_attempt() {
    for preset in Preset::ALL {
        let p = pool(preset, |_| {});
        let out = p.ask("fix it [rate-limit 2]").await.unwrap();
        assert!(json(&out)["content"].as_str().unwrap().starts_with("done"));
        let calls = std::fs::read_to_string(p.dir.path().join(format!(".fake-{preset}-calls")));
        assert_eq!(calls.unwrap(), "3", "{preset}: two refused, then answered");
    }
    // Retries run out: the attempt fails, retryably, saying so.
    let p = pool(Preset::Gemini, |c| c.max_retries = 1);
    let err = p.ask("[rate-limit 5]").await.unwrap_err();
    assert!(err.is_retryable());
    assert!(err.to_string().contains("rate-limited 2 times"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cli_goes_with_its_attempt() {
    // Every preset at once: each attempt cut after 2 s, as a task's timeout cuts it.
    let pools: Vec<(Preset, Pool)> = Preset::ALL.iter().map(|&p| (p, pool(p, |_| {}))).collect();
    let late = futures::future::join_all(
        pools
            .iter()
            .map(|(_, p)| tokio::time::timeout(Duration::from_secs(2), p.ask("[hang]"))),
    )
    .await;
    for ((preset, p), late) in pools.iter().zip(late) {
        assert!(late.is_err(), "{preset}: it never answers");
        let pid: i32 = std::fs::read_to_string(p.dir.path().join(".fake-pid"))
            .unwrap()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
        assert!(gone, "{preset}: process {pid} outlived its attempt");
    }
}

#[tokio::test]
async fn huge_malformed_and_cut_outputs_fail() {
    for preset in Preset::ALL {
        let p = pool(preset, |_| {});
        let err = p.ask("[huge]").await.unwrap_err();
        assert!(!err.is_retryable() && err.to_string().contains("stdout exceeds"));
        for case in ["[garbage]", "[partial]"] {
            let err = p.ask(case).await.unwrap_err().to_string();
            assert!(
                err.contains("exited with 0 but printed what colony cannot read"),
                "{preset} {case}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn the_budget_stops_new_calls_once_spent() {
    let p = pool(Preset::Claude, |c| c.budget_usd = Some(0.02));
    p.ask("one").await.unwrap();
    p.ask("two").await.unwrap();
    let err = p.ask("three").await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("budget spent: $0.0250 of $0.0200"),
        "{err}"
    );
}

#[tokio::test]
async fn a_task_without_a_prompt_is_refused() {
    let p = pool(Preset::Codex, |_| {});
    let out = p.command.handle(Task::new(
        TaskId(1),
        1,
        AgentId(0),
        Bytes::from(r#"{"task":"t","input":null}"#),
    ));
    let Execution::Running(f) = out else { panic!() };
    let err = f.await.unwrap_err().to_string();
    assert!(err.contains("needs a prompt"), "{err}");
}

/// Each real CLI on `PATH`, once, when `COLONY_REAL_CLIS=1`: a paid call.
#[tokio::test]
async fn real_clis_when_asked() {
    if std::env::var("COLONY_REAL_CLIS").as_deref() != Ok("1") {
        eprintln!("skipped: set COLONY_REAL_CLIS=1 to call the real CLIs found on PATH");
        return;
    }
    for preset in Preset::ALL {
        let Some(program) = colony_agents::command::on_path(preset.program()) else {
            eprintln!("{preset}: not on PATH; skipped");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut o = CommandOptions::new(program).with_preset(CliSettings::new(preset));
        o.workdir = Some(dir.path().to_string_lossy().into_owned());
        let command = Command::new(o);
        let payload = r#"{"task":"t","prompt":"Answer with the single word: pong"}"#;
        let Execution::Running(f) =
            command.handle(Task::new(TaskId(1), 1, AgentId(0), Bytes::from(payload)))
        else {
            panic!()
        };
        let out = json(&f.await.unwrap_or_else(|e| panic!("{preset}: {e}")));
        assert!(
            out["content"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("pong"),
            "{preset}: {out}"
        );
    }
}
