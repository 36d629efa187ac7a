// Publish one message to queue_publish, with Node.js's built-in fetch.
//
//   QUEUE_AUTH_SECRET=... node publish.mjs '{"msg":"hello world"}'
//
// QUEUE_URL (default http://localhost:8080/), QUEUE_AUTH_SECRET, and
// QUEUE_IDEMPOTENT=1 if the server has idempotency_window (a 504 is retried
// too). A 503 (not written) is retried with back-off; anything else but 2xx
// is final.
import { randomBytes } from "node:crypto";

const url = process.env.QUEUE_URL ?? "http://localhost:8080/";
const secret = process.env.QUEUE_AUTH_SECRET;
if (!secret) throw new Error("set QUEUE_AUTH_SECRET");
const body = process.argv[2] ?? '{"messages": [{"msg":"hello world"}]}';
const key = randomBytes(16).toString("hex"); // the same key on every attempt
const retryUnknown = process.env.QUEUE_IDEMPOTENT === "1";

async function send() {
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { Authorization: secret, "Idempotency-Key": key, "Content-Type": "application/json" },
      body,
    });
    return { status: res.status, answer: await res.text(), retryAfter: res.headers.get("Retry-After") };
  } catch (err) {
    return { status: 0, answer: String(err.cause ?? err) }; // not answered
  }
}

let delay = 200;
for (let attempt = 1; attempt <= 6; attempt++) {
  const { status, answer, retryAfter } = await send();
  if (status === 200 || status === 202) {
    console.log(answer);
    process.exit(0);
  }
  if (status === 504 && !retryUnknown) {
    console.error(`outcome unknown, not retried (it could be stored twice): ${answer}`);
    process.exit(2);
  }
  if (![0, 409, 503, 504].includes(status)) {
    console.error(`refused (${status}): ${answer}`);
    process.exit(1);
  }
  const wait = Math.max(delay, Number(retryAfter ?? 0) * 1000);
  console.error(`attempt ${attempt}: ${status} ${answer}; retrying in ${wait} ms`);
  await new Promise((resolve) => setTimeout(resolve, wait));
  delay *= 2;
}
console.error("gave up");
process.exit(1);
