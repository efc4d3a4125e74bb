"""The ``filterdb`` command line: parses arguments, calls one library function, prints.

Every command here is a thin layer over a function in :mod:`filterdb`; nothing is computed
in this package. Commands import the library modules they call inside their bodies, so that
``--help`` and the light commands start fast (``tests/test_startup.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from filterdb.cli import analysis, demo, export, leaderboard, report
from filterdb.cli import ingest as ingest_cli
from filterdb.cli.options import (
    DatabaseOptionGroup,
    EngineOption,
    FormatOption,
    LakeOption,
    OutputOption,
    database_url,
)
from filterdb.cli.output import (
    OutputFormat,
    console,
    emit_frame,
    err_console,
    one_line_errors,
    print_frame,
)
from filterdb.cli.progress import compute_progress
from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS, METRICS
from filterdb.warehouse.database import DUCKDB_MEMORY_LIMIT, URL_ENVIRONMENT_VARIABLE
from filterdb.warehouse.query.execute import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
)
from filterdb.wording import counted

app = typer.Typer(
    cls=DatabaseOptionGroup,
    # Typer's rich help shows every flag as taking a value ("--quiet <bool>", "--help
    # <bool>"); the plain help writes flags as flags ("--recompute / --no-recompute").
    rich_markup_mode=None,
    help="A data warehouse of trained 3x3 convolution filters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations (Alembic) of the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_cli.app, name="ingest")
app.add_typer(leaderboard.app, name="leaderboard")
# Modules whose commands sit at the top level (filterdb pca, filterdb export, ...).
for commands in (analysis.app, report.app, export.app, demo.app):
    app.add_typer(commands)


def _print_version(wanted: bool) -> None:
    if wanted:
        from filterdb import __version__

        console.print(f"filterdb {__version__}")
        raise typer.Exit()


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
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A data warehouse of trained 3x3 convolution filters."""
    context.obj = db


@app.command()
def init(context: typer.Context) -> None:
    """Create the database, or upgrade it to the newest schema."""
    from filterdb.warehouse import migrate

    with one_line_errors():
        revision = migrate.upgrade(url=database_url(context))
    console.print(f"database at revision {revision} (head)")


@db_app.command("upgrade")
def db_upgrade(
    context: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from filterdb.warehouse import migrate

    with one_line_errors():
        reached = migrate.upgrade(revision, url=database_url(context))
    console.print(f"database at revision {reached}")


@db_app.command("downgrade")
def db_downgrade(
    context: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' removes all.")],
) -> None:
    """Downgrade the schema to REVISION ('base' drops every filterdb table and view)."""
    from filterdb.warehouse import migrate

    with one_line_errors():
        reached = migrate.downgrade(revision, url=database_url(context))
    console.print(f"database at revision {reached or 'base'}")


@db_app.command("current")
def db_current(context: typer.Context) -> None:
    """Print the database's schema revision."""
    from filterdb.warehouse import migrate

    with one_line_errors():
        revision = migrate.current_revision(url=database_url(context))
    head = migrate.head_revision()
    if revision is None:
        console.print("no filterdb schema (run `filterdb init`)")
    else:
        console.print(f"{revision}{' (head)' if revision == head else f' (head is {head})'}")


@db_app.command("history")
def db_history() -> None:
    """List the schema revisions, newest first."""
    from filterdb.warehouse import migrate

    for revision in migrate.history():
        marker = " (head)" if revision.is_head else ""
        console.print(f"{revision.down_revision or 'base'} -> {revision.revision}{marker}")
        console.print(f"    {revision.message.splitlines()[0]}")


@app.command()
def models(context: typer.Context) -> None:
    """List the stored models with their training, accuracies and counts."""
    from filterdb.warehouse import inventory

    with one_line_errors():
        frame = inventory.models(url=database_url(context))
    from filterdb.analysis.architectures import with_canonical_architecture

    # The canonical name is what pairing compares (RobustBench ResNet-50 = timm resnet50).
    summary = with_canonical_architecture(frame.select(inventory.MODEL_SUMMARY_COLUMNS))
    print_frame(summary, title="models", empty="no models stored yet")


@app.command()
def check(
    context: typer.Context,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="First remove what interrupted ingests left (models never published).",
        ),
    ] = False,
) -> None:
    """Verify the warehouse: filter counts, orphan rows, models without layers, half-loaded
    models that an interrupted ingest left (``--repair`` removes those).

    Exit status 1 when a rule is broken. A checkpoint stored under several names is a
    warning (one line per group of names): it is listed, the exit status stays 0.
    """
    from filterdb.warehouse import check as consistency

    with one_line_errors():
        if repair:
            for line in consistency.repair(url=database_url(context)):
                console.print(line, markup=False, soft_wrap=True)
        report = consistency.check_report(url=database_url(context))
    for problem in report.problems:
        err_console.print(f"problem: {problem}", markup=False, soft_wrap=True)
    for warning in report.warnings:
        err_console.print(f"warning: {warning}", markup=False, soft_wrap=True)
    if report.problems:
        err_console.print(f"{counted(len(report.problems), 'problem')} found")
        raise typer.Exit(1)
    warned = f" ({counted(len(report.warnings), 'warning')})" if report.warnings else ""
    console.print(f"consistent: every rule holds{warned}")


@app.command()
def layers(
    context: typer.Context,
    model: Annotated[str, typer.Argument(help="Model name, as `filterdb models` lists it.")],
) -> None:
    """List a model's stored 3x3 layers with depth, channels and cached metrics."""
    from filterdb.warehouse import inventory

    with one_line_errors():
        frame = inventory.layer_metrics(url=database_url(context), model=model)
    cached = [c for c in METRICS if frame[c].is_not_null().any()]
    columns = [*inventory.LAYER_SUMMARY_COLUMNS, *cached]
    print_frame(frame.select(columns), title=model, key="layer_name")
    if not cached:
        console.print("no metrics cached yet: run `filterdb metrics`")


@app.command()
def metrics(
    context: typer.Context,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only this model (repeatable).")
    ] = None,
    eps: Annotated[float, typer.Option(help="Sparsity threshold (share of layer max).")] = (
        DEFAULT_SPARSITY_EPS
    ),
    recompute: Annotated[bool, typer.Option(help="Recompute cached values too.")] = False,
    device: Annotated[
        ingest_cli.Device, typer.Option(help="Where to compute: auto is CUDA when available.")
    ] = ingest_cli.Device.auto,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    engine: EngineOption = None,
    lake: LakeOption = None,
) -> None:
    """Compute and cache the metrics of every layer that lacks them (or is stale)."""
    from filterdb.metrics import cache

    with one_line_errors(), compute_progress(quiet=quiet) as on_progress:
        result = cache.compute_metrics(
            url=database_url(context),
            models=model,
            eps=eps,
            recompute=recompute,
            device=device.value,
            on_progress=on_progress,
            engine=engine,
            lake=lake,
        )
    if result.n_layers == 0:
        console.print("nothing to compute: every metric is cached and current")
    else:
        console.print(
            f"computed {counted(result.n_values, 'value')} for "
            f"{counted(result.n_layers, 'layer')} of {counted(result.n_models, 'model')}"
        )


@app.command("depth-profile")
def depth_profile(
    context: typer.Context,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only this model (repeatable).")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Each metric per model and depth bin (first layer, then deciles of depth)."""
    from filterdb.metrics import cache

    with one_line_errors():
        frame = cache.depth_profile(url=database_url(context), models=model)
        emit_frame(frame, fmt, output, title="depth profile")


@app.command()
def query(
    context: typer.Context,
    sql: Annotated[
        str | None,
        typer.Argument(
            help="One SQL statement over the documented views; - reads it from stdin "
            "(for SQL that starts with a -- comment)."
        ),
    ] = None,
    sql_file: Annotated[
        Path | None, typer.Option("--file", help="Read the SQL statement from this file.")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    output: OutputOption = None,
    write: Annotated[
        bool, typer.Option("--write", help="Allow statements that change the database.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Cancel the query after this many seconds.")
    ] = DEFAULT_TIMEOUT_S,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            "--memory-limit",
            help="DuckDB only: memory cap such as 4GB (default "
            f"{DUCKDB_MEMORY_LIMIT}); read-only queries never spill to disk.",
        ),
    ] = None,
    max_rows: Annotated[
        int, typer.Option("--max-rows", help="Refuse results with more rows than this.")
    ] = DEFAULT_MAX_ROWS,
    max_bytes: Annotated[
        int, typer.Option("--max-bytes", help="Refuse results larger than about this.")
    ] = DEFAULT_MAX_BYTES,
    lake: Annotated[
        str | None,
        typer.Option(
            "--lake", help="Query the views over this Parquet lake (DIR or s3://...) instead."
        ),
    ] = None,
) -> None:
    """Run ad-hoc SQL, read-only unless --write (see the views in the README).

    The SQL is the argument, stdin (``-``) or ``--file F.sql``.
    """
    from filterdb.errors import QueryRefused

    with one_line_errors():
        sql = statement_text(sql, sql_file)
        if lake is None:
            from filterdb.warehouse.query import run_query

            frame = run_query(
                sql,
                url=database_url(context),
                write=write,
                timeout_s=timeout,
                memory_limit=memory_limit,
                max_rows=max_rows,
                max_bytes=max_bytes,
            )
        elif write:
            raise QueryRefused("a lake is read-only: --write works on the database, not --lake")
        else:
            from filterdb.lake.query import query_lake

            frame = query_lake(sql, lake=lake)
        emit_frame(frame, fmt, output)


def statement_text(sql: str | None, sql_file: Path | None) -> str:
    """The SQL of ``filterdb query``: the argument, stdin when it is ``-``, or ``--file``."""
    from filterdb.errors import FilterdbError

    if (sql is None) == (sql_file is None):
        raise FilterdbError(
            "give the SQL once: as the argument, - to read stdin, or --file F.sql"
            if sql is None
            else "give the SQL as the argument or with --file, not both"
        )
    if sql_file is not None:
        try:
            return sql_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise FilterdbError(f"cannot read {sql_file}: {reason}; check the path") from None
    return sys.stdin.read() if sql == "-" else sql


DEBUG_ENVIRONMENT_VARIABLE = "FILTERDB_DEBUG"


def main() -> None:
    """Entry point of the ``filterdb`` console script.

    Expected failures are one line already (:func:`filterdb.cli.output.one_line_errors`);
    anything else is a bug, and a user still gets one line that says so, with the
    traceback only when ``$FILTERDB_DEBUG`` is set.
    """
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:
        if os.environ.get(DEBUG_ENVIRONMENT_VARIABLE):
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        err_console.print(
            f"error: internal error ({type(error).__name__}: {first_line}); this is a bug in "
            f"filterdb: rerun with {DEBUG_ENVIRONMENT_VARIABLE}=1 for the traceback and "
            "report it",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
