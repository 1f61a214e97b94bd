//! A workflow's `webhooks:`: the run's events (`run:started`, each task's end, `run:finished`
//! with its summary) posted as JSON to URLs, signed with HMAC-SHA256, retried with backoff a
//! bounded number of times, from a bounded queue per webhook.
//!
//! A webhook never slows the run: an event is put in its webhook's queue without waiting (a
//! full queue drops it, counted), and one task per webhook posts them in order. At the end
//! the run waits for each queue to empty for at most its `drain` time, then gives up on what
//! is left (counted as undelivered). What each webhook delivered, failed to deliver and
//! dropped is in the run's summary.
//!
//! Each request carries `X-Colony-Event` (the kind), `X-Colony-Delivery` (an id unique to the
//! event, the same on every retry: a receiver dedupes by it) and, with a secret,
//! `X-Colony-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the body under the secret. A 2xx
//! answer delivers; a network error, a timeout, 408, 425, 429 or a 5xx is tried again after a
//! backoff (doubling from 500 ms, ±20 %, up to 30 s; a `Retry-After` of up to 60 s is
//! honoured) until `attempts` are spent; any other answer (a 4xx, a redirect) gives up at once.

use hmac::{Hmac, KeyInit, Mac};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc;

/// Most webhooks of one workflow.
pub const MAX_WEBHOOKS: usize = 16;
/// Longest URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Most events one webhook's queue holds.
pub const MAX_QUEUE: u32 = 100_000;
/// Most attempts at one event.
pub const MAX_ATTEMPTS: u32 = 20;
/// Defaults: a request's time limit, attempts at an event, the queue, the wait at the end.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ATTEMPTS: u32 = 5;
pub const DEFAULT_QUEUE: u32 = 1_000;
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// Longest time limit and drain a file may give.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_DRAIN: Duration = Duration::from_secs(600);
/// The first retry's backoff, doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest task error an event carries, in characters.
const MAX_ERROR_CHARS: usize = 2000;

/// The kinds of events, as `events:` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RunStarted,
    TaskSucceeded,
    TaskFailed,
    TaskSkipped,
    TaskCancelled,
    RunFinished,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::RunStarted,
        Kind::TaskSucceeded,
        Kind::TaskFailed,
        Kind::TaskSkipped,
        Kind::TaskCancelled,
        Kind::RunFinished,
    ];
    /// Sent when `events:` is not given.
    pub const DEFAULT: [Kind; 3] = [Kind::RunStarted, Kind::TaskFailed, Kind::RunFinished];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RunStarted => "run:started",
            Kind::TaskSucceeded => "task:succeeded",
            Kind::TaskFailed => "task:failed",
            Kind::TaskSkipped => "task:skipped",
            Kind::TaskCancelled => "task:cancelled",
            Kind::RunFinished => "run:finished",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The kind of a task's end.
    pub(crate) fn of(status: crate::Status) -> Kind {
        match status {
            crate::Status::Succeeded => Kind::TaskSucceeded,
            crate::Status::Failed => Kind::TaskFailed,
            crate::Status::Skipped => Kind::TaskSkipped,
            crate::Status::Cancelled => Kind::TaskCancelled,
        }
    }
}

/// One webhook of a workflow, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// The variable holding the signing secret, read when the run starts; unsigned without.
    pub secret_env: Option<String>,
    /// The kinds posted, as a set of [`Kind`] bits.
    events: u8,
    pub timeout: Duration,
    pub attempts: u32,
    pub queue: u32,
    pub drain: Duration,
}

impl Webhook {
    /// A webhook to `url` of the default kinds and limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret_env: None,
            events: 0,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            queue: DEFAULT_QUEUE,
            drain: DEFAULT_DRAIN,
        }
        .with_events(Kind::DEFAULT)
    }

    pub fn with_events(mut self, kinds: impl IntoIterator<Item = Kind>) -> Self {
        self.events = kinds.into_iter().fold(0, |set, k| set | k.bit());
        self
    }

    /// `url` if it can be a webhook's: an http(s) URL with a host, not too long; else why not.
    pub fn check_url(url: &str) -> Result<(), String> {
        if url.len() > MAX_URL_BYTES {
            return Err(format!(
                "a URL of {} bytes: allowed up to {MAX_URL_BYTES}",
                url.len()
            ));
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
            Ok(_) => Err(format!(
                "`{}` is not an http(s) URL with a host",
                colony_core::text::shorten(url, 80)
            )),
            Err(e) => Err(format!(
                "`{}` is not a URL ({e})",
                colony_core::text::shorten(url, 80)
            )),
        }
    }

    /// Whether `name` can name a variable (letters, digits, `_`, not a digit first).
    pub fn check_variable(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "secret-env `{}` is not a variable's name (letters, digits, `_`)",
                colony_core::text::shorten(name, 60)
            ))
        }
    }

    pub fn wants(&self, kind: Kind) -> bool {
        self.events & kind.bit() != 0
    }
}

/// What happened to one webhook's events, in the run's summary.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Delivery {
    /// Its scheme, host and port: the rest of a webhook's URL may be a secret.
    pub url: String,
    /// Answered 2xx.
    pub delivered: u64,
    /// Given up after their attempts, or at an answer not worth trying again.
    pub failed: u64,
    /// Not queued: the queue was full.
    pub dropped: u64,
    /// Still queued or being tried when the run's wait for them ended (an event being
    /// posted then may still have reached the receiver).
    pub undelivered: u64,
    /// Requests made, retries included.
    pub requests: u64,
    /// Why the last event that failed did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What became of one attempt at an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The receiver answered this status, with the delay its `Retry-After` asks for.
    Status(u16, Option<Duration>),
    /// No answer: the connection failed or the time limit passed.
    Unreachable(String),
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Next {
    Delivered,
    RetryIn(Duration),
    GiveUp(String),
}

/// After attempt `attempt` (1 for the first) of `attempts` answered `answer`: delivered,
/// tried again after a backoff, or given up. `jitter` in [-1, 1] spreads the backoff ±20 %.
pub(crate) fn next(attempt: u32, attempts: u32, answer: &Answer, jitter: f64) -> Next {
    let (retryable, asked, why) = match answer {
        Answer::Status(code, _) if (200..300).contains(code) => return Next::Delivered,
        Answer::Status(code, retry_after) => (
            matches!(code, 408 | 425 | 429 | 500..=599),
            *retry_after,
            format!("answered {code}"),
        ),
        Answer::Unreachable(why) => (true, None, why.clone()),
    };
    if !retryable {
        return Next::GiveUp(why);
    }
    if attempt >= attempts {
        return Next::GiveUp(format!("{why}, after {attempts} attempts"));
    }
    let doubled = FIRST_BACKOFF.saturating_mul(1 << (attempt - 1).min(16));
    let backoff = doubled
        .min(MAX_BACKOFF)
        .mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    Next::RetryIn(match asked {
        Some(after) => after.min(MAX_RETRY_AFTER).max(backoff),
        None => backoff,
    })
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 2 * tag.len());
    hex.push_str("sha256=");
    for byte in tag {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// A webhook's URL as reports and logs show it: its scheme, host and port only, as the rest
/// may be a secret (the token in a chat's hook URL).
pub fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port() {
                Some(port) => format!("{}://{host}:{port}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "(a URL)".to_owned(),
    }
}

/// A seed that differs between runs and processes: the clock and the process id.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// One event, ready to post.
#[derive(Debug)]
struct Event {
    kind: Kind,
    delivery: String,
    body: bytes::Bytes,
}

/// A webhook's counts, shared by the run and its sender.
#[derive(Debug, Default)]
struct Counts {
    queued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    requests: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// One webhook's queue and sender.
struct Sender {
    webhook: Webhook,
    queue: Option<mpsc::Sender<Event>>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<Option<()>>,
}

/// The run's webhooks, posting its events.
pub(crate) struct Webhooks {
    run: String,
    /// Unique to this run: delivery ids are `<nonce>-<n>`.
    nonce: String,
    sent: u64,
    senders: Vec<Sender>,
}

impl Webhooks {
    /// Starts a sender for each of `webhooks`, reading their secrets now: a secret's variable
    /// that is not set is an error naming it, before anything runs.
    pub(crate) fn start(run: &str, webhooks: &[Webhook]) -> Result<Self, String> {
        let mut secrets = Vec::with_capacity(webhooks.len());
        for w in webhooks {
            secrets.push(match &w.secret_env {
                Some(var) => match std::env::var(var) {
                    Ok(secret) if !secret.is_empty() => Some(secret.into_bytes()),
                    _ => {
                        return Err(format!(
                            "webhook {}: its secret-env {var} is not set (or is empty)",
                            shown(&w.url)
                        ));
                    }
                },
                None => None,
            });
        }
        let senders = webhooks
            .iter()
            .zip(secrets)
            .map(|(w, secret)| {
                let (queue, events) = mpsc::channel(w.queue as usize);
                let counts = Arc::new(Counts::default());
                let task = colony_agents::spawner::Spawner::spawn(
                    "webhook",
                    post_all(w.clone(), secret, events, counts.clone()),
                );
                Sender {
                    webhook: w.clone(),
                    queue: Some(queue),
                    counts,
                    task,
                }
            })
            .collect();
        Ok(Self {
            run: run.to_owned(),
            nonce: format!("{:016x}", SmallRng::seed_from_u64(seed()).random::<u64>()),
            sent: 0,
            senders,
        })
    }

    /// Queues an event of `kind` with `fields` for every webhook that wants it, never
    /// waiting: a full queue drops it.
    pub(crate) fn send(&mut self, kind: Kind, fields: Value) {
        if !self.senders.iter().any(|s| s.webhook.wants(kind)) {
            return;
        }
        self.sent += 1;
        let delivery = format!("{}-{}", self.nonce, self.sent);
        let mut body = json!({
            "event": kind.as_str(),
            "delivery": delivery,
            "run": self.run,
            "at-ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        });
        if let (Some(body), Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        let body = bytes::Bytes::from(body.to_string());
        for sender in self.senders.iter().filter(|s| s.webhook.wants(kind)) {
            let event = Event {
                kind,
                delivery: delivery.clone(),
                body: body.clone(),
            };
            let queued = sender.queue.as_ref().map(|q| q.try_send(event));
            if matches!(queued, Some(Ok(()))) {
                sender.counts.queued.fetch_add(1, Ordering::Relaxed);
            } else {
                sender.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A task's end.
    pub(crate) fn task(&mut self, f: &crate::Finished) {
        let kind = Kind::of(f.status);
        if !self.senders.iter().any(|s| s.webhook.wants(kind)) {
            return;
        }
        self.send(
            kind,
            json!({"task": {
                "id": f.id, "runs-on": f.runs_on, "status": f.status, "wave": f.wave,
                "attempts": f.attempts, "agent": f.agent, "seconds": f.seconds,
                "error": f.error.as_deref().map(|e| colony_core::text::shorten(e, MAX_ERROR_CHARS)),
            }}),
        );
    }

    /// No more events: waits for each queue to empty for at most its webhook's `drain`, then
    /// stops its sender. What each delivered.
    pub(crate) async fn finish(mut self) -> Vec<Delivery> {
        for sender in &mut self.senders {
            // The sender ends once it has posted what is queued.
            sender.queue = None;
        }
        let waits = self.senders.into_iter().map(|mut sender| async move {
            let ended = tokio::time::timeout(sender.webhook.drain, &mut sender.task).await;
            if ended.is_err() {
                sender.task.abort();
                // Stopped for sure before its counts are read: an event it delivers while
                // the abort lands is then counted as delivered, not undelivered.
                let _ = (&mut sender.task).await;
            }
            let c = &sender.counts;
            let (delivered, failed, dropped) = (
                c.delivered.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
                c.dropped.load(Ordering::Relaxed),
            );
            Delivery {
                url: shown(&sender.webhook.url),
                delivered,
                failed,
                dropped,
                undelivered: c
                    .queued
                    .load(Ordering::Relaxed)
                    .saturating_sub(delivered + failed),
                requests: c.requests.load(Ordering::Relaxed),
                last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
            }
        });
        futures::future::join_all(waits).await
    }
}

/// Posts `events` to `webhook` in order until the queue closes and empties.
async fn post_all(
    webhook: Webhook,
    secret: Option<Vec<u8>>,
    mut events: mpsc::Receiver<Event>,
    counts: Arc<Counts>,
) {
    let client = reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("colony/", env!("CARGO_PKG_VERSION")))
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            let why = format!("no HTTP client: {e}");
            while events.recv().await.is_some() {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            }
            *counts.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return;
        }
    };
    let mut rng = SmallRng::seed_from_u64(seed());
    while let Some(event) = events.recv().await {
        let mut attempt = 1;
        loop {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            let answer = post(&client, &webhook.url, secret.as_deref(), &event).await;
            match next(
                attempt,
                webhook.attempts,
                &answer,
                rng.random_range(-1.0..=1.0),
            ) {
                Next::Delivered => {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Next::RetryIn(wait) => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Next::GiveUp(why) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let why = format!("{} {}: {why}", event.kind.as_str(), event.delivery);
                    tracing::warn!(url = %shown(&webhook.url), "A webhook's event was not delivered: {why}.");
                    *counts.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    break;
                }
            }
        }
    }
}

/// One attempt at posting `event`.
async fn post(client: &reqwest::Client, url: &str, secret: Option<&[u8]>, event: &Event) -> Answer {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Colony-Event", event.kind.as_str())
        .header("X-Colony-Delivery", &event.delivery)
        .body(event.body.clone());
    if let Some(secret) = secret {
        request = request.header("X-Colony-Signature-256", signature(secret, &event.body));
    }
    match request.send().await {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Answer::Status(response.status().as_u16(), retry_after)
        }
        // Without the URL: its path and query may be a secret (a chat's hook), and the error
        // goes to the summary, which anyone who may read the run sees.
        Err(e) => Answer::Unreachable(if e.is_timeout() {
            "no answer within its time limit".to_owned()
        } else {
            format!("cannot reach it: {}", e.without_url())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_delivers_and_only_passing_troubles_are_tried_again() {
        let status = |code| Answer::Status(code, None);
        assert_eq!(next(1, 5, &status(200), 0.0), Next::Delivered);
        assert_eq!(next(5, 5, &status(204), 0.0), Next::Delivered);
        for code in [400, 401, 403, 404, 410, 422, 301, 302] {
            assert!(
                matches!(next(1, 5, &status(code), 0.0), Next::GiveUp(_)),
                "{code} is not tried again"
            );
        }
        for code in [408, 425, 429, 500, 502, 503] {
            assert!(
                matches!(next(1, 5, &status(code), 0.0), Next::RetryIn(_)),
                "{code} is tried again"
            );
        }
        let unreachable = Answer::Unreachable("refused".into());
        assert!(matches!(next(4, 5, &unreachable, 0.0), Next::RetryIn(_)));
        // Nothing is tried forever: the last attempt gives up, saying how many there were.
        let Next::GiveUp(why) = next(5, 5, &unreachable, 0.0) else {
            panic!("the last attempt gives up");
        };
        assert!(why.contains("after 5 attempts"), "{why}");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after() {
        let e = Answer::Status(503, None);
        let wait = |attempt, jitter| match next(attempt, 20, &e, jitter) {
            Next::RetryIn(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(1, 0.0), Duration::from_millis(500));
        assert_eq!(wait(2, 0.0), Duration::from_secs(1));
        assert_eq!(wait(3, 0.0), Duration::from_secs(2));
        assert_eq!(wait(19, 0.0), MAX_BACKOFF);
        assert_eq!(wait(1, 1.0), Duration::from_millis(600));
        assert_eq!(wait(1, -1.0), Duration::from_millis(400));
        let asked = |secs| Answer::Status(429, Some(Duration::from_secs(secs)));
        assert_eq!(
            next(1, 5, &asked(7), 0.0),
            Next::RetryIn(Duration::from_secs(7))
        );
        assert_eq!(
            next(1, 5, &asked(3600), 0.0),
            Next::RetryIn(MAX_RETRY_AFTER)
        );
        // A Retry-After shorter than the backoff does not shorten it.
        assert_eq!(
            next(3, 5, &asked(0), 0.0),
            Next::RetryIn(Duration::from_secs(2))
        );
    }

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn each_webhook_takes_the_kinds_it_names() {
        let w = Webhook::new("http://x");
        assert!(
            w.wants(Kind::RunStarted) && w.wants(Kind::TaskFailed) && w.wants(Kind::RunFinished)
        );
        assert!(!w.wants(Kind::TaskSucceeded));
        let w = w.with_events([Kind::TaskSucceeded]);
        assert!(w.wants(Kind::TaskSucceeded) && !w.wants(Kind::RunStarted));
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("task:exploded"), None);
    }
}
