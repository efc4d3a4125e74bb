"""torchvision's pretrained weights from the torch hub cache: ``resnet50`` [``--weights``].

torchvision downloads ``Weights.url`` into ``torch.hub.get_dir()/checkpoints/<file>``
(``$TORCH_HOME/hub``, else ``~/.cache/torch/hub``); the file name carries the first hex
digits of the file's SHA-256 (``resnet50-11ad3fa6.pth``), which torchvision checks
(``check_hash=True``, torch.hub's ``HASH_REGEX``). The same check runs here, so a partial
or replaced download is refused. Metadata comes from ``Weights.meta``: ImageNet-1K acc@1 as
clean accuracy, the parameter count, and the training recipe as the paper link.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources import safetensors_files as st
from filterdb.ingest.sources.base import Candidate, ModelSource
from filterdb.warehouse.records import ModelInfo, TrainingInfo

# torchvision reports these metric tables; ImageNet-1K is the ImageNet of the papers.
METRIC_DATASETS = {"ImageNet-1K": "imagenet"}


def resolve_weights(model: str, weights: object | None = None):
    """torchvision's weights entry for ``model``: ``weights`` (name or entry) or DEFAULT."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model)
    except (ValueError, KeyError):
        close = difflib.get_close_matches(model, torchvision.models.list_models(), n=4)
        hint = f"closest: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise SourceError(f"torchvision has no model {model!r}; {hint}") from None
    if weights is None or weights == "DEFAULT":
        return enum.DEFAULT
    if not isinstance(weights, str):
        return weights
    member = weights.rpartition(".")[2]
    if member not in enum.__members__:
        raise SourceError(
            f"{enum.__name__} has no {member!r}; choose one of {', '.join(enum.__members__)}"
        )
    return enum[member]


def cached_weights(entry) -> Path:
    """The torch hub cache file of a weights entry, its hash prefix checked.

    Raises :class:`CheckpointMissing` naming the exact path when it is not there, and
    :class:`SourceError` when its SHA-256 does not start with the prefix in its name.
    """
    from torch.hub import HASH_REGEX

    filename = os.path.basename(urlparse(entry.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise CheckpointMissing(
            f"{entry} is not in the torch hub cache (expected at {path}); fetch it once online "
            f"with torchvision (weights={entry}) or download {entry.url} there"
        )
    match = HASH_REGEX.search(filename)
    if match and match.group(1):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        if not digest.hexdigest().startswith(match.group(1)):
            raise SourceError(
                f"{path} fails torchvision's hash check (sha256 {digest.hexdigest()[:12]}..., "
                f"the name says {match.group(1)}); the download is partial or replaced: "
                "delete it and fetch it again"
            )
    return path


def torchvision_candidate(
    model: str,
    *,
    weights: object | None = None,
    name: str | None = None,
    architecture: str | None = None,
    training: TrainingInfo | None = None,
) -> Candidate:
    """torchvision's ``model`` with pretrained ``weights`` (default DEFAULT) as a Candidate.

    The default model name is ``torchvision:<model>.<WEIGHTS>``, e.g.
    ``torchvision:resnet50.IMAGENET1K_V2``.
    """
    entry = resolve_weights(model, weights)
    path = cached_weights(entry)
    model_name = name or f"torchvision:{model}.{getattr(entry, 'name', 'custom')}"
    info = _training(entry.meta, training)

    def read() -> ModelSource:
        from filterdb.ingest.sources.base import parameter_count
        from filterdb.ingest.sources.checkpoint import load_state_dict
        from filterdb.ingest.sources.torch_graph import trace_convs

        state_dict = load_state_dict(path)
        module = _build(model, state_dict, origin=path)
        traced = trace_convs(module, input_shape=(1, 3, 224, 224))
        notes = [note] if (note := st.float64_note(state_dict)) else []
        source_info = ModelInfo(
            name=model_name,
            source="torchvision",
            source_uri=entry.url,
            architecture=architecture or model,
            family=type(module).__name__,
            n_parameters=parameter_count(state_dict),
            producer=f"torchvision {_torchvision_version()}",
            training=info,
        )
        convs = st.with_source_dtypes(traced.convs, state_dict)
        return ModelSource(
            source_info, convs, traced.depth_method, traced.n_unreached_convs, notes=notes
        )

    return Candidate(name=model_name, source="torchvision", paths=[path], read=read)


def _training(meta: dict, training: TrainingInfo | None) -> TrainingInfo:
    training = training or TrainingInfo()
    metrics = meta.get("_metrics") or {}
    for table, dataset in METRIC_DATASETS.items():
        if table in metrics:
            training.training_dataset = training.training_dataset or dataset
            if training.clean_acc is None:
                training.clean_acc = metrics[table].get("acc@1")
    training.paper_url = training.paper_url or meta.get("recipe")
    return training


def _build(model: str, state_dict: dict, *, origin: Path) -> torch.nn.Module:
    import torchvision

    # Built on the meta device and given the checkpoint's tensors: no random initialisation.
    with torch.device("meta"):
        module = torchvision.models.get_model(model, weights=None)
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        summary = " ".join(str(error).split())[:300]
        raise SourceError(f"{origin} does not fit torchvision's {model}: {summary}") from None
    return module.eval()


def _torchvision_version() -> str:
    import torchvision

    return torchvision.__version__
