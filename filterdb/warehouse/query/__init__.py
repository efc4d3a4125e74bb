"""Ad-hoc SQL over the documented views: read-only by independent guards unless ``write=True``.

Read-only is made by construction and then checked (STYLE.md section 5, after datasette);
each guard alone stops writes, file access and several statements, and
``tests/test_query.py`` tests each one with the other switched off.

Guard 1, the statement check (:func:`check_read_only`, both backends): exactly one
statement, starting with SELECT, WITH, VALUES, TABLE, SHOW, DESCRIBE, FROM (DuckDB's
FROM-first) or an EXPLAIN of one of those, with no data-changing keyword (INSERT, UPDATE,
DELETE, MERGE, INTO) anywhere in it, and none of the PostgreSQL functions that change the
session role or run SQL given as text (see below).

Guard 2, the connection:

* DuckDB opens the file read-only with file and network access off and the configuration
  locked (:func:`filterdb.warehouse.database.create_engine`, PLATFORM.md): writes, ``COPY ... TO``,
  ``read_csv``, ``ATTACH`` and ``SET`` fail in the engine itself. DuckDB parses the text
  and more than one statement is refused. ``CREATE TEMP TABLE`` still works: it lives in
  memory and goes with the connection.
* PostgreSQL runs the statement in a transaction that is ``READ ONLY``, has a
  ``statement_timeout`` and runs ``SET LOCAL ROLE filterdb_reader`` (SELECT on the
  schema's tables and views, nothing else), then rolls back. The role is needed because a
  READ ONLY transaction still lets a superuser ``COPY ... TO`` a server file and call
  ``pg_read_file`` (PLATFORM.md). The statement goes to the server as a prepared statement,
  which cannot hold two statements (so no ``COMMIT; ...``).

On PostgreSQL one way out needs both guards. ``SET LOCAL ROLE`` can be undone from inside
the transaction, and on a superuser login that means superuser again (the server checks a
role change against the login, not the current role). A lone ``RESET ROLE`` or ``SET ROLE``
is harmless, since nothing can follow it before the rollback; but
``SELECT set_config('role', 'postgres', true), query_to_xml('SELECT pg_read_file(...)',
...)`` switches back and reads a server file within one statement (measured on
PostgreSQL 15). Guard 1 refuses it: SET and RESET are not read statements, and
``set_config`` and the built-in functions that run SQL given as text (``query_to_xml`` and
kin, ``ts_stat``, ``ts_rewrite``), in which ``set_config`` could hide, are refused by name.
A login that is not a superuser runs as itself and has no such way back: connect with one
where people you do not trust write the SQL.
"""

from filterdb.warehouse.query.execute import run_query
from filterdb.warehouse.query.guard import check_read_only
from filterdb.warehouse.query.reader_role import READER_ROLE, ensure_reader_role

__all__ = ["READER_ROLE", "check_read_only", "ensure_reader_role", "run_query"]
