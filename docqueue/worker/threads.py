"""How many CPU threads torch uses in a worker."""

from __future__ import annotations

from docqueue.config import Settings
from docqueue.worker.models import LoadedModel

#: Below this many parameters a model runs faster on one CPU thread: each op is so
#: small that handing it to a thread team costs more than it saves, and the intake and
#: writer threads need the other core (measured on 2 cores: a tiny BART generates in
#: 100 ms on one thread, 160 ms on two, from a worker thread; the micro classifier
#: runs 5,538 docs/s offline on one thread, 3,922 on two).  Two threads did speed up
#: tiny generative models in a bare process (+20%), but not in a worker (two threads,
#: OpenMP spinning up to 1,000 times): summarize end to end fell from 468 to 415
#: docs/s and its idle p50 latency rose from 98 to 209 ms, so small models keep one.
SMALL_MODEL_PARAMETERS = 5_000_000


def set_cpu_threads(settings: Settings, models: list[LoadedModel]) -> None:
    """torch's intra-op threads for CPU workers: the setting, else one thread for
    small models and torch's default (all cores) for the rest."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
        return
    on_cpu = [m for m in models if m.device.type == "cpu"]
    if on_cpu and all(
        sum(p.numel() for p in m.model.parameters()) < SMALL_MODEL_PARAMETERS for m in on_cpu
    ):
        torch.set_num_threads(1)
