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
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docqueue.broker import EmbeddedRedis
from docqueue.config import Settings
from docqueue.db.jobs import Progress as JobProgress
from docqueue.producer.client import Client
from docqueue.producer.readers import read_documents
from docqueue.producer.results import write_rows
from docqueue.worker.models import ModelUnavailable, locate

log = logging.getLogger(__name__)
console = Console(stderr=True)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_WORKER = 0, 1, 2, 3


class AnnotateError(RuntimeError):
    """Stops the run with one line of explanation (and an exit code)."""

    def __init__(self, message: str, code: int = EXIT_WORKER) -> None:
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


def worker_devices(requested: str | None) -> list[str]:
    if requested:
        return [requested]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


class WorkerProcesses:
    """Local ``docqueue worker`` processes, their logs kept for error reports."""

    def __init__(
        self, name: str, source: str, devices: list[str], env: dict[str, str], log_dir: Path
    ) -> None:
        self.logs = [log_dir / f"worker-{i}.log" for i in range(len(devices))]
        self.procs = []
        for device, log_path in zip(devices, self.logs, strict=True):
            with log_path.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "docqueue",
                            "worker",
                            "--model",
                            f"{name}={source}",
                            "--device",
                            device,
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def all_exited(self) -> bool:
        return all(p.poll() is not None for p in self.procs)

    def failure(self) -> str:
        """The last meaningful line a dead worker wrote."""
        for path in self.logs:
            lines = [
                ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()
            ]
            for line in reversed(lines):
                if "error" in line.lower():
                    return line.split("error:", 1)[-1].strip() if "error:" in line else line
            if lines:
                return lines[-1]
        return "worker exited"

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def _redis(settings: Settings, directory: Path) -> Iterator[str]:
    if settings.redis():
        yield settings.redis()  # type: ignore[misc]
        return
    with EmbeddedRedis(str(directory / "redis")) as server:
        yield server.url


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
        _redis(settings, Path(tmp)) as redis_url,
    ):
        client = Client(settings, redis_url=redis_url)
        env = {
            **os.environ,
            "DOCQUEUE_REDIS_URL": redis_url,
            "DOCQUEUE_DATABASE_URL": settings.database(),
        }
        workers = WorkerProcesses(
            name, source, worker_devices(device or settings.device), env, Path(tmp)
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
    workers: WorkerProcesses,
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
