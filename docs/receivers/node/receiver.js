// MisarMail webhooks in Node 18+, standard library only.
// WEBHOOK_SECRET=whsec_... PORT=8000 node receiver.js
const crypto = require("node:crypto");
const http = require("node:http");

const KEY = Buffer.from(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
const TOLERANCE_S = 5 * 60;

// Standard Webhooks: base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<raw body>".
function verified(headers, body) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  if (!id || !/^\d+$/.test(timestamp ?? "")) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_S) return false;
  const expected = crypto
    .createHmac("sha256", KEY)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  // One "v1,<base64>" per valid secret, space-separated, while MisarMail rotates a secret.
  return (headers["webhook-signature"] ?? "").split(" ").some((entry) => {
    const [version, signature] = entry.split(",");
    const given = Buffer.from(signature ?? "", "base64");
    return version === "v1" && given.length === expected.length
      && crypto.timingSafeEqual(given, expected);
  });
}

http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes: verify before parsing
    if (req.method !== "POST" || !verified(req.headers, body)) {
      res.writeHead(400).end();
      return;
    }
    const event = JSON.parse(body);
    console.log(`verified ${event.id} ${event.type}`); // deliveries repeat: dedupe on event.id
    res.writeHead(204).end(); // within 10 seconds, or MisarMail retries
  });
}).listen(Number(process.env.PORT ?? 8000), process.env.HOST);
