"""Reading documents from files, one :class:`Record` at a time: JSONL, CSV and TSV
(each also gzipped, ``.gz``), JSON arrays, and (with the ``data`` extra, see
:mod:`docqueue.formats.tabular`) Parquet and Hugging Face datasets.  Each Record
carries its row's fields, which annotate writes beside the annotations.

A line that cannot be read (malformed JSON, invalid UTF-8, a lone surrogate, no
text field, an id no database can store) becomes a Record with an ``error`` naming
the line, so it gets an error row instead of vanishing or stopping the run: every
JSONL line that is not blank, and every CSV record, gives exactly one Record.  A file
that cannot give a single document (empty, or no row has the text field) is refused
at once, before anything is queued.  A UTF-8 byte order mark is read past.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
import shlex
import shutil
import sys
import tempfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from docqueue.formats.problems import InputError, shown
from docqueue.formats.tabular import read_dataset, read_parquet
from docqueue.params import validate_params
from docqueue.producer.documents import Record, id_problem, lone_surrogate
from docqueue.protocol import json_type

if TYPE_CHECKING:
    from docqueue.db.jobs import JobInfo

_UNDECODABLE = re.compile("[\udc80-\udcff]")
#: JSONL rows read ahead to tell a wrong text field from a few rows without it.
SCAN_ROWS = 1000
#: csv's own limit is 131,072 characters a field; JSONL has none, and CSV takes
#: what JSONL takes (documents are cut at max_document_chars after reading).
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


class NoInput(InputError):
    """A job's input cannot be read again: none is recorded, or its file is gone."""


def read_documents(
    path: str | Path, *, text_field: str = "text", id_field: str | None = "id"
) -> Iterator[Record]:
    """The file's documents (its format from its name); raises :class:`InputError` at
    once for a file that cannot give a single one.

    ``text_field`` names the field (column) holding each document's text, or maps
    a task's named fields to fields of the file, ``question=q,context=passage``:
    each document is then an object of fields (a question and its context, a query
    and a passage) read from those fields of its row."""
    columns = field_columns(text_field)
    if columns is None:
        return _read(Path(path), text_field, id_field)
    return _with_fields(_read(Path(path), next(iter(columns.values())), id_field), columns)


def field_columns(text_field: str) -> dict[str, str] | None:
    """The named fields a ``name=field,...`` text field maps to fields of the file,
    or None for a plain text field."""
    if "=" not in text_field:
        return None
    columns: dict[str, str] = {}
    for part in text_field.split(","):
        name, _, column = (p.strip() for p in part.partition("="))
        if not name or not column:
            raise InputError(f"text field {text_field!r}: expected NAME=FIELD,NAME=FIELD")
        if name in columns:
            raise InputError(f"text field {text_field!r}: {name!r} is named twice")
        columns[name] = column
    return columns


def _with_fields(records: Iterator[Record], columns: dict[str, str]) -> Iterator[Record]:
    """Each record's document as an object of named fields, from its row's fields;
    a file whose first row lacks one of them is refused at once."""
    checked = False
    for record in records:
        if record.error is not None:
            yield record
            continue
        row = record.fields or {}
        if not checked:  # the first row that could be read
            missing = [c for c in columns.values() if c not in row]
            if missing:
                raise InputError(f"no field {missing[0]!r} (fields: {shown(row) or 'none'})")
            checked = True
        values = {name: row.get(column) for name, column in columns.items()}
        absent = next((c for n, c in columns.items() if values[n] is None), None)
        if absent is not None:
            yield replace(record, text=None, error=f"no {absent!r} value (null)")
            continue
        # a value that is not text is refused at intake, naming its field
        yield replace(record, text=values)


def _read(path: Path, text_field: str, id_field: str | None) -> Iterator[Record]:
    if path.is_dir():
        return read_dataset(path, text_field=text_field, id_field=id_field)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    kind = input_format(path)
    if kind == "parquet":
        return read_parquet(path, text_field=text_field, id_field=id_field)
    if kind == "json" and _is_array(path):
        _check_objects(path, _array_objects(path), text_field)
        return read_json_array(path, text_field=text_field, id_field=id_field)
    if kind in ("jsonl", "json"):
        _check_objects(path, _jsonl_objects(path), text_field)
        return read_jsonl(path, text_field=text_field, id_field=id_field)
    _check_csv(path, text_field, tab=kind == "tsv")
    return read_csv(path, text_field=text_field, id_field=id_field, tab=kind == "tsv")


#: Input formats by file extension (each text format also read gzipped, ``.gz``).
INPUT_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def input_format(path: Path) -> str:
    """``jsonl``, ``json`` (an array, or JSONL), ``csv``, ``tsv`` or ``parquet``."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
        if INPUT_FORMATS.get(suffix, "parquet") == "parquet":
            raise InputError(f"{path}: unknown format; gzip holds .jsonl, .json, .csv or .tsv")
    if suffix not in INPUT_FORMATS:
        raise InputError(
            f"{path}: unknown format {suffix!r}; use .jsonl, .json, .csv, .tsv (each may be "
            ".gz), .parquet, or a Hugging Face dataset directory"
        )
    return INPUT_FORMATS[suffix]


def _open(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when its name ends in .gz."""
    if path.suffix.lower() == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


@contextmanager
def stdin_copy() -> Iterator[Path]:
    """Standard input (JSONL, or a JSON array) copied to a temporary file, a block at
    a time: read twice (checked, then queued), and again for the fields annotate
    writes beside the results.  Removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="docqueue-stdin-") as tmp:
        path = Path(tmp) / "stdin.json"
        with path.open("wb") as copy:
            shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        yield path


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the lines that are not blank, a leading BOM dropped.
    Raises :class:`InputError` where the file cannot be read further (a gzip file
    cut short or corrupt)."""
    number = 0
    with _open(path) as lines:
        try:
            for number, raw in enumerate(lines, start=1):
                if number == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                if raw.strip():
                    yield number, raw
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: cannot read past line {number} ({exc})") from None


def _jsonl_objects(path: Path) -> Generator[Any, None, None]:
    for _, raw in _lines(path):
        try:
            yield json.loads(raw)
        except (ValueError, RecursionError):  # that line's own error row
            yield None


def _check_objects(path: Path, objects: Generator[Any, None, None], text_field: str) -> None:
    """Refuse a file with no rows, or whose first :data:`SCAN_ROWS` objects all lack
    the text field (naming the fields they do have)."""
    fields: dict[str, None] = {}
    rows = 0
    with closing(objects):
        for obj in objects:
            rows += 1
            if isinstance(obj, dict):
                if text_field in obj:
                    return
                fields.update(dict.fromkeys(map(str, obj)))
            if rows >= SCAN_ROWS:
                break
    if rows == 0:
        raise InputError(f"{path}: no documents")
    if fields:
        where = f"the first {rows} rows" if rows >= SCAN_ROWS else "any row"
        raise InputError(f"{path}: no field {text_field!r} in {where} (fields: {shown(fields)})")


def read_jsonl(path: Path, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    for number, raw in _lines(path):
        yield _jsonl_record(raw, f"line {number}", text_field, id_field)


def _jsonl_record(raw: bytes, where: str, text_field: str, id_field: str | None) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Record(None, None, f"{where}: invalid UTF-8 at byte {exc.start + 1}")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return Record(None, None, f"{where}: malformed JSON ({exc.msg} at column {exc.colno})")
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return Record(None, None, f"{where}: malformed JSON ({exc})")
    except RecursionError:
        return Record(None, None, f"{where}: malformed JSON (nested too deeply)")
    return object_record(obj, where, text_field, id_field)


def object_record(obj: Any, where: str, text_field: str, id_field: str | None) -> Record:
    """A decoded JSON value as a Record: an object with the text field, else an error."""
    if not isinstance(obj, dict):
        return Record(None, None, f"{where}: expected a JSON object")
    value = obj.get(id_field) if id_field else None
    user_id = None if value is None else str(value)
    if problem := id_problem(user_id):
        return Record(None, None, f"{where}: {problem}", obj)
    if text_field not in obj:
        return Record(None, user_id, f"{where}: no {text_field!r} field", obj)
    text = obj[text_field]
    if text is None:
        return Record(None, user_id, f"{where}: no {text_field!r} value (null)", obj)
    # a list is a chat, an object fields (rerank's query and passage): each is
    # checked with the document, against what its task takes
    if not isinstance(text, (str, list, dict)):
        kind = json_type(text)
        return Record(None, user_id, f"{where}: {text_field!r} is {kind}, not a string", obj)
    if surrogate := lone_surrogate(text):
        return Record(
            None, user_id, f"{where}: {text_field!r} is not valid Unicode ({surrogate})", obj
        )
    return Record(text, user_id, None, obj)


def _is_array(path: Path) -> bool:
    """Whether a .json file holds one array (else it is read as JSONL)."""
    from docqueue.formats.jsonarray import ArrayError, starts_array

    with _open(path) as stream:
        try:
            return starts_array(stream)
        except (ArrayError, OSError, EOFError, zlib.error):
            return False  # read as JSONL, whose lines say what is wrong


def _array_elements(path: Path) -> Generator[tuple[int, Any], None, None]:
    """(element number, value or ArrayError) for each element of a JSON array file."""
    from docqueue.formats.jsonarray import ArrayError, array_items

    number = 0
    with _open(path) as stream:
        try:
            for number, value in enumerate(array_items(stream), start=1):
                yield number, value
        except ArrayError as exc:  # not an array after all, or not UTF-8
            yield number + 1, exc
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: cannot read past element {number} ({exc})") from None


def _array_objects(path: Path) -> Generator[Any, None, None]:
    with closing(_array_elements(path)) as elements:
        for _, value in elements:
            yield value


def read_json_array(path: Path, *, text_field: str, id_field: str | None) -> Iterator[Record]:
    """One Record per element, "element N" (from 1) in its errors; a malformed element
    ends the file (its error says the rest cannot be read)."""
    from docqueue.formats.jsonarray import ArrayError

    with closing(_array_elements(path)) as elements:
        for number, value in elements:
            where = f"element {number}"
            if isinstance(value, ArrayError):
                yield Record(None, None, f"{where}: {value}; the rest of the array cannot be read")
                return
            yield object_record(value, where, text_field, id_field)


#: A CSV record (its fields, or the csv.Error reading it raised) and the number of
#: the line it ends on.
CsvRow = tuple[int, list[str] | csv.Error]


def _csv_rows(path: Path, tab: bool) -> Generator[CsvRow, None, None]:
    """The file's records; after a csv.Error the reader goes on with the next one."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    binary = _open(path)
    with io.TextIOWrapper(binary, "utf-8-sig", "surrogateescape", newline="") as stream:
        reader = csv.reader(stream, delimiter="\t" if tab else ",")
        while True:
            try:
                row: list[str] | csv.Error = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row = exc
            except (OSError, EOFError, zlib.error) as exc:
                raise InputError(
                    f"{path}: cannot read past line {reader.line_num} ({exc})"
                ) from None
            yield reader.line_num, row


def _header(path: Path, rows: Iterator[CsvRow], text_field: str) -> list[str]:
    _, columns = next(rows, (0, []))
    if isinstance(columns, csv.Error):
        raise InputError(f"{path}: cannot read the header ({columns})")
    if text_field not in columns:
        raise InputError(f"{path}: no column {text_field!r} (columns: {shown(columns) or 'none'})")
    return columns


def _check_csv(path: Path, text_field: str, *, tab: bool) -> None:
    with closing(_csv_rows(path, tab)) as rows:
        _header(path, rows, text_field)
        if not any(row for _, row in rows):
            raise InputError(f"{path}: no documents")


def read_csv(
    path: Path, *, text_field: str, id_field: str | None, tab: bool = False
) -> Iterator[Record]:
    with closing(_csv_rows(path, tab)) as rows:
        columns = _header(path, rows, text_field)
        text_at = columns.index(text_field)
        id_at = columns.index(id_field) if id_field and id_field in columns else None
        for number, row in rows:
            if row == []:  # a blank line, as csv.DictReader skips it
                continue
            if isinstance(row, csv.Error):
                yield Record(None, None, f"row {number}: {row}")
                continue
            record = _csv_record(row, f"row {number}", text_field, text_at, id_at)
            yield replace(record, fields=dict(zip(columns, row, strict=False)))


def _csv_record(
    row: list[str], where: str, text_field: str, text_at: int, id_at: int | None
) -> Record:
    user_id = _field(row, id_at) or None
    text = _field(row, text_at)
    if text is None:
        return Record(None, user_id, f"{where}: no {text_field!r} value")
    if _UNDECODABLE.search(text) or (user_id and _UNDECODABLE.search(user_id)):
        return Record(None, None, f"{where}: invalid UTF-8")
    if problem := id_problem(user_id):
        return Record(None, None, f"{where}: {problem}")
    return Record(text, user_id)


def _field(row: list[str], at: int | None) -> str | None:
    return row[at] if at is not None and at < len(row) else None


def input_digest(
    path: Path,
    task: str,
    model: str,
    params: dict[str, Any],
    text_field: str,
    id_field: str | None,
) -> str:
    """What makes two reads the same input: the file's content, the fields read from
    it, the task, the model and the parameters (validated, with their defaults, as
    the job records them: `docqueue resume` digests the job's own).  Raises
    :class:`~docqueue.params.InvalidParams` for parameters that are not valid."""
    params = validate_params(task, params)
    digest = hashlib.sha256()
    # a dataset directory: each of its files, by name and content
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode("utf-8", "surrogateescape"))
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    options = [task, model, params, text_field, id_field]
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def resume_command(job_id: str, text_field: str, id_field: str | None) -> str:
    """``docqueue resume JOB``, with the field options that read the job's file."""
    options = [
        f"{option} {shlex.quote(value)}"
        for option, value, default in (
            ("--text-field", text_field, "text"),
            ("--id-field", id_field, "id"),
        )
        if value is not None and value != default
    ]
    return " ".join(["docqueue resume", job_id, *options])


def rest_of_input(job: JobInfo, text_field: str, id_field: str | None) -> Iterator[Record]:
    """The documents of a job whose producer stopped part way, read again from the
    file it recorded (:meth:`Client.resume` skips those already stored).  Raises
    :class:`NoInput` when no file is recorded or it is gone, :class:`InputError`
    when it is not what was read (changed since, or read with other fields)."""
    stopped = f"job {job.id} stopped before all its documents were added"
    if not job.source or not job.input_digest:
        raise NoInput(
            f"{stopped}, and no input file is recorded for it: add the rest with "
            f"Client.resume({job.id!r}, documents=...)"
        )
    path = Path(job.source)
    if not path.exists():
        raise NoInput(f"{stopped}, and its input {path} is no longer there")
    if input_digest(path, job.task, job.model, job.params, text_field, id_field) != (
        job.input_digest
    ):
        raise InputError(
            f"{path} has changed since job {job.id} was enqueued, or was read with other "
            "fields: pass the --text-field and --id-field that enqueue was given"
        )
    return read_documents(path, text_field=text_field, id_field=id_field)
