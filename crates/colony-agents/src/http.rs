//! The `http` backend: an OpenAI-compatible chat-completions endpoint.
//!
//! Each attempt sends one `POST {base_url}/chat/completions` with the task's prompt (its
//! payload's `prompt`, else its `input` as JSON text) as the user message. The output is
//! `{"content": ..., "model": ..., "usage": {...}, "cost_usd": ...}`. A pool's requests are
//! spaced to its requests-per-minute limit; a 429 or a 5xx is retried within the attempt after
//! the server's `Retry-After` (or a doubling backoff), then fails retryably; other 4xx fail the
//! task. Once the pool's spending reaches its budget, no request is sent: attempts fail, fatally,
//! saying so.

use crate::{Agent, Error, Execution, Outcome, Task};
use bytes::Bytes;
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

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
    /// The variable holding the API key; no `Authorization` header when it is unset.
    pub api_key_env: String,
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
            api_key_env: "OPENAI_API_KEY".into(),
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
    pub fn new(options: HttpOptions) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            options: Arc::new(options),
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
        let (options, client, account) = (
            self.options.clone(),
            self.client.clone(),
            self.account.clone(),
        );
        // A request in flight, or a wait for the pace or a Retry-After, is the agent alive.
        Execution::Running(Box::pin(async move {
            crate::heartbeat::beating(&task.heartbeat, attempt(&options, &client, &account, &task))
                .await
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

async fn attempt(
    o: &HttpOptions,
    client: &reqwest::Client,
    account: &Mutex<Account>,
    task: &Task,
) -> Outcome {
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
    let key = std::env::var(&o.api_key_env).ok().filter(|k| !k.is_empty());
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
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if retry < o.max_retries => {
                tracing::debug!(error = %e, "Request failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            Err(e) => return Err(Error::retryable(format!("{url}: {e}"))),
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
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::retryable(format!("{url}: reading the answer: {e}")))?;
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
        o.api_key_env = "COLONY_TEST_NO_SUCH_KEY".into();
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
}
