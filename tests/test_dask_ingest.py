"""A manifest ingested on Dask: workers read and extract, the client writes, rows as local.

The oracle is a local ingest of the same manifest into a second database of the same
backend: every row of model, layer and filter (weights by their bits), ids included, but
for the ingest time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import fresh_postgres_database
from test_manifest import tiny_zoo, write_csv
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.ingest.manifest import ingest_manifest
from filterdb.warehouse import migrate
from filterdb.warehouse.database import engine_for

pytest.importorskip("distributed")
runner = CliRunner()


def rows(url: str) -> dict[str, list[tuple]]:
    """Every stored row of the model tables, floats by their bits, times left out."""
    tables = {
        "model": "SELECT * FROM model ORDER BY model_id",
        "layer": "SELECT * FROM layer ORDER BY layer_id",
        "filter": "SELECT * FROM filter ORDER BY layer_id, filter_index",
    }
    found = {}
    with engine_for(url) as engine, engine.connect() as connection:
        for table, sql in tables.items():
            result = connection.execute(sa.text(sql))
            keep = [i for i, c in enumerate(result.keys()) if c != "ingested_at"]
            found[table] = [
                tuple(v.hex() if isinstance(v, float) else v for v in (row[i] for i in keep))
                for row in result
            ]
    return found


@contextlib.contextmanager
def another_database(url: str, folder: Path):
    """An empty database at head on the same backend as ``url``."""
    if url.startswith("duckdb"):
        other = f"duckdb:///{folder / 'local.duckdb'}"
        migrate.upgrade(url=other)
        yield other
        return
    databases = fresh_postgres_database()
    other = next(databases)
    try:
        migrate.upgrade(url=other)
        yield other
    finally:
        databases.close()


def test_a_manifest_on_dask_stores_the_rows_of_a_local_ingest(db_url, tmp_path, cluster):
    _, engine = cluster
    manifest_rows = tiny_zoo(tmp_path / "zoo", 4)
    (tmp_path / "zoo" / "broken.pt").write_text("<html>not a checkpoint</html>")
    manifest_rows.insert(1, {"name": "broken", "path": "zoo/broken.pt"})  # fails on a worker
    manifest_rows.append({"name": "absent", "path": "zoo/absent.pt"})  # fails on the client
    # The first model's file again under another name: warned as at a local ingest.
    manifest_rows.append({"name": "alias", "path": manifest_rows[0]["path"]})
    manifest = write_csv(tmp_path / "models.csv", manifest_rows)
    events = []
    on_dask = ingest_manifest(
        manifest, url=db_url, device="cpu", engine=engine, on_progress=events.append
    )
    with another_database(db_url, tmp_path) as local_url:
        local = ingest_manifest(manifest, url=local_url, device="cpu", engine="local")
        expected = rows(local_url)
    assert rows(db_url) == expected
    assert len(expected["filter"]) == 5 * 96
    assert [(r.model_name, r.status, r.notes) for r in on_dask.results] == [
        (r.model_name, r.status, r.notes) for r in local.results
    ]
    alias = next(r for r in on_dask.results if r.model_name == "alias")
    assert any(note.startswith("warning: the same checkpoint") for note in alias.notes)
    assert [(name, str(error)) for name, error in on_dask.failures] == [
        (name, str(error)) for name, error in local.failures
    ]
    phases = {}
    for event in events:
        phases.setdefault(event.model_name, []).append(event.phase)
    # The phases of a local ingest (writing, then publishing), per model, on the client.
    assert list(dict.fromkeys(phases["zoo-0002"])) == [
        "hashing",
        "reading",
        "writing",
        "publishing",
        "done",
    ]
    assert phases["broken"][-1] == phases["absent"][-1] == "failed"
    # A rerun on the engine hashes on the workers and skips every stored model.
    result = runner.invoke(
        app, ["--db", db_url, "ingest", "manifest", str(manifest), "--engine", engine, "-q"]
    )
    assert result.exit_code == 1  # the two bad rows fail again
    assert "7 rows: 5 skipped, 2 failed" in result.stdout
    assert rows(db_url) == expected
