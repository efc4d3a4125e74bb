"""The RobustBench model zoo as a source (SPEC section 6).

Weights come through robustbench's own ``load_model`` and its cache layout
``<model_dir>/<dataset>/<threat_model>/<name>.pt``, so its key handling (``module.`` and
``model.`` prefixes, ``last`` checkpoints, ensemble members, ImageNet's normaliser) is its
own; but the network is built on the meta device and the checkpoint's tensors are assigned
into it (:func:`meta_loading`), so no random weights are drawn and no second copy of the
weights is made (issue 14). The convs' weights are the checkpoint's tensors.

Offline nothing may be downloaded, so every expected file is checked first: a missing one
is a :class:`CheckpointMissing` naming the path to put it at, an HTML page or a pickle
that needs code is refused before robustbench sees it. robustbench is imported through
:mod:`filterdb.ingest.sources.robustbench_compat` only.
"""

from __future__ import annotations

import importlib.metadata
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources.base import Candidate, ModelSource, load_tensors, parameter_count
from filterdb.ingest.sources.leaderboard import LeaderboardEntry, training_type_of
from filterdb.ingest.sources.robustbench_compat import import_robustbench
from filterdb.ingest.sources.robustbench_index import (
    SOURCE,
    checkpoint_paths,
    require_entry,
    zoo_model_name,
)
from filterdb.ingest.sources.torch_graph import trace_convs
from filterdb.warehouse.records import ModelInfo, TrainingInfo


def producer() -> str:
    """``robustbench <installed version>``, read from the package metadata (no import)."""
    try:
        return f"robustbench {importlib.metadata.version('robustbench')}"
    except importlib.metadata.PackageNotFoundError:
        return "robustbench"


# Where robustbench loads each ensemble file <name>.pt_m<i>.pt (robustbench/utils.py
# load_model); any other ensemble keeps its members in `models`. Bai2023Improving's third
# file also fills a BatchNorm1d beside the policy net, which holds no conv.
ENSEMBLE_MEMBERS = {
    "Bai2023Improving": ("comp_model.models.0", "comp_model.models.1", "comp_model.policy_net"),
    "Bai2024MixedNUTS": ("std_model", "rob_model"),
}
# ImageNet "Standard" entries are torchvision models that robustbench builds with
# pretrained=True, a hub download that ignores model_dir (robustbench/model_zoo/imagenet.py).
TORCHVISION_HUB_ENTRIES = {"Standard_R50": "resnet50"}
# Buffers of robustbench's normalize_model wrapper (its architectures/utils_architectures.py):
# constants set by its constructor, absent from a checkpoint of the bare network.
NORMALIZER_BUFFERS = ("normalize.mean", "normalize.std")
# Per-entry subclasses live in these modules; the architecture family is the first class
# above them (Ding2020MMANet -> WideResNet).
ZOO_ENTRY_MODULES = (
    "robustbench.model_zoo.cifar10",
    "robustbench.model_zoo.cifar100",
    "robustbench.model_zoo.imagenet",
)


@contextmanager
def meta_loading() -> Iterator[None]:
    """Modules built in the body live on the meta device; loading a state_dict assigns.

    Inside, ``nn.Module.load_state_dict`` keeps the given tensors as the module's own
    (``assign=True``) instead of copying them into freshly initialised ones, and
    ``torch.load`` memory-maps zip checkpoints and loads tensors only (the files were
    checked by :func:`~filterdb.ingest.sources.base.load_tensors` first). robustbench's
    ``load_model`` runs unchanged in here, with its own key handling. Not thread-safe:
    it swaps two torch functions for the duration of the body.
    """
    load_state_dict, load = nn.Module.load_state_dict, torch.load

    def assigning(module, state_dict, strict=True, assign=False):
        return load_state_dict(module, state_dict, strict=strict, assign=True)

    def mapped(path, *args, **kwargs):
        if isinstance(path, str | Path) and zipfile.is_zipfile(path):
            kwargs.setdefault("mmap", True)
        kwargs["weights_only"] = True
        return load(path, *args, **kwargs)

    nn.Module.load_state_dict, torch.load = assigning, mapped
    try:
        with torch.device("meta"):
            yield
    finally:
        nn.Module.load_state_dict, torch.load = load_state_dict, load


def require_loaded_convs(convs: list, *, origin: object) -> None:
    """Refuse a conv whose weight the checkpoint did not hold (still on the meta device)."""
    empty = [conv.name for conv in convs if conv.weight.is_meta]
    if empty:
        raise SourceError(
            f"{origin} holds no weight for conv {empty[0]} ({len(empty)} convs); check that "
            "the file is this model's checkpoint"
        )


def build_zoo_architecture(name: str, *, dataset: str, threat_model: str) -> nn.Module:
    """The architecture of a zoo entry; nothing is downloaded.

    Entries that robustbench fetches from a hub (timm or torchvision) are built without
    pretrained weights. Called inside :func:`meta_loading`, the parameters are on the meta
    device (no random initialisation). Raises :class:`SourceError` for a name not in the
    zoo.
    """
    spec = _zoo_spec(name, dataset=dataset, threat_model=threat_model)
    if _loads_from_hub(name, dataset=dataset, threat_model=threat_model):
        return _build_hub_architecture(name, dataset=dataset, threat_model=threat_model)
    return spec["model"]()


def zoo_candidate(
    name: str,
    *,
    dataset: str,
    threat_model: str,
    model_dir: Path,
    leaderboard: LeaderboardEntry | None = None,
    device: str | torch.device = "cpu",
    fold_batchnorm: bool = False,
) -> Candidate:
    """A zoo entry as an ingest :class:`Candidate`; its checkpoint files must be in place.

    Raises :class:`CheckpointMissing` naming the path of any missing file.
    """
    paths = checkpoint_paths(name, dataset=dataset, threat_model=threat_model, model_dir=model_dir)
    _require_files(paths, name=name, dataset=dataset, threat_model=threat_model)
    return Candidate(
        name=zoo_model_name(
            name, dataset=dataset, threat_model=threat_model, fold_batchnorm=fold_batchnorm
        ),
        source=SOURCE,
        paths=paths,
        read=lambda: load_zoo_model(
            name,
            dataset=dataset,
            threat_model=threat_model,
            model_dir=model_dir,
            leaderboard=leaderboard,
            device=device,
            fold_batchnorm=fold_batchnorm,
        ),
        weights_form="bn_folded" if fold_batchnorm else "raw",
    )


def load_zoo_model(
    name: str,
    *,
    dataset: str,
    threat_model: str,
    model_dir: Path,
    leaderboard: LeaderboardEntry | None = None,
    device: str | torch.device = "cpu",
    fold_batchnorm: bool = False,
) -> ModelSource:
    """Load a zoo entry from robustbench's cache under ``model_dir``, offline.

    The model is loaded by robustbench's ``load_model`` (a hub entry: built without
    pretrained weights, its file loaded here) inside :func:`meta_loading`, and traced
    there: ``convs`` are the convs its forward pass reaches, their weights the
    checkpoint's own tensors (``device`` is unused now: extraction places each weight);
    ensemble members are traced one by one with their layer names prefixed ``m0.``,
    ``m1.``, ... (SPEC section 4). Training metadata comes
    from ``leaderboard`` when given, else only what the zoo tells (the Standard rule).
    ``fold_batchnorm`` folds each BatchNorm that consumes a conv's output into that conv, as
    the papers' ONNX exports had it (:mod:`filterdb.ingest.batchnorm`); the model is then
    named ``<dataset>/<threat_model>/<name>+bn_folded`` with weights form ``bn_folded``.

    Raises
    ------
    CheckpointMissing
        A checkpoint file is not in place; the message names the path to put it at.
    SourceError
        The name is not in the zoo, a file is an HTML page, needs code to unpickle, is
        corrupt, or does not fit the architecture; or robustbench is missing.
    """
    spec = _zoo_spec(name, dataset=dataset, threat_model=threat_model)
    training = _training(name, dataset=dataset, threat_model=threat_model, entry=leaderboard)
    paths = checkpoint_paths(name, dataset=dataset, threat_model=threat_model, model_dir=model_dir)
    _require_files(paths, name=name, dataset=dataset, threat_model=threat_model)
    if _loads_from_hub(name, dataset=dataset, threat_model=threat_model):
        model = _load_hub_entry(name, dataset=dataset, threat_model=threat_model, path=paths[0])
    else:
        for path in paths:
            load_tensors(path)  # refuse before robustbench's own torch.load sees the file
        model = _load_with_robustbench(
            name, dataset=dataset, threat_model=threat_model, model_dir=model_dir, paths=paths
        )
    model = model.eval()

    # ImageNet models are traced at their input size; the rest are 32x32 CIFAR models.
    input_shape = (1, 3, 224, 224) if dataset == "imagenet" else (1, 3, 32, 32)
    if _is_ensemble(spec):
        members = _ensemble_members(model, name, n_members=len(paths))
        traced = [
            trace_convs(
                member, input_shape=input_shape, prefix=f"m{i}.", fold_batchnorm=fold_batchnorm
            )
            for i, member in enumerate(members)
        ]
        families = {_family(member) for member in members}
        family = families.pop() if len(families) == 1 else type(model).__name__
    else:
        traced = [trace_convs(model, input_shape=input_shape, fold_batchnorm=fold_batchnorm)]
        family = _family(model)
    require_loaded_convs([c for t in traced for c in t.convs], origin=paths[0])
    depth_methods = {t.depth_method for t in traced}
    # A member that fx cannot trace falls back to execution order; the model's depths are
    # then only as good as its weakest member's.
    depth_method = "graph" if depth_methods == {"graph"} else "execution_order"

    # Without the leaderboard's name ("WideResNet-28-10") the class name alone would make
    # WRN-28-10 and WRN-34-10 one architecture for pairing; the size tells them apart. The
    # name counts learnable parameters, as it always has (stored names must not change).
    learnable = sum(p.numel() for p in model.parameters())
    architecture = (leaderboard.architecture if leaderboard else None) or (
        f"{family} ({learnable:,} parameters)"
    )
    info = ModelInfo(
        name=zoo_model_name(
            name, dataset=dataset, threat_model=threat_model, fold_batchnorm=fold_batchnorm
        ),
        source=SOURCE,
        # robustbench's model path; an ensemble's member files carry it as their prefix.
        source_uri=str(paths[0].with_name(f"{name}.pt")),
        architecture=architecture,
        family=family,
        n_parameters=parameter_count(model.state_dict()),
        producer=producer(),
        weights_form="bn_folded" if fold_batchnorm else "raw",
        training=training,
    )
    return ModelSource(
        info=info,
        convs=[conv for t in traced for conv in t.convs],
        depth_method=depth_method,
        n_unreached_convs=sum(t.n_unreached_convs for t in traced),
    )


def _zoo_table(dataset: str, threat_model: str) -> Mapping[str, dict]:
    import_robustbench()
    from robustbench.model_zoo import model_dicts

    tables = {
        (ds.value, tm.value): entries
        for ds, by_threat in model_dicts.items()
        for tm, entries in by_threat.items()
    }
    if (dataset, threat_model) not in tables:
        known = ", ".join(f"{ds}/{tm}" for ds, tm in tables)
        raise SourceError(f"the zoo has no {dataset}/{threat_model} models; use one of {known}")
    return tables[dataset, threat_model]


def _zoo_spec(name: str, *, dataset: str, threat_model: str) -> dict:
    require_entry(name, dataset=dataset, threat_model=threat_model)
    return _zoo_table(dataset, threat_model)[name]


def _is_ensemble(spec: dict) -> bool:
    return isinstance(spec["gdrive_id"], list)


def _timm_name(name: str, *, dataset: str, threat_model: str) -> str:
    # The name robustbench looks up in timm's registry (robustbench/utils.py load_model).
    return f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"


def _loads_from_hub(name: str, *, dataset: str, threat_model: str) -> bool:
    """True for entries robustbench loads from timm's or torchvision's hub, not model_dir."""
    import timm

    return (
        timm.is_model(_timm_name(name, dataset=dataset, threat_model=threat_model))
        or (dataset == "imagenet" and "Standard" in name)  # robustbench/utils.py load_model
    )


def _require_files(paths: list[Path], *, name: str, dataset: str, threat_model: str) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        where = ", ".join(str(path) for path in missing)
        raise CheckpointMissing(
            f"no checkpoint for robustbench {dataset}/{threat_model}/{name}: put the file at "
            f"{where} (robustbench's cache layout; nothing is downloaded)"
        )


def _load_with_robustbench(
    name: str, *, dataset: str, threat_model: str, model_dir: Path, paths: list[Path]
) -> nn.Module:
    rb = import_robustbench()
    try:
        try:
            with meta_loading():
                return rb.utils.load_model(
                    model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model
                )
        except NotImplementedError:
            # A constructor that computes on tensors cannot run on meta ("Cannot copy out of
            # meta tensor"): build it on the CPU as robustbench does, and copy the weights in.
            return rb.utils.load_model(
                model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model
            )
    # robustbench reports a state_dict that does not fit (or an architecture that needs
    # CUDA) as RuntimeError, a file without the key it expects as KeyError.
    except (RuntimeError, KeyError) as error:
        files = ", ".join(str(path) for path in paths)
        raise SourceError(
            f"robustbench cannot load {dataset}/{threat_model}/{name} from {files} "
            f"({_first_line(error)}); check that the file is this entry's checkpoint"
        ) from None


def _build_hub_architecture(name: str, *, dataset: str, threat_model: str) -> nn.Module:
    import timm

    rb = import_robustbench()
    timm_name = _timm_name(name, dataset=dataset, threat_model=threat_model)
    if timm.is_model(timm_name):
        # What robustbench's load_model creates, less pretrained=True (a hub download).
        return timm.create_model(
            timm_name,
            num_classes=rb.utils.DATASET_CLASSES[rb.utils.BenchmarkDataset(dataset)],
            pretrained=False,
        )
    import torchvision
    from robustbench.model_zoo import imagenet
    from robustbench.model_zoo.architectures.utils_architectures import normalize_model

    if name not in TORCHVISION_HUB_ENTRIES:
        raise SourceError(
            f"robustbench {dataset}/{threat_model}/{name} downloads its weights from a hub "
            "that filterdb does not know; load it as a checkpoint with an explicit --arch"
        )
    network = torchvision.models.get_model(TORCHVISION_HUB_ENTRIES[name], weights=None)
    return normalize_model(network, imagenet.mu, imagenet.sigma)


def _load_hub_entry(name: str, *, dataset: str, threat_model: str, path: Path) -> nn.Module:
    """Build a hub entry without pretrained weights and load its file from the cache path."""
    import torchvision  # noqa: F401  (imported outside meta: module-level tensors stay real)

    with meta_loading():
        model = _build_hub_architecture(name, dataset=dataset, threat_model=threat_model)
    loaded = load_tensors(path)
    # The layouts robustbench accepts: {"state_dict": sd} or a bare sd, with or without
    # DataParallel's "module." prefix (robustbench/utils.py load_model).
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise SourceError(
            f"{path} holds no state_dict (found {type(loaded).__name__}); save "
            "model.state_dict() with torch.save"
        )
    state_dict = {str(key).removeprefix("module."): value for key, value in loaded.items()}
    # A checkpoint of the bare network fits robustbench's normalize_model wrapper under
    # "model." (what robustbench itself adds for ImageNet entries).
    expected = set(model.state_dict())
    if not expected & set(state_dict) and {f"model.{key}" for key in state_dict} <= expected:
        state_dict = {f"model.{key}": value for key, value in state_dict.items()}
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [key for key in result.missing_keys if key not in NORMALIZER_BUFFERS]
    if missing or result.unexpected_keys:
        raise SourceError(
            f"{path} does not fit robustbench {dataset}/{threat_model}/{name}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}); "
            "check that the file is this entry's checkpoint"
        )
    return model


def _ensemble_members(model: nn.Module, name: str, *, n_members: int) -> list[nn.Module]:
    paths = next(
        (paths for prefix, paths in ENSEMBLE_MEMBERS.items() if name.startswith(prefix)),
        tuple(f"models.{i}" for i in range(n_members)),
    )
    try:
        return [model.get_submodule(path) for path in paths]
    except AttributeError as error:
        raise SourceError(
            f"robustbench ensemble {name} has no member {_first_line(error)}; filterdb does "
            "not know where this ensemble keeps its members"
        ) from None


def _family(module: nn.Module) -> str:
    """The architecture class: WideResNet, PreActResNet, ResNet, ..."""
    # normalize_model wraps the network as Sequential(normalize=..., model=...).
    if isinstance(module, nn.Sequential) and "model" in dict(module.named_children()):
        module = module.model
    return next(
        cls.__name__ for cls in type(module).__mro__ if cls.__module__ not in ZOO_ENTRY_MODULES
    )


def _training(
    name: str, *, dataset: str, threat_model: str, entry: LeaderboardEntry | None
) -> TrainingInfo:
    if entry is None:
        return TrainingInfo(
            training_type=training_type_of(name),
            training_dataset=dataset,
            threat_model=threat_model,
        )
    if (entry.dataset, entry.threat_model, entry.model_id) != (dataset, threat_model, name):
        raise SourceError(
            f"leaderboard entry {entry.location} describes "
            f"{entry.dataset}/{entry.threat_model}/{entry.model_id}, not "
            f"{dataset}/{threat_model}/{name}; pass the entry of this model"
        )
    return replace(entry.training)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
