//! Presets for coding-agent CLIs: how to call `claude`, `codex`, `gemini`, `aider` and
//! `opencode` without a shell, and how to read what they print.
//!
//! A `command` pool that names a preset gets its program, its arguments, the environment the
//! CLI needs (its API keys pass through as secrets, hidden in every output and log) and an
//! output reader. The prompt goes to the CLI's stdin (never into an argument, where a long
//! prompt would hit the kernel's 128 KiB limit on one argument, and where a prompt starting
//! with `-` would be read as an option).
//!
//! Reading is sans-IO: [`Preset::read`] takes the bytes the CLI printed and says what they
//! mean. An attempt succeeds only when the CLI's own success flag says so (Claude's
//! `is_error`, Codex's `turn.completed`, Gemini's `error`, OpenCode's last `step_finish`) and it
//! exited 0: a CLI that exits 0 with an error in its JSON fails its attempt. A rate limit or an
//! overload is told apart, with the wait the CLI asks for when it names one, so that the
//! backend can try again after it ([`Failure::RateLimited`]).

pub mod aider;
pub mod claude;
pub mod codex;
pub mod gemini;
pub mod opencode;

use std::time::{Duration, SystemTime};

/// A coding-agent CLI colony knows how to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Anthropic's Claude Code: `claude -p --output-format json`.
    Claude,
    /// OpenAI's Codex CLI: `codex exec --json -`.
    Codex,
    /// Google's Gemini CLI: `gemini --output-format json`.
    Gemini,
    /// Aider: `aider --message-file /dev/stdin --yes-always`.
    Aider,
    /// OpenCode: `opencode run --format json`.
    Opencode,
}

/// A version as `major.minor.patch`.
pub type Version = (u64, u64, u64);

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::Claude,
        Preset::Codex,
        Preset::Gemini,
        Preset::Aider,
        Preset::Opencode,
    ];

    /// The name a file gives it, which is also its program's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Claude => "claude",
            Preset::Codex => "codex",
            Preset::Gemini => "gemini",
            Preset::Aider => "aider",
            Preset::Opencode => "opencode",
        }
    }

    /// The program looked up on `PATH` when the pool names none.
    pub fn program(self) -> &'static str {
        self.name()
    }

    /// The oldest version whose output this preset reads: the first with the flags and the
    /// output format it uses.
    pub fn min_version(self) -> Version {
        match self {
            // `total_cost_usd` and `is_error` in `--output-format json`.
            Preset::Claude => (1, 0, 0),
            // `exec --json` with `thread.started`/`turn.completed` events.
            Preset::Codex => (0, 44, 0),
            // `--output-format json`.
            Preset::Gemini => (0, 6, 0),
            // `--yes-always` and the `Tokens: ... Cost: ...` report.
            Preset::Aider => (0, 80, 0),
            // `run --format json` events.
            Preset::Opencode => (0, 15, 0),
        }
    }

    /// What one task is assumed to take and cost when a pool gives no `estimate:`, for
    /// plans and dry runs only: rough figures for a coding task of a few files, which a
    /// pool's `estimate:` from its own runs should replace.
    pub fn typical(self) -> (Duration, f64) {
        match self {
            Preset::Claude => (Duration::from_secs(180), 0.50),
            Preset::Codex => (Duration::from_secs(180), 0.30),
            Preset::Gemini => (Duration::from_secs(120), 0.20),
            Preset::Aider => (Duration::from_secs(60), 0.05),
            Preset::Opencode => (Duration::from_secs(120), 0.20),
        }
    }

    /// Whether the CLI reports its cost in dollars itself; the others report tokens, which a
    /// pool's `price` turns into dollars.
    pub fn reports_cost(self) -> bool {
        matches!(self, Preset::Claude | Preset::Aider | Preset::Opencode)
    }

    /// Whether the CLI takes a limit on its agentic turns (`max-turns`).
    pub fn takes_max_turns(self) -> bool {
        matches!(self, Preset::Claude)
    }

    /// Variables passed through from colony's environment: where the CLI finds its account
    /// and its endpoint.
    pub fn env(self) -> &'static [&'static str] {
        match self {
            Preset::Claude => &[
                "ANTHROPIC_BASE_URL",
                "ANTHROPIC_MODEL",
                "CLAUDE_CONFIG_DIR",
                "CLAUDE_CODE_USE_BEDROCK",
                "CLAUDE_CODE_USE_VERTEX",
            ],
            Preset::Codex => &["OPENAI_BASE_URL", "CODEX_HOME"],
            Preset::Gemini => &["GOOGLE_CLOUD_PROJECT", "GOOGLE_GENAI_USE_VERTEXAI"],
            Preset::Aider => &["OPENAI_API_BASE", "AIDER_MODEL"],
            Preset::Opencode => &["OPENCODE_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME"],
        }
    }

    /// Variables passed through whose values are hidden (`***`) in outputs, logs and errors:
    /// the CLI's API keys.
    pub fn secrets(self) -> &'static [&'static str] {
        match self {
            Preset::Claude => &["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"],
            Preset::Codex => &["OPENAI_API_KEY", "CODEX_API_KEY"],
            Preset::Gemini => &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            Preset::Aider | Preset::Opencode => &[
                "OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
                "GEMINI_API_KEY",
                "OPENROUTER_API_KEY",
                "DEEPSEEK_API_KEY",
            ],
        }
    }

    /// The arguments of one call, before the pool's own extra arguments; the prompt goes to
    /// stdin.
    pub fn args(self, settings: &CliSettings) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Preset::Claude => vec!["-p".into(), "--output-format".into(), "json".into()],
            // `-`: the prompt is read from stdin. Outside a git repository codex refuses to
            // run unless told: the pool chose the folder.
            Preset::Codex => vec![
                "exec".into(),
                "--json".into(),
                "--skip-git-repo-check".into(),
            ],
            Preset::Gemini => vec!["--output-format".into(), "json".into()],
            Preset::Aider => vec![
                "--message-file".into(),
                "/dev/stdin".into(),
                "--yes-always".into(),
                "--no-pretty".into(),
                "--no-stream".into(),
                "--no-check-update".into(),
            ],
            Preset::Opencode => vec!["run".into(), "--format".into(), "json".into()],
        };
        if let Some(model) = &settings.model {
            args.push("--model".into());
            args.push(model.clone());
        }
        if let Some(turns) = settings.max_turns
            && self.takes_max_turns()
        {
            args.push("--max-turns".into());
            args.push(turns.to_string());
        }
        args
    }

    /// What the pool's extra arguments are followed by: codex reads its prompt from stdin
    /// only when told so by a last `-`.
    pub fn trailing_args(self) -> &'static [&'static str] {
        match self {
            Preset::Codex => &["-"],
            _ => &[],
        }
    }

    /// What a finished call's stdout (and the end of its stderr, where a CLI reports errors)
    /// means. `now` dates a rate limit that names the time it ends.
    pub fn read(self, stdout: &[u8], stderr: &[u8], now: SystemTime) -> Reading {
        let text = String::from_utf8_lossy(stdout);
        match self {
            Preset::Claude => claude::read(&text, now),
            Preset::Codex => codex::read(&text),
            Preset::Gemini => gemini::read(&text, &String::from_utf8_lossy(stderr)),
            Preset::Aider => aider::read(&text),
            Preset::Opencode => opencode::read(&text),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!("unknown preset `{s}`: known are {}", names.join(", "))
            })
    }
}

/// A preset pool's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CliSettings {
    pub preset: Preset,
    pub model: Option<String>,
    /// Claude's `--max-turns`.
    pub max_turns: Option<u32>,
    /// Dollars per million tokens, for CLIs that report tokens but no cost.
    pub price: crate::http::Price,
    /// Dollars the pool may spend; then its tasks fail instead of starting the CLI.
    pub budget_usd: Option<f64>,
    /// Calls of the CLI after a rate limit, within one attempt.
    pub max_retries: u32,
    /// The wait before the first retry of a rate limit that names none; it doubles.
    pub backoff: Duration,
}

impl CliSettings {
    pub fn new(preset: Preset) -> Self {
        Self {
            preset,
            model: None,
            max_turns: None,
            price: crate::http::Price::default(),
            budget_usd: None,
            max_retries: 3,
            backoff: Duration::from_secs(5),
        }
    }

    /// The dollars `usage` cost: the CLI's own figure, else its tokens at the pool's price.
    pub fn cost(&self, usage: &Tokens) -> f64 {
        usage.cost_usd.unwrap_or_else(|| {
            (usage.input as f64 * self.price.input_per_million
                + usage.output as f64 * self.price.output_per_million)
                / 1e6
        })
    }
}

/// Longest wait a rate limit may ask for within one attempt; a longer one fails the attempt
/// (retryably) rather than holding an agent for hours.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

/// What a call printed, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub outcome: Result<Answer, Failure>,
    /// What the call used, as far as its output says (a failed call may have used some too).
    pub usage: Tokens,
}

/// A successful call's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// The CLI's final message.
    pub text: String,
    /// The model, when the output names it.
    pub model: Option<String>,
    /// The CLI's session, to resume it by hand.
    pub session: Option<String>,
    /// Agentic turns taken, when reported.
    pub turns: Option<u64>,
}

/// Tokens and, when the CLI says, dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cost_usd: Option<f64>,
}

impl Tokens {
    fn add(&mut self, other: Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
    }
}

/// Why a call did not succeed.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The CLI said it failed (its own error flag or event), with its message.
    Reported(String),
    /// A rate limit or an overload; `after` is the wait the CLI asked for, if it named one.
    RateLimited {
        message: String,
        after: Option<Duration>,
    },
    /// The output is not in the CLI's format: empty, malformed, or a stream cut before its end.
    Unreadable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reported(m) => write!(f, "reported an error: {m}"),
            Failure::RateLimited { message, .. } => write!(f, "was rate-limited: {message}"),
            Failure::Unreadable(m) => write!(f, "printed what colony cannot read: {m}"),
        }
    }
}

/// A CLI's error message, as a [`Failure`]: a rate limit or overload when the text says so.
pub(crate) fn failure(message: impl Into<String>) -> Failure {
    let message = one_line(&message.into());
    if is_rate_limit(&message) {
        let after = retry_hint(&message);
        Failure::RateLimited { message, after }
    } else {
        Failure::Reported(message)
    }
}

/// Whether an error message is a rate limit or an overload, which passes with time. A spent
/// balance or billing quota does not pass: it is no rate limit, whatever status came with it.
pub(crate) fn is_rate_limit(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    if ["insufficient_quota", "billing", "credit balance"]
        .iter()
        .any(|n| m.contains(n))
    {
        return false;
    }
    [
        "rate limit",
        "rate_limit",
        "ratelimit",
        "too many requests",
        "overloaded",
        "resource_exhausted",
        "resource exhausted",
        "usage limit",
        "quota exceeded",
    ]
    .iter()
    .any(|needle| m.contains(needle))
        || has_status(&m, "429")
        || has_status(&m, "529")
}

/// Whether `code` stands in `m` as a number of its own (`API Error: 429 {...`), not as part of
/// another (`$0.0429`, `14290`, `line 429:`).
fn has_status(m: &str, code: &str) -> bool {
    m.match_indices(code).any(|(at, _)| {
        let before = m[..at].chars().next_back();
        let after = m[at + code.len()..].chars().next();
        let part_of = |c: char| c.is_ascii_alphanumeric() || ".$_-".contains(c);
        before.is_none_or(|c| !part_of(c)) && after.is_none_or(|c| !(part_of(c) || c == ':'))
    })
}

/// The wait an error message asks for: "try again in 1.5s", "retry in 20 seconds",
/// "retry after 300ms", "Retry-After: 7".
pub(crate) fn retry_hint(message: &str) -> Option<Duration> {
    let m = message.to_ascii_lowercase();
    for marker in ["try again in", "retry in", "retry after", "retry-after:"] {
        let Some(at) = m.find(marker) else { continue };
        let rest = m[at + marker.len()..].trim_start();
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let Ok(value) = number.parse::<f64>() else {
            continue;
        };
        let unit: String = rest[number.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        let scale = match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => 0.001,
            // A bare number: `Retry-After: 7` counts seconds.
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            // "retry in 3 more seconds": no unit read, no wait guessed.
            _ => continue,
        };
        let seconds = value * scale;
        if seconds.is_finite() && seconds >= 0.0 {
            return Some(Duration::from_secs_f64(
                seconds.min(MAX_RATE_LIMIT_WAIT.as_secs_f64() + 1.0),
            ));
        }
    }
    None
}

/// The first `major.minor[.patch]` in a `--version` answer (`v1.2.3` too).
pub fn parse_version(text: &str) -> Option<Version> {
    let bytes = text.as_bytes();
    let starts_word = |i: usize| i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
    let mut i = 0;
    while i < bytes.len() {
        let after_v = i > 0 && matches!(bytes[i - 1], b'v' | b'V') && starts_word(i - 1);
        if bytes[i].is_ascii_digit() && (starts_word(i) || after_v) {
            let token: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let parts: Vec<u64> = token
                .split('.')
                .take(3)
                .map_while(|p| p.parse().ok())
                .collect();
            if parts.len() >= 2 {
                return Some((parts[0], parts[1], parts.get(2).copied().unwrap_or(0)));
            }
            i += token.len().max(1);
        } else {
            i += 1;
        }
    }
    None
}

/// A message on one line, at most 500 characters, control characters escaped: errors go into
/// tables and onto terminals, and no escape sequence of a CLI's reaches one.
pub(crate) fn one_line(message: &str) -> String {
    let joined =
        crate::command::escape_controls(&message.split_whitespace().collect::<Vec<_>>().join(" "));
    if joined.chars().count() > 500 {
        let cut: String = joined.chars().take(500).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// The JSON objects on the lines of `text` (a JSON-lines stream), skipping other lines: CLIs
/// print warnings between events.
pub(crate) fn events(text: &str) -> impl Iterator<Item = serde_json::Value> + '_ {
    text.lines().filter_map(|line| {
        let line = line.trim();
        line.starts_with('{')
            .then(|| serde_json::from_str::<serde_json::Value>(line).ok())
            .flatten()
            .filter(serde_json::Value::is_object)
    })
}

/// A JSON number as u64 (0 when absent or not a number).
pub(crate) fn count(v: Option<&serde_json::Value>) -> u64 {
    v.and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

/// A JSON string, owned.
pub(crate) fn text(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(serde_json::Value::as_str).map(str::to_owned)
}

/// The first part of an unreadable output, for its error.
pub(crate) fn start_of(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "nothing on stdout".into();
    }
    let start: String = t.chars().take(120).collect();
    let start = one_line(&start);
    if t.chars().count() > 120 {
        format!("stdout starts `{start}…`")
    } else {
        format!("stdout is `{start}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_an_unknown_one_lists_the_known() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>(), Ok(p));
        }
        let e = "cursor".parse::<Preset>().unwrap_err();
        assert!(e.contains("claude, codex, gemini, aider, opencode"), "{e}");
    }

    #[test]
    fn versions_are_read_from_what_clis_print() {
        assert_eq!(parse_version("1.0.51 (Claude Code)"), Some((1, 0, 51)));
        assert_eq!(parse_version("codex-cli 0.46.0"), Some((0, 46, 0)));
        assert_eq!(parse_version("aider 0.86.1"), Some((0, 86, 1)));
        assert_eq!(parse_version("v0.15.2"), Some((0, 15, 2)));
        assert_eq!(
            parse_version("gpt4.1 build"),
            None,
            "a letter before it: not a version"
        );
        assert_eq!(parse_version("opencode 0.15"), Some((0, 15, 0)));
        assert_eq!(parse_version("x86_64 build 7"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn rate_limits_are_told_apart_with_their_wait() {
        assert_eq!(
            failure("Rate limit reached for gpt-5. Please try again in 1.5s."),
            Failure::RateLimited {
                message: "Rate limit reached for gpt-5. Please try again in 1.5s.".into(),
                after: Some(Duration::from_millis(1500)),
            }
        );
        assert!(matches!(
            failure("API Error: 529 {\"type\":\"overloaded_error\"}"),
            Failure::RateLimited { after: None, .. }
        ));
        assert_eq!(
            retry_hint("quota exceeded, retry in 250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_hint("Retry after 2 minutes"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            failure("permission denied"),
            Failure::Reported("permission denied".into())
        );
        // Numbers that only contain 429, a spent quota, and waits without a known unit.
        for not_limited in [
            "cost $0.0429 so far",
            "error at line 429: unexpected token",
            "request req_14290 failed",
            "429 insufficient_quota: check your plan and billing details",
        ] {
            assert!(
                matches!(failure(not_limited), Failure::Reported(_)),
                "{not_limited}"
            );
        }
        assert!(matches!(failure("HTTP 429"), Failure::RateLimited { .. }));
        assert_eq!(retry_hint("retry in 3 more seconds"), None);
        assert_eq!(
            retry_hint("usage limit: try again in 4 days"),
            Some(MAX_RATE_LIMIT_WAIT + Duration::from_secs(1))
        );
        assert_eq!(retry_hint("Retry-After: 7"), Some(Duration::from_secs(7)));
    }

    #[test]
    fn messages_reach_a_terminal_without_its_escape_sequences() {
        let m = one_line("boom \u{1b}[2J\u{7}\u{9b}done");
        assert!(!m.chars().any(char::is_control), "{m:?}");
        assert!(m.contains("\\u{1b}[2J"), "{m:?}");
    }

    #[test]
    fn a_rate_limit_never_asks_to_wait_for_ever() {
        let after = retry_hint("try again in 99999999999999999999h").unwrap();
        assert!(after <= MAX_RATE_LIMIT_WAIT + Duration::from_secs(1));
    }

    #[test]
    fn the_prompt_never_becomes_an_argument() {
        let mut s = CliSettings::new(Preset::Claude);
        s.model = Some("sonnet".into());
        s.max_turns = Some(7);
        assert_eq!(
            Preset::Claude.args(&s),
            [
                "-p",
                "--output-format",
                "json",
                "--model",
                "sonnet",
                "--max-turns",
                "7"
            ]
        );
        s.preset = Preset::Codex;
        let codex = Preset::Codex.args(&s);
        assert!(
            !codex.contains(&"--max-turns".to_string()),
            "codex takes none"
        );
        assert_eq!(Preset::Codex.trailing_args(), ["-"]);
    }

    #[test]
    fn tokens_cost_the_price_unless_the_cli_says_what_they_cost() {
        let mut s = CliSettings::new(Preset::Codex);
        s.price = crate::http::Price {
            input_per_million: 2.0,
            output_per_million: 10.0,
        };
        let used = Tokens {
            input: 1_000_000,
            output: 100_000,
            cost_usd: None,
        };
        assert!((s.cost(&used) - 3.0).abs() < 1e-9);
        let said = Tokens {
            cost_usd: Some(0.5),
            ..used
        };
        assert_eq!(s.cost(&said), 0.5);
    }
}
