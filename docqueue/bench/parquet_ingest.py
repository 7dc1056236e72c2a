"""Peak memory and documents/s of reading and enqueuing Parquet files of growing size.

    python -m docqueue.bench.parquet_ingest [--rows 100000,1000000] [--redis-url URL] [--jsonl]

For each size it writes a Parquet file (row groups of 50,000: an ``id``, a
``text`` of the bench corpus cut to 200 characters, a ``stars`` integer), then, each
in a fresh process so that its high-water mark is its own:

* **read**: ``read_documents`` over the file, every Record taken and dropped;
* **enqueue**: ``Client.submit_many`` of those Records into a fresh SQLite file and
  Redis (embedded unless ``--redis-url``; no worker runs, the messages wait and are
  deleted afterwards), as ``docqueue enqueue`` does.

It prints the peak resident set (VmHWM, Linux) of each process and its growth over
the size before reading (the imports), documents/s (``--jsonl``: also enqueuing the
same rows from a JSONL file, to compare), and whether the largest file's
peak stays within ``--budget-mb`` (50) of the smallest's: reading is streamed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docqueue.bench import DEFAULT_CORPUS, load_corpus

MODEL = "bench"
TASK = "classify"
ROW_GROUP = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="sizes, comma-separated")
    parser.add_argument("--redis-url", help="a Redis database of its own (default: embedded)")
    parser.add_argument("--budget-mb", type=float, default=50.0)
    parser.add_argument(
        "--jsonl", action="store_true", help="also enqueue the same rows from JSONL, to compare"
    )
    parser.add_argument("--child", choices=["read", "enqueue"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.file), args.db, args.redis_url)))
        return
    sizes = [int(n) for n in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="docqueue-parquet-") as tmp:
        peaks = {}
        for rows in sizes:
            path = write_file(Path(tmp) / f"docs-{rows}.parquet", rows)
            print(f"{rows:,} rows: {path.stat().st_size / 1e6:.1f} MB of Parquet")
            for arm in ("read", "enqueue"):
                figures = run_child(arm, path, Path(tmp) / f"bench-{rows}.db", args.redis_url)
                peaks[(arm, rows)] = figures["peak_mb"]
                report(arm, figures)
            if args.jsonl:
                jsonl = as_jsonl(path)
                db = Path(tmp) / f"bench-jsonl-{rows}.db"
                report("enqueue from JSONL", run_child("enqueue", jsonl, db, args.redis_url))
                jsonl.unlink()
        small, large = min(sizes), max(sizes)
        for arm in ("read", "enqueue"):
            growth = peaks[(arm, large)] - peaks[(arm, small)]
            verdict = "within" if growth <= args.budget_mb else "OVER"
            print(
                f"{arm}: peak at {large:,} rows - peak at {small:,} rows = {growth:+.1f} MB "
                f"({verdict} {args.budget_mb:.0f} MB)"
            )


def report(arm: str, figures: dict[str, float]) -> None:
    print(
        f"  {arm:18} {figures['docs'] / figures['seconds']:>9,.0f} docs/s "
        f"({figures['seconds']:.1f} s); peak RSS {figures['peak_mb']:.1f} MB "
        f"(+{figures['peak_mb'] - figures['start_mb']:.1f} MB over the imports)"
    )


def as_jsonl(path: Path) -> Path:
    """The Parquet file's rows as JSONL, a batch at a time."""
    import pyarrow.parquet as pq

    out = path.with_suffix(".jsonl")
    with out.open("w") as handle:
        for batch in pq.ParquetFile(path).iter_batches():
            handle.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
    return out


def write_file(path: Path, rows: int) -> Path:
    """A Parquet file of ``rows`` documents, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [t[:200] for t in load_corpus(DEFAULT_CORPUS)]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("stars", pa.int32())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            seqs = range(start, min(start + ROW_GROUP, rows))
            columns = {
                "id": [f"d{i}" for i in seqs],
                "text": [texts[i % len(texts)] for i in seqs],
                "stars": [i % 5 for i in seqs],
            }
            writer.write_table(pa.table(columns, schema=schema))
    return path


def run_child(arm: str, path: Path, db: Path, redis_url: str | None) -> dict[str, float]:
    command = [sys.executable, "-m", "docqueue.bench.parquet_ingest", "--child", arm]
    command += ["--file", str(path), "--db", str(db)]
    if redis_url:
        command += ["--redis-url", redis_url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{arm} of {path} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def child(arm: str, path: Path, db: str, redis_url: str | None) -> dict[str, float]:
    import pyarrow.parquet  # noqa: F401  (imported before the baseline, as reading imports it)

    from docqueue.config import Settings
    from docqueue.formats.readers import read_documents
    from docqueue.launcher import serve_redis
    from docqueue.producer.client import Client
    from docqueue.protocol import queue_name

    start_mb = peak_mb()
    began = time.perf_counter()
    if arm == "read":
        docs = sum(1 for _ in read_documents(path))
        return figures(docs, began, start_mb)
    settings = Settings(
        redis_url=redis_url, database_url=f"sqlite:///{db}", max_queued_messages=10**9
    )
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-redis-") as tmp,
        serve_redis(settings, Path(tmp)) as url,
        Client(settings, redis_url=url) as client,
    ):
        began = time.perf_counter()
        handle = client.submit_many(read_documents(path), task=TASK, model=MODEL)
        result = figures(handle.progress().total or 0, began, start_mb)
        client.redis.delete(queue_name(TASK, MODEL, "bulk"))
    return result


def figures(docs: int, began: float, start_mb: float) -> dict[str, float]:
    return {
        "docs": docs,
        "seconds": time.perf_counter() - began,
        "peak_mb": peak_mb(),
        "start_mb": start_mb,
    }


def peak_mb() -> float:
    """This process's resident-set high-water mark: VmHWM, which belongs to the
    process image (``ru_maxrss`` carries over the parent's across fork and exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
