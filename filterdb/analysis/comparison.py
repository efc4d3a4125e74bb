"""The statistics of the robust-vs-normal comparison (SPEC section 7).

For every metric and depth bin the robust models' values are compared with the normal
models' values (one value per model and bin, from
:func:`filterdb.metrics.cache.depth_profile`): spread, difference of medians, an effect
size and a significance test, each named in its row. Beside it the paper's drift series:
pooled robust against pooled normal filters per depth bin, on one PCA basis for the series.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from filterdb.analysis.groups import scaled_union_by, stored_layers
from filterdb.analysis.pairing import Pairing
from filterdb.errors import NoPCA
from filterdb.metrics.drift import NULL_SEED, drift_series_of_union
from filterdb.metrics.engine import parse_engine
from filterdb.metrics.registry import POOLED_METRICS

PAIRED_TEST = "Wilcoxon signed-rank"
UNPAIRED_TEST = "Mann-Whitney U"
PAIRED_EFFECT = "rank-biserial (matched pairs)"
UNPAIRED_EFFECT = "Cliff's delta"
SIGNIFICANCE_LEVEL = 0.05
# With ties among |differences| the signed-rank test is exact over all 2^n sign flips up to
# 13 pairs, as scipy's "auto" is; above, the normal approximation with tie correction, as
# "auto" takes there. scipy's permutation_test needs 0.47 s at 13 pairs (a report runs 88
# tests), so the enumeration is done here, vectorised: 8,192 x 13 ranks.
MAX_PERMUTATION_PAIRS = 13
ROLES = ("robust", "normal")
HOLM_NOTE = "Holm over the metric's depth bins"

STATISTICS_SCHEMA = {
    "metric": pl.String,
    "depth_bin_index": pl.Int64,
    "depth_bin": pl.String,
    "n_robust": pl.Int64,
    "robust_q1": pl.Float64,
    "robust_median": pl.Float64,
    "robust_q3": pl.Float64,
    "robust_max": pl.Float64,
    "n_normal": pl.Int64,
    "normal_q1": pl.Float64,
    "normal_median": pl.Float64,
    "normal_q3": pl.Float64,
    "normal_max": pl.Float64,
    "median_difference": pl.Float64,
    "effect_size_name": pl.String,
    "effect_size": pl.Float64,
    "test": pl.String,
    "n_test": pl.Int64,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "min_p": pl.Float64,
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
    # The smallest two-sided p-value the test can give for samples of these sizes: with n
    # matched pairs, 2 / 2^n (one pair: 1; five pairs: 0.0625). NaN when undefined.
    min_p: float = math.nan

    @property
    def can_reject(self) -> bool:
        """False when no outcome of samples this small reaches p < 0.05."""
        return not self.min_p >= SIGNIFICANCE_LEVEL


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
    approximation); a paired sample with tied |differences| and at most
    :data:`MAX_PERMUTATION_PAIRS` pairs gets the exact p-value over all sign flips,
    computed here (what scipy's "auto" does, faster). Every result is deterministic.
    ``min_p`` is the smallest p-value the test could give for samples of these sizes.

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
    ranks = stats.rankdata(np.abs(nonzero))
    positive, negative = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    if ties and len(nonzero) <= MAX_PERMUTATION_PAIRS:
        statistic, p_value = min(positive, negative), _signed_rank_exact_p(ranks, positive)
    else:
        method = "asymptotic" if ties else "auto"
        result = stats.wilcoxon(
            nonzero, zero_method="wilcox", alternative="two-sided", method=method
        )
        statistic, p_value = result.statistic, result.pvalue
    return SampleComparison(
        test=PAIRED_TEST,
        n=n,
        statistic=float(statistic),
        p_value=float(p_value),
        effect_size_name=PAIRED_EFFECT,
        effect_size=float((positive - negative) / (positive + negative)),
        min_p=min(1.0, 2.0 / 2.0 ** len(nonzero)),
    )


def _signed_rank_exact_p(ranks: np.ndarray, positive: float) -> float:
    """Two-sided p of W+ = ``positive`` over all 2^n sign assignments of ``ranks``.

    p = 2 min(P(W+ <= w), P(W+ >= w)), at most 1, as scipy's permutation test takes it;
    W+ values within a relative 1e-14 of w count as equal (midranks are halves).
    """
    signs = np.array(list(itertools.product((0.0, 1.0), repeat=len(ranks))))
    totals = signs @ ranks
    tolerance = 1e-14 * max(1.0, abs(positive))
    less = np.mean(totals <= positive + tolerance)
    greater = np.mean(totals >= positive - tolerance)
    return float(min(1.0, 2.0 * min(less, greater)))


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
        # The most extreme of the C(n, n_robust) equally likely rankings, both tails.
        min_p=min(1.0, 2.0 / math.comb(n, len(robust))),
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
    A metric is tested in up to eleven bins: ``p_holm`` is the Holm-adjusted p-value over
    the metric's tested bins (:func:`holm`), the one stars and counts use. ``min_p`` is
    the smallest p the test could reach at that bin's sample sizes; where it is at least
    0.05 the note says the test cannot show a difference, whatever the values.
    ``*_max`` is each side's largest value (a sparsity of 0 everywhere means no sparse
    filter). Columns as :data:`STATISTICS_SCHEMA`, ordered by metric, then depth bin.
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
        metric_rows = []
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
            note = test.note
            if not note and not test.can_reject:
                note = (
                    f"cannot reach p < {SIGNIFICANCE_LEVEL:g}: the smallest p with "
                    f"{test.n} {'pairs' if test.test == PAIRED_TEST else 'models'} is "
                    f"{test.min_p:.3g}"
                )
            metric_rows.append(
                {
                    "metric": metric,
                    "depth_bin_index": index,
                    "depth_bin": label,
                    "n_robust": len(robust),
                    "robust_q1": robust_q[0],
                    "robust_median": robust_q[1],
                    "robust_q3": robust_q[2],
                    "robust_max": max(robust, default=math.nan),
                    "n_normal": len(normal),
                    "normal_q1": normal_q[0],
                    "normal_median": normal_q[1],
                    "normal_q3": normal_q[2],
                    "normal_max": max(normal, default=math.nan),
                    "median_difference": robust_q[1] - normal_q[1],
                    "effect_size_name": test.effect_size_name,
                    "effect_size": test.effect_size,
                    "test": test.test,
                    "n_test": test.n,
                    "statistic": test.statistic,
                    "p_value": test.p_value,
                    "min_p": test.min_p,
                    "note": note,
                }
            )
        adjusted = holm([row["p_value"] for row in metric_rows])
        rows += [row | {"p_holm": p} for row, p in zip(metric_rows, adjusted, strict=True)]
    return pl.DataFrame(rows, schema=STATISTICS_SCHEMA)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN stays NaN and is not counted).

    With m defined p-values sorted ascending, the i-th (1-based) becomes
    max over j <= i of min(1, (m - j + 1) p_(j)): the family-wise error rate over the m
    tests is then at most the level, whatever their dependence.
    """
    adjusted = [math.nan] * len(p_values)
    defined = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, running = len(defined), 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


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


def drift_by_depth(
    pairing: Pairing,
    *,
    url: str | None = None,
    seed: int = NULL_SEED,
    engine: str | None = None,
    lake: str | Path | None = None,
) -> pl.DataFrame:
    """The paper's drift series: pooled robust vs pooled normal filters per depth bin.

    One basis and one coefficient range for the whole series, fitted on every filter of
    the paired models at every depth (SPEC section 5, :func:`drift_series`). Returns
    depth_bin_index, depth_bin, drift, n_robust_filters, n_normal_filters, then the
    bin's noise reference (:func:`filterdb.metrics.drift.permutation_null`, seeded by
    ``seed``): null_median, null_low and null_high (5th and 95th percentiles of the
    permutation drifts), p_value, within_noise (p >= 0.05: groups of these sizes from
    one distribution drift this much), and note. Drift and the null are NaN, and note
    says why, where a side has no non-sparse filter or where the union is too small for
    a PCA; note also says where the null came from a subsample.

    On a Dask ``engine`` (:func:`filterdb.metrics.engine.parse_engine`) the series comes
    from per-file partials of the lake at ``lake``
    (:func:`filterdb.metrics.dask_groups.drift_series_on_engine`): equal to the local one
    to about 1e-15 relative, each null computed on the client from the rows it draws.
    """
    role = dict.fromkeys(pairing.robust_models, "robust") | dict.fromkeys(
        pairing.normal_models, "normal"
    )
    layers = stored_layers(url=url).filter(pl.col("model_name").is_in(list(role)))
    layers = layers.with_columns(
        (pl.col("model_name").replace_strict(role) + "|" + pl.col("depth_bin")).alias("group")
    )
    bins = layers.select("depth_bin_index", "depth_bin").unique().sort("depth_bin_index")
    labels = bins["depth_bin"].to_list()
    names = {label: tuple(f"{side}|{label}" for side in ROLES) for label in labels}
    try:
        if parse_engine(engine).is_local:
            # One array for the whole series, filled once: the union of every group.
            order = [n for label in labels for n in names[label]]
            union, sizes = scaled_union_by(layers, "group", order, url=url)
            series = drift_series_of_union(union, [sizes[n] for n in order], labels, seed=seed)
        else:
            from filterdb.metrics.dask_groups import drift_series_on_engine

            series, sizes = drift_series_on_engine(
                layers,
                layers["group"].to_list(),
                names,
                url=url,
                engine=engine,
                lake=lake,
                seed=seed,
            )
        values, nulls, reason = series.values, series.nulls, "a side has no non-sparse filter"
    except NoPCA as error:
        if not parse_engine(engine).is_local:
            sizes = dict(
                zip([n for pair in names.values() for n in pair], error.group_sizes, strict=True)
            )
        values, nulls, reason = {}, {}, str(error)

    def null_column(name: str, attribute: str, dtype: pl.DataType) -> pl.Series:
        missing = None if dtype == pl.Boolean else math.nan
        return pl.Series(
            name,
            [getattr(nulls[b], attribute) if b in nulls else missing for b in labels],
            dtype,
        )

    def note(label: str) -> str:
        if label not in values:
            return f"no drift: {reason}"
        null = nulls.get(label)
        if null is None:  # no null asked for
            return ""
        parts = ["within the noise"] if null.within_noise else []
        if null.subsampled:
            parts.append(f"null from a subsample of {null.sizes[0]:,} + {null.sizes[1]:,}")
        return "; ".join(parts)

    return bins.with_columns(
        pl.Series("drift", [values.get(b, math.nan) for b in labels], pl.Float64),
        pl.Series("n_robust_filters", [sizes[names[b][0]] for b in labels], pl.Int64),
        pl.Series("n_normal_filters", [sizes[names[b][1]] for b in labels], pl.Int64),
        null_column("null_median", "median", pl.Float64),
        null_column("null_low", "low", pl.Float64),
        null_column("null_high", "high", pl.Float64),
        null_column("p_value", "p_value", pl.Float64),
        null_column("within_noise", "within_noise", pl.Boolean),
        pl.Series("note", [note(b) for b in labels], pl.String),
    )


def summarise(statistics: pl.DataFrame) -> pl.DataFrame:
    """Per metric, for the terminal: bins tested, bins with Holm-adjusted p < 0.05, first
    and deepest bin.

    The ``*_difference`` columns are differences of medians, robust - normal; the
    ``*_p_holm`` columns Holm-adjusted p-values over the metric's bins.
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
                "significant": rows_of.filter(pl.col("p_holm") < SIGNIFICANCE_LEVEL).height,
                "first_difference": _cell(first, "median_difference"),
                "first_p_holm": _cell(first, "p_holm"),
                "deepest_bin": _cell(deepest, "depth_bin"),
                "deepest_difference": _cell(deepest, "median_difference"),
                "deepest_p_holm": _cell(deepest, "p_holm"),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "metric": pl.String,
            "bins": pl.Int64,
            "significant": pl.Int64,
            "first_difference": pl.Float64,
            "first_p_holm": pl.Float64,
            "deepest_bin": pl.String,
            "deepest_difference": pl.Float64,
            "deepest_p_holm": pl.Float64,
        },
    )


def _cell(frame: pl.DataFrame, column: str) -> object:
    return frame[column][0] if frame.height else None
