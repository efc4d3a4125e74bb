"""--fold-batchnorm stores what the papers' ONNX pipeline stored; raw stays the checkpoint.

The oracle is torch's own TorchScript ONNX exporter (``torch.onnx.export(..., dynamo=False)``
in eval mode, what the robustness paper's export.ipynb ran), read back through
``filterdb ingest onnx``: no filterdb folding code computes the expected rows. BatchNorm
statistics are random, so that folding changes every folded kernel.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from filterdb.errors import ModelConflict, SourceError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources import robustbench as zoo
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.ingest.sources.onnx_file import onnx_candidate
from filterdb.ingest.sources.torch_graph import trace_convs
from filterdb.warehouse.database import engine_for, read_frame

AUGMIX = ("cifar10", "corruptions", "Hendrycks2020AugMix_WRN")  # WRN-40-2, pre-activation
# Float32 rounding: the exporter's and filterdb's products are the same float32 operations.
RELATIVE = 1e-6


def randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) * 3 + 0.05)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, and says so
        torch.onnx.export(
            model.eval(), torch.randn(input_shape), buffer, dynamo=False, opset_version=13
        )
    path.write_bytes(buffer.getvalue())
    return path


def stored_layers(url: str, model_name: str) -> list[np.ndarray]:
    """Each stored layer's filters, (n, 9) float32, in conv_index order."""
    with engine_for(url) as engine, engine.connect() as connection:
        rows = read_frame(
            connection,
            "SELECT conv_index, filter_index, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM v_filters "
            "JOIN v_layers USING (layer_id) WHERE v_filters.model_name = :name "
            "ORDER BY conv_index, filter_index",
            {"name": model_name},
        )
    weights = rows.select([f"w{i}" for i in range(9)]).to_numpy().astype(np.float32)
    index = rows["conv_index"].to_numpy()
    return [weights[index == i] for i in np.unique(index)]


def weights_form(url: str, model_name: str) -> str:
    with engine_for(url) as engine, engine.connect() as connection:
        return connection.exec_driver_sql(
            f"SELECT weights_form FROM v_models WHERE model_name = '{model_name}'"
        ).scalar_one()


def assert_layers_close(folded: list[np.ndarray], exported: list[np.ndarray]) -> None:
    assert [layer.shape for layer in folded] == [layer.shape for layer in exported]
    for ours, theirs in zip(folded, exported, strict=True):
        scale = float(np.abs(theirs).max())
        np.testing.assert_allclose(ours, theirs, rtol=RELATIVE, atol=RELATIVE * scale)


def raw_3x3_layers(state_dict: dict[str, torch.Tensor], names: list[str]) -> list[np.ndarray]:
    return [state_dict[f"{name}.weight"].numpy().reshape(-1, 9) for name in names]


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """torchvision resnet18 with random BN statistics: its state_dict and its ONNX export."""
    folder = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    model = randomise_batchnorm(torchvision.models.resnet18(weights=None), seed=1)
    checkpoint = folder / "resnet18.pt"
    torch.save(model.state_dict(), checkpoint)
    onnx_path = export_onnx(model, folder / "resnet18.onnx", (1, 3, 64, 64))
    return checkpoint, onnx_path, model.state_dict()


def test_folded_resnet18_equals_its_torchscript_onnx_export(db_url, resnet18):
    checkpoint, onnx_path, state_dict = resnet18
    folded = ingest(
        checkpoint_candidate(checkpoint, arch="torchvision:resnet18", fold_batchnorm=True),
        url=db_url,
        device="cpu",
    )
    ingest(onnx_candidate(onnx_path), url=db_url, device="cpu")
    assert folded.model_name == "resnet18+bn_folded"
    assert weights_form(db_url, "resnet18+bn_folded") == "bn_folded"
    assert weights_form(db_url, "resnet18") == "as_exported"
    ours, theirs = stored_layers(db_url, "resnet18+bn_folded"), stored_layers(db_url, "resnet18")
    assert len(ours) == 16  # every 3x3 conv of resnet18 (its stem is 7x7) feeds a BatchNorm
    assert_layers_close(ours, theirs)
    # Folding mattered: no folded layer is its raw weight.
    names = [c.name for c in trace_convs(torchvision.models.resnet18()).convs if c.is_3x3]
    for folded_layer, raw_layer in zip(ours, raw_3x3_layers(state_dict, names), strict=True):
        assert not np.allclose(folded_layer, raw_layer)


def test_raw_resnet18_stays_bitwise_the_checkpoint(db_url, resnet18):
    checkpoint, _, state_dict = resnet18
    result = ingest(
        checkpoint_candidate(checkpoint, arch="torchvision:resnet18"), url=db_url, device="cpu"
    )
    assert result.model_name == "resnet18"
    assert weights_form(db_url, "resnet18") == "raw"
    names = [c.name for c in trace_convs(torchvision.models.resnet18()).convs if c.is_3x3]
    for stored, expected in zip(
        stored_layers(db_url, "resnet18"), raw_3x3_layers(state_dict, names), strict=True
    ):
        assert stored.tobytes() == expected.tobytes()


def test_the_same_bytes_in_another_form_are_another_model(db_url, resnet18):
    checkpoint, _, _ = resnet18
    raw = checkpoint_candidate(checkpoint, arch="torchvision:resnet18")
    folded = checkpoint_candidate(checkpoint, arch="torchvision:resnet18", fold_batchnorm=True)
    assert ingest(raw, url=db_url, device="cpu").status == "ingested"
    assert ingest(folded, url=db_url, device="cpu").status == "ingested"
    assert ingest(folded, url=db_url, device="cpu").status == "skipped"
    # One name, two forms: a conflict unless forced.
    renamed = checkpoint_candidate(
        checkpoint, name="resnet18", arch="torchvision:resnet18", fold_batchnorm=True
    )
    with pytest.raises(ModelConflict, match="weights form raw, not bn_folded.*--force"):
        ingest(renamed, url=db_url, device="cpu")
    assert ingest(renamed, url=db_url, device="cpu", force=True).status == "replaced"
    assert weights_form(db_url, "resnet18") == "bn_folded"


def test_folding_needs_an_architecture(tmp_path, resnet18):
    checkpoint, _, _ = resnet18
    with pytest.raises(SourceError, match="--fold-batchnorm needs the architecture.*--arch"):
        checkpoint_candidate(checkpoint, fold_batchnorm=True)


class _Exporterless(nn.Module):
    """A conv whose output feeds a BatchNorm and something else: the exporter keeps both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.shared = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.bn_shared = nn.BatchNorm2d(4)
        self.batch_stats = nn.BatchNorm2d(4, track_running_stats=False)
        self.free = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(x)
        return self.bn(self.conv(x)) + self.bn_shared(y) + y + self.batch_stats(self.free(x))


def test_only_what_the_exporter_folds_is_folded(tmp_path, db_url):
    model = randomise_batchnorm(_Exporterless(), seed=3)
    traced = trace_convs(model, input_shape=(1, 3, 8, 8), fold_batchnorm=True)
    assert traced.n_folded == 1
    onnx_path = export_onnx(model, tmp_path / "exporterless.onnx", (1, 3, 8, 8))
    ingest(onnx_candidate(onnx_path), url=db_url, device="cpu")
    exported = stored_layers(db_url, "exporterless")
    by_name = {c.name: c.weight.numpy().reshape(-1, 9) for c in traced.convs}
    for ours in by_name.values():
        assert any(np.allclose(ours, theirs, rtol=RELATIVE, atol=0) for theirs in exported)
    assert np.array_equal(by_name["shared"], model.shared.weight.detach().numpy().reshape(-1, 9))
    assert np.array_equal(by_name["free"], model.free.weight.detach().numpy().reshape(-1, 9))


@pytest.fixture(scope="module")
def augmix_dir(tmp_path_factory) -> tuple[Path, nn.Module]:
    """robustbench's WRN-40-2 (pre-activation) with random weights and BN statistics,
    saved in robustbench's cache layout."""
    dataset, threat_model, name = AUGMIX
    model_dir = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(4)
    model = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat_model)
    model = randomise_batchnorm(model, seed=5)
    path = model_dir / dataset / threat_model / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return model_dir, model


def test_folded_wideresnet_equals_its_torchscript_onnx_export(db_url, augmix_dir, tmp_path):
    model_dir, model = augmix_dir
    dataset, threat_model, name = AUGMIX
    for fold in (False, True):
        candidate = zoo.zoo_candidate(
            name,
            dataset=dataset,
            threat_model=threat_model,
            model_dir=model_dir,
            fold_batchnorm=fold,
        )
        ingest(candidate, url=db_url, device="cpu")
    onnx_path = export_onnx(model, tmp_path / "wrn.onnx", (1, 3, 32, 32))
    ingest(onnx_candidate(onnx_path), url=db_url, device="cpu")
    stored = f"{dataset}/{threat_model}/{name}"
    assert weights_form(db_url, stored) == "raw"
    assert weights_form(db_url, stored + "+bn_folded") == "bn_folded"
    folded, raw = stored_layers(db_url, stored + "+bn_folded"), stored_layers(db_url, stored)
    assert_layers_close(folded, stored_layers(db_url, "wrn"))
    # Pre-activation: the stem conv and each block's first conv feed a BatchNorm, the
    # block's second conv feeds the residual sum and stays as it was.
    changed = [not np.array_equal(f, r) for f, r in zip(folded, raw, strict=True)]
    n_blocks = (len(raw) - 1) // 2
    assert sum(changed) == n_blocks + 1
    # Raw rows are the checkpoint's tensors, bit for bit.
    state_dict = model.state_dict()
    names = [c.name for c in trace_convs(model).convs if c.is_3x3]
    for ours, expected in zip(raw, raw_3x3_layers(state_dict, names), strict=True):
        assert ours.tobytes() == expected.tobytes()


def test_cli_ingest_robustbench_folds_into_its_own_model(augmix_dir, duckdb_url):
    from typer.testing import CliRunner

    from filterdb.cli.main import app

    model_dir, _ = augmix_dir
    dataset, threat_model, name = AUGMIX
    args = ["--db", duckdb_url, "ingest", "robustbench", "--dataset", dataset]
    args += ["--threat-model", threat_model, "--model", name, "--model-dir", str(model_dir)]
    args += ["--device", "cpu", "-q"]
    runner = CliRunner()
    folded = runner.invoke(app, [*args, "--fold-batchnorm"])
    assert folded.exit_code == 0, folded.output
    assert f"{dataset}/{threat_model}/{name}+bn_folded: ingested" in folded.output
    raw = runner.invoke(app, args)
    assert f"{dataset}/{threat_model}/{name}: ingested" in raw.output
    assert weights_form(duckdb_url, f"{dataset}/{threat_model}/{name}") == "raw"


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation in forward (as timm's StdConv2d): the kernel is computed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) * 2.0
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)


def test_a_conv_that_computes_its_kernel_is_not_folded():
    model = nn.Sequential(_StandardisedConv(3, 4, 3), nn.BatchNorm2d(4))
    model = randomise_batchnorm(model, seed=6)
    traced = trace_convs(model, input_shape=(1, 3, 8, 8), fold_batchnorm=True)
    assert traced.n_folded == 0
    assert torch.equal(traced.convs[0].weight, model[0].weight.detach())
