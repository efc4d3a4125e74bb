"""What every source hands to extraction: the model's metadata and its conv weights.

A source (RobustBench zoo entry, torch checkpoint, ONNX file) reads a model and returns a
:class:`ModelSource`. Extraction (:mod:`filterdb.ingest.extract`) keeps the 3x3 convs and turns
them into rows; nothing downstream knows where a model came from.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filterdb.errors import SourceError
from filterdb.warehouse.records import ModelInfo, TrainingInfo, check_model_name

# Stored filters are float32; a float16 or bfloat16 file doubles its bytes. More than this
# many times the files' bytes cannot come from real weights: a 1.8 kB torch file whose
# stride-0 view claimed 10^12 filters did (issue 9).
MAX_BYTES_PER_FILE_BYTE = 4

if TYPE_CHECKING:  # listing and hashing models needs no torch
    import torch


@dataclass
class ConvLayer:
    """One convolution the model runs, of any kernel size.

    ``weight`` has shape (C_out, C_in / groups, kh, kw) and may live on any device and be
    non-contiguous. ``graph_depth`` is the conv's longest-path depth in the computation
    graph (or its position when the graph is unknown); convs of every kernel size are
    needed because conv_depth ranks the depths that hold any conv (SPEC section 5).
    """

    name: str
    weight: torch.Tensor
    graph_depth: int
    groups: int = 1
    stride: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    # The dtype the checkpoint stores the weight in, when ``weight`` no longer shows it
    # (loaded into a float32 module); else extraction reads it from ``weight``.
    source_dtype: str | None = None

    @property
    def is_3x3(self) -> bool:
        return self.weight.dim() == 4 and tuple(self.weight.shape[2:]) == (3, 3)


@dataclass
class ModelSource:
    """A model ready for extraction.

    ``convs`` are in extraction order (state_dict key order for torch, node order for
    ONNX) and hold only the convs the forward pass reaches when the architecture is known;
    ``n_unreached_convs`` counts the 3x3 convs left out for that reason (SPEC section 4).
    ``depth_method`` is ``graph`` (torch.fx), ``onnx``, ``execution_order`` (forward hooks)
    or ``key_order`` (no architecture). ``notes`` are sentences the ingest prints and logs
    (float64 weights rounded to float32, say).
    """

    info: ModelInfo
    convs: list[ConvLayer]
    depth_method: str
    n_unreached_convs: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    """A model about to be ingested: its identity is known, its weights not yet loaded.

    ``read`` loads the weights and returns the :class:`ModelSource`; ``paths`` are the
    checkpoint files whose bytes identify the model, together with ``weights_form``
    (``raw``, ``bn_folded`` or ``as_exported``): the same bytes stored in another form are
    another model (SPEC section 4).
    """

    name: str
    source: str
    paths: list[Path]
    read: Callable[[], ModelSource]
    weights_form: str = "raw"


def require_untargeted_normal(training: TrainingInfo | None) -> None:
    """Refuse a normally trained model that carries a threat model or an attack budget.

    Normal training has no attack: a threat model or eps on it would put the model among
    Linf or L2 ones wherever training metadata is grouped.
    """
    if training is None or training.training_type != "normal":
        return
    options = (("--threat-model", training.threat_model), ("--eps", training.eps_text))
    given = [option for option, value in options if value is not None]
    if given:
        raise SourceError(
            f"a normally trained model has no threat model or attack budget, but "
            f"{' and '.join(given)} was given; drop it, or pass --training adversarial"
        )

    def __post_init__(self) -> None:
        check_model_name(self.name)


def files_sha256(paths: list[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` in order: a model's identity (SPEC section 4)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def parameter_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    """``n_parameters`` of every torch source: the floating-point values of all tensors in
    the checkpoint, learnable parameters and buffers (BatchNorm running statistics) alike;
    integer buffers (``num_batches_tracked``) are counters, not weights.

    ONNX files count the same way over their floating-point initializers and Constant
    tensors (:mod:`~filterdb.ingest.sources.onnx_file`), so the count means one thing
    whatever the source: the number of stored floats of the model file.
    """
    return sum(t.numel() for t in state_dict.values() if t.is_floating_point())


def looks_like_html(path: Path) -> bool:
    """True when ``path`` starts like an HTML page: what a failed download often leaves."""
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip()
    # Neither a torch zip, a legacy pickle nor protobuf starts with "<" after whitespace.
    return start.startswith(b"<")


def load_tensors(path: Path) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code.

    Raises a one-line :class:`SourceError` naming the cause: an HTML page (a failed
    download), an ONNX file (``filterdb ingest onnx`` reads those), a pickle that would run
    code, too little memory, a corrupt or truncated file. Other failures keep their
    traceback: they are bugs, not bad files.
    """
    import torch

    if looks_like_html(path):
        raise SourceError(
            f"{path} is an HTML page, not a checkpoint (failed download?); delete it and "
            "fetch the real checkpoint again"
        )
    try:
        # Memory-mapped, checking a zip checkpoint costs its pickle, not its tensors.
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except UNREADABLE_CHECKPOINT_ERRORS as error:
        raise load_failure(path, error) from None


# Foreign or truncated bytes make torch's unpickler fail in many ways: UnpicklingError,
# EOFError, KeyError and IndexError from its stack, RuntimeError from its zip reader,
# UnicodeDecodeError, struct.error. MemoryError is here to get its own message.
UNREADABLE_CHECKPOINT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    ValueError,
    TypeError,
    AttributeError,
    RuntimeError,
    struct.error,
    zipfile.BadZipFile,
    MemoryError,
)
# torch's CPU allocator reports a failed allocation as a RuntimeError with this text.
_OUT_OF_MEMORY_TEXT = ("can't allocate memory", "not enough memory", "out of memory")


def load_failure(path: Path, error: BaseException) -> SourceError:
    """The one-line :class:`SourceError` for ``torch.load(path)`` failing with ``error``."""
    text = str(error)
    if isinstance(error, MemoryError) or any(t in text.lower() for t in _OUT_OF_MEMORY_TEXT):
        return SourceError(
            f"{path}: out of memory while loading it ({type(error).__name__}); the file "
            "may be fine: free memory, or load it on a machine with more"
        )
    if "GLOBAL" in text:
        # torch names the global the pickle wanted to call: code, not tensors.
        return SourceError(
            f"{path} was refused: unpickling it needs code execution; filterdb loads tensors "
            "only (weights_only=True), so re-save it as a plain state_dict of tensors"
        )
    if looks_like_onnx(path):
        return SourceError(
            f"{path} is an ONNX file, not a torch checkpoint; use `filterdb ingest onnx {path}`"
        )
    reason = "not a pickle of tensors" if "Weights only load failed" in text else None
    reason = reason or (text.strip().splitlines() or [type(error).__name__])[-1][:120]
    return SourceError(
        f"{path} is not a readable torch checkpoint ({reason}); the file is corrupt or "
        "truncated: fetch it again"
    )


def looks_like_onnx(path: Path) -> bool:
    """True when ``path`` parses as an ONNX ModelProto with a graph (protobuf, not torch)."""
    with open(path, "rb") as handle:
        # Field 1 of ModelProto (ir_version, a varint) is the first thing every exporter
        # writes: tag byte 0x08. A torch zip starts with "PK", a torch pickle with 0x80.
        if handle.read(1) != b"\x08":
            return False
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, OSError):
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def check_weights_fit_files(source: ModelSource, paths: list[Path]) -> None:
    """Refuse weights that the files cannot hold, before anything is copied or stored.

    A conv weight must own its values: a view with a stride of 0 (``expand``) or whose
    storage is smaller than its elements repeats the same bytes, and is refused. All 3x3
    weights together, as float32, may not exceed :data:`MAX_BYTES_PER_FILE_BYTE` times the
    bytes of ``paths`` (the checkpoint or ONNX files). Raises :class:`SourceError`.
    """
    file_bytes = sum(path.stat().st_size for path in paths)
    total = 0
    for conv in source.convs:
        weight = conv.weight
        needed = weight.numel() * weight.element_size()
        held = weight.untyped_storage().nbytes() - weight.storage_offset() * weight.element_size()
        repeated = any(s == 0 and n > 1 for s, n in zip(weight.stride(), weight.shape, strict=True))
        # An empty weight repeats nothing; extraction refuses it with its own reason.
        if weight.numel() and (repeated or needed > held):
            raise SourceError(
                f"{conv.name}: weight of shape {tuple(weight.shape)} is an expanded or "
                f"overlapping view ({weight.numel():,} values on {held:,} bytes of storage), "
                "not real weights; save tensors that own their data (tensor.clone())"
            )
        if conv.is_3x3:
            total += weight.numel() * 4
    if total > MAX_BYTES_PER_FILE_BYTE * max(file_bytes, 1):
        raise SourceError(
            f"{source.info.name}: its 3x3 weights would take {total:,} bytes as float32 from "
            f"{file_bytes:,} bytes of files, more than the {MAX_BYTES_PER_FILE_BYTE} times "
            "allowed; the file declares more weights than it holds"
        )
