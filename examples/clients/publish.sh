#!/usr/bin/env bash
# Publish one message to queue_publish with curl (7.84 or later).
#
#   QUEUE_AUTH_SECRET=... ./publish.sh '{"msg":"hello world"}'
#
# QUEUE_URL                where queue_publish listens (default http://localhost:8080/)
# QUEUE_AUTH_SECRET        the shared secret
# QUEUE_SIGNATURE_HEADER   if set (e.g. X-Hub-Signature-256), sign the body with
#                          the secret (HMAC-SHA256, openssl) instead of sending it
# QUEUE_IDEMPOTENT=1       the server has idempotency_window: an unknown outcome
#                          (504, or no answer) is retried too
#
# Retried, up to 6 attempts: 503 (not written; waits Retry-After), 409 (the
# same Idempotency-Key is in progress) and a refused connection (nothing
# sent). A 504 or a connection lost before the answer leaves the outcome
# unknown: retried only with QUEUE_IDEMPOTENT=1. Any other answer is final.
# Exit status: 0 published, 1 not published, 2 outcome unknown.
set -euo pipefail

url=${QUEUE_URL:-http://localhost:8080/}
secret=${QUEUE_AUTH_SECRET:?set QUEUE_AUTH_SECRET}
body=${1:-'{"messages": [{"msg":"hello world"}]}'}
key=$(openssl rand -hex 16) # the same key on every attempt of this message

auth=(-H "Authorization: $secret")
if [ -n "${QUEUE_SIGNATURE_HEADER:-}" ]; then
	sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
	auth=(-H "$QUEUE_SIGNATURE_HEADER: sha256=$sig")
fi

delay=0.2 unknown=0
for attempt in 1 2 3 4 5 6; do
	rc=0
	out=$(curl -sS --max-time 30 -w '\n%{http_code} %header{retry-after}' "${auth[@]}" \
		-H "Idempotency-Key: $key" -H 'Content-Type: application/json' \
		--data-binary "$body" "$url") || rc=$?
	read -r status retry_after <<<"${out##*$'\n'}"
	answer=${out%$'\n'*}
	what="$status $answer" wait=$delay
	if [ "$rc" = 7 ]; then # could not connect: nothing was sent
		what="connection refused"
	elif [ "$rc" != 0 ] || [ "$status" = 504 ]; then # sent, but no answer or 504
		[ "$rc" = 0 ] || what="no answer (curl exit $rc)"
		unknown=1
		if [ "${QUEUE_IDEMPOTENT:-}" != 1 ]; then
			echo "outcome unknown, not retried (it could be stored twice): $what" >&2
			exit 2
		fi
	else
		case $status in
		200 | 202)
			echo "$answer"
			exit 0
			;;
		503 | 409) # not written, or the same key still in progress
			wait=$(awk -v d="$delay" -v r="${retry_after:-0}" 'BEGIN { print (r + 0 > d ? r + 0 : d) }') ;;
		*)
			echo "not published, final answer: $what" >&2
			exit 1
			;;
		esac
	fi
	if [ "$attempt" = 6 ]; then
		echo "gave up after $attempt attempts: $what" >&2
		exit $((unknown ? 2 : 1))
	fi
	echo "attempt $attempt: $what; retrying in ${wait}s" >&2
	sleep "$wait"
	delay=$(awk -v d="$delay" 'BEGIN { print d * 2 }')
done
