"""A population of models from one manifest (CSV or Parquet), written by one process.

One row per model: ``name``, ``path`` and any metadata column that ``ingest checkpoint``
takes. ``path`` is a checkpoint (a torch or safetensors file, a sharded safetensors index
or its directory), an ONNX file (``.onnx``), or a source spec: ``timm:NAME[.TAG]``,
``torchvision:NAME[.WEIGHTS]``, ``hf:ORG/NAME[@REVISION]``. Relative paths are relative to
the manifest's directory.

Each model goes through :func:`filterdb.ingest.pipeline.ingest` (one transaction, skipped
when stored from the same bytes), so a failed row is reported and the next goes on, and a
process killed at any point leaves whole models only: a rerun skips what is stored and
ingests the rest, ending where an uninterrupted run ends.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from filterdb.errors import FilterdbError, SourceError
from filterdb.ingest.pipeline import IngestResult, MetricsHook, ProgressCallback, ingest_all
from filterdb.ingest.sources.base import Candidate
from filterdb.ingest.sources.leaderboard import parse_eps
from filterdb.warehouse.records import TrainingInfo

REQUIRED_COLUMNS = ("name", "path")
# The options of `ingest checkpoint` (cli/ingest.py), by their column names.
METADATA_COLUMNS = (
    "arch",
    "architecture",
    "training",
    "training_dataset",
    "threat_model",
    "eps",
    "clean_acc",
    "robust_acc",
    "paper",
)
TRAINING_TYPES = ("adversarial", "normal")
SPEC_KINDS = ("timm", "torchvision", "hf")


class ManifestError(SourceError):
    """The manifest as a whole cannot be used (unreadable, unknown or missing columns)."""


@dataclass
class ManifestRun:
    """What a manifest ingest did: the results, and ``(name, error)`` for failed rows."""

    results: list[IngestResult]
    failures: list[tuple[str, FilterdbError]]


def read_manifest(path: Path) -> list[dict[str, str | None]]:
    """The rows of a CSV or Parquet manifest, every value as text (empty cells: None).

    Raises :class:`ManifestError` for a missing or unreadable file, a missing ``name`` or
    ``path`` column, columns filterdb does not know (named), or a name given twice.
    """
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}; check the path")
    if path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        rows = _csv_rows(path)
    else:
        raise ManifestError(f"{path} is neither .csv nor .parquet; write the manifest as one")
    columns = list(rows[0]) if rows else []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            f"{path} has no {' or '.join(missing)} column; a manifest needs name and path"
        )
    unknown = [c for c in columns if c not in (*REQUIRED_COLUMNS, *METADATA_COLUMNS)]
    if unknown:
        raise ManifestError(
            f"{path} has unknown columns {', '.join(unknown)}; known: "
            f"{', '.join((*REQUIRED_COLUMNS, *METADATA_COLUMNS))}"
        )
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not row["name"] or not row["path"]:
            raise ManifestError(f"{path} row {line} lacks a name or a path; fill in both")
        if row["name"] in seen:
            raise ManifestError(f"{path} names model {row['name']} twice; names are unique")
        seen.add(row["name"])
    return rows


def _csv_rows(path: Path) -> list[dict[str, str | None]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [
                {k.strip(): (v.strip() or None) if v else None for k, v in row.items() if k}
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path} is not a CSV text file ({error}); write it as CSV") from None
    if not rows:
        raise ManifestError(f"{path} holds no rows; add a header and one row per model")
    return rows


def _parquet_rows(path: Path) -> list[dict[str, str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... on foreign bytes
        raise ManifestError(f"{path} is not a readable Parquet file ({error})") from None
    if table.num_rows == 0:
        raise ManifestError(f"{path} holds no rows; add one row per model")
    return [{k: _text(v) for k, v in row.items()} for row in table.to_pylist()]


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def row_candidate(row: dict[str, str | None], *, base: Path) -> Candidate:
    """The ingest Candidate one manifest row describes (its files are found now)."""
    training = _training(row)
    name, spec = row["name"], row["path"]
    kind, _, rest = spec.partition(":")
    if kind in SPEC_KINDS and rest:
        return _spec_candidate(kind, rest, name=name, row=row, training=training)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base / path
    if path.suffix.lower() == ".onnx":
        from filterdb.ingest.sources.onnx_file import onnx_candidate

        return onnx_candidate(path, name=name, training=training)
    from filterdb.ingest.sources.checkpoint import checkpoint_candidate

    return checkpoint_candidate(
        path, name=name, arch=row.get("arch"), architecture=row.get("architecture"),
        training=training,
    )  # fmt: skip


def _spec_candidate(
    kind: str, rest: str, *, name: str, row: dict, training: TrainingInfo
) -> Candidate:
    architecture = row.get("architecture")
    if kind == "timm":
        from filterdb.ingest.sources.timm_hub import timm_candidate

        return timm_candidate(rest, name=name, architecture=architecture, training=training)
    if kind == "torchvision":
        from filterdb.ingest.sources.torchvision_hub import torchvision_candidate

        model, _, weights = rest.partition(".")
        return torchvision_candidate(
            model, weights=weights or None, name=name, architecture=architecture,
            training=training,
        )  # fmt: skip
    from filterdb.ingest.sources.hf_hub import hf_candidate

    return hf_candidate(rest, name=name, architecture=architecture, training=training)


def _training(row: dict[str, str | None]) -> TrainingInfo:
    training_type = row.get("training") or "normal"
    if training_type not in TRAINING_TYPES:
        raise SourceError(f"training {training_type!r} is unknown; write adversarial or normal")
    eps_text, eps = parse_eps(row.get("eps"))
    return TrainingInfo(
        training_type=training_type,
        training_dataset=row.get("training_dataset"),
        threat_model=row.get("threat_model"),
        eps_text=eps_text,
        eps=eps,
        clean_acc=_number(row, "clean_acc"),
        robust_acc=_number(row, "robust_acc"),
        paper_url=row.get("paper"),
    )


def _number(row: dict[str, str | None], column: str) -> float | None:
    value = row.get(column)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise SourceError(f"{column} {value!r} is not a number; write percent, e.g. 89.5") from None


def ingest_manifest(
    path: Path,
    *,
    url: str | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    allow_nonfinite: bool = False,
    on_progress: ProgressCallback | None = None,
    on_start: Callable[[int], None] | None = None,
    metrics: MetricsHook | None = None,
    engine: str | None = None,
) -> ManifestRun:
    """Ingest every model of the manifest at ``path``; a failed row does not stop the rest.

    ``on_start`` gets the number of rows before the first model. ``metrics`` caches every
    layer metric while the weights are in memory (:func:`filterdb.ingest.pipeline.ingest`).
    ``engine`` says where
    the checkpoints are read and extracted (:func:`filterdb.ingest.pipeline.ingest_all`):
    on Dask the workers must reach the manifest's paths. Raises :class:`ManifestError`
    when the manifest itself is unusable (nothing is ingested then).
    """
    rows = read_manifest(path)
    if on_start is not None:
        on_start(len(rows))
    results, failures = ingest_all(
        _row_candidates(rows, base=path.parent),
        url=url,
        device=device,
        force=force,
        allow_nonfinite=allow_nonfinite,
        on_progress=on_progress,
        metrics=metrics,
        engine=engine,
    )
    return ManifestRun(results=results, failures=failures)


def _row_candidates(
    rows: list[dict[str, str | None]], *, base: Path
) -> Iterator[Candidate | tuple[str, FilterdbError]]:
    """Each row's Candidate, or (name, error) when the row cannot become one (its files
    are missing, its metadata wrong, ...)."""
    for row in rows:
        try:
            yield row_candidate(row, base=base)
        except FilterdbError as error:
            yield row["name"], error
