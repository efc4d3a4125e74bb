"""The same work with --engine local and --engine dask-local:2, in one run: metrics, PCA,
drift.

Usage: .venv/bin/python bench/scale.py [--filters 30000000] [--workers 2]

Builds one synthetic model of WideResNet-70-16 shapes (640x640 3x3 convs, random normal
float32, each output channel scaled by a random factor so that some filters are sparse)
with about ``--filters`` filters, ingests it into a fresh DuckDB file, writes the lake,
then times locally (``--device cpu``) and on a cluster shaped like ``dask-local:N`` (N
worker processes, one thread each, on 127.0.0.1; its start is counted in the Dask time):
all metrics (recompute, lake current), ``pca --group all`` and ``drift --by depth``. It
checks the metric caches are equal bit for bit and PCA/drift to 1e-12 relative, prints
each Dask task kind's count and compute seconds (the scheduler's task stream), and
projects the time for CNN Filter DB's 1.4 billion filters on N workers.

Model of the projection: the work is linear in filters and split in independent per-file
tasks (files of about 8M filters, a layer never split; a file is read and scaled once
and its arrays stay on its worker for the passes), so per kind of work
T(N) = fixed + 1.4e9 x w / N, where w is the tasks' compute seconds per filter summed over
the kind's tasks (measured: sum of task durations / filters) and fixed is the engine's cost
with nothing to compute (client, cluster, lake check) plus the reduce steps (8 partials a
step: log_8(files) steps of the measured combine time, a few ms here). It assumes the lake's
storage feeds N workers at the rate one worker reads here, and 1.4e9/8e6 = 175 files, so
N above 175 gains nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from filterdb.analysis import pca_drift
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.lake.write import sync_lake
from filterdb.metrics import cache
from filterdb.warehouse import migrate
from filterdb.warehouse.database import engine_for, read_frame

CNN_FILTER_DB_FILTERS = 1.4e9
FILE_FILTERS = 8e6  # about what the lake writer puts in a file (FILE_ROWS)


def cache_bits(url: str) -> list[tuple]:
    with engine_for(url) as engine, engine.connect() as connection:
        frame = read_frame(
            connection,
            "SELECT layer_id, metric, params, value, support FROM metric_cache ORDER BY 1, 2, 3",
        )
    return [(*r[:3], None if r[3] is None else float(r[3]).hex(), r[4]) for r in frame.iter_rows()]


def timed(step):
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started


def worst_relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300)))


def main() -> None:
    import distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=30_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="filterdb-scale-"))
    n_layers = max(1, round(args.filters / (640 * 640)))
    torch.manual_seed(0)
    state = {
        f"conv{i}.weight": torch.randn(640, 640, 3, 3) * torch.rand(640, 1, 1, 1)
        for i in range(n_layers)
    }
    torch.save(state, folder / "wide.pt")
    del state
    url = f"duckdb:///{folder / 'bench.duckdb'}"
    migrate.upgrade(url=url)
    _, t_ingest = timed(
        lambda: ingest(checkpoint_candidate(folder / "wide.pt", name="wide"), url=url, device="cpu")
    )
    n_filters = n_layers * 640 * 640
    lake = folder / "lake"
    manifest, t_lake = timed(lambda: sync_lake(url=url, lake=lake).manifest)
    n_files = sum(len(m["files"]) for m in manifest["models"].values())
    load = os.getloadavg()
    print(f"{n_filters:,} filters in {n_layers} layers, {n_files} lake files ({folder})")
    print(f"load average at start {load[0]:.1f} (1 min), {load[1]:.1f} (5 min); 2 cores")
    print(f"ingest {t_ingest:.1f} s; lake export {t_lake:.1f} s")

    local = {}
    _, local["metrics"] = timed(lambda: cache.compute_metrics(url=url, device="cpu"))
    local_bits = cache_bits(url)
    pca_local, local["pca"] = timed(lambda: pca_drift.pca_group(url=url, group="all"))
    drift_local, local["drift"] = timed(lambda: pca_drift.drift(url=url, by="depth"))

    dask, streams = {}, {}
    started = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        t_start = time.perf_counter() - started
        engine = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
        runs = {
            "metrics": lambda: cache.compute_metrics(
                url=url, engine=engine, lake=lake, recompute=True
            ),
            "pca": lambda: pca_drift.pca_group(url=url, group="all", engine=engine, lake=lake),
            "drift": lambda: pca_drift.drift(url=url, by="depth", engine=engine, lake=lake),
        }
        results = {}
        for work, run in runs.items():
            with distributed.get_task_stream(client=client) as stream:
                results[work], dask[work] = timed(run)
            streams[work] = per_kind(stream.data)
        same = cache_bits(url) == local_bits
        # The engine's fixed cost: a call with nothing to compute (client, stale keys, lake).
        _, idle = timed(lambda: cache.compute_metrics(url=url, engine=engine, lake=lake))

    print(f"cluster start ({args.workers} worker processes) {t_start:.1f} s, counted in metrics")
    for work in local:
        total = dask[work] + (t_start if work == "metrics" else 0.0)
        print(
            f"{work}: local {local[work]:.1f} s, dask {total:.1f} s, ratio "
            f"{total / local[work]:.2f} (target <= 1.25)"
        )
    print(f"metric caches equal bitwise: {same}")
    pca_dask, drift_dask = results["pca"], results["drift"]
    off_diagonal = ~np.eye(len(drift_local.names), dtype=bool)
    pca_difference = worst_relative(pca_local.ratios, pca_dask.ratios)
    drift_difference = worst_relative(
        drift_local.matrix[off_diagonal], drift_dask.matrix[off_diagonal]
    )
    print(
        f"worst relative difference: pca ratios {pca_difference:.1e}, drift {drift_difference:.1e}"
    )
    print(f"engine overhead (nothing to compute) {idle:.1f} s")
    steps = math.ceil(math.log(CNN_FILTER_DB_FILTERS / FILE_FILTERS, 8))
    print("tasks (compute seconds on the workers): kind, count, total, mean, max")
    for work, kinds in streams.items():
        for name, seconds in sorted(kinds.items()):
            print(
                f"  {work:8s}{name:18s}{len(seconds):5d}{sum(seconds):9.2f}"
                f"{np.mean(seconds):9.3f}{max(seconds):9.3f}"
            )
        combines = [k for k in kinds if k.startswith("combine")]
        per_file = [k for k in kinds if k not in combines]
        per_filter = sum(sum(kinds[k]) for k in per_file) / n_filters
        reduce_step = sum(max(kinds[k]) for k in combines)
        fixed = idle + steps * reduce_step
        projection = ", ".join(
            f"{n} workers {(fixed + CNN_FILTER_DB_FILTERS * per_filter / n) / 60:.1f} min"
            for n in (2, 16, 64, 175)
        )
        print(f"  {work}: {per_filter * 1e9:.1f} worker-s per 1e9 filters; 1.4e9: {projection}")


def per_kind(stream: list[dict]) -> dict[str, list[float]]:
    """Compute seconds of each task, by the task's function name."""
    import distributed

    kinds: dict[str, list[float]] = defaultdict(list)
    for task in stream:
        name = distributed.utils.key_split(task["key"])
        kinds[name] += [
            s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute"
        ]
    return kinds


if __name__ == "__main__":
    main()
