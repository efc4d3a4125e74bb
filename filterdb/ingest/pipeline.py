"""Incremental, atomic ingestion: identify a model, skip it when unchanged, else store it.

A model is identified by its name, the SHA-256 of its checkpoint file(s) and its weights
form (``raw``, ``bn_folded``, ``as_exported``: the same bytes folded are other filters).
The hash is taken before anything is loaded, so re-running an unchanged ingest costs one
hash and one query. A changed checkpoint, or another form, under a stored name is refused
unless ``force``, which replaces the model in the transaction that publishes the new one.

Rows are written in committed batches under a ``model_loading`` row and published by one
short transaction (:mod:`filterdb.warehouse.write`): readers see the old model, or the new
one complete, never a part. What an interrupted ingest left of a name is removed by the
next ingest of that name (and said in its notes). Every attempt lands in the ingest log;
a failed one in a transaction of its own, after its own staged rows are removed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection, Engine

from filterdb.errors import FilterdbError, ModelConflict
from filterdb.ingest.extract import extract
from filterdb.ingest.sources.base import Candidate, check_weights_fit_files, files_sha256
from filterdb.warehouse import schema, write
from filterdb.warehouse.database import engine_for, kept_open
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.records import ExtractedModel
from filterdb.warehouse.write import StagedModel, utc_now

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
    """Progress of one model: ``phase`` is hashing, reading, extracting, writing (once
    before the rows and once after each committed batch of filters), publishing, then done
    or failed; ``fraction`` is how far the model is through its phases (0 to 1)."""

    model_name: str
    phase: str
    fraction: float


ProgressCallback = Callable[[IngestEvent], None]


class PendingMetrics(Protocol):
    """Metrics of an extracted model being computed (filterdb.metrics.cache.PendingMetrics)."""

    def cache_layer_metrics(self, connection: Connection, model_id: int) -> int: ...

    def cancel(self) -> None: ...


class MetricsHook(Protocol):
    """``ingest --metrics`` (:class:`filterdb.metrics.cache.IngestMetrics`): ingestion
    cannot import the metrics (they are siblings on the warehouse), so it is handed one."""

    def start(self, extracted: ExtractedModel) -> PendingMetrics: ...


def ingest(
    candidate: Candidate,
    *,
    url: str | None = None,
    engine: Engine | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
    metrics: MetricsHook | None = None,
) -> IngestResult:
    """Store ``candidate`` completely, or skip it when already stored from the same bytes.

    Pass ``engine`` to reuse one across many models, else ``url`` (default database).
    Raises :class:`ModelConflict` when the name is stored from a different checkpoint and
    ``force`` is false; any :class:`FilterdbError` leaves the model tables unchanged.
    ``device`` ``auto`` extracts on the CPU (measured faster than CUDA there: README
    "Performance"); ``metrics`` computes every layer metric from the weights in memory and
    caches it in the model's write transaction (``ingest --metrics``; a skipped model's
    metrics are left to ``filterdb metrics``).
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
                metrics=metrics,
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
            twins = same_checkpoint_notes(connection, candidate, sha256)
        attempt.notes = (*twins, *source.notes)
        report(IngestEvent(candidate.name, "extracting", 0.4))
        on_cpu = "cpu" if str(device) == "auto" else device
        extracted = attempt.timed(
            "extract", lambda: extract(source, device=on_cpu, allow_nonfinite=allow_nonfinite)
        )
        report(IngestEvent(candidate.name, "writing", 0.6))
        attempt.metrics = None if metrics is None else metrics.start(extracted)
        result = attempt.timed(
            "write", lambda: attempt.store(extracted, sha256, force=force, report=report)
        )
        report(IngestEvent(candidate.name, "done", 1.0))
        return result
    except Exception as error:  # every failed attempt is logged, bugs included
        if attempt.metrics is not None:
            attempt.metrics.cancel()
        attempt.log_failed(str(error) or type(error).__name__)
        report(IngestEvent(candidate.name, "failed", 1.0))
        raise


def ingest_all(
    candidates: Iterable[Candidate | tuple[str, FilterdbError]],
    *,
    url: str | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
    metrics: MetricsHook | None = None,
    engine: str | None = None,
) -> tuple[list[IngestResult], list[tuple[str, FilterdbError]]]:
    """Ingest each candidate in turn; a failure is collected and the next model goes on.

    ``candidates`` may hold ``(model name, error)`` pairs for models that failed before
    they became candidates (a manifest row whose files are missing, say): they are
    reported as failed and collected. Returns the results, in input order, and the
    ``(model name, error)`` pairs of the failures.

    ``engine`` (``local``, ``dask-local[:N]``, ``dask://HOST:PORT``; default
    ``$FILTERDB_ENGINE``, else local) says where the checkpoints are hashed, read and
    extracted: on a Dask engine the workers do it (the paths must be reachable from them,
    :func:`filterdb.ingest.fanout.ingest_on_dask`), and this process alone writes the
    database, one transaction per model, in input order, as a local run does.
    """
    from filterdb.ingest.fanout import ingest_on_dask, is_local

    if not is_local(engine):
        return ingest_on_dask(
            candidates,
            url=url,
            engine=engine,
            device=device,
            force=force,
            allow_nonfinite=allow_nonfinite,
            on_progress=on_progress,
            metrics=metrics,
        )
    report = on_progress or (lambda event: None)
    results, failures = [], []
    with engine_for(url) as database, kept_open(database):
        require_head(database)
        for candidate in candidates:
            if isinstance(candidate, tuple):
                failures.append(candidate)
                report(IngestEvent(candidate[0], "failed", 1.0))
                continue
            try:
                results.append(
                    ingest(
                        candidate,
                        engine=database,
                        device=device,
                        force=force,
                        allow_nonfinite=allow_nonfinite,
                        on_progress=on_progress,
                        metrics=metrics,
                    )
                )
            except FilterdbError as error:  # ingest reported and logged it
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


def same_checkpoint_notes(connection: Connection, candidate: Candidate, sha256: str) -> list[str]:
    """A warning when other models are stored from these bytes in this weights form."""
    model = schema.model.c
    twins = list(
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
        self.metrics: PendingMetrics | None = None

    def timed(self, phase: str, step: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def store(
        self,
        extracted: ExtractedModel,
        sha256: str,
        *,
        force: bool,
        report: ProgressCallback,
    ) -> IngestResult:
        self.sha256 = sha256
        write_started = time.perf_counter()
        try:
            return self._store(extracted, write_started, force=force, report=report)
        except _StoredMeanwhile as meanwhile:
            if self.metrics is not None:
                self.metrics.cancel()
            return self.log_skipped(meanwhile.model_id, sha256)

    def _store(
        self,
        extracted: ExtractedModel,
        write_started: float,
        *,
        force: bool,
        report: ProgressCallback,
    ) -> IngestResult:
        name = extracted.info.name
        if extracted.n_filters <= write.BATCH_FILTERS:
            # One batch: stage, write and publish in one transaction, as before issue 14
            # (memory is a batch either way; a small model saves two commits: bench/zoo.py).
            with self.engine.begin() as connection:
                staged = self._stage(connection, extracted, force=force, mark_loading=False)
                write.write_filters(connection, staged, extracted)
                report(IngestEvent(name, "writing", 0.9))
                report(IngestEvent(name, "publishing", 0.9))
                status = self._publish(connection, extracted, staged, write_started, force=force)
        else:
            with self.engine.begin() as connection:
                staged = self._stage(connection, extracted, force=force)
            try:
                write.write_filter_batches(
                    self.engine,
                    staged,
                    extracted,
                    on_batch=lambda done, total: report(
                        IngestEvent(name, "writing", 0.6 + 0.3 * done / max(total, 1))
                    ),
                )
                report(IngestEvent(name, "publishing", 0.9))
                with self.engine.begin() as connection:
                    status = self._publish(
                        connection, extracted, staged, write_started, force=force
                    )
            except BaseException:
                self._discard(staged)
                raise
        return IngestResult(
            model_name=extracted.info.name,
            status=status,
            model_id=staged.model_id,
            n_layers=len(extracted.layers),
            n_filters=extracted.n_filters,
            n_unreached_convs=extracted.n_unreached_convs,
            seconds=time.perf_counter() - self.started,
            notes=self.notes,
        )

    def _stage(
        self,
        connection: Connection,
        extracted: ExtractedModel,
        *,
        force: bool,
        mark_loading: bool = True,
    ) -> StagedModel:
        """Remove what interrupted ingests left of the name, then stage the model's layers."""
        name = extracted.info.name
        # Decided again here (and once more when publishing): another process may have
        # stored this name since the check before extraction (DuckDB's lock was free).
        identity = _stored_identity(connection, name)
        if _unchanged(name, identity, (self.sha256, extracted.info.weights_form), force=force):
            raise _StoredMeanwhile(identity[0])
        for leftover in write.loading_models(connection, name=name):
            write.remove_loading_model(connection, leftover.model_id)
            self.notes += (f"removed what an interrupted ingest left: {leftover.describe()}",)
        return write.stage_model(connection, extracted, mark_loading=mark_loading)

    def _publish(
        self,
        connection: Connection,
        extracted: ExtractedModel,
        staged: StagedModel,
        write_started: float,
        *,
        force: bool,
    ) -> str:
        """Make the model visible (and drop the one it replaces) in ``connection``'s
        transaction, which the caller keeps short."""
        name = extracted.info.name
        # The skip / conflict decision is final here, inside the publishing transaction.
        identity = _stored_identity(connection, name)
        form = extracted.info.weights_form
        if _unchanged(name, identity, (self.sha256, form), force=force):
            raise _StoredMeanwhile(identity[0])
        replaced = None if identity is None else identity[0]
        if replaced is not None:
            write.delete_model(connection, replaced)
        write.publish_model(connection, staged, extracted)
        if self.metrics is not None:
            self.metrics.cache_layer_metrics(connection, staged.model_id)
        status = "ingested" if replaced is None else "replaced"
        # Logged in the publishing transaction: a log row says "ingested" only if the
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
        return status

    def _discard(self, staged: StagedModel) -> None:
        # Best effort: when the database cannot take it (gone, locked), the next ingest of
        # the name or `filterdb check --repair` removes the rows.
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.begin() as connection:
            write.remove_loading_model(connection, staged.model_id)

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
