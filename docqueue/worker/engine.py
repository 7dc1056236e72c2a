"""The worker's pipeline: messages in, batches through the model, rows into SQL,
acks back to Redis.

Three threads, joined by bounded queues, so tokenizing and writing overlap the
model's work:

* **intake** decodes messages (JSON only), checks them against this worker's limits,
  tokenizes their documents (many messages at once) and buffers them;
* **compute** takes batches as the flush policy says and runs ``forward``, splitting
  batches that run out of memory (remembering the size that worked) or raise
  (isolating the document that fails);
* **writer** runs ``postprocess``, stores the batch's rows in one transaction
  (retrying with backoff while the database is away), then acks every message whose
  documents are all committed, and wakes waiting clients through Redis pub/sub.
  Interactive batches jump the writer's queue too.

A message is acked only after all its documents' rows are committed.  When the
writer cannot commit, its queue fills, compute stops, the buffer reaches the
prefetch limit and the worker stops taking messages.

The same engine runs offline (no Redis, no SQL: :meth:`Engine.submit` and a
:class:`~docqueue.worker.store.MemoryStore`), which is what the benchmark compares
the queue against.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from pydantic import ValidationError

from docqueue.config import Settings
from docqueue.db.results import ResultRow
from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import BatchMessage, Document, params_key, text_problem
from docqueue.transport import ack_messages
from docqueue.worker.batcher import Buffer, Shape
from docqueue.worker.runners import Features, Runner
from docqueue.worker.store import ResultStore, StoreUnavailable

log = logging.getLogger(__name__)

#: Bulk message bytes tokenized per intake round (interactive messages always go first).
INTAKE_ROUND_BYTES = 256 * 1024

#: (lane, model, task, canonical params)
GroupKey = tuple[str, str, str, str]


class Envelope:
    """A received message (None offline) and how many of its documents still await
    a commit."""

    __slots__ = ("message", "job", "remaining", "enqueued_at")

    def __init__(
        self, message: Message | None, job: str, remaining: int, enqueued_at: float
    ) -> None:
        self.message = message
        self.job = job
        self.remaining = remaining
        self.enqueued_at = enqueued_at


@dataclass
class WorkItem:
    job: str
    seq: int
    features: Features
    envelope: Envelope
    arrived: float
    failures: int = 0

    @property
    def length(self) -> int:
        return self.features.length


@dataclass
class Computed:
    """A batch the model ran (``raw``) or could not run (``errors``), for the writer."""

    key: GroupKey
    items: list[WorkItem]
    raw: Any = None
    started_at: float = 0.0
    finished_at: float = 0.0
    #: Why the batch's documents could not be run (their rows become errors).
    error: str | None = None
    #: A CUDA event the host copy of ``raw`` is complete at (None: already there).
    ready: Any = None


@dataclass
class Rejected:
    """Rows decided without the model (bad input), for the writer."""

    rows: list[tuple[ResultRow, Envelope]]


class LaneQueue:
    """The writer's queue: interactive entries first; bulk entries block the producer
    once ``maxsize`` are waiting (that back-pressure is what stops the worker taking
    messages while the database is away), interactive ones never do."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._urgent: list[Any] = []
        self._bulk: list[Any] = []
        self._cond = threading.Condition()

    def put(self, entry: Any, urgent: bool) -> None:
        with self._cond:
            if not urgent:
                while len(self._bulk) >= self.maxsize:
                    self._cond.wait()
            (self._urgent if urgent else self._bulk).append(entry)
            self._cond.notify_all()

    def has_room(self) -> bool:
        """Whether a bulk entry can be put without waiting."""
        with self._cond:
            return len(self._bulk) < self.maxsize

    def take(self, timeout: float) -> list[Any]:
        """Entries of one lane: every waiting urgent one (committed together), else one
        bulk entry -- a batch is a fair transaction, and an urgent entry never waits
        behind more than one.  [] after ``timeout`` with none."""
        with self._cond:
            if not (self._urgent or self._bulk):
                self._cond.wait(timeout)
            if self._urgent:
                taken, self._urgent = self._urgent, []
            else:
                taken = self._bulk[:1]
                del self._bulk[:1]
            self._cond.notify_all()
            return taken


def to_host(raw: Any) -> tuple[Any, Any]:
    """Start copying a forward's tensor to the host and return at once, with the CUDA
    event that marks the copy done (the writer thread waits on it, the compute thread
    goes on to the next batch).  Anything else is returned as it is."""
    import torch

    if isinstance(raw, torch.Tensor) and raw.is_cuda:
        host = raw.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready
    return raw, None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


class Engine:
    def __init__(
        self,
        *,
        runners: dict[str, dict[str, Runner]],
        settings: Settings,
        store: ResultStore,
        worker_id: str,
        notify: Callable[[set[str]], Any] | None = None,
    ) -> None:
        self.runners = runners
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        #: Called with the ids of jobs that just had rows committed (wakes waiters).
        self.notify = notify
        self.buffer: Buffer[WorkItem] = Buffer(settings.max_wait_ms / 1000.0)
        self._intake: queue.SimpleQueue[Message | BatchMessage] = queue.SimpleQueue()
        self._intake_interactive: queue.SimpleQueue[Message | BatchMessage] = queue.SimpleQueue()
        self._intake_signal = threading.Event()
        self._written = LaneQueue(maxsize=4)
        #: Per group, while it has documents in flight: validated parameters, documents
        #: in flight, and (after out-of-memory) the rows and cost a batch may have.
        self._params: dict[GroupKey, dict[str, Any]] = {}
        self._active: dict[GroupKey, int] = {}
        self._learned: dict[GroupKey, tuple[int, int]] = {}
        self._groups_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self.documents_done = 0
        self.batches_run = 0
        #: Rows x longest input over every batch run.
        self.padded_tokens = 0
        #: Set by the consumer: wakes its event loop after acks free prefetch room.
        self.wake_consumer: Callable[[], None] = lambda: None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for name, target in (
            ("intake", self._intake_loop),
            ("compute", self._compute_loop),
            ("writer", self._writer_loop),
        ):
            thread = threading.Thread(target=target, name=f"docqueue-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def receive(self, message: Message) -> None:
        """Called by Celery's task consumer for each bulk message: hand over, return."""
        self._in_flight_add(1)
        self._intake.put(message)
        self._intake_signal.set()

    def receive_interactive(self, message: Message) -> None:
        """Called for each message of an interactive lane: it jumps the intake queue."""
        self._in_flight_add(1)
        self._intake_interactive.put(message)
        self._intake_signal.set()

    def submit(self, batch: BatchMessage) -> None:
        """Offline: documents straight in, no message to decode or ack."""
        self._in_flight_add(1)
        lane = self._intake_interactive if batch.lane == "interactive" else self._intake
        lane.put(batch)
        self._intake_signal.set()

    def drain(self, grace: float) -> bool:
        """Flush everything buffered now; wait up to ``grace`` seconds for it to be
        committed and acked.  True when nothing is left in flight."""
        self.buffer.flush_all = True
        self.buffer.wake()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.in_flight == 0:
                return True
            time.sleep(0.02)
        log.warning(
            "shutdown: %d messages/documents still in flight after %.0fs; their messages stay "
            "unacked and go back to the queue",
            self.in_flight,
            grace,
        )
        return False

    def stop(self) -> None:
        self._stop.set()
        self.buffer.wake()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _in_flight_add(self, n: int) -> None:
        with self._in_flight_lock:
            self._in_flight += n

    # --- intake --------------------------------------------------------------------

    def _intake_loop(self) -> None:
        while not self._stop.is_set():
            self._intake_signal.wait(0.1)
            self._intake_signal.clear()
            while messages := self._next_messages():
                try:
                    self._admit(messages)
                except Exception:  # a bug here must not kill the thread
                    log.exception("intake failed on %d messages; they stay unacked", len(messages))

    def _next_messages(self) -> list[Message | BatchMessage]:
        """Every waiting interactive message, then bulk messages up to a round's worth,
        so a single document never queues behind a long tokenizing round."""
        messages: list[Message | BatchMessage] = []
        while True:
            try:
                messages.append(self._intake_interactive.get_nowait())
            except queue.Empty:
                break
        size = 0
        while size < INTAKE_ROUND_BYTES:
            try:
                message = self._intake.get_nowait()
            except queue.Empty:
                break
            messages.append(message)
            size += _size(message)
        return messages

    def _admit(self, messages: list[Message | BatchMessage]) -> None:
        groups: dict[GroupKey, list[tuple[int, Document, Envelope]]] = defaultdict(list)
        group_params: dict[GroupKey, dict[str, Any]] = {}
        rejected: list[tuple[ResultRow, Envelope]] = []
        for message in messages:
            if isinstance(message, BatchMessage):
                batch: BatchMessage | None = message
                envelope_message = None
            else:
                batch = self._parse(message)
                envelope_message = message
            self._in_flight_add(-1)  # the message is now accounted for by its documents
            if batch is None:
                continue
            envelope = Envelope(envelope_message, batch.job, len(batch.items), batch.enqueued_at)
            self._in_flight_add(len(batch.items))
            if not batch.items:
                ack_messages([envelope_message] if envelope_message else [])
                continue
            problem, params = self._check_batch(batch)
            for seq, doc in batch.items:
                error = problem or self._check_document(doc)
                if error:
                    rejected.append((self._error_row(batch.job, seq, error, envelope), envelope))
                else:
                    key = (batch.lane, batch.model, batch.task, params_key(params))
                    group_params[key] = params
                    groups[key].append((seq, doc, envelope))
        for key, docs in groups.items():
            self._tokenize_group(key, group_params[key], docs, rejected)
        if rejected:
            self._written.put(Rejected(rejected), urgent=True)

    def _parse(self, message: Message) -> BatchMessage | None:
        try:
            body = message.decode()  # raises for content types other than JSON
            args = body.get("args") if isinstance(body, dict) else body[0]
            payload = args[0]
            items = payload.get("items") if isinstance(payload, dict) else None
            if isinstance(items, list) and len(items) > self.settings.max_items_per_message:
                raise ValueError(
                    f"{len(items)} documents in one message, more than this worker accepts "
                    f"({self.settings.max_items_per_message})"
                )
            return BatchMessage.model_validate(payload)
        except (
            ContentDisallowed,
            DecodeError,
            ValidationError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
        ) as exc:
            reason = _describe(exc)
            log.error(
                "message %s rejected (content type %s): %s",
                (message.headers or {}).get("id"),
                message.content_type,
                reason,
            )
            message.reject(requeue=False)
            return None

    def _check_batch(self, batch: BatchMessage) -> tuple[str | None, dict[str, Any]]:
        """Why this worker cannot run the message's documents (None: it can), and
        the validated parameters."""
        served = self.runners.get(batch.model)
        if served is None:
            return f"model {batch.model} is not served by this worker", {}
        runner = served.get(batch.task)
        if runner is None:
            return (
                f"model {batch.model} does not do {batch.task} (it does: {', '.join(served)})",
                {},
            )
        try:
            params = validate_params(
                batch.task, batch.params, max_new_tokens_cap=self.settings.max_new_tokens_cap
            )
            runner.check(params)
        except InvalidParams as exc:
            return str(exc), {}
        return None, params

    def _check_document(self, doc: Document) -> str | None:
        if isinstance(doc, str):
            problem = text_problem(doc)
            if problem:
                return problem
            size = len(doc)
        else:
            if not doc:
                return "no chat messages"
            size = sum(len(m.content) for m in doc)
        if size > self.settings.max_document_chars:
            return (
                f"document has {size} characters, more than this worker accepts "
                f"({self.settings.max_document_chars})"
            )
        return None

    def _tokenize_group(
        self,
        key: GroupKey,
        params: dict[str, Any],
        docs: list[tuple[int, Document, Envelope]],
        rejected: list[tuple[ResultRow, Envelope]],
    ) -> None:
        lane, model, task, _ = key
        runner = self.runners[model][task]
        texts = [doc for _, doc, _ in docs]
        try:
            features = runner.preprocess(texts, params)
        except Exception:  # isolate the document(s) the tokenizer cannot take
            features = []
            for text in texts:
                try:
                    features.extend(runner.preprocess([text], params))
                except Exception as exc:
                    features.append(f"could not tokenize: {_one_line(exc)}")
        now = time.monotonic()
        work = []
        for (seq, _, envelope), feature in zip(docs, features, strict=True):
            if isinstance(feature, str):
                rejected.append((self._error_row(envelope.job, seq, feature, envelope), envelope))
            else:
                work.append(WorkItem(envelope.job, seq, feature, envelope, now))
        if work:
            with self._groups_lock:
                self._params[key] = params
                self._active[key] = self._active.get(key, 0) + len(work)
            self.buffer.add(key, self._shape(key, runner), work, interactive=lane == "interactive")

    def _settle(self, key: GroupKey, documents: int) -> None:
        """Documents of a group are done; forget the group once none is in flight."""
        with self._groups_lock:
            left = self._active.get(key, 0) - documents
            if left > 0:
                self._active[key] = left
                return
            for state in (self._active, self._params, self._learned):
                state.pop(key, None)

    def _shape(self, key: GroupKey, runner: Runner) -> Shape:
        shape = runner.shape(self._params[key])
        learned = self._learned.get(key)
        if learned is None:
            return shape
        rows, cost = learned
        return Shape(shape.cost, min(shape.budget, cost), min(shape.max_rows, rows))

    def _error_row(self, job: str, seq: int, error: str, envelope: Envelope) -> ResultRow:
        return ResultRow(
            job_id=job,
            seq=seq,
            ok=False,
            error=error,
            worker_id=self.worker_id,
            enqueued_at=envelope.enqueued_at,
            attempts=1,
        )

    # --- compute -------------------------------------------------------------------

    def _compute_loop(self) -> None:
        import torch

        with torch.inference_mode():  # grad mode is per thread: set it where forward runs
            self._compute_batches()

    def _compute_batches(self) -> None:
        while not self._stop.is_set():
            # While the writer is behind, a bulk batch would wait to be handed over;
            # meanwhile only interactive documents are computed.
            backed_up = not self._written.has_room()
            taken = self.buffer.take(timeout=0.05 if backed_up else 0.2, interactive_only=backed_up)
            if taken is None:
                continue
            key, items = taken
            urgent = key[0] == "interactive"
            try:
                for done in self._run(key, items):
                    self._written.put(done, urgent)
            except Exception:  # a bug here must not kill the thread
                log.exception("batch of %d documents failed unexpectedly", len(items))
                self._written.put(
                    Computed(key, items, error="internal error in the worker"), urgent
                )

    def _run(self, key: GroupKey, items: list[WorkItem]) -> Iterator[Computed]:
        """Run a batch; on out-of-memory halve it, on an error isolate the culprit."""
        _, model, task, _ = key
        runner = self.runners[model][task]
        params = self._params[key]
        pending = [items]
        while pending:
            batch = pending.pop()
            limit = self._learned.get(key)
            if limit is not None and len(batch) > limit[0]:  # cut before an earlier OOM
                half = len(batch) // 2
                pending += [batch[half:], batch[:half]]
                continue
            started = time.time()
            try:
                raw = runner.forward(runner.collate([i.features for i in batch]), params)
            except Exception as exc:
                pending.extend(self._on_failure(key, runner, batch, exc))
                if len(batch) == 1 and batch[0].failures >= self.settings.max_attempts:
                    yield Computed(key, batch, error=self._failure_message(exc, batch[0].failures))
                continue
            self.batches_run += 1
            self.padded_tokens += len(batch) * max(i.length for i in batch)
            host, ready = to_host(raw)
            yield Computed(key, batch, host, started, time.time(), ready=ready)

    def _on_failure(
        self, key: GroupKey, runner: Runner, batch: list[WorkItem], exc: Exception
    ) -> list[list[WorkItem]]:
        """What to try next after ``batch`` failed."""
        if _is_oom(exc):
            self._release_memory()
        if len(batch) > 1:
            half = len(batch) // 2
            if _is_oom(exc):
                self._shrink(key, runner, batch)
                log.warning("out of memory on %d documents; halving", len(batch))
            else:
                log.warning("batch of %d failed (%s); splitting", len(batch), _one_line(exc))
            return [batch[half:], batch[:half]]
        item = batch[0]
        item.failures += 1
        log.warning(
            "document %s/%d failed (attempt %d of %d): %s",
            item.job,
            item.seq,
            item.failures,
            self.settings.max_attempts,
            _one_line(exc),
        )
        return [] if item.failures >= self.settings.max_attempts else [batch]

    def _shrink(self, key: GroupKey, runner: Runner, batch: list[WorkItem]) -> None:
        """Remember half of the batch that ran out of memory as this group's limit, in
        rows and in cost: the halves it is retried as are the size that then works."""
        shape = runner.shape(self._params[key])
        cost = shape.cost(len(batch), max(i.length for i in batch))
        rows, budget = self._learned.get(key, (shape.max_rows, shape.budget))
        self._learned[key] = (min(rows, max(1, len(batch) // 2)), min(budget, max(1, cost // 2)))
        self.buffer.reshape(key, self._shape(key, runner))

    def _release_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _failure_message(self, exc: Exception, attempts: int) -> str:
        what = "out of memory" if _is_oom(exc) else f"{type(exc).__name__}: {_one_line(exc)}"
        return f"model failed on this document {attempts} times: {what}"

    # --- writer --------------------------------------------------------------------

    def _writer_loop(self) -> None:
        while not self._stop.is_set():
            entries = self._written.take(timeout=0.1)
            if not entries:
                continue
            try:
                self._write(entries)
            except Exception:  # a bug here must not kill the thread
                log.exception(
                    "writing %d batches failed; their messages stay unacked", len(entries)
                )

    def _write(self, entries: Sequence[Computed | Rejected]) -> None:
        rows: list[tuple[ResultRow, Envelope]] = []
        for entry in entries:
            rows.extend(entry.rows if isinstance(entry, Rejected) else self._rows(entry))
        if not self._commit([row for row, _ in rows]):
            return
        for entry in entries:
            if isinstance(entry, Computed):
                self._settle(entry.key, len(entry.items))
        finished = []
        for _, envelope in rows:
            envelope.remaining -= 1
            if envelope.remaining == 0 and envelope.message is not None:
                finished.append(envelope.message)
        try:
            ack_messages(finished)
        except Exception as exc:  # broker away: the messages come back, SQL keeps one row
            log.warning("could not ack %d messages: %s", len(finished), _one_line(exc))
        if finished:
            self.wake_consumer()
        self.documents_done += len(rows)
        self._in_flight_add(-len(rows))
        self._notify({row.job_id for row, _ in rows})

    def _rows(self, computed: Computed) -> list[tuple[ResultRow, Envelope]]:
        _, model, task, _ = computed.key
        runner = self.runners[model][task]
        items = computed.items
        if computed.error is not None:
            return [
                (
                    ResultRow(
                        job_id=i.job,
                        seq=i.seq,
                        ok=False,
                        error=computed.error,
                        truncated=i.features.truncated,
                        worker_id=self.worker_id,
                        enqueued_at=i.envelope.enqueued_at,
                        attempts=max(1, i.failures),
                    ),
                    i.envelope,
                )
                for i in items
            ]
        try:
            if computed.ready is not None:
                computed.ready.synchronize()
            outputs = runner.postprocess(
                computed.raw, [i.features for i in items], self._params[computed.key]
            )
        except Exception as exc:
            log.exception("postprocess failed for a batch of %d", len(items))
            error = f"postprocess failed: {_one_line(exc)}"
            return [(self._error_row(i.job, i.seq, error, i.envelope), i.envelope) for i in items]
        return [
            (
                ResultRow(
                    job_id=i.job,
                    seq=i.seq,
                    ok=True,
                    output=out.output,
                    embedding=out.embedding,
                    truncated=i.features.truncated,
                    worker_id=self.worker_id,
                    batch_size=len(items),
                    enqueued_at=i.envelope.enqueued_at,
                    started_at=computed.started_at,
                    finished_at=computed.finished_at,
                ),
                i.envelope,
            )
            for i, out in zip(items, outputs, strict=True)
        ]

    def _commit(self, rows: list[ResultRow]) -> bool:
        """Store the rows, retrying while the database is unreachable.  False only
        when stopping before it came back (the messages then stay unacked)."""
        delay = 0.2
        outage_logged = False
        while True:
            try:
                self.store.commit(rows)
            except StoreUnavailable as exc:
                if not outage_logged:
                    log.warning(
                        "database unavailable (%s); holding %d results, retrying", exc, len(rows)
                    )
                    outage_logged = True
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            if outage_logged:
                log.warning("database reachable again; %d results committed", len(rows))
            return True

    def _notify(self, jobs: set[str]) -> None:
        if self.notify is None:
            return
        try:
            self.notify(jobs)
        except Exception as exc:  # waiting clients fall back to polling SQL
            log.debug("could not publish completions: %s", exc)


def _size(message: Message | BatchMessage) -> int:
    if isinstance(message, BatchMessage):
        return sum(len(doc) if isinstance(doc, str) else 1 for _, doc in message.items)
    return len(message.body or b"")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
    return _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
