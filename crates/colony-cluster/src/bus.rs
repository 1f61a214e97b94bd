//! The message bus across the cluster: a runtime's topics bridged to every other process
//! that bridges them (a `colony node --bridge-topic T`, a `colony run --nats` for its run's
//! topics), over one JetStream stream, `COLONY_BUS`.
//!
//! A [`Bridge`] subscribes a reader of its own (`cluster-bridge`) to each topic it bridges
//! on the local bus. What a local sender publishes there, it appends to the stream, on
//! `colony.bus.<the topic's bytes in hex>` (topic names may hold `.` and `/`), naming its
//! process and sender, and acknowledges the batch once the stream has it. It watches the
//! stream from when it started, and publishes what another process appended on a topic it
//! bridges on its local bus, as sent by `cluster:<process>/<sender>`, so that it never goes
//! back out (the bridge does not bridge what a bridge sent). A local send waits for room at
//! full mailboxes as any does; the watch waits with it, and the stream keeps the rest.
//!
//! A message to `cluster:<process>/<endpoint>` (the name a relayed sender has, so a reply
//! is a send to it) has no mailbox here: the bus forwards it to the bridge's reader
//! ([`Bus::forward`]), which appends it on that process's own subject
//! (`colony.bus.to.<its name in hex>`); that process's bridge puts it in the endpoint's
//! mailbox there.
//!
//! What it keeps of the bus's guarantees: in order per sender, a reader's batch
//! acknowledged. What it does not: a process hears only what is appended while its bridge
//! runs (the stream keeps an hour of messages, and a bridge started later does not read
//! them back), and a message taken from the local bus and not yet appended when its
//! process dies is given back to the bridge's mailbox, which dies with it.

use crate::{Cluster, Error};
use async_nats::jetstream::{consumer, stream};
use colony_core::mailbox::{Address, Endpoint};
use colony_runtime::messages::Bus;
use futures::StreamExt;
use std::{sync::Arc, time::Duration};

/// The bus's stream.
const STREAM: &str = "COLONY_BUS";
/// How long the stream keeps a message: a bound, since no bridge reads back.
const KEEP: Duration = Duration::from_secs(3600);
/// The local reader a bridge reads its topics with.
const READER: &str = "cluster-bridge";
/// A sender on the local bus that stands for one in another process.
const RELAYED: &str = colony_core::mailbox::FAR;
const ORIGIN: &str = "Colony-Origin";
const NAME: &str = "Colony-Process";
const FROM: &str = "Colony-From";
/// The endpoint a message to one mailbox of another process is for, in that process.
const TO: &str = "Colony-To";
/// Most topics one bridge carries.
pub const MAX_BRIDGED: usize = 256;

/// The subject of topic `topic` on the stream.
fn subject(topic: &str) -> String {
    let hex: String = topic.bytes().map(|b| format!("{b:02x}")).collect();
    format!("colony.bus.{hex}")
}

/// The subject of messages to endpoints of process `process`.
fn direct_subject(process: &str) -> String {
    let hex: String = process.bytes().map(|b| format!("{b:02x}")).collect();
    format!("colony.bus.to.{hex}")
}

/// An endpoint as another process named it: an agent's (`agent-N`) or a named mailbox.
fn endpoint_of(text: &str) -> Endpoint {
    match colony_core::mailbox::far_agent(text) {
        Some(n) => Endpoint::Agent(colony_core::AgentId(n)),
        None => Endpoint::Named(text.into()),
    }
}

/// The topic a subject of the stream carries.
fn topic_of(subject: &str) -> Option<String> {
    let hex = subject.strip_prefix("colony.bus.")?;
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A runtime's topics bridged to the cluster, while it is held.
#[derive(Debug)]
pub struct Bridge {
    tasks: Vec<tokio::task::JoinHandle<Option<()>>>,
    bus: Bus,
    reader: Endpoint,
}

impl Drop for Bridge {
    /// Stops bridging: the reader leaves its topics and its mailbox closes, so what it held
    /// and had not appended goes back to its senders (marked returned, as a retired agent's
    /// messages do), not lost in silence.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.bus.stop_forwarding(&self.reader);
        self.bus.close(
            &self.reader,
            "the process stopped bridging its topics to the cluster",
        );
    }
}

/// Most a relayed message waits for room in a local mailbox before it is dropped (and
/// said): one full mailbox must not hold up every bridged topic.
const RELAY_WAIT: Duration = Duration::from_secs(30);
/// Most bytes the stream holds; the oldest messages go first past it.
const MAX_BYTES: i64 = 1 << 30;
/// Room kept beside a message's body for its headers.
const HEADROOM: usize = 4 * 1024;

impl Bridge {
    /// Bridges `topics` of `bus` to the cluster, as process `name` (unique among the
    /// processes that bridge: a node's name, a run's). Makes the stream if it is not there.
    pub async fn start(
        cluster: &Cluster,
        bus: &Bus,
        name: &str,
        topics: &[String],
    ) -> Result<Self, Error> {
        // Its name is its address for replies: one other processes can write back.
        crate::node::check_name(name)?;
        let mut topics: Vec<String> = topics.to_vec();
        topics.sort();
        topics.dedup();
        if topics.len() > MAX_BRIDGED {
            return Err(Error::Settings(format!(
                "{} topics bridged: at most {MAX_BRIDGED}",
                topics.len()
            )));
        }
        for topic in &topics {
            colony_core::mailbox::check_topic(topic)
                .map_err(|e| Error::Settings(format!("topic `{topic}`: {e}")))?;
        }
        let what = "the cluster's message bus";
        let config = stream::Config {
            name: STREAM.into(),
            description: Some("colony: messages on topics bridged across the cluster".into()),
            subjects: vec!["colony.bus.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: cluster.settings.replicas,
            max_age: KEEP,
            max_message_size: i32::try_from(crate::MAX_PAYLOAD).unwrap_or(i32::MAX),
            max_bytes: MAX_BYTES,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: cluster.settings.duplicate_window,
            ..Default::default()
        };
        // A cluster just started (its meta leader elected), or several processes making the
        // stream at once, can time a request out: asked again for up to 30 s.
        let stream = patiently(what, || cluster.js.get_or_create_stream(config.clone())).await?;
        // This bridge's own: a process's name may be given twice, its instance not.
        let instance = crate::client::random_id();
        // Its topics, and the messages other processes send to its endpoints.
        let own = direct_subject(name);
        let subjects: Vec<String> = topics
            .iter()
            .map(|t| subject(t))
            .chain([own.clone()])
            .collect();
        // Made before anything is read: what is appended from now on comes on it.
        let watch = patiently(what, || {
            watch_from(&stream, &cluster.client, &subjects, None)
        })
        .await?;
        let reader = Endpoint::Named(format!("{READER}-{}", &instance[..8]).into());
        let mut inbox = bus
            .open(reader.clone())
            .map_err(|e| Error::Settings(format!("{what}: {e}")))?;
        for topic in &topics {
            if let Err(e) = bus.subscribe(topic, reader.clone()) {
                bus.close(&reader, "its bridge did not start");
                return Err(Error::Settings(format!("{what}: topic `{topic}`: {e}")));
            }
        }
        // A reply to a sender of another process (`cluster:<process>/<sender>`, as its
        // messages arrive here) comes to the bridge, which sends it to that process.
        bus.forward(
            |name| colony_core::mailbox::far_endpoint(name).is_some(),
            reader.clone(),
        );
        let bridged: Arc<std::collections::HashSet<String>> =
            Arc::new(topics.iter().cloned().collect());
        let name: Arc<str> = name.into();
        let most = cluster
            .client
            .server_info()
            .max_payload
            .min(crate::MAX_PAYLOAD)
            .saturating_sub(HEADROOM);
        // Each topic's subject, made once.
        let subjects_of: std::collections::HashMap<String, String> = topics
            .iter()
            .zip(&subjects)
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let outbound = {
            let (js, name, instance) = (cluster.js.clone(), name.clone(), instance.clone());
            colony_agents::spawner::Spawner::spawn("cluster-bus-out", async move {
                let mut sent = 0u64;
                loop {
                    let Ok(batch) = inbox.recv().await else {
                        return;
                    };
                    // A batch given back is read again in its order: its messages get the
                    // same dedupe ids, so those the stream took already are not taken twice.
                    let before = sent;
                    let mut acks = Vec::with_capacity(batch.len());
                    for message in &batch {
                        // What a bridge brought in never goes back out.
                        if relayed(&message.from) {
                            if !matches!(message.to, Address::Topic(_)) {
                                tracing::warn!(
                                    "A message from {} to {} is not carried: what came from another process is not sent on again",
                                    message.from,
                                    message.to
                                );
                                metrics::counter!("colony_bus_bridge_dropped_total").increment(1);
                            }
                            continue;
                        }
                        // A topic's subject, or another process's for its endpoint.
                        let (to_subject, to_endpoint) = match &message.to {
                            Address::Topic(topic) => (
                                subjects_of
                                    .get(&**topic)
                                    .cloned()
                                    .unwrap_or_else(|| subject(topic)),
                                None,
                            ),
                            Address::To(Endpoint::Named(far)) => {
                                match colony_core::mailbox::far_endpoint(far) {
                                    Some((process, endpoint)) => {
                                        (direct_subject(process), Some(endpoint))
                                    }
                                    None => {
                                        tracing::warn!(
                                            "A message from {} to `{far}` is not carried: name another process's endpoint as cluster:<process>/<endpoint>",
                                            message.from
                                        );
                                        continue;
                                    }
                                }
                            }
                            _ => {
                                tracing::warn!(
                                    "A message to the cluster's bridge itself ({}) is not carried: send on a bridged topic",
                                    message.from
                                );
                                continue;
                            }
                        };
                        if message.body.len() > most {
                            // The stream would refuse it every time, holding up what follows.
                            tracing::warn!(
                                "A message of {} bytes to {} from {} is not carried to the cluster: at most {most} bytes are",
                                message.body.len(),
                                message.to,
                                message.from
                            );
                            metrics::counter!("colony_bus_bridge_dropped_total").increment(1);
                            continue;
                        }
                        sent += 1;
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(ORIGIN, instance.as_str());
                        headers.insert(NAME, &*name);
                        headers.insert(FROM, message.from.to_string().as_str());
                        headers.insert("Nats-Msg-Id", format!("{instance}-{sent}").as_str());
                        if let Some(endpoint) = to_endpoint {
                            headers.insert(TO, endpoint);
                        }
                        let published = js
                            .publish_with_headers(to_subject, headers, message.body.clone())
                            .await;
                        // A publish refused (the client's queue full while NATS is away)
                        // fails the batch: the rest would each wait as long.
                        let refused = published.is_err();
                        acks.push(published);
                        if refused {
                            break;
                        }
                    }
                    // The first ack that fails fails the batch: the rest are not waited for,
                    // each its own timeout (NATS gone, a batch of a thousand would hold the
                    // bridge for a thousand of them).
                    let mut appended = true;
                    for ack in acks {
                        let taken = match ack {
                            Ok(ack) => ack.await.is_ok(),
                            Err(_) => false,
                        };
                        if !taken {
                            appended = false;
                            break;
                        }
                    }
                    if appended {
                        inbox.ack();
                    } else {
                        // Read again (this batch first) once NATS takes it.
                        tracing::warn!("The cluster's bus could not take a batch: tried again.");
                        sent = before;
                        let _ = inbox.give_back();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        };
        let inbound = {
            let (bus, client) = (bus.clone(), cluster.client.clone());
            let (instance, own) = (instance.clone(), own.clone());
            colony_agents::spawner::Spawner::spawn("cluster-bus-in", async move {
                // Made again after the last message read, or, before any, after where the
                // first watch started: nothing appended meanwhile is missed.
                let mut last = Some(watch.1);
                let mut watch = Some(watch);
                loop {
                    let (mut messages, _) = match watch.take() {
                        Some(made) => made,
                        None => match watch_from(&stream, &client, &subjects, last).await {
                            Ok(made) => made,
                            Err(e) => {
                                tracing::warn!(
                                    "The cluster's bus cannot be watched: {e}; tried again."
                                );
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                        },
                    };
                    // Ends at the first message the client went back for: made again from
                    // after the last one read instead.
                    while let Some(Ok((seq, message))) = messages.next().await {
                        last = Some(seq);
                        relay(&bus, &instance, &own, &bridged, &message).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Ok(Self {
            tasks: vec![outbound, inbound],
            bus: bus.clone(),
            reader,
        })
    }
}

/// Publishes on `bus` a message another process appended on a topic this one bridges.
async fn relay(
    bus: &Bus,
    instance: &str,
    own: &str,
    bridged: &std::collections::HashSet<String>,
    message: &async_nats::jetstream::Message,
) {
    let header = |key: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(key))
            .map(|v| v.as_str().to_owned())
    };
    let Some(origin) = header(ORIGIN) else {
        return;
    };
    if origin == instance {
        return;
    }
    // Names another process wrote: kept short and printable before they name a sender here.
    let shown = |name: String| {
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        colony_core::text::shorten(&name, 128)
    };
    let origin = shown(header(NAME).unwrap_or(origin));
    let from = shown(header(FROM).unwrap_or_default());
    let sender = Endpoint::Named(format!("{RELAYED}{origin}/{from}").into());
    if *message.subject == *own {
        // To one of this process's endpoints: put only in a mailbox that is there and has
        // room (another process must not make mailboxes here, nor hold up the topics).
        let Some(endpoint) = header(TO).filter(|e| !e.starts_with(RELAYED)) else {
            return;
        };
        let endpoint = endpoint_of(&shown(endpoint));
        match bus.deliver_existing(sender, endpoint.clone(), message.payload.clone()) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "A message from {origin} to {endpoint} was dropped here: it has no mailbox open, or a full one"
                );
                metrics::counter!("colony_bus_bridge_dropped_total").increment(1);
            }
            Err(e) => tracing::warn!("A message from {origin} was not delivered here: {e}"),
        }
        return;
    }
    let to = {
        let Some(topic) = topic_of(&message.subject).filter(|t| bridged.contains(t)) else {
            return;
        };
        Address::Topic(topic.into())
    };
    let body = message.payload.clone();
    match tokio::time::timeout(RELAY_WAIT, bus.send(sender, to.clone(), body)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(
                "A message from {origin} on the cluster's bus was not delivered here: {e}"
            );
        }
        Err(_) => {
            tracing::warn!(
                "A message from {origin} to {to} was dropped here: a mailbox stayed full for {} s",
                RELAY_WAIT.as_secs()
            );
            metrics::counter!("colony_bus_bridge_dropped_total").increment(1);
        }
    }
}

/// A watch of the stream from after `last` (from now on when `None`), and the sequence the
/// server says it starts after (`crate::watch`).
async fn watch_from(
    stream: &stream::Stream,
    client: &async_nats::Client,
    subjects: &[String],
    last: Option<u64>,
) -> Result<(crate::watch::Messages, u64), String> {
    let from = match last {
        None => consumer::DeliverPolicy::New,
        Some(last) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        },
    };
    let description = "colony: a bridge's watch of the bus";
    let consumer = crate::watch::ordered(stream, client, description, subjects, from).await?;
    let (floor, messages) = crate::watch::messages(consumer).await?;
    Ok((messages, floor))
}

/// `ask` answered, asked again every half second for up to 30 s while it fails.
async fn patiently<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut ask: impl FnMut() -> F,
) -> Result<T, Error> {
    let mut tries = 0;
    loop {
        match ask().await {
            Ok(answer) => return Ok(answer),
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::debug!("{what}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(Error::nats(what, e)),
        }
    }
}

/// Whether `from` stands for a sender in another process (relayed here by a bridge).
fn relayed(from: &Endpoint) -> bool {
    matches!(from, Endpoint::Named(n) if n.starts_with(RELAYED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_crosses_as_its_bytes_and_comes_back_whole() {
        for topic in ["plans", "a.b/c-d_e", "x"] {
            assert_eq!(topic_of(&subject(topic)).as_deref(), Some(topic));
        }
        assert_eq!(subject("a.b"), "colony.bus.612e62");
        assert_eq!(topic_of("colony.bus.6"), None);
        assert_eq!(topic_of("colony.bus.zz"), None);
        assert_eq!(
            topic_of("colony.bus.aé1"),
            None,
            "not split inside a character"
        );
        assert_eq!(topic_of("other.61"), None);
    }
}
