"""SQL: the durable ledger of jobs, documents and results (SQLAlchemy 2, Alembic)."""

from docqueue.db.engine import describe, make_engine, migrate

__all__ = ["describe", "make_engine", "migrate"]
