//! A workflow's tasks and the message bus: `wait:` (a task waits for a message on a topic
//! before it runs, and gets the first in its input as `message`) and `publish:` (a task's
//! output is published on a topic once it succeeds). See workflow.md and messaging.md.
//!
//! A waiting task waits before it is filled in or charged against the run's in-flight
//! budget: a task that may wait for hours holds none of it.

use crate::Workflow;
use bytes::Bytes;
use colony_core::{
    mailbox::{Address, Endpoint},
    task::TaskSpec,
};
use colony_runtime::messages::{Bus, Inbox};
use serde_json::{Value, json};
use std::{collections::HashMap, sync::Arc, time::Duration};

/// How long publishing an output may wait for room in a subscriber's mailbox.
pub(crate) const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// The mailbox a workflow task reads or sends from: `workflow/ID`.
fn endpoint(task: &str) -> Endpoint {
    Endpoint::Named(Arc::from(format!("workflow/{task}")))
}

/// The waiting tasks' mailboxes, by task index, until each task's wait begins.
pub(crate) struct Waits {
    open: HashMap<usize, Waiting>,
}

impl Waits {
    /// Opens and subscribes the mailbox of every task of `workflow` that waits, so that
    /// nothing published before its turn is missed.
    pub(crate) fn open(workflow: &Workflow, bus: &Bus) -> Result<Self, colony_runtime::Error> {
        let mut open = HashMap::new();
        for (i, t) in workflow.tasks.iter().enumerate() {
            let Some((topic, limit)) = &t.wait else {
                continue;
            };
            let me = endpoint(&t.id);
            let refused = |e: colony_runtime::messages::Error| {
                colony_runtime::Error::Options(format!("task `{}`: wait: {e}", t.id))
            };
            let inbox = bus.open(me.clone()).map_err(refused)?;
            // From here on, dropping the wait closes the mailbox.
            let waiting = Waiting {
                bus: bus.clone(),
                inbox: Some(inbox),
                topic: topic.clone(),
                limit: *limit,
            };
            bus.subscribe(topic, me).map_err(refused)?;
            open.insert(i, waiting);
        }
        Ok(Self { open })
    }

    /// Whether task `i` has a wait still to make.
    pub(crate) fn waits(&self, i: usize) -> bool {
        self.open.contains_key(&i)
    }

    /// Task `i`'s wait, to be made now.
    pub(crate) fn take(&mut self, i: usize) -> Option<Waiting> {
        self.open.remove(&i)
    }

    /// Task `i` will not wait (skipped, or done by an earlier run): its mailbox closes, so
    /// that what is published meanwhile does not pile up in it.
    pub(crate) fn close(&mut self, i: usize) {
        self.open.remove(&i);
    }
}

/// One task's wait for its message. Dropped, by whatever path, it leaves its topic and
/// closes its mailbox: later messages go back to their senders.
pub(crate) struct Waiting {
    bus: Bus,
    inbox: Option<Inbox>,
    topic: Arc<str>,
    limit: Duration,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            let me = inbox.endpoint().clone();
            drop(inbox);
            self.bus.unsubscribe(&self.topic, &me);
            self.bus.close(&me, "the task that waited is done waiting");
        }
    }
}

impl Waiting {
    /// Waits up to the task's limit for the first message on its topic: what goes into its
    /// input as `message`, `{"from", "topic", "body"}`, the body as JSON when it reads as
    /// JSON, else as text.
    pub(crate) async fn wait(mut self) -> Result<Value, String> {
        let (topic, limit) = (self.topic.clone(), self.limit);
        let inbox = self.inbox.as_mut().expect("taken only on drop");
        let deadline = tokio::time::Instant::now() + limit;
        // Only a message on the topic counts: one sent to the mailbox itself (by name, from
        // another process of a cluster) is read and passed over.
        let first = loop {
            let next = match tokio::time::timeout_at(deadline, inbox.recv_at_most(1)).await {
                Ok(Ok(mut batch)) => batch.swap_remove(0),
                Ok(Err(e)) => return Err(format!("wait: {e}")),
                Err(_) => {
                    return Err(format!(
                        "wait: no message on topic `{topic}` within {}",
                        humantime::format_duration(limit)
                    ));
                }
            };
            inbox.ack();
            if matches!(&next.to, colony_core::mailbox::Address::Topic(t) if **t == *topic) {
                break next;
            }
        };
        let body = serde_json::from_slice::<Value>(&first.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&first.body).into_owned()));
        Ok(json!({ "from": first.from.to_string(), "topic": &*topic, "body": body }))
    }
}

/// `spec` with `message` in its input as `message`, within `max_payload`.
pub(crate) fn with_message(
    spec: TaskSpec,
    message: Value,
    max_payload: usize,
) -> Result<TaskSpec, String> {
    let mut payload: Value = serde_json::from_slice(&spec.payload)
        .map_err(|e| format!("wait: the task's payload is not JSON: {e}"))?;
    match payload.get_mut("input") {
        Some(Value::Object(input)) => {
            input.insert("message".into(), message);
        }
        Some(slot @ Value::Null) => *slot = json!({ "message": message }),
        _ => {
            return Err(
                "wait: the task's input is not a map, so there is no field to put the message in"
                    .into(),
            );
        }
    }
    let payload = payload.to_string();
    if payload.len() > max_payload {
        return Err(format!(
            "wait: with its message, the task's payload is {} bytes, over the limit of {max_payload}",
            payload.len()
        ));
    }
    Ok(TaskSpec {
        payload: Bytes::from(payload),
        ..spec
    })
}

/// Publishes task `task`'s `output` on `topic`, from `workflow/TASK`, waiting up to
/// [`PUBLISH_WAIT`] for room in a subscriber's mailbox.
pub(crate) async fn publish(
    bus: &Bus,
    task: &str,
    topic: &str,
    output: Bytes,
) -> Result<(), String> {
    let sent = bus.send(endpoint(task), Address::Topic(Arc::from(topic)), output);
    match tokio::time::timeout(PUBLISH_WAIT, sent).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("publish on topic `{topic}`: {e}")),
        Err(_) => Err(format!(
            "publish on topic `{topic}`: a subscriber's mailbox stayed full for {}",
            humantime::format_duration(PUBLISH_WAIT)
        )),
    }
}
