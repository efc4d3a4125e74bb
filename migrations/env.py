"""Alembic environment: runs migrations on the connection filterdb hands over.

``filterdb.warehouse.migrate`` opens the database and passes its connection in
``config.attributes["connection"]``; plain ``alembic`` on the command line opens the URL
from ``FILTERDB_URL`` (or the default DuckDB file) itself.
"""

from __future__ import annotations

from alembic import context

from filterdb.warehouse import alembic_duckdb  # noqa: F401  (registers Alembic's DuckDB implementation)
from filterdb.warehouse.database import engine_for
from filterdb.warehouse.schema import metadata


def run_on(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    with engine_for() as engine, engine.connect() as connection:
        run_on(connection)
