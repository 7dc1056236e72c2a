"""``answer``: extractive question answering, checked against what transformers 4's
question-answering pipeline answered on the same model and texts (recorded once by
``tests/golden/record.py``), batched and alone, over contexts many windows long;
bad documents get one error row each; and through real processes (annotate, the
native API, batch lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import test_api
from golden.record import (
    QA_RUNS,
    QUESTIONS,
    RECORDED,
    SHORT_CONTEXTS,
    SHORT_RUN,
    build_qa_model,
    digest,
    qa_documents,
    sample_texts,
)
from test_api import error_of, wait_finished
from test_encoder_tasks import outputs
from test_runners import CPU, LIMITS

from docqueue.params import InvalidParams
from docqueue.producer.documents import as_record, check
from docqueue.tasks import QUESTION_ANSWERER
from docqueue.tasks.answer import AnswerParams
from docqueue.worker.models import load_model
from docqueue.worker.runners import runners_for
from docqueue.worker.runners.answer import AnswerRunner
from docqueue.worker.runners.base import Rows

serve = test_api.serve


@pytest.fixture(scope="module")
def golden_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The model the golden answers were recorded on (its weights checked by digest)."""
    path = build_qa_model(tmp_path_factory.mktemp("golden-qa"))
    recorded = json.loads(RECORDED.read_text())["weights"]["qa"]
    assert digest(path / "model.safetensors") == recorded, (
        "the golden model's weights changed: rerun tests/golden/record.py"
    )
    return str(path)


@pytest.fixture(scope="module")
def runner(golden_model: str) -> AnswerRunner:
    loaded = load_model("qa", golden_model, CPU)
    assert loaded.family == QUESTION_ANSWERER and loaded.tasks == ("answer",)
    found = runners_for(loaded, LIMITS)["answer"]
    assert isinstance(found, AnswerRunner)
    return found


def params_of(given: dict[str, Any]) -> dict[str, Any]:
    return AnswerParams(**given).model_dump()


def as_answers(output: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
    if top_k > 1:
        return output["answers"]
    return [{k: output[k] for k in ("answer", "score", "start", "end")}]


def agree(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [(a["answer"], a["start"], a["end"]) for a in found] == [
        (e["answer"], e["start"], e["end"]) for e in expected
    ]
    for a, e in zip(found, expected, strict=True):
        assert abs(a["score"] - e["score"]) <= 1e-5 + 1e-4 * e["score"], (a, e)


@pytest.mark.parametrize("run", range(len(QA_RUNS)))
def test_answers_are_transformers_4s_batched_and_alone(runner, run):
    recorded = json.loads(RECORDED.read_text())["question_answering"][run]
    given, count = QA_RUNS[run]
    assert recorded["params"] == given
    params = params_of(given)
    docs = qa_documents(sample_texts())[:count]
    windows = [len(f.rows) for f in runner.preprocess(docs, params)]
    assert max(windows) >= 3  # contexts many windows long
    batched = outputs(runner, docs, params)
    for doc, found, expected in zip(docs, batched, recorded["answers"], strict=True):
        agree(as_answers(found, params["top_k"]), expected)
        alone = outputs(runner, [doc], params)[0]
        agree(as_answers(alone, params["top_k"]), expected)
        if expected[0]["answer"]:
            assert doc["context"][found["start"] : found["end"]] == found["answer"]


def test_impossible_answers_as_transformers_4_and_answers_past_a_window(runner):
    """ "No answer" (an empty answer at 0, 0) wins on contexts of a word or two, as
    the pipeline chose; a document past its window is read whole, its answer found
    in any window."""
    recorded = json.loads(RECORDED.read_text())["question_answering_short"]
    docs = [{"question": q, "context": c} for q, c in zip(QUESTIONS, SHORT_CONTEXTS, strict=False)]
    found = outputs(runner, docs, params_of(SHORT_RUN))
    for answers, expected in zip(found, recorded, strict=True):
        agree(answers["answers"], expected)
    nothing = [a for answers in found for a in answers["answers"] if a["answer"] == ""]
    assert nothing and all((a["start"], a["end"]) == (0, 0) for a in nothing)
    assert any(answers["answer"] == "" for answers in found), "no impossible answer won"

    long_docs = qa_documents(sample_texts())
    params = params_of({"max_seq_len": 32, "doc_stride": 8})
    late = [f for f in outputs(runner, long_docs, params) if f["start"] > 1000]
    assert late, "no answer came from past the first windows"


def test_a_question_longer_than_the_window_is_one_error_row(runner):
    docs = [
        {"question": "why " * 200, "context": "Because the window is small."},
        {"question": "What is small?", "context": "The window is small."},
        {"question": "what " * 20, "context": "A question that leaves no room for a stride."},
    ]
    params = params_of({"max_seq_len": 32, "doc_stride": 16})
    found = outputs(runner, docs, params)
    assert isinstance(found[0], str) and found[0].startswith("the question is too long")
    assert found[1]["answer"] and isinstance(found[2], dict)  # the stride shrinks to fit


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"max_seq_len": 1024}, "max_seq_len 1024 is past the model's window of 128 tokens"),
        ({"max_seq_len": 64, "doc_stride": 65}, "doc_stride (65) is larger than max_seq_len (64)"),
    ],
)
def test_parameters_the_model_cannot_take_are_refused(runner, given, problem):
    with pytest.raises(InvalidParams, match=problem.replace("(", r"\(").replace(")", r"\)")):
        runner.check(params_of(given))


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("just text", "answer takes an object of fields (question, context), not text"),
        ({"question": "q"}, "no 'context' field: answer takes question, context"),
        ({"context": "c"}, "no 'question' field: answer takes question, context"),
        ({"question": " ", "context": "c"}, "field 'question' is whitespace only"),
        ({"question": "q", "context": ""}, "field 'context' is empty"),
        ({"question": "q", "context": "c", "title": "t"}, "unknown field 'title': "),
    ],
)
def test_bad_documents_get_an_error_naming_the_problem(document, problem):
    checked = check(as_record(("d1", document)), task="answer", max_chars=1000)
    assert checked.doc is None and checked.error is not None
    assert checked.error.startswith(problem), checked.error


def test_annotate_answers_questions_from_a_jsonl_file(tmp_path: Path, golden_model: str) -> None:
    from test_cli import docqueue, no_traceback

    recorded = json.loads(RECORDED.read_text())["question_answering"][0]["answers"]
    docs = qa_documents(sample_texts())[:6]
    lines = [{"id": f"q{i}", "text": d} for i, d in enumerate(docs)]
    lines.append({"id": "bad", "text": {"question": "where?"}})
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    done = docqueue(
        "annotate",
        "questions.jsonl",
        "--task",
        "answer",
        "--model",
        golden_model,
        "--out",
        "answers.jsonl",
        cwd=tmp_path,
    )
    no_traceback(done)
    assert done.returncode == 1, done.stderr  # one document failed
    assert "id bad: no 'context' field: answer takes question, context" in done.stderr
    rows = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * 6 + ["failed"]
    for row, expected in zip(rows[:6], recorded[:6], strict=True):
        agree([{k: row[k] for k in ("answer", "score", "start", "end")}], expected[:1])


def test_questions_and_contexts_from_two_csv_columns(tmp_path: Path, golden_model: str) -> None:
    """``--text-field question=COLUMN,context=COLUMN`` makes each row a document of
    fields; a row with an empty context is one error row; the columns come back."""
    import csv

    from test_cli import docqueue, no_traceback

    recorded = json.loads(RECORDED.read_text())["question_answering"][0]["answers"]
    docs = qa_documents(sample_texts())[:4]
    with (tmp_path / "in.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "asked", "page"])
        writer.writerows([f"r{i}", d["question"], d["context"]] for i, d in enumerate(docs))
        writer.writerow(["empty", "where?", ""])
    done = docqueue(
        "annotate",
        "in.csv",
        "--task",
        "question-answering",
        "--model",
        golden_model,
        "--text-field",
        "question=asked,context=page",
        "--out",
        "out.csv",
        cwd=tmp_path,
    )
    no_traceback(done)
    assert done.returncode == 1, done.stderr
    assert "id empty: field 'context' is empty" in done.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"]
    for row, doc, expected in zip(rows, docs, recorded, strict=False):
        assert (row["asked"], row["page"]) == (doc["question"], doc["context"])
        assert (row["answer"], int(row["start"])) == (expected[0]["answer"], expected[0]["start"])

    wrong = docqueue(
        "annotate", "in.csv", "--task", "answer", "--model", golden_model,
        "--text-field", "question=asked,context=body", "--out", "x.csv", cwd=tmp_path,
    )  # fmt: skip
    no_traceback(wrong)
    assert wrong.returncode != 0 and "no field 'body'" in wrong.stderr
    misnamed = docqueue(
        "annotate", "in.csv", "--task", "answer", "--model", golden_model,
        "--text-field", "question=asked,contxt=page", "--out", "x.csv", cwd=tmp_path,
    )  # fmt: skip
    no_traceback(misnamed)
    assert misnamed.returncode == 2, misnamed.stderr
    assert "no field 'contxt'; answer takes question, context" in misnamed.stderr


def test_answers_through_the_client_the_native_api_and_batch_lines(
    serve, start_worker, client, golden_model
):
    import io

    from test_openai_batch import jsonl, lines_of, sdk, wait_batch

    start_worker({"qa": golden_model}, dtype="float32")
    server = serve(DOCQUEUE_MAX_DOCUMENT_CHARS="30000")
    http = server.http()
    recorded = json.loads(RECORDED.read_text())["question_answering"][3]
    params, count = QA_RUNS[3]  # top_k 2 over windows of 48 tokens
    docs = qa_documents(sample_texts())[:count]

    documents = [{"id": f"d{i}", "text": d} for i, d in enumerate(docs)]
    job_body = {"task": "question-answering", "model": "qa", "params": params}
    created = http.post("/api/jobs", json={**job_body, "documents": documents})
    assert created.status_code == 201, created.text
    job = created.json()
    assert wait_finished(http, job["id"])["progress"]["done"] == count
    rows = http.get(f"/api/jobs/{job['id']}/results").json()["data"]
    for row, expected in zip(rows, recorded["answers"], strict=True):
        agree(row["answers"], expected)
        assert (row["answer"], row["start"]) == (expected[0]["answer"], expected[0]["start"])

    # one document from Python, and text refused for a task of fields in one line
    handle = client.submit(docs[2], task="answer", model="qa", params=params)
    agree(handle.result(timeout=60)["answers"], recorded["answers"][2])
    refused = http.post("/api/documents", json={"task": "answer", "model": "qa", "text": "why?"})
    message = error_of(refused, 422)["message"]
    assert "answer takes an object of fields (question, context)" in message

    # batch lines of /v1/docqueue/answer through the openai SDK
    sdk_client = sdk(server)
    endpoint: Any = "/v1/docqueue/answer"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": endpoint,
            "body": {"model": "qa", "input": d, **params},
        }
        for i, d in enumerate(docs[:2])
    ]
    uploaded = sdk_client.files.create(file=("qa.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = sdk_client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )
    finished = wait_batch(sdk_client, batch.id)
    assert finished.status == "completed", finished
    output = lines_of(sdk_client, finished.output_file_id)
    for line, expected in zip(output, recorded["answers"], strict=False):
        body = line["response"]["body"]
        assert body["object"] == "docqueue.answer"
        agree(body["answers"], expected)


def test_mapped_fields_that_are_not_text_are_error_rows_naming_them(tmp_path: Path) -> None:
    """A mapped field holding a number or a list is refused at intake, naming the
    field (never written as Python's repr of it); a line that cannot be read first
    does not hide a missing column."""
    from docqueue.formats.problems import InputError
    from docqueue.formats.readers import read_documents

    lines = [
        "{not json",
        json.dumps({"id": "a", "q": "Which year?", "c": 1999}),
        json.dumps({"id": "b", "q": "Which?", "c": ["a", "b"]}),
        json.dumps({"id": "c", "q": "Who?", "c": "Ada."}),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    records = list(read_documents(tmp_path / "in.jsonl", text_field="question=q,context=c"))
    checked = [check(r, task="answer", max_chars=1000) for r in records]
    assert checked[0].error is not None and "malformed JSON" in checked[0].error
    assert checked[1].error == "field 'context' is a number, not a string"
    assert checked[2].error == "field 'context' is a list, not a string"
    assert checked[3].doc == {"question": "Who?", "context": "Ada."}
    with pytest.raises(InputError, match="no field 'body'"):
        list(read_documents(tmp_path / "in.jsonl", text_field="question=q,context=body"))


def test_a_tokenizer_panic_is_one_documents_error_not_the_intake_threads_end(runner):
    """The tokenizers library panics (pyo3's PanicException, a BaseException) on some
    inputs; intake isolates the document that panics, as for any exception."""
    from docqueue.worker.admission import Admission

    class Panicky(AnswerRunner):
        def preprocess(self, docs, params):
            if any("panic" in d["context"] for d in docs):  # stride past the window
                self.tokenizer(
                    ["q"], ["panic " * 50], truncation="only_second", max_length=16,
                    stride=40, return_overflowing_tokens=True,
                )  # fmt: skip
            return super().preprocess(docs, params)

    panicky = Panicky(runner.loaded, runner.limits)
    docs: list[Any] = [
        {"question": "Who?", "context": "Ada wrote it."},
        {"question": "?", "context": "panic"},
    ]
    found = Admission._preprocess(panicky, docs, params_of({}))
    assert isinstance(found[0], Rows)
    assert isinstance(found[1], str) and found[1].startswith("could not tokenize: ")
    assert "stride" in found[1]
