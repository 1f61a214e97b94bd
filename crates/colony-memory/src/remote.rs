//! [`Remote`]: embeddings from an OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, a
//! vLLM or llama.cpp server, Ollama's OpenAI API, LiteLLM...), with the `http` agents'
//! settings: a base URL, a model, an API key read from an environment variable.
//!
//! Blocking: call it from a thread that may block (the CLI, tokio's blocking pool), never
//! from an async task. Every answer is bounded and checked: as many vectors as texts, each
//! of the declared dimension, every value finite; anything else is an error that says what
//! came, and nothing is stored from it.

use crate::{Embedder, Error, MAX_DIMENSION, MAX_TEXT_BYTES};
use serde::Deserialize;
use std::{io::Read, time::Duration};

/// Texts sent in one request.
pub(crate) const BATCH: usize = 256;
/// Attempts of one request that failed retryably (a 429, a 5xx, a broken connection).
const ATTEMPTS: u32 = 3;

/// Where and how to ask for embeddings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    /// The API's base URL, `/embeddings` is added: `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    /// Values of each vector the model gives: checked on every answer.
    pub dimension: usize,
    /// The API key, when the endpoint wants one (sent as a bearer token).
    pub api_key: Option<String>,
    /// Per request.
    pub timeout: Duration,
}

impl RemoteOptions {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, dimension: usize) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            dimension,
            api_key: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A blocking HTTP client that may be dropped anywhere. reqwest's blocking client runs a
/// runtime on a thread of its own, and dropping it joins that thread: on an async thread
/// (a workflow's or a server's memory is dropped there) that blocks a worker, and a test
/// saw the process panic doing it ("cannot drop a runtime in a context where blocking is
/// not allowed"). So it is dropped on a thread of its own.
pub(crate) struct Http(Option<reqwest::blocking::Client>);

impl Http {
    pub(crate) fn new(client: reqwest::blocking::Client) -> Self {
        Self(Some(client))
    }
}

impl std::ops::Deref for Http {
    type Target = reqwest::blocking::Client;
    fn deref(&self) -> &reqwest::blocking::Client {
        self.0.as_ref().expect("a client until dropped")
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // Nothing waits on it: a process that ends meanwhile ends the thread too.
            let _ = std::thread::Builder::new()
                .name("colony-http-drop".into())
                .spawn(move || drop(client));
        }
    }
}

/// Embeddings from an OpenAI-compatible endpoint (see the module's text).
pub struct Remote {
    url: String,
    options: RemoteOptions,
    kind: String,
    client: Http,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("model", &self.options.model)
            .field("dimension", &self.options.dimension)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl Remote {
    pub fn new(options: RemoteOptions) -> Result<Self, Error> {
        if options.dimension == 0 || options.dimension > MAX_DIMENSION {
            return Err(Error::Query(format!(
                "an embedding of {} dimensions: allowed 1..={MAX_DIMENSION}",
                options.dimension
            )));
        }
        let base = options.base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::Query(format!("embedder URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Query(format!(
                "embedder URL {base:?}: only http and https are spoken"
            )));
        }
        if options.model.trim().is_empty() {
            return Err(Error::Query("the embedder's model is empty".into()));
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| Error::Embedder(e.to_string()))?;
        Ok(Self {
            url: format!("{base}/embeddings"),
            kind: format!("http:{}", options.model),
            options,
            client: Http::new(client),
        })
    }

    /// One request of at most [`BATCH`] texts, retried when it failed retryably.
    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.once(texts) {
                Ok(vectors) => return Ok(vectors),
                Err((retry, why)) if retry => last = why,
                Err((_, why)) => return Err(Error::Embedder(why)),
            }
        }
        Err(Error::Embedder(format!(
            "{last} (after {ATTEMPTS} attempts)"
        )))
    }

    /// `Err((retryable, why))`.
    fn once(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, (bool, String)> {
        let body = serde_json::json!({ "model": self.options.model, "input": texts });
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.options.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .map_err(|e| (true, format!("{}: {e}", self.url)))?;
        let status = response.status();
        // The most an honest answer takes: every value written out long, and some room.
        let bound = (texts.len() * self.options.dimension * 32 + (64 << 10)) as u64;
        let mut bytes = Vec::new();
        response
            .take(bound + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (true, format!("{}: reading the answer: {e}", self.url)))?;
        if !status.is_success() {
            let retry = status.as_u16() == 429 || status.is_server_error();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err((retry, format!("{} answered {status}: {text}", self.url)));
        }
        if bytes.len() as u64 > bound {
            return Err((
                false,
                format!(
                    "{} answered over {bound} bytes for {} texts of {} dimensions",
                    self.url,
                    texts.len(),
                    self.options.dimension
                ),
            ));
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
            (
                false,
                format!(
                    "{} answered what is not a list of embeddings: {e}",
                    self.url
                ),
            )
        })?;
        if answer.data.len() != texts.len() {
            return Err((
                false,
                format!(
                    "{} answered {} embeddings for {} texts",
                    self.url,
                    answer.data.len(),
                    texts.len()
                ),
            ));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (i, datum) in answer.data.into_iter().enumerate() {
            let at = datum.index.unwrap_or(i);
            let d = self.options.dimension;
            if datum.embedding.len() != d {
                return Err((
                    false,
                    format!(
                        "{} answered an embedding of {} dimensions: {} were declared for model {}",
                        self.url,
                        datum.embedding.len(),
                        d,
                        self.options.model
                    ),
                ));
            }
            if datum.embedding.iter().any(|x| !x.is_finite()) {
                return Err((
                    false,
                    format!("{} answered a value that is not finite", self.url),
                ));
            }
            match out.get_mut(at) {
                Some(slot @ None) => *slot = Some(datum.embedding),
                _ => {
                    return Err((
                        false,
                        format!("{} answered index {at} twice or out of range", self.url),
                    ));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every index once"))
            .collect())
    }
}

impl Embedder for Remote {
    fn dimension(&self) -> usize {
        self.options.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        if let Some(i) = texts.iter().position(|t| t.len() > MAX_TEXT_BYTES) {
            return Err(Error::Query(format!(
                "text {i} is {} bytes: allowed up to {MAX_TEXT_BYTES}",
                texts[i].len()
            )));
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.request(chunk)?);
        }
        Ok(out)
    }

    fn kind(&self) -> &str {
        &self.kind
    }
}
