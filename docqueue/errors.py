"""How failures are reported: the error vocabulary, one line per exception, and the
exit codes of every command.

Every error docqueue raises for its caller is a :class:`DocqueueError` of one of a
few kinds: :class:`Refused` (the request cannot run as given), :class:`NotFound`
(what it names does not exist), :class:`Conflict` (it clashes with what exists) and
:class:`Unavailable` (a service it needs failed).  Entry points map the kind: the
CLI to an exit code (:func:`exit_code`), the API to an HTTP status.  Classes that
were ``ValueError``, ``KeyError`` or ``RuntimeError`` stay so too, for callers that
catch those (for a release).

Errors reach people as one line (a log line, an error row, a CLI message), never a
traceback; the exit code tells a script what happened.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import IntEnum
from typing import ClassVar, Literal, NoReturn

Kind = Literal["refused", "not_found", "conflict", "unavailable"]


class DocqueueError(Exception):
    """An error for the caller to handle: its ``kind`` says how entry points report
    it, ``param`` (class or instance) the request field at fault, if any."""

    kind: ClassVar[Kind] = "refused"
    param: str | None = None


class Refused(DocqueueError):
    """The request cannot run as given (bad input, parameters, a setting it needs)."""

    kind: ClassVar[Kind] = "refused"


class NotFound(DocqueueError):
    """What the request names does not exist (a job, a file, a batch)."""

    kind: ClassVar[Kind] = "not_found"


class Conflict(DocqueueError):
    """The request clashes with what exists (a job that failed as a whole)."""

    kind: ClassVar[Kind] = "conflict"


class Unavailable(DocqueueError):
    """A service the request needs failed (Redis, the database, a model); ``service``
    names it."""

    kind: ClassVar[Kind] = "unavailable"
    service: str = "a service"


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


#: The exit code of each kind of error.
EXIT_CODES: dict[Kind, ExitCode] = {
    "refused": ExitCode.USAGE,
    "not_found": ExitCode.USAGE,
    "conflict": ExitCode.SOME_FAILED,
    "unavailable": ExitCode.SERVICE,
}


def exit_code(exc: DocqueueError) -> ExitCode:
    """The exit code a command ends with for this error."""
    return EXIT_CODES[exc.kind]


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
