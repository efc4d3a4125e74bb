"""One name per architecture across sources, so that a robust model finds its normal twin.

RobustBench's leaderboard writes ``ResNet-50`` and ``WideResNet-50-2``; timm and
torchvision write ``resnet50`` and ``wide_resnet50_2``; the robustness paper's pairs file
writes the leaderboard's names. :data:`ARCHITECTURES` is the table: each canonical name
(the leaderboard's spelling) with the other names sources give it. Names are compared
folded (lower case, letters and digits only), so ``ResNet-50``, ``resnet50`` and
``RESNET_50`` are one name even where the table does not list them; the table holds what
folding cannot see (``WRN-28-10``, ``vit_base_patch16_224``). A name in no row stays as it
is: an unknown architecture pairs only with its exact (folded) spelling.

Only names of the same network belong in a row: ``resnet50d`` (a deep-stem variant) and
``resnet50`` are different architectures, and so are WideResNet-28-10 and -34-10.
"""

from __future__ import annotations

import re

import polars as pl

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "AlexNet": ("alexnet",),
    "VGG-16": ("vgg16",),
    "ResNet-18": ("resnet18", "tv_resnet18"),
    "ResNet-34": ("resnet34", "tv_resnet34"),
    "ResNet-50": ("resnet50", "tv_resnet50", "R50"),
    "ResNet-101": ("resnet101", "tv_resnet101"),
    "ResNet-152": ("resnet152", "tv_resnet152"),
    "WideResNet-50-2": ("wide_resnet50_2", "WRN-50-2", "wrn50_2"),
    "WideResNet-101-2": ("wide_resnet101_2", "WRN-101-2"),
    "WideResNet-28-10": ("WRN-28-10", "wrn28_10"),
    "WideResNet-34-10": ("WRN-34-10", "wrn34_10"),
    "WideResNet-34-20": ("WRN-34-20",),
    "WideResNet-70-16": ("WRN-70-16", "wrn70_16"),
    "PreActResNet-18": ("PreActResNet18", "PARN18"),
    "DenseNet-121": ("densenet121", "tv_densenet121"),
    "ResNeXt-50-32x4d": ("resnext50_32x4d",),
    "MobileNetV2": ("mobilenet_v2", "mobilenetv2_100"),
    "ConvNeXt-T": ("convnext_tiny",),
    "ConvNeXt-S": ("convnext_small",),
    "ConvNeXt-B": ("convnext_base",),
    "ConvNeXt-L": ("convnext_large",),
    "Swin-B": ("swin_base_patch4_window7_224", "swin_b"),
    "Swin-L": ("swin_large_patch4_window7_224",),
    "ViT-S": ("vit_small_patch16_224",),
    "ViT-B": ("vit_base_patch16_224", "vit_b_16"),
    "DeiT Small": ("deit_small_patch16_224",),
    "DeiT Base": ("deit_base_patch16_224",),
    "XCiT-S12": ("xcit_small_12_p16_224",),
    "XCiT-M12": ("xcit_medium_12_p16_224",),
    "XCiT-L12": ("xcit_large_12_p16_224",),
}


def fold(name: str) -> str:
    """``WideResNet-50-2`` -> ``wideresnet502``: case and punctuation ignored."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_BY_FOLDED = {
    fold(alias): canonical
    for canonical, aliases in ARCHITECTURES.items()
    for alias in (canonical, *aliases)
}


def canonical_architecture(name: str | None) -> str | None:
    """The table's name for ``name``, else ``name`` itself; ``None`` stays ``None``."""
    if name is None:
        return None
    return _BY_FOLDED.get(fold(name), name)


def pairing_key(name: str | None) -> str | None:
    """What two architecture names must share to be one architecture (folded canonical)."""
    canonical = canonical_architecture(name)
    return None if canonical is None else fold(canonical)


def with_canonical_architecture(models: pl.DataFrame) -> pl.DataFrame:
    """``models`` (v_models columns) with ``canonical_architecture`` after ``architecture``."""
    canonical = pl.Series(
        "canonical_architecture",
        [canonical_architecture(name) for name in models["architecture"].to_list()],
        dtype=pl.String,
    )
    at = models.columns.index("architecture") + 1
    return models.insert_column(at, canonical)
