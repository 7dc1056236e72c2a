"""The ``docqueue`` command as a user runs it: real processes, real files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SAMPLE, wait_until
from proxy import Proxy
from test_readme import readme_main_command

from docqueue.broker import redis_client
from docqueue.config import settings_env
from docqueue.protocol import bulk_queue

TICKETS = ROOT / "examples" / "tickets.jsonl"
#: annotate's name for a model on the wire (docqueue.annotate.model_name_for)
INTERNAL_NAME = r"\bm-[0-9a-f]{10}\b"


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
    """The README's first command (after the install), as the README spells it:
    embedded Redis, SQLite file in the working directory, one CPU worker, the packaged
    MiniLM for zero-shot labels."""
    argv = readme_main_command()
    assert argv[0] == "docqueue", argv
    # the README runs from the clone's root: its relative paths are read from there
    args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in argv[1:]]
    result = docqueue(*args, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / argv[argv.index("--out") + 1])
    tickets = read_jsonl(TICKETS)
    assert [r["id"] for r in rows] == [t["id"] for t in tickets]
    right = sum(r["label"] == t["topic"] for r, t in zip(rows, tickets, strict=True))
    assert right >= 33
    assert (tmp_path / "docqueue.db").exists()
    assert "36 done, 0 failed" in result.stderr
    # the model as the user knows it (the bundled minilm), not annotate's m-<digest>
    listed = docqueue("jobs", cwd=tmp_path, env={"COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    # ... TASK MODEL CREATED ("7s ago")
    assert listed.stdout.splitlines()[1].split()[-4:-2] == ["classify", "minilm"], listed.stdout
    job_id = listed.stdout.splitlines()[1].split()[0]
    status = docqueue("status", job_id, cwd=tmp_path)
    assert f"job {job_id}: classify with model minilm (bulk)" in status.stdout, status.stdout
    assert re.search(INTERNAL_NAME, listed.stdout + status.stdout) is None


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
    # the ledger and the results, nothing left beside them (no lock file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docqueue.db", "out.jsonl"]


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
    # two documents in several seconds: a rate below one, shown as such (not "0 docs/s")
    rate = re.search(r"\(([\d.,]+) docs/s including start-up\)", result.stderr)
    assert rate and float(rate.group(1).replace(",", "")) > 0, result.stderr


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
    assert "state: finished" in status.stdout
    assert "no live worker" not in status.stdout  # a finished job waits for nobody
    waiting = docqueue(
        "enqueue", str(docs), "--model", "tiny", "--text-field", "body", cwd=tmp_path, env=env
    )
    status = docqueue("status", waiting.stdout.strip(), cwd=tmp_path, env=env)
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
    result = docqueue("annotate", str(SAMPLE), "--task", "transcribe", cwd=tmp_path)
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


@contextlib.contextmanager
def enqueue_process(docs: Path, *fields: str, cwd: Path, env: dict[str, str]):
    """``docqueue enqueue`` as a process whose output the test reads; killed and
    reaped at the end whatever the test found (no pipe or process outlives it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "docqueue", "enqueue", str(docs), "--model", "tiny", *fields],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


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
    proxy = Proxy.before(settings.redis())  # the embedded server's socket, or host and port
    env = {
        **settings_env(settings),
        "DOCQUEUE_REDIS_URL": proxy.url(settings.redis()),
        "DOCQUEUE_MAX_QUEUED_MESSAGES": "1",  # the producer waits after the first chunk
    }
    fields = ["--text-field", "body", "--id-field", "key"]
    try:
        with enqueue_process(docs, *fields, cwd=tmp_path, env=env) as producer:
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
    proxy = Proxy.before(database_url)
    env = {
        **settings_env(settings),
        "DOCQUEUE_DATABASE_URL": proxy.url(database_url),
        "DOCQUEUE_MAX_QUEUED_MESSAGES": "1",
    }
    try:
        with enqueue_process(docs, cwd=tmp_path, env=env) as producer:
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


def test_help_keeps_each_command_summary_on_one_line(tmp_path):
    """Rich keeps a docstring's line breaks: at any width they cut sentences in the
    middle inside the Commands box.  Wide enough, each summary is one line."""
    import inspect

    import typer.main

    from docqueue.cli import app

    top: Any = typer.main.get_command(app)  # a group (typer's own copy of click's)
    groups: list[tuple[list[str], Any]] = [([], top)]
    groups += [([n], c) for n, c in top.commands.items() if hasattr(c, "commands")]
    for path, group in groups:
        shown = docqueue(*path, "--help", cwd=tmp_path, env={"COLUMNS": "400"}, timeout=60)
        assert shown.returncode == 0, shown.stderr
        lines = [" ".join(line.strip("│ ").split()) for line in shown.stdout.splitlines()]
        for name, command in group.commands.items():
            summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
            assert any(summary in line for line in lines), (path, name, shown.stdout)


def test_results_jsonl_is_never_replaced_unless_named(tmp_path):
    """annotate and export without --out write results.jsonl, and refuse to replace
    one there (a file the user did not name), in one line saying how, before
    anything starts."""
    (tmp_path / "results.jsonl").write_text("yesterday's results\n")
    runs = {
        "annotate": docqueue("annotate", str(TICKETS), "--labels", "a,b", cwd=tmp_path),
        "export": docqueue("export", "0" * 32, cwd=tmp_path),
    }
    for command, result in runs.items():
        no_traceback(result)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, (command, result.stderr)
        assert lines[0] == (
            "error: results.jsonl exists and --out was not given: pass --out results.jsonl "
            "to replace it, or --out with another file name"
        )
    assert (tmp_path / "results.jsonl").read_text() == "yesterday's results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # nothing started


def test_status_lists_the_queues_of_the_configured_redis_not_the_ledgers_past(
    tmp_path, settings, client
):
    """`docqueue status` lists this Redis's queues that hold messages, and those live
    workers serve (empty or not); not the queues of workers long gone (annotate's,
    on its embedded Redis) nor of running jobs whose messages are not here."""
    from docqueue.db.workers import beat

    held = client.submit_many(["a message left in the queue"], task="classify", model="minilm")
    held.cancel()  # finished in the ledger; its message stays queued until a worker drops it
    elsewhere = client.submit_many(["made on another Redis"], task="embed", model="gone")
    redis_client(settings.redis()).delete(bulk_queue("embed", "gone"))  # still running
    with client.db.begin() as conn:
        for worker_id, model, stopped in (
            ("annotate-w", "m-caf98a2c5f", True),
            ("w", "tiny", False),
        ):
            beat(
                conn,
                worker_id,
                hostname="h",
                pid=1,
                device="cpu",
                models={model: {"tasks": ["classify", "embed"]}},
                started_at=time.time(),
                documents=0,
                stopped=stopped,
            )
    assert elsewhere.progress().state == "running"
    shown = docqueue("status", cwd=tmp_path, env=settings_env(settings))
    assert shown.returncode == 0, shown.stderr
    queues = [line.split() for line in shown.stdout.splitlines() if line.startswith("  docqueue.")]
    assert queues == [
        ["docqueue.classify.minilm", "1"],
        ["docqueue.classify.tiny", "0"],
        ["docqueue.embed.tiny", "0"],
        ["docqueue.interactive.tiny", "0"],
    ], shown.stdout


@pytest.mark.slow
def test_annotate_shows_each_model_by_its_path_and_never_confuses_two_named_alike(
    tmp_path, tiny_classifier
):
    """Two directories with the same last component, one task each in one run: the
    joined rows, `docqueue jobs`, `status` and Label Studio's model_version name each
    by its own path; annotate's internal m-<digest> names appear nowhere."""
    import shutil

    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    for where in (first, second):
        shutil.copytree(tiny_classifier, where)
    result = docqueue(
        "annotate",
        str(SAMPLE),
        "--task",
        "classify:a/model",
        "--task",
        "classify:b/model",
        "--out",
        "both.jsonl",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "both.jsonl")
    assert {f"classify:{first}", f"classify:{second}"} <= set(rows[0]), rows[0]
    listed = docqueue("jobs", "--json", cwd=tmp_path)
    found = [json.loads(line) for line in listed.stdout.splitlines()]
    jobs = {job["model_label"]: job for job in found}
    assert set(jobs) == {str(first), str(second)}
    assert jobs[str(first)]["model"] != jobs[str(second)]["model"]  # two queues, two models
    table = docqueue("jobs", cwd=tmp_path, env={"COLUMNS": "300"})
    assert sorted(line.split()[-3] for line in table.stdout.splitlines()[1:]) == sorted(
        [str(first), str(second)]
    )
    job_id = jobs[str(second)]["id"]
    status = docqueue("status", job_id, cwd=tmp_path)
    assert f"classify with model {second} (bulk)" in status.stdout
    exported = docqueue(
        "export", job_id, "--out", "b.labelstudio.json", "--input", str(SAMPLE), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    tasks = json.loads((tmp_path / "b.labelstudio.json").read_text())
    assert {t["predictions"][0]["model_version"] for t in tasks} == {str(second)}
    shown = result.stderr + table.stdout + status.stdout + (tmp_path / "both.jsonl").read_text()
    assert re.search(INTERNAL_NAME, shown) is None, shown
