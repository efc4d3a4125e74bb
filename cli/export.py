"""``filterdb export``: the filters as CNN Filter DB HDF5, or as Parquet partitioned by model."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from filterdb.cli.options import database_url
from filterdb.cli.output import console, one_line_errors
from filterdb.wording import counted

app = typer.Typer()


class ExportFormat(StrEnum):
    hdf5 = "hdf5"
    parquet = "parquet"


@app.command("export")
def export(
    context: typer.Context,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="HDF5 file; for Parquet the lake: a directory or s3://bucket/prefix "
            "(endpoint_override=HOST:PORT&scheme=http in the URL for other S3 servers).",
        ),
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="hdf5: the CNN Filter DB layout; parquet: the incremental lake by model.",
        ),
    ] = ExportFormat.hdf5,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only this model (repeatable).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an HDF5 OUT when it exists (a lake is updated).")
    ] = False,
) -> None:
    """Write the stored filters for other tools: CNN Filter DB notebooks, DuckDB, Polars."""
    from filterdb.reports.export import export_hdf5, export_parquet

    with one_line_errors():
        if fmt is ExportFormat.hdf5:
            result = export_hdf5(
                url=database_url(context), out=Path(out), models=model, overwrite=overwrite
            )
        else:
            result = export_parquet(url=database_url(context), out=out, models=model)
    console.print(
        f"wrote {counted(result.n_filters, 'filter')} of {counted(result.n_layers, 'layer')} "
        f"({counted(result.n_models, 'model')}) to {result.path}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
