"""The producer side: the Client, document readers and result export.  Imports
neither torch nor transformers."""

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
