"""Engines and migrations.

``make_engine`` accepts any SQLAlchemy URL; ``postgresql://`` means psycopg 3.
SQLite gets WAL and a busy timeout so several worker processes can write to one
file.  ``migrate`` brings the schema to the newest Alembic revision; concurrent
callers (workers starting together) serialize on a lock.

Alembic is imported only when the schema is behind: every process that opens the
database (each ``docqueue`` command, each worker) checks the version row first,
and importing Alembic costs more than the check (0.4 s of a worker's start on a
2-core machine).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "dq_alembic_version"
_PG_LOCK_KEY = 0x64710001  # advisory lock id for migrations


def normalize_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def url_problem(url: str) -> str | None:
    """Why SQLAlchemy cannot use ``url`` (its driver included), without repeating
    it (it may hold a password); None when it can."""
    try:
        parsed = normalize_url(url)
    except ArgumentError:
        return "not a database URL (dialect://user:password@host/database)"
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return f"no SQLAlchemy dialect {parsed.drivername!r}"
    return None


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 60}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def one_snapshot(conn: Connection) -> Connection:
    """``conn`` with its reads seeing one snapshot of the database until its
    transaction ends: REPEATABLE READ on PostgreSQL, whose default (READ COMMITTED)
    lets each statement see rows committed after the one before (two counts of one
    job, read one after the other while a worker writes, would disagree).  A SQLite
    read transaction sees one snapshot already.  Call before the first statement."""
    if conn.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def ping(conn: Connection) -> None:
    """Ask the database for nothing: raises when it cannot be reached."""
    conn.execute(text("SELECT 1"))


def describe(engine: Engine) -> str:
    """The engine's URL without its password."""
    return engine.url.render_as_string(hide_password=True)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def newest_file_revision() -> str:
    """The head revision as the migration files' names give it: each
    ``versions/NNNN_*.py`` declares ``revision = "NNNN"`` (a test holds them to it)."""
    return max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def schema_current(engine: Engine) -> bool:
    """Whether the database is at the newest revision, read with one query and
    without Alembic (False when the version table does not exist yet)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except DBAPIError:
        return False
    return [r[0] for r in rows] == [newest_file_revision()]


def missing_sqlite_file(url: str) -> str | None:
    """The file of an SQLite URL when it does not exist, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if Path(parsed.database).exists() else parsed.database


def migrate(engine: Engine) -> None:
    """Create or upgrade docqueue's tables (a no-op when they are current)."""
    if schema_current(engine):
        return
    head = head_revision()
    with _migration_lock(engine):
        if current_revision(engine) == head:
            return
        from alembic import command

        config = _alembic_config()
        with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite changes a column by copying its table and dropping the old one, and
    dropping a table with foreign keys on deletes the rows that reference it (the
    results of every document): migrations run with them off.  The pragma works
    only outside a transaction."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    conn.commit()
    try:
        yield
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    elif backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        # The lock is on the database's directory: a lock file beside docqueue.db would
        # stay there for good (removing it is not safe while another process waits on
        # it), and the database file itself carries SQLite's own locks.
        directory = os.path.dirname(os.path.abspath(engine.url.database or ""))
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    else:
        yield
