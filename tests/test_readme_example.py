"""The README's Python example runs as written, on a database like the demo's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from oracles import trained_state_dict

import filterdb
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse.records import TrainingInfo

README = Path(__file__).resolve().parents[1] / "README.md"
# The demo's two models (filterdb demo): a PGD-trained and a normally trained digits CNN.
DEMO_MODELS = {"digits-pgd": "adversarial", "digits-normal": "normal"}


def readme_python_blocks() -> list[str]:
    """The Python blocks of the README's "From Python" section (others show cluster setups)."""
    section = README.read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)


def test_the_readme_has_one_python_example():
    assert len(readme_python_blocks()) == 1


def test_the_readme_python_example_runs(db_url, tmp_path, monkeypatch):
    for seed, (name, training_type) in enumerate(DEMO_MODELS.items()):
        path = tmp_path / f"{name}.pt"
        torch.save(trained_state_dict(seed), path)
        training = TrainingInfo(training_type=training_type, training_dataset="digits")
        ingest(checkpoint_candidate(path, name=name, training=training), url=db_url, device="cpu")
    monkeypatch.setenv("FILTERDB_URL", db_url)
    monkeypatch.chdir(tmp_path)  # the example's default database would land here

    (block,) = readme_python_blocks()
    values = run_collecting_expressions(block)
    assert list(values) == [
        "db.models()",
        "db.compute_metrics()",
        'db.layer_metrics("digits-pgd")',
        "db.depth_profile()",
        'db.query("SELECT depth_bin, avg(sparsity) FROM v_layer_metrics GROUP BY depth_bin")',
        'db.pca("robust").ratios',
        'db.drift("training_type").matrix',
    ]
    models, computed, layers, profile, query, ratios, drift = values.values()
    assert sorted(models["model_name"]) == sorted(DEMO_MODELS)
    assert computed.n_layers == 6
    assert isinstance(layers, pl.DataFrame) and layers.height == 3
    assert set(layers["model_name"]) == {"digits-pgd"}
    assert profile.height == 6  # 3 depth bins of each model
    assert query.height == 3 and query.columns[0] == "depth_bin"
    assert np.sum(ratios) == pytest.approx(1.0, abs=1e-12)
    matrix = np.asarray(drift)
    assert matrix.shape == (2, 2) and np.all(np.diag(matrix) == 0) and matrix[0, 1] > 0
    assert not (tmp_path / "filterdb.duckdb").exists()  # it used $FILTERDB_URL


def run_collecting_expressions(source: str) -> dict[str, object]:
    """Execute ``source`` statement by statement; the value of each expression, by its text."""
    namespace: dict[str, object] = {}
    values = {}
    for statement in ast.parse(source).body:
        code = ast.get_source_segment(source, statement)
        if isinstance(statement, ast.Expr):
            values[code] = eval(
                compile(ast.Expression(statement.value), "README", "eval"), namespace
            )
        else:
            exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
    assert namespace["filterdb"] is filterdb
    return values
