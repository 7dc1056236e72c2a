"""The ``docqueue`` command as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, SAMPLE, wait_until

from docqueue.config import settings_env

TICKETS = ROOT / "examples" / "tickets.jsonl"


def docqueue(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    return subprocess.run(
        [sys.executable, "-m", "docqueue", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_readme_main_command_gives_real_answers_with_embedded_defaults(tmp_path):
    """The README's first command (after the install): embedded Redis, SQLite file in
    the working directory, one CPU worker, the packaged MiniLM for zero-shot labels."""
    result = docqueue(
        "annotate",
        str(TICKETS),
        "--task",
        "classify",
        "--labels",
        "billing,outage,praise",
        "--out",
        "results.jsonl",
        cwd=tmp_path,
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "results.jsonl")
    tickets = read_jsonl(TICKETS)
    assert [r["id"] for r in rows] == [t["id"] for t in tickets]
    right = sum(r["label"] == t["topic"] for r, t in zip(rows, tickets, strict=True))
    assert right >= 33
    assert (tmp_path / "docqueue.db").exists()
    assert "36 done, 0 failed" in result.stderr


def test_annotate_with_a_local_classifier_on_real_text(tmp_path, tiny_classifier):
    result = docqueue(
        "annotate",
        str(SAMPLE),
        "--task",
        "classify",
        "--model",
        tiny_classifier,
        "--out",
        "out.jsonl",
        cwd=tmp_path,
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert all(r["status"] == "done" and r["label"] for r in rows)


def test_annotate_embed_writes_unit_vectors(tmp_path):
    docs = tmp_path / "docs.csv"
    docs.write_text(
        "key,body\na,The socket module gives access to BSD sockets.\n"
        "b,Use pathlib to work with file system paths.\n"
    )
    result = docqueue(
        "annotate",
        str(docs),
        "--task",
        "embed",
        "--text-field",
        "body",
        "--id-field",
        "key",
        "--out",
        "vectors.jsonl",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "vectors.jsonl")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(len(r["embedding"]) == 384 for r in rows)
    assert abs(sum(x * x for x in rows[0]["embedding"]) - 1.0) < 1e-4


def test_missing_model_is_one_line_not_a_traceback(tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "hello"}\n')
    for model in ("./no/such/dir", "someone/not-a-model"):
        result = docqueue(
            "annotate",
            str(docs),
            "--model",
            model,
            cwd=tmp_path,
            env={"HF_HUB_OFFLINE": "1"},
            timeout=60,
        )
        no_traceback(result)
        assert result.returncode == 3
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error:" in lines[0] and "directory" in lines[0]


def test_enqueue_status_export_and_dead_workers(tmp_path, settings, start_worker, tiny_classifier):
    env = settings_env(settings)
    docs = tmp_path / "docs.csv"
    docs.write_text(
        "doc_id,body\n" + "".join(f"d{i},Document number {i} about files.\n" for i in range(40))
    )

    nobody = docqueue(
        "enqueue", str(docs), "--model", "nobody", "--text-field", "body", cwd=tmp_path, env=env
    )
    assert nobody.returncode == 0, nobody.stderr
    status = docqueue("status", nobody.stdout.strip(), cwd=tmp_path, env=env)
    assert "no live worker serves model nobody (never seen)" in status.stdout

    worker = start_worker({"tiny": tiny_classifier})
    job = docqueue(
        "enqueue",
        str(docs),
        "--model",
        "tiny",
        "--text-field",
        "body",
        "--id-field",
        "doc_id",
        cwd=tmp_path,
        env=env,
    )
    job_id = job.stdout.strip()
    assert len(job_id) == 32 and "40 documents queued" in job.stderr

    def finished():
        return docqueue("status", job_id, cwd=tmp_path, env=env).returncode == 0

    wait_until(finished, 60, "the job to finish")
    status = docqueue("status", job_id, cwd=tmp_path, env=env)
    assert "done 40, failed 0, pending 0" in status.stdout
    assert f"worker {worker.worker_id}" in status.stdout

    out = docqueue("export", job_id, "--out", "out.csv", cwd=tmp_path, env=env)
    assert out.returncode == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("id,seq,status,label,score")
    assert lines[1].startswith("d0,0,done,")

    worker.kill()
    time.sleep(settings.heartbeat_timeout + 1)
    status = docqueue("status", job_id, cwd=tmp_path, env=env)
    assert "no live worker serves model tiny (last seen " in status.stdout
    no_traceback(status)


def test_usage_errors_are_one_line(tmp_path):
    result = docqueue("annotate", str(tmp_path / "missing.jsonl"), "--labels", "a,b", cwd=tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr
    no_traceback(result)
    result = docqueue(
        "annotate", str(SAMPLE), "--task", "summarize", "--param", "num_beams=99", cwd=tmp_path
    )
    assert result.returncode == 2 and "num_beams" in result.stderr
    result = docqueue("annotate", str(SAMPLE), "--task", "translate", cwd=tmp_path)
    assert result.returncode == 2 and "unknown task" in result.stderr
    result = docqueue(
        "status",
        "0" * 32,
        cwd=tmp_path,
        env={
            "DOCQUEUE_REDIS_URL": "redis://127.0.0.1:1/0",
            "DOCQUEUE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        },
    )
    # status needs only SQL, and says so when the database is not there
    assert result.returncode == 2 and "no database at" in result.stderr
    no_traceback(result)
