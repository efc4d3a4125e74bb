"""Every drift value comes with its noise reference: a seeded label-permutation null.

Groups are random-normal filters; "one distribution" and "clearly different" are decided
by how the test draws them, not by filterdb code.
"""

from __future__ import annotations

import numpy as np
import pytest

from filterdb.metrics.drift import (
    NOISE_LEVEL,
    NULL_MAX_FILTERS,
    drift_matrix,
    drift_series,
    permutation_null,
)
from filterdb.metrics.pca import fit_pca

TRIALS = 40


def one_distribution(seed: int, n_first: int, n_second: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_first, 9)), rng.standard_normal((n_second, 9))


@pytest.mark.parametrize(("n_first", "n_second"), [(16, 16), (16, 200), (300, 300)])
def test_groups_from_one_distribution_are_within_noise(n_first, n_second):
    within = [
        drift_series({"bin": one_distribution(trial, n_first, n_second)}, seed=trial)
        .nulls["bin"]
        .within_noise
        for trial in range(TRIALS)
    ]
    assert sum(within) >= 0.9 * TRIALS


# At 16 filters a side nearly every one of the 70 bins is empty, and even a 3-sigma shift
# is flagged in only 12 of 40 trials (measured): drift cannot see much there.
@pytest.mark.parametrize("n", [64, 300])
def test_clearly_different_distributions_are_not_within_noise(n):
    flagged = []
    for trial in range(TRIALS):
        rng = np.random.default_rng(trial)
        first = rng.standard_normal((n, 9))
        # The second group's filters have one dominant direction: another distribution.
        second = rng.standard_normal((n, 9)) * np.array([4.0, *[0.5] * 8])
        null = drift_series({"bin": (first, second)}, seed=trial).nulls["bin"]
        flagged.append(not null.within_noise)
    assert sum(flagged) >= 0.9 * TRIALS


def full_size_null(first: np.ndarray, second: np.ndarray):
    """The permutation null of two groups at their own sizes, never subsampled."""
    pooled = np.concatenate([first, second])
    basis = fit_pca(pooled)
    coefficients = basis.coefficients(pooled)
    lo, hi = float(coefficients.min()), float(coefficients.max())
    return permutation_null(
        coefficients[: len(first)],
        coefficients[len(first) :],
        lo=lo,
        hi=hi,
        ratios=basis.ratio,
        max_filters=len(first) + len(second),
    )


def test_small_groups_drift_a_lot_under_no_difference():
    # Issue 12: two sets of 16 random-normal filters drift by about 21; 4,096 by about 0.05.
    small = full_size_null(*one_distribution(0, 16, 16))
    large = full_size_null(*one_distribution(0, 4096, 4096))
    assert 15 < small.median < 30
    assert 0.02 < large.median < 0.1
    assert small.low <= small.median <= small.high
    # A subsample's null lies above the full groups' null: the p-value is conservative.
    subsampled = drift_series({"bin": one_distribution(0, 4096, 4096)}).nulls["bin"]
    assert subsampled.subsampled and subsampled.median > large.median


def test_the_null_is_seeded_and_the_same_on_every_run():
    groups = {"a": one_distribution(1, 40, 60), "b": one_distribution(2, 30, 30)}
    assert drift_series(groups).nulls == drift_series(groups).nulls
    assert drift_series(groups, seed=1).nulls != drift_series(groups).nulls


def test_the_null_compares_the_value_itself_when_not_subsampled():
    first, second = one_distribution(3, 50, 70)
    series = drift_series({"bin": (first, second)})
    null = series.nulls["bin"]
    assert null.sizes == (50, 70) and not null.subsampled
    assert null.observed == pytest.approx(series.values["bin"], rel=1e-12)
    assert null.n_permutations == 99
    # p-value by hand from its definition: the permutation drifts at least the observed.
    assert (null.p_value * 100) == pytest.approx(round(null.p_value * 100))
    assert NOISE_LEVEL == 0.05


def test_large_pairs_are_subsampled_in_proportion():
    first, second = one_distribution(4, 20_000, 5_000)
    pooled = np.concatenate([first, second])
    coefficients = fit_pca(pooled).coefficients(pooled)
    lo, hi = float(coefficients.min()), float(coefficients.max())
    null = permutation_null(
        coefficients[:20_000],
        coefficients[20_000:],
        lo=lo,
        hi=hi,
        ratios=np.full(9, 1 / 9),
    )
    assert null.subsampled
    assert sum(null.sizes) == NULL_MAX_FILTERS
    assert null.sizes[0] == pytest.approx(4 * null.sizes[1], rel=0.01)


def test_an_exact_permutation_p_value_by_enumeration():
    # Two groups of 3 filters: C(6, 3) = 20 labelings. With enough permutations the p-value
    # approaches the share of labelings whose drift is at least the observed one.
    import itertools

    from filterdb.metrics.drift import BINS, EMPTY_BIN_DENSITY, _symmetric_kl

    def histogram(values: np.ndarray, *, lo: float, hi: float, bins: int) -> np.ndarray:
        """SPEC steps 4-5 by hand: numpy's density histogram, empty bins at epsilon."""
        rows = []
        for k in range(9):
            counts, edges = np.histogram(values[:, k], bins=bins, range=(lo, hi))
            density = counts / (len(values) * np.diff(edges))
            density[counts == 0] = EMPTY_BIN_DENSITY
            rows.append(density / density.sum())
        return np.array(rows)

    rng = np.random.default_rng(5)
    pooled = rng.standard_normal((6, 9))
    pooled[3:] *= 3
    basis = fit_pca(np.concatenate([pooled] * 2))
    coefficients = basis.coefficients(np.concatenate([pooled] * 2))
    coefficients = coefficients[:6]
    lo, hi = float(coefficients.min()), float(coefficients.max())

    def drift_of(rows: tuple[int, ...]) -> float:
        rest = [i for i in range(6) if i not in rows]
        p = histogram(coefficients[list(rows)], lo=lo, hi=hi, bins=BINS)
        q = histogram(coefficients[rest], lo=lo, hi=hi, bins=BINS)
        return _symmetric_kl(p, q, basis.ratio)

    observed = drift_of((0, 1, 2))
    exact = np.mean(
        [drift_of(rows) >= observed - 1e-12 for rows in itertools.combinations(range(6), 3)]
    )
    null = permutation_null(
        coefficients[:3], coefficients[3:], lo=lo, hi=hi, ratios=basis.ratio, n_permutations=4000
    )
    assert null.observed == pytest.approx(observed, rel=1e-12)
    assert null.p_value == pytest.approx(exact, abs=0.03)


def test_a_matrix_has_a_null_per_pair():
    groups = {name: one_distribution(i, 30, 0)[0] for i, name in enumerate("abc")}
    result = drift_matrix(groups)
    assert set(result.nulls) == {(0, 1), (0, 2), (1, 2)}
    medians = result.null_matrix("median")
    assert np.isnan(np.diag(medians)).all()
    np.testing.assert_array_equal(medians, medians.T)
    assert drift_matrix(groups, n_permutations=0).nulls == {}
