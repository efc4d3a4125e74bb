"""Writing the lake from the warehouse: only the models that are missing or changed.

A model in the lake is current when the manifest holds its model_id with the checkpoint
sha256 the warehouse has (a re-ingested model gets a new model_id, so its old directory
goes and a new one is written). A model is written under ``_staging/`` and then moved
into ``filters/model_id=<id>/``: on a local directory that is one rename, so readers see
the old files or the new ones, never a mix; on an object store, which has no rename, the
files are moved one by one and the manifest, written last, is the commit point. Filters
stream a few layers at a time (:func:`filterdb.warehouse.read.iter_layer_filters`), so
memory stays bounded by a row group or the largest layer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from filterdb import __version__
from filterdb.lake.layout import (
    DIMENSIONS,
    FACT_SCHEMA,
    FILTERS_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    STAGING_DIR,
    WEIGHT_COLUMNS,
    Lake,
    LakeError,
    open_lake,
)
from filterdb.metrics.registry import METRICS
from filterdb.warehouse.database import engine_for, read_frame, resolve_url
from filterdb.warehouse.inventory import require_models
from filterdb.warehouse.migrate import require_head, revision_of
from filterdb.warehouse.read import iter_layer_filters
from filterdb.warehouse.write import utc_now

# Rows per row group: pyarrow's default maximum, small layers gathered into one.
ROW_GROUP_ROWS = 1 << 20
# A file is closed at a layer boundary once it holds this many rows: about 29 bytes a
# filter with zstd + BYTE_STREAM_SPLIT (PLATFORM.md, "At scale"), so about 250 MB, inside
# the 64-512 MB that object stores and Dask tasks handle well. A larger layer stays whole.
FILE_ROWS = 8_000_000


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: the lake, models written, kept and removed, and what it holds."""

    lake: Lake
    written: list[str]
    kept: list[str]
    removed: list[str]
    n_models: int
    n_layers: int
    n_filters: int
    manifest: dict


def sync_lake(
    *,
    url: str | None = None,
    lake: str | Path,
    models: list[str] | None = None,
    file_rows: int = FILE_ROWS,
    on_model: Callable[[str], None] | None = None,
) -> SyncResult:
    """Bring the lake at ``lake`` up to date with the warehouse at ``url``.

    ``models`` (names) limits what is written; models outside it that the lake already
    holds stay as they are. Models the lake holds that the warehouse no longer has (deleted,
    or replaced by a re-ingest under a new model_id) are removed. The dimension files and
    the manifest are rewritten at the end; ``on_model`` is called with each model written.

    Raises :class:`~filterdb.lake.layout.LakeError` (one line) when ``lake`` exists and is
    not a filterdb lake, :class:`~filterdb.errors.FilterdbError` for an unknown model or
    when nothing is stored.
    """
    target = open_lake(lake)
    manifest = _existing_manifest(target)
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            if models is not None:
                require_models(connection, models)
            stored = read_frame(
                connection, "SELECT model_id, name, checkpoint_sha256 FROM model ORDER BY model_id"
            )
            layers = read_frame(
                connection,
                "SELECT layer_id, model_id, in_channels, groups, n_filters FROM v_layers "
                "ORDER BY model_id, layer_id",
            )
            selected = stored if models is None else stored.filter(pl.col("name").is_in(models))
            if selected.height == 0:
                raise LakeError(
                    "nothing to export: no model is stored; store one with `filterdb ingest`"
                )
            entries: dict[str, dict] = manifest["models"]
            current = {str(row["model_id"]): row for row in stored.iter_rows(named=True)}
            removed = [entries[key]["name"] for key in list(entries) if key not in current]
            for key in [key for key in entries if key not in current]:
                _delete_dir(target, target.path(FILTERS_DIR, f"model_id={key}"))
                del entries[key]
            written, kept = [], []
            for row in selected.iter_rows(named=True):
                key = str(row["model_id"])
                entry = entries.get(key)
                if entry and entry["checkpoint_sha256"] == row["checkpoint_sha256"]:
                    kept.append(row["name"])
                    continue
                model_layers = layers.filter(pl.col("model_id") == row["model_id"])
                files = _write_model(connection, target, row["model_id"], model_layers, file_rows)
                entries[key] = {
                    "name": row["name"],
                    "checkpoint_sha256": row["checkpoint_sha256"],
                    "rows": sum(file["rows"] for file in files),
                    "files": files,
                }
                written.append(row["name"])
                # The manifest after each model: a sync stopped midway keeps what it wrote.
                _write_manifest(target, manifest)
                if on_model:
                    on_model(row["name"])
            _remove_orphans(target, entries)
            in_lake = [int(key) for key in entries]
            _write_dimensions(connection, target, in_lake)
        manifest.update(_header(url, engine))
    _write_manifest(target, manifest)
    in_lake_layers = layers.filter(pl.col("model_id").is_in([int(k) for k in entries]))
    return SyncResult(
        lake=target,
        written=written,
        kept=kept,
        removed=removed,
        n_models=len(entries),
        n_layers=in_lake_layers.height,
        n_filters=int(in_lake_layers["n_filters"].sum()),
        manifest=manifest,
    )


def _existing_manifest(lake: Lake) -> dict:
    manifest = lake.read_manifest()
    if manifest is not None:
        return manifest
    if lake.exists():
        info = lake.filesystem.get_file_info(pafs.FileSelector(lake.root))
        if info:
            raise LakeError(
                f"{lake.location} is not a filterdb Parquet lake (no {MANIFEST}); "
                "remove it yourself or choose another --out"
            )
    elif lake.is_local and not Path(lake.root).parent.is_dir():
        raise LakeError(f"directory {Path(lake.root).parent} does not exist; create it first")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "models": {}}


def _header(url: str | None, engine: sa.Engine) -> dict:
    return {
        "filterdb_version": __version__,
        "schema_revision": revision_of(engine),
        "metric_versions": {name: metric.version for name, metric in METRICS.items()},
        "source_database": sa.make_url(resolve_url(url)).render_as_string(hide_password=True),
        "exported_at": utc_now().isoformat(),
    }


def _write_model(
    connection: Connection, lake: Lake, model_id: int, layers: pl.DataFrame, file_rows: int
) -> list[dict]:
    """Write one model's files under _staging/, then move them into place."""
    staging = lake.path(STAGING_DIR, f"model_id={model_id}-{uuid.uuid4().hex[:8]}")
    lake.filesystem.create_dir(staging, recursive=True)
    files = []
    shapes = layers.select("layer_id", "n_filters").iter_rows()
    weights = iter_layer_filters(connection, shapes, ahead=True)
    tables = (
        _fact_table(layer, filters)
        for layer, filters in zip(layers.iter_rows(named=True), weights, strict=True)
    )
    for part, chunk in enumerate(_cut_at_layers(tables, file_rows)):
        name = f"part-{part}.parquet"
        _write_file(lake, f"{staging}/{name}", chunk)
        layer_ids = [table["layer_id"][0].as_py() for table in chunk]
        files.append(
            {
                "path": f"{FILTERS_DIR}/model_id={model_id}/{name}",
                "rows": sum(table.num_rows for table in chunk),
                "min_layer_id": min(layer_ids),
                "max_layer_id": max(layer_ids),
            }
        )
    _swap_in(lake, staging, lake.path(FILTERS_DIR, f"model_id={model_id}"))
    return files


def _cut_at_layers(tables: Iterator[pa.Table], file_rows: int) -> Iterator[list[pa.Table]]:
    """Group layer tables into files of about ``file_rows`` rows, never splitting one."""
    chunk: list[pa.Table] = []
    rows = 0
    for table in tables:
        if chunk and rows + table.num_rows > file_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(table)
        rows += table.num_rows
    if chunk:
        yield chunk


def _write_file(lake: Lake, path: str, tables: list[pa.Table]) -> None:
    # BYTE_STREAM_SPLIT on the weights: about 18% smaller with zstd (PLATFORM.md, "At scale").
    # pyarrow applies it only to columns without dictionary encoding (measured: with the
    # default dictionary the weights were written PLAIN/RLE_DICTIONARY).
    with pq.ParquetWriter(
        path,
        FACT_SCHEMA,
        filesystem=lake.filesystem,
        compression="zstd",
        use_dictionary=[name for name in FACT_SCHEMA.names if name not in WEIGHT_COLUMNS],
        use_byte_stream_split=list(WEIGHT_COLUMNS),
    ) as writer:
        pending: list[pa.Table] = []
        for table in tables:
            pending.append(table)
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)


def _fact_table(layer: dict, filters: np.ndarray) -> pa.Table:
    """One layer's fact rows: keys int32, weights float32 as stored."""
    n = len(filters)
    index = np.arange(n, dtype=np.int32)
    # Out-channel major, C_in / groups per output channel (SPEC section 5), the rule that
    # wrote out_channel and in_channel at load (filterdb.warehouse.write).
    per_out = layer["in_channels"] // layer["groups"]
    weights = np.ascontiguousarray(filters.T)
    columns = [
        pa.array(np.full(n, layer["layer_id"], dtype=np.int32)),
        pa.array(index),
        pa.array(index // per_out),
        pa.array(index % per_out),
        *(pa.array(weights[i]) for i in range(9)),
    ]
    return pa.Table.from_arrays(columns, schema=FACT_SCHEMA)


def _swap_in(lake: Lake, staging: str, final: str) -> None:
    """Replace ``final`` by ``staging``: one rename locally, file moves on object stores."""
    fs = lake.filesystem
    exists = fs.get_file_info(final).type != pafs.FileType.NotFound
    fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    if lake.is_local:
        old = f"{staging}.old"
        if exists:
            fs.move(final, old)  # a directory cannot be renamed onto a non-empty one
        fs.move(staging, final)
        if exists:
            fs.delete_dir(old)
        return
    if exists:
        fs.delete_dir(final)
    for info in fs.get_file_info(pafs.FileSelector(staging)):
        fs.move(info.path, f"{final}/{info.base_name}")
    _delete_dir(lake, staging)


def _delete_dir(lake: Lake, path: str) -> None:
    if lake.filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        lake.filesystem.delete_dir(path)


def _remove_orphans(lake: Lake, entries: dict[str, dict]) -> None:
    """Directories a stopped sync left behind: staging, models not in the manifest."""
    _delete_dir(lake, lake.path(STAGING_DIR))
    if not lake.exists(FILTERS_DIR):
        return
    for info in lake.filesystem.get_file_info(pafs.FileSelector(lake.path(FILTERS_DIR))):
        if info.base_name.removeprefix("model_id=") not in entries:
            _delete_dir(lake, info.path)


def _write_dimensions(connection: Connection, lake: Lake, model_ids: list[int]) -> None:
    for view, name in DIMENSIONS.items():
        frame = read_frame(connection, f"SELECT * FROM {view} ORDER BY model_id")
        frame = frame.filter(pl.col("model_id").cast(pl.Int64).is_in(model_ids))
        pq.write_table(
            frame.to_arrow(), lake.path(name), filesystem=lake.filesystem, compression="zstd"
        )


def _write_manifest(lake: Lake, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if lake.is_local:
        # Written beside, then renamed: a reader sees the old manifest or the new one.
        partial = lake.path(f".{MANIFEST}.partial")
        lake.filesystem.create_dir(lake.root, recursive=True)
        with lake.filesystem.open_output_stream(partial) as stream:
            stream.write(text)
        lake.filesystem.move(partial, lake.path(MANIFEST))
        return
    with lake.filesystem.open_output_stream(lake.path(MANIFEST)) as stream:
        stream.write(text)  # one PUT: object stores replace an object whole
