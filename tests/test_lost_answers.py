"""Answers lost on the way from Redis to a worker (a connection reset, a restart, a
partition) lose no message.  A proxy that holds every answer for a second stands
for the network, and is cut while an answer is held: what Redis did is done, and
the worker never hears of it.  Real Redis, kombu connections with docqueue's
transport, as a worker's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import TIMING
from kombu import Connection, Producer
from proxy import Proxy
from test_transport import consume, make_queue, make_settings, poll

from docqueue.broker import TRANSPORT, kombu_url, redis_client, transport_options

pytestmark = [pytest.mark.slow, TIMING]

#: Seconds the proxy holds what passes through it, each way.
HELD = 0.5


@pytest.fixture
def held(redis_url: str) -> Iterator[Proxy]:
    """A proxy in front of the test's Redis that holds every chunk for HELD seconds."""
    proxy = Proxy.before(redis_url, delay=HELD)
    yield proxy
    proxy.close()


def connection(url: str, **options: Any) -> Connection:
    return Connection(
        kombu_url(url),
        transport=TRANSPORT,
        transport_options={**transport_options(make_settings()), **options},
    )


def publish(redis_url: str, count: int) -> None:
    """``count`` messages, published straight to Redis (not through the proxy)."""
    with connection(redis_url) as conn:
        producer = Producer(conn.channel())
        queue = make_queue()
        for i in range(count):
            producer.publish(
                {"i": i},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                serializer="json",
                declare=[queue],
            )


def in_background(*steps: tuple[Callable[[], bool], Callable[[], object]]) -> None:
    """For each (condition, action) in turn: wait until the condition holds (up to
    30 s), then act."""

    def run() -> None:
        for condition, action in steps:
            deadline = time.monotonic() + 30
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.01)
            action()

    threading.Thread(target=run, daemon=True).start()


def waiting_in_brpop(broker: Any) -> Callable[[], bool]:
    """Whether a client of ``broker``'s Redis is blocked in a BRPOP."""
    return lambda: any(c.get("cmd") == "brpop" for c in broker.client_list())


def cut_while_held(proxy: Proxy) -> None:
    """Cut every connection while an answer is held in the proxy, then let new ones
    in."""
    time.sleep(HELD / 2)
    proxy.cut()
    time.sleep(0.1)
    proxy.restore()


def receive(url: str, count: int, timeout: float = 20.0) -> list[int]:
    """Consume on a new connection (as Celery does after a lost one) until ``count``
    messages came; ack them.  Their numbers."""
    with connection(url) as conn:
        got = consume(conn, prefetch=10)
        deadline = time.monotonic() + timeout
        while len(got.messages) < count:
            assert time.monotonic() < deadline, f"got only {got.numbers}"
            poll(conn, timeout=0.5)
        for message in got.messages:
            message.ack()
        return got.numbers


def settled(redis_url: str) -> bool:
    """Nothing queued, nothing unacked."""
    broker = redis_client(redis_url)
    try:
        return broker.llen(make_queue().name) == 0 and broker.hlen("unacked") == 0
    finally:
        broker.close()


def test_a_wait_whose_answer_is_lost_loses_no_message(redis_url, held):
    """kombu waits with BRPOP, which takes the message off its list: an answer lost
    on its way lost the message (not in its list, not unacked; only ``docqueue
    resume`` brought its documents back).  Workers now wait on the list's bell, and
    take messages with the script that records them."""
    broker = redis_client(redis_url)
    with connection(held.url(redis_url), polling_interval=30) as conn:
        got = consume(conn, prefetch=10)
        # Published once the wait is at Redis: answered at once, the answer held.
        in_background((waiting_in_brpop(broker), lambda: publish(redis_url, 1)),
                      (lambda: True, lambda: cut_while_held(held)))  # fmt: skip
        with pytest.raises(Exception):  # noqa: B017 (the connection is cut under it)
            poll(conn, timeout=60)
        assert got.messages == []
    assert receive(redis_url, 1) == [0]
    assert settled(redis_url)
    broker.close()


def test_a_pop_whose_answer_is_lost_is_answered_again(redis_url, held):
    """The pop script takes messages and records them as unacked in one step; its
    answer lost, redis-py sent it again and it took more (none left), so the first
    ones stayed unacked with no worker holding them, for the visibility timeout (an
    hour).  Called again, it now answers what it took the first time."""
    broker = redis_client(redis_url)
    with connection(held.url(redis_url), polling_interval=30) as conn:
        got = consume(conn, prefetch=10)
        # Five published once the wait is at Redis; the cut comes once the pop took
        # them (several unacked at once), while its answer is held.
        in_background(
            (waiting_in_brpop(broker), lambda: publish(redis_url, 5)),
            (lambda: broker.hlen("unacked") >= 2, lambda: cut_while_held(held)),
        )
        deadline = time.monotonic() + 60
        while len(got.messages) < 5 and time.monotonic() < deadline:
            try:
                poll(conn, timeout=1.0)
            except Exception:  # noqa: BLE001 (cut under it: go on as Celery does)
                break
        numbers = got.numbers
        for message in got.messages:
            message.ack()
    if len(numbers) < 5:  # redis-py gave up: a new connection asks again
        numbers += receive(redis_url, 5 - len(numbers))
    assert sorted(numbers) == [0, 1, 2, 3, 4]
    assert settled(redis_url)
    broker.close()
