"""timm's pretrained models by name: ``resnet50.a1_in1k`` -> its Hub file -> a ModelSource.

Resolved the way timm resolves them (its ``pretrained_cfg`` names the Hub repository,
``hf_hub_id``, and the file is ``model.safetensors``), but through huggingface_hub
directly: timm 1.0.9, which robustbench 1.1.1 pins, imports
``huggingface_hub.repo_type_and_id_from_hf_id``, gone from huggingface_hub 2.4, so
``timm.create_model(..., pretrained=True)`` fails there (PLATFORM.md). The architecture is
built without materialising random weights (on the meta device, then the checkpoint's
tensors are assigned), and its traced graph gives depth.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

import torch

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources import safetensors_files as st
from filterdb.ingest.sources.base import Candidate, ModelSource, load_tensors
from filterdb.ingest.sources.hub_cache import HubFile, expected_path, hub_file
from filterdb.warehouse.records import ModelInfo, TrainingInfo

# Dataset names in timm's pretrained tags (``<recipe>_<data>[_ft_<data>]``) as filterdb
# stores them: ``in1k`` is the ImageNet of the robustness papers and RobustBench.
TAG_DATASETS = {
    "in1k": "imagenet",
    "in12k": "imagenet-12k",
    "in21k": "imagenet-22k",  # timm writes both names for the 21,841-class release
    "in22k": "imagenet-22k",
    "ig1b": "instagram-1b",
    "ig3b": "instagram-3b",
    "yfcc100m": "yfcc100m",
    "laion2b": "laion-2b",
    "laion400m": "laion-400m",
    "openai": "openai-wit",
    "jft300m": "jft-300m",
    "in1k_288": "imagenet",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def tag_datasets(tag: str) -> tuple[str | None, str | None]:
    """(training dataset, pretraining dataset) from a timm tag.

    ``a1_in1k`` -> (imagenet, None); ``in22k_ft_in1k`` -> (imagenet, imagenet-22k);
    ``in22k`` -> (imagenet-22k, None): the last dataset named is what the weights were
    trained on last, an earlier one (before ``_ft_``) their pretraining.
    """
    pre, _, fine = tag.rpartition("_ft_")
    found = [TAG_DATASETS[t] for t in fine.split("_") if t in TAG_DATASETS]
    earlier = [TAG_DATASETS[t] for t in pre.split("_") if t in TAG_DATASETS]
    return (found[-1] if found else None), (earlier[-1] if earlier else None)


def pretrained_cfg(spec: str):
    """timm's pretrained config of ``NAME[.TAG]`` (the default tag without one).

    Raises :class:`SourceError` with the closest names when timm knows no such weights.
    """
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, tag = spec.partition(".")
    try:
        cfg = get_pretrained_cfg(spec, allow_unregistered=False)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        known = timm.list_models(pretrained=True)
        close = difflib.get_close_matches(spec, known, n=4, cutoff=0.6)
        if not close and timm.models.is_model(arch):
            close = [name for name in known if name.startswith(f"{arch}.")][:4]
        hint = f"closest: {', '.join(close)}" if close else "see timm.list_models(pretrained=True)"
        what = "no pretrained weights on the Hub" if cfg is not None else "no pretrained model"
        raise SourceError(f"timm has {what} named {spec!r}; {hint}")
    return cfg


def timm_weights(spec: str, *, revision: str | None = None) -> tuple[object, HubFile]:
    """timm's config of ``spec`` and its weight file in the Hub cache (fetched if needed)."""
    cfg = pretrained_cfg(spec)
    repo_id = cfg.hf_hub_id.partition("@")[0]
    for filename in (cfg.hf_hub_filename, *WEIGHT_FILES):
        if filename and (found := hub_file(repo_id, filename, revision=revision)):
            return cfg, found
    raise CheckpointMissing(
        f"{repo_id} has no {WEIGHT_FILES[0]} (expected at "
        f"{expected_path(repo_id, WEIGHT_FILES[0], revision=revision)}); fetch it with "
        f"`hf download {repo_id}`"
    )


def load_hub_weights(path: Path) -> dict[str, torch.Tensor]:
    """A Hub weight file: safetensors (header checked) or a torch pickle of tensors."""
    if path.name.endswith(".safetensors"):
        tensors = st.load_safetensors(path)
    else:
        loaded = load_tensors(path)
        if not isinstance(loaded, Mapping):
            raise SourceError(f"{path} holds no state_dict; it is not a model's weights")
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    st.check_weight_dtypes(tensors, origin=path)
    return tensors


def build_timm(
    name: str, state_dict: Mapping[str, torch.Tensor], *, origin: object, **kwargs: object
) -> torch.nn.Module:
    """timm's ``name`` with ``state_dict`` as its weights, never initialised at random.

    Built on the meta device and given the checkpoint's tensors (``assign=True``, so they
    keep their stored dtype). A model whose constructor computes on tensors cannot be
    built on meta (timm's byobnet, say) and is built on the CPU instead; a buffer the
    checkpoint does not hold is then the constructor's own, not a random weight.
    """
    import timm

    try:
        with torch.device("meta"):
            module = timm.create_model(name, pretrained=False, **kwargs)
        assign = True
    except RuntimeError:
        raise SourceError(f"timm has no model {name!r}; see timm.list_models()") from None
    except NotImplementedError:  # "Cannot copy out of meta tensor": computes when built
        module = timm.create_model(name, pretrained=False, **kwargs)
        assign = False
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    except RuntimeError as error:
        summary = " ".join(str(error).split())[:300]
        raise SourceError(f"{origin} does not fit timm's {name}: {summary}") from None
    left = [key for key, t in module.state_dict().items() if t.is_meta]
    if left:
        raise SourceError(
            f"{origin}: timm's {name} keeps {left[0]} uninitialised ({len(left)} tensors); "
            "ingest it with --arch timm:NAME through `ingest checkpoint`"
        )
    return module.eval()


def timm_source(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_name: str,
    source: str,
    source_uri: str,
    cfg: object | None,
    training: TrainingInfo,
    origin: object,
    architecture: str | None = None,
    model_kwargs: Mapping[str, object] | None = None,
) -> ModelSource:
    """A ModelSource for ``state_dict`` in timm's ``name`` (``arch[.tag]``), graph depth.

    ``architecture`` is the name stored for pairing (default: ``name`` without its tag).
    """
    from filterdb.ingest.sources.checkpoint import parameter_count
    from filterdb.ingest.sources.torch_graph import trace_convs

    module = build_timm(name, state_dict, origin=origin, **(model_kwargs or {}))
    input_size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    traced = trace_convs(module, input_shape=(1, *input_size))
    info = ModelInfo(
        name=model_name,
        source=source,
        source_uri=source_uri,
        architecture=architecture or name.partition(".")[0],
        family=type(module).__name__,
        n_parameters=parameter_count(state_dict),
        producer=f"timm {_timm_version()}, torch {torch.__version__}",
        license=getattr(cfg, "license", None),
        training=training,
    )
    notes = [note] if (note := st.float64_note(state_dict)) else []
    convs = st.with_source_dtypes(traced.convs, state_dict)
    return ModelSource(info, convs, traced.depth_method, traced.n_unreached_convs, notes=notes)


def default_training(cfg: object, training: TrainingInfo | None) -> TrainingInfo:
    """``training`` with its unknowns filled from timm's config: datasets from the tag, paper."""
    training = training or TrainingInfo()
    dataset, pretraining = tag_datasets(getattr(cfg, "tag", None) or "")
    training.training_dataset = training.training_dataset or dataset
    training.pretraining_dataset = training.pretraining_dataset or pretraining
    paper = (getattr(cfg, "paper_ids", None) or "").split(",")[0].strip()
    if not training.paper_url and paper.startswith("arXiv:"):
        training.paper_url = f"https://arxiv.org/abs/{paper.removeprefix('arXiv:')}"
    return training


def timm_candidate(
    spec: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    architecture: str | None = None,
    training: TrainingInfo | None = None,
) -> Candidate:
    """timm's pretrained ``NAME[.TAG]`` as an ingest Candidate; the file is fetched now.

    The default model name is ``timm:<name>.<tag>`` with the tag timm resolved.
    """
    cfg, weights = timm_weights(spec, revision=revision)
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    model_name = name or f"timm:{full}"
    info = default_training(cfg, training)

    def read() -> ModelSource:
        return timm_source(
            full,
            load_hub_weights(weights.path),
            model_name=model_name,
            source="timm",
            source_uri=weights.uri,
            cfg=cfg,
            training=info,
            origin=weights.path,
            architecture=architecture or cfg.architecture,
        )

    return Candidate(name=model_name, source="timm", paths=[weights.path], read=read)


def _timm_version() -> str:
    import timm

    return timm.__version__
