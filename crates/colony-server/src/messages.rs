//! `/v1/messages`: the runtime's message bus over HTTP ([`colony_runtime::messages`]).
//!
//! - `GET /v1/messages` [read]: the bus's counts (sent, delivered, acknowledged, read
//!   again, returned, unreturnable, waits at full mailboxes, mailboxes, messages held,
//!   topics, teams) and, as `listed`, its topics with their subscribers, the first
//!   [`MAX_LISTED`] by name.
//! - `POST /v1/messages` [submit]: `{"to": {"agent": N} | {"mailbox": NAME} |
//!   {"topic": NAME} | {"team": N}, "body": STRING}`; `200 {"delivered": N}`. The message
//!   is from `http`: a caller cannot speak as an agent. At a full mailbox the request waits
//!   for room up to [`SEND_WAIT`], then answers 503 `mailbox-full` with the copies already
//!   put (a broadcast puts one copy per mailbox in turn).
//!
//! A body over the bus's limit, an unknown agent or an unopened mailbox, or a bad topic is
//! a 4xx naming the problem, with nothing sent.

use crate::{App, Object, body, problem};
use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use colony_core::{
    AgentId,
    mailbox::{Address, Endpoint, check_topic},
};
use colony_runtime::messages::{Error, MessageStats};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{sync::Arc, time::Duration};

/// Most topics `GET /v1/messages` lists.
pub const MAX_LISTED: usize = 1_000;
/// How long a send over HTTP waits at a full mailbox.
pub const SEND_WAIT: Duration = Duration::from_secs(5);
/// Who messages sent over HTTP are from.
pub const SENDER: &str = "http";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
enum To {
    Agent(u32),
    Mailbox(String),
    Topic(String),
    Team(u64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Send {
    to: To,
    body: String,
}

/// What `GET /v1/messages` and the dashboard's panel show.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    #[serde(flatten)]
    pub(crate) stats: MessageStats,
    /// The topics by name, with their subscribers (`topics` is how many there are).
    pub(crate) listed: Vec<Topic>,
    /// Whether there are topics past the first [`MAX_LISTED`].
    pub(crate) more: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: usize,
}

pub(crate) fn overview(app: &App) -> Overview {
    let bus = app.handle.messages();
    let mut topics = bus.topics();
    let more = topics.len() > MAX_LISTED;
    topics.truncate(MAX_LISTED);
    Overview {
        stats: bus.stats(),
        listed: topics
            .into_iter()
            .map(|(name, subscribers)| Topic { name, subscribers })
            .collect(),
        more,
    }
}

pub(crate) async fn list(State(app): State<Arc<App>>) -> Response {
    Json(overview(&app)).into_response()
}

pub(crate) async fn send(
    State(app): State<Arc<App>>,
    request: Result<Json<Object<Send>>, JsonRejection>,
) -> Response {
    let send = match body(request) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let to = match send.to {
        To::Agent(id) => Address::To(Endpoint::Agent(AgentId(id))),
        To::Mailbox(name) => match check_topic(&name) {
            Ok(()) => Address::To(Endpoint::Named(name.into())),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad-mailbox",
                    format!(
                        "a mailbox is named as a topic is: letters, digits, `-`, `_`, `.`, in parts joined by `/`; got {:?}",
                        name.chars().take(140).collect::<String>()
                    ),
                );
            }
        },
        To::Topic(name) => match check_topic(&name) {
            Ok(()) => Address::Topic(name.into()),
            Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-topic", e.to_string()),
        },
        To::Team(n) => Address::Team(n),
    };
    let bus = app.handle.messages();
    let sent = bus.send(
        Endpoint::Named(Arc::from(SENDER)),
        to,
        Bytes::from(send.body),
    );
    match tokio::time::timeout(SEND_WAIT, sent).await {
        Ok(Ok(sent)) => Json(json!({ "delivered": sent.delivered })).into_response(),
        Ok(Err(e)) => refused(e),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "mailbox-full",
            format!(
                "a mailbox stayed full for {SEND_WAIT:?}: copies before it were put, the rest were not"
            ),
        ),
    }
}

fn refused(error: Error) -> Response {
    let (status, code) = match &error {
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        Error::NoMailbox(_) | Error::NotOpen(_) => (StatusCode::NOT_FOUND, "no-mailbox"),
        Error::TooManyMailboxes => (StatusCode::SERVICE_UNAVAILABLE, "too-many-mailboxes"),
        Error::Directory(_) => (StatusCode::BAD_REQUEST, "refused"),
    };
    problem(status, code, error.to_string())
}
