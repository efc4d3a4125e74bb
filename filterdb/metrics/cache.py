"""The metric cache: compute what is missing or stale, store it, read it back per depth bin.

A cached value is keyed by (layer, metric, parameters, metric version). A layer's values
are stale when its metric version was bumped; a re-ingested model has new layer ids, so
nothing cached for its old layers applies (and
:func:`filterdb.warehouse.write.delete_model` removes it). Work streams layer by layer and
is written model by model, each in one short transaction, so memory stays bounded and
DuckDB's single writer is held briefly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from filterdb.device import resolve_device
from filterdb.metrics.layer import (
    layer_metrics,
    require_eps,
)
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS, METRICS, POOLED_METRICS, metric_params
from filterdb.warehouse import schema
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.inventory import require_models
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.read import iter_layer_filters
from filterdb.warehouse.write import utc_now

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ComputeProgress:
    """Progress of :func:`compute_metrics`: layers done out of layers to compute."""

    model_name: str
    layers_done: int
    layers_total: int


@dataclass(frozen=True)
class ComputeResult:
    """What :func:`compute_metrics` did: layers computed and values written."""

    n_models: int
    n_layers: int
    n_values: int


def compute_metrics(
    *,
    url: str | None = None,
    models: list[str] | None = None,
    eps: float = DEFAULT_SPARSITY_EPS,
    recompute: bool = False,
    device: str | torch.device = "auto",
    on_progress: Callable[[ComputeProgress], None] | None = None,
) -> ComputeResult:
    """Compute and cache every metric of SPEC section 5 that is missing or stale.

    ``models`` limits the work to those model names; ``recompute`` recomputes everything
    in scope. ``eps`` is the sparsity threshold, part of the cache key. A layer with NaN
    or infinite weights gets NULL values (:func:`filterdb.metrics.layer.layer_metrics`).

    Raises
    ------
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN; checked before the database is opened.
    filterdb.errors.FilterdbError
        No CUDA device for ``device="cuda"``, a database not at head, an unknown model.
    """
    require_eps(eps)
    target = resolve_device(device)
    with engine_for(url) as engine:
        require_head(engine)
        todo = _stale(engine, models, eps=eps, recompute=recompute)
        total = todo.height
        done, n_values = 0, 0
        for (model_name,), layers in todo.group_by("model_name", maintain_order=True):
            rows = []
            with engine.connect() as connection:
                shapes = layers.select("layer_id", "n_filters").iter_rows()
                weights = iter_layer_filters(connection, shapes, ahead=True)
                for layer, filters in zip(layers.iter_rows(named=True), weights, strict=True):
                    rows += _layer_rows(layer, filters, eps=eps, device=target)
                    done += 1
                    if on_progress:
                        on_progress(ComputeProgress(model_name, done, total))
            with engine.begin() as connection:
                _store(connection, rows)
            n_values += len(rows)
    n_models = todo["model_name"].n_unique() if total else 0
    return ComputeResult(n_models=n_models, n_layers=total, n_values=n_values)


def depth_profile(*, url: str | None = None, models: list[str] | None = None) -> pl.DataFrame:
    """Per model and depth bin, each metric pooled over the bin's layers (SPEC section 5).

    One row per (model, bin) that holds a layer; bins are ``first`` then the deciles
    ``(0.0, 0.1]`` ... ``(0.9, 1.0]``, assigned from the integers (``v_layers.depth_bin``).
    A bin's value is sum(value x support) / sum(support) over its layers whose value is not
    NULL: the share of sparse filters for sparsity, entropies weighted by the filters they
    were computed on, orthogonality by C_out. Values use the default sparsity threshold and
    the current metric versions: a metric whose version was bumped is NULL until
    :func:`compute_metrics` computes it again.
    """
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            if models is not None:
                require_models(connection, models)
            rows = read_frame(connection, _PROFILE_SQL)
    if models is not None:
        rows = rows.filter(pl.col("model_name").is_in(models))
    keys = ["model_id", "model_name", "training_type", "training_dataset", "architecture"]
    keys += ["depth_bin_index", "depth_bin"]
    bins = rows.group_by(keys).agg(pl.col("layer_id").n_unique().alias("n_layers"))
    current = _current_keys(eps=DEFAULT_SPARSITY_EPS)
    pooled = (
        rows.with_columns(pl.col("version").cast(pl.Int64))
        .join(current, on=["metric", "params", "version"], how="semi")
        .filter(pl.col("value").is_not_null())
        .group_by([*keys, "metric"])
        .agg(((pl.col("value") * pl.col("support")).sum() / pl.col("support").sum()).alias("value"))
    )
    profile = bins
    for metric in POOLED_METRICS:
        values = pooled.filter(pl.col("metric") == metric).select(
            [*keys, pl.col("value").alias(metric)]
        )
        profile = profile.join(values, on=keys, how="left", nulls_equal=True)
    return profile.sort(["model_name", "depth_bin_index"])


# Every layer (a bin counts its layers even with nothing cached) with its cached rows; which
# rows count (default eps, current versions) is decided by _current_keys, in one place.
_PROFILE_SQL = """
SELECT l.model_id, l.model_name, l.training_type, l.training_dataset, l.architecture,
    l.depth_bin_index, l.depth_bin, l.layer_id, c.metric, c.params, c.version, c.value,
    c.support
FROM v_layers l
LEFT JOIN metric_cache c ON c.layer_id = l.layer_id
"""


def _current_keys(*, eps: float) -> pl.DataFrame:
    """The cache key (metric, params, version) of every metric's current value at ``eps``."""
    return pl.DataFrame(
        {
            "metric": list(METRICS),
            "params": [metric_params(m, eps=eps) for m in METRICS],
            "version": [m.version for m in METRICS.values()],
        },
        schema={"metric": pl.String, "params": pl.String, "version": pl.Int64},
    )


def _stale(
    engine: Engine, models: list[str] | None, *, eps: float, recompute: bool
) -> pl.DataFrame:
    """Layers with at least one metric missing at its current version and parameters."""
    with engine.connect() as connection:
        if models is not None:
            require_models(connection, models)
        layers = read_frame(
            connection,
            "SELECT layer_id, model_id, model_name, layer_name, out_channels, in_channels, "
            "groups, n_filters FROM v_layers ORDER BY model_name, conv_index",
        )
        cached = read_frame(
            connection, "SELECT layer_id, metric, params, version FROM metric_cache"
        )
    if models is not None:
        layers = layers.filter(pl.col("model_name").is_in(models))
    needed = layers.select("layer_id").join(_current_keys(eps=eps), how="cross")
    if not recompute:
        present = cached.with_columns(
            pl.col("layer_id").cast(layers.schema["layer_id"]), pl.col("version").cast(pl.Int64)
        )
        needed = needed.join(present, on=["layer_id", "metric", "params", "version"], how="anti")
    missing = needed.group_by("layer_id").agg(pl.col("metric"))
    return layers.join(missing, on="layer_id", how="inner", maintain_order="left")


def _layer_rows(
    layer: dict, filters: np.ndarray, *, eps: float, device: torch.device
) -> list[dict]:
    per_out = layer["in_channels"] // layer["groups"]
    weight = filters.reshape(layer["out_channels"], per_out, 3, 3)
    values = layer_metrics(weight, eps=eps, device=device)
    computed_at = utc_now()
    return [
        {
            "layer_id": layer["layer_id"],
            "model_id": layer["model_id"],
            "metric": metric,
            "params": metric_params(metric, eps=eps),
            "version": METRICS[metric].version,
            "value": values[metric].value,
            "support": values[metric].support,
            "computed_at": computed_at,
        }
        for metric in layer["metric"]
    ]


def _store(connection: Connection, rows: list[dict]) -> None:
    """Replace the cached values of ``rows``' (layer, metric, params), every version."""
    cache = schema.metric_cache
    layers_by_key: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        layers_by_key.setdefault((row["metric"], row["params"]), []).append(row["layer_id"])
    for (metric, params), layer_ids in layers_by_key.items():
        connection.execute(
            sa.delete(cache).where(
                cache.c.metric == metric,
                cache.c.params == params,
                cache.c.layer_id.in_(layer_ids),
            )
        )
    if rows:
        connection.execute(sa.insert(cache), rows)
