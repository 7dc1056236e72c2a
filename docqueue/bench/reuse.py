"""Reuse, measured: all-MiniLM-L6-v2 embeddings of N distinct documents, three jobs
with reuse on against one running worker:

1. the first run (nothing to reuse: every document computed);
2. the same documents again (every result copied);
3. the same documents with 10% of the texts changed (exactly those computed).

Each job is timed from submit to its last result; the worker is started (and its
model loaded) before the first job, so start-up is in none of them.  The
documents are the packaged ``pydocs-sample.jsonl`` (300 Python documentation
passages), each cut to ``--chars`` characters and numbered to make N distinct
texts.  Run: ``python -m docqueue.bench.reuse [--n 20000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from docqueue.bench.endtoend import services
from docqueue.config import Settings
from docqueue.db import tallies
from docqueue.launcher import LocalWorkers
from docqueue.producer.client import Client, JobHandle

SAMPLE = Path(__file__).with_name("pydocs-sample.jsonl")
MODEL = "minilm"


def documents(n: int, chars: int, changed: set[int] = frozenset()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    """N distinct (id, text) pairs from the packaged sample; those in ``changed`` edited."""
    passages = [json.loads(line)["text"][:chars] for line in SAMPLE.open()]
    return [
        (
            f"doc-{i}",
            f"{passages[i % len(passages)]} [{i}]" + (" (revised)" if i in changed else ""),
        )
        for i in range(n)
    ]


def computed_rows(client: Client, job: JobHandle) -> int:
    with client.db.connect() as conn:
        return tallies.result_rows(conn, job.id, computed=True)


def timed_job(client: Client, docs: list[tuple[str, str]]) -> tuple[JobHandle, float]:
    started = time.perf_counter()
    job = client.submit_many(docs, task="embed", model=MODEL, reuse=True)
    job.wait(timeout=7200, poll=0.2)
    return job, time.perf_counter() - started


def measure(client: Client, n: int, chars: int) -> None:
    """Run the three jobs and print their figures."""
    changed = set(range(0, n, 10))
    first, t1 = timed_job(client, documents(n, chars))
    second, t2 = timed_job(client, documents(n, chars))
    third, t3 = timed_job(client, documents(n, chars, changed))
    print(f"all-MiniLM-L6-v2 embed, {n} documents per job, one CPU worker")
    for label, job, seconds in (
        ("first run", first, t1),
        ("same documents again", second, t2),
        (f"{len(changed)} texts changed", third, t3),
    ):
        progress = job.progress()
        print(
            f"{label:24} {seconds:8.1f} s  computed {computed_rows(client, job):6d}"
            f"  reused {progress.reused:6d}  done {progress.done:6d}"
        )
    print(f"second run {t1 / t2:.0f}x faster than the first")
    print(
        f"changed run computed {computed_rows(client, third)} documents; "
        f"{len(changed)} texts were changed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="documents per job")
    parser.add_argument("--chars", type=int, default=400, help="characters kept per passage")
    options = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-bench-reuse-") as tmp,
        services(Settings(), Path(tmp)) as live,
    ):
        workers = LocalWorkers(live, {MODEL: MODEL}, ["cpu"], log_dir=Path(tmp))
        try:
            workers.wait_ready(600)
            with Client(live) as client:
                measure(client, options.n, options.chars)
        finally:
            workers.stop(30)


if __name__ == "__main__":
    main()
