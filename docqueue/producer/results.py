"""Results as callers see them: one flat dict per document, in input order, and the
files they are exported to (JSONL, or CSV with columns that come from the task).

An export is written to a temporary file beside the target and renamed over it at
the end: a failed export leaves the target as it was, never a truncated file.
"""

from __future__ import annotations

import array
import csv
import io
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from docqueue.db.jobs import Outcome

#: Output formats by file extension.
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
#: Formats people ask for that docqueue does not write yet.
NOT_YET = {".parquet": "Parquet", ".pq": "Parquet"}

#: CSV columns every export has, before and after the task's own.
HEAD = ["id", "seq", "status"]
TAIL = ["error", "truncated", "duplicate_id"]
#: What generation records besides its text (OpenAI's usage and finish_reason).
USAGE = ["prompt_tokens", "completion_tokens", "finish_reason"]
#: The output fields of each task (a runner plug-in returns the same fields).
TASK_FIELDS: dict[str, list[str]] = {
    "classify": ["label", "score", "scores"],
    "embed": ["dim", "embedding", "prompt_tokens"],
    "summarize": ["summary_text", *USAGE],
    "generate": ["generated_text", *USAGE],
}


class OutputError(ValueError):
    """The results cannot be written there (unknown format, no directory, not writable)."""


def export_row(outcome: Outcome) -> dict[str, Any]:
    """``id``, ``seq``, ``status``, then the output's fields (or ``error``); flags
    ``truncated`` and ``duplicate_id`` appear only when true."""
    row: dict[str, Any] = {"id": outcome.user_id, "seq": outcome.seq, "status": outcome.status}
    if outcome.status == "done":
        row.update(outcome.output or {})
        if outcome.embedding is not None:
            vector = array.array("f")
            vector.frombytes(outcome.embedding)
            if sys.byteorder != "little":
                vector.byteswap()
            row["embedding"] = vector.tolist()
    elif outcome.status == "failed":
        row["error"] = outcome.error
    if outcome.truncated:
        row["truncated"] = True
    if outcome.duplicate_id:
        row["duplicate_id"] = True
    return row


def csv_columns(task: str, params: dict[str, Any] | None = None) -> list[str]:
    """The CSV header of a job's export: from its task (and zero-shot labels), never
    from whichever row comes first."""
    fields = list(TASK_FIELDS.get(task, []))
    if task == "classify" and (params or {}).get("labels"):
        fields.append("similarities")
    return HEAD + fields + TAIL


def output_format(out: Path) -> str:
    """``jsonl`` or ``csv``, from the file's extension; raises :class:`OutputError`."""
    suffix = out.suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    if suffix in NOT_YET:
        raise OutputError(
            f"{out}: {NOT_YET[suffix]} output is not supported yet; use .jsonl or .csv"
        )
    raise OutputError(
        f"{out}: unknown output format {suffix or '(no extension)'!r}; use .jsonl or .csv"
    )


def check_output(out: Path) -> None:
    """Raise :class:`OutputError` unless results can be written to ``out``: a known
    format, an existing directory, and a file can be created there."""
    output_format(out)
    if out.is_dir():
        raise OutputError(f"{out} is a directory; name a .jsonl or .csv file")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: no directory {parent}")
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"cannot write {out}: permission denied")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


def write_rows(rows: Iterable[dict[str, Any]], out: Path, columns: list[str] | None = None) -> int:
    """Write rows as JSONL, or as CSV when ``out`` ends in .csv (``columns``, from
    :func:`csv_columns`; nested values as JSON).  Returns the number written.

    Written to a temporary file beside ``out`` and renamed over it once complete."""
    fmt = output_format(out)
    part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    # os.open with 0o666: the file gets the permissions the umask gives a new file.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            if fmt == "csv":
                count = _write_csv(rows, handle, columns or HEAD + TAIL)
            else:
                count = 0
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return count


def _write_csv(rows: Iterable[dict[str, Any]], handle: Any, columns: list[str]) -> int:
    records = csv_records(rows, columns)
    handle.write(next(records))  # the header
    count = 0
    for record in records:
        handle.write(record)
        count += 1
    return count


def csv_records(rows: Iterable[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    """The CSV text of ``rows``: the header of ``columns`` first, then one record per
    row (nested values as JSON), for a file or a download.  Raises
    :class:`OutputError` at a row with a field the columns do not include."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    yield _taken(buffer)
    known = set(columns)
    for row in rows:
        unknown = [k for k in row if k not in known]
        if unknown:
            raise OutputError(
                f"document {row.get('seq')} has fields the CSV columns do not include "
                f"({', '.join(unknown)}); export to .jsonl instead"
            )
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
        )
        yield _taken(buffer)


def _taken(buffer: io.StringIO) -> str:
    """What ``buffer`` holds, leaving it empty."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
