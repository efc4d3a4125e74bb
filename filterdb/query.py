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
  locked (:func:`filterdb.database.create_engine`, PLATFORM.md): writes, ``COPY ... TO``,
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

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import polars as pl
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from filterdb.database import backend_name, engine_for
from filterdb.errors import QueryFailed, QueryRefused
from filterdb.migrate import require_head
from filterdb.schema import metadata
from filterdb.views import VIEWS

READER_ROLE = "filterdb_reader"
# What ad-hoc SQL may read on PostgreSQL: filterdb's tables and documented views.
READABLE_RELATIONS = (*metadata.tables, *(view.name for view in VIEWS))

READ_STATEMENTS = frozenset({"select", "with", "values", "table", "show", "describe", "from"})
# EXPLAIN ANALYZE runs its statement, so EXPLAIN is allowed only in front of a read statement.
EXPLAIN_OPTIONS = frozenset({"analyze", "analyse", "verbose"})
WRITE_KEYWORDS = frozenset({"insert", "update", "delete", "merge", "into"})
# set_config('role', ...) undoes SET LOCAL ROLE; the others run SQL given as a string, where
# set_config could hide from this check (PostgreSQL functions-xml.html, textsearch docs).
ROLE_ESCAPES = frozenset(
    {
        "set_config",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
    }
)
# Roles that can reach the server's files or programs (PostgreSQL predefined roles).
SERVER_FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")

WRITE_HINT = "add --write to run statements that change the database"


def run_query(
    sql: str, *, url: str | None = None, write: bool = False, timeout_s: float = 60.0
) -> pl.DataFrame:
    """Run one ad-hoc statement on the database at ``url`` and return its rows.

    Without ``write`` the statement must be a single read statement (:func:`check_read_only`)
    and runs on a read-only connection (see the module docstring for both guards). With
    ``write`` the text may hold several statements; they run on a normal connection in one
    transaction that is committed when all succeed, and the result is what the last one
    returns: its rows, or an empty frame when it returns none. DuckDB answers INSERT,
    UPDATE, DELETE and DDL with a ``Count`` column of its own; PostgreSQL returns rows only
    for queries and ``RETURNING``.

    Raises :class:`QueryRefused` (one line) when the statement is not read-only and ``write``
    is not given, :class:`QueryFailed` with the database's message in one line when the
    database rejects it or it runs longer than ``timeout_s`` seconds, and
    :class:`~filterdb.errors.DatabaseError` when the database cannot be opened or is not at
    the head revision.
    """
    if not write:
        check_read_only(sql)
    return _execute(sql, url=url, write=write, timeout_s=timeout_s)


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is one statement that only reads (guard 1).

    Comments and a trailing ``;`` are ignored; string literals and quoted names are never
    read as keywords.
    """
    statements = _statements(sql)
    if not statements:
        raise QueryRefused("refused: the query is empty; give one SQL statement")
    if len(statements) > 1:
        raise QueryRefused(
            f"refused: {len(statements)} statements given, read-only queries take one; "
            "run them one at a time, or add --write to run them in one transaction"
        )
    tokens = statements[0]
    if not _is_read_statement(tokens):
        first_words = [token.text for token in tokens[:2] if token.kind == "word"]
        head = " ".join(first_words) if tokens[0].kind == "word" else tokens[0].text
        raise QueryRefused(f'refused: "{head}" is not a read-only statement; {WRITE_HINT}')
    for token in tokens:
        if token.kind == "word" and token.value in WRITE_KEYWORDS:
            raise QueryRefused(
                f'refused: "{token.text}" may change the database (quote it if it is a '
                f"column name); {WRITE_HINT}"
            )
        if token.kind in ("word", "name") and token.value in ROLE_ESCAPES:
            raise QueryRefused(
                f"refused: {token.value}() can switch to the login role's rights, which "
                f"read-only queries drop; {WRITE_HINT}"
            )


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


def _execute(sql: str, *, url: str | None, write: bool, timeout_s: float) -> pl.DataFrame:
    """Guard 2 and the run itself; :func:`run_query` without the statement check."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    with engine_for(url, read_only=not write) as engine:
        require_head(engine)
        # One transaction, begun before any raw statement (PLATFORM.md) and committed at the
        # end unless something failed or a read-only run rolled it back.
        if backend_name(engine) == "duckdb":
            with engine.begin() as connection:
                return _run_duckdb(connection, sql, write=write, timeout_s=timeout_s)
        role = None if write else ensure_reader_role(engine)
        with engine.connect() as connection, connection.begin() as transaction:
            frame = _run_postgres(connection, sql, role=role, write=write, timeout_s=timeout_s)
            if not write:
                transaction.rollback()
            return frame


def _run_duckdb(connection: Connection, sql: str, *, write: bool, timeout_s: float) -> pl.DataFrame:
    driver = connection.connection.driver_connection
    # DuckDB has no statement timeout; interrupting the connection from a timer is its way.
    timer = threading.Timer(timeout_s, driver.interrupt)
    timer.start()
    try:
        if write:
            result = driver.sql(sql)  # runs every statement; the result is the last one's
        else:
            statements = driver.extract_statements(sql)
            if len(statements) != 1:
                raise QueryRefused(
                    f"refused: {len(statements)} statements given, read-only queries take one"
                )
            result = driver.sql(statements[0])
        return pl.DataFrame() if result is None else result.pl()
    except duckdb.InterruptException:
        raise QueryFailed(_timeout_message(timeout_s)) from None
    except duckdb.Error as error:
        raise QueryFailed(_one_line(error)) from None
    finally:
        timer.cancel()


def _run_postgres(
    connection: Connection, sql: str, *, role: str | None, write: bool, timeout_s: float
) -> pl.DataFrame:
    cursor = connection.connection.driver_connection.cursor()
    if not write:
        cursor.execute("SET TRANSACTION READ ONLY")
    cursor.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
    if role:
        cursor.execute(f"SET LOCAL ROLE {role}")
    try:
        if write:
            # The simple query protocol runs every statement of the text, in this transaction.
            cursor.execute(sql)
            while cursor.nextset():
                pass
        else:
            # A prepared statement holds exactly one statement (guard 2 on its own).
            cursor.execute(sql, prepare=True)
        return _frame_from_cursor(cursor)
    except psycopg.errors.QueryCanceled as error:
        message = _timeout_message(timeout_s) if "timeout" in str(error) else _one_line(error)
        raise QueryFailed(message) from None
    except psycopg.Error as error:
        raise QueryFailed(_one_line(error)) from None


def _frame_from_cursor(cursor: psycopg.Cursor) -> pl.DataFrame:
    if cursor.description is None:
        return pl.DataFrame()
    names = _unique_names([column.name for column in cursor.description])
    return pl.DataFrame(cursor.fetchall(), schema=names, orient="row", infer_schema_length=None)


def _unique_names(names: list[str]) -> list[str]:
    """Make repeated column names unique as DuckDB does (``a``, ``a_1``): Polars needs it."""
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, suffix = name, 0
        while candidate in seen:
            suffix += 1
            candidate = f"{name}_{suffix}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _timeout_message(timeout_s: float) -> str:
    return f"query cancelled after {timeout_s:g} s; narrow it, or give a longer timeout"


def _one_line(error: BaseException) -> str:
    """The database's message in one line, without the echoed query and its caret."""
    lines: list[str] = []
    for line in str(error).strip().splitlines():
        if line.startswith("LINE ") or not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines) or type(error).__name__


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


@dataclass(frozen=True)
class _Token:
    kind: str  # word, name (quoted identifier), literal, punct
    text: str  # as written
    value: str  # words lower-cased, quoted names unquoted, otherwise the text


_LEXEME = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<escape_string>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>(?:[uU]&|[bBxXnN])?'(?:[^']|'')*')
    | (?P<unicode_name>[uU]&"(?:[^"]|"")*")
    | (?P<name>"(?:[^"]|"")*")
    | (?P<dollar_quote>\$(?:[^\W\d]\w*)?\$)
    | (?P<word>[^\W\d]\w*(?:\$\w*)*)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _statements(sql: str) -> list[list[_Token]]:
    """The tokens of each non-empty statement in ``sql``, split at ``;``."""
    statements: list[list[_Token]] = [[]]
    for token in _tokens(sql):
        if token.kind == "punct" and token.text == ";":
            statements.append([])
        else:
            statements[-1].append(token)
    return [tokens for tokens in statements if tokens]


def _tokens(sql: str) -> Iterator[_Token]:
    """PostgreSQL's lexical rules, as far as telling code from literals and comments needs."""
    position = 0
    while position < len(sql):
        if sql.startswith("/*", position):
            position = _end_of_block_comment(sql, position)
            continue
        match = _LEXEME.match(sql, position)
        kind, text = match.lastgroup, match.group()
        position = match.end()
        if kind in ("space", "line_comment"):
            continue
        if kind == "dollar_quote":
            end = sql.find(text, position)
            if end < 0:
                raise QueryRefused(f"refused: the {text} quoted string is never closed")
            position = end + len(text)
            yield _Token("literal", sql[match.start() : position], "")
        elif kind in ("string", "escape_string", "number"):
            yield _Token("literal", text, "")
        elif kind == "name":
            yield _Token("name", text, text[1:-1].replace('""', '"'))
        elif kind == "unicode_name":
            # Escapes such as \0073 spell any name, set_config too; nobody needs them here.
            raise QueryRefused(
                f'refused: U&"..." names are not allowed in read-only queries; {WRITE_HINT}'
            )
        elif kind == "word":
            yield _Token("word", text, text.lower())
        elif text in "'\"":
            raise QueryRefused(f"refused: a {text} quote is never closed; close it")
        else:
            yield _Token("punct", text, text)


def _end_of_block_comment(sql: str, start: int) -> int:
    """Position after the ``/* ... */`` comment at ``start``; they nest in PostgreSQL."""
    depth, position = 0, start
    while position < len(sql):
        if sql.startswith("/*", position):
            depth, position = depth + 1, position + 2
        elif sql.startswith("*/", position):
            depth, position = depth - 1, position + 2
            if depth == 0:
                return position
        else:
            position += 1
    raise QueryRefused("refused: a /* comment is never closed; close it with */")


def _is_read_statement(tokens: list[_Token]) -> bool:
    """Whether the statement starts with a read keyword (after opening parentheses)."""
    words = iter(tokens)
    first = next((token for token in words if token.text != "("), None)
    if first is None or first.kind != "word":
        return False
    if first.value != "explain":
        return first.value in READ_STATEMENTS
    depth = 0
    for token in words:  # skip EXPLAIN's options: ANALYZE, VERBOSE, (FORMAT JSON, ...)
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0 and token.value not in EXPLAIN_OPTIONS:
            return token.kind == "word" and token.value in READ_STATEMENTS - {"show", "describe"}
    return False
