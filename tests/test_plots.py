"""What the report's figures show, read from their SVGs (text is written as text)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from filterdb.metrics.pca import fit_pca
from filterdb.reports import plots


def box_values(n_robust: dict[str, int], n_normal: dict[str, int]) -> pl.DataFrame:
    """Long values for two metrics over bins first and (0.9, 1.0]; n per metric."""
    rng = np.random.default_rng(0)
    rows = []
    for metric in ("sparsity", "orthogonality"):
        for index, label in ((0, "first"), (10, "(0.9, 1.0]")):
            for role, n in (("robust", n_robust[metric]), ("normal", n_normal[metric])):
                for model in range(n):
                    rows.append((metric, index, label, role, f"{role}{model}", rng.random()))
    return pl.DataFrame(
        rows,
        schema=["metric", "depth_bin_index", "depth_bin", "role", "model_name", "value"],
        orient="row",
    )


def texts(svg: Path) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg.read_text())]


def draw(values: pl.DataFrame, tmp_path: Path) -> list[str]:
    statistics = pl.DataFrame(
        schema={"metric": pl.String, "depth_bin_index": pl.Int64, "p_holm": pl.Float64}
    )
    path = plots.robust_vs_normal_boxplots(
        values, statistics, tmp_path / "box.png", metrics=("sparsity", "orthogonality")
    )
    return texts(path.with_suffix(".svg"))


def test_box_plots_give_n_per_box_once_when_every_panel_has_the_same(tmp_path):
    shown = draw(
        box_values({"sparsity": 3, "orthogonality": 3}, {"sparsity": 2, "orthogonality": 2}),
        tmp_path,
    )
    assert shown.count("n 3 | 2") == 2  # one label per bin, under the last panel only
    assert shown.count("first") == 1 and shown.count("(0.9, 1.0]") == 1
    assert any("the same in every panel" in text for text in shown)


def test_box_plots_give_n_per_box_in_every_panel_when_it_differs(tmp_path):
    shown = draw(
        box_values({"sparsity": 3, "orthogonality": 4}, {"sparsity": 2, "orthogonality": 2}),
        tmp_path,
    )
    assert shown.count("n 3 | 2") == 2 and shown.count("n 4 | 2") == 2
    assert shown.count("first") == 2
    assert not any("the same in every panel" in text for text in shown)


def test_drift_plot_labels_its_log_axis_with_plain_numbers(tmp_path):
    drift = pl.DataFrame(
        {
            "depth_bin_index": [0, 1, 2],
            "depth_bin": ["first", "(0.0, 0.1]", "(0.1, 0.2]"],
            "drift": [2.0, 0.05, 0.003],
            "null_median": [0.1, 0.1, 0.1],
            "null_low": [0.05, 0.05, 0.05],
            "null_high": [0.2, 0.2, 0.2],
            "within_noise": [False, True, True],
        }
    )
    shown = texts(plots.drift_by_depth_plot(drift, tmp_path / "drift.png").with_suffix(".svg"))
    assert {"0.01", "0.1", "1"} <= set(shown)
    assert not any("$" in text or "10^" in text for text in shown)


def test_eigen_filter_pair_titles_each_component_with_its_ratio(tmp_path):
    rng = np.random.default_rng(1)
    pcas = {
        "robust": fit_pca(rng.standard_normal((200, 9)) * np.arange(1, 10)),
        "normal": fit_pca(rng.standard_normal((300, 9))),
    }
    path = plots.eigen_filter_pair(pcas, tmp_path / "eigen.png")
    shown = texts(path.with_suffix(".svg"))
    titles = [text for text in shown if re.fullmatch(r"r\d = \d\.\d\d", text)]
    assert titles == [f"r{k + 1} = {p.ratio[k]:.2f}" for p in pcas.values() for k in range(9)]
    assert {"robust", "200 filters", "normal", "300 filters"} <= set(shown)
