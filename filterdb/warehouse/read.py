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
import pyarrow as pa
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

# Above this many ranges of consecutive layer ids, a batch is asked for as a semi-join on
# the listed ids.
MAX_RANGES = 64

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
    batches = (_fetch_batch(connection, batch, columns=False) for batch in _batches(layers))
    for batch in read_ahead(batches) if ahead else batches:
        yield from batch


def iter_layer_columns(
    connection: Connection, layers: Iterable[tuple[int, int]], *, ahead: bool = False
) -> Iterator[tuple[np.ndarray, ...]]:
    """:func:`iter_layer_filters` as each layer's nine weight columns, w0..w8, float32 (n,).

    For a caller that works column by column: on DuckDB the columns are views of the
    database's own Arrow buffers where a layer lies in one, so no (n, 9) array is
    assembled (for the 7.6M filters of a 100-model report, 275 MB less to allocate and
    fill); a per-filter max over nine contiguous columns is also 13x faster than over
    interleaved rows (0.056 s against 0.73 s for 4M filters).
    """
    batches = (_fetch_batch(connection, batch, columns=True) for batch in _batches(layers))
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


def _fetch_batch(
    connection: Connection, batch: list[tuple[int, int]], *, columns: bool
) -> list[np.ndarray] | list[tuple[np.ndarray, ...]]:
    select = f"{_SELECT} WHERE {_layer_condition([layer_id for layer_id, _ in batch])}"
    if backend_name(connection) == "duckdb":
        layer_ids, filter_index, weights = _duckdb_rows(connection, select, columns=columns)
    else:
        layer_ids, filter_index, weights = _copy_out(connection, select, columns=columns)
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
        index = filter_index[rows]
        if order is None and _is_identity(index):
            # Stored in filter order (filterdb's own loads): the layer is a view of the
            # batch, no copy.
            filters_of_layers.append(weights[rows])
            continue
        if not _is_permutation(index, n_filters):
            raise DatabaseError(
                f"layer_id {layer_id} does not hold each filter_index 0..{n_filters - 1} "
                "once; run `filterdb check` and re-ingest the model with --force"
            )
        filters_of_layers.append(weights.placed(rows, index, n_filters))
    return filters_of_layers


class _Rows:
    """A batch's weights, (n, 9) float32; ``weights[rows]`` is the rows of one layer."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.weights[rows]

    def placed(self, rows: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
        """The layer at ``rows``, each row put at its filter ``index``."""
        filters = np.empty((n, 9), dtype=np.float32)
        filters[index] = self.weights[rows]
        return filters


class _Columns:
    """A batch's nine weight columns (Arrow or numpy); ``columns[rows]`` is one layer's."""

    def __init__(self, columns: list) -> None:
        self.columns = columns
        self._numpy: list[np.ndarray] | None = None

    def __getitem__(self, rows: slice | np.ndarray) -> tuple[np.ndarray, ...]:
        if isinstance(rows, slice) and not isinstance(self.columns[0], np.ndarray):
            # An Arrow slice is a view; only a layer across two chunks is copied.
            n = rows.stop - rows.start
            return tuple(arrow_numpy(column.slice(rows.start, n)) for column in self.columns)
        return tuple(column[rows] for column in self.as_numpy())

    def placed(self, rows: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        """The layer at ``rows``, each filter put at its ``index``."""
        placed = []
        for column in self.as_numpy():
            values = np.empty(n, dtype=np.float32)
            values[index] = column[rows]
            placed.append(values)
        return tuple(placed)

    def as_numpy(self) -> list[np.ndarray]:
        """The columns as numpy arrays (Arrow chunks joined once, for unordered storage)."""
        if self._numpy is None:
            self._numpy = [
                column if isinstance(column, np.ndarray) else arrow_numpy(column)
                for column in self.columns
            ]
        return self._numpy


def _layer_condition(layer_ids: list[int]) -> str:
    """SQL selecting the rows of ``layer_ids`` in storage order (by layer, then filter).

    A model's layers have consecutive ids, so a batch of whole models is a few ranges:
    asked for as ranges, the rows come back in storage order, where DuckDB ran an IN list
    of 900 ids as a join that interleaved them (sorting them back cost 0.4 s per batch of
    4M filters, bench/report.py). Each range is one more comparison per scanned row,
    though: 100 scattered first layers of 7.6M filters took 0.34 s as ranges, 0.23 s as
    an IN list and 0.025 s as a semi-join on the unnested ids (a hash join in DuckDB),
    sorted by the database, which is how a batch of more than :data:`MAX_RANGES` goes.
    """
    ranges: list[list[int]] = []
    for layer_id in sorted(set(layer_ids)):
        if ranges and ranges[-1][1] == layer_id - 1:
            ranges[-1][1] = layer_id
        else:
            ranges.append([layer_id, layer_id])
    if len(ranges) > MAX_RANGES:
        listed = ", ".join(str(layer_id) for layer_id in sorted(set(layer_ids)))
        return f"layer_id IN (SELECT unnest(ARRAY[{listed}])) ORDER BY layer_id, filter_index"
    return " OR ".join(
        f"layer_id = {low}" if low == high else f"layer_id BETWEEN {low} AND {high}"
        for low, high in ranges
    )


def _duckdb_rows(
    connection: Connection, select: str, *, columns: bool
) -> tuple[np.ndarray, np.ndarray, _Rows | _Columns]:
    """layer_id, filter_index and the float32 weights of ``select``'s rows: (n, 9), or
    with ``columns`` the nine Arrow columns as they came.

    Through Arrow: the weight columns' chunks are read in place and written once into
    the (n, 9) array (fetchnumpy, then stacking the columns, took about 3x as long for 4.2M
    rows: bench/metrics.py).
    """
    table = connection.connection.driver_connection.sql(select).to_arrow_table()
    layer_ids = arrow_numpy(table.column("layer_id"))
    filter_index = arrow_numpy(table.column("filter_index"))
    if columns:
        return layer_ids, filter_index, _Columns([table.column(n) for n in WEIGHT_COLUMNS])
    weights = np.empty((table.num_rows, 9), dtype=np.float32)
    for position, name in enumerate(WEIGHT_COLUMNS):
        at = 0
        for chunk in table.column(name).chunks:
            weights[at : at + len(chunk), position] = arrow_numpy(chunk)
            at += len(chunk)
    return layer_ids, filter_index, _Rows(weights)


def arrow_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow column of numbers as numpy: a view of its buffer (a copy across chunks).

    pyarrow's own ``to_numpy`` imported pandas on its first call on DuckDB's arrays
    (0.4-0.5 s of every report's first read, pyarrow 26, measured here); a column of a
    fixed-width type without nulls is its data buffer, read in place. Anything else
    (nulls, impossible in filterdb's own loads) goes through ``to_numpy``.
    """
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks > 1:
            return np.concatenate([arrow_numpy(chunk) for chunk in values.chunks])
        values = values.chunk(0) if values.num_chunks else values.combine_chunks()
    dtype = _NUMPY_TYPES.get(values.type)
    if dtype is None or values.null_count:
        return values.to_numpy(zero_copy_only=False)
    if len(values) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(
        values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize
    )


_NUMPY_TYPES = {
    pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64),
    pa.float32(): np.dtype(np.float32),
    pa.float64(): np.dtype(np.float64),
}


def _is_identity(index: np.ndarray) -> bool:
    """Whether ``index`` is 0, 1, ..., len - 1 (strictly increasing from 0 to len - 1)."""
    n = len(index)
    return n == 0 or (index[0] == 0 and index[-1] == n - 1 and bool(np.all(index[1:] > index[:-1])))


def _is_permutation(index: np.ndarray, n: int) -> bool:
    if len(index) and (index.min() < 0 or index.max() >= n):
        return False
    seen = np.zeros(n, dtype=bool)
    seen[index] = True
    return bool(seen.all())


def _copy_out(
    connection: Connection, select: str, *, columns: bool
) -> tuple[np.ndarray, np.ndarray, _Rows | _Columns]:
    """layer_id, filter_index and the float32 weights of ``select``, by binary COPY:
    (n, 9), or with ``columns`` nine columns."""
    driver = connection.connection.driver_connection
    buffer = bytearray()
    statement = f"COPY ({select}) TO STDOUT (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for block in copy:
            buffer += block
    body = memoryview(buffer)[_COPY_HEADER_SIZE : len(buffer) - _COPY_TRAILER_SIZE]
    rows = np.frombuffer(body, dtype=_COPY_ROW)
    layer_ids, filter_index = (
        rows["layer_id"].astype(np.int64),
        rows["filter_index"].astype(np.int64),
    )
    if columns:  # big-endian to native, exact
        return (
            layer_ids,
            filter_index,
            _Columns([rows[n].astype(np.float32) for n in WEIGHT_COLUMNS]),
        )
    weights = np.empty((len(rows), 9), dtype=np.float32)
    for position, name in enumerate(WEIGHT_COLUMNS):
        weights[:, position] = rows[name]  # big-endian to native, exact
    return layer_ids, filter_index, _Rows(weights)


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
