"""The lake's layout, filesystem and manifest: what readers need, without database code.

Workers of a distributed engine import this module (never the warehouse): they get a lake
location (a local path or an object-store URL such as
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``, resolved by
:func:`pyarrow.fs.FileSystem.from_uri`, credentials from the URL or the usual
``AWS_*`` environment variables) and a file name from the manifest, and read layers back
as (n, 9) float32 arrays bit-identical to the warehouse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from filterdb.errors import FilterdbError

MANIFEST = "_filterdb.json"
FORMAT = "filterdb-lake"
FORMAT_VERSION = 1
FILTERS_DIR = "filters"
STAGING_DIR = "_staging"  # '_'-prefixed: pyarrow datasets and hive globs skip it
DIMENSIONS = {
    "v_models": "models.parquet",
    "v_layers": "layers.parquet",
    "v_layer_metrics": "layer_metrics.parquet",
}

WEIGHT_COLUMNS = tuple(f"w{i}" for i in range(9))
FACT_SCHEMA = pa.schema(
    [
        ("layer_id", pa.int32()),
        ("filter_index", pa.int32()),
        ("out_channel", pa.int32()),
        ("in_channel", pa.int32()),
        *((name, pa.float32()) for name in WEIGHT_COLUMNS),
    ]
)


class LakeError(FilterdbError):
    """A lake cannot be opened, is not a filterdb lake, or disagrees with its manifest."""


@dataclass(frozen=True)
class Lake:
    """A lake location: a pyarrow filesystem and the root path inside it."""

    location: str
    filesystem: pafs.FileSystem
    root: str

    @property
    def is_local(self) -> bool:
        """Whether the lake is a local directory (renames are atomic there)."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The path of ``parts`` below the root, as the filesystem spells it."""
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` below the root exist."""
        return self.filesystem.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_manifest(self) -> dict | None:
        """The manifest, or None when the lake has none yet."""
        if not self.exists(MANIFEST):
            return None
        with self.filesystem.open_input_stream(self.path(MANIFEST)) as stream:
            manifest = json.loads(stream.read().decode())
        if manifest.get("format") != FORMAT:
            raise LakeError(f"{self.location} holds a {MANIFEST} that is not a filterdb lake's")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise LakeError(
                f"{self.location} is lake format {manifest.get('format_version')}, this "
                f"filterdb reads {FORMAT_VERSION}; export it again into an empty directory"
            )
        return manifest


def open_lake(location: str | Path) -> Lake:
    """The lake at ``location``: a local directory, or a URL pyarrow knows (``s3://``...).

    Raises :class:`LakeError` (one line) when the URL names no filesystem pyarrow has.
    """
    text = str(location)
    if "://" not in text:
        return Lake(text, pafs.LocalFileSystem(), str(Path(text).absolute()))
    try:
        filesystem, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise LakeError(
            f"cannot open the lake {text.split('?')[0]}: {str(error).splitlines()[0]}; "
            "give a directory or an s3://bucket/prefix URL"
        ) from None
    return Lake(text.split("?")[0], filesystem, root)


def read_layers(location: str, file: str, layers: list[tuple[int, int]]) -> dict[int, np.ndarray]:
    """The filters of each ``(layer_id, n_filters)`` of one lake file, (n, 9) float32.

    Rows are in (layer_id, filter_index) order in the file (the writer sorts them); a layer
    whose rows do not number ``n_filters`` with each filter_index once raises
    :class:`LakeError`: the lake is stale or damaged, export it again.
    """
    lake = open_lake(location)
    wanted = [layer_id for layer_id, _ in layers]
    table = pq.read_table(
        lake.path(file),
        filesystem=lake.filesystem,
        columns=["layer_id", "filter_index", *WEIGHT_COLUMNS],
        filters=[("layer_id", "in", wanted)],
    )
    layer_ids = table["layer_id"].to_numpy()
    index = table["filter_index"].to_numpy()
    weights = np.column_stack([table[name].to_numpy() for name in WEIGHT_COLUMNS])
    starts = np.searchsorted(layer_ids, wanted, side="left")
    stops = np.searchsorted(layer_ids, wanted, side="right")
    filters = {}
    for (layer_id, n_filters), start, stop in zip(layers, starts, stops, strict=True):
        if stop - start != n_filters or not np.array_equal(
            index[start:stop], np.arange(n_filters, dtype=index.dtype)
        ):
            raise LakeError(
                f"{lake.location}/{file} does not hold layer_id {layer_id}'s {n_filters} "
                "filters in order; export the lake again"
            )
        filters[layer_id] = np.ascontiguousarray(weights[start:stop], dtype=np.float32)
    return filters
