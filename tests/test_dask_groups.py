"""PCA, drift and the report's drift series on Dask equal the local ones to 1e-12 relative.

The oracle is the local path (every filter of a group pooled in one array). The lake is cut
into files of about 50 rows, so that every statistic is combined from several partials;
one model is large enough that its pairs' permutation nulls come from a subsample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from test_cli_foundation import assert_one_line_error
from test_export import store
from typer.testing import CliRunner

from filterdb.analysis import pca_drift
from filterdb.analysis.comparison import drift_by_depth
from filterdb.analysis.pairing import Pair, Pairing
from filterdb.cli.main import app
from filterdb.errors import NoPCA
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.lake.write import sync_lake
from filterdb.metrics import partials
from filterdb.metrics.pca import PCAResult, fit_pca, orient, require_fittable, unoriented_basis
from filterdb.warehouse import migrate

pytest.importorskip("distributed")
runner = CliRunner()
RTOL = 1e-12
PAIRING = Pairing(
    pairs=(Pair("robust-a", "normal-a", None, None),),
    unpaired_robust=(),
    unpaired_normal=(),
    unresolved=(),
    source="test",
)


def store_in_a_small_file_lake(url: str, folder: Path) -> Path:
    """The two tiny trained models and a 3,072-filter one, in a lake of ~50-row files."""
    store(url, folder)
    torch.manual_seed(5)
    weight = torch.randn(64, 48, 3, 3) * torch.rand(64, 1, 1, 1)  # peaks spread: some sparse
    torch.save({"conv.weight": weight}, folder / "wide.pt")
    ingest(checkpoint_candidate(folder / "wide.pt", name="wide"), url=url, device="cpu")
    lake = folder / "lake"
    manifest = sync_lake(url=url, lake=lake, file_rows=50).manifest
    assert max(len(m["files"]) for m in manifest["models"].values()) > 1
    return lake


def assert_close(local, dask) -> None:
    np.testing.assert_allclose(dask, local, rtol=RTOL, atol=0)


def assert_same_basis(local, dask) -> None:
    assert dask.n_filters == local.n_filters
    for name in ("mean", "explained_variance", "ratio", "cumulative"):
        assert_close(getattr(local, name), getattr(dask, name))
    # Unit vectors: equal to 1e-12 of their norm, with the same sign rule.
    np.testing.assert_allclose(dask.components, local.components, rtol=0, atol=RTOL)


def assert_same_null(local, dask) -> None:
    assert (dask.sizes, dask.subsampled, dask.n_permutations) == (
        local.sizes,
        local.subsampled,
        local.n_permutations,
    )
    for name in ("median", "low", "high", "observed", "p_value"):
        assert_close(getattr(local, name), getattr(dask, name))


@pytest.fixture(scope="module")
def stored_lake(tmp_path_factory) -> tuple[str, Path]:
    """One DuckDB file and its lake for the tests that only read them."""
    folder = tmp_path_factory.mktemp("dask-groups")
    url = f"duckdb:///{folder / 'test.duckdb'}"
    migrate.upgrade(url=url)
    return url, store_in_a_small_file_lake(url, folder)


def test_pca_and_drift_on_dask_equal_local(stored_lake, cluster):
    # The workers read only the lake, whose export is tested on both backends (test_lake).
    (db_url, lake), (_, engine) = stored_lake, cluster
    local = pca_drift.pca_group(url=db_url, group="robust")
    on_dask = pca_drift.pca_group(url=db_url, group="robust", engine=engine, lake=lake)
    assert_same_basis(local.basis, on_dask.basis)
    local = pca_drift.drift(url=db_url, by="model", mixed_forms=True)
    on_dask = pca_drift.drift(url=db_url, by="model", mixed_forms=True, engine=engine, lake=lake)
    assert (on_dask.names, on_dask.n_filters, on_dask.skipped, on_dask.weights_form) == (
        local.names,
        local.n_filters,
        local.skipped,
        local.weights_form,
    )
    assert_same_basis(local.basis, on_dask.basis)
    assert_close([local.lo, local.hi], [on_dask.lo, on_dask.hi])
    assert_close(local.matrix, on_dask.matrix)
    assert on_dask.nulls.keys() == local.nulls.keys()
    for pair, null in local.nulls.items():
        assert_same_null(null, on_dask.nulls[pair])
    # The rows of a subsampled null were drawn and gathered as locally.
    assert any(null.subsampled for null in local.nulls.values())


def test_the_drift_series_on_dask_equals_local(stored_lake, cluster):
    (url, lake), (_, engine) = stored_lake, cluster
    local = drift_by_depth(PAIRING, url=url)
    on_dask = drift_by_depth(PAIRING, url=url, engine=engine, lake=lake)
    floats = [name for name, dtype in local.schema.items() if dtype.is_float()]
    assert on_dask.drop(floats).equals(local.drop(floats))
    assert local["drift"].is_not_nan().all()
    for name in floats:
        assert_close(local[name].to_numpy(), on_dask[name].to_numpy())


def test_pca_and_drift_commands_take_an_engine(stored_lake, cluster):
    (url, lake), (_, engine) = stored_lake, cluster
    documents = {}
    for where in (["--engine", "local"], ["--engine", engine, "--lake", str(lake)]):
        pca = ["--db", url, "pca", "--group", "all", "--format", "json", *where]
        drift = ["--db", url, "drift", "--by", "depth", "--format", "json", *where]
        # At eps 0.999 only a layer's peak filters are not sparse: fewer than nine remain.
        too_few = ["--db", url, "pca", "--group", "model=normal-a", "--eps", "0.999", *where]
        done = [runner.invoke(app, command) for command in (pca, drift, too_few)]
        assert [result.exit_code for result in done] == [0, 0, 1], [r.output for r in done]
        assert_one_line_error(done[2], "no PCA", "pool a larger group")
        documents[where[1]] = [json.loads(r.stdout) for r in done[:2]] + [done[2].output]
    (local_pca, local_drift, local_error) = documents["local"]
    (dask_pca, dask_drift, dask_error) = documents[engine]
    assert dask_pca["n_filters"] == local_pca["n_filters"]
    assert_close(
        [c["ratio"] for c in local_pca["components"]], [c["ratio"] for c in dask_pca["components"]]
    )
    assert dask_drift["names"] == local_drift["names"]
    assert_close(local_drift["matrix"], dask_drift["matrix"])
    assert_close(
        local_drift["null"]["pairs"][0]["p_value"], dask_drift["null"]["pairs"][0]["p_value"]
    )
    assert dask_error == local_error


def test_partials_add_up_to_the_pooled_statistics():
    rng = np.random.default_rng(3)
    filters = rng.normal(size=(1_000, 9)) * rng.uniform(0.1, 3.0, size=9) + 0.4
    parts = [partials.moments_of(chunk) for chunk in np.array_split(filters, 7)]
    parts.insert(3, partials.moments_of(np.empty((0, 9))))  # a file with nothing kept
    combined = partials.combine_moments(*parts[:4], partials.combine_moments(*parts[4:]))
    centred = filters - filters.mean(axis=0)
    assert combined.n == len(filters)
    assert_close(filters.mean(axis=0), combined.mean)
    assert_close(centred.T @ centred, combined.scatter)
    assert_close(filters.min(axis=0), combined.low)


@pytest.mark.parametrize("case", ["positive", "negative", "tie", "zero"])
def test_orientation_from_extremes_follows_the_local_rule(case):
    rng = np.random.default_rng(7)
    components = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    coefficients = rng.normal(size=(50, 9))
    if case == "positive":
        coefficients[4] = 9.0
    elif case == "negative":
        coefficients[4] = -9.0
    elif case == "tie":  # equal |coefficient| with both signs: the component entries decide
        coefficients[4], coefficients[9] = 9.0, -9.0
    else:
        coefficients[:] = 0.0
    extremes = partials.extremes_of(coefficients)
    basis = PCAResult(np.zeros(9), components, np.ones(9), np.ones(9) / 9, np.ones(9), 50)
    oriented, signs, lo, hi = orient(basis, extremes.low, extremes.high)
    np.testing.assert_array_equal(signs, rule_on_every_coefficient(components, coefficients))
    np.testing.assert_array_equal(oriented.components, components * signs[:, None])
    assert (lo, hi) == (
        float((coefficients * signs).min()),
        float((coefficients * signs).max()),
    )


def rule_on_every_coefficient(components: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """The SPEC's sign rule read straight off every coefficient: the filters at the largest
    |coefficient| decide when they share a sign, else the largest entry (first of equals)."""
    signs = []
    for k, component in enumerate(components):
        column = coefficients[:, k]
        at_largest = column[np.abs(column) == np.abs(column).max()]
        if np.abs(column).max() > 0 and (np.all(at_largest > 0) or np.all(at_largest < 0)):
            decider = at_largest[0]
        else:
            decider = component[np.argmax(np.abs(component))]
        signs.append(-1.0 if decider < 0 else 1.0)
    return np.array(signs)


def test_a_single_partial_is_the_local_fit_bit_for_bit():
    rng = np.random.default_rng(11)
    filters = rng.normal(size=(300, 9))
    moments = partials.moments_of(filters)
    local = fit_pca(filters)
    basis = unoriented_basis(moments.mean, moments.scatter, moments.n)
    extremes = partials.extremes_of(basis.coefficients(filters))
    oriented = orient(basis, extremes.low, extremes.high)[0]
    np.testing.assert_array_equal(oriented.components, local.components)
    np.testing.assert_array_equal(oriented.explained_variance, local.explained_variance)
    with pytest.raises(NoPCA, match="identical"):
        require_fittable(10, finite=True, identical=True)


def test_the_report_takes_an_engine(stored_lake, cluster, tmp_path):
    (url, lake), (_, engine) = stored_lake, cluster
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Robust,Normal\nrobust-a,normal-a\n")
    command = ["--db", url, "report", "robust-vs-normal", "--pairs", str(pairs)]
    out = tmp_path / "report"
    done = runner.invoke(
        app, [*command, "--out", str(out), "--engine", engine, "--lake", str(lake), "-q"]
    )
    assert done.exit_code == 0, done.output
    on_dask = pl.read_csv(out / "drift_by_depth.csv")
    local = drift_by_depth(PAIRING, url=url)
    assert on_dask["depth_bin"].to_list() == local["depth_bin"].to_list()
    # The CSV holds round-trip floats (SPEC section 5).
    assert_close(local["drift"].to_numpy(), on_dask["drift"].to_numpy())
    assert_close(local["p_value"].to_numpy(), on_dask["p_value"].to_numpy())
