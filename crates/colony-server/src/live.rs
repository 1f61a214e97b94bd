//! What is live: counters, the event stream, and Prometheus metrics.

use crate::App;
use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::{sync::Arc, sync::OnceLock, time::Duration};

/// The process's Prometheus recorder, installed once, whatever the number of servers.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(colony_runtime::metrics::BUCKETS)
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| {
                metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()
            });
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): then ours renders
        // nothing, which the metrics route says.
        let _ = metrics::set_global_recorder(recorder);
        colony_runtime::metrics::describe();
        handle
    })
}

/// Installs the Prometheus recorder: call before the runtime starts, so that its metric
/// handles are registered with it.
pub fn install_metrics() {
    prometheus();
}

pub(crate) async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(app.handle.stats()).into_response()
}

/// The live stream: see the crate documentation.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use colony_runtime::events::Kinds;
    // Not `Kinds::TASKS`: per-task events would cost the dispatcher for every task, and the
    // snapshot carries their counts.
    let h = app.handle.clone();
    let subscription = h.subscribe(Kinds::AGENTS.union(Kinds::HEALTH));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (h, subscription, tick),
        |(h, mut subscription, mut tick)| async move {
            loop {
                let event = tokio::select! {
                    _ = tick.tick() => Event::default()
                        .event("snapshot")
                        .data(serde_json::to_string(&h.stats()).unwrap_or_default()),
                    e = subscription.recv() => match notable(&e?) {
                        Some(v) => Event::default().event("notable").data(v.to_string()),
                        None => continue,
                    },
                };
                return Some((Ok(event), (h, subscription, tick)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The events worth a line on a dashboard, as JSON; `None` for the rest (per task, per agent).
fn notable(e: &colony_runtime::events::Event) -> Option<Value> {
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
        _ => return None,
    })
}

pub(crate) async fn metrics_text() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}
