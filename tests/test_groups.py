"""What the engine remembers about a group after it ran out of memory."""

from __future__ import annotations

from typing import Any, cast

from docqueue.worker.batcher import Shape, padded_tokens
from docqueue.worker.groups import REMEMBERED_LIMITS, Groups
from docqueue.worker.runners import Runner


class FixedShape:
    """The one part of a runner ``Groups`` asks for: its batch shape."""

    def shape(self, params: dict[str, Any]) -> Shape:
        return Shape(padded_tokens, 64 * 128, 64)


KEY = ("bulk", "tiny", "classify", "{}")


def test_an_out_of_memory_limit_outlives_a_queue_that_drains() -> None:
    groups, runner = Groups(), cast(Runner, FixedShape())
    groups.enter(KEY, {}, 64)
    shape = groups.shrink(KEY, runner, rows=64, longest=100)
    assert (shape.max_rows, shape.budget) == (32, 3200)
    groups.settle(KEY, 64)  # every document done: the group is forgotten ...
    groups.enter(KEY, {}, 10)  # ... and comes back
    assert groups.limit(KEY) == (32, 3200)  # without running out of memory again
    assert groups.shape(KEY, runner).max_rows == 32


def test_limits_only_tighten_and_are_kept_for_a_bounded_number_of_groups() -> None:
    groups, runner = Groups(), cast(Runner, FixedShape())
    groups.enter(KEY, {}, 1)
    groups.shrink(KEY, runner, rows=16, longest=10)
    groups.shrink(KEY, runner, rows=64, longest=10)  # a batch formed before the first limit
    assert groups.limit(KEY) == (8, 80)
    for n in range(REMEMBERED_LIMITS):
        other = ("bulk", "tiny", "classify", f'{{"n": {n}}}')
        groups.enter(other, {"n": n}, 1)
        groups.shrink(other, runner, rows=2, longest=10)
    assert groups.limit(KEY) is None  # the oldest is dropped
