"""Migrations produce exactly the models' schema, on both backends, and go down cleanly."""

from __future__ import annotations

import hashlib

import duckdb
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from filterdb.errors import DatabaseError
from filterdb.migrations import views_0001
from filterdb.warehouse import migrate, schema
from filterdb.warehouse.database import backend_name, engine_for
from filterdb.warehouse.views import VIEWS

# How DuckDB's catalog names the types SQLAlchemy asks for.
DUCKDB_TYPE_NAMES = {
    "DOUBLE PRECISION": "DOUBLE",
    "REAL": "FLOAT",
    "TEXT": "VARCHAR",
    "TIMESTAMP WITHOUT TIME ZONE": "TIMESTAMP",
}


def duckdb_catalog(connection: sa.Connection) -> dict[str, set]:
    def rows(sql: str) -> set:
        return {
            tuple(tuple(v) if isinstance(v, list) else v for v in row)
            for row in connection.exec_driver_sql(sql)
        }

    return {
        "columns": rows(
            "SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE NOT internal AND table_name NOT IN (SELECT view_name FROM duckdb_views()) "
            "AND table_name <> 'alembic_version'"
        ),
        "constraints": rows(
            "SELECT table_name, constraint_type, constraint_column_names "
            "FROM duckdb_constraints() WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
            "AND table_name <> 'alembic_version'"
        ),
        "sequences": rows("SELECT sequence_name FROM duckdb_sequences()"),
        "views": rows("SELECT view_name FROM duckdb_views() WHERE NOT internal"),
    }


def expected_duckdb_catalog(dialect: sa.Dialect) -> dict[str, set]:
    columns, constraints = set(), set()
    for table in schema.metadata.tables.values():
        for column in table.columns:
            type_name = column.type.compile(dialect=dialect).split("(")[0]
            columns.add(
                (
                    table.name,
                    column.name,
                    DUCKDB_TYPE_NAMES.get(type_name, type_name),
                    column.nullable and not column.primary_key,
                )
            )
        for constraint in table.constraints:
            kind = {
                sa.PrimaryKeyConstraint: "PRIMARY KEY",
                sa.UniqueConstraint: "UNIQUE",
            }.get(type(constraint))
            if kind and constraint.columns:  # the fact table has an empty primary key
                constraints.add((table.name, kind, tuple(c.name for c in constraint.columns)))
    return {
        "columns": columns,
        "constraints": constraints,
        "sequences": {(s,) for s in schema.metadata._sequences},
        "views": {(view.name,) for view in VIEWS},
    }


def test_upgrade_head_gives_exactly_the_models_schema(db_url):
    with engine_for(db_url) as engine, engine.connect() as connection:
        if backend_name(engine) == "postgresql":
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, schema.metadata) == []
        else:
            # duckdb-engine's reflection is broken (PLATFORM.md): compare the catalog.
            found = duckdb_catalog(connection)
            found["columns"] = {
                (t, c, d, n == "YES" if isinstance(n, str) else n)
                for t, c, d, n in found["columns"]
            }
            assert found == expected_duckdb_catalog(engine.dialect)


def test_every_view_returns_its_documented_columns(db_url):
    with engine_for(db_url) as engine, engine.connect() as connection:
        for view in VIEWS:
            result = connection.exec_driver_sql(f"SELECT * FROM {view.name}")
            assert list(result.keys()) == list(view.columns), view.name


def test_downgrade_to_base_leaves_nothing_and_upgrade_works_again(db_url):
    migrate.downgrade("base", url=db_url)
    with engine_for(db_url) as engine, engine.connect() as connection:
        if backend_name(engine) == "postgresql":
            leftovers = connection.exec_driver_sql(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' "
                "AND relname <> ALL (ARRAY['alembic_version', 'alembic_version_pkc'])"
            ).fetchall()
        else:
            catalog = duckdb_catalog(connection)
            leftovers = [*catalog["columns"], *catalog["sequences"], *catalog["views"]]
    assert leftovers == []
    assert migrate.upgrade(url=db_url) == migrate.head_revision()


@pytest.mark.parametrize("revision", [r.revision for r in migrate.history()])
def test_stairway_up_down_up(empty_db_url, revision):
    down_to = next(r.down_revision for r in migrate.history() if r.revision == revision)
    assert migrate.upgrade(revision, url=empty_db_url) == revision
    assert migrate.downgrade(down_to or "base", url=empty_db_url) == down_to
    assert migrate.upgrade(revision, url=empty_db_url) == revision


def test_rows_survive_an_upgrade(empty_db_url):
    migrate.upgrade("0001", url=empty_db_url)
    with engine_for(empty_db_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO model (name, source, checkpoint_sha256, max_conv_depth, ingested_at) "
            "VALUES ('kept', 'checkpoint', 'abc', 0, TIMESTAMP '2026-01-01 00:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO training (model_id, training_type, threat_model, clean_acc, robust_acc) "
            "SELECT model_id, 'adversarial', 'Linf', 89.69, 59.53 FROM model"
        )
    migrate.upgrade(url=empty_db_url)
    with engine_for(empty_db_url) as engine, engine.connect() as connection:
        names = connection.exec_driver_sql("SELECT name FROM model").scalars().all()
        training = connection.exec_driver_sql(
            "SELECT training_type, threat_model, clean_acc, robust_acc, corruptions_acc "
            "FROM training"
        ).all()
        shown = connection.exec_driver_sql(
            "SELECT model_name, robust_acc, corruptions_acc FROM v_models"
        ).all()
    assert names == ["kept"]
    assert [tuple(row) for row in training] == [("adversarial", "Linf", 89.69, 59.53, None)]
    assert [tuple(row) for row in shown] == [("kept", 59.53, None)]


def test_models_stored_before_0003_get_the_form_their_source_gave(empty_db_url):
    migrate.upgrade("0002", url=empty_db_url)
    with engine_for(empty_db_url) as engine, engine.begin() as connection:
        for name, source in (("a", "checkpoint"), ("b", "onnx"), ("c", "robustbench")):
            connection.exec_driver_sql(
                "INSERT INTO model (name, source, checkpoint_sha256, max_conv_depth, "
                f"ingested_at) VALUES ('{name}', '{source}', 'abc', 0, "
                "TIMESTAMP '2026-01-01 00:00:00')"
            )
    migrate.upgrade(url=empty_db_url)
    with engine_for(empty_db_url) as engine, engine.connect() as connection:
        forms = connection.exec_driver_sql(
            "SELECT model_name, weights_form FROM v_models ORDER BY model_name"
        ).all()
    assert [tuple(row) for row in forms] == [("a", "raw"), ("b", "as_exported"), ("c", "raw")]


def test_revision_0001_keeps_the_views_it_shipped(empty_db_url):
    # Going up to 0001, and back down to it, gives the frozen views, not the current ones.
    def assert_frozen_views() -> None:
        with engine_for(empty_db_url) as engine, engine.connect() as connection:
            for view in views_0001.VIEWS:
                result = connection.exec_driver_sql(f"SELECT * FROM {view.name}")
                assert list(result.keys()) == list(view.columns), view.name

    migrate.upgrade("0001", url=empty_db_url)
    assert_frozen_views()
    migrate.upgrade(url=empty_db_url)
    assert migrate.downgrade("0001", url=empty_db_url) == "0001"
    assert_frozen_views()


def test_a_fresh_database_has_no_revision(empty_db_url):
    if backend_name(empty_db_url) == "duckdb":
        duckdb.connect(empty_db_url.removeprefix("duckdb:///")).close()  # an empty file
    assert migrate.current_revision(url=empty_db_url) is None


def test_only_upgrades_create_a_duckdb_file(tmp_path):
    url = f"duckdb:///{tmp_path / 'typo.duckdb'}"
    with pytest.raises(DatabaseError, match="no database at .*filterdb init"):
        migrate.current_revision(url=url)
    with pytest.raises(DatabaseError, match="no database at"):
        migrate.downgrade("base", url=url)
    assert not (tmp_path / "typo.duckdb").exists()
    assert migrate.upgrade(url=url) == migrate.head_revision()


def test_an_unknown_revision_is_one_line(db_url):
    with pytest.raises(DatabaseError, match="Can't locate revision .*filterdb db history"):
        migrate.upgrade("bogus", url=db_url)


# --- every revision's views are frozen -----------------------------------------------------

# sha256 of the views each revision creates (name and SQL, in creation order). A change of
# any revision's view SQL fails here: change the views in a new revision instead.
FROZEN_VIEW_HASHES = {
    "0001": "eb587a6996635d16dcdc9fcd178cd862cc9f1eb4829853d63933db3485d15d74",
    "0002": "6702bab7b7268ff946d9a0ff653c6c72f76ad9936c9f6dd1f05ea6f94a56b29e",
    "0003": "9627ffa343721d02f037d4070f7121aea746a4e163caf3649de109ae22b4c781",
    "0004": "055267300fa8ff024c2f8991c1c86ac8f76120e38c96123dfeb74d2866cb2304",
    # 0005 (model_loading) leaves the views as 0004 created them.
    "0005": "055267300fa8ff024c2f8991c1c86ac8f76120e38c96123dfeb74d2866cb2304",
}


def views_hash(views) -> str:
    digest = hashlib.sha256()
    for view in views:
        digest.update(f"{view.name}\0{view.sql}\0".encode())
    return digest.hexdigest()


def revision_modules() -> dict[str, object]:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    return {script.revision: script.module for script in scripts.walk_revisions()}


def test_every_revision_creates_its_own_frozen_views():
    modules = revision_modules()
    assert set(modules) == set(FROZEN_VIEW_HASHES), "pin the views hash of the new revision"
    for revision, module in modules.items():
        assert views_hash(module.CREATED_VIEWS) == FROZEN_VIEW_HASHES[revision], revision
        # No revision builds the live catalogue, which moves on after it.
        assert module.CREATED_VIEWS is not VIEWS


def test_the_head_revision_creates_the_live_catalogue():
    head = revision_modules()[migrate.head_revision()]
    frozen = [(v.name, v.sql, list(v.columns)) for v in head.CREATED_VIEWS]
    assert frozen == [(v.name, v.sql, list(v.columns)) for v in VIEWS], (
        "filterdb/warehouse/views.py changed without a new revision that creates it"
    )
