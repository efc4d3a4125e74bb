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
from dataclasses import dataclass

import numpy as np
import polars as pl

from filterdb.analysis.groups import (
    GROUPING_COLUMNS,
    scaled_filters,
    scaled_filters_by,
    select_layers,
    stored_layers,
)
from filterdb.errors import FilterdbError, NoPCA
from filterdb.metrics.drift import DriftMatrix, drift_matrix
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


def pca_group(*, url: str | None = None, group: str, eps: float = DEFAULT_SPARSITY_EPS) -> GroupPCA:
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
    scaled = scaled_filters(layers, url=url, eps=eps)
    try:
        basis = fit_pca(scaled)
    except NoPCA as error:
        raise NoPCA(f"group {group}: {error}") from None
    return GroupPCA(group=group, eps=eps, basis=basis)


def drift(*, url: str | None = None, by: str, eps: float = DEFAULT_SPARSITY_EPS) -> DriftMatrix:
    """KL drift between the groups of every stored filter split ``by`` one column.

    One basis and one histogram range, fitted on the union of all groups (SPEC section 5,
    "drift (KL)"); each layer is read once. Groups are ordered for reading: depth bins
    from ``first`` to ``(0.9, 1.0]``, other groupings by name (:func:`ordered_groups`).
    A group with no non-sparse filter is in ``skipped``, not in the matrix.

    Parameters
    ----------
    url : str, optional
        Database URL; the default database when omitted.
    by : str
        depth, training_type, training_dataset, architecture or model.
    eps : float
        Sparsity threshold, as in :func:`pca_group`.

    Raises
    ------
    FilterdbError
        Unknown grouping or an empty database.
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
    groups = scaled_filters_by(layers, GROUPING_COLUMNS[by], url=url, eps=eps)
    try:
        return drift_matrix({name: groups[name] for name in ordered_groups(by, groups)})
    except NoPCA as error:
        raise NoPCA(f"drift by {by}: {error}") from None


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


def drift_json(result: DriftMatrix) -> str:
    """The drift matrix as a JSON document: names, matrix, ratios, n_filters, skipped,
    lo, hi (round-trip floats)."""
    document = {
        "names": list(result.names),
        "matrix": result.matrix.tolist(),
        "ratios": result.ratios.tolist(),
        "n_filters": list(result.n_filters),
        "skipped": list(result.skipped),
        "lo": result.lo,
        "hi": result.hi,
    }
    return json.dumps(document, indent=2)
