"""``docqueue serve --workers N``: several server processes on one port, each with
its own Client, as a deployment runs it."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from test_api import GONE, TOKEN, job_ids, register_gone_model

from docqueue.launcher import ApiServer

pytestmark = [
    pytest.mark.slow,  # starts three server processes
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def server_processes(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (multiprocessing spawns them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_several_server_processes_share_the_port_and_stop_together(settings, tmp_path):
    register_gone_model(settings)
    server = ApiServer(
        settings,
        tmp_path / "serve.log",
        env={"DOCQUEUE_API_TOKENS": json.dumps([TOKEN])},
        args=["--workers", "2"],
    )
    proc, url = server.proc, server.url
    servers: list[int] = []
    try:
        server.wait_ready(90)
        wait_until(lambda: len(server_processes(proc.pid)) == 2, 30, "two server processes")
        servers[:] = server_processes(proc.pid)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = {"task": "classify", "model": GONE}

        def post(i: int) -> httpx.Response:
            # a connection each, so the kernel spreads them over both processes
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                return http.post("/api/documents", json={**body, "text": f"document {i}"})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(24)))
        assert [a.status_code for a in answers] == [202] * 24, [a.text for a in answers]
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            assert sorted(job_ids(http)) == sorted(a.json()["job_id"] for a in answers)
            assert http.get("/api/documents/nosuchjob").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, server.log()
    assert servers and not any(Path(f"/proc/{pid}").exists() for pid in servers)
