"""The house: what the wheel installs, and the CLI's place at the top of the flow (issue 8).

`lint-imports` (pyproject.toml) checks the stages inside ``filterdb/``; the CLI lives in
``cli/`` and installs as ``filterdb.cli``, which import-linter cannot see, so these tests
check its side: the library never imports the CLI, and the CLI only calls the library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_library_never_imports_the_cli():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "filterdb").rglob("*.py")
        if any(name.startswith("filterdb.cli") for name in imported_modules(path))
    ]
    assert offenders == []


def test_every_package_directory_is_listed_for_setuptools():
    # The packages are listed by hand (cli/ and migrations/ map into filterdb.*): a new
    # subpackage missing from the list would be absent from a regular install.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "filterdb").rglob("__init__.py")
    }
    found |= {
        "filterdb." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("cli", "migrations")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found


def test_the_wheel_installs_only_the_filterdb_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("filterdb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("filterdb-")}
    assert top_level == {"filterdb"}  # no "cli" or "migrations" beside other projects'
    for needed in (
        "filterdb/cli/main.py",
        "filterdb/migrations/env.py",
        "filterdb/migrations/script.py.mako",
        "filterdb/ingest/sources/robustbench_index.json",
        "filterdb/migrations/versions/0001_warehouse.py",
    ):
        assert needed in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "filterdb = filterdb.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Each CLI command and the FilterDB method a notebook calls instead (issue 8: a notebook
# never needs a private module). A new command fails here until it has one.
API_OF_COMMAND = {
    "init": "upgrade",
    "db upgrade": "upgrade",
    "db downgrade": "downgrade",
    "db current": "current_revision",
    "db history": None,  # the schema's history is the package's, not a database's
    "models": "models",
    "layers": "layer_metrics",
    "check": "check",
    "metrics": "compute_metrics",
    "depth-profile": "depth_profile",
    "query": "query",
    "ingest checkpoint": "ingest_checkpoint",
    "ingest onnx": "ingest_onnx",
    "ingest robustbench": "ingest_robustbench",
    "ingest timm": "ingest_timm",
    "ingest hf": "ingest_hf",
    "ingest torchvision": "ingest_torchvision",
    "ingest manifest": "ingest_manifest",
    "leaderboard sync": "sync_leaderboard",
    "leaderboard status": "leaderboard_status",
    "pca": "pca",
    "drift": "drift",
    "compare": "compare",
    "gallery": "gallery",
    "report robust-vs-normal": "report_robust_vs_normal",
    "export": "export_hdf5",
    "demo": "demo",
}


def cli_commands() -> set[str]:
    import typer.main

    from filterdb.cli.main import app

    found = set()

    def walk(command, prefix: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, [*prefix, name])
        else:
            found.add(" ".join(prefix))

    walk(typer.main.get_command(app), [])
    return found


def test_every_cli_command_has_a_python_method():
    import filterdb

    assert cli_commands() == set(API_OF_COMMAND)
    missing = [
        method
        for method in API_OF_COMMAND.values()
        if method is not None and not callable(getattr(filterdb.FilterDB, method, None))
    ]
    assert missing == []
    assert callable(getattr(filterdb.FilterDB, "export_parquet", None))
