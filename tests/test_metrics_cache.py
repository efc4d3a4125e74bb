"""Metrics from the database agree with an independent oracle; the cache computes only once."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch
from oracles import oracle, trained_state_dict
from typer.testing import CliRunner

import filterdb
from filterdb.cli.main import app
from filterdb.errors import MetricError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.metrics import cache, registry
from filterdb.warehouse import check
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.records import TrainingInfo
from filterdb.warehouse.views import DEPTH_BIN_LABELS, METRIC_COLUMNS

runner = CliRunner()
METRIC_RTOL = 1e-6


@pytest.fixture
def stored_models(db_url, tmp_path) -> dict[str, dict[str, torch.Tensor]]:
    models = {}
    for seed, name, training in ((0, "normal-a", "normal"), (1, "robust-a", "adversarial")):
        state = trained_state_dict(seed)
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        info = TrainingInfo(training_type=training, training_dataset="toy")
        ingest(checkpoint_candidate(path, name=name, training=info), url=db_url, device="cpu")
        models[name] = state
    return models


def cached_values(url: str) -> pl.DataFrame:
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(
            connection,
            "SELECT layer_id, metric, params, version, value, support, computed_at "
            "FROM metric_cache ORDER BY layer_id, metric",
        )


def assert_rows_match_the_oracle(frame: pl.DataFrame, models: dict) -> None:
    for row in frame.iter_rows(named=True):
        weight = models[row["model_name"]][f"{row['layer_name']}.weight"].numpy()
        for metric, (expected, _) in oracle(weight).items():
            if expected is None:
                assert row[metric] is None, metric
            else:
                assert row[metric] == pytest.approx(expected, rel=METRIC_RTOL), metric


def test_layer_metrics_match_the_oracle_on_both_backends(db_url, stored_models):
    result = filterdb.connect(db_url).compute_metrics(device="cpu")
    assert result.n_layers == 6 and result.n_values == 6 * len(METRIC_COLUMNS)
    assert_rows_match_the_oracle(filterdb.connect(db_url).layer_metrics(), stored_models)
    assert check.check(url=db_url) == []


def test_a_layer_with_a_nan_weight_gets_null_metrics_and_the_rest_go_on(
    db_url, stored_models, tmp_path
):
    state = trained_state_dict(2)
    state["2.weight"][5, 1, 0, 2] = float("nan")
    torch.save(state, tmp_path / "broken.pt")
    candidate = checkpoint_candidate(tmp_path / "broken.pt", name="broken")
    ingest(candidate, url=db_url, device="cpu", allow_nonfinite=True)

    result = cache.compute_metrics(url=db_url, device="cpu")
    assert (result.n_models, result.n_layers) == (3, 9)
    frame = filterdb.connect(db_url).layer_metrics()
    is_broken = (pl.col("model_name") == "broken") & (pl.col("layer_name") == "2")
    broken_row = frame.filter(is_broken).select(list(METRIC_COLUMNS)).rows(named=True)
    assert broken_row == [dict.fromkeys(METRIC_COLUMNS)]
    assert_rows_match_the_oracle(frame.filter(~is_broken), {**stored_models, "broken": state})
    # Every value of the layer is cached (as NULL, with its support): nothing is left to do.
    cached = cached_values(db_url).join(frame.filter(is_broken), on="layer_id")
    assert cached.height == len(METRIC_COLUMNS) and cached["value"].is_null().all()
    supports = dict(zip(cached["metric"], cached["support"], strict=True))
    # Conv2d(8, 12, groups=4): 12 x 2 filters; a NaN layer max makes none of them sparse.
    assert supports["sparsity"] == supports["variance_entropy_clean"] == 12 * 2
    assert (supports["orthogonality"], supports["l1"]) == (12, 9 * 12 * 2)
    assert cache.compute_metrics(url=db_url, device="cpu").n_layers == 0
    profile = cache.depth_profile(url=db_url, models=["broken"])
    assert profile["sparsity"].is_not_null().sum() == 2  # the two other layers' bins


def test_a_bad_eps_is_refused_before_any_work(tmp_path):
    path = tmp_path / "no" / "such.duckdb"  # opening it would fail otherwise
    for eps in (-1.0, math.inf, math.nan):
        with pytest.raises(MetricError, match="sparsity eps must be finite and >= 0"):
            cache.compute_metrics(url=f"duckdb:///{path}", eps=eps)
    result = runner.invoke(app, ["--db", f"duckdb:///{path}", "metrics", "-q", "--eps", "-1"])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        "error: sparsity eps must be finite and >= 0, got -1.0; the default is 0.01"
    )


def test_an_unknown_device_is_a_usage_error(tmp_path):
    path = tmp_path / "metrics.duckdb"
    result = runner.invoke(app, ["--db", f"duckdb:///{path}", "metrics", "--device", "bogus"])
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.replace("│", " ").split())  # unwrap rich's error box
    assert "Invalid value for '--device': Value error, 'bogus' is not one of 'auto'," in words
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert not path.exists()


def test_second_run_computes_nothing(db_url, stored_models):
    cache.compute_metrics(url=db_url, device="cpu")
    before = cached_values(db_url)
    result = runner.invoke(app, ["--db", db_url, "metrics", "-q"])
    assert result.exit_code == 0, result.output
    assert "nothing to compute" in result.output
    assert cached_values(db_url).equals(before)


def test_model_option_limits_the_work(db_url, stored_models):
    result = cache.compute_metrics(url=db_url, models=["robust-a"], device="cpu")
    assert (result.n_models, result.n_layers) == (1, 3)
    frame = filterdb.connect(db_url).layer_metrics()
    assert frame.filter(pl.col("model_name") == "normal-a")["sparsity"].is_null().all()
    with pytest.raises(filterdb.errors.FilterdbError, match="no stored model named nope"):
        cache.compute_metrics(url=db_url, models=["nope"])


def test_force_reingest_invalidates_the_models_cache(db_url, stored_models, tmp_path):
    cache.compute_metrics(url=db_url, device="cpu")
    changed = {k: v * 2 for k, v in stored_models["robust-a"].items()}
    torch.save(changed, tmp_path / "robust-a.pt")
    ingest(checkpoint_candidate(tmp_path / "robust-a.pt"), url=db_url, force=True)
    frame = filterdb.connect(db_url).layer_metrics()
    assert frame.filter(pl.col("model_name") == "robust-a")["l1"].is_null().all()
    assert frame.filter(pl.col("model_name") == "normal-a")["l1"].is_not_null().all()
    result = cache.compute_metrics(url=db_url, device="cpu")
    assert (result.n_models, result.n_layers) == (1, 3)
    assert check.check(url=db_url) == []


def test_bumped_version_recomputes_only_that_metric(db_url, stored_models, monkeypatch):
    cache.compute_metrics(url=db_url, device="cpu")
    before = cached_values(db_url)
    monkeypatch.setitem(
        registry.METRICS, "orthogonality", replace(registry.METRICS["orthogonality"], version=2)
    )
    result = cache.compute_metrics(url=db_url, device="cpu")
    assert result.n_values == 6
    after = cached_values(db_url)
    assert after.height == before.height  # the old version was replaced, not kept beside
    unchanged = pl.col("metric") != "orthogonality"
    assert after.filter(unchanged).equals(before.filter(unchanged))
    assert set(after.filter(~unchanged)["version"]) == {2}


def test_depth_profile_reads_current_versions_at_default_eps(db_url, stored_models, monkeypatch):
    cache.compute_metrics(url=db_url, eps=0.05, device="cpu")
    other_eps = cache.depth_profile(url=db_url)
    for metric in (m for m, spec in registry.METRICS.items() if spec.eps_dependent):
        assert other_eps[metric].is_null().all(), metric
    assert other_eps["orthogonality"].is_not_null().all()

    cache.compute_metrics(url=db_url, device="cpu")
    before = cache.depth_profile(url=db_url)
    assert before.select(registry.POOLED_METRICS).null_count().sum_horizontal().item() == 0
    monkeypatch.setitem(
        registry.METRICS, "orthogonality", replace(registry.METRICS["orthogonality"], version=2)
    )
    stale = cache.depth_profile(url=db_url)
    assert stale["orthogonality"].is_null().all()  # the version-1 rows are still cached
    others = pl.exclude("orthogonality")
    assert stale.select(others).equals(before.select(others))
    cache.compute_metrics(url=db_url, device="cpu")
    assert cache.depth_profile(url=db_url).equals(before)


def test_recompute_and_eps_are_part_of_the_key(db_url, stored_models):
    cache.compute_metrics(url=db_url, device="cpu")
    result = cache.compute_metrics(url=db_url, eps=0.05, device="cpu")
    # Only the five metrics that use the threshold are new for eps 0.05.
    assert result.n_values == 6 * 5
    assert cache.compute_metrics(url=db_url, recompute=True, device="cpu").n_values == 60
    params = set(cached_values(db_url)["params"])
    assert params == {"", "eps=0.01", "eps=0.05"}


def independent_depth_profile(
    models: dict[str, dict[str, torch.Tensor]], frame_layers: pl.DataFrame
) -> dict[tuple[str, str], dict]:
    """Per (model, bin): pooled metrics from the oracle, with SPEC's weights, no filterdb."""
    pooled: dict[tuple[str, str], dict[str, list[float]]] = {}
    for layer in frame_layers.iter_rows(named=True):
        depth, top = layer["conv_depth"], layer["max_conv_depth"]
        index = 0 if depth == 0 else math.ceil(10 * depth / top)
        key = (layer["model_name"], DEPTH_BIN_LABELS[index])
        weight = models[layer["model_name"]][f"{layer['layer_name']}.weight"].numpy()
        for metric, (value, support) in oracle(weight).items():
            if metric in ("l1", "l2") or value is None:
                continue
            sums = pooled.setdefault(key, {}).setdefault(metric, [0.0, 0.0])
            sums[0] += value * support
            sums[1] += support
    return {key: {m: a / b for m, (a, b) in sums.items()} for key, sums in pooled.items()}


def test_depth_profile_pools_layers_with_specs_weights(db_url, stored_models):
    cache.compute_metrics(url=db_url, device="cpu")
    with engine_for(db_url) as engine, engine.connect() as connection:
        layers = read_frame(
            connection,
            "SELECT v.model_name, v.layer_name, v.conv_depth, m.max_conv_depth "
            "FROM v_layers v JOIN model m ON m.model_id = v.model_id",
        )
    expected = independent_depth_profile(stored_models, layers)
    profile = filterdb.connect(db_url).depth_profile()
    assert {(r["model_name"], r["depth_bin"]) for r in profile.iter_rows(named=True)} == set(
        expected
    )
    for row in profile.iter_rows(named=True):
        for metric, value in expected[(row["model_name"], row["depth_bin"])].items():
            assert row[metric] == pytest.approx(value, rel=METRIC_RTOL), metric


def test_query_through_the_cli_matches_the_api(db_url, stored_models, tmp_path):
    cache.compute_metrics(url=db_url, device="cpu")
    out = tmp_path / "metrics.csv"
    sql = (
        "SELECT model_name, layer_name, sparsity, variance_entropy, orthogonality "
        "FROM v_layer_metrics"
    )
    result = runner.invoke(app, ["--db", db_url, "query", sql, "--format", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from_cli = pl.read_csv(out).sort(["model_name", "layer_name"])
    from_api = filterdb.connect(db_url).query(sql).sort(["model_name", "layer_name"])
    assert from_cli["variance_entropy"].to_list() == from_api["variance_entropy"].to_list()
    assert np.isfinite(from_cli["orthogonality"].to_numpy()).all()


def test_a_filter_exactly_at_the_threshold_is_sparse_through_the_database(db_url, stored_models):
    # trained_state_dict's layer "2": 6 filters scaled by 1e-4, filter 6 peaking exactly at
    # 0.01 x the layer max, filter 7 one float32 step above it; 24 filters in all.
    weight = stored_models["normal-a"]["2.weight"].reshape(-1, 9).double()
    threshold = 0.01 * weight.abs().max().item()
    assert weight[6].abs().max().item() == threshold < weight[7].abs().max().item()
    cache.compute_metrics(url=db_url, device="cpu")
    frame = filterdb.connect(db_url).layer_metrics()
    row = frame.filter((pl.col("model_name") == "normal-a") & (pl.col("layer_name") == "2"))
    assert row["sparsity"].to_list() == [7 / 24]
    with engine_for(db_url) as engine, engine.connect() as connection:
        supports = read_frame(
            connection,
            "SELECT c.metric, c.support FROM metric_cache c JOIN v_layers l USING (layer_id) "
            "WHERE l.model_name = 'normal-a' AND l.layer_name = '2'",
        )
    support = dict(supports.iter_rows())
    assert support["variance_entropy_clean"] == support["variance_entropy_scaled"] == 24 - 7
