"""Shared helpers of the benchmarks: measured child processes, test models, printing.

Every measured step runs in a fresh Python process (:func:`measure`), so that its peak
resident memory is its own and nothing is left warm from an earlier step. The child
imports what it needs first; the step times only its work (:class:`Stopwatch`) and reports
its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, imports included) and the RSS it had
before the timed work began. Benchmarks print figures against targets; they assert nothing.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULT_MARKER = "BENCH-RESULT "

# The robustbench zoo entries the benchmarks build, by size (cifar10, Linf).
ZOO_DATASET, ZOO_THREAT_MODEL = "cifar10", "Linf"
ZOO_SIZES = {
    "28-10": ("Carmon2019Unlabeled", "WideResNet-28-10"),  # 4,203,568 3x3 filters
    "70-16": ("Gowal2020Uncovering_70_16", "WideResNet-70-16"),  # 29,560,880, 67 layers
    "preact18": ("Wong2020Fast", "PreActResNet-18"),  # 1,220,800: for --quick runs
}


# --- measured children ----------------------------------------------------------------


class Stopwatch:
    """Times a ``with`` block and notes the resident memory when it began."""

    def __enter__(self) -> Stopwatch:
        self.rss_before = current_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self.start


def current_rss() -> int:
    """This process's resident memory now, in bytes (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status: the benchmarks need Linux")


def measure(script: str | Path, step: str, **arguments: object) -> dict:
    """Run function ``step`` of the bench script ``script`` in a fresh Python process.

    The function gets ``arguments`` (JSON-serialisable) and returns a dict; the result is
    that dict plus ``peak_rss`` (bytes, the child's whole life). A failing child stops the
    benchmark with its stderr.
    """
    command = [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import common; common.child_main()",
        str(script),
        step,
        json.dumps(arguments),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_DIR)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"benchmark step {step} failed (exit status {done.returncode})")
    return json.loads(lines[-1].removeprefix(RESULT_MARKER))


def child_main() -> None:
    """Entry point of a :func:`measure` child: ``argv`` is script, step, JSON arguments."""
    script, step, arguments = sys.argv[1:4]
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = getattr(module, step)(**json.loads(arguments))
    # ru_maxrss is in KiB on Linux.
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # On a line of its own: DuckDB's progress bar may have left the line unfinished.
    print("\n" + RESULT_MARKER + json.dumps(result), flush=True)


# --- databases ------------------------------------------------------------------------


@contextmanager
def fresh_database(server_url: str | None, directory: Path, name: str) -> Iterator[str]:
    """A new database at filterdb's head revision; yields its URL.

    ``server_url`` None: a new DuckDB file ``directory/<name>.duckdb`` (kept afterwards).
    A PostgreSQL URL: a new database on that server, dropped afterwards.
    """
    import sqlalchemy as sa

    from filterdb.warehouse import migrate

    if server_url is None:
        path = directory / f"{name}.duckdb"
        for stale in (path, path.with_name(path.name + ".wal")):
            stale.unlink(missing_ok=True)
        url = f"duckdb:///{path}"
        migrate.upgrade(url=url)
        yield url
        return
    server = sa.make_url(server_url)
    database = f"filterdb_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{database}"')
    try:
        url = server.set(database=database).render_as_string(hide_password=False)
        migrate.upgrade(url=url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


def backend_label(url: str) -> str:
    """``duckdb`` or ``postgresql``."""
    return url.split(":", 1)[0].split("+", 1)[0]


def duckdb_file_size(url: str) -> int | None:
    """Size in bytes of a DuckDB file behind ``url``, None for other backends."""
    if not url.startswith("duckdb:///"):
        return None
    return Path(url.removeprefix("duckdb:///")).stat().st_size


# --- models ---------------------------------------------------------------------------


def write_zoo_checkpoint(*, size: str, model_dir: str, seed: int = 0) -> dict:
    """Save a zoo architecture with seeded initial weights in robustbench's cache layout.

    ``{"state_dict": sd}`` at ``<model_dir>/cifar10/Linf/<entry>.pt``, as robustbench's
    ``load_model`` reads it. Returns the path, file size and number of 3x3 filters.
    """
    import torch

    from filterdb.ingest.sources.robustbench import build_zoo_architecture

    entry, _ = ZOO_SIZES[size]
    path = Path(model_dir) / ZOO_DATASET / ZOO_THREAT_MODEL / f"{entry}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_zoo_architecture(entry, dataset=ZOO_DATASET, threat_model=ZOO_THREAT_MODEL)
    state_dict = model.state_dict()
    torch.save({"state_dict": state_dict}, path)
    weights = [t for t in state_dict.values() if is_3x3_weight(t)]
    return {
        "entry": entry,
        "path": str(path),
        "checkpoint_bytes": path.stat().st_size,
        "n_layers": len(weights),
        "n_filters": sum(t.shape[0] * t.shape[1] for t in weights),
    }


def is_3x3_weight(tensor: object) -> bool:
    """True for a 4-D (C_out, C_in/groups, 3, 3) conv weight."""
    return tensor.dim() == 4 and tuple(tensor.shape[2:]) == (3, 3)


# A CIFAR ResNet-18 at a quarter of its width: 17 3x3 convs, 76,336 filters; 100 of them
# (7.6M filters) keep the setup of the 100-model benchmarks to a few minutes on 2 cores.
SMALL_RESNET_WIDTHS = (16, 32, 64, 128)
SMALL_RESNET_ARCHITECTURE = "ResNet-18 (quarter width)"


def small_resnet_state_dict(seed: int, *, sparse_share: float) -> dict:
    """Seeded He-normal conv weights of a quarter-width CIFAR ResNet-18, in key order.

    ``sparse_share`` of each 3x3 layer's filters are shrunk 1000-fold (sparse by SPEC
    section 5), so that sparsity and the entropies differ between groups of models.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    shapes = {"conv1.weight": (SMALL_RESNET_WIDTHS[0], 3, 3, 3)}
    in_channels = SMALL_RESNET_WIDTHS[0]
    for stage, width in enumerate(SMALL_RESNET_WIDTHS, start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_channels, 3, 3)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            if in_channels != width:
                shapes[f"{prefix}.shortcut.weight"] = (width, in_channels, 1, 1)
            in_channels = width
    state_dict = {}
    for key, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        weight = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        if shape[2:] == (3, 3):
            filters = weight.view(-1, 9)
            shrunk = torch.rand(filters.shape[0], generator=generator) < sparse_share
            filters[shrunk] *= 1e-3
        state_dict[key] = weight
    state_dict["fc.weight"] = torch.randn(10, in_channels, generator=generator) * 0.01
    return state_dict


# Distinct weights among the cached models of :func:`populate_cached_models`; the others
# are clones whose cached metrics are copied, not recomputed (the weights are identical).
DISTINCT_MODELS = 10


def populate_cached_models(url: str, directory: Path, *, n_models: int) -> dict:
    """Ingest ``n_models`` small models and cache their metrics (benchmark setup).

    Even-numbered models are adversarially trained, odd ones normally, all of one
    architecture and training dataset, so that they pair. Model ``i`` is ingested from
    checkpoint ``i % DISTINCT_MODELS`` (seeded weights, robust ones sparser) under its own
    name; metrics are computed for the first ``DISTINCT_MODELS`` and copied with one SQL
    ``INSERT ... SELECT`` to the clones, layer by layer name. Returns the setup's timings.
    """
    import sqlalchemy as sa
    import torch

    from filterdb.ingest.pipeline import ingest_all
    from filterdb.ingest.sources.checkpoint import checkpoint_candidate
    from filterdb.metrics import cache
    from filterdb.warehouse.database import engine_for
    from filterdb.warehouse.records import TrainingInfo

    directory.mkdir(parents=True, exist_ok=True)
    n_distinct = min(n_models, DISTINCT_MODELS)
    for index in range(n_distinct):
        sparse_share = 0.2 if index % 2 == 0 else 0.05
        state_dict = small_resnet_state_dict(index, sparse_share=sparse_share)
        torch.save(state_dict, directory / f"small-{index:03d}.pt")
    candidates, computed_names = [], []
    for index in range(n_models):
        training_type = "adversarial" if index % 2 == 0 else "normal"
        name = f"small-{training_type}-{index:03d}"
        training = TrainingInfo(training_type=training_type, training_dataset="cifar10")
        path = directory / f"small-{index % n_distinct:03d}.pt"
        candidates.append(
            checkpoint_candidate(
                path, name=name, architecture=SMALL_RESNET_ARCHITECTURE, training=training
            )
        )
        if index < n_distinct:
            computed_names.append(name)
    with Stopwatch() as ingesting:
        results, failures = ingest_all(candidates, url=url, device="cpu")
    if failures:
        raise SystemExit(f"setup ingest failed: {failures[0][0]}: {failures[0][1]}")
    with Stopwatch() as computing:
        computed = cache.compute_metrics(url=url, models=computed_names, device="cpu")
        with engine_for(url) as engine, engine.begin() as connection:
            connection.execute(sa.text(_COPY_CACHED_METRICS))
    left = cache.compute_metrics(url=url, device="cpu").n_layers
    if left:
        raise SystemExit(f"setup left {left} layers without cached metrics")
    return {
        "n_models": len(results),
        "n_distinct": n_distinct,
        "n_layers_computed": computed.n_layers,
        "n_filters": sum(result.n_filters for result in results),
        "ingest_seconds": ingesting.seconds,
        "metrics_seconds": computing.seconds,
    }


# Clones share their source's checkpoint hash; each clone layer gets the cached values of
# the source layer of the same name.
_COPY_CACHED_METRICS = """
INSERT INTO metric_cache
    (layer_id, metric, params, version, model_id, value, support, computed_at)
SELECT clone_layer.layer_id, c.metric, c.params, c.version, clone_layer.model_id,
    c.value, c.support, c.computed_at
FROM metric_cache c
JOIN layer source_layer ON source_layer.layer_id = c.layer_id
JOIN model source_model ON source_model.model_id = source_layer.model_id
JOIN model clone_model ON clone_model.checkpoint_sha256 = source_model.checkpoint_sha256
    AND clone_model.model_id <> source_model.model_id
JOIN layer clone_layer ON clone_layer.model_id = clone_model.model_id
    AND clone_layer.name = source_layer.name
"""


# --- printing -------------------------------------------------------------------------


def describe_setup(setup: dict) -> str:
    """One line on what :func:`populate_cached_models` did."""
    return (
        f"setup: {setup['n_models']} models ({setup['n_distinct']} distinct), "
        f"{setup['n_filters']:,} filters; ingest {setup['ingest_seconds']:.1f} s, "
        f"metrics of {setup['n_layers_computed']} layers + copies "
        f"{setup['metrics_seconds']:.1f} s"
    )


def print_machine(*, device: str) -> None:
    """Date, machine and software, as the README's performance table wants them."""
    import duckdb
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    if torch.cuda.is_available():
        torch_device = f"cuda ({torch.cuda.get_device_name(0)}), requested {device}"
    else:
        torch_device = f"cpu only, requested {device}"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"date:     {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine:  {os.cpu_count()} cores, {cpu}, {format_bytes(memory)} RAM")
    print(f"load:     {load} (1, 5, 15 min: other processes share the machine when high)")
    print(
        f"software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), duckdb {duckdb.__version__}"
    )
    print(f"device:   {torch_device}")
    print()


def format_bytes(n: float) -> str:
    """``1.07 GB``, ``146 MB``: decimal units."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def format_rate(per_second: float) -> str:
    """``1.83M/s``."""
    return f"{per_second / 1e6:.2f}M/s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (pasteable into the README), columns padded for the terminal."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(value: float, limit: float, *, at_most: bool) -> str:
    """``met`` or ``MISSED by N%`` for ``value`` against ``<= limit`` or ``>= limit``."""
    met = value <= limit if at_most else value >= limit
    return "met" if met else f"MISSED by {abs(value / limit - 1):.0%}"


def print_target(target: str, shown: str, value: float, limit: float, *, at_most: bool) -> None:
    """One line: the target, the figure, and whether it is met or by how much it is missed."""
    print(f"target {target}: {shown} {verdict(value, limit, at_most=at_most)}")
