"""``filterdb leaderboard sync|status``: RobustBench leaderboard metadata and zoo status."""

from __future__ import annotations

from typing import Annotated

import typer

from filterdb.cli.ingest import Dataset, ModelDirOption, ThreatModel
from filterdb.cli.options import database_url
from filterdb.cli.output import console, err_console, one_line_errors, print_frame
from filterdb.ingest import DEFAULT_MODEL_DIR
from filterdb.wording import counted

app = typer.Typer(help="RobustBench leaderboard metadata and zoo status.", no_args_is_help=True)


@app.command()
def sync(
    context: typer.Context,
    model_info: Annotated[
        str, typer.Option(help="RobustBench's model_info tree: a directory or a URL.")
    ],
) -> None:
    """Write leaderboard figures (accuracies, eps, venue...) into the stored zoo models."""
    with one_line_errors():
        from filterdb.ingest.zoo_selection import sync_leaderboard

        result = sync_leaderboard(url=database_url(context), model_info=model_info)
    console.print(f"updated {counted(len(result.updated), 'model')}")
    for name in result.not_on_leaderboard:
        err_console.print(f"not on the leaderboard: {name}", markup=False)


@app.command()
def status(
    context: typer.Context,
    dataset: Annotated[Dataset, typer.Option(help="Training dataset of the zoo entries.")],
    threat_model: Annotated[ThreatModel, typer.Option(help="Zoo threat model.")] = (
        ThreatModel.Linf
    ),
    model_dir: ModelDirOption = DEFAULT_MODEL_DIR,
) -> None:
    """Per zoo entry: ingested, out of date, not ingested, or checkpoint missing."""
    with one_line_errors():
        from filterdb.ingest.zoo_selection import leaderboard_status

        frame = leaderboard_status(
            url=database_url(context),
            dataset=dataset.value,
            threat_model=threat_model.value,
            model_dir=model_dir,
        )
    print_frame(frame, title=f"{dataset.value}/{threat_model.value}")
    counts = frame.group_by("status").len().sort("status")
    console.print(", ".join(f"{n} {s}" for s, n in counts.iter_rows()))
