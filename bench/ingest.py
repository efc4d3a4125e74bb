"""Ingest benchmark: zoo WideResNets into DuckDB, against torch.load + reshape + numpy.save.

For each size, a zoo architecture with seeded weights is saved in robustbench's cache
layout, then each of these runs in a fresh process (imports excluded from the time):

- baseline: ``torch.load`` of the checkpoint, every 3x3 weight reshaped into one (n, 9)
  array, ``numpy.save`` (PLATFORM.md, "Reference figures");
- ``robustbench``: ``zoo_selection`` + ``ingest`` into a fresh database, end to end
  (hash, robustbench's loader, graph trace, extraction, bulk load, commit);
- ``checkpoint``: the same file as a plain checkpoint without architecture (key order).

Targets (issue 14, 2-core machine; the ratio is baseline filters/s over filterdb
filters/s): through robustbench's cache layout ratio <= 2.0; as a plain checkpoint ratio
<= 1.5 and >= 3M filters/s; peak resident memory above what the process held after its
imports <= 1.5 x the checkpoint size (torch alone holds about 0.5 GB); the whole process's
peak <= 1.5 x the baseline process's peak.

    .venv/bin/python bench/ingest.py                  # WRN-28-10 and WRN-70-16, DuckDB
    .venv/bin/python bench/ingest.py --quick          # PreActResNet-18: does the script work?
    .venv/bin/python bench/ingest.py --url postgresql+psycopg://postgres@127.0.0.1:25432/postgres
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common

CHECKPOINT_PATH = "checkpoint"
ZOO_PATH = "robustbench"
# Issue 14: (what, row key, limit, at most?, the ingest path it applies to, or None: both).
# The ratio is baseline filters/s over filterdb filters/s; "work" memory is the peak above
# what the process held after its imports, "peak/base" the whole process's peak over the
# baseline process's peak.
TARGETS = (
    ("ratio <= 2.0", "ratio", 2.0, True, ZOO_PATH),
    ("ratio <= 1.5", "ratio", 1.5, True, CHECKPOINT_PATH),
    ("filters/s into DuckDB >= 3M/s", "rate", 3e6, False, CHECKPOINT_PATH),
    ("peak memory above imports <= 1.5x checkpoint", "work_over_checkpoint", 1.5, True, None),
    ("whole-process peak <= 1.5x the baseline's", "peak_over_baseline", 1.5, True, None),
)


def baseline(*, checkpoint: str, out: str) -> dict:
    """torch.load, all 3x3 weights into one (n, 9) array, numpy.save: the reference."""
    import numpy as np
    import torch

    with common.Stopwatch() as watch:
        state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        filters = torch.cat(
            [t.reshape(-1, 9) for t in state_dict.values() if common.is_3x3_weight(t)]
        ).numpy()
        np.save(out, filters)
    return {"seconds": watch.seconds, "rss_before": watch.rss_before, "n_filters": len(filters)}


def ingest_model(*, path: str, url: str, device: str, entry: str | None, model_dir: str) -> dict:
    """Ingest the checkpoint into ``url``: as zoo ``entry`` when given, else as a file."""
    from filterdb.ingest.pipeline import ingest
    from filterdb.ingest.sources.checkpoint import checkpoint_candidate
    from filterdb.ingest.sources.robustbench_compat import import_robustbench
    from filterdb.ingest.zoo_selection import zoo_selection
    from filterdb.warehouse.database import engine_for, read_frame

    import_robustbench()  # an import, excluded from the time like the baseline's
    with common.Stopwatch() as watch:
        if entry is None:
            candidate = checkpoint_candidate(Path(path), name="bench")
        else:
            (candidate,) = zoo_selection(
                dataset=common.ZOO_DATASET,
                threat_model=common.ZOO_THREAT_MODEL,
                names=[entry],
                model_dir=Path(model_dir),
            ).candidates
        result = ingest(candidate, url=url, device=device)
    with engine_for(url) as engine, engine.connect() as connection:
        phases = read_frame(
            connection,
            "SELECT seconds_read, seconds_extract, seconds_write FROM ingest_log "
            "WHERE status = 'ingested'",
        ).row(0)
    return {
        "seconds": watch.seconds,
        "rss_before": watch.rss_before,
        "n_filters": result.n_filters,
        "n_layers": result.n_layers,
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="28-10,70-16", help="comma-separated: 28-10, 70-16")
    parser.add_argument("--quick", action="store_true", help="PreActResNet-18 only")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--keep", type=Path, help="keep checkpoints and databases here")
    parser.add_argument("--url", help="also ingest into this PostgreSQL server (fresh DBs)")
    args = parser.parse_args()
    sizes = ["preact18"] if args.quick else args.sizes.split(",")
    unknown = [size for size in sizes if size not in common.ZOO_SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]}; use {', '.join(common.ZOO_SIZES)}")

    common.print_machine(device=args.device)
    with tempfile.TemporaryDirectory(prefix="filterdb-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = [row for size in sizes for row in bench_size(size, work, args)]
    print_results(rows)


def bench_size(size: str, work: Path, args: argparse.Namespace) -> list[dict]:
    """Baseline and every ingest path of one model size; one row each."""
    script, label = Path(__file__), common.ZOO_SIZES[size][1]
    model_dir = work / "models"
    print(f"{label}: writing a seeded checkpoint ...", flush=True)
    checkpoint = common.measure(
        common.__file__, "write_zoo_checkpoint", size=size, model_dir=str(model_dir)
    )
    print(f"{label}: baseline ...", flush=True)
    base = common.measure(
        script, "baseline", checkpoint=checkpoint["path"], out=str(work / f"{size}.npy")
    )
    rows = [{"path": "baseline", "backend": "numpy.save"} | base]
    for server in [None, args.url] if args.url else [None]:
        for path, entry in ((ZOO_PATH, checkpoint["entry"]), (CHECKPOINT_PATH, None)):
            with common.fresh_database(server, work, f"{size}-{path}") as url:
                backend = common.backend_label(url)
                print(f"{label}: {path} into {backend} ...", flush=True)
                result = common.measure(
                    script,
                    "ingest_model",
                    path=checkpoint["path"],
                    url=url,
                    device=args.device,
                    entry=entry,
                    model_dir=str(model_dir),
                )
                result["disk_bytes"] = common.duckdb_file_size(url)
            rows.append({"path": path, "backend": backend} | result)
    base_rate = base["n_filters"] / base["seconds"]
    for row in rows:
        row["model"], row["checkpoint"] = label, checkpoint
        row["rate"] = row["n_filters"] / row["seconds"]
        row["ratio"] = base_rate / row["rate"]
        # torch alone holds about 0.5 GB after import, robustbench and filterdb 0.9 GB, more
        # than a WRN-28-10 checkpoint: the memory target is on what the work adds.
        row["work_rss"] = row["peak_rss"] - row["rss_before"]
        row["work_over_checkpoint"] = row["work_rss"] / checkpoint["checkpoint_bytes"]
        row["peak_over_baseline"] = row["peak_rss"] / base["peak_rss"]
    return rows


def print_results(rows: list[dict]) -> None:
    """The table, the checkpoints, and one line per target and measured row."""
    headers = ["model", "path", "into", "filters", "s", "filters/s", "ratio"]
    headers += ["peak RSS", "peak/base", "imports", "work/ckpt", "read/extract/write s"]
    headers += ["B/filter"]
    table = [
        [
            row["model"],
            row["path"],
            row["backend"],
            f"{row['n_filters']:,}",
            f"{row['seconds']:.2f}",
            common.format_rate(row["rate"]),
            f"{row['ratio']:.2f}",
            common.format_bytes(row["peak_rss"]),
            f"{row['peak_over_baseline']:.2f}",
            common.format_bytes(row["rss_before"]),
            f"{row['work_over_checkpoint']:.2f}x",
            "/".join(f"{s:.2f}" for s in row["phases"]) if "phases" in row else "",
            f"{row['disk_bytes'] / row['n_filters']:.1f}" if row.get("disk_bytes") else "",
        ]
        for row in rows
    ]
    print()
    print(common.markdown_table(headers, table))
    print()
    print("ratio: baseline filters/s over filters/s. imports: RSS before the timed work.")
    print("work/ckpt: (peak RSS - imports) over the checkpoint file size. Checkpoints:")
    for row in rows:
        if row["path"] == "baseline":
            info = row["checkpoint"]
            print(
                f"  {row['model']}: {common.format_bytes(info['checkpoint_bytes'])}, "
                f"{info['n_layers']} 3x3 layers, {info['n_filters']:,} 3x3 filters"
            )
    print()
    for what, key, limit, at_most, applies_to in TARGETS:
        for row in rows:
            if row["backend"] == "duckdb" and applies_to in (None, row["path"]):
                value = row[key]
                shown = {"rate": common.format_rate(value), "ratio": f"{value:.2f}"}.get(
                    key, f"{value:.2f}x"
                )
                common.print_target(
                    f"{what} ({row['model']}, {row['path']})", shown, value, limit, at_most=at_most
                )


if __name__ == "__main__":
    main()
