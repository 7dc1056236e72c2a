"""ner, fill-mask and zero-shot by entailment through the ways in, with real worker
processes: ``docqueue annotate`` to CSV, typed Parquet and Label Studio spans; the
native API's jobs, documents and a job group of four tasks over the same documents
(ner beside fill-mask, embed and classify); an OpenAI batch of ``/v1/docqueue/ner``
lines; labels on a classifier with its own head refused at submit in one line."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow.parquet as pq
import test_api
from test_api import error_of, wait_finished
from test_cli import docqueue, no_traceback
from test_openai_batch import jsonl, lines_of, sdk, wait_batch

serve = test_api.serve

TEXTS = [
    "Ada Lovelace wrote the first program in London.",
    "The sqlite3 module talks to a database file on disk.",
    "",  # an error row, never a worker failure
    "Grace Hopper worked on COBOL at Remington Rand in Philadelphia. " * 8,  # past the window
]


def zero_shot_reference(model: str, text: str, labels: list[str]) -> dict[str, Any]:
    """``pipeline("zero-shot-classification")``'s answer, in fp32."""
    from transformers import pipeline

    classifier: Any = pipeline("zero-shot-classification", model=model, device="cpu")
    return classifier(text, candidate_labels=labels)


def write_docs(path: Any, texts: list[str]) -> None:
    path.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )


def test_annotate_ner_to_csv_parquet_and_label_studio_spans(tmp_path, encoder_models):
    docs = tmp_path / "docs.jsonl"
    write_docs(docs, TEXTS)
    done = docqueue(
        "annotate",
        str(docs),
        "--task",
        "token-classification",  # the alias
        "--model",
        encoder_models["ner"],
        "--param",
        "aggregation_strategy=first",
        "--param",
        'ignore_labels=["O", "MISC"]',
        "--out",
        "out.csv",
        cwd=tmp_path,
    )
    no_traceback(done)
    assert done.returncode == 1, done.stderr  # one document failed: the empty one
    assert "id d2: empty document" in done.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
    entities: list[Any] = [json.loads(r["entities"]) if r["entities"] else [] for r in rows]
    long_doc = TEXTS[3]
    assert max(e["end"] for e in entities[3]) > len(long_doc) // 2  # past the first window
    for text, found in zip(TEXTS, entities, strict=True):
        for entity in found:
            assert entity["entity_group"] not in ("O", "MISC")
            assert text[entity["start"] : entity["end"]].lower().replace(" ", "") == entity[
                "word"
            ].replace(" ", "").replace("##", "")

    listed = docqueue("jobs", "--json", cwd=tmp_path)
    job_id = json.loads(listed.stdout.splitlines()[0])["id"]
    exported = docqueue("export", job_id, "--out", "out.parquet", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("entities").type) == (
        "list<element: struct<entity_group: string, entity: string, score: double, word: string, "
        "start: int64, end: int64, index: int64>>"
    )
    assert table.column("entities").to_pylist()[1] == [
        {**e, "entity": None, "index": None} for e in entities[1]
    ]

    spans = docqueue(
        "export", job_id, "--input", str(docs), "--out", "spans.labelstudio.json", cwd=tmp_path
    )
    assert spans.returncode == 0, spans.stderr
    tasks = json.loads((tmp_path / "spans.labelstudio.json").read_text())
    assert "predictions" not in tasks[2]  # the failed document, to label by hand
    result = tasks[0]["predictions"][0]["result"]
    assert len(result) == len(entities[0])
    for span, entity in zip(result, entities[0], strict=True):
        assert span["type"] == "labels" and span["from_name"] == "label"
        assert span["value"]["labels"] == [entity["entity_group"]]
        start, end = span["value"]["start"], span["value"]["end"]
        assert span["value"]["text"] == TEXTS[0][start:end]


def test_annotate_refuses_labels_for_a_classifier_with_its_own_head(tmp_path, tiny_classifier):
    docs = tmp_path / "docs.jsonl"
    write_docs(docs, ["some text"])
    refused = docqueue(
        "annotate", str(docs), "--model", tiny_classifier, "--labels", "a,b", cwd=tmp_path
    )
    no_traceback(refused)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "neither an NLI model" in lines[0], refused.stderr


def test_the_api_runs_ner_jobs_and_batch_lines(
    serve, start_worker, encoder_models, tiny_classifier
):
    start_worker(
        {
            "ner": encoder_models["ner"],
            "mlm": encoder_models["mlm"],
            "nli": encoder_models["nli"],
            "tiny": tiny_classifier,
        }
    )
    server = serve()
    http = server.http()

    params = {"aggregation_strategy": "max", "stride": 4}
    created = http.post(
        "/api/jobs",
        json={"task": "ner", "model": "ner", "params": params, "documents": TEXTS},
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert wait_finished(http, job["id"])["progress"]["done"] == 3
    rows = http.get(f"/api/jobs/{job['id']}/results").json()["data"]
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done"]
    assert rows[3]["entities"][-1]["end"] > len(TEXTS[3]) // 2  # past the first window

    # zero-shot labels: refused at submit for the classifier with its own head
    labelled = {"task": "classify", "model": "tiny", "params": {"labels": ["a", "b"]}}
    refusal = error_of(http.post("/api/jobs", json={**labelled, "documents": ["x"]}), 422)
    assert "neither an NLI model" in refusal["message"]
    nli = http.post("/api/jobs", json={**labelled, "model": "nli", "documents": ["x y"]})
    assert nli.status_code == 201, nli.text
    assert wait_finished(http, nli.json()["id"])["progress"]["done"] == 1
    answer = http.get(f"/api/jobs/{nli.json()['id']}/results").json()["data"][0]
    theirs = zero_shot_reference(encoder_models["nli"], "x y", ["a", "b"])
    assert answer["label"] == max(answer["scores"], key=answer["scores"].get)
    assert sorted(answer["scores"]) == ["a", "b"]
    for label, score in zip(theirs["labels"], theirs["scores"], strict=True):
        assert abs(answer["scores"][label] - score) <= 0.02  # the worker's auto dtype: bf16

    # fill-mask, one document at a time, without its mask: an error row
    answer = http.post(
        "/api/documents",
        params={"wait": 30},
        json={"task": "fill-mask", "model": "mlm", "text": "no mask"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["error"] == "no mask token: fill-mask needs [MASK] in the text"

    # several tasks in one pass over the same documents: a job group, the masked LM
    # filling masks and embedding with its encoder
    texts = ["Ada Lovelace wrote a [MASK] in London.", "No mask in this one."]
    tasks = [
        {"task": "ner", "model": "ner"},
        {"task": "fill-mask", "model": "mlm", "params": {"top_k": 2}},
        {"task": "embed", "model": "mlm"},
        {"task": "classify", "model": "nli", "params": {"labels": ["history", "code"]}},
    ]
    group = http.post("/api/job-groups", json={"tasks": tasks, "documents": texts}).json()
    for member in group["jobs"]:
        wait_finished(http, member["id"])
    first, second = http.get(f"/api/job-groups/{group['id']}/results").json()["data"]
    ner_alone = http.post(
        "/api/documents",
        params={"wait": 30},
        json={"task": "ner", "model": "ner", "text": texts[0]},
    )
    assert first["ner"]["entities"] == ner_alone.json()["result"]["entities"]
    assert first["ner"]["entities"], "a random model tags some tokens"
    assert len(first["fill-mask"]["predictions"]) == 2
    assert first["embed"]["dim"] == 32 and len(first["embed"]["embedding"]) == 32
    assert sorted(first["classify"]["scores"]) == ["code", "history"]
    assert second["fill-mask"]["error"] == "no mask token: fill-mask needs [MASK] in the text"
    assert second["classify"]["status"] == "done" and second["status"] == "failed"

    # a batch of /v1/docqueue/ner lines through the openai SDK
    client = sdk(server)
    endpoint: Any = "/v1/docqueue/ner"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": endpoint,
            "body": {"model": "ner", "input": text, "aggregation_strategy": "simple"},
        }
        for i, text in enumerate(TEXTS[:2])
    ]
    uploaded = client.files.create(file=("ner.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )
    finished = wait_batch(client, batch.id)
    assert finished.status == "completed", finished
    output = lines_of(client, finished.output_file_id)
    assert [line["custom_id"] for line in output] == ["r0", "r1"]
    body = output[0]["response"]["body"]
    assert body["object"] == "docqueue.entities"
    alone = http.post(
        "/api/documents",
        params={"wait": 30},
        json={
            "task": "ner",
            "model": "ner",
            "text": TEXTS[0],
            "params": {"aggregation_strategy": "simple"},
        },
    )
    assert body["entities"] == alone.json()["result"]["entities"] != []


def test_schedules_write_back_the_declared_columns(tmp_path):
    from sqlalchemy import create_engine, inspect

    from docqueue.schedules.config import TaskSpec
    from docqueue.schedules.writeback import output_columns, target_table

    specs = [TaskSpec(task="ner", model="m"), TaskSpec(task="fill-mask", model="b")]
    assert output_columns(specs[:1]) == ["entities", "error", "annotated_at"]
    engine = create_engine(f"sqlite:///{tmp_path / 'out.db'}")
    target_table(engine, "annotated", "key", 1, specs)
    columns = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("annotated")}
    engine.dispose()
    assert {name for name in columns if "entities" in name or "predictions" in name}
    assert any("token_str" in name for name in columns)


def test_the_api_schema_types_entities_as_records():
    from pydantic import TypeAdapter

    from docqueue.tasks import ResultRow

    schema = TypeAdapter(ResultRow).json_schema()
    entities = schema["properties"]["entities"]
    assert entities["type"] == "array"
    assert entities["items"]["properties"]["start"] == {"type": "integer"}
    assert schema["properties"]["predictions"]["items"]["properties"]["token_str"] == {
        "type": "string"
    }
