"""Reading filters back: exact, in filter order, whatever the storage order and batching."""

from __future__ import annotations

import subprocess
import sys
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch

from filterdb.errors import DatabaseError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse import read as fetch
from filterdb.warehouse.database import engine_for, read_frame


@pytest.fixture
def stored(db_url, tmp_path) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    state = {
        "a.weight": torch.randn(6, 4, 3, 3),
        "b.weight": torch.randn(5, 6, 3, 3),
        "c.weight": torch.randn(7, 5, 3, 3),
    }
    torch.save(state, tmp_path / "net.pt")
    ingest(checkpoint_candidate(tmp_path / "net.pt"), url=db_url, device="cpu")
    return state


def read_layers(connection, shapes, *, ahead: bool = False, columns: bool = False):
    """iter_layer_filters, or iter_layer_columns stacked back into (n, 9) arrays."""
    if not columns:
        yield from fetch.iter_layer_filters(connection, shapes, ahead=ahead)
        return
    for layer in fetch.iter_layer_columns(connection, shapes, ahead=ahead):
        assert len(layer) == 9 and all(column.dtype == np.float32 for column in layer)
        yield np.stack(layer, axis=1)


def read_back(
    url: str, *, ahead: bool = False, columns: bool = False, order: str = "layer_id"
) -> dict[str, bytes]:
    """Each layer's filters as row-major bytes, the layers asked for in ``order``."""
    with engine_for(url) as engine, engine.connect() as connection:
        layers = read_frame(
            connection, f"SELECT layer_id, layer_name, n_filters FROM v_layers ORDER BY {order}"
        )
        shapes = layers.select("layer_id", "n_filters").iter_rows()
        arrays = list(read_layers(connection, shapes, ahead=ahead, columns=columns))
    return {
        name: np.ascontiguousarray(array).tobytes()
        for name, array in zip(layers["layer_name"], arrays, strict=True)
    }


# Shuffled storage; and rows in layer order but filters reversed inside each layer (the
# case where layers could come out as views of the batch, and must not).
STORAGE_ORDERS = ["random()", "layer_id, filter_index DESC"]


@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("batch_filters", [1, 40, fetch.BATCH_FILTERS])
@pytest.mark.parametrize("storage_order", STORAGE_ORDERS)
def test_filters_come_back_exactly_from_shuffled_storage(
    db_url, stored, monkeypatch, batch_filters, ahead, storage_order, columns
):
    with engine_for(db_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE shuffled AS SELECT * FROM filter ORDER BY {storage_order}"
        )
        connection.exec_driver_sql("DELETE FROM filter")
        connection.exec_driver_sql("INSERT INTO filter SELECT * FROM shuffled")
        connection.exec_driver_sql("DROP TABLE shuffled")
    monkeypatch.setattr(fetch, "BATCH_FILTERS", batch_filters)
    expected = {
        key.removesuffix(".weight"): weight.reshape(-1, 9).numpy().tobytes()
        for key, weight in stored.items()
    }
    assert read_back(db_url, ahead=ahead, columns=columns) == expected


def test_read_ahead_keeps_order_and_raises_the_producers_error():
    assert list(fetch.read_ahead(iter(range(100)))) == list(range(100))

    def failing():
        yield 1
        raise ValueError("broken source")

    reader = fetch.read_ahead(failing())
    assert next(reader) == 1
    with pytest.raises(ValueError, match="broken source"):
        next(reader)


def test_read_ahead_stops_its_thread_when_closed_early():
    produced = []
    producers = set()

    def endless():
        for i in range(10**9):
            producers.add(threading.current_thread())
            produced.append(i)
            yield i

    reader = fetch.read_ahead(endless())
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    (producer,) = producers
    assert producer is not threading.current_thread()
    reader.close()
    # close() returns only once the producing thread has ended: nothing is produced after.
    assert not producer.is_alive()
    assert len(produced) <= 6  # the consumer's three, and at most a few read ahead


def test_a_damaged_layer_is_a_one_line_database_error(db_url, stored):
    with engine_for(db_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE filter SET filter_index = 0 WHERE filter_index = 1 AND layer_id = "
            "(SELECT MIN(layer_id) FROM layer)"
        )
    with pytest.raises(DatabaseError, match="filterdb check"):
        read_back(db_url)


@pytest.mark.parametrize("max_ranges", [1, 64])
@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("order", ["layer_id DESC", "model_name DESC, layer_name"])
def test_layers_asked_in_any_order_or_with_gaps_come_back_exactly(
    db_url, stored, tmp_path, monkeypatch, columns, order, max_ranges
):
    monkeypatch.setattr(fetch, "MAX_RANGES", max_ranges)  # ranges, or a semi-join
    # A second model's layers follow the first's; leaving out layer b of the first makes
    # gaps between the id ranges the reader asks for.
    other = {"a.weight": torch.randn(3, 2, 3, 3), "z.weight": torch.randn(2, 3, 3, 3)}
    torch.save(other, tmp_path / "other.pt")
    ingest(checkpoint_candidate(tmp_path / "other.pt"), url=db_url, device="cpu")
    expected = {("net", k): v for k, v in stored.items()} | {
        ("other", k): v for k, v in other.items()
    }
    with engine_for(db_url) as engine, engine.connect() as connection:
        layers = read_frame(
            connection,
            "SELECT layer_id, n_filters, model_name, layer_name FROM v_layers "
            f"WHERE NOT (model_name = 'net' AND layer_name = 'b') ORDER BY {order}",
        )
        shapes = layers.select("layer_id", "n_filters").iter_rows()
        arrays = list(read_layers(connection, shapes, columns=columns))
    assert layers.height == 4
    for (model, layer), array in zip(
        layers.select("model_name", "layer_name").iter_rows(), arrays, strict=True
    ):
        weight = expected[model, f"{layer}.weight"].reshape(-1, 9).numpy()
        assert np.ascontiguousarray(array).tobytes() == weight.tobytes()


def test_the_rows_of_a_batch_are_asked_for_as_ranges_of_consecutive_ids():
    condition = fetch._layer_condition([9, 1, 2, 3, 5, 10, 2])
    assert condition == "layer_id BETWEEN 1 AND 3 OR layer_id = 5 OR layer_id BETWEEN 9 AND 10"
    scattered = fetch._layer_condition(list(range(1, 2 * fetch.MAX_RANGES + 3, 2)))
    assert scattered.startswith("layer_id IN (SELECT unnest(ARRAY[1, 3, 5") and scattered.endswith(
        "ORDER BY layer_id, filter_index"
    )


def test_arrow_columns_read_as_numpy_in_place_across_chunks_slices_and_nulls():
    table = duckdb.sql(
        "SELECT i::INTEGER AS i, (i * 0.5)::FLOAT AS w FROM range(300000) t(i)"
    ).to_arrow_table()
    assert table.column("w").num_chunks > 1  # DuckDB hands over several record batches
    expected = np.arange(300_000)
    np.testing.assert_array_equal(fetch.arrow_numpy(table.column("i")), expected)
    np.testing.assert_array_equal(
        fetch.arrow_numpy(table.column("w")), (expected * 0.5).astype(np.float32)
    )
    sliced = table.column("i").slice(122_000, 1_000)  # across a chunk boundary
    np.testing.assert_array_equal(fetch.arrow_numpy(sliced), expected[122_000:123_000])
    inside = table.column("i").chunk(1).slice(7, 3)  # an offset into one buffer
    np.testing.assert_array_equal(fetch.arrow_numpy(inside), inside.to_numpy())
    with_nulls = pa.chunked_array([pa.array([1.0, None, 3.0], type=pa.float32())])
    np.testing.assert_array_equal(fetch.arrow_numpy(with_nulls), [1.0, np.nan, 3.0])
    empty = fetch.arrow_numpy(pa.chunked_array([], type=pa.int32()))
    assert empty.dtype == np.int32 and len(empty) == 0


def test_reading_layers_never_imports_pandas(db_url, stored):
    # pyarrow's own to_numpy imported pandas on DuckDB's arrays: 0.4-0.5 s of a report.
    code = (
        "import sys\n"
        "from filterdb.warehouse.database import engine_for, read_frame\n"
        "from filterdb.warehouse.read import iter_layer_columns, iter_layer_filters\n"
        f"with engine_for({db_url!r}) as engine, engine.connect() as connection:\n"
        "    layers = read_frame(connection, 'SELECT layer_id, n_filters FROM v_layers')\n"
        "    shapes = list(layers.iter_rows())\n"
        "    list(iter_layer_filters(connection, shapes))\n"
        "    list(iter_layer_columns(connection, shapes))\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
