"""Comparison reports: robust vs normal per depth bin, and one model against another.

The robust-vs-normal report (SPEC section 7) pairs the models (:mod:`filterdb.pairing`),
makes sure every metric is cached, and for every metric and depth bin compares the
robust models' values with the normal models' values (one value per model and bin, from
:func:`filterdb.cache.depth_profile`): spread, difference of medians, an effect size and a
significance test, each named in its row. Beside it the paper's drift series: pooled
robust against pooled normal filters per depth bin, on one PCA basis for the series.
It writes CSV and Markdown tables, PNG plots and one self-contained HTML file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from filterdb import cache, plots
from filterdb.cache import PROFILE_METRICS, ComputeProgress
from filterdb.database import engine_for, read_frame
from filterdb.files import output_directory
from filterdb.groups import scaled_filters_by, stored_layers
from filterdb.metrics.drift import drift_series
from filterdb.metrics.pca import N_WEIGHTS, NoPCA
from filterdb.migrate import require_head
from filterdb.pairing import Pairing, PairingError, find_pairs
from filterdb.views import METRIC_COLUMNS

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

    ``profile`` is :func:`filterdb.cache.depth_profile` of the paired models (one value
    per model and bin). Sides come from ``pairing``; each model counts once per side.
    When every model sits in exactly one pair the test is paired (Wilcoxon signed-rank
    over the pairs with a value on both sides), else unpaired (Mann-Whitney U over the
    distinct models). Quartiles use linear interpolation (numpy's default). Every bin that
    holds a paired model's layer gets a row per metric, even with no value to test.
    Columns as :data:`STATISTICS_SCHEMA`, ordered by metric, then depth bin.
    """
    values = _role_values(profile, pairing)
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for metric, index, model, value in values.select(
        "metric", "depth_bin_index", "model_name", "value"
    ).iter_rows():
        by_key.setdefault((metric, index), {})[model] = value
    bins = profile.select("depth_bin_index", "depth_bin").unique().sort("depth_bin_index")
    rows = []
    for metric in PROFILE_METRICS:
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


def _role_values(profile: pl.DataFrame, pairing: Pairing) -> pl.DataFrame:
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
            on=list(PROFILE_METRICS),
            index=["model_name", "role", "depth_bin_index", "depth_bin"],
            variable_name="metric",
        )
        .filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
        .sort(["metric", "depth_bin_index", "role", "model_name"])
    )


def drift_by_depth(url: str | None, pairing: Pairing) -> pl.DataFrame:
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
    layers = stored_layers(url).filter(pl.col("model_name").is_in(list(role)))
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
    for metric in PROFILE_METRICS:
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


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_robust_vs_normal_report` wrote and found.

    Attributes
    ----------
    html : Path
        The self-contained report (every plot embedded).
    summary_csv, summary_md, pairs_csv, drift_csv : Path
        Tables: statistics at full precision, the same for reading, the pairs, the drift
        series.
    plots : tuple of Path
        The PNG files (box plots, drift by depth), also embedded in ``html``.
    pairing : Pairing
        Pairs, unpaired models, unresolved names of the pairs file.
    statistics : polars.DataFrame
        One row per metric and depth bin (:func:`robust_vs_normal_statistics`).
    drift : polars.DataFrame
        The drift series (:func:`drift_by_depth`).
    summary : polars.DataFrame
        One row per metric, for the terminal (:func:`summarise`).
    """

    html: Path
    summary_csv: Path
    summary_md: Path
    pairs_csv: Path
    drift_csv: Path
    plots: tuple[Path, ...]
    pairing: Pairing
    statistics: pl.DataFrame
    drift: pl.DataFrame
    summary: pl.DataFrame


def write_robust_vs_normal_report(
    url: str | None = None,
    *,
    out_dir: Path,
    training_dataset: str | None = None,
    pairs_file: Path | None = None,
    on_progress: Callable[[ComputeProgress], None] | None = None,
) -> ReportResult:
    """Write the robust-vs-normal report of the stored models into ``out_dir``.

    Pairs come from ``pairs_file`` (the paper's format) or from the stored metadata;
    ``training_dataset`` keeps one dataset. Metrics missing from the cache are computed
    first (``on_progress`` sees that work), so the report is always complete. Writes
    ``summary.csv`` (full precision), ``summary.md``, ``pairs.csv``, ``drift_by_depth.csv``,
    ``boxplots.png``, ``drift_by_depth.png`` and ``report.html``; the same data gives the
    same files.

    Raises
    ------
    PairingError
        No robust/normal pair was found, or the pairs file is unusable.
    """
    pairing = find_pairs(url, training_dataset=training_dataset, pairs_file=pairs_file)
    if not pairing.pairs:
        raise PairingError(_no_pairs_message(pairing, training_dataset))
    models = [*pairing.robust_models, *pairing.normal_models]
    cache.compute_metrics(url, models=models, on_progress=on_progress)
    profile = cache.depth_profile(url, models=models)
    statistics = robust_vs_normal_statistics(profile, pairing)
    drift = drift_by_depth(url, pairing)

    output_directory(out_dir)
    paths = {
        name: out_dir / name
        for name in (
            "summary.csv",
            "summary.md",
            "pairs.csv",
            "drift_by_depth.csv",
            "boxplots.png",
            "drift_by_depth.png",
            "report.html",
        )
    }
    statistics.write_csv(paths["summary.csv"])
    pairing.frame().write_csv(paths["pairs.csv"])
    drift.write_csv(paths["drift_by_depth.csv"])
    figures = (
        plots.robust_vs_normal_boxplots(
            _role_values(profile, pairing),
            statistics,
            paths["boxplots.png"],
            metrics=PROFILE_METRICS,
        ),
        plots.drift_by_depth_plot(drift, paths["drift_by_depth.png"]),
    )
    summary = summarise(statistics)
    paths["summary.md"].write_text(
        _markdown_report(pairing, statistics, drift, figures), encoding="utf-8"
    )
    paths["report.html"].write_text(
        _html_report(pairing, statistics, summary, drift, figures), encoding="utf-8"
    )
    return ReportResult(
        html=paths["report.html"],
        summary_csv=paths["summary.csv"],
        summary_md=paths["summary.md"],
        pairs_csv=paths["pairs.csv"],
        drift_csv=paths["drift_by_depth.csv"],
        plots=figures,
        pairing=pairing,
        statistics=statistics,
        drift=drift,
        summary=summary,
    )


def _no_pairs_message(pairing: Pairing, training_dataset: str | None) -> str:
    scope = f" of training dataset {training_dataset}" if training_dataset else ""
    found = (
        f"{len(pairing.unpaired_robust)} robust and {len(pairing.unpaired_normal)} normal "
        f"models{scope} are stored"
    )
    if pairing.unresolved:
        found += f", {len(pairing.unresolved)} names of the pairs file match no stored model"
    return (
        f"no robust/normal pair found ({found}); ingest a normally trained twin of the same "
        "architecture and dataset, or name the pairs with --pairs FILE"
    )


# --- the Markdown and HTML documents ----------------------------------------------------

_TEST_NOTES = (
    f"Tests are two-sided: {PAIRED_TEST} when every model sits in exactly one pair, "
    f"else {UNPAIRED_TEST} over the distinct models. Effect sizes: {PAIRED_EFFECT} or "
    f"{UNPAIRED_EFFECT}, in [-1, 1], positive when robust values are larger. "
    "Differences are medians, robust - normal. Quartiles by linear interpolation. "
    "The statistic is U of the robust sample (Mann-Whitney) or min(W+, W-) (Wilcoxon). "
    f"Stars mark p < {SIGNIFICANCE_LEVEL}, 0.01, 0.001, without correction for the "
    "number of tests."
)
_DRIFT_NOTES = (
    "Drift: weighted symmetric KL divergence between the pooled scaled non-sparse filters "
    "of the robust and of the normal models in each depth bin, on one PCA basis and one "
    "coefficient range fitted on every filter of the paired models (SPEC section 5)."
)


def _test_used(pairing: Pairing) -> str:
    if pairing.one_to_one:
        return f"{PAIRED_TEST} (each model sits in exactly one pair)"
    return f"{UNPAIRED_TEST} (a model sits in several pairs, so the samples are not paired)"


def _pairing_lines(pairing: Pairing) -> list[tuple[str, str]]:
    return [
        ("pairs from", pairing.source),
        ("pairs", f"{len(pairing.pairs)}"),
        ("robust models", f"{len(pairing.robust_models)}"),
        ("normal models", f"{len(pairing.normal_models)}"),
        ("test", _test_used(pairing)),
        ("unpaired robust models", ", ".join(pairing.unpaired_robust) or "none"),
        ("unpaired normal models", ", ".join(pairing.unpaired_normal) or "none"),
        (
            "names in the pairs file matching no stored model",
            ", ".join(pairing.unresolved) or "none",
        ),
    ]


def _readable(value: object) -> str:
    """A cell for people: 4 significant digits, NaN and NULL as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(frame: pl.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    for row in frame.iter_rows():
        cells = (_readable(v).replace("|", "\\|") for v in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown_report(
    pairing: Pairing,
    statistics: pl.DataFrame,
    drift: pl.DataFrame,
    figures: tuple[Path, ...],
) -> str:
    boxplots, drift_plot = figures
    parts = ["# Robust vs normal filters by depth\n"]
    parts += [f"- {name}: {value}" for name, value in _pairing_lines(pairing)]
    parts += ["\n## Pairs\n", _markdown_table(pairing.frame())]
    parts += ["## Metrics per depth bin\n", _TEST_NOTES + "\n"]
    parts += [f"![box plots]({boxplots.name})\n", _markdown_table(statistics)]
    parts += ["## Drift by depth\n", _DRIFT_NOTES + "\n"]
    parts += [f"![drift by depth]({drift_plot.name})\n", _markdown_table(drift)]
    return "\n".join(parts)


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; }
td.text { text-align: left; }
img { max-width: 100%; }
"""


def _html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    text_columns = {c for c in frame.columns if frame.schema[c] == pl.String}
    body = []
    for row in frame.iter_rows(named=True):
        cells = "".join(
            f'<td class="text">{html.escape(_readable(v))}</td>'
            if c in text_columns
            else f"<td>{html.escape(_readable(v))}</td>"
            for c, v in row.items()
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _embedded_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html_report(
    pairing: Pairing,
    statistics: pl.DataFrame,
    summary: pl.DataFrame,
    drift: pl.DataFrame,
    figures: tuple[Path, ...],
) -> str:
    boxplots, drift_plot = figures
    facts = pl.DataFrame(_pairing_lines(pairing), schema=["", "value"], orient="row")
    sections = [
        "<h1>Robust vs normal filters by depth</h1>",
        _html_table(facts),
        "<h2>Summary</h2>",
        f"<p>{html.escape(_TEST_NOTES)}</p>",
        _html_table(summary),
        _embedded_png(boxplots),
        "<h2>Drift by depth</h2>",
        f"<p>{html.escape(_DRIFT_NOTES)}</p>",
        _embedded_png(drift_plot),
        _html_table(drift),
        "<h2>Metrics per depth bin</h2>",
        _html_table(statistics),
        "<h2>Pairs</h2>",
        _html_table(pairing.frame()),
    ]
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Robust vs normal filters</title><style>{_STYLE}</style></head>"
    )
    return "\n".join([head, "<body>", *sections, "</body></html>"]) + "\n"


# --- one model against another ----------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Two models side by side.

    Attributes
    ----------
    model_a, model_b : str
        The models compared; differences are a - b.
    joined_on : str
        ``"conv_index"`` when both share an architecture (layer i against layer i), else
        ``"depth_bin"`` (the k-th layer of a bin against the k-th layer of that bin).
    layers : polars.DataFrame
        One row per joined layer: the join keys, depth_bin, layer_name_a, layer_name_b,
        then ``<metric>_a`` and ``<metric>_b`` for every cached metric (NULL where a model
        has no such layer).
    bins : polars.DataFrame
        Long: metric, depth_bin_index, depth_bin, value_a, value_b, difference, one row
        per metric and bin that either model holds.
    plot : Path or None
        The PNG written when ``out_dir`` was given.
    """

    model_a: str
    model_b: str
    joined_on: str
    layers: pl.DataFrame
    bins: pl.DataFrame
    plot: Path | None


def compare_models(
    url: str | None, model_a: str, model_b: str, *, out_dir: Path | None = None
) -> Comparison:
    """Compare two stored models layer by layer and per depth bin.

    Missing metrics are computed first. With ``out_dir``, writes ``comparison.png``
    (each metric per depth bin, both models). Raises a one-line
    :class:`~filterdb.errors.FilterdbError` naming a model that is not stored.
    """
    cache.compute_metrics(url, models=[model_a, model_b])
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            layers = read_frame(
                connection,
                "SELECT * FROM v_layer_metrics WHERE model_name IN (:a, :b) "
                "ORDER BY model_name, conv_index",
                {"a": model_a, "b": model_b},
            )
    profile = cache.depth_profile(url, models=[model_a, model_b])
    architectures = {
        name: layers.filter(pl.col("model_name") == name)["architecture"][0]
        for name in (model_a, model_b)
    }
    same = architectures[model_a] is not None and len(set(architectures.values())) == 1
    joined_on = "conv_index" if same else "depth_bin"
    bins = _bins_side_by_side(profile, model_a, model_b)
    plot = None
    if out_dir is not None:
        output_directory(out_dir)
        plot = plots.comparison_plot(
            bins,
            out_dir / "comparison.png",
            model_a=model_a,
            model_b=model_b,
            metrics=PROFILE_METRICS,
        )
    return Comparison(
        model_a=model_a,
        model_b=model_b,
        joined_on=joined_on,
        layers=_layers_side_by_side(layers, model_a, model_b, same_architecture=same),
        bins=bins,
        plot=plot,
    )


def _layers_side_by_side(
    layers: pl.DataFrame, model_a: str, model_b: str, *, same_architecture: bool
) -> pl.DataFrame:
    # Same architecture: layer i is layer i. Otherwise align the k-th layer of each bin.
    layers = layers.with_columns(
        (pl.col("conv_index").rank("ordinal").over("model_name", "depth_bin_index") - 1)
        .cast(pl.Int64)
        .alias("position_in_bin")
    )
    keys = ["conv_index"] if same_architecture else ["depth_bin_index", "position_in_bin"]
    columns = ["layer_name", "depth_bin", *METRIC_COLUMNS]

    def side(name: str, suffix: str) -> pl.DataFrame:
        return layers.filter(pl.col("model_name") == name).select(
            *keys, *(pl.col(c).alias(f"{c}{suffix}") for c in columns)
        )

    joined = side(model_a, "_a").join(side(model_b, "_b"), on=keys, how="full", coalesce=True)
    return joined.select(
        *keys,
        pl.coalesce("depth_bin_a", "depth_bin_b").alias("depth_bin"),
        "layer_name_a",
        "layer_name_b",
        *(f"{metric}{suffix}" for metric in METRIC_COLUMNS for suffix in ("_a", "_b")),
    ).sort(keys)


def _bins_side_by_side(profile: pl.DataFrame, model_a: str, model_b: str) -> pl.DataFrame:
    long = profile.unpivot(
        on=list(PROFILE_METRICS),
        index=["model_name", "depth_bin_index", "depth_bin"],
        variable_name="metric",
    )
    keys = ["metric", "depth_bin_index", "depth_bin"]

    def side(name: str, column: str) -> pl.DataFrame:
        return long.filter(pl.col("model_name") == name).select(
            *keys, pl.col("value").alias(column)
        )

    joined = side(model_a, "value_a").join(
        side(model_b, "value_b"), on=keys, how="full", coalesce=True, nulls_equal=True
    )
    order = {metric: i for i, metric in enumerate(PROFILE_METRICS)}
    return (
        joined.with_columns((pl.col("value_a") - pl.col("value_b")).alias("difference"))
        .with_columns(pl.col("metric").replace_strict(order).alias("_order"))
        .sort("_order", "depth_bin_index")
        .drop("_order")
    )
