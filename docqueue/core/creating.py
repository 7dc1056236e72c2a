"""Making a job once: the checks a job's description passes first, the one
transaction that writes it unless its idempotency key already names a job, and a
checked document as the ledger's item row.  Both ways of submitting (one document,
many) build on these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docqueue.core import fleet
from docqueue.core.errors import KeyReused, UnsupportedTask
from docqueue.core.services import Services
from docqueue.db import Connection, IntegrityError
from docqueue.db import jobs as ledger
from docqueue.db.jobs import JobInfo
from docqueue.jobspec import JobSpec
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import Checked
from docqueue.protocol import document_digest, is_model_name
from docqueue.tasks import cannot_do
from docqueue.webhooks import check_callback_url


def checked(services: Services, spec: JobSpec) -> JobSpec:
    """``spec`` with its parameters validated (complete, defaults filled in), once
    its callback URL, model name and task are found usable; raises
    :class:`InvalidParams` (or a subclass: :class:`UnsupportedTask` when the model's
    live workers all say they cannot do the task)."""
    if spec.callback_url is not None:
        check_callback_url(spec.callback_url, services.settings)
    if not is_model_name(spec.model):
        raise InvalidParams(
            f"model name {spec.model!r}: use letters, digits, '.', '_' and '-' (workers map "
            "names to paths with --model NAME=PATH)"
        )
    cap = services.settings.max_new_tokens_cap
    params = validate_params(spec.task, spec.params, max_new_tokens_cap=cap)
    services.need_redis()
    coverage = fleet.coverage(services, spec.model, spec.task, fresh=False)
    if not coverage.doing and coverage.tasks:
        raise UnsupportedTask(cannot_do(spec.model, spec.task, coverage.tasks))
    if refused := coverage.refusal(params):
        raise InvalidParams(refused)
    return spec.but(params=params)


def create_once(
    services: Services, spec: JobSpec, create: Callable[[Connection], None]
) -> JobInfo | None:
    """Run ``create`` in one transaction, unless the spec's idempotency key already
    names a job: then return that job (None: created).  A concurrent request with the
    same key loses the race on the key's unique index and gets the winner's job."""
    key = spec.idempotency_key
    if key is not None and (earlier := _keyed(services, key, spec)) is not None:
        return earlier
    try:
        with services.db.begin() as conn:
            create(conn)
    except IntegrityError:
        if key is None or (earlier := _keyed(services, key, spec)) is None:
            raise
        return earlier
    return None


def _keyed(services: Services, key: str, spec: JobSpec) -> JobInfo | None:
    """The job created with idempotency ``key``, or None; raises :class:`KeyReused`
    when it was created by another request."""
    with services.db.connect() as conn:
        job = ledger.job_with_key(conn, key)
    if job is not None and (job.input_digest != spec.input_digest or job.lane != spec.lane):
        raise KeyReused(key, job.id)
    return job


def item_row(seq: int, found: Checked) -> dict[str, Any]:
    """A checked document as the ledger's item row."""
    row: dict[str, Any] = {
        "seq": seq,
        "user_id": found.record_id,
        "text": found.stored_text,
        "chat": found.chat,
        "truncated": found.truncated,
        # what workers compare a message's document with (the document as queued)
        "digest": None if found.doc is None else document_digest(found.doc),
    }
    if found.error:
        row.update(status="failed", error=found.error)
    return row
