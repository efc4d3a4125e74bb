"""Report benchmark: the robust-vs-normal report of 100 cached models.

Setup: 100 quarter-width ResNet-18s in a fresh DuckDB file, half adversarially trained,
half normally, one architecture and training dataset (so they pair), metrics cached (see
``common.populate_cached_models``). Then, in a fresh process (imports excluded),
``filterdb.reports.robust_vs_normal.write_robust_vs_normal_report(url, out_dir=...)``
runs several times, each into a new directory. Target (issue 5): under 5 s on a 2-core machine.

    .venv/bin/python bench/report.py            # 100 models
    .venv/bin/python bench/report.py --quick    # 10 models: does it work?
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import common

MAX_SECONDS = 5.0
REPEATS = 3


def write_reports(*, url: str, out_dir: str, repeats: int) -> dict:
    """Write the report ``repeats`` times, into ``out_dir/0``, ``out_dir/1``, ..."""
    from filterdb.reports.robust_vs_normal import write_robust_vs_normal_report

    seconds, cpu, result = [], [], None
    for attempt in range(repeats):
        # CPU seconds beside wall seconds: on a shared machine (load 5-10) the wall time
        # mostly measures the other jobs. The figure worker's CPU counts too, once the
        # finished worker is reaped (active_children joins it).
        cpu_start = time.process_time() + _children_cpu()
        with common.Stopwatch() as watch:
            result = write_robust_vs_normal_report(url=url, out_dir=Path(out_dir) / str(attempt))
        seconds.append(watch.seconds)
        while multiprocessing.active_children():
            time.sleep(0.05)
        cpu.append(time.process_time() + _children_cpu() - cpu_start)
    files = sorted(Path(out_dir, "0").iterdir())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "n_pairs": len(result.pairing.pairs),
        "files": [(path.name, path.stat().st_size) for path in files],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 models")
    parser.add_argument("--models", type=int, help="cached models (default 100)")
    parser.add_argument("--keep", type=Path, help="keep checkpoints, database and reports here")
    args = parser.parse_args()
    n_models = args.models or (10 if args.quick else 100)

    common.print_machine(device="cpu")
    with tempfile.TemporaryDirectory(prefix="filterdb-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{n_models} cached models: ingesting and computing metrics (setup) ...", flush=True)
        with common.fresh_database(None, work, "report") as url:
            setup = common.populate_cached_models(url, work / "small", n_models=n_models)
            print(common.describe_setup(setup), flush=True)
            result = common.measure(
                Path(__file__),
                "write_reports",
                url=url,
                out_dir=str(work / "reports"),
                repeats=REPEATS,
            )
    seconds = result["seconds"]
    median = statistics.median(seconds)
    print(
        common.markdown_table(
            ["report file", "size"],
            [[name, common.format_bytes(size)] for name, size in result["files"]],
        )
    )
    shown = ", ".join(f"{s:.2f}" for s in seconds)
    cpu = ", ".join(f"{s:.2f}" for s in result["cpu_seconds"])
    print(f"write_robust_vs_normal_report: {result['n_pairs']} pairs, runs {shown} s")
    print(f"CPU seconds (all threads, the figure worker included) of each run: {cpu}")
    print(f"peak RSS {common.format_bytes(result['peak_rss'])} (all runs, imports included)")
    outcome = common.verdict(median, MAX_SECONDS, at_most=True)
    print(
        f"target report of {n_models} models < {MAX_SECONDS:g} s: median {median:.2f} s {outcome}"
    )


if __name__ == "__main__":
    main()
