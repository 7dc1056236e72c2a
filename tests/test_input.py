"""Reading and checking input: every line becomes a document or a clear error naming
it; parameters out of range are refused with a message saying which and why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import Record, as_record, check
from docqueue.producer.readers import InputError, read_documents


def test_jsonl_lines_that_cannot_be_read_become_errors_naming_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        b'{"id": 1, "text": "fine"}\n'
        b"\n"
        b'{"id": 2, "text": "broken\n'
        b'{"id": 3, "text": "bad \xff byte"}\n'
        b'{"id": 4, "body": "no text field"}\n'
        b'["not", "an", "object"]\n'
        b'{"text": "no id"}\n'
    )
    records = list(read_documents(path))
    assert records[0] == Record("fine", "1")
    assert records[1].error is not None
    assert records[1].error.startswith("line 3: malformed JSON")
    assert records[2].error == "line 4: invalid UTF-8 at byte 24"
    assert records[3] == Record(None, "4", "line 5: no 'text' field")
    assert records[4].error == "line 6: expected a JSON object"
    assert records[5] == Record("no id", None)
    assert len(records) == 6  # the blank line is not a document


def test_csv_with_custom_fields_short_rows_and_bad_bytes(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_bytes(b"key,body\nk1,hello there\nk2\nk3,caf\xe9\n")
    records = list(read_documents(path, text_field="body", id_field="key"))
    assert records[0] == Record("hello there", "k1")
    assert records[1] == Record(None, "k2", "row 3: no 'body' value")
    assert records[2].error == "row 4: invalid UTF-8"


def test_whole_file_problems_stop_before_anything_is_queued(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no column 'text' \\(columns: a, b\\)"):
        list(read_documents(path))
    (tmp_path / "docs.parquet").touch()
    with pytest.raises(InputError, match="unknown format"):
        read_documents(tmp_path / "docs.parquet")
    with pytest.raises(InputError, match="no such file"):
        read_documents(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty document"),
        ("   \n\t", "document is whitespace only"),
        ("a\x00b", "document contains NUL (\\x00) characters"),
        (42, "text is int, not a string"),
        ([{"role": "user", "content": "hi"}], "classify takes text, not chat messages"),
    ],
)
def test_documents_that_cannot_run_get_a_reason(text, error):
    assert check(as_record({"text": text}), task="classify", max_chars=100).error == error


def test_long_document_is_cut_and_flagged():
    checked = check(Record("x" * 150), task="classify", max_chars=100)
    assert checked.error is None and checked.truncated and checked.doc == "x" * 100


def test_chat_messages_for_generation():
    checked = check(Record([{"role": "user", "content": "Hello"}]), task="generate", max_chars=100)
    assert checked.error is None and checked.chat
    error = check(Record([{"role": "user"}]), task="generate", max_chars=100).error
    assert error is not None and error.startswith("invalid chat messages")


@pytest.mark.parametrize(
    ("task", "params", "message"),
    [
        ("summarize", {"num_beams": 99}, "num_beams: Input should be less than or equal to 16"),
        ("summarize", {"min_new_tokens": 10, "max_new_tokens": 5}, "min_new_tokens (10) exceeds"),
        ("generate", {"temperature": 0}, "temperature: Input should be greater than 0"),
        ("generate", {"top_p": 1.5}, "top_p"),
        ("generate", {"max_new_tokens": 5000}, "exceeds the cap of 1024"),
        ("generate", {"stop": ["x"] * 9}, "stop"),
        ("classify", {"labels": ["only one"]}, "between 2 and 256 labels"),
        ("classify", {"labels": ["a", "a"]}, "distinct"),
        ("classify", {"colour": "red"}, "colour: not a parameter of this task"),
        ("translate", {}, "unknown task 'translate'"),
    ],
)
def test_out_of_range_parameters_are_refused_with_a_reason(task, params, message):
    with pytest.raises(InvalidParams, match=message.replace("(", "\\(").replace(")", "\\)")):
        validate_params(task, params, max_new_tokens_cap=1024)


def test_defaults_are_filled_in():
    assert validate_params("summarize", None)["max_new_tokens"] == 64
    assert validate_params("classify", {"labels": ["a", "b"]})["labels"] == {"a": "a", "b": "b"}


def test_producer_side_imports_neither_torch_nor_transformers():
    code = (
        "import sys, docqueue, docqueue.producer, docqueue.cli, docqueue.broker\n"
        "from docqueue import Client\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "sys.exit(str(heavy) if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
