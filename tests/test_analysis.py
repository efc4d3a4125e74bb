"""filterdb pca and drift: against an oracle written from SPEC section 5, files, CLI.

The oracle reads the weights from the checkpoint tensors the test saved, never from
filterdb, and follows the SPEC's PCA paragraph and the numbered drift steps.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracles import trained_state_dict
from typer.testing import CliRunner, Result

from filterdb.analysis import pca_drift as analysis
from filterdb.cli.main import app
from filterdb.errors import FilterdbError, MetricError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.metrics.drift import DriftMatrix, drift_matrix
from filterdb.metrics.pca import fit_pca
from filterdb.reports import pca_drift as pca_drift_files
from filterdb.warehouse import migrate
from filterdb.warehouse.records import TrainingInfo

runner = CliRunner()
TOLERANCE = {"rtol": 1e-9, "atol": 1e-12}
DEPTH_ORDER = ["first"] + [f"({i / 10:.1f}, {(i + 1) / 10:.1f}]" for i in range(10)]
# name: (training type, training dataset); blank-a has one all-zero layer: no non-sparse filter.
MODELS = {
    "normal-a": ("normal", "toy"),
    "robust-a": ("adversarial", "toy"),
    "blank-a": ("normal", "blank"),
}


@functools.cache
def model_weights(name: str) -> dict[str, torch.Tensor]:
    if name == "blank-a":
        return {"conv.weight": torch.zeros(2, 1, 3, 3)}
    return trained_state_dict(seed=list(MODELS).index(name))


def store_models(url: str, directory: Path) -> dict[str, list[torch.Tensor]]:
    """Ingest MODELS; return each model's 3x3 conv weights in key order."""
    weights = {}
    for name, (training_type, dataset) in MODELS.items():
        state = model_weights(name)
        path = directory / f"{name}.pt"
        torch.save(state, path)
        info = TrainingInfo(training_type=training_type, training_dataset=dataset)
        ingest(checkpoint_candidate(path, name=name, training=info), url=url, device="cpu")
        weights[name] = [w for w in state.values() if w.ndim == 4 and w.shape[2:] == (3, 3)]
    return weights


@pytest.fixture
def stored(db_url, tmp_path) -> dict[str, list[torch.Tensor]]:
    return store_models(db_url, tmp_path)


@pytest.fixture(scope="module")
def stored_duckdb(tmp_path_factory) -> str:
    """One DuckDB file for the CLI tests, which only read it."""
    directory = tmp_path_factory.mktemp("cli")
    url = f"duckdb:///{directory / 'test.duckdb'}"
    migrate.upgrade(url=url)
    store_models(url, directory)
    return url


# --- the oracle, from SPEC section 5 ------------------------------------------------------


def oracle_scaled(weight: torch.Tensor, eps: float = 0.01) -> np.ndarray:
    """A layer's non-sparse filters, each divided by its own largest |weight|."""
    filters = weight.double().numpy().reshape(-1, 9)
    peak = np.abs(filters).max(axis=1)
    keep = ~(peak <= eps * np.abs(filters).max())  # sparse: at most eps x the layer max
    return filters[keep] / peak[keep, None]


def oracle_depth_bin(position: int, n_layers: int) -> str:
    """Bin of a layer of a key-ordered checkpoint, whose conv depth is its position."""
    return "first" if position == 0 else DEPTH_ORDER[math.ceil(10 * position / (n_layers - 1))]


def oracle_groups(
    weights: dict[str, list[torch.Tensor]], key: Callable[[str, str], str | None]
) -> dict[str, np.ndarray]:
    """Pooled scaled filters per ``key(model, depth bin)``; None keys are left out."""
    groups: dict[str, list[np.ndarray]] = {}
    for name, layers in weights.items():
        for position, weight in enumerate(layers):
            group = key(name, oracle_depth_bin(position, len(layers)))
            if group is not None:
                groups.setdefault(group, []).append(oracle_scaled(weight))
    return {group: np.vstack(parts) for group, parts in groups.items()}


def oracle_pca(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components as rows, ratios): centre, eigh, sign rule on the coefficients."""
    mean = scaled.mean(axis=0)
    centred = scaled - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(scaled) - 1))
    order = np.argsort(values)[::-1]
    components = vectors[:, order].T
    coefficients = centred @ components.T
    for k in range(9):
        # The filter with the largest |coefficient| on component k has a positive one.
        if coefficients[np.argmax(np.abs(coefficients[:, k])), k] < 0:
            components[k] *= -1
    return mean, components, values[order] / values.sum()


def oracle_drift(groups: dict[str, np.ndarray]) -> np.ndarray:
    """Steps 1-6: one union basis and range, 70 bins, empty density 2^-23, weighted KL."""
    mean, components, ratios = oracle_pca(np.vstack(list(groups.values())))
    coefficients = [(group - mean) @ components.T for group in groups.values()]
    lo, hi = np.vstack(coefficients).min(), np.vstack(coefficients).max()

    def distribution(values: np.ndarray) -> np.ndarray:
        counts, _ = np.histogram(values, bins=70, range=(lo, hi))
        density = counts / (len(values) * (hi - lo) / 70)
        density[counts == 0] = 2.0**-23
        return density / density.sum()

    p = [[distribution(c[:, k]) for k in range(9)] for c in coefficients]
    matrix = np.zeros((len(groups), len(groups)))
    for i, j in itertools.product(range(len(groups)), repeat=2):
        matrix[i, j] = sum(
            ratios[k]
            * (
                np.sum(p[i][k] * np.log(p[i][k] / p[j][k]))
                + np.sum(p[j][k] * np.log(p[j][k] / p[i][k]))
            )
            for k in range(9)
        )
    return matrix


# --- against the oracle, on both backends -------------------------------------------------


def test_pca_of_each_group_matches_the_oracle(db_url, stored):
    robust = {name for name, (kind, _) in MODELS.items() if kind == "adversarial"}
    groups = {
        "all": lambda name, depth: "all",
        "robust": lambda name, depth: "robust" if name in robust else None,
        "normal": lambda name, depth: "normal" if name not in robust else None,
        "model=normal-a": lambda name, depth: "model=normal-a" if name == "normal-a" else None,
        "depth=first": lambda name, depth: "depth=first" if depth == "first" else None,
        "dataset=toy": lambda name, depth: "dataset=toy" if MODELS[name][1] == "toy" else None,
    }
    for group, key in groups.items():
        scaled = oracle_groups(stored, key)[group]
        mean, components, ratios = oracle_pca(scaled)
        result = analysis.pca_group(url=db_url, group=group)
        assert result.n_filters == len(scaled), group
        np.testing.assert_allclose(result.basis.mean, mean, **TOLERANCE, err_msg=group)
        np.testing.assert_allclose(result.components, components, **TOLERANCE, err_msg=group)
        np.testing.assert_allclose(result.ratios, ratios, **TOLERANCE, err_msg=group)
        np.testing.assert_allclose(result.cumulative, np.cumsum(ratios), **TOLERANCE)


def test_drift_matches_the_oracle_and_skips_empty_groups(db_url, stored):
    groupings = {
        "training_type": lambda name, depth: MODELS[name][0],
        "model": lambda name, depth: name,
        "depth": lambda name, depth: depth,
    }
    expected_names = {
        "training_type": ("adversarial", "normal"),
        "model": ("normal-a", "robust-a"),
        "depth": ("first", "(0.4, 0.5]", "(0.9, 1.0]"),  # not alphabetical: first first
    }
    for by, key in groupings.items():
        groups = oracle_groups(stored, key)
        result = analysis.drift(url=db_url, by=by)
        assert result.names == expected_names[by], by
        assert result.skipped == (("blank-a",) if by == "model" else ()), by
        kept = {name: groups[name] for name in result.names}
        assert result.n_filters == tuple(len(group) for group in kept.values()), by
        np.testing.assert_allclose(result.matrix, oracle_drift(kept), **TOLERANCE, err_msg=by)
        assert np.array_equal(result.matrix, result.matrix.T)
        assert np.all(np.diag(result.matrix) == 0.0)
        assert np.all(result.matrix[~np.eye(len(kept), dtype=bool)] > 0)


# --- files, without a database ------------------------------------------------------------


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 5_000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 200, path


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.int64)


def read_csv(text: str) -> tuple[list[str], list[list[str]]]:
    header, *rows = csv.reader(io.StringIO(text))
    return header, rows


@pytest.fixture
def sample_results() -> tuple[analysis.GroupPCA, DriftMatrix]:
    rng = np.random.default_rng(7)
    filters = rng.standard_normal((300, 9)) * np.geomspace(1e-6, 1e3, 9)
    groups = {
        "b": filters[:100],
        "(a, 1]": filters[100:220],
        "c": filters[220:],
        "zero": filters[:0],
    }
    pca = analysis.GroupPCA(group="robust", eps=0.01, basis=fit_pca(filters))
    return pca, drift_matrix(groups)


def test_pca_files_round_trip_bitwise(tmp_path, sample_results):
    result, _ = sample_results
    written = pca_drift_files.write_pca(result, tmp_path / "new" / "pca")
    assert [path.name for path in written] == [
        "pca.csv",
        "pca.json",
        "pca_components.png",
        "pca_cumulative.png",
    ]
    header, rows = read_csv(written[0].read_text())
    assert header == ["component", "ratio", "cumulative", *(f"w{j}" for j in range(9))]
    table = np.array([[float(cell) for cell in row] for row in rows])
    assert np.array_equal(table[:, 0], np.arange(1, 10))
    assert np.array_equal(bits(table[:, 1]), bits(result.ratios))
    assert np.array_equal(bits(table[:, 2]), bits(result.cumulative))
    assert np.array_equal(bits(table[:, 3:]), bits(result.components))
    document = json.loads(written[1].read_text())
    assert (document["group"], document["n_filters"], document["eps"]) == ("robust", 300, 0.01)
    assert np.array_equal(bits(document["mean"]), bits(result.basis.mean))
    rows = document["components"]
    assert np.array_equal(bits([row["ratio"] for row in rows]), bits(result.ratios))
    weights = [[row[f"w{j}"] for j in range(9)] for row in rows]
    assert np.array_equal(bits(weights), bits(result.components))
    for path in written[2:]:
        assert_valid_png(path)


def test_drift_files_round_trip_bitwise(tmp_path, sample_results):
    _, result = sample_results
    assert result.skipped == ("zero",)
    written = pca_drift_files.write_drift(result, tmp_path, title="test")
    names = ["drift.csv", "drift_null.csv", "drift.json", "drift.png"]
    assert [path.name for path in written] == names
    csv_path, null_path, json_path, png_path = written
    header, rows = read_csv(csv_path.read_text())
    assert header == ["", *result.names]
    assert [row[0] for row in rows] == list(result.names)
    matrix = [[float(cell) for cell in row[1:]] for row in rows]
    assert np.array_equal(bits(matrix), bits(result.matrix))
    # Each pair beside its null, at full precision.
    header, rows = read_csv(null_path.read_text())
    assert header[:4] == ["group_a", "group_b", "drift", "null_median"]
    pairs = sorted(result.nulls)
    assert [(row[0], row[1]) for row in rows] == [
        (result.names[i], result.names[j]) for i, j in pairs
    ]
    medians = [float(row[3]) for row in rows]
    assert np.array_equal(bits(medians), bits([result.nulls[pair].median for pair in pairs]))
    document = json.loads(json_path.read_text())
    assert document["null"]["p_value"][0][0] is None  # the diagonal has no null
    assert document["null"]["p_value"][0][1] == result.nulls[0, 1].p_value
    assert document["names"] == list(result.names)
    assert document["skipped"] == ["zero"]
    assert document["n_filters"] == [100, 120, 80]
    assert np.array_equal(bits(document["matrix"]), bits(result.matrix))
    assert np.array_equal(bits(document["ratios"]), bits(result.ratios))
    assert bits([document["lo"], document["hi"]]).tolist() == bits([result.lo, result.hi]).tolist()
    assert_valid_png(png_path)


def test_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, sample_results):
    (tmp_path / "taken").write_text("")
    with pytest.raises(FilterdbError, match="cannot write into .*taken"):
        pca_drift_files.write_pca(sample_results[0], tmp_path / "taken")


@given(st.permutations(DEPTH_ORDER), st.integers(1, len(DEPTH_ORDER)))
def test_depth_groups_are_ordered_shallow_to_deep(labels, count):
    present = labels[:count]
    assert analysis.ordered_groups("depth", present) == [b for b in DEPTH_ORDER if b in present]
    assert analysis.ordered_groups("model", present) == sorted(present)


# --- the CLI (DuckDB only: the library is tested on both backends above) ------------------


def invoke(url: str, *args: str) -> Result:
    return runner.invoke(app, ["--db", url, *args])


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0], result.output


def test_cli_prints_what_it_writes(stored_duckdb, tmp_path):
    out = tmp_path / "out"
    result = invoke(stored_duckdb, "pca", "--group", "robust", "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "pca.csv").read_text()
    assert f"wrote {out / 'pca_components.png'}" in result.output
    expected = analysis.pca_group(url=stored_duckdb, group="robust")
    _, rows = read_csv(result.stdout)
    assert np.array_equal(bits([float(row[1]) for row in rows]), bits(expected.ratios))

    result = invoke(stored_duckdb, "pca", "--group", "robust", "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "pca.json").read_text()

    result = invoke(stored_duckdb, "drift", "--by", "model", "--format", "json", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "drift.json").read_text()
    assert "skipped, no non-sparse filter: blank-a" in result.output
    for name in ("pca_components.png", "pca_cumulative.png", "drift.png"):
        assert_valid_png(out / name)

    result = invoke(stored_duckdb, "drift", "--by", "depth", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert [row[0] for row in read_csv(result.stdout)[1]] == ["first", "(0.4, 0.5]", "(0.9, 1.0]"]

    result = invoke(stored_duckdb, "drift", "--by", "training_type")
    assert result.exit_code == 0, result.output
    assert "adversarial" in result.stdout and "n_filters" in result.stdout


def test_cli_errors_are_one_line(stored_duckdb):
    cases = {
        ("pca", "--group", "robustish"): "unknown group 'robustish'",
        ("pca", "--group", "model=nope"): "group model=nope holds no stored layer",
        ("pca", "--group", "model=blank-a"): "group model=blank-a: no PCA",
        ("pca", "--group", "all", "--eps", "-1"): "eps must be finite and >= 0",
        ("drift", "--by", "colour"): "cannot group by 'colour'; use one of depth,",
    }
    for args, fragment in cases.items():
        assert_one_line_error(invoke(stored_duckdb, *args), fragment)


@pytest.mark.parametrize("eps", [-1.0, math.inf, math.nan])
def test_a_bad_eps_is_refused_before_the_database_is_read(tmp_path, eps):
    absent = f"duckdb:///{tmp_path / 'no' / 'such.duckdb'}"  # opening it would fail otherwise
    with pytest.raises(MetricError, match="sparsity eps must be finite and >= 0"):
        analysis.pca_group(url=absent, group="all", eps=eps)
    with pytest.raises(MetricError, match="sparsity eps must be finite and >= 0"):
        analysis.drift(url=absent, by="model", eps=eps)


def test_drift_of_an_empty_database_is_a_one_line_error(duckdb_url):
    with pytest.raises(FilterdbError, match="no layers; ingest models first"):
        analysis.drift(url=duckdb_url, by="model")
