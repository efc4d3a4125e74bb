"""Shared fixtures: every database test runs on a real DuckDB file and a real PostgreSQL.

PostgreSQL comes from ``FILTERDB_TEST_POSTGRES_URL`` (``.ci/run`` starts a throwaway
server and sets it). Without it the PostgreSQL half skips, unless
``FILTERDB_REQUIRE_POSTGRES=1``, which CI sets, turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from filterdb.warehouse import migrate

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
BACKENDS = ("duckdb", "postgresql")


def postgres_server_url() -> str:
    url = os.environ.get("FILTERDB_TEST_POSTGRES_URL")
    if url:
        return url
    if under_ci():
        pytest.fail("FILTERDB_REQUIRE_POSTGRES=1 but FILTERDB_TEST_POSTGRES_URL is not set")
    pytest.skip("no PostgreSQL server: set FILTERDB_TEST_POSTGRES_URL (see .ci/postgres.sh)")


def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database on the test server, yield its URL, drop it afterwards."""
    server = sa.make_url(postgres_server_url())
    name = f"filterdb_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """URL of an empty database, once per backend."""
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'test.duckdb'}"
    else:
        yield from fresh_postgres_database()


@pytest.fixture
def db_url(empty_db_url) -> str:
    """URL of a database at the head revision, once per backend."""
    migrate.upgrade(url=empty_db_url)
    return empty_db_url


@pytest.fixture
def duckdb_url(tmp_path) -> str:
    """URL of a DuckDB file at the head revision (for DuckDB-only behaviour)."""
    url = f"duckdb:///{tmp_path / 'test.duckdb'}"
    migrate.upgrade(url=url)
    return url


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip when it is absent, and fail under CI.

    CI (``FILTERDB_REQUIRE_POSTGRES=1``) runs beside a copy of ``shared/``: a missing one
    there means the tests that read the papers' data would pass without running.
    """
    if not SHARED_DATA.is_dir():
        if under_ci():
            pytest.fail(f"{SHARED_DATA} is not here, and CI (FILTERDB_REQUIRE_POSTGRES=1) needs it")
        pytest.skip(f"{SHARED_DATA} is not here")
    return SHARED_DATA


def under_ci() -> bool:
    """Whether this is CI's run (``.ci/run`` sets ``FILTERDB_REQUIRE_POSTGRES=1``)."""
    return os.environ.get("FILTERDB_REQUIRE_POSTGRES") == "1"


HOLD_LOCK = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def duckdb_lock_holder():
    """Start another process that holds a DuckDB file open read-write (one writer per file)."""
    holders = []

    def hold(url: str) -> subprocess.Popen:
        path = url.removeprefix("duckdb:///")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, path], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="session")
def cluster():
    """A LocalCluster of 2 worker processes on 127.0.0.1, one per test session (it takes
    about a second to start); yields it and its engine spec ``dask://127.0.0.1:PORT``."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as local:
        yield local, "dask://" + local.scheduler_address.removeprefix("tcp://")
