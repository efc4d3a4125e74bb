"""Per-layer metrics of one 3x3 conv layer (SPEC section 5, normative).

:func:`layer_metrics` computes every metric of the registry
(:mod:`filterdb.metrics.registry`) from a layer's weight
in one go: one transfer to the device, float64 arithmetic, a 9x9 scatter matrix per entropy
variant and one C_out x C_out Gram matrix. It is built from small public functions:

- :func:`require_eps` is the one check of a sparsity threshold, for every caller;
- :func:`is_sparse` and :func:`scale_by_peak` are SPEC's rule for sparse filters and its
  per-filter scaling; they take numpy arrays as well as torch tensors, so PCA
  (:func:`filterdb.metrics.pca.scale_non_sparse`) applies the same code to pooled groups;
- :func:`variance_entropy` / :func:`variance_entropy_from_covariance` give H of a filter set
  or of its 9x9 covariance (or any positive multiple of it);
- :func:`expected_random_entropy` and :func:`normalized_entropy` give the ``_norm`` variants;
- :func:`orthogonality` works on the (C_out, C_in/groups * 9) kernel matrix.

All comparisons and sums run in float64. Float32 weights widen exactly, so a float32 layer
and its float64 copy give identical results, and the sparsity threshold ``eps * layer max``
is the float64 product of the Python float ``eps`` and the widened layer max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from filterdb.errors import MetricError
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS, METRICS

if TYPE_CHECKING:  # torch loads with the first layer measured, not with this module
    import torch

# A numpy array or a torch tensor: the sparse rule and the scaling are written with
# operators both support, so that the metrics (torch) and PCA (numpy) share them.
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

# Logistic fit of the variance entropy of m random filters (SPEC section 5).
_H_MAX_L = 1.2618047
_H_MAX_X0 = 2.30436435
_H_MAX_K = 0.88767525
_H_MAX_B = -0.31050834


@dataclass(frozen=True)
class MetricValue:
    """A metric of one layer and the size of what it was computed on.

    ``value`` is None where SPEC section 5 says NULL. ``support`` is the number of filters
    for sparsity and the entropies (all filters for ``variance_entropy``, the non-sparse
    ones for the ``_clean`` and ``_scaled`` variants and their ``_norm``), C_out for
    orthogonality and the number of weights for ``l1`` and ``l2``: the weights that depth
    bins average with (SPEC section 5, depth bins).
    """

    value: float | None
    support: int


def layer_metrics(
    weight: np.ndarray | torch.Tensor,
    *,
    eps: float = DEFAULT_SPARSITY_EPS,
    device: str | torch.device = "cpu",
) -> dict[str, MetricValue]:
    """Every metric of :data:`~filterdb.metrics.registry.METRICS` for one 3x3 conv layer.

    A layer with a NaN or infinite weight (stored with ``--allow-nonfinite``) gets None for
    every metric: SPEC section 5 defines none of them there (the entropies' eigen-
    decomposition would fail, the others would be NaN), and one such layer must not stop
    the metrics of the other layers and models (:func:`filterdb.metrics.cache.compute_metrics`).
    Its supports are counted by the same rules as for any layer; a comparison with NaN
    is false, so a NaN layer max makes no filter sparse. The supports weigh values only
    where the value is not None (SPEC section 5, depth bins).

    Parameters
    ----------
    weight
        The layer's weight, shape (C_out, C_in / groups, 3, 3), any float dtype, any
        strides, on any device. It moves to ``device`` once, in its own dtype, and is
        widened to float64 there (a numpy array is first copied into a torch tensor).
    eps
        Sparsity threshold, as a share of the layer max (finite, ``>= 0``).
    device
        Where the arithmetic runs (``"cuda"`` when there is one).

    Returns
    -------
    dict
        Metric name to :class:`MetricValue`, keys in registry order.

    Raises
    ------
    MetricError
        ``eps`` is negative, infinite or NaN.
    ValueError
        ``weight`` is not a non-empty (C_out, C_in / groups, 3, 3) array.
    """
    kernels = _kernels_float64(weight, device)
    filters = kernels.reshape(-1, 9)
    # One |w| pass serves the peaks and l1 (summed in the same order as filters.abs().sum()).
    magnitudes = filters.abs()
    peaks = magnitudes.amax(dim=1)
    layer_max = peaks.max()
    l1 = float(magnitudes.sum())
    del magnitudes
    sparse = is_sparse(peaks, layer_max, eps=eps)
    n_sparse = int(sparse.sum())
    # With no sparse filter the non-sparse set is the layer itself: no copy, and its
    # entropy is the one of all filters (the same arithmetic on the same values).
    kept, kept_peaks = (filters, peaks) if n_sparse == 0 else (filters[~sparse], peaks[~sparse])
    entropy_sets = {
        "variance_entropy": filters,
        "variance_entropy_clean": kept,
        "variance_entropy_scaled": scale_by_peak(kept, kept_peaks),
    }
    n_filters = filters.shape[0]
    supports = {"sparsity": n_filters, "orthogonality": kernels.shape[0]}
    supports |= {"l1": filters.numel(), "l2": filters.numel()}
    for name, subset in entropy_sets.items():
        supports[name] = supports[f"{name}_norm"] = subset.shape[0]
    # max |w| propagates NaN and is infinite with any infinite weight: one number says
    # whether the layer is finite, without a pass of its own over the weights.
    if not math.isfinite(float(layer_max)):
        return {name: MetricValue(None, supports[name]) for name in METRICS}

    import torch

    values = {
        "sparsity": n_sparse / n_filters,
        "orthogonality": orthogonality(kernels),
        "l1": l1,
        "l2": float(torch.linalg.vector_norm(filters)),
    }
    for name, subset in entropy_sets.items():
        if name == "variance_entropy_clean" and n_sparse == 0:
            values[name] = values["variance_entropy"]
        else:
            values[name] = variance_entropy(subset)
        values[f"{name}_norm"] = normalized_entropy(values[name], subset.shape[0])
    return {name: MetricValue(values[name], supports[name]) for name in METRICS}


def require_eps(eps: float) -> None:
    """Refuse a sparsity threshold that is negative, infinite or NaN (:class:`MetricError`).

    A negative eps would keep all-zero filters, an infinite one makes 0 x inf = NaN. Every
    function that takes an eps comes through here (:func:`is_sparse` calls it); the
    long-running ones (:func:`filterdb.metrics.cache.compute_metrics`, the PCA and drift of
    :mod:`filterdb.analysis.pca_drift`) call it before any work.
    """
    if not 0 <= eps < math.inf:
        raise MetricError(
            f"sparsity eps must be finite and >= 0, got {eps!r}; "
            f"the default is {DEFAULT_SPARSITY_EPS}"
        )


def is_sparse(peaks: ArrayT, layer_max: ArrayT | float, *, eps: float) -> ArrayT:
    """Which filters are sparse: max |w| at most ``eps`` x the max |w| of their layer.

    ``peaks`` holds each filter's largest absolute weight, (n,), and ``layer_max`` the max
    of its layer: one value, or one per filter for a pooled group (SPEC section 5 judges
    sparsity per layer). A numpy array or a torch tensor, in float64: the threshold is the
    float64 product ``eps * layer_max``. The comparison is ``<=``, as in the robustness
    paper (CNN Filter DB used ``<``), so an all-zero filter is always sparse and an
    all-zero layer is all sparse. Returns a bool array of the kind of ``peaks``.

    Raises
    ------
    MetricError
        ``eps`` is negative, infinite or NaN.
    """
    require_eps(eps)
    return peaks <= eps * layer_max


def scale_by_peak(filters: ArrayT, peaks: ArrayT) -> ArrayT:
    """Each filter, shape (n, 9), divided by its largest absolute weight ``peaks``, (n,).

    The scaling of ``variance_entropy_scaled`` and of PCA eigen-filters (SPEC section 5);
    all-zero filters stay zero. A numpy array or a torch tensor, as :func:`is_sparse`.
    """
    return filters / peak_divisors(peaks)[:, None]


def peak_divisors(peaks: ArrayT) -> ArrayT:
    """What :func:`scale_by_peak` divides each filter by: its peak, or 1 for an all-zero
    filter. A numpy array or a torch tensor, as :func:`is_sparse`."""
    # Bools add as 0 and 1 in numpy and torch alike, where their `where` functions differ.
    return peaks + (peaks == 0)


def variance_entropy(filters: torch.Tensor) -> float | None:
    """Variance entropy H (log10) of a set of m filters, shape (m, 9); None when m < 2.

    Centres the filters by their mean and hands the 9x9 scatter matrix of the centred rows
    to :func:`variance_entropy_from_covariance` (centring first keeps identical filters at
    H = 0 instead of at the rounding noise of sums of products).
    """
    n_filters = filters.shape[0]
    if n_filters < 2:
        return None
    centred = filters - filters.mean(dim=0)
    scatter = centred.T @ centred
    return variance_entropy_from_covariance(scatter.cpu().numpy(), n_filters=n_filters)


def variance_entropy_from_covariance(covariance: np.ndarray, *, n_filters: int) -> float | None:
    """Variance entropy H (log10) of ``n_filters`` filters from their 9x9 covariance matrix.

    ``covariance`` may be any positive multiple of the covariance (the scatter matrix of the
    centred filters, as :func:`variance_entropy` passes): H depends only on the shares of
    its eigenvalues. The eigenvalues are the variances v = s^2 / (m - 1) of SPEC section 5;
    tiny negative ones from rounding count as 0. H = -sum p log10 p with p = v / sum(v)
    and 0 log 0 = 0; H = 0 when sum(v) = 0 and None when ``n_filters`` < 2.
    """
    if n_filters < 2:
        return None
    variances = np.clip(np.linalg.eigvalsh(np.asarray(covariance, dtype=np.float64)), 0.0, None)
    total = variances.sum()
    if total == 0:
        return 0.0
    shares = variances[variances > 0] / total
    return float(-(shares * np.log10(shares)).sum())


def expected_random_entropy(n_filters: int) -> float:
    """H_max(m): the logistic fit of the variance entropy of m random filters (m >= 1).

    H_max(m) = L / (1 + exp(-k (log2 m - x0))) + b (SPEC section 5); it is <= 0 for m < 3.
    """
    return _H_MAX_L / (1.0 + math.exp(-_H_MAX_K * (math.log2(n_filters) - _H_MAX_X0))) + _H_MAX_B


def normalized_entropy(entropy: float | None, n_filters: int) -> float | None:
    """H / H_max(m) for an entropy computed on ``n_filters`` filters; None when m < 3.

    None too when ``entropy`` is None (SPEC section 5: H_max(m) <= 0 for m < 3).
    """
    if entropy is None or n_filters < 3:
        return None
    return entropy / expected_random_entropy(n_filters)


def orthogonality(kernels: torch.Tensor) -> float | None:
    """Orthogonality of a layer from its kernel matrix K, shape (C_out, C_in / groups * 9).

    Rows are scaled to unit L2 norm (a zero row stays zero), G = K K^T, and
    orthogonality = 1 - sum |G - I| / (C_out (C_out - 1)); None when C_out < 2. As in the
    paper's formula, a zero row contributes |0 - 1| = 1 from the diagonal (SPEC section 5).
    """
    import torch

    n_out = kernels.shape[0]
    if n_out < 2:
        return None
    # Normalising the Gram matrix instead of K saves a copy of K; the norms come from G's
    # own diagonal, so a non-zero row's diagonal entry is 1 up to one rounding.
    gram = kernels @ kernels.T
    norms = gram.diagonal().sqrt()
    inverse = torch.where(norms > 0, 1.0 / norms, 0.0)
    cosines = gram * inverse[:, None] * inverse[None, :]
    cosines.diagonal().sub_(1.0)
    return 1.0 - float(cosines.abs().sum()) / (n_out * (n_out - 1))


def _kernels_float64(weight: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """The weight as a contiguous float64 (C_out, C_in / groups * 9) tensor on ``device``."""
    import torch

    if isinstance(weight, np.ndarray):
        # torch.from_numpy refuses negative strides (even on a length-1 axis of a
        # "contiguous" array) and warns on read-only arrays: copy those, share the rest
        # (the float64 widening below copies anyway).
        shareable = weight.flags.c_contiguous and weight.flags.writeable
        if not (shareable and all(stride >= 0 for stride in weight.strides)):
            weight = np.array(weight, order="C")
        weight = torch.from_numpy(weight)
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or weight.numel() == 0:
        raise ValueError(
            f"expected a non-empty (C_out, C_in/groups, 3, 3) weight, got {tuple(weight.shape)}"
        )
    # Move in the stored dtype (half the bytes of float64), widen on the device.
    on_device = weight.detach().to(device=device)
    return on_device.to(torch.float64).contiguous().reshape(weight.shape[0], -1)
