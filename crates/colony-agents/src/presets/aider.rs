//! Aider's output under `--no-pretty --no-stream`: plain text, no JSON. After each message to
//! the model it reports `Tokens: 2.4k sent, 312 received. Cost: $0.01 message, $0.03
//! session.`; an error from the model's API is a line naming it (`litellm.RateLimitError:
//! ...`, `Error: ...`), after which aider may retry by itself.
//!
//! A call succeeded when it reported its tokens after its last error line; its answer is the
//! text without the token reports, its cost the sum of the messages' costs.

use super::{Answer, Failure, Reading, Tokens, failure, start_of};

pub(crate) fn read(stdout: &str) -> Reading {
    let mut usage = Tokens::default();
    let mut answer = Vec::new();
    let (mut reported, mut error) = (false, None::<String>);
    for line in stdout.lines() {
        let trimmed = line.trim();
        if let Some(report) = trimmed.strip_prefix("Tokens:") {
            usage.add(tokens(report));
            reported = true;
            error = None;
        } else if is_error_line(trimmed) {
            error = Some(trimmed.to_owned());
            reported = false;
        } else if !is_banner(trimmed) {
            answer.push(line);
        }
    }
    let text = answer.join("\n").trim().to_owned();
    let outcome = match error {
        Some(line) => Err(failure(line.strip_prefix("Error:").unwrap_or(&line).trim())),
        None if reported => Ok(Answer {
            text,
            ..Answer::default()
        }),
        None => Err(Failure::Unreadable(format!(
            "no `Tokens: ...` report of a message to the model ({})",
            start_of(stdout)
        ))),
    };
    Reading { outcome, usage }
}

/// A line saying the model's API failed, or that aider could not apply the model's edits.
fn is_error_line(line: &str) -> bool {
    line.starts_with("Error:")
        || line.starts_with("litellm.") && line.contains("Error")
        || line.starts_with("The API provider")
        || line.contains("did not conform to the edit format")
        || line.starts_with("Only ") && line.contains("reflections allowed, stopping")
        || line.starts_with("Failed to apply edit")
}

/// What aider prints of itself before the model answers.
fn is_banner(line: &str) -> bool {
    [
        "Aider v",
        "Main model:",
        "Model:",
        "Weak model:",
        "Editor model:",
        "Git repo:",
        "Repo-map:",
        "Use /help",
        "https://aider.chat",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

/// `2.4k sent, 312 received. Cost: $0.01 message, $0.03 session.`
fn tokens(report: &str) -> Tokens {
    let amount = |before: &str| -> u64 {
        let Some(end) = report.find(before) else {
            return 0;
        };
        let word = report[..end].trim_end().rsplit(' ').next().unwrap_or("");
        let (digits, scale) = match word.strip_suffix(['k', 'K']) {
            Some(d) => (d, 1e3),
            None => match word.strip_suffix(['m', 'M']) {
                Some(d) => (d, 1e6),
                None => (word, 1.0),
            },
        };
        digits
            .replace(',', "")
            .parse::<f64>()
            .map(|v| (v * scale).round() as u64)
            .unwrap_or(0)
    };
    let cost = report.find("Cost: $").and_then(|at| {
        let rest = &report[at + "Cost: $".len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
            .collect();
        number.replace(',', "").parse::<f64>().ok()
    });
    Tokens {
        input: amount(" sent"),
        output: amount(" received"),
        cost_usd: cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_text_and_the_reports_sum() {
        let out = "Added greet() to src/lib.rs\n\
                   Tokens: 2.4k sent, 312 received. Cost: $0.01 message, $0.01 session.\n\
                   Applied edit to src/lib.rs\n\
                   Tokens: 1,200 sent, 1.5k received. Cost: $0.02 message, $0.03 session.\n";
        let r = read(out);
        assert_eq!(
            r.outcome.unwrap().text,
            "Added greet() to src/lib.rs\nApplied edit to src/lib.rs"
        );
        assert_eq!(r.usage.input, 3600);
        assert_eq!(r.usage.output, 1812);
        assert!((r.usage.cost_usd.unwrap() - 0.03).abs() < 1e-12);
    }

    #[test]
    fn an_error_after_the_last_report_fails_one_before_it_does_not() {
        let limited = "litellm.RateLimitError: AnthropicException - rate limit, try again in 3s\n";
        assert!(matches!(
            read(limited).outcome,
            Err(Failure::RateLimited { after: Some(d), .. }) if d.as_secs() == 3
        ));
        let recovered = format!("{limited}Done.\nTokens: 10 sent, 2 received.\n");
        assert!(read(&recovered).outcome.is_ok());
        assert_eq!(
            read("Error: model gpt-9 does not exist\n").outcome,
            Err(Failure::Reported("model gpt-9 does not exist".into()))
        );
    }

    #[test]
    fn edits_it_could_not_apply_fail_and_its_banner_is_no_answer() {
        let out = "Aider v0.86.1\nMain model: sonnet with diff edit format\nGit repo: .git with 12 files\n\
                   Here is the change.\n\
                   Tokens: 2k sent, 100 received. Cost: $0.01 message, $0.01 session.\n\
                   The LLM did not conform to the edit format.\n\
                   Tokens: 2k sent, 100 received. Cost: $0.01 message, $0.02 session.\n\
                   Only 3 reflections allowed, stopping.\n";
        assert!(
            matches!(read(out).outcome, Err(Failure::Reported(m)) if m.contains("reflections"))
        );
        let ok = "Aider v0.86.1\nModel: gpt-5\nDone.\nTokens: 10 sent, 2 received.\n";
        assert_eq!(read(ok).outcome.unwrap().text, "Done.");
    }

    #[test]
    fn text_without_a_report_is_unreadable() {
        assert!(matches!(
            read("usage: aider [-h]\n").outcome,
            Err(Failure::Unreadable(_))
        ));
    }
}
