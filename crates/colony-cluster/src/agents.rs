//! Every agent across the cluster: each node answers for its own agents over NATS
//! request/reply (`colony.agents.<node>`), a page at a time, read from its runtime's live
//! tree ([`colony_runtime::agents::page`]); a client asks every live node at once and gets
//! each one's page, or why it gave none. Nothing is kept in NATS: a node's agents are only
//! ever as current as the answer.

use crate::{Cluster, Error, membership};
use colony_runtime::{
    Handle,
    agents::{AgentQuery, PageError, page},
};
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// Most bytes of a query a node reads: a query is a few filters.
const MAX_QUERY: usize = 8 * 1024;

/// Most agent queries a node answers at once.
const MAX_ANSWERING: usize = 16;

/// How long a client waits for each node's answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The subject node `name` answers on. A node name may hold `.`, which splits a subject's
/// tokens: it is written `%2E` (a name has no `%`).
pub(crate) fn subject(node: &str) -> String {
    format!("colony.agents.{}", node.replace('.', "%2E"))
}

/// One node's answer: a page of its agents (each as its API shows one), and the `after`
/// of its next page; or why it gave none.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeAgents {
    pub node: String,
    pub agents: Vec<serde_json::Value>,
    pub next_after: Option<u32>,
    pub error: Option<String>,
}

/// What a node replies: who it is (its name, and when it started, as its heartbeat says),
/// and `page` or `error`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Reply {
    node: String,
    started_ms: u64,
    page: Option<PageReply>,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct PageReply {
    agents: Vec<serde_json::Value>,
    next_after: Option<u32>,
}

/// Answers the agent queries sent to node `name` (started at `started_ms`, as its
/// heartbeat says), from `handle`'s live tree, while the node lives (until `phase`'s sender
/// is gone, or the task is stopped once it has left the list) and the subscription lasts.
/// Subscribed before it returns, so a node can be listed only once it answers.
pub(crate) async fn answer_queries<P: Send + Sync + 'static>(
    client: async_nats::Client,
    name: &str,
    started_ms: u64,
    handle: Handle,
    mut phase: watch::Receiver<P>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Error> {
    let mut queries = client
        .subscribe(subject(name))
        .await
        .map_err(|e| Error::nats(format!("answering agent queries for node {name}"), e))?;
    let name: std::sync::Arc<str> = name.into();
    Ok(async move {
        // Several at once (a slow page does not hold up the askers behind it), a bounded
        // number: past it, queries wait in the subscription.
        let mut answering = futures::stream::FuturesUnordered::new();
        loop {
            let message = tokio::select! {
                Some(()) = answering.next(), if !answering.is_empty() => continue,
                m = queries.next(), if answering.len() < MAX_ANSWERING => match m {
                    Some(m) => m,
                    None => {
                        tracing::warn!("node {name}: its agent queries' subscription ended");
                        return;
                    }
                },
                // A draining node still answers; one dropped is gone.
                changed = phase.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            let Some(reply) = message.reply else { continue };
            let (client, handle, name) = (client.clone(), handle.clone(), name.clone());
            answering.push(async move {
                let mut answer = one_answer(&handle, &message.payload).await;
                answer["node"] = name.to_string().into();
                answer["started-ms"] = started_ms.into();
                let bytes = answer.to_string();
                if let Err(e) = client.publish(reply.clone(), bytes.into()).await {
                    // A page over the server's max_payload, or a connection lost: say which.
                    let error = serde_json::json!({
                        "node": &*name, "started-ms": started_ms,
                        "error": format!("its answer could not be sent ({e}); if it is too large for NATS, ask for fewer agents (limit)"),
                    });
                    let _ = client.publish(reply, error.to_string().into()).await;
                }
            });
        }
    })
}

/// The reply to one query: `{"page": ...}` or `{"error": "..."}`. A page not read within
/// [`ANSWER_WAIT`] is given up: its asker has stopped waiting.
async fn one_answer(handle: &Handle, query: &[u8]) -> serde_json::Value {
    let error = |message: String| serde_json::json!({ "error": message });
    if query.len() > MAX_QUERY {
        return error(format!(
            "a query of {} bytes is over the {MAX_QUERY} a node reads",
            query.len()
        ));
    }
    let query: AgentQuery = match serde_json::from_slice(query) {
        Ok(q) => q,
        Err(e) => return error(format!("the query does not read: {e}")),
    };
    match tokio::time::timeout(ANSWER_WAIT, page(handle, query)).await {
        Err(_) => error(format!("its runtime gave no page in {ANSWER_WAIT:?}")),
        Ok(Ok(page)) => serde_json::json!({ "page": page }),
        Ok(Err(PageError::BadQuery(message))) => error(message),
        Ok(Err(PageError::Runtime(e))) => error(format!("its runtime did not answer: {e}")),
    }
}

impl Cluster {
    /// A page of agents matching `query` from each live node, or from node `only`, asked
    /// at once; each node's answer or why it gave none (within [`ANSWER_WAIT`]), in the
    /// nodes' name order. An error when the query is bad whatever the node
    /// ([`AgentQuery::check`]), or when `only` names no live node.
    pub async fn agents(
        &self,
        only: Option<&str>,
        query: &AgentQuery,
    ) -> Result<Vec<NodeAgents>, Error> {
        query.check().map_err(Error::Settings)?;
        let mut listed: Vec<(String, u64)> = membership::list(&self.nodes)
            .await?
            .into_iter()
            .map(|n| (n.name, n.started_ms))
            .collect();
        listed.dedup_by(|a, b| a.0 == b.0);
        let mut nodes: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        if let Some(only) = only {
            if !nodes.iter().any(|n| n == only) {
                return Err(Error::Settings(format!(
                    "no live node is named `{}`: the live ones are {}",
                    colony_core::text::shorten(only, 130),
                    if nodes.is_empty() {
                        "none".to_owned()
                    } else {
                        nodes.join(", ")
                    }
                )));
            }
            nodes.retain(|n| n == only);
        }
        let body = bytes::Bytes::from(
            serde_json::to_vec(query).map_err(|e| Error::Settings(e.to_string()))?,
        );
        let asks = nodes.into_iter().map(|node| {
            let body = body.clone();
            let started = listed
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, s)| *s);
            async move {
                if crate::node::check_name(&node).is_err() {
                    // Not written by a node of this version: no subject is made of it.
                    return NodeAgents {
                        error: Some("its heartbeat's name is not a node name".into()),
                        node,
                        agents: Vec::new(),
                        next_after: None,
                    };
                }
                let asked =
                    tokio::time::timeout(ANSWER_WAIT, self.client.request(subject(&node), body))
                        .await;
                let failed = |error: String| NodeAgents {
                    node: node.clone(),
                    agents: Vec::new(),
                    next_after: None,
                    error: Some(error),
                };
                let message = match asked {
                    Err(_) => return failed(format!("no answer in {ANSWER_WAIT:?}")),
                    Ok(Err(e)) => return failed(format!("no answer: {e}")),
                    Ok(Ok(message)) => message,
                };
                match serde_json::from_slice::<Reply>(&message.payload) {
                    Ok(reply) if reply.node != node || Some(reply.started_ms) != started => {
                        failed(format!(
                            "answered by node {} started at {} ms, but the list has {node} started at {} ms: two processes share the name",
                            reply.node,
                            reply.started_ms,
                            started.unwrap_or_default()
                        ))
                    }
                    Ok(Reply {
                        page: Some(page), ..
                    }) => NodeAgents {
                        node,
                        agents: page.agents,
                        next_after: page.next_after,
                        error: None,
                    },
                    Ok(Reply {
                        error: Some(error), ..
                    }) => failed(error),
                    Ok(_) => failed("its answer holds neither a page nor an error".into()),
                    Err(e) => failed(format!("its answer does not read: {e}")),
                }
            }
        });
        Ok(futures::future::join_all(asks).await)
    }
}
