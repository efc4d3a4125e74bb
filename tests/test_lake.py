"""The Parquet lake: layout, bits, files cut at layers, incremental re-export, S3 on loopback.

The oracle is the checkpoints themselves (their 3x3 weights reshaped to (n, 9)), the
warehouse's own rows, and the files' bytes before and after a re-export.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from test_cli_foundation import assert_one_line_error
from test_export import bits, checkpoint_filters, store, stored_rows
from test_metrics_cache import trained_state_dict
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.errors import QueryFailed
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.lake.layout import FACT_SCHEMA, LakeError, read_layers
from filterdb.lake.query import query_lake
from filterdb.lake.write import sync_lake
from filterdb.metrics.registry import METRICS
from filterdb.warehouse.database import engine_for
from filterdb.warehouse.write import delete_model

runner = CliRunner()
WEIGHTS = [f"w{i}" for i in range(9)]


def lake_filters(root: Path | str, filesystem: pafs.FileSystem | None = None) -> np.ndarray:
    """Every fact row of a lake as (n, 9) float32, in (model, layer, filter) order."""
    dataset = ds.dataset(
        f"{root}/filters", filesystem=filesystem, format="parquet", partitioning="hive"
    )
    table = dataset.to_table().sort_by(
        [("model_id", "ascending"), ("layer_id", "ascending"), ("filter_index", "ascending")]
    )
    return np.column_stack([table[name].to_numpy() for name in WEIGHTS])


def file_state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Each file's bytes, inode and modification time: what "untouched" means."""
    return {
        str(path.relative_to(root)): (
            path.read_bytes(),
            path.stat().st_ino,
            path.stat().st_mtime_ns,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_lake_layout_and_its_bits(db_url, tmp_path):
    models = store(db_url, tmp_path)
    out = tmp_path / "lake"
    result = runner.invoke(
        app, ["--db", db_url, "export", "--format", "parquet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    manifest = json.loads((out / "_filterdb.json").read_text())
    stored = stored_rows(
        db_url,
        "SELECT model_id, model_name AS name, checkpoint_sha256, n_filters FROM v_models "
        "ORDER BY model_id",
    )
    assert manifest["filterdb_version"] and manifest["schema_revision"]
    assert manifest["metric_versions"] == {name: m.version for name, m in METRICS.items()}
    for row in stored.iter_rows(named=True):
        entry = manifest["models"][str(row["model_id"])]
        assert (entry["name"], entry["checkpoint_sha256"]) == (
            row["name"],
            row["checkpoint_sha256"],
        )
        assert entry["rows"] == row["n_filters"]
        assert [f["path"] for f in entry["files"]] == [
            f"filters/model_id={row['model_id']}/part-0.parquet"
        ]
    assert sorted(p.name for p in out.iterdir()) == [
        "_filterdb.json",
        "filters",
        "layer_metrics.parquet",
        "layers.parquet",
        "models.parquet",
    ]
    assert pq.read_table(out / "models.parquet")["model_name"].to_pylist() == [
        "normal-a",
        "robust-a",
    ]
    assert pq.read_table(out / "layers.parquet").num_rows == 6

    expected = np.concatenate([checkpoint_filters(state) for state in models.values()])
    assert np.array_equal(bits(lake_filters(out)), bits(expected))
    for path in (out / "filters").rglob("*.parquet"):
        file = pq.ParquetFile(path)
        assert file.schema_arrow == FACT_SCHEMA
        table = file.read()
        keys = np.column_stack([table["layer_id"].to_numpy(), table["filter_index"].to_numpy()])
        assert np.array_equal(keys, keys[np.lexsort((keys[:, 1], keys[:, 0]))])
        column = {
            c.path_in_schema: c for c in (file.metadata.row_group(0).column(i) for i in range(13))
        }
        assert column["w0"].compression == "ZSTD"
        assert "BYTE_STREAM_SPLIT" in column["w0"].encodings
        assert "BYTE_STREAM_SPLIT" not in column["layer_id"].encodings


def test_a_large_model_is_cut_at_layer_boundaries(duckdb_url, tmp_path):
    store(duckdb_url, tmp_path)
    out = tmp_path / "lake"
    # Layers of 24, 24 and 72 filters: a file closes once adding the next layer passes 30.
    result = sync_lake(url=duckdb_url, lake=out, file_rows=30)
    layers = stored_rows(duckdb_url, "SELECT layer_id, model_id, n_filters FROM v_layers")
    for key, entry in result.manifest["models"].items():
        files = entry["files"]
        assert len(files) == 3
        seen = []
        for file in files:
            table = pq.read_table(out / file["path"])
            ids = sorted(set(table["layer_id"].to_pylist()))
            assert (ids[0], ids[-1]) == (file["min_layer_id"], file["max_layer_id"])
            seen += ids
        model_layers = layers.filter(layers["model_id"] == int(key))
        assert seen == sorted(model_layers["layer_id"].to_list())  # each layer in one file
        layer_ids = model_layers["layer_id"].to_list()
        shapes = list(zip(layer_ids, model_layers["n_filters"].to_list(), strict=True))
        first = files[0]
        got = read_layers(
            str(out), first["path"], [s for s in shapes if s[0] == first["min_layer_id"]]
        )
        assert set(got) == {first["min_layer_id"]}
    with pytest.raises(LakeError, match="export the lake again"):
        read_layers(str(out), first["path"], [(first["min_layer_id"], 1)])


def test_a_re_export_writes_only_what_changed(db_url, tmp_path):
    store(db_url, tmp_path)
    out = tmp_path / "lake"
    sync_lake(url=db_url, lake=out)
    before = file_state(out / "filters")
    again = sync_lake(url=db_url, lake=out)
    assert (again.written, sorted(again.kept)) == ([], ["normal-a", "robust-a"])
    assert file_state(out / "filters") == before

    ids = stored_rows(db_url, "SELECT model_id, name FROM model ORDER BY name")
    old_robust = ids.filter(ids["name"] == "robust-a")["model_id"].item()
    normal = ids.filter(ids["name"] == "normal-a")["model_id"].item()
    state = trained_state_dict(7)
    torch.save(state, tmp_path / "robust-a.pt")
    ingest(
        checkpoint_candidate(tmp_path / "robust-a.pt", name="robust-a"),
        url=db_url,
        device="cpu",
        force=True,
    )
    result = sync_lake(url=db_url, lake=out)
    assert (result.written, result.kept) == (["robust-a"], ["normal-a"])
    after = file_state(out / "filters")
    normal_files = {k: v for k, v in before.items() if k.startswith(f"model_id={normal}/")}
    assert normal_files and all(after[k] == v for k, v in normal_files.items())  # byte for byte
    assert not (out / "filters" / f"model_id={old_robust}").exists()
    new_robust = stored_rows(db_url, "SELECT model_id FROM model WHERE name = 'robust-a'").item()
    got = lake_filters(out)
    expected = np.concatenate(
        [checkpoint_filters(trained_state_dict(0)), checkpoint_filters(state)]
    )
    assert np.array_equal(bits(got), bits(expected))
    assert sorted(os.listdir(out / "filters")) == sorted(
        [f"model_id={normal}", f"model_id={new_robust}"]
    )
    assert not (out / "_staging").exists()

    with engine_for(db_url) as engine, engine.begin() as connection:
        delete_model(connection, normal)
    removed = sync_lake(url=db_url, lake=out)
    assert removed.removed == ["normal-a"] and removed.written == []
    assert os.listdir(out / "filters") == [f"model_id={new_robust}"]
    assert pq.read_table(out / "models.parquet")["model_name"].to_pylist() == ["robust-a"]


def test_a_directory_that_is_not_a_lake_is_refused(duckdb_url, tmp_path):
    store(duckdb_url, tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(LakeError, match="not a filterdb Parquet lake"):
        sync_lake(url=duckdb_url, lake=folder)
    assert os.listdir(folder) == ["notes.txt"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1, ended by its id afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        filesystem = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        filesystem.create_dir("lake-bucket")
        yield port, filesystem
    finally:
        server.kill()
        server.wait()


def test_the_lake_on_an_s3_server(duckdb_url, tmp_path, s3_server):
    port, filesystem = s3_server
    models = store(duckdb_url, tmp_path)
    url = f"s3://lake-bucket/cnn?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    result = runner.invoke(app, ["--db", duckdb_url, "export", "--format", "parquet", "--out", url])
    assert result.exit_code == 0, result.output
    names = sorted(
        info.path
        for info in filesystem.get_file_info(pafs.FileSelector("lake-bucket/cnn", recursive=True))
        if info.is_file
    )
    assert "lake-bucket/cnn/_filterdb.json" in names
    assert not any("_staging" in name for name in names)
    expected = np.concatenate([checkpoint_filters(state) for state in models.values()])
    assert np.array_equal(bits(lake_filters("lake-bucket/cnn", filesystem)), bits(expected))
    assert sync_lake(url=duckdb_url, lake=url).written == []


def test_query_lake_answers_the_views_and_refuses_what_query_refuses(
    duckdb_url, tmp_path, monkeypatch
):
    store(duckdb_url, tmp_path)
    out = tmp_path / "lake"
    sync_lake(url=duckdb_url, lake=out)

    def lake_query(*args: str):
        return runner.invoke(app, ["query", "--lake", str(out), "--format", "json", *args])

    for view, keys in (
        ("v_models", "model_id"),
        ("v_layers", "layer_id"),
        ("v_layer_metrics", "layer_id"),
        ("v_filters", "layer_id, filter_index"),
    ):
        sql = f"SELECT * FROM {view} ORDER BY {keys}"
        got = query_lake(sql, lake=out)
        expected = stored_rows(duckdb_url, sql)
        assert got.columns == expected.columns, view
        assert got.height == expected.height > 0, view
        for column in expected.columns:
            if column in WEIGHTS:
                assert np.array_equal(bits(got[column].to_numpy()), bits(expected[column]))
            elif column != "computed_at":
                assert got[column].to_list() == expected[column].to_list(), (view, column)
    result = lake_query("SELECT COUNT(*) AS n FROM v_filters")
    assert result.exit_code == 0 and json.loads(result.output) == [{"n": 240}]

    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for sql, fragment in (
        ("DELETE FROM v_models", "not a read-only statement"),
        (f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'", "not a read-only statement"),
        ("ATTACH ':memory:' AS other", "not a read-only statement"),
        ("SELECT 1; SELECT 2", "statement"),
        (f"SELECT * FROM read_csv('{secret}')", "disabled by configuration"),
        (f"SELECT * FROM '{out / 'models.parquet'}'", "disabled by configuration"),
    ):
        assert_one_line_error(lake_query(sql), fragment)
    assert_one_line_error(lake_query("SELECT 1", "--write"), "a lake is read-only")
    assert not (tmp_path / "x.csv").exists()

    # The engine's guard alone, the statement check switched off.
    monkeypatch.setattr("filterdb.lake.query.check_read_only", lambda sql, backend: None)
    for sql in (f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'", "SET enable_external_access = true"):
        with pytest.raises(QueryFailed):
            query_lake(sql, lake=out)
    assert not (tmp_path / "x.csv").exists()
