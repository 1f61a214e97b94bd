//! A workflow's tasks and the message bus: `wait:` (a task waits for a message on a topic
//! before it runs, and gets the first in its input as `message`) and `publish:` (a task's
//! output is published on a topic once it succeeds). See workflow.md and messaging.md.

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

/// The waiting tasks' mailboxes, by task index.
pub(crate) struct Waits {
    bus: Bus,
    open: HashMap<usize, (Inbox, Arc<str>, Duration)>,
}

impl Waits {
    /// Opens and subscribes the mailbox of every task of `workflow` that waits.
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
            bus.subscribe(topic, me).map_err(refused)?;
            open.insert(i, (inbox, topic.clone(), *limit));
        }
        Ok(Self {
            bus: bus.clone(),
            open,
        })
    }

    /// Task `i`'s wait, if it waits: handed to the task when it is about to run.
    pub(crate) fn take(&mut self, i: usize) -> Option<Waiting> {
        let (inbox, topic, limit) = self.open.remove(&i)?;
        Some(Waiting {
            bus: self.bus.clone(),
            inbox,
            topic,
            limit,
        })
    }
}

/// One task's wait for its message.
pub(crate) struct Waiting {
    bus: Bus,
    inbox: Inbox,
    topic: Arc<str>,
    limit: Duration,
}

impl Waiting {
    /// Waits up to the task's limit for the first message on its topic and puts it in the
    /// task's input as `message`: `{"from", "topic", "body"}`, the body as JSON when it
    /// reads as JSON, else as text. The mailbox then closes: later messages go back to their
    /// senders.
    pub(crate) async fn wait(
        mut self,
        spec: TaskSpec,
        max_payload: usize,
    ) -> Result<TaskSpec, String> {
        let (topic, limit) = (&*self.topic.clone(), self.limit);
        let first = match tokio::time::timeout(limit, self.inbox.recv_at_most(1)).await {
            Ok(Ok(mut batch)) => batch.swap_remove(0),
            Ok(Err(e)) => return Err(format!("wait: {e}")),
            Err(_) => {
                return Err(format!(
                    "wait: no message on topic `{topic}` within {}",
                    humantime::format_duration(limit)
                ));
            }
        };
        self.inbox.ack();
        let me = self.inbox.endpoint().clone();
        drop(self.inbox);
        self.bus.unsubscribe(topic, &me);
        self.bus.close(&me, "the task that waited got its message");
        let body = serde_json::from_slice::<Value>(&first.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&first.body).into_owned()));
        let message = json!({ "from": first.from.to_string(), "topic": topic, "body": body });
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
