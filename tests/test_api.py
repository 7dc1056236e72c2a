"""The HTTP API as a backend uses it: a real ``docqueue serve`` process, real workers,
real Redis and SQL (SQLite and PostgreSQL), httpx as the client."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until

from docqueue.config import Settings, settings_env
from docqueue.db import make_engine, migrate
from docqueue.db.workers import beat
from docqueue.errors import ExitCode
from docqueue.launcher import ApiServer, free_port

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "test-token-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: A model that a worker served once and stopped serving: jobs for it are accepted
#: and wait (no worker process needed), which lets them be cancelled untouched.
GONE = "ghost"


class Server(ApiServer):
    """A ``docqueue serve`` process, with httpx clients that close with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients: list[httpx.Client] = []

    def http(self, token: str | None = TOKEN) -> httpx.Client:
        """A client sending ``token`` (closed with the server)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self.clients.append(client)
        return client

    def stop(self, grace: float = 15.0) -> int:
        for client in self.clients:
            client.close()
        return super().stop(grace)


def serve_env(settings: Settings, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    return {**base, **settings_env(settings), **extra}


@pytest.fixture
def serve(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``serve(**env)``: a ``docqueue serve`` process on a free port with the test's
    settings (plus ``env``, e.g. DOCQUEUE_API_TOKENS), up and answering."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        log_path = tmp_path / f"serve-{len(started)}.log"
        server = Server(settings, log_path, env={"DOCQUEUE_API_TOKENS": json.dumps([TOKEN]), **env})
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def register_gone_model(settings: Settings) -> None:
    """A heartbeat row of a stopped worker that served :data:`GONE` (what a worker
    leaves behind when it stops)."""
    engine = make_engine(settings.database())
    migrate(engine)
    with engine.begin() as conn:
        beat(
            conn,
            "stopped-worker",
            hostname="elsewhere",
            pid=1,
            device="cpu",
            models={GONE: {"tasks": ["classify"]}},
            started_at=time.time() - 60,
            documents=0,
            stopped=True,
        )
    engine.dispose()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error body of a refusal, after checking its status and shape."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param"} and "\n" not in error["message"]
    return error


def wait_finished(http: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def finished() -> bool:
        state.update(http.get(f"/api/jobs/{job_id}").json())
        return state["state"] != "running"

    wait_until(finished, timeout, f"job {job_id} to finish")
    return state


def all_pages(http: httpx.Client, job_id: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = http.get(f"/api/jobs/{job_id}/results", params=params).json()
        assert len(page["data"]) <= limit
        rows += page["data"]
        if page["next_cursor"] is None:
            return rows
        params["cursor"] = page["next_cursor"]


def job_ids(http: httpx.Client) -> list[str]:
    listed = http.get("/api/jobs", params={"interactive": True, "limit": 1000}).json()
    return [job["id"] for job in listed["data"]]


# --- jobs end to end ---------------------------------------------------------------------


def test_jobs_from_a_list_and_from_files_give_one_result_per_document(
    serve, start_worker, tiny_classifier, tmp_path
):
    start_worker({"tiny": tiny_classifier})
    server = serve()
    http = server.http()

    documents: list[Any] = [f"Document number {i} about files." for i in range(40)]
    documents += [{"id": f"mine-{i}", "text": f"Another one, {i}."} for i in range(5)]
    documents.append("")  # refused at the door: an error row, the job goes on
    created = http.post(
        "/api/jobs",
        json={"task": "classify", "model": "tiny", "name": "nightly", "documents": documents},
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["progress"]["total"] == 46 and job["errors"]["refused"] == 1

    status = wait_finished(http, job["id"])
    assert status["state"] == "finished"
    assert status["progress"] == {
        "total": 46,
        "enqueued": 46,
        "done": 45,
        "failed": 1,
        "cancelled": 0,
        "pending": 0,
        "reused": 0,
    }
    assert status["docs_per_second"] > 0 and status["eta_seconds"] is None
    assert status["errors"] == {"failed": 1, "refused": 1, "on_workers": 0}

    rows = all_pages(http, job["id"], limit=7)
    assert [row["seq"] for row in rows] == list(range(46))  # each document exactly once
    assert all(row["status"] == "done" and row["label"] for row in rows[:45])
    beyond = http.get(f"/api/jobs/{job['id']}/results", params={"cursor": "9" * 20})
    assert beyond.json() == {"data": [], "next_cursor": None}
    assert [row["id"] for row in rows[40:45]] == [f"mine-{i}" for i in range(5)]
    assert rows[45] == {"id": None, "seq": 45, "status": "failed", "error": "empty document"}

    lines = [f'{{"id": "j{i}", "text": "Line {i} of the file."}}' for i in range(30)]
    lines[2] = '{"id": "j2", "text": '  # line 3: malformed
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    with jsonl.open("rb") as f:
        uploaded = http.post(
            "/api/jobs/upload",
            files={"file": ("docs.jsonl", f, "application/octet-stream")},
            data={"task": "classify", "model": "tiny"},
        )
    assert uploaded.status_code == 201, uploaded.text
    from_jsonl = uploaded.json()
    assert from_jsonl["source"] == "docs.jsonl"
    wait_finished(http, from_jsonl["id"])
    download = http.get(f"/api/jobs/{from_jsonl['id']}/results.jsonl")
    assert download.headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in download.text.splitlines()]
    assert [row["seq"] for row in rows] == list(range(30))
    assert rows[2]["status"] == "failed"
    assert rows[2]["error"].startswith("line 3: malformed JSON")
    assert [row["id"] for row in rows if row["status"] == "done"] == [
        f"j{i}" for i in range(30) if i != 2
    ]

    table = "key,body\n" + "".join(f"k{i},Row {i} in a table.\n" for i in range(25))
    uploaded = http.post(
        "/api/jobs/upload",
        files={"file": ("table.csv", table.encode(), "text/csv")},
        data={"task": "classify", "model": "tiny", "text_field": "body", "id_field": "key"},
    )
    assert uploaded.status_code == 201, uploaded.text
    from_csv = uploaded.json()
    wait_finished(http, from_csv["id"])
    download = http.get(f"/api/jobs/{from_csv['id']}/results.csv")
    assert download.headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["id"] for r in records] == [f"k{i}" for i in range(25)]
    assert {r["status"] for r in records} == {"done"} and all(r["label"] for r in records)
    assert list(records[0])[:5] == ["id", "seq", "status", "label", "score"]

    listed = http.get("/api/jobs").json()["data"]
    assert [j["id"] for j in listed] == [from_csv["id"], from_jsonl["id"], job["id"]]
    assert {j["state"] for j in listed} == {"finished"}
    named = http.get("/api/jobs", params={"name": "nightly"}).json()["data"]
    assert [j["id"] for j in named] == [job["id"]]

    models = http.get("/api/models").json()["data"]
    assert models == [{"name": "tiny", "tasks": ["classify"], "workers": 1, "devices": ["cpu"]}]


def test_one_document_submitted_and_waited_for(serve, start_worker, tiny_classifier):
    start_worker({"tiny": tiny_classifier})
    http = serve().http()
    body = {"task": "classify", "model": "tiny", "text": "The site is down again.", "id": 7}

    answer = http.post("/api/documents", params={"wait": 30}, json=body)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["status"] == "done"
    assert document["result"]["id"] == "7" and document["result"]["label"]
    again = http.get(f"/api/documents/{document['job_id']}")
    assert again.status_code == 200 and again.json()["result"] == document["result"]

    # An interactive job is listed only when asked for, like `docqueue jobs --interactive`.
    assert http.get("/api/jobs").json()["data"] == []
    assert job_ids(http) == [document["job_id"]]

    refused = http.post("/api/documents", json={**body, "text": "   "})
    assert error_of(refused, 422)["message"] == "document is whitespace only"
    cannot = error_of(http.post("/api/documents", json={**body, "task": "summarize"}), 422)
    assert cannot == {
        "message": "model tiny cannot summarize; it can do: classify",
        "type": "invalid_request",
        "param": "task",
    }
    too_long = http.post("/api/documents", params={"wait": 3600}, json=body)
    assert error_of(too_long, 422)["param"] == "wait"
    assert job_ids(http) == [document["job_id"]]


# --- managing jobs -------------------------------------------------------------------------


def test_cancel_and_delete(serve, settings):
    register_gone_model(settings)
    http = serve().http()
    created = http.post(
        "/api/jobs", json={"task": "classify", "model": GONE, "documents": ["a", "b", "c"]}
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["state"] == "running" and job["workers"] == 0
    assert job["warning"].startswith(f"no live worker serves model {GONE} (last seen ")

    not_one = http.get(f"/api/documents/{job['id']}")
    assert "is a job of many documents" in error_of(not_one, 404)["message"]

    cancelled = http.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.json() == {"id": job["id"], "cancelled": 3, "state": "cancelled"}
    assert http.post(f"/api/jobs/{job['id']}/cancel").json()["cancelled"] == 0
    status = http.get(f"/api/jobs/{job['id']}").json()
    assert status["state"] == "cancelled" and status["progress"]["cancelled"] == 3
    rows = http.get(f"/api/jobs/{job['id']}/results").json()["data"]
    assert [row["status"] for row in rows] == ["cancelled"] * 3
    assert http.get("/api/jobs", params={"state": "cancelled"}).json()["data"][0]["id"] == job["id"]

    deleted = http.delete(f"/api/jobs/{job['id']}")
    assert deleted.json() == {"id": job["id"], "documents": 3}
    for gone in (
        http.get(f"/api/jobs/{job['id']}"),
        http.get(f"/api/jobs/{job['id']}/results"),
        http.get(f"/api/jobs/{job['id']}/results.csv"),
        http.post(f"/api/jobs/{job['id']}/cancel"),
        http.delete(f"/api/jobs/{job['id']}"),
    ):
        assert error_of(gone, 404)["message"] == f"no job {job['id']}"
    assert job_ids(http) == []


def test_idempotency_keys_return_the_first_job_and_refuse_another_body(serve, settings):
    register_gone_model(settings)
    server = serve()
    http = server.http()
    body = {"task": "classify", "model": GONE, "documents": ["a", "b"], "name": "n"}

    first = http.post("/api/jobs", json=body, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    retry = http.post("/api/jobs", json=body, headers={"Idempotency-Key": "key-1"})
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["progress"]["total"] == 2  # nothing added twice
    other = http.post(
        "/api/jobs", json={**body, "documents": ["a", "c"]}, headers={"Idempotency-Key": "key-1"}
    )
    error = error_of(other, 422)
    assert error["param"] == "Idempotency-Key"
    assert error["message"].startswith("idempotency key 'key-1' was used for another request")
    # The same key on another route is another request.
    single = {"task": "classify", "model": GONE, "text": "a"}
    elsewhere = http.post("/api/documents", json=single, headers={"Idempotency-Key": "key-1"})
    assert error_of(elsewhere, 422)["param"] == "Idempotency-Key"

    document = http.post("/api/documents", json=single, headers={"Idempotency-Key": "key-2"})
    assert document.status_code == 202 and document.json()["status"] == "pending"
    again = http.post("/api/documents", json=single, headers={"Idempotency-Key": "key-2"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["job_id"] == document.json()["job_id"]

    upload = {"file": ("docs.jsonl", b'{"text": "x"}\n{"text": "y"}\n', "application/x-ndjson")}
    fields = {"task": "classify", "model": GONE}
    k3 = {"Idempotency-Key": "k3"}
    one = http.post("/api/jobs/upload", files=upload, data=fields, headers=k3)
    two = http.post("/api/jobs/upload", files=upload, data=fields, headers=k3)
    assert (one.status_code, two.status_code) == (201, 200)
    assert one.json()["id"] == two.json()["id"]
    changed = {"file": ("docs.jsonl", b'{"text": "x"}\n{"text": "z"}\n', "application/x-ndjson")}
    refused = http.post("/api/jobs/upload", files=changed, data=fields, headers=k3)
    assert error_of(refused, 422)["param"] == "Idempotency-Key"

    # Retries racing each other: one job, and every one of them gets it.
    race = {**body, "name": "race"}
    clients = [server.http() for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda c: c.post("/api/jobs", json=race, headers={"Idempotency-Key": "key-race"}),
                clients,
            )
        )
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(http.get("/api/jobs", params={"name": "race"}).json()["data"]) == 1
    assert len(job_ids(http)) == 4


# --- tokens ----------------------------------------------------------------------------


def test_tokens_are_required_rotatable_and_never_logged(serve, settings, tmp_path):
    server = serve(DOCQUEUE_API_TOKENS=f"{TOKEN},{OTHER_TOKEN}")
    for token in (TOKEN, OTHER_TOKEN):  # either of two: one can be rotated out
        assert server.http(token).get("/api/models").status_code == 200
    missing = server.http(None).get("/api/models")
    assert error_of(missing, 401)["type"] == "authentication"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = server.http("not-the-token-at-all-000").get("/api/jobs")
    assert "not-the-token" not in error_of(wrong, 401)["message"]
    in_url = server.http(None).get("/api/jobs", params={"token": TOKEN[:4]})
    assert in_url.status_code == 401  # a token is only ever read from the header
    no_token = server.http(None).post(
        "/api/jobs", json={"task": "classify", "model": "x", "documents": ["a"]}
    )
    assert no_token.status_code == 401
    assert server.http(None).get("/openapi.json").status_code == 401  # a map: behind the token
    server.stop()
    log = server.log()
    assert "GET /api/models" in log
    assert TOKEN not in log and OTHER_TOKEN not in log


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(settings, tmp_path):
    def serve_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "docqueue", "serve", *args],
            env=serve_env(settings, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    for host in ("0.0.0.0", "::"):
        refused = serve_cli("--host", host, "--port", str(free_port()))
        assert refused.returncode == ExitCode.USAGE
        assert f"refusing to listen on {host} without a token" in refused.stderr
        assert "DOCQUEUE_API_TOKENS" in refused.stderr and "Traceback" not in refused.stderr
    weak = serve_cli("--port", str(free_port()), DOCQUEUE_API_TOKENS="secret-ish")
    assert weak.returncode == ExitCode.USAGE and "fewer than 16 characters" in weak.stderr
    assert "secret-ish" not in weak.stderr + weak.stdout


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_is_a_clear_4xx_and_leaves_nothing(serve, settings):
    register_gone_model(settings)
    server = serve(DOCQUEUE_API_MAX_UPLOAD_BYTES="4096", DOCQUEUE_API_MAX_REQUEST_BYTES="2048")
    http = server.http()
    job = {"task": "classify", "model": GONE, "documents": ["a"]}

    unknown = error_of(http.post("/api/jobs", json={**job, "model": "nope"}), 422)
    assert unknown["param"] == "model"
    assert unknown["message"] == (
        "unknown model nope: no worker has served it and DOCQUEUE_MODELS does not declare "
        f"it (known models: {GONE})"
    )
    params = error_of(http.post("/api/jobs", json={**job, "params": {"labels": ["one"]}}), 422)
    assert params["param"] == "params" and "between 2 and 256 labels" in params["message"]
    extra = error_of(http.post("/api/jobs", json={**job, "params": {"beams": 3}}), 422)
    assert extra["message"] == "classify: beams: not a parameter of this task"
    task = error_of(http.post("/api/jobs", json={**job, "task": "transcribe"}), 422)
    assert task["param"] == "task" and "'classify'" in task["message"]
    empty = error_of(http.post("/api/jobs", json={**job, "documents": []}), 422)
    assert empty["param"] == "documents"
    shape = error_of(http.post("/api/jobs", json={**job, "documents": [{"id": "x"}]}), 422)
    assert shape["message"].startswith("documents.0") and "text" in shape["message"]
    malformed = http.post(
        "/api/jobs", content=b'{"task": ', headers={"Content-Type": "application/json"}
    )
    assert error_of(malformed, 422)["message"].startswith("body: malformed JSON")
    blank = error_of(http.post("/api/jobs", json={**job, "documents": ["", " "]}), 422)
    assert blank["message"] == (
        "all 2 documents were refused (document 0: empty document); nothing was queued"
    )

    fields = {"task": "classify", "model": GONE}
    no_column = http.post(
        "/api/jobs/upload", files={"file": ("t.csv", b"body\nhello\n", "text/csv")}, data=fields
    )
    message = error_of(no_column, 422)["message"]
    assert message == "t.csv: no column 'text' (columns: body)"  # the upload's name, not a path
    unreadable = http.post(
        "/api/jobs/upload",
        files={"file": ("bad.jsonl", b'{"text": \nnot json\n', "application/x-ndjson")},
        data=fields,
    )
    assert error_of(unreadable, 422)["message"].startswith(
        "all 2 documents were refused (document 0: line 1: malformed JSON"
    )
    unknown_format = http.post(
        "/api/jobs/upload", files={"file": ("docs.xlsx", b"PK", "application/zip")}, data=fields
    )
    assert "unknown format" in error_of(unknown_format, 422)["message"]
    no_file = http.post("/api/jobs/upload", data=fields, files={"other": ("x", b"1")})
    assert error_of(no_file, 422)["param"] == "other"
    bad_params = http.post(
        "/api/jobs/upload",
        files={"file": ("d.jsonl", b'{"text": "x"}\n')},
        data={**fields, "params": "{nope"},
    )
    assert error_of(bad_params, 422)["message"].startswith("params: malformed JSON")

    big = b'{"text": "' + b"x" * 5000 + b'"}\n'
    too_big = http.post("/api/jobs/upload", files={"file": ("big.jsonl", big)}, data=fields)
    error = error_of(too_big, 413)
    assert error["message"] == (
        "upload over the limit of 4,096 bytes (DOCQUEUE_API_MAX_UPLOAD_BYTES)"
    )

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for _ in range(20):
            yield b'{"text": "' + b"y" * 500 + b'"}\n'
        yield b"\r\n--b--\r\n"

    streamed = http.post(
        "/api/jobs/upload",
        content=chunked(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert error_of(streamed, 413)["type"] == "too_large"
    large_json = http.post("/api/jobs", json={**job, "documents": ["z" * 3000]})
    assert "DOCQUEUE_API_MAX_REQUEST_BYTES" in error_of(large_json, 413)["message"]

    assert error_of(http.get("/api/jobs/" + "0" * 32), 404)["message"] == f"no job {'0' * 32}"
    assert error_of(http.get("/api/jobs/x/results", params={"cursor": "z"}), 404)
    assert error_of(http.get("/api/nothing"), 404)["message"] == "Not Found: GET /api/nothing"
    assert error_of(http.get("/api/jobs", params={"state": "lost"}), 422)["param"] == "state"

    assert job_ids(http) == []  # nothing half-created
    assert "Traceback" not in server.log()


def test_an_idempotency_digest_takes_a_lone_surrogate():
    """JSON can carry a lone surrogate (``"\\ud800"``): the digest of a request with an
    Idempotency-Key must not fail before the document check can refuse it (a 500)."""
    from docqueue.api.deps import request_digest

    assert request_digest("document", {"text": "a\ud800"}) != request_digest(
        "document", {"text": "a"}
    )
