"""Running one ad-hoc statement: guard 2 (the read-only connection) and the result frame.

See :mod:`filterdb.warehouse.query` for the guards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import polars as pl
import psycopg
import pyarrow as pa
from sqlalchemy.engine import Connection

from filterdb.errors import QueryFailed, QueryRefused
from filterdb.warehouse.database import backend_name, engine_for, resolve_url
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.query.guard import POSTGRES_PARSER_SETTINGS, check_read_only
from filterdb.warehouse.query.reader_role import ensure_reader_role

# A result bigger than this is refused, not fetched: a query returning 4 GB of strings
# failed deep inside Arrow (issue 9). Raise them with --max-rows / --max-bytes.
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_BYTES = 1_000_000_000
DEFAULT_TIMEOUT_S = 60.0
# Rows fetched at a time, so that a too-large result stops early.
_BATCH_ROWS = 10_000


def run_query(
    sql: str,
    *,
    url: str | None = None,
    write: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    memory_limit: str | None = None,
) -> pl.DataFrame:
    """Run one ad-hoc statement on the database at ``url`` and return its rows.

    Without ``write`` the statement must be a single read statement (:func:`check_read_only`,
    with the backend's own parser) and runs on a read-only connection (see the module
    docstring for both guards). With ``write`` the text may hold several statements; they
    run on a normal connection in one transaction that is committed when all succeed, and
    the result is what the last one returns: its rows, or an empty frame when it returns
    none. DuckDB answers INSERT, UPDATE, DELETE and DDL with a ``Count`` column of its own;
    PostgreSQL returns rows only for queries and ``RETURNING``.

    Limits: ``timeout_s`` on both backends (PostgreSQL's ``statement_timeout``; DuckDB's
    connection is interrupted); results over ``max_rows`` rows or about ``max_bytes`` bytes
    are refused while they are fetched; ``memory_limit`` (a DuckDB size such as ``"2GB"``,
    default :data:`~filterdb.warehouse.database.DUCKDB_MEMORY_LIMIT`) caps DuckDB, and a
    read-only DuckDB query never spills to disk beside the database file.

    Raises :class:`QueryRefused` (one line) when the statement is not read-only and ``write``
    is not given, or does not parse; :class:`QueryFailed` with the database's message in one
    line when the database rejects it, it runs longer than ``timeout_s`` seconds, or its
    result passes a limit; and :class:`~filterdb.errors.DatabaseError` when the database
    cannot be opened or is not at the head revision.
    """
    if not write:
        check_read_only(sql, backend=backend_name(resolve_url(url)))
    return _execute(
        sql,
        url=url,
        write=write,
        timeout_s=timeout_s,
        limits=_Limits(max_rows, max_bytes),
        memory_limit=memory_limit,
    )


@dataclass(frozen=True)
class _Limits:
    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_rows < 0 or self.max_bytes <= 0:
            raise QueryRefused(
                f"limits must be positive (max rows {self.max_rows}, max bytes "
                f"{self.max_bytes}); give --max-rows >= 0 and --max-bytes > 0"
            )

    def check(self, n_rows: int, n_bytes: int) -> None:
        if n_rows > self.max_rows:
            raise QueryFailed(
                f"the result has more than {self.max_rows:,} rows; add a LIMIT or a WHERE, "
                "or raise --max-rows"
            )
        if n_bytes > self.max_bytes:
            raise QueryFailed(
                f"the result is larger than {self.max_bytes:,} bytes; select fewer columns "
                "or rows, or raise --max-bytes"
            )


def _execute(
    sql: str,
    *,
    url: str | None,
    write: bool,
    timeout_s: float,
    limits: _Limits | None = None,
    memory_limit: str | None = None,
) -> pl.DataFrame:
    """Guard 2 and the run itself; :func:`run_query` without the statement check."""
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise QueryRefused(f"the timeout must be a positive number of seconds, got {timeout_s}")
    limits = limits or _Limits()
    with engine_for(url, read_only=not write, memory_limit=memory_limit) as engine:
        require_head(engine)
        # One transaction, begun before any raw statement (PLATFORM.md) and committed at the
        # end unless something failed or a read-only run rolled it back.
        if backend_name(engine) == "duckdb":
            with engine.begin() as connection:
                return _run_duckdb(connection, sql, write=write, timeout_s=timeout_s, limits=limits)
        role = None if write else ensure_reader_role(engine)
        with engine.connect() as connection, connection.begin() as transaction:
            frame = _run_postgres(
                connection, sql, role=role, write=write, timeout_s=timeout_s, limits=limits
            )
            if not write:
                transaction.rollback()
            return frame


def _run_duckdb(
    connection: Connection, sql: str, *, write: bool, timeout_s: float, limits: _Limits
) -> pl.DataFrame:
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
        return pl.DataFrame() if result is None else _frame_from_arrow(result, limits)
    except duckdb.InterruptException:
        raise QueryFailed(_timeout_message(timeout_s)) from None
    except duckdb.OutOfMemoryException as error:
        first = str(error).strip().splitlines()[0]
        raise QueryFailed(
            f"{first} (read-only queries do not spill to disk); narrow the query, or raise "
            "--memory-limit"
        ) from None
    except duckdb.Error as error:
        raise QueryFailed(_one_line(error)) from None
    finally:
        timer.cancel()


def _frame_from_arrow(result: duckdb.DuckDBPyRelation, limits: _Limits) -> pl.DataFrame:
    """Fetch in batches and stop at a limit, before a huge result is in memory."""
    reader = result.to_arrow_reader(_BATCH_ROWS)
    batches, n_rows, n_bytes = [], 0, 0
    try:
        for batch in reader:
            n_rows, n_bytes = n_rows + batch.num_rows, n_bytes + batch.nbytes
            limits.check(n_rows, n_bytes)
            batches.append(batch)
    finally:
        # A result left open blocks the connection ("Resource In Use", PLATFORM.md).
        reader.close()
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return pl.from_arrow(table.rename_columns(_unique_names(table.column_names)))


def _run_postgres(
    connection: Connection,
    sql: str,
    *,
    role: str | None,
    write: bool,
    timeout_s: float,
    limits: _Limits,
) -> pl.DataFrame:
    cursor = connection.connection.driver_connection.cursor()
    if not write:
        cursor.execute("SET TRANSACTION READ ONLY")
        # The server tokenizes the statement as the check's parser did (guard.py).
        for name, value in POSTGRES_PARSER_SETTINGS.items():
            cursor.execute(f"SET LOCAL {name} = {value}")
    cursor.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
    if role:
        cursor.execute(f"SET LOCAL ROLE {role}")
    try:
        if write:
            # The simple query protocol runs every statement of the text, in this transaction.
            cursor.execute(sql)
            while cursor.nextset():
                pass
            rows = iter(lambda: cursor.fetchmany(_BATCH_ROWS), [])
            rows = (row for batch in rows for row in batch) if cursor.description else iter(())
        else:
            # The extended protocol holds exactly one statement (guard 2 on its own); rows
            # stream in chunks, so that a too-large result stops early.
            rows = cursor.stream(sql, size=_BATCH_ROWS)
        return _frame_from_rows(cursor, rows, limits)
    except psycopg.ProgrammingError as error:
        # stream() of a statement that returns no rows (RESET, COMMIT) ran it, then says so.
        if "didn't produce a result" in str(error):
            return pl.DataFrame()
        raise QueryFailed(_one_line(error)) from None
    except psycopg.errors.QueryCanceled as error:
        message = _timeout_message(timeout_s) if "timeout" in str(error) else _one_line(error)
        raise QueryFailed(message) from None
    except psycopg.Error as error:
        raise QueryFailed(_one_line(error)) from None


def _frame_from_rows(
    cursor: psycopg.Cursor, rows: Iterator[tuple], limits: _Limits
) -> pl.DataFrame:
    fetched, n_bytes = [], 0
    try:
        for row in rows:
            fetched.append(row)
            # Strings and bytes by length, anything else as 8 bytes: an estimate, like Arrow's.
            n_bytes += sum(len(v) if isinstance(v, str | bytes) else 8 for v in row)
            if len(fetched) % _BATCH_ROWS == 0 or len(fetched) > limits.max_rows:
                limits.check(len(fetched), n_bytes)
        limits.check(len(fetched), n_bytes)
    finally:
        # A stream left open keeps the connection busy: the rollback after it would fail.
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    if cursor.description is None:
        return pl.DataFrame()
    names = _unique_names([column.name for column in cursor.description])
    return pl.DataFrame(fetched, schema=names, orient="row", infer_schema_length=None)


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
