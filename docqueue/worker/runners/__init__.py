"""Runners: how a batch of each task family is run."""

from __future__ import annotations

from docqueue.tasks import CAUSAL_LM, CLASSIFIER, ENCODER, SEQ2SEQ
from docqueue.worker.models import LoadedModel
from docqueue.worker.runners.base import Features, Limits, Output, Runner, tokenized
from docqueue.worker.runners.classify import ClassifyRunner
from docqueue.worker.runners.embed import EmbedRunner, ZeroShotRunner


def runners_for(loaded: LoadedModel, limits: Limits) -> dict[str, Runner]:
    """The runner of each task the model serves."""
    if loaded.family == CLASSIFIER:
        return {"classify": ClassifyRunner(loaded, limits)}
    if loaded.family == ENCODER:
        return {"embed": EmbedRunner(loaded, limits), "classify": ZeroShotRunner(loaded, limits)}
    if loaded.family in (SEQ2SEQ, CAUSAL_LM):
        from docqueue.worker.runners.generate import GenerateRunner
        from docqueue.worker.runners.summarize import SummarizeRunner

        runner = SummarizeRunner if loaded.family == SEQ2SEQ else GenerateRunner
        return {runner.task: runner(loaded, limits)}
    raise ValueError(f"unknown model family {loaded.family}")


__all__ = ["Features", "Limits", "Output", "Runner", "runners_for", "tokenized"]
