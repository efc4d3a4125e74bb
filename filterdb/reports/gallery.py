"""Filter galleries: a stored layer's 3x3 kernels as images, and groups' eigen-filters.

The robustness poster's central picture is the first layer of a robust model beside its
normal twin. A layer comes back from the warehouse in the order it was stored, filter
``o * (in_channels / groups) + i`` being output channel ``o``'s kernel on input ``i``, so
the kernels are reassembled as the convolution's ``(out, in / groups, 3, 3)`` weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from filterdb.analysis.groups import scaled_filters_by, stored_layers
from filterdb.errors import FilterdbError
from filterdb.files import output_directory
from filterdb.metrics.pca import fit_pca
from filterdb.reports import plots
from filterdb.reports.drawing import Drawer, Drawing, Finished
from filterdb.warehouse.database import engine_for
from filterdb.warehouse.read import iter_layer_filters


@dataclass(frozen=True)
class Gallery:
    """A drawn layer: where the figure went and what it shows."""

    model: str
    layer: str
    png: Path
    svg: Path
    kernels_shown: int
    kernels: int
    normalisation: str


def layer_weight(
    model: str,
    *,
    layer: str | None = None,
    url: str | None = None,
    layers: pl.DataFrame | None = None,
) -> tuple[str, np.ndarray]:
    """The stored layer of ``model`` (default: its first conv) as an (out, in, 3, 3) array.

    ``layers`` is :func:`stored_layers` when the caller has it already (read otherwise).

    Raises
    ------
    FilterdbError
        No such model, or the model has no layer of that name.
    """
    layers = stored_layers(url=url) if layers is None else layers
    of_model = layers.filter(pl.col("model_name") == model)
    if of_model.height == 0:
        raise FilterdbError(f"no stored model named {model}; `filterdb models` lists them")
    if layer is None:
        row = of_model.sort("conv_index").row(0, named=True)
    else:
        chosen = of_model.filter(pl.col("layer_name") == layer)
        if chosen.height == 0:
            names = ", ".join(of_model["layer_name"].head(5))
            raise FilterdbError(
                f"model {model} has no layer named {layer}; its layers start {names} "
                f"(`filterdb layers {model}` lists them)"
            )
        row = chosen.row(0, named=True)
    with engine_for(url) as engine, engine.connect() as connection:
        (filters,) = iter_layer_filters(connection, [(row["layer_id"], row["n_filters"])])
    per_output = row["in_channels"] // row["groups"]
    return row["layer_name"], filters.reshape(row["out_channels"], per_output, 3, 3)


def write_gallery(
    model: str,
    *,
    url: str | None = None,
    layer: str | None = None,
    out_dir: Path,
    title: str | None = None,
    layers: pl.DataFrame | None = None,
) -> Gallery:
    """Draw ``layer`` of ``model`` (default: the first conv) as ``gallery_<model>_<layer>``.

    PNG and SVG in ``out_dir``. With three inputs per kernel each output channel is one
    colour image; otherwise every 3x3 kernel is one image on a diverging scale (the
    normalisation is in the title and in :attr:`Gallery.normalisation`). ``layers`` as
    :func:`layer_weight` takes it.
    """
    with Drawer(in_process=True) as drawer:
        return submit_gallery(
            drawer, model, url=url, layer=layer, out_dir=out_dir, title=title, layers=layers
        ).result()


def submit_gallery(
    drawer: Drawer,
    model: str,
    *,
    url: str | None = None,
    layer: str | None = None,
    out_dir: Path,
    title: str | None = None,
    layers: pl.DataFrame | None = None,
) -> Finished[plots.DrawnGallery, Gallery]:
    """:func:`write_gallery`, the layer read here and drawn by ``drawer``."""
    name, weight = layer_weight(model, layer=layer, url=url, layers=layers)
    output_directory(out_dir)
    stem = f"gallery_{_safe(model)}_{_safe(name)}"
    path = out_dir / f"{stem}.png"
    drawing = drawer.submit(plots.filter_gallery, weight, path, title=title or f"{model}: {name}")
    return drawing.then(
        lambda drawn: Gallery(
            model, name, drawn.png, drawn.svg, drawn.shown, drawn.total, drawn.normalisation
        )
    )


def submit_eigen_filter_pair(
    drawer: Drawer,
    robust_models: list[str],
    normal_models: list[str],
    *,
    url: str | None = None,
    out_dir: Path,
    layers: pl.DataFrame | None = None,
) -> Drawing[Path] | None:
    """The eigen-filters of the robust and of the normal group's first layers, side by side,
    fitted here and drawn by ``drawer``.

    Each group's PCA is fitted on its first-layer filters (scaled non-sparse, as the
    metrics take them). The drawing gives the PNG (an SVG beside it); None when a group
    has too few filters for a PCA. ``layers`` as :func:`layer_weight` takes it.
    """
    role = dict.fromkeys(robust_models, "robust") | dict.fromkeys(normal_models, "normal")
    layers = (stored_layers(url=url) if layers is None else layers).filter(
        pl.col("model_name").is_in(list(role)) & (pl.col("conv_depth") == 0)
    )
    layers = layers.with_columns(pl.col("model_name").replace_strict(role).alias("role"))
    filters = scaled_filters_by(layers, "role", url=url)
    try:
        pcas = {side: fit_pca(filters[side]) for side in ("robust", "normal")}
    except (KeyError, FilterdbError):
        return None
    return drawer.submit(plots.eigen_filter_pair, pcas, out_dir / "eigen_filters_first_layer.png")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
