"""How failures are reported: one line per exception, and the exit codes of every
command.

Errors reach people as one line (a log line, an error row, a CLI message), never a
traceback; the exit code tells a script what happened.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import IntEnum
from typing import NoReturn

#: Longest error line kept (an error row, a log line).
MAX_LINE = 300


class ExitCode(IntEnum):
    """What a ``docqueue`` command's exit status means (README, "Exit codes")."""

    #: Every document succeeded (or the command did what it was asked).
    OK = 0
    #: Some documents failed (their error rows say why) or were cancelled.
    SOME_FAILED = 1
    #: Bad usage or input: nothing was done.
    USAGE = 2
    #: A worker or a service (Redis, the database, a model) failed.
    SERVICE = 3
    #: ``docqueue status``: the job is not finished yet.
    RUNNING = 4
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none),
    at most :data:`MAX_LINE` characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:MAX_LINE] if lines else type(exc).__name__


def exit_now(code: int) -> NoReturn:
    """End this process once its work is done and its output flushed, skipping the
    interpreter's teardown: with docqueue's imports (and a worker's torch and
    transformers) it takes about a second on a small busy CPU (0.8-1.7 s measured
    on 2 loaded cores), which ``docqueue annotate`` and its user would wait for.
    Callers have committed, closed and stopped everything; logs are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
