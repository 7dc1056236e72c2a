"""What every reader of input files refuses with, and how it names fields."""

from __future__ import annotations

from collections.abc import Iterable

from docqueue.errors import Refused


class InputError(Refused, ValueError):
    """The file as a whole cannot be read (missing, unknown format, no such column)."""


def shown(names: Iterable[str]) -> str:
    """Field names for a message: as they are, or quoted with escapes where the name
    holds something a reader cannot see (a byte order mark, a trailing space)."""
    return ", ".join(
        name if name and name.isprintable() and name == name.strip() else repr(name)
        for name in names
    )
