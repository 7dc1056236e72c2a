"""The fleet as the core sees it: which live workers serve a model and which tasks
they do (what submit checks, and what a job waiting with no worker says), the
models served, the overview (:mod:`.overview`) and the documents waiting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from docqueue.core.errors import UnknownModel
from docqueue.core.overview import Overview, read_overview
from docqueue.core.services import Services
from docqueue.db import jobs as ledger
from docqueue.db.workers import WorkerState, every_worker, workers_serving
from docqueue.tasks import declared


def ago(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: how long ago, for a person."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@dataclass(frozen=True)
class Coverage:
    """Which live workers serve a model, and which of them do a task."""

    model: str
    task: str
    #: Live workers serving the model that do the task, newest heartbeat first.
    doing: list[WorkerState]
    #: The tasks the model's live workers do (empty: no live worker serves it).
    tasks: list[str]
    #: When any worker that ever served the model was last heard of (None: never).
    last_seen: float | None

    def refusal(self, params: dict[str, Any]) -> str | None:
        """Why the live workers doing the task cannot take ``params`` (zero-shot
        labels on a classifier with its own head): one line, when every one of them
        says so by its model's family; None when one can, or a worker does not say
        its family (an earlier release)."""
        families = {w.models[self.model].get("family") for w in self.doing}
        if not families or None in families:
            return None
        declaration = declared(self.task)
        found = [declaration.refusal(str(f), params, self.model) for f in families]
        return found[0] if all(found) else None

    def problem(self, now: float | None = None, shown: str | None = None) -> str | None:
        """None when a live worker does the task; else one line saying why not
        (naming the model ``shown``, the name a person gave it, if given)."""
        if self.doing:
            return None
        model = shown or self.model
        if self.tasks:
            return (
                f"no live worker does {self.task} for model {model} "
                f"(its live workers do {', '.join(self.tasks)})"
            )
        now = time.time() if now is None else now
        seen = (
            "never seen" if self.last_seen is None else f"last seen {ago(now - self.last_seen)} ago"
        )
        return f"no live worker serves model {model} ({seen})"


@dataclass(frozen=True)
class ServedModel:
    """A model that live workers serve: the tasks they do with it, how many of them
    serve it and on which devices."""

    name: str
    tasks: list[str]
    workers: int
    devices: list[str]


def workers(services: Services, model: str) -> list[WorkerState]:
    """Every worker that ever served ``model``, newest heartbeat first."""
    with services.db.connect() as conn:
        return workers_serving(conn, model)


def coverage(services: Services, model: str, task: str, *, fresh: bool = True) -> Coverage:
    """Which live workers serve ``model`` and which of them do ``task``: what
    :meth:`Coverage.problem` reports when none does (a typo in the model name, a model
    that cannot do the task, workers that are down).  ``fresh=False`` may reuse what
    was read in the last second (submit's hot path)."""
    now = time.time()
    cached = services.workers_read.get(model)
    if fresh or cached is None or now - cached[0] > 1.0:
        cached = services.workers_read[model] = (now, workers(services, model))
    seen = cached[1]
    live = [w for w in seen if w.alive(now, services.settings.heartbeat_timeout)]
    doing = [w for w in live if _does(w, model, task)]
    tasks = sorted({t for w in live for t in w.models[model].get("tasks", [])})
    return Coverage(model, task, doing, tasks, seen[0].last_seen if seen else None)


def known_model(services: Services, model: str, task: str) -> None:
    """Refuse (:class:`UnknownModel`) a model no worker has ever served and
    ``DOCQUEUE_MODELS`` does not declare (a typo, most likely).  A declared model is
    accepted before any worker served it: with workers scaled to zero, the first job
    is what makes an autoscaler start one.  A model whose workers are down right now
    is accepted too: its documents wait in the queue."""
    settings = services.settings
    if model in settings.models:
        return
    found = coverage(services, model, task, fresh=False)
    if found.last_seen is not None or found.doing:
        return
    served = {name for worker in every_worker_seen(services) for name in worker.models}
    raise UnknownModel(model, sorted(served | set(settings.models)))


def every_worker_seen(services: Services) -> list[WorkerState]:
    """Every worker that ever beat, live or not, newest heartbeat first."""
    with services.db.connect() as conn:
        return every_worker(conn)


def models(services: Services) -> list[ServedModel]:
    """The models live workers serve, by name, with the tasks they do."""
    now = time.time()
    live = [
        w for w in every_worker_seen(services) if w.alive(now, services.settings.heartbeat_timeout)
    ]
    served = []
    for name in sorted({name for w in live for name in w.models}):
        serving = [w for w in live if name in w.models]
        served.append(
            ServedModel(
                name,
                tasks=sorted({t for w in serving for t in w.models[name].get("tasks", [])}),
                workers=len(serving),
                devices=sorted({w.device for w in serving}),
            )
        )
    return served


def overview(services: Services) -> Overview:
    """Messages waiting per queue, the dead letters and the live workers, read now:
    what ``docqueue status``, the API's /metrics and its page show.  Needs Redis."""
    return read_overview(services.redis, services.db, services.settings)


def documents_waiting(services: Services) -> dict[str, int]:
    """Documents not computed yet, per model, over the whole fleet: queued in Redis,
    held by workers, or still being added (what /metrics exports for an
    autoscaler).  Models with none are left out."""
    with services.db.connect() as conn:
        return ledger.pending_by_model(conn)


def _does(worker: WorkerState, model: str, task: str) -> bool:
    """Whether the worker's heartbeat says it does ``task`` with ``model`` (a row that
    does not list its tasks is taken at its word for any)."""
    tasks = worker.models[model].get("tasks")
    return tasks is None or task in tasks
