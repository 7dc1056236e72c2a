"""Results as callers see them: one flat dict per document, in input order, and the
files they are exported to: JSONL, CSV with columns that come from the task, and
(see :mod:`docqueue.formats.writers`) Parquet, a Hugging Face dataset directory
(``.hf``) and Label Studio tasks (``.labelstudio.json``).

Given the input's rows (``inputs``, one per document in the same order), each row
carries the input's own fields first, then the annotations; an input field whose
name an annotation uses is kept as ``input_NAME`` (the input's ``id``, when it is
the id the job has, is not repeated).

An export is written to a temporary file beside the target and renamed over it at
the end: a failed export leaves the target as it was, never a truncated file.
"""

from __future__ import annotations

import array
import csv
import io
import itertools
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docqueue.errors import Refused
from docqueue.formats import writers
from docqueue.formats.extras import MissingExtra, need
from docqueue.formats.writers import encodable
from docqueue.tasks import declared, every, is_task

if TYPE_CHECKING:
    from docqueue.db.jobs import Outcome

#: Output formats by file extension.
FORMATS = {
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".hf": "dataset",
}
#: The end of a Label Studio tasks file's name.
LABEL_STUDIO = ".labelstudio.json"
_CHOICES = ".jsonl, .csv, .parquet, .hf (a dataset directory) or .labelstudio.json"

#: CSV columns every export has, before and after the task's own.
HEAD = ["id", "seq", "status"]
TAIL = ["error", "truncated", "duplicate_id"]


class OutputError(Refused, ValueError):
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
    return HEAD + task_fields(task, params) + TAIL


def task_fields(task: str, params: dict[str, Any] | None = None) -> list[str]:
    """The output fields of a task's result with these parameters, in column order
    (none for a task the catalogue does not hold)."""
    return [f.name for f in declared(task).fields(params)] if is_task(task) else []


def output_format(out: Path) -> str:
    """``jsonl``, ``csv``, ``parquet``, ``dataset`` or ``labelstudio``, from the file's
    name; raises :class:`OutputError`."""
    if out.name.lower().endswith(LABEL_STUDIO):
        return "labelstudio"
    suffix = out.suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    raise OutputError(
        f"{out}: unknown output format {suffix or '(no extension)'!r}; use {_CHOICES}"
    )


def check_output(out: Path, task: str | None = None) -> None:
    """Raise :class:`OutputError` unless results can be written to ``out``: a known
    format (Label Studio: for classify), an existing directory, and a file can be
    created there."""
    fmt = output_format(out)
    if fmt == "labelstudio" and task is not None and declared(task).label_studio is None:
        those = " and ".join(d.name for d in every() if d.label_studio is not None)
        raise OutputError(f"{out}: Label Studio predictions are for {those}, not {task}")
    needs = {"parquet": "pyarrow", "dataset": "datasets"}
    if fmt in needs:
        try:
            need(needs[fmt], f"{out}: {fmt} output")
        except MissingExtra as exc:
            raise OutputError(str(exc)) from None
    if out.is_dir() and not (fmt == "dataset" and _saved_dataset(out)):
        raise OutputError(f"{out} is a directory; name a file ({_CHOICES})")
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


def _saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


Inputs = Iterable[Mapping[str, Any] | None]


def write_rows(
    rows: Iterable[dict[str, Any]],
    out: Path,
    columns: list[str] | None = None,
    *,
    task: str = "",
    model: str = "",
    inputs: Inputs | None = None,
    text_field: str = "text",
) -> int:
    """Write rows in the format ``out`` names (CSV: ``columns``, from
    :func:`csv_columns`, nested values as JSON; Parquet and datasets: typed by
    ``task``), with the ``inputs`` rows' fields alongside when given.  Returns the
    number written.

    Written to a temporary file beside ``out`` and renamed over it once complete."""

    fmt = output_format(out)
    try:
        if fmt == "labelstudio":
            pairs = zip(rows, inputs if inputs is not None else _nothing(), strict=True)
            tasks = writers.label_studio_tasks(pairs, task=task, model=model, text_field=text_field)
            return _write_text(out, lambda handle: _pieces(tasks, handle))
        if inputs is not None:
            rows = with_inputs(rows, inputs)
        if fmt == "dataset":
            return writers.write_dataset(rows, out, task)
        if fmt == "parquet":
            return _write_binary(out, lambda handle: writers.write_parquet(rows, handle, task))
        if fmt == "csv":
            carried = inputs is not None
            return _write_text(out, lambda handle: _write_csv(rows, handle, columns, carried))
        return _write_text(out, lambda handle: _write_jsonl(rows, handle))
    except (writers.WriteError, MissingExtra) as exc:
        raise OutputError(f"{out}: {exc}") from None
    except ValueError as exc:
        if "zip()" in str(exc):  # strict zip: the input is not the job's
            raise OutputError(f"{out}: the input has another number of rows than the job") from None
        raise


def _nothing() -> Iterator[None]:
    while True:
        yield None


def _pieces(texts: Iterable[str], handle: Any) -> int:
    """Write the pieces of a JSON array, one element each but the first and last."""
    pieces = 0
    for text in texts:
        handle.write(text)
        pieces += 1
    return pieces - 2


def _write_jsonl(rows: Iterable[dict[str, Any]], handle: Any) -> int:
    count = 0
    for row in rows:
        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        count += 1
    return count


def _write_text(out: Path, write: Callable[[Any], int]) -> int:
    return _replacing(out, lambda fd: _with_text(fd, write))


def _with_text(fd: int, write: Callable[[Any], int]) -> int:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        return write(handle)


def _write_binary(out: Path, write: Callable[[Any], int]) -> int:
    def run(fd: int) -> int:
        with os.fdopen(fd, "wb") as handle:
            return write(handle)

    return _replacing(out, run)


def _replacing(out: Path, write: Callable[[int], int]) -> int:
    """``write`` to a new file beside ``out`` (given its descriptor), renamed over
    ``out`` once complete."""
    part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    # os.open with 0o666: the file gets the permissions the umask gives a new file.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        count = write(fd)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return count


def with_inputs(rows: Iterable[dict[str, Any]], inputs: Inputs) -> Iterator[dict[str, Any]]:
    """Each row with its input row's fields first (one input row per result row)."""
    for row, fields in zip(rows, inputs, strict=True):
        yield merged(row, fields)


def merged(row: dict[str, Any], fields: Mapping[str, Any] | None) -> dict[str, Any]:
    if not fields:
        return row
    taken = annotation_fields() | set(row)
    carried: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "id" and value is not None and str(value) == row.get("id"):
            continue  # the id the job has
        carried[f"input_{name}" if name in taken else name] = encodable(value)
    return {**carried, **row}


def annotation_fields() -> set[str]:
    """Every field an export row may have: an input field of one of these names is
    renamed."""
    outputs = {f.name for d in every() for f in d.outputs}
    return {*HEAD, *outputs, *TAIL}


def _write_csv(
    rows: Iterable[dict[str, Any]], handle: Any, columns: list[str] | None, carried: bool
) -> int:
    """``carried``: the rows hold the input's fields, which go first (named by the
    first row)."""
    stream = iter(rows)
    first = next(stream, None)
    columns = columns or HEAD + TAIL
    if first is not None:
        if carried:
            columns = [k for k in first if k not in columns] + columns
        stream = itertools.chain([first], stream)
    records = csv_records(stream, columns)
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
            {
                k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
                for k, v in row.items()
            }
        )
        yield _taken(buffer)


def _taken(buffer: io.StringIO) -> str:
    """What ``buffer`` holds, leaving it empty."""
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
