"""Completion webhooks against a real HTTP receiver (http.server on a thread) that
fails the attempts it is told to: the delivery row written with the job's last
result, retried with backoff, signed, sent by workers and by ``docqueue serve``,
surviving a worker killed before it sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from conftest import make_settings, wait_until
from sqlalchemy import func, select
from test_api import GONE, error_of, register_gone_model, serve  # noqa: F401 -- a fixture
from test_cli import TICKETS, docqueue, no_traceback

from docqueue.config import Settings, settings_env
from docqueue.db import webhooks as rows
from docqueue.db.results import ResultRow
from docqueue.db.schema import WebhookDelivery
from docqueue.errors import ExitCode
from docqueue.producer.client import Client
from docqueue.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    CallbackRefused,
    Sender,
    verify,
)
from docqueue.worker.store import SqlStore

SECRET = "webhook-secret-for-tests"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server: answers 503 to the first ``failures`` POSTs (all of them
    while ``down``), 200 after, and keeps every request."""

    failures: int = 0
    down: bool = False
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/docqueue"

    def answer(self, received: Received) -> int:
        self.requests.append(received)
        if self.down or len(self.requests) <= self.failures:
            return 503
        return 200

    def delivered(self) -> list[Received]:
        """The requests it accepted."""
        return [r for i, r in enumerate(self.requests) if i >= self.failures]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.answer(Received(dict(self.headers.items()), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()


#: Webhooks on 127.0.0.1, with short backoff and lease.
HOOKS: dict[str, Any] = {
    "webhook_hosts": ["127.0.0.1"],
    "webhook_secret": SECRET,
    "webhook_backoff": 0.05,
    "webhook_max_backoff": 0.2,
    "webhook_poll_interval": 0.1,
    "webhook_timeout": 2.0,
    "webhook_lease": 3.0,
}


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    """The suite's settings with :data:`HOOKS`."""
    return make_settings(redis_url, database_url, **HOOKS)


@pytest.fixture
def lite(redis_url: str, sqlite_url: str) -> Iterator[Client]:
    """A client on SQLite only, for what does not depend on the database's locking."""
    with Client(make_settings(redis_url, sqlite_url, **HOOKS)) as client:
        yield client


def finish(client: Client, job_id: str, seqs: list[int], ok: bool = True) -> None:
    """What a worker's writer does with computed documents: commit their rows."""
    SqlStore(client.db).commit(
        [
            ResultRow(
                job_id=job_id,
                seq=s,
                ok=ok,
                output={"label": "a"} if ok else None,
                error=None if ok else "model failed",
                worker_id="w",
                started_at=time.time(),
                finished_at=time.time(),
            )
            for s in seqs
        ]
    )


def deliveries(client: Client, job_id: str) -> int:
    with client.db.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
        ).scalar_one()


def send_until_delivered(client: Client, job_id: str, timeout: float = 20) -> rows.DeliveryState:
    sender = Sender(client.db, client.settings)

    def sent() -> bool:
        sender.run_once()
        with client.db.connect() as conn:
            state = rows.of_job(conn, job_id)
        return state is not None and state.delivered_at is not None

    wait_until(sent, timeout, f"the webhook of job {job_id}")
    with client.db.connect() as conn:
        state = rows.of_job(conn, job_id)
    assert state is not None
    return state


def check_signed(requests: list[Received]) -> dict[str, Any]:
    """Every request is the same signed body with the same delivery id; returns it."""
    assert requests
    ids = {r.headers[DELIVERY_HEADER] for r in requests}
    assert len(ids) == 1
    assert {r.body for r in requests} == {requests[0].body}
    for r in requests:
        assert verify(r.body, r.headers[SIGNATURE_HEADER], SECRET)
        assert not verify(r.body, r.headers[SIGNATURE_HEADER], "another secret")
    body: dict[str, Any] = json.loads(requests[0].body)
    assert body["delivery_id"] == ids.pop() and body["event"] == "job.finished"
    return body


def test_a_finished_job_is_posted_once_signed_after_the_receiver_fails_twice(
    client: Client, receiver: Receiver
):
    receiver.failures = 2
    job = client.submit_many(
        ["one", "two", "three", ""], task="classify", model="m", callback_url=receiver.url
    )
    finish(client, job.id, [0])
    assert deliveries(client, job.id) == 0  # not finished: nothing to send
    finish(client, job.id, [1])
    finish(client, job.id, [2], ok=False)
    assert deliveries(client, job.id) == 1
    finish(client, job.id, [1])  # a redelivered message: the job finishes no second time
    assert deliveries(client, job.id) == 1

    state = send_until_delivered(client, job.id)
    assert len(receiver.requests) == 3 and state.attempts == 3
    body = check_signed(receiver.requests)
    status = job.status()
    assert body["job"]["id"] == job.id and body["job"]["state"] == "finished"
    assert body["job"]["progress"] == {
        "total": 4,
        "enqueued": 4,
        "done": 2,
        "failed": 2,
        "cancelled": 0,
        "pending": 0,
        "reused": 0,
    }
    assert (status.progress.done, status.progress.failed) == (2, 2)
    # one refused at the door (the empty text), one failed on a worker
    assert body["job"]["errors"] == {"failed": 2, "refused": 1, "on_workers": 1}
    assert body["job"]["docs_per_second"] == pytest.approx(status.rate)
    Sender(client.db, client.settings).run_once()
    assert len(receiver.requests) == 3  # sent is sent


def test_cancelled_and_refused_jobs_are_posted_too(lite: Client, receiver: Receiver):
    cancelled = lite.submit_many(["a", "b"], task="classify", model="m", callback_url=receiver.url)
    finish(lite, cancelled.id, [0])
    assert cancelled.cancel() == 1
    refused = lite.submit_many(["", " "], task="classify", model="m", callback_url=receiver.url)
    for job in (cancelled, refused):
        send_until_delivered(lite, job.id)
    bodies = {json.loads(r.body)["job"]["id"]: json.loads(r.body)["job"] for r in receiver.requests}
    assert bodies[cancelled.id]["state"] == "cancelled"
    assert bodies[cancelled.id]["progress"]["cancelled"] == 1
    assert bodies[refused.id]["progress"]["failed"] == 2
    assert len(receiver.requests) == 2
    with lite.db.begin() as conn:  # what prune forgets: deliveries done with
        assert rows.forget(conn, time.time() + 1) == 2
    unsent = lite.submit_many([""], task="classify", model="m", callback_url=receiver.url)
    assert deliveries(lite, unsent.id) == 1
    unsent.delete()  # e.g. the API refusing a job none of whose documents can run
    assert deliveries(lite, unsent.id) == 0


def test_two_writers_finishing_a_job_at_once_write_one_delivery(client: Client, receiver: Receiver):
    """Each commits half of the last documents: whichever commits second must see
    the first's rows (the job row is locked first) and write the delivery."""
    jobs = [
        client.submit_many(["a", "b"], task="classify", model="m", callback_url=receiver.url)
        for _ in range(6)
    ]
    with ThreadPoolExecutor(2) as pool:
        for job in jobs:
            list(pool.map(lambda seq, job=job: finish(client, job.id, [seq]), [0, 1]))
    assert [deliveries(client, job.id) for job in jobs] == [1] * len(jobs)


def test_a_claimed_delivery_is_not_sent_by_a_second_sender_until_its_lease_ends(
    lite: Client, receiver: Receiver
):
    job = lite.submit_many(["a"], task="classify", model="m", callback_url=receiver.url)
    finish(lite, job.id, [0])
    with lite.db.begin() as conn:
        (due,) = rows.due(conn, time.time())
        now = time.time()
        assert rows.claim(conn, due.id, now, lease=30)
        assert not rows.claim(conn, due.id, now, lease=30)
        assert rows.due(conn, now) == []
        assert rows.claim(conn, due.id, now + 31, lease=30)  # its sender died


def test_a_delivery_is_given_up_after_the_last_attempt(lite: Client, receiver: Receiver):
    receiver.down = True
    settings = lite.settings.model_copy(update={"webhook_max_attempts": 3})
    job = lite.submit_many(["a"], task="classify", model="m", callback_url=receiver.url)
    finish(lite, job.id, [0])
    sender = Sender(lite.db, settings)

    def given_up() -> bool:
        sender.run_once()
        with lite.db.connect() as conn:
            state = rows.of_job(conn, job.id)
        return state is not None and state.failed_at is not None

    wait_until(given_up, 20, "the delivery to be given up")
    assert len(receiver.requests) == 3
    with lite.db.connect() as conn:
        state = rows.of_job(conn, job.id)
    assert state is not None and "503" in (state.last_error or "")


def test_a_host_not_allowed_is_refused_at_creation(lite: Client):
    for url, problem in [
        (
            "http://evil.example/hook",
            "callback host 'evil.example' is not allowed: add it to DOCQUEUE_WEBHOOK_HOSTS",
        ),
        ("ftp://127.0.0.1/hook", "use an http:// or https:// URL"),
        ("http://user:pw@127.0.0.1/hook", "no user or password"),
    ]:
        with pytest.raises(CallbackRefused, match=problem):
            lite.submit_many(["a"], task="classify", model="m", callback_url=url)
        with pytest.raises(CallbackRefused, match=problem):
            lite.submit("a", task="classify", model="m", callback_url=url)
    assert lite.jobs(interactive=True) == []
    without_secret = lite.settings.model_copy(update={"webhook_secret": None})
    with Client(without_secret) as other, pytest.raises(CallbackRefused, match="SECRET"):
        other.submit_many(["a"], task="classify", model="m", callback_url="http://127.0.0.1/")


@pytest.mark.slow  # a server process: about 10 s on the loaded 2-core machine
def test_the_api_refuses_a_host_and_posts_a_job_it_cancelled(
    request: pytest.FixtureRequest, settings: Settings, receiver: Receiver
):
    register_gone_model(settings)
    server = request.getfixturevalue("serve")()
    http = server.http()
    refused = http.post(
        "/api/jobs",
        json={
            "task": "classify",
            "model": GONE,
            "documents": ["a"],
            "callback_url": "https://evil.example/hook",
        },
    )
    error = error_of(refused, 422)
    assert error["param"] == "callback_url" and "'evil.example'" in error["message"]
    assert "DOCQUEUE_WEBHOOK_HOSTS" in error["message"]
    upload = http.post(
        "/api/jobs/upload",
        data={"task": "classify", "model": GONE, "callback_url": "http://evil.example/"},
        files={"file": ("d.jsonl", b'{"text": "a"}\n')},
    )
    assert error_of(upload, 422)["param"] == "callback_url"
    assert http.get("/api/jobs").json()["data"] == []

    created = http.post(
        "/api/jobs",
        json={
            "task": "classify",
            "model": GONE,
            "documents": ["a", "b"],
            "callback_url": receiver.url,
        },
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert http.post(f"/api/jobs/{job_id}/cancel").json()["cancelled"] == 2
    wait_until(lambda: receiver.requests, 30, "the API's sender to post the cancelled job")
    body = check_signed(receiver.requests)
    status = http.get(f"/api/jobs/{job_id}").json()
    assert body["job"]["progress"] == status["progress"]
    assert body["job"]["state"] == status["state"] == "cancelled"
    health = httpx.get(f"{server.url}/health")  # no token: what a load balancer calls
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.slow
def test_a_worker_killed_before_it_sent_leaves_the_delivery_to_the_next(
    client: Client, receiver: Receiver, start_worker, tiny_classifier: str
):
    """The receiver is down while the first worker computes the job and tries to
    post it; that worker is killed; the next one sends the same delivery."""
    receiver.down = True
    first = start_worker({"m": tiny_classifier})
    job = client.submit_many(
        [f"text {i}" for i in range(20)], task="classify", model="m", callback_url=receiver.url
    )
    job.wait(timeout=60)
    wait_until(lambda: len(receiver.requests) >= 2, 30, "the first worker's attempts")
    first.kill()
    with client.db.connect() as conn:
        state = rows.of_job(conn, job.id)
    assert state is not None and state.delivered_at is None and state.attempts >= 1
    tried = len(receiver.requests)
    receiver.down = False
    receiver.failures = tried  # everything from now on is accepted
    start_worker({"m": tiny_classifier})
    wait_until(lambda: receiver.delivered(), 60, "the second worker to post the job")
    body = check_signed(receiver.requests)
    assert body["delivery_id"] == state.id
    assert body["job"]["progress"]["done"] == 20
    assert len(receiver.delivered()) == 1


@pytest.mark.slow  # a process start: seconds on the loaded 2-core machine
def test_enqueue_refuses_a_host_not_allowed_in_one_line(settings: Settings, tmp_path):
    result = docqueue(
        "enqueue",
        str(TICKETS),
        "--model",
        "m",
        "--callback-url",
        "http://10.0.0.5/hook",
        cwd=tmp_path,
        env=settings_env(settings),
    )
    no_traceback(result)
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip() == (
        "error: callback host '10.0.0.5' is not allowed: add it to DOCQUEUE_WEBHOOK_HOSTS "
        "(allowed now: 127.0.0.1)"
    )
    with Client(settings) as client:
        assert client.jobs() == []
