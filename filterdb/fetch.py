"""Stored filters back as numpy arrays, layer by layer, on each backend's fast path.

DuckDB hands columns over as numpy arrays; on PostgreSQL ``COPY ... TO STDOUT (FORMAT
BINARY)`` parsed with numpy is 4x faster than fetching rows and keeps float32 exact
(PLATFORM.md). Layers are fetched one at a time so memory stays bounded by the largest
layer, never a whole model (PLATFORM.md, "At scale").
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.engine import Connection

from filterdb.database import backend_name
from filterdb.errors import DatabaseError
from filterdb.schema import WEIGHT_COLUMNS

_SELECT_LAYER = f"SELECT filter_index, {', '.join(WEIGHT_COLUMNS)} FROM filter WHERE layer_id = "

# One row of binary COPY output: a 16-bit field count, then per field a 32-bit length and
# the big-endian value (filter_index int4, then nine float4).
_COPY_ROW = np.dtype(
    [("field_count", ">i2"), ("index_length", ">i4"), ("filter_index", ">i4")]
    + [field for name in WEIGHT_COLUMNS for field in ((f"{name}_length", ">i4"), (name, ">f4"))]
)
_COPY_HEADER_SIZE = 19  # signature (11), flags (4), header extension length (4, zero)
_COPY_TRAILER_SIZE = 2


def layer_filters(connection: Connection, layer_id: int, n_filters: int) -> np.ndarray:
    """The (n_filters, 9) float32 filters of one layer, in filter_index order."""
    if backend_name(connection) == "duckdb":
        driver = connection.connection.driver_connection
        columns = driver.sql(_SELECT_LAYER + "?", params=[int(layer_id)]).fetchnumpy()
        index = columns["filter_index"]
        weights = np.column_stack([columns[name] for name in WEIGHT_COLUMNS])
    else:
        rows = _copy_out(connection, f"{_SELECT_LAYER}{int(layer_id)}")
        index = rows["filter_index"]
        weights = np.column_stack([rows[name].astype(np.float32) for name in WEIGHT_COLUMNS])
    if len(index) != n_filters:
        raise DatabaseError(
            f"layer_id {layer_id} holds {len(index)} filter rows, its layer row says "
            f"{n_filters}; run `filterdb check` and re-ingest the model with --force"
        )
    # Rows come back in storage order, which need not be filter order: place each by index.
    filters = np.empty((n_filters, 9), dtype=np.float32)
    filters[index] = weights
    return filters


def _copy_out(connection: Connection, select: str) -> np.ndarray:
    driver = connection.connection.driver_connection
    buffer = bytearray()
    statement = f"COPY ({select}) TO STDOUT (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for block in copy:
            buffer += block
    body = memoryview(buffer)[_COPY_HEADER_SIZE : len(buffer) - _COPY_TRAILER_SIZE]
    return np.frombuffer(body, dtype=_COPY_ROW)
