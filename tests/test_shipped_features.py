"""Shipped features through the CLI, each against an oracle outside filterdb.

ONNX ingest against ``onnx.numpy_helper``; ``--device``; five consistency rules, each with
one hand-made damage and its exact line; ``layers``, ``depth-profile``, ``query --format
markdown`` and ``query --write``; ``--arch timm:NAME``; leaderboard states and sync from a
URL (a local HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
import sqlalchemy as sa
import timm
import torch
from onnx import numpy_helper
from oracles import assert_one_line_error, bits, checkpoint_filters, trained_state_dict
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.ingest.sources import robustbench as zoo
from filterdb.ingest.sources import robustbench_index
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()
WEIGHTS = ", ".join(f"w{i}" for i in range(9))
ZOO_ENTRY = ("cifar10", "Linf", "Sehwag2021Proxy_R18")
MISSING_LAYER = 999_999


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def rows(url: str, sql: str) -> pl.DataFrame:
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(connection, sql)


def stored_weights(url: str, model: str) -> np.ndarray:
    """The model's v_filters weights in layer (conv_index), then filter order."""
    frame = rows(
        url,
        f"SELECT {WEIGHTS} FROM v_filters f JOIN v_layers l USING (layer_id) "
        f"WHERE l.model_name = '{model}' ORDER BY l.conv_index, f.filter_index",
    )
    return frame.to_numpy()


def ingest_checkpoint(url: str, path: Path, *options: object):
    return invoke("--db", url, "ingest", "checkpoint", path, "-q", "--device", "cpu", *options)


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = trained_state_dict(0)
    torch.save(state, tmp_path / "toy.pt")
    return tmp_path / "toy.pt", state


# --- ingest onnx --------------------------------------------------------------------------


def test_ingest_onnx_stores_the_initializers_bit_for_bit(db_url, tmp_path):
    torch.manual_seed(4)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1, groups=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 1),
    ).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 8, 8), path, dynamo=False)
    result = invoke("--db", db_url, "ingest", "onnx", path, "--name", "tiny", "-q")
    assert result.exit_code == 0, result.output
    assert "tiny: ingested, 2 layers" in result.output

    graph = onnx.load(path).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    weights = [initializers[node.input[1]] for node in graph.node if node.op_type == "Conv"]
    expected = np.concatenate([w.reshape(-1, 9) for w in weights if w.shape[-2:] == (3, 3)])
    assert len(expected) == 6 * 3 + 4 * 3
    assert np.array_equal(bits(stored_weights(db_url, "tiny")), bits(expected))
    layers = rows(db_url, "SELECT in_channels, groups, n_filters FROM v_layers ORDER BY conv_index")
    assert layers.rows() == [(3, 1, 18), (6, 2, 12)]


# --- --device -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_for_ingest_and_metrics(duckdb_url, checkpoint):
    path, _ = checkpoint
    message = "--device cuda asked for, but no CUDA device is available; use cpu"
    ingest = invoke("--db", duckdb_url, "ingest", "checkpoint", path, "-q", "--device", "cuda")
    assert_one_line_error(ingest, message)
    assert rows(duckdb_url, "SELECT COUNT(*) AS n FROM v_models")["n"].item() == 0
    assert ingest_checkpoint(duckdb_url, path).exit_code == 0
    metrics = invoke("--db", duckdb_url, "metrics", "-q", "--device", "cuda")
    assert_one_line_error(metrics, message)
    assert rows(duckdb_url, "SELECT COUNT(*) AS n FROM metric_cache")["n"].item() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_and_cpu_store_and_compute_bitwise_the_same(duckdb_url, checkpoint, tmp_path):
    path, state = checkpoint
    cuda_url = f"duckdb:///{tmp_path / 'cuda.duckdb'}"
    assert invoke("--db", cuda_url, "init").exit_code == 0
    for url, device in ((duckdb_url, "cpu"), (cuda_url, "cuda")):
        ingest = invoke("--db", url, "ingest", "checkpoint", path, "-q", "--device", device)
        assert ingest.exit_code == 0, ingest.output
        assert invoke("--db", url, "metrics", "-q", "--device", device).exit_code == 0
    cpu_rows, cuda_rows = (stored_weights(url, "toy") for url in (duckdb_url, cuda_url))
    assert np.array_equal(bits(cuda_rows), bits(cpu_rows))
    assert np.array_equal(bits(cpu_rows), bits(checkpoint_filters(state)))
    sql = "SELECT layer_id, metric, value, support FROM metric_cache ORDER BY layer_id, metric"
    cpu_metrics, cuda_metrics = rows(duckdb_url, sql), rows(cuda_url, sql)
    # Metrics are float64 reductions: the devices may order them differently.
    assert cuda_metrics["support"].to_list() == cpu_metrics["support"].to_list()
    np.testing.assert_allclose(cuda_metrics["value"], cpu_metrics["value"], rtol=1e-9)


# --- filterdb check: one damage per rule -----------------------------------------------------


def damage_sql(url: str) -> dict[str, tuple[list[str], str]]:
    """Per rule: SQL that breaks only it, and the exact line ``filterdb check`` prints."""
    layer = rows(url, "SELECT layer_id, model_id FROM v_layers ORDER BY conv_index").row(0)
    layer_id, model_id = layer
    columns = f"model_id, layer_id, filter_index, out_channel, in_channel, {WEIGHTS}"
    copied = f"model_id, {MISSING_LAYER}, filter_index, out_channel, in_channel, {WEIGHTS}"
    return {
        "filter rows of a missing layer": (
            [
                f"INSERT INTO filter ({columns}) SELECT {copied} FROM filter "
                f"WHERE layer_id = {layer_id} AND filter_index < 2"
            ],
            f"2 filter rows of model_id {model_id} point at missing layer_id {MISSING_LAYER}",
        ),
        "duplicate filter_index": (
            # Filter 1 takes filter 0's index and channels: counts and channels still agree.
            [
                "UPDATE filter SET filter_index = 0, out_channel = 0, in_channel = 0 "
                f"WHERE layer_id = {layer_id} AND filter_index = 1"
            ],
            f"filter 0 of layer_id {layer_id} is stored 2 times",
        ),
        "a model without layers": (
            [
                f"DELETE FROM filter WHERE model_id = {model_id}",
                f"DELETE FROM layer WHERE model_id = {model_id}",
            ],
            "model toy has no layers",
        ),
        "model/training mismatch": (
            [f"DELETE FROM training WHERE model_id = {model_id}"],
            "model toy: no training row",
        ),
        "orphan cached metrics": (
            [
                f"UPDATE metric_cache SET layer_id = {MISSING_LAYER} "
                f"WHERE layer_id = {layer_id} AND metric IN ('l1', 'l2')"
            ],
            f"2 cached metric values point at missing layer_id {MISSING_LAYER}",
        ),
    }


RULES = (
    "filter rows of a missing layer",
    "duplicate filter_index",
    "a model without layers",
    "model/training mismatch",
    "orphan cached metrics",
)


@pytest.mark.parametrize("rule", RULES)
def test_check_names_each_damage_in_one_exact_line(db_url, checkpoint, rule):
    path, _ = checkpoint
    assert ingest_checkpoint(db_url, path).exit_code == 0
    if rule == "orphan cached metrics":
        assert invoke("--db", db_url, "metrics", "-q", "--device", "cpu").exit_code == 0
    assert invoke("--db", db_url, "check").output.strip() == "consistent: every rule holds"
    statements, line = damage_sql(db_url)[rule]
    with engine_for(db_url) as engine, engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    result = invoke("--db", db_url, "check")
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"problem: {line}", "1 problem found"]


# --- layers, depth-profile, query ----------------------------------------------------------


def markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.strip().splitlines() if line.startswith("|")]
    assert set(lines[1].replace("|", "")) == {"-"}  # the header rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


@pytest.fixture
def wide_terminal(monkeypatch) -> None:
    """A terminal wide enough for every column: the tables below are read as tables (a
    narrower one prints each row as a record, tests/test_rough_edges.py)."""
    from filterdb.cli import output

    monkeypatch.setattr(output.console, "width", 400)


def test_layers_and_depth_profile_and_markdown_query_through_the_cli(
    db_url, checkpoint, wide_terminal
):
    path, state = checkpoint
    assert ingest_checkpoint(db_url, path).exit_code == 0
    assert invoke("--db", db_url, "metrics", "-q", "--device", "cpu").exit_code == 0

    listed = runner.invoke(app, ["--db", db_url, "layers", "toy"], terminal_width=250)
    assert listed.exit_code == 0, listed.output
    table = [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in listed.output.splitlines()
        if line.startswith("│")
    ]
    table = [cells for cells in table if cells[0]]  # not a wrapped cell's second line
    kernels = {key: w for key, w in state.items() if w.shape[-2:] == (3, 3)}
    assert len(table) == len(kernels)
    for cells, (key, weight) in zip(table, kernels.items(), strict=True):
        assert cells[1] == key.removesuffix(".weight")
        assert int(cells[7]) == weight.shape[0] * weight.shape[1]  # n_filters
    assert_one_line_error(invoke("--db", db_url, "layers", "nope"), "nope")

    profile = invoke("--db", db_url, "depth-profile", "--format", "markdown")
    assert profile.exit_code == 0, profile.output
    header, *body = markdown_rows(profile.output)
    assert header[:8] == [
        "model_id",
        "model_name",
        "training_type",
        "training_dataset",
        "architecture",
        "depth_bin_index",
        "depth_bin",
        "n_layers",
    ]
    # Key order: depths 0, 1, 2 of 3 convs land in the first, (0.4, 0.5] and (0.9, 1.0] bins.
    assert [row[6] for row in body] == ["first", "(0.4, 0.5]", "(0.9, 1.0]"]
    sparsity = [float(row[header.index("sparsity")]) for row in body]
    assert sparsity == [0.0, 7 / 24, 0.0]  # tests/oracles.py: 7 sparse filters in layer 2

    sql = "SELECT layer_name, n_filters FROM v_layers ORDER BY conv_index"
    query = invoke("--db", db_url, "query", "--format", "markdown", sql)
    assert query.exit_code == 0, query.output
    assert markdown_rows(query.output) == [
        ["layer_name", "n_filters"],
        ["0", "24"],
        ["2", "24"],
        ["4", "72"],
    ]


def test_query_write_changes_the_database_only_with_write(db_url, checkpoint):
    path, _ = checkpoint
    assert ingest_checkpoint(db_url, path).exit_code == 0
    statement = "UPDATE training SET training_dataset = 'digits'"
    refused = invoke("--db", db_url, "query", statement)
    assert_one_line_error(refused, "not a read-only statement", "--write")
    dataset = "SELECT training_dataset FROM v_models"
    assert rows(db_url, dataset)["training_dataset"].to_list() == [None]
    written = invoke("--db", db_url, "query", "--write", statement)
    assert written.exit_code == 0, written.output
    assert rows(db_url, dataset)["training_dataset"].to_list() == ["digits"]


# --- --arch timm:NAME ------------------------------------------------------------------------


def test_arch_timm_traces_the_graph_and_a_misfit_is_one_line(duckdb_url, checkpoint, tmp_path):
    torch.manual_seed(6)
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = tmp_path / "r10.pt"
    torch.save(state, path)
    result = ingest_checkpoint(duckdb_url, path, "--arch", "timm:resnet10t", "--name", "r10")
    assert result.exit_code == 0, result.output
    layers = rows(
        duckdb_url,
        "SELECT layer_name, depth_method, conv_depth FROM v_layers ORDER BY conv_index",
    )
    assert set(layers["depth_method"]) != {"key_order"}
    kernels = [key for key, w in state.items() if w.ndim == 4 and w.shape[-2:] == (3, 3)]
    assert sorted(layers["layer_name"]) == sorted(k.removesuffix(".weight") for k in kernels)
    assert np.array_equal(
        bits(np.sort(stored_weights(duckdb_url, "r10"), axis=0)),
        bits(np.sort(checkpoint_filters({k: state[k] for k in kernels}), axis=0)),
    )
    toy, _ = checkpoint
    misfit = ingest_checkpoint(duckdb_url, toy, "--arch", "timm:resnet10t")
    assert_one_line_error(misfit, f"{toy} does not fit architecture timm:resnet10t", "--arch")


# --- leaderboard: states and sync from a URL ---------------------------------------------------


@pytest.fixture
def zoo_dir(tmp_path) -> Path:
    dataset, threat, name = ZOO_ENTRY
    torch.manual_seed(3)
    model = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat)
    path = tmp_path / "models" / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return tmp_path / "models"


def status_of(url: str, model_dir: Path) -> tuple[str, str]:
    """(the zoo entry's row status, the summary line) of ``filterdb leaderboard status``."""
    dataset, threat, name = ZOO_ENTRY
    result = runner.invoke(
        app,
        ["--db", url, "leaderboard", "status", "--dataset", dataset, "--threat-model", threat]
        + ["--model-dir", str(model_dir)],
        terminal_width=400,
    )
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if f" {name} " in line]
    return [cell.strip() for cell in row.strip("│").split("│")][2], result.output.splitlines()[-1]


def test_leaderboard_status_states_and_sync_from_a_url(
    duckdb_url, zoo_dir, shared_data, wide_terminal
):
    dataset, threat, name = ZOO_ENTRY
    n_missing = len(robustbench_index.zoo_entries(dataset, threat)) - 1
    assert status_of(duckdb_url, zoo_dir) == (
        "not ingested",
        f"{n_missing} checkpoint missing, 1 not ingested",
    )
    ingested = invoke(
        "--db", duckdb_url, "ingest", "robustbench", "--dataset", dataset, "--threat-model",
        threat, "--model", name, "--model-dir", zoo_dir, "-q", "--device", "cpu",
    )  # fmt: skip
    assert ingested.exit_code == 0, ingested.output
    assert status_of(duckdb_url, zoo_dir)[0] == "ingested"
    checkpoint = zoo_dir / dataset / threat / f"{name}.pt"
    saved = torch.load(checkpoint)
    saved["state_dict"]["conv1.weight"] += 1.0  # retrained since the ingest
    torch.save(saved, checkpoint)
    assert status_of(duckdb_url, zoo_dir) == (
        "out of date",
        f"{n_missing} checkpoint missing, 1 out of date",
    )

    model_info = shared_data / "robustbench_model_info"
    handler = functools.partial(QuietHandler, directory=str(model_info))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            address = f"http://127.0.0.1:{server.server_address[1]}"
            synced = invoke("--db", duckdb_url, "leaderboard", "sync", "--model-info", address)
        finally:
            server.shutdown()
            thread.join()
    assert synced.exit_code == 0, synced.output
    assert "updated 1 model" in synced.output
    assert QuietHandler.served == [f"/{dataset}/{threat}/{name}.json"]
    entry = json.loads((model_info / dataset / threat / f"{name}.json").read_text())
    models = rows(duckdb_url, "SELECT clean_acc, autoattack_acc, venue FROM training")
    assert models.rows() == [
        (float(entry["clean_acc"]), float(entry["autoattack_acc"]), entry["venue"])
    ]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the model_info copy; records the paths asked for instead of logging them."""

    served: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        QuietHandler.served.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


# --- an ensemble end to end ------------------------------------------------------------------

ENSEMBLE = ("cifar10", "Linf", "Chen2020Adversarial")  # the smallest ensemble: 3 ResNet-50


def test_an_ensemble_through_the_cli_stores_every_member_prefixed(duckdb_url, tmp_path):
    dataset, threat, name = ENSEMBLE
    torch.manual_seed(4)  # each member draws its own random weights
    ensemble = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat)
    members = [member.state_dict() for member in ensemble.models]
    directory = tmp_path / dataset / threat
    directory.mkdir(parents=True)
    for i, member in enumerate(members):
        torch.save(member, directory / f"{name}.pt_m{i}.pt")  # robustbench's file names
    result = invoke(
        "--db", duckdb_url, "ingest", "robustbench", "--dataset", dataset, "--threat-model",
        threat, "--model", name, "--model-dir", tmp_path, "-q", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    layers = rows(duckdb_url, "SELECT model_name, layer_name FROM v_layers ORDER BY conv_index")
    kernels = [
        (f"m{i}.{key.removesuffix('.weight')}", weight)
        for i, member in enumerate(members)
        for key, weight in member.items()
        if weight.ndim == 4 and weight.shape[-2:] == (3, 3)
    ]
    assert sorted(layers["layer_name"]) == sorted(layer for layer, _ in kernels)
    assert {layer.split(".")[0] for layer in layers["layer_name"]} == {"m0", "m1", "m2"}
    (model_name,) = set(layers["model_name"])
    stored = rows(
        duckdb_url,
        f"SELECT layer_name, {WEIGHTS} FROM v_filters WHERE model_name = '{model_name}' "
        "ORDER BY layer_name, filter_index",
    )
    for (layer,), frame in stored.group_by("layer_name", maintain_order=True):
        weight = dict(kernels)[layer].reshape(-1, 9)
        assert np.array_equal(bits(frame.drop("layer_name").to_numpy()), bits(weight)), layer
