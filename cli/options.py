"""Options shared by several commands, and the global ``--db`` value."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from filterdb.cli.output import OutputFormat, one_line_errors


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


def option_block(
    into: str, build: Callable[..., object], options: dict[str, tuple[object, object]]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator that gives a command the Typer ``options`` and hands it one value.

    ``options`` maps parameter names to (``Annotated`` type, default). The decorated
    command declares a parameter ``into`` instead of them; it receives
    ``build(**values of the options)``. Typer reads the command's signature, so the options
    show in ``--help`` in this order, after the command's own.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        # Typer reads the signature with its annotations evaluated: give it real objects
        # (under `from __future__ import annotations` they are strings until evaluated).
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints.get(name, p.annotation))
            for name, p in inspect.signature(command).parameters.items()
            if name != into
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for name, (a, d) in options.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: object, **kwargs: object) -> None:
            values = {name: kwargs.pop(name) for name in options}
            with one_line_errors():  # bad option values are one line, as in the command
                built = build(**values)
            return command(*args, **kwargs, **{into: built})

        wrapper.__signature__ = inspect.Signature([*own, *added], return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        return wrapper

    return decorate
