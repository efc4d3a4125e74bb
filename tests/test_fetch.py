"""Reading filters back: exact, in filter order, whatever the storage order and batching."""

from __future__ import annotations

import threading

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


def read_back(url: str, *, ahead: bool = False) -> dict[str, bytes]:
    with engine_for(url) as engine, engine.connect() as connection:
        layers = read_frame(connection, "SELECT layer_id, layer_name, n_filters FROM v_layers")
        shapes = layers.select("layer_id", "n_filters").iter_rows()
        arrays = list(fetch.iter_layer_filters(connection, shapes, ahead=ahead))
    return {name: array.tobytes() for name, array in zip(layers["layer_name"], arrays, strict=True)}


# Shuffled storage; and rows in layer order but filters reversed inside each layer (the
# case where layers could come out as views of the batch, and must not).
STORAGE_ORDERS = ["random()", "layer_id, filter_index DESC"]


@pytest.mark.parametrize("ahead", [False, True])
@pytest.mark.parametrize("batch_filters", [1, 40, fetch.BATCH_FILTERS])
@pytest.mark.parametrize("storage_order", STORAGE_ORDERS)
def test_filters_come_back_exactly_from_shuffled_storage(
    db_url, stored, monkeypatch, batch_filters, ahead, storage_order
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
    assert read_back(db_url, ahead=ahead) == expected


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
