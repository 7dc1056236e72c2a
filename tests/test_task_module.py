"""A task is one module: this file declares a task of its own (``upper``: each text
upper-cased, and its letters counted, by a trivial runner on any classifier) and
sees it, through ``DOCQUEUE_TASK_MODULES=test_task_module`` alone, in CSV and
Parquet exports, schedule write-back, batch-line endpoints, the API's schema and the
CLI's help, and run end to end by a worker process.  No other file names it."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import TESTS
from pydantic import Field
from sqlalchemy import create_engine, inspect
from test_api import GONE, register_gone_model, serve  # noqa: F401  (the fixture)
from test_cli import docqueue

from docqueue.protocol import Document
from docqueue.tasks import CLASSIFIER, OutputField, Params, TaskDeclaration
from docqueue.worker.runners.base import Features, Output, Runner


class UpperParams(Params):
    #: Keep only this many characters of the upper-cased text.
    keep: int = Field(1000, ge=1)


class UpperRunner(Runner):
    """Upper-cases the text it was given; the model is not called at all."""

    task = "upper"

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        features = super().preprocess(docs, params)
        for doc, found in zip(docs, features, strict=True):
            if isinstance(found, Features):
                found.extra["text"] = doc
        return features

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        return inputs["input_ids"]

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        outputs = []
        for features in batch:
            text = str(features.extra["text"])
            upper = text.upper()[: params["keep"]]
            outputs.append(Output({"upper_text": upper, "letters": sum(c.isalpha() for c in text)}))
        return outputs


TASK = TaskDeclaration(
    name="upper",
    summary="each text upper-cased (a test's own task)",
    runners={CLASSIFIER: f"{__name__}:UpperRunner"},
    params=UpperParams,
    outputs=(
        OutputField("upper_text", "string", written_back="text"),
        OutputField("letters", "int64", written_back="number"),
    ),
    aliases=("shout",),
)

MODULE_ENV = {
    "DOCQUEUE_TASK_MODULES": __name__,
    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
}
TEXTS = ["Hello, world", "quiet words", "Ünïcode too"]


def test_a_task_declared_in_one_module_runs_and_exports_everywhere(tmp_path, tiny_classifier):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    args = ["--model", tiny_classifier, "--param", "keep=5"]

    # the CLI's help lists it
    helped = docqueue("annotate", "--help", cwd=tmp_path, env={**MODULE_ENV, "COLUMNS": "300"})
    assert helped.returncode == 0 and "translate or upper" in helped.stdout, helped.stdout

    # a worker process runs it (by its alias), and the CSV has its columns
    done = docqueue(
        "annotate",
        str(docs),
        "--task",
        "shout",
        *args,
        "--out",
        "out.csv",
        cwd=tmp_path,
        env=MODULE_ENV,
    )
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[-7:] == [
        "seq",
        "status",
        "upper_text",
        "letters",
        "error",
        "truncated",
        "duplicate_id",
    ]
    assert [r["upper_text"] for r in rows] == [t.upper()[:5] for t in TEXTS]
    assert [int(r["letters"]) for r in rows] == [sum(c.isalpha() for c in t) for t in TEXTS]

    # Parquet types its fields as declared
    listed = docqueue("jobs", "--json", cwd=tmp_path, env=MODULE_ENV)
    job_id = json.loads(listed.stdout.splitlines()[0])["id"]
    exported = docqueue("export", job_id, "--out", "out.parquet", cwd=tmp_path, env=MODULE_ENV)
    assert exported.returncode == 0, exported.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert str(table.schema.field("upper_text").type) == "string"
    assert str(table.schema.field("letters").type) == "int64"
    assert table.column("upper_text").to_pylist() == [t.upper()[:5] for t in TEXTS]


def test_a_declared_task_is_in_write_back_and_batch_endpoints(tmp_path, monkeypatch):
    from docqueue import tasks
    from docqueue.formats.batch_lines import endpoint_problem, parse
    from docqueue.schedules.config import ScheduleError, TaskSpec, load
    from docqueue.schedules.writeback import output_columns, target_table

    # what DOCQUEUE_TASK_MODULES does in a process that loads it, undone after the test
    monkeypatch.setattr(tasks, "_CATALOGUE", dict(tasks._CATALOGUE))
    monkeypatch.setattr(tasks, "_ALIASES", dict(tasks._ALIASES))
    tasks.load_modules([__name__])
    spec = TaskSpec(task="upper", model="m")
    assert output_columns([spec]) == ["upper_text", "letters", "error", "annotated_at"]
    engine = create_engine(f"sqlite:///{tmp_path / 'out.db'}")
    target_table(engine, "annotated", "key", 1, [spec])
    columns = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("annotated")}
    assert columns["upper_text"] == "TEXT" and columns["letters"] == "FLOAT"
    # a source key named like one of its columns is refused when the file is read
    config = tmp_path / "s.toml"
    config.write_text(
        '[[schedule]]\nname = "x"\nevery = 5\ntask = "upper"\nmodel = "m"\n'
        'source = { url = "sqlite://", table = "t", key = "letters", watermark = "w", '
        'text = "b" }\ninto = { table = "out" }\n'
    )
    with pytest.raises(ScheduleError, match="source.key 'letters' is also the name of a column"):
        load(config)
    engine.dispose()
    # its batch lines: /v1/docqueue/upper takes the input and its parameters
    assert endpoint_problem("/v1/docqueue/upper") is None
    line = {
        "custom_id": "a",
        "url": "/v1/docqueue/upper",
        "body": {"model": "m", "input": "shout this", "keep": 3},
    }
    request = parse(json.dumps(line).encode(), "/v1/docqueue/upper")
    assert (request.text, request.params) == ("shout this", {"keep": 3})


def test_the_api_schema_names_a_declared_task(serve, settings):  # noqa: F811
    server = serve(**MODULE_ENV)
    schema = server.http().get("/openapi.json").json()
    job = schema["components"]["schemas"]["JobCreate"]["properties"]
    assert "upper" in job["task"]["enum"]
    titles = [p.get("title") for p in job["params"]["anyOf"]]
    assert "upper parameters" in titles
    page = schema["components"]["schemas"]["ResultsPage"]["properties"]["data"]["items"]
    assert page["properties"]["letters"] == {"type": "integer"}
    # and a job of it is accepted and waits for a worker of its model
    register_gone_model(settings)
    answer = server.http().post(
        "/api/jobs",
        json={"task": "upper", "model": GONE, "params": {"keep": 2}, "documents": ["abc"]},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["task"] == "upper"
