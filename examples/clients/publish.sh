#!/usr/bin/env bash
# Publish one message to queue_publish with curl.
#
#   QUEUE_AUTH_SECRET=... ./publish.sh '{"msg":"hello world"}'
#
# QUEUE_URL                where queue_publish listens (default http://localhost:8080/)
# QUEUE_AUTH_SECRET        the shared secret
# QUEUE_SIGNATURE_HEADER   if set (e.g. X-Hub-Signature-256), sign the body with
#                          the secret (HMAC-SHA256, openssl) instead of sending it
# QUEUE_IDEMPOTENT=1       the server has idempotency_window: a 504 is retried too
#
# A 503 (not written) is retried with back-off; a 504 (outcome unknown) only
# when the server deduplicates by Idempotency-Key; anything else is final.
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

delay=0.2
for attempt in 1 2 3 4 5 6; do
	answer=$(curl -sS -o - -w '\n%{http_code}' "${auth[@]}" -H "Idempotency-Key: $key" \
		-H 'Content-Type: application/json' --data-binary "$body" "$url") || answer=$'\n000'
	status=${answer##*$'\n'}
	answer=${answer%$'\n'*}
	case $status in
	200 | 202)
		echo "$answer"
		exit 0
		;;
	503 | 409 | 000) ;; # not written (or not answered, or the first try still running): retry
	504)
		if [ "${QUEUE_IDEMPOTENT:-}" != 1 ]; then
			echo "outcome unknown, not retried (it could be stored twice): $answer" >&2
			exit 2
		fi
		;;
	*)
		echo "refused ($status): $answer" >&2
		exit 1
		;;
	esac
	echo "attempt $attempt: $status $answer; retrying in ${delay}s" >&2
	sleep "$delay"
	delay=$(awk "BEGIN {print $delay * 2}")
done
echo "gave up: $status $answer" >&2
exit 1
