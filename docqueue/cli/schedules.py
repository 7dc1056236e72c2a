"""``docqueue schedule``: list the schedules with their next and last runs, run one
now, and start beat."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from docqueue.cli.options import (
    client_or_exit,
    fail,
    print_table,
    settings_or_exit,
    sql_client_or_exit,
)
from docqueue.errors import ExitCode

schedule_app = typer.Typer(
    no_args_is_help=True,
    help="Scheduled pipelines (Celery beat): list schedules, run one now, start beat.",
)
out = Console(highlight=False)
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The schedules file (TOML); default: DOCQUEUE_SCHEDULES, else schedules.toml",
    ),
]


def _load(config: Path | None) -> Any:
    from docqueue.schedules.config import ScheduleError, load

    settings = settings_or_exit()
    try:
        return settings, load(config or Path(settings.schedules))
    except ScheduleError as exc:
        raise fail(str(exc)) from None


@schedule_app.command("list")
def schedule_list(config: ConfigOpt = None) -> None:
    """Each schedule: when it runs, its next run, and its last run with the outcome."""
    from docqueue.schedules import state
    from docqueue.schedules.beat import next_run

    settings, file = _load(config)
    client = sql_client_or_exit(settings)
    table = Table("schedule", "when", "next run", "last run", "outcome", "documents")
    for schedule in file.schedule:
        found = state.schedule_state(client, schedule.name)
        last, ran = found.last, found.last_ran
        when = (
            f"every {schedule.every:g}s" if schedule.every is not None else f"cron {schedule.cron}"
        )
        table.add_row(
            escape(schedule.name),
            escape(when),
            _time(next_run(schedule, ran.started_at if ran else None)),
            _time(last.started_at) if last else "never",
            escape(_outcome(last)) if last else "",
            _documents(last) if last else "",
        )
    print_table(table, out)
    leader = state.beat_leader(client)
    if leader is not None:
        out.print(f"beat: {escape(leader)} leads")
    else:
        out.print("beat: none running")


def _outcome(run: Any) -> str:
    return f"{run.state}: {run.message}" if run.message else run.state


def _documents(run: Any) -> str:
    return f"{run.documents} ({run.reused} reused, {run.failed} failed)"


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


@schedule_app.command("run")
def schedule_run(
    name: Annotated[str, typer.Argument(help="The schedule to run now")],
    config: ConfigOpt = None,
) -> None:
    """Run one schedule now, in this process (not if its previous run is still going)."""
    from docqueue.schedules.config import ScheduleError
    from docqueue.schedules.run import run_schedule
    from docqueue.schedules.state import SUCCEEDED

    settings, file = _load(config)
    try:
        schedule = file.get(name)
    except ScheduleError as exc:
        raise fail(str(exc)) from None
    _log_to_stderr()
    with client_or_exit(settings) as client:
        outcome = run_schedule(client, schedule, file.beat.lease_seconds)
    out.print(
        f"{escape(name)} run {outcome.number}: {escape(outcome.state)}"
        + (f" ({escape(outcome.message)})" if outcome.message else "")
        + f", {outcome.documents} documents ({outcome.reused} reused, {outcome.failed} failed)"
    )
    if outcome.state != SUCCEEDED:
        raise typer.Exit(ExitCode.SERVICE)
    if outcome.failed:
        raise typer.Exit(ExitCode.SOME_FAILED)


@schedule_app.command("beat")
def schedule_beat(config: ConfigOpt = None) -> None:
    """Start Celery beat: it runs the schedules while it leads (one beat leads at a time)."""
    from docqueue.schedules.beat import start_beat

    settings, file = _load(config)
    _log_to_stderr()
    client = client_or_exit(settings)
    start_beat(client, file, client.redis_url)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
