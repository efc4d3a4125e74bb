"""The notebook entry point: ``filterdb.connect()`` and one method per capability of the CLI.

Each method is a thin call into the module that owns the work, so the CLI and a notebook
see the same results. Every library function takes the database as the keyword ``url``
(``None``: ``$FILTERDB_URL``, else ``./filterdb.duckdb``); :class:`FilterDB` holds it once.
Heavy modules (torch, matplotlib, scipy) are imported by the methods that need them, so
``import filterdb`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from filterdb.metrics.registry import DEFAULT_SPARSITY_EPS
from filterdb.warehouse.database import resolve_url

if TYPE_CHECKING:
    import polars as pl

    from filterdb.analysis.pca_drift import GroupPCA
    from filterdb.demo.run import DemoResult
    from filterdb.errors import FilterdbError
    from filterdb.ingest.manifest import ManifestRun
    from filterdb.ingest.pipeline import IngestResult, ProgressCallback
    from filterdb.ingest.sources.base import Candidate
    from filterdb.ingest.zoo_selection import SyncResult
    from filterdb.metrics.cache import ComputeProgress, ComputeResult, IngestMetrics
    from filterdb.metrics.drift import DriftMatrix
    from filterdb.reports.compare import Comparison
    from filterdb.reports.export import ExportResult
    from filterdb.reports.gallery import Gallery
    from filterdb.reports.robust_vs_normal import ReportResult
    from filterdb.warehouse.check import CheckReport
    from filterdb.warehouse.records import TrainingInfo


class FilterDB:
    """A filterdb database, named by its URL; every method opens and closes what it needs.

    Holding no connection between calls keeps a DuckDB file free for other processes.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)

    def __repr__(self) -> str:
        return f"FilterDB({self.url!r})"

    # --- schema ---------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> str | None:
        """Create the database or bring its schema up to ``revision``; the revision reached."""
        from filterdb.warehouse import migrate

        return migrate.upgrade(revision, url=self.url)

    def downgrade(self, revision: str = "-1") -> str | None:
        """Take the schema down to ``revision`` (``base`` removes everything filterdb made)."""
        from filterdb.warehouse import migrate

        return migrate.downgrade(revision, url=self.url)

    def current_revision(self) -> str | None:
        """The schema revision of the database, ``None`` when it has no filterdb schema."""
        from filterdb.warehouse import migrate

        return migrate.current_revision(url=self.url)

    def check(self) -> list[str]:
        """Every broken consistency rule, one line each; empty when the warehouse is sound."""
        from filterdb.warehouse import check

        return check.check(url=self.url)

    def repair(self) -> list[str]:
        """Remove what interrupted ingests left (models never published), one line each."""
        from filterdb.warehouse import check

        return check.repair(url=self.url)

    def check_report(self) -> CheckReport:
        """Broken rules and warnings (a checkpoint stored under several names), as
        ``filterdb check`` prints them."""
        from filterdb.warehouse import check

        return check.check_report(url=self.url)

    # --- ingestion ------------------------------------------------------------------------

    def ingest_checkpoint(
        self,
        path: Path,
        *,
        name: str | None = None,
        arch: str | None = None,
        training: TrainingInfo | None = None,
        input_shape: tuple[int, ...] = (1, 3, 32, 32),
        fold_batchnorm: bool = False,
        device: str = "auto",
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        metrics: bool = False,
    ) -> IngestResult:
        """Store every 3x3 filter of a torch checkpoint (``arch``: ``zoo:``, ``timm:``, ...).

        ``input_shape`` is the dummy input ``arch`` is traced with. ``fold_batchnorm``
        stores the weights as the papers' ONNX exports had them (weights form
        ``bn_folded``, default name ``<stem>+bn_folded``); it needs ``arch``.
        """
        from filterdb.ingest.sources.checkpoint import checkpoint_candidate

        candidate = checkpoint_candidate(
            Path(path),
            name=name,
            arch=arch,
            training=training,
            input_shape=input_shape,
            fold_batchnorm=fold_batchnorm,
        )
        return self._store(
            candidate, device=device, force=force, on_progress=on_progress, metrics=metrics
        )

    def ingest_onnx(
        self,
        path: Path,
        *,
        name: str | None = None,
        training: TrainingInfo | None = None,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        metrics: bool = False,
    ) -> IngestResult:
        """Store every 3x3 filter of an ONNX file, depth read from its graph."""
        from filterdb.ingest.sources.onnx_file import onnx_candidate

        candidate = onnx_candidate(Path(path), name=name, training=training)
        return self._store(candidate, force=force, on_progress=on_progress, metrics=metrics)

    def ingest_robustbench(
        self,
        names: list[str] | None = None,
        *,
        dataset: str = "cifar10",
        threat_model: str = "Linf",
        model_dir: Path | None = None,
        model_info: str | Path | None = None,
        fold_batchnorm: bool = False,
        device: str = "auto",
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        metrics: bool = False,
    ) -> tuple[list[IngestResult], list[tuple[str, FilterdbError]], list[str]]:
        """Ingest RobustBench zoo entries (``None``: all of dataset and threat model).

        Returns the results, the ``(name, error)`` pairs of the entries that failed, and one
        line per entry skipped for a missing checkpoint (naming the path to put it at).
        """
        from filterdb.ingest.pipeline import ingest_all
        from filterdb.ingest.zoo_selection import DEFAULT_MODEL_DIR, zoo_selection

        selection = zoo_selection(
            dataset=dataset,
            threat_model=threat_model,
            names=names,
            model_dir=model_dir or DEFAULT_MODEL_DIR,
            model_info=model_info,
            fold_batchnorm=fold_batchnorm,
        )
        results, failures = ingest_all(
            selection.candidates,
            url=self.url,
            device=device,
            force=force,
            on_progress=on_progress,
            metrics=_ingest_metrics(metrics, device),
        )
        return results, failures, selection.missing

    def ingest_timm(
        self,
        spec: str,
        *,
        name: str | None = None,
        revision: str | None = None,
        training: TrainingInfo | None = None,
        device: str = "auto",
        force: bool = False,
        metrics: bool = False,
    ) -> IngestResult:
        """Store timm's pretrained weights ``NAME[.TAG]`` from the Hugging Face Hub cache."""
        from filterdb.ingest.sources.timm_hub import timm_candidate

        candidate = timm_candidate(spec, name=name, revision=revision, training=training)
        return self._store(candidate, device=device, force=force, metrics=metrics)

    def ingest_hf(
        self,
        spec: str,
        *,
        name: str | None = None,
        training: TrainingInfo | None = None,
        device: str = "auto",
        force: bool = False,
        metrics: bool = False,
    ) -> IngestResult:
        """Store a Hub model repository ``ORG/NAME[@REVISION]``'s 3x3 filters."""
        from filterdb.ingest.sources.hf_hub import hf_candidate

        candidate = hf_candidate(spec, name=name, training=training)
        return self._store(candidate, device=device, force=force, metrics=metrics)

    def ingest_torchvision(
        self,
        model: str,
        *,
        weights: str | None = None,
        name: str | None = None,
        training: TrainingInfo | None = None,
        device: str = "auto",
        force: bool = False,
        metrics: bool = False,
    ) -> IngestResult:
        """Store torchvision's pretrained weights from the torch hub cache (``$TORCH_HOME``)."""
        from filterdb.ingest.sources.torchvision_hub import torchvision_candidate

        candidate = torchvision_candidate(model, weights=weights, name=name, training=training)
        return self._store(candidate, device=device, force=force, metrics=metrics)

    def _store(
        self,
        candidate: Candidate,
        *,
        device: str = "auto",
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        metrics: bool = False,
    ) -> IngestResult:
        """Ingest one candidate into this database: what the single-model methods share."""
        from filterdb.ingest.pipeline import ingest

        return ingest(
            candidate,
            url=self.url,
            device=device,
            force=force,
            on_progress=on_progress,
            metrics=_ingest_metrics(metrics, device),
        )

    def ingest_manifest(
        self,
        path: Path,
        *,
        device: str = "auto",
        force: bool = False,
        metrics: bool = False,
        engine: str | None = None,
    ) -> ManifestRun:
        """Store every model a CSV or Parquet manifest lists; failed rows are collected
        (``engine``: where the checkpoints are read; this process writes)."""
        from filterdb.ingest.manifest import ingest_manifest

        return ingest_manifest(
            Path(path),
            url=self.url,
            device=device,
            force=force,
            metrics=_ingest_metrics(metrics, device),
            engine=engine,
        )

    def sync_leaderboard(self, model_info: str | Path) -> SyncResult:
        """Update the stored zoo models' training rows from RobustBench's leaderboard files."""
        from filterdb.ingest.zoo_selection import sync_leaderboard

        return sync_leaderboard(url=self.url, model_info=model_info)

    def leaderboard_status(
        self, *, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: Path | None = None
    ) -> pl.DataFrame:
        """One row per zoo entry: ingested, out of date, not ingested, checkpoint missing."""
        from filterdb.ingest.zoo_selection import DEFAULT_MODEL_DIR, leaderboard_status

        return leaderboard_status(
            url=self.url,
            dataset=dataset,
            threat_model=threat_model,
            model_dir=model_dir or DEFAULT_MODEL_DIR,
        )

    # --- reading ----------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        *,
        write: bool = False,
        timeout_s: float = 60.0,
        max_rows: int = 1_000_000,
        max_bytes: int = 1_000_000_000,
        memory_limit: str | None = None,
    ) -> pl.DataFrame:
        """Run one SQL statement; read-only unless ``write`` (:mod:`filterdb.warehouse.query`).

        The limits are :func:`~filterdb.warehouse.query.run_query`'s.
        """
        from filterdb.warehouse.query import run_query

        return run_query(
            sql,
            url=self.url,
            write=write,
            timeout_s=timeout_s,
            max_rows=max_rows,
            max_bytes=max_bytes,
            memory_limit=memory_limit,
        )

    def models(self) -> pl.DataFrame:
        """One row per stored model (``v_models``)."""
        from filterdb.warehouse import inventory

        return inventory.models(url=self.url)

    def layers(self, model: str | None = None) -> pl.DataFrame:
        """One row per stored layer (``v_layers``), of ``model`` or of all models."""
        from filterdb.warehouse import inventory

        return inventory.layers(url=self.url, model=model)

    def layer_metrics(self, model: str | None = None) -> pl.DataFrame:
        """``v_layer_metrics``: layers with their cached metrics (NULL until computed)."""
        from filterdb.warehouse import inventory

        return inventory.layer_metrics(url=self.url, model=model)

    # --- metrics ----------------------------------------------------------------------------

    def compute_metrics(
        self,
        *,
        models: list[str] | None = None,
        eps: float = DEFAULT_SPARSITY_EPS,
        recompute: bool = False,
        device: str = "auto",
        on_progress: Callable[[ComputeProgress], None] | None = None,
        engine: str | None = None,
        lake: str | None = None,
    ) -> ComputeResult:
        """Compute and cache the metrics that are missing or stale (``engine``: where)."""
        from filterdb.metrics import cache

        return cache.compute_metrics(
            url=self.url,
            models=models,
            eps=eps,
            recompute=recompute,
            device=device,
            on_progress=on_progress,
            engine=engine,
            lake=lake,
        )

    def depth_profile(self, model: str | None = None) -> pl.DataFrame:
        """Each metric per model and depth bin, pooled as the depth-bin rule says."""
        from filterdb.metrics import cache

        return cache.depth_profile(url=self.url, models=None if model is None else [model])

    # --- analysis and reports ----------------------------------------------------------------

    def pca(
        self,
        group: str,
        *,
        eps: float = DEFAULT_SPARSITY_EPS,
        engine: str | None = None,
        lake: str | None = None,
    ) -> GroupPCA:
        """PCA eigen-filters of a group: all, robust, normal, model=NAME, depth=BIN, ...
        (``engine``: where)."""
        from filterdb.analysis import pca_drift

        return pca_drift.pca_group(url=self.url, group=group, eps=eps, engine=engine, lake=lake)

    def drift(
        self,
        by: str,
        *,
        eps: float = DEFAULT_SPARSITY_EPS,
        mixed_forms: bool = False,
        engine: str | None = None,
        lake: str | None = None,
    ) -> DriftMatrix:
        """KL drift matrix between groups: depth, training_type, architecture, model, ...;
        each cell beside its permutation null (``nulls``; ``engine``: where)."""
        from filterdb.analysis import pca_drift

        return pca_drift.drift(
            url=self.url, by=by, eps=eps, mixed_forms=mixed_forms, engine=engine, lake=lake
        )

    def report_robust_vs_normal(
        self,
        out_dir: Path,
        *,
        training_dataset: str | None = None,
        pairs_file: Path | None = None,
        weights_form: str | None = None,
        mixed_forms: bool = False,
        engine: str | None = None,
        lake: str | None = None,
    ) -> ReportResult:
        """Write the robust-vs-normal report (tables, plots, HTML) into ``out_dir``
        (``engine``: where the metrics and the drift series are computed)."""
        from filterdb.reports.robust_vs_normal import write_robust_vs_normal_report

        return write_robust_vs_normal_report(
            url=self.url,
            out_dir=Path(out_dir),
            training_dataset=training_dataset,
            pairs_file=pairs_file,
            weights_form=weights_form,
            mixed_forms=mixed_forms,
            engine=engine,
            lake=lake,
        )

    def compare(
        self,
        model_a: str,
        model_b: str,
        *,
        out_dir: Path | None = None,
        mixed_forms: bool = False,
    ) -> Comparison:
        """Two models side by side, layer by layer and per depth bin."""
        from filterdb.reports.compare import compare_models

        return compare_models(
            model_a, model_b, url=self.url, out_dir=out_dir, mixed_forms=mixed_forms
        )

    def gallery(
        self, model: str, *, layer: str | None = None, out_dir: Path = Path("gallery")
    ) -> Gallery:
        """Draw a stored layer's filters (default: the first conv) as PNG and SVG images."""
        from filterdb.reports.gallery import write_gallery

        return write_gallery(model, url=self.url, layer=layer, out_dir=Path(out_dir))

    def demo(self, *, out_dir: Path = Path("filterdb-demo"), quick: bool = False) -> DemoResult:
        """Train the digits pair, ingest, measure and report it (the README's first command)."""
        from filterdb.demo import QUICK_EPOCHS
        from filterdb.demo.run import run_demo

        if quick:
            return run_demo(url=self.url, out_dir=Path(out_dir), epochs=QUICK_EPOCHS)
        return run_demo(url=self.url, out_dir=Path(out_dir))

    def export_hdf5(
        self, out: Path, *, models: list[str] | None = None, overwrite: bool = False
    ) -> ExportResult:
        """One HDF5 file in CNN Filter DB's layout (``/filters``, ``/meta``)."""
        from filterdb.reports.export import export_hdf5

        return export_hdf5(url=self.url, out=Path(out), models=models, overwrite=overwrite)

    def export_parquet(
        self, out: Path, *, models: list[str] | None = None, overwrite: bool = False
    ) -> ExportResult:
        """``v_filters`` as Parquet, one directory per model."""
        from filterdb.reports.export import export_parquet

        return export_parquet(url=self.url, out=Path(out), models=models, overwrite=overwrite)


def connect(url: str | None = None) -> FilterDB:
    """Open filterdb at ``url`` (default: ``$FILTERDB_URL``, else ``filterdb.duckdb``)."""
    return FilterDB(url)


def _ingest_metrics(metrics: bool, device: str) -> IngestMetrics | None:
    """The ``metrics=True`` of the ingest methods: every layer metric, cached while ingesting."""
    if not metrics:
        return None
    from filterdb.metrics.cache import IngestMetrics

    return IngestMetrics(device=device)
