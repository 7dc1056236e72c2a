"""docqueue: run Hugging Face models over streams of documents.

Producers enqueue documents to Redis; batching Celery workers run them through the
model; every result lands in SQL.
"""

from docqueue.config import Settings
from docqueue.params import InvalidParams
from docqueue.producer import (
    Client,
    DocumentFailed,
    InvalidDocument,
    JobHandle,
    JobStatus,
    PublishFailed,
    Record,
    ResultHandle,
    UnknownJob,
)

__version__ = "0.1.0"
__all__ = [
    "Client",
    "DocumentFailed",
    "InvalidDocument",
    "InvalidParams",
    "JobHandle",
    "JobStatus",
    "PublishFailed",
    "Record",
    "ResultHandle",
    "Settings",
    "UnknownJob",
]
