"""Zero-shot labels as a person writes them on the command line, read one way only.

    --labels "billing,outage,praise"                  plain names, split on commas
    --label billing="invoices, refunds and payments" --label outage --label praise
    --labels-file labels.txt                          one NAME[=DESCRIPTION] a line,
                                                      or JSON: ["a", "b"] or {"a": "..."}

A description may contain commas, so descriptions never go where commas split:
``--labels`` with an ``=`` in it is refused rather than guessed at, and a label name
may not contain a comma. The result is the ``labels`` task parameter: a list of names,
or a {name: description} object when any label has a description.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docqueue.errors import Refused

Labels = list[str] | dict[str, str]


class LabelsError(Refused, ValueError):
    """Labels that cannot be read one way; the message is one line."""


def parse_labels(names: str | None, entries: list[str] | None, file: Path | None) -> Labels | None:
    """The labels from ``--labels``, ``--label`` (repeated) or ``--labels-file``; at
    most one of them may be given."""
    given = [
        option
        for option, value in (("--labels", names), ("--label", entries), ("--labels-file", file))
        if value
    ]
    if len(given) > 1:
        raise LabelsError(
            f"labels given with both {given[0]} and {given[1]}: use one of --labels, --label "
            "or --labels-file"
        )
    if names:
        return _from_names(names)
    if entries:
        return _from_entries([("--label", entry) for entry in entries])
    if file:
        return _from_file(file)
    return None


def _from_names(text: str) -> list[str]:
    if "=" in text:
        raise LabelsError(
            f"--labels {text!r}: takes plain names separated by commas; give a "
            "label with a description (which may contain commas) as --label NAME=DESCRIPTION, "
            "once per label, or put the labels in --labels-file FILE"
        )
    return [name.strip() for name in text.split(",") if name.strip()]


def _from_entries(entries: list[tuple[str, str]]) -> Labels:
    """``(where, "NAME[=DESCRIPTION]")`` pairs, where says where each came from."""
    labels: dict[str, str] = {}
    described = False
    for where, entry in entries:
        name, _, description = (part.strip() for part in entry.partition("="))
        if not name:
            raise LabelsError(f"{where} {entry!r}: expected NAME or NAME=DESCRIPTION")
        if "," in name:
            raise LabelsError(
                f"{where} {entry!r}: a label name cannot contain a comma; give each label "
                "its own --label (a description after = may contain commas)"
            )
        if name in labels:
            raise LabelsError(f"{where}: label {name!r} is given twice")
        labels[name] = description or name
        described = described or bool(description)
    return labels if described else list(labels)


def _from_file(path: Path) -> Labels:
    where = f"--labels-file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{where}: cannot be read as UTF-8 text ({exc})") from None
    if text.lstrip().startswith(("{", "[")):
        return _from_json(where, text)
    lines = [
        (f"{where} line {number}", line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise LabelsError(f"{where}: no labels in it (one NAME[=DESCRIPTION] per line)")
    return _from_entries(lines)


def _from_json(where: str, text: str) -> Labels:
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    raise LabelsError(
        f'{where}: JSON labels must be a list of names (["billing", "outage"]) or an object '
        'of name: description ({"billing": "invoices and refunds", ...})'
    )
