-- wrk script for bench/run.sh: POSTs the seed's payload with the secret
-- and, when done, prints one JSON line with the figures the script needs.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"messages": [{"msg":"hello world"}]}'
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION") or os.getenv("QUEUE_AUTH_SECRET")

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non2xx":%d,"socket_errors":%d}\n',
		summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
		e.status, e.connect + e.read + e.write + e.timeout))
end
