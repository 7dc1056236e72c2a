"""What the engine knows about each cohort of documents while it has some in flight:
their validated parameters, how many are in flight, and (after running out of
memory) the most rows and cost a batch of the cohort may have.

Parameters and counts are kept only while documents are in flight, so a worker that
sees many parameter combinations over its life does not accumulate state for each.
Limits learned from running out of memory outlive that (in a small LRU): a queue that
drains between two arrivals must not make the worker run out of memory again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from docqueue.worker.batcher import Shape
from docqueue.worker.runners import Runner
from docqueue.worker.work import CohortKey

#: Cohorts whose out-of-memory limits are remembered after their documents are done.
REMEMBERED_LIMITS = 256


@dataclass
class _Cohort:
    params: dict[str, Any]
    in_flight: int = 0


class Cohorts:
    """Per-cohort state, safe to use from the engine's threads."""

    def __init__(self) -> None:
        self._cohorts: dict[CohortKey, _Cohort] = {}
        #: (rows, cost) a batch of the cohort stays under after an out-of-memory error.
        self._limits: OrderedDict[CohortKey, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def enter(self, key: CohortKey, params: dict[str, Any], documents: int) -> None:
        """``documents`` of the cohort are admitted."""
        with self._lock:
            cohort = self._cohorts.setdefault(key, _Cohort(params))
            cohort.in_flight += documents

    def settle(self, key: CohortKey, documents: int) -> None:
        """``documents`` of the cohort are done; forget it once none is in flight."""
        with self._lock:
            cohort = self._cohorts.get(key)
            if cohort is None:
                return
            cohort.in_flight -= documents
            if cohort.in_flight <= 0:
                del self._cohorts[key]

    def params(self, key: CohortKey) -> dict[str, Any]:
        return self._cohorts[key].params

    def limit(self, key: CohortKey) -> tuple[int, int] | None:
        with self._lock:
            return self._limits.get(key)

    def shape(self, key: CohortKey, runner: Runner) -> Shape:
        """The runner's batch shape for the cohort, within any limit learned."""
        shape = runner.shape(self.params(key))
        limit = self.limit(key)
        if limit is None:
            return shape
        rows, cost = limit
        return Shape(shape.cost, min(shape.budget, cost), min(shape.max_rows, rows))

    def shrink(self, key: CohortKey, runner: Runner, rows: int, longest: int) -> Shape:
        """A batch of ``rows`` documents up to ``longest`` tokens ran out of memory:
        remember half of it, in rows and in cost, as the cohort's limit (the halves
        it is retried as are the size that then works).  Returns the new shape."""
        shape = runner.shape(self.params(key))
        cost = shape.cost(rows, longest)
        with self._lock:
            max_rows, budget = self._limits.get(key) or (shape.max_rows, shape.budget)
            self._limits[key] = (min(max_rows, max(1, rows // 2)), min(budget, max(1, cost // 2)))
            self._limits.move_to_end(key)
            while len(self._limits) > REMEMBERED_LIMITS:
                self._limits.popitem(last=False)
        return self.shape(key, runner)
