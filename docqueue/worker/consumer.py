"""The Celery side of a worker: messages from kombu become deliveries for the engine.

The worker's task ``docqueue.batch`` has a custom execution strategy: instead of
running one task per message, it hands each message, undecoded, to the engine as a
:class:`KombuDelivery`.  The engine's intake thread opens it (decoding JSON only
and checking the wire schema), and its writer acks it once the rows are committed.
Celery still owns the connection, prefetch, reconnects, remote control and signals.

Every message the worker refuses -- one the engine cannot open or that disagrees
with the ledger, and one Celery itself cannot route (not JSON, no task header, an
unknown task) -- is set aside as a dead letter (:mod:`docqueue.deadletters`) with a
one-line reason, never dropped and never logged with a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task, bootsteps
from kombu import Consumer, Exchange, Queue
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from kombu.utils.json import dumps
from pydantic import ValidationError

from docqueue import deadletters
from docqueue.config import Settings
from docqueue.errors import one_line
from docqueue.protocol import TASK_NAME, BatchMessage, task_argument
from docqueue.transport import ack_messages
from docqueue.worker.delivery import Delivery, InvalidMessage
from docqueue.worker.engine import Engine

log = logging.getLogger(__name__)

#: Returns of a message to its queue (its job is not in the worker's database) are
#: counted under this key plus its id, across workers, for this many seconds.
RETURNS_KEY, RETURNS_KEPT = "docqueue.returns.", 24 * 3600
#: How often the bulk prefetch is matched to what the worker can finish soon
#: (:mod:`.holding`), besides after every ack.
HOLD_INTERVAL = 0.5


class DeadLetters:
    """Sets refused messages aside in the broker's Redis, then removes them from
    the queue's unacked set.  A message that cannot be set aside (Redis refused
    the write) goes back to its queue instead: nothing refused is lost."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.dead_letter_limit
        self.max_bytes = settings.max_message_bytes

    def set_aside(self, message: Message, reason: str) -> None:
        queue = queue_of(message)
        try:
            with message.channel.conn_or_acquire() as redis:
                entry = deadletters.set_aside(
                    redis,
                    queue,
                    reason,
                    raw_envelope(message),
                    limit=self.limit,
                    max_bytes=self.max_bytes,
                )
        except Exception as exc:  # Redis away or refusing: keep the message
            log.error(
                "message %s from %s refused (%s) and could not be set aside (%s); "
                "it goes back to its queue",
                message_id(message),
                queue,
                reason,
                one_line(exc),
            )
            _settle(message, requeue=True)
            return
        log.warning(
            "dead letter %d from queue %s: %s (message %s)",
            entry,
            queue,
            reason,
            message_id(message),
        )
        _settle(message, requeue=False)


def queue_of(message: Message) -> str:
    """The queue a message came from, as kombu routed it."""
    info = message.delivery_info or {}
    return str(info.get("routing_key") or info.get("exchange") or "unknown")


def message_id(message: Message) -> str:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return str(headers.get("id") or message.delivery_tag or "(no id)")


def raw_envelope(message: Message) -> bytes | str:
    """The message as it was on the queue: kombu's whole envelope, re-encoded the
    way kombu reads it (so ``docqueue dead-letters replay`` can put it back), or
    its body alone where the transport keeps no envelope."""
    raw = getattr(message, "_raw", None)
    if isinstance(raw, dict):
        try:
            return str(dumps(raw))
        except (TypeError, ValueError):
            pass
    return message.body or b""


def _settle(message: Message, requeue: bool) -> None:
    try:
        message.reject(requeue=requeue)
    except Exception as exc:  # the connection is gone: kombu restores it later
        log.warning("message %s: %s", message_id(message), one_line(exc))


class KombuDelivery(Delivery):
    """A kombu message, opened on the engine's intake thread."""

    def __init__(
        self,
        message: Message,
        interactive: bool,
        wake: Callable[[], None],
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.message = message
        self.interactive = interactive
        #: Wakes the consumer's event loop (acks free prefetch room).
        self.wake = wake
        #: Where a refused message goes (None: it is dropped with a log line).
        self.dead_letters = dead_letters

    @property
    def size(self) -> int:
        return len(self.message.body or b"")

    def open(self, max_items: int) -> BatchMessage:
        if self.message.content_type != "application/json":
            raise InvalidMessage(
                f"content type {self.message.content_type or '(none)'} is not accepted "
                "(JSON only); nothing was deserialized"
            )
        try:
            body = self.message.decode()
        except (ContentDisallowed, DecodeError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidMessage(f"body cannot be decoded: {one_line(exc)}") from None
        task = _task_name(self.message.headers, body)
        if task != TASK_NAME:
            raise InvalidMessage(f"task {task!r} is not {TASK_NAME}")
        try:
            payload = task_argument(body)
        except ValueError as exc:
            raise InvalidMessage(str(exc)) from None
        items = payload.get("items") if isinstance(payload, dict) else None
        if isinstance(items, list) and len(items) > max_items:
            raise InvalidMessage(
                f"{len(items)} documents in one message, more than this worker accepts "
                f"({max_items})"
            )
        try:
            return BatchMessage.model_validate(payload)
        except ValidationError as exc:
            raise InvalidMessage(_describe(exc)) from None

    def reject(self, reason: str) -> None:
        if self.dead_letters is None:
            log.error("message %s rejected: %s", message_id(self.message), reason)
            _settle(self.message, requeue=False)
        else:
            self.dead_letters.set_aside(self.message, reason)
        # Replayed, it starts again with no returns counted.
        with contextlib.suppress(Exception), self.message.channel.conn_or_acquire() as redis:
            redis.delete(RETURNS_KEY + message_id(self.message))

    def retry(self) -> None:
        self.message.reject(requeue=True)  # to the tail of its queue
        self.wake()  # its prefetch slot is free

    def count_return(self) -> int | None:
        key = RETURNS_KEY + message_id(self.message)
        try:
            with self.message.channel.conn_or_acquire() as redis:
                pipe = redis.pipeline()
                pipe.incr(key)
                pipe.expire(key, RETURNS_KEPT)
                count, _ = pipe.execute()
        except Exception as exc:  # Redis away: the message goes back uncounted
            log.warning("message %s: returns not counted: %s", message_id(self.message), exc)
            return None
        return int(count)

    @classmethod
    def ack_all(cls, deliveries: Sequence[Delivery]) -> None:
        kombu = [d for d in deliveries if isinstance(d, KombuDelivery)]
        ack_messages(d.message for d in kombu)
        if kombu:
            kombu[0].wake()


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
    )


def _task_name(headers: Any, body: Any) -> Any:
    """The task a message names: its header (protocol 2), else its body's (1)."""
    if isinstance(headers, dict) and "task" in headers:
        return headers["task"]
    return body.get("task") if isinstance(body, dict) else None


def intake_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery execution strategy: every bulk message goes to the engine, undecoded."""
    receive = app.docqueue_engine.receive
    dead_letters = DeadLetters(app.docqueue_settings)

    def wake() -> None:
        app.docqueue_bridge.wake()

    def on_message(message: Message, *args: Any, **kw: Any) -> None:
        receive(KombuDelivery(message, False, wake, dead_letters))

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
    * The bulk prefetch follows what the worker can finish soon (:mod:`.holding`):
      set after every ack and twice a second, so the rest of a job stays queued.
    * On warm shutdown: stop consuming, let the engine finish what it holds, and only
      then let Celery close the channels (which returns anything still unacked).
    * When the connection to Redis is lost, Celery closes its channels and opens new
      ones; kombu would return every unacked message of a closed channel to its
      queue, though the engine still holds them (computing, committing, then acking
      them through the old channel once Redis answers): they would be computed
      twice, and a copy taken again under the same delivery tag would lose its
      record in Redis when the first is acked.  The channels the engine consumes
      from return nothing when closed, until shutdown, when what the engine could
      not finish goes back.
    * Messages Celery cannot route to a task (not JSON, no task header, an unknown
      task) are set aside as dead letters with one line, instead of Celery's
      tracebacks (one of which, an unknown task without an id, killed the worker).
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
        #: Channels whose messages the engine received (old ones too, while the
        #: engine holds messages of theirs).
        self.held: weakref.WeakSet[Any] = weakref.WeakSet()
        self.dead_letters = DeadLetters(c.app.docqueue_settings)
        self.consumer_of_tasks = c
        c.app.docqueue_bridge = self
        # Celery looks these up on the consumer when its task handler is built (at
        # each start, after this step's __init__) or when it calls them.
        c.on_unknown_message = self._unknown_message
        c.on_unknown_task = self._unknown_task
        c.on_invalid_task = self._invalid_task
        c.on_decode_error = self._undecodable

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
        for channel in (self.channel, c.task_consumer.channel):
            channel.do_restore = False  # see the class's docstring
            self.held.add(channel)
        log.info("worker ready: consuming %s", ", ".join(self.lanes))

    def _receive_interactive(self, message: Message) -> None:
        self.engine.receive(KombuDelivery(message, True, self.wake, self.dead_letters))

    # --- what Celery cannot route ----------------------------------------------------

    def _unknown_message(self, body: Any, message: Message) -> None:
        self.dead_letters.set_aside(message, "no task header: not a Celery task message")

    def _unknown_task(self, body: Any, message: Message, exc: BaseException) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        self.dead_letters.set_aside(
            message, f"task {headers.get('task')!r} is not {TASK_NAME} (unknown task)"
        )

    def _invalid_task(self, body: Any, message: Message, exc: BaseException) -> None:
        self.dead_letters.set_aside(message, f"invalid task message: {one_line(exc)}")

    def _undecodable(self, message: Message, exc: BaseException) -> None:
        if isinstance(exc, ContentDisallowed):
            reason = (
                f"content type {message.content_type or '(none)'} is not accepted "
                "(JSON only); nothing was deserialized"
            )
        else:
            reason = f"body cannot be decoded: {one_line(exc)}"
        self.dead_letters.set_aside(message, reason)

    def stop(self, c: Any) -> None:
        self._cancel(self.consumer)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        hub.add_reader(self.reader, self._empty_pipe)
        # Acks wake the event loop through the pipe it watches: this instance's.
        c.app.docqueue_bridge = self
        # Celery cancels the loop's timers when the connection fails; a new loop
        # registers this one again.
        hub.call_repeatedly(HOLD_INTERVAL, self._match_hold)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up already pending is enough
            os.write(self.writer, b"!")

    def _empty_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.reader, 4096)
        self._match_hold()

    def _match_hold(self) -> None:
        """Set the bulk prefetch to what the worker can finish soon.  Celery's
        loop applies a changed value before it next polls Redis."""
        qos = getattr(self.consumer_of_tasks, "qos", None)
        if qos is None or not qos.value:  # not started yet, or prefetch unlimited
            return
        change = self.engine.hold.messages() - qos.value
        if change:
            log.debug(
                "bulk prefetch %d -> %d messages (%s documents/s of model time)",
                qos.value,
                qos.value + change,
                f"{self.engine.hold.rate:.0f}" if self.engine.hold.rate else "no rate yet",
            )
        if change > 0:
            qos.increment_eventually(change)
        elif change < 0:
            qos.decrement_eventually(-change)

    def shutdown(self, c: Any) -> None:
        self._cancel(self.consumer)
        self._cancel(c.task_consumer)
        self.engine.drain(self.grace)
        self._return_unfinished()
        if self.channel is not None:
            try:
                self.channel.close()  # returns whatever is still unacked
            except Exception as exc:
                log.debug("closing the interactive channel: %s", exc)

    def _return_unfinished(self) -> None:
        """What the engine did not finish goes back to its queue: the channels still
        open do so when they are closed; those of a connection lost earlier, now."""
        for channel in list(self.held):
            channel.do_restore = True
            if channel.closed:
                try:
                    channel.qos.restore_unacked_once()
                except Exception as exc:  # Redis away: the visibility timeout returns them
                    log.warning("could not return unfinished messages: %s", one_line(exc))

    @staticmethod
    def _cancel(consumer: Any) -> None:
        if consumer is not None:
            try:
                consumer.cancel()
            except Exception as exc:  # connection already gone
                log.debug("cancel on shutdown: %s", exc)
