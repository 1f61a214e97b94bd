//! The web dashboard, served from the binary: no Node at build or run time, no request to any
//! other origin.
//!
//! - `GET /` is the page shell, open to all because it holds no data; a server with tokens
//!   shows a browser without a valid cookie a sign-in form instead (it posts to `/login`,
//!   which sets the cookie; `POST /logout` clears it).
//! - `GET /assets/{name}`: htmx, uPlot and the dashboard's own script and style sheet,
//!   embedded in the binary (the `assets` module; `assets/VENDORED.md` says which versions).
//! - `GET /ui/...` [read]: HTML fragments rendered here and pulled by htmx every few
//!   seconds: counters, population by tier and health, the hierarchy one agent at a time,
//!   the task table and recent failures. The charts and the list of events come from the
//!   event stream (`/v1/events`) in `dashboard.js`.
//!
//! Agents' output is untrusted. Every value put into HTML is escaped (`html::Esc`), and
//! every response here carries a strict Content-Security-Policy ([`CSP`]): scripts and styles
//! from this origin only, none inline, so that markup slipping through could still run
//! nothing. Every route that shows something is a GET that changes nothing.

mod assets;
pub(crate) mod cluster;
mod html;

use crate::{App, agents, auth, auth::Gate, tasks};
use axum::{
    Router,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::map_response,
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use colony_core::{AgentId, task::TaskState};
use colony_journal::TaskRow;
use serde::Deserialize;
use std::sync::Arc;

/// The Content-Security-Policy of every dashboard response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Failures the failures panel lists.
const FAILURES: usize = 20;

/// Dashboard routes that show data: behind the `read` scope.
pub(crate) fn read_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui/stats", get(stats))
        .route("/ui/population", get(population))
        .route("/ui/hierarchy", get(hierarchy))
        .route("/ui/agents/{id}", get(agent))
        .route("/ui/tasks", get(task_table))
        .route("/ui/failures", get(failures))
        .route("/ui/decisions", get(decisions))
        .route("/ui/memory", get(memory))
        .route("/ui/messages", get(messages))
        .route("/ui/runs", get(runs))
        .layer(map_response(secure))
}

/// Dashboard routes open to all: the page shell, its assets and the login form.
pub(crate) fn open_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(assets::serve))
        .route("/logout", post(logout))
        .layer(map_response(secure))
}

/// Adds the security headers every dashboard response carries.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// HTML that is never cached: it is live, and may be somebody's data.
fn fresh(status: StatusCode, body: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn ok(body: String) -> Response {
    fresh(StatusCode::OK, body)
}

/// Whether the browser may see data: the server has no tokens, or its cookie holds one. An
/// unknown token counts against the address's budget of failures, as anywhere else.
fn signed_in(gate: &Gate, address: std::net::IpAddr, headers: &HeaderMap) -> bool {
    let Some(tokens) = &gate.tokens else {
        return true;
    };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(auth::COOKIE)?.strip_prefix('='))
        .any(|token| matches!(auth::verify(gate, tokens, address, token), Ok(Some(_))))
}

/// `GET /`.
async fn page(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let version = assets::version();
    if signed_in(&app.gate, peer.ip(), &headers) {
        ok(html::shell(version, app.gate.tokens.is_some()))
    } else {
        ok(html::login(version))
    }
}

/// `POST /logout`: forgets the cookie. Refused when another site's page sends it.
async fn logout(State(gate): State<Gate>, headers: HeaderMap) -> Response {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none");
    if cross_site {
        return crate::problem(
            StatusCode::FORBIDDEN,
            "cross-site",
            "sign out from the dashboard itself",
        );
    }
    let secure = if gate.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/{secure}",
        auth::COOKIE
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /ui/stats`: the counters.
async fn stats(State(app): State<Arc<App>>) -> Response {
    ok(html::stats(&app.handle.stats()))
}

/// `GET /ui/population`: agents by tier and health, and the pools.
async fn population(State(app): State<Arc<App>>) -> Response {
    let summary = match agents::summary(&app).await {
        Ok(s) => s,
        Err(e) => {
            return crate::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
        }
    };
    let pools: Vec<html::PoolRow> = app
        .handle
        .pools()
        .into_iter()
        .map(|(spec, agents)| html::PoolRow {
            kind: spec.kind.to_string(),
            role: spec.role.to_string(),
            agents,
            concurrency: spec.concurrency,
        })
        .collect();
    ok(html::population(&summary, &pools))
}

/// `GET /ui/hierarchy`: the tiers and the top tier's agents, where the drill-down starts.
async fn hierarchy(State(app): State<Arc<App>>) -> Response {
    match agents::summary(&app).await {
        Ok(s) => ok(html::roots(&s)),
        Err(e) => crate::problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// `GET /ui/agents/{id}`: one agent, its chain of command and its children.
async fn agent(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return crate::problem(
            StatusCode::BAD_REQUEST,
            "bad-id",
            "That is not an agent id.",
        );
    };
    match agents::detail(&app, AgentId(id)).await {
        Ok(Some(detail)) => ok(html::agent(&detail)),
        Ok(None) => crate::problem(
            StatusCode::NOT_FOUND,
            "no-such-agent",
            format!("There is no agent {id}."),
        ),
        Err(response) => response,
    }
}

/// `GET /ui/tasks?state=`.
#[derive(Debug, Deserialize)]
struct TaskFilter {
    #[serde(default)]
    state: Option<String>,
}

/// `GET /ui/tasks`: the newest tasks, in one state or any.
async fn task_table(State(app): State<Arc<App>>, Query(filter): Query<TaskFilter>) -> Response {
    let state = match filter.state.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match tasks::parse_state(&s) {
            Ok(state) => Some(state),
            Err(e) => return crate::problem(StatusCode::BAD_REQUEST, "bad-query", &e),
        },
    };
    match recent(&app, state, html::TASKS).await {
        Ok(rows) => ok(html::tasks(&rows, state)),
        Err(response) => response,
    }
}

/// `GET /ui/failures`: the newest failed and dead-lettered tasks.
async fn failures(State(app): State<Arc<App>>) -> Response {
    let mut rows = Vec::with_capacity(2 * FAILURES);
    for state in [TaskState::Failed, TaskState::DeadLettered] {
        match recent(&app, Some(state), FAILURES).await {
            Ok(r) => rows.extend(r),
            Err(response) => return response,
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.id.0));
    rows.truncate(FAILURES);
    ok(html::failures(&rows))
}

/// Decisions the decisions panel lists.
const DECISIONS: usize = 20;

/// Runs the runs panel shows, and tasks of each.
const RUNS: usize = 5;
const RUN_TASKS: usize = 200;

/// The workflow runs panel: the newest runs, each task with its state, wave, attempts,
/// duration and cost, and links to its result file and its attempts' stderr logs.
async fn runs(State(app): State<Arc<App>>) -> Response {
    if app.runs.is_none() {
        return ok(html::no_runs());
    }
    // Which files exist is asked of the file system: on the blocking pool.
    let drawn = app
        .blocking({
            let app = app.clone();
            move || {
                let views = app
                    .runs
                    .as_ref()
                    .map(|r| r.views(RUNS, RUN_TASKS))
                    .unwrap_or_default();
                html::runs(&views)
            }
        })
        .await;
    match drawn {
        Ok(text) => ok(text),
        Err(e) => crate::problem(StatusCode::SERVICE_UNAVAILABLE, "busy", &e),
    }
}

async fn decisions(State(app): State<Arc<App>>) -> Response {
    let read = app.read(|journal| {
        let rows = journal.decisions(None, DECISIONS)?;
        Ok(rows
            .iter()
            .map(crate::decisions::summary)
            .collect::<Vec<_>>())
    });
    let summaries = match read.await {
        Ok(s) => s,
        Err(e) => return crate::problem(StatusCode::SERVICE_UNAVAILABLE, "journal", &e),
    };
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let lines: Vec<html::DecisionLine> = summaries
        .iter()
        .map(|s| html::DecisionLine {
            id: s["id"].as_u64().unwrap_or_default(),
            state: match s["state"].as_str() {
                Some("decided") => "decided",
                Some("failed") => "failed",
                Some("unreadable") => "unreadable",
                _ => "open",
            },
            protocol: text(&s["protocol"]).unwrap_or_default(),
            voters: s["voters"].as_u64().unwrap_or_default() as usize,
            value: text(&s["value"]),
            support: s["support"].as_f64(),
            participation: s["participation"].as_f64(),
            reason: text(&s["reason"]),
        })
        .collect();
    ok(html::decisions(&lines))
}

async fn memory(State(app): State<Arc<App>>) -> Response {
    match crate::memory::overview_of(&*app).await {
        Ok(overview) => ok(html::memory(overview.as_ref())),
        Err(r) => r,
    }
}

async fn messages(State(app): State<Arc<App>>) -> Response {
    ok(html::messages(&crate::messages::overview(&app)))
}

#[allow(clippy::result_large_err)]
async fn recent(
    app: &App,
    state: Option<TaskState>,
    limit: usize,
) -> Result<Vec<TaskRow>, Response> {
    app.read(move |journal| journal.recent(state, None, limit))
        .await
        .map_err(|e| crate::problem(StatusCode::SERVICE_UNAVAILABLE, "journal", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Scope, Server, Tokens, testing};
    use colony_agents::sim::SimOptions;
    use colony_core::task::TaskSpec;
    use colony_runtime::{Runtime, RuntimeOptions};

    async fn start(tokens: Option<Tokens>) -> (Runtime, Server, String) {
        let runtime =
            testing::sim_runtime(20, SimOptions::default(), RuntimeOptions::default()).await;
        let config = Config {
            tokens,
            ..testing::local()
        };
        let (server, url) = testing::serve(&runtime, config).await;
        (runtime, server, url)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn assert_secure(r: &reqwest::Response) {
        assert_eq!(header(r, "content-security-policy"), CSP, "{}", r.url());
        assert_eq!(header(r, "x-content-type-options"), "nosniff");
        assert_eq!(header(r, "referrer-policy"), "no-referrer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_panel_shows_namespaces_and_the_cache_or_that_there_is_none() {
        let (runtime, server, url) = start(None).await;
        let off = client()
            .get(format!("{url}/ui/memory"))
            .send()
            .await
            .unwrap();
        assert_secure(&off);
        assert!(
            off.text()
                .await
                .unwrap()
                .contains("No memory on this server")
        );
        server.stop();

        let dir = tempfile::tempdir().unwrap();
        let store = colony_memory::SqliteMemory::open(&dir.path().join("m.db")).unwrap();
        let ns = colony_memory::Namespace::parse("team/a").unwrap();
        let docs = (0..3)
            .map(|i| colony_memory::Document::new(format!("d{i}"), "agents remember"))
            .collect();
        colony_memory::Memory::put(&store, &ns, docs).unwrap();
        let query = colony_memory::Query::text("agents", 2);
        for _ in 0..2 {
            colony_memory::Memory::search(&store, &ns, &query).unwrap();
        }
        let config = Config {
            memory: Some(Arc::new(store)),
            ..testing::local()
        };
        let (server, url) = testing::serve(&runtime, config).await;
        let panel = client()
            .get(format!("{url}/ui/memory"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            panel.contains("<td>team/a</td><td class=\"num\">3</td>"),
            "{panel}"
        );
        assert!(panel.contains("1 of 2 searches answered (50 %)"), "{panel}");
        let page = client().get(format!("{url}/")).send().await.unwrap();
        assert!(
            page.text()
                .await
                .unwrap()
                .contains(r#"hx-get="/ui/memory""#)
        );
        server.stop();
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_are_listed_with_their_winner_escaped() {
        let (runtime, server, url) = start(None).await;
        let empty = client()
            .get(format!("{url}/ui/decisions"))
            .send()
            .await
            .unwrap();
        assert!(empty.text().await.unwrap().contains("No decisions yet"));
        // Sim agents echo the payload: three voters say the same markup.
        let spec = TaskSpec::with_payload(r#"{"vote": "<b onclick=x()>yes</b>"}"#);
        let vote = colony_runtime::decision::Vote::new(
            3,
            colony_core::decision::DecisionOptions::default(),
        );
        let voting = runtime.handle().decide(spec, vote).await.unwrap();
        let id = voting.id();
        voting.outcome().await.unwrap();
        let r = client()
            .get(format!("{url}/ui/decisions"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_secure(&r);
        let body = r.text().await.unwrap();
        assert!(
            body.contains(&format!(r#"data-decision="{}""#, id.0)),
            "{body}"
        );
        assert!(
            body.contains(r#"<span class="pill decided">decided</span>"#),
            "{body}"
        );
        assert!(body.contains("majority"), "{body}");
        assert!(
            body.contains("&lt;b onclick=x()&gt;yes&lt;/b&gt;"),
            "{body}"
        );
        assert!(!body.contains("<b "), "{body}");
        server.stop();
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_output_is_escaped_in_the_task_table() {
        let (runtime, server, url) = start(None).await;
        let mut spec = TaskSpec::with_payload(r#""<script>alert(1)</script>""#);
        spec.key = Some("<img src=x onerror=alert(2)>".into());
        runtime.handle().submit(spec).await.unwrap();
        runtime.handle().drain().await.unwrap();
        for path in ["/ui/tasks", "/ui/tasks?state=succeeded"] {
            let r = client().get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_secure(&r);
            assert!(header(&r, "content-type").starts_with("text/html"));
            assert_eq!(header(&r, "cache-control"), "no-store");
            let body = r.text().await.unwrap();
            assert!(
                body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{body}"
            );
            assert!(
                body.contains("&lt;img src=x onerror=alert(2)&gt;"),
                "{body}"
            );
            assert!(!body.contains("<script"), "{body}");
            assert!(!body.contains("<img"), "{body}");
        }
        let r = client()
            .get(format!("{url}/ui/tasks?state=nonsense"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        server.stop();
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_dashboard_response_is_locked_down() {
        let (runtime, server, url) = start(None).await;
        let c = client();
        let r = c.get(format!("{url}/")).send().await.unwrap();
        assert_secure(&r);
        let page = r.text().await.unwrap();
        assert!(page.contains(r#"hx-get="/ui/stats""#), "{page}");
        assert!(!page.contains("action=\"/logout\""), "no tokens, no logout");
        for (path, content_type) in [
            ("/assets/htmx.min.js", "text/javascript; charset=utf-8"),
            (
                "/assets/uPlot.iife.min.js",
                "text/javascript; charset=utf-8",
            ),
            ("/assets/uPlot.min.css", "text/css; charset=utf-8"),
            ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
            ("/assets/dashboard.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
        ] {
            let r = c
                .get(format!("{url}{path}?v={}", assets::version()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_secure(&r);
            assert_eq!(header(&r, "content-type"), content_type, "{path}");
            assert!(header(&r, "cache-control").contains("max-age=31536000"));
            assert!(page.contains(&format!("{path}?v={}", assets::version())));
        }
        assert_eq!(
            c.get(format!("{url}/assets/nope.js"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        for path in [
            "/ui/stats",
            "/ui/population",
            "/ui/hierarchy",
            "/ui/agents/0",
            "/ui/tasks",
            "/ui/failures",
            "/ui/decisions",
        ] {
            let r = c.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_secure(&r);
        }
        // Nothing changes state on GET.
        let r = c.get(format!("{url}/logout")).send().await.unwrap();
        assert_eq!(r.status(), 405);
        server.stop();
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hierarchy_drills_down_to_workers() {
        let (runtime, server, url) = start(None).await;
        let c = client();
        let get = |path: String| {
            let c = c.clone();
            async move { c.get(path).send().await.unwrap().text().await.unwrap() }
        };
        let roots = get(format!("{url}/ui/hierarchy")).await;
        let first = |html: &str, class: &str| -> Option<u32> {
            let at = html.find(&format!(r#"class="{class}" data-agent=""#))?;
            let rest = &html[at..];
            let rest = &rest[rest.find("data-agent=\"")? + 12..];
            rest[..rest.find('"')?].parse().ok()
        };
        let mut id = first(&roots, "drill root").expect("a root");
        let mut fragment = String::new();
        for _ in 0..10 {
            fragment = get(format!("{url}/ui/agents/{id}")).await;
            if fragment.contains(r#"<tr class="worker""#) {
                break;
            }
            id = first(&fragment, "drill").expect("a child to drill into");
        }
        assert!(fragment.contains(r#"<tr class="worker""#), "{fragment}");
        assert!(fragment.contains("sim / worker"), "{fragment}");
        let missing = c
            .get(format!("{url}/ui/agents/4000000"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        server.stop();
        runtime.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_tokens_the_page_asks_for_one_and_the_cookie_lets_fragments_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = Tokens::create(&path, "ops", Scope::Admin).unwrap();
        let (runtime, server, url) = start(Some(Tokens::load(&path).unwrap())).await;
        let c = client();
        let page = c
            .get(format!("{url}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains(r#"action="/login""#), "{page}");
        assert!(!page.contains("hx-get"), "{page}");
        let r = c.get(format!("{url}/ui/stats")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let cookie = format!("{}={token}", auth::COOKIE);
        let r = c
            .get(format!("{url}/"))
            .header("cookie", "colony_token=colony_wrong")
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().contains(r#"action="/login""#));
        let page = c
            .get(format!("{url}/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains(r#"hx-get="/ui/stats""#), "{page}");
        assert!(page.contains(r#"action="/logout""#), "{page}");
        let r = c
            .get(format!("{url}/ui/stats"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains(r#"id="stat-succeeded""#));
        let r = c.post(format!("{url}/logout")).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert!(header(&r, "set-cookie").starts_with("colony_token=; Max-Age=0"));
        let r = c
            .post(format!("{url}/logout"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        server.stop();
        runtime.shutdown().await;
    }
}
