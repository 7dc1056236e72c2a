"""Ctrl-C during ``docqueue annotate``: the first stops the run gently, the second at
once.

A terminal's Ctrl-C reaches annotate alone: its workers and its embedded Redis run
in sessions of their own (:mod:`docqueue.launcher`), so they are not cut off in the
middle of a batch or a commit by a signal meant for the run.  Annotate decides:

* the first Ctrl-C asks the workers to finish and save what they hold (up to the
  shutdown grace), the progress bar going on meanwhile; while the results are
  written, it says that writing goes on;
* the second kills the workers (what they committed stays: SQL commits are atomic)
  and the run stops within a second or two.

SIGTERM and SIGHUP (a closed terminal) stop at once, like a second Ctrl-C, so that the
workers are never left running without their annotate.

The handlers raise nothing: an exception raised from a signal handler lands wherever
the main thread is, in a finalizer (which swallows it) or in code that a string
``exec`` runs (after which ``python -m`` exits by SIGINT whatever the exit code
said).  They set flags, and kill the workers themselves; the run's loops look at the
flags (at least every quarter second) and stop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from docqueue.protocol import task_argument

#: What kombu's Redis transport keeps the messages workers hold (unacked) in.
UNACKED_KEY = "unacked"


class StopNow(KeyboardInterrupt):
    """Raised by the run's loops after a second Ctrl-C (or SIGTERM, SIGHUP)."""


class Interrupts:
    """Ctrl-C handling for one run, installed while the ``with`` block runs (in the
    main thread only: signals cannot be caught elsewhere).  The first Ctrl-C sets
    :attr:`stopping` (and calls ``on_write`` while the results are written); the
    second, SIGTERM or SIGHUP sets :attr:`now` and calls each of ``on_stop_now``."""

    def __init__(self) -> None:
        #: "run" until the documents are computed, then "write".
        self.phase = "run"
        #: A first Ctrl-C came: the workers are to finish what they hold and stop.
        self.stopping = False
        #: Stop at once (a second Ctrl-C, SIGTERM or SIGHUP).
        self.now = False
        self.on_write: Callable[[], None] = lambda: None
        #: What stopping at once does there and then (kill the workers).
        self.on_stop_now: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                self._previous[signum] = signal.signal(signum, self._terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        """Raise :class:`StopNow` once stopping at once was asked for (the run's
        loops call it)."""
        if self.now:
            raise StopNow()

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self._stop_now()
            return
        self.stopping = True
        if self.phase == "write":
            self.on_write()

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        self._stop_now()

    def _stop_now(self, *_: object) -> None:
        self.now = True
        for stop in self.on_stop_now:
            with contextlib.suppress(Exception):  # the loops stop the run all the same
                stop()


def held_documents(redis: Any, job_ids: Iterable[str]) -> int:
    """How many documents of these jobs the workers hold: taken from the queue, not
    yet acked (computing, or waiting in a worker's buffer).  Entries that cannot be
    read are not counted."""
    wanted = set(job_ids)
    held = 0
    for entry in redis.hvals(UNACKED_KEY):
        try:
            message = json.loads(entry)
            payload = message[0] if isinstance(message, list) else message
            body = json.loads(base64.b64decode(payload["body"]))
            batch = task_argument(body)
            if batch.get("job") in wanted:
                held += len(batch.get("items") or [])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            continue
    return held
