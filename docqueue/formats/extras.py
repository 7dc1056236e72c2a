"""The optional ``data`` extra (pyarrow and datasets): imported only when a Parquet
file or a Hugging Face dataset is read or written, so the client installs without
them and ``import docqueue`` never needs them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from docqueue.errors import Refused

#: How to get what a format needs.
INSTALL = "pip install 'docqueue[data]'"


class MissingExtra(Refused, ValueError):
    """A format was asked for whose library is not installed; names the extra."""


def need(module: str, what: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtra` saying ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.partition(".")[0]
        raise MissingExtra(f"{what} needs {top}, which is not installed: {INSTALL}") from None


@contextmanager
def quiet(datasets: Any) -> Iterator[None]:
    """No progress bars from ``datasets`` while it runs (annotate draws its own)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()
