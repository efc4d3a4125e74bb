"""Distribution drift between groups of filters: weighted symmetric KL (SPEC section 5).

Groups come in as scaled non-sparse filters (:func:`filterdb.metrics.pca.scale_non_sparse`).
A value belongs to its matrix or series: the basis and the coefficient range are taken
over the union of the groups compared together, so the same pair of groups drifts by a
different amount in a different company. The SPEC warns that each of these choices
(basis, range, bins, the empty-bin density) moves the value by 1% to 40%: follow the
numbered steps, do not improvise.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from filterdb.metrics.pca import N_WEIGHTS, PCAResult, as_filters, fit_pca_with_range

BINS = 70
# float32 epsilon; it replaces the density of an empty bin, not its count (step 5).
EMPTY_BIN_DENSITY = 2.0**-23

# The noise reference of a drift value (issue 12): drift between two groups of these sizes
# drawn from one distribution. Two sets of 16 random-normal filters from one distribution
# drift by about 21, two sets of 4,096 by about 0.05: a value means nothing without it.
NULL_PERMUTATIONS = 99  # p-values in steps of 1/100
NULL_SEED = 0
# Above this many filters in a pair, the null and the p-value come from a seeded subsample
# of the pair of this size (proportional per group). The report's budget decides it: 99
# permutations of 4,096 filters took 85 ms a depth bin at load 6 on 2 cores, of 2,048
# about half, for reports of 4-4.6 s against a 5 s target (bench/report.py).
NULL_MAX_FILTERS = 2_048
NOISE_LEVEL = 0.05  # a value whose permutation p-value is at least this is within the noise
NULL_BAND = (5.0, 95.0)  # percentiles of the null shown as its band


@dataclass(frozen=True)
class DriftNull:
    """Drift of two groups under no difference: a seeded label-permutation null.

    The two groups' projected coefficients are pooled, labels shuffled, and the drift
    recomputed on the same basis, range and bins, ``n_permutations`` times.

    Attributes
    ----------
    median, low, high : float
        Median and the :data:`NULL_BAND` percentiles of the permutation drifts.
    p_value : float
        (1 + permutations with drift >= observed) / (1 + n_permutations), the observed
        drift taken at ``sizes``.
    n_permutations : int
    sizes : (int, int)
        Group sizes the null was drawn for: the groups' own, or a proportional subsample
        of :data:`NULL_MAX_FILTERS` filters when the pair is larger (``subsampled``); the
        null of a subsample lies above the full groups' null, so it is then conservative.
    observed : float
        The drift the p-value compares, at ``sizes`` (the value itself unless subsampled).
    """

    median: float
    low: float
    high: float
    p_value: float
    n_permutations: int
    sizes: tuple[int, int]
    observed: float
    subsampled: bool

    @property
    def within_noise(self) -> bool:
        """True when no-difference groups of these sizes drift this much often enough."""
        return self.p_value >= NOISE_LEVEL


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
    nulls : dict of (i, j) to DriftNull
        For each pair i < j, the permutation null of its drift (empty when no null was
        asked for).
    weights_form : str
        The weights form of the filters compared, when the caller knows it (the kernel
        does not look at it).
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    n_filters: tuple[int, ...]
    skipped: tuple[str, ...]
    basis: PCAResult
    lo: float
    hi: float
    nulls: dict[tuple[int, int], DriftNull] = field(default_factory=dict)
    weights_form: str = ""

    @property
    def ratios(self) -> np.ndarray:
        """The explained variance ratios r_k that weight each coefficient's KL."""
        return self.basis.ratio

    def null_matrix(self, attribute: str) -> np.ndarray:
        """(k, k) matrix of one :class:`DriftNull` attribute (``median``, ``p_value``...),
        NaN on the diagonal and where there is no null."""
        values = np.full(self.matrix.shape, np.nan)
        for (i, j), null in self.nulls.items():
            values[i, j] = values[j, i] = float(getattr(null, attribute))
        return values


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
    nulls : dict of str to DriftNull
        Per label in ``values``, the permutation null of its drift (empty when no null
        was asked for).
    """

    values: dict[str, float]
    skipped: tuple[str, ...]
    basis: PCAResult
    lo: float
    hi: float
    nulls: dict[str, DriftNull] = field(default_factory=dict)


def drift_matrix(
    groups: Mapping[str, np.ndarray],
    *,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = NULL_SEED,
) -> DriftMatrix:
    """Drift between every two groups, following SPEC section 5 "drift (KL)" steps 1-6.

    Parameters
    ----------
    groups : mapping of name to (n_g, 9) array
        Each group's scaled non-sparse filters, pooled. A group with none is listed in
        ``skipped`` and left out; it contributes nothing to the union either.
    bins : int
        Equal-width bins per coefficient on [lo, hi].
    n_permutations : int
        Permutations of each pair's null (:func:`permutation_null`); 0 gives no null.
    seed : int
        Seed of the nulls; pair (i, j) draws from its own stream, so a rerun gives the
        same nulls whatever else changes.

    Raises
    ------
    filterdb.metrics.pca.NoPCA
        The union has fewer than 9 filters or no variance.
    """
    filters = {name: as_filters(group) for name, group in groups.items()}
    kept = {name: group for name, group in filters.items() if len(group)}
    pairs = {(i, j): (i, j, (seed, i, j)) for i, j in itertools.combinations(range(len(kept)), 2)}
    union = np.concatenate(list(kept.values())) if kept else np.empty((0, N_WEIGHTS))
    basis, lo, hi, distributions, nulls = _union_distributions(
        union,
        [len(group) for group in kept.values()],
        bins=bins,
        pairs=pairs if n_permutations else {},
        n_permutations=n_permutations,
    )
    matrix = np.zeros((len(kept), len(kept)))
    for i, j in pairs:
        matrix[i, j] = matrix[j, i] = _symmetric_kl(distributions[i], distributions[j], basis.ratio)
    return DriftMatrix(
        names=tuple(kept),
        matrix=matrix,
        n_filters=tuple(len(group) for group in kept.values()),
        skipped=tuple(name for name, group in filters.items() if not len(group)),
        basis=basis,
        lo=lo,
        hi=hi,
        nulls=nulls,
    )


def drift_series(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = NULL_SEED,
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
    n_permutations : int
        Permutations of each label's null (:func:`permutation_null`); 0 gives no null.
    seed : int
        Seed of the nulls; label number i draws from its own stream.

    Raises
    ------
    filterdb.metrics.pca.NoPCA
        The union has fewer than 9 filters or no variance.
    """
    groups = [as_filters(group) for pair in pairs.values() for group in pair]
    union = np.concatenate(groups) if groups else np.empty((0, N_WEIGHTS))
    return drift_series_of_union(
        union,
        [len(group) for group in groups],
        list(pairs),
        bins=bins,
        n_permutations=n_permutations,
        seed=seed,
    )


def drift_series_of_union(
    union: np.ndarray,
    sizes: Sequence[int],
    labels: Sequence[str],
    *,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    seed: int = NULL_SEED,
) -> DriftSeries:
    """:func:`drift_series` of groups already pooled into one array, without copying it.

    ``union`` (n, 9) holds label 0's first group, then its second, then label 1's first...;
    ``sizes`` gives those 2 * len(labels) group sizes in that order. The result is the
    same as :func:`drift_series` of the groups sliced out of ``union``, which is only
    read.
    """
    union = as_filters(union)
    if len(sizes) != 2 * len(labels) or sum(sizes) != len(union):
        raise ValueError(
            f"{len(sizes)} group sizes adding up to {sum(sizes)} do not split {len(union)} "
            f"filters into two groups for each of {len(labels)} labels"
        )
    pairs = {
        label: (2 * index, 2 * index + 1, (seed, index))
        for index, label in enumerate(labels)
        if sizes[2 * index] and sizes[2 * index + 1]
    }
    basis, lo, hi, distributions, nulls = _union_distributions(
        union,
        sizes,
        bins=bins,
        pairs=pairs if n_permutations else {},
        n_permutations=n_permutations,
    )
    values = {
        label: _symmetric_kl(distributions[a], distributions[b], basis.ratio)
        for label, (a, b, _) in pairs.items()
    }
    skipped = [label for label in labels if label not in pairs]
    return DriftSeries(
        values=values, skipped=tuple(skipped), basis=basis, lo=lo, hi=hi, nulls=nulls
    )


def permutation_null(
    first: np.ndarray,
    second: np.ndarray,
    *,
    lo: float,
    hi: float,
    ratios: np.ndarray,
    bins: int = BINS,
    n_permutations: int = NULL_PERMUTATIONS,
    max_filters: int = NULL_MAX_FILTERS,
    seed: int | tuple[int, ...] = NULL_SEED,
) -> DriftNull:
    """The drift of two groups of these sizes under no difference (label permutation).

    ``first`` and ``second`` are the two groups' coefficients (n, 9) on the basis of their
    matrix or series, ``lo``/``hi`` its range and ``ratios`` its r_k: the null is computed
    exactly as the value is (steps 4-6), only with the group labels shuffled. A pair of
    more than ``max_filters`` filters is first subsampled, seeded and in proportion to
    the group sizes (each keeps at least one filter), and both the observed drift and the
    null are taken at those sizes. ``seed`` makes the result the same on every run.
    """
    rng = np.random.default_rng(seed)
    subsampled = len(first) + len(second) > max_filters
    if subsampled:
        first, second = _subsample_pair(first, second, max_filters=max_filters, rng=rng)
    codes = _bin_codes(np.concatenate([first, second]), lo=lo, hi=hi, bins=bins)
    widths = np.diff(np.linspace(lo, hi, bins + 1))
    cells = N_WEIGHTS * bins
    total = np.bincount(codes.ravel(), minlength=cells)
    n_first, n_second = len(first), len(second)

    def drifts_of(first_rows: np.ndarray) -> np.ndarray:
        """Drift for each row of ``first_rows`` (r, n_first): who is in the first group."""
        offsets = (np.arange(len(first_rows)) * cells)[:, None, None]
        flat = (codes[first_rows] + offsets).ravel()
        counts = np.bincount(flat, minlength=len(first_rows) * cells)
        counts = counts.reshape(len(first_rows), N_WEIGHTS, bins)
        p = _distributions_from_counts(counts, n_first, widths, bins)
        q = _distributions_from_counts(
            total.reshape(N_WEIGHTS, bins) - counts, n_second, widths, bins
        )
        # p ln(p/q) + q ln(q/p) = (p - q) ln(p/q): step 6 with one logarithm, not two.
        return np.sum(ratios * np.sum((p - q) * np.log(p / q), axis=-1), axis=-1)

    observed = float(drifts_of(np.arange(n_first)[None, :])[0])
    n = n_first + n_second
    labels = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    null = drifts_of(labels[:, :n_first])
    low, high = np.percentile(null, NULL_BAND)
    return DriftNull(
        median=float(np.median(null)),
        low=float(low),
        high=float(high),
        p_value=float((1 + np.sum(null >= observed)) / (1 + n_permutations)),
        n_permutations=n_permutations,
        sizes=(n_first, n_second),
        observed=observed,
        subsampled=subsampled,
    )


def _subsample_pair(
    first: np.ndarray, second: np.ndarray, *, max_filters: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = len(first) + len(second)
    keep_first = min(len(first), max(1, round(max_filters * len(first) / n)))
    keep_second = min(len(second), max(1, max_filters - keep_first))
    return (
        first[np.sort(rng.choice(len(first), keep_first, replace=False))],
        second[np.sort(rng.choice(len(second), keep_second, replace=False))],
    )


def _bin_codes(coefficients: np.ndarray, *, lo: float, hi: float, bins: int) -> np.ndarray:
    """(n, 9) flat histogram cell per coefficient: k * bins + bin, bins as step 4 has them.

    ``numpy.histogram`` puts c in bin i when edges[i] <= c < edges[i+1] for the edges of
    ``linspace(lo, hi, bins + 1)``, and c = hi in the last bin: a right-sided search of the
    same edges gives the same bins.
    """
    edges = np.linspace(lo, hi, bins + 1)
    index = np.clip(np.searchsorted(edges, coefficients, side="right") - 1, 0, bins - 1)
    return index + bins * np.arange(N_WEIGHTS)


def _distributions_from_counts(
    counts: np.ndarray, n: int, widths: np.ndarray, bins: int
) -> np.ndarray:
    """Step 5 from counts (..., 9, bins): density, empty bins at epsilon, normalised."""
    density = counts / (n * widths)
    density[counts == 0] = EMPTY_BIN_DENSITY
    return density / density.sum(axis=-1, keepdims=True)


def _union_distributions(
    union: np.ndarray,
    sizes: Sequence[int],
    *,
    bins: int,
    pairs: Mapping[object, tuple[int, int, object]],
    n_permutations: int,
) -> tuple[PCAResult, float, float, list[np.ndarray | None], dict[object, DriftNull]]:
    """Steps 1-5 on ``union``, groups of ``sizes`` one after another: basis, range, per
    group p_{g,k} (9, bins) (``None`` for an empty group), and the null of each pair of
    ``pairs`` (key to group a, group b and the null's seed), taken at the rows it draws
    (:func:`null_draws`).

    The coefficients are not kept: each group's counts come from
    :meth:`PCAResult.coefficient_counts`, and a null's drawn rows are projected exactly
    (an (n, 9) array of the coefficients of a 100-model report's 7.6M filters would be
    550 MB, and computing them exactly cost 0.7 s there).
    """
    basis, lo, hi = fit_pca_with_range(union)
    widths = np.diff(np.linspace(lo, hi, bins + 1))
    bounds = np.cumsum([0, *sizes])
    distributions: list[np.ndarray | None] = []
    for start, stop in itertools.pairwise(bounds):
        counts = basis.coefficient_counts(union[start:stop], lo=lo, hi=hi, bins=bins)
        empty = stop == start
        distributions.append(
            None if empty else _distributions_from_counts(counts, stop - start, widths, bins)
        )
    nulls = {
        key: null_of(
            draw,
            basis.coefficients(union[bounds[draw.a] + draw.rows_a]),
            basis.coefficients(union[bounds[draw.b] + draw.rows_b]),
            lo=lo,
            hi=hi,
            ratios=basis.ratio,
            bins=bins,
            n_permutations=n_permutations,
        )
        for key, draw in null_draws(pairs, sizes).items()
    }
    return basis, lo, hi, distributions, nulls


@dataclass(frozen=True)
class NullDraw:
    """Which rows of groups ``a`` and ``b`` a pair's null uses, and its random stream."""

    a: int
    b: int
    seed: object
    rng: np.random.Generator
    rows_a: np.ndarray
    rows_b: np.ndarray
    subsampled: bool


def null_draws(
    pairs: Mapping[object, tuple[int, int, object]], sizes: Sequence[int]
) -> dict[object, NullDraw]:
    """The rows of each pair's null (key to group a, group b, seed), drawn as
    :func:`permutation_null` draws them from groups of these ``sizes``.

    Which rows a subsample takes depends only on the sizes and the seed, so the pair's
    coefficients are needed at those rows alone (:func:`null_of` continues the stream).
    """
    draws = {}
    for key, (a, b, seed) in pairs.items():
        rng = np.random.default_rng(seed)
        rows_a, rows_b = np.arange(sizes[a]), np.arange(sizes[b])
        subsampled = sizes[a] + sizes[b] > NULL_MAX_FILTERS
        if subsampled:
            rows_a, rows_b = _subsample_pair(rows_a, rows_b, max_filters=NULL_MAX_FILTERS, rng=rng)
        draws[key] = NullDraw(a, b, seed, rng, rows_a, rows_b, subsampled)
    return draws


def null_of(
    draw: NullDraw,
    first: np.ndarray,
    second: np.ndarray,
    *,
    lo: float,
    hi: float,
    ratios: np.ndarray,
    bins: int,
    n_permutations: int,
) -> DriftNull:
    """:func:`permutation_null` of the whole groups, from their coefficients ``first``
    and ``second`` at the rows of ``draw`` (:func:`null_draws`): the same null."""
    null = permutation_null(
        first,
        second,
        lo=lo,
        hi=hi,
        ratios=ratios,
        bins=bins,
        n_permutations=n_permutations,
        max_filters=len(first) + len(second),
        # A fresh stream, or the one the subsample was drawn from, continued.
        seed=draw.rng if draw.subsampled else draw.seed,
    )
    return dataclasses.replace(null, subsampled=draw.subsampled)


def _symmetric_kl(p: np.ndarray, q: np.ndarray, ratios: np.ndarray) -> float:
    """Step 6: sum_k r_k (KL(p_k || q_k) + KL(q_k || p_k)), natural log; p, q (9, bins)."""
    forward = np.sum(p * np.log(p / q), axis=1)
    backward = np.sum(q * np.log(q / p), axis=1)
    return float(np.sum(ratios * (forward + backward)))
