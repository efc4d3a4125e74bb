"""The ``filterdb`` command line: parses arguments, calls one library function, prints.

Every command here is a thin layer over a function in :mod:`filterdb`; nothing is computed
in this package.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import ingest as ingest_cli
from cli.output import console, err_console, one_line_errors, print_frame
from filterdb import check as consistency
from filterdb import inventory, migrate
from filterdb.database import URL_ENVIRONMENT_VARIABLE

app = typer.Typer(
    help="A data warehouse of trained 3x3 convolution filters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations (Alembic) of the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_cli.app, name="ingest")


@app.callback()
def main_options(
    context: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL: duckdb:///PATH or postgresql+psycopg://USER@HOST:PORT/DB. "
            f"Default: ${URL_ENVIRONMENT_VARIABLE}, else duckdb:///filterdb.duckdb.",
        ),
    ] = None,
) -> None:
    """A data warehouse of trained 3x3 convolution filters."""
    context.obj = db


def database_url(context: typer.Context) -> str | None:
    """The ``--db`` value of the top-level command."""
    return context.find_root().obj


@app.command()
def init(context: typer.Context) -> None:
    """Create the database, or upgrade it to the newest schema."""
    with one_line_errors():
        revision = migrate.upgrade(database_url(context))
    console.print(f"database at revision {revision} (head)")


@db_app.command("upgrade")
def db_upgrade(
    context: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    with one_line_errors():
        reached = migrate.upgrade(database_url(context), revision)
    console.print(f"database at revision {reached}")


@db_app.command("downgrade")
def db_downgrade(
    context: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes all.")],
) -> None:
    """Downgrade the schema to REVISION ('base' drops every filterdb table and view)."""
    with one_line_errors():
        reached = migrate.downgrade(database_url(context), revision)
    console.print(f"database at revision {reached or 'base'}")


@db_app.command("current")
def db_current(context: typer.Context) -> None:
    """Print the database's schema revision."""
    with one_line_errors():
        revision = migrate.current_revision(database_url(context))
    head = migrate.head_revision()
    if revision is None:
        console.print("no filterdb schema (run `filterdb init`)")
    else:
        console.print(f"{revision}{' (head)' if revision == head else f' (head is {head})'}")


@db_app.command("history")
def db_history() -> None:
    """List the schema revisions, newest first."""
    for revision in migrate.history():
        marker = " (head)" if revision.is_head else ""
        console.print(f"{revision.down_revision or 'base'} -> {revision.revision}{marker}")
        console.print(f"    {revision.message.splitlines()[0]}")


@app.command()
def models(context: typer.Context) -> None:
    """List the stored models with their training, accuracies and counts."""
    with one_line_errors():
        frame = inventory.models(database_url(context))
    summary = frame.select(inventory.MODEL_SUMMARY_COLUMNS)
    print_frame(summary, title="models", empty="no models stored yet")


@app.command()
def check(context: typer.Context) -> None:
    """Verify the warehouse: filter counts, orphan rows, models without layers."""
    with one_line_errors():
        problems = consistency.check(database_url(context))
    for problem in problems:
        err_console.print(f"problem: {problem}", markup=False, soft_wrap=True)
    if problems:
        err_console.print(f"{len(problems)} problems found")
        raise typer.Exit(1)
    console.print("consistent: every rule holds")


def main() -> None:
    """Entry point of the ``filterdb`` console script."""
    app()
