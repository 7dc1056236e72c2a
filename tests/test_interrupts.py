"""Ctrl-C on ``docqueue annotate``, as a terminal sends it: SIGINT to the whole
foreground process group.  The first says at once what happens and lets the
workers finish what they hold while the count goes on; the second stops within two
seconds; nothing saved is lost, and the same command resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TESTS, wait_until
from test_cli import no_traceback, read_jsonl

from docqueue.annotate import model_name_for

DOCUMENTS = 2000


def counts(database: Path) -> tuple[int, int]:
    """(documents done, result rows) in annotate's ledger."""
    with sqlite3.connect(database) as conn:
        done = conn.execute("SELECT count(*) FROM dq_items WHERE status = 'done'").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM dq_results").fetchone()[0]
    return int(done), int(rows)


def done_or_zero(database: Path) -> int:
    try:
        return counts(database)[0]
    except sqlite3.Error:  # not created yet
        return 0


def worker_pids(database: Path) -> list[int]:
    with sqlite3.connect(database) as conn:
        return [int(pid) for (pid,) in conn.execute("SELECT pid FROM dq_workers")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_under(directory: Path) -> list[str]:
    """Command lines of live processes that name ``directory`` (the test's workers,
    with their model copied there, and the redis-server in annotate's TMPDIR)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in line and proc.name != str(os.getpid()):
            found.append(line)
    return found


@pytest.fixture
def short_tmp(tmp_path: Path) -> Iterator[Path]:
    """A short temporary directory for annotate's own (its Redis's unix socket path
    has at most 107 bytes), linked from ``tmp_path``, removed afterwards."""
    short = Path(tempfile.mkdtemp(prefix="dq-"))
    (tmp_path / "annotate-tmp").symlink_to(short)
    yield short
    shutil.rmtree(short, ignore_errors=True)


def annotate_env(tmp_path: Path) -> dict[str, str]:
    """This environment without DOCQUEUE_* settings, with annotate's temporary
    directory (its Redis) the test's short one, whose name then shows in
    redis-server's command line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    return {**base, "TMPDIR": str((tmp_path / "annotate-tmp").resolve())}


def left_running(tmp_path: Path) -> list[str]:
    """The test's workers (their model is under ``tmp_path``) and annotate's Redis,
    still running."""
    return running_under(tmp_path) + running_under((tmp_path / "annotate-tmp").resolve())


@pytest.mark.slow
def test_ctrl_c_says_what_it_does_keeps_counting_and_a_second_stops_at_once(
    tmp_path, short_tmp, tiny_classifier, sample_texts
):
    model = tmp_path / "model"  # its path names the workers' processes
    shutil.copytree(tiny_classifier, model)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": sample_texts[i % len(sample_texts)]}) + "\n"
            for i in range(DOCUMENTS)
        )
    )
    command = [sys.executable, "-m", "docqueue", "annotate", str(docs), "--model"]
    command += [str(model), "--out", "out.jsonl", "--name", "night"]
    base = annotate_env(tmp_path)
    # Half a second a batch of at most 8 documents: the job would take two minutes.
    slow = {
        "DOCQUEUE_RUNNERS": json.dumps(
            {model_name_for(str(model)): "faulty_runners:SlowClassifier"}
        ),
        "DOCQUEUE_MAX_BATCH_ROWS": "8",
        "DOCQUEUE_SHUTDOWN_GRACE": "20",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "annotate.log"
    with log.open("w") as out:
        # a process group of its own, as a terminal's foreground job has
        run = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**base, **slow},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    database = tmp_path / "docqueue.db"
    try:
        wait_until(lambda: done_or_zero(database) >= 16, 120, "some documents done")
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
        interrupted = counts(database)[0]
        wait_until(lambda: "stopping: " in log.read_text(), 1.0, "the stopping line at once")
        line = next(ln for ln in log.read_text().splitlines() if ln.startswith("stopping: "))
        assert " documents they hold in 20s (the rest stay pending)" in line, line
        assert line.endswith("; Ctrl-C again stops now; the same command resumes"), line
        # the workers finish what they hold: the count goes on, annotate still runs
        wait_until(lambda: counts(database)[0] > interrupted, 5, "the count to go on")
        assert run.poll() is None

        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C again
        second = time.monotonic()
        run.wait(10)
        took = time.monotonic() - second
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    shown = log.read_text()
    no_traceback(subprocess.CompletedProcess(command, run.returncode, shown, shown))
    assert took < 2.0, (took, shown)
    assert run.returncode == 130, shown
    done, rows = counts(database)
    last = shown.rstrip().splitlines()[-1]
    assert last.startswith(f"stopped: {done} of 2,000 documents done and saved in "), shown
    assert last.endswith("; the same command resumes"), shown
    assert done == rows and done > interrupted  # each done document has its row
    pids = worker_pids(database)
    assert pids and not any(alive(pid) for pid in pids)
    assert left_running(tmp_path) == []  # no worker, no redis-server left behind

    again = subprocess.run(
        command, cwd=tmp_path, env=base, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert f"{done} of {DOCUMENTS} documents already done" in again.stderr, again.stderr
    results = read_jsonl(tmp_path / "out.jsonl")
    assert len(results) == DOCUMENTS and {r["status"] for r in results} == {"done"}


@pytest.mark.slow
def test_ctrl_c_while_the_model_loads_stops_at_once_leaving_nothing_running(
    tmp_path, short_tmp, tiny_classifier
):
    """Nothing is computed yet: the first Ctrl-C stops the run (the loading worker
    with it) and annotate takes its workers and Redis with it: they run in sessions
    of their own, out of the terminal's reach."""
    model = tmp_path / "model"
    shutil.copytree(tiny_classifier, model)
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "hello"}\n')
    log = tmp_path / "annotate.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "docqueue", "annotate", str(docs), "--model", str(model)]
            + ["--out", "out.jsonl"],
            cwd=tmp_path,
            env=annotate_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "loading model" in log.read_text(), 60, "the model to load")

        def worker_started() -> bool:
            return any(" worker " in line for line in running_under(tmp_path / "model"))

        wait_until(worker_started, 30, "the worker")
        os.killpg(run.pid, signal.SIGINT)
        run.wait(10)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    shown = log.read_text()
    assert run.returncode == 130, shown
    assert shown.rstrip().splitlines()[-1].startswith("stopped: 0 of 1 document done"), shown
    no_traceback(subprocess.CompletedProcess([], 130, shown, shown))
    wait_until(lambda: left_running(tmp_path) == [], 5, "nothing left running")
