//! Helpers shared by this crate's integration tests.

use colony_journal::MemoryJournal;
use colony_runtime::RuntimeOptions;
use colony_workflow::{Options, parse};
use std::{path::Path, sync::Arc};

/// The problems `colony validate` reports for `yaml`, one `file:line:column: message` each.
///
/// # Panics
/// If the file is accepted.
pub(crate) fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml, "w.yaml", Path::new(".")) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(invalid) => invalid.to_string().lines().map(str::to_owned).collect(),
    }
}

/// Asserts that one of `problems` starts with `start` (`file:line:column:`) and holds every
/// one of `words`.
#[allow(dead_code)] // Not every test file checks problems.
pub(crate) fn has(problems: &[String], start: &str, words: &[&str]) {
    let found = problems
        .iter()
        .any(|p| p.starts_with(start) && words.iter().all(|w| p.contains(w)));
    assert!(found, "no `{start}` with {words:?} in {problems:#?}");
}

/// Options of a run on the default runtime and an in-memory journal, its results in `out`.
#[allow(dead_code)] // Not every test file runs workflows.
pub(crate) fn options(out: &Path) -> Options {
    Options {
        runtime: RuntimeOptions::default(),
        journal: Arc::new(MemoryJournal::new()),
        output: Some(out.to_owned()),
        on_started: None,
        on_finished: None,
        cancel: None,
        prior: Vec::new(),
    }
}
