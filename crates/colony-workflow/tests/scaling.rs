//! A pool's `scaling:` section: read into the autoscaler's options with the defaults for what
//! is left out, refused with line and column when it makes no sense, and carried into the run.

use colony_core::scaling::{Policy, ScalingOptions};
use colony_journal::MemoryJournal;
use colony_runtime::RuntimeOptions;
use colony_workflow::{Options, Report, parse};
use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

mod common;
use common::problems;

/// The scaling of the only pool of a workflow whose pool has `pool` (indented under `- `).
fn scaling_of(pool: &str) -> Option<ScalingOptions> {
    let yaml =
        format!("name: w\nagents:\n  - name: coder\n    kind: sim\n{pool}tasks: [{{id: a}}]\n");
    let w = parse(&yaml, "w.yaml", Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    w.pools[0].scaling
}

#[test]
fn a_full_scaling_block_is_read_into_its_options() {
    let got = scaling_of(
        "    count: 2
    scaling:
      min: 1
      max: 20
      predictive: true
      high-utilisation: 0.75
      low-utilisation: 0.25
      overload-wait: 7s
      idle-after: 5m
      max-forecast-error: 0.15
      reactive:  { factor: 1.6, max-scale: 2.5, cooldown: 45s }
      cost:      { factor: 0.8, min-scale: 0.5, cooldown: 2m }
      emergency: { factor: 2.5, max-scale: 4.0, min-scale: 0.9, cooldown: 15s }
      predictive-policy: { factor: 1.2, max-scale: 1.5, cooldown: 20s }
",
    );
    let secs = Duration::from_secs;
    assert_eq!(
        got,
        Some(ScalingOptions {
            min: 1,
            max: 20,
            reactive: Policy {
                factor: 1.6,
                max_scale: 2.5,
                min_scale: 1.0,
                cooldown: secs(45),
            },
            predictive: Some(Policy {
                factor: 1.2,
                max_scale: 1.5,
                min_scale: 1.0,
                cooldown: secs(20),
            }),
            cost: Policy {
                factor: 0.8,
                max_scale: 1.0,
                min_scale: 0.5,
                cooldown: secs(120),
            },
            emergency: Policy {
                factor: 2.5,
                max_scale: 4.0,
                min_scale: 0.9,
                cooldown: secs(15),
            },
            high_utilisation: 0.75,
            low_utilisation: 0.25,
            overload_wait: secs(7),
            idle_after: secs(300),
            max_forecast_error: 0.15,
        })
    );
}

#[test]
fn what_is_left_out_takes_the_defaults() {
    assert_eq!(
        scaling_of("    scaling: {max: 50}\n"),
        Some(ScalingOptions {
            max: 50,
            ..ScalingOptions::default()
        })
    );
    // A policy written in part keeps its preset for the rest.
    assert_eq!(
        scaling_of("    scaling: {reactive: {cooldown: 1s}}\n"),
        Some(ScalingOptions {
            reactive: Policy {
                cooldown: Duration::from_secs(1),
                ..Policy::REACTIVE
            },
            ..ScalingOptions::default()
        })
    );
    assert_eq!(
        scaling_of("    scaling: {predictive: false}\n"),
        Some(ScalingOptions {
            predictive: None,
            ..ScalingOptions::default()
        })
    );
    // Without the section, people size the pool.
    assert_eq!(scaling_of("    count: 3\n"), None);
}

#[test]
fn bad_scaling_values_are_refused_at_their_line_and_column() {
    let pool = |lines: &str| {
        problems(&format!(
            "name: w\nagents:\n  - name: coder\n    kind: sim\n    scaling:\n{lines}tasks: [{{id: a}}]\n"
        ))
    };
    assert_eq!(
        pool("      min: 5\n      max: 2\n"),
        ["w.yaml:6:12: pool `coder`: scaling min 5 is out of range: allowed 0 up to max (2)"]
    );
    assert_eq!(
        pool("      reactive: {factor: 0.5}\n"),
        [
            "w.yaml:6:26: pool `coder`: scaling reactive.factor 0.5 is out of range: allowed above 1.0 and up to 100.0"
        ]
    );
    assert_eq!(
        pool("      cost: {factor: 1.5}\n"),
        [
            "w.yaml:6:22: pool `coder`: scaling cost.factor 1.5 is out of range: allowed above 0.0 and below 1.0"
        ]
    );
    // The file's name for the predictive policy's steps.
    assert_eq!(
        pool("      predictive-policy: {max-scale: 0.5}\n"),
        [
            "w.yaml:6:38: pool `coder`: scaling predictive-policy.max-scale 0.5 is out of range: allowed 1.0 up to 1000.0"
        ]
    );
    assert_eq!(
        pool("      idle-after: 0s\n"),
        ["w.yaml:6:19: a duration of 0 is not allowed"]
    );
    assert_eq!(
        pool("      emergency: {cooldown: soon}\n"),
        [
            "w.yaml:6:29: `soon` is not a duration (expected number at 0): write it like `30s`, `5m` or `1h 30m`"
        ]
    );
    // A duration past a year would overflow the autoscaler's clock arithmetic.
    assert_eq!(
        pool("      emergency: {cooldown: 18446744073709551615s}\n"),
        ["w.yaml:6:29: `18446744073709551615s` is out of range: allowed up to 365 days"]
    );
    assert_eq!(
        pool("      max-forecast-error: .nan\n"),
        [
            "w.yaml:6:27: pool `coder`: scaling max-forecast-error NaN is out of range: allowed 0.0 and up, finite"
        ]
    );
    assert_eq!(
        pool("      max: 2000000\n"),
        [
            "w.yaml:6:12: pool `coder`: scaling max 2000000 is out of range: allowed 1..=1000000, as count"
        ]
    );
    // A value wrong only against a default is shown at the section.
    assert_eq!(
        pool("      high-utilisation: 0.2\n"),
        [
            "w.yaml:6:7: pool `coder`: scaling low-utilisation 0.3 is out of range: allowed 0.0 up to below high-utilisation"
        ]
    );
    assert_eq!(
        pool("      predictive: false\n      predictive-policy: {factor: 1.2}\n"),
        [
            "w.yaml:6:19: pool `coder`: `predictive: false` turns the predictive policy off, and `predictive-policy` sets its steps: remove one"
        ]
    );
    // A misspelt key is refused like any other, and the rest is still checked.
    let p = pool("      max-sclae: 3\n      reactive: {factor: 0.5}\n");
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:6:7: unknown field `max-sclae`, expected one of min, max,"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("w.yaml:7:26: pool `coder`: scaling reactive.factor 0.5"),
        "{p:?}"
    );
    // In a flow map under a block one, its last key: blanked out, the rest parses again.
    let p = pool("      reactive: {factor: 1.5, cooldwn: 1s}\n      idle-after: 0s\n");
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].starts_with("w.yaml:6:31: unknown field `cooldwn`, expected one of factor,"),
        "{p:?}"
    );
    assert_eq!(p[1], "w.yaml:7:19: a duration of 0 is not allowed");
}

#[test]
fn count_zero_needs_scaling_that_may_go_to_zero() {
    let pool = |lines: &str| {
        format!("name: w\nagents:\n  - name: coder\n    kind: sim\n{lines}tasks: [{{id: a}}]\n")
    };
    assert_eq!(
        problems(&pool("    count: 0\n")),
        [
            "w.yaml:5:12: count 0 is out of range: allowed 1..=1000000 (count 0 needs `scaling: { min: 0 }`)"
        ]
    );
    assert_eq!(
        problems(&pool("    count: 0\n    scaling: {max: 4}\n")),
        [
            "w.yaml:5:12: count 0 is out of range: allowed 1..=4, the pool's scaling min..=max (count 0 needs `scaling: { min: 0 }`)"
        ]
    );
    let w = parse(
        &pool("    count: 0\n    scaling: {min: 0, max: 4}\n"),
        "w.yaml",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(w.pools[0].count, 0);
    assert_eq!(w.pools[0].scaling.map(|s| (s.min, s.max)), Some((0, 4)));
}

#[test]
fn count_must_lie_within_the_scaling_bounds() {
    let pool = |lines: &str| {
        problems(&format!(
            "name: w\nagents:\n  - name: coder\n    kind: sim\n{lines}tasks: [{{id: a}}]\n"
        ))
    };
    assert_eq!(
        pool("    count: 30\n    scaling: {max: 20}\n"),
        ["w.yaml:5:12: count 30 is out of range: allowed 1..=20, the pool's scaling min..=max"]
    );
    assert_eq!(
        pool("    count: 2\n    scaling: {min: 3, max: 20}\n"),
        ["w.yaml:5:12: count 2 is out of range: allowed 3..=20, the pool's scaling min..=max"]
    );
    // Without scaling the old range holds.
    assert_eq!(
        pool("    count: 1000001\n"),
        ["w.yaml:5:12: count 1000001 is out of range: allowed 1..=1000000"]
    );
}

/// `examples/serve-pools.yaml` shows a scaling section; it is accepted as it stands.
#[test]
fn the_scaling_example_of_serve_pools_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pools = colony_workflow::load_pools(&root.join("examples/serve-pools.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let planner = pools.iter().find(|p| p.name == "planner").unwrap();
    let scaling = planner.scaling.expect("the planner pool has scaling");
    assert_eq!((scaling.min, scaling.max), (10, 500));
    assert_eq!(scaling.reactive.cooldown, Duration::from_secs(30));
    assert!((scaling.min..=scaling.max).contains(&planner.count));
}

fn options(out: &Path) -> Options {
    let mut runtime = RuntimeOptions::default();
    // Looks often, so that the steps come within a test's time.
    runtime.autoscale.every = Duration::from_millis(20);
    Options {
        runtime,
        journal: Arc::new(MemoryJournal::new()),
        output: Some(out.to_owned()),
        on_started: None,
        on_finished: None,
        cancel: None,
        prior: Vec::new(),
    }
}

async fn run(yaml: &str) -> Report {
    let out = tempfile::tempdir().unwrap();
    let w = parse(yaml, "w.yaml", Path::new(".")).unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        colony_workflow::run(&w, options(out.path())),
    )
    .await
    .expect("the run ended")
    .unwrap()
}

fn tasks(n: usize) -> String {
    (0..n).map(|i| format!("  - {{id: t{i}}}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_scaled_pool_grows_within_its_max_during_the_run() {
    // One agent, twelve tasks of 250 ms queued at once: the first look sees every slot busy
    // and tasks waiting, and the reactive policy doubles the pool (its max-scale), then
    // reaches `max` a second later.
    let yaml = format!(
        "name: grows\nagents:\n  - name: sim\n    kind: sim\n    count: 1\n    sim: {{latency: 250ms}}\n    scaling: {{min: 1, max: 3, reactive: {{cooldown: 1s}}}}\ntasks:\n{}",
        tasks(12)
    );
    let report = run(&yaml).await;
    assert!(report.all_succeeded(), "{report:?}");
    let agents: HashSet<u32> = report.tasks.iter().filter_map(|t| t.agent).collect();
    assert!((2..=3).contains(&agents.len()), "ran on agents {agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_at_zero_is_brought_back_for_its_tasks() {
    let yaml = format!(
        "name: from-zero\nagents:\n  - name: sim\n    kind: sim\n    count: 0\n    sim: {{latency: 10ms}}\n    scaling: {{min: 0, max: 2}}\ntasks:\n{}",
        tasks(3)
    );
    let report = run(&yaml).await;
    assert!(report.all_succeeded(), "{report:?}");
}
