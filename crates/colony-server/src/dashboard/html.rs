//! The dashboard's HTML, written by hand. Every value that reaches a page is a number or goes
//! through [`Esc`]: task outputs, errors, keys, tier and pool names are untrusted text, and
//! none of it may become markup. No element carries a `style` attribute or an inline script:
//! the Content-Security-Policy would refuse them.

use crate::agents::{Detail, Summary};
use colony_core::{
    AgentId,
    health::HealthState,
    task::{TaskState, TaskState as S},
};
use colony_journal::TaskRow;
use colony_runtime::Stats;
use colony_runtime::agents::AgentView;
use std::fmt::{self, Write as _};

/// Text made safe for element content and for quoted attribute values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// `text`, escaped.
#[cfg(test)]
pub(crate) fn escape(text: &str) -> String {
    Esc(text).to_string()
}

/// A count with thousands separated: `1,234,567`.
pub(crate) use colony_core::text::thousands as count;

use colony_core::text::shorten as clip;

fn health_name(h: HealthState) -> &'static str {
    match h {
        HealthState::Healthy => "healthy",
        HealthState::Degraded => "degraded",
        HealthState::Critical => "critical",
        HealthState::Failed => "failed",
    }
}

/// A coloured label. `class` comes from a fixed set of names, never from input.
fn pill(class: &'static str) -> String {
    format!(r#"<span class="pill {class}">{class}</span>"#)
}

/// htmx as the Content-Security-Policy wants it: no style element of its own, no eval, no
/// scripts out of fragments; and no attribute inherited, so that a button inside a polling
/// element does only what its own attributes say.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"disableInheritance":true}"#;

fn head(out: &mut String, title: &str, version: &str, scripts: bool) {
    let scripts: &[&str] = if scripts {
        &["htmx.min.js", "uPlot.iife.min.js", "dashboard.js"]
    } else {
        &[]
    };
    head_with(out, title, version, scripts);
}

/// The document's head, loading `scripts` from the assets.
pub(crate) fn head_with(out: &mut String, title: &str, version: &str, scripts: &[&str]) {
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="htmx-config" content='{HTMX_CONFIG}'>
<title>{title}</title>
<link rel="icon" type="image/svg+xml" href="/assets/favicon.svg?v={version}">
<link rel="stylesheet" href="/assets/uPlot.min.css?v={version}">
<link rel="stylesheet" href="/assets/dashboard.css?v={version}">
"#,
        title = Esc(title),
        version = Esc(version),
    );
    for script in scripts {
        let _ = writeln!(
            out,
            r#"<script defer src="/assets/{script}?v={}"></script>"#,
            Esc(version)
        );
    }
    out.push_str("</head>\n");
}

/// The top of a page's body: the name, what it shows (`sub`, escaped here), the stream's
/// state, and a sign-out button when the server has tokens.
pub(crate) fn top(out: &mut String, version: &str, sub: &str, logout: bool) {
    let _ = writeln!(
        out,
        r#"<body>
<header class="top">
<img class="logo" src="/assets/favicon.svg?v={version}" alt="">
<h1>colony</h1>
<span class="sub">{sub}</span>
<span id="live" class="live">connecting…</span>
{logout}
</header>"#,
        version = Esc(version),
        sub = Esc(sub),
        logout = if logout {
            r#"<form method="post" action="/logout"><button type="submit">Log out</button></form>"#
        } else {
            ""
        },
    );
}

/// The page shell: panels that fill themselves from `/ui/...` fragments and the event stream.
/// It holds no data, so it is served to anyone.
pub(crate) fn shell(version: &str, logout: bool) -> String {
    let mut out = String::with_capacity(8 << 10);
    head(&mut out, "colony", version, true);
    top(&mut out, version, "runtime dashboard", logout);
    let _ = write!(
        out,
        r##"<main>
<section id="stats" class="stats" aria-label="Counters" hx-get="/ui/stats" hx-trigger="load, every 2s"></section>
<div class="grid">
<section class="panel plot span-3">
<h2>Throughput</h2>
<p class="note">Tasks finished and accepted per second, from the counters' changes.</p>
<div id="chart-throughput" class="chart"></div>
</section>
<section class="panel plot span-3">
<h2>Latency</h2>
<p class="note">From acceptance to the end, of the tasks that ended each second: 50th and 99th percentiles, as upper bounds of power-of-two buckets. Prometheus has the finer histogram.</p>
<div id="chart-latency" class="chart"></div>
</section>
<section class="panel plot span-3">
<h2>Queue and running</h2>
<p class="note">Tasks waiting and running; each worker's average response time is in the hierarchy.</p>
<div id="chart-queue" class="chart"></div>
</section>
<section class="panel plot span-3">
<h2>Recoveries</h2>
<p class="note">Restarts, escalations and health failures since the runtime started.</p>
<div id="chart-recoveries" class="chart"></div>
</section>
<section class="panel plot span-4">
<h2>Pools</h2>
<p class="note">Each pool's agents (solid), the size its autoscaler wants (dashed) and its backlog (thin, right-hand axis) over the last 15 minutes, a sample a second. Marks are decisions on its size: green grown, blue shrunk, grey resized by hand; a short amber tick at the top is a step the autoscaler wanted and was held from.</p>
<div id="chart-pools" class="chart"></div>
<table id="pool-now" class="pool-now">
<thead><tr><th>pool</th><th class="num">agents</th><th class="num">desired</th><th class="num">backlog</th><th class="num">busy</th></tr></thead>
<tbody></tbody>
</table>
</section>
<section class="panel span-2">
<h2>Scaling decisions</h2>
<p class="note">The autoscaler's steps, the steps it was held from, and resizes through the API, in the last 15 minutes.</p>
<ol id="pool-decisions" class="events"><li class="empty">None yet.</li></ol>
</section>
<section class="panel span-3">
<h2>Population</h2>
<p class="note">Agents by tier and health, and the pools of workers.</p>
<div id="population" hx-get="/ui/population" hx-trigger="load, every 5s"></div>
</section>
<section class="panel span-3">
<h2>Recent failures</h2>
<p class="note">The newest tasks that failed or were dead-lettered.</p>
<div id="failures" class="scroll" hx-get="/ui/failures" hx-trigger="load, every 3s"></div>
</section>
<section class="panel wide">
<h2>Workflow runs</h2>
<p class="note">The newest runs posted to <code>/v1/runs</code>: each task with its wave, where it stands (waiting for what it needs, started, then how it ended), its attempts, time and cost, and links to its result file and the stderr of each attempt.</p>
<div id="runs" class="scroll" hx-get="/ui/runs" hx-trigger="load, every 3s"></div>
</section>
<section class="panel wide">
<h2>Decisions</h2>
<p class="note">The newest decisions by vote: the protocol, the voters asked, the winning value and its share of the weight counted, the share of voters counted, or why it failed. <code>GET /v1/decisions/{{id}}</code> has every ballot.</p>
<div id="decisions" class="scroll" hx-get="/ui/decisions" hx-trigger="load, every 3s"></div>
</section>
<section class="panel wide">
<h2>Memory</h2>
<p class="note">The agents' shared memory (<code>--memory FILE</code>): each namespace's documents, their embeddings' dimension, text held and approximate index, and the cache of searches.</p>
<div id="memory" class="scroll" hx-get="/ui/memory" hx-trigger="load, every 5s"></div>
</section>
<section class="panel wide">
<h2>Messages</h2>
<p class="note">Messages between agents: sent, read and acknowledged, returned to their senders when their agent left, waits at full mailboxes, and the topics with their subscribers.</p>
<div id="messages" class="scroll" hx-get="/ui/messages" hx-trigger="load, every 5s"></div>
</section>
<section class="panel span-4">
<h2>Hierarchy</h2>
<p class="note">Pick an agent of the top tier, then its children, down to the workers.</p>
<div id="roots" hx-get="/ui/hierarchy" hx-trigger="load, every 10s"></div>
<div id="drill"></div>
</section>
<section class="panel span-2">
<h2>Events</h2>
<p class="note">Health alerts, escalations, recoveries and scaling since this page opened.</p>
<ol id="events" class="events"><li class="empty">Nothing yet.</li></ol>
</section>
<section class="panel wide">
<h2>Tasks</h2>
<form id="task-filter" class="filter" hx-get="/ui/tasks" hx-target="#tasks" hx-trigger="load, change, every 3s">
<label for="task-state">State</label>
<select id="task-state" name="state">
<option value="">any</option>
{options}
</select>
<span class="note">The newest {TASKS} tasks, refreshed every 3 seconds.</span>
</form>
<div id="tasks" class="scroll"></div>
</section>
</div>
</main>
</body>
</html>
"##,
        options = STATES
            .iter()
            .map(|s| format!(r#"<option value="{0}">{0}</option>"#, s.as_str()))
            .collect::<String>(),
    );
    out
}

/// Every task state, in the order the filter offers them.
const STATES: [TaskState; 6] = [
    S::Queued,
    S::Running,
    S::Succeeded,
    S::Failed,
    S::DeadLettered,
    S::Cancelled,
];

/// Tasks the table shows.
pub(crate) const TASKS: usize = 50;

/// The sign-in page of a server with tokens, for a browser without a valid cookie.
pub(crate) fn login(version: &str) -> String {
    let mut out = String::with_capacity(2 << 10);
    head(&mut out, "colony: sign in", version, false);
    let _ = write!(
        out,
        r#"<body class="login">
<main>
<form class="card" method="post" action="/login">
<h1><img class="logo" src="/assets/favicon.svg?v={version}" alt=""> colony</h1>
<p class="note">This server asks for a token (made with <code>colony token create</code>). The dashboard only reads: whatever the token's scope, the browser keeps it in an HTTP-only cookie worth <code>read</code>.</p>
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required placeholder="colony_…">
<button id="sign-in" type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"#,
        version = Esc(version),
    );
    out
}

/// The counters, as tiles.
pub(crate) fn stats(s: &Stats) -> String {
    let tiles: [(&str, &str, u64, &str); 14] = [
        ("accepted", "Accepted", s.accepted, ""),
        ("succeeded", "Succeeded", s.succeeded, "ok"),
        ("failed", "Failed", s.failed, "bad"),
        ("dead-lettered", "Dead-lettered", s.dead_lettered, "bad"),
        ("cancelled", "Cancelled", s.cancelled, ""),
        ("queued", "Queued", s.queued, ""),
        ("running", "Running", s.running, ""),
        ("retries", "Retries", s.retries, "warn"),
        ("steals", "Steals", s.steals, ""),
        ("restarts", "Restarts", s.restarts, "warn"),
        ("escalations", "Escalations", s.escalations, "bad"),
        (
            "health-failures",
            "Health failures",
            s.health_failures,
            "bad",
        ),
        ("agents", "Agents", s.agents, ""),
        ("capacity", "Capacity", s.capacity, ""),
    ];
    let mut out = String::with_capacity(2 << 10);
    for (id, label, value, class) in tiles {
        // Colour a warning only when there is something to warn of.
        let class = if value == 0 && class != "ok" {
            ""
        } else {
            class
        };
        let _ = write!(
            out,
            r#"<div class="tile {class}"><span class="label">{label}</span><span class="value" id="stat-{id}">{}</span></div>"#,
            count(value)
        );
    }
    out
}

/// A pool of workers as the population panel shows it.
#[derive(Debug, Clone)]
pub(crate) struct PoolRow {
    pub(crate) kind: String,
    pub(crate) role: String,
    pub(crate) agents: u64,
    pub(crate) concurrency: u32,
}

/// Agents by tier and health, then the pools.
pub(crate) fn population(summary: &Summary, pools: &[PoolRow]) -> String {
    let mut out = String::with_capacity(4 << 10);
    out.push_str(
        r#"<table id="population-table"><thead><tr><th>Tier</th><th class="num">Agents</th><th class="num">Down</th><th class="num">Retired</th><th class="num">Degraded</th><th class="num">Critical</th><th class="num">Failed</th><th>Healthy</th></tr></thead><tbody>"#,
    );
    let mut total = crate::agents::TierView::default();
    for t in &summary.tiers {
        tier_row(&mut out, "", &Esc(&t.name).to_string(), t);
        total.agents += t.agents;
        total.down += t.down;
        total.retired += t.retired;
        total.degraded += t.degraded;
        total.critical += t.critical;
        total.failed += t.failed;
    }
    tier_row(&mut out, "total", "All tiers", &total);
    out.push_str("</tbody></table>");
    if !pools.is_empty() {
        out.push_str(
            r#"<table id="pools-table"><thead><tr><th>Pool</th><th>Kind</th><th>Role</th><th class="num">Workers</th><th class="num">Tasks each</th></tr></thead><tbody>"#,
        );
        for (i, p) in pools.iter().enumerate() {
            let _ = write!(
                out,
                r#"<tr><td>{i}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                Esc(&p.kind),
                Esc(&p.role),
                count(p.agents),
                p.concurrency,
            );
        }
        out.push_str("</tbody></table>");
    }
    out
}

/// `name` is markup already escaped.
fn tier_row(out: &mut String, class: &str, name: &str, t: &crate::agents::TierView) {
    let unhealthy = t.degraded + t.critical + t.failed;
    let healthy = t.agents.saturating_sub(unhealthy);
    let _ = write!(
        out,
        r#"<tr class="{class}"><td>{name}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><meter min="0" max="{}" low="{}" high="{}" optimum="{}" value="{healthy}" title="{} healthy"></meter></td></tr>"#,
        count(t.agents),
        count(t.down),
        count(t.retired),
        count(t.degraded),
        count(t.critical),
        count(t.failed),
        t.agents.max(1),
        t.agents * 9 / 10,
        t.agents * 99 / 100,
        t.agents.max(1),
        count(healthy),
    );
}

/// Roots shown at most; a hierarchy has few.
const ROOTS: usize = 100;
/// Children listed at most under one agent.
pub(crate) const CHILDREN: usize = 200;

/// A button that loads agent `id`'s detail into the drill-down panel.
fn drill(id: u32, class: &str, label: &str) -> String {
    format!(
        r##"<button type="button" class="{class}" data-agent="{id}" hx-get="/ui/agents/{id}" hx-target="#drill" hx-swap="innerHTML">{label}</button>"##
    )
}

/// The tiers and the top tier's agents.
pub(crate) fn roots(summary: &Summary) -> String {
    let mut out = String::with_capacity(4 << 10);
    out.push_str(r#"<p class="tiers">"#);
    for (i, t) in summary.tiers.iter().enumerate() {
        if i > 0 {
            out.push_str(r#"<span class="sep">›</span>"#);
        }
        let _ = write!(
            out,
            "<span><b>{}</b> {}</span>",
            Esc(&t.name),
            count(t.agents)
        );
    }
    out.push_str(r#"</p><div class="roots">"#);
    let top = summary.tiers.first().map_or("", |t| &*t.name);
    for &id in summary.roots.iter().take(ROOTS) {
        let label = format!("{} {id}", Esc(top));
        out.push_str(&drill(id, "drill root", &label));
    }
    if summary.roots.len() > ROOTS {
        let _ = write!(
            out,
            r#"<span class="note">and {} more</span>"#,
            count((summary.roots.len() - ROOTS) as u64)
        );
    }
    out.push_str("</div>");
    out
}

fn load(a: &AgentView) -> String {
    format!(
        "{} / {}",
        count(u64::from(a.load)),
        count(u64::from(a.capacity))
    )
}

fn latency(a: &AgentView) -> String {
    a.latency_ms
        .map_or_else(String::new, |ms| format!("{ms:.1} ms"))
}

/// A worker is the only kind of agent with a pool.
fn is_worker(a: &AgentView) -> bool {
    a.pool.is_some()
}

/// The attributes of a part of an agent's detail that refreshes itself from the same
/// fragment: only its content is swapped, so a scrolled list keeps its place.
fn refresh(part: &str, id: u32, select: &str) -> String {
    format!(
        r##"id="{part}-{id}" hx-get="/ui/agents/{id}" hx-trigger="every 5s" hx-select="#{part}-{id} > {select}" hx-swap="innerHTML""##
    )
}

/// One agent: its chain of command, its facts and its children.
pub(crate) fn agent(d: &Detail) -> String {
    let a = &d.agent;
    let mut out = String::with_capacity(16 << 10);
    let _ = write!(
        out,
        r#"<div class="detail" id="agent-{id}" data-agent="{id}"><nav class="crumbs" aria-label="Chain of command">"#,
        id = a.id
    );
    for up in d.ancestors.iter().rev() {
        let label = format!("{} {}", Esc(&up.tier), up.id);
        out.push_str(&drill(up.id, "crumb", &label));
        out.push_str(r#"<span class="sep">›</span>"#);
    }
    let _ = write!(
        out,
        r#"<strong id="drill-current">{} {}</strong></nav><dl class="facts" {}>"#,
        Esc(&a.tier),
        a.id,
        refresh("facts", a.id, "div"),
    );
    let mut fact = |name: &str, value: String| {
        let _ = write!(out, "<div><dt>{name}</dt><dd>{value}</dd></div>");
    };
    fact("State", pill(a.state));
    fact("Health", pill(health_name(a.health)));
    fact("Load", load(a));
    if is_worker(a) {
        fact(
            "Pool",
            format!(
                "{} ({} / {})",
                a.pool.unwrap_or_default(),
                Esc(a.kind.as_deref().unwrap_or("")),
                Esc(a.role.as_deref().unwrap_or(""))
            ),
        );
        fact("Average response", latency(a));
    } else {
        fact("Children", count(a.children as u64));
    }
    out.push_str("</dl>");
    if d.children_list.is_empty() {
        if !is_worker(a) {
            out.push_str(r#"<p class="empty">No children.</p>"#);
        }
        out.push_str("</div>");
        return out;
    }
    let _ = write!(
        out,
        r#"<div class="scroll" {}><table class="agents"><thead><tr><th>Agent</th><th>Tier</th><th>State</th><th>Health</th><th class="num">Load</th><th class="num">Children</th><th>Kind / role</th><th class="num">Average response</th></tr></thead><tbody>"#,
        refresh("children", a.id, "table"),
    );
    for c in d.children_list.iter().take(CHILDREN) {
        let (class, kind) = if is_worker(c) {
            let kind = format!(
                "{} / {}",
                Esc(c.kind.as_deref().unwrap_or("")),
                Esc(c.role.as_deref().unwrap_or(""))
            );
            ("worker", kind)
        } else {
            ("manager", String::new())
        };
        let _ = write!(
            out,
            r#"<tr class="{class}" data-agent="{id}"><td>{button}</td><td>{tier}</td><td>{state}</td><td>{health}</td><td class="num">{load}</td><td class="num">{children}</td><td>{kind}</td><td class="num">{latency}</td></tr>"#,
            id = c.id,
            button = drill(c.id, "drill", &c.id.to_string()),
            tier = Esc(&c.tier),
            state = pill(c.state),
            health = pill(health_name(c.health)),
            load = load(c),
            children = count(c.children as u64),
            latency = latency(c),
        );
    }
    out.push_str("</tbody></table></div>");
    if d.children_list.len() > CHILDREN {
        let _ = write!(
            out,
            r#"<p class="note">The first {CHILDREN} of {} children.</p>"#,
            count(d.children_list.len() as u64)
        );
    }
    out.push_str("</div>");
    out
}

/// A task's output as text: a JSON string as itself, other JSON compact, other bytes lossily.
fn output_text(row: &TaskRow) -> String {
    let Some(bytes) = row.output.as_deref() else {
        return String::new();
    };
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Characters of an output or error a cell shows; the whole (up to a limit) is in its title.
const CELL: usize = 120;
const TITLE: usize = 2_000;

/// A cell of untrusted text, clipped, with more of it in the tooltip.
fn text_cell(text: &str) -> String {
    format!(
        r#"<td class="text" title="{}">{}</td>"#,
        Esc(&clip(text, TITLE)),
        Esc(&clip(text, CELL))
    )
}

fn agent_cell(agent: Option<AgentId>) -> String {
    agent.map_or_else(String::new, |a| a.0.to_string())
}

/// The task table.
pub(crate) fn tasks(rows: &[TaskRow], state: Option<TaskState>) -> String {
    if rows.is_empty() {
        return match state {
            None => r#"<p class="empty">No tasks yet.</p>"#.to_owned(),
            Some(s) => format!(r#"<p class="empty">No {} tasks.</p>"#, s.as_str()),
        };
    }
    let mut out = String::with_capacity(rows.len() * 300);
    out.push_str(
        r#"<table id="tasks-table"><thead><tr><th class="num">Task</th><th>Key</th><th>State</th><th class="num">Attempts</th><th class="num">Agent</th><th>Output</th><th>Error</th></tr></thead><tbody>"#,
    );
    for row in rows {
        let _ = write!(
            out,
            r#"<tr data-task="{id}"><td class="num">{id}</td><td>{key}</td><td>{state}</td><td class="num">{attempts}</td><td class="num">{agent}</td>{output}{error}</tr>"#,
            id = row.id.0,
            key = Esc(row.spec.key.as_deref().unwrap_or("")),
            state = pill(row.state.as_str()),
            attempts = row.attempt,
            agent = agent_cell(row.agent),
            output = text_cell(&output_text(row)),
            error = text_cell(row.error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The runs panel on a server that takes no runs.
pub(crate) fn no_runs() -> String {
    r#"<p class="empty">This server runs no workflows: start it with <code>--runs DIR</code>.</p>"#
        .to_owned()
}

/// The runs panel: the newest run first, each with its tasks in the file's order.
pub(crate) fn runs(views: &[crate::runs::RunView]) -> String {
    if views.is_empty() {
        return r#"<p class="empty">No runs yet.</p>"#.to_owned();
    }
    let mut out = String::with_capacity(views.iter().map(|v| v.graph.len() * 400 + 600).sum());
    for v in views {
        let ended = v.counts[2..].iter().sum::<usize>();
        let counts: Vec<String> = crate::runs::STATES
            .iter()
            .zip(v.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{} {s}", count(n as u64)))
            .collect();
        let _ = write!(
            out,
            r#"<div class="run" data-run="{id}"><h3>Run {id}: {name} {state}</h3><p class="note">{ended} of {tasks} tasks ended ({counts}); cost ${cost:.4}; started {started}.{error}</p>"#,
            id = v.id,
            name = Esc(&v.name),
            state = pill(v.state),
            ended = count(ended as u64),
            tasks = count(v.tasks as u64),
            counts = counts.join(", "),
            cost = v.cost_usd,
            started = clock(v.started),
            error = v
                .error
                .as_deref()
                .map(|e| format!(" Error: {}", Esc(&clip(e, CELL))))
                .unwrap_or_default(),
        );
        out.push_str(
            r#"<table class="run-tasks"><thead><tr><th class="num">Wave</th><th>Task</th><th>State</th><th>Needs</th><th class="num">Attempts</th><th class="num">Seconds</th><th class="num">Cost</th><th>Files</th></tr></thead><tbody>"#,
        );
        for n in &v.graph {
            let mut files = String::new();
            let task = Esc(&n.id);
            if std::fs::metadata(v.output.join(format!("{}.json", n.id))).is_ok_and(|m| m.is_file())
            {
                let _ = write!(
                    files,
                    r#"<a href="/v1/runs/{run}/results/{task}">result</a>"#,
                    run = v.id
                );
            }
            for attempt in 1..=if n.own_logs { n.attempts } else { 0 } {
                let log = v
                    .output
                    .join("logs")
                    .join(format!("{}.{attempt}.stderr", n.id));
                if std::fs::metadata(log).is_ok_and(|m| m.is_file()) {
                    let _ = write!(
                        files,
                        r#" <a href="/v1/runs/{run}/logs/{task}/{attempt}">stderr {attempt}</a>"#,
                        run = v.id
                    );
                }
            }
            let _ = write!(
                out,
                r#"<tr data-task="{task}"><td class="num">{wave}</td><td>{task}</td><td>{state}</td><td>{needs}</td><td class="num">{attempts}</td><td class="num">{seconds}</td><td class="num">{cost}</td><td>{files}</td></tr>"#,
                wave = n.wave,
                state = pill(n.state),
                needs = Esc(&clip(&n.needs.join(", "), CELL)),
                attempts = n.attempts,
                seconds = n.seconds.map_or_else(String::new, |s| format!("{s:.2}")),
                cost = n.cost_usd.map_or_else(String::new, |c| format!("${c:.4}")),
            );
        }
        out.push_str("</tbody></table>");
        if v.tasks > v.graph.len() {
            let _ = write!(
                out,
                r#"<p class="note">And {} more tasks: <code>GET /v1/runs/{}</code> has them all.</p>"#,
                count((v.tasks - v.graph.len()) as u64),
                v.id
            );
        }
        out.push_str("</div>");
    }
    out
}

/// A Unix time as `HH:MM:SS` UTC.
fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// One decision as the decisions panel shows it.
pub(crate) struct DecisionLine {
    pub(crate) id: u64,
    /// `open`, `decided` or `failed`.
    pub(crate) state: &'static str,
    pub(crate) protocol: String,
    pub(crate) voters: usize,
    pub(crate) value: Option<String>,
    pub(crate) support: Option<f64>,
    pub(crate) participation: Option<f64>,
    pub(crate) reason: Option<String>,
}

fn share(x: Option<f64>) -> String {
    x.map_or_else(String::new, |x| format!("{:.0} %", x * 100.0))
}

/// The decisions panel: the newest first.
pub(crate) fn decisions(lines: &[DecisionLine]) -> String {
    if lines.is_empty() {
        return r#"<p class="empty">No decisions yet.</p>"#.to_owned();
    }
    let mut out = String::with_capacity(lines.len() * 300);
    out.push_str(
        r#"<table id="decisions-table"><thead><tr><th class="num">Decision</th><th>State</th><th>Protocol</th><th class="num">Voters</th><th>Value</th><th class="num">Support</th><th class="num">Counted</th><th>Reason</th></tr></thead><tbody>"#,
    );
    for d in lines {
        let _ = write!(
            out,
            r#"<tr data-decision="{id}"><td class="num">{id}</td><td>{state}</td><td>{protocol}</td><td class="num">{voters}</td>{value}<td class="num">{support}</td><td class="num">{counted}</td><td>{reason}</td></tr>"#,
            id = d.id,
            state = pill(d.state),
            protocol = Esc(&d.protocol),
            voters = count(d.voters as u64),
            value = text_cell(d.value.as_deref().unwrap_or("")),
            support = share(d.support),
            counted = share(d.participation),
            reason = Esc(d.reason.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The memory panel: each namespace with its documents, dimension, text and approximate
/// index, and how the cache of searches has done.
pub(crate) fn memory(overview: Option<&crate::memory::Overview>) -> String {
    let Some(o) = overview else {
        return r#"<p class="empty">No memory on this server: start it with <code>--memory</code> (a file, or <code>nats://HOST:PORT/NAME</code>) or <code>--memory-chroma URL</code>.</p>"#.to_owned();
    };
    let asked = o.cache.hits + o.cache.misses;
    let mut out = String::with_capacity(o.namespaces.len() * 200 + 300);
    let _ = write!(
        out,
        r#"<p id="memory-cache">Cache: {hits} of {asked} searches answered ({rate}), {entries} kept.</p>"#,
        hits = count(o.cache.hits),
        asked = count(asked),
        rate = if asked == 0 {
            "-".to_owned()
        } else {
            share(Some(o.cache.hits as f64 / asked as f64))
        },
        entries = count(o.cache.entries),
    );
    if o.namespaces.is_empty() {
        out.push_str(r#"<p class="empty">No documents yet.</p>"#);
        return out;
    }
    out.push_str(
        r#"<table id="memory-table"><thead><tr><th>Namespace</th><th class="num">Documents</th><th class="num">Dimension</th><th class="num">Text</th><th class="num">Indexed</th></tr></thead><tbody>"#,
    );
    for n in &o.namespaces {
        let _ = write!(
            out,
            r#"<tr><td>{name}</td><td class="num">{documents}</td><td class="num">{dimension}</td><td class="num">{kib:.1} KiB</td><td class="num">{indexed}</td></tr>"#,
            name = Esc(n.name.as_str()),
            documents = count(n.documents),
            dimension = n
                .dimension
                .map_or_else(|| "-".to_owned(), |d| d.to_string()),
            kib = n.text_bytes as f64 / 1024.0,
            indexed = n
                .indexed
                .map_or_else(|| "-".to_owned(), |i| count(i as u64)),
        );
    }
    out.push_str("</tbody></table>");
    if o.more {
        out.push_str(
            r#"<p class="note">More namespaces than shown: <code>GET /v1/memory</code>.</p>"#,
        );
    }
    out
}

/// The message bus: its counts, and its topics with their subscribers.
pub(crate) fn messages(o: &crate::messages::Overview) -> String {
    let t = &o.stats;
    let mut out = String::with_capacity(o.listed.len() * 100 + 600);
    let _ = write!(
        out,
        r#"<p id="messages-counts">{sent} sent, {delivered} put in mailboxes, {acknowledged} read and acknowledged, {redelivered} read again after a reader was killed, {returned} returned to their senders, {unreturnable} with no sender to return to; {waits} waits at full mailboxes. Now: {held} held in {mailboxes} mailboxes, {topics} topics, {teams} teams.</p>"#,
        sent = count(t.sent),
        delivered = count(t.delivered),
        acknowledged = count(t.acknowledged),
        redelivered = count(t.redelivered),
        returned = count(t.returned),
        unreturnable = count(t.unreturnable),
        waits = count(t.waits),
        held = count(t.held),
        mailboxes = count(t.mailboxes),
        topics = count(t.topics),
        teams = count(t.teams),
    );
    if o.listed.is_empty() {
        out.push_str(r#"<p class="empty">No topics.</p>"#);
        return out;
    }
    out.push_str(
        r#"<table id="messages-table"><thead><tr><th>Topic</th><th class="num">Subscribers</th></tr></thead><tbody>"#,
    );
    for topic in &o.listed {
        let _ = write!(
            out,
            r#"<tr><td>{name}</td><td class="num">{n}</td></tr>"#,
            name = Esc(&topic.name),
            n = count(topic.subscribers as u64),
        );
    }
    out.push_str("</tbody></table>");
    if o.more {
        out.push_str(
            r#"<p class="note">More topics than shown: <code>GET /v1/messages</code>.</p>"#,
        );
    }
    out
}

/// Recent failures: the tasks that failed or were dead-lettered, newest first.
pub(crate) fn failures(rows: &[TaskRow]) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">No failures.</p>"#.to_owned();
    }
    let mut out = String::with_capacity(rows.len() * 200);
    out.push_str(
        r#"<table id="failures-table"><thead><tr><th class="num">Task</th><th>State</th><th class="num">Attempts</th><th class="num">Agent</th><th>Error</th></tr></thead><tbody>"#,
    );
    for row in rows {
        let _ = write!(
            out,
            r#"<tr data-task="{id}"><td class="num">{id}</td><td>{state}</td><td class="num">{attempts}</td><td class="num">{agent}</td>{error}</tr>"#,
            id = row.id.0,
            state = pill(row.state.as_str()),
            attempts = row.attempt,
            agent = agent_cell(row.agent),
            error = text_cell(row.error.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn counts_are_grouped_and_text_is_clipped_on_characters() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(12_345_678), "12,345,678");
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("ab", 2), "ab");
    }

    #[test]
    fn the_pages_carry_no_inline_script_or_style() {
        for page in [shell("v1", true), login("v1")] {
            assert!(!page.contains("style="), "{page}");
            assert!(!page.contains("<style"), "{page}");
            assert!(!page.contains("<script>"), "{page}");
            let handler = page.split(" on").skip(1).any(|rest| {
                let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                !name.is_empty() && rest[name.len()..].starts_with('=')
            });
            assert!(!handler, "no event handler attributes: {page}");
        }
    }
}
