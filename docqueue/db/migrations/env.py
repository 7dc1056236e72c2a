"""Alembic environment: docqueue runs migrations itself (see docqueue.db.engine.migrate),
passing an open connection; ``alembic`` on the command line works too with
``sqlalchemy.url`` set in the config."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from docqueue.db.schema import Base

VERSION_TABLE = "dq_alembic_version"
config = context.config


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        run(conn)
