"""Commands: ``filterdb report robust-vs-normal``, ``filterdb compare`` and ``filterdb gallery``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from filterdb.cli.options import (
    EngineOption,
    FormatOption,
    LakeOption,
    MixedFormsOption,
    OutputOption,
    database_url,
)
from filterdb.cli.output import (
    OutputFormat,
    console,
    emit_frame,
    err_console,
    one_line_errors,
    print_frame,
)
from filterdb.cli.progress import compute_progress
from filterdb.wording import counted

app = typer.Typer()


class WeightsForm(StrEnum):
    raw = "raw"
    bn_folded = "bn_folded"
    as_exported = "as_exported"


report_app = typer.Typer(
    help="Comparison reports: tables, plots and one HTML file.", no_args_is_help=True
)
app.add_typer(report_app, name="report")


@report_app.command("robust-vs-normal")
def robust_vs_normal(
    context: typer.Context,
    training_dataset: Annotated[
        str | None,
        typer.Option("--training-dataset", help="Only models trained on this dataset."),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            "--pairs",
            help="CSV with columns Robust, Normal (Arch, Dataset optional), as the paper's "
            "robust_vs_normal_pairings.csv. Default: pair by architecture and dataset.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the report files.")] = Path(
        "report"
    ),
    weights_form: Annotated[
        WeightsForm | None,
        typer.Option("--weights-form", help="Only models stored in this form."),
    ] = None,
    mixed_forms: MixedFormsOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    engine: EngineOption = None,
    lake: LakeOption = None,
) -> None:
    """Robust vs normal models per metric and depth bin: tests, box plots, drift, HTML."""
    from filterdb.reports.robust_vs_normal import write_robust_vs_normal_report

    with one_line_errors(), compute_progress(quiet=quiet) as on_progress:
        result = write_robust_vs_normal_report(
            url=database_url(context),
            out_dir=out,
            training_dataset=training_dataset,
            pairs_file=pairs,
            weights_form=weights_form.value if weights_form else None,
            mixed_forms=mixed_forms,
            on_progress=on_progress,
            engine=engine,
            lake=lake,
        )
    pairing = result.pairing
    console.print(
        f"{counted(len(pairing.pairs), 'pair')}: {len(pairing.robust_models)} robust, "
        f"{len(pairing.normal_models)} normal; test: {result.statistics['test'][0]}; "
        f"weights {result.weights_form}"
    )
    for label, names in (
        ("unpaired robust", pairing.unpaired_robust),
        ("unpaired normal", pairing.unpaired_normal),
        ("not stored (pairs file)", pairing.unresolved),
    ):
        if names:
            console.print(f"{label}: {', '.join(names)}", markup=False, soft_wrap=True)
    print_frame(result.summary, title="robust - normal (medians); Holm-adjusted p < 0.05 counted")
    console.print(f"report: {result.html}", markup=False, soft_wrap=True)


class CompareTable(StrEnum):
    bin = "bin"
    layer = "layer"


@app.command("compare")
def compare(
    context: typer.Context,
    model_a: Annotated[str, typer.Argument(help="First model, as `filterdb models` lists it.")],
    model_b: Annotated[str, typer.Argument(help="Second model; differences are A - B.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write report.html, report.md, comparison.png, findings.json and both "
            "galleries into this directory.",
        ),
    ] = None,
    per: Annotated[
        CompareTable,
        typer.Option("--per", help="bin: each metric per depth bin; layer: layer by layer."),
    ] = CompareTable.bin,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
    mixed_forms: MixedFormsOption = False,
) -> None:
    """Two models side by side: per depth bin (with A - B) or layer by layer."""
    from filterdb.reports.compare import compare_models

    with one_line_errors():
        comparison = compare_models(
            model_a, model_b, url=database_url(context), out_dir=out, mixed_forms=mixed_forms
        )
        form = f"weights {comparison.weights_form}"
        if per is CompareTable.bin:
            frame, title = comparison.bins, f"{model_a} vs {model_b} per depth bin ({form})"
        else:
            frame = comparison.layers
            title = f"{model_a} vs {model_b} per layer (joined on {comparison.joined_on}; {form})"
        emit_frame(frame, fmt, output, title=title)
    if comparison.plot is not None:  # stderr: stdout may carry CSV or JSON
        err_console.print(f"plot: {comparison.plot}", markup=False, soft_wrap=True)
        for drawn in comparison.galleries:
            err_console.print(f"gallery: {drawn.png}", markup=False, soft_wrap=True)
        err_console.print(f"findings: {comparison.findings_json}", markup=False, soft_wrap=True)
        err_console.print(f"report: {comparison.html}", markup=False, soft_wrap=True)


@app.command("gallery")
def gallery(
    context: typer.Context,
    model: Annotated[str, typer.Argument(help="A stored model, as `filterdb models` lists it.")],
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="The layer to draw, as `filterdb layers MODEL` names it."),
    ] = None,
    first: Annotated[
        bool, typer.Option("--first", help="Draw the first conv layer (the default).")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for gallery_<model>_<layer>.png and .svg.")
    ] = Path("."),
) -> None:
    """A layer's 3x3 kernels as an image grid: colour per output channel on RGB inputs."""
    from filterdb.errors import FilterdbError
    from filterdb.reports.gallery import write_gallery

    with one_line_errors():
        if layer is not None and first:
            raise FilterdbError("--layer and --first both name a layer; give one of them")
        drawn = write_gallery(model, url=database_url(context), layer=layer, out_dir=out)
    console.print(
        f"{drawn.model} {drawn.layer}: {drawn.kernels_shown} of {counted(drawn.kernels, 'kernel')} "
        f"({drawn.normalisation})",
        markup=False,
        soft_wrap=True,
    )
    console.print(f"gallery: {drawn.png} (and {drawn.svg.name})", markup=False, soft_wrap=True)
