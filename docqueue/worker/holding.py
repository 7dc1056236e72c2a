"""How much work a worker takes from the queue: what it can finish soon.

A worker that takes more than it can compute in a few seconds hides the backlog:
the queue reads empty while the worker sits on a whole job, an autoscaler sees no
reason to add a worker, and a worker started later finds nothing to take.  So a
worker holds at most the documents it computes in ``prefetch_seconds`` at its
measured rate, never fewer than ``prefetch_floor`` (a cold start, before any
batch has run, and a rate so slow that a few seconds is not a batch) and never
more than ``prefetch_messages`` bulk messages.

Celery counts what a worker holds in messages, so the bound in documents becomes
a message count through the documents the last bulk messages carried.  The rate is
documents per second of the model's own time (forward passes), not per second of
the clock: a worker that waits for messages must not measure itself slow and then
take even less.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from docqueue.config import Settings

#: The rate is taken over the most recent batches covering this many seconds of
#: model time (older ones are forgotten, so a worker that starts sharing its CPU
#: or its GPU sees its rate fall within a few seconds).
RATE_WINDOW_SECONDS = 4.0
#: Below this much model time measured, the rate is not trusted yet (the first
#: batches pay for warming up).
MIN_MEASURED_SECONDS = 0.2
#: Bulk messages whose sizes are remembered, to turn documents into messages.
SIZES_REMEMBERED = 32


class HoldLimit:
    """The bulk messages a worker may hold unacked, from its measured rate.

    Fed from two threads (compute: batches run; intake: message sizes), read from
    the consumer's; a lock keeps the three consistent."""

    def __init__(self, settings: Settings) -> None:
        self.seconds = settings.prefetch_seconds
        self.floor = settings.prefetch_floor
        self.most = settings.prefetch_messages
        self._batches: deque[tuple[int, float]] = deque()
        self._documents = 0
        self._seconds = 0.0
        #: Before any bulk message arrived, the producers' chunk size is the guess.
        self.chunk_size = settings.chunk_size
        self._sizes: deque[int] = deque(maxlen=SIZES_REMEMBERED)
        self._lock = threading.Lock()

    def computed(self, documents: int, seconds: float) -> None:
        """A batch of ``documents`` ran in ``seconds`` of model time."""
        if documents <= 0 or seconds < 0:
            return
        with self._lock:
            self._batches.append((documents, seconds))
            self._documents += documents
            self._seconds += seconds
            while len(self._batches) > 1 and self._seconds - self._batches[0][1] >= (
                RATE_WINDOW_SECONDS
            ):
                old_documents, old_seconds = self._batches.popleft()
                self._documents -= old_documents
                self._seconds -= old_seconds

    def received(self, documents: int) -> None:
        """A bulk message carrying ``documents`` was opened."""
        if documents > 0:
            with self._lock:
                self._sizes.append(documents)

    @property
    def rate(self) -> float | None:
        """Documents per second of model time; None until enough was measured."""
        with self._lock:
            if self._seconds < MIN_MEASURED_SECONDS:
                return None
            return self._documents / self._seconds

    def documents(self) -> int:
        """The documents the worker may hold now."""
        rate = self.rate
        soon = 0 if rate is None else int(rate * self.seconds)
        return max(self.floor, soon)

    def messages(self) -> int:
        """The bulk messages the worker may hold now: at least one."""
        with self._lock:
            sizes = self._sizes or [self.chunk_size]
            per_message = sum(sizes) / len(sizes)
        wanted = math.ceil(self.documents() / per_message)
        return max(1, min(self.most, wanted))
