"""Which entries robustbench's zoo holds and how many checkpoint files each has, without
importing robustbench (it loads torch).

``robustbench_index.json`` beside this module is generated from the installed robustbench
(:func:`zoo_index_from_robustbench`, pinned 1.1.1); ``tests/test_robustbench_source.py``
fails when the two disagree, so a robustbench upgrade comes with a regenerated index::

    .venv/bin/python -m filterdb.ingest.sources.robustbench_index > \
        filterdb/ingest/sources/robustbench_index.json

Listing the zoo (``filterdb leaderboard status``) reads this index; building and loading a
model goes through robustbench itself (:mod:`filterdb.ingest.sources.robustbench`).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from pathlib import Path

from filterdb.errors import SourceError
from filterdb.warehouse.records import folded_name

# The model.source of zoo entries.
SOURCE = "robustbench"


@cache
def zoo_index() -> dict[str, dict[str, dict[str, int]]]:
    """``{dataset: {threat_model: {entry: number of checkpoint files}}}``, in the zoo's order."""
    text = resources.files(__package__).joinpath("robustbench_index.json").read_text()
    return json.loads(text)


def zoo_entries(dataset: str, threat_model: str) -> list[str]:
    """Names of the zoo entries for ``dataset`` and ``threat_model``, in the zoo's order.

    Raises :class:`SourceError` for a pair the zoo does not have.
    """
    return list(_entries(dataset, threat_model))


def zoo_model_name(
    name: str, *, dataset: str, threat_model: str, fold_batchnorm: bool = False
) -> str:
    """The stored model name of a zoo entry: ``<dataset>/<threat_model>/<name>``.

    Entry names repeat across datasets (``Standard``, ``Bai2024MixedNUTS``), model names
    in the database are unique (SPEC section 4). Folded weights are another model of the
    same entry: ``<dataset>/<threat_model>/<name>+bn_folded``.
    """
    stored = f"{dataset}/{threat_model}/{name}"
    return folded_name(stored) if fold_batchnorm else stored


def checkpoint_paths(name: str, *, dataset: str, threat_model: str, model_dir: Path) -> list[Path]:
    """Where robustbench's cache layout keeps the checkpoint file(s) of a zoo entry.

    ``<model_dir>/<dataset>/<threat_model>/<name>.pt``; an ensemble (its ``gdrive_id`` is a
    list) has one file per member, ``<name>.pt_m0.pt``, ``<name>.pt_m1.pt``, ...
    (robustbench/utils.py ``load_model``). Raises :class:`SourceError` for a name not in
    the zoo.
    """
    require_entry(name, dataset=dataset, threat_model=threat_model)
    entries = _entries(dataset, threat_model)
    base = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    if entries[name] > 1:
        return [base.with_name(f"{base.name}_m{i}.pt") for i in range(entries[name])]
    return [base]


def require_entry(name: str, *, dataset: str, threat_model: str) -> None:
    """Raise a one-line :class:`SourceError`, with the closest name, for a name not in the zoo."""
    entries = _entries(dataset, threat_model)
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SourceError(
            f"{name} is not a robustbench {dataset}/{threat_model} zoo entry; {hint}see the names "
            "with filterdb.ingest.sources.robustbench_index.zoo_entries"
            f"({dataset!r}, {threat_model!r})"
        )


def zoo_index_from_robustbench() -> dict[str, dict[str, dict[str, int]]]:
    """The index as the installed robustbench has it (imports robustbench and torch)."""
    from filterdb.ingest.sources.robustbench_compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts

    index: dict[str, dict[str, dict[str, int]]] = {}
    for dataset, by_threat in model_dicts.items():
        for threat_model, entries in by_threat.items():
            index.setdefault(dataset.value, {})[threat_model.value] = {
                name: len(spec["gdrive_id"]) if isinstance(spec["gdrive_id"], list) else 1
                for name, spec in entries.items()
            }
    return index


def _entries(dataset: str, threat_model: str) -> dict[str, int]:
    index = zoo_index()
    if threat_model not in index.get(dataset, {}):
        known = ", ".join(f"{ds}/{tm}" for ds, by_threat in index.items() for tm in by_threat)
        raise SourceError(f"the zoo has no {dataset}/{threat_model} models; use one of {known}")
    return index[dataset][threat_model]


if __name__ == "__main__":
    print(json.dumps(zoo_index_from_robustbench(), indent=1))
