"""Completion webhooks against a real HTTP receiver (http.server on a thread) that
fails the attempts it is told to: the delivery row written with the job's last
result, retried with backoff, signed, sent by workers and by ``docqueue serve``,
surviving a worker killed before it sent."""

from __future__ import annotations

import base64
import json
import os
import select as sockets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
import standardwebhooks
from conftest import ROOT, make_settings, wait_until
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchFailedWebhookEvent,
)
from sqlalchemy import func, select, update
from test_api import GONE, TOKEN, error_of, free_port, register_gone_model, serve  # noqa: F401 -- a fixture
from test_cli import TICKETS, docqueue, no_traceback

from docqueue.config import Settings, settings_env
from docqueue.db import make_engine
from docqueue.db import webhooks as rows
from docqueue.db.results import ResultRow
from docqueue.db.schema import Batch, WebhookDelivery
from docqueue.errors import ExitCode
from docqueue.producer.client import Client
from docqueue.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
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
    at: float = field(default_factory=time.monotonic)


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
    "webhook_hosts": ["127.0.0.1:*"],
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


def test_an_allowed_host_on_another_port_is_refused(lite: Client):
    """The allow-list named hosts only: any port of an allowed host was reachable."""
    hosts = ["127.0.0.1:9000", "hooks.example.com", "[::1]:*"]
    settings = lite.settings.model_copy(update={"webhook_hosts": hosts})
    with Client(settings) as client:
        allowed = ("http://127.0.0.1:9000/h", "https://hooks.example.com/h", "http://[::1]:22/")
        for url in (*allowed, "http://hooks.example.com/h"):  # each scheme's own port
            job = client.submit_many(["a"], task="classify", model="m", callback_url=url)
            job.delete()
        for url, port, entry in [
            ("http://127.0.0.1:6379/h", 6379, "127.0.0.1:6379"),
            ("http://127.0.0.1/h", 80, "127.0.0.1:80"),
            ("https://hooks.example.com:8443/h", 8443, "hooks.example.com:8443"),
        ]:
            with pytest.raises(CallbackRefused) as refused:
                client.submit_many(["a"], task="classify", model="m", callback_url=url)
            assert str(refused.value).startswith(f"callback port {port} of host ")
            assert f"add {entry} (or " in str(refused.value)
    assert lite.jobs() == []


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
        "(allowed now: 127.0.0.1:*)"
    )
    with Client(settings) as client:
        assert client.jobs() == []


# --- deadlines, slow receivers, ports ---------------------------------------------------


@dataclass
class Trickler:
    """A receiver that answers a byte every half second for up to 30 s (a status
    line, then a header that never ends); keeps when each connection began and
    ended (the sender closed it)."""

    server: socket.socket
    connections: list[tuple[float, float]] = field(default_factory=list)
    open: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/slow"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn: socket.socket) -> None:
        began = time.time()
        self.open += 1
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while time.time() - began < 30:
                readable, _, _ = sockets.select([conn], [], [], 0.5)
                if readable and not conn.recv(65536):
                    break  # the sender hung up
                conn.sendall(b"a")
        except OSError:
            pass
        finally:
            self.open -= 1
            self.connections.append((began, time.time()))
            conn.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    listening = socket.create_server(("127.0.0.1", 0))
    state = Trickler(listening)
    threading.Thread(target=state.serve, daemon=True).start()
    yield state
    listening.close()


def test_an_attempt_ends_at_its_deadline_however_the_receiver_trickles(
    lite: Client, trickler: Trickler
):
    """The timeout bounded each socket read: a byte every 2 s held a sender ~80 s."""
    job = lite.submit_many(["a"], task="classify", model="m", callback_url=trickler.url)
    finish(lite, job.id, [0])
    started = time.monotonic()
    assert Sender(lite.db, lite.settings).run_once() == 0
    assert time.monotonic() - started < lite.settings.webhook_timeout + 2
    with lite.db.connect() as conn:
        state = rows.of_job(conn, job.id)
    assert state is not None and state.attempts == 1 and state.delivered_at is None
    assert state.last_error == "the receiver did not answer within 2s (DOCQUEUE_WEBHOOK_TIMEOUT)"


def test_a_receiver_that_trickles_delays_no_other_delivery(
    lite: Client, receiver: Receiver, trickler: Trickler
):
    """One sender sent one delivery at a time: an unrelated job's webhook waited for
    the slow receiver's whole attempt."""
    slow = lite.submit_many(["a"], task="classify", model="m", callback_url=trickler.url)
    finish(lite, slow.id, [0])  # due first
    fast = lite.submit_many(["b"], task="classify", model="m", callback_url=receiver.url)
    finish(lite, fast.id, [0])
    started = time.monotonic()
    assert Sender(lite.db, lite.settings).run_once() == 1
    assert len(receiver.requests) == 1 and receiver.requests[0].at - started < 1.5
    assert json.loads(receiver.requests[0].body)["job"]["id"] == fast.id


@pytest.mark.slow  # two server processes: seconds each on the loaded 2-core machine
def test_a_slow_receiver_holds_no_sender_and_no_delivery_is_sent_twice_at_once(
    request: pytest.FixtureRequest, settings: Settings, receiver: Receiver, trickler: Trickler
):
    """Two senders (two API processes), a receiver that trickles its answer and one
    that answers at once: the slow one's attempts end at the deadline, one at a time,
    and the other job's delivery goes out at once."""
    register_gone_model(settings)
    ports = [receiver.url.split(":")[2].split("/")[0], trickler.url.split(":")[2].split("/")[0]]
    hosts = json.dumps([f"127.0.0.1:{port}" for port in ports])
    start = request.getfixturevalue("serve")
    first, second = start(DOCQUEUE_WEBHOOK_HOSTS=hosts), start(DOCQUEUE_WEBHOOK_HOSTS=hosts)
    http = first.http()

    def job(url: str) -> str:
        body = {"task": "classify", "model": GONE, "documents": ["a"], "callback_url": url}
        created = http.post("/api/jobs", json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    refused = http.post(
        "/api/jobs",
        json={
            "task": "classify",
            "model": GONE,
            "documents": ["a"],
            "callback_url": "http://127.0.0.1:6379/",
        },
    )
    message = error_of(refused, 422)["message"]
    assert message.startswith("callback port 6379 of host '127.0.0.1' is not allowed: add ")
    assert "127.0.0.1:6379" in message and "DOCQUEUE_WEBHOOK_HOSTS" in message

    slow = job(trickler.url)
    http.post(f"/api/jobs/{slow}/cancel")
    wait_until(lambda: trickler.open, 10, "the first attempt at the slow receiver")
    fast = job(receiver.url)
    cancelled = time.monotonic()
    http.post(f"/api/jobs/{fast}/cancel")
    wait_until(lambda: receiver.requests, 30, "the other job's delivery")
    assert time.monotonic() - cancelled < 5  # not behind the slow receiver's attempts
    assert json.loads(receiver.requests[0].body)["job"]["id"] == fast
    time.sleep(8)  # several attempts at the slow receiver, by either sender
    second.stop()
    first.stop()
    attempts = sorted(trickler.connections)
    assert len(attempts) >= 2
    for began, ended in attempts:
        assert ended - began < settings.webhook_timeout + 1.5
    for (_, ended), (began, _) in zip(attempts, attempts[1:], strict=False):
        assert began >= ended - 0.2, attempts  # never two at once


# --- what receivers written for OpenAI's and Standard Webhooks understand ---------------

#: The docqueue endpoint, which the SDK's types do not list.
CLASSIFY: Any = "/v1/docqueue/classify"
BATCH_LINE = {
    "custom_id": "x",
    "url": "/v1/docqueue/classify",
    "body": {"model": GONE, "input": "t"},
}


def batch_file(client: openai.OpenAI, lines: list[Any]) -> str:
    body = b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )
    return client.files.create(file=("b.jsonl", body), purpose="batch").id


def verified_event(received: Received, client: openai.OpenAI) -> Any:
    """The event as an OpenAI receiver unwraps it, after every check a receiver can
    make: the openai SDK's, the standardwebhooks package's (with the secret as bytes
    or as a whsec_ string), docqueue's own signature; a wrong secret fails each."""
    body, headers = received.body, received.headers
    event = client.webhooks.unwrap(body, headers)
    for secret in (SECRET.encode(), "whsec_" + base64.b64encode(SECRET.encode()).decode()):
        assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)
    assert verify(body, headers[SIGNATURE_HEADER], SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret="another-secret-of-16-chars")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(b"another-secret").verify(body, headers)
    assert headers["webhook-id"] == headers[DELIVERY_HEADER]
    return event


def test_openai_batch_receivers_get_openai_events_and_job_receivers_stay_as_they_were(
    request: pytest.FixtureRequest, settings: Settings, receiver: Receiver, tmp_path
):
    """Before, only a docqueue signature on a docqueue body: an OpenAI receiver
    (client.webhooks.unwrap) and a Standard Webhooks one refused every delivery, and
    batches sent none."""
    register_gone_model(settings)
    port = free_port()
    example = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "webhook_receiver.py"), str(port)],
        env={**os.environ, "DOCQUEUE_WEBHOOK_SECRET": SECRET},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server = request.getfixturevalue("serve")(DOCQUEUE_WEBHOOK_BATCH_URL=receiver.url)
        client = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key=TOKEN, webhook_secret=SECRET, max_retries=0
        )
        cancelled = client.batches.create(
            input_file_id=batch_file(client, [BATCH_LINE]),
            endpoint=CLASSIFY,
            completion_window="24h",
        )
        client.batches.cancel(cancelled.id)
        failed = client.batches.create(
            input_file_id=batch_file(client, [b"[1, 2"]), endpoint=CLASSIFY, completion_window="24h"
        )
        assert failed.status == "failed"
        expired = client.batches.create(
            input_file_id=batch_file(client, [BATCH_LINE]),
            endpoint=CLASSIFY,
            completion_window="24h",
        )
        engine = make_engine(settings.database())
        with engine.begin() as conn:  # its 24 hours are over
            conn.execute(
                update(Batch).where(Batch.id == expired.id).values(expires_at=time.time() - 1)
            )
        engine.dispose()
        assert client.batches.retrieve(expired.id).status == "expired"
        wait_until(lambda: len(receiver.requests) >= 3, 30, "the three batches' events")

        events = {}
        for received in receiver.requests:
            event = verified_event(received, client)
            assert event.object == "event" and event.id == "evt_" + received.headers["webhook-id"]
            assert received.headers[EVENT_HEADER] == event.type
            events[event.data.id] = type(event)
        assert events == {
            cancelled.id: BatchCancelledWebhookEvent,
            failed.id: BatchFailedWebhookEvent,
            expired.id: BatchExpiredWebhookEvent,
        }

        # a job's own callback: the same body as before, which the example receiver reads
        http = server.http()
        job = http.post(
            "/api/jobs",
            json={
                "task": "classify",
                "model": GONE,
                "documents": ["a"],
                "callback_url": f"http://127.0.0.1:{port}/hooks",
            },
        ).json()["id"]
        http.post(f"/api/jobs/{job}/cancel")
        assert example.stdout is not None
        line = example.stdout.readline()
        assert line.startswith(f"job {job} cancelled: ") and "'cancelled': 1" in line
    finally:
        example.kill()
        example.communicate()


@pytest.mark.slow  # a worker process
def test_a_completed_batch_is_an_openai_batch_completed_event(
    request: pytest.FixtureRequest,
    settings: Settings,
    receiver: Receiver,
    start_worker,
    tiny_classifier,
):
    start_worker({"tiny": tiny_classifier})
    server = request.getfixturevalue("serve")(DOCQUEUE_WEBHOOK_BATCH_URL=receiver.url)
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=TOKEN, webhook_secret=SECRET, max_retries=0
    )
    line = {**BATCH_LINE, "body": {"model": "tiny", "input": "refund please"}}
    batch = client.batches.create(
        input_file_id=batch_file(client, [line, {**line, "custom_id": "y"}]),
        endpoint=CLASSIFY,
        completion_window="24h",
    )
    wait_until(lambda: receiver.requests, 60, "the batch's event")
    event = verified_event(receiver.requests[0], client)
    assert isinstance(event, BatchCompletedWebhookEvent) and event.data.id == batch.id
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 2
