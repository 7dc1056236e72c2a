"""``docqueue serve --workers N``: several server processes on one port, each with
its own Client, as a deployment runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from test_api import GONE, TOKEN, free_port, job_ids, register_gone_model, serve_env

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
    port = free_port()
    log = tmp_path / "serve.log"
    env = serve_env(settings, DOCQUEUE_API_TOKENS=json.dumps([TOKEN]))
    argv = [sys.executable, "-m", "docqueue", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    servers: list[int] = []
    try:

        def answering() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answering, 90, "docqueue serve --workers 2 to answer")
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
        assert proc.wait(30) == 0, log.read_text()
    assert servers and not any(Path(f"/proc/{pid}").exists() for pid in servers)
