"""Bearer tokens, and where the API may listen without one.

Tokens come from the ``api_tokens`` setting (``DOCQUEUE_API_TOKENS``), never from a
URL or the command line (where ``ps`` would show them), and are compared in constant
time.  Several may be valid at once, so a new one can be rolled out before the old
one is dropped.  Without any, every request is let in, which is why ``docqueue
serve`` then listens on loopback only (:func:`bind_problem`).  The live page logs
in once and sends a signed session cookie instead (:mod:`docqueue.api.session`).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from docqueue.api import session
from docqueue.api.errors import ApiError
from docqueue.config import Settings

bearer = HTTPBearer(
    auto_error=False,
    description="A token from DOCQUEUE_API_TOKENS, as `Authorization: Bearer <token>`",
)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Let the request in when it carries one of the configured tokens, or else the
    page's valid session cookie, not logged out (with its header when it changes
    something), or when none are configured; else 401.  Async: a comparison needs no
    worker thread (only a cookie's check against Redis takes one)."""
    settings: Settings = request.app.state.settings
    if not settings.api_tokens:
        return
    if credentials is None:
        cookie = request.cookies.get(session.COOKIE)
        if cookie is not None and session.valid(cookie, settings.api_tokens, time.time()):
            redis = request.app.state.client.redis
            if not await run_in_threadpool(session.revoked, redis, cookie):
                session.check_csrf(request)
                return
        raise ApiError(
            401,
            "no bearer token: send the header Authorization: Bearer <token>"
            + (
                " (the page's session is not valid or expired, or was logged out: log in again)"
                if cookie
                else ""
            ),
            "Authorization",
            CHALLENGE,
        )
    if session.matching_token(credentials.credentials, settings.api_tokens) is None:
        raise ApiError(401, "the bearer token is not valid", "Authorization", CHALLENGE)


def bind_problem(host: str, settings: Settings) -> str | None:
    """Why the API must not listen on ``host``: without a token, anything but
    loopback would let whoever reaches the host read and submit documents."""
    if settings.api_tokens or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without a token: anyone who can reach it could "
        "read and submit documents; set DOCQUEUE_API_TOKENS (a JSON list, or tokens "
        "separated by commas) or listen on 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
