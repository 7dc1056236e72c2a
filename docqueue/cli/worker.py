"""``docqueue worker``: serve models from the queue, one process per GPU with
``--gpus``."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from docqueue.cli.options import fail, settings_or_exit, start_logging
from docqueue.config import Settings
from docqueue.errors import ExitCode, exit_now


def worker(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="NAME=PATH_OR_HUB_ID, or minilm for the bundled all-MiniLM-L6-v2 (served as "
            "minilm); repeat for several models",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda:0, ...")] = None,
    gpus: Annotated[
        str | None, typer.Option("--gpus", help='"all" or a list like 0,1: one process per GPU')
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Serve models from the queue (needs DOCQUEUE_REDIS_URL and DOCQUEUE_DATABASE_URL)."""
    from docqueue.protocol import is_model_name
    from docqueue.worker.models import BUNDLED

    models: dict[str, str] = {}
    for spec in model or []:
        name, sep, source = spec.partition("=")
        if not sep and name in BUNDLED:
            source = name  # a bundled model, served under its own name
        elif not sep or not source or not is_model_name(name):
            raise fail(
                f"--model {spec!r}: expected NAME=PATH_OR_HUB_ID with a simple NAME, or a "
                f"bundled model ({', '.join(BUNDLED)})"
            )
        models[name] = source
    settings = settings_or_exit(models=models or None, device=device)
    if not settings.models:
        raise fail("no models: pass --model NAME=PATH (or set DOCQUEUE_MODELS)")
    if "database_url" not in settings.model_fields_set:
        raise fail(
            "set DOCQUEUE_DATABASE_URL to the database the producers use: a worker records "
            "results there, and a worker on a database of its own would take jobs it cannot "
            "record"
        )
    devices = _gpus(gpus) if gpus else []
    redis_url = settings.redis()
    if not redis_url:
        raise fail("set DOCQUEUE_REDIS_URL (e.g. redis://localhost:6379/0)")
    # The worker's intake and writer threads share the CPU with torch: idle OpenMP
    # threads must sleep, not spin (set before torch is imported: the device check
    # imports it).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _check_devices(devices or ([settings.device] if settings.device else []))
    if devices:
        raise typer.Exit(_per_gpu(devices, settings, loglevel))
    start_logging(loglevel, settings.log_format)
    from docqueue.worker.metrics import MetricsUnavailable
    from docqueue.worker.models import ModelUnavailable
    from docqueue.worker.service import run_worker

    try:
        code = run_worker(settings, redis_url, loglevel=loglevel)
    except (ModelUnavailable, MetricsUnavailable) as exc:
        raise fail(str(exc), ExitCode.SERVICE) from None
    exit_now(code)


def _gpus(gpus: str) -> list[str]:
    """The devices ``--gpus all`` or ``--gpus 0,1`` names."""
    from docqueue.launcher import cuda_devices

    if gpus == "all":
        devices = cuda_devices()
    else:
        try:
            devices = [f"cuda:{int(g)}" for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise fail(f"--gpus {gpus!r}: expected all or a list like 0,1") from None
    if not devices:
        raise fail("no GPU visible", ExitCode.SERVICE)
    return devices


def _check_devices(devices: list[str]) -> None:
    """One line, not a worker's AssertionError, for a device this machine lacks."""
    from docqueue.launcher import device_problem

    for device in devices:
        if problem := device_problem(device):
            raise fail(problem)


def _per_gpu(devices: list[str], settings: Settings, loglevel: str) -> int:
    """One worker process per GPU, each pinned to its device; signals are forwarded."""
    from docqueue.launcher import LocalWorkers

    workers = LocalWorkers(settings, settings.models, devices, loglevel=loglevel)
    workers.forward_signals()
    return workers.wait()
