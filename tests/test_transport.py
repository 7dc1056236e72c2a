"""Contract of docqueue's kombu Redis transport (docqueue/transport.py), against a real
Redis and real kombu connections built the way docqueue.broker builds them.

The transport overrides kombu internals (a Lua script that pops up to the free prefetch
and records each message as unacked, ``QoS.ack_many``, ``ack_messages``, a cached sync
client), so these tests pin both what kombu's own Redis transport guarantees and what
the override adds: delivery exactly once and in order, never past the prefetch,
kombu's ``unacked`` / ``unacked_index`` layout, restore at close and after the
visibility timeout, nothing left behind once everything is acked.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message
from kombu.transport.virtual import Message as RedisMessage

from docqueue import deadletters
from docqueue.broker import TRANSPORT, kombu_url, make_celery, redis_client, transport_options
from docqueue.config import Settings
from docqueue.transport import Channel, ack_messages

# A slash and a non-ASCII letter: the Lua script re-encodes exchange and routing key.
QUEUE_NAME = "contract/lane-é"
UNACKED, UNACKED_INDEX = Channel.unacked_key, Channel.unacked_index_key
POLL = 0.2  # seconds a poll waits where the test expects nothing to arrive


def make_queue(name: str = QUEUE_NAME) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"prefetch_messages": 64, "interactive_prefetch": 512}
    return Settings(**{**values, **overrides})


Connect = Callable[..., Connection]
Publish = Callable[..., None]


@pytest.fixture
def redis(redis_url: str) -> Iterator[Any]:
    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def connect(redis_url: str) -> Iterator[Connect]:
    """Opens kombu connections with docqueue's transport and options (Settings fields
    as keywords, raw transport options in ``options``).  All are closed, so their
    unacked messages are restored, before the next test flushes the database."""
    opened: list[Connection] = []

    def connect(*, options: dict[str, Any] | None = None, **overrides: Any) -> Connection:
        conn = Connection(
            kombu_url(redis_url),
            transport=TRANSPORT,
            transport_options={**transport_options(make_settings(**overrides)), **(options or {})},
        )
        opened.append(conn)
        return conn

    yield connect
    for conn in reversed(opened):
        conn.release()


@pytest.fixture
def publish(connect: Connect) -> Publish:
    """Publishes ``{"i": n}`` for each n, as docqueue's producer does (JSON, a direct
    exchange named after the queue, the queue declared)."""
    producer = Producer(connect().channel())

    def publish(numbers: range, queue: Queue | None = None) -> None:
        queue = queue or make_queue()
        for i in numbers:
            producer.publish(
                {"i": i},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                serializer="json",
                declare=[queue],
            )

    return publish


class Received:
    """A consumer callback that keeps what it was given."""

    def __init__(self, observe: Callable[[Message], None] | None = None) -> None:
        self.messages: list[Message] = []
        self.observe = observe

    def __call__(self, body: Any, message: Message) -> None:
        self.messages.append(message)
        if self.observe is not None:
            self.observe(message)

    @property
    def numbers(self) -> list[int]:
        return [m.payload["i"] for m in self.messages]

    def unacked(self) -> list[Message]:
        return [m for m in self.messages if not m.acknowledged]


def consume(
    conn: Connection,
    prefetch: int,
    queue: Queue | None = None,
    observe: Callable[[Message], None] | None = None,
) -> Received:
    """Starts a consumer on a channel of its own, as Celery's and docqueue's are."""
    received = Received(observe)
    consumer = Consumer(
        conn.channel(), [queue or make_queue()], callbacks=[received], accept=["json"]
    )
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return received


def poll(conn: Connection, timeout: float = POLL) -> bool:
    """One drain_events: whether it delivered anything."""
    try:
        conn.drain_events(timeout=timeout)
    except TimeoutError:
        return False
    return True


def poll_until(conn: Connection, received: Received, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(received.messages) < count:
        assert time.monotonic() < deadline, f"got {received.numbers}, wanted {count}"
        poll(conn)


def listed(redis: Any, queue: str = QUEUE_NAME) -> list[int]:
    """The bodies waiting in the queue's list, the next one to be delivered first."""
    numbers = []
    for raw in reversed(redis.lrange(queue, 0, -1)):
        payload = json.loads(raw)
        assert payload["properties"]["body_encoding"] == "base64"
        numbers.append(json.loads(base64.b64decode(payload["body"]))["i"])
    return numbers


def no_unacked_keys(redis: Any) -> bool:
    return redis.exists(UNACKED, UNACKED_INDEX) == 0


def redelivered(message: Message) -> bool:
    return bool(message.delivery_info.get("redelivered"))


def commands_during(redis_url: str, action: Callable[[], object]) -> list[str]:
    """The commands Redis received (from anyone: filter them) while ``action`` ran."""
    marker = f"end-of-action-{uuid.uuid4().hex}"
    client = redis_client(redis_url)
    client.connection_pool.connection_kwargs["socket_timeout"] = 10  # never hang the test
    commands = []
    try:
        with client.monitor() as monitor:
            action()
            client.echo(marker)
            while marker not in (command := monitor.next_command()["command"]):
                commands.append(command)
    finally:
        client.close()
    return commands


# --- configuration ---------------------------------------------------------------------


def test_the_celery_app_connects_through_docqueues_channel_with_docqueues_options(
    redis_url: str,
) -> None:
    settings = make_settings(visibility_timeout=123.0, prefetch_messages=7, interactive_prefetch=9)
    conn = make_celery(settings, redis_url).connection_for_read()
    try:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        assert channel.batch_pop_limit == 9
        assert channel.visibility_timeout == 123.0
        assert channel.queue_order_strategy == "priority"
    finally:
        conn.release()


def test_the_transport_refuses_a_global_keyprefix_it_would_not_honour(connect: Connect) -> None:
    conn = connect(options={"global_keyprefix": "tenant:"})
    with pytest.raises(ValueError, match="global_keyprefix"):
        conn.channel()


def test_a_channel_reuses_one_sync_client_until_its_pool_is_replaced(connect: Connect) -> None:
    channel = connect().channel()
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
    channel._disconnect_pools()  # what kombu does after a fork: a new pool, a new client
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool
        assert third.ping()


# --- multi-pop -------------------------------------------------------------------------


def test_one_poll_delivers_all_the_prefetch_allows_each_message_once_in_publish_order(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(40))
    conn = connect()
    # Measured at every delivery: a message is always either listed or recorded as
    # unacked, never in neither (the script pops and records in one step).
    accounted: list[int] = []
    received = consume(
        conn,
        prefetch=64,
        observe=lambda m: accounted.append(redis.llen(QUEUE_NAME) + redis.hlen(UNACKED)),
    )

    assert poll(conn)
    assert received.numbers == list(range(40))
    assert len({m.delivery_tag for m in received.messages}) == 40
    assert accounted == [40] * 40
    assert redis.llen(QUEUE_NAME) == 0
    assert redis.hlen(UNACKED) == redis.zcard(UNACKED_INDEX) == 40

    publish(range(40, 45))
    poll_until(conn, received, 45)
    assert received.numbers == list(range(45))


def test_a_poll_never_takes_more_than_the_consumers_free_prefetch(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(10))
    conn = connect()
    received = consume(conn, prefetch=3)

    assert poll(conn)
    assert received.numbers == [0, 1, 2]
    assert redis.hlen(UNACKED) == redis.zcard(UNACKED_INDEX) == 3
    assert listed(redis) == list(range(3, 10))

    assert not poll(conn), "delivered past a full prefetch"
    assert listed(redis) == list(range(3, 10))

    received.messages[0].ack()  # one slot free: one message
    assert poll(conn)
    assert received.numbers == [0, 1, 2, 3]
    assert listed(redis) == list(range(4, 10))

    ack_messages(received.unacked())  # three free
    assert poll(conn)
    assert received.numbers == list(range(7))
    assert listed(redis) == [7, 8, 9]
    assert redis.hlen(UNACKED) == redis.zcard(UNACKED_INDEX) == 3


@pytest.mark.parametrize("prefetch", [100, 0])  # 0: no prefetch limit
def test_a_poll_never_takes_more_than_batch_pop_limit(
    connect: Connect, publish: Publish, redis: Any, prefetch: int
) -> None:
    publish(range(10))
    conn = connect(options={"batch_pop_limit": 4})
    received = consume(conn, prefetch=prefetch)

    assert poll(conn)
    assert received.numbers == [0, 1, 2, 3]
    assert listed(redis) == list(range(4, 10))


# --- unacked bookkeeping and acks ------------------------------------------------------


def test_every_delivered_unacked_message_is_recorded_in_kombus_unacked_layout(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(6))
    conn = connect()
    received = consume(conn, prefetch=10)
    before = time.time()
    assert poll(conn)
    after = time.time()
    assert received.numbers == list(range(6))

    tags = [m.delivery_tag for m in received.messages]
    entries = {k.decode(): json.loads(v) for k, v in redis.hgetall(UNACKED).items()}
    index = {k.decode(): score for k, score in redis.zrange(UNACKED_INDEX, 0, -1, withscores=True)}
    assert set(entries) == set(index) == set(tags)
    for message in received.messages:
        # kombu's QoS.append stores [raw message, exchange, routing key] (the first
        # message of a poll is recorded by kombu itself, the rest by the script).
        raw = cast(RedisMessage, message)._raw
        assert entries[message.delivery_tag] == [raw, QUEUE_NAME, QUEUE_NAME]
        assert before - 1 <= index[message.delivery_tag] <= after + 1


def test_ack_messages_acks_a_whole_batch_in_one_round_trip_and_frees_its_prefetch(
    connect: Connect, publish: Publish, redis: Any, redis_url: str
) -> None:
    publish(range(12))
    conn = connect()
    received = consume(conn, prefetch=6)
    assert poll(conn)
    batch = received.messages[:6]
    tags = [m.delivery_tag for m in batch]

    commands = commands_during(redis_url, lambda: ack_messages(batch))
    assert all(m.acknowledged for m in batch)
    assert no_unacked_keys(redis)
    # One ZREM and one HDEL name every tag (one pipeline); nothing else touches them.
    touching = [c for c in commands if any(tag in c for tag in tags)]
    assert sorted(c.split()[0].upper() for c in touching) == ["HDEL", "ZREM"]
    assert all(tag in c for c in touching for tag in tags)
    assert batch[0].channel.qos.can_consume_max_estimate() == 6

    ack_messages(batch)  # already acked: nothing to do, nothing raised
    assert poll(conn)
    assert received.numbers == list(range(12))
    assert redis.hlen(UNACKED) == 6


def test_ack_messages_acks_messages_of_several_channels_in_one_call(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    interactive = make_queue("contract/interactive")
    publish(range(3))
    publish(range(100, 103), interactive)
    conn = connect()
    bulk_received = consume(conn, prefetch=3)
    interactive_received = consume(conn, prefetch=3, queue=interactive)
    poll_until(conn, bulk_received, 3)
    poll_until(conn, interactive_received, 3)
    messages = bulk_received.messages + interactive_received.messages
    assert len({m.channel for m in messages}) == 2
    assert redis.hlen(UNACKED) == 6

    ack_messages(messages)
    assert all(m.acknowledged for m in messages)
    assert no_unacked_keys(redis)


def test_ack_messages_from_another_thread_frees_prefetch_for_the_consuming_thread(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(4))
    conn = connect()
    received = consume(conn, prefetch=2)
    assert poll(conn)
    assert received.numbers == [0, 1]

    acker = threading.Thread(target=ack_messages, args=(received.unacked(),))
    acker.start()
    acker.join()
    assert redis.hlen(UNACKED) == 0

    assert poll(conn)
    assert received.numbers == [0, 1, 2, 3]
    assert redis.hlen(UNACKED) == 2


def test_a_consumer_that_acked_everything_leaves_no_trace_in_the_unacked_keys(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(30))
    conn = connect()
    received = consume(conn, prefetch=8)
    deadline = time.monotonic() + 5
    batches = 0
    while len(received.messages) < 30:
        assert time.monotonic() < deadline
        if poll(conn):
            batches += 1
            # Alternate docqueue's batched ack with kombu's own per-message ack.
            if batches % 2:
                ack_messages(received.unacked())
            else:
                for message in received.unacked():
                    message.ack()
    assert received.numbers == list(range(30))
    assert no_unacked_keys(redis)

    conn.release()
    assert no_unacked_keys(redis)
    assert redis.llen(QUEUE_NAME) == 0


def test_acked_messages_are_forgotten_by_the_next_poll_even_when_nothing_arrives(
    connect: Connect, publish: Publish
) -> None:
    # kombu drops acked messages from its bookkeeping only when the next one arrives: an
    # idle worker held its last batch (a 50 MB message: 120 MiB) until then.
    publish(range(3))
    conn = connect()
    received = consume(conn, prefetch=10)
    assert poll(conn)
    qos = received.messages[0].channel.qos
    ack_messages(received.messages)
    assert not poll(conn)
    assert len(qos._delivered) == 0


# --- restore -----------------------------------------------------------------------------


@pytest.mark.parametrize("closing", ["channel", "connection"])
def test_messages_delivered_but_not_acked_return_to_their_queue_at_close_and_come_again(
    connect: Connect, publish: Publish, redis: Any, closing: str
) -> None:
    publish(range(6))
    conn = connect()
    received = consume(conn, prefetch=4)
    assert poll(conn)
    assert received.numbers == [0, 1, 2, 3]
    ack_messages(received.messages[:1])

    if closing == "channel":
        received.messages[0].channel.close()
    else:
        conn.release()
    assert no_unacked_keys(redis)
    assert sorted(listed(redis)) == [1, 2, 3, 4, 5]

    again_conn = connect()
    again = consume(again_conn, prefetch=10)
    poll_until(again_conn, again, 5)
    assert sorted(again.numbers) == [1, 2, 3, 4, 5]
    assert {m.payload["i"] for m in again.messages if redelivered(m)} == {1, 2, 3}
    assert redis.llen(QUEUE_NAME) == 0


def test_restore_visible_returns_messages_unacked_past_the_visibility_timeout(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(5))
    hung = connect(visibility_timeout=0.5)  # delivered to, then never acks nor closes
    hung_received = consume(hung, prefetch=10)
    assert poll(hung)
    assert hung_received.numbers == list(range(5))

    other = connect(visibility_timeout=0.5)
    qos = other.default_channel.qos
    qos.restore_visible(num=100, interval=1)
    assert redis.llen(QUEUE_NAME) == 0, "restored before the visibility timeout"

    time.sleep(0.6)
    qos.restore_visible(num=100, interval=1)
    assert sorted(listed(redis)) == list(range(5))
    assert no_unacked_keys(redis)

    received = consume(other, prefetch=10)
    poll_until(other, received, 5)
    assert sorted(received.numbers) == list(range(5))
    assert all(redelivered(m) for m in received.messages)
    ack_messages(received.messages)

    hung.release()  # its restore at close finds nothing left to return: no duplicates
    assert redis.llen(QUEUE_NAME) == 0
    assert no_unacked_keys(redis)


def test_an_idle_consumer_polling_restores_messages_past_a_short_visibility_timeout(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(5))
    hung = connect(visibility_timeout=0.3)
    consume(hung, prefetch=10)
    assert poll(hung)
    assert redis.hlen(UNACKED) == 5

    time.sleep(0.4)
    other = connect(visibility_timeout=0.3)
    received = consume(other, prefetch=10)
    poll_until(other, received, 5)  # its empty polls run restore_visible
    assert sorted(received.numbers) == list(range(5))
    assert all(redelivered(m) for m in received.messages)
    ack_messages(received.messages)
    assert no_unacked_keys(redis)


# --- failures during delivery ------------------------------------------------------------


def test_messages_popped_with_one_whose_callback_raises_return_to_the_queue_at_close(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(5))
    conn = connect()

    def fail_on_1(message: Message) -> None:
        if message.payload["i"] == 1:
            raise RuntimeError("consumer callback failed")

    consume(conn, prefetch=10, observe=fail_on_1)
    with pytest.raises(RuntimeError, match="consumer callback failed"):
        conn.drain_events(timeout=1)
    conn.release()

    assert sorted(listed(redis)) == list(range(5))
    assert no_unacked_keys(redis)


def test_a_malformed_entry_in_the_queue_costs_only_itself(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    publish(range(5))
    redis.lpush(QUEUE_NAME, b"not a kombu message")  # anyone who can write to Redis
    publish(range(5, 10))
    conn = connect()
    received = consume(conn, prefetch=20)

    for _ in range(5):
        if redis.llen(QUEUE_NAME) == 0:
            break
        with contextlib.suppress(Exception):  # kombu's own transport raises once, for it
            poll(conn, timeout=1)
    ack_messages(received.messages)
    conn.release()  # returns whatever was delivered and not acked

    assert sorted(received.numbers + listed(redis)) == list(range(10))


# --- entries that are not messages: dead letters ------------------------------------------


def envelope(i: int, **changes: Any) -> dict[str, Any]:
    """The kombu envelope of ``{"i": i}`` as docqueue's producer writes it; ``changes``
    replace top-level fields (None removes one)."""
    body = base64.b64encode(json.dumps({"i": i}).encode()).decode()
    message: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": QUEUE_NAME, "routing_key": QUEUE_NAME},
            "delivery_mode": 2,
            "priority": 0,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    message.update(changes)
    return {k: v for k, v in message.items() if v is not None}


def raw(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def without(field: str, i: int = 0) -> bytes:
    """An envelope whose properties lack ``field``."""
    message = envelope(i)
    del message["properties"][field]
    return raw(message)


BAD_ENTRIES = {
    "not JSON": (b"not json", "not JSON: "),
    "JSON but not an object": (b"[1, 2, 3]", "not a kombu message: not a JSON object"),
    "JSON null": (b"null", "not a kombu message: not a JSON object"),
    "no properties": (raw(envelope(0, properties=None)), "no properties object"),
    "no delivery_info": (without("delivery_info"), "no properties.delivery_info object"),
    "no delivery_tag": (without("delivery_tag"), "no properties.delivery_tag string"),
    "a numeric delivery_tag": (
        raw(envelope(0, properties={**envelope(0)["properties"], "delivery_tag": 7})),
        "no properties.delivery_tag string",
    ),
    "headers not an object": (raw(envelope(0, headers="x")), "headers is not an object"),
    # Lua's cjson reads hex numbers, Python's json does not: set aside by Python
    "JSON only cjson reads": (
        raw(envelope(0, extra=1)).replace(b'"extra": 1', b'"extra": 0x1'),
        "not JSON: ",
    ),
    # kombu cannot build a message from it (the body is not base64)
    "a body that is not base64": (raw(envelope(0, body="abc")), "not a kombu message: "),
}


def dead_letters(redis: Any) -> list[deadletters.DeadLetter]:
    return deadletters.listing(redis, limit=1000)


@pytest.mark.parametrize("where", ["first", "among others"])
@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
def test_an_entry_that_is_not_a_message_is_set_aside_and_the_good_ones_are_delivered(
    connect: Connect, publish: Publish, redis: Any, kind: str, where: str
) -> None:
    entry, reason = BAD_ENTRIES[kind]
    if where == "first":  # the entry BRPOP takes, checked in Python
        redis.lpush(QUEUE_NAME, entry)
        publish(range(6))
    else:  # popped by the Lua script
        publish(range(3))
        redis.lpush(QUEUE_NAME, entry)
        publish(range(3, 6))
    conn = connect()
    received = consume(conn, prefetch=20)

    poll_until(conn, received, 6)  # raises nothing
    assert received.numbers == list(range(6))
    assert redis.llen(QUEUE_NAME) == 0
    tags = {m.delivery_tag for m in received.messages}
    assert {t.decode() for t in redis.hkeys(UNACKED)} == tags
    assert {t.decode() for t in redis.zrange(UNACKED_INDEX, 0, -1)} == tags

    [letter] = dead_letters(redis)
    assert letter.queue == QUEUE_NAME
    assert reason in letter.reason
    assert time.time() - 60 < letter.at <= time.time()
    kept = deadletters.get(redis, letter.id)
    assert kept is not None and kept.body == entry and not kept.truncated


@pytest.mark.parametrize("where", ["first", "among others"])
def test_an_oversized_entry_is_set_aside_unread_with_only_its_beginning_kept(
    connect: Connect, publish: Publish, redis: Any, where: str
) -> None:
    limit = 100_000
    oversized = raw(envelope(99, padding="x" * limit))
    if where == "first":
        redis.lpush(QUEUE_NAME, oversized)
        publish(range(4))
    else:
        publish(range(2))
        redis.lpush(QUEUE_NAME, oversized)
        publish(range(2, 4))
    conn = connect(options={"max_message_bytes": limit})
    received = consume(conn, prefetch=20)

    poll_until(conn, received, 4)
    assert received.numbers == list(range(4))
    [letter] = dead_letters(redis)
    assert letter.reason == f"message of {len(oversized)} bytes, over max_message_bytes ({limit})"
    assert letter.size == len(oversized) and letter.truncated
    kept = deadletters.get(redis, letter.id)
    assert kept is not None and kept.body == oversized[: deadletters.KEPT_OF_OVERSIZED]


def test_a_poll_that_takes_only_bad_entries_delivers_nothing_and_raises_nothing(
    connect: Connect, redis: Any
) -> None:
    redis.lpush(QUEUE_NAME, b"one", b"two", b"three")
    conn = connect()
    received = consume(conn, prefetch=10)

    # Pushed by hand, they rang no bell: a consumer finds them once its wait ends
    # without a token (brpop_timeout, a second).
    assert not poll(conn, timeout=2.0)
    assert received.messages == []
    assert redis.llen(QUEUE_NAME) == 0 and no_unacked_keys(redis)
    bodies = [deadletters.get(redis, e.id) for e in dead_letters(redis)]
    assert sorted(b.body for b in bodies if b and b.body) == [b"one", b"three", b"two"]


def test_the_dead_letters_are_capped_at_the_limit_dropping_the_oldest(
    connect: Connect, publish: Publish, redis: Any
) -> None:
    for i in range(5):
        redis.lpush(QUEUE_NAME, f"garbage {i}".encode())
    publish(range(2))
    conn = connect(options={"dead_letter_limit": 3})
    received = consume(conn, prefetch=10)

    poll_until(conn, received, 2)
    assert deadletters.count(redis) == 3
    assert deadletters.dropped(redis) == 2
    bodies = [deadletters.get(redis, e.id) for e in dead_letters(redis)]
    assert [b.body for b in bodies if b] == [b"garbage 4", b"garbage 3", b"garbage 2"]


def test_a_replayed_dead_letter_goes_back_to_its_queue_and_is_delivered(
    connect: Connect, redis: Any
) -> None:
    # set aside the way a worker does with a message it refuses (an older worker, say)
    entry = deadletters.set_aside(
        redis, QUEUE_NAME, "refused by an older worker", raw(envelope(7)), limit=10
    )
    conn = connect()
    received = consume(conn, prefetch=10)
    assert not poll(conn)

    assert deadletters.replay(redis, [entry]) == ([entry], {})
    poll_until(conn, received, 1)
    assert received.numbers == [7]
    assert dead_letters(redis) == []
