"""The RobustBench zoo at the warehouse level: what to ingest, leaderboard sync, status.

:mod:`filterdb.ingest.sources.robustbench` reads one zoo entry; this module decides which entries
a command means (``--model`` names or ``--all``), joins the leaderboard metadata to them,
writes leaderboard figures into stored models, and tells, per zoo entry, where it stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from filterdb.errors import CheckpointMissing, SourceError
from filterdb.ingest import DEFAULT_MODEL_DIR
from filterdb.ingest.sources import robustbench_index as zoo_index
from filterdb.ingest.sources.base import Candidate, files_sha256
from filterdb.ingest.sources.leaderboard import LeaderboardEntry, read_entry
from filterdb.warehouse import schema
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.migrate import require_head
from filterdb.warehouse.records import FOLDED_NAME_SUFFIX


@dataclass
class ZooSelection:
    """Candidates ready to ingest, and the entries skipped for a missing checkpoint."""

    candidates: list[Candidate]
    missing: list[str]  # one line each: the entry and the exact path to put its file at
    # Entries (with --all and model_info) that have no leaderboard file there.
    not_on_leaderboard: list[str] = field(default_factory=list)


def zoo_selection(
    *,
    dataset: str,
    threat_model: str,
    names: list[str] | None,
    model_dir: Path = DEFAULT_MODEL_DIR,
    model_info: str | Path | None = None,
    fold_batchnorm: bool = False,
) -> ZooSelection:
    """Candidates for ``names`` (``None``: every zoo entry of dataset and threat model).

    A named entry whose checkpoint is missing raises :class:`CheckpointMissing`; with
    ``names=None`` missing entries are listed in ``missing`` and skipped. ``model_info``
    (directory or URL of RobustBench's ``model_info`` tree) adds leaderboard metadata.
    ``fold_batchnorm`` stores the folded weights (:func:`zoo_source.zoo_candidate`).
    """
    # robustbench (and torch) load here, not when the zoo is only listed.
    from filterdb.ingest.sources import robustbench as zoo_source

    if model_info is not None:
        require_model_info(model_info)
    every = names is None
    candidates, missing, unlisted = [], [], []
    for name in zoo_index.zoo_entries(dataset, threat_model) if every else names:
        entry = _leaderboard_entry(model_info, dataset, threat_model, name)
        if model_info is not None and entry is None:
            # Asked for leaderboard data and got none (a 404, a wrong base URL): storing the
            # model without it and without a word hid the mistake (issue 9).
            if not every:
                raise SourceError(
                    f"no leaderboard file {dataset}/{threat_model}/{name}.json under "
                    f"{model_info}; check --model-info, or leave it out to store the model "
                    "without leaderboard figures"
                )
            unlisted.append(name)
        try:
            candidates.append(
                zoo_source.zoo_candidate(
                    name,
                    dataset=dataset,
                    threat_model=threat_model,
                    model_dir=model_dir,
                    leaderboard=entry,
                    fold_batchnorm=fold_batchnorm,
                )
            )
        except CheckpointMissing as error:
            if not every:
                raise
            missing.append(str(error))
    return ZooSelection(candidates, missing, unlisted)


@dataclass(frozen=True)
class SyncResult:
    """Stored zoo models whose leaderboard metadata was written, and those without a file."""

    updated: list[str]
    not_on_leaderboard: list[str]


def sync_leaderboard(*, url: str | None = None, model_info: str | Path) -> SyncResult:
    """Write leaderboard figures (accuracies, eps, venue, ...) into every stored zoo model.

    Stored RobustBench models are named ``<dataset>/<threat>/<entry>``; each gets the
    training row and architecture of its ``model_info`` file, in one transaction.
    """
    require_model_info(model_info)
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            stored = connection.execute(
                sa.select(schema.model.c.model_id, schema.model.c.name).where(
                    schema.model.c.source == zoo_index.SOURCE
                )
            ).all()
        # Read every file first (perhaps over the network), then write in one short
        # transaction: DuckDB has one writer per file (SPEC section 3).
        entries = {
            # A folded model (name ending +bn_folded) has its entry's leaderboard file.
            model_id: read_entry(model_info, *name.removesuffix(FOLDED_NAME_SUFFIX).split("/", 2))
            for model_id, name in stored
        }
        with engine.begin() as connection:
            for model_id, entry in entries.items():
                if entry is not None:
                    _write_leaderboard(connection, model_id, entry)
    names = dict(stored)
    return SyncResult(
        updated=[names[i] for i, entry in entries.items() if entry is not None],
        not_on_leaderboard=[names[i] for i, entry in entries.items() if entry is None],
    )


def require_model_info(location: str | Path) -> None:
    """Refuse, in one line, a local ``model_info`` location that is not a directory."""
    if str(location).startswith(("http://", "https://")):
        return
    if not Path(location).is_dir():
        raise SourceError(
            f"no RobustBench model_info tree at {location}; give the directory that holds "
            "cifar10/, cifar100/ and imagenet/ (or their URL)"
        )


def leaderboard_status(
    *,
    url: str | None = None,
    dataset: str,
    threat_model: str,
    model_dir: Path = DEFAULT_MODEL_DIR,
) -> pl.DataFrame:
    """One row per zoo entry: ``ingested``, ``out of date`` (the checkpoint changed since),
    ``not ingested`` (checkpoint in place) or ``checkpoint missing``, with the path."""
    with engine_for(url) as engine:
        require_head(engine)
        with engine.connect() as connection:
            stored = read_frame(
                connection,
                "SELECT name, checkpoint_sha256 FROM model WHERE source = :source",
                {"source": zoo_index.SOURCE},
            )
    stored_sha256 = dict(zip(stored["name"], stored["checkpoint_sha256"], strict=True))
    rows = []
    for name in zoo_index.zoo_entries(dataset, threat_model):
        model_name = zoo_index.zoo_model_name(name, dataset=dataset, threat_model=threat_model)
        paths = zoo_index.checkpoint_paths(
            name, dataset=dataset, threat_model=threat_model, model_dir=model_dir
        )
        present = all(path.is_file() for path in paths)
        if model_name in stored_sha256:
            current = present and files_sha256(paths) == stored_sha256[model_name]
            status = "ingested" if current or not present else "out of date"
        else:
            status = "not ingested" if present else "checkpoint missing"
        rows.append(
            {"entry": name, "model_name": model_name, "status": status, "checkpoint": str(paths[0])}
        )
    return pl.DataFrame(
        rows,
        schema={
            "entry": pl.String,
            "model_name": pl.String,
            "status": pl.String,
            "checkpoint": pl.String,
        },
    )


def _leaderboard_entry(
    model_info: str | Path | None, dataset: str, threat_model: str, name: str
) -> LeaderboardEntry | None:
    return None if model_info is None else read_entry(model_info, dataset, threat_model, name)


def _write_leaderboard(connection: sa.Connection, model_id: int, entry: LeaderboardEntry) -> None:
    training = schema.training
    connection.execute(sa.delete(training).where(training.c.model_id == model_id))
    connection.execute(sa.insert(training).values(model_id=model_id, **asdict(entry.training)))
    if entry.architecture:
        connection.execute(
            sa.update(schema.model)
            .where(schema.model.c.model_id == model_id)
            .values(architecture=entry.architecture)
        )
