"""Ingestion fanned out on a Dask engine: workers read, the client alone writes.

Each candidate's checkpoint is hashed on a worker; the client compares the hash with the
stored identity (skipping an unchanged model as a local run does), then a worker reads and
extracts the model (:mod:`filterdb.ingest.tasks`) and the client writes it with the local
path's own write step, one transaction per model, so DuckDB's one-writer rule holds and
the ingest log records each attempt. Models are written in input order, whatever order
the workers finish in, so the model and layer ids are those of a local run. The paths
must be reachable from the workers (a shared filesystem, or a hub cache each worker has).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from filterdb.errors import FilterdbError
from filterdb.ingest import tasks
from filterdb.ingest.pipeline import (
    IngestEvent,
    IngestResult,
    MetricsHook,
    ProgressCallback,
    _Attempt,
    _stored_identity,
    _unchanged,
    same_checkpoint_notes,
)
from filterdb.ingest.sources.base import Candidate
from filterdb.metrics.engine import dask_client, parse_engine
from filterdb.warehouse.database import engine_for, kept_open
from filterdb.warehouse.migrate import require_head


def is_local(engine: str | None) -> bool:
    """Whether ``engine`` (or ``$FILTERDB_ENGINE``) names the in-process engine."""
    return parse_engine(engine).is_local


def ingest_on_dask(
    candidates: Iterable[Candidate | tuple[str, FilterdbError]],
    *,
    url: str | None = None,
    engine: str | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
    metrics: MetricsHook | None = None,
) -> tuple[list[IngestResult], list[tuple[str, FilterdbError]]]:
    """:func:`filterdb.ingest.pipeline.ingest_all` with the reading on ``engine``'s workers.

    Progress events are those of a local ingest, per model, on the client. Returns the
    results in input order and the failures. ``metrics`` are computed on the client, from
    the extracted weights a worker handed back, while the model is written.
    """
    report = on_progress or (lambda event: None)
    items = list(candidates)
    outcomes: dict[int, IngestResult | tuple[str, FilterdbError]] = {}
    with (
        engine_for(url) as database,
        kept_open(database),
        dask_client(parse_engine(engine)) as client,
    ):
        require_head(database)
        attempts, hashes = {}, {}
        for index, item in enumerate(items):
            if isinstance(item, tuple):
                outcomes[index] = item
                report(IngestEvent(item[0], "failed", 1.0))
                continue
            attempts[index] = _Attempt(item, database)
            report(IngestEvent(item.name, "hashing", 0.0))
            hashes[index] = client.submit(tasks.hash_candidate, item, pure=False)
        # Identities are decided in input order; the extractions run meanwhile.
        extractions, sha256s = {}, {}
        for index, future in hashes.items():
            attempt = attempts[index]
            name = attempt.candidate.name
            try:
                sha256, seconds = future.result()
                attempt.seconds["read"] += seconds
                with database.connect() as connection:
                    stored = _stored_identity(connection, name)
                if _unchanged(name, stored, (sha256, attempt.candidate.weights_form), force=force):
                    report(IngestEvent(name, "done", 1.0))
                    outcomes[index] = attempt.log_skipped(stored[0], sha256)
                    continue
            except Exception as error:  # every failed attempt is logged, bugs included
                outcomes[index] = _failed(attempt, error, report)
                continue
            report(IngestEvent(name, "reading", 0.1))
            sha256s[index] = sha256
            extractions[index] = client.submit(
                tasks.read_and_extract,
                attempt.candidate,
                sha256,
                device=device,
                allow_nonfinite=allow_nonfinite,
                pure=False,
            )
        for index in list(extractions):
            # Popped, so that the worker may drop the model's arrays once it is written.
            future, attempt = extractions.pop(index), attempts[index]
            try:
                extracted, notes, seconds = future.result()
                for phase, value in seconds.items():
                    attempt.seconds[phase] += value
                with database.connect() as connection:
                    twins = same_checkpoint_notes(connection, attempt.candidate, sha256s[index])
                attempt.notes = (*twins, *notes)
                report(IngestEvent(attempt.candidate.name, "writing", 0.6))
                attempt.metrics = None if metrics is None else metrics.start(extracted)
                store = functools.partial(
                    attempt.store, extracted, sha256s[index], force=force, report=report
                )
                outcomes[index] = attempt.timed("write", store)
                report(IngestEvent(attempt.candidate.name, "done", 1.0))
            except Exception as error:
                if attempt.metrics is not None:
                    attempt.metrics.cancel()
                outcomes[index] = _failed(attempt, error, report)
    results = [o for _, o in sorted(outcomes.items()) if isinstance(o, IngestResult)]
    failures = [o for _, o in sorted(outcomes.items()) if isinstance(o, tuple)]
    return results, failures


def _failed(
    attempt: _Attempt, error: Exception, report: ProgressCallback
) -> tuple[str, FilterdbError]:
    """Log and report a failed attempt; a bug (not a FilterdbError) is raised again."""
    attempt.log_failed(str(error) or type(error).__name__)
    report(IngestEvent(attempt.candidate.name, "failed", 1.0))
    if not isinstance(error, FilterdbError):
        raise error
    return attempt.candidate.name, error
