"""CUDA extraction and per-layer metrics against the CPU path: identical rows, timings.

Runs on a GPU machine with only torch and numpy installed: filterdb's package __init__
(which needs polars, duckdb, ...) is bypassed, only the extraction and metric modules load.
Prints whether CUDA and CPU give bitwise-identical filter arrays and the timings of both.

    python bench/cuda_extract.py [--widen 16 --depth 70]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_filterdb_core() -> None:
    """Register ``filterdb`` as a bare namespace so submodules import without __init__."""
    package = types.ModuleType("filterdb")
    package.__path__ = [str(ROOT / "filterdb")]
    sys.modules["filterdb"] = package
    sys.path.insert(0, str(ROOT))


def wide_resnet_weights(depth: int, widen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """3x3 conv weights shaped like a WideResNet-depth-widen (no module needed)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    weights = {"conv1.weight": torch.randn(16, 3, 3, 3, generator=generator)}
    for stage in range(3):
        for block in range(blocks):
            c_in = widths[stage] if block == 0 else widths[stage + 1]
            c_out = widths[stage + 1]
            prefix = f"block{stage + 1}.layer.{block}"
            weights[f"{prefix}.conv1.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator)
            weights[f"{prefix}.conv2.weight"] = torch.randn(c_out, c_out, 3, 3, generator=generator)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=70)
    parser.add_argument("--widen", type=int, default=16)
    args = parser.parse_args()
    load_filterdb_core()
    from filterdb.ingest.extract import extract
    from filterdb.ingest.sources.base import ModelSource
    from filterdb.ingest.sources.checkpoint import convs_in_key_order
    from filterdb.metrics.layer import layer_metrics
    from filterdb.warehouse.records import ModelInfo

    weights = wide_resnet_weights(args.depth, args.widen)
    source = ModelSource(
        ModelInfo(name="wrn", source="bench"), convs_in_key_order(weights), "key_order"
    )
    n_filters = sum(w.shape[0] * w.shape[1] for w in weights.values())
    print(
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    print(f"WRN-{args.depth}-{args.widen}: {len(weights)} layers, {n_filters:,} filters")

    timings = {}
    results = {}
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    if len(devices) == 1:
        print("no CUDA device here: timing the CPU path only")
    for device in devices:
        extract(source, device=device)  # warm-up (CUDA context, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results[device] = extract(source, device=device)
        timings[f"extract {device}"] = time.perf_counter() - start

        start = time.perf_counter()
        metrics = [layer_metrics(w, device=device) for w in weights.values()]
        if device == "cuda":
            torch.cuda.synchronize()
        timings[f"metrics {device}"] = time.perf_counter() - start
        results[f"metrics {device}"] = metrics

    if len(devices) == 1:
        for name, seconds in timings.items():
            print(f"{name:>14}: {seconds:7.3f} s  ({n_filters / seconds / 1e6:6.1f} M filters/s)")
        return
    identical = all(
        a.filters.tobytes() == b.filters.tobytes() and a.max_abs == b.max_abs
        for a, b in zip(results["cpu"].layers, results["cuda"].layers, strict=True)
    )
    worst = 0.0
    for cpu_layer, cuda_layer in zip(results["metrics cpu"], results["metrics cuda"], strict=True):
        for name, value in cpu_layer.items():
            other = cuda_layer[name].value
            if value.value is not None and value.value != 0:
                worst = max(worst, abs(other - value.value) / abs(value.value))
    print(f"CPU and CUDA rows bitwise identical: {identical}")
    print(f"metrics CPU vs CUDA, worst relative difference: {worst:.2e}")
    for name, seconds in timings.items():
        print(f"{name:>14}: {seconds:7.3f} s  ({n_filters / seconds / 1e6:6.1f} M filters/s)")
    print(
        f"extract ratio cpu/cuda {timings['extract cpu'] / timings['extract cuda']:.2f}, "
        f"metrics ratio cpu/cuda {timings['metrics cpu'] / timings['metrics cuda']:.2f}"
    )


if __name__ == "__main__":
    main()
