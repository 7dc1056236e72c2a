"""The Celery worker process: one device, the configured models, the engine.

It is a plain Celery worker (solo pool: CUDA does not survive fork) whose task
``docqueue.batch`` has a custom execution strategy: instead of running one task per
message, the strategy hands each message to the :class:`Engine`, which buffers their
documents and acks the messages itself once their rows are committed.  Celery still
owns the connection, prefetch, reconnects, remote control and signals.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import socket
import threading
import time
import uuid
from typing import Any

from celery import Celery, Task, bootsteps
from celery.utils.functional import noop
from kombu import Consumer, Exchange, Queue

from docqueue.broker import make_celery, redis_client
from docqueue.config import Settings, redact
from docqueue.db import describe, make_engine, migrate
from docqueue.db.workers import beat
from docqueue.protocol import TASK_NAME, bulk_queue, done_channel, interactive_queue
from docqueue.worker.engine import Engine
from docqueue.worker.models import LoadedModel, load_model
from docqueue.worker.runners import Limits, Runner, runners_for
from docqueue.worker.store import SqlStore

log = logging.getLogger(__name__)

#: Default batch budget in padded tokens when the device does not suggest one.
CPU_TOKEN_BUDGET = 8192


def intake_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery execution strategy: every message goes to the engine, undecoded."""
    engine: Engine = app.docqueue_engine  # type: ignore[attr-defined]
    receive = engine.receive

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any):
        receive(message)

    return on_message


class BatchTask(Task):
    name = TASK_NAME
    Strategy = "docqueue.worker.service:intake_strategy"
    typing = False

    def run(self, *args: Any, **kwargs: Any) -> None:  # never called: the strategy takes over
        raise RuntimeError("docqueue.batch messages are handled by the worker's engine")


class EngineBridge(bootsteps.StartStopStep):
    """Connects the engine to Celery's consumer.

    * Interactive lanes get a consumer of their own, on their own channel with their
      own prefetch, so a backend's single document is taken at once even while bulk
      messages fill the task consumer's prefetch.
    * Acks happen on the engine's writer thread.  When the prefetch limit was reached
      the event loop stops polling Redis and sleeps until its next timer; a byte on a
      pipe it watches wakes it at once, so freed prefetch is used immediately.
    * On warm shutdown: stop consuming, let the engine finish what it holds, and only
      then let Celery close the channels (which returns anything still unacked).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self.writer, False)
        self.channel: Any = None
        self.consumer: Consumer | None = None

    def start(self, c: Any) -> None:
        engine: Engine = c.app.docqueue_engine
        lanes = [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in c.app.docqueue_lanes
        ]
        self.channel = c.connection.channel()
        self.channel.basic_qos(0, c.app.docqueue_settings.prefetch_messages, False)
        self.consumer = Consumer(
            self.channel, lanes, on_message=engine.receive_interactive, accept=["json"]
        )
        self.consumer.consume()

    def stop(self, c: Any) -> None:
        self._cancel(self.consumer)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        hub.add_reader(self.reader, self._empty_pipe)
        c.app.docqueue_engine.wake_consumer = self._wake

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up already pending is enough
            os.write(self.writer, b"!")

    def _empty_pipe(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.reader, 4096)

    def shutdown(self, c: Any) -> None:
        self._cancel(self.consumer)
        self._cancel(c.task_consumer)
        engine: Engine = c.app.docqueue_engine
        engine.drain(c.app.docqueue_settings.shutdown_grace)
        if self.channel is not None:
            try:
                self.channel.close()  # returns whatever is still unacked
            except Exception as exc:
                log.debug("closing the interactive channel: %s", exc)

    @staticmethod
    def _cancel(consumer: Any) -> None:
        if consumer is not None:
            try:
                consumer.cancel()
            except Exception as exc:  # connection already gone
                log.debug("cancel on shutdown: %s", exc)


class Heartbeat(threading.Thread):
    def __init__(self, engine: Engine, db: Any, settings: Settings, info: dict[str, Any]) -> None:
        super().__init__(name="docqueue-heartbeat", daemon=True)
        self.engine = engine
        self.db = db
        self.settings = settings
        self.info = info
        self.stopping = threading.Event()

    def run(self) -> None:
        failing = False
        while True:
            stopping = self.stopping.is_set()
            try:
                with self.db.begin() as conn:
                    beat(
                        conn,
                        documents=self.engine.documents_done,
                        stopped=stopping,
                        stats=self._stats(),
                        **self.info,
                    )
                failing = False
            except Exception as exc:  # the database may be away; keep serving
                if not failing:
                    log.warning("heartbeat failed: %s", str(exc).splitlines()[0])
                failing = True
            if stopping:
                return
            self.stopping.wait(self.settings.heartbeat_interval)

    def _stats(self) -> dict[str, int | None]:
        return {
            "batches": self.engine.batches_run,
            "padded_tokens": self.engine.padded_tokens,
            "peak_host_bytes": peak_host_bytes(),
            "peak_gpu_bytes": peak_gpu_bytes(),
        }


def peak_host_bytes() -> int:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_gpu_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def limits_for(settings: Settings, device: Any) -> Limits:
    budget = settings.token_budget or _device_budget(device)
    return Limits(budget, settings.max_batch_rows, settings.max_new_tokens_cap)


def _device_budget(device: Any) -> int:
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    # About 1/4 of free memory at ~64 KiB of activations per padded token (a base-size
    # model in half precision with headroom); never below the CPU default.
    return max(CPU_TOKEN_BUDGET, int(free / 4 / 65536))


def load_runners(settings: Settings) -> tuple[dict[str, LoadedModel], dict[str, dict[str, Runner]]]:
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded = {name: load_model(name, source, settings) for name, source in settings.models.items()}
    runners = {}
    for name, model in loaded.items():
        limits = limits_for(settings, model.device)
        runners[name] = runners_for(model, limits)
        if name in settings.runners:
            custom = custom_runner(settings.runners[name])
            runners[name][custom.task] = custom(model, limits)
    return loaded, runners


def custom_runner(path: str) -> type[Runner]:
    module, _, attr = path.partition(":")
    cls = getattr(importlib.import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise ValueError(f"{path} is not a docqueue Runner class")
    return cls


def bulk_queues(runners: dict[str, dict[str, Runner]]) -> list[str]:
    return [bulk_queue(task, name) for name, tasks in runners.items() for task in tasks]


def run_worker(settings: Settings, redis_url: str, loglevel: str = "INFO") -> int:
    """Load the models, then serve until shut down.  Returns the exit code."""
    loaded, runners = load_runners(settings)
    device = str(next(iter(loaded.values())).device) if loaded else "cpu"
    hostname = socket.gethostname()
    worker_id = f"{hostname}:{os.getpid()}:{device}:{uuid.uuid4().hex[:6]}"

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
    )
    app = make_celery(settings, redis_url)
    app.docqueue_engine = engine  # type: ignore[attr-defined]
    app.docqueue_settings = settings  # type: ignore[attr-defined]
    app.docqueue_lanes = [interactive_queue(name) for name in runners]  # type: ignore[attr-defined]
    app.register_task(BatchTask())
    app.steps["consumer"].add(EngineBridge)

    info = {
        "worker_id": worker_id,
        "hostname": hostname,
        "pid": os.getpid(),
        "device": device,
        "models": {
            name: {"source": m.source, "tasks": list(runners[name])} for name, m in loaded.items()
        },
        "started_at": time.time(),
    }
    heartbeat = Heartbeat(engine, db, settings, info)
    engine.start()
    heartbeat.start()
    queues = bulk_queues(runners)
    log.warning(
        "worker %s: broker %s, database %s, queues %s",
        worker_id,
        redact(redis_url),
        describe(db),
        ", ".join(app.docqueue_lanes + queues),  # type: ignore[attr-defined]
    )
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
    worker.on_consumer_ready = _ready_logger(worker.on_consumer_ready)
    try:
        worker.start()
    finally:
        engine.stop()
        heartbeat.stopping.set()
        heartbeat.join(timeout=5)
        db.dispose()
    return int(worker.exitcode or 0)


def _ready_logger(previous: Any) -> Any:
    def on_ready(consumer: Any) -> None:
        log.info("worker ready")
        (previous or noop)(consumer)

    return on_ready
