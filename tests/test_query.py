"""Ad-hoc SQL is read-only by two guards, each tested alone (STYLE.md section 5).

Guard 1 is the statement check (``check_read_only``); guard 2 is the connection, reached
without guard 1 through ``query.execute._execute``. Every refusal also proves that nothing changed:
same tables and views, same rows, and no file written on either side of the connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from filterdb.errors import DatabaseError, QueryFailed, QueryRefused
from filterdb.warehouse import migrate, query
from filterdb.warehouse.database import backend_name, engine_for
from filterdb.warehouse.query import check_read_only, run_query
from filterdb.warehouse.query import execute as query_execute
from filterdb.warehouse.schema import model

MODEL_NAMES = ["alpha", "beta"]


def put_models(url: str, names: list[str]) -> None:
    """Insert models by hand, through SQLAlchemy on a read-write engine."""
    rows = [
        {
            "model_id": model_id,
            "name": name,
            "source": "checkpoint",
            "checkpoint_sha256": f"{model_id:064d}",
            "max_conv_depth": 3,
            "ingested_at": datetime(2026, 1, 1),
        }
        for model_id, name in enumerate(names, start=1)
    ]
    with engine_for(url) as engine, engine.begin() as connection:
        connection.execute(model.insert(), rows)


def state(url: str) -> tuple[list[tuple], list[str], int]:
    """Tables and views of the schema, model names, and the row count of v_models."""
    with engine_for(url) as engine, engine.connect() as connection:
        relations = connection.execute(
            sa.text(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = current_schema() ORDER BY table_name"
            )
        ).all()
        # Fetch each result whole: on DuckDB the next statement empties one left pending.
        names = connection.execute(sa.text("SELECT name FROM model ORDER BY name")).scalars()
        names = names.all()
        in_view = connection.execute(sa.text("SELECT COUNT(*) FROM v_models")).scalar_one()
        return [tuple(row) for row in relations], names, in_view


@pytest.fixture
def seeded_url(db_url) -> str:
    put_models(db_url, MODEL_NAMES)
    return db_url


@pytest.fixture
def seeded_duckdb_url(duckdb_url) -> str:
    put_models(duckdb_url, MODEL_NAMES)
    return duckdb_url


@pytest.fixture
def seeded_postgres_url(empty_db_url) -> str:
    if backend_name(empty_db_url) != "postgresql":
        pytest.skip("PostgreSQL behaviour")
    migrate.upgrade(url=empty_db_url)
    put_models(empty_db_url, MODEL_NAMES)
    return empty_db_url


@pytest.fixture
def server_path() -> Path:
    """A path the PostgreSQL server (on loopback) could write; removed afterwards."""
    path = Path("/tmp") / f"filterdb_query_test_{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


# --- Guard 1: the statement check, no database -------------------------------------------

GUARD_BACKENDS = ("postgresql", "duckdb")
READ_STATEMENTS = [
    "SELECT 1",
    "select 1;",
    "SELECT 1; -- trailing comment ; DROP VIEW v_models",
    "/* DROP VIEW v_models; /* nested */ ; */ SELECT 1 ;  ",
    "SELECT 'a; DROP VIEW v_models' AS s",
    "SELECT 'it''s; DELETE FROM model'",
    "SELECT E'\\'; DELETE FROM model'",
    "SELECT $$; DELETE FROM model$$, $tag$ $$; $tag$",
    'SELECT "delete", "update" FROM t',
    "WITH m AS (SELECT * FROM v_models) SELECT * FROM m",
    "VALUES (1), (2)",
    "TABLE v_models",
    "(SELECT 1) UNION (SELECT 2)",
    "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE WITH m AS (SELECT 1) SELECT * FROM m",
    "EXPLAIN (FORMAT JSON, ANALYZE) SELECT 1",
    "SHOW search_path",
]
READ_ON = {
    "duckdb": ["SHOW TABLES", "DESCRIBE v_models", "SUMMARIZE v_models", "FROM v_models SELECT a"],
    "postgresql": ["SELECT 1 FROM v_models WHERE name = U&'\\0073'"],
}


@pytest.mark.parametrize("backend", GUARD_BACKENDS)
@pytest.mark.parametrize("sql", READ_STATEMENTS)
def test_statement_check_accepts_one_read_statement(sql, backend):
    check_read_only(sql, backend=backend)


@pytest.mark.parametrize(("backend", "sql"), [(b, q) for b, qs in READ_ON.items() for q in qs])
def test_statement_check_accepts_the_backends_own_read_statements(backend, sql):
    check_read_only(sql, backend=backend)


REFUSED_STATEMENTS = {
    "DROP VIEW v_models": '"DROP VIEW" is not a read-only statement',
    "create table t (a integer)": '"create table" is not a read-only statement',
    "INSERT INTO model (name) VALUES ('x')": '"INSERT INTO" is not a read-only',
    "DELETE FROM model": '"DELETE FROM" is not a read-only statement',
    "COPY (SELECT 1) TO '/tmp/x.csv'": '"COPY (" is not a read-only statement',
    "RESET ROLE": '"RESET ROLE" is not a read-only statement',
    "EXPLAIN ANALYZE DELETE FROM model": '"EXPLAIN ANALYZE',
    "EXPLAIN /* ; */ ANALYZE DELETE FROM model": '"EXPLAIN ANALYZE',
    "EXPLAIN DELETE FROM model": '"EXPLAIN DELETE',
    "WITH d AS (DELETE FROM model RETURNING 1) SELECT * FROM d": "DELETE inside the query",
    "WITH d AS (UPDATE model SET name = 'x' RETURNING 1) SELECT * FROM d": "UPDATE inside",
    "SELECT 1; SELECT 2": "2 statements given",
    "SELECT 1; -- a comment\nDELETE FROM model": "2 statements given",
    "SELECT 1 /* ; */; DROP VIEW v_models;": "2 statements given",
    "SELECT E'\\''; DROP VIEW v_models": "2 statements given",
    " ; -- nothing": "the query is empty",
}
REFUSED_ON = {
    "postgresql": {
        "ATTACH '/tmp/other.duckdb'": "does not parse",
        "SET ROLE postgres": '"SET ROLE" is not a read-only statement',
        "SELECT * INTO t FROM model": "SELECT ... INTO creates a table",
        "SELECT * FROM model FOR UPDATE": "FOR UPDATE/SHARE",
        "SELECT set_config('role', 'postgres', true)": "set_config() can switch",
        "SELECT pg_catalog.\"set_config\"('role', 'postgres', true)": "set_config() can switch",
        "SELECT * FROM set_config('role', 'postgres', true)": "set_config() can switch",
        "SELECT query_to_xml('SELECT set_con' || 'fig(''role'', ''postgres'', true)', true, "
        "false, '')": "query_to_xml() runs SQL",
        "SELECT U&\"\\0073et_config\"('role', 'postgres', true)": "set_config() can switch",
        "SELECT pg_read_file('/etc/hostname')": "pg_read_file() reads server files",
        "SELECT lo_import('/etc/hostname')": "lo_import() reads server files",
        "DO $$BEGIN PERFORM 1; END$$": '"DO $$BEGIN PERFORM 1; END$$" is not a read-only',
        "EXPLAIN SHOW search_path": "does not parse",
    },
    "duckdb": {
        "ATTACH '/tmp/other.duckdb'": "\"ATTACH '/tmp/other.duckdb'\" is not a read-only",
        "PRAGMA version": '"PRAGMA version" is not a read-only',
        "CALL pragma_version()": '"CALL pragma_version" is not a read-only',
        "SELECT * FROM query('DELETE FROM model')": "query() runs SQL given as text",
        "SET enable_external_access = true": '"SET enable_external_access" is not',
    },
}
UNPARSABLE = {
    "SELEC * FROM x": 'syntax error at or near "SELEC"',
    "SELECT 'open": "unterminated",
    "SELECT 1 /* open": "unterminated /* comment",
    "SELECT $x$ open": "$x$ open",
}


def refused_cases():
    for backend in GUARD_BACKENDS:
        for sql, expected in {**REFUSED_STATEMENTS, **REFUSED_ON[backend]}.items():
            yield pytest.param(backend, sql, expected, id=f"{backend}-{sql[:40]}")


@pytest.mark.parametrize(("backend", "sql", "expected"), list(refused_cases()))
def test_statement_check_refuses_in_one_line(backend, sql, expected):
    with pytest.raises(QueryRefused) as refused:
        check_read_only(sql, backend=backend)
    message = assert_one_line(refused)
    assert expected in message


@pytest.mark.parametrize("backend", GUARD_BACKENDS)
@pytest.mark.parametrize(("sql", "expected"), UNPARSABLE.items())
def test_a_statement_that_does_not_parse_is_a_parse_error_not_a_write(backend, sql, expected):
    with pytest.raises(QueryRefused) as refused:
        check_read_only(sql, backend=backend)
    message = assert_one_line(refused)
    assert "does not parse" in message and expected in message
    assert "--write" not in message


# Statement text that must never split a statement: quotes, comment starts, semicolons.
DUCKDB_PARSER = duckdb.connect()
LITERAL_TEXT = st.text(alphabet=";'\"-/*$\\ \nabcSELECT", max_size=20)


@settings(deadline=None)  # the shared machine's load, not the code, sets the time
@given(st.lists(LITERAL_TEXT, min_size=1, max_size=3), st.booleans())
def test_statement_count_agrees_with_duckdbs_parser(literals, trailing_semicolon):
    statements = [f"SELECT '{text.replace(chr(39), chr(39) * 2)}' AS s" for text in literals]
    sql = ";\n".join(statements) + (";" if trailing_semicolon else "")
    # An independent parser: DuckDB's own, on the same text.
    assert len(DUCKDB_PARSER.extract_statements(sql)) == len(statements)
    for backend in GUARD_BACKENDS:
        if len(statements) == 1:
            check_read_only(sql, backend=backend)
        else:
            with pytest.raises(QueryRefused, match=f"{len(statements)} statements given"):
                check_read_only(sql, backend=backend)


# --- Both guards: run_query on both backends ---------------------------------------------


def test_select_through_views_returns_the_rows_put_in(seeded_url):
    frame = run_query(
        "SELECT model_name, source, n_layers FROM v_models ORDER BY model_name", url=seeded_url
    )
    assert frame["model_name"].to_list() == MODEL_NAMES
    assert frame["source"].to_list() == ["checkpoint", "checkpoint"]
    assert frame["n_layers"].to_list() == [0, 0]


def test_sql_text_reaches_the_database_as_written(seeded_url):
    frame = run_query(
        "SELECT '50% :name %s' AS s, 7 % 3 AS m, 1 AS a, 2 AS a -- no ; here", url=seeded_url
    )
    assert frame.columns == ["s", "m", "a", "a_1"]
    assert frame.row(0) == ("50% :name %s", 1, 1, 2)


REFUSED_WRITES = [
    "DROP VIEW v_models",
    "CREATE TABLE t (a INTEGER)",
    "INSERT INTO model (model_id, name, source, checkpoint_sha256, max_conv_depth, "
    "ingested_at) VALUES (9, 'x', 'x', 'x', 1, CURRENT_TIMESTAMP)",
    "DELETE FROM model",
    "UPDATE model SET name = 'renamed'",
    "WITH d AS (DELETE FROM model RETURNING 1) SELECT * FROM d",
    "SELECT 1; DELETE FROM model",
]


@pytest.mark.parametrize("sql", REFUSED_WRITES)
def test_writes_are_refused_without_write_and_change_nothing(seeded_url, sql):
    before = state(seeded_url)
    with pytest.raises(QueryRefused) as refused:
        run_query(sql, url=seeded_url)
    assert "--write" in assert_one_line(refused)
    assert state(seeded_url) == before


def test_files_are_neither_written_nor_read(seeded_url, tmp_path):
    some_csv = tmp_path / "some.csv"
    some_csv.write_text("secret\nfound-the-file\n")
    out_csv, other_db = tmp_path / "out.csv", tmp_path / "other.duckdb"
    before = state(seeded_url)
    for sql in [f"COPY (SELECT 1) TO '{out_csv}'", f"ATTACH '{other_db}'"]:
        with pytest.raises(QueryRefused):
            run_query(sql, url=seeded_url)
    # SELECTs: DuckDB's connection refuses read_csv; PostgreSQL's check refuses pg_read_file
    # by name (and its connection would too: the guard-2 tests below).
    for sql in [f"SELECT * FROM read_csv('{some_csv}')", "SELECT pg_read_file('/etc/hostname')"]:
        with pytest.raises((QueryFailed, QueryRefused)) as failed:
            run_query(sql, url=seeded_url)
        assert "found-the-file" not in assert_one_line(failed)
    assert not out_csv.exists() and not other_db.exists()
    assert state(seeded_url) == before


def test_write_runs_and_commits(seeded_url):
    inserted = run_query(
        "INSERT INTO model (model_id, name, source, checkpoint_sha256, max_conv_depth, "
        "ingested_at) VALUES (3, 'gamma', 'onnx', 'c', 1, CURRENT_TIMESTAMP) "
        "RETURNING model_id, name",
        url=seeded_url,
        write=True,
    )
    assert inserted.rows() == [(3, "gamma")]
    frame = run_query("SELECT model_name FROM v_models ORDER BY model_name", url=seeded_url)
    assert frame["model_name"].to_list() == [*MODEL_NAMES, "gamma"]


def test_write_runs_several_statements_in_one_transaction(seeded_url):
    before = state(seeded_url)
    with pytest.raises(QueryFailed) as failed:
        run_query("DELETE FROM model; SELECT * FROM no_such_table", url=seeded_url, write=True)
    assert "no_such_table" in assert_one_line(failed)
    assert state(seeded_url) == before
    run_query(
        "DELETE FROM model WHERE name = 'alpha'; DROP VIEW v_layer_metrics",
        url=seeded_url,
        write=True,
    )
    relations, names, _ = state(seeded_url)
    assert names == ["beta"]
    assert ("v_layer_metrics", "VIEW") not in relations
    assert ("v_models", "VIEW") in relations


def test_database_errors_are_one_line_query_failed(seeded_url):
    with pytest.raises(QueryFailed) as failed:
        run_query("SELECT no_such_column FROM v_models", url=seeded_url)
    assert "no_such_column" in assert_one_line(failed)


LONG_QUERIES = {
    "duckdb": "SELECT sum(hash(i)) FROM range(5000000000) t(i)",  # about a minute here
    "postgresql": "SELECT pg_sleep(5)",
}


def test_long_query_is_cancelled_at_the_timeout(seeded_url):
    long_query = LONG_QUERIES[backend_name(seeded_url)]
    with pytest.raises(QueryFailed) as failed:
        run_query(long_query, url=seeded_url, timeout_s=0.5)
    assert "cancelled after 0.5 s" in assert_one_line(failed)


def test_a_database_not_at_head_is_refused(empty_db_url):
    migrate.upgrade(url=empty_db_url)
    migrate.downgrade("base", url=empty_db_url)
    with pytest.raises(DatabaseError, match="holds no filterdb schema"):
        run_query("SELECT 1", url=empty_db_url)


# --- Guard 2 alone: the DuckDB connection ------------------------------------------------


def test_duckdb_connection_alone_refuses_writes_and_files(seeded_duckdb_url, tmp_path):
    some_csv = tmp_path / "some.csv"
    some_csv.write_text("secret\nfound-the-file\n")
    out_csv, other_db = tmp_path / "out.csv", tmp_path / "other.duckdb"
    before = state(seeded_duckdb_url)
    statements = [
        f"COPY (SELECT 1) TO '{out_csv}'",
        f"SELECT * FROM read_csv('{some_csv}')",
        f"FROM '{some_csv}'",
        f"ATTACH '{other_db}'",
        "SET enable_external_access = true",
        "RESET enable_external_access",
        *REFUSED_WRITES[:-1],
    ]
    for sql in statements:
        with pytest.raises(QueryFailed) as failed:
            query_execute._execute(sql, url=seeded_duckdb_url, write=False, timeout_s=10)
        assert "found-the-file" not in assert_one_line(failed), sql
    with pytest.raises(QueryRefused, match="2 statements given"):
        query_execute._execute(
            "SELECT 1; DELETE FROM model", url=seeded_duckdb_url, write=False, timeout_s=10
        )
    assert not out_csv.exists() and not other_db.exists()
    assert state(seeded_duckdb_url) == before


# --- Guard 2 alone: the PostgreSQL transaction -------------------------------------------


def execute_unchecked(sql: str, url: str):
    return query_execute._execute(sql, url=url, write=False, timeout_s=10)


def test_postgres_transaction_alone_refuses_writes(seeded_postgres_url):
    before = state(seeded_postgres_url)
    # READ ONLY answers before the role's missing rights would: it holds without the role.
    for sql in [*REFUSED_WRITES[:-1], "CREATE TEMP TABLE t AS SELECT 1"]:
        with pytest.raises(QueryFailed) as failed:
            execute_unchecked(sql, seeded_postgres_url)
        assert "read-only transaction" in assert_one_line(failed), sql
    with pytest.raises(QueryFailed, match="multiple commands"):
        execute_unchecked(REFUSED_WRITES[-1], seeded_postgres_url)
    assert state(seeded_postgres_url) == before


def test_postgres_transaction_alone_refuses_server_files(seeded_postgres_url, server_path):
    # Control: the login is a superuser, so with --write both work; the guard is what stops them.
    run_query(f"COPY (SELECT 1) TO '{server_path}'", url=seeded_postgres_url, write=True)
    assert server_path.exists()
    server_path.unlink()
    hostname = run_query(
        "SELECT pg_read_file('/etc/hostname') AS h", url=seeded_postgres_url, write=True
    )
    assert hostname["h"][0]

    with pytest.raises(QueryFailed, match="COPY to a file"):
        execute_unchecked(f"COPY (SELECT 1) TO '{server_path}'", seeded_postgres_url)
    assert not server_path.exists()
    with pytest.raises(QueryFailed, match="permission denied for function pg_read_file"):
        execute_unchecked("SELECT pg_read_file('/etc/hostname')", seeded_postgres_url)


def test_postgres_role_change_does_not_outlast_its_statement(seeded_postgres_url, server_path):
    for sql in ["RESET ROLE", "SET ROLE postgres", "COMMIT"]:
        execute_unchecked(sql, seeded_postgres_url)
    assert (
        run_query("SELECT current_user AS u", url=seeded_postgres_url)["u"][0] == query.READER_ROLE
    )
    # A second statement, which could use the role regained, cannot follow in the same text.
    with pytest.raises(QueryFailed, match="multiple commands"):
        execute_unchecked(f"RESET ROLE; COPY (SELECT 1) TO '{server_path}'", seeded_postgres_url)
    assert not server_path.exists()


def test_postgres_reader_role_is_made_for_each_database(seeded_postgres_url):
    with engine_for(seeded_postgres_url) as engine:
        assert query.ensure_reader_role(engine) == query.READER_ROLE
        assert query.ensure_reader_role(engine) == query.READER_ROLE  # idempotent
        with engine.connect() as connection:
            role = connection.execute(
                sa.text(
                    "SELECT rolsuper, rolcanlogin, rolcreaterole FROM pg_roles WHERE rolname = :r"
                ),
                {"r": query.READER_ROLE},
            ).one()
            views = connection.execute(
                sa.text(
                    "SELECT bool_and(has_table_privilege(:r, c.oid, 'SELECT')) FROM pg_class c "
                    "WHERE c.relname LIKE 'v\\_%' AND c.relkind = 'v'"
                ),
                {"r": query.READER_ROLE},
            ).scalar_one()
    assert tuple(role) == (False, False, False)
    assert views


def test_postgres_reader_reads_only_filterdbs_relations(seeded_postgres_url):
    with engine_for(seeded_postgres_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE someone_elses (secret int)")
        connection.exec_driver_sql("INSERT INTO someone_elses VALUES (42)")
    with pytest.raises(QueryFailed, match="permission denied"):
        query.run_query("SELECT * FROM someone_elses", url=seeded_postgres_url)
    assert query.run_query("SELECT COUNT(*) AS n FROM v_models", url=seeded_postgres_url).height


@pytest.fixture
def analyst_url(seeded_postgres_url) -> Iterator[str]:
    """URL of a login that is not a superuser and may write the tables (roles are cluster-wide)."""
    name = f"filterdb_test_analyst_{uuid.uuid4().hex[:12]}"
    with engine_for(seeded_postgres_url) as engine:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
            connection.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
        yield sa.make_url(seeded_postgres_url).set(username=name).render_as_string(False)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {name}")
            connection.exec_driver_sql(f"DROP ROLE {name}")


def test_postgres_login_without_superuser_runs_as_itself_read_only(analyst_url):
    user = sa.make_url(analyst_url).username
    assert run_query("SELECT current_user AS u", url=analyst_url)["u"][0] == user
    with pytest.raises(QueryFailed, match="read-only transaction"):
        execute_unchecked("DELETE FROM model", analyst_url)
    assert state(analyst_url)[1] == MODEL_NAMES


def test_postgres_login_with_server_file_rights_is_refused(seeded_postgres_url, analyst_url):
    user = sa.make_url(analyst_url).username
    with engine_for(seeded_postgres_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql(f"GRANT pg_read_server_files TO {user}")
    with pytest.raises(QueryRefused) as refused:
        run_query("SELECT 1", url=analyst_url)
    assert "pg_read_server_files" in assert_one_line(refused)


# --- Limits: result size, DuckDB memory, the CLI's options -------------------------------


def test_results_over_the_row_limit_are_refused_in_one_line(seeded_url):
    sql = "SELECT i FROM generate_series(1, 50) AS t(i)"
    assert run_query(sql, url=seeded_url, max_rows=50).height == 50
    with pytest.raises(QueryFailed) as failed:
        run_query(sql, url=seeded_url, max_rows=49)
    message = assert_one_line(failed)
    assert "more than 49 rows" in message and "--max-rows" in message


def test_results_over_the_byte_limit_are_refused_in_one_line(seeded_url):
    sql = "SELECT repeat('x', 1000) AS s FROM generate_series(1, 100) AS t(i)"
    assert run_query(sql, url=seeded_url, max_bytes=1_000_000).height == 100
    with pytest.raises(QueryFailed) as failed:
        run_query(sql, url=seeded_url, max_bytes=50_000)
    assert "--max-bytes" in assert_one_line(failed)


def test_a_write_result_is_limited_too(seeded_url):
    with pytest.raises(QueryFailed, match="more than 1 rows"):
        run_query("SELECT name FROM model", url=seeded_url, write=True, max_rows=1)


def test_duckdb_memory_limit_fails_the_query_instead_of_spilling(seeded_duckdb_url):
    path = Path(sa.make_url(seeded_duckdb_url).database)
    sort = "SELECT count(*) FROM (SELECT md5(i::VARCHAR) s FROM range(3000000) t(i) ORDER BY s)"
    with pytest.raises(QueryFailed) as failed:
        run_query(sort, url=seeded_duckdb_url, memory_limit="60MB")
    message = assert_one_line(failed)
    assert "Out of Memory" in message and "--memory-limit" in message
    spill = path.with_name(path.name + ".tmp")
    assert not spill.exists() or not any(spill.iterdir())
    # Control: the same query fits in the default limit (and in 60MB when it may spill).
    assert run_query(sort, url=seeded_duckdb_url).item() == 3000000


def test_cli_query_takes_the_limits(seeded_duckdb_url):
    from typer.testing import CliRunner

    from filterdb.cli.main import app

    runner = CliRunner()
    base = ["--db", seeded_duckdb_url, "query"]
    result = runner.invoke(app, [*base, "SELECT * FROM range(10)", "--max-rows", "5"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: the result has more than 5 rows; add a LIMIT or a WHERE, or raise --max-rows"
    ]
    result = runner.invoke(app, [*base, LONG_QUERIES["duckdb"], "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "cancelled after 0.5 s" in result.output
    result = runner.invoke(app, [*base, "SELEC 1"])
    assert result.exit_code == 1 and "syntax error" in result.output
    assert "--write" not in result.output
    ok = runner.invoke(app, [*base, "SELECT 41 + 1 AS x", "--format", "csv", "--max-rows", "1"])
    assert ok.exit_code == 0 and ok.output.split() == ["x", "42"]
