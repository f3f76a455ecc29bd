"""A stamp-relay webhook receiver in Python (docs/webhooks.md, "Writing a receiver").

It verifies every request with the official Standard Webhooks library,
answers at once and applies the events afterwards on a worker thread, drops
events it has already applied (by CloudEvents id), and applies a record's
version only when its stamp is above the one it holds, so a retry, a redrive
or a replay can never move a record backwards.

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... PORT=8000 STATE_FILE=records.json python3 receiver.py

The "database" here is a JSON file of record id -> {stamp, deleted, data}
per table; replace `apply` with your own upserts.
"""

import json
import os
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

WEBHOOK = Webhook(os.environ["WEBHOOK_SECRET"])
STATE_FILE = os.environ.get("STATE_FILE", "records.json")
work = queue.Queue()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            payload = WEBHOOK.verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)  # not from the relay, or the secret is wrong
            self.end_headers()
            return
        # A batch (application/cloudevents-batch+json) is a JSON array.
        events = payload if isinstance(payload, list) else [payload]
        for event in events:
            work.put(event)
        # Answer fast: the relay times out slow receivers and retries them.
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def table_of(event):
    # type is <prefix>.<resource>.<op>; ping events (io.stamp-relay.ping) have no record.
    parts = event["type"].split(".")
    return parts[-2] if len(parts) >= 3 else None


def apply(state, event):
    """Applies one event; returns False when it was old news."""
    if "updatestamp" not in event:
        return False  # a test ping
    table = state.setdefault(table_of(event), {})
    held = table.get(event["subject"])
    if held is not None and held["stamp"] >= event["updatestamp"]:
        return False  # a duplicate, or older than what we hold
    table[event["subject"]] = {
        "stamp": event["updatestamp"],
        "deleted": event["type"].endswith(".deleted"),
        "snapshot": bool(event.get("snapshot")),
        "data": event.get("data"),
    }
    return True


def worker():
    state, seen = {}, set()
    while True:
        event = work.get()
        if event["id"] in seen:
            continue  # delivered twice (at-least-once): already applied
        seen.add(event["id"])
        if apply(state, event):
            tmp = STATE_FILE + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, STATE_FILE)


if __name__ == "__main__":
    threading.Thread(target=worker, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
