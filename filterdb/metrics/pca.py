"""PCA eigen-filters of a group of 3x3 filters (SPEC section 5, "PCA eigen-filters").

A group (a model, robust, normal, all, a depth bin, a dataset) is pooled, its sparse
filters dropped and the rest scaled by their own largest absolute weight
(:func:`scale_non_sparse`); :func:`fit_pca` then finds the group's eigen-filters in
float64, oriented the way scikit-learn 0.24.1 oriented them, which both papers pinned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from filterdb.errors import NoPCA
from filterdb.metrics.layer import is_sparse, scale_by_peak
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS

N_WEIGHTS = 9  # a 3x3 kernel, w0..w8 row-major


@dataclass(frozen=True)
class PCAResult:
    """The eigen-filters of one group.

    Attributes
    ----------
    mean : (9,) float64
        Mean of the group's scaled non-sparse filters.
    components : (9, 9) float64
        Unit eigenvectors as rows, by decreasing eigenvalue, oriented by the sign rule.
    explained_variance : (9,) float64
        Eigenvalues lambda_k of the covariance matrix (denominator n - 1).
    ratio : (9,) float64
        Explained variance ratios r_k = lambda_k / sum(lambda).
    cumulative : (9,) float64
        Cumulative sum of ``ratio``.
    n_filters : int
        Number of filters the PCA was fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    ratio: np.ndarray
    cumulative: np.ndarray
    n_filters: int

    @property
    def images(self) -> np.ndarray:
        """Components as (9, 3, 3) images, w0..w8 row-major, for reports."""
        return self.components.reshape(N_WEIGHTS, 3, 3)

    def coefficients(self, filters: np.ndarray) -> np.ndarray:
        """Coefficients c = (f - mean) . components^T of (n, 9) filters, float64 (n, 9).

        Each filter's coefficients are the same bits whichever array it is passed in:
        an elementwise sum in fixed w0..w8 order, where a matrix product may round a row
        differently depending on the block it lands in. So a subgroup's coefficients,
        computed on their own, stay inside a range [lo, hi] taken over its union.
        """
        filters = as_filters(filters)
        coefficients = np.empty((N_WEIGHTS, len(filters)))
        self._project(filters, coefficients)
        return coefficients.T

    def coefficient_blocks(self, filters: np.ndarray) -> Iterator[np.ndarray]:
        """:meth:`coefficients` block after block, as (9, m) arrays, row k on component k.

        The same bits without an (n, 9) array: a pass that only counts or bounds the
        coefficients of millions of filters keeps one cache-sized block. Each block is
        overwritten by the next.
        """
        filters = as_filters(filters)
        buffer = np.empty((N_WEIGHTS, min(len(filters), _BLOCK_ROWS)))
        for start in range(0, len(filters), _BLOCK_ROWS):
            block = buffer[:, : min(_BLOCK_ROWS, len(filters) - start)]
            self._project(filters[start : start + _BLOCK_ROWS], block)
            yield block

    def oriented(self, signs: np.ndarray) -> PCAResult:
        """This basis with component k multiplied by ``signs[k]`` (+1 or -1); its
        coefficients are those of this basis times the signs, exactly."""
        return PCAResult(
            mean=self.mean,
            components=self.components * signs[:, None],
            explained_variance=self.explained_variance,
            ratio=self.ratio,
            cumulative=self.cumulative,
            n_filters=self.n_filters,
        )

    def _project(self, filters: np.ndarray, out: np.ndarray) -> None:
        """Write the coefficients of (n, 9) ``filters`` into ``out``, (9, n)."""
        product = np.empty((N_WEIGHTS, min(len(filters), _CHUNK_ROWS)))
        centred = np.empty_like(product)
        mean = self.mean[:, None]
        # weights[j]: column j of every component, as a (9, 1) column to broadcast.
        weights = np.ascontiguousarray(self.components.T)[:, :, None]
        # In cache-sized chunks, weight by weight over contiguous rows, all nine
        # coefficients at once: the arithmetic of a plain elementwise sum (0, then + c_j
        # w_kj for j = 0..8, no fused multiply-add), in 9 numpy calls a chunk, not 81:
        # 2x faster on the 7.6M filters of the 100-model report (bench/report.py).
        for start in range(0, len(filters), _CHUNK_ROWS):
            chunk = out[:, start : start + _CHUNK_ROWS]
            step = product[:, : chunk.shape[1]]
            rows = centred[:, : chunk.shape[1]]
            np.subtract(filters[start : start + _CHUNK_ROWS].T, mean, out=rows)
            chunk[:] = 0.0  # 0 + x, not x: a -0.0 product then sums to +0.0, as before
            for j in range(N_WEIGHTS):
                np.multiply(weights[j], rows[j], out=step)
                chunk += step


def as_filters(filters: np.ndarray) -> np.ndarray:
    """``filters`` as a float64 (n, 9) array; a ValueError names any other shape."""
    array = np.asarray(filters, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != N_WEIGHTS:
        raise ValueError(f"filters must be an (n, 9) array, got shape {array.shape}")
    return array


def scale_non_sparse(
    filters: np.ndarray, layer_max: np.ndarray | float, *, eps: float = DEFAULT_SPARSITY_EPS
) -> np.ndarray:
    """Drop the sparse filters and divide each other one by its own largest |weight|.

    The rule and the scaling are those of the per-layer metrics
    (:func:`filterdb.metrics.layer.is_sparse`, :func:`~filterdb.metrics.layer.scale_by_peak`),
    applied here to numpy arrays: this runs on every stored filter for drift, where numpy
    keeps 13-21 M filters/s on a busy 2-core machine and torch's CPU threads fell to
    0.5-7 M (measured with layers of 256 to 409,600 filters).

    Parameters
    ----------
    filters : (n, 9) array
        Filters of one layer, or of a pooled group.
    layer_max : float or (n,) array
        Max |W| of the filter's layer: one value for one layer, one per row for a pooled
        group, since sparsity is judged per layer (SPEC section 5, "sparsity").
    eps : float
        A filter is sparse when its largest |weight| is at most ``eps * layer_max``
        (``<=``, as in the robustness paper). All-zero filters are always sparse.

    Returns
    -------
    (m, 9) float64
        The non-sparse filters, in input order, each with largest |weight| 1.

    Raises
    ------
    filterdb.metrics.layer.MetricError
        ``eps`` is negative, infinite or NaN.
    """
    rows, peaks = non_sparse_rows(filters, layer_max, eps=eps)
    return scale_by_peak(as_filters(rows), peaks)


def non_sparse_rows(
    filters: np.ndarray, layer_max: np.ndarray | float, *, eps: float = DEFAULT_SPARSITY_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """The non-sparse rows of ``filters``, unscaled in their own dtype, and their peaks.

    :func:`scale_non_sparse` before its division: the peaks are float64 (n_kept,), and
    ``scale_by_peak(as_filters(rows), peaks)`` is its result.
    """
    array = _as_stored_filters(filters)
    kept, peaks = non_sparse_mask(array, layer_max, eps=eps)
    return array[kept], peaks[kept]


def non_sparse_mask(
    filters: np.ndarray | Sequence[np.ndarray],
    layer_max: np.ndarray | float,
    *,
    eps: float = DEFAULT_SPARSITY_EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of (n, 9) ``filters`` are not sparse, (n,) bool, and every row's largest
    |weight|, (n,) float64: what :func:`scale_non_sparse` keeps and divides by.

    ``filters`` may also be given as its nine columns (n,) each
    (:func:`filterdb.warehouse.read.iter_layer_columns`). A caller pooling many layers
    copies the kept rows straight into one preallocated array and divides them there (the
    same bits as :func:`scale_non_sparse`, one copy).
    """
    if isinstance(filters, np.ndarray):
        array = _as_stored_filters(filters)
        columns = [array[:, j] for j in range(N_WEIGHTS)]
    else:
        columns = list(filters)
        if len(columns) != N_WEIGHTS or len({len(column) for column in columns}) != 1:
            raise ValueError(f"filters must be 9 columns of one length, got {len(columns)}")
    # |w| and its max are exact in float32 (stored filters are float32), so the peaks
    # are found there and only the kept filters are widened to float64: the same bits at
    # half the memory traffic. Column by column: a max over each row's nine weights ran
    # 13x slower on row-major filters (0.73 s against 0.056 s for 4M filters).
    peaks = np.abs(columns[0])
    for column in columns[1:]:
        np.maximum(peaks, np.abs(column), out=peaks)
    peaks = peaks.astype(np.float64)
    # The threshold is taken in float64: float32 filters and their layer max are exact
    # there, so only eps * layer_max rounds, once.
    kept = ~is_sparse(peaks, np.asarray(layer_max, dtype=np.float64), eps=eps)
    return kept, peaks


def _as_stored_filters(filters: np.ndarray) -> np.ndarray:
    """float32 filters as they are (checked for shape), anything else as float64 (n, 9)."""
    array = np.asarray(filters)
    if array.dtype != np.float32:
        return as_filters(array)
    if array.ndim != 2 or array.shape[1] != N_WEIGHTS:
        as_filters(array)  # raises the shape error
    return array


# 9 x 8,192 float64 coefficients and as many products: about 1.2 MB, cache-sized.
_CHUNK_ROWS = 8_192
# Blocks of :meth:`PCAResult.coefficient_blocks`: few enough numpy calls per block for a
# histogram or a min to cost what its data costs.
_BLOCK_ROWS = 8 * _CHUNK_ROWS


def fit_pca(scaled: np.ndarray) -> PCAResult:
    """Eigen-filters of a group's scaled non-sparse filters (SPEC section 5).

    Centres by the group mean (no whitening), eigen-decomposes the 9x9 covariance, and
    orients each component so that the filter with the largest |coefficient| on it has a
    positive coefficient (scikit-learn 0.24.1's ``svd_flip`` on U; scikit-learn >= 1.5
    decides on the component's entries instead, which moves drift by up to 0.3%). When
    that filter is not unique up to sign (equal |coefficient| with both signs, or all
    coefficients 0), the component's largest-magnitude entry, first in w0..w8 order, is
    made positive.

    Raises
    ------
    NoPCA
        Fewer than 9 filters, zero total variance, or non-finite weights.
    """
    return fit_pca_with_range(scaled)[0]


def fit_pca_with_range(
    scaled: np.ndarray, *, coefficients_out: np.ndarray | None = None
) -> tuple[PCAResult, float, float]:
    """:func:`fit_pca` and [lo, hi], the range of all nine coefficients of ``scaled`` on
    the result (drift step 3), found in the same pass as the sign rule.

    Two passes over ``scaled`` (its moments, then its coefficients block by block) and
    no array of its size: the 7.6M filters of a 100-model report are 550 MB each. With
    ``coefficients_out`` (n, 9), which may be ``scaled`` itself, the coefficients on the
    returned basis are written there as they are found (the same bits as
    :meth:`PCAResult.coefficients`), for a caller that needs them all.
    """
    scaled = as_filters(scaled)
    n = len(scaled)
    if n < N_WEIGHTS:
        require_fittable(n, finite=True, identical=False)
    mean, scatter, low, high = moments(scaled)
    require_fittable(n, finite=all_finite(low, high), identical=bool(np.all(low == high)))
    basis = unoriented_basis(mean, scatter, n)
    low, high = np.full(N_WEIGHTS, np.inf), np.full(N_WEIGHTS, -np.inf)
    at = 0
    for block in basis.coefficient_blocks(scaled):
        np.minimum(low, block.min(axis=1), out=low)
        np.maximum(high, block.max(axis=1), out=high)
        if coefficients_out is not None:  # the block's rows are read: safe to overwrite
            coefficients_out[at : at + block.shape[1]] = block.T
        at += block.shape[1]
    oriented, signs, lo, hi = orient(basis, low, high)
    if coefficients_out is not None:
        for k in np.flatnonzero(signs < 0):
            np.negative(coefficients_out[:, k], out=coefficients_out[:, k])  # exact
    return oriented, lo, hi


def moments(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean (9,), scatter (9, 9: the sum of outer products of the centred filters), and
    each weight's smallest and largest value (9,) of n > 0 filters (n, 9).

    The same bits whatever the array's memory layout (C or Fortran order): each column
    sums on its own (numpy's pairwise sum; a 2-D sum over the rows of a C-ordered array
    adds them one by one), and the centred filters go through one transposed chunk
    buffer, cache-sized, so no centred copy of the group is made.
    """
    n = len(scaled)
    mean = np.array([scaled[:, j].sum() for j in range(N_WEIGHTS)]) / n
    scatter = np.zeros((N_WEIGHTS, N_WEIGHTS))
    low, high = np.full(N_WEIGHTS, np.inf), np.full(N_WEIGHTS, -np.inf)
    buffer = np.empty((N_WEIGHTS, min(n, _CHUNK_ROWS)))
    for start in range(0, n, _CHUNK_ROWS):
        centred = buffer[:, : min(_CHUNK_ROWS, n - start)]
        centred[:] = scaled[start : start + _CHUNK_ROWS].T
        np.minimum(low, centred.min(axis=1), out=low)
        np.maximum(high, centred.max(axis=1), out=high)
        centred -= mean[:, None]
        scatter += centred @ centred.T
    return mean, scatter, low, high


def all_finite(low: np.ndarray, high: np.ndarray) -> bool:
    """Whether filters whose weights range over [low, high] (from :func:`moments`) are all
    finite: min and max carry a NaN through, and an infinite weight is its own extreme."""
    return bool(np.isfinite(low).all() and np.isfinite(high).all())


def orient(
    basis: PCAResult, low: np.ndarray, high: np.ndarray
) -> tuple[PCAResult, np.ndarray, float, float]:
    """The SPEC's sign rule (:func:`fit_pca`) applied to ``basis`` from the smallest and
    largest coefficient on each of its components alone (``low``, ``high``, (9,)).

    Returns the oriented basis, the signs (+1 or -1 per component) that turned it, and
    [lo, hi], the range of all nine coefficients on the oriented basis (drift step 3).

    The filter with the largest |coefficient| on component k decides its sign; that
    largest value is max(-low_k, high_k), and the filters at it are all positive when only
    ``high_k`` reaches it, all negative when only ``-low_k`` does. When both do, or all
    coefficients are 0, the component's largest-magnitude entry (first of equals) is made
    positive. A distributed engine gathers the extremes from per-file partials.
    """
    signs = np.ones(len(basis.components))
    for k, component in enumerate(basis.components):
        largest = max(-low[k], high[k])
        positive, negative = high[k] == largest, -low[k] == largest
        if largest > 0 and positive != negative:
            decider = 1.0 if positive else -1.0
        else:  # the filter rule cannot decide: fall back on the component's entries
            decider = component[np.argmax(np.abs(component))]  # argmax: first of equals
        signs[k] = -1.0 if decider < 0 else 1.0
    # A flipped component's coefficients are negated exactly: its extremes swap.
    oriented_low = np.where(signs < 0, -high, low)
    oriented_high = np.where(signs < 0, -low, high)
    return (
        basis.oriented(signs),
        signs,
        float(oriented_low.min()),
        float(oriented_high.max()),
    )


def require_fittable(n: int, *, finite: bool, identical: bool) -> None:
    """Raise :class:`NoPCA` for fewer than 9 filters, non-finite weights or identical ones
    (``identical``: every filter equals the first), checked in that order."""
    if n < N_WEIGHTS:
        raise NoPCA(
            f"no PCA: the group has {n} non-sparse filters and a PCA needs at least "
            f"{N_WEIGHTS}; pool a larger group"
        )
    if not finite:
        raise NoPCA(
            "no PCA: the group's filters hold NaN or infinite weights; re-ingest a clean model"
        )
    if identical:
        raise NoPCA(
            f"no PCA: all {n} non-sparse filters of the group are identical (zero total variance)"
        )


def unoriented_basis(mean: np.ndarray, scatter: np.ndarray, n: int) -> PCAResult:
    """The eigen-decomposition step of :func:`fit_pca`, before the sign rule.

    ``scatter`` is the (9, 9) sum of outer products of the centred filters, so the
    covariance is ``scatter / (n - 1)``; a distributed engine adds it up from per-file
    partials (:mod:`filterdb.metrics.partials`) and calls this on the client.

    Raises
    ------
    NoPCA
        Zero total variance.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(scatter / (n - 1))  # ascending
    # A covariance matrix is positive semi-definite; eigh may return -1e-17 for a zero.
    explained_variance = np.clip(eigenvalues[::-1], 0.0, None)
    total = explained_variance.sum()
    if total == 0.0:  # differences so small that their squares underflow
        raise NoPCA(f"no PCA: the {n} non-sparse filters of the group have zero total variance")
    return PCAResult(
        mean=mean,
        components=np.ascontiguousarray(eigenvectors[:, ::-1].T),
        explained_variance=explained_variance,
        ratio=explained_variance / total,
        cumulative=np.cumsum(explained_variance / total),
        n_filters=n,
    )
