"""Ad-hoc SQL over the documented views: read-only by independent guards unless ``write=True``.

Read-only is made by construction and then checked (STYLE.md section 5, after datasette);
each guard alone stops writes, file access and several statements, and
``tests/test_query.py`` tests each one with the other switched off.

Guard 1, the statement check (:func:`check_read_only`): the database's own parser decides
(PostgreSQL's through ``pglast``/libpg_query, DuckDB's ``extract_statements`` and
``json_serialize_sql``), on the text the server receives. Exactly one statement: a
SELECT (WITH ... SELECT without a data-changing CTE, VALUES, TABLE; DuckDB's SHOW,
DESCRIBE, SUMMARIZE and FROM-first; PostgreSQL's SHOW) or an EXPLAIN of one; no SELECT
INTO, no FOR UPDATE, and none of the PostgreSQL functions that change the session role,
run SQL given as text or reach server files (:data:`guard.REFUSED_FUNCTIONS`), nor
DuckDB's ``query()``. A text that does not parse is refused with the parser's message.

Guard 2, the connection:

* DuckDB opens the file read-only with file and network access off and the configuration
  locked (:func:`filterdb.warehouse.database.create_engine`, PLATFORM.md): writes, ``COPY ... TO``,
  ``read_csv``, ``ATTACH`` and ``SET`` fail in the engine itself. DuckDB parses the text
  and more than one statement is refused. ``CREATE TEMP TABLE`` still works: it lives in
  memory and goes with the connection. Memory is capped (``memory_limit``) and nothing
  spills to disk.
* PostgreSQL runs the statement in a transaction that is ``READ ONLY``, has a
  ``statement_timeout``, pins ``standard_conforming_strings``, ``backslash_quote`` and
  ``escape_string_warning`` to what guard 1's parser assumed (so that server and check read
  the same tokens: issue 9's ``'a\\' , $$'`` escape came from a server with
  ``standard_conforming_strings = off``) and, on a login that is or may become a superuser,
  runs ``SET LOCAL ROLE filterdb_reader`` (SELECT on filterdb's tables and views, nothing
  else), then rolls back. The role is needed because a READ ONLY transaction still lets a
  superuser ``COPY ... TO`` a server file and call ``pg_read_file`` (PLATFORM.md). The
  statement goes to the server through the extended protocol, which cannot hold two
  statements (so no ``COMMIT; ...``).

What holds for which login on PostgreSQL:

* A login that is not a superuser (and cannot SET ROLE to one, nor holds
  ``pg_read_server_files`` and kin, which is refused) is read-only by construction: the
  transaction is READ ONLY and the login has no rights that any text could switch back to.
  Guard 1 is a second wall.
* A superuser login rests on guard 1 for one way out. ``SET LOCAL ROLE`` can be undone from
  inside the transaction, and the server checks a role change against the login, not the
  current role: ``SELECT set_config('role', 'postgres', true), query_to_xml('SELECT
  pg_read_file(...)', ...)`` switches back and reads a server file within one statement
  (measured on PostgreSQL 15; ``SET SESSION AUTHORIZATION`` has the same caveat, since its
  check is also against the login). Guard 1 refuses it by parsing the text as the server
  does. Connect with a login that is not a superuser where people you do not trust write
  the SQL.
"""

from filterdb.warehouse.query.execute import run_query
from filterdb.warehouse.query.guard import check_read_only
from filterdb.warehouse.query.reader_role import READER_ROLE, ensure_reader_role

__all__ = ["READER_ROLE", "check_read_only", "ensure_reader_role", "run_query"]
