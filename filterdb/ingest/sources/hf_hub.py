"""Any Hugging Face Hub model repository: ``ORG/NAME[@REVISION]`` -> a ModelSource.

The weights are the first of ``model.safetensors``, a sharded
``model.safetensors.index.json`` with its shards, or ``pytorch_model.bin`` (read with
``weights_only=True``). A ``config.json`` whose ``architecture`` names a timm model (what
timm writes to the Hub) builds that architecture for graph depth; without one the convs
are the 4-D weights in key order, as ``ingest checkpoint`` does. The model's identity is
the repository and the commit the revision resolved to (the source URI
``hf://<repo>@<commit>``) and the SHA-256 of the weight files, shards in index order.
"""

from __future__ import annotations

import json
from pathlib import Path

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources import safetensors_files as st
from filterdb.ingest.sources.base import Candidate, ModelSource
from filterdb.ingest.sources.hub_cache import HubFile, expected_path, hub_file
from filterdb.warehouse.records import ModelInfo, TrainingInfo


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REVISION]`` -> (repository, revision or None)."""
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SourceError(
            f"{spec!r} is not a Hub model repository; write ORG/NAME or ORG/NAME@REVISION"
        )
    return repo_id, revision or None


def hub_weights(repo_id: str, *, revision: str | None = None) -> list[HubFile]:
    """The weight files of a Hub repository, fetched when needed, shards in index order."""
    single = hub_file(repo_id, st.SINGLE_NAME, revision=revision)
    if single is not None:
        return [single]
    index = hub_file(repo_id, st.INDEX_NAME, revision=revision)
    if index is not None:
        return [index, *_fetch_shards(index, revision=revision)]
    legacy = hub_file(repo_id, "pytorch_model.bin", revision=revision)
    if legacy is not None:
        return [legacy]
    raise CheckpointMissing(
        f"{repo_id} has neither {st.SINGLE_NAME}, {st.INDEX_NAME} nor pytorch_model.bin "
        f"(looked in {expected_path(repo_id, '', revision=revision)}); it is not a torch "
        "model repository, or its files are not fetched yet"
    )


def _fetch_shards(index: HubFile, *, revision: str | None) -> list[HubFile]:
    # The names are checked before any is fetched: a shard name leaving the repository is
    # refused here, not sent to the server.
    try:
        names = dict.fromkeys(json.loads(index.path.read_text())["weight_map"].values())
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{index.path} is not a safetensors index; fetch it again") from None
    shards = []
    for name in names:
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise SourceError(
                f"{index.path} names shard {name!r} outside its repository; shards must be "
                "file names beside the index"
            )
        shard = hub_file(index.repo_id, name, revision=revision or index.commit)
        if shard is None:
            raise CheckpointMissing(
                f"shard {name} named by the index of {index.repo_id} is missing (expected at "
                f"{index.path.parent / name}); fetch it"
            )
        shards.append(shard)
    return shards


def read_config(repo_id: str, *, revision: str | None) -> dict:
    """The repository's ``config.json``, or ``{}`` when it has none or it is not JSON."""
    config = hub_file(repo_id, "config.json", revision=revision)
    if config is None:
        return {}
    try:
        loaded = json.loads(config.path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def timm_architecture(config: dict) -> str | None:
    """The timm model ``config.json`` names (its ``architecture`` key), if timm knows it."""
    arch = config.get("architecture")
    if not isinstance(arch, str):
        return None
    import timm

    return arch if timm.models.is_model(arch) else None


def hf_candidate(
    spec: str,
    *,
    name: str | None = None,
    architecture: str | None = None,
    training: TrainingInfo | None = None,
) -> Candidate:
    """A Hub repository as an ingest Candidate; its files are fetched now, read later.

    The default model name is ``hf:<repo>``.
    """
    repo_id, revision = parse_repo_spec(spec)
    files = hub_weights(repo_id, revision=revision)
    config = read_config(repo_id, revision=revision or files[0].commit)
    weights = [f.path for f in files]
    sharded = files[0].filename == st.INDEX_NAME
    identity = weights[1:] if sharded else weights
    model_name = name or f"hf:{repo_id}"
    uri = files[0].uri

    def read() -> ModelSource:
        state_dict = _load(files)
        arch = timm_architecture(config)
        if arch is not None:
            from filterdb.ingest.sources.timm_hub import default_training, timm_source

            cfg = _Cfg(config)
            return timm_source(
                arch,
                state_dict,
                model_name=model_name,
                source="hf",
                source_uri=uri,
                cfg=cfg,
                training=default_training(cfg, training),
                origin=f"{repo_id}@{files[0].commit}",
                architecture=architecture or arch,
                model_kwargs=_model_kwargs(config),
            )
        from filterdb.ingest.sources.checkpoint import (
            convs_in_key_order,
            key_order_note,
            parameter_count,
        )

        info = ModelInfo(
            name=model_name,
            source="hf",
            source_uri=uri,
            architecture=architecture,
            n_parameters=parameter_count(state_dict),
            producer="huggingface_hub",
            license=_license(config),
            training=training or TrainingInfo(),
        )
        notes = [note] if (note := st.float64_note(state_dict)) else []
        notes.append(
            key_order_note(
                "its config.json names no timm architecture: `filterdb ingest checkpoint "
                "FILE --arch timm:NAME` on the downloaded file"
            )
        )
        return ModelSource(info, convs_in_key_order(state_dict), "key_order", notes=notes)

    return Candidate(name=model_name, source="hf", paths=identity, read=read)


def _load(files: list[HubFile]) -> dict:
    if files[0].filename == st.INDEX_NAME:
        tensors = st.load_sharded(files[0].path)
    else:
        from filterdb.ingest.sources.timm_hub import load_hub_weights

        return load_hub_weights(files[0].path)
    st.check_weight_dtypes(tensors, origin=files[0].path)
    return tensors


def _model_kwargs(config: dict) -> dict:
    # What timm's own Hub loader passes on (timm/models/_hub.py load_model_config_from_hf).
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:
        kwargs.setdefault("num_classes", config["num_classes"])
    return kwargs


def _license(config: dict) -> str | None:
    pretrained = config.get("pretrained_cfg")
    value = pretrained.get("license") if isinstance(pretrained, dict) else None
    return value if isinstance(value, str) else None


class _Cfg:
    """timm's pretrained config as timm writes it into a Hub ``config.json``."""

    def __init__(self, config: dict) -> None:
        pretrained = config.get("pretrained_cfg")
        pretrained = pretrained if isinstance(pretrained, dict) else {}
        self.tag = pretrained.get("tag")
        self.license = _license(config)
        self.paper_ids = pretrained.get("paper_ids")
        self.input_size = pretrained.get("input_size")
