"""The seam between the engine and whatever brought it work.

A :class:`Delivery` is one received batch of documents as the engine sees it: it
can be opened (decoded and checked into a :class:`~docqueue.protocol.BatchMessage`),
rejected (it cannot be run: it goes away with a reason), or acked once every one of
its documents has a committed row.  The engine knows nothing else about the wire:
the broker's implementation lives beside the Celery glue
(:class:`docqueue.worker.consumer.KombuDelivery`); :class:`LocalDelivery` carries
documents handed in directly, for the engine run offline.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Sequence

from docqueue.errors import Refused
from docqueue.logs import jobs_extra
from docqueue.protocol import BatchMessage, document_size

log = logging.getLogger(__name__)


class InvalidMessage(Refused, ValueError):
    """A delivery that cannot be opened; the message says why, in one line."""


class Delivery(ABC):
    """One received batch of documents."""

    #: Whether it came on an interactive lane (its documents go first).
    interactive: bool = False

    @property
    @abstractmethod
    def size(self) -> int:
        """Its size in bytes or characters: how much intake work it is."""

    @abstractmethod
    def open(self, max_items: int) -> BatchMessage:
        """The documents it carries, checked against the wire schema; raises
        :class:`InvalidMessage` for anything else (or more than ``max_items``
        documents)."""

    @abstractmethod
    def reject(self, reason: str) -> None:
        """Give it up: it cannot be run, and must not come back."""

    @abstractmethod
    def retry(self) -> None:
        """Give it back, untouched, for another worker (or this one, later)."""

    def count_return(self) -> int | None:
        """Count one more return of it to its queue, and say how many there have
        been, by any worker; None where they cannot be counted."""
        return None

    @classmethod
    @abstractmethod
    def ack_all(cls, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries of this kind whose rows are all committed (in as
        few round trips as the kind allows)."""


def ack(deliveries: Iterable[Delivery]) -> None:
    """Acknowledge deliveries of any kind, each kind in one call."""
    by_kind: dict[type[Delivery], list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        by_kind[type(delivery)].append(delivery)
    for kind, batch in by_kind.items():
        kind.ack_all(batch)


class LocalDelivery(Delivery):
    """Documents handed to the engine in this process: nothing to decode or ack."""

    def __init__(self, batch: BatchMessage) -> None:
        self.batch = batch
        self.interactive = batch.lane == "interactive"

    @property
    def size(self) -> int:
        return sum(document_size(doc) for _, doc in self.batch.items)

    def open(self, max_items: int) -> BatchMessage:
        if len(self.batch.items) > max_items:
            raise InvalidMessage(
                f"{len(self.batch.items)} documents in one batch, over {max_items}"
            )
        return self.batch

    def reject(self, reason: str) -> None:
        log.error(
            "batch of job %s rejected: %s",
            self.batch.job,
            reason,
            extra=jobs_extra([self.batch.job]),
        )

    def retry(self) -> None:
        raise RuntimeError("a local batch has nowhere to go back to")

    @classmethod
    def ack_all(cls, deliveries: Sequence[Delivery]) -> None:
        pass
