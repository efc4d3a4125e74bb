"""The HDF5 export opens where the published notebooks run (SPEC section 7a).

The robustness paper's notebooks pin Python 3.8, numpy 1.21.2, pandas 1.1.4, tables 3.6.1
and h5py 3.1.0. This module builds that environment beside the project (pyenv's Python 3.8,
packages from the index, about a minute; cached in ``.ci/cache/notebook-env``) and a second
one with pandas 2.2 on the project's Python, exports with the project's pandas and with
pandas 2.2, and runs the notebooks' loading code (``tests/notebook_loading.py``) on each
export in each environment. The oracle is the checkpoints and the training facts that were
ingested, never filterdb's reading of its own file.

Without Python 3.8 or the package index the environments cannot be built: the tests skip,
except under CI (``FILTERDB_REQUIRE_POSTGRES=1``), where they fail.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import under_ci
from oracles import bits, checkpoint_filters, trained_state_dict

from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.reports.export import export_hdf5
from filterdb.warehouse import migrate
from filterdb.warehouse.records import TrainingInfo

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".ci" / "cache" / "notebook-env"
LOADING = Path(__file__).with_name("notebook_loading.py")
# The robustness paper's requirements, exactly.
NOTEBOOK_PINS = ("numpy==1.21.2", "pandas==1.1.4", "tables==3.6.1", "h5py==3.1.0")
# pandas 2.2 beside the project's packages: numpy stays the project's (its C extensions).
PANDAS_22_PINS = ("pandas==2.2.*", f"numpy=={np.__version__}")
PROJECT_SITE = sysconfig.get_paths()["purelib"]

TRAINING = {
    "normal-a": TrainingInfo(training_type="normal", training_dataset="toy"),
    "robust-a": TrainingInfo(
        training_type="adversarial",
        training_dataset="cifar10",
        clean_acc=80.5,
        robust_acc=50.25,
        extra_data=True,
        paper_url="https://example.org/paper",
    ),
}
# What each model's rows of /meta must say (ingested above; filterdb knows no architecture,
# paper or visual category of "toy": NaN, never the string "None").
EXPECTED_CELLS = {
    "normal-a": {
        "model": "normal-a",
        "Name": "normal-a",
        "Robust": False,
        "Training-Dataset": "toy",
        "Task": "Classification",
        "Framework": "pytorch",
        "Visual Category": None,
        "Paper": None,
        "Backbone": None,
        "Clean Accuracy": None,
        "Robust Accuracy": None,
        "Pretraining-Dataset": None,
        "Optimizer": None,
    },
    "robust-a": {
        "model": "robust-a",
        "Name": "robust-a",
        "Robust": True,
        "Training-Dataset": "cifar10",
        "Task": "Classification",
        "Visual Category": "natural",
        "Paper": "https://example.org/paper",
        "Backbone": None,
        "Clean Accuracy": 80.5,
        "Robust Accuracy": 50.25,
        "Pretraining-Dataset": 1.0,
    },
}
# SPEC section 7a's columns, in its order, at the front of /meta.
SPEC_COLUMNS = [
    "layer_depth",
    "in_channels",
    "out_channels",
    "filter_ids",
    "model",
    "Robust",
    "Training-Dataset",
    "Clean Accuracy",
    "Robust Accuracy",
    "Backbone",
    "Task",
    "Visual Category",
]


def unavailable(reason: str):
    """Skip, or fail under CI: there the side environments must be built and run."""
    if under_ci():
        pytest.fail(f"{reason} (CI, FILTERDB_REQUIRE_POSTGRES=1, must run this test)")
    pytest.skip(reason)


def python38() -> str:
    """pyenv's newest Python 3.8, or python3.8 on PATH."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        found = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        roots.insert(0, found.stdout.strip())
    for root in filter(None, roots):
        candidates = sorted(glob.glob(f"{root}/versions/3.8.*/bin/python"))
        if candidates:
            return candidates[-1]
    return shutil.which("python3.8") or unavailable("no Python 3.8 (pyenv versions)")


def side_env(name: str, python: str, pins: tuple[str, ...]) -> str:
    """The Python of ``.ci/cache/notebook-env/<name>``, built with ``pins`` when missing."""
    env = CACHE / name
    marker = env / "filterdb-pins.txt"
    wanted = "\n".join((python, *pins))
    interpreter = env / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and interpreter.exists():
        return str(interpreter)
    shutil.rmtree(env, ignore_errors=True)
    steps = (
        [python, "-m", "venv", str(env)],
        [str(interpreter), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
    )
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            unavailable(f"cannot build the side environment {env}: {' | '.join(tail)}")
    marker.write_text(wanted)  # last: a build cut short is rebuilt next time
    return str(interpreter)


@pytest.fixture(scope="module")
def notebook_python() -> str:
    return side_env("py38-pandas-1.1.4", python38(), NOTEBOOK_PINS)


@pytest.fixture(scope="module")
def pandas22_python() -> str:
    return side_env("pandas-2.2", sys._base_executable, PANDAS_22_PINS)


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[str, dict[str, dict[str, torch.Tensor]], Path]:
    """A DuckDB file with a normal and a robust model; their state dicts; a folder."""
    folder = tmp_path_factory.mktemp("notebook-env")
    url = f"duckdb:///{folder / 'filters.duckdb'}"
    migrate.upgrade(url=url)
    models = {}
    for seed, (name, training) in enumerate(TRAINING.items()):
        models[name] = trained_state_dict(seed)
        torch.save(models[name], folder / f"{name}.pt")
        candidate = checkpoint_candidate(folder / f"{name}.pt", name=name, training=training)
        ingest(candidate, url=url, device="cpu")
    return url, models, folder


EXPORT_UNDER_PANDAS_22 = """
import site, sys
site.addsitedir(sys.argv[1])
from pathlib import Path
import pandas
assert pandas.__version__.startswith("2.2."), pandas.__version__
from filterdb.reports.export import export_hdf5
export_hdf5(url=sys.argv[2], out=Path(sys.argv[3]))
"""


@pytest.fixture(scope="module")
def exports(stored, pandas22_python) -> dict[str, Path]:
    """The same database exported by the project's pandas and by pandas 2.2."""
    url, _, folder = stored
    project = folder / "by-project-pandas.h5"
    export_hdf5(url=url, out=project)
    by_22 = folder / "by-pandas-2.2.h5"
    run([pandas22_python, "-c", EXPORT_UNDER_PANDAS_22, PROJECT_SITE, url, str(by_22)])
    return {f"pandas {pd.__version__}": project, "pandas 2.2": by_22}


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def notebook_read(python: str, export: Path, *site_dirs: str) -> dict:
    return json.loads(run([python, str(LOADING), str(export), *site_dirs]))


def assert_read_as_the_notebooks_need(read: dict, models: dict) -> None:
    assert read["index_names"] == ["model_id", "conv_depth", "conv_depth_norm", "layer_id"]
    assert read["columns"][: len(SPEC_COLUMNS)] == SPEC_COLUMNS
    rows = [dict(zip(read["columns"], row, strict=True)) for row in read["rows"]]
    cells = [cell for row in read["rows"] for cell in row]
    assert "None" not in cells and "<None>" not in cells  # unknown is NaN (null here)
    for row in rows:
        expected = EXPECTED_CELLS[row["model"]]
        assert {name: row[name] for name in expected} == expected, row["model"]
    # filter_ids: contiguous "start:end" ranges, end inclusive, each layer's kernel count.
    ranges = [tuple(map(int, row["filter_ids"].split(":"))) for row in rows]
    sizes = [
        w.reshape(-1, 9).shape[0]
        for name in ("normal-a", "robust-a")
        for w in models[name].values()
        if w.shape[-2:] == (3, 3)
    ]
    assert [end - start + 1 for start, end in ranges] == sizes
    assert ranges[0][0] == 0 and ranges[-1][1] == read["n_filters"] - 1 == sum(sizes) - 1
    assert read["robust_names"] == ["robust-a"]
    for name, key in (("robust-a", "robust_bits"), ("normal-a", "normal_bits")):
        expected_bits = bits(checkpoint_filters(models[name])).tolist()
        assert read[key] == expected_bits, name


def test_the_notebooks_environment_reads_every_export(notebook_python, stored, exports):
    _, models, _ = stored
    for producer, export in exports.items():
        read = notebook_read(notebook_python, export)
        assert read["versions"] == {
            "python": "3.8",
            "pandas": "1.1.4",
            "numpy": "1.21.2",
            "tables": "3.6.1",
            "h5py": "3.1.0",
        }, producer
        assert_read_as_the_notebooks_need(read, models)


def test_pandas_2_2_and_the_projects_pandas_read_every_export(pandas22_python, stored, exports):
    _, models, _ = stored
    for producer, export in exports.items():
        by_22 = notebook_read(pandas22_python, export, PROJECT_SITE)
        assert by_22["versions"]["pandas"].startswith("2.2."), producer
        assert_read_as_the_notebooks_need(by_22, models)
        here = notebook_read(sys.executable, export)
        assert here["versions"]["pandas"] == pd.__version__
        assert_read_as_the_notebooks_need(here, models)
        assert {key: value for key, value in here.items() if key != "versions"} == {
            key: value for key, value in by_22.items() if key != "versions"
        }, producer
