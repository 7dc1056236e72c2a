"""A small TCP proxy a test can cut: every connection dropped, new ones refused,
until it is restored.  Used to take Redis or PostgreSQL away from a worker without
touching the real server.

It can also stand for a network between hosts, which the kernel here cannot
(no ``netem`` qdisc): ``delay`` seconds added to each direction (bytes are
forwarded in order, each chunk ``delay`` after it arrived), and ``reset_share`` of
the connections reset (RST) after a random 1 to 10 seconds, as a middlebox or a
failover does.
"""

from __future__ import annotations

import contextlib
import queue
import random
import select
import socket
import struct
import threading
import time
from urllib.parse import urlsplit

#: The port a URL of each scheme means when it names a host and no port.
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432}


class Proxy:
    def __init__(
        self,
        target: tuple[str, int] | str,
        *,
        host: str = "127.0.0.1",
        delay: float | None = None,
        reset_share: float = 0.0,
        seed: int = 25,
    ) -> None:
        """``target``: (host, port), or a unix socket path; ``host``: the address it
        listens on."""
        self.target = target
        self.host = host
        #: Seconds added to each direction (None: bytes go straight through); a
        #: number may be changed while connections run.
        self.delay = delay
        #: The share of connections reset after a random 1 to 10 seconds (new ones,
        #: and those open when it is set: see :meth:`_doom`).
        self.reset_share = reset_share
        #: Connections accepted, and reset on purpose.
        self.accepted = self.resets = 0
        self._random = random.Random(seed)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._judged: set[tuple[socket.socket, socket.socket]] = set()
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._doom, daemon=True).start()

    @classmethod
    def before(cls, url: str, **options: object) -> Proxy:
        """A proxy in front of the service a Redis or database URL names: its unix
        socket (``redis+socket://``) or its host and port.  Never a service the URL
        does not name.  ``options``: those of the constructor."""
        parts = urlsplit(url)
        if parts.scheme == "redis+socket":
            return cls(parts.path, **options)  # type: ignore[arg-type]
        scheme = parts.scheme.split("+")[0]
        if not parts.hostname or scheme not in DEFAULT_PORTS:
            raise ValueError(f"a proxy needs a host or a unix socket in the URL, not {url!r}")
        return cls((parts.hostname, parts.port or DEFAULT_PORTS[scheme]), **options)  # type: ignore[arg-type]

    def url(self, url: str) -> str:
        """``url`` (the one this proxy stands before) reaching its service through the
        proxy: same scheme, credentials and database."""
        parts = urlsplit(url)
        if parts.scheme == "redis+socket":
            auth = f":{parts.password}@" if parts.password else ""
            return f"redis://{auth}{self.host}:{self.port}/0"  # a socket URL means database 0
        user = parts.username or ""
        if parts.password:
            user += f":{parts.password}"
        netloc = f"{user}@{self.host}:{self.port}" if user else f"{self.host}:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.target)
            return sock
        return socket.create_connection(self.target)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = self._connect_target()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            if self.delay is not None:
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._delayed, args=(a, b), daemon=True).start()
            else:
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _doom(self) -> None:
        """Once a second: each connection not judged yet (while ``reset_share`` is
        set) is, with that chance, reset 1 to 10 seconds later."""
        while not self._closed:
            time.sleep(1.0)
            if not self.reset_share:
                continue
            with self._lock:
                fresh = [pair for pair in self._pairs if pair not in self._judged]
                self._judged.update(fresh)
                doomed = [pair for pair in fresh if self._random.random() < self.reset_share]
                lifetimes = [self._random.uniform(1.0, 10.0) for _ in doomed]
            for pair, lifetime in zip(doomed, lifetimes, strict=True):
                threading.Timer(lifetime, self._reset, args=pair).start()

    def _reset(self, a: socket.socket, b: socket.socket) -> None:
        """Abort both sides: each peer gets an RST, as from a middlebox that dropped
        the connection's state."""
        with self._lock:
            if (a, b) not in self._pairs:
                return
            self._pairs.remove((a, b))
            self.resets += 1
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)  # wakes this proxy's reader, sends nothing
            sock.close()  # with linger 0: an RST

    def _delayed(self, source: socket.socket, sink: socket.socket) -> None:
        """One direction: each chunk read from ``source`` is written to ``sink``
        ``delay`` seconds after it arrived, in order."""
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def send() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    if not data:
                        break
                    time.sleep(max(0.0, due - time.monotonic()))
                    sink.sendall(data)
            except OSError:
                pass
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=send, daemon=True).start()
        try:
            while data := source.recv(65536):
                chunks.put((time.monotonic() + (self.delay or 0.0), data))
        except OSError:
            pass
        chunks.put((0.0, b""))

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # cut from another thread: sockets closed under us
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()
