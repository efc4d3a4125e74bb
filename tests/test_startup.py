"""Light commands never import the heavy libraries (issue 8): torch and friends load on need.

Each command runs as a real ``filterdb`` process whose interpreter reports, at exit, which
of the heavy modules it had imported (``sys.modules``). No timings here: ``bench/startup.py``
measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filterdb.cli.main import app
from filterdb.warehouse import migrate

HEAVY = ("torch", "torchvision", "robustbench", "timm", "matplotlib", "scipy")

# Runs the CLI and, at interpreter exit, writes the heavy modules it saw to $REPORT.
PROBE = f"""
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["REPORT"], "w").write(
    json.dumps([m for m in {HEAVY!r} if m in sys.modules])))
sys.argv = ["filterdb", *sys.argv[1:]]
from filterdb.cli.main import main
main()
"""


def heavy_modules_of(
    args: list[str], tmp_path: Path
) -> tuple[list[str], subprocess.CompletedProcess]:
    report = tmp_path / "imported.json"
    env = {**os.environ, "REPORT": str(report)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120
    )
    return json.loads(report.read_text()), done


def command_paths() -> list[list[str]]:
    """Every command and command group of the CLI, as argument lists."""
    import typer.main

    paths = []

    def walk(command, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "filterdb")
def test_help_never_imports_heavy_modules(path, tmp_path):
    imported, done = heavy_modules_of([*path, "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert imported == []


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> str:
    url = f"duckdb:///{tmp_path_factory.mktemp('startup') / 'small.duckdb'}"
    migrate.upgrade(url=url)
    return url


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["db", "history"],
        ["models"],
        ["query", "SELECT count(*) AS n FROM v_models"],
        ["check"],
        ["depth-profile"],
        ["layers", "absent-model"],  # a one-line error, still without torch
        ["leaderboard", "status", "--dataset", "cifar10"],
    ],
    ids=" ".join,
)
def test_light_commands_never_import_heavy_modules(args, small_db, tmp_path):
    imported, done = heavy_modules_of(["--db", small_db, *args], tmp_path)
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    assert imported == []


def test_the_probe_sees_a_heavy_import(small_db, tmp_path):
    # The check above would pass trivially if the probe could not see imports: an ingest
    # needs torch, and the probe must say so.
    imported, _ = heavy_modules_of(
        ["--db", small_db, "ingest", "checkpoint", str(tmp_path / "absent.pt")], tmp_path
    )
    assert "torch" in imported


def test_a_report_of_cached_models_never_imports_torch(tmp_path):
    # The metrics are cached, so the report has nothing for torch to do (2 s of import).
    import torch

    from filterdb.ingest.pipeline import ingest
    from filterdb.ingest.sources.checkpoint import checkpoint_candidate
    from filterdb.metrics.cache import compute_metrics
    from filterdb.warehouse.records import TrainingInfo

    url = f"duckdb:///{tmp_path / 'pair.duckdb'}"
    migrate.upgrade(url=url)
    torch.manual_seed(0)
    for name, training_type in (("robust", "adversarial"), ("normal", "normal")):
        path = tmp_path / f"{name}.pt"
        torch.save({"a.weight": torch.randn(8, 3, 3, 3), "b.weight": torch.randn(8, 8, 3, 3)}, path)
        training = TrainingInfo(training_type=training_type, training_dataset="toy")
        candidate = checkpoint_candidate(path, name=name, architecture="net", training=training)
        ingest(candidate, url=url, device="cpu")
    compute_metrics(url=url)
    imported, done = heavy_modules_of(
        ["--db", url, "report", "robust-vs-normal", "--out", str(tmp_path / "report")], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report" / "report.html").exists()
    assert "torch" not in imported and "matplotlib" in imported
