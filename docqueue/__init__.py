"""docqueue: run Hugging Face models over streams of documents.

Producers enqueue documents to Redis; batching Celery workers run them through the
model; every result lands in SQL.
"""

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
