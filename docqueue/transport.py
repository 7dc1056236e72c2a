"""A kombu Redis transport that moves many messages per round trip, and never
loses one to a lost answer.

kombu's stock Redis transport delivers one message per ``BRPOP``, records it as
unacked with a second round trip and removes it with a third on ack; redis-py also
builds a new client object for each of those.  That caps a consumer near 1,500
messages/s on loopback before any work is done (measured here: about 510 µs per
message received and acked).  A backend that sends one document per message needs
more, so this transport keeps kombu's semantics and key layout (the ``unacked``
hash and ``unacked_index`` sorted set, visibility timeout, restore at shutdown)
and changes how messages are taken and how many each round trip carries:

* a ``BRPOP`` takes a message off its list before the worker has it: when the
  answer is lost (Redis restarted after popping, a connection reset, a partition),
  the message is gone from Redis.  So workers never pop with ``BRPOP``: beside each
  list is a *bell* (the list's key + ``:bell``) where publishing leaves a token
  (one at most), and workers block on the bells.  A token wakes a worker, and one
  Lua script then pops up to its free prefetch from the list *and* records them as
  unacked, atomically (leaving a token behind when the list still holds more);
* the script keeps a *receipt* of what it took (the delivery tags, under a key
  named by the call, for :data:`RECEIPT_TTL` seconds).  When its answer is lost,
  the same call again (redis-py retries it on a new connection; this transport
  retries it after a reconnection) answers what it took the first time instead of
  taking more, so nothing taken sits unacked with no worker holding it;
* a lost token costs at most ``brpop_timeout`` (1 s): a worker whose wait ends
  with no token pops all the same (messages put back on a list by a restore, or
  pushed by hand, are found that way too);
* :func:`ack_messages` acks many messages in one pipeline;
* the synchronous client is built once per channel instead of once per command.

Anyone who can write to Redis can put anything on a queue, so every entry is checked
before it is delivered: one that is not JSON, not a kombu envelope (``properties``
with ``delivery_info`` and ``delivery_tag``), or over ``max_message_bytes`` is set
aside as a dead letter (:mod:`docqueue.deadletters`) and never delivered; the good
ones around it are.  The script checks the entries it pops inside Redis (the size
before decoding, so an oversized one never reaches a worker) and moves the bad ones
to the dead letters in the same atomic step; what only Python finds bad (cjson
accepts more than Python's json) is set aside here.

Select it with the broker URL scheme ``redis://`` and
``broker_transport = "docqueue.transport:Transport"`` (see :mod:`docqueue.broker`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu.message import Message
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

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

#: What a list's bell key is: the list's key and this.
BELL = ":bell"
#: Seconds a receipt of a pop is kept for its caller to ask again (a lost answer).
RECEIPT_TTL = 600

#: Pops up to ARGV[1] entries from the lists KEYS[9..] (in that order) and records
#: each good one in the unacked hash KEYS[1] and index KEYS[2] exactly as kombu's
#: QoS.append does (``[message, exchange, routing_key]`` under the delivery tag,
#: scored by ARGV[2]).  The stored entry is built by concatenation so the message
#: JSON is kept verbatim.  A bad entry (see :data:`CHECK_ENTRY_LUA`; ARGV[3] is
#: max_message_bytes) goes to the dead letters (KEYS[4..8], :data:`deadletters.KEYS`;
#: ARGV[4] is their limit, ARGV[5] the bytes kept of an oversized one) in the same
#: step.  A list left non-empty keeps a token on its bell.
#:
#: KEYS[3] is this call's receipt: the (list, tag) pairs it took, kept ARGV[6]
#: seconds.  Called again with the same receipt (its answer was lost), it takes
#: nothing and answers what it took, from the unacked hash.  ARGV[7], when not
#: empty, is the receipt of the caller's previous call, whose answer arrived: it is
#: deleted.  Returns ``{{list, tag, raw, ...}, {list, dead letter id, reason, ...}}``.
POP_AND_RECORD = (
    deadletters.SET_ASIDE_LUA
    + CHECK_ENTRY_LUA
    + """
if ARGV[7] ~= '' then redis.call('DEL', ARGV[7]) end
local good, dead = {}, {}
if redis.call('EXISTS', KEYS[3]) == 1 then
  local taken = redis.call('LRANGE', KEYS[3], 0, -1)
  for i = 1, #taken, 2 do
    local stored = redis.call('HGET', KEYS[1], taken[i + 1])
    if stored then  -- not acked or restored since
      local parts = cjson.decode(stored)
      local tail = ',' .. cjson.encode(parts[2]) .. ',' .. cjson.encode(parts[3]) .. ']'
      table.insert(good, taken[i])
      table.insert(good, taken[i + 1])
      table.insert(good, string.sub(stored, 2, string.len(stored) - string.len(tail)))
    end
  end
  return {good, dead}
end
local wanted, now = tonumber(ARGV[1]), ARGV[2]
local max_bytes, limit, kept = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local receipt = {}
for k = 9, #KEYS do
  if wanted <= 0 then break end
  local raws = redis.call('RPOP', KEYS[k], wanted)
  if raws then
    wanted = wanted - #raws
    for _, raw in ipairs(raws) do
      local reason, tag, info = check(raw, max_bytes)
      if reason then
        local cut = -1
        if string.len(raw) > max_bytes then cut = kept end
        local id = set_aside(4, KEYS[k], reason, raw, tonumber(now), limit, cut)
        table.insert(dead, KEYS[k])
        table.insert(dead, id)
        table.insert(dead, reason)
      else
        redis.call('ZADD', KEYS[2], now, tag)
        redis.call('HSET', KEYS[1], tag,
          '[' .. raw .. ',' .. cjson.encode(info['exchange']) .. ','
              .. cjson.encode(info['routing_key']) .. ']')
        table.insert(good, KEYS[k])
        table.insert(good, tag)
        table.insert(good, raw)
        table.insert(receipt, KEYS[k])
        table.insert(receipt, tag)
      end
    end
    if redis.call('LLEN', KEYS[k]) > 0 then
      redis.call('LPUSH', KEYS[k] .. ':bell', '1')
      redis.call('LTRIM', KEYS[k] .. ':bell', 0, 0)
    end
  end
end
if #receipt > 0 then
  redis.call('RPUSH', KEYS[3], unpack(receipt))
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
return {good, dead}
"""
)

#: The receipt key of one pop call.
RECEIPT_PREFIX = "docqueue.pop."

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

#: Pops whose answer was lost with the connection, as (lists, receipt): what they
#: took is recorded as unacked and held by no one.  A channel of this process asks
#: for them again (by receipt) once Redis answers: a worker takes back what it took.
_OWED_POPS: list[tuple[list[str], str]] = []


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, plus acking many tags in one round trip."""

    #: Set while delivering messages the Lua script already recorded as unacked.
    recorded_by_script = False

    def append(self, message: Message, delivery_tag: str) -> None:
        if self.recorded_by_script:
            virtual.QoS.append(self, message, delivery_tag)
            return
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors as exc:
            # An entry kombu took itself (basic_get) is recorded as unacked in a
            # second round trip.  When Redis goes away in between, the entry is in
            # this worker's hands and nowhere else (or it is recorded and only the
            # answer was lost): it is delivered all the same, since dropping it here
            # would lose it.
            logger.warning(
                "message %s could not be recorded as unacked (%s); it is processed all "
                "the same (should this worker die before acking it, `docqueue resume` "
                "republishes its documents)",
                delivery_tag,
                one_line(exc),
            )
            virtual.QoS.append(self, message, delivery_tag)

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
    #: kombu's: when the BRPOP now waiting was sent (its health check reads it).
    _brpop_sent_at: Any

    _sync_client: Any = None
    _pop_script: Any = None
    _set_aside_script: Any = None
    #: The receipt of this channel's last pop whose answer arrived (deleted by the next).
    _last_receipt: str | None = None
    #: How this channel's synchronous pool connects, read while the connection is
    #: open (see :meth:`_get_pool`).
    _sync_params: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("docqueue's Redis transport does not support global_keyprefix")
        self._sync_params = self._connparams()

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """kombu rebuilds a channel's pool from its connection's settings whenever it
        needs one.  When Redis goes away, Celery closes the lost connection (which
        drops the pool) and lets go of its settings; the channel is closed again
        after that, and its messages are still acked from the engine's writer: a
        pool rebuilt then from nothing raised AttributeError (``'NoneType' object
        has no attribute 'hostname'``), which killed the worker.  The synchronous
        pool is built from the settings read when the channel opened."""
        if asynchronous:
            return super()._get_pool(asynchronous=True)
        if self._sync_params is None:
            self._sync_params = self._connparams()
        return redis.ConnectionPool(**self._sync_params)

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

    def _list_keys(self, queues: Iterable[str]) -> list[str]:
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def _brpop_start(self, timeout: Any = None) -> None:
        """Wait on the bells of the lists consumed (see the module's docstring)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        bells = [key + BELL for key in self._list_keys(queues)]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command("BRPOP", *bells, wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            flush_reauth = getattr(self, "_flush_brpop_reauth", None)
            if flush_reauth is not None:
                flush_reauth()
        if getattr(self, "_closing", False):
            raise Empty()  # closing: take nothing more (a token lost costs a second)
        if reply:
            key = bytes_to_str(reply[0])[: -len(BELL)]
            self._queue_cycle.rotate(key.rsplit(self.sep, 1)[0])
            keys = [key]
        else:  # no token for a second: look all the same (see the module's docstring)
            keys = self._list_keys(self._queue_cycle.consume(len(self.active_queues)))
        taken = self._take_owed() + self._pop(keys)
        if not self._deliver_all(taken):
            raise Empty()
        return True

    def _take_owed(self) -> list[tuple[str, bytes, bytes]]:
        """Messages taken by pops whose answer was lost (see :data:`_OWED_POPS`)."""
        taken: list[tuple[str, bytes, bytes]] = []
        while _OWED_POPS:
            keys, receipt = _OWED_POPS[0]
            taken += self._pop(keys, receipt)
            _OWED_POPS.pop(0)
        return taken

    def _pop(self, keys: list[str], receipt: str | None = None) -> list[tuple[str, bytes, bytes]]:
        """Take what the prefetch allows from ``keys``, recorded as unacked (or, with
        the ``receipt`` of an earlier call, what that call took); bad entries go to
        the dead letters.  Returns (list, delivery tag, entry) triples."""
        room = self.qos.can_consume_max_estimate()
        wanted = self.batch_pop_limit if room is None else min(room, self.batch_pop_limit)
        if (wanted <= 0 and receipt is None) or not keys:
            return []
        call = receipt or RECEIPT_PREFIX + uuid.uuid4().hex
        try:
            with self.conn_or_acquire() as client:
                if self._pop_script is None:
                    self._pop_script = client.register_script(POP_AND_RECORD)
                good, dead = self._pop_script(
                    keys=[self.unacked_key, self.unacked_index_key, call, *deadletters.KEYS] + keys,
                    args=[
                        wanted,
                        time.time(),
                        self.max_message_bytes,
                        self.dead_letter_limit,
                        deadletters.KEPT_OF_OVERSIZED,
                        RECEIPT_TTL,
                        self._last_receipt or "",
                    ],
                    client=client,
                )
        except self.connection_errors:
            # The answer may be lost with what the call took: ask again later.
            if receipt is None:
                _OWED_POPS.append((keys, call))
            raise
        self._last_receipt = call
        for key, entry, reason in zip(dead[::3], dead[1::3], dead[2::3], strict=True):
            _log_set_aside(entry, bytes_to_str(key), bytes_to_str(reason))
        return [
            (bytes_to_str(key), tag, raw)
            for key, tag, raw in zip(good[::3], good[1::3], good[2::3], strict=True)
        ]

    def _deliver_all(self, taken: list[tuple[str, bytes, bytes]]) -> bool:
        """Deliver the entries the script recorded as unacked.  When a consumer's
        callback raises, the rest are still delivered (so that they are restored at
        close like any unacked message) and the first error is raised after them.
        Returns whether anything was delivered."""
        delivered = 0
        failure: BaseException | None = None
        self.qos.recorded_by_script = True
        try:
            for key, tag, raw in taken:
                payload, problem = decode_entry(raw, self.max_message_bytes)
                if payload is None:  # only Python finds it bad (cjson accepts more)
                    self._set_aside(key, problem or "unreadable", raw, recorded_tag=tag)
                    continue
                queue = key.rsplit(self.sep, 1)[0]
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

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Publish, leaving a token on the list's bell (one at most) in the same
        round trip."""
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        batch = kwargs.pop("_publish_batch", None)
        commands: list[tuple[str, tuple[Any, ...]]] = [
            ("lpush", (key, dumps(message))),
            ("lpush", (key + BELL, "1")),
            ("ltrim", (key + BELL, 0, 0)),
        ]
        if self._expires and queue in self._expires:
            commands += [
                ("pexpire", (self._q_for_pri(queue, pri), self._expires[queue]))
                for pri in self.priority_steps
            ]
        if batch is not None:
            for name, args in commands:
                batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: Any, routing_key: Any, pipe: Any, leftmost: bool = False
    ) -> None:
        """A message put back on its list (a reject, a restore) rings its bell too."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            bell = self._q_for_pri(queue, self._get_message_priority(payload, reverse=False)) + BELL
            pipe.lpush(bell, "1")
            pipe.ltrim(bell, 0, 0)

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
