//! A watch of a stream: an ordered push consumer from a given place, whose messages stop at
//! the first one the client went back for. async-nats makes an ordered consumer again when
//! it reconnects or misses a message, from after the last message it delivered, or, before
//! the first, from the consumer's own start: a watch made `after` a sequence would then read
//! from the stream's start again. The server tells, as the consumer is made, the sequence
//! before the first it delivers (its floor); a message at or before it ends the watch with
//! an error, and the caller makes it again after the last message it read. The task
//! records' watch (`Cluster::records`), the bus's inbound relay and the roles' samples all
//! read this way.

use async_nats::jetstream::{
    Message,
    consumer::{self, DeliverPolicy, ReplayPolicy, push},
    stream::Stream,
};
use futures::{StreamExt, stream::BoxStream};

/// An ordered consumer of `stream`'s `subjects` (all of them when empty), from `from`.
pub(crate) async fn ordered(
    stream: &Stream,
    client: &async_nats::Client,
    description: &str,
    subjects: &[String],
    from: DeliverPolicy,
) -> Result<consumer::Consumer<push::OrderedConfig>, String> {
    stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some(description.into()),
            filter_subjects: subjects.to_vec(),
            deliver_policy: from,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// A watch's messages, each with its stream sequence.
pub(crate) type Messages = BoxStream<'static, Result<(u64, Message), String>>;

/// `consumer`'s floor, and its messages, each with its stream sequence, until the first one
/// at or before the floor, or the first error: either is given as an error, and nothing
/// more.
pub(crate) async fn messages(
    consumer: consumer::Consumer<push::OrderedConfig>,
) -> Result<(u64, Messages), String> {
    let floor = consumer.cached_info().delivered.stream_sequence;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let messages = messages
        .filter_map(move |message| {
            let read = match message {
                Ok(message) => match message.info() {
                    Ok(info) if info.stream_sequence <= floor => Some(Err(
                        "the watch was made again from the stream's start".to_owned(),
                    )),
                    Ok(info) => Some(Ok((info.stream_sequence, message))),
                    // Not a JetStream message: not one of the stream's.
                    Err(_) => None,
                },
                Err(e) => Some(Err(e.to_string())),
            };
            std::future::ready(read)
        })
        .scan(false, |ended, read| {
            // After an error, nothing more.
            if *ended {
                return std::future::ready(None);
            }
            *ended = read.is_err();
            std::future::ready(Some(read))
        })
        .boxed();
    Ok((floor, messages))
}
