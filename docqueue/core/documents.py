"""One submitted document: its result now, or waited for (a worker's notice on the
job's done channel wakes the waiter; SQL says what the result is)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from docqueue.core.errors import DocumentCancelled, DocumentFailed, UnknownJob
from docqueue.core.jobs import JobHandle
from docqueue.core.services import Services, services_of
from docqueue.db import jobs as ledger
from docqueue.formats.results import export_row
from docqueue.protocol import done_channel


class ResultHandle:
    """One submitted document: read its result now, or wait for it."""

    def __init__(
        self, owner: Services | Any, job_id: str, seq: int, replayed: bool = False
    ) -> None:
        """``owner``: the :class:`Services` (or a Client, which holds them)."""
        self.services, self.job_id, self.seq = services_of(owner), job_id, seq
        #: The document was queued by an earlier call with the same idempotency key.
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"ResultHandle(job_id={self.job_id!r}, seq={self.seq})"

    def read(self) -> dict[str, Any] | None:
        """The exported row (output fields, or ``error``), or None while pending;
        raises :class:`UnknownJob` once its job was deleted."""
        with self.services.db.connect() as conn:
            found = list(ledger.outcomes(conn, self.job_id, seqs=[self.seq]))
        if not found:
            raise UnknownJob(self.job_id)
        if found[0].status == "pending":
            return None
        return export_row(found[0])

    def done(self) -> bool:
        return self.read() is not None

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the output; raises TimeoutError, DocumentFailed with the error, or
        DocumentCancelled."""
        row = self._wait(timeout)
        if row.get("status") == "failed":
            raise DocumentFailed(self.job_id, self.seq, row.get("error") or "unknown error")
        if row.get("status") == "cancelled":
            raise DocumentCancelled(self.job_id, self.seq)
        return row

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """``await handle.wait(timeout)`` from async code (runs in a thread)."""
        return await asyncio.to_thread(self.result, timeout)

    def _wait(self, timeout: float | None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.services.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            pubsub.subscribe(done_channel(self.job_id))
            while True:
                row = self.read()
                if row is not None:
                    return row
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no result for {self.job_id}/{self.seq} in {timeout}s"
                        + JobHandle(self.services, self.job_id).why_waiting()
                    )
                pubsub.get_message(timeout=min(left, 1.0))
