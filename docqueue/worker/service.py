"""The worker process: one device, the configured models, the engine, served by
Celery until shut down.

This module only wires: it loads the runners (:mod:`.loading`), builds the engine
(:mod:`.engine`) over the SQL store, hands Celery the consumer glue
(:mod:`.consumer`) and starts the heartbeat (:mod:`.heartbeat`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
import warnings

from celery.exceptions import SecurityWarning

from docqueue.broker import make_celery, redis_client
from docqueue.config import Settings, redact
from docqueue.db import describe, make_engine, migrate
from docqueue.protocol import done_channel, interactive_queue
from docqueue.webhooks import SenderThread
from docqueue.worker.consumer import BatchTask, EngineBridge
from docqueue.worker.engine import Engine
from docqueue.worker.heartbeat import Heartbeat
from docqueue.worker.ledger import SqlLedger
from docqueue.worker.loading import bulk_queues, load_runners
from docqueue.worker.metrics import WorkerMetrics, serve_metrics
from docqueue.worker.parent import watch_parent
from docqueue.worker.store import SqlStore

log = logging.getLogger(__name__)


def run_worker(settings: Settings, redis_url: str, loglevel: str = "INFO") -> int:
    """Load the models, then serve until shut down.  Returns the exit code."""
    watch_parent()  # before the models: a parent gone while they load is noticed too
    metrics = WorkerMetrics()
    if settings.metrics_port is not None:  # before the models: a port in use is said at once
        serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    loaded, runners = load_runners(settings)
    device = str(next(iter(loaded.values())).device) if loaded else "cpu"
    hostname = socket.gethostname()
    worker_id = f"{hostname}:{os.getpid()}:{device}:{uuid.uuid4().hex[:6]}"
    metrics.identify({name: list(tasks) for name, tasks in runners.items()}, worker_id, device)
    db = make_engine(settings.database())
    migrate(db)
    publisher = redis_client(redis_url)

    def notify(jobs: set[str]) -> None:
        pipe = publisher.pipeline(transaction=False)
        for job in jobs:
            pipe.publish(done_channel(job), "1")
        pipe.execute()

    engine = Engine(
        runners=runners,
        settings=settings,
        store=SqlStore(db),
        worker_id=worker_id,
        notify=notify,
        ledger=SqlLedger(db),
        metrics=metrics,
    )
    lanes = [interactive_queue(name) for name in runners]
    queues = bulk_queues(runners)
    app = make_celery(settings, redis_url)
    # A cold start holds the floor; the bridge raises it as the rate is measured.
    app.conf.worker_prefetch_multiplier = engine.hold.messages()
    app.docqueue_engine = engine
    app.docqueue_settings = settings
    app.docqueue_lanes = lanes
    app.register_task(BatchTask())
    app.steps["consumer"].add(EngineBridge)
    heartbeat = Heartbeat(
        engine,
        db,
        settings,
        {
            "worker_id": worker_id,
            "hostname": hostname,
            "pid": os.getpid(),
            "device": device,
            "models": {
                name: {
                    "source": m.source,
                    "tasks": list(runners[name]),
                    "family": m.family,
                    "fingerprint": m.fingerprint,
                }
                for name, m in loaded.items()
            },
            "started_at": time.time(),
        },
    )
    webhooks = SenderThread(db, settings)
    engine.start()
    heartbeat.start()
    webhooks.start()
    log.info(
        "worker %s: broker %s, database %s, queues %s",
        worker_id,
        redact(redis_url),
        describe(db),
        ", ".join(lanes + queues),
    )
    _quiet_root_advice()
    worker = app.Worker(
        hostname=f"docqueue-{os.getpid()}@{hostname}",
        pool="solo",
        concurrency=1,
        queues=queues,
        loglevel=loglevel,
        quiet=True,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        redirect_stdouts=False,
    )
    try:
        worker.start()
    finally:
        engine.stop()
        heartbeat.stop()
        webhooks.stop()
        metrics.close()
        db.dispose()
    return int(worker.exitcode or 0)


def _quiet_root_advice() -> None:
    """Celery warns a worker running as root to use ``--uid``, an option of its own
    command line that docqueue does not have.  docqueue accepts JSON messages only
    (what makes root dangerous in Celery is pickle), so say it plainly, once."""
    warnings.filterwarnings("ignore", category=SecurityWarning)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        log.info("running as root; a worker needs no privileges: run it as another user")
