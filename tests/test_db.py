"""The ledger and the upsert rule, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text

from docqueue.db import jobs as ledger
from docqueue.db import make_engine, migrate
from docqueue.db.engine import (
    MIGRATIONS,
    VERSION_TABLE,
    current_revision,
    head_revision,
    newest_file_revision,
    schema_current,
)
from docqueue.db.results import ResultRow, record_results
from docqueue.db.schema import Base, Item, Result
from docqueue.jobspec import JobSpec


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def new_job(engine, job_id: str = "a" * 32, n: int = 3) -> str:
    with engine.begin() as conn:
        ledger.create_job(conn, job_id, JobSpec("classify", "m"))
        ledger.add_items(conn, job_id, [{"seq": i, "text": f"doc {i}"} for i in range(n)])
        ledger.close_job(conn, job_id, n)
    return job_id


def ok(job: str, seq: int, label: str, worker: str = "w1") -> ResultRow:
    return ResultRow(job, seq, ok=True, output={"label": label}, worker_id=worker)


def err(job: str, seq: int, message: str, worker: str = "w1") -> ResultRow:
    return ResultRow(job, seq, ok=False, error=message, worker_id=worker, attempts=1)


def result(engine, job: str, seq: int):
    with engine.connect() as conn:
        return conn.execute(
            select(Result.ok, Result.output, Result.error, Result.worker_id).where(
                Result.job_id == job, Result.seq == seq
            )
        ).one()


def item_status(engine, job: str, seq: int):
    with engine.connect() as conn:
        return conn.execute(
            select(Item.status, Item.error, Item.attempts).where(
                Item.job_id == job, Item.seq == seq
            )
        ).one()


def progress_of(conn, job: str) -> ledger.Progress:
    found = ledger.progress(conn, job)
    assert found is not None, f"no job {job}"
    return found


def test_migrations_create_exactly_the_models(engine):
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = [d for d in compare_metadata(context, Base.metadata) if d[0] != "remove_table"]
    assert diff == []


def test_migrate_is_idempotent(engine):
    migrate(engine)
    migrate(engine)
    assert current_revision(engine) == head_revision()


def test_migration_file_names_give_the_head_revision():
    """The cheap check compares the version row with the newest file's number:
    each file must declare the revision its name carries."""
    for path in sorted((MIGRATIONS / "versions").glob("[0-9]*.py")):
        assert f'revision = "{path.name[:4]}"' in path.read_text(), path.name
    assert newest_file_revision() == head_revision()


def test_schema_current_reads_the_version_row(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        assert not schema_current(engine)  # no version table yet
        migrate(engine)
        assert schema_current(engine)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0001'"))
        assert not schema_current(engine)
    finally:
        engine.dispose()


def test_a_current_schema_is_checked_without_importing_alembic(tmp_path):
    """Every docqueue process opens the database; Alembic (0.4 s to import) loads
    only when the schema is behind."""
    url = f"sqlite:///{tmp_path / 'current.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    code = (
        "import sys; from docqueue.db import make_engine, migrate; "
        f"migrate(make_engine({url!r})); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_first_success_wins(engine):
    job = new_job(engine)
    with engine.begin() as conn:
        record_results(conn, [ok(job, 0, "first", "w1")])
    with engine.begin() as conn:
        record_results(conn, [ok(job, 0, "second", "w2")])
    assert result(engine, job, 0) == (True, {"label": "first"}, None, "w1")
    assert item_status(engine, job, 0)[0] == "done"


def test_success_replaces_an_error(engine):
    job = new_job(engine)
    with engine.begin() as conn:
        record_results(conn, [err(job, 1, "boom", "w1")])
    assert item_status(engine, job, 1) == ("failed", "boom", 1)
    with engine.begin() as conn:
        record_results(conn, [ok(job, 1, "fine", "w2")])
    assert result(engine, job, 1) == (True, {"label": "fine"}, None, "w2")
    assert item_status(engine, job, 1)[:2] == ("done", None)


def test_error_never_replaces_a_success(engine):
    job = new_job(engine)
    with engine.begin() as conn:
        record_results(conn, [ok(job, 2, "fine", "w1")])
    with engine.begin() as conn:
        record_results(conn, [err(job, 2, "late failure", "w2")])
    assert result(engine, job, 2) == (True, {"label": "fine"}, None, "w1")
    assert item_status(engine, job, 2)[0] == "done"


def test_a_redelivered_batch_leaves_one_row_per_item(engine):
    job = new_job(engine, n=3)
    rows = [ok(job, i, f"l{i}") for i in range(3)]
    for _ in range(3):
        with engine.begin() as conn:
            record_results(conn, rows)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Result)).scalar() == 3
        assert progress_of(conn, job).done == 3


def test_one_batch_holding_a_document_twice_keeps_the_success(engine):
    """A redelivered copy of a message can put a document in one batch twice."""
    job = new_job(engine, n=3)
    embedded = ResultRow(job, 2, ok=True, embedding=b"\x00\x01\x02\x03", worker_id="w1")
    with engine.begin() as conn:
        record_results(
            conn,
            [err(job, 0, "boom"), ok(job, 0, "fine"), ok(job, 1, "a"), ok(job, 1, "b"), embedded],
        )
    assert result(engine, job, 0) == (True, {"label": "fine"}, None, "w1")
    assert result(engine, job, 1)[1] == {"label": "a"}
    with engine.connect() as conn:
        stored = conn.execute(select(Result.embedding, Result.output).where(Result.seq == 2)).one()
        assert stored == (b"\x00\x01\x02\x03", None)
        assert progress_of(conn, job).done == 3


def test_progress_and_duplicate_ids(engine):
    job = "b" * 32
    with engine.begin() as conn:
        ledger.create_job(conn, job, JobSpec("classify", "m"))
        ledger.add_items(
            conn,
            job,
            [
                {"seq": 0, "user_id": "x", "text": "one"},
                {"seq": 1, "user_id": "x", "text": "two"},
                {"seq": 2, "user_id": "y", "text": ""},
            ],
        )
    with engine.connect() as conn:
        assert progress_of(conn, job).total is None  # still enqueuing
    with engine.begin() as conn:
        ledger.close_job(conn, job, 3)
        record_results(conn, [err(job, 2, "empty document")])
    with engine.connect() as conn:
        progress = progress_of(conn, job)
        flags = [o.duplicate_id for o in ledger.outcomes(conn, job)]
    assert (progress.total, progress.failed, progress.pending, progress.finished) == (
        3,
        1,
        2,
        False,
    )
    assert flags == [True, True, False]


def test_an_output_the_database_refuses_becomes_an_error_row(engine):
    """NaN is not JSON: PostgreSQL refuses it, the store keeps the document as an error
    (SQLite stores it as written); either way the document has exactly one row."""
    from docqueue.worker.store import SqlStore

    job = new_job(engine, n=2)
    SqlStore(engine).commit(
        [ResultRow(job, 0, ok=True, output={"score": float("nan")}), ok(job, 1, "x")]
    )
    with engine.connect() as conn:
        rows = conn.execute(select(Result.seq, Result.ok, Result.error).order_by(Result.seq)).all()
    assert [r.seq for r in rows] == [0, 1]
    assert rows[1].ok  # the rest of the batch is stored as computed
    if engine.dialect.name == "postgresql":
        assert rows[0].ok is False and "could not be stored" in rows[0].error


def _at_revision(engine, revision: str) -> None:
    """Move the schema to ``revision`` (up or down), as the release that had it left it."""
    from alembic import command

    from docqueue.db.engine import _alembic_config

    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        current = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        if current is not None and current > revision:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def test_a_database_of_the_previous_release_upgrades_with_its_data(engine):
    """A ledger made by revision 0002 (the release before job management), with a
    job, its documents, results and a worker in it, upgrades to head: the data stays
    and the new columns and states work (on PostgreSQL the status column was 8
    characters wide, too narrow for "cancelled")."""
    from sqlalchemy import text

    _at_revision(engine, "0002")
    assert current_revision(engine) == "0002"
    job = "c" * 32
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dq_jobs (id, task, model, params, lane, source, total, created_at) "
                "VALUES (:id, 'classify', 'tiny', '{}', 'bulk', 'docs.jsonl', 3, 1700000000.0)"
            ),
            {"id": job},
        )
        for seq, status in enumerate(["done", "failed", "pending"]):
            conn.execute(
                text(
                    "INSERT INTO dq_items (job_id, seq, user_id, text, chat, status, attempts, "
                    "error, truncated, duplicate_id) VALUES (:job, :seq, :uid, :text, false, "
                    ":status, 0, NULL, false, false)"
                ),
                {
                    "job": job,
                    "seq": seq,
                    "uid": f"doc-{seq}",
                    "text": f"text {seq}",
                    "status": status,
                },
            )
        conn.execute(
            text(
                "INSERT INTO dq_results (job_id, seq, ok, output, error, truncated, worker_id) "
                "VALUES (:job, 0, true, :output, NULL, false, 'w1'), "
                "(:job, 1, false, NULL, 'empty document', false, 'w1')"
            ),
            {"job": job, "output": '{"label": "billing"}'},
        )
        conn.execute(
            text(
                "INSERT INTO dq_workers (id, hostname, pid, device, models, started_at, "
                "last_seen, documents, stopped, batches, padded_tokens) VALUES ('w1', 'host', "
                "1, 'cpu', '{}', 1700000000.0, 1700000001.0, 2, false, 1, 64)"
            )
        )
    try:
        migrate(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            before = progress_of(conn, job)
            rows = [(o.user_id, o.status, o.output, o.error) for o in ledger.outcomes(conn, job)]
            info = ledger.get_job(conn, job)
            worker = conn.execute(text("SELECT documents, padded_tokens FROM dq_workers")).one()
        assert (before.total, before.done, before.failed, before.pending) == (3, 1, 1, 1)
        assert rows == [
            ("doc-0", "done", {"label": "billing"}, None),
            ("doc-1", "failed", None, "empty document"),
            ("doc-2", "pending", None, None),
        ]
        assert info is not None and (info.source, info.name, info.cancelled_at) == (
            "docs.jsonl",
            None,
            None,
        )
        assert tuple(worker) == (2, 64)
        # the new columns and states work on the upgraded data
        with engine.begin() as conn:
            conn.execute(text("UPDATE dq_jobs SET name = 'nightly' WHERE id = :id"), {"id": job})
            assert ledger.cancel_job(conn, job, 1700000100.0) == 1
        with engine.connect() as conn:
            after = progress_of(conn, job)
            listed = ledger.list_jobs(conn, name="nightly")
            statuses = [o.status for o in ledger.outcomes(conn, job)]
        assert statuses == ["done", "failed", "cancelled"]
        assert (after.cancelled, after.cancelled_at, after.state, after.finished) == (
            1,
            1700000100.0,
            "cancelled",
            True,
        )
        assert [s.job.id for s in listed] == [job]
        with engine.begin() as conn:
            assert ledger.delete_job(conn, job, 1700000200.0) == 3
        with engine.connect() as conn:
            assert ledger.get_job(conn, job) is None
            assert conn.execute(text("SELECT count(*) FROM dq_results")).scalar() == 0
            assert conn.execute(text("SELECT job_id FROM dq_tombstones")).scalars().all() == [job]
    finally:
        migrate(engine)  # the PostgreSQL database is shared with the tests that follow


def test_a_row_the_database_refuses_for_any_reason_costs_only_that_row(engine):
    """Whatever the driver or the database refuses -- a sequence number SQLite cannot
    even bind (OverflowError from 2**63), one PostgreSQL's INTEGER cannot hold, text
    no encoding can send (a lone surrogate) -- costs that row alone: the others are
    committed, a refused result becomes an error row saying why, and a row naming no
    document is dropped.  Nothing escapes the store to wedge the worker's writer."""
    from docqueue.worker.store import SqlStore

    job = new_job(engine, n=3)
    SqlStore(engine).commit(
        [
            ok(job, 0, "kept"),
            ResultRow(job, 2**63, ok=True, output={"label": "no such document"}),
            ResultRow(job, 2**31, ok=True, output={"label": "no such document"}),
            err(job, 1, "the model said \ud800"),
            ok(job, 2, "kept too"),
        ]
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(Result.seq, Result.ok, Result.output, Result.error).order_by(Result.seq)
        ).all()
    assert [(r.seq, r.ok, r.output) for r in rows] == [
        (0, True, {"label": "kept"}),
        (1, False, None),
        (2, True, {"label": "kept too"}),
    ]
    assert rows[1].error.startswith("result could not be stored: 'utf-8' codec can't encode")
    assert item_status(engine, job, 1)[0] == "failed"


def test_documents_have_digests_and_older_ones_are_compared_by_their_text(engine):
    """Revision 0004 adds dq_items.digest.  A ledger of revision 0003 with documents in
    it upgrades with them (their digest is NULL); the worker's ledger then reads a
    digest where there is one and the text only where there is none, and either way
    tells the document the job holds from any other."""
    from sqlalchemy import text

    from docqueue.protocol import ChatMessage, document_digest
    from docqueue.worker.ledger import SqlLedger

    _at_revision(engine, "0003")
    old = "d" * 32
    with engine.begin() as conn:
        ledger.create_job(conn, old, JobSpec("generate", "m"))
        conn.execute(
            text(
                "INSERT INTO dq_items (job_id, seq, text, chat, status, attempts, truncated, "
                "duplicate_id) VALUES (:job, 0, 'old text', false, 'pending', 0, false, false), "
                "(:job, 1, :chat, true, 'pending', 0, false, false)"
            ),
            {"job": old, "chat": '[{"role": "user", "content": "hi"}]'},
        )
    try:
        migrate(engine)
        new = new_job(engine, "e" * 32, n=0)
        with engine.begin() as conn:
            ledger.add_items(
                conn, new, [{"seq": 0, "text": "new text", "digest": document_digest("new text")}]
            )
        stored = SqlLedger(engine).documents({old: [0, 1, 7], new: [0]})
        assert stored is not None and set(stored) == {(old, 0), (old, 1), (new, 0)}
        assert stored[(old, 0)].digest is None and stored[(old, 0)].text == "old text"
        assert stored[(new, 0)].text is None  # the text is read only where no digest is
        chat = [ChatMessage(role="user", content="hi")]
        assert stored[(old, 0)].matches("old text") and not stored[(old, 0)].matches("other")
        assert stored[(old, 1)].matches(chat) and not stored[(old, 1)].matches("hi")
        assert stored[(new, 0)].matches("new text") and not stored[(new, 0)].matches("new")
    finally:
        migrate(engine)


def test_a_database_that_refuses_every_write_holds_the_rows_instead_of_dropping_them(
    engine, database_url
):
    """Refused rows are salvaged one by one; but when the database refuses even the
    error rows (read-only after a failover, a missing privilege) it is the database,
    not the rows: the store raises StoreUnavailable, so the writer holds the rows and
    acks nothing, as in an outage."""
    from docqueue.worker.store import SqlStore, StoreUnavailable

    if not database_url.startswith("postgresql"):
        pytest.skip("a read-only session needs PostgreSQL")
    job = new_job(engine, n=2)
    read_only = make_engine(database_url)

    @sa_event.listens_for(read_only, "connect")
    def _read_only(dbapi_connection, _record):  # every session of this engine
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
        dbapi_connection.commit()  # a SET in a transaction rolled back would not hold

    try:
        with pytest.raises(StoreUnavailable):
            SqlStore(read_only).commit([ok(job, 0, "held"), ok(job, 1, "held too")])
    finally:
        read_only.dispose()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Result)).scalar() == 0
    SqlStore(engine).commit([ok(job, 0, "held"), ok(job, 1, "held too")])  # later, it is back
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Result)).scalar() == 2
