"""Connections: which database, how to open it, and the backend quirks that come with it.

One URL names the database: ``--db URL``, else ``FILTERDB_URL``, else the DuckDB file
``filterdb.duckdb`` in the working directory (SPEC section 3). The same code serves DuckDB
and PostgreSQL; the few places where they differ ask :func:`backend_name`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from filterdb.errors import DatabaseError

DEFAULT_URL = "duckdb:///filterdb.duckdb"
URL_ENVIRONMENT_VARIABLE = "FILTERDB_URL"

# Without a limit DuckDB grew to 8 GB loading 200M rows, and a 2 GB limit made the
# whole-table aggregate faster (PLATFORM.md, "At scale"). Not lower: with 1 GB, computing a
# WRN-70-16's metrics took 25 s instead of 14 s for 10% less peak memory (bench/metrics.py).
DUCKDB_MEMORY_LIMIT = os.environ.get("FILTERDB_DUCKDB_MEMORY_LIMIT", "2GB")

SUPPORTED_BACKENDS = ("duckdb", "postgresql")


def resolve_url(url: str | None = None) -> str:
    """Return ``url``, else ``$FILTERDB_URL``, else the default DuckDB file."""
    return url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL


def display_url(url: str | None = None) -> str:
    """The resolved database URL for documents, any password masked."""
    return _parse_url(resolve_url(url)).render_as_string(hide_password=True)


def backend_name(engine_or_url: Engine | Connection | str) -> str:
    """``"duckdb"`` or ``"postgresql"`` for an engine, a connection or a URL."""
    if isinstance(engine_or_url, Engine | Connection):
        return engine_or_url.dialect.name
    return _parse_url(engine_or_url).get_backend_name()


def create_engine(
    url: str | None = None,
    *,
    read_only: bool = False,
    create: bool = False,
    memory_limit: str | None = None,
) -> Engine:
    """Open the database named by ``url`` (see :func:`resolve_url`) and check it answers.

    A DuckDB file that does not exist is an error unless ``create`` (only schema
    upgrades create one: a mistyped path must not leave an empty database behind).
    ``read_only=True`` opens DuckDB read-only with file and network access disabled and
    the configuration locked, so that a statement cannot reopen them (PLATFORM.md), and
    without spilling to disk: DuckDB's temporary directory sits beside the database file and
    cannot be moved once file access is off, so its size is capped at 0 and a query that
    needs more than the memory limit fails instead. ``memory_limit`` is DuckDB's
    ``memory_limit`` (for example ``"2GB"``; default :data:`DUCKDB_MEMORY_LIMIT`); PostgreSQL
    ignores it. On PostgreSQL read-only work is a per-transaction matter
    (:mod:`filterdb.warehouse.query`).

    Raises :class:`DatabaseError` with a one-line cause and fix when the URL is malformed,
    the server unreachable, or the DuckDB file locked by another process.
    """
    url = resolve_url(url)
    parsed = _parse_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise DatabaseError(
            f"unsupported database URL {url!r}: use duckdb:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )
    if backend == "duckdb":
        engine = _duckdb_engine(
            parsed, read_only=read_only, create=create, memory_limit=memory_limit
        )
    else:
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as error:
        engine.dispose()
        raise DatabaseError(describe_connect_error(url, error)) from None
    return engine


@contextmanager
def engine_for(
    url: str | None = None,
    *,
    read_only: bool = False,
    create: bool = False,
    memory_limit: str | None = None,
) -> Iterator[Engine]:
    """:func:`create_engine` as a context manager that releases the database at the end."""
    engine = create_engine(url, read_only=read_only, create=create, memory_limit=memory_limit)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def kept_open(database: Engine | str | None = None) -> Iterator[None]:
    """Hold one idle DuckDB connection to ``database`` (an engine, or a URL as for
    :func:`resolve_url`) for a block that opens it many times.

    An engine opens the file anew for each connection (NullPool, to release the lock);
    while a connection is open DuckDB hands later ones the same database instance, so an
    engine and its first connection cost 5 ms instead of 130 ms (measured here,
    2026-12-01): three per ingested model, dozens per report. Opens inside the block must
    ask for the same configuration (DuckDB refuses a second one for an open file).
    PostgreSQL connections are cheap to open; there it does nothing.
    """
    if (
        backend_name(database if isinstance(database, Engine) else resolve_url(database))
        != "duckdb"
    ):
        yield
        return
    if isinstance(database, Engine):
        with database.connect():
            yield
        return
    with engine_for(database) as engine, engine.connect():
        yield


def describe_connect_error(url: str, error: BaseException) -> str:
    """One line naming why ``url`` could not be opened and what to do about it."""
    text = str(getattr(error, "orig", None) or error)
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    shown = _parse_url(url).render_as_string(hide_password=True)
    if "Could not set lock" in text or "Conflicting lock" in text:
        holder = re.search(r"\(PID (\d+)\)", text)
        who = f"process {holder.group(1)}" if holder else "another process"
        return (
            f"database {shown} is locked by {who} (DuckDB allows one writer per file); "
            "wait for it to finish or stop it, then retry"
        )
    if "does not exist" in text and "database" in text:
        return f"cannot open {shown}: {first_line}; create the database first"
    if "Connection refused" in text or "could not connect" in text or "timeout" in text:
        return (
            f"cannot reach {shown}: {first_line}; start the server or correct the host "
            "and port in the URL"
        )
    return f"cannot open {shown}: {first_line}"


def _parse_url(url: str) -> sa.URL:
    try:
        return sa.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseError(
            f"malformed database URL {url!r}: use duckdb:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        ) from None


def _duckdb_engine(
    url: sa.URL, *, read_only: bool, create: bool, memory_limit: str | None
) -> Engine:
    path = url.database or ":memory:"
    if not (create and not read_only) and path != ":memory:" and not os.path.exists(path):
        raise DatabaseError(f"no database at {path}; create it with `filterdb init`")
    config: dict[str, object] = {"memory_limit": memory_limit or DUCKDB_MEMORY_LIMIT}
    if read_only:
        # temp_directory cannot be changed with external access off ("Modifying the
        # temp_directory has been disabled"), so spilling is capped instead (issue 9: a
        # 250M-row group-by spilled into <file>.tmp).
        config |= {
            "enable_external_access": False,
            "lock_configuration": True,
            "max_temp_directory_size": "0B",
        }
    # NullPool: the file lock is released as soon as a connection closes, so another
    # process (or a read-only engine in this one) can open the file (PLATFORM.md).
    return sa.create_engine(
        url,
        poolclass=NullPool,
        connect_args={"read_only": read_only, "config": config},
    )


def read_frame(
    connection: Connection, sql: str, parameters: dict[str, object] | None = None
) -> pl.DataFrame:
    """Run ``sql`` (with ``:name`` parameters) and return the rows as a Polars frame.

    DuckDB hands its result to Polars through Arrow directly (PLATFORM.md: 0.1 s for 4M
    rows, where ``pl.read_database`` takes 0.7 s); PostgreSQL goes through SQLAlchemy.
    """
    if backend_name(connection) == "duckdb":
        statement = sa.text(sql).bindparams(**(parameters or {}))
        compiled = statement.compile(dialect=connection.dialect)
        positional = [compiled.params[name] for name in compiled.positiontup or ()]
        driver = connection.connection.driver_connection
        return driver.sql(str(compiled), params=positional or None).pl()
    result = connection.execute(sa.text(sql), parameters or {})
    names = list(result.keys())
    schema = {
        name: _POSTGRES_TYPES.get(column.type_code)
        for name, column in zip(names, result.cursor.description, strict=True)
    }
    return pl.DataFrame(result.fetchall(), schema=schema, orient="row")


# PostgreSQL type oids whose Polars type is pinned: psycopg hands REAL over as a Python
# float, which a frame would widen to Float64 (PLATFORM.md), and an empty result would
# have no types at all. REAL stays Float32 so that weights compare bitwise.
_POSTGRES_TYPES = {
    16: pl.Boolean,
    20: pl.Int64,
    21: pl.Int16,
    23: pl.Int32,
    700: pl.Float32,
    701: pl.Float64,
    1700: pl.Float64,
    25: pl.String,
    1043: pl.String,
    1114: pl.Datetime("us"),
}
