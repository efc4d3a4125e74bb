"""The notebook entry point: ``filterdb.connect()`` and methods that return Polars frames.

Each method is a thin call into the module that owns the work (inventory, cache, query), so
the CLI and a notebook see the same results.
"""

from __future__ import annotations

import polars as pl
import torch

from filterdb import analysis, cache, inventory, query
from filterdb.analysis import GroupPCA
from filterdb.cache import ComputeResult
from filterdb.database import resolve_url
from filterdb.metrics.drift import DriftMatrix
from filterdb.views import DEFAULT_SPARSITY_EPS


class FilterDB:
    """A filterdb database, named by its URL; every method opens and closes what it needs.

    Holding no connection between calls keeps a DuckDB file free for other processes.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)

    def __repr__(self) -> str:
        return f"FilterDB({self.url!r})"

    def query(self, sql: str, *, write: bool = False) -> pl.DataFrame:
        """Run one SQL statement; read-only unless ``write`` (see :mod:`filterdb.query`)."""
        return query.run_query(sql, url=self.url, write=write)

    def models(self) -> pl.DataFrame:
        """One row per stored model (``v_models``)."""
        return inventory.models(self.url)

    def layers(self, model: str | None = None) -> pl.DataFrame:
        """One row per stored layer (``v_layers``), of ``model`` or of all models."""
        return inventory.layers(self.url, model=model)

    def layer_metrics(self, model: str | None = None) -> pl.DataFrame:
        """``v_layer_metrics``: layers with their cached metrics (NULL until computed)."""
        return inventory.layer_metrics(self.url, model=model)

    def depth_profile(self, model: str | None = None) -> pl.DataFrame:
        """Each metric per model and depth bin, pooled as SPEC section 5 says."""
        return cache.depth_profile(self.url, models=None if model is None else [model])

    def pca(self, group: str, *, eps: float = DEFAULT_SPARSITY_EPS) -> GroupPCA:
        """PCA eigen-filters of a group: all, robust, normal, model=NAME, depth=BIN, ..."""
        return analysis.pca_group(self.url, group=group, eps=eps)

    def drift(self, by: str, *, eps: float = DEFAULT_SPARSITY_EPS) -> DriftMatrix:
        """KL drift matrix between groups: depth, training_type, architecture, model, ..."""
        return analysis.drift(self.url, by=by, eps=eps)

    def compute_metrics(
        self,
        *,
        models: list[str] | None = None,
        eps: float = DEFAULT_SPARSITY_EPS,
        recompute: bool = False,
        device: str | torch.device = "auto",
    ) -> ComputeResult:
        """Compute and cache the metrics that are missing or stale."""
        return cache.compute_metrics(
            self.url, models=models, eps=eps, recompute=recompute, device=device
        )


def connect(url: str | None = None) -> FilterDB:
    """Open filterdb at ``url`` (default: ``$FILTERDB_URL``, else ``filterdb.duckdb``)."""
    return FilterDB(url)
