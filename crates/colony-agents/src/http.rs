//! The `http` backend: an OpenAI-compatible chat-completions endpoint.
//!
//! Each attempt sends one `POST {base_url}/chat/completions` with the task's prompt (its
//! payload's `prompt`, else its `input` as JSON text) as the user message. The output is
//! `{"content": ..., "model": ..., "usage": {...}, "cost_usd": ...}`. A pool's requests are
//! spaced to its requests-per-minute limit; a 429 or a 5xx is retried within the attempt after
//! the server's `Retry-After` (or a doubling backoff), then fails retryably; other 4xx fail the
//! task. An endpoint that cannot be reached fails the attempt at once (retryably), its cause
//! said. Once the pool's spending reaches its budget, no request is sent: attempts fail,
//! fatally, saying so.
//!
//! Requests carry `Authorization: Bearer <key>`, the key read from the variable named by
//! [`Auth::Bearer`] when the pool is built: a pool whose key is unset is refused then, before
//! any task runs, rather than failing each request. An endpoint that takes no key is declared
//! with [`Auth::None`]; a key is never left out silently. The base URL must be an `http` or
//! `https` URL ([`check_base_url`]). An answer's body is read up to [`MAX_RESPONSE`] bytes; a
//! longer one fails the attempt.

use crate::{Agent, Error, Execution, Outcome, Task};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

/// The variable holding the key when the file names none.
pub const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// How requests authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`, the key being the value of this variable, which must
    /// be set when the pool is built.
    Bearer { key_env: String },
    /// No `Authorization` header: for an endpoint that takes no key (a local server).
    None,
}

/// Why a pool of `http` agents cannot be built. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("base-url {0}")]
    BaseUrl(String),
    #[error(
        "no API key for model `{model}` at {base_url}: the variable `{var}` is not set or is \
         empty. Set it (`export {var}=...`), name another variable with `api-key-env`, or write \
         `auth: none` in the pool's `http:` section if the endpoint takes no key"
    )]
    NoKey {
        var: String,
        model: String,
        base_url: String,
    },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

/// Checks that `url` is an `http` or `https` URL with a host and without control characters;
/// the error says what is wrong with it, quoting it.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let shown: String = url.chars().take(80).flat_map(char::escape_debug).collect();
    if url.chars().any(char::is_control) {
        return Err(format!(
            "`{shown}` holds a control character: write an http(s) URL such as `https://api.openai.com/v1`"
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!(
            "`{shown}` is not a URL ({e}): write an http(s) URL such as `https://api.openai.com/v1`"
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "`{shown}` is not an http(s) URL: write one such as `https://api.openai.com/v1`"
        ));
    }
    Ok(())
}

/// An API key, kept out of `Debug` output.
#[derive(Clone)]
struct Key(String);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

/// Prices per million tokens, for the cost of each task.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// Settings of the `http` backend.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpOptions {
    /// Such as `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// How requests authenticate (by default with the key in `$OPENAI_API_KEY`).
    pub auth: Auth,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// Requests a pool sends per minute at most.
    pub requests_per_minute: Option<u32>,
    /// Retries of a 429 or 5xx within one attempt.
    pub max_retries: u32,
    pub price: Price,
    /// Dollars the pool may spend; `None` for no cap.
    pub budget_usd: Option<f64>,
}

impl HttpOptions {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            auth: Auth::Bearer {
                key_env: DEFAULT_KEY_ENV.into(),
            },
            max_tokens: None,
            temperature: None,
            requests_per_minute: None,
            max_retries: 4,
            price: Price::default(),
            budget_usd: None,
        }
    }
}

/// What a pool has spent and when it may send next.
#[derive(Debug, Default)]
struct Account {
    next_request: Option<Instant>,
    spent_usd: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Sends tasks to a chat-completions endpoint (see the module documentation).
#[derive(Debug)]
pub struct Http {
    options: Arc<HttpOptions>,
    /// Read once, when the pool is built; `None` under [`Auth::None`].
    key: Option<Key>,
    client: reqwest::Client,
    account: Arc<Mutex<Account>>,
}

/// Tokens and dollars a pool has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

impl Http {
    /// A pool's endpoint, refused when its base URL is not an http(s) URL or when its key's
    /// variable is unset: such a pool would fail every request.
    pub fn new(options: HttpOptions) -> Result<Self, ConfigError> {
        check_base_url(&options.base_url).map_err(ConfigError::BaseUrl)?;
        let key = match &options.auth {
            Auth::None => None,
            Auth::Bearer { key_env } => match std::env::var(key_env) {
                Ok(key) if !key.is_empty() => Some(Key(key)),
                _ => {
                    return Err(ConfigError::NoKey {
                        var: key_env.clone(),
                        model: options.model.clone(),
                        base_url: options.base_url.clone(),
                    });
                }
            },
        };
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Self {
            options: Arc::new(options),
            key,
            client,
            account: Arc::default(),
        })
    }

    pub fn usage(&self) -> Usage {
        let a = self.account.lock().unwrap_or_else(|p| p.into_inner());
        Usage {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            cost_usd: a.spent_usd,
        }
    }
}

impl Agent for Http {
    fn handle(&self, task: Task) -> Execution {
        let (options, key, client, account) = (
            self.options.clone(),
            self.key.clone(),
            self.client.clone(),
            self.account.clone(),
        );
        // A request in flight, or a wait for the pace or a Retry-After, is the agent alive.
        Execution::Running(Box::pin(async move {
            let endpoint = Endpoint {
                o: &options,
                key: key.as_ref(),
                client: &client,
            };
            crate::heartbeat::beating(&task.heartbeat, attempt(endpoint, &account, &task)).await
        }))
    }
}

/// The user message of a task: its payload's `prompt`, else its `input` as JSON text.
fn prompt(payload: &[u8]) -> String {
    let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    match (value.get("prompt"), value.get("input")) {
        (Some(Value::String(p)), _) => p.clone(),
        (_, Some(Value::String(i))) => i.clone(),
        (_, Some(i)) if !i.is_null() => i.to_string(),
        _ => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// What an attempt sends with.
struct Endpoint<'a> {
    o: &'a HttpOptions,
    key: Option<&'a Key>,
    client: &'a reqwest::Client,
}

async fn attempt(endpoint: Endpoint<'_>, account: &Mutex<Account>, task: &Task) -> Outcome {
    let Endpoint { o, key, client } = endpoint;
    let mut body = json!({
        "model": o.model,
        "messages": [{"role": "user", "content": prompt(&task.payload)}],
    });
    if let Some(m) = o.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if let Some(t) = o.temperature {
        body["temperature"] = json!(t);
    }
    let url = format!("{}/chat/completions", o.base_url.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(500);
    for retry in 0..=o.max_retries {
        // The budget and the rate limit, checked and taken under one lock.
        let wait = {
            let mut a = account.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(budget) = o.budget_usd
                && a.spent_usd >= budget
            {
                return Err(Error::fatal(format!(
                    "budget spent: ${:.4} of ${budget:.4}; no more requests are sent",
                    a.spent_usd
                )));
            }
            let now = Instant::now();
            let at = a.next_request.map_or(now, |n| n.max(now));
            if let Some(rpm) = o.requests_per_minute {
                a.next_request = Some(at + Duration::from_secs(60) / rpm.max(1));
            }
            at.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        task.heartbeat.beat();
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.bearer_auth(&key.0);
        }
        let response = match request.send().await {
            Ok(r) => r,
            // Nothing listens there, or the name does not resolve: waiting within the attempt
            // would only delay the news (35 s for the llm-review example). The attempt fails at
            // once, and the runtime's retries, with their backoff and failover, take over.
            Err(e) if e.is_connect() => {
                return Err(Error::retryable(format!(
                    "{url}: cannot connect: {}",
                    causes(&e)
                )));
            }
            Err(e) if retry < o.max_retries => {
                tracing::debug!(error = %causes(&e), "Request failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            Err(e) => return Err(Error::retryable(format!("{url}: {}", causes(&e)))),
        };
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite())
                .map(|s| Duration::from_secs_f64(s.clamp(0.0, 300.0)));
            if retry < o.max_retries {
                tokio::time::sleep(after.unwrap_or(backoff)).await;
                backoff *= 2;
                continue;
            }
            return Err(Error::retryable(format!("{url} answered {status}")));
        }
        let cap = if status.is_success() {
            MAX_RESPONSE
        } else {
            MAX_ERROR_BODY
        };
        let (bytes, cut) = read_capped(response, cap)
            .await
            .map_err(|e| Error::retryable(format!("{url}: reading the answer: {}", causes(&e))))?;
        if cut && status.is_success() {
            return Err(Error::fatal(format!(
                "{url} answered with more than {MAX_RESPONSE} bytes, the limit of an answer"
            )));
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Error::fatal(format!(
                "{url} answered {status}: {}",
                text.chars().take(500).collect::<String>()
            )));
        }
        return answer(o, account, &bytes);
    }
    Err(Error::retryable(format!("{url}: retries used up")))
}

/// Largest answer read from an endpoint, in bytes; a longer one fails the attempt. A
/// chat completion is a few kilobytes; this is the most a task's output may be.
pub const MAX_RESPONSE: usize = 16 << 20;

/// Most of an error answer's body read, to quote from.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Up to `cap` bytes of `response`'s body, and whether there was more (then the rest is not
/// read: the connection is dropped).
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok((Vec::new(), true));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An error and its causes, as one line: reqwest's own message ("error sending request")
/// leaves out the one that says what happened (connection refused, no such host).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// The output of a successful answer, its usage counted.
fn answer(o: &HttpOptions, account: &Mutex<Account>, bytes: &[u8]) -> Outcome {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::retryable(format!("the answer is not JSON: {e}")))?;
    let content = value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::retryable("the answer has no choices[0].message.content"))?;
    let tokens = |name: &str| {
        value
            .pointer(&format!("/usage/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (prompt, completion) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    let cost = (prompt as f64 * o.price.input_per_million
        + completion as f64 * o.price.output_per_million)
        / 1e6;
    {
        let mut a = account.lock().unwrap_or_else(|p| p.into_inner());
        a.spent_usd += cost;
        a.prompt_tokens += prompt;
        a.completion_tokens += completion;
    }
    let output = json!({
        "content": content,
        "model": value.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "cost_usd": cost,
    });
    Ok(Bytes::from(output.to_string()))
}

/// A chat-completions server on loopback for tests, here and in other crates: real HTTP over
/// TCP, the OpenAI wire format, answers chosen by the test.
pub mod testing {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real HTTP server on loopback speaking the chat-completions wire format. It answers
    /// `status` for the first `failures` requests (with `Retry-After: 0`), then echoes the
    /// prompt, and counts requests.
    pub async fn server(failures: u32, status: u16) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU32::new(0));
        let seen = count.clone();
        crate::spawner::Spawner::spawn("test-openai-server", async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = seen.fetch_add(1, Relaxed);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                let body = loop {
                    let read = socket.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        break Vec::new();
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break buf[end + 4..end + 4 + length].to_vec();
                        }
                    }
                };
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (code, answer) = if n < failures {
                    (status, json!({"error": {"message": "slow down"}}))
                } else {
                    let prompt = request
                        .pointer("/messages/0/content")
                        .cloned()
                        .unwrap_or(Value::Null);
                    (
                        200,
                        json!({
                            "model": request["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {}", prompt.as_str().unwrap_or(""))}}],
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
                        }),
                    )
                };
                let body = answer.to_string();
                let reply = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        (url, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_core::{AgentId, TaskId};
    use std::sync::atomic::Ordering::Relaxed;

    async fn run(h: &Http, payload: &str) -> Outcome {
        let task = Task::new(TaskId(1), 1, AgentId(0), Bytes::from(payload.to_owned()));
        match h.handle(task) {
            Execution::Running(f) => f.await,
            Execution::Done(o) => o,
        }
    }

    fn options(url: &str) -> HttpOptions {
        let mut o = HttpOptions::new(url, "test-model");
        o.auth = Auth::None;
        o.price = Price {
            input_per_million: 2.0,
            output_per_million: 8.0,
        };
        o
    }

    #[tokio::test]
    async fn a_prompt_becomes_a_chat_completion_with_its_usage_and_cost() {
        let (url, _) = testing::server(0, 200).await;
        let h = Http::new(options(&url)).unwrap();
        let out = run(&h, r#"{"task":"t","prompt":"review this"}"#)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"], "echo: review this");
        assert_eq!(v["model"], "test-model");
        assert_eq!(v["usage"]["total_tokens"], 1500);
        // 1000 × $2/M + 500 × $8/M
        assert!((v["cost_usd"].as_f64().unwrap() - 0.006).abs() < 1e-12);
        assert_eq!(h.usage().prompt_tokens, 1000);
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_then_reported() {
        let (url, count) = testing::server(2, 429).await;
        let h = Http::new(options(&url)).unwrap();
        assert!(run(&h, r#"{"prompt":"x"}"#).await.is_ok());
        assert_eq!(count.load(Relaxed), 3, "two 429s honoured, then the answer");
        let (url, _) = testing::server(100, 503).await;
        let mut o = options(&url);
        o.max_retries = 1;
        let err = run(&Http::new(o).unwrap(), "{}").await.unwrap_err();
        assert!(
            err.is_retryable() && err.to_string().contains("503"),
            "{err}"
        );
        let (url, _) = testing::server(100, 401).await;
        let err = run(&Http::new(options(&url)).unwrap(), "{}")
            .await
            .unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("401"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_budget_stops_spending_and_the_pace_is_kept() {
        let (url, count) = testing::server(0, 200).await;
        let mut o = options(&url);
        o.budget_usd = Some(0.01);
        let h = Http::new(o).unwrap();
        assert!(run(&h, "{}").await.is_ok());
        assert!(run(&h, "{}").await.is_ok());
        let err = run(&h, "{}").await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("budget spent"),
            "{err}"
        );
        assert_eq!(
            count.load(Relaxed),
            2,
            "no request once the budget is spent"
        );
        let mut o = options(&url);
        o.requests_per_minute = Some(600);
        let h = Http::new(o).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..4 {
            run(&h, "{}").await.unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "600/min is one per 100 ms"
        );
    }

    /// A loopback server that answers every request with `head` and then `chunks` of 1 MiB
    /// of `x` (streamed, never held), and keeps each request's header block.
    async fn raw_server(head: String, chunks: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let requests = seen.clone();
        crate::spawner::Spawner::spawn("test-raw-server", async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                requests
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                if socket.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let mega = vec![b'x'; 1 << 20];
                for _ in 0..chunks {
                    if socket.write_all(&mega).await.is_err() {
                        break;
                    }
                }
            }
        });
        (url, seen)
    }

    const ANSWER: &str = r#"{"model":"m","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;

    #[tokio::test]
    async fn the_key_is_sent_and_only_an_explicit_auth_none_sends_none() {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        let (url, requests) = raw_server(head, 0).await;
        // PATH stands in for a key: every process has one.
        let key = std::env::var("PATH").unwrap();
        let mut o = options(&url);
        o.auth = Auth::Bearer {
            key_env: "PATH".into(),
        };
        let h = Http::new(o).unwrap();
        assert!(
            !format!("{h:?}").contains(&key),
            "the key stays out of Debug"
        );
        run(&h, r#"{"prompt":"x"}"#).await.unwrap();
        run(&Http::new(options(&url)).unwrap(), r#"{"prompt":"x"}"#)
            .await
            .unwrap();
        let requests = requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2);
        let authorization = |r: &str| {
            r.lines()
                .find_map(|l| l.strip_prefix("authorization: "))
                .map(str::to_owned)
        };
        assert_eq!(authorization(&requests[0]), Some(format!("Bearer {key}")));
        assert_eq!(authorization(&requests[1]), None);
    }

    #[test]
    fn a_pool_without_its_key_or_with_a_bad_url_is_refused_when_built() {
        let mut o = HttpOptions::new("http://127.0.0.1:9/v1", "gpt-test");
        o.auth = Auth::Bearer {
            key_env: "COLONY_TEST_NO_SUCH_KEY".into(),
        };
        let e = Http::new(o).unwrap_err().to_string();
        assert!(
            e.contains("`COLONY_TEST_NO_SUCH_KEY` is not set")
                && e.contains("auth: none")
                && e.contains("gpt-test"),
            "{e}"
        );
        for (url, why) in [
            ("ftp://example.com/v1", "not an http(s) URL"),
            ("localhost:8000/v1", "not an http(s) URL"),
            ("no url at all", "not a URL"),
            ("http://a\0b/v1", "control character"),
            ("http://ok/v1\n", "control character"),
            ("", "not a URL"),
        ] {
            let mut o = options(url);
            o.auth = Auth::None;
            let e = Http::new(o).unwrap_err().to_string();
            assert!(
                e.starts_with("base-url `") && e.contains(why),
                "{url:?}: {e}"
            );
        }
        assert!(check_base_url("https://api.openai.com/v1").is_ok());
        assert!(check_base_url("http://127.0.0.1:8000/v1").is_ok());
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_fails_the_attempt() {
        // Announced too long: refused before reading.
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            MAX_RESPONSE + 1
        );
        let (url, _) = raw_server(head, 17).await;
        let err = run(&Http::new(options(&url)).unwrap(), "{}")
            .await
            .unwrap_err();
        assert!(
            !err.is_retryable()
                && err
                    .to_string()
                    .contains(&format!("more than {MAX_RESPONSE} bytes")),
            "{err}"
        );
        // Not announced: reading stops at the limit.
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
        let (url, _) = raw_server(head.into(), 40).await;
        let err = run(&Http::new(options(&url)).unwrap(), "{}")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("more than {MAX_RESPONSE} bytes")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Not retried within the attempt: it fails at once, for the runtime to retry.
        let h = Http::new(options(&format!("http://127.0.0.1:{port}/v1"))).unwrap();
        // Retried within the attempt, its 4 backoffs would take 7.5 s.
        let err = tokio::time::timeout(Duration::from_secs(5), run(&h, "{}"))
            .await
            .expect("no backoff within the attempt")
            .unwrap_err();
        let message = err.to_string();
        assert!(
            err.is_retryable()
                && message.contains("cannot connect")
                && message.to_lowercase().contains("refused"),
            "{message}"
        );
    }
}
