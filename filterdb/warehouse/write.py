"""Bulk load: one extracted model into the warehouse, loaded in batches, then published.

Filters take each backend's fast path: Arrow registered into DuckDB and inserted with one
``INSERT ... SELECT`` per batch of layers, binary ``COPY`` into PostgreSQL (PLATFORM.md:
4M rows in 1.2 s and 3.6 s). Dimension rows go through SQLAlchemy Core.

A model is written in three steps (issue 14), so that DuckDB never holds a whole model's
rows uncommitted in memory (2.1 GB more for 27M filters) and yet no reader ever sees a
part of one:

1. :func:`stage_model` (one short transaction): a ``model_loading`` row and the layer rows;
2. :func:`write_filter_batches`: the filters, in batches of about :data:`BATCH_FILTERS`,
   each batch committed;
3. :func:`publish_model` (the caller's transaction, short): the ``model`` and ``training``
   rows, and the ``model_loading`` row deleted.

Until step 3 commits the model has no ``model`` row, and every view joins ``model``: it is
visible completely or not at all, whatever happens to the process. A model that fits one
batch goes through the three steps in one transaction, without a ``model_loading`` row.
A process killed before step 3 leaves a ``model_loading`` row and its rows:
:func:`loading_models` lists them, :func:`remove_loading_model` deletes them (the next
ingest of the name does, and ``filterdb check --repair``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from filterdb.errors import DatabaseError
from filterdb.warehouse import schema
from filterdb.warehouse.database import backend_name
from filterdb.warehouse.records import ExtractedLayer, ExtractedModel

FILTER_KEY_COLUMNS = ("model_id", "layer_id", "filter_index", "out_channel", "in_channel")
FILTER_COLUMNS = FILTER_KEY_COLUMNS + schema.WEIGHT_COLUMNS

# Filters of consecutive layers go to the database in one statement (and, since issue 14,
# one committed transaction) of about this many rows: 14% faster than one per layer into
# DuckDB (4.5M filters: 1.54 s vs 1.79 s), and the batch (about 220 MB, uncommitted in
# DuckDB's memory until its commit) stays small beside the model it comes from.
BATCH_FILTERS = 4_000_000


@dataclass(frozen=True)
class StagedModel:
    """A model whose layer rows are written and whose filters are being written."""

    model_id: int
    layer_ids: list[int]
    marked_loading: bool = True  # has a model_loading row (written in batches)


@dataclass(frozen=True)
class LoadingModel:
    """A ``model_loading`` row: a model being written, or left by an interrupted ingest."""

    model_id: int
    name: str
    started_at: datetime
    n_filters: int  # what the complete model holds
    n_filters_written: int

    def describe(self) -> str:
        """One line for ``check`` and the ingest's notes."""
        return (
            f"model {self.name} (model_id {self.model_id}) was left half-loaded by an ingest "
            f"started {self.started_at:%Y-%m-%d %H:%M:%S} UTC ({self.n_filters_written:,} of "
            f"{self.n_filters:,} filters written)"
        )


def utc_now() -> datetime:
    """The current time in UTC, without a zone (the schema stores naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def delete_model(connection: Connection, model_id: int) -> None:
    """Remove a model and everything keyed by it, children first.

    DuckDB has no ON DELETE CASCADE (SPEC section 3); with no foreign keys in the schema
    the order only matters for readers of a half-done deletion, which a transaction hides.
    """
    for table in (schema.metric_cache, schema.filter_, schema.layer, schema.training):
        connection.execute(sa.delete(table).where(table.c.model_id == model_id))
    connection.execute(sa.delete(schema.model).where(schema.model.c.model_id == model_id))


def loading_models(connection: Connection, *, name: str | None = None) -> list[LoadingModel]:
    """The models being loaded (or left half-loaded), of ``name`` or of every name."""
    loading = schema.model_loading
    query = sa.select(
        loading.c.model_id, loading.c.name, loading.c.started_at, loading.c.n_filters
    ).order_by(loading.c.model_id)
    if name is not None:
        query = query.where(loading.c.name == name)
    rows = connection.execute(query).all()
    written = _filters_written(connection, [row.model_id for row in rows])
    return [
        LoadingModel(
            model_id=row.model_id,
            name=row.name,
            started_at=row.started_at,
            n_filters=int(row.n_filters),
            n_filters_written=written.get(row.model_id, 0),
        )
        for row in rows
    ]


def remove_loading_model(connection: Connection, model_id: int) -> None:
    """Delete a model that was never published: its filters, layers and loading row."""
    for table in (schema.metric_cache, schema.filter_, schema.layer, schema.model_loading):
        connection.execute(sa.delete(table).where(table.c.model_id == model_id))


def stage_model(
    connection: Connection, extracted: ExtractedModel, *, mark_loading: bool = True
) -> StagedModel:
    """Step 1: draw the model's ids, write its ``model_loading`` row and its layer rows.

    Runs inside the caller's transaction, which should commit at once: the rows stay
    invisible to readers (no ``model`` row) until :func:`publish_model`. A caller that
    writes and publishes the model in this same transaction passes ``mark_loading=False``:
    nothing of it outlives the transaction unpublished, so no ``model_loading`` row is
    needed (two statements fewer for each small model: bench/zoo.py).
    """
    info = extracted.info
    model_id = connection.execute(sa.select(schema.model_id_seq.next_value())).scalar_one()
    if mark_loading:
        connection.execute(
            sa.insert(schema.model_loading).values(
                model_id=model_id,
                name=info.name,
                checkpoint_sha256=info.checkpoint_sha256,
                n_filters=extracted.n_filters,
                started_at=utc_now(),
            )
        )
    layer_ids = _insert_layers(connection, model_id, extracted.layers, extracted.depth_method)
    return StagedModel(model_id=model_id, layer_ids=layer_ids, marked_loading=mark_loading)


def write_filter_batches(
    engine: Engine,
    staged: StagedModel,
    extracted: ExtractedModel,
    *,
    on_batch: Callable[[int, int], None] | None = None,
) -> None:
    """Step 2: the filters, in batches of about :data:`BATCH_FILTERS`, each committed.

    ``on_batch(filters written, filters in all)`` is called after each commit. Memory
    stays bounded by a batch (or the largest layer), never a whole model.
    """
    total = extracted.n_filters
    written = 0
    pending: list[dict[str, np.ndarray]] = []

    def flush() -> None:
        nonlocal written, pending
        batch = _concatenate(pending)
        pending = []
        with engine.begin() as connection:
            _FILTER_WRITERS[backend_name(connection)](connection, batch)
        written += len(batch["model_id"])
        if on_batch is not None:
            on_batch(written, total)

    for layer, layer_id in zip(extracted.layers, staged.layer_ids, strict=True):
        pending.append(_filter_columns(staged.model_id, layer_id, layer))
        if sum(len(columns["model_id"]) for columns in pending) >= BATCH_FILTERS:
            flush()
    if pending:
        flush()


def write_filters(connection: Connection, staged: StagedModel, extracted: ExtractedModel) -> None:
    """The filters of a model that fits one batch, in the caller's transaction."""
    columns = [
        _filter_columns(staged.model_id, layer_id, layer)
        for layer, layer_id in zip(extracted.layers, staged.layer_ids, strict=True)
    ]
    _FILTER_WRITERS[backend_name(connection)](connection, _concatenate(columns))


def publish_model(connection: Connection, staged: StagedModel, extracted: ExtractedModel) -> int:
    """Step 3: make the staged model visible: its ``model`` and ``training`` rows.

    Runs inside the caller's transaction (with the replaced model's deletion, when there is
    one). Raises :class:`DatabaseError` when the staged rows were removed meanwhile (by
    ``filterdb check --repair`` or another ingest of the same name).
    """
    info = extracted.info
    model_id = staged.model_id
    loading = schema.model_loading
    if staged.marked_loading:
        still_staged = connection.execute(
            sa.select(sa.func.count()).where(loading.c.model_id == model_id)
        ).scalar_one()
        if not still_staged:
            raise DatabaseError(
                f"the rows of this ingest of {info.name} were removed while it ran (by "
                "`filterdb check --repair` or another ingest of the same name); ingest it "
                "again"
            )
        connection.execute(sa.delete(loading).where(loading.c.model_id == model_id))
    connection.execute(
        sa.insert(schema.model).values(
            model_id=model_id,
            name=info.name,
            source=info.source,
            source_uri=info.source_uri,
            architecture=info.architecture,
            family=info.family,
            n_parameters=info.n_parameters,
            checkpoint_sha256=info.checkpoint_sha256,
            producer=info.producer,
            weights_form=info.weights_form,
            license=info.license,
            max_conv_depth=extracted.max_conv_depth,
            n_unreached_convs=extracted.n_unreached_convs,
            ingested_at=utc_now(),
        )
    )
    connection.execute(
        sa.insert(schema.training).values(model_id=model_id, **asdict(info.training))
    )
    return model_id


def _filters_written(connection: Connection, model_ids: list[int]) -> dict[int, int]:
    if not model_ids:
        return {}
    filter_ = schema.filter_
    rows = connection.execute(
        sa.select(filter_.c.model_id, sa.func.count())
        .where(filter_.c.model_id.in_(model_ids))
        .group_by(filter_.c.model_id)
    ).all()
    return {int(model_id): int(n) for model_id, n in rows}


def _concatenate(batch: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([columns[name] for columns in batch]) for name in FILTER_COLUMNS}


def _insert_layers(
    connection: Connection, model_id: int, layers: list[ExtractedLayer], depth_method: str
) -> list[int]:
    # All of a model's layer ids in one statement and its layer rows in one executemany:
    # two statements per layer cost a small model most of its write time (bench/zoo.py).
    series = "range(:n)" if backend_name(connection) == "duckdb" else "generate_series(1, :n)"
    # Sorted: layer ids rise with conv_index, as when they were drawn one by one.
    layer_ids = sorted(
        connection.execute(
            sa.text(f"SELECT nextval('{schema.layer_id_seq.name}') AS id FROM {series}"),
            {"n": len(layers)},
        )
        .scalars()
        .all()
    )
    connection.execute(
        sa.insert(schema.layer),
        [
            _layer_row(model_id, layer_id, layer, depth_method)
            for layer, layer_id in zip(layers, layer_ids, strict=True)
        ],
    )
    return layer_ids


def _layer_row(model_id: int, layer_id: int, layer: ExtractedLayer, depth_method: str) -> dict:
    return dict(
        layer_id=layer_id,
        model_id=model_id,
        name=layer.name,
        conv_index=layer.conv_index,
        graph_depth=layer.graph_depth,
        conv_depth=layer.conv_depth,
        conv_depth_norm=layer.conv_depth_norm,
        depth_method=depth_method,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        groups=layer.groups,
        stride=layer.stride,
        dilation=layer.dilation,
        n_filters=layer.n_filters,
        max_abs=layer.max_abs,
        source_dtype=layer.source_dtype,
    )


def _filter_columns(model_id: int, layer_id: int, layer: ExtractedLayer) -> dict[str, np.ndarray]:
    n = layer.n_filters
    index = np.arange(n, dtype=np.int32)
    per_out = layer.filters_per_out_channel
    columns = {
        "model_id": np.full(n, model_id, dtype=np.int32),
        "layer_id": np.full(n, layer_id, dtype=np.int32),
        "filter_index": index,
        "out_channel": index // per_out,
        "in_channel": index % per_out,
    }
    for i, name in enumerate(schema.WEIGHT_COLUMNS):
        columns[name] = layer.filters[:, i]
    return columns


def _write_filters_duckdb(connection: Connection, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    driver = connection.connection.driver_connection
    driver.register("filterdb_incoming_filters", table)
    try:
        names = ", ".join(FILTER_COLUMNS)
        driver.execute(
            f"INSERT INTO filter ({names}) SELECT {names} FROM filterdb_incoming_filters"
        )
    finally:
        driver.unregister("filterdb_incoming_filters")


# PostgreSQL binary COPY: a fixed header, then per row a 16-bit field count and, per field,
# a 32-bit length and the big-endian value; a -1 field count ends the stream.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + np.array([0, 0], dtype=">i4").tobytes()
_COPY_TRAILER = np.array([-1], dtype=">i2").tobytes()
_COPY_ROW = np.dtype(
    [("field_count", ">i2")]
    + [
        field
        for name in FILTER_COLUMNS
        for field in (
            (f"{name}_length", ">i4"),
            (name, ">i4" if name in FILTER_KEY_COLUMNS else ">f4"),
        )
    ]
)


def _write_filters_postgresql(connection: Connection, columns: dict[str, np.ndarray]) -> None:
    rows = np.empty(len(columns["model_id"]), dtype=_COPY_ROW)
    rows["field_count"] = len(FILTER_COLUMNS)
    for name in FILTER_COLUMNS:
        rows[f"{name}_length"] = 4
        rows[name] = columns[name]
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor:
        statement = f"COPY filter ({', '.join(FILTER_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(statement) as copy:
            copy.write(_COPY_HEADER)
            copy.write(rows.tobytes())
            copy.write(_COPY_TRAILER)


_FILTER_WRITERS = {"duckdb": _write_filters_duckdb, "postgresql": _write_filters_postgresql}
