//! Claude Code's output: `--output-format json` prints one result object; `stream-json`
//! prints one event per line and ends with the same object (`"type": "result"`). Older
//! versions with `--verbose` printed a JSON array of the messages, the result last.
//!
//! The result carries `is_error`, `subtype` (`success`, `error_max_turns`,
//! `error_during_execution`), `result` (the final message), `session_id`, `num_turns`,
//! `total_cost_usd` and `usage` (`input_tokens`, `output_tokens`, and the cache's
//! `cache_creation_input_tokens`, `cache_read_input_tokens`, counted as input).
//! A subscription's usage limit reads `Claude AI usage limit reached|<unix time>`: the time
//! it lifts.

use super::{Answer, Failure, Reading, Tokens, count, failure, start_of, text};
use serde_json::Value;
use std::time::{Duration, SystemTime};

pub(crate) fn read(stdout: &str, now: SystemTime) -> Reading {
    let Some(result) = result(stdout) else {
        let why = if super::events(stdout).next().is_some() {
            "the stream ended without its `result` event".to_owned()
        } else {
            format!("no `result` object ({})", start_of(stdout))
        };
        return Reading {
            outcome: Err(Failure::Unreadable(why)),
            usage: Tokens::default(),
        };
    };
    let usage = result.get("usage");
    let tokens = Tokens {
        input: count(usage.and_then(|u| u.get("input_tokens")))
            .saturating_add(count(
                usage.and_then(|u| u.get("cache_creation_input_tokens")),
            ))
            .saturating_add(count(usage.and_then(|u| u.get("cache_read_input_tokens")))),
        output: count(usage.and_then(|u| u.get("output_tokens"))),
        cost_usd: result
            .get("total_cost_usd")
            .or_else(|| result.get("cost_usd"))
            .and_then(Value::as_f64)
            .filter(|c| c.is_finite() && *c >= 0.0),
    };
    let message = text(result.get("result"));
    let subtype = text(result.get("subtype")).unwrap_or_default();
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let outcome = if is_error || subtype != "success" {
        let message = message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| format!("is_error with subtype `{subtype}`"));
        Err(match usage_limit_lifts(&message, now) {
            Some(after) => Failure::RateLimited {
                message: super::one_line(&message),
                after: Some(after),
            },
            None => failure(message),
        })
    } else {
        Ok(Answer {
            text: message.unwrap_or_default(),
            model: None,
            session: text(result.get("session_id")),
            turns: result.get("num_turns").and_then(Value::as_u64),
        })
    };
    Reading {
        outcome,
        usage: tokens,
    }
}

/// The result object: the whole output, the last `result` event of a stream, or the last
/// `result` element of an array.
fn result(stdout: &str) -> Option<Value> {
    let is_result = |v: &Value| v.get("type").and_then(Value::as_str) == Some("result");
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(v @ Value::Object(_)) if is_result(&v) => return Some(v),
        Ok(Value::Array(items)) => return items.into_iter().rev().find(is_result),
        _ => {}
    }
    super::events(stdout).filter(is_result).last()
}

/// How long until a `usage limit reached|<unix time>` lifts.
fn usage_limit_lifts(message: &str, now: SystemTime) -> Option<Duration> {
    let (_, at) = message.split_once("limit reached|")?;
    let at: u64 = at
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    // A time past what a clock holds waits longer than an attempt waits, and fails it.
    let at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(at))
        .unwrap_or(now + super::MAX_RATE_LIMIT_WAIT + Duration::from_secs(1));
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    const SUCCESS: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2100,"num_turns":3,"result":"Done: added the test.","session_id":"s-1","total_cost_usd":0.0421,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":345}}"#;

    #[test]
    fn a_success_gives_its_message_turns_session_tokens_and_cost() {
        let r = read(SUCCESS, now());
        let answer = r.outcome.unwrap();
        assert_eq!(answer.text, "Done: added the test.");
        assert_eq!(answer.turns, Some(3));
        assert_eq!(answer.session.as_deref(), Some("s-1"));
        assert_eq!(
            r.usage,
            Tokens {
                input: 1112,
                output: 345,
                cost_usd: Some(0.0421)
            }
        );
    }

    #[test]
    fn a_stream_and_an_array_end_in_the_same_result() {
        let stream = format!(
            "{}\n{}\n{SUCCESS}\n",
            r#"{"type":"system","subtype":"init","session_id":"s-1"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}"#
        );
        assert_eq!(read(&stream, now()), read(SUCCESS, now()));
        let array = format!(r#"[{{"type":"system"}},{SUCCESS}]"#);
        assert_eq!(read(&array, now()), read(SUCCESS, now()));
    }

    #[test]
    fn is_error_fails_even_when_the_rest_looks_fine() {
        let out = SUCCESS
            .replace(r#""is_error":false"#, r#""is_error":true"#)
            .replace("Done: added the test.", "Credit balance is too low");
        let r = read(&out, now());
        assert_eq!(
            r.outcome,
            Err(Failure::Reported("Credit balance is too low".into()))
        );
        assert_eq!(
            r.usage.cost_usd,
            Some(0.0421),
            "a failure's cost counts too"
        );
        let turns = SUCCESS.replace(r#""subtype":"success""#, r#""subtype":"error_max_turns""#);
        assert!(matches!(
            read(&turns, now()).outcome,
            Err(Failure::Reported(_))
        ));
    }

    #[test]
    fn rate_limits_and_usage_limits_say_how_long_to_wait() {
        let out = r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 429 rate_limit_error, retry after 3 seconds"}"#;
        assert!(matches!(
            read(out, now()).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d == Duration::from_secs(3)
        ));
        let out = r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1000060"}"#;
        assert!(matches!(
            read(out, now()).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d == Duration::from_secs(60)
        ));
        let out = r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|18446744073709551615"}"#;
        assert!(matches!(
            read(out, now()).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d > super::super::MAX_RATE_LIMIT_WAIT
        ));
    }

    #[test]
    fn what_is_not_its_format_is_unreadable() {
        for out in [
            "",
            "Error: not logged in",
            "{\"type\":\"result\"",
            r#"{"type":"assistant"}"#,
        ] {
            assert!(
                matches!(read(out, now()).outcome, Err(Failure::Unreadable(_))),
                "{out:?}"
            );
        }
        let Err(Failure::Unreadable(why)) =
            read(r#"{"type":"system","subtype":"init"}"#, now()).outcome
        else {
            panic!()
        };
        assert!(why.contains("without its `result`"), "{why}");
    }
}
