"""Admission: deliveries in, tokenized documents out, or the rows that say why not.

A worker checks everything a message says against its own configuration, whoever
sent it: the model must be one it serves, the task one the model does, the
parameters within this worker's limits, each document runnable and not too long.
Anything else becomes an error row naming the problem; a message that cannot even
be opened is rejected whole.  The job must be one the worker's database holds
(else the delivery is set aside, to go back to the queue for a worker that has
it); a cancelled or deleted job's documents are dropped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from docqueue.config import Settings
from docqueue.db.results import ResultRow
from docqueue.errors import one_line
from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import BatchMessage, Document, document_problem, document_size, params_key
from docqueue.worker.batcher import Shape
from docqueue.worker.delivery import Delivery, InvalidMessage, ack
from docqueue.worker.groups import Groups
from docqueue.worker.ledger import JobStates
from docqueue.worker.runners import Features, Runner
from docqueue.worker.work import Envelope, GroupKey, WorkItem, error_row

log = logging.getLogger(__name__)

#: (sequence number, document, its envelope)
Pending = tuple[int, Document, Envelope]


@dataclass
class Admitted:
    """The outcome of admitting some deliveries."""

    #: Tokenized documents for the buffer: (group, its batch shape, documents).
    work: list[tuple[GroupKey, Shape, list[WorkItem]]] = field(default_factory=list)
    #: Rows decided without the model.
    rejected: list[tuple[ResultRow, Envelope]] = field(default_factory=list)
    #: Documents in the deliveries admitted (each becomes work or a rejected row).
    documents: int = 0
    #: Deliveries whose job this worker's database does not hold, by job.
    unknown: dict[str, list[Delivery]] = field(default_factory=dict)


class Admission:
    def __init__(
        self,
        runners: dict[str, dict[str, Runner]],
        settings: Settings,
        groups: Groups,
        worker_id: str,
        jobs: JobStates,
    ) -> None:
        self.runners = runners
        self.settings = settings
        self.groups = groups
        self.worker_id = worker_id
        self.jobs = jobs

    def admit(self, deliveries: Sequence[Delivery]) -> Admitted:
        admitted = Admitted()
        pending: dict[GroupKey, list[Pending]] = defaultdict(list)
        group_params: dict[GroupKey, dict[str, Any]] = {}
        opened = [(d, b) for d in deliveries if (b := self._open(d)) is not None]
        states = self.jobs.lookup({batch.job for _, batch in opened})
        for delivery, batch in opened:
            state = states[batch.job]
            if state is None:
                admitted.unknown.setdefault(batch.job, []).append(delivery)
                continue
            if state != "active":  # its documents are cancelled, or gone with the job
                ack([delivery])
                continue
            envelope = Envelope(delivery, batch.job, len(batch.items), batch.enqueued_at)
            admitted.documents += len(batch.items)
            if not batch.items:
                ack([delivery])
                continue
            problem, params = self._check_batch(batch)
            key: GroupKey = (batch.lane, batch.model, batch.task, params_key(params))
            for seq, doc in batch.items:
                error = problem or self._check_document(doc, batch.task)
                if error:
                    admitted.rejected.append(
                        (error_row(envelope, seq, error, self.worker_id), envelope)
                    )
                else:
                    group_params[key] = params
                    pending[key].append((seq, doc, envelope))
        for key, docs in pending.items():
            self._tokenize(key, group_params[key], docs, admitted)
        return admitted

    def _open(self, delivery: Delivery) -> BatchMessage | None:
        try:
            return delivery.open(self.settings.max_items_per_message)
        except InvalidMessage as exc:
            delivery.reject(str(exc))
            return None

    def _check_batch(self, batch: BatchMessage) -> tuple[str | None, dict[str, Any]]:
        """Why this worker cannot run the batch's documents (None: it can), and
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

    def _check_document(self, doc: Document, task: str) -> str | None:
        problem = document_problem(doc, task)
        if problem:
            return problem
        size = document_size(doc)
        if size > self.settings.max_document_chars:
            return (
                f"document has {size} characters, more than this worker accepts "
                f"({self.settings.max_document_chars})"
            )
        return None

    def _tokenize(
        self, key: GroupKey, params: dict[str, Any], docs: list[Pending], admitted: Admitted
    ) -> None:
        lane, model, task, _ = key
        runner = self.runners[model][task]
        features = self._preprocess(runner, [doc for _, doc, _ in docs], params)
        now = time.monotonic()
        work = []
        for (seq, _, envelope), feature in zip(docs, features, strict=True):
            if isinstance(feature, str):
                row = error_row(envelope, seq, feature, self.worker_id)
                admitted.rejected.append((row, envelope))
            else:
                work.append(WorkItem(envelope.job, seq, feature, envelope, now))
        if work:
            self.groups.enter(key, params, len(work))
            admitted.work.append((key, self.groups.shape(key, runner), work))

    @staticmethod
    def _preprocess(
        runner: Runner, docs: list[Document], params: dict[str, Any]
    ) -> list[Features | str]:
        """Each document's features, or why the tokenizer cannot take it (a document
        that breaks the tokenizer is isolated, the rest go on)."""
        try:
            return list(runner.preprocess(docs, params))
        except Exception:
            features: list[Features | str] = []
            for doc in docs:
                try:
                    features.extend(runner.preprocess([doc], params))
                except Exception as exc:
                    features.append(f"could not tokenize: {one_line(exc)}")
            return features
