"""Metrics benchmark: every SPEC section 5 metric from DuckDB, against a plain torch loop.

1. A WideResNet-70-16 (zoo architecture, seeded weights: 67 3x3 layers, 29,560,880
   filters) is ingested into a fresh DuckDB file as a plain checkpoint. In fresh processes:
   - baseline: a straightforward per-layer torch loop over the in-memory 3x3 weights
     (loaded before the clock starts) computing the same metrics in float64;
   - filterdb: ``filterdb.metrics.cache.compute_metrics(url, recompute=True, device=...)``, which
     reads every layer back from the database and writes the cache.
   Targets (issue 4): ratio filterdb / baseline time <= 1.0; peak memory above imports
   <= 2 x the model's float32 3x3 weights. The two results are also compared value by value.
   Also (issue 14): on PostgreSQL (``--postgres URL``) the same ``compute_metrics``, and on
   each backend the per-layer one-pass sums in SQL (count, max |w|, 9 sums, 45 sums of
   products) against fetching the rows (what the metrics read); ``ingest --metrics``
   against ``ingest`` alone (target ratio <= 1.3); and whole processes on the same
   checkpoint: ``filterdb metrics --recompute`` against a torchconvquality script
   (torch.load, then ``measure_conv_weight_quality`` on every 3x3 weight: the library a
   user would otherwise pick; target ratio <= 0.6). torchconvquality is on PyPI
   (``pip install torchconvquality``, bench only); without it that line is skipped.
2. 100 cached models (quarter-width ResNet-18s, each ingested and computed; setup), then
   ``filterdb.connect(url).layer_metrics()`` timed in a fresh process: median of several
   calls after a first one. Target < 100 ms.

    .venv/bin/python bench/metrics.py            # full size (several minutes)
    .venv/bin/python bench/metrics.py --quick    # WRN-28-10 and 10 models: does it work?
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import tempfile
from pathlib import Path

import common

MAX_RATIO = 0.9
MAX_WHOLE_PROCESS_RATIO = 0.6
MAX_INGEST_METRICS_RATIO = 1.3
MAX_WORK_OVER_WEIGHTS = 2.0
MAX_READ_SECONDS = 0.100
SPARSITY_EPS = 0.01
READ_REPEATS = 9
FILTERDB = Path(sys.executable).with_name("filterdb")
# The logistic fit of the entropy of m random filters (SPEC section 5).
H_MAX_L, H_MAX_X0, H_MAX_K, H_MAX_B = 1.2618047, 2.30436435, 0.88767525, -0.31050834


def baseline(*, checkpoint: str, device: str) -> dict:
    """The researcher's loop: for each 3x3 weight in memory, every metric in float64."""
    import torch

    from filterdb.device import resolve_device

    target = resolve_device(device)
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {
        key.removesuffix(".weight"): t.to(target)
        for key, t in state_dict.items()
        if common.is_3x3_weight(t)
    }
    del state_dict
    with common.Stopwatch() as watch:
        values = {name: baseline_layer_metrics(weight) for name, weight in weights.items()}
    return {"seconds": watch.seconds, "rss_before": watch.rss_before, "values": values}


def baseline_layer_metrics(weight) -> dict[str, float | None]:
    """SPEC section 5 for one layer, written the obvious way with torch."""
    import torch

    w = weight.double()
    filters = w.reshape(-1, 9)
    peaks = filters.abs().amax(dim=1)
    sparse = peaks <= SPARSITY_EPS * peaks.max()
    kept = filters[~sparse]
    values = {"sparsity": sparse.double().mean().item()}
    for name, subset in (
        ("variance_entropy", filters),
        ("variance_entropy_clean", kept),
        ("variance_entropy_scaled", kept / kept.abs().amax(dim=1, keepdim=True)),
    ):
        m = subset.shape[0]
        entropy = None
        if m >= 2:
            variances = torch.linalg.eigvalsh(torch.cov(subset.T)).clamp(min=0)
            shares = variances[variances > 0] / variances.sum()
            entropy = -(shares * torch.log10(shares)).sum().item() if len(shares) else 0.0
        h_max = H_MAX_L / (1 + math.exp(-H_MAX_K * (math.log2(max(m, 1)) - H_MAX_X0))) + H_MAX_B
        values[name] = entropy
        values[f"{name}_norm"] = entropy / h_max if entropy is not None and m >= 3 else None
    kernels = w.reshape(w.shape[0], -1)
    norms = kernels.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, kernels / norms, kernels)
    gram = unit @ unit.T
    n_out = w.shape[0]
    identity = torch.eye(n_out, dtype=gram.dtype, device=gram.device)
    values["orthogonality"] = 1 - ((gram - identity).abs().sum() / (n_out * (n_out - 1))).item()
    values["l1"] = w.abs().sum().item()
    values["l2"] = w.norm().item()
    return values


def filterdb_metrics(*, url: str, device: str) -> dict:
    """``compute_metrics`` over the whole database, recomputing everything."""
    from filterdb.metrics import cache

    with common.Stopwatch() as watch:
        result = cache.compute_metrics(url=url, recompute=True, device=device)
    return {"seconds": watch.seconds, "rss_before": watch.rss_before, "n_layers": result.n_layers}


def ingest_checkpoint(*, path: str, url: str, metrics: bool = False, device: str = "auto") -> dict:
    """The checkpoint into ``url`` as a plain file (every 3x3 layer, key order).

    ``metrics``: as ``ingest --metrics`` (every layer metric cached with the model).
    """
    from filterdb.ingest.pipeline import ingest
    from filterdb.ingest.sources.checkpoint import checkpoint_candidate
    from filterdb.metrics.cache import IngestMetrics

    hook = IngestMetrics(device=device) if metrics else None
    with common.Stopwatch() as watch:
        result = ingest(checkpoint_candidate(Path(path), name="bench"), url=url, metrics=hook)
    return {"seconds": watch.seconds, "n_filters": result.n_filters}


def sql_sums(*, url: str) -> dict:
    """Per-layer one-pass sums in SQL: count, max |w|, 9 sums, 45 sums of products."""
    import sqlalchemy as sa

    weights = [f"CAST(w{i} AS DOUBLE PRECISION)" for i in range(9)]
    terms = ["count(*)", "max(" + "greatest(" + ", ".join(f"abs({w})" for w in weights) + "))"]
    terms += [f"sum({w})" for w in weights]
    terms += [f"sum({a} * {b})" for i, a in enumerate(weights) for b in weights[i:]]
    statement = f"SELECT layer_id, {', '.join(terms)} FROM filter GROUP BY layer_id"
    from filterdb.warehouse.database import engine_for

    with engine_for(url) as engine, engine.connect() as connection, common.Stopwatch() as watch:
        rows = connection.execute(sa.text(statement)).all()
    return {"seconds": watch.seconds, "n_layers": len(rows)}


def fetch_rows(*, url: str) -> dict:
    """Every layer's filters read back as (n, 9) float32 arrays, as the metrics read them."""
    from filterdb.warehouse.database import engine_for, read_frame
    from filterdb.warehouse.read import iter_layer_filters

    with engine_for(url) as engine, engine.connect() as connection:
        shapes = read_frame(connection, "SELECT layer_id, n_filters FROM layer ORDER BY layer_id")
        with common.Stopwatch() as watch:
            n = sum(len(f) for f in iter_layer_filters(connection, shapes.iter_rows()))
    return {"seconds": watch.seconds, "n_filters": n}


def whole_process(*, command: list[str]) -> dict:
    """Wall-clock seconds of ``command`` as a fresh process, startup included."""
    import subprocess
    import time

    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return {"seconds": time.perf_counter() - start}


# The straightforward torchconvquality script a user would write for a state_dict file.
TORCHCONVQUALITY_SCRIPT = """
import sys, torch
from torchconvquality import measure_conv_weight_quality
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["state_dict"]
values = {k: measure_conv_weight_quality(w) for k, w in state.items()
          if w.dim() == 4 and tuple(w.shape[2:]) == (3, 3)}
print(len(values))
"""


def read_layer_metrics(*, url: str, repeats: int) -> dict:
    """Time ``filterdb.connect(url).layer_metrics()``: a first call, then ``repeats`` more."""
    import filterdb

    database = filterdb.connect(url)
    seconds, rows = [], 0
    for _ in range(repeats + 1):
        with common.Stopwatch() as watch:
            rows = database.layer_metrics().height
        seconds.append(watch.seconds)
    return {"first": seconds[0], "seconds": seconds[1:], "rows": rows}


def largest_difference(url: str, expected: dict[str, dict]) -> tuple[float, str]:
    """Largest relative difference between the cache and the baseline, and where."""
    import filterdb

    frame = filterdb.connect(url).layer_metrics()
    worst, where = 0.0, "none"
    for row in frame.iter_rows(named=True):
        for metric, value in expected[row["layer_name"]].items():
            got = row[metric]
            if (got is None) != (value is None):
                return math.inf, f"{row['layer_name']} {metric}: {got} vs {value}"
            if value is not None:
                difference = abs(got - value) / max(abs(value), 1e-300)
                if difference > worst:
                    worst, where = difference, f"{row['layer_name']} {metric}"
    return worst, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="WRN-28-10 and 10 models")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", type=int, help="cached models to read (default 100)")
    parser.add_argument("--keep", type=Path, help="keep checkpoints and databases here")
    parser.add_argument("--postgres", help="also measure on this PostgreSQL server (URL)")
    parser.add_argument("--skip-read", action="store_true", help="skip part 2")
    args = parser.parse_args()
    size = "28-10" if args.quick else "70-16"
    n_models = args.models or (10 if args.quick else 100)

    common.print_machine(device=args.device)
    with tempfile.TemporaryDirectory(prefix="filterdb-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        bench_compute(size, work, device=args.device, postgres=args.postgres)
        if not args.skip_read:
            bench_read(n_models, work)


def bench_compute(size: str, work: Path, *, device: str, postgres: str | None) -> None:
    """Part 1: every metric of one big model, filterdb against the baseline loop."""
    script, label = Path(__file__), common.ZOO_SIZES[size][1]
    print(f"{label}: writing a seeded checkpoint and ingesting it (setup) ...", flush=True)
    checkpoint = common.measure(
        common.__file__, "write_zoo_checkpoint", size=size, model_dir=str(work / "models")
    )
    with common.fresh_database(None, work, f"metrics-{size}") as url:
        setup = common.measure(script, "ingest_checkpoint", path=checkpoint["path"], url=url)
        print(f"{label}: baseline torch loop ...", flush=True)
        base = common.measure(script, "baseline", checkpoint=checkpoint["path"], device=device)
        print(f"{label}: filterdb compute_metrics ...", flush=True)
        ours = common.measure(script, "filterdb_metrics", url=url, device=device)
        difference, where = largest_difference(url, base["values"])
        print(f"{label}: SQL sums vs fetching the rows, whole processes ...", flush=True)
        sums = {"duckdb": common.measure(script, "sql_sums", url=url)}
        fetch = {"duckdb": common.measure(script, "fetch_rows", url=url)}
        whole = common.measure(
            script,
            "whole_process",
            command=[str(FILTERDB), "--db", url, "metrics", "--recompute", "-q"]
            + ["--device", device],
        )
        bare_torch = common.measure(
            script, "whole_process", command=[sys.executable, "-c", "import torch"]
        )
        tcq = None
        if importlib.util.find_spec("torchconvquality") is not None:
            command = [sys.executable, "-c", TORCHCONVQUALITY_SCRIPT, checkpoint["path"]]
            tcq = common.measure(script, "whole_process", command=command)
    print(f"{label}: ingest alone and ingest --metrics, fresh databases ...", flush=True)
    with common.fresh_database(None, work, f"ingest-{size}") as url:
        alone = common.measure(script, "ingest_checkpoint", path=checkpoint["path"], url=url)
    with common.fresh_database(None, work, f"ingest-metrics-{size}") as url:
        with_metrics = common.measure(
            script,
            "ingest_checkpoint",
            path=checkpoint["path"],
            url=url,
            metrics=True,
            device=device,
        )
    on_postgres = None
    if postgres:
        print(f"{label}: PostgreSQL: ingest, compute_metrics, SQL sums, fetch ...", flush=True)
        with common.fresh_database(postgres, work, f"metrics-{size}") as url:
            common.measure(script, "ingest_checkpoint", path=checkpoint["path"], url=url)
            on_postgres = common.measure(script, "filterdb_metrics", url=url, device=device)
            sums["postgresql"] = common.measure(script, "sql_sums", url=url)
            fetch["postgresql"] = common.measure(script, "fetch_rows", url=url)

    weights_bytes = checkpoint["n_filters"] * 9 * 4
    ratio = ours["seconds"] / base["seconds"]
    rows = []
    for name, result in (("baseline torch loop", base), ("filterdb compute_metrics", ours)):
        work_rss = result["peak_rss"] - result["rss_before"]
        result["work_over_weights"] = work_rss / weights_bytes
        rows.append(
            [
                name,
                f"{result['seconds']:.2f}",
                f"{result['seconds'] / base['seconds']:.2f}",
                common.format_bytes(result["peak_rss"]),
                common.format_bytes(result["rss_before"]),
                f"{result['work_over_weights']:.2f}x",
            ]
        )
    print()
    print(
        f"{label}: {checkpoint['n_layers']} 3x3 layers, {checkpoint['n_filters']:,} filters, "
        f"{common.format_bytes(weights_bytes)} of float32 3x3 weights; "
        f"setup ingest {setup['seconds']:.1f} s"
    )
    print(
        common.markdown_table(
            ["metrics of every layer", "s", "ratio", "peak RSS", "imports", "work/weights"], rows
        )
    )
    print("imports: RSS before the timed work (the baseline's includes the loaded weights);")
    print("work/weights: (peak RSS - imports) over the float32 3x3 weights.")
    print(f"largest relative difference filterdb vs baseline: {difference:.1e} ({where})")
    print()
    common.print_target(f"ratio <= {MAX_RATIO:g}", f"{ratio:.2f}", ratio, MAX_RATIO, at_most=True)
    share = ours["work_over_weights"]
    common.print_target(
        f"peak memory above imports <= {MAX_WORK_OVER_WEIGHTS:g}x weights",
        f"{share:.2f}x",
        share,
        MAX_WORK_OVER_WEIGHTS,
        at_most=True,
    )
    if on_postgres is not None:
        print(
            f"compute_metrics on PostgreSQL: {on_postgres['seconds']:.2f} s, ratio "
            f"{on_postgres['seconds'] / base['seconds']:.2f} against the same baseline "
            f"(DuckDB {ours['seconds']:.2f} s)"
        )
    for backend in sums:
        print(
            f"{backend}: per-layer sums in SQL {sums[backend]['seconds']:.2f} s vs fetching "
            f"the rows {fetch[backend]['seconds']:.2f} s (orthogonality needs the rows)"
        )
    ingest_ratio = with_metrics["seconds"] / alone["seconds"]
    common.print_target(
        f"ingest --metrics / ingest <= {MAX_INGEST_METRICS_RATIO:g}",
        f"{with_metrics['seconds']:.2f} s / {alone['seconds']:.2f} s = {ingest_ratio:.2f}",
        ingest_ratio,
        MAX_INGEST_METRICS_RATIO,
        at_most=True,
    )
    print(
        f"whole process `filterdb metrics --recompute`: {whole['seconds']:.2f} s; "
        f"`python -c 'import torch'` alone: {bare_torch['seconds']:.2f} s"
    )
    if tcq is None:
        print("torchconvquality is not installed (pip install torchconvquality): no ratio")
    else:
        whole_ratio = whole["seconds"] / tcq["seconds"]
        common.print_target(
            f"whole process vs torchconvquality <= {MAX_WHOLE_PROCESS_RATIO:g}",
            f"{whole['seconds']:.2f} s / {tcq['seconds']:.2f} s = {whole_ratio:.2f}",
            whole_ratio,
            MAX_WHOLE_PROCESS_RATIO,
            at_most=True,
        )
    print()


def bench_read(n_models: int, work: Path) -> None:
    """Part 2: reading ``v_layer_metrics`` of ``n_models`` cached models."""
    print(f"{n_models} cached models: ingesting and computing metrics (setup) ...", flush=True)
    with common.fresh_database(None, work, "metrics-read") as url:
        setup = common.populate_cached_models(url, work / "small", n_models=n_models)
        result = common.measure(Path(__file__), "read_layer_metrics", url=url, repeats=READ_REPEATS)
    median = statistics.median(result["seconds"])
    print(common.describe_setup(setup))
    print(
        f"layer_metrics(): {result['rows']} rows, first call {result['first'] * 1e3:.0f} ms, "
        f"median of the next {READ_REPEATS} {median * 1e3:.0f} ms "
        f"(min {min(result['seconds']) * 1e3:.0f}, max {max(result['seconds']) * 1e3:.0f})"
    )
    common.print_target(
        f"layer_metrics() of {n_models} models < {MAX_READ_SECONDS * 1e3:.0f} ms",
        f"median {median * 1e3:.0f} ms",
        median,
        MAX_READ_SECONDS,
        at_most=True,
    )


if __name__ == "__main__":
    main()
