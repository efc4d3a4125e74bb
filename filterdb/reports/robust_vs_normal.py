"""The robust-vs-normal report (SPEC section 7): pairs, statistics, drift, plots, documents.

It pairs the models (:mod:`filterdb.analysis.pairing`), makes sure every metric is cached,
takes the statistics and the drift series of :mod:`filterdb.analysis.comparison`, and writes
CSV and Markdown tables, PNG plots and one self-contained HTML file.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from filterdb.analysis.comparison import (
    PAIRED_EFFECT,
    PAIRED_TEST,
    SIGNIFICANCE_LEVEL,
    UNPAIRED_EFFECT,
    UNPAIRED_TEST,
    drift_by_depth,
    robust_vs_normal_statistics,
    role_values,
    summarise,
)
from filterdb.analysis.groups import compared_weights_form
from filterdb.analysis.pairing import Pairing, find_pairs
from filterdb.errors import PairingError
from filterdb.files import output_directory
from filterdb.metrics import cache
from filterdb.metrics.cache import ComputeProgress
from filterdb.metrics.drift import NOISE_LEVEL, NULL_MAX_FILTERS, NULL_PERMUTATIONS
from filterdb.metrics.registry import POOLED_METRICS
from filterdb.reports import plots
from filterdb.reports.document import STYLE, embedded_png, html_table, markdown_table
from filterdb.warehouse.inventory import models as stored_models


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
    weights_form : str
        The weights form of the compared models (``raw``, ``bn_folded``, ``as_exported``,
        or ``mixed (...)`` with ``mixed_forms``).
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
    weights_form: str = ""


def write_robust_vs_normal_report(
    *,
    url: str | None = None,
    out_dir: Path,
    training_dataset: str | None = None,
    pairs_file: Path | None = None,
    weights_form: str | None = None,
    mixed_forms: bool = False,
    on_progress: Callable[[ComputeProgress], None] | None = None,
) -> ReportResult:
    """Write the robust-vs-normal report of the stored models into ``out_dir``.

    Pairs come from ``pairs_file`` (the paper's format) or from the stored metadata;
    ``training_dataset`` keeps one dataset. Metrics missing from the cache are computed
    first (``on_progress`` sees that work), so the report is always complete. Writes
    ``summary.csv`` (full precision), ``summary.md``, ``pairs.csv``, ``drift_by_depth.csv``,
    ``boxplots.png``, ``drift_by_depth.png`` and ``report.html``; the same data gives the
    same files (the drift nulls are seeded). ``weights_form`` keeps only models stored in
    that form; the paired models must share one form unless ``mixed_forms``, and every
    document states the form compared.

    Raises
    ------
    PairingError
        No robust/normal pair was found, or the pairs file is unusable.
    FilterdbError
        The paired models hold several weights forms and ``mixed_forms`` is false.
    """
    pairing = find_pairs(
        url=url,
        training_dataset=training_dataset,
        pairs_file=pairs_file,
        weights_form=weights_form,
    )
    if not pairing.pairs:
        raise PairingError(_no_pairs_message(pairing, training_dataset))
    models = [*pairing.robust_models, *pairing.normal_models]
    forms = stored_models(url=url).filter(pl.col("model_name").is_in(models))
    form = compared_weights_form(
        dict(forms.select("model_name", "weights_form").iter_rows()),
        mixed_forms=mixed_forms,
        what="the robust/normal pairs",
    )
    cache.compute_metrics(url=url, models=models, on_progress=on_progress)
    profile = cache.depth_profile(url=url, models=models)
    statistics = robust_vs_normal_statistics(profile, pairing)
    drift = drift_by_depth(pairing, url=url)

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
            role_values(profile, pairing),
            statistics,
            paths["boxplots.png"],
            metrics=POOLED_METRICS,
        ),
        plots.drift_by_depth_plot(drift, paths["drift_by_depth.png"], weights_form=form),
    )
    summary = summarise(statistics)
    paths["summary.md"].write_text(
        _markdown_report(pairing, statistics, drift, figures, form), encoding="utf-8"
    )
    paths["report.html"].write_text(
        _html_report(pairing, statistics, summary, drift, figures, form), encoding="utf-8"
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
        weights_form=form,
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
    "A metric is tested in up to eleven depth bins, so p_holm is the Holm-adjusted "
    "p-value over the metric's bins (family-wise error rate at most the level); p_value "
    f"is the raw one. Stars and counts use p_holm: p_holm < {SIGNIFICANCE_LEVEL}, 0.01, "
    "0.001. min_p is the smallest p-value the test can give at that bin's sample sizes "
    "(with n matched pairs 2/2^n: one pair 1, five pairs 0.0625); where it is at least "
    f"{SIGNIFICANCE_LEVEL} the note says the test cannot reach significance, so its p is "
    "no finding either way."
)
_DRIFT_NOTES = (
    "Drift: weighted symmetric KL divergence between the pooled scaled non-sparse filters "
    "of the robust and of the normal models in each depth bin, on one PCA basis and one "
    "coefficient range fitted on every filter of the paired models (SPEC section 5). "
    "Drift grows as groups shrink, so each value stands beside its noise reference: "
    f"{NULL_PERMUTATIONS} seeded label permutations of the bin's two groups (same basis, "
    "range and bins; a pair above "
    f"{NULL_MAX_FILTERS:,} filters is subsampled in proportion first), reported as the "
    "null's median, its 5-95% band (grey in the plot) and the permutation p-value. "
    f"within_noise marks values with p >= {NOISE_LEVEL}: groups of these sizes from one "
    "distribution drift as much."
)


def _form_line(form: str) -> str:
    meaning = {
        "raw": "the checkpoints' own tensors",
        "bn_folded": "BatchNorm folded into the convs, as the papers' ONNX exports had them",
        "as_exported": "the ONNX files as they are",
    }.get(form, "models stored in different forms, compared anyway (--mixed-forms)")
    return f"{form} ({meaning})"


def _test_used(pairing: Pairing) -> str:
    if pairing.one_to_one:
        return f"{PAIRED_TEST} (each model sits in exactly one pair)"
    return f"{UNPAIRED_TEST} (a model sits in several pairs, so the samples are not paired)"


def _pairing_lines(pairing: Pairing, form: str) -> list[tuple[str, str]]:
    return [
        ("weights form", _form_line(form)),
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


def _markdown_report(
    pairing: Pairing,
    statistics: pl.DataFrame,
    drift: pl.DataFrame,
    figures: tuple[Path, ...],
    form: str,
) -> str:
    boxplots, drift_plot = figures
    parts = [f"# Robust vs normal filters by depth (weights: {form})\n"]
    parts += [f"- {name}: {value}" for name, value in _pairing_lines(pairing, form)]
    parts += ["\n## Pairs\n", markdown_table(pairing.frame())]
    parts += ["## Metrics per depth bin\n", _TEST_NOTES + "\n"]
    parts += [f"![box plots]({boxplots.name})\n", markdown_table(statistics)]
    parts += ["## Drift by depth\n", _DRIFT_NOTES + "\n"]
    parts += [f"![drift by depth]({drift_plot.name})\n", markdown_table(drift)]
    return "\n".join(parts)


def _html_report(
    pairing: Pairing,
    statistics: pl.DataFrame,
    summary: pl.DataFrame,
    drift: pl.DataFrame,
    figures: tuple[Path, ...],
    form: str,
) -> str:
    boxplots, drift_plot = figures
    facts = pl.DataFrame(_pairing_lines(pairing, form), schema=["", "value"], orient="row")
    sections = [
        f"<h1>Robust vs normal filters by depth (weights: {html.escape(form)})</h1>",
        html_table(facts),
        "<h2>Summary</h2>",
        f"<p>{html.escape(_TEST_NOTES)}</p>",
        html_table(summary),
        embedded_png(boxplots),
        "<h2>Drift by depth</h2>",
        f"<p>{html.escape(_DRIFT_NOTES)}</p>",
        embedded_png(drift_plot),
        html_table(drift),
        "<h2>Metrics per depth bin</h2>",
        html_table(statistics),
        "<h2>Pairs</h2>",
        html_table(pairing.frame()),
    ]
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Robust vs normal filters</title><style>{STYLE}</style></head>"
    )
    return "\n".join([head, "<body>", *sections, "</body></html>"]) + "\n"
