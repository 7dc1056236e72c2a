"""The flush policy as a pure function: items, the clock and shapes in, a decision out.
No sleeps: time is an argument."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from docqueue.worker.batcher import (
    WINDOW_BATCHES,
    Buffer,
    Cohort,
    Flush,
    Shape,
    Wait,
    padded_tokens,
    plan,
    select,
)


@dataclass
class Item:
    length: int
    arrived: float
    name: str = ""


SHAPE = Shape(padded_tokens, budget=100, max_rows=8)
MAX_WAIT = 0.010


def cohort(lengths: list[int], arrived: float = 0.0, interactive: bool = False, shape=SHAPE):
    items = [Item(n, arrived + i * 1e-6, f"i{i}") for i, n in enumerate(lengths)]
    return Cohort(items, shape, interactive)


def test_nothing_buffered_waits_without_deadline():
    assert plan({}, now=5.0, max_wait=MAX_WAIT) == Wait(None)


def test_small_group_waits_until_its_oldest_item_is_max_wait_old():
    cohorts = {"a": cohort([10, 10], arrived=1.0)}
    decision = plan(cohorts, now=1.005, max_wait=MAX_WAIT)
    assert isinstance(decision, Wait) and decision.until is not None
    assert abs(decision.until - 1.010) < 1e-9
    flushed = plan(cohorts, now=1.0101, max_wait=MAX_WAIT)
    assert flushed == Flush("a", [0, 1])


def test_group_that_fills_the_budget_flushes_before_max_wait():
    # 10 rows of 10 tokens = 100 padded tokens = the budget
    cohorts = {"a": cohort([10] * 10, arrived=1.0)}
    decision = plan(cohorts, now=1.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush)
    assert len(decision.positions) == 8  # max_rows caps it


def test_batch_cost_never_exceeds_budget():
    cohorts = {"a": cohort([30, 31, 29, 40, 33, 5, 6], arrived=0.0)}
    decision = plan(cohorts, now=1.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush)
    chosen = [cohorts["a"].items[i].length for i in decision.positions]
    assert padded_tokens(len(chosen), max(chosen)) <= SHAPE.budget
    assert 0 in decision.positions  # the oldest always goes


def test_batch_takes_items_of_similar_length_around_the_oldest():
    # oldest is 50 tokens; the budget (100) fits two rows of <= 50
    lengths = [50, 3, 48, 90, 4, 49]
    decision = plan({"a": cohort(lengths)}, now=1.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush)
    chosen = sorted(lengths[i] for i in decision.positions)
    assert chosen == [49, 50]


def test_short_oldest_item_is_batched_with_other_short_ones():
    lengths = [5, 60, 6, 70, 4, 5]
    decision = plan({"a": cohort(lengths)}, now=1.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush)
    chosen = sorted(lengths[i] for i in decision.positions)
    assert chosen == [4, 5, 5, 6]  # the next step, 60, would cost 5 x 60 > 100


def test_an_item_longer_than_the_budget_still_runs_alone():
    decision = plan({"a": cohort([500, 3])}, now=1.0, max_wait=MAX_WAIT)
    assert decision == Flush("a", [0])


def test_interactive_group_goes_before_an_older_bulk_group():
    cohorts = {
        "bulk": cohort([10] * 20, arrived=0.0),
        "interactive": cohort([10], arrived=0.5, interactive=True),
    }
    decision = plan(cohorts, now=1.0, max_wait=MAX_WAIT)
    assert decision == Flush("interactive", [0])


def test_interactive_item_still_waits_max_wait_to_gather_company():
    cohorts = {"interactive": cohort([10], arrived=1.0, interactive=True)}
    assert plan(cohorts, now=1.001, max_wait=MAX_WAIT) == Wait(1.0 + MAX_WAIT)


def test_among_due_groups_the_oldest_goes_first():
    cohorts = {"young": cohort([10] * 3, arrived=0.9), "old": cohort([10] * 3, arrived=0.1)}
    decision = plan(cohorts, now=2.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush) and decision.key == "old"


def test_wait_until_the_earliest_deadline_of_all_groups():
    cohorts = {"a": cohort([10], arrived=1.0), "b": cohort([10], arrived=0.995)}
    assert plan(cohorts, now=1.001, max_wait=MAX_WAIT) == Wait(0.995 + MAX_WAIT)


def test_generation_cost_counts_new_tokens():
    def cost(rows, longest):
        return rows * (longest + 40)

    shape = Shape(cost, budget=200, max_rows=64)
    decision = plan({"g": cohort([10] * 10, shape=shape)}, now=1.0, max_wait=MAX_WAIT)
    assert isinstance(decision, Flush) and len(decision.positions) == 4  # 4 x (10 + 40) = 200


def test_window_bounds_what_the_oldest_item_is_compared_with():
    # 2 rows of 50 fit the budget -> a window of 2 x WINDOW_BATCHES items; the one
    # matching length lies just outside it
    shape = Shape(padded_tokens, budget=1000, max_rows=2)
    window = 2 * WINDOW_BATCHES
    lengths = [50] + [10] * window + [50]
    chosen = select(cohort(lengths, shape=shape))
    assert chosen[0] == 0 and len(chosen) == 2 and chosen[1] < window
    assert select(cohort([50] + [10] * (window - 2) + [50], shape=shape)) == [0, window - 1]


def test_nothing_starves_every_item_is_taken_in_bounded_rounds():
    """Repeatedly planning with fresh arrivals still takes every old item: the oldest
    always goes."""
    items = [Item(n, float(i)) for i, n in enumerate([90, 5, 5, 5, 80, 5, 5, 5, 70, 5])]
    now = 100.0
    taken: list[Item] = []
    for _round in range(len(items)):
        if not items:
            break
        decision = plan({"a": Cohort(items, SHAPE)}, now=now, max_wait=MAX_WAIT)
        assert isinstance(decision, Flush)
        chosen = set(decision.positions)
        taken += [items[i] for i in chosen]
        items = [item for i, item in enumerate(items) if i not in chosen]
        items.append(Item(3, now))  # a short newcomer arrives every round
        now += 1
    assert {90, 80, 70} <= {item.length for item in taken}


def test_buffer_hands_out_due_batches_and_flush_all_drains_everything():
    clock = [0.0]
    buffer: Buffer[str, Item] = Buffer(max_wait=MAX_WAIT, clock=lambda: clock[0])
    buffer.add("a", SHAPE, [Item(10, 0.0), Item(10, 0.0)], interactive=False)
    assert buffer.take(timeout=0) is None  # not due yet, and no waiting allowed
    clock[0] = 1.0
    taken = buffer.take(timeout=0)
    assert taken is not None
    key, batch = taken
    assert key == "a" and len(batch) == 2 and len(buffer) == 0
    buffer.add("b", SHAPE, [Item(10, 1.0)], interactive=False)
    buffer.flush_all = True
    taken = buffer.take(timeout=0)
    assert taken is not None and taken[0] == "b"


def test_buffer_wakes_a_waiting_taker_when_a_batch_fills():
    buffer: Buffer[str, Item] = Buffer(max_wait=60.0)
    got = []
    taker = threading.Thread(target=lambda: got.append(buffer.take(timeout=30)))
    taker.start()
    now = time.monotonic()  # fresh items: only a full batch makes them due
    buffer.add("a", SHAPE, [Item(10, now) for _ in range(8)], interactive=False)
    taker.join(10)
    assert got and got[0] is not None and len(got[0][1]) == 8


def test_buffer_remove_takes_only_the_unwanted_items_by_group():
    buffer: Buffer[str, Item] = Buffer(max_wait=MAX_WAIT, clock=lambda: 0.0)
    buffer.add("a", SHAPE, [Item(10, 0.0, "x1"), Item(10, 0.0, "y1")], interactive=False)
    buffer.add("b", SHAPE, [Item(10, 0.0, "x2")], interactive=True)
    removed = buffer.remove(lambda item: item.name.startswith("x"))
    assert sorted((key, [i.name for i in items]) for key, items in removed) == [
        ("a", ["x1"]),
        ("b", ["x2"]),
    ]
    assert len(buffer) == 1
    buffer.flush_all = True
    taken = buffer.take(timeout=0)
    assert taken is not None and [i.name for i in taken[1]] == ["y1"]
    assert buffer.take(timeout=0) is None


def test_intake_rounds_take_turns_so_single_documents_cannot_starve_bulk_work():
    """An interactive round holds interactive deliveries only (a single document must
    not wait for bulk tokenizing), and bulk and interactive rounds alternate: with a
    single document arriving before every round, bulk still gets every other one."""
    from docqueue.config import Settings
    from docqueue.protocol import BatchMessage
    from docqueue.worker.engine import INTAKE_ROUND_BYTES, Engine
    from docqueue.worker.store import MemoryStore

    def message(lane: str, n: int, chars: int) -> BatchMessage:
        items = [(i, "x" * chars) for i in range(n)]
        return BatchMessage(
            job="a" * 32, task="classify", model="m", lane=lane, items=items, enqueued_at=0.0
        )

    engine = Engine(runners={}, settings=Settings(), store=MemoryStore(), worker_id="test")
    for _ in range(3):  # each a round's worth of bulk
        engine.submit(message("bulk", 64, INTAKE_ROUND_BYTES // 64))
    rounds = []
    for _ in range(8):
        engine.submit(message("interactive", 1, 20))  # a steady stream of single documents
        taken = engine._next_deliveries()
        rounds.append("".join(sorted({"i" if d.interactive else "b" for d in taken})))
    assert rounds == ["i", "b", "i", "b", "i", "b", "i", "i"]
