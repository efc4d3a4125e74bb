"""Safetensors checkpoints, single files and sharded ones, read without trusting their bytes.

A ``.safetensors`` file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and ``data_offsets`` into the data that follows, then the data. The
header is checked here before the ``safetensors`` library maps the file, so a truncated
download, an HTML page or offsets that do not fit the file get a one-line error instead
of a Rust panic. A sharded checkpoint (``model.safetensors.index.json``, as Hugging Face
writes it) maps every tensor to a shard file beside the index; shards are read, and hashed
for the model's identity, in the order the index first names them.

Weights keep their stored dtype here; extraction turns them into float32 (exact for
float16 and bfloat16). :func:`check_weight_dtypes` refuses quantized weights and
:func:`float64_note` words the rounding of float64 weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from filterdb.errors import SourceError
from filterdb.ingest.sources.base import ConvLayer, looks_like_html

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# Bytes per element of the dtypes safetensors 0.8 writes that torch can hold.
_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}
# A header larger than this is not a real checkpoint's (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_sharded(path: Path) -> bool:
    """True when ``path`` is a safetensors index, or a directory holding one."""
    return path.name.endswith(".safetensors.index.json") or (
        path.is_dir() and (path / INDEX_NAME).is_file()
    )


def read_header(path: Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header, checked against the file.

    Raises :class:`SourceError` for an HTML page, a truncated file, a header that is not
    JSON, an unknown dtype, or ``data_offsets`` that do not tile the data exactly.
    """
    if not path.is_file():
        raise SourceError(f"no safetensors file at {path}; check the path")
    if looks_like_html(path):
        raise SourceError(
            f"{path} is an HTML page, not a safetensors file (failed download?); delete it "
            "and fetch it again"
        )
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _truncated(path, "shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER):
            raise _truncated(path, f"its header claims {header_len:,} bytes of {size:,}")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceError(
            f"{path} has a safetensors header that is not JSON; the file is corrupt: fetch it again"
        ) from None
    if not isinstance(header, dict):
        raise SourceError(f"{path} has a malformed safetensors header; fetch it again")
    header.pop("__metadata__", None)
    _check_offsets(path, header, data_size=size - 8 - header_len)
    return header


def _check_offsets(path: Path, header: dict, *, data_size: int) -> None:
    spans = []
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise SourceError(
                f"{path}: tensor {key} has a malformed header entry; the file is corrupt"
            ) from None
        if dtype not in _ITEMSIZE:
            raise SourceError(
                f"{path}: tensor {key} has dtype {dtype}, which filterdb cannot read "
                "(packed or quantized weights); store the weights as float16, bfloat16 or "
                "float32"
            )
        expected = math.prod(shape) * _ITEMSIZE[dtype]
        if end - begin != expected or begin < 0:
            raise SourceError(
                f"{path}: tensor {key} ({dtype} {shape}) spans bytes {begin}..{end}, which "
                f"do not hold {expected:,} bytes; the header does not match the file: fetch "
                "it again"
            )
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            raise SourceError(
                f"{path}: tensor {key} starts at byte {begin} where {position} was expected "
                "(overlapping or gapped offsets); the header does not match the file"
            )
        position = end
    if position > data_size:
        raise _truncated(path, f"its tensors need {position:,} data bytes, {data_size:,} are there")
    if position < data_size:
        raise SourceError(
            f"{path} holds {data_size - position:,} bytes after its last tensor; the header "
            "does not match the file: fetch it again"
        )


def _truncated(path: Path, detail: str) -> SourceError:
    return SourceError(f"{path} is truncated ({detail}); fetch it again")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one ``.safetensors`` file, in its stored dtype, header checked first."""
    read_header(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, RuntimeError, TypeError) as error:  # a dtype torch lacks, say
        raise SourceError(
            f"{path} cannot be read by safetensors ({error}); fetch it again"
        ) from None


def shard_paths(index: Path) -> tuple[list[Path], dict[str, Path]]:
    """The shards of a safetensors index, in the order it first names them, and its map.

    ``index`` is the index file or its directory. Shard names must stay inside the index's
    directory (no ``..``, no absolute path); each shard must exist and be named once. The
    check is on the names: in huggingface_hub's cache every file is a link into ``blobs/``,
    outside the snapshot directory, and that is where the bytes belong. Raises
    :class:`SourceError` naming the problem.
    """
    if index.is_dir():
        index = index / INDEX_NAME
    if not index.is_file():
        raise SourceError(f"no safetensors index at {index}; check the path")
    if looks_like_html(index):
        raise SourceError(f"{index} is an HTML page, not a safetensors index; fetch it again")
    duplicates: list[str] = []

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        document = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceError(f"{index} is not JSON; fetch the index again") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"{index} has no weight_map; it is not a safetensors index")
    if duplicates:
        raise SourceError(
            f"{index} lists tensor {duplicates[0]} twice; the index is corrupt: fetch it again"
        )
    root = Path(os.path.abspath(index.parent))
    by_name: dict[str, Path] = {}
    for name in dict.fromkeys(weight_map.values()):
        by_name[name] = _shard_path(index, root, name)
    resolved: dict[Path, str] = {}
    for name, path in by_name.items():
        if path in resolved:
            raise SourceError(
                f"{index} lists shard {path.name} twice (as {resolved[path]} and {name}); "
                "fix the index"
            )
        resolved[path] = name
    return list(by_name.values()), {key: by_name[name] for key, name in weight_map.items()}


def _shard_path(index: Path, root: Path, name: object) -> Path:
    leaves = isinstance(name, str) and (Path(name).is_absolute() or ".." in Path(name).parts)
    if not isinstance(name, str) or not name or leaves:
        raise SourceError(
            f"{index} names shard {name!r} outside its directory; shards must be file names "
            "beside the index"
        )
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(root):
        raise SourceError(
            f"{index} names shard {name!r}, which leads outside {root}; shards must sit "
            "beside the index"
        )
    if not path.is_file():
        raise SourceError(f"shard {name} named by {index} is missing at {path}; fetch it")
    return path


def load_sharded(index: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded safetensors checkpoint, in index order, headers checked.

    A tensor the index maps to a shard that lacks it, a tensor held by two shards, and a
    tensor in a shard the index does not map there are refused: the index and the shards
    disagree, so which weights are meant is not known.
    """
    shards, weight_map = shard_paths(index)
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        for key, tensor in load_safetensors(shard).items():
            if key in tensors:
                raise SourceError(
                    f"tensor {key} is in two shards ({shard.name} and another); fix the checkpoint"
                )
            if weight_map.get(key) != shard:
                raise SourceError(
                    f"{shard.name} holds tensor {key}, which the index does not map to it; "
                    "the index and its shards disagree"
                )
            tensors[key] = tensor
    missing = [key for key in weight_map if key not in tensors]
    if missing:
        raise SourceError(
            f"tensor {missing[0]} is listed in the index but missing from "
            f"{weight_map[missing[0]].name} ({len(missing)} missing); fetch the shards again"
        )
    return {key: tensors[key] for key in weight_map}


def check_weight_dtypes(state_dict: Mapping[str, torch.Tensor], *, origin: object) -> None:
    """Refuse quantized or packed weights: every 4-D tensor must be float16/32/64 or bf16."""
    for key, tensor in state_dict.items():
        if tensor.dim() == 4 and tensor.dtype not in FLOAT_DTYPES:
            raise SourceError(
                f"{origin}: weight {key} is {dtype_name(tensor.dtype)}, a quantized or packed "
                "format filterdb does not store; dequantize it to float32 first"
            )


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``float16``."""
    return str(dtype).removeprefix("torch.")


def with_source_dtypes(
    convs: list[ConvLayer], state_dict: Mapping[str, torch.Tensor]
) -> list[ConvLayer]:
    """Record each conv's stored dtype from ``state_dict`` (the module may hold float32)."""
    for conv in convs:
        stored = state_dict.get(f"{conv.name}.weight")
        if stored is not None:
            conv.source_dtype = dtype_name(stored.dtype)
    return convs


def float64_note(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence on the rounding of float64 3x3 weights to float32, or ``None``."""
    wide = [t for t in state_dict.values() if t.dtype == torch.float64 and t.dim() == 4]
    wide = [t for t in wide if tuple(t.shape[2:]) == (3, 3)]
    if not wide:
        return None
    changes = [float((t - t.float().double()).abs().max()) for t in wide if t.numel()]
    largest = max(changes, default=0.0)
    return (
        f"{len(wide)} float64 layers stored as float32, rounded to nearest (largest change "
        f"{largest:.3g})"
    )
