//! Arbitrary bytes and arbitrary YAML-ish text fed to the workflow reader and checker: never a
//! panic, only errors (or a workflow), and memory bounded. Seeded, so a failure repeats; a few
//! seconds long.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::{panic::AssertUnwindSafe, path::Path};

/// Pieces of workflow files, and of things that break parsers.
const TOKENS: &[&str] = &[
    "name: w\n",
    "agents:\n",
    "tasks:\n",
    "  - ",
    "    ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    ": ",
    "\n",
    "id: a",
    "id: b",
    "needs: [a]",
    "needs: [b]",
    "agent: s",
    "kind: sim",
    "kind: command",
    "kind: process",
    "kind: http",
    "name: s",
    "count: 2",
    "count: -1",
    "count: 99999999999",
    "input: ",
    "prompt: ",
    "\"{{outputs.a}}\"",
    "\"{{outputs.a.x.0}}\"",
    "\"{{input.k}}\"",
    "\"{{task}}\"",
    "\"{{\"",
    "\"}}\"",
    "&x ",
    "*x",
    "<<: *x",
    "---\n",
    "...\n",
    "!!binary ",
    "!!str ",
    "? ",
    "|\n",
    ">\n",
    "\"\\0\"",
    "\"\\u0000\"",
    "'",
    "\"",
    "#",
    "~",
    "null",
    "1e999",
    "-0",
    ".nan",
    "é",
    "\u{feff}",
    "\t",
    "\r\n",
    "timeout: 5x",
    "timeout: 8d",
    "retries: 101",
    "priority: 10",
    "expect: {regex: \"(\"}",
    "expect: {schema: {type: 7}}",
    "continue-on-failure: true",
    "sim: {error-rate: 2}",
    "command: {program: echo}",
    "command: {program: ./nope}",
    "output: ../x",
    "defaults: {retries: 0}",
];

fn yamlish(rng: &mut SmallRng) -> String {
    let mut text = String::new();
    for _ in 0..rng.random_range(0..80) {
        text.push_str(TOKENS[rng.random_range(0..TOKENS.len())]);
    }
    text
}

fn mutated(rng: &mut SmallRng, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..3) {
            0 if at < bytes.len() => bytes[at] = rng.random(),
            1 => bytes.insert(at, rng.random()),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Reads, parses and checks `bytes` as a file, as `colony validate` does; panics only if the
/// reader or the checker did.
fn check(dir: &Path, bytes: &[u8], toml: bool) {
    let file = dir.join(if toml { "w.toml" } else { "w.yaml" });
    std::fs::write(&file, bytes).unwrap();
    let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = colony_workflow::load(&file);
        let _ = colony_workflow::load_pools(&file);
    }));
    if loaded.is_err() {
        panic!(
            "panicked on {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        );
    }
}

#[test]
fn arbitrary_input_gives_errors_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(11);
    let valid = b"name: w\nagents: [{name: s, kind: sim, count: 2}]\ntasks:\n  - {id: a, input: {k: 1}}\n  - {id: b, needs: [a], prompt: \"{{outputs.a.k}}\"}\n";
    let started = std::time::Instant::now();
    let mut cases = 0;
    // Bounded by time as well as count: a few seconds on a slow machine.
    while cases < 3_000 && started.elapsed() < std::time::Duration::from_secs(5) {
        let bytes: Vec<u8> = match cases % 4 {
            0 => (0..rng.random_range(0..400))
                .map(|_| rng.random())
                .collect(),
            1 => yamlish(&mut rng).into_bytes(),
            2 => mutated(&mut rng, valid),
            _ => {
                let mut text = String::from("name: w\nagents: [{name: s, kind: sim}]\n");
                text.push_str(&yamlish(&mut rng));
                text.into_bytes()
            }
        };
        check(dir.path(), &bytes, cases % 7 == 0);
        cases += 1;
    }
    assert!(cases >= 200, "only {cases} cases ran");
    // Nothing of the above may hold much: the largest input is a few kilobytes.
    let peak = vm_hwm_kb();
    assert!(peak < 300 * 1024, "peak RSS {peak} KB after {cases} cases");
    eprintln!("{cases} cases, peak RSS {} MB", peak / 1024);
}
