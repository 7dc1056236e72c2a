"""Reading documents from Parquet files and Hugging Face datasets, a batch of rows at
a time (Parquet by record batches within its row groups; a saved dataset from its
memory-mapped Arrow files; data files through ``datasets.load_dataset`` streamed).

The text column is checked before anything is read: it must hold strings (text) or
lists of ``{role, content}`` structs (chat messages, for generate).  A null text is
that row's error; a wrong type is the whole file's.  Rows are numbered from 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from docqueue.formats.extras import need, quiet
from docqueue.formats.problems import InputError, shown
from docqueue.producer.documents import Record, id_problem, lone_surrogate

#: Rows decoded at a time: what the reader holds in memory beside pyarrow's buffers.
BATCH_ROWS = 1024
#: What saving a dataset (``save_to_disk``) leaves in its directory.
_SAVED = ("state.json", "dataset_dict.json")

Rows = Iterator[list[dict[str, Any]]]


def read_parquet(path: Path, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    """Records of a Parquet file; raises :class:`InputError` at once for a file that is
    not Parquet, has no such column, a column of another type, or no rows."""
    pq = need("pyarrow.parquet", f"{path}: reading Parquet")
    pa = need("pyarrow", f"{path}: reading Parquet")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_type(path, {f.name: f.type for f in parquet.schema_arrow}, text_field)
    if parquet.metadata.num_rows == 0:
        raise InputError(f"{path}: no documents")
    return rows_to_records(_parquet_rows(path, parquet, pa), text_field, id_field)


def _parquet_rows(path: Path, parquet: Any, pa: Any) -> Rows:
    read = 0
    batches = parquet.iter_batches(batch_size=BATCH_ROWS)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: cannot read the rows after row {read} ({exc})") from None
        read += batch.num_rows
        yield batch.to_pylist()


def _check_type(path: Path, columns: Mapping[str, Any], text_field: str) -> None:
    pa = need("pyarrow", f"{path}: reading Parquet")
    if text_field not in columns:
        raise InputError(f"{path}: no column {text_field!r} (columns: {shown(columns) or 'none'})")
    kind = columns[text_field]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return
    if _is_chat(pa, kind) or _is_fields(pa, kind):
        return
    raise InputError(
        f"{path}: column {text_field!r} is {kind}, not text (strings), chat messages "
        "(lists of structs with role and content) or fields (a struct of strings: "
        "rerank's query and passage)"
    )


def _is_fields(pa: Any, kind: Any) -> bool:
    """A struct of strings: documents of named fields (rerank's query and passage)."""
    return pa.types.is_struct(kind) and all(
        pa.types.is_string(kind.field(i).type) or pa.types.is_large_string(kind.field(i).type)
        for i in range(kind.num_fields)
    )


def _is_chat(pa: Any, kind: Any) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return False
    item = kind.value_type
    return bool(pa.types.is_struct(item) and {"role", "content"} <= {f.name for f in item.fields})


def is_dataset(path: Path) -> bool:
    """A directory: a saved dataset, or data files for ``load_dataset``."""
    return path.is_dir()


def read_dataset(path: Path, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    """Records of a dataset saved with ``save_to_disk``, or of the data files in a
    directory (``load_dataset(path, split="train", streaming=True)``)."""
    datasets = need("datasets", f"{path}: reading a Hugging Face dataset")
    if any((path / name).is_file() for name in _SAVED):
        rows = _saved_rows(datasets, path, text_field)
    else:
        rows = _streamed_rows(datasets, path, text_field)
    return rows_to_records(rows, text_field, id_field)


def _saved_rows(datasets: Any, path: Path, text_field: str) -> Rows:
    try:
        with quiet(datasets):
            dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load the dataset ({exc})") from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset)
        raise InputError(
            f"{path} holds several splits ({splits}): name one, e.g. {path / next(iter(dataset))}"
        )
    _check_type(path, {f.name: f.type for f in dataset.data.schema}, text_field)
    if dataset.num_rows == 0:
        raise InputError(f"{path}: no documents")
    return (table.to_pylist() for table in dataset.with_format("arrow").iter(BATCH_ROWS))


def _streamed_rows(datasets: Any, path: Path, text_field: str) -> Rows:
    try:
        with quiet(datasets):
            dataset = datasets.load_dataset(str(path), split="train", streaming=True)
            batches = dataset.iter(batch_size=BATCH_ROWS)
            first = next(batches, None)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot load data files from it ({exc})") from None
    if not first:
        raise InputError(f"{path}: no documents")
    if text_field not in first:
        raise InputError(f"{path}: no column {text_field!r} (columns: {shown(first)})")
    return _columns_to_rows(_chained(first, batches))


def _chained(first: dict[str, list[Any]], rest: Iterable[dict[str, list[Any]]]) -> Iterator[Any]:
    yield first
    yield from rest


def _columns_to_rows(batches: Iterable[dict[str, list[Any]]]) -> Rows:
    for batch in batches:
        names = list(batch)
        columns = zip(*batch.values(), strict=True)
        yield [dict(zip(names, values, strict=True)) for values in columns]


def rows_to_records(batches: Rows, text_field: str, id_field: str | None) -> Iterator[Record]:
    number = 0
    for rows in batches:
        for row in rows:
            number += 1
            yield row_record(row, f"row {number}", text_field, id_field)


def row_record(row: dict[str, Any], where: str, text_field: str, id_field: str | None) -> Record:
    """One row as a Record (or its error), carrying the row's fields."""
    value = row.get(id_field) if id_field else None
    user_id = None if value is None else str(value)
    if problem := id_problem(user_id):
        return Record(None, None, f"{where}: {problem}", row)
    text = row.get(text_field)
    if text is None:
        return Record(None, user_id, f"{where}: no {text_field!r} value (null)", row)
    if surrogate := lone_surrogate(text):
        return Record(None, user_id, f"{where}: {text_field!r} is not valid Unicode ({surrogate})")
    if isinstance(text, list):  # chat: drop the struct's other fields where they are null
        text = [
            {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
            for m in text
        ]
    return Record(text, user_id, None, row)
