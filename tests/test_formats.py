"""Data formats in and out: Parquet, Hugging Face datasets, JSON arrays, gzip and
stdin in; Parquet, dataset directories and Label Studio tasks out, each carrying the
input's own fields.  Real pyarrow and datasets, real files; the end-to-end runs with
a worker are marked slow."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_api
from conftest import ROOT
from test_cli import docqueue, no_traceback, read_jsonl

from docqueue.config import Settings, settings_env
from docqueue.formats import jsonarray
from docqueue.formats.readers import InputError, read_documents
from docqueue.formats.results import OutputError, check_output, csv_columns, write_rows
from docqueue.producer.client import Client
from docqueue.producer.documents import Record, check

serve = test_api.serve  # the `docqueue serve` fixture
TICKETS = ROOT / "examples" / "tickets.jsonl"


def tickets() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TICKETS.read_text().splitlines()]


# --- in ----------------------------------------------------------------------------------


def test_parquet_rows_are_documents_that_carry_their_fields(tmp_path):
    path = tmp_path / "docs.parquet"
    table = pa.table(
        {
            "key": [7, 8, None],
            "body": ["first", None, "third"],
            "stars": [5, 3, 1],
        }
    )
    pq.write_table(table, path, row_group_size=2)  # two row groups
    records = list(read_documents(path, text_field="body", id_field="key"))
    assert records == [
        Record("first", "7"),
        Record(None, "8", "row 2: no 'body' value (null)"),
        Record("third", None),
    ]
    assert records[0].fields == {"key": 7, "body": "first", "stars": 5}
    assert records[2].fields == {"key": None, "body": "third", "stars": 1}


def test_parquet_problems_name_the_file_and_the_column(tmp_path):
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), wrong)
    with pytest.raises(InputError, match=r"wrong.parquet: column 'text' is int64, not text"):
        read_documents(wrong)
    with pytest.raises(InputError, match=r"wrong.parquet: no column 'body' \(columns: text\)"):
        read_documents(wrong, text_field="body")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"corrupt.parquet: not a readable Parquet file"):
        read_documents(corrupt)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match=r"empty.parquet: no documents"):
        read_documents(empty)
    # a row group whose pages are damaged: found when reading reaches it
    good = tmp_path / "good.parquet"
    texts = [f"document {i} " + "x" * 50 for i in range(4000)]
    pq.write_table(pa.table({"text": texts}), good, row_group_size=1000, compression="none")
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = b"\xff" * 4000
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"damaged.parquet: cannot read the rows after row"):
        list(read_documents(damaged))


def test_a_messages_column_gives_chat_documents_for_generation(tmp_path):
    path = tmp_path / "chats.parquet"
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    pq.write_table(pa.table({"id": ["c1", "c2"], "messages": chats}), path)
    records = list(read_documents(path, text_field="messages"))
    assert [r.text for r in records] == chats and [r.id for r in records] == ["c1", "c2"]
    checked = check(records[0], task="generate", max_chars=1000)
    assert checked.error is None and checked.chat
    assert check(records[0], task="classify", max_chars=1000).error == (
        "classify takes text, not chat messages"
    )


def test_json_arrays_are_read_an_element_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonarray, "CHUNK", 5)  # elements cross every chunk boundary
    path = tmp_path / "docs.json"
    path.write_text(
        '\ufeff [ {"id": "a", "text": "caf\u00e9 \u2014 first"},\n {"text": "no id"}, 12345,'
        ' {"id": 4, "body": "no text"}, {"id": 5, "text": "fifth"}, {"text": ]'
    )
    records = list(read_documents(path))
    assert records == [
        Record("caf\u00e9 \u2014 first", "a"),
        Record("no id", None),
        Record(None, None, "element 3: expected a JSON object"),
        Record(None, "4", "element 4: no 'text' field"),
        Record("fifth", "5"),
        Record(
            None,
            None,
            "element 6: malformed JSON (Expecting value); the rest of the array cannot be read",
        ),
    ]
    lines = tmp_path / "lines.json"  # .json that is not an array: JSONL
    lines.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [r.text for r in read_documents(lines)] == ["one", "two"]
    unclosed = tmp_path / "unclosed.json"
    unclosed.write_text('[{"text": "one"}')
    assert [r.error for r in read_documents(unclosed)] == [
        None,
        "element 2: expected ',' or ']' after it, found the end of the file; "
        "the rest of the array cannot be read",
    ]


def test_gzipped_files_are_read_and_a_cut_one_is_named(tmp_path):
    jsonl = tmp_path / "docs.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as out:
        for i in range(3):
            out.write(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n")
    assert [r.id for r in read_documents(jsonl)] == ["d0", "d1", "d2"]
    tsv = tmp_path / "docs.tsv.gz"
    tsv.write_bytes(gzip.compress(b"id\ttext\tlang\nt1\thello there\ten\n"))
    [record] = read_documents(tsv)
    assert record == Record("hello there", "t1") and record.fields == {
        "id": "t1",
        "text": "hello there",
        "lang": "en",
    }
    cut = tmp_path / "cut.jsonl.gz"
    lines = "".join(json.dumps({"text": os.urandom(40).hex()}) + "\n" for _ in range(500))
    cut.write_bytes(gzip.compress(lines.encode())[:20000])
    with pytest.raises(InputError, match=r"cut.jsonl.gz: cannot read past line \d+"):
        list(read_documents(cut))
    (tmp_path / "docs.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(InputError, match=r"unknown format; gzip holds"):
        read_documents(tmp_path / "docs.parquet.gz")


def test_saved_datasets_and_their_splits(tmp_path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["alpha", "beta"], "gold": [0, 1]}).save_to_disk(str(saved))
    records = list(read_documents(saved))
    assert [r.text for r in records] == ["alpha", "beta"]
    assert records[1].fields == {"text": "beta", "gold": 1}
    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a"]}),
            "test": datasets.Dataset.from_dict({"text": ["b"]}),
        }
    ).save_to_disk(str(splits))
    with pytest.raises(InputError, match=r"holds several splits \(train, test\): name one"):
        read_documents(splits)
    assert [r.text for r in read_documents(splits / "test")] == ["b"]


@pytest.mark.slow  # datasets.load_dataset takes seconds to start on the 2-core machine
def test_a_directory_of_data_files_is_read_through_load_dataset(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "part-0.jsonl").write_text('{"doc": "from a data file", "n": 1}\n')
    [record] = read_documents(files, text_field="doc")
    assert record.text == "from a data file" and record.fields == {
        "doc": "from a data file",
        "n": 1,
    }
    with pytest.raises(InputError, match=r"files: no column 'text' \(columns: doc, n\)"):
        read_documents(files)


# --- out ---------------------------------------------------------------------------------


def embed_rows(dim: int = 4) -> list[dict[str, Any]]:
    return [
        {"id": "a", "seq": 0, "status": "failed", "error": "empty document"},
        {"id": "b", "seq": 1, "status": "done", "dim": dim, "embedding": [0.5] * dim},
        {
            "id": None,
            "seq": 2,
            "status": "done",
            "dim": dim,
            "embedding": [0.25] * dim,
            "truncated": True,
        },
    ]


def classify_rows() -> list[dict[str, Any]]:
    scores = [{"billing": 0.8, "outage": 0.2}, {"billing": 0.1, "outage": 0.9}]
    return [
        {
            "id": "t1",
            "seq": 0,
            "status": "done",
            "label": "billing",
            "score": 0.8,
            "scores": scores[0],
        },
        {
            "id": "t2",
            "seq": 1,
            "status": "done",
            "label": "outage",
            "score": 0.9,
            "scores": scores[1],
        },
        {"id": "t3", "seq": 2, "status": "failed", "error": "empty document"},
    ]


CLASSIFY_INPUTS: list[dict[str, Any]] = [
    {"id": "t1", "text": "charged twice", "label": "billing"},
    {"id": "t2", "text": "site is down", "label": "outage"},
    {"id": "t3", "text": "", "label": None},
]


def test_parquet_output_has_typed_columns(tmp_path):
    out = tmp_path / "vectors.parquet"
    inputs: list[dict[str, Any]] = [
        {"id": "a", "text": "", "n": 1},
        {"id": "b", "text": "x", "n": 2},
        {"text": "y", "n": 3},
    ]
    assert write_rows(iter(embed_rows()), out, task="embed", inputs=iter(inputs)) == 3
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("seq").type == pa.int64()
    assert table.schema.names[:2] == ["text", "n"]  # the input's fields, then the annotations
    assert table.column("truncated").to_pylist() == [False, False, True]
    assert table.column("error").to_pylist() == ["empty document", None, None]
    assert table.column("embedding").to_pylist()[1] == [0.5] * 4

    labels = tmp_path / "labels.parquet"
    write_rows(iter(classify_rows()), labels, task="classify", inputs=iter(CLASSIFY_INPUTS))
    table = pq.read_table(labels)
    assert table.schema.field("scores").type == pa.struct(
        [("billing", pa.float64()), ("outage", pa.float64())]
    )
    assert table.column("input_label").to_pylist() == ["billing", "outage", None]
    assert table.column("label").to_pylist() == ["billing", "outage", None]

    odd = [*embed_rows(), {"id": "z", "seq": 3, "status": "done", "dim": 3, "embedding": [1.0] * 3}]
    with pytest.raises(OutputError, match=r"a value of column 'embedding' is not"):
        write_rows(iter(odd), tmp_path / "odd.parquet", task="embed")
    assert not (tmp_path / "odd.parquet").exists()
    with pytest.raises(OutputError, match=r"another number of rows than the job"):
        write_rows(iter(embed_rows()), tmp_path / "short.parquet", task="embed", inputs=[{}])


def test_a_dataset_comes_back_with_the_annotations_as_new_columns(tmp_path):
    source = datasets.Dataset.from_dict(
        {"id": ["t1", "t2", "t3"], "text": [i["text"] for i in CLASSIFY_INPUTS], "gold": [0, 1, 0]}
    )
    out = tmp_path / "annotated.hf"
    rows = classify_rows()
    written = write_rows(iter(rows), out, task="classify", inputs=iter(source))
    assert written == 3
    annotated = datasets.load_from_disk(str(out))
    assert annotated.column_names[:2] == ["text", "gold"]
    assert {"label", "score", "scores", "status"} <= set(annotated.column_names)
    assert annotated[0]["scores"] == {"billing": 0.8, "outage": 0.2}
    assert annotated["id"] == ["t1", "t2", "t3"] and annotated["gold"] == [0, 1, 0]
    write_rows(iter(rows[:1]), out, task="classify")  # a saved dataset may be replaced
    assert datasets.load_from_disk(str(out)).num_rows == 1
    other = tmp_path / "not-a-dataset.hf"
    other.mkdir()
    with pytest.raises(OutputError, match=r"is a directory"):
        check_output(other)


def test_label_studio_tasks_pre_annotate_classification(tmp_path):
    out = tmp_path / "review.labelstudio.json"
    count = write_rows(
        iter(classify_rows()), out, task="classify", model="minilm", inputs=iter(CLASSIFY_INPUTS)
    )
    assert count == 3
    tasks = json.loads(out.read_text())
    assert tasks[0] == {
        "data": {"id": "t1", "text": "charged twice", "label": "billing"},
        "meta": {"docqueue_seq": 0},
        "predictions": [
            {
                "model_version": "minilm",
                "score": 0.8,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": ["billing"]},
                    }
                ],
            }
        ],
    }
    assert "predictions" not in tasks[2]  # failed: a task to label by hand
    with pytest.raises(OutputError, match=r"needs the document's 'text'"):
        write_rows(iter(classify_rows()), tmp_path / "bare.labelstudio.json", task="classify")
    with pytest.raises(OutputError, match=r"predictions are for classify and ner, not embed"):
        check_output(tmp_path / "x.labelstudio.json", "embed")


def test_csv_and_jsonl_carry_the_input_fields_first(tmp_path):
    out = tmp_path / "out.csv"
    write_rows(
        iter(classify_rows()),
        out,
        csv_columns("classify"),
        task="classify",
        inputs=iter(CLASSIFY_INPUTS),
    )
    records = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(records[0])[:4] == ["text", "input_label", "id", "seq"]
    assert records[0]["input_label"] == "billing" and records[1]["label"] == "outage"
    jsonl = tmp_path / "out.jsonl"
    write_rows(iter(classify_rows()), jsonl, inputs=iter(CLASSIFY_INPUTS))
    first = read_jsonl(jsonl)[0]
    assert first["text"] == "charged twice" and first["scores"]["billing"] == 0.8
    # an input field no UTF-8 file can hold (an escaped lone surrogate) is still written
    odd = [{**CLASSIFY_INPUTS[0], "note": "half \ud800 a pair"}, *CLASSIFY_INPUTS[1:]]
    for name in ("odd.jsonl", "odd.labelstudio.json"):
        write_rows(iter(classify_rows()), tmp_path / name, task="classify", inputs=iter(odd))
        assert "half \ufffd a pair" in (tmp_path / name).read_text()


def test_without_the_data_extra_the_client_works_and_parquet_names_the_extra(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["pyarrow"] = sys.modules["datasets"] = None  # as if not installed
        import docqueue, docqueue.producer, docqueue.cli
        from docqueue.formats.readers import read_documents
        from docqueue.formats.results import OutputError, check_output
        from docqueue.formats.extras import MissingExtra
        try:
            read_documents({str(path)!r})
        except MissingExtra as exc:
            print(exc)
        try:
            check_output(__import__("pathlib").Path({str(tmp_path / "o.hf")!r}))
        except OutputError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reading, writing = result.stdout.splitlines()
    assert reading == (
        f"{path}: reading Parquet needs pyarrow, which is not installed: "
        "pip install 'docqueue[data]'"
    )
    assert writing.endswith("needs datasets, which is not installed: pip install 'docqueue[data]'")


def test_stdin_is_enqueued_and_an_export_carries_the_input(tmp_path, settings: Settings):
    env = settings_env(settings)
    lines = "".join(json.dumps(t) + "\n" for t in tickets()[:5])
    result = subprocess.run(
        [sys.executable, "-m", "docqueue", "enqueue", "-", "--model", "nobody"],
        input=lines,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    (tmp_path / "in.jsonl").write_text(lines)
    with Client(settings) as client:
        inputs = read_documents(tmp_path / "in.jsonl")
        client.job(job_id).export(tmp_path / "out.parquet", inputs=inputs)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("topic").to_pylist() == [t["topic"] for t in tickets()[:5]]
    assert table.column("status").to_pylist() == ["pending"] * 5


# --- end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_annotate_parquet_in_and_parquet_dataset_label_studio_out(tmp_path, tiny_classifier):
    rows = tickets()
    table = pa.table(
        {
            "ticket": list(range(len(rows))),
            "body": [r["text"] for r in rows],
            "topic": [r["topic"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "tickets.parquet", row_group_size=10)
    args = ["--model", tiny_classifier, "--text-field", "body", "--id-field", "ticket"]
    result = docqueue("annotate", "tickets.parquet", *args, "--out", "out.parquet", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == [str(i) for i in range(len(rows))]
    assert out.column("topic").to_pylist() == [r["topic"] for r in rows]
    assert pa.types.is_struct(out.schema.field("scores").type)
    assert set(out.column("status").to_pylist()) == {"done"}
    job_id = result.stderr.rsplit("[job ", 1)[1].split("]")[0]
    for name in ("out.hf", "out.labelstudio.json"):
        exported = docqueue(
            "export",
            job_id,
            "--out",
            name,
            "--input",
            "tickets.parquet",
            "--text-field",
            "body",
            "--id-field",
            "ticket",
            cwd=tmp_path,
        )
        assert exported.returncode == 0, exported.stderr
    annotated = datasets.load_from_disk(str(tmp_path / "out.hf"))
    assert annotated["label"] == out.column("label").to_pylist()
    tasks = json.loads((tmp_path / "out.labelstudio.json").read_text())
    assert [t["data"]["body"] for t in tasks] == [r["text"] for r in rows]
    assert all(t["predictions"][0]["result"][0]["type"] == "choices" for t in tasks)


@pytest.mark.slow
def test_annotate_embeds_a_saved_dataset_into_fixed_size_float32_vectors(tmp_path):
    source = tmp_path / "tickets-ds"
    datasets.Dataset.from_list(tickets()[:6]).save_to_disk(str(source))
    result = docqueue(
        "annotate", str(source), "--task", "embed", "--out", "vectors.parquet", cwd=tmp_path
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.column("id").to_pylist() == [t["id"] for t in tickets()[:6]]


@pytest.mark.slow
def test_the_api_downloads_results_as_parquet(serve, start_worker, tiny_classifier):
    start_worker({"tiny": tiny_classifier})
    http = serve().http()
    created = http.post(
        "/api/jobs", json={"task": "classify", "model": "tiny", "documents": ["one", "", "two"]}
    )
    job = created.json()
    test_api.wait_finished(http, job["id"])
    download = http.get(f"/api/jobs/{job['id']}/results.parquet")
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(pa.BufferReader(download.content))
    assert table.column("status").to_pylist() == ["done", "failed", "done"]
    assert table.column("error").to_pylist() == [None, "empty document", None]
    assert pa.types.is_struct(table.schema.field("scores").type)
    missing = http.get("/api/jobs/" + "0" * 32 + "/results.parquet")
    assert missing.status_code == 404
