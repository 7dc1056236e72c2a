"""Soak: 100,000 short documents through two CPU workers with a tiny model.

    docqueue bench --soak [--docs 100000] [--workers 2]

Prints docs/s, each worker's resident memory at start, peak and end, and the count
check: one result row per document, none doubled.  Not a CI test: run it on
demand (DOCQUEUE_REDIS_URL / DOCQUEUE_DATABASE_URL pick the services, else an
embedded Redis and a SQLite file).

The memory bound it checks: a worker's resident memory at the end stays within
``BOUND_MIB`` of what it was once serving (after its first batch), because what it
buffers is bounded by its prefetch and nothing accumulates per document.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from docqueue.bench import DEFAULT_CORPUS, load_corpus, models
from docqueue.bench.endtoend import MODEL, services
from docqueue.config import Settings
from docqueue.db import tallies
from docqueue.launcher import LocalWorkers
from docqueue.producer.client import Client

BOUND_MIB = 64


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(settings: Settings, count: int = 100_000, workers: int = 2) -> bool:
    """Prints what it measured; True when both bounds hold."""
    corpus = load_corpus(DEFAULT_CORPUS)
    docs = [corpus[i % len(corpus)][:200] for i in range(count)]  # short documents
    workdir = Path(tempfile.gettempdir()) / "docqueue-bench"
    workdir.mkdir(exist_ok=True)
    model_dir = models.build("micro", "classify", workdir, corpus)

    with (
        tempfile.TemporaryDirectory() as tmp,
        services(settings, Path(tmp)) as live,
        LocalWorkers(live, {MODEL: str(model_dir)}, ["cpu"] * workers, log_dir=Path(tmp)) as local,
    ):
        client = Client(live)
        local.wait_ready(600)
        job = client.job(client.submit_many(docs[:64], task="classify", model=MODEL).id)
        job.wait(timeout=60)  # a first batch: models warm, buffers allocated
        start = {w.pid: rss_mib(w.pid) for w in local.processes}
        peak = dict(start)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                for pid in peak:
                    peak[pid] = max(peak[pid], rss_mib(pid))

        threading.Thread(target=watch, daemon=True).start()
        began = time.perf_counter()
        big = client.submit_many(docs, task="classify", model=MODEL)
        progress = big.wait(timeout=3600, poll=0.5)
        seconds = time.perf_counter() - began
        done.set()
        end = {w.pid: rss_mib(w.pid) for w in local.processes}
        with client.db.connect() as conn:
            rows = tallies.result_rows(conn, big.id)
            distinct = tallies.documents_with_results(conn, big.id)
            statuses = tallies.item_states(conn, big.id)
            shares = tallies.rows_per_worker(conn, big.id)
        client.close()

    print(
        f"soak: {count:,} documents of at most 200 characters, {workers} CPU workers, "
        f"micro classifier"
    )
    print(f"throughput: {count / seconds:,.0f} docs/s ({seconds:.1f} s, enqueue included)")
    for i, pid in enumerate(start):
        growth = end[pid] - start[pid]
        print(
            f"worker {i}: resident memory {start[pid]:.0f} MiB serving, peak {peak[pid]:.0f}, "
            f"end {end[pid]:.0f} ({growth:+.0f} MiB)"
        )
    print(f"documents per worker: {sorted(shares.values())}")
    duplicates = rows - distinct
    print(
        f"count check: {rows:,} result rows for {count:,} documents, {duplicates} "
        f"duplicates, item statuses {statuses}, job {progress}"
    )
    ok_memory = all(end[p] - start[p] <= BOUND_MIB for p in start)
    ok_count = rows == distinct == count and statuses == {"done": count}
    print(
        f"bound: end within {BOUND_MIB} MiB of serving memory: {'holds' if ok_memory else 'BROKEN'}"
        f"; exactly one row per document: {'holds' if ok_count else 'BROKEN'}"
    )
    return ok_memory and ok_count
