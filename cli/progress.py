"""Progress bars for long work: one bar per model and one overall (rich)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from filterdb.cli.output import err_console

if TYPE_CHECKING:
    from filterdb.ingest.pipeline import IngestEvent, ProgressCallback
    from filterdb.metrics.cache import ComputeProgress


@contextmanager
def bars(*columns: ProgressColumn, quiet: bool) -> Iterator[Progress | None]:
    """Rich progress bars on stderr, or ``None`` when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        # Model names are data: "x[/]" must print as written, not as rich markup (issue 9).
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        *columns,
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        yield progress


@contextmanager
def ingest_progress(total_models: int, *, quiet: bool) -> Iterator[ProgressCallback | None]:
    """Yield a callback drawing a bar per model and one overall, or ``None`` (quiet)."""
    with bars(TextColumn("{task.fields[phase]}", markup=False), quiet=quiet) as progress:
        if progress is None:
            yield None
            return
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
    """Yield a callback drawing one bar over the layers to compute, or ``None`` (quiet)."""
    with bars(MofNCompleteColumn(), quiet=quiet) as progress:
        if progress is None:
            yield None
            return
        task = progress.add_task("metrics", total=None)

        def on_progress(event: ComputeProgress) -> None:
            progress.update(
                task,
                description=event.model_name,
                completed=event.layers_done,
                total=event.layers_total,
            )

        yield on_progress


@contextmanager
def models_progress(total_models: int, *, quiet: bool) -> Iterator[ProgressCallback | None]:
    """Yield a callback drawing one bar over many models (a manifest), or ``None``."""
    with bars(MofNCompleteColumn(), TextColumn("{task.fields[model]}"), quiet=quiet) as progress:
        if progress is None:
            yield None
            return
        task = progress.add_task("models", total=total_models, model="")

        def on_event(event: IngestEvent) -> None:
            progress.update(task, model=event.model_name)
            if event.phase in ("done", "failed"):
                progress.advance(task)

        yield on_event
