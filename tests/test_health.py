"""The health checks docker-compose and Kubernetes call: ``docqueue health`` (with
``--worker`` in a worker's container) and the API's ``GET /health``."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import make_settings
from test_cli import docqueue, no_traceback

from docqueue.config import settings_env
from docqueue.db.workers import beat
from docqueue.health import problem
from docqueue.producer.client import Client


def test_health_needs_the_database_and_redis_and_for_a_worker_its_heartbeat(client: Client):
    assert problem(client) is None
    host = socket.gethostname()
    assert problem(client, host) == (
        f"no live worker on {host} (none beat in the last {client.settings.heartbeat_timeout:g}s)"
    )
    with client.db.begin() as conn:
        beat(
            conn,
            "w1",
            hostname=host,
            pid=1,
            device="cpu",
            models={},
            started_at=time.time(),
            documents=0,
        )
    assert problem(client, host) is None
    assert problem(client, "another-host") is not None
    gone = client.settings.model_copy()
    with Client(gone, redis_url="redis://127.0.0.1:1/0") as cut_off:
        assert (problem(cut_off) or "").startswith("Redis is unreachable: ")


@pytest.mark.slow  # a process start: 4 to 10 s on the loaded 2-core machine
def test_the_health_command_passes_in_a_worker_container(redis_url, sqlite_url, tmp_path):
    """What the compose file's worker health check runs (SQLite only: a process
    start costs seconds here)."""
    # a heartbeat timeout longer than the process takes to start on a loaded machine
    with Client(make_settings(redis_url, sqlite_url, heartbeat_timeout=300)) as client:
        with client.db.begin() as conn:
            beat(
                conn,
                "w1",
                hostname=socket.gethostname(),
                pid=1,
                device="cpu",
                models={},
                started_at=time.time(),
                documents=0,
            )
        result = docqueue("health", "--worker", cwd=tmp_path, env=settings_env(client.settings))
    no_traceback(result)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
