#!/usr/bin/env python3
"""A member of the team in examples/team.yaml, as a colony `command` agent.

colony hands it the task's payload on stdin: the task's `input`, and a `team` field with its
step, its index among the members asked, and the team's context (the outputs of the steps
before). What it does depends on the step:
  plan    splits FILE's `## ` sections into as many parts as the team has writers
  write   counts the words of its part (by its index) and lists its headings
  review  adds up the writers' counts, counts the whole file itself, and passes the team's
          work only when the two agree (else it fails, and colony gives its role to another)
"""
import json
import sys


def sections(text):
    """The file's `## ` sections, each with its heading and its text."""
    found, heading, lines = [], "(preamble)", []
    for line in text.splitlines():
        if line.startswith("## "):
            found.append((heading, lines))
            heading, lines = line[3:].strip(), []
        lines.append(line)
    found.append((heading, lines))
    return found


payload = json.load(sys.stdin)
team = payload["team"]
path = payload["input"]["file"]
with open(path, encoding="utf-8") as f:
    text = f.read()
step = team["step"]
if step == "plan":
    writers = sum(1 for m in team["members"] if m["role"] == "writer")
    n = len(sections(text))
    # Contiguous parts of near-equal numbers of sections, one per writer.
    bounds = [round(i * n / writers) for i in range(writers + 1)]
    print(json.dumps({"sections": n, "parts": [[bounds[i], bounds[i + 1]] for i in range(writers)]}))
elif step == "write":
    start, end = team["context"]["plan"]["parts"][team["index"]]
    mine = sections(text)[start:end]
    words = sum(len(" ".join(lines).split()) for _, lines in mine)
    print(json.dumps({"part": team["index"], "words": words, "headings": [h for h, _ in mine]}))
elif step == "review":
    parts = team["context"]["write"]
    counted = sum(p["words"] for p in parts)
    actual = len(text.split())
    if counted != actual:
        sys.exit(f"the writers counted {counted} words, and the file has {actual}")
    headings = sum(len(p["headings"]) for p in parts)
    print(f"reviewed: {len(parts)} parts, {headings} sections, {counted} words, counts agree")
else:
    sys.exit(f"teammate.py: no such step {step!r}")
