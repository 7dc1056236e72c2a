"""docqueue: run Hugging Face models over streams of documents.

Producers enqueue documents to Redis; batching Celery workers run them through the
model; every result lands in SQL.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docqueue.config import Settings
    from docqueue.params import InvalidParams
    from docqueue.producer import (
        Client,
        DocumentCancelled,
        DocumentFailed,
        EnqueueStopped,
        InvalidDocument,
        JobGroup,
        JobHandle,
        JobStatus,
        JobSummary,
        NoRedis,
        PublishFailed,
        Record,
        ResultHandle,
        SaveFailed,
        Submission,
        TaskSpec,
        UnknownJob,
        UnsupportedTask,
    )


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: ``docqueue annotate`` starts its
    worker before it loads the client (SQLAlchemy, Celery, Redis: a second on a
    small CPU), and ``import docqueue.X`` should not pay for them either."""
    if name == "Settings":
        from docqueue.config import Settings

        return Settings
    if name == "InvalidParams":
        from docqueue.params import InvalidParams

        return InvalidParams
    if name in __all__:
        import docqueue.producer

        return getattr(docqueue.producer, name)
    raise AttributeError(f"module 'docqueue' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "Client",
    "DocumentCancelled",
    "DocumentFailed",
    "EnqueueStopped",
    "InvalidDocument",
    "InvalidParams",
    "JobGroup",
    "JobHandle",
    "JobStatus",
    "JobSummary",
    "NoRedis",
    "PublishFailed",
    "Record",
    "ResultHandle",
    "SaveFailed",
    "TaskSpec",
    "Settings",
    "Submission",
    "UnknownJob",
    "UnsupportedTask",
]
