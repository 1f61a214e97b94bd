//! Gemini CLI's output under `--output-format json`: one object, pretty-printed over many
//! lines, with `response` (the final answer) and `stats` (per model under
//! `stats.models.<model>.tokens`: `prompt`, `candidates`, `thoughts`, `cached`, `total`). A
//! call that failed writes `{"error": {"type", "message", "code"}}` to stderr instead and
//! exits non-zero. A call succeeded when there is no `error` and there is a `response`.
//!
//! Gemini reports tokens, not dollars: the pool's `price` makes them a cost (thoughts are
//! billed as output).

use super::{Answer, Failure, Reading, Tokens, count, failure, start_of, text};
use serde_json::Value;

pub(crate) fn read(stdout: &str, stderr: &str) -> Reading {
    let object = object_in(stdout)
        .or_else(|| object_in(stderr).filter(|o| o.get("error").is_some_and(|e| !e.is_null())));
    let Some(object) = object else {
        return Reading {
            outcome: Err(Failure::Unreadable(format!(
                "no JSON object ({})",
                start_of(stdout)
            ))),
            usage: Tokens::default(),
        };
    };
    let mut usage = Tokens::default();
    let mut model = None;
    if let Some(models) = object
        .get("stats")
        .and_then(|s| s.get("models"))
        .and_then(Value::as_object)
    {
        for (name, stats) in models {
            let t = stats.get("tokens");
            usage.add(Tokens {
                input: count(t.and_then(|t| t.get("prompt"))),
                output: count(t.and_then(|t| t.get("candidates")))
                    + count(t.and_then(|t| t.get("thoughts"))),
                cost_usd: None,
            });
            model.get_or_insert_with(|| name.clone());
        }
    }
    let outcome = match object.get("error").filter(|e| !e.is_null()) {
        Some(error) => {
            let message = text(error.get("message")).unwrap_or_else(|| error.to_string());
            let code = error.get("code").and_then(Value::as_u64);
            Err(if matches!(code, Some(429 | 503)) {
                super::Failure::RateLimited {
                    after: super::retry_hint(&message),
                    message: super::one_line(&message),
                }
            } else {
                failure(message)
            })
        }
        None => match text(object.get("response")) {
            Some(response) => Ok(Answer {
                text: response,
                model,
                session: text(object.get("session_id")),
                turns: None,
            }),
            None => Err(Failure::Unreadable(
                "the object has neither `response` nor `error`".into(),
            )),
        },
    };
    Reading { outcome, usage }
}

/// The JSON object in `text`: all of it, or the first that starts a line (after warnings the
/// CLI printed first; before anything printed after it).
fn object_in(text: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text.trim()) {
        return Some(v);
    }
    let starts = std::iter::once(0).chain(text.match_indices("\n{").map(|(at, _)| at + 1));
    starts
        .filter(|&at| text[at..].starts_with('{'))
        .find_map(|at| {
            serde_json::Deserializer::from_str(&text[at..])
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok)
                .filter(Value::is_object)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUCCESS: &str = r#"{"response":"The tests pass.","stats":{"models":{"gemini-2.5-pro":{"api":{"totalRequests":2,"totalErrors":0,"totalLatencyMs":5053},"tokens":{"prompt":24939,"candidates":20,"total":25113,"cached":21263,"thoughts":154,"tool":0}}},"tools":{"totalCalls":1}}}"#;

    #[test]
    fn a_response_gives_its_text_model_and_tokens() {
        let r = read(SUCCESS, "");
        let answer = r.outcome.clone().unwrap();
        assert_eq!(answer.text, "The tests pass.");
        assert_eq!(answer.model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(
            r.usage,
            Tokens {
                input: 24939,
                output: 174,
                cost_usd: None
            }
        );
        let warned = format!("Loaded cached credentials.\n{SUCCESS}\n");
        assert_eq!(read(&warned, ""), r);
        // Pretty-printed, as the CLI prints it.
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(SUCCESS).unwrap(),
        )
        .unwrap();
        assert_eq!(
            read(&format!("Loaded cached credentials.\n{pretty}\n"), ""),
            r
        );
    }

    #[test]
    fn an_error_object_fails_and_429_is_a_rate_limit() {
        let r = read(
            r#"{"response":null,"error":{"type":"FatalToolExecutionError","message":"tool failed","code":1}}"#,
            "",
        );
        assert_eq!(r.outcome, Err(Failure::Reported("tool failed".into())));
        // On stderr, pretty-printed after a stack line, as the CLI writes a failure.
        let r = read(
            "",
            "Error when talking to Gemini API\n{\n  \"error\": {\n    \"type\": \"ApiError\",\n    \"message\": \"Quota hit. Please retry in 23.5s.\",\n    \"code\": 429\n  }\n}\n    at main (gemini.js:1)\n",
        );
        assert!(matches!(
            r.outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d.as_millis() == 23_500
        ));
    }

    #[test]
    fn anything_else_is_unreadable() {
        for out in ["", "Usage: gemini [options]", r#"{"stats":{}}"#] {
            assert!(
                matches!(read(out, "").outcome, Err(Failure::Unreadable(_))),
                "{out:?}"
            );
        }
    }
}
