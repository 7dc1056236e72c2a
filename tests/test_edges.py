"""The edges a user meets first (issue 11): outputs that keep every column and never
a truncated file, jobs that say why nothing happens, status a script can read, and
every message one readable line.  Real processes, Redis and SQL throughout."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_settings, wait_until
from test_cli import docqueue, no_traceback, read_jsonl

from docqueue.config import settings_env
from docqueue.formats.results import OutputError, csv_columns, write_rows
from docqueue.producer.client import Client, UnsupportedTask

TICKETS = ROOT / "examples" / "tickets.jsonl"


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_error(result: subprocess.CompletedProcess, code: int) -> str:
    """The command failed with ``code`` and said so in exactly one line."""
    no_traceback(result)
    assert result.returncode == code, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write_docs(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"d{i}", field: t}) + "\n" for i, t in enumerate(texts))
    )
    return path


# --- case 3: CSV columns come from the task ---------------------------------------------


def test_annotate_csv_keeps_every_column_when_the_first_document_failed(tmp_path):
    """Zero-shot labels with the packaged MiniLM; document 0 is empty.  The CSV still
    has scores and similarities for every row, the job id is printed (rich used to
    eat ``[job ...]``), and the run says what it is waiting for before results flow."""
    docs = write_docs(
        tmp_path / "docs.jsonl",
        ["", "I was charged twice for my subscription", "The site has been down all day"],
    )
    result = docqueue(
        "annotate", str(docs), "--labels", "billing,outage", "--out", "out.csv", cwd=tmp_path
    )
    no_traceback(result)
    assert result.returncode == 1, result.stderr  # document 0 failed
    with (tmp_path / "out.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "text",  # the input's own fields first
        "id", "seq", "status", "label", "score", "scores", "similarities",
        "error", "truncated", "duplicate_id",
    ]  # fmt: skip
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "empty document"
    assert [r["label"] for r in rows[1:]] == ["billing", "outage"]
    assert set(json.loads(rows[2]["similarities"])) == {"billing", "outage"}

    job_id = re.search(r"\[job ([0-9a-f]{32})\]", result.stderr)
    assert job_id, result.stderr
    phases = [line for line in result.stderr.splitlines() if not line.startswith(" ")]
    starting = phases.index("starting Redis")
    loading = next(i for i, p in enumerate(phases) if p.startswith("loading model "))
    assert starting < loading < phases.index("annotating"), result.stderr
    assert phases[loading].endswith(" on cpu")

    # the printed id is the job in the embedded ledger: export needs SQL only
    again = docqueue("export", job_id.group(1), "--out", "again.jsonl", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in read_jsonl(tmp_path / "again.jsonl")] == [
        "failed",
        "done",
        "done",
    ]


def test_csv_columns_of_each_task_whatever_the_first_row(tmp_path):
    failed = {"id": "a", "seq": 0, "status": "failed", "error": "empty document"}
    done = {"id": "b", "seq": 1, "status": "done", "dim": 2, "embedding": [0.6, 0.8]}
    out = tmp_path / "vectors.csv"
    assert write_rows([failed, done], out, csv_columns("embed")) == 2
    lines = out.read_text().splitlines()
    assert lines[0] == "id,seq,status,dim,embedding,prompt_tokens,error,truncated,duplicate_id"
    assert lines[2] == 'b,1,done,2,"[0.6, 0.8]",,,,'
    assert "similarities" not in csv_columns("classify")  # a classification head
    assert csv_columns("summarize")[3] == "summary_text"
    assert csv_columns("generate")[3:7] == [
        "generated_text",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
    ]
    # a field the task does not declare (a runner plug-in's) is not silently dropped
    with pytest.raises(OutputError, match="fields the CSV columns do not include \\(extra\\)"):
        write_rows([{**done, "extra": 1}], tmp_path / "more.csv", csv_columns("embed"))
    assert not (tmp_path / "more.csv").exists()


# --- cases 4 and 5: outputs are checked first and never left half written ---------------


def test_a_failed_export_leaves_the_target_as_it_was(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text("earlier results\n")

    def rows():
        yield {"id": "a", "seq": 0, "status": "done"}
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        write_rows(rows(), out)
    assert out.read_text() == "earlier results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]  # no temporary left


def test_output_problems_are_refused_before_anything_runs(tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", ["one document"])
    (tmp_path / "existing.jsonl").write_text("keep me\n")
    env = {"DOCQUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    Client(make_settings("redis://127.0.0.1:1/0", env["DOCQUEUE_DATABASE_URL"])).close()

    line = one_error(
        docqueue("export", "0" * 32, "--out", "existing.jsonl", cwd=tmp_path, env=env), 2
    )
    assert line == f"error: no job {'0' * 32}"
    assert (tmp_path / "existing.jsonl").read_text() == "keep me\n"

    choices = ".jsonl, .csv, .parquet, .hf (a dataset directory) or .labelstudio.json"
    cases = {
        "x.txt": f"x.txt: unknown output format '.txt'; use {choices}",
        "nodir/x.jsonl": "cannot write nodir/x.jsonl: no directory nodir",
        # export cannot tell before it finds the job: annotate only
        "x.labelstudio.json": (
            "x.labelstudio.json: Label Studio predictions are for classify and ner, not embed"
        ),
    }
    for out, message in cases.items():
        started = time.monotonic()
        result = docqueue("annotate", str(docs), "--task", "embed", "--out", out, cwd=tmp_path)
        assert one_error(result, 2) == f"error: {message}"
        assert time.monotonic() - started < 30  # refused at once, not after the job
        assert not (tmp_path / "docqueue.db").exists()  # nothing was started
        if out == "x.txt":
            result = docqueue("export", "0" * 32, "--out", out, cwd=tmp_path, env=env)
            assert one_error(result, 2) == f"error: {message}"
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & {"x.labelstudio.json", "x.txt", "nodir", "docqueue.db"}
    assert not [name for name in left if name.endswith((".part", ".check"))]


def test_annotate_that_cannot_write_its_output_keeps_the_job_and_says_how_to_export(
    tmp_path, tiny_classifier
):
    """The output directory vanishes while the job runs: the results stay in SQL and
    the message names the job and the export command that writes them."""
    (tmp_path / "gone").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    with subprocess.Popen(
        [sys.executable, "-m", "docqueue", "annotate", str(TICKETS), "--model", tiny_classifier,
         "--out", "gone/out.jsonl"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("loading model"):
                (tmp_path / "gone").rmdir()  # the check before the run passed; now it cannot
                break
        stderr = "".join(seen) + proc.stderr.read()
        assert proc.wait(120) == 3, stderr
    assert "Traceback" not in stderr
    match = re.search(
        r"error: could not write gone/out.jsonl \(.*\); the results are kept as job "
        r"([0-9a-f]{32}) in sqlite:///docqueue.db: run "
        r"`docqueue export \1 --out gone/out.jsonl`",
        stderr,
    )
    assert match, stderr
    exported = docqueue("export", match.group(1), "--out", "out.jsonl", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 36


# --- case 1 (annotate): a task the model cannot do --------------------------------------


def test_annotate_refuses_a_task_the_model_cannot_do_before_starting_anything(
    tmp_path, tiny_models
):
    result = docqueue(
        "annotate", str(TICKETS), "--task", "summarize", "--model", tiny_models["gpt2"],
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    line = one_error(result, 2)
    assert line == f"error: model {tiny_models['gpt2']} cannot summarize; it can do: generate"
    assert not (tmp_path / "docqueue.db").exists()


# --- case 6: a file whose every row is refused ------------------------------------------


def test_a_file_without_the_text_field_is_refused_naming_the_fields_it_has(
    tmp_path, settings, tiny_classifier
):
    env = settings_env(settings)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"key": i, "body": f"text {i}"}) + "\n" for i in range(36)))
    expected = f"error: {docs}: no field 'text' in any row (fields: key, body)"
    for command in ("annotate", "enqueue"):
        result = docqueue(
            command, str(docs), "--task", "embed", "--model", "m", cwd=tmp_path, env=env
        )
        assert one_error(result, 2) == expected
    empty = write_docs(tmp_path / "empty.jsonl", ["", "  ", ""])
    result = docqueue(
        "enqueue", str(empty), "--task", "embed", "--model", "m", cwd=tmp_path, env=env
    )
    line = one_error(result, 2)
    assert line.startswith(f"error: {empty}: all 3 documents were refused (empty document)")
    result = docqueue("annotate", str(empty), "--model", tiny_classifier, cwd=tmp_path, env=env)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert error_lines(result)[-1] == (
        f"error: {empty}: all 3 documents were refused (empty document)"
    )
    assert not (tmp_path / "results.jsonl").exists()
    (tmp_path / "none.jsonl").write_text("\n")
    result = docqueue(
        "enqueue", "none.jsonl", "--task", "embed", "--model", "m", cwd=tmp_path, env=env
    )
    assert one_error(result, 2) == "error: none.jsonl: no documents"


# --- enqueue and Client: no live worker, or none that does the task ---------------------


def test_nobody_serves_the_model_said_at_enqueue_and_in_timeouts(tmp_path, settings, client):
    env = settings_env(settings)
    docs = write_docs(tmp_path / "docs.jsonl", ["first", "second"])
    result = docqueue(
        "enqueue", str(docs), "--model", "typo", "--task", "embed", cwd=tmp_path, env=env
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr  # queued all the same: a worker may come
    assert error_lines(result) == [
        "2 documents queued",
        "warning: no live worker serves model typo (never seen); the documents wait in the "
        "queue until one starts",
    ]
    handle = client.submit("hello", task="embed", model="typo")
    with pytest.raises(
        TimeoutError, match=r"in 0.5s; no live worker serves model typo \(never seen\)"
    ):
        handle.result(timeout=0.5)
    job = client.job(result.stdout.strip())
    with pytest.raises(
        TimeoutError, match=r"0 done, 0 failed, 2 pending; no live worker serves model typo"
    ):
        job.wait(timeout=0.5, poll=0.1)


def test_a_task_no_live_worker_of_the_model_does_is_refused(
    tmp_path, settings, client, start_worker, tiny_models
):
    env = settings_env(settings)
    docs = write_docs(tmp_path / "docs.jsonl", ["A long article about sockets."])
    early = docqueue(
        "enqueue", str(docs), "--task", "summarize", "--model", "gen", cwd=tmp_path, env=env
    )
    assert early.returncode == 0 and "never seen" in early.stderr  # nobody to ask yet
    start_worker({"gen": tiny_models["gpt2"]})

    status = docqueue("status", early.stdout.strip(), cwd=tmp_path, env=env)
    assert status.returncode == 4, status.stdout  # still running
    assert (
        "  no live worker does summarize for model gen (its live workers do generate)"
        in status.stdout
    )
    assert "  worker " not in status.stdout  # a worker that does not run the job is not listed

    late = docqueue(
        "enqueue", str(docs), "--task", "summarize", "--model", "gen", cwd=tmp_path, env=env
    )
    assert one_error(late, 2) == "error: model gen cannot summarize; it can do: generate"
    with pytest.raises(UnsupportedTask, match="^model gen cannot summarize; it can do: generate$"):
        client.submit("hello", task="summarize", model="gen")
    with pytest.raises(UnsupportedTask):
        client.submit_many(["hello"], task="summarize", model="gen")
    assert client.submit("Once upon", task="generate", model="gen").result(timeout=60)


# --- status: exit codes, pace, SQL only -------------------------------------------------


@pytest.mark.slow
def test_status_exit_codes_and_pace_need_only_sql(
    tmp_path, settings, start_worker, tiny_classifier
):
    env = settings_env(settings)
    sql_only = {k: v for k, v in env.items() if k != "DOCQUEUE_REDIS_URL"}
    docs = write_docs(tmp_path / "docs.jsonl", [f"Document {i} about files." for i in range(30)])
    waiting = docqueue(
        "enqueue", str(docs), "--model", "tiny", cwd=tmp_path, env=env
    ).stdout.strip()
    status = docqueue("status", waiting, cwd=tmp_path, env=sql_only)
    no_traceback(status)
    assert status.returncode == 4, status.stdout + status.stderr
    assert "no document computed yet" in status.stdout

    start_worker({"tiny": tiny_classifier})
    wait_until(
        lambda: docqueue("status", waiting, cwd=tmp_path, env=sql_only).returncode == 0,
        60,
        "the job to finish",
    )
    status = docqueue("status", waiting, cwd=tmp_path, env=sql_only)
    assert "done 30, failed 0, pending 0" in status.stdout
    assert re.search(r"  finished in [\dhms. ]+ \([\d,.]+ docs/s\)", status.stdout), status.stdout

    bad = write_docs(tmp_path / "bad.jsonl", ["", "fine text"])
    failing = docqueue("enqueue", str(bad), "--model", "tiny", cwd=tmp_path, env=env)
    assert "1 document queued, 1 refused (their rows say why)" in failing.stderr
    wait_until(
        lambda: (
            docqueue("status", failing.stdout.strip(), cwd=tmp_path, env=sql_only).returncode == 1
        ),
        60,
        "the job with a failure to finish",
    )
    exported = docqueue("export", waiting, "--out", "out.csv", cwd=tmp_path, env=sql_only)
    assert exported.returncode == 0, exported.stderr


def test_resume_with_redis_down_is_one_line_like_enqueue(tmp_path, sqlite_url):
    docs = write_docs(tmp_path / "docs.jsonl", ["first", "second"])
    env = {"DOCQUEUE_REDIS_URL": "redis://127.0.0.1:1/0", "DOCQUEUE_DATABASE_URL": sqlite_url}
    enqueued = docqueue(
        "enqueue", str(docs), "--model", "m", "--task", "embed", cwd=tmp_path, env=env
    )
    line = one_error(enqueued, 3)
    job_id = re.search(r"as job ([0-9a-f]{32})", line)
    assert job_id and line.startswith("error: could not publish to Redis ("), line
    resumed = docqueue("resume", job_id.group(1), cwd=tmp_path, env=env)
    assert one_error(resumed, 3) == line


# --- devices, markup, version -----------------------------------------------------------


def test_a_device_this_machine_lacks_is_one_line(tmp_path, tiny_classifier, sqlite_url):
    docs = write_docs(tmp_path / "docs.jsonl", ["one"])
    result = docqueue(
        "annotate", str(docs), "--model", tiny_classifier, "--device", "cuda:99", cwd=tmp_path
    )
    line = one_error(result, 2)
    assert line.startswith("error: device cuda:99: ")
    assert "CUDA is not available" in line or "GPU(s) visible" in line
    env = {"DOCQUEUE_REDIS_URL": "redis://127.0.0.1:1/0", "DOCQUEUE_DATABASE_URL": sqlite_url}
    result = docqueue(
        "worker", "--model", f"tiny={tiny_classifier}", "--device", "cuda:99", cwd=tmp_path, env=env
    )
    assert one_error(result, 2) == line


def test_ids_and_user_text_are_printed_as_written_and_version(tmp_path, sqlite_url):
    env = {"DOCQUEUE_DATABASE_URL": sqlite_url}
    Client(make_settings("redis://127.0.0.1:1/0", sqlite_url)).close()
    result = docqueue("status", "[bold]job[/bold]", cwd=tmp_path, env=env)
    assert one_error(result, 2) == "error: no job [bold]job[/bold]"
    version = docqueue("--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"docqueue \d+\.\d+\.\d+\S*\n", version.stdout)
