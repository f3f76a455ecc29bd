// A stamp-relay webhook receiver in Node.js (docs/webhooks.md, "Writing a receiver").
//
//   npm install standardwebhooks
//   WEBHOOK_SECRET=whsec_... PORT=8000 node receiver.js
//
// It verifies each request with the official Standard Webhooks library,
// answers at once, then applies the events: duplicates (same CloudEvents id)
// are dropped, and a record's version is applied only when its stamp is
// above the one held, so retries, redrives and replays never move a record
// backwards. Replace `apply` with your own upserts.
const http = require("node:http");
const { Webhook } = require("standardwebhooks");

const webhook = new Webhook(process.env.WEBHOOK_SECRET);
const seen = new Set();
const records = new Map(); // "<resource>/<record id>" -> { stamp, deleted, data }

function apply(event) {
  if (event.updatestamp === undefined) return; // a test ping
  const resource = event.type.split(".").at(-2);
  const key = `${resource}/${event.subject}`;
  const held = records.get(key);
  if (held && held.stamp >= event.updatestamp) return; // old news
  records.set(key, {
    stamp: event.updatestamp,
    deleted: event.type.endsWith(".deleted"),
    data: event.data,
  });
}

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      let payload;
      try {
        payload = webhook.verify(body, req.headers);
      } catch {
        res.writeHead(401).end();
        return;
      }
      res.writeHead(204).end(); // answer first, work after
      setImmediate(() => {
        for (const event of Array.isArray(payload) ? payload : [payload]) {
          if (seen.has(event.id)) continue;
          seen.add(event.id);
          apply(event);
        }
      });
    });
  })
  .listen(Number(process.env.PORT || 8000), "127.0.0.1");
