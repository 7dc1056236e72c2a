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
import socket
import threading
import time
import uuid
from pathlib import Path
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
from docqueue.worker.models import CAUSAL_LM, SEQ2SEQ, LoadedModel, load_model
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
        self.channel.basic_qos(0, c.app.docqueue_settings.interactive_prefetch, False)
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


def peak_host_bytes() -> int | None:
    """This process's peak resident memory (VmHWM).  Not getrusage's ru_maxrss: on
    Linux a child inherits its parent's maximum across fork and exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def peak_gpu_bytes() -> int | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def limits_for(settings: Settings, model: LoadedModel) -> Limits:
    budget = settings.token_budget or _budget(model)
    return Limits(budget, settings.max_batch_rows, settings.max_new_tokens_cap)


def _budget(model: LoadedModel) -> int:
    """Default batch budget in the runner's cost unit (padded tokens, plus new tokens
    for generation).

    CPU: small enough that a batch of a base-size encoder takes about a second, so a
    single document never waits long behind one; generative families get four times
    more, since each decoding step costs nearly the same for a batch as for one row.
    GPU: half of the free memory, at a generous estimate of the bytes a token holds
    (keys and values of every layer, times four for activations and headroom)."""
    generative = model.family in (SEQ2SEQ, CAUSAL_LM)
    if model.device.type != "cuda":
        return CPU_TOKEN_BUDGET * (4 if generative else 1)
    import torch

    config = model.model.config
    hidden = _first(config, "hidden_size", "d_model", "n_embd", default=1024)
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", default=24)
    if getattr(config, "is_encoder_decoder", False):
        layers += _first(config, "decoder_layers", "num_decoder_layers", default=layers)
    itemsize = next(model.model.parameters()).element_size()
    per_token = hidden * layers * 2 * itemsize * 4
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(CPU_TOKEN_BUDGET, int(free * 0.5 / per_token))


def _first(config: Any, *names: str, default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


#: Below this many parameters a model runs faster on one CPU thread: each op is so
#: small that handing it to a thread team costs more than it saves, and the intake and
#: writer threads need the other core (measured on 2 cores: a tiny BART generates in
#: 100 ms on one thread, 160 ms on two, from a worker thread; the micro classifier
#: runs 5,538 docs/s offline on one thread, 3,922 on two).  Two threads did speed up
#: tiny generative models in a bare process (+20%), but not in a worker (two threads,
#: OpenMP spinning up to 1,000 times): summarize end to end fell from 468 to 415
#: docs/s and its idle p50 latency rose from 98 to 209 ms, so small models keep one.
SMALL_MODEL_PARAMETERS = 5_000_000


def load_runners(settings: Settings) -> tuple[dict[str, LoadedModel], dict[str, dict[str, Runner]]]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    loaded = {name: load_model(name, source, settings) for name, source in settings.models.items()}
    set_cpu_threads(settings, list(loaded.values()))
    runners = {}
    for name, model in loaded.items():
        limits = limits_for(settings, model)
        runners[name] = runners_for(model, limits)
        if name in settings.runners:
            custom = custom_runner(settings.runners[name])
            runners[name][custom.task] = custom(model, limits)
    return loaded, runners


def set_cpu_threads(settings: Settings, models: list[LoadedModel]) -> None:
    """torch's intra-op threads for CPU workers: the setting, else one thread for
    small models and torch's default (all cores) for the rest."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
        return
    on_cpu = [m for m in models if m.device.type == "cpu"]
    if on_cpu and all(
        sum(p.numel() for p in m.model.parameters()) < SMALL_MODEL_PARAMETERS for m in on_cpu
    ):
        torch.set_num_threads(1)


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
