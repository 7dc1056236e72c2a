"""Which ``Host`` the API answers to, and which ``Origin`` may change something:
the defence against DNS rebinding and cross-site forms.

Without a token, ``docqueue serve`` listens on loopback only, and whatever reaches
it is let in.  A web page on any site can still reach it through the visitor's
browser: a name of the page's own that its DNS rebinds to 127.0.0.1 makes the
browser send every request (reads included) with that name as ``Host``, and a
plain HTML form (or a ``text/plain`` fetch, which needs no preflight) posts from
the page's origin.  So:

* the ``Host`` of a request must be a name the server is known by: a loopback name
  or address (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``; checked as
  written, never resolved, since resolving is what rebinding subverts), the
  address ``docqueue serve --host`` names, or one of ``DOCQUEUE_API_HOSTS``;
* a request that changes something (any method but GET, HEAD and OPTIONS) and
  carries an ``Origin`` must come from the server's own origin (the ``Host`` it was
  sent to) or from one of ``DOCQUEUE_API_HOSTS``.  Backends and command-line
  clients send no ``Origin``; browsers always do on such requests.

``GET /health`` is answered whatever its ``Host``: load balancers and probes call
it by address, and it tells nothing about jobs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from docqueue.api.errors import error_response

#: Methods that change nothing: no ``Origin`` check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Answered whatever the ``Host``.
ANY_HOST_PATHS = frozenset({"/health"})
#: ``--host`` values that stand for every address (no name to add).
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class HostName:
    """A host as a request or a setting names it: the name (lower case, without
    brackets or a final dot) and the port, if one is given."""

    name: str
    port: int | None

    @classmethod
    def parse(cls, value: str) -> HostName | None:
        """``name``, ``name:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address;
        None when it is none of these."""
        value = value.strip().lower()
        if value.startswith("["):
            name, bracket, rest = value[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                return None
            port = rest[1:]
        elif value.count(":") > 1:  # a bare IPv6 address (in a setting)
            name, port = value, ""
        else:
            name, _, port = value.partition(":")
        name = name.rstrip(".")
        port = "" if port == "*" else port  # any port
        if not name or (port and not (port.isascii() and port.isdigit())):
            return None
        return cls(name, int(port) if port else None)

    def matches(self, entry: HostName) -> bool:
        """Whether this host is the one ``entry`` allows: the same name, or a
        subdomain of ``*.example.com``; the same port when the entry names one."""
        if entry.port is not None and entry.port != self.port:
            return False
        if entry.name.startswith("*."):
            return self.name.endswith(entry.name[1:])
        return self.name == entry.name


def is_loopback_name(name: str) -> bool:
    """A loopback name or address as written (never resolved)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def known_hosts(configured: Sequence[str]) -> list[HostName]:
    """The hosts of ``configured`` (``DOCQUEUE_API_HOSTS``) that parse."""
    return [host for host in map(HostName.parse, configured) if host is not None]


def with_listen_host(configured: Sequence[str], host: str, port: int) -> list[str]:
    """``configured`` and the address (and port) ``docqueue serve`` listens on,
    unless that stands for every address."""
    if host.strip() in WILDCARD_ADDRESSES:
        return list(configured)
    name = f"[{host.strip('[]')}]" if ":" in host else host
    return [*configured, f"{name}:{port}"]


def host_problem(request_host: HostName | None, known: Sequence[HostName]) -> str | None:
    """Why a request sent to ``request_host`` is refused, or None."""
    if request_host is None:
        return "the Host header is not a host name; send the name of this server"
    if is_loopback_name(request_host.name) or any(request_host.matches(h) for h in known):
        return None
    return (
        f"this server does not answer to the host {request_host.name!r}: call it by a name "
        "it listens as, or add that name to DOCQUEUE_API_HOSTS"
    )


def origin_problem(
    origin: str, request_host: HostName | None, scheme: str, configured: Sequence[HostName]
) -> str | None:
    """Why a request that changes something, sent from ``origin``, is refused."""
    refused = (
        f"a cross-site request from the origin {origin[:100]!r} may not change anything "
        "here; call the API from a backend (no Origin header), or add the origin's host "
        "to DOCQUEUE_API_HOSTS"
    )
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return refused
    if parts.hostname is None:  # "null": a sandboxed frame, a file, a redirect
        return refused
    sender = HostName(parts.hostname.rstrip("."), port or DEFAULT_PORTS.get(parts.scheme))
    if request_host is not None:
        own = HostName(request_host.name, request_host.port or DEFAULT_PORTS.get(scheme))
        if sender == own:
            return None
    if any(sender.matches(entry) for entry in configured):
        return None
    return refused


class HostCheck:
    """An ASGI middleware refusing (400, 403) what :func:`host_problem` and
    :func:`origin_problem` find."""

    def __init__(self, app: ASGIApp, *, configured: Sequence[str]) -> None:
        self.app = app
        self.configured = known_hosts(configured)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ANY_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("host")
        request_host = None if given is None else HostName.parse(given)
        if given is not None and (problem := host_problem(request_host, self.configured)):
            await error_response(400, problem, "Host")(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            problem = origin_problem(origin, request_host, scope["scheme"], self.configured)
            if problem is not None:
                await error_response(403, problem, "Origin")(scope, receive, send)
                return
        await self.app(scope, receive, send)
