"""What a job is, as one value: every way in (the Client, the HTTP API, ``annotate``,
schedules) builds a :class:`JobSpec` and hands it to the application core, which
writes it to the ledger (:func:`docqueue.db.jobs.create_job`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

Lane = Literal["bulk", "interactive"]

#: The longest name, source and model label the ledger's columns hold.
MAX_NAME_CHARS: Final = 200
MAX_SOURCE_CHARS: Final = 1024
MAX_LABEL_CHARS: Final = 1024


@dataclass(frozen=True)
class JobSpec:
    """A job's description: what it computes, and what its caller asked of it."""

    task: str
    #: The model's name, as workers serve it.
    model: str
    #: Validated parameters (complete, defaults filled in) once the core checked them.
    params: dict[str, Any] = field(default_factory=dict)
    lane: Lane = "bulk"
    #: The file its documents came from (shown, never read again).
    source: str | None = None
    #: The caller's name for the job (``jobs(name=...)``).
    name: str | None = None
    #: A digest of the input a retry or ``resume`` compares.
    input_digest: str | None = None
    idempotency_key: str | None = None
    #: Where the job's summary is POSTed when it finishes.
    callback_url: str | None = None
    #: Copy earlier results of the same text, task, model and parameters.
    reuse: bool = False
    #: The multi-task call it belongs to.
    group_id: str | None = None
    #: The model as the person named it, where ``model`` is an internal name.
    model_label: str | None = None

    @property
    def model_shown(self) -> str:
        """The model as a person reads it: its label, else its name."""
        return self.model_label or self.model

    def but(self, **changes: Any) -> JobSpec:
        """This spec with some fields changed."""
        return replace(self, **changes)
