"""Stored filters back as numpy arrays, layer by layer, on each backend's fast path.

DuckDB hands columns over as numpy arrays; on PostgreSQL ``COPY ... TO STDOUT (FORMAT
BINARY)`` parsed with numpy is 4x faster than fetching rows and keeps float32 exact
(PLATFORM.md). Layers are fetched a few at a time so memory stays bounded by a batch or
the largest layer, never a whole model (PLATFORM.md, "At scale").
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from sqlalchemy.engine import Connection

from filterdb.errors import DatabaseError
from filterdb.warehouse.database import backend_name
from filterdb.warehouse.schema import WEIGHT_COLUMNS

T = TypeVar("T")

_SELECT = f"SELECT layer_id, filter_index, {', '.join(WEIGHT_COLUMNS)} FROM filter"

# Layers are fetched in batches of about this many filters: one query per few layers
# instead of one per layer (1,700 queries for 100 small models cost 3 s), while memory
# stays bounded by the batch (4M filters = 144 MB of rows) or the largest layer.
BATCH_FILTERS = 4_000_000

# One row of binary COPY output: a 16-bit field count, then per field a 32-bit length and
# the big-endian value (layer_id and filter_index int4, then nine float4).
_COPY_ROW = np.dtype(
    [("field_count", ">i2"), ("layer_length", ">i4"), ("layer_id", ">i4")]
    + [("index_length", ">i4"), ("filter_index", ">i4")]
    + [field for name in WEIGHT_COLUMNS for field in ((f"{name}_length", ">i4"), (name, ">f4"))]
)
_COPY_HEADER_SIZE = 19  # signature (11), flags (4), header extension length (4, zero)
_COPY_TRAILER_SIZE = 2


def iter_layer_filters(
    connection: Connection, layers: Iterable[tuple[int, int]], *, ahead: bool = False
) -> Iterator[np.ndarray]:
    """The filters of each ``(layer_id, n_filters)`` in turn, as (n, 9) float32 arrays.

    ``ahead=True`` reads the next batch of layers in a thread while the caller works on
    the current one. Batches, not layers, cross between the threads: handing over 1,700
    small layers one by one cost 6 s of GIL hand-offs in a 100-model report.
    """
    batches = (_fetch_batch(connection, batch) for batch in _batches(layers))
    for batch in read_ahead(batches) if ahead else batches:
        yield from batch


def _batches(layers: Iterable[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    batch: list[tuple[int, int]] = []
    size = 0
    for layer_id, n_filters in layers:
        if batch and size + n_filters > BATCH_FILTERS:
            yield batch
            batch, size = [], 0
        batch.append((int(layer_id), int(n_filters)))
        size += n_filters
    if batch:
        yield batch


def _fetch_batch(connection: Connection, batch: list[tuple[int, int]]) -> list[np.ndarray]:
    ids = ", ".join(str(layer_id) for layer_id, _ in batch)
    select = f"{_SELECT} WHERE layer_id IN ({ids})"
    if backend_name(connection) == "duckdb":
        columns = connection.connection.driver_connection.sql(select).fetchnumpy()
    else:
        columns = _copy_out(connection, select)
    layer_ids = np.asarray(columns["layer_id"])
    # Rows come back in storage order, which is layer by layer when loaded by filterdb;
    # sort only when it is not, then place each row of a layer by its filter_index.
    order = (
        None if np.all(layer_ids[1:] >= layer_ids[:-1]) else np.argsort(layer_ids, kind="stable")
    )
    if order is not None:
        layer_ids = layer_ids[order]
    # All boundaries in one call, in the column's own dtype (a Python int list would make
    # numpy convert the whole column on every call: 2 s for 1,700 layers).
    wanted = np.array([layer_id for layer_id, _ in batch], dtype=layer_ids.dtype)
    starts = np.searchsorted(layer_ids, wanted, side="left")
    stops = np.searchsorted(layer_ids, wanted, side="right")
    filters_of_layers = []
    for (layer_id, n_filters), start, stop in zip(batch, starts, stops, strict=True):
        rows = slice(start, stop) if order is None else order[start:stop]
        if stop - start != n_filters:
            raise DatabaseError(
                f"layer_id {layer_id} holds {stop - start} filter rows, its layer row says "
                f"{n_filters}; run `filterdb check` and re-ingest the model with --force"
            )
        index = np.asarray(columns["filter_index"])[rows]
        if not _is_permutation(index, n_filters):
            raise DatabaseError(
                f"layer_id {layer_id} does not hold each filter_index 0..{n_filters - 1} "
                "once; run `filterdb check` and re-ingest the model with --force"
            )
        filters = np.empty((n_filters, 9), dtype=np.float32)
        filters[index] = np.column_stack(
            [np.asarray(columns[name][rows], dtype=np.float32) for name in WEIGHT_COLUMNS]
        )
        filters_of_layers.append(filters)
    return filters_of_layers


def _is_permutation(index: np.ndarray, n: int) -> bool:
    if len(index) and (index.min() < 0 or index.max() >= n):
        return False
    seen = np.zeros(n, dtype=bool)
    seen[index] = True
    return bool(seen.all())


def _copy_out(connection: Connection, select: str) -> np.ndarray:
    driver = connection.connection.driver_connection
    buffer = bytearray()
    statement = f"COPY ({select}) TO STDOUT (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for block in copy:
            buffer += block
    body = memoryview(buffer)[_COPY_HEADER_SIZE : len(buffer) - _COPY_TRAILER_SIZE]
    return np.frombuffer(body, dtype=_COPY_ROW)


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield from ``items`` while a thread already produces the next item.

    Fetching the next batch of layers overlaps the work on the current one (DuckDB,
    psycopg, numpy and torch release the GIL while they work); keep the items large. At
    most two items wait ahead of the consumer; closing the generator early stops the
    thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put((item, None))
        except BaseException as error:  # handed to the consumer, raised there
            ready.put((None, error))
            return
        ready.put((_DONE, None))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let a producer blocked on put() finish and see stop
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        worker.join()


_DONE = object()
