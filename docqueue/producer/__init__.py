"""The producer side: the Client, document readers and result export.  Imports
neither torch nor transformers."""

from docqueue.producer.client import (
    Client,
    DocumentFailed,
    JobHandle,
    JobStatus,
    PublishFailed,
    ResultHandle,
    UnknownJob,
)
from docqueue.producer.documents import InvalidDocument, Record

__all__ = [
    "Client",
    "DocumentFailed",
    "InvalidDocument",
    "JobHandle",
    "JobStatus",
    "PublishFailed",
    "Record",
    "ResultHandle",
    "UnknownJob",
]
