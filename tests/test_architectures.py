"""Architecture names across sources: one canonical name, so twins pair automatically."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from filterdb.analysis.architectures import (
    ARCHITECTURES,
    canonical_architecture,
    fold,
    pairing_key,
)
from filterdb.analysis.pairing import Pair, find_pairs
from filterdb.cli.main import app
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse.records import TrainingInfo

runner = CliRunner()


@pytest.mark.parametrize(
    ("names", "canonical"),
    [
        (("ResNet-50", "resnet50", "tv_resnet50", "RESNET_50"), "ResNet-50"),
        (("WideResNet-50-2", "wide_resnet50_2", "WRN-50-2"), "WideResNet-50-2"),
        (("WideResNet-28-10", "WRN-28-10"), "WideResNet-28-10"),
        (("ViT-B", "vit_base_patch16_224"), "ViT-B"),
        (("ResNet-18", "resnet18"), "ResNet-18"),
    ],
)
def test_names_of_one_architecture_share_the_canonical_name(names, canonical):
    assert {canonical_architecture(name) for name in names} == {canonical}


def test_different_architectures_stay_apart():
    # A deep-stem ResNet-50 and the WRNs of other depth or width are other networks.
    keys = [pairing_key(n) for n in ("resnet50d", "ResNet-50", "WideResNet-34-10", "WRN-28-10")]
    assert len(set(keys)) == 4
    assert canonical_architecture("SomethingNew-7") == "SomethingNew-7"
    assert canonical_architecture(None) is None


def test_the_table_has_no_alias_in_two_rows():
    rows = [
        {fold(a) for a in (canonical, *aliases)} for canonical, aliases in ARCHITECTURES.items()
    ]
    assert sum(len(row) for row in rows) == len(set().union(*rows))


def store(url, tmp_path, seed: int, name: str, architecture: str, training_type: str) -> None:
    path = tmp_path / f"m{seed}.pt"
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    torch.save({"conv.weight": weight}, path)
    training = TrainingInfo(training_type=training_type, training_dataset="imagenet")
    candidate = checkpoint_candidate(path, name=name, architecture=architecture, training=training)
    ingest(candidate, url=url, device="cpu")


def test_robustbench_imagenet_models_pair_with_timm_and_torchvision_twins(db_url, tmp_path):
    models = [
        ("imagenet/Linf/Salman2020Do_R50", "ResNet-50", "adversarial"),
        ("imagenet/Linf/Salman2020Do_50_2", "WideResNet-50-2", "adversarial"),
        ("timm:resnet50.a1_in1k", "resnet50", "normal"),
        ("torchvision:wide_resnet50_2", "wide_resnet50_2", "normal"),
        ("timm:resnet50d.ra2_in1k", "resnet50d", "normal"),
    ]
    for seed, row in enumerate(models):
        store(db_url, tmp_path, seed, *row)
    pairing = find_pairs(url=db_url)
    assert pairing.pairs == (
        Pair("imagenet/Linf/Salman2020Do_R50", "timm:resnet50.a1_in1k", "ResNet-50", "imagenet"),
        Pair(
            "imagenet/Linf/Salman2020Do_50_2",
            "torchvision:wide_resnet50_2",
            "WideResNet-50-2",
            "imagenet",
        ),
    )
    assert pairing.unpaired_normal == ("timm:resnet50d.ra2_in1k",)

    listing = runner.invoke(app, ["--db", db_url, "models"])
    assert listing.exit_code == 0, listing.output
    assert "canonical_architecture" in listing.output
    timm_line = next(line for line in listing.output.splitlines() if "a1_in1k" in line)
    assert "resnet50" in timm_line and "ResNet-50" in timm_line
