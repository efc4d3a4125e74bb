"""Torch checkpoints: a state_dict file, with or without an architecture (SPEC section 6).

With an architecture (``robustbench:<dataset>/<threat>/<name>``, ``timm:<name>`` or
``torchvision:<name>``) the state_dict is loaded into it and the traced graph gives depth
and tells which convs the forward pass reaches. Without one, every 4-D weight is a conv in
key order, and depth is that order.

A ``.safetensors`` file, a sharded safetensors index (``model.safetensors.index.json``) or
the directory holding one are read by :mod:`~filterdb.ingest.sources.safetensors_files`;
float16 and bfloat16 weights are stored as their exact float32 values.

TorchScript files are not accepted as architectures: loading one runs its code, outside
the ``weights_only`` guarantee, and torch.fx cannot trace a scripted module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from filterdb.errors import SourceError
from filterdb.ingest.sources import safetensors_files as st
from filterdb.ingest.sources.base import (
    Candidate,
    ConvLayer,
    ModelSource,
    load_tensors,
    parameter_count,
    require_untargeted_normal,
)
from filterdb.warehouse.records import ModelInfo, TrainingInfo, folded_name

# Wrappers seen around state_dicts in the wild, and prefixes left by DataParallel and
# Lightning-style wrappers.
NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net")
STRIPPED_PREFIXES = ("module.", "model.")
ARCH_KINDS = ("robustbench", "timm", "torchvision")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file without running any pickled code.

    Unwraps ``state_dict``/``model`` nesting and strips ``module.``/``model.`` prefixes
    shared by every key. Raises :class:`SourceError` naming the cause: a missing file, an
    HTML page (failed download), a pickle that needs code, a corrupt or truncated file,
    quantized weights.
    """
    if st.is_sharded(path):
        tensors = st.load_sharded(path)
    elif path.suffix == ".safetensors":
        tensors = st.load_safetensors(path)
    else:
        if not path.is_file():
            raise SourceError(f"no checkpoint at {path}; check the path")
        tensors = _unwrap(load_tensors(path), path)
    st.check_weight_dtypes(tensors, origin=path)
    return tensors


def read_checkpoint(
    path: Path,
    *,
    name: str | None = None,
    arch: str | None = None,
    architecture: str | None = None,
    training: TrainingInfo | None = None,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    fold_batchnorm: bool = False,
) -> ModelSource:
    """A :class:`ModelSource` for a state_dict file, optionally with an architecture.

    ``arch`` builds the network (for graph depth); ``architecture`` is the name stored for
    pairing and grouping (default: ``arch``). ``fold_batchnorm`` folds each BatchNorm that
    consumes a conv's output into that conv, as the TorchScript ONNX exporter does in eval
    mode (weights form ``bn_folded``, default name ``<stem>+bn_folded``); it needs ``arch``.
    """
    _require_arch_to_fold(arch, fold_batchnorm)
    state_dict = load_state_dict(path)
    if arch is None:
        convs = convs_in_key_order(state_dict)
        depth_method, n_unreached, arch_name, family = "key_order", 0, None, None
    else:
        module = build_architecture(arch, state_dict, checkpoint=path)
        from filterdb.ingest.sources.torch_graph import trace_convs

        traced = trace_convs(module, input_shape=input_shape, fold_batchnorm=fold_batchnorm)
        convs, depth_method = st.with_source_dtypes(traced.convs, state_dict), traced.depth_method
        n_unreached = traced.n_unreached_convs
        arch_name, family = arch, type(module).__name__
    info = ModelInfo(
        name=name or default_name(path, fold_batchnorm=fold_batchnorm),
        source="checkpoint",
        source_uri=str(path),
        architecture=architecture or arch_name,
        family=family,
        n_parameters=parameter_count(state_dict),
        producer=f"torch {torch.__version__}",
        weights_form="bn_folded" if fold_batchnorm else "raw",
        training=training or TrainingInfo(),
    )
    notes = [note] if (note := st.float64_note(state_dict)) else []
    if arch is None:
        notes.append(key_order_note("pass --arch (robustbench:..., timm:... or torchvision:...)"))
    return ModelSource(info, convs, depth_method, n_unreached, notes=notes)


def key_order_note(fix: str) -> str:
    """The warning for a model stored without an architecture: depth is only key order.

    ``fix`` says how this source gets an architecture. Key order is not graph depth: 4 of
    resnet18's 16 layers land in another depth bin than with ``--arch`` (issue 15).
    """
    return (
        "warning: no architecture, so conv depth is the state_dict key order (depth_method "
        f"key_order), which can put layers in the wrong depth bin; {fix} for graph depth"
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (C,H,W) or ``"1,3,224,224"`` as the shape of one traced input.

    Raises :class:`SourceError` for anything but three or four positive integers.
    """
    try:
        sizes = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if len(sizes) not in (3, 4) or min(sizes) < 1:
        raise SourceError(
            f"--input-shape {text!r} is not C,H,W; give three positive integers, e.g. 3,224,224"
        )
    return sizes if len(sizes) == 4 else (1, *sizes)


def default_name(path: Path, *, fold_batchnorm: bool = False) -> str:
    """The file name without its suffix (a sharded checkpoint's directory name), with
    ``+bn_folded`` for folded weights."""
    if st.is_sharded(path):
        stem = (path if path.is_dir() else path.parent).resolve().name
    else:
        stem = path.stem
    return folded_name(stem) if fold_batchnorm else stem


def _require_arch_to_fold(arch: str | None, fold_batchnorm: bool) -> None:
    if fold_batchnorm and arch is None:
        raise SourceError(
            "--fold-batchnorm needs the architecture, to find which BatchNorm follows which "
            "conv; pass --arch (robustbench:..., timm:... or torchvision:...)"
        )


def convs_in_key_order(state_dict: Mapping[str, torch.Tensor]) -> list[ConvLayer]:
    """Every 4-D weight as a conv, depth = its position (no architecture: SPEC section 4)."""
    weights = [(key, t) for key, t in state_dict.items() if t.dim() == 4 and t.is_floating_point()]
    return [
        ConvLayer(name=key.removesuffix(".weight"), weight=tensor, graph_depth=position)
        for position, (key, tensor) in enumerate(weights)
    ]


def build_architecture(
    arch: str, state_dict: Mapping[str, torch.Tensor], *, checkpoint: Path
) -> torch.nn.Module:
    """Build ``arch`` and give it ``state_dict`` as its weights (strict), never random ones.

    Built on the meta device and the checkpoint's tensors assigned (issue 14: no random
    initialisation, no second copy). A constructor that computes on tensors cannot run on
    meta; such a model is built on the CPU and the weights copied in.
    """
    from filterdb.ingest.sources.robustbench import meta_loading

    kind, _, spec = arch.partition(":")
    if kind not in ARCH_KINDS:
        raise SourceError(
            f"unknown architecture {arch!r}; use robustbench:<dataset>/<threat>/<name>, "
            "timm:<name> or torchvision:<name>"
        )
    _import_library(kind)  # imported outside meta: module-level tensors stay real
    try:
        with meta_loading():
            module = _build_named(kind, spec)
        assign = True
    except NotImplementedError:  # "Cannot copy out of meta tensor": computes when built
        module = _build_named(kind, spec)
        assign = False
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    except RuntimeError as error:
        summary = " ".join(str(error).split())[:300]
        raise SourceError(
            f"{checkpoint} does not fit architecture {arch}: {summary}; check --arch"
        ) from None
    return module.eval()


def _import_library(kind: str) -> None:
    if kind == "timm":
        import timm  # noqa: F401
    elif kind == "torchvision":
        import torchvision  # noqa: F401
    else:
        from filterdb.ingest.sources.robustbench_compat import import_robustbench

        import_robustbench()
        import torchvision  # noqa: F401  (robustbench's ImageNet Standard entries use it)


def _build_named(kind: str, spec: str) -> torch.nn.Module:
    if kind == "timm":
        import timm

        try:
            return timm.create_model(spec, pretrained=False)
        except RuntimeError:
            raise SourceError(f"timm has no model {spec!r}; see timm.list_models()") from None
    if kind == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(spec, weights=None)
        except ValueError:
            raise SourceError(
                f"torchvision has no model {spec!r}; see torchvision.models.list_models()"
            ) from None
    from filterdb.ingest.sources.robustbench import build_zoo_architecture

    dataset, threat_model, name = _split_zoo_spec(spec)
    return build_zoo_architecture(name, dataset=dataset, threat_model=threat_model)


def _split_zoo_spec(spec: str) -> tuple[str, str, str]:
    parts = spec.split("/")
    if len(parts) != 3:
        raise SourceError(
            f"malformed architecture robustbench:{spec}; use "
            "robustbench:<dataset>/<threat>/<name>, e.g. robustbench:cifar10/Linf/Standard"
        )
    return parts[0], parts[1], parts[2]


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, Mapping):
        nested = [k for k in NESTING_KEYS if isinstance(loaded.get(k), Mapping)]
        if not nested or any(isinstance(v, torch.Tensor) for v in loaded.values()):
            break
        loaded = loaded[nested[0]]
    if not isinstance(loaded, Mapping) or not loaded:
        raise SourceError(
            f"{path} holds no state_dict (found {type(loaded).__name__}); save "
            "model.state_dict() with torch.save"
        )
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise SourceError(f"{path} holds no tensors; save model.state_dict() with torch.save")
    for prefix in STRIPPED_PREFIXES:
        if all(key.startswith(prefix) for key in tensors):
            tensors = {key.removeprefix(prefix): t for key, t in tensors.items()}
    return tensors


def checkpoint_candidate(
    path: Path,
    *,
    name: str | None = None,
    arch: str | None = None,
    architecture: str | None = None,
    training: TrainingInfo | None = None,
    input_shape: tuple[int, ...] = (1, 3, 32, 32),
    fold_batchnorm: bool = False,
) -> Candidate:
    """A checkpoint file as an ingest :class:`Candidate` (nothing is loaded yet).

    A sharded safetensors checkpoint is identified by its shards, in index order.
    Raises :class:`SourceError` for a missing file, ``fold_batchnorm`` without ``arch``,
    or a normally trained model given a threat model or eps.
    """
    if st.is_sharded(path):
        paths = st.shard_paths(path)[0]
    elif not path.is_file():
        raise SourceError(f"no checkpoint at {path}; check the path")
    else:
        paths = [path]
    _require_arch_to_fold(arch, fold_batchnorm)
    require_untargeted_normal(training)
    return Candidate(
        name=name or default_name(path, fold_batchnorm=fold_batchnorm),
        source="checkpoint",
        paths=paths,
        read=lambda: read_checkpoint(
            path,
            name=name,
            arch=arch,
            architecture=architecture,
            training=training,
            input_shape=input_shape,
            fold_batchnorm=fold_batchnorm,
        ),
        weights_form="bn_folded" if fold_batchnorm else "raw",
    )
