"""Celery beat, running docqueue's schedules.

Beat decides when each schedule is due (its interval or cron expression, from the
last run SQL remembers).  A due schedule is run in a thread of the beat process
itself, not sent as a Celery task: a run is a producer (it reads a source, submits
jobs and waits for docqueue's workers), so it needs no worker of its own, and GPU
workers consume only model queues.

Only the beat holding the lease in SQL runs schedules; another beat started beside
it waits, and takes over when the lease lapses (its holder stopped).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.beat import ScheduleEntry, Scheduler, Service
from celery.schedules import crontab
from celery.schedules import schedule as every

from docqueue.db import schedules as state
from docqueue.errors import one_line
from docqueue.producer.client import Client
from docqueue.schedules.config import Schedule, SchedulesFile, cron_fields
from docqueue.schedules.run import run_schedule

log = logging.getLogger(__name__)
#: The name beat knows every schedule's entry by (never sent to a broker).
TASK = "docqueue.schedule"


def celery_schedule(schedule: Schedule) -> Any:
    interval = schedule.interval()
    if interval is not None:
        return every(interval)
    minute, hour, day, month, weekday = cron_fields(schedule.cron or "")
    return crontab(minute, hour, day_of_month=day, month_of_year=month, day_of_week=weekday)


def next_run(schedule: Schedule, last_started: float | None) -> float:
    """When beat will next run ``schedule`` (epoch seconds; now when overdue)."""
    if last_started is None:
        last_started = _never_run(schedule) or time.time() - 60
    last = datetime.fromtimestamp(last_started, tz=timezone.utc)
    remaining = celery_schedule(schedule).remaining_estimate(last)
    return time.time() + max(0.0, remaining.total_seconds())


def _never_run(schedule: Schedule) -> float | None:
    """An interval schedule that never ran is due at once; a cron one at its time."""
    return time.time() - schedule.every if schedule.every is not None else None


class LeasedScheduler(Scheduler):
    """A beat scheduler that runs schedules while it holds the lease in SQL.

    ``app.conf.docqueue_schedules`` is the parsed file, ``app.conf.docqueue_client``
    the client runs use."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        self.file: SchedulesFile = app.conf.docqueue_schedules
        self.client: Client = app.conf.docqueue_client
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._lease_checked = 0.0
        super().__init__(app, *args, **kwargs)

    @property
    def producer(self) -> None:
        return None  # nothing is sent to a broker

    def setup_schedule(self) -> None:
        for schedule in self.file.schedule:
            last = state.last_run(self.client.db, schedule.name, ran=True)
            started = last.started_at if last else _never_run(schedule)
            last_run_at = datetime.fromtimestamp(started, tz=timezone.utc) if started else None
            self.schedule[schedule.name] = ScheduleEntry(
                name=schedule.name,
                task=TASK,
                schedule=celery_schedule(schedule),
                args=(schedule.name,),
                last_run_at=last_run_at,
                app=self.app,
            )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        lease = self.file.beat.lease_seconds
        if time.monotonic() - self._lease_checked >= lease / 3:
            self._check_lease(lease)
        if not self.leading:
            return min(lease / 3, self.max_interval)
        return min(float(super().tick(*args, **kwargs)), lease / 3)

    def _check_lease(self, lease: float) -> None:
        self._lease_checked = time.monotonic()
        try:
            leading = state.take_lease(self.client.db, self.holder, lease)
        except Exception as exc:  # the database is away: lead nothing until it is back
            log.warning("beat: cannot reach the database for the lease: %s", one_line(exc))
            leading = False
        if leading != self.leading:
            log.info(
                "beat %s: %s", self.holder, "leads" if leading else "waits (another beat leads)"
            )
            if leading:  # when each schedule last ran, as the beat that led until now left it
                self.setup_schedule()
        self.leading = leading

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> None:
        """Start the schedule's run in a thread (its claim in SQL, not this process,
        decides whether the previous run is still going)."""
        entry = self.reserve(entry) if advance else entry
        name = entry.args[0]
        threading.Thread(
            target=self._run, args=(name,), name=f"schedule-{name}", daemon=True
        ).start()

    def _run(self, name: str) -> None:
        schedule = self.file.get(name)
        try:
            run_schedule(self.client, schedule, self.file.beat.lease_seconds)
        except Exception as exc:  # docqueue's own database is away
            log.error("schedule %s: the run could not be recorded: %s", name, one_line(exc))

    def close(self) -> None:
        if self.leading:
            try:
                state.give_up_lease(self.client.db, self.holder)
            except Exception as exc:
                log.warning("beat: could not give up the lease: %s", one_line(exc))
        super().close()


def start_beat(client: Client, file: SchedulesFile, redis_url: str) -> None:
    """Run beat in this process until it is stopped (SIGINT/SIGTERM)."""
    from docqueue.broker import make_celery

    app = make_celery(client.settings, redis_url)
    app.conf.docqueue_schedules = file
    app.conf.docqueue_client = client
    app.conf.beat_max_loop_interval = min(5.0, file.beat.lease_seconds / 3)
    signal.signal(signal.SIGTERM, _exit)
    Service(app, scheduler_cls=LeasedScheduler, remote_control=False).start()


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)  # beat's loop stops, gives up the lease, and returns
