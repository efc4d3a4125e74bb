"""Oracles and helpers the test modules share, so that no test module imports another.

Each oracle is written from the SPEC text (or from the published code it restates) and
shares no code with filterdb: that is what makes it an oracle.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import torch

# SPEC section 5: 70 equal-width bins per coefficient.
BINS = 70
FLOAT32_EPS = 2.0**-23
ENTROPIES = ("variance_entropy", "variance_entropy_clean", "variance_entropy_scaled")


# --- command-line results -------------------------------------------------------------------


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --- data ------------------------------------------------------------------------------


# The sparse threshold case of trained_state_dict's layer "2": 0.01 * 0.390625 == 2^-8.
AT_THRESHOLD_LAYER_MAX = 0.390625
AT_THRESHOLD_PEAK = np.float32(2.0**-8)


def trained_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A tiny CNN trained for a few steps on random data: real, non-random weights."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 12, 3, padding=1, groups=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(12, 6, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 3),
    )
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,))
    for _ in range(20):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()
    state = net.state_dict()
    # A sparse corner: filters far below 1% of the layer max, one exactly at the threshold.
    weight = state["2.weight"]  # (12, 2, 3, 3): 24 filters
    weight[:3] *= 1e-4
    # The layer max becomes 100 * 2^-8 (above every trained weight, about 0.24), so the
    # float64 threshold 0.01 * max is 2^-8 exactly: filter 6 peaks exactly there (sparse,
    # "<="), filter 7 one float32 step above it (kept).
    weight[11, 1, 2, 2] = AT_THRESHOLD_LAYER_MAX
    for index, peak in ((6, AT_THRESHOLD_PEAK), (7, np.nextafter(AT_THRESHOLD_PEAK, 1.0))):
        kernel = weight.view(-1, 9)[index]
        kernel.mul_(0.5 * float(peak) / kernel.abs().max().item())
        kernel[4] = float(peak)
    return state


def checkpoint_filters(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Every 3x3 kernel of a state dict, (n, 9), layers in key order: no filterdb code."""
    kernels = [w.reshape(-1, 9).numpy() for w in state.values() if w.shape[-2:] == (3, 3)]
    return np.concatenate(kernels)


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


# --- per-layer metrics (SPEC section 5), plain numpy --------------------------------------


def oracle_entropy(filters: np.ndarray) -> float | None:
    m = len(filters)
    if m < 2:
        return None
    singular = np.linalg.svd(filters - filters.mean(axis=0), compute_uv=False)
    variances = singular**2 / (m - 1)
    if variances.sum() == 0:
        return 0.0
    shares = variances / variances.sum()
    shares = shares[shares > 0]
    return float(-np.sum(shares * np.log10(shares)))


def oracle_norm(entropy: float | None, m: int) -> float | None:
    if entropy is None or m < 3:
        return None
    h_max = 1.2618047 / (1 + np.exp(-0.88767525 * (np.log2(m) - 2.30436435))) - 0.31050834
    return entropy / h_max


def oracle_orthogonality(weight: np.ndarray) -> float | None:
    c_out = weight.shape[0]
    if c_out < 2:
        return None
    rows = []
    for row in weight.reshape(c_out, -1):
        norm = math.sqrt(sum(x * x for x in row))
        rows.append(row / norm if norm > 0 else row)
    total = 0.0
    for i in range(c_out):
        for j in range(c_out):
            total += abs(float(np.dot(rows[i], rows[j])) - (1.0 if i == j else 0.0))
    return 1 - total / (c_out * (c_out - 1))


def oracle(weight: np.ndarray, eps: float = 0.01) -> dict[str, tuple[float | None, int]]:
    """(value, support) per metric, from the SPEC text."""
    w = np.asarray(weight, dtype=np.float64)
    filters = w.reshape(-1, 9)
    layer_max = np.abs(w).max()
    sparse = np.array([np.abs(f).max() <= eps * layer_max for f in filters])
    kept = filters[~sparse]
    scaled = np.array([f / np.abs(f).max() if np.abs(f).max() > 0 else f for f in kept])
    result = {"sparsity": (sparse.sum() / len(filters), len(filters))}
    for name, subset in zip(ENTROPIES, (filters, kept, scaled.reshape(-1, 9)), strict=True):
        entropy = oracle_entropy(subset)
        result[name] = (entropy, len(subset))
        result[f"{name}_norm"] = (oracle_norm(entropy, len(subset)), len(subset))
    result["orthogonality"] = (oracle_orthogonality(w), w.shape[0])
    result["l1"] = (np.abs(w).sum(), w.size)
    result["l2"] = (math.sqrt((w * w).sum()), w.size)
    return result


# --- PCA and drift (SPEC section 5) ---------------------------------------------------


def oracle_scale(filters: np.ndarray, layer_max: np.ndarray, eps: float = 0.01) -> np.ndarray:
    rows = []
    for row, row_layer_max in zip(filters.tolist(), layer_max.tolist(), strict=True):
        peak = max(abs(weight) for weight in row)
        if not peak <= eps * row_layer_max:  # sparse: "at most eps times the layer max"
            rows.append([weight / peak for weight in row])
    return np.array(rows, dtype=np.float64).reshape(-1, 9)


def oracle_pca(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components, explained variance, ratio): SVD, then flip on U (sklearn 0.24.1)."""
    n = len(scaled)
    mean = np.array([math.fsum(scaled[:, j]) / n for j in range(9)])
    u, s, vt = np.linalg.svd(scaled - mean, full_matrices=False)
    for k in range(9):
        if u[np.argmax(np.abs(u[:, k])), k] < 0:
            u[:, k] *= -1
            vt[k] *= -1
    variance = s**2 / (n - 1)
    return mean, vt, variance, variance / variance.sum()


def oracle_distribution(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    edges = np.linspace(lo, hi, BINS + 1)
    counts = np.zeros(BINS)
    for value in values:
        index = BINS - 1 if value == hi else int(np.searchsorted(edges, value, "right")) - 1
        counts[index] += 1
    density = counts / (len(values) * (hi - lo) / BINS)
    density[counts == 0] = FLOAT32_EPS
    return density / density.sum()


def oracle_drifts(groups: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> list[float]:
    """Drift of each pair of named groups, with one basis and range over all ``groups``."""
    groups = {name: group for name, group in groups.items() if len(group)}
    mean, components, _, ratio = oracle_pca(np.vstack(list(groups.values())))
    coefficients = {name: (group - mean) @ components.T for name, group in groups.items()}
    every = np.vstack(list(coefficients.values()))
    lo, hi = every.min(), every.max()
    drifts = []
    for a, b in pairs:
        total = 0.0
        for k in range(9):
            p = oracle_distribution(coefficients[a][:, k], lo, hi)
            q = oracle_distribution(coefficients[b][:, k], lo, hi)
            total += ratio[k] * (scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p))
        drifts.append(total)
    return drifts
