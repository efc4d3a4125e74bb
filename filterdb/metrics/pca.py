"""PCA eigen-filters of a group of 3x3 filters (SPEC section 5, "PCA eigen-filters").

A group (a model, robust, normal, all, a depth bin, a dataset) is pooled, its sparse
filters dropped and the rest scaled by their own largest absolute weight
(:func:`scale_non_sparse`); :func:`fit_pca` then finds the group's eigen-filters in
float64, oriented the way scikit-learn 0.24.1 oriented them, which both papers pinned.
"""

from __future__ import annotations

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
        product = np.empty((N_WEIGHTS, min(len(filters), _CHUNK_ROWS)))
        # weights[j]: column j of every component, as a (9, 1) column to broadcast.
        weights = np.ascontiguousarray(self.components.T)[:, :, None]
        # In cache-sized chunks, weight by weight over contiguous rows, all nine
        # coefficients at once: the arithmetic of a plain elementwise sum (0, then + c_j
        # w_kj for j = 0..8, no fused multiply-add), in 9 numpy calls a chunk, not 81:
        # 2x faster on the 7.6M filters of the 100-model report (bench/report.py).
        for start in range(0, len(filters), _CHUNK_ROWS):
            centred = (filters[start : start + _CHUNK_ROWS] - self.mean).T.copy()
            out = coefficients[:, start : start + _CHUNK_ROWS]
            step = product[:, : out.shape[1]]
            out[:] = 0.0  # 0 + x, not x: a -0.0 product then sums to +0.0, as before
            for j in range(N_WEIGHTS):
                np.multiply(weights[j], centred[j], out=step)
                out += step
        return coefficients.T


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
    ``scale_by_peak(as_filters(rows), peaks)`` is its result. A caller pooling many layers
    divides them in place in one preallocated array instead (the same bits, one copy).
    """
    array = np.asarray(filters)
    if array.dtype != np.float32:
        array = as_filters(array)
    elif array.ndim != 2 or array.shape[1] != N_WEIGHTS:
        as_filters(array)  # raises the shape error
    # |w| and its max are exact in float32 (stored filters are float32), so the peaks
    # are found there and only the kept filters are widened to float64: the same bits at
    # half the memory traffic.
    peaks = np.abs(array).max(axis=1).astype(np.float64)
    # The threshold is taken in float64: float32 filters and their layer max are exact
    # there, so only eps * layer_max rounds, once.
    kept = ~is_sparse(peaks, np.asarray(layer_max, dtype=np.float64), eps=eps)
    return array[kept], peaks[kept]


# 9 x 8,192 float64 coefficients and as many products: about 1.2 MB, cache-sized.
_CHUNK_ROWS = 8_192


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
    return fit_pca_with_coefficients(scaled)[0]


def fit_pca_with_coefficients(scaled: np.ndarray) -> tuple[PCAResult, np.ndarray]:
    """:func:`fit_pca` and the coefficients of ``scaled`` on the result, computed once.

    The sign rule needs every filter's coefficients; drift needs them again on the same
    basis, and flipping a component's sign flips its coefficients exactly.
    """
    scaled = as_filters(scaled)
    n = len(scaled)
    # Identical rows are zero variance exactly; their float mean need not equal the row.
    # A few rows decide nearly every group; only a group that starts with equal rows
    # pays for the full comparison.
    identical = n > 0 and bool(
        (scaled[:N_WEIGHTS] == scaled[0]).all() and (scaled == scaled[0]).all()
    )
    require_fittable(n, finite=bool(np.isfinite(scaled).all()), identical=identical)
    mean = scaled.mean(axis=0)
    # Into a preallocated array: ``scaled - mean`` builds its output 8x slower (1.4 s
    # against 0.18 s for the 7.6M filters of the 100-model report), for the same bits.
    centred = np.subtract(scaled, mean, out=np.empty_like(scaled))
    basis = unoriented_basis(mean, centred.T @ centred, n)
    coefficients = basis.coefficients(scaled)
    signs = _orientation(basis.components, coefficients)
    oriented = PCAResult(
        mean=basis.mean,
        components=basis.components * signs[:, None],
        explained_variance=basis.explained_variance,
        ratio=basis.ratio,
        cumulative=basis.cumulative,
        n_filters=n,
    )
    coefficients *= signs
    return oriented, coefficients


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


def _orientation(components: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Sign (+1 or -1) per component that applies the SPEC's sign rule.

    ``components`` is (9, 9), rows; ``coefficients`` is (n, 9), column k on component k.
    """
    signs = np.ones(len(components))
    for k, component in enumerate(components):
        column = coefficients[:, k]
        absolute = np.abs(column)
        largest = absolute.max()
        at_largest = column[absolute == largest]
        if largest > 0 and (np.all(at_largest > 0) or np.all(at_largest < 0)):
            decider = at_largest[0]
        else:  # the filter rule cannot decide: fall back on the component's entries
            decider = component[np.argmax(np.abs(component))]  # argmax: first of equals
        signs[k] = -1.0 if decider < 0 else 1.0
    return signs
