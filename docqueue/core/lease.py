"""A producer's hold on the jobs it is adding documents to (:mod:`docqueue.db.leases`).

While the block runs, a thread renews the hold every third of ``seconds``, whatever
the producer waits on (a full queue, a slow reader, a database that is briefly
away): only a producer that stopped lets it lapse, and workers then close the job as
failed instead of leaving it running forever.  A renewal the database refuses is
retried at the next tick; the hold lapses only if none succeeds for ``seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from docqueue.db import Database, leases
from docqueue.errors import one_line

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, db: Database, job_ids: Sequence[str], seconds: float) -> None:
        self.db = db
        self.job_ids = list(job_ids)
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name="docqueue-lease", daemon=True
        )

    def until(self) -> float:
        """The end of a hold taken or renewed now."""
        return time.time() + self.seconds

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                with self.db.begin() as conn:
                    leases.renew(conn, self.job_ids, self.until())
            except Exception as exc:  # the database is away: try again at the next tick
                log.warning("could not renew the hold on job(s) being added: %s", one_line(exc))
