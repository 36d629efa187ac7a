#!/usr/bin/env bash
# Checks examples/monitoring for real: promtool checks the Prometheus
# config and the alert rules and runs their unit tests; then a Prometheus
# scrapes a Caddy with queue_publish (test/monitoring/Caddyfile) while a
# short load runs, with 200, 202, 400, 403, 413, 503 answers and a
# replayed Idempotency-Key, and every query of the dashboard and every
# alert expression is asked of it (go run ./test/monitoring).
#
#   test/monitoring/run.sh <caddy binary>    # Debian's prometheus installed
set -euo pipefail
caddy=${1:?a Caddy binary with queue_publish}
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

promtool check config examples/monitoring/prometheus.yml
promtool check rules examples/monitoring/alerts.yml
(cd examples/monitoring && promtool test rules alerts_test.yml)

export QUEUE_AUTH_SECRET=monitoring-secret XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config"
"$caddy" run --config test/monitoring/Caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)
cat >"$work/prometheus.yml" <<PROM
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/examples/monitoring/alerts.yml
scrape_configs:
  - job_name: caddy
    static_configs:
      - targets: ["127.0.0.1:19180"]
PROM
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
	--web.listen-address=127.0.0.1:19090 >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -s -o /dev/null http://127.0.0.1:18095/orders && break; sleep 0.1; done
for _ in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:19090/-/ready && break; sleep 0.1; done

url=http://127.0.0.1:18095
post() { curl -s -o /dev/null -w '%{http_code}\n' "$@"; }
# Two rounds a few scrapes apart, so that every rate has samples to
# differ.
for round in 1 2; do
	for i in $(seq 50); do post -H "Authorization: $QUEUE_AUTH_SECRET" --data "{\"n\":$i}" $url/orders; done
	for _ in 1 2; do post -H "Authorization: $QUEUE_AUTH_SECRET" -H "Idempotency-Key: same-$round" --data '{"same":true}' $url/orders; done
	for i in $(seq 10); do post -H "Authorization: $QUEUE_AUTH_SECRET" --data "{\"a\":$i}" $url/async; done
	for _ in $(seq 10); do post -H "Authorization: wrong" --data '{}' $url/orders; done
	for _ in $(seq 10); do post -H "Authorization: $QUEUE_AUTH_SECRET" --data 'not json' $url/orders; done
	for _ in $(seq 5); do post -H "Authorization: $QUEUE_AUTH_SECRET" --data "\"$(head -c 2000 /dev/zero | tr '\0' a)\"" $url/orders; done
	for _ in $(seq 10); do post -H "Authorization: $QUEUE_AUTH_SECRET" --data '{}' $url/down; done
	sleep 3
done | sort | uniq -c

for status in 200 202 400 403 413 503; do
	grep -q "code=\"$status\"" <(curl -s http://127.0.0.1:19180/metrics | grep caddy_queue_publish_requests_total) || {
		echo "no $status answer counted"; cat "$work/caddy.log"; exit 1
	}
done
# The checks wait for a scrape after the last request.
go run ./test/monitoring -prometheus http://127.0.0.1:19090 -after "$(date +%s)" || { tail -20 "$work/prometheus.log"; exit 1; }
