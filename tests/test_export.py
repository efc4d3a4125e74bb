"""Export: the CNN Filter DB HDF5 layout (SPEC section 7a) and Parquet by model, round trips.

The oracle is the checkpoints themselves: each layer's weight reshaped to (n, 9), out-channel
major, in state_dict order (what was ingested), and the ``v_filters`` rows.
"""

from __future__ import annotations

import duckdb
import h5py
import numpy as np
import pandas as pd
import polars as pl
import pytest
import sqlalchemy as sa
import torch
from oracles import assert_one_line_error, bits, checkpoint_filters, trained_state_dict
from typer.testing import CliRunner

import filterdb
from filterdb.cli.main import app
from filterdb.errors import FilterdbError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.reports.export import export_hdf5, export_parquet
from filterdb.warehouse import migrate
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.records import TrainingInfo

runner = CliRunner()
WEIGHTS = [f"w{i}" for i in range(9)]
TRAINING = {
    "normal-a": TrainingInfo(training_type="normal", training_dataset="toy"),
    "robust-a": TrainingInfo(
        training_type="adversarial",
        training_dataset="cifar10",
        clean_acc=80.5,
        robust_acc=50.25,
        extra_data=True,
        paper_url="https://example.org/paper",
    ),
}


def store(url: str, tmp_path) -> dict[str, dict[str, torch.Tensor]]:
    """Ingest two tiny trained models (normal, then robust); return their state dicts."""
    models = {}
    for seed, (name, training) in enumerate(TRAINING.items()):
        state = trained_state_dict(seed)
        torch.save(state, tmp_path / f"{name}.pt")
        candidate = checkpoint_candidate(tmp_path / f"{name}.pt", name=name, training=training)
        ingest(candidate, url=url, device="cpu")
        models[name] = state
    return models


@pytest.fixture
def stored(db_url, tmp_path) -> dict[str, dict[str, torch.Tensor]]:
    return store(db_url, tmp_path)


@pytest.fixture(scope="module")
def duckdb_models(tmp_path_factory) -> tuple[str, dict[str, dict[str, torch.Tensor]]]:
    """One DuckDB file with the two models for the tests that only read it (exports)."""
    folder = tmp_path_factory.mktemp("stored")
    url = f"duckdb:///{folder / 'test.duckdb'}"
    migrate.upgrade(url=url)
    return url, store(url, folder)


def stored_rows(url: str, sql: str) -> pl.DataFrame:
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(connection, sql)


def test_hdf5_round_trip_in_the_cnn_filter_db_layout(db_url, stored, tmp_path):
    out = tmp_path / "dataset.h5"
    result = export_hdf5(url=db_url, out=out)
    expected = np.concatenate([checkpoint_filters(state) for state in stored.values()])
    assert (result.path, result.n_models, result.n_layers) == (out, 2, 6)
    assert result.n_filters == len(expected)

    with h5py.File(out, "r") as file:
        filters = file["filters"][...].reshape(-1, 9)
        assert file["filters"].dtype == np.float32
        assert isinstance(file.get("filter", getlink=True), h5py.HardLink)
        link, target = (h5py.h5o.get_info(file[name].id) for name in ("filter", "filters"))
        assert (link.fileno, link.addr) == (target.fileno, target.addr)  # one object
        assert target.rc == 2  # reached by two hard links
        attributes = dict(file.attrs)
    assert np.array_equal(bits(filters), bits(expected))
    in_filter_order = stored_rows(
        db_url,
        f"SELECT {', '.join(WEIGHTS)} FROM v_filters f JOIN v_layers l USING (layer_id) "
        "ORDER BY l.model_id, l.conv_index, f.filter_index",
    )
    assert np.array_equal(bits(filters), bits(in_filter_order.to_numpy()))
    assert attributes["filterdb_version"] == filterdb.__version__
    assert attributes["depth_method"] == "key_order"
    assert attributes["source_database"] == sa.make_url(db_url).render_as_string(hide_password=True)

    meta = pd.read_hdf(out, "meta")
    assert list(meta.index.names) == ["model_id", "conv_depth", "conv_depth_norm", "layer_id"]
    layers = stored_rows(db_url, "SELECT * FROM v_layers ORDER BY model_id, conv_index")
    assert meta.index.get_level_values("layer_id").tolist() == layers["layer_id"].to_list()
    ranges = [tuple(map(int, text.split(":"))) for text in meta["filter_ids"]]
    starts, ends = zip(*ranges, strict=True)
    assert starts[0] == 0 and ends[-1] == len(expected) - 1
    assert list(starts[1:]) == [end + 1 for end in ends[:-1]]  # contiguous, no gaps
    assert [end - start + 1 for start, end in ranges] == layers["n_filters"].to_list()
    assert meta["in_channels"].tolist() == [3, 2, 12, 3, 2, 12]  # C_in / groups
    assert meta["Robust"].dtype == bool
    assert meta["Task"].notna().all()
    robust = meta[meta["Robust"]].iloc[0]
    assert robust[["model", "Training-Dataset", "Visual Category"]].tolist() == [
        "robust-a",
        "cifar10",
        "natural",
    ]
    assert robust[["Clean Accuracy", "Robust Accuracy", "Pretraining-Dataset"]].tolist() == [
        80.5,
        50.25,
        1.0,
    ]
    normal = meta[~meta["Robust"]].iloc[0]
    assert normal[["Visual Category", "Clean Accuracy", "Pretraining-Dataset"]].isna().all()


def test_a_cnn_filter_db_notebook_snippet_runs_unchanged(duckdb_models, tmp_path):
    duckdb_url, stored_duckdb = duckdb_models
    dataset_path = tmp_path / "dataset.h5"
    export_hdf5(url=duckdb_url, out=dataset_path)
    # As in the robustness paper's pca.ipynb:
    with h5py.File(dataset_path, "r") as f:
        dX = f["filters"][:].reshape(-1, 9)
    df_meta = pd.read_hdf(dataset_path, "meta")
    df_meta["filter_ids"] = df_meta["filter_ids"].apply(
        lambda s: list(np.arange(int(s.split(":")[0]), 1 + int(s.split(":")[1])))
    )
    df_meta.Robust = df_meta.Robust.apply(bool)
    robust_ids = list(np.hstack(df_meta[df_meta.Robust].filter_ids))
    normal_ids = list(np.hstack(df_meta[df_meta.Name == "normal-a"].filter_ids))
    assert np.array_equal(bits(dX[robust_ids]), bits(checkpoint_filters(stored_duckdb["robust-a"])))
    assert np.array_equal(bits(dX[normal_ids]), bits(checkpoint_filters(stored_duckdb["normal-a"])))


def test_parquet_round_trip_read_by_duckdb_and_polars(db_url, stored, tmp_path):
    out = tmp_path / "filters"
    result = export_parquet(url=db_url, out=out)
    assert (result.n_models, result.n_layers) == (2, 6)
    model_ids = stored_rows(db_url, "SELECT model_id FROM v_models")["model_id"].to_list()
    folders = sorted((out / "filters").iterdir())
    assert [p.name for p in folders] == sorted(f"model_id={i}" for i in model_ids)
    assert all([p.name for p in folder.iterdir()] == ["part-0.parquet"] for folder in folders)

    keys = ["layer_id", "filter_index"]
    facts = ["model_id", *keys, "out_channel", "in_channel", *WEIGHTS]
    expected = stored_rows(db_url, f"SELECT {', '.join(facts)} FROM v_filters").sort(keys)
    pattern = str(out / "filters" / "**" / "*.parquet")
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{pattern}', hive_partitioning=true)").pl()
    by_polars = pl.scan_parquet(pattern, hive_partitioning=True).collect()
    for got in (by_duckdb.sort(keys), by_polars.sort(keys)):
        assert sorted(got.columns) == sorted(facts)
        assert got.height == expected.height == result.n_filters
        for column in expected.columns:
            if column in WEIGHTS:
                assert got[column].dtype == pl.Float32
                assert np.array_equal(bits(got[column].to_numpy()), bits(expected[column]))
            else:
                assert got[column].to_list() == expected[column].to_list(), column


def test_model_option_limits_both_exports(duckdb_models, tmp_path):
    duckdb_url, stored_duckdb = duckdb_models
    n_robust = len(checkpoint_filters(stored_duckdb["robust-a"]))
    for fmt, out in (("hdf5", tmp_path / "robust.h5"), ("parquet", tmp_path / "robust")):
        arguments = ["export", "--format", fmt, "--out", str(out), "--model", "robust-a"]
        result = runner.invoke(app, ["--db", duckdb_url, *arguments])
        assert result.exit_code == 0, result.output
        assert f"wrote {n_robust:,} filters of 3 layers (1 model) to {out}" in result.output
    meta = pd.read_hdf(tmp_path / "robust.h5", "meta")
    assert set(meta["model"]) == {"robust-a"} and meta["filter_ids"].iloc[0] == "0:23"
    with h5py.File(tmp_path / "robust.h5", "r") as file:
        assert np.array_equal(
            bits(file["filter"][...]), bits(checkpoint_filters(stored_duckdb["robust-a"]))
        )
    names = duckdb.sql(f"SELECT model_name FROM '{tmp_path / 'robust'}/models.parquet'")
    assert names.fetchall() == [("robust-a",)]


def test_cli_errors_are_one_line_and_leave_files_alone(duckdb_models, tmp_path):
    duckdb_url, _ = duckdb_models

    def export(*args: str):
        return runner.invoke(app, ["--db", duckdb_url, "export", *args])

    out = tmp_path / "dataset.h5"
    assert_one_line_error(
        export("--out", str(out), "--model", "nope"), "no stored model named nope"
    )
    assert not out.exists() and list(tmp_path.glob(".*partial")) == []

    out.write_bytes(b"keep me")
    assert_one_line_error(export("--out", str(out)), "exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert export("--out", str(out), "--overwrite").exit_code == 0
    assert len(pd.read_hdf(out, "meta")) == 6

    folder = tmp_path / "not-an-export"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert_one_line_error(
        export("--format", "parquet", "--out", str(folder), "--overwrite"),
        "not a filterdb Parquet lake",
    )
    assert (folder / "notes.txt").read_text() == "mine"
    assert_one_line_error(export("--out", str(tmp_path / "missing" / "x.h5")), "does not exist")


def test_parquet_export_adds_models_to_an_earlier_lake(duckdb_models, tmp_path):
    duckdb_url, _ = duckdb_models
    out = tmp_path / "filters"
    export_parquet(url=duckdb_url, out=out, models=["normal-a"])
    result = export_parquet(url=duckdb_url, out=out, models=["robust-a"])
    assert result.n_models == 2 and len(list((out / "filters").iterdir())) == 2
    names = duckdb.sql(f"SELECT model_name FROM '{out}/models.parquet' ORDER BY 1").fetchall()
    assert names == [("normal-a",), ("robust-a",)]


def test_nothing_to_export(duckdb_url, tmp_path):
    result = runner.invoke(app, ["--db", duckdb_url, "export", "--out", str(tmp_path / "e.h5")])
    assert_one_line_error(result, "nothing to export", "filterdb ingest")
    with pytest.raises(FilterdbError, match="nothing to export"):
        export_parquet(url=duckdb_url, out=tmp_path / "empty", models=[])
    assert list(tmp_path.iterdir()) == [tmp_path / "test.duckdb"]
