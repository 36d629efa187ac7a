// Publish one message to queue_publish, with Node.js's built-in fetch.
//
//   QUEUE_AUTH_SECRET=... node publish.mjs '{"msg":"hello world"}'
//
// QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
// QUEUE_IDEMPOTENT=1 if the server has idempotency_window (then an unknown
// outcome is retried too).
//
// Retried, up to 6 attempts: 503 (not written; waits Retry-After), 409 (the
// same Idempotency-Key is in progress) and a refused connection (nothing
// sent). A 504 or a connection lost before the answer leaves the outcome
// unknown: retried only with QUEUE_IDEMPOTENT=1. Any other answer is final.
// Exit status: 0 published, 1 not published, 2 outcome unknown.
import { randomBytes } from "node:crypto";

const url = process.env.QUEUE_URL ?? "http://localhost:8080/";
const secret = process.env.QUEUE_AUTH_SECRET;
if (!secret) throw new Error("set QUEUE_AUTH_SECRET");
const body = process.argv[2] ?? '{"messages": [{"msg":"hello world"}]}';
const key = randomBytes(16).toString("hex"); // the same key on every attempt
const retryUnknown = process.env.QUEUE_IDEMPOTENT === "1";

// send returns the answer; status 0: refused (nothing sent), null: no answer.
async function send() {
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { Authorization: secret, "Idempotency-Key": key, "Content-Type": "application/json" },
      body,
      signal: AbortSignal.timeout(30_000),
    });
    return { status: res.status, answer: await res.text(), retryAfter: res.headers.get("Retry-After") };
  } catch (err) {
    if (err.cause?.code === "ECONNREFUSED") return { status: 0, answer: "connection refused" };
    return { status: null, answer: `no answer (${err.cause ?? err})` };
  }
}

const fail = (code, msg) => {
  console.error(msg);
  process.exit(code);
};

let delay = 200;
let unknown = false;
for (let attempt = 1; ; attempt++) {
  const { status, answer, retryAfter } = await send();
  const what = status ? `${status} ${answer}` : answer;
  let wait = delay;
  if (status === 200 || status === 202) {
    console.log(answer);
    process.exit(0);
  } else if (status === null || status === 504) {
    unknown = true;
    if (!retryUnknown) fail(2, `outcome unknown, not retried (it could be stored twice): ${what}`);
  } else if (status === 503 || status === 409) {
    // not written, or the same key still in progress
    wait = Math.max(delay, 1000 * (Number(retryAfter) || 0));
  } else if (status !== 0) {
    fail(1, `not published, final answer: ${what}`);
  }
  if (attempt === 6) fail(unknown ? 2 : 1, `gave up after ${attempt} attempts: ${what}`);
  console.error(`attempt ${attempt}: ${what}; retrying in ${wait / 1000}s`);
  await new Promise((resolve) => setTimeout(resolve, wait));
  delay *= 2;
}
