"""A receiver for docqueue's completion webhooks, standard library only:
verifies the signature, drops repeats by delivery id, prints the job's numbers.

    DOCQUEUE_WEBHOOK_SECRET=... python examples/webhook_receiver.py 9000

A real receiver keeps the delivery ids it has handled in its database (a unique
column) instead of a set in memory, and answers 2xx quickly: docqueue retries
anything else, and a delivery that times out counts as failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["DOCQUEUE_WEBHOOK_SECRET"].encode()
seen: set[str] = set()


def signature_ok(body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 -- http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not signature_ok(body, self.headers.get("X-Docqueue-Signature", "")):
            self.send_response(401)
        else:
            delivery = self.headers["X-Docqueue-Delivery"]
            if delivery not in seen:  # at least once: a repeat is answered, not redone
                seen.add(delivery)
                job = json.loads(body)["job"]
                print(f"job {job['id']} {job['state']}: {job['progress']}", flush=True)
            self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
