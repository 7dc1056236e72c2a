"""Admission: deliveries in, tokenized documents out, or the rows that say why not.

A worker checks everything a message says against its own configuration, whoever
sent it: the model must be one it serves, the task one the model does, the
parameters within this worker's limits, each document runnable and not too long.
Anything else becomes an error row naming the problem; a message that cannot even
be opened is rejected whole.  The job must be one the worker's database holds
(else the delivery is set aside, to go back to the queue for a worker that has
it); a cancelled or deleted job's documents are dropped.

A message must also agree with the ledger (:mod:`.ledger`): its task, model,
parameters and lane are its job's, and each document is the one the job holds
under that sequence number.  One that does not is rejected whole (a dead letter)
and nothing of it is written: its job's genuine documents stay pending.  While
the database is away nothing can be checked, so deliveries wait in admission
(unacked, holding the prefetch) until it is back.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from docqueue.config import Settings
from docqueue.db.results import ResultRow
from docqueue.errors import one_line
from docqueue.params import InvalidParams, validate_params
from docqueue.protocol import (
    BatchMessage,
    Document,
    document_digest,
    document_problem,
    document_size,
    params_key,
)
from docqueue.worker.batcher import Shape
from docqueue.worker.cohorts import Cohorts
from docqueue.worker.delivery import Delivery, InvalidMessage, ack
from docqueue.worker.ledger import JobStates, document_disagreement
from docqueue.worker.reuse import Hashed, split_reusable
from docqueue.worker.runners import Features, Runner
from docqueue.worker.store import StoreUnavailable
from docqueue.worker.work import CohortKey, Envelope, WorkItem, error_row

log = logging.getLogger(__name__)

#: (sequence number, document, its envelope)
Pending = tuple[int, Document, Envelope]
#: While the database is away, the ledger is asked again after this many seconds,
#: doubling up to the second.
FIRST_LEDGER_RETRY, MAX_LEDGER_RETRY = 0.2, 5.0
#: What becomes of an opened delivery: admitted; parked (its job is not in this
#: worker's database); dropped (its job was cancelled or deleted); rejected (it
#: disagrees with the ledger), with the reason.
Verdict = tuple[Literal["admit", "park", "drop", "reject"], str]


@dataclass
class Admitted:
    """The outcome of admitting some deliveries."""

    #: Tokenized documents for the buffer: (cohort, its batch shape, documents).
    work: list[tuple[CohortKey, Shape, list[WorkItem]]] = field(default_factory=list)
    #: Rows decided without the model: refusals, and copies of earlier results.
    rejected: list[tuple[ResultRow, Envelope]] = field(default_factory=list)
    #: Documents in the deliveries admitted (each becomes work or a rejected row).
    documents: int = 0
    #: Of the rejected rows, copies of earlier results (:mod:`.reuse`).
    reused: int = 0
    #: Deliveries whose job this worker's database does not hold, by job.
    unknown: dict[str, list[Delivery]] = field(default_factory=dict)
    #: Documents of each bulk delivery admitted (what the worker's hold counts by).
    bulk_sizes: list[int] = field(default_factory=list)


class Admission:
    def __init__(
        self,
        runners: dict[str, dict[str, Runner]],
        settings: Settings,
        cohorts: Cohorts,
        worker_id: str,
        jobs: JobStates,
    ) -> None:
        self.runners = runners
        self.settings = settings
        self.cohorts = cohorts
        self.worker_id = worker_id
        self.jobs = jobs

    def admit(self, deliveries: Sequence[Delivery]) -> Admitted:
        admitted = Admitted()
        pending: dict[CohortKey, list[Pending]] = defaultdict(list)
        cohort_params: dict[CohortKey, dict[str, Any]] = {}
        opened = [(d, b) for d in deliveries if (b := self._open(d)) is not None]
        for delivery, batch in self._agreeing(opened, admitted):
            envelope = Envelope(
                delivery, batch.job, len(batch.items), batch.enqueued_at, batch.task, batch.model
            )
            admitted.documents += len(batch.items)
            if not delivery.interactive:
                admitted.bulk_sizes.append(len(batch.items))
            if not batch.items:
                ack([delivery])
                continue
            problem, params = self._check_batch(batch)
            key: CohortKey = (batch.lane, batch.model, batch.task, params_key(params))
            for seq, doc in batch.items:
                error = problem or self._check_document(doc, batch.task)
                if error:
                    admitted.rejected.append(
                        (error_row(envelope, seq, error, self.worker_id), envelope)
                    )
                else:
                    cohort_params[key] = params
                    pending[key].append((seq, doc, envelope))
        for key, docs in pending.items():
            hashed = [(seq, doc, env, document_digest(doc)) for seq, doc, env in docs]
            runner = self.runners[key[1]][key[2]]
            split = split_reusable(self.jobs, runner, key, hashed, self.worker_id)
            admitted.rejected.extend(split.copied)
            admitted.reused += len(split.copied)
            if split.to_compute:
                self._tokenize(key, cohort_params[key], split.to_compute, admitted)
        return admitted

    def _agreeing(
        self, opened: list[tuple[Delivery, BatchMessage]], admitted: Admitted
    ) -> list[tuple[Delivery, BatchMessage]]:
        """The opened deliveries of active jobs that agree with the ledger.  The
        others are parked (job unknown here), acked and dropped (job cancelled or
        deleted) or rejected whole, with the disagreement."""
        agreeing = []
        for (delivery, batch), (verdict, reason) in zip(
            opened, self._until_reachable(opened), strict=True
        ):
            if verdict == "park":
                admitted.unknown.setdefault(batch.job, []).append(delivery)
            elif verdict == "drop":  # its documents are cancelled, or gone with the job
                ack([delivery])
            elif verdict == "reject":
                delivery.reject(reason)
            else:
                agreeing.append((delivery, batch))
        return agreeing

    def _until_reachable(self, opened: list[tuple[Delivery, BatchMessage]]) -> list[Verdict]:
        """:meth:`_verdicts`, waiting while the database is away: nothing is admitted
        unchecked, and the deliveries stay unacked, so the worker takes no more than
        its prefetch until the database is back."""
        delay, waited = FIRST_LEDGER_RETRY, False
        while True:
            try:
                verdicts = self._verdicts(opened)
            except StoreUnavailable as exc:
                if not waited:
                    log.warning(
                        "database unavailable (%s); holding %d messages until it is back",
                        exc,
                        len(opened),
                    )
                waited = True
                time.sleep(delay)
                delay = min(delay * 2, MAX_LEDGER_RETRY)
                continue
            if waited:
                log.warning("database reachable again; admitting %d held messages", len(opened))
            return verdicts

    def _verdicts(self, opened: list[tuple[Delivery, BatchMessage]]) -> list[Verdict]:
        """What to do with each opened delivery, from the jobs' records (one query
        for jobs not known yet) and the stored documents of every delivery that
        agrees with its job so far (one query for the whole round)."""
        records = self.jobs.lookup({batch.job for _, batch in opened})
        verdicts: list[Verdict] = []
        wanted: dict[str, set[int]] = defaultdict(set)
        for _, batch in opened:
            record = records[batch.job]
            if record is None:
                verdicts.append(("park", ""))
            elif record.state != "active":
                verdicts.append(("drop", ""))
            elif problem := record.disagreement(batch):
                verdicts.append(("reject", problem))
            else:
                verdicts.append(("admit", ""))
                wanted[batch.job].update(seq for seq, _ in batch.items)
        stored = self.jobs.documents(wanted)
        if stored is not None:
            for i, (_, batch) in enumerate(opened):
                if verdicts[i][0] == "admit" and (problem := document_disagreement(batch, stored)):
                    verdicts[i] = ("reject", problem)
        return verdicts

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
        self, key: CohortKey, params: dict[str, Any], docs: list[Hashed], admitted: Admitted
    ) -> None:
        lane, model, task, _ = key
        runner = self.runners[model][task]
        features = self._preprocess(runner, [doc for _, doc, _, _ in docs], params)
        now = time.monotonic()
        work = []
        for (seq, _, envelope, text_hash), feature in zip(docs, features, strict=True):
            if isinstance(feature, str):
                row = error_row(envelope, seq, feature, self.worker_id)
                admitted.rejected.append((row, envelope))
            else:
                work.append(
                    WorkItem(envelope.job, seq, feature, envelope, now, text_hash=text_hash)
                )
        if work:
            self.cohorts.enter(key, params, len(work))
            admitted.work.append((key, self.cohorts.shape(key, runner), work))

    @staticmethod
    def _preprocess(
        runner: Runner, docs: list[Document], params: dict[str, Any]
    ) -> list[Features | str]:
        """Each document's features, or why the tokenizer cannot take it (a document
        that breaks the tokenizer is isolated, the rest go on)."""
        try:
            return list(runner.preprocess(docs, params))
        except BaseException as exc:
            if not tokenizer_failure(exc):
                raise
            features: list[Features | str] = []
            for doc in docs:
                try:
                    features.extend(runner.preprocess([doc], params))
                except BaseException as alone:
                    if not tokenizer_failure(alone):
                        raise
                    features.append(f"could not tokenize: {one_line(alone)}")
            return features


def tokenizer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a document's failure to tokenize: any exception, or a panic
    of the Rust tokenizers library (pyo3's ``PanicException`` derives from
    BaseException, and would otherwise end the intake thread)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
