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
