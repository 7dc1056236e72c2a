"""A local worker stops when the process that started it is gone.

``docqueue annotate``, ``docqueue bench`` and ``docqueue worker --gpus`` start their
workers in sessions of their own (a terminal's Ctrl-C reaches the parent alone), so
a parent killed outright (SIGKILL, a test's timeout, the OOM killer) left them
running: computing a job nobody would read, holding a model's memory, forever.  The
launcher names itself in :data:`PARENT_ENV`; the worker then checks once a second
that it is still that process's child, and shuts down as on SIGTERM (it finishes
what it holds) once it is not.  A worker started any other way has no such parent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

#: The environment variable naming the pid of the process a worker lives for.
PARENT_ENV = "DOCQUEUE_PARENT_PID"
#: Seconds between checks.
INTERVAL = 1.0


def watch_parent(interval: float = INTERVAL) -> threading.Thread | None:
    """Start the watch when :data:`PARENT_ENV` names this process's parent (None
    otherwise: a variable left in a shell names some other process, and a worker
    started from that shell must not stop for it).  The variable is taken out of the
    environment, so nothing this process starts inherits it."""
    named = os.environ.pop(PARENT_ENV, "").strip()
    if not named.isdigit() or int(named) != os.getppid():
        return None
    parent = int(named)
    thread = threading.Thread(
        target=_watch, args=(parent, interval), name="docqueue-parent", daemon=True
    )
    thread.start()
    return thread


def _watch(parent: int, interval: float) -> None:
    stop = threading.Event()
    while os.getppid() == parent:
        stop.wait(interval)
    log.warning("the process that started this worker (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
