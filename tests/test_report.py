"""Reports: statistics against scipy and hand-computed values, per-bin aggregates against
an independent computation from the raw weights, drift on one basis, files, HTML, CLI.

The stored models are small CNNs trained for a few steps on random data, ingested once per
backend for the whole module (the machine has 2 cores); tests only read them.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import html.parser
import itertools
import json
import math
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest
import torch
from conftest import BACKENDS, fresh_postgres_database
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import oracle, oracle_drifts
from scipy import stats
from typer.testing import CliRunner

from filterdb.analysis import comparison, pca_drift
from filterdb.analysis.comparison import (
    MAX_PERMUTATION_PAIRS,
    PAIRED_EFFECT,
    PAIRED_TEST,
    UNPAIRED_EFFECT,
    UNPAIRED_TEST,
    compare_samples,
    holm,
)
from filterdb.cli.main import app
from filterdb.errors import FilterdbError, NoPCA, PairingError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.metrics.drift import drift_matrix, drift_series_of_union
from filterdb.reports import robust_vs_normal
from filterdb.reports.compare import compare_models
from filterdb.reports.robust_vs_normal import write_robust_vs_normal_report
from filterdb.warehouse import migrate
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.records import TrainingInfo
from filterdb.warehouse.views import DEPTH_BIN_LABELS

runner = CliRunner()
PROFILE_METRICS = (
    "sparsity",
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
    "variance_entropy_scaled",
    "variance_entropy_scaled_norm",
    "orthogonality",
)
METRIC_RTOL = 1e-6  # filterdb's metrics against the numpy oracle (test_layer_metrics)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- the significance tests: hand-computed values and scipy ------------------------------


def test_mann_whitney_on_a_hand_computed_sample():
    # Every robust value below every normal one: U = 0; of the C(6, 3) = 20 equally likely
    # splits one gives U = 0 and one U = 9, so the exact two-sided p is 2/20.
    result = compare_samples([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], paired=False)
    assert (result.test, result.effect_size_name) == (UNPAIRED_TEST, UNPAIRED_EFFECT)
    assert (result.statistic, result.p_value, result.effect_size) == (0.0, 0.1, -1.0)
    assert (result.n, result.note) == (6, "")
    flipped = compare_samples([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], paired=False)
    assert (flipped.statistic, flipped.p_value, flipped.effect_size) == (9.0, 0.1, 1.0)


def test_wilcoxon_on_hand_computed_samples():
    # Differences 1, 2, 3, 4, all positive: W- = 0; 1 of 2^4 sign patterns, two-sided 2/16.
    result = compare_samples([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0], paired=True)
    assert (result.test, result.effect_size_name) == (PAIRED_TEST, PAIRED_EFFECT)
    assert (result.statistic, result.p_value, result.effect_size) == (0.0, 0.125, 1.0)
    # Differences 1, 2, -3, 4: W+ = 7, W- = 3. Sign patterns with W- <= 3: {}, {1}, {2},
    # {3}, {1, 2}, so p = 2 * 5/16; rank-biserial (7 - 3) / 10.
    result = compare_samples([2.0, 4.0, 0.0, 8.0], [1.0, 2.0, 3.0, 4.0], paired=True)
    assert result.statistic == 3.0
    assert result.p_value == pytest.approx(0.625, rel=1e-12)
    assert result.effect_size == pytest.approx(0.4, rel=1e-12)


samples = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=12)


@given(samples, samples)
@settings(max_examples=60, deadline=None)
def test_unpaired_test_agrees_with_scipy_and_counting(robust, normal):
    result = compare_samples(robust, normal, paired=False)
    expected = stats.mannwhitneyu(robust, normal, alternative="two-sided")
    assert result.p_value == expected.pvalue and result.statistic == expected.statistic
    wins = sum((r > n) - (r < n) for r in robust for n in normal)
    assert result.effect_size == pytest.approx(wins / (len(robust) * len(normal)), abs=1e-15)


@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_paired_test_agrees_with_scipy_and_ranks(pairs):
    robust = [float(a) for a, _ in pairs]
    normal = [float(b) for _, b in pairs]
    result = compare_samples(robust, normal, paired=True)
    differences = [a - b for a, b in zip(robust, normal, strict=True) if a != b]
    if not differences:
        assert math.isnan(result.p_value) and "all paired differences are 0" in result.note
        return
    # scipy's default: exact (or, with ties, a permutation test) up to 13 pairs.
    assert len(differences) <= MAX_PERMUTATION_PAIRS
    expected = stats.wilcoxon(robust, normal, zero_method="wilcox", alternative="two-sided")
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    # Rank-biserial from average ranks of |d|, computed by counting.
    sizes = [abs(d) for d in differences]
    ranks = [sum(s < x for s in sizes) + (sum(s == x for s in sizes) + 1) / 2 for x in sizes]
    plus = sum(r for r, d in zip(ranks, differences, strict=True) if d > 0)
    minus = sum(r for r, d in zip(ranks, differences, strict=True) if d < 0)
    assert result.effect_size == pytest.approx((plus - minus) / (plus + minus), abs=1e-12)


def signed_rank_p_by_hand(differences: list[int]) -> Fraction:
    """Two-sided exact p of the signed-rank test, enumerating all 2^n sign patterns.

    Midranks by counting, W+ in exact fractions; p = 2 min(P(W+ <= w), P(W+ >= w)), at
    most 1. Written out here, independent of scipy and of filterdb.
    """
    sizes = [abs(d) for d in differences]
    ranks = [
        Fraction(sum(s < x for s in sizes)) + Fraction(sum(s == x for s in sizes) + 1, 2)
        for x in sizes
    ]
    observed = sum((r for r, d in zip(ranks, differences, strict=True) if d > 0), Fraction(0))
    n = len(ranks)
    at_most = at_least = 0
    for pattern in range(2**n):
        plus = sum((ranks[i] for i in range(n) if pattern >> i & 1), Fraction(0))
        at_most += plus <= observed
        at_least += plus >= observed
    return min(Fraction(1), 2 * Fraction(min(at_most, at_least), 2**n))


TIED_DIFFERENCES = {
    9: [1, 1, 2, 2, -2, 3, 3, 4, -1],
    10: [2, 2, 2, -1, 1, 3, 3, 5, 5, 4],
    11: [1, -1, 1, 2, 2, 2, 3, -3, 4, 4, 6],
    12: [3, 3, 3, 3, -1, 1, 2, 2, 5, 5, -5, 6],
    13: [1, 1, 1, 2, 2, -2, 3, 3, 3, 4, 4, -4, 7],
}


@pytest.mark.parametrize("n", sorted(TIED_DIFFERENCES))
def test_tied_pairs_get_the_exact_p_derived_by_hand(n):
    differences = TIED_DIFFERENCES[n]
    assert len(differences) == n and len({abs(d) for d in differences}) < n  # tied
    normal = [10.0] * n
    robust = [10.0 + d for d in differences]
    result = compare_samples(robust, normal, paired=True)
    assert result.p_value == pytest.approx(float(signed_rank_p_by_hand(differences)), rel=1e-12)
    assert result.min_p == 2 / 2**n


@pytest.mark.parametrize(("n_pairs", "min_p"), [(1, 1.0), (2, 0.5), (5, 0.0625), (6, 0.03125)])
def test_the_smallest_reachable_p_is_two_over_two_to_the_n(n_pairs, min_p):
    robust = [float(i + 2) for i in range(n_pairs)]
    normal = [float(i) for i in range(n_pairs)]
    result = compare_samples(robust, normal, paired=True)
    assert result.min_p == min_p
    # Every difference positive: the most extreme outcome, so p is the smallest p itself.
    assert result.p_value == pytest.approx(min_p, rel=1e-12)
    assert result.can_reject == (min_p < 0.05)


def test_holm_by_hand():
    # m = 3 defined p-values: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; max(0.06, 0.04 * 1) = 0.06.
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[2])
    assert adjusted[1] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("robust", "normal", "paired", "reason"),
    [
        ([], [1.0, 2.0], False, "no robust value"),
        ([1.0], [], False, "no normal value"),
        ([], [], True, "no pair has values on both sides"),
        ([1.0, 2.0], [1.0, 2.0], True, "all paired differences are 0"),
    ],
)
def test_too_small_samples_give_nan_with_a_reason(robust, normal, paired, reason):
    result = compare_samples(robust, normal, paired=paired)
    assert math.isnan(result.p_value) and math.isnan(result.effect_size)
    assert result.note == f"no test: {reason}"


# --- a small zoo, once per backend -------------------------------------------------------

TOY_ROBUST = ("r1", "r2", "r3")
TOY_NORMAL = ("n1", "n2", "n3")
TINY = (3, 8, 12, 6)
DEEP = (3, 6, 6, 8, 8)


@functools.cache
def trained_state_dict(seed: int, channels: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A CNN of 3x3 convs trained a few steps on random data: real, non-random weights."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU()]
    net = torch.nn.Sequential(
        *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels[-1], 3)
    )
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    images, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 3, (32,))
    for _ in range(10):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimiser.step()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["0.weight"][:2] *= 1e-4  # two sparse filters in the first layer
    return state


# name -> (seed, channels, architecture, training type, dataset)
ZOO = {
    **{n: (i, TINY, "tiny-cnn", "adversarial", "toy") for i, n in enumerate(TOY_ROBUST)},
    **{n: (10 + i, TINY, "tiny-cnn", "normal", "toy") for i, n in enumerate(TOY_NORMAL)},
    "lonely": (20, DEEP, "deep-cnn", "adversarial", "toy"),
    # Identical weights on both sides: drift 0, every paired difference 0.
    "twin-r": (30, TINY, "tiny-cnn", "adversarial", "twins"),
    "twin-n": (30, TINY, "tiny-cnn", "normal", "twins"),
}


def weights_of(name: str) -> dict[str, torch.Tensor]:
    seed, channels, *_ = ZOO[name]
    return trained_state_dict(seed, channels)


@pytest.fixture(scope="module", params=BACKENDS)
def zoo_url(request, tmp_path_factory):
    """A database holding ZOO, once per backend for this module."""
    if request.param == "duckdb":
        urls = iter([f"duckdb:///{tmp_path_factory.mktemp('zoo') / 'zoo.duckdb'}"])
    else:
        urls = fresh_postgres_database()
    url = next(urls)
    migrate.upgrade(url=url)
    folder = tmp_path_factory.mktemp("checkpoints")
    for name, (_, _, architecture, training_type, dataset) in ZOO.items():
        path = folder / f"{name}.pt"
        torch.save(weights_of(name), path)
        training = TrainingInfo(training_type=training_type, training_dataset=dataset)
        candidate = checkpoint_candidate(
            path, name=name, architecture=architecture, training=training
        )
        ingest(candidate, url=url, device="cpu")
    yield url
    next(urls, None)  # drops the PostgreSQL database


@pytest.fixture(scope="module")
def auto_report(zoo_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    return write_robust_vs_normal_report(url=zoo_url, out_dir=out, training_dataset="toy")


@pytest.fixture(scope="module")
def compared(zoo_url, tmp_path_factory):
    return compare_models("r1", "n1", url=zoo_url, out_dir=tmp_path_factory.mktemp("compare"))


# --- an independent computation from the raw weights -------------------------------------


def layer_bins(url: str) -> dict[tuple[str, str], str]:
    """(model, layer) -> depth bin label, from conv_depth and the model's max, integers only."""
    with engine_for(url) as engine, engine.connect() as connection:
        rows = read_frame(
            connection,
            "SELECT v.model_name, v.layer_name, v.conv_depth, m.max_conv_depth "
            "FROM v_layers v JOIN model m ON m.model_id = v.model_id",
        ).iter_rows()
    return {
        (model, layer): DEPTH_BIN_LABELS[0 if depth == 0 else math.ceil(10 * depth / top)]
        for model, layer, depth, top in rows
    }


def independent_profile(url: str, models) -> dict[tuple[str, str], dict[str, float]]:
    """(model, bin) -> metric -> value pooled as SPEC section 5 says, from the oracle."""
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (model, layer), label in layer_bins(url).items():
        if model not in models:
            continue
        for metric, (value, support) in oracle(weights_of(model)[f"{layer}.weight"]).items():
            if metric in PROFILE_METRICS and value is not None:
                pooled = sums.setdefault((model, label), {}).setdefault(metric, [0.0, 0.0])
                pooled[0] += value * support
                pooled[1] += support
    return {key: {m: a / b for m, (a, b) in by.items()} for key, by in sums.items()}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), in plain Python."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def independent_scaled_filters(url: str, models, role_of) -> dict[tuple[str, str], np.ndarray]:
    """(role, bin) -> pooled non-sparse filters, each divided by its own max |w|."""
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for (model, layer), label in layer_bins(url).items():
        if model not in models:
            continue
        filters = weights_of(model)[f"{layer}.weight"].double().numpy().reshape(-1, 9)
        peak = np.abs(filters).max(axis=1)
        kept = filters[peak > 0.01 * np.abs(filters).max()]
        scaled = kept / np.abs(kept).max(axis=1, keepdims=True)
        pooled.setdefault((role_of[model], label), []).append(scaled)
    return {key: np.concatenate(parts) for key, parts in pooled.items()}


# --- the robust-vs-normal report ---------------------------------------------------------


def test_auto_report_pairs_by_architecture_and_lists_the_unpaired(auto_report):
    pairing = auto_report.pairing
    assert {(p.robust, p.normal) for p in pairing.pairs} == {
        (r, n) for r in TOY_ROBUST for n in TOY_NORMAL
    }
    assert pairing.unpaired_robust == ("lonely",) and pairing.unpaired_normal == ()
    assert "- unpaired robust models: lonely\n" in auto_report.summary_md.read_text()
    html = auto_report.html.read_text()
    assert re.search(r"unpaired robust models</td><td[^>]*>lonely</td>", html)
    # Nine pairs over three models a side are not one-to-one: the unpaired test.
    assert set(auto_report.statistics["test"]) == {UNPAIRED_TEST}


def test_report_aggregates_match_an_independent_computation(zoo_url, auto_report):
    expected = independent_profile(zoo_url, TOY_ROBUST + TOY_NORMAL)
    statistics = auto_report.statistics
    labels = {label for _, label in expected}
    assert set(statistics["depth_bin"]) == labels
    assert statistics.height == len(PROFILE_METRICS) * len(labels)
    for row in statistics.iter_rows(named=True):
        robust = [expected[(m, row["depth_bin"])][row["metric"]] for m in TOY_ROBUST]
        normal = [expected[(m, row["depth_bin"])][row["metric"]] for m in TOY_NORMAL]
        assert (row["n_robust"], row["n_normal"]) == (3, 3)
        for side, values in (("robust", robust), ("normal", normal)):
            for column, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
                got = row[f"{side}_{column}"]
                assert got == pytest.approx(percentile(values, q), rel=METRIC_RTOL, abs=1e-12)
        difference = percentile(robust, 0.5) - percentile(normal, 0.5)
        assert row["median_difference"] == pytest.approx(difference, rel=1e-5, abs=1e-9)
        test = stats.mannwhitneyu(robust, normal, alternative="two-sided")
        assert row["p_value"] == pytest.approx(test.pvalue, rel=1e-12)


def test_summary_csv_holds_full_precision_floats(auto_report):
    with auto_report.summary_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == auto_report.statistics.height
    for row, expected in zip(rows, auto_report.statistics.iter_rows(named=True), strict=True):
        for column in ("robust_median", "normal_q3", "p_value", "effect_size"):
            assert float(row[column]) == expected[column]  # round-trip repr, bit for bit


def test_html_embeds_every_png_and_the_pngs_are_valid(auto_report):
    out = auto_report.html.parent
    pngs = sorted(out.glob("*.png"))
    # Box plots, drift, the eigen-filters, and the galleries of r1, r2, r3 and their twin n1.
    assert pngs == sorted(auto_report.plots) and len(pngs) == 7
    assert {p.name for p in pngs} >= {f"gallery_{m}_0.png" for m in ("r1", "r2", "r3", "n1")}
    for png in pngs:
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    html = auto_report.html.read_text()
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == html.count("data:image/png;base64,")
    # Each robust model's gallery beside its twin's: n1 is shown once per pair drawn.
    assert len(embedded) == len(pngs) + 2
    assert {base64.b64decode(data) for data in embedded} == {p.read_bytes() for p in pngs}
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
    for table in ("summary.md", "pairs.csv", "drift_by_depth.csv"):
        assert (out / table).stat().st_size > 0


def test_drift_series_uses_one_basis_for_all_bins(zoo_url, auto_report):
    role_of = dict.fromkeys(TOY_ROBUST, "robust") | dict.fromkeys(TOY_NORMAL, "normal")
    pooled = independent_scaled_filters(zoo_url, role_of, role_of)
    drift = auto_report.drift.sort("depth_bin_index")
    labels = drift["depth_bin"].to_list()
    # The oracle of tests/oracles.py: one PCA over every bin's filters, then each bin's pair.
    groups = {f"{role} {b}": pooled[(role, b)] for role in ("robust", "normal") for b in labels}
    expected = oracle_drifts(groups, [(f"robust {b}", f"normal {b}") for b in labels])
    assert drift["drift"].to_list() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert drift["n_robust_filters"].to_list() == [len(pooled[("robust", b)]) for b in labels]
    # A basis per bin gives other values: the report's series is not that.
    per_bin = [
        drift_matrix({"r": pooled[("robust", b)], "n": pooled[("normal", b)]}).matrix[0, 1]
        for b in labels
    ]
    assert drift["drift"].to_list() != pytest.approx(per_bin, rel=1e-6)
    with auto_report.drift_csv.open(newline="") as handle:
        assert [float(r["drift"]) for r in csv.DictReader(handle)] == drift["drift"].to_list()


def test_drift_without_a_basis_says_why(zoo_url, auto_report, monkeypatch):
    def no_basis(_union, _sizes, _labels, **_options):
        raise NoPCA("no PCA: the group has 5 non-sparse filters and a PCA needs at least 9")

    monkeypatch.setattr(comparison, "drift_series_of_union", no_basis)
    drift = comparison.drift_by_depth(auto_report.pairing, url=zoo_url)
    assert drift["drift"].is_nan().all() and drift.height == auto_report.drift.height
    assert set(drift["note"]) == {
        "no drift: no PCA: the group has 5 non-sparse filters" + " and a PCA needs at least 9"
    }


def test_drift_without_nulls_leaves_the_null_columns_empty(zoo_url, auto_report, monkeypatch):
    def without_null(union, sizes, labels, **options):
        return drift_series_of_union(union, sizes, labels, **{**options, "n_permutations": 0})

    monkeypatch.setattr(comparison, "drift_series_of_union", without_null)
    drift = comparison.drift_by_depth(auto_report.pairing, url=zoo_url)
    assert drift["drift"].to_list() == auto_report.drift["drift"].to_list()
    assert drift["null_median"].is_nan().all() and drift["within_noise"].is_null().all()
    assert set(drift["note"]) == {""}


def test_every_drift_value_stands_beside_its_null(auto_report):
    drift = auto_report.drift
    for column in ("null_median", "null_low", "null_high", "p_value", "within_noise"):
        assert drift[column].null_count() == 0, column
    assert (drift["null_low"] <= drift["null_median"]).all()
    assert (drift["null_median"] <= drift["null_high"]).all()
    assert ((drift["p_value"] > 0) & (drift["p_value"] <= 1)).all()
    assert drift["within_noise"].to_list() == (drift["p_value"] >= 0.05).to_list()
    flagged = drift.filter(pl.col("within_noise"))["note"].to_list()
    assert all("within the noise" in note for note in flagged)
    with auto_report.drift_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["null_median"]) for r in rows] == drift["null_median"].to_list()
    assert [float(r["p_value"]) for r in rows] == drift["p_value"].to_list()


def test_report_states_its_weights_form_and_its_corrections(auto_report):
    assert auto_report.weights_form == "raw"
    markdown = auto_report.summary_md.read_text(encoding="utf-8")
    title = "# Robust vs normal filters: 3 robust vs 3 normal models (toy) (weights: raw)"
    assert markdown.startswith(title)
    assert "- weights form: raw (the checkpoints' own tensors)" in markdown
    assert "Holm-adjusted" in markdown and "2/2^n" in markdown and "within_noise" in markdown
    page = auto_report.html.read_text(encoding="utf-8")
    assert "(weights: raw)</h1>" in page
    statistics = auto_report.statistics.filter(pl.col("p_value").is_not_nan())
    assert (statistics["p_holm"] >= statistics["p_value"] - 1e-15).all()
    # Three unpaired models a side (Mann-Whitney): the smallest p is 2 / C(6, 3) = 0.1.
    assert set(statistics["min_p"]) == {0.1}
    assert all("cannot reach p < 0.05" in note for note in statistics["note"])


@pytest.fixture
def two_forms(zoo_url):
    """r1 and n1 stored as bn_folded (by hand), the other pairs raw; put back afterwards."""

    def set_form(form: str) -> None:
        with engine_for(zoo_url) as engine, engine.begin() as connection:
            connection.exec_driver_sql(
                f"UPDATE model SET weights_form = '{form}' WHERE name IN ('r1', 'n1')"
            )

    set_form("bn_folded")
    try:
        yield zoo_url
    finally:
        set_form("raw")


def test_reports_refuse_to_mix_weights_forms_unless_told(two_forms, tmp_path):
    url = two_forms
    message = r"mixes weights forms \(bn_folded: 2, raw: 4 models\).*--mixed-forms"
    with pytest.raises(FilterdbError, match=message):
        write_robust_vs_normal_report(url=url, out_dir=tmp_path / "a", training_dataset="toy")
    assert not (tmp_path / "a").exists()
    mixed = write_robust_vs_normal_report(
        url=url, out_dir=tmp_path / "b", training_dataset="toy", mixed_forms=True
    )
    assert mixed.weights_form == "mixed (bn_folded: 2, raw: 4)"
    assert "(weights: mixed (bn_folded: 2, raw: 4))" in mixed.summary_md.read_text()
    # Pairs stay within a form: r1 pairs with n1 only.
    assert {p.normal for p in mixed.pairing.pairs if p.robust == "r1"} == {"n1"}
    one_form = write_robust_vs_normal_report(
        url=url, out_dir=tmp_path / "c", training_dataset="toy", weights_form="raw"
    )
    assert one_form.weights_form == "raw" and "r1" not in one_form.pairing.robust_models
    with pytest.raises(FilterdbError, match="r1 vs r2 mixes weights forms"):
        compare_models("r1", "r2", url=url)
    assert compare_models("r1", "r2", url=url, mixed_forms=True).weights_form.startswith("mixed")
    assert compare_models("r1", "n1", url=url).weights_form == "bn_folded"
    with pytest.raises(FilterdbError, match="drift by training_type mixes weights forms"):
        pca_drift.drift(url=url, by="training_type")
    assert pca_drift.drift(url=url, by="training_type", mixed_forms=True).weights_form == (
        "mixed (bn_folded: 2, raw: 7)"
    )


def test_cli_mixed_forms(two_forms, tmp_path):
    args = ["--db", two_forms, "report", "robust-vs-normal", "--training-dataset", "toy", "-q"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1
    assert refused.output.startswith("error: the robust/normal pairs mixes weights forms")
    allowed = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--mixed-forms"])
    assert allowed.exit_code == 0, allowed.output
    assert "weights mixed (bn_folded: 2, raw: 4)" in " ".join(allowed.output.split())
    compare = runner.invoke(app, ["--db", two_forms, "compare", "r1", "r2", "--mixed-forms"])
    assert compare.exit_code == 0 and "weights mixed" in " ".join(compare.output.split())


def test_pairs_file_one_to_one_uses_the_paired_test(zoo_url, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs_of = zip(TOY_ROBUST, TOY_NORMAL, strict=True)
    rows = [f"{i},{r},{n},tiny-cnn,toy" for i, (r, n) in enumerate(pairs_of)]
    pairs.write_text("\n".join([",Robust,Normal,Arch,Dataset", *rows]) + "\n")
    result = write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path / "out", pairs_file=pairs)
    assert result.pairing.one_to_one
    # No --training-dataset: every stored model outside the file's pairs is listed.
    assert result.pairing.unpaired_robust == ("lonely", "twin-r")
    assert result.pairing.unpaired_normal == ("twin-n",)
    expected = independent_profile(zoo_url, TOY_ROBUST + TOY_NORMAL)
    for row in result.statistics.filter(result.statistics["metric"] != "sparsity").iter_rows(
        named=True
    ):
        assert (row["test"], row["effect_size_name"], row["n_test"]) == (
            PAIRED_TEST,
            PAIRED_EFFECT,
            3,
        )
        robust = [expected[(m, row["depth_bin"])][row["metric"]] for m in TOY_ROBUST]
        normal = [expected[(m, row["depth_bin"])][row["metric"]] for m in TOY_NORMAL]
        test = stats.wilcoxon(robust, normal, alternative="two-sided")
        assert row["p_value"] == pytest.approx(test.pvalue, rel=1e-12)


def test_twins_drift_zero_and_untestable_bins_say_why(zoo_url, tmp_path):
    first = write_robust_vs_normal_report(
        url=zoo_url, out_dir=tmp_path / "a", training_dataset="twins"
    )
    assert first.drift["drift"].to_list() == [0.0] * first.drift.height
    assert first.pairing.one_to_one
    assert first.statistics["p_value"].is_nan().all()
    assert set(first.statistics["note"]) == {"no test: all paired differences are 0"}
    # The same data gives the same files, byte for byte.
    second = write_robust_vs_normal_report(
        url=zoo_url, out_dir=tmp_path / "b", training_dataset="twins"
    )
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert second.summary.equals(first.summary)


def test_no_pair_is_a_one_line_error(zoo_url, tmp_path):
    with pytest.raises(PairingError, match="no robust/normal pair found") as caught:
        write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path, training_dataset="absent")
    assert "\n" not in str(caught.value)


# --- compare -----------------------------------------------------------------------------


def test_compare_same_architecture_joins_layers_by_index(zoo_url, tmp_path):
    comparison = compare_models("r1", "n1", url=zoo_url, out_dir=tmp_path)
    assert comparison.joined_on == "conv_index"
    layers = comparison.layers
    assert layers["conv_index"].to_list() == [0, 1, 2]
    assert layers["layer_name_a"].to_list() == layers["layer_name_b"].to_list()
    for row in layers.iter_rows(named=True):
        for model, suffix in (("r1", "_a"), ("n1", "_b")):
            weight = weights_of(model)[f"{row[f'layer_name{suffix}']}.weight"]
            value, _ = oracle(weight)["orthogonality"]
            assert row[f"orthogonality{suffix}"] == pytest.approx(value, rel=METRIC_RTOL)
    expected = independent_profile(zoo_url, ("r1", "n1"))
    for row in comparison.bins.iter_rows(named=True):
        a = expected[("r1", row["depth_bin"])][row["metric"]]
        b = expected[("n1", row["depth_bin"])][row["metric"]]
        assert row["difference"] == pytest.approx(a - b, rel=1e-5, abs=1e-9)
    data = comparison.plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_compare_other_architecture_joins_by_depth_bin(zoo_url):
    comparison = compare_models("r1", "lonely", url=zoo_url)
    assert comparison.joined_on == "depth_bin" and comparison.plot is None
    bins = layer_bins(zoo_url)
    layers = comparison.layers
    # Every layer of both models appears once, each beside its own bin.
    for name, suffix in (("r1", "_a"), ("lonely", "_b")):
        shown = layers.filter(layers[f"layer_name{suffix}"].is_not_null())
        assert sorted(shown[f"layer_name{suffix}"]) == sorted(
            layer for model, layer in bins if model == name
        )
        for row in shown.iter_rows(named=True):
            assert row["depth_bin"] == bins[(name, row[f"layer_name{suffix}"])]
    # A bin that only one model holds is still listed, with no difference.
    only_one = comparison.bins.filter(comparison.bins["value_a"].is_null())
    assert only_one.height > 0 and only_one["difference"].is_null().all()


def test_compare_unknown_model(zoo_url):
    with pytest.raises(FilterdbError, match="no stored model named nope"):
        compare_models("r1", "nope", url=zoo_url)


# --- the command line --------------------------------------------------------------------


def test_cli_report_prints_a_summary_and_where_the_html_is(zoo_url, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["--db", zoo_url, "report", "robust-vs-normal", "--training-dataset", "toy"]
        + ["--out", str(out), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "9 pairs" in result.output and "unpaired robust: lonely" in result.output
    assert "variance_entropy_scaled" in result.output
    assert str(out / "report.html") in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["report", "robust-vs-normal", "--training-dataset", "absent"], "no robust/normal pair"),
        (["report", "robust-vs-normal", "--pairs", "absent.csv"], "no pairs file at absent.csv"),
        (["compare", "r1", "nope"], "no stored model named nope"),
    ],
)
def test_cli_errors_are_one_line(zoo_url, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["--db", zoo_url, *arguments])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_cli_compare_writes_csv(zoo_url, tmp_path):
    out = tmp_path / "bins.csv"
    result = runner.invoke(
        app, ["--db", zoo_url, "compare", "r1", "n1", "--format", "csv", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(PROFILE_METRICS) * 3
    assert {"metric", "depth_bin", "value_a", "value_b", "difference"} <= set(rows[0])
    written = runner.invoke(app, ["--db", zoo_url, "compare", "r1", "n1", "--out", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert f"report: {tmp_path / 'report.html'}" in written.output
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("# r1 vs n1")


# --- the report's tables, parsed back ---------------------------------------------------------


class _Tables(html.parser.HTMLParser):
    """Every <table> of a page as rows of cell texts, keyed by the <h2> (or <h1>) above it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.heading, self.in_heading, self.cell = "", False, None
        self.table: list[list[str]] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"):
            self.heading, self.in_heading = "", True
        elif tag == "table":
            self.table = self.tables.setdefault(self.heading, [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("h1", "h2"):
            self.in_heading = False
        elif tag == "table":
            self.table = None
        elif tag in ("td", "th") and self.table is not None:
            self.table[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.in_heading:
            self.heading += data
        elif self.cell is not None:
            self.cell += data


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table, keyed by the ``## `` heading above it; ``\\|`` unescaped."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and not set(line) <= set("|-"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            tables.setdefault(heading, []).append([c.strip().replace("\\|", "|") for c in cells])
    return tables


def _assert_table_shows(parsed: list[list[str]], frame) -> None:
    """Header and every cell of ``parsed`` against ``frame``, at 4 significant digits."""
    header, *body = parsed
    assert header == frame.columns
    assert len(body) == frame.height > 0
    for shown, row in zip(body, frame.iter_rows(), strict=True):
        for text, value in zip(shown, row, strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert text == "n/a"
            elif isinstance(value, bool) or not isinstance(value, int | float):
                assert text == str(value)
            else:
                assert float(text) == pytest.approx(value, rel=5e-4, abs=1e-300)


def test_html_and_markdown_tables_show_the_statistics(auto_report):
    parser = _Tables()
    parser.feed(auto_report.html.read_text(encoding="utf-8"))
    pages = {
        "html": parser.tables,
        "markdown": _markdown_tables(auto_report.summary_md.read_text(encoding="utf-8")),
    }
    frames = {
        "Metrics per depth bin": auto_report.statistics,
        "Drift by depth": auto_report.drift,
        "Pairs": auto_report.pairing.frame(),
    }
    for page, tables in pages.items():
        for heading, frame in frames.items():
            assert heading in tables, (page, heading)
            _assert_table_shows(tables[heading], frame)
    _assert_table_shows(parser.tables["Summary"], auto_report.summary)


# --- the report in a real browser ----------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,2000",
)
# Runs once the page (and its embedded images) has loaded: opens every <details>, then
# writes what the test checks into the DOM, which --dump-dom prints.
BROWSER_PROBE = """<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    text: document.body.innerText.length,
    images: [...document.images].map((i) => [i.alt, i.complete, i.naturalWidth]),
    tables: [...document.querySelectorAll("table")].map((t) => [
      t.getBoundingClientRect().right, t.scrollWidth, t.parentElement.clientWidth]),
  });
  document.body.appendChild(probe);
});
</script></body>"""


def chromium() -> str:
    """The chromium executable; skipped without one, except in CI, where it must exist."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("FILTERDB_REQUIRE_POSTGRES") == "1":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def browse(page, tmp_path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )


def browser_probe(html_path, tmp_path) -> dict:
    page = tmp_path / "probe.html"
    page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", BROWSER_PROBE, 1))
    done = browse(page, tmp_path, "--virtual-time-budget=10000", "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def assert_renders(html_path, tmp_path, *, min_images: int) -> None:
    """Not blank, every image loaded, neither the page nor a table wider than the window."""
    screenshot = tmp_path / "screenshot.png"
    done = browse(html_path, tmp_path, f"--screenshot={screenshot}")
    assert screenshot.exists(), done.stderr[-2000:]
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    inked = (pixels.min(axis=2) < 0.9).mean()
    assert inked > 0.02, f"the page looks blank: {inked:.1%} of the screenshot is not white"
    probe = browser_probe(html_path, tmp_path)
    assert probe["text"] > 1000
    assert len(probe["images"]) >= min_images
    for alt, complete, natural_width in probe["images"]:
        assert complete and natural_width > 0, f"image {alt} did not load"
    # Every <details> is open: no table, nor the page, is wider than the window.
    assert probe["scrollWidth"] <= probe["innerWidth"]
    for right, width, room in probe["tables"]:
        assert right <= probe["innerWidth"] and width <= room, (right, width, room)


def test_report_renders_in_a_browser(auto_report, tmp_path):
    assert_renders(auto_report.html, tmp_path, min_images=3)


def test_compare_document_renders_in_a_browser(compared, tmp_path):
    # The comparison plot and both galleries.
    assert_renders(compared.html, tmp_path, min_images=3)


def test_browser_check_sees_a_broken_image_and_a_wide_table(auto_report, tmp_path):
    text = auto_report.html.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    # An image that cannot load, and a table that ignores the page's width.
    broken.write_text(
        text.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1).replace(
            "</body>", "<table><tr>" + "<td>wide-cell-content</td>" * 200 + "</tr></table></body>"
        )
    )
    probe = browser_probe(broken, tmp_path)
    assert any(width == 0 for _, _, width in probe["images"])
    assert probe["scrollWidth"] > probe["innerWidth"]


# --- the findings, in the files and on the page --------------------------------------------


def test_findings_json_answers_every_claim(auto_report):
    found = json.loads(auto_report.findings_json.read_text(encoding="utf-8"))
    required = {"claim", "verdict", "direction", "bins_agreeing", "bins_tested"}
    required |= {"median_difference", "effect_size", "p_adjusted", "reason", "scope"}
    assert all(required <= set(f) for f in found)
    # Every claim, overall and for the one training dataset (no family is stored).
    assert {f["scope"] for f in found} == {"all", "training_dataset=toy"}
    claims = {f["claim"] for f in found}
    assert claims == {
        "more_diverse",
        "less_sparse",
        "more_orthogonal",
        "deepest_differ_most",
        "first_differs_most",
    }
    # Three models a side, unpaired: no outcome reaches p < 0.05 (2 / C(6, 3) = 0.1), so
    # no claim can be decided, whatever the values.
    assert {(f["verdict"], f["reason"]) for f in found} == {
        ("not testable", "6 models: the smallest possible p is 0.1")
    }
    more_diverse = next(f for f in found if f["metric"] == "variance_entropy_scaled")
    rows = auto_report.statistics.filter(pl.col("metric") == "variance_entropy_scaled")
    assert more_diverse["bins_tested"] == rows.height
    assert more_diverse["bins_agreeing"] == (rows["effect_size"] > 0).sum()
    assert more_diverse["median_difference"] == pytest.approx(rows["median_difference"].median())


def test_findings_open_the_page_and_their_table_shows_them(auto_report):
    page = auto_report.html.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Findings" and headings.index("Accuracy") == 1
    assert page.index("<h2>Figures</h2>") < page.index("<h2>Metrics per depth bin</h2>")
    assert "SPEC" not in page and "SPEC" not in auto_report.summary_md.read_text()
    assert "database</b>: duckdb" in page or "database</b>: postgresql" in page
    parser = _Tables()
    parser.feed(page)
    overall = pl.DataFrame([vars(f) for f in auto_report.findings if f.scope == "all"])
    expected = overall.drop("scope")
    for page_tables in (parser.tables, _markdown_tables(auto_report.summary_md.read_text())):
        _assert_table_shows(page_tables["Findings"], expected)
    accuracy = parser.tables["Accuracy"]
    assert accuracy[0][-2:] == ["clean_acc", "robust_acc"]
    assert sorted(r[0] for r in accuracy[1:]) == sorted(TOY_ROBUST + TOY_NORMAL)


def test_one_pair_is_not_testable_end_to_end(zoo_url, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(",Robust,Normal,Arch,Dataset\n0,r1,n1,tiny-cnn,toy\n")
    result = write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path / "out", pairs_file=pairs)
    overall = [f for f in result.findings if f.scope == "all"]
    assert {f.verdict for f in overall} == {"not testable"}
    # r1 and n1 share their sparsity in every bin, so that test is undefined; the other
    # metrics are tested on one pair, whose smallest possible p is 2 / 2^1.
    tested = {f.reason for f in overall if f.metric != "sparsity"}
    assert tested == {"1 pair: the smallest possible p is 1"}
    sparsity = next(f for f in overall if f.claim == "less_sparse")
    assert sparsity.reason == "no bin could be tested (no test: all paired differences are 0)"


def test_compare_writes_findings_and_both_galleries(compared):
    comparison, tmp_path = compared, compared.html.parent
    assert [g.png.name for g in comparison.galleries] == ["gallery_r1_0.png", "gallery_n1_0.png"]
    # First layer of 3 inputs: one colour image per output channel (8 of them).
    assert {(g.kernels_shown, g.kernels) for g in comparison.galleries} == {(8, 8)}
    found = json.loads(comparison.findings_json.read_text())
    assert {f["scope"] for f in found} == {"r1 vs n1"}
    tested = [f for f in found if f["claim"] == "more_orthogonal"]
    assert tested[0]["reason"] == "1 pair: the smallest possible p is 1"
    differences = comparison.bins.filter(pl.col("metric") == "orthogonality")["difference"]
    assert tested[0]["bins_agreeing"] == (differences > 0).sum()
    assert (tmp_path / "comparison.svg").exists()


def test_cli_gallery_draws_any_layer(zoo_url, tmp_path):
    result = runner.invoke(
        app, ["--db", zoo_url, "gallery", "lonely", "--layer", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "36 of 36 kernels" in result.output and "symmetric" in result.output
    image = matplotlib.image.imread(tmp_path / "gallery_lonely_2.png")
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    refused = runner.invoke(app, ["--db", zoo_url, "gallery", "lonely", "--layer", "nope"])
    assert refused.exit_code == 1 and refused.output.startswith("error: model lonely has no")
    assert refused.output.count("\n") == 1


def test_compare_document_tables_show_the_comparison(compared):
    page = compared.html.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[:3] == ["Findings", "Models", "Figures"]
    assert "<b>model A</b>: r1" in page and "<b>model B</b>: n1" in page
    parser = _Tables()
    parser.feed(page)
    frames = {
        "Findings": pl.DataFrame([vars(f) for f in compared.findings]).drop("scope"),
        "Metrics per depth bin": compared.bins,
        "Layers": compared.layers,
    }
    for tables in (parser.tables, _markdown_tables(compared.markdown.read_text(encoding="utf-8"))):
        for heading, frame in frames.items():
            _assert_table_shows(tables[heading], frame)
        models = tables["Models"]
        assert [row[:2] for row in models[1:]] == [["A", "r1"], ["B", "n1"]]
    # Both galleries side by side, the figure before the tables.
    assert page.index("<h2>Figures</h2>") < page.index("<h2>Metrics per depth bin</h2>")
    assert page.count('<div class="row"><figure><img') == 1


def test_figures_per_training_dataset_each_on_its_own_pairs(zoo_url, auto_report, tmp_path):
    # No dataset asked for: the toy pairs and the twins pair, so each dataset is a scope of
    # its own with its own figures.
    report = write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path)
    scopes = {figure.scope: figure for figure in report.scopes}
    assert set(scopes) == {"training_dataset=toy", "training_dataset=twins"}
    assert not any(figure.same_as_all for figure in scopes.values())
    # Identical twins drift 0 in every bin; the toy scope is the toy-only report's series.
    assert set(scopes["training_dataset=twins"].drift["drift"]) == {0.0}
    assert scopes["training_dataset=toy"].drift.equals(auto_report.drift)
    for figure in scopes.values():
        assert [p.name for p in figure.figures] == [
            f"boxplots_{figure.scope.replace('=', '-')}.png",
            f"drift_by_depth_{figure.scope.replace('=', '-')}.png",
        ]
        assert all(p.with_suffix(".svg").exists() for p in figure.figures)
    page = report.html.read_text(encoding="utf-8")
    section = page[page.index("<h2>Figures per training dataset and family</h2>") :]
    section = section[: section.index("<h2>", 4)]
    # One closed group per scope, each with its two figures inside.
    groups = re.findall(
        r"<details><summary>(training_dataset=\w+) \((\d+) pairs\)</summary>", section
    )
    assert groups == [("training_dataset=toy", "9"), ("training_dataset=twins", "1")]
    assert section.count("<img") == 4
    # The overall figures stay open, before every scope.
    assert page.index('alt="boxplots"') < page.index("<h2>Figures per training dataset")
    # The auto report's only scope holds every pair: no second drawing of the same figures.
    assert [(f.scope, f.same_as_all, f.figures) for f in auto_report.scopes] == [
        ("training_dataset=toy", True, ())
    ]


def test_figures_drawn_in_a_worker_process_are_the_same_files(zoo_url, tmp_path, monkeypatch):
    # Scopes included (no dataset asked for): their figures go to the worker too.
    here = write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path / "here")
    monkeypatch.setattr(robust_vs_normal, "DRAW_ASIDE_FROM_FILTERS", 0)
    aside = write_robust_vs_normal_report(url=zoo_url, out_dir=tmp_path / "aside")
    names = sorted(path.name for path in (tmp_path / "here").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "aside").iterdir())
    assert len([name for name in names if name.endswith(".svg")]) >= 8
    for name in names:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "aside" / name).read_bytes()
    assert [g.normalisation for g in aside.galleries] == [g.normalisation for g in here.galleries]
    assert [s.figures for s in aside.scopes] == [
        tuple(Path(str(p).replace("here", "aside")) for p in s.figures) for s in here.scopes
    ]


def test_a_script_without_a_main_guard_is_not_run_again_by_the_worker(zoo_url, tmp_path):
    # spawn runs the parent's main script in the child unless told otherwise: a script
    # like this one would write its report twice, or lock its own database.
    script = tmp_path / "report.py"
    script.write_text(
        "from pathlib import Path\n"
        "from filterdb.reports import robust_vs_normal\n"
        "robust_vs_normal.DRAW_ASIDE_FROM_FILTERS = 0\n"
        "print('report', flush=True)\n"
        f"robust_vs_normal.write_robust_vs_normal_report(url={zoo_url!r}, "
        f"out_dir=Path({str(tmp_path / 'out')!r}), training_dataset='toy')\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["report"]
    assert (tmp_path / "out" / "boxplots.png").stat().st_size > 0


def test_a_drawing_whose_worker_died_is_drawn_here():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from filterdb.reports.drawing import Drawing

    died: Future = Future()
    died.set_exception(BrokenProcessPool("killed"))
    drawing = Drawing(died, divmod, (17, 5), {}).then(lambda pair: pair[0] * 10 + pair[1])
    assert drawing.result() == 32


def test_the_worker_draws_and_what_it_has_not_started_is_drawn_here():
    import signal
    import time

    from filterdb.reports.drawing import Drawer

    with Drawer(in_process=False) as drawer:

        def taken(drawing):
            """The drawing once the worker has it (asked for sooner, it is drawn here)."""
            while not (drawing._future.running() or drawing._future.done()):
                time.sleep(0.01)
            return drawing

        assert taken(drawer.submit(os.getpid)).result() != os.getpid()
        # Ctrl-C is the parent's: the worker ignores it (else it prints a traceback).
        assert taken(drawer.submit(signal.getsignal, signal.SIGINT)).result() == signal.SIG_IGN
        slow = drawer.submit(time.sleep, 2)
        later = [drawer.submit(os.getpid) for _ in range(3)]
        drawer.finish()
        assert later[-1].result() == os.getpid()  # the worker was busy: drawn here
        assert slow.result() is None
    with Drawer(in_process=True) as drawer:
        assert drawer.submit(os.getpid).result() == os.getpid()
