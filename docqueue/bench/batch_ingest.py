"""Ingest of an OpenAI batch file against ``Client.submit_many`` of the same lines.

    python -m docqueue.bench.batch_ingest [--lines 100000] [--postgres URL] [--rounds 4]

For each database (a fresh SQLite file, and PostgreSQL when ``--postgres`` names
one), in the same run:

* **submit_many**: ``Client.submit_many`` of the lines' documents (custom_id and
  text), from the call until it returns: every document in SQL and published;
* **batch**: a real ``docqueue serve`` process; from the start of the upload
  (``POST /v1/files``, the file streamed from disk) until ``POST /v1/batches``
  returns, which is when every line is in SQL and published.

The arms take turns going first, round by round, and the median ratio closes the
figures.

No worker runs: the model is known from a stopped worker's heartbeat, so the
messages wait in Redis (the queue is emptied after each arm; back-pressure is
lifted with ``max_queued_messages``).  Texts are the bench corpus cut to 200
characters.  Redis comes from ``--redis-url`` (or DOCQUEUE_REDIS_URL); its
database is written to, so give it one of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from docqueue.bench import DEFAULT_CORPUS, load_corpus
from docqueue.config import Settings
from docqueue.db import make_engine, migrate
from docqueue.db.workers import beat
from docqueue.launcher import ApiServer
from docqueue.producer.client import Client
from docqueue.protocol import queue_name

MODEL = "bench"
TASK = "classify"
ENDPOINT = "/v1/docqueue/classify"
TOKEN = "bench-token-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--redis-url", default=os.environ.get("DOCQUEUE_REDIS_URL"))
    parser.add_argument("--postgres", help="a PostgreSQL URL to measure as well")
    args = parser.parse_args()
    if not args.redis_url:
        parser.error("give --redis-url (or DOCQUEUE_REDIS_URL)")
    texts = [t[:200] for t in load_corpus(DEFAULT_CORPUS)]
    with tempfile.TemporaryDirectory(prefix="docqueue-ingest-") as tmp:
        directory = Path(tmp)
        batch_file = write_batch_file(directory / "batch.jsonl", texts, args.lines)
        databases = [("SQLite", f"sqlite:///{directory / 'bench.db'}")]
        if args.postgres:
            databases.append(("PostgreSQL", args.postgres))
        for label, url in databases:
            settings = Settings(
                redis_url=args.redis_url,
                database_url=url,
                max_queued_messages=10**7,
                api_tokens=[TOKEN],
            )
            measure(label, settings, batch_file, texts, args.lines, args.rounds, directory)


def write_batch_file(path: Path, texts: list[str], lines: int) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            body = {"model": MODEL, "input": texts[i % len(texts)]}
            line = {"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(json.dumps(line) + "\n")
    return path


def measure(
    label: str,
    settings: Settings,
    batch_file: Path,
    texts: list[str],
    lines: int,
    rounds: int,
    directory: Path,
) -> None:
    register_model(settings)
    documents = [{"id": f"r{i}", "text": texts[i % len(texts)]} for i in range(lines)]
    size = batch_file.stat().st_size
    print(f"{label}: {lines:,} lines, a {size / 1e6:.1f} MB batch file")
    with Client(settings) as client, serve(settings, directory) as url:
        queue = queue_name(TASK, MODEL, "bulk")
        ratios = []
        for number in range(1, rounds + 1):

            def submit_many() -> float:
                start = time.perf_counter()
                handle = client.submit_many(documents, task=TASK, model=MODEL)
                took = time.perf_counter() - start
                check(client, handle.id, lines)
                client.redis.delete(queue)
                return took

            def batch() -> tuple[float, float]:
                start = time.perf_counter()
                job_id, uploaded = upload_and_create(url, batch_file)
                took = time.perf_counter() - start
                check(client, job_id, lines)
                client.redis.delete(queue)
                return took, uploaded - start

            # Each arm goes first in every other round: the second arm of a round
            # writes into tables a job larger.
            if number % 2:
                direct = submit_many()
                through_api, upload = batch()
            else:
                through_api, upload = batch()
                direct = submit_many()
            ratios.append(direct / through_api)
            print(
                f"  round {number}: submit_many {lines / direct:,.0f} docs/s ({direct:.2f} s); "
                f"batch file {lines / through_api:,.0f} docs/s ({through_api:.2f} s): "
                f"{ratios[-1]:.2f}x (upload {upload:.2f} s)"
            )
        print(f"  median of {rounds} rounds: {statistics.median(ratios):.2f}x")


def upload_and_create(url: str, batch_file: Path) -> tuple[str, float]:
    """The batch's job id, and when the upload was done (perf_counter)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=600) as http,
        batch_file.open("rb") as f,
    ):
        uploaded = http.post("/v1/files", files={"file": f}, data={"purpose": "batch"})
        uploaded.raise_for_status()
        done = time.perf_counter()
        body = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": ENDPOINT,
            "completion_window": "24h",
        }
        created = http.post("/v1/batches", json=body)
        created.raise_for_status()
    return str(created.json()["id"]).removeprefix("batch_"), done


def check(client: Client, job_id: str, lines: int) -> None:
    progress = client.job(job_id).progress()
    if progress.total != lines or progress.pending != lines:
        raise SystemExit(f"job {job_id}: {progress} is not {lines} pending documents")


def register_model(settings: Settings) -> None:
    """A stopped worker's heartbeat naming the bench model: the model is known, and
    no worker takes its messages."""
    engine = make_engine(settings.database())
    migrate(engine)
    with engine.begin() as conn:
        beat(
            conn,
            "bench-stopped-worker",
            hostname="bench",
            pid=1,
            device="cpu",
            models={MODEL: {"tasks": [TASK]}},
            started_at=time.time(),
            documents=0,
            stopped=True,
        )
    engine.dispose()


@contextmanager
def serve(settings: Settings, directory: Path) -> Iterator[str]:
    """A ``docqueue serve`` process, answering."""
    with ApiServer(settings, directory / "serve.log", args=["--log-level", "warning"]) as server:
        server.wait_ready()
        yield server.url


if __name__ == "__main__":
    main()
