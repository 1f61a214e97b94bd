//! OpenCode's output under `run --format json`: one event per line, each with `type`,
//! `sessionID` and a `part`. A step begins with `step_start`; `text` events carry its text
//! (`part.text`); `step_finish` ends it with `part.reason`, `part.cost` (dollars) and
//! `part.tokens` (`input`, `output`, `reasoning`, `cache.read`, `cache.write`). A step that
//! finishes for a reason other than `tool-calls` ends the run, and its text is the answer.
//! `error` events carry `error.name` and `error.data.message` (with `statusCode` for an
//! API error).

use super::{Answer, Failure, Reading, Tokens, count, failure, start_of, text};
use serde_json::Value;

pub(crate) fn read(stdout: &str) -> Reading {
    let mut usage = Tokens::default();
    let (mut session, mut step_text, mut answer, mut error) = (None, String::new(), None, None);
    // A last step that ended for another reason than `stop` (`length`, `content-filter`,
    // `error`): its text is no finished answer.
    let mut cut = None;
    let mut any = false;
    for event in super::events(stdout) {
        any = true;
        if let Some(id) = text(event.get("sessionID")) {
            session = Some(id);
        }
        let part = event.get("part");
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "step_start" => {
                step_text.clear();
                answer = None;
                cut = None;
            }
            "text" => {
                if let Some(t) = part.and_then(|p| p.get("text")).and_then(Value::as_str) {
                    step_text.push_str(t);
                }
            }
            "step_finish" => {
                let t = part.and_then(|p| p.get("tokens"));
                usage.add(Tokens {
                    input: count(t.and_then(|t| t.get("input")))
                        + count(t.and_then(|t| t.get("cache")).and_then(|c| c.get("read")))
                        + count(t.and_then(|t| t.get("cache")).and_then(|c| c.get("write"))),
                    output: count(t.and_then(|t| t.get("output")))
                        + count(t.and_then(|t| t.get("reasoning"))),
                    cost_usd: Some(
                        part.and_then(|p| p.get("cost"))
                            .and_then(Value::as_f64)
                            .filter(|c| c.is_finite() && *c >= 0.0)
                            .unwrap_or(0.0),
                    ),
                });
                match part.and_then(|p| p.get("reason")).and_then(Value::as_str) {
                    Some("tool-calls") => {}
                    Some("stop") => answer = Some(std::mem::take(&mut step_text)),
                    other => cut = Some(other.unwrap_or("none").to_owned()),
                }
            }
            "error" => {
                let e = event.get("error");
                let data = e.and_then(|e| e.get("data"));
                let message = text(data.and_then(|d| d.get("message")))
                    .or_else(|| text(e.and_then(|e| e.get("message"))))
                    .or_else(|| text(e.and_then(|e| e.get("name"))))
                    .unwrap_or_else(|| "an error event without a message".into());
                let status = data
                    .and_then(|d| d.get("statusCode"))
                    .and_then(Value::as_u64);
                error = Some(match status {
                    Some(429 | 529) => Failure::RateLimited {
                        after: super::retry_hint(&message),
                        message: super::one_line(&message),
                    },
                    _ => failure(message),
                });
            }
            _ => {}
        }
    }
    let outcome = match (error, answer) {
        (Some(error), _) => Err(error),
        (None, _) if cut.is_some() => Err(Failure::Reported(format!(
            "its last step finished with reason `{}`, not `stop`",
            super::one_line(cut.as_deref().unwrap_or_default())
        ))),
        (None, Some(text)) => Ok(Answer {
            text: text.trim().to_owned(),
            model: None,
            session,
            turns: None,
        }),
        (None, None) if any => Err(Failure::Unreadable(
            "the stream ended before its last step finished".into(),
        )),
        (None, None) => Err(Failure::Unreadable(format!(
            "no JSON events ({})",
            start_of(stdout)
        ))),
    };
    Reading { outcome, usage }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(reason: &str, cost: f64) -> String {
        format!(
            r#"{{"type":"step_finish","sessionID":"ses_1","part":{{"type":"step-finish","reason":"{reason}","cost":{cost},"tokens":{{"input":100,"output":20,"reasoning":5,"cache":{{"read":1000,"write":0}}}}}}}}"#
        )
    }

    #[test]
    fn the_last_step_s_text_is_the_answer_and_every_step_costs() {
        let out = [
            r#"{"type":"step_start","sessionID":"ses_1","part":{"type":"step-start"}}"#.to_owned(),
            r#"{"type":"text","sessionID":"ses_1","part":{"type":"text","text":"Let me look."}}"#
                .into(),
            r#"{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"read"}}"#
                .into(),
            finish("tool-calls", 0.01),
            r#"{"type":"step_start","sessionID":"ses_1","part":{"type":"step-start"}}"#.into(),
            r#"{"type":"text","sessionID":"ses_1","part":{"type":"text","text":"Fixed it."}}"#
                .into(),
            finish("stop", 0.02),
        ]
        .join("\n");
        let r = read(&out);
        let answer = r.outcome.unwrap();
        assert_eq!(answer.text, "Fixed it.");
        assert_eq!(answer.session.as_deref(), Some("ses_1"));
        assert_eq!(r.usage.input, 2200);
        assert_eq!(r.usage.output, 50);
        assert!((r.usage.cost_usd.unwrap() - 0.03).abs() < 1e-12);
    }

    #[test]
    fn an_error_event_fails_and_a_429_is_a_rate_limit() {
        let out = format!(
            "{}\n{}",
            r#"{"type":"step_start","part":{}}"#,
            r#"{"type":"error","error":{"name":"APIError","data":{"message":"Too busy, retry after 4s","statusCode":429,"isRetryable":true}}}"#
        );
        assert!(matches!(
            read(&out).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d.as_secs() == 4
        ));
        let out =
            r#"{"type":"error","error":{"name":"ProviderAuthError","data":{"message":"no key"}}}"#;
        assert_eq!(read(out).outcome, Err(Failure::Reported("no key".into())));
    }

    #[test]
    fn a_step_cut_by_its_length_is_no_answer() {
        let out = format!(
            "{}\n{}\n{}\n",
            r#"{"type":"step_start","part":{}}"#,
            r#"{"type":"text","part":{"text":"Half an ans"}}"#,
            finish("length", 0.01)
        );
        let r = read(&out);
        assert_eq!(
            r.outcome,
            Err(Failure::Reported(
                "its last step finished with reason `length`, not `stop`".into()
            ))
        );
        assert_eq!(r.usage.cost_usd, Some(0.01));
    }

    #[test]
    fn a_stream_cut_mid_step_is_unreadable() {
        let out = format!(
            "{}\n{}\n",
            r#"{"type":"step_start","part":{}}"#,
            finish("tool-calls", 0.0)
        );
        let Err(Failure::Unreadable(why)) = read(&out).outcome else {
            panic!()
        };
        assert!(why.contains("before its last step finished"), "{why}");
        assert!(matches!(read("").outcome, Err(Failure::Unreadable(_))));
    }
}
