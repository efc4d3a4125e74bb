"""Startup of the CLI against the bare imports it cannot avoid (issue 8).

Baseline: ``python -c "import typer, sqlalchemy, duckdb"``, the libraries every command
needs. Measured, in the same run, as whole processes (median of ``--repeats`` runs each):

- ``filterdb --help``;
- ``filterdb query "SELECT count(*) FROM v_models"`` on a small DuckDB database (created
  before timing, with ``filterdb init``).

Target: both ratios at most 1.5. Prints the figures; asserts nothing::

    .venv/bin/python bench/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.5
FILTERDB = Path(sys.executable).with_name("filterdb")


def wall_seconds(command: list[str], *, repeats: int) -> float:
    """Median wall-clock seconds of ``command`` as a fresh process (one warm-up run first)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        url = f"duckdb:///{Path(work) / 'small.duckdb'}"
        subprocess.run([str(FILTERDB), "--db", url, "init"], check=True, capture_output=True)
        baseline = wall_seconds(
            [sys.executable, "-c", "import typer, sqlalchemy, duckdb"], repeats=args.repeats
        )
        print(f"baseline: import typer, sqlalchemy, duckdb   {baseline * 1e3:7.0f} ms")
        for label, command in (
            ("filterdb --help", [str(FILTERDB), "--help"]),
            (
                'filterdb query "SELECT count(*) FROM v_models"',
                [str(FILTERDB), "--db", url, "query", "SELECT count(*) FROM v_models"],
            ),
        ):
            seconds = wall_seconds(command, repeats=args.repeats)
            ratio = seconds / baseline
            verdict = "met" if ratio <= TARGET_RATIO else "missed"
            print(
                f"{label:44s} {seconds * 1e3:7.0f} ms  ratio {ratio:.2f} "
                f"(target <= {TARGET_RATIO}: {verdict})"
            )


if __name__ == "__main__":
    main()
