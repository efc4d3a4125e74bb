"""Printing for the CLI: rich tables for people, one-line errors without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from filterdb.errors import FilterdbError

# Piped output is read by programs or saved: do not squeeze tables into 80 columns.
PIPED_WIDTH = 200
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit status 1."""
    try:
        yield
    except FilterdbError as error:  # expected failures only; bugs keep their traceback
        err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def format_cell(value: object) -> str:
    """A cell as a person reads it: floats to 4 significant digits, NULL as blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_frame(frame: pl.DataFrame, *, title: str | None = None, empty: str = "") -> None:
    """Print ``frame`` as a table, or ``empty`` when it has no rows."""
    if frame.height == 0:
        console.print(empty or "(no rows)")
        return
    table = Table(title=title)
    for column in frame.columns:
        numeric = frame.schema[column].is_numeric()
        table.add_column(column, justify="right" if numeric else "left")
    for row in frame.iter_rows():
        table.add_row(*(format_cell(value) for value in row))
    console.print(table)
