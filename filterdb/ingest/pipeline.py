"""Incremental, atomic ingestion: identify a model, skip it when unchanged, else store it.

A model is identified by its name, the SHA-256 of its checkpoint file(s) and its weights
form (``raw``, ``bn_folded``, ``as_exported``: the same bytes folded are other filters).
The hash is taken before anything is loaded, so re-running an unchanged ingest costs one
hash and one query. A changed checkpoint, or another form, under a stored name is refused
unless ``force``, which replaces the model in the same transaction that writes the new one.
Every attempt lands in the ingest log; a failed one in a transaction of its own, so the
model tables stay as they were.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection, Engine

from filterdb.errors import FilterdbError, ModelConflict
from filterdb.ingest.extract import extract
from filterdb.ingest.sources.base import Candidate, check_weights_fit_files, files_sha256
from filterdb.warehouse import schema
from filterdb.warehouse.database import engine_for
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.records import ExtractedModel
from filterdb.warehouse.write import delete_model, utc_now, write_model

T = TypeVar("T")


@dataclass
class IngestResult:
    """What happened to one model: ``ingested``, ``replaced`` or ``skipped``.

    ``notes`` are what the source wants known (float64 weights rounded, say), also logged.
    """

    model_name: str
    status: str
    model_id: int
    n_layers: int
    n_filters: int
    n_unreached_convs: int
    seconds: float
    notes: tuple[str, ...] = field(default=())


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
        with engine.connect() as connection:
            stored = _stored_identity(connection, candidate.name)
        if _unchanged(candidate.name, stored, (sha256, candidate.weights_form), force=force):
            report(IngestEvent(candidate.name, "done", 1.0))
            return attempt.log_skipped(stored[0], sha256)
        report(IngestEvent(candidate.name, "reading", 0.1))
        source = attempt.timed("read", candidate.read)
        source.info.checkpoint_sha256 = sha256
        check_weights_fit_files(source, candidate.paths)
        with engine.connect() as connection:
            twins = _stored_from_same_bytes(connection, candidate, sha256)
        attempt.notes = (*_twin_notes(twins, sha256), *source.notes)
        report(IngestEvent(candidate.name, "extracting", 0.4))
        extracted = attempt.timed(
            "extract", lambda: extract(source, device=device, allow_nonfinite=allow_nonfinite)
        )
        report(IngestEvent(candidate.name, "writing", 0.6))
        result = attempt.timed("write", lambda: attempt.store(extracted, sha256, force=force))
        report(IngestEvent(candidate.name, "done", 1.0))
        return result
    except Exception as error:  # every failed attempt is logged, bugs included
        attempt.log_failed(str(error) or type(error).__name__)
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


def _stored_identity(connection: Connection, name: str) -> tuple[int, str, str] | None:
    model = schema.model.c
    row = connection.execute(
        sa.select(model.model_id, model.checkpoint_sha256, model.weights_form).where(
            model.name == name
        )
    ).first()
    return None if row is None else (row.model_id, row.checkpoint_sha256, row.weights_form)


def _stored_from_same_bytes(connection: Connection, candidate: Candidate, sha256: str) -> list[str]:
    """Names of other models stored from these bytes in this weights form."""
    model = schema.model.c
    return list(
        connection.execute(
            sa.select(model.name)
            .where(
                model.checkpoint_sha256 == sha256,
                model.weights_form == candidate.weights_form,
                model.name != candidate.name,
            )
            .order_by(model.name)
        ).scalars()
    )


def _twin_notes(twins: list[str], sha256: str) -> list[str]:
    if not twins:
        return []
    return [
        f"warning: the same checkpoint (sha256 {sha256[:12]}) is already stored as "
        f"{', '.join(twins)}; comparisons will count these weights twice (`filterdb check` "
        "lists such groups)"
    ]


def _unchanged(
    name: str,
    stored: tuple[int, str, str] | None,
    identity: tuple[str, str],
    *,
    force: bool,
) -> bool:
    """True when ``name`` is stored from these bytes in this form (skip it); raises on a
    conflict. ``identity`` is (sha256, weights form)."""
    if stored is None or force:
        return False
    sha256, weights_form = identity
    if stored[1] != sha256:
        raise ModelConflict(
            f"model {name} is stored from another checkpoint (sha256 {stored[1][:12]}, "
            f"new {sha256[:12]}); pass --force to replace it"
        )
    if stored[2] != weights_form:
        raise ModelConflict(
            f"model {name} is stored with weights form {stored[2]}, not {weights_form}; "
            "give the other form its own --name, or pass --force to replace it"
        )
    return True


class _StoredMeanwhile(Exception):
    """Another process stored the same bytes while this one was extracting."""

    def __init__(self, model_id: int) -> None:
        self.model_id = model_id


class _Attempt:
    """Timings of one ingest attempt and its rows in the ingest log."""

    def __init__(self, candidate: Candidate, engine: Engine) -> None:
        self.candidate = candidate
        self.engine = engine
        self.started_at = utc_now()
        self.started = time.perf_counter()
        self.seconds = {"read": 0.0, "extract": 0.0, "write": 0.0}
        self.sha256: str | None = None
        self.notes: tuple[str, ...] = ()

    def timed(self, phase: str, step: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def store(self, extracted: ExtractedModel, sha256: str, *, force: bool) -> IngestResult:
        self.sha256 = sha256
        write_started = time.perf_counter()
        try:
            return self._store(extracted, write_started, force=force)
        except _StoredMeanwhile as meanwhile:
            return self.log_skipped(meanwhile.model_id, sha256)

    def _store(
        self, extracted: ExtractedModel, write_started: float, *, force: bool
    ) -> IngestResult:
        name = extracted.info.name
        with self.engine.begin() as connection:
            # Decided again inside the write transaction: another process may have stored
            # this name since the check before extraction (DuckDB's lock was free then).
            identity = _stored_identity(connection, name)
            form = extracted.info.weights_form
            if _unchanged(name, identity, (self.sha256, form), force=force):
                raise _StoredMeanwhile(identity[0])
            stored = None if identity is None else identity[0]
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
                note="; ".join(self.notes) or None,
            )
        return IngestResult(
            model_name=extracted.info.name,
            status=status,
            model_id=model_id,
            n_layers=len(extracted.layers),
            n_filters=extracted.n_filters,
            n_unreached_convs=extracted.n_unreached_convs,
            seconds=time.perf_counter() - self.started,
            notes=self.notes,
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
        # The failure being reported matters more than its log row: a database that cannot
        # take the row (locked, gone) must not replace the original error.
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.begin() as connection:
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
