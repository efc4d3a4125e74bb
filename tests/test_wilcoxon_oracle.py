"""Wilcoxon signed-rank p-values for tied pairs, derived by hand without scipy.

filterdb documents (``filterdb.analysis.comparison``): with tied |differences|, up to
``MAX_PERMUTATION_PAIRS`` (13, where scipy's own "auto" stops enumerating) pairs get the
exact permutation p-value, more pairs the normal approximation with tie correction. This
module derives both by hand: the exact p by enumerating all 2^n sign flips of the average
ranks, the approximation from the textbook formula. The two differ on these samples, so a
different cut (8, say) fails here.
"""

from __future__ import annotations

import itertools
import math

import pytest

from filterdb.analysis.comparison import compare_samples

# Ranks by hand for |d| = 1, 2, 2, 3, 4, 4, 5, 6, ...: ties at 2 and at 4.
BASE = [1.0, -2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0, 7.0, 8.0, -9.0, 10.0, 11.0, 12.0]


def average_ranks(sizes: list[float]) -> list[float]:
    """1-based ranks of ``sizes``, ties given the mean of the ranks they span."""
    return [sum(s < x for s in sizes) + (sum(s == x for s in sizes) + 1) / 2 for x in sizes]


def exact_p(differences: list[float]) -> float:
    """Two-sided exact p: W+ over every one of the 2^n equally likely sign patterns."""
    ranks = average_ranks([abs(d) for d in differences])
    observed = sum(r for r, d in zip(ranks, differences, strict=True) if d > 0)
    low = high = 0
    patterns = list(itertools.product((False, True), repeat=len(ranks)))
    for signs in patterns:
        plus = sum(r for r, positive in zip(ranks, signs, strict=True) if positive)
        low += plus <= observed + 1e-9
        high += plus >= observed - 1e-9
    return min(1.0, 2 * min(low, high) / len(patterns))


def normal_approximation_p(differences: list[float]) -> float:
    """Two-sided p of z = (W+ - n(n+1)/4) / sd, sd with the tie term, no continuity step."""
    n = len(differences)
    sizes = [abs(d) for d in differences]
    ranks = average_ranks(sizes)
    plus = sum(r for r, d in zip(ranks, differences, strict=True) if d > 0)
    ties = [sizes.count(size) for size in set(sizes)]
    variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    z = (plus - n * (n + 1) / 4) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("n", range(5, 15))
def test_tied_pairs_get_the_documented_p_value(n):
    differences = BASE[:n]
    normal = [float(i % 3) for i in range(n)]
    robust = [a + d for a, d in zip(normal, differences, strict=True)]
    result = compare_samples(robust, normal, paired=True)
    exact, approximate = exact_p(differences), normal_approximation_p(differences)
    # The two methods tell apart on these samples, so the test sees which one ran.
    assert abs(exact - approximate) > 1e-4
    expected = exact if n <= 13 else approximate
    assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_a_hand_enumerated_case():
    # |d| = 1, 2, 2 (ranks 1, 2.5, 2.5), signs +, -, +: W+ = 3.5. Of the 8 sign patterns,
    # W+ <= 3.5 for {}, {1}, {2}, {3}, {1, 2}, {1, 3}: 6; W+ >= 3.5 for {1, 2}, {1, 3},
    # {2, 3}, {1, 2, 3}: 4. p = 2 * 4/8 = 1.
    assert exact_p([1.0, -2.0, 2.0]) == 1.0
    # |d| = 1, 2, 2, 3 all positive: W+ = 10, the largest: 1 pattern of 16 each way.
    assert exact_p([1.0, 2.0, 2.0, 3.0]) == 2 / 16
    assert compare_samples([1.0, 2.0, 2.0, 3.0], [0.0] * 4, paired=True).p_value == 2 / 16
