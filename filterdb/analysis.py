"""PCA eigen-filters of a group and KL drift between groups, as data, files and plots.

The math is in :mod:`filterdb.metrics.pca` and :mod:`filterdb.metrics.drift`; the layers
of a group come from :mod:`filterdb.groups`. This module reads a group's scaled non-sparse
filters from the database, runs the math, and writes what a person opens (PNG) and what a
program reads (CSV, JSON) at full precision (SPEC section 5: round-trip floats, never
rounded). The plotting functions take plain results, so reports can reuse them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from filterdb.errors import FilterdbError
from filterdb.files import output_directory
from filterdb.groups import (
    GROUPING_COLUMNS,
    scaled_filters,
    scaled_filters_by,
    select_layers,
    stored_layers,
)
from filterdb.metrics.drift import DriftMatrix, drift_matrix
from filterdb.metrics.layer import require_eps
from filterdb.metrics.pca import N_WEIGHTS, NoPCA, PCAResult, fit_pca
from filterdb.views import DEFAULT_SPARSITY_EPS, DEPTH_BIN_LABELS

WEIGHT_COLUMNS = tuple(f"w{j}" for j in range(N_WEIGHTS))
DPI = 120
# Above this many groups the heatmap's cell labels no longer fit a readable figure.
MAX_ANNOTATED_GROUPS = 25


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


def pca_group(url: str | None = None, *, group: str, eps: float = DEFAULT_SPARSITY_EPS) -> GroupPCA:
    """PCA eigen-filters of ``group`` (SPEC section 5, "PCA eigen-filters").

    Parameters
    ----------
    url : str, optional
        Database URL; the default database when omitted.
    group : str
        all, robust, normal, model=NAME, depth=BIN, dataset=NAME or architecture=NAME
        (:func:`filterdb.groups.select_layers`).
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
    layers = select_layers(stored_layers(url), group)
    scaled = scaled_filters(layers, url=url, eps=eps)
    try:
        basis = fit_pca(scaled)
    except NoPCA as error:
        raise NoPCA(f"group {group}: {error}") from None
    return GroupPCA(group=group, eps=eps, basis=basis)


def drift(url: str | None = None, *, by: str, eps: float = DEFAULT_SPARSITY_EPS) -> DriftMatrix:
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
    layers = stored_layers(url)
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
    :data:`filterdb.views.DEPTH_BIN_LABELS`.
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


def write_pca(result: GroupPCA, out_dir: Path) -> list[Path]:
    """Write ``pca.csv``, ``pca.json``, ``pca_components.png`` and ``pca_cumulative.png``
    into ``out_dir`` (created when missing); return the paths written."""
    out_dir = output_directory(out_dir)
    title = f"PCA of {result.group}: {result.n_filters:,} non-sparse filters (eps {result.eps:g})"
    csv_path, json_path = out_dir / "pca.csv", out_dir / "pca.json"
    pca_frame(result).write_csv(csv_path)
    json_path.write_text(pca_json(result) + "\n")
    return [
        csv_path,
        json_path,
        plot_eigen_filters(result.basis, out_dir / "pca_components.png", title=title),
        plot_cumulative_variance(result.basis, out_dir / "pca_cumulative.png", title=title),
    ]


def write_drift(result: DriftMatrix, out_dir: Path, *, title: str = "KL drift") -> list[Path]:
    """Write ``drift.csv``, ``drift.json`` and the heatmap ``drift.png`` into ``out_dir``
    (created when missing); return the paths written."""
    out_dir = output_directory(out_dir)
    csv_path, json_path = out_dir / "drift.csv", out_dir / "drift.json"
    drift_frame(result).write_csv(csv_path)
    json_path.write_text(drift_json(result) + "\n")
    return [csv_path, json_path, plot_drift_heatmap(result, out_dir / "drift.png", title=title)]


# --- plots ---------------------------------------------------------------------------------
# Figures are built without pyplot: no global state and no display backend needed.


def plot_eigen_filters(pca: PCAResult, path: Path, *, title: str) -> Path:
    """The nine components as 3x3 images on one symmetric colour scale, each titled with
    r_k and the cumulative ratio; saved as PNG at ``path``."""
    limit = float(np.abs(pca.components).max())
    figure = Figure(figsize=(7.5, 8), dpi=DPI, layout="constrained")
    axes = figure.subplots(3, 3)
    for k, axis in enumerate(axes.flat):
        image = axis.imshow(pca.images[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(
            f"component {k + 1}\nr = {pca.ratio[k]:.3f}, cum. {pca.cumulative[k]:.3f}",
            fontsize=9,
        )
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=axes, shrink=0.6, label="weight")
    figure.suptitle(title)
    figure.savefig(path, format="png")
    return path


def plot_cumulative_variance(pca: PCAResult, path: Path, *, title: str) -> Path:
    """Explained variance ratio per component (bars) and its cumulative curve; PNG."""
    ks = np.arange(1, N_WEIGHTS + 1)
    figure = Figure(figsize=(6.5, 4.5), dpi=DPI, layout="constrained")
    axis = figure.subplots()
    axis.bar(ks, pca.ratio, color="tab:gray", alpha=0.6, label="ratio r_k")
    axis.plot(ks, pca.cumulative, marker="o", color="tab:blue", label="cumulative")
    for k, value in zip(ks, pca.cumulative, strict=True):
        axis.annotate(
            f"{value:.3f}",
            (k, value),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    axis.set_xticks(ks)
    axis.set_ylim(0, 1.1)
    axis.set_xlabel("component k")
    axis.set_ylabel("explained variance ratio")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(loc="center right")
    axis.set_title(title, fontsize=10)
    figure.savefig(path, format="png")
    return path


def plot_drift_heatmap(result: DriftMatrix, path: Path, *, title: str) -> Path:
    """The drift matrix as a heatmap with each cell's value written in it (up to
    :data:`MAX_ANNOTATED_GROUPS` groups); PNG."""
    k = len(result.names)
    side = min(max(4.5, 0.75 * k + 2.5), 20.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(result.matrix, cmap="viridis", vmin=0.0)
    figure.colorbar(image, ax=axis, shrink=0.8, label="symmetric KL, weighted by r_k")
    axis.set_xticks(range(k), result.names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(k), result.names, fontsize=8)
    if k <= MAX_ANNOTATED_GROUPS:
        middle = (result.matrix.max() + result.matrix.min()) / 2
        for (i, j), value in np.ndenumerate(result.matrix):
            colour = "black" if value > middle else "white"  # viridis is light at the top
            axis.text(j, i, f"{value:.3g}", ha="center", va="center", color=colour, fontsize=8)
    subtitle = f"{sum(result.n_filters):,} filters, one basis"
    if result.skipped:
        subtitle += f"; no non-sparse filter: {', '.join(result.skipped)}"
    axis.set_title(f"{title}\n{subtitle}", fontsize=10)
    figure.savefig(path, format="png")
    return path
