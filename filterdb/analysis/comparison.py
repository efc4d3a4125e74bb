"""The statistics of the robust-vs-normal comparison (SPEC section 7).

For every metric and depth bin the robust models' values are compared with the normal
models' values (one value per model and bin, from
:func:`filterdb.metrics.cache.depth_profile`): spread, difference of medians, an effect
size and a significance test, each named in its row. Beside it the paper's drift series:
pooled robust against pooled normal filters per depth bin, on one PCA basis for the series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from filterdb.analysis.groups import scaled_filters_by, stored_layers
from filterdb.analysis.pairing import Pairing
from filterdb.errors import NoPCA
from filterdb.metrics.drift import drift_series
from filterdb.metrics.pca import N_WEIGHTS
from filterdb.metrics.registry import POOLED_METRICS

PAIRED_TEST = "Wilcoxon signed-rank"
UNPAIRED_TEST = "Mann-Whitney U"
PAIRED_EFFECT = "rank-biserial (matched pairs)"
UNPAIRED_EFFECT = "Cliff's delta"
SIGNIFICANCE_LEVEL = 0.05
# With ties among |differences| scipy's "auto" runs an exhaustive permutation test up to 13
# pairs: 2^n sign flips, 0.47 s a call at 13 and 0.016 s at 8 (measured here, 2 busy
# cores), and a report runs 88 tests. Above this many pairs with ties, use the normal
# approximation with tie correction, which "auto" itself uses above 13.
MAX_PERMUTATION_PAIRS = 8
ROLES = ("robust", "normal")

STATISTICS_SCHEMA = {
    "metric": pl.String,
    "depth_bin_index": pl.Int64,
    "depth_bin": pl.String,
    "n_robust": pl.Int64,
    "robust_q1": pl.Float64,
    "robust_median": pl.Float64,
    "robust_q3": pl.Float64,
    "n_normal": pl.Int64,
    "normal_q1": pl.Float64,
    "normal_median": pl.Float64,
    "normal_q3": pl.Float64,
    "median_difference": pl.Float64,
    "effect_size_name": pl.String,
    "effect_size": pl.Float64,
    "test": pl.String,
    "n_test": pl.Int64,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "note": pl.String,
}


@dataclass(frozen=True)
class SampleComparison:
    """A two-sided test of robust against normal values, with its effect size.

    ``n`` is the number of pairs (paired) or of values on both sides (unpaired) that
    entered the test. ``statistic``, ``p_value`` and ``effect_size`` are NaN when the test
    is undefined, and ``note`` says why; otherwise ``note`` is empty. Effect sizes lie in
    [-1, 1] and are positive when robust values tend to be larger.
    """

    test: str
    n: int
    statistic: float
    p_value: float
    effect_size_name: str
    effect_size: float
    note: str = ""


def compare_samples(
    robust: Sequence[float], normal: Sequence[float], *, paired: bool
) -> SampleComparison:
    """Test whether robust and normal values differ (two-sided), with an effect size.

    Paired (``robust[i]`` belongs with ``normal[i]``): Wilcoxon signed-rank test on
    robust - normal (zero differences dropped, scipy's ``zero_method="wilcox"``) and the
    matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-) over the same ranks.
    Unpaired: Mann-Whitney U test (U of the robust sample) and Cliff's delta, the share
    of (robust, normal) pairs where robust is larger minus the share where it is smaller.
    Both use scipy's default method (exact for small samples, else the normal
    approximation), except that a paired sample with tied |differences| over
    :data:`MAX_PERMUTATION_PAIRS` pairs takes the normal approximation with tie correction
    rather than an exhaustive permutation test. Every result is deterministic.

    Values must be finite. An undefined test (an empty side, or no non-zero paired
    difference) gives NaN with the reason in ``note``, not an exception.
    """
    robust_values = np.asarray(robust, dtype=np.float64)
    normal_values = np.asarray(normal, dtype=np.float64)
    if paired:
        if robust_values.shape != normal_values.shape:
            raise ValueError("paired samples must have the same length")
        return _wilcoxon(robust_values - normal_values)
    return _mann_whitney(robust_values, normal_values)


def _wilcoxon(differences: np.ndarray) -> SampleComparison:
    n = len(differences)
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        reason = "no pair has values on both sides" if n == 0 else "all paired differences are 0"
        return _undefined(PAIRED_TEST, PAIRED_EFFECT, n, reason)
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    method = "asymptotic" if ties and len(nonzero) > MAX_PERMUTATION_PAIRS else "auto"
    result = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method=method)
    ranks = stats.rankdata(np.abs(nonzero))
    positive, negative = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    return SampleComparison(
        test=PAIRED_TEST,
        n=n,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        effect_size_name=PAIRED_EFFECT,
        effect_size=float((positive - negative) / (positive + negative)),
    )


def _mann_whitney(robust: np.ndarray, normal: np.ndarray) -> SampleComparison:
    n = len(robust) + len(normal)
    if len(robust) == 0 or len(normal) == 0:
        side = "robust" if len(robust) == 0 else "normal"
        return _undefined(UNPAIRED_TEST, UNPAIRED_EFFECT, n, f"no {side} value")
    result = stats.mannwhitneyu(robust, normal, alternative="two-sided")
    return SampleComparison(
        test=UNPAIRED_TEST,
        n=n,
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        effect_size_name=UNPAIRED_EFFECT,
        effect_size=float(np.sign(robust[:, None] - normal[None, :]).mean()),
    )


def _undefined(test: str, effect: str, n: int, reason: str) -> SampleComparison:
    return SampleComparison(test, n, math.nan, math.nan, effect, math.nan, f"no test: {reason}")


def robust_vs_normal_statistics(profile: pl.DataFrame, pairing: Pairing) -> pl.DataFrame:
    """Per metric and depth bin: robust and normal spread, difference, effect size, test.

    ``profile`` is :func:`filterdb.metrics.cache.depth_profile` of the paired models (one value
    per model and bin). Sides come from ``pairing``; each model counts once per side.
    When every model sits in exactly one pair the test is paired (Wilcoxon signed-rank
    over the pairs with a value on both sides), else unpaired (Mann-Whitney U over the
    distinct models). Quartiles use linear interpolation (numpy's default). Every bin that
    holds a paired model's layer gets a row per metric, even with no value to test.
    Columns as :data:`STATISTICS_SCHEMA`, ordered by metric, then depth bin.
    """
    values = role_values(profile, pairing)
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for metric, index, model, value in values.select(
        "metric", "depth_bin_index", "model_name", "value"
    ).iter_rows():
        by_key.setdefault((metric, index), {})[model] = value
    bins = profile.select("depth_bin_index", "depth_bin").unique().sort("depth_bin_index")
    rows = []
    for metric in POOLED_METRICS:
        for index, label in bins.iter_rows():
            of_model = by_key.get((metric, index), {})
            robust = [of_model[m] for m in pairing.robust_models if m in of_model]
            normal = [of_model[m] for m in pairing.normal_models if m in of_model]
            if pairing.one_to_one:
                complete = [
                    p for p in pairing.pairs if p.robust in of_model and p.normal in of_model
                ]
                test = compare_samples(
                    [of_model[p.robust] for p in complete],
                    [of_model[p.normal] for p in complete],
                    paired=True,
                )
            else:
                test = compare_samples(robust, normal, paired=False)
            robust_q, normal_q = _quartiles(robust), _quartiles(normal)
            rows.append(
                {
                    "metric": metric,
                    "depth_bin_index": index,
                    "depth_bin": label,
                    "n_robust": len(robust),
                    "robust_q1": robust_q[0],
                    "robust_median": robust_q[1],
                    "robust_q3": robust_q[2],
                    "n_normal": len(normal),
                    "normal_q1": normal_q[0],
                    "normal_median": normal_q[1],
                    "normal_q3": normal_q[2],
                    "median_difference": robust_q[1] - normal_q[1],
                    "effect_size_name": test.effect_size_name,
                    "effect_size": test.effect_size,
                    "test": test.test,
                    "n_test": test.n,
                    "statistic": test.statistic,
                    "p_value": test.p_value,
                    "note": test.note,
                }
            )
    return pl.DataFrame(rows, schema=STATISTICS_SCHEMA)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(median), float(q3)


def role_values(profile: pl.DataFrame, pairing: Pairing) -> pl.DataFrame:
    """Long frame of the paired models' values: metric, bin, model, role, value (no NULLs)."""
    roles = pl.DataFrame(
        {
            "model_name": [*pairing.robust_models, *pairing.normal_models],
            "role": ["robust"] * len(pairing.robust_models)
            + ["normal"] * len(pairing.normal_models),
        }
    )
    return (
        profile.join(roles, on="model_name", how="inner")
        .unpivot(
            on=list(POOLED_METRICS),
            index=["model_name", "role", "depth_bin_index", "depth_bin"],
            variable_name="metric",
        )
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
        .sort(["metric", "depth_bin_index", "role", "model_name"])
    )


def drift_by_depth(pairing: Pairing, *, url: str | None = None) -> pl.DataFrame:
    """The paper's drift series: pooled robust vs pooled normal filters per depth bin.

    One basis and one coefficient range for the whole series, fitted on every filter of
    the paired models at every depth (SPEC section 5, :func:`drift_series`). Returns
    depth_bin_index, depth_bin, drift, n_robust_filters, n_normal_filters and note: drift
    is NaN, and note says why, where a side has no non-sparse filter or where the union
    is too small for a PCA.
    """
    role = dict.fromkeys(pairing.robust_models, "robust") | dict.fromkeys(
        pairing.normal_models, "normal"
    )
    layers = stored_layers(url=url).filter(pl.col("model_name").is_in(list(role)))
    layers = layers.with_columns(
        (pl.col("model_name").replace_strict(role) + "|" + pl.col("depth_bin")).alias("group")
    )
    filters = scaled_filters_by(layers, "group", url=url)
    bins = layers.select("depth_bin_index", "depth_bin").unique().sort("depth_bin_index")
    empty = np.empty((0, N_WEIGHTS))
    sides = {
        label: tuple(filters.get(f"{side}|{label}", empty) for side in ROLES)
        for label in bins["depth_bin"]
    }
    try:
        values, reason = drift_series(sides).values, "a side has no non-sparse filter"
    except NoPCA as error:
        values, reason = {}, str(error)
    frame = bins.with_columns(
        pl.col("depth_bin")
        .replace_strict(values, default=math.nan, return_dtype=pl.Float64)
        .alias("drift"),
        pl.Series("n_robust_filters", [len(sides[b][0]) for b in bins["depth_bin"]], pl.Int64),
        pl.Series("n_normal_filters", [len(sides[b][1]) for b in bins["depth_bin"]], pl.Int64),
    )
    frame = frame.with_columns(
        pl.when(pl.col("drift").is_nan())
        .then(pl.lit(f"no drift: {reason}"))
        .otherwise(pl.lit(""))
        .alias("note")
    )
    return frame


def summarise(statistics: pl.DataFrame) -> pl.DataFrame:
    """Per metric, for the terminal: bins tested, bins with p < 0.05, first and deepest bin.

    The ``*_difference`` columns are differences of medians, robust - normal.
    """
    rows = []
    for metric in POOLED_METRICS:
        rows_of = statistics.filter(pl.col("metric") == metric).sort("depth_bin_index")
        first = rows_of.filter(pl.col("depth_bin_index") == 0)
        deepest = rows_of.filter(pl.col("depth_bin_index") > 0).tail(1)
        rows.append(
            {
                "metric": metric,
                "bins": rows_of.height,
                "significant": rows_of.filter(pl.col("p_value") < SIGNIFICANCE_LEVEL).height,
                "first_difference": _cell(first, "median_difference"),
                "first_p": _cell(first, "p_value"),
                "deepest_bin": _cell(deepest, "depth_bin"),
                "deepest_difference": _cell(deepest, "median_difference"),
                "deepest_p": _cell(deepest, "p_value"),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "metric": pl.String,
            "bins": pl.Int64,
            "significant": pl.Int64,
            "first_difference": pl.Float64,
            "first_p": pl.Float64,
            "deepest_bin": pl.String,
            "deepest_difference": pl.Float64,
            "deepest_p": pl.Float64,
        },
    )


def _cell(frame: pl.DataFrame, column: str) -> object:
    return frame[column][0] if frame.height else None
