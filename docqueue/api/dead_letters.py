"""Dead letters: messages workers set aside because they could not be run, listed,
shown, purged and replayed through the Client's calls (what ``docqueue
dead-letters`` does from a shell)."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field, model_validator

from docqueue.api.deps import ClientDep
from docqueue.api.errors import ApiError
from docqueue.api.schemas import _Out, _Strict
from docqueue.deadletters import DeadLetter

router = APIRouter(prefix="/api/dead-letters", tags=["dead letters"])

EntryId = Annotated[int, Field(ge=1, lt=2**63)]


class DeadLetterOut(_Out):
    id: int
    queue: str
    """The queue it was taken from."""
    reason: str
    """Why it was set aside, in one line."""
    at: float
    """When (epoch seconds)."""
    size: int
    """Its size in bytes."""
    truncated: bool
    """Only its beginning was kept (it was over the size limit): it cannot be replayed."""

    @classmethod
    def of(cls, entry: DeadLetter) -> DeadLetterOut:
        return cls(**entry.to_json())


class DeadLetterWithBody(DeadLetterOut):
    body_base64: str
    """The message byte for byte, base64-encoded."""
    body_text: str | None
    """The message as text, when it is UTF-8 (None when it is not)."""


class DeadLetterPage(_Out):
    data: list[DeadLetterOut]
    """Newest first."""
    held: int
    """Dead letters held in all."""
    limit: int
    """The most that are held (DOCQUEUE_DEAD_LETTER_LIMIT): older ones are dropped."""
    dropped: int
    """Dropped by that limit so far."""
    next_offset: int | None
    """Pass as ?offset= for the next page; None when there is no more."""


class Selection(_Strict):
    """Which dead letters: some by id, or every one (said explicitly, so that an
    empty body never purges everything)."""

    ids: Annotated[list[EntryId], Field(min_length=1, max_length=10_000)] | None = None
    all: bool = False

    @model_validator(mode="after")
    def _one_or_the_other(self) -> Selection:
        if (self.ids is None) == (not self.all):
            raise ValueError('send either "ids": [...] or "all": true')
        return self

    def chosen(self) -> list[int] | None:
        return None if self.all else self.ids


class Purged(_Out):
    purged: int


class Replayed(_Out):
    replayed: list[int]
    """Put back on their queues, oldest first."""
    skipped: dict[int, str]
    """The others, with why not (unknown, only partly kept)."""


@router.get("", summary="Dead letters, newest first")
def list_dead_letters(
    client: ClientDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> DeadLetterPage:
    """Paged by offset: entries set aside meanwhile shift the pages (newest first)."""
    entries = client.dead_letters(limit=limit + 1, offset=offset)
    counts = client.dead_letter_counts()
    return DeadLetterPage(
        data=[DeadLetterOut.of(e) for e in entries[:limit]],
        held=counts.held,
        limit=counts.limit,
        dropped=counts.dropped,
        next_offset=offset + limit if len(entries) > limit else None,
    )


@router.get("/{entry_id}", summary="One dead letter with its body")
def read_dead_letter(
    entry_id: Annotated[int, Path(ge=1, lt=2**63)], client: ClientDep
) -> DeadLetterWithBody:
    entry = client.dead_letter(entry_id)
    if entry is None or entry.body is None:
        raise ApiError(404, f"no dead letter {entry_id} (purged, replayed or dropped)")
    try:
        text: str | None = entry.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return DeadLetterWithBody(
        **DeadLetterOut.of(entry).model_dump(),
        body_base64=base64.b64encode(entry.body).decode("ascii"),
        body_text=text,
    )


@router.post("/purge", summary="Remove dead letters")
def purge_dead_letters(body: Selection, client: ClientDep) -> Purged:
    return Purged(purged=client.purge_dead_letters(body.chosen()))


@router.post("/replay", summary="Put dead letters back on their queues")
def replay_dead_letters(body: Selection, client: ClientDep) -> Replayed:
    """For after whatever refused them was fixed: a message still bad comes back as
    a new dead letter."""
    replayed, skipped = client.replay_dead_letters(body.chosen())
    return Replayed(replayed=replayed, skipped=skipped)
