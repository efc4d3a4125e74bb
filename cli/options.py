"""Options shared by several commands, and the global ``--db`` value."""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from filterdb.cli.output import OutputFormat, one_line_errors


def database_url(context: typer.Context) -> str | None:
    """The ``--db`` value, given before or after the subcommand (``None``: the default)."""
    return context.find_root().obj


class DatabaseOptionGroup(TyperGroup):
    """The root group: its ``--db`` is also accepted after every command that opens the
    database (``filterdb models --db URL`` as well as ``filterdb --db URL models``).

    A command opens the database when it takes a ``typer.Context`` (it reads ``--db`` with
    :func:`database_url`); such a command gets a copy of the root's ``--db`` that stores its
    value where :func:`database_url` looks. Typer builds this group after its subcommands,
    so every command exists when ``__init__`` runs.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        (root_option,) = (p for p in self.params if p.name == "db")
        for command in _commands(self):
            if _takes_context(command) and not any(p.name == "db" for p in command.params):
                command.params.append(_after_subcommand(root_option))


def _commands(group: TyperGroup) -> Iterator[TyperCommand]:
    for command in group.commands.values():
        if isinstance(command, TyperGroup):
            yield from _commands(command)
        else:
            yield command


def _takes_context(command: TyperCommand) -> bool:
    if command.callback is None:
        return False
    parameters = inspect.signature(command.callback).parameters.values()
    return any(p.annotation in (typer.Context, "typer.Context") for p in parameters)


def _after_subcommand(root_option: typer.CallbackParam) -> typer.CallbackParam:
    """The root's ``--db`` for a subcommand: the same name, type and help, no value passed
    to the command (the root group's callback has run by then and set the default)."""

    def store(context: typer.Context, param: typer.CallbackParam, value: str | None) -> None:
        if value is None:
            return
        root = context.find_root()
        if root.obj is not None and root.obj != value:
            raise typer.BadParameter(
                f"given twice ({root.obj} before the command, {value} after it); give it once",
                ctx=context,
                param=param,
            )
        root.obj = value

    option = copy.copy(root_option)
    option.expose_value = False
    option.callback = store
    return option


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
