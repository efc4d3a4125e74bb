"""Printing for the CLI: rich tables for people, one-line errors without tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

import polars as pl
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from filterdb.errors import FilterdbError
from filterdb.reports.document import markdown_table
from filterdb.wording import counted

# Piped output is read by programs or saved: do not squeeze tables into 80 columns.
PIPED_WIDTH = 200
# Names, paths and messages are data: no emoji codes (":x:" in a model name must print as
# written) and no markup ("x[/]" as a --name raised rich's MarkupError after the model was
# stored: issue 9), in every output. Nothing here styles text with markup.
console = Console(
    width=None if sys.stdout.isatty() else PIPED_WIDTH, emoji=False, markup=False, highlight=False
)
err_console = Console(
    stderr=True,
    width=None if sys.stderr.isatty() else PIPED_WIDTH,
    emoji=False,
    markup=False,
    highlight=False,
)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit status 1."""
    try:
        yield
    except FilterdbError as error:  # expected failures only; a bug goes on to main()
        err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def format_cell(value: object) -> str:
    """A cell as a person reads it: floats to 4 significant digits, NULL as blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_frame(
    frame: pl.DataFrame, *, title: str | None = None, empty: str = "", key: str | None = None
) -> None:
    """Print ``frame`` as a table, or ``empty`` when it has no rows.

    ``key`` (default: the first column) names the rows and is never cut. A table wider
    than the terminal first leaves out its empty columns (and says which); if it is still
    too wide, each row prints as a record, one ``column  value`` line per column (as
    psql's expanded display), so that no value is cut to "…" or folded into a sliver.
    """
    if frame.height == 0:
        console.print(empty or "(no rows)")
        return
    key = key or frame.columns[0]
    cells = {c: [format_cell(v) for v in frame[c]] for c in frame.columns}
    blank = [c for c in frame.columns if c != key and not any(cells[c])]
    if _table_width(cells) > console.width and blank:  # room for the columns that say something
        cells = {c: texts for c, texts in cells.items() if c not in blank}
    caption = Text(f"empty, not shown: {', '.join(blank)}") if len(cells) < frame.width else None
    if _table_width(cells) > console.width:
        _print_records(cells, key=key, title=title, caption=caption)
        return
    table = Table(title=Text(title) if title else None, caption=caption)
    for column in cells:
        numeric = frame.schema[column].is_numeric()
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == key)
    for row in zip(*cells.values(), strict=True):
        # Text cells: a "[...]" in a model name is data, not rich markup.
        table.add_row(*(Text(text) for text in row))
    console.print(table)


def _print_records(
    cells: dict[str, list[str]], *, key: str, title: str | None, caption: Text | None
) -> None:
    """One block per row: ``key: value`` on its own line, then the other columns."""
    if title:
        console.print(Text(title))
    for index, name in enumerate(cells[key]):
        console.print(Text(f"{key}: {name}"), no_wrap=True, overflow="ignore", crop=False)
        record = Table.grid(padding=(0, 2))
        record.add_column(no_wrap=True)
        record.add_column(overflow="fold")
        for column, texts in cells.items():
            if column != key:
                record.add_row(Text(f"  {column}"), Text(texts[index]))
        console.print(record)
    if caption is not None:
        console.print(caption)


def _table_width(cells: dict[str, list[str]]) -> int:
    """Characters a table of ``cells`` needs unwrapped: each column its widest text, a
    border and two spaces of padding."""
    widths = [max(len(c), *(len(text) for text in texts)) for c, texts in cells.items()]
    return sum(widths) + 3 * len(widths) + 1


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"
    markdown = "markdown"


def emit_frame(
    frame: pl.DataFrame, fmt: OutputFormat, output: Path | None, *, title: str = ""
) -> None:
    """Print or write ``frame``: a table for people; csv, json, parquet, markdown for programs.

    Floats keep full precision in every format but ``table``. Parquet is binary and needs
    ``output``.
    """
    try:
        written = _write_frame(frame, fmt, output, title=title)
    except OSError as error:
        raise FilterdbError(
            f"cannot write {output}: {error.strerror or error}; check the path"
        ) from None
    if written:
        err_console.print(f"wrote {counted(frame.height, 'row')} to {output}")


def _write_frame(
    frame: pl.DataFrame, fmt: OutputFormat, output: Path | None, *, title: str
) -> bool:
    """Print or write ``frame``; True when it went to ``output``."""
    if fmt is OutputFormat.parquet:
        if output is None:
            raise FilterdbError("parquet is binary: give --output FILE.parquet")
        frame.write_parquet(output)
    elif fmt is OutputFormat.table:
        if output is not None:
            raise FilterdbError(
                "--format table prints to the terminal; pick csv, json, parquet or markdown"
            )
        print_frame(frame, title=title)
        return False
    else:
        text = {
            OutputFormat.csv: lambda: frame.write_csv(),
            OutputFormat.json: lambda: frame.write_json(),
            OutputFormat.markdown: lambda: markdown_table(frame, full_precision=True),
        }[fmt]()
        if output is None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            return False
        output.write_text(text)
    return True
