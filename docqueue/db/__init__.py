"""SQL: the durable ledger of jobs, documents and results (SQLAlchemy 2, Alembic).

Every statement the ledger runs is in this package.  The application core opens
its transactions on a :data:`Database` (SQLAlchemy's Engine: ``with db.begin()
as conn``) and catches the
database's errors by these names, without importing SQLAlchemy itself.
"""

from sqlalchemy import Connection
from sqlalchemy import Engine as Database
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable
from sqlalchemy.exc import SQLAlchemyError as DatabaseError

from docqueue.db.engine import describe, make_engine, migrate, missing_sqlite_file

__all__ = [
    "Connection",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "IntegrityError",
    "describe",
    "make_engine",
    "migrate",
    "missing_sqlite_file",
]
