"""What Dask workers run: per-file metric and group-statistic tasks on the lake.

Workers import this module, :mod:`filterdb.lake.layout` and the metric kernels, never the
warehouse (an import contract in pyproject.toml checks it): they read Parquet files of the
lake and return small Arrow tables; the client alone writes the metric cache.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from filterdb import __version__
from filterdb.lake.layout import read_layers
from filterdb.metrics import partials
from filterdb.metrics.layer import layer_metrics
from filterdb.metrics.pca import N_WEIGHTS, PCAResult, scale_non_sparse
from filterdb.metrics.registry import METRICS

RESULT_SCHEMA = pa.schema(
    [
        ("layer_id", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("support", pa.int64()),
    ]
)


def versions() -> dict:
    """The filterdb version and metric versions of this process (checked before a run)."""
    return {
        "filterdb": __version__,
        "metrics": {name: metric.version for name, metric in METRICS.items()},
    }


def file_metrics(
    location: str,
    file: str,
    layers: list[dict],
    *,
    eps: float,
    torch_threads: int,
) -> pa.Table:
    """The metrics of ``layers`` (all in lake file ``file``), one row per (layer, metric).

    Each layer dict holds ``layer_id``, ``n_filters``, ``out_channels``, ``per_out``
    (C_in / groups) and ``metric`` (the names to return). The kernels are the local ones
    (:func:`filterdb.metrics.layer.layer_metrics`, on the CPU); torch runs with
    ``torch_threads`` intra-op threads, the client's count, because torch's float64 sums
    split their work by thread count (measured: 1 and 2 threads differ in the last bits on
    a 640x640 layer), and the results must equal a local run bit for bit.
    """
    import torch

    filters = read_layers(location, file, [(lay["layer_id"], lay["n_filters"]) for lay in layers])
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    columns: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
    try:
        for layer in layers:
            weight = filters[layer["layer_id"]].reshape(
                layer["out_channels"], layer["per_out"], 3, 3
            )
            values = layer_metrics(weight, eps=eps, device="cpu")
            for metric in layer["metric"]:
                columns["layer_id"].append(layer["layer_id"])
                columns["metric"].append(metric)
                columns["value"].append(values[metric].value)
                columns["support"].append(values[metric].support)
    finally:
        torch.set_num_threads(before)
    return pa.table(columns, schema=RESULT_SCHEMA)


# --- group statistics (PCA, drift): partials of :mod:`filterdb.metrics.partials` ----------
# Each layer dict holds ``layer_id``, ``n_filters``, ``max_abs`` (the layer max that
# sparsity is judged against) and ``group`` (the index of the layer's group).


def _scaled_layers(location: str, file: str, layers: list[dict], eps: float) -> list[np.ndarray]:
    """Each layer's scaled non-sparse filters, as the local path reads and scales them."""
    filters = read_layers(location, file, [(lay["layer_id"], lay["n_filters"]) for lay in layers])
    return [scale_non_sparse(filters[lay["layer_id"]], lay["max_abs"], eps=eps) for lay in layers]


def _pooled(scaled: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(scaled) if scaled else np.empty((0, N_WEIGHTS))


def file_moments(location: str, file: str, layers: list[dict], *, eps: float) -> partials.Moments:
    """Pass 1: the :class:`~filterdb.metrics.partials.Moments` of the file's layers."""
    scaled = _scaled_layers(location, file, layers, eps)
    kept = {lay["layer_id"]: len(rows) for lay, rows in zip(layers, scaled, strict=True)}
    return partials.moments_of(_pooled(scaled), kept=kept)


def file_extremes(
    location: str,
    file: str,
    layers: list[dict],
    *,
    eps: float,
    basis: PCAResult,
    rows: dict[int, np.ndarray],
) -> partials.Extremes:
    """Pass 2: coefficient extremes on ``basis``, and the scaled filters at ``rows``
    (per layer_id, indices among its non-sparse filters) for the permutation nulls."""
    scaled = _scaled_layers(location, file, layers, eps)
    gathered = {
        lay["layer_id"]: layer[rows[lay["layer_id"]]]
        for lay, layer in zip(layers, scaled, strict=True)
        if lay["layer_id"] in rows
    }
    return partials.extremes_of(basis.coefficients(_pooled(scaled)), gathered)


def file_histograms(
    location: str,
    file: str,
    layers: list[dict],
    *,
    eps: float,
    basis: PCAResult,
    lo: float,
    hi: float,
    bins: int,
    n_groups: int,
) -> np.ndarray:
    """Pass 3: (n_groups, 9, bins) histogram counts of each group's coefficients."""
    counts = np.zeros((n_groups, N_WEIGHTS, bins), dtype=np.int64)
    scaled = _scaled_layers(location, file, layers, eps)
    for group in sorted({lay["group"] for lay in layers}):
        mine = [rows for lay, rows in zip(layers, scaled, strict=True) if lay["group"] == group]
        coefficients = basis.coefficients(_pooled(mine))
        counts[group] = partials.histogram_counts(coefficients, lo=lo, hi=hi, bins=bins)
    return counts
