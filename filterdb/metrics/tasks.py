"""What Dask workers run: per-file metric and group-statistic tasks on the lake.

Workers import this module, :mod:`filterdb.lake.layout` and the metric kernels, never the
warehouse (an import contract in pyproject.toml checks it): they read Parquet files of the
lake and return small Arrow tables; the client alone writes the metric cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from filterdb import __version__
from filterdb.lake.layout import read_layers
from filterdb.metrics import partials
from filterdb.metrics.layer import layer_metrics
from filterdb.metrics.pca import N_WEIGHTS, PCAResult, histogram_counts, scale_non_sparse
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
# sparsity is judged against) and ``group`` (the index of the layer's group). A file is
# read and scaled once (:func:`file_scaled`); the passes run on the result where it lies,
# on the worker that made it, as local arrays would be reused.


@dataclass(frozen=True)
class ScaledFile:
    """A lake file's scaled non-sparse filters, pooled in layer order, and where each
    layer's rows are: ``spans`` holds (layer_id, group, start, stop)."""

    filters: np.ndarray
    spans: list[tuple[int, int, int, int]]

    @property
    def kept(self) -> dict[int, int]:
        """Non-sparse filters per layer_id."""
        return {layer: stop - start for layer, _, start, stop in self.spans}


def file_scaled(location: str, file: str, layers: list[dict], *, eps: float) -> ScaledFile:
    """Read ``layers`` of one lake file and keep their scaled non-sparse filters, each
    layer scaled as the local path scales it (:func:`scale_non_sparse`)."""
    filters = read_layers(location, file, [(lay["layer_id"], lay["n_filters"]) for lay in layers])
    scaled = [
        scale_non_sparse(filters.pop(lay["layer_id"]), lay["max_abs"], eps=eps) for lay in layers
    ]
    bounds = np.cumsum([0, *(len(rows) for rows in scaled)])
    spans = [
        (lay["layer_id"], lay["group"], int(bounds[i]), int(bounds[i + 1]))
        for i, lay in enumerate(layers)
    ]
    pooled = np.concatenate(scaled) if scaled else np.empty((0, N_WEIGHTS))
    return ScaledFile(pooled, spans)


def scaled_moments(scaled: ScaledFile) -> partials.Moments:
    """Pass 1: the file's :class:`~filterdb.metrics.partials.Moments`."""
    return partials.moments_of(scaled.filters, kept=scaled.kept)


def scaled_coefficients(scaled: ScaledFile, *, basis: PCAResult) -> np.ndarray:
    """The (n, 9) coefficients of the file's filters on ``basis`` (kept for passes 2-3)."""
    return basis.coefficients(scaled.filters)


def coefficient_extremes(
    coefficients: np.ndarray, scaled: ScaledFile, *, rows: dict[int, np.ndarray]
) -> partials.Extremes:
    """Pass 2: coefficient extremes, and the scaled filters at ``rows`` (per layer_id,
    indices among its non-sparse filters) that the permutation nulls use."""
    gathered = {
        layer: scaled.filters[start + rows[layer]]
        for layer, _, start, _ in scaled.spans
        if layer in rows
    }
    return partials.extremes_of(coefficients, gathered)


def coefficient_histograms(
    coefficients: np.ndarray,
    spans: list[tuple[int, int, int, int]],
    *,
    signs: np.ndarray,
    lo: float,
    hi: float,
    bins: int,
    n_groups: int,
) -> np.ndarray:
    """Pass 3: (n_groups, 9, bins) histogram counts of each group's coefficients on the
    oriented basis: the coefficients times ``signs``, as the local path flips them."""
    counts = np.zeros((n_groups, N_WEIGHTS, bins), dtype=np.int64)
    for group in sorted({group for _, group, _, _ in spans}):
        mine = [coefficients[start:stop] for _, g, start, stop in spans if g == group]
        oriented = np.concatenate(mine) * signs
        counts[group] = histogram_counts(oriented, lo=lo, hi=hi, bins=bins)
    return counts


def spans_of(scaled: ScaledFile) -> list[tuple[int, int, int, int]]:
    """The file's layer spans (small: what the histogram pass needs of the scaled file)."""
    return scaled.spans
