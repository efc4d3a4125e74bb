"""Options shared by several commands, and the global ``--db`` value."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from filterdb.cli.output import OutputFormat


def database_url(context: typer.Context) -> str | None:
    """The ``--db`` value given to the top-level command (``None``: the default)."""
    return context.find_root().obj


FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", help="table for people; csv, json, parquet, markdown for programs."),
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to FILE instead of the terminal.")
]
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine",
        envvar="FILTERDB_ENGINE",
        help="Where to compute: local (default), dask-local[:N] (N worker processes here) "
        "or dask://HOST:PORT (a running Dask scheduler).",
    ),
]
LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake",
        envvar="FILTERDB_LAKE",
        help="Parquet lake the Dask workers read (DIR or s3://...); brought up to date "
        "first. Default: <db file>.lake beside a DuckDB file.",
    ),
]
MixedFormsOption = Annotated[
    bool,
    typer.Option(
        "--mixed-forms",
        help="Compare models stored in different weights forms (raw, bn_folded, "
        "as_exported) instead of refusing.",
    ),
]
