//! Codex's output under `exec --json`: one event per line. `thread.started` names the
//! session; `item.completed` events carry the items, the `agent_message` ones its messages;
//! each turn ends in `turn.completed` (with its `usage`: `input_tokens`,
//! `cached_input_tokens`, `output_tokens`) or `turn.failed` (with its `error.message`);
//! `error` events report trouble the CLI may still recover from (a reconnect).
//!
//! A call succeeded when a turn completed and none failed; its answer is the last agent
//! message. Codex reports tokens, not dollars: the pool's `price` makes them a cost.

use super::{Answer, Failure, Reading, Tokens, count, failure, start_of, text};
use serde_json::Value;

pub(crate) fn read(stdout: &str) -> Reading {
    let mut usage = Tokens::default();
    let (mut session, mut last_message, mut completed, mut failed, mut error) =
        (None, None, false, None, None);
    let mut any = false;
    for event in super::events(stdout) {
        any = true;
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => session = text(event.get("thread_id")),
            "item.completed" => {
                let item = event.get("item");
                let kind = item.and_then(|i| i.get("type").or_else(|| i.get("item_type")));
                if kind.and_then(Value::as_str) == Some("agent_message") {
                    last_message = text(item.and_then(|i| i.get("text")));
                }
            }
            "turn.completed" => {
                completed = true;
                usage.add(tokens(event.get("usage")));
            }
            "turn.failed" => {
                usage.add(tokens(event.get("usage")));
                failed = Some(
                    text(event.get("error").and_then(|e| e.get("message")))
                        .unwrap_or_else(|| "turn.failed without a message".into()),
                );
            }
            "error" => {
                error = text(event.get("message"))
                    .or_else(|| text(event.get("error").and_then(|e| e.get("message"))));
            }
            _ => {}
        }
    }
    let outcome = if let Some(message) = failed {
        Err(failure(message))
    } else if completed {
        Ok(Answer {
            text: last_message.unwrap_or_default(),
            model: None,
            session,
            turns: None,
        })
    } else if let Some(message) = error {
        Err(failure(message))
    } else if any {
        Err(Failure::Unreadable(
            "the stream ended before `turn.completed`".into(),
        ))
    } else {
        Err(Failure::Unreadable(format!(
            "no JSON events ({})",
            start_of(stdout)
        )))
    };
    Reading { outcome, usage }
}

fn tokens(usage: Option<&Value>) -> Tokens {
    Tokens {
        input: count(usage.and_then(|u| u.get("input_tokens"))),
        output: count(usage.and_then(|u| u.get("output_tokens"))),
        cost_usd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: &str = r#"{"type":"thread.started","thread_id":"t-9"}"#;
    const MESSAGE: &str = r#"{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Patched src/lib.rs."}}"#;
    const DONE: &str = r#"{"type":"turn.completed","usage":{"input_tokens":24763,"cached_input_tokens":24448,"output_tokens":122}}"#;

    #[test]
    fn a_completed_turn_gives_the_last_message_and_its_tokens() {
        let out = format!(
            "{STARTED}\n{{\"type\":\"turn.started\"}}\n{}\n{MESSAGE}\n{DONE}\n",
            r#"{"type":"item.completed","item":{"id":"item_1","type":"reasoning","text":"thinking"}}"#
        );
        let r = read(&out);
        let answer = r.outcome.unwrap();
        assert_eq!(answer.text, "Patched src/lib.rs.");
        assert_eq!(answer.session.as_deref(), Some("t-9"));
        assert_eq!(
            r.usage,
            Tokens {
                input: 24763,
                output: 122,
                cost_usd: None
            }
        );
    }

    #[test]
    fn a_reconnect_error_before_a_completed_turn_is_no_failure() {
        let out = format!(
            "{STARTED}\n{}\n{MESSAGE}\n{DONE}\n",
            r#"{"type":"error","message":"Reconnecting... 1/5"}"#
        );
        assert!(read(&out).outcome.is_ok());
    }

    #[test]
    fn a_failed_turn_fails_and_a_rate_limit_says_its_wait() {
        let failed = format!(
            "{STARTED}\n{}\n",
            r#"{"type":"turn.failed","error":{"message":"sandbox denied the write"}}"#
        );
        assert_eq!(
            read(&failed).outcome,
            Err(Failure::Reported("sandbox denied the write".into()))
        );
        let limited = format!(
            "{STARTED}\n{}\n",
            r#"{"type":"error","message":"stream error: 429 Too Many Requests; Please try again in 2s"}"#
        );
        assert!(matches!(
            read(&limited).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d.as_secs() == 2
        ));
    }

    #[test]
    fn a_cut_stream_and_plain_text_are_unreadable() {
        let cut = format!("{STARTED}\n{MESSAGE}\n");
        let Err(Failure::Unreadable(why)) = read(&cut).outcome else {
            panic!()
        };
        assert!(why.contains("before `turn.completed`"), "{why}");
        assert!(matches!(
            read("error: unexpected argument '--json'").outcome,
            Err(Failure::Unreadable(_))
        ));
    }
}
