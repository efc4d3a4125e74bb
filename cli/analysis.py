"""Commands ``filterdb pca`` and ``filterdb drift``: eigen-filters and KL drift (SPEC section 5)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import polars as pl
import typer

from filterdb.analysis.groups import GROUPING_COLUMNS
from filterdb.cli.options import (
    EngineOption,
    FormatOption,
    LakeOption,
    MixedFormsOption,
    database_url,
)
from filterdb.cli.output import OutputFormat, emit_frame, err_console, one_line_errors
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS

app = typer.Typer()


OutDirOption = Annotated[
    Path | None, typer.Option("--out", help="Also write CSV, JSON and PNG files into DIR.")
]
EpsOption = Annotated[
    float, typer.Option("--eps", help="Sparsity threshold (share of the layer max).")
]


@app.command("pca")
def pca(
    context: typer.Context,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="all, robust, normal, model=NAME, depth=BIN, dataset=NAME or architecture=NAME.",
        ),
    ],
    eps: EpsOption = DEFAULT_SPARSITY_EPS,
    fmt: FormatOption = OutputFormat.table,
    out: OutDirOption = None,
    engine: EngineOption = None,
    lake: LakeOption = None,
) -> None:
    """PCA eigen-filters of a group: components, explained variance, cumulative ratio."""
    from filterdb.analysis import pca_drift as analysis
    from filterdb.reports import pca_drift as pca_drift_files

    with one_line_errors():
        result = analysis.pca_group(
            url=database_url(context), group=group, eps=eps, engine=engine, lake=lake
        )
        written = pca_drift_files.write_pca(result, out) if out else []
    title = f"PCA of {group}: {result.n_filters:,} non-sparse filters"
    _emit(analysis.pca_frame(result), analysis.pca_json(result), fmt, title=title)
    _report_written(written)


@app.command("drift")
def drift(
    context: typer.Context,
    by: Annotated[str, typer.Option("--by", help=" | ".join(GROUPING_COLUMNS))],
    eps: EpsOption = DEFAULT_SPARSITY_EPS,
    fmt: FormatOption = OutputFormat.table,
    out: OutDirOption = None,
    mixed_forms: MixedFormsOption = False,
    engine: EngineOption = None,
    lake: LakeOption = None,
) -> None:
    """KL drift between every two groups, on one basis fitted on their union, each value
    beside its seeded permutation null (drift_null.csv with --out)."""
    from filterdb.analysis import pca_drift as analysis
    from filterdb.reports import pca_drift as pca_drift_files

    with one_line_errors():
        result = analysis.drift(
            url=database_url(context),
            by=by,
            eps=eps,
            mixed_forms=mixed_forms,
            engine=engine,
            lake=lake,
        )
        title = f"KL drift by {by} (weights {result.weights_form})"
        written = pca_drift_files.write_drift(result, out, title=title) if out else []
    frame = analysis.drift_frame(result)
    if fmt is OutputFormat.table:  # people also want each group's size, and the noise
        frame = frame.insert_column(1, pl.Series("n_filters", result.n_filters))
    _emit(frame, analysis.drift_json(result), fmt, title=title)
    if fmt is OutputFormat.table and result.nulls:
        emit_frame(
            analysis.drift_null_frame(result),
            OutputFormat.table,
            None,
            title="each pair beside its permutation null (within_noise: p >= 0.05)",
        )
    if result.skipped:
        err_console.print(f"skipped, no non-sparse filter: {', '.join(result.skipped)}")
    _report_written(written)


def _emit(frame: pl.DataFrame, document: str, fmt: OutputFormat, *, title: str) -> None:
    """Table or CSV of ``frame`` (what the .csv file holds), or the JSON ``document``."""
    if fmt is OutputFormat.json:
        sys.stdout.write(document + "\n")
    else:
        emit_frame(frame, fmt, None, title=title)


def _report_written(paths: list[Path]) -> None:
    for path in paths:
        err_console.print(f"wrote {path}", highlight=False, soft_wrap=True)
