"""PCA eigen-filters and drift (SPEC section 5) against an oracle written from the SPEC.

The oracle (tests/oracles.py) shares no code with filterdb: plain loops for sparsity and scaling, an
SVD of the centred matrix (not an eigen-decomposition of the covariance) with the
scikit-learn 0.24.1 sign flip on U, bins found by ``searchsorted`` on the edges, and
scipy's ``entropy`` for KL, as the robustness paper's notebook did.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from oracles import oracle_drifts, oracle_pca, oracle_scale
from sklearn.decomposition import PCA

from filterdb.errors import FilterdbError, MetricError, NoPCA
from filterdb.metrics import layer
from filterdb.metrics.drift import drift_matrix, drift_series
from filterdb.metrics.pca import PCAResult, fit_pca, orient, scale_non_sparse

TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}
FLOAT32_EPS = 2.0**-23
EMPTY = np.empty((0, 9))


# --- the oracle, from SPEC section 5 ------------------------------------------------------


# --- data ---------------------------------------------------------------------------------


def raw_model(rng: np.random.Generator, layers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled float32 filters of a model and each filter's layer max.

    Every layer has its own scale and offset, a few near-zero filters (sparse by the
    layer max) and an all-zero filter.
    """
    filters, layer_max = [], []
    for n in layers:
        layer = (rng.normal(rng.normal(0, 0.3), rng.uniform(0.05, 2.0), (n, 9))).astype(np.float32)
        layer[: max(1, n // 8)] *= np.float32(1e-4)
        layer[-1] = 0.0
        filters.append(layer)
        layer_max.append(np.full(n, np.abs(layer).max(), dtype=np.float64))
    return np.vstack(filters), np.concatenate(layer_max)


def scaled_model(rng: np.random.Generator, layers: list[int]) -> np.ndarray:
    return scale_non_sparse(*raw_model(rng, layers))


# --- scale_non_sparse -----------------------------------------------------------------------


def test_scale_non_sparse_known_answer():
    filters = np.array(
        [
            [100.0, 0, 0, 0, 0, 0, 0, 0, 0],  # sets the layer max
            [1.0, -0.5, 0, 0, 0, 0, 0, 0, 0],  # peak exactly eps * layer max: sparse
            [np.nextafter(1.0, 2.0), 0, 0, 0, 0, 0, 0, 0, 0],  # just above: kept
            [0.0] * 9,  # all zero: sparse
            [2.0, -4.0, 1.0, 0, 0, 0, 0, 0, 3.0],  # largest |w| is negative
        ]
    )
    scaled = scale_non_sparse(filters, 100.0)
    assert scaled.dtype == np.float64
    expected = np.zeros((3, 9))
    expected[0, 0] = expected[1, 0] = 1.0
    expected[2, [0, 1, 2, 8]] = [0.5, -1.0, 0.25, 0.75]
    np.testing.assert_array_equal(scaled, expected)


def test_scale_non_sparse_judges_each_filter_by_its_own_layer():
    filters = np.array([[0.5] + [0.0] * 8, [0.5] + [0.0] * 8], dtype=np.float32)
    # The same filter is sparse in a layer whose max is 60, not in one whose max is 40.
    scaled = scale_non_sparse(filters, np.array([60.0, 40.0]))
    np.testing.assert_array_equal(scaled, [[1.0] + [0.0] * 8])


def test_scale_non_sparse_matches_oracle_and_drops_an_all_zero_layer():
    raw, layer_max = raw_model(np.random.default_rng(1), [40, 25, 60])
    scaled = scale_non_sparse(raw, layer_max)
    np.testing.assert_array_equal(scaled, oracle_scale(raw, layer_max))
    assert 0 < len(scaled) < len(raw)
    assert scale_non_sparse(np.zeros((7, 9), np.float32), 0.0).shape == (0, 9)


def test_scale_non_sparse_agrees_with_the_sparsity_metric():
    # SPEC: PCA drops sparse filters "per layer, as in sparsity"; same mask, same scaling.
    raw, layer_max = raw_model(np.random.default_rng(11), [64])
    scaled = scale_non_sparse(raw, layer_max[0])
    metrics = layer.layer_metrics(raw.reshape(-1, 1, 3, 3))
    assert metrics["sparsity"].value == (len(raw) - len(scaled)) / len(raw)
    assert metrics["variance_entropy_scaled"].support == len(scaled)
    assert metrics["variance_entropy_scaled"].value == pytest.approx(
        layer.variance_entropy(torch.from_numpy(scaled)), rel=1e-12
    )


@pytest.mark.parametrize("eps", [-0.01, math.inf, math.nan])
def test_scale_non_sparse_refuses_a_bad_eps(eps):
    with pytest.raises(MetricError, match="sparsity eps must be finite and >= 0"):
        scale_non_sparse(np.ones((3, 9)), 1.0, eps=eps)


# --- fit_pca ---------------------------------------------------------------------------------


def test_fit_pca_matches_svd_oracle():
    scaled = scaled_model(np.random.default_rng(2), [50, 30, 80])
    result = fit_pca(scaled)
    mean, components, variance, ratio = oracle_pca(scaled)
    assert result.n_filters == len(scaled)
    np.testing.assert_allclose(result.mean, mean, **TOLERANCE)
    np.testing.assert_allclose(result.components, components, **TOLERANCE)
    np.testing.assert_allclose(result.explained_variance, variance, **TOLERANCE)
    np.testing.assert_allclose(result.ratio, ratio, **TOLERANCE)
    np.testing.assert_allclose(result.cumulative, np.cumsum(ratio), **TOLERANCE)


def test_fit_pca_basis_properties():
    scaled = scaled_model(np.random.default_rng(3), [30, 45])
    result = fit_pca(scaled)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(9), atol=1e-12)
    assert np.all(np.diff(result.explained_variance) <= 0)
    assert result.ratio.sum() == pytest.approx(1.0, abs=1e-12)
    assert result.cumulative[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(result.cumulative) >= 0)
    # Coefficients and components rebuild every filter.
    rebuilt = result.mean + result.coefficients(scaled) @ result.components
    np.testing.assert_allclose(rebuilt, scaled, atol=1e-12)
    assert result.images.shape == (9, 3, 3)
    np.testing.assert_array_equal(result.images[0].ravel(), result.components[0])


def skewed_axis_group() -> np.ndarray:
    """Component k is axis k; on it the one extreme filter is negative ([-2, 1, 1] s_k)."""
    filters = np.zeros((27, 9))
    for k in range(9):
        filters[3 * k : 3 * k + 3, k] = (9 - k) / 18 * np.array([-2.0, 1.0, 1.0])
    return filters


def test_sign_rule_is_scikit_learn_0_24_1_not_the_newer_rule():
    filters = skewed_axis_group()
    result = fit_pca(filters)
    # 0.24.1: the filter with the largest |coefficient| is positive, so each axis is
    # flipped to -e_k; the newer rule (largest |entry| of the component) keeps +e_k.
    np.testing.assert_array_equal(result.components, -np.eye(9))
    newer = np.eye(9)
    np.testing.assert_allclose(PCA(svd_solver="full").fit(filters).components_, newer, atol=1e-12)
    coefficients = result.coefficients(filters)
    extremes = coefficients[np.argmax(np.abs(coefficients), axis=0), range(9)]
    assert np.all(extremes > 0)


def test_sign_rule_on_a_rotated_group_matches_oracle():
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(9, 9)))
    filters = skewed_axis_group() @ rotation + 0.25
    result = fit_pca(filters)
    # The known answer: component k is -rotation[k] (its extreme filter sits at -2 s_k).
    np.testing.assert_allclose(result.components, -rotation, atol=1e-12)
    np.testing.assert_allclose(result.components, oracle_pca(filters)[1], atol=1e-12)
    newer_signs = np.sign(rotation[range(9), np.argmax(np.abs(rotation), axis=1)])
    assert np.any(newer_signs < 0), "the two rules must disagree somewhere for this test"


def test_sign_rule_exact_tie_falls_back_on_component_entries():
    # On axis k, the filters -s_k and +s_k tie; the negative one comes first, so a plain
    # "first argmax" rule would flip the axis. The tie rule keeps the entry +1.
    filters = np.zeros((18, 9))
    for k in range(9):
        filters[2 * k, k] = -(9 - k) / 9
        filters[2 * k + 1, k] = (9 - k) / 9
    np.testing.assert_array_equal(fit_pca(filters).components, np.eye(9))


def test_orientation_rules_on_crafted_components():
    components = np.zeros((4, 9))
    components[0, :3] = [0.25, -0.5, 0.5]  # tie in |entry|: the first, -0.5, decides
    components[1, :3] = [0.25, 0.5, -0.5]
    components[2, :3] = [0.25, 0.5, -0.5]
    components[3, :3] = [-0.25, -0.5, 0.5]
    coefficients = np.array(
        [
            [1.0, 1.0, -2.0, 0.0],
            [-1.0, -1.0, -2.0, 0.0],  # columns 0, 1: |coefficient| tie with both signs
            [0.5, 0.5, 1.0, 0.0],  # column 2: tie, one sign, so the filters decide
        ]
    )  # column 3: all zero, so the entries decide
    basis = PCAResult(np.zeros(9), components, np.ones(4), np.ones(4), np.ones(4), 3)
    oriented, signs, lo, hi = orient(basis, coefficients.min(axis=0), coefficients.max(axis=0))
    np.testing.assert_array_equal(signs, [-1, 1, -1, -1])
    np.testing.assert_array_equal(oriented.components, components * signs[:, None])
    assert (lo, hi) == (-1.0, 2.0)  # column 2 flipped: -2 becomes its largest coefficient


@pytest.mark.parametrize("n", [0, 1, 8])
def test_fit_pca_needs_nine_filters(n):
    with pytest.raises(NoPCA, match=f"has {n} non-sparse filters .* at least 9") as error:
        fit_pca(np.random.default_rng(5).normal(size=(n, 9)))
    assert isinstance(error.value, FilterdbError)
    assert "\n" not in str(error.value)


def test_fit_pca_refuses_zero_variance():
    # 0.1 has no exact binary form: the float mean of the rows is not the row itself.
    with pytest.raises(NoPCA, match="identical .*zero total variance"):
        fit_pca(np.full((30, 9), 0.1))


def test_fit_pca_refuses_non_finite_weights():
    filters = np.random.default_rng(6).normal(size=(12, 9))
    filters[3, 4] = np.nan
    with pytest.raises(NoPCA, match="NaN or infinite"):
        fit_pca(filters)


# --- drift ------------------------------------------------------------------------------------


def test_drift_matrix_matches_oracle_on_models_with_sparse_and_zero_filters():
    rng = np.random.default_rng(7)
    raw = {
        name: raw_model(rng, layers)
        for name, layers in [("a", [30, 50]), ("b", [40, 20, 30]), ("c", [25]), ("d", [60, 10])]
    }
    groups = {name: scale_non_sparse(*model) for name, model in raw.items()}
    groups["empty"] = scale_non_sparse(np.zeros((5, 9), np.float32), 0.0)
    oracle_groups = {name: oracle_scale(*model) for name, model in raw.items()}
    result = drift_matrix(groups)
    assert result.names == ("a", "b", "c", "d")
    assert result.skipped == ("empty",)
    assert result.n_filters == tuple(len(oracle_groups[name]) for name in result.names)
    pairs = [(a, b) for a in result.names for b in result.names]
    expected = np.reshape(oracle_drifts(oracle_groups, pairs), (4, 4))
    np.testing.assert_allclose(result.matrix, expected, **TOLERANCE)
    np.testing.assert_allclose(
        result.ratios, oracle_pca(np.vstack(list(oracle_groups.values())))[3], **TOLERANCE
    )
    assert np.all(np.diag(result.matrix) == 0)
    np.testing.assert_array_equal(result.matrix, result.matrix.T)
    assert np.all(result.matrix[~np.eye(4, dtype=bool)] > 0)


def test_drift_known_answer_uses_density_not_count():
    # Only w1 varies: group a (3 filters) at -1, group b (7 filters) at +1. The union
    # basis has r_0 = 1; one group fills the first of the 70 bins, the other the last
    # (c = hi). Both have density N / (N * width) = 35 there, whatever N, and 2^-23 in
    # the 69 empty bins, so drift = 2 (f - e) ln(f / e) with f = 35 / (35 + 69 * 2^-23)
    # and e = 2^-23 / (35 + 69 * 2^-23). Replacing empty counts (not densities) by 2^-23
    # would give the two groups different f and another value.
    filters = np.zeros((10, 9))
    filters[:, 0] = 1.0
    filters[:3, 1] = -1.0
    filters[3:, 1] = 1.0
    result = drift_matrix({"a": filters[:3], "b": filters[3:]})
    np.testing.assert_array_equal(result.ratios, [1.0] + [0.0] * 8)
    total = 35 + 69 * FLOAT32_EPS
    full, empty = 35 / total, FLOAT32_EPS / total
    assert result.matrix[0, 1] == pytest.approx(
        2 * (full - empty) * math.log(full / empty), rel=1e-12
    )
    assert (result.lo, result.hi) == (-0.6, 1.4)  # oriented: a's three tied filters positive
    np.testing.assert_array_equal(result.basis.components[0], -np.eye(9)[1])


def test_drift_of_a_group_with_itself_is_zero():
    group = scaled_model(np.random.default_rng(8), [40, 30])
    result = drift_matrix({"x": group, "y": group.copy(), "z": group[::-1].copy()})
    np.testing.assert_array_equal(result.matrix, np.zeros((3, 3)))


def test_drift_needs_a_pca_of_the_union():
    with pytest.raises(NoPCA, match="has 5 non-sparse filters"):
        drift_matrix({"a": np.random.default_rng(9).normal(size=(5, 9)), "b": EMPTY})


def test_drift_series_uses_one_basis_for_the_whole_series():
    rng = np.random.default_rng(10)
    bins = ["first", "(0.0, 0.1]", "(0.9, 1.0]", "(0.4, 0.5]"]
    groups = {
        f"{side} {label}": scaled_model(rng, [n])
        for label, n in zip(bins, [30, 60, 45, 20], strict=True)
        for side in ("robust", "normal")
    }
    groups["normal (0.4, 0.5]"] = EMPTY
    pairs = {label: (groups[f"robust {label}"], groups[f"normal {label}"]) for label in bins}
    series = drift_series(pairs)
    assert list(series.values) == bins[:3]
    assert series.skipped == ("(0.4, 0.5]",)
    expected = oracle_drifts(groups, [(f"robust {label}", f"normal {label}") for label in bins[:3]])
    np.testing.assert_allclose(list(series.values.values()), expected, **TOLERANCE)
    # The skipped bin's robust filters still shape the basis ...
    assert series.basis.n_filters == sum(len(group) for group in groups.values())
    # ... and a bin compared alone (its own basis and range) drifts by another amount.
    alone = drift_matrix({"r": pairs["first"][0], "n": pairs["first"][1]}).matrix[0, 1]
    assert abs(alone - series.values["first"]) > 1e-3 * alone


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    layers=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=3), min_size=2, max_size=4),
)
def test_drift_properties(seed, layers):
    rng = np.random.default_rng(seed)
    groups = {f"g{i}": scaled_model(rng, model) for i, model in enumerate(layers)}
    assume(sum(len(group) for group in groups.values()) >= 9)
    result = drift_matrix(groups)
    matrix = result.matrix
    assert np.all(matrix >= 0)
    np.testing.assert_array_equal(matrix, matrix.T)
    assert np.all(np.diag(matrix) == 0)
    kept = [name for name in groups if len(groups[name])]
    expected = oracle_drifts(groups, [(a, b) for a in kept for b in kept])
    np.testing.assert_allclose(matrix, np.reshape(expected, matrix.shape), **TOLERANCE)
    # Row order within a group, and the order of the groups, change nothing but rounding.
    shuffled = {
        name: group[rng.permutation(len(group))] for name, group in reversed(groups.items())
    }
    again = drift_matrix(shuffled)
    order = [again.names.index(name) for name in result.names]
    np.testing.assert_allclose(again.matrix[np.ix_(order, order)], matrix, **TOLERANCE)


def plain_coefficients(filters: np.ndarray, mean: np.ndarray, components: np.ndarray) -> list:
    """c_k = 0 + (f_0 - m_0) w_k0 + ... + (f_8 - m_8) w_k8, in Python floats, left to right."""
    rows = []
    for row in filters.tolist():
        centred = [value - m for value, m in zip(row, mean.tolist(), strict=True)]
        rows.append([])
        for component in components.tolist():
            total = 0.0
            for value, weight in zip(centred, component, strict=True):
                total = total + value * weight  # two roundings, no fused multiply-add
            rows[-1].append(total)
    return rows


def test_coefficients_are_the_bits_of_a_plain_sum_in_any_chunk():
    # Bits, not a tolerance: a subgroup's coefficients must stay inside the union's range.
    rng = np.random.default_rng(7)
    filters = rng.standard_normal((20_000, 9))
    basis = fit_pca(filters)
    chunked = basis.coefficients(filters)
    expected = np.array(plain_coefficients(filters[:300], basis.mean, basis.components))
    np.testing.assert_array_equal(chunked[:300].view(np.int64), expected.view(np.int64))
    # Rows past the first chunk, and the same rows on their own, give the same bits.
    np.testing.assert_array_equal(
        basis.coefficients(filters[-300:]).view(np.int64), chunked[-300:].view(np.int64)
    )
    # Every product -0.0: the plain sum starts at +0.0, so the coefficient is +0.0.
    negative = type(basis)(**{**vars(basis), "mean": np.zeros(9), "components": -np.ones((9, 9))})
    assert not np.signbit(negative.coefficients(np.zeros((3, 9)))).any()


def numpy_histograms(coefficients: np.ndarray, lo: float, hi: float, bins: int = 70) -> np.ndarray:
    """SPEC step 4 as written: numpy.histogram of each coefficient column on [lo, hi]."""
    return np.array(
        [np.histogram(coefficients[:, k], bins=bins, range=(lo, hi))[0] for k in range(9)]
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(9, 250),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    on_a_grid=st.booleans(),
    span=st.sampled_from(["own", "wider", "narrower"]),
)
def test_extremes_and_counts_are_those_of_the_exact_coefficients(seed, n, scale, on_a_grid, span):
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((n, 9)) * scale
    if on_a_grid:  # ties, zeros and repeated filters
        filters = np.round(filters / scale * 2) / 2 * scale
    try:
        basis = fit_pca(filters)
    except NoPCA:
        assume(False)
    exact = np.array(plain_coefficients(filters, basis.mean, basis.components))
    low, high = basis.coefficient_extremes(filters)
    np.testing.assert_array_equal(low.view(np.int64), exact.min(axis=0).view(np.int64))
    np.testing.assert_array_equal(high.view(np.int64), exact.max(axis=0).view(np.int64))
    lo, hi = float(exact.min()), float(exact.max())
    if span != "own":  # a range that holds more, or leaves values out (numpy drops them)
        lo, hi = (lo - 0.3 * (hi - lo), hi + 0.1) if span == "wider" else (lo / 2, hi / 3)
    counts = basis.coefficient_counts(filters, lo=lo, hi=hi, bins=70)
    np.testing.assert_array_equal(counts, numpy_histograms(exact, lo, hi))


def test_counts_of_coefficients_on_and_one_ulp_beside_the_bin_edges():
    # The approximation and the exact sum differ in the last bits: at an edge they would
    # fall in different bins, so those rows must be counted from their exact values.
    rng = np.random.default_rng(11)
    basis = fit_pca(rng.standard_normal((500, 9)))
    lo, hi = -2.0, 3.0
    edges = np.linspace(lo, hi, 71)
    targets = rng.choice(edges[1:-1], size=(20_000, 9))
    targets += rng.integers(-1, 2, size=targets.shape) * np.spacing(targets)
    filters = basis.mean + targets @ basis.components
    exact = basis.coefficients(filters)
    # The rows do sit at the edges: the test is about them.
    assert np.mean(np.min(np.abs(exact[..., None] - edges), axis=-1) < 1e-14) > 0.99
    counts = basis.coefficient_counts(filters, lo=lo, hi=hi, bins=70)
    np.testing.assert_array_equal(counts, numpy_histograms(exact, lo, hi))
    low, high = basis.coefficient_extremes(filters)  # 3 chunks, ties between them
    np.testing.assert_array_equal(low, exact.min(axis=0))
    np.testing.assert_array_equal(high, exact.max(axis=0))


def test_counts_in_a_range_too_narrow_for_its_magnitude_are_exact():
    rng = np.random.default_rng(12)
    filters = 1e6 + rng.standard_normal((400, 9)) * 1e-6
    basis = fit_pca(filters)
    exact = basis.coefficients(filters)
    lo, hi = float(exact.min()), float(exact.max())
    counts = basis.coefficient_counts(filters, lo=lo, hi=hi, bins=70)
    np.testing.assert_array_equal(counts, numpy_histograms(exact, lo, hi))
    assert counts.sum() == exact.size


def test_extremes_are_exact_when_chunks_tie_within_the_rounding():
    # One row per chunk (30 chunks) at the extreme of every component, a few ulps apart:
    # the approximation may rank them otherwise than their exact values do.
    rng = np.random.default_rng(13)
    basis = fit_pca(rng.standard_normal((500, 9)))
    chunks, rows = 30, 8192
    targets = rng.uniform(-1, 1, size=(chunks * rows, 9))
    for extreme in (-1.5, 1.5):
        at = np.arange(chunks) * rows + rng.integers(0, rows, chunks)
        targets[at] = extreme + rng.integers(-4, 5, size=(chunks, 9)) * np.spacing(1.5)
    filters = basis.mean + targets @ basis.components
    exact = basis.coefficients(filters)
    low, high = basis.coefficient_extremes(filters)
    np.testing.assert_array_equal(low, exact.min(axis=0))
    np.testing.assert_array_equal(high, exact.max(axis=0))
