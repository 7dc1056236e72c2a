"""Coalescing single-document submissions (a group commit): the requests that
arrive while earlier ones are being written wait and are written together, in one worker
thread, one SQL transaction and one Redis round trip (:meth:`Client.submit_each`).

A lone request is written at once (nothing waits for a timer); under load the
rounds grow by themselves.  Each request still gets its own outcome: its handle,
or the error its own submission raised.  Measured on the loaded 2-core machine (see
BENCHMARKS.md), a request cost the server about 3 ms of CPU before, most of it
per-request overhead (thread hops, transactions, Redis round trips, reading the
row back), and about 1.1 ms in rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio.to_thread

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

#: Most requests one round writes.
MAX_ROUND = 64
#: Rounds written at the same time: more requests than this form rounds, fewer are
#: written at once each.  On the loaded 2-core machine (16 senders, three rounds
#: alternating) 16 writers did 144/s on average, 4 did 125/s and the old one thread
#: per request 98/s; the server's CPU per request was the same with 4 or 16 (1.1 to
#: 1.7 ms, against 3.4 to 3.8 before).  A writer thread there waits for the GIL and
#: the scheduler as much as for I/O, so more of them overlap more of that wait.
WRITERS = 16


class Coalescer(Generic[Item, Outcome]):
    """``await coalesce(item)`` runs ``write([... item ...])`` in a worker thread
    together with the items of concurrent calls, and returns that item's outcome
    (or raises its exception).  ``write`` returns one outcome or exception per
    item, in order."""

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Sequence[Outcome | Exception]],
        max_round: int = MAX_ROUND,
        writers: int = WRITERS,
    ) -> None:
        self.write, self.max_round, self.writers = write, max_round, writers
        self._pending: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak ones

    async def __call__(self, item: Item) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._active < self.writers:
            self._active += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A cancelled request (the client went away) does not cancel its round: the
        # document is written like any other, as a thread would have written it.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        # Counted down in the step that finds nothing pending, so a request arriving
        # after it starts another writer.
        try:
            while self._pending:
                waiting = self._pending[: self.max_round]
                del self._pending[: self.max_round]
                await self._write_round(waiting)
        finally:
            self._active -= 1

    async def _write_round(self, waiting: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await anyio.to_thread.run_sync(self.write, [item for item, _ in waiting])
            if len(outcomes) != len(waiting):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(waiting)} requests")
        except Exception as exc:  # a bug in write: each request of the round hears it
            outcomes = [exc] * len(waiting)
        except BaseException:  # cancelled (shutdown): nobody is left to answer
            for _, future in waiting:
                future.cancel()
            raise
        _settle(waiting, outcomes)


def _settle(
    waiting: list[tuple[Item, asyncio.Future[Outcome]]], outcomes: Sequence[Outcome | Exception]
) -> None:
    for (_, future), outcome in zip(waiting, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
