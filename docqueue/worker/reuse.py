"""Reuse at intake: the documents of a job with reuse on whose text, task, model
fingerprint and parameters already have a successful result get that result
copied instead of computed.

It happens in the worker, once a delivery agrees with the ledger, because only the
worker knows the fingerprint of the model that would run (a producer has no model
files).  The lookup is one query per cohort of an intake round.  A copy is an
ordinary result row written by the writer, like the rows of documents refused at
the door: the same upsert, the same ack after commit, so exactly-once holds
whatever copy or computation lands first.  A database away during the lookup only
costs the reuse: the documents are computed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from docqueue.db.results import ResultRow
from docqueue.db.reuse import ReuseKey, params_digest
from docqueue.protocol import Document
from docqueue.worker.fingerprint import runner_fingerprint
from docqueue.worker.ledger import JobStates
from docqueue.worker.runners import Runner
from docqueue.worker.store import StoreUnavailable
from docqueue.worker.work import CohortKey, Envelope

log = logging.getLogger(__name__)

#: (sequence number, document, its envelope, its text hash)
Hashed = tuple[int, Document, Envelope, str]


def reuse_key(runner: Runner, key: CohortKey) -> ReuseKey | None:
    """What this cohort's results are reused by; None when the model has no
    fingerprint (an engine run offline), and then nothing is reused or recorded."""
    if not runner.loaded.fingerprint:
        return None
    return ReuseKey(
        task=key[2],
        fingerprint=runner_fingerprint(runner.loaded.fingerprint, type(runner)),
        params_digest=params_digest(key[3]),
    )


@dataclass
class Split:
    """A cohort's documents after the lookup."""

    #: Copies of earlier results, ready for the writer.
    copied: list[tuple[ResultRow, Envelope]]
    #: The documents still to compute.
    to_compute: list[Hashed]


def split_reusable(
    jobs: JobStates, runner: Runner, key: CohortKey, docs: Sequence[Hashed], worker_id: str
) -> Split:
    """Copy what can be copied of ``docs`` (one cohort's documents in an intake
    round); the rest are left to compute."""
    records = jobs.lookup({envelope.job for _, _, envelope, _ in docs})
    reusing = [d for d in docs if (r := records.get(d[2].job)) is not None and r.reuse]
    rkey = reuse_key(runner, key)
    if not reusing or rkey is None:
        return Split([], list(docs))
    try:
        found = jobs.reusable(rkey, {text_hash for *_, text_hash in reusing})
    except StoreUnavailable as exc:
        log.warning("could not look up reusable results (%s); computing them", exc)
        return Split([], list(docs))
    if not found:
        return Split([], list(docs))
    now = time.time()
    copied, to_compute = [], []
    reusing_ids = {id(d) for d in reusing}
    for doc in docs:
        seq, _, envelope, text_hash = doc
        earlier = found.get(text_hash) if id(doc) in reusing_ids else None
        if earlier is None:
            to_compute.append(doc)
            continue
        row = ResultRow(
            job_id=envelope.job,
            seq=seq,
            ok=True,
            output=earlier.output,
            embedding=earlier.embedding,
            truncated=earlier.truncated,
            worker_id=worker_id,
            enqueued_at=envelope.enqueued_at,
            finished_at=now,
            task=rkey.task,
            fingerprint=rkey.fingerprint,
            params_digest=rkey.params_digest,
            text_hash=text_hash,
            reused=True,
        )
        copied.append((row, envelope))
    return Split(copied, to_compute)
