//! What is live: counters, the event stream, and Prometheus metrics.

use crate::App;
use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{collections::VecDeque, sync::Arc, sync::OnceLock, time::Duration};

/// A Prometheus recorder with the runtime's buckets: durations from 10 µs to 10 minutes,
/// ratios (`_ratio`) in tenths.
pub(crate) fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    use colony_runtime::metrics::{BUCKETS, RATIO_BUCKETS};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_ratio".into()), RATIO_BUCKETS))
        .map(|b| b.build_recorder())
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder())
}

/// The process's Prometheus recorder, installed once, whatever the number of servers.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): then ours renders
        // nothing, which the metrics route says.
        let _ = metrics::set_global_recorder(recorder);
        colony_runtime::metrics::describe();
        crate::backup::describe();
        describe_spend();
        handle
    })
}

const SPENT: &str = "colony_pool_spent_usd";
const TOKENS: &str = "colony_pool_tokens";
const BUDGET: &str = "colony_pool_budget_usd";

fn describe_spend() {
    metrics::describe_gauge!(
        SPENT,
        "Dollars a pool's calls have cost since the server started (http agents, coding-agent CLIs), by pool."
    );
    metrics::describe_gauge!(
        TOKENS,
        metrics::Unit::Count,
        "Tokens a pool's calls have used since the server started, by pool and kind (prompt, completion)."
    );
    metrics::describe_gauge!(
        BUDGET,
        "Dollars a pool may spend (its budget-usd), by pool: once spent, its tasks fail instead of calling."
    );
}

/// What the pools that cost have spent, as of this scrape.
fn record_spend(spend: &[colony_workflow::Metered]) {
    for m in spend {
        let u = m.usage();
        let pool = m.pool.clone();
        metrics::gauge!(SPENT, "pool" => pool.clone()).set(u.cost_usd);
        metrics::gauge!(TOKENS, "pool" => pool.clone(), "kind" => "prompt")
            .set(u.prompt_tokens as f64);
        metrics::gauge!(TOKENS, "pool" => pool.clone(), "kind" => "completion")
            .set(u.completion_tokens as f64);
        if let Some(budget) = m.budget_usd {
            metrics::gauge!(BUDGET, "pool" => pool).set(budget);
        }
    }
}

/// Installs the Prometheus recorder: call before the runtime starts, so that its metric
/// handles are registered with it.
pub fn install_metrics() {
    prometheus();
}

/// How long the dispatcher may take to answer a readiness check.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /readyz`: whether the runtime takes work: its dispatcher, which accepts every task,
/// answers a query within [`READY_WITHIN`]. 503 `not-ready` when it has stopped (its journal
/// failed, or a shutdown began) or is too busy to answer; open to all, and says nothing more.
pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Err(e) = app.handle.journal().writable() {
        return crate::problem(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the journal takes no writes: {e}"),
        );
    }
    match tokio::time::timeout(READY_WITHIN, app.handle.inspect(|_| ())).await {
        Ok(Ok(())) => Json(serde_json::json!({ "ready": true })).into_response(),
        Ok(Err(e)) => crate::problem(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!("the runtime takes no work: {e}"),
        ),
        Err(_) => crate::problem(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            format!(
                "the runtime's dispatcher did not answer within {} s",
                READY_WITHIN.as_secs()
            ),
        ),
    }
}

pub(crate) async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(app.handle.stats()).into_response()
}

/// The journal's continuous backup: where, how often, and how the backups went.
pub(crate) async fn backup(State(app): State<Arc<App>>) -> Response {
    match &app.backup {
        Some(backups) => Json(backups.status()).into_response(),
        None => crate::problem(
            axum::http::StatusCode::NOT_FOUND,
            "no-backup",
            "this server backs nothing up: start it with --backup-to (and --db)",
        ),
    }
}

/// The live stream: see the crate documentation. Restarts and growth come as one `notable`
/// event a second each, with their counts: a swarm restarting thousands of agents a second
/// must not send the browser thousands of lines.
pub(crate) async fn events(State(app): State<Arc<App>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use colony_runtime::events::Kinds;
    // Held for as long as the stream is open.
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return crate::problem(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            format!(
                "{} event streams are open, the most this server keeps: try again later",
                app.max_streams
            ),
        );
    };
    // Not `Kinds::TASKS`: per-task events would cost the dispatcher for every task, and the
    // snapshot carries their counts.
    let h = app.handle.clone();
    let subscription = h.subscribe(
        Kinds::AGENTS
            .union(Kinds::HEALTH)
            .union(Kinds::SCALING)
            .union(Kinds::DECISIONS)
            .union(Kinds::TEAMS),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let coalesced = Coalesced {
        latencies: Some(h.latencies()),
        ..Coalesced::default()
    };
    let mut coalesced = Coalesced {
        backup: app.backup.clone().map(|b| (b, (0, 0))),
        ..coalesced
    };
    if let Some((backups, seen)) = &mut coalesced.backup {
        // Only what happens from now on: a failure before the stream opened shows in
        // `/v1/backup`.
        let _ = crate::backup::notable(backups, seen);
    }
    let state = (h, subscription, tick, coalesced, VecDeque::new(), permit);
    let stream = futures::stream::unfold(
        state,
        |(h, mut subscription, mut tick, mut coalesced, mut ready, permit)| async move {
            loop {
                if let Some(event) = ready.pop_front() {
                    let state = (h, subscription, tick, coalesced, ready, permit);
                    return Some((Ok::<_, std::convert::Infallible>(event), state));
                }
                tokio::select! {
                    _ = tick.tick() => {
                        let stats = h.stats();
                        if let Some((backups, seen)) = &mut coalesced.backup {
                            for v in crate::backup::notable(backups, seen) {
                                ready.push_back(Event::default().event("notable").data(v.to_string()));
                            }
                        }
                        for v in coalesced.take(&stats) {
                            ready.push_back(Event::default().event("notable").data(v.to_string()));
                        }
                        let snapshot = coalesced.snapshot(&h, stats).to_string();
                        ready.push_back(Event::default().event("snapshot").data(snapshot));
                    }
                    e = subscription.recv() => {
                        if let Some(v) = coalesced.notable(&e?) {
                            ready.push_back(Event::default().event("notable").data(v.to_string()));
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Restarts and growth since the last tick, and the latencies as they were then.
#[derive(Debug, Default)]
struct Coalesced {
    restarted: u64,
    last_cause: Option<Arc<str>>,
    spawned: u64,
    latencies: Option<colony_runtime::Latencies>,
    /// Steals and tasks rebalanced as the last tick counted them.
    balanced: Option<(u64, u64)>,
    /// The journal's backups, and the failures the stream has told of.
    backup: Option<(Arc<crate::backup::Backups>, (u64, u64))>,
}

impl Coalesced {
    /// The counters, with the latency of the tasks that ended since the last snapshot: the
    /// 50th and 99th percentiles, as the upper bounds of power-of-two buckets (`null` when
    /// none ended).
    fn snapshot(&mut self, h: &colony_runtime::Handle, stats: colony_runtime::Stats) -> Value {
        let mut snapshot = serde_json::to_value(stats).unwrap_or(Value::Null);
        let now = h.latencies();
        let earlier = self.latencies.replace(now).unwrap_or(now);
        let ms = |q| {
            now.quantile_since(&earlier, q)
                .map(|d| d.as_secs_f64() * 1e3)
        };
        if let Some(fields) = snapshot.as_object_mut() {
            fields.insert("latency-p50-ms".into(), json!(ms(0.5)));
            fields.insert("latency-p99-ms".into(), json!(ms(0.99)));
        }
        snapshot
    }

    /// The event as a line for a dashboard, as JSON, if it is one on its own; `None` for
    /// the rest (counted for the next tick, or of no interest).
    fn notable(&mut self, e: &colony_runtime::events::Event) -> Option<Value> {
        use colony_runtime::events::Event as E;
        Some(match e {
            E::SupervisorEscalated { supervisor, cause } => {
                json!({"kind": "supervisor-escalated", "supervisor": supervisor.map(|s| s.0), "cause": &**cause})
            }
            E::HealthAlert {
                agent,
                average,
                baseline,
            } => json!({
                "kind": "health-alert", "agent": agent.0,
                "average-ms": average.as_secs_f64() * 1e3, "baseline-ms": baseline.as_secs_f64() * 1e3,
            }),
            E::AgentSidelined { agent, reason } => {
                json!({"kind": "health:sidelined", "agent": agent.0, "reason": reason})
            }
            E::AgentReadmitted { agent } => json!({"kind": "health:readmitted", "agent": agent.0}),
            // As the pools' history notes them, with the pool.
            E::PoolScaled { .. } | E::ScaleBlocked { .. } => {
                let (pool, change) = crate::history::Change::of(e)?;
                let mut line = serde_json::to_value(change).ok()?;
                line["pool"] = json!(pool);
                line
            }
            E::DecisionEnded {
                first_ballot,
                protocol,
                voters,
                counted,
                value,
                reason,
            } => json!({
                "kind": if value.is_some() { "consensus:reached" } else { "consensus:failed" },
                "first-ballot": first_ballot.0, "protocol": protocol.as_str(), "voters": voters,
                "counted": counted, "value": value.as_deref().map(|v| colony_core::text::shorten(v, 120)),
                "reason": reason.map(|r| r.as_str()),
            }),
            E::TeamFormed {
                team,
                supervisor,
                members,
                together,
            } => json!({
                "kind": "team:formed", "team": team, "supervisor": supervisor.0,
                "members": members, "together": together,
            }),
            E::TeamReassigned {
                team,
                role,
                from,
                to,
            } => json!({
                "kind": "team:reassigned", "team": team, "role": &**role, "from": from.0, "to": to.0,
            }),
            E::TeamEnded {
                team,
                succeeded,
                tasks,
                reassigned,
                error,
            } => json!({
                "kind": "team:ended", "team": team, "succeeded": succeeded, "tasks": tasks,
                "reassigned": reassigned,
                "error": error.as_deref().map(|e| colony_core::text::shorten(e, 200)),
            }),
            E::AgentRestarted { cause, .. } => {
                self.restarted += 1;
                self.last_cause = Some(cause.clone());
                return None;
            }
            E::AgentsSpawned { count, .. } => {
                self.spawned += u64::from(*count);
                return None;
            }
            _ => return None,
        })
    }

    /// The counted events as one line each, and a fresh count. Load balancing is counted by
    /// the runtime, not sent as events (one per task would cost the dispatcher): its line
    /// comes from the counters' change.
    fn take(&mut self, stats: &colony_runtime::Stats) -> Vec<Value> {
        let mut lines = Vec::new();
        let now = (stats.steals, stats.rebalanced);
        if let Some((steals, rebalanced)) = self.balanced.replace(now)
            && now != (steals, rebalanced)
        {
            lines.push(json!({
                "kind": "rebalanced",
                "stolen": now.0.saturating_sub(steals),
                "moved": now.1.saturating_sub(rebalanced),
            }));
        }
        if self.restarted > 0 {
            lines.push(json!({
                "kind": "recovered", "agents": self.restarted,
                "last-cause": self.last_cause.as_deref(),
            }));
        }
        if self.spawned > 0 {
            lines.push(json!({"kind": "scaled", "agents-added": self.spawned}));
        }
        self.restarted = 0;
        self.last_cause = None;
        self.spawned = 0;
        lines
    }
}

/// What the process's recorder holds, in Prometheus's text format.
pub(crate) fn rendered() -> String {
    prometheus().render()
}

/// `GET /metrics` of a process with no server state: what the recorder holds.
pub(crate) async fn metrics_only() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

pub(crate) async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    record_spend(&app.spend);
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancing_is_one_line_a_second_from_the_counters_change() {
        let mut c = Coalesced::default();
        let stats = |steals, rebalanced| colony_runtime::Stats {
            steals,
            rebalanced,
            ..colony_runtime::Stats::default()
        };
        assert!(
            c.take(&stats(3, 1)).is_empty(),
            "the first reading is a baseline"
        );
        assert_eq!(
            c.take(&stats(8, 3)),
            [json!({"kind": "rebalanced", "stolen": 5, "moved": 2})]
        );
        assert!(c.take(&stats(8, 3)).is_empty(), "nothing moved this second");
        c.restarted = 4;
        c.spawned = 12;
        let lines = c.take(&stats(8, 3));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(c.take(&stats(8, 3)).is_empty(), "counted once");
    }

    #[test]
    fn scaling_and_decisions_are_notable_lines() {
        use colony_core::{decision, scaling};
        use colony_runtime::events::Event as E;
        let mut c = Coalesced::default();
        let line = |c: &mut Coalesced, e: E| c.notable(&e).unwrap();
        assert_eq!(
            line(
                &mut c,
                E::PoolScaled {
                    pool: 1,
                    from: 2,
                    to: 5,
                    reason: scaling::Reason::HighUtilisation,
                }
            ),
            json!({"kind": "scale:up", "pool": 1, "from": 2, "to": 5, "reason": "high-utilisation"})
        );
        assert_eq!(
            line(
                &mut c,
                E::ScaleBlocked {
                    pool: 0,
                    wanted: scaling::Reason::Forecast,
                    by: scaling::Blocked::AtMax,
                }
            ),
            json!({"kind": "scale:blocked", "pool": 0, "wanted": "forecast", "by": "at-max"})
        );
        assert_eq!(
            line(
                &mut c,
                E::DecisionEnded {
                    first_ballot: colony_core::TaskId(7),
                    protocol: decision::Protocol::Bft,
                    voters: 4,
                    counted: 2,
                    value: None,
                    reason: Some(decision::Reason::TooManyFaults),
                }
            ),
            json!({"kind": "consensus:failed", "first-ballot": 7, "protocol": "bft", "voters": 4,
                   "counted": 2, "value": null, "reason": "too-many-faults"})
        );
        use colony_core::AgentId;
        assert_eq!(
            line(
                &mut c,
                E::TeamReassigned {
                    team: 3,
                    role: "coder".into(),
                    from: AgentId(9),
                    to: AgentId(11),
                }
            ),
            json!({"kind": "team:reassigned", "team": 3, "role": "coder", "from": 9, "to": 11})
        );
        assert_eq!(
            line(
                &mut c,
                E::TeamEnded {
                    team: 3,
                    succeeded: false,
                    tasks: 4,
                    reassigned: 2,
                    error: Some("spent".into()),
                }
            ),
            json!({"kind": "team:ended", "team": 3, "succeeded": false, "tasks": 4,
                   "reassigned": 2, "error": "spent"})
        );
    }
}
