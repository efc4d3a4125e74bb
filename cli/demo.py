"""``filterdb demo``: the offline digits demo, step by step, then where the report is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer

from filterdb.cli.options import database_url
from filterdb.cli.output import console, one_line_errors, print_frame
from filterdb.demo import DEFAULT_EPOCHS, QUICK_EPOCHS

if TYPE_CHECKING:
    from filterdb.demo.run import DemoResult

app = typer.Typer()


@app.command("demo")
def demo(
    context: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the checkpoints and the report.")
    ] = Path("filterdb-demo"),
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help=f"Training epochs per model (default {DEFAULT_EPOCHS})."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help=f"{QUICK_EPOCHS} epochs: every step in seconds, barely trained."
        ),
    ] = False,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train again even when --out holds checkpoints.")
    ] = False,
) -> None:
    """Train a normal and a PGD-trained CNN on scikit-learn's digits, ingest, compare.

    Offline, a few minutes on two CPU cores; re-running reuses the checkpoints in --out.
    """
    from filterdb.demo.run import run_demo

    if quick and epochs is not None:
        raise typer.BadParameter("give --quick or --epochs, not both", param_hint="--epochs")
    with one_line_errors():
        result = run_demo(
            url=database_url(context),
            out_dir=out,
            epochs=QUICK_EPOCHS if quick else epochs or DEFAULT_EPOCHS,
            retrain=retrain,
            on_step=lambda line: console.print(line, markup=False, highlight=False),
        )
    print_frame(accuracy_table(result), title=f"held-out digits, Linf eps {result.settings.eps:g}")
    console.print(f"open the report: {result.report_html}", markup=False, highlight=False)


def accuracy_table(result: DemoResult) -> pl.DataFrame:
    """One row per demo model: training and accuracies in percent."""
    pgd = f"PGD-{result.settings.eval_steps} accuracy %"
    return pl.DataFrame(
        [
            {
                "model": model.name,
                "training": model.training_type,
                "clean accuracy %": round(model.clean_acc, 1),
                pgd: round(model.pgd_acc, 1),
            }
            for model in (result.normal, result.robust)
        ]
    )
