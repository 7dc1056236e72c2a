"""Log lines: text for people, or one JSON object per line for log shippers.

``DOCQUEUE_LOG_FORMAT=json`` (:attr:`Settings.log_format`) switches the worker and
the API alike.  A line that concerns jobs carries their ids as fields: ``job_id``
for one, ``job_ids`` for several, so a log store can select every line of a job.
Code says which jobs a line concerns with ``extra=jobs_extra(...)``; the API's
access lines get ``job_id`` from the path they name.  Nothing here sees request
headers, so a bearer token cannot reach a line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Job ids in the paths of API requests: /api/jobs/ID..., /api/documents/ID,
#: /v1/batches/batch_ID...
_JOB_PATH = re.compile(r"^/(?:api/(?:jobs|documents)/|v1/batches/batch_)([0-9a-f]{32})(?:[/?]|$)")
#: The attributes every LogRecord has (anything else came in through ``extra``),
#: and uvicorn's copy of its message with terminal colours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def jobs_extra(jobs: Iterable[str]) -> dict[str, Any]:
    """``extra=`` for a line about these jobs: ``job_id`` for one, ``job_ids`` for
    several (sorted, without repeats)."""
    unique = sorted(set(jobs))
    if len(unique) == 1:
        return {"job_id": unique[0]}
    return {"job_ids": unique} if unique else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the fields given through ``extra``, and ``exception`` when there is
    one.  uvicorn's access lines become ``method``, ``path``, ``status`` and
    ``client`` fields (and ``job_id`` when the path names a job)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access":
            line.update(_access_fields(record))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """uvicorn logs a request as ``(client, method, path, http_version, status)``."""
    args = record.args
    if not isinstance(args, tuple) or len(args) != 5:
        return {}
    client, method, path, _, status = args
    fields: dict[str, Any] = {"client": client, "method": method, "path": path, "status": status}
    if isinstance(path, str) and (match := _JOB_PATH.match(path)):
        fields["job_id"] = match.group(1)
    return fields


def setup_logging(level: str, log_format: LogFormat) -> None:
    """Log to stderr at ``level``, as text or JSON lines (replacing any handler the
    root logger had, so a second call does not double every line)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings go to stderr as bare text; as records they are lines like any other
    logging.captureWarnings(log_format == "json")
