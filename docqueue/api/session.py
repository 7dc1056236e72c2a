"""The live page's login: a token POSTed once, then a signed session cookie.

The cookie never holds the token.  It holds an expiry and a random nonce, signed
with HMAC-SHA256 under a key derived from the token that logged in, so that:

- any API process with the same ``DOCQUEUE_API_TOKENS`` accepts it (no shared
  session store, several processes behind a load balancer work);
- dropping a token from the setting ends every session it opened;
- it expires after :data:`SESSION_SECONDS` whatever the browser does;
- logging out revokes it for every process: its nonce is kept in Redis until it
  would have expired (:func:`revoke`), so a copy of the cookie stops working too.
  A process that cannot reach Redis cannot tell, and refuses the cookie (503);
  bearer tokens need no such check.

It is ``HttpOnly`` (page scripts cannot read it) and ``SameSite=Strict`` (no other
site's page makes the browser send it).  A call that changes something and is
authenticated by the cookie must also carry the :data:`CSRF_HEADER` header, which
another site's page cannot add without a CORS preflight the API never grants.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import SecretStr, StringConstraints

from docqueue.api.errors import ApiError
from docqueue.api.schemas import _Out, _Strict
from docqueue.config import Settings

router = APIRouter(prefix="/api", tags=["page session"])

COOKIE = "docqueue_session"
#: The header the page sends with every call; required with the cookie on calls
#: that change something (any method but GET, HEAD and OPTIONS).
CSRF_HEADER = "X-Docqueue-Page"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: How long a login lasts.
SESSION_SECONDS = 12 * 3600
_VERSION = "v1"
_KEY_LABEL = b"docqueue page session v1"


class Login(_Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    """One of DOCQUEUE_API_TOKENS."""


class SessionOut(_Out):
    required: bool
    """Whether the API needs a token at all (DOCQUEUE_API_TOKENS is set)."""
    expires_at: float | None
    """When the session cookie stops being accepted (None: no session needed)."""


def _key(token: SecretStr) -> bytes:
    return hmac.new(token.get_secret_value().encode(), _KEY_LABEL, hashlib.sha256).digest()


def _signature(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(token: SecretStr, now: float) -> tuple[str, int]:
    """A session value signed under ``token``'s key, and when it expires."""
    expires = int(now) + SESSION_SECONDS
    payload = f"{_VERSION}.{expires}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_signature(_key(token), payload)}", expires


def valid(value: str, tokens: Sequence[SecretStr], now: float) -> bool:
    """Whether ``value`` is an unexpired session signed under one of ``tokens``'
    keys (each is tried, in constant time)."""
    payload, _, signature = value.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not (parts[1].isascii() and parts[1].isdigit()):
        return False
    if int(parts[1]) < now:
        return False
    matches = [hmac.compare_digest(signature, _signature(_key(t), payload)) for t in tokens]
    return any(matches)


def _revoked_key(value: str) -> str:
    return f"docqueue:session:revoked:{value.split('.')[2]}"


def revoke(redis: Any, value: str, now: float) -> None:
    """Remember the valid session ``value`` as logged out until it expires."""
    expires = int(value.split(".")[1])
    redis.set(_revoked_key(value), b"1", ex=max(1, expires - int(now) + 1))


def revoked(redis: Any, value: str) -> bool:
    """Whether the valid session ``value`` was logged out (raises a Redis error
    when Redis cannot say)."""
    return bool(redis.exists(_revoked_key(value)))


def matching_token(given: str, tokens: Sequence[SecretStr]) -> SecretStr | None:
    """The configured token equal to ``given`` (every one compared, in constant
    time, so the time taken says nothing about which matched)."""
    found = None
    for token in tokens:
        if hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            found = token
    return found


def check_csrf(request: Request) -> None:
    """Refuse a cookie-authenticated call that changes something unless it carries
    :data:`CSRF_HEADER` (only the page's own scripts send it)."""
    if request.method not in SAFE_METHODS and CSRF_HEADER.lower() not in request.headers:
        raise ApiError(
            403,
            f"a call authenticated by the page's cookie must send the header {CSRF_HEADER}: 1",
            CSRF_HEADER,
        )


@router.post("/session", summary="Log the live page in: a token in, a session cookie out")
def login(body: Login, request: Request, response: Response) -> SessionOut:
    """Sets an HttpOnly, SameSite=Strict cookie; the token itself is not in it."""
    check_csrf(request)
    settings: Settings = request.app.state.settings
    if not settings.api_tokens:
        return SessionOut(required=False, expires_at=None)
    token = matching_token(body.token, settings.api_tokens)
    if token is None:
        raise ApiError(401, "the token is not valid", "token")
    value, expires = issue(token, time.time())
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return SessionOut(required=True, expires_at=float(expires))


@router.delete("/session", summary="Log the live page out: its session ends everywhere")
def logout(request: Request, response: Response) -> SessionOut:
    """The session is revoked (a copy of its cookie stops working on every API
    process) and the browser told to forget the cookie."""
    check_csrf(request)
    settings: Settings = request.app.state.settings
    cookie = request.cookies.get(COOKIE)
    now = time.time()
    if cookie is not None and valid(cookie, settings.api_tokens, now):
        revoke(request.app.state.client.redis, cookie, now)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return SessionOut(required=bool(settings.api_tokens), expires_at=None)
