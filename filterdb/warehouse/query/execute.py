"""Running one ad-hoc statement: guard 2 (the read-only connection) and the result frame.

See :mod:`filterdb.warehouse.query` for the guards.
"""

from __future__ import annotations

import threading

import duckdb
import polars as pl
import psycopg
from sqlalchemy.engine import Connection

from filterdb.errors import QueryFailed, QueryRefused
from filterdb.warehouse.database import backend_name, engine_for
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.query.guard import check_read_only
from filterdb.warehouse.query.reader_role import ensure_reader_role


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
