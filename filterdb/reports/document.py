"""One document writer for people: cells, Markdown and HTML tables, embedded images, pages.

The reports and the CLI's ``--format markdown`` write through it, so a table reads the same
everywhere.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import polars as pl


def readable(value: object) -> str:
    """A cell for people: 4 significant digits, NaN and NULL as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pl.DataFrame, *, full_precision: bool = False) -> str:
    """``frame`` as a GitHub-flavoured Markdown table, ``|`` in cells escaped.

    Cells are :func:`readable` for people; with ``full_precision`` values are written in full
    (NULL as an empty cell), for programs.
    """

    def cell(value: object) -> str:
        if full_precision:
            return "" if value is None else str(value)
        return readable(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; }
td.text { text-align: left; }
img { max-width: 100%; }
"""


def html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    text_columns = {c for c in frame.columns if frame.schema[c] == pl.String}
    body = []
    for row in frame.iter_rows(named=True):
        cells = "".join(
            f'<td class="text">{html.escape(readable(v))}</td>'
            if c in text_columns
            else f"<td>{html.escape(readable(v))}</td>"
            for c, v in row.items()
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def embedded_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
