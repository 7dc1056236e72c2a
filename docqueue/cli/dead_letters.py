"""``docqueue dead-letters``: list, show, purge and replay the messages set aside
because they could not be run."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from docqueue.cli.options import (
    client_or_exit,
    err,
    fail,
    print_table,
    redis_errors,
    settings_or_exit,
    warn,
)
from docqueue.errors import ExitCode
from docqueue.humanize import plural

if TYPE_CHECKING:
    from rich.table import Table


dead_letters_app = typer.Typer(
    no_args_is_help=True,
    help="Messages set aside because they could not be run: list, show, purge, replay.",
)
DeadLetterIds = Annotated[list[int] | None, typer.Argument(help="Dead letter ids")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter")]


def _dead_letter_client() -> Any:
    """A Client for the dead letters; a Redis that cannot be reached is one line."""
    return client_or_exit(settings_or_exit())


@dead_letters_app.command("list")
def dead_letters_list(
    limit: Annotated[int, typer.Option("--limit", help="Show at most this many")] = 100,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many newest first")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List dead letters, newest first: id, queue, reason, size, when."""
    if limit < 1 or offset < 0:
        raise fail(f"--limit {limit} --offset {offset}: use a limit of 1 or more, offset 0 or more")
    client = _dead_letter_client()
    with redis_errors():
        found = client.dead_letters(limit=limit, offset=offset)
        counts = client.dead_letter_counts()
    if as_json:
        for entry in found:
            print(json.dumps(entry.to_json(), ensure_ascii=False))
    elif found:
        print_table(_dead_letters_table(found))
    held = plural(counts.held, "dead letter")
    summary = f"{held} held (limit {counts.limit}); {counts.dropped} dropped"
    err.print(escape(summary), soft_wrap=True)


def _dead_letters_table(found: list[Any]) -> Table:
    """Dead letters as a table; queues and reasons are shown as written, never read
    as markup."""
    from rich.table import Table
    from rich.text import Text

    from docqueue.producer.client import ago

    table = Table(box=None, pad_edge=False)
    for column in ("ID", "QUEUE", "REASON", "SIZE", "WHEN"):
        table.add_column(column, justify="right" if column in ("ID", "SIZE") else "left")
    now = time.time()
    for entry in found:
        size = f"{entry.size:,}" + (" (cut)" if entry.truncated else "")
        table.add_row(
            str(entry.id),
            Text(entry.queue),
            Text(entry.reason),
            size,
            f"{ago(now - entry.at)} ago",
        )
    return table


@dead_letters_app.command("show")
def dead_letters_show(
    entry_id: Annotated[int, typer.Argument(help="Dead letter id")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Show one dead letter: where it came from, why, when, and the message itself."""
    client = _dead_letter_client()
    with redis_errors():
        entry = client.dead_letter(entry_id)
    if entry is None:
        raise fail(f"no dead letter {entry_id}")
    if as_json:
        print(json.dumps(entry.to_json(body=True), ensure_ascii=False))
        return
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.at))
    kept = f", only its first {len(entry.body or b''):,} kept" if entry.truncated else ""
    print(f"id:      {entry.id}")
    print(f"queue:   {entry.queue}")
    print(f"reason:  {entry.reason}")
    print(f"when:    {at}")
    print(f"size:    {entry.size:,} bytes{kept}")
    print()
    print((entry.body or b"").decode("utf-8", errors="replace"))


def _chosen(ids: list[int] | None, every: bool, verb: str) -> list[int] | None:
    """The ids a purge or replay names, or None for --all; both or neither is refused."""
    if every and ids:
        raise fail(f"{verb} either some ids or --all, not both")
    if not every and not ids:
        raise fail(f"{verb} what? name dead letter ids, or --all")
    return None if every else list(ids or [])


@dead_letters_app.command("purge")
def dead_letters_purge(ids: DeadLetterIds = None, every: AllOpt = False) -> None:
    """Delete dead letters for good."""
    chosen = _chosen(ids, every, "purge")
    client = _dead_letter_client()
    with redis_errors():
        removed = client.purge_dead_letters(chosen)
    missing = 0 if chosen is None else len(set(chosen)) - removed
    purged = f"{plural(removed, 'dead letter')} purged"
    print(purged + (f" ({missing} not found)" if missing else ""))


@dead_letters_app.command("replay")
def dead_letters_replay(ids: DeadLetterIds = None, every: AllOpt = False) -> None:
    """Put dead letters back on their queues (after a fix); exit 1 if any could not be."""
    chosen = _chosen(ids, every, "replay")
    client = _dead_letter_client()
    with redis_errors():
        replayed, refused = client.replay_dead_letters(chosen)
    for entry_id, why in refused.items():
        warn(f"dead letter {entry_id} not replayed: {why}")
    print(f"{plural(len(replayed), 'dead letter')} replayed")
    if refused:
        raise typer.Exit(ExitCode.SOME_FAILED)
