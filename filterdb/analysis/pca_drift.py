"""PCA eigen-filters of a group and KL drift between groups, over the database.

The math is in :mod:`filterdb.metrics.pca` and :mod:`filterdb.metrics.drift`; the layers
of a group come from :mod:`filterdb.analysis.groups`. This module reads a group's scaled
non-sparse filters from the database, runs the math, and gives the results as frames and
JSON at full precision (SPEC section 5: round-trip floats, never rounded);
:mod:`filterdb.reports.pca_drift` writes them to files with their plots.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from filterdb.analysis.groups import (
    GROUPING_COLUMNS,
    compared_weights_form,
    group_keys,
    scaled_filters,
    scaled_filters_by,
    select_layers,
    stored_layers,
)
from filterdb.errors import FilterdbError, NoPCA
from filterdb.metrics.drift import NOISE_LEVEL, NULL_SEED, DriftMatrix, drift_matrix
from filterdb.metrics.engine import parse_engine
from filterdb.metrics.layer import require_eps
from filterdb.metrics.pca import N_WEIGHTS, PCAResult, fit_pca
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS
from filterdb.warehouse.views import DEPTH_BIN_LABELS

WEIGHT_COLUMNS = tuple(f"w{j}" for j in range(N_WEIGHTS))


@dataclass(frozen=True)
class GroupPCA:
    """The eigen-filters of one group of stored filters.

    Attributes
    ----------
    group : str
        The group, as given (``robust``, ``model=NAME``, ``depth=BIN``...).
    eps : float
        Sparsity threshold used to drop the group's sparse filters.
    basis : PCAResult
        The PCA of the group's scaled non-sparse filters.
    """

    group: str
    eps: float
    basis: PCAResult

    @property
    def components(self) -> np.ndarray:
        """(9, 9) unit eigenvectors as rows, by decreasing eigenvalue, sign rule applied."""
        return self.basis.components

    @property
    def ratios(self) -> np.ndarray:
        """(9,) explained variance ratios r_k."""
        return self.basis.ratio

    @property
    def cumulative(self) -> np.ndarray:
        """(9,) cumulative explained variance ratios."""
        return self.basis.cumulative

    @property
    def n_filters(self) -> int:
        """Number of scaled non-sparse filters the PCA was fitted on."""
        return self.basis.n_filters


def pca_group(
    *,
    url: str | None = None,
    group: str,
    eps: float = DEFAULT_SPARSITY_EPS,
    engine: str | None = None,
    lake: str | Path | None = None,
) -> GroupPCA:
    """PCA eigen-filters of ``group`` (SPEC section 5, "PCA eigen-filters").

    Parameters
    ----------
    url : str, optional
        Database URL; the default database when omitted.
    group : str
        all, robust, normal, model=NAME, depth=BIN, dataset=NAME or architecture=NAME
        (:func:`filterdb.analysis.groups.select_layers`).
    eps : float
        Sparsity threshold: a filter whose largest |weight| is at most ``eps`` times its
        layer max is dropped.
    engine : str, optional
        ``local`` (default: ``$FILTERDB_ENGINE``, else local), ``dask-local[:N]`` or
        ``dask://HOST:PORT``: on Dask, the workers add up per-file partials of the lake
        at ``lake`` (:mod:`filterdb.metrics.dask_groups`); the result equals the local one
        to about 1e-15 relative.
    lake : str or Path, optional
        The lake a Dask engine reads (:func:`filterdb.metrics.cache.default_lake`).

    Raises
    ------
    FilterdbError
        Unknown group or a group without stored layers.
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN (checked before anything is read).
    filterdb.metrics.pca.NoPCA
        The group has fewer than 9 non-sparse filters or no variance.
    """
    require_eps(eps)
    layers = select_layers(stored_layers(url=url), group)
    try:
        if parse_engine(engine).is_local:
            basis = fit_pca(scaled_filters(layers, url=url, eps=eps))
        else:
            from filterdb.metrics.dask_groups import pca_on_engine

            basis = pca_on_engine(layers, url=url, engine=engine, lake=lake, eps=eps)
    except NoPCA as error:
        raise NoPCA(f"group {group}: {error}") from None
    return GroupPCA(group=group, eps=eps, basis=basis)


def drift(
    *,
    url: str | None = None,
    by: str,
    eps: float = DEFAULT_SPARSITY_EPS,
    mixed_forms: bool = False,
    seed: int = NULL_SEED,
    engine: str | None = None,
    lake: str | Path | None = None,
) -> DriftMatrix:
    """KL drift between the groups of every stored filter split ``by`` one column.

    One basis and one histogram range, fitted on the union of all groups (SPEC section 5,
    "drift (KL)"); each layer is read once. Groups are ordered for reading: depth bins
    from ``first`` to ``(0.9, 1.0]``, other groupings by name (:func:`ordered_groups`).
    A group with no non-sparse filter is in ``skipped``, not in the matrix. Every cell
    carries its seeded permutation null (``nulls``, seeded by ``seed``), and the result
    its ``weights_form``: stored models of several forms are refused unless
    ``mixed_forms`` (:func:`filterdb.analysis.groups.compared_weights_form`).

    Parameters
    ----------
    url : str, optional
        Database URL; the default database when omitted.
    by : str
        depth, training_type, training_dataset, architecture or model.
    eps : float
        Sparsity threshold, as in :func:`pca_group`.
    engine, lake : str, optional
        Where to compute, as in :func:`pca_group`.

    Raises
    ------
    FilterdbError
        Unknown grouping, an empty database, or models of several weights forms without
        ``mixed_forms``.
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN (checked before anything is read).
    filterdb.metrics.pca.NoPCA
        The union of the groups has fewer than 9 non-sparse filters or no variance.
    """
    if by not in GROUPING_COLUMNS:
        raise FilterdbError(f"cannot group by {by!r}; use one of {', '.join(GROUPING_COLUMNS)}")
    require_eps(eps)
    layers = stored_layers(url=url)
    if layers.height == 0:
        raise FilterdbError("the database holds no layers; ingest models first (`filterdb ingest`)")
    forms = dict(layers.select("model_name", "weights_form").unique().iter_rows())
    form = compared_weights_form(forms, mixed_forms=mixed_forms, what=f"drift by {by}")
    try:
        if parse_engine(engine).is_local:
            groups = scaled_filters_by(layers, GROUPING_COLUMNS[by], url=url, eps=eps)
            result = drift_matrix(
                {name: groups[name] for name in ordered_groups(by, groups)}, seed=seed
            )
        else:
            from filterdb.metrics.dask_groups import drift_matrix_on_engine

            keys = group_keys(layers, GROUPING_COLUMNS[by])
            result = drift_matrix_on_engine(
                layers,
                keys,
                ordered_groups(by, set(keys)),
                url=url,
                engine=engine,
                lake=lake,
                eps=eps,
                seed=seed,
            )
    except NoPCA as error:
        raise NoPCA(f"drift by {by}: {error}") from None
    return replace(result, weights_form=form)


def ordered_groups(by: str, names: Iterable[str]) -> list[str]:
    """``names`` in reading order: depth bins shallow to deep, anything else by name.

    Depth labels sort wrongly as text (``first`` would come last), so they follow
    :data:`filterdb.warehouse.views.DEPTH_BIN_LABELS`.
    """
    if by == "depth":
        return sorted(names, key=DEPTH_BIN_LABELS.index)
    return sorted(names)


# --- tables and documents: full precision (SPEC section 5) --------------------------------


def pca_frame(result: GroupPCA) -> pl.DataFrame:
    """One row per component k (1-based): component, ratio, cumulative, w0..w8."""
    return pl.DataFrame(
        {
            "component": np.arange(1, N_WEIGHTS + 1),
            "ratio": result.ratios,
            "cumulative": result.cumulative,
            **{name: result.components[:, j] for j, name in enumerate(WEIGHT_COLUMNS)},
        }
    )


def pca_json(result: GroupPCA) -> str:
    """The PCA as a JSON document: group, eps, n_filters, mean, and :func:`pca_frame` rows.

    ``json`` writes Python floats with ``repr``, which round-trips every float64.
    """
    document = {
        "group": result.group,
        "eps": result.eps,
        "n_filters": result.n_filters,
        "mean": result.basis.mean.tolist(),
        "components": pca_frame(result).to_dicts(),
    }
    return json.dumps(document, indent=2)


def drift_frame(result: DriftMatrix) -> pl.DataFrame:
    """The square drift matrix: a first column of group names (empty header), then one
    column per group, in ``result.names`` order."""
    # The first header is empty so that no group name can collide with it.
    return pl.DataFrame(
        {"": list(result.names), **dict(zip(result.names, result.matrix.T, strict=True))}
    )


def drift_null_frame(result: DriftMatrix) -> pl.DataFrame:
    """One row per pair of groups: drift beside its permutation null.

    Columns group_a, group_b, drift, null_median, null_low, null_high (5th and 95th
    percentiles), p_value, within_noise (p >= 0.05), null_size_a, null_size_b (the group
    sizes the null was drawn for: a subsample above 2,048 filters a pair), n_permutations.
    """
    rows = [
        {
            "group_a": result.names[i],
            "group_b": result.names[j],
            "drift": float(result.matrix[i, j]),
            "null_median": null.median,
            "null_low": null.low,
            "null_high": null.high,
            "p_value": null.p_value,
            "within_noise": null.within_noise,
            "null_size_a": null.sizes[0],
            "null_size_b": null.sizes[1],
            "n_permutations": null.n_permutations,
        }
        for (i, j), null in sorted(result.nulls.items())
    ]
    schema = {
        "group_a": pl.String,
        "group_b": pl.String,
        "drift": pl.Float64,
        "null_median": pl.Float64,
        "null_low": pl.Float64,
        "null_high": pl.Float64,
        "p_value": pl.Float64,
        "within_noise": pl.Boolean,
        "null_size_a": pl.Int64,
        "null_size_b": pl.Int64,
        "n_permutations": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def drift_json(result: DriftMatrix) -> str:
    """The drift matrix as a JSON document: names, matrix, ratios, n_filters, skipped,
    lo, hi, weights_form, and the noise reference of every cell: null_median, null_low,
    null_high, p_value (NaN-free: null where there is none, the diagonal), noise_level
    and the per-pair rows of :func:`drift_null_frame` (round-trip floats)."""

    def matrix_of(attribute: str) -> list[list[float | None]]:
        values = result.null_matrix(attribute)
        return [[None if np.isnan(v) else float(v) for v in row] for row in values]

    document = {
        "names": list(result.names),
        "matrix": result.matrix.tolist(),
        "ratios": result.ratios.tolist(),
        "n_filters": list(result.n_filters),
        "skipped": list(result.skipped),
        "lo": result.lo,
        "hi": result.hi,
        "weights_form": result.weights_form,
        "null": {
            "method": "label permutation, same basis, range and bins",
            "noise_level": NOISE_LEVEL,
            "median": matrix_of("median"),
            "low": matrix_of("low"),
            "high": matrix_of("high"),
            "p_value": matrix_of("p_value"),
            "pairs": drift_null_frame(result).to_dicts(),
        },
    }
    return json.dumps(document, indent=2)
