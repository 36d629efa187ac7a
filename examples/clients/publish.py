#!/usr/bin/env python3
"""Publish one message to queue_publish, with Python's standard library.

    QUEUE_AUTH_SECRET=... python3 publish.py '{"msg":"hello world"}'

QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
QUEUE_IDEMPOTENT=1 if the server has idempotency_window (a 504 is retried
too). A 503 (not written) is retried with back-off; anything else but 2xx
is final.
"""
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

url = os.environ.get("QUEUE_URL", "http://localhost:8080/")
secret = os.environ["QUEUE_AUTH_SECRET"]
body = (sys.argv[1] if len(sys.argv) > 1 else '{"messages": [{"msg":"hello world"}]}').encode()
key = secrets.token_hex(16)  # the same key on every attempt of this message
retry_unknown = os.environ.get("QUEUE_IDEMPOTENT") == "1"


def send():
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": secret,
        "Idempotency-Key": key,
        "Content-Type": "application/json",
    })
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, res.read().decode(), None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Retry-After")
    except urllib.error.URLError as e:  # not answered: nothing was acknowledged
        return 0, str(e.reason), None


delay = 0.2
for attempt in range(1, 7):
    status, answer, retry_after = send()
    if status in (200, 202):
        print(answer)
        sys.exit(0)
    if status == 504 and not retry_unknown:
        print(f"outcome unknown, not retried (it could be stored twice): {answer}", file=sys.stderr)
        sys.exit(2)
    if status not in (0, 409, 503, 504):
        err = json.loads(answer) if answer.startswith("{") else {}
        print(f"refused ({status}): {err.get('err') or err.get('error') or answer}", file=sys.stderr)
        sys.exit(1)
    wait = max(delay, float(retry_after or 0))
    print(f"attempt {attempt}: {status} {answer}; retrying in {wait}s", file=sys.stderr)
    time.sleep(wait)
    delay *= 2
print(f"gave up: {status} {answer}", file=sys.stderr)
sys.exit(1)
