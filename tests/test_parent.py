"""Local workers stop when the process that started them is killed outright.

annotate, ``docqueue bench`` and ``worker --gpus`` start their workers in sessions
of their own, so a parent killed by SIGKILL (a test's timeout, the OOM killer) left
them running forever, computing for nobody (seen: bench workers orphaned by a
timed-out test burned both cores through the rest of a CI run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from docqueue.config import Settings
from docqueue.launcher import worker_env
from docqueue.worker.parent import PARENT_ENV, watch_parent

PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from docqueue.config import Settings
    from docqueue.launcher import LocalWorkers

    workers = LocalWorkers(Settings(), {"tiny": sys.argv[1]}, log_dir=Path(sys.argv[2]))
    workers.wait_ready()
    print(workers.processes[0].pid, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_worker_stops_when_its_parent_is_killed(
    settings: Settings, tiny_classifier: str, tmp_path: Path
):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, tiny_classifier, str(tmp_path)],
        env=worker_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = 0
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        log = (tmp_path / "worker-0.log").read_text()
        assert not alive(worker), f"the worker outlived its parent:\n{log[-2000:]}"
        assert "the process that started this worker" in log
    finally:
        parent.kill()
        parent.wait()
        if worker and alive(worker):
            os.kill(worker, 9)
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize("named", ["1", "not a pid", "this process"])
def test_a_variable_naming_another_process_starts_no_watch(
    monkeypatch: pytest.MonkeyPatch, named: str
):
    """A DOCQUEUE_PARENT_PID left in a shell (init, garbage, this very process) is not
    this process's parent: a worker started from there runs on, and nothing it
    starts inherits the variable."""
    # The id is read here, not in the parametrization: each xdist worker is its own
    # process, and ids that differ between workers fail the collection.
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()) if named == "this process" else named)
    assert watch_parent() is None
    assert PARENT_ENV not in os.environ
