"""Distribution drift between groups of filters: weighted symmetric KL (SPEC section 5).

Groups come in as scaled non-sparse filters (:func:`filterdb.metrics.pca.scale_non_sparse`).
A value belongs to its matrix or series: the basis and the coefficient range are taken
over the union of the groups compared together, so the same pair of groups drifts by a
different amount in a different company. The SPEC warns that each of these choices
(basis, range, bins, the empty-bin density) moves the value by 1% to 40%: follow the
numbered steps, do not improvise.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from filterdb.metrics.pca import N_WEIGHTS, PCAResult, as_filters, fit_pca_with_coefficients

BINS = 70
# float32 epsilon; it replaces the density of an empty bin, not its count (step 5).
EMPTY_BIN_DENSITY = 2.0**-23


@dataclass(frozen=True)
class DriftMatrix:
    """Drift between every two groups of one matrix.

    Attributes
    ----------
    names : tuple of str
        Groups in the matrix, in input order; row and column i is ``names[i]``.
    matrix : (k, k) float64
        Symmetric, zero diagonal.
    n_filters : tuple of int
        Filter count of each group in ``names``.
    skipped : tuple of str
        Groups with no non-sparse filter, left out of the matrix.
    basis : PCAResult
        The PCA of the union of the groups; its ``ratio`` weights the KL terms.
    lo, hi : float
        The histogram range: min and max of all nine coefficients over the union.
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    n_filters: tuple[int, ...]
    skipped: tuple[str, ...]
    basis: PCAResult
    lo: float
    hi: float

    @property
    def ratios(self) -> np.ndarray:
        """The explained variance ratios r_k that weight each coefficient's KL."""
        return self.basis.ratio


@dataclass(frozen=True)
class DriftSeries:
    """Drift between the two groups of each label (e.g. robust vs normal per depth bin).

    Attributes
    ----------
    values : dict of str to float
        Drift per label, in input order; labels in ``skipped`` are absent.
    skipped : tuple of str
        Labels where either group has no non-sparse filter.
    basis : PCAResult
        One PCA for the whole series, fitted on all filters of all labels.
    lo, hi : float
        One histogram range for the whole series, over the same filters.
    """

    values: dict[str, float]
    skipped: tuple[str, ...]
    basis: PCAResult
    lo: float
    hi: float


def drift_matrix(groups: Mapping[str, np.ndarray], *, bins: int = BINS) -> DriftMatrix:
    """Drift between every two groups, following SPEC section 5 "drift (KL)" steps 1-6.

    Parameters
    ----------
    groups : mapping of name to (n_g, 9) array
        Each group's scaled non-sparse filters, pooled. A group with none is listed in
        ``skipped`` and left out; it contributes nothing to the union either.
    bins : int
        Equal-width bins per coefficient on [lo, hi].

    Raises
    ------
    filterdb.metrics.pca.NoPCA
        The union has fewer than 9 filters or no variance.
    """
    filters = {name: as_filters(group) for name, group in groups.items()}
    kept = {name: group for name, group in filters.items() if len(group)}
    basis, lo, hi, distributions = _union_distributions(list(kept.values()), bins=bins)
    matrix = np.zeros((len(kept), len(kept)))
    for i, j in itertools.combinations(range(len(kept)), 2):
        matrix[i, j] = matrix[j, i] = _symmetric_kl(distributions[i], distributions[j], basis.ratio)
    return DriftMatrix(
        names=tuple(kept),
        matrix=matrix,
        n_filters=tuple(len(group) for group in kept.values()),
        skipped=tuple(name for name, group in filters.items() if not len(group)),
        basis=basis,
        lo=lo,
        hi=hi,
    )


def drift_series(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], *, bins: int = BINS
) -> DriftSeries:
    """Drift between the two groups of each label, all on one basis and one range.

    SPEC section 5: robust-vs-normal drift per depth bin "uses one basis for the whole
    series (all filters of the compared models at all depths) and compares, per bin, the
    pooled robust filters with the pooled normal filters". Every filter of a compared
    model sits in exactly one depth bin, so the union of all pairs is that basis; the
    range [lo, hi] is taken over the same union, as for a matrix (steps 1 and 3).

    Parameters
    ----------
    pairs : mapping of label to ((n_a, 9), (n_b, 9)) arrays
        Per label, the two groups' scaled non-sparse filters, pooled. Pass every bin of
        the compared models, even one shown alone, since the basis depends on them all.
        A label where either group is empty is listed in ``skipped``; its filters still
        belong to the basis.
    bins : int
        Equal-width bins per coefficient on [lo, hi].

    Raises
    ------
    filterdb.metrics.pca.NoPCA
        The union has fewer than 9 filters or no variance.
    """
    groups = [as_filters(group) for pair in pairs.values() for group in pair]
    basis, lo, hi, distributions = _union_distributions(groups, bins=bins)
    values: dict[str, float] = {}
    skipped: list[str] = []
    for index, label in enumerate(pairs):
        first, second = distributions[2 * index], distributions[2 * index + 1]
        if first is None or second is None:
            skipped.append(label)
        else:
            values[label] = _symmetric_kl(first, second, basis.ratio)
    return DriftSeries(values=values, skipped=tuple(skipped), basis=basis, lo=lo, hi=hi)


def _union_distributions(
    groups: Sequence[np.ndarray], *, bins: int
) -> tuple[PCAResult, float, float, list[np.ndarray | None]]:
    """Steps 1-5 on the union of ``groups``: basis, range, and per group p_{g,k} (9, bins).

    An empty group gets ``None``. The union's coefficients are computed once and sliced
    per group, so every group's values lie inside [lo, hi].
    """
    union = np.concatenate(groups) if groups else np.empty((0, N_WEIGHTS))
    basis, coefficients = fit_pca_with_coefficients(union)  # steps 1 and 2
    lo, hi = float(coefficients.min()), float(coefficients.max())  # step 3
    bounds = np.cumsum([0, *(len(group) for group in groups)])
    distributions = [
        _coefficient_distributions(coefficients[start:stop], lo=lo, hi=hi, bins=bins)
        if stop > start
        else None
        for start, stop in itertools.pairwise(bounds)
    ]
    return basis, lo, hi, distributions


def _coefficient_distributions(
    coefficients: np.ndarray, *, lo: float, hi: float, bins: int
) -> np.ndarray:
    """Steps 4-5: one normalised histogram per coefficient, (9, bins)."""
    distributions = np.empty((N_WEIGHTS, bins))
    for k in range(N_WEIGHTS):
        # numpy.histogram semantics: edges[i] <= c < edges[i+1], the last bin holds hi.
        counts, edges = np.histogram(coefficients[:, k], bins=bins, range=(lo, hi))
        # The width is np.diff(edges), as numpy.histogram(density=True) takes it (the
        # robustness paper's code); N is the group's filter count, all inside [lo, hi].
        density = counts / (len(coefficients) * np.diff(edges))
        density[counts == 0] = EMPTY_BIN_DENSITY
        distributions[k] = density / density.sum()
    return distributions


def _symmetric_kl(p: np.ndarray, q: np.ndarray, ratios: np.ndarray) -> float:
    """Step 6: sum_k r_k (KL(p_k || q_k) + KL(q_k || p_k)), natural log; p, q (9, bins)."""
    forward = np.sum(p * np.log(p / q), axis=1)
    backward = np.sum(q * np.log(q / p), axis=1)
    return float(np.sum(ratios * (forward + backward)))
