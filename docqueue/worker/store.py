"""Where the engine's rows go: SQL in a worker, a list when the engine runs offline
(benchmarks, tests of the engine alone)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from docqueue.db.results import ResultRow, record_results
from docqueue.db.schema import Item
from docqueue.errors import one_line

log = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """The rows could not be stored now; the same rows may be retried later."""


class ResultStore(Protocol):
    def commit(self, rows: Sequence[ResultRow]) -> None:
        """Store the rows durably, or raise StoreUnavailable."""


class SqlStore:
    def __init__(self, db: Engine) -> None:
        self.db = db

    def commit(self, rows: Sequence[ResultRow]) -> None:
        rows = list(rows)
        for _ in range(3):
            try:
                with self.db.begin() as conn:
                    record_results(conn, rows)
                return
            except (IntegrityError, DataError) as exc:
                rows = self._salvage(rows, exc)
            except SQLAlchemyError as exc:
                raise StoreUnavailable(one_line(exc)) from exc
        log.error("dropping %d results the database keeps refusing", len(rows))

    def _salvage(self, rows: list[ResultRow], exc: Exception) -> list[ResultRow]:
        """Rows the database refused as data: drop those naming no known document
        (a forged or stale message), turn unstorable outputs into error rows."""
        keys = [(r.job_id, r.seq) for r in rows]
        try:
            with self.db.connect() as conn:
                known = set(
                    conn.execute(
                        select(Item.job_id, Item.seq).where(tuple_(Item.job_id, Item.seq).in_(keys))
                    ).all()
                )
        except SQLAlchemyError as lookup:
            raise StoreUnavailable(one_line(lookup)) from lookup
        kept = [r for r in rows if (r.job_id, r.seq) in known]
        if len(kept) < len(rows):
            log.error(
                "dropping %d results for documents not in the database (e.g. job %s)",
                len(rows) - len(kept),
                next(r.job_id for r in rows if (r.job_id, r.seq) not in known),
            )
            return kept
        log.error("database refused results (%s); finding the rows it refuses", one_line(exc))
        return self._one_by_one(rows)

    def _one_by_one(self, rows: list[ResultRow]) -> list[ResultRow]:
        """Commit rows singly; return the refused ones as error rows (still to commit)."""
        refused = []
        for row in rows:
            try:
                with self.db.begin() as conn:
                    record_results(conn, [row])
            except (IntegrityError, DataError) as exc:
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
            except SQLAlchemyError as exc:
                raise StoreUnavailable(one_line(exc)) from exc
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
