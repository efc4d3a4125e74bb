"""Model-zoo benchmark: 1,000 small checkpoints from one manifest into DuckDB (issue 10).

A population of small CNNs (six 3x3 convs, 9,776 filters each, about the size of a face
detector's) is saved as torch checkpoints with a manifest listing them. Each of these runs
in a fresh process (imports excluded from the time):

- baseline: for every file, ``torch.load`` + every 3x3 weight reshaped into one (n, 9)
  array + ``numpy.save`` (PLATFORM.md, "Reference figures");
- filterdb: ``ingest_manifest`` of the manifest into a fresh DuckDB file (hash, load,
  extraction, one transaction per model, ingest log).

Targets (issue 10, 2-core machine): at least 25 models/s, ratio (filterdb seconds over
baseline seconds) at most 3.

    .venv/bin/python bench/zoo.py            # 1,000 models
    .venv/bin/python bench/zoo.py --quick    # 50 models: does the script work?
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common

# (out, in) channels of the six 3x3 convs: 48 + 512 + 1,024 + 2,048 + 4,096 + 2,048 filters.
CONVS = ((16, 3), (32, 16), (32, 32), (64, 32), (64, 64), (32, 64))
TARGETS = (
    ("models/s into DuckDB >= 25", "models_per_second", 25.0, False),
    ("ratio <= 3", "ratio", 3.0, True),
)


def write_zoo(*, directory: str, n_models: int) -> dict:
    """``n_models`` seeded checkpoints and ``manifest.csv`` listing them."""
    import csv

    import torch

    root = Path(directory)
    (root / "zoo").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_models):
        generator = torch.Generator().manual_seed(i)
        state_dict = {
            f"conv{j}.weight": torch.randn(c_out, c_in, 3, 3, generator=generator)
            for j, (c_out, c_in) in enumerate(CONVS)
        }
        state_dict["fc.weight"] = torch.randn(10, CONVS[-1][0], generator=generator)
        torch.save(state_dict, root / "zoo" / f"m{i:05d}.pt")
        rows.append({"name": f"zoo-{i:05d}", "path": f"zoo/m{i:05d}.pt", "training": "normal"})
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"n_models": n_models, "n_filters": n_models * sum(o * i for o, i in CONVS)}


def baseline(*, directory: str) -> dict:
    """torch.load, the 3x3 weights into one (n, 9) array, numpy.save, file by file."""
    import numpy as np
    import torch

    paths = sorted((Path(directory) / "zoo").glob("*.pt"))
    out = Path(directory) / "baseline.npy"
    n_filters = 0
    with common.Stopwatch() as watch:
        for path in paths:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            filters = torch.cat(
                [t.reshape(-1, 9) for t in state_dict.values() if common.is_3x3_weight(t)]
            ).numpy()
            np.save(out, filters)
            n_filters += len(filters)
    return {"seconds": watch.seconds, "rss_before": watch.rss_before, "n_filters": n_filters}


def ingest_zoo(*, directory: str, url: str) -> dict:
    """``ingest_manifest`` of the zoo's manifest into ``url``."""
    from filterdb.ingest.manifest import ingest_manifest

    with common.Stopwatch() as watch:
        run = ingest_manifest(Path(directory) / "manifest.csv", url=url, device="cpu")
    return {
        "seconds": watch.seconds,
        "rss_before": watch.rss_before,
        "n_ingested": sum(r.status == "ingested" for r in run.results),
        "n_failed": len(run.failures),
        "n_filters": sum(r.n_filters for r in run.results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 models instead of 1,000")
    parser.add_argument("--models", type=int, default=None, help="number of models")
    parser.add_argument("--keep", type=Path, default=None, help="keep files in this directory")
    args = parser.parse_args()
    n_models = args.models or (50 if args.quick else 1000)
    common.print_machine(device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        script = Path(__file__)
        setup = common.measure(script, "write_zoo", directory=str(work), n_models=n_models)
        print(f"zoo: {setup['n_models']} checkpoints, {setup['n_filters']:,} filters")
        base = common.measure(script, "baseline", directory=str(work))
        print(f"baseline: {base['seconds']:.2f} s")
        with common.fresh_database(None, work, "zoo") as url:
            result = common.measure(script, "ingest_zoo", directory=str(work), url=url)
        print(f"filterdb: {result['seconds']:.2f} s, {result['n_failed']} failed")
    row = {
        "models_per_second": n_models / result["seconds"],
        "ratio": result["seconds"] / base["seconds"],
    }
    print()
    print(
        common.markdown_table(
            ["what", "models", "seconds", "models/s", "filters/s", "ratio", "peak"],
            [
                [
                    "baseline (torch.load + reshape + numpy.save)",
                    n_models,
                    f"{base['seconds']:.2f}",
                    f"{n_models / base['seconds']:.1f}",
                    common.format_rate(base["n_filters"] / base["seconds"]),
                    "1.00",
                    common.format_bytes(base["peak_rss"]),
                ],
                [
                    "filterdb ingest manifest (DuckDB)",
                    n_models,
                    f"{result['seconds']:.2f}",
                    f"{row['models_per_second']:.1f}",
                    common.format_rate(result["n_filters"] / result["seconds"]),
                    f"{row['ratio']:.2f}",
                    common.format_bytes(result["peak_rss"]),
                ],
            ],
        )
    )
    print()
    for target, key, limit, at_most in TARGETS:
        shown = f"{row[key]:.2f}"
        common.print_target(target, shown, row[key], limit, at_most=at_most)


if __name__ == "__main__":
    main()
