"""The producer side: the Client, document readers and result export.  Imports
neither torch nor transformers."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docqueue.producer.client import (
        Client,
        DocumentCancelled,
        DocumentFailed,
        EnqueueStopped,
        JobGroup,
        JobHandle,
        JobStatus,
        JobSummary,
        KeyReused,
        NoRedis,
        PublishFailed,
        ResultHandle,
        SaveFailed,
        Submission,
        TaskSpec,
        UnknownJob,
        UnsupportedTask,
    )
    from docqueue.producer.documents import InvalidDocument, Record


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (the client brings SQLAlchemy,
    Celery and Redis; the readers under this package need none of them)."""
    if name in ("InvalidDocument", "Record"):
        from docqueue.producer import documents

        return getattr(documents, name)
    if name in __all__:
        from docqueue.producer import client

        return getattr(client, name)
    raise AttributeError(f"module 'docqueue.producer' has no attribute {name!r}")


__all__ = [
    "Client",
    "DocumentCancelled",
    "DocumentFailed",
    "EnqueueStopped",
    "InvalidDocument",
    "JobGroup",
    "JobHandle",
    "JobStatus",
    "JobSummary",
    "KeyReused",
    "NoRedis",
    "PublishFailed",
    "Record",
    "ResultHandle",
    "SaveFailed",
    "Submission",
    "TaskSpec",
    "UnknownJob",
    "UnsupportedTask",
]
