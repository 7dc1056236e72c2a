"""Completion webhooks: a job created with a callback URL gets its summary POSTed
there once it finishes (completed, with errors, or cancelled); an OpenAI-compatible
batch gets OpenAI's batch event POSTed to ``DOCQUEUE_WEBHOOK_BATCH_URL``.

* The URL is checked when the job is created: http or https, a host (and port) the
  operator allowed in ``DOCQUEUE_WEBHOOK_HOSTS``, no credentials in it.
* The delivery row is written in SQL by the transaction that finishes the job
  (:mod:`docqueue.db.webhooks`), so no restart loses it.
* Senders (a thread in every worker and in ``docqueue serve``) claim due rows and
  POST them, many at once but few to one receiver, each attempt within
  ``webhook_timeout`` seconds all told (below the claim's ``webhook_lease``), and
  record the outcome; a failed attempt is retried after ``webhook_backoff`` seconds,
  doubling up to ``webhook_max_backoff``, at most ``webhook_max_attempts`` times.
* At least once: a sender that dies after the receiver answered and before it
  recorded so sends again after its lease; the receiver drops the repeat by its
  delivery id.  The body is signed twice with ``DOCQUEUE_WEBHOOK_SECRET``:
  ``X-Docqueue-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes,
  and the Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``) that OpenAI's SDK and Standard Webhooks libraries verify.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from docqueue.config import Settings
from docqueue.db import Database
from docqueue.db import webhooks as rows
from docqueue.errors import one_line
from docqueue.params import InvalidParams

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Docqueue-Signature"
DELIVERY_HEADER = "X-Docqueue-Delivery"
EVENT_HEADER = "X-Docqueue-Event"
MAX_URL_CHARS = 2048
#: Attempts one sender makes at once, and at once to one receiver.
IN_FLIGHT = 32
PER_RECEIVER = 4
DEFAULT_PORTS = {"http": 80, "https": 443}


class CallbackRefused(InvalidParams):
    """A callback URL docqueue will not call (refused when the job is created)."""

    param = "callback_url"


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL, if docqueue may POST to it; else :class:`CallbackRefused` naming the
    problem and the setting that decides it."""
    if settings.webhook_secret is None:
        raise CallbackRefused(
            "callback URLs need DOCQUEUE_WEBHOOK_SECRET (deliveries are signed with it); "
            "ask the operator to set it"
        )
    if len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable():
        raise CallbackRefused(
            f"callback URL: use printable ASCII, at most {MAX_URL_CHARS} characters"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise CallbackRefused(f"callback URL is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback URL: use an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused(
            "callback URL: no user or password in it (it would be stored and logged); "
            "the receiver checks the X-Docqueue-Signature header instead"
        )
    host = parts.hostname
    allowed = ", ".join(settings.webhook_hosts) or "none"
    if not any(_name_matches(host, _split_entry(e)[0]) for e in settings.webhook_hosts):
        raise CallbackRefused(
            f"callback host {host!r} is not allowed: add it to DOCQUEUE_WEBHOOK_HOSTS "
            f"(allowed now: {allowed})"
        )
    if not host_allowed(host, settings.webhook_hosts, parts.port, parts.scheme):
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        shown = f"[{host}]" if ":" in host else host
        raise CallbackRefused(
            f"callback port {port} of host {host!r} is not allowed: add {shown}:{port} "
            f"(or {shown}:* for any port) to DOCQUEUE_WEBHOOK_HOSTS (allowed now: {allowed})"
        )
    return url


def host_allowed(
    host: str, allowed: list[str], port: int | None = None, scheme: str = "https"
) -> bool:
    """Whether ``host`` and ``port`` are one of ``allowed``: the name equal ignoring
    case, or a subdomain of an entry written ``*.example.com``; and the port the
    entry names (``host:8443``), any port for ``host:*``, or else the scheme's own
    (80 for http, 443 for https), so an allowed host's other services are not."""
    wanted = port if port is not None else DEFAULT_PORTS.get(scheme)
    for entry in allowed:
        name, entry_port = _split_entry(entry)
        if not _name_matches(host, name):
            continue
        if (
            entry_port == "*"
            or (int(entry_port) if entry_port else DEFAULT_PORTS.get(scheme)) == wanted
        ):
            return True
    return False


def _name_matches(host: str, name: str) -> bool:
    host = host.lower().rstrip(".")
    return host.endswith(name[1:]) if name.startswith("*.") else host == name


def _split_entry(entry: str) -> tuple[str, str]:
    """``(name, port)`` of an allow-list entry (port: digits, ``*`` or empty)."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, _, port = entry.partition(":")
    return name.rstrip("."), port


def sign(body: bytes, secret: str) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, header: str, secret: str) -> bool:
    """What a receiver does: compare the header with the body's signature in
    constant time."""
    return hmac.compare_digest(sign(body, secret), header)


def standard_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks signature: the bytes a ``whsec_``
    secret encodes in base64, else the secret's own bytes (what the openai SDK's
    ``webhooks.unwrap`` does with the secret it is given)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :] + "==")
    return secret.encode()


def standard_headers(delivery_id: str, body: bytes, secret: str, now: float) -> dict[str, str]:
    """The Standard Webhooks headers: the delivery id (the same every attempt), this
    attempt's time, and ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``
    (receivers refuse a timestamp more than 5 minutes off, so each attempt signs
    anew)."""
    timestamp = str(int(now))
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def wire_body(delivery: rows.Due) -> tuple[bytes, str]:
    """What is sent for ``delivery``, and its event: the job's summary, or for an
    OpenAI-compatible batch the event an OpenAI batch webhook carries
    (``{"id", "object": "event", "created_at", "type": "batch.completed", "data":
    {"id": "batch_..."}}``), made from the row alone, so every attempt sends the
    same bytes."""
    if delivery.batch_id is None:
        return delivery.body.encode(), rows.JOB_FINISHED
    event = rows.batch_event(delivery)
    body = json.dumps(event, separators=(",", ":"), sort_keys=True)
    return body.encode(), str(event["type"])


async def post(client: httpx.AsyncClient, delivery: rows.Due, secret: str, deadline: float) -> None:
    """POST once, within ``deadline`` seconds all told (connecting, sending, the
    answer's headers); raises with a one-line reason unless the receiver answered
    2xx.  A redirect is a failed attempt: following it could reach a host that
    ``webhook_hosts`` does not allow."""
    import httpx  # the sender's alone: the client's import stays light

    from docqueue import __version__  # the package imports this module

    body, event = wire_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"docqueue/{__version__}",
        DELIVERY_HEADER: delivery.id,
        EVENT_HEADER: event,
        SIGNATURE_HEADER: sign(body, secret),
        **standard_headers(delivery.id, body, secret, time.time()),
    }
    try:
        status = await asyncio.wait_for(_status_of(client, delivery.url, body, headers), deadline)
    except (asyncio.TimeoutError, TimeoutError):
        raise RuntimeError(
            f"the receiver did not answer within {deadline:g}s (DOCQUEUE_WEBHOOK_TIMEOUT)"
        ) from None
    except httpx.HTTPError as exc:
        raise RuntimeError(f"could not reach the receiver: {one_line(exc)}") from exc
    if not 200 <= status[0] < 300:
        raise RuntimeError(f"the receiver answered {status[0]} {status[1]}")


async def _status_of(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    async with client.stream("POST", url, content=body, headers=headers) as response:
        return response.status_code, response.reason_phrase


class Sender:
    """Posts due deliveries, several at once: at most :data:`IN_FLIGHT` in all and
    :data:`PER_RECEIVER` to one receiver (scheme, host and port), so a receiver that
    is slow or never answers holds a few of them, never the others."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._said_no_secret = False
        #: The attempts under way in this process, by delivery id.
        self.in_flight: dict[str, asyncio.Task[bool]] = {}
        self._receivers: dict[str, int] = {}

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        base = self.settings.webhook_backoff * 2 ** (attempts - 1)
        return float(min(base, self.settings.webhook_max_backoff))

    def client(self) -> httpx.AsyncClient:
        """The HTTP client the attempts share: the system's certificates, proxies
        from the environment, no redirects followed."""
        import httpx

        return httpx.AsyncClient(
            verify=ssl.create_default_context(),
            follow_redirects=False,
            timeout=None,  # the deadline is the attempt's, all told (post)
            limits=httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=0),
        )

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due now and wait for the attempts; returns how
        many were delivered (tests, and a one-off drain)."""

        async def all_due() -> int:
            async with self.client() as client:
                await self.start_due(client, now)
                results = await asyncio.gather(*self.in_flight.values())
            return sum(results)

        return asyncio.run(all_due())

    async def start_due(self, client: httpx.AsyncClient, now: float | None = None) -> int:
        """Start an attempt at each due delivery there is room for; returns how many
        were started (they go on in the background)."""
        secret = self.settings.webhook_secret
        busy = [r for r, n in self._receivers.items() if n >= PER_RECEIVER]
        due = await asyncio.to_thread(self._due, time.time() if now is None else now, busy)
        if due and secret is None:
            if not self._said_no_secret:  # once, not every second
                log.error(
                    "%d webhook deliveries are due but DOCQUEUE_WEBHOOK_SECRET is not set; "
                    "they wait until a sender that has it sends them",
                    len(due),
                )
                self._said_no_secret = True
            return 0
        started = 0
        for delivery in due:
            receiver = receiver_of(delivery.url)
            if len(self.in_flight) >= IN_FLIGHT:
                break
            if delivery.id in self.in_flight or self._receivers.get(receiver, 0) >= PER_RECEIVER:
                continue
            if not await asyncio.to_thread(self._claim, delivery.id):
                continue  # another sender has it
            assert secret is not None
            task = asyncio.create_task(self._attempt(client, delivery, secret.get_secret_value()))
            self.in_flight[delivery.id] = task
            self._receivers[receiver] = self._receivers.get(receiver, 0) + 1
            task.add_done_callback(functools.partial(self._done, delivery.id, receiver))
            started += 1
        return started

    def _done(self, delivery_id: str, receiver: str, _: object) -> None:
        self.in_flight.pop(delivery_id, None)
        self._receivers[receiver] -= 1
        if not self._receivers[receiver]:
            del self._receivers[receiver]

    def _due(self, now: float, busy: list[str]) -> list[rows.Due]:
        with self.db.connect() as conn:
            return rows.due(conn, now, limit=4 * IN_FLIGHT, skip_receivers=busy)

    def _claim(self, delivery_id: str) -> bool:
        with self.db.begin() as conn:
            return rows.claim(conn, delivery_id, time.time(), self.settings.webhook_lease)

    async def _attempt(self, client: httpx.AsyncClient, delivery: rows.Due, secret: str) -> bool:
        """One attempt, over before the claim's lease ends (webhook_timeout is below
        webhook_lease): no other sender sends the delivery while this one does."""
        try:
            await post(client, delivery, secret, self.settings.webhook_timeout)
        except Exception as exc:
            await asyncio.to_thread(self._failed, delivery, one_line(exc))
            return False
        await asyncio.to_thread(self._delivered, delivery)
        return True

    def _delivered(self, delivery: rows.Due) -> None:
        with self.db.begin() as conn:
            rows.delivered(conn, delivery.id, time.time())
        log.info("job %s: webhook delivery %s sent", delivery.job_id, delivery.id)

    def _failed(self, delivery: rows.Due, error: str) -> None:
        attempts = delivery.attempts + 1
        now = time.time()
        give_up = attempts >= self.settings.webhook_max_attempts
        next_at = None if give_up else now + self.backoff(attempts)
        with self.db.begin() as conn:
            rows.attempt_failed(conn, delivery.id, error, next_at, now)
        if give_up:
            log.error(
                "job %s: webhook delivery %s given up after %d attempts: %s",
                delivery.job_id,
                delivery.id,
                attempts,
                error,
            )
        else:
            log.warning(
                "job %s: webhook attempt %d failed (%s); next in %.1fs",
                delivery.job_id,
                attempts,
                error,
                next_at - now if next_at else 0.0,
            )


def receiver_of(url: str) -> str:
    """``scheme://host:port`` of a URL: what :data:`PER_RECEIVER` counts by."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        port = None
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


class SenderThread(threading.Thread):
    """A :class:`Sender` looking for due deliveries every ``webhook_poll_interval``
    seconds until stopped; attempts go on between looks.  A database outage only
    pauses it."""

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(name="docqueue-webhooks", daemon=True)
        self.sender = Sender(db, settings)
        self.interval = settings.webhook_poll_interval
        self.stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        failing = False
        async with self.sender.client() as client:
            while not self.stopping.is_set():
                try:
                    await self.sender.start_due(client)
                    failing = False
                except Exception as exc:
                    if not failing:
                        log.warning("webhook sender: %s", one_line(exc))
                    failing = True
                await asyncio.sleep(self.interval)
            # attempts under way end by their deadline; the rest is the next one's
            if self.sender.in_flight:
                await asyncio.wait(
                    list(self.sender.in_flight.values()),
                    timeout=self.sender.settings.webhook_timeout,
                )

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.sender.settings.webhook_timeout + self.interval + 2)
