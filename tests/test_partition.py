"""A partition drill, as workers on other hosts meet one: two workers, each in a
network namespace of its own, reach Redis and PostgreSQL only through a veth pair
and a userspace proxy that adds 20 ms each way and resets a share of the
connections; one worker's link is taken down for 30 s in the middle of a job, then
brought back.  Nothing lost, nothing doubled, the job finishes, and the cut worker
comes back by itself.

Needs root (network namespaces) and PostgreSQL (``DOCQUEUE_TEST_DATABASE_URL``: a
database a partition can cut; a SQLite file cannot be).  Where namespaces cannot be
made the drill is skipped, or fails with the reason when ``DOCQUEUE_REQUIRE_NETNS``
is set (CI sets it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import PG_URL, TESTS, TIMING, make_settings, wait_until
from netns import Namespace, unavailable
from proxy import Proxy
from redis_server import free_port
from sqlalchemy import func, select
from test_outages import rows_per_document

from docqueue.broker import redis_client
from docqueue.db.schema import Result
from docqueue.launcher import EmbeddedRedis, WorkerProcess, worker_env
from docqueue.producer.client import Client, JobHandle

pytestmark = [pytest.mark.slow, TIMING]

#: Each way, on every connection to Redis and PostgreSQL.
DELAY = 0.020
#: The share of connections reset after 1 to 10 s.
RESET_SHARE = 0.2


@pytest.fixture
def namespaces():
    problem = unavailable()
    if problem:
        message = f"partition drill: {problem}"
        if os.environ.get("DOCQUEUE_REQUIRE_NETNS"):
            pytest.fail(f"{message}; DOCQUEUE_REQUIRE_NETNS is set (run as root with iproute2)")
        pytest.skip(message)
    made: list[Namespace] = []
    try:
        for index in range(2):
            made.append(Namespace(index))
        yield made
    finally:
        for namespace in made:
            namespace.close()


def stuck(client: Client, redis_url: str, job: JobHandle) -> str:
    """Where a job that does not finish stands: its progress, and what Redis holds."""
    broker = redis_client(redis_url)
    try:
        held = f"queued {broker.llen('docqueue.classify.tiny')}, unacked {broker.hlen('unacked')}"
    finally:
        broker.close()
    return f"{job.progress()}; {held}"


def rate(job: JobHandle, seconds: float = 5.0) -> float:
    """Documents a second over ``seconds``, once the job's first 500 are done."""
    wait_until(lambda: job.progress().done >= 500, 120, "the job to be under way")
    first, start = job.progress().done, time.monotonic()
    time.sleep(seconds)
    return (job.progress().done - first) / (time.monotonic() - start)


@pytest.mark.skipif(not PG_URL, reason="a partition drill needs PostgreSQL")
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_across_a_lossy_network_and_a_30_second_partition(
    namespaces, database_url, tiny_classifier, sample_texts, tmp_path: Path
):
    redis = EmbeddedRedis(str(tmp_path / "redis"), port=free_port())
    proxies: list[Proxy] = []
    workers: list[WorkerProcess] = []
    try:
        for index, namespace in enumerate(namespaces):
            to_redis, to_sql = (
                Proxy.before(url, host=namespace.host_ip, delay=0.0, seed=index)
                for url in (redis.url, database_url)
            )
            proxies += [to_redis, to_sql]
            remote = make_settings(to_redis.url(redis.url), to_sql.url(database_url))
            argv = [
                sys.executable,
                "-m",
                "docqueue",
                "worker",
                "--model",
                f"tiny={tiny_classifier}",
            ]
            env = worker_env(remote, {"PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1"})
            log = tmp_path / f"worker-{index}.log"
            workers.append(WorkerProcess(namespace.argv(argv), env, database_url, log))
        for worker in workers:
            worker.wait_ready()
        pids = [w.pid for w in workers]

        def alive() -> None:
            for worker in workers:
                assert worker.proc.poll() is None, f"a worker exited:\n{worker.failure()}"

        with Client(make_settings(redis.url, database_url)) as client:
            docs = (sample_texts * 100)[:20_000]
            # The same path without the added delay and resets: the baseline.
            first = client.submit_many(docs[:6_000], task="classify", model="tiny")
            baseline = rate(first, seconds=3.0)
            first.wait(timeout=300)
            for proxy in proxies:
                proxy.delay, proxy.reset_share = DELAY, RESET_SHARE
            job = client.submit_many(docs, task="classify", model="tiny")
            slow = rate(job)
            cut = workers[0]
            namespaces[0].cut()
            cut_at = time.monotonic()
            time.sleep(30)
            alive()
            done_while_cut = job.progress().done
            namespaces[0].restore()
            restored = time.time()

            def finished() -> bool:
                alive()
                return job.progress().finished

            try:
                wait_until(finished, 240, "the job to finish")
            except TimeoutError:
                raise AssertionError(f"stuck: {stuck(client, redis.url, job)}") from None
            elapsed = time.monotonic() - cut_at
            found = rows_per_document(client, job.id)
            assert found == {"lost": 0, "doubled": 0}
            alive()
            assert [w.pid for w in workers] == pids
            with client.db.connect() as conn:
                after = conn.execute(
                    select(func.count())
                    .select_from(Result)
                    .where(
                        Result.job_id == job.id,
                        Result.worker_id == cut.worker_id,
                        Result.finished_at > restored,
                    )
                ).scalar_one()
            assert after > 0, "the cut worker wrote nothing once its link was back"
        broker = redis_client(redis.url)
        wait_until(lambda: broker.hlen("unacked") == 0, 60, "every message to be acked")
        broker.close()
        resets = sum(p.resets for p in proxies)
        print(
            f"\npartition drill: {baseline:,.0f} docs/s through the proxies without delay, "
            f"{slow:,.0f} docs/s at {DELAY * 1000:.0f} ms each way with {RESET_SHARE:.0%} of "
            f"connections reset ({resets} resets); a 30 s cut of one worker: "
            f"{done_while_cut:,} of {len(docs):,} done by its end, the job finished "
            f"{elapsed:.0f}s after the cut began; the cut worker (pid {cut.pid}) wrote {after:,} "
            f"rows after its link came back; lost {found['lost']}, doubled {found['doubled']}"
        )
    finally:
        for worker in workers:
            worker.kill()
        for proxy in proxies:
            proxy.close()
        redis.shutdown()
