"""Health checks for containers and load balancers: can this process reach the
database and Redis, and (for a worker's container) is a worker on this host
beating.  ``GET /health`` and ``docqueue health`` both answer from here."""

from __future__ import annotations

import time

from docqueue.config import redact
from docqueue.db.engine import ping
from docqueue.db.workers import every_worker
from docqueue.errors import one_line
from docqueue.producer.client import Client


def problem(client: Client, worker_host: str | None = None) -> str | None:
    """What is wrong, in one line, or None when healthy.  ``worker_host``: also
    require a live worker heartbeat from that host name."""
    try:
        with client.db.connect() as conn:
            ping(conn)
            workers = every_worker(conn) if worker_host is not None else []
    except Exception as exc:
        return f"the database is unreachable: {redact(one_line(exc))}"
    try:
        client.redis.ping()
    except Exception as exc:
        return f"Redis is unreachable: {redact(one_line(exc))}"
    if worker_host is None:
        return None
    now, timeout = time.time(), client.settings.heartbeat_timeout
    if not any(w.hostname == worker_host and w.alive(now, timeout) for w in workers):
        return f"no live worker on {worker_host} (none beat in the last {timeout:g}s)"
    return None
