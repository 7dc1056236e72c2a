"""What the engine knows about each group of documents while it has some in flight:
their validated parameters, how many are in flight, and (after running out of
memory) the most rows and cost a batch of the group may have.

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
from docqueue.worker.work import GroupKey

#: Groups whose out-of-memory limits are remembered after their documents are done.
REMEMBERED_LIMITS = 256


@dataclass
class _Group:
    params: dict[str, Any]
    in_flight: int = 0


class Groups:
    """Per-group state, safe to use from the engine's threads."""

    def __init__(self) -> None:
        self._groups: dict[GroupKey, _Group] = {}
        #: (rows, cost) a batch of the group stays under after an out-of-memory error.
        self._limits: OrderedDict[GroupKey, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def enter(self, key: GroupKey, params: dict[str, Any], documents: int) -> None:
        """``documents`` of the group are admitted."""
        with self._lock:
            group = self._groups.setdefault(key, _Group(params))
            group.in_flight += documents

    def settle(self, key: GroupKey, documents: int) -> None:
        """``documents`` of the group are done; forget it once none is in flight."""
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                return
            group.in_flight -= documents
            if group.in_flight <= 0:
                del self._groups[key]

    def params(self, key: GroupKey) -> dict[str, Any]:
        return self._groups[key].params

    def limit(self, key: GroupKey) -> tuple[int, int] | None:
        with self._lock:
            return self._limits.get(key)

    def shape(self, key: GroupKey, runner: Runner) -> Shape:
        """The runner's batch shape for the group, within any limit learned."""
        shape = runner.shape(self.params(key))
        limit = self.limit(key)
        if limit is None:
            return shape
        rows, cost = limit
        return Shape(shape.cost, min(shape.budget, cost), min(shape.max_rows, rows))

    def shrink(self, key: GroupKey, runner: Runner, rows: int, longest: int) -> Shape:
        """A batch of ``rows`` documents up to ``longest`` tokens ran out of memory:
        remember half of it, in rows and in cost, as the group's limit (the halves
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
