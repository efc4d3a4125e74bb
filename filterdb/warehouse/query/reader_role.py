"""The PostgreSQL role that read-only ad-hoc SQL runs as when the login is too powerful.

See :mod:`filterdb.warehouse.query` for why a READ ONLY transaction alone is not enough.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from filterdb.errors import QueryRefused
from filterdb.warehouse.schema import metadata
from filterdb.warehouse.views import VIEWS

READER_ROLE = "filterdb_reader"
# What ad-hoc SQL may read on PostgreSQL: filterdb's tables and documented views.
READABLE_RELATIONS = (*metadata.tables, *(view.name for view in VIEWS))
# Roles that can reach the server's files or programs (PostgreSQL predefined roles).
SERVER_FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")


def ensure_reader_role(engine: Engine) -> str | None:
    """Prepare the role that read-only PostgreSQL queries run as; ``None``: run as the login.

    A login that is (or may become) a superuser gets the NOLOGIN role ``filterdb_reader``,
    created when missing (roles are cluster-wide) and granted USAGE on the current schema
    and SELECT on filterdb's tables and views (grants are per database, and are written only when
    one is missing, so a database whose grants are complete is never written to). Any other
    login runs as itself. Raises :class:`QueryRefused` when the role used could reach server
    files (``pg_read_server_files`` and kin) or, for ``filterdb_reader``, become a superuser.
    """
    with engine.begin() as connection:
        login_powers = _powers(connection, "current_user")
        if not any(login_powers.values()):
            _refuse_powers(connection, "current_user", login_powers)
            return None
        connection.exec_driver_sql(_CREATE_READER_ROLE)
        missing = connection.execute(
            sa.text(_READER_GRANTS_MISSING),
            {"role": READER_ROLE, "relations": list(READABLE_RELATIONS)},
        ).scalar()
        if missing:
            current = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
            current = connection.dialect.identifier_preparer.quote(current)
            connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {current} TO {READER_ROLE}")
            # filterdb's own tables and views only: other tables in a shared schema are not
            # ours to open up.
            relations = ", ".join(READABLE_RELATIONS)
            connection.exec_driver_sql(f"GRANT SELECT ON {relations} TO {READER_ROLE}")
        reader = f"'{READER_ROLE}'"
        _refuse_powers(connection, reader, _powers(connection, reader))
    return READER_ROLE


def _powers(connection: Connection, role: str) -> dict[str, bool]:
    """Superuser and server-file roles that ``role`` (an SQL expression) is or may SET ROLE
    to, each with whether it is a superuser."""
    rows = connection.execute(
        sa.text(
            "SELECT r.rolname, r.rolsuper FROM pg_roles r "
            "WHERE (r.rolsuper OR r.rolname IN :file_roles) "
            f"AND pg_has_role({role}, r.oid, 'MEMBER')"
        ).bindparams(sa.bindparam("file_roles", expanding=True)),
        {"file_roles": list(SERVER_FILE_ROLES)},
    )
    return {name: is_superuser for name, is_superuser in rows}


def _refuse_powers(connection: Connection, role: str, powers: dict[str, bool]) -> None:
    if powers:
        name = connection.execute(sa.text(f"SELECT CAST({role} AS text)")).scalar_one()
        raise QueryRefused(
            f"refused: role {name} can act as {', '.join(sorted(powers))}, which read-only "
            "queries must not; revoke that, or connect as a user without it"
        )


# Another session may create the role between the check and CREATE (roles are cluster-wide
# and the test server runs many databases at once): its duplicate is not an error.
_CREATE_READER_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
        CREATE ROLE {READER_ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$
"""

_READER_GRANTS_MISSING = """
SELECT NOT has_schema_privilege(:role, current_schema(), 'USAGE') OR EXISTS (
    SELECT FROM unnest(CAST(:relations AS text[])) AS relation
    WHERE NOT has_table_privilege(:role, relation, 'SELECT')
)
"""
