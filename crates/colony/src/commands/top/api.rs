//! The part of `colony serve`'s read API that `colony top` polls: counters, tiers, the
//! newest tasks that failed, and the pools' history of sizes.

use serde::{Deserialize, de::DeserializeOwned};
use std::{fmt, time::Duration};

/// Most bytes of one answer read: a server's pages are far smaller, and one that sends
/// more is not read whole into memory.
const MAX_ANSWER: usize = 16 << 20;

/// The runtime's counters, as `GET /v1/stats` answers them. A counter the server does not
/// send reads as zero, so an older or newer server still shows what it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Stats {
    pub(crate) accepted: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    #[serde(alias = "dead-lettered")]
    pub(crate) dead_lettered: u64,
    pub(crate) cancelled: u64,
    pub(crate) retries: u64,
    pub(crate) steals: u64,
    pub(crate) restarts: u64,
    pub(crate) escalations: u64,
    #[serde(alias = "health-failures")]
    pub(crate) health_failures: u64,
    pub(crate) queued: u64,
    pub(crate) running: u64,
    pub(crate) agents: u64,
    pub(crate) capacity: u64,
}

impl Stats {
    /// Tasks in a terminal state.
    pub(crate) fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.dead_lettered + self.cancelled
    }
}

/// One tier of the hierarchy, as `GET /v1/hierarchy` answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Tier {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) agents: u64,
    #[serde(default)]
    pub(crate) down: u64,
    /// Workers retired from their pools.
    #[serde(default)]
    pub(crate) retired: u64,
    #[serde(default)]
    pub(crate) degraded: u64,
    #[serde(default)]
    pub(crate) critical: u64,
    #[serde(default)]
    pub(crate) failed: u64,
}

#[derive(Debug, Deserialize)]
struct Hierarchy {
    tiers: Vec<Tier>,
}

/// A task that ended badly, as `GET /v1/tasks` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct FailedTask {
    pub(crate) id: u64,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Page {
    tasks: Vec<FailedTask>,
}

/// A decision by vote, as `GET /v1/decisions` lists it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct DecisionLine {
    pub(crate) id: u64,
    /// `open`, `decided` or `failed`.
    pub(crate) state: String,
    pub(crate) protocol: String,
    pub(crate) voters: u64,
    /// The winner's value; a value that is not a string is shown as JSON.
    pub(crate) value: Option<serde_json::Value>,
    pub(crate) support: Option<f64>,
    pub(crate) participation: Option<f64>,
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Decisions {
    decisions: Vec<DecisionLine>,
}

/// A workflow run, as `GET /v1/runs` lists it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct RunLine {
    pub(crate) id: u64,
    pub(crate) name: String,
    /// `running`, `succeeded`, `failed`, `cancelled` or `error`.
    pub(crate) state: String,
    pub(crate) tasks: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) cancelled: u64,
    pub(crate) cost_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RunList {
    runs: Vec<RunLine>,
}

/// One task of a run, as `GET /v1/runs/{id}/graph` gives it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct RunTask {
    pub(crate) id: String,
    pub(crate) wave: usize,
    /// `waiting`, `started`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub(crate) state: String,
    pub(crate) attempts: u32,
    pub(crate) seconds: Option<f64>,
    pub(crate) cost_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RunGraph {
    #[serde(default)]
    waves: usize,
    graph: Vec<RunTask>,
}

impl Runs {
    /// Waves of the newest run: as the server counts them, or as its tasks shown say.
    pub(crate) fn waves(&self) -> usize {
        self.newest
            .iter()
            .map(|t| t.wave.saturating_add(1))
            .max()
            .unwrap_or(0)
            .max(self.newest_waves)
    }
}

/// Runs asked for at each poll, and waves of the newest run's graph.
const RUNS_POLLED: usize = 3;
pub(crate) const WAVES_POLLED: usize = 4;

/// The runs a server holds, newest first, and the tasks of the newest.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Runs {
    pub(crate) runs: Vec<RunLine>,
    /// The tasks of the newest run's first waves (as many as `colony top` shows).
    pub(crate) newest: Vec<RunTask>,
    /// The newest run's waves, all of them.
    pub(crate) newest_waves: usize,
}

/// What `GET /v1/pools/history` answers: samples as columns aligned with `t` (milliseconds
/// since the Unix epoch), and the decisions on the pools' sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct PoolHistory {
    /// The time of the newest record: the `since` of the next poll.
    pub(crate) until: u64,
    pub(crate) t: Vec<u64>,
    pub(crate) pools: Vec<PoolSeries>,
    pub(crate) events: Vec<Decision>,
}

/// One pool's columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct PoolSeries {
    pub(crate) pool: usize,
    pub(crate) kind: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) agents: Vec<Option<u64>>,
    pub(crate) desired: Vec<Option<u64>>,
    pub(crate) waiting: Vec<Option<u64>>,
    pub(crate) busy: Vec<Option<u64>>,
}

/// A decision on a pool's size: `scale:up`, `scale:down` and `scale:manual` with `from`,
/// `to` (and the first two a `reason`); `scale:blocked` with `wanted` and `by`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Decision {
    pub(crate) t: u64,
    pub(crate) pool: usize,
    pub(crate) kind: String,
    pub(crate) from: Option<u64>,
    pub(crate) to: Option<u64>,
    pub(crate) reason: Option<String>,
    pub(crate) wanted: Option<String>,
    pub(crate) by: Option<String>,
}

/// One poll of the server: everything a frame shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) stats: Stats,
    pub(crate) tiers: Vec<Tier>,
    /// Failed and dead-lettered tasks, newest first.
    pub(crate) failures: Vec<FailedTask>,
    /// The pools' samples and decisions since the poll's `since`; `None` from a server
    /// that keeps no history (one older than this `colony top`). Boxed: it is taken out
    /// at once, and the rest of a snapshot moves about.
    pub(crate) pools: Option<Box<PoolHistory>>,
    /// The newest decisions by vote; `None` from a server that runs none (older than this
    /// `colony top`).
    pub(crate) decisions: Option<Vec<DecisionLine>>,
    /// Workflow runs; `None` from a server that takes none (`--runs` not given, or older
    /// than this `colony top`).
    pub(crate) runs: Option<Runs>,
}

/// Why a poll got nothing to show.
#[derive(Debug)]
pub(crate) enum Error {
    /// No answer at all: nothing listens, the name does not resolve, or it took too long.
    Unreachable { server: String, cause: String },
    /// 401 or 403: a token is missing, unknown, or lacks the read scope.
    Refused {
        server: String,
        status: reqwest::StatusCode,
        message: String,
        /// Whether a token was sent.
        token: bool,
    },
    /// Any other answer that is not the one the API documents.
    Answer { url: String, problem: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { server, cause } => {
                write!(f, "cannot reach colony serve at {server}: {cause}")
            }
            Error::Refused {
                server,
                status,
                message,
                token,
            } => {
                let hint = match (status.as_u16(), token) {
                    (401, false) => "pass a token with --token or COLONY_TOKEN",
                    (401, true) => "check the token given with --token or COLONY_TOKEN",
                    _ => "use a token with the read scope",
                };
                write!(
                    f,
                    "{server} refused the request ({status}): {message}; {hint}"
                )
            }
            Error::Answer { url, problem } => write!(f, "{url}: {problem}"),
        }
    }
}

impl std::error::Error for Error {}

/// Polls one server, with its token if it asks for one.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// The base URL, without a trailing slash.
    server: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(
        server: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("colony-top/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Whether the server is a cluster's control plane (`colony serve --nats`), which has
    /// no runtime of its own to watch: it has a `/v1/cluster` (answered, or refused with
    /// its own error while NATS is away), and `/v1/stats` it does not. A runtime's server
    /// says `/v1/cluster` is not found.
    pub(crate) async fn is_cluster(&self) -> bool {
        match self.fetch("/v1/cluster").await {
            Ok((_, status, body)) if status.is_success() => {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v.get("nodes").is_some_and(|n| n.is_array()))
            }
            Ok((_, status, body)) => {
                status == reqwest::StatusCode::SERVICE_UNAVAILABLE && !code(&body).is_empty()
            }
            Err(_) => false,
        }
    }

    /// Stats, tiers, the newest `failures` failed or dead-lettered tasks, and the pools'
    /// history after `since` (all of it without), asked for at once.
    pub(crate) async fn snapshot(
        &self,
        failures: usize,
        since: Option<u64>,
    ) -> Result<Snapshot, Error> {
        let failed = format!("/v1/tasks?state=failed&limit={failures}");
        let dead = format!("/v1/tasks?state=dead-lettered&limit={failures}");
        let history = match since {
            Some(since) => format!("/v1/pools/history?since={since}"),
            None => "/v1/pools/history".to_owned(),
        };
        let decisions = format!("/v1/decisions?limit={failures}");
        let (stats, hierarchy, failed, dead, pools, decisions) = tokio::try_join!(
            self.get::<Stats>("/v1/stats"),
            self.get::<Hierarchy>("/v1/hierarchy"),
            self.get::<Page>(&failed),
            self.get::<Page>(&dead),
            self.get_if_served::<PoolHistory>(&history),
            self.get_if_served::<Decisions>(&decisions),
        )?;
        let runs = self.runs().await?;
        let mut tasks = failed.tasks;
        tasks.extend(dead.tasks);
        tasks.sort_by_key(|t| std::cmp::Reverse(t.id));
        tasks.truncate(failures);
        Ok(Snapshot {
            stats,
            tiers: hierarchy.tiers,
            failures: tasks,
            pools: pools.map(Box::new),
            decisions: decisions.map(|d| d.decisions),
            runs,
        })
    }

    /// The newest runs, and the graph of the newest; `None` when the server takes no runs,
    /// or answers about them what this `colony top` cannot read: the rest of the screen
    /// still shows.
    async fn runs(&self) -> Result<Option<Runs>, Error> {
        let (url, status, body) = self.fetch(&format!("/v1/runs?limit={RUNS_POLLED}")).await?;
        let Ok(list) = parse::<RunList>(&self.server, url, status, &body, self.token.is_some())
        else {
            return Ok(None);
        };
        let (newest, newest_waves) = match list.runs.first() {
            Some(run) => {
                // Only the waves shown: a run of 100,000 tasks is not sent every poll.
                let graph = format!("/v1/runs/{}/graph?waves={WAVES_POLLED}", run.id);
                match self.get_if_served::<RunGraph>(&graph).await {
                    Ok(Some(g)) => (g.graph, g.waves),
                    Ok(None) => (Vec::new(), 0),
                    // Forgotten between the two requests: shown without its tasks.
                    Err(Error::Answer { .. }) => (Vec::new(), 0),
                    Err(e) => return Err(e),
                }
            }
            None => (Vec::new(), 0),
        };
        Ok(Some(Runs {
            runs: list.runs,
            newest,
            newest_waves,
        }))
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let (url, status, body) = self.fetch(path).await?;
        parse(&self.server, url, status, &body, self.token.is_some())
    }

    /// Like `get`, but a route the server does not have (404 `not-found`: an older server)
    /// is `None` rather than a failure.
    pub(super) async fn get_if_served<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, Error> {
        let (url, status, body) = self.fetch(path).await?;
        if status == reqwest::StatusCode::NOT_FOUND && code(&body) == "not-found" {
            return Ok(None);
        }
        parse(&self.server, url, status, &body, self.token.is_some()).map(Some)
    }

    /// The URL asked, and the answer's status and body.
    async fn fetch(&self, path: &str) -> Result<(String, reqwest::StatusCode, Vec<u8>), Error> {
        let url = format!("{}{path}", self.server);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: reqwest::Error| Error::Unreachable {
            server: self.server.clone(),
            cause: cause(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let (body, more) = colony_agents::http::read_capped(response, MAX_ANSWER)
            .await
            .map_err(unreachable)?;
        if more {
            return Err(Error::Answer {
                url,
                problem: format!(
                    "answered more than {MAX_ANSWER} bytes, the most colony top reads"
                ),
            });
        }
        Ok((url, status, body))
    }
}

/// A successful answer as `T`, or the error a failed one says.
fn parse<T: DeserializeOwned>(
    server: &str,
    url: String,
    status: reqwest::StatusCode,
    body: &[u8],
    token: bool,
) -> Result<T, Error> {
    if !status.is_success() {
        let message = message(body);
        return Err(match status.as_u16() {
            401 | 403 => Error::Refused {
                server: server.to_owned(),
                status,
                message,
                token,
            },
            _ => Error::Answer {
                problem: format!("answered {status}: {message}"),
                url,
            },
        });
    }
    serde_json::from_slice(body).map_err(|e| Error::Answer {
        url,
        problem: format!("not an answer colony serve gives ({e}); is this a colony server?"),
    })
}

/// The code of an API error body `{"error": {"code", "message"}}`; empty for anything else.
fn code(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Problem {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
    }
    serde_json::from_slice::<Problem>(body)
        .map(|p| p.error.code)
        .unwrap_or_default()
}

/// What went wrong underneath a request, in a few words: the innermost cause says it best
/// ("Connection refused (os error 111)"); reqwest's own message only repeats the URL.
fn cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".to_owned();
    }
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// The message of an API error body `{"error": {"code", "message"}}`, or the start of
/// whatever else came back.
fn message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Problem {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => p.error.message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no message".to_owned()
            } else {
                text.chars().take(200).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_the_servers_names_and_default_what_is_missing() {
        let stats: Stats = serde_json::from_str(
            r#"{"accepted":5,"succeeded":3,"failed":1,"dead_lettered":1,"health_failures":2,
                "rebalanced":9,"agents":10}"#,
        )
        .unwrap();
        assert_eq!(stats.finished(), 5);
        assert_eq!(stats.health_failures, 2);
        assert_eq!(stats.capacity, 0);
    }

    #[test]
    fn error_bodies_give_their_message() {
        let body = br#"{"error":{"code":"unauthorized","message":"needs a token"}}"#;
        assert_eq!(message(body), "needs a token");
        assert_eq!(message(b"  "), "no message");
        assert_eq!(message(b"Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn refusals_say_what_to_do() {
        let refused = |status, token| {
            Error::Refused {
                server: "http://h:1".into(),
                status,
                message: "no".into(),
                token,
            }
            .to_string()
        };
        assert_eq!(
            refused(reqwest::StatusCode::UNAUTHORIZED, false),
            "http://h:1 refused the request (401 Unauthorized): no; \
             pass a token with --token or COLONY_TOKEN"
        );
        assert!(
            refused(reqwest::StatusCode::UNAUTHORIZED, true)
                .ends_with("check the token given with --token or COLONY_TOKEN")
        );
        assert!(
            refused(reqwest::StatusCode::FORBIDDEN, true)
                .ends_with("use a token with the read scope")
        );
    }
}
