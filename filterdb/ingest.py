"""Incremental, atomic ingestion: identify a model, skip it when unchanged, else store it.

A model is identified by its name and the SHA-256 of its checkpoint file(s). The hash is
taken before anything is loaded, so re-running an unchanged ingest costs one hash and one
query. A changed checkpoint under a stored name is refused unless ``force``, which replaces
the model in the same transaction that writes the new one. Every attempt lands in the
ingest log; a failed one in a transaction of its own, so the model tables stay as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection, Engine

from filterdb import schema
from filterdb.database import engine_for
from filterdb.errors import FilterdbError, ModelConflict
from filterdb.extract import ExtractedModel, extract
from filterdb.load import delete_model, utc_now, write_model
from filterdb.migrate import require_head
from filterdb.sources.base import Candidate, files_sha256


@dataclass
class IngestResult:
    """What happened to one model: ``ingested``, ``replaced`` or ``skipped``."""

    model_name: str
    status: str
    model_id: int
    n_layers: int
    n_filters: int
    n_unreached_convs: int
    seconds: float


@dataclass(frozen=True)
class IngestEvent:
    """Progress of one model: ``phase`` is hashing, reading, extracting, writing, then
    done or failed;
    ``fraction`` is how far the model is through its phases (0 to 1)."""

    model_name: str
    phase: str
    fraction: float


ProgressCallback = Callable[[IngestEvent], None]


def ingest(
    candidate: Candidate,
    *,
    url: str | None = None,
    engine: Engine | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
) -> IngestResult:
    """Store ``candidate`` completely, or skip it when already stored from the same bytes.

    Pass ``engine`` to reuse one across many models, else ``url`` (default database).
    Raises :class:`ModelConflict` when the name is stored from a different checkpoint and
    ``force`` is false; any :class:`FilterdbError` leaves the model tables unchanged.
    """
    if engine is None:
        with engine_for(url) as owned:
            return ingest(
                candidate,
                engine=owned,
                device=device,
                force=force,
                allow_nonfinite=allow_nonfinite,
                on_progress=on_progress,
            )
    require_head(engine)
    report = on_progress or (lambda event: None)
    attempt = _Attempt(candidate, engine)
    try:
        report(IngestEvent(candidate.name, "hashing", 0.0))
        sha256 = attempt.timed("read", lambda: files_sha256(candidate.paths))
        stored = _stored_identity(engine, candidate.name)
        if stored is not None and not force:
            model_id, stored_sha256 = stored
            if stored_sha256 == sha256:
                report(IngestEvent(candidate.name, "done", 1.0))
                return attempt.log_skipped(model_id, sha256)
            raise ModelConflict(
                f"model {candidate.name} is stored from another checkpoint "
                f"(sha256 {stored_sha256[:12]}, new {sha256[:12]}); pass --force to replace it"
            )
        report(IngestEvent(candidate.name, "reading", 0.1))
        source = attempt.timed("read", candidate.read)
        source.info.checkpoint_sha256 = sha256
        report(IngestEvent(candidate.name, "extracting", 0.4))
        extracted = attempt.timed(
            "extract", lambda: extract(source, device=device, allow_nonfinite=allow_nonfinite)
        )
        report(IngestEvent(candidate.name, "writing", 0.6))
        result = attempt.timed("write", lambda: attempt.store(extracted, sha256))
        report(IngestEvent(candidate.name, "done", 1.0))
        return result
    except FilterdbError as error:
        attempt.log_failed(str(error))
        report(IngestEvent(candidate.name, "failed", 1.0))
        raise


def ingest_all(
    candidates: Iterable[Candidate],
    *,
    url: str | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
) -> tuple[list[IngestResult], list[tuple[str, FilterdbError]]]:
    """Ingest each candidate in turn; a failure is collected and the next model goes on.

    Returns the results and the ``(model name, error)`` pairs of the failures.
    """
    results, failures = [], []
    with engine_for(url) as engine:
        for candidate in candidates:
            try:
                results.append(
                    ingest(
                        candidate,
                        engine=engine,
                        device=device,
                        force=force,
                        allow_nonfinite=allow_nonfinite,
                        on_progress=on_progress,
                    )
                )
            except FilterdbError as error:
                failures.append((candidate.name, error))
    return results, failures


def _stored_identity(engine: Engine, name: str) -> tuple[int, str] | None:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(schema.model.c.model_id, schema.model.c.checkpoint_sha256).where(
                schema.model.c.name == name
            )
        ).first()
    return None if row is None else (row.model_id, row.checkpoint_sha256)


class _Attempt:
    """Timings of one ingest attempt and its rows in the ingest log."""

    def __init__(self, candidate: Candidate, engine: Engine) -> None:
        self.candidate = candidate
        self.engine = engine
        self.started_at = utc_now()
        self.started = time.perf_counter()
        self.seconds = {"read": 0.0, "extract": 0.0, "write": 0.0}
        self.sha256: str | None = None

    def timed(self, phase: str, step: Callable):
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def store(self, extracted: ExtractedModel, sha256: str) -> IngestResult:
        self.sha256 = sha256
        write_started = time.perf_counter()
        with self.engine.begin() as connection:
            stored = connection.execute(
                sa.select(schema.model.c.model_id).where(schema.model.c.name == extracted.info.name)
            ).scalar_one_or_none()
            if stored is not None:
                delete_model(connection, stored)
            model_id = write_model(connection, extracted)
            status = "ingested" if stored is None else "replaced"
            # Logged in the model's own transaction: a log row says "ingested" only if the
            # model is there.
            self._log(
                connection,
                status,
                n_layers=len(extracted.layers),
                n_filters=extracted.n_filters,
                n_unreached_convs=extracted.n_unreached_convs,
                seconds_write=time.perf_counter() - write_started,
            )
        return IngestResult(
            model_name=extracted.info.name,
            status=status,
            model_id=model_id,
            n_layers=len(extracted.layers),
            n_filters=extracted.n_filters,
            n_unreached_convs=extracted.n_unreached_convs,
            seconds=time.perf_counter() - self.started,
        )

    def log_skipped(self, model_id: int, sha256: str) -> IngestResult:
        self.sha256 = sha256
        with self.engine.begin() as connection:
            self._log(connection, "skipped")
            counts = connection.execute(
                sa.select(
                    sa.func.count(), sa.func.coalesce(sa.func.sum(schema.layer.c.n_filters), 0)
                ).where(schema.layer.c.model_id == model_id)
            ).one()
            unreached = connection.execute(
                sa.select(schema.model.c.n_unreached_convs).where(
                    schema.model.c.model_id == model_id
                )
            ).scalar_one()
        return IngestResult(
            model_name=self.candidate.name,
            status="skipped",
            model_id=model_id,
            n_layers=int(counts[0]),
            n_filters=int(counts[1]),
            n_unreached_convs=unreached,
            seconds=time.perf_counter() - self.started,
        )

    def log_failed(self, error: str) -> None:
        with self.engine.begin() as connection:
            self._log(connection, "failed", error=error)

    def _log(self, connection: Connection, status: str, **values: object) -> None:
        values = {"seconds_write": self.seconds["write"], **values}
        connection.execute(
            sa.insert(schema.ingest_log).values(
                model_name=self.candidate.name,
                source=self.candidate.source,
                source_uri=", ".join(str(p) for p in self.candidate.paths),
                status=status,
                checkpoint_sha256=self.sha256,
                started_at=self.started_at,
                finished_at=utc_now(),
                seconds_read=self.seconds["read"],
                seconds_extract=self.seconds["extract"],
                **values,
            )
        )
