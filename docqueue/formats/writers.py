"""Result files beyond JSONL and CSV: Parquet with typed columns, a Hugging Face
dataset saved with ``save_to_disk``, and Label Studio tasks with predictions.

Parquet columns: ``id`` string, ``seq`` int64, ``status`` string, the task's
outputs as its declaration types them (``OutputField.parquet``: e.g. ``label``
string, ``score`` float64 and ``scores`` a struct of one float64 per label; ``dim``
int32 and ``embedding`` a fixed-size list of float32; ``entities`` a list of structs),
``error`` string, ``truncated`` and
``duplicate_id`` bool, and any other field (the input's own) typed as pyarrow infers
it from the first rows.  The schema is settled from the rows up to the first that is
done (its labels and embedding size) and at least :data:`BATCH_ROWS`; a later row
whose value does not fit its column is an error naming the column.
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from docqueue.errors import Refused
from docqueue.formats.extras import need, quiet
from docqueue.tasks import declared, is_task
from docqueue.tasks.declaration import LabelStudio

#: Rows per Parquet row group (and held in memory while writing).
BATCH_ROWS = 4096
#: Column types of the fields every export and every task may have.
_FLAGS = ("truncated", "duplicate_id")

_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(value: Any) -> Any:
    """``value`` with each lone surrogate (which no UTF-8 file can hold: an escaped
    ``\\ud800`` in JSON, a byte a CSV could not decode) as U+FFFD, in nested values too."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encodable(v) for v in value]
    return value


class WriteError(Refused, ValueError):
    """The rows cannot be written in this format; the message says which and why."""


def write_parquet(rows: Iterable[dict[str, Any]], out: str | Path | IO[bytes], task: str) -> int:
    """Write ``rows`` to a Parquet file (a path or a binary file); returns the count."""
    pa = need("pyarrow", "Parquet output")
    pq = need("pyarrow.parquet", "Parquet output")
    stream = iter(rows)
    head = _head(stream)
    schema = _schema(pa, task, head)
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        for batch in _batched(itertools.chain(head, stream)):
            writer.write_table(_table(pa, schema, batch))
            count += len(batch)
    return count


def _head(stream: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows up to the first that is done, and at least :data:`BATCH_ROWS`."""
    head: list[dict[str, Any]] = []
    seen_done = False
    for row in stream:
        head.append(row)
        seen_done = seen_done or row.get("status") == "done"
        if seen_done and len(head) >= BATCH_ROWS:
            break
    return head


def _batched(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    stream = iter(rows)
    while batch := list(itertools.islice(stream, BATCH_ROWS)):
        yield batch


def _schema(pa: Any, task: str, head: list[dict[str, Any]]) -> Any:
    done = next((r for r in head if r.get("status") == "done"), {})
    known: dict[str, Any] = {"id": pa.string(), "seq": pa.int64(), "status": pa.string()}
    known.update(_task_types(pa, task, done))
    known.update({"error": pa.string(), "truncated": pa.bool_(), "duplicate_id": pa.bool_()})
    names = [k for k in dict.fromkeys(k for row in head for k in row) if k not in known]
    carried = [pa.field(n, _inferred(pa, n, head)) for n in names]  # the input's, first
    return pa.schema(carried + [pa.field(n, known[n]) for n in known])


def _task_types(pa: Any, task: str, done: dict[str, Any]) -> dict[str, Any]:
    """The Parquet type of each typed output field the task declares; the done row
    settles a struct's names and a vector's size."""
    if not is_task(task):
        return {}
    plain = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
    }
    types: dict[str, Any] = {}
    for field in declared(task).outputs:
        if field.parquet in plain:
            types[field.name] = plain[field.parquet]
        elif field.parquet == "struct" and isinstance(done.get(field.name), dict):
            types[field.name] = pa.struct([(name, pa.float64()) for name in done[field.name]])
        elif field.parquet == "records":
            item = pa.struct([(name, plain[kind]) for name, kind in field.items])
            types[field.name] = pa.list_(item)
        elif field.parquet == "vector":
            dim = len(done.get(field.name) or []) or int(done.get("dim") or 0)
            types[field.name] = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
    return types


def _inferred(pa: Any, name: str, head: list[dict[str, Any]]) -> Any:
    """A column's type from the first rows; all null there: string."""
    try:
        kind = pa.array([row.get(name) for row in head]).type
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise WriteError(f"column {name!r} holds values of several types ({exc})") from None
    return pa.string() if pa.types.is_null(kind) else kind


def _table(pa: Any, schema: Any, batch: list[dict[str, Any]]) -> Any:
    columns = []
    for field in schema:
        default = False if field.name in _FLAGS else None
        values = [row.get(field.name, default) for row in batch]
        if pa.types.is_string(field.type):
            values = [_text(v) for v in values]
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            first, last = batch[0].get("seq"), batch[-1].get("seq")
            raise WriteError(
                f"documents {first} to {last}: a value of column {field.name!r} is not "
                f"{field.type} like the rows before ({exc}); export to .jsonl instead"
            ) from None
    unknown = {k for row in batch for k in row} - set(schema.names)
    if unknown:
        raise WriteError(
            f"documents {batch[0].get('seq')} to {batch[-1].get('seq')} have fields the "
            f"first rows do not ({', '.join(sorted(unknown))}); export to .jsonl instead"
        )
    return pa.Table.from_arrays(columns, schema=schema)


def _text(value: Any) -> Any:
    """A value for a string column: strings as they are, others as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def write_dataset(rows: Iterable[dict[str, Any]], out: Path, task: str) -> int:
    """Save ``rows`` as a Hugging Face dataset directory (``load_from_disk`` reads
    it), through a Parquet file and Arrow files on disk, never all rows in memory.
    ``out`` is replaced only once the new one is complete."""
    datasets = need("datasets", "Hugging Face dataset output")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        parquet = Path(tmp) / "rows.parquet"
        count = write_parquet(rows, parquet, task)
        with quiet(datasets):
            cache = str(Path(tmp) / "cache")
            dataset = datasets.Dataset.from_parquet(str(parquet), cache_dir=cache)
            ready = Path(tmp) / "dataset"
            dataset.save_to_disk(str(ready))
        del dataset  # its memory-mapped cache files are in tmp
        old = Path(tmp) / "old"
        if out.exists():
            out.rename(old)
        ready.rename(out)
    return count


Paired = Iterable[tuple[dict[str, Any], Mapping[str, Any] | None]]


def label_studio_tasks(
    pairs: Paired, *, task: str, model: str, text_field: str = "text"
) -> Iterator[str]:
    """A JSON array of Label Studio tasks, a piece at a time: each task's ``data`` is
    the input row (its fields, the text among them), and a document that was
    annotated has one prediction, its results as the task declares them (classify:
    a ``choices`` result from the control ``label`` to the object ``text``,
    ``<Choices name="label" toName="text">``; ner: a ``labels`` span per entity,
    ``<Labels name="label" toName="text">``).  A document that failed is a task with
    no prediction, to be labelled by hand."""
    predict = declared(task).label_studio if is_task(task) else None
    if predict is None:
        raise WriteError(f"Label Studio predictions are not declared for {task}")
    yield "["
    for number, (row, fields) in enumerate(pairs):
        yield ("\n" if number == 0 else ",\n") + json.dumps(
            _task(row, fields, model, text_field, predict), ensure_ascii=False, default=str
        )
    yield "\n]\n"


def _task(
    row: dict[str, Any],
    data: Mapping[str, Any] | None,
    model: str,
    text_field: str,
    predict: LabelStudio,
) -> dict[str, Any]:
    if data is None or text_field not in data:
        raise WriteError(
            f"document {row.get('seq')}: a Label Studio task needs the document's "
            f"{text_field!r}; export with the input file (docqueue annotate does, and "
            "docqueue export takes --input FILE)"
        )
    task: dict[str, Any] = {"data": encodable(dict(data)), "meta": {"docqueue_seq": row.get("seq")}}
    results = predict(row, str(data[text_field])) if row.get("status") == "done" else None
    if results is not None:
        task["predictions"] = [
            {"model_version": model, "score": row.get("score"), "result": results}
        ]
    return task
