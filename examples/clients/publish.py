#!/usr/bin/env python3
"""Publish one message to queue_publish, with Python's standard library.

    QUEUE_AUTH_SECRET=... python3 publish.py '{"msg":"hello world"}'

QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
QUEUE_IDEMPOTENT=1 if the server has idempotency_window (then an unknown
outcome is retried too).

Retried, up to 6 attempts: 503 (not written; waits Retry-After), 409 (the
same Idempotency-Key is in progress) and a refused connection (nothing
sent). A 504 or a connection lost before the answer leaves the outcome
unknown: retried only with QUEUE_IDEMPOTENT=1. Any other answer is final.
Exit status: 0 published, 1 not published, 2 outcome unknown.
"""
import http.client
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
    """Returns (status, answer, Retry-After); status 0: refused, None: no answer."""
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
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):  # nothing was sent
            return 0, "connection refused", None
        return None, f"no answer ({e.reason})", None
    except (OSError, http.client.HTTPException) as e:  # sent, then lost
        return None, f"no answer ({e!r})", None


delay, unknown = 0.2, False
for attempt in range(1, 7):
    status, answer, retry_after = send()
    what = f"{status} {answer}" if status else answer
    wait = delay
    if status in (200, 202):
        print(answer)
        sys.exit(0)
    elif status in (None, 504):
        unknown = True
        if not retry_unknown:
            print(f"outcome unknown, not retried (it could be stored twice): {what}", file=sys.stderr)
            sys.exit(2)
    elif status in (503, 409):  # not written, or the same key still in progress
        wait = max(delay, float(retry_after)) if (retry_after or "").isdigit() else delay
    elif status != 0:
        print(f"not published, final answer: {what}", file=sys.stderr)
        sys.exit(1)
    if attempt == 6:
        print(f"gave up after {attempt} attempts: {what}", file=sys.stderr)
        sys.exit(2 if unknown else 1)
    print(f"attempt {attempt}: {what}; retrying in {wait}s", file=sys.stderr)
    time.sleep(wait)
    delay *= 2
