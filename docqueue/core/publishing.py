"""Sending a job's documents to Redis, after they are in SQL: messages cut below the
size workers accept, back-pressure on a full queue, and patience while Redis is
briefly away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from docqueue.core.services import Services
from docqueue.jobspec import JobSpec
from docqueue.protocol import TASK_NAME, BatchMessage, Document, document_size, queue_name

A = TypeVar("A")

#: What publishing raises when Redis fails (the broker's errors, and the socket's).
PUBLISH_ERRORS = (RedisError, KombuError, OSError)


def publish_items(
    services: Services,
    job_id: str,
    spec: JobSpec,
    items: list[tuple[int, Document]],
    producer: Any = None,
) -> None:
    """Send a job's documents (``(seq, document)`` pairs), in as many messages as
    their size needs, to the queue of the job's lane, task and model."""
    # A message stays far below max_message_bytes (a quarter of it at 4 bytes per
    # character, the worst case of JSON and base64), so workers never refuse one.
    for part in parts_of(items, services.settings.max_message_bytes // 16):
        message = BatchMessage.model_validate(
            {
                "job": job_id,
                "task": spec.task,
                "model": spec.model,
                "params": spec.params,
                "lane": spec.lane,
                "items": part,
                "enqueued_at": time.time(),
            }
        )
        publish(services, message, producer)


def publish(services: Services, message: BatchMessage, producer: Any = None) -> None:
    """Send one message to the queue of its lane, task and model (the documents must
    already be in SQL); through ``producer`` (a kombu Producer, perhaps in a
    ``batch()``) when given."""
    queue = queue_name(message.task, message.model, message.lane)
    patiently(
        services,
        lambda: services.celery.send_task(
            TASK_NAME,
            args=[message.model_dump(mode="json")],
            # Celery would put a repr of the arguments (document text) in the headers.
            argsrepr=f"<job {message.job}: {len(message.items)} documents>",
            kwargsrepr="{}",
            queue=queue,
            routing_key=queue,
            ignore_result=True,
            producer=producer,
        ),
        batched=producer is not None,
    )


def patiently(services: Services, call: Callable[[], A], batched: bool = False) -> A:
    """``call``, tried again every second for ``publish_patience`` seconds while
    Redis does not answer (a message sent twice is computed twice, stored once).
    A batch's messages are sent when it ends: never tried again here."""
    deadline = time.monotonic() + services.publish_patience
    while True:
        try:
            return call()
        except PUBLISH_ERRORS:
            if batched or time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def wait_for_room(services: Services, queue: str) -> None:
    """Back-pressure: wait while the queue holds too many messages."""
    delay = 0.01
    limit = services.settings.max_queued_messages
    while patiently(services, lambda: services.redis.llen(queue)) >= limit:
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def parts_of(
    items: list[tuple[int, Document]], max_chars: int
) -> Iterator[list[tuple[int, Document]]]:
    """``items`` in order, cut into parts of at most ``max_chars`` characters (a
    document longer than that alone in its part)."""
    part: list[tuple[int, Document]] = []
    chars = 0
    for item in items:
        size = document_size(item[1])
        if part and chars + size > max_chars:
            yield part
            part, chars = [], 0
        part.append(item)
        chars += size
    if part:
        yield part
