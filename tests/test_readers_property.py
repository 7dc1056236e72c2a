"""Properties of what reads input: any bytes in, one document or one error per line
(JSONL) or record (CSV), never an exception out of a reader, never a lost line;
whatever the checks pass on to SQL is storable on every database; the wire schema
answers arbitrary JSON with a message or a ValidationError, nothing else.

Derandomized, so a failure is the same on every run and machine."""

from __future__ import annotations

import codecs
import csv
import io
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from docqueue.formats.readers import InputError, read_csv, read_documents, read_jsonl
from docqueue.producer.documents import MAX_ID_CHARS, Checked, Record, as_record, check
from docqueue.protocol import BatchMessage

PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: What breaks readers and databases, drawn often; any other character too.
NASTY = ["\ud800", "\udfff", "\x00", "\ufeff", "\n", "\r", '"', ",", "\t", "\\", "\u2028", "😀"]
chars = st.one_of(st.sampled_from(NASTY), st.characters(exclude_categories=()))
texts = st.text(chars, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
#: A JSONL line as a producer might write it (json.dumps escapes lone surrogates as
#: "\ud800", as in issue 12) or as anything else might.
jsonl_lines = st.one_of(
    st.builds(
        lambda text, user_id: json.dumps({"id": user_id, "text": text}).encode(),
        json_values,
        json_values,
    ),
    st.builds(lambda obj: json.dumps(obj).encode(), json_values),
    st.binary(max_size=60).map(lambda raw: raw.replace(b"\n", b" ")),
    st.sampled_from(
        [b"", b"   ", b"\r", b'{"text": "x"', b"[" * 5000, b'{"text": 1' + b"0" * 5000]
    ),
)


@contextmanager
def written(name: str, data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        yield path


def storable(checked: Checked) -> None:
    """What goes to SQL: no NUL, no lone surrogate, the id within its column."""
    for value in (checked.error or "", checked.stored_text, checked.record_id or ""):
        assert "\x00" not in value
        value.encode("utf-8")  # raises on a lone surrogate
    assert checked.record_id is None or len(checked.record_id) <= MAX_ID_CHARS
    assert (checked.doc is None) == (checked.error is not None)


def checked_all(records: list[Record], task: str = "generate") -> None:
    for record in records:
        storable(check(record, task=task, max_chars=1000))


@PROPERTY
@given(
    lines=st.lists(jsonl_lines, max_size=12),
    bom=st.booleans(),
    end=st.sampled_from([b"\n", b"\r\n"]),
)
def test_jsonl_gives_one_record_per_line_whatever_the_bytes(lines, bom, end):
    data = (codecs.BOM_UTF8 if bom else b"") + b"".join(line + end for line in lines)
    expected = [number for number, line in enumerate(lines, start=1) if line.strip()]
    with written("docs.jsonl", data) as path:
        records = list(read_jsonl(path, text_field="text", id_field="id"))
    assert len(records) == len(expected)  # never a lost line
    for number, record in zip(expected, records, strict=True):
        assert record.error is None or record.error.startswith(f"line {number}: ")
    checked_all(records)


csv_rows = st.lists(st.lists(texts, min_size=0, max_size=4), max_size=8)


@PROPERTY
@given(rows=csv_rows, bom=st.booleans(), tab=st.booleans())
def test_csv_gives_one_record_per_row_whatever_the_fields(rows, bom, tab):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if tab else ",")
    writer.writerow(["id", "text", "more"])
    written_rows = [row for row in rows if row]  # an empty row is a blank line: no record
    writer.writerows(written_rows)
    # lone surrogates cannot be written as UTF-8: they go out as the bytes of one,
    # which is what a file from a careless encoder holds (invalid UTF-8)
    data = (codecs.BOM_UTF8 if bom else b"") + buffer.getvalue().encode("utf-8", "surrogatepass")
    with written("docs.tsv" if tab else "docs.csv", data) as path:
        records = list(read_csv(path, text_field="text", id_field="id", tab=tab))
    assert len(records) == len(written_rows)
    for row, record in zip(written_rows, records, strict=True):
        if record.error is None:
            assert record.text == row[1]
            assert record.id == (row[0] or None)
        else:
            assert record.error.startswith("row ")
    checked_all(records)


@PROPERTY
@given(data=st.binary(max_size=300), name=st.sampled_from(["d.jsonl", "d.csv", "d.tsv"]))
def test_any_bytes_are_refused_as_a_file_or_read_to_the_end(data, name):
    with written(name, data) as path:
        try:
            records = list(read_documents(path))
        except InputError as exc:
            assert str(exc).startswith(str(path))  # a whole-file refusal, one line
            return
    assert len(records) <= data.count(b"\n") + 1
    checked_all(records, task="classify")


@PROPERTY
@given(
    value=st.one_of(json_values, st.tuples(json_values, json_values)),
    task=st.sampled_from(["classify", "generate"]),
)
def test_the_document_check_takes_any_value(value, task):
    """Client.submit_many's input, whatever a caller hands in: a row or an error."""
    storable(check(as_record(value), task=task, max_chars=50))


def _message(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "v": 1,
        "job": "0" * 32,
        "task": "classify",
        "model": "tiny",
        "params": {},
        "lane": "bulk",
        "items": [[0, "a document"]],
        "enqueued_at": 1.0,
    }
    message.update(overrides)
    return message


fields = st.sampled_from(list(_message()))


@PROPERTY
@given(value=json_values, field=fields, whole=st.booleans())
def test_the_wire_schema_answers_any_json_with_a_message_or_a_validation_error(value, field, whole):
    candidate = value if whole else _message(**{field: value})
    with suppress(ValidationError):
        BatchMessage.model_validate(candidate)
    with suppress(ValidationError):  # and as the bytes a worker receives
        BatchMessage.model_validate_json(json.dumps(candidate))


@PROPERTY
@given(items=st.lists(st.tuples(json_values, json_values), max_size=4))
def test_the_wire_schema_checks_every_item(items):
    try:
        message = BatchMessage.model_validate(_message(items=items))
    except ValidationError:
        return
    for seq, doc in message.items:
        assert isinstance(seq, int) and seq >= 0
        assert isinstance(doc, (str, list))
