"""Progress bars for long work: one bar per model and one overall (rich)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.output import err_console
from filterdb.cache import ComputeProgress
from filterdb.ingest import IngestEvent, ProgressCallback


@contextmanager
def ingest_progress(total_models: int, *, quiet: bool) -> Iterator[ProgressCallback | None]:
    """Yield a callback drawing the bars, or ``None`` when quiet or not on a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        overall = progress.add_task("all models", total=total_models, phase="")
        per_model: dict[str, int] = {}

        def on_event(event: IngestEvent) -> None:
            if event.model_name not in per_model:
                per_model[event.model_name] = progress.add_task(
                    event.model_name, total=1.0, phase=""
                )
            task = per_model[event.model_name]
            progress.update(task, completed=event.fraction, phase=event.phase)
            if event.phase in ("done", "failed"):
                progress.advance(overall)
                progress.remove_task(task)

        yield on_event


@contextmanager
def compute_progress(*, quiet: bool) -> Iterator[Callable[[ComputeProgress], None] | None]:
    """Yield a callback drawing one bar over the layers to compute, or ``None``."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("metrics", total=None)

        def on_progress(event: ComputeProgress) -> None:
            progress.update(
                task,
                description=event.model_name,
                completed=event.layers_done,
                total=event.layers_total,
            )

        yield on_progress
