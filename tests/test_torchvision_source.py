"""torchvision's pretrained weights from a TORCH_HOME cache, with torchvision's hash check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.torchvision_hub import torchvision_candidate
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()
MODEL = "squeezenet1_1"  # torchvision's smallest CNN with 3x3 convs: 1.2M parameters
REAL = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def seeded_weights(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state_dict = torchvision.models.get_model(MODEL, weights=None).state_dict()
    torch.save(state_dict, path)
    return state_dict


def query(url: str, sql: str):
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(connection, sql)


def test_cached_weights_ingest_with_their_metadata(db_url, torch_home, tmp_path):
    staged = tmp_path / "staged.pth"
    state_dict = seeded_weights(staged)
    prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    # A weights entry like torchvision's, naming our file by its hash as torchvision names
    # its downloads: the real file cannot be fetched offline.
    entry = torchvision.models.Weights(
        url=f"https://download.pytorch.org/models/{MODEL}-{prefix}.pth",
        transforms=REAL.transforms,
        meta=REAL.meta,
    )
    staged.rename(torch_home / f"{MODEL}-{prefix}.pth")
    ingest(torchvision_candidate(MODEL, weights=entry, name="tv"), url=db_url, device="cpu")
    reference = torch_home / f"{MODEL}-{prefix}.pth"
    result = runner.invoke(
        app,
        ["--db", db_url, "ingest", "checkpoint", str(reference), "--arch",
         f"torchvision:{MODEL}", "--name", "ref", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    filters = query(
        db_url,
        "SELECT layer_name, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM v_filters "
        "WHERE model_name = 'tv' ORDER BY layer_id, filter_index",
    )
    for (layer,), group in filters.group_by("layer_name", maintain_order=True):
        expected = state_dict[f"{layer}.weight"].reshape(-1, 9).numpy()
        assert group.drop("layer_name").to_numpy().tobytes() == expected.tobytes()
    layers = "SELECT layer_name, graph_depth, conv_depth, depth_bin FROM v_layers "
    tv = query(db_url, layers + "WHERE model_name = 'tv' ORDER BY conv_index").rows()
    ref = query(db_url, layers + "WHERE model_name = 'ref' ORDER BY conv_index").rows()
    assert tv == ref and len(tv) == 9  # the stem and eight expand3x3 convs
    model = query(
        db_url,
        "SELECT source, architecture, family, n_parameters, training_dataset, training_type, "
        "clean_acc, paper_url, source_uri FROM v_models WHERE model_name = 'tv'",
    ).row(0)
    assert model == (
        "torchvision", MODEL, "SqueezeNet", 1235496, "imagenet", "normal", 58.178,
        REAL.meta["recipe"], entry.url,
    )  # fmt: skip


def invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, "ingest", "torchvision", *args, "-q"])


def test_missing_weights_name_the_exact_cache_path(db_url, torch_home):
    result = invoke(db_url, MODEL)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert str(torch_home / f"{MODEL}-b8a52dc0.pth") in result.output


def test_a_file_failing_the_hash_check_is_refused(db_url, torch_home):
    seeded_weights(torch_home / f"{MODEL}-b8a52dc0.pth")  # the real name, other bytes
    result = invoke(db_url, MODEL, "--weights", "IMAGENET1K_V1")
    assert result.exit_code == 1
    assert "fails torchvision's hash check" in result.output
    assert query(db_url, "SELECT COUNT(*) AS n FROM model").item() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("resnet5",), "closest: resnet50"),
        ((MODEL, "--weights", "IMAGENET1K_V9"), "choose one of IMAGENET1K_V1"),
    ],
)
def test_unknown_names_are_one_line(db_url, torch_home, args, message):
    result = invoke(db_url, *args)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert message in result.output
