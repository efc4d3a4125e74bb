"""The claims' verdicts on crafted statistics where the answer is known, and on real tests.

Each frame is built bin by bin with the statistics a bin would have; the verdict the
module docstring's rules give is worked out by hand in each test.
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from filterdb.analysis.comparison import (
    PAIRED_TEST,
    STATISTICS_SCHEMA,
    UNPAIRED_TEST,
    compare_samples,
    holm,
)
from filterdb.analysis.findings import (
    CONTRADICTED,
    NOT_SIGNIFICANT,
    NOT_TESTABLE,
    SUPPORTED,
    directional_finding,
    findings,
    findings_frame,
    location_finding,
    scoped_pairings,
)
from filterdb.analysis.pairing import Pair, Pairing

LABELS = ("first", "0-10%", "10-20%", "20-30%", "90-100%")


def bin_row(metric: str, index: int, *, effect: float, p_holm: float, **extra) -> dict:
    """One bin's statistics: the numbers a verdict reads, the rest plausible."""
    row = {
        "metric": metric,
        "depth_bin_index": index,
        "depth_bin": LABELS[index] if index < len(LABELS) else f"bin{index}",
        "n_robust": 6,
        "robust_q1": 0.1,
        "robust_median": 0.2,
        "robust_q3": 0.3,
        "robust_max": 0.4,
        "n_normal": 6,
        "normal_q1": 0.1,
        "normal_median": 0.2 - effect / 10,
        "normal_q3": 0.3,
        "normal_max": 0.4,
        "median_difference": effect / 10,
        "effect_size_name": "rank-biserial (matched pairs)",
        "effect_size": effect,
        "test": PAIRED_TEST,
        "n_test": 6,
        "statistic": 0.0,
        "p_value": p_holm,
        "p_holm": p_holm,
        "min_p": 2 / 2**6,
        "note": "",
    }
    return row | extra


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=STATISTICS_SCHEMA)


def test_supported_when_a_bin_is_significant_in_the_claimed_direction_only():
    stats = frame(
        [
            bin_row("variance_entropy", 0, effect=1.0, p_holm=0.03),
            bin_row("variance_entropy", 1, effect=0.5, p_holm=0.4),
            bin_row("variance_entropy", 2, effect=-0.2, p_holm=0.8),
        ]
    )
    f = directional_finding(stats, "more_diverse", "variance_entropy", +1)
    assert f.verdict == SUPPORTED and f.direction == "robust higher"
    assert (f.bins_agreeing, f.bins_tested) == (2, 3)
    assert f.effect_size == 0.5 and f.median_difference == pytest.approx(0.05)
    assert f.p_adjusted == 0.03 and "first" in f.reason


def test_contradicted_when_significant_only_against_the_claim():
    stats = frame(
        [
            bin_row("sparsity", 0, effect=0.9, p_holm=0.01),
            bin_row("sparsity", 1, effect=0.8, p_holm=0.04),
            bin_row("sparsity", 2, effect=-0.1, p_holm=0.9),
        ]
    )
    f = directional_finding(stats, "less_sparse", "sparsity", -1)
    assert f.verdict == CONTRADICTED and f.direction == "robust higher"
    assert (f.bins_agreeing, f.bins_tested) == (1, 3)
    assert f.p_adjusted == 0.01


def test_significant_both_ways_is_not_significant():
    stats = frame(
        [
            bin_row("orthogonality", 0, effect=0.9, p_holm=0.01),
            bin_row("orthogonality", 1, effect=-0.9, p_holm=0.02),
        ]
    )
    f = directional_finding(stats, "more_orthogonal", "orthogonality", +1)
    assert f.verdict == NOT_SIGNIFICANT and "both ways" in f.reason
    assert f.direction == "no difference"  # median of 0.9 and -0.9


def test_no_significant_bin_is_not_significant():
    stats = frame([bin_row("orthogonality", i, effect=0.3, p_holm=0.2) for i in range(3)])
    f = directional_finding(stats, "more_orthogonal", "orthogonality", +1)
    assert f.verdict == NOT_SIGNIFICANT and f.reason == "no bin has adjusted p < 0.05"
    assert (f.bins_agreeing, f.bins_tested, f.p_adjusted) == (3, 3, 0.2)


def test_one_pair_cannot_reach_significance():
    # A real test of one pair: its smallest possible p is 2 / 2^1 = 1.
    test = compare_samples([0.9], [0.1], paired=True)
    row = bin_row(
        "variance_entropy_scaled",
        0,
        effect=test.effect_size,
        p_holm=holm([test.p_value])[0],
        min_p=test.min_p,
        n_test=test.n,
    )
    f = directional_finding(frame([row]), "more_diverse", "variance_entropy_scaled", +1)
    assert f.verdict == NOT_TESTABLE
    assert f.reason == "1 pair: the smallest possible p is 1"
    assert f.direction == "robust higher" and f.p_adjusted == 1.0


def test_small_unpaired_samples_name_models():
    test = compare_samples([0.9, 0.8], [0.1], paired=False)  # C(3, 2) = 3: min p 2/3
    row = bin_row(
        "orthogonality",
        0,
        effect=test.effect_size,
        p_holm=test.p_value,
        min_p=test.min_p,
        n_test=test.n,
        test=UNPAIRED_TEST,
    )
    f = directional_finding(frame([row]), "more_orthogonal", "orthogonality", +1)
    assert f.verdict == NOT_TESTABLE
    assert f.reason == "3 models: the smallest possible p is 0.667"


def test_no_sparse_filter_in_either_group():
    rows = [
        bin_row(
            "sparsity",
            i,
            effect=math.nan,
            p_holm=math.nan,
            robust_max=0.0,
            normal_max=0.0,
            note="no test: all paired differences are 0",
        )
        for i in range(3)
    ]
    f = directional_finding(frame(rows), "less_sparse", "sparsity", -1)
    assert f.verdict == NOT_TESTABLE and f.reason == "no sparse filter in either group"
    assert f.bins_tested == 0 and f.direction == "no difference"
    # One sparse filter somewhere and the claim is testable again (here: not significant).
    rows[1] |= {"robust_max": 0.1, "effect_size": -0.2, "p_holm": 0.5, "p_value": 0.5}
    again = directional_finding(frame(rows), "less_sparse", "sparsity", -1)
    assert again.verdict == NOT_SIGNIFICANT


def test_no_bin_tested_gives_the_bins_note():
    rows = [
        bin_row("variance_entropy", i, effect=math.nan, p_holm=math.nan, note="no test: x")
        for i in range(2)
    ]
    f = directional_finding(frame(rows), "more_diverse", "variance_entropy", +1)
    assert f.verdict == NOT_TESTABLE and f.reason == "no bin could be tested (no test: x)"


def test_missing_metric_is_not_testable():
    f = directional_finding(frame([]), "more_diverse", "variance_entropy", +1)
    assert f.verdict == NOT_TESTABLE and "no variance_entropy value" in f.reason


@pytest.mark.parametrize(
    ("claim", "effects", "p_values", "verdict"),
    [
        # target deepest (index 3): largest and significant
        ("deepest_differ_most", [0.2, 0.3, 0.4, 0.9], [0.5, 0.5, 0.5, 0.01], SUPPORTED),
        # a tie at the top counts for the target
        ("deepest_differ_most", [0.9, 0.3, 0.4, -0.9], [0.01, 0.5, 0.5, 0.01], SUPPORTED),
        # a larger significant effect elsewhere
        ("deepest_differ_most", [0.95, 0.3, 0.4, 0.5], [0.01, 0.5, 0.5, 0.01], CONTRADICTED),
        # largest but not significant
        ("deepest_differ_most", [0.2, 0.3, 0.4, 0.9], [0.5, 0.5, 0.5, 0.2], NOT_SIGNIFICANT),
        # larger elsewhere but not significant there
        ("first_differs_most", [0.2, 0.3, 0.9, 0.1], [0.01, 0.5, 0.2, 0.5], NOT_SIGNIFICANT),
        ("first_differs_most", [-1.0, 0.3, 0.9, 0.1], [0.01, 0.5, 0.02, 0.5], SUPPORTED),
        ("first_differs_most", [0.5, 0.3, -0.9, 0.1], [0.01, 0.5, 0.02, 0.5], CONTRADICTED),
    ],
)
def test_location_claims(claim, effects, p_values, verdict):
    rows = [
        bin_row("orthogonality", i, effect=e, p_holm=p)
        for i, (e, p) in enumerate(zip(effects, p_values, strict=True))
    ]
    f = location_finding(frame(rows), claim, "orthogonality")
    assert f.verdict == verdict, f.reason
    target = 0 if claim == "first_differs_most" else len(effects) - 1
    assert f.effect_size == effects[target] and f.p_adjusted == p_values[target]
    assert f.bins_agreeing == sum(abs(e) <= abs(effects[target]) for e in effects)
    assert f.bins_tested == len(effects)


def test_location_claim_without_a_second_bin_or_the_target():
    one = frame([bin_row("orthogonality", 0, effect=0.9, p_holm=0.01)])
    f = location_finding(one, "first_differs_most", "orthogonality")
    assert f.verdict == NOT_TESTABLE and "one tested bin" in f.reason
    f = location_finding(one, "deepest_differ_most", "orthogonality")
    assert f.verdict == NOT_TESTABLE and f.reason == "the deepest bin is not tested"
    untested_deepest = frame(
        [
            bin_row("orthogonality", 0, effect=0.9, p_holm=0.01),
            bin_row("orthogonality", 1, effect=math.nan, p_holm=math.nan, note="no test: y"),
        ]
    )
    f = location_finding(untested_deepest, "deepest_differ_most", "orthogonality")
    assert f.verdict == NOT_TESTABLE
    assert f.reason == "the deepest bin (0-10%) is not tested (no test: y)"


def test_every_claim_answered_and_framed():
    rows = [
        bin_row(metric, i, effect=0.5, p_holm=0.01)
        for metric in ("variance_entropy_scaled", "variance_entropy", "sparsity", "orthogonality")
        for i in range(3)
    ]
    found = findings(frame(rows), scope="family=WideResNet")
    claims = [(f.claim, f.metric) for f in found]
    assert claims[:4] == [
        ("more_diverse", "variance_entropy_scaled"),
        ("more_diverse", "variance_entropy"),
        ("less_sparse", "sparsity"),
        ("more_orthogonal", "orthogonality"),
    ]
    assert {c for c, _ in claims[4:]} == {"deepest_differ_most", "first_differs_most"}
    assert [f.verdict for f in found[:4]] == [SUPPORTED, SUPPORTED, CONTRADICTED, SUPPORTED]
    table = findings_frame(found)
    assert table.height == len(found) and set(table["scope"]) == {"family=WideResNet"}
    assert all(f.sentence().endswith(").") for f in found)
    nan_free = found[0].to_json()
    assert nan_free["p_adjusted"] == 0.01 and nan_free["claim"] == "more_diverse"


def test_scopes_per_dataset_and_family():
    pairs = (
        Pair("a", "x", "wrn", "cifar10"),
        Pair("b", "y", "resnet", "cifar10"),
        Pair("c", "z", "wrn", "cifar100"),
    )
    pairing = Pairing(pairs, ("lonely",), (), (), "stored metadata")
    family_of = {"a": "WideResNet", "b": "ResNet", "c": "WideResNet"}
    scopes = dict(scoped_pairings(pairing, family_of))
    assert list(scopes) == [
        "all",
        "training_dataset=cifar10",
        "training_dataset=cifar100",
        "family=ResNet",
        "family=WideResNet",
    ]
    assert scopes["all"] is pairing
    assert [p.robust for p in scopes["training_dataset=cifar10"].pairs] == ["a", "b"]
    assert [p.robust for p in scopes["family=WideResNet"].pairs] == ["a", "c"]
    assert scopes["family=ResNet"].unpaired_robust == ()
