"""The models a worker serves and the runner of each task they do, built once at
start: the configured models only, plus the operator's runner plug-ins."""

from __future__ import annotations

from docqueue.config import Settings
from docqueue.protocol import bulk_queue
from docqueue.tasks import load_modules
from docqueue.worker.budget import limits_for
from docqueue.worker.models import LoadedModel, load_model
from docqueue.worker.runners import Runner, runner_class, runners_for
from docqueue.worker.threads import set_cpu_threads

#: model name -> task -> runner
Runners = dict[str, dict[str, Runner]]


def load_runners(settings: Settings) -> tuple[dict[str, LoadedModel], Runners]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    load_modules(settings.task_modules)
    loaded = {name: load_model(name, source, settings) for name, source in settings.models.items()}
    set_cpu_threads(settings, list(loaded.values()))
    runners: Runners = {}
    for name, model in loaded.items():
        limits = limits_for(settings, model)
        runners[name] = runners_for(model, limits)
        if name in settings.runners:
            custom = runner_class(settings.runners[name])
            runners[name][custom.task] = custom(model, limits)
    return loaded, runners


def bulk_queues(runners: Runners) -> list[str]:
    return [bulk_queue(task, name) for name, tasks in runners.items() for task in tasks]
