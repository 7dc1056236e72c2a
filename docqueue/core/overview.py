"""The system at a glance: how many messages wait in each queue, the dead letters,
and the live workers.

One source for every reader: ``docqueue status`` prints it, the API's ``/metrics``
exports it (:mod:`docqueue.api.metrics`), and the page shows it, so the three never
disagree.  It is read when asked (Redis and SQL are the truth), never cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from docqueue import deadletters
from docqueue.config import Settings
from docqueue.db import Database
from docqueue.db.workers import WorkerState, every_worker
from docqueue.deadletters import DeadLetterCounts
from docqueue.protocol import bulk_queue, interactive_queue, queue_of


@dataclass(frozen=True)
class QueueDepth:
    """A queue and the messages waiting in it (LLEN: messages a worker took and has
    not acked yet are not counted).  A bulk message carries up to ``chunk_size``
    documents, an interactive one a single document."""

    queue: str
    model: str
    #: "bulk" or "interactive" (a model's interactive lane serves all its tasks).
    lane: str
    #: The bulk queue's task; "" for an interactive lane.
    task: str
    messages: int


@dataclass(frozen=True)
class Overview:
    queues: list[QueueDepth]
    dead_letters: DeadLetterCounts
    #: Live workers (a heartbeat within ``heartbeat_timeout``), newest heartbeat first.
    workers: list[WorkerState]
    #: When it was read (epoch seconds).
    at: float


def read_overview(redis: Any, db: Database, settings: Settings) -> Overview:
    """Read it now from Redis and SQL."""
    now = time.time()
    with db.connect() as conn:
        every = every_worker(conn)
    live = [w for w in every if w.alive(now, settings.heartbeat_timeout)]
    names = known_queues(live, holding_messages(redis))
    pipe = redis.pipeline(transaction=False)
    for queue in names:
        pipe.llen(queue)
    lengths = pipe.execute()
    queues = [
        QueueDepth(queue, model, lane, task, int(length))
        for (queue, (model, lane, task)), length in zip(names.items(), lengths, strict=True)
    ]
    return Overview(
        queues=queues,
        dead_letters=deadletters.counts(redis, settings.dead_letter_limit),
        workers=live,
        at=now,
    )


def holding_messages(redis: Any) -> list[str]:
    """The docqueue queues of this Redis that hold messages (a queue is a list,
    gone from Redis once empty).  The ledger may name others: jobs made on
    another Redis (annotate's embedded one, long gone), workers long stopped."""
    found = redis.scan_iter(match="docqueue.*", count=1000, _type="list")
    return [key.decode() if isinstance(key, bytes) else key for key in found]


def known_queues(workers: list[WorkerState], waiting: list[str]) -> dict[str, tuple[str, str, str]]:
    """The queues that ``waiting`` names (those holding messages) and those the
    live ``workers`` serve (their models' bulk queues and interactive lanes), by
    name, with their (model, lane, task); sorted.  A queue a live worker serves is
    listed empty: a depth that went to 0 reads 0, not nothing."""
    groups = set()
    for name in waiting:
        if (seen := queue_of(name)) is not None:
            model, lane, task = seen
            groups.add((task, model, lane))
    for worker in workers:
        for model, served in worker.models.items():
            groups.update((task, model, "bulk") for task in served.get("tasks", []))
            groups.add(("", model, "interactive"))
    queues: dict[str, tuple[str, str, str]] = {}
    for task, model, lane in groups:
        if lane == "interactive":
            queues[interactive_queue(model)] = (model, lane, "")
        else:
            queues[bulk_queue(task, model)] = (model, lane, task)
    return dict(sorted(queues.items()))
