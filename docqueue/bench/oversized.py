"""Worker memory under huge input: a ~50 MB message, refused and accepted.

    python -m docqueue.bench.oversized [--mb 50]

Starts a real CPU worker (the micro classifier) and reads its resident memory
(``VmRSS`` in ``/proc/PID/status``) while it takes two ~50 MB messages, each
carrying one ~50 MB document:

* **refused**: a worker whose ``max_message_bytes`` is lowered below the message.
  The message is set aside as a dead letter before anything decodes it (first
  published alone, then behind a small message; either way the pop script refuses
  it inside Redis and the worker never reads it.  Before workers waited on bells,
  a message alone was the entry a worker's ``BRPOP`` took: read, measured, sent
  back);
* **accepted**: a worker whose limit is raised above it.  It decodes the message and
  gives the document its error row (over ``max_document_chars``).

Prints resident memory before, the peak while the message was handled, and after,
for each, and whether the worker still serves.  Not a CI test: run it on demand
(DOCQUEUE_REDIS_URL / DOCQUEUE_DATABASE_URL pick the services, else an embedded
Redis and a SQLite file).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from docqueue import deadletters
from docqueue.bench import DEFAULT_CORPUS, load_corpus, models
from docqueue.bench.endtoend import MODEL, services
from docqueue.config import Settings
from docqueue.launcher import LocalWorkers, WorkerProcess
from docqueue.producer.client import Client
from docqueue.protocol import bulk_queue

MIB = 1024 * 1024
#: A message this far below (refused) and above (accepted) the message's size.
LOWERED, RAISED = 8 * MIB, 256 * MIB


def status_mib(pid: int, field: str) -> float:
    """A memory figure of ``/proc/PID/status`` (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


@contextmanager
def peak_rss(pid: int, every: float = 0.01) -> Iterator[list[float]]:
    """The process's peak resident memory while the block runs (the list holds it
    once the block is done): the kernel's high-water mark, reset at the start where
    the kernel allows (``/proc/PID/clear_refs``), and samples every ``every`` s."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        exact = True
    except OSError:
        exact = False
    peak = [rss_mib(pid)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            peak[0] = max(peak[0], rss_mib(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        stop.set()
        watcher.join()
        if exact:
            peak[0] = max(peak[0], status_mib(pid, "VmHWM"))


def settled_rss(pid: int, seconds: float = 3.0) -> float:
    """Resident memory once the worker has been idle a little while."""
    time.sleep(seconds)
    return rss_mib(pid)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.05)


def serves(client: Client) -> bool:
    job = client.submit_many(["still serving?"], task="classify", model=MODEL)
    return job.wait(timeout=120).done == 1


def measure(label: str, worker: WorkerProcess, action: Callable[[], None]) -> None:
    before = settled_rss(worker.pid)
    with peak_rss(worker.pid) as peak:
        action()
    after = settled_rss(worker.pid)
    print(
        f"{label}: resident memory {before:.0f} MiB before, peak {peak[0]:.0f}, "
        f"after {after:.0f} ({after - before:+.0f} MiB)"
    )


def run(settings: Settings, megabytes: float = 50.0) -> None:
    corpus = load_corpus(DEFAULT_CORPUS)
    workdir = Path(tempfile.gettempdir()) / "docqueue-bench"
    workdir.mkdir(exist_ok=True)
    model_dir = models.build("micro", "classify", workdir, corpus)
    # a message carries about 4/3 bytes per character of its document (base64)
    chars = int(megabytes * 1e6 * 0.74)
    text = ("a huge document " * (chars // 16 + 1))[:chars]
    queue = bulk_queue("classify", MODEL)

    with tempfile.TemporaryDirectory() as tmp, services(settings, Path(tmp)) as live:
        # the producer lets the document through whole: the worker is what is measured
        producer = Client(live.model_copy(update={"max_document_chars": chars}))
        broker = producer.redis

        def submit(document: str) -> str:
            return producer.submit_many([document], task="classify", model=MODEL).id

        # Two messages taken off the queue before any worker runs, to push as one step.
        submit(text)
        submit("a small one")
        big, small = broker.lrange(queue, 0, -1)[::-1]
        broker.delete(queue)
        print(f"document: {chars:,} characters; message: {len(big) / 1e6:.1f} MB")

        def set_aside() -> int:
            return deadletters.count(broker) + deadletters.dropped(broker)

        def dead_letter_after(action: Callable[[], object]) -> Callable[[], None]:
            def act() -> None:
                held = set_aside()
                action()
                wait_for(lambda: set_aside() > held, 300, "dead letter")

            return act

        def in_one_step() -> None:
            # behind a small one, pushed by hand (no bell: found within a second)
            with broker.pipeline(transaction=True) as pipe:
                pipe.lpush(queue, small, big)
                pipe.execute()

        refusing = live.model_copy(update={"max_message_bytes": LOWERED})
        with LocalWorkers(refusing, {MODEL: str(model_dir)}, ["cpu"], log_dir=Path(tmp)) as local:
            worker = local.wait_ready(600).processes[0]
            serves(producer)  # warm: model loaded, a first batch run
            limit = f"max_message_bytes {LOWERED // MIB} MiB"
            measure(
                f"refused, published alone ({limit})",
                worker,
                dead_letter_after(lambda: submit(text)),
            )
            measure(
                f"refused, behind a small message ({limit})",
                worker,
                dead_letter_after(in_one_step),
            )
            print(f"worker still serves: {serves(producer)}")

        accepting = live.model_copy(update={"max_message_bytes": RAISED})
        with LocalWorkers(
            accepting, {MODEL: str(model_dir)}, ["cpu"], log_dir=Path(tmp), name="accepting"
        ) as local:
            worker = local.wait_ready(600).processes[0]
            serves(producer)

            def accepted() -> None:
                job = producer.job(submit(text))
                wait_for(lambda: job.progress().pending == 0, 600, "row for the document")
                [row] = list(job.results())
                print(f"  its row: {row['status']}: {row.get('error')}")

            measure(
                f"accepted and decoded (max_message_bytes {RAISED // MIB} MiB)", worker, accepted
            )
            print(f"worker still serves: {serves(producer)}")
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=50.0, help="message size in MB (9 to 50)")
    args = parser.parse_args()
    if not LOWERED / MIB < args.mb <= 50:
        # the refused case lowers the worker's limit to 8 MiB: a smaller message
        # would be accepted, and the bench would wait for a dead letter forever
        parser.error(f"--mb {args.mb:g}: give more than {LOWERED // MIB} and at most 50")
    run(Settings(), args.mb)


if __name__ == "__main__":
    main()
