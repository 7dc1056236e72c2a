"""Results as callers see them: one flat dict per document, in input order."""

from __future__ import annotations

import array
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docqueue.db.jobs import Outcome


def export_row(outcome: Outcome) -> dict[str, Any]:
    """``id``, ``seq``, ``status``, then the output's fields (or ``error``); flags
    ``truncated`` and ``duplicate_id`` appear only when true."""
    row: dict[str, Any] = {"id": outcome.user_id, "seq": outcome.seq, "status": outcome.status}
    if outcome.status == "done":
        row.update(outcome.output or {})
        if outcome.embedding is not None:
            vector = array.array("f")
            vector.frombytes(outcome.embedding)
            if sys.byteorder != "little":
                vector.byteswap()
            row["embedding"] = vector.tolist()
    elif outcome.status == "failed":
        row["error"] = outcome.error
    if outcome.truncated:
        row["truncated"] = True
    if outcome.duplicate_id:
        row["duplicate_id"] = True
    return row


def write_rows(rows: Iterable[dict[str, Any]], out: Path) -> int:
    """Write rows as JSONL, or as CSV when ``out`` ends in .csv (nested values as
    JSON).  Returns the number written."""
    count = 0
    with out.open("w", encoding="utf-8", newline="") as handle:
        if out.suffix.lower() == ".csv":
            writer: csv.DictWriter[str] | None = None
            for row in rows:
                flat = {
                    k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()
                }
                if writer is None:
                    fields = [
                        "id",
                        "seq",
                        "status",
                        "label",
                        "score",
                        "summary_text",
                        "generated_text",
                        "error",
                        "truncated",
                        "duplicate_id",
                    ]
                    extra = [k for k in flat if k not in fields]
                    writer = csv.DictWriter(
                        handle, fieldnames=fields + extra, extrasaction="ignore"
                    )
                    writer.writeheader()
                writer.writerow(flat)
                count += 1
        else:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    return count
