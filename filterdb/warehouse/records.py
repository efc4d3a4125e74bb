"""What is written for one model: its identity, its training and its layers' rows.

Sources and extraction fill these in; :mod:`filterdb.warehouse.write` stores them. They
hold plain values and numpy arrays only, so the warehouse needs nothing from ingestion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from filterdb.errors import MetadataError

# Names are shown in tables, reports and file names: a 100,000-character name printed 501
# lines (issue 9). Longer than any zoo entry or file stem seen (under 80).
MAX_NAME_LENGTH = 200
ACCURACY_FIELDS = (
    "clean_acc",
    "robust_acc",
    "autoattack_acc",
    "external_acc",
    "corruptions_acc",
)


def check_model_name(name: str) -> str:
    """Return ``name`` when it can be a model name, else raise :class:`MetadataError`.

    A name is 1 to :data:`MAX_NAME_LENGTH` characters without line breaks or other control
    characters; it is data, shown as written (never as terminal markup).
    """
    if not name or not name.strip():
        raise MetadataError("the model name is empty; give --name NAME")
    if len(name) > MAX_NAME_LENGTH:
        raise MetadataError(
            f"the model name is {len(name):,} characters long, more than the "
            f"{MAX_NAME_LENGTH} allowed; give a shorter --name"
        )
    if any(not character.isprintable() for character in name):
        raise MetadataError(
            f"the model name {name!r} holds control characters or line breaks; give a "
            "--name of printable characters"
        )
    return name


# How a model's filters are stored (SPEC section 4, weights form): the checkpoint's tensors,
# BatchNorm folded in as the TorchScript ONNX exporter does, or an ONNX file as it is.
WEIGHTS_FORMS = ("raw", "bn_folded", "as_exported")
# A model name with this suffix holds folded weights of the checkpoint named before it.
FOLDED_NAME_SUFFIX = "+bn_folded"


def folded_name(name: str) -> str:
    """The default stored name of a folded model: ``name`` + ``+bn_folded``.

    A checkpoint ingested raw and folded gives two models; the suffix keeps both names
    unique (SPEC section 4: model names are unique).
    """
    return f"{name}{FOLDED_NAME_SUFFIX}"


@dataclass
class TrainingInfo:
    """How a model was trained: one row of the ``training`` table (SPEC section 4)."""

    training_type: str = "normal"
    training_dataset: str | None = None
    pretraining_dataset: str | None = None
    threat_model: str | None = None
    eps_text: str | None = None
    eps: float | None = None
    extra_data: bool | None = None
    clean_acc: float | None = None
    robust_acc: float | None = None
    autoattack_acc: float | None = None
    external_acc: float | None = None
    corruptions_acc: float | None = None
    paper_title: str | None = None
    paper_url: str | None = None
    venue: str | None = None
    footnote: str | None = None
    unreliable: bool | None = None
    number_forward_passes: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MetadataError` unless every figure is in range (the one place).

        Accuracies are percentages, finite and in [0, 100]; ``eps`` is finite and positive.
        Unknown figures (None) are always fine.
        """
        for name in ACCURACY_FIELDS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
                option = "--" + name.replace("_", "-")
                raise MetadataError(
                    f"{name} {value:g} is not a percentage; accuracies are in [0, 100] "
                    f"(e.g. {option} 89.7 for 89.7 %)"
                )
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise MetadataError(
                f"eps {self.eps_text or self.eps} is not a finite positive attack budget; "
                "write it like 8/255 or 0.5"
            )


@dataclass
class ModelInfo:
    """Identity of a model: one row of the ``model`` table, plus its training."""

    name: str
    source: str
    # Set by ingestion from the candidate's files, hashed before anything is loaded.
    checkpoint_sha256: str = ""
    source_uri: str | None = None
    architecture: str | None = None
    family: str | None = None
    n_parameters: int | None = None
    producer: str | None = None
    # One of WEIGHTS_FORMS; part of the model's identity with the checkpoint's bytes.
    weights_form: str = "raw"
    license: str | None = None
    training: TrainingInfo = field(default_factory=TrainingInfo)

    def __post_init__(self) -> None:
        check_model_name(self.name)


@dataclass
class ExtractedLayer:
    """One stored 3x3 conv layer: a ``layer`` row and its filters (SPEC section 4)."""

    name: str
    conv_index: int
    graph_depth: int
    conv_depth: int
    conv_depth_norm: float
    in_channels: int
    out_channels: int
    groups: int
    stride: str | None
    dilation: str | None
    max_abs: float
    filters: np.ndarray  # (out_channels * in_channels / groups, 9) float32, C-contiguous
    source_dtype: str | None = None  # as stored in the checkpoint: float16, bfloat16, ...

    @property
    def n_filters(self) -> int:
        return self.filters.shape[0]

    @property
    def filters_per_out_channel(self) -> int:
        return self.in_channels // self.groups


@dataclass
class ExtractedModel:
    """Everything that is written for one model, in one transaction."""

    info: ModelInfo
    layers: list[ExtractedLayer]
    depth_method: str
    max_conv_depth: int
    n_unreached_convs: int

    @property
    def n_filters(self) -> int:
        return sum(layer.n_filters for layer in self.layers)
