"""The CLI's foundation commands, and one-line errors for databases that cannot be used."""

from __future__ import annotations

import pytest
from oracles import assert_one_line_error
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.warehouse import migrate

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_init_then_current_reports_head(empty_db_url):
    result = invoke("--db", empty_db_url, "init")
    assert result.exit_code == 0, result.output
    head = migrate.head_revision()
    assert f"revision {head}" in result.output
    result = invoke("--db", empty_db_url, "db", "current")
    assert result.exit_code == 0
    assert result.output.strip() == f"{head} (head)"


def test_downgrade_base_then_upgrade_through_the_cli(empty_db_url):
    assert invoke("--db", empty_db_url, "init").exit_code == 0
    assert invoke("--db", empty_db_url, "db", "downgrade", "base").exit_code == 0
    assert "no filterdb schema" in invoke("--db", empty_db_url, "db", "current").output
    assert invoke("--db", empty_db_url, "db", "upgrade").exit_code == 0
    assert migrate.current_revision(url=empty_db_url) == migrate.head_revision()


def test_history_lists_every_revision():
    result = invoke("db", "history")
    assert result.exit_code == 0
    for revision in migrate.history():
        assert revision.revision in result.output


def test_init_creates_the_default_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FILTERDB_URL", raising=False)
    assert invoke("init").exit_code == 0
    assert (tmp_path / "filterdb.duckdb").is_file()
    assert migrate.current_revision(url="duckdb:///filterdb.duckdb") == migrate.head_revision()


def test_filterdb_url_environment_variable_is_used(tmp_path, monkeypatch):
    path = tmp_path / "from-env.duckdb"
    monkeypatch.setenv("FILTERDB_URL", f"duckdb:///{path}")
    assert invoke("init").exit_code == 0
    assert path.is_file()


def test_models_is_empty_on_a_new_database(db_url):
    result = invoke("--db", db_url, "models")
    assert result.exit_code == 0
    assert "no models stored yet" in result.output


def test_models_on_a_database_without_schema_says_run_init(empty_db_url):
    assert_one_line_error(invoke("--db", empty_db_url, "models"), "filterdb init")


def test_unreachable_server_is_one_line():
    result = invoke("--db", "postgresql+psycopg://postgres@127.0.0.1:1/nothing", "init")
    assert_one_line_error(result, "cannot reach", "start the server")


@pytest.mark.parametrize("url", ["not a url", "mysql://localhost/x"])
def test_malformed_or_unsupported_url_is_one_line(url):
    assert_one_line_error(invoke("--db", url, "init"), "duckdb:///PATH")


def test_locked_duckdb_file_is_one_line(duckdb_url, duckdb_lock_holder):
    holder = duckdb_lock_holder(duckdb_url)
    result = invoke("--db", duckdb_url, "models")
    assert_one_line_error(result, "locked by process", str(holder.pid), "retry")
    holder.kill()
    holder.wait()
    assert invoke("--db", duckdb_url, "models").exit_code == 0


def test_kept_open_holds_the_duckdb_file_for_its_block_only(duckdb_url):
    import subprocess
    import sys

    from filterdb.warehouse.database import engine_for, kept_open

    path = duckdb_url.removeprefix("duckdb:///")
    open_elsewhere = [sys.executable, "-c", f"import duckdb; duckdb.connect({path!r}).close()"]
    with kept_open(duckdb_url):
        # Engines opened inside share the held instance: writes of one are seen by the next.
        with engine_for(duckdb_url) as engine, engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE kept (x INTEGER)")
        with engine_for(duckdb_url) as engine, engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM kept").scalar() == 0
        # The idle connection keeps the file locked against other processes meanwhile.
        assert subprocess.run(open_elsewhere, capture_output=True).returncode != 0
    assert subprocess.run(open_elsewhere, capture_output=True).returncode == 0
