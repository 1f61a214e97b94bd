//! `{{...}}` placeholders in tasks' inputs and prompts.
//!
//! `{{outputs.ID}}` is the output of task `ID` (a string as it is, anything else as JSON);
//! `{{outputs.ID.a.0.b}}` goes into it by field names and array indices; `{{task}}` is the
//! task's own id. An input string that is nothing but one placeholder takes the output's JSON
//! value itself, not its text.

use serde_json::Value;
use std::{collections::HashMap, fmt};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    Output {
        task: String,
        path: Vec<String>,
    },
    TaskId,
    /// A placeholder of the command backend (`input.KEY`, `attempt`, `agent`), filled per
    /// attempt in a command's arguments and `workdir`, and nowhere else: kept as written.
    Command(String),
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
            return Err(format!(
                "`{{{{` without a closing `}}}}` in {:?}",
                crate::shorten(text, 80)
            ));
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
            Some("input" | "attempt" | "agent") => parts.push(Part::Command(key.to_owned())),
            _ => {
                let key = crate::shorten(key, 60);
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

/// Bytes a rendered payload may still take: charged as each piece is added, so that many
/// references to a big output fail as soon as they would pass the limit, never after a
/// payload many times the limit was built.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    left: usize,
}

impl Budget {
    /// A budget of `limit` bytes: the runtime's payload limit.
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, left: limit }
    }

    /// Takes `n` bytes for `what`, or says that the payload would be too large.
    fn charge(&mut self, n: usize, what: &dyn fmt::Display) -> Result<(), String> {
        if n > self.left {
            return Err(format!(
                "filling {what} would make the task's payload larger than its limit of {} bytes",
                self.limit
            ));
        }
        self.left -= n;
        Ok(())
    }

    /// Takes the bytes `text` takes inside a JSON string, escapes included.
    fn charge_text(&mut self, text: &str, what: &dyn fmt::Display) -> Result<(), String> {
        // Its two quotes are the enclosing string's, already counted.
        self.charge_serialized(text, 2, what)
    }

    /// Takes the bytes `value` takes as JSON, measured without building it.
    fn charge_json(
        &mut self,
        value: &impl serde::Serialize,
        what: &dyn fmt::Display,
    ) -> Result<(), String> {
        self.charge_serialized(value, 0, what)
    }

    fn charge_serialized(
        &mut self,
        value: &(impl serde::Serialize + ?Sized),
        free: usize,
        what: &dyn fmt::Display,
    ) -> Result<(), String> {
        let mut counter = Counter {
            written: 0,
            max: self.left.saturating_add(free),
        };
        // The counter refuses to go past what is left: a huge value stops being measured
        // there.
        let n = match serde_json::to_writer(&mut counter, value) {
            Ok(()) => counter.written.saturating_sub(free),
            Err(_) => usize::MAX,
        };
        self.charge(n, what)
    }
}

/// Counts bytes written, failing once they pass `max`.
struct Counter {
    written: usize,
    max: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.max {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A placeholder as written, for messages.
struct Placeholder<'a>(&'a str, &'a [String]);

impl fmt::Display for Placeholder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{{{{outputs.{}", self.0)?;
        for step in self.1 {
            write!(f, ".{step}")?;
        }
        write!(f, "}}}}`")
    }
}

/// The value a placeholder stands for, borrowed.
fn lookup<'v>(
    task: &str,
    path: &[String],
    outputs: &'v HashMap<String, Value>,
) -> Result<&'v Value, String> {
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
    Ok(value)
}

/// Fills the placeholders of `text`, charging `budget` for what it adds.
pub(crate) fn render(
    text: &str,
    id: &str,
    outputs: &HashMap<String, Value>,
    budget: &mut Budget,
) -> Result<String, String> {
    let mut out = String::new();
    for part in parse(text)? {
        match part {
            Part::Text(t) => {
                budget.charge_text(&t, &"the text")?;
                out.push_str(&t);
            }
            Part::TaskId => {
                budget.charge_text(id, &"`{{task}}`")?;
                out.push_str(id);
            }
            Part::Command(key) => {
                let kept = format!("{{{{{key}}}}}");
                budget.charge_text(&kept, &"the text")?;
                out.push_str(&kept);
            }
            Part::Output { task, path } => {
                let value = lookup(&task, &path, outputs)?;
                // Measured before it is copied: the copy is what must stay bounded.
                let what = Placeholder(&task, &path);
                match value {
                    Value::String(s) => {
                        budget.charge_text(s, &what)?;
                        out.push_str(s);
                    }
                    other => {
                        budget.charge_json(other, &what)?;
                        out.push_str(&other.to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Fills the placeholders in every string of `value`, charging `budget` for the result.
pub(crate) fn render_value(
    value: &Value,
    id: &str,
    outputs: &HashMap<String, Value>,
    budget: &mut Budget,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match parse(s)?.as_slice() {
            [Part::Output { task, path }] => {
                let found = lookup(task, path, outputs)?;
                budget.charge_json(found, &Placeholder(task, path))?;
                found.clone()
            }
            _ => Value::String(render(s, id, outputs, budget)?),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, id, outputs, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    budget.charge_json(k, &"a key")?;
                    Ok((k.clone(), render_value(v, id, outputs, budget)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        other => {
            budget.charge_json(other, &"a value")?;
            other.clone()
        }
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
                &outputs,
                &mut Budget::new(1 << 20)
            )
            .unwrap(),
            "me: T / abc123 / b"
        );
        let input = json!({"steps": "{{outputs.plan.steps}}", "note": "from {{outputs.sum}}"});
        assert_eq!(
            render_value(&input, "me", &outputs, &mut Budget::new(1 << 20)).unwrap(),
            json!({"steps": ["a", "b"], "note": "from abc123"})
        );
        assert!(
            render(
                "{{outputs.plan.nope}}",
                "me",
                &outputs,
                &mut Budget::new(1 << 20)
            )
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
            [Part::Command("input.file".into())]
        );
        // A huge bad placeholder is named, cut.
        let e = parse(&format!("{{{{{}}}}}", "b".repeat(10_000))).unwrap_err();
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn the_budget_is_charged_while_rendering() {
        // 300 references to a 4 MB output: the limit of 1 MiB is passed at the first one,
        // long before 1.2 GB would have been built.
        let big = "x".repeat(4 << 20);
        let outputs = HashMap::from([("big".to_owned(), Value::String(big))]);
        let text = "{{outputs.big}}".repeat(300);
        let e = render(&text, "me", &outputs, &mut Budget::new(1 << 20)).unwrap_err();
        assert!(e.contains("`{{outputs.big}}`"), "{e}");
        assert!(e.contains("limit of 1048576 bytes"), "{e}");
        let input = json!({"a": ["{{outputs.big}}", "{{outputs.big}}"]});
        let e = render_value(&input, "me", &outputs, &mut Budget::new(1 << 20)).unwrap_err();
        assert!(e.contains("larger than its limit"), "{e}");

        // What fits is rendered exactly, escapes counted: 10 quotes take 20 bytes.
        let outputs = HashMap::from([("q".to_owned(), json!("\"".repeat(10)))]);
        let mut budget = Budget::new(20);
        assert_eq!(
            render("{{outputs.q}}", "me", &outputs, &mut budget).unwrap(),
            "\"".repeat(10)
        );
        assert!(render("{{outputs.q}}", "me", &outputs, &mut Budget::new(19)).is_err());
        // A whole value, measured as JSON: ["a","b"] is 9 bytes.
        let outputs = HashMap::from([("l".to_owned(), json!(["a", "b"]))]);
        let input = json!("{{outputs.l}}");
        assert_eq!(
            render_value(&input, "me", &outputs, &mut Budget::new(9)).unwrap(),
            json!(["a", "b"])
        );
        assert!(render_value(&input, "me", &outputs, &mut Budget::new(8)).is_err());
    }
}
