"""The robust-vs-normal report (SPEC section 7): pairs, statistics, drift, plots, documents.

It pairs the models (:mod:`filterdb.analysis.pairing`), makes sure every metric is cached,
takes the statistics and the drift series of :mod:`filterdb.analysis.comparison`, and writes
CSV and Markdown tables, PNG plots and one self-contained HTML file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
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
from filterdb.analysis.findings import RULES, Finding, findings, findings_frame, scoped_pairings
from filterdb.analysis.groups import compared_weights_form, stored_layers
from filterdb.analysis.pairing import Pairing, find_pairs
from filterdb.errors import PairingError
from filterdb.files import output_directory
from filterdb.metrics import cache
from filterdb.metrics.cache import ComputeProgress
from filterdb.metrics.drift import NOISE_LEVEL, NULL_MAX_FILTERS, NULL_PERMUTATIONS
from filterdb.metrics.registry import POOLED_METRICS
from filterdb.reports import plots
from filterdb.reports.document import Page
from filterdb.reports.drawing import Drawer, Drawing, Finished
from filterdb.reports.gallery import Gallery, submit_eigen_filter_pair, submit_gallery
from filterdb.warehouse.database import display_url, kept_open
from filterdb.warehouse.inventory import models as stored_models

# Pairs whose first layers the report draws; `filterdb gallery MODEL` draws any model.
MAX_GALLERY_PAIRS = 6
# From this many filters in the compared models, the figures are drawn in a second
# process while the drift series computes: the process costs about a second of imports on
# the other core, which the 100-model report's 7.6M filters repay several times.
DRAW_ASIDE_FROM_FILTERS = 1_000_000
ACCURACY_COLUMNS = ("model_name", "role", "architecture", "family", "training_dataset")


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
    findings : tuple of Finding
        Every claim's verdict, overall (scope ``all``), per training dataset and family.
    findings_json : Path or None
        The findings as a JSON list.
    galleries : tuple of Gallery
        First-layer galleries of the drawn pairs, robust then normal twin.
    scopes : tuple of ScopeFigures
        Per training dataset and family with a pair: its statistics, drift series and
        figures (none when the scope holds every pair of the report).
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
    findings: tuple[Finding, ...] = ()
    findings_json: Path | None = None
    galleries: tuple[Gallery, ...] = field(default=())
    scopes: tuple[ScopeFigures, ...] = field(default=())


def write_robust_vs_normal_report(
    *,
    url: str | None = None,
    out_dir: Path,
    training_dataset: str | None = None,
    pairs_file: Path | None = None,
    weights_form: str | None = None,
    mixed_forms: bool = False,
    on_progress: Callable[[ComputeProgress], None] | None = None,
    engine: str | None = None,
    lake: str | Path | None = None,
) -> ReportResult:
    """Write the robust-vs-normal report of the stored models into ``out_dir``.

    Pairs come from ``pairs_file`` (the paper's format) or from the stored metadata;
    ``training_dataset`` keeps one dataset. Metrics missing from the cache are computed
    first (``on_progress`` sees that work), so the report is always complete. Writes
    ``summary.csv`` (full precision), ``summary.md``, ``pairs.csv``, ``drift_by_depth.csv``,
    ``boxplots.png``, ``drift_by_depth.png`` and ``report.html``, and per training
    dataset or family that holds some but not all pairs ``boxplots_<scope>.png`` and
    ``drift_by_depth_<scope>.png`` (each on the scope's own drift basis); the same data gives the
    same files (the drift nulls are seeded). ``weights_form`` keeps only models stored in
    that form; the paired models must share one form unless ``mixed_forms``, and every
    document states the form compared. ``engine`` and ``lake`` say where the metrics and
    the drift series are computed (:func:`filterdb.metrics.cache.compute_metrics`,
    :func:`filterdb.analysis.comparison.drift_by_depth`); the rest is read on the client.

    Raises
    ------
    PairingError
        No robust/normal pair was found, or the pairs file is unusable.
    FilterdbError
        The paired models hold several weights forms and ``mixed_forms`` is false.
    """
    with kept_open(url):  # one DuckDB open for the report's dozens of reads
        return _write_report(
            url=url,
            out_dir=out_dir,
            training_dataset=training_dataset,
            pairs_file=pairs_file,
            weights_form=weights_form,
            mixed_forms=mixed_forms,
            on_progress=on_progress,
            engine=engine,
            lake=lake,
        )


def _write_report(
    *,
    url: str | None,
    out_dir: Path,
    training_dataset: str | None,
    pairs_file: Path | None,
    weights_form: str | None,
    mixed_forms: bool,
    on_progress: Callable[[ComputeProgress], None] | None,
    engine: str | None,
    lake: str | Path | None,
) -> ReportResult:
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
    layers = stored_layers(url=url)
    in_drift = layers.filter(pl.col("model_name").is_in(models))["n_filters"].sum()
    # Figures are drawn in a second process while this one computes, once the drift series
    # is large enough to be worth the process (see DRAW_ASIDE_FROM_FILTERS); started first,
    # so that its imports overlap the metrics and the statistics.
    with Drawer(in_process=in_drift < DRAW_ASIDE_FROM_FILTERS) as drawer:
        cache.compute_metrics(
            url=url, models=models, on_progress=on_progress, engine=engine, lake=lake
        )
        profile = cache.depth_profile(url=url, models=models)
        statistics = robust_vs_normal_statistics(profile, pairing)
        family_of = dict(forms.select("model_name", "family").iter_rows())
        found = []
        scopes = scoped_pairings(pairing, family_of)
        scope_statistics = {}
        for scope, scoped in scopes:
            # A scope of every pair (one training dataset, say) has the report's statistics.
            same = scoped.pairs == pairing.pairs
            of_scope = statistics if same else robust_vs_normal_statistics(profile, scoped)
            scope_statistics[scope] = of_scope
            found += findings(of_scope, scope=scope)

        output_directory(out_dir)
        paths = {
            name: out_dir / name
            for name in (
                "summary.csv",
                "summary.md",
                "pairs.csv",
                "drift_by_depth.csv",
                "findings.json",
                "boxplots.png",
                "drift_by_depth.png",
                "report.html",
            )
        }
        statistics.write_csv(paths["summary.csv"])
        pairing.frame().write_csv(paths["pairs.csv"])
        paths["findings.json"].write_text(
            json.dumps([f.to_json() for f in found], indent=2) + "\n", encoding="utf-8"
        )
        header = _Header.of(pairing, forms, form, url)
        boxplots = drawer.submit(
            plots.robust_vs_normal_boxplots,
            role_values(profile, pairing),
            statistics,
            paths["boxplots.png"],
            metrics=POOLED_METRICS,
            title=header.groups,
        )
        gallery_drawings = _galleries(
            pairing, url=url, out_dir=out_dir, layers=layers, drawer=drawer
        )
        eigen_drawing = submit_eigen_filter_pair(
            drawer,
            list(pairing.robust_models),
            list(pairing.normal_models),
            url=url,
            out_dir=out_dir,
            layers=layers,
        )
        drift = drift_by_depth(pairing, url=url, engine=engine, lake=lake)
        drift.write_csv(paths["drift_by_depth.csv"])
        drift_plot = drawer.submit(
            plots.drift_by_depth_plot,
            drift,
            paths["drift_by_depth.png"],
            weights_form=form,
            title=header.groups,
        )
        scope_drawings = [
            _scope_figures(
                scope,
                scoped,
                statistics=scope_statistics[scope],
                profile=profile,
                url=url,
                out_dir=out_dir,
                form=form,
                same_as_all=scoped.pairs == pairing.pairs,
                drawer=drawer,
            )
            for scope, scoped in scopes
            if scope != "all"
        ]
        drawer.finish()  # both processes draw until the last figure is done
        figures = (boxplots.result(), drift_plot.result())
        galleries = [drawing.result() for drawing in gallery_drawings]
        eigen = eigen_drawing.result() if eigen_drawing else None
        per_scope = [
            dataclasses.replace(scope, figures=tuple(d.result() for d in drawings))
            for scope, drawings in scope_drawings
        ]
        document = _Document(
            header=header,
            pairing=pairing,
            statistics=statistics,
            summary=summarise(statistics),
            drift=drift,
            findings=findings_frame(found),
            accuracy=_accuracy(pairing, forms),
            figures=figures,
            galleries=tuple(galleries),
            eigen=eigen,
            scopes=tuple(per_scope),
        )
        paths["summary.md"].write_text(document.markdown(), encoding="utf-8")
        paths["report.html"].write_text(document.html(), encoding="utf-8")
        scope_images = [path for figure in per_scope for path in figure.figures]
        images = tuple(
            dict.fromkeys(
                (*figures, *scope_images, *(g.png for g in galleries), *([eigen] if eigen else []))
            )
        )
        return ReportResult(
            html=paths["report.html"],
            summary_csv=paths["summary.csv"],
            summary_md=paths["summary.md"],
            pairs_csv=paths["pairs.csv"],
            drift_csv=paths["drift_by_depth.csv"],
            plots=images,
            pairing=pairing,
            statistics=statistics,
            drift=drift,
            summary=document.summary,
            weights_form=form,
            findings=tuple(found),
            findings_json=paths["findings.json"],
            galleries=tuple(galleries),
            scopes=tuple(per_scope),
        )


@dataclass(frozen=True)
class ScopeFigures:
    """The figures of one scope (``training_dataset=...``, ``family=...``).

    ``figures`` are the box plots and the drift series of the scope's pairs, drawn on the
    scope's own drift basis; empty, with ``same_as_all``, when the scope holds every pair
    of the report (its figures would be those of ``all``).
    """

    scope: str
    pairing: Pairing
    statistics: pl.DataFrame
    drift: pl.DataFrame | None
    figures: tuple[Path, ...]
    same_as_all: bool


def _scope_figures(
    scope: str,
    pairing: Pairing,
    *,
    statistics: pl.DataFrame,
    profile: pl.DataFrame,
    url: str | None,
    out_dir: Path,
    form: str,
    same_as_all: bool,
    drawer: Drawer,
) -> tuple[ScopeFigures, list[Drawing[Path]]]:
    """The scope's drift series, computed here, and its figures, handed to ``drawer``;
    the ScopeFigures' ``figures`` are filled in from the drawings."""
    if same_as_all:
        # The drift series is the report's most expensive part: not twice for one set.
        return ScopeFigures(scope, pairing, statistics, None, (), True), []
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in scope.replace("=", "-"))
    title = (
        f"{len(pairing.robust_models)} robust vs {len(pairing.normal_models)} normal models "
        f"({scope})"
    )
    drawings = [
        drawer.submit(
            plots.robust_vs_normal_boxplots,
            role_values(profile, pairing),
            statistics,
            out_dir / f"boxplots_{stem}.png",
            metrics=POOLED_METRICS,
            title=title,
        )
    ]
    drift = drift_by_depth(pairing, url=url)
    drawings.append(
        drawer.submit(
            plots.drift_by_depth_plot,
            drift,
            out_dir / f"drift_by_depth_{stem}.png",
            weights_form=form,
            title=title,
        )
    )
    return ScopeFigures(scope, pairing, statistics, drift, (), False), drawings


def _galleries(
    pairing: Pairing, *, url: str | None, out_dir: Path, layers: pl.DataFrame, drawer: Drawer
) -> list[Finished[plots.DrawnGallery, Gallery]]:
    """The first layer of each of the first robust models and of its first normal twin."""
    twins = {}
    for pair in pairing.pairs:
        twins.setdefault(pair.robust, pair.normal)
    drawn: dict[str, Finished[plots.DrawnGallery, Gallery]] = {}
    out = []
    for robust in list(twins)[:MAX_GALLERY_PAIRS]:
        for model, role in ((robust, "robust"), (twins[robust], "normal")):
            if model not in drawn:
                title = f"{role}: {model}, first layer"
                drawn[model] = submit_gallery(
                    drawer, model, url=url, out_dir=out_dir, title=title, layers=layers
                )
            out.append(drawn[model])
    return out


def _accuracy(pairing: Pairing, models: pl.DataFrame) -> pl.DataFrame:
    role = dict.fromkeys(pairing.robust_models, "robust") | dict.fromkeys(
        pairing.normal_models, "normal"
    )
    return (
        models.filter(pl.col("model_name").is_in(list(role)))
        .with_columns(pl.col("model_name").replace_strict(role).alias("role"))
        .select(*ACCURACY_COLUMNS, "clean_acc", "robust_acc")
        .sort("role", "model_name", descending=[True, False])
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
    "coefficient range fitted on every filter of the paired models; filters whose largest "
    "|weight| is under 1% of the layer's largest are sparse and left out, the others are "
    "divided by their own largest |weight| first. "
    "Drift grows as groups shrink, so each value stands beside its noise reference: "
    f"{NULL_PERMUTATIONS} seeded label permutations of the bin's two groups (same basis, "
    "range and bins; a pair above "
    f"{NULL_MAX_FILTERS:,} filters is subsampled in proportion first), reported as the "
    "null's median, its 5-95% band (grey in the plot) and the permutation p-value. "
    f"within_noise marks values with p >= {NOISE_LEVEL}: groups of these sizes from one "
    "distribution drift as much."
)


def form_line(form: str) -> str:
    """The weights form with what it means, for a document's header."""
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
        ("weights form", form_line(form)),
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


MAX_LISTED_MODELS = 12


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:MAX_LISTED_MODELS])
    more = len(names) - MAX_LISTED_MODELS
    return f"{shown} and {more} more" if more > 0 else shown or "none"


@dataclass(frozen=True)
class _Header:
    """What the document's title and header say was compared."""

    title: str
    groups: str
    lines: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, pairing: Pairing, models: pl.DataFrame, form: str, url: str | None) -> _Header:
        paired = models.filter(
            pl.col("model_name").is_in([*pairing.robust_models, *pairing.normal_models])
        )
        datasets = ", ".join(sorted(paired["training_dataset"].drop_nulls().unique())) or "unknown"
        families = ", ".join(sorted(paired["family"].drop_nulls().unique())) or "unknown"
        groups = (
            f"{len(pairing.robust_models)} robust vs {len(pairing.normal_models)} normal "
            f"models ({datasets})"
        )
        lines = (
            ("database", display_url(url)),
            ("date", datetime.datetime.now(datetime.UTC).date().isoformat()),
            ("training datasets", datasets),
            ("architecture families", families),
            ("robust models compared", _listed(pairing.robust_models)),
            ("normal models compared", _listed(pairing.normal_models)),
            *_pairing_lines(pairing, form),
        )
        return cls(f"Robust vs normal filters: {groups} (weights: {form})", groups, lines)


# The header's first lines (database to weights form) open the document; the rest of
# what was compared follows the findings.
HEADER_LINES = 7
FINDING_COLUMNS = (
    "claim",
    "metric",
    "verdict",
    "direction",
    "bins_agreeing",
    "bins_tested",
    "median_difference",
    "effect_size",
    "p_adjusted",
    "reason",
)


@dataclass(frozen=True)
class _Document:
    """The report's content, written once as Markdown and once as HTML, in one order."""

    header: _Header
    pairing: Pairing
    statistics: pl.DataFrame
    summary: pl.DataFrame
    drift: pl.DataFrame
    findings: pl.DataFrame
    accuracy: pl.DataFrame
    figures: tuple[Path, ...]
    galleries: tuple[Gallery, ...]
    eigen: Path | None
    scopes: tuple[ScopeFigures, ...] = ()

    @property
    def overall(self) -> pl.DataFrame:
        return self.findings.filter(pl.col("scope") == "all").select(FINDING_COLUMNS)

    @property
    def scoped(self) -> pl.DataFrame:
        return self.findings.filter(pl.col("scope") != "all").select("scope", *FINDING_COLUMNS)

    def sentences(self) -> list[str]:
        frame = self.findings.filter(pl.col("scope") == "all")
        return [Finding(**row).sentence() for row in frame.iter_rows(named=True)]

    def sections(self) -> list[tuple[str, list[tuple[str, object]]]]:
        """(heading, parts); a part is ("p", text), ("list", lines), ("table", frame),
        ("details", (label, frame)), ("figure", path) or ("row", paths)."""
        boxplots, drift_plot = self.figures
        gallery_rows = [
            ("row", (a.png, b.png))
            for a, b in zip(self.galleries[::2], self.galleries[1::2], strict=True)
        ]
        normalisations = sorted({g.normalisation for g in self.galleries})
        return [
            (
                "Findings",
                [
                    ("list", self.sentences()),
                    ("table", self.overall),
                    ("p", "How each verdict is reached: " + RULES),
                ],
            ),
            ("Accuracy", [("table", self.accuracy)]),
            ("About the comparison", [("facts", self.header.lines[HEADER_LINES:])]),
            (
                "Figures",
                [
                    ("p", _TEST_NOTES),
                    ("figure", boxplots),
                    ("p", _DRIFT_NOTES),
                    ("figure", drift_plot),
                ],
            ),
            (
                "First-layer filters: robust beside normal",
                [
                    (
                        "p",
                        "Each row: a robust model's first layer (left) and its normal twin "
                        f"(right), the first {MAX_GALLERY_PAIRS} pairs at most. Scale: "
                        + ("; ".join(normalisations) or "none drawn")
                        + ". `filterdb gallery MODEL` draws any stored model.",
                    ),
                    *gallery_rows,
                    *([("figure", self.eigen)] if self.eigen else []),
                ],
            ),
            (
                "Findings per training dataset and family",
                [("details", ("every claim per scope", self.scoped))],
            ),
            ("Figures per training dataset and family", self.scope_parts()),
            ("Summary", [("details", ("per metric: first and deepest bin", self.summary))]),
            ("Drift by depth", [("details", ("the drift series", self.drift))]),
            (
                "Metrics per depth bin",
                [("details", ("every metric and depth bin", self.statistics))],
            ),
            ("Pairs", [("details", ("the pairs", self.pairing.frame()))]),
        ]

    def scope_parts(self) -> list[tuple[str, object]]:
        """One closed group per scope: its findings, box plots and drift series."""
        if not self.scopes:
            return [("p", "No training dataset or family is known for the pairs.")]
        parts: list[tuple[str, object]] = []
        for figure in self.scopes:
            pairs = f"{len(figure.pairing.pairs)} pairs"
            if figure.same_as_all:
                parts.append(
                    (
                        "p",
                        f"{figure.scope}: every pair of the report ({pairs}); "
                        "its figures are those above.",
                    )
                )
                continue
            found = self.findings.filter(pl.col("scope") == figure.scope).select(FINDING_COLUMNS)
            boxplots, drift_plot = figure.figures
            parts.append(
                (
                    "group",
                    (
                        f"{figure.scope} ({pairs})",
                        [
                            ("table", found),
                            ("figure", boxplots),
                            ("figure", drift_plot),
                            ("details", (f"the drift series of {figure.scope}", figure.drift)),
                        ],
                    ),
                )
            )
        return parts

    def page(self) -> Page:
        return Page(
            title=self.header.title,
            header=self.header.lines[:HEADER_LINES],
            sections=tuple(self.sections()),
        )

    def markdown(self) -> str:
        return self.page().markdown()

    def html(self) -> str:
        return self.page().html()
