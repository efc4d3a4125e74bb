"""One document writer for people: cells, Markdown and HTML tables, embedded images, pages.

The reports and the CLI's ``--format markdown`` write through it, so a table reads the same
everywhere.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
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


# Tables never make the page wider than the window: each sits in a wrapper that scrolls
# on its own, and wide tables (many columns) share the width out and wrap their cells.
STYLE = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1200px; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.85em; max-width: 100%; }
table.wide { table-layout: fixed; width: 100%; font-size: 0.7em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.4em; text-align: right;
  overflow-wrap: anywhere; }
th { background: #f0f0f0; }
td.text { text-align: left; }
img { max-width: 100%; height: auto; }
figure { margin: 1em 0; max-width: 100%; }
.row { display: flex; gap: 1em; flex-wrap: wrap; }
.row figure { flex: 1 1 45%; margin: 0; }
details { margin: 1em 0; }
summary { cursor: pointer; font-weight: bold; }
"""
# Above this many columns a table is laid out to the page width (table-layout: fixed).
WIDE_TABLE_COLUMNS = 8


def html_table(frame: pl.DataFrame) -> str:
    """``frame`` as an HTML table of :func:`readable` cells, in a wrapper that keeps it
    within the page (text columns left-aligned)."""
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
    wide = ' class="wide"' if frame.width > WIDE_TABLE_COLUMNS else ""
    return f'<div class="table-wrap"><table{wide}><tr>{head}</tr>{"".join(body)}</table></div>'


def collapsible(label: str, frame: pl.DataFrame) -> str:
    """``frame`` as an HTML table inside ``<details>``, closed, under ``label``."""
    return f"<details><summary>{html.escape(label)}</summary>{html_table(frame)}</details>"


def embedded_png(path: Path) -> str:
    """An ``<img>`` carrying the PNG at ``path`` as a data URL (the page stands alone)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


# --- pages: one document, written once as Markdown and once as HTML ------------------------

# A part of a section is (kind, item):
#   ("p", text), ("list", lines), ("facts", [(name, value), ...]), ("table", frame),
#   ("details", (label, frame)), ("figure", png path), ("row", png paths side by side),
#   ("group", (label, parts)): nested parts inside a <details>, closed.
Part = tuple[str, object]
Section = tuple[str, list[Part]]


@dataclass(frozen=True)
class Page:
    """A report for people: a title, header facts, then sections of parts (:data:`Part`).

    The reports build one and write it as ``.md`` and ``.html`` with the same content in
    the same order; images sit beside the Markdown and inside the HTML (data URLs).
    """

    title: str
    header: tuple[tuple[str, str], ...]
    sections: tuple[Section, ...]

    def markdown(self) -> str:
        """The page as Markdown; figures link to the PNGs beside it."""
        parts = [f"# {self.title}\n"]
        parts += [f"- {name}: {value}" for name, value in self.header]
        for heading, items in self.sections:
            parts.append(f"\n## {heading}\n")
            parts += _markdown_parts(items)
        return "\n".join(parts)

    def html(self) -> str:
        """The page as one self-contained HTML file (styles and images embedded)."""
        header = " · ".join(
            f"<b>{html.escape(name)}</b>: {html.escape(value)}" for name, value in self.header
        )
        body = [f"<h1>{html.escape(self.title)}</h1>", f'<p class="header">{header}</p>']
        for heading, items in self.sections:
            body.append(f"<h2>{html.escape(heading)}</h2>")
            body += _html_parts(items)
        head = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
        )
        return "\n".join([head, "<body>", *body, "</body></html>"]) + "\n"


def _markdown_parts(items: list[Part]) -> list[str]:
    parts: list[str] = []
    for kind, item in items:
        if kind == "p":
            parts.append(f"{item}\n")
        elif kind == "list":
            parts += [f"- {line}" for line in item] + [""]
        elif kind == "facts":
            parts += [f"- {name}: {value}" for name, value in item] + [""]
        elif kind == "table":
            parts.append(markdown_table(item))
        elif kind == "details":
            label, frame = item
            parts += [f"<details><summary>{label}</summary>\n", markdown_table(frame)]
            parts.append("</details>\n")
        elif kind == "group":
            label, nested = item
            parts += [f"<details><summary>{label}</summary>\n", *_markdown_parts(nested)]
            parts.append("</details>\n")
        elif kind == "figure":
            parts.append(f"![{item.stem}]({item.name})\n")
        elif kind == "row":
            parts.append(" ".join(f"![{p.stem}]({p.name})" for p in item) + "\n")
        else:
            raise ValueError(f"unknown part kind {kind!r}")
    return parts


def _html_parts(items: list[Part]) -> list[str]:
    body: list[str] = []
    for kind, item in items:
        if kind == "p":
            body.append(f"<p>{html.escape(item)}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in item) + "</ul>")
        elif kind == "table":
            body.append(html_table(item))
        elif kind == "facts":
            facts = pl.DataFrame(list(item), schema=["about", "value"], orient="row")
            body.append(html_table(facts))
        elif kind == "details":
            body.append(collapsible(*item))
        elif kind == "group":
            label, nested = item
            body.append(f"<details><summary>{html.escape(label)}</summary>")
            body += [*_html_parts(nested), "</details>"]
        elif kind == "figure":
            body.append(f"<figure>{embedded_png(item)}</figure>")
        elif kind == "row":
            images = "".join(f"<figure>{embedded_png(p)}</figure>" for p in item)
            body.append(f'<div class="row">{images}</div>')
        else:
            raise ValueError(f"unknown part kind {kind!r}")
    return body
