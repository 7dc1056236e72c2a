"""When a batch flushes, and which buffered documents it holds.

:func:`plan` is the policy: a pure function of the buffered items (their length in
tokens, arrival time and lane), the clock and the batch shapes the runners allow.
:class:`Buffer` holds the items and applies it, thread-safely.

The rules:

* Only items of one cohort (lane, model, task, parameters) share a batch.
* A cohort is *due* when a full batch can be formed from it (its cost reaches the
  budget or its rows the row limit) or its oldest item has waited ``max_wait``.
* Interactive cohorts go first, then bulk; within a lane, the cohort with the oldest
  item.  Nothing due: wait until the earliest deadline.
* The batch always contains the cohort's oldest item (so nothing starves and
  messages complete in roughly arrival order), plus neighbours of similar length
  from a window of the oldest items, grown while the padded cost fits the budget:
  sorting by length before padding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Pending(Protocol):
    """What the policy sees of a buffered item."""

    @property
    def length(self) -> int: ...

    @property
    def arrived(self) -> float: ...


@dataclass(frozen=True)
class Shape:
    """How a cohort's batches are measured: ``cost(rows, longest)`` in the budget's unit
    (padded tokens for an encoder, prompt plus new tokens per row for a decoder)."""

    cost: Callable[[int, int], int]
    budget: int
    max_rows: int


def padded_tokens(rows: int, longest: int) -> int:
    return rows * longest


@dataclass(frozen=True)
class Cohort:
    items: Sequence[Pending]  # in arrival order
    shape: Shape
    interactive: bool = False


#: A cohort's key (the engine's is (lane, model, task, parameters)).
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Flush(Generic[K]):
    key: K
    #: Positions in the cohort's item sequence, sorted.
    positions: list[int]


@dataclass(frozen=True)
class Wait:
    #: Clock time at which a cohort becomes due; None: nothing buffered.
    until: float | None


#: How many batches' worth of the oldest items a batch is chosen from: wider sorts
#: better, narrower completes messages (and acks them) sooner.  Measured on CPU with
#: tiny models: 4 padded generation prompts 20% more than a global sort and ran 14%
#: slower; 16 comes within 6% of it.  A worker's prefetch bounds the buffer anyway.
WINDOW_BATCHES = 16


def plan(cohorts: Mapping[K, Cohort], now: float, max_wait: float) -> Flush[K] | Wait:
    """The next batch to run, or how long to wait for one."""
    due: list[tuple[bool, float, K]] = []
    next_deadline: float | None = None
    for key, cohort in cohorts.items():
        if not cohort.items:
            continue
        oldest = cohort.items[0].arrived
        deadline = oldest + max_wait
        if now >= deadline or _can_fill(cohort):
            due.append((not cohort.interactive, oldest, key))
        elif next_deadline is None or deadline < next_deadline:
            next_deadline = deadline
    if not due:
        return Wait(next_deadline)
    _, _, key = min(due, key=lambda d: (d[0], d[1]))
    return Flush(key, select(cohorts[key]))


def _can_fill(cohort: Cohort) -> bool:
    shape = cohort.shape
    items = cohort.items
    if len(items) >= shape.max_rows:
        return True
    longest = 0
    for rows, item in enumerate(items, start=1):
        longest = max(longest, item.length)
        if shape.cost(rows, longest) >= shape.budget:
            return True
    return False


def select(cohort: Cohort) -> list[int]:
    """Positions of the batch: the oldest item and its nearest neighbours by length."""
    shape = cohort.shape
    items = cohort.items
    window = min(len(items), WINDOW_BATCHES * rows_fitting(shape, items[0].length))
    order = sorted(range(window), key=lambda i: (items[i].length, i))
    lengths = [items[i].length for i in order]
    lo = hi = order.index(0)
    longest = lengths[lo]
    rows = 1
    while rows < shape.max_rows:
        shorter = lengths[lo - 1] if lo > 0 else None
        longer = lengths[hi + 1] if hi + 1 < window else None
        # Padding an extra short row wastes (longest - its length); taking a longer
        # row pads every row already in by the difference.
        waste_short = longest - shorter if shorter is not None else None
        waste_long = rows * (longer - longest) if longer is not None else None
        if waste_short is not None and (waste_long is None or waste_short <= waste_long):
            if shape.cost(rows + 1, longest) > shape.budget:
                break
            lo -= 1
        elif longer is not None:
            if shape.cost(rows + 1, longer) > shape.budget:
                break
            hi += 1
            longest = longer
        else:
            break
        rows += 1
    return sorted(order[lo : hi + 1])


def rows_fitting(shape: Shape, length: int) -> int:
    """Most rows of ``length`` tokens one batch can hold (at least one)."""
    low, high = 1, shape.max_rows
    while low < high:
        mid = (low + high + 1) // 2
        if shape.cost(mid, length) <= shape.budget:
            low = mid
        else:
            high = mid - 1
    return low


T = TypeVar("T", bound=Pending)


class Buffer(Generic[K, T]):
    """Buffered items by cohort; the compute thread takes batches as :func:`plan` says."""

    def __init__(self, max_wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait = max_wait
        self._clock = clock
        self._cohorts: dict[K, list[T]] = {}
        self._shapes: dict[K, Shape] = {}
        self._interactive: dict[K, bool] = {}
        self._cond = threading.Condition()
        self._size = 0
        #: When set, every cohort is due now (shutdown: flush what is left).
        self.flush_all = False

    def __len__(self) -> int:
        return self._size

    def add(self, key: K, shape: Shape, items: Iterable[T], interactive: bool) -> None:
        with self._cond:
            cohort = self._cohorts.setdefault(key, [])
            before = len(cohort)
            cohort.extend(items)
            self._size += len(cohort) - before
            self._shapes[key] = shape
            self._interactive[key] = interactive
            self._cond.notify()

    def reshape(self, key: K, shape: Shape) -> None:
        with self._cond:
            if key in self._shapes:
                self._shapes[key] = shape

    def take(self, timeout: float, interactive_only: bool = False) -> tuple[K, list[T]] | None:
        """Block until a batch is due (or ``timeout`` passes); remove and return it."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                now = self._clock()
                decision = plan(
                    self._view(interactive_only),
                    float("inf") if self.flush_all else now,
                    self.max_wait,
                )
                if isinstance(decision, Flush):
                    return decision.key, self._remove(decision)
                wake = deadline if decision.until is None else min(deadline, decision.until)
                if now >= deadline:
                    return None
                self._cond.wait(max(0.0, wake - now))

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def remove(self, unwanted: Callable[[T], bool]) -> list[tuple[K, list[T]]]:
        """Take every buffered item ``unwanted`` says, by cohort (e.g. the documents
        of a job cancelled while they waited)."""
        removed: list[tuple[K, list[T]]] = []
        with self._cond:
            for key in list(self._cohorts):
                cohort = self._cohorts[key]
                gone = [item for item in cohort if unwanted(item)]
                if not gone:
                    continue
                removed.append((key, gone))
                kept = [item for item in cohort if not unwanted(item)]
                self._size -= len(gone)
                if kept:
                    self._cohorts[key] = kept
                else:
                    del self._cohorts[key]
        return removed

    def _view(self, interactive_only: bool = False) -> dict[K, Cohort]:
        return {
            key: Cohort(items, self._shapes[key], self._interactive[key])
            for key, items in self._cohorts.items()
            if items and (self._interactive[key] or not interactive_only)
        }

    def _remove(self, decision: Flush[K]) -> list[T]:
        cohort = self._cohorts[decision.key]
        chosen = set(decision.positions)
        batch = [cohort[i] for i in decision.positions]
        self._cohorts[decision.key] = [item for i, item in enumerate(cohort) if i not in chosen]
        if not self._cohorts[decision.key]:
            del self._cohorts[decision.key]
        self._size -= len(batch)
        return batch
