"""The RobustBench zoo as a source, with real robustbench code and real zoo architectures.

Checkpoints are real zoo architectures with seeded random weights, written into
robustbench's cache layout; the expectations are computed from the saved files, not from
filterdb code. Nothing here touches the network: a download attempt would fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest.sources import robustbench as zoo
from filterdb.ingest.sources import robustbench_index
from filterdb.ingest.sources.leaderboard import read_entry
from filterdb.ingest.sources.robustbench_compat import import_robustbench

CARMON = ("cifar10", "Linf", "Carmon2019Unlabeled")  # WRN-28-10, built with sub_block1
AUGMIX = ("cifar10", "corruptions", "Hendrycks2020AugMix_WRN")  # WRN-40-2, the smallest
CHEN = ("cifar10", "Linf", "Chen2020Adversarial")  # the smallest ensemble: 3 ResNet-50
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def cache_path(model_dir: Path, dataset: str, threat_model: str, name: str) -> Path:
    """robustbench's cache layout, spelled out here independently of filterdb."""
    return model_dir / dataset / threat_model / f"{name}.pt"


def seeded_state_dict(key: tuple[str, str, str], seed: int) -> dict[str, torch.Tensor]:
    dataset, threat_model, name = key
    torch.manual_seed(seed)
    return zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat_model).state_dict()


def save(payload: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load(key: tuple[str, str, str], model_dir: Path, **options):
    dataset, threat_model, name = key
    return zoo.load_zoo_model(
        name, dataset=dataset, threat_model=threat_model, model_dir=model_dir, **options
    )


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().view(torch.int32)


def conv_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every conv of a state_dict by layer name: its 4-D weights."""
    return {
        k.removesuffix(".weight"): v
        for k, v in state_dict.items()
        if k.endswith(".weight") and v.dim() == 4
    }


@pytest.fixture(scope="session")
def carmon_dir(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Carmon2019Unlabeled saved like the real file: {"state_dict": ...} with module. keys."""
    model_dir = tmp_path_factory.mktemp("carmon")
    state_dict = seeded_state_dict(CARMON, seed=1)
    save(
        {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}},
        cache_path(model_dir, *CARMON),
    )
    return model_dir, state_dict


def test_zoo_entries_come_from_the_installed_zoo():
    linf = robustbench_index.zoo_entries("cifar10", "Linf")
    assert {"Carmon2019Unlabeled", "Standard", "Chen2020Adversarial"} <= set(linf)
    assert "Hendrycks2020AugMix_WRN" in robustbench_index.zoo_entries("cifar10", "corruptions")
    with pytest.raises(SourceError, match="cifar100/Linf"):
        robustbench_index.zoo_entries("cifar100", "L2")


def test_the_zoo_index_is_the_installed_zoo():
    # Listing the zoo reads filterdb's index, so `leaderboard status` needs no torch; the
    # index must say what the installed robustbench says (regenerate it when it differs).
    assert robustbench_index.zoo_index() == robustbench_index.zoo_index_from_robustbench()


def test_checkpoint_paths_follow_the_cache_layout(tmp_path):
    assert robustbench_index.checkpoint_paths(
        "Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf", model_dir=tmp_path
    ) == [cache_path(tmp_path, *CARMON)]
    chen = robustbench_index.checkpoint_paths(
        "Chen2020Adversarial", dataset="cifar10", threat_model="Linf", model_dir=tmp_path
    )
    directory = tmp_path / "cifar10" / "Linf"
    assert chen == [directory / f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]


def test_zoo_model_loads_bit_identical_without_sub_block1(carmon_dir, shared_data):
    model_dir, saved = carmon_dir
    entry = read_entry(shared_data / "robustbench_model_info", *CARMON)

    source = load(CARMON, model_dir, leaderboard=entry)

    saved_convs = conv_weights(saved)
    reached = {k: v for k, v in saved_convs.items() if not k.startswith("sub_block1.")}
    unreached_3x3 = [
        k
        for k, v in saved_convs.items()
        if k.startswith("sub_block1.") and tuple(v.shape[2:]) == (3, 3)
    ]
    assert [c.name for c in source.convs] == list(reached)  # state_dict key order
    for conv in source.convs:
        assert torch.equal(bits(conv.weight), bits(reached[conv.name])), conv.name
    assert len(unreached_3x3) == 8
    assert source.n_unreached_convs == len(unreached_3x3)
    assert sum(c.is_3x3 for c in source.convs) == 25  # PLATFORM.md: 25 reached 3x3 layers
    assert source.depth_method == "graph"

    info = source.info
    path = cache_path(model_dir, *CARMON)
    assert info.name == "cifar10/Linf/Carmon2019Unlabeled"
    assert (info.source, info.producer) == ("robustbench", "robustbench 1.1.1")
    assert info.source_uri == str(path)
    identity = robustbench_index.checkpoint_paths(
        CARMON[2], dataset=CARMON[0], threat_model=CARMON[1], model_dir=model_dir
    )
    assert identity == [path]
    # n_parameters counts every float of the checkpoint, BatchNorm statistics included, as
    # every other source does (issue 15).
    assert info.n_parameters == sum(v.numel() for v in saved.values() if v.is_floating_point())
    assert (info.architecture, info.family) == ("WideResNet-28-10", "WideResNet")
    assert info.training == entry.training
    assert info.training is not entry.training
    assert (info.training.clean_acc, info.training.robust_acc) == (89.69, 59.53)


def test_zoo_weights_are_the_checkpoints_own_tensors(carmon_dir):
    # Issue 14: built on the meta device, the checkpoint's tensors assigned. Every conv
    # weight then lies inside the memory-mapped checkpoint file; initialised weights with
    # the checkpoint copied in would be allocations of their own (146 MB of them here).
    model_dir, _ = carmon_dir
    path = cache_path(model_dir, *CARMON)
    source = load(CARMON, model_dir)
    starts = [conv.weight.data_ptr() for conv in source.convs]
    ends = [conv.weight.data_ptr() + conv.weight.nbytes for conv in source.convs]
    assert max(ends) - min(starts) <= path.stat().st_size
    dataset, threat_model, name = CARMON
    with zoo.meta_loading():
        built = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat_model)
    assert all(parameter.is_meta for parameter in built.parameters())


def test_bare_state_dict_without_leaderboard(tmp_path):
    saved = seeded_state_dict(AUGMIX, seed=2)
    save(saved, cache_path(tmp_path, *AUGMIX))

    source = load(AUGMIX, tmp_path)

    expected = conv_weights(saved)
    assert [c.name for c in source.convs] == list(expected)
    for conv in source.convs:
        assert torch.equal(bits(conv.weight), bits(expected[conv.name])), conv.name
    assert source.n_unreached_convs == 0
    # Hendrycks2020AugMixWRNNet is a per-entry subclass: the family is the class above it.
    assert source.info.family == "WideResNet"
    # No leaderboard entry: the size keeps WRN-40-2 apart from other WideResNets.
    # That size counts learnable parameters (BatchNorm statistics left out), as it always has.
    dataset, threat, name = AUGMIX
    built = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat)
    learnable = sum(p.numel() for p in built.parameters())
    assert source.info.architecture == f"WideResNet ({learnable:,} parameters)"
    training = source.info.training
    assert (training.training_type, training.training_dataset, training.threat_model) == (
        "adversarial",
        "cifar10",
        "corruptions",
    )
    assert (training.clean_acc, training.robust_acc, training.eps) == (None, None, None)


def test_ensemble_members_are_prefixed(tmp_path):
    directory = tmp_path / "cifar10" / "Linf"
    torch.manual_seed(4)  # each member draws its own random weights
    ensemble = zoo.build_zoo_architecture(*CHEN[2:], dataset=CHEN[0], threat_model=CHEN[1])
    members = [member.state_dict() for member in ensemble.models]
    for i, member in enumerate(members):
        save(member, directory / f"Chen2020Adversarial.pt_m{i}.pt")
    assert not torch.equal(members[0]["conv1.weight"], members[1]["conv1.weight"])

    source = load(CHEN, tmp_path)

    expected = {
        f"m{i}.{name}": weight
        for i, member in enumerate(members)
        for name, weight in conv_weights(member).items()
    }
    assert [c.name for c in source.convs] == list(expected)
    for conv in source.convs:
        assert torch.equal(bits(conv.weight), bits(expected[conv.name])), conv.name
    paths = [directory / f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    identity = robustbench_index.checkpoint_paths(
        CHEN[2], dataset=CHEN[0], threat_model=CHEN[1], model_dir=tmp_path
    )
    assert identity == paths
    assert source.info.family == "ResNet"


def test_standard_r50_hub_entry_loads_from_the_cache_path(tmp_path):
    import torchvision

    torch.manual_seed(3)
    saved = torchvision.models.resnet50().state_dict()  # torchvision's own file layout
    key = ("imagenet", "Linf", "Standard_R50")
    save(saved, cache_path(tmp_path, *key))

    source = load(key, tmp_path)

    expected = {f"model.{k}": v for k, v in conv_weights(saved).items()}
    assert [c.name for c in source.convs] == list(expected)
    for conv in source.convs:
        assert torch.equal(bits(conv.weight), bits(expected[conv.name])), conv.name
    assert source.info.family == "ResNet"
    assert source.info.training.training_type == "normal"


def test_timm_hub_entry_is_built_without_download():
    model = zoo.build_zoo_architecture("AlexNet", dataset="imagenet", threat_model="corruptions")
    assert type(model.model).__name__ == "TimmAlexNet"


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointMissing) as caught:
        load(AUGMIX, tmp_path)
    message = str(caught.value)
    assert str(cache_path(tmp_path, *AUGMIX)) in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # robustbench never ran (it makes dirs to download)


def test_missing_ensemble_members_are_all_named(tmp_path):
    directory = tmp_path / "cifar10" / "Linf"
    directory.mkdir(parents=True)
    (directory / "Chen2020Adversarial.pt_m1.pt").write_bytes(b"")
    with pytest.raises(CheckpointMissing) as caught:
        load(CHEN, tmp_path)
    message = str(caught.value)
    assert str(directory / "Chen2020Adversarial.pt_m0.pt") in message
    assert str(directory / "Chen2020Adversarial.pt_m2.pt") in message
    assert "pt_m1.pt" not in message


def test_html_page_is_named_as_failed_download(tmp_path):
    path = cache_path(tmp_path, *AUGMIX)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n  <!DOCTYPE html><html><title>Google Drive</title></html>")
    with pytest.raises(SourceError, match="HTML page") as caught:
        load(AUGMIX, tmp_path)
    assert str(path) in str(caught.value)


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = cache_path(tmp_path, *AUGMIX)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SourceError, match="corrupt or truncated") as caught:
        load(AUGMIX, tmp_path)
    assert "\n" not in str(caught.value)


class MakesMarker:
    """A pickle that creates a directory when unpickled: code a checkpoint must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickle_needing_code_is_refused_and_never_run(tmp_path, monkeypatch):
    # With this variable torch.load would unpickle anything where weights_only is not
    # given, as robustbench's own call: the refusal has to come from filterdb's check.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = save(
        {"state_dict": {}, "payload": MakesMarker(marker)}, cache_path(tmp_path / "models", *AUGMIX)
    )

    with pytest.raises(SourceError, match="needs code execution") as caught:
        load(AUGMIX, tmp_path / "models")

    assert str(path) in str(caught.value)
    assert not marker.exists()


def test_checkpoint_that_does_not_fit_is_a_source_error(tmp_path):
    save({"state_dict": {"conv1.weight": torch.zeros(1)}}, cache_path(tmp_path, *AUGMIX))
    with pytest.raises(SourceError, match="robustbench cannot load") as caught:
        load(AUGMIX, tmp_path)
    assert "\n" not in str(caught.value)


def test_unknown_name_suggests_and_says_how_to_list(tmp_path):
    with pytest.raises(SourceError, match="did you mean Carmon2019Unlabeled") as caught:
        load(("cifar10", "Linf", "Carmon2019Unlabelled"), tmp_path)
    assert "zoo_entries('cifar10', 'Linf')" in str(caught.value)


def test_leaderboard_entry_of_another_model_is_refused(carmon_dir, shared_data):
    model_dir, _ = carmon_dir
    other = read_entry(shared_data / "robustbench_model_info", "cifar10", "Linf", "Standard")
    with pytest.raises(SourceError, match="describes cifar10/Linf/Standard"):
        load(CARMON, model_dir, leaderboard=other)


def test_candidate_hashes_the_files_it_loads(carmon_dir):
    model_dir, _ = carmon_dir
    candidate = zoo.zoo_candidate(
        "Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf", model_dir=model_dir
    )
    assert candidate.name == "cifar10/Linf/Carmon2019Unlabeled"
    assert candidate.paths == [cache_path(model_dir, *CARMON)]


def test_import_fixes_are_applied():
    import_robustbench()
    import pkg_resources
    import pyautoattack
    import pyautoattack.state

    assert sys.modules["autoattack"] is pyautoattack
    assert sys.modules["autoattack.state"] is pyautoattack.state
    ids = pkg_resources.resource_filename(
        "robustbench.loaders", "helper_files/imagenet_test_image_ids.txt"
    )
    assert Path(ids).is_file()


def test_filterdb_works_without_robustbench():
    # A fresh interpreter where robustbench cannot be found: filterdb's modules import and
    # leaderboards read; asking for the zoo is one SourceError line.
    script = """
import sys
sys.modules["robustbench"] = None  # what Python does for a module that must not import
from filterdb.errors import SourceError
from filterdb.ingest.sources import leaderboard, robustbench
print(leaderboard.parse_eps("8/255")[0])
try:
    robustbench.build_zoo_architecture("Standard", dataset="cifar10", threat_model="Linf")
except SourceError as error:
    print("SourceError:", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "8/255"
    assert lines[1].startswith("SourceError: robustbench")
    assert len(lines) == 2
