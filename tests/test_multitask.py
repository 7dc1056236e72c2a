"""Several tasks in one pass: one job per task, each on its own queue, the results
joined per document; from the Client, the HTTP API and ``docqueue annotate``."""

from __future__ import annotations

import csv
import json

import pytest
from test_api import serve, wait_finished  # noqa: F401  (serve is a fixture)
from test_cli import TICKETS, docqueue, no_traceback, read_jsonl
from test_reuse import _answers, _docs

from docqueue.core.groups import TaskSpec, flat, joined, labels_for


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: str) -> str:
    """The tiny classifier's encoder without its head: a model that embeds."""
    from transformers import AutoModel, AutoTokenizer

    from docqueue.testing import save_model

    model = AutoModel.from_pretrained(tiny_classifier)
    model.config.architectures = ["BertModel"]
    path = tmp_path_factory.mktemp("tiny-encoder")
    return str(save_model(path, model, AutoTokenizer.from_pretrained(tiny_classifier)))


@pytest.mark.slow
def test_several_tasks_in_one_pass_are_joined_per_document_and_reuse_across_jobs(
    client, start_worker, tiny_classifier, tiny_encoder, sample_texts
):
    """Each task is its own job on its own queue; classify is copied from an earlier
    job, embed computed; the rows are joined per document in input order."""
    start_worker({"tiny": tiny_classifier, "enc": tiny_encoder})
    n = 50
    first = client.submit_many(_docs(sample_texts, n), task="classify", model="tiny", reuse=True)
    first.wait(timeout=60)
    group = client.submit_tasks(
        _docs(sample_texts, n),
        [TaskSpec("classify", "tiny"), TaskSpec("embed", "enc")],
        reuse=True,
        name="both",
    )
    done = group.wait(timeout=60)
    assert (done["classify"].reused, done["embed"].reused) == (n, 0)
    assert client.group(group.id).labels == ["classify", "embed"]
    rows = list(group.results())
    assert [(r["id"], r["status"]) for r in rows] == [(f"d{i}", "done") for i in range(n)]
    assert [(r["id"], "done", r["classify"]["label"], r["classify"]["scores"]) for r in rows] == (
        _answers(first)
    )
    assert {len(r["embed"]["embedding"]) for r in rows} == {32}
    assert [s.job.group_id for s in client.jobs(name="both")] == [group.id, group.id]


@pytest.mark.slow
def test_a_job_group_over_http(serve, start_worker, tiny_classifier, tiny_encoder):  # noqa: F811
    start_worker({"tiny": tiny_classifier, "enc": tiny_encoder})
    http = serve().http()
    documents = [f"Document number {i} about groups." for i in range(30)] + [""]
    created = http.post(
        "/api/job-groups",
        json={
            "tasks": [{"task": "classify", "model": "tiny"}, {"task": "embed", "model": "enc"}],
            "documents": documents,
            "reuse": True,
        },
    )
    assert created.status_code == 201, created.text
    group = created.json()
    assert group["labels"] == ["classify", "embed"]
    assert [j["group_id"] for j in group["jobs"]] == [group["id"]] * 2
    for job in group["jobs"]:
        assert wait_finished(http, job["id"])["progress"]["done"] == 30
    status = http.get(f"/api/job-groups/{group['id']}").json()
    assert status["state"] == "finished"
    rows, params = [], {"limit": 20}
    while True:
        page = http.get(f"/api/job-groups/{group['id']}/results", params=params).json()
        rows += page["data"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [r["seq"] for r in rows] == list(range(31))
    assert all(r["status"] == "done" and r["classify"]["label"] for r in rows[:30])
    assert rows[30]["status"] == "failed" and "empty" in rows[30]["embed"]["error"]
    again = http.post(
        "/api/job-groups",
        json={
            "tasks": [{"task": "classify", "model": "tiny"}],
            "documents": documents[:10],
            "reuse": True,
        },
    ).json()
    assert wait_finished(http, again["jobs"][0]["id"])["progress"]["reused"] == 10
    assert http.get("/api/job-groups/nosuchgroup").status_code == 404
    refused = http.post(
        "/api/job-groups",
        json={"tasks": [{"task": "classify", "model": "tiny"}], "documents": [""]},
    )
    assert refused.status_code == 422 and "refused" in refused.json()["error"]["message"]


@pytest.mark.slow
def test_annotate_runs_several_tasks_in_one_pass_and_reuses_on_a_rerun(tmp_path):
    args = ["annotate", str(TICKETS), "--labels", "billing,outage,praise"]
    tasks = ["--task", "classify:minilm", "--task", "embed:minilm"]
    first = docqueue(*args, *tasks, "--out", "both.jsonl", cwd=tmp_path)
    no_traceback(first)
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(tmp_path / "both.jsonl")
    tickets = read_jsonl(TICKETS)
    assert [r["id"] for r in rows] == [t["id"] for t in tickets]
    assert all(r["status"] == "done" and len(r["embed"]["embedding"]) == 384 for r in rows)
    right = sum(r["classify"]["label"] == t["topic"] for r, t in zip(rows, tickets, strict=True))
    assert right >= 33
    assert "36 done, 0 failed of 36 documents" in first.stderr and "reused" not in first.stderr

    again = docqueue(*args, *tasks, "--out", "both.csv", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "72 results reused" in again.stderr
    with (tmp_path / "both.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["classify.label"] for r in table] == [r["classify"]["label"] for r in rows]
    assert json.loads(table[0]["embed.embedding"]) == rows[0]["embed"]["embedding"]

    fresh = docqueue(*args, *tasks, "--no-reuse", "--out", "again.jsonl", cwd=tmp_path)
    assert fresh.returncode == 0 and "reused" not in fresh.stderr, fresh.stderr
    unknown = docqueue(*args, *tasks, "--param", "nope=1", cwd=tmp_path)
    assert unknown.returncode == 2 and "--param nope: none of the tasks takes it" in unknown.stderr


def test_joined_rows_label_each_task_and_say_the_documents_state():
    specs = [TaskSpec("classify", "a"), TaskSpec("classify", "b"), TaskSpec("embed", "a")]
    labels = labels_for(specs)
    assert labels == ["classify:a", "classify:b", "embed"]
    rows = [
        {"id": "x", "seq": 3, "status": "done", "label": "billing"},
        {"id": "x", "seq": 3, "status": "failed", "error": "empty document"},
        {"id": "x", "seq": 3, "status": "pending"},
    ]
    row = joined(rows, labels)
    assert row == {
        "id": "x",
        "seq": 3,
        "status": "pending",
        "classify:a": {"status": "done", "label": "billing"},
        "classify:b": {"status": "failed", "error": "empty document"},
        "embed": {"status": "pending"},
    }
    assert joined(rows[:2], labels[:2])["status"] == "failed"
    assert flat(row, labels)["classify:b.error"] == "empty document"


def test_a_task_of_a_model_named_twice_is_refused_before_anything_is_created(client):
    """Their joined columns would be one: the second would overwrite the first."""
    from docqueue.params import InvalidParams

    twice = [TaskSpec("classify", "m", {"labels": ["a", "b"]}), TaskSpec("classify", "m")]
    with pytest.raises(InvalidParams, match="classify:m is named twice"):
        client.submit_tasks(["one", "two"], twice)
    assert client.jobs() == []
