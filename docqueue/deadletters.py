"""Dead letters: messages set aside because they cannot (or must not) be run.

Anything on a docqueue queue that is not a valid message -- not JSON, not a kombu
envelope, too big, failing the wire schema, or disagreeing with the ledger -- is
moved here instead of being dropped, with the reason, the queue it came from and
the time.  An operator lists, inspects, purges or replays them
(``docqueue dead-letters``; :class:`docqueue.producer.client.Client`).

Layout in Redis (binary-safe: a body is kept byte for byte):

* ``docqueue.dead-letters`` -- a list of entry ids, newest first;
* ``docqueue.dead-letters.entries`` -- hash: id -> JSON metadata;
* ``docqueue.dead-letters.bodies`` -- hash: id -> the raw message;
* ``docqueue.dead-letters.next-id`` and ``docqueue.dead-letters.dropped`` -- counters.

The list is capped (``dead_letter_limit``): the oldest entries are dropped and
counted.  Entries are written by one Lua snippet, :data:`SET_ASIDE_LUA`, which the
transport's pop script embeds too, so an entry set aside inside Redis (without its
body ever reaching a worker) reads the same as one set aside by Python.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LIST_KEY = "docqueue.dead-letters"
ENTRIES_KEY = "docqueue.dead-letters.entries"
BODIES_KEY = "docqueue.dead-letters.bodies"
NEXT_ID_KEY = "docqueue.dead-letters.next-id"
DROPPED_KEY = "docqueue.dead-letters.dropped"
#: Keys a script that sets entries aside must declare, in this order.
KEYS = [LIST_KEY, ENTRIES_KEY, BODIES_KEY, NEXT_ID_KEY, DROPPED_KEY]

#: Bytes of a body kept when the message is over the size limit (enough to see
#: what it was; such an entry cannot be replayed).
KEPT_OF_OVERSIZED = 64 * 1024

#: ``set_aside(keys_offset, queue, reason, raw, now, limit, kept)``: records one
#: entry; a Lua function for scripts to embed.  ``keys_offset`` is where
#: :data:`KEYS` start in the script's KEYS.  Bodies longer than ``kept`` bytes are
#: cut to ``kept`` and marked truncated (``kept`` < 0: never cut).
SET_ASIDE_LUA = """
local function set_aside(k, queue, reason, raw, now, limit, kept)
  local id = redis.call('INCR', KEYS[k + 3])
  local size = string.len(raw)
  local truncated = false
  if kept >= 0 and size > kept then
    raw = string.sub(raw, 1, kept)
    truncated = true
  end
  local meta = cjson.encode({id = id, queue = queue, reason = reason, at = now,
                             size = size, truncated = truncated})
  redis.call('HSET', KEYS[k + 1], id, meta)
  redis.call('HSET', KEYS[k + 2], id, raw)
  redis.call('LPUSH', KEYS[k], id)
  while redis.call('LLEN', KEYS[k]) > limit do
    local old = redis.call('RPOP', KEYS[k])
    redis.call('HDEL', KEYS[k + 1], old)
    redis.call('HDEL', KEYS[k + 2], old)
    redis.call('INCR', KEYS[k + 4])
  end
  return id
end
"""

_SET_ASIDE = (
    SET_ASIDE_LUA
    + """
return set_aside(1, ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
                 tonumber(ARGV[6]))
"""
)

#: Removes entries by id (all when none are given); returns how many were removed.
_PURGE = """
local ids = ARGV
if #ids == 0 then ids = redis.call('LRANGE', KEYS[1], 0, -1) end
local removed = 0
for _, id in ipairs(ids) do
  removed = removed + redis.call('LREM', KEYS[1], 0, id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return removed
"""

#: Moves one entry's body back to the tail its queue is read from (kombu LPUSHes
#: and BRPOPs), and removes the entry, atomically.  1 when replayed, 0 when gone.
_REPLAY = """
local body = redis.call('HGET', KEYS[3], ARGV[1])
if not body then return 0 end
redis.call('LPUSH', ARGV[2], body)
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    #: The queue it was taken from.
    queue: str
    #: Why it was set aside, in one line.
    reason: str
    #: When (epoch seconds).
    at: float
    #: Its size in bytes.
    size: int
    #: Only the first :data:`KEPT_OF_OVERSIZED` bytes were kept (it was over the
    #: size limit); it cannot be replayed.
    truncated: bool
    #: The message as it was on the queue (None when listed without bodies).
    body: bytes | None = None

    def to_json(self, body: bool = False) -> dict[str, Any]:
        """JSON-ready fields; the body (when asked for and loaded) as text, with
        bytes that are not UTF-8 shown as U+FFFD."""
        out: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "reason": self.reason,
            "at": self.at,
            "size": self.size,
            "truncated": self.truncated,
        }
        if body and self.body is not None:
            out["body"] = self.body.decode("utf-8", errors="replace")
        return out


def set_aside(
    redis: Any,
    queue: str,
    reason: str,
    body: bytes | str,
    *,
    limit: int,
    max_bytes: int | None = None,
) -> int:
    """Record a message as a dead letter; returns its id.  A body over ``max_bytes``
    is kept cut to :data:`KEPT_OF_OVERSIZED` bytes."""
    raw = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    kept = KEPT_OF_OVERSIZED if max_bytes is not None and len(raw) > max_bytes else -1
    return int(
        redis.eval(_SET_ASIDE, len(KEYS), *KEYS, queue, reason, raw, time.time(), limit, kept)
    )


@dataclass(frozen=True)
class DeadLetterCounts:
    """The dead letters held in Redis, their cap, and how many the cap dropped."""

    held: int
    limit: int
    dropped: int


def counts(redis: Any, limit: int) -> DeadLetterCounts:
    """What ``docqueue dead-letters list``, the API and its metrics report."""
    return DeadLetterCounts(held=count(redis), limit=limit, dropped=dropped(redis))


def count(redis: Any) -> int:
    return int(redis.llen(LIST_KEY))


def dropped(redis: Any) -> int:
    """Entries dropped because the list was full."""
    return int(redis.get(DROPPED_KEY) or 0)


def listing(redis: Any, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
    """Entries, newest first, without their bodies."""
    ids = redis.lrange(LIST_KEY, offset, offset + limit - 1) if limit > 0 else []
    if not ids:
        return []
    metas = redis.hmget(ENTRIES_KEY, ids)
    return [_entry(meta) for meta in metas if meta is not None]


def get(redis: Any, entry_id: int) -> DeadLetter | None:
    """One entry, with its body."""
    meta, body = redis.hget(ENTRIES_KEY, entry_id), redis.hget(BODIES_KEY, entry_id)
    if meta is None:
        return None
    entry = _entry(meta)
    return DeadLetter(**{**entry.__dict__, "body": body})


def purge(redis: Any, ids: Iterable[int] | None = None) -> int:
    """Remove the given entries (every entry when ``ids`` is None); returns how many."""
    args = [] if ids is None else [str(i) for i in ids]
    if ids is not None and not args:
        return 0
    return int(redis.eval(_PURGE, 3, LIST_KEY, ENTRIES_KEY, BODIES_KEY, *args))


def replay(redis: Any, ids: Iterable[int] | None = None) -> tuple[list[int], dict[int, str]]:
    """Put entries back on the queues they came from, for workers to take again
    (after a fix: a message that is still bad comes back here).  Every entry when
    ``ids`` is None.  Returns the ids replayed and, for the others, why not."""
    wanted = (
        [int(i) for i in redis.lrange(LIST_KEY, 0, -1)][::-1]  # oldest first
        if ids is None
        else list(ids)
    )
    replayed: list[int] = []
    refused: dict[int, str] = {}
    for entry_id in wanted:
        meta = redis.hget(ENTRIES_KEY, entry_id)
        if meta is None:
            refused[entry_id] = "no such dead letter"
            continue
        entry = _entry(meta)
        if entry.truncated:
            refused[entry_id] = (
                f"only the first {KEPT_OF_OVERSIZED} of its {entry.size} bytes were kept"
            )
            continue
        if redis.eval(_REPLAY, 3, LIST_KEY, ENTRIES_KEY, BODIES_KEY, entry_id, entry.queue):
            replayed.append(entry_id)
        else:
            refused[entry_id] = "no such dead letter"
    return replayed, refused


def _entry(meta: bytes | str) -> DeadLetter:
    fields = json.loads(meta)
    return DeadLetter(
        id=int(fields["id"]),
        queue=str(fields["queue"]),
        reason=str(fields["reason"]),
        at=float(fields["at"]),
        size=int(fields["size"]),
        truncated=bool(fields["truncated"]),
    )
