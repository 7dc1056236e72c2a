"""Completion webhooks: a job created with a callback URL gets its summary POSTed
there once it finishes (completed, with errors, or cancelled).

* The URL is checked when the job is created: http or https, a host the operator
  allowed in ``DOCQUEUE_WEBHOOK_HOSTS``, no credentials in it.
* The delivery row is written in SQL by the transaction that finishes the job
  (:mod:`docqueue.db.webhooks`), so no restart loses it.
* Senders (a thread in every worker and in ``docqueue serve``) claim due rows,
  POST them, and record the outcome; a failed attempt is retried after
  ``webhook_backoff`` seconds, doubling up to ``webhook_max_backoff``, at most
  ``webhook_max_attempts`` times.
* At least once: a sender that dies after the receiver answered and before it
  recorded so sends again after its lease; the receiver drops the repeat by its
  delivery id.  The body is signed: ``X-Docqueue-Signature: sha256=<hex>``, the
  HMAC-SHA256 of the exact body bytes keyed with ``DOCQUEUE_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from sqlalchemy import Engine

from docqueue.config import Settings
from docqueue.db import webhooks as rows
from docqueue.errors import one_line
from docqueue.params import InvalidParams

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Docqueue-Signature"
DELIVERY_HEADER = "X-Docqueue-Delivery"
EVENT_HEADER = "X-Docqueue-Event"
MAX_URL_CHARS = 2048


class CallbackRefused(InvalidParams):
    """A callback URL docqueue will not call (refused when the job is created)."""


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
    if not host_allowed(host, settings.webhook_hosts):
        allowed = ", ".join(settings.webhook_hosts) or "none"
        raise CallbackRefused(
            f"callback host {host!r} is not allowed: add it to DOCQUEUE_WEBHOOK_HOSTS "
            f"(allowed now: {allowed})"
        )
    return url


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` is one of ``allowed``: equal ignoring case, or a subdomain
    of an entry written ``*.example.com``."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def sign(body: bytes, secret: str) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, header: str, secret: str) -> bool:
    """What a receiver does: compare the header with the body's signature in
    constant time."""
    return hmac.compare_digest(sign(body, secret), header)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed attempt: following it could reach a host that
    ``webhook_hosts`` does not allow."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, delivery_id: str, secret: str, timeout: float) -> None:
    """POST once; raises with a one-line reason unless the receiver answered 2xx."""
    from docqueue import __version__  # the package imports this module

    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"docqueue/{__version__}",
            DELIVERY_HEADER: delivery_id,
            EVENT_HEADER: rows.JOB_FINISHED,
            SIGNATURE_HEADER: sign(body, secret),
        },
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the receiver answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RuntimeError(f"could not reach the receiver: {reason}") from exc


class Sender:
    """Posts due deliveries, one claimed row at a time."""

    def __init__(self, db: Engine, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._said_no_secret = False

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        base = self.settings.webhook_backoff * 2 ** (attempts - 1)
        return float(min(base, self.settings.webhook_max_backoff))

    def run_once(self, now: float | None = None) -> int:
        """Attempt every delivery due now; returns how many were delivered."""
        secret = self.settings.webhook_secret
        with self.db.connect() as conn:
            due = rows.due(conn, time.time() if now is None else now)
        if due and secret is None:
            if not self._said_no_secret:  # once, not every second
                log.error(
                    "%d webhook deliveries are due but DOCQUEUE_WEBHOOK_SECRET is not set; "
                    "they wait until a sender that has it sends them",
                    len(due),
                )
                self._said_no_secret = True
            return 0
        sent = 0
        for delivery in due:
            assert secret is not None
            sent += self._attempt(delivery, secret.get_secret_value())
        return sent

    def _attempt(self, delivery: rows.Due, secret: str) -> bool:
        with self.db.begin() as conn:
            if not rows.claim(conn, delivery.id, time.time(), self.settings.webhook_lease):
                return False  # another sender has it
        try:
            post(
                delivery.url,
                delivery.body.encode(),
                delivery.id,
                secret,
                self.settings.webhook_timeout,
            )
        except Exception as exc:
            self._failed(delivery, one_line(exc))
            return False
        with self.db.begin() as conn:
            rows.delivered(conn, delivery.id, time.time())
        log.info("job %s: webhook delivery %s sent", delivery.job_id, delivery.id)
        return True

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


class SenderThread(threading.Thread):
    """A :class:`Sender` polling every ``webhook_poll_interval`` seconds until
    stopped.  A database outage only pauses it."""

    def __init__(self, db: Engine, settings: Settings) -> None:
        super().__init__(name="docqueue-webhooks", daemon=True)
        self.sender = Sender(db, settings)
        self.interval = settings.webhook_poll_interval
        self.stopping = threading.Event()

    def run(self) -> None:
        failing = False
        while not self.stopping.is_set():
            try:
                self.sender.run_once()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("webhook sender: %s", one_line(exc))
                failing = True
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.sender.settings.webhook_timeout + 1)
