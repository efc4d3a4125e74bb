"""RobustBench end to end through the CLI: cache layout in, rows and leaderboard data out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.ingest.sources import robustbench as zoo
from filterdb.ingest.sources import robustbench_index
from filterdb.warehouse import check
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()
ENTRY = ("cifar10", "Linf", "Sehwag2021Proxy_R18")  # a ResNet-18 zoo entry


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The entry saved with seeded weights where robustbench's loader looks for it."""
    directory = tmp_path_factory.mktemp("models")
    dataset, threat, name = ENTRY
    torch.manual_seed(3)
    model = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat)
    path = directory / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return directory


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ingest_zoo(url: str, *options: object):
    """``filterdb --db URL ingest robustbench OPTIONS...``"""
    return invoke("--db", url, "ingest", "robustbench", *options)


def test_ingest_a_zoo_entry_with_its_leaderboard_data(db_url, model_dir, shared_data):
    dataset, threat, name = ENTRY
    model_info = shared_data / "robustbench_model_info"
    result = ingest_zoo(
        db_url,
        "--dataset",
        dataset,
        "--threat-model",
        threat,
        "--model",
        name,
        "--model-dir",
        model_dir,
        "--model-info",
        model_info,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert f"{dataset}/{threat}/{name}: ingested" in result.output

    leaderboard = json.loads((model_info / dataset / threat / f"{name}.json").read_text())
    with engine_for(db_url) as engine, engine.connect() as connection:
        row = read_frame(connection, "SELECT * FROM v_models").row(0, named=True)
        layers = read_frame(connection, "SELECT * FROM v_layers ORDER BY conv_index")
    assert row["model_name"] == f"{dataset}/{threat}/{name}"
    assert (row["robust"], row["training_dataset"], row["threat_model"]) == (True, dataset, threat)
    assert row["clean_acc"] == float(leaderboard["clean_acc"])
    assert row["robust_acc"] == float(leaderboard.get("external") or leaderboard["autoattack_acc"])
    assert row["eps_text"] == leaderboard["eps"]
    assert set(layers["depth_method"]) == {"graph"}

    state = torch.load(model_dir / dataset / threat / f"{name}.pt")["state_dict"]
    first = layers.row(0, named=True)
    with engine_for(db_url) as engine, engine.connect() as connection:
        stored = read_frame(
            connection,
            "SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM v_filters "
            "WHERE layer_id = :layer ORDER BY filter_index",
            {"layer": first["layer_id"]},
        ).to_numpy()
    expected = state[f"{first['layer_name']}.weight"].reshape(-1, 9).numpy()
    assert stored.tobytes() == np.ascontiguousarray(expected).tobytes()
    assert check.check(url=db_url) == []


def test_all_lists_missing_checkpoints_and_stores_the_rest(duckdb_url, model_dir):
    dataset, threat, name = ENTRY
    result = ingest_zoo(
        duckdb_url,
        "--dataset",
        dataset,
        "--threat-model",
        threat,
        "--all",
        "--model-dir",
        model_dir,
        "-q",
    )
    assert result.exit_code == 1
    assert f"{dataset}/{threat}/{name}: ingested" in result.output
    missing = [line for line in result.output.splitlines() if line.startswith("missing: ")]
    assert len(missing) == len(robustbench_index.zoo_entries(dataset, threat)) - 1
    assert str(model_dir / dataset / threat / "Carmon2019Unlabeled.pt") in result.output

    status = invoke(
        "--db",
        duckdb_url,
        "leaderboard",
        "status",
        "--dataset",
        dataset,
        "--threat-model",
        threat,
        "--model-dir",
        model_dir,
    )
    assert status.exit_code == 0
    assert f"{len(missing)} checkpoint missing, 1 ingested" in status.output


def test_named_missing_checkpoint_is_one_line_with_the_path(duckdb_url, tmp_path):
    result = ingest_zoo(
        duckdb_url,
        "--dataset",
        "cifar10",
        "--model",
        "Carmon2019Unlabeled",
        "--model-dir",
        tmp_path,
        "-q",
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in lines[0]


def test_unknown_zoo_name_is_one_line(duckdb_url, tmp_path):
    result = ingest_zoo(
        duckdb_url, "--dataset", "cifar10", "--model", "NoSuchModel2099", "--model-dir", tmp_path
    )
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1


def test_leaderboard_sync_fills_models_ingested_without_it(duckdb_url, model_dir, shared_data):
    dataset, threat, name = ENTRY
    ingest_zoo(
        duckdb_url,
        "--dataset",
        dataset,
        "--threat-model",
        threat,
        "--model",
        name,
        "--model-dir",
        model_dir,
        "-q",
    )
    with engine_for(duckdb_url) as engine, engine.connect() as connection:
        before = read_frame(connection, "SELECT clean_acc FROM v_models")["clean_acc"][0]
    assert before is None
    result = invoke(
        "--db",
        duckdb_url,
        "leaderboard",
        "sync",
        "--model-info",
        shared_data / "robustbench_model_info",
    )
    assert result.exit_code == 0 and "updated 1 model\n" in result.output
    with engine_for(duckdb_url) as engine, engine.connect() as connection:
        after = read_frame(connection, "SELECT clean_acc, training_type FROM v_models").row(0)
    assert after[0] is not None and after[1] == "adversarial"


def test_leaderboard_sync_fills_a_folded_model_from_its_entry(duckdb_url, model_dir, shared_data):
    dataset, threat, name = ENTRY
    options = ["--dataset", dataset, "--threat-model", threat, "--model", name]
    ingested = ingest_zoo(duckdb_url, *options, "--model-dir", model_dir, "--fold-batchnorm", "-q")
    assert f"{dataset}/{threat}/{name}+bn_folded: ingested" in ingested.output
    result = invoke(
        "--db",
        duckdb_url,
        "leaderboard",
        "sync",
        "--model-info",
        shared_data / "robustbench_model_info",
    )
    assert result.exit_code == 0 and "updated 1 model\n" in result.output
    with engine_for(duckdb_url) as engine, engine.connect() as connection:
        row = read_frame(connection, "SELECT clean_acc, weights_form FROM v_models").row(0)
    assert row[0] is not None and row[1] == "bn_folded"
