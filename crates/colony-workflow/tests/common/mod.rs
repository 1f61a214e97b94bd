//! Helpers shared by this crate's integration tests.

use colony_workflow::parse;
use std::path::Path;

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
