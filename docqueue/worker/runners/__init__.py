"""Runners: how a batch of each task is run, on each family of model that does it.

Which runner a model gets for a task is declared by the task
(``TaskDeclaration.runners``, :mod:`docqueue.tasks`); a plug-in may replace it
(``DOCQUEUE_RUNNERS``, see :mod:`docqueue.worker.loading`).
"""

from __future__ import annotations

import importlib

from docqueue.tasks import declared, tasks_of
from docqueue.worker.models import LoadedModel
from docqueue.worker.runners.base import Features, Limits, Output, Runner, tokenized


def runner_class(reference: str) -> type[Runner]:
    """The class a ``"module:Class"`` reference names."""
    module, _, name = reference.partition(":")
    found = getattr(importlib.import_module(module), name, None)
    if not (isinstance(found, type) and issubclass(found, Runner)):
        raise ValueError(f"{reference} is not a docqueue Runner class")
    return found


def runners_for(loaded: LoadedModel, limits: Limits) -> dict[str, Runner]:
    """The runner of each task the model's family serves."""
    tasks = tasks_of(loaded.family)
    if not tasks:
        raise ValueError(f"unknown model family {loaded.family}")
    return {
        task: runner_class(declared(task).runners[loaded.family])(loaded, limits) for task in tasks
    }


__all__ = ["Features", "Limits", "Output", "Runner", "runner_class", "runners_for", "tokenized"]
