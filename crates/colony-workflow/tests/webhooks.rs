//! A workflow's `webhooks:` against real HTTP receivers on loopback: every event delivered
//! once (by its delivery id) with a valid HMAC-SHA256 signature, retried after a 500;
//! receivers that hang or always fail cost the run no more than their drain time, and are
//! never tried forever; a full queue drops and counts; a missing secret stops the run before
//! anything runs; bad blocks refused at their line and column.

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use colony_workflow::{Report, parse};
use hmac::{Hmac, KeyInit, Mac};
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

mod common;
use common::{options, problems};

/// What a receiver does with each request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 500 at a delivery's first request, 200 at the next.
    FailFirst,
    /// 500, always.
    Fail,
    /// Never answers.
    Hang,
}

/// Every request a receiver got: the delivery id, the event, the body, whether its
/// signature was valid, and the status answered.
#[derive(Default)]
struct Received {
    requests: Vec<(String, String, serde_json::Value, bool, u16)>,
}

#[derive(Clone)]
struct Receiver {
    behaviour: Behaviour,
    secret: Option<&'static [u8]>,
    got: Arc<Mutex<Received>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let delivery = header("x-colony-delivery");
    let signed = match r.secret {
        Some(secret) => {
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(&body);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            header("x-colony-signature-256") == format!("sha256={hex}")
        }
        None => headers.get("x-colony-signature-256").is_none(),
    };
    let status = {
        let mut got = r.got.lock().unwrap();
        let seen = got.requests.iter().any(|q| q.0 == delivery);
        let status = match r.behaviour {
            Behaviour::FailFirst if !seen => 500,
            Behaviour::FailFirst => 200,
            Behaviour::Fail => 500,
            Behaviour::Hang => 0,
        };
        let value = serde_json::from_slice(&body).unwrap_or_default();
        got.requests
            .push((delivery, header("x-colony-event"), value, signed, status));
        status
    };
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    StatusCode::from_u16(status).unwrap()
}

/// A receiver on a free loopback port: its URL and what it got.
async fn receiver(
    behaviour: Behaviour,
    secret: Option<&'static [u8]>,
) -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Receiver {
            behaviour,
            secret,
            got: got.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    colony_runtime::spawner::Spawner::spawn("test-receiver", async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, got)
}

async fn run(yaml: &str, out: &Path) -> Report {
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    colony_workflow::run(&w, options(out)).await.unwrap()
}

/// Four tasks: `a` and `b` succeed, `lonely` fails (no message comes), `after` is skipped.
const TASKS: &str = "tasks:
  - {id: a, agent: sim}
  - {id: b, agent: sim, needs: [a]}
  - {id: lonely, agent: sim, wait: {topic: never, timeout: 100ms}}
  - {id: after, agent: sim, needs: [lonely]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_signed_and_retried_after_a_500() {
    // A variable cargo sets for the tests it runs (setting one here would need `unsafe`):
    // the receiver knows the same secret.
    let secret = env!("CARGO_PKG_NAME");
    assert_eq!(std::env::var("CARGO_PKG_NAME").as_deref(), Ok(secret));
    let (url, got) = receiver(Behaviour::FailFirst, Some(secret.as_bytes())).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: hooked\nagents: [{{name: sim, kind: sim, count: 2}}]\nwebhooks:\n  - url: {url}\n    secret-env: CARGO_PKG_NAME\n    events: [run:started, task:succeeded, task:failed, task:skipped, task:cancelled, run:finished]\n{TASKS}"
    );
    let report = run(&yaml, dir.path()).await;
    assert_eq!((report.succeeded, report.failed, report.skipped), (2, 1, 1));
    let got = got.lock().unwrap();
    // Each event: a 500, then the same delivery again, answered 200.
    let mut by_delivery: HashMap<&str, Vec<u16>> = HashMap::new();
    for (delivery, _, _, signed, status) in &got.requests {
        assert!(signed, "a request with a bad signature: {delivery}");
        by_delivery.entry(delivery).or_default().push(*status);
    }
    assert_eq!(by_delivery.len(), 6, "run, 4 tasks, run");
    for (delivery, statuses) in &by_delivery {
        assert_eq!(statuses, &[500, 200], "{delivery}");
    }
    let delivered: Vec<(&str, &serde_json::Value)> = got
        .requests
        .iter()
        .filter(|q| q.4 == 200)
        .map(|q| (q.1.as_str(), &q.2))
        .collect();
    // In order: the run's start first, its end last, with its summary.
    assert_eq!(delivered[0].0, "run:started");
    assert_eq!(delivered[0].1["tasks"], 4);
    assert_eq!(delivered[0].1["run"], "hooked");
    let last = delivered.last().unwrap();
    assert_eq!(last.0, "run:finished");
    let summary = &last.1["summary"];
    assert_eq!(
        (
            &summary["succeeded"],
            &summary["failed"],
            &summary["skipped"]
        ),
        (&2.into(), &1.into(), &1.into())
    );
    assert_eq!(summary["all-succeeded"], false);
    let task_event = |id: &str| {
        delivered
            .iter()
            .find(|(_, v)| v["task"]["id"] == id)
            .unwrap_or_else(|| panic!("no event of {id}"))
    };
    assert_eq!(task_event("a").0, "task:succeeded");
    let lonely = task_event("lonely");
    assert_eq!(lonely.0, "task:failed");
    assert_eq!(lonely.1["event"], "task:failed");
    assert!(
        lonely.1["task"]["error"]
            .as_str()
            .unwrap()
            .contains("no message on topic `never`"),
        "{}",
        lonely.1
    );
    assert_eq!(task_event("after").0, "task:skipped");
    // The summary says so too.
    assert_eq!(report.webhooks.len(), 1);
    let d = &report.webhooks[0];
    assert_eq!(
        (d.delivered, d.failed, d.dropped, d.undelivered, d.requests),
        (6, 0, 0, 0, 12)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["webhooks"][0]["delivered"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_hang_or_fail_do_not_hold_the_run_and_are_not_tried_forever() {
    let (hanging, hung) = receiver(Behaviour::Hang, None).await;
    let (failing, failed) = receiver(Behaviour::Fail, None).await;
    let (tiny, _) = receiver(Behaviour::Hang, None).await;
    let dir = tempfile::tempdir().unwrap();
    // 40 tasks of 50 ms on 4 agents: about half a second of work.
    let mut tasks = String::from("tasks:\n");
    for i in 0..40 {
        tasks.push_str(&format!("  - {{id: t{i}, agent: sim}}\n"));
    }
    let yaml = format!(
        "name: slow-hooks\nagents: [{{name: sim, kind: sim, count: 4, sim: {{latency: 50ms}}}}]\nwebhooks:
  - {{url: {hanging}, events: [task:succeeded], timeout: 1s, attempts: 20, drain: 2s}}
  - {{url: {failing}, events: [run:started, run:finished], attempts: 3, drain: 5s}}
  - {{url: {tiny}, events: [task:succeeded], timeout: 5s, queue: 2, drain: 1s}}
{tasks}"
    );
    let started = Instant::now();
    let report = run(&yaml, dir.path()).await;
    let took = started.elapsed();
    assert_eq!(report.succeeded, 40);
    // The tasks never waited for a webhook: the run's own time is its work's.
    assert!(
        report.seconds < 5.0,
        "the tasks took {:.1} s",
        report.seconds
    );
    // The end waited at most the longest drain (5 s) beyond the work, plus slack.
    assert!(
        took < Duration::from_secs_f64(report.seconds + 5.0 + 3.0),
        "the run took {took:?} for {:.1} s of work",
        report.seconds
    );
    let [hang, fail, small] = &report.webhooks[..] else {
        panic!("{:?}", report.webhooks);
    };
    // The hanging receiver: nothing delivered, what was left counted.
    assert_eq!(hang.delivered, 0);
    assert_eq!(
        hang.dropped + hang.failed + hang.undelivered,
        40,
        "{hang:?}"
    );
    assert!(hang.undelivered > 0, "{hang:?}");
    // The failing one: each event tried exactly `attempts` times, then given up.
    assert_eq!(
        (fail.delivered, fail.failed, fail.requests),
        (0, 2, 6),
        "{fail:?}"
    );
    assert!(
        fail.last_error
            .as_deref()
            .unwrap()
            .contains("answered 500, after 3 attempts"),
        "{fail:?}"
    );
    let failed = failed.lock().unwrap();
    assert_eq!(failed.requests.len(), 6);
    let events: Vec<&str> = failed.requests.iter().map(|q| q.1.as_str()).collect();
    assert_eq!(events.iter().filter(|e| **e == "run:started").count(), 3);
    // A queue of 2 behind a hanging receiver: the rest dropped, and counted.
    assert!(small.dropped >= 37, "{small:?}");
    assert_eq!(small.dropped + small.undelivered, 40, "{small:?}");
    assert!(!hung.lock().unwrap().requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_stops_the_run_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: unsigned\nagents: [{{name: sim, kind: sim}}]\nwebhooks:\n  - {{url: \"http://127.0.0.1:9/hook\", secret-env: COLONY_TEST_NO_SUCH_SECRET}}\n{TASKS}"
    );
    let w = parse(&yaml, "w.yaml", Path::new(".")).unwrap();
    let e = colony_workflow::run(&w, options(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret-env COLONY_TEST_NO_SUCH_SECRET is not set"),
        "{e}"
    );
    assert!(!dir.path().join("a.json").exists(), "a task ran");
    assert!(!dir.path().join("summary.json").exists());
}

#[test]
fn bad_webhooks_are_refused_at_their_place() {
    let p = problems(
        "name: w\nagents: [{name: sim, kind: sim}]\nwebhooks:
  - url: ftp://host/x
  - url: \"not a url\"
  - url: http://ok/hook
    secret-env: \"1-bad\"
    events: [run:started, task:exploded]
    timeout: 2h
    attempts: 0
    queue: 0
    drain: forever
tasks: [{id: t, agent: sim}]\n",
    );
    let expected = [
        "w.yaml:4:10: webhook: `ftp://host/x` is not an http(s) URL with a host",
        "w.yaml:5:10: webhook: `not a url` is not a URL",
        "w.yaml:7:17: webhook: secret-env `1-bad` is not a variable's name",
        "w.yaml:8:27: webhook: no event is called `task:exploded`",
        "w.yaml:9:14: webhook: 2h is too long: allowed up to 1m",
        "w.yaml:12:12: webhook: `forever` is not a duration",
        "w.yaml:10:15: webhook: attempts 0 is out of range: allowed 1..=20",
        "w.yaml:11:12: webhook: queue 0 is out of range: allowed 1..=100000",
    ];
    for e in expected {
        assert!(p.iter().any(|l| l.starts_with(e)), "{e} not in {p:#?}");
    }
    assert_eq!(p.len(), expected.len(), "{p:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_events_are_the_runs_start_its_failures_and_its_end_unsigned() {
    let (url, got) = receiver(Behaviour::FailFirst, None).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "name: defaults\nagents: [{{name: sim, kind: sim, count: 2}}]\nwebhooks: [{{url: {url}}}]\n{TASKS}"
    );
    let report = run(&yaml, dir.path()).await;
    assert_eq!(report.failed, 1);
    let got = got.lock().unwrap();
    let delivered: Vec<&str> = got
        .requests
        .iter()
        .filter(|q| q.4 == 200)
        .map(|q| q.1.as_str())
        .collect();
    assert_eq!(delivered, ["run:started", "task:failed", "run:finished"]);
    assert!(
        got.requests.iter().all(|q| q.3),
        "unsigned, as no secret is set"
    );
}
