"""Requests waiting for a document's outcome (``?wait=``), woken by one Redis
subscription per API process.

A worker publishes on a job's done channel after it commits the job's results.
Each waiting request used to subscribe on a connection of its own, held for the
whole wait: about 100 waiters took every connection of the Redis pool (redis-py's
default of 100), and ``/health``, ``/metrics`` and every submission failed with
them.  Here one thread holds one subscription to every job's channel (a pattern)
and wakes the requests waiting for that job; a waiting request holds no Redis
connection and no thread, only an event on the loop, and reads SQL (in the thread
pool) when woken, at most every :data:`RECHECK` seconds otherwise, and every
:data:`POLL` seconds while the subscription is down (a notice may be missed then).

So the Redis connections the process uses at once are the subscription, the
webhook sender's and at most one per thread of the pool the routes run in (40):
well below what the pool holds, however many requests wait.  At most
:data:`MAX_WAITING` requests wait at once (each holds a little memory and a socket);
the others queue for a place within their own ``wait``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from docqueue.errors import one_line
from docqueue.producer.client import ResultHandle
from docqueue.protocol import DONE_PATTERN, done_channel

log = logging.getLogger(__name__)

#: Requests that may wait for a result at the same time.
MAX_WAITING = 4096
#: Seconds between a waiter's reads of SQL while the subscription is up (a notice
#: lost on the worker's side costs at most this much).
RECHECK = 5.0
#: The same while it is down.
POLL = 1.0
_PREFIX = done_channel("")


class DoneNotices:
    """The subscription, its thread, and the waiting requests by job."""

    def __init__(self, redis: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.redis = redis
        self.loop = loop
        self.waiting: dict[str, set[asyncio.Event]] = {}
        self.places = anyio.CapacityLimiter(MAX_WAITING)
        #: Whether the subscription is up (else waiters poll SQL every POLL seconds).
        self.listening = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="docqueue-done", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    async def wait(self, handle: ResultHandle, seconds: float) -> None:
        """Until the document has its outcome or ``seconds`` pass (what it is, is
        read after)."""
        with anyio.move_on_after(seconds):
            async with self.places:
                await self._wait(handle)

    async def _wait(self, handle: ResultHandle) -> None:
        woken = asyncio.Event()
        self.waiting.setdefault(handle.job_id, set()).add(woken)
        try:
            while True:
                woken.clear()  # before the read: a notice during it wakes the next wait
                if await run_in_threadpool(handle.read) is not None:
                    return
                with anyio.move_on_after(RECHECK if self.listening else POLL):
                    await woken.wait()
        finally:
            events = self.waiting.get(handle.job_id)
            if events is not None:
                events.discard(woken)
                if not events:
                    del self.waiting[handle.job_id]

    def _wake(self, job_id: str | None) -> None:
        """On the loop: wake the requests waiting for ``job_id`` (None: all)."""
        if job_id is None:
            events = [e for waiting in self.waiting.values() for e in waiting]
        else:
            events = list(self.waiting.get(job_id, ()))
        for event in events:
            event.set()

    def _listen(self) -> None:
        """The subscription's thread: subscribe, hand each notice to the loop, and
        subscribe again after Redis went away (waking every waiter, which may have
        missed its notice meanwhile)."""
        failing = False
        while not self._stopping.is_set():
            try:
                with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.psubscribe(DONE_PATTERN)
                    self.listening, failing = True, False
                    self.loop.call_soon_threadsafe(self._wake, None)
                    while not self._stopping.is_set():
                        message = pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "pmessage":
                            job = _job_of(message["channel"])
                            self.loop.call_soon_threadsafe(self._wake, job)
            except Exception as exc:  # Redis away (or the loop closed): try again
                self.listening = False
                if not failing:
                    log.warning(
                        "waiting requests: no done notices (%s); reading SQL", one_line(exc)
                    )
                failing = True
                self._stopping.wait(POLL)
        self.listening = False


def _job_of(channel: bytes | str) -> str:
    name = channel.decode() if isinstance(channel, bytes) else channel
    return name[len(_PREFIX) :]
