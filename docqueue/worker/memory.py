"""How much memory this process has used at most: host (resident) and GPU."""

from __future__ import annotations

from pathlib import Path


def peak_host_bytes() -> int | None:
    """This process's peak resident memory (VmHWM).  Not getrusage's ru_maxrss: on
    Linux a child inherits its parent's maximum across fork and exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def peak_gpu_bytes() -> int | None:
    """torch's allocator peak, or None without an initialised GPU."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())
