"""Robust models and their normally trained twins: which models a report compares (SPEC 7).

A pair is an adversarially trained model and a normally trained model of the same
architecture and training dataset. Pairs come from the stored metadata (every robust
model with every normal model of its architecture and dataset) or from a pairs file in
the robustness paper's format (``robust_vs_normal_pairings.csv``: an unnamed index
column, then ``Robust``, ``Normal``, ``Arch``, ``Dataset``). Models that find no partner
are listed, never dropped in silence, and so are names in a file that match no model.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from filterdb.analysis.architectures import canonical_architecture, pairing_key
from filterdb.errors import PairingError
from filterdb.warehouse.inventory import models as stored_models

# The paper names zoo entries robustbench_<Name>_<dataset>_<threat>_<opset> (its ONNX
# exports, opset 13); entry names hold underscores, dataset and threat never do, and the
# threat is lower case ("linf") where the zoo writes "Linf".
_PAPER_ZOO_NAME = re.compile(
    r"^robustbench_(?P<entry>.+)_(?P<dataset>[^_]+)_(?P<threat>[^_]+)_\d+$"
)
REQUIRED_COLUMNS = ("Robust", "Normal")
PAIRS_FILE_COLUMNS = (*REQUIRED_COLUMNS, "Arch", "Dataset")


@dataclass(frozen=True)
class Pair:
    """A robust model and a normal twin, by stored model name."""

    robust: str
    normal: str
    architecture: str | None
    dataset: str | None


@dataclass(frozen=True)
class Pairing:
    """Which models are compared, and which are left out.

    Attributes
    ----------
    pairs : tuple of Pair
        Robust model and normal twin; a model may sit in several pairs.
    unpaired_robust, unpaired_normal : tuple of str
        Stored models in scope (the training dataset asked for, if any) that are in no pair.
    unresolved : tuple of str
        Names in the pairs file that match no stored model; their rows are left out.
    source : str
        ``"stored metadata"`` or the pairs file's path.
    """

    pairs: tuple[Pair, ...]
    unpaired_robust: tuple[str, ...]
    unpaired_normal: tuple[str, ...]
    unresolved: tuple[str, ...]
    source: str

    # Cached: the statistics ask for them once per metric and bin (367 times, 1.5 s of a
    # 2,500-pair report); the pairs of a frozen Pairing never change.
    @functools.cached_property
    def robust_models(self) -> tuple[str, ...]:
        """Distinct robust models of the pairs, in pair order."""
        return tuple(dict.fromkeys(pair.robust for pair in self.pairs))

    @functools.cached_property
    def normal_models(self) -> tuple[str, ...]:
        """Distinct normal models of the pairs, in pair order."""
        return tuple(dict.fromkeys(pair.normal for pair in self.pairs))

    @property
    def one_to_one(self) -> bool:
        """True when every model sits in exactly one pair (a paired test applies)."""
        n = len(self.pairs)
        return n > 0 and len(self.robust_models) == n and len(self.normal_models) == n

    def frame(self) -> pl.DataFrame:
        """The pairs as a frame: robust, normal, architecture, dataset."""
        return pl.DataFrame(
            [vars(pair) for pair in self.pairs],
            schema={name: pl.String for name in ("robust", "normal", "architecture", "dataset")},
            orient="row",
        )


def find_pairs(
    *,
    url: str | None = None,
    training_dataset: str | None = None,
    pairs_file: Path | None = None,
    weights_form: str | None = None,
) -> Pairing:
    """Pair the stored models automatically, or as ``pairs_file`` says.

    ``training_dataset`` keeps only pairs (and unpaired models) of that dataset,
    ``weights_form`` only models stored in that form (``raw``, ``bn_folded``,
    ``as_exported``). The result may hold no pair; the caller decides whether that is an
    error.

    Raises
    ------
    PairingError
        ``pairs_file`` is missing, not a CSV, or lacks the Robust and Normal columns.
    """
    models = stored_models(url=url)
    if weights_form is not None:
        models = models.filter(pl.col("weights_form") == weights_form)
    if pairs_file is None:
        return pair_models(models, training_dataset=training_dataset)
    return pairs_from_file(pairs_file, models, training_dataset=training_dataset)


def pair_models(models: pl.DataFrame, *, training_dataset: str | None = None) -> Pairing:
    """Pair every robust model with every normal model of its architecture and dataset.

    ``models`` has the ``v_models`` columns model_name, training_type, architecture and
    training_dataset, and perhaps weights_form: then twins also share their weights form,
    so that raw and folded copies of a model pair within their own form. Architectures are
    compared by their canonical names (:mod:`filterdb.analysis.architectures`:
    RobustBench's ``ResNet-50`` is timm's ``resnet50``); a pair carries the canonical name.
    A model whose architecture or dataset is unknown has no twin.
    """
    scope = _in_scope(models, training_dataset)
    keyed = scope.with_columns(
        pl.Series("arch_key", [pairing_key(a) for a in scope["architecture"].to_list()], pl.String)
    )
    robust = keyed.filter(pl.col("training_type") == "adversarial")
    normal = keyed.filter(pl.col("training_type") == "normal")
    keys = ["arch_key", "training_dataset"]
    form_key = ["weights_form"] if "weights_form" in scope.columns else []
    # Inner join on the keys: NULL never equals NULL, so unknown metadata pairs with nothing.
    joined = robust.select("model_name", "architecture", *keys, *form_key).join(
        normal.select(pl.col("model_name").alias("normal"), *keys, *form_key),
        on=keys + form_key,
        how="inner",
    )
    joined = joined.sort(["training_dataset", "arch_key", "model_name", "normal"])
    pairs = tuple(
        Pair(robust=r, normal=n, architecture=canonical_architecture(a), dataset=d)
        for r, a, d, n in joined.select(
            "model_name", "architecture", "training_dataset", "normal"
        ).iter_rows()
    )
    return _pairing(pairs, scope, unresolved=(), source="stored metadata")


def read_pairs_file(path: Path) -> list[dict[str, str | None]]:
    """The rows of a pairs CSV as dicts with keys Robust, Normal, Arch, Dataset.

    The file is read as it is: a leading unnamed index column (pandas' ``to_csv``) is
    ignored, column names are matched without regard to case, Arch and Dataset may be
    absent (``None``). Raises :class:`PairingError` naming the problem and the fix.
    """
    if not path.is_file():
        raise PairingError(f"no pairs file at {path}; check the path")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel writes a BOM
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise PairingError(
            f"{path} is not a CSV text file ({error}); write it with columns "
            "Robust,Normal,Arch,Dataset"
        ) from None
    if not rows:
        raise PairingError(f"{path} is empty; write a header Robust,Normal,Arch,Dataset and rows")
    header = {name.strip().lower(): i for i, name in enumerate(rows[0]) if name.strip()}
    missing = [name for name in REQUIRED_COLUMNS if name.lower() not in header]
    if missing:
        found = ", ".join(rows[0])
        raise PairingError(
            f"{path} has no {' or '.join(missing)} column (found: {found[:120]}); "
            "the pairs file needs columns Robust and Normal (Arch and Dataset optional)"
        )
    result = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        record = {name: _cell(row, header.get(name.lower())) for name in PAIRS_FILE_COLUMNS}
        if not record["Robust"] or not record["Normal"]:
            raise PairingError(
                f"{path} line {line} lacks a Robust or Normal model name; fill in both"
            )
        result.append(record)
    if not result:
        raise PairingError(f"{path} holds a header but no pairs; add one row per pair")
    return result


def resolve_model_name(name: str, stored: Collection[str]) -> str | None:
    """The stored model that ``name`` means, or ``None``.

    A stored model of exactly that name wins. Otherwise a paper-style zoo name
    ``robustbench_<Name>_<dataset>_<threat>_13`` means the zoo entry stored as
    ``<dataset>/<threat>/<Name>``, dataset and threat compared without regard to case.
    """
    return _resolve(name, stored, _zoo_index(stored))


def pairs_from_file(
    path: Path, models: pl.DataFrame, *, training_dataset: str | None = None
) -> Pairing:
    """The pairs a pairs file names, resolved against the stored ``models`` (v_models).

    A pair's architecture and dataset are the file's Arch and Dataset, else the stored
    robust model's. With ``training_dataset``, rows of another Dataset are skipped. Rows
    naming a model that is not stored are left out and the names listed in
    ``unresolved``. The file decides the sides: a model's stored training type is not
    consulted for its pairs. Raises :class:`PairingError` for an unreadable file or a model
    named both robust and normal.
    """
    rows = read_pairs_file(path)
    stored = models.select("model_name", "architecture", "training_dataset")
    metadata = {name: (arch, data) for name, arch, data in stored.iter_rows()}
    zoo = _zoo_index(metadata)
    pairs: dict[tuple[str, str], Pair] = {}
    unresolved: dict[str, None] = {}
    for row in rows:
        if training_dataset is not None and row["Dataset"] not in (None, training_dataset):
            continue
        robust = _resolve(row["Robust"], metadata, zoo)
        normal = _resolve(row["Normal"], metadata, zoo)
        for given, found in ((row["Robust"], robust), (row["Normal"], normal)):
            if found is None:
                unresolved[given] = None
        if robust is None or normal is None:
            continue
        architecture, dataset = metadata[robust]
        pair = Pair(
            robust=robust,
            normal=normal,
            architecture=row["Arch"] or architecture,
            dataset=row["Dataset"] or dataset,
        )
        if training_dataset is None or pair.dataset == training_dataset:
            pairs.setdefault((robust, normal), pair)
    both = {p.robust for p in pairs.values()} & {p.normal for p in pairs.values()}
    if both:
        raise PairingError(
            f"{path} names {', '.join(sorted(both))} both as robust and as normal; "
            "each model takes one side"
        )
    scope = _in_scope(models, training_dataset)
    return _pairing(tuple(pairs.values()), scope, unresolved=tuple(unresolved), source=str(path))


def _pairing(
    pairs: tuple[Pair, ...], scope: pl.DataFrame, *, unresolved: tuple[str, ...], source: str
) -> Pairing:
    paired = {pair.robust for pair in pairs} | {pair.normal for pair in pairs}
    left = scope.filter(~pl.col("model_name").is_in(list(paired))).sort("model_name")
    return Pairing(
        pairs=pairs,
        unpaired_robust=_names(left.filter(pl.col("training_type") == "adversarial")),
        unpaired_normal=_names(left.filter(pl.col("training_type") == "normal")),
        unresolved=unresolved,
        source=source,
    )


def _in_scope(models: pl.DataFrame, training_dataset: str | None) -> pl.DataFrame:
    if training_dataset is None:
        return models
    return models.filter(pl.col("training_dataset") == training_dataset)


def _names(frame: pl.DataFrame) -> tuple[str, ...]:
    return tuple(frame["model_name"].to_list())


def _cell(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    return row[index].strip() or None


def _resolve(
    name: str, stored: Collection[str], zoo: dict[tuple[str, str, str], str]
) -> str | None:
    if name in stored:
        return name
    match = _PAPER_ZOO_NAME.match(name)
    if match is None:
        return None
    return zoo.get((match["dataset"].lower(), match["threat"].lower(), match["entry"]))


def _zoo_index(stored: Iterable[str]) -> dict[tuple[str, str, str], str]:
    """Stored zoo names ``<dataset>/<threat>/<Name>`` by (dataset, threat) lower case and Name."""
    index = {}
    for name in stored:
        parts = name.split("/")
        if len(parts) == 3:
            index[(parts[0].lower(), parts[1].lower(), parts[2])] = name
    return index
