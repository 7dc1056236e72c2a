"""Numbers as a person reads them in docqueue's lines and progress bars."""

from __future__ import annotations


def per_second(rate: float) -> str:
    """A rate with the digits that matter: ``1,234``, ``45.3``, ``2.5``, ``0.14``
    (never ``0`` for a small run that did compute something)."""
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    if rate <= 0:
        return "0"
    return f"{rate:.2g}"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 message``, ``2 messages``, ``0 documents`` (``nouns``: an irregular plural)."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"
