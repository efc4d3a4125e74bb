"""Export stored filters for other tools: the CNN Filter DB HDF5 layout, and Parquet.

HDF5 follows SPEC section 7a, so that the notebooks written for the CNN Filter DB dataset
run on it unchanged: ``f["filters"][...].reshape(-1, 9)`` and ``pd.read_hdf(path, "meta")``
with ``filter_ids`` ranges. Parquet is the incremental lake of :mod:`filterdb.lake`, one
hive-style directory ``filters/model_id=<id>/`` per model, for DuckDB, Polars, Spark or Dask.

Both stream: filters are read a few layers at a time (:mod:`filterdb.warehouse.read`),
so memory stays bounded by the largest layer (or one Parquet row group), never the
database. HDF5 is written into a hidden sibling of ``out`` that replaces it only when the
export succeeded, so a failed export leaves nothing half-written behind; the lake swaps
each model's directory in the same way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import polars as pl
import sqlalchemy as sa
import tables
from sqlalchemy.engine import Connection

from filterdb import __version__
from filterdb.errors import FilterdbError
from filterdb.warehouse.database import engine_for, read_frame, resolve_url
from filterdb.warehouse.inventory import require_models
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.read import iter_layer_filters
from filterdb.warehouse.write import utc_now

# The index levels of /meta, in this order (SPEC section 7a).
META_INDEX = ("model_id", "conv_depth", "conv_depth_norm", "layer_id")

# Columns of the robustness paper's meta.csv (../shared/data/paper/meta.csv) that
# filterdb does not record: written as NaN, as pandas reads them from that file.
UNKNOWN_META_COLUMNS = (
    "Tracer Warning",
    "Selection",
    "Hide",
    "Visual Category_micro",
    "Precision",
    "Conv Weight Initializer",
    "Optimizer",
    "Input Shape",
    "Accessible",
)

# Every stored model is an image classifier (SPEC section 6 sources); the spelling is the
# paper's meta.csv's.
TASK = "Classification"

# Visual category of the training data, in CNN Filter DB's vocabulary ("natural" is the
# only value of the paper's meta.csv). Keys are dataset names lower-cased without '-', '_'
# or spaces; any other dataset's category is unknown (NaN).
VISUAL_CATEGORIES = {
    **dict.fromkeys(
        ("cifar10", "cifar100", "imagenet", "imagenet1k", "tinyimagenet", "svhn", "stl10"),
        "natural",
    ),
    **dict.fromkeys(("mnist", "emnist", "kmnist", "digits", "sklearndigits"), "handwritten"),
}

# Sources whose weights come from PyTorch checkpoints: the paper's "Framework" column.
PYTORCH_SOURCES = ("robustbench", "checkpoint")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: where, and how many models, layers and filters."""

    path: Path
    n_models: int
    n_layers: int
    n_filters: int


def export_hdf5(
    *,
    url: str | None = None,
    out: Path,
    models: list[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write one HDF5 file in the CNN Filter DB layout (SPEC section 7a).

    - ``/filters``: float32 (N, 9); row i is filter id i. Layers are in model_id, then
      conv_index order; within a layer filters are out-channel major (``w0..w8``, as in
      ``v_filters``). ``/filter`` is a hard link to the same dataset.
    - ``/meta``: a pandas DataFrame in ``format="table"``, one row per layer, indexed by
      ``model_id, conv_depth, conv_depth_norm, layer_id``; ``filter_ids`` is the layer's
      rows as ``"start:end"``, end inclusive. Beside the columns SPEC 7a names it holds the
      other columns of the robustness paper's meta.csv (NaN where filterdb does not know
      them), ``layer_name`` and ``producer``. It reads alike in pandas 1.1.4 (the published
      notebooks' pins) to 3.x: text columns are str with NaN for unknown, and the table
      carries the ``pandas_version`` attribute that pandas before 3.0 needs.
    - Root attributes: ``filterdb_version``, ``depth_method`` (the methods used, comma
      separated), ``source_database`` (the URL, password hidden) and ``exported_at`` (UTC).

    ``models`` limits the export to those model names. ``out`` is refused when it exists,
    unless ``overwrite``. Raises :class:`FilterdbError` (one line) for an unknown model, an
    empty selection, or an unusable ``out``.
    """
    out = Path(out)
    _check_target(out, overwrite=overwrite, directory=False)
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection, _staged(out) as staging:
            layers = _exported_layers(connection, models)
            meta = _cnn_filter_db_meta(layers)
            # pandas (PyTables) writes first and closes the file; h5py then adds the plain
            # datasets beside its table, which PyTables reads past.
            meta.to_hdf(staging, key="meta", format="table", mode="w")
            _mark_pandas_version(staging)
            with h5py.File(staging, "a") as file:
                filters = file.create_dataset(
                    "filters", shape=(int(layers["n_filters"].sum()), 9), dtype=np.float32
                )
                start = 0
                shapes = layers.select("layer_id", "n_filters").iter_rows()
                for layer_filters in iter_layer_filters(connection, shapes):
                    filters[start : start + len(layer_filters)] = layer_filters
                    start += len(layer_filters)
                file["filter"] = filters  # a hard link: the name CNN Filter DB's README uses
                file.attrs.update(_attributes(url, layers))
    return _result(out, layers)


def export_parquet(
    *,
    url: str | None = None,
    out: Path | str,
    models: list[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write or bring up to date the Parquet lake at ``out`` (a directory or a URL).

    The layout, the incremental rules and the object-store URLs are those of
    :mod:`filterdb.lake` (:func:`filterdb.lake.write.sync_lake`): only models missing or
    changed are written, models no longer stored are removed, other files stay untouched,
    so ``overwrite`` is not needed to update a lake (a directory that is not one is refused
    even with it). ``models`` and errors as in :func:`export_hdf5`.
    """
    from filterdb.lake.write import sync_lake

    del overwrite  # a lake is updated in place; kept for the one export signature
    result = sync_lake(url=url, lake=out, models=models)
    return ExportResult(
        path=out if "://" in str(out) else Path(out),
        n_models=result.n_models,
        n_layers=result.n_layers,
        n_filters=result.n_filters,
    )


# Layers with the model and training columns the exports need, in filter id order.
_LAYERS_SQL = """
SELECT l.*, m.source, m.producer, t.pretraining_dataset, t.extra_data, t.paper_url
FROM v_layers l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN training t ON t.model_id = l.model_id
ORDER BY l.model_id, l.conv_index
"""


def _exported_layers(connection: Connection, models: list[str] | None) -> pl.DataFrame:
    if models is not None:
        require_models(connection, models)
    layers = read_frame(connection, _LAYERS_SQL)
    if models is not None:
        layers = layers.filter(pl.col("model_name").is_in(models))
    if layers.height == 0:
        raise FilterdbError(
            "nothing to export: no model is stored; store one with `filterdb ingest`"
        )
    return layers


def _cnn_filter_db_meta(layers: pl.DataFrame) -> pd.DataFrame:
    """/meta: one row per layer, columns named and ordered as SPEC section 7a lists them."""
    ends = pl.col("n_filters").cum_sum() - 1
    starts = ends - pl.col("n_filters") + 1
    dataset_key = pl.col("training_dataset").str.to_lowercase().str.replace_all(r"[-_ ]", "")
    used_more_data = pl.col("extra_data") | pl.col("pretraining_dataset").is_not_null()
    frame = layers.select(
        *META_INDEX,
        pl.col("graph_depth").alias("layer_depth"),
        (pl.col("in_channels") // pl.col("groups")).alias("in_channels"),
        "out_channels",
        pl.format("{}:{}", starts, ends).alias("filter_ids"),
        pl.col("model_name").alias("model"),
        pl.col("robust").alias("Robust"),
        pl.col("training_dataset").alias("Training-Dataset"),
        pl.col("clean_acc").alias("Clean Accuracy"),
        pl.col("robust_acc").alias("Robust Accuracy"),
        pl.col("architecture").alias("Backbone"),
        pl.lit(TASK).alias("Task"),
        dataset_key.replace_strict(VISUAL_CATEGORIES, default=None).alias("Visual Category"),
        pl.col("model_name").alias("Name"),
        pl.col("paper_url").alias("Paper"),
        pl.col("model_name").alias("Network"),
        pl.when(pl.col("source").is_in(PYTORCH_SOURCES)).then(pl.lit("pytorch")).alias("Framework"),
        # The paper's meta.csv marks extra or pre-training data (RobustBench's
        # additional_data) as True/False. A bool column cannot hold "unknown" in an HDF5
        # table, and SPEC 7a asks for NaN there: 1.0 / 0.0 / NaN.
        used_more_data.cast(pl.Float64).alias("Pretraining-Dataset"),
        *(pl.lit(None, dtype=pl.Float64).alias(name) for name in UNKNOWN_META_COLUMNS),
        "layer_name",
        "producer",
    )
    meta = frame.to_pandas()
    # Text columns go to PyTables as object columns of str with NaN for unknown, the form
    # every pandas since 1.1 writes and reads alike. astype("str") would not do: pandas 2
    # turns None into the string "None", and pandas 3's str dtype writes a column kind that
    # pandas 1 cannot read. A column with no value at all is still text (NaN throughout).
    text = [name for name, dtype in frame.schema.items() if dtype in (pl.String, pl.Null)]
    for name in text:
        meta[name] = pd.Series(
            [np.nan if value is None else value for value in frame[name].to_list()],
            index=meta.index,
            dtype=object,
        )
    return meta.set_index(list(META_INDEX))


# The storage version pandas before 3.0 writes on each object (pandas.io.pytables._version).
# pandas 3 writes none, and pandas 1 and 2 then read /meta as a pre-0.10.1 file and fail
# ("'NoneType' object has no attribute 'startswith'"): the notebooks' pandas 1.1.4 among them.
PANDAS_STORAGE_VERSION = "0.15.2"


def _mark_pandas_version(path: Path) -> None:
    """Give ``/meta`` the ``pandas_version`` attribute, as pandas before 3.0 writes it."""
    with tables.open_file(path, mode="a") as file:
        file.root.meta._v_attrs.pandas_version = PANDAS_STORAGE_VERSION


def _attributes(url: str | None, layers: pl.DataFrame) -> dict[str, str]:
    return {
        "filterdb_version": __version__,
        "depth_method": ", ".join(sorted(layers["depth_method"].unique())),
        "source_database": sa.make_url(resolve_url(url)).render_as_string(hide_password=True),
        "exported_at": utc_now().isoformat(),
    }


def _check_target(out: Path, *, overwrite: bool, directory: bool) -> None:
    """Refuse an ``out`` that exists (unless ``overwrite``) or that cannot be written."""
    if not out.parent.is_dir():
        raise FilterdbError(f"directory {out.parent} does not exist; create it first")
    if not out.exists():
        return
    if not overwrite:
        raise FilterdbError(f"{out} exists; choose another --out or pass --overwrite")
    if not directory and not out.is_file():
        raise FilterdbError(f"{out} is a directory; give a file path for HDF5")


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden sibling of ``out`` to write into; it replaces ``out`` only on success."""
    staging = out.with_name(f".{out.name}.partial")
    _remove(staging)  # left over by an export that was killed
    try:
        yield staging
    except BaseException:
        _remove(staging)
        raise
    if staging.is_dir():
        _remove(out)  # a directory cannot be replaced in one step
    os.replace(staging, out)


def _remove(path: Path) -> None:
    remove: Callable[[Path], None] = shutil.rmtree if path.is_dir() else Path.unlink
    if path.exists():
        remove(path)


def _result(out: Path, layers: pl.DataFrame) -> ExportResult:
    return ExportResult(
        path=out,
        n_models=layers["model_id"].n_unique(),
        n_layers=layers.height,
        n_filters=int(layers["n_filters"].sum()),
    )
