"""The optional ``data`` extra (pyarrow and datasets): imported only when a Parquet
file or a Hugging Face dataset is read or written, so the client installs without
them and ``import docqueue`` never needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

#: How to get what a format needs.
INSTALL = "pip install 'docqueue[data]'"


class MissingExtra(ValueError):
    """A format was asked for whose library is not installed; names the extra."""


def need(module: str, what: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtra` saying ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.partition(".")[0]
        raise MissingExtra(f"{what} needs {top}, which is not installed: {INSTALL}") from None
