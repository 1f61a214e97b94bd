//! The `runtime:` section, checked: from what a file says ([`file::Runtime`]) over the
//! settings below it to [`RuntimeSettings`], or every problem with where it is. The same
//! code reads a workflow or pools file's section (YAML) and `colony.toml`'s `[runtime]` table
//! (TOML); ranges come from the runtime's own `validate` functions, so there is one truth.

use crate::{
    Position, Problem, RuntimeSettings,
    file::{self, Located, Where},
};
use colony_core::{
    breaker::BreakerOptions,
    hierarchy::{self, HierarchyOptions},
    routing::{Strategy, Weights},
};
use std::time::Duration;

/// Longest duration any key of the section takes: a day and more is no timing of a runtime,
/// and a deadline this far ahead still fits every clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A duration written as `5s` or `250ms`, up to [`MAX_DURATION`]; `zero` says whether `0s`
/// means something. Else the problem and its label. Every duration of a file is read so.
pub(crate) fn parse_duration(text: &str, zero: bool) -> Result<Duration, (String, &'static str)> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && !zero => Err(("a duration of 0 is not allowed".into(), "zero")),
        Ok(d) if d > MAX_DURATION => Err((
            format!(
                "`{}` is out of range: allowed up to {} days",
                crate::shorten(text, 60),
                MAX_DURATION.as_secs() / 86_400
            ),
            "too long",
        )),
        Ok(d) => Ok(d),
        Err(e) => Err((
            format!(
                "`{}` is not a duration ({e}): write it like `30s`, `5m` or `1h 30m`",
                crate::shorten(text, 60)
            ),
            "not a duration",
        )),
    }
}

/// Every key of the section, dotted for the nested ones (`health.heartbeat`), in the order
/// `colony config show` lists them. `breaker` alone is `breaker: off`.
pub const KEYS: &[&str] = &[
    "span",
    "tiers",
    "strategy",
    "weights.load",
    "weights.latency",
    "weights.affinity",
    "queue-capacity",
    "steal-at",
    "rebalance.every",
    "rebalance.tolerance",
    "health.degraded-after",
    "health.critical-after",
    "health.failed-after",
    "health.heartbeat",
    "health.alpha",
    "health.baseline-alpha",
    "health.alert-rise",
    "supervision.strategy",
    "supervision.restart",
    "supervision.max-restarts",
    "supervision.period",
    "supervision.initial-backoff",
    "supervision.max-backoff",
    "supervision.multiplier",
    "supervision.jitter",
    "supervision.tiers",
    "retry.initial-backoff",
    "retry.max-backoff",
    "retry.jitter",
    "retry.poison-faults",
    "seed",
    "autoscale.every",
    "autoscale.horizon",
    "autoscale.season",
    "breaker",
    "breaker.error-rate",
    "breaker.open-for",
    "breaker.max-open-for",
    "breaker.probation",
    "messages.capacity",
    "messages.batch",
    "messages.max-body",
];

/// Most tasks a supervisor may queue, and most an idle worker's steal may wait for: the
/// runtime's own bound on `queue-capacity`.
const MAX_QUEUE: u64 = 1_000_000;

/// What checking one section needs: the text it was read from (for TOML's byte offsets) and
/// the problems found so far.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&self, at: Where) -> Option<Position> {
        at.position(self.text)
    }

    fn problem(&mut self, at: Where, message: impl Into<String>, label: &str) {
        let at = self.at(at);
        self.problems.push(Problem {
            message: message.into(),
            at,
            label: label.into(),
        });
    }

    /// A duration written as `5s` or `250ms`; `zero` says whether `0s` means something.
    fn duration(&mut self, v: &Located<String>, zero: bool) -> Option<Duration> {
        match parse_duration(&v.value, zero) {
            Ok(d) => Some(d),
            Err((message, label)) => {
                self.problem(v.at, message, label);
                None
            }
        }
    }

    /// Sets `into` from `v` when it is written and a duration.
    fn wait(&mut self, v: &Option<Located<String>>, zero: bool, into: &mut Duration) {
        if let Some(d) = v.as_ref().and_then(|v| self.duration(v, zero)) {
            *into = d;
        }
    }

    /// Sets `into` from `v` when it is written and a finite number.
    fn number(&mut self, key: &str, v: &Option<Located<f64>>, into: &mut f64) {
        let Some(v) = v else { return };
        if v.value.is_finite() {
            *into = v.value;
        } else {
            self.problem(
                v.at,
                format!("{key} {} is not a finite number", v.value),
                "not finite",
            );
        }
    }

    /// A range the runtime refused, at the key it names if that key is written here, else
    /// at the section.
    fn refused(&mut self, message: String, at: Option<Where>, section: Where) {
        self.problem(at.unwrap_or(section), message, "out of range");
    }
}

/// Where `v` is written, if it is.
fn at<T>(v: &Option<Located<T>>) -> Option<Where> {
    v.as_ref().map(|v| v.at)
}

/// `section` written over `base`, checked as a whole: every key range-checked, and what the
/// runtime's `validate` functions refuse pointed at the key they name. `text` is what the
/// section was read from.
pub(crate) fn layer(
    section: &file::Runtime,
    base: &RuntimeSettings,
    text: &str,
) -> Result<RuntimeSettings, Vec<Problem>> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let mut s = base.clone();
    hierarchy_keys(section, &mut s, &mut c);
    routing_keys(section, &mut s, &mut c);
    if let Some(r) = &section.rebalance {
        let o = &mut s.rebalance;
        let before = c.problems.len();
        c.wait(&r.value.every, true, &mut o.every);
        c.number("rebalance tolerance", &r.value.tolerance, &mut o.tolerance);
        if c.problems.len() == before
            && let Err(e) = o.validate()
        {
            c.refused(e.to_string(), at(&r.value.tolerance), r.at);
        }
    }
    if let Some(h) = &section.health {
        health(h, &mut s, &mut c);
    }
    if let Some(sup) = &section.supervision {
        supervision(sup, &mut s, &mut c);
    }
    if let Some(r) = &section.retry {
        retry(r, &mut s, &mut c);
    }
    if let Some(seed) = &section.seed {
        s.seed = seed.value;
    }
    if let Some(a) = &section.autoscale {
        autoscale(a, base, &mut s, &mut c);
    }
    if let Some(b) = &section.breaker {
        breaker(b, &mut s, &mut c);
    }
    if let Some(m) = &section.messages {
        messages(m, &mut s, &mut c);
    }
    if c.problems.is_empty() {
        Ok(s)
    } else {
        Err(c.problems)
    }
}

/// `span` and `tiers`, checked by the planner's own rules.
fn hierarchy_keys(section: &file::Runtime, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    if let Some(span) = &section.span {
        s.span = span.value;
    }
    if let Some(tiers) = &section.tiers {
        s.tiers = match &tiers.value {
            file::Tiers::Auto => hierarchy::Tiers::Auto,
            file::Tiers::Named(names) => hierarchy::Tiers::Named(names.clone()),
        };
    }
    let plan = HierarchyOptions {
        workers: 1,
        span: s.span,
        tiers: s.tiers.clone(),
    };
    if let Err(e) = plan.validate() {
        let at = match e {
            hierarchy::Error::Span { .. } => at(&section.span),
            _ => at(&section.tiers),
        };
        // A base refused by a lower layer was reported there.
        if let Some(at) = at {
            c.problem(at, e.to_string(), "out of range");
        }
    }
}

/// `strategy`, `weights`, `queue-capacity` and `steal-at`.
fn routing_keys(section: &file::Runtime, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let weighted = match (&section.strategy, s.strategy) {
        (Some(v), _) => v.value == file::RoutingStrategy::Weighted,
        (None, Strategy::Weighted(_)) => true,
        (None, _) => false,
    };
    if let Some(strategy) = &section.strategy {
        s.strategy = match strategy.value {
            file::RoutingStrategy::LeastLoaded => Strategy::LeastLoaded,
            file::RoutingStrategy::RoundRobin => Strategy::RoundRobin,
            file::RoutingStrategy::Random => Strategy::Random,
            file::RoutingStrategy::Weighted => Strategy::Weighted(match s.strategy {
                Strategy::Weighted(w) => w,
                _ => Weights::default(),
            }),
        };
    }
    if let Some(w) = &section.weights {
        if !weighted {
            c.problem(
                w.at,
                "`weights` are the `weighted` strategy's: set `strategy: weighted` too",
                "not weighted",
            );
        } else if let Strategy::Weighted(weights) = &mut s.strategy {
            for (key, v, into) in [
                ("load", &w.value.load, &mut weights.load),
                ("latency", &w.value.latency, &mut weights.latency),
                ("affinity", &w.value.affinity, &mut weights.affinity),
            ] {
                let Some(v) = v else { continue };
                if v.value.is_finite() && (0.0..=MAX_WEIGHT).contains(&v.value) {
                    *into = v.value as f32;
                } else {
                    c.problem(
                        v.at,
                        format!(
                            "weights {key} {} is out of range: allowed 0.0..={MAX_WEIGHT}",
                            v.value
                        ),
                        "out of range",
                    );
                }
            }
        }
    }
    if let Some(q) = &section.queue_capacity {
        s.queue_capacity = q.value;
        if !(1..=MAX_QUEUE).contains(&u64::from(q.value)) {
            // The runtime's own message for it.
            let e = colony_runtime::Error::QueueCapacity { got: q.value };
            c.problem(q.at, e.to_string(), "out of range");
        }
    }
    if let Some(v) = &section.steal_at {
        if (1..=MAX_QUEUE).contains(&v.value) {
            s.steal_at = v.value as usize;
        } else {
            c.problem(
                v.at,
                format!(
                    "steal-at {} is out of range: allowed 1..={MAX_QUEUE}",
                    v.value
                ),
                "out of range",
            );
        }
    }
}

/// Largest weight of the `weighted` strategy's score: its terms are fractions, so a weight
/// beyond this only drowns the others.
const MAX_WEIGHT: f64 = 1_000.0;

fn health(h: &Located<file::Health>, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let w = &h.value;
    let o = &mut s.health;
    let before = c.problems.len();
    c.wait(&w.degraded_after, false, &mut o.degraded_after);
    c.wait(&w.critical_after, false, &mut o.critical_after);
    c.wait(&w.failed_after, false, &mut o.failed_after);
    c.wait(&w.heartbeat, false, &mut o.heartbeat);
    c.number("health alpha", &w.alpha, &mut o.alpha);
    c.number(
        "health baseline-alpha",
        &w.baseline_alpha,
        &mut o.baseline_alpha,
    );
    c.number("health alert-rise", &w.alert_rise, &mut o.alert_rise);
    if c.problems.len() > before {
        return;
    }
    let Err(e) = o.validate() else { return };
    use colony_core::health::Error;
    let key = match &e {
        Error::Order { .. } => at(&w.degraded_after)
            .or(at(&w.critical_after))
            .or(at(&w.failed_after)),
        Error::Alpha { field, .. } if *field == "alpha" => at(&w.alpha),
        Error::Alpha { .. } => at(&w.baseline_alpha),
        Error::Rise { .. } => at(&w.alert_rise),
        Error::Heartbeat { .. } => at(&w.heartbeat).or(at(&w.failed_after)),
    };
    c.refused(e.to_string(), key, h.at);
}

fn supervision(sup: &Located<file::Supervision>, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let w = &sup.value;
    let before = c.problems.len();
    supervision_options(sup, &mut s.supervision, c);
    let Some(tiers) = &w.tiers else { return };
    for (name, tier) in &tiers.value {
        let t = &tier.value;
        if t.tiers.is_some() {
            c.problem(
                tier.at,
                format!(
                    "supervision of tier `{name}` has `tiers` again: give each tier's keys only"
                ),
                "nested tiers",
            );
            continue;
        }
        if let hierarchy::Tiers::Named(names) = &s.tiers {
            let managing = &names[..names.len().saturating_sub(1)];
            if !managing.iter().any(|m| m == name) {
                c.problem(
                    tier.at,
                    format!(
                        "supervision of tier `{}`: no managing tier has that name (these tiers: {})",
                        crate::shorten(name, 60),
                        managing.join(", ")
                    ),
                    "no such tier",
                );
                continue;
            }
        }
        let mut o = colony_core::supervision::SupervisorOverrides {
            strategy: t.strategy.as_ref().map(|v| v.value),
            restart: t.restart.as_ref().map(|v| v.value),
            max_restarts: t.max_restarts.as_ref().map(|v| v.value),
            ..Default::default()
        };
        let mut wait = |v: &Option<Located<String>>, zero: bool, into: &mut Option<Duration>| {
            if let Some(d) = v.as_ref().and_then(|v| c.duration(v, zero)) {
                *into = Some(d);
            }
        };
        wait(&t.period, false, &mut o.period);
        wait(&t.initial_backoff, true, &mut o.initial_backoff);
        wait(&t.max_backoff, true, &mut o.max_backoff);
        for (key, v, into) in [
            ("multiplier", &t.multiplier, &mut o.multiplier),
            ("jitter", &t.jitter, &mut o.jitter),
        ] {
            let mut x = 0.0;
            c.number(&format!("supervision {key}"), v, &mut x);
            if v.as_ref().is_some_and(|v| v.value.is_finite()) {
                *into = Some(x);
            }
        }
        let merged = s
            .supervision_tiers
            .get(name)
            .map_or(o, |earlier| earlier.then(&o));
        s.supervision_tiers.insert(name.clone(), merged);
    }
    if c.problems.len() > before {
        return;
    }
    // Each tier's settings are checked over everyone's as this layer leaves them.
    for (name, o) in &s.supervision_tiers {
        if let Err(e) = o.over(s.supervision).validate() {
            let at = tiers.value.get(name).map_or(tiers.at, |t| t.at);
            c.refused(format!("tier `{name}`: {e}"), Some(at), sup.at);
        }
    }
}

/// The keys of one `supervision` block (everyone's, or one tier's) over `o`.
fn supervision_options(
    sup: &Located<file::Supervision>,
    o: &mut colony_core::supervision::SupervisorOptions,
    c: &mut Checker<'_>,
) {
    let w = &sup.value;
    let before = c.problems.len();
    if let Some(v) = &w.strategy {
        o.strategy = v.value;
    }
    if let Some(v) = &w.restart {
        o.restart = v.value;
    }
    if let Some(v) = &w.max_restarts {
        o.max_restarts = v.value;
    }
    c.wait(&w.period, false, &mut o.period);
    c.wait(&w.initial_backoff, true, &mut o.initial_backoff);
    c.wait(&w.max_backoff, true, &mut o.max_backoff);
    c.number("supervision multiplier", &w.multiplier, &mut o.multiplier);
    c.number("supervision jitter", &w.jitter, &mut o.jitter);
    if c.problems.len() > before {
        return;
    }
    let Err(e) = o.validate() else { return };
    use colony_core::supervision::Error;
    let key = match &e {
        Error::Period { .. } => at(&w.period),
        Error::MaxRestarts { .. } => at(&w.max_restarts),
        Error::Multiplier { .. } => at(&w.multiplier),
        Error::Jitter { .. } => at(&w.jitter),
        Error::Backoff { .. } => at(&w.initial_backoff).or(at(&w.max_backoff)),
    };
    c.refused(e.to_string(), key, sup.at);
}

fn retry(r: &Located<file::Retry>, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let w = &r.value;
    let o = &mut s.retry;
    let before = c.problems.len();
    c.wait(&w.initial_backoff, true, &mut o.initial_backoff);
    c.wait(&w.max_backoff, true, &mut o.max_backoff);
    c.number("retry jitter", &w.jitter, &mut o.jitter);
    if let Some(v) = &w.poison_faults {
        o.poison_faults = v.value;
    }
    if c.problems.len() > before {
        return;
    }
    let Err(e) = o.validate() else { return };
    // `RetryOptions::validate` answers with a message only: it names the key.
    let message = e.to_string();
    let key = if message.contains("jitter") {
        at(&w.jitter)
    } else if message.contains("poison-faults") {
        at(&w.poison_faults)
    } else {
        at(&w.initial_backoff).or(at(&w.max_backoff))
    };
    c.refused(message, key, r.at);
}

/// Most samples a forecast's season may hold: the forecaster keeps one seasonal index per
/// sample of its season.
const MAX_SEASON_SAMPLES: usize = 100_000;

fn autoscale(
    a: &Located<file::Autoscale>,
    base: &RuntimeSettings,
    s: &mut RuntimeSettings,
    c: &mut Checker<'_>,
) {
    let w = &a.value;
    let o = &mut s.autoscale;
    let before = c.problems.len();
    c.wait(&w.every, false, &mut o.every);
    c.wait(&w.horizon, false, &mut o.horizon);
    let every_read = c.problems.len() == before;
    let show = |d: Duration| humantime::format_duration(d).to_string();
    // The season is counted in looks: a new `every` over a season from below keeps the
    // season's length, not its count of looks.
    let season = match &w.season {
        Some(v) => c.duration(v, false).map(|d| (d, Some(v.at))),
        None if base.autoscale.forecast.season > 1 => Some((
            base.autoscale.every * base.autoscale.forecast.season as u32,
            None,
        )),
        None => None,
    };
    if let (Some((season, written)), true) = (season, every_read) {
        let samples = (season.as_secs_f64() / o.every.as_secs_f64()).round();
        let at = written.unwrap_or(a.at);
        if season < o.every {
            c.problem(
                at,
                format!(
                    "season {} is shorter than the autoscaler's period {}",
                    show(season),
                    show(o.every)
                ),
                "shorter than every",
            );
        } else if samples > MAX_SEASON_SAMPLES as f64 {
            c.problem(
                at,
                format!(
                    "season {} is {samples} looks of the autoscaler (every {}): allowed up to \
                     {MAX_SEASON_SAMPLES}; lengthen `every` or shorten the season",
                    show(season),
                    show(o.every)
                ),
                "too many samples",
            );
        } else {
            o.forecast.season = samples as usize;
        }
    }
    if c.problems.len() == before
        && let Err(e) = o.validate()
    {
        c.problem(a.at, e.to_string(), "autoscale");
    }
}

fn breaker(b: &Located<file::Breaker>, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let w = match &b.value {
        file::Breaker::Off => {
            s.breaker = None;
            return;
        }
        file::Breaker::On(w) => w,
    };
    // Settings over `off` turn the breaker on, from its defaults.
    let mut o = s.breaker.unwrap_or_default();
    let before = c.problems.len();
    c.number("breaker error-rate", &w.error_rate, &mut o.error_rate);
    c.wait(&w.open_for, false, &mut o.open_for);
    c.wait(&w.max_open_for, false, &mut o.max_open_for);
    if let Some(p) = &w.probation {
        o.probation = p.value;
    }
    s.breaker = Some(o);
    if c.problems.len() > before {
        return;
    }
    let Err(e) = o.validate() else { return };
    use colony_core::breaker::Error;
    let key = match e {
        Error::ErrorRate { .. } => at(&w.error_rate),
        Error::OpenFor { .. } => at(&w.open_for),
        Error::MaxOpenFor { .. } => at(&w.max_open_for).or(at(&w.open_for)),
        Error::Probation { .. } => at(&w.probation),
    };
    c.problem(key.unwrap_or(b.at), e.to_string(), "breaker");
}

/// The keys `section` writes (of [`KEYS`]) and where each is written.
pub fn written(section: &file::Runtime) -> Vec<(&'static str, Where)> {
    let mut out = Vec::new();
    let mut put = |key: &'static str, at: Option<Where>| {
        if let Some(at) = at {
            out.push((key, at));
        }
    };
    put("span", at(&section.span));
    put("tiers", at(&section.tiers));
    put("strategy", at(&section.strategy));
    if let Some(w) = &section.weights {
        put("weights.load", at(&w.value.load));
        put("weights.latency", at(&w.value.latency));
        put("weights.affinity", at(&w.value.affinity));
    }
    put("queue-capacity", at(&section.queue_capacity));
    put("steal-at", at(&section.steal_at));
    if let Some(r) = &section.rebalance {
        put("rebalance.every", at(&r.value.every));
        put("rebalance.tolerance", at(&r.value.tolerance));
    }
    if let Some(h) = &section.health {
        let h = &h.value;
        put("health.degraded-after", at(&h.degraded_after));
        put("health.critical-after", at(&h.critical_after));
        put("health.failed-after", at(&h.failed_after));
        put("health.heartbeat", at(&h.heartbeat));
        put("health.alpha", at(&h.alpha));
        put("health.baseline-alpha", at(&h.baseline_alpha));
        put("health.alert-rise", at(&h.alert_rise));
    }
    if let Some(v) = &section.supervision {
        let v = &v.value;
        put("supervision.strategy", at(&v.strategy));
        put("supervision.restart", at(&v.restart));
        put("supervision.max-restarts", at(&v.max_restarts));
        put("supervision.period", at(&v.period));
        put("supervision.initial-backoff", at(&v.initial_backoff));
        put("supervision.max-backoff", at(&v.max_backoff));
        put("supervision.multiplier", at(&v.multiplier));
        put("supervision.jitter", at(&v.jitter));
        put("supervision.tiers", at(&v.tiers));
    }
    if let Some(r) = &section.retry {
        let r = &r.value;
        put("retry.initial-backoff", at(&r.initial_backoff));
        put("retry.max-backoff", at(&r.max_backoff));
        put("retry.jitter", at(&r.jitter));
        put("retry.poison-faults", at(&r.poison_faults));
    }
    put("seed", at(&section.seed));
    if let Some(a) = &section.autoscale {
        put("autoscale.every", at(&a.value.every));
        put("autoscale.horizon", at(&a.value.horizon));
        put("autoscale.season", at(&a.value.season));
    }
    if let Some(b) = &section.breaker {
        match &b.value {
            file::Breaker::Off => put("breaker", Some(b.at)),
            file::Breaker::On(w) => {
                put("breaker.error-rate", at(&w.error_rate));
                put("breaker.open-for", at(&w.open_for));
                put("breaker.max-open-for", at(&w.max_open_for));
                put("breaker.probation", at(&w.probation));
            }
        }
    }
    if let Some(m) = &section.messages {
        put("messages.capacity", at(&m.value.capacity));
        put("messages.batch", at(&m.value.batch));
        put("messages.max-body", at(&m.value.max_body));
    }
    out
}

/// The message bus's sizes, checked by the bus's own rules.
fn messages(m: &Located<file::Messages>, s: &mut RuntimeSettings, c: &mut Checker<'_>) {
    let w = &m.value;
    let o = &mut s.messages;
    let size = |v: &Option<Located<u64>>, into: &mut usize| {
        if let Some(v) = v {
            *into = usize::try_from(v.value).unwrap_or(usize::MAX);
        }
    };
    size(&w.capacity, &mut o.capacity);
    size(&w.batch, &mut o.batch);
    size(&w.max_body, &mut o.max_body);
    if let Err(e) = o.validate() {
        let message = e.to_string();
        let key = if message.contains("capacity") {
            at(&w.capacity)
        } else if message.contains("batch") {
            at(&w.batch)
        } else {
            at(&w.max_body)
        };
        c.refused(message, key, m.at);
    }
}

/// A unit variant as the file writes it: `OneForOne` is `one-for-one`.
fn kebab(v: &dyn std::fmt::Debug) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{v:?}").chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

impl RuntimeSettings {
    /// `supervision.tiers` as one line: each tier's keys that differ from everyone's, or
    /// `none`.
    fn tier_overrides(&self) -> String {
        if self.supervision_tiers.is_empty() {
            return "none".into();
        }
        let d = |d: Duration| humantime::format_duration(d).to_string();
        self.supervision_tiers
            .iter()
            .map(|(name, o)| {
                let mut keys = Vec::new();
                if let Some(v) = o.strategy {
                    keys.push(format!("strategy {}", kebab(&v)));
                }
                if let Some(v) = o.restart {
                    keys.push(format!("restart {}", kebab(&v)));
                }
                if let Some(v) = o.max_restarts {
                    keys.push(format!("max-restarts {v}"));
                }
                for (key, v) in [
                    ("period", o.period),
                    ("initial-backoff", o.initial_backoff),
                    ("max-backoff", o.max_backoff),
                ] {
                    if let Some(v) = v {
                        keys.push(format!("{key} {}", d(v)));
                    }
                }
                for (key, v) in [("multiplier", o.multiplier), ("jitter", o.jitter)] {
                    if let Some(v) = v {
                        keys.push(format!("{key} {v}"));
                    }
                }
                format!("{name}: {}", keys.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every key of [`KEYS`] with its value, as the file would write it. With the breaker
    /// off, `breaker` is `off` and its other keys are left out; with it on, `breaker` is `on`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let n = |x: f64| x.to_string();
        let (strategy, weights) = match self.strategy {
            Strategy::LeastLoaded => ("least-loaded", Weights::default()),
            Strategy::RoundRobin => ("round-robin", Weights::default()),
            Strategy::Random => ("random", Weights::default()),
            Strategy::Weighted(w) => ("weighted", w),
        };
        let a = &self.autoscale;
        let season = if a.forecast.season > 1 {
            d(a.every * a.forecast.season as u32)
        } else {
            "none".into()
        };
        let (h, v, r) = (&self.health, &self.supervision, &self.retry);
        let mut out = vec![
            ("span", self.span.to_string()),
            (
                "tiers",
                match &self.tiers {
                    hierarchy::Tiers::Auto => "auto".into(),
                    hierarchy::Tiers::Named(names) => names.join(","),
                },
            ),
            ("strategy", strategy.into()),
            ("weights.load", n(f64::from(weights.load))),
            ("weights.latency", n(f64::from(weights.latency))),
            ("weights.affinity", n(f64::from(weights.affinity))),
            ("queue-capacity", self.queue_capacity.to_string()),
            ("steal-at", self.steal_at.to_string()),
            ("rebalance.every", d(self.rebalance.every)),
            ("rebalance.tolerance", n(self.rebalance.tolerance)),
            ("health.degraded-after", d(h.degraded_after)),
            ("health.critical-after", d(h.critical_after)),
            ("health.failed-after", d(h.failed_after)),
            ("health.heartbeat", d(h.heartbeat)),
            ("health.alpha", n(h.alpha)),
            ("health.baseline-alpha", n(h.baseline_alpha)),
            ("health.alert-rise", n(h.alert_rise)),
            ("supervision.strategy", kebab(&v.strategy)),
            ("supervision.restart", kebab(&v.restart)),
            ("supervision.max-restarts", v.max_restarts.to_string()),
            ("supervision.period", d(v.period)),
            ("supervision.initial-backoff", d(v.initial_backoff)),
            ("supervision.max-backoff", d(v.max_backoff)),
            ("supervision.multiplier", n(v.multiplier)),
            ("supervision.jitter", n(v.jitter)),
            ("supervision.tiers", self.tier_overrides()),
            ("retry.initial-backoff", d(r.initial_backoff)),
            ("retry.max-backoff", d(r.max_backoff)),
            ("retry.jitter", n(r.jitter)),
            ("retry.poison-faults", r.poison_faults.to_string()),
            ("seed", self.seed.to_string()),
            ("autoscale.every", d(a.every)),
            ("autoscale.horizon", d(a.horizon)),
            ("autoscale.season", season),
        ];
        match self.breaker {
            None => out.push(("breaker", "off".into())),
            Some(BreakerOptions {
                error_rate,
                open_for,
                max_open_for,
                probation,
            }) => out.extend([
                ("breaker", "on".into()),
                ("breaker.error-rate", n(error_rate)),
                ("breaker.open-for", d(open_for)),
                ("breaker.max-open-for", d(max_open_for)),
                ("breaker.probation", probation.to_string()),
            ]),
        }
        out.extend([
            ("messages.capacity", self.messages.capacity.to_string()),
            ("messages.batch", self.messages.batch.to_string()),
            ("messages.max-body", self.messages.max_body.to_string()),
        ]);
        out
    }
}
