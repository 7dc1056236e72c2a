"""The ``docqueue`` command as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ROOT, SAMPLE, wait_until
from proxy import Proxy

from docqueue.broker import redis_client
from docqueue.config import settings_env
from docqueue.protocol import bulk_queue

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


@pytest.mark.slow
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


# --- files that are odd but legal (issue 12, cases 7 to 10) ----------------------------


def test_annotate_reads_odd_but_legal_files(tmp_path, tiny_classifier):
    """A byte order mark, an escaped lone surrogate and a field longer than csv's own
    limit: each file runs to the end, every line accounted for."""
    long_text = "a long document about files " * 6000  # 162,000 characters
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        '{"id": "a", "text": "first document"}\n'
        '{"id": "b", "text": "bad \\ud800 half a pair"}\n'
        '{"id": "c\\udfff", "text": "a fine text with a bad id"}\n'
        + json.dumps({"id": "d", "text": long_text})
        + "\n",
        encoding="utf-8-sig",
    )
    result = docqueue(
        "annotate", str(jsonl), "--model", tiny_classifier, "--out", "out.jsonl", cwd=tmp_path
    )
    no_traceback(result)
    assert result.returncode == 1, result.stderr  # some documents failed, the run finished
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], r["status"]) for r in rows] == [
        ("a", "done"),
        ("b", "failed"),
        (None, "failed"),
        ("d", "done"),
    ]
    assert (
        rows[1]["error"]
        == "line 2: 'text' is not valid Unicode (lone surrogate \\ud800 at character 5)"
    )
    assert rows[2]["error"].startswith("line 3: id 'c\\udfff' is not valid Unicode")

    csv_file = tmp_path / "docs.csv"
    csv_file.write_text(
        f'key,body\nk1,short one\nk2,"{long_text}"\nk3,last one\n', encoding="utf-8-sig"
    )
    args = ["--model", tiny_classifier, "--text-field", "body", "--id-field", "key"]
    result = docqueue("annotate", str(csv_file), *args, "--out", "out.csv.jsonl", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.csv.jsonl")
    assert [(r["id"], r["status"]) for r in rows] == [
        ("k1", "done"),
        ("k2", "done"),
        ("k3", "done"),
    ]

    result = docqueue("annotate", str(csv_file), "--model", tiny_classifier, cwd=tmp_path)
    assert result.returncode == 2
    assert "no column 'text' (columns: key, body)" in result.stderr  # no hidden BOM in 'key'


def _ids_file(path: Path, n: int, bad: dict[int, str]) -> Path:
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"id": bad.get(i, f"d{i}"), "text": f"Document {i} about files."}))
            out.write("\n")
    return path


def test_enqueue_refuses_ids_no_database_can_store(tmp_path, settings, client):
    """On SQLite and PostgreSQL alike: one error row per bad id, naming the line and
    the problem; every other document queued."""
    docs = _ids_file(
        tmp_path / "docs.jsonl", 201, {70: "nul\x00id", 130: "x" * 600, 150: "half \ud800"}
    )
    result = docqueue(
        "enqueue", str(docs), "--model", "tiny", cwd=tmp_path, env=settings_env(settings)
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert "198 documents queued, 3 refused" in result.stderr
    rows = list(client.job(result.stdout.strip()).results())
    assert len(rows) == 201 and client.job(result.stdout.strip()).progress().total == 201
    failed = {r["seq"]: r["error"] for r in rows if r["status"] == "failed"}
    assert failed == {
        70: "line 71: id 'nul\\x00id' contains NUL (\\x00) characters",
        130: f"line 131: id '{'x' * 40}...' is 600 characters, more than 512",
        150: "line 151: id 'half \\ud800' is not valid Unicode "
        "(lone surrogate \\ud800 at character 6)",
    }
    assert all(rows[i]["id"] is None for i in failed)


def _newest_job_saved(client) -> int:
    """How many documents the newest job has in SQL (0 before it exists)."""
    found = client.jobs(limit=1)
    return found[0].progress.enqueued if found else 0


def _via(proxy: Proxy, url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return url.replace(parts.netloc, f"{user}127.0.0.1:{proxy.port}", 1)


def _finish_and_check(client, start_worker, tiny_classifier, job_id: str, ids: list[str]):
    start_worker({"tiny": tiny_classifier})
    job = client.job(job_id)
    job.wait(timeout=120)
    rows = list(job.results())
    assert [r["id"] for r in rows] == ids
    assert all(r["status"] == "done" for r in rows), rows[:3]


def test_an_enqueue_cut_off_from_redis_says_what_was_saved_and_resume_completes_it(
    tmp_path, settings, client, start_worker, tiny_classifier
):
    """Redis goes away while the producer waits for room in the queue: enqueue says
    which service failed and what is saved and published; `resume` (with the fields
    enqueue was given, checked against the file) publishes the rest and adds the
    documents never read."""
    docs = tmp_path / "docs.csv"
    docs.write_text("key,body\n" + "".join(f"k{i},Document {i} about files.\n" for i in range(201)))
    redis = urlsplit(settings.redis())
    proxy = Proxy((redis.hostname or "127.0.0.1", redis.port or 6379))
    env = {
        **settings_env(settings),
        "DOCQUEUE_REDIS_URL": _via(proxy, settings.redis()),
        "DOCQUEUE_MAX_QUEUED_MESSAGES": "1",  # the producer waits after the first chunk
    }
    fields = ["--text-field", "body", "--id-field", "key"]
    try:
        producer = subprocess.Popen(
            [sys.executable, "-m", "docqueue", "enqueue", str(docs), "--model", "tiny", *fields],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: _newest_job_saved(client) == 128, 60, "two chunks saved")
        proxy.cut()
        _, stderr = producer.communicate(timeout=120)
    finally:
        proxy.close()
    job_id = client.jobs(limit=1)[0].job.id
    assert producer.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "could not publish to Redis (" in stderr
    assert f"128 documents are saved in SQL as job {job_id}, 64 of them published" in stderr
    assert f"`docqueue resume {job_id} --text-field body --id-field key`" in stderr
    assert client.job(job_id).progress().total is None

    env = settings_env(settings)
    wrong = docqueue("resume", job_id, cwd=tmp_path, env=env)  # read with other fields: refused
    assert wrong.returncode == 2 and "read with other fields" in wrong.stderr, wrong.stderr
    assert _newest_job_saved(client) == 128
    resumed = docqueue("resume", job_id, *fields, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout) == 201  # 128 stored, re-published; 73 read, added, published
    assert client.job(job_id).progress().total == 201
    _finish_and_check(client, start_worker, tiny_classifier, job_id, [f"k{i}" for i in range(201)])


def test_an_enqueue_whose_database_goes_away_says_so_and_resume_completes_it(
    tmp_path, settings, database_url, client, start_worker, tiny_classifier
):
    if not database_url.startswith("postgresql"):
        pytest.skip("cutting the database off needs a database server (PostgreSQL)")
    docs = _ids_file(tmp_path / "docs.jsonl", 201, {})
    database = urlsplit(database_url)
    proxy = Proxy((database.hostname or "127.0.0.1", database.port or 5432))
    env = {
        **settings_env(settings),
        "DOCQUEUE_DATABASE_URL": _via(proxy, database_url),
        "DOCQUEUE_MAX_QUEUED_MESSAGES": "1",
    }
    try:
        producer = subprocess.Popen(
            [sys.executable, "-m", "docqueue", "enqueue", str(docs), "--model", "tiny"],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: _newest_job_saved(client) == 128, 60, "two chunks saved")
        proxy.cut()
        # make room: the producer publishes its second chunk, then fails to save the third
        redis_client(settings.redis()).lpop(bulk_queue("classify", "tiny"))
        _, stderr = producer.communicate(timeout=120)
    finally:
        proxy.close()
    job_id = client.jobs(limit=1)[0].job.id
    assert producer.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "could not save documents in the database (" in stderr
    assert f"128 documents are saved in SQL as job {job_id}, 128 of them published" in stderr
    assert f"`docqueue resume {job_id}` once the database is reachable" in stderr

    resumed = docqueue("resume", job_id, cwd=tmp_path, env=settings_env(settings))
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout) == 201
    _finish_and_check(client, start_worker, tiny_classifier, job_id, [f"d{i}" for i in range(201)])
