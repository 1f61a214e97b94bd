//! `{{...}}` placeholders in tasks' inputs and prompts.
//!
//! `{{outputs.ID}}` is the output of task `ID` (a string as it is, anything else as JSON);
//! `{{outputs.ID.a.0.b}}` goes into it by field names and array indices; `{{task}}` is the
//! task's own id. An input string that is nothing but one placeholder takes the output's JSON
//! value itself, not its text.

use serde_json::Value;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    Output { task: String, path: Vec<String> },
    TaskId,
}

/// Splits `text` into text and placeholders; says what is wrong with a bad one.
pub(crate) fn parse(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!("`{{{{` without a closing `}}}}` in {text:?}"));
        };
        let key = after[..close].trim();
        let mut words = key.split('.');
        match words.next() {
            Some("outputs") => {
                let task = words.next().filter(|t| !t.is_empty()).ok_or_else(|| {
                    format!("`{{{{{key}}}}}` names no task: write `{{{{outputs.TASK}}}}`")
                })?;
                parts.push(Part::Output {
                    task: task.to_owned(),
                    path: words.map(str::to_owned).collect(),
                });
            }
            Some("task") if key == "task" => parts.push(Part::TaskId),
            // Placeholders of the command backend, filled per attempt: kept as they are.
            Some("input" | "attempt" | "agent") => {
                parts.push(Part::Text(format!("{{{{{key}}}}}")));
            }
            _ => {
                return Err(format!(
                    "unknown placeholder `{{{{{key}}}}}`: use `{{{{outputs.TASK}}}}`, `{{{{outputs.TASK.FIELD}}}}` or `{{{{task}}}}`"
                ));
            }
        }
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Calls `f` on every string in `value`.
pub(crate) fn strings(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, f)),
        Value::Object(fields) => fields.values().for_each(|v| strings(v, f)),
        _ => {}
    }
}

/// The value a placeholder stands for.
fn lookup(task: &str, path: &[String], outputs: &HashMap<String, Value>) -> Result<Value, String> {
    let mut value = outputs
        .get(task)
        .ok_or_else(|| format!("task `{task}` has no output"))?;
    for step in path {
        value = match value {
            Value::Object(fields) => fields.get(step),
            Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("the output of `{task}` has no `{}`", path.join(".")))?;
    }
    Ok(value.clone())
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fills the placeholders of `text`.
pub(crate) fn render(
    text: &str,
    id: &str,
    outputs: &HashMap<String, Value>,
) -> Result<String, String> {
    let mut out = String::new();
    for part in parse(text)? {
        match part {
            Part::Text(t) => out.push_str(&t),
            Part::TaskId => out.push_str(id),
            Part::Output { task, path } => out.push_str(&text_of(&lookup(&task, &path, outputs)?)),
        }
    }
    Ok(out)
}

/// Fills the placeholders in every string of `value`.
pub(crate) fn render_value(
    value: &Value,
    id: &str,
    outputs: &HashMap<String, Value>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match parse(s)?.as_slice() {
            [Part::Output { task, path }] => lookup(task, path, outputs)?,
            _ => Value::String(render(s, id, outputs)?),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, id, outputs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, id, outputs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_fill_text_and_whole_values() {
        let outputs = HashMap::from([
            (
                "plan".to_owned(),
                json!({"steps": ["a", "b"], "title": "T"}),
            ),
            ("sum".to_owned(), json!("abc123")),
        ]);
        assert_eq!(
            render(
                "{{task}}: {{ outputs.plan.title }} / {{outputs.sum}} / {{outputs.plan.steps.1}}",
                "me",
                &outputs
            )
            .unwrap(),
            "me: T / abc123 / b"
        );
        let input = json!({"steps": "{{outputs.plan.steps}}", "note": "from {{outputs.sum}}"});
        assert_eq!(
            render_value(&input, "me", &outputs).unwrap(),
            json!({"steps": ["a", "b"], "note": "from abc123"})
        );
        assert!(
            render("{{outputs.plan.nope}}", "me", &outputs)
                .unwrap_err()
                .contains("no `nope`")
        );
    }

    #[test]
    fn bad_placeholders_say_what_to_write() {
        assert!(parse("{{outputs}}").unwrap_err().contains("names no task"));
        assert!(
            parse("{{output.x}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(
            parse("{{outputs.x")
                .unwrap_err()
                .contains("without a closing")
        );
        assert_eq!(
            parse("{{input.file}}").unwrap(),
            [Part::Text("{{input.file}}".into())]
        );
    }
}
