"""Pairing robust models with normal twins: automatic rules, pairs files, name resolution."""

from __future__ import annotations

import csv
import itertools

import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from filterdb.analysis.pairing import (
    Pair,
    find_pairs,
    pair_models,
    pairs_from_file,
    read_pairs_file,
    resolve_model_name,
)
from filterdb.errors import PairingError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse.records import TrainingInfo

CARMON = "cifar10/Linf/Carmon2019Unlabeled"
HYDRA = "cifar10/Linf/Sehwag2020Hydra"
CARMON_NORMAL = "hso_normal_training_robustbench_Carmon2019Unlabeled_cifar10_13"


def model_table(rows: list[tuple[str, str, str | None, str | None]]) -> pl.DataFrame:
    """A v_models-like frame: name, training type, architecture, training dataset."""
    return pl.DataFrame(
        rows,
        schema=["model_name", "training_type", "architecture", "training_dataset"],
        orient="row",
    )


MODELS = model_table(
    [
        ("r-a", "adversarial", "wrn", "c10"),
        ("r-b", "adversarial", "wrn", "c10"),
        ("n-a", "normal", "wrn", "c10"),
        ("r-c", "adversarial", "resnet", "c10"),
        ("n-c", "normal", "resnet", "c100"),
        ("r-d", "adversarial", None, "c10"),
        ("n-e", "normal", "wrn", None),
    ]
)


def test_auto_pairs_by_architecture_and_dataset_and_lists_the_rest():
    pairing = pair_models(MODELS)
    assert pairing.pairs == (
        Pair("r-a", "n-a", "wrn", "c10"),
        Pair("r-b", "n-a", "wrn", "c10"),
    )
    # Same architecture, other dataset; unknown architecture; unknown dataset: no twin.
    assert pairing.unpaired_robust == ("r-c", "r-d")
    assert pairing.unpaired_normal == ("n-c", "n-e")
    assert pairing.robust_models == ("r-a", "r-b") and pairing.normal_models == ("n-a",)
    assert not pairing.one_to_one
    assert pairing.frame().columns == ["robust", "normal", "architecture", "dataset"]


def test_training_dataset_limits_pairs_and_unpaired_lists():
    pairing = pair_models(MODELS, training_dataset="c100")
    assert pairing.pairs == ()
    assert (pairing.unpaired_robust, pairing.unpaired_normal) == ((), ("n-c",))


def test_one_to_one_pairs():
    models = model_table(
        [
            ("r1", "adversarial", "x", "d"),
            ("n1", "normal", "x", "d"),
            ("r2", "adversarial", "y", "d"),
            ("n2", "normal", "y", "d"),
        ]
    )
    assert pair_models(models).one_to_one


model_rows = st.lists(
    st.tuples(
        st.sampled_from(["adversarial", "normal"]),
        st.sampled_from(["wrn", "resnet", None]),
        st.sampled_from(["c10", "c100", None]),
    ),
    max_size=12,
)


@given(model_rows)
@settings(max_examples=50, deadline=None)
def test_auto_pairing_equals_brute_force(rows):
    models = model_table([(f"m{i}", *row) for i, row in enumerate(rows)])
    pairing = pair_models(models)
    expected = {
        (f"m{i}", f"m{j}")
        for (i, a), (j, b) in itertools.product(enumerate(rows), repeat=2)
        if a[0] == "adversarial" and b[0] == "normal" and a[1:] == b[1:] and None not in a[1:]
    }
    assert {(p.robust, p.normal) for p in pairing.pairs} == expected
    assert len(pairing.pairs) == len(expected)
    # Every model is either paired or listed, never both, never dropped.
    paired = {name for pair in expected for name in pair}
    listed = set(pairing.unpaired_robust) | set(pairing.unpaired_normal)
    assert paired.isdisjoint(listed) and paired | listed == set(models["model_name"])


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


ZOO_MODELS = model_table(
    [
        (CARMON, "adversarial", "WideResNet", "cifar10"),
        (HYDRA, "adversarial", "WideResNet", "cifar10"),
        (CARMON_NORMAL, "normal", "WideResNet", "cifar10"),
        ("imagenet/Linf/Engstrom2019Robustness", "adversarial", "ResNet", "imagenet"),
        ("timm_resnet50_imagenet1k_13", "normal", "ResNet", "imagenet"),
        ("cifar100/Linf/Carmon2019Unlabeled", "adversarial", "WideResNet", "cifar100"),
        ("extra-normal", "normal", "WideResNet", "cifar10"),
    ]
)


@pytest.fixture
def paper_style_file(tmp_path):
    """A pairs file as pandas' to_csv writes it: an unnamed leading index column."""
    return write_csv(
        tmp_path / "pairs.csv",
        [
            ["", "Robust", "Normal", "Arch", "Dataset"],
            ["0", "robustbench_Carmon2019Unlabeled_cifar10_linf_13", CARMON_NORMAL, "WRN-28-10"]
            + ["cifar10"],
            ["1", "robustbench_Sehwag2020Hydra_cifar10_linf_13", CARMON_NORMAL, "WRN-28-10"]
            + ["cifar10"],
            ["2", "robustbench_Engstrom2019Robustness_imagenet_linf_13"]
            + ["timm_resnet50_imagenet1k_13", "ResNet-50", "imagenet"],
            ["3", "robustbench_Gowal2020Uncovering_70_16_cifar10_linf_13"]
            + ["hso_normal_training_robustbench_Gowal2020Uncovering_70_16_cifar10_13"]
            + ["WRN-70-16", "cifar10"],
        ],
    )


def test_pairs_file_in_the_papers_format(paper_style_file):
    rows = read_pairs_file(paper_style_file)
    assert len(rows) == 4
    assert rows[0] == {
        "Robust": "robustbench_Carmon2019Unlabeled_cifar10_linf_13",
        "Normal": CARMON_NORMAL,
        "Arch": "WRN-28-10",
        "Dataset": "cifar10",
    }
    pairing = pairs_from_file(paper_style_file, ZOO_MODELS)
    engstrom = "imagenet/Linf/Engstrom2019Robustness"
    assert pairing.pairs == (
        Pair(CARMON, CARMON_NORMAL, "WRN-28-10", "cifar10"),
        Pair(HYDRA, CARMON_NORMAL, "WRN-28-10", "cifar10"),
        Pair(engstrom, "timm_resnet50_imagenet1k_13", "ResNet-50", "imagenet"),
    )
    assert pairing.unresolved == (
        "robustbench_Gowal2020Uncovering_70_16_cifar10_linf_13",
        "hso_normal_training_robustbench_Gowal2020Uncovering_70_16_cifar10_13",
    )
    assert pairing.unpaired_robust == ("cifar100/Linf/Carmon2019Unlabeled",)
    assert pairing.unpaired_normal == ("extra-normal",)
    assert pairing.source == str(paper_style_file)


def test_pairs_file_with_a_training_dataset(paper_style_file):
    pairing = pairs_from_file(paper_style_file, ZOO_MODELS, training_dataset="imagenet")
    assert [(p.robust, p.normal) for p in pairing.pairs] == [
        ("imagenet/Linf/Engstrom2019Robustness", "timm_resnet50_imagenet1k_13")
    ]
    # Rows of other datasets are out of scope: their names are not "unresolved".
    assert pairing.unresolved == ()
    assert (pairing.unpaired_robust, pairing.unpaired_normal) == ((), ())


def test_pairs_file_without_arch_and_dataset_takes_them_from_the_robust_model(tmp_path):
    path = write_csv(tmp_path / "p.csv", [["robust", "normal"], [CARMON, "extra-normal"]])
    pairing = pairs_from_file(path, ZOO_MODELS)
    assert pairing.pairs == (Pair(CARMON, "extra-normal", "WideResNet", "cifar10"),)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (CARMON_NORMAL, CARMON_NORMAL),  # a stored name resolves to itself
        ("robustbench_Carmon2019Unlabeled_cifar10_linf_13", CARMON),
        ("robustbench_Carmon2019Unlabeled_cifar100_linf_13", "cifar100/Linf/Carmon2019Unlabeled"),
        (
            "robustbench_Gowal2020Uncovering_70_16_cifar10_l2_13",
            "cifar10/L2/Gowal2020Uncovering_70_16",
        ),
        ("robustbench_Carmon2019Unlabeled_cifar10_l2_13", None),  # no such threat stored
        ("robustbench_carmon2019unlabeled_cifar10_linf_13", None),  # entry names keep case
        ("Carmon2019Unlabeled", None),
    ],
)
def test_resolve_model_name(name, expected):
    stored = [*ZOO_MODELS["model_name"], "cifar10/L2/Gowal2020Uncovering_70_16"]
    assert resolve_model_name(name, stored) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Robust,Arch\nx,y\n", "has no Normal column"),
        (b"", "is empty"),
        (b",Robust,Normal\n", "holds a header but no pairs"),
        (b",Robust,Normal\n0,x,\n", "line 2 lacks a Robust or Normal model name"),
        (b"\xff\xfe\x00binary", "is not a CSV text file"),
    ],
)
def test_bad_pairs_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_bytes(content)
    with pytest.raises(PairingError, match=message) as caught:
        read_pairs_file(path)
    assert "\n" not in str(caught.value)


def test_missing_pairs_file(tmp_path):
    with pytest.raises(PairingError, match="no pairs file at .*; check the path"):
        read_pairs_file(tmp_path / "absent.csv")


def test_a_model_on_both_sides_is_refused(tmp_path):
    path = write_csv(
        tmp_path / "p.csv",
        [["Robust", "Normal"], [CARMON, "extra-normal"], ["extra-normal", HYDRA]],
    )
    with pytest.raises(PairingError, match="names extra-normal both as robust and as normal"):
        pairs_from_file(path, ZOO_MODELS)


def store_named_model(url: str, tmp_path, seed: int, name: str, training: TrainingInfo) -> None:
    """A one-layer model under ``name``: for pairing only the name and metadata matter."""
    path = tmp_path / f"model{seed}.pt"
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    torch.save({"conv.weight": weight}, path)
    candidate = checkpoint_candidate(path, name=name, architecture="WideResNet", training=training)
    ingest(candidate, url=url, device="cpu")


def test_the_papers_pairs_file_resolves_against_ingested_zoo_names(db_url, tmp_path, shared_data):
    path = shared_data / "paper" / "robust_vs_normal_pairings.csv"
    with path.open(newline="") as handle:
        raw = list(csv.reader(handle))
    assert raw[0] == ["", "Robust", "Normal", "Arch", "Dataset"]  # the unnamed index column
    rows = read_pairs_file(path)
    assert len(rows) == len(raw) - 1 == 71
    assert rows == [
        dict(zip(["Robust", "Normal", "Arch", "Dataset"], r[1:], strict=True)) for r in raw[1:]
    ]

    adversarial = TrainingInfo(training_type="adversarial", training_dataset="cifar10")
    normal = TrainingInfo(training_type="normal", training_dataset="cifar10")
    for seed, (name, training) in enumerate(
        [(CARMON, adversarial), (HYDRA, adversarial), (CARMON_NORMAL, normal)]
    ):
        store_named_model(db_url, tmp_path, seed, name, training)

    pairing = find_pairs(url=db_url, pairs_file=path)
    assert pairing.pairs == (
        Pair(CARMON, CARMON_NORMAL, "WideResNet-28-10", "cifar10"),
        Pair(HYDRA, CARMON_NORMAL, "WideResNet-28-10", "cifar10"),
    )
    named = {cell for r in raw[1:] for cell in r[1:3]}
    resolved = {
        "robustbench_Carmon2019Unlabeled_cifar10_linf_13",
        "robustbench_Sehwag2020Hydra_cifar10_linf_13",
        CARMON_NORMAL,
    }
    assert set(pairing.unresolved) == named - resolved
    assert (pairing.unpaired_robust, pairing.unpaired_normal) == ((), ())
