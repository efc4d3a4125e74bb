"""PCA and drift results as files: CSV and JSON for programs, PNG for people."""

from __future__ import annotations

from pathlib import Path

from filterdb.analysis.pca_drift import (
    GroupPCA,
    drift_frame,
    drift_json,
    drift_null_frame,
    pca_frame,
    pca_json,
)
from filterdb.files import output_directory
from filterdb.metrics.drift import DriftMatrix
from filterdb.reports.plots import plot_cumulative_variance, plot_drift_heatmap, plot_eigen_filters


def write_pca(result: GroupPCA, out_dir: Path) -> list[Path]:
    """Write ``pca.csv``, ``pca.json``, ``pca_components.png`` and ``pca_cumulative.png``
    into ``out_dir`` (created when missing); return the paths written."""
    out_dir = output_directory(out_dir)
    title = f"PCA of {result.group}: {result.n_filters:,} non-sparse filters (eps {result.eps:g})"
    csv_path, json_path = out_dir / "pca.csv", out_dir / "pca.json"
    pca_frame(result).write_csv(csv_path)
    json_path.write_text(pca_json(result) + "\n")
    return [
        csv_path,
        json_path,
        plot_eigen_filters(result.basis, out_dir / "pca_components.png", title=title),
        plot_cumulative_variance(result.basis, out_dir / "pca_cumulative.png", title=title),
    ]


def write_drift(result: DriftMatrix, out_dir: Path, *, title: str = "KL drift") -> list[Path]:
    """Write ``drift.csv`` (the matrix), ``drift_null.csv`` (each pair beside its
    permutation null), ``drift.json`` and the heatmap ``drift.png`` into ``out_dir``
    (created when missing); return the paths written."""
    out_dir = output_directory(out_dir)
    csv_path, json_path = out_dir / "drift.csv", out_dir / "drift.json"
    null_path = out_dir / "drift_null.csv"
    drift_frame(result).write_csv(csv_path)
    drift_null_frame(result).write_csv(null_path)
    json_path.write_text(drift_json(result) + "\n")
    heatmap = plot_drift_heatmap(result, out_dir / "drift.png", title=title)
    return [csv_path, null_path, json_path, heatmap]
