#!/usr/bin/env bash
# The load benchmark: Caddy's respond against queue_publish, same binary,
# same wrk load, alternating rounds; see bench/loadbench/main.go.
#
#   bench/run.sh                       # 3 rounds of 10 s a side, 64 connections
#   bench/run.sh -rounds 5 -duration 20s -out report.md
#   bench/run.sh -kafka                # the same on one Apache Kafka node
#
# Needs wrk, kcat and xcaddy (apt-get install wrk kcat;
# go install github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5); -kafka also
# needs Java 17 and Maven.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$(go env GOPATH)/bin"
exec go run ./bench/loadbench "$@"
