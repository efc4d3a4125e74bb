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

    def coefficient_extremes(self, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smallest and largest coefficient of (n > 0, 9) finite ``filters`` on each
        component, (9,) each: exactly ``coefficients(filters).min(axis=0)`` and ``max``.

        The coefficients are approximated by a matrix product (BLAS: several times faster
        than their exact sum) whose difference from them is bounded
        (:meth:`_approximation_error`), and computed exactly only in the chunks whose
        approximate extremes come within twice that bound of the overall ones: the row
        of an exact extreme lies in one of those.
        """
        filters = as_filters(filters)
        offset = -(self.components @ self.mean)
        chunks = [
            (block.min(axis=1), block.max(axis=1))
            for _, block in _affine_blocks(filters, self.components, offset)
        ]
        lows, highs = (np.array(side) for side in zip(*chunks, strict=True))  # (chunks, 9)
        slack = 2.0 * self._approximation_error(max(-lows.min(), highs.max()))
        candidates = (lows <= lows.min(axis=0) + slack) | (highs >= highs.max(axis=0) - slack)
        low, high = np.full(N_WEIGHTS, np.inf), np.full(N_WEIGHTS, -np.inf)
        for chunk in np.flatnonzero(candidates.any(axis=1)):
            exact = self.coefficients(filters[chunk * _CHUNK_ROWS : (chunk + 1) * _CHUNK_ROWS])
            np.minimum(low, exact.min(axis=0), out=low)
            np.maximum(high, exact.max(axis=0), out=high)
        return low, high

    def coefficient_counts(
        self, filters: np.ndarray, *, lo: float, hi: float, bins: int
    ) -> np.ndarray:
        """(9, bins) int64 counts of each coefficient of (n, 9) finite ``filters`` in
        ``numpy.histogram``'s bins on [lo, hi]: exactly the counts of
        ``numpy.histogram(coefficients(filters)[:, k], bins, (lo, hi))``.

        Each coefficient's bin is read off its approximation (as in
        :meth:`coefficient_extremes`) where that lies further from every bin edge than the
        bound on its error, so the exact coefficient is in the same bin; the rows with a
        coefficient closer to an edge than that, or outside [lo, hi], are computed
        exactly and counted by ``numpy.histogram`` itself.
        """
        filters = as_filters(filters)
        counts = np.zeros((N_WEIGHTS, bins), dtype=np.int64)
        scale = bins / (hi - lo)
        # In bin units: the coefficient's error, and the rounding of numpy's edges (a few
        # ulp of reach off their true place) and of the position itself (of bins).
        reach = max(abs(lo), abs(hi))
        margin = scale * (self._approximation_error(reach) + 16 * _EPS * reach) + 16 * _EPS * bins
        if not margin < _MAX_MARGIN:  # a range too narrow for its magnitude: all exact
            return histogram_counts(self.coefficients(filters), lo=lo, hi=hi, bins=bins)
        # The position of each coefficient in bins from lo, as one affine map of the filter.
        matrix = self.components * scale
        offset = -(matrix @ self.mean) - lo * scale
        cells = (np.arange(N_WEIGHTS) * bins)[:, None]
        for start, position in _affine_blocks(filters, matrix, offset):
            rows = filters[start : start + position.shape[1]]
            if position.min() < 0.0 or position.max() >= bins:  # holds lo or hi: exact
                counts += histogram_counts(self.coefficients(rows), lo=lo, hi=hi, bins=bins)
                continue
            bin_index = position.astype(np.intp)  # truncation: the floor of a position >= 0
            # How far from the middle of its bin: near an edge when close to 1/2.
            position -= bin_index
            position -= 0.5
            near = np.abs(position, out=position) > 0.5 - margin
            bin_index += cells
            doubtful = np.flatnonzero(near.any(axis=0))
            if len(doubtful):  # whole rows, counted from their exact coefficients
                exact = self.coefficients(rows[doubtful])
                counts += histogram_counts(exact, lo=lo, hi=hi, bins=bins)
                bin_index[:, doubtful] = N_WEIGHTS * bins  # a spare cell, not counted
            tally = np.bincount(bin_index.ravel(), minlength=N_WEIGHTS * bins + 1)
            counts += tally[: N_WEIGHTS * bins].reshape(N_WEIGHTS, bins)
        return counts

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

    def _approximation_error(self, reach: float) -> float:
        """A bound on |approximate - exact coefficient| (:func:`_affine_blocks` against
        :meth:`coefficients`) for filters whose coefficients lie within [-reach, reach].

        Each is a sum of 9 rounded products (the approximation in BLAS's order, perhaps
        with fused multiply-adds, and of the filter and the mean apart), so each differs
        from the true value by at most about 10 ulp of |f - mean|_2 + 2 |mean|_1 (unit
        components; |f - mean|_2 is the norm of the coefficients, at most 3 * reach). The
        bound is 4 times the sum of both, plus an absolute term for underflow: about
        1e-13 for scaled filters.
        """
        spread = 3.0 * reach + 2.0 * float(np.abs(self.mean).sum())
        return 4 * 2 * 10 * _EPS * spread + 1e-300


def _affine_blocks(
    filters: np.ndarray, matrix: np.ndarray, offset: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """``matrix @ f + offset`` for each filter f, chunk by chunk: (first row, (9, m)).

    One BLAS product a chunk of :data:`_CHUNK_ROWS` rows into one buffer, overwritten by
    the next chunk; rounded in BLAS's own way, so only an approximation of the exact
    sums of :meth:`PCAResult.coefficients`.
    """
    buffer = np.empty((N_WEIGHTS, min(len(filters), _CHUNK_ROWS)))
    column = offset[:, None]
    for start in range(0, len(filters), _CHUNK_ROWS):
        block = buffer[:, : min(_CHUNK_ROWS, len(filters) - start)]
        np.matmul(matrix, filters[start : start + _CHUNK_ROWS].T, out=block)
        block += column
        yield start, block


def histogram_counts(coefficients: np.ndarray, *, lo: float, hi: float, bins: int) -> np.ndarray:
    """(9, bins) int64 counts of each coefficient on [lo, hi], ``numpy.histogram``'s bins."""
    counts = np.zeros((N_WEIGHTS, bins), dtype=np.int64)
    for k in range(N_WEIGHTS):
        counts[k] = np.histogram(coefficients[:, k], bins=bins, range=(lo, hi))[0]
    return counts


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
_EPS = float(np.finfo(np.float64).eps)
# Above this margin (in bins) around each bin edge, too many coefficients would need their
# exact value: a range that narrow for its magnitude is counted exactly throughout.
_MAX_MARGIN = 1e-3


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


def fit_pca_with_range(scaled: np.ndarray) -> tuple[PCAResult, float, float]:
    """:func:`fit_pca` and [lo, hi], the range of all nine coefficients of ``scaled`` on
    the result (drift step 3), from the same extremes as the sign rule.

    Two passes over ``scaled`` (its moments, then its coefficients' extremes,
    :meth:`PCAResult.coefficient_extremes`) and no array of its size: the 7.6M filters
    of a 100-model report are 550 MB each.
    """
    scaled = as_filters(scaled)
    n = len(scaled)
    if n < N_WEIGHTS:
        require_fittable(n, finite=True, identical=False)
    mean, scatter, low, high = moments(scaled)
    require_fittable(n, finite=all_finite(low, high), identical=bool(np.all(low == high)))
    basis = unoriented_basis(mean, scatter, n)
    oriented, _, lo, hi = orient(basis, *basis.coefficient_extremes(scaled))
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
