"""Reading and checking input: every line becomes a document or a clear error naming
it; parameters out of range are refused with a message saying which and why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from docqueue.formats.readers import InputError, read_documents
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import InvalidDocument, Record, as_record, check


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
    (tmp_path / "docs.xlsx").touch()
    with pytest.raises(InputError, match="unknown format '.xlsx'"):
        read_documents(tmp_path / "docs.xlsx")
    with pytest.raises(InputError, match="no such file"):
        read_documents(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty document"),
        ("   \n\t", "document is whitespace only"),
        ("a\x00b", "document contains NUL (\\x00) characters"),
        (42, "text is a number, not a string"),
        (None, "no text (null)"),
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
        ("transcribe", {}, "unknown task 'transcribe'"),
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


def test_a_lone_surrogate_is_one_error_naming_the_line(tmp_path):
    """JSON may escape half of a surrogate pair ("\\ud800"); no encoder and no database
    takes the result, so the line is an error row instead of the end of the run."""
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"id": "a", "text": "fine"}\n'
        '{"id": "b", "text": "bad \\ud800 here"}\n'
        '{"id": "c\\udfff", "text": "fine text, bad id"}\n'
        '{"id": "d", "text": [{"role": "user", "content": "hi \\udc00"}]}\n'
        '{"id": "e", "text": "a pair \\ud83d\\ude00 is one character"}\n'
    )
    records = list(read_documents(path))
    assert [r.id for r in records] == ["a", "b", None, "d", "e"]
    assert [r.error for r in records] == [
        None,
        "line 2: 'text' is not valid Unicode (lone surrogate \\ud800 at character 5)",
        "line 3: id 'c\\udfff' is not valid Unicode (lone surrogate \\udfff at character 2)",
        "line 4: 'text' is not valid Unicode (message 1: lone surrogate \\udc00 at character 4)",
        None,
    ]


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (Record("bad \ud800"), "document is not valid Unicode (lone surrogate \\ud800"),
        (
            Record([{"role": "user", "content": "\udfff"}]),
            "document is not valid Unicode (message 1: lone surrogate \\udfff",
        ),
        (
            Record([{"role": "us\x00er", "content": "hi"}]),
            "a chat message's role contains NUL (\\x00) characters",
        ),
        (Record("fine", "id\ud800"), "id 'id\\ud800' is not valid Unicode"),
        (Record("fine", "nul\x00id"), "id 'nul\\x00id' contains NUL (\\x00) characters"),
        (Record("fine", "x" * 513), "id 'xxxxxxxx"),
        (Record(None, "nul\x00id", "line 9: no 'text' field"), "line 9: no 'text' field"),
    ],
)
def test_texts_and_ids_that_no_database_can_store_are_refused(record, error):
    checked = check(record, task="generate", max_chars=100)
    assert checked.error is not None and checked.error.startswith(error)
    assert checked.doc is None
    # what goes to SQL encodes, on every database: no NUL, no surrogate, id within the column
    for stored in (checked.error, checked.stored_text, checked.record_id or ""):
        assert "\x00" not in stored
        stored.encode("utf-8")
    assert checked.record_id is None or len(checked.record_id) <= 512


def test_an_id_longer_than_the_column_says_how_long():
    error = check(Record("fine", "x" * 600), task="classify", max_chars=100).error
    assert error == f"id '{'x' * 40}...' is 600 characters, more than 512"
    assert check(Record("fine", "x" * 512), task="classify", max_chars=100).error is None


def test_csv_fields_as_long_as_a_jsonl_line(tmp_path):
    """csv's own limit (131,072 characters a field) is not docqueue's: a CSV takes what
    JSONL takes, and the document is cut at max_document_chars like any other."""
    long_text = "word " * 60_000
    path = tmp_path / "docs.csv"
    path.write_text(f'id,text\na,"{long_text}"\nb,short\n')
    records = list(read_documents(path))
    assert records == [Record(long_text, "a"), Record("short", "b")]
    checked = check(records[0], task="classify", max_chars=100_000)
    assert checked.truncated and checked.doc == long_text[:100_000]


@pytest.mark.parametrize("name", ["docs.csv", "docs.tsv", "docs.jsonl"])
def test_a_file_with_a_byte_order_mark_reads_like_one_without(tmp_path, name):
    plain, bom = tmp_path / "plain" / name, tmp_path / "bom" / name
    if name.endswith(".jsonl"):
        content = '{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n'
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        content = f"id{sep}text\na{sep}first\nb{sep}second\n"
    for path, encoding in ((plain, "utf-8"), (bom, "utf-8-sig")):
        path.parent.mkdir()
        path.write_text(content, encoding=encoding)
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert list(read_documents(bom)) == list(read_documents(plain))
    assert list(read_documents(bom)) == [Record("first", "a"), Record("second", "b")]


def test_column_names_show_what_cannot_be_seen(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,te\u200bxt ,body\n1,x,y\n", encoding="utf-8-sig")
    with pytest.raises(InputError) as refused:
        read_documents(path)
    assert str(refused.value).endswith("no column 'text' (columns: id, 'te\\u200bxt ', body)")


@pytest.mark.parametrize(
    ("text", "user_id", "problem"),
    [
        ("bad \ud800", None, "document is not valid Unicode"),
        ([{"role": "user", "content": "\udfff"}], None, "document is not valid Unicode"),
        ("fine", "id\ud800", "is not valid Unicode"),
        ("fine", "nul\x00id", "contains NUL"),
        ("fine", "x" * 513, "is 513 characters, more than 512"),
    ],
)
def test_submit_refuses_what_no_database_can_store(client, text, user_id, problem):
    """The same on SQLite and PostgreSQL: InvalidDocument, nothing written."""
    with pytest.raises(InvalidDocument, match=problem):
        client.submit(text, task="generate", model="tiny", id=user_id)
    assert client.jobs(interactive=True) == []


def test_a_job_name_or_source_no_database_can_store(client):
    """A name is the caller's to fix (refused before anything is written); a file name
    may be any bytes, and is kept as the database can hold it."""
    with pytest.raises(InvalidParams, match="job name 'xxx.*' is 201 characters, more than 200"):
        client.submit_many(["a"], task="classify", model="tiny", name="x" * 201)
    assert client.jobs() == []
    job = client.submit_many(["a"], task="classify", model="tiny", source="/data/b\udcffd.jsonl")
    assert job.info().source == "/data/b\ufffdd.jsonl"
