"""Submitting single documents, each a job of its own on its model's interactive
lane (what a web backend sends), and the checks every submission passes first."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from docqueue.core.creating import checked, create_once, item_row
from docqueue.core.documents import ResultHandle
from docqueue.core.enqueue import resume
from docqueue.core.errors import PublishFailed
from docqueue.core.publishing import PUBLISH_ERRORS, publish_items
from docqueue.core.services import Services
from docqueue.db import Connection, DatabaseError
from docqueue.db import jobs as ledger
from docqueue.jobspec import JobSpec
from docqueue.producer.documents import InvalidDocument, as_record, check
from docqueue.protocol import Document

A = TypeVar("A")
T = TypeVar("T")


@dataclass(frozen=True)
class Submission:
    """The arguments of one :meth:`Client.submit` call, for :meth:`Client.submit_each`."""

    text: Any
    task: str
    model: str
    params: dict[str, Any] | None = None
    id: str | None = None
    idempotency_key: str | None = None
    input_digest: str | None = None

    def arguments(self) -> dict[str, Any]:
        """:meth:`Client.submit`'s keyword arguments (the text included)."""
        return {
            "text": self.text,
            "task": self.task,
            "model": self.model,
            "params": self.params,
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "input_digest": self.input_digest,
        }

    def spec(self) -> JobSpec:
        """The job it makes (its parameters as given, not yet checked)."""
        return JobSpec(
            self.task,
            self.model,
            self.params or {},
            lane="interactive",
            idempotency_key=self.idempotency_key,
            input_digest=self.input_digest,
        )


@dataclass(frozen=True)
class _Single:
    """A checked document ready to be written as its own job, and its wire form."""

    job: ledger.SingleJob
    spec: JobSpec
    doc: Document


def submit(services: Services, text: Any, spec: JobSpec, id: str | None = None) -> ResultHandle:
    """Queue one document on the model's interactive lane; returns at once (see
    :meth:`Client.submit`)."""
    single = _prepare(services, text, spec, id)

    def create(conn: Connection) -> None:
        ledger.create_job(conn, single.job.id, single.spec, total=1)
        ledger.add_items(conn, single.job.id, [single.job.item])

    earlier = create_once(services, single.spec, create)
    if earlier is not None:
        # The first call may have failed to publish: send it again if still pending
        # (a document that then runs twice still has one row).
        resume(services, earlier.id)
        return ResultHandle(services, earlier.id, 0, replayed=True)
    return _publish_single(services, single)


def submit_each(
    services: Services, submissions: Sequence[Submission]
) -> list[ResultHandle | Exception]:
    """Many :func:`submit` calls at once, one outcome each (see
    :meth:`Client.submit_each`)."""
    outcomes: list[ResultHandle | Exception] = []
    grouped: dict[int, _Single] = {}
    for index, submission in enumerate(submissions):
        if submission.idempotency_key is not None:
            outcomes.append(_outcome(lambda s: _submit_alone(services, s), submission))
            continue
        prepared = _outcome(lambda s: _prepare(services, s.text, s.spec(), s.id), submission)
        if isinstance(prepared, _Single):
            grouped[index] = prepared
            outcomes.append(ResultHandle(services, prepared.job.id, 0))
        else:
            outcomes.append(prepared)
    if not grouped:
        return outcomes
    try:
        with services.db.begin() as conn:
            ledger.create_single_jobs(conn, [single.job for single in grouped.values()])
    except DatabaseError:
        for index, single in grouped.items():
            outcomes[index] = _outcome(lambda s: _create_single(services, s), single)
        return outcomes
    try:
        with services.celery.producer_or_acquire() as producer, producer.batch():
            for single in grouped.values():
                _publish_single_to(services, single, producer)
    except PUBLISH_ERRORS as exc:
        for index, single in grouped.items():
            outcomes[index] = PublishFailed(single.job.id, 1, 0, exc)
    return outcomes


def _submit_alone(services: Services, submission: Submission) -> ResultHandle:
    return submit(services, submission.text, submission.spec(), submission.id)


def _prepare(services: Services, text: Any, spec: JobSpec, id: str | None) -> _Single:
    """The job :func:`submit` writes; raises what it raises for input that cannot run."""
    spec = checked(services, spec)
    record = as_record((id, text))
    found = check(record, task=spec.task, max_chars=services.settings.max_document_chars)
    if found.error or found.doc is None:
        raise InvalidDocument(found.error or "no document")
    job = ledger.SingleJob(uuid.uuid4().hex, spec.task, spec.model, spec.params, item_row(0, found))
    return _Single(job, spec, found.doc)


def _create_single(services: Services, single: _Single) -> ResultHandle:
    with services.db.begin() as conn:
        ledger.create_single_jobs(conn, [single.job])
    return _publish_single(services, single)


def _publish_single(services: Services, single: _Single) -> ResultHandle:
    try:
        _publish_single_to(services, single, None)
    except PUBLISH_ERRORS as exc:
        raise PublishFailed(single.job.id, 1, 0, exc) from exc
    return ResultHandle(services, single.job.id, 0)


def _publish_single_to(services: Services, single: _Single, producer: Any) -> None:
    publish_items(services, single.job.id, single.spec, [(0, single.doc)], producer)


def _outcome(call: Callable[[A], T], argument: A) -> T | Exception:
    """What ``call(argument)`` returns, or the exception it raised: one submission's
    outcome among many, which must not stop the others."""
    try:
        return call(argument)
    except Exception as exc:  # handed back to the caller, who raises it
        return exc
