"""Revision 0008 (reuse, job groups) on a ledger of the previous release (0006)
with data in it, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from docqueue.db import jobs as ledger
from docqueue.db import make_engine, migrate
from docqueue.db.engine import VERSION_TABLE, _alembic_config, current_revision, head_revision
from docqueue.protocol import document_digest

JOB = "e" * 32


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _downgrade_to(engine: Engine, revision: str) -> None:
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        assert MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        command.downgrade(config, revision)


def _fill_at_0006(engine: Engine) -> None:
    """A job with a done, a failed and a pending document, as 0006 wrote them."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dq_jobs (id, task, model, params, lane, source, total, created_at) "
                "VALUES (:id, 'embed', 'minilm', '{}', 'bulk', 'docs.jsonl', 3, 1700000000.0)"
            ),
            {"id": JOB},
        )
        for seq, status in enumerate(["done", "failed", "pending"]):
            conn.execute(
                text(
                    "INSERT INTO dq_items (job_id, seq, user_id, text, chat, status, attempts, "
                    "truncated, duplicate_id, digest) VALUES (:job, :seq, :uid, :text, false, "
                    ":status, 0, false, false, :digest)"
                ),
                {
                    "job": JOB,
                    "seq": seq,
                    "uid": f"doc-{seq}",
                    "text": f"text {seq}",
                    "status": status,
                    "digest": document_digest(f"text {seq}"),
                },
            )
        conn.execute(
            text(
                "INSERT INTO dq_results (job_id, seq, ok, output, error, truncated, worker_id) "
                "VALUES (:job, 0, true, :output, NULL, false, 'w1'), "
                "(:job, 1, false, NULL, 'empty document', false, 'w1')"
            ),
            {"job": JOB, "output": '{"dim": 2}'},
        )


def test_a_ledger_of_revision_0006_upgrades_with_its_data_and_new_columns_filled(engine):
    _downgrade_to(engine, "0006")
    assert current_revision(engine) == "0006"
    _fill_at_0006(engine)
    try:
        migrate(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            info = ledger.get_job(conn, JOB)
            progress = ledger.progress(conn, JOB)
            rows = [(o.user_id, o.status, o.output, o.error) for o in ledger.outcomes(conn, JOB)]
            filled = conn.execute(
                text(
                    "SELECT seq, task, fingerprint, params_digest, text_hash, reused "
                    "FROM dq_results ORDER BY seq"
                )
            ).all()
        assert info is not None and (info.reuse, info.group_id, info.source) == (
            False,
            None,
            "docs.jsonl",
        )
        assert progress is not None
        assert (progress.done, progress.failed, progress.pending, progress.reused) == (1, 1, 1, 0)
        assert rows == [
            ("doc-0", "done", {"dim": 2}, None),
            ("doc-1", "failed", None, "empty document"),
            ("doc-2", "pending", None, None),
        ]
        # task and text hash come from the job and the document; the model that made
        # an old row is unknown, so its fingerprint stays NULL and it is never reused
        assert [tuple(r) for r in filled] == [
            (0, "embed", None, None, document_digest("text 0"), False),
            (1, "embed", None, None, document_digest("text 1"), False),
        ]
    finally:
        migrate(engine)  # the PostgreSQL database is shared with the tests that follow


def test_0008_downgrades_to_0006_and_back(engine):
    _downgrade_to(engine, "0006")
    assert current_revision(engine) == "0006"
    migrate(engine)
    assert current_revision(engine) == head_revision()
