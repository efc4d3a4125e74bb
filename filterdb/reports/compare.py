"""One model against another: layer by layer and per depth bin, with a plot and a document."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from filterdb.analysis.comparison import robust_vs_normal_statistics
from filterdb.analysis.findings import RULES, Finding, findings, findings_frame
from filterdb.analysis.groups import compared_weights_form
from filterdb.analysis.pairing import Pair, Pairing
from filterdb.files import output_directory
from filterdb.metrics import cache
from filterdb.metrics.registry import METRICS, POOLED_METRICS
from filterdb.reports import plots
from filterdb.reports.document import Page
from filterdb.reports.gallery import Gallery, write_gallery
from filterdb.reports.robust_vs_normal import FINDING_COLUMNS, form_line
from filterdb.warehouse.database import display_url, engine_for, kept_open, read_frame
from filterdb.warehouse.inventory import models as stored_models
from filterdb.warehouse.inventory import require_models
from filterdb.warehouse.migrate import require_head


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
    weights_form : str
        The two models' weights form (``mixed (...)`` when compared with ``mixed_forms``).
    findings : tuple of Finding
        The paper's claims with model A in the robust role and B in the normal one
        (scope ``A vs B``): directions and bins for each claim; one pair can never reach
        significance, so every verdict is ``not testable`` and says so.
    galleries : tuple of Gallery
        The first layers of A and B, drawn when ``out_dir`` was given.
    findings_json : Path or None
        ``findings.json`` when ``out_dir`` was given.
    html, markdown : Path or None
        ``report.html`` (self-contained) and ``report.md``, when ``out_dir`` was given:
        header, findings, accuracy, figure, galleries, then the tables in ``<details>``.
    """

    model_a: str
    model_b: str
    joined_on: str
    layers: pl.DataFrame
    bins: pl.DataFrame
    plot: Path | None
    weights_form: str = ""
    findings: tuple[Finding, ...] = ()
    galleries: tuple[Gallery, ...] = field(default=())
    findings_json: Path | None = None
    html: Path | None = None
    markdown: Path | None = None


def compare_models(
    model_a: str,
    model_b: str,
    *,
    url: str | None = None,
    out_dir: Path | None = None,
    mixed_forms: bool = False,
) -> Comparison:
    """Compare two stored models layer by layer and per depth bin.

    Missing metrics are computed first. With ``out_dir``, writes ``comparison.png`` and
    ``.svg`` (each metric per depth bin, both models), ``findings.json`` (the paper's
    claims, A as robust, B as normal), both models' first-layer galleries, and the
    document ``report.html`` and ``report.md`` that shows them all. Raises a one-line
    :class:`~filterdb.errors.FilterdbError` naming a model that is not stored, or when
    the two are stored in different weights forms (raw, bn_folded, as_exported) and
    ``mixed_forms`` is false.
    """
    with kept_open(url):  # one DuckDB open for the comparison's many reads
        return _compare(model_a, model_b, url=url, out_dir=out_dir, mixed_forms=mixed_forms)


def _compare(
    model_a: str, model_b: str, *, url: str | None, out_dir: Path | None, mixed_forms: bool
) -> Comparison:
    form = _comparable_form(model_a, model_b, url=url, mixed_forms=mixed_forms)
    cache.compute_metrics(url=url, models=[model_a, model_b])
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            layers = read_frame(
                connection,
                "SELECT * FROM v_layer_metrics WHERE model_name IN (:a, :b) "
                "ORDER BY model_name, conv_index",
                {"a": model_a, "b": model_b},
            )
    profile = cache.depth_profile(url=url, models=[model_a, model_b])
    architectures = {
        name: layers.filter(pl.col("model_name") == name)["architecture"][0]
        for name in (model_a, model_b)
    }
    same = architectures[model_a] is not None and len(set(architectures.values())) == 1
    joined_on = "conv_index" if same else "depth_bin"
    bins = _bins_side_by_side(profile, model_a, model_b)
    pairing = Pairing((Pair(model_a, model_b, None, None),), (), (), (), "compare")
    found = tuple(
        findings(robust_vs_normal_statistics(profile, pairing), scope=f"{model_a} vs {model_b}")
    )
    layers = _layers_side_by_side(layers, model_a, model_b, same_architecture=same)
    plot = findings_json = html_path = markdown_path = None
    galleries: tuple[Gallery, ...] = ()
    if out_dir is not None:
        output_directory(out_dir)
        plot = plots.comparison_plot(
            bins,
            out_dir / "comparison.png",
            model_a=model_a,
            model_b=model_b,
            metrics=POOLED_METRICS,
            weights_form=form,
        )
        findings_json = out_dir / "findings.json"
        findings_json.write_text(
            json.dumps([f.to_json() for f in found], indent=2) + "\n", encoding="utf-8"
        )
        galleries = tuple(
            write_gallery(name, url=url, out_dir=out_dir, title=f"{role}: {name}, first layer")
            for name, role in ((model_a, "A"), (model_b, "B"))
        )
        page = _page(
            model_a,
            model_b,
            url=url,
            form=form,
            joined_on=joined_on,
            found=found,
            bins=bins,
            layers=layers,
            plot=plot,
            galleries=galleries,
        )
        html_path, markdown_path = out_dir / "report.html", out_dir / "report.md"
        html_path.write_text(page.html(), encoding="utf-8")
        markdown_path.write_text(page.markdown(), encoding="utf-8")
    return Comparison(
        model_a=model_a,
        model_b=model_b,
        joined_on=joined_on,
        layers=layers,
        bins=bins,
        plot=plot,
        weights_form=form,
        findings=found,
        galleries=galleries,
        findings_json=findings_json,
        html=html_path,
        markdown=markdown_path,
    )


# What the document's model table shows of each model, beside its role (A or B).
MODEL_COLUMNS = (
    "model_name",
    "architecture",
    "family",
    "training_type",
    "training_dataset",
    "clean_acc",
    "robust_acc",
)


def _page(
    model_a: str,
    model_b: str,
    *,
    url: str | None,
    form: str,
    joined_on: str,
    found: tuple[Finding, ...],
    bins: pl.DataFrame,
    layers: pl.DataFrame,
    plot: Path,
    galleries: tuple[Gallery, ...],
) -> Page:
    """The comparison's document: the report's page, for two models instead of two groups."""
    stored = stored_models(url=url)
    role = {model_a: "A", model_b: "B"}
    shown = [c for c in MODEL_COLUMNS if c in stored.columns]
    models = (
        stored.filter(pl.col("model_name").is_in(list(role)))
        .with_columns(pl.col("model_name").replace_strict(role).alias("role"))
        .select("role", *shown)
        .sort("role")
    )
    datasets = ", ".join(sorted(models["training_dataset"].drop_nulls().unique())) or "unknown"
    header = (
        ("database", display_url(url)),
        ("date", datetime.datetime.now(datetime.UTC).date().isoformat()),
        ("model A", model_a),
        ("model B", model_b),
        ("training datasets", datasets),
        ("weights form", form_line(form)),
    )
    found_frame = findings_frame(found).select(FINDING_COLUMNS)
    scale = "; ".join(sorted({g.normalisation for g in galleries})) or "none drawn"
    sections = (
        (
            "Findings",
            [
                (
                    "p",
                    f"The paper's claims with {model_a} (A) in the robust role and {model_b} "
                    "(B) in the normal one; differences are A - B. One pair can never reach "
                    "significance, so the verdicts show directions, not findings.",
                ),
                ("list", [f.sentence() for f in found]),
                ("table", found_frame),
                ("p", "How each verdict is reached: " + RULES),
            ],
        ),
        ("Models", [("table", models)]),
        (
            "Figures",
            [
                ("p", "Each metric per depth bin, both models (A circles, B squares)."),
                ("figure", plot),
            ],
        ),
        (
            "First-layer filters: A beside B",
            [
                ("p", f"Left {model_a}, right {model_b}. Scale: {scale}."),
                ("row", tuple(g.png for g in galleries)),
            ],
        ),
        (
            "Metrics per depth bin",
            [("details", ("every metric and depth bin, A - B", bins))],
        ),
        (
            "Layers",
            [("details", (f"layer by layer, joined on {joined_on}", layers))],
        ),
    )
    title = f"{model_a} vs {model_b} ({datasets}; weights: {form})"
    return Page(title=title, header=header, sections=sections)


def _comparable_form(model_a: str, model_b: str, *, url: str | None, mixed_forms: bool) -> str:
    # Checked before any metric is computed: a refused comparison costs nothing.
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            require_models(connection, [model_a, model_b])
            forms = read_frame(
                connection,
                "SELECT model_name, weights_form FROM v_models WHERE model_name IN (:a, :b)",
                {"a": model_a, "b": model_b},
            )
    stored = dict(forms.iter_rows())
    return compared_weights_form(stored, mixed_forms=mixed_forms, what=f"{model_a} vs {model_b}")


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
    columns = ["layer_name", "depth_bin", *METRICS]

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
        *(f"{metric}{suffix}" for metric in METRICS for suffix in ("_a", "_b")),
    ).sort(keys)


def _bins_side_by_side(profile: pl.DataFrame, model_a: str, model_b: str) -> pl.DataFrame:
    long = profile.unpivot(
        on=list(POOLED_METRICS),
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
    order = {metric: i for i, metric in enumerate(POOLED_METRICS)}
    return (
        joined.with_columns((pl.col("value_a") - pl.col("value_b")).alias("difference"))
        .with_columns(pl.col("metric").replace_strict(order).alias("_order"))
        .sort("_order", "depth_bin_index")
        .drop("_order")
    )
