"""What Dask workers run: per-file metric tasks on the lake, with the local kernels.

Workers import this module, :mod:`filterdb.lake.layout` and the metric kernels, never the
warehouse (an import contract in pyproject.toml checks it): they read Parquet files of the
lake and return small Arrow tables; the client alone writes the metric cache.
"""

from __future__ import annotations

import pyarrow as pa

from filterdb import __version__
from filterdb.lake.layout import read_layers
from filterdb.metrics.layer import layer_metrics
from filterdb.metrics.registry import METRICS

RESULT_SCHEMA = pa.schema(
    [
        ("layer_id", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("support", pa.int64()),
    ]
)


def versions() -> dict:
    """The filterdb version and metric versions of this process (checked before a run)."""
    return {
        "filterdb": __version__,
        "metrics": {name: metric.version for name, metric in METRICS.items()},
    }


def file_metrics(
    location: str,
    file: str,
    layers: list[dict],
    *,
    eps: float,
    torch_threads: int,
) -> pa.Table:
    """The metrics of ``layers`` (all in lake file ``file``), one row per (layer, metric).

    Each layer dict holds ``layer_id``, ``n_filters``, ``out_channels``, ``per_out``
    (C_in / groups) and ``metric`` (the names to return). The kernels are the local ones
    (:func:`filterdb.metrics.layer.layer_metrics`, on the CPU); torch runs with
    ``torch_threads`` intra-op threads, the client's count, because torch's float64 sums
    split their work by thread count (measured: 1 and 2 threads differ in the last bits on
    a 640x640 layer), and the results must equal a local run bit for bit.
    """
    import torch

    filters = read_layers(location, file, [(lay["layer_id"], lay["n_filters"]) for lay in layers])
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    columns: dict[str, list] = {name: [] for name in RESULT_SCHEMA.names}
    try:
        for layer in layers:
            weight = filters[layer["layer_id"]].reshape(
                layer["out_channels"], layer["per_out"], 3, 3
            )
            values = layer_metrics(weight, eps=eps, device="cpu")
            for metric in layer["metric"]:
                columns["layer_id"].append(layer["layer_id"])
                columns["metric"].append(metric)
                columns["value"].append(values[metric].value)
                columns["support"].append(values[metric].support)
    finally:
        torch.set_num_threads(before)
    return pa.table(columns, schema=RESULT_SCHEMA)
