"""Running a batch through the model, and what to do when it fails.

Out of memory: the batch is halved and the cohort remembers the size that works, so
the next batches are cut before they fail.  Any other error: the batch is split
until the document that fails is alone; it gets ``max_attempts`` tries, then an
error row, and every other document runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from docqueue.errors import one_line
from docqueue.logs import jobs_extra
from docqueue.worker.batcher import Buffer
from docqueue.worker.cohorts import Cohorts
from docqueue.worker.metrics import WorkerMetrics
from docqueue.worker.runners import Runner
from docqueue.worker.work import CohortKey, Computed, WorkItem

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        runners: dict[str, dict[str, Runner]],
        cohorts: Cohorts,
        buffer: Buffer[CohortKey, WorkItem],
        max_attempts: int,
        metrics: WorkerMetrics,
    ) -> None:
        self.runners = runners
        self.metrics = metrics
        self.cohorts = cohorts
        self.buffer = buffer
        self.max_attempts = max_attempts
        self.batches_run = 0
        #: Rows x longest input over every batch run.
        self.padded_tokens = 0

    def run(self, key: CohortKey, items: list[WorkItem]) -> Iterator[Computed]:
        """Run a batch; on out-of-memory halve it, on an error isolate the culprit."""
        _, model, task, _ = key
        runner = self.runners[model][task]
        params = self.cohorts.params(key)
        pending = [items]
        while pending:
            batch = pending.pop()
            limit = self.cohorts.limit(key)
            if limit is not None and len(batch) > limit[0]:  # cut before an earlier OOM
                half = len(batch) // 2
                pending += [batch[half:], batch[:half]]
                continue
            started = time.time()
            try:
                raw = runner.forward(runner.collate([i.features for i in batch]), params)
            except Exception as exc:
                pending.extend(self._after_failure(key, runner, batch, exc))
                if len(batch) == 1 and batch[0].failures >= self.max_attempts:
                    yield Computed(key, batch, error=_failure_message(exc, batch[0].failures))
                continue
            self.batches_run += 1
            self.padded_tokens += len(batch) * max(i.length for i in batch)
            host, ready = to_host(raw)
            finished = time.time()
            self.metrics.batch_ran(key, batch, started, finished)
            yield Computed(key, batch, host, started, finished, ready=ready)

    def _after_failure(
        self, key: CohortKey, runner: Runner, batch: list[WorkItem], exc: Exception
    ) -> list[list[WorkItem]]:
        """What to try next after ``batch`` failed."""
        oom = is_oom(exc)
        if oom:
            release_memory()
        if len(batch) > 1:
            half = len(batch) // 2
            if oom:
                shape = self.cohorts.shrink(key, runner, len(batch), max(i.length for i in batch))
                self.buffer.reshape(key, shape)
                log.warning(
                    "out of memory on %d documents; halving",
                    len(batch),
                    extra=jobs_extra(i.job for i in batch),
                )
            else:
                log.warning(
                    "batch of %d failed (%s); splitting",
                    len(batch),
                    one_line(exc),
                    extra=jobs_extra(i.job for i in batch),
                )
            return [batch[half:], batch[:half]]
        item = batch[0]
        item.failures += 1
        log.warning(
            "document %s/%d failed (attempt %d of %d): %s",
            item.job,
            item.seq,
            item.failures,
            self.max_attempts,
            one_line(exc),
            extra=jobs_extra([item.job]),
        )
        return [] if item.failures >= self.max_attempts else [batch]


def to_host(raw: Any) -> tuple[Any, Any]:
    """Start copying a forward's tensor to the host and return at once, with the CUDA
    event that marks the copy done (the writer thread waits on it, the compute thread
    goes on to the next batch).  Anything else is returned as it is."""
    import torch

    if isinstance(raw, torch.Tensor) and raw.is_cuda:
        host = raw.to("cpu", non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready
    return raw, None


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failure_message(exc: Exception, attempts: int) -> str:
    what = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {one_line(exc)}"
    return f"model failed on this document {attempts} times: {what}"
