"""Prometheus metrics and JSON logs, end to end: one real worker process and one
real ``docqueue serve`` for the whole module, real Redis and SQL, both endpoints
scraped over HTTP and read with prometheus_client's own parser."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import PG_URL, TESTS, make_settings, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from test_api import TOKEN, Server, free_port, register_gone_model, serve_env

from docqueue.broker import redis_client
from docqueue.config import Settings
from docqueue.core.overview import known_queues
from docqueue.db import make_engine
from docqueue.db.schema import Base
from docqueue.db.workers import WorkerState
from docqueue.errors import ExitCode
from docqueue.launcher import LocalWorkers, metrics_port_env
from docqueue.logs import JsonFormatter, jobs_extra
from docqueue.producer.client import Client

BACKENDS = ["sqlite"] + ([pytest.param("postgresql", marks=pytest.mark.slow)] if PG_URL else [])
POISON = "POISON: the model cannot digest this one."


@dataclass
class Stack:
    settings: Settings
    client: Client
    api: Server
    worker_metrics: str
    worker_log: Path

    def scrape_api(self, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.api.url}/metrics", headers=headers, timeout=30)


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest,
    redis_server: str,
    tiny_classifier: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One worker (serving ``tiny``, failing on POISON documents once) with its
    metrics port, and one API, both logging JSON lines; for the whole module."""
    tmp = tmp_path_factory.mktemp("metrics")
    redis_client(redis_server).flushdb()
    database = _database(request, tmp)
    settings = make_settings(
        redis_server, database, chunk_size=8, max_attempts=1, log_format="json"
    )
    register_gone_model(settings)
    port = free_port()
    workers = LocalWorkers(
        settings.model_copy(update={"metrics_port": port}),
        {"tiny": tiny_classifier},
        log_dir=tmp,
        extra_env={
            "PYTHONPATH": str(TESTS),
            "DOCQUEUE_RUNNERS": json.dumps({"tiny": "faulty_runners:PoisonClassifier"}),
        },
    )
    api = _serve(settings, tmp)
    client = Client(settings)
    try:
        workers.wait_ready()
        yield Stack(settings, client, api, f"http://127.0.0.1:{port}/metrics", tmp / "worker-0.log")
    finally:
        client.close()
        api.stop()
        workers.kill()


def _database(request: pytest.FixtureRequest, tmp: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp / 'docqueue.db'}"
    url: str = request.getfixturevalue("postgres_database")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(t.name for t in Base.metadata.sorted_tables)}"))
    engine.dispose()
    return url


def _serve(settings: Settings, tmp: Path) -> Server:
    server = Server(settings, tmp / "serve.log", env={"DOCQUEUE_API_TOKENS": json.dumps([TOKEN])})
    return server.wait_ready()


def sample(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``
    (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total


def series(exposition: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(exposition))


def test_made_up_methods_and_paths_add_no_series(stack: Stack):
    """Counted before the token check: 5,000 anonymous requests with made-up methods
    and paths (each made ~17 series, 85,000 in all) fall under one method value and
    one route value."""
    with httpx.Client(base_url=stack.api.url, timeout=30) as anonymous:

        def flood(count: int) -> None:
            for i in range(count):
                method, path = f"X{i}QUERY", f"/made/up/{i}"
                assert anonymous.request(method, "/api/jobs").status_code in (401, 405)
                assert anonymous.get(path).status_code == 404
                assert anonymous.request(method, path).status_code in (404, 405)

        flood(2)  # the first of each kind makes its series
        stack.scrape_api()
        before = stack.scrape_api().text
        flood(5_000 // 3 + 1)
        after = stack.scrape_api().text
    assert series(after) == series(before)
    methods = {
        s.labels["method"]
        for f in text_string_to_metric_families(after)
        if f.name == "docqueue_http_requests"
        for s in f.samples
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    made_up = sample(after, "docqueue_http_requests_total", method="other", route="unmatched")
    assert made_up == 2 + 5_000 // 3 + 1


# A real worker and API for the module: the slow pass (CI runs it).
@pytest.mark.slow
def test_both_endpoints_move_with_the_work_and_agree_with_status(stack: Stack):
    client = stack.client
    before = httpx.get(stack.worker_metrics, timeout=30).text
    assert sample(before, "docqueue_documents_total") == 0
    assert sample(before, "docqueue_worker_info", device="cpu") == 1

    waiting = client.submit_many([f"waits {i}" for i in range(20)], task="classify", model="ghost")
    texts = [f"Document {i} about invoices." for i in range(39)] + [POISON]
    job = client.submit_many(texts, task="classify", model="tiny")
    job.wait(timeout=120)
    broker = redis_client(stack.settings.redis() or "")
    broker.lpush("docqueue.classify.tiny", b"not a message at all")
    wait_until(lambda: client.dead_letter_counts().held == 1, 60, "the dead letter")

    worker = httpx.get(stack.worker_metrics, timeout=30).text
    per_job = {"task": "classify", "model": "tiny"}
    assert sample(worker, "docqueue_documents_total", status="done", **per_job) == 39
    assert sample(worker, "docqueue_documents_total", status="failed", **per_job) == 1
    batches = sample(worker, "docqueue_batch_size_count", **per_job)
    assert batches > 0 and sample(worker, "docqueue_batch_duration_seconds_count") == batches
    # the POISON document's batches failed: the rest ran, each in one batch that worked
    assert sample(worker, "docqueue_batch_size_sum", **per_job) == 39
    assert sample(worker, "docqueue_batch_padded_tokens_sum", **per_job) >= 39
    assert sample(worker, "docqueue_queue_wait_seconds_count", lane="bulk", **per_job) == 39
    assert sample(worker, "docqueue_queue_wait_seconds_sum", **per_job) > 0
    assert sample(worker, "process_resident_memory_bytes") > 0

    assert stack.scrape_api(token=None).status_code == 401
    scraped = stack.scrape_api()
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    api = scraped.text
    assert sample(api, "docqueue_queue_depth_messages", queue="docqueue.classify.tiny") == 0
    assert sample(api, "docqueue_queue_depth_messages", queue="docqueue.interactive.tiny") == 0
    ghost = sample(api, "docqueue_queue_depth_messages", queue="docqueue.classify.ghost")
    assert ghost == 3 == broker.llen("docqueue.classify.ghost")  # 20 documents, 8 a message
    assert sample(api, "docqueue_dead_letters") == 1
    assert sample(api, "docqueue_dead_letters_dropped_total") == 0
    assert sample(api, "docqueue_workers_live") == 1
    assert sample(api, "docqueue_model_workers_live", model="tiny") == 1

    # docqueue status reads the same numbers (Client.overview)
    shown = subprocess.run(
        [sys.executable, "-m", "docqueue", "status"],
        env=serve_env(stack.settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == ExitCode.OK, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["docqueue.classify.ghost", "3"] in lines and ["docqueue.classify.tiny", "0"] in lines
    assert "dead letters: 1 held (limit 10000), 0 dropped" in shown.stdout
    assert "live workers: 1" in shown.stdout
    waiting.cancel()


# A real worker and API for the module: the slow pass (CI runs it).
@pytest.mark.slow
def test_api_requests_are_counted_by_route_and_logged_as_json_with_their_job(stack: Stack):
    # The module's other tests share this API: count what this test adds.
    # (A scrape is counted once it has answered: the next one shows it.)
    route = {"method": "GET", "route": "/api/jobs/{job_id}", "status": "200"}
    unmatched = {"route": "unmatched", "status": "404"}
    before = stack.scrape_api().text
    job = stack.client.submit_many(["one", "two"], task="classify", model="ghost")
    http = stack.api.http()
    assert http.get(f"/api/jobs/{job.id}").status_code == 200
    assert http.get("/api/nowhere").status_code == 404
    api = stack.scrape_api().text

    def added(**labels: str) -> float:
        name = "docqueue_http_requests_total"
        return sample(api, name, **labels) - sample(before, name, **labels)

    assert added(**route) == 1 and added(**unmatched) == 1
    assert sample(api, "docqueue_http_request_duration_seconds_count", route="/metrics") >= 1

    def access_line() -> dict[str, object] | None:
        for line in stack.api.log().splitlines():
            entry = json.loads(line)  # every line is JSON
            if entry.get("path") == f"/api/jobs/{job.id}":
                return dict(entry)
        return None

    wait_until(access_line, 10, "the access line")
    entry = access_line() or {}
    assert entry["job_id"] == job.id and entry["method"] == "GET" and entry["status"] == 200
    assert TOKEN not in stack.api.log()
    job.cancel()


# A real worker and API for the module: the slow pass (CI runs it).
@pytest.mark.slow
def test_worker_lines_are_json_and_name_the_job_they_concern(stack: Stack):
    job = stack.client.submit_many([POISON], task="classify", model="tiny")
    job.wait(timeout=60)
    entries = [json.loads(line) for line in stack.worker_log.read_text().splitlines() if line]
    failed = [e for e in entries if e.get("job_id") == job.id]
    assert failed and "failed (attempt 1 of 1)" in failed[0]["message"]
    assert failed[0]["level"] == "WARNING" and failed[0]["logger"] == "docqueue.worker.compute"


def test_queues_are_those_holding_messages_and_those_live_workers_serve_even_empty():
    live = WorkerState("w", "h", "cpu", {"bart": {"tasks": ["summarize"]}}, 0.0, 0, False)
    waiting = ["docqueue.classify.typo", "docqueue.interactive.m.v2", "docqueue.dead-letters"]
    assert known_queues([live], waiting) == {
        "docqueue.classify.typo": ("typo", "bulk", "classify"),
        "docqueue.interactive.bart": ("bart", "interactive", ""),
        "docqueue.interactive.m.v2": ("m.v2", "interactive", ""),
        "docqueue.summarize.bart": ("bart", "bulk", "summarize"),
    }


def test_json_lines_carry_one_job_or_several():
    formatter = JsonFormatter()
    record = logging.makeLogRecord(
        {"msg": "batch of %d", "args": (2,), "levelname": "INFO", **jobs_extra(["b", "a", "b"])}
    )
    assert json.loads(formatter.format(record))["job_ids"] == ["a", "b"]
    assert jobs_extra(["a"]) == {"job_id": "a"} and jobs_extra([]) == {}
    job = "0123456789abcdef" * 2
    for path in (f"/api/jobs/{job}/results", f"/v1/batches/batch_{job}/cancel", "/metrics"):
        access = logging.makeLogRecord(
            {
                "name": "uvicorn.access",
                "msg": "%s %s %s %s %d",
                "args": ("c", "GET", path, "1.1", 200),
            }
        )
        line = json.loads(formatter.format(access))
        assert line["path"] == path and line.get("job_id") == (
            job if "metrics" not in path else None
        )


def test_each_local_worker_gets_its_own_metrics_port():
    assert metrics_port_env(Settings(), 0) == {}
    based = Settings(metrics_port=9400)
    assert [metrics_port_env(based, i) for i in range(2)] == [
        {"DOCQUEUE_METRICS_PORT": "9400"},
        {"DOCQUEUE_METRICS_PORT": "9401"},
    ]


@pytest.mark.slow
def test_a_metrics_port_in_use_is_one_line_naming_it(redis_url, sqlite_url, tiny_classifier):
    settings = make_settings(redis_url, sqlite_url)  # the port is taken before either is used
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = subprocess.run(
            [sys.executable, "-m", "docqueue", "worker", "--model", f"tiny={tiny_classifier}"],
            env=serve_env(settings, DOCQUEUE_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert started.returncode == ExitCode.SERVICE
    assert f"cannot serve metrics on 127.0.0.1:{port}" in started.stderr
    assert "DOCQUEUE_METRICS_PORT" in started.stderr and "Traceback" not in started.stderr
