"""The Celery side of a worker: messages from kombu become deliveries for the engine.

The worker's task ``docqueue.batch`` has a custom execution strategy: instead of
running one task per message, it hands each message, undecoded, to the engine as a
:class:`KombuDelivery`.  The engine's intake thread opens it (decoding JSON only
and checking the wire schema), and its writer acks it once the rows are committed.
Celery still owns the connection, prefetch, reconnects, remote control and signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task, bootsteps
from kombu import Consumer, Exchange, Queue
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from pydantic import ValidationError

from docqueue.errors import one_line
from docqueue.protocol import TASK_NAME, BatchMessage
from docqueue.transport import ack_messages
from docqueue.worker.delivery import Delivery, InvalidMessage
from docqueue.worker.engine import Engine

log = logging.getLogger(__name__)


class KombuDelivery(Delivery):
    """A kombu message, opened on the engine's intake thread."""

    def __init__(self, message: Message, interactive: bool, wake: Callable[[], None]) -> None:
        self.message = message
        self.interactive = interactive
        #: Wakes the consumer's event loop (acks free prefetch room).
        self.wake = wake

    @property
    def size(self) -> int:
        return len(self.message.body or b"")

    def open(self, max_items: int) -> BatchMessage:
        try:
            body = self.message.decode()  # raises for content types other than JSON
            args: Any = body.get("args") if isinstance(body, dict) else body[0]
            payload = args[0]
            items = payload.get("items") if isinstance(payload, dict) else None
            if isinstance(items, list) and len(items) > max_items:
                raise InvalidMessage(
                    f"{len(items)} documents in one message, more than this worker accepts "
                    f"({max_items})"
                )
            return BatchMessage.model_validate(payload)
        except ValidationError as exc:
            raise InvalidMessage(_describe(exc)) from None
        except (
            ContentDisallowed,
            DecodeError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
        ) as exc:
            raise InvalidMessage(one_line(exc)) from None

    def reject(self, reason: str) -> None:
        log.error(
            "message %s rejected (content type %s): %s",
            (self.message.headers or {}).get("id"),
            self.message.content_type,
            reason,
        )
        self.message.reject(requeue=False)

    def retry(self) -> None:
        self.message.reject(requeue=True)  # to the tail of its queue
        self.wake()  # its prefetch slot is free

    @classmethod
    def ack_all(cls, deliveries: Sequence[Delivery]) -> None:
        kombu = [d for d in deliveries if isinstance(d, KombuDelivery)]
        ack_messages(d.message for d in kombu)
        if kombu:
            kombu[0].wake()


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])


def intake_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery execution strategy: every bulk message goes to the engine, undecoded."""
    receive = app.docqueue_engine.receive

    def wake() -> None:
        app.docqueue_bridge.wake()

    def on_message(message: Message, *args: Any, **kw: Any) -> None:
        receive(KombuDelivery(message, False, wake))

    return on_message


class BatchTask(Task):
    name = TASK_NAME
    Strategy = "docqueue.worker.consumer:intake_strategy"
    typing = False

    def run(self, *args: Any, **kwargs: Any) -> None:  # never called: the strategy takes over
        raise RuntimeError("docqueue.batch messages are handled by the worker's engine")


class EngineBridge(bootsteps.StartStopStep):
    """Connects the engine to Celery's consumer.

    * Interactive lanes get a consumer of their own, on their own channel with their
      own prefetch, so a backend's single document is taken at once even while bulk
      messages fill the task consumer's prefetch.
    * Acks happen on the engine's writer thread.  When the prefetch limit was reached
      the event loop stops polling Redis and sleeps until its next timer; a byte on a
      pipe it watches wakes it at once, so freed prefetch is used immediately.
    * On warm shutdown: stop consuming, let the engine finish what it holds, and only
      then let Celery close the channels (which returns anything still unacked).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.engine: Engine = c.app.docqueue_engine
        self.lanes: list[str] = c.app.docqueue_lanes
        self.grace: float = c.app.docqueue_settings.shutdown_grace
        self.prefetch: int = c.app.docqueue_settings.interactive_prefetch
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self.writer, False)
        self.channel: Any = None
        self.consumer: Consumer | None = None
        c.app.docqueue_bridge = self

    def start(self, c: Any) -> None:
        lanes = [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in self.lanes
        ]
        self.channel = c.connection.channel()
        self.channel.basic_qos(0, self.prefetch, False)
        self.consumer = Consumer(
            self.channel, lanes, on_message=self._receive_interactive, accept=["json"]
        )
        self.consumer.consume()
        log.info("worker ready: consuming %s", ", ".join(self.lanes))

    def _receive_interactive(self, message: Message) -> None:
        self.engine.receive(KombuDelivery(message, True, self.wake))

    def stop(self, c: Any) -> None:
        self._cancel(self.consumer)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        hub.add_reader(self.reader, self._empty_pipe)
        # Acks wake the event loop through the pipe it watches: this instance's.
        c.app.docqueue_bridge = self

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up already pending is enough
            os.write(self.writer, b"!")

    def _empty_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.reader, 4096)

    def shutdown(self, c: Any) -> None:
        self._cancel(self.consumer)
        self._cancel(c.task_consumer)
        self.engine.drain(self.grace)
        if self.channel is not None:
            try:
                self.channel.close()  # returns whatever is still unacked
            except Exception as exc:
                log.debug("closing the interactive channel: %s", exc)

    @staticmethod
    def _cancel(consumer: Any) -> None:
        if consumer is not None:
            try:
                consumer.cancel()
            except Exception as exc:  # connection already gone
                log.debug("cancel on shutdown: %s", exc)
