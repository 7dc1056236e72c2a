"""Where the engine's rows go: SQL in a worker, a list when the engine runs offline
(benchmarks, tests of the engine alone)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    InternalError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from docqueue.db import Database
from docqueue.db.results import ResultRow, documents_held, record_results
from docqueue.db.webhooks import Callbacks
from docqueue.errors import Unavailable, one_line
from docqueue.protocol import MAX_SEQ

log = logging.getLogger(__name__)

#: What a driver raises for a value it cannot send, before the database sees it:
#: OverflowError (an integer SQLite cannot hold), UnicodeEncodeError (a lone
#: surrogate), TypeError (a type it cannot adapt).
_DRIVER_REFUSALS = (ValueError, TypeError, ArithmeticError)


class StoreUnavailable(Unavailable, RuntimeError):
    """The rows could not be stored now; the same rows may be retried later."""


class ResultStore(Protocol):
    def commit(self, rows: Sequence[ResultRow]) -> None:
        """Store the rows durably, or raise StoreUnavailable."""


def is_outage(exc: BaseException) -> bool:
    """Whether an error says the database cannot be used now (connection lost or
    refused, locked, timed out), rather than that it refuses these rows."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # InternalError: e.g. a PostgreSQL that turned read-only after a failover.
    return isinstance(
        exc, (OperationalError, InterfaceError, InternalError, DisconnectionError, PoolTimeout)
    )


def _unless_refused(exc: Exception) -> None:
    """Return when ``exc`` is the database (or its driver) refusing the rows;
    raise :class:`StoreUnavailable` for an outage, and anything else (a bug) as is."""
    if isinstance(exc, (SQLAlchemyError, *_DRIVER_REFUSALS)) and not is_outage(exc):
        return
    if isinstance(exc, SQLAlchemyError):
        raise StoreUnavailable(one_line(exc)) from exc
    raise exc


class SqlStore:
    """Commits rows; a row the database refuses, for whatever reason other than an
    outage, costs only that row: it becomes an error row saying why (or, when it
    names no document at all, is dropped), and the rest are committed."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.callbacks = Callbacks()

    def commit(self, rows: Sequence[ResultRow]) -> None:
        rows = self._without_impossible_keys(rows)
        for _ in range(3):
            try:
                with self.db.begin() as conn:
                    record_results(conn, rows, self.callbacks)
                return
            except Exception as exc:
                _unless_refused(exc)
                rows = self._salvage(rows, exc)
        # Refused even as error rows: not the rows but the database (no privilege, a
        # schema it does not have).  Held and retried like an outage, never acked.
        raise StoreUnavailable(f"the database refused {len(rows)} results three times")

    @staticmethod
    def _without_impossible_keys(rows: Sequence[ResultRow]) -> list[ResultRow]:
        """Rows whose sequence number no document can have (``dq_items.seq`` is an
        SQL INTEGER) name no document: dropped before they reach the driver, which
        could not even look them up (SQLite raises OverflowError from 2**63)."""
        kept = [r for r in rows if 0 <= r.seq <= MAX_SEQ]
        if len(kept) < len(rows):
            bad = next(r for r in rows if not 0 <= r.seq <= MAX_SEQ)
            log.error(
                "dropping %d results for sequence numbers outside 0..%d (e.g. job %s, seq %d)",
                len(rows) - len(kept),
                MAX_SEQ,
                bad.job_id,
                bad.seq,
            )
        return kept

    def _salvage(self, rows: list[ResultRow], exc: Exception) -> list[ResultRow]:
        """Rows the database refused as data: drop those naming no known document
        (a forged or stale message), turn unstorable outputs into error rows."""
        known = self._known(rows)
        if known is not None:
            strays = [r for r in rows if (r.job_id, r.seq) not in known]
            if strays:
                log.error(
                    "dropping %d results for documents not in the database (e.g. job %s)",
                    len(strays),
                    strays[0].job_id,
                )
                return [r for r in rows if (r.job_id, r.seq) in known]
        log.error("database refused results (%s); finding the rows it refuses", one_line(exc))
        return self._one_by_one(rows)

    def _known(self, rows: list[ResultRow]) -> set[tuple[str, int]] | None:
        """Which rows name a document the database holds (None: it would not say)."""
        try:
            with self.db.connect() as conn:
                return documents_held(conn, rows)
        except Exception as lookup:
            _unless_refused(lookup)
            return None

    def _one_by_one(self, rows: list[ResultRow]) -> list[ResultRow]:
        """Commit rows singly; return the refused ones as error rows (still to commit)."""
        refused = []
        for row in rows:
            try:
                with self.db.begin() as conn:
                    record_results(conn, [row], self.callbacks)
            except Exception as exc:
                _unless_refused(exc)
                refused.append(
                    replace(
                        row,
                        ok=False,
                        output=None,
                        embedding=None,
                        error=f"result could not be stored: {one_line(exc)}",
                        attempts=1,
                    )
                )
        return refused


class MemoryStore:
    """Rows kept in memory, for the engine run offline."""

    def __init__(self) -> None:
        self.rows: list[ResultRow] = []
        self._lock = threading.Lock()

    def commit(self, rows: Sequence[ResultRow]) -> None:
        with self._lock:
            self.rows.extend(rows)

    def __len__(self) -> int:
        return len(self.rows)
