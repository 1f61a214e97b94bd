#!/usr/bin/env python3
"""A stand-in for a coding-agent CLI, for colony's tests: it prints what the real CLI prints.

Called as `claude`, `codex`, `gemini`, `aider` or `opencode` (its file name says which), it reads
the prompt from stdin and answers in that CLI's documented output format. Markers in the prompt
pick a case:

  [error]         the CLI reports an error in its output and exits 0
  [exit]          it exits 2 with a message on stderr and nothing on stdout
  [rate-limit N]  its first N calls in this folder are rate-limited ("try again in 0.05s")
  [hang]          it never answers (its pid in .fake-pid)
  [huge]          it prints more than 16 MiB
  [garbage]       it prints what is not its format, and exits 0
  [partial]       its stream ends before its last event, exit 0
  [echo-args]     its answer is its arguments
  [write NAME]    it writes NAME in its working folder (as an agent that edits files)

In a git worktree (`.git` is a file) it writes `fake-<cli>-change.txt`, as an agent that
implements; asked to "approve or reject", it answers `approve`.

`--version` prints `$FAKE_CLI_VERSION`, else a recent version.
"""
import json
import os
import re
import sys
import time

CLI = os.path.basename(sys.argv[0])
VERSIONS = {"claude": "2.0.14 (Claude Code)", "codex": "codex-cli 0.46.0", "gemini": "0.9.0",
            "aider": "aider 0.86.1", "opencode": "0.15.8"}


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")


def main():
    if "--version" in sys.argv[1:]:
        print(os.environ.get("FAKE_CLI_VERSION", VERSIONS.get(CLI, "1.0.0")))
        return 0
    prompt = sys.stdin.read()
    if "[hang]" in prompt:
        with open(".fake-pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)
    if "[exit]" in prompt:
        sys.stderr.write("fatal: the fake CLI was told to fail\n")
        return 2
    if "[huge]" in prompt:
        sys.stdout.write("x" * (17 << 20))
        return 0
    if "[garbage]" in prompt:
        sys.stdout.write("<html>502 Bad Gateway</html>\n")
        return 0
    for name in re.findall(r"\[write ([A-Za-z0-9_.-]+)\]", prompt):
        with open(name, "w") as f:
            f.write("written by the fake %s\n" % CLI)
    limit = re.search(r"\[rate-limit (\d+)\]", prompt)
    if limit:
        state = ".fake-%s-calls" % CLI
        calls = int(open(state).read()) if os.path.exists(state) else 0
        with open(state, "w") as f:
            f.write(str(calls + 1))
        if calls < int(limit.group(1)):
            return rate_limited()
    if "[error]" in prompt:
        return reported_error()
    if os.path.isfile(".git"):
        # In a git worktree, as an agent that implements: it changes a file.
        with open("fake-%s-change.txt" % CLI, "w") as f:
            f.write(prompt)
    if "[echo-args]" in prompt:
        answer = " ".join(sys.argv[1:])
    elif "approve or reject" in prompt:
        answer = "approve"
    else:
        answer = "done: " + prompt.strip()[:60]
    return success(answer, "[partial]" in prompt, len(prompt.split()))


def success(answer, partial, words):
    if CLI == "claude":
        result = {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 5,
                  "num_turns": 2, "result": answer, "session_id": "fake-session",
                  "total_cost_usd": 0.0125,
                  "usage": {"input_tokens": words, "cache_read_input_tokens": 100,
                            "output_tokens": 50}}
        if "stream-json" in sys.argv or partial:
            out({"type": "system", "subtype": "init", "session_id": "fake-session"})
            out({"type": "assistant", "message": {"content": [{"type": "text", "text": answer}]}})
            if not partial:
                out(result)
        else:
            out(result)
    elif CLI == "codex":
        out({"type": "thread.started", "thread_id": "fake-thread"})
        out({"type": "turn.started"})
        out({"type": "item.completed",
             "item": {"id": "item_0", "type": "agent_message", "text": answer}})
        if not partial:
            out({"type": "turn.completed",
                 "usage": {"input_tokens": 1000 + words, "cached_input_tokens": 0,
                           "output_tokens": 200}})
    elif CLI == "gemini":
        # Pretty-printed, as gemini prints it.
        text = json.dumps({"response": answer, "stats": {"models": {"gemini-2.5-pro": {
            "tokens": {"prompt": 500 + words, "candidates": 40, "thoughts": 10, "total": 550}}}}},
            indent=2)
        sys.stdout.write(text[: len(text) // 2] if partial else text + "\n")
    elif CLI == "aider":
        print(answer)
        if not partial:
            print("Tokens: 1.5k sent, 250 received. Cost: $0.01 message, $0.01 session.")
    elif CLI == "opencode":
        out({"type": "step_start", "sessionID": "ses_fake", "part": {"type": "step-start"}})
        out({"type": "text", "sessionID": "ses_fake", "part": {"type": "text", "text": answer}})
        if not partial:
            out({"type": "step_finish", "sessionID": "ses_fake",
                 "part": {"type": "step-finish", "reason": "stop", "cost": 0.02,
                          "tokens": {"input": 300, "output": 60, "reasoning": 0,
                                     "cache": {"read": 0, "write": 0}}}})
    else:
        sys.stderr.write("fake_cli.py: unknown CLI %r\n" % CLI)
        return 127
    return 0


def reported_error():
    message = "the fake CLI reports a failure"
    if CLI == "claude":
        out({"type": "result", "subtype": "error_during_execution", "is_error": True,
             "result": message, "total_cost_usd": 0.001, "usage": {"input_tokens": 10,
                                                                     "output_tokens": 1}})
    elif CLI == "codex":
        out({"type": "thread.started", "thread_id": "fake-thread"})
        out({"type": "turn.failed", "error": {"message": message}})
    elif CLI == "gemini":
        # A failure goes to stderr, pretty-printed, and the exit code says so.
        sys.stderr.write(json.dumps({"error": {"type": "FatalToolExecutionError",
                                               "message": message, "code": 1}}, indent=2) + "\n")
        return 1
    elif CLI == "aider":
        print("Error: " + message)
    elif CLI == "opencode":
        out({"type": "error", "sessionID": "ses_fake",
             "error": {"name": "UnknownError", "data": {"message": message}}})
    return 0


def rate_limited():
    message = "429 Too Many Requests: rate limit reached, try again in 0.05s"
    if CLI == "claude":
        out({"type": "result", "subtype": "success", "is_error": True,
             "result": "API Error: " + message, "total_cost_usd": 0})
        return 1
    if CLI == "codex":
        out({"type": "thread.started", "thread_id": "fake-thread"})
        out({"type": "error", "message": message})
        out({"type": "turn.failed", "error": {"message": message}})
        return 1
    if CLI == "gemini":
        sys.stderr.write(json.dumps({"error": {"type": "ApiError", "message": message,
                                               "code": 429}}, indent=2) + "\n")
        return 1
    if CLI == "aider":
        print("litellm.RateLimitError: " + message)
        return 0
    if CLI == "opencode":
        out({"type": "error", "sessionID": "ses_fake",
             "error": {"name": "APIError", "data": {"message": message, "statusCode": 429}}})
        return 1
    return 127


if __name__ == "__main__":
    sys.exit(main())
