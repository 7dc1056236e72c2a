"""The engine without the queue: documents in, rows out, in this process.

Same intake thread, flush policy, compute thread and writer as a worker; only the
Redis messages, the SQL store and the acks are left out.  The benchmark measures it
against the whole path to see what the queue costs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from docqueue.config import Settings
from docqueue.db.results import ResultRow
from docqueue.protocol import BatchMessage, Document
from docqueue.worker.engine import Engine
from docqueue.worker.runners import Runner
from docqueue.worker.store import MemoryStore

#: Documents per submitted chunk, as a bulk message would carry them.
CHUNK = 64


@dataclass
class OfflineRun:
    rows: list[ResultRow]  # in document order
    batches: int
    padded_tokens: int


def run_offline(
    runners: dict[str, dict[str, Runner]],
    model: str,
    task: str,
    docs: Sequence[Document],
    params: dict[str, Any],
    settings: Settings,
    timeout: float = 3600.0,
) -> OfflineRun:
    """Run every document through the engine."""
    store = MemoryStore()
    engine = Engine(runners=runners, settings=settings, store=store, worker_id="offline")
    engine.start()
    job = uuid.uuid4().hex
    try:
        for start in range(0, len(docs), CHUNK):
            engine.submit(
                BatchMessage(
                    job=job,
                    task=task,
                    model=model,
                    params=params,
                    items=[(start + i, doc) for i, doc in enumerate(docs[start : start + CHUNK])],
                    enqueued_at=time.time(),
                )
            )
        deadline = time.monotonic() + timeout
        while len(store) < len(docs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(store)} of {len(docs)} documents after {timeout}s")
            time.sleep(0.002)
    finally:
        engine.stop()
    rows = sorted(store.rows, key=lambda r: r.seq)
    return OfflineRun(rows, engine.batches_run, engine.padded_tokens)
