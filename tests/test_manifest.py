"""Manifests: a population of models in one process, failures isolated, reruns converge."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.warehouse import check
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()


def tiny_zoo(directory: Path, n: int) -> list[dict[str, str]]:
    """``n`` small checkpoints (two 3x3 convs, 96 filters) and their manifest rows."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        generator = torch.Generator().manual_seed(i)
        state_dict = {
            "stem.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "block.weight": torch.randn(9, 8, 3, 3, generator=generator),
        }
        torch.save(state_dict, directory / f"m{i:04d}.pt")
        rows.append({"name": f"zoo-{i:04d}", "path": f"zoo/m{i:04d}.pt"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def invoke(url: str, manifest: Path):
    return runner.invoke(app, ["--db", url, "ingest", "manifest", str(manifest), "-q"])


def snapshot(url: str) -> list[tuple]:
    """What the warehouse holds, independent of ids and times."""
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(
            connection,
            "SELECT m.model_name, m.checkpoint_sha256, m.n_layers, m.n_filters, "
            "SUM(f.w0 + f.w4 + f.w8) AS trace FROM v_models m "
            "JOIN v_filters f ON f.model_name = m.model_name "
            "GROUP BY m.model_name, m.checkpoint_sha256, m.n_layers, m.n_filters "
            "ORDER BY m.model_name",
        ).rows()


def test_200_rows_with_a_failing_row_then_a_rerun_skips_all(db_url, tmp_path):
    rows = tiny_zoo(tmp_path / "zoo", 200)
    (tmp_path / "zoo" / "m0100.pt").write_text("<html><body>Not Found</body></html>")
    manifest = write_csv(tmp_path / "zoo.csv", rows)
    result = invoke(db_url, manifest)
    assert result.exit_code == 1
    assert "200 rows: 199 ingested, 1 failed" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: zoo-0100: ")
    assert "HTML page" in errors[0]
    stored = snapshot(db_url)
    assert len(stored) == 199 and all(row[2:4] == (2, 96) for row in stored)

    rerun = invoke(db_url, manifest)
    assert rerun.exit_code == 1
    assert "200 rows: 199 skipped, 1 failed" in rerun.output
    assert snapshot(db_url) == stored
    assert check.check(url=db_url) == []


def test_parquet_manifest_carries_the_metadata(db_url, tmp_path):
    rows = tiny_zoo(tmp_path / "zoo", 2)
    rows[0] |= {
        "training": "adversarial",
        "threat_model": "Linf",
        "eps": "8/255",
        "clean_acc": 81.5,
        "training_dataset": "cifar10",
        "architecture": "ResNet-18",
    }
    rows[1] |= {"training": "normal", "threat_model": None, "eps": None, "clean_acc": None,
                "training_dataset": "cifar10", "architecture": "resnet18"}  # fmt: skip
    manifest = tmp_path / "zoo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    result = invoke(db_url, manifest)
    assert result.exit_code == 0, result.output
    with engine_for(db_url) as engine, engine.connect() as connection:
        got = read_frame(
            connection,
            "SELECT model_name, training_type, threat_model, eps_text, clean_acc, architecture "
            "FROM v_models ORDER BY model_name",
        ).rows()
    assert got == [
        ("zoo-0000", "adversarial", "Linf", "8/255", 81.5, "ResNet-18"),
        ("zoo-0001", "normal", None, None, None, "resnet18"),
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"name": "a", "path": "x.pt", "epochs": "3", "lr": "0.1"}], "unknown columns epochs, lr"),
        ([{"name": "a", "file": "x.pt"}], "has no path column"),
        ([{"name": "a", "path": "x.pt"}, {"name": "a", "path": "y.pt"}], "names model a twice"),
    ],
)
def test_a_bad_manifest_is_one_line_and_stores_nothing(db_url, tmp_path, rows, message):
    result = invoke(db_url, write_csv(tmp_path / "bad.csv", rows))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and message in result.output
    assert snapshot(db_url) == []


def test_a_bad_row_value_fails_that_row_only(db_url, tmp_path):
    rows = tiny_zoo(tmp_path / "zoo", 3)
    rows[1]["training"] = "robust"
    rows[2]["clean_acc"] = "high"
    result = invoke(db_url, write_csv(tmp_path / "zoo.csv", rows))
    assert result.exit_code == 1
    assert "error: zoo-0001: training 'robust' is unknown" in result.output
    assert "error: zoo-0002: clean_acc 'high' is not a number" in result.output
    assert [row[0] for row in snapshot(db_url)] == ["zoo-0000"]


KILLED_MANIFEST = """
import sys
from pathlib import Path
from filterdb.ingest.manifest import ingest_manifest
ingest_manifest(
    Path(sys.argv[2]), url=sys.argv[1], device="cpu",
    on_progress=lambda event: print(event.phase, flush=True),
)
print("finished", flush=True)
"""


def test_kill_9_then_rerun_gives_the_uninterrupted_warehouse(tmp_path):
    from filterdb.warehouse import migrate

    manifest = write_csv(tmp_path / "zoo.csv", tiny_zoo(tmp_path / "zoo", 40))
    reference = f"duckdb:///{tmp_path / 'reference.duckdb'}"
    migrate.upgrade(url=reference)
    assert invoke(reference, manifest).exit_code == 0
    killed = f"duckdb:///{tmp_path / 'killed.duckdb'}"
    migrate.upgrade(url=killed)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for stop_after in (7, 23):  # models done before the kill; each run adds some
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_MANIFEST, killed, str(manifest)],
            stdout=subprocess.PIPE, text=True, env=environment,
        )  # fmt: skip
        done = 0
        for line in child.stdout:
            done += line.strip() == "done"
            if done == stop_after or line.strip() == "writing" and done == stop_after - 1:
                break
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait()
        assert "finished" not in rest
        assert check.check(url=killed) == []
        assert 0 < len(snapshot(killed)) < 40
    assert invoke(killed, manifest).exit_code == 0
    assert snapshot(killed) == snapshot(reference)
