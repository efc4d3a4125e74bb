"""Extraction: a :class:`ModelSource` becomes layer rows and (n, 9) float32 filter arrays.

Runs on CUDA when there is one (``device="auto"``): each layer's weight goes to the device
once, is checked and reshaped there together with the per-layer quantities later metrics
need (the layer max), and one contiguous host array per layer comes back. Reshaping and
taking a maximum are exact, so CPU and CUDA give identical rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from filterdb.device import resolve_device
from filterdb.errors import SourceError
from filterdb.ingest.sources.base import ConvLayer, ModelSource
from filterdb.warehouse.records import ExtractedLayer, ExtractedModel


def conv_depth_ranks(convs: list[ConvLayer]) -> dict[int, int]:
    """Map each graph depth holding a conv (any kernel size) to its rank (SPEC section 5)."""
    return {depth: rank for rank, depth in enumerate(sorted({c.graph_depth for c in convs}))}


def extract(
    source: ModelSource,
    *,
    device: str | torch.device = "auto",
    allow_nonfinite: bool = False,
) -> ExtractedModel:
    """Keep the 3x3 convs of ``source`` and turn them into rows.

    Raises :class:`SourceError` when the model has no 3x3 conv, or, unless
    ``allow_nonfinite``, when a weight is NaN or infinite.
    """
    target = resolve_device(device)
    ranks = conv_depth_ranks(source.convs)
    max_conv_depth = max(ranks.values(), default=0)
    layers = []
    for conv in (c for c in source.convs if c.is_3x3):
        _check_shape(conv)
        conv_depth = ranks[conv.graph_depth]
        filters, max_abs = _filters_on_device(conv, target, allow_nonfinite=allow_nonfinite)
        layers.append(
            ExtractedLayer(
                name=conv.name,
                conv_index=len(layers),
                graph_depth=conv.graph_depth,
                conv_depth=conv_depth,
                conv_depth_norm=conv_depth / max_conv_depth if max_conv_depth else 0.0,
                in_channels=conv.weight.shape[1] * conv.groups,
                out_channels=conv.weight.shape[0],
                groups=conv.groups,
                stride=_pair_text(conv.stride),
                dilation=_pair_text(conv.dilation),
                max_abs=max_abs,
                filters=filters,
                source_dtype=conv.source_dtype or _dtype_name(conv.weight.dtype),
            )
        )
    if not layers:
        raise SourceError(
            f"{source.info.name} has no 3x3 convolution (a transformer?); filterdb stores "
            "3x3 conv filters only, so there is nothing to ingest"
        )
    return ExtractedModel(
        info=source.info,
        layers=layers,
        depth_method=source.depth_method,
        max_conv_depth=max_conv_depth,
        n_unreached_convs=source.n_unreached_convs,
    )


def _check_shape(conv: ConvLayer) -> None:
    """A 3x3 conv stores out_channels x in_channels / groups filters: none may be 0."""
    out_channels, in_per_group = conv.weight.shape[:2]
    if out_channels <= 0 or in_per_group <= 0:
        raise SourceError(
            f"layer {conv.name} has weight shape {tuple(conv.weight.shape)}: a conv with 0 "
            "output or input channels holds no filters; the model file is malformed"
        )
    if conv.groups < 1 or out_channels % conv.groups:
        raise SourceError(
            f"layer {conv.name} has groups={conv.groups}, which must be at least 1 and divide "
            f"its {out_channels} output channels; the model file is malformed"
        )


def _filters_on_device(
    conv: ConvLayer, device: torch.device, *, allow_nonfinite: bool
) -> tuple[np.ndarray, float]:
    weight = conv.weight.detach().to(device=device, dtype=torch.float32, non_blocking=True)
    filters = weight.reshape(-1, 9).contiguous()
    # One pass gives both: the max of |w| is NaN when any weight is NaN (torch's max
    # propagates NaN) and infinite when any is infinite.
    max_abs = float(filters.abs().amax()) if filters.numel() else 0.0
    if not allow_nonfinite and not math.isfinite(max_abs):
        raise SourceError(
            f"layer {conv.name} holds NaN or infinite weights; fix the checkpoint, or pass "
            "--allow-nonfinite to store them anyway"
        )
    return filters.cpu().numpy(), max_abs


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _pair_text(pair: tuple[int, ...] | None) -> str | None:
    return None if pair is None else ",".join(str(int(v)) for v in pair)
