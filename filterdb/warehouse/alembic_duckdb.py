"""Alembic's DuckDB implementation, which Alembic lacks (``KeyError: 'duckdb'``, PLATFORM.md).

Importing this module registers it. Transactional DDL makes a migration that fails midway
leave nothing behind, on DuckDB as on PostgreSQL.
"""

from __future__ import annotations

from alembic.ddl.impl import DefaultImpl


class DuckDBImpl(DefaultImpl):
    """Alembic's operations for DuckDB: the default ones, inside one transaction."""

    __dialect__ = "duckdb"
    transactional_ddl = True
