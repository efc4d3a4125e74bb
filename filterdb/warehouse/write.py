"""Bulk load: one extracted model into the warehouse, in one transaction.

Filters take each backend's fast path: Arrow registered into DuckDB and inserted with one
``INSERT ... SELECT`` per layer, binary ``COPY`` into PostgreSQL (PLATFORM.md: 4M rows in
1.2 s and 3.6 s). Dimension rows go through SQLAlchemy Core. A model is therefore visible
completely or not at all, whatever happens to the process.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from filterdb.warehouse import schema
from filterdb.warehouse.database import backend_name
from filterdb.warehouse.records import ExtractedLayer, ExtractedModel

FILTER_KEY_COLUMNS = ("model_id", "layer_id", "filter_index", "out_channel", "in_channel")
FILTER_COLUMNS = FILTER_KEY_COLUMNS + schema.WEIGHT_COLUMNS

# Filters of consecutive layers go to the database in one statement of about this many
# rows: 14% faster than one per layer into DuckDB (4.5M filters: 1.54 s vs 1.79 s), and
# the batch (about 220 MB) stays small beside the model it comes from.
BATCH_FILTERS = 4_000_000


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


def write_model(connection: Connection, extracted: ExtractedModel) -> int:
    """Insert ``extracted`` (model, training, layers, filters) and return its model_id.

    Runs inside the caller's transaction: the caller commits or rolls back the whole model.
    """
    info = extracted.info
    model_id = connection.execute(sa.select(schema.model_id_seq.next_value())).scalar_one()
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
    write_filters = _FILTER_WRITERS[backend_name(connection)]
    pending: list[dict[str, np.ndarray]] = []
    layer_ids = _insert_layers(connection, model_id, extracted.layers, extracted.depth_method)
    for layer, layer_id in zip(extracted.layers, layer_ids, strict=True):
        pending.append(_filter_columns(model_id, layer_id, layer))
        if sum(len(columns["model_id"]) for columns in pending) >= BATCH_FILTERS:
            write_filters(connection, _concatenate(pending))
            pending = []
    if pending:
        write_filters(connection, _concatenate(pending))
    return model_id


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
