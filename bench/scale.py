"""The same metrics work with --engine local and --engine dask-local:2, in one run.

Usage: .venv/bin/python bench/scale.py [--filters 30000000] [--workers 2]

Builds one synthetic model of WideResNet-70-16 shapes (640x640 3x3 convs, random normal
float32) with about ``--filters`` filters, ingests it into a fresh DuckDB file, writes the
lake, then times all metrics locally (``--device cpu``) and on a LocalCluster (recompute,
lake already current), checks the two caches are equal bit for bit, and projects the Dask
time for CNN Filter DB's 1.4 billion filters on N workers.

Model of the projection: metrics cost is linear in filters (per-layer work; the 9x9
scatter and C_out x C_out Gram are per layer), tasks are independent files of about
8M filters, so T(N) = client overhead + 1.4e9 x (seconds per filter per worker) / N,
with seconds per filter per worker measured here as (dask time - overhead) x workers /
filters. It assumes the lake's storage feeds N workers at the rate one worker reads here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.lake.write import sync_lake
from filterdb.metrics import cache
from filterdb.warehouse import migrate
from filterdb.warehouse.database import engine_for, read_frame

CNN_FILTER_DB_FILTERS = 1.4e9


def cache_bits(url: str) -> list[tuple]:
    with engine_for(url) as engine, engine.connect() as connection:
        frame = read_frame(
            connection,
            "SELECT layer_id, metric, params, value, support FROM metric_cache ORDER BY 1, 2, 3",
        )
    return [(*r[:3], None if r[3] is None else float(r[3]).hex(), r[4]) for r in frame.iter_rows()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, default=30_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="filterdb-scale-"))
    n_layers = max(1, round(args.filters / (640 * 640)))
    torch.manual_seed(0)
    state = {f"conv{i}.weight": torch.randn(640, 640, 3, 3) for i in range(n_layers)}
    torch.save(state, folder / "wide.pt")
    url = f"duckdb:///{folder / 'bench.duckdb'}"
    migrate.upgrade(url=url)
    ingest(checkpoint_candidate(folder / "wide.pt", name="wide"), url=url, device="cpu")
    n_filters = n_layers * 640 * 640
    lake = folder / "lake"

    started = time.perf_counter()
    sync_lake(url=url, lake=lake)
    t_lake = time.perf_counter() - started

    started = time.perf_counter()
    cache.compute_metrics(url=url, device="cpu")
    t_local = time.perf_counter() - started
    local = cache_bits(url)

    engine = f"dask-local:{args.workers}"
    started = time.perf_counter()
    cache.compute_metrics(url=url, engine=engine, lake=lake, recompute=True)
    t_dask = time.perf_counter() - started
    same = cache_bits(url) == local

    # The engine's fixed cost: the same call with nothing to compute (cluster start, stale
    # keys, lake check), measured the same way.
    started = time.perf_counter()
    cache.compute_metrics(url=url, engine=engine, lake=lake)
    t_idle = time.perf_counter() - started

    per_filter = max(t_dask - t_idle, 1e-9) * args.workers / n_filters
    print(f"{n_filters:,} filters in {n_layers} layers ({folder})")
    print(f"lake export {t_lake:.1f} s; local metrics {t_local:.1f} s; {engine} {t_dask:.1f} s")
    print(f"ratio dask/local {t_dask / t_local:.2f} (target <= 1.25); caches equal bitwise: {same}")
    print(f"engine overhead (nothing to compute) {t_idle:.1f} s")
    print(f"{per_filter * 1e9:.1f} s per 1e9 filters per worker; projection for 1.4e9 filters:")
    for workers in (2, 16, 64, 256):
        seconds = t_idle + CNN_FILTER_DB_FILTERS * per_filter / workers
        print(f"  {workers:4d} workers: {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
