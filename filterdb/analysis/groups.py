"""Groups of stored filters for PCA and drift: which layers, and their scaled filters.

A group is a set of layers (a model, robust or normal models, a depth bin, a dataset...).
PCA and drift work on the group's non-sparse filters, each divided by its own largest
absolute weight, where "sparse" is judged against each filter's own layer max (SPEC
section 5). Filters are read layer by layer and only the scaled non-sparse ones are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl

from filterdb.errors import FilterdbError
from filterdb.metrics.layer import peak_divisors
from filterdb.metrics.pca import N_WEIGHTS, non_sparse_mask, scale_non_sparse
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.read import iter_layer_columns, iter_layer_filters
from filterdb.warehouse.views import DEPTH_BIN_LABELS

GROUP_KINDS = ("all", "robust", "normal", "model", "depth", "dataset", "architecture")

# How each grouping of ``filterdb drift --by`` splits the layers: a v_layers column.
GROUPING_COLUMNS = {
    "depth": "depth_bin",
    "training_type": "training_type",
    "training_dataset": "training_dataset",
    "architecture": "architecture",
    "model": "model_name",
}


def stored_layers(*, url: str | None = None) -> pl.DataFrame:
    """Every stored layer (``v_layers``) with what grouping needs, ordered by model."""
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            return read_frame(connection, "SELECT * FROM v_layers ORDER BY model_name, conv_index")


def compared_weights_form(
    forms: Mapping[str, str | None], *, mixed_forms: bool = False, what: str = "the comparison"
) -> str:
    """The one weights form of the compared models (``raw``, ``bn_folded``, ``as_exported``).

    ``forms`` maps each compared model to its form. Folded and raw filters of one network
    differ by up to 1.6 times the layer max (PLATFORM.md), so a comparison across forms
    measures the folding as much as the training: it is refused unless ``mixed_forms``,
    and then the form reads ``mixed (raw: 2, bn_folded: 3)``.

    Raises
    ------
    FilterdbError
        The models hold more than one form and ``mixed_forms`` is false.
    """
    counts: dict[str, int] = {}
    for form in forms.values():
        counts[form or "unknown"] = counts.get(form or "unknown", 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), "none")
    listed = ", ".join(f"{form}: {n}" for form, n in sorted(counts.items()))
    if not mixed_forms:
        raise FilterdbError(
            f"{what} mixes weights forms ({listed} models); compare one form (ingest the "
            "others again with or without --fold-batchnorm, or choose with --weights-form), "
            "or pass --mixed-forms to compare them anyway"
        )
    return f"mixed ({listed})"


def select_layers(layers: pl.DataFrame, group: str) -> pl.DataFrame:
    """The layers of ``group``: all, robust, normal, model=NAME, depth=BIN, dataset=NAME,
    architecture=NAME. Raises a one-line error for an unknown group or an empty one."""
    kind, _, value = group.partition("=")
    if kind not in GROUP_KINDS or (kind in ("all", "robust", "normal")) == bool(value):
        raise FilterdbError(
            f"unknown group {group!r}; use all, robust, normal, model=NAME, depth=BIN, "
            "dataset=NAME or architecture=NAME"
        )
    if kind == "depth" and value not in DEPTH_BIN_LABELS:
        raise FilterdbError(
            f"unknown depth bin {value!r}; use one of {', '.join(DEPTH_BIN_LABELS)}"
        )
    condition = {
        "all": pl.lit(True),
        "robust": pl.col("robust"),
        "normal": ~pl.col("robust"),
        "model": pl.col("model_name") == value,
        "depth": pl.col("depth_bin") == value,
        "dataset": pl.col("training_dataset") == value,
        "architecture": pl.col("architecture") == value,
    }[kind]
    selected = layers.filter(condition.fill_null(False))
    if selected.height == 0:
        raise FilterdbError(f"group {group} holds no stored layer; `filterdb models` lists them")
    return selected


def scaled_filters(
    layers: pl.DataFrame, *, url: str | None = None, eps: float = DEFAULT_SPARSITY_EPS
) -> np.ndarray:
    """The non-sparse filters of ``layers``, each scaled to max |w| 1, pooled (float64)."""
    return np.concatenate(list(_scaled_per_layer(layers, url=url, eps=eps)) or [np.empty((0, 9))])


def scaled_filters_by(
    layers: pl.DataFrame, column: str, *, url: str | None = None, eps: float = DEFAULT_SPARSITY_EPS
) -> dict[str, np.ndarray]:
    """Scaled non-sparse filters pooled per value of ``column`` (NULL becomes "unknown").

    Each layer is read once, whatever the number of groups.
    """
    keys = group_keys(layers, column)
    pooled: dict[str, list[np.ndarray]] = {}
    for key, filters in zip(keys, _scaled_per_layer(layers, url=url, eps=eps), strict=True):
        pooled.setdefault(key, []).append(filters)
    return {key: np.concatenate(parts) for key, parts in pooled.items()}


def scaled_union_by(
    layers: pl.DataFrame,
    column: str,
    order: Iterable[str],
    *,
    url: str | None = None,
    eps: float = DEFAULT_SPARSITY_EPS,
) -> tuple[np.ndarray, dict[str, int]]:
    """The groups of :func:`scaled_filters_by`, in ``order``, as one (n, 9) float64 array.

    Returns the array (column-major, so each weight's column is contiguous), group after
    group in ``order`` (a name without layers holds no rows; groups not in ``order`` are
    left out), and each name's row count. The same values as concatenating
    :func:`scaled_filters_by`'s groups, without the copies: each layer is read once and
    its non-sparse rows divided once into the preallocated union (three copies of 7.6M
    filters cost 1.6 s of a 100-model report, bench/report.py).
    """
    order = list(order)
    wanted = set(order)
    parts: dict[str, list[tuple[tuple, np.ndarray, np.ndarray]]] = {n: [] for n in order}
    keys = group_keys(layers, column)
    with engine_for(url) as engine, engine.connect() as connection:
        shapes = layers.select("layer_id", "n_filters").iter_rows()
        # Column by column: every step below works on one weight's contiguous column.
        batches = iter_layer_columns(connection, shapes, ahead=True)
        for key, columns, layer_max in zip(keys, batches, layers["max_abs"], strict=True):
            if key in wanted:
                parts[key].append((columns, *non_sparse_mask(columns, layer_max, eps=eps)))
    sizes = {name: sum(int(kept.sum()) for _, kept, _ in parts[name]) for name in order}
    union = np.empty((sum(sizes.values()), N_WEIGHTS), order="F")
    at = 0
    for name in order:
        for columns, kept, peaks in parts[name]:
            # The kept rows' positions, found once for the nine columns: a boolean mask
            # per column took twice as long (0.29 s against 0.15 s for 1,700 layers).
            index = None if kept.all() else np.flatnonzero(kept)
            divisors = peak_divisors(peaks if index is None else peaks.take(index))
            rows = slice(at, at + len(divisors))
            for j in range(N_WEIGHTS):
                # Widened to float64 inside the division (exactly) and divided straight
                # into the union's contiguous column: one pass, scale_by_peak's bits.
                column = columns[j] if index is None else columns[j].take(index)
                np.divide(column, divisors, out=union[rows, j])
            at = rows.stop
        parts[name].clear()  # the batches go as soon as their rows are copied
    return union, sizes


def group_keys(layers: pl.DataFrame, column: str) -> list[str]:
    """Each layer's group: its value of ``column`` as text, NULL as "unknown"."""
    return layers[column].cast(pl.String).fill_null("unknown").to_list()


def _scaled_per_layer(layers: pl.DataFrame, *, url: str | None, eps: float) -> Iterable[np.ndarray]:
    with engine_for(url) as engine, engine.connect() as connection:
        shapes = layers.select("layer_id", "n_filters").iter_rows()
        for filters, layer_max in zip(
            iter_layer_filters(connection, shapes, ahead=True), layers["max_abs"], strict=True
        ):
            yield scale_non_sparse(filters, layer_max, eps=eps)
