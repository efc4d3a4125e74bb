"""The metric cache: compute what is missing or stale, store it, read it back per depth bin.

A cached value is keyed by (layer, metric, parameters, metric version). A layer's values
are stale when its metric version was bumped; a re-ingested model has new layer ids, so
nothing cached for its old layers applies (and
:func:`filterdb.warehouse.write.delete_model` removes it). Work streams layer by layer and
is written model by model, each in one short transaction, so memory stays bounded and
DuckDB's single writer is held briefly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from filterdb.device import resolve_device
from filterdb.errors import FilterdbError
from filterdb.metrics.engine import Engine as EngineSpec
from filterdb.metrics.engine import parse_engine
from filterdb.metrics.layer import (
    layer_metrics,
    require_eps,
)
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS, METRICS, POOLED_METRICS, metric_params
from filterdb.warehouse import schema
from filterdb.warehouse.database import engine_for, read_frame, resolve_url
from filterdb.warehouse.inventory import require_models
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.read import iter_layer_filters
from filterdb.warehouse.records import ExtractedModel
from filterdb.warehouse.write import utc_now

if TYPE_CHECKING:
    import torch

LAKE_ENVIRONMENT_VARIABLE = "FILTERDB_LAKE"


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
    engine: str | None = None,
    lake: str | Path | None = None,
) -> ComputeResult:
    """Compute and cache every metric of SPEC section 5 that is missing or stale.

    ``models`` limits the work to those model names; ``recompute`` recomputes everything
    in scope. ``eps`` is the sparsity threshold, part of the cache key. A layer with NaN
    or infinite weights gets NULL values (:func:`filterdb.metrics.layer.layer_metrics`).

    ``engine`` (:func:`filterdb.metrics.engine.parse_engine`; default
    ``$FILTERDB_ENGINE``, else ``local``) says where the work runs. On a Dask engine the
    lake at ``lake`` (default: ``$FILTERDB_LAKE``, else ``<file>.lake`` beside a DuckDB
    file) is brought up to date first, one task per lake file computes its stale layers on
    a worker with the same kernels (on the CPU) and the client writes every value in one
    transaction: the cache then holds, bit for bit, what ``--engine local --device cpu``
    writes. Workers read only the lake, never the database.

    Raises
    ------
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN; checked before the database is opened.
    filterdb.errors.FilterdbError
        No CUDA device for ``device="cuda"``, a database not at head, an unknown model.
    """
    require_eps(eps)
    where = parse_engine(engine)
    if not where.is_local:
        return _compute_on_dask(
            where,
            url=url,
            models=models,
            eps=eps,
            recompute=recompute,
            lake=lake,
            on_progress=on_progress,
        )
    # torch takes 2 s to import: loaded when a layer needs computing, or to refuse a device
    # asked for by name that is not there; a report of cached models never needs it.
    target = None if str(device) in ("auto", "cpu") else resolve_device(device)
    with engine_for(url) as engine:
        require_head(engine)
        todo = _stale(engine, models, eps=eps, recompute=recompute)
        total = todo.height
        if total and target is None:
            target = resolve_device(device)
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


class IngestMetrics:
    """``ingest --metrics``: every layer metric of a model computed from its weights in memory.

    Give one to the ingest functions (``metrics=``): :meth:`start` begins computing the
    layers of an extracted model in a thread, while the model is written; the pipeline
    then calls :meth:`PendingMetrics.cache_layer_metrics` in the model's own write
    transaction, so the cache holds a model's values exactly when the model is stored.
    The values are those :func:`compute_metrics` caches for the model's layers, bit for
    bit on the same device: the same kernel on the same float32 filters.

    ``device`` ``auto`` is CUDA when there is one (the metrics gain most there, README
    "Performance"), else the CPU.

    Raises
    ------
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN (checked here, before any ingest).
    """

    def __init__(
        self, *, eps: float = DEFAULT_SPARSITY_EPS, device: str | torch.device = "auto"
    ) -> None:
        require_eps(eps)
        self.eps = eps
        self.device = resolve_device(device)

    def start(self, extracted: ExtractedModel) -> PendingMetrics:
        """Compute the metrics of every layer of ``extracted`` in a thread of their own."""
        return PendingMetrics(extracted, eps=self.eps, device=self.device)


class PendingMetrics:
    """The metrics of one extracted model, being computed; stored by cache_layer_metrics."""

    def __init__(self, extracted: ExtractedModel, *, eps: float, device: torch.device) -> None:
        self.eps = eps
        self._layers = [(layer.conv_index, layer) for layer in extracted.layers]
        self._values: dict[int, dict] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        # torch and its BLAS release the GIL: the layers are measured while the main thread
        # writes the rows (DuckDB and psycopg release it too).
        import torch

        threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._compute, args=(device, threads), daemon=True)
        self._thread.start()

    def _compute(self, device: torch.device, threads: int) -> None:
        import torch

        try:
            # The caller's thread count, as compute_metrics runs with: torch's float64 sums
            # split their work by it (filterdb.metrics.tasks), and a new thread may start
            # from the default count.
            torch.set_num_threads(threads)
            for conv_index, layer in self._layers:
                if self._stop.is_set():
                    return
                weight = layer.filters.reshape(
                    layer.out_channels, layer.filters_per_out_channel, 3, 3
                )
                self._values[conv_index] = layer_metrics(weight, eps=self.eps, device=device)
        except BaseException as error:  # raised in the writing thread, by cache_layer_metrics
            self._error = error

    def cache_layer_metrics(self, connection: Connection, model_id: int) -> int:
        """Wait for the values and insert them for the stored model ``model_id``.

        Runs in the caller's transaction (the one that wrote the model). Returns the number
        of values written.
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        layer = schema.layer.c
        layer_ids = dict(
            connection.execute(
                sa.select(layer.conv_index, layer.layer_id).where(layer.model_id == model_id)
            ).all()
        )
        computed_at = utc_now()
        rows = [
            {
                "layer_id": layer_ids[conv_index],
                "model_id": model_id,
                "metric": metric,
                "params": metric_params(metric, eps=self.eps),
                "version": METRICS[metric].version,
                "value": value.value,
                "support": value.support,
                "computed_at": computed_at,
            }
            for conv_index, values in self._values.items()
            for metric, value in values.items()
        ]
        _store(connection, rows)
        return len(rows)

    def cancel(self) -> None:
        """Stop after the layer in hand (the model was not stored) and wait for the thread."""
        self._stop.set()
        self._thread.join()


def _compute_on_dask(
    where: EngineSpec,
    *,
    url: str | None,
    models: list[str] | None,
    eps: float,
    recompute: bool,
    lake: str | Path | None,
    on_progress: Callable[[ComputeProgress], None] | None,
) -> ComputeResult:
    import torch

    # Only the Dask path needs the lake's Parquet code and the workers' tasks: `filterdb
    # metrics` on the local engine starts without them.
    from filterdb.lake.write import sync_lake
    from filterdb.metrics.engine import dask_client
    from filterdb.metrics.tasks import file_metrics

    location = str(lake or default_lake(url))
    with engine_for(url) as engine:
        require_head(engine)
        todo = _stale(engine, models, eps=eps, recompute=recompute)
    if todo.height == 0:
        return ComputeResult(n_models=0, n_layers=0, n_values=0)
    manifest = sync_lake(url=url, lake=location, models=todo["model_name"].unique().to_list())
    names = dict(todo.select("layer_id", "model_name").iter_rows())
    by_file = _layers_by_file(todo, manifest.manifest)
    rows, done = [], 0
    with dask_client(where) as client:
        futures = [
            client.submit(
                file_metrics,
                location,
                file,
                layers,
                eps=eps,
                torch_threads=torch.get_num_threads(),
                pure=False,
            )
            for file, layers in by_file.items()
        ]
        from distributed import as_completed

        model_ids = dict(todo.select("layer_id", "model_id").iter_rows())
        for future in as_completed(futures):
            table = future.result()
            computed_at = utc_now()
            for row in table.to_pylist():
                rows.append(
                    {
                        **row,
                        "model_id": model_ids[row["layer_id"]],
                        "params": metric_params(row["metric"], eps=eps),
                        "version": METRICS[row["metric"]].version,
                        "computed_at": computed_at,
                    }
                )
            for layer_id in sorted(set(table["layer_id"].to_pylist())):
                done += 1
                if on_progress:
                    on_progress(ComputeProgress(names[layer_id], done, todo.height))
    # One transaction for the whole run: a client stopped midway leaves no partial run.
    with engine_for(url) as engine, engine.begin() as connection:
        _store(connection, rows)
    return ComputeResult(
        n_models=todo["model_name"].n_unique(), n_layers=todo.height, n_values=len(rows)
    )


def default_lake(url: str | None) -> Path:
    """The lake of a database: ``$FILTERDB_LAKE``, else ``<file>.lake`` beside a DuckDB file.

    Raises :class:`FilterdbError` for another database without ``$FILTERDB_LAKE``.
    """
    if os.environ.get(LAKE_ENVIRONMENT_VARIABLE):
        return Path(os.environ[LAKE_ENVIRONMENT_VARIABLE])
    resolved = sa.make_url(resolve_url(url))
    if resolved.get_backend_name() == "duckdb" and resolved.database not in (None, ":memory:"):
        return Path(f"{resolved.database}.lake")
    raise FilterdbError(
        f"a Dask engine reads the lake; give --lake DIR|URL (or ${LAKE_ENVIRONMENT_VARIABLE}) "
        "that the workers can reach"
    )


def _layers_by_file(todo: pl.DataFrame, manifest: dict) -> dict[str, list[dict]]:
    """The stale layers grouped by the lake file that holds them."""
    by_file: dict[str, list[dict]] = {}
    for layer in todo.iter_rows(named=True):
        files = manifest["models"][str(layer["model_id"])]["files"]
        file = next(
            f["path"] for f in files if f["min_layer_id"] <= layer["layer_id"] <= f["max_layer_id"]
        )
        by_file.setdefault(file, []).append(
            {
                "layer_id": layer["layer_id"],
                "n_filters": layer["n_filters"],
                "out_channels": layer["out_channels"],
                "per_out": layer["in_channels"] // layer["groups"],
                "metric": list(layer["metric"]),
            }
        )
    return by_file


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
