"""What is written for one model: its identity, its training and its layers' rows.

Sources and extraction fill these in; :mod:`filterdb.warehouse.write` stores them. They
hold plain values and numpy arrays only, so the warehouse needs nothing from ingestion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    license: str | None = None
    training: TrainingInfo = field(default_factory=TrainingInfo)


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
