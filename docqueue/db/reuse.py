"""Finding earlier results a new one may be copied from.

A result may stand for another document's when both have the same text (digest),
task, model fingerprint and parameters: the same model would compute the same
output again.  Only successes are reused; rows without a fingerprint (written
before revision 0008, or refused at the door) never match.  The lookup is one
indexed query (``ix_dq_results_reuse``) per few thousand texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from docqueue.db.schema import Result

#: Text hashes per query (each one a bound parameter).
LOOKUP_CHUNK = 2_000


def params_digest(canonical_params: str) -> str:
    """SHA-256 (hex) of a task's validated parameters in canonical form
    (:func:`docqueue.protocol.params_key`)."""
    return hashlib.sha256(canonical_params.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ReuseKey:
    """What a result must share with a document to stand for it (besides its text)."""

    task: str
    fingerprint: str
    params_digest: str


@dataclass(frozen=True, slots=True)
class Reusable:
    """An earlier result's output, to copy."""

    output: dict[str, Any] | None
    embedding: bytes | None
    truncated: bool


def find_reusable(
    conn: Connection, key: ReuseKey, text_hashes: Collection[str]
) -> dict[str, Reusable]:
    """An earlier success for each text hash that has one (text hash -> result)."""
    wanted = sorted(set(text_hashes))
    found: dict[str, Reusable] = {}
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        rows = conn.execute(
            select(Result.text_hash, Result.output, Result.embedding, Result.truncated).where(
                Result.task == key.task,
                Result.fingerprint == key.fingerprint,
                Result.params_digest == key.params_digest,
                Result.text_hash.in_(wanted[start : start + LOOKUP_CHUNK]),
                Result.ok.is_(True),
            )
        )
        for text_hash, output, embedding, truncated in rows:
            found.setdefault(text_hash, Reusable(output, embedding, bool(truncated)))
    return found
