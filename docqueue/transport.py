"""A kombu Redis transport that moves many messages per round trip.

kombu's stock Redis transport delivers one message per ``BRPOP``, records it as
unacked with a second round trip and removes it with a third on ack; redis-py also
builds a new client object for each of those.  That caps a consumer near 1,500
messages/s on loopback before any work is done (measured here: about 510 µs per
message received and acked).  A backend that sends one document per message needs
more, so this transport keeps kombu's semantics and key layout (the ``unacked``
hash and ``unacked_index`` sorted set, visibility timeout, restore at shutdown)
and changes only how many messages each round trip carries:

* after a ``BRPOP`` returns one message, one Lua script pops up to the consumer's
  free prefetch from the same list *and* records them as unacked, atomically, so a
  crash between the pop and the bookkeeping cannot lose them;
* :func:`ack_messages` acks many messages in one pipeline;
* the synchronous client is built once per channel instead of once per command.

Anyone who can write to Redis can put anything on a queue, so every entry is checked
before it is delivered: one that is not JSON, not a kombu envelope (``properties``
with ``delivery_info`` and ``delivery_tag``), or over ``max_message_bytes`` is set
aside as a dead letter (:mod:`docqueue.deadletters`) and never delivered; the good
ones around it are.  The script checks the entries it pops inside Redis (the size
before decoding, so an oversized one never reaches a worker) and moves the bad ones
to the dead letters in the same atomic step; the ``BRPOP``'d first entry is checked
here, its size before it is decoded.

Select it with the broker URL scheme ``redis://`` and
``broker_transport = "docqueue.transport:Transport"`` (see :mod:`docqueue.broker`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.message import Message
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from docqueue import deadletters
from docqueue.config import Settings
from docqueue.errors import one_line

logger = logging.getLogger(__name__)

#: ``check(raw, max_bytes)``: why an entry cannot be delivered (nil when it can),
#: then its delivery tag and delivery_info.  The size is checked before decoding.
#: The reasons are those of :func:`envelope_problem`.
CHECK_ENTRY_LUA = """
local function check(raw, max_bytes)
  local size = string.len(raw)
  if size > max_bytes then
    return 'message of ' .. size .. ' bytes, over max_message_bytes (' .. max_bytes .. ')'
  end
  local ok, msg = pcall(cjson.decode, raw)
  if not ok then return 'not JSON: ' .. tostring(msg) end
  -- cjson reads arrays as tables too: one with an element 1 is an array
  if type(msg) ~= 'table' or msg[1] ~= nil then
    return 'not a kombu message: not a JSON object'
  end
  if msg['headers'] ~= nil and type(msg['headers']) ~= 'table' then
    return 'not a kombu message: headers is not an object'
  end
  local props = msg['properties']
  if type(props) ~= 'table' then return 'not a kombu message: no properties object' end
  local info = props['delivery_info']
  if type(info) ~= 'table' then
    return 'not a kombu message: no properties.delivery_info object'
  end
  if type(info['exchange']) ~= 'string' or type(info['routing_key']) ~= 'string' then
    return 'not a kombu message: delivery_info needs exchange and routing_key strings'
  end
  local tag = props['delivery_tag']
  if type(tag) ~= 'string' or tag == '' then
    return 'not a kombu message: no properties.delivery_tag string'
  end
  return nil, tag, info
end
"""

#: Pops up to ARGV[1] entries from list KEYS[1] and records each good one in the
#: unacked hash KEYS[2] and index KEYS[3] exactly as kombu's QoS.append does
#: (``[message, exchange, routing_key]`` under the delivery tag, scored by ARGV[2]).
#: The stored entry is built by concatenation so the message JSON is kept verbatim.
#: A bad entry (see :data:`CHECK_ENTRY_LUA`; ARGV[3] is max_message_bytes) goes to
#: the dead letters (KEYS[4..], :data:`deadletters.KEYS`; ARGV[4] is their limit,
#: ARGV[5] the bytes kept of an oversized one) in the same step.  Returns
#: ``{{tag, raw, ...}, {dead letter id, reason, ...}}``.
POP_AND_RECORD = (
    deadletters.SET_ASIDE_LUA
    + CHECK_ENTRY_LUA
    + """
local raws = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not raws then return {{}, {}} end
local max_bytes, limit, kept = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local good, dead = {}, {}
for _, raw in ipairs(raws) do
  local reason, tag, info = check(raw, max_bytes)
  if reason then
    local cut = -1
    if string.len(raw) > max_bytes then cut = kept end
    local id = set_aside(4, KEYS[1], reason, raw, tonumber(ARGV[2]), limit, cut)
    table.insert(dead, id)
    table.insert(dead, reason)
  else
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag,
      '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ','
          .. cjson.encode(info['routing_key']) .. ']')
    table.insert(good, tag)
    table.insert(good, raw)
  end
end
return {good, dead}
"""
)

#: Moves an entry the pop script recorded as unacked (tag ARGV[1]; KEYS[1] the
#: unacked index, KEYS[2] the unacked hash) to the dead letters (KEYS[3..]), for an
#: entry only Python finds bad.  ARGV[2..]: queue, reason, raw, now, limit.
SET_ASIDE_RECORDED = (
    deadletters.SET_ASIDE_LUA
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return set_aside(3, ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), -1)
"""
)


def envelope_problem(payload: Any) -> str | None:
    """Why a decoded entry is not a kombu message this transport can deliver (the
    checks of :data:`CHECK_ENTRY_LUA`, with the same reasons), or None."""
    if not isinstance(payload, dict):
        return "not a kombu message: not a JSON object"
    if "headers" in payload and not isinstance(payload["headers"], dict):
        return "not a kombu message: headers is not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "not a kombu message: no properties object"
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        return "not a kombu message: no properties.delivery_info object"
    if not isinstance(info.get("exchange"), str) or not isinstance(info.get("routing_key"), str):
        return "not a kombu message: delivery_info needs exchange and routing_key strings"
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "not a kombu message: no properties.delivery_tag string"
    return None


def decode_entry(raw: bytes | str, max_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
    """An entry as kombu delivers it, or None and why not; the size is checked
    before anything is decoded."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return None, f"message of {size} bytes, over max_message_bytes ({max_bytes})"
    try:
        payload = loads(bytes_to_str(raw))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        # kombu's object hook decodes typed values ({"__type__": ...}) and may raise too
        return None, f"not JSON: {one_line(exc)}"
    problem = envelope_problem(payload)
    return (None, problem) if problem else (payload, None)


_DEFAULTS = Settings.model_fields


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, plus acking many tags in one round trip."""

    #: Set while delivering messages the Lua script already recorded as unacked.
    recorded_by_script = False

    def append(self, message: Message, delivery_tag: str) -> None:
        if self.recorded_by_script:
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def can_consume(self) -> bool:
        # kombu forgets acked messages (bodies and all) only when the next message
        # arrives, so an idle worker kept its last batch alive: 120 MiB after one
        # 50 MB message.  The consuming thread asks this on every tick of its loop;
        # acks from other threads only mark tags, so forgetting them here is safe.
        if self._dirty:
            self._flush()
        return bool(super().can_consume())

    def ack_many(self, delivery_tags: list[str]) -> None:
        if not delivery_tags:
            return
        with self.pipe_or_acquire() as pipe:
            pipe.zrem(self.unacked_index_key, *delivery_tags)
            pipe.hdel(self.unacked_key, *delivery_tags)
            pipe.execute()
        for tag in delivery_tags:
            virtual.QoS.ack(self, tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    #: Most messages one poll may take, whatever the prefetch allows.
    batch_pop_limit = 512
    #: Entries larger than this are set aside as dead letters, never decoded.
    max_message_bytes: int = _DEFAULTS["max_message_bytes"].default
    #: Dead letters kept (the oldest beyond it are dropped, and counted).
    dead_letter_limit: int = _DEFAULTS["dead_letter_limit"].default
    # kombu's attribute is inferred as a fixed-length tuple; any tuple of names is meant.
    from_transport_options = kombu_redis.Channel.from_transport_options + (  # type: ignore[assignment]
        "batch_pop_limit",
        "max_message_bytes",
        "dead_letter_limit",
    )
    #: kombu declares it False, then keeps the connection polled (or None) there.
    _in_poll: Any

    _sync_client: Any = None
    _pop_script: Any = None
    _set_aside_script: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("docqueue's Redis transport does not support global_keyprefix")

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # redis.Redis is thread-safe (each command takes a pooled connection), so one
        # client per channel serves every thread; building one costs ~150 µs in redis-py 8.
        if client is not None:
            yield client
            return
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        yield cached

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
        finally:
            self._in_poll = None
            flush_reauth = getattr(self, "_flush_brpop_reauth", None)
            if flush_reauth is not None:
                flush_reauth()
        key, first = bytes_to_str(reply[0]), reply[1]
        queue = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        payload, problem = decode_entry(first, self.max_message_bytes)
        if problem:
            self._set_aside(key, problem, first)
        more = self._pop_more(key, taken=payload is not None)
        if not self._deliver_all(key, queue, payload, first, more):
            raise Empty()  # everything taken was set aside
        return True

    def _deliver_all(
        self,
        key: str,
        queue: str,
        first: dict[str, Any] | None,
        first_raw: bytes,
        more: list[tuple[bytes, bytes]],
    ) -> bool:
        """Deliver the first entry (when good) and the ones the script recorded as
        unacked.  When a consumer's callback raises, the rest are still delivered
        (so that they are restored at close like any unacked message) and the first
        error is raised after them.  Returns whether anything was delivered."""
        delivered = 0
        failure: BaseException | None = None
        if first is not None:
            failure = self._deliver_one(key, queue, first, first_raw, None)
            delivered += 1
        self.qos.recorded_by_script = True
        try:
            for tag, raw in more:
                payload, problem = decode_entry(raw, self.max_message_bytes)
                if payload is None:  # only Python finds it bad (cjson accepts more)
                    self._set_aside(key, problem or "unreadable", raw, recorded_tag=tag)
                    continue
                error = self._deliver_one(key, queue, payload, raw, tag)
                failure = failure or error
                delivered += 1
        finally:
            self.qos.recorded_by_script = False
        if failure is not None:
            raise failure
        return delivered > 0

    def _deliver_one(
        self, key: str, queue: str, payload: dict[str, Any], raw: bytes, recorded_tag: Any
    ) -> BaseException | None:
        """Hand one entry to its consumer; returns what the consumer raised.  An
        entry that fails before any consumer holds it (kombu cannot build a message
        from it: a body that is not base64, say) is set aside instead."""
        tag = payload["properties"]["delivery_tag"]
        try:
            self.connection._deliver(payload, queue)
        except Exception as exc:
            if tag in self.qos._delivered or isinstance(exc, self.connection_errors):
                return exc
            self._set_aside(key, f"not a kombu message: {one_line(exc)}", raw, recorded_tag)
        return None

    def _set_aside(self, key: str, reason: str, raw: bytes, recorded_tag: Any = None) -> None:
        """Record an entry as a dead letter (taking it out of the unacked keys where
        the pop script had recorded it), and say so in the log."""
        with self.conn_or_acquire() as client:
            if recorded_tag is None:
                entry = deadletters.set_aside(
                    client,
                    key,
                    reason,
                    raw,
                    limit=self.dead_letter_limit,
                    max_bytes=self.max_message_bytes,
                )
            else:
                if self._set_aside_script is None:
                    self._set_aside_script = client.register_script(SET_ASIDE_RECORDED)
                entry = self._set_aside_script(
                    keys=[self.unacked_index_key, self.unacked_key, *deadletters.KEYS],
                    args=[recorded_tag, key, reason, raw, time.time(), self.dead_letter_limit],
                    client=client,
                )
        _log_set_aside(entry, key, reason)

    def _pop_more(self, key: str, taken: bool = True) -> list[tuple[bytes, bytes]]:
        """Take what else the prefetch allows from ``key``, recorded as unacked (the
        entry already ``taken`` from it, if any, counts); bad entries go to the dead
        letters.  Returns (delivery tag, entry) pairs."""
        room = self.qos.can_consume_max_estimate()
        wanted = self.batch_pop_limit if room is None else min(room, self.batch_pop_limit)
        limit = wanted - 1 if taken else wanted
        if limit <= 0:
            return []
        with self.conn_or_acquire() as client:
            if self._pop_script is None:
                self._pop_script = client.register_script(POP_AND_RECORD)
            good, dead = self._pop_script(
                keys=[key, self.unacked_key, self.unacked_index_key, *deadletters.KEYS],
                args=[
                    limit,
                    time.time(),
                    self.max_message_bytes,
                    self.dead_letter_limit,
                    deadletters.KEPT_OF_OVERSIZED,
                ],
                client=client,
            )
        for entry, reason in zip(dead[::2], dead[1::2], strict=True):
            _log_set_aside(entry, key, bytes_to_str(reason))
        return list(zip(good[::2], good[1::2], strict=True))


def _log_set_aside(entry: Any, queue: str, reason: str) -> None:
    logger.warning("dead letter %s from queue %s: %s", entry, queue, reason)


class Transport(kombu_redis.Transport):
    Channel = Channel


def ack_messages(messages: Iterable[Message]) -> None:
    """Ack messages, in one round trip per channel where the transport allows it.

    Safe to call from any thread: kombu's QoS only marks tags dirty here and the
    consuming thread drops them from its bookkeeping later.
    """
    by_channel: dict[Any, list[Message]] = defaultdict(list)
    for message in messages:
        if not message.acknowledged:
            by_channel[message.channel].append(message)
    for channel, batch in by_channel.items():
        ack_many = getattr(channel.qos, "ack_many", None)
        if ack_many is None:
            for message in batch:
                message.ack()
            continue
        ack_many([m.delivery_tag for m in batch])
        for message in batch:
            message._state = "ACK"
