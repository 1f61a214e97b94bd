//! What a task hands its agent, checked before anything runs: its payload fits the runtime's
//! limit, carries no NUL byte, and has every field its command pool's arguments fill in.

use crate::{Backend, PoolDef, check::Problem, file};
use colony_core::task::{DEFAULT_MAX_PAYLOAD, Requirement};
use serde_json::{Value, json};

/// Records the problems of task `t`'s payload; `requirement` is what it runs on.
pub(crate) fn check(
    t: &file::Task,
    requirement: &Requirement,
    pools: &[PoolDef],
    problems: &mut Vec<Problem>,
) {
    let id = &t.id.value;
    let at_input = || at_input(t);
    // A NUL byte cannot reach a program's arguments or environment, and is never what a
    // prompt meant.
    if let Some(prompt) = &t.prompt
        && let Some(column) = prompt.value.find('\0')
    {
        problems.push(problem(
            prompt.referenced,
            format!("task `{id}`: its prompt holds a NUL byte (at character {column})"),
            "NUL byte",
        ));
    }
    if let Some(input) = &t.input {
        let mut nul = false;
        crate::template::strings(&input.value, &mut |s| nul |= s.contains('\0'));
        if nul {
            problems.push(problem(
                input.referenced,
                format!("task `{id}`: its input holds a NUL byte in a string"),
                "NUL byte",
            ));
        }
    }
    // The payload before its placeholders are filled: filling them only makes it longer.
    let payload = json!({
        "task": id,
        "input": t.input.as_ref().map_or(&Value::Null, |i| &i.value),
        "prompt": t.prompt.as_ref().map(|p| &p.value),
    });
    let size = payload.to_string().len();
    if size > DEFAULT_MAX_PAYLOAD {
        problems.push(problem(
            at_input(),
            format!(
                "task `{id}` hands its agent {size} bytes (input and prompt) before any placeholder is filled: allowed up to {DEFAULT_MAX_PAYLOAD}"
            ),
            "too large",
        ));
    }
    // A team's asks go to its roles' pools, each step's with its own input: checked by role.
    if t.team.is_none() {
        fields(t, requirement, None, pools, problems);
    }
}

/// `{{input.KEY}}` in the arguments or working folder of a command pool that may run task
/// `t` on `requirement`: the task's input, with `extra` fields set over it (a team step's),
/// must have that field, or every attempt would fail.
pub(crate) fn fields(
    t: &file::Task,
    requirement: &Requirement,
    extra: Option<&serde_json::Map<String, Value>>,
    pools: &[PoolDef],
    problems: &mut Vec<Problem>,
) {
    let id = &t.id.value;
    let at_input = || at_input(t);
    let merged;
    let fields = match t.input.as_ref().map(|i| &i.value) {
        Some(Value::Object(fields)) => Some(fields),
        // An input made whole from a placeholder (`"{{outputs.plan.input}}"`) is known only
        // when the task runs: nothing to check here.
        Some(Value::String(s)) if s.contains("{{") => return,
        _ => None,
    };
    let fields = match (fields, extra) {
        (_, None) => fields,
        (Some(f), Some(extra)) => {
            merged = f.clone().into_iter().chain(extra.clone()).collect();
            Some(&merged)
        }
        (None, Some(extra)) => Some(extra),
    };
    for pool in pools.iter().filter(|p| p.spec.satisfies(requirement)) {
        let Backend::Command(command) = &pool.backend else {
            continue;
        };
        let templates = command
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("argument {}", i + 1), a.as_str()))
            .chain(
                command
                    .workdir
                    .iter()
                    .map(|w| ("workdir".to_owned(), w.as_str())),
            );
        for (what, template) in templates {
            for key in input_keys(template) {
                if fields.is_some_and(|f| f.contains_key(key)) {
                    continue;
                }
                // Put in when it runs: what it recalled, the message it waited for.
                if (key == "recall" && t.recall.is_some()) || (key == "message" && t.wait.is_some())
                {
                    continue;
                }
                let has = match fields {
                    Some(f) if f.is_empty() => "an empty input".to_owned(),
                    Some(f) => format!(
                        "input fields {}",
                        f.keys()
                            .take(10)
                            .map(|k| format!("`{}`", crate::shorten(k, 40)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => "no input object".to_owned(),
                };
                problems.push(problem(
                    at_input(),
                    format!(
                        "task `{id}` may run on pool `{}`, whose {what} takes `{{{{input.{key}}}}}`: the task has {has}, no field `{key}`",
                        pool.name
                    ),
                    "missing input field",
                ));
            }
        }
    }
}

/// Where task `t`'s input is, for a problem with it: the input, else the task.
fn at_input(t: &file::Task) -> serde_saphyr::Location {
    t.input.as_ref().map_or(t.id.referenced, |i| i.referenced)
}

fn problem(at: serde_saphyr::Location, message: String, label: &str) -> Problem {
    Problem {
        message,
        at: crate::check::known(at),
        label: label.into(),
    }
}

/// The keys of the `{{input.KEY}}` placeholders in `template`.
fn input_keys(template: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        if let Some(key) = after[..close].trim().strip_prefix("input.") {
            keys.push(key);
        }
        rest = &after[close + 2..];
    }
    keys
}
