//! The workflow file as written: every field, with where it was written for the values an
//! error may point at. `docs/workflow.md` documents it for users.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A whole workflow file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct File {
    pub name: Spanned<String>,
    /// Folder of the results; `colony-out/<name>` when absent.
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub defaults: Defaults,
    pub agents: Vec<Pool>,
    /// Required by `colony run` (which says so when they are missing); a pools file for
    /// `colony serve` may leave them out.
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// Settings of the whole runtime rather than of one pool: the autoscaler's timing and
    /// the workers' circuit breakers.
    #[serde(default)]
    pub runtime: Runtime,
    /// Where the workflow's memory (`remember:`, `recall:`) lives and what embeds it;
    /// `<output>/memory.db`, lexical, without it.
    #[serde(default)]
    pub memory: Option<MemoryFile>,
    /// Where the run's events are posted (`crate::webhooks`).
    #[serde(default)]
    pub webhooks: Vec<WebhookFile>,
}

/// A pool's `estimate:`: one task's expected time and cost.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EstimateFile {
    /// Like `30s` or `5m`.
    #[serde(default)]
    pub duration: Option<Spanned<String>>,
    /// Dollars.
    #[serde(default)]
    pub cost_usd: Option<Spanned<f64>>,
}

/// One webhook of the `webhooks:` list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookFile {
    /// An http(s) URL the events are posted to.
    pub url: Spanned<String>,
    /// The variable holding the secret the events are signed with; unsigned without it.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// The kinds posted (`run:started`, `task:succeeded`, `task:failed`, `task:skipped`,
    /// `task:cancelled`, `run:finished`). Default: `run:started`, `task:failed`,
    /// `run:finished`.
    #[serde(default)]
    pub events: Option<Vec<Spanned<String>>>,
    /// One request's time limit. Default 5s.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Attempts at one event. Default 5.
    #[serde(default)]
    pub attempts: Option<Spanned<u32>>,
    /// Events its queue holds. Default 1000.
    #[serde(default)]
    pub queue: Option<Spanned<u32>>,
    /// How long the run's end waits for its queue to empty. Default 10s.
    #[serde(default)]
    pub drain: Option<Spanned<String>>,
}

/// The `memory:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MemoryFile {
    /// A SQLite file, relative to the workflow file's folder.
    #[serde(default)]
    pub db: Option<Spanned<String>>,
    /// Or a ChromaDB server: `http://HOST:PORT?tenant=&database=&prefix=&token-env=`.
    #[serde(default)]
    pub chroma: Option<Spanned<String>>,
    /// Stores the memory is spread over. Default 1.
    #[serde(default)]
    pub shards: Option<Spanned<u32>>,
    /// An OpenAI-compatible embeddings endpoint instead of lexical embeddings.
    #[serde(default)]
    pub embedder: Option<EmbedderFile>,
}

/// An OpenAI-compatible `/v1/embeddings` endpoint, in the `http` agents' terms.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EmbedderFile {
    /// An http(s) URL (`/embeddings` is added). Default: `$OPENAI_BASE_URL` when set, else
    /// `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    pub model: Spanned<String>,
    /// The variable holding the API key, sent as a bearer token; none sent without it.
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    /// Values of each vector the model gives.
    pub dimension: Spanned<u32>,
}

/// The `runtime:` section as written (in a workflow or pools file, or `[runtime]` in
/// `colony.toml`); each key absent takes the value below it: the runtime's default, or for
/// `colony serve`, what a lower layer of its configuration says. `docs/configuration.md`
/// documents every key.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Runtime {
    /// The most children one agent supervises. Default 12.
    #[serde(default)]
    pub span: Option<Located<u32>>,
    /// Tier names top to bottom (a list, or one string of names separated by commas), or
    /// `auto`. Default `master, coordinator, supervisor, worker`.
    #[serde(default)]
    pub tiers: Option<Located<Tiers>>,
    /// How each tier picks the child a task goes to. Default `least-loaded`.
    #[serde(default)]
    pub strategy: Option<Located<RoutingStrategy>>,
    /// The `weighted` strategy's weights; only with `strategy: weighted`.
    #[serde(default)]
    pub weights: Option<Located<Weights>>,
    /// Tasks a supervisor queues beyond what its workers run. Default 256.
    #[serde(default)]
    pub queue_capacity: Option<Located<u32>>,
    /// Queue length from which an idle worker steals from a sibling supervisor. Default 2.
    #[serde(default)]
    pub steal_at: Option<Located<u64>>,
    /// Periodic evening-out of sibling supervisors' queues.
    #[serde(default)]
    pub rebalance: Option<Located<Rebalance>>,
    /// Health thresholds and the heartbeat interval.
    #[serde(default)]
    pub health: Option<Located<Health>>,
    /// How every managing agent supervises its children.
    #[serde(default)]
    pub supervision: Option<Located<Supervision>>,
    /// Backoff between a task's attempts, and when a task counts as poison.
    #[serde(default)]
    pub retry: Option<Located<Retry>>,
    /// Seed of the routing decisions' random choices. Default 0.
    #[serde(default)]
    pub seed: Option<Located<u64>>,
    #[serde(default)]
    pub autoscale: Option<Located<Autoscale>>,
    /// `off`, or when a worker's breaker opens and how it lets the worker back.
    #[serde(default)]
    pub breaker: Option<Located<Breaker>>,
    /// How the message bus is sized: each mailbox's capacity, a read's batch, a body's
    /// largest size.
    #[serde(default)]
    pub messages: Option<Located<Messages>>,
}

/// A value and where it was written. One wrapper for both formats the section is read
/// from: YAML (through serde-saphyr, which gives a line and column) and TOML (through
/// `toml`, which gives a byte offset). Each parser recognises its own request for a span;
/// the other's passes through, so one `Deserialize` asks for both in turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub at: Where,
}

/// Where a [`Located`] value was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Where {
    /// Not known (a value a parser made up, or a deserializer that keeps no spans).
    #[default]
    Unknown,
    /// 1-based line and column (YAML).
    Line { line: u64, column: u64 },
    /// Byte offset in the text (TOML).
    Offset(usize),
}

impl Where {
    /// The 1-based line and column in `text`, the text the value was read from.
    pub fn position(self, text: &str) -> Option<crate::Position> {
        match self {
            Where::Unknown => None,
            Where::Line { line, column } => Some(crate::Position { line, column }),
            Where::Offset(offset) => {
                let before = text.get(..offset.min(text.len()))?;
                Some(crate::Position {
                    line: before.matches('\n').count() as u64 + 1,
                    column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1,
                })
            }
        }
    }
}

/// serde-saphyr's name for a value with its location.
const YAML_SPANNED: &str = "__yaml_spanned";
/// `toml`'s (serde_spanned's) name and fields for a value with its byte range.
const TOML_SPANNED: &str = "$__serde_spanned_private_Spanned";
const TOML_START: &str = "$__serde_spanned_private_start";
const TOML_END: &str = "$__serde_spanned_private_end";
const TOML_VALUE: &str = "$__serde_spanned_private_value";

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        use std::marker::PhantomData;

        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = Located<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
                let (mut value, mut at) = (None, Where::Unknown);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "value" | TOML_VALUE => value = Some(map.next_value::<T>()?),
                        "referenced" => {
                            let l = map.next_value::<serde_saphyr::Location>()?;
                            if l != serde_saphyr::Location::UNKNOWN && l.line() > 0 {
                                at = Where::Line {
                                    line: l.line(),
                                    column: l.column(),
                                };
                            }
                        }
                        TOML_START => at = Where::Offset(map.next_value::<usize>()?),
                        "defined" | TOML_END => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["value"]));
                        }
                    }
                }
                let value = value.ok_or_else(|| de::Error::missing_field("value"))?;
                Ok(Located { value, at })
            }
        }

        struct Wrapper<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Wrapper<T> {
            type Value = Located<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value")
            }

            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Located<T>, D::Error> {
                deserializer.deserialize_struct(
                    TOML_SPANNED,
                    &[TOML_START, TOML_END, TOML_VALUE],
                    Fields(PhantomData),
                )
            }
        }

        deserializer.deserialize_newtype_struct(YAML_SPANNED, Wrapper(PhantomData))
    }
}

/// `auto`, or tier names top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tiers {
    Auto,
    Named(Vec<String>),
}

impl<'de> Deserialize<'de> for Tiers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tiers;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`auto`, or a list of tier names")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Tiers, E> {
                if v.trim() == "auto" {
                    return Ok(Tiers::Auto);
                }
                if v.split(',').count() > MAX_TIER_NAMES {
                    return Err(E::custom(format!(
                        "more than {MAX_TIER_NAMES} tier names given"
                    )));
                }
                Ok(Tiers::Named(
                    v.split(',').map(|n| n.trim().to_owned()).collect(),
                ))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Tiers, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if names.len() == MAX_TIER_NAMES {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_TIER_NAMES} tier names given"
                        )));
                    }
                    names.push(name);
                }
                Ok(Tiers::Named(names))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Tier names read at most; the planner allows fewer (`colony_core::hierarchy::MAX_TIERS`)
/// and says so.
const MAX_TIER_NAMES: usize = 64;

/// How each tier picks the child a task goes to (`colony_core::routing::Strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingStrategy {
    /// Power of two choices: the less loaded of two children sampled.
    LeastLoaded,
    RoundRobin,
    /// The lowest score of load, latency and affinity, with `weights`.
    Weighted,
    Random,
}

/// Weights of the `weighted` strategy's score; each absent takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Weights {
    /// Times the subtree's load per capacity. Default 1.0.
    #[serde(default)]
    pub load: Option<Located<f64>>,
    /// Times its latency relative to the slowest candidate. Default 0.5.
    #[serde(default)]
    pub latency: Option<Located<f64>>,
    /// Added when it also holds agents the task did not ask for. Default 0.25.
    #[serde(default)]
    pub affinity: Option<Located<f64>>,
}

/// The message bus's sizes (`colony_runtime::MessageOptions`); each key absent takes its
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Messages {
    /// Messages a mailbox holds, taken and unacknowledged ones included. Default 1024.
    #[serde(default)]
    pub capacity: Option<Located<u64>>,
    /// Messages one read takes at most, up to the capacity. Default 256.
    #[serde(default)]
    pub batch: Option<Located<u64>>,
    /// Longest body, in bytes. Default 1 MiB.
    #[serde(default)]
    pub max_body: Option<Located<u64>>,
}

/// Periodic evening-out of sibling supervisors' queues.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Rebalance {
    /// Time between passes; `0s` turns rebalancing off. Default `5s`.
    #[serde(default)]
    pub every: Option<Located<String>>,
    /// How far a queue may stray from its siblings' mean, as a fraction of it. Default 0.3.
    #[serde(default)]
    pub tolerance: Option<Located<f64>>,
}

/// Health thresholds and smoothing (`colony_core::health::HealthOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Health {
    /// Response-time average from which a worker is degraded. Default `2s`.
    #[serde(default)]
    pub degraded_after: Option<Located<String>>,
    /// From which it is critical. Default `5s`.
    #[serde(default)]
    pub critical_after: Option<Located<String>>,
    /// Silence after which a busy worker is failed. Default `10s`.
    #[serde(default)]
    pub failed_after: Option<Located<String>>,
    /// How often busy workers are swept, and agents are expected to beat. Default `1s`.
    #[serde(default)]
    pub heartbeat: Option<Located<String>>,
    /// Weight of a new sample in the fast average. Default 0.3.
    #[serde(default)]
    pub alpha: Option<Located<f64>>,
    /// Weight of a new sample in the baseline. Default 0.02.
    #[serde(default)]
    pub baseline_alpha: Option<Located<f64>>,
    /// Alert when the fast average exceeds the baseline by this fraction. Default 0.5.
    #[serde(default)]
    pub alert_rise: Option<Located<f64>>,
}

/// How every managing agent supervises its children
/// (`colony_core::supervision::SupervisorOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Supervision {
    /// `one-for-one`, `one-for-all` or `rest-for-one`. Default `one-for-one`.
    #[serde(default)]
    pub strategy: Option<Located<colony_core::supervision::Strategy>>,
    /// `permanent`, `transient` or `temporary`. Default `permanent`.
    #[serde(default)]
    pub restart: Option<Located<colony_core::supervision::RestartPolicy>>,
    /// Restart intensity: most restarts within `period` before the supervisor escalates.
    /// Default 3.
    #[serde(default)]
    pub max_restarts: Option<Located<u32>>,
    /// Default `5s`.
    #[serde(default)]
    pub period: Option<Located<String>>,
    /// Wait before a child's second restart within the period. Default `10ms`.
    #[serde(default)]
    pub initial_backoff: Option<Located<String>>,
    /// Longest wait. Default `1s`.
    #[serde(default)]
    pub max_backoff: Option<Located<String>>,
    /// Each further wait's multiple of the last. Default 2.0.
    #[serde(default)]
    pub multiplier: Option<Located<f64>>,
    /// Each wait moves by up to this fraction of itself. Default 0.2.
    #[serde(default)]
    pub jitter: Option<Located<f64>>,
    /// Per managing tier, by name, keys of this section that differ for that tier's
    /// supervisors (not `tiers` again).
    #[serde(default)]
    pub tiers: Option<Located<std::collections::BTreeMap<String, Located<Supervision>>>>,
}

/// How failed attempts are retried (`colony_runtime::RetryOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Retry {
    /// Delay before the second attempt, doubled for each further one; `0s` retries at once.
    /// Default `10ms`.
    #[serde(default)]
    pub initial_backoff: Option<Located<String>>,
    /// Longest delay. Default `1s`.
    #[serde(default)]
    pub max_backoff: Option<Located<String>>,
    /// Each delay moves by up to this fraction of itself. Default 0.2.
    #[serde(default)]
    pub jitter: Option<Located<f64>>,
    /// Agents a task's attempts may crash or hang before it is quarantined. Default 3.
    #[serde(default)]
    pub poison_faults: Option<Located<u32>>,
}

/// When and how far ahead the autoscaler looks.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Autoscale {
    /// Time between two looks at every scaled pool. Default `5s`.
    #[serde(default)]
    pub every: Option<Located<String>>,
    /// How far ahead the forecast of arrivals reaches. Default `5m`.
    #[serde(default)]
    pub horizon: Option<Located<String>>,
    /// The demand's cycle, such as `1d`; absent, the forecast has no season.
    #[serde(default)]
    pub season: Option<Located<String>>,
}

/// `breaker: off`, or the breaker's settings.
#[derive(Debug)]
pub enum Breaker {
    /// Health only observes: no worker is kept out of routing.
    Off,
    On(Box<BreakerSettings>),
}

/// A worker's circuit breaker as written; each key absent takes
/// `colony_core::breaker::BreakerOptions`'s default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BreakerSettings {
    /// Error rate (above 0, up to 1) at or above which the breaker opens. Default 0.5.
    #[serde(default)]
    pub error_rate: Option<Located<f64>>,
    /// How long an open breaker keeps its worker out first. Default `5s`.
    #[serde(default)]
    pub open_for: Option<Located<String>>,
    /// Longest it keeps it out, doubling `open-for` each time it reopens. Default `60s`.
    #[serde(default)]
    pub max_open_for: Option<Located<String>>,
    /// Successes in probation that close it again. Default 3.
    #[serde(default)]
    pub probation: Option<Located<u32>>,
}

impl<'de> Deserialize<'de> for Breaker {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Breaker;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`off` or a map of breaker settings")
            }

            // A plain `off` reaches here as YAML 1.1's false.
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Breaker, E> {
                if on {
                    return Err(E::invalid_value(serde::de::Unexpected::Bool(true), &self));
                }
                Ok(Breaker::Off)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Breaker, E> {
                if v == "off" {
                    return Ok(Breaker::Off);
                }
                Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Breaker, A::Error> {
                BreakerSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|b| Breaker::On(Box::new(b)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Settings every task takes unless it says otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Defaults {
    /// Time one attempt may take, such as `30s` or `5m`.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Attempts after the first one fails.
    #[serde(default)]
    pub retries: Option<u32>,
    /// 0 (lowest) to 9.
    #[serde(default)]
    pub priority: Option<u8>,
}

/// A pool of agents of one kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Pool {
    pub name: Spanned<String>,
    pub kind: Spanned<Kind>,
    /// What tasks ask for by `role:`; the pool's name when absent.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "one")]
    pub count: Spanned<u32>,
    /// Tasks one agent runs at once.
    #[serde(default = "one")]
    pub concurrency: Spanned<u32>,
    /// Attempts the pool starts per minute at most, across its agents.
    #[serde(default)]
    pub rate_per_minute: Option<Spanned<u32>>,
    /// Where a retry goes after an attempt on this pool failed: `any`, `backup`, `same-pool`.
    #[serde(default)]
    pub failover: Option<colony_core::agent::Failover>,
    #[serde(default)]
    pub sim: Option<Sim>,
    #[serde(default)]
    pub command: Option<Command>,
    /// A coding-agent CLI a `command` pool runs: `claude`, `codex`, `gemini`, `aider` or
    /// `opencode`. It brings the program, its arguments and its output's reading.
    #[serde(default)]
    pub preset: Option<Spanned<colony_agents::presets::Preset>>,
    #[serde(default)]
    pub process: Option<ProcessSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
    /// How the autoscaler sizes the pool; without it, its size is `count` until a person
    /// changes it.
    #[serde(default)]
    pub scaling: Option<Spanned<Scaling>>,
    /// What one of its tasks is expected to take, for `colony validate --plan`.
    #[serde(default)]
    pub estimate: Option<EstimateFile>,
}

/// A pool's autoscaling as written: each key absent takes
/// `colony_core::scaling::ScalingOptions`'s default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Scaling {
    /// Fewest agents; 0 lets the pool go to zero when idle. Default 1.
    #[serde(default)]
    pub min: Option<Spanned<u32>>,
    /// Most agents. Default 10000.
    #[serde(default)]
    pub max: Option<Spanned<u32>>,
    /// `false` turns the forecast policy off. Default `true`.
    #[serde(default)]
    pub predictive: Option<Spanned<bool>>,
    /// Utilisation at or above which the reactive policy grows the pool. Default 0.8.
    #[serde(default)]
    pub high_utilisation: Option<Spanned<f64>>,
    /// Utilisation at or below which the cost policy shrinks it. Default 0.3.
    #[serde(default)]
    pub low_utilisation: Option<Spanned<f64>>,
    /// Wait of the oldest queued task from which the emergency policy grows it. Default `5s`.
    #[serde(default)]
    pub overload_wait: Option<Spanned<String>>,
    /// Time without work after which the pool goes to `min`. Default `5m`.
    #[serde(default)]
    pub idle_after: Option<Spanned<String>>,
    /// The forecast's error (MAPE, 0.2 = 20 %) at or under which the predictive policy acts.
    /// Default 0.2.
    #[serde(default)]
    pub max_forecast_error: Option<Spanned<f64>>,
    #[serde(default)]
    pub reactive: Option<ScalingPolicy>,
    #[serde(default)]
    pub cost: Option<ScalingPolicy>,
    #[serde(default)]
    pub emergency: Option<ScalingPolicy>,
    /// The predictive policy's steps (`predictive` says whether it acts at all).
    #[serde(default)]
    pub predictive_policy: Option<ScalingPolicy>,
}

/// One scaling policy's steps as written; each key absent takes the policy's preset.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScalingPolicy {
    /// One step's multiple of the pool's size: above 1 for growth, below 1 for `cost`.
    #[serde(default)]
    pub factor: Option<Spanned<f64>>,
    /// Largest size, as a multiple of the pool's size when its scaling began.
    #[serde(default)]
    pub max_scale: Option<Spanned<f64>>,
    /// Smallest size, as a multiple of the same.
    #[serde(default)]
    pub min_scale: Option<Spanned<f64>>,
    /// Least time since the last step any policy took before this one steps.
    #[serde(default)]
    pub cooldown: Option<Spanned<String>>,
}

/// Settings of `http` agents: an OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSettings {
    /// An http(s) URL. Default: `$OPENAI_BASE_URL` when set, else `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    pub model: Spanned<String>,
    /// The variable holding the API key (default `OPENAI_API_KEY`); it must be set when the
    /// pool is built.
    #[serde(default)]
    pub api_key_env: Option<Spanned<String>>,
    /// `bearer` (the default: the key from `api-key-env`) or `none`, for an endpoint that
    /// takes no key.
    #[serde(default)]
    pub auth: Option<Spanned<HttpAuth>>,
    #[serde(default)]
    pub max_tokens: Option<Spanned<u32>>,
    #[serde(default)]
    pub temperature: Option<Spanned<f64>>,
    #[serde(default)]
    pub requests_per_minute: Option<Spanned<u32>>,
    /// Dollars per million tokens.
    #[serde(default)]
    pub price: Option<HttpPrice>,
    /// Dollars the pool may spend; then its tasks fail instead of sending requests.
    #[serde(default)]
    pub budget_usd: Option<Spanned<f64>>,
}

/// How `http` agents authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpAuth {
    /// `Authorization: Bearer` with the key in `api-key-env`.
    Bearer,
    /// No key is sent: the endpoint takes none.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpPrice {
    pub input: Spanned<f64>,
    pub output: Spanned<f64>,
}

/// Settings of `process` agents: one long-lived process per agent, speaking JSON lines.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProcessSettings {
    pub program: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Processes kept started and unclaimed, for new agents' first tasks.
    #[serde(default)]
    pub warm: Option<Spanned<u32>>,
    /// A process idle this long is stopped; its agent's next task starts another.
    #[serde(default)]
    pub idle_timeout: Option<Spanned<String>>,
    /// Between SIGTERM and SIGKILL when a process is stopped.
    #[serde(default)]
    pub stop_grace: Option<Spanned<String>>,
    /// Whether a predictive health alert replaces the agent's process. Default true.
    #[serde(default)]
    pub replace_on_alert: Option<bool>,
}

fn one() -> Spanned<u32> {
    Spanned::new(
        1,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Simulated agents: seeded latency and faults, output = input.
    Sim,
    /// One process per attempt.
    Command,
    /// One long-lived process per agent, speaking JSON lines on stdio.
    Process,
    /// An OpenAI-compatible chat-completions endpoint.
    Http,
}

/// Settings of `sim` agents.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Sim {
    /// Time each attempt takes, such as `20ms`.
    #[serde(default)]
    pub latency: Option<Spanned<String>>,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub crash_rate: f64,
    #[serde(default)]
    pub hang_rate: f64,
    #[serde(default)]
    pub seed: u64,
}

/// Settings of `command` agents.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Command {
    /// The program: a path, or a name looked up on `PATH`. Never run through a shell. With
    /// a `preset:`, the preset's CLI by default.
    #[serde(default)]
    pub program: Option<Spanned<String>>,
    /// Arguments, with `{{task}}`, `{{attempt}}`, `{{agent}}` and `{{input.KEY}}`; with a
    /// preset, added after the preset's own.
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    /// Variables passed through from colony's environment (besides PATH, HOME, LANG, TMPDIR).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory of each attempt; `{{task}}` makes one per task.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Exit codes that mean success.
    #[serde(default)]
    pub ok_codes: Option<Vec<i32>>,
    /// Variables passed through whose values are hidden (`***`) in outputs and logs.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Run each attempt in a fresh git worktree of the repository the workflow file is in,
    /// at `<output>/worktrees/<task>`.
    #[serde(default)]
    pub worktree: bool,
    /// Let a value from the task's input start an argument with `-` (the program would take
    /// it for an option); refused by default.
    #[serde(default)]
    pub allow_option_values: bool,
    /// With a preset: the model the CLI uses (its `--model`).
    #[serde(default)]
    pub model: Option<Spanned<String>>,
    /// With the `claude` preset: most agentic turns per call.
    #[serde(default)]
    pub max_turns: Option<Spanned<u32>>,
    /// With a preset whose CLI reports tokens but no cost (`codex`, `gemini`): dollars per
    /// million tokens.
    #[serde(default)]
    pub price: Option<HttpPrice>,
    /// With a preset: dollars the pool may spend; then its tasks fail instead of starting
    /// the CLI.
    #[serde(default)]
    pub budget_usd: Option<Spanned<f64>>,
    /// With a preset: calls of the CLI after a rate limit, within one attempt (default 3).
    #[serde(default)]
    pub rate_limit_retries: Option<Spanned<u32>>,
}

/// Resource limits of each process.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub cpu_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    pub memory_mb: Option<Spanned<u64>>,
    #[serde(default)]
    pub open_files: Option<Spanned<u64>>,
    #[serde(default)]
    pub processes: Option<Spanned<u64>>,
}

/// A task of the graph.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Task {
    pub id: Spanned<String>,
    /// The pool that runs it, by name.
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    /// Or any pool of this role...
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    /// ...and with these capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Routed to the best-reputed agent with room for it, not by load alone.
    #[serde(default)]
    pub hard: bool,
    /// Tasks that must succeed first.
    #[serde(default)]
    pub needs: Vec<Spanned<String>>,
    /// JSON handed to the agent; strings may hold `{{outputs.ID}}` or `{{outputs.ID.FIELD}}`
    /// of tasks it needs.
    #[serde(default)]
    pub input: Option<Spanned<serde_json::Value>>,
    /// Text handed to the agent, templated like `input`.
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub retries: Option<u32>,
    /// Run even when a task it needs failed or was skipped.
    #[serde(default)]
    pub continue_on_failure: bool,
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Ask several agents and decide their answer by vote: the task's output is the winner.
    #[serde(default)]
    pub decide: Option<Spanned<Decide>>,
    /// Work as a temporary team formed for the task: its roles' members take its steps in
    /// turn, each seeing the outputs of the steps before; the task's output is the last step's.
    #[serde(default)]
    pub team: Option<Spanned<Team>>,
    /// Store the task's output in the workflow's memory once it succeeds, so that later
    /// tasks, and later runs, can recall it.
    #[serde(default)]
    pub remember: bool,
    /// Search the workflow's memory before the task runs; what is found goes into its input
    /// as `recall`.
    #[serde(default)]
    pub recall: Option<Spanned<Recall>>,
    /// Publish the task's output on this topic once it succeeds.
    #[serde(default)]
    pub publish: Option<Spanned<String>>,
    /// Wait, once its needs are met, for a message on a topic: the first one goes into its
    /// input as `message`.
    #[serde(default)]
    pub wait: Option<Spanned<Wait>>,
}

/// A task's `wait:` block.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Wait {
    pub topic: Spanned<String>,
    /// How long to wait before the task fails. Default 5m.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// A task's `recall:` block.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Recall {
    /// What to look for: text, templated like the prompt (`{{outputs.ID}}` of tasks it needs).
    pub query: Spanned<String>,
    /// Documents recalled, at most. Default 5.
    #[serde(default)]
    pub k: Option<Spanned<u32>>,
}

/// A task's `team:` block: who is in the team, how big it is, and the steps it takes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Team {
    /// Members in all. Without it (and without `size-from`), the roles' counts.
    #[serde(default)]
    pub size: Option<Spanned<u32>>,
    /// Members from a complexity score in the task's input instead.
    #[serde(default)]
    pub size_from: Option<Spanned<SizeFrom>>,
    /// The roles, in order; at most one without a `count` takes the members left.
    pub roles: Vec<Spanned<TeamRole>>,
    /// The steps, in order, each asked of a role.
    pub steps: Vec<Spanned<TeamStep>>,
    /// Members replaced after failing, over the team's life, before it gives up. Default:
    /// the team's size.
    #[serde(default)]
    pub reassign: Option<Spanned<u32>>,
    /// Levels a member may hand its step on to another role. Default 0 (none).
    #[serde(default)]
    pub delegation: Option<Spanned<u32>>,
    /// A cluster run's (`colony run --nats`): the members are agents of any node, each ask
    /// a cluster task of its role. Default false.
    #[serde(default)]
    pub spread: Option<Spanned<bool>>,
}

/// A team size read from the task's input: one member per `per` points of the number in
/// field `field`, rounded up, within `min..=max`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SizeFrom {
    pub field: Spanned<String>,
    #[serde(default)]
    pub per: Option<Spanned<f64>>,
    #[serde(default)]
    pub min: Option<Spanned<u32>>,
    pub max: Spanned<u32>,
}

/// A role of a team: its name, who may hold it, and how many members hold it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TeamRole {
    pub name: Spanned<String>,
    /// Workers of this pool hold it...
    #[serde(default)]
    pub agent: Option<Spanned<String>>,
    /// ...or of pools of this role (default: the role's name)...
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    /// ...with these capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub count: Option<Spanned<u32>>,
}

/// A step of a team's work.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TeamStep {
    pub id: Spanned<String>,
    /// The team role that takes it.
    pub role: Spanned<String>,
    /// Asked of every member of the role at once; its output is the array of theirs.
    #[serde(default)]
    pub each: bool,
    /// Fields set over the task's input for this step.
    #[serde(default)]
    pub input: Option<Spanned<serde_json::Value>>,
}

/// A task's `decide:` block: how many agents vote and how their outputs are counted
/// (`colony_core::decision::DecisionOptions`, with the file's durations and pool names).
/// Each key absent takes the option's default, except `timeout` (see below).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Decide {
    /// Distinct agents asked, each once: 1 up to `colony_core::decision::MAX_PARTICIPANTS`.
    pub voters: Spanned<u32>,
    /// `majority` (alias `quorum`), `weighted`, `confidence`, `similarity`, `bft`, `fast`
    /// or `leader`. Default `majority`.
    #[serde(default)]
    pub protocol: Option<Spanned<colony_core::decision::Protocol>>,
    /// A winner needs more than this share of the weight counted. Default 0.5.
    #[serde(default)]
    pub threshold: Option<Spanned<f64>>,
    /// At least this share of the voters must vote. Default 0.5.
    #[serde(default)]
    pub participation: Option<Spanned<f64>>,
    /// Time from the start by which the vote is decided or fails. Default: the task's
    /// `timeout`, the time one answer may take (up to 1 day), not the core's 5 s: a vote of
    /// agents that take a minute each would otherwise always fail.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// `fail`, `first` or `judge` (a worker that did not vote chooses). Default `fail`.
    #[serde(default)]
    pub tie: Option<Spanned<colony_core::decision::Tie>>,
    /// Time a judge has to choose. Default `5s`.
    #[serde(default)]
    pub judge_timeout: Option<Spanned<String>>,
    /// `exact`, `trim` or `text`: what makes two outputs the same vote. Default `trim`.
    #[serde(default)]
    pub normalise: Option<Spanned<colony_core::decision::Normalise>>,
    /// `similarity`: how alike two outputs must be to count as one vote. Default 0.8.
    #[serde(default)]
    pub similarity: Option<Spanned<f64>>,
    /// `bft`: faulty voters tolerated. Default (voters - 1) / 3.
    #[serde(default)]
    pub faults: Option<Spanned<u32>>,
    /// `fast`: the share of matching ballots that decides its first round. Default 0.75.
    #[serde(default)]
    pub fast_quorum: Option<Spanned<f64>>,
    /// `leader`: most proposers tried. Default 3.
    #[serde(default)]
    pub max_rounds: Option<Spanned<u32>>,
    /// `weighted` and `confidence`: each voter's weight by its pool's name; pools not named
    /// weigh 1.
    #[serde(default)]
    pub weights: Option<Spanned<VoteWeights>>,
    /// `weighted` and `confidence`: each voter also weighs its reputation (0 to 1: its
    /// checks passed and its agreement with decided outcomes). Default false.
    #[serde(default)]
    pub reputation: Option<Spanned<bool>>,
    /// A cluster run's (`colony run --nats`): the voters span the cluster's nodes, each
    /// ballot a cluster task of its own. Default false.
    #[serde(default)]
    pub spread: Option<Spanned<bool>>,
}

/// Weights of pools by name, in the order written, each name and weight with where it is.
#[derive(Debug, Default)]
pub struct VoteWeights(pub Vec<(Spanned<String>, Spanned<f64>)>);

impl<'de> Deserialize<'de> for VoteWeights {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VoteWeights;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of pool names to weights")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VoteWeights, A::Error> {
                let mut weights = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<String>, Spanned<f64>>()? {
                    weights.push(entry);
                }
                Ok(VoteWeights(weights))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Checks an output must pass for its attempt to succeed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Expect {
    /// The output is JSON other than a bare string (a program printed JSON).
    #[serde(default)]
    pub json: bool,
    /// The output's text matches this regular expression.
    #[serde(default)]
    pub regex: Option<Spanned<String>>,
    /// The output's text contains this.
    #[serde(default)]
    pub contains: Option<String>,
    /// These files exist once the attempt ends (relative to the workflow file).
    #[serde(default)]
    pub files: Vec<String>,
    /// The output is JSON valid against this JSON Schema.
    #[serde(default)]
    pub schema: Option<Spanned<serde_json::Value>>,
    /// The attempt changed files in its git checkout: its worktree when its pool gives it one,
    /// else the repository the workflow file is in.
    #[serde(default)]
    pub git_diff: bool,
}
