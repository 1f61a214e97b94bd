//! The probes of a process that serves no API of its own, a cluster node (`colony node
//! --probes ADDR`): `GET /healthz` (alive), `GET /readyz` (takes work: 200, else 503
//! `not-ready` with the reason) and `GET /metrics` (Prometheus text). Read-only and without
//! secrets, so they may listen on any address: Kubernetes probes a pod on its own IP.

use crate::{Error, live};
use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use colony_agents::spawner::Spawner;
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::oneshot;

/// Whether the process takes work now, and if not, why.
pub type Ready = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The probe server, stopped when dropped.
#[derive(Debug)]
pub struct Probes {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Probes {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Listens on `addr` for the three probes; `ready` answers `/readyz`.
pub async fn serve_probes(addr: SocketAddr, ready: Ready) -> Result<Probes, Error> {
    live::install_metrics();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => axum::Json(serde_json::json!({ "ready": true })).into_response(),
                        Err(reason) => {
                            crate::problem(StatusCode::SERVICE_UNAVAILABLE, "not-ready", reason)
                        }
                    }
                }
            }),
        )
        .route("/metrics", get(live::metrics_only));
    let (stop, stopped) = oneshot::channel::<()>();
    Spawner::spawn("probes", async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!("the probes stopped: {e}");
        }
    });
    Ok(Probes {
        addr,
        stop: Some(stop),
    })
}
