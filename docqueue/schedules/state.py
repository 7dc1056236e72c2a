"""A schedule's state as a person asks for it (``docqueue schedule list``): its last
run, its last run that went ahead, and the beat that leads.  The rows themselves are
kept by :mod:`docqueue.db.schedules`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from docqueue.core.services import services_of
from docqueue.db import schedules as rows
from docqueue.db.schedules import SUCCEEDED, Run

__all__ = ["SUCCEEDED", "Run", "ScheduleState", "beat_leader", "schedule_state"]


@dataclass(frozen=True)
class ScheduleState:
    #: The newest run, whatever its outcome (None: never run).
    last: Run | None
    #: The newest run that went ahead (not skipped): the next run counts from it.
    last_ran: Run | None


def schedule_state(owner: Any, name: str) -> ScheduleState:
    """``owner``: a Client or the core's Services."""
    db = services_of(owner).db
    return ScheduleState(rows.last_run(db, name), rows.last_run(db, name, ran=True))


def beat_leader(owner: Any, now: float | None = None) -> str | None:
    """The beat that holds the lease now, else None."""
    holder = rows.lease_holder(services_of(owner).db)
    if holder is None or holder[1] <= (time.time() if now is None else now):
        return None
    return holder[0]
