"""What the engine remembers about a cohort after it ran out of memory."""

from __future__ import annotations

from typing import Any, cast

from docqueue.worker.batcher import Shape, padded_tokens
from docqueue.worker.cohorts import REMEMBERED_LIMITS, Cohorts
from docqueue.worker.runners import Runner


class FixedShape:
    """The one part of a runner ``Cohorts`` asks for: its batch shape."""

    def shape(self, params: dict[str, Any]) -> Shape:
        return Shape(padded_tokens, 64 * 128, 64)


KEY = ("bulk", "tiny", "classify", "{}")


def test_an_out_of_memory_limit_outlives_a_queue_that_drains() -> None:
    cohorts, runner = Cohorts(), cast(Runner, FixedShape())
    cohorts.enter(KEY, {}, 64)
    shape = cohorts.shrink(KEY, runner, rows=64, longest=100)
    assert (shape.max_rows, shape.budget) == (32, 3200)
    cohorts.settle(KEY, 64)  # every document done: the cohort is forgotten ...
    cohorts.enter(KEY, {}, 10)  # ... and comes back
    assert cohorts.limit(KEY) == (32, 3200)  # without running out of memory again
    assert cohorts.shape(KEY, runner).max_rows == 32


def test_limits_only_tighten_and_are_kept_for_a_bounded_number_of_groups() -> None:
    cohorts, runner = Cohorts(), cast(Runner, FixedShape())
    cohorts.enter(KEY, {}, 1)
    cohorts.shrink(KEY, runner, rows=16, longest=10)
    cohorts.shrink(KEY, runner, rows=64, longest=10)  # a batch formed before the first limit
    assert cohorts.limit(KEY) == (8, 80)
    for n in range(REMEMBERED_LIMITS):
        other = ("bulk", "tiny", "classify", f'{{"n": {n}}}')
        cohorts.enter(other, {"n": n}, 1)
        cohorts.shrink(other, runner, rows=2, longest=10)
    assert cohorts.limit(KEY) is None  # the oldest is dropped
