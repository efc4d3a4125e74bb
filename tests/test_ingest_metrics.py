"""``ingest --metrics`` caches, in the model's transaction, what ``filterdb metrics`` would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracles import oracle, trained_state_dict
from typer.testing import CliRunner

import filterdb
from filterdb.cli.main import app
from filterdb.metrics import cache
from filterdb.warehouse import write
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()
METRIC_RTOL = 1e-6


def cache_rows(url: str) -> dict[tuple[str, str, str], tuple[float | None, int, int]]:
    """(layer name, metric, params) -> (value, support, version) of the whole cache."""
    with engine_for(url) as engine, engine.connect() as connection:
        frame = read_frame(
            connection,
            "SELECT l.name AS layer, c.metric, c.params, c.value, c.support, c.version "
            "FROM metric_cache c JOIN layer l ON l.layer_id = c.layer_id",
        )
    return {
        (row["layer"], row["metric"], row["params"]): (row["value"], row["support"], row["version"])
        for row in frame.iter_rows(named=True)
    }


def float_bits(value: float | None) -> int | None:
    return None if value is None else int(np.float64(value).view(np.uint64))


@pytest.fixture
def checkpoint(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    state = trained_state_dict(3)  # has sparse filters: both entropy paths run
    path = tmp_path / "toy.pt"
    torch.save(state, path)
    return str(path), state


@pytest.mark.parametrize("batch_filters", [None, 64], ids=["one transaction", "batches"])
def test_ingest_metrics_caches_what_filterdb_metrics_caches_bit_for_bit(
    db_url, checkpoint, batch_filters, monkeypatch
):
    path, state = checkpoint
    if batch_filters is not None:  # staged in committed batches, published at the end
        monkeypatch.setattr(write, "BATCH_FILTERS", batch_filters)
        assert sum(v.shape[0] * v.shape[1] for v in state.values() if v.dim() == 4) > 64
    done = runner.invoke(
        app, ["--db", db_url, "ingest", "checkpoint", path, "--metrics", "--device", "cpu", "-q"]
    )
    assert done.exit_code == 0, done.output
    at_ingest = cache_rows(db_url)
    assert len(at_ingest) == 3 * len(filterdb.metrics.registry.METRICS)
    # Nothing is missing: `filterdb metrics` finds every value cached and current.
    nothing = runner.invoke(app, ["--db", db_url, "metrics", "--device", "cpu"])
    assert "nothing to compute" in nothing.output, nothing.output

    cache.compute_metrics(url=db_url, recompute=True, device="cpu")
    recomputed = cache_rows(db_url)
    assert recomputed.keys() == at_ingest.keys()
    for key, (value, support, version) in recomputed.items():
        assert at_ingest[key][1:] == (support, version), key
        assert float_bits(at_ingest[key][0]) == float_bits(value), key

    # And both are the metrics of SPEC section 5 (an oracle with no filterdb code).
    for (layer, metric, _), (value, _, _) in at_ingest.items():
        expected, support = oracle(state[f"{layer}.weight"].numpy())[metric]
        assert value == pytest.approx(expected, rel=METRIC_RTOL), (layer, metric)


def test_a_failure_while_measuring_stores_neither_the_model_nor_its_metrics(
    db_url, checkpoint, monkeypatch
):
    path, _ = checkpoint

    def broken(*args, **kwargs):
        raise RuntimeError("metric kernel failed")

    monkeypatch.setattr(cache, "layer_metrics", broken)
    database = filterdb.connect(db_url)
    with pytest.raises(RuntimeError, match="metric kernel failed"):
        database.ingest_checkpoint(path, device="cpu", metrics=True)
    assert database.models().height == 0
    assert cache_rows(db_url) == {}
    # Without --metrics the same model goes in, and nothing is cached.
    monkeypatch.undo()
    assert database.ingest_checkpoint(path, device="cpu").status == "ingested"
    assert cache_rows(db_url) == {}


def test_a_bad_eps_is_refused_before_any_ingest():
    with pytest.raises(filterdb.errors.MetricError, match="eps"):
        cache.IngestMetrics(eps=-1.0)
