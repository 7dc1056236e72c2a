"""``docqueue annotate``: one command that annotates a file end to end.

It starts what the distributed setup runs separately: Redis (embedded unless
DOCQUEUE_REDIS_URL is set), the SQLite ledger, one worker process per visible GPU or
one on CPU; then enqueues the file, shows progress, writes the results and stops
everything again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docqueue.config import Settings
from docqueue.errors import ExitCode
from docqueue.launcher import LocalWorkers, pick_devices, serve_redis
from docqueue.producer.client import Client
from docqueue.producer.client import Progress as JobProgress
from docqueue.producer.readers import read_documents
from docqueue.producer.results import write_rows
from docqueue.worker.models import ModelUnavailable, locate

log = logging.getLogger(__name__)
console = Console(stderr=True)


class AnnotateError(RuntimeError):
    """Stops the run with one line of explanation (and an exit code)."""

    def __init__(self, message: str, code: int = ExitCode.SERVICE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Summary:
    job_id: str
    progress: JobProgress
    seconds: float
    written: int
    errors: list[dict[str, Any]]


def model_name_for(source: str) -> str:
    """A queue-safe name for a model path or hub id, the same for the same source."""
    digest = hashlib.sha1(
        os.path.abspath(source).encode() if os.path.isdir(source) else source.encode()
    ).hexdigest()[:10]
    return f"m-{digest}"


def annotate(
    path: Path,
    *,
    task: str,
    source: str,
    params: dict[str, Any],
    out: Path,
    settings: Settings,
    text_field: str = "text",
    id_field: str | None = "id",
    device: str | None = None,
) -> Summary:
    started = time.monotonic()
    documents = read_documents(path, text_field=text_field, id_field=id_field)
    name = model_name_for(source)
    try:
        locate(name, source, usage="--model /path/to/model")  # fail now, not in a worker
    except ModelUnavailable as exc:
        raise AnnotateError(str(exc)) from None
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-annotate-") as tmp,
        serve_redis(settings, Path(tmp)) as redis_url,
    ):
        client = Client(settings, redis_url=redis_url)
        workers = LocalWorkers(
            settings.model_copy(update={"redis_url": SecretStr(redis_url)}),
            {name: source},
            pick_devices(device or settings.device),
            log_dir=Path(tmp),
        )
        try:
            job_id, final = _run(
                client, workers, documents, task=task, name=name, params=params, source=str(path)
            )
        finally:
            workers.stop(settings.shutdown_grace)
        job = client.job(job_id)
        errors: list[dict[str, Any]] = []

        def rows() -> Iterator[dict[str, Any]]:
            for row in job.results():
                if row["status"] == "failed" and len(errors) < 5:
                    errors.append(row)
                yield row

        written = write_rows(rows(), out)
        client.close()
    return Summary(job_id, final, time.monotonic() - started, written, errors)


def _run(
    client: Client,
    workers: LocalWorkers,
    documents: Any,
    *,
    task: str,
    name: str,
    params: dict[str, Any],
    source: str,
) -> tuple[str, JobProgress]:
    job = client.job(uuid.uuid4().hex)
    failed: list[BaseException] = []

    def enqueue() -> None:
        try:
            client.submit_many(
                documents, task=task, model=name, params=params, source=source, job_id=job.id
            )
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    threading.Thread(target=enqueue, name="docqueue-enqueue", daemon=True).start()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        shown = bar.add_task("annotating", total=None, rate="")
        # The rate counts from the first poll that saw results, over at least a second.
        first_seen: tuple[float, int] | None = None
        while True:
            if failed:
                raise failed[0]
            current = job.progress()
            handled = current.done + current.failed
            total = current.total if current.total is not None else current.enqueued
            if handled and first_seen is None:
                first_seen = (time.monotonic(), handled)
            rate = ""
            if first_seen is not None and time.monotonic() - first_seen[0] >= 1.0:
                since, baseline = first_seen
                rate = f"{(handled - baseline) / (time.monotonic() - since):,.0f} docs/s"
            bar.update(shown, completed=handled, total=total or None, rate=rate)
            if current.finished:
                return job.id, current
            if workers.all_exited():
                raise AnnotateError(f"worker stopped: {workers.failure()}")
            time.sleep(0.25)
