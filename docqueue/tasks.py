"""The task catalogue: the tasks docqueue runs and the model families that do each.

Everything else (the wire schema, parameter validation, the CLI's help, the
runners a worker builds for a model) names tasks through this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

Task = Literal["classify", "summarize", "generate", "embed"]
TASKS: tuple[Task, ...] = get_args(Task)

#: Model families, as :func:`docqueue.worker.models.family_of` tells them apart.
Family = Literal["classifier", "encoder", "seq2seq", "causal-lm"]
CLASSIFIER: Family = "classifier"
ENCODER: Family = "encoder"
SEQ2SEQ: Family = "seq2seq"
CAUSAL_LM: Family = "causal-lm"

#: The tasks each family serves: a classification head classifies; a bare encoder (a
#: sentence embedding model) embeds and classifies zero-shot against labels; an
#: encoder-decoder summarizes; a causal language model generates.
TASKS_BY_FAMILY: dict[Family, tuple[Task, ...]] = {
    CLASSIFIER: ("classify",),
    ENCODER: ("embed", "classify"),
    SEQ2SEQ: ("summarize",),
    CAUSAL_LM: ("generate",),
}

#: Tasks whose documents may be chat messages instead of text.
CHAT_TASKS: frozenset[Task] = frozenset({"generate"})


def is_task(name: str) -> bool:
    return name in TASKS


def task_list(conjunction: str = "or") -> str:
    """``classify, summarize, generate or embed``, for help texts and messages."""
    return f"{', '.join(TASKS[:-1])} {conjunction} {TASKS[-1]}"


def cannot_do(model: str, task: str, tasks: Iterable[str]) -> str:
    """One line for a model asked for a task it does not do."""
    can = sorted(set(tasks))
    does = f"{', '.join(can[:-1])} and {can[-1]}" if len(can) > 1 else "".join(can) or "nothing"
    return f"model {model} cannot {task}; it can do: {does}"
