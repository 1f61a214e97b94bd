#!/usr/bin/env python3
"""A colony `process` agent: one long-lived process, JSON lines on stdio (docs/workflow.md).

Given {"file": PATH}, answers the file's line and word counts and its most common word.
"""
import collections
import json
import sys


def send(message):
    print(json.dumps(message), flush=True)


send({"type": "hello", "protocol": 1})
for line in sys.stdin:
    message = json.loads(line)
    task_id = message["id"]
    payload = message.get("payload") or {}
    path = (payload.get("input") or {}).get("file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, TypeError) as error:
        # A file that is not there will not be there on a retry either.
        send({"type": "error", "id": task_id, "message": f"cannot read {path!r}: {error}", "retryable": False})
        continue
    send({"type": "progress", "id": task_id})
    words = text.split()
    common = collections.Counter(w.lower() for w in words).most_common(1)
    send({
        "type": "result",
        "id": task_id,
        "output": {"file": path, "lines": text.count("\n"), "words": len(words),
                   "most_common": common[0][0] if common else None},
    })
