//! The file's `runtime:` section: the autoscaler's timing and the workers' circuit breakers,
//! read over the runtime's defaults, refused with line and column when they make no sense,
//! and carried by both `colony run` and `colony serve --pools` files.

use colony_core::{breaker::BreakerOptions, forecast::ForecastOptions};
use colony_runtime::{AutoscaleOptions, RuntimeOptions};
use colony_workflow::{RuntimeSettings, parse};
use std::{path::Path, time::Duration};

mod common;
use common::problems;

const HEAD: &str = "name: w\nagents: [{name: a, kind: sim}]\ntasks: [{id: t}]\n";

/// The settings of a workflow whose file ends with `runtime` (written from column 1).
fn settings(runtime: &str) -> RuntimeSettings {
    let yaml = format!("{HEAD}{runtime}");
    parse(&yaml, "w.yaml", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .runtime
}

#[test]
fn a_full_section_is_read_into_its_options() {
    let got = settings(
        "runtime:
  autoscale:
    every: 10s
    horizon: 10m
    season: 1h
  breaker:
    error-rate: 0.25
    open-for: 2s
    max-open-for: 30s
    probation: 5
",
    );
    let secs = Duration::from_secs;
    assert_eq!(
        got,
        RuntimeSettings {
            autoscale: AutoscaleOptions {
                every: secs(10),
                horizon: secs(600),
                forecast: ForecastOptions {
                    season: 360,
                    ..ForecastOptions::default()
                },
            },
            breaker: Some(BreakerOptions {
                error_rate: 0.25,
                open_for: secs(2),
                max_open_for: secs(30),
                probation: 5,
            }),
            ..RuntimeSettings::default()
        }
    );
}

#[test]
fn absent_keys_take_the_runtimes_defaults() {
    let defaults = RuntimeOptions::default();
    for runtime in [
        "",
        "runtime: {}\n",
        "runtime: {autoscale: {}, breaker: {}}\n",
    ] {
        let got = settings(runtime);
        assert_eq!(got, RuntimeSettings::default(), "{runtime:?}");
        assert_eq!(got.autoscale, defaults.autoscale);
        assert_eq!(got.breaker, defaults.breaker);
        assert!(got.breaker.is_some());
    }
    // One key leaves the others at their defaults; a season rounds to whole looks.
    let got =
        settings("runtime:\n  autoscale: {every: 7s, season: 1m}\n  breaker: {probation: 1}\n");
    assert_eq!(got.autoscale.every, Duration::from_secs(7));
    assert_eq!(got.autoscale.horizon, AutoscaleOptions::default().horizon);
    assert_eq!(got.autoscale.forecast.season, 9);
    assert_eq!(
        got.breaker,
        Some(BreakerOptions {
            probation: 1,
            ..BreakerOptions::default()
        })
    );
}

#[test]
fn breaker_off_makes_health_only_observe() {
    for off in ["breaker: off", "breaker: 'off'", "breaker: false"] {
        let got = settings(&format!("runtime:\n  {off}\n"));
        assert_eq!(got.breaker, None, "{off}");
        assert_eq!(got.autoscale, AutoscaleOptions::default());
    }
    let p = problems(&format!("{HEAD}runtime:\n  breaker: on\n"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with("w.yaml:5:3: "), "{p:?}");
    assert!(p[0].contains("`off` or a map of breaker settings"), "{p:?}");
}

#[test]
fn settings_the_runtime_refuses_are_problems_with_line_and_column() {
    let p = problems(&format!("{HEAD}runtime:\n  autoscale:\n    every: 0s\n"));
    assert_eq!(p, ["w.yaml:6:12: a duration of 0 is not allowed"]);

    let p = problems(&format!(
        "{HEAD}runtime:\n  autoscale:\n    every: 5s\n    season: 2s\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:7:13: season 2s is shorter than the autoscaler's period 5s"]
    );

    let p = problems(&format!(
        "{HEAD}runtime:\n  autoscale:\n    every: 10ms\n    season: 1d\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:7:13: season 1day is 8640000 looks of the autoscaler"),
        "{p:?}"
    );
    assert!(p[0].contains("allowed up to 100000"), "{p:?}");

    // What `AutoscaleOptions::validate` refuses points at the section.
    let p = problems(&format!(
        "{HEAD}runtime:\n  autoscale:\n    every: 1m\n    horizon: 30s\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:6:5: autoscale horizon 30s is shorter than its period 60s"]
    );

    // What `BreakerOptions::validate` refuses points at the key.
    let p = problems(&format!(
        "{HEAD}runtime:\n  breaker:\n    open-for: 5s\n    error-rate: 1.5\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:7:17: breaker error-rate 1.5 is out of range"),
        "{p:?}"
    );

    let p = problems(&format!(
        "{HEAD}runtime:\n  breaker:\n    open-for: 5s\n    max-open-for: 1s\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:7:19: breaker max-open-for 1s is out of range"),
        "{p:?}"
    );
}

#[test]
fn misspelt_keys_are_refused() {
    for (runtime, at, key) in [
        ("runtime:\n  autoscal: {}\n", "w.yaml:5:3: ", "autoscal"),
        (
            "runtime:\n  autoscale:\n    evry: 5s\n",
            "w.yaml:6:5: ",
            "evry",
        ),
        (
            "runtime:\n  breaker:\n    error_rate: 0.5\n",
            "w.yaml:6:5: ",
            "error_rate",
        ),
    ] {
        let p = problems(&format!("{HEAD}{runtime}"));
        assert!(!p.is_empty(), "{runtime}");
        assert!(
            p[0].starts_with(&format!("{at}unknown field `{key}`")),
            "{runtime}: {p:?}"
        );
    }
}

#[test]
fn a_pools_file_carries_its_runtime_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pools.yaml");
    std::fs::write(
        &path,
        "name: pools
agents:
  - name: planner
    kind: sim
    scaling: {min: 1, max: 4}
runtime:
  autoscale: {every: 2s, horizon: 1m}
  breaker: off
",
    )
    .unwrap();
    let pools = colony_workflow::load_pools(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pools.len(), 1);
    assert_eq!(
        pools.runtime,
        RuntimeSettings {
            autoscale: AutoscaleOptions {
                every: Duration::from_secs(2),
                horizon: Duration::from_secs(60),
                forecast: ForecastOptions::default(),
            },
            breaker: None,
            ..RuntimeSettings::default()
        }
    );
    let mut options = RuntimeOptions::default();
    pools.runtime.apply(&mut options);
    assert_eq!(options.autoscale.every, Duration::from_secs(2));
    assert_eq!(options.breaker, None);
    assert_eq!(options.span, RuntimeOptions::default().span);
}

#[test]
fn the_schema_takes_the_section_and_refuses_misspelt_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/workflow.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let json = |runtime: &str| -> serde_json::Value {
        serde_saphyr::from_str(&format!("{HEAD}{runtime}")).unwrap()
    };
    for good in [
        "runtime:\n  autoscale: {every: 5s, horizon: 5m, season: 1d}\n  breaker: {error-rate: 0.5, open-for: 5s, max-open-for: 60s, probation: 3}\n",
        "runtime:\n  breaker: off\n",
        "runtime: {}\n",
        "runtime:\n  span: 24\n  tiers: [a, b, c]\n  strategy: weighted\n  weights: {load: 2, latency: 0.1, affinity: 0}\n  queue-capacity: 512\n  steal-at: 4\n  rebalance: {every: 0s, tolerance: 0.5}\n  health: {degraded-after: 1s, critical-after: 3s, failed-after: 20s, heartbeat: 250ms, alpha: 0.5, baseline-alpha: 0.05, alert-rise: 1.5}\n  supervision: {strategy: rest-for-one, restart: transient, max-restarts: 10, period: 30s, initial-backoff: 0s, max-backoff: 2s, multiplier: 3, jitter: 0}\n  retry: {initial-backoff: 0s, max-backoff: 5s, jitter: 0.1, poison-faults: 5}\n  seed: 42\n",
        "runtime: {tiers: auto}\n",
    ] {
        let errors: Vec<String> = validator
            .iter_errors(&json(good))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{good}: {errors:#?}");
        settings(good);
    }
    for bad in [
        "runtime:\n  autoscale: {evry: 5s}\n",
        "runtime:\n  breaker: {error_rate: 0.5}\n",
        "runtime:\n  breaker: on\n",
        "runtime:\n  autoscal: {}\n",
        "runtime:\n  span: 1\n",
        "runtime:\n  strategy: fastest\n",
        "runtime:\n  supervision: {restart: sometimes}\n",
        "runtime:\n  health: {heartbeat_: 1s}\n",
    ] {
        assert!(!validator.is_valid(&json(bad)), "{bad}");
    }
}

#[test]
fn toml_writes_breaker_off_as_a_string_or_false() {
    for off in ["\"off\"", "false"] {
        let toml = format!(
            "name = \"w\"\n[[agents]]\nname = \"a\"\nkind = \"sim\"\n[[tasks]]\nid = \"t\"\n\
             [runtime]\nbreaker = {off}\n[runtime.autoscale]\nevery = \"10s\"\nseason = \"1h\"\n"
        );
        let w = colony_workflow::parse_toml(&toml, "w.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(w.runtime.breaker, None, "{off}");
        assert_eq!(w.runtime.autoscale.forecast.season, 360);
    }
}

#[test]
fn every_runtime_option_is_read() {
    use colony_core::{
        hierarchy::Tiers,
        routing::{Strategy, Weights},
        supervision::{RestartPolicy, Strategy as Supervision},
    };
    let got = settings(
        "runtime:
  span: 24
  tiers: [top, middle, bottom]
  strategy: weighted
  weights: {load: 2, latency: 0.1, affinity: 0}
  queue-capacity: 512
  steal-at: 4
  rebalance: {every: 0s, tolerance: 0.5}
  health:
    degraded-after: 1s
    critical-after: 3s
    failed-after: 20s
    heartbeat: 250ms
    alpha: 0.5
    baseline-alpha: 0.05
    alert-rise: 1.5
  supervision:
    strategy: rest-for-one
    restart: transient
    max-restarts: 10
    period: 30s
    initial-backoff: 0s
    max-backoff: 2s
    multiplier: 3
    jitter: 0
  retry: {initial-backoff: 0s, max-backoff: 5s, jitter: 0.1, poison-faults: 5}
  seed: 42
",
    );
    let ms = Duration::from_millis;
    assert_eq!(got.span, 24);
    assert_eq!(
        got.tiers,
        Tiers::Named(vec!["top".into(), "middle".into(), "bottom".into()])
    );
    assert_eq!(
        got.strategy,
        Strategy::Weighted(Weights {
            load: 2.0,
            latency: 0.1,
            affinity: 0.0
        })
    );
    assert_eq!((got.queue_capacity, got.steal_at, got.seed), (512, 4, 42));
    assert_eq!(got.rebalance.every, Duration::ZERO);
    assert_eq!(got.rebalance.tolerance, 0.5);
    let h = got.health;
    assert_eq!(
        (
            h.degraded_after,
            h.critical_after,
            h.failed_after,
            h.heartbeat
        ),
        (ms(1000), ms(3000), ms(20_000), ms(250))
    );
    assert_eq!((h.alpha, h.baseline_alpha, h.alert_rise), (0.5, 0.05, 1.5));
    let s = got.supervision;
    assert_eq!(s.strategy, Supervision::RestForOne);
    assert_eq!(s.restart, RestartPolicy::Transient);
    assert_eq!((s.max_restarts, s.period), (10, ms(30_000)));
    assert_eq!((s.initial_backoff, s.max_backoff), (ms(0), ms(2000)));
    assert_eq!((s.multiplier, s.jitter), (3.0, 0.0));
    let r = got.retry;
    assert_eq!((r.initial_backoff, r.max_backoff), (ms(0), ms(5000)));
    assert_eq!((r.jitter, r.poison_faults), (0.1, 5));
    // Applied, every one reaches the runtime's options.
    let mut options = RuntimeOptions::default();
    got.apply(&mut options);
    assert_eq!(RuntimeSettings::of(&options), got);
    assert_eq!(options.seed, 42);

    // Tiers as one string, or `auto`.
    assert_eq!(
        settings("runtime: {tiers: 'a, b'}\n").tiers,
        Tiers::Named(vec!["a".into(), "b".into()])
    );
    assert_eq!(settings("runtime: {tiers: auto}\n").tiers, Tiers::Auto);
}

#[test]
fn out_of_range_options_name_the_key_and_where_it_is() {
    let mut wrong = Vec::new();
    for (runtime, want) in [
        (
            "  span: 1\n",
            "w.yaml:5:9: span of control 1 is out of range: allowed 2..=10000",
        ),
        ("  tiers: [only]\n", "w.yaml:5:10: 1 tier name(s) given"),
        (
            "  tiers: [a, a]\n",
            "w.yaml:5:10: tier name `a` appears more than once",
        ),
        (
            "  strategy: fastest\n",
            "w.yaml:5:13: unknown variant `fastest`",
        ),
        (
            "  weights: {load: 1}\n",
            "w.yaml:5:12: `weights` are the `weighted` strategy's",
        ),
        (
            "  strategy: weighted\n  weights: {load: -1}\n",
            "w.yaml:6:19: weights load -1 is out of range: allowed 0.0..=1000",
        ),
        (
            "  queue-capacity: 0\n",
            "w.yaml:5:19: queue capacity 0 is out of range: allowed 1..=1000000",
        ),
        (
            "  steal-at: 0\n",
            "w.yaml:5:13: steal-at 0 is out of range: allowed 1..=1000000",
        ),
        (
            "  rebalance: {tolerance: 2}\n",
            "w.yaml:5:26: rebalance tolerance 2 is out of range",
        ),
        (
            "  rebalance: {every: soon}\n",
            "w.yaml:5:22: `soon` is not a duration",
        ),
        (
            "  health: {degraded-after: 9s}\n",
            "w.yaml:5:28: health thresholds must rise",
        ),
        (
            "  health: {heartbeat: 0s}\n",
            "w.yaml:5:23: a duration of 0 is not allowed",
        ),
        (
            "  health: {alpha: .nan}\n",
            "w.yaml:5:19: health alpha NaN is not a finite number",
        ),
        (
            "  health: {heartbeat: 11s}\n",
            "w.yaml:5:23: health heartbeat 11s is out of range",
        ),
        (
            "  supervision: {max-restarts: 0}\n",
            "w.yaml:5:31: supervision max-restarts 0 is out of range",
        ),
        (
            "  supervision: {period: 2d}\n",
            "w.yaml:5:25: supervision period 172800s is out of range",
        ),
        (
            "  supervision: {restart: sometimes}\n",
            "w.yaml:5:26: unknown variant `sometimes`",
        ),
        (
            "  supervision: {initial-backoff: 2s}\n",
            "w.yaml:5:34: supervision initial-backoff 2s exceeds max-backoff 1s",
        ),
        (
            "  retry: {jitter: 1.5}\n",
            "w.yaml:5:19: retry jitter 1.5 is out of range",
        ),
        (
            "  retry: {poison-faults: 0}\n",
            "w.yaml:5:26: retry poison-faults 0 is out of range",
        ),
        (
            "  retry: {max-backoff: 1ms}\n",
            "w.yaml:5:24: retry initial-backoff 10ms exceeds max-backoff 1ms",
        ),
        (
            "  retry: {max-backoff: 400y}\n",
            "w.yaml:5:24: `400y` is out of range: allowed up to 365 days",
        ),
        (
            "  seed: -1\n",
            "w.yaml:5:9: `seed` is -1: allowed a whole number in 0..=18446744073709551615",
        ),
        ("  spam: 1\n", "w.yaml:5:3: unknown field `spam`"),
    ] {
        let p = problems(&format!("{HEAD}runtime:\n{runtime}"));
        if p.len() != 1 || !p[0].starts_with(want) {
            wrong.push(format!("{runtime}: {p:?}\n  wanted {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The `[runtime]` table of `colony.toml` is the same section read from TOML: its values
/// carry byte offsets, which problems turn into lines and columns of the TOML text.
#[test]
fn the_section_reads_from_toml_with_lines_and_columns() {
    #[derive(serde::Deserialize)]
    struct Doc {
        runtime: colony_workflow::file::Runtime,
    }
    let text = "[runtime]\nspan = 6\nstrategy = \"round-robin\"\n[runtime.health]\nheartbeat = \"250ms\"\n";
    let doc: Doc = toml::from_str(text).unwrap();
    let got = RuntimeSettings::default()
        .layer(&doc.runtime, text)
        .unwrap();
    assert_eq!(got.span, 6);
    assert_eq!(got.strategy, colony_core::routing::Strategy::RoundRobin);
    assert_eq!(got.health.heartbeat, Duration::from_millis(250));
    let written: Vec<_> = colony_workflow::runtime::written(&doc.runtime)
        .into_iter()
        .map(|(k, at)| (k, at.position(text).unwrap().line))
        .collect();
    assert_eq!(
        written,
        [("span", 2), ("strategy", 3), ("health.heartbeat", 5)]
    );

    let text = "[runtime]\nseed = 1\n[runtime.supervision]\nmax-restarts = 0\n";
    let doc: Doc = toml::from_str(text).unwrap();
    let p = RuntimeSettings::default()
        .layer(&doc.runtime, text)
        .unwrap_err();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].at.unwrap().line, p[0].at.unwrap().column),
        (4, 16),
        "{p:?}"
    );
    assert!(
        p[0].message.contains("max-restarts 0 is out of range"),
        "{p:?}"
    );

    // A layer over another: the heartbeat below stays, the new failed-after must exceed it.
    let lower = settings("runtime: {health: {heartbeat: 5s}}\n");
    let text = "[runtime.health]\nfailed-after = \"4s\"\ndegraded-after = \"1s\"\ncritical-after = \"2s\"\n";
    let doc: Doc = toml::from_str(text).unwrap();
    let p = lower.layer(&doc.runtime, text).unwrap_err();
    assert!(
        p[0].message.contains("heartbeat 5s is out of range"),
        "{p:?}"
    );
    assert_eq!(p[0].at.unwrap().line, 2, "{p:?}");
}

#[test]
fn every_key_is_listed_with_its_value() {
    let keys: Vec<&str> = RuntimeSettings::default()
        .entries()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, colony_workflow::runtime::KEYS);
    let off = settings("runtime: {breaker: off}\n").entries();
    assert!(off.contains(&("breaker", "off".to_string())), "{off:?}");
    assert!(!off.iter().any(|(k, _)| k.starts_with("breaker.")));
}

#[test]
fn a_tier_supervises_with_its_own_keys_over_everyones() {
    let got = settings(
        "runtime:
  tiers: [coordinator, supervisor, worker]
  supervision:
    max-restarts: 5
    tiers:
      coordinator: {max-restarts: 20, period: 1m, strategy: one-for-all}
",
    );
    let coordinator = got.supervision_tiers["coordinator"];
    assert_eq!(coordinator.max_restarts, Some(20));
    assert_eq!(coordinator.period, Some(Duration::from_secs(60)));
    assert_eq!(coordinator.jitter, None, "not written: everyone's");
    let resolved = coordinator.over(got.supervision);
    assert_eq!(resolved.max_restarts, 20);
    assert_eq!(
        resolved.strategy,
        colony_core::supervision::Strategy::OneForAll
    );
    assert_eq!(got.supervision.max_restarts, 5, "everyone's");
    // The runtime receives them.
    let mut options = RuntimeOptions::default();
    got.apply(&mut options);
    assert_eq!(options.supervision_tiers, got.supervision_tiers);
    let shown = got
        .entries()
        .into_iter()
        .find(|(k, _)| *k == "supervision.tiers")
        .unwrap()
        .1;
    assert_eq!(
        shown,
        "coordinator: strategy one-for-all, max-restarts 20, period 1m"
    );
    // A later layer changes one key of a tier and keeps the rest.
    #[derive(serde::Deserialize)]
    struct Doc {
        runtime: colony_workflow::file::Runtime,
    }
    let text = "[runtime.supervision.tiers.coordinator]\nmax-restarts = 30\n";
    let doc: Doc = toml::from_str(text).unwrap();
    let over = got.layer(&doc.runtime, text).unwrap();
    let coordinator = over.supervision_tiers["coordinator"];
    assert_eq!(coordinator.max_restarts, Some(30));
    assert_eq!(coordinator.period, Some(Duration::from_secs(60)));
}

#[test]
fn a_tier_override_names_a_managing_tier_once_and_stays_in_range() {
    let tiers = "  tiers: [coordinator, supervisor, worker]\n";
    let p = problems(&format!(
        "{HEAD}runtime:\n{tiers}  supervision:\n    tiers:\n      worker: {{max-restarts: 2}}\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:8:15: supervision of tier `worker`: no managing tier")
            && p[0].contains("coordinator, supervisor"),
        "{p:?}"
    );
    let p = problems(&format!(
        "{HEAD}runtime:\n{tiers}  supervision:\n    tiers:\n      supervisor: {{tiers: {{}}}}\n"
    ));
    assert!(p[0].contains("has `tiers` again"), "{p:?}");
    let p = problems(&format!(
        "{HEAD}runtime:\n{tiers}  supervision:\n    tiers:\n      supervisor: {{max-restarts: 0}}\n"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:8:19: tier `supervisor`: supervision max-restarts 0"),
        "{p:?}"
    );
}

#[test]
fn the_message_bus_is_sized_by_the_section_and_refused_out_of_range() {
    let got = settings("runtime:\n  messages: { capacity: 4096, batch: 512, max-body: 65536 }\n");
    let mut options = RuntimeOptions::default();
    got.apply(&mut options);
    assert_eq!(
        (
            options.messages.capacity,
            options.messages.batch,
            options.messages.max_body
        ),
        (4096, 512, 65536)
    );
    // Absent keys keep the bus's defaults.
    let only = settings("runtime:\n  messages: { batch: 8 }\n");
    assert_eq!(
        only.messages.capacity,
        RuntimeOptions::default().messages.capacity
    );
    assert_eq!(only.messages.batch, 8);
    // A batch past the capacity, a capacity of 0: refused at the key, with the range.
    let p = problems(&format!(
        "{HEAD}runtime:\n  messages:\n    capacity: 16\n    batch: 32\n"
    ));
    assert_eq!(
        p,
        ["w.yaml:7:12: messages batch 32 is out of range: allowed 1..=16"],
        "{p:#?}"
    );
    let p = problems(&format!("{HEAD}runtime:\n  messages: {{ capacity: 0 }}\n"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("messages capacity 0 is out of range"),
        "{p:#?}"
    );
}
