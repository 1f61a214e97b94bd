//! A node's own pod's deletion cost, so that a scale-down takes idle nodes first.
//!
//! When a ReplicaSet shrinks, Kubernetes deletes the pods with the lowest
//! `controller.kubernetes.io/pod-deletion-cost` first. A node in a pod
//! (`colony node --pod-deletion-cost`) sets it on its own pod to the attempts it runs: an idle
//! node costs 0 and goes first, a busy one is kept, and the tasks it would hand back stay
//! where they run. It writes the annotation through the API server with the pod's service
//! account (a Role allowing `patch` on pods; the Helm chart makes it), when the count
//! changes and at most once per interval, so that a busy swarm does not flood the API server.
//!
//! [`Cost`] decides when to write (sans IO); [`InCluster`] reads the pod's identity from
//! what Kubernetes mounts and writes the patch.

use crate::Error;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// The annotation Kubernetes reads when a ReplicaSet shrinks.
pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Where Kubernetes mounts a pod's service account.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Shortest time between two writes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Most bytes read of a mounted file (the token, the CA bundle, the namespace).
const MAX_FILE: u64 = 1 << 20;

/// When to write the cost, sans IO: a changed value, no sooner than `interval` after the last
/// write (the first at once); a failed write is tried again after the interval.
#[derive(Clone, Debug)]
pub struct Cost {
    interval: Duration,
    written: Option<i32>,
    last: Option<Duration>,
}

impl Cost {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            written: None,
            last: None,
        }
    }

    /// The cost of a node running `running` attempts: that many, within an `i32`.
    pub fn of(running: u64) -> i32 {
        i32::try_from(running).unwrap_or(i32::MAX)
    }

    /// The value to write at `now`, if any.
    pub fn due(&self, running: u64, now: Duration) -> Option<i32> {
        let cost = Self::of(running);
        let changed = self.written != Some(cost);
        let rested = self.last.is_none_or(|at| now >= at + self.interval);
        (changed && rested).then_some(cost)
    }

    /// A write of `cost` was tried at `now` and succeeded or not.
    pub fn wrote(&mut self, cost: i32, ok: bool, now: Duration) {
        self.last = Some(now);
        if ok {
            self.written = Some(cost);
        }
    }
}

/// The pod this process runs in, and how to reach the API server from it.
#[derive(Clone, Debug)]
pub struct InCluster {
    /// `https://HOST:PORT` of the API server.
    api: String,
    namespace: String,
    pod: String,
    token: PathBuf,
    client: reqwest::Client,
}

impl InCluster {
    /// From what Kubernetes gives a pod: `KUBERNETES_SERVICE_HOST` and `_PORT`, the service
    /// account mounted at `service_account` (token, `ca.crt`, namespace), and the pod's name
    /// in `POD_NAME` (the chart sets it) or `HOSTNAME` (a pod's by default).
    pub fn from_env(service_account: &Path) -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let not_in_pod = |what: String| {
            Error::Settings(format!(
                "--pod-deletion-cost: {what}; it works in a Kubernetes pod only"
            ))
        };
        let host = var("KUBERNETES_SERVICE_HOST")
            .ok_or_else(|| not_in_pod("KUBERNETES_SERVICE_HOST is not set".into()))?;
        let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        let pod = var("POD_NAME")
            .or_else(|| var("HOSTNAME"))
            .ok_or_else(|| not_in_pod("neither POD_NAME nor HOSTNAME is set".into()))?;
        crate::settings::check_pod_name(&pod)?;
        let read = |name: &str| -> Result<Vec<u8>, Error> {
            let path = service_account.join(name);
            read_bounded(&path)
                .map_err(|e| not_in_pod(format!("the service account's {}: {e}", path.display())))
        };
        let namespace = String::from_utf8_lossy(&read("namespace")?)
            .trim()
            .to_owned();
        crate::settings::check_pod_name(&namespace)?;
        let ca = read("ca.crt")?;
        let certs = reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| {
            not_in_pod(format!(
                "the service account's ca.crt holds no certificate: {e}"
            ))
        })?;
        let client = reqwest::Client::builder()
            .tls_certs_only(certs)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Settings(format!("--pod-deletion-cost: {e}")))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Self {
            api: format!("https://{host}:{port}"),
            namespace,
            pod,
            token: service_account.join("token"),
            client,
        })
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Sets the pod's deletion cost. The token is read at each write: Kubernetes rotates it.
    pub async fn set_cost(&self, cost: i32) -> Result<(), String> {
        let token = tokio::task::spawn_blocking({
            let path = self.token.clone();
            move || read_bounded(&path)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the service account's token: {e}"))?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        let url = format!(
            "{}/api/v1/namespaces/{}/pods/{}",
            self.api, self.namespace, self.pod
        );
        let body = serde_json::json!({
            "metadata": {"annotations": {ANNOTATION: cost.to_string()}}
        });
        let response = self
            .client
            .patch(&url)
            .bearer_auth(token)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("PATCH {url}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The API server's explanation, its first few KiB: an answer is bounded like any input.
        let mut body = Vec::new();
        let mut response = response;
        while body.len() < 4096
            && let Ok(Some(chunk)) = response.chunk().await
        {
            body.extend_from_slice(&chunk);
        }
        body.truncate(4096);
        let text = String::from_utf8_lossy(&body);
        let hint = if status.as_u16() == 403 {
            " (the pod's service account needs a Role allowing `patch` on pods; an admission \
             policy, as the chart's, may also refuse a patch of anything but this pod's deletion \
             cost)"
        } else {
            ""
        };
        Err(format!(
            "PATCH {url}: {status}{hint}: {}",
            colony_core::text::shorten(&text, 300)
        ))
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Keeps the pod's cost at what `running` says, checked every second, until dropped.
pub async fn keep_cost(pod: InCluster, running: impl Fn() -> u64, interval: Duration) {
    let start = tokio::time::Instant::now();
    let mut cost = Cost::new(interval);
    let mut failing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = start.elapsed();
        let Some(value) = cost.due(running(), now) else {
            continue;
        };
        let result = pod.set_cost(value).await;
        match &result {
            Ok(()) if failing => {
                tracing::info!(pod = %pod.pod, "the pod's deletion cost is written again");
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(pod = %pod.pod, "the pod's deletion cost was not written: {e}");
                failing = true;
            }
            _ => {}
        }
        cost.wrote(value, result.is_ok(), start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_cost_is_written_at_most_once_per_interval() {
        let s = Duration::from_secs;
        let mut cost = Cost::new(s(5));
        assert_eq!(cost.due(0, s(0)), Some(0), "the first at once");
        cost.wrote(0, true, s(0));
        assert_eq!(cost.due(0, s(10)), None, "unchanged");
        assert_eq!(cost.due(3, s(4)), None, "too soon");
        assert_eq!(cost.due(3, s(5)), Some(3));
        cost.wrote(3, false, s(5));
        assert_eq!(cost.due(3, s(9)), None, "a failed write rests too");
        assert_eq!(cost.due(3, s(10)), Some(3), "and is tried again");
        cost.wrote(3, true, s(10));
        assert_eq!(cost.due(3, s(60)), None);
        assert_eq!(Cost::of(u64::MAX), i32::MAX);
    }
}
