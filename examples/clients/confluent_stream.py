#!/usr/bin/env python3
"""Streams records to Confluent REST Proxy's v3 produce API, as written for
the REST Proxy: one chunked request to
/v3/clusters/{cluster}/topics/{topic}/records, a record object per chunk,
and each record's delivery report read (one line) before the next record is
sent. It works the same against queue_publish in mode confluent.

    export QUEUE_URL=http://localhost:8082 QUEUE_AUTH_SECRET=...
    python3 examples/clients/confluent_stream.py my-queue one two three

Each value is sent as a STRING record. It prints each report, and exits 0
if every report has error_code 200, else 1. The secret goes as the password
of HTTP Basic credentials (QUEUE_USER, default "client"), as Confluent's
clients send an API key and secret. QUEUE_CLUSTER is the cluster ID of the
path (default "dev"). Python's standard library only.
"""

import base64
import http.client
import json
import os
import sys
import urllib.parse


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def main(topic, values):
    url = urllib.parse.urlsplit(os.environ.get("QUEUE_URL", "http://localhost:8082"))
    credentials = "%s:%s" % (os.environ.get("QUEUE_USER", "client"), os.environ["QUEUE_AUTH_SECRET"])
    path = "%s/v3/clusters/%s/topics/%s/records" % (
        url.path.rstrip("/"), os.environ.get("QUEUE_CLUSTER", "dev"), topic)
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    conn.endheaders()
    # The answer's status comes before any record: the stream is open.
    response = conn.getresponse()
    if response.status != 200:
        print(response.status, response.read().decode(), file=sys.stderr)
        return 1
    failed = 0
    for value in values:
        record = {"key": {"type": "STRING", "data": "confluent_stream"},
                  "value": {"type": "STRING", "data": value}}
        conn.send(chunk(json.dumps(record).encode()))
        line = response.readline()
        if not line:
            print("the stream ended before the report of %r" % value, file=sys.stderr)
            return 1
        report = json.loads(line)
        print(json.dumps(report))
        if report.get("error_code") != 200:
            failed += 1
    conn.send(b"0\r\n\r\n")  # the end of the stream
    rest = response.read()
    if rest.strip():
        print("after the last report: %r" % rest, file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
