//! The dashboard in a real browser: headless Chromium, driven through chromedriver, against
//! a server with tokens and a runtime under load. It signs in through the form, watches the
//! counters move, drills down the hierarchy to the workers, checks the charts drew (the pools
//! chart from the server's history, and again after a resize) and that
//! the browser refused nothing under the Content-Security-Policy, and saves a screenshot to
//! `target/dashboard.png`. A second test does the same for the cluster's dashboard (`colony serve
//! --nats`) over a real NATS server and a node: `target/cluster-dashboard.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the
//! test fails, unless `COLONY_SKIP_BROWSER=1`.

use colony_agents::sim::{Latency, SimOptions};
use colony_core::task::TaskSpec;
use colony_runtime::{Runtime, RuntimeOptions, spawner::Spawner};
use colony_server::testing::until;
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

/// How often a test looks again at what it waits for.
const POLL: Duration = Duration::from_millis(200);

/// A workflow for the runs panel: a command task that writes on stderr and says its cost.
const RUN: &str = r#"
name: shown
agents:
  - { name: planner, kind: sim, sim: { latency: 5ms } }
  - name: tool
    kind: command
    command: { program: sh, args: ["-c", "echo working >&2; echo '{\"cost_usd\": 0.25}'"] }
tasks:
  - { id: plan, agent: planner }
  - { id: measure, agent: tool, needs: [plan] }
"#;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser's binaries are here; when they are not, a failure, unless the caller
/// said to skip.
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("COLONY_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!(
            "skipping the browser test: {} missing and COLONY_SKIP_BROWSER=1",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "the browser test needs {}: install them with `apt-get install -y chromium chromium-driver` \
         (as .ci/run does), or set COLONY_SKIP_BROWSER=1 to skip it",
        missing.join(" and ")
    );
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    url: String,
    _child: tokio::process::Child,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let ready = until(Duration::from_secs(20), POLL, || async {
            let r = reqwest::get(&status).await.ok()?;
            let v: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
            v["value"]["ready"].as_bool().filter(|&ready| ready)
        })
        .await;
        assert!(
            ready.is_some(),
            "chromedriver did not become ready at {url}"
        );
        Self { url, _child: child }
    }
}

async fn start_runtime() -> Runtime {
    let sim = SimOptions {
        seed: 7,
        latency: Latency::Uniform {
            min: Duration::from_millis(5),
            max: Duration::from_millis(60),
        },
        error_rate: 0.03,
        crash_rate: 0.002,
        hang_rate: 0.0,
        stands_in_for: None,
    };
    colony_server::testing::sim_runtime(400, sim, RuntimeOptions::default()).await
}

/// Submits a batch of tasks every 100 ms until aborted; one in ten may be tried only once,
/// so that some fail for good.
fn keep_busy(runtime: &Runtime) -> tokio::task::JoinHandle<Option<()>> {
    let handle = runtime.handle().clone();
    Spawner::spawn("browser-test-load", async move {
        let mut n = 0u64;
        loop {
            let batch: Vec<TaskSpec> = (0..60)
                .map(|i| {
                    n += 1;
                    let mut spec = TaskSpec::with_payload(json!({ "n": n }).to_string());
                    if i % 10 == 0 {
                        spec.max_attempts = 1;
                    }
                    spec
                })
                .collect();
            if handle.submit_batch(batch).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn text(client: &Client, css: &str) -> Option<String> {
    client.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// A counter tile's value.
async fn counter(client: &Client, name: &str) -> Option<u64> {
    let text = text(client, &format!("#stat-{name}")).await?;
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// The first element `css` finds, waiting for it.
async fn wait_for(client: &Client, css: &str, timeout: Duration) -> Element {
    until(timeout, POLL, || async {
        client.find(Locator::Css(css)).await.ok()
    })
    .await
    .unwrap_or_else(|| panic!("no {css} on the page after {timeout:?}"))
}

/// Clicks the first `css` that can be clicked (a fragment may be swapped between finding a
/// button and clicking it) and returns its `data-agent`.
async fn click_agent(client: &Client, css: &str) -> String {
    until(Duration::from_secs(10), POLL, || async {
        let button = client.find(Locator::Css(css)).await.ok()?;
        let agent = button.attr("data-agent").await.ok()??;
        button.click().await.ok()?;
        Some(agent)
    })
    .await
    .unwrap_or_else(|| panic!("could not click {css}"))
}

/// What the browser logged: console messages and refusals (a CSP violation is one).
async fn browser_log(driver: &Driver, client: &Client) -> Vec<Value> {
    let session = client.session_id().await.unwrap().unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/session/{session}/se/log", driver.url))
        .header("content-type", "application/json")
        .body(json!({ "type": "browser" }).to_string())
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    body["value"]
        .as_array()
        .unwrap_or_else(|| panic!("chromedriver gave no browser log: {body}"))
        .clone()
}

/// Saves a screenshot as `target/<name>` of the workspace (made if missing: a clean clone
/// may build elsewhere).
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
}

/// A headless Chromium session through `driver`, its profile under `dir`.
async fn browser(driver: &Driver, dir: &Path) -> Client {
    let profile = dir.join("chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1440,2300",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a chromedriver session")
}

/// Signs in through the form with `token`.
async fn sign_in(client: &Client, url: &str, token: &str) {
    client.goto(url).await.unwrap();
    let field = wait_for(client, "input[name=token]", Duration::from_secs(10)).await;
    field.send_keys(token).await.unwrap();
    client
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// What the browser logged that is a problem: errors, and refusals under the CSP.
async fn problems(driver: &Driver, client: &Client) -> Vec<Value> {
    browser_log(driver, client)
        .await
        .into_iter()
        .filter(|entry| {
            let message = entry["message"].as_str().unwrap_or("");
            entry["level"] == "SEVERE"
                || message.contains("Content Security Policy")
                || message.contains("Content-Security-Policy")
        })
        .collect()
}

/// The dashboard of `colony serve --nats` in a real browser, over a real NATS server and a
/// node in this process: signed in through the form, it shows the node and its role, the
/// event stream connects and lists task records as the node ends them, the roles chart
/// draws each role and marks a scaling step, and the browser refuses nothing under the
/// Content-Security-Policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_dashboard_shows_nodes_and_records_in_a_browser() {
    use colony_cluster::{Cluster, Node, NodeOptions, Settings, testing::NatsServer};
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = tokio::task::block_in_place(|| NatsServer::single(dir.path())).unwrap();
    let settings = Settings {
        replicas: 1,
        ..Settings::default()
    };
    let url = nats.url();
    let connect = || Cluster::connect(&url, settings.clone());
    let runtime = colony_server::testing::sim_runtime(
        8,
        SimOptions {
            latency: Latency::Fixed {
                value: Duration::from_millis(5),
            },
            ..SimOptions::default()
        },
        RuntimeOptions::default(),
    )
    .await;
    let node = Node::start(
        connect().await.unwrap(),
        runtime.handle().clone(),
        NodeOptions {
            name: "node-one".into(),
            max_in_flight: 16,
            drain_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    let cluster = connect().await.unwrap();
    let scaling = colony_cluster::scaling::Scaling::start(
        cluster.clone(),
        "s1",
        colony_cluster::scaling::ScalingPlan {
            lease: Duration::from_secs(2),
            period: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tokens_file = dir.path().join("tokens");
    let token =
        colony_server::Tokens::create(&tokens_file, "viewer", colony_server::Scope::Read).unwrap();
    let config = colony_server::Config {
        tokens: Some(colony_server::Tokens::load(&tokens_file).unwrap()),
        ..colony_server::testing::local()
    };
    let server = colony_server::cluster::serve_cluster(
        cluster.clone(),
        scaling.observer(),
        Duration::from_millis(500),
        config,
    )
    .await
    .unwrap();

    let driver = Driver::start().await;
    let client = browser(&driver, dir.path()).await;
    sign_in(&client, &server.url(), &token).await;

    // The node and its role, and the stream connected.
    wait_for(&client, "#stat-nodes", Duration::from_secs(10)).await;
    let nodes = until(Duration::from_secs(10), POLL, || counter(&client, "nodes")).await;
    assert_eq!(nodes, Some(1));
    let row = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#node-table tbody tr")
            .await
            .filter(|t| t.contains("node-one"))
    })
    .await
    .expect("the node's row");
    assert!(
        row.contains("worker (8 slots)") && row.contains("taking work"),
        "{row}"
    );
    let live = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#live").await.filter(|t| t == "live")
    })
    .await;
    assert!(live.is_some(), "the event stream did not connect");
    // The node answered for its workers: none is in trouble.
    let troubled = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#troubled").await.filter(|t| !t.is_empty())
    })
    .await
    .expect("the agents panel");
    assert!(
        troubled.contains("Every worker of every node that answered is healthy")
            && !troubled.contains("No answer"),
        "{troubled}"
    );
    // Every agent is listed too, as its node answers for it: its workers among them.
    let listed = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#agent-list")
            .await
            .filter(|t| t.contains("node-one") && t.contains("worker") && t.contains("healthy"))
    })
    .await;
    assert!(listed.is_some(), "{:?}", text(&client, "#agent-list").await);
    let rows = client
        .find_all(Locator::Css("#agent-table tbody tr"))
        .await
        .unwrap()
        .len();
    assert_eq!(rows, 5, "a page of five of each node's when none is named");
    // Paged on: the node's next page, and the way back to every node.
    client
        .find(Locator::Css("#agent-list button.more"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let paged = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#agent-list")
            .await
            .filter(|t| t.contains("Back to every node"))
    })
    .await;
    assert!(paged.is_some(), "{:?}", text(&client, "#agent-list").await);

    // Tasks end on the node; their records come into the list.
    let specs: Vec<TaskSpec> = (0..5)
        .map(|n| {
            let mut spec = TaskSpec::with_payload(json!({ "n": n }).to_string());
            spec.requirement.role = Some("worker".into());
            spec
        })
        .collect();
    let submitted = cluster.submit(&specs, None).await.unwrap();
    let listed = until(Duration::from_secs(15), POLL, || async {
        let items = client.find_all(Locator::Css("#events li.ok")).await.ok()?;
        (items.len() >= submitted.len()).then_some(items.len())
    })
    .await;
    assert!(
        listed.is_some(),
        "the records of {} tasks were not listed",
        submitted.len()
    );
    let newest = text(&client, "#events li.ok").await.unwrap_or_default();
    assert!(
        newest.contains("succeeded (attempt 1 on node-one)"),
        "{newest:?}"
    );
    // The tasks ended were counted from the stream, and the chart drew.
    let total = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#ended-total")
            .await
            .filter(|t| t.starts_with(&format!("{} succeeded", submitted.len())))
    })
    .await;
    assert!(total.is_some(), "{:?}", text(&client, "#ended-total").await);
    wait_for(
        &client,
        "#chart-ended .uplot canvas",
        Duration::from_secs(5),
    )
    .await;
    let role = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#role-table tbody")
            .await
            .filter(|t| t.lines().any(|row| row.starts_with("worker")))
    })
    .await;
    assert!(role.is_some(), "the role's row");
    // The roles chart: the server's samples of each role's agents and backlog.
    wait_for(
        &client,
        "#chart-roles .uplot canvas",
        Duration::from_secs(10),
    )
    .await;
    let now = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#roles-now")
            .await
            .filter(|t| t.contains("worker: 8 agents"))
    })
    .await;
    assert!(now.is_some(), "{:?}", text(&client, "#roles-now").await);
    // A step of the scaling leader is marked on the chart, and the latest said under it
    // (the leader of this test may step too: the marks are counted).
    let marks = || async {
        let legend = client.find(Locator::Css("#roles-now")).await.ok()?;
        legend.attr("data-marks").await.ok()??.parse::<u64>().ok()
    };
    let before = marks().await.unwrap_or(0);
    let step = colony_cluster::roles::RoleDecision {
        t: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        role: "worker".into(),
        from: 1,
        to: 2,
        reason: "high-backlog".into(),
        blocked_by: None,
    };
    cluster.publish_role_decision(&step, 1).await.unwrap();
    let marked = until(Duration::from_secs(10), POLL, || async {
        marks().await.filter(|&n| n > before)
    })
    .await;
    assert!(marked.is_some(), "{:?}", text(&client, "#roles-now").await);
    // Said under the chart once the page has it (the leader's own held step may come first).
    let said = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#roles-now")
            .await
            .filter(|t| t.contains("last step: worker ") && t.contains(" nodes ("))
    })
    .await;
    assert!(said.is_some(), "{:?}", text(&client, "#roles-now").await);
    // A step the leader wanted and was held from is marked too, and said as held (this
    // one, or the test's own leader's: idle at its floor, it is held by `at-min`).
    let held = colony_cluster::roles::RoleDecision {
        t: step.t + 1,
        from: 2,
        to: 2,
        reason: "overload".into(),
        blocked_by: Some("cooldown".into()),
        ..step.clone()
    };
    cluster.publish_role_decision(&held, 1).await.unwrap();
    let said = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#roles-now").await.filter(|t| {
            t.contains("held: worker at ") && t.contains(" nodes, wanted ") && t.contains(" (by ")
        })
    })
    .await;
    assert!(said.is_some(), "{:?}", text(&client, "#roles-now").await);
    // Opened again, the page starts from what the server saw: the counts, the chart's
    // seconds and the records, not from nothing.
    client.refresh().await.unwrap();
    let again = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#ended-total").await.filter(|t| {
            t.starts_with(&format!("{} succeeded", submitted.len()))
                && !t.contains("this page opened")
        })
    })
    .await;
    assert!(again.is_some(), "{:?}", text(&client, "#ended-total").await);
    let listed = client
        .find_all(Locator::Css("#events li.ok"))
        .await
        .unwrap()
        .len();
    assert!(
        listed >= submitted.len(),
        "{listed} records listed after a reload"
    );
    wait_for(
        &client,
        "#chart-ended .uplot canvas",
        Duration::from_secs(5),
    )
    .await;

    screenshot(&client, "cluster-dashboard.png").await;
    let problems = problems(&driver, &client).await;
    assert!(problems.is_empty(), "the browser complained: {problems:#?}");

    client.close().await.unwrap();
    server.stop();
    scaling.resign().await;
    node.drain().await;
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_runtime_in_a_browser() {
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("tokens");
    let token =
        colony_server::Tokens::create(&tokens_file, "viewer", colony_server::Scope::Read).unwrap();
    let admin =
        colony_server::Tokens::create(&tokens_file, "ops", colony_server::Scope::Admin).unwrap();
    let runtime = start_runtime().await;
    let config = colony_server::Config {
        tokens: Some(colony_server::Tokens::load(&tokens_file).unwrap()),
        runs: Some(dir.path().join("runs")),
        ..colony_server::testing::local()
    };
    let (server, _) = colony_server::testing::serve(&runtime, config).await;
    let load = keep_busy(&runtime);

    let driver = Driver::start().await;
    let client = browser(&driver, dir.path()).await;

    // Signed out, the page is a sign-in form; the token goes in, the cookie comes back.
    sign_in(&client, &server.url(), &token).await;

    // The counters come in and move.
    wait_for(&client, "#stat-succeeded", Duration::from_secs(10)).await;
    let first = until(Duration::from_secs(10), POLL, || {
        counter(&client, "succeeded")
    })
    .await
    .expect("a succeeded counter");
    let later = until(Duration::from_secs(15), POLL, || async {
        counter(&client, "succeeded").await.filter(|&n| n > first)
    })
    .await;
    assert!(
        later.is_some(),
        "the succeeded counter stayed at {first} for 15 s"
    );
    let live = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#live").await.filter(|t| t == "live")
    })
    .await;
    assert!(live.is_some(), "the event stream did not connect");

    // Down the hierarchy: a root, then children, until workers are listed.
    wait_for(&client, "#roots button.root", Duration::from_secs(10)).await;
    let mut agent = click_agent(&client, "#roots button.root").await;
    let mut reached_workers = false;
    for _ in 0..8 {
        let shown = format!("#drill .detail[data-agent=\"{agent}\"]");
        wait_for(&client, &shown, Duration::from_secs(10)).await;
        if client.find(Locator::Css("#drill tr.worker")).await.is_ok() {
            reached_workers = true;
            break;
        }
        agent = click_agent(&client, "#drill tr.manager button.drill").await;
    }
    assert!(reached_workers, "no worker rows after drilling down");
    let worker = text(&client, "#drill tr.worker").await.unwrap_or_default();
    assert!(worker.contains("sim / worker"), "a worker row: {worker:?}");

    // Every chart drew, and the failures and tasks panels filled in.
    for chart in ["throughput", "latency", "queue", "recoveries"] {
        wait_for(
            &client,
            &format!("#chart-{chart} .uplot canvas"),
            Duration::from_secs(5),
        )
        .await;
    }
    wait_for(&client, "#tasks-table tbody tr", Duration::from_secs(10)).await;

    // The pools chart draws the pool's series from the server's history; a resize shows in
    // its data (the table under it reads the chart's newest values) and as a decision.
    wait_for(
        &client,
        "#chart-pools .uplot canvas",
        Duration::from_secs(10),
    )
    .await;
    // (The legend's style sheet shows it in capitals.)
    let legend = text(&client, "#chart-pools .u-legend")
        .await
        .unwrap_or_default()
        .to_lowercase();
    for series in [
        "sim/worker agents",
        "sim/worker desired",
        "sim/worker backlog",
    ] {
        assert!(legend.contains(series), "no {series:?} in {legend:?}");
    }
    let agents = "#pool-now tr[data-pool=\"0\"] td:nth-child(2)";
    let shown = until(Duration::from_secs(10), POLL, || async {
        text(&client, agents).await.filter(|t| t == "400")
    })
    .await;
    assert!(shown.is_some(), "the pool's 400 agents are not shown");
    let samples = |client: Client| async move {
        let chart = client.find(Locator::Css("#chart-pools")).await.ok()?;
        chart.attr("data-samples").await.ok()??.parse::<u64>().ok()
    };
    let before = samples(client.clone()).await.expect("samples on the chart");
    let r = reqwest::Client::new()
        .put(format!("{}/v1/pools/0", server.url()))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({"agents": 300}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let shown = until(Duration::from_secs(10), POLL, || async {
        text(&client, agents).await.filter(|t| t == "300")
    })
    .await;
    assert!(
        shown.is_some(),
        "the resize to 300 agents did not reach the chart"
    );
    let after = samples(client.clone()).await.expect("samples on the chart");
    assert!(
        after > before,
        "the chart took no new samples: {before} then {after}"
    );
    let decision = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#pool-decisions li[data-kind=\"scale:manual\"]").await
    })
    .await
    .expect("the resize listed among the decisions");
    assert!(decision.contains("400 → 300"), "{decision:?}");
    let marks = client
        .find(Locator::Css("#chart-pools"))
        .await
        .unwrap()
        .attr("data-marks")
        .await
        .unwrap();
    assert_eq!(
        marks.as_deref(),
        Some("1"),
        "the resize marked on the chart"
    );
    wait_for(&client, "#population-table", Duration::from_secs(10)).await;

    // Let the charts gather a few seconds of history for the screenshot.
    tokio::time::sleep(Duration::from_secs(6)).await;
    screenshot(&client, "dashboard.png").await;

    // Untrusted output shows as text, and runs nothing.
    load.abort();
    let mut xss = TaskSpec::with_payload(r#""<script>alert(1)</script>""#);
    xss.key = Some("<b>bold</b>".into());
    runtime.handle().submit(xss).await.unwrap();
    runtime.handle().drain().await.unwrap();
    let select = client.find(Locator::Css("#task-state")).await.unwrap();
    select.select_by_value("succeeded").await.unwrap();
    let shown = until(Duration::from_secs(10), POLL, || async {
        text(&client, "#tasks-table")
            .await
            .filter(|t| t.contains("<script>alert(1)</script>") && t.contains("<b>bold</b>"))
    })
    .await;
    assert!(shown.is_some(), "the task with markup in it is not listed");
    let injected = client
        .execute(
            "return document.querySelectorAll('#tasks script, #tasks b').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "markup from a task reached the page");

    // A workflow run shows in the runs panel, each task with its state and its files one
    // click away (the cookie is enough to read them).
    let posted = reqwest::Client::new()
        .post(format!("{}/v1/runs", server.url()))
        .bearer_auth(&admin)
        .header("content-type", "application/yaml")
        .body(RUN)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let row = r#"#runs tr[data-task="measure"]"#;
    let shown = until(Duration::from_secs(20), POLL, || async {
        text(&client, row)
            .await
            .filter(|t| t.contains("succeeded") && t.contains("stderr 1"))
    })
    .await;
    assert!(
        shown.is_some(),
        "the run's task is not shown with its files"
    );
    let fetched = client
        .execute(
            &format!(
                "return Promise.all(Array.from(document.querySelectorAll('{row} a'))\
                 .map(a => fetch(a.href).then(r => r.status)))"
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fetched, json!([200, 200]), "the result and the stderr log");

    // Nothing was refused under the Content-Security-Policy, and nothing else went wrong.
    let problems = problems(&driver, &client).await;
    assert!(problems.is_empty(), "the browser complained: {problems:#?}");
    // And the check would have seen one: break the policy on purpose and look again.
    client
        .execute(
            "const img = document.createElement('img'); \
             img.src = 'https://colony.invalid/x.png'; document.body.append(img);",
            vec![],
        )
        .await
        .unwrap();
    let refused = until(Duration::from_secs(5), POLL, || async {
        browser_log(&driver, &client)
            .await
            .into_iter()
            .find(|entry| {
                entry["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Content Security Policy"))
            })
    })
    .await;
    assert!(
        refused.is_some(),
        "a refused image does not show in the browser log, so its silence above proves nothing"
    );

    client.close().await.unwrap();
    server.stop();
    runtime.shutdown().await;
}
