"""The HTTP API's cost, measured against the Python Client in the same run.

    python -m docqueue.bench.http [--rate 20] [--count 400] [--seconds 10] [--senders 16]
        [--rounds 2] [--workers 1] [--skip-latency]

Starts (unless DOCQUEUE_REDIS_URL / DOCQUEUE_DATABASE_URL name them) an embedded Redis
and a SQLite file, a worker serving a tiny classifier built on the spot, and a real
``docqueue serve``; then

* latency: single documents at a fixed rate, alternately ``POST /api/documents?wait=``
  over HTTP and ``Client.submit`` + ``result()``, each submitted and waited for; the
  percentiles of both and their difference;
* throughput: ``--senders`` concurrent HTTP clients submitting single documents
  (``wait=0``) for ``--seconds``, and as many threads calling ``Client.submit`` on
  one Client for as long, alternately, ``--rounds`` times each: accepted
  submissions per second of each, their ratio, and the server's CPU time per
  HTTP request (from /proc).  ``--workers`` is ``docqueue serve --workers``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from docqueue.bench import load_corpus
from docqueue.bench.endtoend import services
from docqueue.config import Settings
from docqueue.launcher import ApiServer, LocalWorkers
from docqueue.producer.client import Client

TOKEN = "bench-token-0123456789abcdef"
MODEL = "bench"
SAMPLE = Path(__file__).with_name("pydocs-sample.jsonl")


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def start_server(settings: Settings, log: Path, workers: int = 1) -> ApiServer:
    args = ["--log-level", "error"] + (["--workers", str(workers)] if workers > 1 else [])
    server = ApiServer(settings, log, env={"DOCQUEUE_API_TOKENS": json.dumps([TOKEN])}, args=args)
    return server.wait_ready()


def latency(
    http: httpx.Client, client: Client, texts: list[str], rate: float, count: int
) -> dict[str, list[float]]:
    """``count`` documents at ``rate`` per second, alternating HTTP and the Client."""
    timings: dict[str, list[float]] = {"http": [], "client": []}
    lock = threading.Lock()

    def over_http(text: str) -> None:
        started = time.perf_counter()
        body = {"task": "classify", "model": MODEL, "text": text}
        answer = http.post("/api/documents", params={"wait": 30}, json=body)
        assert answer.status_code == 200, answer.text
        with lock:
            timings["http"].append(time.perf_counter() - started)

    def through_client(text: str) -> None:
        started = time.perf_counter()
        client.submit(text, task="classify", model=MODEL).result(timeout=30)
        with lock:
            timings["client"].append(time.perf_counter() - started)

    arms: list[Callable[[str], None]] = [over_http, through_client]
    start = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        futures = []
        for i in range(count):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            futures.append(pool.submit(arms[i % 2], texts[i % len(texts)]))
        for future in futures:
            future.result()
    return timings


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) of a process and its children's, from /proc (None
    where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / ticks
    return own + sum(cpu_seconds(int(child)) or 0.0 for child in children)


def throughput(url: str, texts: list[str], senders: int, seconds: float) -> float:
    """Accepted single-document submissions per second over HTTP."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    https = [httpx.Client(base_url=url, headers=headers, timeout=30) for _ in range(senders)]

    def send(index: int, text: str) -> None:
        body = {"task": "classify", "model": MODEL, "text": text}
        answer = https[index].post("/api/documents", json=body)
        assert answer.status_code in (200, 202), answer.text

    try:
        return sustained(send, texts, senders, seconds)
    finally:
        for http in https:
            http.close()


def client_throughput(client: Client, texts: list[str], senders: int, seconds: float) -> float:
    """The same through ``Client.submit``: ``senders`` threads sharing one Client,
    as the server's threads do."""

    def send(index: int, text: str) -> None:
        client.submit(text, task="classify", model=MODEL)

    return sustained(send, texts, senders, seconds)


def sustained(
    send: Callable[[int, str], None], texts: list[str], senders: int, seconds: float
) -> float:
    """Calls of ``send(sender, text)`` completed per second by ``senders`` threads
    calling it back to back for ``seconds``."""
    done = [0] * senders
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            send(index, texts[(index + done[index] * senders) % len(texts)])
            done[index] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(loop, range(senders)))
    return sum(done) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="documents per second")
    parser.add_argument("--count", type=int, default=400, help="documents, half each way")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput run")
    parser.add_argument("--senders", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds of each arm")
    parser.add_argument("--workers", type=int, default=1, help="docqueue serve --workers")
    parser.add_argument("--skip-latency", action="store_true", help="throughput only")
    args = parser.parse_args(argv)

    from docqueue.testing import build_classifier

    texts = load_corpus(SAMPLE)
    with tempfile.TemporaryDirectory() as tmp, services(Settings(), Path(tmp)) as settings:
        directory = Path(tmp)
        model_dir = build_classifier(directory / "model", texts)
        workers = LocalWorkers(settings, {MODEL: str(model_dir)}, log_dir=directory, name="w")
        server = None
        try:
            workers.processes[0].wait_ready()
            server = start_server(settings, directory / "serve.log", args.workers)
            url = server.url
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with Client(settings) as client, httpx.Client(base_url=url, headers=headers) as http:
                latency(http, client, texts, args.rate, 20)  # warm-up
                if not args.skip_latency:
                    timings = latency(http, client, texts, args.rate, args.count)
                    report(timings, settings, args)
                rates(url, server.proc.pid, client, texts, args)
        finally:
            if server is not None:
                server.stop()
            for worker in workers.processes:
                worker.kill()


def rates(
    url: str, server: int, client: Client, texts: list[str], args: argparse.Namespace
) -> None:
    """The sustained rates, HTTP and Client alternately, their ratio, and the CPU
    time the ``server`` process (with its children) spent per HTTP request."""
    print(
        f"sustained single-document submissions, {args.senders} senders, "
        f"{args.seconds:g} s a round, docqueue serve --workers {args.workers}:"
    )
    for round_ in range(args.rounds):
        cpu_before, started = cpu_seconds(server), time.perf_counter()
        http = throughput(url, texts, args.senders, args.seconds)
        requests = http * (time.perf_counter() - started)
        cpu_after = cpu_seconds(server)
        direct = client_throughput(client, texts, args.senders, args.seconds)
        cpu = ""
        if cpu_before is not None and cpu_after is not None:
            cpu = f" (server CPU {(cpu_after - cpu_before) / requests * 1000:.2f} ms a request)"
        print(
            f"round {round_ + 1}: HTTP {http:.0f}/s{cpu}, Client.submit {direct:.0f}/s, "
            f"ratio {http / direct:.2f}"
        )


def report(timings: dict[str, list[float]], settings: Settings, args: argparse.Namespace) -> None:
    database = settings.database().split(":")[0]
    print(f"{os.cpu_count()} CPUs; database {database}; {args.rate:g} documents/s, {args.count}")
    got = {arm: percentiles(values) for arm, values in timings.items()}
    print(f"{'ms':8} {'p50':>8} {'p95':>8} {'p99':>8}")
    for arm in ("client", "http"):
        print(f"{arm:8}" + "".join(f" {got[arm][p] * 1000:8.1f}" for p in ("p50", "p95", "p99")))
    print(
        f"{'added':8}"
        + "".join(
            f" {(got['http'][p] - got['client'][p]) * 1000:8.1f}" for p in ("p50", "p95", "p99")
        )
    )


if __name__ == "__main__":
    main()
