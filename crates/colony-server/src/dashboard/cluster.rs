//! The dashboard of `colony serve --nats`: the whole cluster as this server reads it from
//! NATS, with the same sign-in, assets and Content-Security-Policy as a runtime's.
//!
//! - `GET /`: the page shell (or the sign-in form).
//! - `GET /ui/cluster` [read]: counters (nodes, agents, slots, running, waiting, the tasks
//!   stream's leader, whether this server leads the scaling).
//! - `GET /ui/cluster/nodes` [read]: every live node: its roles, agents, running and ended
//!   attempts, late results fenced, draining, age of its heartbeat, version.
//! - `GET /ui/cluster/roles` [read]: every role's backlog and the scaling leader's decision.
//! - `GET /ui/cluster/agents` [read]: the workers whose health is not good, as each live
//!   node answers for its own (failed, then critical, then degraded; a page of each).
//! - `GET /ui/cluster/agents/list?node=&role=&health=&state=&after=` [read]: every agent,
//!   a page of each live node's (or, paged on, one node's), filtered as the form asks.
//! - `GET /ui/memory` [read]: the agents' shared memory, when the server serves one (a
//!   memory in NATS, or on Chroma), as a runtime's dashboard shows its own.
//! - The list of task records as they are written comes from `/v1/events` in `cluster.js`,
//!   and the roles chart from `/v1/roles/history`.

use super::{assets, html::Esc, html::head_with, ok, secure, signed_in};
use crate::cluster::ClusterApp;
use axum::{
    Router,
    extract::{ConnectInfo, State},
    http::HeaderMap,
    middleware::map_response,
    response::Response,
    routing::{get, post},
};
use std::{fmt::Write, sync::Arc};

/// Routes that show data: behind the `read` scope.
pub(crate) fn read_routes() -> Router<Arc<ClusterApp>> {
    Router::new()
        .route("/ui/cluster", get(counters))
        .route("/ui/cluster/nodes", get(nodes))
        .route("/ui/cluster/roles", get(roles))
        .route("/ui/cluster/agents", get(troubled))
        .route("/ui/cluster/agents/list", get(agent_list))
        .route("/ui/memory", get(memory))
        .layer(map_response(secure))
}

/// Routes open to all: the page shell, its assets and signing out.
pub(crate) fn open_routes() -> Router<Arc<ClusterApp>> {
    Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(assets::serve))
        .route("/logout", post(super::logout))
        .layer(map_response(secure))
}

async fn page(
    State(app): State<Arc<ClusterApp>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let version = assets::version();
    if signed_in(&app.gate, peer.ip(), &headers) {
        ok(shell(version, app.gate.tokens.is_some(), app.cluster.url()))
    } else {
        ok(super::html::login(version))
    }
}

fn shell(version: &str, logout: bool, url: &str) -> String {
    let mut out = String::with_capacity(4 << 10);
    head_with(
        &mut out,
        "colony cluster",
        version,
        &["htmx.min.js", "uPlot.iife.min.js", "cluster.js"],
    );
    super::html::top(&mut out, version, &format!("cluster on {url}"), logout);
    let _ = write!(
        out,
        r##"<main>
<section id="stats" class="stats" aria-label="Counters" hx-get="/ui/cluster" hx-trigger="load, every 2s"></section>
<div class="grid">
<section class="panel wide">
<h2>Nodes</h2>
<p class="note">Every node whose heartbeat is live, each a subtree of the cluster: the roles its pools serve, its agents, the attempts it runs and has ended, late results fenced, its runtime's tiers (agents down and workers unhealthy said), and whether it drains.</p>
<div id="nodes" class="scroll" hx-get="/ui/cluster/nodes" hx-trigger="load, every 2s"></div>
</section>
<section class="panel wide plot">
<h2>Tasks ended</h2>
<p class="note">Tasks that succeeded and failed each second over the last fifteen minutes, counted by this server from the records nodes write (read again from the cluster when the server starts), then live from the event stream.</p>
<div id="chart-ended" class="chart"></div>
<p id="ended-total" class="note">0 succeeded, 0 failed since this page opened</p>
</section>
<section class="panel wide plot">
<h2>Roles over time</h2>
<p class="note">Each role's agents on the live nodes (solid, left axis) and its tasks waiting for a node (dashed, right axis) over the last fifteen minutes, sampled every 2 s and kept in the cluster; a dashed vertical line in a role's colour marks each step the scaling leader decided on its size, a short tick at the top a step it wanted and was held from.</p>
<div id="chart-roles" class="chart"></div>
<p id="roles-now" class="note">Waiting for the first sample.</p>
</section>
<section class="panel span-4">
<h2>Roles</h2>
<p class="note">Each role's tasks waiting for a node and running, its deliveries, and the nodes the scaling leader wants for it, with its last decision.</p>
<div id="roles" class="scroll" hx-get="/ui/cluster/roles" hx-trigger="load, every 2s"></div>
</section>
<section class="panel wide">
<h2>Agents in trouble</h2>
<p class="note">Workers of every live node whose health is failed, critical or degraded, as each node answers for its own (the worst first, at most 20 of each a node), with their breaker and error rate.</p>
<div id="troubled" class="scroll" hx-get="/ui/cluster/agents" hx-trigger="load, every 5s"></div>
</section>
<section class="panel wide">
<h2>Agents</h2>
<p class="note">Every agent of the cluster, as each live node answers for its own: a page of each node's, or of the node named, with its tier, role, state, health, breaker, error rate, reputation and load. Filter by role, health or state; page on one node at a time.</p>
<form id="agent-filter" class="filter" hx-get="/ui/cluster/agents/list" hx-target="#agent-list" hx-trigger="load, change" hx-sync="this:replace">
<label for="agent-node">Node</label>
<input id="agent-node" name="node" placeholder="every node" maxlength="128">
<label for="agent-role">Role</label>
<input id="agent-role" name="role" placeholder="any" maxlength="64">
<label for="agent-health">Health</label>
<select id="agent-health" name="health"><option value="">any</option><option>healthy</option><option>degraded</option><option>critical</option><option>failed</option></select>
<label for="agent-state">State</label>
<select id="agent-state" name="state"><option value="">any</option><option>up</option><option>down</option><option>retired</option><option>vacant</option></select>
</form>
<div id="agent-list" class="scroll"></div>
</section>
<section class="panel span-2">
<h2>Task records</h2>
<p class="note">Task records as nodes write them, newest first (the latest hundred this server saw before the page opened, then live): each end, and a start when the attempt outlasts the node's lazy lease.</p>
<ol id="events" class="events"><li class="empty">Nothing yet.</li></ol>
</section>
<section class="panel wide">
<h2>Memory</h2>
<p class="note">The agents' shared memory every replica serves (<code>--memory nats://HOST:PORT/NAME</code>, or on Chroma): each namespace's documents, their embeddings' dimension, text held and this server's approximate index, and this server's cache of searches.</p>
<div id="memory" class="scroll" hx-get="/ui/memory" hx-trigger="load, every 5s"></div>
</section>
</div>
</main>
</body>
</html>
"##
    );
    out
}

/// `GET /ui/memory`.
async fn memory(State(app): State<Arc<ClusterApp>>) -> Response {
    match crate::memory::overview_of(&*app).await {
        Ok(overview) => ok(super::html::memory(overview.as_ref())),
        // Said in the panel, answered 200, as `unavailable` does: htmx would keep the last
        // data on the page for an error.
        Err(r) => {
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 64 << 10)
                .await
                .unwrap_or_default();
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            ok(format!(
                r#"<p class="note bad">The memory cannot be read now: {}</p>"#,
                Esc(&detail)
            ))
        }
    }
}

/// NATS out of reach, said in the panel: answered 200, or htmx would keep the last data
/// on the page as if it were live.
fn unavailable(e: colony_cluster::Error) -> Response {
    ok(format!(
        r#"<p class="note bad">The cluster cannot be read now: {}</p>"#,
        Esc(&e.to_string())
    ))
}

/// `GET /ui/cluster`.
async fn counters(State(app): State<Arc<ClusterApp>>) -> Response {
    let status = match app.status().await {
        Ok(status) => status,
        Err(e) => return unavailable(e),
    };
    let sum = |f: fn(&colony_cluster::NodeInfo) -> u64| status.nodes.iter().map(f).sum::<u64>();
    let waiting: u64 = status.roles.iter().map(|r| r.waiting).sum();
    let tiles: [(&str, &str, String, &str); 7] = [
        ("nodes", "Nodes", status.nodes.len().to_string(), "ok"),
        ("agents", "Agents", sum(|n| n.agents).to_string(), ""),
        ("running", "Running", sum(|n| n.running).to_string(), ""),
        ("waiting", "Waiting", waiting.to_string(), ""),
        (
            "unfinished",
            "Unfinished",
            status.unfinished.to_string(),
            "",
        ),
        (
            "leader",
            "Stream leader",
            status.leader.clone().unwrap_or_else(|| "none".into()),
            if status.leader.is_some() { "" } else { "bad" },
        ),
        (
            "scaling",
            "Scaling",
            if app.scaling.term().is_some() {
                "led here".into()
            } else {
                "led elsewhere".into()
            },
            "",
        ),
    ];
    let mut out = String::with_capacity(1 << 10);
    for (id, label, value, class) in tiles {
        let _ = write!(
            out,
            r#"<div class="tile {class}"><span class="label">{label}</span><span class="value" id="stat-{id}">{}</span></div>"#,
            Esc(&value)
        );
    }
    ok(out)
}

/// `GET /ui/cluster/nodes`.
async fn nodes(State(app): State<Arc<ClusterApp>>) -> Response {
    match app.status().await {
        Ok(status) => ok(nodes_table(&status.nodes, crate::cluster::now_ms())),
        Err(e) => unavailable(e),
    }
}

/// The nodes' table at `now` (ms). Everything a node says of itself is untrusted: escaped.
fn nodes_table(nodes: &[colony_cluster::NodeInfo], now: u64) -> String {
    if nodes.is_empty() {
        return r#"<p class="note">No node has joined: start one with <code>colony node --nats URL</code>.</p>"#.into();
    }
    let mut out = String::from(
        r#"<table id="node-table"><thead><tr><th>Node</th><th>Roles</th><th class="num">Agents</th><th class="num">Running</th><th class="num">Ended</th><th class="num">Fenced</th><th>Hierarchy</th><th>State</th><th class="num">Beat</th><th>Version</th></tr></thead><tbody>"#,
    );
    for n in nodes {
        let roles: Vec<String> = n
            .by_role
            .iter()
            .map(|(role, slots)| format!("{role} ({} slots)", slots.slots))
            .collect();
        let roles = if roles.is_empty() {
            n.roles.join(", ")
        } else {
            roles.join(", ")
        };
        let mut tiers: Vec<String> = n
            .tiers
            .iter()
            .map(|t| {
                let down = if t.down > 0 {
                    format!(" ({} down)", t.down)
                } else {
                    String::new()
                };
                format!("{} {}{down}", t.agents, t.name)
            })
            .collect();
        if n.unhealthy > 0 {
            tiers.push(format!("{} unhealthy", n.unhealthy));
        }
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{:.1} s ago</td><td>{}</td></tr>"#,
            Esc(&n.name),
            Esc(&roles),
            n.agents,
            n.running,
            n.ended,
            n.fenced,
            Esc(&tiers.join(" · ")),
            if n.draining {
                "draining"
            } else {
                "taking work"
            },
            now.saturating_sub(n.at_ms) as f64 / 1e3,
            Esc(&n.version),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// A field of an agent as a node answered it, as a table cell's text: `-` when absent.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// Most workers of each health the panel lists a node.
const TROUBLED_PAGE: usize = 20;

/// `GET /ui/cluster/agents`: each unhealthy health asked of every live node at once.
async fn troubled(State(app): State<Arc<ClusterApp>>) -> Response {
    use colony_core::health::HealthState::{Critical, Degraded, Failed};
    let asks = [Failed, Critical, Degraded].map(|health| {
        let query = colony_runtime::agents::AgentQuery {
            health: Some(health),
            limit: Some(TROUBLED_PAGE),
            ..Default::default()
        };
        let cluster = app.cluster.clone();
        async move { cluster.agents(None, &query).await }
    });
    let mut answers = Vec::new();
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok(nodes) => answers.extend(nodes),
            Err(e) => return unavailable(e),
        }
    }
    ok(troubled_table(&answers))
}

/// The workers in trouble, from the nodes' answers; a node that did not answer is said.
fn troubled_table(answers: &[colony_cluster::agents::NodeAgents]) -> String {
    let mut out = String::new();
    let mut silent: Vec<String> = answers
        .iter()
        .filter_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.node)))
        .collect();
    silent.dedup();
    let rows: Vec<(&str, &serde_json::Value)> = answers
        .iter()
        .flat_map(|n| n.agents.iter().map(move |a| (n.node.as_str(), a)))
        .collect();
    if rows.is_empty() {
        out.push_str(r#"<p class="note">Every worker of every node that answered is healthy.</p>"#);
    } else {
        out.push_str(r#"<table id="troubled-table"><thead><tr><th>Node</th><th class="num">Agent</th><th>Role</th><th>Health</th><th>State</th><th>Breaker</th><th class="num">Error rate</th></tr></thead><tbody>"#);
        for (node, a) in rows {
            let text = |f: &str| cell(&a[f]);
            let rate = a["error-rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.0} %", r * 100.0));
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td class="bad">{}</td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
                Esc(node),
                Esc(&text("id")),
                Esc(&text("role")),
                Esc(&text("health")),
                Esc(&text("state")),
                Esc(&text("breaker")),
                Esc(&rate),
            );
        }
        out.push_str("</tbody></table>");
    }
    for line in silent {
        let _ = write!(
            out,
            r#"<p class="note bad">No answer from node {}</p>"#,
            Esc(&line)
        );
    }
    out
}

/// Agents the agents panel lists of the node named, a page at once.
const AGENTS_PAGE: usize = 25;
/// Agents it lists of each node when it names none: a cluster of hundreds of nodes is
/// thousands of rows even so, and a node is paged on by name.
const AGENTS_EACH: usize = 5;

/// The agents panel's form, as the browser sends it: empty fields are no filter.
#[derive(Debug, Default, serde::Deserialize)]
struct AgentsForm {
    node: Option<String>,
    role: Option<String>,
    health: Option<String>,
    state: Option<String>,
    after: Option<String>,
}

/// What the agents panel asks: the node (every live one when `None`), the nodes' query,
/// and the filters as a query string for the next page's link. Else what is wrong with the
/// form, in words.
fn agents_asked(
    form: AgentsForm,
) -> Result<(Option<String>, colony_runtime::agents::AgentQuery, String), String> {
    let given = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let node = given(form.node);
    if let Some(node) = &node
        && !colony_core::mailbox::is_process_name(node)
    {
        return Err(format!(
            "node `{}` is no node's name",
            colony_core::text::shorten(node, 130)
        ));
    }
    let role = given(form.role);
    if let Some(role) = &role {
        colony_cluster::check_role(role).map_err(|e| e.to_string())?;
    }
    let health = match given(form.health) {
        None => None,
        Some(h) => Some(
            serde_json::from_value::<colony_core::health::HealthState>(serde_json::Value::String(
                h.clone(),
            ))
            .map_err(|_| {
                format!(
                    "health `{}` is not one of healthy, degraded, critical, failed",
                    colony_core::text::shorten(&h, 40)
                )
            })?,
        ),
    };
    let after = match given(form.after) {
        None => None,
        Some(a) => Some(a.parse::<u32>().map_err(|_| {
            format!(
                "after `{}` is no agent's id",
                colony_core::text::shorten(&a, 40)
            )
        })?),
    };
    if after.is_some() && node.is_none() {
        return Err("a page after an agent is one node's: name the node".into());
    }
    let state = given(form.state);
    if let Some(state) = &state
        && !["up", "down", "retired", "vacant"].contains(&state.as_str())
    {
        return Err(format!(
            "state `{}` is not one of up, down, retired, vacant",
            colony_core::text::shorten(state, 40)
        ));
    }
    let query = colony_runtime::agents::AgentQuery {
        role,
        health,
        state,
        after,
        limit: Some(if node.is_some() {
            AGENTS_PAGE
        } else {
            AGENTS_EACH
        }),
        ..Default::default()
    };
    query.check()?;
    let mut filters = String::new();
    if let Some(role) = &query.role {
        let _ = write!(filters, "&role={role}");
    }
    if let Some(health) = query.health
        && let Ok(serde_json::Value::String(name)) = serde_json::to_value(health)
    {
        let _ = write!(filters, "&health={name}");
    }
    if let Some(state) = &query.state {
        let _ = write!(filters, "&state={state}");
    }
    Ok((node, query, filters))
}

/// `GET /ui/cluster/agents/list`: a page of agents, as [`agents_asked`] reads the form; a
/// form that cannot be asked, or a node that is not live, is said instead.
async fn agent_list(
    State(app): State<Arc<ClusterApp>>,
    form: Result<axum::extract::Query<AgentsForm>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let said = |why: &str| ok(format!(r#"<p class="note bad">{}</p>"#, Esc(why)));
    let form = match form {
        Ok(axum::extract::Query(form)) => form,
        Err(e) => return said(&e.body_text()),
    };
    let (node, query, filters) = match agents_asked(form) {
        Ok(asked) => asked,
        Err(why) => return said(&why),
    };
    match app.cluster.agents(node.as_deref(), &query).await {
        Ok(nodes) => {
            let mut html = agent_table(&nodes, &filters);
            // Paged on one node: the way back to a page of every node's.
            if query.after.is_some() {
                let _ = write!(
                    html,
                    r##"<button type="button" class="more" hx-get="/ui/cluster/agents/list?{}" hx-target="#agent-list">Back to every node</button>"##,
                    Esc(filters.trim_start_matches('&')),
                );
            }
            ok(html)
        }
        Err(e) => said(&e.to_string()),
    }
}

/// The agents each node answered with, and for each node with more a button to its next
/// page (`filters` kept); a node that did not answer is said.
fn agent_table(answers: &[colony_cluster::agents::NodeAgents], filters: &str) -> String {
    let mut out = String::new();
    let rows: Vec<(&str, &serde_json::Value)> = answers
        .iter()
        .flat_map(|n| n.agents.iter().map(move |a| (n.node.as_str(), a)))
        .collect();
    if rows.is_empty() {
        out.push_str(r#"<p class="note">No agent of the nodes that answered fits.</p>"#);
    } else {
        out.push_str(r#"<table id="agent-table"><thead><tr><th>Node</th><th class="num">Agent</th><th>Tier</th><th>Role</th><th>State</th><th>Health</th><th>Breaker</th><th class="num">Error rate</th><th class="num">Reputation</th><th class="num">Load</th></tr></thead><tbody>"#);
        for (node, a) in rows {
            let text = |f: &str| cell(&a[f]);
            let share = |f: &str, percent: bool| {
                a[f].as_f64().map_or("-".into(), |r| {
                    if percent {
                        format!("{:.0} %", r * 100.0)
                    } else {
                        format!("{r:.2}")
                    }
                })
            };
            let health = text("health");
            let class = if health == "healthy" { "" } else { "bad" };
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{class}">{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}/{}</td></tr>"#,
                Esc(node),
                Esc(&text("id")),
                Esc(&text("tier")),
                Esc(&text("role")),
                Esc(&text("state")),
                Esc(&health),
                Esc(&text("breaker")),
                Esc(&share("error-rate", true)),
                Esc(&share("reputation", false)),
                Esc(&text("load")),
                Esc(&text("capacity")),
            );
        }
        out.push_str("</tbody></table>");
    }
    for n in answers {
        if let Some(after) = n.next_after {
            let _ = write!(
                out,
                r##"<button type="button" class="more" hx-get="/ui/cluster/agents/list?node={}&amp;after={after}{}" hx-target="#agent-list">Next page of node {}</button>"##,
                Esc(&n.node),
                Esc(filters),
                Esc(&n.node),
            );
        }
        if let Some(error) = &n.error {
            let _ = write!(
                out,
                r#"<p class="note bad">No answer from node {}: {}</p>"#,
                Esc(&n.node),
                Esc(error)
            );
        }
    }
    out
}

/// `GET /ui/cluster/roles`.
async fn roles(State(app): State<Arc<ClusterApp>>) -> Response {
    let status = match app.status().await {
        Ok(status) => status,
        Err(e) => return unavailable(e),
    };
    let mut rows = Vec::with_capacity(status.roles.len());
    for role in &status.roles {
        let key = if role.role == "*" { "_" } else { &role.role };
        rows.push(RoleRow {
            role: &role.role,
            waiting: role.waiting,
            running: role.running,
            delivered: role.delivered,
            record: app.cluster.scaling(key).await.ok().flatten(),
        });
    }
    ok(roles_table(&rows))
}

/// A role as its table row shows it.
struct RoleRow<'a> {
    role: &'a str,
    waiting: u64,
    running: u64,
    delivered: u64,
    /// The scaling leader's last record of it.
    record: Option<colony_cluster::scaling::ScalingRecord>,
}

/// The roles' table: each role's backlog and the scaling leader's last decision.
fn roles_table(rows: &[RoleRow<'_>]) -> String {
    if rows.is_empty() {
        return r#"<p class="note">No role yet: a node's pools make their roles' consumers as it joins.</p>"#.into();
    }
    let mut out = String::from(
        r#"<table id="role-table"><thead><tr><th>Role</th><th class="num">Waiting</th><th class="num">Running</th><th class="num">Delivered</th><th class="num">Desired nodes</th><th>Last decision</th></tr></thead><tbody>"#,
    );
    for role in rows {
        let (desired, decision) = match &role.record {
            Some(r) => (
                r.desired.to_string(),
                match (&r.reason, &r.blocked_by) {
                    (Some(reason), Some(by)) => format!("{}: {reason} (held by {by})", r.decision),
                    (Some(reason), None) => format!("{}: {reason}", r.decision),
                    _ => r.decision.clone(),
                },
            ),
            None => ("—".into(), "none yet".into()),
        };
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            Esc(role.role),
            role.waiting,
            role.running,
            role.delivered,
            Esc(&desired),
            Esc(&decision),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_cluster::{NodeInfo, RoleSlots, TierCount, scaling::ScalingRecord};

    const HOSTILE: &str = "<img src=x onerror=alert(1)>";

    #[test]
    fn the_agents_form_is_read_and_what_it_cannot_ask_is_said() {
        let form = |pairs: &[(&str, &str)]| {
            let mut f = AgentsForm::default();
            for (k, v) in pairs {
                let v = Some((*v).to_owned());
                match *k {
                    "node" => f.node = v,
                    "role" => f.role = v,
                    "health" => f.health = v,
                    "state" => f.state = v,
                    _ => f.after = v,
                }
            }
            f
        };
        // Empty fields are no filter: every node, a page each.
        let (node, query, filters) = agents_asked(form(&[("node", " "), ("role", "")])).unwrap();
        assert_eq!(
            (node, query.role, query.limit, filters.as_str()),
            (None, None, Some(AGENTS_EACH), "")
        );
        let (node, query, filters) = agents_asked(form(&[
            ("node", "n1"),
            ("role", "coder"),
            ("health", "critical"),
            ("state", "up"),
            ("after", "40"),
        ]))
        .unwrap();
        assert_eq!(node.as_deref(), Some("n1"));
        assert_eq!((query.after, query.limit), (Some(40), Some(AGENTS_PAGE)));
        assert_eq!(filters, "&role=coder&health=critical&state=up");
        let long = "z".repeat(10_000);
        for (bad, said) in [
            (form(&[("role", HOSTILE)]), "cannot name a cluster subject"),
            (form(&[("health", "sick")]), "not one of healthy"),
            (form(&[("state", "asleep")]), "not one of up"),
            (form(&[("state", long.as_str())]), "…"),
            (form(&[("after", "x")]), "no agent's id"),
            (form(&[("after", "3")]), "name the node"),
            (form(&[("node", HOSTILE)]), "no node's name"),
        ] {
            let why = agents_asked(bad).unwrap_err();
            assert!(why.contains(said), "{why}");
        }
    }

    #[test]
    fn the_agents_table_shows_each_node_s_page_as_text_with_its_next_page() {
        let node = |name: &str, agents, next_after, error: Option<&str>| {
            colony_cluster::agents::NodeAgents {
                node: name.into(),
                agents,
                next_after,
                error: error.map(str::to_owned),
            }
        };
        let agent = |id: u32, health: &str| {
            serde_json::json!({"id": id, "tier": "workers", "role": HOSTILE, "state": "up",
                "health": health, "breaker": "closed", "error-rate": 0.25, "reputation": 0.5,
                "load": 1, "capacity": 4})
        };
        let html = agent_table(
            &[
                node(
                    "a",
                    vec![agent(7, "healthy"), agent(8, "failed")],
                    Some(8),
                    None,
                ),
                node("b", vec![], None, Some(HOSTILE)),
            ],
            "&role=coder",
        );
        assert!(!html.contains(HOSTILE), "{html}");
        assert_eq!(html.matches("<tr><td>a</td>").count(), 2, "{html}");
        assert!(html.contains(r#"<td class="bad">failed</td>"#), "{html}");
        assert!(html.contains("25 %") && html.contains("0.50") && html.contains("1/4"));
        assert!(
            html.contains(r#"hx-get="/ui/cluster/agents/list?node=a&amp;after=8&amp;role=coder""#),
            "{html}"
        );
        assert!(html.contains("No answer from node b"), "{html}");
        let none = agent_table(&[node("a", vec![], None, None)], "");
        assert!(none.contains("No agent of the nodes that answered fits"));
    }

    #[test]
    fn what_nodes_and_the_scaling_leader_say_is_shown_as_text() {
        let node = NodeInfo {
            name: HOSTILE.into(),
            roles: vec![HOSTILE.into()],
            agents: 4,
            by_role: [(
                HOSTILE.to_owned(),
                RoleSlots {
                    agents: 4,
                    slots: 4,
                },
            )]
            .into(),
            running: 1,
            ended: 2,
            at_ms: 9_000,
            version: HOSTILE.into(),
            tiers: vec![TierCount {
                name: HOSTILE.into(),
                agents: 4,
                down: 1,
            }],
            unhealthy: 2,
            ..NodeInfo::default()
        };
        let html = nodes_table(&[node], 10_500);
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("(1 down) · 2 unhealthy"), "{html}");
        assert!(html.contains("1.5 s ago"), "{html}");

        let record = ScalingRecord {
            role: HOSTILE.into(),
            desired: 2,
            nodes: 1,
            slots: 4,
            waiting: 3,
            running: 1,
            oldest_wait_ms: 0,
            arrivals_per_sec: 0.0,
            decision: HOSTILE.into(),
            reason: Some(HOSTILE.into()),
            blocked_by: Some(HOSTILE.into()),
            term: 1,
            leader: HOSTILE.into(),
            at_ms: 0,
        };
        let html = roles_table(&[RoleRow {
            role: HOSTILE,
            waiting: 3,
            running: 1,
            delivered: 9,
            record: Some(record),
        }]);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains(r#"<td class="num">2</td>"#), "{html}");
        assert!(nodes_table(&[], 0).contains("No node has joined"));

        let node = |name: &str, agents, error: Option<&str>| colony_cluster::agents::NodeAgents {
            node: name.into(),
            agents,
            next_after: None,
            error: error.map(Into::into),
        };
        let sick = serde_json::json!({
            "id": 7, "role": HOSTILE, "health": "failed", "state": "up",
            "breaker": "open", "error-rate": 0.75,
        });
        let html = troubled_table(&[
            node(HOSTILE, vec![sick], None),
            node("quiet", vec![], Some(HOSTILE)),
            node("quiet", vec![], Some(HOSTILE)),
        ]);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains(r#"<td class="bad">failed</td>"#), "{html}");
        assert!(
            html.contains("75 %") && html.contains("<td>open</td>"),
            "{html}"
        );
        assert_eq!(
            html.matches("No answer from node quiet").count(),
            1,
            "{html}"
        );
        let calm = troubled_table(&[node("a", vec![], None)]);
        assert!(calm.contains("Every worker of every node that answered is healthy"));
    }
}
